//! Property: a config that validation accepts starts and serves (one proxied HTTP request and
//! one TCP stream round trip through the mesh listener), and nothing panics on the way.
//!
//! Knobs come from each field's documented range (`local_proxy::config::ranges`), its edges,
//! just outside, and absurd values (10^19 s overflowed instants at run time before issue 17).
//! The `[firewall]` section is validated by its own tests: starting it would program this
//! host's nftables.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use local_proxy::config::{self, ranges};
use local_proxy::listeners::Origin;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use shared::ports::DurationRange;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A duration field: absent, inside its range, on an edge, just outside, or absurd.
fn duration(range: DurationRange) -> impl Strategy<Value = Option<String>> {
    let (min, max) = (range.min.as_millis() as u64, range.max.as_millis() as u64);
    prop_oneof![
        3 => Just(None),
        6 => (min..=max).prop_map(|v| Some(format!("{v}ms"))),
        1 => Just(Some(format!("{min}ms"))),
        1 => Just(Some(format!("{max}ms"))),
        1 => prop_oneof![
            Just(format!("{}us", min * 1000 - 1)),
            Just(format!("{}ms", max + 1)),
            Just("0s".to_string()),
            Just("1ns".to_string()),
            Just("10000000000000000000s".to_string()),
        ]
        .prop_map(Some),
    ]
}

#[derive(Debug, Clone)]
struct Knobs {
    proxy_header_timeout: Option<String>,
    tls_handshake_timeout: Option<String>,
    header_read_timeout: Option<String>,
    idle_timeout: Option<String>,
    upstream_connect_timeout: Option<String>,
    upstream_timeout: Option<String>,
    reload_interval: Option<String>,
    max_connections: Option<u64>,
    max_header_bytes: Option<u64>,
    stream_connect_timeout: Option<String>,
    stream_idle_timeout: Option<String>,
    /// How the site's upstream port is written: the real one, or a broken variant.
    upstream_port: &'static str,
    /// How the trusted ingress address is written.
    trusted: &'static str,
}

fn knobs() -> impl Strategy<Value = Knobs> {
    let http = (
        duration(ranges::PROXY_HEADER_TIMEOUT),
        duration(ranges::TLS_HANDSHAKE_TIMEOUT),
        duration(ranges::HEADER_READ_TIMEOUT),
        duration(ranges::IDLE_TIMEOUT),
        duration(ranges::CONNECT_TIMEOUT),
        duration(ranges::UPSTREAM_TIMEOUT),
        duration(ranges::RELOAD_INTERVAL),
    );
    let counts = (
        prop_oneof![3 => Just(None), 3 => (1u64..=1_000_000).prop_map(Some), 1 => Just(Some(0u64)), 1 => Just(Some(1_000_001u64))],
        prop_oneof![3 => Just(None), 3 => (8192u64..=1_048_576).prop_map(Some), 1 => Just(Some(8191u64)), 1 => Just(Some(1_048_577u64))],
    );
    let stream = (duration(ranges::CONNECT_TIMEOUT), duration(ranges::IDLE_TIMEOUT));
    let addresses = (
        prop_oneof![8 => Just("real"), 1 => Just(":0"), 1 => Just(":70000"), 1 => Just(":65536")],
        prop_oneof![6 => Just("127.0.0.2"), 1 => Just("[::1]"), 1 => Just("[::1"), 1 => Just("::1]")],
    );
    (http, counts, stream, addresses).prop_map(|(h, c, s, a)| Knobs {
        proxy_header_timeout: h.0,
        tls_handshake_timeout: h.1,
        header_read_timeout: h.2,
        idle_timeout: h.3,
        upstream_connect_timeout: h.4,
        upstream_timeout: h.5,
        reload_interval: h.6,
        max_connections: c.0,
        max_header_bytes: c.1,
        stream_connect_timeout: s.0,
        stream_idle_timeout: s.1,
        upstream_port: a.0,
        trusted: a.1,
    })
}

