//! systemd notifications under `Type=notify` (the packaged unit): READY=1 once the listeners
//! are bound and every pool's first round of active checks is done (bounded), a STATUS=
//! one-line summary, RELOADING=1 with MONOTONIC_USEC then READY=1 around SIGHUP (also when the new
//! file is refused), STOPPING=1 on SIGTERM; WATCHDOG=1 pings that stop when the runtime is wedged.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::net::UnixDatagram;
use std::process::Stdio;
use std::time::Duration;

use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_local-proxy");

/// The next state datagram (blocking the test thread up to 10 s: the proxy runs in its own
/// process). `FDSTORE=1` messages (each listening socket handed to systemd's descriptor store;
/// tests/netns local_proxy_restart covers them) and `STATUS=` summaries are skipped.
fn next(sock: &UnixDatagram) -> String {
    loop {
        let text = next_any(sock);
        if !text.starts_with("STATUS=") {
            return text;
        }
    }
}

/// Like [`next`], `STATUS=` lines included.
fn next_any(sock: &UnixDatagram) -> String {
    sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    loop {
        let mut buf = [0u8; 1024];
        let n = sock.recv(&mut buf).expect("a notification within 10 s");
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        if !text.starts_with("FDSTORE=1\n") {
            return text;
        }
    }
}

fn assert_reloading(message: &str) {
    let usec = message.strip_prefix("RELOADING=1\nMONOTONIC_USEC=").unwrap_or_else(|| panic!("{message:?}"));
    assert!(usec.parse::<u64>().unwrap() > 0, "{message:?}");
}

#[tokio::test]
async fn ready_reloading_and_stopping_are_told() {
    ready_reloading_and_stopping("").await;
}

/// The same with `threads = 1`: the whole proxy on its main thread (current-thread runtime).
#[tokio::test]
async fn ready_reloading_and_stopping_are_told_on_one_thread() {
    ready_reloading_and_stopping("threads = 1\n").await;
}

async fn ready_reloading_and_stopping(top: &str) {
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    let path = dir.path().join("lp.toml");
    std::fs::write(&path, format!("{top}{}", base_config(""))).unwrap();
    let mut child = tokio::process::Command::new(BIN)
        .args(["-c", path.to_str().unwrap()])
        .env("NOTIFY_SOCKET", &sock_path)
        .env("LOCAL_PROXY_LOG", "warn")
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = child.id().unwrap().to_string();
    assert_eq!(next(&sock), "READY=1");

    assert!(run_tool("kill", &["-HUP", &pid], b"").await.status.success());
    assert_reloading(&next(&sock));
    assert_eq!(next(&sock), "READY=1");

    // A refused file still ends the reload with READY=1, else systemd would wait for it.
    std::fs::write(&path, format!("{top}{}\nsurprise = true\n", base_config(""))).unwrap();
    assert!(run_tool("kill", &["-HUP", &pid], b"").await.status.success());
    assert_reloading(&next(&sock));
    assert_eq!(next(&sock), "READY=1");

    assert!(run_tool("kill", &["-TERM", &pid], b"").await.status.success());
    assert_eq!(next(&sock), "STOPPING=1");
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait()).await.unwrap().unwrap();
    assert!(status.success(), "{status}");
}

/// WATCHDOG=1 comes from a task on the proxy's own runtime at half of WATCHDOG_USEC; when the
/// runtime is wedged (the test hook blocks every worker on SIGUSR2) the pings stop, so
/// systemd would restart it.
#[tokio::test]
async fn watchdog_pings_stop_when_the_runtime_is_wedged() {
    watchdog_pings_stop("").await;
}

/// The same with `threads = 1` (the current-thread runtime: one blocked task wedges it).
#[tokio::test]
async fn watchdog_pings_stop_when_the_one_thread_is_wedged() {
    watchdog_pings_stop("threads = 1\n").await;
}

