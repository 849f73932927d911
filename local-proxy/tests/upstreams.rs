//! Several upstreams per site and stream, against real nginx instances as the LAN replicas
//! (loopback, ephemeral ports): weighted shares and a SIGHUP that changes them under load,
//! a replica killed and restarted under 300 req/s of GETs (no failed GET; down and back by
//! the health checks), a POST that dies with its upstream (502, not replayed), a hanging
//! replica (504, counted), a replica with a certificate nobody signed (down, with the reason
//! in the log), a TCP stream with one refusing upstream, and a critical site that takes the
//! proxy's own health with it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::{closed_port, echo_upstream, metric_value, wait_until, Ca, Proxy};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use local_proxy::config;
use local_proxy::listeners::Origin;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio::time::Instant;

const NGINX: &str = "/usr/sbin/nginx";

/// One nginx replica on 127.0.0.1:`port` answering `GET /` with its name and `/health`
/// with 200; killed on drop.
struct Nginx {
    child: Option<Child>,
    dir: PathBuf,
    port: u16,
}

impl Nginx {
    /// `tls`: (certificate chain, key) PEM files to serve HTTPS with.
    async fn start(dir: &Path, name: &str, port: u16, tls: Option<(&Path, &Path)>) -> Nginx {
        Self::start_with(dir, name, port, tls, 200).await
    }

    /// As `start`, with `GET /` answering `status`.
    async fn start_with(dir: &Path, name: &str, port: u16, tls: Option<(&Path, &Path)>, status: u16) -> Nginx {
        let dir = dir.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let listen = match tls {
            None => format!("listen 127.0.0.1:{port};"),
            Some((cert, key)) => format!(
                "listen 127.0.0.1:{port} ssl; ssl_certificate {}; ssl_certificate_key {};",
                cert.display(),
                key.display()
            ),
        };
        let d = dir.display();
        let conf = format!(
            r#"daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log {d}/access.log;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    keepalive_requests 100000;
    server {{
        {listen}
        location / {{ return {status} "{name}\n"; }}
        location /health {{ return 200 "ok\n"; }}
    }}
}}
"#
        );
        std::fs::write(dir.join("nginx.conf"), conf).unwrap();
        let mut n = Nginx { child: None, dir, port };
        n.spawn().await;
        n
    }

    async fn spawn(&mut self) {
        let conf = self.dir.join("nginx.conf");
        let child = Command::new(NGINX)
            .args(["-p", &self.dir.display().to_string(), "-c", &conf.display().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("nginx is required for this test ({e}); apt-get install -y nginx-light"));
        self.child = Some(child);
        let addr: SocketAddr = format!("127.0.0.1:{}", self.port).parse().unwrap();
        wait_until(
            Duration::from_secs(10),
            "nginx listening",
            || async move { TcpStream::connect(addr).await.is_ok() },
        )
        .await;
    }

    /// SIGKILL: the replica dies with whatever it was doing.
    async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().await.unwrap();
        }
    }

    fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("access.log")).unwrap_or_default()
    }

    /// Lines of the access log containing `pat`, once there are `want` of them or 2 s have
    /// passed: nginx logs a request after its response has gone, so the last line may come a
    /// moment after the client has its answer.
    async fn logged(&self, pat: &str, want: usize) -> usize {
        let mut n = 0;
        for _ in 0..100 {
            n = self.access_log().lines().filter(|l| l.contains(pat)).count();
            if n >= want {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        n
    }
}

use test_support::free_port;

/// Plain HTTP on the mesh side (no PROXY header), no redirect; `site` appended.
fn config_text(site: &str) -> String {
    format!(
        r#"
[admin]
listen = "127.0.0.1:0"
[wan]
addresses = ["127.0.0.1"]
trusted_ingress = ["127.0.0.2"]
[mesh]
listen = "127.0.0.4"
[http]
https_port = 0
http_port = 0
redirect_to_https = false
upstream_timeout = "1s"
upstream_connect_timeout = "500ms"
{site}
"#
    )
}

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// One request through the proxy: (status, body).
async fn request(c: &HttpClient, proxy: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let req = http::Request::builder()
        .method(method)
        .uri(format!("http://{proxy}{path}"))
        .header("host", "app.example.org")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    match tokio::time::timeout(Duration::from_secs(10), c.request(req)).await {
        Ok(Ok(resp)) => {
            let status = resp.status().as_u16();
            let body = resp.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            (status, String::from_utf8_lossy(&body).trim().to_string())
        }
        _ => (0, String::new()),
    }
}

async fn shares(c: &HttpClient, proxy: SocketAddr, n: usize) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for _ in 0..n {
        let (status, body) = request(c, proxy, "GET", "/", "").await;
        assert_eq!(status, 200, "{body}");
        *seen.entry(body).or_insert(0) += 1;
    }
    seen
}

