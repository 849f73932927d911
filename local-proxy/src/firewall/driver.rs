//! The firewall task: asks DNS when the tracker says a name is due, applies the table when it
//! changes (one batch each time), publishes the list to the trust set, and exports metrics.
//! New `[firewall]` settings arrive through [`Control`] (a reload): the new tracker inherits
//! the last known addresses of the names that stay, new names are looked up at once, and the
//! new table replaces the old one in one batch after those lookups (a renamed table is created
//! and the old one deleted in that same batch). A section removed on reload removes the table;
//! one added on reload starts then. A restart carries the previous run's allowlist over until
//! every name has answered (per family: the IPv4 addresses once every A lookup has, the IPv6
//! ones once every AAAA lookup has), read back from the kernel's table; a reboot too, from the
//! list saved in the state directory, since the kernel's table went with the reboot. The table
//! is read back every 10 s and installed again if something removed it. On shutdown the table
//! stays, closed, unless `remove_on_exit` is set. The table's name is recorded ([`Record`]), so
//! a restart deletes the one a previous run left under another name, or with no `[firewall]`
//! any more; with it, the allowlist of the last enforcing table applied.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ipnet::IpNet;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::record::Record;
use super::ruleset::{build_with, TableSpec};
use super::settings::Settings;
use super::tracker::{Allowlist, Family, Outcome, Policy, Tracker};
use super::{Error, TRUST_SOURCE};
use crate::metrics::names;
use crate::trust::TrustedPeers;
use shared::dns::{Lookups, ResolverSettings};

/// Bound on one blocking netlink update.
const APPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// Retry delay after a failed table update.
const APPLY_RETRY: Duration = Duration::from_secs(5);
/// How often the table in the kernel is read back and compared with the one applied: Debian's
/// nftables.service (`flush ruleset` at start and reload), or an operator's `nft flush
/// ruleset`, removes it without a word, and the protected ports would stay open until the next
/// DNS change or restart.
const VERIFY_EVERY: Duration = Duration::from_secs(10);

/// Hands new `[firewall]` settings (or `None`: no firewall) to the running task.
#[derive(Debug, Clone)]
pub struct Control {
    tx: Arc<watch::Sender<Option<Arc<Settings>>>>,
    prepared: Arc<Prepared>,
}

/// The resolver [`Control::check`] built for settings on their way to the task, taken by the
/// task instead of building another: where the check passed, the task cannot fail.
#[derive(Default)]
struct Prepared(Mutex<Option<(ResolverSettings, Lookups)>>);

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Prepared")
    }
}

impl Prepared {
    /// The lookups for `s`: the prepared ones if they were built for its resolver settings.
    fn lookups(&self, s: &Settings) -> Result<Lookups, Error> {
        let want = resolver(s);
        match self.0.lock().unwrap_or_else(PoisonError::into_inner).take() {
            Some((built_for, l)) if built_for == want => Ok(l),
            _ => lookups(s),
        }
    }
}

impl Control {
    /// Whether the firewall can run `settings` (a reload's): a resolver they need that the
    /// running firewall does not have is built once here, so a system resolver configuration
    /// that cannot be read refuses the reload, instead of the firewall task finding out after
    /// the reload was applied and running without a table (or with the old resolver).
    pub fn check(&self, settings: Option<&Settings>) -> Result<(), Error> {
        let Some(new) = settings else { return Ok(()) };
        let want = resolver(new);
        if self.tx.borrow().as_deref().is_some_and(|running| resolver(running) == want) {
            return Ok(());
        }
        let built = lookups(new)?;
        *self.prepared.0.lock().unwrap_or_else(PoisonError::into_inner) = Some((want, built));
        Ok(())
    }

    /// The settings of a reloaded config; nothing happens when they are unchanged.
    pub fn update(&self, settings: Option<Settings>) {
        self.tx.send_if_modified(|current| {
            let same = current.as_deref() == settings.as_ref();
            if !same {
                *current = settings.map(Arc::new);
            }
            !same
        });
    }
}

fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

