//! Operator overrides of one path and the record of what changed: drain (no new connections
//! or flows; open ones finish) and a weight that replaces the configured one (canary steps).
//!
//! Invariants: the data path reads only the atomics here. A path's `PathControl` is carried
//! by name into the pool a reload builds (`carry`), so overrides survive SIGHUP; a weight
//! override ends when the reload changes that path's configured weight (the config changed
//! the field: it wins). Drain has no config field, so it lasts until undrained. A path the
//! config removes loses its overrides with it.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

pub use shared::admin::page::now_ms;

/// One path's overrides and the counters the status page reads.
#[derive(Debug, Default)]
pub struct PathControl {
    drained: AtomicBool,
    /// Weight override; 0: none (the configured weight applies; 0 is never a valid weight).
    weight: AtomicU32,
    /// New connections and flows placed on this path since start (the status page's shares).
    placed: AtomicU64,
    /// When the path last went up or down (Unix ms); 0: not since start.
    since_ms: AtomicU64,
}

impl PathControl {
    pub fn is_drained(&self) -> bool {
        self.drained.load(Ordering::Relaxed)
    }
    /// Sets the drain flag; returns the previous value.
    pub fn set_drained(&self, on: bool) -> bool {
        self.drained.swap(on, Ordering::Relaxed)
    }
    /// The weight override, if any.
    pub fn weight(&self) -> Option<u32> {
        match self.weight.load(Ordering::Relaxed) {
            0 => None,
            w => Some(w),
        }
    }
    /// Sets (or with `None` clears) the weight override; returns the previous one.
    pub fn set_weight(&self, w: Option<u32>) -> Option<u32> {
        match self.weight.swap(w.unwrap_or(0), Ordering::Relaxed) {
            0 => None,
            w => Some(w),
        }
    }
    /// A new connection or flow was placed on this path.
    pub fn placed(&self) {
        self.placed.fetch_add(1, Ordering::Relaxed);
    }
    pub fn placed_total(&self) -> u64 {
        self.placed.load(Ordering::Relaxed)
    }
    /// When the path last changed state (Unix ms), if it did since start.
    pub fn since_ms(&self) -> Option<u64> {
        match self.since_ms.load(Ordering::Relaxed) {
            0 => None,
            t => Some(t),
        }
    }
    pub fn changed_now(&self) {
        self.since_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// This control for the same-named path of a new config whose configured weight is
    /// `new_weight` (it was `old_weight`): the same object, so the old and the new runtime
    /// see one drain flag; a weight override ends when the configured weight changed.
    pub fn carry(self: &Arc<Self>, pool: &str, path: &str, old_weight: u32, new_weight: u32) -> Arc<Self> {
        if old_weight != new_weight {
            if let Some(w) = self.set_weight(None) {
                record(Event::new(
                    pool,
                    path,
                    format!("weight {w}"),
                    format!("weight {new_weight}"),
                    "config changed the weight: the runtime override ends",
                ));
            }
        }
        self.clone()
    }
}

/// How many state changes `/status` keeps.
pub const EVENTS_KEPT: usize = shared::admin::events::KEPT;

/// One state change: a path up or down, a pool onto or off the mesh tier, an operator's
/// drain or weight.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Event {
    pub at_ms: u64,
    pub pool: String,
    /// The path, or empty for a pool-wide change (the tier).
    pub path: String,
    pub from: String,
    pub to: String,
    pub reason: String,
}

impl Event {
    pub fn new(
        pool: &str,
        path: &str,
        from: impl Into<String>,
        to: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        Self {
            at_ms: now_ms(),
            pool: pool.into(),
            path: path.into(),
            from: from.into(),
            to: to.into(),
            reason: reason.into(),
        }
    }
}

/// The last [`EVENTS_KEPT`] state changes of this process (every server in it: tests run
/// several, each one's pools and paths are named apart).
static EVENTS: shared::admin::events::Recent<Event> = shared::admin::events::Recent::new();

/// Logs `event` at info with its fields and keeps it for `/status`.
pub fn record(event: Event) {
    // Losing a path (or every WAN, or every way home) is a fault worth a warning; the rest is
    // information.
    if matches!(event.to.as_str(), "down" | "mesh" | "none") {
        tracing::warn!(pool = %event.pool, path = %event.path, from = %event.from, to = %event.to, reason = %event.reason, "state change");
    } else {
        tracing::info!(pool = %event.pool, path = %event.path, from = %event.from, to = %event.to, reason = %event.reason, "state change");
    }
    EVENTS.push(event);
}

/// The kept events, newest first.
pub fn recent() -> Vec<Event> {
    EVENTS.newest_first()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_weight_override_ends_only_when_the_config_changes_the_weight() {
        let c = Arc::new(PathControl::default());
        c.set_weight(Some(5));
        c.set_drained(true);
        let same = c.carry("ctl-test", "wan1", 1, 1);
        assert_eq!((same.weight(), same.is_drained()), (Some(5), true));
        assert!(Arc::ptr_eq(&same, &c), "old and new runtime share one control");
        let changed = c.carry("ctl-test", "wan1", 1, 2);
        assert_eq!((changed.weight(), changed.is_drained()), (None, true), "drain has no config field: it stays");
    }

    #[test]
    fn events_keep_the_last_fifty_newest_first() {
        for i in 0..(EVENTS_KEPT + 5) {
            record(Event::new("ev-test", &format!("p{i}"), "up", "down", "probe"));
        }
        let kept = recent();
        assert_eq!(kept.len(), EVENTS_KEPT);
        // Other tests record too: look at this test's own, newest first.
        let mine: Vec<&Event> = kept.iter().filter(|e| e.pool == "ev-test").collect();
        assert_eq!(mine[0].path, format!("p{}", EVENTS_KEPT + 4));
        assert_eq!(mine[1].path, format!("p{}", EVENTS_KEPT + 3));
    }
}
