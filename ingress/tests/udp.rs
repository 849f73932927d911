//! UDP services on loopback: flows pinned to a path, replies from the listening address,
//! migration when the path goes down, the flow cap.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use tokio::net::UdpSocket;

/// Home on two paths: each a TCP backend (the health checks') and a UDP echo on its address.
struct TwoPaths {
    tcp1: Backend,
    tcp2: Backend,
    _echo1: UdpEcho,
    _echo2: UdpEcho,
}

impl TwoPaths {
    async fn start() -> Self {
        let tcp1 = Backend::start("wan1", "127.0.0.2").await;
        let tcp2 = Backend::start("wan2", "127.0.0.3").await;
        let _echo1 = UdpEcho::start("wan1", tcp1.addr).await;
        let _echo2 = UdpEcho::start("wan2", tcp2.addr).await;
        Self { tcp1, tcp2, _echo1, _echo2 }
    }
}

fn udp_config(wan1: SocketAddr, wan2: SocketAddr, extra: &str) -> String {
    format!(
        r#"
[admin]
listen = "127.0.0.1:0"
[pool.udp]
paths = [{{ name = "wan1", address = "{wan1}", weight = 1 }}, {{ name = "wan2", address = "{wan2}", weight = 1 }}]
health = {{ interval = "100ms", timeout = "100ms", rise = 2, fall = 2 }}
[[service]]
name = "udp-echo"
listen = ["127.0.0.1:0"]
protocol = "udp"
pool = "udp"
idle_timeout = "2s"
{extra}
"#
    )
}

/// A raw UDP echo on `addr`: returns exactly what it received, header included.
async fn raw_echo(addr: SocketAddr) -> tokio::task::JoinHandle<()> {
    let raw = UdpSocket::bind(addr).await.expect("bind raw echo");
    tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        loop {
            let Ok((n, from)) = raw.recv_from(&mut buf).await else { continue };
            let _ = raw.send_to(&buf[..n], from).await;
        }
    })
}

async fn ask(sock: &UdpSocket, msg: &str) -> Option<String> {
    ask_within(sock, msg, Duration::from_millis(500)).await
}