fn publish_table(spec: &TableSpec) {
    super::status::applied(spec.enforcing(), spec.allowed().len());
    metrics::gauge!(names::FIREWALL_OPEN).set(if spec.enforcing() { 0.0 } else { 1.0 });
    metrics::gauge!(names::FIREWALL_ALLOWED).set(spec.allowed().len() as f64);
}

/// Applies `spec`, deleting table `stale` in the same transaction if given (a rename).
fn apply_now(spec: &TableSpec, stale: Option<&str>) -> Result<(), Error> {
    let result = match stale {
        Some(old) => super::swap(spec, old),
        None => super::apply(spec),
    };
    let label = if result.is_ok() { "ok" } else { "failed" };
    metrics::counter!(names::FIREWALL_UPDATES, "result" => label).increment(1);
    if result.is_ok() {
        publish_table(spec);
    }
    result
}

/// Runs a blocking netlink call off the runtime threads, bounded.
async fn blocking<F>(f: F) -> Result<(), Error>
where
    F: FnOnce() -> Result<(), Error> + Send + 'static,
{
    match tokio::time::timeout(APPLY_TIMEOUT, tokio::task::spawn_blocking(f)).await {
        Ok(Ok(r)) => r,
        Ok(Err(join)) => Err(Error::Decode(format!("netlink task failed: {join}"))),
        Err(_) => Err(Error::Timeout),
    }
}

fn policy(s: &Settings) -> Policy {
    Policy { min_refresh: s.min_refresh, max_refresh: s.max_refresh, on_no_answer: s.on_no_answer }
}

fn resolver(s: &Settings) -> ResolverSettings {
    ResolverSettings { nameservers: s.nameservers.clone(), timeout: s.lookup_timeout }
}

fn lookups(s: &Settings) -> Result<Lookups, Error> {
    Lookups::new(&resolver(s)).map_err(|e| Error::Resolver(e.to_string()))
}

/// Trust-set source of the addresses carried over from the previous run's table (or, after a
/// reboot, from the list it saved).
const CARRIED_SOURCE: &str = "firewall-previous-run";

/// The addresses our table allowed when the previous process left it (enforcing), if it is
/// still there. A restart keeps them allowed (and trusted) until every name has answered, so
/// ingress nodes whose connections the kernel queued during the restart are not dropped and
/// refused for the few milliseconds before the first DNS answers. Kernel state only root could
/// have written, and only our table's. `None`: the kernel has no such table (a reboot, or
/// someone deleted it), so the list saved on disk is the next best; an open table, or one that
/// cannot be read, carries nothing (and does not send us to the file: the kernel's table was
/// there, and it did not enforce, or we cannot tell).
fn carried_over(table: &str) -> Option<BTreeSet<IpNet>> {
    match super::read_table(table) {
        Ok(Some(t)) if t.enforcing() => Some(t.allowed()),
        Ok(Some(_)) => Some(BTreeSet::new()),
        Ok(None) => None,
        Err(e) => {
            warn!(%table, error = %e, "cannot read the previous run's table; starting from the static addresses");
            Some(BTreeSet::new())
        }
    }
}

/// What a start carries over: the kernel's table under `table`, else under `stale` (the name
/// the last run used, if renamed since). With neither in the kernel (after a reboot) the list
/// saved in the state directory for either name: DNS may not be up yet at boot (the home
/// router's resolver is often slower than this host after a power cut), and without it the
/// ingress nodes would be shut out until the first answer. That file is only as trusted as the
/// service's state directory, so it is read as untrusted text ([`Record::read_allowed`]), and
/// only if a running proxy kept it within `max_age`.
fn carry(table: &str, stale: Option<&str>, record: &Record, max_age: Duration) -> BTreeSet<IpNet> {
    let current = carried_over(table);
    let mut gone = current.is_none();
    let mut carried = current.unwrap_or_default();
    if let Some(old) = stale.filter(|_| carried.is_empty()) {
        let previous = carried_over(old);
        gone = gone && previous.is_none();
        carried = previous.unwrap_or_default();
    }
    if !gone {
        return carried;
    }
    let saved = record.read_allowed(table, max_age).or_else(|| stale.and_then(|old| record.read_allowed(old, max_age)));
    let saved = saved.unwrap_or_default();
    if let Some(file) = record.allowed_file().filter(|_| !saved.is_empty()) {
        info!(%table, addresses = saved.len(), file = %file.display(),
            "no firewall table in the kernel (a reboot?): carrying over the allowlist saved in the state directory");
    }
    saved
}

