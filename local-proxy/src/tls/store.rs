//! The live certificate set: loads certbot-layout directories and explicit files, publishes
//! a [`CertIndex`] with `ArcSwap` for the handshake path, and re-reads files whose
//! modification time, size or symlink target changed (certbot renewals), without a restart.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tracing::{info, warn};

use super::index::CertIndex;
use super::load::{load_pair, LoadedCert};
use crate::acme::Challenges;
use crate::config::{CertFiles, FieldError, Problems, Tls};
use crate::metrics::names;

/// What identifies one version of a file on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    target: PathBuf,
    modified: Option<SystemTime>,
    len: u64,
    /// Inode change time (s, ns): a chmod or chgrp changes nothing else, and a key the
    /// proxy could not read must be tried again once certbot's permissions are fixed.
    changed: (i64, i64),
}

fn stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    Some(Stamp {
        // certbot's live/ files are symlinks into archive/: a renewal changes the target.
        target: std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf()),
        modified: meta.modified().ok(),
        len: meta.len(),
        changed: (meta.ctime(), meta.ctime_nsec()),
    })
}

#[derive(Debug)]
struct Entry {
    stamps: (Option<Stamp>, Option<Stamp>),
    /// The last version that loaded; kept while a newer version fails to load.
    loaded: Option<LoadedCert>,
}

/// Certificates by SNI; shared by the TLS acceptor and the reload poller.
#[derive(Debug, Default)]
pub struct CertStore {
    index: ArcSwap<CertIndex>,
    state: Mutex<State>,
    /// ACME challenge answers offered now (TLS-ALPN-01 certificates are picked in the handshake).
    challenges: Arc<Challenges>,
}

#[derive(Debug, Default)]
struct State {
    sources: Option<Tls>,
    entries: HashMap<CertFiles, Entry>,
    /// The sources changed: the index is built again even if no file did (the ACME names
    /// decide which of its certificates are served).
    rebuild: bool,
}

/// What of `cert`, loaded from `files`, is served: all of it, but for a certificate in ACME's
/// own `live/` (not one listed in `tls.certificates`) only the names `[acme]` keeps. A name
/// taken out of `[acme]` is renewed by nobody, and its certificate would otherwise beat one
/// the operator gave that name since, if it lives longer, until it expires; a folder keeps
/// such a name until its next renewal when it also covers names still kept. `None`: nothing.
fn served<'a>(sources: &Tls, files: &CertFiles, cert: &'a LoadedCert) -> Option<Cow<'a, LoadedCert>> {
    let acme = sources.acme_live_dir.as_ref().filter(|d| sources.certbot_live_dir.as_ref() != Some(*d));
    if !acme.is_some_and(|d| files.cert.starts_with(d) && !sources.certificates.contains(files)) {
        return Some(Cow::Borrowed(cert));
    }
    let kept = |n: &String| sources.acme_names.iter().any(|a| a.eq_ignore_ascii_case(n));
    if cert.names.iter().all(kept) {
        return Some(Cow::Borrowed(cert));
    }
    let names: Vec<String> = cert.names.iter().filter(|n| kept(n)).cloned().collect();
    (!names.is_empty()).then(|| Cow::Owned(LoadedCert { names, ..cert.clone() }))
}

