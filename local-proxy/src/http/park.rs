//! An HTTP/1 keep-alive connection that goes quiet between requests gives hyper's buffers
//! back. hyper keeps the 8 KiB read and 8 KiB write buffers of a connection until it closes,
//! so every kept-alive connection a browser leaves open would hold them for the whole
//! keep-alive time; nginx and HAProxy release theirs as soon as a connection is idle.
//!
//! hyper has no setting for it, but its server can be taken apart (`into_parts`): the socket
//! and the bytes read and not parsed yet come back. That is only safe while hyper has nothing
//! in hand, so a connection is *parked* once it has been quiet for [`PARK_AFTER`] with every
//! response written and every request body handed over to its end (each holds a [`Busy`]
//! until then, so a pipelined request waiting for its upstream keeps hyper; a body dropped
//! before its end keeps it for good), and no write waiting for the client. The caller then
//! waits for the client's next bytes as for a new connection (`first_bytes`) and builds a new
//! server for them, handing it first any bytes the old one had read ahead ([`Parkable`]).

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

use super::head_timeout::HeadProgress;
use crate::idle::Activity;

/// How long a connection stays quiet after a response before it is parked. Back-to-back
/// requests (a page's assets, an API client under load) come well within it and keep their
/// server; a connection left open after them is parked almost at once.
pub const PARK_AFTER: Duration = Duration::from_millis(50);

/// What the serving loop, the I/O wrapper and the requests share about one server's work.
#[derive(Debug, Default)]
pub struct Park {
    /// Responses not written yet and request bodies not read to their end.
    busy: AtomicUsize,
    /// Signalled when `busy` falls to zero.
    idle: Notify,
    /// The last write or flush could not finish (the client is not reading).
    write_blocked: AtomicBool,
    /// Never park this server: a request body was dropped before its end (hyper will drain
    /// or close it, on its own time), or hyper began closing.
    never: AtomicBool,
}

impl Park {
    /// Hold the server until the returned guard drops.
    pub fn busy(self: &Arc<Self>) -> Busy {
        self.busy.fetch_add(1, Ordering::AcqRel);
        Busy(self.clone())
    }

    /// A response not written yet, or a request body not read to its end.
    pub fn in_flight(&self) -> bool {
        self.busy.load(Ordering::Acquire) > 0
    }
}

/// Work hyper still has in hand: a response or a request body (see [`Park`]).
#[derive(Debug)]
pub struct Busy(Arc<Park>);

