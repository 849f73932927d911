//! The shares of new connections the status page shows, measured from each path's placement
//! counter (`PathControl::placed`) sampled whenever the status is asked for (the page asks
//! every second): no task runs when nobody looks.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::pool::Path;

/// Placements per `pool/path`.
type Counts = HashMap<String, u64>;

/// Placement counters sampled over the last minute.
#[derive(Default)]
pub struct Shares {
    samples: Mutex<VecDeque<(Instant, Counts)>>,
}

/// Samples closer together than this are not kept (several viewers poll at once).
const SAMPLE_GAP: Duration = Duration::from_millis(200);
const RECENT: Duration = Duration::from_secs(1);
const MINUTE: Duration = Duration::from_secs(60);

impl Shares {
    /// Records `now`'s counts; returns the counts of about `RECENT` and `MINUTE` ago (each the
    /// newest sample at least that old, else the oldest kept; none before the first sample).
    pub(crate) fn sample(&self, now: Instant, counts: &Counts) -> (Option<Counts>, Option<Counts>) {
        let mut s = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        while s.len() > 1 && s.get(1).is_some_and(|(t, _)| now.duration_since(*t) >= MINUTE) {
            s.pop_front();
        }
        let at_least = |age: Duration| {
            s.iter().rev().find(|(t, _)| now.duration_since(*t) >= age).or(s.front()).map(|(_, c)| c.clone())
        };
        let (recent, minute) = (at_least(RECENT), at_least(MINUTE));
        if s.back().is_none_or(|(t, _)| now.duration_since(*t) >= SAMPLE_GAP) {
            s.push_back((now, counts.clone()));
        }
        (recent, minute)
    }
}

pub(crate) fn key(pool: &str, path: &str) -> String {
    format!("{pool}/{path}")
}

/// Each path's share of its pool's placements since `base` (or since start without one).
pub(crate) fn shares(
    counts: &HashMap<String, u64>,
    base: Option<&HashMap<String, u64>>,
    pool: &str,
    paths: &[std::sync::Arc<Path>],
) -> Vec<f64> {
    let delta: Vec<u64> = paths
        .iter()
        .map(|p| {
            let k = key(pool, &p.name);
            let now = counts.get(&k).copied().unwrap_or(0);
            now.saturating_sub(base.and_then(|b| b.get(&k)).copied().unwrap_or(0))
        })
        .collect();
    let sum: u64 = delta.iter().sum();
    delta.iter().map(|&d| if sum == 0 { 0.0 } else { d as f64 / sum as f64 }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_are_measured_over_the_window_asked_for() {
        let s = Shares::default();
        let t0 = Instant::now();
        let at = |a: u64, b: u64| HashMap::from([(key("p", "a"), a), (key("p", "b"), b)]);
        // First look: nothing to compare with.
        assert_eq!(s.sample(t0, &at(0, 0)), (None, None));
        // 3:1 for ten seconds, then 1:3 for a second.
        for i in 1..=10 {
            s.sample(t0 + Duration::from_secs(i), &at(30 * i, 10 * i));
        }
        let now = at(300 + 10, 100 + 30);
        let (recent, minute) = s.sample(t0 + Duration::from_secs(11), &now);
        let base = |m: Option<HashMap<String, u64>>| m.map(|m| (m[&key("p", "a")], m[&key("p", "b")]));
        assert_eq!(base(recent), Some((300, 100)), "a second ago");
        assert_eq!(base(minute), Some((0, 0)), "the oldest kept: less than a minute of history");
    }
}
