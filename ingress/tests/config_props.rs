//! Property: a config that validation accepts starts and serves a connection, and nothing
//! panics on the way (neither validation on any value, nor the running server on the edge
//! values of every range: the overflow panics of issue 17 came from accepted values).
//!
//! Knobs are drawn from each field's documented range (`ingress::config::ranges`), its edges,
//! just outside them, and absurd values; accepted configs are started in-process on a fresh
//! runtime and one echo round trip goes through. Bounded to a few seconds of cases.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::Backend;
use ingress::config::ranges;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use shared::ports::DurationRange;

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

/// A count field: absent, inside 1..=max, on an edge or outside.
fn count(max: u32) -> impl Strategy<Value = Option<u64>> {
    prop_oneof![
        3 => Just(None),
        4 => (1..=u64::from(max)).prop_map(Some),
        1 => prop_oneof![Just(0u64), Just(1), Just(u64::from(max)), Just(u64::from(max) + 1)].prop_map(Some),
    ]
}

/// A port: absent, ordinary, edges, zero or out of range.
fn port() -> impl Strategy<Value = Option<u32>> {
    prop_oneof![
        4 => Just(None),
        2 => (1u32..=65535).prop_map(Some),
        1 => prop_oneof![Just(0u32), Just(1), Just(65535), Just(65536), Just(70000)].prop_map(Some),
    ]
}

#[derive(Debug, Clone)]
struct Knobs {
    drain_timeout: Option<String>,
    max_connections: Option<u64>,
    paths: usize,
    mesh: bool,
    weight: u32,
    connect_timeout: Option<String>,
    final_connect_timeout: Option<String>,
    max_attempts: u32,
    interval: Option<String>,
    timeout: Option<String>,
    rise: u32,
    fall: u32,
    health_port: Option<u32>,
    check: &'static str,
    idle_timeout: Option<String>,
    service_max_connections: Option<u64>,
    upstream_port: Option<u32>,
    proxy_protocol: bool,
}

fn knobs() -> impl Strategy<Value = Knobs> {
    let limits = (duration(ranges::DRAIN_TIMEOUT), count(ranges::MAX_COUNT));
    let pool = (
        prop_oneof![6 => 1usize..=3, 1 => 30usize..=34],
        any::<bool>(),
        prop_oneof![4 => 1u32..=1000, 1 => Just(0u32), 1 => Just(1001u32)],
        duration(ranges::CONNECT_TIMEOUT),
        duration(ranges::FINAL_CONNECT_TIMEOUT),
        prop_oneof![4 => 1u32..=10, 1 => Just(0u32), 1 => Just(11u32)],
    );
    let health = (
        duration(ranges::HEALTH_INTERVAL),
        duration(ranges::HEALTH_TIMEOUT),
        prop_oneof![4 => 1u32..=100, 1 => Just(0u32), 1 => Just(101u32)],
        prop_oneof![4 => 1u32..=100, 1 => Just(0u32)],
        port(),
        prop_oneof![Just("tcp"), Just("proxy-v2")],
    );
    let service = (duration(ranges::IDLE_TIMEOUT), count(ranges::MAX_COUNT), port(), any::<bool>());
    (limits, pool, health, service).prop_map(|(l, p, h, s)| Knobs {
        drain_timeout: l.0,
        max_connections: l.1,
        paths: p.0,
        mesh: p.1,
        weight: p.2,
        connect_timeout: p.3,
        final_connect_timeout: p.4,
        max_attempts: p.5,
        interval: h.0,
        timeout: h.1,
        rise: h.2,
        fall: h.3,
        health_port: h.4,
        check: h.5,
        idle_timeout: s.0,
        service_max_connections: s.1,
        upstream_port: s.2,
        proxy_protocol: s.3,
    })
}

/// `key = "value"` lines for the fields that are set.
fn lines(fields: &[(&str, Option<String>)]) -> String {
    fields.iter().filter_map(|(k, v)| v.as_ref().map(|v| format!("{k} = {v}\n"))).collect()
}

fn quoted(v: &Option<String>) -> Option<String> {
    v.as_ref().map(|v| format!("\"{v}\""))
}

/// The config text: every path (and the mesh tier) leads to the one backend.
fn config_text(k: &Knobs, backend: std::net::SocketAddr, pool: &str) -> String {
    let paths: Vec<String> = (0..k.paths)
        .map(|i| format!("{{ name = \"p{i}\", address = \"{backend}\", weight = {} }}", k.weight))
        .collect();
    let health = lines(&[
        ("interval", quoted(&k.interval)),
        ("timeout", quoted(&k.timeout)),
        ("rise", Some(k.rise.to_string())),
        ("fall", Some(k.fall.to_string())),
        ("port", k.health_port.map(|p| p.to_string())),
        ("check", Some(format!("\"{}\"", k.check))),
    ]);
    format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[limits]\n{}[pool.{pool}]\npaths = [{}]\n{}{}[pool.{pool}.health]\n{}\
         [[service]]\nname = \"echo\"\nlisten = [\"127.0.0.1:0\"]\npool = \"{pool}\"\n{}",
        lines(&[
            ("drain_timeout", quoted(&k.drain_timeout)),
            ("max_connections", k.max_connections.map(|n| n.to_string()))
        ]),
        paths.join(", "),
        if k.mesh { format!("mesh = \"{backend}\"\n") } else { String::new() },
        lines(&[
            ("connect_timeout", quoted(&k.connect_timeout)),
            ("final_connect_timeout", quoted(&k.final_connect_timeout)),
            ("max_attempts", Some(k.max_attempts.to_string())),
        ]),
        health,
        lines(&[
            ("idle_timeout", quoted(&k.idle_timeout)),
            ("max_connections", k.service_max_connections.map(|n| n.to_string())),
            ("upstream_port", k.upstream_port.map(|p| p.to_string())),
            ("proxy_protocol", Some(if k.proxy_protocol { "\"v2\"" } else { "\"none\"" }.to_string())),
        ]),
    )
}

static CASES: AtomicUsize = AtomicUsize::new(0);

async fn case(k: Knobs) -> Result<(), TestCaseError> {
    let backend = Backend::start("backend", "127.0.0.1").await;
    // Metrics are process-wide: a fresh pool name per case keeps the series apart.
    let pool = format!("prop{}", CASES.fetch_add(1, Ordering::Relaxed));
    let text = config_text(&k, backend.addr, &pool);
    let config = match ingress::Config::from_toml(&text) {
        Ok(c) => c,
        Err(e) => {
            // Refused: fine, as long as the refusal says what and where.
            prop_assert!(!e.problems.is_empty(), "refused without a reason:\n{text}");
            return Ok(());
        }
    };
    let drain = config.drain_timeout;
    let server = ingress::Server::start(config).await;
    let addr = common::service_addr(&server, "echo").await;
    let got = common::request(addr).await;
    prop_assert_eq!(got.as_deref(), Ok("backend"), "config:\n{}", text);
    // Drain with the configured bound (no connection left: returns at once, but computes
    // the deadline from the configured value).
    prop_assert_eq!(server.drain(drain).await, 0);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn accepted_configs_start_and_serve(k in knobs()) {
        // A fresh runtime per case: dropping it ends every task the server spawned.
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
        let text = config_text(&k, "127.0.0.1:9".parse().unwrap(), "gen");
        accepted += usize::from(ingress::Config::from_toml(&text).is_ok());
    }
    assert!((20..180).contains(&accepted), "{accepted} of 200 generated configs accepted");
}
