//! Names → addresses with their expiry, sans-io (the local proxy's allowlist, the ingress's
//! paths by name). It is fed
//! lookup outcomes and `now`, and says which lookups are due, what the allowlist is and when to
//! wake next. Invariants: an address leaves only when an answer for its name and family omits it
//! (a failed or timed-out lookup keeps the last known addresses); static addresses are always in;
//! before any answer the list is closed (statics only) or open, as configured.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// What a list does before any DNS answer has arrived (start-up with DNS down); in a config
/// `closed` or `open`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnNoAnswer {
    /// Only static addresses pass (default).
    Closed,
    /// Everything passes until the first answer.
    Open,
}

/// Address family of one lookup (A or AAAA).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn matches(self, ip: &IpAddr) -> bool {
        matches!((self, ip), (Family::V4, IpAddr::V4(_)) | (Family::V6, IpAddr::V6(_)))
    }

    /// The DNS record type, for logs and metric labels.
    pub fn record(self) -> &'static str {
        match self {
            Family::V4 => "A",
            Family::V6 => "AAAA",
        }
    }
}

/// One lookup: a configured name (by index) and a family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Query {
    pub name: usize,
    pub family: Family,
}

/// What one lookup produced.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Addresses with the smallest TTL among the records.
    Addresses { addrs: Vec<IpAddr>, ttl: Duration },
    /// The server says there is no such record (NXDOMAIN or no data), with the negative TTL if known.
    NoRecords { ttl: Option<Duration> },
    /// Timeout, refused, unreachable, SERVFAIL...: nothing learnt.
    Failed { error: String },
}

/// The set the firewall should hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Allowlist {
    /// No answer yet and `on_no_answer = "open"`: the protected ports are not filtered.
    Open,
    /// Only these sources pass.
    Only(BTreeSet<IpAddr>),
}

impl Allowlist {
    /// The addresses (empty for `Open`).
    pub fn addresses(&self) -> BTreeSet<IpAddr> {
        match self {
            Allowlist::Open => BTreeSet::new(),
            Allowlist::Only(a) => a.clone(),
        }
    }
}

/// What [`Tracker::record`] changed, for logs and metrics.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Change {
    pub added: BTreeSet<IpAddr>,
    pub removed: BTreeSet<IpAddr>,
    /// A failure kept these addresses (the last known).
    pub kept: Option<BTreeSet<IpAddr>>,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |s: &BTreeSet<IpAddr>| s.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(" ");
        write!(f, "added [{}] removed [{}]", list(&self.added), list(&self.removed))
    }
}

#[derive(Debug, Clone)]
struct Entry {
    addrs: BTreeSet<IpAddr>,
    answered: bool,
    next: Instant,
    in_flight: bool,
    failures: u32,
}

/// Refresh bounds.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub min_refresh: Duration,
    pub max_refresh: Duration,
    pub on_no_answer: OnNoAnswer,
}

impl Policy {
    fn clamp(&self, ttl: Duration) -> Duration {
        ttl.clamp(self.min_refresh, self.max_refresh)
    }

    /// Retry delay after `failures` consecutive failures: min_refresh doubling, at most max_refresh.
    fn retry(&self, failures: u32) -> Duration {
        let factor = 1u32 << failures.saturating_sub(1).min(6);
        self.min_refresh.saturating_mul(factor).min(self.max_refresh)
    }
}

/// Names, their last known addresses and when to ask again.
#[derive(Debug, Clone)]
pub struct Tracker {
    names: Vec<String>,
    statics: BTreeSet<IpAddr>,
    entries: BTreeMap<Query, Entry>,
    policy: Policy,
    /// A tracker this one replaced had an answer (see [`Tracker::inherit`]).
    answered_before: bool,
}

impl Tracker {
    /// Every name in both families; every lookup is due at `now`.
    pub fn new(names: Vec<String>, statics: BTreeSet<IpAddr>, policy: Policy, now: Instant) -> Self {
        let queries: Vec<Query> =
            (0..names.len()).flat_map(|name| [Family::V4, Family::V6].map(|family| Query { name, family })).collect();
        Self::with_queries(names, queries, statics, policy, now)
    }

