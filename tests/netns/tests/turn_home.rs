//! TURN end to end through the ingress with stock coturn on a LAN host (issue 18; recipe in
//! docs/turn.md; the set-up is `netns::turn_home`): `turnutils_uclient` in client against
//! ingress1, relaying to a peer in stranger through the relay range, coturn in lan behind the
//! local proxy's transparent streams.
//!
//! - before the peer has sent to the relayed address, coturn's datagrams to it arrive nowhere
//!   (counted leaving coturn's host and arriving at the peer's);
//! - relayed to `turnutils_peer` over UDP, TCP and TLS control connections through ingress1,
//!   and over UDP through ingress2 (the relayed address stays ingress1's): messages sent,
//!   received, lost; the LAN host sees the client's and the peer's real addresses (nftables
//!   counters there), coturn logs the client's; a stranger address answering without a
//!   permission is dropped by coturn (its datagrams reach the LAN host from their real
//!   address, none reach the client);
//! - wan1 cut during relayed calls: the ingress moves the flows to wan2, the local proxy hands
//!   the new flows the same transparent sockets (coturn keeps the allocations), loss printed.
//!
//! The load test is `turn_home_load.rs` (each file stays well under 90 s).

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use netns::scenario;
use netns::services::names;
use netns::topology::{addr, Cut, Options, Role, Topology, Wan};
use netns::turn::{self, UclientReport};
use netns::turn_home::{self as home, prime_relay_range, start_peer, uclient, uclient_argv, witness, STRANGER2};
use netns::wait::{check, wait_until};

fn setup(start: Instant) -> Topology {
    let mut t = common::build(Options { mesh: false, backends: true });
    let dir = PathBuf::from(env!("CARGO_BIN_EXE_loadgen")).parent().expect("bin dir").to_path_buf();
    let lp = home::local_proxy_bin(&dir).expect("local-proxy binary");
    home::start(&mut t, &lp).unwrap_or_else(|e| panic!("coturn, local proxy, ingress: {e:#}"));
    common::phase(start, "turnserver in lan, local proxy in home, ingress up");
    t
}

fn report(what: &str, r: &UclientReport, took: f64) {
    common::report(&format!(
        "RESULT turn_home {what}: {} sent, {} received, {} lost ({:.2}%), send dropped {}, rtt avg {} ms max {} ms, {took:.1} s",
        r.send_msgs, r.recv_msgs, r.lost, r.lost_pct, r.send_dropped, r.rtt_avg_ms, r.rtt_max_ms
    ));
}

/// coturn's log lines naming `needle`, at most 3 (for the report).
fn coturn_lines(t: &mut Topology, needle: &str) -> Vec<String> {
    let log = t.proc_mut("turnserver").expect("turnserver").stdout();
    log.lines().filter(|l| l.contains(needle)).take(3).map(String::from).collect()
}

