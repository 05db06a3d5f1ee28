//! munja's integration tests, linked into one binary: the real `munja` binary and the real
//! gateway simulator on loopback, on real SQLite files and a real PostgreSQL server.
//!
//! Run one area with `cargo test --test it workflow::` (or `resume::`, `korean::`, `faults::`,
//! `memory::`, `postgres::`, `segments::`).

mod common;

mod faults;
mod korean;
mod memory;
mod postgres;
mod resume;
mod segments;
mod workflow;
