//! What every connection task shares: the current config generation, routes, trusted
//! peers, certificates and limits. Swappable parts live behind `ArcSwap`.

use std::sync::Arc;

use arc_swap::ArcSwap;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::http::Routes;
use crate::pool::Pools;
use crate::tls::CertStore;
use crate::trust::TrustedPeers;

/// Shared runtime state of one running proxy.
#[derive(Debug)]
pub struct State {
    pub config: ArcSwap<Config>,
    pub routes: ArcSwap<Routes>,
    /// The upstream pools of every site and stream (the routes hold the sites' too).
    pub pools: ArcSwap<Pools>,
    /// The streams' access log writers (`stream::log`), by stream name.
    pub stream_logs: ArcSwap<crate::stream::log::StreamLogs>,
    pub trusted: Arc<TrustedPeers>,
    pub certs: Arc<CertStore>,
    /// ACME certificates' status (empty while `[acme]` is off).
    pub acme: Arc<crate::acme::Acme>,
    pub tls: Arc<rustls::ServerConfig>,
    /// One permit per open client connection over all TCP listeners.
    pub conn_limit: Arc<Semaphore>,
    /// One more per direct mesh client's connection (`mesh.max_connections`).
    pub mesh_conn_limit: Arc<Semaphore>,
    pub shutdown: CancellationToken,
    pub metrics: PrometheusHandle,
    /// The event loops client connections run on (`shared::workers`; one when not started
    /// with more).
    pub workers: shared::workers::Workers,
}

impl State {
    /// Whether the proxy can serve: with sites configured it needs at least one certificate,
    /// and every `critical` site or stream needs a usable upstream.
    pub fn health(&self) -> Result<(), String> {
        if !self.config.load().sites.is_empty() && self.certs.is_empty() {
            return Err("no certificate loaded".into());
        }
        match self.pools.load().critical_down() {
            Some(why) => Err(why),
            None => Ok(()),
        }
    }
}
