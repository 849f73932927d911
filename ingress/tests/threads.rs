//! `limits.threads` sets how many event loops serve TCP connections (as HAProxy's nbthread),
//! read at start: the main thread's and `threads - 1` named `ingress-worker-N`.

mod common;

use common::{config, free_port, metric, metrics, request, service_addr, wait_until, Backend, Child, UdpEcho};
use std::time::{Duration, Instant};
use test_support::threads_named;

#[test]
fn the_process_has_as_many_event_loops_as_configured() {
    let port = free_port();
    let tmp = tempfile::Builder::new().prefix("ingress-threads-").tempdir().expect("temp dir");
    let dir = tmp.path();
    for threads in [1usize, 3] {
        let file = dir.join(format!("t{threads}.toml"));
        std::fs::write(
            &file,
            format!(
                "[limits]\nthreads = {threads}\n[pool.p]\npaths = [{{ name = \"a\", address = \"127.0.0.2:9\" }}]\n\
                 [[service]]\nname = \"s\"\nlisten = [\"127.0.0.1:{port}\"]\npool = \"p\"\n"
            ),
        )
        .expect("write");
        let child = Child::ingress(&file);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "ingress never listened");
            std::thread::sleep(Duration::from_millis(20));
        }
        // The main thread is the first event loop: threads = 1 has no worker beside it.
        assert_eq!(threads_named(child.id(), "ingress-worker"), threads - 1, "worker threads for threads = {threads}");
        drop(child);
    }
}

/// Connections accepted on the main thread are served on all three threads, ties in turn.
#[tokio::test(flavor = "current_thread")]
async fn connections_are_spread_over_the_threads_and_served_there() {
    let backend = Backend::start("a", "127.0.0.1").await;
    let cfg = ingress::Config::from_toml(&config(&[("a", backend.addr, 1)], None, "")).expect("config");
    let workers = shared::workers::Workers::start(3, "test-ingress-worker").expect("workers");
    let server = ingress::Server::start_on(cfg, workers).await;
    let addr = service_addr(&server, "echo").await;
    for i in 0..9 {
        assert_eq!(request(addr).await.as_deref(), Ok("a"), "request {i}");
        wait_until("the connection ended", Duration::from_secs(5), || server.shared().open_connections() == 0).await;
    }
    // Each connection ended before the next started: every pick was a tie.
    assert_eq!(server.shared().placed_per_thread(), [3, 3, 3]);
    let held: Vec<_> = held_open(addr, 6).await;
    let placed = server.shared().placed_per_thread();
    assert_eq!(placed.iter().sum::<u64>(), 15);
    assert!(placed.iter().all(|&n| n == 5), "held connections spread evenly: {placed:?}");
    // `/status` tells each loop's share.
    let status = status(server.admin_addr().expect("admin listener")).await;
    let threads: Vec<(u64, u64)> = status["threads"]
        .as_array()
        .expect("threads")
        .iter()
        .map(|t| (t["open"].as_u64().unwrap_or(99), t["placed"].as_u64().unwrap_or(99)))
        .collect();
    assert_eq!(threads, [(2, 5), (2, 5), (2, 5)], "{status}");
    assert_eq!(server.shared().open_connections(), 6);
    assert_eq!(metric(&metrics(&server).await, "ingress_open_connections", &[]), 6.0, "the gauge");
    drop(held);
}

async fn status(admin: std::net::SocketAddr) -> serde_json::Value {
    let body = get(admin, "/status").await;
    serde_json::from_slice(&body).unwrap_or_else(|e| panic!("status JSON: {e}: {}", String::from_utf8_lossy(&body)))
}

/// The body of `GET path` from the admin listener.
async fn get(admin: std::net::SocketAddr, path: &str) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(admin).await.expect("admin connect");
    s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes()).await.expect("write");
    let mut text = Vec::new();
    s.read_to_end(&mut text).await.expect("read");
    let start = text.windows(4).position(|w| w == b"\r\n\r\n").map_or(text.len(), |i| i + 4);
    text.split_off(start)
}

