//! The bench's [`Report`]: every phase's figures and the run's totals, printed as a table or
//! serialised as JSON.

use serde::Serialize;

use super::Phase;

/// The whole report.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub recipients: u64,
    /// `campaign run` processes that worked the campaign at once.
    pub workers: usize,
    pub optouts: u64,
    pub optouts_in_segment: u64,
    pub batch_size: usize,
    pub chunk_size: usize,
    pub concurrency: usize,
    pub phases: Vec<Phase>,
    /// Sent per second of the run, as the run reports it (snapshot included).
    pub run_sent_per_sec: f64,
    /// The same (with several workers: all of them over the wall time), next to the ceilings.
    pub msgs_per_sec: f64,
    /// A bare load loop against a simulator, same concurrency and batch size, no database.
    pub http_ceiling_msgs_per_sec: Option<f64>,
    /// Snapshot, claims and commits with the full log on a database of its own, no HTTP.
    pub store_ceiling_msgs_per_sec: Option<f64>,
    /// `msgs_per_sec` as a share of each ceiling.
    pub http_ceiling_ratio: Option<f64>,
    pub store_ceiling_ratio: Option<f64>,
    /// The rate budget shared with other runs (every worker's): requests that spent its tokens,
    /// round trips to the database that took them (of which `takes_ahead` in the background,
    /// before a sender needed them), and the seconds of the round trips senders waited for.
    pub rate_budget_requests: u64,
    pub rate_budget_takes: u64,
    pub rate_budget_takes_ahead: u64,
    pub rate_budget_take_secs: f64,
    /// The run's seconds (the workers' together) and `rate_budget_take_secs`'s share of them.
    pub rate_budget_run_secs: f64,
    pub rate_budget_share: f64,
    pub sent: i64,
    pub suppressed: i64,
    pub accepted_at_gateway: u64,
    pub numbers_accepted_twice: u64,
    /// Seconds from starting the resumed run to its first committed chunk.
    pub resume_first_commit_secs: Option<f64>,
    /// Database after the imports: the segment and the opt-out list.
    pub db_bytes_after_imports: u64,
    pub db_bytes_after_run: u64,
    /// What the run added (message rows, attempt rows, indexes), per million messages.
    pub db_bytes_per_million_messages: f64,
    pub purge_freed_bytes: Option<u64>,
    /// `--kannel`: what reached fakesmsc of the segment's recipients.
    pub kannel: Option<super::Received>,
    /// Peak RSS of the bench process itself (the gateway simulator), in MiB.
    pub bench_process_peak_rss_mib: Option<f64>,
}

impl Report {
    /// Sets `msgs_per_sec` and its ratios to the ceilings measured.
    pub(super) fn set_rate(&mut self, msgs_per_sec: f64) {
        self.run_sent_per_sec = msgs_per_sec;
        self.msgs_per_sec = msgs_per_sec;
        self.http_ceiling_ratio = self
            .http_ceiling_msgs_per_sec
            .map(|h| msgs_per_sec / h.max(1e-9));
        self.store_ceiling_ratio = self
            .store_ceiling_msgs_per_sec
            .map(|s| msgs_per_sec / s.max(1e-9));
    }

    /// Adds one `campaign run --json` summary's `rate_budget` to the totals, for a run of
    /// `secs` seconds (with several workers, the share is over their seconds together).
    pub(super) fn add_rate_budget(&mut self, summary: &serde_json::Value, secs: f64) {
        let b = &summary["rate_budget"];
        self.rate_budget_run_secs += secs;
        self.rate_budget_requests += b["requests"].as_u64().unwrap_or(0);
        self.rate_budget_takes += b["takes"].as_u64().unwrap_or(0);
        self.rate_budget_takes_ahead += b["takes_ahead"].as_u64().unwrap_or(0);
        self.rate_budget_take_secs += b["take_secs"].as_f64().unwrap_or(0.0);
        self.rate_budget_share = self.rate_budget_take_secs / self.rate_budget_run_secs.max(1e-9);
    }
}

pub(super) fn print_report(r: &Report) {
    println!(
        "{} recipients, {} opt-outs ({} of them in the segment); batch {}, chunk {}, concurrency {}, workers {}",
        r.recipients,
        r.optouts,
        r.optouts_in_segment,
        r.batch_size,
        r.chunk_size,
        r.concurrency,
        r.workers
    );
    println!(
        "{:<24} {:>9} {:>14} {:>14}",
        "phase", "seconds", "peak RSS MiB", "rows/s"
    );
    for p in &r.phases {
        println!(
            "{:<24} {:>9.2} {:>14.1} {:>14}",
            p.name,
            p.secs,
            p.peak_rss_mib,
            p.per_sec
                .map(|v| format!("{v:.0}"))
                .unwrap_or_else(|| "-".into())
        );
    }
    println!(
        "run: {:.0} messages/s sent (snapshot included); {} sent, {} suppressed; gateway accepted {}, numbers accepted twice {}",
        r.run_sent_per_sec, r.sent, r.suppressed, r.accepted_at_gateway, r.numbers_accepted_twice
    );
    if let (Some(h), Some(s)) = (r.http_ceiling_msgs_per_sec, r.store_ceiling_msgs_per_sec) {
        println!(
            "ceilings: HTTP {h:.0} msg/s, store {s:.0} msg/s; munja {:.0} msg/s is {:.0}% of the \
             HTTP ceiling and {:.0}% of the store ceiling",
            r.msgs_per_sec,
            100.0 * r.msgs_per_sec / h.max(1e-9),
            100.0 * r.msgs_per_sec / s.max(1e-9)
        );
    }
    println!(
        "rate budget: {} requests took their tokens in {} round trips to the database ({} ahead \
         of need); senders waited {:.3}s for the others ({:.3}% of the run)",
        r.rate_budget_requests,
        r.rate_budget_takes,
        r.rate_budget_takes_ahead,
        r.rate_budget_take_secs,
        100.0 * r.rate_budget_share
    );
    if let Some(k) = &r.kannel {
        println!(
            "kannel: fakesmsc got {} recipients once, {} more than once, {} not at all",
            k.once, k.more_than_once, k.missing
        );
    }
    if let Some(s) = r.resume_first_commit_secs {
        println!("resume: first chunk committed {s:.3}s after the resumed run started");
    }
    println!(
        "database: {:.1} MiB after the imports, {:.1} MiB after the run: {:.0} MiB per million messages",
        r.db_bytes_after_imports as f64 / 1048576.0,
        r.db_bytes_after_run as f64 / 1048576.0,
        r.db_bytes_per_million_messages / 1048576.0
    );
    if let Some(f) = r.purge_freed_bytes {
        println!(
            "purge: {:.1} MiB of the file free for new campaigns (the file keeps its size; VACUUM shrinks it)",
            f as f64 / 1048576.0
        );
    }
    if let Some(m) = r.bench_process_peak_rss_mib {
        println!("bench process (gateway simulator): peak RSS {m:.1} MiB");
    }
}
