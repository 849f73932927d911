//! Home WAN paths given by DNS name (issue 11), with a real authoritative server (knot) whose
//! records change by dynamic update while traffic runs:
//! 1. the ingress nodes start with DNS down: they serve over the mesh tier, and move to the
//!    WANs once DNS answers;
//! 2. at 200 new connections/s through both nodes, wan1's name moves to a new home address (the
//!    home gets the new address, the old one is removed): zero failed connects, and traffic on
//!    the new address within TTL + one probe interval (printed);
//! 3. DNS stopped: the last known addresses are kept, traffic unaffected;
//! 4. wan2's name removed (NXDOMAIN): wan2 down, everything on wan1; restored: wan2 back;
//! 5. wan2's name pointed at ingress1 itself (a dynamic-DNS client run on the cloud node):
//!    ingress1 neither probes nor uses that answer (its own listener on the probed port would
//!    answer and take the pool's traffic back in); wan2 keeps home's address there, and
//!    `ingress_path_dns_leads_back` shows it until the name leads home again.
//!
//! And apart (`udp_flows_follow_a_moved_name`): UDP flows that keep talking through wan1 while
//! its name moves (the old address removed from the home) move to the new address on their
//! next datagram once the path has it, instead of sending to the old one for as long as the
//! client talks.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use netns::ingress::{names, IngressConfig, ServiceCfg};
use netns::knot::{self, Knot};
use netns::loadgen::Record;
use netns::scenario::{self, path_counts};
use netns::services::{self, Listen};
use netns::topology::LoadResult;
use netns::topology::{addr, Options, Role, Topology};
use netns::udpflow::FlowConfig;
use netns::unix_ms;
use netns::wait::{check, wait_until};

/// The records' TTL: short, so the scenario is quick; `min_refresh` is below it.
const TTL: u32 = 2;
/// wan1's address after the "ISP re-dial" (same link, same /24).
const WAN1_NEW: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 20);
/// The ingress health interval (the standard config's).
const PROBE_INTERVAL_MS: u64 = 500;

fn config(t: &Topology) -> IngressConfig {
    let mut cfg = IngressConfig::standard(t.home_mesh_addr());
    for p in &mut cfg.paths {
        p.host = Some((format!("{}.{}", p.name, knot::ZONE), "ipv4"));
    }
    // The probed port is relayed too, as when a node forwards 443 and probes it: a probe to
    // this node's own address would be answered by its own listener.
    cfg.services.push(ServiceCfg {
        name: "probed".into(),
        listen: vec![format!("0.0.0.0:{}", addr::HEALTH_PORT)],
        upstream_port: Some(addr::HEALTH_PORT),
    });
    cfg.resolver = Some(format!(
        "nameservers = [\"{}\"]\nmin_refresh = \"1s\"\nmax_refresh = \"30s\"\ntimeout = \"1s\"",
        knot::DNS
    ));
    cfg
}

/// Which home address a reply's backend names (`wan1-new` for the moved address).
fn backend_of(t: &Topology, r: &Record) -> &'static str {
    match r.backend.as_deref().and_then(|b| b.parse::<SocketAddr>().ok()).map(|s| s.ip()) {
        Some(ip) if ip == IpAddr::from(WAN1_NEW) => "wan1-new",
        _ => r.backend.as_deref().map(|b| t.path_of(b)).unwrap_or("unknown"),
    }
}

/// The ISP's re-dial: the home gets `WAN1_NEW` (routed out of wan1, with the TCP echo and the
/// health port on it), wan1's name is moved to it, and the old address is removed.
fn move_wan1(t: &mut Topology, dns: &Knot) {
    add_wan1_new(t, dns);
    drop_wan1_old(t);
}

/// The first half of [`move_wan1`]: the new address, and the name moved to it.
fn add_wan1_new(t: &mut Topology, dns: &Knot) {
    let home = t.ns(Role::Home).to_string();
    let mut argv = vec![t.bins.echo_server.display().to_string()];
    for port in [addr::ECHO_PORT, addr::HEALTH_PORT] {
        argv.extend(["--listen".into(), SocketAddr::from((WAN1_NEW, port)).to_string()]);
    }
    netns::cmd::ip(&home, &["addr", "add", &format!("{WAN1_NEW}/24"), "dev", "wan1"]).expect("new address");
    netns::cmd::ip(&home, &["rule", "add", "from", &WAN1_NEW.to_string(), "table", addr::WAN1_TABLE, "pref", "100"])
        .expect("source route for the new address");
    t.spawn(Role::Home, "backend-wan1-new", &argv).expect("echo on the new address");
    dns.set("wan1", &[IpAddr::from(WAN1_NEW)]).expect("move wan1's name");
}

