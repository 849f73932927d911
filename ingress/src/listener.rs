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

/// Bind a UDP socket for a listener.
pub fn bind_udp(addr: SocketAddr) -> io::Result<tokio::net::UdpSocket> {
    shared::listeners::udp(addr, &UDP)
}

/// Accept errors that mean "out of descriptors or memory": back off and keep accepting.
pub fn is_resource_exhaustion(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM))
}
