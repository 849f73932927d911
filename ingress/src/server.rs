//! The running ingress: pools with their health tasks, services, listeners, limits,
//! reload and drain. A reload builds a new `Runtime` beside the old one and swaps it in;
//! listeners whose address is unchanged keep their socket and see the new service at once,
//! established connections keep the pool they started with. Every listening socket is also
//! kept in systemd's descriptor store, so a restart serves the same sockets (`shared::inherit`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use metrics::{counter, gauge};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;

use crate::config::{Config, Protocol};
use crate::limits::Budget;
use crate::metrics as m;
pub use crate::runtime::{Runtime, Service, Shared};
use shared::descriptors::Descriptors;
use shared::listeners::{bind_all, Plan};
use shared::udp_flows::FlowBudget;

/// A bound listener (or one waiting to bind) and the service it feeds.
struct ListenerEntry {
    /// The configured address (port 0: any).
    addr: SocketAddr,
    slot: Arc<ArcSwap<Service>>,
    local: Arc<Mutex<Option<SocketAddr>>>,
    task: JoinHandle<()>,
    /// Sockets it was started with (a UDP port with `udp_reuseport`: one per loop), for their
    /// names in systemd's store.
    sockets: usize,
}

type ListenerKey = (Protocol, String);

/// Handle on a running ingress.
pub struct Server {
    shared: Arc<Shared>,
    stop_tx: watch::Sender<bool>,
    listeners: Mutex<HashMap<ListenerKey, ListenerEntry>>,
    admin_task: Mutex<Option<Admin>>,
}

/// The admin listener being served.
struct Admin {
    /// As configured (port 0: any) and as bound.
    configured: SocketAddr,
    bound: SocketAddr,
    task: JoinHandle<()>,
}

impl Server {
    /// Start serving `config` on the calling thread's runtime alone. Listeners that cannot
    /// bind are logged and retried in the background; everything else serves meanwhile.
    pub async fn start(config: Config) -> Self {
        Self::start_on(config, shared::workers::Workers::none()).await
    }

    /// As [`Server::start`], with TCP connections spread over `workers`' threads.
    pub async fn start_on(config: Config, workers: shared::workers::Workers) -> Self {
        crate::metrics::install();
        let (stop_tx, stop) = watch::channel(false);
        let open_files = shared::open_files::raise();
        let budget = Budget::plan(open_files, &config, workers.threads());
        budget.log(&config);
        let descriptors = Descriptors::new(budget.pool, budget.flow_floor);
        #[cfg(target_os = "linux")]
        crate::splice::set_pipe_limit(budget.pipes, &descriptors);
        let global = Semaphore::new(budget.max_connections as usize);
        let shared = Arc::new(Shared {
            runtime: ArcSwap::from_pointee(Runtime::build(config.clone(), &budget, &descriptors, None)),
            global_limit: Arc::new(global),
            flows: FlowBudget::drawing_on(budget.max_flows, descriptors.clone()),
            descriptors,
            open_files,
            conns: tokio_util::task::TaskTracker::new(),
            started_ms: crate::control::now_ms(),
            shares: Default::default(),
            m_open: gauge!(m::OPEN_CONNECTIONS),
            stop,
            workers,
        });
        let server = Self { shared, stop_tx, listeners: Mutex::new(HashMap::new()), admin_task: Mutex::new(None) };
        // Sockets kept across a restart (systemd's descriptor store) serve at once; the rest
        // bind below, and kept ones this config no longer has are closed.
        let kept = inherited_listeners(&config, server.shared.workers.threads());
        server.sync_listeners(kept);
        let _ = shared::inherit::release_unclaimed(|_| false);
        if let Some(addr) = config.admin {
            // At start-up a busy admin port does not stop the data plane: logged, not served.
            if let Err(e) = server.bind_admin(addr) {
                tracing::error!(listen = %addr, error = %e, "admin listener cannot bind");
            }
        }
        server
    }

    /// Apply a new, already validated config, or refuse it (logged and counted) when one of
    /// the listeners it adds cannot be bound: then the running config stays whole.
    pub async fn reload(&self, config: Config) {
        if let Err(e) = self.try_reload(config).await {
            tracing::error!(listen = %e.addr, service = %e.service, error = %e.source, "reload refused, the running config stays: {e}");
        }
    }

