//! Paths given by DNS name (a home WAN on a dynamic address, the mesh tier by its AAAA): one
//! task per pool looks the names up when their TTL runs out (within `[resolver]`'s refresh
//! bounds, through `shared::dns`), and moves a path to a new address once that address has
//! answered a probe. Rules (docs/internals.md, "Paths by name"):
//! - a failed or timed-out lookup keeps the last known address (counted, logged once per
//!   episode); "no such name/record" is an answer: the path has no address and is down;
//! - a path that is up keeps its address while the answer still holds it; otherwise (or once
//!   it has been down for a while: `HOP_AFTER_MIN`, four health intervals) the answer's
//!   addresses are probed (its own first, then IPv6 first for `family = "any"`) and the first
//!   to answer becomes the path's address, with the health of a fresh start; until one
//!   answers the old address (if any) stays, and they are probed again every health interval;
//! - connections already open on an old address continue: they hold their own sockets;
//! - an answer that is this host's own address, on a port this ingress listens on, is never
//!   probed nor used (`crate::self_loop`).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use metrics::{counter, gauge};
use shared::dns::{Family, Lookups, OnNoAnswer, Outcome, Policy, Query, Tracker};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::config::{ResolverConfig, Target};
use crate::health::Outcome as ProbeOutcome;
use crate::metrics as m;
use crate::pool::Pool;

/// Asks DNS. A trait so that the task runs on scripted answers under tokio's paused clock.
pub trait Resolve: Send + Sync + 'static {
    fn lookup(&self, name: &str, family: Family) -> impl Future<Output = Outcome> + Send;
}

impl Resolve for Lookups {
    fn lookup(&self, name: &str, family: Family) -> impl Future<Output = Outcome> + Send {
        Lookups::lookup(self, name, family)
    }
}

/// Probes one candidate address (the pool's own health check in production).
pub trait Prober: Send + Sync + 'static {
    fn probe(&self, addr: SocketAddr) -> impl Future<Output = bool> + Send;
}

/// The pool's health check, with its timeout.
struct HealthProbe(Arc<Pool>);

impl Prober for HealthProbe {
    fn probe(&self, addr: SocketAddr) -> impl Future<Output = bool> + Send {
        let hc = self.0.cfg.health.clone();
        async move {
            matches!(
                crate::health::probe(addr, &hc.check, hc.timeout, crate::pool::PROBE_HEDGE_FLOOR, None).await,
                ProbeOutcome::Ok { .. }
            )
        }
    }
}

/// What the lookups say about one path's address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing new: no answer yet, or the current address is still in the answer.
    Keep,
    /// Every family asked answered "no such record": the path has no address.
    Clear,
    /// The current address is gone from the answer (or there is none yet), or the path is down
    /// and the answer has others: try these, in order (a down path's own address first, so
    /// that a home back on it keeps it).
    Try(Vec<IpAddr>),
}

/// Sans-io: `answers` are the path's lookups in preference order, each with its last known
/// addresses and whether it was ever answered; `down`: the path fails its checks. A path that
/// is up keeps its address while the answer lists it (a name with several records does not
/// make it hop); a down one tries the answer's other addresses too (a dual-stack home whose
/// IPv6 stopped answering while its AAAA record stayed goes on over IPv4).
pub fn verdict(current: Option<IpAddr>, down: bool, answers: &[(&BTreeSet<IpAddr>, bool)]) -> Verdict {
    if !answers.iter().any(|(_, answered)| *answered) {
        return Verdict::Keep;
    }
    let all: Vec<IpAddr> = answers.iter().flat_map(|(addrs, _)| addrs.iter().copied()).collect();
    // A family never answered (its lookups failed since the task started, as after a
    // reload) is no "no such record": a path with an address keeps it until every family has
    // said so, as a failed lookup keeps the last known address.
    let all_answered = answers.iter().all(|(_, answered)| *answered);
    match current {
        Some(_) if all.is_empty() && !all_answered => Verdict::Keep,
        _ if all.is_empty() => Verdict::Clear,
        Some(ip) if all.contains(&ip) && !down => Verdict::Keep,
        Some(ip) if all.contains(&ip) => match all.iter().any(|&a| a != ip) {
            true => Verdict::Try(std::iter::once(ip).chain(all.into_iter().filter(|&a| a != ip)).collect()),
            false => Verdict::Keep,
        },
        _ => Verdict::Try(all),
    }
}