/// Saves `spec`'s list if it enforces, for a start after a reboot. An open table saves nothing:
/// the last enforcing list is still the better guess of who the ingress nodes are.
fn save_allowed(record: &mut Record, spec: &TableSpec) {
    if spec.enforcing() {
        record.write_allowed(&spec.name, &spec.allowed());
    }
}

/// A running firewall: its settings, names, resolver and what the kernel holds.
struct Active {
    settings: Arc<Settings>,
    /// Names only: the static prefixes are added by the table builder and the trust feed.
    tracker: Tracker,
    lookups: Lookups,
    /// The table as last applied; `None` before the first successful apply.
    applied: Option<TableSpec>,
    /// A table of ours the next apply deletes in the same batch (the table was renamed).
    stale: Option<String>,
    retry_apply: Option<Instant>,
    /// When the kernel's table is next read back ([`VERIFY_EVERY`]).
    verify_at: Instant,
    /// The kernel's table differed from the one applied, and applying it again did not make
    /// them the same: not applied again until the table changes (a read-back that does not
    /// round-trip must not have it rewritten every time).
    differs: bool,
    /// The previous run's allowlist, kept until every name has answered (then emptied).
    carried: BTreeSet<IpNet>,
    /// Where the installed table's name, and the last enforcing table's list, are kept for the
    /// next run.
    record: Record,
    /// Lookups (name and family) answered since start: the carried list's addresses of a
    /// family go once every name has answered in that family (a failed lookup does not count:
    /// with DNS down at start the previous list is all there is; with only the A lookups
    /// answering, the previous list's IPv6 addresses are all there is for those).
    heard: BTreeSet<(String, Family)>,
}

/// The lookup failure series of `hosts`, present at 0 before any failure: an alert on their
/// increase would miss the failure that created one (DNS down at start).
fn count_failures_from_zero(hosts: &[String]) {
    for name in hosts {
        for family in [Family::V4, Family::V6] {
            metrics::counter!(names::FIREWALL_LOOKUP_FAILURES, "name" => name.clone(), "record" => family.record())
                .increment(0);
            metrics::gauge!(names::FIREWALL_LOOKUP_FAILING, "name" => name.clone(), "record" => family.record())
                .set(0.0);
        }
    }
}

impl Active {
    fn new(settings: Arc<Settings>, prepared: &Prepared) -> Result<Self, Error> {
        count_failures_from_zero(&settings.ingress_names);
        let tracker = Tracker::new(
            settings.ingress_names.clone(),
            Default::default(),
            policy(&settings),
            Instant::now().into_std(),
        );
        let lookups = prepared.lookups(&settings)?;
        Ok(Self {
            settings,
            tracker,
            lookups,
            applied: None,
            stale: None,
            retry_apply: None,
            verify_at: Instant::now() + VERIFY_EVERY,
            differs: false,
            carried: BTreeSet::new(),
            heard: BTreeSet::new(),
            record: Record::from_env(),
        })
    }

    /// The table for the names' list plus the carried one (an open list stays open only
    /// with nothing carried).
    fn want(&self) -> TableSpec {
        let allow = match self.tracker.allowlist() {
            Allowlist::Open if !self.carried.is_empty() => Allowlist::Only(BTreeSet::new()),
            other => other,
        };
        build_with(&self.settings, &allow, &self.carried)
    }

    /// Drops the carried list's addresses of a family once every configured name has answered
    /// its lookup of that family: its IPv4 ones once each A lookup has, its IPv6 ones once
    /// each AAAA lookup has. A resolver failing one family keeps only that family's.
    fn drop_carried(&mut self, trusted: &TrustedPeers) {
        if self.carried.is_empty() {
            return;
        }
        for family in [Family::V4, Family::V6] {
            let answered = |n: &String| self.heard.iter().any(|(h, f)| h == n && *f == family);
            let of_family = |net: &IpNet| family.matches(&net.addr());
            if self.settings.ingress_names.iter().all(answered) && self.carried.iter().any(of_family) {
                info!(table = %self.settings.table, record = family.record(),
                    "every ingress name has answered; the previous run's addresses of that family are dropped");
                self.carried.retain(|net| !of_family(net));
                trusted.set_source_nets(CARRIED_SOURCE, self.carried.iter().copied());
            }
        }
    }

