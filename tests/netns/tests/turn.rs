//! coturn through the ingress (issue 4): `turnserver` in home listening on both WAN addresses,
//! relaying from wan1's address and advertising the ingress address as the relayed address
//! (`--external-ip`); the ingress forwards 3478/udp and /tcp (pool `home`, both WANs) and the
//! relay range 49160-49200/udp (pool `turnrelay`: wan1 only, where the relay sockets are bound);
//! `turnutils_uclient` in client against an ingress address.
//!
//! - Two clients relaying to each other (`-y`), over UDP through each ingress node and over TCP:
//!   allocations, permissions, channel binds and relayed data all pass; coturn relays between
//!   its own allocations internally (it maps its external address back to the relay address),
//!   so this data never needs the relay range.
//! - A remote peer (`udp-echo` in stranger) answering the advertised relayed address: its
//!   datagrams cross the ingress's relay range and reach the relay from the ingress's address.
//!   coturn's permission check (by peer IP) drops them, unless `--server-relay` turns it off:
//!   both are asserted, the second as the precise limit of TURN behind an L4 forwarder.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use netns::scenario;
use netns::services::{self, names, Listen};
use netns::topology::{addr, Options, Role, Topology};
use netns::turn::{self, ServerConfig, UclientReport};
use netns::udp_echo;
use netns::{cmd, unix_ms};

const RELAY_MIN: u16 = 49160;
const RELAY_MAX: u16 = 49200;
const USER: &str = "lbt";
const PASSWORD: &str = "lbt-turn-secret";
/// Messages each session sends.
const MESSAGES: u32 = 50;

fn server_config(server_relay: bool) -> ServerConfig {
    ServerConfig {
        listen: vec![addr::WAN1, addr::WAN2],
        relay_ip: addr::WAN1,
        external_ip: Some(addr::INGRESS1),
        external_private: None,
        min_port: RELAY_MIN,
        max_port: RELAY_MAX,
        user: USER.into(),
        password: PASSWORD.into(),
        auth_secret: None,
        realm: "lbt.test".into(),
        tls: None,
        server_relay,
    }
}

/// Topology without the mesh, `turnserver` in home, the ingress with the TURN services on both
/// nodes.
fn setup(start: Instant, server_relay: bool) -> Topology {
    turn::require().expect("coturn installed");
    let mut t = common::build(Options { mesh: false, backends: true });
    turn::start_server(&mut t, Role::Home, &server_config(server_relay)).expect("start turnserver in home");
    let wan1 = addr::WAN1.to_string();
    let mut extra = services::pool_toml("turnrelay", &[("wan1", wan1, 1)], Some(addr::HEALTH_PORT));
    extra.push_str(&format!(
        "[[service]]\nname = \"turn\"\nlisten = [\"0.0.0.0:{port}\"]\nprotocol = \"tcp\"\npool = \"home\"\n\n\
         [[service]]\nname = \"turn-udp\"\nlisten = [\"0.0.0.0:{port}\"]\nprotocol = \"udp\"\npool = \"home\"\n\
         idle_timeout = \"300s\"\n\n\
         [[service]]\nname = \"turn-relay\"\nlisten = [\"0.0.0.0:{RELAY_MIN}-{RELAY_MAX}\"]\nprotocol = \"udp\"\n\
         pool = \"turnrelay\"\nidle_timeout = \"300s\"\n",
        port = turn::PORT
    ));
    let toml = services::standard_plus(&t, &extra);
    let wait = [Listen::Tcp(turn::PORT), Listen::Udp(turn::PORT), Listen::Udp(RELAY_MIN), Listen::Udp(RELAY_MAX)];
    for role in [Role::Ingress1, Role::Ingress2] {
        services::start_ingress_toml(&mut t, role, &toml, &wait)
            .unwrap_or_else(|e| panic!("start ingress in {}: {e:#}", role.as_str()));
    }
    for role in [Role::Ingress1, Role::Ingress2] {
        scenario::wait_paths(&t, role, &[("wan1", true), ("wan2", true)], Duration::from_secs(10))
            .expect("both WANs up");
    }
    common::phase(start, "turnserver and ingress up");
    t
}

/// Runs `turnutils_uclient` in client against `server`: 2 clients without RTCP, [`MESSAGES`]
/// each, `mode` flags (`-y` client-to-client, `-t` TCP, `-e PEER` a remote peer). Returns its
/// report, its output and whether it exited 0.
fn uclient(t: &Topology, server: Ipv4Addr, mode: &[&str]) -> (UclientReport, String, bool) {
    let (n, server) = (MESSAGES.to_string(), server.to_string());
    let port = turn::PORT.to_string();
    let mut argv = vec!["turnutils_uclient", "-c", "-m", "2", "-n", &n, "-l", "120", "-z", "10"];
    argv.extend_from_slice(mode);
    argv.extend(["-u", USER, "-w", PASSWORD, "-p", &port, &server]);
    let out =
        cmd::exec(t.ns(Role::Client), &argv, Duration::from_secs(60)).unwrap_or_else(|e| panic!("uclient: {e:#}"));
    let text = format!("{}{}", out.stdout, out.stderr);
    let report = turn::parse_uclient(&text).unwrap_or_else(|e| panic!("{e:#}:\n{text}"));
    (report, text, out.status.success())
}

/// Datagrams that entered ingress1's relay range (from a relay or a peer, towards a relay).
fn relay_datagrams(t: &Topology) -> f64 {
    t.scrape(Role::Ingress1)
        .expect("scrape")
        .sum(names::UDP_DATAGRAMS, &[("service", "turn-relay"), ("direction", "up")])
}

