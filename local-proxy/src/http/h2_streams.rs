//! Each h2 stream runs in its own task (as with hyper's `TokioExecutor`), and one that was not
//! polled at all for a whole period is aborted, which resets it. hyper's h2 server does not
//! poll a response body while the client grants no flow-control window, so no body timer can
//! see such a stream; the stream keeps the connection from idling out (it is in flight); and
//! each stream holds its upstream connection. nginx bounds this with `send_timeout`. The list
//! also says since when no stream has been open, from which an h2 connection idles out.
//!
//! A stream doing anything legitimate is polled well within a period: its request's timers
//! (`upstream_timeout`, re-armed while a request body streams), the upstream's body or its
//! timer (`upstream_timeout` again), forward auth's timer, or the client's window updates. The
//! period (`Http::stream_stall`) is `idle_timeout + upstream_timeout` + the longest
//! `forward_auth.timeout`, longer than any of those waits.
//!
//! One sweep per connection and period looks at every stream's poll count, so a stream costs
//! no timer of its own: a count stored per poll, and a place in its connection's list (a
//! timer per stream cost 2.6 k instructions per h2 request of 54 k). A stalled stream goes
//! after one to two periods.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::task::AbortHandle;
use tokio::time::Instant;

use crate::metrics::names;

/// Spawns one connection's h2 stream tasks and keeps them in its [`Streams`].
#[derive(Debug, Clone)]
pub struct StreamExec(pub Streams);

impl<F> hyper::rt::Executor<F> for StreamExec
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        let polls = Arc::new(StreamState::default());
        let task = tokio::spawn(Counted { fut, n: 0, polls: polls.clone(), streams: self.0.clone() });
        self.0.add(Stream { polls, seen: NOT_SEEN, task: task.abort_handle() });
    }
}

/// What a stream's task and its connection's sweep share.
#[derive(Debug, Default)]
pub struct StreamState {
    polls: AtomicU32,
    /// Set by the sweep before it aborts the stream (the access log's `result`).
    stalled: AtomicBool,
}

impl StreamState {
    pub fn stalled(&self) -> bool {
        self.stalled.load(Ordering::Relaxed)
    }
}

tokio::task_local! {
    /// The stream being polled for the first time: where its request starts, so the access
    /// log can note a reset by the sweep.
    static STREAM: Arc<StreamState>;
}

/// The h2 stream whose request is starting (`None` outside one: HTTP/1.1).
pub fn current() -> Option<Arc<StreamState>> {
    STREAM.try_with(Arc::clone).ok()
}

pin_project_lite::pin_project! {
    /// hyper's stream future, counting its polls. A struct rather than an async block, which
    /// kept the future twice (captured, then pinned): a larger task, copied and allocated
    /// per request.
    struct Counted<F> {
        #[pin]
        fut: F,
        n: u32,
        polls: Arc<StreamState>,
        streams: Streams,
    }
}

impl<F: Future> Future for Counted<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        *this.n = this.n.wrapping_add(1);
        // A plain store, read by the sweep: no locked add per poll.
        this.polls.polls.store(*this.n, Ordering::Relaxed);
        // The request starts in the first poll; later ones need no scope.
        let polled = if *this.n == 1 {
            let fut = this.fut;
            STREAM.sync_scope(this.polls.clone(), || fut.poll(cx))
        } else {
            this.fut.poll(cx)
        };
        if polled.is_ready() {
            // Out of the list at once: its abort handle keeps the task's memory, which would
            // otherwise wait for a sweep instead of going back to the allocator now.
            this.streams.remove(this.polls);
        }
        polled
    }
}

/// A stream's count before the first sweep that saw it (its first poll may not have come).
const NOT_SEEN: u32 = u32::MAX;

#[derive(Debug)]
struct Stream {
    /// Held by the task too, until it ends.
    polls: Arc<StreamState>,
    /// The count at the last sweep.
    seen: u32,
    task: AbortHandle,
}

impl Stream {
    fn ended(&self) -> bool {
        Arc::strong_count(&self.polls) == 1
    }
}

/// The h2 streams of one connection, and its sweeper: a task of its own, started with the
/// first stream (an unused connection has none) and aborted with the connection. (A branch
/// of the connection's own `select!` was polled at its every wake: 1.1 k instructions per h2
/// request.)
#[derive(Debug, Clone)]
pub struct Streams(Arc<Shared>);

#[derive(Debug)]
struct Shared {
    list: Mutex<List>,
    period: Duration,
    listener: &'static str,
}

#[derive(Debug)]
struct List {
    streams: Vec<Stream>,
    /// Streams left by the last cleanup: the next one comes when the list has doubled.
    kept: usize,
    sweeper: Option<AbortHandle>,
    /// When the list last became empty (at first, when the connection began).
    emptied: Instant,
}

impl Drop for Shared {
    fn drop(&mut self) {
        let list = self.list.get_mut().unwrap_or_else(|e| e.into_inner());
        if let Some(sweeper) = list.sweeper.take() {
            sweeper.abort();
        }
    }
}

impl Streams {
    /// Streams not polled for a whole `period` are aborted and counted by `listener`.
    pub fn new(period: Duration, listener: &'static str) -> Self {
        let list = List { streams: Vec::new(), kept: 0, sweeper: None, emptied: Instant::now() };
        Self(Arc::new(Shared { list: Mutex::new(list), period, listener }))
    }

