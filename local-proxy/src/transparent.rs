//! Upstream sockets whose source is the client's own address (`IP_TRANSPARENT` /
//! `IPV6_TRANSPARENT`), so a LAN service that cannot read PROXY headers (coturn, Wazuh agents)
//! still sees who connected. This is the one place where the crate sets raw socket options for
//! it; socket2 0.6 wraps both options safely, so there is no `unsafe` here.
//!
//! Needs `CAP_NET_ADMIN`, and a policy route on this host that delivers the LAN service's
//! replies (addressed to the client, not to us) to the local socket instead of forwarding them:
//! `ip rule add fwmark 1 lookup 100; ip route add local 0.0.0.0/0 dev lo table 100` plus an
//! nftables rule marking packets that belong to a transparent socket (`socket transparent 1
//! meta mark set 1`). The LAN service must send those replies through this host. README.md has
//! the whole recipe.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use socket2::{Domain, Socket, Type};
use tokio::net::{TcpSocket, TcpStream, UdpSocket};

/// Why a transparent upstream socket could not be made or connected.
#[derive(Debug, thiserror::Error)]
pub enum TransparentError {
    /// The socket option was refused: usually a missing `CAP_NET_ADMIN`.
    #[error("IP_TRANSPARENT refused (the local proxy needs CAP_NET_ADMIN): {0}")]
    Option(io::Error),
    /// Binding to the client's address failed.
    #[error("binding to the client address {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("creating a socket: {0}")]
    Socket(io::Error),
    /// The connect itself (not the transparent setup) failed.
    #[error("connecting: {0}")]
    Connect(io::Error),
    #[error("connect timed out")]
    Timeout,
}

impl TransparentError {
    /// True when the transparent setup failed (not the upstream): the metrics `result`
    /// is `transparent_failed` rather than `connect_failed`.
    pub fn is_setup(&self) -> bool {
        matches!(self, Self::Option(_) | Self::Bind { .. } | Self::Socket(_))
    }
}

/// Whether `client` can be the source of a socket to `upstream`: both must be of one family
/// (a mesh client's 200::/7 address cannot be the source of an IPv4 connection).
pub fn usable(client: SocketAddr, upstream: SocketAddr) -> bool {
    client.is_ipv4() == upstream.is_ipv4()
}

/// A non-blocking socket of type `ty` with the transparent option set, bound to `client`: the
/// client's own port if free here, else any port on the client's address (the same client
/// may come through two ingress nodes with one source port, or a closed connection may still
/// hold the pair in TIME_WAIT). `share_port` sets `SO_REUSEADDR` first, so other sockets
/// that set it too may hold the same address and port (see [`udp`]).
fn bound_to(client: SocketAddr, ty: Type, share_port: bool) -> Result<Socket, TransparentError> {
    let sock = Socket::new(Domain::for_address(client), ty, None).map_err(TransparentError::Socket)?;
    match client {
        SocketAddr::V4(_) => sock.set_ip_transparent_v4(true),
        SocketAddr::V6(_) => sock.set_ip_transparent_v6(true),
    }
    .map_err(TransparentError::Option)?;
    sock.set_nonblocking(true).map_err(TransparentError::Socket)?;
    if share_port {
        sock.set_reuse_address(true).map_err(TransparentError::Socket)?;
    }
    if let Err(e) = sock.bind(&client.into()) {
        if e.kind() != io::ErrorKind::AddrInUse {
            return Err(TransparentError::Bind { addr: client, source: e });
        }
        let any_port = SocketAddr::new(client.ip(), 0);
        sock.bind(&any_port.into()).map_err(|source| TransparentError::Bind { addr: any_port, source })?;
    }
    Ok(sock)
}

/// Connect to `upstream` from `client`'s address, within `timeout`.
pub async fn connect_tcp(
    client: SocketAddr,
    upstream: SocketAddr,
    timeout: Duration,
) -> Result<TcpStream, TransparentError> {
    let sock = bound_to(client, Type::STREAM, false)?;
    let sock = TcpSocket::from_std_stream(std::net::TcpStream::from(sock));
    match tokio::time::timeout(timeout, sock.connect(upstream)).await {
        Err(_) => Err(TransparentError::Timeout),
        Ok(r) => r.map_err(TransparentError::Connect),
    }
}