fn check_report(what: &str, r: &UclientReport, ok: bool, out: &str) {
    let want = u64::from(MESSAGES) * 2;
    assert!(ok, "{what}: turnutils_uclient failed\n{out}");
    assert_eq!(r.send_msgs, want, "{what}: messages sent\n{out}");
    assert!(r.recv_msgs + 2 >= want, "{what}: {} of {want} messages came back\n{out}", r.recv_msgs);
    assert!(r.lost <= 2 && r.send_dropped == 0, "{what}: lost {} dropped {}\n{out}", r.lost, r.send_dropped);
}

fn report(what: &str, r: &UclientReport, took: f64, relayed: f64) {
    common::report(&format!(
        "RESULT turn {what}: {} sent, {} received, {} lost ({}%), rtt avg {} ms max {} ms, {took:.1} s; \
         {relayed} datagrams crossed ingress1's relay range",
        r.send_msgs, r.recv_msgs, r.lost, r.lost_pct, r.rtt_avg_ms, r.rtt_max_ms
    ));
}

#[test]
fn turn_client_to_client_udp_through_both_ingress_nodes() {
    let start = Instant::now();
    let mut t = setup(start, false);
    for (role, server) in [(Role::Ingress1, addr::INGRESS1), (Role::Ingress2, addr::INGRESS2)] {
        let before = relay_datagrams(&t);
        let t0 = Instant::now();
        let (r, out, ok) = uclient(&t, server, &["-y"]);
        report(&format!("udp -y via {}", role.as_str()), &r, t0.elapsed().as_secs_f64(), relay_datagrams(&t) - before);
        check_report(&format!("uclient via {}", role.as_str()), &r, ok, &out);
        let m = t.scrape(role).expect("scrape");
        let flows = m.sum(names::UDP_FLOWS_CREATED, &[("service", "turn-udp")]);
        let up = m.sum(names::UDP_DATAGRAMS, &[("service", "turn-udp"), ("direction", "up")]);
        // Two clients (uclient opens a socket or two more for its set-up), every message up.
        assert!((2.0..=4.0).contains(&flows), "{flows} turn-udp flows through {}", role.as_str());
        assert!(up >= r.send_msgs as f64, "{up} TURN datagrams through {}", role.as_str());
    }
    let log = t.proc_mut("turnserver").expect("turnserver").stdout();
    assert!(!log.contains("ERROR"), "turnserver logged errors:\n{log}");
    common::phase(start, "done");
}

#[test]
fn turn_client_to_client_tcp_through_ingress() {
    let start = Instant::now();
    let t = setup(start, false);
    let t0 = Instant::now();
    let (r, out, ok) = uclient(&t, addr::INGRESS1, &["-y", "-t"]);
    report("tcp -y via ingress1", &r, t0.elapsed().as_secs_f64(), relay_datagrams(&t));
    check_report("uclient -t via ingress1", &r, ok, &out);
    let accepted =
        t.scrape(Role::Ingress1).expect("scrape").sum(netns::ingress::names::LISTENER_ACCEPTED, &[("service", "turn")]);
    assert!(accepted >= 2.0, "the TURN TCP connections did not go through the ingress ({accepted})");
    common::phase(start, "done");
}

#[test]
fn turn_remote_peer_through_relay_range() {
    let start = Instant::now();
    let mut t = setup(start, true);
    // The peer answers the relayed address coturn advertised (ingress1, at the relay's port),
    // not the WAN address the relay's datagrams come from.
    let listen = [SocketAddr::from((addr::STRANGER, turn::PEER_PORT))];
    let opts = udp_echo::Options { raw: true, answer_ip: Some(addr::INGRESS1.into()) };
    services::start_udp_echo(&mut t, Role::Stranger, &listen, opts).expect("peer in stranger");
    let peer = addr::STRANGER.to_string();

    // --server-relay: the peer's datagrams, arriving from the ingress, reach the clients.
    let before = relay_datagrams(&t);
    let t0 = Instant::now();
    let (r, out, ok) = uclient(&t, addr::INGRESS1, &["-e", &peer]);
    let relayed = relay_datagrams(&t) - before;
    report("remote peer via ingress1's relay range (--server-relay)", &r, t0.elapsed().as_secs_f64(), relayed);
    check_report("uclient -e stranger", &r, ok, &out);
    assert!(relayed >= r.recv_msgs as f64, "only {relayed} datagrams crossed the relay range\n{out}");

    // Standard permissions: the same datagrams cross the ingress and coturn drops them, since
    // they come from the ingress's address, not the peer's it has a permission for.
    t.stop("turnserver").expect("stop turnserver");
    turn::start_server(&mut t, Role::Home, &server_config(false)).expect("restart turnserver");
    let before = relay_datagrams(&t);
    let since = unix_ms();
    let (r, out, _) = uclient(&t, addr::INGRESS1, &["-e", &peer]);
    let relayed = relay_datagrams(&t) - before;
    report("remote peer via ingress1's relay range (permissions)", &r, (unix_ms() - since) as f64 / 1000.0, relayed);
    assert_eq!(r.send_msgs, u64::from(MESSAGES) * 2, "messages sent\n{out}");
    assert!(relayed >= r.send_msgs as f64, "only {relayed} datagrams crossed the relay range\n{out}");
    assert_eq!(r.recv_msgs, 0, "coturn relayed datagrams from the ingress's address without a permission\n{out}");
    common::phase(start, "done");
}
