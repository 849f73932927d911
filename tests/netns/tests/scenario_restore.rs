//! Scenario (issue 20): give-back after a restore. Both WANs are cut (silent blackholes) under
//! load, so new connections go over the mesh; then both are restored at once. Probes of a down
//! path go every `down_interval` (100 ms) and overlap, so a restored WAN answers the first
//! probe sent after the restore, and the next comes at the fast pace until rise (2) is reached:
//! new connections go over the WANs again, none over the mesh once the nodes see a WAN up (how
//! soon after the restore is printed: a figure, not a bound; ~100-250 ms here). Then no state
//! change of any path for 30 s (the issue asks for a minute: the ignored
//! `..._quiet_for_a_minute` variant watches the full minute; CI's budget keeps this one at
//! 30 s), none held, and the WANs' health factors (slow start: a tenth of the share at first)
//! are printed as they grow back.

mod common;

use std::time::{Duration, Instant};

use netns::scenario::{self, path_counts};
use netns::topology::{Cut, Options, Role, Topology, Wan};
use netns::unix_ms;

/// Sum of `ingress_path_state_changes_total` over both nodes and every path and state.
fn state_changes(t: &Topology) -> f64 {
    scenario::metric_sum(t, "ingress_path_state_changes_total", &[]).expect("scrape the ingress nodes")
}

fn factors(t: &Topology) -> Vec<(String, f64)> {
    let mut v = Vec::new();
    for role in [Role::Ingress1, Role::Ingress2] {
        if let Ok(m) = t.scrape(role) {
            for wan in ["wan1", "wan2"] {
                let f = m.get("ingress_path_health_factor", &[("path", wan)]).unwrap_or(-1.0);
                v.push((format!("{}/{wan}", role.as_str()), (f * 1000.0).round() / 1000.0));
            }
        }
    }
    v
}

#[test]
fn both_wans_restored_give_back_without_flapping() {
    give_back(Duration::from_secs(30));
}

/// The full window: no flap during the minute after the restore.
#[test]
#[ignore = "75 s: the full minute after the restore (CI runs the 30 s variant)"]
fn both_wans_restored_give_back_and_quiet_for_a_minute() {
    give_back(Duration::from_secs(60));
}

