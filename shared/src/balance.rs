//! Choosing one of several weighted candidates (WAN paths, upstreams): smooth weighted
//! round robin, weighted least-connections, two random choices, and a bandwidth-aware policy.
//!
//! Sans-io: callers pass each candidate's effective weight (configured weight × health
//! factor) and the load its policy reads (open connections or flows for least-connections,
//! transfers in progress at once for bandwidth); nothing here reads a clock or a socket. The only state is the round
//! robin's "current weights", kept per candidate index, and the random choices' generator
//! (a deterministic sequence: tests replay it), so one [`Selector`] per pool and per
//! kind of traffic (TCP connections and UDP flows are balanced apart: idle flows of one kind
//! never push the other kind away from a path).

use std::time::{Duration, Instant};

/// How a pool spreads new connections (or flows) over its healthy candidates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    /// Smooth weighted round robin (nginx's algorithm): over any run of picks the shares
    /// follow the weights exactly, interleaved rather than in bursts. Open connections do
    /// not count, so a few long-lived or idle ones never bend the shares.
    #[default]
    RoundRobin,
    /// Fewest open connections per unit of weight; ties go round robin by weight.
    LeastConn,
    /// Weights are the candidates' relative capacities; load is how many connections and
    /// flows are transferring at once on average (the caller measures it from the bytes it
    /// relays). A bulk transfer counts while it moves data, an idle connection or flow
    /// counts nothing. On a path near its capacity transfers last longer, so more of them
    /// are busy at once and new ones go where there is room (Little's law); ties go round
    /// robin by weight.
    Bandwidth,
    /// Two random choices: two distinct candidates drawn at random in proportion to their
    /// weights, the one with fewer open connections per unit of weight wins (ties: the first
    /// drawn). Nearly as even as least-connections without every pick herding onto the same
    /// momentarily emptiest candidate; with equal loads the shares follow the weights.
    RandomTwo,
}

impl Policy {
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::RoundRobin => "round_robin",
            Policy::LeastConn => "least_conn",
            Policy::Bandwidth => "bandwidth",
            Policy::RandomTwo => "random_two",
        }
    }
}

/// One candidate as the selector sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    /// Caller's index (stable across picks: the round robin state is kept by it).
    pub index: usize,
    /// Configured weight × health factor; candidates with 0 are never chosen.
    pub weight: f64,
    /// What the policy counts as load: open connections (or flows) of the kind being
    /// balanced for least-connections, transfers in progress at once for bandwidth; round
    /// robin ignores it.
    pub load: f64,
}

/// Under the bandwidth policy, loads this close count as equal, in transfers in progress on
/// the heaviest candidate: a quarter of one transfer there, less per unit of weight on a
/// lighter one. Relative to the weights, so 5:2 and 100:40 balance alike.
pub const BUSY_TIE: f64 = 0.25;

/// Round robin state for one pool and one kind of traffic.
#[derive(Debug, Default, Clone)]
pub struct Selector {
    current: Vec<f64>,
    /// splitmix64 state of the random choices.
    rng: u64,
}

impl Selector {
    /// Choose among `cands` (the caller has already filtered out down or tried ones).
    pub fn pick(&mut self, policy: Policy, cands: &[Candidate]) -> Option<usize> {
        match policy {
            Policy::RoundRobin => self.smooth(cands.iter().map(|c| (c.index, c.weight))),
            Policy::LeastConn | Policy::Bandwidth => {
                let load = |c: &Candidate| c.load / c.weight;
                let usable = || cands.iter().filter(|c| c.weight > 0.0);
                let min = usable().map(load).fold(f64::INFINITY, f64::min);
                // Equal load (typically all idle): round robin by weight among the tied. Busy
                // time is an average, so a quarter of a transfer apart counts as equal: light
                // load then follows the weights instead of the last few milliseconds.
                let slack = if policy == Policy::Bandwidth {
                    BUSY_TIE / usable().map(|c| c.weight).fold(f64::MIN_POSITIVE, f64::max)
                } else {
                    min * 1e-9
                };
                self.smooth(
                    cands.iter().filter(|c| c.weight > 0.0 && load(c) <= min + slack).map(|c| (c.index, c.weight)),
                )
            }
            Policy::RandomTwo => {
                let usable = |c: &&Candidate| c.weight > 0.0 && c.weight.is_finite();
                let total: f64 = cands.iter().filter(usable).map(|c| c.weight).sum();
                let first = *self.draw(cands.iter().filter(usable), total)?;
                let rest = cands.iter().filter(usable).filter(|c| c.index != first.index);
                let Some(second) = self.draw(rest, total - first.weight).copied() else {
                    return Some(first.index);
                };
                let load = |c: &Candidate| c.load / c.weight;
                Some(if load(&second) < load(&first) { second.index } else { first.index })
            }
        }
    }