/// Steady GETs at `rate` per second until `stop`; returns (ok, failed) counters.
fn load(proxy: SocketAddr, rate: u64, stop: Arc<std::sync::atomic::AtomicBool>) -> (Arc<AtomicU64>, Arc<AtomicU64>) {
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let (o, f) = (ok.clone(), failed.clone());
    tokio::spawn(async move {
        let c = client();
        let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
        while !stop.load(Ordering::Relaxed) {
            tick.tick().await;
            let (c, o, f) = (c.clone(), o.clone(), f.clone());
            tokio::spawn(async move {
                let (status, body) = request(&c, proxy, "GET", "/", "").await;
                if status == 200 {
                    o.fetch_add(1, Ordering::Relaxed);
                } else {
                    eprintln!("failed GET: {status} {body}");
                    f.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    });
    (ok, failed)
}

fn two_replicas(a: u16, b: u16, weights: (u32, u32), health: &str) -> String {
    config_text(&format!(
        r#"
[[site]]
host = "app.example.org"
upstream = [{{ url = "http://127.0.0.1:{a}", weight = {} }}, {{ url = "http://127.0.0.1:{b}", weight = {} }}]
header_sets = []
{health}
"#,
        weights.0, weights.1
    ))
}

/// The binary, as deployed: weights 9:1, then 1:1 written to its file and applied by SIGHUP
/// while 200 GETs a second flow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_set_the_shares_and_sighup_changes_them_under_load() {
    let tmp = tempfile::tempdir().unwrap();
    let (pa, pb) = (free_port(), free_port());
    let _a = Nginx::start(tmp.path(), "a", pa, None).await;
    let _b = Nginx::start(tmp.path(), "b", pb, None).await;
    let (admin, http, https) = (free_port(), free_port(), free_port());
    let text = |weights| {
        two_replicas(pa, pb, weights, "")
            .replace("listen = \"127.0.0.1:0\"", &format!("listen = \"127.0.0.1:{admin}\""))
            .replace("https_port = 0", &format!("https_port = {https}"))
            .replace("http_port = 0", &format!("http_port = {http}"))
    };
    let file = tmp.path().join("lp.toml");
    std::fs::write(&file, text((9, 1))).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_local-proxy"))
        .args(["-c", &file.display().to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{admin}").parse().unwrap();
    let proxy: SocketAddr = format!("127.0.0.4:{http}").parse().unwrap();
    wait_until(Duration::from_secs(10), "the proxy serving", || async move {
        TcpStream::connect(proxy).await.is_ok() && TcpStream::connect(admin).await.is_ok()
    })
    .await;
    let c = client();
    let s = shares(&c, proxy, 2000).await;
    let share_a = s["a"] as f64 / 2000.0;
    println!("9:1 → a {share_a:.3}");
    assert!((share_a - 0.9).abs() <= 0.03, "{s:?}");

    // Under load, 1:1 by SIGHUP: no request fails, the shares follow.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (ok, failed) = load(proxy, 200, stop.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    std::fs::write(&file, text((1, 1))).unwrap();
    let pid = child.id().unwrap().to_string();
    assert!(common::run_tool("kill", &["-HUP", &pid], b"").await.status.success());
    wait_until(Duration::from_secs(10), "the reload applied", || async move {
        let text = common::http_get(admin, "/metrics").await.1;
        metric_value(&text, "local_proxy_config_reloads_total", &[("result", "ok")]) == 1.0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let s = shares(&c, proxy, 2000).await;
    let share_a = s["a"] as f64 / 2000.0;
    println!(
        "1:1 → a {share_a:.3}; under load {} ok, {} failed",
        ok.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed)
    );
    assert!((share_a - 0.5).abs() <= 0.03, "{s:?}");
    assert_eq!(failed.load(Ordering::Relaxed), 0);
    assert!(ok.load(Ordering::Relaxed) > 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_under_load_costs_no_get_and_comes_back_after_rise() {
    let tmp = tempfile::tempdir().unwrap();
    let (pa, pb) = (free_port(), free_port());
    let _a = Nginx::start(tmp.path(), "a", pa, None).await;
    let mut b = Nginx::start(tmp.path(), "b", pb, None).await;
    let health = "health = { path = \"/health\", interval = \"200ms\", timeout = \"150ms\", rise = 2, fall = 2 }";
    let proxy = Proxy::start(&two_replicas(pa, pb, (1, 1), health)).await;
    let b_label = format!("http://127.0.0.1:{pb}");
    let up = |label: String| {
        let admin = proxy.admin;
        async move {
            let text = common::http_get(admin, "/metrics").await.1;
            metric_value(&text, "local_proxy_upstream_up", &[("site", "app.example.org"), ("upstream", &label)])
        }
    };

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (ok, failed) = load(proxy.mesh_http, 300, stop.clone());
    tokio::time::sleep(Duration::from_secs(1)).await;
    b.kill().await;
    let killed = Instant::now();
    wait_until(Duration::from_secs(5), "b marked down", || {
        let v = up(b_label.clone());
        async move { v.await == 0.0 }
    })
    .await;
    println!("b down {:?} after the kill (fall 2 × interval 200ms)", killed.elapsed());
    tokio::time::sleep(Duration::from_secs(1)).await;
    b.spawn().await;
    let restarted = Instant::now();
    wait_until(Duration::from_secs(5), "b back", || {
        let v = up(b_label.clone());
        async move { v.await == 1.0 }
    })
    .await;
    println!("b up {:?} after the restart (rise 2)", restarted.elapsed());
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    let retries = proxy
        .metric(
            "local_proxy_upstream_retries_total",
            &[("site", "app.example.org"), ("upstream", &format!("http://127.0.0.1:{pa}"))],
        )
        .await;
    println!("{ok} GETs ok, {failed} failed, {retries} retried on a");
    assert_eq!(failed, 0);
    assert!(ok > 600, "{ok}");
    let after = b.access_log().lines().count();
    assert!(after > 0, "b serves again");
}

/// A POST that reaches a replica which dies before answering: 502 to the client, and the
/// other replica (nginx) never sees it.
/// CONNECT is refused with 405, as nginx does, and never reaches the upstream: it has no
/// path, and an upstream connection cannot carry its authority-form target.
#[tokio::test]
async fn connect_is_refused_with_405_and_not_forwarded() {
    let up = echo_upstream("a").await;
    let proxy =
        Proxy::start(&config_text(&format!("[[site]]\nhost = \"app.example.org\"\nupstream = \"http://{up}\"\n")))
            .await;
    let mut s = TcpStream::connect(proxy.mesh_http).await.unwrap();
    s.write_all(b"CONNECT app.example.org:443 HTTP/1.1\r\nHost: app.example.org:443\r\n\r\n").await.unwrap();
    let mut head = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut head)).await.expect("answer").unwrap();
    let text = String::from_utf8_lossy(&head[..n]).to_string();
    assert!(text.starts_with("HTTP/1.1 405"), "{text}");
    assert!(text.to_ascii_lowercase().contains("allow: get"), "{text}");
    assert!(!text.contains("upstream: a"), "{text}");
    let count = proxy
        .metric(
            "local_proxy_upstream_requests_total",
            &[("site", "app.example.org"), ("upstream", &format!("http://{up}"))],
        )
        .await;
    assert_eq!(count, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_to_a_dying_replica_fails_cleanly_and_is_not_replayed() {
    let tmp = tempfile::tempdir().unwrap();
    let pa = free_port();
    let a = Nginx::start(tmp.path(), "a", pa, None).await;
    let (pd, posts) = dying_replica("POST").await;
    let proxy = Proxy::start(&config_text(&format!(
        r#"
[[site]]
host = "app.example.org"
upstream = ["http://127.0.0.1:{pd}", "http://127.0.0.1:{pa}"]
"#
    )))
    .await;
    let c = client();
    let mut statuses = Vec::new();
    for i in 0..4 {
        statuses.push(request(&c, proxy.mesh_http, "POST", "/submit", &format!("order {i}")).await.0);
    }
    println!("POST statuses {statuses:?}");
    let failed = statuses.iter().filter(|&&s| s == 502).count() as u64;
    assert!(failed >= 1, "round robin sent a POST to the dying replica");
    assert_eq!(failed, posts.load(Ordering::Relaxed), "each 502 is a POST the dying replica took");
    assert!(statuses.iter().all(|&s| s == 502 || s == 200), "{statuses:?}");
    let first = statuses.len() - failed as usize;
    let replayed = a.logged("POST", first).await;
    assert_eq!(replayed, first, "nginx saw only the POSTs it was sent first");
    // A bodiless GET that meets the same fate is sent once more, to nginx.
    let (status, body) = request(&c, proxy.mesh_http, "GET", "/", "").await;
    let (status2, body2) = request(&c, proxy.mesh_http, "GET", "/", "").await;
    assert_eq!((status, status2), (200, 200), "{body} {body2}");
}

/// A replica that reads a whole request, then dies (closes) without a byte of answer; counts
/// the requests of `method` it took.
async fn dying_replica(method: &'static str) -> (u16, Arc<AtomicU64>) {
    let (port, [taken, _]) = closing_after(0, [method, "\0"]).await;
    (port, taken)
}

/// An upstream that answers the first `answered` requests of each connection, then reads the
/// next whole and closes without a word (it died, or its keep-alive timeout struck as the
/// request arrived). Counts the requests it read by request line prefix.
async fn closing_after(answered: usize, lines: [&'static str; 2]) -> (u16, [Arc<AtomicU64>; 2]) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let counts = [Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0))];
    let seen = counts.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut r = BufReader::new(s);
                for i in 0..=answered {
                    let mut line = String::new();
                    let (mut first, mut len) = (true, 0usize);
                    loop {
                        line.clear();
                        if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        if first {
                            for (prefix, count) in lines.iter().zip(&seen) {
                                if line.starts_with(prefix) {
                                    count.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                            first = false;
                        }
                        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                            len = v.trim().parse().unwrap_or(0);
                        }
                        if line == "\r\n" {
                            break;
                        }
                    }
                    let mut body = vec![0u8; len];
                    let _ = r.read_exact(&mut body).await;
                    if i < answered {
                        let _ = r.get_mut().write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
                    }
                }
            });
        }
    });
    (port, counts)
}

/// A GET whose kept-alive upstream connection, idle a while, closes under it goes out again
/// on a new connection to the same upstream, the site's only one, and is answered; a POST is
/// not sent twice: 502, as nginx and Go's client do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_on_a_connection_closed_under_it_is_sent_again_on_a_new_one() {
    let (port, [gets, posts]) = closing_after(1, ["GET /page ", "POST /page "]).await;
    let proxy = Proxy::start(&config_text(&format!(
        "[[site]]\nhost = \"app.example.org\"\nupstream = \"http://127.0.0.1:{port}\"\n"
    )))
    .await;
    let c = client();
    for i in 0..4 {
        // Idle past keepalive::COPY_AFTER (100 ms), as between a home's requests.
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert_eq!(request(&c, proxy.mesh_http, "GET", "/page", "").await, (200, "ok".to_string()), "GET {i}");
    }
    // Every GET after the first met the connection the one before had used, closing.
    assert_eq!(gets.load(Ordering::Relaxed), 7);
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(request(&c, proxy.mesh_http, "POST", "/page", "order").await.0, 502);
    assert_eq!(posts.load(Ordering::Relaxed), 1, "the POST was not sent twice");
}

/// A PUT with a small body (read whole first) that meets a dying replica is sent once more,
/// to nginx, body and all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_put_to_a_dying_replica_is_resent_elsewhere() {
    let tmp = tempfile::tempdir().unwrap();
    let pa = free_port();
    let a = Nginx::start(tmp.path(), "a", pa, None).await;
    let (pd, puts) = dying_replica("PUT").await;
    let proxy = Proxy::start(&config_text(&format!(
        r#"
[[site]]
host = "app.example.org"
upstream = ["http://127.0.0.1:{pd}", "http://127.0.0.1:{pa}"]
"#
    )))
    .await;
    let c = client();
    for i in 0..4 {
        let (status, body) = request(&c, proxy.mesh_http, "PUT", "/doc", &format!("version {i}")).await;
        assert_eq!((status, body.as_str()), (200, "a"));
    }
    let taken = puts.load(Ordering::Relaxed);
    println!("{taken} PUTs died with the dying replica, all resent");
    assert!(taken >= 1);
    let at_nginx = a.logged("PUT /doc", 4).await;
    assert_eq!(at_nginx, 4, "nginx answered every PUT, the resent ones included");
}

/// A replica that answers its health checks but hangs real requests: 504 after
/// upstream_timeout, counted as a timeout failure of that replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_replica_answers_504_and_counts_a_failure() {
    let hang = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ph = hang.local_addr().unwrap().port();
    let held = Arc::new(Mutex::new(Vec::new()));
    let keep = held.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = hang.accept().await {
            let keep = keep.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let n = s.read(&mut buf).await.unwrap_or(0);
                if String::from_utf8_lossy(&buf[..n]).starts_with("GET /health ") {
                    let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nconnection: close\r\n\r\nok\n").await;
                } else {
                    keep.lock().unwrap().push(s);
                }
            });
        }
    });
    let proxy = Proxy::start(&config_text(&format!(
        r#"
[[site]]
host = "app.example.org"
upstream = "http://127.0.0.1:{ph}"
health = {{ path = "/health", interval = "200ms", timeout = "150ms" }}
"#
    )))
    .await;
    let c = client();
    let start = Instant::now();
    let (status, _) = request(&c, proxy.mesh_http, "GET", "/slow", "").await;
    println!("answered {status} after {:?} (upstream_timeout 1s)", start.elapsed());
    assert_eq!(status, 504);
    let label = format!("http://127.0.0.1:{ph}");
    let labels = [("site", "app.example.org"), ("upstream", label.as_str()), ("result", "timeout")];
    assert_eq!(proxy.metric("local_proxy_upstream_failures_total", &labels).await, 1.0);
    assert_eq!(held.lock().unwrap().len(), 1, "the request was sent once, not retried");
}

