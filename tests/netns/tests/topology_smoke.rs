//! The topology itself, before any ingress: namespaces, both WAN paths with source policy
//! routing, the fault helpers, and the yggdrasil mesh (scenario 6: the mesh-only client
//! reaches home's service over yggdrasil, no ingress involved).

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use netns::faults;
use netns::topology::{addr, Cut, Options, Role, Wan};

fn echo_at(ip: impl Into<IpAddr>) -> SocketAddr {
    SocketAddr::new(ip.into(), addr::ECHO_PORT)
}

#[test]
fn topology_smoke() {
    let start = Instant::now();
    let mut t = common::build(Options::default());
    let tag = t.tag.clone();
    let names = netns::netns::list().expect("ip netns list");
    for role in Role::ALL {
        assert!(names.iter().any(|n| n == t.ns(role)), "namespace {} missing", t.ns(role));
    }

    // Both WANs answer the clearnet client, each on its own address; WAN2 replies can only
    // come back (strict rp_filter on the router) if home routes them out of wan2.
    for wan in [Wan::Wan1, Wan::Wan2] {
        let backend = t.probe_echo(Role::Client, echo_at(wan.addr())).expect("client -> home WAN");
        assert_eq!(t.path_of(&backend), wan.name(), "reply from {backend}");
    }
    common::phase(start, "client reaches home on wan1 and wan2");

    // Without the source rule, replies to WAN2 leave by wan1 and the router drops them.
    let home = t.ns(Role::Home).to_string();
    let wan2 = addr::WAN2.to_string();
    netns::cmd::ip(&home, &["rule", "del", "from", &wan2, "table", addr::WAN2_TABLE]).expect("rule del");
    let broken = t.probe_echo(Role::Client, echo_at(addr::WAN2));
    netns::cmd::ip(&home, &["rule", "add", "from", &wan2, "table", addr::WAN2_TABLE, "pref", addr::WAN2_TABLE])
        .expect("rule add");
    assert!(broken.is_err(), "WAN2 answered without policy routing: rp_filter is not strict on the router");
    t.probe_echo(Role::Client, echo_at(addr::WAN2)).expect("WAN2 back after restoring the rule");
    common::phase(start, "policy routing needed and working (strict rp_filter)");

    // Faults: blackhole, link down, loss, tbf.
    t.cut(Wan::Wan1, Cut::Blackhole).expect("blackhole");
    assert!(t.probe_echo(Role::Client, echo_at(addr::WAN1)).is_err(), "blackholed WAN1 answered");
    t.probe_echo(Role::Client, echo_at(addr::WAN2)).expect("WAN2 while WAN1 blackholed");
    t.restore(Wan::Wan1, Cut::Blackhole).expect("unblackhole");
    t.probe_echo(Role::Client, echo_at(addr::WAN1)).expect("WAN1 after blackhole");
    t.cut(Wan::Wan1, Cut::LinkDown).expect("link down");
    assert!(t.probe_echo(Role::Client, echo_at(addr::WAN1)).is_err(), "WAN1 answered with its link down");
    t.restore(Wan::Wan1, Cut::LinkDown).expect("link up");
    netns::wait::wait_until("WAN1 after link up", Duration::from_secs(10), Duration::from_millis(100), || {
        t.probe_echo(Role::Client, echo_at(addr::WAN1))
    })
    .expect("WAN1 after link up");
    t.loss(Wan::Wan2, 100).expect("loss 100");
    assert!(t.probe_echo(Role::Client, echo_at(addr::WAN2)).is_err(), "WAN2 answered through 100% loss");
    t.loss(Wan::Wan2, 0).expect("loss 0");
    t.probe_echo(Role::Client, echo_at(addr::WAN2)).expect("WAN2 after loss removed");
    faults::tbf(t.ns(Role::Inet), Wan::Wan2.router_if(), "10mbit", "32kb", "50ms").expect("tbf");
    t.probe_echo(Role::Client, echo_at(addr::WAN2)).expect("WAN2 through tbf");
    faults::tbf_clear(t.ns(Role::Inet), Wan::Wan2.router_if()).expect("tbf clear");
    let rtt = |t: &netns::topology::Topology| {
        let out = t.exec(
            Role::Client,
            &["ping", "-n", "-c3", "-i0.2", "-W2", &addr::WAN2.to_string()],
            Duration::from_secs(10),
        );
        let out = out.expect("ping WAN2");
        let avg = out.lines().find_map(|l| l.split(" = ").nth(1)).and_then(|v| v.split('/').nth(1)).map(str::to_string);
        avg.and_then(|a| a.parse::<f64>().ok()).unwrap_or_else(|| panic!("no rtt in {out}"))
    };
    let base_rtt = rtt(&t);
    t.delay(Wan::Wan2, 40).expect("delay wan2");
    let slow_rtt = rtt(&t);
    t.probe_echo(Role::Client, echo_at(addr::WAN2)).expect("WAN2 through the delayer");
    t.delay(Wan::Wan2, 0).expect("undelay wan2");
    let back_rtt = rtt(&t);
    eprintln!("wan2 rtt: {base_rtt:.2} ms, with 40 ms delay each way {slow_rtt:.2} ms, after {back_rtt:.2} ms");
    assert!((75.0..150.0).contains(&slow_rtt), "delayer: rtt {slow_rtt} ms, expected ~80");
    assert!(back_rtt < 20.0, "delay not removed: rtt {back_rtt} ms");
    common::phase(start, "blackhole, link down, loss, tbf and delay act and are undone");

    // The mesh: every node reached home over yggdrasil while building; the services answer on
    // home's 200::/7 address from an ingress and from the mesh-only client (scenario 6).
    let mesh = t.home_mesh_addr().expect("home mesh address");
    assert!(mesh.segments()[0] & 0xfe00 == 0x0200, "{mesh} is not in 200::/7");
    let via_mesh = t.probe_echo(Role::Ingress1, echo_at(mesh)).expect("ingress1 -> home over the mesh");
    assert_eq!(t.path_of(&via_mesh), "mesh");
    let from_meshc = t.probe_echo(Role::Meshc, echo_at(mesh)).expect("meshc -> home over the mesh (scenario 6)");
    assert_eq!(t.path_of(&from_meshc), "mesh");
    assert!(
        t.probe_echo(Role::Meshc, echo_at(addr::WAN1)).is_err(),
        "the mesh-only client reached a WAN address: it should have no clearnet route"
    );
    let peers = netns::ygg::get_peers(&t.ygg(Role::Home).expect("home router").admin).expect("getPeers");
    assert!(peers.len() >= 3, "home should have 3 mesh peers, has {peers:?}");
    common::phase(start, &format!("mesh: home is {mesh}; ingress1 and meshc reach it"));

    // The mesh does not ride on the WANs: cut both, it still carries.
    t.cut(Wan::Wan1, Cut::LinkDown).expect("cut wan1");
    t.cut(Wan::Wan2, Cut::Blackhole).expect("cut wan2");
    assert!(t.probe_echo(Role::Client, echo_at(addr::WAN2)).is_err(), "WAN2 answered while cut");
    let via_mesh = t.probe_echo(Role::Ingress2, echo_at(mesh)).expect("ingress2 -> home over the mesh, WANs cut");
    assert_eq!(t.path_of(&via_mesh), "mesh");
    common::phase(start, "mesh survives both WANs cut");

    // The LAN host behind home (where the local proxy will forward later).
    t.start_backends_in(Role::Lan).expect("backends in lan");
    let lan = t.probe_echo(Role::Home, echo_at(addr::LAN)).expect("home -> lan");
    assert_eq!(t.path_of(&lan), "lan");
    common::phase(start, "lan answers home");

    let log = t.backend_log(Role::Home);
    assert!(log.iter().any(|c| c.local == echo_at(addr::WAN2).to_string() && c.kind == "echo"), "backend log: {log:?}");

    drop(t);
    let left: Vec<String> =
        netns::netns::list().expect("ip netns list").into_iter().filter(|n| n.starts_with(&tag)).collect();
    assert!(left.is_empty(), "namespaces left after drop: {left:?}");
    let ygg = netns::cmd::run_full(&["pgrep", "-af", &tag], None, Duration::from_secs(5)).expect("pgrep");
    assert!(ygg.stdout.trim().is_empty(), "processes left after drop: {}", ygg.stdout);
    common::phase(start, "cleaned up");
}
