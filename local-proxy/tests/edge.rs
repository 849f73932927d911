//! Bad input refused and counted while good traffic flows; redirects, ACME, scanner blocks,
//! 502/504 pages, health answers, https upstreams, reload, mesh `auto`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use shared::proxy_protocol::{self, Command, Transport};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

struct Setup {
    dir: tempfile::TempDir,
    ca: Ca,
    proxy: Proxy,
}

async fn setup(http_extra: &str, sites: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path());
    let live = dir.path().join("live");
    ca.certbot(&live, "a.test", &["a.test"], "a.test");
    ca.certbot(&live, "slow.test", &["slow.test", "down.test", "tls.test", "strict.test"], "misc");
    let up = echo_upstream("a").await;
    let text = base_config(&format!(
        r#"
header_read_timeout = "1s"
max_header_bytes = 8192
{http_extra}
[tls]
certbot_live_dir = "{live}"
[[site]]
host = "a.test"
upstream = "http://{up}"
block_scanners = true
{sites}
"#,
        live = live.display(),
    ));
    let proxy = Proxy::start(&text).await;
    Setup { dir, ca, proxy }
}

/// One good HTTPS request through the mesh listener.
async fn good_request(s: &Setup) {
    let (out, err, ok) = curl(&["--http2"], "a.test", s.proxy.mesh_https, &s.ca.pem_path, "/ok").await;
    assert!(ok && out.contains("upstream: a"), "good request failed: {err}{out}");
}

/// Read until the peer closes; returns what was read, or panics after `limit`.
async fn read_until_closed<S: tokio::io::AsyncRead + Unpin>(s: &mut S, limit: Duration) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let end = Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(end, s.read(&mut buf)).await {
            Err(_) => panic!("connection still open after {limit:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return out,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

async fn counter(p: &Proxy, name: &str, labels: &[(&str, &str)]) -> f64 {
    p.metric(name, labels).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_and_counted_while_good_requests_succeed() {
    let s = setup("", "").await;
    let p = &s.proxy;
    let hs = "local_proxy_tls_handshakes_total";
    let conns = "local_proxy_connections_total";
    let errs = "local_proxy_http_connection_errors_total";

    // Non-TLS bytes on the TLS port.
    let before = counter(p, hs, &[("listener", "mesh-https"), ("result", "not_tls")]).await;
    let mut c = TcpStream::connect(p.mesh_https).await.unwrap();
    c.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n").await.unwrap();
    read_until_closed(&mut c, Duration::from_secs(5)).await;
    good_request(&s).await;
    assert!(counter(p, hs, &[("listener", "mesh-https"), ("result", "not_tls")]).await > before);

    // Oversized request head.
    let before = counter(p, errs, &[("listener", "mesh-https"), ("result", "head_too_large")]).await;
    let tcp = TcpStream::connect(p.mesh_https).await.unwrap();
    let mut tls = tls_over(tcp, "a.test", &s.ca.pem_path).await.unwrap();
    let big = format!("GET / HTTP/1.1\r\nHost: a.test\r\nX-Big: {}\r\n\r\n", "b".repeat(64 * 1024));
    // The proxy may close before taking it all; that is the point.
    let _ = tls.write_all(big.as_bytes()).await;
    let answer = read_until_closed(&mut tls, Duration::from_secs(5)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.is_empty() || answer.starts_with("HTTP/1.1 431"), "{answer}");
    good_request(&s).await;
    wait_until(Duration::from_secs(5), "head_too_large counted", || async {
        counter(p, errs, &[("listener", "mesh-https"), ("result", "head_too_large")]).await > before
    })
    .await;

    // Slowloris: a head that never ends is cut after header_read_timeout (1s), while a good
    // request goes through meanwhile.
    let before = counter(p, errs, &[("listener", "mesh-https"), ("result", "head_timeout")]).await;
    let tcp = TcpStream::connect(p.mesh_https).await.unwrap();
    let mut slow = tls_over(tcp, "a.test", &s.ca.pem_path).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\nX-Slow: ").await.unwrap();
    let started = Instant::now();
    good_request(&s).await;
    for _ in 0..3 {
        if slow.write_all(b"a").await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    read_until_closed(&mut slow, Duration::from_secs(5)).await;
    assert!(started.elapsed() < Duration::from_secs(4), "cut after {:?}", started.elapsed());
    wait_until(Duration::from_secs(5), "head_timeout counted", || async {
        counter(p, errs, &[("listener", "mesh-https"), ("result", "head_timeout")]).await > before
    })
    .await;

    // A PROXY header from a stranger: closed at once, counted.
    let before = counter(p, conns, &[("listener", "wan-https"), ("result", "untrusted")]).await;
    let client: SocketAddr = "198.51.100.7:40000".parse().unwrap();
    let mut c = connect_with_proxy("127.0.0.3".parse().unwrap(), p.wan_https, client).await;
    read_until_closed(&mut c, Duration::from_secs(2)).await;
    good_request(&s).await;
    assert!(counter(p, conns, &[("listener", "wan-https"), ("result", "untrusted")]).await > before);

    // A trusted peer with a broken header, and one that sends none in time.
    let before = counter(p, conns, &[("listener", "wan-https"), ("result", "bad_header")]).await;
    let mut c = connect_from("127.0.0.2".parse().unwrap(), p.wan_https).await;
    c.write_all(b"\x16\x03\x01\x00\x10garbage-not-proxy").await.unwrap();
    read_until_closed(&mut c, Duration::from_secs(2)).await;
    assert!(counter(p, conns, &[("listener", "wan-https"), ("result", "bad_header")]).await > before);

    let before = counter(p, conns, &[("listener", "wan-https"), ("result", "header_timeout")]).await;
    let mut c = connect_from("127.0.0.2".parse().unwrap(), p.wan_https).await;
    read_until_closed(&mut c, Duration::from_secs(5)).await;
    assert!(counter(p, conns, &[("listener", "wan-https"), ("result", "header_timeout")]).await > before);

    // Unknown SNI and no SNI at all.
    let before = counter(p, hs, &[("listener", "mesh-https"), ("result", "unknown_sni")]).await;
    let tcp = TcpStream::connect(p.mesh_https).await.unwrap();
    assert!(tls_over(tcp, "unknown.test", &s.ca.pem_path).await.is_err());
    assert!(counter(p, hs, &[("listener", "mesh-https"), ("result", "unknown_sni")]).await > before);
    good_request(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_redirects_except_acme_and_serves_the_webroot() {
    let dir = tempfile::tempdir().unwrap();
    let challenge = dir.path().join(".well-known/acme-challenge");
    std::fs::create_dir_all(&challenge).unwrap();
    std::fs::write(challenge.join("tok_EN-123"), "tok_EN-123.thumbprint").unwrap();
    let s = setup(&format!("acme_webroot = \"{}\"", dir.path().display()), "").await;
    let p = &s.proxy;
    let client: SocketAddr = "198.51.100.7:40000".parse().unwrap();

    let mut c = connect_with_proxy("127.0.0.2".parse().unwrap(), p.wan_http, client).await;
    let (status, text) = raw_get(&mut c, "a.test", "/path?q=1").await;
    assert_eq!(status, 308, "{text}");
    assert!(text.contains("location: https://a.test/path?q=1"), "{text}");

    let mut c = connect_with_proxy("127.0.0.2".parse().unwrap(), p.wan_http, client).await;
    let (status, text) = raw_get(&mut c, "a.test", "/.well-known/acme-challenge/tok_EN-123").await;
    assert_eq!(status, 200, "{text}");
    assert!(text.ends_with("tok_EN-123.thumbprint"), "{text}");

    let mut c = TcpStream::connect(p.mesh_http).await.unwrap();
    let (status, _) = raw_get(&mut c, "a.test", "/.well-known/acme-challenge/..%2Fetc").await;
    assert_eq!(status, 404);
    // Without a webroot, only a token's path stays on plain HTTP for the upstream: not a path
    // under the prefix that the upstream resolves elsewhere.
    let s = setup("", "").await;
    for (path, status) in
        [("/.well-known/acme-challenge/tok_EN-123", 200), ("/.well-known/acme-challenge/../../account", 308)]
    {
        let mut c = connect_with_proxy("127.0.0.2".parse().unwrap(), s.proxy.wan_http, client).await;
        let (got, text) = raw_get(&mut c, "a.test", path).await;
        assert_eq!(got, status, "{path}: {text}");
    }
    let mut c = TcpStream::connect(p.mesh_http).await.unwrap();
    let (status, _) = raw_get(&mut c, "unknown.test", "/").await;
    assert_eq!(status, 404);
}

/// An upstream that answers each request with the bytes of the request itself, read up to the
/// end of its chunked body (the blank line after the last chunk and any trailers).
async fn recording_upstream() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut got = Vec::new();
                let mut buf = [0u8; 4096];
                let end = Instant::now() + Duration::from_secs(5);
                let done = |g: &[u8]| g.windows(5).any(|w| w == b"\r\n0\r\n") && g.ends_with(b"\r\n\r\n");
                while !done(&got) {
                    match tokio::time::timeout_at(end, s.read(&mut buf)).await {
                        Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
                        _ => break,
                    }
                }
                let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", got.len());
                let _ = s.write_all(head.as_bytes()).await;
                let _ = s.write_all(&got).await;
            });
        }
    });
    addr
}