/// Two https replicas, one with a certificate from a CA the site does not trust: it goes
/// down on its checks, the log says why, and every request goes to the good one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_with_a_bad_certificate_is_down_with_the_reason_logged() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = Ca::new(tmp.path());
    let rogue_dir = tmp.path().join("rogue");
    std::fs::create_dir_all(&rogue_dir).unwrap();
    let rogue = Ca::new(&rogue_dir);
    let write = |name: &str, (chain, key): (String, String)| {
        let (c, k) = (tmp.path().join(format!("{name}.pem")), tmp.path().join(format!("{name}.key")));
        std::fs::write(&c, chain).unwrap();
        std::fs::write(&k, key).unwrap();
        (c, k)
    };
    let good = write("good", ca.leaf(&["localhost"], "good"));
    let bad = write("bad", rogue.leaf(&["localhost"], "bad"));
    let (pg, pb) = (free_port(), free_port());
    let _g = Nginx::start(tmp.path(), "good", pg, Some((&good.0, &good.1))).await;
    let _b = Nginx::start(tmp.path(), "bad", pb, Some((&bad.0, &bad.1))).await;
    // The binary, so its log can be read.
    let cfg = tmp.path().join("lp.toml");
    let admin = free_port();
    let http = free_port();
    std::fs::write(
        &cfg,
        format!(
            r#"
[admin]
listen = "127.0.0.1:{admin}"
[wan]
addresses = ["127.0.0.1"]
[mesh]
listen = "127.0.0.4"
[http]
https_port = {https}
http_port = {http}
redirect_to_https = false
[[site]]
host = "app.example.org"
upstream = ["https://localhost:{pg}", "https://localhost:{pb}"]
ca_file = "{ca}"
health = {{ path = "/health", interval = "300ms", timeout = "250ms", fall = 2 }}
"#,
            https = free_port(),
            ca = ca.pem_path.display()
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_local-proxy"))
        .args(["-c", &cfg.display().to_string()])
        .env("LOCAL_PROXY_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let log = Arc::new(Mutex::new(String::new()));
    for pipe in [
        child.stderr.take().map(|p| Box::new(p) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
        child.stdout.take().map(|p| Box::new(p) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let log = log.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(pipe).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                log.lock().unwrap().push_str(&l);
                log.lock().unwrap().push('\n');
            }
        });
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let down = |log: &str| log.lines().any(|l| l.contains("upstream down") && l.contains(&format!(":{pb}")));
    while !down(&log.lock().unwrap()) {
        assert!(Instant::now() < deadline, "the bad replica is not down; log:\n{}", log.lock().unwrap());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let line = log.lock().unwrap().lines().find(|l| l.contains("upstream down")).unwrap().to_string();
    println!("{line}");
    assert!(line.to_lowercase().contains("certificate"), "the reason names the certificate: {line}");
    let mesh_http: SocketAddr = format!("127.0.0.4:{http}").parse().unwrap();
    let c = client();
    for _ in 0..10 {
        assert_eq!(request(&c, mesh_http, "GET", "/", "").await, (200, "good".to_string()));
    }
    child.kill().await.unwrap();
}

/// A TCP stream whose first upstream refuses: every connection reaches the second, and the
/// clients notice nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_stream_moves_past_a_refusing_upstream() {
    let refused = closed_port().await;
    let echo = echo_upstream("echo").await;
    let proxy = Proxy::start(&config_text(&format!(
        r#"
[[stream]]
name = "svc"
listen = "0/tcp"
upstream = ["{refused}", "{echo}"]
"#
    )))
    .await;
    let listen = proxy.listeners_tcp[&(Origin::Mesh, "svc".to_string())];
    for i in 0..50 {
        let mut s = TcpStream::connect(listen).await.unwrap();
        let (status, text) = common::raw_get(&mut s, "svc", &format!("/{i}")).await;
        assert_eq!(status, 200, "connection {i}: {text}");
        assert!(text.contains("upstream: echo"), "{text}");
    }
    let ok = proxy.metric("local_proxy_stream_connections_total", &[("stream", "svc"), ("result", "ok")]).await;
    assert_eq!(ok, 50.0);
    let refusals = proxy
        .metric(
            "local_proxy_upstream_failures_total",
            &[("stream", "svc"), ("upstream", &refused.to_string()), ("result", "connect")],
        )
        .await;
    println!("{refusals} refused connects hidden from the clients");
    assert!(refusals >= 1.0);
}

/// A critical site without a healthy upstream makes the proxy's own health (what the
/// ingress probes) unhealthy, naming the site; it recovers with the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_critical_site_down_makes_the_proxy_unhealthy() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let proxy = Proxy::start(&config_text(&format!(
        r#"
[tls]
certbot_live_dir = "{live}"
reload_interval = "200ms"
[[site]]
host = "app.example.org"
upstream = "http://127.0.0.1:{port}"
critical = true
health = {{ path = "/health", interval = "200ms", timeout = "150ms", fall = 2, rise = 2 }}
[[site]]
host = "other.example.org"
upstream = "http://127.0.0.1:{port}"
"#,
        live = tmp.path().join("live").display()
    )))
    .await;
    let ca = Ca::new(tmp.path());
    ca.certbot(&tmp.path().join("live"), "app", &["app.example.org"], "app");
    wait_until(Duration::from_secs(5), "unhealthy, naming the site", || async {
        let (status, body) = common::http_get(proxy.admin, "/healthz").await;
        status == 503 && body.contains("site app.example.org has no healthy upstream")
    })
    .await;
    let _n = Nginx::start(tmp.path(), "app", port, None).await;
    wait_until(Duration::from_secs(5), "healthy again", || async {
        common::http_get(proxy.admin, "/healthz").await.0 == 200
    })
    .await;
}

