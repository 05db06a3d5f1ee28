//! Korean ad-SMS correctness (issue 4) through the real binary, the real simulator on loopback
//! and real SQLite files: EUC-KR sizing, the ad law on the text that reaches the gateway, the
//! night rule, template check and preview, the report of `campaign create`, CSV encodings,
//! privacy of numbers and keys, and the frequency cap.

use std::sync::{Arc, Mutex};

use crate::common::{Env, Gw, Out, Setup, create_args, n, number};
use chrono::{DateTime, TimeDelta, Timelike, Utc};
use munja::tools::sim::SimConfig;
use serde_json::Value;

// ---------------------------------------------------------------------------------------
// Helpers

/// A mix of Hangul and ASCII that is exactly `bytes` long in EUC-KR ("가a" is 3 bytes).
fn mixed(bytes: usize) -> String {
    let mut s = "가a".repeat(bytes / 3);
    s.push_str(&"b".repeat(bytes % 3));
    s
}

/// `campaign create --name TEMPLATE --segment SEG --template TEMPLATE EXTRA...`, any exit code.
async fn create(env: &Env, segment: &str, template: &str, extra: &[&str]) -> Out {
    env.create(template, segment, template, extra).await
}

/// The id printed by a successful `campaign create`, which must be alone on stdout.
/// Creates a campaign of `hello` on `segment` (with `extra`), runs it and returns its status.
async fn run_hello(env: &Env, segment: &str, extra: &[&str]) -> serde_json::Value {
    let id = id_of(&create(env, segment, "hello", extra).await);
    env.ok(&["campaign", "run", &id]).await;
    env.status(&id).await
}

fn id_of(o: &Out) -> String {
    assert_eq!(o.code, 0, "campaign create failed:\n{}", o.all());
    let id = o.stdout.trim();
    assert!(
        id.parse::<i64>().is_ok(),
        "stdout must be the id alone:\n{}",
        o.all()
    );
    id.to_string()
}

/// Writes `NAME.csv` and imports it as segment NAME.
async fn import(env: &Env, name: &str, csv: &str) -> Out {
    let f = env.write(&format!("{name}.csv"), csv);
    env.import(name, &f).await
}

/// The audit row of `phone` (canonical digits).
fn row<'a>(rows: &'a [Value], phone: &str) -> &'a Value {
    rows.iter()
        .find(|r| r["phone"] == phone)
        .unwrap_or_else(|| panic!("no audit row for {phone}"))
}

fn campaigns(list: &Out) -> usize {
    let v: Vec<Value> = serde_json::from_str(&list.stdout).expect("campaign list json");
    v.len()
}

/// Rewrites munja.toml: the harness's gateway settings plus `policy`, with the default quiet
/// hours (21:00-08:00) when `policy` does not set them (the harness turns them off).
fn config_with_default_quiet_hours(env: &Env, gw: &Gw, policy: &str) {
    env.write_config(gw, policy);
    let p = env.path("munja.toml");
    let text = std::fs::read_to_string(&p).expect("read config");
    let without = text.replace("quiet_hours = \"off\"\n", "");
    assert_ne!(
        text, without,
        "the harness disables quiet hours with this line"
    );
    std::fs::write(&p, without).expect("write config");
}

/// A fixed-offset zone whose local time is now `hour`:xx, so that the default night window
/// is open or closed whatever the time of day the test runs at.
fn zone_where_it_is(hour: i64) -> String {
    let mut off = hour - i64::from(Utc::now().hour());
    if off < -12 {
        off += 24;
    } else if off > 14 {
        off -= 24;
    }
    match off {
        0 => "Etc/GMT".into(),
        o if o > 0 => format!("Etc/GMT-{o}"), // POSIX sign: Etc/GMT-9 is UTC+9
        o => format!("Etc/GMT+{}", -o),
    }
}

/// A recording proxy in front of the simulator: every message exactly as it reached the
/// gateway (the simulator keeps counts, not texts).
struct Capture {
    messages: Arc<Mutex<Vec<Value>>>,
}

