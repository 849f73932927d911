//! UDP flow tables, sans-io: flows keyed by client address, idle expiry, and admission
//! under budgets shared by every table of a service (all its ports) and by the whole
//! process, so a flood over a port range cannot open more flows (and sockets) than the
//! descriptor budget allows. Time is passed in as milliseconds since an epoch the caller
//! owns; nothing here reads a clock or touches a socket.
//!
//! At a full budget, a new source takes the slot of the flow that has been silent longest
//! (both ways), as soon as that one has been silent for [`evict_after`]: a legitimate new
//! client is admitted within a fraction of a second of a flood, while flows that keep
//! talking are never pushed out. Finding that flow takes O(log n) per flow looked at: flows
//! are kept ordered by the time the queue last saw them, and one found active since goes back
//! under the time of its last datagram, read only when it comes to the front. (A second-chance
//! "clock" that put it back at the end was O(1), but an idle flow put back behind a younger
//! one that still talked was never offered: the search stops at the first flow still talking.)
//!
//! No source gets more than its share of a nearly full budget ([`FlowBudget::share`]): one
//! client that keeps thousands of flows talking (a source port each) would otherwise hold
//! every slot, and no flow of its would ever be silent long enough to give up.
//!
//! A flow's slots follow its upstream socket, not its table entry: the reply pump holds
//! the socket as well, and an aborted task lets go of it only when the runtime next polls
//! it. Given back with the entry, a flood at the cap opened new sockets while a loop's
//! worth of evicted ones were still open (4,202 descriptors against a 4,096 cap on a
//! loaded machine).

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::hash::Hash;
use std::net::{IpAddr, Ipv6Addr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use tokio::task::JoinHandle;

use crate::descriptors::{Descriptors, Held, Side};

/// What a table needs to know of a flow.
pub trait FlowEntry {
    /// Milliseconds (caller's epoch) of the last datagram either way.
    fn last_active(&self) -> u64;

    /// Its budget slots, handed to the flow that takes its place ([`FlowTable::admit`]).
    fn permits(&self) -> Option<&FlowPermits> {
        None
    }

    /// Whether [`FlowEntry::answered`] tells anything: the table keeps a queue of the flows
    /// never answered only then.
    const TRACKS_ANSWERS: bool = false;

    /// Whether the other side ever answered: a flow never answered is given up before one
    /// that was ([`FlowTable::evict_idlest`]). Goes from false to true only.
    fn answered(&self) -> bool {
        true
    }
}

/// Slots for flows: one per service (across its ports) and one for the process. A flow
/// holds a [`FlowPermit`] of each for its whole life.
///
/// A table that finds the budget full with nothing of its own to give up (a flood on one of
/// the service's ports has every slot) asks for one ([`FlowTable::admit_among`]): for
/// [`WANT_MS`], the next table to admit a source gives up its idlest flow for it, and no
/// table but one that asked takes the last free slot, so the freed one waits for the asker's
/// next new source.
#[derive(Debug)]
pub struct FlowBudget {
    used: AtomicUsize,
    cap: AtomicUsize,
    /// Until when (ms since `born`, 0: never) a table waits for a slot.
    wanted_until: AtomicU64,
    /// A flow was given up for the current want.
    given: AtomicBool,
    born: std::time::Instant,
    /// Flows per source ([`source_of`]) across the service's tables.
    sources: Mutex<HashMap<IpAddr, u32>>,
    /// The descriptors a flow's socket is counted in besides this budget, if any.
    descriptors: Option<Arc<Descriptors>>,
}

/// The smallest budget whose sources are held to a share ([`FlowBudget::share`]).
pub const SHARED_FROM: usize = 16;

/// How long a table's want for a slot lasts: longer than a client's retry of a lost
/// datagram takes, usually (DNS: 1-5 s).
pub const WANT_MS: u64 = 5_000;

impl FlowBudget {
    pub fn new(cap: usize) -> Arc<Self> {
        Self::build(cap, None)
    }

    /// A budget whose every flow also takes a descriptor from `pool` (its flow side): full
    /// when either is.
    pub fn drawing_on(cap: usize, pool: Arc<Descriptors>) -> Arc<Self> {
        Self::build(cap, Some(pool))
    }

    fn build(cap: usize, descriptors: Option<Arc<Descriptors>>) -> Arc<Self> {
        Arc::new(Self {
            used: AtomicUsize::new(0),
            cap: AtomicUsize::new(cap),
            wanted_until: AtomicU64::new(0),
            given: AtomicBool::new(false),
            born: std::time::Instant::now(),
            sources: Mutex::new(HashMap::new()),
            descriptors,
        })
    }

    /// A place for one more flow of `client`'s source, counted until the [`SourceShare`] is
    /// dropped; `None` while the budget is three quarters full and that source holds a
    /// quarter of the cap. Below that fill, any client opens what it needs; at it, one
    /// source (or one IPv6 /64) keeping its flows talking still leaves a quarter to the rest.
    /// Not below [`SHARED_FROM`] flows: a budget that small serves a few known clients, and
    /// one of them whose address changes port (NAT rebinding, a WireGuard peer roaming) must
    /// still take its own old flow's slot once that one is silent.
    pub fn share(self: &Arc<Self>, client: IpAddr) -> Option<SourceShare> {
        self.count(client, true)
    }

    /// [`share`](Self::share) never refused: for a relay that speaks for many clients it
    /// cannot tell apart (an ingress node sending without PROXY headers).
    pub fn share_unbounded(self: &Arc<Self>, client: IpAddr) -> Option<SourceShare> {
        self.count(client, false)
    }

    fn count(self: &Arc<Self>, client: IpAddr, bounded: bool) -> Option<SourceShare> {
        let source = source_of(client);
        let cap = self.cap();
        let mut sources = self.sources.lock().unwrap_or_else(PoisonError::into_inner);
        let held = sources.entry(source).or_insert(0);
        if bounded && cap >= SHARED_FROM && *held as usize >= cap / 4 && self.used() >= cap - cap / 4 {
            return None;
        }
        *held += 1;
        Some(SourceShare { budget: self.clone(), source })
    }

    /// Flows `client`'s source holds across the service.
    pub fn held_by(&self, client: IpAddr) -> u32 {
        let sources = self.sources.lock().unwrap_or_else(PoisonError::into_inner);
        sources.get(&source_of(client)).copied().unwrap_or(0)
    }

    fn clock_ms(&self) -> u64 {
        self.born.elapsed().as_millis() as u64 + 1
    }

    /// Whether a table is waiting for a slot (no clock read while none is).
    pub fn wanted(&self) -> bool {
        let until = self.wanted_until.load(Ordering::Relaxed);
        until != 0 && self.clock_ms() < until
    }

    /// A table found the budget full and nothing of its own to give up.
    fn want(&self) {
        let now = self.clock_ms();
        if self.wanted_until.swap(now + WANT_MS, Ordering::AcqRel) < now {
            // A new want, not a renewed one: one more flow may be given up for it.
            self.given.store(false, Ordering::Release);
        }
    }

    /// The waiting table has its slot.
    fn served(&self) {
        self.wanted_until.store(0, Ordering::Release);
        self.given.store(false, Ordering::Release);
    }

    /// A new cap applies to new flows; flows above it stay until they end.
    pub fn set_cap(&self, cap: usize) {
        self.cap.store(cap, Ordering::Relaxed);
    }

    pub fn cap(&self) -> usize {
        self.cap.load(Ordering::Relaxed)
    }

    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    fn try_acquire(self: &Arc<Self>) -> Option<FlowPermit> {
        let cap = self.cap();
        self.used.fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| (n < cap).then_some(n + 1)).ok()?;
        let fd = match &self.descriptors {
            Some(pool) => match pool.take(Side::Flows, 1) {
                Some(fd) => Some(fd),
                None => {
                    self.used.fetch_sub(1, Ordering::AcqRel);
                    return None;
                }
            },
            None => None,
        };
        Some(FlowPermit { budget: self.clone(), _fd: fd })
    }
}

