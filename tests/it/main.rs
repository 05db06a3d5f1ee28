//! munja's integration tests, linked into one binary: the real `munja` binary and the real
//! gateway simulator on loopback, on real SQLite files and a real PostgreSQL server.
//!
//! Run one area with `cargo test --test it workflow::` (or `resume::`, `korean::`, `faults::`,
//! `memory::`, `postgres::`, `rate_budget::`, `workers::`, `worker_faults::`, `worker_lease::`,
//! `gateways::`, `delivery::`, `segments::`, `server::`, `schedules::`, `dashboard::`, `docs_links::`,
//! `layers::`, `output_errors::`, `segment_delete::`, `template_bound::`, `bench::`).

mod common;

mod bench;
mod consent_csv;
mod dashboard;
mod delivery;
mod docs_links;
mod faults;
mod gateways;
mod korean;
mod layers;
mod memory;
mod output_errors;
mod postgres;
mod rate_budget;
mod resume;
mod schedules;
mod segment_delete;
mod segments;
mod server;
mod server_process;
mod template_bound;
mod worker_faults;
mod worker_lease;
mod workers;
mod workflow;
