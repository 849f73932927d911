//! `GET /status`: what the ingress is doing, as JSON (schema: `docs/status-ingress.schema.json`,
//! checked by `tests/admin.rs`), with each path's share of new connections (`crate::shares`).

use std::collections::HashMap;
use std::time::Instant;

use serde::Serialize;
use shared::admin::status::Header;

use crate::control::{self, Event};
use crate::pool::{Kind, Path};
use crate::runtime::Shared;
use crate::shares::{key, shares};
use shared::damping::{DampingConfig, Verdict};

/// The version of the JSON shape; bumped when a field changes meaning or goes away.
pub const SCHEMA: u32 = 1;

#[derive(Debug, Serialize)]
pub struct Status {
    /// `schema`, `binary`, `version`, `now_ms`, `started_ms`, `control`.
    #[serde(flatten)]
    pub header: Header,
    /// Client connections open across every service.
    pub open_connections: usize,
    /// Each event loop (`limits.threads`; the main thread's first) and its TCP connections.
    pub threads: Vec<shared::workers::LoopStatus>,
    pub pools: Vec<PoolStatus>,
    pub services: Vec<ServiceStatus>,
    /// The last state changes, newest first.
    pub events: Vec<Event>,
}

#[derive(Debug, Serialize)]
pub struct PoolStatus {
    pub name: String,
    pub balance: &'static str,
    /// `wan` while a WAN path is up, `mesh` while the mesh tier carries the pool, `none`
    /// while neither can: no WAN path up, and no mesh tier or its name has no address
    /// ([`crate::pool::Pool::tier`]).
    pub tier: &'static str,
    pub paths: Vec<PathStatus>,
}

#[derive(Debug, Serialize)]
pub struct PathStatus {
    pub name: String,
    /// The address in use (empty while a path given by name has none).
    pub address: String,
    /// The configured `address`: an IP, or the DNS name the address comes from.
    pub target: String,
    /// A path given by name: when its name was last answered (Unix ms); null otherwise.
    pub refreshed_ms: Option<u64>,
    pub mesh: bool,
    pub up: bool,
    /// `up`, `down`, `held` (flap damping keeps it out while it keeps failing and
    /// recovering), or `drained` (an operator's drain wins over the rest).
    pub state: &'static str,
    /// When the path last went up or down (Unix ms); null: not since start.
    pub since_ms: Option<u64>,
    pub drained: bool,
    /// The weight in force (the override, else the configured one).
    pub weight: u32,
    pub configured_weight: u32,
    pub weight_override: Option<u32>,
    pub health_factor: f64,
    pub latency_ms: Option<f64>,
    pub fail_avg: f64,
    /// Share of the pool's new connections and flows over about the last second / minute.
    pub share_recent: f64,
    pub share_minute: f64,
    /// New connections and flows placed on the path since start.
    pub placed_total: u64,
    pub connections: u64,
    pub flows: u64,
    pub bytes_per_second: u64,
    pub bytes_total: u64,
    /// Transfers in progress at once, on average (what the bandwidth policy reads).
    pub busy: f64,
    /// Held down by flap damping.
    pub held: bool,
    /// Why it is held down, in words; null when it is not.
    pub held_reason: Option<String>,
    /// The flap penalty now (each fall, held or not, adds `flap_penalty`; it halves every
    /// `flap_half_life`).
    pub flap_penalty: f64,
    /// Falls from up to down since start (held or not).
    pub falls: u64,
    /// Delivered quality: the smoothed share of the path's connects, relayed segments and
    /// answered flows' datagrams that went wrong (`crate::quality`; slow is not wrong).
    pub quality_loss: f64,
    /// What that does to its share: `1 / (1 + (quality_loss / 0.05)^2)`, part of
    /// `health_factor`.
    pub quality_factor: f64,
}

#[derive(Debug, Serialize)]
pub struct ServiceStatus {
    pub name: String,
    pub protocol: &'static str,
    pub mode: &'static str,
    pub pool: String,
    pub listen: Vec<String>,
    /// UDP services: flows open now.
    pub flows: Option<usize>,
}