/// The source a client is counted under: its IPv4 address, or the /64 of its IPv6 address
/// (what one host or one Yggdrasil node's subnet is given).
pub fn source_of(client: IpAddr) -> IpAddr {
    match client.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(v6.to_bits() & !((1u128 << 64) - 1))),
        v4 => v4,
    }
}

/// One flow of its source, counted in its service's budget until dropped.
#[derive(Debug)]
pub struct SourceShare {
    budget: Arc<FlowBudget>,
    source: IpAddr,
}

impl Drop for SourceShare {
    fn drop(&mut self) {
        let mut sources = self.budget.sources.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(held) = sources.get_mut(&self.source) {
            *held = held.saturating_sub(1);
            if *held == 0 {
                sources.remove(&self.source);
            }
        }
    }
}

/// One slot of a [`FlowBudget`] (and its descriptor, if it draws on a pool), given back on
/// drop.
#[derive(Debug)]
pub struct FlowPermit {
    budget: Arc<FlowBudget>,
    _fd: Option<Held>,
}

impl Drop for FlowPermit {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A flow's slots in its service's budget and in the process's, shared by the flow and
/// its reply pump: given back when both are gone.
#[derive(Debug, Clone)]
pub struct FlowPermits {
    slots: Arc<(FlowPermit, FlowPermit)>,
}

impl FlowPermits {
    /// Both slots or neither.
    pub fn acquire(service: &Arc<FlowBudget>, global: &Arc<FlowBudget>) -> Option<Self> {
        let s = service.try_acquire()?;
        let g = global.try_acquire()?;
        Some(Self { slots: Arc::new((s, g)) })
    }

    /// Whether nothing else holds these slots (the flow and its pump are gone).
    fn sole(&self) -> bool {
        Arc::strong_count(&self.slots) == 1
    }

    /// Slots for the flow that takes the place of the one that had these (its path went
    /// down): free ones from `acquire` if there are any (no wait), else these once nothing
    /// else holds them (the loop has dropped the old flow's aborted pump, which held its
    /// socket too). `None` if that has not happened after two yields (the slots come free a
    /// moment later), or if they are not `service`'s to give (a reload renamed the service)
    /// or it is over its cap (a reload lowered it): the new flow is then admitted as any other.
    pub async fn reclaim(self, service: &Arc<FlowBudget>, acquire: impl FnOnce() -> Option<Self>) -> Option<Self> {
        if let Some(free) = acquire() {
            return Some(free);
        }
        if !Arc::ptr_eq(&self.slots.0.budget, service) || service.used() > service.cap() {
            return None;
        }
        self.settled().await
    }