/// A request's trailers do not reach the upstream: they would pass every header rule (here an
/// auth service's identity header and a forwarding claim), and some servers read them as
/// headers (Apache's MergeTrailers, Tomcat's allowedTrailerHeaders). nginx drops them too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_trailers_are_not_passed_on() {
    let up = recording_upstream().await;
    let s =
        setup("redirect_to_https = false", &format!("[[site]]\nhost = \"t.test\"\nupstream = \"http://{up}\"\n")).await;
    let mut c = TcpStream::connect(s.proxy.mesh_http).await.unwrap();
    let request = "POST /x HTTP/1.1\r\nHost: t.test\r\nTransfer-Encoding: chunked\r\n\
                   Trailer: x-authentik-username, x-forwarded-for\r\nConnection: close\r\n\r\n\
                   5\r\nhello\r\n0\r\nX-Authentik-Username: akadmin\r\nX-Forwarded-For: 127.0.0.1\r\n\r\n";
    c.write_all(request.as_bytes()).await.unwrap();
    let answer = String::from_utf8_lossy(&read_until_closed(&mut c, Duration::from_secs(10)).await).into_owned();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("hello"), "the body went through: {answer}");
    assert!(!answer.contains("akadmin") && !answer.contains("127.0.0.1\r\n\r\n"), "a trailer went through: {answer}");
}

/// An upstream that answers with a head and 5 of its 100 body bytes, then sends nothing more
/// while it keeps its connections open.
async fn stalling_upstream() -> SocketAddr {
    cut_upstream(true).await
}

