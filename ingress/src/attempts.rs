//! The connect plan, sans-io: which path to try next, with what timeout, and when to race a
//! second path against a slow attempt. Time is passed in and the pool is consulted through
//! [`Paths`]; `connect` does the I/O.
//!
//! Rules: attempts go to new paths, at most `max_attempts`. An attempt gets the short
//! `connect_timeout` while another path could still take over, the long
//! `final_connect_timeout` when it is the last (so one lost SYN, retransmitted after 1 s,
//! does not fail the client). An attempt that has not connected within 4× its path's usual
//! latency (the pool's best if the path is unmeasured, else 50 ms; at least 30 ms, at most
//! `connect_timeout`) is raced by a second path, once per attempt; the first to connect
//! wins. While two race, a failure of one starts nothing: the other may still win. Only a
//! healthy path races (up and not held down by flap damping: `Paths::pick_racer`): a racer on
//! a path known to be bad would put the client there whenever it wins; a failed attempt's
//! retry may still go anywhere `pick` offers.

use std::time::Duration;

use tokio::time::Instant;

use crate::pool::Tried;

/// Hedge no earlier than this: below it, scheduling noise would start needless races.
pub const HEDGE_FLOOR: Duration = Duration::from_millis(30);
/// A path's usual latency when neither it nor any other path has been measured.
const UNMEASURED: Duration = Duration::from_millis(50);

#[derive(Debug, Clone, Copy)]
pub struct PlanConfig {
    pub max_attempts: u32,
    pub connect_timeout: Duration,
    pub final_connect_timeout: Duration,
}

/// What the plan needs of the pool.
pub trait Paths {
    /// The next path to try, not in `tried`.
    fn pick(&mut self, tried: Tried) -> Option<usize>;
    /// The path to race a slow attempt with, not in `tried`: a healthy one only.
    fn pick_racer(&mut self, tried: Tried) -> Option<usize>;
    /// How many paths `pick` could still offer (not in `tried`).
    fn remaining(&self, tried: Tried) -> usize;
    /// How many of those are up.
    fn remaining_up(&self, tried: Tried) -> usize;
    /// Whether path `index` is up.
    fn is_up(&self, index: usize) -> bool;
    /// The path's usual connect latency, else the best measured in the pool.
    fn usual_latency(&self, index: usize) -> Option<Duration>;
}

/// Start connecting to path `index` in `slot`, giving up after `timeout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Start {
    pub slot: usize,
    pub index: usize,
    pub timeout: Duration,
}

/// One client connection's attempts.
#[derive(Debug)]
pub struct Plan {
    cfg: PlanConfig,
    tried: Tried,
    attempts: u32,
    /// Attempts in flight: path index and start time. Slot 1 holds a racer.
    slots: [Option<(usize, Instant)>; 2],
    hedge_at: Option<Instant>,
}

impl Plan {
    pub fn new(cfg: PlanConfig) -> Self {
        Self { cfg, tried: Tried::default(), attempts: 0, slots: [None, None], hedge_at: None }
    }

    /// The first attempt; `None` when the pool has no path at all.
    pub fn begin(&mut self, now: Instant, paths: &mut impl Paths) -> Option<Start> {
        let s = self.start_in(0, now, paths, false)?;
        self.arm(paths);
        Some(s)
    }

    /// When to race a second path, if a race is due.
    pub fn hedge_at(&self) -> Option<Instant> {
        self.hedge_at
    }

    /// The hedge deadline passed: the racer to start, if any path is left.
    pub fn on_hedge(&mut self, now: Instant, paths: &mut impl Paths) -> Option<Start> {
        self.hedge_at = None;
        let free = self.slots.iter().position(Option::is_none)?;
        self.start_in(free, now, paths, true)
    }

    /// No race this time (nothing to race it with: the descriptors ran short); the attempt
    /// in flight goes on alone until it ends.
    pub fn skip_hedge(&mut self) {
        self.hedge_at = None;
    }

    /// The attempt in `slot` failed: the next attempt, unless the other slot still races
    /// or nothing is left to try.
    pub fn on_failed(&mut self, slot: usize, now: Instant, paths: &mut impl Paths) -> Option<Start> {
        self.slots[slot] = None;
        if self.slots.iter().any(Option::is_some) {
            return None;
        }
        let s = self.start_in(slot, now, paths, false)?;
        self.arm(paths);
        Some(s)
    }

    /// The attempt in `slot` connected: the path of the one it beat, if a race was on (its
    /// verdict is still open: slow is not dead).
    pub fn on_connected(&mut self, slot: usize) -> Option<usize> {
        self.slots[slot] = None;
        self.hedge_at = None;
        self.slots[1 - slot].take().map(|(index, _)| index)
    }