/// A path of the pool given by name, and the lookups it needs.
struct Named {
    index: usize,
    queries: Vec<Query>,
}

/// Run the pool's lookups with the system's or configured resolvers; returns at once when the
/// pool has no path given by name. Aborted with the pool's other tasks.
pub async fn run(pool: Arc<Pool>, lookups: Arc<Lookups>, cfg: ResolverConfig) {
    let prober = HealthProbe(pool.clone());
    run_with(pool, lookups, prober, cfg).await
}

/// [`run`] with any resolver and prober (tests).
pub async fn run_with<R: Resolve, P: Prober>(pool: Arc<Pool>, resolver: Arc<R>, prober: P, cfg: ResolverConfig) {
    let mut names: Vec<String> = Vec::new();
    let mut named = Vec::new();
    for (index, path) in pool.paths.iter().enumerate() {
        let Target::Name { host, family } = &path.target else { continue };
        let name = match names.iter().position(|n| n == host) {
            Some(i) => i,
            None => {
                names.push(host.clone());
                names.len() - 1
            }
        };
        let queries = family.lookups().iter().map(|&family| Query { name, family }).collect();
        named.push(Named { index, queries });
    }
    if named.is_empty() {
        return;
    }
    let policy =
        Policy { min_refresh: cfg.min_refresh, max_refresh: cfg.max_refresh, on_no_answer: OnNoAnswer::Closed };
    let queries: Vec<Query> = named.iter().flat_map(|n| n.queries.iter().copied()).collect();
    let mut tracker = Tracker::with_queries(names, queries, BTreeSet::new(), policy, Instant::now().into_std());
    let mut failing: HashSet<Query> = HashSet::new();
    let mut looping: HashSet<(usize, IpAddr)> = HashSet::new();
    let retry = pool.cfg.health.interval;
    // When each named path was first seen down (by this loop, every health interval): it
    // goes to another address of its name only once down for `hop_after`, so one lost probe of
    // a lossy line does not make it hop (and start afresh, its flap damping forgotten).
    let mut down_since: HashMap<usize, Instant> = HashMap::new();
    let hop_after = (retry * 4).max(HOP_AFTER_MIN);
    loop {
        let mut asking = JoinSet::new();
        let mut fresh = false;
        // The lookups answered in this round (a path's own news is told once per answer).
        let mut answered_now: Vec<Query> = Vec::new();
        for q in tracker.due(Instant::now().into_std()) {
            let (resolver, name) = (resolver.clone(), tracker.name(q).to_owned());
            asking.spawn(async move { (q, resolver.lookup(&name, q.family).await) });
        }
        while let Some(done) = asking.join_next().await {
            let Ok((q, outcome)) = done else { continue };
            fresh = true;
            answered_now.push(q);
            account(&pool, &named, &tracker, q, &outcome, &mut failing);
            tracker.record(q, outcome, Instant::now().into_std());
        }
        let mut waiting = false;
        // A named path with other addresses to go to, should it go down: looked at again every
        // health interval, not only at the next lookup.
        let mut alternatives = false;
        for n in &named {
            let path = &pool.paths[n.index];
            // The mesh tier's name may hold other AAAA records beside the home's Yggdrasil
            // address (the DNS role can publish it on every name, with the ingress nodes'
            // own): only 200::/7 is the mesh, and another ingress node's address that answers
            // probes would become this pool's "mesh" for good.
            let mut dropped = 0;
            let owned: Vec<(BTreeSet<IpAddr>, bool)> = n
                .queries
                .iter()
                .filter_map(|q| tracker.state(*q))
                .map(|(addrs, answered, _)| {
                    let on_mesh = |ip: &IpAddr| !path.is_mesh || shared::ygg::is_mesh_address(*ip);
                    let kept: BTreeSet<IpAddr> = addrs.iter().copied().filter(on_mesh).collect();
                    dropped += addrs.len() - kept.len();
                    (kept, answered)
                })
                .collect();
            let answers: Vec<_> = owned.iter().map(|(addrs, answered)| (addrs, *answered)).collect();
            if dropped > 0 && n.queries.iter().any(|q| answered_now.contains(q)) {
                tracing::warn!(pool = %pool.name, path = %path.name, name = %path.target, dropped,
                    "the mesh tier's name has addresses outside Yggdrasil's 200::/7; only 200::/7 ones are used");
            }
            let now = Instant::now();
            let down_long = match path.is_up() {
                true => {
                    down_since.remove(&n.index);
                    false
                }
                false => now.duration_since(*down_since.entry(n.index).or_insert(now)) >= hop_after,
            };
            alternatives |= answers.iter().flat_map(|(addrs, _)| addrs.iter()).any(|&a| Some(a) != path.ip());
            let verdict = verdict(path.ip(), down_long, &answers);
            // Which answers lead back to this host: asked (a look at its interfaces) only when
            // there is something new to judge, not at every wake.
            if !fresh && !matches!(verdict, Verdict::Try(_)) {
                continue;
            }
            let back: Vec<IpAddr> = answers
                .iter()
                .flat_map(|(addrs, _)| addrs.iter().copied())
                .filter(|&ip| leads_back(&pool, n.index, ip, &mut looping))
                .collect();
            let labels = [("pool", pool.name.to_string()), ("path", path.name.to_string())];
            gauge!(m::PATH_DNS_LEADS_BACK, &labels).set(if back.is_empty() { 0.0 } else { 1.0 });
            match verdict {
                Verdict::Keep => {}
                Verdict::Clear => {
                    if path.ip().is_some() {
                        pool.set_address(n.index, None);
                    }
                }
                Verdict::Try(mut candidates) => {
                    // A down path trying the others: its own address is in the answer.
                    let hopping = path.ip().is_some_and(|ip| candidates.contains(&ip));
                    candidates.retain(|ip| !back.contains(ip));
                    if candidates.is_empty() {
                        // Nothing to probe: the path keeps its address, if any, until an
                        // answer gives one that leads home.
                        continue;
                    }
                    match first_answering(&prober, &candidates, path.fixed_port.unwrap_or(pool.cfg.health.port)).await {
                        // Up again on its own address while the others were probed: it stays.
                        Some(_) if hopping && path.is_up() => {}
                        Some(ip) => pool.set_address(n.index, Some(ip)),
                        None => waiting = true,
                    }
                }
            }
        }
        let next_lookup = tracker.next_wake().map(Instant::from_std);
        let next_try = (waiting || alternatives).then(|| Instant::now() + retry);
        match next_lookup.into_iter().chain(next_try).min() {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending::<()>().await,
        }
    }
}