/// [`ask`] with its own wait for the answer: where a late answer would be taken for a refusal.
async fn ask_within(sock: &UdpSocket, msg: &str, wait: Duration) -> Option<String> {
    sock.send(msg.as_bytes()).await.ok()?;
    let mut buf = [0u8; 2048];
    let n = tokio::time::timeout(wait, sock.recv(&mut buf)).await.ok()?.ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flow_stays_on_its_path_and_moves_when_the_path_dies() {
    // TCP backends answer the health checks; UDP echoes listen on the same addresses.
    let mut tcp1 = Backend::start("wan1", "127.0.0.2").await;
    let tcp2 = Backend::start("wan2", "127.0.0.3").await;
    let echo1 = UdpEcho::start("wan1", tcp1.addr).await;
    let _echo2 = UdpEcho::start("wan2", tcp2.addr).await;
    let server = start(&udp_config(tcp1.addr, tcp2.addr, "")).await;
    let mut addr = None;
    wait_until("udp listener", Duration::from_secs(5), || {
        addr = server.local_addrs("udp-echo").first().copied();
        addr.is_some()
    })
    .await;
    let addr = addr.expect("bound");
    let client = client_on_wan1(addr).await;
    for i in 0..20 {
        let r = ask(&client, &format!("m{i}")).await.expect("reply");
        assert_eq!(r, format!("wan1:m{i}"), "a flow stays on its path; replies come from the listener");
    }
    tcp1.kill().await;
    echo1.stop().await;
    let mut moved = false;
    for i in 0..100 {
        if let Some(r) = ask(&client, &format!("n{i}")).await {
            if r == format!("wan2:n{i}") {
                moved = true;
                break;
            }
        }
    }
    assert!(moved, "flow did not move to wan2");
    let m = metrics(&server).await;
    let moved = &[("service", "udp-echo"), ("path", "wan1"), ("reason", "path_down")];
    assert!(metric(&m, "ingress_udp_flows_migrated_total", moved) >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flow_cap_drops_new_clients_while_flows_talk_then_admits_over_the_idlest() {
    let tcp1 = Backend::start("wan1", "127.0.0.2").await;
    let tcp2 = Backend::start("wan2", "127.0.0.3").await;
    let _e1 = UdpEcho::start("wan1", tcp1.addr).await;
    let _e2 = UdpEcho::start("wan2", tcp2.addr).await;
    // A long idle timeout: flows end only by eviction here (after 250 ms of silence).
    let toml = udp_config(tcp1.addr, tcp2.addr, "max_flows = 3")
        .replace("udp-echo", "udp-capped")
        .replace("idle_timeout = \"2s\"", "idle_timeout = \"60s\"");
    let server = start(&toml).await;
    let mut addr = None;
    wait_until("udp listener", Duration::from_secs(5), || {
        addr = server.local_addrs("udp-capped").first().copied();
        addr.is_some()
    })
    .await;
    let addr = addr.expect("bound");
    // Six clients of one address (ports of one host): a budget this small holds no address
    // to a share (`udp_flows::SHARED_FROM`), so a new port still takes a silent flow's slot.
    let mut clients = Vec::new();
    for _ in 0..6 {
        let c = UdpSocket::bind("127.0.0.1:0").await.expect("client");
        c.connect(addr).await.expect("connect");
        clients.push(c);
    }
    for c in &clients[..3] {
        if ask(c, "x").await.is_none() {
            let m = metrics(&server).await;
            let l: Vec<&str> = m.lines().filter(|l| l.contains("udp") || l.contains("limit")).collect();
            panic!("the first max_flows clients get flows:\n{}", l.join("\n"));
        }
    }
    // Two new sources right away, while the three flows have just talked: both dropped.
    let (a, b) = tokio::join!(ask(&clients[3], "x"), ask(&clients[4], "x"));
    assert!(a.is_none() && b.is_none(), "no slot while every flow talks");
    // Keep flows 2 and 3 talking; flow 1 falls silent. A new source then takes its slot.
    for _ in 0..4 {
        for c in &clients[1..3] {
            assert!(ask(c, "again").await.is_some(), "established flows keep working");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ask(&clients[5], "x").await.is_some(), "admitted over the longest-silent flow");
    for c in &clients[1..3] {
        assert!(ask(c, "still").await.is_some(), "talking flows were not the ones evicted");
    }
    let m = metrics(&server).await;
    let drops = metric(&m, "ingress_udp_drops_total", &[("service", "udp-capped"), ("reason", "flow_cap")]);
    assert!(drops >= 2.0, "drops counted: {drops}");
    assert!(metric(&m, "ingress_udp_flows_evicted_total", &[("service", "udp-capped")]) >= 1.0);
}

/// A flow moving off a dead path at a full budget takes its own slots along: before, it
/// evicted another client's quiet flow (a TURN allocation between refreshes) or, with none
/// quiet, was dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flow_moving_at_a_full_budget_evicts_no_other() {
    let mut tcp = [Backend::start("wan1", "127.0.0.2").await, Backend::start("wan2", "127.0.0.3").await];
    let mut echo = [Some(UdpEcho::start("wan1", tcp[0].addr).await), Some(UdpEcho::start("wan2", tcp[1].addr).await)];
    let toml = udp_config(tcp[0].addr, tcp[1].addr, "max_flows = 2")
        .replace("udp-echo", "udp-full")
        .replace("idle_timeout = \"2s\"", "idle_timeout = \"60s\"");
    let server = start(&toml).await;
    let addr = service_addr(&server, "udp-full").await;
    let clients =
        [UdpSocket::bind("127.0.0.1:0").await.expect("client"), UdpSocket::bind("127.0.0.1:0").await.expect("client")];
    let mut on = Vec::new();
    for c in &clients {
        c.connect(addr).await.expect("connect");
        let r = ask_within(c, "hi", Duration::from_secs(2)).await.expect("both flows fit");
        on.push(if r.starts_with("wan1:") { 0 } else { 1 });
    }
    // Both flows quiet for longer than a full budget waits before evicting one (250 ms).
    tokio::time::sleep(Duration::from_millis(400)).await;
    let dead = on[0];
    tcp[dead].kill().await;
    echo[dead].take().expect("running").stop().await;
    let alive = if dead == 0 { "wan2" } else { "wan1" };
    let mut moved = false;
    for i in 0..40 {
        if ask(&clients[0], &format!("n{i}")).await.is_some_and(|r| r == format!("{alive}:n{i}")) {
            moved = true;
            break;
        }
    }
    assert!(moved, "the first client's flow did not move to {alive}");
    let m = metrics(&server).await;
    assert_eq!(metric(&m, "ingress_udp_flows_evicted_total", &[("service", "udp-full")]), 0.0, "a flow was evicted");
    assert_eq!(metric(&m, "ingress_udp_drops_total", &[("service", "udp-full"), ("reason", "flow_cap")]), 0.0);
    let r = ask_within(&clients[1], "still", Duration::from_secs(2)).await.expect("the other client is answered");
    assert!(r.ends_with(":still"), "{r}");
}

/// One address keeping many flows talking (a source port each) holds no more than a quarter
/// of a nearly full budget: another client is still answered, and the refusals are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_keeping_its_flows_talking_leaves_room_for_others() {
    let tcp1 = Backend::start("wan1", "127.0.0.2").await;
    let tcp2 = Backend::start("wan2", "127.0.0.3").await;
    let _e1 = UdpEcho::start("wan1", tcp1.addr).await;
    let _e2 = UdpEcho::start("wan2", tcp2.addr).await;
    let toml = udp_config(tcp1.addr, tcp2.addr, "max_flows = 16")
        .replace("udp-echo", "udp-shared")
        .replace("idle_timeout = \"2s\"", "idle_timeout = \"60s\"");
    let server = start(&toml).await;
    let addr = service_addr(&server, "udp-shared").await;
    // Fourteen ports of one address, all talking: twelve get flows (three quarters of 16),
    // the rest are refused while those talk. Two seconds for each answer: on a loaded machine
    // one could take over the usual half second and be counted as refused.
    let mut answered = 0;
    for _ in 0..14 {
        let c = UdpSocket::bind("127.0.2.1:0").await.expect("client");
        c.connect(addr).await.expect("connect");
        if ask_within(&c, "x", Duration::from_secs(2)).await.is_some() {
            answered += 1;
        }
    }
    assert_eq!(answered, 12, "one address gets three quarters of the budget");
    let other = UdpSocket::bind("127.0.2.2:0").await.expect("client");
    other.connect(addr).await.expect("connect");
    assert!(ask(&other, "x").await.is_some(), "another address is answered");
    let m = metrics(&server).await;
    assert_eq!(metric(&m, "ingress_udp_drops_total", &[("service", "udp-shared"), ("reason", "source_share")]), 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_datagrams_carry_a_proxy_v2_header_with_the_client_address() {
    let tcp1 = Backend::start("wan1", "127.0.0.2").await;
    let echo = raw_echo(tcp1.addr).await;
    let toml = udp_config(tcp1.addr, tcp1.addr, "proxy_protocol = \"v2\"")
        .replace("udp-echo", "udp-proxied")
        .replace("{ name = \"wan2\"", "{ name = \"wan2b\"");
    let server = start(&toml).await;
    let mut addr = None;
    wait_until("udp listener", Duration::from_secs(5), || {
        addr = server.local_addrs("udp-proxied").first().copied();
        addr.is_some()
    })
    .await;
    let addr = addr.expect("bound");
    let client = UdpSocket::bind("127.0.0.9:0").await.expect("client");
    client.connect(addr).await.expect("connect");
    let me = client.local_addr().expect("local");
    for i in 0..3 {
        let payload = format!("datagram {i}");
        client.send(payload.as_bytes()).await.expect("send");
        let mut buf = [0u8; 2048];
        let n =
            tokio::time::timeout(Duration::from_secs(2), client.recv(&mut buf)).await.expect("reply").expect("recv");
        let parsed = shared::proxy_protocol::parse(&buf[..n]).expect("each datagram starts with a PROXY v2 header");
        assert_eq!(parsed.transport, shared::proxy_protocol::Transport::Datagram);
        assert_eq!(parsed.addresses(), Some((me, addr)));
        assert_eq!(&buf[parsed.len..n], payload.as_bytes());
    }
    echo.abort();
}

/// A service on a wildcard address answers each client from the address it sent to, not
/// from the route's source (a client's NAT, QUIC stack or DNS stub drops a reply from
/// elsewhere), and its PROXY header names that address: here two of the host's loopback
/// addresses, neither of them the route's source back to the client (127.0.0.1). One client
/// socket talks to both, interleaved (ICE with two TURN servers' names on one host): two
/// flows, each answered from its own address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wildcard_service_answers_from_the_address_the_client_sent_to() {
    let tcp1 = Backend::start("wan1", "127.0.0.2").await;
    let echo = raw_echo(tcp1.addr).await;
    let port = test_support::free_port();
    let toml = udp_config(tcp1.addr, tcp1.addr, "proxy_protocol = \"v2\"")
        .replace("{ name = \"wan2\"", "{ name = \"wan2b\"")
        .replace("listen = [\"127.0.0.1:0\"]", &format!("listen = [\"0.0.0.0:{port}\"]"));
    let server = start(&toml).await;
    assert_eq!(service_addr(&server, "udp-echo").await.port(), port);
    let client = UdpSocket::bind("127.0.0.1:0").await.expect("client");
    let me = client.local_addr().expect("local");
    for i in 0..3 {
        for ip in ["127.0.0.5", "127.0.0.6"] {
            let asked = SocketAddr::new(ip.parse().expect("ip"), port);
            let payload = format!("datagram {i} to {ip}");
            client.send_to(payload.as_bytes(), asked).await.expect("send");
            let mut buf = [0u8; 2048];
            let (n, from) = tokio::time::timeout(Duration::from_secs(2), client.recv_from(&mut buf))
                .await
                .expect("reply")
                .expect("recv");
            assert_eq!(from, asked, "the reply comes from the address asked");
            let parsed = shared::proxy_protocol::parse(&buf[..n]).expect("a PROXY v2 header");
            assert_eq!(parsed.addresses(), Some((me, asked)), "the header names the address asked");
            assert_eq!(&buf[parsed.len..n], payload.as_bytes());
        }
    }
    echo.abort();
}

/// Stopping for a restart (drain) relays the replies still on their way: a datagram relayed
/// just before, to an upstream that answers 50 ms later, is still answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_relays_the_replies_still_on_their_way() {
    let tcp1 = Backend::start("wan1", "127.0.0.2").await;
    let tcp2 = Backend::start("wan2", "127.0.0.3").await;
    let _echo1 = UdpEcho::start_delayed("wan1", tcp1.addr, Duration::from_millis(50)).await;
    let _echo2 = UdpEcho::start_delayed("wan2", tcp2.addr, Duration::from_millis(50)).await;
    let server = start(&udp_config(tcp1.addr, tcp2.addr, "")).await;
    let addr = service_addr(&server, "udp-echo").await;
    let c = UdpSocket::bind("127.0.0.1:0").await.expect("client");
    c.connect(addr).await.expect("connect");
    let mut warm = false;
    for _ in 0..20 {
        if ask(&c, "warm").await.is_some() {
            warm = true;
            break;
        }
    }
    assert!(warm, "no reply through the ingress before the drain");

    c.send(b"last").await.expect("send");
    // The ingress relays it within microseconds; the answer is 50 ms away when the drain begins.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mut buf = [0u8; 64];
    let (left, reply) = tokio::join!(
        server.drain(Duration::from_secs(5)),
        tokio::time::timeout(Duration::from_secs(2), c.recv(&mut buf))
    );
    assert_eq!(left, 0);
    let n = reply.expect("the reply on its way was dropped by the drain").expect("recv");
    let reply = String::from_utf8_lossy(&buf[..n]);
    assert!(reply.ends_with(":last"), "unexpected reply {reply}");
}

/// A burst from one client (read by the listener in batches, sent home in GSO runs) arrives
/// whole and in order, every datagram behind its own PROXY v2 header; a second client's
/// datagrams in the same burst go to its own flow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_arrives_whole_and_in_order_each_datagram_with_its_header() {
    let tcp1 = Backend::start("wan1", "127.0.0.2").await;
    let upstream = UdpSocket::bind(tcp1.addr).await.expect("bind upstream");
    let toml =
        udp_config(tcp1.addr, tcp1.addr, "proxy_protocol = \"v2\"").replace("{ name = \"wan2\"", "{ name = \"wan2b\"");
    let server = start(&toml).await;
    let addr = service_addr(&server, "udp-echo").await;
    let one = UdpSocket::bind("127.0.0.9:0").await.expect("client one");
    let two = UdpSocket::bind("127.0.0.10:0").await.expect("client two");
    // 50 datagrams of 500 bytes from one, and after every tenth one as long from two: a run
    // that took in two's would hand it to one's flow.
    for i in 0..50u8 {
        one.send_to(&[i; 500], addr).await.expect("send");
        if i % 10 == 9 {
            two.send_to(&[100 + i; 500], addr).await.expect("send");
        }
    }
    let got = test_support::proxied_bursts(&upstream, 55, 500).await;
    let one_got = &got[&one.local_addr().expect("addr")];
    assert_eq!(one_got, &(0..50).collect::<Vec<u8>>(), "client one's datagrams, whole and in order");
    assert_eq!(got[&two.local_addr().expect("addr")], [109, 119, 129, 139, 149], "client two's");
}

/// A burst of replies (read by the flow's pump in batches, sent to the client in GSO runs)
/// arrives whole and in order, from the service's address, lengths mixed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_replies_reaches_the_client_whole_and_in_order() {
    let tcp1 = Backend::start("wan1", "127.0.0.2").await;
    let upstream = UdpSocket::bind(tcp1.addr).await.expect("bind upstream");
    let toml = udp_config(tcp1.addr, tcp1.addr, "").replace("{ name = \"wan2\"", "{ name = \"wan2b\"");
    let server = start(&toml).await;
    let addr = service_addr(&server, "udp-echo").await;
    let client = UdpSocket::bind("127.0.0.9:0").await.expect("client");
    client.send_to(b"hello", addr).await.expect("send");
    let mut buf = vec![0u8; 65_536];
    let (n, flow) = tokio::time::timeout(Duration::from_secs(5), upstream.recv_from(&mut buf))
        .await
        .expect("the first datagram reaches the upstream")
        .expect("recv");
    assert_eq!(&buf[..n], b"hello");
    test_support::reply_burst(&upstream, flow, &client, addr).await;
}

