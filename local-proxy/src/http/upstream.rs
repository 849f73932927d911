//! HTTP clients to LAN upstreams, plain or TLS (public web roots, a site's own CA file, or —
//! opted in per site — no verification for self-signed upstreams): the connector under a
//! site's kept-alive connections (`keepalive`, one set per site and event loop, `per_loop`),
//! pooled hyper-util clients for forward auth services, and unpooled ones for health checks.

use std::sync::Arc;
use std::time::Duration;

use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use shared::workers::PerLoop;

use crate::config::Site;

/// What requests to upstreams carry: the client's body (see `replay`) or nothing (checks).
/// Its error is hyper's own, not a boxed one: a boxed error type here trips the compiler's
/// proof that the request future is `Send`.
pub type RequestBody = http_body_util::combinators::BoxBody<bytes::Bytes, hyper::Error>;

/// A client for one site's upstreams.
pub type UpstreamClient = Client<HttpsConnector<HttpConnector>, RequestBody>;

/// An empty request body.
pub fn empty() -> RequestBody {
    use http_body_util::BodyExt;
    http_body_util::Empty::new().map_err(|never| match never {}).boxed()
}

/// Why a site's client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("ca_file {path}: {reason}")]
    CaFile { path: String, reason: String },
    #[error("TLS client configuration: {0}")]
    Tls(#[from] rustls::Error),
}

/// Build the client for `site`; `pooled = false` opens a new connection per request.
pub fn client(site: &Site, connect_timeout: Duration, pooled: bool) -> Result<UpstreamClient, ClientError> {
    Ok(build(connector(site.insecure_skip_verify, site.ca_file.as_deref(), connect_timeout)?, pooled))
}

/// One `make(connector)` per event loop (`shared::workers`) with these TLS settings: sites'
/// kept-alive connections (`keepalive::Connections::new`) and forward auth services' pooled
/// clients ([`pooled`]), with one TLS setup. A request then takes an upstream connection
/// whose task runs on its own loop. With one pool for all loops, the connection a request is
/// handed may run on another thread, and the request wakes that thread and waits to be woken
/// back.
pub fn per_loop<T>(
    insecure_skip_verify: bool,
    ca_file: Option<&std::path::Path>,
    connect_timeout: Duration,
    loops: usize,
    make: impl Fn(HttpsConnector<HttpConnector>) -> T,
) -> Result<PerLoop<T>, ClientError> {
    let https = connector(insecure_skip_verify, ca_file, connect_timeout)?;
    PerLoop::try_new(loops, |_| Ok(make(https.clone())))
}

/// A pooled hyper-util client over `https`.
pub fn pooled(https: HttpsConnector<HttpConnector>) -> UpstreamClient {
    build(https, true)
}

fn connector(
    insecure_skip_verify: bool,
    ca_file: Option<&std::path::Path>,
    connect_timeout: Duration,
) -> Result<HttpsConnector<HttpConnector>, ClientError> {
    let tls = client_tls(insecure_skip_verify, ca_file)?;
    let mut http = HttpConnector::new();
    // The TLS wrapper needs https:// URIs to reach it.
    http.enforce_http(false);
    http.set_connect_timeout(Some(connect_timeout));
    http.set_nodelay(true);
    // HTTP/1.1 only towards upstreams: upgrades (WebSocket) need it, and LAN hops gain little from h2.
    Ok(hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http))
}

fn build(https: HttpsConnector<HttpConnector>, pooled: bool) -> UpstreamClient {
    let mut builder = Client::builder(TokioExecutor::new());
    builder.pool_idle_timeout(Duration::from_secs(30)).pool_timer(TokioTimer::new());
    if !pooled {
        builder.pool_max_idle_per_host(0);
    }
    builder.build(https)
}

/// hyper's error Display hides the cause ("client error (Connect)"); logs want all of it.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// The TLS side of an upstream connection: verified against `ca_file` or the web's roots, or
/// not at all (`insecure_skip_verify`).
pub(crate) fn client_tls(
    insecure_skip_verify: bool,
    ca_file: Option<&std::path::Path>,
) -> Result<ClientConfig, ClientError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions()?;
    if insecure_skip_verify {
        return Ok(builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
            .with_no_client_auth());
    }
    let roots = match ca_file {
        Some(path) => crate::config::ca_file::roots(path)
            .map_err(|reason| ClientError::CaFile { path: path.display().to_string(), reason })?,
        None => RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() },
    };
    Ok(builder.with_root_certificates(roots).with_no_client_auth())
}

/// Accepts any upstream certificate (still checking handshake signatures, so the session key
/// belongs to whoever holds the certificate). Only for sites with `insecure_skip_verify`.
#[derive(Debug)]
struct NoVerify(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