/// An upstream that answers with a head and 5 of its 100 body bytes, then keeps the
/// connection open and silent (`hold`) or closes it.
async fn cut_upstream(hold: bool) -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut s, _)) = l.accept().await {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nhello").await;
            if hold {
                held.push(s);
            } else {
                // Closed once the head and the bytes have reached the client: a close at once
                // may make the proxy's h2 stream fail before curl has shown them.
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    drop(s);
                });
            }
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scanner_paths_502_and_504() {
    let silent = silent_upstream().await;
    let closed = closed_port().await;
    let stalling = stalling_upstream().await;
    let closing = cut_upstream(false).await;
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("stalling.log");
    let sites = format!(
        "[[site]]\nhost = \"slow.test\"\nupstream = \"http://{silent}\"\n\
         [[site]]\nhost = \"down.test\"\nupstream = \"http://{closed}\"\n\
         [[site]]\nhost = \"tls.test\"\nupstream = \"http://{stalling}\"\n\
         access_log = {{ path = \"{log}\" }}\n\
         [[site]]\nhost = \"strict.test\"\nupstream = \"http://{closing}\"\n\
         access_log = {{ path = \"{log}\" }}\n",
        log = log.display()
    );
    let s = setup("upstream_timeout = \"700ms\"", &sites).await;
    let ca = &s.ca.pem_path;
    let addr = s.proxy.mesh_https;

    let (out, _, ok) = curl(&["-D", "-"], "a.test", addr, ca, "/wp-admin/install.php").await;
    assert!(ok);
    assert!(out.starts_with("HTTP/2 404"), "{out}");
    assert!(!out.contains("upstream: a"), "the upstream must not be asked: {out}");
    assert!(out.to_ascii_lowercase().contains("strict-transport-security"), "{out}");
    let (out, _, _) = curl(&["-D", "-"], "a.test", addr, ca, "/.env").await;
    assert!(out.starts_with("HTTP/2 404"), "{out}");
    let (out, _, _) = curl(&[], "a.test", addr, ca, "/.envelope").await;
    assert!(out.contains("upstream: a"), "{out}");

    let before =
        s.proxy.metric("local_proxy_upstream_errors_total", &[("site", "down.test"), ("result", "refused")]).await;
    let (out, _, _) = curl(&["-D", "-"], "down.test", addr, ca, "/").await;
    assert!(out.starts_with("HTTP/2 502"), "{out}");
    assert!(out.contains("not answering"), "{out}");
    assert!(
        s.proxy.metric("local_proxy_upstream_errors_total", &[("site", "down.test"), ("result", "refused")]).await
            > before
    );

    let started = Instant::now();
    let (out, _, _) = curl(&["-D", "-"], "slow.test", addr, ca, "/").await;
    assert!(out.starts_with("HTTP/2 504"), "{out}");
    assert!(out.contains("too long"), "{out}");
    assert!(started.elapsed() < Duration::from_secs(5));

    // A body that stops coming: cut short once nothing more came for upstream_timeout (curl
    // sees the stream end in error), not left waiting for curl's own 10 s limit.
    for proto in ["--http2", "--http1.1"] {
        let started = Instant::now();
        let (out, err, ok) = curl(&[proto, "-D", "-"], "tls.test", addr, ca, "/").await;
        assert!(!ok && out.contains(" 200") && out.ends_with("hello"), "{proto}: {out}{err}");
        assert!(!err.contains("timed out"), "{proto}: left hanging: {err}");
        assert!(started.elapsed() < Duration::from_secs(5), "{proto}: {:?}", started.elapsed());
    }
    // Counted as the site's and the upstream's (not a health verdict: it stays up), and each
    // access log line says its 200 was cut short.
    let cut = [("site", "tls.test"), ("result", "body_timeout")];
    assert_eq!(s.proxy.metric("local_proxy_upstream_errors_total", &cut).await, 2.0);
    let upstream = format!("http://{stalling}");
    let member = [("site", "tls.test"), ("upstream", upstream.as_str())];
    let failed = [member[0], member[1], ("result", "body_timeout")];
    assert_eq!(s.proxy.metric("local_proxy_upstream_failures_total", &failed).await, 2.0);
    assert_eq!(s.proxy.metric("local_proxy_upstream_up", &member).await, 1.0);
    // One that closes mid-body instead: the same, as `body_error`.
    let (out, err, ok) = curl(&["--http2", "-D", "-"], "strict.test", addr, ca, "/").await;
    assert!(!ok && out.contains(" 200") && out.ends_with("hello"), "{out}{err}");
    let broken = [("site", "strict.test"), ("result", "body_error")];
    assert_eq!(s.proxy.metric("local_proxy_upstream_errors_total", &broken).await, 1.0);
    let lines = wait_lines(&log, 3).await;
    assert_eq!(lines.len(), 3, "{lines:#?}");
    for line in &lines {
        let result = if line["site"] == "strict.test" { "body_error" } else { "body_timeout" };
        assert_eq!(line["status"], 200, "{line}");
        assert_eq!(line["result"], result, "{line}");
        assert_eq!(line["bytes_sent"], 5, "{line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_answers_for_the_ingress() {
    let s = setup("", "").await;
    let p = &s.proxy;
    assert_eq!(http_get(p.admin, "/healthz").await.0, 200);

    // PROXY LOCAL then GET /healthz on the WAN HTTP port.
    let mut c = connect_from("127.0.0.2".parse().unwrap(), p.wan_http).await;
    let mut h = Vec::new();
    proxy_protocol::write_v2(&mut h, Command::Local, Transport::Stream, None);
    c.write_all(&h).await.unwrap();
    let (status, text) = raw_get(&mut c, "203.0.113.10", "/healthz").await;
    assert_eq!(status, 200, "{text}");
    assert!(text.ends_with("ok\n"));

    // PROXY LOCAL on the TLS port: kept open (healthy) for a TLS handshake.
    let mut c = connect_from("127.0.0.2".parse().unwrap(), p.wan_https).await;
    c.write_all(&h).await.unwrap();
    let tls = tls_over(c, "a.test", &s.ca.pem_path).await;
    assert!(tls.is_ok());

    // A site's own /healthz still reaches its upstream.
    let (out, _, _) = curl(&[], "a.test", p.mesh_https, &s.ca.pem_path, "/healthz").await;
    assert!(out.contains("upstream: a"), "{out}");

    // No certificate at all: unhealthy everywhere, and LOCAL probes on the TLS port are closed.
    let up = echo_upstream("x").await;
    let empty = Proxy::start(&base_config(&format!("[[site]]\nhost = \"x.test\"\nupstream = \"http://{up}\"\n"))).await;
    let (status, text) = http_get(empty.admin, "/healthz").await;
    assert_eq!(status, 503);
    assert!(text.contains("no certificate loaded"), "{text}");
    let mut c = connect_from("127.0.0.2".parse().unwrap(), empty.wan_https).await;
    c.write_all(&h).await.unwrap();
    read_until_closed(&mut c, Duration::from_secs(2)).await;
    let mut c = TcpStream::connect(empty.mesh_http).await.unwrap();
    let (status, text) = raw_get(&mut c, "127.0.0.4", "/healthz").await;
    assert_eq!(status, 503);
    // Asked by address by anyone: no reason (it could name internal sites).
    assert!(text.ends_with("unhealthy\n") && !text.contains("certificate"), "{text}");
    assert_eq!(empty.metric("local_proxy_healthy", &[]).await, 0.0, "healthy gauge");
}

/// A TLS upstream with a certificate nobody trusts, answering "tls upstream".
async fn self_signed_upstream() -> SocketAddr {
    use std::sync::Arc;
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["wazuh.lan".to_string()]).unwrap().self_signed(&key).unwrap();
    let der_key = rustls_pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap();
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], der_key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(s).await else { return };
                let mut buf = [0u8; 4096];
                let _ = tls.read(&mut buf).await;
                let body = "tls upstream";
                let resp =
                    format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
                let _ = tls.write_all(resp.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_upstream_verification_is_opt_out_per_site() {
    let up = self_signed_upstream().await;
    let sites = format!(
        "[[site]]\nhost = \"tls.test\"\nupstream = \"https://{up}\"\ninsecure_skip_verify = true\n\
         [[site]]\nhost = \"strict.test\"\nupstream = \"https://{up}\"\n"
    );
    let s = setup("", &sites).await;
    let (out, err, ok) = curl(&[], "tls.test", s.proxy.mesh_https, &s.ca.pem_path, "/").await;
    assert!(ok && out == "tls upstream", "{out}{err}");
    let (out, _, _) = curl(&["-D", "-"], "strict.test", s.proxy.mesh_https, &s.ca.pem_path, "/").await;
    assert!(out.starts_with("HTTP/2 502"), "unverifiable upstream must fail: {out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_swaps_sites_and_trust_for_new_connections() {
    let s = setup("", "").await;
    let p = &s.proxy;
    let client: SocketAddr = "198.51.100.7:40000".parse().unwrap();
    let up_b = echo_upstream("b").await;
    let live = s.dir.path().join("live");
    // New config: a.test now goes to upstream b, and 127.0.0.3 becomes trusted.
    let text = format!(
        r#"
[admin]
listen = "127.0.0.1:0"
[wan]
addresses = ["127.0.0.1"]
trusted_ingress = ["127.0.0.2", "127.0.0.3"]
[mesh]
listen = "127.0.0.4"
[http]
https_port = 0
http_port = 0
[tls]
certbot_live_dir = "{live}"
[[site]]
host = "a.test"
upstream = "http://{up_b}"
"#,
        live = live.display()
    );
    let new = local_proxy::config::from_toml_str(&text).unwrap();
    p.handle.reload(new).await.unwrap();
    let (out, _, ok) = curl(&[], "a.test", p.mesh_https, &s.ca.pem_path, "/").await;
    assert!(ok && out.contains("upstream: b"), "{out}");
    let front = ingress("127.0.0.3".parse().unwrap(), p.wan_https, client).await;
    let (out, err, ok) = curl(&[], "a.test", front, &s.ca.pem_path, "/").await;
    assert!(ok, "127.0.0.3 is trusted now: {err}");
    assert!(out.contains("x-forwarded-for: 198.51.100.7"), "{out}");

    // A CA file that does not exist fails validation, naming the field (so `check` refuses it).
    let bad = text.replace(
        &format!("upstream = \"http://{up_b}\""),
        "upstream = \"https://127.0.0.1:1\"\nca_file = \"/nonexistent/ca.pem\"",
    );
    let e = local_proxy::config::from_toml_str(&bad).unwrap_err().to_string();
    assert!(e.contains("site[0].ca_file") && e.contains("/nonexistent/ca.pem"), "{e}");
    // A config whose site cannot be built (its access log is a directory) is refused; the
    // running one stays.
    let bad = format!("{text}access_log = {{ path = \"{}\" }}\n", s.dir.path().display());
    let bad = local_proxy::config::from_toml_str(&bad).unwrap();
    assert!(p.handle.reload(bad).await.is_err());
    let (out, _, ok) = curl(&[], "a.test", p.mesh_https, &s.ca.pem_path, "/").await;
    assert!(ok && out.contains("upstream: b"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_auto_reads_the_address_from_the_yggdrasil_admin_socket() {
    // A stand-in admin socket answering getSelf.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let mut buf = [0u8; 1024];
            let n = s.read(&mut buf).await.unwrap_or(0);
            assert!(String::from_utf8_lossy(&buf[..n]).contains("getSelf"));
            let reply = r#"{"status":"success","request":{"request":"getSelf"},"response":{"address":"201:c1fa:2e6f:c2f3:34ad:a9b0:2b68:5549","subnet":"301:c1fa:2e6f:c2f3::/64","key":"00","build_name":"yggdrasil","build_version":"0.5.12","routing_entries":2}}"#;
            let _ = s.write_all(reply.as_bytes()).await;
        }
    });
    let text = format!(
        "[mesh]\nlisten = \"auto\"\nadmin_endpoint = \"tcp://{admin}\"\n[wan]\naddresses = []\n[http]\nhttps_port = 0\nhttp_port = 0\n"
    );
    let config = local_proxy::config::from_toml_str(&text).unwrap();
    let ip = local_proxy::listeners::mesh_address(&config).await.unwrap().unwrap();
    assert_eq!(ip.to_string(), "201:c1fa:2e6f:c2f3:34ad:a9b0:2b68:5549");
    // The address is not on this host; freebind lets the mesh listener bind it anyway.
    let bound = local_proxy::listeners::bind(&config, Some(ip));
    match bound {
        Ok(b) => assert_eq!(b.tcp.len(), 2),
        // Hosts without IPv6 at all cannot create the socket; that is not what is tested here.
        Err(e) => assert!(e.to_string().contains("Address family"), "{e}"),
    }
}

/// `mesh.listen = "auto"` follows the node's address when yggdrasil's key is made anew: at
/// the next reload, and on its own (`follow_mesh_address`, what the proxy asks every minute).
/// Before, it kept serving the old address until a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_auto_follows_a_new_address() {
    // A stand-in admin socket answering getSelf with whatever address is set now.
    let address = std::sync::Arc::new(std::sync::Mutex::new("201:c1fa:2e6f:c2f3:34ad:a9b0:2b68:5549".to_string()));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = l.local_addr().unwrap();
    let answer = address.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            let a = answer.lock().unwrap().clone();
            let reply = format!(
                r#"{{"status":"success","request":{{"request":"getSelf"}},"response":{{"address":"{a}","subnet":"301:c1fa:2e6f:c2f3::/64","key":"00","build_name":"yggdrasil","build_version":"0.5.12","routing_entries":2}}}}"#
            );
            let _ = s.write_all(reply.as_bytes()).await;
        }
    });
    let text = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[mesh]\nlisten = \"auto\"\nadmin_endpoint = \"tcp://{admin}\"\n\
         [wan]\naddresses = [\"127.0.0.1\"]\n[http]\nhttps_port = 0\nhttp_port = 0\n"
    );
    let p = Proxy::start(&text).await;
    let mesh_ips = || {
        let ips: std::collections::BTreeSet<String> = p
            .handle
            .listening()
            .into_iter()
            .filter(|(k, _, _)| k.origin == local_proxy::listeners::Origin::Mesh)
            .map(|(k, _, _)| k.addr.ip().to_string())
            .collect();
        ips
    };
    assert_eq!(mesh_ips(), ["201:c1fa:2e6f:c2f3:34ad:a9b0:2b68:5549".to_string()].into());
    assert!(!p.handle.follow_mesh_address().await, "unchanged: nothing moves");
    *address.lock().unwrap() = "202:1111:2222:3333:4444:5555:6666:7777".into();
    assert!(p.handle.follow_mesh_address().await);
    assert_eq!(mesh_ips(), ["202:1111:2222:3333:4444:5555:6666:7777".to_string()].into());
    *address.lock().unwrap() = "203:1111:2222:3333:4444:5555:6666:7777".into();
    p.handle.reload(local_proxy::config::from_toml_str(&text).unwrap()).await.unwrap();
    assert_eq!(mesh_ips(), ["203:1111:2222:3333:4444:5555:6666:7777".to_string()].into(), "a reload follows it too");
}

