//! Message templates: loading `{templates_dir}/{NAME}.txt`, parsing the optional
//! front matter (the LMS `subject`), compiling body and subject with minijinja in
//! strict-undefined mode, and rendering them per recipient.
//!
//! A template writes only the message body. The `(광고)` header, the sender line and
//! the free opt-out footer are added elsewhere (see `compliance`), never here.
//!
//! File format:
//!
//! ```text
//! ---
//! subject: 토스페이먼츠 채용 소식
//! ---
//! {{ name }}님, 안녕하세요. ...
//! ```
//!
//! The front matter is optional; when present it is exactly the three lines above
//! (only the `subject` key is known, and it is required inside the block). Because its
//! shape is fixed, line numbers in errors are always lines of the file: a body line `n`
//! is file line `n + 3` when the template has a subject.
//!
//! Rendering is plain text: no auto-escaping, `trim_blocks` and `lstrip_blocks` on (so
//! `{% if %}` lines leave no blank lines behind), undefined variables are errors, and
//! trailing whitespace of the rendered body is trimmed.
//!
//! Rendering runs on a budget ([`FUEL`] engine steps per message), so a runaway loop is an
//! error naming the template instead of a hang. [`Renderer::new`] already renders once with
//! placeholder values, so a template that cannot finish is refused before anything is sent.

use std::collections::{BTreeSet, HashSet};
use std::fmt::Write as _;
use std::path::Path;

use minijinja::syntax::SyntaxConfig;
use minijinja::value::Serde;
use minijinja::{AutoEscape, Environment, ErrorKind, UndefinedBehavior};
use serde_json::{Map, Value};

/// Name of the body template inside the [`Renderer`]'s environment.
const BODY: &str = "body";
/// Name of the subject template inside the [`Renderer`]'s environment.
const SUBJECT: &str = "subject";
/// The line that opens and closes the front matter.
const FENCE: &str = "---";
/// File line of the `subject:` line (front matter is always `---`, `subject: ...`, `---`).
pub const SUBJECT_LINE: usize = 2;
/// Number of file lines taken by the front matter when a template has a subject.
pub const FRONT_MATTER_LINES: usize = 3;
/// Engine steps one message may take (minijinja fuel). A real message template takes a few
/// hundred; a loop of a thousand short iterations takes some ten thousand.
pub const FUEL: u64 = 100_000;
/// How an out-of-[`FUEL`] error begins (after any "in the subject: "), so that callers can
/// tell a runaway template from a problem with one recipient's values.
pub const TOO_MUCH_WORK: &str = "the template does too much work for one message";

/// A template as written by the user: its name, the body text and the optional LMS
/// subject (itself a template). Serializable so a campaign can snapshot exactly what
/// it renders.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TemplateSource {
    /// Template name (the file stem, e.g. `recruit` for `templates/recruit.txt`).
    pub name: String,
    /// Body template text, without the front matter.
    pub body: String,
    /// Subject template text from the front matter, if any.
    pub subject: Option<String>,
}

/// A problem with a template: loading, parsing, compiling or rendering it.
///
/// Displays as `template 'recruit' line 3: undefined variable 'name' (...)`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("template '{template}'{}: {message}", line_suffix(.line))]
pub struct TemplateError {
    /// Name of the template concerned.
    pub template: String,
    /// 1-based line in the template file, when known.
    pub line: Option<usize>,
    /// The undefined variable, for "undefined variable" errors.
    pub variable: Option<String>,
    /// What went wrong and how to fix it.
    pub message: String,
}

fn line_suffix(line: &Option<usize>) -> String {
    line.map(|l| format!(" line {l}")).unwrap_or_default()
}

impl TemplateError {
    fn new(template: &str, line: Option<usize>, message: impl Into<String>) -> TemplateError {
        TemplateError {
            template: template.to_string(),
            line,
            variable: None,
            message: message.into(),
        }
    }

    fn undefined_variable(template: &str, line: Option<usize>, variable: &str) -> TemplateError {
        TemplateError {
            template: template.to_string(),
            line,
            variable: Some(variable.to_string()),
            message: format!(
                "undefined variable '{variable}' (give every recipient a value for it, \
                 e.g. a '{variable}' column in the segment, or remove it from the template)"
            ),
        }
    }

