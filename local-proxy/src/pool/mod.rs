//! Upstream pools: the upstreams of one site or stream, their health and the pick among them.
//!
//! Invariants (as in the ingress): the data path reads only atomics (`up`, `factor`,
//! `active`, `drain`, `weight_override`) plus one short lock on the pool's round robin state
//! per pick among several upstreams (a pool of one needs no choice); the health state behind
//! its mutex (`shared::health`) is touched once per probe or finished request/connect.
//! Primaries serve while any is usable; backups only when none is. With nothing usable the
//! pick answers `None` (the caller answers 503 / closes), counted. Without active checks
//! nothing would ever bring back an upstream that real traffic took down, so such an upstream
//! is tried again with real traffic once it has been down for the health `interval` (nginx's
//! `fail_timeout`), by one request at a time (the others go to the rest of the pool, or its
//! backups); a failure there restarts the wait, `2 × rise` successes bring it back.

pub mod checks;
pub mod probe;
mod set;

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram};
use shared::balance::{Candidate, Policy, Selector};
use shared::health::{HealthState, Outcome, Source, Transition};
use tracing::{info, warn};

use crate::config::upstreams::MAX_UPSTREAMS;
use crate::config::{Check, Health};
use crate::metrics::names;

pub use set::Pools;

/// `weight_override` value meaning "use the configured weight".
pub const NO_OVERRIDE: u32 = u32::MAX;

/// What a pool belongs to: the label key of its metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    Site,
    Stream,
}

impl Owner {
    pub fn label(self) -> &'static str {
        match self {
            Owner::Site => "site",
            Owner::Stream => "stream",
        }
    }
}

/// Health, load and counters of one upstream; survives a reload while the upstream (same
/// set, same URL or address) stays configured.
#[derive(Debug)]
pub struct MemberState {
    health: Mutex<HealthState>,
    up: AtomicBool,
    /// `f32` bits of the health factor (failure ratio only: LAN response times depend on
    /// the request, not the upstream, so latency does not scale shares here).
    factor: AtomicU32,
    /// Requests in flight, open stream connections, UDP flows and upgraded (WebSocket)
    /// connections on this upstream: the load of `least_conn` and `random_two`.
    active: AtomicU64,
    /// When it last went down or failed while down, in ms of [`clock_ms`]: with no active
    /// checks, real traffic tries it again `interval` after that.
    down_at: AtomicU64,
    /// When the request trying it again (no active checks) was picked, in ms of [`clock_ms`]
    /// (0: none in flight). One at a time, as nginx sends one per `fail_timeout`: offered to
    /// every pick, a dead upstream would take every request until the first of them failed
    /// (a hung one: for `upstream_timeout`), and its backups none. Its outcome frees it; one
    /// that never comes (the client went away first) frees it `interval` later.
    trial_at: AtomicU64,
    /// Runtime hook (admin API): while set, the upstream gets no new requests or
    /// connections; those it has go on. Not a health verdict: probes keep running.
    pub drain: AtomicBool,
    /// Runtime hook (admin API): a weight used instead of the configured one, or
    /// [`NO_OVERRIDE`]. Read at every pick, so a change applies to the next request.
    pub weight_override: AtomicU32,
    /// Registered when its generation goes in ([`Pool::publish`]) or at first use, not when
    /// it is built: a reload refused after building its pools leaves no series behind.
    metrics: OnceLock<MemberMetrics>,
    labels: Vec<(&'static str, String)>,
}

/// One upstream's series.
#[derive(Debug)]
pub(crate) struct MemberMetrics {
    pub(crate) m_requests: Counter,
    pub(crate) m_retries: Counter,
    pub(crate) m_latency: Histogram,
    m_up: Gauge,
    m_active: Gauge,
}

impl MemberState {
    fn new(owner: Owner, set: &str, upstream: &str) -> Self {
        let labels = vec![(owner.label(), set.to_owned()), ("upstream", upstream.to_owned())];
        Self {
            health: Mutex::new(HealthState::default()),
            up: AtomicBool::new(true),
            factor: AtomicU32::new(1.0f32.to_bits()),
            active: AtomicU64::new(0),
            down_at: AtomicU64::new(0),
            trial_at: AtomicU64::new(0),
            drain: AtomicBool::new(false),
            weight_override: AtomicU32::new(NO_OVERRIDE),
            metrics: OnceLock::new(),
            labels,
        }
    }