/// A reload keeps what the checks learnt: an upstream that is down stays down (no request
/// goes to it to find out again), while the changed weight of the other applies at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_a_down_upstream_down() {
    let tmp = tempfile::tempdir().unwrap();
    let (pa, dead) = (free_port(), free_port());
    let _a = Nginx::start(tmp.path(), "a", pa, None).await;
    let health = "health = { path = \"/health\", interval = \"300ms\", timeout = \"200ms\", rise = 2, fall = 2 }";
    let proxy = Proxy::start(&two_replicas(pa, dead, (1, 1), health)).await;
    let dead_label = format!("http://127.0.0.1:{dead}");
    let labels = [("site", "app.example.org"), ("upstream", dead_label.as_str())];
    wait_until(Duration::from_secs(5), "the dead upstream down", || async {
        proxy.metric("local_proxy_upstream_up", &labels).await == 0.0
    })
    .await;
    let sent = proxy.metric("local_proxy_upstream_requests_total", &labels).await;
    proxy.handle.reload(config::from_toml_str(&two_replicas(pa, dead, (3, 1), health)).unwrap()).await.unwrap();
    let c = client();
    for _ in 0..20 {
        assert_eq!(request(&c, proxy.mesh_http, "GET", "/", "").await, (200, "a".to_string()));
    }
    assert_eq!(proxy.metric("local_proxy_upstream_up", &labels).await, 0.0, "still down after the reload");
    assert_eq!(proxy.metric("local_proxy_upstream_requests_total", &labels).await, sent, "no request tried it again");
}

