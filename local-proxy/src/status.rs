//! `GET /status`: what the local proxy is doing, as JSON (schema:
//! `docs/status-local-proxy.schema.json`, checked by `tests/admin.rs`): health, every site's
//! and stream's upstreams (up, drained, weight and override, open work), the certificates
//! with days left, ACME's certificates (next attempt, failures, the CA's last error), the
//! firewall allowlist (name → addresses, last answer, failures) and the last operator changes.

use std::sync::atomic::Ordering;

use serde::Serialize;
use shared::admin::page::now_ms;
use shared::admin::status::Header;

use crate::events::Event;
use crate::pool::{Pool, NO_OVERRIDE};
use crate::state::State;

/// The version of the JSON shape; bumped when a field changes meaning or goes away.
pub const SCHEMA: u32 = 1;

#[derive(Debug, Serialize)]
pub struct Status {
    /// `schema`, `binary`, `version`, `now_ms`, `started_ms`, `control`.
    #[serde(flatten)]
    pub header: Header,
    pub healthy: bool,
    /// Why not healthy (what `/healthz` says); null when healthy.
    pub unhealthy: Option<String>,
    /// Each event loop (`threads`; the main thread's first) and its client TCP connections.
    pub threads: Vec<shared::workers::LoopStatus>,
    pub sites: Vec<SetStatus>,
    pub streams: Vec<SetStatus>,
    pub certificates: Vec<CertStatus>,
    /// Null without an `[acme]` section.
    pub acme: Option<AcmeStatus>,
    /// Null without a `[firewall]` section.
    pub firewall: Option<FirewallStatus>,
    /// The last operator changes, newest first.
    pub events: Vec<Event>,
}

/// A site's or stream's upstreams.
#[derive(Debug, Serialize)]
pub struct SetStatus {
    /// The site's host or the stream's name.
    pub name: String,
    /// Streams: `tcp` or `udp` and the listening ports; sites: null.
    pub protocol: Option<String>,
    pub listen_ports: Option<String>,
    pub balance: &'static str,
    pub critical: bool,
    /// UDP streams: flows open now over all the stream's sockets; null for sites and TCP.
    pub flows: Option<u64>,
    /// UDP streams: the stream's `max_flows`; null for sites and TCP.
    pub max_flows: Option<u64>,
    pub upstreams: Vec<UpstreamStatus>,
}

#[derive(Debug, Serialize)]
pub struct UpstreamStatus {
    /// The URL or address as configured.
    pub upstream: String,
    pub up: bool,
    /// `up`, `down`, or `drained` (an operator's drain wins over health).
    pub state: &'static str,
    pub drained: bool,
    pub backup: bool,
    pub weight: u32,
    pub configured_weight: u32,
    pub weight_override: Option<u32>,
    pub fail_avg: f64,
    /// Requests in flight, open connections, UDP flows and upgraded connections.
    pub active: u64,
}

#[derive(Debug, Serialize)]
pub struct CertStatus {
    pub names: Vec<String>,
    pub not_after_ms: u64,
    /// Negative once expired.
    pub days_left: f64,
}

/// What ACME is doing.
#[derive(Debug, Serialize)]
pub struct AcmeStatus {
    /// Why the account cannot be used now (creating or restoring it failed); null when fine.
    pub account_error: Option<String>,
    /// One per certificate ACME keeps (its folder under `live/`), by folder name.
    pub certificates: Vec<AcmeCertStatus>,
}

#[derive(Debug, Serialize)]
pub struct AcmeCertStatus {
    /// The folder under `live/`.
    pub dir: String,
    /// The names it is to cover.
    pub names: Vec<String>,
    /// Expiry of the certificate on disk; null when there is none.
    pub not_after_ms: Option<u64>,
    /// Null when there is no certificate; negative once expired.
    pub days_left: Option<f64>,
    /// When the next order is planned (renewal or retry).
    pub next_attempt_ms: Option<u64>,
    /// Failed orders since the last success.
    pub failures: u32,
    /// The last failure, with the CA's error when it sent one; null after a success.
    pub last_error: Option<String>,
    /// Challenge types answered for the last certificate issued.
    pub last_challenges: Vec<&'static str>,
}

#[derive(Debug, Serialize)]
pub struct FirewallStatus {
    pub table: String,
    /// Protected ports are filtered (false: open until a first DNS answer, or not applied yet).
    pub enforcing: bool,
    /// Addresses in the applied allowlist.
    pub allowed: usize,
    pub static_addresses: Vec<String>,
    pub names: Vec<crate::firewall::status::NameStatus>,
}

