//! Sans-io decisions: which certificates (lineages) to keep, when each is due, and how long to
//! wait after a failure. No clock reads: callers pass `now` (Unix seconds).

use std::collections::BTreeSet;
use std::time::Duration;

/// One certificate ACME keeps: its folder under `live/` and the names it covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lineage {
    pub dir: String,
    pub names: Vec<String>,
}

/// The lineages for `wanted` names, given the certificates already in `live/` (folder, names):
/// a folder whose certificate covers wanted names is renewed in place with those of its names
/// still wanted (a certbot `live/` keeps its folders); every other wanted name gets a folder of
/// its own, so a name the CA refuses holds up no other.
pub fn lineages(wanted: &[String], existing: &[(String, Vec<String>)]) -> Vec<Lineage> {
    let mut left: BTreeSet<&str> = wanted.iter().map(String::as_str).collect();
    let mut out = Vec::new();
    let mut existing: Vec<&(String, Vec<String>)> = existing.iter().collect();
    existing.sort();
    for (dir, names) in &existing {
        let mut covered: Vec<String> = names.iter().filter(|n| left.contains(n.as_str())).cloned().collect();
        covered.sort();
        covered.dedup();
        if covered.is_empty() {
            continue;
        }
        for n in &covered {
            left.remove(n.as_str());
        }
        out.push(Lineage { dir: dir.clone(), names: covered });
    }
    // A new folder is named for its name, unless some folder already has that name (certbot
    // numbers its folders the same way).
    for name in left {
        let taken = |d: &str| out.iter().any(|l: &Lineage| l.dir == d) || existing.iter().any(|(e, _)| e == d);
        let mut dir = name.to_string();
        let mut n = 1;
        while taken(&dir) {
            dir = format!("{name}-{n:04}");
            n += 1;
        }
        out.push(Lineage { dir, names: vec![name.to_string()] });
    }
    out
}

/// Why a certificate is (or is not yet) renewed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// No usable certificate on disk.
    Missing,
    /// The certificate does not cover every name of its lineage.
    NamesChanged,
    /// Renew at this Unix time (two thirds of the lifetime, or in the CA's ARI window).
    At(i64),
}

/// When the certificate valid `not_before..not_after` covering `have` should be renewed to
/// cover `want` (both sorted).
pub fn due(have: Option<(&[String], i64, i64)>, want: &[String]) -> Due {
    let Some((names, not_before, not_after)) = have else {
        return Due::Missing;
    };
    if want.iter().any(|w| !names.contains(w)) {
        return Due::NamesChanged;
    }
    Due::At(two_thirds(not_before, not_after))
}

/// Two thirds into the lifetime (day 60 of Let's Encrypt's 90).
pub fn two_thirds(not_before: i64, not_after: i64) -> i64 {
    not_before + (not_after - not_before).max(0) * 2 / 3
}

/// A time in the CA's suggested window (RFC 9773 §4.2: uniformly at random within it); `unit`
/// is a random number in `0..1`. A window already begun means now.
pub fn ari_pick(start: i64, end: i64, unit: f64, now: i64) -> i64 {
    if end <= start {
        return start.max(now).min(end.max(now));
    }
    let t = start + ((end - start) as f64 * unit.clamp(0.0, 1.0)) as i64;
    if start <= now {
        now
    } else {
        t
    }
}

/// What the CA's renewal information (ARI) said of one certificate: the time picked in its
/// window, and when to ask again. It is the CA's word on that certificate alone: a different
/// one on disk (just renewed, or replaced by hand) is asked about afresh, or its renewal would
/// follow the old certificate's window, already begun (a new order at once).
#[derive(Debug, Default)]
pub struct Ari {
    /// The certificate (AKI, serial) the window is for.
    of: Option<(Vec<u8>, Vec<u8>)>,
    pub time: Option<i64>,
    pub next_check: i64,
}

impl Ari {
    /// Follow the certificate now on disk (its ARI identifier): another one forgets the window.
    pub fn follow(&mut self, id: Option<&(Vec<u8>, Vec<u8>)>) {
        if self.of.as_ref() != id {
            *self = Self { of: id.cloned(), time: None, next_check: 0 };
        }
    }
}

/// Whether a renewal at `pick` comes before the certificate ends (`not_after`, when known): a
/// CA's window past the end would leave the names without a valid certificate, and the
/// caller keeps its own plan (two thirds) instead.
pub fn in_time(pick: i64, not_after: Option<i64>) -> bool {
    not_after.is_none_or(|end| pick < end)
}

/// Wait before retry number `failures` (1 = first retry): `min` doubling up to `max`. With the
/// 2 min default no hour holds more than five failures for a name, Let's Encrypt's limit of
/// failed authorizations per name per account per hour.
pub fn backoff(failures: u32, min: Duration, max: Duration) -> Duration {
    let shift = failures.saturating_sub(1).min(30);
    min.saturating_mul(1u32 << shift).min(max)
}

/// The least wait after the CA refused an order for a rate limit. Its `Retry-After` is not
/// passed on by instant-acme; Let's Encrypt's limits run over hours to a week, so minutes of
/// backoff would only spend requests that are refused again.
pub const RATE_LIMITED_WAIT: Duration = Duration::from_secs(3600);

/// How a failed order ended, as far as the next one is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The CA refused an order that named the certificate it replaces (ARI's `replaces`).
    RefusedReplacing,
    /// Refused for a rate limit.
    RateLimited,
    /// Anything else: challenge, transport, storage, a refusal without `replaces`.
    Other,
}

