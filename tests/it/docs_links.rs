//! The documentation's links: every relative link in README.md and docs/*.md names a file that
//! exists, and every `#anchor` names a heading of the Markdown file it points into, by GitHub's
//! rules for heading anchors. External links (http, https, mailto) are not fetched.
//!
//! What counts as a link: `[text](target)` and `![alt](target)` (an optional title after the
//! target is ignored) and reference definitions `[label]: target`, outside fenced code blocks
//! and inline code. Headings are ATX headings (`## Title`) outside fenced code blocks.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// GitHub's anchor for a heading: the rendered text (link targets dropped), lower-cased, each
/// space a `-`, and every character that is not a letter, a digit, `-` or `_` removed (Hangul is
/// kept).
fn slug(heading: &str) -> String {
    let text = link_texts(heading);
    text.to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            '-' | '_' => Some(c),
            c if c.is_alphanumeric() => Some(c),
            _ => None,
        })
        .collect()
}

/// `text` with each `[label](target)` replaced by its label.
fn link_texts(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(open) = rest.find('[') {
        let Some((label, after)) = rest[open + 1..]
            .find("](")
            .map(|i| (&rest[open + 1..open + 1 + i], &rest[open + 1 + i + 2..]))
        else {
            break;
        };
        let Some(close) = target_end(after) else {
            break;
        };
        out.push_str(&rest[..open]);
        out.push_str(label);
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    out
}

/// Where the `)` closing a link target starts in `s` (the text right after `](`), counting
/// nested parentheses.
fn target_end(s: &str) -> Option<usize> {
    let mut depth = 0usize;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' if depth == 0 => return Some(i),
            ')' => depth -= 1,
            _ => {}
        }
    }
    None
}

