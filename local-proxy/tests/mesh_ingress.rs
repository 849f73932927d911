//! The mesh listener with `mesh.trusted_ingress` (issue 14): an ingress node's mesh tier
//! (127.0.0.5 here) sends PROXY v2 and the real client reaches the upstream; a direct mesh
//! client (127.0.0.6) sends none and is itself the client; the ingress without its header is
//! refused; a WAN-trusted peer gets no header reading on the mesh. Same for UDP datagrams.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use local_proxy::listeners::Origin;
use shared::proxy_protocol::{self, Command, Transport};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UdpSocket;

const MESH_INGRESS: &str = "127.0.0.5";
const MESH_CLIENT: &str = "127.0.0.6";
const WAN_INGRESS: &str = "127.0.0.2";

async fn udp_exchange(from: &str, to: SocketAddr, datagram: &[u8]) -> Option<Vec<u8>> {
    let s = UdpSocket::bind(format!("{from}:0")).await.unwrap();
    s.send_to(datagram, to).await.unwrap();
    let mut buf = [0u8; 2048];
    match tokio::time::timeout(Duration::from_millis(1500), s.recv_from(&mut buf)).await {
        Ok(Ok((n, _))) => Some(buf[..n].to_vec()),
        _ => None,
    }
}

/// GET with `Connection: close`; (status, text), status 0 when the proxy closed (or reset) the
/// connection without an answer.
async fn get(s: &mut tokio::net::TcpStream, path: &str) -> (u16, String) {
    let req = format!("GET {path} HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n");
    // A refused connection may be closed before the request is even written.
    let _ = s.write_all(req.as_bytes()).await;
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "no answer nor close within 10 s");
    let text = String::from_utf8_lossy(&out).to_string();
    (text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0), text)
}

fn forwarded_for(response: &str) -> Option<&str> {
    response.lines().find_map(|l| l.strip_prefix("x-forwarded-for: "))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mesh_reads_proxy_headers_from_the_ingress_nodes_only() {
    let (up, udp) = (echo_upstream("lan").await, udp_client_upstream().await);
    let p = Proxy::start(&format!(
        r#"
[admin]
listen = "127.0.0.1:0"
[wan]
addresses = ["127.0.0.1"]
trusted_ingress = ["{WAN_INGRESS}"]
proxy_header_timeout = "1s"
[mesh]
listen = "127.0.0.4"
trusted_ingress = ["{MESH_INGRESS}"]
[http]
https_port = 0
http_port = 0
redirect_to_https = false
[[site]]
host = "a.test"
upstream = "http://{up}"
[[stream]]
name = "turn"
listen = "0/udp"
upstream = "{udp}"
proxy_protocol = "v2"
"#
    ))
    .await;
    let client: SocketAddr = "203.0.113.7:4242".parse().unwrap();
    let mesh_http = p.mesh_http;

    // The ingress's mesh tier: its header names the client the upstream sees.
    let mut s = connect_with_proxy(MESH_INGRESS.parse().unwrap(), mesh_http, client).await;
    let (status, text) = get(&mut s, "/via-ingress").await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(forwarded_for(&text), Some("203.0.113.7"), "{text}");

    // A direct mesh client: no header read; it is the client.
    let mut s = connect_from(MESH_CLIENT.parse().unwrap(), mesh_http).await;
    let (status, text) = get(&mut s, "/direct").await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(forwarded_for(&text), Some(MESH_CLIENT), "{text}");

    // From the ingress's mesh address a header is required, as on WAN listeners.
    let key = [("listener", "mesh-http"), ("result", "bad_header")];
    let before = p.metric("local_proxy_connections_total", &key).await;
    let mut s = connect_from(MESH_INGRESS.parse().unwrap(), mesh_http).await;
    let (status, text) = get(&mut s, "/no-header").await;
    assert_eq!(status, 0, "answered without the header: {text}");
    assert_eq!(p.metric("local_proxy_connections_total", &key).await, before + 1.0);

    // wan.trusted_ingress does not open header reading on the mesh: the header is request
    // bytes there, and the request is refused as malformed.
    let mut s = connect_with_proxy(WAN_INGRESS.parse().unwrap(), mesh_http, client).await;
    let (status, text) = get(&mut s, "/wan-peer").await;
    assert_ne!(status, 200, "{text}");
    assert_ne!(forwarded_for(&text), Some("203.0.113.7"), "{text}");

    // UDP on the mesh socket: the ingress's header is stripped and names the client...
    let turn_mesh = p.listeners_udp[&(Origin::Mesh, "turn".to_string())];
    let mut d = Vec::new();
    proxy_protocol::write_v2(&mut d, Command::Proxy, Transport::Datagram, Some((client, turn_mesh)));
    d.extend_from_slice(b"bind");
    let reply = udp_exchange(MESH_INGRESS, turn_mesh, &d).await.expect("a reply via the mesh ingress");
    assert_eq!(String::from_utf8_lossy(&reply), "from=203.0.113.7:4242;bind");
    // ...while from a mesh client the same bytes are payload and the client is the peer.
    let reply = udp_exchange(MESH_CLIENT, turn_mesh, &d).await.expect("a reply to the mesh client");
    let head = format!("from={MESH_CLIENT}:");
    assert!(reply.starts_with(head.as_bytes()), "{}", String::from_utf8_lossy(&reply));
    assert!(reply.ends_with(&d), "the header-like bytes arrive as payload");
}
