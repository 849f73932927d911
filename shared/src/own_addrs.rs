//! Whether an address is this host's own: where a connection to it lands back on this
//! machine (its network namespace). Used to refuse an upstream or path that would lead a
//! proxy's traffic back into its own listeners, where relaying it again loops until the
//! connection limit is spent.

use std::net::{IpAddr, SocketAddr};

use crate::ports::{ListenSpec, PortRange};

/// Loopback (all of 127/8 and ::1, IPv4-mapped forms included), the unspecified address
/// (which Linux connects to locally), or an address an interface has now. An interface list
/// that cannot be read counts as no match: the check guards against a misconfiguration and
/// must never take a working path away.
pub fn is_own(ip: IpAddr) -> bool {
    let ip = ip.to_canonical();
    if always_own(ip) {
        return true;
    }
    match nix::ifaddrs::getifaddrs() {
        Ok(list) => list.filter_map(|a| a.address).any(|sa| {
            let own = match (sa.as_sockaddr_in(), sa.as_sockaddr_in6()) {
                (Some(v4), _) => IpAddr::V4(v4.ip()),
                (_, Some(v6)) => IpAddr::V6(v6.ip()),
                _ => return false,
            };
            own == ip
        }),
        Err(_) => false,
    }
}

/// The addresses that are this host's on every host: loopback and the unspecified address
/// (what config checks in tests count, so that they do not depend on the machine).
pub fn always_own(ip: IpAddr) -> bool {
    let ip = ip.to_canonical();
    ip.is_loopback() || ip.is_unspecified()
}

/// Which of `listeners` (transport, spec) traffic over `proto` to `ip` on any of `ports`
/// would land on: one bound to `ip` itself, or to the unspecified address of `ip`'s family
/// when `ip` is this host's (`own`, asked at most once per call and only then). Port 0 specs
/// (any free port) never match. Some((the listener's index, its address on the first port in
/// common)).
pub fn lands_on<'a, P: PartialEq + 'a>(
    ip: IpAddr,
    proto: &P,
    ports: PortRange,
    listeners: impl IntoIterator<Item = (&'a P, &'a ListenSpec)>,
    own: impl FnOnce(IpAddr) -> bool,
) -> Option<(usize, SocketAddr)> {
    let ip = ip.to_canonical();
    let mut own = Some(own);
    let mut is_own = None;
    for (i, (p, spec)) in listeners.into_iter().enumerate() {
        let (first, last) = (ports.first.max(spec.ports.first), ports.last.min(spec.ports.last));
        if p != proto || first > last || first == 0 {
            continue;
        }
        let hit = spec.ip == ip
            || (spec.ip.is_unspecified()
                && spec.ip.is_ipv4() == ip.is_ipv4()
                && *is_own.get_or_insert_with(|| own.take().is_some_and(|f| f(ip))));
        if hit {
            return Some((i, SocketAddr::new(spec.ip, first)));
        }
    }
    None
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn loopback_unspecified_and_documentation_addresses() {
        for own in ["127.0.0.1", "127.1.2.3", "::1", "::ffff:127.0.0.1", "0.0.0.0", "::"] {
            assert!(is_own(own.parse().unwrap()), "{own}");
        }
        // TEST-NET-3 and the IPv6 documentation prefix are never configured on a real host.
        for other in ["203.0.113.77", "2001:db8::77"] {
            assert!(!is_own(other.parse().unwrap()), "{other}");
        }
    }

    #[test]
    fn traffic_lands_on_a_listener_of_its_address_or_of_the_wildcard_of_an_own_one() {
        let spec = |s: &str| s.parse::<ListenSpec>().unwrap();
        let listeners = [("tcp", spec("0.0.0.0:443")), ("udp", spec("10.0.0.5:3478")), ("tcp", spec("[::]:8000-8010"))];
        let lands = |ip: &str, proto: &str, ports: &str, own: bool| {
            lands_on(ip.parse().unwrap(), &proto, ports.parse().unwrap(), listeners.iter().map(|(p, s)| (p, s)), |_| {
                own
            })
            .map(|(_, addr)| addr)
        };
        assert_eq!(lands("192.0.2.1", "tcp", "443", true), Some("0.0.0.0:443".parse().unwrap()));
        assert_eq!(lands("192.0.2.1", "tcp", "443", false), None, "not this host's");
        assert_eq!(lands("192.0.2.1", "udp", "443", true), None, "another transport");
        assert_eq!(lands("10.0.0.5", "udp", "3478", false), Some("10.0.0.5:3478".parse().unwrap()), "bound to it");
        assert_eq!(lands("10.0.0.6", "udp", "3478", true), None, "bound to another address");
        assert_eq!(lands("2001:db8::1", "tcp", "443", true), None, "the IPv4 wildcard");
        assert_eq!(lands("::1", "tcp", "7000-8002", true), Some("[::]:8000".parse().unwrap()), "ranges overlap");
        assert_eq!(lands("::1", "tcp", "8011", true), None);
        let third = lands_on(
            "::1".parse().unwrap(),
            &"tcp",
            PortRange::single(8001),
            listeners.iter().map(|(p, s)| (p, s)),
            |_| true,
        );
        assert_eq!(third.map(|(i, _)| i), Some(2), "the listener's index");
        let mut asked = 0;
        let any = [("tcp", spec("0.0.0.0:0"))];
        let r = lands_on(
            "127.0.0.1".parse().unwrap(),
            &"tcp",
            PortRange::single(80),
            any.iter().map(|(p, s)| (p, s)),
            |_| {
                asked += 1;
                true
            },
        );
        assert_eq!((r, asked), (None, 0), "any free port is never matched, nor the host asked");
    }
}