fn line(key: &str, v: &Option<String>) -> String {
    v.as_ref().map(|v| format!("{key} = \"{v}\"\n")).unwrap_or_default()
}

fn number(key: &str, v: Option<u64>) -> String {
    v.map(|v| format!("{key} = {v}\n")).unwrap_or_default()
}

/// Mesh listener on 127.0.0.4 (no PROXY header needed), WAN on 127.0.0.1, ephemeral ports.
fn config_text(k: &Knobs, upstream: std::net::SocketAddr, echo: std::net::SocketAddr) -> String {
    let up = match k.upstream_port {
        "real" => upstream.to_string(),
        broken => format!("{}{broken}", upstream.ip()),
    };
    format!(
        "[wan]\naddresses = [\"127.0.0.1\"]\ntrusted_ingress = [\"{}\"]\n{}\
         [mesh]\nlisten = \"127.0.0.4\"\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\
         [http]\nhttps_port = 0\nhttp_port = 0\nredirect_to_https = false\n{}{}{}{}{}{}{}\
         [tls]\n{}\
         [[site]]\nhost = \"a.test\"\nupstream = \"http://{up}\"\n\
         [[stream]]\nname = \"echo\"\nlisten = \"0/tcp\"\nupstream = \"{echo}\"\n{}{}",
        k.trusted,
        line("proxy_header_timeout", &k.proxy_header_timeout),
        line("tls_handshake_timeout", &k.tls_handshake_timeout),
        line("header_read_timeout", &k.header_read_timeout),
        line("idle_timeout", &k.idle_timeout),
        line("upstream_connect_timeout", &k.upstream_connect_timeout),
        line("upstream_timeout", &k.upstream_timeout),
        number("max_connections", k.max_connections),
        number("max_header_bytes", k.max_header_bytes),
        line("reload_interval", &k.reload_interval),
        line("connect_timeout", &k.stream_connect_timeout),
        line("idle_timeout", &k.stream_idle_timeout),
    )
}

/// A TCP echo backend for the stream forward.
async fn tcp_echo() -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

async fn case(k: Knobs) -> Result<(), TestCaseError> {
    let upstream = echo_upstream("a").await;
    let echo = tcp_echo().await;
    let text = config_text(&k, upstream, echo);
    if let Err(e) = config::from_toml_str(&text) {
        // Refused: fine, as long as it says why.
        prop_assert!(!e.to_string().is_empty());
        return Ok(());
    }
    let proxy = Proxy::start(&text).await;
    // One proxied HTTP request on the mesh side (no PROXY header there).
    let mut s = TcpStream::connect(proxy.mesh_http).await.unwrap();
    let (status, body) = raw_get(&mut s, "a.test", "/prop").await;
    prop_assert_eq!(status, 200, "config:\n{}\nanswer:\n{}", text, body);
    prop_assert!(body.contains("upstream: a"), "{}", body);
    // One stream round trip.
    let addr = proxy.listeners_tcp[&(Origin::Mesh, "echo".to_string())];
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).await.unwrap();
    prop_assert_eq!(&buf, b"ping");
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn accepted_configs_start_and_serve(k in knobs()) {
        // A fresh runtime per case: dropping it ends every task the proxy spawned.
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let result = rt.block_on(async { tokio::time::timeout(Duration::from_secs(20), case(k)).await });
        rt.shutdown_background();
        result.map_err(|_| TestCaseError::fail("case timed out"))??;
    }
}

/// The generator reaches both sides: a fair share of accepted and of refused configs.
#[test]
fn generator_accepts_some_and_refuses_some() {
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let mut accepted = 0;
    for _ in 0..200 {
        let k = knobs().new_tree(&mut runner).unwrap().current();
        let text = config_text(&k, "127.0.0.1:9".parse().unwrap(), "127.0.0.1:7".parse().unwrap());
        accepted += usize::from(config::from_toml_str(&text).is_ok());
    }
    assert!((20..180).contains(&accepted), "{accepted} of 200 generated configs accepted");
}
