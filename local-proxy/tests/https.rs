//! TLS termination and HTTP proxying with real clients: SNI selection (openssl s_client),
//! h2 and http/1.1 (curl), headers seen by the upstream, WebSocket echo, live renewal.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;

struct Setup {
    _dir: tempfile::TempDir,
    ca: Ca,
    live: std::path::PathBuf,
    proxy: Proxy,
}

/// a.test and b.test from a certbot dir, c.test from explicit files; sites for each.
async fn setup(extra_sites: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path());
    let live = dir.path().join("live");
    ca.certbot(&live, "a.test", &["a.test", "www.a.test"], "a.test");
    ca.certbot(&live, "b.test", &["b.test"], "b.test");
    let (chain, key) = ca.leaf(&["c.test"], "c.test");
    std::fs::write(dir.path().join("c.pem"), chain).unwrap();
    std::fs::write(dir.path().join("c.key"), key).unwrap();
    let up_a = echo_upstream("a").await;
    let up_b = echo_upstream("b").await;
    let text = base_config(&format!(
        r#"
[tls]
certbot_live_dir = "{live}"
reload_interval = "100ms"
[[tls.certificate]]
cert = "{dir}/c.pem"
key = "{dir}/c.key"
[[site]]
host = "a.test"
aliases = ["www.a.test"]
upstream = "http://{up_a}"
block_scanners = true
[[site]]
host = "b.test"
upstream = "http://{up_b}"
header_sets = []
response_headers = {{ Server = "", X-Site = "b" }}
[[site]]
host = "c.test"
upstream = "http://{up_b}"
{extra_sites}
"#,
        live = live.display(),
        dir = dir.path().display(),
    ));
    let proxy = Proxy::start(&text).await;
    Setup { _dir: dir, ca, live, proxy }
}

