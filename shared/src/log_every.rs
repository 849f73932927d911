//! At most one log line a second for one kind of event that peers drive (every upstream of a
//! site down, an auth service refusing, a stream's upstream unreachable): during such a fault
//! each request or flow would otherwise write its own line, and the journal fills with the
//! same one. The metrics still count every event, per site or stream; a line says how many it
//! stands for. The budget is one per kind of event for the whole process: a line names the
//! site of the event it logs, and `skipped` counts that kind of event on every site.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

/// A `warn!` written at most once a second from this call site, with `skipped`: how many
/// times it was not written since. Takes `warn!`'s fields and message.
#[macro_export]
macro_rules! warn_every_second {
    ($($arg:tt)+) => {{
        static EVERY: $crate::log_every::LogEvery = $crate::log_every::LogEvery::second();
        if let Some(skipped) = EVERY.ready() {
            ::tracing::warn!(skipped, $($arg)+);
        }
    }};
}

/// One kind of event's log budget, as a `static` beside the line it guards
/// ([`warn_every_second!`] writes both).
#[derive(Debug)]
pub struct LogEvery {
    period_ms: u64,
    /// When the next line may be written, in ms since [`epoch`]; 0: at once.
    next_ms: AtomicU64,
    /// Events not logged since the last line.
    skipped: AtomicU64,
}

/// The process's first use of a [`LogEvery`]: a monotonic origin for their clocks.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

impl LogEvery {
    /// One line a second.
    pub const fn second() -> Self {
        Self::every_ms(1000)
    }

    pub const fn every_ms(period_ms: u64) -> Self {
        Self { period_ms, next_ms: AtomicU64::new(0), skipped: AtomicU64::new(0) }
    }

    /// `Some(events left out since the last line)` when this one may be logged, else `None`
    /// (and it is counted for the next line).
    pub fn ready(&self) -> Option<u64> {
        self.ready_at(epoch().elapsed().as_millis() as u64)
    }

    fn ready_at(&self, now_ms: u64) -> Option<u64> {
        let next = self.next_ms.load(Ordering::Relaxed);
        if now_ms >= next
            && self
                .next_ms
                .compare_exchange(next, now_ms.saturating_add(self.period_ms), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return Some(self.skipped.swap(0, Ordering::Relaxed));
        }
        self.skipped.fetch_add(1, Ordering::Relaxed);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_a_period_saying_how_many_it_left_out() {
        let l = LogEvery::every_ms(1000);
        assert_eq!(l.ready_at(0), Some(0));
        assert_eq!(l.ready_at(10), None);
        assert_eq!(l.ready_at(999), None);
        assert_eq!(l.ready_at(1000), Some(2));
        assert_eq!(l.ready_at(1500), None);
        // A quiet spell: the next event is logged at once.
        assert_eq!(l.ready_at(60_000), Some(1));
        assert_eq!(l.ready_at(60_001), None);
    }

    #[test]
    fn concurrent_events_write_one_line() {
        let l = std::sync::Arc::new(LogEvery::every_ms(60_000));
        // (lines written, events they reported as left out) per thread.
        let per_thread: Vec<(u64, u64)> = (0..4)
            .map(|_| {
                let l = l.clone();
                std::thread::spawn(move || {
                    let said: Vec<u64> = (0..1000).filter_map(|_| l.ready_at(5)).collect();
                    (said.len() as u64, said.iter().sum())
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap_or((0, 0)))
            .collect();
        let lines: u64 = per_thread.iter().map(|t| t.0).sum();
        let reported: u64 = per_thread.iter().map(|t| t.1).sum();
        assert_eq!(lines, 1);
        // Every other event is either in the line (counted before it was written) or waiting.
        assert_eq!(reported + l.skipped.load(Ordering::Relaxed), 3999);
    }
}
