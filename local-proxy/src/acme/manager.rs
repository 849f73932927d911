//! The ACME task: the account (retried with backoff), one loop per certificate that sleeps until
//! the certificate is due (two thirds of its lifetime, or the CA's ARI window), issues, writes
//! the files and has the TLS store load them at once. A failure is logged, counted and retried
//! with backoff while the current certificate keeps serving. [`Acme`] holds what status pages
//! read: per certificate its names, expiry, failures and last error.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use instant_acme::{Account, CertificateIdentifier};
use rustls_pki_types::Der;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use super::issue::{self, IssueError, Issued};
use super::plan::{self, Due, Failure, Lineage};
use super::storage::{self, OnDisk};
use crate::config::acme::Settings;
use crate::metrics::names;
use crate::tls::CertStore;

/// The longest sleep between looks at a certificate (files changed by hand, clock jumps).
const MAX_SLEEP: Duration = Duration::from_secs(3600);

/// What is known about one ACME certificate, for status pages.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CertStatus {
    /// Names the certificate is to cover.
    pub names: Vec<String>,
    /// Expiry of the certificate on disk (Unix seconds), if there is one.
    pub not_after: Option<i64>,
    /// When the next renewal attempt is planned (Unix seconds).
    pub next_attempt: Option<i64>,
    /// Failed attempts since the last success.
    pub failures: u32,
    /// The last failure, with the CA's error when it sent one.
    pub last_error: Option<String>,
    /// Challenge types answered for the last certificate issued (empty when the CA reused
    /// earlier authorizations).
    pub last_challenges: Vec<&'static str>,
}

impl CertStatus {
    /// Days until expiry at `now` (Unix seconds); negative once expired.
    pub fn days_left(&self, now: i64) -> Option<f64> {
        self.not_after.map(|t| (t - now) as f64 / 86_400.0)
    }
}

/// ACME state shared with status pages; empty while ACME is off.
#[derive(Debug, Default)]
pub struct Acme {
    certs: Mutex<BTreeMap<String, CertStatus>>,
    /// Account problems (creating or restoring it), for status pages.
    account_error: Mutex<Option<String>>,
    /// The running task's settings and stop token.
    running: Mutex<Option<(Settings, CancellationToken)>>,
    /// Per certificate folder, while its attempts fail: how many failed and when the next may
    /// be made (Unix seconds). Kept when a reload restarts ACME (adding a site changes the
    /// default names), and in the storage folder for the next run ([`storage::retry_path`]),
    /// so a name that keeps failing is not ordered again at every reload or restart: the CA
    /// refuses a name for an hour after five failed validations.
    retry: Mutex<BTreeMap<String, (u32, i64)>>,
    /// The storage folder of the running settings, where [`Acme::retry`] is kept.
    storage: Mutex<Option<PathBuf>>,
}

impl Acme {
    /// Start ACME for `settings`, or restart it when they changed (a config reload), or stop
    /// it (`None`). Unchanged settings leave the running task alone.
    pub fn apply(
        self: &Arc<Self>,
        settings: Option<&Settings>,
        certs: &Arc<CertStore>,
        tasks: &TaskTracker,
        shutdown: &CancellationToken,
    ) {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        if running.as_ref().map(|(s, _)| s) == settings {
            return;
        }
        if let Some((_, stop)) = running.take() {
            stop.cancel();
        }
        if let Some(settings) = settings {
            self.keep_in(&settings.storage);
            let stop = shutdown.child_token();
            *running = Some((settings.clone(), stop.clone()));
            tasks.spawn(run(settings.clone(), certs.clone(), self.clone(), stop));
        } else {
            self.clear();
        }
    }

