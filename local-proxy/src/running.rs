//! The listening sockets being served, by [`ListenKey`]. Each has its own stop token (a child of
//! shutdown) and task; what it serves sits behind an `ArcSwap`, so a reload can retarget a kept
//! socket (a stream renamed, a port moved from a stream to HTTPS) without closing it.
//!
//! A reload diffs the new plan against this set: kept keys keep their sockets, added keys are
//! bound before anything changes (a bind failure refuses the reload), removed keys stop
//! accepting and close their sockets while the connections they accepted go on. A removed
//! socket (or the admin listener) on the port of an added one is closed first, and served
//! again if the reload is refused.
//!
//! Every socket served is also kept in systemd's descriptor store and dropped from it when a
//! reload closes it (`inherit`), so a restart finds the same sockets still queueing.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsFd;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use arc_swap::ArcSwap;
use shared::listeners::Plan;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::config::Protocol;
use crate::listeners::{self, BindError, ListenKey, Listeners, Origin, Serves, TcpBound, UdpBound};
use crate::state::State;
use crate::{accept, admin, stream};

/// How long a removed listener may take to wind down (its UDP flows end with it).
const STOP_BOUND: Duration = Duration::from_secs(5);

#[derive(Debug)]
enum Target {
    Tcp(Arc<ArcSwap<listeners::Role>>),
    Udp(Arc<ArcSwap<String>>),
}

