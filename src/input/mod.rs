//! Inputs: what users bring into munja, read into the store.
//!
//! - [`csvin`]: reading user CSV files (UTF-8 or CP949), with errors that name line and column;
//! - [`import`]: CSV segments and opt-out lists (수신거부) into the store;
//! - [`segment_sql`]: SQL segments, a query on the company's database read at the first run
//!   (the query itself runs through [`crate::store::source`]: read-only, timed, streamed).
//!
//! Imports only [`crate::domain`], [`crate::config`] and [`crate::store`].

pub mod csvin;
pub mod import;
pub mod segment_sql;
