//! Stream access logs with the binary as deployed: each TCP connection and each UDP flow is
//! one JSON line when it ends, with its bytes each way and its duration, in the same bounded
//! writer (and here the same file) for every stream; the client as the PROXY header of the
//! trusted ingress names it; a refused upstream and an idle flow say so. Rotation under load:
//! the file renamed and SIGUSR1 sent while 4 clients open 600 connections: every connection is
//! exactly one whole line in the old file or the new one.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::process::{Child, Command};

const MESH: &str = "127.0.0.4";

use test_support::free_port;

/// A TCP upstream that echoes until the client half-closes, then closes.
async fn tcp_echo() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

/// A UDP upstream answering each datagram with itself.
async fn udp_echo() -> SocketAddr {
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = s.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        while let Ok((n, peer)) = s.recv_from(&mut buf).await {
            let _ = s.send_to(&buf[..n], peer).await;
        }
    });
    addr
}

struct Running {
    _child: Child,
    pid: String,
    /// Stream listen ports: tcp-echo, tcp-dead, udp-echo.
    ports: (u16, u16, u16),
    /// The admin listener (metrics).
    admin: SocketAddr,
}

async fn start(dir: &Path, log: &Path) -> Running {
    let (echo, dead, uecho) = (tcp_echo().await, closed_port().await, udp_echo().await);
    let ports = (free_port(), free_port(), free_port());
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let text = format!(
        r#"
[admin]
listen = "{admin}"
[wan]
addresses = ["127.0.0.1"]
trusted_ingress = ["127.0.0.2"]
[mesh]
listen = "{MESH}"
[http]
https_port = {https}
http_port = {http}

[[stream]]
name = "tcp-echo"
listen = "{p1}/tcp"
upstream = "{echo}"
access_log = {{ path = "{log}" }}

[[stream]]
name = "tcp-dead"
listen = "{p2}/tcp"
upstream = "{dead}"
connect_timeout = "500ms"
access_log = {{ path = "{log}", format = "json" }}

[[stream]]
name = "udp-echo"
listen = "{p3}/udp"
upstream = "{uecho}"
idle_timeout = "500ms"
access_log = {{ path = "{log}" }}
"#,
        https = free_port(),
        http = free_port(),
        p1 = ports.0,
        p2 = ports.1,
        p3 = ports.2,
        log = log.display(),
    );
    let file = dir.join("lp.toml");
    std::fs::write(&file, text).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_local-proxy"))
        .args(["-c", &file.display().to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = child.id().unwrap().to_string();
    let mesh_tcp: SocketAddr = format!("{MESH}:{}", ports.0).parse().unwrap();
    wait_until(
        Duration::from_secs(10),
        "the proxy serving",
        || async move { TcpStream::connect(mesh_tcp).await.is_ok() },
    )
    .await;
    // That probe connection is a line of its own: wait for it, then start from an empty file.
    let l = log.to_path_buf();
    wait_until(Duration::from_secs(5), "the probe's line", || {
        let l = l.clone();
        async move { !lines(&l).is_empty() }
    })
    .await;
    std::fs::write(log, b"").unwrap();
    Running { _child: child, pid, ports, admin }
}

/// Send `payload`, half-close, read the echo to the end.
async fn exchange(mut s: TcpStream, payload: &[u8]) -> Vec<u8> {
    s.write_all(payload).await.unwrap();
    s.shutdown().await.unwrap();
    let mut back = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut back)).await.unwrap().unwrap();
    back
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_connection_and_flow_is_one_line_with_bytes_and_duration() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("streams.log");
    let proxy = start(tmp.path(), &log).await;
    let (p1, p2, p3) = proxy.ports;

    // Over the mesh: the peer is the client. 11 bytes in, 11 echoed out.
    let s = connect_from(IpAddr::from([127, 0, 0, 3]), format!("{MESH}:{p1}").parse().unwrap()).await;
    let mesh_port = s.local_addr().unwrap().port();
    assert_eq!(exchange(s, b"hello mesh\n").await, b"hello mesh\n");
    // Through the trusted ingress with a PROXY v2 header: the header's client is logged.
    let client: SocketAddr = "203.0.113.7:4242".parse().unwrap();
    let wan: SocketAddr = format!("127.0.0.1:{p1}").parse().unwrap();
    let s = connect_with_proxy(IpAddr::from([127, 0, 0, 2]), wan, client).await;
    assert_eq!(exchange(s, &[7u8; 3000]).await.len(), 3000);
    // A stream whose only upstream refuses.
    let mut s = connect_from(IpAddr::from([127, 0, 0, 3]), format!("{MESH}:{p2}").parse().unwrap()).await;
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut sink)).await.unwrap();
    // A UDP flow: three datagrams of 4 bytes, each echoed; it idles out after 500 ms.
    let u = UdpSocket::bind("127.0.0.3:0").await.unwrap();
    for _ in 0..3 {
        u.send_to(b"ping", format!("{MESH}:{p3}")).await.unwrap();
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(5), u.recv(&mut buf)).await.unwrap().unwrap();
        assert_eq!(&buf[..n], b"ping");
    }

    let all = wait_lines(&log, 4).await;
    println!("{}", all.iter().map(|l| l.to_string()).collect::<Vec<_>>().join("\n"));
    assert_eq!(all.len(), 4, "{all:#?}");
    let find = |f: &dyn Fn(&Value) -> bool| all.iter().find(|l| f(l)).cloned().unwrap_or_else(|| panic!("{all:#?}"));

    let mesh = find(&|l| l["stream"] == "tcp-echo" && l["client"] == "127.0.0.3");
    assert_eq!(
        (&mesh["proto"], &mesh["client_port"], &mesh["listen_port"], &mesh["result"], &mesh["end"]),
        (&"tcp".into(), &mesh_port.into(), &p1.into(), &"ok".into(), &"closed".into())
    );
    assert_eq!((&mesh["bytes_in"], &mesh["bytes_out"], &mesh["attempts"]), (&11.into(), &11.into(), &1.into()));
    assert!(mesh["upstream"].as_str().unwrap().starts_with("127.0.0.1:"), "{mesh}");
    assert!(mesh["duration_ms"].as_u64().is_some() && mesh["time"].as_str().unwrap().ends_with('Z'), "{mesh}");
    assert_eq!((&mesh["datagrams_in"], &mesh["datagrams_out"]), (&Value::Null, &Value::Null));

    let wan = find(&|l| l["stream"] == "tcp-echo" && l["client"] == "203.0.113.7");
    assert_eq!((&wan["client_port"], &wan["bytes_in"], &wan["bytes_out"]), (&4242.into(), &3000.into(), &3000.into()));

    let dead = find(&|l| l["stream"] == "tcp-dead");
    assert_eq!(
        (&dead["result"], &dead["upstream"], &dead["bytes_in"], &dead["attempts"]),
        (&"connect_failed".into(), &Value::Null, &0.into(), &1.into())
    );

    let flow = find(&|l| l["stream"] == "udp-echo");
    assert_eq!((&flow["proto"], &flow["end"], &flow["result"]), (&"udp".into(), &"idle".into(), &"ok".into()));
    assert_eq!(
        (&flow["datagrams_in"], &flow["datagrams_out"], &flow["bytes_in"], &flow["bytes_out"]),
        (&3.into(), &3.into(), &12.into(), &12.into())
    );
    assert_eq!(flow["client_port"], u.local_addr().unwrap().port());
    // It ended idle: not before idle_timeout (500 ms) after its last datagram; how much later
    // (the 100 ms sweep, the machine's load) is a figure, not a check.
    let ms = flow["duration_ms"].as_u64().unwrap();
    println!("UDP flow ended idle after {ms} ms (idle_timeout 500 ms)");
    assert!(ms >= 500, "{flow}");
    drop(proxy);
}

