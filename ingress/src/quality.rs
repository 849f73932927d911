//! Delivered quality of a path, sans-io: a smoothed share of things that went wrong on it
//! (connects that had to be raced or failed, relayed segments retransmitted, UDP datagrams
//! unanswered), each sample in 0..=1, and the factor that scales the path's share by it. The
//! health verdict says whether a path works; this says how well, so a lossy path keeps a
//! smaller share instead of going down and up.
//!
//! The average also decays with time (half-life [`HALF_LIFE`]): a path that lost its share
//! gets few samples, and without decay one bad minute would be held against it for good; as
//! its share grows back, its traffic measures it again.
//!
//! Suspicions (connects raced for being slow, still in flight) count as gone wrong while they
//! last, without being samples: each weighs what one more wrong sample would
//! ([`Quality::loss_with`]), and when it ends its real outcome is sampled. So a burst of loss
//! bends the share at once, and a connect that was merely slow leaves no trace.

use std::time::{Duration, Instant};

/// Weight of one sample in the average (traffic gives many: tens to hundreds a second; at
/// 50 a second the average follows a change within a second or two).
pub const ALPHA: f64 = 0.02;
/// Half-life of the average without samples.
pub const HALF_LIFE: Duration = Duration::from_secs(10);
/// The loss at which the factor is one half; it falls with the square of the loss beyond,
/// and barely moves below (1 % of attempts going wrong costs 4 % of the share, 5 % half,
/// 10 % four fifths): scheduler noise and the odd lost packet do not bend shares, a path
/// losing packets steadily gets much less.
pub const HALF_AT: f64 = 0.05;

#[derive(Debug, Clone, Copy)]
pub struct Quality {
    /// Smoothed share of samples that went wrong, as of `at`.
    loss: f64,
    at: Instant,
}

impl Quality {
    pub fn new(now: Instant) -> Self {
        Self { loss: 0.0, at: now }
    }

    /// The smoothed loss at `now`.
    pub fn loss(&self, now: Instant) -> f64 {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.loss * (-dt / HALF_LIFE.as_secs_f64()).exp2()
    }

    /// The smoothed loss at `now` with `suspicions` in flight, each weighing one more wrong
    /// sample.
    pub fn loss_with(&self, suspicions: u32, now: Instant) -> f64 {
        let loss = self.loss(now);
        if suspicions == 0 {
            return loss;
        }
        1.0 - (1.0 - loss) * (1.0 - ALPHA).powi(suspicions.min(i32::MAX as u32) as i32)
    }

    /// One sample: 0 went well, 1 went wrong (a ratio in between for a batch).
    pub fn sample(&mut self, went_wrong: f64, now: Instant) {
        let x = if went_wrong.is_finite() { went_wrong.clamp(0.0, 1.0) } else { 1.0 };
        self.loss = self.loss(now) * (1.0 - ALPHA) + ALPHA * x;
        self.at = now;
    }

    /// Share multiplier in (0, 1] with `suspicions` in flight: `1 / (1 + (loss / HALF_AT)^2)`.
    pub fn factor(&self, suspicions: u32, now: Instant) -> f64 {
        let r = self.loss_with(suspicions, now) / HALF_AT;
        1.0 / (1.0 + r * r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(n: f64) -> Duration {
        Duration::from_secs_f64(n)
    }

    #[test]
    fn the_factor_follows_the_share_that_went_wrong() {
        let t0 = Instant::now();
        // 1,000 samples, every 1/p-th wrong (evenly), 5 ms apart: the factor's mean over the
        // last 200 (it wobbles with each wrong sample).
        let steady = |p: f64| {
            let mut q = Quality::new(t0);
            let mut acc = 0.0;
            let mut sum = 0.0;
            for i in 0..1000u32 {
                acc += p;
                let wrong = if acc >= 1.0 { 1.0 } else { 0.0 };
                acc -= wrong;
                let t = t0 + s(f64::from(i) * 0.005);
                q.sample(wrong, t);
                if i >= 800 {
                    sum += q.factor(0, t);
                }
            }
            sum / 200.0
        };
        assert!(steady(0.0) > 0.999);
        assert!((0.9..1.0).contains(&steady(0.01)), "{}", steady(0.01));
        let half = steady(0.05);
        assert!((0.35..0.65).contains(&half), "{half}");
        assert!(steady(0.10) < 0.35, "{}", steady(0.10));
    }

    #[test]
    fn without_samples_the_loss_decays_by_half_every_half_life() {
        let t0 = Instant::now();
        let mut q = Quality::new(t0);
        for _ in 0..500 {
            q.sample(1.0, t0);
        }
        let l = q.loss(t0);
        assert!(l > 0.99);
        assert!((q.loss(t0 + HALF_LIFE) - l / 2.0).abs() < 1e-9);
        assert!(q.factor(0, t0 + HALF_LIFE * 10) > 0.99);
    }

    #[test]
    fn a_suspicion_weighs_one_wrong_sample_while_it_lasts() {
        let t0 = Instant::now();
        let mut q = Quality::new(t0);
        for i in 0..40u32 {
            q.sample(if i % 9 == 0 { 1.0 } else { 0.0 }, t0);
        }
        let mut sampled = q;
        for _ in 0..5 {
            sampled.sample(1.0, t0);
        }
        assert!((q.loss_with(5, t0) - sampled.loss(t0)).abs() < 1e-12);
        assert!(q.factor(5, t0) < q.factor(0, t0) * 0.5, "{} vs {}", q.factor(5, t0), q.factor(0, t0));
        assert_eq!(q.loss_with(0, t0), q.loss(t0));
    }

    #[test]
    fn odd_samples_are_clamped() {
        let t0 = Instant::now();
        let mut q = Quality::new(t0);
        q.sample(f64::NAN, t0);
        q.sample(7.0, t0);
        q.sample(-1.0, t0);
        let l = q.loss(t0);
        assert!(l > 0.0 && l <= 1.0, "{l}");
    }
}
