//! The access log behind the real ingress: the `ingress` binary (SNI passthrough for HTTPS,
//! Host routing for HTTP, PROXY v2 on both) in front of the `local-proxy` binary, on loopback.
//! A client bound to 127.0.0.7 reaches the ingress; the ingress connects to the local proxy
//! from 127.0.0.1 (its trusted ingress); every access log line names 127.0.0.7 and the
//! client's own port, never the ingress.
//!
//! The ingress binary is the workspace's (`cargo test --workspace` builds it beside this
//! crate's binary; `cargo build -p ingress` first when running this crate alone), or the one
//! `INGRESS_BIN` names.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The client's own address (the ingress connects from 127.0.0.1, the default source).
const CLIENT: &str = "127.0.0.7";

fn ingress_bin() -> PathBuf {
    let bin = std::env::var_os("INGRESS_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_BIN_EXE_local-proxy")).with_file_name("ingress"));
    assert!(
        bin.exists(),
        "{} not found: build the ingress first (cargo build -p ingress) or set INGRESS_BIN",
        bin.display()
    );
    bin
}

/// The ingress binary, killed on drop; its stderr in `dir/ingress.stderr`.
struct Ingress {
    _child: tokio::process::Child,
    stderr: PathBuf,
}

impl Ingress {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

fn start_ingress(dir: &Path, https: u16, http: u16, lp_https: u16, lp_http: u16) -> Ingress {
    let config = dir.join("ingress.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[pool.home]
paths = [{{ name = "wan", address = "127.0.0.1" }}]
health = {{ port = {lp_https}, check = "proxy-v2", interval = "200ms", down_interval = "100ms", rise = 1 }}

[[service]]
name = "https"
listen = ["127.0.0.1:{https}"]
mode = "sni"
pool = "home"
proxy_protocol = "v2"
upstream_port = {lp_https}

[[service]]
name = "http"
listen = ["127.0.0.1:{http}"]
mode = "http"
pool = "home"
proxy_protocol = "v2"
upstream_port = {lp_http}
"#
        ),
    )
    .unwrap();
    let stderr = dir.join("ingress.stderr");
    let child = spawn_with_config(&ingress_bin(), &config, &stderr);
    Ingress { _child: child, stderr }
}

/// A GET from `from` through the ingress's HTTP service: (status, the client's local port).
async fn get_from(from: IpAddr, to: SocketAddr, path: &str) -> (u16, u16) {
    let mut s = connect_from(from, to).await;
    let port = s.local_addr().unwrap().port();
    let req = format!("GET {path} HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await.expect("answer within 10s").unwrap();
    let text = String::from_utf8_lossy(&out);
    (text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0), port)
}

fn lines(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let whole = text.rfind('\n').map(|i| &text[..=i]).unwrap_or("");
    whole.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_name_the_client_behind_the_ingress() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = Ca::new(tmp.path());
    let live = tmp.path().join("live");
    ca.certbot(&live, "a.test", &["a.test"], "a.test");
    let up = echo_upstream("a").await;
    let log = tmp.path().join("access.log");
    let proxy = spawn_binary_trusting(
        tmp.path(),
        &live,
        "127.0.0.1",
        &format!(r#"access_log = {{ path = "{}" }}"#, log.display()),
        &format!("[[site]]\nhost = \"a.test\"\nupstream = \"http://{up}\"\n"),
    )
    .await;
    let (lp_https, lp_http) = (proxy.mesh_https.port(), proxy.wan_http.port());
    let (https, http) = (free_port(), free_port());
    let ingress = start_ingress(tmp.path(), https, http, lp_https, lp_http);
    let (ingress_https, ingress_http): (SocketAddr, SocketAddr) =
        (format!("127.0.0.1:{https}").parse().unwrap(), format!("127.0.0.1:{http}").parse().unwrap());
    let client: IpAddr = CLIENT.parse().unwrap();

    // The ingress is serving once a request through it is answered (bounded: 50 tries, 10 s).
    let mut ready = None;
    for i in 0..50 {
        if tokio::net::TcpStream::connect(ingress_http).await.is_ok() {
            let (status, port) = get_from(client, ingress_http, &format!("/ready/{i}")).await;
            if status == 200 {
                ready = Some(port);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(ready.is_some(), "no answer through the ingress in 10 s; its log:\n{}", ingress.log());

    // HTTP through the ingress's Host routing.
    let (status, http_port) = get_from(client, ingress_http, "/plain").await;
    assert_eq!(status, 200);
    // HTTPS (h2) through its SNI passthrough; curl binds the client address too.
    let (out, err, ok) = curl(
        &["--http2", "--interface", CLIENT, "-A", "curl-via-ingress"],
        "a.test",
        ingress_https,
        &ca.pem_path,
        "/tls",
    )
    .await;
    assert!(ok && out.contains("upstream: a"), "{err}{out}\ningress log:\n{}", ingress.log());
    // What the upstream was told: X-Forwarded-For names the client too.
    assert!(out.contains(&format!("x-forwarded-for: {CLIENT}")), "{out}");

    let l = log.clone();
    wait_until(Duration::from_secs(10), "both lines", || {
        let l = l.clone();
        async move { lines(&l).iter().filter(|x| x["uri"] == "/plain" || x["uri"] == "/tls").count() == 2 }
    })
    .await;
    let all = lines(&log);
    let line = |uri: &str| all.iter().find(|l| l["uri"] == uri).cloned().unwrap();
    let plain = line("/plain");
    println!("{plain}");
    assert_eq!(plain["client"], CLIENT, "{plain}");
    assert_eq!(plain["client_port"], http_port, "{plain}");
    assert_eq!((plain["proto"].as_str(), plain["status"].as_u64()), (Some("HTTP/1.1"), Some(200)));
    assert_eq!(plain["tls_version"], Value::Null);
    let tls = line("/tls");
    println!("{tls}");
    assert_eq!(tls["client"], CLIENT, "{tls}");
    assert!(tls["client_port"].as_u64().is_some_and(|p| p > 0));
    assert_eq!((tls["proto"].as_str(), tls["status"].as_u64()), (Some("HTTP/2"), Some(200)));
    assert_eq!(tls["tls_sni"], "a.test");
    assert_eq!(tls["user_agent"], "curl-via-ingress");
    // Every line through the ingress, the readiness probes included, names the client.
    for l in &all {
        assert_eq!(l["client"], CLIENT, "{l}");
    }
}