/// yggdrasil answering only after the start (boot order): the mesh listeners come when it
/// does, on the ports of the config in force then, not of the one read when the wait began (a
/// reload meanwhile moved the HTTPS port).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mesh_listeners_come_when_yggdrasil_answers_with_the_config_in_force() {
    let (admin, first, second) = (free_port(), free_port(), free_port());
    let text = |https: u16| {
        format!(
            "[mesh]\nlisten = \"auto\"\nadmin_endpoint = \"tcp://127.0.0.1:{admin}\"\n\
             [wan]\naddresses = [\"127.0.0.1\"]\n[http]\nhttps_port = {https}\nhttp_port = 0\n"
        )
    };
    let config = local_proxy::config::from_toml_str(&text(first)).unwrap();
    let bound = local_proxy::listeners::bind(&config, None).unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let server = local_proxy::start_on(config, bound, shutdown.clone(), shared::workers::Workers::none()).unwrap();
    let handle = server.handle();
    tokio::spawn(server.wait(Duration::from_secs(2)));
    handle.serve_mesh_when_ready();
    handle.reload(local_proxy::config::from_toml_str(&text(second)).unwrap()).await.unwrap();
    // yggdrasil comes up.
    let l = tokio::net::TcpListener::bind(("127.0.0.1", admin)).await.unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let _ = s.read(&mut [0u8; 1024]).await;
            let reply = r#"{"status":"success","request":{"request":"getSelf"},"response":{"address":"201:c1fa:2e6f:c2f3:34ad:a9b0:2b68:5549","subnet":"301:c1fa:2e6f:c2f3::/64","key":"00","build_name":"yggdrasil","build_version":"0.5.12","routing_entries":2}}"#;
            let _ = s.write_all(reply.as_bytes()).await;
        }
    });
    let mesh_ports = || -> Vec<u16> {
        let mesh = handle.listening().into_iter().filter(|(k, _, _)| k.origin == local_proxy::listeners::Origin::Mesh);
        mesh.map(|(k, _, _)| k.addr.port()).collect()
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    while mesh_ports().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ports = mesh_ports();
    assert!(ports.contains(&second) && !ports.contains(&first), "mesh ports {ports:?}");
    shutdown.cancel();
}

