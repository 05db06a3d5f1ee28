//! Tests of templates: front matter, strict variables, errors with file lines, loading, and
//! the work budget.

use std::path::Path;

use super::*;
use serde_json::json;

fn vars(v: serde_json::Value) -> Map<String, Value> {
    match v {
        Value::Object(map) => map,
        other => panic!("not an object: {other}"),
    }
}

fn templates_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("templates")
}

#[test]
fn parse_without_front_matter() {
    let src = TemplateSource::parse("t", "{{ name }}님, 안녕하세요.\n").unwrap();
    assert_eq!(src.body, "{{ name }}님, 안녕하세요.\n");
    assert_eq!(src.subject, None);
    assert_eq!(src.name, "t");
}

#[test]
fn parse_front_matter_subject() {
    let text = "---\nsubject: 토스페이먼츠 채용 소식\n---\n{{ name }}님,\n둘째 줄\n";
    let src = TemplateSource::parse("t", text).unwrap();
    assert_eq!(src.subject.as_deref(), Some("토스페이먼츠 채용 소식"));
    assert_eq!(src.body, "{{ name }}님,\n둘째 줄\n");
}

#[test]
fn parse_front_matter_crlf_bom_and_quotes() {
    let text = "\u{feff}---\r\nsubject: \"{{ name }}님 소식\"\r\n---\r\n본문\r\n";
    let src = TemplateSource::parse("t", text).unwrap();
    assert_eq!(src.subject.as_deref(), Some("{{ name }}님 소식"));
    assert_eq!(src.body, "본문\n");
}

#[test]
fn parse_front_matter_errors() {
    let e = TemplateSource::parse("t", "---\nsubject: a\ntitle: b\n---\nbody").unwrap_err();
    assert_eq!(e.line, Some(3));
    assert!(
        e.message.contains("unknown front-matter key 'title'"),
        "{e}"
    );
    assert!(e.to_string().starts_with("template 't' line 3: "), "{e}");

    let e = TemplateSource::parse("t", "---\ntitle: b\n---\nbody").unwrap_err();
    assert_eq!(e.line, Some(2));
    assert!(e.message.contains("'title'"), "{e}");

    let e = TemplateSource::parse("t", "---\nsubject: a").unwrap_err();
    assert_eq!(e.line, Some(1));
    assert!(e.message.contains("never closed"), "{e}");

    let e = TemplateSource::parse("t", "---\nsubject: a\n{{ name }}님: 안녕").unwrap_err();
    assert_eq!(e.line, Some(3));
    assert!(e.message.contains("expected '---' closing"), "{e}");

    let e = TemplateSource::parse("t", "---\nsubject: a\nsubject: b\n---\nx").unwrap_err();
    assert_eq!(e.line, Some(3));
    assert!(e.message.contains("twice"), "{e}");

    let e = TemplateSource::parse("t", "---\nsubject:   \n---\nx").unwrap_err();
    assert_eq!(e.line, Some(2));
    assert!(e.message.contains("empty"), "{e}");

    let e = TemplateSource::parse("t", "---\n---\nx").unwrap_err();
    assert_eq!(e.line, Some(1));
    assert!(e.message.contains("no 'subject"), "{e}");

    let e = TemplateSource::parse("t", "---\nsubject a\n---\nx").unwrap_err();
    assert_eq!(e.line, Some(2));

    let e = TemplateSource::parse("t", "---\n\nsubject: a\n---\nx").unwrap_err();
    assert_eq!(e.line, Some(2));
    assert!(e.message.contains("blank line"), "{e}");

    let e = TemplateSource::parse("t", "---\nsubject: a\n---\n  \n").unwrap_err();
    assert_eq!(e.line, Some(4));
    assert!(e.message.contains("no body"), "{e}");
    assert_eq!(e.code(), "template_error");
}

#[test]
fn strict_undefined_names_variable_and_line() {
    let src = TemplateSource::parse("t", "안녕하세요\n둘째 줄\n{{ name }}님").unwrap();
    let r = Renderer::new(&src).unwrap();
    let e = r.render(&vars(json!({"city": "서울"}))).unwrap_err();
    assert_eq!(e.variable.as_deref(), Some("name"));
    assert_eq!(e.line, Some(3));
    assert!(
        e.to_string()
            .starts_with("template 't' line 3: undefined variable 'name'"),
        "{e}"
    );
    let e = e.with_columns(&["phone".to_string(), "city".to_string()]);
    assert_eq!(
        e.to_string(),
        "template 't' line 3: undefined variable 'name' (the segment has no such column; \
         columns are: phone, city)"
    );
}