    /// Every ACME certificate by its `live/` folder name.
    pub fn status(&self) -> BTreeMap<String, CertStatus> {
        self.certs.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The last account error, if the account is not usable now.
    pub fn account_error(&self) -> Option<String> {
        self.account_error.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn update(&self, dir: &str, f: impl FnOnce(&mut CertStatus)) {
        let mut certs = self.certs.lock().unwrap_or_else(|p| p.into_inner());
        f(certs.entry(dir.to_string()).or_default());
    }

    fn set_account_error(&self, e: Option<String>) {
        *self.account_error.lock().unwrap_or_else(|p| p.into_inner()) = e;
    }

    fn clear(&self) {
        self.certs.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    fn keep_only<'a>(&self, dirs: impl Iterator<Item = &'a str> + Clone) {
        self.certs.lock().unwrap_or_else(|p| p.into_inner()).retain(|dir, _| dirs.clone().any(|d| d == dir));
    }

    /// Whether ACME keeps the certificate in `live/` folder `dir` now.
    pub fn keeps(&self, dir: &str) -> bool {
        self.certs.lock().unwrap_or_else(|p| p.into_inner()).contains_key(dir)
    }

    /// `dir`'s failures so far and when its next attempt may be made; `(0, 0)` when its last
    /// attempt succeeded. Known in memory since this process's first look, else as the last
    /// run left it in the storage folder.
    fn retry_of(&self, dir: &str) -> (u32, i64) {
        let mut retry = self.retry.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(known) = retry.get(dir) {
            return *known;
        }
        let stored = self.retry_file(dir).and_then(|path| storage::read_retry(&path));
        let known = stored.unwrap_or((0, 0));
        if known.0 > 0 {
            retry.insert(dir.to_string(), known);
        }
        known
    }

    fn set_retry(&self, dir: &str, failures: u32, not_before: i64) {
        let mut retry = self.retry.lock().unwrap_or_else(|p| p.into_inner());
        match failures {
            0 => retry.remove(dir),
            _ => retry.insert(dir.to_string(), (failures, not_before)),
        };
        drop(retry);
        // A few bytes, once per attempt: written here rather than on a blocking thread.
        if let Some(path) = self.retry_file(dir) {
            if let Err(e) = storage::write_retry(&path, failures, not_before) {
                warn!(certificate = %dir, error = %e, "cannot keep the failed attempts for the next run");
            }
        }
    }

    /// Failed attempts are kept in (and read from) `storage` from now on.
    fn keep_in(&self, storage: &Path) {
        *self.storage.lock().unwrap_or_else(|p| p.into_inner()) = Some(storage.to_path_buf());
    }

    fn retry_file(&self, dir: &str) -> Option<PathBuf> {
        let storage = self.storage.lock().unwrap_or_else(|p| p.into_inner());
        storage.as_deref().and_then(|s| storage::retry_path(s, dir))
    }
}

fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// The bound on one call to the CA outside an order (the account, renewal information), as
/// certbot's and lego's HTTP timeouts: instant-acme's client has none, and a CA (or a path
/// to it) that accepts and then says nothing would hold the task for good.
const CA_CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Sleep `d` unless `stop` comes first; false when stopped.
async fn sleep_or_stop(d: Duration, stop: &CancellationToken) -> bool {
    tokio::select! {
        _ = stop.cancelled() => false,
        _ = tokio::time::sleep(d) => true,
    }
}

/// Run ACME for `settings` until `stop`.
pub async fn run(settings: Settings, certs: Arc<CertStore>, acme: Arc<Acme>, stop: CancellationToken) {
    // instant-acme's HTTPS client takes the process default; this build has only ring.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let settings = Arc::new(settings);
    let live = settings.live_dir();
    let existing = {
        let live = live.clone();
        tokio::task::spawn_blocking(move || scan(&live)).await.unwrap_or_default()
    };
    let lineages = plan::lineages(&settings.names, &existing);
    // A certificate a reload no longer asks for leaves the status page and its series (its
    // consecutive failures would keep LocalProxyAcmeFailing firing for good). The others stay
    // as they were through the restart, while the account is fetched again: cleared, the
    // status page and their series would be empty until then (for as long as the CA does not
    // answer).
    acme.keep_only(lineages.iter().map(|l| l.dir.as_str()));
    for lineage in &lineages {
        acme.update(&lineage.dir, |s| s.names = lineage.names.clone());
    }
    let mut failures = 0;
    let account = loop {
        let answer = tokio::select! {
            a = tokio::time::timeout(CA_CALL_TIMEOUT, issue::account(&settings)) => a,
            _ = stop.cancelled() => return,
        };
        match answer.unwrap_or(Err(IssueError::Timeout(CA_CALL_TIMEOUT))) {
            Ok(a) => {
                acme.set_account_error(None);
                break a;
            }
            Err(e) => {
                failures += 1;
                let failure =
                    if matches!(e, IssueError::RateLimited(_)) { Failure::RateLimited } else { Failure::Other };
                let (wait, _) = plan::after_failure(failures, failure, settings.retry_min, settings.retry_max);
                metrics::counter!(names::ACME_ACCOUNT_ERRORS).increment(1);
                warn!(directory = %settings.directory, error = %e, retry_in = ?wait, "ACME account not available");
                acme.set_account_error(Some(e.to_string()));
                if !sleep_or_stop(wait, &stop).await {
                    return;
                }
            }
        }
    };

    // Again: a job of the manager this one replaced may have noted a dropped certificate in
    // the moment before it was cancelled.
    acme.keep_only(lineages.iter().map(|l| l.dir.as_str()));
    let mut tasks = JoinSet::new();
    for lineage in lineages {
        let job = Job {
            lineage,
            live: live.clone(),
            settings: settings.clone(),
            account: account.clone(),
            certs: certs.clone(),
            acme: acme.clone(),
        };
        tasks.spawn(job.run(stop.clone()));
    }
    // The loops end on `stop`; dropping the set cancels any still in a request.
    stop.cancelled().await;
    tasks.shutdown().await;
}

/// `(folder, names)` of every certificate in `live/`.
fn scan(live: &Path) -> Vec<(String, Vec<String>)> {
    let Ok(dir) = std::fs::read_dir(live) else { return Vec::new() };
    dir.filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_string();
            let cert = storage::read_cert(&e.path().join("fullchain.pem")).ok()??;
            Some((name, cert.names))
        })
        .collect()
}

