//! Listening sockets, for both binaries: binding them and reconciling the running set with a
//! new config.
//!
//! Binding: `SO_REUSEADDR`; IPv6 sockets that do not also take IPv4 (so `0.0.0.0:443` and
//! `[::]:443` can both be listed); optionally `IP_FREEBIND` (an address not up yet, like the
//! mesh address while yggdrasil restarts). UDP sockets' receive queues are sized by their
//! service's `udp_recv_buffer` ([`RecvBufferKeeper`], [`set_recv_buffer`]). A UDP port may be
//! served by a group of sockets, one per event loop ([`udp_group`], `SO_REUSEPORT`): the
//! kernel hashes each datagram's addresses to one of them, so one client's datagrams always
//! reach the same socket (its flow lives in that socket's table) while many clients' spread.
//!
//! Reconciling (sans-io): [`Plan`] diffs the running sockets against the ones a new config
//! asks for, by key (each binary's key: address, transport, ...). A reload binds every added
//! socket first, all or none ([`bind_all`]); only then does anything change: kept sockets are
//! pointed at what the new config has them serve, added ones start serving, removed ones
//! close while the connections they accepted go on. A socket that cannot be bound refuses the
//! reload and the running set stays whole.

use std::collections::HashMap;
use std::hash::Hash;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};

use nix::errno::Errno;
use nix::sys::socket::{getsockopt, setsockopt, sockopt};
use socket2::{Domain, Socket, Type};
use tokio::net::{TcpListener, UdpSocket};

/// How a listening socket is set up beyond its address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// TCP: the accept queue's length.
    pub backlog: i32,
    /// Bind even when the address is not (yet) on an interface.
    pub freebind: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self { backlog: 1024, freebind: false }
    }
}

/// `udp_recv_buffer`'s default (both binaries): the receive queue of UDP listeners and flow
/// sockets. It rides out bursts from many clients at once, a relay's batches at 1 Gbit/s
/// (~3,500 datagrams of 1,200 bytes), and the datagrams that queue while a restart hands the
/// socket to the next process. The kernel's default, 208 KiB, holds ~170 datagrams.
pub const UDP_RECV_BUFFER: usize = 4 << 20;

/// `udp_recv_buffer`'s range, bytes.
pub const UDP_RECV_BUFFER_RANGE: std::ops::RangeInclusive<usize> = 4096..=(256 << 20);

/// A UDP socket's receive buffer: what was asked, and what the kernel set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecvBuffer {
    pub asked: usize,
    pub got: usize,
}

/// Whether `SO_RCVBUFFORCE` was refused once (no CAP_NET_ADMIN): not asked again.
static FORCE_REFUSED: AtomicBool = AtomicBool::new(false);

/// Sets `sock`'s receive buffer to `size` bytes: past `net.core.rmem_max` when the process
/// may (CAP_NET_ADMIN: `SO_RCVBUFFORCE`), else up to it, where the kernel caps it silently.
/// Returns what the kernel set, so a cap can be reported.
pub fn set_recv_buffer(sock: &impl AsFd, size: usize) -> io::Result<RecvBuffer> {
    size_recv_buffer(sock, size)?;
    // Linux reports twice what was set (the half it keeps for its own bookkeeping).
    let got = getsockopt(sock, sockopt::RcvBuf)? / 2;
    Ok(RecvBuffer { asked: size, got })
}

/// [`set_recv_buffer`] without reading the result back: a flow's socket, whose cap its
/// listener has already reported.
pub fn size_recv_buffer(sock: &impl AsFd, size: usize) -> io::Result<()> {
    let forced = !FORCE_REFUSED.load(Ordering::Relaxed)
        && match setsockopt(sock, sockopt::RcvBufForce, &size) {
            Ok(()) => true,
            Err(Errno::EPERM) => {
                FORCE_REFUSED.store(true, Ordering::Relaxed);
                false
            }
            Err(e) => return Err(e.into()),
        };
    if !forced {
        setsockopt(sock, sockopt::RcvBuf, &size)?;
    }
    Ok(())
}

