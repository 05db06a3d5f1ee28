//! Live updates for the dashboard: `GET /v1/events[?campaign=ID]`, a stream of server-sent
//! events behind the admin token (like all of `/v1`), so that an open dashboard makes no request
//! per second: the server sends what changed.
//!
//! - `list`: `{"campaigns": [...], "schedules": [...]}` (what `GET /v1/campaigns` and
//!   `GET /v1/schedules` answer) at once, then whenever it changes and at least every
//!   [`RESEND`] (the page reckons rates and ETAs from them), or `{"error": "..."}` while the
//!   database cannot be read. One task per server reads it once a second for every open stream
//!   ([`Feed`]), and only while a stream is open.
//! - `campaign`: with `?campaign=ID`, that campaign as `GET /v1/campaigns/{id}` answers it, at
//!   once and whenever it changes (read once a second for that stream).
//!
//! A comment every 15 s keeps an idle stream from being closed by a proxy; a server shutdown
//! ends every stream (so that the shutdown does not wait for them). The page reconnects when
//! its stream ends or fails, with backoff.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::{mpsc, watch};

use super::AppState;
use super::api::{campaign_json, campaigns_json, schedules_json};

/// How often the database is read for the streams.
const EVERY: Duration = Duration::from_secs(1);
/// An unchanged `list` is sent again after this long.
const RESEND: Duration = Duration::from_secs(5);

/// The `list` snapshot every open stream of one server shares, and the task that reads it.
#[derive(Default)]
pub struct Feed {
    /// The latest `list` event's data (`None` before the first read).
    list: watch::Sender<Option<Arc<str>>>,
    /// Whether the reading task runs.
    running: AtomicBool,
    /// The server's shutdown switch: streams end when it turns true.
    shutdown: Mutex<Option<watch::Receiver<bool>>>,
}

impl Feed {
    /// Streams end when `shutdown` turns true (the server stops).
    pub fn close_on(&self, shutdown: watch::Receiver<bool>) {
        *self.shutdown.lock().unwrap_or_else(PoisonError::into_inner) = Some(shutdown);
    }

    fn shutdown(&self) -> Option<watch::Receiver<bool>> {
        self.shutdown
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    campaign: Option<i64>,
}

/// `GET /v1/events`: see the module doc.
pub async fn events(
    State(s): State<AppState>,
    Query(q): Query<EventsQuery>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let (tx, rx) = mpsc::channel::<Event>(16);
    let list = s.live.list.subscribe();
    ensure_reading(&s);
    tokio::spawn(forward(s, list, q.campaign, tx));
    let stream =
        futures_util::stream::unfold(
            rx,
            |mut rx| async move { rx.recv().await.map(|e| (Ok(e), rx)) },
        );
    Sse::new(stream).keep_alive(KeepAlive::default())
}

/// Starts the task that reads the `list` snapshot, unless it runs; it ends when no stream is
/// left.
fn ensure_reading(s: &AppState) {
    if s.live.running.swap(true, Ordering::SeqCst) {
        return;
    }
    let s = s.clone();
    tokio::spawn(async move {
        let mut last: Option<(Arc<str>, Instant)> = None;
        loop {
            let data: Arc<str> = list_data(&s).await.into();
            let fresh = last
                .as_ref()
                .is_none_or(|(old, at)| *old != data || at.elapsed() >= RESEND);
            if fresh {
                s.live.list.send_replace(Some(data.clone()));
                last = Some((data, Instant::now()));
            }
            tokio::time::sleep(EVERY).await;
            if s.live.list.receiver_count() == 0 {
                s.live.running.store(false, Ordering::SeqCst);
                // A stream that opened meanwhile saw `running` still true: carry on for it.
                if s.live.list.receiver_count() == 0 || s.live.running.swap(true, Ordering::SeqCst)
                {
                    return;
                }
            }
        }
    });
}

/// The `list` event's data: campaigns and schedules, or the error reading them.
async fn list_data(s: &AppState) -> String {
    let read = async {
        let mut v = campaigns_json(s).await?;
        let mut schedules = schedules_json(s).await?;
        v["schedules"] = schedules["schedules"].take();
        Ok::<_, super::api::ApiError>(v)
    };
    match read.await {
        Ok(v) => v.to_string(),
        Err(e) => json!({"error": e.message()}).to_string(),
    }
}

/// Sends one stream's events until its client goes away or the server shuts down.
async fn forward(
    s: AppState,
    mut list: watch::Receiver<Option<Arc<str>>>,
    campaign: Option<i64>,
    tx: mpsc::Sender<Event>,
) {
    let mut shutdown = s.live.shutdown();
    let down = async move {
        match shutdown.as_mut() {
            Some(rx) => {
                let _ = rx.wait_for(|down| *down).await;
            }
            None => std::future::pending::<()>().await,
        }
    };
    tokio::pin!(down);
    list.mark_changed();
    let mut tick = tokio::time::interval(EVERY);
    let mut last_campaign = String::new();
    loop {
        let event = tokio::select! {
            _ = &mut down => return,
            _ = tx.closed() => return,
            changed = list.changed() => {
                if changed.is_err() {
                    return;
                }
                let Some(data) = list.borrow_and_update().clone() else {
                    continue;
                };
                Event::default().event("list").data(&*data)
            }
            _ = tick.tick(), if campaign.is_some() => {
                let id = campaign.unwrap_or_default();
                let data = match campaign_json(&s, id).await {
                    Ok(v) => v.to_string(),
                    Err(e) => json!({"error": e.message(), "id": id}).to_string(),
                };
                if data == last_campaign {
                    continue;
                }
                last_campaign = data.clone();
                Event::default().event("campaign").data(data)
            }
        };
        if tx.send(event).await.is_err() {
            return;
        }
    }
}
