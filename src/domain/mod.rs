//! The domain rules: what a lawful Korean ad SMS is, with no I/O and no other part of munja.
//!
//! - [`phone`]: Korean phone numbers, normalised and masked;
//! - [`sizing`]: SMS/LMS sizing in EUC-KR bytes;
//! - [`compliance`]: the ad law (`(광고)` header, sender name, free 080 opt-out footer, the
//!   21:00-08:00 night rule);
//! - [`consent`]: the age of ad consent (`ad_consent_at`, `consent_expired`, `consent_missing`);
//! - [`template`]: message templates (minijinja, bounded);
//! - [`message`]: one rendered, lawful, sized message;
//! - [`model`]: campaigns, executions, leases, messages and their states.
//!
//! This layer imports nothing else of the crate (checked by `tests/it/layers.rs`).

pub mod compliance;
pub mod consent;
pub mod message;
pub mod model;
pub mod phone;
pub mod sizing;
pub mod template;
