//! Test harness: certificates made with rcgen, a proxy started on ephemeral loopback ports,
//! upstreams that report what they saw, an ingress stand-in that adds PROXY v2 headers,
//! metrics scraping, and wait-until helpers with deadlines.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use local_proxy::listeners::{self, Origin, Role};
use local_proxy::{config, Handle};
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use shared::proxy_protocol::{self, Command, Transport};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// A test CA that signs leaf certificates.
pub struct Ca {
    pub cert: rcgen::Certificate,
    pub key: KeyPair,
    pub pem_path: PathBuf,
}

impl Ca {
    pub fn new(dir: &Path) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, "local-proxy test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let pem_path = dir.join("ca.pem");
        std::fs::write(&pem_path, cert.pem()).unwrap();
        Self { cert, key, pem_path }
    }

    /// (fullchain PEM, key PEM) for `names`, with `cn` as the subject common name.
    pub fn leaf(&self, names: &[&str], cn: &str) -> (String, String) {
        let mut params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, cn);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        (format!("{}{}", cert.pem(), self.cert.pem()), key.serialize_pem())
    }

    /// Write a certbot-style `live/<dir_name>/` for `names`.
    pub fn certbot(&self, live: &Path, dir_name: &str, names: &[&str], cn: &str) {
        let (chain, key) = self.leaf(names, cn);
        let d = live.join(dir_name);
        std::fs::create_dir_all(&d).unwrap();
        // Replace atomically, as certbot's symlink swap does, so a poll never sees half a file.
        for (file, text) in [("privkey.pem", &key), ("fullchain.pem", &chain)] {
            let tmp = d.join(format!(".{file}.tmp"));
            std::fs::write(&tmp, text).unwrap();
            std::fs::rename(&tmp, d.join(file)).unwrap();
        }
    }
}

/// A running proxy with its addresses.
pub struct Proxy {
    pub handle: Handle,
    pub shutdown: CancellationToken,
    pub wan_https: SocketAddr,
    pub wan_http: SocketAddr,
    pub mesh_https: SocketAddr,
    pub mesh_http: SocketAddr,
    pub admin: SocketAddr,
    pub listeners_udp: HashMap<(Origin, String), SocketAddr>,
    pub listeners_tcp: HashMap<(Origin, String), SocketAddr>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Config text shared by the tests: WAN on 127.0.0.1, trusted ingress 127.0.0.2, mesh on
/// 127.0.0.4, ephemeral ports, admin on 127.0.0.1. `extra` adds sections.
pub fn base_config(extra: &str) -> String {
    format!(
        r#"
[admin]
listen = "127.0.0.1:0"
[wan]
addresses = ["127.0.0.1"]
trusted_ingress = ["127.0.0.2"]
proxy_header_timeout = "2s"
[mesh]
listen = "127.0.0.4"
[http]
https_port = 0
http_port = 0
{extra}
"#
    )
}

impl Proxy {
    pub async fn start(config_text: &str) -> Proxy {
        Self::start_on(config_text, shared::workers::Workers::none()).await
    }

    /// As `start`, with client connections spread over `workers`' event loops.
    pub async fn start_on(config_text: &str, workers: shared::workers::Workers) -> Proxy {
        let config = config::from_toml_str(config_text).unwrap();
        let mesh = listeners::mesh_address(&config).await.unwrap();
        let bound = listeners::bind(&config, mesh).unwrap();
        let mut listeners_tcp = HashMap::new();
        for b in &bound.tcp {
            if let Role::Stream(name) = &b.role {
                listeners_tcp.insert((b.origin, name.clone()), b.listener.local_addr().unwrap());
            }
        }
        let listeners_udp =
            bound.udp.iter().map(|b| ((b.origin, b.stream.clone()), b.socket.local_addr().unwrap())).collect();
        let p = |o, r: Role| bound.addr(o, &r).unwrap();
        let (wan_https, wan_http) = (p(Origin::Wan, Role::Https), p(Origin::Wan, Role::Http));
        let (mesh_https, mesh_http) = (p(Origin::Mesh, Role::Https), p(Origin::Mesh, Role::Http));
        let admin = bound.admin_addr().unwrap();
        let shutdown = CancellationToken::new();
        let server = local_proxy::start_on(config, bound, shutdown.clone(), workers).unwrap();
        let handle = server.handle();
        tokio::spawn(server.wait(Duration::from_secs(2)));
        Proxy { handle, shutdown, wan_https, wan_http, mesh_https, mesh_http, admin, listeners_udp, listeners_tcp }
    }