    /// Its series, registered (with its state as it is now) on the first call.
    pub(crate) fn metrics(&self) -> &MemberMetrics {
        self.metrics.get_or_init(|| {
            let labels = &self.labels;
            let m = MemberMetrics {
                m_requests: metrics::counter!(names::UPSTREAM_REQUESTS, labels),
                m_retries: metrics::counter!(names::UPSTREAM_RETRIES, labels),
                m_latency: metrics::histogram!(names::UPSTREAM_LATENCY, labels),
                m_up: metrics::gauge!(names::UPSTREAM_UP, labels),
                m_active: metrics::gauge!(names::UPSTREAM_ACTIVE, labels),
            };
            m.m_up.set(if self.is_up() { 1.0 } else { 0.0 });
            // Not set: holds move it by one each way, and the holds of an earlier state of the
            // same upstream (removed by one reload, back with the next) are still in it.
            m
        })
    }

    /// Count one failure by `result` (`connect`, `timeout`, `error`, `5xx`, `probe`,
    /// `body_timeout`, `body_error`).
    pub fn count_failure(&self, result: &'static str) {
        let mut labels = self.labels.clone();
        labels.push(("result", result.to_owned()));
        metrics::counter!(names::UPSTREAM_FAILURES, &labels).increment(1);
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    pub fn active(&self) -> u64 {
        self.active.load(Ordering::Relaxed)
    }

    /// The health state machine's view (status pages, tests).
    pub fn health_snapshot(&self) -> HealthState {
        self.health.lock().map(|h| h.clone()).unwrap_or_default()
    }
}

/// Milliseconds since the first call: the clock of `down_at`.
fn clock_ms() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START.get_or_init(std::time::Instant::now).elapsed().as_millis() as u64
}

/// One upstream as the pool sees it: label, configured weight, role, and its state.
#[derive(Debug)]
pub struct Member {
    /// The URL or address as configured: the metrics label and the log field.
    pub label: Arc<str>,
    pub weight: u32,
    pub backup: bool,
    pub state: Arc<MemberState>,
}

impl Member {
    /// The weight picks use: the override if one is set, else the configured one, scaled by
    /// the health factor; 0 while drained.
    fn effective(&self) -> f64 {
        if self.state.drain.load(Ordering::Relaxed) {
            return 0.0;
        }
        let w = match self.state.weight_override.load(Ordering::Relaxed) {
            NO_OVERRIDE => self.weight,
            w => w,
        };
        f64::from(w) * f64::from(f32::from_bits(self.state.factor.load(Ordering::Relaxed)))
    }

    /// Up, not drained, with a weight above 0.
    pub fn usable(&self) -> bool {
        self.state.is_up() && self.effective() > 0.0
    }
}

/// The upstreams already tried for one request or connection (bit i = member i).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tried(u64);

impl Tried {
    pub fn insert(&mut self, i: usize) {
        self.0 |= 1u64.checked_shl(i as u32).unwrap_or(0);
    }
    pub fn contains(&self, i: usize) -> bool {
        self.0 & 1u64.checked_shl(i as u32).unwrap_or(0) != 0
    }
}

/// A request's, connection's or flow's hold on an upstream: counted as active until dropped.
#[derive(Debug)]
pub struct Active(Arc<MemberState>);

impl Active {
    pub fn new(state: Arc<MemberState>) -> Self {
        // Every hold moves the series by one each way (two loops setting the counts they saw
        // could publish them out of order and leave a wrong figure until the upstream's next
        // request).
        let m_active = &state.metrics().m_active;
        state.active.fetch_add(1, Ordering::Relaxed);
        m_active.increment(1.0);
        Self(state)
    }

    /// Whether the upstream held is up (a flow moves off one that went down).
    pub fn is_up(&self) -> bool {
        self.0.is_up()
    }

    /// The upstream held.
    pub fn state(&self) -> &Arc<MemberState> {
        &self.0
    }

