//! Metric names (one place, bounded labels: pool, path, service, direction; never client
//! addresses) and the Prometheus recorder behind the admin listener.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::pool::Pool;
use crate::runtime::Runtime;

pub const PATH_UP: &str = "ingress_path_up";
pub const PATH_HEALTH_FACTOR: &str = "ingress_path_health_factor";
/// Open TCP connections per path.
pub const PATH_ACTIVE: &str = "ingress_path_active_connections";
/// Open UDP flows per path (balanced apart from TCP connections).
pub const PATH_ACTIVE_FLOWS: &str = "ingress_path_active_flows";
/// Smoothed bytes per second relayed either way per path (what the bandwidth policy reads).
pub const PATH_RATE: &str = "ingress_path_bytes_per_second";
/// 1 while the path has an address (a path given by name may have none), else 0.
pub const PATH_HAS_ADDRESS: &str = "ingress_path_has_address";
/// A path given by name moved to another address (or lost its address).
pub const PATH_ADDRESS_CHANGES: &str = "ingress_path_address_changes_total";
/// Lookups of a path's name by result: answer, no_record (NXDOMAIN or no data), failed.
pub const PATH_DNS_LOOKUPS: &str = "ingress_path_dns_lookups_total";
/// 1 while a path's name answers an address of this host on a port this ingress listens on
/// (not used: traffic there would loop back in), else 0.
pub const PATH_DNS_LEADS_BACK: &str = "ingress_path_dns_leads_back";
/// Unix time of the last answer (addresses or "no record") for a path's name.
pub const PATH_DNS_REFRESHED: &str = "ingress_path_dns_refreshed_timestamp_seconds";
pub const PATH_CONNECTS: &str = "ingress_path_connects_total";
pub const PATH_CONNECT_FAILURES: &str = "ingress_path_connect_failures_total";
/// Connects the home answered with a reset (nothing listens on that port there, or not yet):
/// the path reached home, so they count neither toward its fall nor against its quality; the
/// client's connect moves on to the next path.
pub const PATH_CONNECTS_REFUSED: &str = "ingress_path_connects_refused_total";
pub const PATH_BYTES: &str = "ingress_path_bytes_total";
/// Races started because this path had not answered within a few times its usual latency.
pub const PATH_HEDGES: &str = "ingress_path_hedges_total";
pub const PATH_PROBE_FAILURES: &str = "ingress_path_probe_failures_total";
/// UDP flows of services with `udp_expect_replies` whose replies stopped while they kept
/// sending (each counts as one failure of the path and triggers a probe at once).
pub const PATH_UDP_SILENCES: &str = "ingress_path_udp_reply_silences_total";
/// Segments the ingress retransmitted on relayed upstream connections (`TCP_INFO`, read
/// when each connection ends).
pub const PATH_RETRANSMITS: &str = "ingress_path_retransmitted_segments_total";
/// Delivered quality: the smoothed share of attempts on the path that went wrong (raced or
/// failed connects, retransmitted segments, unanswered UDP datagrams), 0..1; the health
/// factor is scaled by 1 / (1 + (this / 0.05)^2).
pub const PATH_QUALITY_LOSS: &str = "ingress_path_quality_loss";
/// 1 while flap damping holds the path down (it keeps failing and recovering).
pub const PATH_HELD: &str = "ingress_path_held";
/// The path's flap penalty now (decays by half every `flap_half_life`).
pub const PATH_FLAP_PENALTY: &str = "ingress_path_flap_penalty";
/// Changes of the path's state as the pool uses it, by the state entered (`to`: up, down, held).
pub const PATH_STATE_CHANGES: &str = "ingress_path_state_changes_total";
/// Whole seconds the path spent in each state (`state`: up, down, held).
pub const PATH_STATE_SECONDS: &str = "ingress_path_state_seconds_total";
/// This process ran out of descriptors or memory (label `at`: accept, connect, probe,
/// udp_socket, pipe: a relay copied through user space instead of splicing); never counted
/// as a path failure.
pub const LOCAL_RESOURCE_ERRORS: &str = "ingress_local_resource_errors_total";
/// The descriptor budget (label `kind`: open_files, descriptors (the shared pool),
/// flow_floor (kept for UDP flows), connections, flows, pipes).
pub const LIMITS: &str = "ingress_limit";
pub const MESH_FAILOVERS: &str = "ingress_mesh_failovers_total";
pub const POOL_ON_MESH: &str = "ingress_pool_on_mesh";
pub const LISTENER_ACCEPTED: &str = "ingress_listener_accepted_total";
pub const LISTENER_REFUSED: &str = "ingress_listener_refused_total";
pub const SERVICE_ACTIVE: &str = "ingress_service_active_connections";
pub const SERVICE_CONNECT_GIVEUPS: &str = "ingress_service_upstream_unavailable_total";
pub const SERVICE_ROUTE_FAILURES: &str = "ingress_service_route_failures_total";
/// Client connections open across every service.
pub const OPEN_CONNECTIONS: &str = "ingress_open_connections";
pub const RELOADS: &str = "ingress_config_reloads_total";
/// Runtime control requests refused (label `reason`: missing, wrong token).
pub const ADMIN_UNAUTHORIZED: &str = "ingress_admin_unauthorized_total";
/// Admin connections closed at accept: 64 were open already.
pub const ADMIN_REFUSED: &str = "ingress_admin_connections_refused_total";
/// Runtime control changes applied (label `action`: drain, undrain, weight).
pub const ADMIN_CONTROL: &str = "ingress_admin_control_total";
pub const UDP_FLOWS_ACTIVE: &str = "ingress_udp_flows_active";
pub const UDP_FLOWS_CREATED: &str = "ingress_udp_flows_created_total";
pub const UDP_FLOWS_EXPIRED: &str = "ingress_udp_flows_expired_total";
pub const UDP_FLOWS_EVICTED: &str = "ingress_udp_flows_evicted_total";
/// UDP flows moved off their path (label `reason`: path_down, address_moved, reload, wan_back:
/// off the mesh tier once a WAN path is up again).
pub const UDP_FLOWS_MIGRATED: &str = "ingress_udp_flows_migrated_total";
pub const UDP_DATAGRAMS: &str = "ingress_udp_datagrams_total";
pub const UDP_BYTES: &str = "ingress_udp_bytes_total";
/// UDP datagrams dropped (label `reason`: flow_cap, source_share, no_path, resources — the flow
/// socket could not be made on our side —, send_failed, proxy_header — a client's datagram
/// that starts with a PROXY v2 header, on a service that adds none).
pub const UDP_DROPS: &str = "ingress_udp_drops_total";

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Install the process-wide recorder once; later calls (tests running several servers in
/// one process) reuse it.
pub fn install() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new().install_recorder().ok();
            // Present from the start at 0: an alert on a counter's increase misses the event
            // that creates it (Prometheus has no earlier sample), and a refused reload or a
            // refused control request is often a single one.
            for result in ["applied", "refused"] {
                metrics::counter!(RELOADS, "result" => result).increment(0);
            }
            for denied in shared::admin::token::Denied::ALL {
                metrics::counter!(ADMIN_UNAUTHORIZED, "reason" => denied.as_str()).increment(0);
            }
            handle
        })
        .as_ref()
}