    /// Apply a new, already validated config. Every listener it adds is bound first, the
    /// admin listener too if it moves; if one cannot be, nothing changes (operators expect a
    /// reload never to leave a configured service unserved) and the refusal is counted.
    /// Established connections are untouched either way.
    pub async fn try_reload(&self, config: Config) -> Result<(), ReloadError> {
        let result = self.rebind(&config).await;
        let (prebound, new_admin) = match result {
            Ok(bound) => bound,
            Err(e) => {
                counter!(m::RELOADS, "result" => "refused").increment(1);
                return Err(e);
            }
        };
        let old = self.shared.runtime.load_full();
        let loops = self.shared.workers.threads();
        let (was, budget) = (
            Budget::plan(self.shared.open_files, &old.config, loops),
            Budget::plan(self.shared.open_files, &config, loops),
        );
        if was != budget {
            budget.log(&config);
        }
        // The connections open stay counted: a lower cap admits none until they are under it.
        shared::conn_limit::resize(
            &self.shared.global_limit,
            was.max_connections as usize,
            budget.max_connections as usize,
        );
        self.shared.flows.set_cap(budget.max_flows);
        self.shared.descriptors.set_limits(budget.pool, budget.flow_floor);
        #[cfg(target_os = "linux")]
        crate::splice::set_pipe_limit(budget.pipes, &self.shared.descriptors);
        let rt = Runtime::build(config, &budget, &self.shared.descriptors, Some(&old));
        self.shared.runtime.store(Arc::new(rt));
        self.sync_listeners(prebound);
        match new_admin {
            AdminChange::Keep => {}
            AdminChange::Off => {
                self.stop_admin().await;
            }
            AdminChange::Serve(configured, listener) => {
                self.stop_admin().await;
                self.serve_admin(configured, listener);
            }
        }
        counter!(m::RELOADS, "result" => "applied").increment(1);
        tracing::info!("configuration reloaded");
        Ok(())
    }

