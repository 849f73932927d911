//! A listener passed in LISTEN_FDS by address (as a systemd socket unit passes one; here
//! `systemd-socket-activate`): a reload whose new socket would take its port (the admin
//! listener moved onto a stream's port) is refused before anything is closed, naming why, and
//! the passed listener goes on serving. Under a real socket unit systemd keeps its own copy
//! open, so closing ours never frees the port: the reload was refused all the same, and the
//! socket it had closed could not be bound again while the unit's queued clients nobody
//! accepted.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use shared::proxy_protocol::{self, Command, Transport};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use test_support::free_port;

/// A line through the stream's WAN listener, as the trusted ingress (127.0.0.2) sends it.
async fn through(stream: SocketAddr) -> Option<String> {
    let go = async {
        let client: SocketAddr = "192.0.2.7:40000".parse().unwrap();
        let sock = tokio::net::TcpSocket::new_v4().ok()?;
        sock.bind("127.0.0.2:0".parse().unwrap()).ok()?;
        let mut s = sock.connect(stream).await.ok()?;
        let mut header = Vec::new();
        proxy_protocol::write_v2(&mut header, Command::Proxy, Transport::Stream, Some((client, stream)));
        s.write_all(&header).await.ok()?;
        let mut r = BufReader::new(s);
        r.get_mut().write_all(b"hello\n").await.ok()?;
        let mut line = String::new();
        r.read_line(&mut line).await.ok()?;
        Some(line)
    };
    tokio::time::timeout(Duration::from_secs(3), go).await.ok().flatten()
}

/// The binary under `systemd-socket-activate` with `listen` passed in LISTEN_FDS (named
/// `fdname` if given), its stderr to `log`.
fn activate(
    listen: &str,
    fdname: Option<&str>,
    config: &std::path::Path,
    log: &std::path::Path,
) -> tokio::process::Child {
    let mut cmd = tokio::process::Command::new("systemd-socket-activate");
    cmd.arg(format!("--listen={listen}"));
    if let Some(name) = fdname {
        cmd.arg(format!("--fdname={name}"));
    }
    cmd.arg("--")
        .arg(env!("CARGO_BIN_EXE_local-proxy"))
        .args(["-c", &config.display().to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .expect("systemd-socket-activate (Debian package systemd) runs")
}

/// Waits (10 s at most) until a line comes back through `stream`; the tool starts the proxy
/// at the first connection, if not before.
async fn wait_served(stream: SocketAddr, log: &std::path::Path) {
    let end = tokio::time::Instant::now() + Duration::from_secs(10);
    while through(stream).await.as_deref() != Some("hello\n") {
        let logged = std::fs::read_to_string(log).unwrap_or_default();
        assert!(tokio::time::Instant::now() < end, "{stream} never served: {logged}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_taking_a_socket_units_port_is_refused_and_the_listener_stays() {
    let echo = line_echo(None).await;
    let (admin, http, https, port, other) = (free_port(), free_port(), free_port(), free_port(), free_port());
    let tmp = tempfile::Builder::new().prefix("lp-unit-").tempdir().unwrap();
    let config = tmp.path().join("lp.toml");
    let text = |admin_port: u16, stream_port: u16| {
        format!(
            r#"
[admin]
listen = "127.0.0.1:{admin_port}"
[wan]
addresses = ["127.0.0.1"]
trusted_ingress = ["127.0.0.2"]
[mesh]
listen = "127.0.0.4"
[http]
https_port = {https}
http_port = {http}

[[stream]]
name = "echo"
listen = "{stream_port}/tcp"
upstream = "{echo}"
"#
        )
    };
    std::fs::write(&config, text(admin, port)).unwrap();
    let log = tmp.path().join("stderr");
    let child = activate(&format!("127.0.0.1:{port}"), None, &config, &log);
    let pid = child.id().unwrap().to_string();
    let stream: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let logged = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_served(stream, &log).await;
    assert!(logged().contains("serving the socket kept across the restart"), "{}", logged());

    // The admin listener onto the stream's port, the stream to another: the passed socket
    // would have to close first.
    std::fs::write(&config, text(port, other)).unwrap();
    let admin_addr: SocketAddr = format!("127.0.0.1:{admin}").parse().unwrap();
    let refused = || async move {
        metric_value(
            &http_get(admin_addr, "/metrics").await.1,
            "local_proxy_config_reloads_total",
            &[("result", "bind_failed")],
        )
    };
    assert!(run_tool("kill", &["-HUP", &pid], b"").await.status.success());
    let end = tokio::time::Instant::now() + Duration::from_secs(10);
    while refused().await < 1.0 {
        assert!(tokio::time::Instant::now() < end, "the reload was not refused: {}", logged());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(logged().contains("a systemd socket unit passed"), "the refusal says why: {}", logged());
    for _ in 0..3 {
        assert_eq!(through(stream).await.as_deref(), Some("hello\n"), "still served: {}", logged());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(child);
}

/// A restart after `wan.addresses` went from `0.0.0.0` to each address: the wildcard socket
/// kept across it (passed here by `systemd-socket-activate`, as systemd's store passes it) is
/// claimed by no key of the new config, and must be closed before the specific socket binds
/// its port. Before, it stayed open until after the binds, so the start failed on
/// EADDRINUSE, again at every retry under systemd.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_wildcard_socket_no_key_claims_does_not_block_the_specific_bind() {
    let echo = line_echo(None).await;
    let (admin, http, https, port) = (free_port(), free_port(), free_port(), free_port());
    let tmp = tempfile::Builder::new().prefix("lp-unit-").tempdir().unwrap();
    let config = tmp.path().join("lp.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[admin]
listen = "127.0.0.1:{admin}"
[wan]
addresses = ["127.0.0.1"]
trusted_ingress = ["127.0.0.2"]
[mesh]
listen = "off"
[http]
https_port = {https}
http_port = {http}

[[stream]]
name = "echo"
listen = "{port}/tcp"
upstream = "{echo}"
"#
        ),
    )
    .unwrap();
    let log = tmp.path().join("stderr");
    let child = activate(&format!("0.0.0.0:{port}"), Some(&format!("wan-tcp-0.0.0.0-{port}")), &config, &log);
    let stream: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_served(stream, &log).await;
    let logged = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!logged.contains("Address already in use"), "{logged}");
    drop(child);
}
