//! The set of peers allowed to connect on WAN-side listeners and speak PROXY: a union of
//! named sources (the config's static list now; the DNS-driven firewall feeds its own source
//! later), published with `ArcSwap` so the accept path reads it without a lock.

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

/// Source name used for `wan.trusted_ingress` from the config.
pub const CONFIG_SOURCE: &str = "config";

/// Trusted ingress addresses. Cheap to clone via `Arc`; readers never block writers.
#[derive(Debug, Default)]
pub struct TrustedPeers {
    published: ArcSwap<HashSet<IpAddr>>,
    // Only writers take this lock, to rebuild the union from every source.
    sources: Mutex<BTreeMap<String, HashSet<IpAddr>>>,
}

impl TrustedPeers {
    pub fn new() -> Self {
        Self::default()
    }

    /// Replace the addresses contributed by `source` and publish the new union.
    pub fn set_source(&self, source: &str, addrs: impl IntoIterator<Item = IpAddr>) {
        let set: HashSet<IpAddr> = addrs.into_iter().map(|a| a.to_canonical()).collect();
        // A poisoned lock only means another writer panicked mid-update; the map is still whole.
        let mut sources = self.sources.lock().unwrap_or_else(|p| p.into_inner());
        sources.insert(source.to_string(), set);
        let union: HashSet<IpAddr> = sources.values().flatten().copied().collect();
        self.published.store(Arc::new(union));
    }

    /// Whether `ip` may send PROXY headers. IPv4-mapped IPv6 peers (dual-stack sockets)
    /// match their IPv4 form.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.published.load().contains(&ip.to_canonical())
    }

    /// The current union.
    pub fn snapshot(&self) -> Arc<HashSet<IpAddr>> {
        self.published.load_full()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn sources_union_and_replace() {
        let t = TrustedPeers::new();
        let a: IpAddr = "203.0.113.1".parse().unwrap();
        let b: IpAddr = "2001:db8::1".parse().unwrap();
        t.set_source(CONFIG_SOURCE, [a]);
        t.set_source("dns", [b]);
        assert!(t.contains(a) && t.contains(b));
        assert!(t.contains("::ffff:203.0.113.1".parse().unwrap()));
        t.set_source("dns", []);
        assert!(t.contains(a) && !t.contains(b));
        assert_eq!(t.snapshot().len(), 1);
    }
}
