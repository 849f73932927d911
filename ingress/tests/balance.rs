//! Balancing under a real traffic mix on loopback: long-lived idle TCP connections and idle
//! UDP flows sitting on wan1 must not bend the shares of new short connections (the 25/75
//! split on equal weights that the least-loaded pick used to give).

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpStream, UdpSocket};

fn mixed_config(wan1: std::net::SocketAddr, wan2: std::net::SocketAddr, weights: (u32, u32)) -> String {
    // Metrics are process-wide and tests run in parallel: names of their own.
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    format!(
        r#"
[admin]
listen = "127.0.0.1:0"
[pool.mix{n}]
paths = [{{ name = "wan1", address = "{wan1}", weight = {} }}, {{ name = "wan2", address = "{wan2}", weight = {} }}]
health = {{ interval = "100ms", timeout = "100ms", rise = 2, fall = 2 }}
[[service]]
name = "mix-tcp{n}"
listen = ["127.0.0.1:0"]
pool = "mix{n}"
[[service]]
name = "mix-udp{n}"
listen = ["127.0.0.1:0"]
protocol = "udp"
pool = "mix{n}"
idle_timeout = "60s"
"#,
        weights.0, weights.1
    )
}

/// Open TCP connections until `want` of them sit on wan1; keep those, close the rest.
async fn hold_tcp_on_wan1(addr: std::net::SocketAddr, want: usize) -> Vec<TcpStream> {
    let mut held = Vec::new();
    for _ in 0..50 {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        let mut line = [0u8; 5];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut line)).await.expect("name").expect("name");
        if &line == b"wan1\n" {
            held.push(s);
            if held.len() == want {
                return held;
            }
        }
    }
    panic!("fewer than {want} TCP connections landed on wan1 in 50 tries");
}

/// Open UDP flows until `want` of them sit on wan1.
async fn hold_udp_on_wan1(addr: std::net::SocketAddr, want: usize) -> Vec<UdpSocket> {
    let mut held = Vec::new();
    for _ in 0..50 {
        let c = UdpSocket::bind("127.0.0.1:0").await.expect("client");
        c.connect(addr).await.expect("connect");
        c.send(b"hi").await.expect("send");
        let mut buf = [0u8; 64];
        let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(500), c.recv(&mut buf)).await else { continue };
        if buf[..n].starts_with(b"wan1:") {
            held.push(c);
            if held.len() == want {
                return held;
            }
        }
    }
    panic!("fewer than {want} UDP flows landed on wan1 in 50 tries");
}

async fn share_with_idle_load_on_wan1(weights: (u32, u32)) -> f64 {
    let wan1 = Backend::start("wan1", "127.0.0.2").await;
    let wan2 = Backend::start("wan2", "127.0.0.3").await;
    let _u1 = UdpEcho::start("wan1", wan1.addr).await;
    let _u2 = UdpEcho::start("wan2", wan2.addr).await;
    let server = start(&mixed_config(wan1.addr, wan2.addr, weights)).await;
    let pool = pool_name(&server);
    let n = pool.trim_start_matches("mix");
    let tcp = service_addr(&server, &format!("mix-tcp{n}")).await;
    let udp = service_addr(&server, &format!("mix-udp{n}")).await;

    let _conns = hold_tcp_on_wan1(tcp, 2).await;
    let _flows = hold_udp_on_wan1(udp, 2).await;
    let m = metrics(&server).await;
    let labels = [("pool", pool.as_str()), ("path", "wan1")];
    assert_eq!(metric(&m, "ingress_path_active_connections", &labels), 2.0, "two idle TCP connections on wan1");
    assert_eq!(metric(&m, "ingress_path_active_flows", &labels), 2.0, "two idle UDP flows on wan1");

    const N: usize = 2000;
    let mut names = Vec::with_capacity(N);
    for _ in 0..N {
        names.push(request(tcp).await.expect("request"));
    }
    let t = tally(&names);
    let share = t.get("wan1").copied().unwrap_or(0) as f64 / N as f64;
    let m = metrics(&server).await;
    let factor = |p: &str| metric(&m, "ingress_path_health_factor", &[("pool", pool.as_str()), ("path", p)]);
    println!(
        "RESULT weights {weights:?}, 2 idle TCP + 2 idle UDP flows on wan1: wan1 share {share:.3} of {N} \
         (health factors {:.2} / {:.2})",
        factor("wan1"),
        factor("wan2")
    );
    share
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn equal_weights_split_evenly_despite_idle_connections_and_flows() {
    let share = share_with_idle_load_on_wan1((1, 1)).await;
    assert!((share - 0.5).abs() <= 0.03, "wan1 share {share}, want 0.50 ± 0.03");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_to_one_splits_three_to_one_despite_idle_connections_and_flows() {
    let share = share_with_idle_load_on_wan1((3, 1)).await;
    assert!((share - 0.75).abs() <= 0.03, "wan1 share {share}, want 0.75 ± 0.03");
}
