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
use tokio::time::Instant;

use super::body::ClientBody;
use super::upstream::RequestBody;

/// Largest body read whole before the first attempt, so that an idempotent request (PUT,
/// DELETE, or a GET with a body) can be sent again after a failure (bytes, from Content-Length).
pub const BUFFER_MAX: u64 = 64 * 1024;

/// The client's body for every attempt of one request.
#[derive(Debug)]
pub enum Replay {
    /// Streamed through by the first attempt that reads it.
    Once(Slot),
    /// Read whole (no body, or a small one of an idempotent request): every attempt sends it.
    Whole(Bytes),
}

impl Replay {
    /// Bodiless requests and small bodies of idempotent methods (RFC 9110: GET, HEAD, OPTIONS,
    /// PUT, DELETE, TRACE) are read whole within `timeout`; `None` if the client failed to send
    /// it. Anything else streams.
    pub async fn new(body: ClientBody, method: &Method, timeout: std::time::Duration) -> Option<Self> {
        if body.is_end_stream() {
            return Some(Replay::Whole(Bytes::new()));
        }
        let idempotent = method.is_idempotent();
        if idempotent && body.size_hint().upper().is_some_and(|n| n <= BUFFER_MAX) {
            let collected = tokio::time::timeout(timeout, body.collect()).await.ok()?.ok()?;
            return Some(Replay::Whole(collected.to_bytes()));
        }
        Some(Replay::Once(Slot::new(body)))
    }

    /// The body of the next attempt.
    pub fn attempt(&self) -> RequestBody {
        match self {
            Replay::Once(slot) => slot.attempt().boxed(),
            Replay::Whole(bytes) => http_body_util::Full::new(bytes.clone()).map_err(|never| match never {}).boxed(),
        }
    }

    /// Whether another attempt would send the whole body: it was read whole, or no attempt
    /// has read it yet.
    pub fn intact(&self) -> bool {
        match self {
            Replay::Once(slot) => slot.intact(),
            Replay::Whole(_) => true,
        }
    }

    /// The body streamed through (not read whole first): its sending is watched.
    pub fn streaming(&self) -> Option<&Slot> {
        match self {
            Replay::Once(slot) => Some(slot),
            Replay::Whole(_) => None,
        }
    }

    /// Whether the body may be sent again after an attempt that did send it.
    pub fn resendable(&self) -> bool {
        matches!(self, Replay::Whole(_))
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
