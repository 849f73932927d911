//! A restart of `ingress` under continuous connections, on loopback: clients connect every
//! few milliseconds to a TCP service relayed to an echo on a path, while the ingress is stopped
//! (SIGTERM: stop accepting, drain) and started again three times, its listening sockets kept
//! across the gap in a descriptor store as systemd keeps them for the packaged unit
//! (`netns::fdstore`). Asserts that no client fails, then, as a control, that a restart with the
//! store flushed (`systemctl stop` + `start`) refuses clients.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use netns::fdstore::FdStore;
use test_support::free_port;

const LISTEN: &str = "127.0.0.4";
const RESTARTS: u32 = 3;

fn bin() -> PathBuf {
    let peer_echo = PathBuf::from(env!("CARGO_BIN_EXE_peer-echo"));
    let dir = peer_echo.parent().expect("target dir").to_path_buf();
    let p = std::env::var_os("INGRESS_BIN").map(PathBuf::from).unwrap_or_else(|| dir.join("ingress"));
    assert!(p.is_file(), "ingress binary missing at {}: cargo build -p ingress", p.display());
    p
}

/// A TCP echo on 127.0.0.1 (the pool's one path).
fn echo() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let a = l.local_addr().unwrap();
    thread::spawn(move || {
        for c in l.incoming().flatten() {
            thread::spawn(move || {
                let mut r = c.try_clone().unwrap();
                let mut w = c;
                let _ = std::io::copy(&mut r, &mut w);
            });
        }
    });
    a
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(store: &FdStore, bin: &Path, cfg: &Path, log: &Path) -> Proc {
    let argv = vec![bin.display().to_string(), "-c".into(), cfg.display().to_string()];
    let (argv, copies) = store.command(&argv).unwrap();
    let child = Command::new(&argv[0])
        .args(&argv[1..])
        .env("INGRESS_LOG", "info")
        // The binaries read INGRESS_* as config overrides: not this one.
        .env_remove("INGRESS_BIN")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::options().create(true).append(true).open(log).unwrap())
        .spawn()
        .unwrap();
    drop(copies);
    Proc(child)
}

fn stop(p: &mut Proc) {
    assert!(Command::new("kill").args(["-TERM", &p.0.id().to_string()]).status().unwrap().success());
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(40) {
        if let Some(status) = p.0.try_wait().unwrap() {
            assert!(status.success(), "ingress exited {status} after SIGTERM");
            return;
        }
        thread::sleep(Duration::from_millis(2));
    }
    panic!("ingress still running 40 s after SIGTERM");
}

fn echo_once(to: SocketAddr, n: u64) -> Result<(), String> {
    let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(3)).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
    let line = format!("ping {n:>20}\n");
    s.write_all(line.as_bytes()).map_err(|e| format!("write: {e}"))?;
    let mut back = vec![0u8; line.len()];
    s.read_exact(&mut back).map_err(|e| format!("read: {e}"))?;
    (back == line.as_bytes()).then_some(()).ok_or_else(|| "echo mismatch".to_string())
}