#[test]
fn turn_relay_to_outside_peer_with_real_addresses() {
    let start = Instant::now();
    let mut t = setup(start);
    // Before the peer has sent anything: coturn's datagrams to it find no flow to ride (an
    // L4 forwarder cannot originate one) and none reaches it.
    t.spawn(Role::Client, "uclient-unprimed", &uclient_argv(1, 300, &[])).expect("spawn uclient");
    wait_until("coturn sending to the peer", Duration::from_secs(10), Duration::from_millis(50), || {
        let n = witness(&t, "to_peer")?;
        check(n >= 100, || format!("{n} datagrams from the relay to the peer"))
    })
    .expect("the relay sends to the peer");
    t.stop("uclient-unprimed").expect("stop uclient");
    let (sent, arrived) = (w(&t, "to_peer"), home::at_peer_from_relay(&t).expect("peer counter"));
    let guarded = home::guard_drops(&t).expect("guard counter");
    common::report(&format!(
        "RESULT turn_home before the peer sent: coturn sent {sent} datagrams to it, {arrived} arrived, \
         home's relay guard dropped {guarded}"
    ));
    assert_eq!(arrived, 0, "relay datagrams reached a peer that never sent to the relayed address");
    assert!(guarded > 0 && guarded <= sent, "home's relay guard dropped {guarded} of {sent}");
    // The peer's first datagrams (its ICE checks) open the flows; from then on all arrive.
    prime_relay_range(&t, addr::STRANGER).expect("prime the relay range");
    start_peer(&mut t).expect("turnutils_peer");
    let messages = 50;
    // The last: control through ingress2 while the relayed address (external-ip) stays
    // ingress1's, as with DNS round robin over both nodes (docs/turn.md, several ingress nodes).
    let runs = [
        ("udp", &[][..], addr::INGRESS1),
        ("tcp", &["-t"][..], addr::INGRESS1),
        ("tls", &["-t", "-S", "-p", "5349"][..], addr::INGRESS1),
        ("udp", &[][..], addr::INGRESS2),
    ];
    for (what, extra, server) in runs {
        let (peer0, client_udp0, client_tcp0) = (echoes(&t), w(&t, "client_udp"), w(&t, "client_tcp"));
        let arrived0 = home::at_peer_from_relay(&t).expect("peer counter");
        let t0 = Instant::now();
        let mut argv = uclient_argv(2, messages, extra);
        if let Some(last) = argv.last_mut() {
            *last = server.to_string();
        }
        let (r, out) = uclient(&t, &argv, Duration::from_secs(60)).unwrap_or_else(|e| panic!("{e:#}"));
        let via = if server == addr::INGRESS1 { "ingress1" } else { "ingress2 (relay through ingress1)" };
        report(&format!("{what} control via {via}, relay to the peer"), &r, t0.elapsed().as_secs_f64());
        let want = u64::from(messages) * 2;
        assert_eq!(r.send_msgs, want, "{what}: messages sent\n{out}");
        // Functional, not a loss measurement (turn_home_load is): a few datagrams may drop when
        // the 2 shared cores are saturated (seen: 7 of 100 at load 6.5, rtt spikes of 170 ms).
        assert!(r.recv_msgs * 10 >= want * 9, "{what}: {} of {want} came back\n{out}", r.recv_msgs);
        let peer = echoes(&t) - peer0;
        let arrived = home::at_peer_from_relay(&t).expect("peer counter") - arrived0;
        assert!(arrived >= r.recv_msgs, "{what}: only {arrived} relay datagrams reached the peer");
        assert!(peer >= r.recv_msgs, "{what}: only {peer} datagrams reached lan from the peer's own address");
        let control = if what == "udp" { w(&t, "client_udp") - client_udp0 } else { w(&t, "client_tcp") - client_tcp0 };
        assert!(control > 0, "{what}: nothing reached coturn from the client's own address");
        common::report(&format!(
            "RESULT turn_home {what}: lan saw {peer} datagrams from the peer {}, {control} {what} packets from the client {}",
            addr::STRANGER,
            addr::CLIENT
        ));
    }
    // Once the flows exist, nothing of the relay's is left for the guard.
    let after = home::guard_drops(&t).expect("guard counter");
    assert_eq!(after, guarded, "the relay guard dropped datagrams that had a flow");
    // coturn's own log: sessions from the client's address, permissions for the peer's.
    let client = format!("remote {}:", addr::CLIENT);
    let sessions = coturn_lines(&mut t, &client);
    assert!(!sessions.is_empty(), "coturn never logged a session from {client}");
    let peer = format!("peer {}", addr::STRANGER);
    let perms = coturn_lines(&mut t, &peer);
    assert!(!perms.is_empty(), "coturn never logged {peer}");
    common::report(&format!("RESULT turn_home coturn log: {}\n  {}", sessions.join("\n  "), perms.join("\n  ")));
    common::phase(start, "relayed over udp, tcp and tls control connections");

    // A stranger answering from an address the client gave no permission: its datagrams reach
    // coturn from that real address and coturn drops them.
    t.stop("turnutils_peer").expect("stop the peer");
    let script = format!(
        "import socket, time\nr = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\nr.bind(('{peer}', {port}))\n\
         s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ns.bind(('{other}', {port}))\n\
         while True:\n    d, a = r.recvfrom(65535)\n    s.sendto(d, a)\n",
        peer = addr::STRANGER,
        other = STRANGER2,
        port = turn::PEER_PORT
    );
    t.spawn(Role::Stranger, "misaddressed-echo", &["python3".into(), "-c".into(), script]).expect("spawn echo");
    std::thread::sleep(Duration::from_millis(300));
    let before = w(&t, "stranger");
    let (r, out) =
        uclient(&t, &uclient_argv(2, messages, &[]), Duration::from_secs(60)).unwrap_or_else(|e| panic!("{e:#}"));
    report("answers from a stranger address without a permission", &r, 0.0);
    let stranger = w(&t, "stranger") - before;
    assert!(stranger >= r.send_msgs / 2, "only {stranger} stranger datagrams reached lan\n{out}");
    assert_eq!(r.recv_msgs, 0, "coturn relayed datagrams from {STRANGER2}, which has no permission\n{out}");
    common::report(&format!(
        "RESULT turn_home stranger: lan saw {stranger} datagrams from {STRANGER2}, the client received {}",
        r.recv_msgs
    ));
    common::phase(start, "done");
}