/// The Prometheus text exposition of every metric.
pub fn render() -> String {
    install().map(|h| h.render()).unwrap_or_default()
}

/// [`render`] without the series of pools, paths and services `rt` does not run: removed by
/// a reload, or built by one that was refused (`shared::admin::series`). A `path` is looked
/// for in its `pool`, or in any pool when the series names none (a UDP service's).
pub fn render_running(rt: &Runtime) -> String {
    shared::admin::series::retain(&render(), |l| {
        let pool = l.get("pool");
        let pool_runs = pool.as_deref().is_none_or(|p| rt.pools.contains_key(p));
        let path_runs = l.get("path").is_none_or(|path| {
            let has = |p: &Pool| p.paths.iter().any(|x| *x.name == *path);
            match pool.as_deref() {
                Some(p) => rt.pools.get(p).is_some_and(|p| has(p)),
                None => rt.pools.values().any(|p| has(p)),
            }
        });
        pool_runs && path_runs && l.get("service").is_none_or(|s| rt.services.contains_key(&*s))
    })
}

/// Why a connection of an SNI- or Host-routed service found no pool: the `reason` of
/// `ingress_service_route_failures_total`. A name no route takes is the operator's to add; a
/// flood of malformed hellos or of slow clients is someone else's, and told apart here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteFailure {
    NoRoute,
    NotTls,
    NotHttp,
    TooLong,
    Malformed,
    Closed,
    ReadError,
    Timeout,
    /// A plain service's client whose stream starts with a PROXY header (see `tcp`).
    ProxyHeader,
}

impl RouteFailure {
    pub const ALL: [RouteFailure; 9] = [
        Self::NoRoute,
        Self::NotTls,
        Self::NotHttp,
        Self::TooLong,
        Self::Malformed,
        Self::Closed,
        Self::ReadError,
        Self::Timeout,
        Self::ProxyHeader,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoRoute => "no_route",
            Self::NotTls => "not_tls",
            Self::NotHttp => "not_http",
            Self::TooLong => "too_long",
            Self::Malformed => "malformed",
            Self::Closed => "closed",
            Self::ReadError => "read_error",
            Self::Timeout => "timeout",
            Self::ProxyHeader => "proxy_header",
        }
    }
}
