//! Gateways: the `http-json` client ([`client`]) that sends single attempts and classifies
//! every answer, and the protocol simulator ([`sim`]) behind `munja gateway-sim`.
pub mod client;
pub mod nhn_results;
pub mod sim;

pub use client::{Attempt, HttpJsonGateway, Lookup, OutMessage, Outcome};