impl CertStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Certificate for an SNI name, if any.
    pub fn lookup(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        self.index.load().lookup(&name.to_ascii_lowercase())
    }

    /// Number of names with a certificate.
    pub fn len(&self) -> usize {
        self.index.load().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// ACME challenge answers being offered.
    pub fn challenges(&self) -> &Arc<Challenges> {
        &self.challenges
    }

    /// Every certificate being served: its names and expiry (Unix seconds), for status pages
    /// (days left = `(not_after - now) / 86400`).
    pub fn certificates(&self) -> Vec<(Vec<String>, i64)> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let Some(sources) = state.sources.as_ref() else { return Vec::new() };
        let mut out: Vec<(Vec<String>, i64)> = state
            .entries
            .iter()
            .filter_map(|(k, e)| e.loaded.as_ref().and_then(|c| served(sources, k, c)))
            .map(|c| (c.names.clone(), c.not_after))
            .collect();
        out.sort();
        out
    }

    /// Replace where certificates come from (start-up and config reload), then refresh.
    pub fn set_sources(&self, tls: &Tls) {
        {
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            state.rebuild = state.sources.as_ref() != Some(tls);
            state.sources = Some(tls.clone());
        }
        self.refresh();
    }

    /// Look at every source file and reload what changed. Blocking file I/O: call from a
    /// blocking context (or accept a few milliseconds on start-up).
    pub fn refresh(&self) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let Some(sources) = state.sources.clone() else {
            return;
        };
        let (wanted, unreadable) = pairs(&sources);
        let mut changed = std::mem::take(&mut state.rebuild);
        let before = state.entries.len();
        // A live directory that cannot be read this time keeps what it served.
        state.entries.retain(|k, _| wanted.contains(k) || unreadable.iter().any(|d| k.cert.starts_with(d)));
        if state.entries.len() != before {
            changed = true;
        }
        for pair in wanted {
            let stamps = (stamp(&pair.cert), stamp(&pair.key));
            if let Some(e) = state.entries.get(&pair) {
                if e.stamps == stamps {
                    continue;
                }
            }
            let previous = state.entries.remove(&pair).and_then(|e| e.loaded);
            let loaded = match load_pair(&pair.cert, &pair.key) {
                Ok(cert) => {
                    info!(cert = %pair.cert.display(), names = ?cert.names, "certificate loaded");
                    metrics::counter!(names::CERTIFICATE_LOADS, "result" => "ok").increment(1);
                    changed = true;
                    Some(cert)
                }
                Err(e) => {
                    warn!(error = %e, kept_previous = previous.is_some(), "certificate not loaded");
                    metrics::counter!(names::CERTIFICATE_LOADS, "result" => "failed").increment(1);
                    previous
                }
            };
            state.entries.insert(pair, Entry { stamps, loaded });
        }
        if changed {
            let shown: Vec<Cow<'_, LoadedCert>> = state
                .entries
                .iter()
                .filter_map(|(k, e)| e.loaded.as_ref().and_then(|c| served(&sources, k, c)))
                .collect();
            let left = state.entries.values().filter(|e| e.loaded.is_some()).count() - shown.len();
            if left > 0 {
                info!(certificates = left, "certificates in ACME's live/ covering no name [acme] keeps are not served");
            }
            let index = CertIndex::build(shown.iter().map(|c| c.as_ref()));
            metrics::gauge!(names::CERTIFICATES_LOADED).set(index.len() as f64);
            self.index.store(Arc::new(index));
        }
    }

    /// Poll for changes every `tls.reload_interval` (re-read on each round, so a config
    /// reload that changes the interval takes effect) until `shutdown`.
    pub async fn watch(self: Arc<Self>, shutdown: tokio_util::sync::CancellationToken) {
        loop {
            let interval = {
                let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
                state.sources.as_ref().map(|s| s.reload_interval).unwrap_or(std::time::Duration::from_secs(5))
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
            }
            let store = self.clone();
            // File reads and parsing stay off the async workers.
            if let Err(e) = tokio::task::spawn_blocking(move || store.refresh()).await {
                warn!(error = %e, "certificate refresh task failed");
            }
        }
    }
}

/// Every certificate/key pair the sources name right now, and the live directories that could
/// not be read.
///
/// A lineage is a directory of a live directory, whether its `fullchain.pem` is there or not:
/// certbot renews by removing each link and making it anew, and a poll between the two must
/// not drop the names' certificate (a missing file keeps the pair's last good one, as a bad
/// file does).
fn pairs(tls: &Tls) -> (Vec<CertFiles>, Vec<PathBuf>) {
    let mut out = tls.certificates.clone();
    let mut unreadable = Vec::new();
    let mut live_dirs: Vec<&PathBuf> = tls.certbot_live_dir.iter().collect();
    // ACME's live/ may be certbot's own (renewed in place): read it once.
    live_dirs.extend(tls.acme_live_dir.iter().filter(|d| tls.certbot_live_dir.as_ref() != Some(*d)));
    for live in live_dirs {
        match std::fs::read_dir(live) {
            Ok(dir) => {
                let mut found: Vec<CertFiles> = dir
                    .filter_map(Result::ok)
                    .map(|e| e.path())
                    .filter(|p| p.is_dir())
                    .map(|p| CertFiles { cert: p.join("fullchain.pem"), key: p.join("privkey.pem") })
                    .collect();
                found.sort_by(|a, b| a.cert.cmp(&b.cert));
                out.extend(found);
            }
            // ACME makes its live/ with the first certificate; a live/ taken away is meant.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if tls.acme_live_dir.as_ref() != Some(live) {
                    warn!(dir = %live.display(), "certbot live directory gone; its certificates are no longer served");
                }
            }
            Err(e) => {
                warn!(dir = %live.display(), error = %e, "cannot read certbot live directory; keeping its certificates");
                unreadable.push(live.clone());
            }
        }
    }
    (out, unreadable)
}

