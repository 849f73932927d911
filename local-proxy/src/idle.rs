//! An I/O wrapper that stamps the time of the last byte moved on a shared
//! [`Activity`](shared::idle::Activity) clock (whose watchdog ends idle relays).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use shared::proxy_protocol::{ClientHeader, SignatureWatch};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pub use shared::idle::Activity;

/// An `AsyncRead + AsyncWrite` that touches an [`Activity`] whenever bytes move, and
/// optionally counts the bytes read (so long-lived relays show traffic while they run).
#[derive(Debug)]
pub struct Tracked<S> {
    inner: S,
    activity: Activity,
    read_bytes: Option<metrics::Counter>,
    /// Bytes read from `inner` so far (a stream connection's access log line).
    read_total: u64,
    /// The stream's start still to be screened for a PROXY signature.
    watch: Option<SignatureWatch>,
}

impl<S> Tracked<S> {
    pub fn new(inner: S, activity: Activity) -> Self {
        Self { inner, activity, read_bytes: None, read_total: 0, watch: None }
    }

    pub fn into_inner(self) -> S {
        self.inner
    }

    /// Bytes read from `inner` so far.
    pub fn bytes_read(&self) -> u64 {
        self.read_total
    }

    /// Count every byte read from `inner` on `counter`.
    pub fn count_reads(mut self, counter: metrics::Counter) -> Self {
        self.read_bytes = Some(counter);
        self
    }

    /// Fail the read that would complete a PROXY signature at the stream's start (with
    /// [`ClientHeader::error`], the bytes of that read not handed on): for a client relayed
    /// to a server that gets no header from us (see `SignatureWatch`).
    pub fn refuse_proxy_header(mut self) -> Self {
        self.watch = Some(SignatureWatch::default());
        self
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if let Some(w) = self.watch.as_mut().filter(|_| n > 0 && matches!(res, Poll::Ready(Ok(())))) {
            if w.completes(&buf.filled()[before..]) {
                buf.set_filled(before);
                return Poll::Ready(Err(ClientHeader::error()));
            }
            if w.decided() {
                self.watch = None;
            }
        }
        if matches!(res, Poll::Ready(Ok(()))) && n > 0 {
            self.activity.touch();
            self.read_total += n as u64;
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
