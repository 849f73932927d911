//! Test harness: real backends on loopback addresses (127.0.0.x), an ingress built from a
//! TOML string on port 0, and a bounded wait-until helper. No bare sleeps for readiness.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinHandle;

/// A TCP backend that writes `<name>\n` on connect and then echoes; killable and restartable
/// on the same address.
pub struct Backend {
    pub name: String,
    pub addr: SocketAddr,
    /// Connections that sent at least one byte (health probes send none).
    pub accepted: Arc<AtomicUsize>,
    task: Option<JoinHandle<()>>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Backend {
    pub async fn start(name: &str, ip: &str) -> Self {
        let listener = TcpListener::bind((ip, 0)).await.expect("bind backend");
        let addr = listener.local_addr().expect("addr");
        let mut b = Self {
            name: name.into(),
            addr,
            accepted: Arc::new(AtomicUsize::new(0)),
            task: None,
            conns: Arc::new(Mutex::new(Vec::new())),
        };
        b.serve(listener);
        b
    }

    fn serve(&mut self, listener: TcpListener) {
        let name = self.name.clone();
        let accepted = self.accepted.clone();
        let conns = self.conns.clone();
        self.task = Some(tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    continue;
                };
                let name = name.clone();
                let accepted = accepted.clone();
                let h = tokio::spawn(async move {
                    if s.write_all(format!("{name}\n").as_bytes()).await.is_err() {
                        return;
                    }
                    let mut buf = [0u8; 16384];
                    let mut counted = false;
                    loop {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                // Health probes send nothing: only clients with data count.
                                if !counted {
                                    counted = true;
                                    accepted.fetch_add(1, Ordering::SeqCst);
                                }
                                if s.write_all(&buf[..n]).await.is_err() {
                                    break;
                                }
                            }
                        }
                    }
                });
                conns.lock().expect("lock").push(h);
            }
        }));
    }

    /// Stop listening and reset every open connection: as dead as a process can be.
    /// Returns once the sockets are really closed (an aborted task may still be running).
    pub async fn kill(&mut self) {
        let mut handles: Vec<JoinHandle<()>> = self.task.take().into_iter().collect();
        handles.extend(self.conns.lock().expect("lock").drain(..));
        for h in &handles {
            h.abort();
        }
        for h in handles {
            let _ = h.await;
        }
    }

    /// Listen again on the same address.
    pub async fn restart(&mut self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(e) if tokio::time::Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                Err(e) => panic!("rebind {}: {e}", self.addr),
            }
        };
        self.serve(listener);
    }

    pub fn count(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
        for c in self.conns.lock().expect("lock").drain(..) {
            c.abort();
        }
    }
}

/// Connect through the ingress, read the backend's name line, check an echo round trip.
pub async fn request(addr: SocketAddr) -> Result<String, String> {
    let fut = async {
        let mut s = TcpStream::connect(addr).await.map_err(|e| format!("connect: {e}"))?;
        s.write_all(b"ping\n").await.map_err(|e| format!("write: {e}"))?;
        let mut got = Vec::new();
        let mut buf = [0u8; 256];
        while !got.ends_with(b"ping\n") {
            let n = s.read(&mut buf).await.map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return Err(format!("closed early after {:?}", String::from_utf8_lossy(&got)));
            }
            got.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8_lossy(&got).to_string();
        Ok(text.lines().next().unwrap_or_default().to_string())
    };
    tokio::time::timeout(Duration::from_secs(10), fut).await.map_err(|_| "timed out".to_string())?
}

/// Poll `f` until it is true or the deadline passes.
pub async fn wait_until(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !f() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Counts of names from a set of answers.
pub fn tally(names: &[String]) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for n in names {
        *m.entry(n.clone()).or_insert(0) += 1;
    }
    m
}

