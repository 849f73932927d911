//! Listening sockets that outlive a restart, so no client is refused while the proxy restarts.
//!
//! Every socket the proxy serves is put in systemd's file descriptor store (`FDSTORE=1`, named
//! by its [`ListenKey`]; the unit sets `FileDescriptorStoreMax=`). During `systemctl restart`
//! systemd holds them open: the kernel goes on completing handshakes and queueing connections,
//! and datagrams, while no process reads them. The next process gets them back in
//! `LISTEN_FDS`/`LISTEN_FDNAMES` and serves each instead of binding anew. Sockets from a
//! `.socket` unit arrive the same way and are matched by address and transport when their name
//! is not one of ours. What the new config no longer asks for is closed and dropped from the
//! store, so the kernel stops queueing for it.
//!
//! The inherited sockets are process-wide state from the environment: [`adopt_from_env`] takes
//! them once in `main` before any thread starts; binding looks here first ([`take_tcp`],
//! [`take_udp`]). Outside systemd (a shell, the in-process tests) the pool is empty and every
//! call below is a no-op.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::fd::BorrowedFd;
use std::sync::{Mutex, MutexGuard};

use tracing::{info, warn};

use crate::listeners::{ListenKey, Origin};

/// The environment variable with the names of the passed descriptors, `:`-separated.
const LISTEN_FDNAMES: &str = "LISTEN_FDNAMES";

/// What is left of the inherited sockets: taken one by one as the plan is bound.
#[derive(Debug, Default)]
struct Pool {
    tcp: Vec<(String, TcpListener)>,
    udp: Vec<(String, UdpSocket)>,
}

static POOL: Mutex<Option<Pool>> = Mutex::new(None);

fn pool() -> MutexGuard<'static, Option<Pool>> {
    // Entries are moved in and out whole; a poisoned pool is still consistent.
    POOL.lock().unwrap_or_else(|p| p.into_inner())
}

/// Take the sockets passed in `LISTEN_FDS` (systemd's store or socket units; `LISTEN_PID` must be
/// ours) and clear the variables, so nothing started later sees them. Call once, before any
/// thread starts (it changes the environment). Returns how many TCP and UDP sockets came.
pub fn adopt_from_env() -> (usize, usize) {
    let names: Vec<String> =
        std::env::var(LISTEN_FDNAMES).map(|v| v.split(':').map(str::to_string).collect()).unwrap_or_default();
    std::env::remove_var(LISTEN_FDNAMES);
    let mut fds = listenfd::ListenFd::from_env();
    let mut out = Pool::default();
    for i in 0..fds.len() {
        // systemd's default name for stored descriptors is "stored", for socket units the unit's.
        let name = names.get(i).cloned().unwrap_or_default();
        match fds.take_tcp_listener(i) {
            Ok(Some(l)) => {
                out.tcp.push((name, l));
                continue;
            }
            Ok(None) => continue,
            Err(_) => {}
        }
        match fds.take_udp_socket(i) {
            Ok(Some(s)) => out.udp.push((name, s)),
            Ok(None) => {}
            Err(e) => {
                warn!(fd = 3 + i, %name, error = %e, "passed descriptor is neither a TCP nor a UDP socket; ignored")
            }
        }
    }
    let counts = (out.tcp.len(), out.udp.len());
    *pool() = Some(out);
    counts
}

/// The inherited TCP listener for `key`: the one stored under its name, else (fixed ports only)
/// one bound to its address.
pub(crate) fn take_tcp(key: &ListenKey) -> Option<TcpListener> {
    let mut guard = pool();
    let p = guard.as_mut()?;
    take(&mut p.tcp, key, |l| l.local_addr().ok())
}

/// The inherited UDP socket for `key`, matched as in [`take_tcp`].
pub(crate) fn take_udp(key: &ListenKey) -> Option<UdpSocket> {
    let mut guard = pool();
    let p = guard.as_mut()?;
    take(&mut p.udp, key, |s| s.local_addr().ok())
}

fn take<S>(list: &mut Vec<(String, S)>, key: &ListenKey, local: impl Fn(&S) -> Option<SocketAddr>) -> Option<S> {
    let name = key.fd_name();
    let by_name = list.iter().position(|(n, _)| *n == name);
    let by_addr =
        || (key.addr.port() != 0).then(|| list.iter().position(|(_, s)| local(s) == Some(key.addr))).flatten();
    let i = by_name.or_else(by_addr)?;
    let (_, sock) = list.swap_remove(i);
    info!(listener = %key, "serving the socket kept across the restart");
    Some(sock)
}

/// Close the inherited sockets nothing claimed and drop them from systemd's store: the config
/// no longer has them. With `keep_mesh`, sockets on the mesh side stay for the mesh listeners
/// that come once yggdrasil answers.
pub fn release_unclaimed(keep_mesh: bool) {
    let mut guard = pool();
    let Some(p) = guard.as_mut() else { return };
    let keep = |name: &str| keep_mesh && name.starts_with(Origin::Mesh.fd_prefix());
    let mut names = Vec::new();
    p.tcp.retain(|(n, _)| {
        keep(n) || {
            names.push(n.clone());
            false
        }
    });
    p.udp.retain(|(n, _)| {
        keep(n) || {
            names.push(n.clone());
            false
        }
    });
    for name in names {
        info!(fd_name = %name, "socket kept across the restart is no longer configured; closed");
        forget_name(&name);
    }
}

/// Put a served socket in systemd's store (no-op outside systemd).
pub(crate) fn store(key: &ListenKey, fd: BorrowedFd<'_>) {
    if let Err(e) = shared::notify::store_fd(&key.fd_name(), fd) {
        warn!(listener = %key, error = %e, "cannot keep the socket in systemd's store; a restart will rebind it");
    }
}

/// Drop a closed socket from systemd's store (no-op outside systemd).
pub(crate) fn forget(key: &ListenKey) {
    forget_name(&key.fd_name());
}

fn forget_name(name: &str) {
    // Names we did not make (a socket unit's) may not be valid FDNAMEs for removal; skip those.
    if !shared::notify::fd_name_valid(name) {
        return;
    }
    if let Err(e) = shared::notify::remove_fd(name) {
        warn!(fd_name = %name, error = %e, "cannot drop the socket from systemd's store");
    }
}