/// `line` without its inline code spans (a run of backticks up to the next run of the same
/// length); an unclosed run stays as it is.
fn without_code(line: &str) -> String {
    let mut out = String::new();
    let mut rest = line;
    while let Some(start) = rest.find('`') {
        let run = rest[start..].chars().take_while(|&c| c == '`').count();
        let after = &rest[start + run..];
        let fence = "`".repeat(run);
        let close = after.match_indices(&fence).find(|&(i, _)| {
            !after[i + run..].starts_with('`') && (i == 0 || !after[..i].ends_with('`'))
        });
        match close {
            Some((i, _)) => {
                out.push_str(&rest[..start]);
                rest = &after[i + run..];
            }
            None => {
                out.push_str(&rest[..start + run]);
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// The lines of `text` outside fenced code blocks, with their 1-based numbers.
fn prose_lines(text: &str) -> Vec<(usize, &str)> {
    let mut fence: Option<String> = None;
    let mut lines = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim_start();
        let marker: String = t.chars().take_while(|&c| c == '`' || c == '~').collect();
        let opens = marker.len() >= 3 && marker.chars().all(|c| c == marker.as_bytes()[0] as char);
        match &fence {
            Some(f)
                if opens
                    && marker.starts_with(f.as_str())
                    && t[marker.len()..].trim().is_empty() =>
            {
                fence = None
            }
            Some(_) => {}
            None if opens => fence = Some(marker),
            None => lines.push((i + 1, line)),
        }
    }
    lines
}

/// The anchors of a Markdown text's headings, in order, duplicates numbered as GitHub does
/// (`name`, `name-1`, `name-2`, …).
fn anchors(text: &str) -> Vec<String> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut out = Vec::new();
    for (_, line) in prose_lines(text) {
        let t = line.trim_start();
        let hashes = t.chars().take_while(|&c| c == '#').count();
        if !(1..=6).contains(&hashes) || !(t[hashes..].starts_with(' ') || t.len() == hashes) {
            continue;
        }
        let title = t[hashes..].trim().trim_end_matches('#').trim_end();
        let base = slug(title);
        let n = seen.entry(base.clone()).or_insert(0);
        out.push(if *n == 0 { base } else { format!("{base}-{n}") });
        *n += 1;
    }
    out
}

/// The link targets on one line of prose.
fn targets(line: &str) -> Vec<String> {
    let line = without_code(line);
    let t = line.trim_start();
    if t.starts_with('[')
        && line.len() - t.len() <= 3
        && let Some(i) = t.find("]:")
    {
        let target = t[i + 2..].split_whitespace().next().unwrap_or("");
        return vec![target.trim_matches(['<', '>']).to_string()];
    }
    let mut out = Vec::new();
    let mut rest = line.as_str();
    while let Some(i) = rest.find("](") {
        let after = &rest[i + 2..];
        let Some(end) = target_end(after) else {
            break;
        };
        let target = after[..end].split_whitespace().next().unwrap_or("");
        out.push(target.trim_matches(['<', '>']).to_string());
        rest = &after[end..];
    }
    out
}

/// `%XX` escapes decoded (an anchor written percent-encoded, as browsers copy it).
fn percent_decoded(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Every broken link of `files` (paths relative to `root`), as `file:line: what`.
fn broken_links(root: &Path, files: &[PathBuf]) -> Vec<String> {
    let mut cache: HashMap<PathBuf, Option<Vec<String>>> = HashMap::new();
    let mut anchors_of = |path: &Path| -> Option<Vec<String>> {
        cache
            .entry(path.to_path_buf())
            .or_insert_with(|| std::fs::read_to_string(path).ok().map(|t| anchors(&t)))
            .clone()
    };
    let mut errors = Vec::new();
    for file in files {
        let path = root.join(file);
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        let dir = path.parent().expect("a file has a folder");
        for (n, line) in prose_lines(&text) {
            for target in targets(line) {
                let at = format!("{}:{n}", file.display());
                if target.is_empty() {
                    errors.push(format!("{at}: a link with no target"));
                    continue;
                }
                if ["http://", "https://", "mailto:"]
                    .iter()
                    .any(|p| target.starts_with(p))
                {
                    continue;
                }
                let (file_part, anchor) = match target.split_once('#') {
                    Some((f, a)) => (f, Some(percent_decoded(a))),
                    None => (target.as_str(), None),
                };
                let linked = if file_part.is_empty() {
                    path.clone()
                } else {
                    dir.join(percent_decoded(file_part))
                };
                if !linked.exists() {
                    errors.push(format!("{at}: `{target}`: no file {}", linked.display()));
                    continue;
                }
                let Some(anchor) = anchor else { continue };
                if linked.extension().is_none_or(|e| e != "md") {
                    errors.push(format!(
                        "{at}: `{target}`: an anchor into a file that is not Markdown"
                    ));
                    continue;
                }
                let known = anchors_of(&linked).unwrap_or_default();
                if !known.contains(&anchor) {
                    errors.push(format!(
                        "{at}: `{target}`: no heading with anchor #{anchor} in {} (it has: {})",
                        linked.display(),
                        known.join(", ")
                    ));
                }
            }
        }
    }
    errors
}

/// README.md and every docs/*.md of this repository, relative to its root.
fn doc_files(root: &Path) -> Vec<PathBuf> {
    let mut files = vec![PathBuf::from("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .expect("docs/ exists")
        .map(|e| e.expect("read docs/").path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .map(|p| PathBuf::from("docs").join(p.file_name().expect("a file name")))
        .collect();
    docs.sort();
    files.extend(docs);
    files
}

#[test]
fn every_link_in_readme_and_docs_resolves() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let files = doc_files(root);
    assert!(files.len() > 1, "no guides found in docs/: {files:?}");
    let errors = broken_links(root, &files);
    assert!(
        errors.is_empty(),
        "broken links in the documentation:\n{}",
        errors.join("\n")
    );
}

#[test]
fn anchors_follow_githubs_rules() {
    assert_eq!(
        slug("Schedules and `munja serve`"),
        "schedules-and-munja-serve"
    );
    assert_eq!(
        slug("Several workers (PostgreSQL)"),
        "several-workers-postgresql"
    );
    assert_eq!(slug("Exactly once, per kind"), "exactly-once-per-kind");
    assert_eq!(slug("`[[gateways]]` keys"), "gateways-keys");
    assert_eq!(
        slug("max_retry_after_secs -- 300"),
        "max_retry_after_secs----300"
    );
    assert_eq!(slug("수신거부 (opt-out) 목록"), "수신거부-opt-out-목록");
    assert_eq!(slug("See [the guide](x.md#y)"), "see-the-guide");
    assert_eq!(
        anchors("# A\n## Same\n```\n# not a heading\n```\n### Same\n#nospace\n## Same ##\n"),
        ["a", "same", "same-1", "same-2"]
    );
}

#[test]
fn broken_links_are_named_by_file_and_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("docs")).expect("docs dir");
    std::fs::write(
        dir.path().join("docs/b.md"),
        "# B guide\n\n## 수신거부 목록\n",
    )
    .expect("write");
    std::fs::write(
        dir.path().join("README.md"),
        "# Top\n\
         [ok](docs/b.md) [ok](docs/b.md#b-guide) [ok](#top) [ok](https://example.invalid/x)\n\
         [ok](docs/b.md#수신거부-목록) [ok](docs/b.md#%EC%88%98%EC%8B%A0%EA%B1%B0%EB%B6%80-%EB%AA%A9%EB%A1%9D)\n\
         `[in code](missing.md)`\n\
         ```\n[in a fence](missing.md)\n```\n\
         [gone](docs/missing.md) and [bad anchor](docs/b.md#nope)\n\
         [self](#nowhere \"title\")\n\
         [ref]: docs/also-missing.md\n",
    )
    .expect("write");
    let errors = broken_links(dir.path(), &doc_files(dir.path()));
    let lines: Vec<&str> = errors
        .iter()
        .map(|e| e.split(": ").next().unwrap_or(""))
        .collect();
    assert_eq!(
        lines,
        ["README.md:8", "README.md:8", "README.md:9", "README.md:10"],
        "{errors:#?}"
    );
    assert!(errors[0].contains("docs/missing.md"), "{errors:#?}");
    assert!(errors[1].contains("#nope"), "{errors:#?}");
}