    /// One candidate drawn with probability weight / `total`.
    fn draw<'a>(&mut self, mut cands: impl Iterator<Item = &'a Candidate>, total: f64) -> Option<&'a Candidate> {
        let mut point = self.next_unit() * total;
        let mut last = None;
        for c in cands.by_ref() {
            last = Some(c);
            if point < c.weight {
                return Some(c);
            }
            point -= c.weight;
        }
        // Rounding left the point just past the end: the last candidate.
        last
    }

    /// A uniform number in [0, 1) (splitmix64: any state, zero included, is a good seed).
    fn next_unit(&mut self) -> f64 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Smooth weighted round robin: every candidate gains its weight, the richest is chosen
    /// and pays back the total. Candidates absent from this pick keep their credit.
    fn smooth(&mut self, cands: impl Iterator<Item = (usize, f64)> + Clone) -> Option<usize> {
        let mut total = 0.0;
        let mut best: Option<(usize, f64)> = None;
        for (index, weight) in cands.filter(|&(_, w)| w > 0.0 && w.is_finite()) {
            if self.current.len() <= index {
                self.current.resize(index + 1, 0.0);
            }
            self.current[index] += weight;
            total += weight;
            if best.is_none_or(|(_, c)| self.current[index] > c) {
                best = Some((index, self.current[index]));
            }
        }
        let (index, _) = best?;
        self.current[index] -= total;
        Some(index)
    }
}

/// Bytes per second through one candidate, smoothed, and its demonstrated capacity (the
/// recent peak of that rate, decaying slowly so a path that got slower is believed); shown
/// to operators beside the weights.
#[derive(Debug, Clone)]
pub struct RateMeter {
    last: Option<(u64, Instant)>,
    rate: f64,
    peak: f64,
}

/// Time constant of the rate average.
const RATE_TAU: Duration = Duration::from_secs(1);
/// The peak halves in this long when the path no longer reaches it.
const PEAK_HALF_LIFE: Duration = Duration::from_secs(60);
/// Below this peak (bytes/s) a path has never been pushed: it counts as idle (128 KiB/s).
pub const PEAK_FLOOR: f64 = 128.0 * 1024.0;

impl Default for RateMeter {
    fn default() -> Self {
        Self { last: None, rate: 0.0, peak: PEAK_FLOOR }
    }
}

impl RateMeter {
    /// Feed the candidate's running byte total as of `now`.
    pub fn sample(&mut self, total: u64, now: Instant) {
        if let Some((prev, at)) = self.last {
            let dt = now.saturating_duration_since(at).as_secs_f64();
            if dt <= 0.0 {
                return;
            }
            // A counter that went backwards (a path rebuilt) counts as no traffic.
            let inst = total.saturating_sub(prev) as f64 / dt;
            let alpha = 1.0 - (-dt / RATE_TAU.as_secs_f64()).exp();
            self.rate += alpha * (inst - self.rate);
            let decay = 0.5f64.powf(dt / PEAK_HALF_LIFE.as_secs_f64());
            self.peak = (self.peak * decay).max(self.rate).max(PEAK_FLOOR);
        }
        self.last = Some((total, now));
    }

    /// Smoothed bytes per second.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// Demonstrated capacity in bytes per second (at least [`PEAK_FLOOR`]).
    pub fn peak(&self) -> f64 {
        self.peak
    }

