//! `threads` sets how many event loops serve client connections (`shared::workers`, as in the
//! ingress): the main thread's and `threads - 1` named `local-proxy-N`. Accepted connections
//! spread over the loops, TLS handshake and all, `/status` tells each loop's share, and each
//! loop keeps its own pooled connections to the upstreams.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::TokioIo;
use test_support::threads_named;
use tokio::net::{TcpListener, TcpStream};

/// An upstream that numbers the connections it accepts and answers each request with the
/// number of the connection it came on.
async fn numbering_upstream() -> (SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let n = count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req: hyper::Request<hyper::body::Incoming>| async move {
                    Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from(format!("conn {n}")))))
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(s), svc).await;
            });
        }
    });
    (addr, accepted)
}

/// A kept-alive HTTPS client connection to a.test.
async fn client(addr: SocketAddr, ca: &std::path::Path) -> hyper::client::conn::http1::SendRequest<Empty<Bytes>> {
    let tls = tls_over(TcpStream::connect(addr).await.unwrap(), "a.test", ca).await.unwrap();
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.unwrap();
    tokio::spawn(conn);
    send
}

async fn get(send: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>) -> (u16, String) {
    let req = hyper::Request::get("/").header("host", "a.test").body(Empty::new()).unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), send.send_request(req)).await.unwrap().unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test(flavor = "current_thread")]
async fn connections_spread_over_the_loops_and_each_loop_pools_its_own_upstream_connections() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path());
    let live = dir.path().join("live");
    ca.certbot(&live, "a.test", &["a.test"], "a.test");
    let (upstream, accepted) = numbering_upstream().await;
    let text = base_config(&format!(
        "[tls]\ncertbot_live_dir = \"{}\"\n[[site]]\nhost = \"a.test\"\nupstream = \"http://{upstream}\"\n",
        live.display()
    ));
    let workers = shared::workers::Workers::start(3, "test-lp").unwrap();
    let proxy = Proxy::start_on(&text, workers).await;

    // Six connections held open: two per loop (the one with the fewest takes the next).
    let mut clients = Vec::new();
    for _ in 0..6 {
        clients.push(client(proxy.mesh_https, &ca.pem_path).await);
    }
    // One request at a time, round after round: a loop's second request finds its first
    // one's upstream connection idle in its pool.
    let mut seen = BTreeSet::new();
    for round in 0..3 {
        for (i, c) in clients.iter_mut().enumerate() {
            let (status, body) = get(c).await;
            assert_eq!(status, 200, "round {round}, client {i}: {body}");
            seen.insert(body);
        }
    }
    // Every loop opened its own: with one pool for all, requests one at a time need one.
    assert!(seen.len() >= 3, "upstream connections used: {seen:?}");
    assert_eq!(accepted.load(Ordering::SeqCst), seen.len(), "{seen:?}");

    let (status, text) = http_get(proxy.admin, "/status").await;
    assert_eq!(status, 200, "{text}");
    let body = text.split("\r\n\r\n").nth(1).unwrap();
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    let threads: Vec<(u64, u64)> = v["threads"]
        .as_array()
        .expect("threads")
        .iter()
        .map(|t| (t["open"].as_u64().unwrap_or(99), t["placed"].as_u64().unwrap_or(99)))
        .collect();
    // The admin request itself is not a client connection.
    assert_eq!(threads, [(2, 2), (2, 2), (2, 2)], "{v}");
    let page = http_get(proxy.admin, "/").await.1;
    assert!(page.contains("connections per thread: 2 · 2 · 2"), "{page}");

    drop(clients);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v: serde_json::Value =
            serde_json::from_str(http_get(proxy.admin, "/status").await.1.split("\r\n\r\n").nth(1).unwrap()).unwrap();
        if v["threads"].as_array().unwrap().iter().all(|t| t["open"] == 0) {
            break;
        }
        assert!(Instant::now() < deadline, "connections still counted open: {v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// UDP stream sockets are served on all three loops, each with its flows, ties in turn, and
/// relay there; `/status` and the page tell each loop's share.
#[tokio::test(flavor = "current_thread")]
async fn udp_stream_sockets_spread_over_the_loops_and_relay_there() {
    let echo = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let echo_addr = echo.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        while let Ok((n, peer)) = echo.recv_from(&mut buf).await {
            let _ = echo.send_to(&buf[..n], peer).await;
        }
    });
    // Stream names key process-wide flow budgets: ones no other test uses.
    let names = ["udp-loops-a", "udp-loops-b", "udp-loops-c"];
    let streams: String = names
        .iter()
        .map(|n| format!("[[stream]]\nname = \"{n}\"\nlisten = \"0/udp\"\nupstream = \"{echo_addr}\"\n"))
        .collect();
    let workers = shared::workers::Workers::start(3, "test-lp-udp").unwrap();
    let proxy = Proxy::start_on(&base_config(&streams), workers).await;
    let sockets = proxy.listeners_udp.len();
    assert!(sockets >= 3, "a socket per stream at least: {:?}", proxy.listeners_udp);
    for (key, addr) in &proxy.listeners_udp {
        if key.0 != local_proxy::listeners::Origin::Mesh {
            continue;
        }
        let c = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        c.send_to(key.1.as_bytes(), addr).await.unwrap();
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(5), c.recv(&mut buf)).await.unwrap().unwrap();
        assert_eq!(&buf[..n], key.1.as_bytes(), "stream {}", key.1);
    }
    let (status, text) = http_get(proxy.admin, "/status").await;
    assert_eq!(status, 200, "{text}");
    let v: serde_json::Value = serde_json::from_str(text.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    let per: Vec<usize> =
        v["threads"].as_array().unwrap().iter().map(|t| t["udp_sockets"].as_u64().unwrap_or(99) as usize).collect();
    assert_eq!(per.iter().sum::<usize>(), sockets, "{v}");
    assert!(per.iter().max().unwrap() - per.iter().min().unwrap() <= 1, "spread evenly: {per:?}");
    let page = http_get(proxy.admin, "/").await.1;
    let shown = per.iter().map(usize::to_string).collect::<Vec<_>>().join(" · ");
    assert!(page.contains(&format!("UDP sockets per thread: {shown}")), "{page}");
}

/// The binary: `threads = 3` is the main thread and two loops named `local-proxy-N`;
/// `threads = 1`, the main thread alone.
#[tokio::test]
async fn the_process_has_as_many_event_loops_as_configured() {
    let dir = tempfile::tempdir().unwrap();
    for threads in [1usize, 3] {
        let (http, https) = (free_port(), free_port());
        let config = dir.path().join(format!("t{threads}.toml"));
        std::fs::write(
            &config,
            format!(
                "threads = {threads}\n[wan]\naddresses = [\"127.0.0.1\"]\ntrusted_ingress = [\"127.0.0.2\"]\n\
                 [mesh]\nlisten = \"{BINARY_MESH}\"\n[http]\nhttps_port = {https}\nhttp_port = {http}\n"
            ),
        )
        .unwrap();
        let stderr = dir.path().join(format!("t{threads}.stderr"));
        let child = spawn_with_config(std::path::Path::new(env!("CARGO_BIN_EXE_local-proxy")), &config, &stderr);
        let pid = child.id().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect((BINARY_MESH, http)).await.is_err() {
            let log = std::fs::read_to_string(&stderr).unwrap_or_default();
            assert!(Instant::now() < deadline, "the proxy never listened; its log:\n{log}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(threads_named(pid, "local-proxy-"), threads - 1, "loops for threads = {threads}");
        drop(child);
    }
}
