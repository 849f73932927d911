//! The ingress config loader from TOML text: no panic on any input, and what it accepts
//! lies inside the documented ranges (what the running server relies on not to overflow).

use ingress::config::ranges;

fn main() {
    afl::fuzz!(|data: &[u8]| {
        let Ok(text) = std::str::from_utf8(data) else { return };
        let Ok(c) = ingress::Config::from_toml(text) else { return };
        let within = |d, r: shared::ports::DurationRange| d >= r.min && d <= r.max;
        assert!(within(c.drain_timeout, ranges::DRAIN_TIMEOUT));
        assert!(c.max_connections >= 1 && c.max_connections <= ranges::MAX_COUNT);
        for p in c.pools.values() {
            assert!(p.paths.len() + usize::from(p.mesh.is_some()) <= ingress::pool::MAX_PATHS);
            assert!(within(p.health.interval, ranges::HEALTH_INTERVAL));
            assert!(within(p.health.timeout, ranges::HEALTH_TIMEOUT));
            assert!(within(p.connect_timeout, ranges::CONNECT_TIMEOUT));
            assert!(within(p.final_connect_timeout, ranges::FINAL_CONNECT_TIMEOUT));
            assert!(p.paths.iter().chain(p.mesh.iter()).all(|path| path.port != Some(0)));
        }
        for s in &c.services {
            assert!(within(s.idle_timeout, ranges::IDLE_TIMEOUT));
            assert!(within(s.peek_timeout, ranges::PEEK_TIMEOUT));
            assert_ne!(s.upstream_port, Some(0));
        }
    });
}
