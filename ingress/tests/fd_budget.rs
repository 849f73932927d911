//! The descriptor budget, on the real binary under a lowered open-files limit (`prlimit`):
//! a connection flood far above what fits is refused at once (closed, never left hanging),
//! both healthy paths stay up (the ingress's own limits are not the WANs' fault), and the
//! ingress serves again as soon as the flood lets go.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn scrape(admin: u16) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", admin)).await.expect("admin");
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").await.expect("write");
    let mut body = String::new();
    s.read_to_string(&mut body).await.expect("read");
    body
}

/// The backend's name line, or `None` if the ingress closed the connection first.
async fn first_line(s: &mut TcpStream) -> Option<String> {
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf)).await.expect("no hang: served or closed");
    match n {
        Ok(n) if n > 0 => Some(String::from_utf8_lossy(&buf[..n]).trim().to_string()),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_beyond_the_descriptor_budget_is_refused_and_paths_stay_up() {
    let wan1 = Backend::start("wan1", "127.0.0.2").await;
    let wan2 = Backend::start("wan2", "127.0.0.3").await;
    let (port, admin) = (free_port(), free_port());
    // max_connections stays at its default (20,000): far more than 300 descriptors hold.
    let conf = format!(
        "[admin]\nlisten = \"127.0.0.1:{admin}\"\n\
         [pool.home]\npaths = [{{ name = \"wan1\", address = \"{}\" }}, {{ name = \"wan2\", address = \"{}\" }}]\n\
         health = {{ interval = \"100ms\", timeout = \"100ms\" }}\n\
         [[service]]\nname = \"echo\"\nlisten = [\"127.0.0.1:{port}\"]\npool = \"home\"\n",
        wan1.addr, wan2.addr
    );
    let tmp = tempfile::Builder::new().prefix("ingress-fd-").tempdir().expect("temp dir");
    let dir = tmp.path();
    let file = dir.join("ingress.toml");
    std::fs::write(&file, conf).expect("write");
    // prlimit (util-linux) runs the binary under the lowered limit.
    let _child = Child::spawn(
        Command::new("prlimit")
            .args(["--nofile=300:300", "--"])
            .arg(env!("CARGO_BIN_EXE_ingress"))
            .arg("-c")
            .arg(&file),
    );
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while request(addr).await.is_err() {
        assert!(tokio::time::Instant::now() < deadline, "ingress never served");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let m = scrape(admin).await;
    let limit = metric(&m, "ingress_limit", &[("kind", "connections")]) as usize;
    assert!(metric(&m, "ingress_limit", &[("kind", "open_files")]) == 300.0, "the limit the ingress saw");
    assert!((20..250).contains(&limit), "connections clamped to fit 300 descriptors: {limit}");

    // The flood: 400 clients that stay connected.
    let mut served = Vec::new();
    let mut refused = 0usize;
    for _ in 0..400 {
        let mut s = TcpStream::connect(addr).await.expect("the kernel accepts the SYN");
        match first_line(&mut s).await {
            Some(_) => served.push(s),
            None => refused += 1,
        }
    }
    let m = scrape(admin).await;
    let local_errors = metric(&m, "ingress_local_resource_errors_total", &[]);
    println!(
        "RESULT open files 300, max_connections 20000 asked: budget {limit} connections; \
         400 held clients: {} served, {refused} refused at once; local resource errors {local_errors:.0}",
        served.len()
    );
    assert_eq!(served.len(), limit, "exactly the budget is served");
    assert_eq!(refused, 400 - limit, "the rest are refused, not left hanging");
    for p in ["wan1", "wan2"] {
        assert_eq!(metric(&m, "ingress_path_up", &[("path", p)]), 1.0, "{p} stays up during the flood");
        assert_eq!(metric(&m, "ingress_path_connect_failures_total", &[("path", p)]), 0.0, "{p}: no failure blamed");
    }
    assert_eq!(metric(&m, "ingress_mesh_failovers_total", &[]), 0.0);

    // The flood lets go: served again.
    drop(served);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while request(addr).await.is_err() {
        assert!(tokio::time::Instant::now() < deadline, "not served again after the flood");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
