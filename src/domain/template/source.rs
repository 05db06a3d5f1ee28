//! Loading a template file (`{dir}/{NAME}.txt`, UTF-8) and parsing it into a
//! [`TemplateSource`]: the optional front matter (`---` / `subject: ...` / `---`) and the body.

use std::path::Path;

use super::{TemplateError, TemplateSource};

/// The line that opens and closes the front matter.
const FENCE: &str = "---";

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
        let (first, rest) = text.split_once('\n').unwrap_or((text, ""));
        if first.trim_end() != FENCE {
            return Self::finish(name, text, None, 1);
        }
        let (subject, body, body_line) = front_matter(name, rest)?;
        Self::finish(name, body, Some(subject), body_line)
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

/// Reads the front matter after its opening fence (file line 1) up to the closing fence:
/// the subject, the body after the fence, and the body's first file line.
fn front_matter<'a>(name: &str, rest: &'a str) -> Result<(String, &'a str, usize), TemplateError> {
    let err = |line: usize, message: String| TemplateError::new(name, Some(line), message);
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
        let value = subject_line(line, subject.is_some()).map_err(|m| err(line_no, m))?;
        subject = Some(value);
    }
    let Some(subject) = subject else {
        return Err(err(
            1,
            "the front matter has no 'subject: ...' line; add one or remove the '---' lines"
                .to_string(),
        ));
    };
    Ok((subject, remaining, line_no + 1))
}

/// The subject given by one front-matter line (not a fence); `Err(message)` when the line is
/// not `subject: <LMS subject>`, or when `seen` (the subject was given already).
fn subject_line(line: &str, seen: bool) -> Result<String, String> {
    if line.trim().is_empty() {
        return Err(
            "blank line in the front matter; it holds exactly one 'subject: ...' line".to_string(),
        );
    }
    let key_value = line.split_once(':').filter(|(key, _)| is_key(key.trim()));
    let Some((key, value)) = key_value else {
        return Err(if seen {
            format!("expected '---' closing the front matter opened on line 1, found '{line}'")
        } else {
            format!("expected 'subject: <LMS subject>' in the front matter, found '{line}'")
        });
    };
    let key = key.trim();
    if key != "subject" {
        return Err(format!(
            "unknown front-matter key '{key}' (the only known key is 'subject'); \
             remove the line"
        ));
    }
    if seen {
        return Err("'subject' is given twice in the front matter; keep one".to_string());
    }
    let value = unquote(value.trim()).trim();
    if value.is_empty() {
        return Err(
            "the subject is empty; write 'subject: <LMS subject>' or remove the front matter"
                .to_string(),
        );
    }
    Ok(value.to_string())
}
