//! Challenge answers being offered right now: HTTP-01 key authorizations by token and
//! TLS-ALPN-01 certificates by name. Published with `ArcSwap` (the request and handshake paths
//! read without a lock); only the issuing task writes, a few times per order.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rcgen::{CertificateParams, CustomExtension, KeyPair};
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// The ALPN protocol of TLS-ALPN-01 (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";
/// The path prefix of HTTP-01 (RFC 8555 §8.3).
pub const HTTP01_PREFIX: &str = "/.well-known/acme-challenge/";

/// Answers to the challenges of orders in progress.
#[derive(Debug, Default)]
pub struct Challenges {
    http01: ArcSwap<HashMap<String, String>>,
    tls_alpn01: ArcSwap<HashMap<String, Arc<CertifiedKey>>>,
}

impl Challenges {
    /// The key authorization for an HTTP-01 token, if one is being offered.
    pub fn http01(&self, token: &str) -> Option<String> {
        self.http01.load().get(token).cloned()
    }

    /// The TLS-ALPN-01 certificate for `name` (lower case), if one is being offered.
    pub fn tls_alpn01(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        let name = name.strip_suffix('.').unwrap_or(name);
        self.tls_alpn01.load().get(name).cloned()
    }

    /// Whether any TLS-ALPN-01 certificate is being offered (handshakes skip the lookup otherwise).
    pub fn any_tls_alpn01(&self) -> bool {
        !self.tls_alpn01.load().is_empty()
    }

    pub(crate) fn add_http01(&self, token: &str, key_authorization: &str) {
        self.http01.rcu(|m| {
            let mut m = HashMap::clone(m);
            m.insert(token.to_string(), key_authorization.to_string());
            m
        });
    }

    pub(crate) fn remove_http01(&self, token: &str) {
        self.http01.rcu(|m| {
            let mut m = HashMap::clone(m);
            m.remove(token);
            m
        });
    }

    pub(crate) fn add_tls_alpn01(&self, name: &str, key: Arc<CertifiedKey>) {
        self.tls_alpn01.rcu(|m| {
            let mut m = HashMap::clone(m);
            m.insert(name.to_string(), key.clone());
            m
        });
    }

    pub(crate) fn remove_tls_alpn01(&self, name: &str) {
        self.tls_alpn01.rcu(|m| {
            let mut m = HashMap::clone(m);
            m.remove(name);
            m
        });
    }
}

/// The answer to `GET /.well-known/acme-challenge/<token>` when an order in progress offers
/// that token (any Host: the CA asks by the name being validated, before routing); `None`
/// lets the request go on (a certbot webroot, or the site itself).
pub fn http01_response(certs: &crate::tls::CertStore, token: &str) -> Option<http::Response<crate::http::body::Body>> {
    let key_authorization = certs.challenges().http01(token)?;
    metrics::counter!(crate::metrics::names::ACME_CHALLENGES, "challenge" => "http-01").increment(1);
    let mut resp = http::Response::new(crate::http::body::full(key_authorization.into_bytes()));
    resp.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/octet-stream"));
    Some(resp)
}

/// Why a challenge certificate could not be made.
#[derive(Debug, thiserror::Error)]
#[error("TLS-ALPN-01 certificate for {name}: {reason}")]
pub struct ChallengeCertError {
    name: String,
    reason: String,
}

/// The self-signed TLS-ALPN-01 certificate for `name`: its only SAN is `name`, and the critical
/// `id-pe-acmeIdentifier` extension holds the SHA-256 of the key authorization (RFC 8737 §3).
pub fn tls_alpn01_cert(name: &str, key_authorization_digest: &[u8]) -> Result<CertifiedKey, ChallengeCertError> {
    let fail = |reason: String| ChallengeCertError { name: name.to_string(), reason };
    let key = KeyPair::generate().map_err(|e| fail(e.to_string()))?;
    let mut params = CertificateParams::new(vec![name.to_string()]).map_err(|e| fail(e.to_string()))?;
    params.custom_extensions = vec![CustomExtension::new_acme_identifier(key_authorization_digest)];
    let cert = params.self_signed(&key).map_err(|e| fail(e.to_string()))?;
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let signing = rustls::crypto::ring::sign::any_supported_type(&der).map_err(|e| fail(e.to_string()))?;
    Ok(CertifiedKey::new(vec![CertificateDer::from(cert.der().to_vec())], signing))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use x509_parser::prelude::*;

    use super::*;

    #[test]
    fn the_challenge_certificate_carries_the_digest_in_a_critical_extension() {
        let digest = [7u8; 32];
        let ck = tls_alpn01_cert("a.example.org", &digest).unwrap();
        let (_, cert) = parse_x509_certificate(ck.cert[0].as_ref()).unwrap();
        // id-pe-acmeIdentifier 1.3.6.1.5.5.7.1.31
        let ext = cert.extensions().iter().find(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.1.31").unwrap();
        assert!(ext.critical);
        // An OCTET STRING of 32 bytes: tag 0x04, length 0x20, the digest.
        assert_eq!(ext.value, [&[0x04, 0x20][..], &digest[..]].concat());
        let san = cert.subject_alternative_name().unwrap().unwrap();
        assert_eq!(san.value.general_names, vec![GeneralName::DNSName("a.example.org")]);
    }

    #[test]
    fn answers_come_and_go() {
        let c = Challenges::default();
        assert!(c.http01("tok").is_none());
        c.add_http01("tok", "tok.thumb");
        assert_eq!(c.http01("tok").as_deref(), Some("tok.thumb"));
        c.remove_http01("tok");
        assert!(c.http01("tok").is_none());
        assert!(!c.any_tls_alpn01());
        c.add_tls_alpn01("a.test", Arc::new(tls_alpn01_cert("a.test", &[1; 32]).unwrap()));
        assert!(c.tls_alpn01("a.test.").is_some());
        c.remove_tls_alpn01("a.test");
        assert!(!c.any_tls_alpn01());
    }
}
