//! A restart of `local-proxy` under continuous connections, on loopback: TCP through a WAN
//! stream listener (PROXY v2 from a trusted address), plain HTTP and HTTPS by Host and a UDP
//! stream on the mesh-side address, all while the proxy is stopped (SIGTERM: it stops
//! accepting and drains) and started again three times, its listening sockets kept across the
//! gap in a descriptor store as systemd keeps them (`netns::fdstore`; the packaged unit sets
//! `FileDescriptorStoreMax=`). Asserts: not one TCP, HTTP or HTTPS client fails, every
//! connection started during a gap is served by the next process, a UDP client loses not one
//! datagram (a stopping process relays the replies still on their way; what arrives meanwhile
//! waits in the kept socket for the next one); then, as a control, a restart whose store was
//! flushed (`systemctl stop` + `start`) does refuse clients.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use netns::fdstore::FdStore;
use netns::netprobe::proxy_v2_header;

const WAN: &str = "127.0.0.2";
const MESH: &str = "127.0.0.3";
const SITE: &str = "restart.test";
const RESTARTS: u32 = 3;
/// Client I/O bound: a connection queued during a restart waits for the next process.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

fn bin() -> PathBuf {
    let peer_echo = PathBuf::from(env!("CARGO_BIN_EXE_peer-echo"));
    let dir = peer_echo.parent().expect("target dir").to_path_buf();
    let p = std::env::var_os("LOCAL_PROXY_BIN").map(PathBuf::from).unwrap_or_else(|| dir.join("local-proxy"));
    assert!(p.is_file(), "local-proxy binary missing at {}: cargo build -p local-proxy", p.display());
    p
}

use test_support::free_port;

/// Upstreams on 127.0.0.1: a TCP echo, a UDP echo and an HTTP/1 server answering "ok".
fn upstreams() -> (SocketAddr, SocketAddr, SocketAddr) {
    let echo = TcpListener::bind("127.0.0.1:0").unwrap();
    let echo_addr = echo.local_addr().unwrap();
    thread::spawn(move || {
        for c in echo.incoming().flatten() {
            thread::spawn(move || {
                let mut r = c.try_clone().unwrap();
                let mut w = c;
                let _ = std::io::copy(&mut r, &mut w);
            });
        }
    });
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let udp_addr = udp.local_addr().unwrap();
    thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = udp.recv_from(&mut buf) {
            let _ = udp.send_to(&buf[..n], from);
        }
    });
    let http = TcpListener::bind("127.0.0.1:0").unwrap();
    let http_addr = http.local_addr().unwrap();
    thread::spawn(move || {
        for mut c in http.incoming().flatten() {
            thread::spawn(move || {
                let _ = c.set_read_timeout(Some(IO_TIMEOUT));
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match c.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = c.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
            });
        }
    });
    (echo_addr, udp_addr, http_addr)
}

struct Ports {
    https: u16,
    http: u16,
    tcp: u16,
    udp: u16,
}

fn config(dir: &Path, p: &Ports, cert: &netns::tls::Cert, up: (SocketAddr, SocketAddr, SocketAddr)) -> PathBuf {
    let (echo, udp, http) = up;
    let text = format!(
        r#"[wan]
addresses = ["{WAN}"]
trusted_ingress = ["127.0.0.1"]

[mesh]
listen = "{MESH}"

[http]
https_port = {https}
http_port = {http_port}
# Plain HTTP is served, not redirected: the HTTP client checks the upstream's answer.
redirect_to_https = false

[[tls.certificate]]
cert = "{cert}"
key = "{key}"

[[site]]
host = "{SITE}"
upstream = "http://{http}"

[[stream]]
name = "echo"
listen = "{tcp}/tcp"
upstream = "{echo}"

[[stream]]
name = "uecho"
listen = "{udp_port}/udp"
upstream = "{udp}"
"#,
        https = p.https,
        http_port = p.http,
        cert = cert.cert.display(),
        key = cert.key.display(),
        tcp = p.tcp,
        udp_port = p.udp,
    );
    let path = dir.join("local-proxy.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// The proxy process; killed if the test ends early.
struct Proxy(Child);

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(store: &FdStore, bin: &Path, cfg: &Path, log: &Path) -> Proxy {
    let argv = vec![bin.display().to_string(), "-c".into(), cfg.display().to_string()];
    let (argv, copies) = store.command(&argv).unwrap();
    let child = Command::new(&argv[0])
        .args(&argv[1..])
        .env("LOCAL_PROXY_LOG", "info")
        // The binaries read LOCAL_PROXY_* as config overrides: not this one.
        .env_remove("LOCAL_PROXY_BIN")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::options().create(true).append(true).open(log).unwrap())
        .spawn()
        .unwrap();
    // The child has its copies; ours go.
    drop(copies);
    Proxy(child)
}

/// SIGTERM, then wait (bounded) for the drain to end.
fn stop(p: &mut Proxy) -> Duration {
    let t0 = Instant::now();
    let out = Command::new("kill").args(["-TERM", &p.0.id().to_string()]).status().unwrap();
    assert!(out.success());
    while t0.elapsed() < Duration::from_secs(20) {
        if let Some(status) = p.0.try_wait().unwrap() {
            assert!(status.success(), "local-proxy exited {status} after SIGTERM");
            return t0.elapsed();
        }
        thread::sleep(Duration::from_millis(2));
    }
    panic!("local-proxy still running 20 s after SIGTERM");
}

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    failed: AtomicU64,
    errors: Mutex<Vec<String>>,
}

