//! The `ingress` binary itself: `check`, SIGHUP reload (a bad file is refused and the
//! running config stays), SIGTERM drain.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill").args([sig, &pid.to_string()]).status().expect("kill").success();
    assert!(ok, "kill {sig} {pid}");
}

#[test]
fn check_lists_problems_and_exits_nonzero() {
    let tmp = tempdir();
    let dir = tmp.path();
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "[pool.home]\npaths = [{ name = \"w\", address = \"nope\" }]\n").expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_ingress")).args(["check", "-c"]).arg(&bad).output().expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("pool.home.paths[0].address") && err.contains("[[service]]"), "{err}");
    let good = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/ingress.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_ingress")).args(["check", "-c"]).arg(&good).output().expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

use std::path::Path;

/// A fresh directory, removed when the returned value drops (a failed test's too).
fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("ingress-test-").tempdir().expect("temp dir")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reload_and_sigterm_drain() {
    let one = Backend::start("one", "127.0.0.2").await;
    let two = Backend::start("two", "127.0.0.3").await;
    let port = free_port();
    let conf = |backend: std::net::SocketAddr| {
        format!(
            "[pool.home]\npaths = [{{ name = \"wan\", address = \"{backend}\" }}]\n\
             [limits]\ndrain_timeout = \"10s\"\n\
             [[service]]\nname = \"echo\"\nlisten = [\"127.0.0.1:{port}\"]\npool = \"home\"\n"
        )
    };
    let tmp = tempdir();
    let dir = tmp.path();
    let file = dir.join("ingress.toml");
    std::fs::write(&file, conf(one.addr)).expect("write");
    let child = Child::ingress(&file);
    let pid = child.0.id();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while request(addr).await.is_err() {
        assert!(tokio::time::Instant::now() < deadline, "ingress never served");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(request(addr).await.expect("served"), "one");
    // A long-lived connection established before any reload.
    let mut held = tokio::net::TcpStream::connect(addr).await.expect("held");
    // A broken file: refused, the running config stays.
    std::fs::write(&file, "this is not toml [[[").expect("write");
    signal(pid, "-HUP");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(request(addr).await.expect("still served"), "one");
    // A good new file: new connections go to the new backend.
    std::fs::write(&file, conf(two.addr)).expect("write");
    signal(pid, "-HUP");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while request(addr).await.as_deref() != Ok("two") {
        assert!(tokio::time::Instant::now() < deadline, "reload never took effect");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // SIGTERM: no new connections, the held one still works until it closes.
    signal(pid, "-TERM");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while tokio::net::TcpStream::connect(addr).await.is_ok() {
        assert!(tokio::time::Instant::now() < deadline, "still accepting after SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    held.write_all(b"during drain\n").await.expect("write");
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    while !got.ends_with(b"during drain\n") {
        let n = tokio::time::timeout(Duration::from_secs(3), held.read(&mut buf)).await.expect("timely").expect("read");
        assert!(n > 0, "held connection cut during drain");
        got.extend_from_slice(&buf[..n]);
    }
    assert!(got.starts_with(b"one\n"), "the held connection kept its original backend");
    drop(held);
    let mut child = child;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let status = loop {
        if let Some(s) = child.0.try_wait().expect("wait") {
            break s;
        }
        assert!(std::time::Instant::now() < deadline, "did not exit after the drain");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success());
}