/// An upload that takes longer than `upstream_timeout` is not cut short: the wait for the
/// answer is counted from when the upstream has the whole body, as nginx's
/// `proxy_read_timeout` is; while it arrives, the body's own pace bounds it. So also for a
/// small PUT with a length, which is read whole before it is sent (to be sent again if need
/// be): slow, it goes through; stalled, it ends in 408 as a POST does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_slower_than_upstream_timeout_goes_through() {
    let silent = silent_upstream().await;
    let s = setup(
        "upstream_timeout = \"500ms\"",
        &format!("[[site]]\nhost = \"slow.test\"\nupstream = \"http://{silent}\"\n"),
    )
    .await;
    for (method, te) in
        [("POST", "Content-Length: 15"), ("PUT", "Transfer-Encoding: chunked"), ("PUT", "Content-Length: 15")]
    {
        let tcp = TcpStream::connect(s.proxy.mesh_https).await.unwrap();
        let mut c = tls_over(tcp, "a.test", &s.ca.pem_path).await.unwrap();
        let head = format!("{method} /up HTTP/1.1\r\nHost: a.test\r\n{te}\r\nConnection: close\r\n\r\n");
        c.write_all(head.as_bytes()).await.unwrap();
        // 15 bytes over 1.5 s: three times the timeout.
        for _ in 0..15 {
            let piece: &[u8] = if te.starts_with("Content") { b"x" } else { b"1\r\nx\r\n" };
            if let Err(e) = c.write_all(piece).await {
                let answer = read_until_closed(&mut c, Duration::from_secs(10)).await;
                panic!("{method}: {e}: {}", String::from_utf8_lossy(&answer));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if te.starts_with("Transfer") {
            c.write_all(b"0\r\n\r\n").await.unwrap();
        }
        let answer = String::from_utf8_lossy(&read_until_closed(&mut c, Duration::from_secs(10)).await).into_owned();
        assert!(answer.starts_with("HTTP/1.1 200"), "{method}: {answer}");
        assert!(answer.contains("body-bytes: 15"), "{method}: {answer}");
    }

    // A client that stops half-way: 408 after upstream_timeout without a piece, and not the
    // upstream's failure.
    let errors = || s.proxy.metric("local_proxy_upstream_errors_total", &[("site", "a.test"), ("result", "timeout")]);
    let before = errors().await;
    for method in ["POST", "PUT"] {
        let tcp = TcpStream::connect(s.proxy.mesh_https).await.unwrap();
        let mut c = tls_over(tcp, "a.test", &s.ca.pem_path).await.unwrap();
        let head = format!("{method} /up HTTP/1.1\r\nHost: a.test\r\nContent-Length: 15\r\n\r\nxyz");
        c.write_all(head.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(10), c.read(&mut buf)).await.expect("no 408").unwrap();
        let answer = String::from_utf8_lossy(&buf[..n]).into_owned();
        assert!(answer.starts_with("HTTP/1.1 408"), "{method}: {answer}");
    }
    assert_eq!(errors().await, before);

    // An upstream that takes none of the body: 504 once it has taken nothing for
    // upstream_timeout, while the client still has more to send.
    let tcp = TcpStream::connect(s.proxy.mesh_https).await.unwrap();
    let (mut rd, mut wr) = tokio::io::split(tls_over(tcp, "slow.test", &s.ca.pem_path).await.unwrap());
    let writer = tokio::spawn(async move {
        let size = 256usize << 20;
        let head = format!("POST /up HTTP/1.1\r\nHost: slow.test\r\nContent-Length: {size}\r\n\r\n");
        wr.write_all(head.as_bytes()).await?;
        let chunk = vec![b'x'; 64 << 10];
        for _ in 0..size / chunk.len() {
            wr.write_all(&chunk).await?;
        }
        Ok::<_, std::io::Error>(())
    });
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), rd.read(&mut buf)).await.expect("no 504").unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(answer.starts_with("HTTP/1.1 504"), "{answer}");
    writer.abort();
}

