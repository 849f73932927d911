//! The set of peers allowed to connect on WAN-side listeners and speak PROXY: a union of
//! named sources (the config's static list, the DNS-driven firewall's allowlist with its
//! static prefixes), published with `ArcSwap` so the accept path reads it without a lock.
//! Single addresses are a hash lookup; the few shorter prefixes are scanned.

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use ipnet::IpNet;

/// Source name used for `wan.trusted_ingress` from the config.
pub const CONFIG_SOURCE: &str = "config";

/// Trusted ingress addresses. Cheap to clone via `Arc`; readers never block writers.
#[derive(Debug, Default)]
pub struct TrustedPeers {
    published: ArcSwap<Published>,
    // Only writers take this lock, to rebuild the union from every source.
    sources: Mutex<BTreeMap<String, Vec<IpNet>>>,
}

/// The union of every source, as readers see it.
#[derive(Debug, Default)]
struct Published {
    addrs: Arc<HashSet<IpAddr>>,
    /// Prefixes shorter than a single address.
    nets: Vec<IpNet>,
}

/// An address as the one-address prefix it is, IPv4-mapped IPv6 in its IPv4 form.
fn host(ip: IpAddr) -> IpNet {
    IpNet::from(ip.to_canonical())
}

impl TrustedPeers {
    pub fn new() -> Self {
        Self::default()
    }

    /// Replace the addresses contributed by `source` and publish the new union.
    pub fn set_source(&self, source: &str, addrs: impl IntoIterator<Item = IpAddr>) {
        self.set_source_nets(source, addrs.into_iter().map(host));
    }

    /// Replace the addresses and prefixes (`192.0.2.0/24`) contributed by `source` and publish
    /// the new union.
    pub fn set_source_nets(&self, source: &str, nets: impl IntoIterator<Item = IpNet>) {
        let list: Vec<IpNet> = nets.into_iter().map(|n| n.trunc()).collect();
        // A poisoned lock only means another writer panicked mid-update; the map is still whole.
        let mut sources = self.sources.lock().unwrap_or_else(|p| p.into_inner());
        sources.insert(source.to_string(), list);
        let all = sources.values().flatten();
        let (hosts, nets): (Vec<IpNet>, Vec<IpNet>) = all.partition(|n| n.prefix_len() == n.max_prefix_len());
        let addrs = hosts.into_iter().map(|n| n.addr().to_canonical()).collect();
        let mut nets: Vec<IpNet> = nets.into_iter().collect();
        nets.sort();
        nets.dedup();
        self.published.store(Arc::new(Published { addrs: Arc::new(addrs), nets }));
    }

    /// Whether `ip` may send PROXY headers. IPv4-mapped IPv6 peers (dual-stack sockets)
    /// match their IPv4 form.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        let p = self.published.load();
        p.addrs.contains(&ip) || p.nets.iter().any(|n| n.contains(&ip))
    }

    /// The single addresses of the current union (prefixes are not listed).
    pub fn snapshot(&self) -> Arc<HashSet<IpAddr>> {
        self.published.load().addrs.clone()
    }

    /// The prefixes of the current union (shorter than one address).
    pub fn prefixes(&self) -> Vec<IpNet> {
        self.published.load().nets.clone()
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

    #[test]
    fn prefixes_match_every_address_inside() {
        let t = TrustedPeers::new();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let nets = ["192.0.2.0/24", "2001:db8::/48", "198.51.100.9/32"].map(|n| n.parse::<IpNet>().unwrap());
        t.set_source_nets("firewall", nets);
        for inside in
            ["192.0.2.0", "192.0.2.77", "192.0.2.255", "::ffff:192.0.2.5", "2001:db8::1", "2001:db8:0:ffff::9"]
        {
            assert!(t.contains(ip(inside)), "{inside}");
        }
        for outside in ["192.0.3.0", "192.0.1.255", "2001:db8:1::1", "198.51.100.8"] {
            assert!(!t.contains(ip(outside)), "{outside}");
        }
        assert!(t.contains(ip("198.51.100.9")));
        assert_eq!(t.prefixes().len(), 2);
        assert_eq!(t.snapshot().len(), 1);
        // Replacing the source drops its prefixes; other sources stay.
        t.set_source(CONFIG_SOURCE, [ip("203.0.113.1")]);
        t.set_source_nets("firewall", []);
        assert!(!t.contains(ip("192.0.2.77")) && t.contains(ip("203.0.113.1")));
    }
}