/// A pool + one plain TCP service on 127.0.0.1:0, with paths fixed to backend addresses.
pub fn config(paths: &[(&str, SocketAddr, u32)], mesh: Option<SocketAddr>, extra_service: &str) -> String {
    let paths: Vec<String> =
        paths.iter().map(|(n, a, w)| format!("{{ name = \"{n}\", address = \"{a}\", weight = {w} }}")).collect();
    let mesh = mesh.map(|m| format!("mesh = \"{m}\"\n")).unwrap_or_default();
    // Metrics are process-wide and tests run in parallel: every pool gets its own name.
    static N: AtomicUsize = AtomicUsize::new(0);
    let pool = format!("home{}", N.fetch_add(1, Ordering::Relaxed));
    format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[pool.{pool}]
paths = [{}]
{mesh}connect_timeout = "200ms"
final_connect_timeout = "2s"
health = {{ interval = "100ms", timeout = "100ms", rise = 2, fall = 2 }}

[[service]]
name = "echo"
listen = ["127.0.0.1:0"]
pool = "{pool}"
{extra_service}
"#,
        paths.join(", ")
    )
}

pub async fn start(toml: &str) -> ingress::Server {
    let cfg = ingress::Config::from_toml(toml).expect("valid test config");
    ingress::Server::start(cfg).await
}

pub async fn service_addr(server: &ingress::Server, name: &str) -> SocketAddr {
    let mut out = None;
    wait_until("listener bound", Duration::from_secs(5), || {
        out = server.local_addrs(name).first().copied();
        out.is_some()
    })
    .await;
    out.expect("bound")
}

/// Fetch the Prometheus text from the admin listener.
pub async fn metrics(server: &ingress::Server) -> String {
    let addr = server.admin_addr().expect("admin listener");
    let mut s = TcpStream::connect(addr).await.expect("admin connect");
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").await.expect("write");
    let mut body = String::new();
    s.read_to_string(&mut body).await.expect("read");
    body
}

/// Value of one metric line starting with `prefix` (name and labels), or 0.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter(|l| labels.iter().all(|(k, v)| l.contains(&format!("{k}=\"{v}\""))))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// `/metrics` of the admin listener at `admin` (a spawned binary's); empty if it does not
/// answer.
pub async fn scrape(admin: SocketAddr) -> String {
    let Ok(mut s) = TcpStream::connect(admin).await else { return String::new() };
    let _ = s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").await;
    let mut body = String::new();
    let _ = s.read_to_string(&mut body).await;
    body
}

/// The (single) pool of a test server.
pub fn pool_name(server: &ingress::Server) -> String {
    server.shared().runtime().pools.keys().next().cloned().expect("a pool")
}

/// A UDP echo that prefixes each reply with its name.
pub struct UdpEcho {
    task: JoinHandle<()>,
}

impl UdpEcho {
    pub async fn start(name: &'static str, addr: SocketAddr) -> Self {
        Self::start_delayed(name, addr, Duration::ZERO).await
    }

    /// An echo that answers each datagram `delay` after it arrived.
    pub async fn start_delayed(name: &'static str, addr: SocketAddr, delay: Duration) -> Self {
        let sock = Arc::new(UdpSocket::bind(addr).await.expect("bind udp echo"));
        let task = tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            loop {
                let Ok((n, from)) = sock.recv_from(&mut buf).await else { continue };
                let mut out = format!("{name}:").into_bytes();
                out.extend_from_slice(&buf[..n]);
                if delay.is_zero() {
                    let _ = sock.send_to(&out, from).await;
                } else {
                    let sock = sock.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(delay).await;
                        let _ = sock.send_to(&out, from).await;
                    });
                }
            }
        });
        Self { task }
    }
    pub async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

/// A process the test started, killed and reaped when dropped (a failing test leaves none).
pub struct Child(pub std::process::Child);

impl Child {
    /// The `ingress` binary with `-c config`, its output discarded.
    pub fn ingress(config: &std::path::Path) -> Self {
        Self::spawn(std::process::Command::new(env!("CARGO_BIN_EXE_ingress")).arg("-c").arg(config))
    }

    pub fn spawn(cmd: &mut std::process::Command) -> Self {
        use std::process::Stdio;
        Self(cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("spawn"))
    }

    pub fn id(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

// A port nothing listens on right now, outside the ephemeral range.
#[allow(unused_imports)] // not every test file listens on a port of its own
pub use test_support::free_port;