    /// These slots once the pump holding them besides the caller is gone (see [`reclaim`]).
    ///
    /// [`reclaim`]: Self::reclaim
    async fn settled(self) -> Option<Self> {
        // On a current-thread loop one yield runs the aborted pump, queued before this
        // task; the second is for a runtime where another thread may hold it.
        for _ in 0..2 {
            if self.sole() {
                return Some(self);
            }
            tokio::task::yield_now().await;
        }
        self.sole().then_some(self)
    }

    /// The flow's reply pump, holding these slots until it ends or its aborted task is
    /// dropped: it holds the flow's socket until then too.
    pub fn held_by<F: Future<Output = ()>>(&self, pump: F) -> Holding<F> {
        Holding { pump, _slots: self.clone() }
    }
}

pin_project! {
    /// A reply pump with its flow's slots. A struct rather than an async block: a block
    /// awaiting a future it captured has room for it twice (2,072 bytes for a 1,024-byte
    /// pump), in every flow's task.
    pub struct Holding<F> {
        #[pin]
        pump: F,
        _slots: FlowPermits,
    }
}

impl<F: Future> Future for Holding<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.project().pump.poll(cx)
    }
}

/// What every relayed flow holds besides its own fields: the time of its last datagram
/// either way (shared with its reply pump), the pump task, aborted when the flow ends, and
/// its budget slots, given back once the pump is gone as well (see [`FlowPermits::held_by`]).
#[derive(Debug)]
pub struct FlowLife {
    last: Arc<AtomicU64>,
    pump: JoinHandle<()>,
    permits: FlowPermits,
    _share: SourceShare,
}

impl FlowLife {
    pub fn new(last: Arc<AtomicU64>, pump: JoinHandle<()>, permits: FlowPermits, share: SourceShare) -> Self {
        Self { last, pump, permits, _share: share }
    }

    /// A datagram went to the upstream at `now` (the table's clock).
    pub fn touch(&self, now: u64) {
        mark_active(&self.last, now);
    }
}

/// Record activity at `now` (ms) in a flow's shared last-activity time, which never goes back:
/// the receive loop reads its clock once per batch and may touch a flow after its reply pump
/// stored a later time, and a time gone back below the one the eviction queue holds for the
/// flow would hide idler flows behind it. Most datagrams come within the same millisecond as
/// the last, and then nothing is written (the read-modify-write only when the time moves).
pub fn mark_active(last: &AtomicU64, now: u64) {
    if last.load(Ordering::Relaxed) < now {
        last.fetch_max(now, Ordering::Relaxed);
    }
}

impl FlowEntry for FlowLife {
    fn last_active(&self) -> u64 {
        self.last.load(Ordering::Relaxed)
    }

    fn permits(&self) -> Option<&FlowPermits> {
        Some(&self.permits)
    }
}

impl Drop for FlowLife {
    fn drop(&mut self) {
        self.pump.abort();
    }
}

/// How long a flow must have been silent before a new source may take its slot at a full
/// budget: an eighth of the idle timeout, at most 250 ms (a call's media or a game's
/// updates come far more often; a flood's one-shot sources are gone after it).
pub fn evict_after(idle_ms: u64) -> u64 {
    (idle_ms / 8).clamp(1, 250)
}

/// Flows keyed by `K`: the client address (ingress), or the sender and the client it
/// speaks for (local proxy, where one ingress relays many clients).
pub struct FlowTable<K, V> {
    flows: HashMap<K, V>,
    /// Clients by the time the queue last saw them (oldest first); entries of removed flows
    /// are skipped when met and the queue is rebuilt when they pile up.
    order: BTreeSet<(u64, K)>,
    /// The same for the flows never answered when they were queued (if `V` tracks answers):
    /// those answered since are dropped from it when met.
    unanswered: BTreeSet<(u64, K)>,
    idle_ms: u64,
}

impl<K: Copy + Ord + Hash, V: FlowEntry> FlowTable<K, V> {
    pub fn new(idle_ms: u64) -> Self {
        Self { flows: HashMap::new(), order: BTreeSet::new(), unanswered: BTreeSet::new(), idle_ms: idle_ms.max(1) }
    }