/// logrotate's way under load: rename the file, SIGUSR1, new lines go to a new file; every
/// connection opened is exactly one whole line in one of the two (told apart by its size:
/// connection i of client c sends `c * EACH + i + 1` bytes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr1_rotation_under_load_loses_and_splits_no_line() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("streams.log");
    let rotated = tmp.path().join("streams.log.1");
    let proxy = start(tmp.path(), &log).await;
    let target: SocketAddr = format!("{MESH}:{}", proxy.ports.0).parse().unwrap();

    const CLIENTS: usize = 4;
    const EACH: usize = 150;
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..EACH {
                let size = c * EACH + i + 1;
                let s = connect_from(IpAddr::from([127, 0, 0, 3]), target).await;
                assert_eq!(exchange(s, &vec![b'x'; size]).await.len(), size);
                done.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    let l = log.clone();
    wait_until(Duration::from_secs(20), "100 lines before the rotation", || {
        let l = l.clone();
        async move { lines(&l).len() >= 100 }
    })
    .await;
    std::fs::rename(&log, &rotated).unwrap();
    assert!(run_tool("kill", &["-USR1", &proxy.pid], b"").await.status.success());
    for t in tasks {
        t.await.unwrap();
    }
    let total = (CLIENTS * EACH) as u64;
    assert_eq!(done.load(Ordering::SeqCst), total);
    let (r, l) = (rotated.clone(), log.clone());
    wait_until(Duration::from_secs(10), "every connection logged", || {
        let (r, l) = (r.clone(), l.clone());
        async move { (lines(&r).len() + lines(&l).len()) as u64 >= total }
    })
    .await;
    // A moment for a stray extra line (there must be none).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (old, new) = (lines(&rotated), lines(&log));
    for f in [&rotated, &log] {
        assert!(std::fs::read_to_string(f).unwrap().ends_with('\n'), "{} ends mid-line", f.display());
    }
    println!("{total} connections: rotated file {} lines, new file {} lines", old.len(), new.len());
    assert_eq!((old.len() + new.len()) as u64, total, "lines lost or doubled");
    assert!(old.len() >= 100 && !new.is_empty(), "old {} new {}", old.len(), new.len());
    let mut sizes: Vec<u64> = old.iter().chain(&new).map(|l| l["bytes_in"].as_u64().unwrap()).collect();
    sizes.sort_unstable();
    assert_eq!(sizes, (1..=total).collect::<Vec<_>>(), "each connection exactly once, bytes as sent");
    assert!(old.iter().chain(&new).all(|l| l["bytes_out"] == l["bytes_in"] && l["end"] == "closed"));
}