/// With fail_on_5xx, a replica answering 500 is taken out after `fall` such answers (only
/// passive evidence: no active checks), and the others take its share; it is tried again
/// after the health interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_on_5xx_takes_a_failing_replica_out() {
    let tmp = tempfile::tempdir().unwrap();
    let (pa, pb) = (free_port(), free_port());
    let _a = Nginx::start(tmp.path(), "a", pa, None).await;
    let _b = Nginx::start_with(tmp.path(), "b", pb, None, 500).await;
    let health = "health = { fail_on_5xx = true, fall = 3, interval = \"500ms\" }";
    let proxy = Proxy::start(&two_replicas(pa, pb, (1, 1), health)).await;
    let c = client();
    let mut statuses = Vec::new();
    for _ in 0..40 {
        statuses.push(request(&c, proxy.mesh_http, "GET", "/", "").await.0);
    }
    let errors = statuses.iter().filter(|&&s| s == 500).count();
    println!("{errors} answers of 500 before the replica was taken out");
    assert_eq!(errors, 3, "{statuses:?}");
    assert!(statuses[statuses.len() - 20..].iter().all(|&s| s == 200));
    let b = format!("http://127.0.0.1:{pb}");
    let labels = [("site", "app.example.org"), ("upstream", b.as_str()), ("result", "5xx")];
    assert_eq!(proxy.metric("local_proxy_upstream_failures_total", &labels).await, 3.0);
    // No active checks: after the interval real traffic tries it again, and it fails again.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let mut again = 0;
    for _ in 0..10 {
        again += usize::from(request(&c, proxy.mesh_http, "GET", "/", "").await.0 == 500);
    }
    assert_eq!(again, 1, "one retry of the failing replica per interval");
}

/// Least connections counts upgraded (WebSocket) connections: with one held open on an
/// upstream, the next goes to the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_conn_counts_websocket_connections() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let (w1, w2) = (common::ws_upstream().await, common::ws_upstream().await);
    let proxy = Proxy::start(&config_text(&format!(
        r#"
[[site]]
host = "app.example.org"
upstream = ["http://{w1}", "http://{w2}"]
balance = "least_conn"
"#
    )))
    .await;
    let active = |u: SocketAddr| {
        let label = format!("http://{u}");
        let admin = proxy.admin;
        async move {
            let text = common::http_get(admin, "/metrics").await.1;
            metric_value(&text, "local_proxy_upstream_active", &[("site", "app.example.org"), ("upstream", &label)])
        }
    };
    let mut held = Vec::new();
    for i in 0..4 {
        let s = TcpStream::connect(proxy.mesh_http).await.unwrap();
        let (mut ws, _) = tokio_tungstenite::client_async("ws://app.example.org/socket", s).await.unwrap();
        ws.send(Message::text(format!("hi {i}"))).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text(format!("hi {i}")));
        held.push(ws);
        // Each new connection goes where fewer are open: the two stay level.
        let (a1, a2) = (active(w1).await, active(w2).await);
        assert!((a1 - a2).abs() <= 1.0 && a1 + a2 == (i + 1) as f64, "after {} open: {a1} and {a2}", i + 1);
    }
    assert_eq!((active(w1).await, active(w2).await), (2.0, 2.0));
    drop(held);
    wait_until(Duration::from_secs(5), "closed connections stop counting", || async {
        active(w1).await + active(w2).await == 0.0
    })
    .await;
}

/// A UDP stream with a probe payload: the upstream that does not answer it (nothing listens:
/// ICMP unreachable) goes down, and every new flow goes to the one that does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_udp_stream_checks_its_upstreams_with_a_payload() {
    use tokio::net::UdpSocket;
    let echo = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let live = echo.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 512];
        while let Ok((n, from)) = echo.recv_from(&mut buf).await {
            let mut reply = b"pong ".to_vec();
            reply.extend_from_slice(&buf[..n]);
            let _ = echo.send_to(&reply, from).await;
        }
    });
    let dead = UdpSocket::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let proxy = Proxy::start(&config_text(&format!(
        r#"
[[stream]]
name = "dns"
listen = "0/udp"
upstream = ["{dead}", "{live}"]
health = {{ send = "ping", expect = "pong", interval = "200ms", timeout = "150ms", rise = 2, fall = 2 }}
"#
    )))
    .await;
    let dead_label = dead.to_string();
    let labels = [("stream", "dns"), ("upstream", dead_label.as_str())];
    wait_until(Duration::from_secs(5), "the silent upstream down", || async {
        proxy.metric("local_proxy_upstream_up", &labels).await == 0.0
    })
    .await;
    let sent = proxy.metric("local_proxy_upstream_requests_total", &labels).await;
    let listen = proxy.listeners_udp[&(Origin::Mesh, "dns".to_string())];
    for i in 0..20 {
        let client = UdpSocket::bind("127.0.0.4:0").await.unwrap();
        client.send_to(format!("hello {i}").as_bytes(), listen).await.unwrap();
        let mut buf = [0u8; 512];
        let (n, _) = tokio::time::timeout(Duration::from_secs(2), client.recv_from(&mut buf)).await.unwrap().unwrap();
        assert_eq!(&buf[..n], format!("pong hello {i}").as_bytes());
    }
    assert_eq!(proxy.metric("local_proxy_upstream_requests_total", &labels).await, sent, "no flow went to it");
    let live_label = live.to_string();
    let live_labels = [("stream", "dns"), ("upstream", live_label.as_str())];
    // The counter may trail the last reply by a moment on a loaded machine (it once read 19).
    wait_until(Duration::from_secs(5), "all 20 flows counted on the live upstream", || async {
        proxy.metric("local_proxy_upstream_requests_total", &live_labels).await == 20.0
    })
    .await;
}

