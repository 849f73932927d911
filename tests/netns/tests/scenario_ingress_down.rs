//! Scenario 5: one ingress node dies; a client that has both ingress addresses (as DNS gives
//! them) keeps working through the other. Once killed outright (connects are refused at once),
//! once as a host that vanishes (its link cut: connects time out, then the client moves on).

mod common;

use std::time::{Duration, Instant};

use netns::loadgen::LoadConfig;
use netns::scenario;
use netns::topology::{addr, Options, Role};
use netns::unix_ms;

fn ingress1_gone(kill: bool) {
    let start = Instant::now();
    let mut t = common::build(Options { mesh: true, backends: true });
    scenario::start_ingresses(&mut t).expect("start ingress on both nodes");
    common::phase(start, "ingress up on both nodes");
    let cfg = LoadConfig {
        // A client's own connect timeout before it tries the next address.
        connect_timeout: Duration::from_millis(1000),
        ..scenario::standard_load(Duration::from_millis(5), Duration::from_secs(7))
    };
    let load = t.start_load(Role::Client, "load", cfg).expect("start loadgen");
    std::thread::sleep(Duration::from_secs(2));
    let gone_ms = unix_ms();
    if kill {
        t.proc_mut("ingress1").expect("ingress1 process").kill_hard().expect("SIGKILL ingress1");
        common::phase(start, "ingress1 killed (SIGKILL)");
    } else {
        netns::faults::link_down(t.ns(Role::Inet), "r-ing1").expect("cut ingress1's link");
        common::phase(start, "ingress1 unreachable (its link is down)");
    }
    let r = load.finish(&mut t).expect("loadgen result");
    let s = &r.summary;
    common::phase(
        start,
        &format!("load done: {} started, {} ok, {} failed, {} fell back", s.started, s.ok, s.failed, s.fallback),
    );

    let ingress2 = std::net::SocketAddr::from((addr::INGRESS2, addr::ECHO_PORT)).to_string();
    let after: Vec<_> = r.records.iter().filter(|x| x.start_ms > gone_ms + 50).collect();
    let failed_after: Vec<_> = after.iter().filter(|x| !x.ok).collect();
    let failed_before = r.records.iter().filter(|x| !x.ok && x.start_ms <= gone_ms + 50).count();
    let via2 = after.iter().filter(|x| x.ok && x.target.as_deref() == Some(&ingress2)).count();
    let max_latency = after.iter().map(|x| x.latency_ms).fold(0.0, f64::max);
    common::report(&format!(
        "RESULT ingress1 {}: {} connections after, {} failed, {via2} served by ingress2, {} fell back, \
         slowest {max_latency:.0} ms; {failed_before} connections in flight through ingress1 at that moment broke",
        if kill { "killed" } else { "unreachable" },
        after.len(),
        failed_after.len(),
        s.fallback
    ));
    assert!(
        failed_after.is_empty(),
        "connections failed after ingress1 went away:\n{}",
        scenario::describe_failures(&r.records, gone_ms)
    );
    // Only what was open through ingress1 at the moment of death may break (a few ms each).
    assert!(
        failed_before <= 10,
        "{failed_before} connections broke:\n{}",
        scenario::describe_failures(&r.records, gone_ms)
    );
    assert_eq!(via2, after.len(), "every connection after the loss went through ingress2");
    assert!(s.fallback > 0, "the client never had to fall back");
    common::phase(start, "done");
}

#[test]
fn scenario5_ingress_killed_client_uses_the_other() {
    ingress1_gone(true);
}

#[test]
fn scenario5_ingress_unreachable_client_uses_the_other() {
    ingress1_gone(false);
}
