//! `408 Request Timeout` for HTTP/1 clients that start a request head and do not finish it
//! within `http.header_read_timeout`. hyper's own head timer (kept: it is what fires) ends
//! the connection with an error and writes nothing, and it owns the socket; so the socket is
//! shared with it ([`Reclaim`]) and the answer is written here once hyper has given up.
//!
//! Only a head that was *started* is answered: bytes arrived since the last response ended
//! (each response body marks the read count when it is dropped, [`MarkOnDrop`]). An idle
//! keep-alive connection, or one that never sent a byte (a browser's preconnect), is closed
//! silently, as before: a 408 there would be read by a client that asked nothing.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::park::Busy;

/// What a timed-out client gets: the status, a reason, and the close it announces.
pub const RESPONSE: &[u8] = b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n\
content-length: 40\r\nconnection: close\r\n\r\nthe request head did not arrive in time\n";

/// Bound on writing the 408: a client too slow to send a head may be too slow to read too.
const WRITE_BOUND: Duration = Duration::from_secs(1);

/// Read counts of one connection: bytes read so far, and the count when the last response
/// ended. A difference means a new request head has started.
#[derive(Debug, Default)]
pub struct HeadProgress {
    read: AtomicU64,
    mark: AtomicU64,
}

impl HeadProgress {
    /// Whether bytes of a new request arrived since the last response ended.
    pub fn head_started(&self) -> bool {
        self.read.load(Ordering::Relaxed) > self.mark.load(Ordering::Relaxed)
    }

    /// Whether a response has ended since this count began (the server's start).
    pub fn answered(&self) -> bool {
        self.mark.load(Ordering::Relaxed) > 0
    }

    fn mark_response_end(&self) {
        self.mark.store(self.read.load(Ordering::Relaxed), Ordering::Relaxed);
    }
}

/// A connection's I/O shared between hyper and this module. Each poll takes the lock for
/// its own duration only; nobody else polls while hyper runs, so it is never contended.
pub struct Reclaim<IO> {
    io: Arc<Mutex<IO>>,
    progress: Arc<HeadProgress>,
}

impl<IO> Reclaim<IO> {
    pub fn new(io: IO) -> Self {
        Self { io: Arc::new(Mutex::new(io)), progress: Arc::default() }
    }

    /// A second handle on the same I/O (for writing the 408 after hyper has stopped).
    pub fn handle(&self) -> Self {
        Self { io: self.io.clone(), progress: self.progress.clone() }
    }

    pub fn progress(&self) -> Arc<HeadProgress> {
        self.progress.clone()
    }

    /// The I/O back, once this is the last handle (hyper's connection has been dropped).
    pub fn into_inner(self) -> Option<IO> {
        Arc::into_inner(self.io).and_then(|io| io.into_inner().ok())
    }

    fn with<R>(&self, f: impl FnOnce(Pin<&mut IO>) -> Poll<io::Result<R>>) -> Poll<io::Result<R>>
    where
        IO: Unpin,
    {
        match self.io.lock() {
            Ok(mut guard) => f(Pin::new(&mut *guard)),
            // A panic while polling the I/O poisons it: treat the connection as broken.
            Err(_) => Poll::Ready(Err(io::Error::other("connection I/O poisoned"))),
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Reclaim<IO> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let res = self.with(|io| io.poll_read(cx, buf));
        let n = buf.filled().len() - before;
        self.progress.read.fetch_add(n as u64, Ordering::Relaxed);
        res
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Reclaim<IO> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.with(|io| io.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.with(|io| io.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        self.io.lock().map(|io| io.is_write_vectored()).unwrap_or(false)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.with(|io| io.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.with(|io| io.poll_shutdown(cx))
    }
}

/// Write the 408 and close (TLS: with close_notify), bounded in time. Errors are the
/// client's problem: it is being closed either way.
pub async fn answer<IO: AsyncWrite + Unpin>(mut io: Reclaim<IO>) {
    let _ = tokio::time::timeout(WRITE_BOUND, async {
        io.write_all(RESPONSE).await?;
        io.shutdown().await
    })
    .await;
}

/// A response body that marks the end of its response when dropped (hyper drops it once it
/// is written, or abandoned), so the next bytes read belong to a new head.
pub struct MarkOnDrop<B> {
    inner: B,
    progress: Arc<HeadProgress>,
    /// The response holds its server until it is written (`park`).
    _busy: Busy,
}

impl<B> MarkOnDrop<B> {
    pub fn new(inner: B, progress: Arc<HeadProgress>, busy: Busy) -> Self {
        Self { inner, progress, _busy: busy }
    }
}

impl<B> Drop for MarkOnDrop<B> {
    fn drop(&mut self) {
        self.progress.mark_response_end();
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for MarkOnDrop<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[test]
    fn the_response_is_well_formed() {
        let text = std::str::from_utf8(RESPONSE).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 408 Request Timeout\r\n"));
        assert!(head.contains(&format!("content-length: {}\r\n", body.len())), "{head}");
    }

    #[tokio::test]
    async fn a_head_counts_as_started_until_a_response_ends() {
        let (a, mut b) = tokio::io::duplex(1024);
        let mut io = Reclaim::new(a);
        let progress = io.progress();
        assert!(!progress.head_started());
        b.write_all(b"GET / HT").await.unwrap();
        let mut buf = [0u8; 16];
        let n = io.read(&mut buf).await.unwrap();
        assert_eq!(n, 8);
        assert!(progress.head_started());
        let park = std::sync::Arc::new(crate::http::park::Park::default());
        drop(MarkOnDrop::new(crate::http::body::full("ok"), progress.clone(), park.busy()));
        assert!(!progress.head_started(), "idle again after the response");
        // The 408 goes out on the same I/O through a second handle.
        answer(io.handle()).await;
        let mut out = Vec::new();
        b.read_to_end(&mut out).await.unwrap();
        assert_eq!(out, RESPONSE);
    }
}