    pub fn len(&self) -> usize {
        self.flows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    pub fn get(&self, client: &K) -> Option<&V> {
        self.flows.get(client)
    }

    pub fn get_mut(&mut self, client: &K) -> Option<&mut V> {
        self.flows.get_mut(client)
    }

    pub fn remove(&mut self, client: &K) -> Option<V> {
        self.flows.remove(client)
    }

    /// Add a flow (its permits already acquired); returns the flow it replaced, if any.
    pub fn insert(&mut self, client: K, flow: V, now: u64) -> Option<V> {
        self.order.insert((now, client));
        if V::TRACKS_ANSWERS && !flow.answered() {
            self.unanswered.insert((now, client));
        }
        let old = self.flows.insert(client, flow);
        self.compact();
        old
    }

    /// Remove the flow silent longest, if it has been silent for at least `min_idle_ms`: of
    /// those never answered first, if `V` tracks answers. A flood's spoofed sources are never
    /// answered by a home that checks what it gets (WireGuard drops a handshake it cannot
    /// verify): they go before a peer's tunnel that is quiet between keepalives.
    pub fn evict_idlest(&mut self, now: u64, min_idle_ms: u64) -> Option<V> {
        if V::TRACKS_ANSWERS {
            if let Some(v) = idlest(&mut self.unanswered, &mut self.flows, now, min_idle_ms, V::answered) {
                return Some(v);
            }
        }
        idlest(&mut self.order, &mut self.flows, now, min_idle_ms, |_| false)
    }

    /// Slots for a new flow: free ones, or those of the flow silent longest if it has been
    /// silent `min_idle_ms` (handed to `evicted`); `None` when every flow is talking.
    /// An evicted flow's slots are free once the loop has dropped its aborted pump (and
    /// socket): this yields to the loop for that and takes them over itself, so that no other
    /// table on the loop takes them meanwhile. One new source costs one flow.
    pub async fn admit(
        &mut self,
        now: u64,
        min_idle_ms: u64,
        mut acquire: impl FnMut() -> Option<FlowPermits>,
        mut evicted: impl FnMut(V),
    ) -> Option<FlowPermits> {
        loop {
            if let Some(p) = acquire() {
                return Some(p);
            }
            let flow = self.evict_idlest(now, min_idle_ms)?;
            let slots = flow.permits().cloned();
            evicted(flow);
            let Some(slots) = slots else { continue };
            if let Some(slots) = slots.settled().await {
                return Some(slots);
            }
        }
    }

    /// [`admit`](Self::admit) for a table sharing `service` with others (the service's
    /// other ports). `waiting`: this table's own state, whether it asked for a slot. While
    /// some table waits, this one first gives up its idlest flow for it (once per want), and
    /// does not take the last free slot unless it is waiting itself; with nothing to admit
    /// from, it asks (if it holds less than half the flows in use). A flood on one port then
    /// cannot keep a new client of another port out.
    pub async fn admit_among(
        &mut self,
        service: &FlowBudget,
        waiting: &mut bool,
        now: u64,
        min_idle_ms: u64,
        mut acquire: impl FnMut() -> Option<FlowPermits>,
        mut evicted: impl FnMut(V),
    ) -> Option<FlowPermits> {
        // A want of this table's that ran out is not one.
        let asked = *waiting && service.wanted();
        if !asked && service.wanted() && !service.given.swap(true, Ordering::AcqRel) {
            match self.evict_idlest(now, min_idle_ms) {
                // Its slots come free once its pump is gone, for the waiting table.
                Some(flow) => evicted(flow),
                None => service.given.store(false, Ordering::Release),
            }
        }
        // Only the last free slot is kept for the waiting table.
        let acquire = || {
            if asked || !service.wanted() || service.used() + 1 < service.cap() {
                acquire()
            } else {
                None
            }
        };
        let got = self.admit(now, min_idle_ms, acquire, &mut evicted).await;
        match &got {
            Some(_) if asked => {
                service.served();
                *waiting = false;
            }
            Some(_) => {}
            // Only a table with less than half the flows in use asks: the flooded one, with
            // no flow silent long enough to give up for its own next source, must not take
            // the slot another table waits for.
            None if self.len() * 2 < service.used() => {
                service.want();
                *waiting = true;
            }
            None => *waiting = false,
        }
        got
    }

    /// Remove flows idle for the full timeout; give memory back after a flood. Looks only at
    /// the queue's front, where a flow due must be (called at every sweep, in the local proxy
    /// every 100 ms, over tables of up to a million flows): a flow seen active since it was
    /// queued goes back under the time of its last datagram, so a talking flow is looked at
    /// once per timeout.
    pub fn expire(&mut self, now: u64, expired: &mut Vec<V>) {
        let idle = self.idle_ms;
        while let Some(&(queued, client)) = self.order.first() {
            if now.saturating_sub(queued) < idle {
                break;
            }
            self.order.pop_first();
            let Some(flow) = self.flows.get(&client) else { continue };
            let last = flow.last_active();
            if now.saturating_sub(last) < idle {
                // Spoke since: queued later than `now - idle`, so this loop ends.
                self.order.insert((last, client));
            } else if let Some(v) = self.flows.remove(&client) {
                expired.push(v);
            }
        }
        if self.flows.capacity() > 4 * self.flows.len() + 64 {
            self.flows.shrink_to_fit();
        }
        self.compact();
    }

    /// Remove every flow matching `f` (e.g. pinned to a path that went away).
    pub fn drain_where(&mut self, f: impl Fn(&V) -> bool, out: &mut Vec<V>) {
        let keys: Vec<K> = self.flows.iter().filter(|(_, v)| f(v)).map(|(k, _)| *k).collect();
        for k in keys {
            if let Some(v) = self.flows.remove(&k) {
                out.push(v);
            }
        }
    }

    /// Milliseconds still to wait until every flow has been silent (both ways) for
    /// `quiet_ms`; `None` once they have, or when there are none (see `udp_relay::linger`).
    pub fn until_quiet(&self, now: u64, quiet_ms: u64) -> Option<u64> {
        let last = self.flows.values().map(FlowEntry::last_active).max()?;
        let silent = now.saturating_sub(last);
        (silent < quiet_ms).then(|| quiet_ms - silent)
    }

    pub fn set_idle(&mut self, idle_ms: u64) {
        self.idle_ms = idle_ms.max(1);
    }

    /// Rebuild a queue when removed flows' entries outnumber the live ones.
    fn compact(&mut self) {
        if self.order.len() > 2 * self.flows.len() + 64 {
            self.order = self.flows.iter().map(|(k, v)| (v.last_active(), *k)).collect();
        }
        if self.unanswered.len() > 2 * self.flows.len() + 64 {
            self.unanswered =
                self.flows.iter().filter(|(_, v)| !v.answered()).map(|(k, v)| (v.last_active(), *k)).collect();
        }
    }
}

/// Removes from `flows` the flow silent longest of those `queue` holds, if it has been silent
/// for at least `min_idle_ms`. Each pass drops an entry whose flow is gone or that `leaves`
/// (answered, for the queue of the unanswered), requeues a flow seen active since it was
/// queued (once per activity: it then comes round again and is decided), or decides: twice
/// the queue's length covers a queue of flows that all spoke since.
fn idlest<K: Copy + Ord + Hash, V: FlowEntry>(
    queue: &mut BTreeSet<(u64, K)>,
    flows: &mut HashMap<K, V>,
    now: u64,
    min_idle_ms: u64,
    leaves: impl Fn(&V) -> bool,
) -> Option<V> {
    for _ in 0..2 * queue.len() {
        let (queued, client) = queue.pop_first()?;
        let Some(flow) = flows.get(&client) else { continue };
        if leaves(flow) {
            continue;
        }
        let last = flow.last_active();
        if last > queued {
            queue.insert((last, client));
            continue;
        }
        if now.saturating_sub(last) < min_idle_ms {
            // The idlest flow is still talking, so every other flow is too.
            queue.insert((queued, client));
            return None;
        }
        return flows.remove(&client);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::net::SocketAddr;
    use std::rc::Rc;

    /// A flow whose last activity the test moves, as the reply pump would.
    struct F(Rc<Cell<u64>>);
    impl FlowEntry for F {
        fn last_active(&self) -> u64 {
            self.0.get()
        }
    }
    impl FlowEntry for (F, FlowPermits) {
        fn last_active(&self) -> u64 {
            self.0.last_active()
        }
    }

    fn f(t: u64) -> F {
        F(Rc::new(Cell::new(t)))
    }

    fn addr(i: u32) -> SocketAddr {
        SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 1000))
    }