    /// Statics and the last known addresses, for the PROXY-header trust set.
    fn publish_trust(&self, trusted: &TrustedPeers) {
        let known = self.tracker.closed().addresses().into_iter().map(IpNet::from);
        trusted.set_source_nets(TRUST_SOURCE, self.settings.static_addresses.iter().copied().chain(known));
        metrics::gauge!(names::FIREWALL_ADDRESSES, "name" => "static").set(self.settings.static_addresses.len() as f64);
    }

    /// The lookups that are due, then the table if it changed (one batch).
    async fn step(&mut self, trusted: &TrustedPeers) {
        let due = self.tracker.due(Instant::now().into_std());
        if !due.is_empty() {
            let tracker = &self.tracker;
            let outcomes =
                futures_util::future::join_all(due.iter().map(|q| self.lookups.lookup(tracker.name(*q), q.family)))
                    .await;
            for (q, outcome) in due.into_iter().zip(outcomes) {
                let name = self.tracker.name(q).to_string();
                let record = q.family.record();
                let failure = match &outcome {
                    Outcome::Failed { error } => Some(error.clone()),
                    _ => None,
                };
                let change = self.tracker.record(q, outcome, Instant::now().into_std());
                super::status::lookup(&name, failure.as_deref(), self.tracker.addresses_of(q.name));
                let failing =
                    metrics::gauge!(names::FIREWALL_LOOKUP_FAILING, "name" => name.clone(), "record" => record);
                failing.set(if failure.is_some() { 1.0 } else { 0.0 });
                if let Some(error) = failure {
                    metrics::counter!(names::FIREWALL_LOOKUP_FAILURES, "name" => name.clone(), "record" => record)
                        .increment(1);
                    let kept = change.kept.map(|k| k.len()).unwrap_or(0);
                    warn!(%name, record, %error, kept, "ingress lookup failed; keeping the last known addresses");
                } else {
                    self.heard.insert((name.clone(), q.family));
                    metrics::gauge!(names::FIREWALL_LAST_REFRESH, "name" => name.clone()).set(unix_now());
                    if !change.added.is_empty() || !change.removed.is_empty() {
                        info!(%name, record, %change, "ingress addresses changed");
                    }
                }
                let count = self.tracker.addresses_of(q.name).len() as f64;
                metrics::gauge!(names::FIREWALL_ADDRESSES, "name" => name).set(count);
            }
            self.publish_trust(trusted);
            self.drop_carried(trusted);
        }

        if Instant::now() >= self.verify_at {
            self.verify_at = Instant::now() + VERIFY_EVERY;
            self.verify().await;
        }
        let want = self.want();
        let changed = self.applied.as_ref() != Some(&want) || self.stale.is_some();
        if changed && self.retry_apply.is_none_or(|t| t <= Instant::now()) {
            let (spec, stale) = (want.clone(), self.stale.clone());
            match blocking(move || apply_now(&spec, stale.as_deref())).await {
                Ok(()) => {
                    let table = &self.settings.table;
                    if let Some(old) = self.stale.take() {
                        info!(%table, old = %old, "firewall table renamed (new one in force, old one deleted, one batch)");
                    }
                    self.record.write(table);
                    save_allowed(&mut self.record, &want);
                    if want.enforcing() && self.applied.as_ref().is_some_and(|a| !a.enforcing()) {
                        info!(%table, "first DNS answer: firewall now enforcing");
                    }
                    let list: Vec<String> = want.allowed().iter().map(super::ruleset::element_text).collect();
                    info!(%table, allowed = ?list, "firewall table updated");
                    self.applied = Some(want);
                    self.retry_apply = None;
                }
                Err(e) => {
                    error!(table = %self.settings.table, error = %e, "firewall update failed; the previous table stays");
                    self.retry_apply = Some(Instant::now() + APPLY_RETRY);
                }
            }
        }
    }

