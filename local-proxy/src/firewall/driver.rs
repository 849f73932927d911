//! The firewall task: asks DNS when the tracker says a name is due, applies the table when the
//! allowlist changes (one batch each time), publishes the list to the trust set, and exports
//! metrics. On shutdown the table stays, closed, unless `remove_on_exit` is set.

use std::collections::BTreeSet;
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::ruleset::build;
use super::settings::Settings;
use super::tracker::{Allowlist, Outcome, Policy, Tracker};
use super::{Error, TRUST_SOURCE};
use crate::metrics::names;
use crate::trust::TrustedPeers;
use shared::dns::{Lookups, ResolverSettings};

/// Bound on one blocking netlink update.
const APPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// Retry delay after a failed table update.
const APPLY_RETRY: Duration = Duration::from_secs(5);

fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

fn publish_table(allow: &Allowlist) {
    metrics::gauge!(names::FIREWALL_OPEN).set(if *allow == Allowlist::Open { 1.0 } else { 0.0 });
    metrics::gauge!(names::FIREWALL_ALLOWED).set(allow.addresses().len() as f64);
}

fn apply_now(settings: &Settings, allow: &Allowlist) -> Result<(), Error> {
    let result = super::apply(&build(settings, allow));
    let label = if result.is_ok() { "ok" } else { "failed" };
    metrics::counter!(names::FIREWALL_UPDATES, "result" => label).increment(1);
    if result.is_ok() {
        publish_table(allow);
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

/// Installs the initial table (statics only, or open, per `on_no_answer`) at once, replacing
/// any table of ours left from before, and returns the task that keeps it current. An error
/// here (no CAP_NET_ADMIN, no nf_tables) should stop start-up: the operator asked for a firewall.
pub fn start(
    settings: Settings,
    trusted: Arc<TrustedPeers>,
    shutdown: CancellationToken,
) -> Result<impl Future<Output = ()> + Send + 'static, Error> {
    let policy = Policy {
        min_refresh: settings.min_refresh,
        max_refresh: settings.max_refresh,
        on_no_answer: settings.on_no_answer,
    };
    let tracker = Tracker::new(
        settings.ingress_names.clone(),
        settings.static_addresses.clone(),
        policy,
        Instant::now().into_std(),
    );
    let lookups =
        Lookups::new(&ResolverSettings { nameservers: settings.nameservers.clone(), timeout: settings.lookup_timeout })
            .map_err(|e| Error::Resolver(e.to_string()))?;
    let carried = carried_over(&settings.table);
    let initial = with_carried(tracker.allowlist(), &carried);
    apply_now(&settings, &initial)?;
    trusted.set_source(TRUST_SOURCE, tracker.closed().addresses());
    trusted.set_source(CARRIED_SOURCE, carried.iter().copied());
    metrics::gauge!(names::FIREWALL_ADDRESSES, "name" => "static").set(settings.static_addresses.len() as f64);
    let ports: Vec<String> = settings.ports.iter().map(|p| p.to_string()).collect();
    match initial {
        Allowlist::Open => warn!(
            table = %settings.table,
            "firewall OPEN until the first DNS answer (on_no_answer = \"open\"): protected ports accept everyone"
        ),
        Allowlist::Only(ref a) => info!(
            table = %settings.table,
            interfaces = ?settings.interfaces,
            ports = ?ports,
            static_addresses = a.len(),
            "firewall table installed (closed until DNS answers)"
        ),
    }
    if !carried.is_empty() {
        info!(
            table = %settings.table,
            addresses = carried.len(),
            "allowlist of the previous run kept until every ingress name has answered"
        );
    }
    Ok(run(settings, tracker, lookups, initial, carried, trusted, shutdown))
}

/// Trust-set source of the addresses carried over from the previous run's table.
const CARRIED_SOURCE: &str = "firewall-previous-run";

/// The addresses our table allowed when the previous process left it (enforcing), if it is
/// still there. A restart keeps them allowed (and trusted) until every name has answered, so
/// ingress nodes whose connections the kernel queued during the restart are not dropped and
/// refused for the few milliseconds before the first DNS answers. Kernel state only root could
/// have written, and only our table's.
fn carried_over(table: &str) -> BTreeSet<IpAddr> {
    match super::read_table(table) {
        Ok(Some(t)) if t.enforcing() => t.allowed(),
        Ok(_) => BTreeSet::new(),
        Err(e) => {
            warn!(%table, error = %e, "cannot read the previous run's table; starting from the static addresses");
            BTreeSet::new()
        }
    }
}

/// `allow` plus the carried addresses (an open list stays open).
fn with_carried(allow: Allowlist, carried: &BTreeSet<IpAddr>) -> Allowlist {
    match allow {
        Allowlist::Open if carried.is_empty() => Allowlist::Open,
        other => Allowlist::Only(other.addresses().union(carried).copied().collect()),
    }
}

async fn run(
    settings: Settings,
    mut tracker: Tracker,
    lookups: Lookups,
    mut applied: Allowlist,
    mut carried: BTreeSet<IpAddr>,
    trusted: Arc<TrustedPeers>,
    shutdown: CancellationToken,
) {
    let settings = Arc::new(settings);
    // Names answered since start: the carried list goes once all have been (a failed lookup
    // does not count: with DNS down at start the previous list is all there is).
    let mut heard: BTreeSet<String> = BTreeSet::new();
    let mut retry_apply: Option<Instant> = None;
    loop {
        let due = tracker.due(Instant::now().into_std());
        if !due.is_empty() {
            let outcomes =
                futures_util::future::join_all(due.iter().map(|q| lookups.lookup(tracker.name(*q), q.family))).await;
            for (q, outcome) in due.into_iter().zip(outcomes) {
                let name = tracker.name(q).to_string();
                let record = q.family.record();
                let failure = match &outcome {
                    Outcome::Failed { error } => Some(error.clone()),
                    _ => None,
                };
                let change = tracker.record(q, outcome, Instant::now().into_std());
                if let Some(error) = failure {
                    metrics::counter!(names::FIREWALL_LOOKUP_FAILURES, "name" => name.clone(), "record" => record)
                        .increment(1);
                    let kept = change.kept.map(|k| k.len()).unwrap_or(0);
                    warn!(%name, record, %error, kept, "ingress lookup failed; keeping the last known addresses");
                } else {
                    heard.insert(name.clone());
                    metrics::gauge!(names::FIREWALL_LAST_REFRESH, "name" => name.clone()).set(unix_now());
                    if !change.added.is_empty() || !change.removed.is_empty() {
                        info!(%name, record, %change, "ingress addresses changed");
                    }
                }
                let count = tracker.addresses_of(q.name).len() as f64;
                metrics::gauge!(names::FIREWALL_ADDRESSES, "name" => name).set(count);
            }
            trusted.set_source(TRUST_SOURCE, tracker.closed().addresses());
            if !carried.is_empty() && settings.ingress_names.iter().all(|n| heard.contains(n.as_str())) {
                info!(table = %settings.table, "every ingress name has answered; the previous run's allowlist is dropped");
                carried.clear();
                trusted.set_source(CARRIED_SOURCE, std::iter::empty());
            }
        }

        let want = with_carried(tracker.allowlist(), &carried);
        if want != applied && retry_apply.is_none_or(|t| t <= Instant::now()) {
            let (s, w) = (settings.clone(), want.clone());
            match blocking(move || apply_now(&s, &w)).await {
                Ok(()) => {
                    let list: Vec<IpAddr> = want.addresses().into_iter().collect();
                    if applied == Allowlist::Open {
                        info!(table = %settings.table, "first DNS answer: firewall now enforcing");
                    }
                    info!(table = %settings.table, allowed = ?list, "firewall table updated");
                    applied = want;
                    retry_apply = None;
                }
                Err(e) => {
                    error!(table = %settings.table, error = %e, "firewall update failed; the previous table stays");
                    retry_apply = Some(Instant::now() + APPLY_RETRY);
                }
            }
        }

        let wake = [tracker.next_wake().map(Instant::from_std), retry_apply].into_iter().flatten().min();
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = async {
                match wake {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            } => {}
        }
    }
    finish(&settings, &tracker, &applied).await;
}

async fn finish(settings: &Arc<Settings>, tracker: &Tracker, applied: &Allowlist) {
    if settings.remove_on_exit {
        let table = settings.table.clone();
        match blocking(move || super::remove(&table)).await {
            Ok(()) => info!(table = %settings.table, "firewall table removed (remove_on_exit)"),
            Err(e) => error!(table = %settings.table, error = %e, "removing the firewall table failed"),
        }
        return;
    }
    // Leave it closed: an open table (no answer yet) becomes statics plus what is known.
    if *applied == Allowlist::Open {
        let (s, closed) = (settings.clone(), tracker.closed());
        if let Err(e) = blocking(move || apply_now(&s, &closed)).await {
            error!(table = %settings.table, error = %e, "closing the firewall table on exit failed");
        }
    }
    info!(table = %settings.table, "firewall table left in place (closed)");
}
