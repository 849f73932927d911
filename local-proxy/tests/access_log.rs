//! Access logs, with the binary as deployed: requests over HTTP/1.1 (mesh, and WAN with a
//! PROXY v2 header from the trusted ingress) and h2 over TLS (curl) are each one JSON line,
//! checked field by field; request bodies counted (`bytes_received`: Content-Length and
//! chunked over HTTP/1.1, h2, read whole or streamed); a WebSocket logged when it closes with
//! its bytes both ways; a site's own file and the `[http]` default; files created 0640;
//! a file renamed and SIGUSR1 sent while requests flow: every answered request is one whole
//! line in the old file or the new one.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The running binary (tests/common).
type Running = Binary;

/// Start the binary on fixed free ports with `sites` and `http_extra` (in `[http]`).
async fn start(dir: &Path, live: &Path, http_extra: &str, sites: &str) -> Running {
    spawn_binary(dir, live, http_extra, sites).await
}

/// One HTTP/1.1 GET with extra header lines on `s`; returns (status, body length).
async fn get<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    s: &mut S,
    host: &str,
    path: &str,
    extra: &str,
) -> (u16, usize) {
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n{extra}\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await.expect("answer within 10s").unwrap();
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.len()).unwrap_or(0);
    (status, body)
}

/// The line whose `uri` is `uri`.
fn by_uri<'a>(all: &'a [Value], uri: &str) -> &'a Value {
    all.iter().find(|l| l["uri"] == uri).unwrap_or_else(|| panic!("no line for {uri} in {all:#?}"))
}

