//! Per-site middlewares with the binary as deployed and real nginx upstreams: rate limits
//! (50 req/s allowed of 200 offered; 100,000 client addresses through PROXY v2 headers with
//! the process's RSS read before and after), compression (curl `--compressed` bodies equal
//! nginx's files in gzip, zstd and br; an image and a small file left alone; a slow chunked
//! response arrives while nginx is still sending), CORS (a browser's preflight and actual
//! requests, an origin not allowed) and hostile clients (a scanner's user agent closed
//! without a byte over HTTP/1.1 and h2, the Cloudflare-worker headers refused), each counted
//! in the metrics and in the access log.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::time::Instant;

const MESH: &str = "127.0.0.4";
const NGINX: &str = "/usr/sbin/nginx";

use test_support::free_port;

/// nginx on 127.0.0.1 serving `www/` with the locations the tests need: `/slow/` trickles
/// at 250 KB/s with its length removed (chunked), `/api/` sets its own permissive CORS
/// header (which the proxy must replace).
struct Nginx {
    _child: Child,
    dir: PathBuf,
    addr: SocketAddr,
}

impl Nginx {
    async fn start(dir: &Path) -> Nginx {
        let dir = dir.join("nginx");
        let www = dir.join("www");
        std::fs::create_dir_all(www.join("slow")).unwrap();
        std::fs::create_dir_all(www.join("api")).unwrap();
        let port = free_port();
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
    types {{ text/html html; text/plain txt; image/png png; application/json json; }}
    default_type application/octet-stream;
    gzip off;
    server {{
        listen 127.0.0.1:{port};
        root {d}/www;
        location /slow/ {{
            limit_rate 250k;
            sub_filter_types text/plain;
            sub_filter 'never-in-the-file' 'x';
        }}
        location /api/ {{
            add_header Access-Control-Allow-Origin "*" always;
            add_header X-Total-Count 7 always;
        }}
    }}
}}
"#
        );
        std::fs::write(dir.join("nginx.conf"), conf).unwrap();
        let child = Command::new(NGINX)
            .args(["-p", &dir.display().to_string(), "-c", &dir.join("nginx.conf").display().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("nginx is required for this test ({e}); apt-get install -y nginx-light"));
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        wait_until(
            Duration::from_secs(10),
            "nginx listening",
            || async move { TcpStream::connect(addr).await.is_ok() },
        )
        .await;
        Nginx { _child: child, dir, addr }
    }

    fn file(&self, path: &str, bytes: &[u8]) {
        std::fs::write(self.dir.join("www").join(path.trim_start_matches('/')), bytes).unwrap();
    }

    fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("access.log")).unwrap_or_default()
    }

    /// The access log once it holds `want` lines, or after 5 s (then the test's own check
    /// says what is missing): nginx writes a request's line after sending the response, so a
    /// read right after the reply can miss the last one.
    fn access_log_with(&self, want: usize) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let seen = self.access_log();
            if seen.lines().count() >= want || std::time::Instant::now() >= deadline {
                return seen;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The running binary (tests/common) and its access log.
struct Running {
    bin: Binary,
    log: PathBuf,
}

impl std::ops::Deref for Running {
    type Target = Binary;
    fn deref(&self) -> &Binary {
        &self.bin
    }
}

impl Running {
    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric_value(&http_get(self.admin, "/metrics").await.1, name, labels)
    }
}

/// The binary with one site `a.test` → `upstream` carrying `site_extra`, an access log, TLS.
async fn start(dir: &Path, upstream: SocketAddr, site_extra: &str) -> (Running, Ca) {
    let ca = Ca::new(dir);
    let live = dir.join("live");
    ca.certbot(&live, "a.test", &["a.test"], "a.test");
    let log = dir.join("access.log");
    let http_extra = format!("access_log = {{ path = \"{}\" }}", log.display());
    let sites = format!("[[site]]\nhost = \"a.test\"\nupstream = \"http://{upstream}\"\n{site_extra}\n");
    let bin = spawn_binary(dir, &live, &http_extra, &sites).await;
    (Running { bin, log }, ca)
}