/// udp_recv_buffer sizes the listening socket and each flow's socket, and a reload applies a
/// new size to the running listener (at its next datagram) and to flows opened after. The
/// sizes stay under net.core.rmem_max, so they hold with or without CAP_NET_ADMIN.
#[tokio::test]
async fn udp_recv_buffer_sizes_listeners_and_flows_and_follows_a_reload() {
    let tcp1 = Backend::start("wan1", "127.0.0.2").await;
    let upstream = UdpSocket::bind(tcp1.addr).await.expect("bind upstream");
    let conf = |size: u32| {
        udp_config(tcp1.addr, tcp1.addr, &format!("udp_recv_buffer = {size}"))
            .replace("{ name = \"wan2\"", "{ name = \"wan2b\"")
    };
    let server = start(&conf(65_536)).await;
    let addr = service_addr(&server, "udp-echo").await;
    assert_eq!(test_support::udp_receive_buffer(addr.port()), Some(2 * 65_536), "the listener, as configured");
    let first = flow_port(&upstream, addr, "127.0.0.9").await;
    assert_eq!(test_support::udp_receive_buffer(first), Some(2 * 65_536), "the flow's socket, as configured");

    server.try_reload(ingress::Config::from_toml(&conf(131_072)).expect("valid")).await.expect("applies");
    let second = flow_port(&upstream, addr, "127.0.0.10").await;
    assert_eq!(
        test_support::udp_receive_buffer(addr.port()),
        Some(2 * 131_072),
        "the running listener, after the reload"
    );
    assert_eq!(test_support::udp_receive_buffer(second), Some(2 * 131_072), "a flow opened after the reload");
    assert_eq!(test_support::udp_receive_buffer(first), Some(2 * 65_536), "a flow opened before keeps its socket");
}