    #[test]
    fn expiry_after_idle_timeout() {
        let mut t = FlowTable::new(1000);
        t.insert(addr(1), f(0), 0);
        t.insert(addr(2), f(500), 500);
        let mut out = Vec::new();
        t.expire(999, &mut out);
        assert_eq!((t.len(), out.len()), (2, 0));
        t.expire(1000, &mut out);
        assert_eq!((t.len(), out.len()), (1, 1));
        assert!(t.get(&addr(2)).is_some());
    }

    /// A sweep looks at the flows that may be due, not at every flow: of 10,000 talking ones,
    /// only those whose queued time is a timeout old (each once, then requeued).
    #[test]
    fn expiry_looks_only_at_flows_that_may_be_due() {
        struct Counted(Rc<Cell<u64>>, Rc<Cell<u32>>);
        impl FlowEntry for Counted {
            fn last_active(&self) -> u64 {
                self.1.set(self.1.get() + 1);
                self.0.get()
            }
        }
        let looks = Rc::new(Cell::new(0));
        let mut t = FlowTable::new(1000);
        let mut clocks = Vec::new();
        for i in 0..10_000u32 {
            let at = u64::from(i % 100);
            let c = Rc::new(Cell::new(at));
            clocks.push(c.clone());
            t.insert(addr(i), Counted(c, looks.clone()), at);
        }
        let mut out = Vec::new();
        t.expire(500, &mut out);
        assert_eq!((out.len(), looks.get()), (0, 0), "nothing due, nothing looked at");
        // Every flow speaks at 900; at 1010 the 1,100 queued at 0..=10 are looked at once each.
        clocks.iter().for_each(|c| c.set(900));
        t.expire(1010, &mut out);
        assert_eq!((out.len(), looks.get()), (0, 1100));
        let queued: std::collections::HashSet<SocketAddr> = t.order.iter().map(|(_, k)| *k).collect();
        assert_eq!(queued.len(), t.len(), "every flow still queued");
        // Flows 0..10 go silent for good; the rest keep talking.
        for (i, c) in clocks.iter().enumerate() {
            c.set(if i < 10 { 900 } else { 1800 });
        }
        t.expire(1900, &mut out);
        assert_eq!(out.len(), 10, "the silent ones, once a timeout after their last datagram");
        assert_eq!(t.len(), 9_990);
    }

    /// A moving flow's slots go to its new flow only from the same budget, within its cap:
    /// not after a reload renamed the service (another budget) or lowered the cap below use.
    #[test]
    fn a_moving_flows_slots_are_reclaimed_only_within_their_own_budget() {
        let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        rt.block_on(async {
            let (service, global, renamed) = (FlowBudget::new(2), FlowBudget::new(usize::MAX), FlowBudget::new(2));
            let slots = || FlowPermits::acquire(&service, &global).expect("slot");
            let full = || None;
            assert!(slots().reclaim(&service, full).await.is_some());
            assert!(slots().reclaim(&renamed, full).await.is_none(), "another service's slots");
            let (kept, moving) = (slots(), slots());
            service.set_cap(1);
            assert!(moving.reclaim(&service, full).await.is_none(), "two held against a cap of one");
            assert_eq!(service.used(), 1);
            let held = kept.clone();
            assert!(kept.reclaim(&service, full).await.is_none(), "still held by its pump");
            let other = FlowPermits::acquire(&renamed, &global).expect("slot");
            let free = held.clone().reclaim(&service, || Some(other)).await.expect("a free slot");
            assert!(Arc::ptr_eq(&free.slots.0.budget, &renamed), "the free slot first, with no wait");
            drop(held);
        });
    }