/// Cut both WANs, restore them, and watch `quiet` (how long after the restore no path may
/// change state).
fn give_back(quiet: Duration) {
    let start = Instant::now();
    let mut t = common::build(Options::default());
    scenario::start_ingresses(&mut t).expect("start ingress on both nodes");
    common::phase(start, "ingress up on both nodes");
    let lead = Duration::from_secs(2);
    let cut_for = Duration::from_secs(3);
    let run = t
        .start_load(
            Role::Client,
            "load",
            scenario::standard_load(Duration::from_millis(5), lead + cut_for + quiet + Duration::from_secs(1)),
        )
        .expect("start loadgen");
    std::thread::sleep(lead);
    let changes_before = state_changes(&t);
    let penalty_before = scenario::metric_sum(&t, "ingress_path_flap_penalty", &[]).unwrap_or(-1.0);
    let cut_ms = unix_ms();
    for wan in [Wan::Wan1, Wan::Wan2] {
        t.cut(wan, Cut::Blackhole).expect("blackhole a WAN");
    }
    let cut_done_ms = unix_ms();
    for role in [Role::Ingress1, Role::Ingress2] {
        scenario::wait_paths(&t, role, &[("wan1", false), ("wan2", false)], Duration::from_secs(5))
            .expect("both WANs marked down");
    }
    common::phase(start, &format!("both WANs cut and marked down ({} ms)", unix_ms() - cut_ms));
    std::thread::sleep(cut_for.saturating_sub(Duration::from_millis(unix_ms() - cut_ms)));
    // The give-back is timed from the moment the first WAN is usable again: when its nft
    // command has returned (the command itself, a process started in the namespace, takes
    // 20-300 ms on a loaded machine; the time from its start is printed too).
    let restore_start_ms = unix_ms();
    t.restore(Wan::Wan1, Cut::Blackhole).expect("restore wan1");
    let restore_ms = unix_ms();
    t.restore(Wan::Wan2, Cut::Blackhole).expect("restore wan2");
    let restore_done_ms = unix_ms();
    let mut up_ms = Vec::new();
    for role in [Role::Ingress1, Role::Ingress2] {
        scenario::wait_paths(&t, role, &[("wan1", true), ("wan2", true)], Duration::from_secs(5)).expect("WANs back");
        up_ms.push(unix_ms() - restore_ms);
    }
    // Both nodes have both WANs up: every new connection from now on goes over one.
    let up_at_ms = unix_ms();
    let changes_at_up = state_changes(&t);
    let mut factor_samples = vec![(unix_ms() - restore_ms, factors(&t))];
    common::phase(start, "WANs restored and up on both nodes");
    while restore_ms + (quiet.as_millis() as u64) > unix_ms() {
        std::thread::sleep(Duration::from_secs(1));
        if factor_samples.len() < 8 {
            factor_samples.push((unix_ms() - restore_ms, factors(&t)));
        }
    }
    let changes_after = state_changes(&t);
    let held = scenario::metric_sum(&t, "ingress_path_held", &[]).unwrap_or(-1.0);
    let r = run.finish(&mut t).expect("loadgen result");
    let s = &r.summary;
    common::phase(
        start,
        &format!("load done: {} started, {} ok, {} failed, {} slow", s.started, s.ok, s.failed, s.slow),
    );

    let first_wan = ["wan1", "wan2"]
        .iter()
        .filter_map(|w| scenario::first_on_path_after(&t, &r.records, w, restore_ms))
        .min()
        .map(|f| f - restore_ms);
    let last_mesh = scenario::last_on_path(&t, &r.records, "mesh").map(|m| m as i64 - restore_ms as i64);
    let second = |from: u64| path_counts(&t, &r.records, restore_ms + from, restore_ms + from + 1000);
    common::report(&format!(
        "RESULT give-back after both WANs were cut: restore -> first new connection over a WAN {first_wan:?} ms \
         (timed from wan1's restore command returning; it took {} ms, wan2's {} ms \
         more); WANs up on the nodes {up_ms:?} ms after the \
         restore; last new mesh connection at restore{last_mesh:+?} ms; state changes: {} at the cut and back, {} in \
         the {} s after (penalty before the cut {penalty_before}, held at the end {held}); per path in the first \
         second {:?}, the second {:?}, the sixth {:?}; health factors (ms after restore, node/path) {factor_samples:?}",
        restore_ms - restore_start_ms,
        restore_done_ms - restore_ms,
        changes_at_up - changes_before,
        changes_after - changes_at_up,
        quiet.as_secs(),
        second(0),
        second(1000),
        second(5000),
    ));

    for role in [Role::Ingress1, Role::Ingress2] {
        let log = t.proc_mut(role.as_str()).map(|p| p.stderr()).unwrap_or_default();
        for l in log.lines().filter(|l| l.contains("state change")) {
            eprintln!("  {}: {l}", role.as_str());
        }
    }
    let (in_flight, failed) = scenario::split_failures(&r.records, cut_done_ms);
    assert!(failed.is_empty(), "failed connections:\n{}", scenario::describe_failures(&failed, cut_ms));
    assert!(in_flight.len() <= 3, "too many broke in flight:\n{}", scenario::describe_failures(&in_flight, cut_ms));
    assert_eq!(changes_before, 0.0, "a path changed state before the cut (a start-up wobble?)");
    // How soon the first one went over a WAN is a figure (RESULT above), not a bound: wall
    // time on 2 shared cores is no behaviour. That none took the mesh once the nodes saw a WAN
    // up is (below).
    assert!(first_wan.is_some(), "no new connection over a WAN after the restore");
    assert_eq!(changes_after, changes_at_up, "paths changed state in the {} s after the restore", quiet.as_secs());
    assert_eq!(held, 0.0, "a path is held down after a single cut");
    let late = path_counts(&t, &r.records, up_at_ms, u64::MAX);
    assert!(!late.contains_key("mesh"), "new connections took the mesh with the WANs up: {late:?}");
    common::phase(start, "done");
}