/// When the process started (Unix ms), for `/status`.
static STARTED_MS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();

/// Marks the start (the first call wins).
pub fn mark_start() {
    STARTED_MS.get_or_init(now_ms);
}

/// The whole status now.
pub fn collect(state: &State) -> Status {
    let config = state.config.load();
    let pools = state.pools.load();
    let set = |pool: &Pool| SetStatus {
        name: pool.name.to_string(),
        protocol: None,
        listen_ports: None,
        balance: pool.balance.as_str(),
        critical: pool.critical,
        flows: None,
        max_flows: None,
        upstreams: pool.members.iter().map(upstream_status).collect(),
    };
    // Each site, then its routes that have upstreams of their own (named `host#route`).
    let sites = config
        .sites
        .iter()
        .flat_map(|s| {
            let routes = s.routes.iter().filter(|r| r.upstreams.is_some()).map(|r| pools.route(&s.host, &r.name));
            std::iter::once(pools.site(&s.host)).chain(routes)
        })
        .flatten()
        .map(|p| set(p))
        .collect();
    let streams = config
        .streams
        .iter()
        .filter_map(|s| {
            let mut out = set(pools.stream(&s.name)?);
            out.protocol = Some(s.protocol.to_string());
            out.listen_ports = Some(s.listen_ports.to_string());
            if s.protocol == crate::config::Protocol::Udp {
                out.flows = Some(crate::stream::udp::open_flows(&s.name) as u64);
                out.max_flows = Some(s.max_flows as u64);
            }
            Some(out)
        })
        .collect();
    let now = now_ms();
    let certificates = state
        .certs
        .certificates()
        .into_iter()
        .map(|(names, not_after)| {
            let not_after_ms = u64::try_from(not_after).unwrap_or(0).saturating_mul(1000);
            CertStatus {
                names,
                not_after_ms,
                days_left: ((not_after_ms as f64 - now as f64) / 86_400_000.0 * 10.0).round() / 10.0,
            }
        })
        .collect();
    let firewall = config.firewall.as_ref().map(|fw| {
        let live = crate::firewall::status::snapshot().unwrap_or_default();
        // Every configured name is listed, answered or not yet.
        let names =
            fw.ingress_names
                .iter()
                .map(|n| {
                    live.names.iter().find(|s| s.name == *n).cloned().unwrap_or_else(|| {
                        crate::firewall::status::NameStatus { name: n.clone(), ..Default::default() }
                    })
                })
                .collect();
        FirewallStatus {
            table: fw.table.clone(),
            enforcing: live.enforcing,
            allowed: live.allowed,
            static_addresses: fw.static_addresses.iter().map(crate::firewall::ruleset::element_text).collect(),
            names,
        }
    });
    let unix_ms = |t: i64| u64::try_from(t).unwrap_or(0).saturating_mul(1000);
    let acme = config.acme.as_ref().map(|_| AcmeStatus {
        account_error: state.acme.account_error(),
        certificates: state
            .acme
            .status()
            .into_iter()
            .map(|(dir, c)| AcmeCertStatus {
                dir,
                // To the 1.4 minutes (short-lived certificates too).
                days_left: c
                    .not_after
                    .map(|t| ((unix_ms(t) as f64 - now as f64) / 86_400_000.0 * 1000.0).round() / 1000.0),
                not_after_ms: c.not_after.map(unix_ms),
                next_attempt_ms: c.next_attempt.map(unix_ms),
                names: c.names,
                failures: c.failures,
                last_error: c.last_error,
                last_challenges: c.last_challenges,
            })
            .collect(),
    });
    let health = state.health();
    Status {
        header: Header {
            schema: SCHEMA,
            binary: "local-proxy",
            version: env!("CARGO_PKG_VERSION"),
            now_ms: now,
            started_ms: STARTED_MS.get().copied().unwrap_or(now),
            control: config.admin_token.is_some(),
        },
        healthy: health.is_ok(),
        unhealthy: health.err(),
        threads: state.workers.status(),
        sites,
        streams,
        certificates,
        acme,
        firewall,
        events: crate::events::newest_first(),
    }
}

