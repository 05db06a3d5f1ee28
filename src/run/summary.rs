//! What a finished run looks like to the operator: the summary printed on stderr and its JSON
//! form (`campaign run --json`), shared by the CLI and the demo.

use crate::run::dispatch::{RunReport, reasons_text};

/// The `--json` form of a run's report.
pub fn summary_json(r: &RunReport) -> serde_json::Value {
    serde_json::json!({
        "campaign": r.campaign, "execution": r.execution, "status": r.status.as_str(),
        "exit_message": r.exit_message, "elapsed_secs": r.elapsed.as_secs_f64(),
        "sent_this_run": r.sent_now, "counts": r.counts,
        "failure_reasons": r.failure_reasons, "rate_budget": r.rate_budget,
    })
}

/// The final summary of a run, on stderr. Messages in doubt (the gateway may have them) are
/// counted apart from pending ones; after a run, `sending` ones were left by a crash.
pub fn print_summary(r: &RunReport) {
    let secs = r.elapsed.as_secs_f64().max(0.001);
    eprintln!(
        "campaign {} execution {}: {} in {:.1}s ({:.0} msg/s sent this run)\n  {}",
        r.campaign,
        r.execution,
        r.status.as_str(),
        secs,
        r.sent_now as f64 / secs,
        r.exit_message,
    );
    let Some(c) = &r.counts else {
        eprintln!(
            "  counts not read: the database did not answer (`munja campaign status {}` shows \
             them once it does)",
            r.campaign
        );
        return;
    };
    let reasons = if r.failure_reasons.is_empty() {
        String::new()
    } else {
        format!(" ({})", reasons_text(&r.failure_reasons))
    };
    eprintln!(
        "  total {}: sent {}, failed {}{}, suppressed {}, cancelled {}, pending {}, in doubt {}",
        c.total,
        c.sent,
        c.failed,
        reasons,
        c.suppressed,
        c.cancelled,
        c.pending,
        c.in_doubt + c.sending
    );
}
