//! An HTTP/1 keep-alive connection that goes quiet between requests gives hyper's buffers
//! back. hyper keeps the 8 KiB read and 8 KiB write buffers of a connection until it closes,
//! so every kept-alive connection a browser leaves open holds them for the whole keep-alive
//! time; nginx and HAProxy release theirs as soon as a connection is idle.
//!
//! hyper cannot be asked to release them, but it ends a connection quietly when the client
//! closes between requests. So once the connection has been quiet for [`PARK_AFTER`] after a
//! response, with nothing of a new request read and no write held up, [`Parkable`] answers
//! hyper's next read with an end of stream that only hyper sees, and swallows the shutdown
//! that follows. The caller takes the socket back, waits for the client's next bytes as for a
//! new connection (`first_bytes`), and builds a new server for them.
//!
//! Nothing of the client's is dropped: the end of stream is only made up when the socket has
//! nothing to read (the read would wait), and a request that arrives while the park is asked
//! for is handed to hyper as usual.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::head_timeout::HeadProgress;
use crate::idle::Activity;

/// How long a connection stays quiet after a response before it is parked. Back-to-back
/// requests (a page's assets, an API client under load) come well within it and keep their
/// server; a connection left open after them is parked almost at once.
pub const PARK_AFTER: Duration = Duration::from_millis(50);

/// What the serving loop and the I/O wrapper share about one connection's park.
#[derive(Debug, Default)]
pub struct Park {
    /// The loop asks for a park; hyper's next read that would wait ends its stream instead.
    requested: AtomicBool,
    /// The made-up end of stream was given: hyper is ending, the socket is still the client's.
    parked: AtomicBool,
    /// The last write or flush could not finish (the client is not reading): not quiet.
    write_blocked: AtomicBool,
}

impl Park {
    pub fn request(&self) {
        self.requested.store(true, Ordering::Relaxed);
    }

    pub fn requested(&self) -> bool {
        self.requested.load(Ordering::Relaxed)
    }

    /// Whether hyper was ended by a park (the connection goes on) rather than by the client.
    pub fn parked(&self) -> bool {
        self.parked.load(Ordering::Relaxed)
    }
}

/// Resolves once the connection has been quiet for [`PARK_AFTER`] between requests: a
/// response ended, no byte moved since, no new head started, no write waiting. (Before its
/// first answer a server is never parked, so a client cannot stretch the time its first head
/// is given by sending it in pieces.)
pub async fn quiet_between_requests(activity: &Activity, progress: &HeadProgress, park: &Park) {
    loop {
        activity.idle_for(PARK_AFTER).await;
        if progress.answered() && !progress.head_started() && !park.write_blocked.load(Ordering::Relaxed) {
            return;
        }
        // No answer yet, a request in flight (its upstream is slow), or a client not reading.
        tokio::time::sleep(PARK_AFTER).await;
    }
}

/// The I/O hyper serves a parkable connection through.
pub struct Parkable<IO> {
    inner: IO,
    park: Arc<Park>,
}

impl<IO> Parkable<IO> {
    pub fn new(inner: IO) -> (Self, Arc<Park>) {
        let park = Arc::new(Park::default());
        (Self { inner, park: park.clone() }, park)
    }

    pub fn into_inner(self) -> IO {
        self.inner
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Parkable<IO> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        if self.park.requested() {
            match res {
                // Nothing to read: the end of stream hyper ends on (`buf` is left as it was).
                Poll::Pending => {
                    self.park.parked.store(true, Ordering::Relaxed);
                    return Poll::Ready(Ok(()));
                }
                // A request came as the park was asked for: hyper serves it, no park.
                Poll::Ready(Ok(())) if buf.filled().len() > before => {
                    self.park.requested.store(false, Ordering::Relaxed);
                }
                _ => {}
            }
        }
        res
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Parkable<IO> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.park.write_blocked.store(res.is_pending(), Ordering::Relaxed);
        res
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.park.write_blocked.store(res.is_pending(), Ordering::Relaxed);
        res
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let res = Pin::new(&mut self.inner).poll_flush(cx);
        self.park.write_blocked.store(res.is_pending(), Ordering::Relaxed);
        res
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // hyper closes what it thinks the client closed; the client did not.
        if self.park.parked() {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::http::head_timeout::{MarkOnDrop, Reclaim};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_park_ends_the_stream_only_when_nothing_waits() {
        let (a, mut client) = tokio::io::duplex(1024);
        let (mut io, park) = Parkable::new(a);
        client.write_all(b"GET /").await.unwrap();
        park.request();
        let mut buf = [0u8; 16];
        // Bytes waiting: they are read, and the park is called off.
        assert_eq!(io.read(&mut buf).await.unwrap(), 5);
        assert!(!park.requested() && !park.parked());
        // Nothing waiting: an end of stream for hyper, the client's side untouched.
        park.request();
        assert_eq!(io.read(&mut buf).await.unwrap(), 0);
        assert!(park.parked());
        io.shutdown().await.unwrap();
        let mut io = io.into_inner();
        client.write_all(b"next").await.unwrap();
        assert_eq!(io.read(&mut buf).await.unwrap(), 4, "the connection goes on after the park");
        io.write_all(b"answer").await.unwrap();
        let mut got = [0u8; 6];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"answer");
    }

    #[tokio::test]
    async fn a_read_without_a_park_waits_as_before() {
        let (a, _client) = tokio::io::duplex(1024);
        let (mut io, park) = Parkable::new(a);
        let mut buf = [0u8; 16];
        let waited = tokio::time::timeout(Duration::from_millis(20), io.read(&mut buf)).await;
        assert!(waited.is_err(), "{waited:?}");
        assert!(!park.parked());
    }

    #[tokio::test(start_paused = true)]
    async fn quiet_only_after_an_answer_with_nothing_in_flight() {
        let activity = Activity::new();
        let (server, mut client) = tokio::io::duplex(8);
        let (io, park) = Parkable::new(server);
        let mut io = Reclaim::new(io);
        let progress = io.progress();
        let quiet = |park: Arc<Park>, progress: Arc<HeadProgress>, activity: Activity| async move {
            tokio::time::timeout(PARK_AFTER * 10, quiet_between_requests(&activity, &progress, &park)).await.is_ok()
        };
        assert!(!quiet(park.clone(), progress.clone(), activity.clone()).await, "nothing answered yet");
        // A head read: in flight until its response ends.
        client.write_all(b"GET /").await.unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(io.read(&mut buf).await.unwrap(), 5);
        assert!(!quiet(park.clone(), progress.clone(), activity.clone()).await, "a request in flight");
        // Its response ended, but the client does not read it: a write waits.
        drop(MarkOnDrop::new(crate::http::body::full("ok"), progress.clone()));
        let wrote = tokio::time::timeout(Duration::from_millis(1), io.write_all(&[0u8; 64])).await;
        assert!(wrote.is_err());
        assert!(!quiet(park.clone(), progress.clone(), activity.clone()).await, "a write is held up");
        // The client reads it all: quiet once PARK_AFTER has passed without a byte.
        let mut sink = [0u8; 64];
        client.read_exact(&mut sink[..8]).await.unwrap();
        io.flush().await.unwrap();
        activity.touch();
        let started = tokio::time::Instant::now();
        assert!(quiet(park, progress, activity).await);
        assert!(started.elapsed() >= PARK_AFTER);
    }
}
