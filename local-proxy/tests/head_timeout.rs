//! A request head sent at 1 byte/s gets `408 Request Timeout` and a close once
//! `http.header_read_timeout` passes (over TLS, as browsers connect, and over plain HTTP);
//! connections that started no head (idle keep-alive, or silent from the start) are closed
//! without one, since nobody would be there to read it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

const TIMEOUT: Duration = Duration::from_secs(2);

async fn setup() -> (tempfile::TempDir, Ca, Proxy) {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path());
    let live = dir.path().join("live");
    ca.certbot(&live, "a.test", &["a.test"], "a.test");
    let up = echo_upstream("a").await;
    let text = base_config(&format!(
        "header_read_timeout = \"{}s\"\nredirect_to_https = false\n[tls]\ncertbot_live_dir = \"{}\"\n\
         [[site]]\nhost = \"a.test\"\nupstream = \"http://{up}\"\n",
        TIMEOUT.as_secs(),
        live.display()
    ));
    let proxy = Proxy::start(&text).await;
    (dir, ca, proxy)
}

/// Send `head` one byte a second until the peer stops taking bytes; then read what it
/// answered until it closed. Returns the answer and how long after the first byte it ended.
async fn trickle<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, head: &[u8]) -> (String, Duration) {
    let started = Instant::now();
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    let mut next = 0;
    let deadline = started + TIMEOUT * 3;
    loop {
        if next < head.len() && s.write_all(&head[next..next + 1]).await.is_ok() {
            let _ = s.flush().await;
            next += 1;
        }
        match tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await {
            Err(_) => {}
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
        assert!(Instant::now() < deadline, "still open after {:?}: {:?}", started.elapsed(), out);
    }
    (String::from_utf8_lossy(&out).into_owned(), started.elapsed())
}

const HEAD: &[u8] = b"GET /slow HTTP/1.1\r\nHost: a.test\r\nUser-Agent: one-byte-a-second\r\n\r\n";

fn assert_408(answer: &str, took: Duration) {
    assert!(answer.starts_with("HTTP/1.1 408 Request Timeout\r\n"), "answer: {answer:?}");
    assert!(answer.to_ascii_lowercase().contains("connection: close"), "{answer}");
    // Cut at the timeout (plus a read tick), not when the client gave up.
    assert!(took >= TIMEOUT - Duration::from_millis(100) && took < TIMEOUT * 2, "took {took:?}");
}

#[tokio::test]
async fn slow_head_over_tls_gets_408_and_close() {
    let (_dir, ca, p) = setup().await;
    let tcp = TcpStream::connect(p.mesh_https).await.unwrap();
    let mut tls = tls_over(tcp, "a.test", &ca.pem_path).await.unwrap();
    let (answer, took) = trickle(&mut tls, HEAD).await;
    assert_408(&answer, took);
}

#[tokio::test]
async fn slow_head_over_plain_http_gets_408_and_close() {
    let (_dir, _ca, p) = setup().await;
    let mut s = TcpStream::connect(p.mesh_http).await.unwrap();
    let (answer, took) = trickle(&mut s, HEAD).await;
    assert_408(&answer, took);
}

#[tokio::test]
async fn a_slow_second_head_gets_408_after_a_served_request() {
    let (_dir, _ca, p) = setup().await;
    let mut s = TcpStream::connect(p.mesh_http).await.unwrap();
    exchange(&mut s, "/first").await;
    let (answer, took) = trickle(&mut s, HEAD).await;
    assert_408(&answer, took);
}

#[tokio::test]
async fn no_408_where_no_head_was_started() {
    let (_dir, ca, p) = setup().await;
    // Silent from the start (a browser's preconnect): closed, nothing written.
    let tcp = TcpStream::connect(p.mesh_https).await.unwrap();
    let mut tls = tls_over(tcp, "a.test", &ca.pem_path).await.unwrap();
    let (answer, took) = trickle(&mut tls, b"").await;
    assert!(answer.is_empty(), "{answer:?}");
    assert!(took < TIMEOUT * 2, "took {took:?}");
    // Idle keep-alive after a full exchange: closed, nothing more written.
    let mut s = TcpStream::connect(p.mesh_http).await.unwrap();
    exchange(&mut s, "/first").await;
    let (answer, _) = trickle(&mut s, b"").await;
    assert!(answer.is_empty(), "{answer:?}");
}

/// hyper's HTTP/1 server is built at the client's first byte; the first head's time still
/// counts from the connection's start (TLS done), so a client that waits before it starts
/// trickling does not get a second `header_read_timeout`.
#[tokio::test]
async fn the_first_head_is_timed_from_the_connection_start_not_its_first_byte() {
    let (_dir, ca, p) = setup().await;
    let tcp = TcpStream::connect(p.mesh_https).await.unwrap();
    let mut tls = tls_over(tcp, "a.test", &ca.pem_path).await.unwrap();
    let connected = Instant::now();
    let silent = TIMEOUT - Duration::from_millis(300);
    tokio::time::sleep(silent).await;
    let (answer, took) = trickle(&mut tls, HEAD).await;
    assert!(answer.starts_with("HTTP/1.1 408 Request Timeout\r\n"), "answer: {answer:?}");
    // Timed from the first byte it would end near silent + TIMEOUT (3.7 s); from the start,
    // at TIMEOUT (plus a read tick).
    let total = connected.elapsed();
    assert!(total < TIMEOUT + Duration::from_millis(900), "408 after {total:?} ({took:?} after the first byte)");
}

/// Read one whole answer from the echo upstream (it ends with its count of body bytes) and
/// check it answers `path`; returns it.
async fn read_answer<S: AsyncRead + Unpin>(s: &mut S, path: &str) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 1];
    // A byte at a time: the next answer on the connection must stay unread.
    loop {
        let text = String::from_utf8_lossy(&got);
        if let Some(at) = text.find("body-bytes: ") {
            if text[at..].ends_with('\n') {
                break;
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.unwrap().unwrap();
        assert!(n > 0, "closed before the answer to {path}: {}", String::from_utf8_lossy(&got));
        got.push(buf[0]);
    }
    let text = String::from_utf8_lossy(&got).into_owned();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains(&format!("path: {path}\n")), "the answer to another request: {text}");
    text
}