    /// Stable machine-readable code for this error kind: `"template_error"`.
    pub fn code(&self) -> &'static str {
        "template_error"
    }

    /// For an undefined-variable error, replace the fix hint with the list of columns
    /// the segment does have. Other errors are returned unchanged.
    pub fn with_columns(mut self, cols: &[String]) -> Self {
        if let Some(variable) = &self.variable {
            let columns = if cols.is_empty() {
                "(none)".to_string()
            } else {
                cols.join(", ")
            };
            self.message = format!(
                "undefined variable '{variable}' (the segment has no such column; columns are: {columns})"
            );
        }
        self
    }
}

/// Whether `name` is a valid template name: `[A-Za-z0-9_-]+`.
fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Names of the templates (`*.txt` with a valid stem) in `dir`, sorted.
fn available_templates(dir: &Path) -> std::io::Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let file_name = entry.file_name();
        let Some(file_name) = file_name.to_str() else {
            continue;
        };
        if let Some(stem) = file_name.strip_suffix(".txt")
            && is_valid_name(stem)
            && entry.path().is_file()
        {
            names.push(stem.to_string());
        }
    }
    names.sort();
    Ok(names)
}

impl TemplateSource {
    /// Load and parse `{dir}/{name}.txt`.
    ///
    /// `name` must match `[A-Za-z0-9_-]+`. When the file does not exist the error lists
    /// the templates that do exist in `dir`. The file must be UTF-8 (a BOM is allowed).
    pub fn load(dir: &Path, name: &str) -> Result<TemplateSource, TemplateError> {
        if !is_valid_name(name) {
            let hint = match name.strip_suffix(".txt") {
                Some(stem) if is_valid_name(stem) => {
                    format!(" (give the name without '.txt': '{stem}')")
                }
                _ => String::new(),
            };
            return Err(TemplateError::new(
                name,
                None,
                format!(
                    "invalid template name: use only letters, digits, '_' and '-'; \
                     the template is read from {}/NAME.txt{hint}",
                    dir.display()
                ),
            ));
        }
        let path = dir.join(format!("{name}.txt"));
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let message = match available_templates(dir) {
                    Ok(names) if names.is_empty() => format!(
                        "{} does not exist and {} holds no templates; create {}",
                        path.display(),
                        dir.display(),
                        path.display()
                    ),
                    Ok(names) => format!(
                        "{} does not exist; templates in {}: {}",
                        path.display(),
                        dir.display(),
                        names.join(", ")
                    ),
                    Err(dir_err) => format!(
                        "{} does not exist and the templates directory {} cannot be read ({dir_err}); \
                         check the templates directory setting",
                        path.display(),
                        dir.display()
                    ),
                };
                return Err(TemplateError::new(name, None, message));
            }
            Err(e) => {
                return Err(TemplateError::new(
                    name,
                    None,
                    format!("cannot read {}: {e}", path.display()),
                ));
            }
        };
        let text = match String::from_utf8(bytes) {
            Ok(text) => text,
            Err(e) => {
                let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
                let line = valid.iter().filter(|&&b| b == b'\n').count() + 1;
                return Err(TemplateError::new(
                    name,
                    Some(line),
                    format!(
                        "{} is not UTF-8 text; save it as UTF-8 (without changing its content)",
                        path.display()
                    ),
                ));
            }
        };
        TemplateSource::parse(name, &text)
    }

    /// Parse template text: split off the optional front matter (`---` /
    /// `subject: ...` / `---`) and keep the rest as the body.
    ///
    /// A leading BOM is dropped and CRLF line endings become LF.
    pub fn parse(name: &str, text: &str) -> Result<TemplateSource, TemplateError> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let normalized;
        let text = if text.contains('\r') {
            normalized = text.replace("\r\n", "\n");
            normalized.as_str()
        } else {
            text
        };
        let err = |line: usize, message: String| TemplateError::new(name, Some(line), message);

        let (first, rest) = text.split_once('\n').unwrap_or((text, ""));
        if first.trim_end() != FENCE {
            return Self::finish(name, text, None, 1);
        }

        // Front matter: collect the lines up to the closing fence.
        let mut subject: Option<String> = None;
        let mut remaining = rest;
        let mut line_no = 1;
        loop {
            if remaining.is_empty() {
                return Err(err(
                    1,
                    "the front matter opened here is never closed; add a '---' line after \
                     the 'subject: ...' line"
                        .to_string(),
                ));
            }
            let (line, after) = remaining.split_once('\n').unwrap_or((remaining, ""));
            remaining = after;
            line_no += 1;
            let line = line.trim_end();
            if line == FENCE {
                break;
            }
            if line.trim().is_empty() {
                return Err(err(
                    line_no,
                    "blank line in the front matter; it holds exactly one 'subject: ...' line"
                        .to_string(),
                ));
            }
            let key_value = line.split_once(':').filter(|(key, _)| is_key(key.trim()));
            let Some((key, value)) = key_value else {
                let message = if subject.is_some() {
                    format!(
                        "expected '---' closing the front matter opened on line 1, found '{line}'"
                    )
                } else {
                    format!("expected 'subject: <LMS subject>' in the front matter, found '{line}'")
                };
                return Err(err(line_no, message));
            };
            let key = key.trim();
            if key != "subject" {
                return Err(err(
                    line_no,
                    format!(
                        "unknown front-matter key '{key}' (the only known key is 'subject'); \
                         remove the line"
                    ),
                ));
            }
            if subject.is_some() {
                return Err(err(
                    line_no,
                    "'subject' is given twice in the front matter; keep one".to_string(),
                ));
            }
            let value = unquote(value.trim()).trim();
            if value.is_empty() {
                return Err(err(
                    line_no,
                    "the subject is empty; write 'subject: <LMS subject>' or remove the front matter"
                        .to_string(),
                ));
            }
            subject = Some(value.to_string());
        }
        if subject.is_none() {
            return Err(err(
                1,
                "the front matter has no 'subject: ...' line; add one or remove the '---' lines"
                    .to_string(),
            ));
        }
        Self::finish(name, remaining, subject, line_no + 1)
    }

    fn finish(
        name: &str,
        body: &str,
        subject: Option<String>,
        body_line: usize,
    ) -> Result<TemplateSource, TemplateError> {
        if body.trim().is_empty() {
            return Err(TemplateError::new(
                name,
                Some(body_line),
                "the template has no body; write the message text (without the (광고) header \
                 and the opt-out footer, munja adds those)",
            ));
        }
        Ok(TemplateSource {
            name: name.to_string(),
            body: body.to_string(),
            subject,
        })
    }
}

