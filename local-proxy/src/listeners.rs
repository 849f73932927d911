//! Binding every listening socket the config asks for: HTTPS, HTTP and stream ports on each
//! WAN-side address and on the mesh address, plus the admin listener. `run` takes the result,
//! so tests bind port 0 and read the real ports back. [`plan`] names each socket by a
//! [`ListenKey`], which a reload diffs to keep, open and close sockets.
//!
//! Each WAN address gets its own sockets (never one wildcard for all): an accepted connection,
//! and every UDP reply, then has that WAN address as its source, so with source policy routing
//! (`ip rule add from <wan addr> table <wan>`) replies leave by the WAN they arrived on.

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};

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

/// What identifies a listening socket across reloads: its side, the configured address (port
/// 0 stays 0, "any free port", so a test's ephemeral listener is the same key after a reload)
/// and its transport. A reload keeps the socket of every key the new config still has.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ListenKey {
    pub origin: Origin,
    pub addr: SocketAddr,
    pub protocol: Protocol,
    /// Port 0 only: what it serves, since several such sockets share one configured address.
    pub any_port: Option<Serves>,
}

impl ListenKey {
    /// The socket's name in systemd's descriptor store (see `inherit`): origin, transport,
    /// address and port, plus what it serves for port 0 (several such sockets share an
    /// address). Only characters systemd allows in `FDNAME` (no `:`; IPv6 in brackets with `_`).
    pub fn fd_name(&self) -> String {
        let ip = shared::inherit::name_part(self.addr.ip());
        let mut name = format!("{}{}-{}-{}", self.origin.fd_prefix(), self.protocol, ip, self.addr.port());
        match &self.any_port {
            Some(Serves::Tcp(Role::Https)) => name.push_str("-https"),
            Some(Serves::Tcp(Role::Http)) => name.push_str("-http"),
            Some(Serves::Tcp(Role::Stream(s))) | Some(Serves::Udp(s)) => {
                name.push_str("-stream-");
                name.push_str(s);
            }
            None => {}
        }
        name
    }
}

impl Origin {
    /// How this side's sockets' descriptor names start.
    pub fn fd_prefix(self) -> &'static str {
        match self {
            Origin::Wan => "wan-",
            Origin::Mesh => "mesh-",
        }
    }
}

impl fmt::Display for ListenKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.origin, self.addr, self.protocol)?;
        match &self.any_port {
            Some(Serves::Tcp(role)) => write!(f, " ({})", label(self.origin, role)),
            Some(Serves::Udp(name)) => write!(f, " (stream {name})"),
            None => Ok(()),
        }
    }
}

/// What a listening socket serves: a TCP role, or the UDP stream of that name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Serves {
    Tcp(Role),
    Udp(String),
}

impl Serves {
    /// How errors name the socket: its stream, or its side and role.
    pub fn what(&self, origin: Origin) -> String {
        match self {
            Serves::Tcp(Role::Stream(name)) | Serves::Udp(name) => format!("stream {name}"),
            Serves::Tcp(other) => label(origin, other).to_string(),
        }
    }
}

/// A bound TCP listener and what it is for.
#[derive(Debug)]
pub struct TcpBound {
    pub key: ListenKey,
    pub origin: Origin,
    pub role: Role,
    pub listener: TcpListener,
}