/// One certificate's renewal loop.
struct Job {
    lineage: Lineage,
    live: PathBuf,
    settings: Arc<Settings>,
    account: Account,
    certs: Arc<CertStore>,
    acme: Arc<Acme>,
}

impl Job {
    async fn run(self, stop: CancellationToken) {
        let dir = self.lineage.dir.clone();
        // Carried over from before a restart of ACME (a reload that changed its settings).
        let (mut failures, mut not_before) = self.acme.retry_of(&dir);
        if failures > 0 {
            self.acme.update(&dir, |s| s.failures = failures);
        }
        // An issued certificate that could not be written yet: written again before any new
        // order, so a storage problem does not spend the CA's duplicate-certificate budget.
        let mut unwritten: Option<Issued> = None;
        let mut ari = plan::Ari::default();
        // Which challenge type goes first: the other one after a failed validation.
        let mut tls_first = false;
        // Cleared when the CA refused an order naming the certificate it replaces
        // (`plan::after_failure`), until a certificate is issued.
        let mut may_replace = true;
        loop {
            let on_disk = self.read().await;
            let now = unix_now();
            self.publish(on_disk.as_ref(), now);
            let have = on_disk.as_ref().map(|c| (c.names.as_slice(), c.not_before, c.not_after));
            let due = plan::due(have, &self.lineage.names);
            ari.follow(on_disk.as_ref().and_then(|c| c.ari_id.as_ref()));
            // ACME Renewal Information, when the CA offers it: its window replaces two thirds.
            let mut replaces = None;
            if let (Due::At(_), Some((aki, serial))) = (due, on_disk.as_ref().and_then(|c| c.ari_id.clone())) {
                let id =
                    CertificateIdentifier::new(Der::from(aki.as_slice()), Der::from(serial.as_slice())).into_owned();
                if now >= ari.next_check {
                    match tokio::time::timeout(CA_CALL_TIMEOUT, self.account.renewal_info(&id)).await {
                        Err(_) => {
                            ari.next_check = now + 3600;
                            warn!(certificate = %dir, timeout = ?CA_CALL_TIMEOUT, "ACME renewal information: no answer");
                        }
                        Ok(Ok((info, retry_after))) => {
                            let window = &info.suggested_window;
                            let (start, end) = (window.start.unix_timestamp(), window.end.unix_timestamp());
                            let pick = plan::ari_pick(start, end, fastrand::f64(), now);
                            ari.time = plan::in_time(pick, on_disk.as_ref().map(|c| c.not_after)).then_some(pick);
                            if ari.time.is_none() {
                                warn!(certificate = %dir, window_start = start, window_end = end,
                                    "the CA's renewal window is past the certificate's end; renewing at two thirds");
                            }
                            ari.next_check = now + retry_after.as_secs().clamp(60, 86_400) as i64;
                        }
                        Ok(Err(instant_acme::Error::Unsupported(_))) => ari.next_check = i64::MAX,
                        Ok(Err(e)) => {
                            ari.next_check = now + 3600;
                            warn!(certificate = %dir, error = %e, "ACME renewal information not available");
                        }
                    }
                }
                if ari.time.is_some() && may_replace {
                    replaces = Some(id);
                }
            }
            let when = match due {
                Due::Missing | Due::NamesChanged => now,
                Due::At(t) => ari.time.unwrap_or(t),
            };
            // Not before the wait after the last failure, if one is still running.
            let when = if failures > 0 { when.max(not_before) } else { when };
            self.acme.update(&dir, |s| s.next_attempt = Some(when));
            if when > now {
                let wait = Duration::from_secs((when - now) as u64).min(MAX_SLEEP);
                if !sleep_or_stop(wait, &stop).await {
                    return;
                }
                continue;
            }

            let replacing = replaces.is_some();
            let result = match unwritten.take() {
                Some(issued) => Ok(issued),
                None => {
                    info!(certificate = %dir, names = ?self.lineage.names, "requesting a certificate");
                    let (certs, names) = (self.certs.challenges(), &self.lineage.names);
                    issue::issue(&self.account, &self.settings, certs, names, replaces, tls_first).await
                }
            };
            let outcome = match result {
                Ok(issued) => match self.install(&issued).await {
                    Ok(()) => Ok(issued.challenges),
                    Err(e) => {
                        unwritten = Some(issued);
                        Err(("storage", e, Failure::Other))
                    }
                },
                Err(e) => {
                    let failure = match e {
                        IssueError::Refused(_) if replacing => Failure::RefusedReplacing,
                        IssueError::RateLimited(_) => Failure::RateLimited,
                        _ => Failure::Other,
                    };
                    Err((e.result(), e.to_string(), failure))
                }
            };
            match outcome {
                Ok(answered) => {
                    failures = 0;
                    self.acme.set_retry(&dir, 0, 0);
                    may_replace = true;
                    metrics::counter!(names::ACME_ORDERS, "certificate" => dir.clone(), "result" => "ok").increment(1);
                    metrics::gauge!(names::ACME_FAILURES, "certificate" => dir.clone()).set(0.0);
                    self.acme.update(&dir, |s| {
                        s.failures = 0;
                        s.last_error = None;
                        s.last_challenges = answered;
                    });
                    info!(certificate = %dir, names = ?self.lineage.names, "certificate issued and serving");
                }
                Err((result, error, failure)) => {
                    failures += 1;
                    if result == "challenge_failed" && self.settings.http_01 && self.settings.tls_alpn_01 {
                        tls_first = !tls_first;
                    }
                    let (wait, replace_next) =
                        plan::after_failure(failures, failure, self.settings.retry_min, self.settings.retry_max);
                    if may_replace && !replace_next {
                        info!(certificate = %dir, "the CA refused the order that named the certificate it replaces; \
                            ordering again without it");
                    }
                    may_replace &= replace_next;
                    metrics::counter!(names::ACME_ORDERS, "certificate" => dir.clone(), "result" => result)
                        .increment(1);
                    metrics::gauge!(names::ACME_FAILURES, "certificate" => dir.clone()).set(failures as f64);
                    let serving = on_disk.is_some();
                    warn!(certificate = %dir, %error, failures, retry_in = ?wait, still_serving_old = serving,
                        "certificate not renewed");
                    not_before = unix_now() + wait.as_secs() as i64;
                    self.acme.set_retry(&dir, failures, not_before);
                    self.acme.update(&dir, |s| {
                        s.failures = failures;
                        s.last_error = Some(error.clone());
                        s.next_attempt = Some(not_before);
                    });
                    if !sleep_or_stop(wait, &stop).await {
                        return;
                    }
                }
            }
        }
    }