/// For `check`: the certificate files `tls` names, read as the store will read them. A pair
/// listed in `tls.certificate` that does not load is a problem (nginx refuses its start too);
/// `certbot_live_dir` naming one lineage instead of the folder of them is a problem (nothing
/// would be found in it); a live folder not made yet, not readable yet, or holding nothing
/// usable yet, is a warning (certbot may run after the proxy is installed, and its deploy
/// hook opens it to the service). ACME's own folder is not read: the
/// proxy fills it.
pub fn check_sources(tls: &Tls, problems: &mut Problems, warnings: &mut Vec<FieldError>) {
    for (i, pair) in tls.certificates.iter().enumerate() {
        if let Err(e) = load_pair(&pair.cert, &pair.key) {
            problems.push(format!("tls.certificate[{i}]"), e.to_string());
        }
    }
    let Some(live) = &tls.certbot_live_dir else { return };
    let field = "tls.certbot_live_dir";
    let mut warn = |message: String| warnings.push(FieldError { field: field.into(), message });
    if live.join("fullchain.pem").exists() {
        let parent = live.parent().map_or_else(String::new, |p| format!(" (`{}`)", p.display()));
        problems.push(
            field,
            format!(
                "`{}` is one certificate's folder (it holds fullchain.pem): give the folder of them{parent}, \
                 whose sub-folders are read",
                live.display()
            ),
        );
        return;
    }
    let dir = match std::fs::read_dir(live) {
        Ok(dir) => dir,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            warn(format!("`{}` does not exist (yet): no certificate from it until certbot makes it", live.display()));
            return;
        }
        // Not readable by whoever runs `check` (certbot's live/ is root's until its deploy hook
        // opens it): the server starts without it, as it does without a folder not made yet.
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            warn(format!("`{}`: {e}: no certificate from it until it can be read", live.display()));
            return;
        }
        Err(e) => {
            problems.push(field, format!("`{}`: {e}", live.display()));
            return;
        }
    };
    let mut lineages: Vec<PathBuf> = dir.filter_map(Result::ok).map(|e| e.path()).filter(|p| p.is_dir()).collect();
    lineages.sort();
    if lineages.is_empty() {
        warn(format!("`{}` holds no certificate folder yet", live.display()));
    }
    for lineage in lineages {
        if let Err(e) = load_pair(&lineage.join("fullchain.pem"), &lineage.join("privkey.pem")) {
            warn(format!("not served: {e}"));
        }
    }
}

