//! End-to-end TCP behaviour on loopback: real listeners, real backends.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spread_follows_weights() {
    let wan1 = Backend::start("wan1", "127.0.0.2").await;
    let wan2 = Backend::start("wan2", "127.0.0.3").await;
    // Metrics are process-wide: this test's pool and service get names of their own.
    let toml = config(&[("wan1", wan1.addr, 3), ("wan2", wan2.addr, 1)], None, "").replace("\"echo\"", "\"spread\"");
    let server = start(&toml).await;
    let addr = service_addr(&server, "spread").await;
    let mut names = Vec::new();
    for _ in 0..400 {
        names.push(request(addr).await.expect("request"));
    }
    let t = tally(&names);
    let share = *t.get("wan1").unwrap_or(&0) as f64 / 400.0;
    // 0.75 expected; the health factor moves with connect latency, which jitters when the
    // machine is busy, so the band is wide but far from an even split.
    assert!((0.6..=0.9).contains(&share), "wan1 share {share}, tally {t:?}");
    assert!(t.get("wan2").copied().unwrap_or(0) > 0);
    let m = metrics(&server).await;
    let pool = pool_name(&server);
    let connects = metric(&m, "ingress_path_connects_total", &[("pool", &pool), ("path", "wan1")]);
    assert_eq!(connects as usize, t["wan1"]);
    assert_eq!(metric(&m, "ingress_listener_accepted_total", &[("service", "spread")]) as usize, 400);
}

/// A server that speaks first and answers once the client's bytes are in (a banner, then a
/// reply, Nagle on: the common `Backend`, as SSH or SMTP servers behave) must not wait for
/// the ingress's delayed ACK of its banner. The ingress turns quick ACKs off while it
/// connects, so that the ACK of the SYN-ACK rides with the client's first bytes; it must turn
/// them back on once those have gone. Before it did, every such exchange waited for the
/// kernel's delayed-ACK timer (40 ms at least): 2,000 took 55 s, 0.5 s since.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_speaking_first_is_not_held_by_delayed_acks() {
    let wan1 = Backend::start("wan1", "127.0.0.2").await;
    let toml = config(&[("wan1", wan1.addr, 1)], None, "").replace("\"echo\"", "\"banner\"");
    let server = start(&toml).await;
    let addr = service_addr(&server, "banner").await;
    let mut took = Vec::new();
    for _ in 0..60 {
        let t = tokio::time::Instant::now();
        assert_eq!(request(addr).await.expect("request"), "wan1");
        took.push(t.elapsed());
    }
    took.sort();
    let median = took[took.len() / 2];
    println!(
        "RESULT banner then answer through the ingress, 60 exchanges: median {median:?}, max {:?}",
        took[took.len() - 1]
    );
    // Half the kernel's shortest delayed-ACK timeout (TCP_ATO_MIN, 40 ms): an exchange that
    // waited for it cannot be this quick, one that did not is ~1 ms on loopback.
    assert!(median < Duration::from_millis(20), "median exchange {median:?}: held by a delayed ACK");
}

/// Requests at a steady pace from several tasks, recording who answered and any failure.
struct Load {
    stop: Arc<AtomicBool>,
    failures: Arc<std::sync::Mutex<Vec<(tokio::time::Instant, String)>>>,
    answers: Arc<std::sync::Mutex<Vec<(tokio::time::Instant, String)>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(addr: std::net::SocketAddr, workers: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
        let answers = Arc::new(std::sync::Mutex::new(Vec::new()));
        let tasks = (0..workers)
            .map(|_| {
                let (stop, failures, answers) = (stop.clone(), failures.clone(), answers.clone());
                tokio::spawn(async move {
                    // Bounded: at most 5000 requests per worker even if never stopped.
                    for _ in 0..5000 {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let started = tokio::time::Instant::now();
                        match request(addr).await {
                            Ok(n) => answers.lock().expect("lock").push((started, n)),
                            Err(e) => failures.lock().expect("lock").push((started, e)),
                        }
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                })
            })
            .collect();
        Self { stop, failures, answers, tasks }
    }

    async fn finish(self) -> (Vec<(tokio::time::Instant, String)>, Vec<(tokio::time::Instant, String)>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.expect("load task");
        }
        let f = self.failures.lock().expect("lock").clone();
        let a = self.answers.lock().expect("lock").clone();
        (f, a)
    }

    fn count(&self) -> usize {
        self.answers.lock().expect("lock").len()
    }
}