impl Tally {
    fn record(&self, what: &str, r: Result<(), String>) {
        match r {
            Ok(()) => {
                self.ok.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                let mut errors = self.errors.lock().unwrap();
                if errors.len() < 20 {
                    errors.push(format!("{what}: {e}"));
                }
            }
        }
    }
    fn snapshot(&self) -> (u64, u64) {
        (self.ok.load(Ordering::Relaxed), self.failed.load(Ordering::Relaxed))
    }
}

fn tcp_echo_once(to: SocketAddr, n: u64) -> Result<(), String> {
    let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(3)).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(IO_TIMEOUT)).map_err(|e| e.to_string())?;
    let local = s.local_addr().map_err(|e| e.to_string())?;
    let mut msg = proxy_v2_header(local, to);
    let payload = format!("echo {n:>20}\n");
    msg.extend_from_slice(payload.as_bytes());
    s.write_all(&msg).map_err(|e| format!("write: {e}"))?;
    let mut back = vec![0u8; payload.len()];
    s.read_exact(&mut back).map_err(|e| format!("read: {e}"))?;
    if back != payload.as_bytes() {
        return Err(format!("echo mismatch: {:?}", String::from_utf8_lossy(&back)));
    }
    Ok(())
}

fn http_once(to: SocketAddr) -> Result<(), String> {
    let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(3)).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(IO_TIMEOUT)).map_err(|e| e.to_string())?;
    s.write_all(format!("GET / HTTP/1.1\r\nHost: {SITE}\r\nConnection: close\r\n\r\n").as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let mut body = String::new();
    s.read_to_string(&mut body).map_err(|e| format!("read: {e}"))?;
    if !body.starts_with("HTTP/1.1 200") || !body.ends_with("ok") {
        return Err(format!("response {:?}", body.lines().next().unwrap_or_default()));
    }
    Ok(())
}

