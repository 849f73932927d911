//! The descriptor budget. At start the open-files limit is raised to its hard maximum; what
//! is left after room for listeners, probes and the admin endpoint becomes one pool
//! (`shared::descriptors`) that TCP connections, raced connects, splice pipes and UDP flows
//! all draw from as they open, so a flood meets "refused" at once instead of EMFILE — and
//! the ingress's own exhaustion never looks like a dead WAN. Either kind may take what the
//! other leaves idle, except a floor kept for UDP flows (a sixteenth of the pool, or what
//! the services ask if less): a TCP flood leaves them that, and UDP flows never take more
//! than half. A config asking for more than fits is clamped with a warning, not refused (the
//! same file must run on a 1,024-descriptor laptop and a 65,536-descriptor VPS).

use crate::config::{Config, Protocol};

/// Descriptors kept for the process itself: stdio, the runtime's epoll and wakers, the
/// admin listener and a few of its clients, signal handling, log files.
const RESERVE: u64 = 64;
/// A client connection holds two sockets (a connect raced on a second path takes its third
/// from the pool while it lasts, or is not raced).
pub const FDS_PER_CONNECTION: u32 = 2;
/// Pipes alive at once are wanted for this many moving connections at most (each pipe is
/// two descriptors, taken from the pool when made; beyond the cap or a full pool the relay
/// copies through user space).
const PIPES_WANTED_MAX: u64 = 1024;
/// UDP flows' floor: this part of the pool, at most.
const FLOW_FLOOR_DIVISOR: u64 = 16;

/// What the budget allows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Budget {
    /// The soft open-files limit in force.
    pub open_files: u64,
    /// Descriptors in the shared pool.
    pub pool: u32,
    /// Of those, kept for UDP flows whatever TCP takes.
    pub flow_floor: u32,
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
        // A down path's probes overlap, up to MAX_DOWN_PROBES in flight, each with a second
        // connect racing it after the hedge delay (`health::connect_hedged`), outside the pool
        // (a real connect's background verification takes its own from the pool): during a
        // flood with paths down they must not push the process past its limit.
        let paths: u64 = config.pools.values().map(|p| p.paths.len() as u64 + u64::from(p.mesh.is_some())).sum();
        let reserve = RESERVE + listeners + 2 * u64::from(crate::pool::MAX_DOWN_PROBES) * paths;
        let avail = open_files.saturating_sub(reserve).min(u64::from(u32::MAX));

        // UDP flows may take up to half of the pool (a flow is one descriptor and a relay
        // range asks for a few thousand), and keep a floor of it.
        let want_flows: u64 =
            config.services.iter().filter(|s| s.protocol == Protocol::Udp).map(|s| s.max_flows as u64).sum();
        let flows = want_flows.min(avail / 2);
        let flow_floor = flows.min(avail / FLOW_FLOOR_DIVISOR);
        // Connections: all the pool but the flows' floor. Pipes and raced connects take
        // theirs from the same pool as they come, so the count is an upper bound.
        let want_conns = u64::from(config.max_connections);
        let pipes = want_conns.min(PIPES_WANTED_MAX).min(avail / 10);
        let room = avail.saturating_sub(flow_floor) / u64::from(FDS_PER_CONNECTION);
        let max_connections = want_conns.min(room) as u32;
        Self {
            open_files,
            pool: avail as u32,
            flow_floor: flow_floor as u32,
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
                flow_floor = self.flow_floor,
                pipes = self.pipes,
                "the open-files limit cannot hold the configured limits: scaled down to fit, \
                 connections and flows share what is left (raise LimitNOFILE / ulimit -n, or \
                 lower limits.max_connections and max_flows)"
            );
        } else {
            tracing::info!(
                open_files = self.open_files,
                max_connections = self.max_connections,
                max_flows = self.max_flows,
                flow_floor = self.flow_floor,
                pipes = self.pipes,
                "descriptor budget"
            );
        }
        for (kind, v) in [
            ("open_files", self.open_files as f64),
            ("descriptors", f64::from(self.pool)),
            ("flow_floor", f64::from(self.flow_floor)),
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
        // The pool is what is left after the reserve: the process, 42 listeners, and the
        // probes of 2 paths, every one of them down, each raced by a second connect.
        assert_eq!(b.pool, 20_000 - 64 - 42 - 2 * 8 * 2);
        assert_eq!(b.max_flows, 4096, "the relay range keeps its flows");
        assert_eq!(b.flow_floor, b.pool / 16);
        // Connections may take all but the flows' floor: two descriptors each.
        assert_eq!(b.max_connections, (b.pool - b.flow_floor) / FDS_PER_CONNECTION);
        assert_eq!(b.service_flows(4096), b.max_flows);
        // Nothing at all left: still at least one of each, never zero.
        let b = Budget::plan(10, &c, 1);
        assert_eq!((b.max_connections, b.max_flows), (1, 1));
    }

    /// Flows asking for little keep all of it as their floor; without UDP services, TCP has
    /// the whole pool.
    #[test]
    fn the_flow_floor_is_what_udp_asks_up_to_a_sixteenth() {
        let small = config(
            "[[service]]\nname = \"wg\"\nlisten = [\"0.0.0.0:51820\"]\nprotocol = \"udp\"\npool = \"p\"\nmax_flows = 100\n",
        );
        let b = Budget::plan(20_000, &small, 1);
        assert_eq!((b.flow_floor, b.max_flows), (100, 100));
        assert_eq!(b.max_connections, (b.pool - 100) / 2);
        let b = Budget::plan(20_000, &config(""), 1);
        assert_eq!(b.flow_floor, 0);
        assert_eq!(b.max_connections, b.pool / 2);
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
        // 4 ports x 3 more sockets each: 12 descriptors fewer for the rest.
        assert_eq!(one.pool - four.pool, 12, "{one:?} against {four:?}");
        assert!(four.max_connections < one.max_connections, "{one:?} against {four:?}");
        let plain =
            config("[[service]]\nname = \"u\"\nlisten = [\"0.0.0.0:51820-51823\"]\nprotocol = \"udp\"\npool = \"p\"\n");
        assert_eq!(Budget::plan(10_000, &plain, 1), Budget::plan(10_000, &plain, 4), "one socket a port without it");
    }
}
