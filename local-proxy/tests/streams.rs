//! TCP and UDP stream forwards: PROXY rules on the WAN side, optional PROXY v2 to the
//! upstream, half-close, and strangers dropped and counted.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use local_proxy::listeners::Origin;
use shared::proxy_protocol::{self, Command, Transport};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

/// TCP upstream: if `proxy`, reads a PROXY header first; answers `client=<addr>\n` then
/// echoes everything until the client half-closes, then closes.
async fn tcp_upstream(proxy: bool) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, peer)) = l.accept().await {
            tokio::spawn(async move {
                let client = if proxy {
                    let h = proxy_protocol::read_header(&mut s, Duration::from_secs(5)).await.unwrap();
                    h.addresses().map(|(c, _)| c.to_string()).unwrap_or_default()
                } else {
                    peer.to_string()
                };
                s.write_all(format!("client={client}\n").as_bytes()).await.unwrap();
                let (mut r, mut w) = s.split();
                tokio::io::copy(&mut r, &mut w).await.unwrap();
                w.shutdown().await.unwrap();
            });
        }
    });
    addr
}

async fn start(tcp_proxy: SocketAddr, tcp_plain: SocketAddr, udp: SocketAddr) -> Proxy {
    Proxy::start(&base_config(&format!(
        r#"
[[stream]]
name = "jenkins"
listen = "0/tcp"
upstream = "{tcp_plain}"
[[stream]]
name = "turns"
listen = "0/tcp"
upstream = "{tcp_proxy}"
proxy_protocol = "v2"
[[stream]]
name = "wazuh"
listen = "0/udp"
upstream = "{udp}"
[[stream]]
name = "turn"
listen = "0/udp"
upstream = "{udp}"
proxy_protocol = "v2"
idle_timeout = "500ms"
"#
    )))
    .await
}

async fn read_all(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await.unwrap().unwrap();
    String::from_utf8(out).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_streams_carry_the_client_address_and_half_close() {
    let p = start(tcp_upstream(true).await, tcp_upstream(false).await, udp_client_upstream().await).await;
    let client: SocketAddr = "198.51.100.7:40000".parse().unwrap();

    // WAN side, PROXY v2 from the trusted ingress, relayed as PROXY v2 to the upstream.
    let wan = p.listeners_tcp[&(Origin::Wan, "turns".to_string())];
    let mut s = connect_with_proxy("127.0.0.2".parse().unwrap(), wan, client).await;
    s.write_all(b"hello").await.unwrap();
    s.shutdown().await.unwrap();
    assert_eq!(read_all(&mut s).await, "client=198.51.100.7:40000\nhello");

    // Mesh side: the peer is the client.
    let mesh = p.listeners_tcp[&(Origin::Mesh, "turns".to_string())];
    let mut s = TcpStream::connect(mesh).await.unwrap();
    let me = s.local_addr().unwrap();
    s.write_all(b"mesh").await.unwrap();
    s.shutdown().await.unwrap();
    assert_eq!(read_all(&mut s).await, format!("client={me}\nmesh"));

    // Without PROXY to the upstream, it sees the proxy's own address, and a long transfer
    // passes whole.
    let plain = p.listeners_tcp[&(Origin::Wan, "jenkins".to_string())];
    let mut s = connect_with_proxy("127.0.0.2".parse().unwrap(), plain, client).await;
    let data = vec![b'z'; 1 << 20];
    let (mut r, mut w) = s.split();
    let (_, got) = tokio::join!(
        async {
            w.write_all(&data).await.unwrap();
            w.shutdown().await.unwrap();
        },
        async {
            let mut out = Vec::new();
            r.read_to_end(&mut out).await.unwrap();
            out
        }
    );
    let text_end = got.iter().position(|b| *b == b'\n').unwrap();
    assert!(got[..text_end].starts_with(b"client=127.0.0.1:"));
    assert_eq!(got.len() - text_end - 1, data.len());
    let sent = p.metric("local_proxy_stream_bytes_total", &[("stream", "jenkins"), ("direction", "in")]).await;
    assert!(sent >= data.len() as f64, "bytes to upstream counted: {sent}");

    // A stranger gets nothing and is counted.
    let key = [("listener", "wan-stream"), ("result", "untrusted")];
    let before = p.metric("local_proxy_connections_total", &key).await;
    let mut s = connect_with_proxy("127.0.0.3".parse().unwrap(), plain, client).await;
    let mut got = Vec::new();
    // Closed with our header unread: EOF or a reset, never data.
    let res = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got)).await.unwrap();
    assert!(got.is_empty(), "{res:?}");
    assert!(p.metric("local_proxy_connections_total", &key).await > before);
}

