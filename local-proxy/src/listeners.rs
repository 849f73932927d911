//! Binding every listening socket the config asks for: HTTPS, HTTP and stream ports on each
//! WAN-side address and on the mesh address, plus the admin listener. `run` takes the result,
//! so tests bind port 0 and read the real ports back.

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};

use socket2::{Domain, Socket, Type};
use tokio::net::{TcpListener, UdpSocket};

use crate::config::{Config, MeshListen, Protocol};

/// Which side a listener faces; decides the PROXY header rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Origin {
    /// WAN-side address: PROXY v2 required, only from trusted ingress peers.
    Wan,
    /// Yggdrasil address: no PROXY header; the peer is the client.
    Mesh,
}

/// What a TCP listener serves.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Role {
    Https,
    Http,
    /// A stream forward, by name.
    Stream(String),
}

/// The bounded `listener` metrics label for a listener.
pub fn label(origin: Origin, role: &Role) -> &'static str {
    match (origin, role) {
        (Origin::Wan, Role::Https) => "wan-https",
        (Origin::Wan, Role::Http) => "wan-http",
        (Origin::Wan, Role::Stream(_)) => "wan-stream",
        (Origin::Mesh, Role::Https) => "mesh-https",
        (Origin::Mesh, Role::Http) => "mesh-http",
        (Origin::Mesh, Role::Stream(_)) => "mesh-stream",
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Origin::Wan => "wan",
            Origin::Mesh => "mesh",
        })
    }
}

/// A bound TCP listener and what it is for.
#[derive(Debug)]
pub struct TcpBound {
    pub origin: Origin,
    pub role: Role,
    pub listener: TcpListener,
}

/// A bound UDP socket of a stream forward.
#[derive(Debug)]
pub struct UdpBound {
    pub origin: Origin,
    pub stream: String,
    pub socket: UdpSocket,
}

/// Everything `run` serves on.
#[derive(Debug, Default)]
pub struct Listeners {
    pub tcp: Vec<TcpBound>,
    pub udp: Vec<UdpBound>,
    pub admin: Option<TcpListener>,
}

impl Listeners {
    /// Local address of the first TCP listener with this origin and role.
    pub fn addr(&self, origin: Origin, role: &Role) -> Option<SocketAddr> {
        self.tcp.iter().find(|b| b.origin == origin && b.role == *role).and_then(|b| b.listener.local_addr().ok())
    }

    /// Local address of the first UDP socket of `stream` with this origin.
    pub fn udp_addr(&self, origin: Origin, stream: &str) -> Option<SocketAddr> {
        self.udp.iter().find(|b| b.origin == origin && b.stream == stream).and_then(|b| b.socket.local_addr().ok())
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }
}

/// Why binding failed.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("binding {what} on {addr}: {source}")]
    Bind { what: String, addr: SocketAddr, source: io::Error },
    #[error("reading this node's Yggdrasil address from {endpoint}: {reason}")]
    MeshAddress { endpoint: String, reason: String },
}

/// The mesh listener's address, asking yggdrasil for it when the config says `auto`.
pub async fn mesh_address(config: &Config) -> Result<Option<IpAddr>, BindError> {
    match &config.mesh.listen {
        MeshListen::Off => Ok(None),
        MeshListen::Address(ip) => Ok(Some(*ip)),
        MeshListen::Auto => crate::mesh::self_address(&config.mesh.admin_endpoint)
            .await
            .map(Some)
            .map_err(|reason| BindError::MeshAddress { endpoint: config.mesh.admin_endpoint.clone(), reason }),
    }
}

/// Bind everything in `config`. The mesh address must already be resolved (see [`mesh_address`]).
pub fn bind(config: &Config, mesh: Option<IpAddr>) -> Result<Listeners, BindError> {
    let mut out = Listeners::default();
    for ip in &config.wan.addresses {
        bind_side(config, Origin::Wan, *ip, &mut out)?;
    }
    if let Some(ip) = mesh {
        bind_side(config, Origin::Mesh, ip, &mut out)?;
    }
    if let Some(addr) = config.admin {
        out.admin = Some(tcp(addr, false).map_err(|source| BindError::Bind { what: "admin".into(), addr, source })?);
    }
    Ok(out)
}

/// Only the mesh listeners on `ip` (for a mesh address learnt after start-up).
pub fn bind_mesh(config: &Config, ip: IpAddr) -> Result<Listeners, BindError> {
    let mut out = Listeners::default();
    bind_side(config, Origin::Mesh, ip, &mut out)?;
    Ok(out)
}

fn bind_side(config: &Config, origin: Origin, ip: IpAddr, out: &mut Listeners) -> Result<(), BindError> {
    // The mesh address may not be up yet when yggdrasil restarts; freebind lets us bind it anyway.
    let freebind = origin == Origin::Mesh;
    for (role, port) in [(Role::Https, config.http.https_port), (Role::Http, config.http.http_port)] {
        let addr = SocketAddr::new(ip, port);
        let listener = tcp(addr, freebind).map_err(|source| BindError::Bind {
            what: label(origin, &role).to_string(),
            addr,
            source,
        })?;
        out.tcp.push(TcpBound { origin, role, listener });
    }
    for s in &config.streams {
        for port in s.listen_ports.iter() {
            let addr = SocketAddr::new(ip, port);
            let err = |source| BindError::Bind { what: format!("stream {}", s.name), addr, source };
            match s.protocol {
                Protocol::Tcp => out.tcp.push(TcpBound {
                    origin,
                    role: Role::Stream(s.name.clone()),
                    listener: tcp(addr, freebind).map_err(err)?,
                }),
                Protocol::Udp => {
                    out.udp.push(UdpBound { origin, stream: s.name.clone(), socket: udp(addr, freebind).map_err(err)? })
                }
            }
        }
    }
    Ok(())
}

fn socket(addr: SocketAddr, ty: Type, freebind: bool) -> io::Result<Socket> {
    let sock = Socket::new(Domain::for_address(addr), ty, None)?;
    sock.set_reuse_address(true)?;
    if addr.is_ipv6() {
        // So `0.0.0.0` and `::` can both be listed without clashing.
        sock.set_only_v6(true)?;
    }
    if freebind {
        match addr {
            SocketAddr::V4(_) => sock.set_freebind(true)?,
            SocketAddr::V6(_) => sock.set_freebind_ipv6(true)?,
        }
    }
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    Ok(sock)
}

fn tcp(addr: SocketAddr, freebind: bool) -> io::Result<TcpListener> {
    let sock = socket(addr, Type::STREAM, freebind)?;
    sock.listen(1024)?;
    TcpListener::from_std(sock.into())
}

fn udp(addr: SocketAddr, freebind: bool) -> io::Result<UdpSocket> {
    let sock = socket(addr, Type::DGRAM, freebind)?;
    UdpSocket::from_std(sock.into())
}