/// Keeps a UDP listener's receive buffer at its service's `udp_recv_buffer`: set when the
/// listener starts serving and again whenever a reload changes it (a kept socket included),
/// with a warning, once per change, when the kernel caps it.
#[derive(Debug, Default)]
pub struct RecvBufferKeeper {
    applied: Option<usize>,
}

impl RecvBufferKeeper {
    /// `name`: the service or stream, for the log.
    pub fn keep(&mut self, sock: &UdpSocket, size: usize, name: &str) {
        if self.applied == Some(size) {
            return;
        }
        self.applied = Some(size);
        let listen = sock.local_addr().ok();
        match set_recv_buffer(sock, size) {
            Ok(b) if b.got < b.asked => tracing::warn!(
                name,
                listen = ?listen,
                asked = b.asked,
                got = b.got,
                "udp_recv_buffer capped by the kernel at net.core.rmem_max: raise that sysctl, or run with \
                 CAP_NET_ADMIN; bursts beyond the smaller queue are dropped"
            ),
            Ok(b) => tracing::debug!(name, listen = ?listen, bytes = b.got, "udp receive buffer set"),
            Err(e) => tracing::warn!(name, listen = ?listen, error = %e, "cannot set the udp receive buffer"),
        }
    }
}

fn socket(addr: SocketAddr, ty: Type, opts: &Options, reuse_port: bool) -> io::Result<Socket> {
    let sock = Socket::new(Domain::for_address(addr), ty, None)?;
    // TCP only (a restarted listener binds while the old one's connections linger in
    // TIME_WAIT). On UDP, SO_REUSEADDR lets any local user bind the same port beside ours, and
    // a socket on the host's address then takes the datagrams meant for our wildcard one.
    if ty == Type::STREAM {
        sock.set_reuse_address(true)?;
    }
    if reuse_port {
        sock.set_reuse_port(true)?;
    }
    if addr.is_ipv6() {
        // So `0.0.0.0` and `::` can both be listed without clashing.
        sock.set_only_v6(true)?;
    }
    if opts.freebind {
        match addr {
            SocketAddr::V4(_) => sock.set_freebind(true)?,
            SocketAddr::V6(_) => sock.set_freebind_ipv6(true)?,
        }
    }
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    Ok(sock)
}

/// A TCP listener on `addr`.
pub fn tcp(addr: SocketAddr, opts: &Options) -> io::Result<TcpListener> {
    let sock = socket(addr, Type::STREAM, opts, false)?;
    sock.listen(opts.backlog)?;
    TcpListener::from_std(sock.into())
}

/// A UDP socket on `addr`.
pub fn udp(addr: SocketAddr, opts: &Options) -> io::Result<UdpSocket> {
    UdpSocket::from_std(socket(addr, Type::DGRAM, opts, false)?.into())
}

/// `n` UDP sockets sharing `addr` (`SO_REUSEPORT`), the first bound to it and the others to
/// the first's address (its port, when `addr` asks for any port); `n` = 1 is [`udp`]'s one
/// socket, with no group. Only sockets of the same user can join a group: another user's
/// process cannot take a share of the port.
pub fn udp_group(addr: SocketAddr, opts: &Options, n: usize) -> io::Result<Vec<UdpSocket>> {
    if n <= 1 {
        return udp(addr, opts).map(|s| vec![s]);
    }
    let first = socket(addr, Type::DGRAM, opts, true)?;
    let bound = first.local_addr()?.as_socket().unwrap_or(addr);
    let mut group = vec![UdpSocket::from_std(first.into())?];
    group.extend(udp_joining(bound, opts, n - 1)?);
    Ok(group)
}

