//! What the server knows about the connection a request came on: read by the request
//! handler and the reverse proxy alike (a leaf, so neither depends on the other for it).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use http::HeaderValue;

use crate::admission::ClientInfo;
use crate::state::State;

pub struct Conn {
    pub info: ClientInfo,
    /// Whether the client connection is TLS (`X-Forwarded-Proto`).
    pub tls: bool,
    /// The TLS session's name and version (access logs); `None` on plain HTTP.
    pub tls_info: Option<TlsInfo>,
    pub listener: &'static str,
    pub state: Arc<State>,
    /// `X-Forwarded-For` for this client, built at the first proxied request and cloned
    /// (a reference count) for the next ones.
    forwarded_for: OnceLock<HeaderValue>,
    /// What the connection becomes once HTTP is done with it ([`Conn::set_tunnel`]).
    tunnel: Mutex<Option<Tunnel>>,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("info", &self.info)
            .field("tls", &self.tls)
            .field("tls_info", &self.tls_info)
            .field("listener", &self.listener)
            .finish_non_exhaustive()
    }
}

/// An upgraded connection's byte copying (`tunnel::splice`).
pub type Tunnel = Pin<Box<dyn Future<Output = ()> + Send>>;

impl Conn {
    pub fn new(
        info: ClientInfo,
        tls: bool,
        tls_info: Option<TlsInfo>,
        listener: &'static str,
        state: Arc<State>,
    ) -> Self {
        Self { info, tls, tls_info, listener, state, forwarded_for: OnceLock::new(), tunnel: Mutex::new(None) }
    }

    /// Run `tunnel` once the HTTP server has let the connection go (after the 101), in the
    /// connection's own task: it keeps the connection's slot and its event loop's count, and a
    /// shutdown drains it like any open connection, up to `drain_timeout`.
    pub fn set_tunnel(&self, tunnel: Tunnel) {
        *self.tunnel.lock().unwrap_or_else(PoisonError::into_inner) = Some(tunnel);
    }

    pub fn take_tunnel(&self) -> Option<Tunnel> {
        self.tunnel.lock().unwrap_or_else(PoisonError::into_inner).take()
    }

    /// The client address as `X-Forwarded-For` / `X-Real-IP` carry it.
    pub fn forwarded_for(&self) -> &HeaderValue {
        self.forwarded_for.get_or_init(|| super::headers::client_value(self.info.client.ip()))
    }
}

/// What the access log says of a TLS connection.
#[derive(Debug, Clone)]
pub struct TlsInfo {
    /// The SNI name the client asked for (shared: every request's log line refers to it).
    pub sni: Option<Arc<str>>,
    /// `TLSv1.2` or `TLSv1.3`.
    pub version: &'static str,
    /// The negotiated cipher suite's IANA name (`TLS13_AES_128_GCM_SHA256`, ...).
    pub cipher: Option<&'static str>,
}

impl TlsInfo {
    pub fn of(c: &rustls::ServerConnection) -> Self {
        let version = match c.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
            _ => "unknown",
        };
        let cipher = c.negotiated_cipher_suite().and_then(|s| s.suite().as_str());
        Self { sni: c.server_name().map(Arc::from), version, cipher }
    }
}
