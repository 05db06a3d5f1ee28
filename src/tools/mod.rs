//! Tools for trying munja, on top of everything else (nothing else imports them):
//!
//! - [`demo`]: `munja demo`, the whole workflow end to end on the embedded examples;
//! - [`bench`]: `munja bench`, each step as its own process, with its wall time and peak RSS;
//! - [`sim`]: `munja gateway-sim`, the `http-json` gateway simulator with injectable faults.

pub mod bench;
pub mod demo;
pub mod sim;
