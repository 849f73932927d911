//! UDP through the ingress (issue 4): `udp-echo` on both WAN addresses in home, a UDP service
//! on both ingress nodes, and `udpflow` in client (flows of one source port each, a datagram
//! every few ms). (1) Several flows spread over wan1 and wan2 by weight, each pinned to its
//! path; (2) wan1 cut mid-flow (link down, and a silent blackhole): the flows on wan1 continue
//! on wan2, losing only what was sent within the detection window (the gap is reported), stay
//! on wan2 after wan1 returns, and the ingress flow metrics (created/migrated) agree with what
//! the client saw; (3) both WANs cut: the flows continue over the mesh tier (yggdrasil), and
//! whether they come back when the WANs do is reported.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use netns::scenario;
use netns::services::{self, names, Listen};
use netns::topology::{addr, Cut, Options, Role, Topology, Wan};
use netns::udpflow::{Datagram, FlowConfig, FlowSummary};
use netns::unix_ms;

/// The UDP echo service's port, on the ingress nodes and on home's WAN addresses.
const UDP_PORT: u16 = 7100;
const SERVICE: &str = "udp-echo";

fn targets() -> Vec<SocketAddr> {
    vec![SocketAddr::from((addr::INGRESS1, UDP_PORT)), SocketAddr::from((addr::INGRESS2, UDP_PORT))]
}

/// Topology (with the mesh if `mesh`), `udp-echo` on both WAN addresses (and home's mesh
/// address), the ingress with the standard pool and a UDP service on both nodes, both WANs up.
fn setup_with(start: Instant, mesh: bool) -> Topology {
    let mut t = common::build(Options { mesh, backends: true });
    let mut listen = vec![SocketAddr::from((addr::WAN1, UDP_PORT)), SocketAddr::from((addr::WAN2, UDP_PORT))];
    if mesh {
        let home = t.home_mesh_addr().expect("home's yggdrasil address");
        listen.push(SocketAddr::from((home, UDP_PORT)));
    }
    services::start_udp_echo(&mut t, Role::Home, &listen, Default::default()).expect("start udp-echo in home");
    let service = format!(
        "[[service]]\nname = \"{SERVICE}\"\nlisten = [\"0.0.0.0:{UDP_PORT}\"]\nprotocol = \"udp\"\npool = \"home\"\n\
         idle_timeout = \"30s\"\n"
    );
    let toml = services::standard_plus(&t, &service);
    for role in [Role::Ingress1, Role::Ingress2] {
        services::start_ingress_toml(&mut t, role, &toml, &[Listen::Tcp(addr::ECHO_PORT), Listen::Udp(UDP_PORT)])
            .unwrap_or_else(|e| panic!("start ingress in {}: {e:#}", role.as_str()));
    }
    for role in [Role::Ingress1, Role::Ingress2] {
        scenario::wait_paths(&t, role, &[("wan1", true), ("wan2", true)], Duration::from_secs(10))
            .expect("both WANs up");
    }
    common::phase(start, "udp-echo and ingress up on both nodes");
    t
}

fn setup(start: Instant) -> Topology {
    setup_with(start, false)
}

/// Replies per path (wan1, wan2, ...) of one flow.
fn flow_paths(t: &Topology, f: &FlowSummary) -> BTreeMap<&'static str, u64> {
    let mut m = BTreeMap::new();
    for (b, n) in &f.backends {
        *m.entry(t.path_of(b)).or_default() += n;
    }
    m
}

/// The path of a flow's first answered datagram.
fn first_path(t: &Topology, datagrams: &[&Datagram]) -> Option<&'static str> {
    datagrams.iter().find_map(|d| d.backend.as_deref()).map(|b| t.path_of(b))
}

fn metric(t: &Topology, name: &str, path: &str) -> f64 {
    scenario::metric_sum(t, name, &[("service", SERVICE), ("path", path)]).expect("scrape the ingress nodes")
}

