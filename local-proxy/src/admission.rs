//! Who is the client of an accepted TCP connection: on WAN-side listeners only trusted
//! ingress peers are served and a PROXY v2 header is required; on the mesh listener the
//! peer itself is the client and no header is read.

use std::net::SocketAddr;
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

/// Apply the listener's rules to a fresh connection. Reads exactly the PROXY header on WAN
/// listeners, leaving the payload unread.
pub async fn admit<R: AsyncRead + Unpin>(
    io: &mut R,
    origin: Origin,
    peer: SocketAddr,
    local: SocketAddr,
    trusted: &TrustedPeers,
    header_timeout: Duration,
) -> Result<ClientInfo, Refused> {
    let direct = ClientInfo { client: peer, destination: local, peer, health_check: false };
    if origin == Origin::Mesh {
        return Ok(direct);
    }
    if !trusted.contains(peer.ip()) {
        return Err(Refused::Untrusted);
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
        let info = admit(&mut io, Origin::Wan, peer, local, &trusted(), Duration::from_secs(1)).await.unwrap();
        assert_eq!((info.client, info.destination, info.peer), (client, dest, peer));
        assert_eq!(io, b"GET /");
    }

    #[tokio::test]
    async fn local_is_a_health_check() {
        let mut bytes = Vec::new();
        proxy_protocol::write_v2(&mut bytes, Command::Local, Transport::Stream, None);
        let peer = "127.0.0.2:5000".parse().unwrap();
        let local = "127.0.0.1:443".parse().unwrap();
        let info = admit(&mut &bytes[..], Origin::Wan, peer, local, &trusted(), Duration::from_secs(1)).await.unwrap();
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
        let r = admit(&mut &b""[..], Origin::Wan, stranger, local, &t, d).await;
        assert!(matches!(r, Err(Refused::Untrusted)));
        let r = admit(&mut &b"GET / HTTP/1.1\r\n\r\n"[..], Origin::Wan, friend, local, &t, d).await;
        assert!(matches!(r, Err(Refused::BadHeader(_))));
        let v1 = b"PROXY TCP4 198.51.100.1 203.0.113.1 1000 443\r\n";
        let r = admit(&mut &v1[..], Origin::Wan, friend, local, &t, d).await;
        assert!(matches!(r, Err(Refused::BadHeader(_))));
        // The mesh listener takes anyone, with no header.
        let r = admit(&mut &b"GET"[..], Origin::Mesh, stranger, local, &t, d).await.unwrap();
        assert_eq!(r.client, stranger);
    }

    #[tokio::test(start_paused = true)]
    async fn silent_peer_times_out() {
        let (mut a, _b) = tokio::io::duplex(64);
        let friend = "127.0.0.2:5000".parse().unwrap();
        let local = "127.0.0.1:443".parse().unwrap();
        let r = admit(&mut a, Origin::Wan, friend, local, &trusted(), Duration::from_secs(5)).await;
        assert!(matches!(r, Err(Refused::HeaderTimeout)));
    }
}
