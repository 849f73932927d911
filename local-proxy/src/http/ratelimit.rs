//! Per-client rate limits: governor's GCRA (one "theoretical arrival time" per client, no
//! refill task) over a state store of our own that holds at most `max_clients` clients.
//!
//! The client is the address the access log names (from a trusted ingress's PROXY header,
//! else the peer); IPv6 clients are counted per `ipv6_prefix` (one host usually holds a
//! whole /64 and could otherwise rotate through it).
//!
//! Memory: the store is 16 shards, each an LRU map of at most `ceil(max_clients / 16)`
//! entries, grown on demand (a site nobody visits costs almost nothing). When a shard is full,
//! the client it has seen least recently is forgotten; forgotten, it would start again with a
//! full burst. A client whose state has run out (it has been quiet for `burst` intervals)
//! loses nothing by being forgotten, and a client that keeps sending stays recent, so only a
//! flood of more distinct addresses than `max_clients` within one burst window can let a
//! slow sender in again early. The shards' maps never shrink: their size stays at the high
//! water mark, at most `max_clients` entries (about 100 bytes each).

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::nanos::Nanos;
use governor::state::StateStore;
use governor::{Quota, RateLimiter};
use lru::LruCache;

use crate::config::middleware::RateLimit;
use crate::metrics::names;

const SHARDS: usize = 16;

/// The bounded client table governor keeps its GCRA state in.
#[derive(Debug)]
pub struct BoundedStore {
    shards: Vec<Mutex<LruCache<IpAddr, Nanos>>>,
    hasher: RandomState,
    /// Entries over all shards (kept here so reading it takes no lock).
    len: AtomicUsize,
    /// Clients forgotten to make room for another: a flood of addresses shows here.
    evicted: metrics::Counter,
}

impl BoundedStore {
    fn new(max_clients: usize, evicted: metrics::Counter) -> Self {
        let per_shard = NonZeroUsize::new(max_clients.div_ceil(SHARDS)).unwrap_or(NonZeroUsize::MIN);
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(LruCache::sparse(per_shard))).collect(),
            hasher: RandomState::new(),
            len: AtomicUsize::new(0),
            evicted,
        }
    }

    fn shard(&self, key: &IpAddr) -> &Mutex<LruCache<IpAddr, Nanos>> {
        &self.shards[(self.hasher.hash_one(key) as usize) % SHARDS]
    }

    /// Clients remembered now (all shards).
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The store as governor holds it, shared with [`Limiter`] (which reads its size).
#[derive(Debug)]
struct Shared(Arc<BoundedStore>);

impl StateStore for Shared {
    type Key = IpAddr;

    fn measure_and_replace<T, F, E>(&self, key: &IpAddr, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        // Under the shard's lock, so no other request of the same client interleaves. A
        // poisoned lock only means a panic elsewhere mid-update; the map is still whole.
        let mut shard = self.0.shard(key).lock().unwrap_or_else(|p| p.into_inner());
        let old = shard.get(key).copied();
        let (out, new) = f(old)?;
        // `push` makes the client the most recent and, in a full shard, drops the least: it
        // gives back the client's own old entry, or the one it dropped.
        match shard.push(*key, new) {
            None => {
                self.0.len.fetch_add(1, Ordering::Relaxed);
            }
            Some((old, _)) if old != *key => self.0.evicted.increment(1),
            Some(_) => {}
        }
        Ok(out)
    }
}

/// One site's (or route's) limiter.
pub struct Limiter {
    limiter: RateLimiter<IpAddr, Shared, DefaultClock>,
    store: Arc<BoundedStore>,
    ipv6_prefix: u8,
    m_limited: metrics::Counter,
    m_clients: metrics::Gauge,
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter").field("clients", &self.clients()).finish_non_exhaustive()
    }
}

/// A refused request: how long until the client may send again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    pub retry_after: Duration,
}

