//! What the server knows about the connection a request came on: read by the request
//! handler and the reverse proxy alike (a leaf, so neither depends on the other for it).

use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use http::HeaderValue;
use tokio::sync::OwnedSemaphorePermit;

use crate::admission::ClientInfo;
use crate::metrics::names;
use crate::state::State;

/// A client connection's place under `http.max_connections` and in the active-connections
/// gauge, for as long as the connection lives, however its task ends. An upgraded connection
/// (WebSocket) outlives the task that served HTTP on it: its tunnel takes the slot along.
#[derive(Debug)]
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    listener: &'static str,
}

impl Slot {
    pub fn new(permit: OwnedSemaphorePermit, listener: &'static str) -> Self {
        metrics::gauge!(names::CONNECTIONS_ACTIVE, "listener" => listener).increment(1.0);
        Self { _permit: permit, listener }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        metrics::gauge!(names::CONNECTIONS_ACTIVE, "listener" => self.listener).decrement(1.0);
    }
}

#[derive(Debug)]
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
    /// Until an upgraded connection's tunnel takes it ([`Conn::take_slot`]).
    slot: Mutex<Option<Slot>>,
}

impl Conn {
    pub fn new(
        info: ClientInfo,
        tls: bool,
        tls_info: Option<TlsInfo>,
        listener: &'static str,
        state: Arc<State>,
        slot: Slot,
    ) -> Self {
        let slot = Mutex::new(Some(slot));
        Self { info, tls, tls_info, listener, state, forwarded_for: OnceLock::new(), slot }
    }

    /// The connection's [`Slot`], for the tunnel it has become (once: HTTP/1 switches
    /// protocols once).
    pub fn take_slot(&self) -> Option<Slot> {
        self.slot.lock().unwrap_or_else(PoisonError::into_inner).take()
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
