//! A minimal `munja serve --listen ADDR`: the delivery-report routes ([`super::router`]) and
//! nothing else, until the full server (admin API, scheduling) takes them over. Stops
//! gracefully on SIGTERM or Ctrl-C: in-flight reports finish, new connections are refused.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;

use crate::config::{Config, read_secret_env};
use crate::store::Store;

/// Serves until SIGTERM or SIGINT. Prints `munja serve: listening on http://ADDR` on stderr once
/// bound (with the real port when ADDR's port is 0).
pub async fn run(
    listen: SocketAddr,
    store: Arc<dyn Store>,
    cfg: Arc<Config>,
) -> anyhow::Result<()> {
    warn_missing_secrets(&cfg);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| {
            format!("binding {listen}: is another process using it? pick another --listen")
        })?;
    let addr = listener.local_addr().context("reading the bound address")?;
    eprintln!("munja serve: listening on http://{addr}");
    for g in &cfg.gateways {
        eprintln!(
            "  delivery reports of {:?} ({}): http://{addr}/v1/dlr/{}",
            g.name, g.kind, g.name
        );
    }
    let app = super::router(store.clone(), cfg);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("serving")?;
    // What every report so far did (the log holds them all, this run's and earlier ones).
    if let Ok(c) = store.report_counts(None).await {
        eprintln!(
            "munja serve: stopped; delivery reports on record: {} applied, {} duplicate, \
             {} ignored, {} intermediate, {} for unknown refs",
            c.applied, c.duplicate, c.ignored, c.intermediate, c.unknown
        );
    } else {
        eprintln!("munja serve: stopped");
    }
    Ok(())
}

/// Resolves on the first SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            // No signal handler could be installed: Ctrl-C only.
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    eprintln!("munja serve: signal received, finishing in-flight requests");
}

/// Says at start which gateways will refuse every report, and why (names the variables, never
/// their values).
fn warn_missing_secrets(cfg: &Config) {
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