    /// Only the lookups given (a name may be wanted in one family only); all due at `now`.
    /// Queries naming no entry of `names` are ignored.
    pub fn with_queries(
        names: Vec<String>,
        queries: impl IntoIterator<Item = Query>,
        statics: BTreeSet<IpAddr>,
        policy: Policy,
        now: Instant,
    ) -> Self {
        let entries = queries
            .into_iter()
            .filter(|q| q.name < names.len())
            .map(|q| (q, Entry { addrs: BTreeSet::new(), answered: false, next: now, in_flight: false, failures: 0 }))
            .collect();
        Self { names, statics, entries, policy, answered_before: false }
    }

    /// Takes over what `old` knows (a reload replacing the names or the policy): each lookup
    /// of a name both trackers list, in the same family, keeps its last known addresses, its
    /// answered flag, its failure count and its next time, moved no later than `now` plus the
    /// new `max_refresh` (a lookup `old` had in flight is due at once). Lookups only this
    /// tracker has stay due at `now`. Whether `old` ever had an answer carries over, so
    /// `on_no_answer = "open"` does not open a list again that DNS has already answered.
    pub fn inherit(&mut self, old: &Tracker, now: Instant) {
        let latest = crate::ports::deadline(now, self.policy.max_refresh);
        for (q, e) in self.entries.iter_mut() {
            let Some(name) = self.names.get(q.name) else { continue };
            let Some(index) = old.names.iter().position(|n| n == name) else { continue };
            let Some(before) = old.entries.get(&Query { name: index, family: q.family }) else { continue };
            e.addrs = before.addrs.clone();
            e.answered = before.answered;
            e.failures = before.failures;
            e.next = if before.in_flight { now } else { before.next.min(latest) };
        }
        self.answered_before = old.any_answer();
    }