    /// The value of a counter or gauge with exactly these labels (0 when absent).
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let text = http_get(self.admin, "/metrics").await.1;
        metric_value(&text, name, labels)
    }
}

/// Parse one sample out of Prometheus text.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else { continue };
        let (label_part, value) = match rest.strip_prefix('{') {
            Some(r) => match r.split_once("} ") {
                Some((l, v)) => (l, v),
                None => continue,
            },
            None => match rest.strip_prefix(' ') {
                Some(v) => ("", v),
                None => continue,
            },
        };
        let mut found: Vec<(String, String)> = Vec::new();
        for pair in label_part.split(',').filter(|p| !p.is_empty()) {
            if let Some((k, v)) = pair.split_once('=') {
                found.push((k.to_string(), v.trim_matches('"').to_string()));
            }
        }
        if found.len() == labels.len() && labels.iter().all(|(k, v)| found.iter().any(|(fk, fv)| fk == k && fv == v)) {
            return value.trim().parse().unwrap_or(0.0);
        }
    }
    0.0
}

/// Minimal HTTP/1.1 GET over plain TCP; returns (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    raw_get(&mut s, "localhost", path).await
}

/// Send a GET with `Connection: close` on an open stream and read the whole answer.
pub async fn raw_get<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    s: &mut S,
    host: &str,
    path: &str,
) -> (u16, String) {
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await.expect("response within 10s").unwrap();
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, text)
}

/// Connect from `from` (a loopback address) to `to`.
pub async fn connect_from(from: IpAddr, to: SocketAddr) -> TcpStream {
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind(SocketAddr::new(from, 0)).unwrap();
    sock.connect(to).await.unwrap()
}

/// Connect from `from` and send a PROXY v2 header naming `client`.
pub async fn connect_with_proxy(from: IpAddr, to: SocketAddr, client: SocketAddr) -> TcpStream {
    let mut s = connect_from(from, to).await;
    let mut h = Vec::new();
    proxy_protocol::write_v2(&mut h, Command::Proxy, Transport::Stream, Some((client, to)));
    s.write_all(&h).await.unwrap();
    s
}

/// An ingress stand-in: listens on 127.0.0.1:0 and relays each connection to `target` from
/// `from`, first sending a PROXY v2 header that names `client`. Lets curl and openssl reach
/// the WAN-side listeners.
pub async fn ingress(from: IpAddr, target: SocketAddr, client: SocketAddr) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut out = connect_with_proxy(from, target, client).await;
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
            });
        }
    });
    addr
}

/// An upstream that answers every request with what it saw: one `name: value` line per
/// header, plus `path:` and `upstream:` lines.
pub async fn echo_upstream(name: &'static str) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| async move {
                    let mut text = format!("upstream: {name}\npath: {}\n", req.uri());
                    for (k, v) in req.headers() {
                        text.push_str(&format!("{}: {}\n", k, v.to_str().unwrap_or("?")));
                    }
                    let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                    text.push_str(&format!("body-bytes: {}\n", body.len()));
                    let resp = hyper::Response::builder()
                        .header("x-upstream", name)
                        .header("server", "echo/1.0")
                        .body(Full::new(Bytes::from(text)))
                        .unwrap();
                    Ok::<_, Infallible>(resp)
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(s), svc).await;
            });
        }
    });
    addr
}

/// A WebSocket echo upstream.
pub async fn ws_upstream() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                use futures_util::{SinkExt, StreamExt};
                let Ok(mut ws) = tokio_tungstenite::accept_async(s).await else { return };
                while let Some(Ok(msg)) = ws.next().await {
                    if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// An upstream that accepts and reads but never answers.
pub async fn silent_upstream() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
        }
    });
    addr
}

