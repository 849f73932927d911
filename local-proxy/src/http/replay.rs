//! A request body that can be handed to a second upstream when the first never read it, or
//! when it is small and the method idempotent, read whole first so any attempt can resend it.
//!
//! The client's body waits in a shared slot; each attempt gets a [`Deferred`] that takes it
//! out only when hyper first polls for data, which happens after the connection is up and
//! the head is written. A failed connect leaves the body in the slot for the next upstream
//! (so even a POST moves on after a refused connect); once an attempt took it, it is gone
//! and only a request without a body may be sent again.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::Method;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use shared::idle::Activity;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::body::ClientBody;
use super::upstream::RequestBody;

/// Largest body read whole before the first attempt, so that an idempotent request (PUT,
/// DELETE, or a GET with a body) can be sent again after a failure (bytes, from Content-Length).
pub const BUFFER_MAX: u64 = 64 * 1024;

/// Bytes of bodies read whole that the process holds at once. Read whole, a body no longer
/// holds back its client (h2 flow control is given back as it is read): without a bound, a
/// client could have 128 streams per connection each hold [`BUFFER_MAX`] for the whole
/// `upstream_timeout`, on every connection it may open. Past it, small bodies stream as large
/// ones do (sent once; a failure after the send is not retried). 64 MiB is 1,024 bodies of the
/// largest size at once.
pub const WHOLE_BUDGET: usize = 64 << 20;

/// What [`WHOLE_BUDGET`] has left (a permit per byte).
static WHOLE: std::sync::LazyLock<Arc<Semaphore>> = std::sync::LazyLock::new(|| Arc::new(Semaphore::new(WHOLE_BUDGET)));

/// The client's body for every attempt of one request.
#[derive(Debug)]
pub enum Replay {
    /// Streamed through by the first attempt that reads it.
    Once(Slot),
    /// Read whole (no body, or a small one of an idempotent request): every attempt sends it.
    /// `_held`: its share of [`WHOLE_BUDGET`], given back when the request is done.
    Whole { bytes: Bytes, _held: Option<OwnedSemaphorePermit> },
}

/// Why a body to be read whole was not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotRead {
    /// No piece of it came for the whole wait (408).
    Stalled,
    /// It ended in an error: malformed, longer than announced, or the client gone (400).
    Broke,
}

impl Replay {
    /// Bodiless requests and small bodies of idempotent methods (RFC 9110: GET, HEAD, OPTIONS,
    /// PUT, DELETE, TRACE) are read whole, the wait of `timeout` starting again with each
    /// piece (as a streamed body's: a slow upload goes through, a stalled one does not).
    /// Anything else streams.
    pub async fn new(body: ClientBody, method: &Method, timeout: std::time::Duration) -> Result<Self, NotRead> {
        if body.is_end_stream() {
            return Ok(Replay::Whole { bytes: Bytes::new(), _held: None });
        }
        let small = body.size_hint().upper().filter(|n| *n <= BUFFER_MAX && method.is_idempotent());
        match small.and_then(|n| claim(&WHOLE, n)) {
            Some(held) => read_whole(body, timeout).await.map(|bytes| Replay::Whole { bytes, _held: Some(held) }),
            None => Ok(Replay::Once(Slot::new(body))),
        }
    }

    /// The body of the next attempt.
    pub fn attempt(&self) -> RequestBody {
        match self {
            Replay::Once(slot) => slot.attempt().boxed(),
            Replay::Whole { bytes, .. } => {
                http_body_util::Full::new(bytes.clone()).map_err(|never| match never {}).boxed()
            }
        }
    }

    /// Whether another attempt would send the whole body: it was read whole, or no attempt
    /// has read it yet.
    pub fn intact(&self) -> bool {
        match self {
            Replay::Once(slot) => slot.intact(),
            Replay::Whole { .. } => true,
        }
    }

    /// The body streamed through (not read whole first): its sending is watched.
    pub fn streaming(&self) -> Option<&Slot> {
        match self {
            Replay::Once(slot) => Some(slot),
            Replay::Whole { .. } => None,
        }
    }

    /// Whether the body may be sent again after an attempt that did send it.
    pub fn resendable(&self) -> bool {
        matches!(self, Replay::Whole { .. })
    }
}

/// `n` bytes of `budget` (a body of that announced size read whole), if it has them.
fn claim(budget: &Arc<Semaphore>, n: u64) -> Option<OwnedSemaphorePermit> {
    budget.clone().try_acquire_many_owned(u32::try_from(n).ok()?).ok()
}

/// `body`'s data (trailers dropped: a body read whole is sent with a length), at most
/// [`BUFFER_MAX`] bytes whatever it announced.
async fn read_whole<B: http_body::Body<Data = Bytes> + Unpin>(
    mut body: B,
    timeout: std::time::Duration,
) -> Result<Bytes, NotRead> {
    let mut whole = bytes::BytesMut::new();
    loop {
        match tokio::time::timeout(timeout, body.frame()).await {
            Err(_) => return Err(NotRead::Stalled),
            Ok(None) => return Ok(whole.freeze()),
            Ok(Some(Err(_))) => return Err(NotRead::Broke),
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    if whole.len() + data.len() > BUFFER_MAX as usize {
                        return Err(NotRead::Broke);
                    }
                    whole.extend_from_slice(&data);
                }
            }
        }
    }
}

/// Where the client's body waits until an attempt reads it, and how its sending goes.
#[derive(Debug, Clone)]
pub struct Slot(Arc<Shared>);

