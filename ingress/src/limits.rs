//! The descriptor budget. At start the open-files limit is raised to its hard maximum; the
//! connection, UDP flow and pipe limits are then derived from it with room for listeners,
//! probes and the admin endpoint, so a flood meets "refused" at once instead of EMFILE —
//! and the ingress's own exhaustion never looks like a dead WAN. A config asking for more
//! than fits is clamped with a warning, not refused (the same file must run on a
//! 1,024-descriptor laptop and a 65,536-descriptor VPS): UDP flows keep their caps up to
//! half the descriptors, pipes get up to a tenth, connections the rest.

use crate::config::{Config, Protocol};

/// Descriptors kept for the process itself: stdio, the runtime's epoll and wakers, the
/// admin listener and a few of its clients, signal handling, log files.
const RESERVE: u64 = 64;
/// A client connection holds two sockets; a hedged connect briefly a third.
const FDS_PER_CONNECTION: f64 = 2.2;
/// Pipes alive at once are wanted for this many moving connections at most (each pipe is
/// two descriptors; beyond the budget the relay copies through user space).
const PIPES_WANTED_MAX: u64 = 1024;

/// What the budget allows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Budget {
    /// The soft open-files limit in force.
    pub open_files: u64,
    pub max_connections: u32,
    /// Every UDP service's `max_flows` is multiplied by this (1 unless clamped).
    pub flow_scale: f64,
    /// Flows across all UDP services and ports.
    pub max_flows: usize,
    /// Pipes alive at once.
    pub pipes: usize,
    pub clamped: bool,
}

impl Budget {
    /// The limits `config` gets under `open_files` descriptors, served by `loops` event loops
    /// (a port with `udp_reuseport` has a socket on each).
    pub fn plan(open_files: u64, config: &Config, loops: usize) -> Self {
        let listeners: u64 = config
            .services
            .iter()
            .map(|s| {
                let ports = s.listen.iter().map(|l| l.addrs().count() as u64).sum::<u64>();
                ports * s.sockets_per_port(loops) as u64
            })
            .sum();
        // A probe and a background verification may be in flight per path.
        let paths: u64 = config.pools.values().map(|p| p.paths.len() as u64 + u64::from(p.mesh.is_some())).sum();
        let reserve = RESERVE + listeners + 2 * paths;
        let avail = open_files.saturating_sub(reserve);

        // UDP flows first, up to half of what is left (a flow is one descriptor and a relay
        // range asks for few thousand); pipes up to a tenth; connections get the rest.
        let want_flows: u64 =
            config.services.iter().filter(|s| s.protocol == Protocol::Udp).map(|s| s.max_flows as u64).sum();
        let flows = want_flows.min(avail / 2);
        let want_conns = u64::from(config.max_connections);
        let pipes = want_conns.min(PIPES_WANTED_MAX).min(avail / 10);
        let room = avail.saturating_sub(flows + 2 * pipes) as f64 / FDS_PER_CONNECTION;
        let max_connections = (want_conns as f64).min(room) as u32;
        Self {
            open_files,
            max_connections: max_connections.max(1),
            flow_scale: if want_flows == 0 { 1.0 } else { flows as f64 / want_flows as f64 },
            max_flows: (flows as usize).max(1),
            pipes: (pipes as usize).max(8),
            clamped: flows < want_flows || max_connections < config.max_connections,
        }
    }

    /// A service's flow cap under this budget.
    pub fn service_flows(&self, max_flows: usize) -> usize {
        ((max_flows as f64 * self.flow_scale) as usize).max(1)
    }

