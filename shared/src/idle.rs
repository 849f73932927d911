//! Idle detection for relayed connections, used by both binaries: a last-activity clock the
//! relay touches whenever bytes move, and a watchdog future that resolves once nothing moved
//! for the idle timeout (deadlines saturate: a huge configured timeout never overflows).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

/// Last-activity clock shared by both directions (or the wrapped streams) of one connection.
#[derive(Debug, Clone)]
pub struct Activity {
    start: Instant,
    last_ms: Arc<AtomicU64>,
}

impl Default for Activity {
    fn default() -> Self {
        Self::new()
    }
}

impl Activity {
    pub fn new() -> Self {
        Self { start: Instant::now(), last_ms: Arc::new(AtomicU64::new(0)) }
    }

    /// Record activity now.
    pub fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// When activity was last recorded (the clock's start if never).
    pub fn last(&self) -> Instant {
        self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }

    /// Resolves once no activity was recorded for `idle`.
    pub async fn idle_for(&self, idle: Duration) {
        loop {
            let deadline = crate::ports::tokio_deadline(self.last(), idle);
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn idle_fires_only_after_quiet_period() {
        let a = Activity::new();
        let watch = a.clone();
        let t = tokio::spawn(async move { watch.idle_for(Duration::from_secs(10)).await });
        tokio::time::sleep(Duration::from_secs(6)).await;
        a.touch();
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert!(!t.is_finished(), "touched 6s ago: not idle yet");
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(t.is_finished());
    }
}
