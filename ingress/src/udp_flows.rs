//! The UDP flow table, sans-io: flows keyed by client address, each pinned to a path,
//! with idle expiry, a hard cap and eviction of the idlest flows under pressure. Time is
//! passed in as milliseconds since an epoch the caller owns.

use std::collections::HashMap;
use std::net::SocketAddr;

/// What the table needs to know of a flow.
pub trait FlowEntry {
    /// Milliseconds (caller's epoch) of the last datagram either way.
    fn last_active(&self) -> u64;
}

/// Why a new flow could not be admitted.
#[derive(Debug, PartialEq, Eq)]
pub struct Full;

pub struct FlowTable<V> {
    flows: HashMap<SocketAddr, V>,
    cap: usize,
    idle_ms: u64,
    /// When the last pressure sweep ran, so a flood cannot make every datagram scan.
    last_pressure_sweep: Option<u64>,
}

impl<V: FlowEntry> FlowTable<V> {
    pub fn new(cap: usize, idle_ms: u64) -> Self {
        Self { flows: HashMap::new(), cap, idle_ms: idle_ms.max(1), last_pressure_sweep: None }
    }

    pub fn len(&self) -> usize {
        self.flows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    pub fn get(&self, client: &SocketAddr) -> Option<&V> {
        self.flows.get(client)
    }

    pub fn remove(&mut self, client: &SocketAddr) -> Option<V> {
        self.flows.remove(client)
    }

    /// Make room for a new flow from `client` before it is opened (so a flood at the cap
    /// costs no sockets). At the cap, flows idle for an eighth of the timeout are evicted
    /// (at most one such sweep per 100 ms); if none can go, the new flow is refused.
    pub fn make_room(&mut self, client: &SocketAddr, now: u64, evicted: &mut Vec<V>) -> Result<(), Full> {
        if self.flows.len() < self.cap || self.flows.contains_key(client) {
            return Ok(());
        }
        let may_sweep = self.last_pressure_sweep.is_none_or(|t| now.saturating_sub(t) >= 100);
        if !may_sweep {
            return Err(Full);
        }
        self.last_pressure_sweep = Some(now);
        let threshold = (self.idle_ms / 8).max(1);
        self.drain_where(|f| now.saturating_sub(f.last_active()) >= threshold, evicted);
        if self.flows.len() >= self.cap {
            return Err(Full);
        }
        Ok(())
    }

    /// Admit a flow: `make_room`, then insert (replacing any flow of the same client).
    pub fn insert(&mut self, client: SocketAddr, flow: V, now: u64, evicted: &mut Vec<V>) -> Result<(), Full> {
        self.make_room(&client, now, evicted)?;
        if let Some(old) = self.flows.insert(client, flow) {
            evicted.push(old);
        }
        Ok(())
    }

    /// Remove flows idle for the full timeout.
    pub fn expire(&mut self, now: u64, expired: &mut Vec<V>) {
        let idle = self.idle_ms;
        self.drain_where(|f| now.saturating_sub(f.last_active()) >= idle, expired);
    }

    /// Remove every flow matching `f` (e.g. pinned to a path that went away).
    pub fn drain_where(&mut self, f: impl Fn(&V) -> bool, out: &mut Vec<V>) {
        let keys: Vec<SocketAddr> = self.flows.iter().filter(|(_, v)| f(v)).map(|(k, _)| *k).collect();
        for k in keys {
            if let Some(v) = self.flows.remove(&k) {
                out.push(v);
            }
        }
    }

    pub fn set_idle(&mut self, idle_ms: u64, cap: usize) {
        self.idle_ms = idle_ms.max(1);
        self.cap = cap;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct F(u64);
    impl FlowEntry for F {
        fn last_active(&self) -> u64 {
            self.0
        }
    }

    fn addr(i: u16) -> SocketAddr {
        SocketAddr::from(([192, 0, 2, 1], i))
    }

    #[test]
    fn expiry_after_idle_timeout() {
        let mut t = FlowTable::new(10, 1000);
        let mut out = Vec::new();
        t.insert(addr(1), F(0), 0, &mut out).unwrap();
        t.insert(addr(2), F(500), 500, &mut out).unwrap();
        t.expire(999, &mut out);
        assert_eq!((t.len(), out.len()), (2, 0));
        t.expire(1000, &mut out);
        assert_eq!((t.len(), out.len()), (1, 1));
        assert!(t.get(&addr(2)).is_some());
    }

    #[test]
    fn cap_evicts_idle_flows_then_refuses() {
        let mut t = FlowTable::new(2, 800);
        let mut out = Vec::new();
        t.insert(addr(1), F(0), 0, &mut out).unwrap();
        t.insert(addr(2), F(90), 50, &mut out).unwrap();
        // Both are fresh: a flood of new sources is refused, the established flows stay.
        assert_eq!(t.insert(addr(3), F(60), 60, &mut out), Err(Full));
        assert_eq!(t.insert(addr(4), F(61), 61, &mut out), Err(Full));
        assert_eq!(t.len(), 2);
        // Later flow 1 has idled past an eighth of the timeout: it makes room.
        t.insert(addr(5), F(170), 170, &mut out).unwrap();
        assert_eq!(out.len(), 1);
        assert!(t.get(&addr(1)).is_none() && t.get(&addr(5)).is_some());
    }

    #[test]
    fn pressure_sweeps_are_rate_limited() {
        let mut t = FlowTable::new(1, 80);
        let mut out = Vec::new();
        t.insert(addr(1), F(100), 100, &mut out).unwrap();
        assert_eq!(t.insert(addr(2), F(101), 101, &mut out), Err(Full)); // swept, nothing idle
        assert_eq!(t.insert(addr(3), F(150), 150, &mut out), Err(Full)); // no sweep within 100 ms
        t.insert(addr(4), F(201), 201, &mut out).unwrap();
        assert!(t.len() == 1 && out.len() == 1);
    }

    #[test]
    fn memory_bounded_under_flood() {
        let mut t = FlowTable::new(100, 10_000);
        let mut out = Vec::new();
        for i in 0..50_000u32 {
            let a = SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 1000));
            let _ = t.insert(a, F(u64::from(i)), u64::from(i), &mut out);
            out.clear();
            assert!(t.len() <= 100);
        }
    }

    #[test]
    fn migration_removes_flows_of_a_dead_path() {
        let mut t: FlowTable<F> = FlowTable::new(10, 1000);
        let mut out = Vec::new();
        for i in 1..=4 {
            t.insert(addr(i), F(u64::from(i)), 0, &mut out).unwrap();
        }
        t.drain_where(|f| f.0 % 2 == 0, &mut out);
        assert_eq!((t.len(), out.len()), (2, 2));
    }
}
