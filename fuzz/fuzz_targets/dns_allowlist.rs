//! DNS answers → allowlist: whole DNS responses (the wire format hickory parses) mapped to
//! lookup outcomes (`shared::dns::outcome_of`) and fed to the sans-io tracker, one after the
//! other with the clock moving. No panic (TTLs up to 2^32 s, any clock), and the allowlist's
//! invariants hold: statics always in; every other address came from an answer of its own
//! family; an address leaves only when an answer for its family omits it.
//!
//! Input: byte 0 chooses the policy (open/closed before an answer, refresh bounds); then
//! records separated by `\xff\xfe`: each starts with a family/clock byte, then the response.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use hickory_proto::op::Message;
use shared::dns::{outcome_of, Allowlist, Family, OnNoAnswer, Outcome, Policy, Query, Tracker};

fn main() {
    afl::fuzz!(|data: &[u8]| {
        let Some((&knobs, rest)) = data.split_first() else { return };
        let policy = Policy {
            min_refresh: Duration::from_secs(u64::from(knobs & 0x0f) + 1),
            max_refresh: Duration::from_secs(3600 * (u64::from(knobs >> 4) + 1)),
            on_no_answer: if knobs & 0x80 != 0 { OnNoAnswer::Open } else { OnNoAnswer::Closed },
        };
        let statics: BTreeSet<IpAddr> = [IpAddr::from([192, 0, 2, 1])].into();
        let mut now = Instant::now();
        let mut t = Tracker::new(vec!["ingress.example.org".into()], statics.clone(), policy, now);
        let mut seen: BTreeSet<IpAddr> = BTreeSet::new();
        for chunk in split(rest) {
            let Some((&head, wire)) = chunk.split_first() else { continue };
            let family = if head & 1 == 0 { Family::V4 } else { Family::V6 };
            now += Duration::from_secs(u64::from(head >> 1) * 60);
            let _ = t.due(now);
            let outcome = match Message::from_vec(wire) {
                Ok(m) => outcome_of(m.answers(), family),
                Err(e) => Outcome::Failed { error: e.to_string() },
            };
            let before = t.addresses_of(0);
            let other_family: BTreeSet<IpAddr> = before.iter().copied().filter(|a| !family.matches(a)).collect();
            if let Outcome::Addresses { addrs, .. } = &outcome {
                seen.extend(addrs.iter().map(|a| a.to_canonical()));
            }
            let failed = matches!(outcome, Outcome::Failed { .. });
            t.record(Query { name: 0, family }, outcome, now);
            let after = t.addresses_of(0);
            assert!(other_family.is_subset(&after), "an answer removed another family's address");
            if failed {
                assert_eq!(before, after, "a failed lookup changed the list");
            }
            assert!(after.iter().all(|a| seen.contains(a)), "an address no answer gave");
            match t.allowlist() {
                Allowlist::Open => assert!(policy.on_no_answer == OnNoAnswer::Open && !t.any_answer()),
                Allowlist::Only(list) => {
                    assert!(statics.is_subset(&list));
                    assert!(list.iter().all(|a| statics.contains(a) || seen.contains(a)));
                }
            }
            assert!(t.next_wake().is_some_and(|w| w >= now) || t.next_wake().is_none());
        }
    });
}

/// Split on the two-byte separator `\xff\xfe` (at most 8 records: enough to move the clock).
fn split(data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i + 1 < data.len() && out.len() < 7 {
        if data[i] == 0xff && data[i + 1] == 0xfe {
            out.push(&data[start..i]);
            start = i + 2;
            i += 2;
        } else {
            i += 1;
        }
    }
    out.push(&data[start..]);
    out
}