/// Whether `key` looks like a front-matter key (`[A-Za-z0-9_-]+`).
fn is_key(key: &str) -> bool {
    is_valid_name(key)
}

/// Strip one pair of matching surrounding quotes (`"..."` or `'...'`).
fn unquote(value: &str) -> &str {
    for q in ['"', '\''] {
        if let Some(inner) = value.strip_prefix(q).and_then(|v| v.strip_suffix(q)) {
            return inner;
        }
    }
    value
}

/// Which part of a template an error comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Body,
    Subject,
}

/// A compiled template, ready to render many messages.
///
/// The minijinja environment is built once in [`Renderer::new`]; [`Renderer::render`]
/// only looks the compiled templates up by name.
pub struct Renderer {
    env: Environment<'static>,
    name: String,
    body_source: String,
    subject_source: Option<String>,
    body_vars: BTreeSet<String>,
    subject_vars: BTreeSet<String>,
}

impl std::fmt::Debug for Renderer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Renderer")
            .field("name", &self.name)
            .field("body_vars", &self.body_vars)
            .field("subject_vars", &self.subject_vars)
            .finish_non_exhaustive()
    }
}

impl Renderer {
    /// Compile the body (and subject). Syntax errors carry the file line.
    pub fn new(src: &TemplateSource) -> Result<Renderer, TemplateError> {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_auto_escape_callback(|_| AutoEscape::None);
        env.set_syntax(
            SyntaxConfig::builder()
                .keep_trailing_newline(false)
                .trim_blocks(true)
                .lstrip_blocks(true)
                .build()
                .expect("the default delimiters are valid"),
        );
        // Debug mode keeps the failing expression's span, used to name undefined variables.
        env.set_debug(true);
        env.set_fuel(Some(FUEL));

        let mut renderer = Renderer {
            env,
            name: src.name.clone(),
            body_source: src.body.clone(),
            subject_source: src.subject.clone(),
            body_vars: BTreeSet::new(),
            subject_vars: BTreeSet::new(),
        };
        renderer
            .env
            .add_template_owned(BODY, src.body.clone())
            .map_err(|e| renderer.convert(&e, Part::Body, None))?;
        if let Some(subject) = &src.subject {
            renderer
                .env
                .add_template_owned(SUBJECT, subject.clone())
                .map_err(|e| renderer.convert(&e, Part::Subject, None))?;
        }
        renderer.body_vars = renderer.undeclared(BODY);
        if src.subject.is_some() {
            renderer.subject_vars = renderer.undeclared(SUBJECT);
        }
        renderer.check_work()?;
        Ok(renderer)
    }