    /// Binds the listeners `config` has and the running set lacks, and the admin listener if
    /// it moves: all or none. A TCP socket the config drops on the port of one it adds (a
    /// specific address replaced by the wildcard, the admin listener moved to 0.0.0.0 on its
    /// port, a service taking the admin's old port) would make that bind fail while it
    /// listens: it is closed first, once everything that needs none of the ports it holds
    /// is bound, and served again if the reload is refused.
    async fn rebind(&self, config: &Config) -> Result<(HashMap<ListenerKey, Bound>, AdminChange), ReloadError> {
        let wanted = wanted_listeners(config, self.shared.workers.threads());
        // The admin listener being served (none if its port was busy at start-up), and the one
        // the running config names.
        let old_admin = self.admin_task.lock().ok().and_then(|a| a.as_ref().map(|a| a.configured));
        let admin_moves = config.admin != self.shared.runtime.load().config.admin;
        let (clashing, admin_clashes) = {
            let Ok(map) = self.listeners.lock() else {
                return Ok((HashMap::new(), AdminChange::Keep));
            };
            let plan = Plan::new(&map, wanted.iter().map(|(k, v)| (k.clone(), v.1)));
            let new_admin_port = config.admin.filter(|_| admin_moves).map(|a| a.port());
            let takes = |port: u16| {
                port != 0
                    && (new_admin_port == Some(port)
                        || plan.added.iter().any(|((p, _), addr)| *p == Protocol::Tcp && addr.port() == port))
            };
            let clashing: Vec<ListenerKey> = plan
                .removed
                .into_iter()
                .filter(|k| k.0 == Protocol::Tcp && map.get(k).is_some_and(|e| takes(e.addr.port())))
                .collect();
            // Closing a socket unit's listener would not free its port: refused before
            // anything is closed.
            let unit_held = clashing.iter().filter_map(|k| map.get(k)).map(|e| e.addr);
            if let Some(held) = unit_held.into_iter().find(|a| shared::inherit::tcp_held_by_socket_unit(*a)) {
                let added = plan
                    .added
                    .iter()
                    .filter(|(k, _)| k.0 == Protocol::Tcp)
                    .filter_map(|(k, _)| wanted.get(k).map(|(service, addr, _)| (service, *addr)));
                return Err(held_by_unit(held, added, config.admin.filter(|_| admin_moves)));
            }
            (clashing, admin_moves && old_admin.is_some_and(|a| takes(a.port())))
        };
        // The ports the closing sockets hold. What needs none of them is bound first: a reload
        // refused for it (a UDP port someone holds, a mistyped address) closes nothing, where
        // the closed sockets would be served again only in the background (and lost, should
        // their port be taken meanwhile).
        let mut freeing: Vec<u16> = match self.listeners.lock() {
            Ok(map) => clashing.iter().filter_map(|k| map.get(k).map(|e| e.addr.port())).collect(),
            Err(_) => Vec::new(),
        };
        freeing.extend(old_admin.filter(|_| admin_clashes).map(|a| a.port()));
        let (after, first): (HashMap<_, _>, HashMap<_, _>) =
            wanted.into_iter().partition(|(k, (_, addr, _))| k.0 == Protocol::Tcp && freeing.contains(&addr.port()));
        let early = self.bind_new_listeners(first, config)?;
        // The admin listener's new address too, unless it is on a port being freed.
        let mut early_admin = match config.admin {
            Some(addr) if admin_moves && !freeing.contains(&addr.port()) => Some(moved_admin(addr)?),
            _ => None,
        };
        let paused = self.pause_listeners(&clashing).await;
        let admin_paused = if admin_clashes { self.stop_admin().await } else { None };
        let bind = || {
            self.bind_new_listeners(after.clone(), config).and_then(|listeners| {
                if let Some(admin) = early_admin.take() {
                    return Ok((listeners, admin));
                }
                let admin = match config.admin {
                    // Unchanged, and not served: its port was busy at start-up. Tried again,
                    // but not a reason to refuse the reload (nothing else depends on it).
                    Some(addr) if !admin_moves && old_admin.is_none() => match crate::listener::bind_tcp(addr) {
                        Ok(l) => AdminChange::Serve(addr, l),
                        Err(e) => {
                            tracing::error!(listen = %addr, error = %e, "admin listener cannot bind; tried again at the next reload");
                            AdminChange::Keep
                        }
                    },
                    _ if !admin_moves => AdminChange::Keep,
                    None => AdminChange::Off,
                    Some(addr) => moved_admin(addr)?,
                };
                Ok((listeners, admin))
            })
        };
        let taken_by_freed = |e: &ReloadError| {
            e.protocol == Protocol::Tcp
                && freeing.contains(&e.addr.port())
                && e.source.kind() == std::io::ErrorKind::AddrInUse
        };
        let bound = shared::listeners::bind_while_freeing(bind, taken_by_freed).await.map(|(mut listeners, admin)| {
            listeners.extend(early);
            (listeners, admin)
        });
        if bound.is_err() {
            self.resume_listeners(&paused);
            if let Some(addr) = admin_paused {
                if let Err(e) = self.bind_admin(addr) {
                    tracing::error!(listen = %addr, error = %e, "admin listener cannot bind again after a refused reload");
                }
            }
        }
        bound
    }

    /// Binds the listeners in `wanted` (of `config`'s services) the running set lacks, all or
    /// none.
    fn bind_new_listeners(
        &self,
        wanted: HashMap<ListenerKey, (String, SocketAddr, usize)>,
        config: &Config,
    ) -> Result<HashMap<ListenerKey, Bound>, ReloadError> {
        let Ok(map) = self.listeners.lock() else {
            return Ok(HashMap::new());
        };
        let plan = Plan::new(&map, wanted);
        let reuseport = |service: &str| config.services.iter().any(|s| s.name == service && s.udp_reuseport);
        // UDP listeners this reload removes: their flows answer through them until they end,
        // so their ports are not freed for a new listener (a wildcard replaced by a specific
        // address, or back). A refusal for that says so.
        let leaving_udp: Vec<SocketAddr> =
            plan.removed.iter().filter(|k| k.0 == Protocol::Udp).filter_map(|k| map.get(k).map(|e| e.addr)).collect();
        let bound = bind_all(plan.added, |key, (service, addr, sockets)| {
            bind(key, *addr, *sockets, reuseport(service)).map_err(|source| {
                // Only one that shares the place: the same address, or a wildcard on either side.
                let overlaps =
                    |old: &SocketAddr| old.ip() == addr.ip() || old.ip().is_unspecified() || addr.ip().is_unspecified();
                let held = leaving_udp
                    .iter()
                    .find(|old| old.port() == addr.port() && old.is_ipv4() == addr.is_ipv4() && overlaps(old));
                let source = match held {
                    Some(old) if key.0 == Protocol::Udp && source.kind() == std::io::ErrorKind::AddrInUse => {
                        std::io::Error::new(
                            std::io::ErrorKind::AddrInUse,
                            format!(
                                "its port is held by this ingress's UDP listener {old}, which the reload removes \
                                 but whose flows still answer through it: a UDP listener moves between an address \
                                 and the wildcard on one port only by a restart (its flows start anew)"
                            ),
                        )
                    }
                    _ => source,
                };
                ReloadError { service: service.clone(), addr: *addr, protocol: key.0, source }
            })
        })?;
        Ok(bound.into_iter().collect())
    }

