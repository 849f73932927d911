//! `http.max_connections`: a connection past the limit waits until one ends, and is counted.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn metric(proxy: &Binary, name: &str, listener: &str) -> f64 {
    metric_value(&http_get(proxy.admin, "/metrics").await.1, name, &[("listener", listener)])
}

/// Sends one request on `s` and reads until the end of its response head.
async fn ask(s: &mut TcpStream, close: bool) -> String {
    let connection = if close { "Connection: close\r\n" } else { "" };
    s.write_all(format!("GET / HTTP/1.1\r\nHost: nobody.test\r\n{connection}\r\n").as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed before a response head: {}", String::from_utf8_lossy(&head));
        head.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

const ACTIVE: &str = "local_proxy_connections_active";

/// The binary with `http_extra` in its `[http]`, once the start-up probes' connections have
/// ended.
async fn start(http_extra: &str) -> (Binary, tempfile::TempDir) {
    let tmp = tempfile::tempdir().unwrap();
    let live = tmp.path().join("live");
    std::fs::create_dir_all(&live).unwrap();
    let proxy = spawn_binary(tmp.path(), &live, http_extra, "").await;
    wait_until(Duration::from_secs(5), "no connection open", || async {
        metric(&proxy, ACTIVE, "mesh-http").await == 0.0 && metric(&proxy, ACTIVE, "mesh-https").await == 0.0
    })
    .await;
    (proxy, tmp)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_past_the_limit_waits_for_a_slot_and_the_limit_is_counted() {
    let (proxy, _tmp) = start("max_connections = 1").await;
    let reached = "local_proxy_connection_limit_reached_total";

    // The only slot, held by a kept-alive connection.
    let mut first = TcpStream::connect(proxy.mesh_http).await.unwrap();
    let head = ask(&mut first, false).await;
    assert!(head.starts_with("HTTP/1.1 "), "{head}");
    // Read now, not before: a readiness probe's connection still queued ahead of `first` may
    // have held the slot, and made `first` wait, until it was accepted; served, `first` has it.
    let before = metric(&proxy, reached, "mesh-http").await;

    // The second is accepted by the kernel but not served while the first holds the slot.
    let mut second = TcpStream::connect(proxy.mesh_http).await.unwrap();
    let waiting = tokio::time::timeout(Duration::from_millis(500), ask(&mut second, true)).await;
    assert!(waiting.is_err(), "served past http.max_connections: {waiting:?}");
    let after = metric(&proxy, reached, "mesh-http").await;
    assert_eq!(after, before + 1.0, "the connection that waited is counted");

    // The first ends: the second gets its slot and its answer.
    drop(first);
    answered_within_5s(&mut second, "served once the slot was free").await;
}

/// A reload that lowers the limit below what is open keeps counting the open connections: a
/// new one waits until they are under the new limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lower_limit_counts_the_connections_already_open() {
    let (proxy, _tmp) = start("max_connections = 2").await;
    let mut first = TcpStream::connect(proxy.mesh_http).await.unwrap();
    assert!(ask(&mut first, false).await.starts_with("HTTP/1.1 "));
    let mut second = TcpStream::connect(proxy.mesh_http).await.unwrap();
    assert!(ask(&mut second, false).await.starts_with("HTTP/1.1 "));
    proxy.reload("max_connections = 2", "max_connections = 1", "ok").await;

    // One still open, at the new limit: the next waits.
    drop(first);
    wait_until(Duration::from_secs(5), "one connection open", || async {
        metric(&proxy, ACTIVE, "mesh-http").await == 1.0
    })
    .await;
    let mut third = TcpStream::connect(proxy.mesh_http).await.unwrap();
    let waiting = tokio::time::timeout(Duration::from_millis(500), ask(&mut third, true)).await;
    assert!(waiting.is_err(), "served past the lowered limit: {waiting:?}");

    // None open: the waiting one is served.
    drop(second);
    answered_within_5s(&mut third, "served once the open connections were under the limit").await;
}

/// `stream`, whose request waited for a slot, gets its HTTP answer within 5 s.
async fn answered_within_5s(stream: &mut TcpStream, what: &str) {
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await.expect(what).unwrap();
    let text = String::from_utf8_lossy(&rest);
    assert!(text.starts_with("HTTP/1.1 "), "{what}: {text}");
}

/// Anyone on the public mesh can connect: direct mesh clients get `mesh.max_connections` of
/// their own, one more is closed at accept and counted, and the ingress (here over WAN) is
/// still served under `http.max_connections` while they hold theirs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_clients_cannot_take_the_slots_the_ingress_needs() {
    use shared::proxy_protocol::{write_v2, Command, Transport};
    let text =
        "[admin]\nlisten = \"127.0.0.1:0\"\n[wan]\naddresses = [\"127.0.0.1\"]\ntrusted_ingress = [\"127.0.0.2\"]\n\
                [mesh]\nlisten = \"127.0.0.4\"\nmax_connections = 2\n[http]\nhttps_port = 0\nhttp_port = 0\n\
                max_connections = 3\n";
    let p = Proxy::start(text).await;
    let active = || p.metric("local_proxy_connections_active", &[("listener", "mesh-http")]);
    // Two silent mesh clients hold the mesh's slots.
    let _silent = [TcpStream::connect(p.mesh_http).await.unwrap(), TcpStream::connect(p.mesh_http).await.unwrap()];
    wait_until(Duration::from_secs(5), "two mesh connections open", || async { active().await == 2.0 }).await;
    // A third is closed at once, not held in the backlog.
    let mut third = TcpStream::connect(p.mesh_http).await.unwrap();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(5), third.read(&mut buf)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "a mesh client past mesh.max_connections was served: {read:?}");
    let refused = p.metric("local_proxy_connections_total", &[("listener", "mesh-http"), ("result", "mesh_limit")]);
    assert_eq!(refused.await, 1.0);
    // The ingress's connection still gets a slot and its answer.
    let mut ingress = connect_from("127.0.0.2".parse().unwrap(), p.wan_http).await;
    let mut header = Vec::new();
    let client = "198.51.100.7:40000".parse().unwrap();
    write_v2(&mut header, Command::Proxy, Transport::Stream, Some((client, p.wan_http)));
    header.extend_from_slice(b"GET /healthz HTTP/1.1\r\nHost: nobody.test\r\nConnection: close\r\n\r\n");
    ingress.write_all(&header).await.unwrap();
    answered_within_5s(&mut ingress, "the ingress's request, while mesh clients hold theirs").await;
}