#[test]
fn ingress_restarts_under_load_refuse_no_client() {
    let bin = bin();
    // Removed on drop, also on panic.
    let tmp = netns::tempdir::TempDir::new(&netns::unique_tag()).unwrap();
    let dir = tmp.path().to_path_buf();
    let port = free_port();
    let path = echo();
    let cfg = dir.join("ingress.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"[pool.home]
paths = [{{ name = "lan", address = "{path}" }}]
health = {{ interval = "200ms", timeout = "200ms", rise = 1, fall = 2 }}

[[service]]
name = "echo"
listen = ["{LISTEN}:{port}"]
pool = "home"
"#
        ),
    )
    .unwrap();
    let log = dir.join("ingress.log");
    let dump = || std::fs::read_to_string(&log).unwrap_or_default();
    let mut store = FdStore::new(&dir).unwrap();
    let mut p = start(&store, &bin, &cfg, &log);
    store.wait_ready(1, Duration::from_secs(20)).unwrap_or_else(|e| panic!("{e:#}\n{}", dump()));
    store.poll().unwrap();
    assert_eq!(store.names(), vec![format!("tcp-{LISTEN}_{port}")]);

    let to: SocketAddr = format!("{LISTEN}:{port}").parse().unwrap();
    let stopper = netns::wait::StopOnDrop::default();
    let (stop_load, ok, failed) = (stopper.flag(), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let errors = Arc::new(Mutex::new(Vec::new()));
    let load: Vec<_> = (0..2)
        .map(|_| {
            let (stop_load, ok, failed, errors) = (stop_load.clone(), ok.clone(), failed.clone(), errors.clone());
            thread::spawn(move || {
                let mut n = 0;
                while !stop_load.load(Ordering::Relaxed) {
                    n += 1;
                    match echo_once(to, n) {
                        Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                        Err(e) => {
                            errors.lock().unwrap().push(e);
                            failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                    thread::sleep(Duration::from_millis(2));
                }
            })
        })
        .collect();
    thread::sleep(Duration::from_millis(500));
    for i in 1..=RESTARTS {
        stop(&mut p);
        thread::sleep(Duration::from_millis(150));
        p = start(&store, &bin, &cfg, &log);
        store.wait_ready(1 + i, Duration::from_secs(20)).unwrap_or_else(|e| panic!("{e:#}\n{}", dump()));
        thread::sleep(Duration::from_millis(500));
    }
    let (graceful_ok, graceful_failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    let graceful_errors = errors.lock().unwrap().clone();

    // Control: the store flushed, as `systemctl stop` does.
    store.clear();
    stop(&mut p);
    thread::sleep(Duration::from_millis(300));
    p = start(&store, &bin, &cfg, &log);
    store.wait_ready(2 + RESTARTS, Duration::from_secs(20)).unwrap_or_else(|e| panic!("{e:#}\n{}", dump()));
    thread::sleep(Duration::from_millis(300));
    stopper.stop();
    for t in load {
        t.join().unwrap();
    }
    drop(p);
    let control_failed = failed.load(Ordering::Relaxed) - graceful_failed;
    eprintln!("RESULT ingress_restart restarts={RESTARTS} ok={graceful_ok} failed={graceful_failed} control_failed={control_failed}");
    assert_eq!(
        graceful_failed,
        0,
        "clients failed across graceful restarts: {:?}",
        &graceful_errors[..graceful_errors.len().min(10)]
    );
    assert!(graceful_ok > 300, "too little load to judge: {graceful_ok}");
    assert!(control_failed > 0, "a restart without the store should refuse clients");
}

/// A UDP echo on 127.0.0.1 with a TCP listener on the same port for the path's health probes.
/// The port comes from `free_port` (free for both protocols, below the ephemeral range): a UDP
/// `bind(0)` port may be some test's outgoing TCP connection's local port already.
fn udp_echo() -> SocketAddr {
    let a = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let s = std::net::UdpSocket::bind(a).unwrap();
    let probes = TcpListener::bind(a).unwrap();
    thread::spawn(move || for _ in probes.incoming() {});
    thread::spawn(move || {
        let mut b = [0u8; 2048];
        while let Ok((n, from)) = s.recv_from(&mut b) {
            let _ = s.send_to(&b[..n], from);
        }
    });
    a
}

/// Sends `what` from a new client socket until it comes back (the path comes up after a probe
/// round), within 10 s.
fn udp_ask(to: SocketAddr, what: &str) -> Result<(), String> {
    let c = std::net::UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    c.set_read_timeout(Some(Duration::from_millis(100))).map_err(|e| e.to_string())?;
    let mut b = [0u8; 2048];
    for _ in 0..100 {
        c.send_to(what.as_bytes(), to).map_err(|e| format!("send: {e}"))?;
        if let Ok((n, _)) = c.recv_from(&mut b) {
            return (&b[..n] == what.as_bytes()).then_some(()).ok_or_else(|| "echo mismatch".into());
        }
    }
    Err(format!("no answer to {what:?} within 10 s"))
}

/// A UDP port with `udp_reuseport` is a group of sockets, one per event loop, each kept in the
/// store under its own name. A restart serves the kept group; one with more loops joins new
/// sockets to it; one with fewer releases the extra ones. Clients are answered throughout.
#[test]
fn a_reuseport_group_is_kept_across_restarts_and_follows_the_loops() {
    let bin = bin();
    let tmp = netns::tempdir::TempDir::new(&netns::unique_tag()).unwrap();
    let dir = tmp.path().to_path_buf();
    let port = free_port();
    let path = udp_echo();
    let cfg = dir.join("ingress.toml");
    let write_cfg = |threads: usize| {
        std::fs::write(
            &cfg,
            format!(
                r#"[limits]
threads = {threads}

[pool.home]
paths = [{{ name = "lan", address = "{path}" }}]
health = {{ interval = "200ms", timeout = "200ms", rise = 1, fall = 2 }}

[[service]]
name = "echo"
listen = ["{LISTEN}:{port}"]
protocol = "udp"
pool = "home"
udp_reuseport = true
"#
            ),
        )
        .unwrap()
    };
    let log = dir.join("ingress.log");
    let dump = || std::fs::read_to_string(&log).unwrap_or_default();
    let to: SocketAddr = format!("{LISTEN}:{port}").parse().unwrap();
    let base = format!("udp-{LISTEN}_{port}");
    let names = |store: &FdStore| {
        let mut n = store.names();
        n.sort();
        n
    };
    let mut store = FdStore::new(&dir).unwrap();

    write_cfg(2);
    let mut p = start(&store, &bin, &cfg, &log);
    store.wait_ready(1, Duration::from_secs(20)).unwrap_or_else(|e| panic!("{e:#}\n{}", dump()));
    store.poll().unwrap();
    assert_eq!(names(&store), [base.clone(), format!("{base}.1")], "a socket per loop, each named");
    udp_ask(to, "before").unwrap_or_else(|e| panic!("{e}\n{}", dump()));

    // The same loops: the kept group serves, nothing is bound anew.
    stop(&mut p);
    p = start(&store, &bin, &cfg, &log);
    store.wait_ready(2, Duration::from_secs(20)).unwrap_or_else(|e| panic!("{e:#}\n{}", dump()));
    store.poll().unwrap();
    assert_eq!(names(&store), [base.clone(), format!("{base}.1")]);
    let kept =
        |name: &str| dump().lines().filter(|l| l.contains("kept across the restart") && l.contains(name)).count();
    assert_eq!((kept(&format!("fd_name={base} ")), kept(&format!("fd_name={base}.1"))), (1, 1), "{}", dump());
    udp_ask(to, "same loops").unwrap_or_else(|e| panic!("{e}\n{}", dump()));

    // More loops: a third socket joins the kept group.
    write_cfg(3);
    stop(&mut p);
    p = start(&store, &bin, &cfg, &log);
    store.wait_ready(3, Duration::from_secs(20)).unwrap_or_else(|e| panic!("{e:#}\n{}", dump()));
    store.poll().unwrap();
    assert_eq!(names(&store), [base.clone(), format!("{base}.1"), format!("{base}.2")], "{}", dump());
    assert!(!dump().contains("not in a group"), "{}", dump());
    for i in 0..6 {
        udp_ask(to, &format!("three loops {i}")).unwrap_or_else(|e| panic!("{e}\n{}", dump()));
    }

    // One loop: the first socket serves alone, the others are closed and leave the store.
    write_cfg(1);
    stop(&mut p);
    p = start(&store, &bin, &cfg, &log);
    store.wait_ready(4, Duration::from_secs(20)).unwrap_or_else(|e| panic!("{e:#}\n{}", dump()));
    store.poll().unwrap();
    assert_eq!(names(&store), [base], "{}", dump());
    for i in 0..6 {
        udp_ask(to, &format!("one loop {i}")).unwrap_or_else(|e| panic!("{e}\n{}", dump()));
    }
    drop(p);
}