    /// The path and start time of the attempt in `slot`.
    pub fn in_slot(&self, slot: usize) -> Option<(usize, Instant)> {
        self.slots[slot]
    }

    /// Attempts in flight.
    pub fn in_flight(&self) -> usize {
        self.slots.iter().flatten().count()
    }

    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    fn start_in(&mut self, slot: usize, now: Instant, paths: &mut impl Paths, racer: bool) -> Option<Start> {
        if self.attempts >= self.cfg.max_attempts {
            return None;
        }
        let index = if racer { paths.pick_racer(self.tried)? } else { paths.pick(self.tried)? };
        self.tried.insert(index);
        self.attempts += 1;
        // The last attempt worth making gets the long timeout: a lost SYN is resent after a
        // second. Paths that are down behind an up one are long shots, not a reason to hurry
        // it: with wan2 down, wan1 alone must not fail a client over one lost SYN. When
        // nothing is up, each gets the short one but the last.
        let is_last = self.attempts == self.cfg.max_attempts
            || paths.remaining(self.tried) == 0
            || (paths.is_up(index) && paths.remaining_up(self.tried) == 0);
        let timeout = if is_last { self.cfg.final_connect_timeout } else { self.cfg.connect_timeout };
        self.slots[slot] = Some((index, now));
        Some(Start { slot, index, timeout })
    }

