//! A UDP flood against the real binary: 20,000 one-shot sources against a 4,096-flow cap,
//! while a legitimate flow sends every 10 ms and a new legitimate client arrives mid-flood.
//! Asserts behaviour (the talking flow keeps its replies, the newcomer is admitted, flows
//! and descriptors stay within the cap); prints RSS, descriptors, loss and first-reply delay.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use tokio::net::UdpSocket;

use test_support::free_port as free_udp_port;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

/// The ingress binary serving one UDP service `name` on `listen` (TOML strings, comma
/// separated) over the path `home`, with `idle_timeout` and `max_flows`; its config file
/// lives in the returned directory.
fn udp_ingress(
    home: std::net::SocketAddr,
    name: &str,
    listen: &str,
    idle: &str,
    max_flows: u32,
) -> (tempfile::TempDir, Child) {
    let conf = format!(
        "[pool.home]\npaths = [{{ name = \"wan1\", address = \"{home}\" }}]\n\
         health = {{ interval = \"200ms\", timeout = \"200ms\" }}\n\
         [[service]]\nname = \"{name}\"\nlisten = [{listen}]\nprotocol = \"udp\"\npool = \"home\"\n\
         idle_timeout = \"{idle}\"\nmax_flows = {max_flows}\n"
    );
    let tmp = tempfile::Builder::new().prefix("ingress-flood-").tempdir().expect("temp dir");
    let file = tmp.path().join("ingress.toml");
    std::fs::write(&file, conf).expect("write");
    let child = Child::ingress(&file);
    (tmp, child)
}