/// A stream that sends the upstream no PROXY header closes a client whose bytes start with
/// one (from the ingress, behind its header, or straight from the mesh) before the upstream
/// has the whole signature: it would take it for ours. One that sends ours passes it on as
/// the payload it then is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_own_proxy_header_is_refused_where_we_send_none() {
    let p = start(tcp_upstream(true).await, tcp_upstream(false).await, udp_client_upstream().await).await;
    let client: SocketAddr = "198.51.100.7:40000".parse().unwrap();
    let v1 = b"PROXY TCP4 192.0.2.1 192.0.2.2 1 2\r\n".to_vec();
    let v2 = [&proxy_protocol::V2_SIGNATURE[..], b"\x21\x11\x00\x0c"].concat();
    let plain = p.listeners_tcp[&(Origin::Wan, "jenkins".to_string())];
    let plain_mesh = p.listeners_tcp[&(Origin::Mesh, "jenkins".to_string())];
    for (header, cut, whole) in [(&v1, 3, 6), (&v2, 7, 12)] {
        for mesh in [false, true] {
            let mut s = if mesh {
                TcpStream::connect(plain_mesh).await.unwrap()
            } else {
                connect_with_proxy("127.0.0.2".parse().unwrap(), plain, client).await
            };
            s.write_all(&header[..cut]).await.unwrap();
            tokio::time::sleep(Duration::from_millis(30)).await;
            let _ = s.write_all(&header[cut..]).await;
            let mut got = Vec::new();
            let r = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got)).await.expect("closed");
            let echoed = got.iter().position(|b| *b == b'\n').map_or(&got[..], |i| &got[i + 1..]);
            assert!(echoed.len() < whole, "mesh: {mesh}; the upstream got {got:?} ({r:?})");
        }
    }
    let refused = p.metric("local_proxy_stream_proxy_headers_refused_total", &[("stream", "jenkins")]).await;
    assert_eq!(refused, 4.0);
    let ours = p.listeners_tcp[&(Origin::Wan, "turns".to_string())];
    let mut s = connect_with_proxy("127.0.0.2".parse().unwrap(), ours, client).await;
    s.write_all(&v1).await.unwrap();
    s.shutdown().await.unwrap();
    let got = read_all(&mut s).await;
    assert_eq!(got, format!("client={client}\n{}", String::from_utf8_lossy(&v1)));

    let key = [("stream", "wazuh"), ("result", "proxy_header")];
    let wazuh = p.listeners_udp[&(Origin::Wan, "wazuh".to_string())];
    let wazuh_mesh = p.listeners_udp[&(Origin::Mesh, "wazuh".to_string())];
    assert_eq!(udp_exchange("127.0.0.2", wazuh, &with_header(client, wazuh, &v2)).await, None);
    assert_eq!(udp_exchange("127.0.0.1", wazuh_mesh, &v2).await, None);
    assert_eq!(p.metric("local_proxy_udp_dropped_total", &key).await, 2.0);
    let turn = p.listeners_udp[&(Origin::Wan, "turn".to_string())];
    assert!(udp_exchange("127.0.0.2", turn, &with_header(client, turn, &v2)).await.is_some());
}

async fn udp_exchange(from: &str, to: SocketAddr, datagram: &[u8]) -> Option<String> {
    let s = UdpSocket::bind(format!("{from}:0")).await.unwrap();
    s.send_to(datagram, to).await.unwrap();
    let mut buf = [0u8; 2048];
    match tokio::time::timeout(Duration::from_millis(1500), s.recv_from(&mut buf)).await {
        Ok(Ok((n, src))) => {
            assert_eq!(src, to, "reply comes from the address the datagram went to");
            Some(String::from_utf8_lossy(&buf[..n]).to_string())
        }
        _ => None,
    }
}