    /// Stops serving the TCP listeners of `keys` and waits until their sockets are closed;
    /// their entries stay, for [`Server::resume_listeners`] or the reload's removal.
    async fn pause_listeners(&self, keys: &[ListenerKey]) -> Vec<ListenerKey> {
        let mut tasks = Vec::new();
        if let Ok(mut map) = self.listeners.lock() {
            for key in keys {
                if let Some(entry) = map.get_mut(key) {
                    entry.task.abort();
                    // Not bound now, for `local_addrs` (and `wait_bound`) alike.
                    if let Ok(mut l) = entry.local.lock() {
                        *l = None;
                    }
                    // A finished task in its place: the entry stays whole until resumed.
                    tasks.push(std::mem::replace(&mut entry.task, tokio::spawn(async {})));
                    for i in 0..entry.sockets {
                        shared::inherit::forget(&fd_name(key, i));
                    }
                    tracing::info!(listen = %key.1, "listener closed early: the reload binds its port anew");
                }
            }
        }
        // A TCP listener's socket lives in its task (`listen_forever`): closed once it is gone.
        for task in tasks {
            let _ = task.await;
        }
        keys.to_vec()
    }

    /// Serves again what [`Server::pause_listeners`] closed (binding in the background, as at
    /// start-up).
    fn resume_listeners(&self, keys: &[ListenerKey]) {
        let Ok(mut map) = self.listeners.lock() else {
            return;
        };
        for key in keys {
            if let Some(entry) = map.get_mut(key) {
                entry.task = tokio::spawn(listen_forever(
                    key.clone(),
                    entry.addr,
                    entry.sockets,
                    None,
                    entry.slot.clone(),
                    entry.local.clone(),
                    self.shared.clone(),
                ));
            }
        }
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Bound addresses of a service's listeners (useful with port 0).
    pub fn local_addrs(&self, service: &str) -> Vec<SocketAddr> {
        let rt = self.shared.runtime.load();
        let Ok(map) = self.listeners.lock() else {
            return Vec::new();
        };
        let mut out: Vec<SocketAddr> = map
            .values()
            .filter(|e| e.slot.load().cfg.name == service && rt.services.contains_key(service))
            .filter_map(|e| e.local.lock().ok().and_then(|l| *l))
            .collect();
        out.sort();
        out
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_task.lock().ok().and_then(|a| a.as_ref().map(|a| a.bound))
    }

    /// Stop accepting, then wait (up to `deadline`) for established connections to end.
    /// Returns how many were still open when it gave up.
    pub async fn drain(&self, deadline: Duration) -> usize {
        let _ = self.stop_tx.send(true);
        let mut udp = Vec::new();
        if let Ok(mut map) = self.listeners.lock() {
            for ((protocol, _), e) in map.drain() {
                match protocol {
                    Protocol::Udp => udp.push(e.task),
                    Protocol::Tcp => e.task.abort(),
                }
            }
        }
        // Woken when the last connection task ends, not by polling.
        self.shared.conns.close();
        let now = tokio::time::Instant::now();
        let until = shared::ports::tokio_deadline(now, deadline);
        // A UDP listener ends by itself: once its flows have relayed the replies still on their
        // way (`udp_relay::linger`), or at once while it is still retrying its bind. The bound
        // is a backstop.
        let udp_until = until.min(now + shared::udp_relay::LINGER_MAX + Duration::from_millis(100));
        let udp_done = async {
            for t in &mut udp {
                let _ = tokio::time::timeout_at(udp_until, t).await;
            }
        };
        let _ = tokio::join!(udp_done, tokio::time::timeout_at(until, self.shared.conns.wait()));
        for t in udp {
            t.abort();
        }
        self.shared.open_connections()
    }

    /// Makes the listeners match the running config: removed ones close, kept ones feed the
    /// new service, added ones serve the sockets in `prebound` (a reload) or bind in the
    /// background, retrying while the address is busy (start-up: the rest serves meanwhile).
    fn sync_listeners(&self, mut prebound: HashMap<ListenerKey, Bound>) {
        let rt = self.shared.runtime.load_full();
        let Ok(mut map) = self.listeners.lock() else {
            return;
        };
        let wanted: HashMap<ListenerKey, (Arc<Service>, SocketAddr, usize)> =
            wanted_listeners(&rt.config, self.shared.workers.threads())
                .into_iter()
                .filter_map(|(key, (name, addr, sockets))| {
                    Some((key, (rt.services.get(&name)?.clone(), addr, sockets)))
                })
                .collect();
        let plan = Plan::new(&map, wanted);
        for key in plan.removed {
            if let Some(entry) = map.remove(&key) {
                tracing::info!(listen = %key.1, "listener closed");
                entry.task.abort();
                // Out of systemd's store too, else the kernel would queue clients for it.
                for i in 0..entry.sockets {
                    shared::inherit::forget(&fd_name(&key, i));
                }
            }
        }
        for (key, (svc, _, sockets)) in plan.kept {
            if let Some(entry) = map.get(&key) {
                if entry.sockets != sockets {
                    // Rebinding would close the port for a moment and lose the flows; what is
                    // served keeps its sockets until the next restart.
                    tracing::warn!(listen = %key.1, service = %svc.cfg.name, running = entry.sockets, configured = sockets,
                        "udp_reuseport changed: the port keeps its sockets until the next restart");
                }
                entry.slot.store(svc);
            }
        }
        for (key, (svc, addr, sockets)) in plan.added {
            let slot = Arc::new(ArcSwap::new(svc));
            let local = Arc::new(Mutex::new(None));
            let pre = prebound.remove(&key);
            let task = tokio::spawn(listen_forever(
                key.clone(),
                addr,
                sockets,
                pre,
                slot.clone(),
                local.clone(),
                self.shared.clone(),
            ));
            map.insert(key, ListenerEntry { addr, slot, local, task, sockets });
        }
    }

    /// Binds and serves the admin listener on `addr`.
    fn bind_admin(&self, addr: SocketAddr) -> std::io::Result<()> {
        let listener = crate::listener::bind_tcp(addr)?;
        self.serve_admin(addr, listener);
        Ok(())
    }

    fn serve_admin(&self, configured: SocketAddr, listener: tokio::net::TcpListener) {
        let bound = listener.local_addr().unwrap_or(configured);
        tracing::info!(listen = %bound, "admin listener ready");
        let task = tokio::spawn(crate::admin::serve(listener, self.shared.clone()));
        if let Ok(mut admin) = self.admin_task.lock() {
            *admin = Some(Admin { configured, bound, task });
        }
    }

    /// Stops the admin listener and waits until its socket is closed; returns its configured
    /// address.
    async fn stop_admin(&self) -> Option<SocketAddr> {
        let admin = self.admin_task.lock().ok()?.take()?;
        admin.task.abort();
        let _ = admin.task.await;
        tracing::info!(listen = %admin.bound, "admin listener closed");
        Some(admin.configured)
    }
}

/// What a reload does to the admin listener.
enum AdminChange {
    Keep,
    Off,
    /// Serve this listener (bound for the configured address), in place of the running one.
    Serve(SocketAddr, tokio::net::TcpListener),
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.stop_tx.send(true);
        if let Ok(mut map) = self.listeners.lock() {
            for (_, e) in map.drain() {
                e.task.abort();
            }
        }
        if let Ok(mut a) = self.admin_task.lock() {
            if let Some(admin) = a.take() {
                admin.task.abort();
            }
        }
    }
}

