//! The server side of a TLS handshake, bounded in time and classified for metrics: the
//! ClientHello is read first so an unknown or missing SNI is told apart from other failures.

use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::server::TlsStream;
use tokio_rustls::LazyConfigAcceptor;

use super::store::{CertStore, Resolver};

/// ALPN protocols offered, in preference order.
pub const ALPN: &[&[u8]] = &[b"h2", b"http/1.1"];

/// Why a handshake did not complete.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("not a TLS ClientHello")]
    NotTls,
    #[error("ClientHello without SNI")]
    NoSni,
    #[error("no certificate for {0}")]
    UnknownSni(String),
    #[error("handshake not done within {0:?}")]
    Timeout(Duration),
    #[error("handshake failed: {0}")]
    Failed(std::io::Error),
}

impl HandshakeError {
    /// The metrics `result` label.
    pub fn result(&self) -> &'static str {
        match self {
            HandshakeError::NotTls => "not_tls",
            HandshakeError::NoSni => "no_sni",
            HandshakeError::UnknownSni(_) => "unknown_sni",
            HandshakeError::Timeout(_) => "timeout",
            HandshakeError::Failed(_) => "failed",
        }
    }
}

/// Why the TLS server configuration could not be built.
#[derive(Debug, thiserror::Error)]
#[error("TLS configuration: {0}")]
pub struct ConfigError(#[from] rustls::Error);

/// TLS 1.2 and 1.3 with the ring provider, certificates from `store`, ALPN h2 + http/1.1.
pub fn server_config(store: Arc<CertStore>) -> Result<Arc<ServerConfig>, ConfigError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Resolver(store)));
    cfg.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(cfg))
}

/// Run the handshake on `io` within `timeout`.
pub async fn accept<IO>(
    io: IO,
    config: Arc<ServerConfig>,
    store: &CertStore,
    timeout: Duration,
) -> Result<TlsStream<IO>, HandshakeError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let handshake = async {
        let start = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), io)
            .await
            .map_err(|_| HandshakeError::NotTls)?;
        let refused = match start.client_hello().server_name() {
            None => Some(HandshakeError::NoSni),
            Some(name) if store.lookup(name).is_none() => Some(HandshakeError::UnknownSni(name.to_ascii_lowercase())),
            Some(_) => None,
        };
        // Even when refusing, finish through rustls so the client gets a proper alert.
        // A certificate that appeared in between simply makes the handshake succeed.
        match (start.into_stream(config).await, refused) {
            (Ok(stream), _) => Ok(stream),
            (Err(_), Some(why)) => Err(why),
            (Err(e), None) => Err(HandshakeError::Failed(e)),
        }
    };
    tokio::time::timeout(timeout, handshake).await.map_err(|_| HandshakeError::Timeout(timeout))?
}
