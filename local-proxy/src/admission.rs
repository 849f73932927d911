//! Who is the client of an accepted TCP connection: on WAN-side listeners only trusted
//! ingress peers are served and a PROXY v2 header is required; on the mesh listener a peer
//! listed in `mesh.trusted_ingress` (an ingress node's mesh tier) must send PROXY v2 too,
//! and any other peer is a direct mesh client: the peer itself is the client, no header read.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use shared::proxy_protocol::{self, Command, ReadError, Version};
use tokio::io::AsyncRead;

use crate::listeners::Origin;
use crate::trust::TrustedPeers;

/// The endpoints of an admitted connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientInfo {
    /// The real client (from PROXY, or the peer itself).
    pub client: SocketAddr,
    /// The address the client connected to (from PROXY, or our local address).
    pub destination: SocketAddr,
    /// The TCP peer (an ingress node on WAN listeners).
    pub peer: SocketAddr,
    /// A PROXY v2 LOCAL connection: the ingress checking our health, not a client.
    pub health_check: bool,
}

/// Why a connection was refused; the variant name is the metrics `result`.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("peer is not a trusted ingress")]
    Untrusted,
    #[error("no PROXY header in time")]
    HeaderTimeout,
    #[error("bad PROXY header: {0}")]
    BadHeader(String),
}

impl Refused {
    /// The metrics `result` label.
    pub fn result(&self) -> &'static str {
        match self {
            Refused::Untrusted => "untrusted",
            Refused::HeaderTimeout => "header_timeout",
            Refused::BadHeader(_) => "bad_header",
        }
    }
}

/// Whether `peer` may connect at all; checked before reading a byte.
pub fn peer_allowed(origin: Origin, peer: SocketAddr, trusted: &TrustedPeers) -> bool {
    origin == Origin::Mesh || trusted.contains(peer.ip())
}

/// Whether `peer` on the mesh listener is an ingress node's mesh tier (`mesh.trusted_ingress`),
/// whose connections carry PROXY headers.
pub fn mesh_ingress(peer: IpAddr, mesh_trusted: &[IpAddr]) -> bool {
    let peer = peer.to_canonical();
    mesh_trusted.iter().any(|a| a.to_canonical() == peer)
}