#[test]
fn udp_flows_spread_by_weight() {
    let start = Instant::now();
    let mut t = setup(start);
    let flows = 48;
    let cfg = FlowConfig {
        targets: targets(),
        flows,
        interval: Duration::from_millis(20),
        duration: Duration::from_secs(2),
        drain: Duration::from_millis(500),
        ..Default::default()
    };
    let run = services::start_udpflow(&mut t, Role::Client, "udpflow", cfg).expect("start udpflow");
    let r = run.finish(&mut t).expect("udpflow result");
    let s = &r.summary;
    common::phase(start, &format!("udpflow done: {} sent, {} received", s.sent(), s.received()));

    let mut per_path: BTreeMap<&str, usize> = BTreeMap::new();
    for f in &s.flows {
        let paths = flow_paths(&t, f);
        assert_eq!(paths.len(), 1, "flow {} ({}) was answered over several paths: {paths:?}", f.flow, f.local);
        assert!(f.received > 0, "flow {} ({} -> {}) got no reply", f.flow, f.local, f.target);
        *per_path.entry(paths.keys().next().copied().unwrap_or("none")).or_default() += 1;
    }
    let lost: u64 = s.flows.iter().map(|f| f.lost).sum();
    let (wan1, wan2) = (per_path.get("wan1").copied().unwrap_or(0), per_path.get("wan2").copied().unwrap_or(0));
    let share = wan1 as f64 / flows as f64;
    let created1 = metric(&t, names::UDP_FLOWS_CREATED, "wan1");
    let created2 = metric(&t, names::UDP_FLOWS_CREATED, "wan2");
    let migrated =
        scenario::metric_sum(&t, names::UDP_FLOWS_MIGRATED, &[("service", SERVICE)]).expect("scrape the ingress nodes");
    let up = scenario::metric_sum(&t, names::UDP_DATAGRAMS, &[("service", SERVICE), ("direction", "up")])
        .expect("scrape the ingress nodes");
    let down = scenario::metric_sum(&t, names::UDP_DATAGRAMS, &[("service", SERVICE), ("direction", "down")])
        .expect("scrape the ingress nodes");
    let drops = scenario::metric_sum(&t, names::UDP_DROPS, &[("service", SERVICE)]).expect("scrape the ingress nodes");
    let peers = services::udp_echo_log(&mut t, Role::Home).expect("udp-echo log");
    let peers_at = |wan: Wan| peers.iter().filter(|p| p.local == format!("{}:{UDP_PORT}", wan.addr())).count();
    common::report(&format!(
        "RESULT udp spread: {flows} flows -> wan1 {wan1}, wan2 {wan2} (wan1 share {share:.2}, weight 3:1 = 0.75); \
         {} datagrams sent, {} answered, {lost} lost; ingress flows created wan1 {created1} wan2 {created2}, \
         migrated {migrated}; datagrams up {up} down {down}; drops {drops}; udp-echo saw {} peers on wan1, {} on wan2",
        s.sent(),
        s.received(),
        peers_at(Wan::Wan1),
        peers_at(Wan::Wan2)
    ));

    assert_eq!(wan1 + wan2, flows, "flows on other paths: {per_path:?}");
    assert!((0.6..=0.9).contains(&share), "wan1 carried {wan1} of {flows} flows (weight share 0.75)");
    assert!(wan2 > 0, "wan2 carried no flow");
    assert!(lost * 100 <= s.sent(), "{lost} of {} datagrams lost with both WANs up", s.sent());
    // The ingress counted the same flows on the same paths as the client saw, and nothing moved.
    assert_eq!(created1 as usize, wan1, "ingress_udp_flows_created_total{{path=wan1}}");
    assert_eq!(created2 as usize, wan2, "ingress_udp_flows_created_total{{path=wan2}}");
    assert_eq!(migrated, 0.0, "flows migrated with both WANs up");
    // One upstream socket per flow: the backend saw one peer per flow on each WAN.
    assert_eq!((peers_at(Wan::Wan1), peers_at(Wan::Wan2)), (wan1, wan2), "udp-echo peers per WAN");
    assert_eq!(up as u64, s.sent(), "datagrams the ingress nodes received from the client");
    assert_eq!(down as u64, s.received(), "datagrams the ingress nodes sent back to the client");
    assert_eq!(drops, 0.0, "ingress dropped datagrams");
    common::phase(start, "done");
}