/// A new client on `ip` sends to the service; the local port of its flow's socket, as the
/// upstream sees it.
async fn flow_port(upstream: &UdpSocket, service: SocketAddr, ip: &str) -> u16 {
    let client = UdpSocket::bind((ip, 0)).await.expect("client");
    client.send_to(b"hi", service).await.expect("send");
    let (_, flow) = tokio::time::timeout(Duration::from_secs(5), upstream.recv_from(&mut [0u8; 64]))
        .await
        .expect("the datagram reaches the upstream")
        .expect("recv");
    flow.port()
}

/// A flow that fell back to the mesh tier goes back to a WAN once one is up again (and not
/// held), on its next datagram: talking, it would never time out, and would ride the fallback
/// for days after the WANs came back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flow_on_the_mesh_goes_back_when_a_wan_is_up_again() {
    let mut tcp1 = Backend::start("wan1", "127.0.0.2").await;
    let tcp_mesh = Backend::start("mesh", "127.0.0.4").await;
    let echo1 = UdpEcho::start("wan1", tcp1.addr).await;
    let _echo_mesh = UdpEcho::start("mesh", tcp_mesh.addr).await;
    let text = udp_config(tcp1.addr, tcp1.addr, "").replace(
        &format!("paths = [{{ name = \"wan1\", address = \"{a}\", weight = 1 }}, {{ name = \"wan2\", address = \"{a}\", weight = 1 }}]", a = tcp1.addr),
        &format!("paths = [{{ name = \"wan1\", address = \"{}\" }}]\nmesh = \"{}\"", tcp1.addr, tcp_mesh.addr),
    );
    assert!(text.contains("mesh = "), "{text}");
    let server = start(&text).await;
    let addr = service_addr(&server, "udp-echo").await;
    let client = UdpSocket::bind("127.0.0.1:0").await.expect("client");
    client.connect(addr).await.expect("connect");
    assert_eq!(ask(&client, "a").await.as_deref(), Some("wan1:a"));
    tcp1.kill().await;
    echo1.stop().await;
    let mut on_mesh = false;
    for i in 0..100 {
        if ask(&client, &format!("b{i}")).await.is_some_and(|r| r == format!("mesh:b{i}")) {
            on_mesh = true;
            break;
        }
    }
    assert!(on_mesh, "the flow did not fall back to the mesh");
    tcp1.restart().await;
    let _echo1 = UdpEcho::start("wan1", tcp1.addr).await;
    let mut back = false;
    for i in 0..100 {
        if ask(&client, &format!("c{i}")).await.is_some_and(|r| r == format!("wan1:c{i}")) {
            back = true;
            break;
        }
        // wan1 comes back after `rise` probes.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(back, "the flow stayed on the mesh with wan1 back");
    let m = metrics(&server).await;
    let labels = &[("service", "udp-echo"), ("path", "mesh"), ("reason", "wan_back")];
    assert!(metric(&m, "ingress_udp_flows_migrated_total", labels) >= 1.0);
}