/// Apply the listener's rules to a fresh connection. Reads exactly the PROXY header on WAN
/// listeners and from the ingress nodes' mesh addresses (`mesh_trusted`), leaving the payload
/// unread.
pub async fn admit<R: AsyncRead + Unpin>(
    io: &mut R,
    origin: Origin,
    peer: SocketAddr,
    local: SocketAddr,
    trusted: &TrustedPeers,
    mesh_trusted: &[IpAddr],
    header_timeout: Duration,
) -> Result<ClientInfo, Refused> {
    let direct = ClientInfo { client: peer, destination: local, peer, health_check: false };
    match origin {
        // A mesh client (a phone on Yggdrasil) speaks first with no header.
        Origin::Mesh if !mesh_ingress(peer.ip(), mesh_trusted) => return Ok(direct),
        Origin::Mesh => {}
        Origin::Wan if !trusted.contains(peer.ip()) => return Err(Refused::Untrusted),
        Origin::Wan => {}
    }
    let header = proxy_protocol::read_header(io, header_timeout).await.map_err(|e| match e {
        ReadError::Timeout(_) => Refused::HeaderTimeout,
        e => Refused::BadHeader(e.to_string()),
    })?;
    if header.version != Version::V2 {
        return Err(Refused::BadHeader("PROXY v1; v2 is required".into()));
    }
    Ok(match (header.command, header.addresses()) {
        (Command::Local, _) => ClientInfo { health_check: true, ..direct },
        (Command::Proxy, Some((client, destination))) => ClientInfo { client, destination, peer, health_check: false },
        // PROXY with AF_UNSPEC: the spec says to use the real endpoints.
        (Command::Proxy, None) => direct,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proxy_protocol::Transport;

    fn trusted() -> TrustedPeers {
        let t = TrustedPeers::new();
        t.set_source("test", ["127.0.0.2".parse().unwrap()]);
        t
    }

    #[tokio::test]
    async fn proxy_header_gives_client_and_leaves_payload() {
        let client: SocketAddr = "198.51.100.9:40000".parse().unwrap();
        let dest: SocketAddr = "203.0.113.5:443".parse().unwrap();
        let mut bytes = Vec::new();
        proxy_protocol::write_v2(&mut bytes, Command::Proxy, Transport::Stream, Some((client, dest)));
        bytes.extend_from_slice(b"GET /");
        let mut io = &bytes[..];
        let peer = "127.0.0.2:5000".parse().unwrap();
        let local = "127.0.0.1:443".parse().unwrap();
        let info = admit(&mut io, Origin::Wan, peer, local, &trusted(), &[], Duration::from_secs(1)).await.unwrap();
        assert_eq!((info.client, info.destination, info.peer), (client, dest, peer));
        assert_eq!(io, b"GET /");
    }

    #[tokio::test]
    async fn local_is_a_health_check() {
        let mut bytes = Vec::new();
        proxy_protocol::write_v2(&mut bytes, Command::Local, Transport::Stream, None);
        let peer = "127.0.0.2:5000".parse().unwrap();
        let local = "127.0.0.1:443".parse().unwrap();
        let info =
            admit(&mut &bytes[..], Origin::Wan, peer, local, &trusted(), &[], Duration::from_secs(1)).await.unwrap();
        assert!(info.health_check);
        assert_eq!(info.client, peer);
    }

    #[tokio::test]
    async fn strangers_garbage_and_v1_are_refused() {
        let local = "127.0.0.1:443".parse().unwrap();
        let t = trusted();
        let d = Duration::from_secs(1);
        let stranger = "127.0.0.3:5000".parse().unwrap();
        let friend = "127.0.0.2:5000".parse().unwrap();
        let r = admit(&mut &b""[..], Origin::Wan, stranger, local, &t, &[], d).await;
        assert!(matches!(r, Err(Refused::Untrusted)));
        let r = admit(&mut &b"GET / HTTP/1.1\r\n\r\n"[..], Origin::Wan, friend, local, &t, &[], d).await;
        assert!(matches!(r, Err(Refused::BadHeader(_))));
        let v1 = b"PROXY TCP4 198.51.100.1 203.0.113.1 1000 443\r\n";
        let r = admit(&mut &v1[..], Origin::Wan, friend, local, &t, &[], d).await;
        assert!(matches!(r, Err(Refused::BadHeader(_))));
        // The mesh listener takes anyone, with no header.
        let r = admit(&mut &b"GET"[..], Origin::Mesh, stranger, local, &t, &[], d).await.unwrap();
        assert_eq!(r.client, stranger);
    }

    #[tokio::test]
    async fn mesh_ingress_sends_proxy_and_mesh_clients_do_not() {
        let local: SocketAddr = "[201:aaaa::1]:80".parse().unwrap();
        let ingress: SocketAddr = "[202:bbbb::2]:40000".parse().unwrap();
        let phone: SocketAddr = "[203:cccc::3]:40001".parse().unwrap();
        let mesh_trusted = [ingress.ip()];
        let d = Duration::from_secs(1);
        let client: SocketAddr = "198.51.100.9:40000".parse().unwrap();
        let dest: SocketAddr = "203.0.113.5:80".parse().unwrap();
        let mut bytes = Vec::new();
        proxy_protocol::write_v2(&mut bytes, Command::Proxy, Transport::Stream, Some((client, dest)));
        bytes.extend_from_slice(b"GET /");
        let mut io = &bytes[..];
        // The ingress's mesh tier: the header is read and names the real client.
        let info = admit(&mut io, Origin::Mesh, ingress, local, &trusted(), &mesh_trusted, d).await.unwrap();
        assert_eq!((info.client, info.destination, info.peer), (client, dest, ingress));
        assert_eq!(io, b"GET /");
        // Its LOCAL probe is a health check, as on WAN.
        let mut local_hdr = Vec::new();
        proxy_protocol::write_v2(&mut local_hdr, Command::Local, Transport::Unspec, None);
        let info = admit(&mut &local_hdr[..], Origin::Mesh, ingress, local, &trusted(), &mesh_trusted, d).await;
        assert!(info.unwrap().health_check);
        // From the ingress a header is required (as on WAN): plain bytes are refused.
        let r = admit(&mut &b"GET / HTTP/1.1\r\n\r\n"[..], Origin::Mesh, ingress, local, &trusted(), &mesh_trusted, d)
            .await;
        assert!(matches!(r, Err(Refused::BadHeader(_))));
        // Anyone else on the mesh is a direct client: nothing is read, even header-like bytes.
        let mut io = &bytes[..];
        let info = admit(&mut io, Origin::Mesh, phone, local, &trusted(), &mesh_trusted, d).await.unwrap();
        assert_eq!(info.client, phone);
        assert_eq!(io.len(), bytes.len());
        // The WAN trusted set does not open the mesh listener's header reading, and the mesh
        // list does not open WAN listeners.
        let wan_friend: SocketAddr = "127.0.0.2:5000".parse().unwrap();
        let info = admit(&mut &bytes[..], Origin::Mesh, wan_friend, local, &trusted(), &mesh_trusted, d).await;
        assert_eq!(info.unwrap().client, wan_friend);
        let r = admit(&mut &bytes[..], Origin::Wan, ingress, local, &trusted(), &mesh_trusted, d).await;
        assert!(matches!(r, Err(Refused::Untrusted)));
    }

    #[tokio::test(start_paused = true)]
    async fn silent_peer_times_out() {
        let (mut a, _b) = tokio::io::duplex(64);
        let friend = "127.0.0.2:5000".parse().unwrap();
        let local = "127.0.0.1:443".parse().unwrap();
        let r = admit(&mut a, Origin::Wan, friend, local, &trusted(), &[], Duration::from_secs(5)).await;
        assert!(matches!(r, Err(Refused::HeaderTimeout)));
    }
}