/// Send `msg` on the connected socket `c` every `wait` until a reply comes, for at most
/// `limit`: how long the first reply took. A refusal is not a reply.
async fn first_reply(c: &UdpSocket, msg: &[u8], wait: Duration, limit: Duration) -> Option<Duration> {
    let t0 = Instant::now();
    let mut b = [0u8; 64];
    let tries = (limit.as_millis() / wait.as_millis().max(1)).max(1);
    for _ in 0..tries {
        if t0.elapsed() >= limit {
            break;
        }
        let _ = c.send(msg).await;
        match tokio::time::timeout(wait, c.recv(&mut b)).await {
            Ok(Ok(_)) => return Some(t0.elapsed()),
            // Refused (nothing listening yet): that try is over at once; wait it out.
            Ok(Err(_)) => tokio::time::sleep(wait).await,
            Err(_) => {}
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_new_sources_keeps_the_talking_flow_and_admits_a_newcomer() {
    let tcp = Backend::start("wan1", "127.0.0.2").await;
    let _echo = UdpEcho::start("wan1", tcp.addr).await;
    let port = free_udp_port();
    let (_tmp, child) = udp_ingress(tcp.addr, "flood", &format!("\"127.0.0.1:{port}\""), "2s", 4096);
    let pid = child.id();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");

    // The legitimate flow: one datagram every 10 ms, counting replies.
    let legit = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("legit"));
    legit.connect(addr).await.expect("connect");
    let answered = first_reply(&legit, b"hello", Duration::from_millis(100), Duration::from_secs(10)).await;
    assert!(answered.is_some(), "ingress never answered");
    let (sent, got, stop) =
        (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicBool::new(false)));
    let talker = {
        let (legit, sent, got, stop) = (legit.clone(), sent.clone(), got.clone(), stop.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            let mut b = [0u8; 64];
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                if legit.send(b"tick").await.is_ok() {
                    sent.fetch_add(1, Ordering::Relaxed);
                }
                while let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(1), legit.recv(&mut b)).await {
                    got.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    let rss_idle = rss_kib(pid);

    // The flood: 20,000 distinct sources (a socket each, opened, one datagram, closed).
    let flood_start = Instant::now();
    let mut newcomer_delay = None;
    for i in 0..20_000u32 {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("flood socket");
        let _ = s.send_to(b"x", addr);
        drop(s);
        if i == 10_000 {
            // A new legitimate client mid-flood: how long until its first reply?
            let c = UdpSocket::bind("127.0.0.1:0").await.expect("newcomer");
            c.connect(addr).await.expect("connect");
            newcomer_delay = first_reply(&c, b"hi", Duration::from_millis(10), Duration::from_secs(5)).await;
        }
        if i % 500 == 0 {
            tokio::task::yield_now().await;
        }
    }
    let flood_time = flood_start.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (rss_peak, fds_peak) = (rss_kib(pid), fds(pid));
    stop.store(true, Ordering::Relaxed);
    let _ = talker.await;
    let (s, g) = (sent.load(Ordering::Relaxed), got.load(Ordering::Relaxed));
    let loss = 1.0 - g as f64 / s.max(1) as f64;
    // Every flow idles out (2 s, swept every 500 ms): their sockets and table memory go.
    let deadline = Instant::now() + Duration::from_secs(10);
    while fds(pid) > 64 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (rss_after, fds_after) = (rss_kib(pid), fds(pid));
    println!(
        "RESULT udp flood: 20000 sources in {:.2}s against max_flows 4096; legit flow {g}/{s} replies (loss {:.1} %); \
         newcomer's first reply after {:?}; ingress RSS {rss_idle} KiB idle -> {rss_peak} KiB at the cap, {fds_peak} descriptors -> \
         {rss_after} KiB, {fds_after} descriptors after the flows expired",
        flood_time.as_secs_f64(),
        loss * 100.0,
        newcomer_delay
    );
    assert!(newcomer_delay.is_some(), "a new legitimate client was never admitted during the flood");
    assert!(g > 0 && loss < 0.5, "the talking flow lost its replies: {g}/{s}");
    assert!(fds_peak < 4096 + 100, "descriptors beyond the flow cap: {fds_peak}");
    assert!(fds_after <= 64, "flow sockets not closed after expiry: {fds_after}");
}

/// One-shot sources sending `x` to `to`, each of its own address (127.1.x.y: one address
/// would be held to its share of the budget), at most 5,000 a second, until stopped, `max`
/// of them or `limit` has passed.
struct Flood {
    stop: Arc<AtomicBool>,
    sources: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<()>,
}

impl Flood {
    fn start(to: std::net::SocketAddr, max: u64, limit: Duration) -> Self {
        let (stop, sources) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
        let thread = {
            let (stop, sources) = (stop.clone(), sources.clone());
            std::thread::spawn(move || {
                let start = Instant::now();
                while !stop.load(Ordering::Relaxed) && sources.load(Ordering::Relaxed) < max && start.elapsed() < limit
                {
                    let n = sources.load(Ordering::Relaxed);
                    let from = std::net::Ipv4Addr::new(127, 1, (n >> 8) as u8, n as u8);
                    let s = std::net::UdpSocket::bind((from, 0)).expect("flood socket");
                    let _ = s.send_to(b"x", to);
                    sources.fetch_add(1, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_micros(200));
                }
            })
        };
        Self { stop, sources, thread }
    }
}

/// A flood on one port of a two-port service holds the whole flow budget; a new client on
/// the other port, whose table has no flow to give up, is still admitted: the flooded
/// port's table gives up an idle flow for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_on_one_port_does_not_lock_out_the_services_other_port() {
    let tcp = Backend::start("wan1", "127.0.0.2").await;
    let _echo = UdpEcho::start("wan1", tcp.addr).await;
    let (flooded, other) = (free_udp_port(), free_udp_port());
    let listen = format!("\"127.0.0.1:{flooded}\", \"127.0.0.1:{other}\"");
    let (_tmp, _child) = udp_ingress(tcp.addr, "two-ports", &listen, "2s", 64);
    let flooded_addr: std::net::SocketAddr = format!("127.0.0.1:{flooded}").parse().expect("addr");
    let other_addr: std::net::SocketAddr = format!("127.0.0.1:{other}").parse().expect("addr");

    // The flooded port serves before the flood (the other is not asked: a flow of its own,
    // idle, would let its newcomer in without another table's help).
    let c = UdpSocket::bind("127.0.0.1:0").await.expect("probe");
    c.connect(flooded_addr).await.expect("connect");
    let answered = first_reply(&c, b"hello", Duration::from_millis(100), Duration::from_secs(10)).await;
    assert!(answered.is_some(), "the service never answered");

    // The flood: new one-shot sources on the first port, for as long as the test needs (at
    // most 40,000 of them, 15 s).
    let Flood { stop, sources, thread: flood } = Flood::start(flooded_addr, 40_000, Duration::from_secs(15));
    // The budget full of flood flows.
    while sources.load(Ordering::Relaxed) < 1_000 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let c = UdpSocket::bind("127.0.0.1:0").await.expect("newcomer");
    c.connect(other_addr).await.expect("connect");
    let admitted = first_reply(&c, b"hi", Duration::from_millis(50), Duration::from_secs(5)).await;
    let during = sources.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    flood.join().expect("flood thread");
    println!("RESULT udp flood on one port: newcomer on the other port answered after {admitted:?} ({during} flood sources by then)");
    assert!(admitted.is_some(), "a client of the other port was locked out by the flood");
}

/// A home that answers only its own protocol (WireGuard drops a handshake it cannot verify):
/// a flood's spoofed sources are never answered, and at a full budget they go before a
/// peer's flow that home answers but that is quiet between keepalives. Here keepalives every
/// 1.5 s against one-shot sources arriving at most 5,000 a second at a 2,048-flow cap, so
/// the flood's oldest flow is ~0.4–0.6 s silent when a new source needs its slot: the tunnel,
/// silent up to 1.5 s, would be the idlest. Its flow is kept: home sees it from one port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_does_not_take_a_quiet_answered_flow() {
    let tcp = Backend::start("wan1", "127.0.0.2").await;
    let home = Arc::new(UdpSocket::bind(tcp.addr).await.expect("home"));
    let ports = Arc::new(std::sync::Mutex::new(std::collections::BTreeSet::new()));
    let answering = {
        let (home, ports) = (home.clone(), ports.clone());
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            while let Ok((n, from)) = home.recv_from(&mut buf).await {
                if buf[..n].starts_with(b"wg") {
                    ports.lock().expect("ports").insert(from.port());
                    let _ = home.send_to(&buf[..n], from).await;
                }
            }
        })
    };
    let port = free_udp_port();
    let (_tmp, _child) = udp_ingress(tcp.addr, "wg", &format!("\"127.0.0.1:{port}\""), "4s", 2048);
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");

    let peer = UdpSocket::bind("127.0.0.1:0").await.expect("peer");
    peer.connect(addr).await.expect("connect");
    let answered = first_reply(&peer, b"wg-handshake", Duration::from_millis(100), Duration::from_secs(10)).await;
    assert!(answered.is_some(), "the service never answered");

    let Flood { stop, sources, thread: flood } = Flood::start(addr, 20_000, Duration::from_secs(20));
    // Keepalives through the flood, each answered within a second.
    let mut kept = 0;
    let mut buf = [0u8; 64];
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        peer.send(b"wg-keepalive").await.expect("send");
        if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(1), peer.recv(&mut buf)).await {
            kept += 1;
        }
    }
    let flooded = sources.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    flood.join().expect("flood thread");
    answering.abort();
    let seen: Vec<u16> = ports.lock().expect("ports").iter().copied().collect();
    println!("RESULT udp flood against a quiet tunnel: {kept}/4 keepalives answered, home saw the peer from {} port(s), {flooded} flood sources", seen.len());
    assert!(flooded > 2_048, "the flood never filled the budget ({flooded} sources)");
    assert_eq!(kept, 4, "keepalives went unanswered");
    assert_eq!(seen.len(), 1, "the tunnel's flow was given up for flood sources: home saw it from ports {seen:?}");
}
