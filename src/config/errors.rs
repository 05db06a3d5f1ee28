//! Turning a TOML or value error into what `munja.toml` users need: the file, the full dotted
//! key, the line, what was expected and what was found, in plain words.

/// Turns a parse error into (dotted key, plain message with the line when known).
pub(super) fn describe_parse_error(
    text: &str,
    e: &serde_path_to_error::Error<toml::de::Error>,
) -> (String, String) {
    let mut path = String::new();
    for segment in e.path() {
        match segment {
            serde_path_to_error::Segment::Seq { index } => path.push_str(&format!("[{index}]")),
            serde_path_to_error::Segment::Map { key }
            | serde_path_to_error::Segment::Enum { variant: key } => push_key(&mut path, key),
            serde_path_to_error::Segment::Unknown => push_key(&mut path, "?"),
        }
    }
    describe_toml_error(text, path, e.inner())
}

/// Turns a TOML error found at dotted key `path` (empty at the top level) into
/// (dotted key, plain message with the line when known).
pub(super) fn describe_toml_error(
    text: &str,
    path: String,
    inner: &toml::de::Error,
) -> (String, String) {
    let msg = inner.message().trim();
    let at = inner
        .span()
        .map(|s| format!(" (line {})", line_of(text, s.start)))
        .unwrap_or_default();

    if let Some(rest) = msg.strip_prefix("unknown field `") {
        let (name, tail) = rest.split_once('`').unwrap_or((rest, ""));
        let key = with_leaf(&path, name);
        let allowed = match tail
            .strip_prefix(", expected one of ")
            .or_else(|| tail.strip_prefix(", expected "))
        {
            Some(list) => format!("the keys allowed here are {list}"),
            None => "no keys are allowed here".to_string(),
        };
        return (key, format!("unknown key{at}; {allowed}"));
    }
    if let Some(rest) = msg.strip_prefix("missing field `") {
        let name = rest.split_once('`').map_or(rest, |(n, _)| n);
        let key = with_leaf(&path, name);
        let form = match required_form(name) {
            Some(form) => format!("; add it as {name} = {form}"),
            None => String::new(),
        };
        return (key, format!("required key is missing{at}{form}"));
    }
    let key = if path.is_empty() {
        "(syntax)".to_string()
    } else {
        path
    };
    let typed = msg
        .strip_prefix("invalid type: ")
        .or_else(|| msg.strip_prefix("invalid value: "))
        .and_then(|rest| rest.rsplit_once(", expected "));
    match typed {
        Some((got, expected)) => (
            key,
            format!(
                "expected {}, got {}{at}",
                plain_expected(expected),
                plain_got(got)
            ),
        ),
        None => {
            let msg: Vec<&str> = msg
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect();
            (key, format!("{}{at}", msg.join("; ")))
        }
    }
}

pub(super) fn push_key(path: &mut String, key: &str) {
    if !path.is_empty() {
        path.push('.');
    }
    path.push_str(key);
}

pub(super) fn with_leaf(path: &str, leaf: &str) -> String {
    let mut key = path.to_string();
    // The path may already end at the offending key; do not repeat it.
    if !(key == leaf || key.ends_with(&format!(".{leaf}"))) {
        push_key(&mut key, leaf);
    }
    key
}

/// The form of a required key, for the "missing" message.
pub(super) fn required_form(name: &str) -> Option<&'static str> {
    Some(match name {
        "name" => "a text in quotes, e.g. \"main\"",
        "kind" => "\"http-json\"",
        "url" => "a text in quotes, e.g. \"http://127.0.0.1:8080\"",
        "rate_per_sec" | "count" | "days" => "a whole number",
        _ => return None,
    })
}

/// serde's name of an expected type, in plain words.
pub(super) fn plain_expected(expected: &str) -> String {
    match expected.trim() {
        "i8" | "i16" | "i32" | "i64" | "i128" | "isize" | "integer" | "an integer" => {
            "a whole number".into()
        }
        "u8" | "u16" | "u32" | "u64" | "u128" | "usize" => "a whole number, zero or more".into(),
        "f32" | "f64" | "a float" | "float" => "a number".into(),
        "a string" | "string" | "path string" | "a borrowed string" => "a text in quotes".into(),
        "a boolean" | "bool" | "boolean" => "true or false".into(),
        "a sequence" | "sequence" => "a list".into(),
        "struct FrequencyCap" => "{ count = N, days = D }".into(),
        "a map" | "map" => "a table".into(),
        e if e.starts_with("struct ") => "a table".into(),
        e => e.to_string(),
    }
}

/// serde's description of the value found, in plain words.
pub(super) fn plain_got(got: &str) -> String {
    let got = got.trim();
    let quoted = |s: &str| s.trim_matches('`').to_string();
    if let Some(s) = got.strip_prefix("string ") {
        format!("the text {s}")
    } else if let Some(n) = got.strip_prefix("integer ") {
        quoted(n)
    } else if let Some(n) = got.strip_prefix("floating point ") {
        quoted(n)
    } else if let Some(b) = got.strip_prefix("boolean ") {
        quoted(b)
    } else {
        match got {
            "sequence" => "a list".into(),
            "map" => "a table".into(),
            g => g.to_string(),
        }
    }
}

pub(super) fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}
