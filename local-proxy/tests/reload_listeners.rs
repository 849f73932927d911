//! Reload with listener changes: streams added and removed, a port moved, the admin listener
//! moved, a bind failure refusing the whole reload; established connections survive their
//! listener's removal and unchanged listeners keep their sockets. Also the transparent stream
//! wiring on loopback (the upstream sees the PROXY client's address as the TCP/UDP peer).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use common::*;
use local_proxy::config;
use local_proxy::listeners::{Origin, Serves};
use shared::proxy_protocol::{self, Command, Transport};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

/// TCP upstream: answers `<name> peer=<addr>\n`, then echoes lines.
async fn tcp_upstream(name: &'static str) -> SocketAddr {
    line_echo(Some(name)).await
}

/// UDP upstream: replies `peer=<addr>` to every datagram.
async fn udp_upstream() -> SocketAddr {
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = s.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        while let Ok((_, peer)) = s.recv_from(&mut buf).await {
            let _ = s.send_to(format!("peer={peer}").as_bytes(), peer).await;
        }
    });
    addr
}

/// The bound mesh-side address of stream `name`, if it is served.
fn stream_addr(p: &Proxy, name: &str) -> Option<SocketAddr> {
    p.handle
        .listening()
        .into_iter()
        .find(|(k, s, _)| {
            k.origin == Origin::Mesh && matches!(s, Serves::Tcp(local_proxy::listeners::Role::Stream(n)) if n == name)
        })
        .and_then(|(_, _, a)| a)
}

/// Connect (mesh side, no header) and read the greeting line.
async fn greet(addr: SocketAddr) -> std::io::Result<(BufReader<TcpStream>, String)> {
    let s = TcpStream::connect(addr).await?;
    let mut r = BufReader::new(s);
    let mut line = String::new();
    tokio::time::timeout(Duration::from_secs(5), r.read_line(&mut line)).await.map_err(std::io::Error::other)??;
    Ok((r, line))
}

async fn echo_line(r: &mut BufReader<TcpStream>, text: &str) -> String {
    r.get_mut().write_all(format!("{text}\n").as_bytes()).await.unwrap();
    let mut line = String::new();
    tokio::time::timeout(Duration::from_secs(5), r.read_line(&mut line)).await.unwrap().unwrap();
    line
}

fn stream(name: &str, listen: &str, upstream: SocketAddr) -> String {
    format!("[[stream]]\nname = \"{name}\"\nlisten = \"{listen}\"\nupstream = \"{upstream}\"\n")
}

