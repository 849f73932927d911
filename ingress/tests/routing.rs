//! SNI and Host routing, PROXY v2 towards home, and bad clients on peeking listeners.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const HELLO_X: &[u8] = include_bytes!("../../shared/tests/fixtures/openssl_x.example.org.bin");
const HELLO_CLOUD: &[u8] = include_bytes!("../../shared/tests/fixtures/curl_Cloud.Example.Org.bin");
const HELLO_NO_SNI: &[u8] = include_bytes!("../../shared/tests/fixtures/openssl_nosni.bin");

/// Three single-path pools (a, b, c) and one peeking service routed over them.
fn routed(a: SocketAddr, b: SocketAddr, c: SocketAddr, mode: &str, extra: &str) -> String {
    format!(
        r#"
[admin]
listen = "127.0.0.1:0"
[pool.a]
paths = [{{ name = "a", address = "{a}" }}]
[pool.b]
paths = [{{ name = "b", address = "{b}" }}]
[pool.c]
paths = [{{ name = "c", address = "{c}" }}]
[[service]]
name = "{mode}-routed"
listen = ["127.0.0.1:0"]
mode = "{mode}"
pool = "a"
routes = [ {{ names = ["x.example.org"], pool = "b" }}, {{ names = ["*.example.org"], pool = "c" }} ]
{extra}
"#
    )
}

/// Backends a, b and c, one per pool of [`routed`].
async fn three_backends() -> (Backend, Backend, Backend) {
    (
        Backend::start("a", "127.0.0.2").await,
        Backend::start("b", "127.0.0.3").await,
        Backend::start("c", "127.0.0.4").await,
    )
}

