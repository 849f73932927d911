//! The last operator changes (drain, weight) to upstreams: logged at info when they happen
//! and kept for `/status` (newest first, bounded by `shared::admin::events::Recent`).

use serde::Serialize;
use shared::admin::events::Recent;

/// An operator's change (drain, weight) to one upstream.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    pub at_ms: u64,
    /// `site` or `stream`.
    pub owner: &'static str,
    pub name: String,
    pub upstream: String,
    pub from: String,
    pub to: String,
    pub reason: String,
}

static EVENTS: Recent<Event> = Recent::new();

/// Logs `event` at info with its fields and keeps it for `/status`.
pub fn record(event: Event) {
    tracing::info!(owner = event.owner, name = %event.name, upstream = %event.upstream, from = %event.from, to = %event.to, reason = %event.reason, "state change");
    EVENTS.push(event);
}

/// The kept changes, newest first.
pub fn newest_first() -> Vec<Event> {
    EVENTS.newest_first()
}