#[test]
fn strict_undefined_picks_the_variable_of_the_failing_line() {
    // `zeta` is missing too but used later; `alpha` is defined; line 2 fails on `beta`.
    let text = "---\nsubject: 소식\n---\n{{ alpha }}\n{{ alpha ~ beta }}\n{{ zeta }}";
    let src = TemplateSource::parse("t", text).unwrap();
    let r = Renderer::new(&src).unwrap();
    let e = r.render(&vars(json!({"alpha": "a"}))).unwrap_err();
    assert_eq!(e.variable.as_deref(), Some("beta"), "{e}");
    assert_eq!(e.line, Some(5), "{e}");
}

#[test]
fn strict_undefined_in_if_and_subject() {
    let src = TemplateSource::parse(
        "t",
        "---\nsubject: {{ title }}\n---\n{% if vip %}VIP{% endif %}",
    )
    .unwrap();
    let r = Renderer::new(&src).unwrap();
    let e = r.render(&vars(json!({"title": "x"}))).unwrap_err();
    assert_eq!(e.variable.as_deref(), Some("vip"), "{e}");
    assert_eq!(e.line, Some(4));
    let e = r.render(&vars(json!({"vip": true}))).unwrap_err();
    assert_eq!(e.variable.as_deref(), Some("title"), "{e}");
    assert_eq!(e.line, Some(2));
    assert!(e.message.contains("subject"), "{e}");
}

#[test]
fn undefined_attribute_is_reported_without_variable() {
    let src = TemplateSource::parse("t", "{{ user.nick }}").unwrap();
    let r = Renderer::new(&src).unwrap();
    let e = r.render(&vars(json!({"user": {"name": "a"}}))).unwrap_err();
    assert_eq!(e.variable, None);
    assert_eq!(e.line, Some(1));
    assert!(e.message.contains("undefined value"), "{e}");
    // with_columns leaves non-variable errors alone.
    assert_eq!(e.clone().with_columns(&["a".to_string()]), e);
}

#[test]
fn syntax_error_has_file_line() {
    let src = TemplateSource::parse("t", "첫 줄\n{{ name | }}\n셋째").unwrap();
    let e = Renderer::new(&src).unwrap_err();
    assert_eq!(e.line, Some(2), "{e}");
    assert!(e.message.contains("syntax error"), "{e}");

    let src = TemplateSource::parse("t", "---\nsubject: s\n---\n첫 줄\n{% if x %}\n").unwrap();
    let e = Renderer::new(&src).unwrap_err();
    assert!(e.line >= Some(5), "{e}");
    assert!(e.message.contains("syntax error"), "{e}");

    let src = TemplateSource::parse("t", "---\nsubject: {{ x \n---\n본문\n").unwrap();
    let e = Renderer::new(&src).unwrap_err();
    assert_eq!(e.line, Some(2), "{e}");
    assert!(e.message.contains("in the subject"), "{e}");
}

#[test]
fn variables_lists_body_and_subject() {
    let text = "---\nsubject: {{ team }} 소식\n---\n{% set greeting = '안녕' %}\
                {{ greeting }} {{ name }}님\n{% for i in range(2) %}{{ i }}{{ loop.index }}{% endfor %}\
                {{ user.nick }}";
    let src = TemplateSource::parse("t", text).unwrap();
    let r = Renderer::new(&src).unwrap();
    let expected: BTreeSet<String> = ["name", "team", "user"]
        .into_iter()
        .map(String::from)
        .collect();
    assert_eq!(r.variables(), expected);
}

#[test]
fn render_keeps_internal_newlines_trims_trailing_and_does_not_escape() {
    let text = "---\nsubject: '  {{ name }}님께  '\n---\n{{ name }}님,\n\n{% if vip %}\nVIP 혜택: <b>&</b>\n{% endif %}\n끝\n\n  \n";
    let src = TemplateSource::parse("t", text).unwrap();
    let r = Renderer::new(&src).unwrap();
    let out = r
        .render(&vars(json!({"name": "A&B", "vip": true})))
        .unwrap();
    assert_eq!(out.body, "A&B님,\n\nVIP 혜택: <b>&</b>\n끝");
    assert_eq!(out.subject.as_deref(), Some("A&B님께"));
    let out = r
        .render(&vars(json!({"name": "김", "vip": false})))
        .unwrap();
    assert_eq!(out.body, "김님,\n\n끝");
}