    fn next_wake(&self) -> Option<Instant> {
        [self.tracker.next_wake().map(Instant::from_std), self.retry_apply, Some(self.verify_at)]
            .into_iter()
            .flatten()
            .min()
    }

    /// Read the table back; if it is gone or not the one applied, forget the applied one so
    /// this step applies it again.
    async fn verify(&mut self) {
        let Some(applied) = self.applied.clone() else { return };
        // A save that failed (a full disk) is tried again here; otherwise a no-op.
        save_allowed(&mut self.record, &applied);
        let name = self.settings.table.clone();
        let read =
            tokio::time::timeout(APPLY_TIMEOUT, tokio::task::spawn_blocking(move || super::read_table(&name))).await;
        let table = &self.settings.table;
        match read {
            Ok(Ok(Ok(Some(kernel)))) if kernel == applied => self.differs = false,
            Ok(Ok(Ok(Some(_)))) if self.differs => {}
            Ok(Ok(Ok(found))) => {
                metrics::counter!(names::FIREWALL_RESTORED).increment(1);
                if found.is_none() {
                    warn!(%table, "firewall table gone from the kernel (a flush of the ruleset?); installing it again");
                } else {
                    self.differs = true;
                    warn!(%table, "firewall table in the kernel is not the one applied; installing it again");
                }
                self.applied = None;
            }
            Ok(Ok(Err(e))) => warn!(%table, error = %e, "cannot read the firewall table back"),
            Ok(Err(e)) => warn!(%table, error = %e, "firewall read-back task failed"),
            Err(_) => warn!(%table, "firewall read-back timed out"),
        }
    }

    /// Takes `new` settings: a tracker that inherits what is known of the names that stay
    /// (their lookups keep their schedule; new names are due at once), the resolver rebuilt if
    /// it changed, and the old table marked for deletion if the name changed. The next
    /// [`Active::step`] looks the new names up and then applies the new table in one batch.
    fn reconfigure(&mut self, new: Arc<Settings>, prepared: &Prepared) {
        let now = Instant::now().into_std();
        let old = self.settings.clone();
        if resolver(&old) != resolver(&new) {
            match prepared.lookups(&new) {
                Ok(l) => self.lookups = l,
                Err(e) => {
                    error!(error = %e, "firewall: the new resolver settings cannot be used; keeping the old ones")
                }
            }
        }
        count_failures_from_zero(&new.ingress_names);
        let mut tracker = Tracker::new(new.ingress_names.clone(), Default::default(), policy(&new), now);
        tracker.inherit(&self.tracker, now);
        let added: Vec<&String> = new.ingress_names.iter().filter(|n| !old.ingress_names.contains(n)).collect();
        let removed: Vec<&String> = old.ingress_names.iter().filter(|n| !new.ingress_names.contains(n)).collect();
        for name in &removed {
            metrics::gauge!(names::FIREWALL_ADDRESSES, "name" => name.to_string()).set(0.0);
        }
        if old.table != new.table && self.applied.is_some() {
            // A table never applied under the old name (failed apply) has nothing to delete,
            // unless an earlier rename is still pending.
            self.stale = self.stale.take().or(Some(old.table.clone()));
        } else if old.table != new.table {
            self.stale = self.stale.take().filter(|s| *s != new.table);
        }
        info!(
            table = %new.table,
            added = ?added,
            removed = ?removed,
            "firewall settings reloaded; the table follows once the new names are looked up"
        );
        self.tracker = tracker;
        self.settings = new;
        self.retry_apply = None;
    }
}

