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

/// A ClientHello offering only `acme-tls/1` (as RFC 8737 3 has the CA do) for a name with a
/// challenge being offered gets a configuration that serves that challenge certificate and
/// nothing else; a client offering it beside h2 or http/1.1 gets the site's certificate.
fn acme_tls_alpn(hello: &rustls::server::ClientHello<'_>, store: &CertStore) -> Option<Arc<ServerConfig>> {
    let challenges = store.challenges();
    if !challenges.any_tls_alpn01() {
        return None;
    }
    let mut alpn = hello.alpn()?;
    if alpn.next() != Some(ACME_TLS_ALPN) || alpn.next().is_some() {
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A handshake offering `alpn` for a.test, which has a certificate of its own and a
    /// TLS-ALPN-01 challenge on offer: the server's result, and the client's.
    async fn handshake(alpn: &[&[u8]]) -> (Result<String, HandshakeError>, Result<(), String>) {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["a.test".into()]).unwrap().self_signed(&key).unwrap();
        let files = crate::config::CertFiles { cert: dir.path().join("a.pem"), key: dir.path().join("a.key") };
        std::fs::write(&files.cert, cert.pem()).unwrap();
        std::fs::write(&files.key, key.serialize_pem()).unwrap();
        let store = Arc::new(CertStore::new());
        store.set_sources(&crate::config::Tls {
            certbot_live_dir: None,
            certificates: vec![files],
            reload_interval: Duration::from_secs(5),
            acme_live_dir: None,
            acme_names: Vec::new(),
        });
        let challenge = crate::acme::challenges::tls_alpn01_cert("a.test", &[7u8; 32]).unwrap();
        store.challenges().add_tls_alpn01("a.test", Arc::new(challenge));
        let config = server_config(store.clone()).unwrap();
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let mut tls = crate::http::upstream::client_tls(true, None).unwrap();
        tls.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let name = rustls_pki_types::ServerName::try_from("a.test").unwrap();
        let client = tokio_rustls::TlsConnector::from(Arc::new(tls)).connect(name, client_io);
        // Both at once, and the client's end kept open until the server's is done (TLS 1.3
        // session tickets follow the client's Finished).
        let (client, server) = tokio::join!(client, accept(server_io, config, &store, Duration::from_secs(5)));
        let server = server.map(|s| String::from_utf8_lossy(s.get_ref().1.alpn_protocol().unwrap_or(b"")).into_owned());
        (server, client.map(drop).map_err(|e| e.to_string()))
    }

    /// RFC 8737 3: the CA offers `acme-tls/1` alone, and only then is the challenge's
    /// certificate served (the client's verifier refuses its critical acmeIdentifier
    /// extension). A client that offers it beside h2 is no validation: it gets the site.
    #[tokio::test]
    async fn only_a_hello_offering_acme_tls_alone_gets_the_challenge_certificate() {
        let (server, client) = handshake(&[ACME_TLS_ALPN]).await;
        assert!(server.is_err(), "{server:?}");
        assert!(client.as_ref().is_err_and(|e| e.contains("xtension")), "not the challenge certificate: {client:?}");
        let (server, client) = handshake(&[b"h2", ACME_TLS_ALPN]).await;
        assert_eq!(server.unwrap(), "h2");
        assert_eq!(client, Ok(()));
    }
}
