//! Idle detection for relayed connections: an I/O wrapper that stamps the time of the last
//! byte moved, and a watchdog future that resolves once nothing moved for the idle timeout.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// Last-activity clock shared by the wrapped streams of one connection.
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

    fn last(&self) -> Instant {
        self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }

    /// Resolves once no activity was recorded for `idle`.
    pub async fn idle_for(&self, idle: Duration) {
        loop {
            let deadline = shared::ports::tokio_deadline(self.last(), idle);
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// An `AsyncRead + AsyncWrite` that touches an [`Activity`] whenever bytes move, and
/// optionally counts the bytes read (so long-lived relays show traffic while they run).
#[derive(Debug)]
pub struct Tracked<S> {
    inner: S,
    activity: Activity,
    read_bytes: Option<metrics::Counter>,
}

impl<S> Tracked<S> {
    pub fn new(inner: S, activity: Activity) -> Self {
        Self { inner, activity, read_bytes: None }
    }

    /// Count every byte read from `inner` on `counter`.
    pub fn count_reads(mut self, counter: metrics::Counter) -> Self {
        self.read_bytes = Some(counter);
        self
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if matches!(res, Poll::Ready(Ok(()))) && n > 0 {
            self.activity.touch();
            if let Some(c) = &self.read_bytes {
                c.increment(n as u64);
            }
        }
        res
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(res, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        res
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(res, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        res
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
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
