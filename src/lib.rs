//! munja (문자): crash-safe advertising SMS campaigns for Korea.
//!
//! munja reads recipient segments and opt-out lists (수신거부) into a database, renders each
//! message from a template into a lawful Korean ad (`(광고)` header, sender name, free 080 opt-out
//! footer, the night rule, SMS/LMS sizing in EUC-KR bytes), sends it through a rate-limited HTTP
//! gateway with retry, and records every message and every attempt so each one can be audited
//! and an interrupted run resumes with no duplicate and no lost message.
//!
//! The crate is in layers, each a folder, and a layer imports only the layers listed before
//! it (checked by `tests/it/layers.rs`):
//! - [`domain`]: the rules (phone numbers, EUC-KR sizing, the ad law, templates, messages, the
//!   model of campaigns and message states); no I/O, nothing else of the crate;
//! - [`config`]: `munja.toml`, found and validated;
//! - [`store`]: the job repository (SQLite or PostgreSQL), the only place with SQL; and
//!   [`gateway`]: the seam to SMS gateways (`http-json`, `kannel`, `nhn-cloud`), the only place
//!   with outgoing HTTP (these two do not import each other);
//! - [`input`]: CSV files, segments, opt-out lists and SQL segments, read into the store;
//! - [`run`]: campaigns created, run chunk by chunk, stopped, resumed, scheduled, audited;
//! - [`server`]: `munja serve` (launcher, admin API, metrics, dashboard, delivery reports);
//! - [`cli`]: the command line, a thin shell over the above;
//! - [`tools`]: `munja demo`, `munja bench` and the gateway simulator, for trying munja.
//!
//! Beside the layers, [`output`] is munja's own stdout and stderr (and the exit status when
//! writing them fails), reached from every layer through the print macros below.

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

pub mod cli;
pub mod config;
pub mod domain;
pub mod gateway;
pub mod input;
pub mod output;
pub mod run;
pub mod server;
pub mod store;
pub mod tools;
