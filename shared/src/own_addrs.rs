//! Whether an address is this host's own: where a connection to it lands back on this
//! machine (its network namespace). Used to refuse a path that would lead a proxy's traffic
//! back into its own listeners.

use std::net::IpAddr;

/// Loopback (all of 127/8 and ::1, IPv4-mapped forms included), the unspecified address
/// (which Linux connects to locally), or an address an interface has now. An interface list
/// that cannot be read counts as no match: the check guards against a misconfiguration and
/// must never take a working path away.
pub fn is_own(ip: IpAddr) -> bool {
    let ip = ip.to_canonical();
    if ip.is_loopback() || ip.is_unspecified() {
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
}