/// A UDP socket with `client`'s address as its source, connected to `upstream` (so it only
/// hears that service's replies).
///
/// With `share_port` the client's own port is bound with `SO_REUSEADDR`, so one client socket
/// can talk to several upstream ports at once with its real port (a TURN peer answering
/// several relay ports from one socket, as ICE does): each of our sockets is connected to a
/// different upstream, and the kernel hands a connected socket only datagrams from its own
/// remote, for reading and for the `socket transparent` lookup of the policy route alike.
/// Two such sockets connected to the *same* upstream would be ambiguous: the caller must not
/// ask for that (`stream::flow_socket` keeps one per client and upstream).
///
/// Not async: a UDP connect only sets the remote, so the caller can make the socket while it
/// holds a lock (the registry's, so two first datagrams cannot make two sockets). Must run
/// inside the runtime (the socket is registered with its reactor).
pub fn udp(client: SocketAddr, upstream: SocketAddr, share_port: bool) -> Result<UdpSocket, TransparentError> {
    let sock = bound_to(client, Type::DGRAM, share_port)?;
    sock.connect(&upstream.into()).map_err(TransparentError::Connect)?;
    UdpSocket::from_std(sock.into()).map_err(TransparentError::Socket)
}

/// Checks once that this process may set `IP_TRANSPARENT` (start-up warning when a stream
/// asks for it and the capability is missing).
pub fn probe() -> Result<(), TransparentError> {
    let sock = Socket::new(Domain::IPV4, Type::DGRAM, None).map_err(TransparentError::Socket)?;
    sock.set_ip_transparent_v4(true).map_err(TransparentError::Option)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn families_must_match() {
        let v4: SocketAddr = "192.0.2.2:4000".parse().unwrap();
        let v6: SocketAddr = "[200::1]:4000".parse().unwrap();
        let lan4: SocketAddr = "10.0.0.2:1514".parse().unwrap();
        let lan6: SocketAddr = "[fd00::2]:1514".parse().unwrap();
        assert!(usable(v4, lan4));
        assert!(usable(v6, lan6));
        assert!(!usable(v6, lan4));
        assert!(!usable(v4, lan6));
    }

    /// As root (the tests run as root here) a transparent socket can take a foreign source
    /// address and its exact port, and falls back to another port when that one is taken.
    #[tokio::test]
    async fn binds_foreign_address_and_port_or_any_port() {
        if probe().is_err() {
            // Without CAP_NET_ADMIN the option is refused with a clear error.
            let e = udp("192.0.2.77:4000".parse().unwrap(), "127.0.0.1:9".parse().unwrap(), false).unwrap_err();
            assert!(e.is_setup(), "{e}");
            return;
        }
        let client: SocketAddr = "192.0.2.77:40123".parse().unwrap();
        let first = udp(client, "127.0.0.1:9".parse().unwrap(), false).unwrap();
        assert_eq!(first.local_addr().unwrap(), client);
        let second = udp(client, "127.0.0.1:10".parse().unwrap(), false).unwrap();
        let local = second.local_addr().unwrap();
        assert_eq!(local.ip(), client.ip());
        assert_ne!(local.port(), client.port());
    }

    /// Shared ports: two sockets on the client's exact address and port, connected to two
    /// upstreams, each hear only their own upstream.
    #[tokio::test]
    async fn shared_port_sockets_hear_only_their_upstream() {
        if probe().is_err() {
            return;
        }
        let up1 = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let up2 = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let client: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let first = udp(client, up1.local_addr().unwrap(), true).unwrap();
        let client = first.local_addr().unwrap();
        let second = udp(client, up2.local_addr().unwrap(), true).unwrap();
        assert_eq!(second.local_addr().unwrap(), client);
        up2.send_to(b"two", client).await.unwrap();
        up1.send_to(b"one", client).await.unwrap();
        let mut buf = [0u8; 8];
        let n = tokio::time::timeout(Duration::from_secs(2), first.recv(&mut buf)).await.unwrap().unwrap();
        assert_eq!(&buf[..n], b"one");
        let n = tokio::time::timeout(Duration::from_secs(2), second.recv(&mut buf)).await.unwrap().unwrap();
        assert_eq!(&buf[..n], b"two");
    }
}
