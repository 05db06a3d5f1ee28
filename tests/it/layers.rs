//! The crate's layers import one way: `domain` <- `config` <- `store` | `gateway` <- `input` <-
//! `run` <- `server` <- `cli` <- `tools` (see src/lib.rs). This test reads every source file
//! under src/ and fails, naming file and line, on a `crate::` path into a layer that may not be
//! imported from there: a later layer, or another layer of the same rank (`store` and `gateway`
//! do not import each other). The crate root (lib.rs, main.rs) is above all layers.

use std::path::{Path, PathBuf};

/// Each layer's folder under src/ and its rank; a layer may import lower ranks and itself.
const LAYERS: &[(&str, u8)] = &[
    ("domain", 0),
    ("config", 1),
    ("store", 2),
    ("gateway", 2),
    ("input", 3),
    ("run", 4),
    ("server", 5),
    ("cli", 6),
    ("tools", 7),
];

/// Beside the layers: munja's own stdout and stderr (src/output.rs), which every layer reaches
/// through the crate's print macros; it imports nothing of the crate.
const SHARED: &[&str] = &["output"];

fn rank(layer: &str) -> Option<u8> {
    LAYERS.iter().find(|(l, _)| *l == layer).map(|(_, r)| *r)
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src dir") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The layer a file under src/ belongs to (`config.rs` and `config/` alike); `None` for the root.
fn layer_of(rel: &Path) -> Option<String> {
    let first = rel.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (rel.components().count() > 1 || name != "lib" && name != "main").then(|| name.to_string())
}

/// Every layer named by a `crate::LAYER` path on `line` (comments included: a doc link into a
/// later layer is a dependency a reader follows too).
fn layers_named(line: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = line;
    while let Some(i) = rest.find("crate::") {
        let after = &rest[i + "crate::".len()..];
        let name: String = after
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        // `munja_crate::x` or `somecrate::x` are not this crate.
        let before = rest[..i].chars().next_back();
        if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') && !name.is_empty() {
            found.push(name);
        }
        rest = after;
    }
    found
}

#[test]
fn imports_go_one_way_between_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut wrong = Vec::new();
    for file in &files {
        let rel = file.strip_prefix(&src).expect("under src");
        let Some(layer) = layer_of(rel) else { continue };
        let text = std::fs::read_to_string(file).expect("read source");
        if SHARED.contains(&layer.as_str()) {
            for (n, line) in text.lines().enumerate() {
                if let Some(target) = layers_named(line).into_iter().find(|t| *t != layer) {
                    wrong.push(format!(
                        "src/{}:{}: `{layer}` is shared by every layer and may import nothing \
                         of the crate, but names `crate::{target}`",
                        rel.display(),
                        n + 1
                    ));
                }
            }
            continue;
        }
        let Some(own) = rank(&layer) else {
            wrong.push(format!(
                "src/{}: top-level module `{layer}` is in no layer; add it to a layer folder \
                 (and to LAYERS in tests/it/layers.rs only if it is a new layer)",
                rel.display()
            ));
            continue;
        };
        for (n, line) in text.lines().enumerate() {
            for target in layers_named(line) {
                if target == layer || SHARED.contains(&target.as_str()) {
                    continue;
                }
                match rank(&target) {
                    Some(r) if r < own => {}
                    Some(_) => wrong.push(format!(
                        "src/{}:{}: layer `{layer}` imports `crate::{target}`, a layer above it \
                         or beside it: {}",
                        rel.display(),
                        n + 1,
                        line.trim()
                    )),
                    None => wrong.push(format!(
                        "src/{}:{}: `crate::{target}` is no layer: {}",
                        rel.display(),
                        n + 1,
                        line.trim()
                    )),
                }
            }
        }
    }
    assert!(
        files.len() > 50,
        "found only {} source files under {}",
        files.len(),
        src.display()
    );
    assert!(
        wrong.is_empty(),
        "{} imports against the layers (domain <- config <- store | gateway <- input <- run <- \
         server <- cli <- tools):\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

#[test]
fn the_layer_check_sees_a_wrong_import() {
    assert_eq!(layers_named("use crate::run::lease::Holder;"), ["run"]);
    assert_eq!(
        layers_named("x = munja_crate::a; y = crate::domain::phone"),
        ["domain"]
    );
    assert_eq!(
        layer_of(Path::new("domain/phone.rs")).as_deref(),
        Some("domain")
    );
    assert_eq!(layer_of(Path::new("config.rs")).as_deref(), Some("config"));
    assert_eq!(layer_of(Path::new("lib.rs")), None);
}
