//! Wiring: `start` takes a validated config, already-bound listeners and a shutdown token,
//! spawns every task, and returns a [`Server`] whose [`Handle`] applies config reloads
//! (listeners included: see `running`).

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use shared::workers::Workers;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::config::Config;
use crate::config::MeshListen;
use crate::http::routes::RoutesError;
use crate::http::Routes;
use crate::listeners::{self, BindError, Listeners};
use crate::metrics::names;
use crate::pool::Pools;
use crate::running::Running;
use crate::state::State;
use crate::stream::log::{StreamLogError, StreamLogs};
use crate::tls::{self, CertStore};
use crate::transparent;
use crate::trust::{TrustedPeers, CONFIG_SOURCE};

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Routes(#[from] RoutesError),
    #[error(transparent)]
    Tls(#[from] tls::ConfigError),
    #[error("firewall: {0}")]
    Firewall(#[from] crate::firewall::Error),
    #[error(transparent)]
    StreamLog(#[from] StreamLogError),
}

/// Why a reload was refused; the running config and listeners stay.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Routes(#[from] RoutesError),
    /// A new listener could not be bound (port in use, address not here).
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error(transparent)]
    StreamLog(#[from] StreamLogError),
    /// The `[firewall]` section cannot run here (its resolver cannot be set up).
    #[error("firewall: {0}")]
    Firewall(#[from] crate::firewall::Error),
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

/// How often `mesh.listen = "auto"` asks yggdrasil whether the node's address is still the one
/// served.
const MESH_RECHECK: Duration = Duration::from_secs(60);

/// Control of a running proxy (cheap to clone).
#[derive(Debug, Clone)]
pub struct Handle {
    state: Arc<State>,
    tasks: TaskTracker,
    running: Arc<Running>,
    /// Set while a task keeps asking yggdrasil for the mesh address.
    mesh_waiting: Arc<std::sync::atomic::AtomicBool>,
    /// One reload at a time, from taking the config to applying it: a reload the proxy starts
    /// itself (the mesh address moved) must not apply a config a SIGHUP has replaced meanwhile.
    reloading: Arc<tokio::sync::Mutex<()>>,
    /// New `[firewall]` settings go to the firewall task on reload.
    firewall: crate::firewall::Control,
}

/// Start serving on the calling runtime alone. Must be called inside a tokio runtime.
pub fn start(config: Config, listeners: Listeners, shutdown: CancellationToken) -> Result<Server, StartError> {
    start_on(config, listeners, shutdown, Workers::none())
}

/// As [`start`], with client TCP connections spread over `workers`' event loops (each site's
/// upstream clients one per loop); everything else runs on the calling runtime.
pub fn start_on(
    config: Config,
    mut listeners: Listeners,
    shutdown: CancellationToken,
    workers: Workers,
) -> Result<Server, StartError> {
    // Uptime counts from here, not from when an admin listener (perhaps added by a reload)
    // first served.
    crate::status::mark_start();
    let metrics = crate::metrics::install();
    let trusted = Arc::new(TrustedPeers::new());
    trusted.set_source(CONFIG_SOURCE, config.wan.trusted_ingress.iter().copied());
    // The allowlist table goes in before any listener serves; it also feeds `trusted`.
    let (firewall, firewall_task) = crate::firewall::start(config.firewall.clone(), trusted.clone(), shutdown.clone())?;
    let certs = Arc::new(CertStore::new());
    certs.set_sources(&config.tls);
    let config = Arc::new(config);
    let pools = Pools::build(&config, None);
    let routes = Routes::build(&config, &pools, workers.threads())?;
    let stream_logs = StreamLogs::build(&config)?;
    let state = Arc::new(State {
        tls: tls::server_config(certs.clone())?,
        conn_limit: Arc::new(Semaphore::new(config.http.max_connections)),
        mesh_conn_limit: Arc::new(Semaphore::new(config.mesh.max_connections)),
        config: ArcSwap::new(config),
        routes: ArcSwap::from_pointee(routes),
        pools: ArcSwap::from_pointee(pools),
        stream_logs: ArcSwap::from_pointee(stream_logs),
        trusted,
        certs: certs.clone(),
        acme: Arc::default(),
        shutdown: shutdown.clone(),
        metrics,
        workers,
    });
    let config = state.config.load_full();
    for (_, log) in config.access_logs() {
        crate::access_log::adopt(&log.path, log.flush);
    }
    publish_health(&state);
    if config.streams.iter().any(|s| s.transparent) {
        if let Err(e) = transparent::probe() {
            warn!(error = %e, "transparent streams will fail until the proxy may set IP_TRANSPARENT");
        }
    }

    let tasks = TaskTracker::new();
    state.pools.load().publish();
    state.pools.load().start_checks(&config, &tasks, &shutdown);
    // Connection tasks go on their own tracker so shutdown can drain them separately.
    let conns = TaskTracker::new();
    let running = Arc::new(Running::new(state.clone(), tasks.clone(), conns.clone()));
    let handle = Handle {
        state: state.clone(),
        tasks: tasks.clone(),
        running,
        mesh_waiting: Arc::default(),
        reloading: Arc::default(),
        firewall,
    };
    if let (Some(l), Some(addr)) = (listeners.admin.take(), config.admin) {
        handle.running.serve_admin(addr, l);
    }
    handle.serve(listeners);
    tasks.spawn(certs.clone().watch(shutdown.clone()));
    tasks.spawn(handle.clone().watch_mesh_address());
    state.acme.apply(config.acme.as_ref(), &certs, &tasks, &shutdown);
    tasks.spawn(firewall_task);
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

    /// Wait for shutdown, then give open connections up to the config's `drain_timeout` (as
    /// it is when shutdown comes: a reload may have changed it) to finish.
    pub async fn wait_configured(self) {
        self.drain(None).await
    }

    /// Wait for shutdown, then give open connections up to `drain` to finish.
    pub async fn wait(self, drain: Duration) {
        self.drain(Some(drain)).await
    }

    async fn drain(self, drain: Option<Duration>) {
        self.handle.state.shutdown.cancelled().await;
        self.tasks.close();
        let drain = drain.unwrap_or_else(|| self.handle.state.config.load().drain_timeout);
        // The listeners' ends count against the deadline too: a UDP socket's flows linger for
        // the replies on their way (`udp_relay::linger`), and a unit's stop timeout is sized
        // from `drain_timeout`.
        let all = async {
            self.tasks.wait().await;
            // No accept loop is left to add connections.
            self.conns.close();
            self.conns.wait().await;
        };
        if tokio::time::timeout(drain, all).await.is_err() {
            warn!(?drain, "connections still open after the drain deadline; leaving");
        }
        // The last requests' lines are in the access log files before the process leaves.
        let wait = crate::access_log::FLUSH_ALL_WAIT;
        let late = tokio::task::spawn_blocking(move || crate::access_log::flush_all(wait)).await.unwrap_or(0);
        if late > 0 {
            warn!(late, ?wait, "access logs not all written within the wait; their last lines are lost");
        }
    }
}

impl Handle {
    /// Serve more bound listeners (the mesh address learnt after start-up); a listener whose
    /// key is already served is closed instead. The admin listener, if any, is ignored here.
    pub fn serve(&self, listeners: Listeners) {
        self.running.serve(listeners);
    }

    /// With `mesh.listen = "auto"` and yggdrasil not answering yet (boot order, restarts): keep
    /// asking for the mesh address in the background (backing off from 2 s to 60 s), then bind
    /// and serve the mesh listeners. At most one such task runs.
    pub fn serve_mesh_when_ready(&self) {
        use std::sync::atomic::Ordering;
        if self.mesh_waiting.swap(true, Ordering::SeqCst) {
            return;
        }
        let handle = self.clone();
        self.tasks.spawn(async move {
            let mut delay = Duration::from_secs(2);
            while !handle.is_shutting_down() && handle.running.mesh_ip().is_none() {
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = handle.state.shutdown.cancelled() => break,
                }
                delay = (delay * 2).min(Duration::from_secs(60));
                // Between reloads: a reload meanwhile (its config read here) cannot be undone
                // by this task's listeners, nor remove them right after they are served.
                let _one_at_a_time = handle.reloading.lock().await;
                let config = handle.config();
                if config.mesh.listen != MeshListen::Auto || handle.running.mesh_ip().is_some() {
                    break;
                }
                match listeners::mesh_address(&config).await {
                    Ok(None) => break,
                    Ok(Some(ip)) => match listeners::bind_mesh(&config, ip) {
                        Ok(bound) => {
                            info!(address = %ip, "mesh listener up");
                            crate::running::log_bound(&bound);
                            handle.serve(bound);
                            break;
                        }
                        Err(e) => warn!(error = %e, "binding the mesh listener failed; retrying"),
                    },
                    Err(e) => warn!(error = %e, "still no mesh address; retrying"),
                }
            }
            // Under the lock: a reload that finds yggdrasil silent after this task gave up must
            // see the flag down, and start another.
            let lock = handle.reloading.lock().await;
            handle.mesh_waiting.store(false, Ordering::SeqCst);
            drop(lock);
            // Mesh sockets kept across a restart that the mesh listeners did not take.
            crate::inherit::release_unclaimed(false);
        });
    }

    /// Every listening socket served now (not the admin one): its key, what it serves and
    /// the address it is bound to.
    pub fn listening(&self) -> Vec<(listeners::ListenKey, listeners::Serves, Option<std::net::SocketAddr>)> {
        self.running.listening()
    }

    /// Where the admin listener is bound, if there is one.
    pub fn admin_addr(&self) -> Option<std::net::SocketAddr> {
        self.running.admin_addr()
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
    /// Listeners follow the config: new addresses, ports and streams are bound (a bind failure
    /// refuses the whole reload), removed ones closed, unchanged ones keep their sockets.
    pub async fn reload(&self, new: Config) -> Result<(), ReloadError> {
        let _one_at_a_time = self.reloading.lock().await;
        self.reload_now(new).await
    }

    /// With `mesh.listen = "auto"`: asks yggdrasil for the node's address, and if it is no
    /// longer the one served (its key was made anew), reloads the running config, which moves
    /// the mesh listeners to it. Whether they moved.
    pub async fn follow_mesh_address(&self) -> bool {
        // Asked before taking the lock: a reload (a SIGHUP, then a stop behind it) does not
        // wait for yggdrasil's answer here, only for the reload this one starts.
        let asked = self.config();
        let Some(known) = self.running.mesh_ip().filter(|_| asked.mesh.listen == MeshListen::Auto) else {
            return false;
        };
        match listeners::mesh_address(&asked).await {
            Ok(Some(ip)) if ip != known => {}
            _ => return false,
        }
        let _one_at_a_time = self.reloading.lock().await;
        let config = self.config();
        if config.mesh.listen != MeshListen::Auto || self.running.mesh_ip() != Some(known) {
            // A reload meanwhile: it asked yggdrasil itself.
            return false;
        }
        match self.reload_now((*config).clone()).await {
            Ok(()) => self.running.mesh_ip() != Some(known),
            Err(e) => {
                warn!(error = %e, "the mesh address changed, but the mesh listeners could not move; tried again later");
                false
            }
        }
    }

    /// [`Handle::follow_mesh_address`] every [`MESH_RECHECK`], until shutdown.
    async fn watch_mesh_address(self) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(MESH_RECHECK) => {}
                _ = self.state.shutdown.cancelled() => return,
            }
            self.follow_mesh_address().await;
        }
    }

    async fn reload_now(&self, new: Config) -> Result<(), ReloadError> {
        new.log_warnings();
        let new = Arc::new(new);
        // Upstreams that stay keep their health; the new checks start once the config is in.
        let pools = Arc::new(Pools::build(&new, Some(&self.state.pools.load())));
        let routes = match Routes::build(&new, &pools, self.state.workers.threads()) {
            Ok(r) => r,
            Err(e) => {
                metrics::counter!(names::CONFIG_RELOADS, "result" => "invalid").increment(1);
                return Err(e.into());
            }
        };
        let stream_logs = match StreamLogs::build(&new) {
            Ok(l) => l,
            Err(e) => {
                metrics::counter!(names::CONFIG_RELOADS, "result" => "invalid").increment(1);
                return Err(e.into());
            }
        };
        if let Err(e) = self.firewall.check(new.firewall.as_ref()) {
            metrics::counter!(names::CONFIG_RELOADS, "result" => "invalid").increment(1);
            return Err(e.into());
        }
        let old = self.state.config.load_full();
        let mesh = self.mesh_for(&old, &new).await;
        let plan = listeners::plan(&new, mesh);
        let admin = new.admin;
        let apply = || {
            shared::conn_limit::resize(&self.state.conn_limit, old.http.max_connections, new.http.max_connections);
            shared::conn_limit::resize(&self.state.mesh_conn_limit, old.mesh.max_connections, new.mesh.max_connections);
            self.state.trusted.set_source(CONFIG_SOURCE, new.wan.trusted_ingress.iter().copied());
            self.firewall.update(new.firewall.clone());
            self.state.routes.store(Arc::new(routes));
            self.state.stream_logs.store(Arc::new(stream_logs));
            for (_, log) in new.access_logs() {
                crate::access_log::adopt(&log.path, log.flush);
            }
            pools.take_over(&self.state.pools.load());
            pools.publish();
            pools.start_checks(&new, &self.tasks, &self.state.shutdown);
            self.state.pools.swap(pools.clone()).stop_checks();
            let tls = new.tls.clone();
            let acme = new.acme.clone();
            self.state.config.store(new.clone());
            self.state.certs.set_sources(&tls);
            self.state.acme.apply(acme.as_ref(), &self.state.certs, &self.tasks, &self.state.shutdown);
        };
        if let Err(e) = self.running.reload(plan, admin, apply).await {
            metrics::counter!(names::CONFIG_RELOADS, "result" => "bind_failed").increment(1);
            return Err(e.into());
        }
        publish_health(&self.state);
        crate::inherit::release_unclaimed(self.mesh_waiting.load(std::sync::atomic::Ordering::SeqCst));
        metrics::counter!(names::CONFIG_RELOADS, "result" => "ok").increment(1);
        info!("configuration reloaded");
        Ok(())
    }

    /// The mesh address the new config asks for. `auto` asks yggdrasil, and keeps the address
    /// already served if it does not answer; with none served yet, the mesh listeners come
    /// when it does (see [`Handle::serve_mesh_when_ready`]).
    async fn mesh_for(&self, old: &Config, new: &Config) -> Option<std::net::IpAddr> {
        match &new.mesh.listen {
            MeshListen::Off => None,
            MeshListen::Address(ip) => Some(*ip),
            MeshListen::Auto => {
                let known = if old.mesh.listen == MeshListen::Auto { self.running.mesh_ip() } else { None };
                if let Some(known) = known.filter(|_| old.mesh.admin_endpoint == new.mesh.admin_endpoint) {
                    return match listeners::mesh_address(new).await {
                        Ok(Some(ip)) if ip != known => {
                            warn!(from = %known, to = %ip, "the mesh address changed (yggdrasil's key made anew?): the mesh listeners move");
                            Some(ip)
                        }
                        _ => Some(known),
                    };
                }
                match listeners::mesh_address(new).await {
                    Ok(ip) => ip,
                    Err(e) => {
                        warn!(error = %e, "no mesh address yet; the mesh listeners come when yggdrasil answers");
                        self.serve_mesh_when_ready();
                        None
                    }
                }
            }
        }
    }

    /// The trusted-ingress set, for feeders such as the DNS-driven firewall.
    pub fn trusted(&self) -> Arc<TrustedPeers> {
        self.state.trusted.clone()
    }

    /// The certificate store (tests, status).
    pub fn certs(&self) -> Arc<CertStore> {
        self.state.certs.clone()
    }

    /// ACME certificates: names, expiry (days left), failures, last error; empty without `[acme]`.
    pub fn acme(&self) -> Arc<crate::acme::Acme> {
        self.state.acme.clone()
    }

    /// Health as the ingress probes see it.
    pub fn health(&self) -> Result<(), String> {
        self.state.health()
    }

    /// Whether every pool with active checks has judged its upstreams once (start-up waits
    /// for it, bounded, before READY=1).
    pub fn first_round_done(&self) -> bool {
        self.state.pools.load().probed()
    }

    /// What `/status` says now.
    pub fn status(&self) -> crate::status::Status {
        crate::status::collect(&self.state)
    }
}