/// The second half of [`move_wan1`]: the old address removed from the home.
fn drop_wan1_old(t: &Topology) {
    let home = t.ns(Role::Home);
    netns::cmd::ip(home, &["addr", "del", &format!("{}/24", addr::WAN1), "dev", "wan1"]).expect("drop old address");
}

fn assert_no_failed_connects(records: &[Record], fault_done: u64, what: &str) {
    let (in_flight, failed) = scenario::split_failures(records, fault_done);
    assert!(
        failed.is_empty(),
        "{what}: {} client connections failed:\n{}",
        failed.len(),
        scenario::describe_failures(&failed, fault_done)
    );
    if !in_flight.is_empty() {
        eprintln!("{what}: {} connections in flight on the removed address broke", in_flight.len());
    }
}

/// New connections every 10 ms for `secs` through both nodes, none of which may fail to connect.
fn steady_load(t: &mut Topology, name: &str, secs: u64, what: &str) -> LoadResult {
    let run = t
        .start_load(Role::Client, name, scenario::standard_load(Duration::from_millis(10), Duration::from_secs(secs)))
        .expect("start load");
    let r = run.finish(t).expect("load result");
    assert_no_failed_connects(&r.records, 0, what);
    r
}

#[test]
fn wan_paths_follow_their_names() {
    let start = Instant::now();
    let mut t = common::build(Options::default());
    let records = [("wan1", IpAddr::from(addr::WAN1)), ("wan2", IpAddr::from(addr::WAN2))];
    let mut dns = Knot::start(t.ns(Role::Inet), &t.tag, t.dir(), TTL, &records).expect("knot");
    let cfg = config(&t);

    // 1. DNS down at start: the paths have no address; the mesh tier serves.
    dns.stop().expect("stop knot");
    for role in [Role::Ingress1, Role::Ingress2] {
        t.start_ingress(role, &cfg).expect("start ingress");
    }
    let served_by = t.probe_echo(Role::Client, SocketAddr::from((addr::INGRESS1, addr::ECHO_PORT))).expect("echo");
    assert_eq!(t.path_of(&served_by), "mesh", "with no WAN address known, the mesh tier serves");
    wait_until("failed lookups counted", Duration::from_secs(10), Duration::from_millis(100), || {
        let m = t.scrape(Role::Ingress1)?;
        let failed = m.sum(names::PATH_DNS_LOOKUPS, &[("path", "wan1"), ("result", "failed")]);
        check(m.get(names::PATH_HAS_ADDRESS, &[("path", "wan1")]) == Some(0.0) && failed >= 1.0, || {
            format!("has_address {:?}, failed lookups {failed}", m.get(names::PATH_HAS_ADDRESS, &[("path", "wan1")]))
        })
    })
    .expect("wan1 has no address and its lookups fail");
    common::phase(start, "started with DNS down: served over the mesh tier");
    let dns_up = Instant::now();
    dns.run().expect("restart knot");
    for role in [Role::Ingress1, Role::Ingress2] {
        scenario::wait_paths(&t, role, &[("wan1", true), ("wan2", true)], Duration::from_secs(40))
            .expect("the WANs come up once DNS answers");
    }
    let took = dns_up.elapsed();
    let served_by = t.probe_echo(Role::Client, SocketAddr::from((addr::INGRESS2, addr::ECHO_PORT))).expect("echo");
    assert_ne!(t.path_of(&served_by), "mesh", "traffic left the mesh tier");
    common::report(&format!(
        "RESULT dns paths: started with DNS down on the mesh tier; WANs up {} ms after DNS answered",
        took.as_millis()
    ));

    // 2. wan1's name moves under 200 new connections/s.
    let home = t.ns(Role::Home).to_string();
    netns::cmd::sysctl(&home, &[("net.ipv4.conf.wan1.promote_secondaries", "1")]).expect("promote_secondaries");
    let run = t
        .start_load(
            Role::Client,
            "load-move",
            scenario::standard_load(Duration::from_millis(5), Duration::from_secs(12)),
        )
        .expect("start load");
    std::thread::sleep(Duration::from_secs(3));
    let moved_at = unix_ms();
    move_wan1(&mut t, &dns);
    let move_done = unix_ms();
    common::phase(start, "wan1's name moved to the new address; the old one is gone");
    let r = run.finish(&mut t).expect("load result");
    let s = &r.summary;
    common::phase(start, &format!("load done: {} started, {} ok, {} failed", s.started, s.ok, s.failed));
    assert_no_failed_connects(&r.records, move_done, "moving wan1");
    let first_new = r
        .records
        .iter()
        .filter(|x| x.ok && backend_of(&t, x) == "wan1-new")
        .map(|x| x.start_ms)
        .min()
        .expect("traffic reached wan1's new address");
    let per: std::collections::BTreeMap<&str, usize> =
        r.records.iter().filter(|x| x.ok && x.start_ms >= first_new).fold(Default::default(), |mut m, x| {
            *m.entry(backend_of(&t, x)).or_default() += 1;
            m
        });
    common::report(&format!(
        "RESULT dns paths: wan1 moved at 200 conn/s: first connection on the new address {} ms after the \
         update (TTL {} s + probe interval {} ms = {} ms); {} of {} connections ok; afterwards {per:?}",
        first_new.saturating_sub(moved_at),
        TTL,
        PROBE_INTERVAL_MS,
        u64::from(TTL) * 1000 + PROBE_INTERVAL_MS,
        s.ok,
        s.started
    ));
    assert!(
        per.get("wan1-new").copied().unwrap_or(0) > per.get("wan2").copied().unwrap_or(0),
        "weight 3:1 holds on the new address: {per:?}"
    );

    // 3. DNS stopped: last known addresses kept, traffic unaffected.
    dns.stop().expect("stop knot");
    let r = steady_load(&mut t, "load-dns-down", 6, "DNS down");
    let per = path_counts(&t, &r.records, 0, u64::MAX);
    let on_new = r.records.iter().filter(|x| x.ok && backend_of(&t, x) == "wan1-new").count();
    assert!(on_new > 0 && !per.contains_key("mesh"), "DNS down changes nothing: {per:?}, wan1-new {on_new}");
    let m = t.scrape(Role::Ingress1).expect("scrape");
    let failed = m.sum(names::PATH_DNS_LOOKUPS, &[("path", "wan1"), ("result", "failed")]);
    common::report(&format!(
        "RESULT dns paths: DNS down 6 s: {} of {} connections ok, wan1 kept its address ({on_new} on it)",
        r.summary.ok, r.summary.started
    ));
    eprintln!("failed lookups of wan1 so far on ingress1: {failed}");

    // 4. wan2's name removed: wan2 down, all on wan1; restored: back.
    dns.run().expect("restart knot");
    dns.set("wan2", &[]).expect("remove wan2's name");
    let removed = Instant::now();
    for role in [Role::Ingress1, Role::Ingress2] {
        scenario::wait_paths(&t, role, &[("wan2", false), ("wan1", true)], Duration::from_secs(15))
            .expect("wan2 down once its name has no record");
    }
    let down_after = removed.elapsed();
    let m = t.scrape(Role::Ingress1).expect("scrape");
    assert_eq!(m.get(names::PATH_HAS_ADDRESS, &[("path", "wan2")]), Some(0.0));
    let r = steady_load(&mut t, "load-nx", 3, "wan2 without a record");
    let on_wan2 = r.records.iter().filter(|x| x.ok && backend_of(&t, x) == "wan2").count();
    assert_eq!(on_wan2, 0, "nothing goes to a path whose name has no record");
    let restored = Instant::now();
    dns.set("wan2", &[IpAddr::from(addr::WAN2)]).expect("restore wan2's name");
    for role in [Role::Ingress1, Role::Ingress2] {
        scenario::wait_paths(&t, role, &[("wan2", true)], Duration::from_secs(15)).expect("wan2 back");
    }
    let back_after = restored.elapsed();
    wait_until("wan2 carries traffic again", Duration::from_secs(10), Duration::from_millis(100), || {
        let b = t.probe_echo(Role::Client, SocketAddr::from((addr::INGRESS1, addr::ECHO_PORT)))?;
        check(t.path_of(&b) == "wan2", || format!("served by {b}"))
    })
    .expect("wan2 used again");
    common::report(&format!(
        "RESULT dns paths: wan2's name removed: down after {} ms, every connection on wan1; restored: up after {} ms (TTL {TTL} s)",
        down_after.as_millis(),
        back_after.as_millis()
    ));

    // 5. wan2's name pointed at ingress1's own address.
    let m = t.scrape(Role::Ingress1).expect("scrape");
    let changes = |m: &netns::metrics::Metrics| m.sum(names::PATH_ADDRESS_CHANGES, &[("path", "wan2")]);
    let answers =
        |m: &netns::metrics::Metrics| m.sum(names::PATH_DNS_LOOKUPS, &[("path", "wan2"), ("result", "answer")]);
    let (changes_before, answers_before) = (changes(&m), answers(&m));
    dns.set("wan2", &[IpAddr::from(addr::INGRESS1)]).expect("point wan2's name at ingress1");
    wait_until("ingress1 has the new answer", Duration::from_secs(15), Duration::from_millis(100), || {
        let m = t.scrape(Role::Ingress1)?;
        let n = answers(&m);
        check(n >= answers_before + 2.0, || format!("{n} answers, {answers_before} before"))
    })
    .expect("ingress1 asks again");
    // A probe of the answer would have been answered by ingress1's own listener at once and
    // moved the path within a probe interval.
    std::thread::sleep(Duration::from_millis(2 * PROBE_INTERVAL_MS));
    let m = t.scrape(Role::Ingress1).expect("scrape");
    assert_eq!(changes(&m), changes_before, "wan2 keeps home's address on ingress1");
    assert_eq!(m.get(names::PATH_UP, &[("path", "wan2")]), Some(1.0), "and stays up");
    assert_eq!(m.get(names::PATH_DNS_LEADS_BACK, &[("path", "wan2")]), Some(1.0), "shown while the name answers it");
    let r = steady_load(&mut t, "load-loop", 3, "wan2's name on ingress1");
    let accepted = t.scrape(Role::Ingress1).expect("scrape").sum(names::LISTENER_ACCEPTED, &[]);
    common::report(&format!(
        "RESULT dns paths: wan2's name pointed at ingress1: skipped there ({} ok of {} connections; \
         {accepted} accepted by ingress1's listeners over the whole run)",
        r.summary.ok, r.summary.started
    ));
    dns.set("wan2", &[IpAddr::from(addr::WAN2)]).expect("point wan2's name home again");
    wait_until("the name leads home again", Duration::from_secs(15), Duration::from_millis(100), || {
        let v = t.scrape(Role::Ingress1)?.get(names::PATH_DNS_LEADS_BACK, &[("path", "wan2")]);
        check(v == Some(0.0), || format!("{} {v:?}", names::PATH_DNS_LEADS_BACK))
    })
    .expect("the gauge clears");
    drop(dns);
}