    /// Renders once with placeholder values (each variable holds its own name) and refuses a
    /// template that runs out of [`FUEL`]: a loop that cannot finish for any recipient. Other
    /// errors depend on the recipients' values and are reported per message instead.
    fn check_work(&self) -> Result<(), TemplateError> {
        let parts = [
            (BODY, Part::Body, &self.body_vars),
            (SUBJECT, Part::Subject, &self.subject_vars),
        ];
        for (template_name, part, names) in parts {
            let Ok(template) = self.env.get_template(template_name) else {
                continue;
            };
            let vars: Map<String, Value> = names
                .iter()
                .map(|n| (n.clone(), Value::String(n.clone())))
                .collect();
            if let Err(e) = template.render(Serde(&vars))
                && runs_away(&e)
            {
                return Err(self.convert(&e, part, Some(&vars)));
            }
        }
        Ok(())
    }

    /// Variables used by `template_name`, minus the environment's globals (`range`, ...).
    fn undeclared(&self, template_name: &str) -> BTreeSet<String> {
        let globals: HashSet<&str> = self.env.globals().map(|(name, _)| name).collect();
        match self.env.get_template(template_name) {
            Ok(t) => t
                .undeclared_variables(false)
                .into_iter()
                .filter(|v| !globals.contains(v.as_str()))
                .collect(),
            Err(_) => BTreeSet::new(),
        }
    }

    /// The template's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Variables the template reads from the recipient (body and subject), e.g.
    /// `{"name"}`. Variables it sets itself (`{% set %}`, loop variables) and minijinja
    /// globals such as `range` are not included.
    pub fn variables(&self) -> BTreeSet<String> {
        self.body_vars.union(&self.subject_vars).cloned().collect()
    }

    /// Render body and subject with the recipient's variables.
    ///
    /// The body's trailing whitespace is trimmed (internal newlines are kept); the
    /// subject is trimmed on both sides.
    pub fn render(&self, vars: &Map<String, Value>) -> Result<Rendered, TemplateError> {
        let body = self.render_part(BODY, Part::Body, vars)?;
        let body = trim_end_owned(body);
        let subject = match self.subject_source {
            Some(_) => {
                let subject = self.render_part(SUBJECT, Part::Subject, vars)?;
                Some(subject.trim().to_string())
            }
            None => None,
        };
        Ok(Rendered { body, subject })
    }

    fn render_part(
        &self,
        template_name: &str,
        part: Part,
        vars: &Map<String, Value>,
    ) -> Result<String, TemplateError> {
        let template = self
            .env
            .get_template(template_name)
            .map_err(|e| self.convert(&e, part, Some(vars)))?;
        template
            .render(Serde(vars))
            .map_err(|e| self.convert(&e, part, Some(vars)))
    }

    /// Map a template-relative line to a file line.
    fn file_line(&self, part: Part, line: Option<usize>) -> Option<usize> {
        match part {
            Part::Subject => Some(SUBJECT_LINE),
            Part::Body if self.subject_source.is_some() => line.map(|l| l + FRONT_MATTER_LINES),
            Part::Body => line,
        }
    }

    fn source(&self, part: Part) -> &str {
        match part {
            Part::Body => &self.body_source,
            Part::Subject => self.subject_source.as_deref().unwrap_or(""),
        }
    }

