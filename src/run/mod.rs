//! Running campaigns: the application layer over the domain, the store, the gateways and the
//! inputs. The CLI and the server are thin shells over these calls.
//!
//! - [`campaign`]: the checks before a campaign is created, and previews;
//! - [`lease`]: one runner per campaign, takeover of dead runs, stop/cancel/delete of a campaign
//!   that may be running;
//! - [`dispatch`]: running a campaign chunk by chunk (lease and heartbeat, claim loop, sender,
//!   the campaign's gateways with failover and breakers, the shared rate budget, in-doubt
//!   settlement, rescue of dead workers);
//! - [`delivery`]: delivery reports (push routes, polling) and provider opt-outs;
//! - [`schedule`]: one-off and recurring (cron) schedules;
//! - [`segments`]: deleting a segment (CSV or SQL), refused while unfinished campaigns use it;
//! - [`audit`], [`progress`], [`summary`]: what the operator reads;
//! - [`metrics`]: the process's Prometheus counters, recorded by runs and served by the server.

pub mod audit;
pub mod campaign;
pub mod delivery;
pub mod dispatch;
pub mod lease;
pub mod metrics;
pub mod progress;
pub mod schedule;
pub mod segments;
pub mod summary;