fn udp_flow_wan1_cut(how: Cut) {
    let start = Instant::now();
    let mut t = setup(start);
    let interval = Duration::from_millis(5);
    let cfg = FlowConfig {
        targets: targets(),
        flows: 8,
        interval,
        duration: Duration::from_secs(9),
        drain: Duration::from_millis(1000),
        ..Default::default()
    };
    let run = services::start_udpflow(&mut t, Role::Client, "udpflow", cfg).expect("start udpflow");
    std::thread::sleep(Duration::from_secs(2));
    let cut_ms = unix_ms();
    t.cut(Wan::Wan1, how).expect("cut wan1");
    common::phase(start, &format!("wan1 cut ({how:?})"));
    let mut marked_down = Vec::new();
    for role in [Role::Ingress1, Role::Ingress2] {
        scenario::wait_paths(&t, role, &[("wan1", false), ("wan2", true)], Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("{} marks wan1 down: {e:#}", role.as_str()));
        marked_down.push(unix_ms() - cut_ms);
    }
    std::thread::sleep(Duration::from_millis(4000).saturating_sub(Duration::from_millis(unix_ms() - cut_ms)));
    let restore_ms = unix_ms();
    t.restore(Wan::Wan1, how).expect("restore wan1");
    for role in [Role::Ingress1, Role::Ingress2] {
        scenario::wait_paths(&t, role, &[("wan1", true)], Duration::from_secs(10)).expect("wan1 back up");
    }
    common::phase(start, "wan1 restored and up again");
    let r = run.finish(&mut t).expect("udpflow result");
    let s = &r.summary;
    common::phase(start, &format!("udpflow done: {} sent, {} received", s.sent(), s.received()));

    let mut gaps = Vec::new();
    let mut moved = 0usize;
    let mut stayed = 0usize;
    let mut lost_moved = 0u64;
    for f in &s.flows {
        let ds: Vec<&Datagram> = r.datagrams.iter().filter(|d| d.flow == f.flow).collect();
        let path_of = |d: &Datagram| d.backend.as_deref().map(|b| t.path_of(b));
        let initial = first_path(&t, &ds).unwrap_or_else(|| panic!("flow {} got no reply at all", f.flow));
        let before: Vec<&&Datagram> = ds.iter().filter(|d| d.sent_ms < cut_ms).collect();
        assert!(
            before.iter().filter_map(|d| path_of(d)).all(|p| p == initial),
            "flow {} changed path before the cut: {:?}",
            f.flow,
            flow_paths(&t, f)
        );
        // The first datagram answered over wan2 (a moved flow's switch; none for one on wan2).
        let switch = (initial == "wan1").then(|| {
            ds.iter()
                .filter(|d| path_of(d) == Some("wan2"))
                .map(|d| d.sent_ms)
                .min()
                .unwrap_or_else(|| panic!("flow {} never continued on wan2: {:?}", f.flow, flow_paths(&t, f)))
        });
        // A moved flow lost only what it sent between the cut (or in flight at it, a few ms
        // before) and its switch: once moved, it is answered. How long that took is a figure
        // (below and in bench/run), not a bound: wall time on 2 shared cores is no behaviour.
        // A flow on wan2 loses at most a few (below), and only while wan1 is cut.
        let until = switch.unwrap_or(restore_ms);
        for d in ds.iter().filter(|d| d.backend.is_none()) {
            assert!(
                d.sent_ms + 50 >= cut_ms && d.sent_ms < until,
                "flow {} ({initial}): datagram {} sent at cut{:+} ms was lost, outside cut..cut{:+} ms (its switch, \
                 or wan1's restore)",
                f.flow,
                d.seq,
                d.sent_ms as i64 - cut_ms as i64,
                until as i64 - cut_ms as i64
            );
        }
        match (initial, switch) {
            ("wan1", Some(switch)) => {
                moved += 1;
                lost_moved += f.lost;
                assert!(switch >= cut_ms, "flow {} answered over wan2 before the cut", f.flow);
                gaps.push(switch - cut_ms);
                // Pinned to wan2 from then on, also after wan1 came back.
                let back: Vec<u64> = ds
                    .iter()
                    .filter(|d| d.sent_ms > switch && path_of(d) == Some("wan1"))
                    .map(|d| d.sent_ms - cut_ms)
                    .collect();
                assert!(back.is_empty(), "flow {} went back to wan1 at cut+{back:?} ms", f.flow);
                let late = ds.iter().filter(|d| d.sent_ms > restore_ms + 1000).count();
                assert!(late > 0, "flow {} sent nothing after wan1 returned", f.flow);
            }
            ("wan2", _) => {
                stayed += 1;
                assert_eq!(flow_paths(&t, f).keys().copied().collect::<Vec<_>>(), ["wan2"], "flow {}", f.flow);
                assert!(f.lost <= 3, "flow {} on wan2 lost {} datagrams while only wan1 was cut", f.flow, f.lost);
            }
            (other, _) => panic!("flow {} started on {other}", f.flow),
        }
    }
    gaps.sort_unstable();
    let created1 = metric(&t, names::UDP_FLOWS_CREATED, "wan1");
    let created2 = metric(&t, names::UDP_FLOWS_CREATED, "wan2");
    let migrated1 = metric(&t, names::UDP_FLOWS_MIGRATED, "wan1");
    let migrated2 = metric(&t, names::UDP_FLOWS_MIGRATED, "wan2");
    let expired =
        scenario::metric_sum(&t, names::UDP_FLOWS_EXPIRED, &[("service", SERVICE)]).expect("scrape the ingress nodes");
    let evicted =
        scenario::metric_sum(&t, names::UDP_FLOWS_EVICTED, &[("service", SERVICE)]).expect("scrape the ingress nodes");
    let max_gap = s.flows.iter().map(|f| f.max_gap_ms).max().unwrap_or(0);
    common::report(&format!(
        "RESULT udp wan1 cut by {how:?}: {moved} flows moved to wan2, {stayed} stayed on wan2; cut -> first \
         datagram answered over wan2: min {} ms, median {} ms, max {} ms; longest unanswered span {max_gap} ms; \
         {lost_moved} datagrams lost by the moved flows ({} ms apart; {} per flow at most); ingress marked wan1 \
         down after {marked_down:?} ms; ingress flows created wan1 {created1} wan2 {created2}, migrated from wan1 \
         {migrated1} from wan2 {migrated2}",
        gaps.first().copied().unwrap_or(0),
        gaps.get(gaps.len() / 2).copied().unwrap_or(0),
        gaps.last().copied().unwrap_or(0),
        interval.as_millis(),
        s.flows.iter().map(|f| f.lost).max().unwrap_or(0),
    ));

    assert!(moved > 0, "no flow was on wan1 before the cut (8 flows, weight 3:1)");
    assert_eq!(migrated1 as usize, moved, "ingress_udp_flows_migrated_total{{path=wan1}} vs flows moved");
    assert_eq!(migrated2, 0.0, "flows migrated away from wan2");
    assert_eq!(created1 as usize, moved, "ingress_udp_flows_created_total{{path=wan1}}");
    assert_eq!(created2 as usize, stayed + moved, "ingress_udp_flows_created_total{{path=wan2}}: first + migrated");
    assert_eq!((expired, evicted), (0.0, 0.0), "flows expired or evicted during the run");
    common::phase(start, "done");
}