fn with_header(client: SocketAddr, to: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let mut d = Vec::new();
    proxy_protocol::write_v2(&mut d, Command::Proxy, Transport::Datagram, Some((client, to)));
    d.extend_from_slice(payload);
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_streams_follow_the_same_rules() {
    let p = start(tcp_upstream(true).await, tcp_upstream(false).await, udp_client_upstream().await).await;
    let client: SocketAddr = "198.51.100.7:40000".parse().unwrap();
    let wazuh = p.listeners_udp[&(Origin::Wan, "wazuh".to_string())];
    let turn = p.listeners_udp[&(Origin::Wan, "turn".to_string())];
    let turn_mesh = p.listeners_udp[&(Origin::Mesh, "turn".to_string())];

    // Header from the ingress is stripped; without PROXY to the upstream, it sees the proxy.
    let reply = udp_exchange("127.0.0.2", wazuh, &with_header(client, wazuh, b"agent")).await;
    assert_eq!(reply.as_deref(), Some("from=direct:127.0.0.1;agent"));
    // With PROXY v2 towards the upstream, the client address arrives there.
    let reply = udp_exchange("127.0.0.2", turn, &with_header(client, turn, b"bind")).await;
    assert_eq!(reply.as_deref(), Some("from=198.51.100.7:40000;bind"));
    // A datagram from the ingress without a header: the ingress is the client.
    let reply = udp_exchange("127.0.0.2", wazuh, b"bare").await;
    assert_eq!(reply.as_deref(), Some("from=direct:127.0.0.1;bare"));
    // Mesh: no header; the peer is the client.
    let reply = udp_exchange("127.0.0.1", turn_mesh, b"mesh").await.unwrap();
    assert!(reply.starts_with("from=127.0.0.1:") && reply.ends_with(";mesh"), "{reply}");

    // A stranger is dropped and counted.
    let key = [("stream", "wazuh"), ("result", "untrusted")];
    let before = p.metric("local_proxy_udp_dropped_total", &key).await;
    assert_eq!(udp_exchange("127.0.0.3", wazuh, &with_header(client, wazuh, b"x")).await, None);
    assert!(p.metric("local_proxy_udp_dropped_total", &key).await > before);

    // Flows idle out (turn: 500ms).
    wait_until(Duration::from_secs(5), "turn flows expired", || async {
        p.metric("local_proxy_udp_flows_active", &[("stream", "turn")]).await == 0.0
    })
    .await;
}

/// A burst from the ingress (read in batches, each flow's run sent on in one GSO send) reaches
/// the upstream whole and in order, each datagram behind its own flow's header: two clients'
/// datagrams, interleaved in one burst from the same ingress, never share a flow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_two_clients_reaches_the_upstream_whole_and_in_order() {
    let upstream = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let p = Proxy::start(&base_config(&format!(
        r#"
[[stream]]
name = "burst"
listen = "0/udp"
upstream = "{}"
proxy_protocol = "v2"
"#,
        upstream.local_addr().unwrap()
    )))
    .await;
    let to = p.listeners_udp[&(Origin::Wan, "burst".to_string())];
    let one: SocketAddr = "198.51.100.7:40000".parse().unwrap();
    let two: SocketAddr = "198.51.100.8:40000".parse().unwrap();
    let ingress = UdpSocket::bind("127.0.0.2:0").await.unwrap();
    for i in 0..50u8 {
        ingress.send_to(&with_header(one, to, &[i; 500]), to).await.unwrap();
        if i % 10 == 9 {
            ingress.send_to(&with_header(two, to, &[100 + i; 500]), to).await.unwrap();
        }
    }
    // 500 bytes each: the ingress's header stripped, nothing else.
    let got = test_support::proxied_bursts(&upstream, 55, 500).await;
    assert_eq!(got[&one], (0..50).collect::<Vec<u8>>(), "client one's datagrams, whole and in order");
    assert_eq!(got[&two], [109, 119, 129, 139, 149], "client two's");
}

