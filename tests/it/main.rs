//! munja's integration tests, linked into one binary: the real `munja` binary and the real
//! gateway simulator on loopback, on real SQLite files and a real PostgreSQL server.
//!
//! Run one area with `cargo test --test it workflow::` (or `resume::`, `korean::`, `faults::`,
//! `memory::`, `bench::`, `postgres::`, `workers::`, `worker_faults::`, `gateways::`, `delivery::`, `segments::`,
//! `server::`, `schedules::`, `dashboard::`).

mod common;

mod bench;
mod dashboard;
mod delivery;
mod faults;
mod gateways;
mod korean;
mod memory;
mod postgres;
mod resume;
mod schedules;
mod segments;
mod server;
mod server_process;
mod worker_faults;
mod workers;
mod workflow;