#[test]
fn udp_flow_wan1_link_down_mid_flow() {
    udp_flow_wan1_cut(Cut::LinkDown);
}

#[test]
fn udp_flow_wan1_blackhole_mid_flow() {
    udp_flow_wan1_cut(Cut::Blackhole);
}

#[test]
fn udp_flows_to_mesh_when_both_wans_cut() {
    let start = Instant::now();
    let mut t = setup_with(start, true);
    let cfg = FlowConfig {
        targets: targets(),
        flows: 4,
        interval: Duration::from_millis(10),
        duration: Duration::from_secs(10),
        drain: Duration::from_millis(1000),
        ..Default::default()
    };
    let run = services::start_udpflow(&mut t, Role::Client, "udpflow", cfg).expect("start udpflow");
    std::thread::sleep(Duration::from_secs(2));
    let cut_ms = unix_ms();
    for wan in [Wan::Wan1, Wan::Wan2] {
        t.cut(wan, Cut::Blackhole).expect("blackhole a WAN");
    }
    common::phase(start, "wan1 and wan2 blackholed");
    for role in [Role::Ingress1, Role::Ingress2] {
        scenario::wait_paths(&t, role, &[("wan1", false), ("wan2", false)], Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("{} marks both WANs down: {e:#}", role.as_str()));
    }
    std::thread::sleep(Duration::from_millis(4000).saturating_sub(Duration::from_millis(unix_ms() - cut_ms)));
    let restore_ms = unix_ms();
    for wan in [Wan::Wan1, Wan::Wan2] {
        t.restore(wan, Cut::Blackhole).expect("restore a WAN");
    }
    for role in [Role::Ingress1, Role::Ingress2] {
        scenario::wait_paths(&t, role, &[("wan1", true), ("wan2", true)], Duration::from_secs(10))
            .expect("WANs back up");
    }
    common::phase(start, "WANs restored and up again");
    let r = run.finish(&mut t).expect("udpflow result");
    let s = &r.summary;
    common::phase(start, &format!("udpflow done: {} sent, {} received", s.sent(), s.received()));

    let mut to_mesh = Vec::new();
    let mut back = Vec::new();
    // Losses after a flow's move to the mesh. Over the mesh yggdrasil, a router in user space, may
    // drop a datagram now and then, as any UDP path may (one did, once in a full run, 2.2 s
    // after the flows had moved). Failover must not leave a flow unanswered: such a loss must
    // stand alone, with the datagrams either side of it answered, and be rare. Yggdrasil up to
    // 0.5.13 (bookworm-backports has 0.5.12) drops the oldest packet of a peer's queue when a
    // new one arrives while that one waited over 25 ms (ironwood's peer queue, removed in
    // 0.5.14): a router stalled that long once a second, under a full run's load, lost one
    // datagram a second (6 of 2,204, every 99th of one flow), each alone.
    let mut late = Vec::new();
    let mut after_window = 0u64;
    for f in &s.flows {
        let ds: Vec<&Datagram> = r.datagrams.iter().filter(|d| d.flow == f.flow).collect();
        let path_of = |d: &Datagram| d.backend.as_deref().map(|b| t.path_of(b));
        let first_mesh = ds
            .iter()
            .filter(|d| path_of(d) == Some("mesh"))
            .map(|d| d.sent_ms)
            .min()
            .unwrap_or_else(|| panic!("flow {} never continued over the mesh: {:?}", f.flow, flow_paths(&t, f)));
        assert!(first_mesh >= cut_ms, "flow {} used the mesh before the cut", f.flow);
        to_mesh.push(first_mesh - cut_ms);
        let after = ds.iter().rev().filter(|d| d.sent_ms > restore_ms + 2000).find_map(|d| path_of(d));
        back.push(after.unwrap_or("none"));
        let answered: BTreeMap<u64, bool> = ds.iter().map(|d| (d.seq, d.backend.is_some())).collect();
        after_window += ds.iter().filter(|d| d.sent_ms > first_mesh).count() as u64;
        for d in ds.iter().filter(|d| d.backend.is_none()) {
            let at = d.sent_ms as i64 - cut_ms as i64;
            assert!(d.sent_ms + 50 >= cut_ms, "flow {}: datagram {} sent at cut{at:+} ms was lost", f.flow, d.seq);
            if d.sent_ms < first_mesh {
                continue;
            }
            let neighbours = [d.seq.checked_sub(1), d.seq.checked_add(1)];
            assert!(
                neighbours.iter().all(|n| n.and_then(|n| answered.get(&n)).copied().unwrap_or(true)),
                "flow {}: datagram {} sent at cut{at:+} ms was lost after the flow moved to the mesh, next to another \
                 loss: the flow went unanswered",
                f.flow,
                d.seq
            );
            late.push((f.flow, d.seq, at));
        }
    }
    // One in 200 of the datagrams sent after the moves (two a second of the four flows' 400),
    // and at least 2.
    let late_allowed = (after_window / 200).max(2) as usize;
    assert!(
        late.len() <= late_allowed,
        "{} datagrams lost after their flow moved to the mesh (flow, seq, ms after the cut): {late:?}; at most \
         {late_allowed} of {after_window} allowed",
        late.len()
    );
    let migrated = scenario::metric_sum(&t, names::UDP_FLOWS_MIGRATED, &[("service", SERVICE)]).expect("scrape");
    // Back on a WAN once both are up again: each flow's next datagram moves it off the mesh.
    let wan_back = scenario::metric_sum(&t, names::UDP_FLOWS_MIGRATED, &[("service", SERVICE), ("reason", "wan_back")])
        .expect("scrape");
    let migrated = migrated - wan_back;
    let created_mesh = metric(&t, names::UDP_FLOWS_CREATED, "mesh");
    common::report(&format!(
        "RESULT udp both WANs cut: cut -> first datagram answered over the mesh per flow {to_mesh:?} ms; \
         {} lost of {} sent, of which after their flow's move {late:?} (flow, seq, ms after the cut); ingress flows migrated {migrated}, created on the mesh {created_mesh}; after the WANs \
         returned the flows were on {back:?}, moved back {wan_back}",
        s.flows.iter().map(|f| f.lost).sum::<u64>(),
        s.sent()
    ));
    // Both WANs are blackholed at once but judged down one after the other: a flow whose WAN
    // is judged down first may move to the other WAN (still up as far as anyone knows) and
    // move again when that one is judged down too. Each flow moves at least once and at most
    // twice, and ends on the mesh.
    let n = s.flows.len();
    assert!((n..=2 * n).contains(&(migrated as usize)), "every flow migrated once or twice: {migrated} for {n}");
    assert_eq!(created_mesh as usize, n, "every flow re-created on the mesh");
    assert_eq!(wan_back as usize, n, "every flow moved back off the mesh once the WANs were up");
    assert!(back.iter().all(|p| *p == "wan1" || *p == "wan2"), "after the WANs returned: {back:?}");
    common::phase(start, "done");
}