/// Send `first` (in two pieces, to exercise reassembly), return the backend's name line
/// and the bytes echoed after it.
async fn send_and_read(addr: SocketAddr, first: &[u8]) -> Result<(String, Vec<u8>), String> {
    let mut s = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let cut = first.len() / 3;
    s.write_all(&first[..cut]).await.map_err(|e| e.to_string())?;
    tokio::time::sleep(Duration::from_millis(20)).await;
    s.write_all(&first[cut..]).await.map_err(|e| e.to_string())?;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while got.iter().position(|&b| b == b'\n').is_none_or(|nl| got.len() < nl + 1 + first.len()) {
        let n = tokio::time::timeout_at(deadline, s.read(&mut buf))
            .await
            .map_err(|_| "timed out".to_string())?
            .map_err(|e| e.to_string())?;
        if n == 0 {
            return Err(format!("closed after {} bytes", got.len()));
        }
        got.extend_from_slice(&buf[..n]);
    }
    let nl = got.iter().position(|&b| b == b'\n').unwrap_or(0);
    Ok((String::from_utf8_lossy(&got[..nl]).into_owned(), got[nl + 1..].to_vec()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_routes_by_name_and_replays_the_hello() {
    let (a, b, c) = three_backends().await;
    let server = start(&routed(a.addr, b.addr, c.addr, "sni", "")).await;
    let addr = service_addr(&server, "sni-routed").await;
    for (hello, want) in [(HELLO_X, "b"), (HELLO_CLOUD, "c"), (HELLO_NO_SNI, "a")] {
        let (name, echoed) = send_and_read(addr, hello).await.expect("routed");
        assert_eq!(name, want);
        assert_eq!(echoed, hello, "the ClientHello must reach home unchanged");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_routes_by_host() {
    let (a, b, c) = three_backends().await;
    let server = start(&routed(a.addr, b.addr, c.addr, "http", "")).await;
    let addr = service_addr(&server, "http-routed").await;
    let cases: [(&[u8], &str); 4] = [
        (b"GET / HTTP/1.1\r\nHost: X.example.org:80\r\nAccept: */*\r\n\r\n", "b"),
        (b"GET /.well-known/acme-challenge/t HTTP/1.1\r\nhost: www.example.org\r\n\r\n", "c"),
        (b"GET / HTTP/1.1\r\nHost: other.test\r\n\r\n", "a"),
        (b"GET / HTTP/1.0\r\n\r\n", "a"),
    ];
    for (head, want) in cases {
        let (name, echoed) = send_and_read(addr, head).await.expect("routed");
        assert_eq!(name, want, "{}", String::from_utf8_lossy(head));
        assert_eq!(echoed, head);
    }
}

/// A head sent a byte at a time is routed by its Host; TLS sent to a Host-routed port is
/// refused at once (not held for peek_timeout), whatever its first read held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_head_is_routed_and_tls_to_a_host_port_is_refused_at_once() {
    let (a, b, c) = three_backends().await;
    let server = start(&routed(a.addr, b.addr, c.addr, "http", "peek_timeout = \"20s\"")).await;
    let addr = service_addr(&server, "http-routed").await;
    let head = b"GET / HTTP/1.1\r\nAccept: */*\r\nHost: X.example.org\r\n\r\n";
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.set_nodelay(true).expect("nodelay");
    for byte in head {
        s.write_all(std::slice::from_ref(byte)).await.expect("write");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while !got.contains(&b'\n') {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.expect("routed").expect("read");
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    assert!(got.starts_with(b"b\n"), "{}", String::from_utf8_lossy(&got));

    let mut tls = TcpStream::connect(addr).await.expect("connect");
    tls.write_all(HELLO_X).await.expect("write");
    let mut buf = [0u8; 16];
    let r = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf)).await;
    assert!(matches!(r, Ok(Ok(0)) | Ok(Err(_))), "TLS to an HTTP port not refused at once: {r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_clients_are_dropped_and_counted_while_others_are_served() {
    let (a, b, c) = three_backends().await;
    let server = start(&routed(a.addr, b.addr, c.addr, "sni", "peek_timeout = \"300ms\"\npeek_max = 1024")).await;
    let addr = service_addr(&server, "sni-routed").await;
    // Not TLS at all.
    let mut garbage = TcpStream::connect(addr).await.expect("connect");
    garbage.write_all(b"GET / HTTP/1.1\r\n\r\n").await.expect("write");
    // A hello that never finishes: held no longer than the peek timeout.
    let mut stalled = TcpStream::connect(addr).await.expect("connect");
    stalled.write_all(&HELLO_X[..40]).await.expect("write");
    // A record that announces more than peek_max.
    let mut huge = TcpStream::connect(addr).await.expect("connect");
    huge.write_all(&[0x16, 0x03, 0x01, 0x3f, 0xff, 0x01, 0x00, 0x3f, 0xfb]).await.expect("write");
    huge.write_all(&[0u8; 1100]).await.expect("write");
    // Meanwhile a good client is served.
    let (name, _) = send_and_read(addr, HELLO_X).await.expect("good client served");
    assert_eq!(name, "b");
    for (what, s) in [("garbage", &mut garbage), ("stalled", &mut stalled), ("huge", &mut huge)] {
        let mut buf = [0u8; 16];
        let r = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf)).await;
        assert!(matches!(r, Ok(Ok(0)) | Ok(Err(_))), "{what}: not closed promptly: {r:?}");
    }
    assert_eq!(a.count() + b.count() + c.count(), 1, "bad clients must never reach home");
    let m = metrics(&server).await;
    assert_eq!(metric(&m, "ingress_service_route_failures_total", &[("service", "sni-routed")]), 3.0);
    // Each told by its reason: a flood of one kind shows as that kind.
    for reason in ["not_tls", "timeout", "too_long"] {
        let labels = [("service", "sni-routed"), ("reason", reason)];
        assert_eq!(metric(&m, "ingress_service_route_failures_total", &labels), 1.0, "{reason}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_v2_header_carries_the_client_address_with_the_first_bytes() {
    let wan1 = Backend::start("wan1", "127.0.0.2").await;
    let server = start(&config(&[("wan1", wan1.addr, 1)], None, "proxy_protocol = \"v2\"")).await;
    let addr = service_addr(&server, "echo").await;
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    sock.bind("127.0.0.9:0".parse().expect("addr")).expect("bind client to 127.0.0.9");
    let mut s = sock.connect(addr).await.expect("connect");
    let me = s.local_addr().expect("local");
    s.write_all(b"hello").await.expect("write");
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !got.ends_with(b"hello") {
        let n = tokio::time::timeout_at(deadline, s.read(&mut buf)).await.expect("in time").expect("read");
        assert!(n > 0, "closed early");
        got.extend_from_slice(&buf[..n]);
    }
    assert!(got.starts_with(b"wan1\n"));
    let parsed = shared::proxy_protocol::parse(&got[5..]).expect("a PROXY v2 header arrives first");
    assert_eq!(parsed.addresses(), Some((me, addr)));
    assert_eq!(&got[5 + parsed.len..], b"hello");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_routing_with_a_real_tls_client() {
    let (a, b, c) = three_backends().await;
    let server = start(&routed(a.addr, b.addr, c.addr, "sni", "")).await;
    let addr = service_addr(&server, "sni-routed").await;
    for (name, backend) in [("x.example.org", &b), ("www.example.org", &c), ("elsewhere.test", &a)] {
        let before = backend.count();
        // The backends are not TLS servers, so curl fails after its hello: the route is
        // what is under test, observed at the backend.
        let out = tokio::process::Command::new("curl")
            .args(["-sk", "--max-time", "3", "--resolve", &format!("{name}:{}:127.0.0.1", addr.port())])
            .arg(format!("https://{name}:{}/", addr.port()))
            .output()
            .await
            .expect("curl must be installed (scripts/test installs it)");
        let _ = out;
        wait_until(&format!("{name} routed"), Duration::from_secs(3), || backend.count() == before + 1).await;
    }
}
