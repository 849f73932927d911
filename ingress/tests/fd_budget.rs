//! The descriptor budget, on the real binary under a lowered open-files limit (`prlimit`):
//! a connection flood far above what fits is refused at once (closed, never left hanging),
//! both healthy paths stay up (the ingress's own limits are not the WANs' fault), and the
//! ingress serves again as soon as the flood lets go; TCP connections and UDP flows share the
//! descriptors, a TCP flood leaving the flows their floor.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// The backend's name line, or `None` if the ingress closed the connection first.
async fn first_line(s: &mut TcpStream) -> Option<String> {
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf)).await.expect("no hang: served or closed");
    match n {
        Ok(n) if n > 0 => Some(String::from_utf8_lossy(&buf[..n]).trim().to_string()),
        _ => None,
    }
}

/// The ingress binary under 300 open files (`prlimit`, util-linux) with `extra` appended to
/// a config of two paths (wan1, wan2), the admin listener on `admin` and a TCP echo service
/// on `port`; returned once it serves. The guard holds the process and its config file.
async fn start_under_300_files(
    wan1: &Backend,
    wan2: &Backend,
    admin: u16,
    port: u16,
    extra: &str,
) -> (Child, tempfile::TempDir, std::net::SocketAddr) {
    let conf = format!(
        "[admin]\nlisten = \"127.0.0.1:{admin}\"\n\
         [pool.home]\npaths = [{{ name = \"wan1\", address = \"{}\" }}, {{ name = \"wan2\", address = \"{}\" }}]\n\
         health = {{ interval = \"100ms\", timeout = \"100ms\" }}\n\
         [[service]]\nname = \"echo\"\nlisten = [\"127.0.0.1:{port}\"]\npool = \"home\"\n{extra}",
        wan1.addr, wan2.addr
    );
    let tmp = tempfile::Builder::new().prefix("ingress-fd-").tempdir().expect("temp dir");
    let file = tmp.path().join("ingress.toml");
    std::fs::write(&file, conf).expect("write");
    let child = Child::spawn(
        Command::new("prlimit")
            .args(["--nofile=300:300", "--"])
            .arg(env!("CARGO_BIN_EXE_ingress"))
            .arg("-c")
            .arg(&file),
    );
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while request(addr).await.is_err() {
        assert!(tokio::time::Instant::now() < deadline, "ingress never served");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (child, tmp, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_beyond_the_descriptor_budget_is_refused_and_paths_stay_up() {
    let wan1 = Backend::start("wan1", "127.0.0.2").await;
    let wan2 = Backend::start("wan2", "127.0.0.3").await;
    let (port, admin) = (free_port(), free_port());
    // max_connections stays at its default (20,000): far more than 300 descriptors hold.
    let (_child, _tmp, addr) = start_under_300_files(&wan1, &wan2, admin, port, "").await;
    let m = scrape(([127, 0, 0, 1], admin).into()).await;
    let limit = metric(&m, "ingress_limit", &[("kind", "connections")]) as usize;
    assert!(metric(&m, "ingress_limit", &[("kind", "open_files")]) == 300.0, "the limit the ingress saw");
    assert!((20..250).contains(&limit), "connections clamped to fit 300 descriptors: {limit}");

    // The flood: 400 clients that stay connected.
    let mut served = Vec::new();
    let mut refused = 0usize;
    for _ in 0..400 {
        let mut s = TcpStream::connect(addr).await.expect("the kernel accepts the SYN");
        match first_line(&mut s).await {
            Some(_) => served.push(s),
            None => refused += 1,
        }
    }
    let m = scrape(([127, 0, 0, 1], admin).into()).await;
    let local_errors = metric(&m, "ingress_local_resource_errors_total", &[]);
    println!(
        "RESULT open files 300, max_connections 20000 asked: budget {limit} connections; \
         400 held clients: {} served, {refused} refused at once; local resource errors {local_errors:.0}",
        served.len()
    );
    assert_eq!(served.len(), limit, "exactly the budget is served");
    assert_eq!(refused, 400 - limit, "the rest are refused, not left hanging");
    for p in ["wan1", "wan2"] {
        assert_eq!(metric(&m, "ingress_path_up", &[("path", p)]), 1.0, "{p} stays up during the flood");
        assert_eq!(metric(&m, "ingress_path_connect_failures_total", &[("path", p)]), 0.0, "{p}: no failure blamed");
    }
    assert_eq!(metric(&m, "ingress_mesh_failovers_total", &[]), 0.0);

    // The flood lets go: served again.
    drop(served);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while request(addr).await.is_err() {
        assert!(tokio::time::Instant::now() < deadline, "not served again after the flood");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Datagrams from `n` new sources, one each, sent together: how many were answered within a
/// second (a source the ingress cannot give a flow is dropped, not queued).
async fn udp_sources_answered(addr: std::net::SocketAddr, n: usize) -> usize {
    let mut socks = Vec::with_capacity(n);
    for _ in 0..n {
        let s = tokio::net::UdpSocket::bind("127.0.0.1:0").await.expect("client socket");
        s.connect(addr).await.expect("connect");
        s.send(b"hi").await.expect("send");
        socks.push(s);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    let mut answered = 0;
    for s in &socks {
        let mut b = [0u8; 64];
        if let Ok(Ok(_)) = tokio::time::timeout_at(deadline, s.recv(&mut b)).await {
            answered += 1;
        }
    }
    answered
}

/// TCP connections and UDP flows draw from one pool: with the UDP service idle, TCP clients
/// hold all of it but the flows' floor (a fixed split set 100 descriptors aside for flows and
/// 46 for pipes, and served 38); while TCP holds all it may, new UDP sources still get the
/// floor; once TCP lets go, flows open past it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_and_flows_share_the_descriptors_and_flows_keep_their_floor() {
    let wan1 = Backend::start("wan1", "127.0.0.2").await;
    let wan2 = Backend::start("wan2", "127.0.0.3").await;
    let _echo1 = UdpEcho::start("wan1", wan1.addr).await;
    let _echo2 = UdpEcho::start("wan2", wan2.addr).await;
    let (port, uport, admin) = (free_port(), free_port(), free_port());
    let udp = format!(
        "[[service]]\nname = \"dns\"\nlisten = [\"127.0.0.1:{uport}\"]\nprotocol = \"udp\"\npool = \"home\"\n\
         max_flows = 100\nidle_timeout = \"60s\"\n"
    );
    let (_child, _tmp, addr) = start_under_300_files(&wan1, &wan2, admin, port, &udp).await;
    let uaddr: std::net::SocketAddr = format!("127.0.0.1:{uport}").parse().expect("addr");
    // 300 less the reserve (64, two listeners, 8 probes of a down path, each raced, for each
    // of the two): 202; flows may take 100 (their cap) and keep a sixteenth, 12.
    let m = scrape(([127, 0, 0, 1], admin).into()).await;
    let limit = |kind| metric(&m, "ingress_limit", &[("kind", kind)]);
    assert_eq!(limit("descriptors"), 202.0);
    assert_eq!(limit("flow_floor"), 12.0);
    assert_eq!(limit("flows"), 100.0);
    assert_eq!(limit("connections"), 95.0, "all but the floor, two descriptors a connection");

    // A TCP flood far past it: exactly the budget is served, the rest closed at once.
    let mut served = Vec::new();
    let mut refused = 0usize;
    for _ in 0..200 {
        let mut s = TcpStream::connect(addr).await.expect("the kernel accepts the SYN");
        match first_line(&mut s).await {
            Some(_) => served.push(s),
            None => refused += 1,
        }
    }
    // Meanwhile UDP: 30 new sources at once, the floor's 12 answered.
    let during = udp_sources_answered(uaddr, 30).await;
    let m = scrape(([127, 0, 0, 1], admin).into()).await;
    let local_errors = metric(&m, "ingress_local_resource_errors_total", &[]);
    println!(
        "RESULT 300 open files, TCP and UDP sharing: {} TCP clients served, {refused} refused; \
         30 UDP sources during the flood: {during} answered; local resource errors {local_errors:.0}",
        served.len()
    );
    assert_eq!(served.len(), 95, "connections take everything but the flows' floor");
    assert_eq!(refused, 200 - 95);
    assert_eq!(during, 202 - 2 * 95, "a TCP flood leaves UDP its floor, no more");
    assert_eq!(local_errors, 0.0, "the pool refuses before the kernel runs out");

    // TCP lets go: flows open past the floor (12 + 50 under the service's cap of 100).
    drop(served);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = udp_sources_answered(uaddr, 50).await;
    assert_eq!(after, 50, "with TCP gone, flows take what it left");
}