    /// A response whose body broke off after its head was passed on (`result`:
    /// `body_timeout`, `body_error`): counted with the site's errors and the upstream's
    /// failures, and logged. Not a health verdict, as in nginx: an event stream that goes
    /// quiet would otherwise take its upstream out.
    pub fn count_cut_short(&self, result: &'static str, error: &dyn std::fmt::Display) {
        let state = &self.0;
        state.count_failure(result);
        let owner = state.labels.first().map_or("", |(_, v)| v.as_str());
        let upstream = state.labels.get(1).map_or("", |(_, v)| v.as_str());
        // The site's errors are counted by host, a route's own pool's too.
        let site = set::pool_site(owner);
        metrics::counter!(names::UPSTREAM_ERRORS, "site" => site.to_owned(), "result" => result).increment(1);
        shared::warn_every_second!(site = %owner, upstream = %upstream, error = %error, "upstream response cut short");
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
        self.0.metrics().m_active.decrement(1.0);
    }
}

/// The upstreams of one site or stream.
#[derive(Debug)]
pub struct Pool {
    pub owner: Owner,
    /// The site's host or the stream's name.
    pub name: Arc<str>,
    /// In configured order: member i is `upstreams.members[i]` of the config.
    pub members: Vec<Member>,
    pub balance: Policy,
    pub health: Health,
    pub critical: bool,
    selector: Mutex<Selector>,
    /// Registered as the members' series are ([`Pool::publish`]).
    m_unavailable: OnceLock<Counter>,
    /// An active-check task runs for this pool (set by `Pools::start_checks`).
    checked: AtomicBool,
    /// Active-check rounds completed: start-up waits for the first before READY=1.
    rounds: AtomicU64,
    /// Held while a request's failure decides whether its upstream goes down: with two event
    /// loops failing two upstreams at once, each would see the other still up and both go
    /// down, though traffic alone never takes down the last usable one.
    falls: Mutex<()>,
}

impl Pool {
    /// Build a pool from `(label, weight, backup)` per upstream, reusing the state of
    /// members with the same label in `previous` (a reload keeps their health).
    pub fn new(
        owner: Owner,
        name: &str,
        members: impl IntoIterator<Item = (String, u32, bool)>,
        balance: Policy,
        health: Health,
        critical: bool,
        previous: Option<&Pool>,
    ) -> Self {
        let members = members
            .into_iter()
            .take(MAX_UPSTREAMS)
            .map(|(label, weight, backup)| {
                let prev = previous.and_then(|p| p.members.iter().find(|m| *m.label == *label));
                let reuse = prev.map(|m| m.state.clone());
                Member {
                    state: reuse.unwrap_or_else(|| Arc::new(MemberState::new(owner, name, &label))),
                    label: Arc::from(label),
                    weight,
                    backup,
                }
            })
            .collect();
        Self {
            owner,
            name: Arc::from(name),
            members,
            balance,
            health,
            critical,
            selector: Mutex::default(),
            m_unavailable: OnceLock::new(),
            checked: AtomicBool::new(false),
            rounds: AtomicU64::new(0),
            falls: Mutex::new(()),
        }
    }

    /// A runtime weight override lasts until the config changes that weight: end those of
    /// the members whose weight this pool changes from `previous`'s. Called when the reload
    /// that built it is applied, not when it is built: a reload refused later (a listener
    /// that cannot bind) must leave the running overrides alone.
    pub fn end_changed_overrides(&self, previous: &Pool) {
        for m in &self.members {
            let Some(prev) = previous.members.iter().find(|p| p.label == m.label) else { continue };
            if prev.weight == m.weight {
                continue;
            }
            let was = m.state.weight_override.swap(NO_OVERRIDE, Ordering::Relaxed);
            if was != NO_OVERRIDE {
                crate::events::record(crate::events::Event {
                    at_ms: shared::admin::page::now_ms(),
                    owner: self.owner.label(),
                    name: self.name.to_string(),
                    upstream: m.label.to_string(),
                    from: format!("weight {was}"),
                    to: format!("weight {}", m.weight),
                    reason: "config changed the weight: the runtime override ends".into(),
                });
            }
        }
    }

