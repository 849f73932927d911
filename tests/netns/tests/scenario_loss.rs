//! Scenario 4: wan2 degraded while wan1 is clean, once by 20% random packet loss (each
//! direction), once by 50 ms added delay each way (the NFQUEUE delayer): the health-weighted
//! share moves towards wan1 without taking wan2 to zero unless it fails checks; no client
//! connection fails.

mod common;

use std::time::{Duration, Instant};

use netns::ingress::names;
use netns::loadgen::LoadConfig;
use netns::scenario::{self, path_counts};
use netns::topology::{Options, Role, Wan};
use netns::unix_ms;

#[derive(Debug, Clone, Copy)]
enum Degrade {
    Loss20,
    Delay50,
}

#[test]
fn scenario4_wan2_loss_shifts_share_to_wan1() {
    wan2_degraded(Degrade::Loss20);
}

#[test]
fn scenario4_wan2_delay_shifts_share_to_wan1() {
    wan2_degraded(Degrade::Delay50);
}

fn wan2_degraded(how: Degrade) {
    let start = Instant::now();
    let mut t = common::build(Options::default());
    // A connection that fails here is one TCP could not carry through the loss within 15 s
    // (rare: it has never shown outside a full run), or a fault of the ingress: its log tells.
    t.log_ingress_connections();
    scenario::start_ingresses(&mut t).expect("start ingress on both nodes");
    common::phase(start, "ingress up on both nodes");

    let cfg = LoadConfig {
        // Lost segments are retransmitted (200 ms, 400 ms, ...): give exchanges time.
        io_timeout: Duration::from_secs(15),
        ..scenario::standard_load(Duration::from_millis(5), Duration::from_secs(16))
    };
    let load = t.start_load(Role::Client, "load", cfg).expect("start loadgen");
    std::thread::sleep(Duration::from_secs(5));
    let loss_ms = unix_ms();
    match how {
        Degrade::Loss20 => t.loss(Wan::Wan2, 20).expect("20% loss on wan2"),
        Degrade::Delay50 => t.delay(Wan::Wan2, 50).expect("50 ms delay on wan2"),
    }
    common::phase(start, &format!("wan2 degraded: {how:?} (each way)"));
    let mut factors = Vec::new();
    let mut wan2_ever_down = false;
    for _ in 0..10 {
        std::thread::sleep(Duration::from_secs(1));
        if let Ok(m) = t.scrape(Role::Ingress1) {
            factors.push(m.get(names::PATH_HEALTH_FACTOR, &[("path", "wan2")]).unwrap_or(f64::NAN));
            wan2_ever_down |= m.get(names::PATH_UP, &[("path", "wan2")]) == Some(0.0);
        }
    }
    // What wan2's factor is made of at the end: its delivered quality (loss only: latency
    // counts once, in the latency term) and what fed it.
    let parts = t.scrape(Role::Ingress1).ok().map(|m| {
        let wan2 = |name: &str| m.get(name, &[("path", "wan2")]).unwrap_or(f64::NAN);
        format!(
            "quality loss {:.4}, hedges {}, connect failures {}, retransmitted segments {}",
            wan2("ingress_path_quality_loss"),
            wan2("ingress_path_hedges_total"),
            wan2(names::PATH_CONNECT_FAILURES),
            wan2("ingress_path_retransmitted_segments_total"),
        )
    });
    let r = load.finish(&mut t).expect("loadgen result");
    let s = &r.summary;
    common::phase(
        start,
        &format!("load done: {} started, {} ok, {} failed, {} slow", s.started, s.ok, s.failed, s.slow),
    );

    let base = path_counts(&t, &r.records, s.start_ms + 1000, loss_ms);
    let degraded = path_counts(&t, &r.records, loss_ms + 3000, u64::MAX);
    let share2 = |m: &std::collections::BTreeMap<&str, u64>| {
        let (a, b) = (m.get("wan1").copied().unwrap_or(0) as f64, m.get("wan2").copied().unwrap_or(0) as f64);
        b / (a + b).max(1.0)
    };
    let (b2, d2) = (share2(&base), share2(&degraded));
    common::report(&format!(
        "RESULT wan2 {how:?}: wan2 share {b2:.3} before -> {d2:.3} after (baseline weights give 0.25); \
         ingress1 wan2 health factor per second: {factors:.3?}; at the end on ingress1 wan2 {}; wan2 marked down at some point: {wan2_ever_down}; \
         latency {:?}",
        parts.unwrap_or_default(),
        s.latency_ms
    ));
    eprintln!("per path: before {base:?}; degraded {degraded:?}");
    if s.failed > 0 {
        panic!(
            "{} failed connections:\n{}",
            s.failed,
            scenario::failures_with_ingress_logs(&mut t, &r.records, loss_ms)
        );
    }
    assert!((0.15..=0.35).contains(&b2), "baseline wan2 share {b2:.3} not near 0.25: {base:?}");
    assert!(d2 < b2 * 0.8, "wan2's share did not move towards wan1: {b2:.3} -> {d2:.3}");
    assert!(
        d2 > 0.0 || wan2_ever_down,
        "wan2 got no traffic at all though its health checks never failed: {degraded:?}"
    );
    common::phase(start, "done");
}
