//! Binding the ingress's sockets (`shared::listeners` sets them up the same way for both
//! binaries): a deep accept backlog. A UDP listener's receive queue is its service's
//! `udp_recv_buffer`, kept by its receive loop (`udp::serve`).

use std::io;
use std::net::SocketAddr;

use shared::listeners::Options;

/// Bursts of connections from many clients at once: a deep accept queue refuses fewer.
const TCP: Options = Options { backlog: 4096, freebind: false };
const UDP: Options = Options { backlog: 0, freebind: false };

/// Bind a TCP listener.
pub fn bind_tcp(addr: SocketAddr) -> io::Result<tokio::net::TcpListener> {
    shared::listeners::tcp(addr, &TCP)
}

/// Bind a UDP listener: one socket, or a group of `sockets` sharing the port
/// (`udp_reuseport`, which gives the socket `SO_REUSEPORT` on one loop too).
pub fn bind_udp(addr: SocketAddr, sockets: usize, reuseport: bool) -> io::Result<Vec<tokio::net::UdpSocket>> {
    if sockets <= 1 && reuseport {
        return shared::listeners::udp_shared(addr, &UDP).map(|s| vec![s]);
    }
    shared::listeners::udp_group(addr, &UDP, sockets)
}

/// `n` more sockets for the group serving `addr`.
pub fn join_udp(addr: SocketAddr, n: usize) -> io::Result<Vec<tokio::net::UdpSocket>> {
    shared::listeners::udp_joining(addr, &UDP, n)
}
