//! The live certificate set: loads certbot-layout directories and explicit files, publishes
//! a [`CertIndex`] with `ArcSwap` for the handshake path, and re-reads files whose
//! modification time, size or symlink target changed (certbot renewals), without a restart.

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
use crate::config::{CertFiles, Tls};
use crate::metrics::names;

/// What identifies one version of a file on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    target: PathBuf,
    modified: Option<SystemTime>,
    len: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    let meta = std::fs::metadata(path).ok()?;
    Some(Stamp {
        // certbot's live/ files are symlinks into archive/: a renewal changes the target.
        target: std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf()),
        modified: meta.modified().ok(),
        len: meta.len(),
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
        let mut out: Vec<(Vec<String>, i64)> =
            state.entries.values().filter_map(|e| e.loaded.as_ref()).map(|c| (c.names.clone(), c.not_after)).collect();
        out.sort();
        out
    }

    /// Replace where certificates come from (start-up and config reload), then refresh.
    pub fn set_sources(&self, tls: &Tls) {
        {
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
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
        let wanted = pairs(&sources);
        let mut changed = false;
        let before = state.entries.len();
        state.entries.retain(|k, _| wanted.contains(k));
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
            let index = CertIndex::build(state.entries.values().filter_map(|e| e.loaded.as_ref()));
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

/// Every certificate/key pair the sources name right now.
fn pairs(tls: &Tls) -> Vec<CertFiles> {
    let mut out = tls.certificates.clone();
    let mut live_dirs: Vec<&PathBuf> = tls.certbot_live_dir.iter().collect();
    // ACME's live/ may be certbot's own (renewed in place): read it once.
    live_dirs.extend(tls.acme_live_dir.iter().filter(|d| tls.certbot_live_dir.as_ref() != Some(*d)));
    for live in live_dirs {
        match std::fs::read_dir(live) {
            Ok(dir) => {
                let mut found: Vec<CertFiles> = dir
                    .filter_map(Result::ok)
                    .map(|e| e.path())
                    .filter(|p| p.join("fullchain.pem").exists())
                    .map(|p| CertFiles { cert: p.join("fullchain.pem"), key: p.join("privkey.pem") })
                    .collect();
                found.sort_by(|a, b| a.cert.cmp(&b.cert));
                out.extend(found);
            }
            // ACME makes its live/ with the first certificate.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && tls.acme_live_dir.as_ref() == Some(live) => {}
            Err(e) => warn!(dir = %live.display(), error = %e, "cannot read certbot live directory"),
        }
    }
    out
}

/// rustls resolver backed by a [`CertStore`]; no certificate means a handshake failure alert.
#[derive(Debug)]
pub struct Resolver(pub Arc<CertStore>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        hello.server_name().and_then(|n| self.0.lookup(n))
    }
}