async fn watchdog_pings_stop(top: &str) {
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    let path = dir.path().join("lp.toml");
    std::fs::write(&path, format!("{top}{}", base_config(""))).unwrap();
    let child = tokio::process::Command::new(BIN)
        .args(["-c", path.to_str().unwrap()])
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "200000")
        .env(shared::watchdog::TEST_HOOK_ENV, "1")
        .env("LOCAL_PROXY_LOG", "warn")
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = child.id().unwrap().to_string();
    // Blocking reads on a helper thread: the proxy runs in its own process.
    let count = |sock: UnixDatagram, within: Duration| {
        std::thread::spawn(move || {
            let end = std::time::Instant::now() + within;
            let mut pings = 0;
            while let Some(left) = end.checked_duration_since(std::time::Instant::now()) {
                sock.set_read_timeout(Some(left.max(Duration::from_millis(1)))).unwrap();
                let mut buf = [0u8; 1024];
                match sock.recv(&mut buf) {
                    Ok(n) if &buf[..n] == b"WATCHDOG=1" => pings += 1,
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
            (sock, pings)
        })
        .join()
        .unwrap()
    };
    let (sock, alive) = count(sock, Duration::from_secs(1));
    assert!(run_tool("kill", &["-USR2", &pid], b"").await.status.success());
    let (sock, _) = count(sock, Duration::from_millis(300));
    let (_, wedged) = count(sock, Duration::from_secs(1));
    println!("local-proxy watchdog 200 ms ({top:?}): {alive} pings in a live second, {wedged} in a wedged one");
    assert!(alive >= 5, "pings every 100 ms while alive: {alive}");
    assert_eq!(wedged, 0, "a wedged runtime sends no WATCHDOG=1");
    drop(child);
}

/// A proxy with `streams` on fixed free ports and NOTIFY_SOCKET set; returns the child, the
/// notify socket, the admin address and when it was spawned.
async fn start_notified(
    dir: &std::path::Path,
    streams: &str,
) -> (tokio::process::Child, UnixDatagram, std::net::SocketAddr, std::time::Instant) {
    let sock_path = dir.join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    let admin: std::net::SocketAddr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let text = base_config(streams).replacen("listen = \"127.0.0.1:0\"", &format!("listen = \"{admin}\""), 1);
    let path = dir.join("lp.toml");
    std::fs::write(&path, text).unwrap();
    let spawned = std::time::Instant::now();
    let child = tokio::process::Command::new(BIN)
        .args(["-c", path.to_str().unwrap()])
        .env("NOTIFY_SOCKET", &sock_path)
        .env("LOCAL_PROXY_LOG", "warn")
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    (child, sock, admin, spawned)
}

/// READY=1 waits for the first round of active checks: a UDP check whose upstream never
/// answers (timeout 1 s, fall 1) holds it about a second, and the moment it arrives `/status`
/// already has that upstream down, so no first request is sent to it. Then a STATUS= line
/// sums up sites, streams, upstreams, flows and the firewall. A check that would take longer
/// than the bound (timeout 15 s) does not hold READY=1 past about 5 s.
#[tokio::test]
async fn ready_waits_for_the_first_health_round_and_status_sums_up() {
    // Bound and never read: the probe meets silence (no ICMP refusal) until its timeout.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let stream = format!(
        "[[stream]]\nname = \"quiet\"\nlisten = \"0/udp\"\nupstream = \"{silent_addr}\"\n\
         health = {{ send = \"ping\", interval = \"2s\", timeout = \"1s\", rise = 1, fall = 1 }}\n"
    );
    let (child, sock, admin, spawned) = start_notified(dir.path(), &stream).await;
    let first = std::thread::spawn(move || (next_any(&sock), sock)).join().unwrap();
    let (ready, sock) = (first.0, first.1);
    let waited = spawned.elapsed();
    let (code, body) =
        shared::admin::client::request(admin, http::Method::GET, "/status", None, "test").await.expect("admin answers");
    assert_eq!(ready, "READY=1", "READY is the first state sent");
    let s: serde_json::Value = serde_json::from_str(&body).unwrap();
    println!("READY=1 {waited:?} after the spawn (first round: one 1 s UDP check timeout)");
    assert_eq!(code, http::StatusCode::OK);
    assert_eq!(s["streams"][0]["upstreams"][0]["state"], "down", "judged before READY=1: {s:#}");
    assert!(waited >= Duration::from_millis(900), "READY=1 before the first round could end: {waited:?}");
    let status = std::thread::spawn(move || next_any(&sock)).join().unwrap();
    assert_eq!(status, "STATUS=streams 0/1 serving (upstreams 0/1 up, 0 UDP flows); firewall off");
    drop(child);

    // The bound: a first round that would take 15 s.
    let dir = tempfile::tempdir().unwrap();
    let slow = stream.replace("interval = \"2s\", timeout = \"1s\"", "interval = \"20s\", timeout = \"15s\"");
    let (child, sock, _, spawned) = start_notified(dir.path(), &slow).await;
    let ready = std::thread::spawn(move || next_any(&sock)).join().unwrap();
    let waited = spawned.elapsed();
    println!(
        "READY=1 {waited:?} after the spawn with a 15 s first round (bound {:?})",
        shared::notify::FIRST_ROUND_WAIT
    );
    assert_eq!(ready, "READY=1");
    assert!(
        waited >= Duration::from_millis(4500) && waited < Duration::from_secs(9),
        "READY=1 after the bound, not the check's timeout: {waited:?}"
    );
    drop(child);
    drop(silent);
}

/// SIGTERM while READY=1 still waits for the first round of checks (one that would take 15 s):
/// the proxy does not die of the signal nor send READY=1 first; it says STOPPING=1, drains
/// and exits 0.
#[tokio::test]
async fn sigterm_during_the_first_round_wait_stops_cleanly() {
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let stream = format!(
        "[[stream]]\nname = \"quiet\"\nlisten = \"0/udp\"\nupstream = \"{}\"\n\
         health = {{ send = \"ping\", interval = \"20s\", timeout = \"15s\", rise = 1, fall = 1 }}\n",
        silent.local_addr().unwrap()
    );
    let dir = tempfile::tempdir().unwrap();
    let (mut child, sock, admin, _) = start_notified(dir.path(), &stream).await;
    // The admin listener answers once start-up is past binding, with the signal handlers in
    // place: the wait for the first round (bounded at 5 s) is under way.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while shared::admin::client::request(admin, http::Method::GET, "/healthz", None, "test").await.is_err() {
        assert!(std::time::Instant::now() < deadline, "the admin listener never answered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pid = child.id().unwrap().to_string();
    assert!(run_tool("kill", &["-TERM", &pid], b"").await.status.success());
    let first = std::thread::spawn(move || next_any(&sock)).join().unwrap();
    assert_eq!(first, "STOPPING=1", "SIGTERM before READY=1");
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait()).await.unwrap().unwrap();
    assert!(status.success(), "exited by the signal, not by the drain: {status}");
    drop(silent);
}