#[test]
fn shipped_recruit_template_renders() {
    let src = TemplateSource::load(&templates_dir(), "recruit").unwrap();
    assert_eq!(src.name, "recruit");
    let subject = src.subject.as_deref().unwrap();
    let r = Renderer::new(&src).unwrap();
    let expected: BTreeSet<String> = ["name".to_string()].into_iter().collect();
    assert_eq!(r.variables(), expected);
    let out = r.render(&vars(json!({"name": "김민수"}))).unwrap();
    assert!(
        out.body.starts_with("김민수님, 안녕하세요."),
        "{}",
        out.body
    );
    assert!(out.body.contains("https://bit.ly/3xMi6zi"));
    assert!(out.body.contains("recruit@toss.im"));
    // munja adds the ad header, sender line and opt-out footer itself.
    assert!(!out.body.contains("(광고)"));
    assert!(!out.body.contains("080-"));
    assert!(!out.body.contains("거부"));
    assert_eq!(out.subject.as_deref(), Some(subject));
    // LMS sized and fully encodable in EUC-KR.
    let (body_bytes, _, unmappable) = encoding_rs::EUC_KR.encode(&out.body);
    assert!(!unmappable, "body has characters EUC-KR cannot encode");
    assert!(
        body_bytes.len() < 1_500,
        "body is {} bytes",
        body_bytes.len()
    );
    let (subject_bytes, _, unmappable) = encoding_rs::EUC_KR.encode(subject);
    assert!(!unmappable);
    assert!(subject_bytes.len() <= 40);
}

#[test]
fn load_missing_template_lists_available() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("welcome.txt"), "안녕").unwrap();
    std::fs::write(dir.path().join("recruit.txt"), "채용").unwrap();
    std::fs::write(dir.path().join("notes.md"), "x").unwrap();
    let e = TemplateSource::load(dir.path(), "recrut").unwrap_err();
    assert_eq!(e.template, "recrut");
    assert!(e.message.contains("recruit, welcome"), "{e}");
    assert!(!e.message.contains("notes"), "{e}");

    let empty = tempfile::tempdir().unwrap();
    let e = TemplateSource::load(empty.path(), "x").unwrap_err();
    assert!(e.message.contains("holds no templates"), "{e}");

    let ok = TemplateSource::load(dir.path(), "welcome").unwrap();
    assert_eq!(ok.body, "안녕");
}

#[test]
fn load_refuses_invalid_names() {
    let dir = tempfile::tempdir().unwrap();
    for bad in ["", "../etc/passwd", "a b", "a/b", "이름", "x.y"] {
        let e = TemplateSource::load(dir.path(), bad).unwrap_err();
        assert!(e.message.contains("invalid template name"), "{bad}: {e}");
    }
    let e = TemplateSource::load(dir.path(), "recruit.txt").unwrap_err();
    assert!(e.message.contains("without '.txt'"), "{e}");
}

#[test]
fn load_refuses_non_utf8_with_line() {
    let dir = tempfile::tempdir().unwrap();
    let (cp949, _, _) = encoding_rs::EUC_KR.encode("첫 줄\n둘째 줄 {{ name }}님");
    let mut bytes = b"ascii line\n".to_vec();
    bytes.extend_from_slice(&cp949);
    std::fs::write(dir.path().join("old.txt"), bytes).unwrap();
    let e = TemplateSource::load(dir.path(), "old").unwrap_err();
    assert_eq!(e.line, Some(2), "{e}");
    assert!(e.message.contains("UTF-8"), "{e}");
}

#[test]
fn template_source_round_trips_through_json() {
    let src = TemplateSource::parse("t", "---\nsubject: s\n---\nb").unwrap();
    let json = serde_json::to_string(&src).unwrap();
    let back: TemplateSource = serde_json::from_str(&json).unwrap();
    assert_eq!(back, src);
}

const NESTED_LOOP: &str =
    "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}";

#[test]
fn a_runaway_loop_is_refused_when_compiled_naming_the_template() {
    let t0 = std::time::Instant::now();
    let src = TemplateSource::parse("loop", &format!("{{{{ name }}}}님 {NESTED_LOOP}")).unwrap();
    let e = Renderer::new(&src).unwrap_err();
    assert!(t0.elapsed() < std::time::Duration::from_secs(10), "bounded");
    assert_eq!(e.template, "loop");
    assert_eq!(e.line, Some(1));
    assert!(e.message.contains("too much work"), "{e}");
    assert!(e.to_string().starts_with("template 'loop' line 1:"), "{e}");
    let src =
        TemplateSource::parse("subj", &format!("---\nsubject: {NESTED_LOOP}\n---\nb")).unwrap();
    let e = Renderer::new(&src).unwrap_err();
    assert_eq!(e.line, Some(SUBJECT_LINE));
    assert!(
        e.message
            .contains("in the subject: the template does too much work"),
        "{e}"
    );
}

