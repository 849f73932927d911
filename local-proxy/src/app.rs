//! Wiring: `start` takes a validated config, already-bound listeners and a shutdown token,
//! spawns every task, and returns a [`Server`] whose [`Handle`] applies config reloads.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::config::Config;
use crate::http::routes::RoutesError;
use crate::http::Routes;
use crate::listeners::Listeners;
use crate::metrics::names;
use crate::state::State;
use crate::tls::{self, CertStore};
use crate::trust::{TrustedPeers, CONFIG_SOURCE};
use crate::{accept, admin, stream};

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Routes(#[from] RoutesError),
    #[error(transparent)]
    Tls(#[from] tls::ConfigError),
    #[error("firewall: {0}")]
    Firewall(#[from] crate::firewall::Error),
}

/// Why a reload was refused; the running config stays.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Routes(#[from] RoutesError),
}

/// A running proxy.
#[derive(Debug)]
pub struct Server {
    handle: Handle,
    /// Accept loops, UDP sockets, pollers: they end on shutdown.
    tasks: TaskTracker,
    /// Client connections: drained on shutdown.
    conns: TaskTracker,
}

/// Control of a running proxy (cheap to clone).
#[derive(Debug, Clone)]
pub struct Handle {
    state: Arc<State>,
    tasks: TaskTracker,
    conns: TaskTracker,
}

/// Start serving. Must be called inside a tokio runtime.
pub fn start(config: Config, mut listeners: Listeners, shutdown: CancellationToken) -> Result<Server, StartError> {
    let metrics = crate::metrics::install();
    let trusted = Arc::new(TrustedPeers::new());
    trusted.set_source(CONFIG_SOURCE, config.wan.trusted_ingress.iter().copied());
    // The allowlist table goes in before any listener serves; it also feeds `trusted`.
    let firewall = match config.firewall.clone() {
        Some(fw) => Some(crate::firewall::start(fw, trusted.clone(), shutdown.clone())?),
        None => None,
    };
    let certs = Arc::new(CertStore::new());
    certs.set_sources(&config.tls);
    let routes = Routes::build(&config)?;
    let state = Arc::new(State {
        tls: tls::server_config(certs.clone())?,
        conn_limit: Arc::new(Semaphore::new(config.http.max_connections)),
        config: ArcSwap::from_pointee(config),
        routes: ArcSwap::from_pointee(routes),
        trusted,
        certs: certs.clone(),
        shutdown: shutdown.clone(),
        metrics,
    });
    publish_health(&state);

    let tasks = TaskTracker::new();
    // Connection tasks go on their own tracker so shutdown can drain them separately.
    let conns = TaskTracker::new();
    let handle = Handle { state: state.clone(), tasks: tasks.clone(), conns: conns.clone() };
    if let Some(l) = listeners.admin.take() {
        tasks.spawn(admin::serve(l, state.clone(), conns.clone()));
    }
    handle.serve(listeners);
    tasks.spawn(certs.watch(shutdown.clone()));
    if let Some(task) = firewall {
        tasks.spawn(task);
    }
    {
        let state = state.clone();
        tasks.spawn(async move {
            // Health follows certificate renewals; sample it for the gauge.
            loop {
                tokio::select! {
                    _ = state.shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(5)) => publish_health(&state),
                }
            }
        });
    }
    Ok(Server { handle, tasks, conns })
}

fn publish_health(state: &State) {
    let up = if state.health().is_ok() { 1.0 } else { 0.0 };
    metrics::gauge!(names::HEALTHY).set(up);
}

impl Server {
    pub fn handle(&self) -> Handle {
        self.handle.clone()
    }

    /// Wait for shutdown, then give open connections up to `drain` to finish.
    pub async fn wait(self, drain: Duration) {
        self.handle.state.shutdown.cancelled().await;
        self.tasks.close();
        self.tasks.wait().await;
        // No accept loop is left to add connections.
        self.conns.close();
        if tokio::time::timeout(drain, self.conns.wait()).await.is_err() {
            warn!(?drain, "connections still open after the drain deadline; leaving");
        }
    }
}

impl Handle {
    /// Serve more bound listeners (the mesh address learnt after start-up). The admin
    /// listener, if any, is ignored here.
    pub fn serve(&self, listeners: Listeners) {
        for bound in listeners.tcp {
            self.tasks.spawn(accept::accept_loop(bound, self.state.clone(), self.conns.clone()));
        }
        for bound in listeners.udp {
            self.tasks.spawn(stream::udp::serve(bound, self.state.clone()));
        }
    }

    /// The current configuration.
    pub fn config(&self) -> Arc<Config> {
        self.state.config.load_full()
    }

    /// Whether shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.state.shutdown.is_cancelled()
    }

    /// Apply a new validated config to new connections; established ones keep theirs.
    /// Listener changes (addresses, ports, streams added) need a restart and are logged.
    pub fn reload(&self, new: Config) -> Result<(), ReloadError> {
        let routes = match Routes::build(&new) {
            Ok(r) => r,
            Err(e) => {
                metrics::counter!(names::CONFIG_RELOADS, "result" => "invalid").increment(1);
                return Err(e.into());
            }
        };
        let old = self.state.config.load_full();
        for what in needs_restart(&old, &new) {
            warn!(change = what, "this change takes effect only after a restart");
        }
        if new.http.max_connections > old.http.max_connections {
            self.state.conn_limit.add_permits(new.http.max_connections - old.http.max_connections);
        } else {
            self.state.conn_limit.forget_permits(old.http.max_connections - new.http.max_connections);
        }
        self.state.trusted.set_source(CONFIG_SOURCE, new.wan.trusted_ingress.iter().copied());
        self.state.routes.store(Arc::new(routes));
        let tls = new.tls.clone();
        self.state.config.store(Arc::new(new));
        self.state.certs.set_sources(&tls);
        publish_health(&self.state);
        metrics::counter!(names::CONFIG_RELOADS, "result" => "ok").increment(1);
        info!("configuration reloaded");
        Ok(())
    }

    /// The trusted-ingress set, for feeders such as the DNS-driven firewall.
    pub fn trusted(&self) -> Arc<TrustedPeers> {
        self.state.trusted.clone()
    }

    /// The certificate store (tests, status).
    pub fn certs(&self) -> Arc<CertStore> {
        self.state.certs.clone()
    }

    /// Health as the ingress probes see it.
    pub fn health(&self) -> Result<(), &'static str> {
        self.state.health()
    }
}

fn needs_restart(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut out = Vec::new();
    if old.wan.addresses != new.wan.addresses {
        out.push("wan.addresses");
    }
    if old.mesh != new.mesh {
        out.push("mesh");
    }
    if old.http.https_port != new.http.https_port || old.http.http_port != new.http.http_port {
        out.push("http ports");
    }
    if old.admin != new.admin {
        out.push("admin.listen");
    }
    let listen =
        |c: &Config| c.streams.iter().map(|s| (s.name.clone(), s.protocol, s.listen_ports)).collect::<Vec<_>>();
    if listen(old) != listen(new) {
        out.push("stream listen ports");
    }
    out
}