fn upstream_status(m: &crate::pool::Member) -> UpstreamStatus {
    let drained = m.state.drain.load(Ordering::Relaxed);
    let weight_override = match m.state.weight_override.load(Ordering::Relaxed) {
        NO_OVERRIDE => None,
        w => Some(w),
    };
    let up = m.state.is_up();
    UpstreamStatus {
        upstream: m.label.to_string(),
        up,
        state: if drained {
            "drained"
        } else if up {
            "up"
        } else {
            "down"
        },
        drained,
        backup: m.backup,
        weight: weight_override.unwrap_or(m.weight),
        configured_weight: m.weight,
        weight_override,
        fail_avg: (m.state.health_snapshot().fail_avg * 1000.0).round() / 1000.0,
        active: m.state.active(),
    }
}

/// The one line `systemctl status` shows (STATUS=): sites and streams with an upstream up,
/// upstreams up, UDP flows, the soonest certificate end, the firewall, and why the proxy is
/// unhealthy when it is.
pub fn summary(s: &Status) -> String {
    let sets = |list: &[SetStatus]| {
        // `sites` also lists the pools of routes with upstreams of their own (`host#route`):
        // their upstreams count, but they are not sites of their own.
        let own = || list.iter().filter(|x| !x.name.contains('#'));
        let serving = own().filter(|x| x.upstreams.iter().any(|u| u.state == "up")).count();
        let ups: Vec<&UpstreamStatus> = list.iter().flat_map(|x| &x.upstreams).collect();
        let up = ups.iter().filter(|u| u.state == "up").count();
        (serving, own().count(), up, ups.len())
    };
    let mut parts = Vec::new();
    if !s.sites.is_empty() {
        let (serving, n, up, all) = sets(&s.sites);
        parts.push(format!("sites {serving}/{n} serving (upstreams {up}/{all} up)"));
    }
    if !s.streams.is_empty() {
        let (serving, n, up, all) = sets(&s.streams);
        let flows: u64 = s.streams.iter().filter_map(|x| x.flows).sum();
        parts.push(format!("streams {serving}/{n} serving (upstreams {up}/{all} up, {flows} UDP flows)"));
    }
    match s.certificates.iter().map(|c| c.days_left).reduce(f64::min) {
        Some(days) => parts.push(format!("{} certificate(s), soonest ends in {days:.0} days", s.certificates.len())),
        None if !s.sites.is_empty() => parts.push("no certificate".into()),
        None => {}
    }
    if let Some(acme) = &s.acme {
        let failing = acme.certificates.iter().filter(|c| c.failures > 0).count();
        if acme.account_error.is_some() {
            parts.push("ACME account failing".into());
        } else if failing > 0 {
            parts.push(format!("ACME: {failing} certificate(s) failing"));
        }
    }
    parts.push(match &s.firewall {
        None => "firewall off".into(),
        Some(f) if f.enforcing => format!("firewall enforcing ({} addresses)", f.allowed),
        Some(_) => "firewall OPEN (no ingress name answered yet)".into(),
    });
    let line = parts.join("; ");
    match &s.unhealthy {
        Some(why) => format!("UNHEALTHY: {why}; {line}"),
        None => line,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(name: &str, states: &[&'static str]) -> SetStatus {
        let upstream = |state: &'static str| UpstreamStatus {
            upstream: "http://192.0.2.1:80".into(),
            up: state == "up",
            state,
            drained: state == "drained",
            backup: false,
            weight: 1,
            configured_weight: 1,
            weight_override: None,
            fail_avg: 0.0,
            active: 0,
        };
        SetStatus {
            name: name.into(),
            protocol: None,
            listen_ports: None,
            balance: "round_robin",
            critical: false,
            flows: None,
            max_flows: None,
            upstreams: states.iter().map(|s| upstream(s)).collect(),
        }
    }

    /// A route's own pool (`host#route`) adds its upstreams to the count, not a site: two
    /// sites, one serving, whatever their routes' pools say.
    #[test]
    fn route_pools_are_not_counted_as_sites() {
        let s = Status {
            header: Header {
                schema: SCHEMA,
                binary: "local-proxy",
                version: "0",
                now_ms: 0,
                started_ms: 0,
                control: false,
            },
            healthy: true,
            unhealthy: None,
            threads: Vec::new(),
            sites: vec![
                set("a.example.org", &["up", "down"]),
                set("a.example.org#api", &["up"]),
                set("b.example.org", &["down"]),
                set("b.example.org#photos", &["up"]),
            ],
            streams: vec![],
            certificates: vec![],
            acme: None,
            firewall: None,
            events: vec![],
        };
        assert_eq!(summary(&s), "sites 1/2 serving (upstreams 3/5 up); no certificate; firewall off");
    }
}
