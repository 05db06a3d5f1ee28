//! `munja template check | preview`: a template's variables and checks, and the final text of
//! a segment's first recipients.

use std::io::Write;

use crate::config::Config;
use crate::run::campaign;
use crate::store::Store;

/// `munja template check`: syntax, variables, ad markers and the work budget.
pub(super) fn check(
    cfg: &Config,
    name: &str,
    no_ad: bool,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let src = campaign::load_template(cfg, name, !no_ad, None)?;
    let r = crate::domain::template::Renderer::new(&src)?;
    let vars: Vec<String> = r.variables().into_iter().collect();
    writeln!(out, "template {name}: OK")?;
    writeln!(
        out,
        "variables: {}",
        if vars.is_empty() {
            "(none)".into()
        } else {
            vars.join(", ")
        }
    )?;
    if let Some(s) = &src.subject {
        writeln!(out, "subject: {s}")?;
    }
    Ok(())
}

/// `munja template preview`: the final text for the first `limit` recipients of `segment`;
/// exit code 1 when any of them is refused.
pub(super) async fn preview(
    store: &dyn Store,
    cfg: &Config,
    name: &str,
    segment: &str,
    limit: i64,
    no_ad: bool,
    out: &mut dyn Write,
) -> anyhow::Result<i32> {
    let rows = campaign::preview(store, cfg, name, segment, limit, no_ad).await?;
    let mut bad = 0;
    for r in rows {
        writeln!(out, "── {} ──", r.phone)?;
        match r.result {
            Ok(t) => {
                writeln!(out, "[{} {} bytes]", t.kind, t.bytes)?;
                if let Some(s) = t.subject {
                    writeln!(out, "subject: {s}")?;
                }
                writeln!(out, "{}", t.text)?;
            }
            Err(e) => {
                bad += 1;
                writeln!(out, "REFUSED {e}")?;
            }
        }
    }
    Ok(i32::from(bad > 0))
}