/// After failure number `failures` (1 = the first): how long to wait, and whether the next
/// order may still name the certificate it replaces.
///
/// An order with `replaces` is refused for good when the CA already has a replacement order
/// for that certificate (RFC 9773 `alreadyReplaced`: an earlier order finalized, then its
/// certificate was lost to a timeout or a restart), or when another account issued it (a
/// certbot lineage taken over). Sent again it is refused again, until the certificate ends;
/// so the next order goes at once, without `replaces`, as an ordinary one.
pub fn after_failure(failures: u32, failure: Failure, min: Duration, max: Duration) -> (Duration, bool) {
    match failure {
        Failure::RefusedReplacing => (Duration::ZERO, false),
        Failure::RateLimited => (backoff(failures, min, max).max(RATE_LIMITED_WAIT.min(max)), true),
        Failure::Other => (backoff(failures, min, max), true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn existing_certbot_folders_are_kept_and_new_names_get_their_own() {
        let wanted = s(&["a.test", "www.a.test", "b.test", "c.test"]);
        let existing = vec![
            ("a.test".to_string(), s(&["a.test", "www.a.test", "old.a.test"])),
            ("unrelated".to_string(), s(&["x.test"])),
        ];
        let l = lineages(&wanted, &existing);
        assert_eq!(
            l,
            vec![
                Lineage { dir: "a.test".into(), names: s(&["a.test", "www.a.test"]) },
                Lineage { dir: "b.test".into(), names: s(&["b.test"]) },
                Lineage { dir: "c.test".into(), names: s(&["c.test"]) },
            ]
        );
    }

    #[test]
    fn a_name_in_two_folders_goes_to_the_first() {
        let existing = vec![("b".to_string(), s(&["n.test"])), ("a".to_string(), s(&["n.test"]))];
        assert_eq!(lineages(&s(&["n.test"]), &existing), vec![Lineage { dir: "a".into(), names: s(&["n.test"]) }]);
        // A folder of that name holding other names is left alone.
        let existing = vec![("n.test".to_string(), s(&["other.test"]))];
        assert_eq!(lineages(&s(&["n.test"]), &existing)[0].dir, "n.test-0001");
    }

    #[test]
    fn due_at_two_thirds_or_now_when_missing_or_short_of_names() {
        let names = s(&["a.test", "b.test"]);
        assert_eq!(due(None, &names), Due::Missing);
        assert_eq!(due(Some((&names[..1], 0, 90)), &names), Due::NamesChanged);
        assert_eq!(due(Some((&names, 0, 90)), &names[..1]), Due::At(60));
        assert_eq!(due(Some((&names, 1000, 1090)), &names), Due::At(1060));
    }

    #[test]
    fn an_ari_window_belongs_to_the_certificate_it_was_asked_for() {
        let (old, new) = ((vec![7], vec![1]), (vec![7], vec![2]));
        let mut ari = Ari::default();
        ari.follow(Some(&old));
        (ari.time, ari.next_check) = (Some(100), 500);
        ari.follow(Some(&old));
        assert_eq!((ari.time, ari.next_check), (Some(100), 500), "the same certificate keeps its window");
        ari.follow(Some(&new));
        assert_eq!((ari.time, ari.next_check), (None, 0), "a new serial is asked about at once");
        (ari.time, ari.next_check) = (Some(100), 500);
        ari.follow(None);
        assert_eq!((ari.time, ari.next_check), (None, 0), "no certificate: no window");
    }

    #[test]
    fn ari_picks_inside_the_window_or_now_once_it_began() {
        assert_eq!(ari_pick(100, 200, 0.5, 0), 150);
        assert_eq!(ari_pick(100, 200, 0.0, 0), 100);
        assert_eq!(ari_pick(100, 200, 0.9, 150), 150);
        assert_eq!(ari_pick(100, 100, 0.5, 0), 100);
        // A window past the certificate's end is not followed.
        assert!(in_time(ari_pick(100, 200, 0.5, 0), Some(151)));
        assert!(!in_time(ari_pick(100, 200, 0.5, 0), Some(150)));
        assert!(in_time(150, None));
    }

    #[test]
    fn backoff_doubles_to_the_cap_and_keeps_within_five_failures_an_hour() {
        let (min, max) = (Duration::from_secs(120), Duration::from_secs(6 * 3600));
        let waits: Vec<u64> = (1..=9).map(|f| backoff(f, min, max).as_secs()).collect();
        assert_eq!(waits, [120, 240, 480, 960, 1920, 3840, 7680, 15360, 21600]);
        assert_eq!(backoff(u32::MAX, min, max), max);
        // Attempt times: 0, then each wait after the previous. Any 3600 s window holds ≤ 5.
        let mut t = vec![0u64];
        for w in &waits {
            t.push(t[t.len() - 1] + w);
        }
        for start in &t {
            assert!(t.iter().filter(|x| **x >= *start && **x < start + 3600).count() <= 5);
        }
    }

    #[test]
    fn a_refused_replacement_goes_again_at_once_without_replaces_and_rate_limits_wait_an_hour() {
        let (min, max) = (Duration::from_secs(120), Duration::from_secs(6 * 3600));
        assert_eq!(after_failure(3, Failure::RefusedReplacing, min, max), (Duration::ZERO, false));
        assert_eq!(after_failure(1, Failure::Other, min, max), (min, true));
        assert_eq!(after_failure(1, Failure::RateLimited, min, max), (RATE_LIMITED_WAIT, true));
        assert_eq!(after_failure(9, Failure::RateLimited, min, max), (max, true));
        // A retry_max below the hour caps it.
        assert_eq!(after_failure(1, Failure::RateLimited, min, Duration::from_secs(600)).0, Duration::from_secs(600));
    }
}