/// A reload refused because a listener it adds cannot be bound.
#[derive(Debug, thiserror::Error)]
#[error("{protocol:?} listener {addr} of service `{service}` cannot be bound: {source}")]
pub struct ReloadError {
    pub service: String,
    pub addr: SocketAddr,
    pub protocol: Protocol,
    pub source: std::io::Error,
}

/// The refusal of a reload whose new TCP listener (among the `added` ones, by service, or the
/// admin listener moving to `admin`) would take the port of `held`, a listener a systemd
/// socket unit passed.
fn held_by_unit<'a>(
    held: SocketAddr,
    added: impl Iterator<Item = (&'a String, SocketAddr)>,
    admin: Option<SocketAddr>,
) -> ReloadError {
    let taker = added
        .filter(|(_, addr)| addr.port() == held.port())
        .map(|(service, addr)| (service.clone(), addr))
        .next()
        .or_else(|| admin.map(|a| ("admin".to_string(), a)))
        .unwrap_or_else(|| (String::new(), held));
    let why = format!(
        "its port is held by {held}, which a systemd socket unit passed and keeps open: \
         change the .socket unit's ListenStream= and restart"
    );
    ReloadError {
        service: taker.0,
        addr: taker.1,
        protocol: Protocol::Tcp,
        source: std::io::Error::new(std::io::ErrorKind::AddrInUse, why),
    }
}