/// A burst of replies (read by the flow's pump in batches, sent back in GSO runs) reaches the
/// ingress whole and in order, from the stream's listening address, lengths mixed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_replies_reaches_the_ingress_whole_and_in_order() {
    let upstream = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let p = Proxy::start(&base_config(&format!(
        r#"
[[stream]]
name = "replies"
listen = "0/udp"
upstream = "{}"
"#,
        upstream.local_addr().unwrap()
    )))
    .await;
    let to = p.listeners_udp[&(Origin::Wan, "replies".to_string())];
    let client: SocketAddr = "198.51.100.7:40000".parse().unwrap();
    let ingress = UdpSocket::bind("127.0.0.2:0").await.unwrap();
    ingress.send_to(&with_header(client, to, b"hello"), to).await.unwrap();
    let mut buf = vec![0u8; 65_536];
    let (n, flow) = tokio::time::timeout(Duration::from_secs(5), upstream.recv_from(&mut buf))
        .await
        .expect("the first datagram reaches the upstream")
        .unwrap();
    assert_eq!(&buf[..n], b"hello");
    test_support::reply_burst(&upstream, flow, &ingress, to).await;
}

/// On a wildcard WAN address, a stream answers each sender from the address it sent to (an
/// ingress's flow socket is connected to that address and drops anything from another), and a
/// datagram that came without a header is passed on with that address as its destination.
/// 127.0.0.5 and 127.0.0.6 are not the route's source back to the ingress (127.0.0.1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_on_a_wildcard_address_answers_from_the_address_asked() {
    // A raw echo: the upstream's datagram comes back whole, the PROXY header toward it included.
    let upstream = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let at = upstream.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        while let Ok((n, peer)) = upstream.recv_from(&mut buf).await {
            let _ = upstream.send_to(&buf[..n], peer).await;
        }
    });
    let config = base_config(&format!(
        "[[stream]]\nname = \"wild\"\nlisten = \"0/udp\"\nupstream = \"{at}\"\nproxy_protocol = \"v2\"\n"
    ))
    .replace("addresses = [\"127.0.0.1\"]", "addresses = [\"0.0.0.0\"]");
    let p = Proxy::start(&config).await;
    let port = p.listeners_udp[&(Origin::Wan, "wild".to_string())].port();
    for ip in ["127.0.0.5", "127.0.0.6"] {
        let asked = SocketAddr::new(ip.parse().unwrap(), port);
        let ingress = UdpSocket::bind("127.0.0.2:0").await.unwrap();
        ingress.send_to(b"bare", asked).await.unwrap();
        let mut buf = [0u8; 2048];
        let (n, from) =
            tokio::time::timeout(Duration::from_secs(5), ingress.recv_from(&mut buf)).await.expect("a reply").unwrap();
        assert_eq!(from, asked, "the reply comes from the address asked");
        let parsed = proxy_protocol::parse(&buf[..n]).expect("the header toward the upstream");
        assert_eq!(parsed.addresses(), Some((ingress.local_addr().unwrap(), asked)));
        assert_eq!(&buf[parsed.len..n], b"bare");
    }
}

/// udp_recv_buffer sizes the stream's listening socket and each flow's socket (`ss`'s `rb`
/// is twice what was set; the size stays under net.core.rmem_max, with or without
/// CAP_NET_ADMIN).
#[tokio::test]
async fn udp_recv_buffer_sizes_the_listener_and_the_flows() {
    let upstream = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let p = Proxy::start(&base_config(&format!(
        r#"
[[stream]]
name = "sized"
listen = "0/udp"
upstream = "{}"
udp_recv_buffer = 65536
"#,
        upstream.local_addr().unwrap()
    )))
    .await;
    let to = p.listeners_udp[&(Origin::Wan, "sized".to_string())];
    let ingress = UdpSocket::bind("127.0.0.2:0").await.unwrap();
    ingress.send_to(&with_header("198.51.100.7:40000".parse().unwrap(), to, b"hi"), to).await.unwrap();
    let (_, flow) = tokio::time::timeout(Duration::from_secs(5), upstream.recv_from(&mut [0u8; 64]))
        .await
        .expect("the datagram reaches the upstream")
        .unwrap();
    assert_eq!(test_support::udp_receive_buffer(to.port()), Some(2 * 65_536), "the listener");
    assert_eq!(test_support::udp_receive_buffer(flow.port()), Some(2 * 65_536), "the flow's socket");
}

/// A UDP upstream that answers every datagram with `answer(its source address)`.
async fn answering_udp_upstream(answer: fn(SocketAddr) -> String) -> SocketAddr {
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = s.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        while let Ok((_, peer)) = s.recv_from(&mut buf).await {
            let _ = s.send_to(answer(peer).as_bytes(), peer).await;
        }
    });
    addr
}

