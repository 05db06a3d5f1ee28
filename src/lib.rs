//! munja (문자): crash-safe advertising SMS campaigns for Korea.
//!
//! munja reads recipient segments and opt-out lists (수신거부) into a database, renders each
//! message from a template into a lawful Korean ad (`(광고)` header, sender name, free 080 opt-out
//! footer, the night rule, SMS/LMS sizing in EUC-KR bytes), sends it through a rate-limited HTTP
//! gateway with retry, and records every message and every attempt so each one can be audited
//! and an interrupted run resumes with no duplicate and no lost message.
//!
//! Where things live:
//! - [`config`]: `munja.toml`, found and validated;
//! - [`model`]: campaigns, executions, leases, messages and their states (no I/O);
//! - [`phone`], [`sizing`], [`compliance`], [`template`], [`message`]: the domain rules;
//! - [`csvin`], [`import`]: reading user CSV files (UTF-8 or CP949) into segments and opt-outs;
//! - [`segment_sql`]: SQL segments, a query on the company's database read at the first run
//!   (the query itself runs through [`store::source`]: read-only, timed, streamed);
//! - [`segments`]: deleting a segment (CSV or SQL), refused while unfinished campaigns use it;
//! - [`campaign`]: the checks before a campaign is created, and previews;
//! - [`store`]: the job repository (SQLite or PostgreSQL), the only place with SQL;
//! - [`lease`]: one runner per campaign, takeover of dead runs, stop/cancel/delete of a campaign
//!   that may be running;
//! - [`gateway`]: the seam to SMS gateways (`http-json`, `kannel`, `nhn-cloud`) and the
//!   `http-json` simulator;
//! - [`dispatch`]: running a campaign chunk by chunk (lease and heartbeat, claim loop, sender,
//!   the campaign's gateways with failover and breakers, in-doubt settlement, rescue of dead
//!   workers);
//! - [`delivery`]: delivery reports (push routes, `munja serve`, polling) and provider opt-outs;
//! - [`audit`], [`progress`], [`summary`]: what the operator reads;
//! - [`schedule`]: one-off and recurring (cron) schedules; [`server`]: `munja serve`, the
//!   launcher, the admin API, metrics and the dashboard;
//! - [`cli`]: the command line, thin over the above; [`demo`] and [`bench`] drive the library
//!   end to end (the CLI calls them, never the other way round);
//! - [`output`]: munja's own stdout and stderr, and the exit status when writing them fails.

// munja's print macros, in scope for every module below: std's panic when a write fails (a
// closed pipe, a full disk), which could cut a run short. These never panic; a failure is
// remembered and decides the exit status (see [`output`]).
macro_rules! eprintln {
    () => { $crate::output::stderr_write(format_args!(""), true) };
    ($($arg:tt)*) => { $crate::output::stderr_write(format_args!($($arg)*), true) };
}
macro_rules! eprint {
    ($($arg:tt)*) => { $crate::output::stderr_write(format_args!($($arg)*), false) };
}
macro_rules! println {
    () => { $crate::output::stdout_write(format_args!(""), true) };
    ($($arg:tt)*) => { $crate::output::stdout_write(format_args!($($arg)*), true) };
}
#[allow(unused_macros)]
macro_rules! print {
    ($($arg:tt)*) => { $crate::output::stdout_write(format_args!($($arg)*), false) };
}

pub mod audit;
pub mod bench;
pub mod campaign;
pub mod cli;
pub mod cli_schedule;
pub mod compliance;
pub mod config;
pub mod csvin;
pub mod delivery;
pub mod demo;
pub mod dispatch;
pub mod gateway;
pub mod import;
pub mod lease;
pub mod message;
pub mod model;
pub mod output;
pub mod phone;
pub mod progress;
pub mod schedule;
pub mod segment_sql;
pub mod segments;
pub mod server;
pub mod sizing;
pub mod store;
pub mod summary;
pub mod template;