    /// Whether its active checks have judged every upstream once; true for a pool without
    /// active checks (only traffic judges it: nothing to wait for).
    pub fn probed(&self) -> bool {
        !self.checked.load(Ordering::Relaxed) || self.rounds.load(Ordering::Relaxed) > 0
    }

    /// Its check task starts (before the first round).
    pub(crate) fn mark_checked(&self) {
        self.checked.store(true, Ordering::Relaxed);
    }

    /// One check round is done (every member's outcome recorded).
    pub(crate) fn round_done(&self) {
        self.rounds.fetch_add(1, Ordering::Relaxed);
    }

    /// The next upstream for a new request or connection: the policy among the usable
    /// primaries not yet tried, else among the usable backups; `None` when none is left.
    pub fn pick(&self, tried: Tried) -> Option<usize> {
        self.select(tried, false).or_else(|| self.select(tried, true))
    }

    /// Passive-only pools give a down upstream another try once it has been down (or its last
    /// try failed) before this, in ms of [`clock_ms`]; `None` with active checks, which alone
    /// bring one back.
    fn retry_before(&self) -> Option<u64> {
        match self.health.check {
            Check::None => clock_ms().checked_sub(self.health.interval.as_millis() as u64),
            _ => None,
        }
    }

    /// Whether down member `m` may be tried again now, no other try of it in flight: the time
    /// of the try in flight (0: none) to claim it from, else `None`.
    fn retry_due(m: &Member, before: Option<u64>) -> Option<u64> {
        let before = before?;
        // Read before `down_at`: a try freed by its failure shows the wait that failure began
        // (`record` stores `down_at` first).
        let trial = m.state.trial_at.load(Ordering::Acquire);
        (m.state.down_at.load(Ordering::Relaxed) <= before && trial <= before).then_some(trial)
    }

    fn select(&self, mut tried: Tried, backup: bool) -> Option<usize> {
        let retry_before = self.retry_before();
        // Bounded: each lost claim takes one member out of this pick's candidates.
        for _ in 0..=self.members.len() {
            let i = self.select_among(tried, backup, retry_before)?;
            let Some(state) = self.state(i).filter(|s| !s.is_up()) else { return Some(i) };
            // A down one picked for its retry: this request is the one try in flight, unless
            // another loop's pick claimed it meanwhile.
            let Some(seen) = self.members.get(i).and_then(|m| Self::retry_due(m, retry_before)) else {
                tried.insert(i);
                continue;
            };
            let at = clock_ms().max(1);
            if state.trial_at.compare_exchange(seen, at, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
                // Another try may have been claimed, failed and freed in between: its failure
                // began a new wait, and this one is then not due after all.
                if state.down_at.load(Ordering::Relaxed) <= retry_before.unwrap_or(0) {
                    return Some(i);
                }
                let _ = state.trial_at.compare_exchange(at, 0, Ordering::AcqRel, Ordering::Relaxed);
            }
            tried.insert(i);
        }
        None
    }

    fn select_among(&self, tried: Tried, backup: bool, retry_before: Option<u64>) -> Option<usize> {
        let candidate = |i: usize, m: &Member| -> Option<Candidate> {
            if m.backup != backup || tried.contains(i) {
                return None;
            }
            if !m.state.is_up() && Self::retry_due(m, retry_before).is_none() {
                return None;
            }
            let weight = m.effective();
            // Not finite: never chosen (the selector drops it too), so a pool of one, which
            // skips the selector, answers the same.
            if !(weight > 0.0 && weight.is_finite()) {
                return None;
            }
            let load = match self.balance {
                Policy::RoundRobin => 0.0,
                _ => m.state.active() as f64,
            };
            Some(Candidate { index: i, weight, load })
        };
        // Most sites have one upstream: no candidate array to clear (1.5 kB) and no lock to
        // take for a choice every policy makes the same way.
        if let [only] = self.members.as_slice() {
            return candidate(0, only).map(|c| c.index);
        }
        let mut cands = [Candidate { index: 0, weight: 0.0, load: 0.0 }; MAX_UPSTREAMS];
        let mut n = 0;
        for (i, m) in self.members.iter().enumerate() {
            if let Some(c) = candidate(i, m) {
                cands[n] = c;
                n += 1;
            }
        }
        if n == 0 {
            return None;
        }
        // A poisoned lock only means a panic elsewhere mid-pick; the state is still usable.
        let mut sel = self.selector.lock().unwrap_or_else(|e| e.into_inner());
        sel.pick(self.balance, &cands[..n])
    }