/// One UDP socket with `SO_REUSEPORT`: a group of one, as a service that asks for a group
/// gets on one loop, so that its port can be shared as a group's is (a wildcard and a specific
/// address both in groups; more loops joining after a restart).
pub fn udp_shared(addr: SocketAddr, opts: &Options) -> io::Result<UdpSocket> {
    UdpSocket::from_std(socket(addr, Type::DGRAM, opts, true)?.into())
}

/// `n` more sockets for the group on `addr` (whose sockets have `SO_REUSEPORT`): a group kept
/// across a restart that the new process serves with more loops. Fails (`EADDRINUSE`) when the
/// port's socket is not in a group.
pub fn udp_joining(addr: SocketAddr, opts: &Options, n: usize) -> io::Result<Vec<UdpSocket>> {
    (0..n).map(|_| UdpSocket::from_std(socket(addr, Type::DGRAM, opts, true)?.into())).collect()
}

/// A listener kept across a restart (or from a socket unit, which may pass it blocking).
pub fn adopt_tcp(l: std::net::TcpListener) -> io::Result<TcpListener> {
    l.set_nonblocking(true)?;
    TcpListener::from_std(l)
}

/// A UDP socket kept across a restart.
pub fn adopt_udp(s: std::net::UdpSocket) -> io::Result<UdpSocket> {
    s.set_nonblocking(true)?;
    UdpSocket::from_std(s)
}

/// What a new config does to a running set of listening sockets keyed by `K`; `V` is what
/// the new config has each socket serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan<K, V> {
    /// Keys the running set lacks: to bind (all before anything changes), then serve.
    pub added: Vec<(K, V)>,
    /// Keys both have: the socket stays and serves `V` from now on.
    pub kept: Vec<(K, V)>,
    /// Keys only the running set has: to close.
    pub removed: Vec<K>,
}

impl<K: Eq + Hash + Clone, V> Plan<K, V> {
    /// Diff the running sockets (by key) against `wanted`.
    pub fn new<E>(running: &HashMap<K, E>, wanted: impl IntoIterator<Item = (K, V)>) -> Self {
        let (mut added, mut kept) = (Vec::new(), Vec::new());
        let mut still = std::collections::HashSet::new();
        for (key, value) in wanted {
            if running.contains_key(&key) {
                still.insert(key.clone());
                kept.push((key, value));
            } else {
                added.push((key, value));
            }
        }
        let removed = running.keys().filter(|k| !still.contains(*k)).cloned().collect();
        Self { added, kept, removed }
    }
}

/// Runs `bind` again while it fails with "address in use" on a port a reload has just closed
/// (`taken_by_freed`): the socket is also dropped from systemd's descriptor store, but
/// systemd closes its copy only when it reads that message, so the port may stay taken for a
/// moment. 20 times, 50 ms apart, at most; any other result at once.
pub async fn bind_while_freeing<T, E>(
    mut bind: impl FnMut() -> Result<T, E>,
    taken_by_freed: impl Fn(&E) -> bool,
) -> Result<T, E> {
    let mut result = bind();
    for _ in 0..20 {
        match &result {
            Err(e) if taken_by_freed(e) => {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                result = bind();
            }
            _ => break,
        }
    }
    result
}