fn https_once(port: u16) -> Result<(), String> {
    let out = Command::new("curl")
        .args(["-sSk", "--max-time", "10", "--resolve", &format!("{SITE}:{port}:{MESH}")])
        .arg(format!("https://{SITE}:{port}/"))
        .output()
        .map_err(|e| format!("curl: {e}"))?;
    let body = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || body != "ok" {
        return Err(format!("curl {}: {} {body:?}", out.status, String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(())
}

#[test]
fn restarts_under_load_refuse_no_client() {
    let bin = bin();
    let dir = tempdir();
    let cert = netns::tls::self_signed(dir.path(), "site", &[SITE]).unwrap();
    let up = upstreams();
    let ports = Ports { https: free_port(), http: free_port(), tcp: free_port(), udp: free_port() };
    let cfg = config(dir.path(), &ports, &cert, up);
    let log = dir.path().join("local-proxy.log");
    let mut store = FdStore::new(dir.path()).unwrap();
    let dump_log = || std::fs::read_to_string(&log).unwrap_or_default();

    let mut proxy = start(&store, &bin, &cfg, &log);
    store.wait_ready(1, Duration::from_secs(20)).unwrap_or_else(|e| panic!("{e:#}\n{}", dump_log()));
    store.poll().unwrap();
    // Every listener is in the store: HTTPS, HTTP and both streams on the mesh address, the
    // same on the WAN address.
    let names = store.names();
    assert_eq!(names.len(), 8, "{names:?}");
    assert!(names.contains(&format!("wan-tcp-{WAN}-{}", ports.tcp)), "{names:?}");
    assert!(names.contains(&format!("mesh-udp-{MESH}-{}", ports.udp)), "{names:?}");

    let stopper = netns::wait::StopOnDrop::default();
    let stop_load = stopper.flag();
    let (tcp, http, https) = (Arc::new(Tally::default()), Arc::new(Tally::default()), Arc::new(Tally::default()));
    let mut load = Vec::new();
    let wan_tcp: SocketAddr = format!("{WAN}:{}", ports.tcp).parse().unwrap();
    let mesh_http: SocketAddr = format!("{MESH}:{}", ports.http).parse().unwrap();
    for _ in 0..2 {
        let (stop_load, tcp) = (stop_load.clone(), tcp.clone());
        load.push(thread::spawn(move || {
            let mut n = 0;
            while !stop_load.load(Ordering::Relaxed) {
                n += 1;
                tcp.record("tcp", tcp_echo_once(wan_tcp, n));
                thread::sleep(Duration::from_millis(2));
            }
        }));
    }
    {
        let (stop_load, http) = (stop_load.clone(), http.clone());
        load.push(thread::spawn(move || {
            while !stop_load.load(Ordering::Relaxed) {
                http.record("http", http_once(mesh_http));
                thread::sleep(Duration::from_millis(2));
            }
        }));
    }
    {
        let (stop_load, https, port) = (stop_load.clone(), https.clone(), ports.https);
        load.push(thread::spawn(move || {
            while !stop_load.load(Ordering::Relaxed) {
                https.record("https", https_once(port));
            }
        }));
    }
    // UDP: a datagram every 2 ms, each with its sequence number; replies counted.
    let udp = Arc::new(UdpSocket::bind("127.0.0.1:0").unwrap());
    udp.connect((MESH, ports.udp)).unwrap();
    udp.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let (udp_sent, udp_answered) =
        (Arc::new(AtomicU64::new(0)), Arc::new(Mutex::new(std::collections::BTreeSet::new())));
    {
        let (stop_load, udp, sent) = (stop_load.clone(), udp.clone(), udp_sent.clone());
        load.push(thread::spawn(move || {
            let mut seq = 0u64;
            while !stop_load.load(Ordering::Relaxed) {
                if udp.send(&seq.to_be_bytes()).is_ok() {
                    seq += 1;
                    sent.store(seq, Ordering::Relaxed);
                }
                thread::sleep(Duration::from_millis(2));
            }
        }));
    }
    let receiver = {
        let (udp, answered, stop_load) = (udp.clone(), udp_answered.clone(), stop_load.clone());
        thread::spawn(move || {
            let mut buf = [0u8; 64];
            let mut quiet_since: Option<Instant> = None;
            loop {
                match udp.recv(&mut buf) {
                    Ok(8) => {
                        answered.lock().unwrap().insert(u64::from_be_bytes(buf[..8].try_into().unwrap()));
                        quiet_since = None;
                    }
                    _ => {
                        // Stop once the load stopped and replies stayed away for 1 s.
                        if stop_load.load(Ordering::Relaxed) {
                            let q = *quiet_since.get_or_insert_with(Instant::now);
                            if q.elapsed() > Duration::from_secs(1) {
                                return;
                            }
                        }
                    }
                }
            }
        })
    };

    let settle = || thread::sleep(Duration::from_millis(700));
    settle();
    let mut report = Vec::new();
    for i in 1..=RESTARTS {
        let before = (tcp.snapshot(), http.snapshot(), https.snapshot());
        let sent_at_stop = udp_sent.load(Ordering::Relaxed);
        let drain = stop(&mut proxy);
        let down = Instant::now();
        // Clients keep connecting while no process runs: the kernel queues them.
        thread::sleep(Duration::from_millis(150));
        proxy = start(&store, &bin, &cfg, &log);
        store.wait_ready(1 + i, Duration::from_secs(20)).unwrap_or_else(|e| panic!("{e:#}\n{}", dump_log()));
        let gap = down.elapsed();
        let sent_at_start = udp_sent.load(Ordering::Relaxed);
        settle();
        let after = (tcp.snapshot(), http.snapshot(), https.snapshot());
        report.push(format!(
            "restart {i}: drain {} ms, no process for {} ms; UDP datagrams {sent_at_stop}..{sent_at_start} sent from the stop to the next start; served meanwhile tcp {} http {} https {}",
            drain.as_millis(),
            gap.as_millis(),
            after.0 .0 - before.0 .0,
            after.1 .0 - before.1 .0,
            after.2 .0 - before.2 .0
        ));
        assert_eq!(store.names().len(), 8, "restart {i}: the same sockets are stored: {:?}", store.names());
    }
    let graceful = (tcp.snapshot(), http.snapshot(), https.snapshot());
    let udp_sent_graceful = udp_sent.load(Ordering::Relaxed);
    // The replies to the datagrams just counted come back before the control's stop, which
    // closes the sockets with the process: a datagram sent a moment before it was counted
    // lost (1 of 1,900 once, the last one).
    thread::sleep(Duration::from_millis(200));

    // Control: the store flushed, as `systemctl stop` does; the sockets close with the process.
    store.clear();
    stop(&mut proxy);
    thread::sleep(Duration::from_millis(300));
    proxy = start(&store, &bin, &cfg, &log);
    store.wait_ready(2 + RESTARTS, Duration::from_secs(20)).unwrap_or_else(|e| panic!("{e:#}\n{}", dump_log()));
    settle();
    stopper.stop();
    for t in load {
        t.join().unwrap();
    }
    receiver.join().unwrap();
    let control_failed = tcp.snapshot().1 - graceful.0 .1;
    drop(proxy);

    let answered = udp_answered.lock().unwrap();
    let lost: Vec<u64> = (0..udp_sent_graceful).filter(|s| !answered.contains(s)).collect();
    let udp_lost_graceful = lost.len() as u64;
    for line in &report {
        eprintln!("{line}");
    }
    eprintln!(
        "RESULT local_proxy_restart restarts={RESTARTS} tcp_ok={} tcp_failed={} http_ok={} http_failed={} https_ok={} https_failed={} udp_sent={udp_sent_graceful} udp_lost={udp_lost_graceful} control_tcp_failed={control_failed}",
        graceful.0 .0, graceful.0 .1, graceful.1 .0, graceful.1 .1, graceful.2 .0, graceful.2 .1
    );
    let errors = |t: &Tally| t.errors.lock().unwrap().join("\n");
    assert_eq!(graceful.0 .1, 0, "TCP clients failed across graceful restarts:\n{}", errors(&tcp));
    assert_eq!(graceful.1 .1, 0, "HTTP clients failed across graceful restarts:\n{}", errors(&http));
    assert_eq!(graceful.2 .1, 0, "HTTPS clients failed across graceful restarts:\n{}", errors(&https));
    assert!(graceful.0 .0 > 100 && graceful.1 .0 > 50 && graceful.2 .0 > 5, "too little load to judge: {graceful:?}");
    assert!(
        udp_lost_graceful == 0,
        "UDP lost {udp_lost_graceful} of {udp_sent_graceful} datagrams across {RESTARTS} restarts (the replies on their way at each stop should still be relayed): sequence numbers {lost:?}\n{}",
        report.join("\n")
    );
    assert!(control_failed > 0, "a restart without the store should refuse clients; the test would not see a gap");
}

/// A restart onto a config whose WAN listeners moved from the wildcard to one address: the
/// kept wildcard socket is released, and the store (as systemd) closes its copy only when it
/// reads the removal, so the new bind on its port is refused for a moment. The proxy tries it
/// again instead of exiting (a failed start, and one more for `Restart=` to make).
#[test]
fn a_restart_that_leaves_the_wildcard_address_serves_at_once() {
    let bin = bin();
    let dir = tempdir();
    let (echo, _, _) = upstreams();
    let (tcp, http, https) = (free_port(), free_port(), free_port());
    let cfg = dir.path().join("local-proxy.toml");
    let write = |address: &str| {
        let text = format!(
            "[wan]\naddresses = [\"{address}\"]\ntrusted_ingress = [\"127.0.0.1\"]\n[http]\nhttps_port = {https}\n\
             http_port = {http}\n[[stream]]\nname = \"echo\"\nlisten = \"{tcp}/tcp\"\nupstream = \"{echo}\"\n"
        );
        std::fs::write(&cfg, text).unwrap();
    };
    let log = dir.path().join("local-proxy.log");
    let dump_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let mut store = FdStore::new(dir.path()).unwrap();
    write("0.0.0.0");
    let mut proxy = start(&store, &bin, &cfg, &log);
    store.wait_ready(1, Duration::from_secs(20)).unwrap_or_else(|e| panic!("{e:#}\n{}", dump_log()));
    store.poll().unwrap();
    assert!(store.names().contains(&format!("wan-tcp-0.0.0.0-{tcp}")), "{:?}", store.names());
    stop(&mut proxy);
    write(WAN);
    let mut proxy = start(&store, &bin, &cfg, &log);
    // Reads the store's messages as systemd would, the removal among them, while it waits.
    store.wait_ready(2, Duration::from_secs(20)).unwrap_or_else(|e| panic!("{e:#}\n{}", dump_log()));
    let to: SocketAddr = format!("{WAN}:{tcp}").parse().unwrap();
    tcp_echo_once(to, 1).unwrap_or_else(|e| panic!("{e}\n{}", dump_log()));
    assert!(!store.names().iter().any(|n| n.contains("0.0.0.0")), "{:?}", store.names());
    stop(&mut proxy);
}

/// A temp dir of its own per test (two tests of one process once shared one), removed on
/// drop (also on panic); the run's tag lets a later run sweep it if this one was killed.
fn tempdir() -> netns::tempdir::TempDir {
    netns::tempdir::TempDir::new(&netns::unique_tag()).unwrap()
}