    /// Whether any upstream could be picked now (what `critical` asks of the set): up, or
    /// (no active checks) down but due for its retry. Without the latter, a critical pool of
    /// such upstreams all down would tell the ingress it cannot serve, get no traffic, and
    /// so never try them again.
    pub fn any_usable(&self) -> bool {
        self.any_usable_but(None)
    }

    /// [`Pool::any_usable`] among the upstreams other than `state`'s (a UDP flow's, which
    /// moves only to another).
    pub fn any_usable_besides(&self, state: &Arc<MemberState>) -> bool {
        self.any_usable_but(Some(state))
    }

    fn any_usable_but(&self, but: Option<&Arc<MemberState>>) -> bool {
        let before = self.retry_before();
        self.members
            .iter()
            .filter(|m| but.is_none_or(|s| !Arc::ptr_eq(&m.state, s)))
            .any(|m| m.usable() || (m.effective() > 0.0 && Self::retry_due(m, before).is_some()))
    }

    /// Count a request or connection refused because no upstream was usable.
    pub fn count_unavailable(&self) {
        self.unavailable().increment(1);
    }

    fn unavailable(&self) -> &Counter {
        self.m_unavailable
            .get_or_init(|| metrics::counter!(names::UPSTREAM_UNAVAILABLE, self.owner.label() => self.name.to_string()))
    }

    /// Register this pool's series, which show from now on (its generation goes in).
    pub fn publish(&self) {
        self.unavailable();
        for m in &self.members {
            m.state.metrics();
        }
    }

    /// Feed one outcome (probe, request, connect) into member `index`; `reason` says what
    /// failed, for the log line when it takes the upstream down.
    pub fn record(&self, index: usize, outcome: Outcome, source: Source, reason: Option<&str>) {
        let Some(member) = self.members.get(index) else { return };
        let _falls = (outcome == Outcome::Failed && source == Source::Traffic)
            .then(|| self.falls.lock().unwrap_or_else(|e| e.into_inner()));
        // Real traffic may take an upstream down only while another can serve: up, and
        // neither drained nor weighted 0 by the operator (a drained one takes no traffic).
        let others = self.members.iter().enumerate().any(|(i, m)| i != index && m.usable());
        let transition = {
            let mut h = member.state.health.lock().unwrap_or_else(|e| e.into_inner());
            let t = h.record(outcome, source, self.health.rise, self.health.fall, others);
            member.state.factor.store((h.factor(None) as f32).to_bits(), Ordering::Relaxed);
            if !h.up && outcome == Outcome::Failed {
                // Went down, or failed its retry: the wait before the next one starts now.
                member.state.down_at.store(clock_ms(), Ordering::Relaxed);
            }
            // The try in flight, if this was it, is over: freed after the new wait is stored,
            // so that a pick that sees it free sees that wait too (`retry_due`).
            member.state.trial_at.store(0, Ordering::Release);
            // Published under the lock that decided it: outcomes come from every event loop,
            // and a transition stored after the lock is gone could land after a later,
            // opposite one (up by its health state, out of every pick for good).
            if let Some(t) = t {
                let up = t == Transition::WentUp;
                member.state.up.store(up, Ordering::Relaxed);
                member.state.metrics().m_up.set(if up { 1.0 } else { 0.0 });
            }
            t
        };
        let Some(t) = transition else { return };
        let up = t == Transition::WentUp;
        let (key, name, upstream) = (self.owner.label(), &*self.name, &*member.label);
        if up {
            info!(set = key, name, upstream, ?source, "upstream up");
        } else {
            warn!(set = key, name, upstream, ?source, reason = reason.unwrap_or("failed"), "upstream down");
        }
        if !self.any_usable() {
            warn!(set = key, name, "no upstream usable: requests are refused until one is back");
        }
    }