/// Send one GET on `s` and read its whole answer; returns when the answer was complete.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, path: &str) -> Instant {
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: a.test\r\n\r\n").as_bytes()).await.unwrap();
    read_answer(s, path).await;
    Instant::now()
}

const PARKED: &str = "local_proxy_http_connections_parked_total";

/// A keep-alive connection quiet between requests gives hyper's buffers back (it is parked)
/// and is served again when its client asks, over TLS and plain HTTP, however long the pause.
#[tokio::test]
async fn a_keep_alive_connection_quiet_between_requests_is_served_again() {
    let (_dir, ca, p) = setup().await;
    let tcp = TcpStream::connect(p.mesh_https).await.unwrap();
    let mut tls = tls_over(tcp, "a.test", &ca.pem_path).await.unwrap();
    let mut plain = TcpStream::connect(p.mesh_http).await.unwrap();
    for (i, pause) in [0, 10, 120, 400, 30, 1200].into_iter().enumerate() {
        tokio::time::sleep(Duration::from_millis(pause)).await;
        exchange(&mut tls, &format!("/tls/{i}")).await;
        exchange(&mut plain, &format!("/plain/{i}")).await;
    }
    // Parked after each pause longer than 50 ms (120, 400 and 1200 ms), on both.
    assert!(p.metric(PARKED, &[("listener", "mesh-https")]).await >= 3.0);
    assert!(p.metric(PARKED, &[("listener", "mesh-http")]).await >= 3.0);
    // Two requests in one write after a pause: both answered, in order.
    tokio::time::sleep(Duration::from_millis(300)).await;
    tls.write_all(b"GET /p1 HTTP/1.1\r\nHost: a.test\r\n\r\nGET /p2 HTTP/1.1\r\nHost: a.test\r\n\r\n").await.unwrap();
    read_answer(&mut tls, "/p1").await;
    read_answer(&mut tls, "/p2").await;
}