    /// What is known of one lookup: its last known addresses, whether it was ever answered,
    /// and how many lookups in a row have failed since (0: the last one answered).
    pub fn state(&self, q: Query) -> Option<(&BTreeSet<IpAddr>, bool, u32)> {
        self.entries.get(&q).map(|e| (&e.addrs, e.answered, e.failures))
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    pub fn name(&self, q: Query) -> &str {
        self.names.get(q.name).map(String::as_str).unwrap_or("?")
    }

    /// Lookups due at `now`, marked in flight until [`Tracker::record`] gets their outcome.
    pub fn due(&mut self, now: Instant) -> Vec<Query> {
        let mut out = Vec::new();
        for (q, e) in self.entries.iter_mut() {
            if !e.in_flight && e.next <= now {
                e.in_flight = true;
                out.push(*q);
            }
        }
        out
    }

    /// Feed the outcome of lookup `q`, finished at `now`.
    pub fn record(&mut self, q: Query, outcome: Outcome, now: Instant) -> Change {
        let policy = self.policy;
        let Some(e) = self.entries.get_mut(&q) else {
            return Change::default();
        };
        e.in_flight = false;
        let (new, wait) = match outcome {
            Outcome::Addresses { addrs, ttl } => {
                let set = addrs.into_iter().filter(|a| q.family.matches(a)).map(|a| a.to_canonical()).collect();
                (set, policy.clamp(ttl))
            }
            Outcome::NoRecords { ttl } => (BTreeSet::new(), policy.clamp(ttl.unwrap_or(policy.min_refresh))),
            Outcome::Failed { .. } => {
                e.failures = e.failures.saturating_add(1);
                // Backing off spares a resolver the questions whose answers are known
                // meanwhile. A query never answered has nothing to keep: every retry may be the
                // one that lets its addresses in (after a power cut, the router's DNS comes up
                // minutes after this host, and a firewall closed until then would stay closed
                // for up to 64 × min_refresh after it).
                let wait =
                    if e.answered || !e.addrs.is_empty() { policy.retry(e.failures) } else { policy.min_refresh };
                e.next = crate::ports::deadline(now, wait);
                return Change { kept: Some(e.addrs.clone()), ..Change::default() };
            }
        };
        let change = Change {
            added: new.difference(&e.addrs).copied().collect(),
            removed: e.addrs.difference(&new).copied().collect(),
            kept: None,
        };
        e.addrs = new;
        e.answered = true;
        e.failures = 0;
        e.next = crate::ports::deadline(now, wait);
        change
    }

    /// Whether any lookup has been answered (addresses or "no such record"), here or in a
    /// tracker this one inherited from.
    pub fn any_answer(&self) -> bool {
        self.answered_before || self.entries.values().any(|e| e.answered)
    }

    /// What the firewall should hold now.
    pub fn allowlist(&self) -> Allowlist {
        if !self.names.is_empty() && !self.any_answer() && self.policy.on_no_answer == OnNoAnswer::Open {
            return Allowlist::Open;
        }
        let mut all = self.statics.clone();
        for e in self.entries.values() {
            all.extend(e.addrs.iter().copied());
        }
        Allowlist::Only(all)
    }

    /// The closed form of the current list (statics and last known addresses), for shutdown.
    pub fn closed(&self) -> Allowlist {
        let mut all = self.statics.clone();
        for e in self.entries.values() {
            all.extend(e.addrs.iter().copied());
        }
        Allowlist::Only(all)
    }

    /// Last known addresses of name `index`, both families.
    pub fn addresses_of(&self, index: usize) -> BTreeSet<IpAddr> {
        self.entries.iter().filter(|(q, _)| q.name == index).flat_map(|(_, e)| e.addrs.iter().copied()).collect()
    }

    /// The earliest time a lookup not in flight is due; `None` with no names.
    pub fn next_wake(&self) -> Option<Instant> {
        self.entries.values().filter(|e| !e.in_flight).map(|e| e.next).min()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(2);
    const MAX: Duration = Duration::from_secs(60);

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn tracker(names: &[&str], statics: &[&str], on_no_answer: OnNoAnswer, now: Instant) -> Tracker {
        let policy = Policy { min_refresh: MIN, max_refresh: MAX, on_no_answer };
        Tracker::new(
            names.iter().map(|s| s.to_string()).collect(),
            statics.iter().map(|s| ip(s)).collect(),
            policy,
            now,
        )
    }

    fn q(name: usize, family: Family) -> Query {
        Query { name, family }
    }

    fn addrs(list: &[&str], ttl: u64) -> Outcome {
        Outcome::Addresses { addrs: list.iter().map(|s| ip(s)).collect(), ttl: Duration::from_secs(ttl) }
    }

    fn failed() -> Outcome {
        Outcome::Failed { error: "timed out".into() }
    }

    fn only(list: &[&str]) -> Allowlist {
        Allowlist::Only(list.iter().map(|s| ip(s)).collect())
    }

    #[test]
    fn everything_due_at_start_then_by_ttl_clamped() {
        let t0 = Instant::now();
        let mut t = tracker(&["a.example", "b.example"], &[], OnNoAnswer::Closed, t0);
        let due = t.due(t0);
        assert_eq!(due.len(), 4);
        // In flight: not due again, and not a reason to wake.
        assert!(t.due(t0).is_empty());
        assert_eq!(t.next_wake(), None);
        t.record(q(0, Family::V4), addrs(&["192.0.2.11"], 30), t0);
        t.record(q(0, Family::V6), Outcome::NoRecords { ttl: Some(Duration::from_secs(3600)) }, t0);
        t.record(q(1, Family::V4), addrs(&["192.0.2.19"], 0), t0);
        t.record(q(1, Family::V6), addrs(&["2001:db8::19"], 300), t0);
        // TTL 0 is raised to min_refresh, 3600 lowered to max_refresh.
        assert_eq!(t.next_wake(), Some(t0 + MIN));
        assert_eq!(t.due(t0 + MIN), vec![q(1, Family::V4)]);
        assert_eq!(t.next_wake(), Some(t0 + Duration::from_secs(30)));
        assert_eq!(t.due(t0 + Duration::from_secs(30)), vec![q(0, Family::V4)]);
        let mut later = t.due(t0 + MAX);
        later.sort();
        assert_eq!(later, vec![q(0, Family::V6), q(1, Family::V6)]);
        assert_eq!(t.allowlist(), only(&["192.0.2.11", "192.0.2.19", "2001:db8::19"]));
    }

    #[test]
    fn failure_keeps_last_known_and_backs_off() {
        let t0 = Instant::now();
        let mut t = tracker(&["a.example"], &[], OnNoAnswer::Closed, t0);
        t.due(t0);
        t.record(q(0, Family::V4), addrs(&["192.0.2.11", "192.0.2.12"], 5), t0);
        t.record(q(0, Family::V6), Outcome::NoRecords { ttl: Some(MAX) }, t0);
        let t1 = t0 + Duration::from_secs(5);
        assert_eq!(t.due(t1), vec![q(0, Family::V4)]);
        let change = t.record(q(0, Family::V4), failed(), t1);
        assert_eq!(change.kept.unwrap().len(), 2);
        assert!(change.added.is_empty() && change.removed.is_empty());
        assert_eq!(t.allowlist(), only(&["192.0.2.11", "192.0.2.12"]));
        // Retries back off: min_refresh, then twice that, ...
        assert!(t.due(t1 + MIN - Duration::from_millis(1)).iter().all(|x| x.family != Family::V4));
        let t2 = t1 + MIN;
        assert!(t.due(t2).contains(&q(0, Family::V4)));
        t.record(q(0, Family::V4), failed(), t2);
        let wake = t.entries[&q(0, Family::V4)].next;
        assert_eq!(wake, t2 + MIN * 2);
        // Many failures: bounded by max_refresh, and the addresses are still there.
        let mut now = t2;
        for _ in 0..20 {
            now = t.entries[&q(0, Family::V4)].next;
            t.due(now);
            t.record(q(0, Family::V4), failed(), now);
        }
        assert_eq!(t.entries[&q(0, Family::V4)].next, now + MAX);
        assert_eq!(t.allowlist(), only(&["192.0.2.11", "192.0.2.12"]));
        // An answer resets the backoff and replaces the set.
        t.due(now + MAX);
        let change = t.record(q(0, Family::V4), addrs(&["192.0.2.12", "192.0.2.13"], 10), now + MAX);
        assert_eq!(change.added, [ip("192.0.2.13")].into());
        assert_eq!(change.removed, [ip("192.0.2.11")].into());
        assert_eq!(t.allowlist(), only(&["192.0.2.12", "192.0.2.13"]));
        assert_eq!(t.entries[&q(0, Family::V4)].failures, 0);
    }

    /// A query never answered since start is retried every min_refresh, however often it
    /// fails: it backs off once it has been answered.
    #[test]
    fn a_query_never_answered_is_retried_without_backing_off() {
        let t0 = Instant::now();
        let mut t = tracker(&["a.example"], &[], OnNoAnswer::Closed, t0);
        let mut now = t0;
        for i in 0..8 {
            assert!(t.due(now).contains(&q(0, Family::V4)), "retry {i}");
            t.record(q(0, Family::V4), failed(), now);
            assert_eq!(t.entries[&q(0, Family::V4)].next, now + MIN, "retry {i}");
            now += MIN;
        }
        assert_eq!(t.allowlist(), only(&[]));
        t.due(now);
        t.record(q(0, Family::V4), addrs(&["192.0.2.11"], 5), now);
        assert_eq!(t.allowlist(), only(&["192.0.2.11"]));
        let later = now + Duration::from_secs(5);
        t.due(later);
        t.record(q(0, Family::V4), failed(), later);
        t.due(later + MIN);
        t.record(q(0, Family::V4), failed(), later + MIN);
        assert_eq!(t.entries[&q(0, Family::V4)].next, later + MIN * 3, "answered once: backs off again");
    }

    #[test]
    fn address_leaves_only_when_the_record_says_so() {
        let t0 = Instant::now();
        let mut t = tracker(&["a.example"], &[], OnNoAnswer::Closed, t0);
        t.due(t0);
        t.record(q(0, Family::V4), addrs(&["192.0.2.11"], 5), t0);
        t.record(q(0, Family::V6), addrs(&["2001:db8::11"], 5), t0);
        // The AAAA record goes away (NODATA): its address goes, the A record's stays.
        t.due(t0 + MAX);
        t.record(q(0, Family::V6), Outcome::NoRecords { ttl: Some(Duration::from_secs(5)) }, t0 + MAX);
        t.record(q(0, Family::V4), failed(), t0 + MAX);
        assert_eq!(t.allowlist(), only(&["192.0.2.11"]));
        // An answer of the wrong family is ignored rather than trusted.
        t.due(t0 + MAX * 4);
        t.record(q(0, Family::V4), addrs(&["2001:db8::99", "192.0.2.11"], 5), t0 + MAX * 4);
        assert_eq!(t.addresses_of(0), [ip("192.0.2.11")].into());
    }

    #[test]
    fn statics_always_and_ipv4_mapped_canonical() {
        let t0 = Instant::now();
        let mut t = tracker(&["a.example"], &["203.0.113.50"], OnNoAnswer::Closed, t0);
        assert_eq!(t.allowlist(), only(&["203.0.113.50"]));
        t.due(t0);
        t.record(q(0, Family::V4), Outcome::NoRecords { ttl: None }, t0);
        t.record(q(0, Family::V6), addrs(&["::ffff:192.0.2.11"], 5), t0);
        // An IPv4-mapped address in an AAAA answer is canonicalised: it lands in the IPv4 set.
        assert_eq!(t.allowlist(), only(&["203.0.113.50", "192.0.2.11"]));
    }

    #[test]
    fn no_answer_closed_by_default_open_if_configured() {
        let t0 = Instant::now();
        let mut closed = tracker(&["a.example"], &["203.0.113.50"], OnNoAnswer::Closed, t0);
        closed.due(t0);
        closed.record(q(0, Family::V4), failed(), t0);
        closed.record(q(0, Family::V6), failed(), t0);
        assert_eq!(closed.allowlist(), only(&["203.0.113.50"]));

        let mut open = tracker(&["a.example"], &[], OnNoAnswer::Open, t0);
        assert_eq!(open.allowlist(), Allowlist::Open);
        open.due(t0);
        open.record(q(0, Family::V4), failed(), t0);
        assert_eq!(open.allowlist(), Allowlist::Open);
        assert_eq!(open.closed(), only(&[]));
        // The first answer (even "no such record") ends the open period.
        open.record(q(0, Family::V6), Outcome::NoRecords { ttl: None }, t0);
        assert_eq!(open.allowlist(), only(&[]));
        assert!(open.any_answer());
    }

    #[test]
    fn only_the_queries_asked_for() {
        let t0 = Instant::now();
        let policy = Policy { min_refresh: MIN, max_refresh: MAX, on_no_answer: OnNoAnswer::Closed };
        let queries = [q(0, Family::V6), q(1, Family::V4), q(7, Family::V4)];
        let mut t =
            Tracker::with_queries(vec!["a.example".into(), "b.example".into()], queries, BTreeSet::new(), policy, t0);
        assert_eq!(t.due(t0), vec![q(0, Family::V6), q(1, Family::V4)]);
        assert_eq!(t.state(q(0, Family::V6)), Some((&BTreeSet::new(), false, 0)));
        t.record(q(0, Family::V6), addrs(&["2001:db8::1"], 5), t0);
        t.record(q(1, Family::V4), failed(), t0);
        assert_eq!(t.state(q(0, Family::V6)), Some((&[ip("2001:db8::1")].into(), true, 0)));
        assert_eq!(t.state(q(1, Family::V4)), Some((&BTreeSet::new(), false, 1)));
        assert_eq!(t.state(q(0, Family::V4)), None);
    }

    #[test]
    fn inherit_keeps_names_that_stay_and_asks_new_ones_at_once() {
        let t0 = Instant::now();
        let mut old = tracker(&["a.example", "b.example", "gone.example"], &[], OnNoAnswer::Closed, t0);
        old.due(t0);
        old.record(q(0, Family::V4), addrs(&["192.0.2.11"], 30), t0);
        old.record(q(0, Family::V6), addrs(&["2001:db8::11"], 50), t0);
        old.record(q(1, Family::V4), addrs(&["192.0.2.19"], 40), t0);
        old.record(q(1, Family::V6), failed(), t0);
        old.record(q(2, Family::V4), addrs(&["192.0.2.99"], 30), t0);
        old.record(q(2, Family::V6), Outcome::NoRecords { ttl: None }, t0);
        // The new list: b and a swap places, gone leaves, new arrives; max_refresh shrinks.
        let t1 = t0 + Duration::from_secs(1);
        let policy =
            Policy { min_refresh: MIN, max_refresh: Duration::from_secs(20), on_no_answer: OnNoAnswer::Closed };
        let names = ["b.example", "new.example", "a.example"].map(String::from).to_vec();
        let mut t = Tracker::new(names, BTreeSet::new(), policy, t1);
        t.inherit(&old, t1);
        // Kept names keep their addresses: no gap, and gone.example's address is not carried.
        assert_eq!(t.allowlist(), only(&["192.0.2.11", "2001:db8::11", "192.0.2.19"]));
        assert_eq!(t.addresses_of(0), [ip("192.0.2.19")].into());
        assert_eq!(t.addresses_of(2), [ip("192.0.2.11"), ip("2001:db8::11")].into());
        assert_eq!(t.state(q(0, Family::V6)), Some((&BTreeSet::new(), false, 1)));
        // Only the new name is due at once; the kept ones keep their time, at most now + the
        // new max_refresh (a's A record was due at t0+30, now t1+20; b's AAAA retry stays).
        let mut due = t.due(t1);
        due.sort();
        assert_eq!(due, vec![q(1, Family::V4), q(1, Family::V6)]);
        assert_eq!(t.entries[&q(2, Family::V4)].next, t1 + Duration::from_secs(20));
        assert_eq!(t.entries[&q(0, Family::V6)].next, t0 + MIN);
        assert_eq!(t.entries[&q(0, Family::V4)].next, t1 + Duration::from_secs(20));
        // The new name's answer adds to the list; nothing else moves.
        t.record(q(1, Family::V4), addrs(&["192.0.2.27"], 30), t1);
        assert_eq!(t.allowlist(), only(&["192.0.2.11", "2001:db8::11", "192.0.2.19", "192.0.2.27"]));
        // A lookup the old tracker had in flight is asked again at once.
        let t2 = t0 + MAX;
        let mut busy = tracker(&["a.example"], &[], OnNoAnswer::Closed, t0);
        busy.due(t0);
        busy.record(q(0, Family::V4), addrs(&["192.0.2.11"], 1), t0);
        busy.record(q(0, Family::V6), addrs(&["2001:db8::11"], 60), t0);
        assert_eq!(busy.due(t2), vec![q(0, Family::V4), q(0, Family::V6)]);
        let mut after = tracker(&["a.example"], &[], OnNoAnswer::Closed, t2);
        after.inherit(&busy, t2);
        assert_eq!(after.due(t2).len(), 2);
        assert_eq!(after.allowlist(), only(&["192.0.2.11", "2001:db8::11"]));
    }

    #[test]
    fn inherited_answer_keeps_open_mode_closed() {
        let t0 = Instant::now();
        let mut old = tracker(&["a.example"], &[], OnNoAnswer::Open, t0);
        old.due(t0);
        old.record(q(0, Family::V4), Outcome::NoRecords { ttl: None }, t0);
        old.record(q(0, Family::V6), failed(), t0);
        assert_eq!(old.allowlist(), only(&[]));
        // Only new names, none answered yet: DNS has answered before, so the list stays closed.
        let mut t = tracker(&["b.example"], &[], OnNoAnswer::Open, t0);
        assert_eq!(t.allowlist(), Allowlist::Open);
        t.inherit(&old, t0);
        assert!(t.any_answer());
        assert_eq!(t.allowlist(), only(&[]));
        // Never answered before: a reload stays open until the first answer, as at start-up.
        let never = tracker(&["a.example"], &[], OnNoAnswer::Open, t0);
        let mut t = tracker(&["b.example"], &[], OnNoAnswer::Open, t0);
        t.inherit(&never, t0);
        assert_eq!(t.allowlist(), Allowlist::Open);
    }

    #[test]
    fn no_names_means_statics_and_no_wake() {
        let t0 = Instant::now();
        let mut t = tracker(&[], &["192.0.2.1"], OnNoAnswer::Open, t0);
        assert!(t.due(t0).is_empty());
        assert_eq!(t.next_wake(), None);
        // Open mode waits for a first answer; with no names there is none to wait for.
        assert_eq!(t.allowlist(), only(&["192.0.2.1"]));
    }
}
