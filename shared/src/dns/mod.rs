//! Names → addresses for both binaries: [`Lookups`] asks DNS (hickory-resolver, no cache),
//! [`Tracker`] (sans-io) decides when each name is due again from the records' TTLs within
//! refresh bounds, and keeps the last known addresses through failures.

mod lookup;
mod tracker;

pub use lookup::{outcome_of, Lookups, ResolverError, ResolverSettings};
pub use tracker::{Allowlist, Change, Family, OnNoAnswer, Outcome, Policy, Query, Tracker};