/// One datagram from `client`, and its reply if one comes within 50 ms.
async fn reply(client: &UdpSocket) -> Option<String> {
    client.send(b"keepalive").await.unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_millis(50), client.recv(&mut buf)).await.ok()?.ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// A reload that moves a UDP stream to another upstream moves its talking flows too (a
/// WireGuard peer's keepalives would otherwise hold the old upstream for good): the flow ends
/// and the next datagram opens it on the new upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_moves_a_talking_udp_flow_to_the_new_upstream() {
    let (a, b) = (answering_udp_upstream(|_| "A".into()).await, answering_udp_upstream(|_| "B".into()).await);
    let port = free_port();
    let conf = |upstream: SocketAddr| {
        base_config(&format!("[[stream]]\nname = \"wg\"\nlisten = \"{port}/udp\"\nupstream = \"{upstream}\"\n"))
    };
    let p = Proxy::start(&conf(a)).await;
    let listen = p.listeners_udp[&(Origin::Mesh, "wg".to_string())];
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    client.connect(listen).await.unwrap();
    // Whether `tag` answers within 60 tries.
    let answers = async |tag: &str| {
        for _ in 0..60 {
            if reply(&client).await.is_some_and(|r| r == tag) {
                return true;
            }
        }
        false
    };
    assert!(answers("A").await, "the flow never reached A");
    p.handle.reload(local_proxy::config::from_toml_str(&conf(b)).unwrap()).await.unwrap();
    assert!(answers("B").await, "the talking flow stayed on the old upstream after the reload");
}

/// A reload that moves a UDP stream to another upstream ends its flows without waiting for a
/// client's next datagram: a flow that only receives (a stream pushed to the client) would
/// otherwise keep the removed upstream's replies coming until its idle timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_ends_a_quiet_udp_flow_of_a_removed_upstream() {
    let (a, b) = (answering_udp_upstream(|_| "A".into()).await, answering_udp_upstream(|_| "B".into()).await);
    let port = free_port();
    let conf = |upstream: SocketAddr| {
        base_config(&format!(
            "[[stream]]\nname = \"push\"\nlisten = \"{port}/udp\"\nupstream = \"{upstream}\"\nidle_timeout = \"60s\"\n"
        ))
    };
    let p = Proxy::start(&conf(a)).await;
    let listen = p.listeners_udp[&(Origin::Mesh, "push".to_string())];
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    client.connect(listen).await.unwrap();
    assert_eq!(reply(&client).await.as_deref(), Some("A"));
    let open = async || p.metric("local_proxy_udp_flows_active", &[("stream", "push")]).await;
    assert_eq!(open().await, 1.0);
    p.handle.reload(local_proxy::config::from_toml_str(&conf(b)).unwrap()).await.unwrap();
    let mut left = 1.0;
    for _ in 0..40 {
        left = open().await;
        if left == 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(left, 0.0, "the flow to the removed upstream outlived the reload");
}

/// A reload that changes only how long a UDP stream's flows may idle leaves its talking flows
/// alone: the upstream keeps seeing the same source port (a TURN or WireGuard server would take
/// a new one for a new client). A change of upstream moves them (the test above).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_of_timeouts_keeps_a_talking_udp_flow() {
    let upstream = answering_udp_upstream(|peer| peer.port().to_string()).await;
    let port = free_port();
    let conf = |idle: &str| {
        base_config(&format!(
            "[[stream]]\nname = \"turn\"\nlisten = \"{port}/udp\"\nupstream = \"{upstream}\"\nidle_timeout = \"{idle}\"\n"
        ))
    };
    let p = Proxy::start(&conf("60s")).await;
    let listen = p.listeners_udp[&(Origin::Mesh, "turn".to_string())];
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    client.connect(listen).await.unwrap();
    // The source port the upstream saw, within 60 tries.
    let seen = async || {
        for _ in 0..60 {
            if let Some(r) = reply(&client).await {
                return r;
            }
        }
        panic!("the upstream never answered");
    };
    let before = seen().await;
    p.handle.reload(local_proxy::config::from_toml_str(&conf("120s")).unwrap()).await.unwrap();
    // Several datagrams after the reload: the first may still have been read under the old one.
    for _ in 0..5 {
        assert_eq!(seen().await, before, "the flow was reopened by a reload that changed only idle_timeout");
    }
}