impl Drop for Busy {
    fn drop(&mut self) {
        if self.0.busy.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// A request body's [`Busy`], carried to the body in the request's extensions (which want
/// `Clone`). The body releases it once hyper has handed over its end (hyper is then between
/// messages); a body dropped before its end calls [`BodyBusy::abandoned`] instead, since
/// hyper only learns of it at its next poll and then drains or closes the rest.
#[derive(Debug, Clone)]
pub struct BodyBusy(Arc<Busy>);

impl BodyBusy {
    pub fn new(busy: Busy) -> Self {
        Self(Arc::new(busy))
    }

    /// The body was dropped before its end: this server is never parked.
    pub fn abandoned(&self) {
        self.0 .0.never.store(true, Ordering::Relaxed);
    }
}

/// Resolves once the connection can be parked: a response ended, nothing in hand, no byte
/// moved for [`PARK_AFTER`], nothing of a new head read, no write waiting. (Before its first
/// answer a server is never parked, so a client cannot stretch the time its first head is
/// given by sending it in pieces.)
pub async fn quiet_between_requests(activity: &Activity, progress: &HeadProgress, park: &Park) {
    loop {
        if park.never.load(Ordering::Relaxed) {
            std::future::pending::<()>().await;
        }
        let idle = park.idle.notified();
        tokio::pin!(idle);
        idle.as_mut().enable();
        if park.busy.load(Ordering::Acquire) > 0 {
            // A request in flight (an upstream, a long poll) wakes nobody until it ends.
            idle.await;
            continue;
        }
        activity.idle_for(PARK_AFTER).await;
        if park.busy.load(Ordering::Acquire) == 0
            && progress.answered()
            && !progress.head_started()
            && !park.write_blocked.load(Ordering::Relaxed)
            && !park.never.load(Ordering::Relaxed)
        {
            return;
        }
        // A head coming in slowly, or a client not reading its answer.
        tokio::time::sleep(PARK_AFTER).await;
    }
}

/// The I/O hyper serves a parkable connection through. It first gives back the bytes read
/// ahead by the server taken apart before (the start of a pipelined request), and notes
/// whether the last write had to wait (hyper's buffer then still holds bytes, which taking
/// it apart would lose).
pub struct Parkable<IO> {
    inner: IO,
    ahead: Bytes,
    park: Arc<Park>,
}

impl<IO> Parkable<IO> {
    pub fn new(inner: IO, ahead: Bytes) -> (Self, Arc<Park>) {
        let park = Arc::new(Park::default());
        (Self { inner, ahead, park: park.clone() }, park)
    }

    /// The I/O, and whatever of the bytes read ahead was not read again.
    pub fn into_parts(self) -> (IO, Bytes) {
        (self.inner, self.ahead)
    }

    fn note<T>(&self, res: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        self.park.write_blocked.store(res.is_pending(), Ordering::Relaxed);
        res
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Parkable<IO> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if self.ahead.is_empty() {
            return Pin::new(&mut self.inner).poll_read(cx, buf);
        }
        let n = self.ahead.len().min(buf.remaining());
        buf.put_slice(&self.ahead.split_to(n));
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Parkable<IO> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.note(res)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.note(res)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let res = Pin::new(&mut self.inner).poll_flush(cx);
        self.note(res)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // hyper is closing; a TLS close_notify may still wait to be written.
        self.park.never.store(true, Ordering::Relaxed);
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
    async fn bytes_read_ahead_come_first_then_the_socket() {
        let (a, mut client) = tokio::io::duplex(64);
        let (mut io, _) = Parkable::new(a, Bytes::from_static(b"GET /2 HT"));
        client.write_all(b"TP/1.1\r\n\r\n").await.unwrap();
        let mut got = [0u8; 5];
        io.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"GET /");
        let mut rest = vec![0u8; 4 + 10];
        io.read_exact(&mut rest).await.unwrap();
        assert_eq!(rest, b"2 HTTP/1.1\r\n\r\n");
        let (_, ahead) = io.into_parts();
        assert!(ahead.is_empty());
    }

    async fn quiet(activity: &Activity, progress: &HeadProgress, park: &Park) -> bool {
        tokio::time::timeout(PARK_AFTER * 10, quiet_between_requests(activity, progress, park)).await.is_ok()
    }

    #[tokio::test(start_paused = true)]
    async fn quiet_only_once_answered_with_nothing_in_hand() {
        let activity = Activity::new();
        let (server, mut client) = tokio::io::duplex(8);
        let (io, park) = Parkable::new(server, Bytes::new());
        let mut io = Reclaim::new(io);
        let progress = io.progress();
        assert!(!quiet(&activity, &progress, &park).await, "nothing answered yet");
        // A head read, its response and its body in hand.
        client.write_all(b"POST /").await.unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(io.read(&mut buf).await.unwrap(), 6);
        let response = park.busy();
        let body = BodyBusy::new(park.busy());
        assert!(!quiet(&activity, &progress, &park).await, "a request in flight");
        // The response ends (a body drop marks it) but the request body is still being read.
        drop(MarkOnDrop::new(crate::http::body::full("ok"), progress.clone(), response));
        assert!(!quiet(&activity, &progress, &park).await, "a request body not read to its end");
        drop(body);
        // The client does not read the answer: a write waits.
        let wrote = tokio::time::timeout(Duration::from_millis(1), io.write_all(&[0u8; 64])).await;
        assert!(wrote.is_err());
        assert!(!quiet(&activity, &progress, &park).await, "a write is held up");
        // The client reads it: quiet once PARK_AFTER has passed without a byte.
        let mut sink = [0u8; 8];
        client.read_exact(&mut sink).await.unwrap();
        io.flush().await.unwrap();
        activity.touch();
        let started = tokio::time::Instant::now();
        assert!(quiet(&activity, &progress, &park).await);
        assert!(started.elapsed() >= PARK_AFTER);
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_dropped_before_its_end_or_a_close_keeps_the_server() {
        let activity = Activity::new();
        let (server, mut client) = tokio::io::duplex(64);
        let (io, park) = Parkable::new(server, Bytes::new());
        let mut io = Reclaim::new(io);
        let progress = io.progress();
        client.write_all(b"POST /").await.unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(io.read(&mut buf).await.unwrap(), 6);
        let body = BodyBusy::new(park.busy());
        drop(MarkOnDrop::new(crate::http::body::full("no"), progress.clone(), park.busy()));
        // hyper drains or closes the rest on its own time: parking now could read it as a head.
        body.abandoned();
        drop(body);
        assert!(!quiet(&activity, &progress, &park).await);
        // hyper closing (a TLS close_notify may still be queued) keeps it too.
        let (server, _client) = tokio::io::duplex(64);
        let (mut io, park) = Parkable::new(server, Bytes::new());
        io.shutdown().await.unwrap();
        assert!(!quiet(&activity, &progress, &park).await);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_ending_wakes_the_wait() {
        let activity = Activity::new();
        let (server, mut client) = tokio::io::duplex(64);
        let (io, park) = Parkable::new(server, Bytes::new());
        let mut io = Reclaim::new(io);
        let progress = io.progress();
        client.write_all(b"GET /").await.unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(io.read(&mut buf).await.unwrap(), 5);
        let response = park.busy();
        let waiting = {
            let park = park.clone();
            let progress = progress.clone();
            let activity = activity.clone();
            tokio::spawn(async move { quiet_between_requests(&activity, &progress, &park).await })
        };
        // A long request: the wait does not end while it runs.
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert!(!waiting.is_finished());
        activity.touch();
        drop(MarkOnDrop::new(crate::http::body::full("ok"), progress.clone(), response));
        tokio::time::timeout(PARK_AFTER * 2, waiting).await.unwrap().unwrap();
    }
}