/// The whole status now.
pub fn collect(shared: &Shared) -> Status {
    let rt = shared.runtime();
    let mut counts = HashMap::new();
    for pool in rt.pools.values() {
        for p in &pool.paths {
            counts.insert(key(&pool.name, &p.name), p.control.placed_total());
        }
    }
    let (recent, minute) = shared.shares.sample(Instant::now(), &counts);
    let pools = rt
        .pools
        .values()
        .map(|pool| {
            let recent = shares(&counts, recent.as_ref(), &pool.name, &pool.paths);
            let minute = shares(&counts, minute.as_ref(), &pool.name, &pool.paths);
            PoolStatus {
                name: pool.name.to_string(),
                balance: pool.cfg.balance.as_str(),
                tier: pool.tier(),
                paths: pool
                    .paths
                    .iter()
                    .enumerate()
                    .map(|(i, p)| path_status(p, &pool.cfg.health.damping, recent[i], minute[i]))
                    .collect(),
            }
        })
        .collect();
    let mut services: Vec<ServiceStatus> = rt
        .services
        .values()
        .map(|s| ServiceStatus {
            name: s.cfg.name.clone(),
            protocol: match s.cfg.protocol {
                crate::config::Protocol::Tcp => "tcp",
                crate::config::Protocol::Udp => "udp",
            },
            mode: match s.cfg.mode {
                crate::config::Mode::Plain => "plain",
                crate::config::Mode::Sni => "sni",
                crate::config::Mode::Http => "http",
            },
            pool: s.cfg.pool.clone(),
            listen: s.cfg.listen.iter().map(|l| l.to_string()).collect(),
            flows: (s.cfg.protocol == crate::config::Protocol::Udp).then(|| s.flows.used()),
        })
        .collect();
    services.sort_by(|a, b| a.name.cmp(&b.name));
    Status {
        header: Header {
            schema: SCHEMA,
            binary: "ingress",
            version: env!("CARGO_PKG_VERSION"),
            now_ms: control::now_ms(),
            started_ms: shared.started_ms,
            control: rt.config.admin_token.is_some(),
        },
        open_connections: shared.open_connections(),
        threads: shared.workers.status(),
        pools,
        services,
        events: control::recent(),
    }
}

fn path_status(p: &Path, damping: &DampingConfig, share_recent: f64, share_minute: f64) -> PathStatus {
    let h = p.health_snapshot();
    let drained = p.control.is_drained();
    let d = p.damping_snapshot(damping);
    let held = d.verdict == Verdict::Held;
    let held_reason = held.then(|| {
        format!(
            "flapping: {} falls; penalty {:.0} reached {} and is held until it decays below {} (halving every {:?}): about {:.0}s more unless it falls again meanwhile",
            d.falls,
            d.penalty,
            damping.suppress,
            damping.reuse,
            damping.half_life,
            d.hold_left.unwrap_or_default().as_secs_f64()
        )
    });
    PathStatus {
        name: p.name.to_string(),
        address: address(p),
        target: p.target.to_string(),
        refreshed_ms: p.refreshed().map(|secs| secs.saturating_mul(1000)),
        mesh: p.is_mesh,
        up: p.is_up(),
        state: if drained {
            "drained"
        } else if held {
            "held"
        } else if p.is_up() {
            "up"
        } else {
            "down"
        },
        since_ms: p.control.since_ms(),
        drained,
        weight: p.weight(),
        configured_weight: p.weight,
        weight_override: p.control.weight(),
        health_factor: round(p.factor(), 3),
        latency_ms: p.latency().map(|l| round(l.as_secs_f64() * 1e3, 2)),
        fail_avg: round(h.fail_avg, 3),
        share_recent: round(share_recent, 3),
        share_minute: round(share_minute, 3),
        placed_total: p.control.placed_total(),
        connections: p.active(Kind::Tcp),
        flows: p.active(Kind::Udp),
        bytes_per_second: p.rate(),
        bytes_total: p.bytes_total(),
        busy: round(p.busy(), 3),
        held,
        held_reason,
        flap_penalty: round(d.penalty, 1),
        falls: d.falls,
        quality_loss: round(p.quality_loss(), 4),
        quality_factor: round(p.quality_factor(), 3),
    }
}

fn address(p: &Path) -> String {
    p.ip().map_or_else(String::new, |ip| ip.to_string())
}

fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    if x.is_finite() {
        (x * f).round() / f
    } else {
        0.0
    }
}