/// An h2 client that grants no flow-control window and keeps its connection alive with PINGs:
/// the stream, which cannot send its body, is reset once nothing woke it for the stall period
/// (`idle_timeout + upstream_timeout` here), its upstream let go, and it is counted; the
/// connection stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_stream_whose_client_grants_no_window_is_reset() {
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("access.log");
    let http = format!(
        "idle_timeout = \"400ms\"\nupstream_timeout = \"300ms\"\naccess_log = {{ path = \"{}\" }}",
        log.display()
    );
    let s = setup(&http, "").await;
    let tcp = TcpStream::connect(s.proxy.mesh_https).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(client_tls(&s.ca.pem_path, &[b"h2"]));
    let tls = connector.connect(rustls_pki_types::ServerName::try_from("a.test").unwrap(), tcp).await.unwrap();
    let (mut client, mut conn) =
        h2::client::Builder::new().initial_window_size(0).handshake::<_, bytes::Bytes>(tls).await.unwrap();
    let mut pings = conn.ping_pong().unwrap();
    let driver = tokio::spawn(conn);
    let req = http::Request::get("https://a.test/stuck").body(()).unwrap();
    let (resp, _) = client.send_request(req, true).unwrap();
    let mut body = resp.await.unwrap().into_body();
    let started = Instant::now();
    let ended = loop {
        assert!(started.elapsed() < Duration::from_secs(10), "the stream was never reset");
        tokio::select! {
            frame = body.data() => break frame,
            _ = tokio::time::sleep(Duration::from_millis(100)) => {
                pings.ping(h2::Ping::opaque()).await.expect("the connection closed instead");
            }
        }
    };
    let err = ended.expect("a reset, not the body's end").expect_err("a reset, not data");
    assert_eq!(err.reason(), Some(h2::Reason::CANCEL), "{err}");
    let stalled = [("listener", "mesh-https")];
    assert_eq!(s.proxy.metric("local_proxy_http_streams_stalled_total", &stalled).await, 1.0);
    assert_eq!(s.proxy.metric("local_proxy_upstream_active", &[("site", "a.test")]).await, 0.0);
    pings.ping(h2::Ping::opaque()).await.expect("the connection is still up");
    assert!(!driver.is_finished());
    // Its access log line says why it ended.
    let lines = wait_lines(&log, 1).await;
    let line = lines.iter().find(|l| l["uri"] == "/stuck").expect("a line for the stream");
    assert_eq!((line["status"].as_u64(), line["result"].as_str()), (Some(200), Some("stalled")), "{line}");
}

