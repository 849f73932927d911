//! The CA files a config names (`ca_file` of a site or forward auth, `acme.directory_ca_file`):
//! read when the config is checked, so `local-proxy check` refuses a file the server could not
//! use, and again when the clients are built.

use std::path::Path;

use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

/// The certificates of the PEM file at `path` as trust roots; why not, in words.
pub fn roots(path: &Path) -> Result<RootCertStore, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| e.to_string())?;
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err("no usable certificate in the file".into());
    }
    Ok(roots)
}

/// [`roots`], for validation: what is wrong with the file, naming it. A relative path would
/// be read from wherever `check` ran, and from / under systemd: refused.
pub(super) fn problem(path: &str) -> Option<String> {
    if let Some(p) = super::relative(path) {
        return Some(p);
    }
    roots(Path::new(path)).err().map(|reason| format!("`{path}`: {reason}"))
}