/// No request started after `cut` failed, and at most `in_flight` before it did.
fn assert_no_failures_after(failures: &[(tokio::time::Instant, String)], cut: tokio::time::Instant, in_flight: usize) {
    let after: Vec<_> = failures.iter().filter(|(t, _)| *t > cut).collect();
    assert!(
        after.is_empty(),
        "{} requests started after the cut failed: {:?}",
        after.len(),
        &after[..after.len().min(5)]
    );
    assert!(failures.len() <= in_flight, "{} in-flight requests failed: {failures:?}", failures.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_killed_mid_run_costs_no_client_connection() {
    let mut wan1 = Backend::start("wan1", "127.0.0.2").await;
    let wan2 = Backend::start("wan2", "127.0.0.3").await;
    let server = start(&config(&[("wan1", wan1.addr, 1), ("wan2", wan2.addr, 1)], None, "")).await;
    let addr = service_addr(&server, "echo").await;
    let load = Load::start(addr, 4);
    wait_until("some traffic", Duration::from_secs(5), || load.count() > 100).await;
    wan1.kill().await;
    let killed = tokio::time::Instant::now();
    let before = load.count();
    wait_until("traffic after the kill", Duration::from_secs(10), || load.count() > before + 300).await;
    let (failures, answers) = load.finish().await;
    // Requests already on wan1 when it died are lost with it (at most one per worker);
    // every request started after the kill must succeed.
    assert_no_failures_after(&failures, killed, 4);
    let late_wan1 = answers.iter().filter(|(t, n)| *t > killed && n == "wan1").count();
    assert_eq!(late_wan1, 0, "wan1 answered after it was killed");
    let m = metrics(&server).await;
    assert_eq!(metric(&m, "ingress_path_up", &[("pool", &pool_name(&server)), ("path", "wan1")]), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_takes_over_when_all_wans_die_and_gives_back() {
    let mut wan1 = Backend::start("wan1", "127.0.0.2").await;
    let mut wan2 = Backend::start("wan2", "127.0.0.3").await;
    let mesh = Backend::start("mesh", "127.0.0.4").await;
    let server = start(&config(&[("wan1", wan1.addr, 1), ("wan2", wan2.addr, 1)], Some(mesh.addr), "")).await;
    let addr = service_addr(&server, "echo").await;
    for _ in 0..20 {
        assert_ne!(request(addr).await.expect("request"), "mesh", "mesh used while WANs are up");
    }
    let load = Load::start(addr, 3);
    wait_until("some traffic", Duration::from_secs(5), || load.count() > 50).await;
    wan1.kill().await;
    wan2.kill().await;
    let killed = tokio::time::Instant::now();
    let before = load.count();
    wait_until("traffic over the mesh", Duration::from_secs(10), || load.count() > before + 200).await;
    // An established connection over the mesh must survive the WANs coming back.
    let mut held = TcpStream::connect(addr).await.expect("connect");
    let mut line = [0u8; 5];
    held.read_exact(&mut line).await.expect("name");
    assert_eq!(&line, b"mesh\n");
    wan1.restart().await;
    wan2.restart().await;
    let restored = tokio::time::Instant::now();
    wait_until("wan paths back", Duration::from_secs(10), || {
        server.shared().runtime().pools.values().all(|p| p.paths[..2].iter().all(|p| p.is_up()))
    })
    .await;
    let before = load.count();
    wait_until("traffic after restore", Duration::from_secs(10), || load.count() > before + 200).await;
    let (failures, answers) = load.finish().await;
    assert_no_failures_after(&failures, killed, 3);
    assert!(answers.iter().any(|(_, n)| n == "mesh"), "mesh never served");
    let wan_after = answers.iter().filter(|(t, n)| *t > restored && n.starts_with("wan")).count();
    assert!(wan_after > 100, "traffic did not return to the WANs: {wan_after}");
    held.write_all(b"still\n").await.expect("write on held mesh connection");
    let mut echo = [0u8; 6];
    held.read_exact(&mut echo).await.expect("held mesh connection survived");
    assert_eq!(&echo, b"still\n");
    let m = metrics(&server).await;
    assert!(metric(&m, "ingress_mesh_failovers_total", &[("pool", &pool_name(&server))]) >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_load_loses_nothing() {
    let wan1 = Backend::start("wan1", "127.0.0.2").await;
    let wan2 = Backend::start("wan2", "127.0.0.3").await;
    // A fixed port, so every reload names the same listener (port 0 would be a new one).
    let port = test_support::free_port();
    let listen = format!("[\"127.0.0.1:{port}\"]");
    let c1 = config(&[("wan1", wan1.addr, 1), ("wan2", wan2.addr, 1)], None, "").replace("[\"127.0.0.1:0\"]", &listen);
    // Only wan2 in the other config, on the same listener.
    let c2 = config(&[("wan2", wan2.addr, 1)], None, "").replace("[\"127.0.0.1:0\"]", &listen);
    let server = start(&c1).await;
    let addr = service_addr(&server, "echo").await;
    let load = Load::start(addr, 4);
    for i in 0..10 {
        wait_until("traffic", Duration::from_secs(5), || load.count() > (i + 1) * 30).await;
        let next = if i % 2 == 0 { &c2 } else { &c1 };
        server.reload(ingress::Config::from_toml(next).expect("valid")).await;
    }
    let (failures, answers) = load.finish().await;
    assert!(failures.is_empty(), "{} failed: {:?}", failures.len(), &failures[..failures.len().min(5)]);
    assert!(answers.len() > 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_config_is_refused_with_named_fields() {
    let broken = r#"
[pool.home]
paths = [{ name = "wan1", address = "not-an-ip", weight = 0 }]
connect_timeout = "soon"
[[service]]
name = "x"
listen = ["0.0.0.0:99999"]
pool = "nope"
"#;
    // An unknown key is refused before anything else is looked at...
    let text = ingress::Config::from_toml(&format!("{broken}bogus = 1\n")).expect_err("must fail").to_string();
    assert!(text.contains("bogus"), "{text}");
    // ...and without it, every other problem is listed at once, each naming its field.
    let text = ingress::Config::from_toml(broken).expect_err("must fail").to_string();
    for needle in ["paths[0].address", "paths[0].weight", "pool.home.connect_timeout", "listen[0]", "service `x`.pool"]
    {
        assert!(text.contains(needle), "missing {needle} in {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limit_refuses_cleanly_and_drain_waits() {
    let wan1 = Backend::start("wan1", "127.0.0.2").await;
    let server = start(&config(&[("wan1", wan1.addr, 1)], None, "max_connections = 2")).await;
    let addr = service_addr(&server, "echo").await;
    let mut a = TcpStream::connect(addr).await.expect("a");
    let mut b = TcpStream::connect(addr).await.expect("b");
    let mut line = [0u8; 5];
    a.read_exact(&mut line).await.expect("a served");
    b.read_exact(&mut line).await.expect("b served");
    // The third is accepted and closed at once: EOF, not a hang.
    let mut c = TcpStream::connect(addr).await.expect("c connects");
    let n = tokio::time::timeout(Duration::from_secs(2), c.read(&mut line)).await.expect("refusal is prompt");
    assert!(matches!(n, Ok(0) | Err(_)), "third connection was served");
    let m = metrics(&server).await;
    assert_eq!(metric(&m, "ingress_listener_refused_total", &[("service", "echo")]), 1.0);
    // Drain: stop accepting, established connections finish on their own.
    let server = Arc::new(server);
    let s2 = server.clone();
    let drain = tokio::spawn(async move { s2.drain(Duration::from_secs(10)).await });
    wait_until("listener closed", Duration::from_secs(5), || server.local_addrs("echo").is_empty()).await;
    a.write_all(b"x").await.expect("established still works");
    let mut one = [0u8; 1];
    a.read_exact(&mut one).await.expect("echo during drain");
    drop(a);
    drop(b);
    let left = tokio::time::timeout(Duration::from_secs(5), drain).await.expect("drain ends").expect("join");
    assert_eq!(left, 0);
}

/// Two connections open under `before`, then a reload to `one` (a cap of 1): the open
/// connections stay counted, so with one of two left open the next is refused, and with none
/// one is served again.
async fn lowered_cap_counts_the_open_connections(before: String, one: String) {
    let server = start(&before).await;
    let addr = service_addr(&server, "echo").await;
    let served = |mut s: TcpStream| async move {
        let mut line = [0u8; 5];
        matches!(tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut line)).await, Ok(Ok(_))).then_some(s)
    };
    let a = served(TcpStream::connect(addr).await.expect("a")).await.expect("a served");
    let b = served(TcpStream::connect(addr).await.expect("b")).await.expect("b served");
    server.try_reload(ingress::Config::from_toml(&one).expect("valid")).await.expect("applies");
    // One left open, at the new cap of 1: the next is refused.
    drop(a);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let c = served(TcpStream::connect(addr).await.expect("c connects")).await;
    assert!(c.is_none(), "served past the lowered cap while one connection was open");
    // None open (once their relays end): one is served again.
    drop(b);
    let mut d = None;
    for _ in 0..20 {
        d = served(TcpStream::connect(addr).await.expect("d connects")).await;
        if d.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(d.is_some(), "not served once the open connections were under the cap");
}

/// The service on a fixed port, so a reload keeps its listener.
fn on_a_fixed_port(conf: String) -> String {
    let port = test_support::free_port();
    conf.replace("[\"127.0.0.1:0\"]", &format!("[\"127.0.0.1:{port}\"]"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lower_service_connection_limit_counts_the_connections_already_open() {
    let wan1 = Backend::start("wan1", "127.0.0.2").await;
    let two = on_a_fixed_port(config(&[("wan1", wan1.addr, 1)], None, "max_connections = 2"));
    let one = two.replace("max_connections = 2", "max_connections = 1");
    lowered_cap_counts_the_open_connections(two, one).await;
}

/// The same when the service had no cap of its own before the reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_connection_limit_a_reload_adds_counts_the_connections_already_open() {
    let wan1 = Backend::start("wan1", "127.0.0.2").await;
    let two = on_a_fixed_port(config(&[("wan1", wan1.addr, 1)], None, "max_connections = 2"));
    let uncapped = two.replace("max_connections = 2", "");
    let one = two.replace("max_connections = 2", "max_connections = 1");
    lowered_cap_counts_the_open_connections(uncapped, one).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lower_global_connection_limit_counts_the_connections_already_open() {
    let wan1 = Backend::start("wan1", "127.0.0.2").await;
    let service = on_a_fixed_port(config(&[("wan1", wan1.addr, 1)], None, ""));
    let two = format!("[limits]\nmax_connections = 2\n{service}");
    let one = two.replace("max_connections = 2", "max_connections = 1");
    lowered_cap_counts_the_open_connections(two, one).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_and_idle_timeout() {
    let wan1 = Backend::start("wan1", "127.0.0.2").await;
    let server = start(&config(&[("wan1", wan1.addr, 1)], None, "idle_timeout = \"300ms\"")).await;
    let addr = service_addr(&server, "echo").await;
    // Half-close: the client stops sending; the reply still arrives, then EOF.
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"last words").await.expect("write");
    s.shutdown().await.expect("shutdown write");
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got)).await.expect("eof").expect("read");
    assert_eq!(got, b"wan1\nlast words");
    // A client that connects and sends nothing is closed after the idle timeout.
    let mut idle = TcpStream::connect(addr).await.expect("connect");
    let mut buf = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(5), idle.read_to_end(&mut buf)).await;
    assert!(r.is_ok(), "idle connection was not closed");
    assert_eq!(buf, b"wan1\n");
}

/// A plain service that adds no PROXY header closes a client whose stream starts with one
/// before home gets the whole signature (home would take it for this ingress's word on who
/// the client is), however it is cut and whenever it comes; a stream that only starts like
/// one goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_proxy_header_on_a_plain_service_is_refused() {
    let wan1 = Backend::start("wan1", "127.0.0.2").await;
    let server = start(&config(&[("wan1", wan1.addr, 1)], None, "")).await;
    let addr = service_addr(&server, "echo").await;
    let v2 = [&shared::proxy_protocol::V2_SIGNATURE[..], b"\x21\x11\x00\x0c"].concat();
    let v1 = b"PROXY TCP4 192.0.2.1 192.0.2.2 1 2\r\n".to_vec();
    // (first part, after the server's banner; the rest, later): all in one at once, or cut.
    let cases: [(&[u8], &[u8]); 4] = [(&v1, b""), (b"PROX", &v1[4..]), (&v2, b""), (&v2[..7], &v2[7..])];
    for (first, rest) in cases {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        let mut banner = [0u8; 5];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut banner)).await.expect("banner").expect("read");
        s.write_all(first).await.expect("write");
        if !rest.is_empty() {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let _ = s.write_all(rest).await;
        }
        let mut got = Vec::new();
        let r = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got)).await.expect("closed");
        // Home echoed at most the part before the signature's last byte.
        let whole = if first[0] == b'P' { 6 } else { 12 };
        assert!(got.len() < whole, "{first:?} then {rest:?}: home got {got:?} ({r:?})");
    }
    let m = metrics(&server).await;
    let refused =
        metric(&m, "ingress_service_route_failures_total", &[("service", "echo"), ("reason", "proxy_header")]);
    assert_eq!(refused, 4.0);
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"PROXIMITY\n").await.expect("write");
    s.shutdown().await.expect("shutdown");
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got)).await.expect("eof").expect("read");
    assert_eq!(got, b"wan1\nPROXIMITY\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_transfer_is_exact() {
    let wan1 = Backend::start("wan1", "127.0.0.2").await;
    let server = start(&config(&[("wan1", wan1.addr, 1)], None, "")).await;
    let addr = service_addr(&server, "echo").await;
    let s = TcpStream::connect(addr).await.expect("connect");
    let (mut r, mut w) = s.into_split();
    let data: Vec<u8> = (0..8 * 1024 * 1024u32).map(|i| (i * 7 + i / 251) as u8).collect();
    let expect = data.clone();
    let writer = tokio::spawn(async move {
        w.write_all(&data).await.expect("write");
        w.shutdown().await.expect("shutdown");
    });
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), r.read_to_end(&mut got)).await.expect("in time").expect("read");
    writer.await.expect("writer");
    assert_eq!(&got[..5], b"wan1\n");
    assert!(got[5..] == expect[..], "payload corrupted ({} vs {} bytes)", got.len() - 5, expect.len());
    let _ = AtomicUsize::new(0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_port_does_not_stop_other_services_and_binds_once_free() {
    let wan1 = Backend::start("wan1", "127.0.0.2").await;
    let busy = std::net::TcpListener::bind("127.0.0.1:0").expect("occupy a port");
    let busy_addr = busy.local_addr().expect("addr");
    let toml = config(&[("wan1", wan1.addr, 1)], None, "")
        + &format!("\n[[service]]\nname = \"busy\"\nlisten = [\"{busy_addr}\"]\npool = \"{}\"\n", "POOL");
    // The second service uses the same pool as the first.
    let pool = toml.split("[pool.").nth(1).and_then(|s| s.split(']').next()).expect("pool name").to_string();
    let server = start(&toml.replace("POOL", &pool)).await;
    let addr = service_addr(&server, "echo").await;
    assert_eq!(request(addr).await.expect("the other service serves"), "wan1");
    assert!(server.local_addrs("busy").is_empty());
    drop(busy);
    wait_until("busy port bound once free", Duration::from_secs(10), || !server.local_addrs("busy").is_empty()).await;
    assert_eq!(request(busy_addr).await.expect("served after binding"), "wan1");
}

/// A loopback "blackhole": a listener whose accept queue is full, so further SYNs are
/// dropped and connects hang, as towards a WAN that silently died.
fn blackhole(ip: &str) -> (socket2::Socket, Vec<std::net::TcpStream>, std::net::SocketAddr) {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    s.bind(&format!("{ip}:0").parse::<std::net::SocketAddr>().expect("addr").into()).expect("bind");
    s.listen(0).expect("listen");
    let addr = s.local_addr().expect("addr").as_socket().expect("inet");
    // Fill the queue (backlog 0 still admits one or two); never accept.
    let mut fill = Vec::new();
    for _ in 0..4 {
        let c = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
        c.set_nonblocking(true).expect("nonblocking");
        let _ = c.connect(&addr.into());
        fill.push(c.into());
    }
    std::thread::sleep(Duration::from_millis(50));
    (s, fill, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_path_is_raced_not_waited_for() {
    let (_hole, _fill, hole_addr) = blackhole("127.0.0.5");
    let wan2 = Backend::start("wan2", "127.0.0.3").await;
    // Long connect timeout and slow probes: without the race, each request sent to the
    // silent path would wait 5 s and count a timeout.
    let toml = config(&[("wan1", hole_addr, 1), ("wan2", wan2.addr, 1)], None, "")
        .replace("connect_timeout = \"200ms\"", "connect_timeout = \"5s\"")
        .replace("interval = \"100ms\", timeout = \"100ms\"", "interval = \"30s\", timeout = \"5s\"");
    let server = start(&toml).await;
    let addr = service_addr(&server, "echo").await;
    let mut names = Vec::new();
    for _ in 0..30 {
        names.push(request(addr).await.expect("every request succeeds"));
    }
    assert!(names.iter().all(|n| n == "wan2"));
    let m = metrics(&server).await;
    let pool = pool_name(&server);
    assert!(metric(&m, "ingress_path_hedges_total", &[("pool", &pool), ("path", "wan1")]) >= 1.0);
    // A lost race is only suspicion; the background connect (5 s timeout here, probes every
    // 30 s) gives the verdict that takes the silent path down.
    let rt = server.shared().clone();
    wait_until("wan1 taken down by the background verdict", Duration::from_secs(20), || {
        rt.runtime().pools.values().all(|p| !p.paths[0].is_up())
    })
    .await;
}