    async fn read(&self) -> Option<OnDisk> {
        let dir = self.live.join(&self.lineage.dir);
        let read = tokio::task::spawn_blocking(move || {
            let (chain, key) = (dir.join("fullchain.pem"), dir.join("privkey.pem"));
            let on_disk = storage::read_cert(&chain)?;
            // An install renames the key into place first: a crash between the two renames
            // leaves a new key beside the old chain, a pair nothing can serve.
            let mismatched = on_disk.is_some()
                && matches!(crate::tls::load_pair(&chain, &key), Err(crate::tls::LoadError::Mismatch { .. }));
            Ok::<_, storage::StorageError>((on_disk, mismatched))
        })
        .await;
        match read {
            Ok(Ok((c, false))) => c,
            Ok(Ok((_, true))) => {
                warn!(certificate = %self.lineage.dir, "the key on disk does not match the certificate; ordering a new one");
                None
            }
            Ok(Err(e)) => {
                warn!(certificate = %self.lineage.dir, error = %e, "certificate on disk unreadable; replacing it");
                None
            }
            Err(_) => None,
        }
    }

    fn publish(&self, on_disk: Option<&OnDisk>, now: i64) {
        let not_after = on_disk.map(|c| c.not_after);
        self.acme.update(&self.lineage.dir, |s| s.not_after = not_after);
        if let Some(t) = not_after {
            metrics::gauge!(names::ACME_DAYS_LEFT, "certificate" => self.lineage.dir.clone())
                .set((t - now) as f64 / 86_400.0);
        }
    }

