//! SNI → certificate lookup: exact names first, then a `*.parent` wildcard covering exactly
//! one label, as browsers match certificates; an expired certificate only when no valid one
//! covers the name (a certificate left behind, no longer renewed, beside a wildcard that is).

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
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
        self.lookup_at(name, now)
    }

    /// [`CertIndex::lookup`] at `now` (Unix seconds).
    fn lookup_at(&self, name: &str, now: i64) -> Option<Arc<CertifiedKey>> {
        let name = name.strip_suffix('.').unwrap_or(name);
        let exact = self.exact.get(name);
        let wildcard = name.split_once('.').and_then(|(_, parent)| self.wildcard.get(parent));
        let valid = |c: &&(i64, Arc<CertifiedKey>)| c.0 > now;
        let chosen = exact.filter(valid).or(wildcard.filter(valid)).or(exact).or(wildcard);
        chosen.map(|(_, k)| k.clone())
    }

    /// Number of names served.
    pub fn len(&self) -> usize {
        self.exact.len() + self.wildcard.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::tls::load::{load_pair, LoadError};

    fn write_pair(dir: &Path, stem: &str, names: &[&str]) -> (std::path::PathBuf, std::path::PathBuf) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let (c, k) = (dir.join(format!("{stem}.pem")), dir.join(format!("{stem}.key")));
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }

    #[test]
    fn names_come_from_the_certificate_and_wildcards_cover_one_label() {
        let dir = tempfile::tempdir().unwrap();
        let (c, k) = write_pair(dir.path(), "a", &["A.example.org", "*.apps.example.org"]);
        let loaded = load_pair(&c, &k).unwrap();
        assert_eq!(loaded.names, ["*.apps.example.org", "a.example.org"]);
        let index = CertIndex::build([&loaded]);
        assert!(index.lookup("a.example.org").is_some());
        assert!(index.lookup("a.example.org.").is_some());
        assert!(index.lookup("x.apps.example.org").is_some());
        assert!(index.lookup("y.x.apps.example.org").is_none(), "browsers would refuse it");
        assert!(index.lookup("apps.example.org").is_none());
        assert!(index.lookup("b.example.org").is_none());
    }

    /// An expired exact certificate (left behind, no longer renewed) gives way to a valid
    /// wildcard; with nothing valid, the exact one is still served (its error names the cause).
    #[test]
    fn a_valid_wildcard_wins_over_an_expired_exact_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let (c, k) = write_pair(dir.path(), "nas", &["nas.example.org"]);
        let exact = load_pair(&c, &k).unwrap();
        let (c, k) = write_pair(dir.path(), "wild", &["*.example.org"]);
        let wild = load_pair(&c, &k).unwrap();
        let index = CertIndex::build([&exact, &wild]);
        let is = |got: Option<Arc<CertifiedKey>>, want: &LoadedCert| got.is_some_and(|g| Arc::ptr_eq(&g, &want.key));
        let before = exact.not_after.min(wild.not_after) - 1;
        assert!(is(index.lookup_at("nas.example.org", before), &exact), "both valid: the exact one");
        let mut short = load_pair(&dir.path().join("nas.pem"), &dir.path().join("nas.key")).unwrap();
        short.not_after = before - 10;
        let index = CertIndex::build([&short, &wild]);
        assert!(is(index.lookup_at("nas.example.org", before), &wild), "the exact one expired: the wildcard");
        assert!(is(index.lookup_at("other.example.org", before), &wild));
        let index = CertIndex::build([&short]);
        assert!(is(index.lookup_at("nas.example.org", before), &short), "nothing valid: the expired one");
    }

    #[test]
    fn mismatched_key_garbage_and_missing_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let (c1, _) = write_pair(dir.path(), "one", &["one.test"]);
        let (_, k2) = write_pair(dir.path(), "two", &["two.test"]);
        assert!(matches!(load_pair(&c1, &k2), Err(LoadError::Mismatch { .. })));
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not pem at all").unwrap();
        assert!(load_pair(&junk, &k2).is_err());
        assert!(load_pair(&dir.path().join("missing.pem"), &k2).is_err());
    }
}