/// A client of `addr` whose flow landed on wan1 (the pick is random; 50 tries).
async fn client_on_wan1(addr: SocketAddr) -> UdpSocket {
    for _ in 0..50 {
        let c = UdpSocket::bind("127.0.0.1:0").await.expect("client");
        c.connect(addr).await.expect("connect");
        if ask(&c, "hi").await.is_some_and(|r| r.starts_with("wan1:")) {
            return c;
        }
    }
    panic!("no flow on wan1 in 50 clients");
}

/// Home on both paths, a client whose flow is on wan1, then a reload that takes wan1 out of
/// the pool; with `/metrics` from just before the reload.
async fn a_wan1_flow_then_wan1_reloaded_away() -> (TwoPaths, ingress::Server, UdpSocket, String) {
    let home = TwoPaths::start().await;
    let both = udp_config(home.tcp1.addr, home.tcp2.addr, "");
    let server = start(&both).await;
    let addr = service_addr(&server, "udp-echo").await;
    let client = client_on_wan1(addr).await;
    let wan1 = format!("{{ name = \"wan1\", address = \"{}\", weight = 1 }}, ", home.tcp1.addr);
    assert!(both.contains(&wan1), "{both}");
    let before = metrics(&server).await;
    server.try_reload(ingress::Config::from_toml(&both.replace(&wan1, "")).expect("valid")).await.expect("applies");
    (home, server, client, before)
}