/// The admin listener on the address a reload moves it to; a failure refuses the reload.
fn moved_admin(addr: SocketAddr) -> Result<AdminChange, ReloadError> {
    crate::listener::bind_tcp(addr).map(|l| AdminChange::Serve(addr, l)).map_err(|source| ReloadError {
        service: "admin".into(),
        addr,
        protocol: Protocol::Tcp,
        source,
    })
}

/// Every listener a config asks for, keyed as the running set keys them, with its service and
/// its number of sockets when served by `loops` event loops.
fn wanted_listeners(config: &Config, loops: usize) -> HashMap<ListenerKey, (String, SocketAddr, usize)> {
    let mut wanted = HashMap::new();
    for sc in &config.services {
        for addr in sc.listen.iter().flat_map(|spec| spec.addrs()) {
            // Port 0 (tests) binds a fresh port per service, so it is keyed per service.
            let key = if addr.port() == 0 { format!("{addr}#{}", sc.name) } else { addr.to_string() };
            wanted.insert((sc.protocol, key), (sc.name.clone(), addr, sc.sockets_per_port(loops)));
        }
    }
    wanted
}

/// The name in systemd's descriptor store of a listener's socket `index`: transport and key,
/// with only characters systemd allows (`tcp-0.0.0.0_443`, `udp-[__]_3478`,
/// `tcp-127.0.0.1_0-echo` for port 0), and `.N` for the sockets after the first of a port's
/// group (`udp-0.0.0.0_51820.1`).
fn fd_name(key: &ListenerKey, index: usize) -> String {
    let proto = match key.0 {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
    };
    let base = format!("{proto}-{}", key.1.replace(':', "_").replace('#', "-"));
    if index == 0 {
        base
    } else {
        format!("{base}.{index}")
    }
}

/// The listeners of `config` that a previous process left in systemd's store (by name, else by
/// address), ready to serve. A UDP port whose group the previous process served with fewer
/// sockets than wanted gets more joined to it; one kept without a group serves as it is.
fn inherited_listeners(config: &Config, loops: usize) -> HashMap<ListenerKey, Bound> {
    let mut out = HashMap::new();
    for (key, (_, addr, sockets)) in wanted_listeners(config, loops) {
        let kept = match key.0 {
            Protocol::Tcp => shared::inherit::take_tcp(&fd_name(&key, 0), addr)
                .map(|l| shared::listeners::adopt_tcp(l).map(Bound::Tcp)),
            Protocol::Udp => {
                let group: Vec<_> = (0..sockets)
                    .map_while(|i| shared::inherit::take_udp(&fd_name(&key, i), addr))
                    .map(shared::listeners::adopt_udp)
                    .collect();
                (!group.is_empty()).then(|| group.into_iter().collect::<std::io::Result<Vec<_>>>().map(Bound::Udp))
            }
        };
        match kept {
            Some(Ok(mut b)) => {
                if let Bound::Udp(group) = &mut b {
                    join_group(group, sockets);
                }
                out.insert(key, b);
            }
            Some(Err(e)) => {
                tracing::warn!(listen = %addr, error = %e, "a socket kept across the restart cannot serve; binding anew")
            }
            None => {}
        }
    }
    out
}

