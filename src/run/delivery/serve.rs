//! What `munja serve` (the server itself is in the `server` layer above) says about delivery reports:
//! gateways whose report secret is missing when it starts, what the reports on record did
//! when it stops.

use crate::config::{Config, read_secret_env};
use crate::store::Store;

/// Prints what every delivery report on record did, when `munja serve` stops.
pub async fn report_summary(store: &dyn Store) {
    if let Ok(c) = store.report_counts(None).await {
        eprintln!(
            "munja serve: stopped; delivery reports on record: {} applied, {} duplicate, \
             {} ignored, {} intermediate, {} for unknown refs",
            c.applied, c.duplicate, c.ignored, c.intermediate, c.unknown
        );
    } else {
        eprintln!("munja serve: stopped");
    }
}

/// Says at start which gateways will refuse every report, and why (names the variables, never
/// their values).
pub fn warn_missing_secrets(cfg: &Config) {
    for g in &cfg.gateways {
        let (key, env) = if g.kind == "nhn-cloud" {
            ("webhook_signature_env", &g.webhook_signature_env)
        } else {
            ("dlr_token_env", &g.dlr_token_env)
        };
        match env {
            None => eprintln!(
                "munja serve: gateway {:?} has no {key}: its delivery reports are refused (403)",
                g.name
            ),
            Some(var) => {
                if let Err(m) = read_secret_env(var) {
                    eprintln!("munja serve: gateway {:?} {key} {m}", g.name);
                }
            }
        }
    }
}