    /// Turn a minijinja error into a [`TemplateError`] naming the file line and, for
    /// undefined values, the variable.
    fn convert(
        &self,
        e: &minijinja::Error,
        part: Part,
        vars: Option<&Map<String, Value>>,
    ) -> TemplateError {
        let line = self.file_line(part, e.line());
        let where_ = match part {
            Part::Body => "",
            Part::Subject => "in the subject: ",
        };
        match e.kind() {
            ErrorKind::UndefinedError => {
                let source = self.source(part);
                let expr = e.range().and_then(|r| source.get(r));
                let line_text = e
                    .line()
                    .and_then(|l| source.lines().nth(l.saturating_sub(1)));
                let used = match part {
                    Part::Body => &self.body_vars,
                    Part::Subject => &self.subject_vars,
                };
                let missing: Vec<&str> = used
                    .iter()
                    .map(String::as_str)
                    .filter(|v| vars.is_none_or(|vars| !vars.contains_key(*v)))
                    .collect();
                let variable = [expr, line_text]
                    .into_iter()
                    .flatten()
                    .find_map(|text| first_ident_of(text, &missing))
                    .or_else(|| missing.first().copied());
                match variable {
                    Some(variable) => {
                        let mut err = TemplateError::undefined_variable(&self.name, line, variable);
                        if part == Part::Subject {
                            err.message.insert_str(0, where_);
                        }
                        err
                    }
                    None => {
                        let mut message = format!("{where_}undefined value");
                        if let Some(expr) = expr {
                            let _ = write!(message, " in '{}'", expr.trim());
                        }
                        message.push_str(
                            " (an attribute or item that does not exist; check the spelling, \
                             or use '| default(\"...\")')",
                        );
                        TemplateError::new(&self.name, line, message)
                    }
                }
            }
            ErrorKind::OutOfFuel => TemplateError::new(
                &self.name,
                line,
                format!(
                    "{where_}{TOO_MUCH_WORK} (more than {FUEL} steps): a loop runs too long, \
                     e.g. nested range() loops; make its loops shorter"
                ),
            ),
            ErrorKind::SyntaxError => {
                let detail = e.detail().unwrap_or("invalid template syntax");
                TemplateError::new(
                    &self.name,
                    line,
                    format!(
                        "{where_}syntax error: {detail} (variables are written {{{{ name }}}}, \
                         tags {{% if ... %}}...{{% endif %}})"
                    ),
                )
            }
            kind => {
                let mut message = format!("{where_}{kind}");
                if let Some(detail) = e.detail() {
                    let _ = write!(message, ": {detail}");
                }
                TemplateError::new(&self.name, line, message)
            }
        }
    }
}

/// Among `candidates`, the one whose first use as a bare identifier (not an attribute
/// after `.`) comes first in `text`.
fn first_ident_of<'a>(text: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .filter_map(|c| ident_position(text, c).map(|pos| (pos, *c)))
        .min()
        .map(|(_, c)| c)
}

/// Byte position of the first occurrence of `ident` in `text` as a whole identifier.
fn ident_position(text: &str, ident: &str) -> Option<usize> {
    let is_ident = |c: char| c.is_alphanumeric() || c == '_';
    text.match_indices(ident).map(|(pos, _)| pos).find(|&pos| {
        let before = text[..pos].chars().next_back();
        let after = text[pos + ident.len()..].chars().next();
        !before.is_some_and(|c| is_ident(c) || c == '.') && !after.is_some_and(is_ident)
    })
}

fn trim_end_owned(mut s: String) -> String {
    let len = s.trim_end().len();
    s.truncate(len);
    s
}

/// The result of rendering a template for one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// Rendered body, trailing whitespace trimmed.
    pub body: String,
    /// Rendered subject (trimmed), when the template has one.
    pub subject: Option<String>,
}

/// Whether a render error means the template runs away whatever the data: it used up its
/// fuel, or a macro called itself past minijinja's recursion limit. (Other errors of a render
/// with placeholder values, such as arithmetic on a text placeholder, say nothing yet.)
fn runs_away(e: &minijinja::Error) -> bool {
    e.kind() == ErrorKind::OutOfFuel
        || (e.kind() == ErrorKind::InvalidOperation
            && e.detail().is_some_and(|d| d.contains("recursion limit")))
}

#[cfg(test)]
mod tests {
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
        let src =
            TemplateSource::parse("loop", &format!("{{{{ name }}}}님 {NESTED_LOOP}")).unwrap();
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
        let ok = "{% macro f(n) %}{% if n > 0 %}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(3) }}{{ name }}";
        assert!(Renderer::new(&TemplateSource::parse("ok", ok).unwrap()).is_ok());
    }

    #[test]
    fn a_loop_that_runs_away_only_on_some_data_fails_that_message() {
        let text =
            "{% for i in range(n|int) %}{% for j in range(n|int) %}x{% endfor %}{% endfor %}";
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
}