/// A response read off a raw connection.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    fn cors_headers(&self) -> Vec<&(String, String)> {
        self.headers.iter().filter(|(n, _)| n.to_ascii_lowercase().starts_with("access-control-")).collect()
    }
}

/// Send `request` (a whole HTTP/1.1 head) and read one answer (Content-Length or chunked);
/// `None` when the connection closes before a status line.
async fn exchange<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(s: &mut S, request: &str) -> Option<Answer> {
    s.write_all(request.as_bytes()).await.unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    if r.read_line(&mut line).await.ok()? == 0 {
        return None;
    }
    let status = line.split(' ').nth(1)?.parse().ok()?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        r.read_line(&mut line).await.ok()?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (n, v) = l.split_once(':')?;
        headers.push((n.trim().to_string(), v.trim().to_string()));
    }
    let chunked = headers.iter().any(|(n, v)| n.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let mut body = Vec::new();
    if chunked {
        loop {
            line.clear();
            r.read_line(&mut line).await.ok()?;
            let size = usize::from_str_radix(line.trim().split(';').next()?, 16).ok()?;
            let mut chunk = vec![0; size + 2];
            r.read_exact(&mut chunk).await.ok()?;
            if size == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..size]);
        }
    } else {
        let len: usize = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        body = vec![0; len];
        r.read_exact(&mut body).await.ok()?;
    }
    Some(Answer { status, headers, body })
}

fn get_head(path: &str, extra: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: a.test\r\n{extra}\r\n")
}