/// Flows moved off wan1 for `reason`.
fn migrated_from_wan1(m: &str, reason: &str) -> f64 {
    metric(m, "ingress_udp_flows_migrated_total", &[("path", "wan1"), ("reason", reason)])
}

/// A reload that takes a flow's path out of the pool moves the flow, though it keeps talking
/// and the old path still answers: nothing probes a removed path any more, so waiting for it
/// to go down would keep the flow there for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_removes_a_flows_path_moves_the_flow() {
    let (_home, server, client, before) = a_wan1_flow_then_wan1_reloaded_away().await;
    let r = ask(&client, "after").await.expect("a reply after the reload");
    assert_eq!(r, "wan2:after", "the flow stayed on the removed path");
    let after = metrics(&server).await;
    let by = migrated_from_wan1;
    assert_eq!(by(&after, "reload") - by(&before, "reload"), 1.0, "the flow the reload moved, counted as such");
    assert_eq!(by(&after, "path_down"), by(&before, "path_down"), "wan1 never went down");
}

/// The same without a datagram after the reload: the flow ends at the listener's next sweep,
/// so a flow that only receives does not keep the removed path's replies coming.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_removes_a_quiet_flows_path_ends_the_flow() {
    let (_home, server, _client, before) = a_wan1_flow_then_wan1_reloaded_away().await;
    let before = migrated_from_wan1(&before, "reload");
    let mut ended = false;
    for _ in 0..40 {
        if migrated_from_wan1(&metrics(&server).await, "reload") - before >= 1.0 {
            ended = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ended, "the quiet flow on the removed path outlived the reload");
}