impl Capture {
    /// Starts the proxy and points munja.toml at it.
    async fn start(env: &Env) -> Capture {
        let target = env.sim.url();
        let messages = Arc::new(Mutex::new(Vec::new()));
        let seen = messages.clone();
        let client = reqwest::Client::new();
        let app = axum::Router::new().fallback(
            move |method: axum::http::Method,
                  uri: axum::http::Uri,
                  headers: axum::http::HeaderMap,
                  body: axum::body::Bytes| {
                let (client, seen, target) = (client.clone(), seen.clone(), target.clone());
                async move {
                    if let Ok(v) = serde_json::from_slice::<Value>(&body) {
                        let mut seen = seen.lock().expect("capture lock");
                        match v.get("messages").and_then(Value::as_array) {
                            Some(batch) => seen.extend(batch.iter().cloned()),
                            None => seen.push(v),
                        }
                    }
                    let mut req = client.request(method, format!("{target}{uri}")).body(body);
                    for (k, v) in &headers {
                        if k != "host" && k != "content-length" {
                            req = req.header(k, v);
                        }
                    }
                    let resp = req.send().await.expect("forward to the simulator");
                    let mut out = axum::http::Response::builder().status(resp.status());
                    for k in ["content-type", "retry-after"] {
                        if let Some(v) = resp.headers().get(k) {
                            out = out.header(k, v);
                        }
                    }
                    let bytes = resp.bytes().await.unwrap_or_default();
                    out.body(axum::body::Body::from(bytes))
                        .expect("proxy response")
                }
            },
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let url = format!("http://{}", listener.local_addr().expect("proxy address"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        let p = env.path("munja.toml");
        let text = std::fs::read_to_string(&p).expect("read config");
        assert!(text.contains(&env.sim.url()));
        std::fs::write(&p, text.replace(&env.sim.url(), &url)).expect("write config");
        Capture { messages }
    }

    /// The last message sent to `phone`.
    fn to(&self, phone: &str) -> Value {
        self.messages
            .lock()
            .expect("capture lock")
            .iter()
            .rev()
            .find(|m| m["to"] == phone)
            .cloned()
            .unwrap_or_else(|| panic!("nothing was sent to {phone}"))
    }
}

const HEADER: &str = "(광고) 토스페이먼츠\n";
const FOOTER: &str = "\n무료수신거부 080-600-5653";

// ---------------------------------------------------------------------------------------
// 2. EUC-KR sizing

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unencodable_characters_are_refused_naming_character_and_position() {
    let env = Env::new(SimConfig::default()).await;
    env.write("templates/price.txt", "{{ name }}님 가격 {{ price }}");
    env.ok(&["init"]).await;
    import(
        &env,
        "seg",
        &format!(
            "phone,name,price\n{},김민수,10000원\n{},이영희,10000₩\n{},박😀,500\n{},최,￦500\n",
            number(0),
            number(1),
            number(2),
            number(3)
        ),
    )
    .await;

    // The ad header line "(광고) 토스페이먼츠\n" is 12 characters, so in the text that is sent
    // ₩ is character 12 + 14 and 😀 character 12 + 2.
    let o = env
        .run(&[
            "template",
            "preview",
            "price",
            "--segment",
            "seg",
            "--limit",
            "4",
        ])
        .await;
    assert_eq!(
        o.code,
        1,
        "a refused recipient makes preview fail:\n{}",
        o.all()
    );
    o.assert_stdout_has(
        "REFUSED unencodable_char: '₩' (U+20A9) at character 26 of the text cannot be sent",
    );
    o.assert_stdout_has("'😀' (U+1F600) at character 14 of the text");
    o.assert_stdout_has("[SMS 67 bytes]");
    // The full-width won sign is in EUC-KR: 2 bytes, not an HTML escape.
    o.assert_stdout_has("[SMS 61 bytes]");

    let o = create(&env, "seg", "price", &[]).await;
    let id = id_of(&o);
    o.assert_stderr_has("4 recipients: 2 SMS, 0 LMS, 2 refused");
    o.assert_stderr_has("refused unencodable_char: 2");
    o.assert_stderr_has("'₩' (U+20A9) at character 26");

    let o = env.run(&["campaign", "run", &id]).await;
    assert_eq!(o.code, 0, "{}", o.all());
    let rows = env.audit_json(&id).await;
    for (i, bytes) in [(0, 67), (3, 61)] {
        let r = row(&rows, &number(i));
        assert_eq!(
            (&r["status"], &r["type"], &r["bytes"]),
            (
                &Value::from("sent"),
                &Value::from("SMS"),
                &Value::from(bytes)
            ),
            "{r}"
        );
    }
    for i in [1, 2] {
        let r = row(&rows, &number(i));
        assert_eq!(r["status"], "failed", "{r}");
        assert_eq!(r["error"], "unencodable_char", "{r}");
        assert_eq!(r["attempts"], 0, "never offered to the gateway: {r}");
    }
    let st = env.status(&id).await;
    assert_eq!((n(&st, "sent"), n(&st, "failed")), (2, 2));
    assert_eq!(env.sim.stats().accepted, 2);
    assert_eq!(
        env.sim.stats().requests,
        2,
        "refused texts never reach the gateway"
    );
}

/// Sent as (type, bytes), or refused with a reason.
type Want = Result<(&'static str, i64), &'static str>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lms_text_and_subject_limits_hold_at_the_byte_edges_with_the_ad_frame() {
    let env = Env::new(SimConfig::default()).await;
    let cap = Capture::start(&env).await;
    env.write(
        "templates/lms.txt",
        "---\nsubject: \"{{ subj }}\"\n---\n{{ body }}",
    );
    env.ok(&["init"]).await;
    // The ad frame adds 46 bytes: "(광고) 토스페이먼츠\n" (20) and "\n무료수신거부 080-600-5653" (26).
    let cases: [(String, String, Want); 8] = [
        (mixed(44), mixed(41), Ok(("SMS", 90))), // an SMS has no subject to check
        (mixed(45), mixed(40), Ok(("LMS", 91))),
        (mixed(1954), mixed(40), Ok(("LMS", 2000))),
        (mixed(1955), mixed(40), Err("too_long")),
        (mixed(100), mixed(41), Err("subject_too_long")),
        (mixed(100), "할인😀".into(), Err("unencodable_char")),
        ("짧은 안내".into(), "할인😀".into(), Ok(("SMS", 55))),
        (mixed(100), mixed(39), Ok(("LMS", 146))),
    ];
    let mut csv = String::from("phone,body,subj\n");
    for (i, (body, subj, _)) in cases.iter().enumerate() {
        csv.push_str(&format!("{},{body},{subj}\n", number(i as u64)));
    }
    import(&env, "edges", &csv).await;

    let o = create(&env, "edges", "lms", &[]).await;
    let id = id_of(&o);
    o.assert_stderr_has("8 recipients: 2 SMS, 3 LMS, 3 refused");
    for reason in ["too_long", "subject_too_long", "unencodable_char"] {
        assert!(
            o.stderr.contains(&format!("refused {reason}: 1")),
            "{reason}:\n{}",
            o.all()
        );
    }
    // 2 SMS at 9.9 and 3 LMS at 29 KRW.
    o.assert_stderr_has("estimated cost: 107 KRW");
    o.assert_stderr_has("2001 bytes in EUC-KR, more than the LMS limit of 2000");
    o.assert_stderr_has("the subject is 41 bytes in EUC-KR, more than the limit of 40");
    o.assert_stderr_has("'😀' (U+1F600) at character 3 of the subject");

    let o = env.run(&["campaign", "run", &id]).await;
    assert_eq!(o.code, 0, "{}", o.all());
    let rows = env.audit_json(&id).await;
    for (i, (body, subj, want)) in cases.iter().enumerate() {
        let phone = number(i as u64);
        let r = row(&rows, &phone);
        match want {
            Ok((kind, bytes)) => {
                assert_eq!(r["status"], "sent", "case {i}: {r}");
                assert_eq!(r["type"], *kind, "case {i}: {r}");
                assert_eq!(r["bytes"], *bytes, "case {i}: {r}");
                let m = cap.to(&phone);
                assert_eq!(m["type"], *kind, "case {i}: {m}");
                assert_eq!(m["text"], format!("{HEADER}{body}{FOOTER}"), "case {i}");
                if *kind == "LMS" {
                    assert_eq!(m["subject"], subj.as_str(), "case {i}: {m}");
                } else {
                    assert!(m["subject"].is_null(), "an SMS carries no subject: {m}");
                }
            }
            Err(code) => {
                assert_eq!(r["status"], "failed", "case {i}: {r}");
                assert_eq!(r["error"], *code, "case {i}: {r}");
            }
        }
    }
    assert_eq!(env.sim.stats().accepted, 5);

    // --subject replaces the template's subject for every LMS.
    let subject = mixed(40);
    let o = create(&env, "edges", "lms", &["--subject", &subject]).await;
    o.assert_stderr_has("8 recipients: 2 SMS, 5 LMS, 1 refused");
    let id = id_of(&o);
    env.ok(&["campaign", "run", &id]).await;
    assert_eq!(cap.to(&number(5))["subject"], subject.as_str());
    assert_eq!(cap.to(&number(4))["subject"], subject.as_str());
    let o = create(&env, "edges", "lms", &["--subject", &mixed(41)]).await;
    o.assert_stderr_has("refused subject_too_long: 5");
}

// ---------------------------------------------------------------------------------------
// 3. The ad law on the rendered text

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_ad_reaches_the_gateway_framed_and_informational_messages_do_not() {
    let env = Env::new(SimConfig::default()).await;
    let cap = Capture::start(&env).await;
    // Blank lines and trailing spaces around the body do not end up around the frame.
    env.write(
        "templates/spaced.txt",
        "\n\n{{ name }}님, 봄 세일!\n둘째 줄  \n\n",
    );
    let seg = env.segment_csv("seg.csv", 0, 3);
    let ad = env.campaign(&seg, "spaced", &[]).await;
    env.ok(&["campaign", "run", &ad]).await;
    for i in 0..3 {
        let m = cap.to(&number(i));
        assert_eq!(
            m["text"],
            format!("{HEADER}고객{i}님, 봄 세일!\n둘째 줄{FOOTER}"),
            "{m}"
        );
        assert_eq!(m["ad"], true, "{m}");
        assert_eq!(m["from"], "15881234", "{m}");
    }
    let o = create(&env, "seg", "spaced", &["--no-ad"]).await;
    let info = id_of(&o);
    env.ok(&["campaign", "run", &info]).await;
    for i in 0..3 {
        let m = cap.to(&number(i));
        assert_eq!(m["text"], format!("고객{i}님, 봄 세일!\n둘째 줄"), "{m}");
        assert_eq!(m["ad"], false, "{m}");
    }
    let st = env.status(&ad).await;
    assert_eq!(st["ad"], true);
    assert_eq!(env.status(&info).await["ad"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_writing_its_own_ad_header_or_opt_out_line_is_refused() {
    let env = Setup::new(3).segment().await;
    let cases = [
        ("(광고) {{ name }}님 봄 세일", 1, "\"(광고)\""),
        ("[광고] {{ name }}님 봄 세일", 1, "\"[광고]\""),
        ("{{ name }}님\n(광 고) 봄 세일", 2, "\"(광 고)\""),
        (
            "{{ name }}님 봄 세일\n무료수신거부 080-600-5653",
            2,
            "수신거부",
        ),
        (
            "{{ name }}님 봄 세일\n\n무료거부 0806005653",
            3,
            "\"무료거부\"",
        ),
        (
            "{{ name }}님 봄 세일\n문의 080-123-4567",
            2,
            "\"080-123-4567\"",
        ),
        (
            "---\nsubject: [광고] 봄 세일\n---\n{{ name }}님",
            2,
            "\"[광고]\"",
        ),
        (
            "---\nsubject: 봄 세일\n---\n{{ name }}님\n수신 거부: 080-600-5653",
            5,
            "\"수신 거부\"",
        ),
    ];
    for (i, (text, line, found)) in cases.iter().enumerate() {
        let name = format!("own{i}");
        env.write(&format!("templates/{name}.txt"), text);
        let o = create(&env, "seg", &name, &[]).await;
        assert_eq!(o.code, 1, "{text:?}:\n{}", o.all());
        assert!(o.stdout.is_empty(), "no id for a refused campaign");
        assert!(
            o.stderr
                .contains(&format!("line {line} of the template writes its own"))
                && o.stderr.contains(found)
                && o.stderr
                    .contains("munja adds the \"(광고) <brand>\" header"),
            "{text:?}:\n{}",
            o.all()
        );
        let o = env.run(&["template", "check", &name]).await;
        assert_eq!(o.code, 1, "{text:?}:\n{}", o.all());
        assert!(o.stderr.contains(found), "{text:?}:\n{}", o.all());
        // An informational message may say what it likes.
        env.ok(&["template", "check", &name, "--no-ad"]).await;
    }
    let o = create(&env, "seg", "hello", &["--subject", "(광고) 봄 세일"]).await;
    assert_eq!(o.code, 1, "{}", o.all());
    assert!(
        o.stderr.contains("--subject") && o.stderr.contains("\"(광고)\""),
        "{}",
        o.all()
    );
    let list = env.ok(&["campaign", "list", "--json"]).await;
    assert_eq!(campaigns(&list), 0, "nothing was created");
    let o = create(&env, "seg", "own0", &["--no-ad"]).await;
    id_of(&o);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ad_campaign_needs_a_brand_and_a_free_080_opt_out_number() {
    let env = Setup::new(2).segment().await;
    let good = std::fs::read_to_string(env.path("munja.toml")).unwrap();
    let cases = [
        ("brand = \"토스페이먼츠\"\n", "", "sender.brand"),
        (
            "brand = \"토스페이먼츠\"\n",
            "brand = \"  \"\n",
            "sender.brand",
        ),
        (
            "optout_number = \"080-600-5653\"\n",
            "",
            "sender.optout_number",
        ),
        (
            "optout_number = \"080-600-5653\"\n",
            "optout_number = \"02-123-4567\"\n",
            "must be a free 080 number",
        ),
    ];
    for (from, to, expected) in cases {
        assert!(good.contains(from));
        env.write("munja.toml", &good.replace(from, to));
        let o = create(&env, "seg", "hello", &[]).await;
        assert_eq!(o.code, 1, "{to:?}:\n{}", o.all());
        assert!(o.stdout.is_empty());
        assert!(o.stderr.contains(expected), "{to:?}:\n{}", o.all());
        let o = env
            .run(&["template", "preview", "hello", "--segment", "seg"])
            .await;
        assert_eq!(o.code, 1, "{to:?}:\n{}", o.all());
        assert!(o.stderr.contains(expected), "{to:?}:\n{}", o.all());
        // Informational messages need neither.
        let o = create(&env, "seg", "hello", &["--no-ad"]).await;
        id_of(&o);
    }
    // Any written form of the 080 number is printed in one form in the footer.
    env.write(
        "munja.toml",
        &good.replace("\"080-600-5653\"", "\"+82 80 600 5653\""),
    );
    let o = env
        .ok(&["template", "preview", "hello", "--segment", "seg"])
        .await;
    o.assert_stdout_has("\n무료수신거부 080-600-5653\n");
}

// ---------------------------------------------------------------------------------------
// 4. The night rule

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_night_ads_go_only_to_night_consent_and_the_rest_wait_for_the_morning() {
    let gw = Gw::default();
    let env = Env::new(SimConfig::default()).await;
    let consent = [
        ("Y", true),
        ("N", false),
        ("true", true),
        ("false", false),
        ("1", true),
        ("0", false),
        ("yes", true),
        ("", false),
        ("동의", true),
        ("미동의", false),
    ];
    let mut csv = String::from("phone,name,night_consent\n");
    for (i, (v, _)) in consent.iter().enumerate() {
        csv.push_str(&format!("{},고객{i},{v}\n", number(i as u64)));
    }
    csv.push_str(&format!("{},고객x,maybe\n", number(99)));
    env.ok(&["init"]).await;
    let o = import(&env, "night", &csv).await;
    o.assert_stdout_has("imported 10, merged duplicates 0, rejected 1");
    o.assert_stderr_has("line 12: invalid_night_consent");
    let ad = id_of(&create(&env, "night", "hello", &[]).await);
    let info = id_of(&create(&env, "night", "hello", &["--no-ad"]).await);
    let consenting: Vec<u64> = (0..10).filter(|&i| consent[i as usize].1).collect();

    // The default window 21:00-08:00, in a policy.timezone where it is now 02:xx.
    config_with_default_quiet_hours(
        &env,
        &gw,
        &format!("timezone = \"{}\"", zone_where_it_is(2)),
    );
    let o = env.run(&["campaign", "run", &ad]).await;
    assert_eq!(o.code, 2, "{}", o.all());
    assert!(
        o.stderr.contains("STOPPED") && o.stderr.contains("quiet_hours"),
        "{}",
        o.all()
    );
    o.assert_stderr_has("21:00-08:00");
    let st = env.status(&ad).await;
    assert_eq!(st["status"], "STOPPED");
    assert!(
        st["exit_message"]
            .as_str()
            .is_some_and(|m| m.starts_with("quiet_hours")),
        "{st}"
    );
    assert_eq!(
        (n(&st, "sent"), n(&st, "pending"), n(&st, "failed")),
        (consenting.len() as i64, 10 - consenting.len() as i64, 0)
    );
    let rows = env.audit_json(&ad).await;
    for i in 0..10 {
        let r = row(&rows, &number(i));
        let want = if consenting.contains(&i) {
            "sent"
        } else {
            "pending"
        };
        assert_eq!(
            r["status"], want,
            "night_consent {:?}: {r}",
            consent[i as usize].0
        );
    }
    assert_eq!(env.sim.stats().accepted, consenting.len() as u64);

    // Still night: nothing more can be sent, and the run says so again.
    let o = env.run(&["campaign", "run", &ad]).await;
    assert_eq!(o.code, 2, "{}", o.all());
    assert_eq!(env.sim.stats().accepted, consenting.len() as u64);

    // Informational messages have no night rule.
    let o = env.run(&["campaign", "run", &info]).await;
    assert_eq!(o.code, 0, "{}", o.all());
    assert_eq!(n(&env.status(&info).await, "sent"), 10);

    // Morning (14:xx local): the rest go out, nobody twice.
    config_with_default_quiet_hours(
        &env,
        &gw,
        &format!("timezone = \"{}\"", zone_where_it_is(14)),
    );
    let o = env.run(&["campaign", "run", &ad]).await;
    assert_eq!(o.code, 0, "{}", o.all());
    let st = env.status(&ad).await;
    assert_eq!(st["status"], "COMPLETED");
    assert_eq!((n(&st, "sent"), n(&st, "failed")), (10, 0));
    let s = env.sim.stats();
    assert_eq!((s.accepted, s.numbers_accepted_twice), (20, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_hours_beginning_mid_run_stop_sends_to_recipients_without_night_consent() {
    let gw = Gw {
        rate: 20,
        burst: 1,
        ..Gw::default()
    };
    let env = Env::with(SimConfig::default(), gw.clone(), "").await;
    let mut csv = String::from("phone,name,night_consent\n");
    for i in 0..80 {
        csv.push_str(&format!("{},고객{i},{}\n", number(i), i % 2 == 0));
    }
    env.ok(&["init"]).await;
    import(&env, "seg", &csv).await;
    let id = id_of(&create(&env, "seg", "hello", &[]).await);
    // 80 messages at 20/s take 4 s; the window opens 2 to 3 s after the run starts.
    let start = (Utc::now() + TimeDelta::seconds(3))
        .with_nanosecond(0)
        .unwrap();
    let seoul = start.with_timezone(&chrono_tz::Asia::Seoul);
    let end = seoul + TimeDelta::minutes(30);
    env.write_config(
        &gw,
        &format!(
            "quiet_hours = \"{}-{}\"",
            seoul.format("%H:%M:%S"),
            end.format("%H:%M:%S")
        ),
    );
    let o = env.run(&["campaign", "run", &id]).await;
    assert_eq!(o.code, 2, "{}", o.all());
    let st = env.status(&id).await;
    assert_eq!(st["status"], "STOPPED");
    assert!(
        st["exit_message"]
            .as_str()
            .is_some_and(|m| m.starts_with("quiet_hours")),
        "{st}"
    );
    assert_eq!(n(&st, "failed"), 0);
    let rows = env.audit_json(&id).await;
    let at = |r: &Value| -> DateTime<Utc> {
        r["last_attempt_at"]
            .as_str()
            .and_then(|t| t.parse().ok())
            .unwrap_or_else(|| panic!("no last_attempt_at in {r}"))
    };
    let (mut early_non_consenting, mut late_consenting, mut held) = (0, 0, 0);
    for i in 0..80 {
        let r = row(&rows, &number(i));
        let consent = i % 2 == 0;
        match (r["status"].as_str(), consent) {
            (Some("sent"), false) => {
                assert!(
                    at(r) < start,
                    "sent without night consent at {} after quiet hours began at {start}: {r}",
                    at(r)
                );
                early_non_consenting += 1;
            }
            (Some("sent"), true) => late_consenting += usize::from(at(r) >= start),
            (Some("pending"), false) => held += 1,
            _ => panic!("unexpected {r} (night consent {consent})"),
        }
    }
    assert!(early_non_consenting > 0, "the run began before the window");
    assert!(held > 0, "the window began during the run");
    assert!(late_consenting > 0, "consenting recipients kept receiving");

    env.write_config(&gw, "");
    env.run_sends_once(&id, 80).await;
}

// ---------------------------------------------------------------------------------------
// 5. template check, template preview, and the report of campaign create

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_preview_and_create_report_what_will_be_sent() {
    let env = Env::new(SimConfig::default()).await;
    env.write(
        "templates/offer.txt",
        "---\nsubject: {{ name }}님께 드리는 혜택\n---\n{{ name }}님 {{ body }}",
    );
    env.ok(&["init"]).await;
    let o = env.ok(&["template", "check", "offer"]).await;
    o.assert_stdout_has("template offer: OK");
    o.assert_stdout_has("variables: body, name");
    o.assert_stdout_has("subject: {{ name }}님께 드리는 혜택");
    let mut csv = String::from("phone,name,body\n");
    for i in 0..3 {
        csv.push_str(&format!("{},고객{i},봄 세일\n", number(i)));
    }
    for i in 3..5 {
        csv.push_str(&format!("{},고객{i},{}\n", number(i), mixed(100)));
    }
    csv.push_str(&format!("{},고객5,봄 세일 🌸\n", number(5)));
    import(&env, "seg", &csv).await;

    // Default limit 3; every block names the masked number, type and bytes.
    let o = env
        .ok(&["template", "preview", "offer", "--segment", "seg"])
        .await;
    assert_eq!(o.stdout.matches("── 010-****-").count(), 3, "{}", o.all());
    for i in 0..3 {
        o.assert_stdout_has(&format!(
            "── 010-****-000{i} ──\n[SMS 61 bytes]\n{HEADER}고객{i}님 봄 세일{FOOTER}\n"
        ));
    }
    let o = env
        .run(&[
            "template",
            "preview",
            "offer",
            "--segment",
            "seg",
            "--limit",
            "6",
        ])
        .await;
    assert_eq!(
        o.code,
        1,
        "a refused recipient fails the preview:\n{}",
        o.all()
    );
    assert_eq!(o.stdout.matches("── 010-****-").count(), 6, "{}", o.all());
    o.assert_stdout_has("[LMS 154 bytes]\nsubject: 고객3님께 드리는 혜택\n");
    o.assert_stdout_has("── 010-****-0005 ──\nREFUSED unencodable_char: '🌸'");
    let o = env
        .ok(&[
            "template",
            "preview",
            "offer",
            "--segment",
            "seg",
            "--limit",
            "1",
        ])
        .await;
    assert_eq!(o.stdout.matches("── 010-****-").count(), 1, "{}", o.all());
    for bad in ["--limit=0", "--limit=-1"] {
        let o = env
            .run(&["template", "preview", "offer", "--segment", "seg", bad])
            .await;
        assert_eq!(o.code, 1, "{bad}: {}", o.all());
        o.assert_stderr_has("--limit must be at least 1");
    }
    let o = env
        .run(&["template", "preview", "offer", "--segment", "nope"])
        .await;
    assert_eq!(o.code, 1);
    o.assert_stderr_has("no segment named \"nope\"");

    // create: counts on stderr, id alone on stdout.
    let o = create(&env, "seg", "offer", &[]).await;
    id_of(&o);
    o.assert_stderr_has("6 recipients: 3 SMS, 2 LMS, 1 refused");
    o.assert_stderr_has("refused unencodable_char: 1");
    o.assert_stderr_has("010-****-0005");
    // 3 × 9.9 + 2 × 29 = 87.7
    o.assert_stderr_has("estimated cost: 88 KRW");

    // Nobody can be sent: nothing is created.
    import(
        &env,
        "flowers",
        &format!("phone,name,body\n{},a,🌸\n{},b,₩\n", number(0), number(1)),
    )
    .await;
    let o = create(&env, "flowers", "offer", &[]).await;
    assert_eq!(o.code, 1, "{}", o.all());
    assert!(o.stdout.is_empty(), "{}", o.all());
    assert!(
        o.stderr.contains("nothing was created")
            && o.stderr.contains("2 recipients: 0 SMS, 0 LMS, 2 refused"),
        "{}",
        o.all()
    );
    assert_eq!(campaigns(&env.ok(&["campaign", "list", "--json"]).await), 1);
}

// ---------------------------------------------------------------------------------------
// 6. CSV encodings

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn utf8_with_bom_and_cp949_files_render_hangul_and_other_bytes_are_refused() {
    let env = Env::new(SimConfig::default()).await;
    env.ok(&["init"]).await;
    // BOM before the first column, which is a template variable.
    let mut bom = b"\xEF\xBB\xBFname,phone\n".to_vec();
    bom.extend_from_slice(format!("김민수,{}\n", number(0)).as_bytes());
    let f = env.path("bom.csv");
    std::fs::write(&f, bom).unwrap();
    let o = env.import("bom", &f).await;
    o.assert_stdout_has("imported 1");
    o.assert_stdout_has("(UTF-8)");
    let o = env
        .ok(&["template", "preview", "hello", "--segment", "bom"])
        .await;
    o.assert_stdout_has("\n김민수님 안녕하세요\n");

    // A Korean Excel export: CP949, with syllables beyond EUC-KR (똠, 햏).
    let cp949 = |s: &str| encoding_rs::EUC_KR.encode(s).0.into_owned();
    let f = env.path("cp949.csv");
    std::fs::write(
        &f,
        cp949(&format!(
            "phone,name\n{},김민수\n{},똠방각하\n{},햏\n",
            number(1),
            number(2),
            number(3)
        )),
    )
    .unwrap();
    let o = env.import("cp", &f).await;
    o.assert_stdout_has("imported 3, merged duplicates 0, rejected 0 (CP949)");
    let opt = env.path("optout-cp949.csv");
    std::fs::write(
        &opt,
        cp949(&format!("phone,메모\n{},수신거부 요청\n", number(3))),
    )
    .unwrap();
    let o = env.ok(&["optout", "import", opt.to_str().unwrap()]).await;
    o.assert_stdout_has("imported 1");
    o.assert_stdout_has("(CP949)");
    let o = env
        .ok(&["template", "preview", "hello", "--segment", "cp"])
        .await;
    o.assert_stdout_has("\n김민수님 안녕하세요\n");
    o.assert_stdout_has("\n똠방각하님 안녕하세요\n");
    let id = id_of(&create(&env, "cp", "hello", &[]).await);
    env.ok(&["campaign", "run", &id]).await;
    let rows = env.audit_json(&id).await;
    assert_eq!(row(&rows, &number(2))["bytes"], 67, "똠방각하 is 8 bytes");
    assert_eq!(row(&rows, &number(3))["error"], "opted_out");

    // Neither UTF-8 nor CP949: refused, naming the line, nothing imported.
    let f = env.path("latin1.csv");
    let mut latin1 = format!("phone,name\n{},Kim\n{},Jos", number(4), number(5)).into_bytes();
    latin1.extend_from_slice(b"\xE9\n"); // é in ISO-8859-1
    std::fs::write(&f, latin1).unwrap();
    let o = env
        .run(&["segment", "import", "latin", f.to_str().unwrap()])
        .await;
    assert_eq!(o.code, 1, "{}", o.all());
    assert!(
        o.stderr.contains("latin1.csv line 3: ") && o.stderr.contains("neither UTF-8 nor CP949"),
        "{}",
        o.all()
    );
    let list = env.ok(&["segment", "list", "--json"]).await;
    assert!(!list.stdout.contains("\"latin\""), "{}", list.all());
}

// ---------------------------------------------------------------------------------------
// 7. Privacy

/// `010-1234-5678`
fn hyphenated(canonical: &str) -> String {
    format!(
        "{}-{}-{}",
        &canonical[..3],
        &canonical[3..7],
        &canonical[7..]
    )
}

/// Written forms of a recipient's full number that must never be printed outside exports
/// (each also matches the forms with a leading 0 or +82).
fn full_forms(canonical: &str) -> Vec<String> {
    let (a, b, c) = (&canonical[1..3], &canonical[3..7], &canonical[7..]);
    vec![
        canonical[1..].to_string(), // 01012345678, +821012345678, 821012345678
        format!("{a}-{b}-{c}"),     // 010-1234-5678, +82 10-1234-5678
        format!("{a} {b} {c}"),
        format!("{a}.{b}.{c}"),
    ]
}

fn assert_private(what: &str, o: &Out, phones: &[String], key: &str) {
    let all = o.all();
    assert!(!all.contains(key), "{what} printed the gateway key:\n{all}");
    for p in phones {
        for form in full_forms(p) {
            assert!(
                !all.contains(&form),
                "{what} printed the full number {form}:\n{all}"
            );
        }
    }
}

const KEY_VAR: &str = "MUNJA_KOREAN_TEST_KEY";
const KEY: &str = "kr-gw-key-5f3a9c";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_command_prints_a_full_number_or_the_gateway_key_even_with_debug_logs() {
    let sim = SimConfig {
        api_key: Some(KEY.into()),
        fail_rate: 0.2,
        seed: Some(11),
        ..SimConfig::default()
    };
    let gw = Gw {
        api_key_env: Some(KEY_VAR.into()),
        ..Gw::default()
    };
    let env = Env::with(sim, gw, "").await;
    env.write(
        "templates/ratio.txt",
        "{{ name }}님 {{ 100 // (n|int) }}% 할인",
    );
    let phones: Vec<String> = (0..20).map(number).collect();
    let mut csv = String::from("phone,name,n\n");
    for (i, p) in phones.iter().enumerate() {
        let (name, div) = match i {
            4 => ("고객4", 0),  // template_error
            5 => ("고객😀", 4), // unencodable_char
            _ => ("고객", 4),
        };
        csv.push_str(&format!("{},{name},{div}\n", hyphenated(p)));
    }
    csv.push_str("02-123-4567,지점,4\n010-2000-00,짧은,4\n");
    env.write("seg.csv", &csv);
    env.write(
        "optouts.csv",
        &format!("phone\n+82 {}\nabc\n", &hyphenated(&phones[1])[1..]),
    );
    let vars = [(KEY_VAR, KEY)];
    let hyphen = hyphenated(&phones[2]);
    let bad = format!("{}9", phones[6]);
    let commands: Vec<Vec<&str>> = vec![
        vec!["init"],
        vec!["-vv", "optout", "import", "optouts.csv"],
        vec!["optout", "add", &hyphen],
        vec!["optout", "check", &hyphen],
        vec!["optout", "check", &phones[3]],
        vec!["optout", "add", &bad],
        vec!["-vv", "segment", "import", "seg", "seg.csv"],
        vec!["segment", "list"],
        vec!["template", "check", "ratio"],
        vec![
            "template",
            "preview",
            "ratio",
            "--segment",
            "seg",
            "--limit",
            "20",
        ],
    ];
    for args in &commands {
        let o = env.run_with(args, &vars).await;
        assert_private(&format!("munja {args:?}"), &o, &phones, KEY);
    }
    let mut create = vec!["-vv"];
    create.extend(create_args("p", "seg", "ratio", &[]));
    let o = env.run_with(&create, &vars).await;
    assert_private("campaign create", &o, &phones, KEY);
    let id = id_of(&o);
    o.assert_stderr_has("010-****-0004");
    let o = env.run_with(&["-vv", "campaign", "run", &id], &vars).await;
    assert_eq!(o.code, 0, "{}", o.all());
    assert!(
        o.stderr.contains("DEBUG"),
        "debug logs were on:\n{}",
        o.all()
    );
    assert!(env.sim.stats().faults_503 > 0, "retries were logged");
    assert_private("campaign run -vv", &o, &phones, KEY);
    let later: Vec<Vec<&str>> = vec![
        vec!["campaign", "status", &id],
        vec!["campaign", "status", &id, "--json"],
        vec!["campaign", "list"],
        vec!["audit", "--campaign", &id],
        vec!["audit", "--campaign", &id, "--status", "failed"],
        vec!["audit", "--campaign", &id, "--phone", &hyphen],
        vec!["audit", "--campaign", &id, "--phone", &bad],
    ];
    for args in &later {
        let o = env.run_with(args, &vars).await;
        assert_private(&format!("munja {args:?}"), &o, &phones, KEY);
    }
    // Explicit exports do carry the numbers.
    let o = env
        .ok(&["audit", "--campaign", &id, "--format", "json"])
        .await;
    assert!(o.stdout.contains(&phones[0]));
    let st = env.status(&id).await;
    assert_eq!(
        (n(&st, "sent"), n(&st, "failed"), n(&st, "suppressed")),
        (16, 2, 2)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_rejections_do_not_leak_the_number_into_debug_logs() {
    let sim = SimConfig {
        invalid_prefix: Some(number(3)),
        ..SimConfig::default()
    };
    let env = Env::new(sim).await;
    let seg = env.segment_csv("seg.csv", 0, 5);
    let id = env.campaign(&seg, "hello", &[]).await;
    let o = env.run(&["-vv", "campaign", "run", &id]).await;
    assert_eq!(o.code, 0, "{}", o.all());
    let rows = env.audit_json(&id).await;
    assert_eq!(row(&rows, &number(3))["error"], "invalid_number");
    let phones: Vec<String> = (0..5).map(number).collect();
    assert_private("campaign run -vv", &o, &phones, "no key");
}

// ---------------------------------------------------------------------------------------
// 8. Frequency cap

/// Moves every `sent_at` of campaign `id` back by `days` (time passing, for the cap window).
async fn age_campaign(env: &Env, id: &str, days: i64) {
    let when =
        (Utc::now() - TimeDelta::days(days)).to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let id: i64 = id.parse().expect("campaign id");
    let changed = env
        .db()
        .await
        .execute(&format!(
            "UPDATE messages SET sent_at = '{when}' WHERE campaign_id = {id} AND state = 'sent'"
        ))
        .await;
    assert!(changed > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frequency_cap_suppresses_recipients_who_had_enough_ads_in_the_window() {
    let env = Setup::new(0)
        .policy("max_ads_per_recipient = { count = 2, days = 30 }")
        .env()
        .await;
    env.ok(&["init"]).await;
    let six = env.segment_csv("six.csv", 0, 6);
    let ten = env.segment_csv("ten.csv", 0, 10);
    env.import("six", &six).await;
    env.import("ten", &ten).await;
    let mut ids = Vec::new();
    for _ in 0..2 {
        let id = id_of(&create(&env, "six", "hello", &[]).await);
        env.ok(&["campaign", "run", &id]).await;
        assert_eq!(n(&env.status(&id).await, "sent"), 6);
        ids.push(id);
    }
    // Numbers 0-5 had two ads: capped. 6-9 had none.
    let third = id_of(&create(&env, "ten", "hello", &[]).await);
    let o = env.run(&["campaign", "run", &third]).await;
    assert_eq!(o.code, 0, "{}", o.all());
    let st = env.status(&third).await;
    assert_eq!(st["status"], "COMPLETED");
    assert_eq!(
        (
            n(&st, "sent"),
            n(&st, "suppressed"),
            n(&st, "failed"),
            n(&st, "pending")
        ),
        (4, 6, 0, 0)
    );
    let rows = env.audit_json(&third).await;
    for i in 0..10 {
        let r = row(&rows, &number(i));
        if i < 6 {
            assert_eq!(
                (&r["status"], &r["error"]),
                (&Value::from("suppressed"), &Value::from("frequency_cap")),
                "{r}"
            );
        } else {
            assert_eq!(r["status"], "sent", "{r}");
        }
    }
    assert_eq!(env.sim.stats().accepted, 16);

    // 40 days later the first campaign is out of the window: 0-5 have one recent ad (the
    // second campaign), 6-9 one (the third), so everyone gets this one.
    age_campaign(&env, &ids[0], 40).await;
    let st = run_hello(&env, "ten", &[]).await;
    assert_eq!((n(&st, "sent"), n(&st, "suppressed")), (10, 0));
    // And now everyone has two recent ads.
    let st = run_hello(&env, "ten", &[]).await;
    assert_eq!((n(&st, "sent"), n(&st, "suppressed")), (0, 10));
    assert_eq!(st["status"], "COMPLETED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn informational_messages_are_neither_capped_nor_counted_as_ads() {
    let (env, info) = Setup::new(5)
        .policy("max_ads_per_recipient = { count = 1, days = 30 }")
        .create_with(&["--no-ad"])
        .campaign()
        .await;
    env.ok(&["campaign", "run", &info]).await;
    // The informational message did not count: the ad goes out.
    let ad = id_of(&create(&env, "seg", "hello", &[]).await);
    env.ok(&["campaign", "run", &ad]).await;
    assert_eq!(n(&env.status(&ad).await, "sent"), 5);
    // Everyone had their one ad: another informational message still goes out...
    let st = run_hello(&env, "seg", &["--no-ad"]).await;
    assert_eq!((n(&st, "sent"), n(&st, "suppressed")), (5, 0));
    // ...but another ad does not.
    let st = run_hello(&env, "seg", &[]).await;
    assert_eq!((n(&st, "sent"), n(&st, "suppressed")), (0, 5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cp949_file_whose_hangul_starts_after_the_first_64_kib_is_read_as_cp949() {
    let env = Env::new(SimConfig::default()).await;
    env.write("templates/raw.txt", "{{ name }}");
    env.ok(&["init"]).await;
    // An Excel export whose first 4,500 rows are ASCII: the encoding shows only at the end.
    let mut text = String::from("phone,name\n");
    for i in 0..4500 {
        text.push_str(&format!("{},VIP\n", number(i)));
    }
    text.push_str(&format!("{},김민수\n", number(4500)));
    let f = env.path("late.csv");
    std::fs::write(&f, encoding_rs::EUC_KR.encode(&text).0).unwrap();
    let o = env
        .run(&["segment", "import", "late", f.to_str().unwrap()])
        .await;
    assert_eq!(o.code, 0, "{}", o.all());
    o.assert_stdout_has("imported 4501, merged duplicates 0, rejected 0 (CP949)");
    let id = id_of(&create(&env, "late", "raw", &["--no-ad"]).await);
    env.ok(&["campaign", "run", &id]).await;
    let one = env
        .ok(&[
            "audit",
            "--campaign",
            &id,
            "--phone",
            &number(4500),
            "--format",
            "json",
        ])
        .await;
    let one: Vec<Value> = serde_json::from_str(&one.stdout).unwrap();
    assert_eq!(
        (&one[0]["status"], &one[0]["bytes"]),
        (&Value::from("sent"), &Value::from(6))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hangul_column_names_are_template_variables() {
    let env = Env::new(SimConfig::default()).await;
    env.write("templates/ko.txt", "{{ 이름 }}님, {{ 등급 }} 혜택");
    let o = env.ok(&["template", "check", "ko"]).await;
    o.assert_stdout_has("variables: 등급, 이름");
    env.ok(&["init"]).await;
    import(
        &env,
        "ko",
        &format!("phone,이름,등급\n{},김민수,VIP\n", number(0)),
    )
    .await;
    let o = env
        .ok(&["template", "preview", "ko", "--segment", "ko"])
        .await;
    o.assert_stdout_has("\n김민수님, VIP 혜택\n");
}
