//! The local proxy's config loader from TOML text (firewall section included): no panic on
//! any input; what it accepts lies inside the documented ranges, and every stream maps each
//! of its listen ports to an upstream without overflow.

use local_proxy::config::{self, ranges};

fn main() {
    afl::fuzz!(|data: &[u8]| {
        let Ok(text) = std::str::from_utf8(data) else { return };
        let Ok(c) = config::from_toml_str(text) else { return };
        let within = |d, r: shared::ports::DurationRange| d >= r.min && d <= r.max;
        assert!(within(c.wan.proxy_header_timeout, ranges::PROXY_HEADER_TIMEOUT));
        assert!(within(c.http.header_read_timeout, ranges::HEADER_READ_TIMEOUT));
        assert!(within(c.http.tls_handshake_timeout, ranges::TLS_HANDSHAKE_TIMEOUT));
        assert!(within(c.http.idle_timeout, ranges::IDLE_TIMEOUT));
        assert!(within(c.http.upstream_timeout, ranges::UPSTREAM_TIMEOUT));
        assert!(within(c.tls.reload_interval, ranges::RELOAD_INTERVAL));
        for site in &c.sites {
            let u = &site.upstreams;
            assert!(!u.members.is_empty() && u.members.iter().any(|m| !m.backup && m.weight > 0));
            assert!(u.members.iter().all(|m| m.target.authority.port_u16() != Some(0)));
        }
        for s in &c.streams {
            assert!(within(s.idle_timeout, ranges::IDLE_TIMEOUT));
            assert!(within(s.connect_timeout, ranges::CONNECT_TIMEOUT));
            for port in s.listen_ports.iter() {
                for i in 0..s.upstreams.members.len() {
                    assert_ne!(s.upstream_for(i, port).port(), 0);
                }
            }
        }
        if let Some(f) = &c.firewall {
            assert!(f.min_refresh <= f.max_refresh);
            assert!(within(f.lookup_timeout, ranges::LOOKUP_TIMEOUT));
        }
    });
}