/// Bind every added socket, in order, all or none: the first failure is returned and the
/// sockets bound before it close as they drop.
pub fn bind_all<K, V, S, E>(
    added: impl IntoIterator<Item = (K, V)>,
    mut bind: impl FnMut(&K, &V) -> Result<S, E>,
) -> Result<Vec<(K, S)>, E> {
    let mut bound = Vec::new();
    for (key, value) in added {
        let socket = bind(&key, &value)?;
        bound.push((key, socket));
    }
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Nobody can bind beside a UDP listener: with SO_REUSEADDR set on both, any user's
    /// socket could share its port and take its datagrams.
    #[tokio::test]
    async fn a_udp_listener_shares_its_port_with_no_one() {
        let ours = udp(SocketAddr::from(([127, 0, 0, 1], 0)), &Options::default()).unwrap();
        let addr = ours.local_addr().unwrap();
        let theirs = Socket::new(Domain::IPV4, Type::DGRAM, None).unwrap();
        theirs.set_reuse_address(true).unwrap();
        let err = theirs.bind(&addr.into()).expect_err("a second socket bound the listener's port");
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
    }

    #[test]
    fn a_plan_sorts_keys_into_added_kept_and_removed() {
        let running: HashMap<&str, ()> = [("a", ()), ("b", ())].into_iter().collect();
        let plan = Plan::new(&running, [("b", 2), ("c", 3)]);
        assert_eq!(plan.added, [("c", 3)]);
        assert_eq!(plan.kept, [("b", 2)]);
        assert_eq!(plan.removed, ["a"]);
        let nothing: HashMap<&str, ()> = HashMap::new();
        let plan = Plan::new(&nothing, [("a", 1)]);
        assert_eq!((plan.added.len(), plan.kept.len(), plan.removed.len()), (1, 0, 0));
    }

    #[test]
    fn bind_all_stops_at_the_first_failure() {
        let mut tried = Vec::new();
        let r = bind_all([(1, ()), (2, ()), (3, ())], |k, _| {
            tried.push(*k);
            if *k == 2 {
                Err("busy")
            } else {
                Ok(*k * 10)
            }
        });
        assert_eq!(r, Err("busy"));
        assert_eq!(tried, [1, 2], "nothing is bound after a failure");
        assert_eq!(bind_all([(1, ())], |k, _| Ok::<_, ()>(*k)), Ok(vec![(1, 1)]));
    }

    #[tokio::test]
    async fn a_busy_address_is_an_error_and_v6_leaves_v4_free() {
        let opts = Options::default();
        let a = tcp("127.0.0.1:0".parse().unwrap(), &opts).unwrap();
        let addr = a.local_addr().unwrap();
        assert!(tcp(addr, &opts).is_err(), "a listening address is busy");
        // An IPv6 wildcard on the same port does not take the IPv4 one (where IPv6 exists).
        if let Ok(v6) = tcp(SocketAddr::new("::".parse().unwrap(), addr.port()), &opts) {
            assert_eq!(v6.local_addr().unwrap().port(), addr.port());
        }
        let u = udp("127.0.0.1:0".parse().unwrap(), &opts).unwrap();
        assert_ne!(u.local_addr().unwrap().port(), 0);
    }

    /// With CAP_NET_ADMIN (CI runs as root) a receive buffer is what was asked, past
    /// `net.core.rmem_max`; without it the kernel caps it there, and the result says so. A
    /// smaller size later is set too (a reload that lowers it).
    #[tokio::test]
    async fn a_receive_buffer_is_what_was_asked_or_capped_at_rmem_max() {
        let rmem_max: usize =
            std::fs::read_to_string("/proc/sys/net/core/rmem_max").expect("rmem_max").trim().parse().expect("a number");
        let asked = (rmem_max * 4).clamp(1 << 20, *UDP_RECV_BUFFER_RANGE.end());
        let sock = udp("127.0.0.1:0".parse().unwrap(), &Options::default()).unwrap();
        let got = set_recv_buffer(&sock, asked).expect("set");
        let expected = if net_admin() { asked } else { rmem_max.min(asked) };
        assert_eq!(got, RecvBuffer { asked, got: expected }, "rmem_max {rmem_max}, CAP_NET_ADMIN {}", net_admin());
        assert_eq!(set_recv_buffer(&sock, 65_536).expect("set"), RecvBuffer { asked: 65_536, got: 65_536 });
    }

    /// Whether this process has CAP_NET_ADMIN (bit 12 of its effective set).
    fn net_admin() -> bool {
        let status = std::fs::read_to_string("/proc/self/status").expect("status");
        let eff = status.lines().find_map(|l| l.strip_prefix("CapEff:")).expect("CapEff");
        u64::from_str_radix(eff.trim(), 16).expect("hex") & (1 << 12) != 0
    }
}