#[derive(Debug)]
struct Shared {
    body: Mutex<Option<ClientBody>>,
    /// When the attempt last passed on a piece of the body (or its end).
    moved: Activity,
    /// The attempt's last poll of the body found the client's next piece not yet arrived.
    waiting: AtomicBool,
    /// The client's body ended in an error: malformed chunks, or the client gone mid-way.
    broke: AtomicBool,
}

impl Slot {
    pub fn new(body: ClientBody) -> Self {
        Self(Arc::new(Shared {
            body: Mutex::new(Some(body)),
            moved: Activity::new(),
            waiting: AtomicBool::new(false),
            broke: AtomicBool::new(false),
        }))
    }

    fn lock(&self) -> MutexGuard<'_, Option<ClientBody>> {
        // Only ever holds the body: a panic elsewhere cannot leave it half-changed.
        self.0.body.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether no attempt has read the body yet.
    pub fn intact(&self) -> bool {
        self.lock().is_some()
    }

    /// The body for one attempt.
    pub fn attempt(&self) -> Deferred {
        Deferred { slot: self.clone(), body: None }
    }

    /// When a piece of the body (or its end) last went to the upstream; when the slot was
    /// made if none has.
    pub fn last_moved(&self) -> Instant {
        self.0.moved.last()
    }

    /// Whether the body is held up by the client (its next piece has not arrived) rather than
    /// by the upstream (not taking it).
    pub fn waiting_for_client(&self) -> bool {
        self.0.waiting.load(Ordering::Relaxed)
    }

    /// Whether the client's body broke off: the attempt failed for the client, not for its
    /// upstream.
    pub fn client_broke(&self) -> bool {
        self.0.broke.load(Ordering::Relaxed)
    }
}

/// One attempt's view of the body: empty if an earlier attempt consumed it.
#[derive(Debug)]
pub struct Deferred {
    slot: Slot,
    body: Option<ClientBody>,
}

impl Body for Deferred {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        if this.body.is_none() {
            this.body = this.slot.lock().take();
        }
        let Some(body) = this.body.as_mut() else { return Poll::Ready(None) };
        let polled = Pin::new(body).poll_frame(cx);
        let shared = &this.slot.0;
        shared.waiting.store(polled.is_pending(), Ordering::Relaxed);
        if let Poll::Ready(frame) = &polled {
            shared.moved.touch();
            if matches!(frame, Some(Err(_))) {
                shared.broke.store(true, Ordering::Relaxed);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.body {
            Some(b) => b.is_end_stream(),
            None => self.slot.lock().as_ref().is_none_or(|b| b.is_end_stream()),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.body {
            Some(b) => b.size_hint(),
            None => self.slot.lock().as_ref().map_or_else(|| SizeHint::with_exact(0), |b| b.size_hint()),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::time::Duration;

    type Piece = Result<Frame<Bytes>, std::io::Error>;

    /// A body of `pieces`, the first at once and each next `gap` later; then the end, or
    /// nothing ever again with `stall`.
    fn paced(pieces: Vec<Piece>, gap: Duration, stall: bool) -> impl Body<Data = Bytes> + Unpin {
        let mut pieces = pieces.into_iter();
        let stream = futures_util::stream::unfold(true, move |first| {
            let next = pieces.next();
            async move {
                if !first {
                    tokio::time::sleep(gap).await;
                }
                match next {
                    Some(piece) => Some((piece, false)),
                    None if stall => std::future::pending().await,
                    None => None,
                }
            }
        });
        http_body_util::StreamBody::new(Box::pin(stream))
    }

    fn data(n: usize) -> Piece {
        Ok(Frame::data(Bytes::from(vec![b'x'; n])))
    }

    /// The wait starts again with each piece: five pieces 400 ms apart arrive whole under a
    /// 500 ms timeout; a body that stops is `Stalled` one timeout after its last piece; one
    /// that breaks, or brings more than `BUFFER_MAX`, is `Broke`.
    #[tokio::test(start_paused = true)]
    async fn a_body_read_whole_waits_per_piece_and_tells_a_stall_from_a_break() {
        let timeout = Duration::from_millis(500);
        let gap = Duration::from_millis(400);
        let slow = paced((0..5).map(|_| data(3)).collect(), gap, false);
        assert_eq!(read_whole(slow, timeout).await.unwrap().len(), 15);

        let started = Instant::now();
        let stalled = paced(vec![data(3)], gap, true);
        assert_eq!(read_whole(stalled, timeout).await, Err(NotRead::Stalled));
        assert_eq!(started.elapsed(), timeout, "one timeout after the last piece");

        let broken = paced(vec![data(3), Err(std::io::Error::other("reset"))], gap, false);
        assert_eq!(read_whole(broken, timeout).await, Err(NotRead::Broke));
        let big = paced(vec![data(BUFFER_MAX as usize), data(1)], gap, false);
        assert_eq!(read_whole(big, timeout).await, Err(NotRead::Broke));
    }

    /// Bodies read whole share one budget: past it, a claim fails (the body then streams),
    /// and what a finished request held is free again.
    #[test]
    fn whole_bodies_share_one_budget() {
        let budget = Arc::new(Semaphore::new(100));
        let first = claim(&budget, 64).unwrap();
        assert!(claim(&budget, 64).is_none(), "past the budget");
        assert!(claim(&budget, 36).is_some());
        drop(first);
        assert!(claim(&budget, 64).is_some(), "freed when the request is done");
        assert!(claim(&budget, u64::MAX).is_none());
    }
}
