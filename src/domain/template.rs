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
//!
//! The text a render writes is bounded too ([`MAX_TEXT_BYTES`], before EUC-KR sizing): it is
//! written into a buffer that refuses to grow past the bound, so a template that writes more
//! (`{{ "x" * 100000 }}`, a loop of long lines) stops at the write that crosses it, however few
//! steps it took. Texts built along the way and never written are bounded by the fuel, which
//! minijinja also charges per byte it builds and checks before building (about 6 MB per
//! message at [`FUEL`]): `{{ "x" * 100000000 }}` fails before the string exists.

use std::collections::{BTreeSet, HashSet};
use std::fmt::Write as _;

use minijinja::syntax::SyntaxConfig;
use minijinja::value::Serde;
use minijinja::{AutoEscape, Environment, ErrorKind, UndefinedBehavior};
use serde_json::{Map, Value};

mod source;

/// Name of the body template inside the [`Renderer`]'s environment.
const BODY: &str = "body";
/// Name of the subject template inside the [`Renderer`]'s environment.
const SUBJECT: &str = "subject";
/// File line of the `subject:` line (front matter is always `---`, `subject: ...`, `---`).
pub const SUBJECT_LINE: usize = 2;
/// Number of file lines taken by the front matter when a template has a subject.
pub const FRONT_MATTER_LINES: usize = 3;
/// Engine steps one message may take (minijinja fuel). A real message template takes a few
/// hundred; a loop of a thousand short iterations takes some ten thousand.
pub const FUEL: u64 = 100_000;
/// Bytes (UTF-8, before EUC-KR sizing) one render of a body or a subject may write: far above
/// any lawful message (an LMS holds 2,000 EUC-KR bytes), far below what costs memory.
pub const MAX_TEXT_BYTES: usize = 64 * 1024;
/// How an error for a text over [`MAX_TEXT_BYTES`] begins (after any "in the subject: ").
pub const TEXT_TOO_LARGE: &str = "the template writes a text longer than the bound for one message";
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
            if let Err(e) = render_bounded(&template, &vars)
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
        render_bounded(&template, vars).map_err(|e| self.convert(&e, part, Some(vars)))
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
                    "{where_}{TOO_MUCH_WORK} (more than {FUEL} steps, or about {} MB of text \
                     built along the way): a loop runs too long (nested range() loops) or a \
                     text is repeated too often (\"x\" * 100000000); make it shorter (a \
                     message's text may be at most {} KiB)",
                    FUEL * 64 / 1_000_000,
                    MAX_TEXT_BYTES / 1024
                ),
            ),
            ErrorKind::WriteFailure if text_too_large(e) => TemplateError::new(
                &self.name,
                line,
                format!(
                    "{where_}{TEXT_TOO_LARGE} ({} KiB, before EUC-KR sizing; an LMS holds at \
                     most 2,000 EUC-KR bytes): a text repeated too often (\"x\" * 100000) or \
                     a loop that writes too much; make it shorter",
                    MAX_TEXT_BYTES / 1024
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

/// Renders `template` into a buffer bounded by [`MAX_TEXT_BYTES`]: the write that would cross
/// the bound fails, and with it the render, before the text grows further.
fn render_bounded(
    template: &minijinja::Template<'_, '_>,
    vars: &Map<String, Value>,
) -> Result<String, minijinja::Error> {
    let mut out = BoundedText(Vec::new());
    template.render_captured_to(Serde(vars), &mut out)?;
    // Every write is a whole `&str`, so the bytes are UTF-8; lossy never replaces anything.
    Ok(String::from_utf8_lossy(&out.0).into_owned())
}

/// The text of one render, refusing to hold more than [`MAX_TEXT_BYTES`].
struct BoundedText(Vec<u8>);

impl std::io::Write for BoundedText {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.0.len().saturating_add(buf.len()) > MAX_TEXT_BYTES {
            return Err(std::io::Error::other(TextTooLarge));
        }
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The error [`BoundedText`] fails a write with.
#[derive(Debug)]
struct TextTooLarge;

impl std::fmt::Display for TextTooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "text over {MAX_TEXT_BYTES} bytes")
    }
}

impl std::error::Error for TextTooLarge {}

/// Whether a render failed because its text crossed [`MAX_TEXT_BYTES`].
fn text_too_large(e: &minijinja::Error) -> bool {
    std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<std::io::Error>())
        .and_then(|io| io.get_ref())
        .is_some_and(|inner| inner.is::<TextTooLarge>())
}

/// Whether a render error means the template runs away whatever the data: it used up its
/// fuel, wrote more than [`MAX_TEXT_BYTES`], or a macro called itself past minijinja's
/// recursion limit. (Other errors of a render with placeholder values, such as arithmetic on a
/// text placeholder, say nothing yet.)
fn runs_away(e: &minijinja::Error) -> bool {
    e.kind() == ErrorKind::OutOfFuel
        || text_too_large(e)
        || (e.kind() == ErrorKind::InvalidOperation
            && e.detail().is_some_and(|d| d.contains("recursion limit")))
}

#[cfg(test)]
mod tests;