/// The request metrics, counted on each site's kept handles (`SiteMetrics`) for answers
/// labelled by their status class and through the recorder for the others: every series has
/// its requests, over several connections and across a reload (whose new site table registers
/// the same series again), and the unknown site its own. Site names of their own: the
/// recorder is the process's, shared by this file's tests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_metrics_count_every_request_by_site_and_result() {
    let tmp = tempfile::tempdir().unwrap();
    let (pa, pb) = (free_port(), free_port());
    let _a = Nginx::start(tmp.path(), "a", pa, None).await;
    let _b = Nginx::start_with(tmp.path(), "b", pb, None, 503).await;
    let text = config_text(&format!(
        r#"
[[site]]
host = "counted.example.org"
upstream = "http://127.0.0.1:{pa}"
[[site]]
host = "counted-err.example.org"
upstream = "http://127.0.0.1:{pb}"
"#
    ));
    let proxy = Proxy::start(&text).await;
    let get = |host: &'static str| {
        let c = client();
        let addr = proxy.mesh_http;
        async move {
            let req = http::Request::builder()
                .uri(format!("http://{addr}/"))
                .header("host", host)
                .body(Full::new(Bytes::new()))
                .unwrap();
            match tokio::time::timeout(Duration::from_secs(10), c.request(req)).await {
                Ok(Ok(resp)) => resp.status().as_u16(),
                _ => 0,
            }
        }
    };
    let p = &proxy;
    let count = |site: &'static str, result: &'static str| async move {
        p.metric("local_proxy_http_requests_total", &[("site", site), ("result", result)]).await
    };
    let duration = |site: &'static str| async move {
        p.metric("local_proxy_http_request_duration_seconds_count", &[("site", site)]).await
    };
    let unknown_before = count("unknown", "unknown_site").await;
    for _ in 0..5 {
        assert_eq!(get("counted.example.org").await, 200);
    }
    for _ in 0..3 {
        assert_eq!(get("counted-err.example.org").await, 503);
    }
    for _ in 0..2 {
        assert_eq!(get("nobody.counted.example.org").await, 404);
    }
    proxy.handle.reload(config::from_toml_str(&text).unwrap()).await.unwrap();
    for _ in 0..2 {
        assert_eq!(get("counted.example.org").await, 200);
    }
    assert_eq!(count("counted.example.org", "2xx").await, 7.0);
    assert_eq!(duration("counted.example.org").await, 7.0);
    assert_eq!(count("counted-err.example.org", "5xx").await, 3.0);
    assert_eq!(duration("counted-err.example.org").await, 3.0);
    // Durations are Prometheus histograms (buckets that sum across instances), not summaries:
    // every request is in the top bucket, none of these loopback ones took 60 s.
    for le in ["60", "+Inf"] {
        let labels = [("site", "counted.example.org"), ("le", le)];
        assert_eq!(proxy.metric("local_proxy_http_request_duration_seconds_bucket", &labels).await, 7.0, "le={le}");
    }
    assert_eq!(count("unknown", "unknown_site").await - unknown_before, 2.0);
    let metrics = common::http_get(proxy.admin, "/metrics").await.1;
    for line in metrics.lines().filter(|l| l.starts_with("local_proxy_http_requests_total{") && l.contains("counted")) {
        assert!(
            line.contains("result=\"2xx\"") || line.contains("result=\"5xx\""),
            "a series without requests: {line}"
        );
    }
}

/// A reload refused after its pools were built (here a site's access log cannot be opened)
/// leaves no series for the upstreams it would have added; the same reload once taken shows
/// them, up; a reload that removes the site again takes its gauges out of `/metrics` (its
/// counters stay, as history).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_only_the_upstreams_that_run() {
    let tmp = tempfile::tempdir().unwrap();
    let (pa, pb) = (free_port(), free_port());
    let _a = Nginx::start(tmp.path(), "a", pa, None).await;
    let _b = Nginx::start(tmp.path(), "b", pb, None).await;
    let site = |host: &str, port: u16, log: &Path| {
        format!(
            "[[site]]\nhost = \"{host}\"\nupstream = \"http://127.0.0.1:{port}\"\naccess_log = {{ path = \"{}\" }}\n",
            log.display()
        )
    };
    let first = site("kept.example.org", pa, &tmp.path().join("a.log"));
    let proxy = Proxy::start(&config_text(&first)).await;
    let added =
        |log: &Path| config::from_toml_str(&config_text(&(first.clone() + &site("added.example.org", pb, log))));
    let refused = proxy.handle.reload(added(&tmp.path().join("no-such-dir/b.log")).unwrap()).await;
    assert!(refused.is_err(), "a log that cannot be opened refuses the reload");
    let b_label = format!("upstream=\"http://127.0.0.1:{pb}\"");
    let metrics = common::http_get(proxy.admin, "/metrics").await.1;
    let left: Vec<&str> = metrics.lines().filter(|l| l.contains(&b_label) || l.contains("added.example.org")).collect();
    assert!(left.is_empty(), "series of the refused reload: {left:#?}");
    let kept = [("site", "kept.example.org"), ("upstream", &*format!("http://127.0.0.1:{pa}"))];
    assert_eq!(proxy.metric("local_proxy_upstream_up", &kept).await, 1.0);

    proxy.handle.reload(added(&tmp.path().join("b.log")).unwrap()).await.unwrap();
    let b = [("site", "added.example.org"), ("upstream", &*format!("http://127.0.0.1:{pb}"))];
    assert_eq!(proxy.metric("local_proxy_upstream_up", &b).await, 1.0);
    assert_eq!(proxy.metric("local_proxy_upstream_requests_total", &b).await, 0.0);
    let unavailable = [("site", "added.example.org")];
    assert_eq!(proxy.metric("local_proxy_upstream_unavailable_total", &unavailable).await, 0.0);

    proxy.handle.reload(config::from_toml_str(&config_text(&first)).unwrap()).await.unwrap();
    let metrics = common::http_get(proxy.admin, "/metrics").await.1;
    let gauges = ["local_proxy_upstream_up{", "local_proxy_upstream_active{"];
    let left: Vec<&str> =
        metrics.lines().filter(|l| l.contains(&b_label) && gauges.iter().any(|g| l.starts_with(g))).collect();
    assert!(left.is_empty(), "gauges of a removed upstream: {left:#?}");
    assert!(metrics.lines().any(|l| l.starts_with("local_proxy_upstream_requests_total{") && l.contains(&b_label)));
    assert_eq!(proxy.metric("local_proxy_upstream_up", &kept).await, 1.0);
}