    /// Share of the demonstrated capacity in use, 0..=1.
    pub fn utilization(&self) -> f64 {
        (self.rate / self.peak).clamp(0.0, 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(index: usize, weight: f64, load: u64) -> Candidate {
        Candidate { index, weight, load: load as f64 }
    }

    fn counts(policy: Policy, cands: &[Candidate], n: usize) -> Vec<usize> {
        let mut s = Selector::default();
        let mut out = vec![0; cands.len()];
        for _ in 0..n {
            out[s.pick(policy, cands).unwrap()] += 1;
        }
        out
    }

    #[test]
    fn round_robin_follows_weights_exactly_and_ignores_open_connections() {
        // Two idle long-lived connections on path 0 must not bend the shares.
        assert_eq!(counts(Policy::RoundRobin, &[cand(0, 1.0, 4), cand(1, 1.0, 0)], 2000), [1000, 1000]);
        assert_eq!(counts(Policy::RoundRobin, &[cand(0, 3.0, 4), cand(1, 1.0, 0)], 2000), [1500, 500]);
        assert_eq!(
            counts(Policy::RoundRobin, &[cand(0, 5.0, 0), cand(1, 1.0, 0), cand(2, 1.0, 0)], 700),
            [500, 100, 100]
        );
    }

    #[test]
    fn round_robin_interleaves() {
        let mut s = Selector::default();
        let c = [cand(0, 2.0, 0), cand(1, 1.0, 0)];
        let seq: Vec<usize> = (0..6).map(|_| s.pick(Policy::RoundRobin, &c).unwrap()).collect();
        assert_eq!(seq, [0, 1, 0, 0, 1, 0]);
    }

    #[test]
    fn health_scales_round_robin_shares() {
        // A factor of 0.25 on an equal weight: one pick in five.
        let c = counts(Policy::RoundRobin, &[cand(0, 1.0, 0), cand(1, 0.25, 0)], 5000);
        assert_eq!(c, [4000, 1000]);
    }

    #[test]
    fn absent_or_zero_weight_candidates_are_skipped() {
        let mut s = Selector::default();
        assert_eq!(s.pick(Policy::RoundRobin, &[]), None);
        assert_eq!(s.pick(Policy::RoundRobin, &[cand(3, 0.0, 0)]), None);
        assert_eq!(s.pick(Policy::RoundRobin, &[cand(3, 0.0, 0), cand(5, 1.0, 0)]), Some(5));
        assert_eq!(s.pick(Policy::LeastConn, &[cand(3, 0.0, 0)]), None);
        assert_eq!(s.pick(Policy::Bandwidth, &[cand(3, f64::NAN, 0)]), None);
    }

    #[test]
    fn least_conn_goes_to_the_least_loaded_per_weight() {
        let mut s = Selector::default();
        let c = [cand(0, 1.0, 5), cand(1, 1.0, 2)];
        assert_eq!(s.pick(Policy::LeastConn, &c), Some(1));
        // 6 on weight 3 (2 each) beats 3 on weight 1.
        let c = [cand(0, 3.0, 6), cand(1, 1.0, 3)];
        assert_eq!(s.pick(Policy::LeastConn, &c), Some(0));
    }

    #[test]
    fn least_conn_ties_follow_weights() {
        assert_eq!(counts(Policy::LeastConn, &[cand(0, 3.0, 0), cand(1, 1.0, 0)], 400), [300, 100]);
    }

    #[test]
    fn random_two_follows_weights_when_idle_and_avoids_the_loaded() {
        let c = counts(Policy::RandomTwo, &[cand(0, 9.0, 0), cand(1, 1.0, 0)], 10_000);
        let share = c[0] as f64 / 10_000.0;
        assert!((share - 0.9).abs() < 0.02, "{c:?}");
        let c = counts(Policy::RandomTwo, &[cand(0, 1.0, 0), cand(1, 1.0, 0), cand(2, 1.0, 0)], 3000);
        assert!(c.iter().all(|&n| (900..=1100).contains(&n)), "{c:?}");
        // Of any two drawn, the less loaded wins: with two candidates that is always the idle one.
        assert_eq!(counts(Policy::RandomTwo, &[cand(0, 1.0, 10), cand(1, 1.0, 0)], 100), [0, 100]);
        // With three, the most loaded only wins when drawn against ... nobody: never.
        let c = counts(Policy::RandomTwo, &[cand(0, 1.0, 10), cand(1, 1.0, 1), cand(2, 1.0, 0)], 3000);
        assert_eq!(c[0], 0, "{c:?}");
        let mut s = Selector::default();
        assert_eq!(s.pick(Policy::RandomTwo, &[cand(4, 1.0, 3)]), Some(4));
        assert_eq!(s.pick(Policy::RandomTwo, &[cand(4, 0.0, 0)]), None);
    }

    #[test]
    fn bandwidth_counts_only_busy_load() {
        // The caller passes busy connections: a path whose transfers pile up is avoided ...
        let mut s = Selector::default();
        assert_eq!(s.pick(Policy::Bandwidth, &[cand(0, 1.0, 6), cand(1, 1.0, 1)]), Some(1));
        // ... and with nothing busy the weights decide, as they do when the loads differ by
        // less than BUSY_TIE.
        assert_eq!(counts(Policy::Bandwidth, &[cand(0, 3.0, 0), cand(1, 1.0, 0)], 400), [300, 100]);
        let near = [Candidate { index: 0, weight: 1.0, load: 0.1 }, Candidate { index: 1, weight: 1.0, load: 0.0 }];
        assert_eq!(counts(Policy::Bandwidth, &near, 400), [200, 200]);
    }

    /// The tie is relative to the weights: weights scaled by any factor (100:40 against 5:2,
    /// or every path's health factor halved) pick alike. It was absolute per unit of weight,
    /// so at 100:40 one busy transfer (0.01 per unit) tied with none and at 1:1 it did not.
    #[test]
    fn bandwidth_picks_alike_whatever_the_scale_of_the_weights() {
        let at = |w: [f64; 2], load: [f64; 2]| {
            let c = [
                Candidate { index: 0, weight: w[0], load: load[0] },
                Candidate { index: 1, weight: w[1], load: load[1] },
            ];
            counts(Policy::Bandwidth, &c, 700)
        };
        for load in [[0.0, 0.0], [1.0, 0.0], [0.2, 0.0], [2.0, 1.0], [3.0, 1.0], [0.0, 0.3]] {
            for (small, big) in [([1.0, 1.0], [20.0, 20.0]), ([5.0, 2.0], [100.0, 40.0]), ([3.0, 1.0], [0.3, 0.1])] {
                assert_eq!(at(small, load), at(big, load), "loads {load:?}, weights {small:?} and {big:?}");
            }
        }
        // One transfer on the heavier path of two equal ones moves new ones to the other.
        assert_eq!(at([100.0, 100.0], [1.0, 0.0]), [0, 700]);
    }

    #[test]
    fn rate_meter_tracks_rate_and_peak() {
        let t0 = Instant::now();
        let mut m = RateMeter::default();
        m.sample(0, t0);
        assert_eq!(m.rate(), 0.0);
        assert_eq!(m.utilization(), 0.0);
        // 10 MB/s for 5 s in 250 ms steps.
        let mut total = 0u64;
        for i in 1..=20 {
            total += 2_500_000;
            m.sample(total, t0 + Duration::from_millis(250 * i));
        }
        assert!((m.rate() - 10e6).abs() < 0.1e6, "rate {}", m.rate());
        assert!(m.utilization() > 0.95);
        // Idle for 10 s: the rate falls to nothing, the peak remembers the capacity.
        for i in 21..=60 {
            m.sample(total, t0 + Duration::from_millis(250 * i));
        }
        assert!(m.rate() < 1e3, "rate {}", m.rate());
        assert!(m.peak() > 8e6 && m.peak() < 10e6, "peak {}", m.peak());
        assert!(m.utilization() < 0.01);
        // Same instant twice, and a counter that went backwards (reload): no panic, no NaN.
        m.sample(total, t0 + Duration::from_millis(250 * 60));
        m.sample(0, t0 + Duration::from_millis(250 * 61));
        assert!(m.rate().is_finite() && m.peak() >= PEAK_FLOOR);
    }
}