/// A peer that talks as well as answers, as both sides of a call do: it echoes what the relay
/// sends and every 200 ms sends a short datagram (`consent`, like ICE's consent checks) to
/// every relay port of ingress1. An L4 forwarder moves a flow to another WAN on the outside
/// party's next datagram; an echo that only answers would never send one while the relay's
/// datagrams to it are lost on the dead WAN. coturn relays these to the client, which ignores
/// them (wrong length).
fn start_talking_peer(t: &mut Topology) {
    let script = format!(
        "import socket, select, time\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         s.bind(('{peer}', {port}))\ns.setblocking(False)\nnext_check = 0.0\n\
         while True:\n\
         \x20   now = time.monotonic()\n\
         \x20   if now >= next_check:\n\
         \x20       next_check = now + 0.2\n\
         \x20       for p in range({min}, {end}):\n\
         \x20           s.sendto(b'consent', ('{ing}', p))\n\
         \x20   if select.select([s], [], [], 0.02)[0]:\n\
         \x20       while True:\n\
         \x20           try:\n\
         \x20               d, a = s.recvfrom(65535)\n\
         \x20           except BlockingIOError:\n\
         \x20               break\n\
         \x20           s.sendto(d, a)\n",
        peer = addr::STRANGER,
        port = turn::PEER_PORT,
        min = home::RELAY_MIN,
        end = home::RELAY_MAX + 1,
        ing = addr::INGRESS1
    );
    t.spawn(Role::Stranger, "talking-peer", &["python3".into(), "-c".into(), script]).expect("spawn the peer");
}

#[test]
fn turn_relayed_call_survives_wan1_cut() {
    let start = Instant::now();
    let mut t = setup(start);
    start_talking_peer(&mut t);
    let (clients, messages) = (4, 1000);
    t.spawn(Role::Client, "uclient", &uclient_argv(clients, messages, &[])).expect("spawn uclient");
    // Cut once the calls carry data (the peer's echoes reach the LAN host).
    wait_until("relayed data flowing", Duration::from_secs(15), Duration::from_millis(50), || {
        t.proc_mut("uclient")?.ensure_running()?;
        let n = home::peer_echoes(&t)?;
        check(n >= 200, || format!("{n} echoes from the peer"))
    })
    .expect("calls under way");
    let cut_at = Instant::now();
    t.cut(Wan::Wan1, Cut::LinkDown).expect("cut wan1");
    scenario::wait_paths(&t, Role::Ingress1, &[("wan1", false)], Duration::from_secs(5)).expect("wan1 down");
    let detected = cut_at.elapsed().as_secs_f64();
    let p = t.proc_mut("uclient").expect("uclient");
    let status = p.wait_exit(Duration::from_secs(40)).expect("uclient ends");
    let text = format!("{}{}", p.stdout(), p.stderr());
    t.restore(Wan::Wan1, Cut::LinkDown).expect("restore wan1");
    let r = turn::parse_uclient(&text).unwrap_or_else(|e| panic!("{e:#}:\n{text}"));
    report(&format!("wan1 cut during {clients} relayed calls (detected in {detected:.2} s)"), &r, 0.0);
    assert!(status.success(), "turnutils_uclient failed:\n{text}");
    let m = t.scrape(Role::Ingress1).expect("scrape ingress1");
    let migrated = m.sum(names::UDP_FLOWS_MIGRATED, &[]);
    let moved = home::lp_metrics(&t).expect("scrape the local proxy").sum("local_proxy_udp_flows_moved_total", &[]);
    common::report(&format!(
        "RESULT turn_home wan1 cut: ingress1 moved {migrated} flows to wan2, the local proxy handed {moved} of them \
         their transparent socket"
    ));
    assert!(migrated > 0.0 && moved > 0.0, "nothing moved (migrated {migrated}, moved {moved}): was anything on wan1?");
    // Loss bounded by the detection window: at most ~1 s × 100/s for each of the 4 calls
    // (10 %; measured 3-5 %). A call whose allocation or relay flow did not survive the move
    // would lose the rest of it, ~9 s × 100/s: one such call alone is over 20 % of the total.
    let sent = r.send_msgs;
    assert_eq!(sent, u64::from(clients * messages), "messages sent\n{text}");
    assert!(r.lost * 8 <= sent, "lost {} of {sent}: the calls did not go on over wan2\n{text}", r.lost);
    common::phase(start, "done");
}

/// Packets the LAN host's witness counter `name` saw.
fn w(t: &Topology, name: &str) -> u64 {
    witness(t, name).unwrap_or_else(|e| panic!("witness {name}: {e:#}"))
}

/// The peer's echoes that reached the LAN host.
fn echoes(t: &Topology) -> u64 {
    home::peer_echoes(t).unwrap_or_else(|e| panic!("peer echoes: {e:#}"))
}