    /// Record a successful exchange that took `latency`.
    pub fn record_ok(&self, index: usize, latency: Duration, source: Source) {
        if let Some(m) = self.members.get(index) {
            m.state.metrics().m_latency.record(latency.as_secs_f64());
        }
        self.record(index, Outcome::Ok { latency }, source, None);
    }

    /// Member `index`'s state (hooks, guards).
    pub fn state(&self, index: usize) -> Option<&Arc<MemberState>> {
        self.members.get(index).map(|m| &m.state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Check;

    fn health() -> Health {
        Health {
            check: Check::None,
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(500),
            rise: 2,
            fall: 2,
            fail_on_5xx: false,
        }
    }

    fn pool(members: &[(u32, bool)], balance: Policy, previous: Option<&Pool>) -> Pool {
        let list = members.iter().enumerate().map(|(i, &(w, b))| (format!("http://10.0.0.{i}:80"), w, b));
        Pool::new(Owner::Site, "t.example.org", list, balance, health(), false, previous)
    }

    fn shares(p: &Pool, n: usize) -> Vec<usize> {
        let mut c = vec![0; p.members.len()];
        for _ in 0..n {
            c[p.pick(Tried::default()).unwrap()] += 1;
        }
        c
    }

    fn kill(p: &Pool, i: usize) {
        p.record(i, Outcome::Failed, Source::Probe, Some("test"));
        p.record(i, Outcome::Failed, Source::Probe, Some("test"));
    }

    /// The upstream's gauge of open requests moves by one each way: the last two ending on
    /// two threads at once leave 0, whatever order their updates land in. 2,000 rounds of four
    /// ends released together, read from a recorder of the test's own.
    #[test]
    fn the_active_gauge_reads_zero_once_the_last_two_ended_together() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let p = pool(&[(1, false)], Policy::RoundRobin, None);
        let state = p.members[0].state.clone();
        metrics::with_local_recorder(&recorder, || state.metrics().m_up.set(1.0));
        let active = || {
            let text = handle.render();
            let line = text.lines().find(|l| l.starts_with("local_proxy_upstream_active{")).map(str::to_owned);
            line.and_then(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        };
        for round in 0..2000 {
            let pair: Vec<_> = (0..4).map(|_| Active::new(state.clone())).collect();
            let barrier = std::sync::Barrier::new(4);
            std::thread::scope(|s| {
                for hold in pair {
                    let barrier = &barrier;
                    s.spawn(move || {
                        barrier.wait();
                        drop(hold);
                    });
                }
            });
            assert_eq!(active(), Some(0.0), "round {round}: nothing open");
        }
    }

    #[test]
    fn weights_shares_and_backups() {
        let p = pool(&[(9, false), (1, false), (1, true)], Policy::RoundRobin, None);
        assert_eq!(shares(&p, 2000), [1800, 200, 0]);
        kill(&p, 0);
        assert_eq!(shares(&p, 100), [0, 100, 0]);
        kill(&p, 1);
        assert_eq!(shares(&p, 100), [0, 0, 100], "backups serve only when no primary is up");
        kill(&p, 2);
        assert_eq!(p.pick(Tried::default()), None);
        assert!(!p.any_usable());
        p.record_ok(0, Duration::from_millis(1), Source::Probe);
        p.record_ok(0, Duration::from_millis(1), Source::Probe);
        assert_eq!(p.pick(Tried::default()), Some(0));
    }

    #[test]
    fn retries_walk_every_usable_upstream_once() {
        let p = pool(&[(1, false), (1, false), (1, true)], Policy::RoundRobin, None);
        let mut tried = Tried::default();
        let mut order = Vec::new();
        while let Some(i) = p.pick(tried) {
            tried.insert(i);
            order.push(i);
        }
        assert_eq!(order.len(), 3);
        assert_eq!(order[2], 2, "the backup comes after the primaries");
    }

    #[test]
    fn drain_and_weight_override_hooks_apply_at_once() {
        let p = pool(&[(1, false), (1, false)], Policy::RoundRobin, None);
        p.members[0].state.drain.store(true, Ordering::Relaxed);
        assert_eq!(shares(&p, 10), [0, 10]);
        p.members[0].state.drain.store(false, Ordering::Relaxed);
        p.members[1].state.weight_override.store(3, Ordering::Relaxed);
        assert_eq!(shares(&p, 400), [100, 300]);
    }

    #[test]
    fn a_drained_upstream_is_not_one_to_fall_back_on() {
        let p = pool(&[(1, false), (1, false)], Policy::RoundRobin, None);
        p.members[0].state.drain.store(true, Ordering::Relaxed);
        for _ in 0..5 {
            p.record(1, Outcome::Failed, Source::Traffic, Some("timeout"));
        }
        assert!(p.members[1].state.is_up(), "the last upstream taking traffic went down on passive evidence");
        p.members[0].state.drain.store(false, Ordering::Relaxed);
        for _ in 0..5 {
            p.record(1, Outcome::Failed, Source::Traffic, Some("timeout"));
        }
        assert!(!p.members[1].state.is_up(), "with a fallback it goes down");
    }

    #[test]
    fn least_conn_counts_held_connections() {
        let p = pool(&[(1, false), (1, false)], Policy::LeastConn, None);
        let _ws = Active::new(p.members[0].state.clone());
        assert_eq!(shares(&p, 10), [0, 10]);
        let p = pool(&[(1, false), (1, false)], Policy::RandomTwo, None);
        let held = Active::new(p.members[1].state.clone());
        assert_eq!(shares(&p, 10), [10, 0]);
        drop(held);
        assert_eq!(p.members[1].state.active(), 0);
    }

    #[test]
    fn passive_failures_keep_the_last_upstream() {
        let p = pool(&[(1, false)], Policy::RoundRobin, None);
        for _ in 0..5 {
            p.record(0, Outcome::Failed, Source::Traffic, Some("refused"));
        }
        assert!(p.members[0].state.is_up());
        let p = pool(&[(1, false), (1, false)], Policy::RoundRobin, None);
        p.record(0, Outcome::Failed, Source::Traffic, Some("refused"));
        p.record(0, Outcome::Failed, Source::Traffic, Some("refused"));
        assert!(!p.members[0].state.is_up());
    }

    #[test]
    fn without_active_checks_a_down_upstream_is_retried_after_the_interval() {
        let mut h = health();
        h.interval = Duration::from_millis(500);
        let p = Pool::new(
            Owner::Site,
            "t",
            [("a".to_string(), 1, false), ("b".to_string(), 1, false)],
            Policy::RoundRobin,
            h.clone(),
            false,
            None,
        );
        p.record(1, Outcome::Failed, Source::Traffic, None);
        p.record(1, Outcome::Failed, Source::Traffic, None);
        assert!(!p.members[1].state.is_up());
        assert_eq!(shares(&p, 10), [10, 0]);
        std::thread::sleep(Duration::from_millis(600));
        // One request tries it again; the others go on to a while its outcome is awaited.
        assert_eq!(shares(&p, 10), [9, 1], "one try in flight at a time");
        assert_eq!(shares(&p, 10), [10, 0]);
        p.record(1, Outcome::Failed, Source::Traffic, None);
        assert_eq!(shares(&p, 10), [10, 0], "a failed retry restarts the wait");
        std::thread::sleep(Duration::from_millis(600));
        // Each success frees the next try at once; 2 × rise of them bring it back.
        for _ in 0..4 {
            assert_eq!(shares(&p, 10), [9, 1]);
            p.record_ok(1, Duration::from_millis(1), Source::Traffic);
        }
        assert!(p.members[1].state.is_up(), "2 × rise successes bring it back");
        // With active checks, only they bring it back.
        h.check = Check::Tcp;
        let q = Pool::new(
            Owner::Site,
            "t",
            [("a".to_string(), 1, false), ("b".to_string(), 1, false)],
            Policy::RoundRobin,
            h,
            false,
            None,
        );
        q.record(1, Outcome::Failed, Source::Traffic, None);
        q.record(1, Outcome::Failed, Source::Traffic, None);
        std::thread::sleep(Duration::from_millis(600));
        assert_eq!(shares(&q, 10), [10, 0]);
    }

    /// Without active checks, a down primary due for its retry takes that one request; its
    /// backup takes the rest meanwhile (it used to take every pick, the backup none). A try
    /// whose outcome never comes (the client went away) frees it after `interval`.
    #[test]
    fn a_retry_takes_one_request_and_the_backup_the_others() {
        let mut h = health();
        h.interval = Duration::from_millis(500);
        let members = [("p".to_string(), 1, false), ("b".to_string(), 1, true)];
        let p = Pool::new(Owner::Site, "t", members, Policy::RoundRobin, h, true, None);
        p.record(0, Outcome::Failed, Source::Traffic, None);
        p.record(0, Outcome::Failed, Source::Traffic, None);
        assert!(!p.members[0].state.is_up());
        assert_eq!(shares(&p, 10), [0, 10]);
        std::thread::sleep(Duration::from_millis(600));
        assert_eq!(shares(&p, 10), [1, 9]);
        std::thread::sleep(Duration::from_millis(600));
        assert_eq!(shares(&p, 10), [1, 9], "a try that never ended is freed after the interval");
    }

    /// A critical pool without active checks whose upstreams are all down (a reload took the
    /// checks away during an outage) is usable again once a retry is due: saying it cannot
    /// serve, it would get no traffic from the ingress, and so no retry, ever.
    #[test]
    fn a_down_pool_without_checks_is_usable_when_a_retry_is_due() {
        let mut h = health();
        h.interval = Duration::from_millis(100);
        h.check = Check::Tcp;
        let members = || [("a".to_string(), 1, false), ("b".to_string(), 1, false)];
        let checked = Pool::new(Owner::Site, "t", members(), Policy::RoundRobin, h.clone(), true, None);
        kill(&checked, 0);
        kill(&checked, 1);
        assert!(!checked.any_usable());
        h.check = Check::None;
        let p = Pool::new(Owner::Site, "t", members(), Policy::RoundRobin, h, true, Some(&checked));
        std::thread::sleep(Duration::from_millis(600));
        assert!(p.any_usable());
        // A UDP flow on a moves only to another upstream: b's due retry counts, a's own not.
        assert!(p.any_usable_besides(&p.members[0].state));
        p.members[1].state.drain.store(true, Ordering::Relaxed);
        assert!(p.any_usable() && !p.any_usable_besides(&p.members[0].state));
        p.members[1].state.drain.store(false, Ordering::Relaxed);
        assert!(p.pick(Tried::default()).is_some());
        // Drained, it is not.
        for m in &p.members {
            m.state.drain.store(true, Ordering::Relaxed);
        }
        assert!(!p.any_usable());
    }

    /// Two event loops failing the last two upstreams at once: one stays up (traffic alone
    /// never takes down the last usable one). 2,000 rounds, released together.
    #[test]
    fn two_failures_at_once_leave_one_upstream_up() {
        let mut h = health();
        h.fall = 1;
        for _ in 0..2000 {
            let members = [("a".to_string(), 1, false), ("b".to_string(), 1, false)];
            let p = Pool::new(Owner::Site, "t", members, Policy::RoundRobin, h.clone(), false, None);
            let go = std::sync::Barrier::new(2);
            std::thread::scope(|s| {
                for i in 0..2 {
                    let (p, go) = (&p, &go);
                    s.spawn(move || {
                        go.wait();
                        p.record(i, Outcome::Failed, Source::Traffic, None);
                    });
                }
            });
            assert!(p.members.iter().any(|m| m.state.is_up()), "both went down");
        }
    }

    #[test]
    fn reload_keeps_state_of_unchanged_upstreams_and_takes_new_weights() {
        let p = pool(&[(1, false), (1, false)], Policy::RoundRobin, None);
        kill(&p, 1);
        let q = pool(&[(1, false), (5, false), (2, false)], Policy::RoundRobin, Some(&p));
        assert!(q.members[0].state.is_up() && !q.members[1].state.is_up() && q.members[2].state.is_up());
        assert!(Arc::ptr_eq(&p.members[0].state, &q.members[0].state));
        assert_eq!(shares(&q, 300), [100, 0, 200]);
    }
}