/// The least time a named path must have been down before it tries its name's other
/// addresses (at least four health intervals).
const HOP_AFTER_MIN: Duration = Duration::from_secs(5);

/// Whether an answer for path `index` is one of this host's addresses on a port this ingress
/// listens on (`crate::self_loop`): never probed (this ingress's own listener would answer)
/// nor used. Logged once per path and address.
fn leads_back(pool: &Pool, index: usize, ip: IpAddr, looping: &mut HashSet<(usize, IpAddr)>) -> bool {
    let path = &pool.paths[index];
    let Some(l) = pool.cfg.own_ports.leads_back(ip, path.fixed_port, shared::own_addrs::is_own) else {
        return false;
    };
    if looping.insert((index, ip)) {
        tracing::error!(pool = %pool.name, path = %path.name, name = %path.target, address = %ip, "the name's answer is not used: {l}");
    }
    true
}

/// Candidates probed per answer, at most: each probe may take the health check's whole
/// timeout, and a broken or hostile answer may hold thousands of addresses (over TCP), which
/// would keep the pool's lookups waiting for as many timeouts.
const MAX_CANDIDATES: usize = 8;

/// The first candidate that answers a probe, tried one after the other ([`MAX_CANDIDATES`]
/// of them at most: from a random place when there are more, so that each try reaches others).
async fn first_answering<P: Prober>(prober: &P, candidates: &[IpAddr], port: u16) -> Option<IpAddr> {
    let n = candidates.len();
    let start = if n > MAX_CANDIDATES { fastrand::usize(..n) } else { 0 };
    for &ip in candidates.iter().cycle().skip(start).take(n.min(MAX_CANDIDATES)) {
        if prober.probe(SocketAddr::new(ip, port)).await {
            return Some(ip);
        }
    }
    None
}

