//! Scenario 3: both WANs cut (silent blackholes) under load: new connections reach home over the
//! yggdrasil mesh with none failing; connections established over the mesh survive the WANs
//! recovering; new connections go back to the WANs after recovery.

mod common;

use std::time::{Duration, Instant};

use netns::ingress::names;
use netns::loadgen::LoadConfig;
use netns::scenario::{self, path_counts};
use netns::topology::{Cut, Options, Role, Wan};
use netns::unix_ms;

/// Time allowed to notice both WANs dead, or one back.
const SWITCH_BOUND_MS: u64 = 3000;

#[test]
fn scenario3_both_wans_cut_mesh_carries() {
    let start = Instant::now();
    let mut t = common::build(Options::default());
    scenario::start_ingresses(&mut t).expect("start ingress on both nodes");
    common::phase(start, "ingress up on both nodes");

    let load = t
        .start_load(Role::Client, "load", scenario::standard_load(Duration::from_millis(10), Duration::from_secs(14)))
        .expect("start loadgen");
    std::thread::sleep(Duration::from_secs(2));
    let cut_ms = unix_ms();
    t.cut(Wan::Wan1, Cut::Blackhole).expect("cut wan1");
    t.cut(Wan::Wan2, Cut::Blackhole).expect("cut wan2");
    let cut_done_ms = unix_ms();
    common::phase(start, "wan1 and wan2 blackholed");
    for role in [Role::Ingress1, Role::Ingress2] {
        scenario::wait_paths(&t, role, &[("wan1", false), ("wan2", false)], Duration::from_secs(5))
            .expect("both WANs marked down");
    }
    let down_ms = unix_ms() - cut_ms;
    common::phase(start, &format!("both ingress nodes see both WANs down ({down_ms} ms after the cut)"));

    // Long-lived connections opened over the mesh, exchanging a line every 100 ms for 6 s.
    std::thread::sleep(Duration::from_millis(1500));
    let held_cfg = LoadConfig {
        interval: Duration::from_millis(200),
        duration: Duration::from_millis(1000),
        hold: Duration::from_secs(6),
        hold_every: Duration::from_millis(100),
        ..scenario::standard_load(Duration::from_millis(200), Duration::from_millis(1000))
    };
    let held = t.start_load(Role::Client, "held", held_cfg).expect("start held connections");
    std::thread::sleep(Duration::from_millis(2000));
    let restore_ms = unix_ms();
    t.restore(Wan::Wan1, Cut::Blackhole).expect("restore wan1");
    t.restore(Wan::Wan2, Cut::Blackhole).expect("restore wan2");
    // Under load the restore itself may take a while (once 3 s, on a busy machine): until it
    // has returned, the WANs may still be cut and the mesh rightly carries new connections.
    let restored_ms = unix_ms();
    common::phase(start, &format!("wan1 and wan2 restored ({} ms to restore)", restored_ms - restore_ms));
    for role in [Role::Ingress1, Role::Ingress2] {
        scenario::wait_paths(&t, role, &[("wan1", true), ("wan2", true)], Duration::from_secs(10))
            .expect("WANs back up");
    }
    let up_ms = unix_ms() - restored_ms;
    let h = held.finish(&mut t).expect("held result");
    let r = load.finish(&mut t).expect("loadgen result");
    let s = &r.summary;
    common::phase(
        start,
        &format!("load done: {} started, {} ok, {} failed, {} slow", s.started, s.ok, s.failed, s.slow),
    );

    let before = path_counts(&t, &r.records, 0, cut_ms);
    // Each window opens once its change is in place (the commands returned) and the bound
    // for noticing it has passed.
    let cut = path_counts(&t, &r.records, cut_done_ms + SWITCH_BOUND_MS, restore_ms);
    let after = path_counts(&t, &r.records, restored_ms + SWITCH_BOUND_MS, u64::MAX);
    let first_mesh = scenario::first_on_path_after(&t, &r.records, "mesh", cut_ms).map(|m| m - cut_ms);
    let last_mesh = scenario::last_on_path(&t, &r.records, "mesh").map(|m| m.saturating_sub(restored_ms));
    let held_paths = path_counts(&t, &h.records, 0, u64::MAX);
    let failovers = scenario::metric_sum(&t, names::MESH_FAILOVERS, &[]).unwrap_or(-1.0);
    common::report(&format!(
        "RESULT both WANs cut: first connection over the mesh {first_mesh:?} ms after the cut; \
         WANs marked down after {down_ms} ms; after restore, WANs up after {up_ms} ms, last new mesh \
         connection {last_mesh:?} ms after the restore; mesh failovers counted by the ingress nodes: {failovers}"
    ));
    eprintln!("per path: before {before:?}; cut {cut:?}; after {after:?}; held connections {held_paths:?}");

    let (in_flight, failed) = scenario::split_failures(&r.records, cut_done_ms);
    eprintln!("connections in flight over a WAN when it died: {} broke", in_flight.len());
    assert!(failed.is_empty(), "failed connections:\n{}", scenario::describe_failures(&failed, cut_ms));
    assert!(in_flight.len() <= 3, "too many broke in flight:\n{}", scenario::describe_failures(&in_flight, cut_ms));
    assert!(!before.contains_key("mesh"), "the mesh carried traffic before the cut: {before:?}");
    assert!(cut.get("mesh").copied().unwrap_or(0) > 50, "the mesh did not carry the traffic: {cut:?}");
    assert_eq!(cut.len(), 1, "only the mesh can carry traffic while both WANs are cut: {cut:?}");
    assert!(!after.contains_key("mesh"), "new connections stayed on the mesh after recovery: {after:?}");
    assert!(after.get("wan1").copied().unwrap_or(0) > 0 && after.get("wan2").copied().unwrap_or(0) > 0, "{after:?}");
    assert_eq!(
        h.summary.failed,
        0,
        "held mesh connections broke when the WANs came back:\n{}",
        scenario::describe_failures(&h.records, restore_ms)
    );
    assert!(h.summary.ok >= 3, "too few held connections: {:?}", h.summary);
    assert_eq!(held_paths.keys().copied().collect::<Vec<_>>(), vec!["mesh"], "held connections: {held_paths:?}");
    assert!(failovers >= 2.0, "each ingress should count a mesh failover, total {failovers}");
    common::phase(start, "done");
}