/// Every whole line of the access log.
fn log_lines(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let whole = text.rfind('\n').map(|i| &text[..=i]).unwrap_or("");
    whole.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

async fn wait_log(path: &Path, what: &str, pred: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let lines = log_lines(path);
        if pred(&lines) {
            return lines;
        }
        assert!(Instant::now() < end, "access log: timed out waiting for {what}: {lines:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// 50 requests a second allowed (burst 10), 200 a second offered from one client for 4 s:
/// about 10 + 50 × 4 pass, every other answer is 429 with Retry-After, each counted in the
/// metric and logged with status 429.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_lets_50_a_second_through_of_200_offered() {
    let tmp = tempfile::tempdir().unwrap();
    let nginx = Nginx::start(tmp.path()).await;
    nginx.file("index.html", b"hello\n");
    let (proxy, _ca) = start(tmp.path(), nginx.addr, "rate_limit = { requests = 50, per = \"1s\", burst = 10 }").await;

    let offered = 800u64;
    let passed = Arc::new(AtomicU64::new(0));
    let limited = Arc::new(AtomicU64::new(0));
    let other = Arc::new(AtomicU64::new(0));
    // 16 keep-alive connections take turns; one request every 5 ms.
    let (tx, rx) = async_channel_pair();
    let mut workers = Vec::new();
    for _ in 0..16 {
        let rx = rx.clone();
        let (passed, limited, other) = (passed.clone(), limited.clone(), other.clone());
        let addr = proxy.mesh_http;
        workers.push(tokio::spawn(async move {
            let mut s = connect_from("127.0.0.3".parse().unwrap(), addr).await;
            while rx.lock().await.recv().await.is_some() {
                let a = exchange(&mut s, &get_head("/index.html", "")).await.expect("an answer");
                match a.status {
                    200 => passed.fetch_add(1, Ordering::Relaxed),
                    429 => {
                        let retry: u64 = a.header("retry-after").expect("Retry-After on 429").parse().unwrap();
                        assert!((1..=2).contains(&retry), "Retry-After {retry}");
                        limited.fetch_add(1, Ordering::Relaxed)
                    }
                    _ => other.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    for _ in 0..offered {
        tick.tick().await;
        tx.send(()).await.unwrap();
    }
    drop(tx);
    for w in workers {
        w.await.unwrap();
    }
    let elapsed = start.elapsed().as_secs_f64();
    let (p, l, o) = (passed.load(Ordering::Relaxed), limited.load(Ordering::Relaxed), other.load(Ordering::Relaxed));
    println!(
        "offered {offered} in {elapsed:.2} s ({:.0}/s): {p} passed ({:.1}/s), {l} answered 429, {o} other; load {}",
        offered as f64 / elapsed,
        p as f64 / elapsed,
        load_average()
    );
    assert_eq!(o, 0);
    assert_eq!(p + l, offered);
    // GCRA: at most the burst plus 50 a second over the run; at least 90 % of 50 a second.
    let most = 10.0 + 50.0 * elapsed + 1.0;
    let least = 0.9 * 50.0 * elapsed;
    assert!((p as f64) <= most && (p as f64) >= least, "{p} passed in {elapsed:.2} s (want {least:.0}..={most:.0})");
    wait_until(Duration::from_secs(5), "the 429s counted", || async {
        proxy.metric("local_proxy_rate_limited_total", &[("site", "a.test"), ("route", "")]).await == l as f64
    })
    .await;
    let lines = wait_log(&proxy.log, "every request", |ls| ls.len() as u64 >= offered).await;
    let logged_429 = lines.iter().filter(|l| l["status"] == 429 && l["result"] == "rate_limited").count() as u64;
    assert_eq!(logged_429, l, "each 429 logged with result rate_limited");
    let seen = nginx.access_log_with(p as usize).lines().count() as u64;
    assert_eq!(seen, p, "nginx saw only the requests let through");
}

/// A tiny multi-consumer queue for the workers (tokio's mpsc has one receiver).
fn async_channel_pair() -> (tokio::sync::mpsc::Sender<()>, Arc<tokio::sync::Mutex<tokio::sync::mpsc::Receiver<()>>>) {
    let (tx, rx) = tokio::sync::mpsc::channel(1024);
    (tx, Arc::new(tokio::sync::Mutex::new(rx)))
}

/// One request from `client` through the trusted ingress (PROXY v2), closed with a reset so
/// 100,000 connections leave no TIME_WAIT behind.
async fn one_proxied_request(wan: SocketAddr, client: SocketAddr) -> u16 {
    let mut s = connect_with_proxy("127.0.0.2".parse().unwrap(), wan, client).await;
    let a = exchange(&mut s, &get_head("/index.html", "")).await.expect("an answer");
    // A reset instead of a FIN: no TIME_WAIT per connection (the drop does not block: the
    // socket has nothing left to send).
    #[allow(deprecated)]
    s.set_linger(Some(Duration::ZERO)).unwrap();
    a.status
}

/// 100,000 distinct client addresses (198.18.0.0/15, in PROXY v2 headers from the trusted
/// ingress) against a limiter holding at most 10,000: the table stays at its bound and the
/// process's memory stops growing once it is full.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_memory_is_bounded_over_100k_clients() {
    let tmp = tempfile::tempdir().unwrap();
    let nginx = Nginx::start(tmp.path()).await;
    nginx.file("index.html", b"hello\n");
    let (proxy, _ca) =
        start(tmp.path(), nginx.addr, "rate_limit = { requests = 5, per = \"1s\", max_clients = 10000 }").await;
    let wan = proxy.wan_http;
    let clients = Arc::new(AtomicU64::new(0));

    let run = |from: u32, to: u32| {
        let clients = clients.clone();
        async move {
            let next = Arc::new(AtomicU64::new(u64::from(from)));
            let mut workers = Vec::new();
            for _ in 0..32 {
                let (next, clients) = (next.clone(), clients.clone());
                workers.push(tokio::spawn(async move {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed) as u32;
                        if i >= to {
                            return;
                        }
                        let ip = IpAddr::V4((0xC612_0000u32 + i).into());
                        let status = one_proxied_request(wan, SocketAddr::new(ip, 40000)).await;
                        assert_eq!(status, 200, "client {ip}: its first request passes");
                        clients.fetch_add(1, Ordering::Relaxed);
                    }
                }));
            }
            for w in workers {
                w.await.unwrap();
            }
        }
    };

    let rss_start = proxy.rss_kib();
    let t = Instant::now();
    run(0, 20_000).await;
    let rss_full = proxy.rss_kib();
    let table_full = proxy.metric("local_proxy_rate_limit_clients", &[("site", "a.test"), ("route", "")]).await;
    run(20_000, 100_000).await;
    let rss_end = proxy.rss_kib();
    let table_end = proxy.metric("local_proxy_rate_limit_clients", &[("site", "a.test"), ("route", "")]).await;
    let evicted = proxy.metric("local_proxy_rate_limit_evictions_total", &[("site", "a.test"), ("route", "")]).await;
    println!(
        "{} distinct clients in {:.1} s; rate-limit table {table_full} after 20,000, {table_end} after 100,000 \
         (max_clients 10,000); RSS {rss_start} KiB at start, {rss_full} KiB after 20,000, {rss_end} KiB after \
         100,000 (+{} KiB for the last 80,000); {evicted} clients forgotten to make room; load {}",
        clients.load(Ordering::Relaxed),
        t.elapsed().as_secs_f64(),
        rss_end as i64 - rss_full as i64,
        load_average()
    );
    assert_eq!(clients.load(Ordering::Relaxed), 100_000);
    assert!((9_000.0..=10_000.0).contains(&table_full), "table {table_full}");
    assert!((9_000.0..=10_000.0).contains(&table_end), "table {table_end}");
    // Every client beyond what the table holds made room by forgetting one, and was counted.
    assert_eq!(evicted, 100_000.0 - table_end, "evictions counted");
    // Once the table is full, 80,000 more clients must not grow the process (8 MiB of slack
    // for allocator and connection churn; an unbounded table would add ~8 MB here).
    assert!(rss_end < rss_full + 8 * 1024, "RSS grew {} KiB after the table was full", rss_end - rss_full);
    // A client seen long ago was forgotten: it starts again with its burst.
    let status = one_proxied_request(wan, "198.18.0.1:40000".parse().unwrap()).await;
    assert_eq!(status, 200);
}

/// curl `--compressed` against the proxy: the body it decodes equals nginx's file.
async fn curl_compressed(proxy: &Running, accept: &str, path: &str, dir: &Path) -> (Vec<u8>, String) {
    let out_file = dir.join("curl.out");
    let head_file = dir.join("curl.head");
    let url = format!("http://a.test:{}{path}", proxy.mesh_http.port());
    let resolve = format!("a.test:{}:{MESH}", proxy.mesh_http.port());
    let out = run_tool(
        "curl",
        &[
            "-sS",
            "--max-time",
            "20",
            "--resolve",
            &resolve,
            "--compressed",
            "-H",
            &format!("Accept-Encoding: {accept}"),
            "-D",
            &head_file.display().to_string(),
            "-o",
            &out_file.display().to_string(),
            &url,
        ],
        b"",
    )
    .await;
    assert!(out.status.success(), "curl: {}", String::from_utf8_lossy(&out.stderr));
    (std::fs::read(&out_file).unwrap(), std::fs::read_to_string(&head_file).unwrap().to_ascii_lowercase())
}

/// Text that compresses like a web page (not one repeated byte).
fn page(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    let mut i = 0u64;
    while out.len() < len {
        out.extend_from_slice(
            format!("<p class=\"row-{}\">item {} of the list, {}</p>\n", i % 7, i, i * 31 % 1000).as_bytes(),
        );
        i += 1;
    }
    out.truncate(len);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_bodies_equal_the_upstreams_and_images_are_left_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let nginx = Nginx::start(tmp.path()).await;
    let html = page(200_000);
    nginx.file("page.html", &html);
    // Random bytes: what a PNG's compressed data looks like.
    let png: Vec<u8> = (0..50_000).map(|_| fastrand::u8(..)).collect();
    nginx.file("image.png", &png);
    nginx.file("small.txt", b"tiny\n");
    let (proxy, _ca) = start(tmp.path(), nginx.addr, "compression = true").await;

    for enc in ["gzip", "zstd", "br"] {
        let page_lines = |ls: &[Value]| ls.iter().filter(|l| l["uri"] == "/page.html").count();
        let before = page_lines(&log_lines(&proxy.log));
        let (body, head) = curl_compressed(&proxy, enc, "/page.html", tmp.path()).await;
        assert!(head.contains(&format!("content-encoding: {enc}")), "{enc}: {head}");
        assert!(head.contains("vary: accept-encoding"), "{head}");
        assert!(!head.contains("content-length"), "{head}");
        assert!(
            body == html,
            "{enc}: decoded body ({} bytes) differs from the file ({} bytes)",
            body.len(),
            html.len()
        );
        // What went over the wire was compressed: the access log's bytes_sent.
        let lines = wait_log(&proxy.log, "the page's line", |ls| page_lines(ls) > before).await;
        let sent = lines.iter().rev().find(|l| l["uri"] == "/page.html").unwrap()["bytes_sent"].as_u64().unwrap();
        println!("{enc}: 200,000-byte page sent as {sent} bytes");
        assert!(sent < 50_000, "{enc}: {sent} bytes sent");
    }
    // Preference when the client takes all three equally: zstd.
    let (_, head) = curl_compressed(&proxy, "gzip, deflate, br, zstd", "/page.html", tmp.path()).await;
    assert!(head.contains("content-encoding: zstd"), "{head}");
    let (_, head) = curl_compressed(&proxy, "zstd;q=0.5, gzip", "/page.html", tmp.path()).await;
    assert!(head.contains("content-encoding: gzip"), "{head}");

    let (body, head) = curl_compressed(&proxy, "gzip, zstd", "/image.png", tmp.path()).await;
    assert!(!head.contains("content-encoding"), "an image is not recompressed: {head}");
    assert!(head.contains("content-length: 50000"), "{head}");
    assert!(body == png);
    let (body, head) = curl_compressed(&proxy, "gzip", "/small.txt", tmp.path()).await;
    assert!(!head.contains("content-encoding") && body == b"tiny\n", "{head}");
    assert!(head.contains("vary: accept-encoding"), "{head}");

    // A client that asks for nothing gets the file as it is.
    let mut s = TcpStream::connect(proxy.mesh_http).await.unwrap();
    let a = exchange(&mut s, &get_head("/page.html", "")).await.unwrap();
    assert!(a.header("content-encoding").is_none() && a.body == html);

    assert!(
        proxy.metric("local_proxy_http_compressed_total", &[("site", "a.test"), ("encoding", "gzip")]).await >= 2.0
    );
    assert!(
        proxy.metric("local_proxy_http_compressed_total", &[("site", "a.test"), ("encoding", "zstd")]).await >= 2.0
    );
    assert!(proxy.metric("local_proxy_http_compressed_total", &[("site", "a.test"), ("encoding", "br")]).await >= 1.0);
}

/// nginx trickles a 1 MB text file at 250 KB/s without a length (chunked); through the proxy
/// with gzip, curl has decoded its first bytes long before nginx is done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_chunked_response_stays_streamed_when_compressed() {
    let tmp = tempfile::tempdir().unwrap();
    let nginx = Nginx::start(tmp.path()).await;
    let text = page(1_000_000);
    nginx.file("slow/big.txt", &text);
    let (proxy, _ca) = start(tmp.path(), nginx.addr, "compression = true").await;

    let url = format!("http://a.test:{}/slow/big.txt", proxy.mesh_http.port());
    let resolve = format!("a.test:{}:{MESH}", proxy.mesh_http.port());
    let start = Instant::now();
    let mut child = Command::new("curl")
        .args(["-sS", "-N", "--max-time", "30", "--resolve", &resolve, "--compressed", "-H", "Accept-Encoding: gzip"])
        .args(["-D", &tmp.path().join("head").display().to_string(), &url])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut got = Vec::new();
    let mut buf = vec![0; 65536];
    let mut first = None;
    loop {
        let n = out.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        first.get_or_insert_with(|| start.elapsed());
        got.extend_from_slice(&buf[..n]);
    }
    let total = start.elapsed();
    assert!(child.wait().await.unwrap().success());
    let head = std::fs::read_to_string(tmp.path().join("head")).unwrap().to_ascii_lowercase();
    let first = first.expect("some body");
    println!(
        "slow chunked response, gzip: first decoded bytes after {first:?}, whole 1 MB after {total:?}; load {}",
        load_average()
    );
    assert!(head.contains("transfer-encoding: chunked") && head.contains("content-encoding: gzip"), "{head}");
    assert!(got == text, "decoded {} bytes, want the file's {}", got.len(), text.len());
    assert!(total > Duration::from_secs(3), "nginx's rate limit makes it take ~4 s, took {total:?}");
    assert!(first < Duration::from_secs(1) && first * 4 < total, "first bytes after {first:?} of {total:?}");
}

/// What a browser sends for a cross-origin PUT with credentials and custom headers.
fn browser_preflight(origin: &str) -> String {
    format!(
        "OPTIONS /api/items.json HTTP/1.1\r\nHost: a.test\r\nOrigin: {origin}\r\n\
         Access-Control-Request-Method: PUT\r\nAccess-Control-Request-Headers: authorization,content-type\r\n\
         User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n\
         Accept: */*\r\nAccept-Language: en-US,en;q=0.5\r\nSec-Fetch-Mode: cors\r\nSec-Fetch-Site: cross-site\r\n\
         Sec-Fetch-Dest: empty\r\nReferer: {origin}/\r\n\r\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_preflight_and_actual_requests_as_a_browser_sends_them() {
    let tmp = tempfile::tempdir().unwrap();
    let nginx = Nginx::start(tmp.path()).await;
    nginx.file("api/items.json", b"[1,2,3]\n");
    let (proxy, _ca) = start(
        tmp.path(),
        nginx.addr,
        r#"[site.cors]
allow_origins = ["https://app.example.org", "https://*.dev.example.org"]
allow_methods = ["GET", "PUT", "DELETE"]
allow_headers = ["authorization", "content-type"]
allow_credentials = true
expose_headers = ["x-total-count"]
max_age = "10m""#,
    )
    .await;

    // Preflight from an allowed origin: answered by the proxy.
    let mut s = TcpStream::connect(proxy.mesh_http).await.unwrap();
    let a = exchange(&mut s, &browser_preflight("https://app.example.org")).await.unwrap();
    println!("preflight: {} {:?}", a.status, a.cors_headers());
    assert_eq!(a.status, 204);
    assert_eq!(a.header("access-control-allow-origin"), Some("https://app.example.org"));
    assert_eq!(a.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(a.header("access-control-allow-methods"), Some("GET, PUT, DELETE"));
    assert_eq!(a.header("access-control-allow-headers"), Some("authorization, content-type"));
    assert_eq!(a.header("access-control-max-age"), Some("600"));
    assert!(a.header("vary").unwrap().contains("origin"));
    // A subdomain pattern, on the same connection.
    let a = exchange(&mut s, &browser_preflight("https://feature-42.dev.example.org")).await.unwrap();
    assert_eq!(a.header("access-control-allow-origin"), Some("https://feature-42.dev.example.org"));
    // The actual request: nginx's own `*` is replaced by the policy.
    let actual = "GET /api/items.json HTTP/1.1\r\nHost: a.test\r\nOrigin: https://app.example.org\r\n\
                  Cookie: session=abc\r\nAuthorization: Bearer t\r\nSec-Fetch-Mode: cors\r\n\r\n";
    let a = exchange(&mut s, actual).await.unwrap();
    println!("actual: {} {:?}", a.status, a.cors_headers());
    assert_eq!(a.status, 200);
    assert_eq!(a.body, b"[1,2,3]\n");
    assert_eq!(a.header("access-control-allow-origin"), Some("https://app.example.org"));
    assert_eq!(a.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(a.header("access-control-expose-headers"), Some("x-total-count"));
    assert_eq!(a.header("x-total-count"), Some("7"));
    assert!(a.header("vary").unwrap().contains("origin"));
    assert_eq!(a.cors_headers().len(), 3, "{:?}", a.cors_headers());

    // An origin not allowed: no CORS headers at all, on the preflight and the request.
    let a = exchange(&mut s, &browser_preflight("https://evil.example.net")).await.unwrap();
    assert_eq!(a.status, 204);
    assert!(a.cors_headers().is_empty(), "{:?}", a.cors_headers());
    let a = exchange(&mut s, &actual.replace("https://app.example.org", "https://dev.example.org")).await.unwrap();
    assert_eq!(a.status, 200);
    assert!(a.cors_headers().is_empty(), "{:?}", a.cors_headers());

    // nginx saw the two GETs only: the preflights stayed at the proxy.
    let seen = nginx.access_log_with(2);
    assert_eq!(seen.lines().count(), 2, "{seen}");
    assert!(!seen.contains("OPTIONS"), "{seen}");
    assert_eq!(proxy.metric("local_proxy_cors_total", &[("site", "a.test"), ("result", "preflight")]).await, 2.0);
    assert_eq!(
        proxy.metric("local_proxy_cors_total", &[("site", "a.test"), ("result", "preflight_denied")]).await,
        1.0
    );
    assert_eq!(proxy.metric("local_proxy_cors_total", &[("site", "a.test"), ("result", "denied")]).await, 1.0);
    let lines = wait_log(&proxy.log, "5 lines", |ls| ls.len() >= 5).await;
    assert_eq!(lines.iter().filter(|l| l["result"] == "cors_preflight" && l["status"] == 204).count(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_clients_are_closed_or_refused_and_logged() {
    let tmp = tempfile::tempdir().unwrap();
    let nginx = Nginx::start(tmp.path()).await;
    nginx.file("index.html", b"hello\n");
    let (proxy, ca) = start(tmp.path(), nginx.addr, "hostile = true\nblock_scanners = true").await;

    // A scanner's user agent over HTTP/1.1: the connection closes without a single byte.
    let mut s = TcpStream::connect(proxy.mesh_http).await.unwrap();
    s.write_all(get_head("/", "User-Agent: sqlmap/1.7.2#stable (https://sqlmap.org)\r\n").as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await.expect("closed within 5 s");
    assert!(read.is_ok_and(|n| n == 0) || out.is_empty(), "got {:?}", String::from_utf8_lossy(&out));
    assert!(out.is_empty());
    // Over h2 with TLS: the stream is reset, curl gets no status.
    let (stdout, stderr, ok) = curl(
        &["--http2", "-A", "Mozilla/5.00 (Nikto/2.5.0)", "-w", "%{http_code}"],
        "a.test",
        proxy.mesh_https,
        &ca.pem_path,
        "/h2",
    )
    .await;
    println!("h2 scanner: curl ok={ok} out={stdout:?} err={}", stderr.trim());
    assert!(!ok && (stdout.is_empty() || stdout == "000"), "{stdout} {stderr}");
    // The Cloudflare-worker headers: 403.
    for header in ["CF-Worker: someone.workers.dev", "CDN-Loop: cloudflare; loops=1"] {
        let mut s = TcpStream::connect(proxy.mesh_http).await.unwrap();
        let a = exchange(&mut s, &get_head("/cf", &format!("{header}\r\n"))).await.unwrap();
        assert_eq!(a.status, 403, "{header}");
    }
    // A scanner path: a scanner that names itself is closed there too, anyone else gets 404.
    let mut s = TcpStream::connect(proxy.mesh_http).await.unwrap();
    assert!(exchange(&mut s, &get_head("/wp-admin/", "User-Agent: WPScan v3.8.25\r\n")).await.is_none());
    let mut s = TcpStream::connect(proxy.mesh_http).await.unwrap();
    assert_eq!(exchange(&mut s, &get_head("/wp-admin/", "")).await.unwrap().status, 404);
    // Anyone else passes, another CDN's loop header included.
    let mut s = TcpStream::connect(proxy.mesh_http).await.unwrap();
    let ua = "User-Agent: Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0\r\nCDN-Loop: Fastly\r\n";
    assert_eq!(exchange(&mut s, &get_head("/index.html", ua)).await.unwrap().status, 200);

    assert_eq!(proxy.metric("local_proxy_hostile_total", &[("site", "a.test"), ("rule", "user_agent")]).await, 3.0);
    assert_eq!(proxy.metric("local_proxy_hostile_total", &[("site", "a.test"), ("rule", "header")]).await, 2.0);
    let lines = wait_log(&proxy.log, "7 lines", |ls| ls.len() >= 7).await;
    let closed: Vec<&Value> = lines.iter().filter(|l| l["status"] == 444).collect();
    assert_eq!(closed.len(), 3, "{lines:#?}");
    assert!(closed.iter().all(|l| l["result"] == "closed" && l["bytes_sent"] == 0));
    assert!(closed.iter().any(|l| l["proto"] == "HTTP/2"));
    assert_eq!(lines.iter().filter(|l| l["status"] == 403 && l["result"] == "refused").count(), 2);
    let seen = nginx.access_log_with(1);
    assert_eq!(seen.lines().count(), 1, "nginx saw the ordinary request only: {seen}");
}

/// Routes inherit the site's middlewares, replace them with their own, or turn them off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_inherit_replace_or_turn_off_the_sites_middlewares() {
    let tmp = tempfile::tempdir().unwrap();
    let nginx = Nginx::start(tmp.path()).await;
    nginx.file("index.html", b"hello\n");
    nginx.file("api/items.json", b"[1,2,3]\n");
    std::fs::create_dir_all(nginx.dir.join("www/open")).unwrap();
    let html = page(20_000);
    nginx.file("open/page.html", &html);
    let (proxy, _ca) = start(
        tmp.path(),
        nginx.addr,
        r#"hostile = true
rate_limit = { requests = 100, burst = 100 }
[[site.route]]
path_prefix = "/api"
rate_limit = { requests = 1, per = "1m", burst = 2 }
cors = { allow_origins = ["https://app.example.org"] }
[[site.route]]
path_prefix = "/open"
hostile = false
rate_limit = false
compression = true"#,
    )
    .await;
    let mut s = TcpStream::connect(proxy.mesh_http).await.unwrap();
    let origin = "Origin: https://app.example.org\r\n";
    // /api: its own limit (2 at once, then one a minute) and its own CORS policy.
    let statuses: Vec<u16> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            v.push(exchange(&mut s, &get_head("/api/items.json", origin)).await.unwrap().status);
        }
        v
    };
    assert_eq!(statuses, [200, 200, 429]);
    let a = exchange(&mut s, &get_head("/index.html", origin)).await.unwrap();
    assert_eq!(a.status, 200, "the site's own budget is another one");
    assert!(a.cors_headers().is_empty(), "no CORS policy outside /api: {:?}", a.cors_headers());
    // /open: no hostile rules, no rate limit, compression on.
    let ua = "User-Agent: sqlmap/1.7\r\nAccept-Encoding: gzip\r\n";
    for _ in 0..3 {
        let a = exchange(&mut s, &get_head("/open/page.html", ua)).await.unwrap();
        assert_eq!((a.status, a.header("content-encoding")), (200, Some("gzip")));
    }
    // Elsewhere the site's hostile rules close the connection.
    assert!(exchange(&mut s, &get_head("/index.html", ua)).await.is_none());
    assert_eq!(proxy.metric("local_proxy_rate_limited_total", &[("site", "a.test"), ("route", "/api")]).await, 1.0);
}
