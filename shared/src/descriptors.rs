//! One pool of descriptors that TCP connections and UDP flows both draw from, with a floor
//! kept for flows.
//!
//! Splitting the open-files limit into fixed shares up front wastes whatever share is idle: a
//! node whose UDP services sit unused would refuse TCP clients with thousands of descriptors
//! free. Here either side takes what is free, except that streams never take the part of the
//! flows' floor flows are not using: a TCP flood leaves UDP its floor. The other way round the
//! flows' own cap (`udp_flows::FlowBudget`, at most half the pool) leaves TCP the rest.
//!
//! The stream side holds client and upstream sockets (two a connection), the third socket of
//! a connect raced on a second path while it lasts, and splice pipes (two descriptors each);
//! the flow side holds one upstream socket a flow. Both counters live in one atomic word, so
//! a take is one compare-and-swap and never sees the two sides out of step.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Which side of the pool a descriptor is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// TCP: connections' sockets, raced connects, splice pipes.
    Streams,
    /// UDP: flows' upstream sockets.
    Flows,
}

/// The pool. Limits change on reload; descriptors held stay counted and are given back as
/// they close, so a lower limit admits nothing new until the sides are under it.
#[derive(Debug)]
pub struct Descriptors {
    /// Held: streams in the low 32 bits, flows in the high 32.
    used: AtomicU64,
    /// The pool's size in the low 32 bits, the flows' floor in the high 32.
    limits: AtomicU64,
}

fn split(word: u64) -> (u32, u32) {
    (word as u32, (word >> 32) as u32)
}

fn join(low: u32, high: u32) -> u64 {
    u64::from(low) | (u64::from(high) << 32)
}

impl Descriptors {
    /// A pool of `size` descriptors of which `flow_floor` are kept for flows while streams
    /// would otherwise take them.
    pub fn new(size: u32, flow_floor: u32) -> Arc<Self> {
        Arc::new(Self { used: AtomicU64::new(0), limits: AtomicU64::new(join(size, flow_floor.min(size))) })
    }

    /// New limits for what is taken from now on.
    pub fn set_limits(&self, size: u32, flow_floor: u32) {
        self.limits.store(join(size, flow_floor.min(size)), Ordering::Relaxed);
    }

    /// The pool's size and the flows' floor.
    pub fn limits(&self) -> (u32, u32) {
        split(self.limits.load(Ordering::Relaxed))
    }

    /// Descriptors held by streams and by flows.
    pub fn used(&self) -> (u32, u32) {
        split(self.used.load(Ordering::Relaxed))
    }

    /// `n` descriptors for `side`, held until the returned value is dropped; `None` when the
    /// pool cannot give them without eating into the other side's floor.
    pub fn take(self: &Arc<Self>, side: Side, n: u32) -> Option<Held> {
        let (size, flow_floor) = self.limits();
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |word| {
                let (streams, flows) = split(word);
                match side {
                    // Flows' unused floor counts as taken.
                    Side::Streams => {
                        let streams = streams.checked_add(n)?;
                        (u64::from(streams) + u64::from(flows.max(flow_floor)) <= u64::from(size))
                            .then(|| join(streams, flows))
                    }
                    // The flows' own cap keeps them to their share; no floor for streams here.
                    Side::Flows => {
                        let flows = flows.checked_add(n)?;
                        (u64::from(streams) + u64::from(flows) <= u64::from(size)).then(|| join(streams, flows))
                    }
                }
            })
            .ok()?;
        Some(Held { pool: self.clone(), side, n })
    }

    fn give_back(&self, side: Side, n: u32) {
        let delta = match side {
            Side::Streams => join(n, 0),
            Side::Flows => join(0, n),
        };
        self.used.fetch_sub(delta, Ordering::AcqRel);
    }
}

/// Descriptors taken from a [`Descriptors`] pool, given back on drop.
#[derive(Debug)]
pub struct Held {
    pool: Arc<Descriptors>,
    side: Side,
    n: u32,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.pool.give_back(self.side, self.n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_take_what_flows_leave_but_never_their_floor() {
        let pool = Descriptors::new(100, 20);
        // Streams alone: all but the flows' floor.
        let streams: Vec<Held> = std::iter::from_fn(|| pool.take(Side::Streams, 2)).take(100).collect();
        assert_eq!(streams.len(), 40, "80 descriptors, 20 kept for flows");
        assert_eq!(pool.used(), (80, 0));
        // The floor is there for flows, and no more.
        let flows: Vec<Held> = std::iter::from_fn(|| pool.take(Side::Flows, 1)).take(100).collect();
        assert_eq!(flows.len(), 20);
        drop(streams);
        assert_eq!(pool.used(), (0, 20));
        // Flows past their floor take from the rest, and what they use of it streams cannot.
        let more: Vec<Held> = std::iter::from_fn(|| pool.take(Side::Flows, 1)).take(30).collect();
        assert_eq!(more.len(), 30);
        let streams: Vec<Held> = std::iter::from_fn(|| pool.take(Side::Streams, 2)).take(100).collect();
        assert_eq!(streams.len(), 25, "100 - 50 flows = 50 descriptors");
        drop((flows, more, streams));
        assert_eq!(pool.used(), (0, 0), "everything given back");
    }

    #[test]
    fn a_take_is_all_or_nothing_and_lower_limits_apply_to_new_takes() {
        let pool = Descriptors::new(10, 0);
        let a = pool.take(Side::Streams, 9).expect("room");
        assert!(pool.take(Side::Streams, 2).is_none(), "two do not fit in one");
        assert_eq!(pool.used(), (9, 0), "a refused take holds nothing");
        pool.set_limits(4, 2);
        assert!(pool.take(Side::Flows, 1).is_none(), "held ones stay counted under a lower limit");
        drop(a);
        assert!(pool.take(Side::Streams, 3).is_none(), "the flows' new floor");
        let _b = pool.take(Side::Streams, 2).expect("room under the new limits");
        assert_eq!(pool.limits(), (4, 2));
        // A floor larger than the pool is the pool.
        pool.set_limits(4, 9);
        assert_eq!(pool.limits(), (4, 4));
    }
}