/// A bound UDP socket of a stream forward.
#[derive(Debug)]
pub struct UdpBound {
    pub key: ListenKey,
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

/// Every listening socket `config` asks for, with the mesh address already resolved: HTTPS,
/// HTTP and each stream port on every WAN address, then the same on the mesh address.
pub fn plan(config: &Config, mesh: Option<IpAddr>) -> Vec<(ListenKey, Serves)> {
    let mut out = Vec::new();
    let sides = config.wan.addresses.iter().map(|ip| (Origin::Wan, *ip)).chain(mesh.map(|ip| (Origin::Mesh, ip)));
    for (origin, ip) in sides {
        let mut push = |port: u16, protocol, serves: Serves| {
            let any_port = (port == 0).then(|| serves.clone());
            out.push((ListenKey { origin, addr: SocketAddr::new(ip, port), protocol, any_port }, serves));
        };
        push(config.http.https_port, Protocol::Tcp, Serves::Tcp(Role::Https));
        push(config.http.http_port, Protocol::Tcp, Serves::Tcp(Role::Http));
        for s in &config.streams {
            for port in s.listen_ports.iter() {
                let serves = match s.protocol {
                    Protocol::Tcp => Serves::Tcp(Role::Stream(s.name.clone())),
                    Protocol::Udp => Serves::Udp(s.name.clone()),
                };
                push(port, s.protocol, serves);
            }
        }
    }
    out
}

/// Bind everything in `config`. The mesh address must already be resolved (see [`mesh_address`]).
pub fn bind(config: &Config, mesh: Option<IpAddr>) -> Result<Listeners, BindError> {
    let mut out = Listeners::default();
    for (key, serves, kept) in planned_with_kept(config, mesh) {
        bind_with(key, serves, kept, &mut out)?;
    }
    bind_admin_of(config, out)
}

/// [`bind`], with `release` run once every planned socket has taken what was kept for it
/// across the restart and before any is bound anew: kept sockets nothing claims close then
/// and free their ports (`release` says how many). A restart after `wan.addresses` went from
/// `0.0.0.0` to each address (or back) inherits the old wildcard socket, which no new key
/// claims; open, it would hold the port against the new specific binds and fail the start.
/// systemd holds a copy of each in its store, closed only once it reads the removal: after a
/// release, a bind that finds its port taken is tried again for a moment
/// (`bind_while_freeing`), as a reload's are.
pub async fn bind_releasing(
    config: &Config,
    mesh: Option<IpAddr>,
    release: impl FnOnce() -> usize,
) -> Result<Listeners, BindError> {
    let planned = planned_with_kept(config, mesh);
    let released = release() > 0;
    let mut out = Listeners::default();
    for (key, serves, kept) in planned {
        match kept {
            Kept::None if released => {
                let bind = || bind_with(key.clone(), serves.clone(), Kept::None, &mut out);
                shared::listeners::bind_while_freeing(bind, in_use).await?
            }
            kept => bind_with(key, serves, kept, &mut out)?,
        }
    }
    bind_admin_of(config, out)
}

/// Every planned socket with what was kept for it across the restart.
fn planned_with_kept(config: &Config, mesh: Option<IpAddr>) -> Vec<(ListenKey, Serves, Kept)> {
    plan(config, mesh)
        .into_iter()
        .map(|(key, serves)| {
            let kept = take_kept(&key, &serves);
            (key, serves, kept)
        })
        .collect()
}

fn bind_admin_of(config: &Config, mut out: Listeners) -> Result<Listeners, BindError> {
    if let Some(addr) = config.admin {
        out.admin = Some(bind_admin(addr)?);
    }
    Ok(out)
}

/// The port is taken (by a socket just closed, or by anyone else).
pub(crate) fn in_use(e: &BindError) -> bool {
    matches!(e, BindError::Bind { source, .. } if source.kind() == std::io::ErrorKind::AddrInUse)
}

/// A socket kept across the restart for one planned key, if there is one.
enum Kept {
    Tcp(std::net::TcpListener),
    Udp(std::net::UdpSocket),
    None,
}

fn take_kept(key: &ListenKey, serves: &Serves) -> Kept {
    let kept = match serves {
        Serves::Tcp(_) => shared::inherit::take_tcp(&key.fd_name(), key.addr).map(Kept::Tcp),
        Serves::Udp(_) => shared::inherit::take_udp(&key.fd_name(), key.addr).map(Kept::Udp),
    };
    kept.unwrap_or(Kept::None)
}

/// Only the mesh listeners on `ip` (for a mesh address learnt after start-up).
pub fn bind_mesh(config: &Config, ip: IpAddr) -> Result<Listeners, BindError> {
    let mut out = Listeners::default();
    for (key, serves) in plan(config, Some(ip)).into_iter().filter(|(k, _)| k.origin == Origin::Mesh) {
        bind_one(key, serves, &mut out)?;
    }
    Ok(out)
}

/// The admin listener on `addr`.
pub fn bind_admin(addr: SocketAddr) -> Result<TcpListener, BindError> {
    tcp(addr, false).map_err(|source| BindError::Bind { what: "admin".into(), addr, source })
}

/// Bind one planned socket into `out` (the one kept across the restart for it, if any).
pub fn bind_one(key: ListenKey, serves: Serves, out: &mut Listeners) -> Result<(), BindError> {
    let kept = take_kept(&key, &serves);
    bind_with(key, serves, kept, out)
}

fn bind_with(key: ListenKey, serves: Serves, kept: Kept, out: &mut Listeners) -> Result<(), BindError> {
    // The mesh address may not be up yet when yggdrasil restarts; freebind lets us bind it anyway.
    let freebind = key.origin == Origin::Mesh;
    let (origin, addr) = (key.origin, key.addr);
    let what = serves.what(origin);
    match (serves, kept) {
        (Serves::Tcp(role), kept) => {
            let listener = match kept {
                Kept::Tcp(kept) => shared::listeners::adopt_tcp(kept),
                _ => tcp(addr, freebind),
            }
            .map_err(|source| BindError::Bind { what, addr, source })?;
            out.tcp.push(TcpBound { key, origin, role, listener });
        }
        (Serves::Udp(stream), kept) => {
            let socket = match kept {
                Kept::Udp(kept) => shared::listeners::adopt_udp(kept),
                _ => udp(addr, freebind),
            }
            .map_err(|source| BindError::Bind { what, addr, source })?;
            out.udp.push(UdpBound { key, origin, stream, socket });
        }
    }
    Ok(())
}

/// The local proxy's sockets: an accept queue of 1024; the mesh ones with `IP_FREEBIND`. A UDP
/// socket's receive queue is its stream's `udp_recv_buffer`, kept by its loop (`stream::udp`).
fn options(freebind: bool) -> shared::listeners::Options {
    shared::listeners::Options { freebind, ..Default::default() }
}

fn tcp(addr: SocketAddr, freebind: bool) -> io::Result<TcpListener> {
    shared::listeners::tcp(addr, &options(freebind))
}

fn udp(addr: SocketAddr, freebind: bool) -> io::Result<UdpSocket> {
    shared::listeners::udp(addr, &options(freebind))
}