async fn s_client(addr: SocketAddr, name: &str, ca: &std::path::Path) -> (String, bool) {
    let connect = addr.to_string();
    let ca = ca.display().to_string();
    let out = run_tool(
        "openssl",
        &["s_client", "-connect", &connect, "-servername", name, "-CAfile", &ca, "-verify_return_error", "-brief"],
        b"",
    )
    .await;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (text, out.status.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_picks_the_certificate_and_unknown_names_fail_cleanly() {
    let s = setup("").await;
    for name in ["a.test", "www.a.test", "b.test", "c.test"] {
        let (out, ok) = s_client(s.proxy.mesh_https, name, &s.ca.pem_path).await;
        assert!(ok, "{name}: {out}");
        let cn = served_cn(s.proxy.mesh_https, name, &s.ca.pem_path).await;
        let want = if name == "www.a.test" { "a.test" } else { name };
        assert_eq!(cn.as_deref(), Some(want), "{name}");
    }
    let before = s
        .proxy
        .metric("local_proxy_tls_handshakes_total", &[("listener", "mesh-https"), ("result", "unknown_sni")])
        .await;
    let (out, ok) = s_client(s.proxy.mesh_https, "nobody.test", &s.ca.pem_path).await;
    assert!(!ok, "unknown name must fail: {out}");
    assert!(out.contains("alert") || out.contains("handshake failure"), "{out}");
    let after = s
        .proxy
        .metric("local_proxy_tls_handshakes_total", &[("listener", "mesh-https"), ("result", "unknown_sni")])
        .await;
    assert!(after >= before + 1.0, "unknown_sni counted: {before} -> {after}");
    // The proxy is still fine.
    assert!(s_client(s.proxy.mesh_https, "a.test", &s.ca.pem_path).await.1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_h2_and_http11_with_site_headers() {
    let s = setup("").await;
    let ca = &s.ca.pem_path;
    for (flag, version) in [("--http2", "2"), ("--http1.1", "1.1")] {
        let (out, err, ok) = curl(
            &[flag, "-D", "-", "-w", "\nversion=%{http_version}\n"],
            "a.test",
            s.proxy.mesh_https,
            ca,
            "/hello?x=1",
        )
        .await;
        assert!(ok, "{flag}: {err}");
        assert!(out.contains(&format!("version={version}")), "{flag}: {out}");
        assert!(out.contains("upstream: a"), "{out}");
        assert!(out.contains("path: /hello?x=1"), "{out}");
        assert!(out.contains("host: a.test"), "{out}");
        // The default security set.
        let lower = out.to_ascii_lowercase();
        assert!(lower.contains("strict-transport-security: max-age=31536000"), "{out}");
        assert!(lower.contains("x-content-type-options: nosniff"), "{out}");
        assert!(lower.contains("x-frame-options: sameorigin"), "{out}");
        assert!(lower.contains("referrer-policy:"), "{out}");
    }
    // b.test: no set, Server removed, X-Site added.
    let (out, _, ok) = curl(&["--http2", "-D", "-"], "b.test", s.proxy.mesh_https, ca, "/").await;
    assert!(ok);
    let lower = out.to_ascii_lowercase();
    assert!(lower.contains("x-site: b"), "{out}");
    assert!(!lower.contains("server: echo"), "{out}");
    assert!(!lower.contains("strict-transport-security"), "{out}");
    // Request bodies stream through (h2 and h1).
    let body_file = s._dir.path().join("body.bin");
    std::fs::write(&body_file, "x".repeat(200_000)).unwrap();
    let at_file = format!("@{}", body_file.display());
    for flag in ["--http2", "--http1.1"] {
        let (out, err, ok) =
            curl(&[flag, "--data-binary", &at_file], "a.test", s.proxy.mesh_https, ca, "/upload").await;
        assert!(ok, "{err}");
        assert!(out.contains("body-bytes: 200000"), "{out}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_sees_client_address_from_proxy_v2_and_mesh() {
    let s = setup("").await;
    let ca = &s.ca.pem_path;
    let client: SocketAddr = "198.51.100.7:40000".parse().unwrap();
    let front = ingress("127.0.0.2".parse().unwrap(), s.proxy.wan_https, client).await;
    let (out, err, ok) = curl(&["--http1.1"], "a.test", front, ca, "/who").await;
    assert!(ok, "{err}");
    assert!(out.contains("x-forwarded-for: 198.51.100.7\n"), "{out}");
    assert!(out.contains("x-real-ip: 198.51.100.7\n"), "{out}");
    assert!(out.contains("x-forwarded-proto: https\n"), "{out}");
    assert!(out.contains("x-forwarded-host: a.test\n"), "{out}");

    // A client's own X-Forwarded-For is not believed.
    let (out, _, ok) = curl(&["--http2", "-H", "X-Forwarded-For: 6.6.6.6"], "a.test", front, ca, "/who").await;
    assert!(ok);
    assert!(out.contains("x-forwarded-for: 198.51.100.7\n"), "{out}");

    // Mesh: the peer itself is the client.
    let (out, _, ok) = curl(&["--http2"], "a.test", s.proxy.mesh_https, ca, "/who").await;
    assert!(ok);
    assert!(out.contains("x-forwarded-for: 127.0.0.1\n"), "{out}");

    // The same PROXY header from a stranger (127.0.0.3) is refused and counted, while the
    // trusted path keeps working.
    let key = [("listener", "wan-https"), ("result", "untrusted")];
    let before = s.proxy.metric("local_proxy_connections_total", &key).await;
    let stranger = ingress("127.0.0.3".parse().unwrap(), s.proxy.wan_https, client).await;
    let (_, _, ok) = curl(&["--http1.1"], "a.test", stranger, ca, "/who").await;
    assert!(!ok, "stranger must be refused");
    let (_, _, ok) = curl(&["--http1.1"], "a.test", front, ca, "/who").await;
    assert!(ok);
    let after = s.proxy.metric("local_proxy_connections_total", &key).await;
    assert!(after >= before + 1.0, "untrusted counted: {before} -> {after}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo_through_the_proxy() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let ws_up = ws_upstream().await;
    let s = setup(&format!(
        "[[site]]\nhost = \"ws.test\"\nupstream = \"http://{ws_up}\"\nresponse_headers = {{ X-Site = \"ws\" }}\n"
    ))
    .await;
    // ws.test has no certificate of its own: add one to the certbot dir and wait for it.
    s.ca.certbot(&s.live, "ws.test", &["ws.test"], "ws.test");
    let ca = s.ca.pem_path.clone();
    let addr = s.proxy.mesh_https;
    wait_until(Duration::from_secs(10), "ws.test certificate", || {
        let ca = ca.clone();
        async move { served_cn(addr, "ws.test", &ca).await.as_deref() == Some("ws.test") }
    })
    .await;

    // The certificate checks' connections have left.
    let active = [("listener", "mesh-https")];
    let gauge = "local_proxy_connections_active";
    wait_until(Duration::from_secs(5), "no connection open", || async { s.proxy.metric(gauge, &active).await == 0.0 })
        .await;

    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = tls_over(tcp, "ws.test", &ca).await.unwrap();
    let (mut ws, resp) = tokio_tungstenite::client_async("wss://ws.test/socket", tls).await.unwrap();
    assert_eq!(resp.status(), 101);
    // The site's response rules apply to the switch's answer too, as to every other.
    assert_eq!(resp.headers().get("x-site").map(|v| v.as_bytes()), Some(&b"ws"[..]), "{:?}", resp.headers());
    for i in 0..5 {
        let msg = format!("hello {i}");
        ws.send(Message::text(msg.clone())).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), ws.next()).await.unwrap().unwrap().unwrap();
        assert_eq!(got.into_text().unwrap().as_str(), msg);
    }
    let big = vec![7u8; 300_000];
    ws.send(Message::binary(big.clone())).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), ws.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(got.into_data().len(), big.len());
    // The tunnel is still a connection: it holds its place under http.max_connections (the
    // same slot as the gauge) until it closes.
    assert_eq!(s.proxy.metric(gauge, &active).await, 1.0, "the open tunnel counts as a connection");
    ws.close(None).await.unwrap();
    drop(ws);
    wait_until(Duration::from_secs(5), "the tunnel's slot given back", || async {
        s.proxy.metric(gauge, &active).await == 0.0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewed_certificate_is_served_without_restart() {
    let s = setup("").await;
    let ca = s.ca.pem_path.clone();
    let addr = s.proxy.mesh_https;
    assert_eq!(served_cn(addr, "b.test", &ca).await.as_deref(), Some("b.test"));
    s.ca.certbot(&s.live, "b.test", &["b.test"], "b.test renewed");
    wait_until(Duration::from_secs(10), "renewed b.test certificate", || {
        let ca = ca.clone();
        async move { served_cn(addr, "b.test", &ca).await.as_deref() == Some("b.test renewed") }
    })
    .await;
    // A broken renewal (key of another certificate) keeps the good one.
    let (_, other_key) = s.ca.leaf(&["b.test"], "other");
    std::fs::write(s.live.join("b.test/privkey.pem"), other_key).unwrap();
    // Give the poller a few rounds (100ms each) to see and refuse it.
    let before = s.proxy.metric("local_proxy_certificate_loads_total", &[("result", "failed")]).await;
    wait_until(Duration::from_secs(10), "refused mismatched key", || async {
        s.proxy.metric("local_proxy_certificate_loads_total", &[("result", "failed")]).await > before
    })
    .await;
    assert_eq!(served_cn(addr, "b.test", &ca).await.as_deref(), Some("b.test renewed"));
}
