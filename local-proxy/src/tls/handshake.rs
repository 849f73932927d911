//! The server side of a TLS handshake, bounded in time and classified for metrics: the
//! ClientHello is read first so an unknown or missing SNI is told apart from other failures.

use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::server::TlsStream;
use tokio_rustls::LazyConfigAcceptor;

use super::store::{CertStore, Resolver};
use crate::acme::ACME_TLS_ALPN;

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
    /// An ACME TLS-ALPN-01 validation handshake, answered; the connection ends here (RFC 8737).
    #[error("ACME TLS-ALPN-01 challenge answered")]
    AcmeChallenge,
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
            HandshakeError::AcmeChallenge => "acme_challenge",
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

/// A ClientHello offering only `acme-tls/1` for a name with a challenge being offered gets
/// a configuration that serves that challenge certificate and nothing else.
fn acme_tls_alpn(hello: &rustls::server::ClientHello<'_>, store: &CertStore) -> Option<Arc<ServerConfig>> {
    let challenges = store.challenges();
    if !challenges.any_tls_alpn01() {
        return None;
    }
    let mut alpn = hello.alpn()?;
    if !alpn.any(|p| p == ACME_TLS_ALPN) {
        return None;
    }
    let key = challenges.tls_alpn01(&hello.server_name()?.to_ascii_lowercase())?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .ok()?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Fixed(key)));
    cfg.alpn_protocols = vec![ACME_TLS_ALPN.to_vec()];
    Some(Arc::new(cfg))
}

/// Serves one certificate whatever the ClientHello says.
#[derive(Debug)]
struct Fixed(Arc<rustls::sign::CertifiedKey>);

impl rustls::server::ResolvesServerCert for Fixed {
    fn resolve(&self, _: rustls::server::ClientHello<'_>) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// Run the handshake on `io` within `timeout`.
///
/// The handshake's state and the stream it ends with are on the heap: a connection's task is
/// sized by its largest state, and inline they made every task 5.5 kB, idle ones too (the
/// handshake's 3 kB, and the 1.2 kB stream in three slots its moves left behind).
pub async fn accept<IO>(
    io: IO,
    config: Arc<ServerConfig>,
    store: &CertStore,
    timeout: Duration,
) -> Result<Box<TlsStream<IO>>, HandshakeError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let handshake = Box::pin(async {
        let start = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), io)
            .await
            .map_err(|_| HandshakeError::NotTls)?;
        if let Some(config) = acme_tls_alpn(&start.client_hello(), store) {
            start.into_stream(config).await.map_err(HandshakeError::Failed)?;
            metrics::counter!(crate::metrics::names::ACME_CHALLENGES, "challenge" => "tls-alpn-01").increment(1);
            return Err(HandshakeError::AcmeChallenge);
        }
        let refused = match start.client_hello().server_name() {
            None => Some(HandshakeError::NoSni),
            Some(name) if store.lookup(name).is_none() => Some(HandshakeError::UnknownSni(name.to_ascii_lowercase())),
            Some(_) => None,
        };
        // Even when refusing, finish through rustls so the client gets a proper alert.
        // A certificate that appeared in between simply makes the handshake succeed.
        match (start.into_stream(config).await, refused) {
            (Ok(stream), _) => Ok(Box::new(stream)),
            (Err(_), Some(why)) => Err(why),
            (Err(e), None) => Err(HandshakeError::Failed(e)),
        }
    });
    tokio::time::timeout(timeout, handshake).await.map_err(|_| HandshakeError::Timeout(timeout))?
}