/// An upstream that reads a request head and answers `late` after `delay`, then closes.
async fn late_upstream(delay: Duration) -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut c, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match c.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                tokio::time::sleep(delay).await;
                let _ = c.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nConnection: close\r\n\r\nlate").await;
            });
        }
    });
    addr
}

/// An upstream slower than `idle_timeout` but within `upstream_timeout` answers, over HTTP/1.1
/// and h2: the client connection's idle bound does not run while a request waits for its
/// upstream (nothing moves on the client's side meanwhile).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_slower_than_idle_timeout_but_within_upstream_timeout_answers() {
    let late = late_upstream(Duration::from_millis(1200)).await;
    let site = format!("[[site]]\nhost = \"slow.test\"\nupstream = \"http://{late}\"\n");
    let s = setup("idle_timeout = \"400ms\"\nupstream_timeout = \"5s\"", &site).await;
    for proto in ["--http1.1", "--http2"] {
        let (out, err, ok) = curl(&[proto], "slow.test", s.proxy.mesh_https, &s.ca.pem_path, "/").await;
        assert!(ok && out == "late", "{proto}: {err}{out}");
    }
}

/// An h2 connection with no stream open is closed with GOAWAY after `idle_timeout`, though its
/// client keeps sending PINGs (which would otherwise hold a connection slot for good).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_connection_without_streams_idles_out_despite_pings() {
    let s = setup("idle_timeout = \"400ms\"", "").await;
    let tcp = TcpStream::connect(s.proxy.mesh_https).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(client_tls(&s.ca.pem_path, &[b"h2"]));
    let tls = connector.connect(rustls_pki_types::ServerName::try_from("a.test").unwrap(), tcp).await.unwrap();
    let (mut client, mut conn) = h2::client::Builder::new().handshake::<_, bytes::Bytes>(tls).await.unwrap();
    let mut pings = conn.ping_pong().unwrap();
    let mut driver = tokio::spawn(conn);
    let req = http::Request::get("https://a.test/ok").body(()).unwrap();
    let (resp, _) = client.send_request(req, true).unwrap();
    let mut body = resp.await.unwrap().into_body();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    let quiet = Instant::now();
    let closed = loop {
        if quiet.elapsed() > Duration::from_secs(5) {
            break None;
        }
        tokio::select! {
            ended = &mut driver => break Some(ended),
            _ = tokio::time::sleep(Duration::from_millis(100)) => {
                if pings.ping(h2::Ping::opaque()).await.is_err() {
                    continue;
                }
            }
        }
    };
    let ended = closed.expect("the connection stayed open while the client pinged");
    assert!(matches!(ended, Ok(Ok(()))), "not a graceful close: {ended:?}");
    assert!(quiet.elapsed() >= Duration::from_millis(350), "closed before idle_timeout: {:?}", quiet.elapsed());
    println!("RESULT h2 connection without streams closed {:?} after its last stream", quiet.elapsed());
}

/// A client that leaves before its response is ready (its upstream is slow) is logged with
/// status 499 and counted as `client_closed`, over HTTP/1.1 and h2 (a reset stream), as nginx
/// logs it; before, such a request left no line and no count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_before_its_answer_is_logged_with_499() {
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("access.log");
    let late = late_upstream(Duration::from_secs(5)).await;
    let site = format!("[[site]]\nhost = \"slow.test\"\nupstream = \"http://{late}\"\n");
    let s = setup(&format!("access_log = {{ path = \"{}\" }}", log.display()), &site).await;

    // HTTP/1.1: the connection closed while the upstream works.
    let tcp = TcpStream::connect(s.proxy.mesh_https).await.unwrap();
    let mut c = tls_over(tcp, "slow.test", &s.ca.pem_path).await.unwrap();
    c.write_all(b"GET /h1 HTTP/1.1\r\nHost: slow.test\r\n\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(c);
    // h2: the stream reset while the upstream works; the connection stays.
    let tcp = TcpStream::connect(s.proxy.mesh_https).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(client_tls(&s.ca.pem_path, &[b"h2"]));
    let tls = connector.connect(rustls_pki_types::ServerName::try_from("slow.test").unwrap(), tcp).await.unwrap();
    let (mut client, conn) = h2::client::Builder::new().handshake::<_, bytes::Bytes>(tls).await.unwrap();
    let _driver = tokio::spawn(conn);
    let (resp, _) = client.send_request(http::Request::get("https://slow.test/h2").body(()).unwrap(), true).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(resp);

    let lines = wait_lines(&log, 2).await;
    for uri in ["/h1", "/h2"] {
        let line = lines.iter().find(|l| l["uri"] == uri).unwrap_or_else(|| panic!("no line for {uri}: {lines:?}"));
        assert_eq!((line["status"].as_u64(), line["result"].as_str()), (Some(499), Some("client_closed")), "{line}");
        assert_eq!(line["site"], "slow.test");
    }
    let closed = [("site", "slow.test"), ("result", "client_closed")];
    assert_eq!(s.proxy.metric("local_proxy_http_requests_total", &closed).await, 2.0);
}

/// A request that names no host is answered 400 (RFC 9112 §3.2), but `/healthz` still
/// answers, as ingress probes by address expect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_without_a_host_gets_400_but_healthz_answers() {
    let s = setup("", "").await;
    for (request, status) in [
        ("GET / HTTP/1.1\r\nConnection: close\r\n\r\n", "400"),
        ("GET / HTTP/1.0\r\n\r\n", "400"),
        ("GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n", "200"),
        ("GET /healthz HTTP/1.0\r\n\r\n", "200"),
    ] {
        let mut c = TcpStream::connect(s.proxy.mesh_http).await.unwrap();
        c.write_all(request.as_bytes()).await.unwrap();
        let answer = String::from_utf8_lossy(&read_until_closed(&mut c, Duration::from_secs(5)).await).into_owned();
        let first = answer.lines().next().unwrap_or("");
        assert!(first.split(' ').nth(1) == Some(status), "{request:?}: {answer}");
    }
}