    #[test]
    fn budgets_are_shared_and_given_back() {
        let service = FlowBudget::new(2);
        let global = FlowBudget::new(3);
        let a = FlowPermits::acquire(&service, &global).expect("1");
        let b = FlowPermits::acquire(&service, &global).expect("2");
        assert!(FlowPermits::acquire(&service, &global).is_none(), "service full");
        let other = FlowBudget::new(10);
        let c = FlowPermits::acquire(&other, &global).expect("3");
        assert!(FlowPermits::acquire(&other, &global).is_none(), "global full");
        assert_eq!((service.used(), global.used()), (2, 3), "a refused acquire holds nothing");
        drop((a, c));
        assert_eq!((service.used(), global.used()), (1, 1));
        drop(b);
        assert_eq!((service.used(), global.used()), (0, 0));
    }

    #[test]
    fn the_longest_silent_flow_goes_first_talking_ones_never() {
        let mut t = FlowTable::new(60_000);
        let talker = f(0);
        let clock = talker.0.clone();
        t.insert(addr(0), talker, 0);
        for i in 1..=3 {
            t.insert(addr(i), f(u64::from(i)), u64::from(i));
        }
        // The first flow keeps talking; the others went quiet.
        clock.set(400);
        assert!(t.evict_idlest(400, 250).is_some_and(|v| v.last_active() == 1));
        assert!(t.evict_idlest(400, 250).is_some_and(|v| v.last_active() == 2));
        assert!(t.evict_idlest(400, 250).is_some_and(|v| v.last_active() == 3));
        assert!(t.evict_idlest(400, 250).is_none(), "the talker was silent only 0 ms");
        assert!(t.get(&addr(0)).is_some());
        assert!(t.evict_idlest(650, 250).is_some(), "silent 250 ms: now it may go");
    }

    /// A flow never answered goes before an answered one silent longer (a peer's tunnel quiet
    /// between keepalives against a flood's spoofed sources); among the answered, the longest
    /// silent; none silent `min_idle_ms` yet, none.
    #[test]
    fn a_flow_never_answered_goes_before_an_answered_one() {
        struct G(u64, bool);
        impl FlowEntry for G {
            const TRACKS_ANSWERS: bool = true;
            fn last_active(&self) -> u64 {
                self.0
            }
            fn answered(&self) -> bool {
                self.1
            }
        }
        let mut t = FlowTable::new(60_000);
        t.insert(addr(1), G(0, true), 0);
        t.insert(addr(2), G(100, false), 100);
        t.insert(addr(3), G(200, true), 200);
        t.insert(addr(4), G(300, false), 300);
        let gone = |t: &mut FlowTable<SocketAddr, G>, now| t.evict_idlest(now, 250).map(|g| (g.0, g.1));
        assert_eq!(gone(&mut t, 400), Some((100, false)), "unanswered, though the answered one at 0 is idler");
        assert_eq!(gone(&mut t, 400), Some((0, true)), "the other unanswered one is silent only 100 ms");
        assert_eq!(gone(&mut t, 440), None, "silent 240 and 140 ms");
        assert_eq!(gone(&mut t, 560), Some((300, false)));
        assert_eq!(gone(&mut t, 560), Some((200, true)));
        assert!(t.is_empty());
        // However many answered flows were queued before them: 150 tunnels, then a flood.
        for i in 0..150 {
            t.insert(addr(i), G(u64::from(i), true), u64::from(i));
        }
        for i in 150..160 {
            t.insert(addr(i), G(1000 + u64::from(i), false), 1000 + u64::from(i));
        }
        for _ in 150..160 {
            assert_eq!(gone(&mut t, 2000).map(|g| g.1), Some(false), "a flood source, not a tunnel");
        }
        assert_eq!(gone(&mut t, 2000), Some((0, true)), "then the longest-silent tunnel");
        assert_eq!(t.len(), 149);
    }

    /// A flow that spoke after it was queued goes back where its last datagram puts it, not
    /// behind flows queued later: here `a` (last heard at 20) is idle long enough and `b`
    /// (queued at 50) is not. Requeued at the back, `a` hid behind `b`, and the check stopped
    /// at `b`: no slot for a new source though an idle flow held one.
    #[test]
    fn a_flow_requeued_after_speaking_keeps_its_place_by_time() {
        let mut t = FlowTable::new(60_000);
        let a = f(10);
        let clock = a.0.clone();
        t.insert(addr(1), a, 10);
        t.insert(addr(2), f(50), 50);
        clock.set(20);
        let gone = t.evict_idlest(280, 250).map(|v| v.last_active());
        assert_eq!(gone, Some(20), "a: silent 260 ms");
        assert!(t.evict_idlest(280, 250).is_none(), "b: silent 230 ms");
        assert!(t.get(&addr(2)).is_some());
    }

