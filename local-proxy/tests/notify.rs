//! systemd notifications under `Type=notify` (the packaged unit): READY=1 once the listeners
//! are bound, RELOADING=1 with MONOTONIC_USEC then READY=1 around SIGHUP (also when the new
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
/// tests/netns local_proxy_restart covers them) are skipped.
fn next(sock: &UnixDatagram) -> String {
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
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    let path = dir.path().join("lp.toml");
    std::fs::write(&path, base_config("")).unwrap();
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
    std::fs::write(&path, format!("{}\nsurprise = true\n", base_config(""))).unwrap();
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
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    let path = dir.path().join("lp.toml");
    std::fs::write(&path, base_config("")).unwrap();
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
    println!("local-proxy watchdog 200 ms: {alive} pings in a live second, {wedged} in a wedged one");
    assert!(alive >= 5, "pings every 100 ms while alive: {alive}");
    assert_eq!(wedged, 0, "a wedged runtime sends no WATCHDOG=1");
    drop(child);
}