/// UDP port of the echo service for the flows.
const UDP_PORT: u16 = 7100;

/// The home moves wan1 to a new address (added, the name updated, the old one removed) while
/// eight UDP flows talk through ingress1 (a datagram every 20 ms each): every flow is answered
/// again by the end, those that were on wan1 from its new address, and the move is counted
/// as `address_moved`. Before, a flow opened on the old address kept sending there for as
/// long as its client talked (it never went idle), and got no answer again.
#[test]
fn udp_flows_follow_a_moved_name() {
    let start = Instant::now();
    let mut t = common::build(Options::default());
    let records = [("wan1", IpAddr::from(addr::WAN1)), ("wan2", IpAddr::from(addr::WAN2))];
    let dns = Knot::start(t.ns(Role::Inet), &t.tag, t.dir(), TTL, &records).expect("knot");
    let home = t.ns(Role::Home).to_string();
    // The echo binds the new address before the home has it.
    netns::cmd::sysctl(&home, &[("net.ipv4.ip_nonlocal_bind", "1"), ("net.ipv4.conf.wan1.promote_secondaries", "1")])
        .expect("sysctls");
    let on = |ip: Ipv4Addr| SocketAddr::from((ip, UDP_PORT));
    services::start_udp_echo(&mut t, Role::Home, &[on(addr::WAN1), on(addr::WAN2), on(WAN1_NEW)], Default::default())
        .expect("udp-echo in home");
    let udp = format!(
        "[[service]]\nname = \"udp-echo\"\nlisten = [\"0.0.0.0:{UDP_PORT}\"]\nprotocol = \"udp\"\npool = \"home\"\n\
         idle_timeout = \"30s\"\n"
    );
    let toml = format!("{}\n{udp}", config(&t).to_toml());
    services::start_ingress_toml(&mut t, Role::Ingress1, &toml, &[Listen::Tcp(addr::ECHO_PORT), Listen::Udp(UDP_PORT)])
        .expect("ingress1");
    scenario::wait_paths(&t, Role::Ingress1, &[("wan1", true), ("wan2", true)], Duration::from_secs(40))
        .expect("both WANs up");
    common::phase(start, "ingress1 up with wan1 and wan2 by name");

    let flows = FlowConfig {
        targets: vec![SocketAddr::from((addr::INGRESS1, UDP_PORT))],
        flows: 8,
        interval: Duration::from_millis(20),
        duration: Duration::from_secs(14),
        drain: Duration::from_millis(500),
        ..Default::default()
    };
    let run = services::start_udpflow(&mut t, Role::Client, "flows", flows).expect("udpflow");
    std::thread::sleep(Duration::from_secs(3));
    // The old address goes once ingress1 has moved wan1 to the new one: were it gone first,
    // the probes could take wan1 down before the move, and the flows would leave it as
    // `path_down` instead, saying nothing of what happens to a flow when its path moves.
    let changes = |t: &Topology| -> anyhow::Result<f64> {
        Ok(t.scrape(Role::Ingress1)?.sum(names::PATH_ADDRESS_CHANGES, &[("path", "wan1")]))
    };
    let before = changes(&t).expect("scrape");
    add_wan1_new(&mut t, &dns);
    wait_until("ingress1 moved wan1 to its new address", Duration::from_secs(15), Duration::from_millis(50), || {
        let n = changes(&t)?;
        check(n > before, || format!("{n} address changes, {before} before"))
    })
    .expect("wan1 moved");
    drop_wan1_old(&t);
    common::phase(start, "wan1's name moved to the new address; the old one is gone");
    let r = run.finish(&mut t).expect("flows result");
    let summary = &r.summary;
    let new = on(WAN1_NEW).to_string();
    let old = on(addr::WAN1).to_string();
    let was_on_wan1 = summary.flows.iter().filter(|f| f.backends.contains_key(&old)).count();
    let on_new = summary.flows.iter().filter(|f| f.backends.contains_key(&new)).count();
    // Answered at the end: the last datagram some backend answered was sent in the last 2 s.
    let cut_off: Vec<usize> = summary
        .flows
        .iter()
        .filter(|f| f.last_ms.values().max().is_none_or(|last| *last + 2000 < summary.end_ms))
        .map(|f| f.flow)
        .collect();
    let m = t.scrape(Role::Ingress1).expect("scrape");
    let migrated = |reason: &str| {
        m.sum(services::names::UDP_FLOWS_MIGRATED, &[("path", "wan1"), ("reason", reason)]).max(0.0) as usize
    };
    let (address_moved, path_down) = (migrated("address_moved"), migrated("path_down"));
    common::report(&format!(
        "RESULT dns paths, udp: {} flows, {was_on_wan1} on wan1's old address, {on_new} answered from the new one; \
         moved {address_moved} as address_moved and {path_down} as path_down; not answered at the end: {cut_off:?}; \
         {} sent, {} answered",
        summary.flows.len(),
        summary.sent(),
        summary.received()
    ));
    assert!(was_on_wan1 > 0, "no flow was on wan1 before the move: {:?}", summary.flows);
    assert!(cut_off.is_empty(), "flows no longer answered after the move: {cut_off:?}");
    assert!(
        on_new >= 1 && address_moved >= was_on_wan1,
        "{on_new} answered from the new address, {address_moved} moved as address_moved"
    );
    drop(dns);
}