impl Limiter {
    /// The limiter of `site` (and `route`, empty for the site's own), counted under them.
    pub fn new(cfg: &RateLimit, site: &str, route: &str) -> Self {
        // Validation keeps requests and burst >= 1 and the period >= 1 ns; the fallbacks
        // below are never taken.
        let period = cfg.per / cfg.requests.max(1);
        let quota = Quota::with_period(period)
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
            .allow_burst(NonZeroU32::new(cfg.burst).unwrap_or(NonZeroU32::MIN));
        let evicted =
            metrics::counter!(names::RATE_LIMIT_EVICTED, "site" => site.to_string(), "route" => route.to_string());
        let store = Arc::new(BoundedStore::new(cfg.max_clients, evicted));
        Self {
            limiter: RateLimiter::new(quota, Shared(store.clone()), DefaultClock::default()),
            store,
            ipv6_prefix: cfg.ipv6_prefix,
            m_limited: metrics::counter!(names::RATE_LIMITED, "site" => site.to_string(), "route" => route.to_string()),
            m_clients: metrics::gauge!(names::RATE_LIMIT_CLIENTS, "site" => site.to_string(), "route" => route.to_string()),
        }
    }

    /// Count one request of `client`; `Err` when it is over the limit.
    pub fn check(&self, client: IpAddr) -> Result<(), Limited> {
        let key = key(client, self.ipv6_prefix);
        let before = self.store.len();
        let verdict = self
            .limiter
            .check_key(&key)
            .map_err(|not_until| Limited { retry_after: not_until.wait_time_from(self.limiter.clock().now()) });
        let after = self.store.len();
        if after != before {
            self.m_clients.set(after as f64);
        }
        if verdict.is_err() {
            self.m_limited.increment(1);
        }
        verdict
    }

    /// Clients remembered now.
    pub fn clients(&self) -> usize {
        self.store.len()
    }
}

/// The table key of `client`: IPv4 (and IPv4-mapped IPv6) as is, IPv6 cut to `prefix` bits.
fn key(client: IpAddr, prefix: u8) -> IpAddr {
    match client.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let mask = if prefix >= 128 { u128::MAX } else { !(u128::MAX >> prefix) };
            IpAddr::V6((bits & mask).into())
        }
        v4 => v4,
    }
}

/// `Retry-After` in whole seconds, rounded up (0 would invite an immediate retry).
pub fn retry_after_secs(d: Duration) -> u64 {
    (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn cfg(requests: u32, burst: u32, max_clients: usize) -> RateLimit {
        RateLimit { requests, per: Duration::from_secs(1), burst, max_clients, ipv6_prefix: 64 }
    }

    #[test]
    fn burst_then_refused_with_a_wait() {
        let l = Limiter::new(&cfg(10, 3, 100), "t", "");
        let ip: IpAddr = "198.51.100.7".parse().unwrap();
        for _ in 0..3 {
            assert!(l.check(ip).is_ok());
        }
        let refused = l.check(ip).unwrap_err();
        assert!(refused.retry_after > Duration::ZERO && refused.retry_after <= Duration::from_millis(100));
        // Another client has its own budget.
        assert!(l.check("198.51.100.8".parse().unwrap()).is_ok());
    }

    #[test]
    fn ipv6_counts_per_prefix() {
        let l = Limiter::new(&cfg(10, 1, 100), "t", "");
        assert!(l.check("2001:db8:1:2::1".parse().unwrap()).is_ok());
        assert!(l.check("2001:db8:1:2::ffff".parse().unwrap()).is_err(), "same /64");
        assert!(l.check("2001:db8:1:3::1".parse().unwrap()).is_ok(), "another /64");
        assert_eq!(key("::ffff:192.0.2.1".parse().unwrap(), 64), "192.0.2.1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn the_table_stays_within_max_clients() {
        let l = Limiter::new(&cfg(10, 1, 1000), "t", "");
        for i in 0..50_000u32 {
            let _ = l.check(IpAddr::V4((0xC612_0000 + i).into()));
        }
        // Each shard holds ceil(1000 / 16) = 63 at most.
        assert!(l.clients() <= 63 * SHARDS, "{}", l.clients());
        assert!(l.clients() >= 900, "{}", l.clients());
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(retry_after_secs(Duration::from_millis(20)), 1);
        assert_eq!(retry_after_secs(Duration::from_secs(2)), 2);
        assert_eq!(retry_after_secs(Duration::from_millis(2001)), 3);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
    }
}