/// Installs the initial table (statics only, or open, per `on_no_answer`) at once, replacing
/// any table of ours left from before, and returns the [`Control`] for reloads and the task
/// that keeps the table current. An error here (no CAP_NET_ADMIN, no nf_tables) should stop
/// start-up: the operator asked for a firewall. With `None` the task waits for a reload that
/// adds a `[firewall]` section.
pub fn start(
    settings: Option<Settings>,
    trusted: Arc<TrustedPeers>,
    shutdown: CancellationToken,
) -> Result<(Control, impl Future<Output = ()> + Send + 'static), Error> {
    let settings = settings.map(Arc::new);
    let (tx, rx) = watch::channel(settings.clone());
    let prepared = Arc::new(Prepared::default());
    let active = match settings {
        None => {
            remove_left(&mut Record::from_env());
            None
        }
        Some(settings) => {
            let mut active = Active::new(settings, &prepared)?;
            // A table the last run installed under another name goes in the first batch.
            active.stale = active.record.read().filter(|old| *old != active.settings.table);
            // With no names to wait for, the statics are the whole list from the start: carried
            // addresses would never be dropped (and a static taken out of the config would stay
            // allowed and trusted across every restart), whether read from the kernel's table or
            // from the list saved on disk. Renamed, the old table has them.
            if !active.settings.ingress_names.is_empty() {
                active.carried = carry(
                    &active.settings.table,
                    active.stale.as_deref(),
                    &active.record,
                    active.settings.saved_max_age,
                );
            }
            let initial = active.want();
            apply_now(&initial, active.stale.as_deref())?;
            if let Some(old) = active.stale.take() {
                info!(table = %active.settings.table, old = %old,
                    "firewall table renamed since the last run: the old one deleted in the first batch");
            }
            active.record.write(&active.settings.table);
            save_allowed(&mut active.record, &initial);
            active.publish_trust(&trusted);
            trusted.set_source_nets(CARRIED_SOURCE, active.carried.iter().copied());
            let s = &active.settings;
            let ports: Vec<String> = s.ports.iter().map(|p| p.to_string()).collect();
            if initial.enforcing() {
                info!(
                    table = %s.table,
                    interfaces = ?s.interfaces,
                    ports = ?ports,
                    static_addresses = s.static_addresses.len(),
                    "firewall table installed (closed until DNS answers)"
                );
            } else {
                warn!(
                    table = %s.table,
                    "firewall OPEN until the first DNS answer (on_no_answer = \"open\"): protected ports accept everyone"
                );
            }
            if !active.carried.is_empty() {
                info!(
                    table = %active.settings.table,
                    addresses = active.carried.len(),
                    "allowlist of the previous run kept until every ingress name has answered"
                );
            }
            active.applied = Some(initial);
            Some(active)
        }
    };
    let control = Control { tx: Arc::new(tx), prepared: prepared.clone() };
    Ok((control, run(rx, active, trusted, prepared, shutdown)))
}

