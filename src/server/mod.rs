//! `munja serve`: the batch application server. One long-running process that starts what is
//! due (the launcher), serves the admin API under `/v1` (bearer token), `/metrics`, `/healthz`,
//! `/readyz` and the dashboard at `/`.
//!
//! [`app`] builds the whole HTTP application from an [`AppState`]: other routers (such as the
//! delivery-report routes, authenticated per gateway) merge into it with one `.merge(…)`; the
//! admin token guards only the `/v1` routes built here. [`start`] binds, runs the launcher and
//! the periodic NHN delivery-result sync ([`result_sync`]) and shuts down on SIGTERM/SIGINT:
//! runs stop as SHUTDOWN (resumable, and resumed by the next server), then the process exits.

pub mod api;
pub mod dashboard;
pub mod launcher;
pub mod live;
pub mod result_sync;

use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tracing::{info, warn};

use crate::config::Config;
use crate::run::metrics;
use crate::store::Store;
pub use launcher::Launcher;

/// Shortest admin token accepted.
pub const MIN_TOKEN_LEN: usize = 16;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub cfg: Arc<Config>,
    pub launcher: Arc<Launcher>,
    /// The dashboard's live updates ([`live`]).
    pub live: Arc<live::Feed>,
    token: Arc<str>,
}

impl AppState {
    pub fn new(store: Arc<dyn Store>, cfg: Arc<Config>, token: String) -> AppState {
        AppState {
            launcher: Launcher::new(store.clone(), cfg.clone()),
            live: Arc::default(),
            store,
            cfg,
            token: token.into(),
        }
    }
}

/// The admin token from the variable `[server] token_env` names; refuses a missing or short one.
pub fn token_from_env(cfg: &Config) -> anyhow::Result<String> {
    let var = &cfg.server.token_env;
    let token = std::env::var(var).unwrap_or_default();
    if token.trim().is_empty() {
        anyhow::bail!(
            "munja serve needs an admin token: set the environment variable {var} to a secret of \
             at least {MIN_TOKEN_LEN} characters (e.g. `export {var}=$(openssl rand -hex 24)`); \
             [server] token_env in munja.toml names another variable"
        );
    }
    if token.len() < MIN_TOKEN_LEN {
        anyhow::bail!(
            "the admin token in {var} is {} characters long; use at least {MIN_TOKEN_LEN} \
             (e.g. `export {var}=$(openssl rand -hex 24)`)",
            token.len()
        );
    }
    Ok(token)
}

/// The demo's admin token: `$MUNJA_TOKEN` when set, otherwise a random one written to `file`
/// (mode 0600) so that it never appears in the demo's output.
pub fn demo_token(file: &std::path::Path) -> anyhow::Result<String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Ok(t) = std::env::var(crate::config::DEFAULT_TOKEN_ENV)
        && t.len() >= MIN_TOKEN_LEN
    {
        std::fs::write(file, "(the value of $MUNJA_TOKEN)\n")?;
        return Ok(t);
    }
    let token = format!("{:032x}", rand::random::<u128>());
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(file)
        .and_then(|mut f| writeln!(f, "{token}"))
        .with_context(|| format!("writing the demo token to {}", file.display()))?;
    Ok(token)
}

/// The whole HTTP application: dashboard, health, metrics, and the admin API behind the token.
pub fn app(state: AppState) -> Router {
    let v1 =
        api::router().route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/", get(dashboard::page))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .merge(v1)
        .with_state(state.clone())
        // Delivery reports: authenticated per gateway (its own secret), never by the token.
        .merge(crate::run::delivery::routes::router(state.store, state.cfg))
}

/// 401 unless `Authorization: Bearer <token>` matches. The token is never logged.
async fn require_token(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(t) if constant_time_eq(t.trim().as_bytes(), s.token.as_bytes()) => next.run(req).await,
        _ => api::error(
            StatusCode::UNAUTHORIZED,
            "authorization",
            "missing or wrong admin token: send `Authorization: Bearer <token>` with the \
             token munja serve was started with",
        )
        .into_response(),
    }
}

/// Compares without stopping at the first difference.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// 200 when the database answers, 503 otherwise.
async fn readyz(State(s): State<AppState>) -> Response {
    match s.store.optout_count().await {
        Ok(_) => (StatusCode::OK, "ready\n").into_response(),
        Err(e) => {
            warn!("readyz: database unreachable: {e}");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("database unreachable: {e}\n"),
            )
                .into_response()
        }
    }
}

async fn metrics_text(State(s): State<AppState>) -> Response {
    match metrics::render(&*s.store).await {
        Ok(text) => ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text).into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("metrics unavailable: {e:#}\n"),
        )
            .into_response(),
    }
}

/// A running server: its address, and the switch that shuts it down.
pub struct Running {
    pub addr: std::net::SocketAddr,
    shutdown: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// Stops launching, stops the runs (SHUTDOWN, resumable) and waits for them and the listener.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.shutdown.send_replace(true);
        self.task.await.context("joining the server")?
    }

    /// Waits until the server ends by itself (it never does unless shut down).
    pub async fn wait(self) -> anyhow::Result<()> {
        self.task.await.context("joining the server")?
    }

    /// The switch that shuts the server down (for a signal handler).
    pub fn shutdown_switch(&self) -> tokio::sync::watch::Sender<bool> {
        self.shutdown.clone()
    }
}

/// Binds `state.cfg.server.listen` (or `listen`) and starts the HTTP server and the launcher.
pub async fn start(state: AppState, listen: std::net::SocketAddr) -> anyhow::Result<Running> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| {
            format!("listening on {listen} (is another server on that port? use --listen)")
        })?;
    let addr = listener.local_addr()?;
    let (tx, rx) = tokio::sync::watch::channel(false);
    let launcher = state.launcher.clone();
    let loop_task = tokio::spawn(launcher.clone().run(rx.clone()));
    let sync_task = tokio::spawn(result_sync::run(
        state.store.clone(),
        state.cfg.clone(),
        rx.clone(),
    ));
    state.live.close_on(rx.clone());
    let router = app(state);
    let mut http_rx = rx.clone();
    let task = tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                let _ = http_rx.wait_for(|down| *down).await;
            })
            .await
            .context("serving HTTP")?;
        loop_task.await.context("joining the launcher")?;
        sync_task
            .await
            .context("joining the delivery-result sync")?;
        launcher.drain().await;
        Ok(())
    });
    info!(%addr, "munja serve listening");
    Ok(Running {
        addr,
        shutdown: tx,
        task,
    })
}

/// Shuts `running` down on the first SIGTERM or SIGINT.
pub fn shutdown_on_signals(running: &Running) -> tokio::task::JoinHandle<()> {
    let switch = running.shutdown_switch();
    tokio::spawn(async move {
        let Some(mut signals) = crate::run::dispatch::control::Signals::install() else {
            return;
        };
        let name = signals.next().await;
        warn!("{name} received: stopping runs (they stay resumable) and shutting down");
        switch.send_replace(true);
    })
}