/// A pipelined request whose head the server had read only in part when the connection went
/// quiet: the part read is handed to the next server, and the request is answered.
#[tokio::test]
async fn a_pipelined_head_split_by_a_pause_is_served() {
    let (_dir, ca, p) = setup().await;
    let tcp = TcpStream::connect(p.mesh_https).await.unwrap();
    let mut tls = tls_over(tcp, "a.test", &ca.pem_path).await.unwrap();
    tls.write_all(b"GET /a HTTP/1.1\r\nHost: a.test\r\n\r\nGET /b HT").await.unwrap();
    read_answer(&mut tls, "/a").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(p.metric(PARKED, &[("listener", "mesh-https")]).await, 1.0, "parked with the head begun");
    tls.write_all(b"TP/1.1\r\nHost: a.test\r\n\r\n").await.unwrap();
    read_answer(&mut tls, "/b").await;
}

/// A pipelined request still in flight (its body comes late, so its upstream waits) keeps
/// its server however long it takes: it is answered, with its whole body.
#[tokio::test]
async fn a_pipelined_request_in_flight_is_not_parked() {
    let (_dir, ca, p) = setup().await;
    let tcp = TcpStream::connect(p.mesh_https).await.unwrap();
    let mut tls = tls_over(tcp, "a.test", &ca.pem_path).await.unwrap();
    tls.write_all(
        b"GET /a HTTP/1.1\r\nHost: a.test\r\n\r\nPOST /b HTTP/1.1\r\nHost: a.test\r\nContent-Length: 10\r\n\r\n12345",
    )
    .await
    .unwrap();
    read_answer(&mut tls, "/a").await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(p.metric(PARKED, &[("listener", "mesh-https")]).await, 0.0);
    tls.write_all(b"67890").await.unwrap();
    let answer = read_answer(&mut tls, "/b").await;
    assert!(answer.contains("body-bytes: 10\n"), "{answer}");
}

/// A parked connection that stays quiet is closed header_read_timeout after its last answer,
/// silently, as hyper closes an idle keep-alive connection.
#[tokio::test]
async fn a_quiet_keep_alive_connection_closes_at_the_head_timeout_after_its_last_answer() {
    let (_dir, ca, p) = setup().await;
    let tcp = TcpStream::connect(p.mesh_https).await.unwrap();
    let mut tls = tls_over(tcp, "a.test", &ca.pem_path).await.unwrap();
    exchange(&mut tls, "/first").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let answered = exchange(&mut tls, "/second").await;
    let (answer, _) = trickle(&mut tls, b"").await;
    assert!(answer.is_empty(), "{answer:?}");
    let took = answered.elapsed();
    assert!(
        took >= TIMEOUT - Duration::from_millis(100) && took < TIMEOUT + Duration::from_millis(900),
        "closed {took:?} after the last answer"
    );
}

/// A head that starts on a parked connection is due header_read_timeout after the last
/// answer, as it was before the park: waiting quietly first does not buy a client more time.
#[tokio::test]
async fn a_head_started_after_a_pause_is_timed_from_the_last_answer() {
    let (_dir, ca, p) = setup().await;
    let tcp = TcpStream::connect(p.mesh_https).await.unwrap();
    let mut tls = tls_over(tcp, "a.test", &ca.pem_path).await.unwrap();
    let answered = exchange(&mut tls, "/first").await;
    tokio::time::sleep(TIMEOUT - Duration::from_millis(700)).await;
    let (answer, took) = trickle(&mut tls, HEAD).await;
    assert!(answer.starts_with("HTTP/1.1 408 Request Timeout\r\n"), "answer: {answer:?}");
    let total = answered.elapsed();
    assert!(
        total < TIMEOUT + Duration::from_millis(900),
        "408 {total:?} after the last answer ({took:?} after the first byte)"
    );
}
