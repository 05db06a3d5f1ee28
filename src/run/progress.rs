//! Progress of a long run: a bar on a terminal, a log line every few seconds otherwise.
//!
//! Only counts are shown, never phone numbers.

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use crate::domain::model::Counts;

/// Shows that the whole gateway pauses for this long (its `Retry-After`); called by the
/// senders when a pause begins, from any task.
pub type PauseNotice = Arc<dyn Fn(Duration) + Send + Sync>;

/// Receives the counts of a run as it goes.
pub trait Progress: Send {
    fn start(&mut self, counts: &Counts);
    fn update(&mut self, counts: &Counts);
    fn finish(&mut self, counts: &Counts);
    /// How a gateway pause is shown; `None` (the default): not shown.
    fn pause_notice(&self) -> Option<PauseNotice> {
        None
    }
}

/// The text shown while the gateway pauses, e.g. `waiting 300s for gateway Retry-After`.
pub fn pause_text(wait: Duration) -> String {
    let secs = wait
        .as_secs()
        .saturating_add(u64::from(wait.subsec_nanos() > 0));
    format!("waiting {secs}s for gateway Retry-After")
}

/// A bar when stderr is a terminal, log lines every `every` otherwise.
pub fn for_stderr(every: Duration) -> Box<dyn Progress> {
    if std::io::stderr().is_terminal() {
        Box::new(Bar::new())
    } else {
        Box::new(Lines::new(every))
    }
}

fn done(c: &Counts) -> u64 {
    (c.sent + c.failed + c.suppressed + c.cancelled) as u64
}

fn tally(c: &Counts) -> String {
    format!(
        "sent {} · failed {} · suppressed {} · pending {} · in doubt {}",
        c.sent,
        c.failed,
        c.suppressed,
        c.pending + c.sending,
        c.in_doubt
    )
}

/// The indicatif bar: position, rate, ETA and the tally.
pub struct Bar {
    bar: ProgressBar,
}

impl Bar {
    pub fn new() -> Bar {
        let bar = ProgressBar::new(0);
        let style = ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} {per_sec} ETA {eta} | {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        bar.enable_steady_tick(Duration::from_millis(200));
        Bar { bar }
    }
}

impl Default for Bar {
    fn default() -> Self {
        Bar::new()
    }
}

impl Progress for Bar {
    fn start(&mut self, c: &Counts) {
        self.bar.set_length(c.total as u64);
        self.bar.set_position(done(c));
        self.bar.reset_eta();
        self.bar.set_message(tally(c));
    }
    fn update(&mut self, c: &Counts) {
        self.bar.set_position(done(c));
        self.bar.set_message(tally(c));
    }
    fn finish(&mut self, c: &Counts) {
        self.update(c);
        self.bar.abandon();
    }
    /// The pause replaces the tally until the next update.
    fn pause_notice(&self) -> Option<PauseNotice> {
        let bar = self.bar.clone();
        Some(Arc::new(move |wait| bar.set_message(pause_text(wait))))
    }
}

/// One line on stderr every few seconds, for logs and CI.
pub struct Lines {
    every: Duration,
    last: Instant,
    start: Instant,
    start_done: u64,
}

impl Lines {
    pub fn new(every: Duration) -> Lines {
        Lines {
            every,
            last: Instant::now(),
            start: Instant::now(),
            start_done: 0,
        }
    }
}

impl Progress for Lines {
    fn start(&mut self, c: &Counts) {
        self.start = Instant::now();
        self.last = self.start;
        self.start_done = done(c);
        eprintln!("progress: {}/{} final | {}", done(c), c.total, tally(c));
    }
    fn update(&mut self, c: &Counts) {
        if self.last.elapsed() < self.every {
            return;
        }
        self.last = Instant::now();
        let secs = self.start.elapsed().as_secs_f64().max(0.001);
        let rate = done(c).saturating_sub(self.start_done) as f64 / secs;
        eprintln!(
            "progress: {}/{} final, {:.0} msg/s | {}",
            done(c),
            c.total,
            rate,
            tally(c)
        );
    }
    fn finish(&mut self, _c: &Counts) {}
    fn pause_notice(&self) -> Option<PauseNotice> {
        Some(Arc::new(|wait| eprintln!("progress: {}", pause_text(wait))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pause_text_rounds_up_to_whole_seconds() {
        assert_eq!(
            pause_text(Duration::from_secs(300)),
            "waiting 300s for gateway Retry-After"
        );
        assert_eq!(
            pause_text(Duration::from_millis(1500)),
            "waiting 2s for gateway Retry-After"
        );
        assert_eq!(
            pause_text(Duration::MAX),
            format!("waiting {}s for gateway Retry-After", u64::MAX)
        );
    }
}