    /// Say what the budget is, and warn when the config asked for more.
    pub fn log(&self, config: &Config) {
        if self.clamped {
            tracing::warn!(
                open_files = self.open_files,
                max_connections = self.max_connections,
                asked = config.max_connections,
                max_flows = self.max_flows,
                pipes = self.pipes,
                "the open-files limit cannot hold the configured limits: all scaled down to fit \
                 (raise LimitNOFILE / ulimit -n, or lower limits.max_connections and max_flows)"
            );
        } else {
            tracing::info!(
                open_files = self.open_files,
                max_connections = self.max_connections,
                max_flows = self.max_flows,
                pipes = self.pipes,
                "descriptor budget"
            );
        }
        for (kind, v) in [
            ("open_files", self.open_files as f64),
            ("connections", f64::from(self.max_connections)),
            ("flows", self.max_flows as f64),
            ("pipes", self.pipes as f64),
        ] {
            metrics::gauge!(crate::metrics::LIMITS, "kind" => kind).set(v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Config {
        let toml = format!(
            "[pool.p]\npaths = [{{ name = \"a\", address = \"192.0.2.1\" }}, {{ name = \"b\", address = \"192.0.2.2\" }}]\n\
             [[service]]\nname = \"t\"\nlisten = [\"0.0.0.0:80\"]\npool = \"p\"\n{extra}"
        );
        Config::from_toml(&toml).expect("valid")
    }

    #[test]
    fn a_roomy_limit_changes_nothing() {
        let b = Budget::plan(1 << 20, &config(""), 1);
        assert!(!b.clamped);
        assert_eq!(b.max_connections, 20_000);
        assert_eq!(b.pipes, 1024);
    }

    #[test]
    fn a_tight_limit_scales_everything_to_fit() {
        let c = config(
            "[[service]]\nname = \"u\"\nlisten = [\"0.0.0.0:49160-49200\"]\nprotocol = \"udp\"\npool = \"p\"\nmax_flows = 4096\n",
        );
        let b = Budget::plan(20_000, &c, 1);
        assert!(b.clamped);
        // Everything it may open fits in what is left after the reserve.
        let used = f64::from(b.max_connections) * FDS_PER_CONNECTION + b.max_flows as f64 + 2.0 * b.pipes as f64;
        assert!(used <= 20_000.0 - 64.0 - 42.0 - 4.0, "{b:?} uses {used}");
        assert_eq!(b.max_flows, 4096, "the relay range keeps its flows");
        assert!(b.max_connections > 6_000 && b.max_connections < 8_000, "{b:?}");
        assert_eq!(b.service_flows(4096), b.max_flows);
        // Nothing at all left: still at least one of each, never zero.
        let b = Budget::plan(10, &c, 1);
        assert_eq!((b.max_connections, b.max_flows), (1, 1));
    }

    /// The process's flow budget holds every service's share, scaled down or not: a flood
    /// that fills one service's share never takes a slot another service's client needs.
    #[test]
    fn every_services_flow_share_fits_in_the_process_budget() {
        let c = config(
            "[[service]]\nname = \"turn\"\nlisten = [\"0.0.0.0:49160-49200\"]\nprotocol = \"udp\"\npool = \"p\"\nmax_flows = 4096\n\
             [[service]]\nname = \"dns\"\nlisten = [\"0.0.0.0:53\"]\nprotocol = \"udp\"\npool = \"p\"\nmax_flows = 1000\n\
             [[service]]\nname = \"wg\"\nlisten = [\"0.0.0.0:51820\"]\nprotocol = \"udp\"\npool = \"p\"\nmax_flows = 7\n",
        );
        for open_files in [1 << 20, 20_000, 6_000, 1_000] {
            let b = Budget::plan(open_files, &c, 1);
            let shares: Vec<usize> = [4096, 1000, 7].into_iter().map(|f| b.service_flows(f)).collect();
            assert!(shares.iter().all(|&s| s >= 1), "{open_files}: {shares:?}");
            assert!(shares.iter().sum::<usize>() <= b.max_flows, "{open_files}: {shares:?} against {b:?}");
        }
    }

    /// A port with `udp_reuseport` holds a socket per loop, and the budget counts each.
    #[test]
    fn reuseport_ports_count_a_socket_per_loop() {
        let c = config(
            "[[service]]\nname = \"u\"\nlisten = [\"0.0.0.0:51820-51823\"]\nprotocol = \"udp\"\npool = \"p\"\nudp_reuseport = true\n",
        );
        let (one, four) = (Budget::plan(10_000, &c, 1), Budget::plan(10_000, &c, 4));
        let room =
            |b: &Budget| f64::from(b.max_connections) * FDS_PER_CONNECTION + b.max_flows as f64 + 2.0 * b.pipes as f64;
        // 4 ports x 3 more sockets each: 12 descriptors fewer for the rest (less what the
        // whole connections and pipes it is rounded down to leave over).
        assert!(four.max_connections < one.max_connections, "{one:?} against {four:?}");
        assert!(room(&one) - room(&four) >= 10.0, "{one:?} against {four:?}");
        let plain =
            config("[[service]]\nname = \"u\"\nlisten = [\"0.0.0.0:51820-51823\"]\nprotocol = \"udp\"\npool = \"p\"\n");
        assert_eq!(Budget::plan(10_000, &plain, 1), Budget::plan(10_000, &plain, 4), "one socket a port without it");
    }
}