/// A reload that gives a UDP listener's address to a service of another name: its datagrams
/// and open flows are counted under the new name from then on (the old name's series leave
/// `/metrics` with the service).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renamed_udp_service_is_counted_under_its_new_name() {
    let home = TwoPaths::start().await;
    let (tcp1, tcp2) = (&home.tcp1, &home.tcp2);
    let port = test_support::free_port();
    let before = udp_config(tcp1.addr, tcp2.addr, "").replace("127.0.0.1:0\"]", &format!("127.0.0.1:{port}\"]"));
    let server = start(&before).await;
    let addr = service_addr(&server, "udp-echo").await;
    let client = UdpSocket::bind("127.0.0.1:0").await.expect("client");
    client.connect(addr).await.expect("connect");
    assert!(ask(&client, "before").await.is_some());
    let renamed = before.replace("name = \"udp-echo\"", "name = \"udp-renamed\"");
    server.try_reload(ingress::Config::from_toml(&renamed).expect("valid")).await.expect("applies");
    assert_eq!(service_addr(&server, "udp-renamed").await, addr, "the socket is kept");
    for i in 0..3 {
        assert!(ask(&client, &format!("after {i}")).await.is_some(), "answered after the rename");
    }
    let m = metrics(&server).await;
    let up = [("service", "udp-renamed"), ("direction", "up")];
    assert_eq!(metric(&m, "ingress_udp_datagrams_total", &up), 3.0, "{m}");
    assert_eq!(metric(&m, "ingress_udp_flows_active", &[("service", "udp-renamed")]), 1.0, "{m}");
}

/// Two UDP services on one port, one on the wildcard address and one on 127.0.0.1, both with
/// `udp_reuseport`, on one event loop: each socket sets SO_REUSEPORT (a group of one), so both
/// bind, as `ingress check` lets them. Before, a single socket had none and the second bind
/// was retried for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcard_and_specific_udp_listeners_with_udp_reuseport_both_bind() {
    let tcp1 = Backend::start("wan1", "127.0.0.2").await;
    let tcp2 = Backend::start("wan2", "127.0.0.3").await;
    let port = test_support::free_port();
    let service = |name: &str, listen: String| {
        format!(
            "[[service]]\nname = \"{name}\"\nlisten = [\"{listen}\"]\nprotocol = \"udp\"\npool = \"udp\"\nudp_reuseport = true\n"
        )
    };
    let toml = udp_config(tcp1.addr, tcp2.addr, "").replace(
        "[[service]]\nname = \"udp-echo\"",
        &format!(
            "{}{}[[service]]\nname = \"udp-echo\"",
            service("wild", format!("0.0.0.0:{port}")),
            service("lo", format!("127.0.0.1:{port}"))
        ),
    );
    let server = start(&toml).await;
    for name in ["wild", "lo"] {
        let addr = service_addr(&server, name).await;
        assert_eq!(addr.port(), port, "{name}");
    }
}