/// `n` connections through the ingress, each answered (the backend's name line), held open.
async fn held_open(addr: std::net::SocketAddr, n: usize) -> Vec<tokio::net::TcpStream> {
    use tokio::io::AsyncReadExt;
    let mut held = Vec::new();
    for i in 0..n {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let mut line = [0u8; 2];
        tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut line))
            .await
            .expect("answered in time")
            .unwrap_or_else(|e| panic!("connection {i}: {e}"));
        assert_eq!(&line, b"a\n");
        held.push(s);
    }
    held
}

/// UDP sockets are served on all three loops, each with its flows, ties in turn; a reload
/// that removes some closes them on their loops.
#[tokio::test(flavor = "current_thread")]
async fn udp_sockets_are_spread_over_the_threads_and_relay_there() {
    let backend = Backend::start("a", "127.0.0.1").await;
    let _echo = UdpEcho::start("a", backend.addr).await;
    let ports: Vec<u16> = (0..6).map(|_| free_port()).collect();
    let config = |ports: &[u16]| {
        let listen: Vec<String> = ports.iter().map(|p| format!("\"127.0.0.1:{p}\"")).collect();
        let toml = format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\n[pool.udp-threads]\npaths = [{{ name = \"a\", address = \"{}\" }}]\n\
             health = {{ interval = \"100ms\", timeout = \"100ms\", rise = 2, fall = 2 }}\n\
             [[service]]\nname = \"udp\"\nlisten = [{}]\nprotocol = \"udp\"\npool = \"udp-threads\"\n",
            backend.addr,
            listen.join(", ")
        );
        ingress::Config::from_toml(&toml).expect("config")
    };
    let workers = shared::workers::Workers::start(3, "test-ingress-udp").expect("workers");
    let server = ingress::Server::start_on(config(&ports), workers).await;
    wait_until("all six bound", Duration::from_secs(5), || server.local_addrs("udp").len() == 6).await;
    let ask = |port: u16| async move {
        let c = tokio::net::UdpSocket::bind("127.0.0.1:0").await.expect("client");
        c.connect(("127.0.0.1", port)).await.expect("connect");
        // The path comes up after two health rounds: ask until answered.
        for _ in 0..50 {
            c.send(b"hi").await.expect("send");
            let mut b = [0u8; 64];
            if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(200), c.recv(&mut b)).await {
                return String::from_utf8_lossy(&b[..n]).into_owned();
            }
        }
        panic!("port {port} never answered");
    };
    for &p in &ports {
        assert_eq!(ask(p).await, "a:hi", "port {p}");
    }
    let udp_sockets = |status: &serde_json::Value| -> Vec<u64> {
        status["threads"].as_array().expect("threads").iter().map(|t| t["udp_sockets"].as_u64().unwrap_or(99)).collect()
    };
    let admin = || server.admin_addr().expect("admin listener");
    assert_eq!(udp_sockets(&status(admin()).await), [2, 2, 2], "two sockets per loop");
    let page = String::from_utf8_lossy(&get(admin(), "/").await).into_owned();
    assert!(page.contains("UDP sockets per thread: 2 · 2 · 2"), "{page}");
    let flows = metric(&metrics(&server).await, "ingress_udp_flows_active", &[("service", "udp")]);
    assert_eq!(flows, 6.0, "one flow per port, each in its loop's table");

    // The last three go: closed on whichever loop served them, the first three serve on.
    server.try_reload(config(&ports[..3])).await.expect("reload");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let closed = ports[3..].iter().all(|&p| std::net::UdpSocket::bind(("127.0.0.1", p)).is_ok());
        // The admin listener, on port 0, is bound anew by the reload.
        if closed && udp_sockets(&status(admin()).await).iter().sum::<u64>() == 3 {
            break;
        }
        assert!(Instant::now() < deadline, "removed sockets still served: {}", status(admin()).await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for &p in &ports[..3] {
        assert_eq!(ask(p).await, "a:hi", "port {p} after the reload");
    }
}

/// One port with `udp_reuseport` is served by a socket on each of the three loops, and the
/// kernel spreads its clients over them: every loop runs flows of it, each client is answered
/// from the port it sent to, the flows gauge adds up the three tables, and a reload that
/// removes the port closes all three.
#[tokio::test(flavor = "current_thread")]
async fn one_udp_port_with_reuseport_is_served_on_every_loop() {
    let backend = Backend::start("r", "127.0.0.1").await;
    let _echo = UdpEcho::start("r", backend.addr).await;
    let port = free_port();
    let config = |udp: bool| {
        let service = if udp {
            format!(
                "[[service]]\nname = \"busy\"\nlisten = [\"127.0.0.1:{port}\"]\nprotocol = \"udp\"\npool = \"p\"\nudp_reuseport = true\n"
            )
        } else {
            // The reload below keeps a service, so that the admin listener stays.
            format!("[[service]]\nname = \"other\"\nlisten = [\"127.0.0.1:{}\"]\npool = \"p\"\n", free_port())
        };
        let toml = format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\n[pool.p]\npaths = [{{ name = \"a\", address = \"{}\" }}]\n\
             health = {{ interval = \"100ms\", timeout = \"100ms\", rise = 2, fall = 2 }}\n{service}",
            backend.addr
        );
        ingress::Config::from_toml(&toml).expect("config")
    };
    let workers = shared::workers::Workers::start(3, "test-ingress-reuseport").expect("workers");
    let loops = workers.handles();
    let server = ingress::Server::start_on(config(true), workers).await;
    wait_until("bound", Duration::from_secs(5), || server.local_addrs("busy").len() == 1).await;
    let admin = server.admin_addr().expect("admin listener");
    let udp_sockets: Vec<u64> = status(admin).await["threads"]
        .as_array()
        .expect("threads")
        .iter()
        .map(|t| t["udp_sockets"].as_u64().unwrap_or(99))
        .collect();
    assert_eq!(udp_sockets, [1, 1, 1], "one socket of the port on each loop");
    let tasks_before: Vec<usize> = loops.iter().map(|h| h.metrics().num_alive_tasks()).collect();

    // Thirty clients, each from its own port: each flow keeps a reply pump on its loop.
    let mut clients = Vec::new();
    for i in 0..30 {
        let c = tokio::net::UdpSocket::bind("127.0.0.1:0").await.expect("client");
        c.connect(("127.0.0.1", port)).await.expect("connect");
        let said = format!("c{i}");
        // The path comes up after two health rounds: ask until answered.
        let mut answered = None;
        for _ in 0..50 {
            c.send(said.as_bytes()).await.expect("send");
            let mut b = [0u8; 64];
            if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(200), c.recv(&mut b)).await {
                answered = Some(String::from_utf8_lossy(&b[..n]).into_owned());
                break;
            }
        }
        assert_eq!(answered.as_deref(), Some(format!("r:{said}").as_str()), "client {i}");
        clients.push(c);
    }
    let flows = metric(&metrics(&server).await, "ingress_udp_flows_active", &[("service", "busy")]);
    assert_eq!(flows, 30.0, "the three sockets' flows add up");
    let tasks_after: Vec<usize> = loops.iter().map(|h| h.metrics().num_alive_tasks()).collect();
    for (i, (before, after)) in tasks_before.iter().zip(&tasks_after).enumerate() {
        assert!(after > before, "loop {} runs none of the port's flows ({before} -> {after} tasks)", i + 1);
    }

    // Removed by a reload: every socket of the group closes.
    server.try_reload(config(false)).await.expect("reload");
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::net::UdpSocket::bind(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "a socket of the removed port is still open");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let flows = metric(&metrics(&server).await, "ingress_udp_flows_active", &[("service", "busy")]);
    assert_eq!(flows, 0.0, "a socket no longer served takes its flows off the gauge");
}