    #[test]
    fn flood_at_a_full_budget_admits_new_sources_and_keeps_the_talker() {
        // 20,000 one-shot sources, 10 per ms, against 4,096 slots; a legitimate flow sends
        // every 10 ms throughout.
        let service = FlowBudget::new(4096);
        let global = FlowBudget::new(usize::MAX);
        let mut t: FlowTable<SocketAddr, (F, FlowPermits)> = FlowTable::new(60_000);
        let legit = f(0);
        let legit_clock = legit.0.clone();
        t.insert(addr(999_999), (legit, FlowPermits::acquire(&service, &global).expect("slot")), 0);
        let (mut admitted, mut dropped, mut evicted) = (0u32, 0u32, 0u32);
        let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        for i in 0..20_000u32 {
            let now = u64::from(i / 10);
            if now % 10 == 0 {
                legit_clock.set(now);
            }
            let acquire = || FlowPermits::acquire(&service, &global);
            match rt.block_on(t.admit(now, evict_after(60_000), acquire, |_| evicted += 1)) {
                Some(p) => {
                    t.insert(addr(i), (f(now), p), now);
                    admitted += 1;
                }
                None => dropped += 1,
            }
            assert!(t.len() <= 4096 && service.used() <= 4096);
        }
        assert!(t.get(&addr(999_999)).is_some(), "the talking flow survived the flood");
        // Once the first flood sources have been silent 250 ms, every new one gets a slot.
        assert!(admitted > 4096 + 15_000, "admitted {admitted}, dropped {dropped}");
        assert_eq!(admitted - 4095, evicted, "each admission past the cap evicted one flow");
        let mut out = Vec::new();
        t.expire(60_000 + 2_000, &mut out);
        assert_eq!(t.len(), 0);
        drop(out);
        assert_eq!(service.used(), 0, "expired flows gave their slots back");
    }

    /// A flow as the relays make one: its pump holds the socket (here a stand-in: a count
    /// of open ones, or a wake-up on drop) and the slots, and is aborted when the flow goes.
    fn relayed(permits: FlowPermits, socket: impl Send + 'static, now: u64) -> FlowLife {
        let pump = tokio::spawn(permits.held_by(async move {
            let _socket = socket;
            std::future::pending::<()>().await
        }));
        // Shares from a budget of their own, never refused: these tests are about the slots.
        let shares = FlowBudget::new(1 << 20);
        let share = shares.share(IpAddr::from([192, 0, 2, 1])).expect("share");
        FlowLife::new(Arc::new(AtomicU64::new(now)), pump, permits, share)
    }

    /// One source keeping its flows talking gets what it asks for until the budget is three
    /// quarters full, then no more than a quarter of the cap: the rest stays for others. An
    /// IPv6 /64 is one source; a share given back is counted no more.
    #[test]
    fn no_source_takes_more_than_its_share_of_a_nearly_full_budget() {
        let service = FlowBudget::new(16);
        let global = FlowBudget::new(1 << 20);
        let a: IpAddr = "198.51.100.7".parse().unwrap();
        let mut held = Vec::new();
        while let Some(share) = service.share(a) {
            held.push((share, FlowPermits::acquire(&service, &global).expect("a free slot")));
            assert!(held.len() <= 16);
        }
        assert_eq!(held.len(), 12, "a alone: up to three quarters");
        assert_eq!(service.held_by("::ffff:198.51.100.7".parse().unwrap()), 12, "v4-mapped is the same source");
        let b: IpAddr = "2001:db8:1:2::10".parse().unwrap();
        for _ in 0..4 {
            let share = service.share(b).expect("another source gets the last quarter");
            held.push((share, FlowPermits::acquire(&service, &global).expect("a free slot")));
        }
        assert_eq!(service.held_by("2001:db8:1:2:ffff::1".parse().unwrap()), 4, "one /64, one source");
        assert_eq!(service.held_by("2001:db8:1:3::10".parse().unwrap()), 0);
        assert!(service.share(b).is_none(), "b at its quarter of a full budget");
        // A third source may still ask: at a full budget it takes a silent flow's slot.
        let c = service.share("203.0.113.9".parse().unwrap()).expect("c holds nothing");
        drop(c);
        held.truncate(6);
        assert_eq!(service.held_by(a), 6);
        assert_eq!(service.held_by(b), 0);
        assert!(service.share(a).is_some(), "below three quarters again");
    }

    /// A small budget serves a few known clients: none is held to a share, so a client whose
    /// port changed takes its own silent flow's slot as before.
    #[test]
    fn small_budgets_hold_no_source_to_a_share() {
        let service = FlowBudget::new(SHARED_FROM - 1);
        let global = FlowBudget::new(1 << 20);
        let a: IpAddr = "198.51.100.7".parse().unwrap();
        let held: Vec<_> = (0..SHARED_FROM - 1)
            .map(|_| (service.share(a).expect("no share below SHARED_FROM"), FlowPermits::acquire(&service, &global)))
            .collect();
        assert!(service.share(a).is_some(), "at a full budget the slot comes from a silent flow, not a share");
        drop(held);
    }

    #[test]
    fn slots_follow_the_socket_and_one_new_source_evicts_one_flow() {
        let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        rt.block_on(async {
            let service = FlowBudget::new(2);
            let global = FlowBudget::new(usize::MAX);
            let socket = Arc::new(());
            let open = |s: &Arc<()>| Arc::strong_count(s) - 1;
            let acquire = || FlowPermits::acquire(&service, &global);
            let mut t = FlowTable::new(60_000);
            for i in 0..2 {
                t.insert(addr(i), relayed(acquire().expect("slot"), socket.clone(), 0), 0);
            }
            tokio::task::yield_now().await; // the pumps run up to their first wait
                                            // A flow removed: its pump still has the socket until the loop drops it.
            drop(t.remove(&addr(0)));
            assert_eq!((open(&socket), service.used()), (2, 2), "the socket outlived its slot");
            tokio::task::yield_now().await;
            assert_eq!((open(&socket), service.used()), (1, 1));
            t.insert(addr(2), relayed(acquire().expect("slot"), socket.clone(), 10), 10);

            // A new source at the cap: one flow makes room, and its socket is closed first.
            let mut evicted = 0;
            let p = t.admit(1000, 250, acquire, |_| evicted += 1).await.expect("room");
            assert_eq!((evicted, t.len(), open(&socket)), (1, 1, 1), "one source, one eviction");
            t.insert(addr(3), relayed(p, socket.clone(), 1000), 1000);
            assert_eq!((open(&socket), service.used()), (2, 2));
            // Every flow talking: nothing is evicted and nothing admitted.
            t.get(&addr(2)).expect("kept").touch(1000);
            assert!(t.admit(1000, 250, acquire, |_| evicted += 1).await.is_none());
            assert_eq!((evicted, t.len()), (1, 2));
        });
    }