fn setup_certs(dir: &Path) -> (Ca, PathBuf) {
    let ca = Ca::new(dir);
    let live = dir.join("live");
    ca.certbot(&live, "a.test", &["a.test"], "a.test");
    (ca, live)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_request_is_one_json_line_with_its_fields() {
    let tmp = tempfile::tempdir().unwrap();
    let (ca, live) = setup_certs(tmp.path());
    let up = echo_upstream("a").await;
    let dead = closed_port().await;
    let (site_log, default_log) = (tmp.path().join("a.log"), tmp.path().join("default.log"));
    let proxy = start(
        tmp.path(),
        &live,
        &format!(r#"access_log = {{ path = "{}" }}"#, default_log.display()),
        &format!(
            r#"
[[site]]
host = "a.test"
upstream = "http://{up}"
block_scanners = true
access_log = {{ path = "{}", format = "json" }}
[[site]]
host = "b.test"
upstream = "http://{up}"
[[site]]
host = "down.test"
upstream = "http://{dead}"
"#,
            site_log.display()
        ),
    )
    .await;

    // HTTP/1.1 on the mesh listener: the peer is the client.
    let mut s = connect_from("127.0.0.3".parse().unwrap(), proxy.mesh_http).await;
    let extra = "User-Agent: test-agent/1.0\r\nReferer: https://ref.example/page\r\nX-Request-Id: req-42\r\n";
    let (status, body_len) = get(&mut s, "a.test", "/hello?x=1&y=2", extra).await;
    assert_eq!(status, 200);
    // The WAN listener behind the trusted ingress: the PROXY header names the client.
    let client: SocketAddr = "203.0.113.7:4242".parse().unwrap();
    let mut s = connect_with_proxy("127.0.0.2".parse().unwrap(), proxy.wan_http, client).await;
    assert_eq!(get(&mut s, "a.test", "/wp-admin/setup.php", "").await.0, 404);
    // h2 over TLS.
    let (out, err, ok) = curl(&["--http2", "-A", "curl-h2"], "a.test", proxy.mesh_https, &ca.pem_path, "/h2").await;
    assert!(ok && out.contains("upstream: a"), "{err}{out}");
    // The default log: another site, no site, an upstream that refuses.
    let mut s = connect_from("127.0.0.3".parse().unwrap(), proxy.mesh_http).await;
    assert_eq!(get(&mut s, "b.test", "/b", "").await.0, 200);
    let mut s = connect_from("127.0.0.3".parse().unwrap(), proxy.mesh_http).await;
    assert_eq!(get(&mut s, "nosuch.test", "/none", "").await.0, 404);
    let mut s = connect_from("127.0.0.3".parse().unwrap(), proxy.mesh_http).await;
    assert_eq!(get(&mut s, "down.test", "/down", "").await.0, 502);

    let a = wait_lines(&site_log, 3).await;
    assert_eq!(a.len(), 3, "{a:#?}");
    let l = by_uri(&a, "/hello?x=1&y=2");
    println!("{l}");
    assert_eq!(l["site"], "a.test");
    assert_eq!(l["client"], "127.0.0.3");
    assert!(l["client_port"].as_u64().unwrap() > 0);
    assert_eq!(l["method"], "GET");
    assert_eq!(l["host"], "a.test");
    assert_eq!(l["proto"], "HTTP/1.1");
    assert_eq!(l["status"], 200);
    assert_eq!(l["bytes_sent"], body_len as u64);
    assert!(body_len > 0);
    assert_eq!(l["bytes_received"], 0);
    assert!(l["duration_ms"].as_f64().unwrap() >= l["upstream_ms"].as_f64().unwrap());
    assert_eq!(l["upstream"], format!("http://{up}"));
    assert_eq!(l["upstream_status"], 200);
    assert_eq!(l["upstream_attempts"], 1);
    assert_eq!(l["result"], Value::Null);
    assert_eq!(l["tls_sni"], Value::Null);
    assert_eq!(l["tls_version"], Value::Null);
    assert_eq!(l["tls_cipher"], Value::Null);
    assert_eq!(l["user_agent"], "test-agent/1.0");
    assert_eq!(l["referer"], "https://ref.example/page");
    assert_eq!(l["request_id"], "req-42");
    let time = humantime::parse_rfc3339(l["time"].as_str().unwrap()).unwrap();
    let age = std::time::SystemTime::now().duration_since(time).unwrap();
    assert!(age < Duration::from_secs(60), "time {age:?} ago");

    let l = by_uri(&a, "/wp-admin/setup.php");
    assert_eq!(l["client"], "203.0.113.7");
    assert_eq!(l["client_port"], 4242);
    assert_eq!((l["status"].as_u64(), l["result"].as_str()), (Some(404), Some("blocked")));
    assert_eq!(l["upstream"], Value::Null);
    assert_eq!(l["user_agent"], Value::Null);

    let l = by_uri(&a, "/h2");
    assert_eq!(l["proto"], "HTTP/2");
    assert_eq!(l["tls_sni"], "a.test");
    assert_eq!(l["tls_version"], "TLSv1.3");
    assert!(l["tls_cipher"].as_str().is_some_and(|c| c.starts_with("TLS13_")), "{}", l["tls_cipher"]);
    assert_eq!(l["user_agent"], "curl-h2");
    assert_eq!(l["bytes_sent"], out.len() as u64);
    assert_eq!(l["bytes_received"], 0);
    assert_eq!(l["status"], 200);

    let d = wait_lines(&default_log, 3).await;
    assert_eq!(d.len(), 3, "{d:#?}");
    assert_eq!(by_uri(&d, "/b")["site"], "b.test");
    let l = by_uri(&d, "/none");
    assert_eq!(
        (l["site"].clone(), l["result"].clone(), l["status"].clone()),
        (Value::Null, "unknown_site".into(), 404.into())
    );
    let l = by_uri(&d, "/down");
    assert_eq!(l["site"], "down.test");
    assert_eq!(l["status"], 502);
    assert_eq!(l["upstream"], format!("http://{dead}"));
    assert_eq!(l["upstream_status"], Value::Null);

    for f in [&site_log, &default_log] {
        assert_eq!(std::fs::metadata(f).unwrap().permissions().mode() & 0o777, 0o640, "{}", f.display());
    }
}

/// Send `head` (without its blank line) and `body` on a new mesh connection from 127.0.0.3;
/// returns (status, what the echo upstream says it read: its `body-bytes:` line).
async fn send_body(addr: SocketAddr, head: &str, body: &[u8]) -> (u16, String) {
    let mut s = connect_from(IpAddr::from([127, 0, 0, 3]), addr).await;
    s.write_all(format!("{head}\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await.expect("answer within 10s").unwrap();
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let read = text.lines().find_map(|l| l.strip_prefix("body-bytes: ")).unwrap_or("none").to_string();
    (status, read)
}

/// `bytes_received` is the request body as read from the client: a streamed POST, a small
/// PUT read whole (for a retry), a chunked POST (its payload, not the chunk framing), an h2
/// POST; a WebSocket's line is written when it closes, with status 101, the bytes through the
/// tunnel both ways and the duration up to the close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_and_websockets_are_counted() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let tmp = tempfile::tempdir().unwrap();
    let (ca, live) = setup_certs(tmp.path());
    let up = echo_upstream("a").await;
    let ws = ws_upstream().await;
    let log = tmp.path().join("access.log");
    let proxy = start(
        tmp.path(),
        &live,
        &format!(r#"access_log = {{ path = "{}" }}"#, log.display()),
        &format!("[[site]]\nhost = \"a.test\"\nupstream = \"http://{up}\"\n[[site]]\nhost = \"ws.test\"\nupstream = \"http://{ws}\"\n"),
    )
    .await;
    let body: Vec<u8> = (0..100_000u32).map(|i| b'a' + (i % 26) as u8).collect();

    // A POST streams to the upstream (it cannot be retried); a small PUT is read whole first.
    let head = format!("POST /post HTTP/1.1\r\nHost: a.test\r\nContent-Length: {}", body.len());
    assert_eq!(send_body(proxy.mesh_http, &head, &body).await, (200, "100000".into()));
    let head = "PUT /put HTTP/1.1\r\nHost: a.test\r\nContent-Length: 1234";
    assert_eq!(send_body(proxy.mesh_http, head, &body[..1234]).await, (200, "1234".into()));
    // Chunked: 3000 + 17 bytes of payload in 24 bytes of framing.
    let mut chunked = b"bb8\r\n".to_vec();
    chunked.extend_from_slice(&body[..3000]);
    chunked.extend_from_slice(b"\r\n11\r\n");
    chunked.extend_from_slice(&body[..17]);
    chunked.extend_from_slice(b"\r\n0\r\n\r\n");
    let head = "POST /chunked HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked";
    assert_eq!(send_body(proxy.mesh_http, head, &chunked).await, (200, "3017".into()));
    // h2 over TLS (curl).
    let file = tmp.path().join("body.bin");
    std::fs::write(&file, &body[..70_000]).unwrap();
    let data = format!("@{}", file.display());
    let (out, err, ok) =
        curl(&["--http2", "--data-binary", &data], "a.test", proxy.mesh_https, &ca.pem_path, "/h2post").await;
    assert!(ok && out.contains("body-bytes: 70000"), "{err}{out}");

    let all = wait_lines(&log, 4).await;
    for (uri, proto, method, n) in [
        ("/post", "HTTP/1.1", "POST", 100_000),
        ("/put", "HTTP/1.1", "PUT", 1234),
        ("/chunked", "HTTP/1.1", "POST", 3017),
        ("/h2post", "HTTP/2", "POST", 70_000),
    ] {
        let l = by_uri(&all, uri);
        println!("{l}");
        assert_eq!((l["proto"].as_str(), l["method"].as_str()), (Some(proto), Some(method)), "{l}");
        assert_eq!(l["status"], 200, "{l}");
        assert_eq!(l["bytes_received"], n, "{l}");
    }

    // A WebSocket: 1000 bytes each way, open for at least 300 ms.
    let s = connect_from(IpAddr::from([127, 0, 0, 3]), proxy.mesh_http).await;
    let opened = std::time::Instant::now();
    let (mut c, resp) = tokio_tungstenite::client_async("ws://ws.test/chat", s).await.unwrap();
    assert_eq!(resp.status(), 101);
    let msg = Message::binary(body[..1000].to_vec());
    c.send(msg.clone()).await.unwrap();
    let echoed = tokio::time::timeout(Duration::from_secs(5), c.next()).await.expect("echo within 5s");
    assert_eq!(echoed.unwrap().unwrap(), msg);
    // Open: the 101 is sent, the line is not written yet (it was, at the 101, before).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(lines(&log).iter().all(|l| l["uri"] != "/chat"), "logged before the WebSocket closed");
    c.close(None).await.unwrap();
    // Bounded: the close handshake, then the end of the stream.
    for _ in 0..10 {
        match tokio::time::timeout(Duration::from_secs(5), c.next()).await.expect("closed within 5s") {
            None | Some(Err(_)) => break,
            Some(Ok(_)) => {}
        }
    }
    // The tunnel ends once both sides have closed.
    drop(c);
    let all = wait_lines(&log, 5).await;
    let open_for = opened.elapsed();
    let l = by_uri(&all, "/chat");
    println!("{l}");
    assert_eq!(l["status"], 101);
    assert_eq!(l["upstream"], format!("http://{ws}"));
    // Client frames: 1000 bytes of payload, 2 + 2 (length) + 4 (mask) of header, and the
    // close frame (6 + its payload); the upstream's: 1000 + 4 and its close frame.
    let (rx, tx) = (l["bytes_received"].as_u64().unwrap(), l["bytes_sent"].as_u64().unwrap());
    assert!((1008 + 6..1008 + 6 + 64).contains(&rx), "bytes_received {rx}");
    assert!((1004 + 2..1004 + 2 + 64).contains(&tx), "bytes_sent {tx}");
    let ms = l["duration_ms"].as_f64().unwrap();
    // From the request to the close: within the time from before the connect to the line.
    assert!(ms >= 300.0 && ms <= open_for.as_secs_f64() * 1000.0, "duration_ms {ms}, open {open_for:?}");
}

/// logrotate's way: rename the file, SIGUSR1, new lines go to a new file; with requests
/// flowing throughout, every answered request is exactly one whole line in one of the two.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renamed_file_and_sigusr1_move_new_lines_to_a_new_file() {
    // The packaged unit's umask, inherited by the proxy: its new files are still 0640 (this
    // test runs in a process of its own).
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    let tmp = tempfile::tempdir().unwrap();
    let (_ca, live) = setup_certs(tmp.path());
    let up = echo_upstream("a").await;
    let log = tmp.path().join("access.log");
    let rotated = tmp.path().join("access.log.1");
    let proxy = start(
        tmp.path(),
        &live,
        "",
        &format!(
            "[[site]]\nhost = \"a.test\"\nupstream = \"http://{up}\"\naccess_log = {{ path = \"{}\" }}\n",
            log.display()
        ),
    )
    .await;

    // Four clients, 150 requests each, a new connection per request.
    const CLIENTS: usize = 4;
    const EACH: usize = 150;
    let answered = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let (answered, addr) = (answered.clone(), proxy.mesh_http);
        tasks.push(tokio::spawn(async move {
            for i in 0..EACH {
                let mut s = connect_from(IpAddr::from([127, 0, 0, 3]), addr).await;
                let (status, _) = get(&mut s, "a.test", &format!("/c{c}/{i}"), "").await;
                assert_eq!(status, 200);
                answered.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    let l = log.clone();
    wait_until(Duration::from_secs(20), "100 lines before the rotation", || {
        let l = l.clone();
        async move { lines(&l).len() >= 100 }
    })
    .await;
    std::fs::rename(&log, &rotated).unwrap();
    assert!(run_tool("kill", &["-USR1", &proxy.pid], b"").await.status.success());
    for t in tasks {
        t.await.unwrap();
    }
    let total = (CLIENTS * EACH) as u64;
    assert_eq!(answered.load(Ordering::SeqCst), total);
    let (r, l) = (rotated.clone(), log.clone());
    wait_until(Duration::from_secs(10), "every request logged", || {
        let (r, l) = (r.clone(), l.clone());
        async move { (lines(&r).len() + lines(&l).len()) as u64 >= total }
    })
    .await;
    let (old, new) = (lines(&rotated), lines(&log));
    for f in [&rotated, &log] {
        assert!(std::fs::read_to_string(f).unwrap().ends_with('\n'), "{} ends mid-line", f.display());
    }
    println!("rotated file: {} lines, new file: {} lines", old.len(), new.len());
    assert_eq!((old.len() + new.len()) as u64, total, "lines lost or doubled");
    assert!(old.len() >= 100 && !new.is_empty(), "old {} new {}", old.len(), new.len());
    let mut uris: Vec<String> = old.iter().chain(&new).map(|l| l["uri"].as_str().unwrap().to_string()).collect();
    uris.sort();
    uris.dedup();
    assert_eq!(uris.len() as u64, total, "each request exactly once");
    assert_eq!(std::fs::metadata(&log).unwrap().permissions().mode() & 0o777, 0o640);

    // Quiet now: one more request goes to the new file, none to the old one.
    let mut s = connect_from(IpAddr::from([127, 0, 0, 3]), proxy.mesh_http).await;
    assert_eq!(get(&mut s, "a.test", "/after", "").await.0, 200);
    let after = wait_lines(&log, new.len() + 1).await;
    assert_eq!(after.last().unwrap()["uri"], "/after");
    assert_eq!(lines(&rotated).len(), old.len());
}

async fn get_a(proxy: &Running, path: &str) {
    let mut s = connect_from(IpAddr::from([127, 0, 0, 3]), proxy.mesh_http).await;
    assert_eq!(get(&mut s, "a.test", path, "").await.0, 200);
}

fn uris(path: &Path) -> Vec<String> {
    lines(path).iter().map(|l| l["uri"].as_str().unwrap().to_string()).collect()
}

/// SIGHUP reopens a renamed file too; a reload moves a site's lines to its new path; a reload
/// naming a path that cannot be opened is refused and logging goes on where it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reopens_and_reloads_move_or_keep_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let (_ca, live) = setup_certs(tmp.path());
    let up = echo_upstream("a").await;
    let (log, moved, renamed) = (tmp.path().join("a.log"), tmp.path().join("b.log"), tmp.path().join("a.log.1"));
    let proxy = start(
        tmp.path(),
        &live,
        "",
        &format!(
            "[[site]]\nhost = \"a.test\"\nupstream = \"http://{up}\"\naccess_log = {{ path = \"{}\" }}\n",
            log.display()
        ),
    )
    .await;
    get_a(&proxy, "/1").await;
    wait_lines(&log, 1).await;

    std::fs::rename(&log, &renamed).unwrap();
    proxy.reload("", "", "ok").await;
    get_a(&proxy, "/2").await;
    wait_lines(&log, 1).await;
    assert_eq!((uris(&renamed), uris(&log)), (vec!["/1".to_string()], vec!["/2".to_string()]));

    let log_s = log.display().to_string();
    let missing = tmp.path().join("no-such-dir/a.log").display().to_string();
    proxy.reload(&log_s, &missing, "invalid").await;
    get_a(&proxy, "/3").await;
    wait_lines(&log, 2).await;

    proxy.reload(&missing, &moved.display().to_string(), "ok").await;
    get_a(&proxy, "/4").await;
    wait_lines(&moved, 1).await;
    assert_eq!(uris(&log), vec!["/2".to_string(), "/3".to_string()]);
    assert_eq!(uris(&moved), vec!["/4".to_string()]);
}

/// Lines wait in the writer's buffer (up to its `flush`, an hour here, so only the drain's
/// end can have written them): a SIGTERM right after the last answer still leaves every
/// request's line in the file when the process has exited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_writes_the_buffered_lines_before_exit() {
    let tmp = tempfile::tempdir().unwrap();
    let (_ca, live) = setup_certs(tmp.path());
    let up = echo_upstream("a").await;
    let log = tmp.path().join("term.log");
    let mut proxy = start(
        tmp.path(),
        &live,
        "",
        &format!(
            "[[site]]\nhost = \"a.test\"\nupstream = \"http://{up}\"\naccess_log = {{ path = \"{}\", flush = \"1h\" }}\n",
            log.display()
        ),
    )
    .await;
    const REQUESTS: usize = 20;
    for i in 0..REQUESTS {
        get_a(&proxy, &format!("/t{i}")).await;
    }
    assert!(run_tool("kill", &["-TERM", &proxy.pid], b"").await.status.success());
    let status =
        tokio::time::timeout(Duration::from_secs(20), proxy.child.wait()).await.expect("exits within 20 s").unwrap();
    assert!(status.success(), "{status}");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.ends_with('\n'));
    let got = uris(&log);
    assert_eq!(got, (0..REQUESTS).map(|i| format!("/t{i}")).collect::<Vec<_>>());
}

/// A reload refused for another reason (a second site's log cannot be opened) does not change
/// the running file's `flush`: a line logged after it stays buffered (an hour) until the next
/// signal. (The signal itself has every writer reopen its file at once, writing what waits.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_reload_keeps_the_running_flush() {
    let tmp = tempfile::tempdir().unwrap();
    let (_ca, live) = setup_certs(tmp.path());
    let up = echo_upstream("a").await;
    let (log, other) = (tmp.path().join("a.log"), tmp.path().join("b.log"));
    let missing = tmp.path().join("no-such-dir/b.log");
    let sites = |flush: &str, b: &Path| {
        format!(
            "[[site]]\nhost = \"a.test\"\nupstream = \"http://{up}\"\naccess_log = {{ path = \"{}\", flush = \"{flush}\" }}\n\
             [[site]]\nhost = \"b.test\"\nupstream = \"http://{up}\"\naccess_log = {{ path = \"{}\" }}\n",
            log.display(),
            b.display()
        )
    };
    let (first, refused, taken) = (sites("1h", &other), sites("20ms", &missing), sites("20ms", &other));
    let proxy = start(tmp.path(), &live, "", &first).await;

    proxy.reload(&first, &refused, "invalid").await;
    // The signal's reopen (before the reload) is done; the line comes after it.
    tokio::time::sleep(Duration::from_millis(100)).await;
    get_a(&proxy, "/waiting").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(lines(&log).is_empty(), "the refused reload's 20ms flush was applied: {:?}", lines(&log));

    proxy.reload(&refused, &taken, "ok").await;
    wait_lines(&log, 1).await;
    assert_eq!(uris(&log), vec!["/waiting".to_string()]);
}

/// A reload that names a new file for one site and is then refused for another site's log
/// leaves no empty file behind; the same file in a reload that is taken is made and stays,
/// empty until a request comes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_reload_leaves_no_new_file() {
    let tmp = tempfile::tempdir().unwrap();
    let (_ca, live) = setup_certs(tmp.path());
    let up = echo_upstream("a").await;
    let (log, new, other) = (tmp.path().join("a.log"), tmp.path().join("new.log"), tmp.path().join("b.log"));
    let missing = tmp.path().join("no-such-dir/b.log");
    let sites = |a: &Path, b: &Path| {
        format!(
            "[[site]]\nhost = \"a.test\"\nupstream = \"http://{up}\"\naccess_log = {{ path = \"{}\" }}\n\
             [[site]]\nhost = \"b.test\"\nupstream = \"http://{up}\"\naccess_log = {{ path = \"{}\" }}\n",
            a.display(),
            b.display()
        )
    };
    let (first, refused, taken) = (sites(&log, &other), sites(&new, &missing), sites(&new, &other));
    let proxy = start(tmp.path(), &live, "", &first).await;

    proxy.reload(&first, &refused, "invalid").await;
    wait_until(Duration::from_secs(10), "the refused reload's file removed", || async { !new.exists() }).await;
    get_a(&proxy, "/old").await;
    wait_lines(&log, 1).await;

    proxy.reload(&refused, &taken, "ok").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(new.exists(), "the file of the reload taken was not made (or removed)");
    get_a(&proxy, "/new").await;
    wait_lines(&new, 1).await;
    assert_eq!((uris(&log), uris(&new)), (vec!["/old".to_string()], vec!["/new".to_string()]));
}
