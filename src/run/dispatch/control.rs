//! The stop switch of one run: why a run stops ([`StopReason`]), the shared [`Control`] that
//! heartbeat, signals and senders set, and the SIGINT/SIGTERM handler (first signal: finish and
//! stop; second: abandon in-flight requests).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tracing::warn;

use super::RunStatus;

/// Why a run stops before every message is final.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    Requested,
    Signal(&'static str),
    /// `munja serve` shut down (SIGTERM): the next server start resumes the run.
    Shutdown,
    Cancelled,
    QuietHours(String),
    GatewayUnhealthy(u32),
    /// The same recipient-level rejection for `n` messages in a row: likely not about them.
    RepeatedRejection {
        code: String,
        n: u32,
    },
    /// An answer that applies to every message (credentials, redirect, sender, request size):
    /// the gateway's words, with what to fix in munja.toml.
    GatewayRefused(String),
    /// A second Ctrl-C / SIGTERM: in-flight requests were abandoned, their messages in doubt.
    Aborted(&'static str),
    TemplateError(String),
    LeaseLost,
    /// The heartbeat kept failing (the database unreachable): the worker stopped itself before
    /// its claims could expire.
    HeartbeatLost(String),
    /// The gateway's shared rate budget could not be read from the database.
    RateBudget(String),
}

impl StopReason {
    pub(super) fn status(&self) -> RunStatus {
        match self {
            StopReason::GatewayRefused(_)
            | StopReason::TemplateError(_)
            | StopReason::LeaseLost
            | StopReason::HeartbeatLost(_)
            | StopReason::RateBudget(_) => RunStatus::Failed,
            _ => RunStatus::Stopped,
        }
    }
    pub(super) fn code(&self) -> &'static str {
        match self {
            StopReason::Requested => "stop_requested",
            StopReason::Signal(_) => "signal",
            StopReason::Shutdown => "shutdown",
            StopReason::Cancelled => "cancelled",
            StopReason::QuietHours(_) => "quiet_hours",
            StopReason::GatewayUnhealthy(_) => "gateway_unhealthy",
            StopReason::RepeatedRejection { .. } => "repeated_rejection",
            StopReason::GatewayRefused(_) => "gateway_refused",
            StopReason::Aborted(_) => "aborted",
            StopReason::TemplateError(_) => "template_error",
            StopReason::LeaseLost => "lease_lost",
            StopReason::HeartbeatLost(_) => "heartbeat_lost",
            StopReason::RateBudget(_) => "rate_budget",
        }
    }
    pub(super) fn message(&self) -> String {
        match self {
            StopReason::Requested => {
                "stopped by `munja campaign stop`; run it again to resume".into()
            }
            StopReason::Signal(s) => format!("stopped by {s}; run it again to resume"),
            StopReason::Shutdown => "stopped because `munja serve` shut down; a server resumes \
                it when it starts again (or `munja campaign run` now)"
                .into(),
            StopReason::Cancelled => "cancelled by `munja campaign cancel`".into(),
            StopReason::QuietHours(m) => m.clone(),
            StopReason::GatewayUnhealthy(n) => format!(
                "gateway_unhealthy: {n} transient failures in a row; paused instead of failing the list. \
                 Run it again when the gateway is healthy (add --retry-failed to re-send messages whose attempts ran out)"
            ),
            StopReason::RepeatedRejection { code, n } => format!(
                "repeated_rejection: the gateway rejected {n} messages in a row with {code}; paused \
                 instead of failing the list (see audit --status failed). Run it again once the \
                 cause is understood"
            ),
            StopReason::GatewayRefused(m) => format!(
                "{m}. The campaign stopped: no message was marked failed for it; run it again once fixed"
            ),
            StopReason::Aborted(s) => format!(
                "aborted by a second {s}: in-flight requests were abandoned and their messages are \
                 in doubt; run it again to settle them by lookup and resume"
            ),
            StopReason::TemplateError(m) => {
                format!("every message of the first chunk failed: {m}")
            }
            StopReason::RateBudget(e) => format!(
                "the gateway's shared rate budget could not be read from the database ({e}); \
                 no message was sent without it. Run it again once the database answers"
            ),
            StopReason::LeaseLost => {
                "another run took over this campaign's lease (or rescued this worker's claims); \
                 this run stopped without writing"
                    .into()
            }
            StopReason::HeartbeatLost(e) => format!(
                "the heartbeat failed for half of lease_timeout_secs ({e}): this worker stopped \
                 before its claims could expire; its messages in flight are in doubt and the \
                 next run (or another worker) settles them by lookup"
            ),
        }
    }
}