/// A new source whose flow socket cannot be made because the process is out of descriptors
/// is dropped as `reason="resources"`: both paths are up, and "no_path" would send an
/// operator looking at home. The next datagram, with descriptors again, gets its flow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flow_refused_for_want_of_descriptors_is_not_counted_as_no_path() {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    use std::os::fd::AsRawFd;
    let home = TwoPaths::start().await;
    let (tcp1, tcp2) = (&home.tcp1, &home.tcp2);
    let server = start(&udp_config(tcp1.addr, tcp2.addr, "")).await;
    let addr = service_addr(&server, "udp-echo").await;
    // A path answers: the pool has usable paths.
    client_on_wan1(addr).await;
    let client = UdpSocket::bind("127.0.0.1:0").await.expect("client");
    client.connect(addr).await.expect("connect");
    // Every descriptor number below the lowest free one is open: with the soft limit there,
    // the next socket this process makes fails with EMFILE.
    let lowest_free = std::fs::File::open("/dev/null").expect("/dev/null").as_raw_fd() as u64;
    let limit = getrlimit(Resource::Nofile);
    setrlimit(Resource::Nofile, Rlimit { current: Some(lowest_free), maximum: limit.maximum }).expect("lower");
    client.send(b"x").await.expect("send");
    tokio::time::sleep(Duration::from_millis(300)).await;
    setrlimit(Resource::Nofile, limit).expect("restore");
    let m = metrics(&server).await;
    let drops = |reason| metric(&m, "ingress_udp_drops_total", &[("service", "udp-echo"), ("reason", reason)]);
    assert_eq!(drops("resources"), 1.0, "{m}");
    assert_eq!(drops("no_path"), 0.0);
    assert!(metric(&m, "ingress_local_resource_errors_total", &[("at", "udp_socket")]) >= 1.0);
    let reply = ask(&client, "y").await.expect("a flow once descriptors are back");
    assert!(reply.ends_with(":y"), "{reply}");
}

/// A service without `proxy_protocol` forwards datagrams as they came: one that itself starts
/// with a PROXY v2 header would reach home as this ingress's word on who the client is (the
/// local proxy takes a header from an ingress as such). It is dropped and counted; the
/// client's other datagrams pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_datagram_that_starts_with_a_proxy_header_is_dropped() {
    use shared::proxy_protocol::{write_v2, Command, Transport};
    let home = TwoPaths::start().await;
    let (tcp1, tcp2) = (&home.tcp1, &home.tcp2);
    let server = start(&udp_config(tcp1.addr, tcp2.addr, "")).await;
    let addr = service_addr(&server, "udp-echo").await;
    let client = UdpSocket::bind("127.0.0.1:0").await.expect("client");
    client.connect(addr).await.expect("connect");
    let lan_host: SocketAddr = "192.168.1.10:53".parse().expect("address");
    let mut forged = Vec::new();
    write_v2(&mut forged, Command::Proxy, Transport::Datagram, Some((lan_host, addr)));
    forged.extend_from_slice(b"forged");
    client.send(&forged).await.expect("send");
    let reply = ask(&client, "y").await.expect("the next datagram is answered");
    assert!(reply.ends_with(":y"), "{reply}");
    let m = metrics(&server).await;
    let drops = metric(&m, "ingress_udp_drops_total", &[("service", "udp-echo"), ("reason", "proxy_header")]);
    assert_eq!(drops, 1.0, "{m}");
}

/// Counters an alert watches for an increase are there at 0 before their first event
/// (Prometheus has no sample before the one that creates a series, so `increase()` would miss
/// a single refused reload, control request or eviction).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_that_alerts_watch_start_at_zero() {
    let tcp1 = Backend::start("wan1", "127.0.0.2").await;
    let tcp2 = Backend::start("wan2", "127.0.0.3").await;
    let server = start(&udp_config(tcp1.addr, tcp2.addr, "")).await;
    service_addr(&server, "udp-echo").await;
    let m = metrics(&server).await;
    let present = |name: &str, labels: &[(&str, &str)]| {
        m.lines().any(|l| {
            l.starts_with(name) && labels.iter().all(|(k, v)| l.contains(&format!("{k}=\"{v}\""))) && l.ends_with(" 0")
        })
    };
    assert!(present("ingress_config_reloads_total", &[("result", "refused")]), "{m}");
    assert!(present("ingress_admin_unauthorized_total", &[("reason", "wrong")]), "{m}");
    assert!(present("ingress_admin_unauthorized_total", &[("reason", "missing")]), "{m}");
    // The UDP listener's counters are made when it starts serving.
    let evicted_zero = |m: &str| {
        ["wan1", "wan2"].iter().all(|p| {
            m.lines().any(|l| {
                l.starts_with("ingress_udp_flows_evicted_total")
                    && l.contains("service=\"udp-echo\"")
                    && l.contains(&format!("path=\"{p}\""))
                    && l.ends_with(" 0")
            })
        })
    };
    let mut m = metrics(&server).await;
    for _ in 0..100 {
        if evicted_zero(&m) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        m = metrics(&server).await;
    }
    assert!(evicted_zero(&m), "{m}");
}