    /// Write the files, then have the TLS store load them now (not at its next poll).
    async fn install(&self, issued: &Issued) -> Result<(), String> {
        let (live, dir, chain, key) =
            (self.live.clone(), self.lineage.dir.clone(), issued.fullchain.clone(), issued.key.clone());
        let certs = self.certs.clone();
        tokio::task::spawn_blocking(move || {
            storage::install(&live, &dir, &chain, &key).map_err(|e| e.to_string())?;
            certs.refresh();
            Ok(())
        })
        .await
        .map_err(|e| e.to_string())?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The failed attempts of one run are where the next run (a new process) starts from,
    /// until an attempt succeeds.
    #[test]
    fn failed_attempts_carry_over_a_restart_until_a_success() {
        let storage = tempfile::tempdir().unwrap();
        let first = Acme::default();
        first.keep_in(storage.path());
        assert_eq!(first.retry_of("a.test"), (0, 0));
        first.set_retry("a.test", 4, 1_900_000_000);
        let restarted = Acme::default();
        restarted.keep_in(storage.path());
        assert_eq!(restarted.retry_of("a.test"), (4, 1_900_000_000));
        assert_eq!(restarted.retry_of("b.test"), (0, 0));
        restarted.set_retry("a.test", 0, 0);
        let again = Acme::default();
        again.keep_in(storage.path());
        assert_eq!(again.retry_of("a.test"), (0, 0));
        // With no storage known, memory only, as before.
        let nowhere = Acme::default();
        nowhere.set_retry("a.test", 2, 5);
        assert_eq!(nowhere.retry_of("a.test"), (2, 5));
    }

    /// A CA that accepts and then says nothing (not even its half of the TLS handshake): the
    /// account call gives up after [`CA_CALL_TIMEOUT`] and says so, instead of waiting forever.
    #[tokio::test(start_paused = true)]
    async fn a_silent_ca_is_given_up_on_and_reported() {
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let storage = tempfile::tempdir().unwrap();
        let settings = Settings {
            directory: format!("https://{}/dir", silent.local_addr().unwrap()),
            directory_ca_file: None,
            contact: Vec::new(),
            external_account: None,
            names: vec!["a.test".into()],
            key_type: crate::config::acme::KeyType::EcdsaP256,
            storage: storage.path().to_path_buf(),
            http_01: true,
            tls_alpn_01: false,
            retry_min: Duration::from_secs(120),
            retry_max: Duration::from_secs(3600),
            order_timeout: Duration::from_secs(300),
        };
        let acme = Arc::new(Acme::default());
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(settings, Arc::new(CertStore::new()), acme.clone(), stop.clone()));
        // Paused time moves on whenever every task waits: to the call's deadline, at once.
        let mut error = None;
        for _ in 0..120 {
            error = acme.account_error();
            if error.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let error = error.expect("an account error reported");
        assert!(error.contains("no answer within 30s"), "{error}");
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), task).await.expect("stops when asked").unwrap();
        drop(silent);
    }
}
