//! Each h2 stream runs in its own task (as with hyper's `TokioExecutor`), and one that nothing
//! wakes for a whole period is dropped, which resets it. hyper's h2 server does not poll a
//! response body while the client grants no flow-control window, so no body timer can see
//! such a stream; PINGs and other streams keep the connection from idling out; and each stream
//! holds its upstream connection. nginx bounds this with `send_timeout`.
//!
//! A stream doing anything legitimate is woken well within a period: its request's timers
//! (`upstream_timeout`, re-armed while a request body streams), the upstream's body or its
//! timer (`upstream_timeout` again), forward auth's timer, or the client's window updates. The
//! period (`Http::stream_stall`) is `idle_timeout + upstream_timeout` + the longest
//! `forward_auth.timeout`, longer than any of those waits; a stalled stream goes after one to
//! two periods. Wakes are counted, not timed: no clock read per poll.

use std::future::Future;
use std::pin::pin;
use std::task::Poll;
use std::time::Duration;

use tokio::time::Instant;

use crate::metrics::names;

/// Spawns hyper's h2 stream tasks with a stall bound of `period`.
#[derive(Debug, Clone, Copy)]
pub struct StreamExec {
    pub period: Duration,
    pub listener: &'static str,
}

impl<F> hyper::rt::Executor<F> for StreamExec
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        let StreamExec { period, listener } = *self;
        tokio::spawn(async move {
            if !ends_or_stalls(fut, period).await {
                metrics::counter!(names::HTTP_STREAMS_STALLED, "listener" => listener).increment(1);
                tracing::debug!(listener, "h2 stream woken by nothing for a whole period: reset");
            }
        });
    }
}

/// Run `fut` to its end (true), or drop it once a whole `period` passed in which nothing else
/// woke it (false).
async fn ends_or_stalls<F: Future>(fut: F, period: Duration) -> bool {
    let mut fut = pin!(fut);
    let mut timer = pin!(tokio::time::sleep(period));
    // Polls since the timer was last set, not counting the timer's own.
    let mut woken = 0u32;
    std::future::poll_fn(|cx| {
        let fired = timer.as_mut().poll(cx).is_ready();
        if fired {
            if woken == 0 {
                return Poll::Ready(false);
            }
            woken = 0;
            timer.as_mut().reset(Instant::now() + period);
            // Registers the waker for the new deadline.
            let _ = timer.as_mut().poll(cx);
        }
        if fut.as_mut().poll(cx).is_ready() {
            return Poll::Ready(true);
        }
        if !fired {
            woken = woken.saturating_add(1);
        }
        Poll::Pending
    })
    .await
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    use super::*;

    /// Sets its flag when dropped before it ended.
    struct Dropped(Arc<AtomicBool>);
    impl Drop for Dropped {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_future_nothing_wakes_is_dropped_within_two_periods() {
        let period = Duration::from_secs(60);
        let dropped = Arc::new(AtomicBool::new(false));
        let guard = Dropped(dropped.clone());
        let started = Instant::now();
        let ended = ends_or_stalls(
            async move {
                let _guard = guard;
                std::future::pending::<()>().await
            },
            period,
        )
        .await;
        assert!(!ended);
        assert!(dropped.load(Ordering::Relaxed));
        let took = started.elapsed();
        assert!(took >= period && took <= period * 2, "{took:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_future_woken_within_each_period_runs_to_its_end() {
        let period = Duration::from_secs(60);
        let started = Instant::now();
        // Woken every 50 s (its own timer) for ten minutes, then done.
        let ended = ends_or_stalls(
            async {
                for _ in 0..12 {
                    tokio::time::sleep(Duration::from_secs(50)).await;
                }
            },
            period,
        )
        .await;
        assert!(ended);
        assert_eq!(started.elapsed(), Duration::from_secs(600));
    }

    #[tokio::test(start_paused = true)]
    async fn woken_then_quiet_is_dropped_after_the_last_wake() {
        let period = Duration::from_secs(60);
        let started = Instant::now();
        let ended = ends_or_stalls(
            async {
                for _ in 0..5 {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                }
                std::future::pending::<()>().await
            },
            period,
        )
        .await;
        assert!(!ended);
        let quiet_for = started.elapsed() - Duration::from_secs(150);
        assert!(quiet_for >= period && quiet_for <= period * 2, "{:?}", started.elapsed());
    }
}
