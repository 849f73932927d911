//! SNI → certificate lookup: exact names first, then a `*.parent` wildcard covering exactly
//! one label, as browsers match certificates.

use std::collections::HashMap;
use std::sync::Arc;

use rustls::sign::CertifiedKey;

use super::load::LoadedCert;

/// An immutable lookup table, rebuilt and swapped whole on every change.
#[derive(Debug, Default)]
pub struct CertIndex {
    exact: HashMap<String, (i64, Arc<CertifiedKey>)>,
    wildcard: HashMap<String, (i64, Arc<CertifiedKey>)>,
}

impl CertIndex {
    pub fn build<'a>(certs: impl IntoIterator<Item = &'a LoadedCert>) -> Self {
        let mut index = Self::default();
        for cert in certs {
            for name in &cert.names {
                let (map, key) = match name.strip_prefix("*.") {
                    Some(parent) => (&mut index.wildcard, parent.to_string()),
                    None => (&mut index.exact, name.clone()),
                };
                let entry = map.entry(key).or_insert((cert.not_after, cert.key.clone()));
                // Two certificates for one name (an old one left in place): the longer-lived wins.
                if cert.not_after > entry.0 {
                    *entry = (cert.not_after, cert.key.clone());
                }
            }
        }
        index
    }

    /// The certificate for a (lower-case) SNI name.
    pub fn lookup(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        let name = name.strip_suffix('.').unwrap_or(name);
        if let Some((_, k)) = self.exact.get(name) {
            return Some(k.clone());
        }
        let (_, parent) = name.split_once('.')?;
        self.wildcard.get(parent).map(|(_, k)| k.clone())
    }

    /// Number of names served.
    pub fn len(&self) -> usize {
        self.exact.len() + self.wildcard.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