/// Count a lookup against every path using its name; log a failure once per episode.
fn account(pool: &Pool, named: &[Named], tracker: &Tracker, q: Query, outcome: &Outcome, failing: &mut HashSet<Query>) {
    let result = match outcome {
        Outcome::Addresses { .. } => "answer",
        Outcome::NoRecords { .. } => "no_record",
        Outcome::Failed { .. } => "failed",
    };
    let name = tracker.name(q);
    match outcome {
        Outcome::Failed { error } => {
            if failing.insert(q) {
                tracing::warn!(pool = %pool.name, name, record = q.family.record(), %error, "lookup failed; keeping the last known address");
            }
        }
        _ => {
            if failing.remove(&q) {
                tracing::info!(pool = %pool.name, name, record = q.family.record(), result, "lookups answer again");
            }
        }
    }
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    for n in named.iter().filter(|n| n.queries.contains(&q)) {
        let path = &pool.paths[n.index];
        let labels = [("pool", pool.name.to_string()), ("path", path.name.to_string())];
        counter!(m::PATH_DNS_LOOKUPS, &[&labels[..], &[("result", result.to_owned())]].concat()).increment(1);
        if result != "failed" {
            path.mark_refreshed(now.as_secs());
            gauge!(m::PATH_DNS_REFRESHED, &labels).set(now.as_secs_f64());
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::sync::Mutex;
    use std::time::Duration;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn verdicts() {
        let (a, b) = (ip("192.0.2.1"), ip("192.0.2.2"));
        let none = BTreeSet::new();
        let just = |x: IpAddr| BTreeSet::from([x]);
        assert_eq!(verdict(None, false, &[(&none, false)]), Verdict::Keep, "nothing known yet");
        assert_eq!(verdict(Some(a), false, &[(&none, false)]), Verdict::Keep);
        assert_eq!(verdict(Some(a), false, &[(&none, true)]), Verdict::Clear);
        assert_eq!(verdict(Some(a), false, &[(&just(a), true)]), Verdict::Keep);
        assert_eq!(verdict(Some(a), false, &[(&just(b), true)]), Verdict::Try(vec![b]));
        assert_eq!(verdict(None, false, &[(&just(b), true)]), Verdict::Try(vec![b]));
        // `any`: the current IPv4 address stays while it is in the A answer ...
        let v6 = just(ip("2001:db8::1"));
        assert_eq!(verdict(Some(a), false, &[(&v6, true), (&just(a), true)]), Verdict::Keep);
        // ... and candidates come IPv6 first.
        assert_eq!(verdict(Some(b), false, &[(&v6, true), (&just(a), true)]), Verdict::Try(vec![ip("2001:db8::1"), a]));
        // One family not answered yet while the other says "none": nothing to use ...
        assert_eq!(verdict(None, false, &[(&none, true), (&none, false)]), Verdict::Clear);
        // ... and nothing to take away either (a reload's fresh lookups, one of which failed).
        assert_eq!(verdict(Some(a), false, &[(&none, true), (&none, false)]), Verdict::Keep);
        assert_eq!(verdict(Some(a), false, &[(&none, true), (&none, true)]), Verdict::Clear);
        // A down path tries the answer's other addresses, its own first; with no other it keeps it.
        let both = BTreeSet::from([a, b]);
        assert_eq!(verdict(Some(a), true, &[(&both, true)]), Verdict::Try(vec![a, b]));
        assert_eq!(verdict(Some(a), true, &[(&v6, true), (&just(a), true)]), Verdict::Try(vec![a, ip("2001:db8::1")]));
        assert_eq!(verdict(Some(a), true, &[(&just(a), true)]), Verdict::Keep);
    }

    /// Scripted DNS: per name and family, the current answer and how many times it was asked.
    #[derive(Default)]
    struct Script {
        answers: Mutex<HashMap<(String, Family), Outcome>>,
        asked: Mutex<Vec<(String, Family, Instant)>>,
    }

    impl Script {
        fn set(&self, name: &str, family: Family, o: Outcome) {
            self.answers.lock().unwrap().insert((name.to_owned(), family), o);
        }
        fn asked(&self, name: &str) -> usize {
            self.asked.lock().unwrap().iter().filter(|(n, _, _)| n == name).count()
        }
    }

    impl Resolve for Script {
        fn lookup(&self, name: &str, family: Family) -> impl Future<Output = Outcome> + Send {
            self.asked.lock().unwrap().push((name.to_owned(), family, Instant::now()));
            let o = self.answers.lock().unwrap().get(&(name.to_owned(), family)).cloned();
            async move { o.unwrap_or(Outcome::Failed { error: "timed out".into() }) }
        }
    }

    /// Probes answered by a set of addresses that "listen".
    #[derive(Clone, Default)]
    struct Alive(Arc<Mutex<HashSet<IpAddr>>>);

    impl Prober for Alive {
        fn probe(&self, addr: SocketAddr) -> impl Future<Output = bool> + Send {
            let ok = self.0.lock().unwrap().contains(&addr.ip());
            async move { ok }
        }
    }

    /// Counts the probes; none answers.
    struct Silent(std::sync::atomic::AtomicUsize);

    impl Prober for Silent {
        fn probe(&self, _: SocketAddr) -> impl Future<Output = bool> + Send {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            async { false }
        }
    }

    #[tokio::test]
    async fn an_answer_of_thousands_of_addresses_is_probed_at_most_eight_deep() {
        let candidates: Vec<IpAddr> =
            (0..4000u32).map(|i| IpAddr::from(std::net::Ipv4Addr::from(0xC000_0200 + i))).collect();
        let prober = Silent(std::sync::atomic::AtomicUsize::new(0));
        assert_eq!(first_answering(&prober, &candidates, 443).await, None);
        assert_eq!(prober.0.load(std::sync::atomic::Ordering::Relaxed), MAX_CANDIDATES);
        // Only the last of 100 answers: a later try reaches it (8 in 100 a try; 200 tries).
        let candidates = &candidates[..100];
        let last = Alive::default();
        last.0.lock().unwrap().insert(candidates[99]);
        let mut found = None;
        for _ in 0..200 {
            found = first_answering(&last, candidates, 443).await;
            if found.is_some() {
                break;
            }
        }
        assert_eq!(found, Some(candidates[99]));
    }

    fn answer(list: &[&str], ttl: u64) -> Outcome {
        Outcome::Addresses { addrs: list.iter().map(|s| ip(s)).collect(), ttl: Duration::from_secs(ttl) }
    }

    const CONFIG: &str = r#"
        [resolver]
        min_refresh = "5s"
        max_refresh = "5m"
        [pool.home]
        paths = [
          { name = "wan1", address = "wan1.home.example", family = "ipv4" },
          { name = "wan2", address = "192.0.2.20" },
        ]
        mesh = "mesh.home.example"
        health = { port = 443, interval = "500ms" }
        [[service]]
        name = "web"
        listen = ["127.0.0.1:0"]
        pool = "home"
    "#;

    fn setup() -> (Arc<Pool>, ResolverConfig) {
        let cfg = Config::from_toml(CONFIG).unwrap();
        let pool = Arc::new(Pool::new(cfg.pools["home"].clone(), None));
        (pool, cfg.resolver)
    }

    async fn settle(d: Duration) {
        tokio::time::sleep(d).await;
    }

    /// A pool of `config`, a scripted resolver, and a prober answered by `alive`.
    fn with_names(config: &str, alive: &[&str]) -> (Arc<Pool>, ResolverConfig, Arc<Script>, Alive) {
        let cfg = Config::from_toml(config).unwrap();
        let pool = Arc::new(Pool::new(cfg.pools["home"].clone(), None));
        let prober = Alive::default();
        prober.0.lock().unwrap().extend(alive.iter().map(|a| ip(a)));
        (pool, cfg.resolver, Arc::new(Script::default()), prober)
    }

    fn any_family() -> String {
        CONFIG.replace("family = \"ipv4\"", "family = \"any\"")
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_that_leads_back_to_this_ingress_is_never_probed_nor_used() {
        // The service listens on every address at the probed port: a name pointed at this
        // host (dynamic DNS updated from the cloud node) would loop.
        // This ingress's own listener would answer the probe.
        let (pool, resolver, dns, alive) =
            with_names(&CONFIG.replace("127.0.0.1:0", "0.0.0.0:443"), &["127.0.0.1", "198.51.100.1"]);
        dns.set("wan1.home.example", Family::V4, answer(&["127.0.0.1"], 30));
        let task = tokio::spawn(run_with(pool.clone(), dns.clone(), alive.clone(), resolver));
        settle(Duration::from_millis(10)).await;
        assert_eq!(pool.paths[0].ip(), None);
        assert!(!pool.paths[0].is_up());
        // Both: home's address, though this host's comes first and answers too.
        dns.set("wan1.home.example", Family::V4, answer(&["127.0.0.1", "198.51.100.1"], 30));
        settle(Duration::from_secs(30)).await;
        assert_eq!(pool.paths[0].ip(), Some(ip("198.51.100.1")));
        // Pointed back again: home's address stays, as when a new address does not answer.
        dns.set("wan1.home.example", Family::V4, answer(&["127.0.0.1"], 30));
        settle(Duration::from_secs(60)).await;
        assert_eq!(pool.paths[0].ip(), Some(ip("198.51.100.1")));
        assert!(pool.paths[0].is_up());
        task.abort();
    }

    /// A reload starts the lookups afresh. A `family = "any"` path with an IPv4 address, whose
    /// AAAA lookup answers "no such record" while its A lookup fails just then, keeps its
    /// address: one family's "none" and the other's failure are no answer that it has none.
    #[tokio::test(start_paused = true)]
    async fn a_failed_lookup_after_a_reload_does_not_take_the_address_away() {
        let (pool, resolver, dns, alive) = with_names(&any_family(), &["198.51.100.1"]);
        dns.set("wan1.home.example", Family::V4, answer(&["198.51.100.1"], 30));
        dns.set("wan1.home.example", Family::V6, Outcome::NoRecords { ttl: Some(Duration::from_secs(30)) });
        let task = tokio::spawn(run_with(pool.clone(), dns.clone(), alive.clone(), resolver.clone()));
        settle(Duration::from_millis(10)).await;
        assert_eq!(pool.paths[0].ip(), Some(ip("198.51.100.1")));
        task.abort();
        // The reload's task: its first A lookup fails.
        dns.set("wan1.home.example", Family::V4, Outcome::Failed { error: "timed out".into() });
        let task = tokio::spawn(run_with(pool.clone(), dns.clone(), alive, resolver));
        settle(Duration::from_millis(10)).await;
        assert_eq!(pool.paths[0].ip(), Some(ip("198.51.100.1")), "the address stays");
        assert!(pool.paths[0].is_up());
        task.abort();
    }

    /// A `family = "any"` path on IPv6 whose IPv6 stops answering while the AAAA record stays
    /// goes on over the name's IPv4 address once it is down, within a health interval or two;
    /// up again, it does not hop back.
    #[tokio::test(start_paused = true)]
    async fn a_down_dual_stack_path_goes_on_over_its_other_family() {
        use crate::health::{Outcome as Probed, Source};
        let (pool, resolver, dns, alive) = with_names(&any_family(), &["2001:db8::1", "198.51.100.1"]);
        dns.set("wan1.home.example", Family::V6, answer(&["2001:db8::1"], 300));
        dns.set("wan1.home.example", Family::V4, answer(&["198.51.100.1"], 300));
        let task = tokio::spawn(run_with(pool.clone(), dns.clone(), alive.clone(), resolver));
        settle(Duration::from_millis(10)).await;
        assert_eq!(pool.paths[0].ip(), Some(ip("2001:db8::1")), "IPv6 first");
        settle(Duration::from_secs(5)).await;
        assert_eq!(pool.paths[0].ip(), Some(ip("2001:db8::1")), "up: no hop while the answer lists it");
        // Inbound IPv6 breaks at home; the checks take the path down.
        alive.0.lock().unwrap().remove(&ip("2001:db8::1"));
        for _ in 0..2 {
            pool.record(0, Probed::Failed, Source::Probe);
        }
        assert!(!pool.paths[0].is_up());
        settle(Duration::from_secs(2)).await;
        assert_eq!(pool.paths[0].ip(), Some(ip("2001:db8::1")), "not at once: one lost probe is no reason");
        settle(Duration::from_secs(5)).await;
        assert_eq!(pool.paths[0].ip(), Some(ip("198.51.100.1")), "on over IPv4, well before the next lookup");
        assert!(pool.paths[0].is_up(), "a fresh start on the new address");
        alive.0.lock().unwrap().insert(ip("2001:db8::1"));
        settle(Duration::from_secs(10)).await;
        assert_eq!(pool.paths[0].ip(), Some(ip("198.51.100.1")), "up: stays");
        task.abort();
    }

    /// The mesh tier's name also holds another ingress node's public IPv6 (the DNS role can
    /// publish the Yggdrasil AAAA on every name): only its 200::/7 address is the mesh. The
    /// other, though it answers probes, is never taken, down or up.
    #[tokio::test(start_paused = true)]
    async fn the_mesh_tier_takes_only_yggdrasil_addresses_from_its_name() {
        use crate::health::{Outcome as Probed, Source};
        let (pool, resolver, dns, alive) = with_names(CONFIG, &["198.51.100.1", "2001:db8::9"]);
        dns.set("wan1.home.example", Family::V4, answer(&["198.51.100.1"], 300));
        dns.set("mesh.home.example", Family::V6, answer(&["200::1", "2001:db8::9"], 300));
        let task = tokio::spawn(run_with(pool.clone(), dns.clone(), alive.clone(), resolver));
        settle(Duration::from_millis(10)).await;
        assert_eq!(pool.paths[2].ip(), None, "200::1 does not answer yet; 2001:db8::9 is not the mesh");
        for _ in 0..2 {
            pool.record(2, Probed::Failed, Source::Probe);
        }
        settle(Duration::from_secs(10)).await;
        assert_eq!(pool.paths[2].ip(), None, "down for long: still not another node's address");
        alive.0.lock().unwrap().insert(ip("200::1"));
        settle(Duration::from_secs(2)).await;
        assert_eq!(pool.paths[2].ip(), Some(ip("200::1")));
        task.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn names_are_followed_by_ttl_and_a_new_address_is_probed_first() {
        let (pool, cfg) = setup();
        let dns = Arc::new(Script::default());
        let alive = Alive::default();
        // Before any answer: the named paths have no address and are down; the fixed one serves.
        assert_eq!(pool.paths[0].ip(), None);
        assert!(!pool.paths[0].is_up() && pool.paths[1].is_up());
        alive.0.lock().unwrap().extend([ip("198.51.100.1"), ip("200::1")]);
        dns.set("wan1.home.example", Family::V4, answer(&["198.51.100.1"], 30));
        dns.set("mesh.home.example", Family::V6, answer(&["200::1"], 600));
        let task = tokio::spawn(run_with(pool.clone(), dns.clone(), alive.clone(), cfg));
        settle(Duration::from_millis(10)).await;
        assert_eq!(pool.paths[0].ip(), Some(ip("198.51.100.1")));
        assert!(pool.paths[0].is_up(), "the first answer that probes fine brings the path up");
        assert_eq!(pool.paths[2].ip(), Some(ip("200::1")));
        assert_eq!(dns.asked("mesh.home.example"), 1, "only AAAA for the mesh tier");

        // The ISP re-dials: the name moves, the new address does not answer yet.
        dns.set("wan1.home.example", Family::V4, answer(&["198.51.100.2"], 30));
        settle(Duration::from_secs(30)).await;
        assert_eq!(dns.asked("wan1.home.example"), 2, "asked again when the TTL ran out");
        assert_eq!(pool.paths[0].ip(), Some(ip("198.51.100.1")), "not moved before the new address answers");
        alive.0.lock().unwrap().insert(ip("198.51.100.2"));
        settle(Duration::from_millis(500)).await;
        assert_eq!(pool.paths[0].ip(), Some(ip("198.51.100.2")), "moved one health interval later");
        assert_eq!(dns.asked("wan1.home.example"), 2, "probing again is not asking again");

        // DNS down: the last known address stays, and the lookups back off within bounds.
        dns.answers.lock().unwrap().clear();
        settle(Duration::from_secs(120)).await;
        assert_eq!(pool.paths[0].ip(), Some(ip("198.51.100.2")));
        assert!(pool.paths[0].is_up());
        let asked = dns.asked("wan1.home.example");
        assert!((4..=8).contains(&asked), "failures retried with backoff, not hammered: {asked}");

        // NXDOMAIN: an answer. The path has no address and is down; wan2 carries.
        dns.set("wan1.home.example", Family::V4, Outcome::NoRecords { ttl: Some(Duration::from_secs(10)) });
        settle(Duration::from_secs(300)).await;
        assert_eq!(pool.paths[0].ip(), None);
        assert!(!pool.paths[0].is_up() && pool.paths[1].is_up());
        assert!(!pool.on_mesh());
        // Back: up again within min_refresh (the negative TTL of 10 s is kept between bounds).
        dns.set("wan1.home.example", Family::V4, answer(&["198.51.100.2"], 30));
        settle(Duration::from_secs(11)).await;
        assert_eq!(pool.paths[0].ip(), Some(ip("198.51.100.2")));
        assert!(pool.paths[0].is_up());
        task.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn ttls_are_clamped_to_the_refresh_bounds() {
        let (pool, cfg) = setup();
        let dns = Arc::new(Script::default());
        let alive = Alive::default();
        alive.0.lock().unwrap().insert(ip("198.51.100.1"));
        dns.set("wan1.home.example", Family::V4, answer(&["198.51.100.1"], 0));
        dns.set("mesh.home.example", Family::V6, answer(&["200::1"], 86_400));
        let task = tokio::spawn(run_with(pool.clone(), dns.clone(), alive, cfg));
        settle(Duration::from_secs(60) + Duration::from_millis(1)).await;
        // TTL 0 → every min_refresh (5 s): asked at 0, 5, ..., 60.
        assert_eq!(dns.asked("wan1.home.example"), 13);
        // A day → max_refresh (5 min): asked once so far.
        assert_eq!(dns.asked("mesh.home.example"), 1);
        settle(Duration::from_secs(240)).await;
        assert_eq!(dns.asked("mesh.home.example"), 2);
        task.abort();
    }
}
