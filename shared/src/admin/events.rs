//! The last state changes of a process, for `/status` and the status page: a small ring a
//! binary keeps in a `static` (each binary has its own event type, with the fields its
//! status schema and log lines name: pool/path, site/upstream).

use std::collections::VecDeque;
use std::sync::Mutex;

/// How many state changes a ring keeps.
pub const KEPT: usize = 50;

/// The last [`KEPT`] events.
pub struct Recent<T> {
    events: Mutex<VecDeque<T>>,
}

impl<T: Clone> Recent<T> {
    pub const fn new() -> Self {
        Self { events: Mutex::new(VecDeque::new()) }
    }

    /// Keeps `event`, dropping the oldest beyond [`KEPT`].
    pub fn push(&self, event: T) {
        let mut events = self.events.lock().unwrap_or_else(|e| e.into_inner());
        if events.len() == KEPT {
            events.pop_front();
        }
        events.push_back(event);
    }

    /// The kept events, newest first.
    pub fn newest_first(&self) -> Vec<T> {
        self.events.lock().unwrap_or_else(|e| e.into_inner()).iter().rev().cloned().collect()
    }
}

impl<T: Clone> Default for Recent<T> {
    fn default() -> Self {
        Self::new()
    }
}
