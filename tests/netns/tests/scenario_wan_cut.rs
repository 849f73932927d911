//! Scenario 2: wan1 cut under continuous load (a new connection every 5 ms through both ingress
//! nodes), once by link down and once as a silent blackhole: zero failed client connections,
//! traffic moves to wan2 (none over wan1 once both nodes have marked it down), and the detection
//! time (cut -> last connection over wan1) is reported: a figure, not a bound.
//! After the cut is undone, wan1 carries traffic again.

mod common;

use std::time::{Duration, Instant};

use netns::ingress::names;
use netns::scenario::{self, path_counts};
use netns::topology::{Cut, Options, Role, Wan};
use netns::unix_ms;

fn wan1_cut_under_load(how: Cut) {
    let start = Instant::now();
    let mut t = common::build(Options::default());
    scenario::start_ingresses(&mut t).expect("start ingress on both nodes");
    common::phase(start, "ingress up on both nodes");

    let run = t
        .start_load(Role::Client, "load", scenario::standard_load(Duration::from_millis(5), Duration::from_secs(10)))
        .expect("start loadgen");
    std::thread::sleep(Duration::from_secs(2));
    let cut_ms = unix_ms();
    t.cut(Wan::Wan1, how).expect("cut wan1");
    let cut_done_ms = unix_ms();
    common::phase(start, &format!("wan1 cut ({how:?})"));
    scenario::wait_paths(&t, Role::Ingress1, &[("wan1", false), ("wan2", true)], Duration::from_secs(5))
        .expect("ingress1 marks wan1 down");
    let down_ms = unix_ms() - cut_ms;
    scenario::wait_paths(&t, Role::Ingress2, &[("wan1", false), ("wan2", true)], Duration::from_secs(5))
        .expect("ingress2 marks wan1 down");
    let both_down_ms = unix_ms();
    // Keep the cut for 4 s, and at least 1.5 s after both nodes marked wan1 down (the window
    // in which wan1 must carry nothing).
    let until = (cut_ms + 4000).max(both_down_ms + 1500);
    std::thread::sleep(Duration::from_millis(until.saturating_sub(unix_ms())));
    let restore_ms = unix_ms();
    t.restore(Wan::Wan1, how).expect("restore wan1");
    common::phase(start, "wan1 restored");
    scenario::wait_paths(&t, Role::Ingress1, &[("wan1", true)], Duration::from_secs(10)).expect("wan1 back up");
    let r = run.finish(&mut t).expect("loadgen result");
    let s = &r.summary;
    common::phase(
        start,
        &format!("load done: {} started, {} ok, {} failed, {} slow", s.started, s.ok, s.failed, s.slow),
    );

    let last_wan1 = scenario::last_on_path(&t, &r.records, "wan1").expect("wan1 carried traffic before the cut");
    let during: Vec<_> =
        r.records.iter().filter(|x| x.start_ms >= cut_ms && x.start_ms < restore_ms).cloned().collect();
    let last_wan1_during = during
        .iter()
        .filter(|x| x.ok && x.backend.as_deref().is_some_and(|b| t.path_of(b) == "wan1"))
        .map(|x| x.start_ms)
        .max();
    // From the cut in force (its command returned): a connection started before that may
    // rightly have gone over wan1, and a cut on a busy machine has once taken seconds to apply.
    let detection = last_wan1_during.map(|l| l.saturating_sub(cut_done_ms)).unwrap_or(0);
    let max_latency = during.iter().map(|x| x.latency_ms).fold(0.0, f64::max);
    // Connections that paid for a wan1 attempt (connect timeout 300 ms, then the next path).
    let delayed: Vec<_> = during.iter().filter(|x| x.latency_ms > 250.0).collect();
    let last_delayed = delayed.iter().map(|x| x.start_ms.saturating_sub(cut_ms)).max().unwrap_or(0);
    let before = path_counts(&t, &r.records, 0, cut_ms);
    let cut = path_counts(&t, &r.records, cut_ms, restore_ms);
    let after = path_counts(&t, &r.records, restore_ms + 1500, u64::MAX);
    common::report(&format!(
        "RESULT wan1 cut by {how:?}: detection (cut applied -> last new connection over wan1) = {detection} ms; \
         ingress1 marked wan1 down after {down_ms} ms; slowest connection during the cut {max_latency:.0} ms; \
         {} of {} connections slow (>500 ms); {} delayed >250 ms by a wan1 attempt, the last one \
         started {last_delayed} ms after the cut",
        s.slow,
        s.ok,
        delayed.len()
    ));
    eprintln!("per path: before {before:?}; during cut {cut:?}; after restore {after:?}");
    let failures = scenario::metric_sum(&t, names::PATH_CONNECT_FAILURES, &[("path", "wan1")]).unwrap_or(-1.0);
    eprintln!("ingress wan1 connect failures (retried on another path): {failures}");

    let (in_flight, failed) = scenario::split_failures(&r.records, cut_done_ms);
    eprintln!(
        "connections in flight over wan1 when it died (the cut took {} ms to apply): {} broke",
        cut_done_ms - cut_ms,
        in_flight.len()
    );
    assert!(failed.is_empty(), "failed connections:\n{}", scenario::describe_failures(&failed, cut_ms));
    assert!(in_flight.len() <= 3, "too many broke in flight:\n{}", scenario::describe_failures(&in_flight, cut_ms));
    assert!(last_wan1 > 0);
    let late = path_counts(&t, &r.records, both_down_ms, restore_ms);
    assert!(!late.contains_key("wan1"), "wan1 carried connections after both nodes marked it down: {late:?}");
    assert!(late.get("wan2").copied().unwrap_or(0) > 100, "wan2 did not take the traffic: {late:?}");
    assert!(after.get("wan1").copied().unwrap_or(0) > 0, "wan1 carried nothing after recovery: {after:?}");
    assert!(!cut.contains_key("mesh"), "the mesh was used while wan2 was up: {cut:?}");
    common::phase(start, "done");
}

#[test]
fn scenario2_wan1_link_down_under_load() {
    wan1_cut_under_load(Cut::LinkDown);
}

#[test]
fn scenario2_wan1_blackhole_under_load() {
    wan1_cut_under_load(Cut::Blackhole);
}
