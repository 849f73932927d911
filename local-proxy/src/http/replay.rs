//! A request body that can be handed to a second upstream when the first never read it.
//!
//! The client's body waits in a shared slot; each attempt gets a [`Deferred`] that takes it
//! out only when hyper first polls for data, which happens after the connection is up and
//! the head is written. A failed connect leaves the body in the slot for the next upstream
//! (so even a POST moves on after a refused connect); once an attempt took it, it is gone
//! and only a request without a body may be sent again.

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

/// Where the client's body waits until an attempt reads it.
#[derive(Debug, Clone)]
pub struct Slot(Arc<Mutex<Option<Incoming>>>);

impl Slot {
    pub fn new(body: Incoming) -> Self {
        Self(Arc::new(Mutex::new(Some(body))))
    }

    fn lock(&self) -> MutexGuard<'_, Option<Incoming>> {
        // Only ever holds the body: a panic elsewhere cannot leave it half-changed.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether no attempt has read the body yet.
    pub fn intact(&self) -> bool {
        self.lock().is_some()
    }

    /// The body for one attempt.
    pub fn attempt(&self) -> Deferred {
        Deferred { slot: self.clone(), body: None }
    }
}

/// One attempt's view of the body: empty if an earlier attempt consumed it.
#[derive(Debug)]
pub struct Deferred {
    slot: Slot,
    body: Option<Incoming>,
}

impl Body for Deferred {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        if this.body.is_none() {
            this.body = this.slot.lock().take();
        }
        match this.body.as_mut() {
            Some(b) => Pin::new(b).poll_frame(cx),
            None => Poll::Ready(None),
        }
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