#[derive(Debug)]
struct Entry {
    target: Target,
    /// The bound address (the real port when the key's is 0).
    local: Option<SocketAddr>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Entry {
    fn serves(&self) -> Serves {
        match &self.target {
            Target::Tcp(r) => Serves::Tcp((**r.load()).clone()),
            Target::Udp(n) => Serves::Udp((**n.load()).clone()),
        }
    }

    /// Point a kept socket at what the new config has it serve.
    fn retarget(&self, serves: &Serves) {
        match (&self.target, serves) {
            (Target::Tcp(r), Serves::Tcp(role)) if **r.load() != *role => r.store(Arc::new(role.clone())),
            (Target::Udp(n), Serves::Udp(name)) if **n.load() != *name => n.store(Arc::new(name.clone())),
            _ => {}
        }
    }

    /// Stop it and wait (bounded) until its socket is closed.
    async fn stop(self, key: &str) {
        self.stop.cancel();
        if tokio::time::timeout(STOP_BOUND, self.task).await.is_err() {
            warn!(listener = key, "listener still winding down after {STOP_BOUND:?}");
        }
    }
}

/// The admin listener, by its configured address.
#[derive(Debug)]
struct AdminEntry {
    addr: SocketAddr,
    local: Option<SocketAddr>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

/// Every socket being served. Owned by the `Handle`.
#[derive(Debug)]
pub(crate) struct Running {
    state: Arc<State>,
    tasks: TaskTracker,
    conns: TaskTracker,
    entries: Mutex<HashMap<ListenKey, Entry>>,
    admin: Mutex<Option<AdminEntry>>,
    /// One reload at a time.
    reload: tokio::sync::Mutex<()>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A poisoned map is still consistent: entries are inserted and removed whole.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Running {
    pub(crate) fn new(state: Arc<State>, tasks: TaskTracker, conns: TaskTracker) -> Self {
        Self {
            state,
            tasks,
            conns,
            entries: Mutex::default(),
            admin: Mutex::default(),
            reload: tokio::sync::Mutex::new(()),
        }
    }

    /// Serve bound sockets; a key already served is left as it is (its new socket is closed).
    pub(crate) fn serve(&self, listeners: Listeners) {
        let mut entries = lock(&self.entries);
        for TcpBound { key, origin, role, listener } in listeners.tcp {
            if entries.contains_key(&key) {
                debug!(listener = %key, "already served");
                continue;
            }
            let local = listener.local_addr().ok();
            crate::inherit::store(&key, listener.as_fd());
            let role = Arc::new(ArcSwap::from_pointee(role));
            let stop = self.state.shutdown.child_token();
            let task = self.tasks.spawn(accept::accept_loop(
                listener,
                origin,
                role.clone(),
                stop.clone(),
                self.state.clone(),
                self.conns.clone(),
            ));
            entries.insert(key, Entry { target: Target::Tcp(role), local, stop, task });
        }
        for UdpBound { key, origin, stream, socket } in listeners.udp {
            if entries.contains_key(&key) {
                debug!(listener = %key, "already served");
                continue;
            }
            let local = socket.local_addr().ok();
            crate::inherit::store(&key, socket.as_fd());
            let name = Arc::new(ArcSwap::from_pointee(stream));
            let stop = self.state.shutdown.child_token();
            // On the event loop serving the fewest UDP sockets, with its flows
            // (`shared::workers`); a stop ends it there, as does this task's abort.
            let (state, serve_name, serve_stop) = (self.state.clone(), name.clone(), stop.clone());
            let task = self.tasks.spawn(async move {
                let serving = state.clone();
                let serve = move |socket| stream::udp::serve(socket, origin, serve_name, serve_stop, state);
                serving.workers.serve_udp(socket, serve).await
            });
            entries.insert(key, Entry { target: Target::Udp(name), local, stop, task });
        }
    }

    /// Serve the admin endpoints on `listener`, configured as `addr`.
    pub(crate) fn serve_admin(&self, addr: SocketAddr, listener: TcpListener) {
        let local = listener.local_addr().ok();
        let stop = self.state.shutdown.child_token();
        let task = self.tasks.spawn(admin::serve(listener, stop.clone(), self.state.clone()));
        *lock(&self.admin) = Some(AdminEntry { addr, local, stop, task });
    }

    /// Every socket served now: its key, what it serves and its bound address.
    pub(crate) fn listening(&self) -> Vec<(ListenKey, Serves, Option<SocketAddr>)> {
        lock(&self.entries).iter().map(|(k, e)| (k.clone(), e.serves(), e.local)).collect()
    }

    /// The admin listener's bound address, if any.
    pub(crate) fn admin_addr(&self) -> Option<SocketAddr> {
        lock(&self.admin).as_ref().and_then(|a| a.local)
    }

    /// The mesh address served now, if any.
    pub(crate) fn mesh_ip(&self) -> Option<IpAddr> {
        lock(&self.entries).keys().find(|k| k.origin == Origin::Mesh).map(|k| k.addr.ip())
    }

    /// Make the served sockets match `plan` and `admin`, calling `apply_config` once every new
    /// socket is bound and before any is served (so they serve the new config). On a bind
    /// failure nothing changes and the error names the socket.
    pub(crate) async fn reload(
        &self,
        plan: Vec<(ListenKey, Serves)>,
        admin: Option<SocketAddr>,
        apply_config: impl FnOnce(),
    ) -> Result<(), BindError> {
        let _one_at_a_time = self.reload.lock().await;
        let wanted: HashMap<ListenKey, Serves> = plan.into_iter().collect();
        let Plan { added, kept, removed } = Plan::new(&lock(&self.entries), wanted);
        let old_admin = lock(&self.admin).as_ref().map(|a| a.addr);
        let new_admin_port = admin.filter(|_| admin != old_admin).map(|a| a.port()).filter(|&p| p != 0);
        // A socket going away on the port and transport of a new one (a wildcard address
        // replaced by specific ones, the admin listener moved to 0.0.0.0 on its port, a stream
        // taking the admin's old port) would make the new bind fail: close it first.
        let takes_port = |protocol: Protocol, port: u16| {
            port != 0
                && (added.iter().any(|(a, _)| a.protocol == protocol && a.addr.port() == port)
                    || (protocol == Protocol::Tcp && new_admin_port == Some(port)))
        };
        let (clashing, later): (Vec<ListenKey>, Vec<ListenKey>) =
            removed.into_iter().partition(|r| takes_port(r.protocol, r.addr.port()));
        // Closing a socket unit's socket would not free its port: refused before anything is
        // closed.
        if let Some(held) = clashing.iter().find(|k| held_by_socket_unit(k)) {
            return Err(port_held_by_unit(held, &added, admin.filter(|_| admin != old_admin)));
        }
        let closed_early = self.stop(&clashing).await;
        let admin_closed_early = match old_admin {
            Some(old) if admin != old_admin && takes_port(Protocol::Tcp, old.port()) => self.stop_admin().await,
            _ => None,
        };

        let bind = || {
            let mut bound = Listeners::default();
            for (key, serves) in &added {
                listeners::bind_one(key.clone(), serves.clone(), &mut bound)?;
            }
            let new_admin = match admin {
                Some(addr) if admin != old_admin => Some((addr, listeners::bind_admin(addr)?)),
                _ => None,
            };
            Ok((bound, new_admin))
        };
        let freed: Vec<u16> =
            closed_early.iter().map(|(k, _)| k.addr.port()).chain(admin_closed_early.map(|a| a.port())).collect();
        let taken_by_freed = |e: &BindError| {
            matches!(e, BindError::Bind { addr, .. } if freed.contains(&addr.port())) && listeners::in_use(e)
        };
        let (bound, new_admin) = match shared::listeners::bind_while_freeing(bind, taken_by_freed).await {
            Ok(b) => b,
            Err(e) => {
                // Put back what was closed early (the new sockets closed as `bind` failed).
                self.restore(closed_early).await;
                if let Some(addr) = admin_closed_early {
                    match listeners::bind_admin(addr) {
                        Ok(l) => self.serve_admin(addr, l),
                        Err(e) => {
                            warn!(listener = "admin", %addr, error = %e, "could not bind again after a refused reload")
                        }
                    }
                }
                return Err(e);
            }
        };

        apply_config();
        {
            let entries = lock(&self.entries);
            for (key, serves) in &kept {
                if let Some(entry) = entries.get(key) {
                    entry.retarget(serves);
                }
            }
        }
        log_bound(&bound);
        self.serve(bound);
        if admin != old_admin {
            self.stop_admin().await;
            if let Some((addr, listener)) = new_admin {
                if let Ok(local) = listener.local_addr() {
                    info!(listener = "admin", addr = %local, "listening");
                }
                self.serve_admin(addr, listener);
            }
        }
        self.stop(&later).await;
        Ok(())
    }

    /// Stop the admin listener, if there is one, and wait (bounded) until its socket is
    /// closed; returns its configured address.
    async fn stop_admin(&self) -> Option<SocketAddr> {
        let old = lock(&self.admin).take()?;
        old.stop.cancel();
        let _ = tokio::time::timeout(STOP_BOUND, old.task).await;
        info!(listener = "admin", addr = %old.addr, "closed");
        Some(old.addr)
    }

    /// Stop the listeners of `keys`; returns what each served (for [`Running::restore`]).
    async fn stop(&self, keys: &[ListenKey]) -> Vec<(ListenKey, Serves)> {
        let taken: Vec<(ListenKey, Entry)> = {
            let mut entries = lock(&self.entries);
            keys.iter().filter_map(|k| entries.remove(k).map(|e| (k.clone(), e))).collect()
        };
        let mut out = Vec::new();
        for (key, entry) in taken {
            let name = key.to_string();
            out.push((key.clone(), entry.serves()));
            entry.stop(&name).await;
            // Out of systemd's store too, else the kernel would queue connections for it.
            crate::inherit::forget(&key);
            info!(listener = %name, "closed; its established connections go on");
        }
        out
    }

    /// Bind and serve again what a refused reload closed early (best effort; its port may
    /// still be systemd's for a moment, `bind_while_freeing`).
    async fn restore(&self, closed: Vec<(ListenKey, Serves)>) {
        let mut bound = Listeners::default();
        for (key, serves) in closed {
            let bind = || listeners::bind_one(key.clone(), serves.clone(), &mut bound);
            if let Err(e) = shared::listeners::bind_while_freeing(bind, listeners::in_use).await {
                warn!(listener = %key, error = %e, "could not bind again after a refused reload");
            }
        }
        self.serve(bound);
    }
}

/// The same lines `main` logs for the sockets bound at start-up.
pub(crate) fn log_bound(bound: &Listeners) {
    for b in &bound.tcp {
        if let Ok(addr) = b.listener.local_addr() {
            info!(listener = listeners::label(b.origin, &b.role), %addr, "listening");
        }
    }
    for b in &bound.udp {
        if let Ok(addr) = b.socket.local_addr() {
            info!(listener = "udp", stream = %b.stream, origin = %b.origin, %addr, "listening");
        }
    }
}

/// Whether the socket of `key` came from a systemd socket unit (`shared::inherit`).
fn held_by_socket_unit(key: &ListenKey) -> bool {
    match key.protocol {
        Protocol::Tcp => shared::inherit::tcp_held_by_socket_unit(key.addr),
        Protocol::Udp => shared::inherit::udp_held_by_socket_unit(key.addr),
    }
}

/// The refusal of a reload whose new socket (in `added`, or the admin listener moving to
/// `admin`) would take the port of `held`, a socket a systemd socket unit passed.
fn port_held_by_unit(held: &ListenKey, added: &[(ListenKey, Serves)], admin: Option<SocketAddr>) -> BindError {
    let port = held.addr.port();
    let taker = added
        .iter()
        .find(|(k, _)| k.protocol == held.protocol && k.addr.port() == port)
        .map(|(k, serves)| (serves.what(k.origin), k.addr))
        .or_else(|| {
            admin.filter(|a| held.protocol == Protocol::Tcp && a.port() == port).map(|a| ("admin".to_string(), a))
        })
        .unwrap_or_else(|| (String::new(), held.addr));
    let why = format!(
        "its port is held by {}, which a systemd socket unit passed and keeps open: change the .socket unit and restart",
        held.addr
    );
    BindError::Bind { what: taker.0, addr: taker.1, source: std::io::Error::new(std::io::ErrorKind::AddrInUse, why) }
}