/// UDP upstream: replies `from=<client>;<payload>`, the client taken from a PROXY v2 header
/// when the datagram starts with one (the stream's `proxy_protocol = "v2"`), else
/// `from=direct:<peer IP>;` with the datagram as it came.
pub async fn udp_client_upstream() -> SocketAddr {
    let s = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = s.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        while let Ok((n, peer)) = s.recv_from(&mut buf).await {
            let d = &buf[..n];
            let (client, payload) = match proxy_protocol::parse(d) {
                Ok(p) => (p.addresses().map(|(c, _)| c.to_string()).unwrap_or_default(), &d[p.len..]),
                Err(_) => (format!("direct:{}", peer.ip()), d),
            };
            let mut out = format!("from={client};").into_bytes();
            out.extend_from_slice(payload);
            let _ = s.send_to(&out, peer).await;
        }
    });
    addr
}

/// A port with nothing listening.
pub async fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

/// Poll `check` until it returns true or `deadline` passes.
pub async fn wait_until<F, Fut>(deadline: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = Instant::now() + deadline;
    loop {
        if check().await {
            return;
        }
        assert!(Instant::now() < end, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every whole line of `path` parsed as JSON (a line that does not parse fails the test); a
/// write may be under way, so a last line without its newline yet is left for later.
pub fn lines(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let whole = text.rfind('\n').map(|i| &text[..=i]).unwrap_or("");
    whole
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{}: not JSON ({e}): {l}", path.display())))
        .collect()
}

/// The log's lines once it has at least `n`; panics after 10 s.
pub async fn wait_lines(path: &Path, n: usize) -> Vec<serde_json::Value> {
    let p = path.to_path_buf();
    wait_until(Duration::from_secs(10), &format!("{n} lines in {}", path.display()), || {
        let p = p.clone();
        async move { lines(&p).len() >= n }
    })
    .await;
    lines(path)
}

/// Run an external tool; panics (fails the test) when it is not installed.
pub async fn run_tool(program: &str, args: &[&str], stdin: &[u8]) -> std::process::Output {
    use std::process::Stdio;
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("`{program}` is required for this test ({e}); apt-get install -y curl openssl"));
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin).await.unwrap();
    drop(input);
    tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("tool finished within 30s")
        .unwrap()
}

/// curl against `name` resolved to `addr`, trusting `ca`; returns (stdout, stderr, success).
pub async fn curl(args: &[&str], name: &str, addr: SocketAddr, ca: &Path, url_path: &str) -> (String, String, bool) {
    let resolve = format!("{name}:{}:{}", addr.port(), addr.ip());
    let url = format!("https://{name}:{}{url_path}", addr.port());
    let ca = ca.display().to_string();
    let mut all = vec!["-sS", "--max-time", "10", "--resolve", &resolve, "--cacert", &ca];
    all.extend_from_slice(args);
    all.push(&url);
    let out = run_tool("curl", &all, b"").await;
    (
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
        out.status.success(),
    )
}

/// A rustls client config trusting `ca`.
pub fn client_tls(ca: &Path, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    Arc::new(cfg)
}

/// TLS-connect over an existing stream.
pub async fn tls_over(
    s: TcpStream,
    name: &str,
    ca: &Path,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let connector = tokio_rustls::TlsConnector::from(client_tls(ca, &[b"http/1.1"]));
    let sn = rustls_pki_types::ServerName::try_from(name.to_string()).unwrap();
    connector.connect(sn, s).await
}

/// The common name of the certificate the server presents for `name`.
pub async fn served_cn(addr: SocketAddr, name: &str, ca: &Path) -> Option<String> {
    let s = TcpStream::connect(addr).await.ok()?;
    let tls = tls_over(s, name, ca).await.ok()?;
    let certs = tls.get_ref().1.peer_certificates()?;
    let (_, cert) = x509_parser::parse_x509_certificate(certs.first()?).ok()?;
    let cn = cert.subject().iter_common_name().next()?.as_str().ok()?.to_string();
    Some(cn)
}

// A port free on every address for TCP and UDP, outside the ephemeral range.
pub use test_support::free_port;

/// The mesh address the binary tests listen on (plain, no PROXY header).
pub const BINARY_MESH: &str = "127.0.0.4";

/// The real binary, killed on drop, and where it listens.
pub struct Binary {
    pub child: tokio::process::Child,
    pub pid: String,
    pub config: PathBuf,
    pub admin: SocketAddr,
    pub mesh_http: SocketAddr,
    pub mesh_https: SocketAddr,
    pub wan_http: SocketAddr,
}

impl Binary {
    /// Rewrite the config replacing `from` by `to`, send SIGHUP, wait until the reload counter
    /// with `result` has moved.
    pub async fn reload(&self, from: &str, to: &str, result: &str) {
        let text = std::fs::read_to_string(&self.config).unwrap();
        assert!(text.contains(from), "{from} not in the config");
        std::fs::write(&self.config, text.replace(from, to)).unwrap();
        let reloads = |admin| async move {
            metric_value(
                &http_get(admin, "/metrics").await.1,
                "local_proxy_config_reloads_total",
                &[("result", result)],
            )
        };
        let before = reloads(self.admin).await;
        assert!(run_tool("kill", &["-HUP", &self.pid], b"").await.status.success());
        let admin = self.admin;
        wait_until(Duration::from_secs(10), &format!("a reload counted {result}"), || async move {
            reloads(admin).await > before
        })
        .await;
    }
}

/// `program -c config`, its stderr to the file `stderr`, killed on drop.
pub fn spawn_with_config(program: &Path, config: &Path, stderr: &Path) -> tokio::process::Child {
    tokio::process::Command::new(program)
        .args(["-c", &config.display().to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(stderr).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// Start the binary on free ports: admin, the WAN listeners on 127.0.0.1 (PROXY v2 trusted
/// from 127.0.0.2), the mesh ones on [`BINARY_MESH`], certificates from `live`, no redirect
/// to HTTPS, `http_extra` in `[http]` and `sites` after; returns once both mesh listeners
/// accept (its stderr goes to `dir/proxy.stderr`, shown if it never does).
pub async fn spawn_binary(dir: &Path, live: &Path, http_extra: &str, sites: &str) -> Binary {
    spawn_binary_trusting(dir, live, "127.0.0.2", http_extra, sites).await
}

/// [`spawn_binary`] with `trusted` as the WAN's trusted ingress (a real ingress on loopback
/// connects from 127.0.0.1).
pub async fn spawn_binary_trusting(dir: &Path, live: &Path, trusted: &str, http_extra: &str, sites: &str) -> Binary {
    let (admin, http, https) = (free_port(), free_port(), free_port());
    let text = format!(
        r#"
[admin]
listen = "127.0.0.1:{admin}"
[wan]
addresses = ["127.0.0.1"]
trusted_ingress = ["{trusted}"]
[mesh]
listen = "{BINARY_MESH}"
[http]
https_port = {https}
http_port = {http}
redirect_to_https = false
upstream_connect_timeout = "500ms"
{http_extra}
[tls]
certbot_live_dir = "{live}"
{sites}
"#,
        live = live.display()
    );
    let config = dir.join("lp.toml");
    std::fs::write(&config, text).unwrap();
    let stderr = dir.join("proxy.stderr");
    let child = spawn_with_config(Path::new(env!("CARGO_BIN_EXE_local-proxy")), &config, &stderr);
    let pid = child.id().unwrap().to_string();
    let mesh_http: SocketAddr = format!("{BINARY_MESH}:{http}").parse().unwrap();
    let mesh_https: SocketAddr = format!("{BINARY_MESH}:{https}").parse().unwrap();
    let end = Instant::now() + Duration::from_secs(10);
    while !(TcpStream::connect(mesh_http).await.is_ok() && TcpStream::connect(mesh_https).await.is_ok()) {
        let log = std::fs::read_to_string(&stderr).unwrap_or_default();
        assert!(Instant::now() < end, "the proxy is not serving after 10 s; its log:\n{log}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Binary {
        child,
        pid,
        config,
        admin: format!("127.0.0.1:{admin}").parse().unwrap(),
        mesh_http,
        mesh_https,
        wan_http: format!("127.0.0.1:{http}").parse().unwrap(),
    }
}

/// A TCP upstream that echoes lines; with `name`, it first answers `<name> peer=<addr>\n`.
pub async fn line_echo(name: Option<&'static str>) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, peer)) = l.accept().await {
            tokio::spawn(async move {
                if let Some(name) = name {
                    if s.write_all(format!("{name} peer={peer}\n").as_bytes()).await.is_err() {
                        return;
                    }
                }
                let (r, mut w) = s.split();
                let mut r = BufReader::new(r);
                let mut line = String::new();
                while r.read_line(&mut line).await.unwrap_or(0) > 0 {
                    if w.write_all(line.as_bytes()).await.is_err() {
                        return;
                    }
                    line.clear();
                }
            });
        }
    });
    addr
}