    /// Since when no stream has been open; `None` while one is. PINGs, SETTINGS and window
    /// updates do not count: an h2 connection idles from its last stream's end (Go's
    /// `IdleTimeout`, nginx's `keepalive_timeout`).
    pub fn quiet_since(&self) -> Option<Instant> {
        let mut list = self.lock();
        if !list.streams.iter().all(Stream::ended) {
            return None;
        }
        if !list.streams.is_empty() {
            // Streams that ended without leaving the list (a panicked task): when the last of
            // them ended is not known, so the quiet time starts now rather than too early.
            list.streams.clear();
            list.emptied = Instant::now();
        }
        Some(list.emptied)
    }

    fn lock(&self) -> MutexGuard<'_, List> {
        // Nothing panics while holding it, and the list is whole after any change.
        self.0.list.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn add(&self, stream: Stream) {
        let mut list = self.lock();
        if list.sweeper.is_none() {
            list.sweeper = Some(tokio::spawn(sweep_every(Arc::downgrade(&self.0))).abort_handle());
        }
        // A stream leaves when it ends; one whose task was dropped unfinished (a panic) at the
        // sweep, or here on a busy connection: the list stays within twice the open streams.
        if list.streams.len() >= 2 * list.kept + 64 {
            list.streams.retain(|s| !s.ended());
            list.kept = list.streams.len();
        }
        // One that finished on another thread before it was listed found nothing to remove.
        if !stream.ended() {
            list.streams.push(stream);
        } else {
            list.emptied = Instant::now();
        }
    }

    fn remove(&self, polls: &Arc<StreamState>) {
        let mut list = self.lock();
        if let Some(i) = list.streams.iter().position(|s| Arc::ptr_eq(&s.polls, polls)) {
            list.streams.swap_remove(i);
            if list.streams.is_empty() {
                list.emptied = Instant::now();
            }
        }
    }

    /// Abort the streams not polled since the last sweep; how many.
    fn sweep(&self) -> u64 {
        let mut stalled = 0;
        let mut list = self.lock();
        list.streams.retain_mut(|s| {
            if s.ended() {
                return false;
            }
            let polls = s.polls.polls.load(Ordering::Relaxed);
            if polls == s.seen {
                s.polls.stalled.store(true, Ordering::Relaxed);
                s.task.abort();
                stalled += 1;
                return false;
            }
            s.seen = polls;
            true
        });
        list.kept = list.streams.len();
        if stalled > 0 {
            list.emptied = Instant::now();
        }
        stalled
    }
}

/// Sweep every period until the connection is gone.
async fn sweep_every(shared: Weak<Shared>) {
    let Some(period) = shared.upgrade().map(|s| s.period) else { return };
    loop {
        tokio::time::sleep(period).await;
        let Some(streams) = shared.upgrade().map(Streams) else { return };
        let stalled = streams.sweep();
        if stalled > 0 {
            let listener = streams.0.listener;
            metrics::counter!(names::HTTP_STREAMS_STALLED, "listener" => listener).increment(stalled);
            tracing::debug!(listener, stalled, "h2 streams not polled for a whole period: reset");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use hyper::rt::Executor;
    use tokio::time::Instant;

    use super::*;

    /// Sets its flag when dropped.
    struct Dropped(Arc<AtomicBool>);
    impl Drop for Dropped {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }

    fn spawn(streams: &Streams, fut: impl Future<Output = ()> + Send + 'static) -> Arc<AtomicBool> {
        let dropped = Arc::new(AtomicBool::new(false));
        let guard = Dropped(dropped.clone());
        StreamExec(streams.clone()).execute(async move {
            let _guard = guard;
            fut.await
        });
        dropped
    }

    /// Wait (paused clock) until `flag` is set or `limit` passed; when it was set.
    async fn when_set(flag: &AtomicBool, limit: Duration) -> Option<Duration> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if flag.load(Ordering::Relaxed) {
                return Some(start.elapsed());
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        None
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_never_polled_again_goes_within_two_periods_and_a_busy_one_stays() {
        let period = Duration::from_secs(60);
        let streams = Streams::new(period, "test");
        let stuck = spawn(&streams, std::future::pending());
        // Woken every 50 s for ten minutes, then done.
        let busy = spawn(&streams, async {
            for _ in 0..12 {
                tokio::time::sleep(Duration::from_secs(50)).await;
            }
        });
        let took = when_set(&stuck, period * 3).await.expect("the stuck stream was never aborted");
        assert!(took >= period && took <= period * 2 + Duration::from_secs(1), "{took:?}");
        assert!(!busy.load(Ordering::Relaxed), "a stream polled every 50 s was aborted");
        let ended = when_set(&busy, Duration::from_secs(700)).await.expect("the busy stream never ended");
        assert!(ended <= Duration::from_secs(600), "{ended:?}");
        // Both gone from the list.
        tokio::time::sleep(period).await;
        assert!(streams.lock().streams.is_empty());
        // The connection gone, its sweeper goes too.
        let sweeper = streams.lock().sweeper.clone().expect("a sweeper");
        drop(streams);
        tokio::task::yield_now().await;
        assert!(sweeper.is_finished());
    }

    #[tokio::test(start_paused = true)]
    async fn ended_streams_do_not_pile_up_between_sweeps() {
        let streams = Streams::new(Duration::from_secs(60), "test");
        for _ in 0..10_000 {
            spawn(&streams, async {});
            tokio::task::yield_now().await;
        }
        let len = streams.lock().streams.len();
        assert!(len <= 200, "{len} entries for streams that ended");
    }
}