/// A reload naming a stream log in a directory that does not exist is refused (the running
/// config and its log stay); the running proxy goes on logging to the old file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_with_an_unopenable_stream_log_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("streams.log");
    let proxy = start(tmp.path(), &log).await;
    let file = tmp.path().join("lp.toml");
    let text = std::fs::read_to_string(&file).unwrap();
    let missing = tmp.path().join("no-such-dir/streams.log");
    std::fs::write(&file, text.replace(&log.display().to_string(), &missing.display().to_string())).unwrap();
    assert!(run_tool("kill", &["-HUP", &proxy.pid], b"").await.status.success());
    // The refusal is counted; meanwhile nothing else changed.
    let admin = proxy.admin;
    wait_until(Duration::from_secs(10), "the reload refused and counted", || async move {
        let (_, text) = http_get(admin, "/metrics").await;
        metric_value(&text, "local_proxy_config_reloads_total", &[("result", "invalid")]) >= 1.0
    })
    .await;
    let s = connect_from(IpAddr::from([127, 0, 0, 3]), format!("{MESH}:{}", proxy.ports.0).parse().unwrap()).await;
    assert_eq!(exchange(s, b"after\n").await, b"after\n");
    let all = wait_lines(&log, 1).await;
    assert_eq!(all[0]["bytes_in"], 6, "{all:#?}");
    assert!(!missing.parent().unwrap().exists());
}
