//! Listening sockets that outlive a restart, so no client is refused while a binary restarts.
//!
//! Every socket a binary serves is put in systemd's file descriptor store ([`store`]:
//! `FDSTORE=1`, named by the binary's key for it; the unit sets `FileDescriptorStoreMax=`).
//! During `systemctl restart` systemd holds them open: the kernel goes on completing handshakes
//! and queueing connections, and datagrams, while no process reads them. The next process gets
//! them back in `LISTEN_FDS`/`LISTEN_FDNAMES` ([`adopt_from_env`]) and serves each instead of
//! binding anew ([`take_tcp`], [`take_udp`]). Sockets from a `.socket` unit arrive the same way
//! and are matched by address and transport when their name is not one of ours; those are
//! remembered ([`tcp_held_by_socket_unit`]), since systemd keeps its own copy open and a
//! reload cannot close one to bind its port anew. What the new
//! config no longer asks for is closed and dropped from the store ([`release_unclaimed`],
//! [`forget`]), so the kernel stops queueing for it.
//!
//! The inherited sockets are process-wide state from the environment: [`adopt_from_env`] takes
//! them once in `main` before any thread starts. Outside systemd (a shell, the in-process tests)
//! the pool is empty and every call here is a no-op.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::{Mutex, MutexGuard};

use tracing::{info, warn};

/// The environment variable with the names of the passed descriptors, `:`-separated.
const LISTEN_FDNAMES: &str = "LISTEN_FDNAMES";

/// What is left of the inherited sockets: taken one by one as the listeners are bound.
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

/// Addresses of the sockets a socket unit passed (TCP, UDP): systemd keeps its own copy
/// open, so closing ours does not free the port.
static UNIT_HELD: Mutex<(Vec<SocketAddr>, Vec<SocketAddr>)> = Mutex::new((Vec::new(), Vec::new()));

fn unit_held() -> MutexGuard<'static, (Vec<SocketAddr>, Vec<SocketAddr>)> {
    UNIT_HELD.lock().unwrap_or_else(|p| p.into_inner())
}

/// The inherited TCP listener stored as `name`, else (`addr` with a fixed port only) one bound
/// to `addr`.
pub fn take_tcp(name: &str, addr: SocketAddr) -> Option<TcpListener> {
    let mut guard = pool();
    let p = guard.as_mut()?;
    let (listener, from_unit) = take(&mut p.tcp, name, addr, |l| l.local_addr().ok())?;
    if let (true, Ok(at)) = (from_unit, listener.local_addr()) {
        unit_held().0.push(at);
    }
    Some(listener)
}

/// Whether the TCP listener served on `addr` came from a socket unit (matched by address, or
/// passed twice: the unit's copy beside the one we stored). Closing it would not free its
/// port, so a reload cannot bind another socket there in its place.
pub fn tcp_held_by_socket_unit(addr: SocketAddr) -> bool {
    unit_held().0.contains(&addr)
}

/// [`tcp_held_by_socket_unit`] for the UDP socket on `addr`.
pub fn udp_held_by_socket_unit(addr: SocketAddr) -> bool {
    unit_held().1.contains(&addr)
}

/// The inherited UDP socket for `name` or `addr`, matched as in [`take_tcp`].
pub fn take_udp(name: &str, addr: SocketAddr) -> Option<UdpSocket> {
    let mut guard = pool();
    let p = guard.as_mut()?;
    let (socket, from_unit) = take(&mut p.udp, name, addr, |s| s.local_addr().ok())?;
    if let (true, Ok(at)) = (from_unit, socket.local_addr()) {
        unit_held().1.push(at);
    }
    Some(socket)
}

/// The socket for `name` or `addr`, and whether a socket unit passed it: matched by address
/// (its name is not ours), or by name with a copy of the same socket still in `list` (the
/// unit's, beside the one we stored; the sockets of a UDP port's reuseport group share an
/// address but are not copies of one another).
fn take<S: AsFd>(
    list: &mut Vec<(String, S)>,
    name: &str,
    addr: SocketAddr,
    local: impl Fn(&S) -> Option<SocketAddr>,
) -> Option<(S, bool)> {
    let by_name = list.iter().position(|(n, _)| n == name);
    let by_addr = || (addr.port() != 0).then(|| list.iter().position(|(_, s)| local(s) == Some(addr))).flatten();
    let i = by_name.or_else(by_addr)?;
    let (_, sock) = list.swap_remove(i);
    let from_unit = by_name.is_none() || list.iter().any(|(_, s)| same_socket(s.as_fd(), sock.as_fd()));
    info!(fd_name = %name, %addr, "serving the socket kept across the restart");
    Some((sock, from_unit))
}