#[test]
fn a_macro_that_calls_itself_forever_is_refused_when_compiled() {
    let text = "{% macro f(x) %}{{ f(x) }}{% endmacro %}{{ f(name) }}님";
    let e = Renderer::new(&TemplateSource::parse("rec", text).unwrap()).unwrap_err();
    assert_eq!(e.template, "rec");
    assert!(e.message.contains("recursion limit"), "{e}");
    // A macro that recurses a bounded number of times is fine.
    let ok =
        "{% macro f(n) %}{% if n > 0 %}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(3) }}{{ name }}";
    assert!(Renderer::new(&TemplateSource::parse("ok", ok).unwrap()).is_ok());
}

#[test]
fn a_loop_that_runs_away_only_on_some_data_fails_that_message() {
    let text = "{% for i in range(n|int) %}{% for j in range(n|int) %}x{% endfor %}{% endfor %}";
    let r = Renderer::new(&TemplateSource::parse("data", text).unwrap()).unwrap();
    assert_eq!(
        r.render(&vars(json!({"n": "3"}))).unwrap().body,
        "xxxxxxxxx"
    );
    let e = r.render(&vars(json!({"n": "100000"}))).unwrap_err();
    assert!(e.message.contains("too much work"), "{e}");
    assert_eq!(e.code(), "template_error");
}

#[test]
fn the_budget_is_generous_for_real_templates() {
    let src = TemplateSource::load(&templates_dir(), "recruit").unwrap();
    let r = Renderer::new(&src).unwrap();
    let mut v = Map::new();
    for name in r.variables() {
        v.insert(name.clone(), Value::String("값".into()));
    }
    r.render(&v)
        .expect("the shipped template renders within the budget");
    let text = "{% for i in range(1000) %}{% if i % 2 == 0 %}{{ i }}{% endif %}{% endfor %}";
    let r = Renderer::new(&TemplateSource::parse("long", text).unwrap()).unwrap();
    assert!(r.render(&Map::new()).unwrap().body.ends_with("998"));
}

#[test]
fn a_huge_repetition_is_refused_at_once_naming_the_template_and_the_bound() {
    for text in [
        r#"{{ "x" * 100000000 }}"#,
        r#"{% set s = "x" * 100000000 %}{{ s|length }}"#,
    ] {
        let t0 = std::time::Instant::now();
        let e = Renderer::new(&TemplateSource::parse("huge", text).unwrap()).unwrap_err();
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(2),
            "{text}: at once"
        );
        assert_eq!(e.template, "huge");
        assert!(e.message.contains(TOO_MUCH_WORK), "{e}");
        assert!(e.message.contains("64 KiB"), "{e}");
    }
}

#[test]
fn a_text_over_64_kib_is_refused_in_one_step() {
    // 70,000 bytes built in one step (within the fuel), refused when written.
    let e =
        Renderer::new(&TemplateSource::parse("big", r#"{{ "x" * 70000 }}"#).unwrap()).unwrap_err();
    assert_eq!(e.template, "big");
    assert!(e.message.contains(TEXT_TOO_LARGE), "{e}");
    assert!(e.message.contains("64 KiB"), "{e}");
    assert!(e.to_string().starts_with("template 'big'"), "{e}");
    // Many writes: stops at the one crossing the bound.
    let text = r#"{% for i in range(1000) %}{{ "y" * 1000 }}{% endfor %}"#;
    let e = Renderer::new(&TemplateSource::parse("loop", text).unwrap()).unwrap_err();
    assert!(e.message.contains(TEXT_TOO_LARGE), "{e}");
    // In the subject.
    let text = "---\nsubject: \"{{ 'x' * 70000 }}\"\n---\nbody";
    let e = Renderer::new(&TemplateSource::parse("subj", text).unwrap()).unwrap_err();
    assert!(
        e.message
            .contains(&format!("in the subject: {TEXT_TOO_LARGE}")),
        "{e}"
    );
}

#[test]
fn a_text_up_to_the_bound_renders_and_data_past_it_fails_that_message() {
    let text = r#"{{ "x" * 65000 }}"#;
    let r = Renderer::new(&TemplateSource::parse("edge", text).unwrap()).unwrap();
    assert_eq!(r.render(&Map::new()).unwrap().body.len(), 65000);
    let r = Renderer::new(&TemplateSource::parse("data", "{{ bio }}").unwrap()).unwrap();
    let long = "가".repeat(MAX_TEXT_BYTES / 3 + 1);
    let e = r.render(&vars(json!({ "bio": long }))).unwrap_err();
    assert!(e.message.contains(TEXT_TOO_LARGE), "{e}");
    let fits = "가".repeat(MAX_TEXT_BYTES / 3);
    assert_eq!(
        r.render(&vars(json!({ "bio": fits }))).unwrap().body.len(),
        MAX_TEXT_BYTES / 3 * 3
    );
}