/// Shared stop switch of one run: set by heartbeat, signals and the senders.
pub struct Control {
    reason: Mutex<Option<StopReason>>,
    notify: Notify,
    /// Set by a second signal: in-flight requests are abandoned at once.
    abort: tokio::sync::watch::Sender<bool>,
}

impl Default for Control {
    fn default() -> Self {
        Control {
            reason: Mutex::default(),
            notify: Notify::new(),
            abort: tokio::sync::watch::Sender::new(false),
        }
    }
}

impl Control {
    /// Records the first reason to stop (fatal reasons override non-fatal ones).
    pub fn stop(&self, why: StopReason) {
        if let Ok(mut r) = self.reason.lock() {
            let replace = match &*r {
                None => true,
                Some(old) => old.status() != RunStatus::Failed && why.status() == RunStatus::Failed,
            };
            if replace {
                *r = Some(why);
            }
        }
        self.notify.notify_waiters();
    }
    pub fn reason(&self) -> Option<StopReason> {
        self.reason.lock().ok().and_then(|r| r.clone())
    }
    pub fn stopping(&self) -> bool {
        self.reason().is_some()
    }

    /// Stops the run and abandons its in-flight requests (their messages stay in doubt).
    pub fn abort(&self, why: StopReason) {
        if let Ok(mut r) = self.reason.lock()
            && r.as_ref()
                .is_none_or(|old| old.status() != RunStatus::Failed)
        {
            *r = Some(why);
        }
        self.abort.send_replace(true);
        self.notify.notify_waiters();
    }

    /// Runs `f` (a request) unless the run is aborted first (then `None`). A plain stop lets
    /// it finish.
    pub(super) async fn unless_aborted<F: std::future::Future>(&self, f: F) -> Option<F::Output> {
        let mut rx = self.abort.subscribe();
        if *rx.borrow_and_update() {
            return None;
        }
        tokio::select! {
            v = f => Some(v),
            _ = rx.wait_for(|a| *a) => None,
        }
    }
    /// Runs `f` unless the run is told to stop first (then `None`).
    pub(super) async fn until<F: std::future::Future>(&self, f: F) -> Option<F::Output> {
        let notified = self.notify.notified();
        if self.stopping() {
            return None;
        }
        tokio::select! {
            v = f => Some(v),
            _ = notified => None,
        }
    }

    /// Sleeps `d`, waking early when the run is told to stop.
    pub(super) async fn sleep(&self, d: Duration) {
        let notified = self.notify.notified();
        if self.stopping() {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(d) => {}
            _ = notified => {}
        }
    }
}

/// SIGINT and SIGTERM, as a run and `munja serve` wait for them.
pub struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl Signals {
    /// Installs the handlers; `None` when the OS refuses one (then nothing is caught).
    pub fn install() -> Option<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        let int = signal(SignalKind::interrupt()).ok()?;
        let term = signal(SignalKind::terminate()).ok()?;
        Some(Signals { int, term })
    }

    /// The name of the next signal received.
    pub async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.int.recv() => "SIGINT",
            _ = self.term.recv() => "SIGTERM",
        }
    }
}

/// Installs the SIGINT/SIGTERM handler of a run.
pub(super) fn spawn_signal_handler(ctl: Arc<Control>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let Some(mut signals) = Signals::install() else {
            return;
        };
        let mut first = true;
        loop {
            let name = signals.next().await;
            if first {
                warn!(
                    "{name} received: finishing in-flight requests, then stopping (send it again to abort them)"
                );
                ctl.stop(StopReason::Signal(name));
                first = false;
            } else {
                warn!(
                    "second {name} received: abandoning in-flight requests; their messages stay in doubt and the next run settles them"
                );
                ctl.abort(StopReason::Aborted(name));
            }
        }
    })
}

/// Stops the run when `munja serve` shuts down.
pub(super) fn spawn_shutdown_watch(
    mut rx: tokio::sync::watch::Receiver<bool>,
    ctl: Arc<Control>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if rx.wait_for(|down| *down).await.is_ok() {
            ctl.stop(StopReason::Shutdown);
        }
    })
}