    /// Wakes a task when dropped, as a datagram wakes another listener's loop.
    struct Wakes(Arc<tokio::sync::Notify>);
    impl Drop for Wakes {
        fn drop(&mut self) {
            self.0.notify_one();
        }
    }

    #[test]
    fn an_evicted_flows_slots_go_to_the_new_source_not_to_another_table() {
        let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        rt.block_on(async {
            let service = FlowBudget::new(2);
            let global = FlowBudget::new(usize::MAX);
            let woken = Arc::new(tokio::sync::Notify::new());
            let mut t = FlowTable::new(60_000);
            for i in 0..2 {
                let p = FlowPermits::acquire(&service, &global).expect("slot");
                t.insert(addr(i), relayed(p, Wakes(woken.clone()), 0), 0);
            }
            // Another listener of the service on this loop, woken just as the evicted flow's
            // pump is dropped, asks for a slot before the admitting one runs again.
            let (s, g) = (service.clone(), global.clone());
            let other = tokio::spawn(async move {
                woken.notified().await;
                FlowPermits::acquire(&s, &g)
            });
            let (s, g) = (service.clone(), global.clone());
            let mine = tokio::spawn(async move {
                let p = t.admit(1000, 250, || FlowPermits::acquire(&s, &g), |_| {}).await;
                (p, t)
            });
            let (mine, t) = mine.await.expect("task");
            assert!(mine.is_some());
            assert!(other.await.expect("task").is_none(), "the other table took the evicted flow's slot");
            assert_eq!((t.len(), service.used()), (1, 2), "one flow evicted for one new source");
        });
    }

    #[test]
    fn a_table_with_nothing_to_give_up_gets_a_slot_from_another_table_of_its_service() {
        let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        rt.block_on(async {
            let service = FlowBudget::new(4);
            let global = FlowBudget::new(usize::MAX);
            let acquire = || FlowPermits::acquire(&service, &global);
            // Port A: a flood's sources hold every slot, silent since 0.
            let mut a = FlowTable::new(60_000);
            for i in 0..4 {
                a.insert(addr(i), relayed(acquire().expect("slot"), (), 0), 0);
            }
            // Port B: a new client finds no slot and no flow of its own to give up.
            let mut b: FlowTable<SocketAddr, FlowLife> = FlowTable::new(60_000);
            let (mut waiting_a, mut waiting_b, mut evicted) = (false, false, 0);
            let got = b.admit_among(&service, &mut waiting_b, 1000, 250, acquire, |_| evicted += 1).await;
            assert!(got.is_none() && waiting_b && service.wanted());
            // The flood's next source on A: A gives up one flow for B and evicts another for
            // itself; the freed slot is not A's to take.
            let got = a.admit_among(&service, &mut waiting_a, 1000, 250, acquire, |_| evicted += 1).await;
            let p = got.expect("A admits by evicting its own");
            a.insert(addr(100), relayed(p, (), 1000), 1000);
            assert_eq!((evicted, a.len(), waiting_a), (2, 3, false));
            tokio::task::yield_now().await; // the given-up flow's pump is dropped
            assert_eq!(service.used(), 3, "one slot free, kept for B");
            let again = a.admit_among(&service, &mut waiting_a, 1001, 250, acquire, |_| evicted += 1).await;
            let p = again.expect("A evicts its own again");
            a.insert(addr(101), relayed(p, (), 1001), 1001);
            tokio::task::yield_now().await;
            assert_eq!(service.used(), 3, "A did not take the slot kept for B");
            // B's client sends again: it gets the slot, and the want is over.
            let got = b.admit_among(&service, &mut waiting_b, 1100, 250, acquire, |_| evicted += 1).await;
            assert!(got.is_some(), "B admitted");
            assert!(!waiting_b && !service.wanted());
        });
    }

    #[test]
    fn stale_queue_entries_do_not_pile_up() {
        let mut t = FlowTable::new(1000);
        for i in 0..10_000u32 {
            t.insert(addr(i % 10), f(u64::from(i)), u64::from(i));
            t.remove(&addr((i + 5) % 10));
        }
        assert!(t.order.len() <= 2 * t.len() + 65, "queue {} for {} flows", t.order.len(), t.len());
    }

    #[test]
    fn drain_where_takes_matching_flows() {
        let mut t = FlowTable::new(1000);
        for i in 1..=4 {
            t.insert(addr(i), f(u64::from(i)), 0);
        }
        let mut out = Vec::new();
        t.drain_where(|v| v.last_active() % 2 == 0, &mut out);
        assert_eq!((t.len(), out.len()), (2, 2));
    }
}