    /// Race the attempt in flight after a few times its path's usual latency, if there is a
    /// path left to race it with.
    fn arm(&mut self, paths: &impl Paths) {
        self.hedge_at = None;
        // Racers are up paths only (`pick_racer`).
        if paths.remaining_up(self.tried) == 0 {
            return;
        }
        if let Some(&(index, started)) = self.slots.iter().flatten().next() {
            let usual = paths.usual_latency(index).unwrap_or(UNMEASURED);
            let delay = usual.saturating_mul(4).clamp(HEDGE_FLOOR, self.cfg.connect_timeout.max(HEDGE_FLOOR));
            self.hedge_at = Some(started + delay);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Paths in order, each with a usual latency (None: unmeasured); every one healthy.
    pub(crate) struct Fixed(pub Vec<Option<Duration>>);

    impl Paths for Fixed {
        fn pick(&mut self, tried: Tried) -> Option<usize> {
            (0..self.0.len()).find(|&i| !tried.contains(i))
        }
        fn pick_racer(&mut self, tried: Tried) -> Option<usize> {
            self.pick(tried)
        }
        fn remaining(&self, tried: Tried) -> usize {
            (0..self.0.len()).filter(|&i| !tried.contains(i)).count()
        }
        fn remaining_up(&self, tried: Tried) -> usize {
            self.remaining(tried)
        }
        fn is_up(&self, _index: usize) -> bool {
            true
        }
        fn usual_latency(&self, index: usize) -> Option<Duration> {
            self.0[index].or_else(|| self.0.iter().flatten().min().copied())
        }
    }

    const MS: Duration = Duration::from_millis(1);

    fn cfg(max_attempts: u32) -> PlanConfig {
        PlanConfig { max_attempts, connect_timeout: 300 * MS, final_connect_timeout: 3000 * MS }
    }

    #[test]
    fn hedge_delay_follows_the_paths_latency_within_bounds() {
        let t0 = Instant::now();
        for (usual, want) in
            [(Some(20 * MS), 80 * MS), (Some(2 * MS), 30 * MS), (Some(500 * MS), 300 * MS), (None, 200 * MS)]
        {
            let mut paths = Fixed(vec![usual, usual]);
            let mut p = Plan::new(cfg(3));
            p.begin(t0, &mut paths).unwrap();
            assert_eq!(p.hedge_at(), Some(t0 + want), "usual {usual:?}");
        }
        // An unmeasured path is judged by the pool's best.
        let mut paths = Fixed(vec![None, Some(10 * MS)]);
        let mut p = Plan::new(cfg(3));
        p.begin(t0, &mut paths).unwrap();
        assert_eq!(p.hedge_at(), Some(t0 + 40 * MS));
    }

    #[test]
    fn the_last_attempt_gets_the_long_timeout() {
        let t0 = Instant::now();
        let mut paths = Fixed(vec![Some(MS); 3]);
        let mut p = Plan::new(cfg(3));
        assert_eq!(p.begin(t0, &mut paths), Some(Start { slot: 0, index: 0, timeout: 300 * MS }));
        assert_eq!(p.on_failed(0, t0, &mut paths), Some(Start { slot: 0, index: 1, timeout: 300 * MS }));
        assert_eq!(p.on_failed(0, t0, &mut paths), Some(Start { slot: 0, index: 2, timeout: 3000 * MS }));
        assert_eq!(p.hedge_at(), None, "nothing left to race with");
        assert_eq!(p.on_failed(0, t0, &mut paths), None);
        assert_eq!((p.attempts(), p.in_flight()), (3, 0));
        // max_attempts ends it before the paths do; the last allowed attempt is long.
        let mut paths = Fixed(vec![Some(MS); 5]);
        let mut p = Plan::new(cfg(2));
        p.begin(t0, &mut paths).unwrap();
        assert_eq!(p.on_failed(0, t0, &mut paths).map(|s| s.timeout), Some(3000 * MS));
        assert_eq!(p.on_failed(0, t0, &mut paths), None);
        // A single path: its only attempt is the last.
        let mut p = Plan::new(cfg(3));
        assert_eq!(p.begin(t0, &mut Fixed(vec![Some(MS)])).map(|s| s.timeout), Some(3000 * MS));
    }

    #[test]
    fn a_race_starts_once_and_a_failure_during_it_waits_for_the_other() {
        let t0 = Instant::now();
        let mut paths = Fixed(vec![Some(10 * MS); 3]);
        let mut p = Plan::new(cfg(3));
        p.begin(t0, &mut paths).unwrap();
        let racer = p.on_hedge(t0 + 40 * MS, &mut paths).unwrap();
        assert_eq!((racer.slot, racer.index), (1, 1));
        assert_eq!(p.hedge_at(), None, "one race per attempt");
        assert_eq!(p.in_flight(), 2);
        // The racer fails: the slow original may still connect; nothing new starts.
        assert_eq!(p.on_failed(1, t0 + 50 * MS, &mut paths), None);
        assert_eq!(p.in_flight(), 1);
        // Then the original fails too: the next path, with a fresh hedge.
        let next = p.on_failed(0, t0 + 300 * MS, &mut paths).unwrap();
        assert_eq!(next.index, 2);
        assert_eq!(p.hedge_at(), None, "no path left to race it with");
    }

    #[test]
    fn the_winner_names_the_loser_for_verification() {
        let t0 = Instant::now();
        let mut paths = Fixed(vec![Some(10 * MS); 2]);
        let mut p = Plan::new(cfg(3));
        p.begin(t0, &mut paths).unwrap();
        p.on_hedge(t0 + 40 * MS, &mut paths).unwrap();
        assert_eq!(p.on_connected(1), Some(0), "the slow first path lost the race");
        assert_eq!(p.in_flight(), 0);
        let mut p = Plan::new(cfg(3));
        p.begin(t0, &mut paths).unwrap();
        assert_eq!(p.on_connected(0), None, "no race, no loser");
    }

    /// Path 0 healthy, path 1 not (held down, say): never a racer, still a retry.
    struct OneHealthy;

    impl Paths for OneHealthy {
        fn pick(&mut self, tried: Tried) -> Option<usize> {
            (0..2).find(|&i| !tried.contains(i))
        }
        fn pick_racer(&mut self, tried: Tried) -> Option<usize> {
            Some(0).filter(|&i| !tried.contains(i))
        }
        fn remaining(&self, tried: Tried) -> usize {
            (0..2).filter(|&i| !tried.contains(i)).count()
        }
        // Held down is still up: it answers its probes.
        fn remaining_up(&self, tried: Tried) -> usize {
            self.remaining(tried)
        }
        fn is_up(&self, _: usize) -> bool {
            true
        }
        fn usual_latency(&self, _: usize) -> Option<Duration> {
            Some(10 * MS)
        }
    }

    #[test]
    fn an_unhealthy_path_never_races_but_is_still_a_retry() {
        let t0 = Instant::now();
        let mut p = Plan::new(cfg(3));
        assert_eq!(p.begin(t0, &mut OneHealthy).map(|s| s.index), Some(0));
        assert_eq!(p.on_hedge(t0 + 40 * MS, &mut OneHealthy), None, "no healthy path to race with");
        assert_eq!((p.in_flight(), p.attempts()), (1, 1));
        let retry = p.on_failed(0, t0 + 300 * MS, &mut OneHealthy).expect("a failure moves on");
        assert_eq!(retry.index, 1);
    }

    #[test]
    fn no_paths_no_attempt() {
        let mut p = Plan::new(cfg(3));
        assert_eq!(p.begin(Instant::now(), &mut Fixed(vec![])), None);
    }
}
