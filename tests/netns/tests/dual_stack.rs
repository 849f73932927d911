//! Dual-stack WANs (issue 11): home's wan1 reached over IPv6 only (its name has just an AAAA
//! record, `family = "ipv6"`), wan2 over IPv4 (an A record), both through knot. Weights 3:1 hold
//! across the families; cutting either WAN moves the traffic to the other with no failed
//! connect; clients reach the ingress over IPv6 as well.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use netns::ingress::IngressConfig;
use netns::knot::{self, Knot};
use netns::loadgen::Record;
use netns::scenario::{self, path_counts};
use netns::topology::{addr, Cut, Options, Role, Topology, Wan};
use netns::unix_ms;

fn wan1_v6(r: &Record) -> bool {
    r.backend
        .as_deref()
        .and_then(|b| b.parse::<SocketAddr>().ok())
        .is_some_and(|s| s.ip() == IpAddr::from(addr::WAN1_V6))
}

fn share(t: &Topology, records: &[Record], from: u64, to: u64) -> (f64, std::collections::BTreeMap<&'static str, u64>) {
    let per = path_counts(t, records, from, to);
    let total: u64 = per.values().sum();
    (per.get("wan1").copied().unwrap_or(0) as f64 / total.max(1) as f64, per)
}

/// Cut `wan` under load; returns the per-path counts during the cut.
fn cut_under_load(t: &mut Topology, wan: Wan, start: Instant) -> std::collections::BTreeMap<&'static str, u64> {
    let run = t
        .start_load(
            Role::Client,
            &format!("load-cut-{}", wan.name()),
            scenario::standard_load(Duration::from_millis(10), Duration::from_secs(6)),
        )
        .expect("start load");
    std::thread::sleep(Duration::from_secs(1));
    t.cut(wan, Cut::LinkDown).expect("cut");
    let cut_done = unix_ms();
    common::phase(start, &format!("{} cut", wan.name()));
    std::thread::sleep(Duration::from_secs(3));
    let r = run.finish(t).expect("load result");
    t.restore(wan, Cut::LinkDown).expect("restore");
    let (in_flight, failed) = scenario::split_failures(&r.records, cut_done);
    assert!(
        failed.is_empty(),
        "{} cut: failed connects:\n{}",
        wan.name(),
        scenario::describe_failures(&failed, cut_done)
    );
    let after = path_counts(t, &r.records, cut_done + 1500, u64::MAX);
    common::report(&format!(
        "RESULT dual stack: {} cut under load: {} of {} ok ({} in flight broke); from 1.5 s after the cut {after:?}",
        wan.name(),
        r.summary.ok,
        r.summary.started,
        in_flight.len()
    ));
    for role in [Role::Ingress1, Role::Ingress2] {
        scenario::wait_paths(t, role, &[("wan1", true), ("wan2", true)], Duration::from_secs(10))
            .expect("both back up");
    }
    after
}

#[test]
fn ipv6_wan1_and_ipv4_wan2_share_by_weight_and_fail_over() {
    let start = Instant::now();
    let mut t = common::build(Options { mesh: false, backends: true });
    t.add_ipv6().expect("IPv6 on the clearnet side");
    let records = [("wan1", IpAddr::from(addr::WAN1_V6)), ("wan2", IpAddr::from(addr::WAN2))];
    let dns = Knot::start(t.ns(Role::Inet), &t.tag, t.dir(), 30, &records).expect("knot");
    let mut cfg = IngressConfig::standard(None);
    cfg.paths[0].host = Some((format!("wan1.{}", knot::ZONE), "ipv6"));
    cfg.paths[1].host = Some((format!("wan2.{}", knot::ZONE), "ipv4"));
    cfg.resolver = Some(format!("nameservers = [\"{}\"]", knot::DNS));
    cfg.services[0].listen.push(format!("[::]:{}", addr::ECHO_PORT));
    for role in [Role::Ingress1, Role::Ingress2] {
        t.start_ingress(role, &cfg).expect("start ingress");
    }
    for role in [Role::Ingress1, Role::Ingress2] {
        scenario::wait_paths(&t, role, &[("wan1", true), ("wan2", true)], Duration::from_secs(15)).expect("paths up");
    }
    common::phase(start, "both ingress nodes up: wan1 over IPv6, wan2 over IPv4");

    // A client reaching the ingress over IPv6.
    let via_v6 =
        t.probe_echo(Role::Client, SocketAddr::new(addr::INGRESS1_V6.into(), addr::ECHO_PORT)).expect("echo over IPv6");
    assert_ne!(t.path_of(&via_v6), "unknown", "{via_v6}");

    // Weights 3:1 across the families.
    let run = t
        .start_load(
            Role::Client,
            "load-share",
            scenario::standard_load(Duration::from_millis(10), Duration::from_secs(6)),
        )
        .expect("start load");
    let r = run.finish(&mut t).expect("load result");
    assert_eq!(r.summary.failed, 0, "{}", scenario::describe_failures(&r.records, 0));
    let (wan1, per) = share(&t, &r.records, 0, u64::MAX);
    let v6 = r.records.iter().filter(|x| x.ok && wan1_v6(x)).count() as u64;
    assert_eq!(v6, per.get("wan1").copied().unwrap_or(0), "every wan1 connection went over IPv6");
    common::report(&format!(
        "RESULT dual stack: weights 3:1, wan1 (IPv6) share {wan1:.3} of {}: {per:?}",
        r.summary.ok
    ));
    assert!((wan1 - 0.75).abs() < 0.06, "wan1 share {wan1:.3}, want 0.75: {per:?}");

    let after = cut_under_load(&mut t, Wan::Wan1, start);
    assert!(!after.contains_key("wan1") && after.get("wan2").copied().unwrap_or(0) > 0, "{after:?}");
    let after = cut_under_load(&mut t, Wan::Wan2, start);
    assert!(!after.contains_key("wan2") && after.get("wan1").copied().unwrap_or(0) > 0, "{after:?}");
    drop(dns);
}