/// An upload whose body breaks off (here: a malformed chunk) is the client's failure: 400,
/// and the upstream neither counted as failed nor taken out. Counted against the upstream,
/// three cancelled uploads would have taken a healthy one down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_upload_is_the_clients_failure_not_the_upstreams() {
    let s = setup("", "").await;
    let errors = || s.proxy.metric("local_proxy_upstream_errors_total", &[("site", "a.test")]);
    let before = errors().await;
    for _ in 0..4 {
        let tcp = TcpStream::connect(s.proxy.mesh_https).await.unwrap();
        let mut c = tls_over(tcp, "a.test", &s.ca.pem_path).await.unwrap();
        let request = "POST /up HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nZZ\r\n";
        c.write_all(request.as_bytes()).await.unwrap();
        let answer = String::from_utf8_lossy(&read_until_closed(&mut c, Duration::from_secs(10)).await).into_owned();
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    }
    assert_eq!(errors().await, before, "the upstream was blamed");
    good_request(&s).await;
}

/// An upstream answer framed by Transfer-Encoding with a Content-Length beside it reaches the
/// client whole: the length is dropped (RFC 9112 6.3), not passed on to cut the body short.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_content_length_beside_chunked_framing_does_not_cut_the_body() {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut c, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut head = Vec::new();
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match c.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let answer = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n\
                              a\r\n0123456789\r\n0\r\n\r\n";
                let _ = c.write_all(answer.as_bytes()).await;
                let _ = c.shutdown().await;
            });
        }
    });
    let s = setup("", &format!("[[site]]\nhost = \"strict.test\"\nupstream = \"http://{up}\"\n")).await;
    let tcp = TcpStream::connect(s.proxy.mesh_https).await.unwrap();
    let mut c = tls_over(tcp, "strict.test", &s.ca.pem_path).await.unwrap();
    c.write_all(b"GET / HTTP/1.1\r\nHost: strict.test\r\nConnection: close\r\n\r\n").await.unwrap();
    let answer = String::from_utf8_lossy(&read_until_closed(&mut c, Duration::from_secs(10)).await).into_owned();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(!answer.to_ascii_lowercase().contains("content-length: 5"), "{answer}");
    assert!(answer.contains("0123456789"), "the body was cut: {answer}");
}

/// An h2 client's cookies in several fields reach an HTTP/1.1 upstream as one `Cookie`
/// header, joined with "; " (RFC 9113 8.2.3).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_cookie_fields_reach_the_upstream_as_one_header() {
    let s = setup("", "").await;
    let tcp = TcpStream::connect(s.proxy.mesh_https).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(client_tls(&s.ca.pem_path, &[b"h2"]));
    let tls = connector.connect(rustls_pki_types::ServerName::try_from("a.test").unwrap(), tcp).await.unwrap();
    let (client, conn) = h2::client::Builder::new().handshake::<_, bytes::Bytes>(tls).await.unwrap();
    let _driver = tokio::spawn(conn);
    let mut client = client.ready().await.unwrap();
    let req = http::Request::get("https://a.test/cookies")
        .header("cookie", "a=1")
        .header("cookie", "b=2; c=3")
        .body(())
        .unwrap();
    let (resp, _) = client.send_request(req, true).unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), resp).await.expect("an answer").unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut text = Vec::new();
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(10), body.data()).await.expect("the body") {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
        text.extend_from_slice(&chunk);
    }
    let text = String::from_utf8_lossy(&text);
    let cookies: Vec<&str> = text.lines().filter(|l| l.starts_with("cookie: ")).collect();
    assert_eq!(cookies, ["cookie: a=1; b=2; c=3"], "{text}");
}

/// A GET with a chunked body (a search query) reaches the upstream with its body (hyper
/// alone would send it without); a Host that a URL parser would read as another host is
/// answered 400, not routed; scanner paths hidden behind encodings and path parameters are
/// blocked as the upstream would serve them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_gets_odd_hosts_and_hidden_scanner_paths() {
    let s = setup("", "").await;
    let (ca, addr) = (&s.ca.pem_path, s.proxy.mesh_https);
    let chunked = ["--http1.1", "-X", "GET", "-H", "Transfer-Encoding: chunked", "--data-binary", "hello"];
    let (out, err, ok) = curl(&chunked, "a.test", addr, ca, "/search").await;
    assert!(ok && out.contains("body-bytes: 5"), "{err}{out}");
    let (out, err, ok) = curl(&["--http1.1"], "a.test", addr, ca, "/plain").await;
    assert!(ok && out.contains("body-bytes: 0") && !out.contains("transfer-encoding"), "{err}{out}");

    for host in ["a.test/@b.test", "b.test@a.test", "a.test\\@b.test"] {
        let header = format!("Host: {host}");
        let (out, err, _) = curl(&["--http1.1", "-D", "-", "-H", &header], "a.test", addr, ca, "/").await;
        assert!(out.starts_with("HTTP/1.1 400"), "{host}: {err}{out}");
        assert!(!out.contains("upstream: a"), "{host} reached the upstream: {out}");
    }

    for hidden in ["/%2egit/config", "//.git/config", "/.git;x/config", "/%2Eenv"] {
        let (out, err, _) = curl(&["-D", "-", "--path-as-is"], "a.test", addr, ca, hidden).await;
        assert!(out.starts_with("HTTP/2 404"), "{hidden}: {err}{out}");
        assert!(!out.contains("upstream: a"), "{hidden} reached the upstream: {out}");
    }
}