async fn run(
    mut rx: watch::Receiver<Option<Arc<Settings>>>,
    mut active: Option<Active>,
    trusted: Arc<TrustedPeers>,
    prepared: Arc<Prepared>,
    shutdown: CancellationToken,
) {
    rx.mark_unchanged();
    let mut updates = true;
    loop {
        if let Some(a) = active.as_mut() {
            a.step(&trusted).await;
        }
        let wake = active.as_ref().and_then(Active::next_wake);
        tokio::select! {
            _ = shutdown.cancelled() => break,
            changed = rx.changed(), if updates => {
                if changed.is_err() {
                    // The control is gone (the proxy is shutting down): no more reloads.
                    updates = false;
                    continue;
                }
                let new = rx.borrow_and_update().clone();
                active = reload(active, new, &trusted, &prepared).await;
            }
            _ = async {
                match wake {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            } => {}
        }
    }
    if let Some(a) = active {
        finish(a).await;
    }
}

/// With no firewall configured at start: the table a previous run installed goes (as when a
/// reload removes the section), if one is recorded.
fn remove_left(record: &mut Record) {
    let Some(table) = record.read() else { return };
    match super::remove(&table) {
        Ok(()) => {
            info!(%table, "no [firewall] since the last run: its table deleted");
            record.clear();
        }
        Err(e) => error!(%table, error = %e, "no [firewall] since the last run: deleting its table failed"),
    }
}

/// The firewall after a reload with settings `new`.
async fn reload(
    active: Option<Active>,
    new: Option<Arc<Settings>>,
    trusted: &TrustedPeers,
    prepared: &Prepared,
) -> Option<Active> {
    match (active, new) {
        (Some(mut a), Some(new)) => {
            if *a.settings != *new {
                a.reconfigure(new, prepared);
                // Statics and the names that stay at once; new names join after their lookup.
                a.publish_trust(trusted);
                a.drop_carried(trusted);
            }
            Some(a)
        }
        (None, Some(new)) => match Active::new(new, prepared) {
            Ok(a) => {
                info!(table = %a.settings.table, "firewall added by a reload; the table follows the first lookups");
                Some(a)
            }
            Err(e) => {
                error!(error = %e, "firewall added by a reload cannot start; no table");
                None
            }
        },
        (Some(mut a), None) => {
            // No [firewall] any more: the table goes (nobody would keep its addresses current,
            // so leaving it would lock out an ingress node whose address changes).
            let mut removed = true;
            for table in [Some(a.settings.table.clone()), a.stale.clone()].into_iter().flatten() {
                let name = table.clone();
                match blocking(move || super::remove(&name)).await {
                    Ok(()) => info!(%table, "firewall section removed by a reload: table deleted"),
                    Err(e) => {
                        removed = false;
                        error!(%table, error = %e, "firewall section removed: deleting the table failed");
                    }
                }
            }
            if removed {
                a.record.clear();
            }
            trusted.set_source_nets(TRUST_SOURCE, []);
            trusted.set_source_nets(CARRIED_SOURCE, []);
            metrics::gauge!(names::FIREWALL_ALLOWED).set(0.0);
            metrics::gauge!(names::FIREWALL_OPEN).set(0.0);
            None
        }
        (None, None) => None,
    }
}

async fn finish(mut a: Active) {
    let settings = a.settings.clone();
    if settings.remove_on_exit {
        let mut removed = true;
        for table in [Some(settings.table.clone()), a.stale.clone()].into_iter().flatten() {
            let name = table.clone();
            match blocking(move || super::remove(&name)).await {
                Ok(()) => info!(%table, "firewall table removed (remove_on_exit)"),
                Err(e) => {
                    removed = false;
                    error!(%table, error = %e, "removing the firewall table failed");
                }
            }
        }
        if removed {
            a.record.clear();
        }
        return;
    }
    // Leave it closed: an open table (no answer yet) becomes statics plus what is known; a
    // pending change (a reload not yet applied) goes in too.
    let closed = build_with(&settings, &a.tracker.closed(), &a.carried);
    if a.applied.as_ref() != Some(&closed) || a.stale.is_some() {
        let (spec, stale) = (closed.clone(), a.stale.clone());
        match blocking(move || apply_now(&spec, stale.as_deref())).await {
            Ok(()) => {
                a.record.write(&settings.table);
                save_allowed(&mut a.record, &closed);
            }
            Err(e) => error!(table = %settings.table, error = %e, "closing the firewall table on exit failed"),
        }
    }
    info!(table = %settings.table, "firewall table left in place (closed)");
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// After a restart the previous run's addresses of a family stay until every name has
    /// answered its lookup of that family: with only A answering (AAAA failing), the IPv6
    /// ones are all there is for the ingress's IPv6 path, while the IPv4 ones give way to the
    /// answers.
    #[tokio::test]
    async fn the_previous_runs_list_stays_per_family_until_each_name_answered() {
        let text = "[firewall]\ningress_names = [\"ingress-1.example.org\"]\ninterfaces = [\"wan1\"]\n";
        let settings = crate::config::from_toml_str(text).unwrap().firewall.unwrap();
        let mut a = Active::new(Arc::new(settings), &Prepared::default()).unwrap();
        let (v4, v6): (IpNet, IpNet) = ("192.0.2.7/32".parse().unwrap(), "2001:db8::7/128".parse().unwrap());
        a.carried = [v4, v6].into();
        let trusted = TrustedPeers::new();
        a.drop_carried(&trusted);
        assert_eq!(a.carried.len(), 2, "nothing answered yet");
        a.heard.insert(("ingress-1.example.org".into(), Family::V4));
        a.drop_carried(&trusted);
        assert_eq!(a.carried, [v6].into(), "the A answer replaces the IPv4 ones only");
        a.heard.insert(("ingress-1.example.org".into(), Family::V6));
        a.drop_carried(&trusted);
        assert!(a.carried.is_empty());
    }
}