/// A UDP flow whose only upstream fails its checks keeps going to it: there is nowhere to
/// move it, and ending it would drop the datagram and reopen the flow later from a new
/// source port (a TURN allocation or a game server takes that for another client). The
/// ingress keeps a flow on a down path likewise while no other is up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_udp_flow_stays_on_its_down_upstream_when_no_other_can_take_it() {
    use std::sync::atomic::AtomicBool;
    use tokio::net::UdpSocket;
    let echo = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let only = echo.local_addr().unwrap();
    // Answers the probes until told not to; answers data always, noting where it came from.
    let probes_answered = Arc::new(AtomicBool::new(true));
    let data_from = Arc::new(Mutex::new(Vec::new()));
    let (answer, seen) = (probes_answered.clone(), data_from.clone());
    tokio::spawn(async move {
        let mut buf = [0u8; 512];
        while let Ok((n, from)) = echo.recv_from(&mut buf).await {
            if &buf[..n] == b"ping" {
                if !answer.load(Ordering::Relaxed) {
                    continue;
                }
            } else {
                seen.lock().unwrap().push(from);
            }
            let mut reply = b"pong ".to_vec();
            reply.extend_from_slice(&buf[..n]);
            let _ = echo.send_to(&reply, from).await;
        }
    });
    let proxy = Proxy::start(&config_text(&format!(
        r#"
[[stream]]
name = "turn-alone"
listen = "0/udp"
upstream = "{only}"
health = {{ send = "ping", expect = "pong", interval = "100ms", timeout = "80ms", rise = 1, fall = 1 }}
"#
    )))
    .await;
    let label = only.to_string();
    let labels = [("stream", "turn-alone"), ("upstream", label.as_str())];
    wait_until(Duration::from_secs(5), "the upstream up", || async {
        proxy.metric("local_proxy_upstream_up", &labels).await == 1.0
    })
    .await;
    let listen = proxy.listeners_udp[&(Origin::Mesh, "turn-alone".to_string())];
    let client = UdpSocket::bind("127.0.0.4:0").await.unwrap();
    let exchange = |i: usize| {
        let client = &client;
        async move {
            client.send_to(format!("data {i}").as_bytes(), listen).await.unwrap();
            let mut buf = [0u8; 512];
            let got = tokio::time::timeout(Duration::from_secs(2), client.recv_from(&mut buf)).await;
            got.ok().and_then(Result::ok).map(|(n, _)| buf[..n].to_vec())
        }
    };
    assert_eq!(exchange(0).await.as_deref(), Some(&b"pong data 0"[..]));
    probes_answered.store(false, Ordering::Relaxed);
    wait_until(Duration::from_secs(5), "the upstream down", || async {
        proxy.metric("local_proxy_upstream_up", &labels).await == 0.0
    })
    .await;
    for i in 1..4 {
        assert_eq!(exchange(i).await.as_deref(), Some(format!("pong data {i}").as_bytes()), "datagram {i}");
    }
    let from = data_from.lock().unwrap().clone();
    assert_eq!(from.len(), 4, "{from:?}");
    assert!(from.iter().all(|a| *a == from[0]), "the flow was reopened from another port: {from:?}");
}

/// A flow moving off a down upstream at a full `max_flows` takes its own slot along: before,
/// it evicted another client's quiet flow (a TURN allocation between refreshes) or, with none
/// quiet, its datagram was dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_udp_flow_moving_at_a_full_budget_evicts_no_other() {
    use std::sync::atomic::AtomicBool;
    use tokio::net::UdpSocket;
    // Two upstreams answering the probes until told not to, and data always, by name.
    let mut upstreams = Vec::new();
    for name in ["a", "b"] {
        let echo = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = echo.local_addr().unwrap();
        let answering = Arc::new(AtomicBool::new(true));
        let answer = answering.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 512];
            while let Ok((n, from)) = echo.recv_from(&mut buf).await {
                if &buf[..n] == b"ping" && !answer.load(Ordering::Relaxed) {
                    continue;
                }
                let mut reply = format!("pong {name} ").into_bytes();
                reply.extend_from_slice(&buf[..n]);
                let _ = echo.send_to(&reply, from).await;
            }
        });
        upstreams.push((addr, answering));
    }
    let (a, b) = (upstreams[0].0, upstreams[1].0);
    let proxy = Proxy::start(&config_text(&format!(
        r#"
[[stream]]
name = "full"
listen = "0/udp"
upstream = ["{a}", "{b}"]
max_flows = 2
idle_timeout = "60s"
health = {{ send = "ping", expect = "pong", interval = "100ms", timeout = "80ms", rise = 1, fall = 1 }}
"#
    )))
    .await;
    let up = |addr: SocketAddr| {
        let proxy = &proxy;
        async move {
            let label = addr.to_string();
            proxy.metric("local_proxy_upstream_up", &[("stream", "full"), ("upstream", label.as_str())]).await
        }
    };
    wait_until(Duration::from_secs(5), "both upstreams up", || async { up(a).await + up(b).await == 2.0 }).await;
    let listen = proxy.listeners_udp[&(Origin::Mesh, "full".to_string())];
    let clients = [UdpSocket::bind("127.0.0.4:0").await.unwrap(), UdpSocket::bind("127.0.0.5:0").await.unwrap()];
    let mut on = Vec::new();
    for c in &clients {
        let r = udp_ask(c, listen, "hi").await.expect("both flows fit");
        on.push(if r.starts_with("pong a ") { 0 } else { 1 });
    }
    // Both flows quiet for longer than a full budget waits before evicting one (250 ms).
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (dead, alive) = if on[0] == 0 { (a, "b") } else { (b, "a") };
    upstreams[on[0]].1.store(false, Ordering::Relaxed);
    wait_until(Duration::from_secs(5), "the first client's upstream down", || async { up(dead).await == 0.0 }).await;
    let r = udp_ask(&clients[0], listen, "moved").await.expect("an answer after the move");
    assert_eq!(r, format!("pong {alive} moved"));
    let evicted = proxy.metric("local_proxy_udp_flows_evicted_total", &[("stream", "full")]).await;
    assert_eq!(evicted, 0.0, "a flow was evicted for the moving one");
    let refused = proxy.metric("local_proxy_udp_dropped_total", &[("stream", "full"), ("result", "flow_limit")]).await;
    assert_eq!(refused, 0.0);
    let r = udp_ask(&clients[1], listen, "still").await.expect("the other client is answered");
    assert!(r.ends_with(" still"), "{r}");
}

