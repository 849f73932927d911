//! Reading one certificate chain and key from PEM files into a rustls `CertifiedKey`, with
//! the DNS names the certificate covers (SAN dNSNames, else the subject CN).

use std::path::Path;
use std::sync::Arc;

use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use x509_parser::extensions::GeneralName;

/// A loaded certificate ready to serve.
#[derive(Debug, Clone)]
pub struct LoadedCert {
    /// Lower-case names, possibly `*.example.org`.
    pub names: Vec<String>,
    /// Expiry as a Unix timestamp; when two certificates cover a name the later one wins.
    pub not_after: i64,
    pub key: Arc<CertifiedKey>,
}

/// Why a certificate pair could not be used.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{path}: {reason}")]
    Pem { path: String, reason: String },
    #[error("{path}: no certificate in the file")]
    Empty { path: String },
    #[error("{path}: {reason}")]
    Key { path: String, reason: String },
    #[error("{path}: not a usable X.509 certificate: {reason}")]
    X509 { path: String, reason: String },
    #[error("{path}: the certificate names no DNS host")]
    NoNames { path: String },
    #[error("{cert} and {key} do not belong together: {reason}")]
    Mismatch { cert: String, key: String, reason: String },
}

/// Load `cert` (PEM chain, leaf first) and `key` (PEM private key).
pub fn load_pair(cert: &Path, key: &Path) -> Result<LoadedCert, LoadError> {
    let cert_s = cert.display().to_string();
    let key_s = key.display().to_string();
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| LoadError::Pem { path: cert_s.clone(), reason: e.to_string() })?;
    let leaf = chain.first().ok_or_else(|| LoadError::Empty { path: cert_s.clone() })?;
    let (names, not_after) = names_of(leaf).map_err(|reason| LoadError::X509 { path: cert_s.clone(), reason })?;
    if names.is_empty() {
        return Err(LoadError::NoNames { path: cert_s });
    }
    let der =
        PrivateKeyDer::from_pem_file(key).map_err(|e| LoadError::Key { path: key_s.clone(), reason: e.to_string() })?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&der)
        .map_err(|e| LoadError::Key { path: key_s.clone(), reason: e.to_string() })?;
    let ck = CertifiedKey::new(chain, signing);
    // certbot replaces fullchain and privkey one after the other; a poll between the two
    // sees a new certificate with the old key. Refuse the pair and keep serving the old one.
    ck.keys_match().map_err(|e| LoadError::Mismatch { cert: cert_s, key: key_s, reason: e.to_string() })?;
    Ok(LoadedCert { names, not_after, key: Arc::new(ck) })
}

fn names_of(der: &CertificateDer<'_>) -> Result<(Vec<String>, i64), String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| e.to_string())?;
    let not_after = cert.validity().not_after.timestamp();
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::DNSName(n) = name {
                names.push(n.to_ascii_lowercase());
            }
        }
    }
    if names.is_empty() {
        for cn in cert.subject().iter_common_name() {
            if let Ok(s) = cn.as_str() {
                names.push(s.to_ascii_lowercase());
            }
        }
    }
    names.sort();
    names.dedup();
    Ok((names, not_after))
}