/// Grow a UDP port's kept `group` to `sockets`, as far as the kernel lets it join.
fn join_group(group: &mut Vec<tokio::net::UdpSocket>, sockets: usize) {
    let Some(addr) = group.first().and_then(|s| s.local_addr().ok()) else { return };
    let more = sockets.saturating_sub(group.len());
    if more == 0 {
        return;
    }
    match crate::listener::join_udp(addr, more) {
        Ok(joined) => group.extend(joined),
        Err(e) => tracing::warn!(listen = %addr, serving = group.len(), wanted = sockets, error = %e,
            "udp_reuseport: the socket kept across the restart is not in a group; it serves alone until the port is rebound"),
    }
}

fn bind(key: &ListenerKey, addr: SocketAddr, sockets: usize, reuseport: bool) -> std::io::Result<Bound> {
    match key.0 {
        Protocol::Tcp => crate::listener::bind_tcp(addr).map(Bound::Tcp),
        Protocol::Udp => crate::listener::bind_udp(addr, sockets, reuseport).map(Bound::Udp),
    }
}

/// Serve `pre` if given, else bind (`sockets` of them: retrying with backoff while the address
/// is busy); then accept until stopped.
async fn listen_forever(
    key: ListenerKey,
    addr: SocketAddr,
    sockets: usize,
    mut pre: Option<Bound>,
    slot: Arc<ArcSwap<Service>>,
    local: Arc<Mutex<Option<SocketAddr>>>,
    shared: Arc<Shared>,
) {
    let protocol = key.0;
    let mut backoff = Duration::from_millis(500);
    let mut attempts = 0u32;
    loop {
        let bound = match pre.take() {
            Some(b) => Ok(b),
            None => bind(&key, addr, sockets, slot.load().cfg.udp_reuseport),
        };
        match bound {
            Ok(b) => {
                // Kept open by systemd across a restart (a no-op outside systemd).
                for (i, fd) in b.fds().into_iter().enumerate() {
                    shared::inherit::store(&fd_name(&key, i), fd);
                }
                let la = b.local_addr().unwrap_or(addr);
                if let Ok(mut l) = local.lock() {
                    *l = Some(la);
                }
                tracing::info!(service = %slot.load().cfg.name, listen = %la, ?protocol, "listening");
                match b {
                    Bound::Tcp(l) => crate::tcp::accept_loop(l, slot, shared).await,
                    // On the loop serving the fewest UDP sockets, with its flows, or a group's
                    // sockets one on each loop (`shared::workers`); aborting this task stops
                    // them there.
                    Bound::Udp(group) => {
                        let placing = shared.clone();
                        let serve = move |s| crate::udp::serve(s, slot.clone(), shared.clone());
                        placing.workers.serve_udp_group(group, serve).await
                    }
                }
                return;
            }
            Err(e) => {
                // Log the first failure and then about once a minute, not every retry.
                if attempts.is_multiple_of(60) {
                    tracing::error!(service = %slot.load().cfg.name, listen = %addr, error = %e, "cannot bind; retrying in the background");
                }
                attempts += 1;
                // A stop (drain) ends the retries: drain waits for UDP listeners to end.
                let mut stop = shared.stop.clone();
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.wait_for(|stopped| *stopped) => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

enum Bound {
    Tcp(tokio::net::TcpListener),
    /// One socket, or a port's group (`udp_reuseport`); never empty.
    Udp(Vec<tokio::net::UdpSocket>),
}

impl Bound {
    fn fds(&self) -> Vec<std::os::fd::BorrowedFd<'_>> {
        use std::os::fd::AsFd;
        match self {
            Bound::Tcp(l) => vec![l.as_fd()],
            Bound::Udp(group) => group.iter().map(|s| s.as_fd()).collect(),
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        match self {
            Bound::Tcp(l) => l.local_addr(),
            Bound::Udp(group) => {
                group.first().ok_or_else(|| std::io::ErrorKind::NotFound.into()).and_then(|s| s.local_addr())
            }
        }
    }
}