/// Sends `text` to `to` and waits a second for the answer.
async fn udp_ask(client: &tokio::net::UdpSocket, to: SocketAddr, text: &str) -> Option<String> {
    client.send_to(text.as_bytes(), to).await.ok()?;
    let mut buf = [0u8; 512];
    let (n, _) = tokio::time::timeout(Duration::from_secs(1), client.recv_from(&mut buf)).await.ok()?.ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// Counters an alert watches for an increase are there at 0 before their first event
/// (Prometheus has no sample before the one that creates a series, so `increase()` would miss
/// a single refused reload or the first flows dropped at the cap).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_that_alerts_watch_start_at_zero() {
    let proxy = Proxy::start(&config_text(
        r#"
[[stream]]
name = "zeroes"
listen = "0/udp"
upstream = "127.0.0.1:9"
"#,
    ))
    .await;
    let present_in = |text: &str, name: &str, labels: &[(&str, &str)]| {
        text.lines().any(|l| {
            l.starts_with(name) && labels.iter().all(|(k, v)| l.contains(&format!("{k}=\"{v}\""))) && l.ends_with(" 0")
        })
    };
    // The UDP listener's counters are made when its loop starts serving it.
    let mut text = common::http_get(proxy.admin, "/metrics").await.1;
    for _ in 0..100 {
        if present_in(&text, "local_proxy_udp_flows_evicted_total", &[("stream", "zeroes")]) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        text = common::http_get(proxy.admin, "/metrics").await.1;
    }
    let present = |name: &str, labels: &[(&str, &str)]| present_in(&text, name, labels);
    for result in ["invalid", "bind_failed"] {
        assert!(present("local_proxy_config_reloads_total", &[("result", result)]), "{result}\n{text}");
    }
    for reason in ["missing", "wrong"] {
        assert!(present("local_proxy_admin_unauthorized_total", &[("reason", reason)]), "{reason}\n{text}");
    }
    let results = [
        "untrusted",
        "bad_header",
        "source_share",
        "flow_limit",
        "stream_removed",
        "send_failed",
        "no_upstream",
        "transparent_failed",
        "proxy_header",
    ];
    for result in results {
        let labels = [("stream", "zeroes"), ("result", result)];
        assert!(present("local_proxy_udp_dropped_total", &labels), "{result}\n{text}");
    }
    assert!(present("local_proxy_udp_flows_evicted_total", &[("stream", "zeroes")]), "{text}");
}

/// A request whose upstream connects find this process out of descriptors (EMFILE) is
/// answered 503, and neither upstream is blamed: with `fall = 1`, one such request used to take
/// the first one tried down (while the other was still up), as if it had refused. Counted
/// under `result="local_resources"`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_without_descriptors_blames_no_upstream() {
    let tmp = tempfile::tempdir().unwrap();
    let (pa, pb) = (free_port(), free_port());
    let _a = Nginx::start(tmp.path(), "a", pa, None).await;
    let _b = Nginx::start(tmp.path(), "b", pb, None).await;
    let proxy = Proxy::start(&two_replicas(pa, pb, (1, 1), "health = { fall = 1 }")).await;
    // Every descriptor taken but two: this client's socket and the one the proxy accepts.
    let Some(taken) = test_support::DescriptorsTaken::all_but(2) else { return };
    let mut conn = TcpStream::connect(proxy.mesh_http).await.unwrap();
    conn.write_all(b"GET / HTTP/1.1\r\nHost: app.example.org\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut answer)).await;
    drop(conn);
    drop(taken);
    assert!(read.is_ok_and(|r| r.is_ok()), "no answer");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    for port in [pa, pb] {
        let label = format!("http://127.0.0.1:{port}");
        let labels = [("site", "app.example.org"), ("upstream", label.as_str())];
        assert_eq!(proxy.metric("local_proxy_upstream_up", &labels).await, 1.0, "{label} taken down");
    }
    let labels = [("site", "app.example.org"), ("result", "local_resources")];
    assert!(proxy.metric("local_proxy_upstream_errors_total", &labels).await >= 1.0);
    assert_eq!(request(&client(), proxy.mesh_http, "GET", "/", "").await.0, 200, "descriptors back: it passes");
}

/// A listener whose accept queue is full: the kernel drops further SYNs, so a connect to it
/// hangs until its own timeout, as one to a powered-off host does. Kept open with the one
/// connection that fills the queue.
fn hanging_listener() -> (socket2::Socket, std::net::TcpStream, SocketAddr) {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into()).unwrap();
    s.listen(0).unwrap();
    let addr = s.local_addr().unwrap().as_socket().unwrap();
    let filler = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap();
    let hangs = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300));
    assert!(hangs.is_err(), "the accept queue is not full");
    (s, filler, addr)
}

/// An upstream_timeout shorter than the connect timeout: a connect to an upstream that does
/// not answer (here: its accept queue full) reaches the deadline before it fails. Nothing was
/// sent, so the next upstream takes the request, a POST too, instead of a 504.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_that_outlasts_upstream_timeout_goes_to_the_next_upstream() {
    let (_listener, _filler, dead) = hanging_listener();
    let alive = echo_upstream("alive").await;
    let site = format!("[[site]]\nhost = \"app.example.org\"\nupstream = [\"http://{dead}\", \"http://{alive}\"]\n");
    let text = config_text(&site).replace(
        "upstream_timeout = \"1s\"\nupstream_connect_timeout = \"500ms\"",
        "upstream_timeout = \"300ms\"\nupstream_connect_timeout = \"5s\"",
    );
    assert!(text.contains("upstream_connect_timeout = \"5s\""));
    let proxy = Proxy::start(&text).await;
    let c = client();
    for _ in 0..4 {
        let (status, body) = request(&c, proxy.mesh_http, "POST", "/", "x").await;
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("upstream: alive"), "{body}");
    }
}