/// rustls resolver backed by a [`CertStore`]; no certificate means a handshake failure alert.
#[derive(Debug)]
pub struct Resolver(pub Arc<CertStore>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        hello.server_name().and_then(|n| self.0.lookup(n))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn write_pair(dir: &Path, name: &str) {
        write_pair_for(dir, &[name]);
    }

    fn write_pair_for(dir: &Path, names: &[&str]) {
        let key = rcgen::KeyPair::generate().unwrap();
        let names = names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        let cert = rcgen::CertificateParams::new(names).unwrap().self_signed(&key).unwrap();
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("privkey.pem"), key.serialize_pem()).unwrap();
        std::fs::write(dir.join("fullchain.pem"), cert.pem()).unwrap();
    }

    /// A store serving certbot's layout under `live`.
    fn serving(live: &Path) -> CertStore {
        let store = CertStore::new();
        store.set_sources(&Tls {
            certbot_live_dir: Some(live.to_path_buf()),
            certificates: Vec::new(),
            reload_interval: std::time::Duration::from_secs(5),
            acme_live_dir: None,
            acme_names: Vec::new(),
        });
        store
    }

    /// certbot renews by removing each link and making it anew: a poll in between, or a live
    /// directory that cannot be read for a moment, keeps the names' certificate. A live
    /// directory taken away is meant, and its certificates go.
    #[test]
    fn a_lineage_briefly_without_its_chain_or_an_unreadable_live_dir_keeps_serving() {
        let tmp = tempfile::tempdir().unwrap();
        let live = tmp.path().join("live");
        write_pair(&live.join("a.test"), "a.test");
        std::fs::write(live.join("README"), "certbot's note").unwrap();
        let store = serving(&live);
        assert!(store.lookup("a.test").is_some());

        let chain = live.join("a.test/fullchain.pem");
        std::fs::rename(&chain, tmp.path().join("aside.pem")).unwrap();
        store.refresh();
        assert!(store.lookup("a.test").is_some(), "dropped between certbot's unlink and symlink");
        std::fs::rename(tmp.path().join("aside.pem"), &chain).unwrap();
        store.refresh();
        assert!(store.lookup("a.test").is_some());

        // Not a directory any more (ENOTDIR on read_dir): an error, not a removal.
        std::fs::rename(&live, tmp.path().join("live.moved")).unwrap();
        std::fs::write(&live, "").unwrap();
        store.refresh();
        assert!(store.lookup("a.test").is_some(), "dropped on an unreadable live directory");

        std::fs::remove_file(&live).unwrap();
        store.refresh();
        assert!(store.lookup("a.test").is_none(), "a live directory taken away keeps serving");
    }

    /// A key that failed to load is tried again when only its inode changes (a chmod or chgrp:
    /// certbot's new key made readable for the proxy). Stood for here by a key fixed in place
    /// with its length and modification time as they were: root reads any mode.
    #[test]
    fn a_key_that_failed_is_tried_again_when_only_its_inode_changes() {
        let tmp = tempfile::tempdir().unwrap();
        let live = tmp.path().join("live");
        write_pair(&live.join("b.test"), "b.test");
        let key = live.join("b.test/privkey.pem");
        let good = std::fs::read(&key).unwrap();
        let mut bad = good.clone();
        let body = bad.iter().position(|&c| c == b'\n').unwrap() + 5;
        bad[body..body + 8].copy_from_slice(b"!!!!!!!!");
        std::fs::write(&key, &bad).unwrap();
        let mtime = std::fs::metadata(&key).unwrap().modified().unwrap();
        let store = serving(&live);
        assert!(store.lookup("b.test").is_none(), "a broken key loaded");
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&key, &good).unwrap();
        std::fs::File::options().write(true).open(&key).unwrap().set_modified(mtime).unwrap();
        store.refresh();
        assert!(store.lookup("b.test").is_some(), "the fixed key was not tried again");
    }

    /// A certificate left in ACME's own live/ for a name taken out of `[acme]` is not served
    /// (renewed by nobody, it would beat a shorter-lived one the operator gives that name);
    /// the name back in `[acme]`, it is again. In a live/ that is certbot's too, all are.
    #[test]
    fn acme_serves_only_the_names_it_keeps() {
        let tmp = tempfile::tempdir().unwrap();
        let live = tmp.path().join("live");
        write_pair(&live.join("a.test"), "a.test");
        write_pair(&live.join("b.test"), "b.test");
        // A folder of two names, one of them taken out of [acme].
        write_pair_for(&live.join("c.test"), &["c.test", "d.test"]);
        let sources = |names: &[&str], certbot: bool| Tls {
            certbot_live_dir: certbot.then(|| live.clone()),
            certificates: Vec::new(),
            reload_interval: std::time::Duration::from_secs(5),
            acme_live_dir: Some(live.clone()),
            acme_names: names.iter().map(|n| n.to_string()).collect(),
        };
        let store = CertStore::new();
        store.set_sources(&sources(&["a.test", "c.test"], false));
        assert!(store.lookup("a.test").is_some() && store.lookup("b.test").is_none());
        assert!(store.lookup("c.test").is_some() && store.lookup("d.test").is_none(), "names, not folders");
        let listed: Vec<Vec<String>> = store.certificates().into_iter().map(|(names, _)| names).collect();
        assert_eq!(listed, [["a.test"], ["c.test"]].map(|n| n.map(String::from).to_vec()));
        store.set_sources(&sources(&["a.test", "b.test"], false));
        assert!(store.lookup("b.test").is_some(), "back in [acme]: served without a file change");
        store.set_sources(&sources(&["a.test"], true));
        assert!(store.lookup("b.test").is_some(), "certbot's live/: every folder is served");
    }
}
