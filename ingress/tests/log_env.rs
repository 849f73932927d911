//! The log filter comes from INGRESS_LOG, else RUST_LOG, else `info`; INGRESS_LOG is never
//! taken for a config override (it shares the INGRESS_ prefix).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs the ingress with `env` until its listener is bound, stops it, and returns its log (the
/// ingress logs to stderr, as `shared::logging` sets up).
fn log_with(env: &[(&str, &str)]) -> String {
    let tmp = tempfile::Builder::new().prefix("ingress-logenv-").tempdir().expect("temp dir");
    let dir = tmp.path();
    let port = test_support::free_port();
    let conf = dir.join("ingress.toml");
    std::fs::write(
        &conf,
        format!(
            "[pool.home]\npaths = [{{ name = \"w\", address = \"192.0.2.1\" }}]\n\
             [[service]]\nname = \"s\"\nlisten = [\"127.0.0.1:{port}\"]\npool = \"home\"\n"
        ),
    )
    .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ingress"));
    cmd.args(["-c", conf.to_str().unwrap()]).env_remove("INGRESS_LOG").env_remove("RUST_LOG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    // Once the ingress holds its port it has logged (or is about to log) "ingress running":
    // the SIGTERM handler is installed before and the line is written before any signal is
    // handled. Then stop it and read what it wrote.
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
        assert!(Instant::now() < deadline, "the ingress never bound 127.0.0.1:{port}");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    let mut text = String::new();
    child.stderr.take().unwrap().read_to_string(&mut text).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "exit {status}: {text}");
    text
}

#[test]
fn ingress_log_then_rust_log_then_info() {
    // Neither set: info.
    assert!(log_with(&[]).contains("ingress running"));
    // RUST_LOG alone is honoured: at error level the info line is gone.
    assert!(!log_with(&[("RUST_LOG", "error")]).contains("ingress running"));
    // INGRESS_LOG wins over RUST_LOG, and is accepted although it carries the INGRESS_ prefix.
    assert!(log_with(&[("INGRESS_LOG", "debug"), ("RUST_LOG", "error")]).contains("ingress running"));
    assert!(!log_with(&[("INGRESS_LOG", "error"), ("RUST_LOG", "info")]).contains("ingress running"));
}