async fn free_port() -> u16 {
    test_support::free_port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_binds_new_listeners_closes_removed_and_keeps_connections() {
    let (up_a, up_b) = (tcp_upstream("a").await, tcp_upstream("b").await);
    let p = Proxy::start(&base_config(&stream("a", "0/tcp", up_a))).await;
    let https_before = p.mesh_https;
    let a = stream_addr(&p, "a").expect("stream a served");
    let (mut held, hello) = greet(a).await.unwrap();
    assert!(hello.starts_with("a peer="), "{hello}");

    // Stream a removed, b added: b answers, a's socket is closed, the held connection goes on.
    let cfg = base_config(&stream("b", "0/tcp", up_b));
    p.handle.reload(config::from_toml_str(&cfg).unwrap()).await.unwrap();
    assert!(stream_addr(&p, "a").is_none(), "stream a still listed");
    let b = stream_addr(&p, "b").expect("stream b served after reload");
    assert!(greet(b).await.unwrap().1.starts_with("b peer="));
    assert!(TcpStream::connect(a).await.is_err(), "stream a's port still accepts");
    assert_eq!(echo_line(&mut held, "still here").await, "still here\n", "held connection broke");
    let addrs: Vec<SocketAddr> = p.handle.listening().into_iter().filter_map(|(_, _, a)| a).collect();
    assert!(addrs.contains(&https_before), "the unchanged HTTPS listener was rebound: {addrs:?}");

    // b moves to a fixed port; the old ephemeral one closes.
    let port = free_port().await;
    let cfg = base_config(&stream("b", &format!("{port}/tcp"), up_b));
    p.handle.reload(config::from_toml_str(&cfg).unwrap()).await.unwrap();
    let fixed = SocketAddr::new(IpAddr::from([127, 0, 0, 4]), port);
    assert_eq!(stream_addr(&p, "b"), Some(fixed));
    assert!(greet(fixed).await.unwrap().1.starts_with("b peer="));
    assert!(TcpStream::connect(b).await.is_err(), "b's old port still accepts");

    // Same port, stream renamed and pointed at a: the socket stays and serves the new stream.
    let cfg = base_config(&stream("a2", &format!("{port}/tcp"), up_a));
    p.handle.reload(config::from_toml_str(&cfg).unwrap()).await.unwrap();
    assert_eq!(stream_addr(&p, "a2"), Some(fixed));
    assert!(greet(fixed).await.unwrap().1.starts_with("a peer="));

    // A port someone else holds: the reload is refused whole, nothing changes.
    let squatter = TcpListener::bind("127.0.0.4:0").await.unwrap();
    let taken = squatter.local_addr().unwrap().port();
    let cfg = format!(
        "{}{}",
        base_config(&stream("a2", &format!("{port}/tcp"), up_b)),
        stream("c", &format!("{taken}/tcp"), up_b)
    );
    let err = p.handle.reload(config::from_toml_str(&cfg).unwrap()).await.unwrap_err();
    assert!(err.to_string().contains(&taken.to_string()), "{err}");
    assert!(greet(fixed).await.unwrap().1.starts_with("a peer="), "a refused reload changed the upstream");
    assert!(stream_addr(&p, "c").is_none());
    // (One metrics recorder per test process: other tests' reloads count as `ok` too.)
    assert_eq!(p.metric("local_proxy_config_reloads_total", &[("result", "bind_failed")]).await, 1.0);

    // The admin listener moves to a fixed port.
    let admin_port = free_port().await;
    let cfg = base_config(&stream("a2", &format!("{port}/tcp"), up_a))
        .replace("listen = \"127.0.0.1:0\"", &format!("listen = \"127.0.0.1:{admin_port}\""));
    p.handle.reload(config::from_toml_str(&cfg).unwrap()).await.unwrap();
    let admin = SocketAddr::from(([127, 0, 0, 1], admin_port));
    assert_eq!(p.handle.admin_addr(), Some(admin));
    assert_eq!(http_get(admin, "/healthz").await.0, 200);
    assert!(TcpStream::connect(p.admin).await.is_err(), "the old admin port still accepts");

    // ... to the wildcard address on the same port (its old socket is closed first), ...
    let with_admin = |listen: &str, extra: &str| {
        format!("{}{extra}", base_config(&stream("a2", &format!("{port}/tcp"), up_a)))
            .replace("listen = \"127.0.0.1:0\"", &format!("listen = \"{listen}\""))
    };
    let cfg = with_admin(&format!("0.0.0.0:{admin_port}"), "");
    p.handle.reload(config::from_toml_str(&cfg).unwrap()).await.unwrap();
    assert_eq!(p.handle.admin_addr(), Some(SocketAddr::from(([0, 0, 0, 0], admin_port))));
    assert_eq!(http_get(admin, "/healthz").await.0, 200);
    // ... back, in a reload refused for another socket: the wildcard one serves again, ...
    let cfg = with_admin(&format!("127.0.0.1:{admin_port}"), &stream("c", &format!("{taken}/tcp"), up_b));
    assert!(p.handle.reload(config::from_toml_str(&cfg).unwrap()).await.is_err());
    assert_eq!(p.handle.admin_addr(), Some(SocketAddr::from(([0, 0, 0, 0], admin_port))));
    assert_eq!(http_get(admin, "/healthz").await.0, 200);
    // ... and away, its port taken by a stream in the same reload.
    let cfg = with_admin("127.0.0.1:0", &stream("d", &format!("{admin_port}/tcp"), up_b));
    p.handle.reload(config::from_toml_str(&cfg).unwrap()).await.unwrap();
    let d = SocketAddr::from(([127, 0, 0, 4], admin_port));
    assert_eq!(stream_addr(&p, "d"), Some(d));
    assert!(greet(d).await.unwrap().1.starts_with("b peer="));
    let moved = p.handle.admin_addr().unwrap();
    assert_eq!(http_get(moved, "/healthz").await.0, 200);
    assert_eq!(echo_line(&mut held, "to the end").await, "to the end\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_adds_and_removes_udp_listeners() {
    let up = udp_upstream().await;
    let p = Proxy::start(&base_config("")).await;
    let cfg = base_config(&format!("[[stream]]\nname = \"u\"\nlisten = \"0/udp\"\nupstream = \"{up}\"\n"));
    p.handle.reload(config::from_toml_str(&cfg).unwrap()).await.unwrap();
    let u = p
        .handle
        .listening()
        .into_iter()
        .find(|(k, s, _)| k.origin == Origin::Mesh && *s == Serves::Udp("u".into()))
        .and_then(|(_, _, a)| a)
        .expect("udp stream served");
    let client = UdpSocket::bind("127.0.0.9:0").await.unwrap();
    client.send_to(b"hi", u).await.unwrap();
    let mut buf = [0u8; 256];
    let (n, _) = tokio::time::timeout(Duration::from_secs(5), client.recv_from(&mut buf)).await.unwrap().unwrap();
    assert!(std::str::from_utf8(&buf[..n]).unwrap().starts_with("peer=127.0.0.1:"));

    p.handle.reload(config::from_toml_str(&base_config("")).unwrap()).await.unwrap();
    assert!(!p.handle.listening().iter().any(|(_, s, _)| *s == Serves::Udp("u".into())));
    // The port is free again: it can be bound by someone else.
    UdpSocket::bind(u).await.expect("the removed UDP socket still holds its port");
}

/// Loopback only: the "client" named in the PROXY header is 127.0.0.9, a local address, so the
/// replies need no policy route; the upstream must see that address (and port) as its peer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transparent_streams_connect_from_the_client_address() {
    let (tcp_up, udp_up) = (tcp_upstream("t").await, udp_upstream().await);
    let p = Proxy::start(&base_config(&format!(
        "{}transparent = true\n[[stream]]\nname = \"tu\"\nlisten = \"0/udp\"\nupstream = \"{udp_up}\"\ntransparent = true\n",
        stream("t", "0/tcp", tcp_up)
    )))
    .await;
    let wan_t = p.listeners_tcp[&(Origin::Wan, "t".to_string())];
    // A port no earlier run left in TIME_WAIT (a taken port falls back to another one).
    let port = 20_000 + (std::process::id() % 20_000) as u16;
    let client = SocketAddr::from(([127, 0, 0, 9], port));
    let s = connect_with_proxy(IpAddr::from([127, 0, 0, 2]), wan_t, client).await;
    let mut r = BufReader::new(s);
    let mut line = String::new();
    tokio::time::timeout(Duration::from_secs(5), r.read_line(&mut line)).await.unwrap().unwrap();
    assert_eq!(line, format!("t peer={client}\n"));

    // UDP from the trusted ingress with a PROXY header naming the client.
    let wan_u = p.listeners_udp[&(Origin::Wan, "tu".to_string())];
    let ingress = UdpSocket::bind("127.0.0.2:0").await.unwrap();
    let udp_client = SocketAddr::from(([127, 0, 0, 9], port + 1));
    let mut d = Vec::new();
    proxy_protocol::write_v2(&mut d, Command::Proxy, Transport::Datagram, Some((udp_client, wan_u)));
    d.extend_from_slice(b"hello");
    ingress.send_to(&d, wan_u).await.unwrap();
    let mut buf = [0u8; 256];
    let (n, _) = tokio::time::timeout(Duration::from_secs(5), ingress.recv_from(&mut buf)).await.unwrap().unwrap();
    assert_eq!(std::str::from_utf8(&buf[..n]).unwrap(), format!("peer={udp_client}"));

    // A client of the other family (an IPv6 mesh client, say) cannot lend its address to an
    // IPv4 connection: forwarded from ours, and counted.
    let v6_client: SocketAddr = "[2001:db8::9]:40000".parse().unwrap();
    let s = connect_with_proxy(IpAddr::from([127, 0, 0, 2]), wan_t, v6_client).await;
    let mut r = BufReader::new(s);
    let mut line = String::new();
    tokio::time::timeout(Duration::from_secs(5), r.read_line(&mut line)).await.unwrap().unwrap();
    assert!(line.starts_with("t peer=127.0.0.1:"), "{line}");
    let fallbacks = [("stream", "t"), ("reason", "family")];
    assert_eq!(p.metric("local_proxy_stream_transparent_fallbacks_total", &fallbacks).await, 1.0);
}

/// A transparent UDP conversation that moved (the ingress's flow came back from another of
/// its sockets, as when it moves a flow to another WAN) is served by the newer flow; the
/// older one, which its sender no longer uses, goes idle and ends after `idle_timeout`
/// although the upstream keeps answering through the socket both share. Before, the replies
/// the old flow's pump happened to read kept it alive for the whole conversation, holding a
/// slot of `max_flows` and an open-flows count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_transparent_flow_leaves_the_old_one_to_go_idle() {
    if local_proxy::transparent::probe().is_err() {
        assert!(!rustix::process::geteuid().is_root(), "root, yet IP_TRANSPARENT refused");
        return;
    }
    let udp_up = udp_upstream().await;
    let p = Proxy::start(&base_config(&format!(
        "[[stream]]\nname = \"tu\"\nlisten = \"0/udp\"\nupstream = \"{udp_up}\"\ntransparent = true\nidle_timeout = \"1s\"\n"
    )))
    .await;
    let wan_u = p.listeners_udp[&(Origin::Wan, "tu".to_string())];
    let port = 20_000 + (std::process::id() % 20_000) as u16;
    let client = SocketAddr::from(([127, 0, 0, 9], port.wrapping_add(7)));
    let mut d = Vec::new();
    proxy_protocol::write_v2(&mut d, Command::Proxy, Transport::Datagram, Some((client, wan_u)));
    d.extend_from_slice(b"hello");
    // Two sockets of one ingress node: the second takes the conversation over.
    let (old, new) = (UdpSocket::bind("127.0.0.2:0").await.unwrap(), UdpSocket::bind("127.0.0.2:0").await.unwrap());
    let mut buf = [0u8; 256];
    for sender in [&old, &new] {
        sender.send_to(&d, wan_u).await.unwrap();
        let (n, _) = tokio::time::timeout(Duration::from_secs(5), sender.recv_from(&mut buf)).await.unwrap().unwrap();
        assert_eq!(std::str::from_utf8(&buf[..n]).unwrap(), format!("peer={client}"));
    }
    assert_eq!(p.metric("local_proxy_udp_flows_moved_total", &[("stream", "tu")]).await, 1.0);
    // Three seconds of the conversation on the new flow, a datagram each 100 ms, each
    // answered (read by either flow's pump: they share the socket).
    for _ in 0..30 {
        new.send_to(&d, wan_u).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(2), new.recv_from(&mut buf)).await;
        assert!(got.is_ok(), "the new flow is answered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let open = p.metric("local_proxy_udp_flows_active", &[("stream", "tu")]).await;
    assert_eq!(open, 1.0, "the old flow is still open after 3 s of the new one's traffic (idle_timeout 1 s)");
}