/// Whether two descriptors are the same socket (one inode).
fn same_socket(a: BorrowedFd<'_>, b: BorrowedFd<'_>) -> bool {
    match (rustix::fs::fstat(a), rustix::fs::fstat(b)) {
        (Ok(a), Ok(b)) => a.st_ino == b.st_ino && a.st_dev == b.st_dev,
        _ => false,
    }
}

/// Close the inherited sockets nothing claimed, except those whose name `keep` says are still
/// wanted later, and drop them from systemd's store: the config no longer has them.
pub fn release_unclaimed(keep: impl Fn(&str) -> bool) -> usize {
    let mut guard = pool();
    let Some(p) = guard.as_mut() else { return 0 };
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
    drop(guard);
    for name in &names {
        info!(fd_name = %name, "socket kept across the restart is no longer configured; closed");
        forget(name);
    }
    names.len()
}

/// Put a served socket in systemd's store under `name` (no-op outside systemd).
pub fn store(name: &str, fd: BorrowedFd<'_>) {
    if let Err(e) = crate::notify::store_fd(name, fd) {
        warn!(fd_name = %name, error = %e, "cannot keep the socket in systemd's store; a restart will rebind it");
    }
}

/// Drop a closed socket from systemd's store (no-op outside systemd).
pub fn forget(name: &str) {
    // Names we did not make (a socket unit's) may not be valid FDNAMEs for removal; skip those.
    if !crate::notify::fd_name_valid(name) {
        return;
    }
    if let Err(e) = crate::notify::remove_fd(name) {
        warn!(fd_name = %name, error = %e, "cannot drop the socket from systemd's store");
    }
}

/// `ip` in a form systemd accepts in a descriptor name (no `:`): IPv4 as is, IPv6 in brackets
/// with `_` for `:`.
pub fn name_part(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V4(v4) => v4.to_string(),
        std::net::IpAddr::V6(v6) => format!("[{}]", v6.to_string().replace(':', "_")),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn names_are_valid_fdnames_and_matching_prefers_the_name() {
        assert_eq!(name_part("192.0.2.1".parse().unwrap()), "192.0.2.1");
        let v6 = name_part("2001:db8::2".parse().unwrap());
        assert_eq!(v6, "[2001_db8__2]");
        assert!(crate::notify::fd_name_valid(&format!("tcp-{v6}-443")));

        let a = TcpListener::bind("127.0.0.1:0").unwrap();
        let b = TcpListener::bind("127.0.0.1:0").unwrap();
        let (a_addr, b_addr) = (a.local_addr().unwrap(), b.local_addr().unwrap());
        let mut list = vec![("x".to_string(), a), ("y".to_string(), b)];
        let local = |l: &TcpListener| l.local_addr().ok();
        // By name, whatever the address: ours.
        let (l, from_unit) = take(&mut list, "y", a_addr, local).unwrap();
        assert_eq!((l.local_addr().unwrap(), from_unit), (b_addr, false));
        // Unknown name: by address, fixed ports only; a socket unit's.
        let any = SocketAddr::new(a_addr.ip(), 0);
        assert!(take(&mut list, "z", any, local).is_none());
        let (l, from_unit) = take(&mut list, "z", a_addr, local).unwrap();
        assert_eq!((l.local_addr().unwrap(), from_unit), (a_addr, true));
        assert!(list.is_empty());
    }

    /// After a restart a socket unit's socket comes twice: the unit's copy under its name and
    /// the one we stored under ours. Taken by our name, it is still the unit's.
    #[test]
    fn a_stored_socket_beside_a_units_copy_is_the_units() {
        let ours = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = ours.local_addr().unwrap();
        let units = ours.try_clone().unwrap();
        let mut list = vec![("ingress.socket".to_string(), units), ("tcp-x".to_string(), ours)];
        let local = |l: &TcpListener| l.local_addr().ok();
        let (l, from_unit) = take(&mut list, "tcp-x", addr, local).unwrap();
        assert_eq!((l.local_addr().unwrap(), from_unit), (addr, true));
        assert_eq!(list.len(), 1, "the unit's copy is left for release_unclaimed");
        // Two sockets on one address (a reuseport group, both stored by us) are not copies
        // of one another: ours.
        let group = |port: u16| {
            let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
            s.set_reuse_port(true).unwrap();
            s.bind(&SocketAddr::from(([127, 0, 0, 1], port)).into()).unwrap();
            UdpSocket::from(s)
        };
        let first = group(0);
        let at = first.local_addr().unwrap();
        let mut list = vec![("udp-x".to_string(), first), ("udp-x.1".to_string(), group(at.port()))];
        let local = |s: &UdpSocket| s.local_addr().ok();
        let (_, from_unit) = take(&mut list, "udp-x", at, local).unwrap();
        assert!(!from_unit, "a group's first socket is ours");
        let (_, from_unit) = take(&mut list, "udp-x.1", at, local).unwrap();
        assert!(!from_unit);
    }
}
