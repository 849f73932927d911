//! The body types of the server: response bodies (upstream bodies streamed through, or small
//! locally generated pages) and the client's request body, counted for the access log.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;

use super::park::BodyBusy;

/// Boxed error of any body.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Every response body.
pub type Body = BoxBody<Bytes, BoxError>;

/// A complete body from bytes.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed()
}

/// Stream any body through, boxing its error.
pub fn stream<B>(body: B) -> Body
where
    B: http_body::Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed()
}

/// The client's request body as hyper hands it over, without its trailers, adding the data bytes of each frame
/// read from it to a counter the access log line reads at the end (`bytes_received`): what
/// was actually read, whoever reads it (an upstream attempt streaming it, or `replay`
/// reading it whole). No counter (the request is not logged, or it has no body): nothing
/// is counted and nothing allocated.
#[derive(Debug)]
pub struct ClientBody {
    inner: Incoming,
    read: Option<Arc<AtomicU64>>,
    /// An HTTP/1 body holds its server until hyper has handed over its end (`park`).
    busy: Option<BodyBusy>,
}

impl ClientBody {
    /// Wrap `inner`, counting into `read` when given.
    pub fn new(inner: Incoming, read: Option<Arc<AtomicU64>>, busy: Option<BodyBusy>) -> Self {
        Self { inner, read, busy }
    }
}

impl Drop for ClientBody {
    fn drop(&mut self) {
        if let Some(busy) = &self.busy {
            busy.abandoned();
        }
    }
}

impl http_body::Body for ClientBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let mut polled = Pin::new(&mut this.inner).poll_frame(cx);
        // A request's trailers end it here, unsent, as nginx does: they would reach the
        // upstream past every header rule (forwarding claims, the auth service's identity
        // headers), and Apache's MergeTrailers and Tomcat's allowedTrailerHeaders read them as
        // headers. Trailers are the last frame: the body ends with them.
        if matches!(&polled, Poll::Ready(Some(Ok(frame))) if frame.is_trailers()) {
            polled = Poll::Ready(None);
        }
        if let (Poll::Ready(Some(Ok(frame))), Some(read)) = (&polled, &this.read) {
            if let Some(data) = frame.data_ref() {
                read.fetch_add(data.len() as u64, Ordering::Relaxed);
            }
        }
        if this.busy.is_some() && (matches!(polled, Poll::Ready(None)) || this.inner.is_end_stream()) {
            this.busy = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
