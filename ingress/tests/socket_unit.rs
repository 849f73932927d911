//! A listener passed in LISTEN_FDS by address (as a systemd socket unit passes one; here
//! `systemd-socket-activate`): a reload whose new listener would take its port is refused
//! before anything is closed, naming why, and the passed listener goes on serving. Under a
//! real socket unit systemd keeps its own copy open, so closing ours never frees the port:
//! the reload was refused all the same, and the listener it had closed retried its bind
//! forever while the unit's socket queued clients nobody accepted.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_taking_a_socket_units_port_is_refused_and_the_listener_stays() {
    let wan1 = Backend::start("wan1", "127.0.0.2").await;
    let (port, admin) = (free_port(), free_port());
    let conf = |listen: &str| {
        format!(
            "[admin]\nlisten = \"127.0.0.1:{admin}\"\n\
             [pool.home]\npaths = [{{ name = \"wan1\", address = \"{}\" }}]\n\
             [[service]]\nname = \"echo\"\nlisten = [\"{listen}:{port}\"]\npool = \"home\"\n",
            wan1.addr
        )
    };
    let tmp = tempfile::Builder::new().prefix("ingress-unit-").tempdir().expect("temp dir");
    let file = tmp.path().join("ingress.toml");
    std::fs::write(&file, conf("127.0.0.1")).expect("write");
    let log = tmp.path().join("log");
    let child = Child(
        Command::new("systemd-socket-activate")
            .arg(format!("--listen=127.0.0.1:{port}"))
            .arg("--")
            .arg(env!("CARGO_BIN_EXE_ingress"))
            .arg("-c")
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("systemd-socket-activate (Debian package systemd) runs"),
    );
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let admin_addr: std::net::SocketAddr = format!("127.0.0.1:{admin}").parse().expect("addr");
    // The tool listens and starts the ingress at the first connection.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while request(addr).await.is_err() {
        assert!(tokio::time::Instant::now() < deadline, "never served");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let logged = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        logged().contains("serving the socket kept across the restart"),
        "the passed socket is served: {}",
        logged()
    );

    // The same port on the wildcard: it would need the passed socket closed.
    std::fs::write(&file, conf("0.0.0.0")).expect("write");
    let ok = Command::new("kill").args(["-HUP", &child.id().to_string()]).status().expect("kill").success();
    assert!(ok);
    let refused = || async {
        let m = scrape(admin_addr).await;
        metric(&m, "ingress_config_reloads_total", &[("result", "refused")])
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while refused().await < 1.0 {
        assert!(tokio::time::Instant::now() < deadline, "the reload was not refused: {}", logged());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(logged().contains("a systemd socket unit passed"), "the refusal says why: {}", logged());
    // Still served by the passed socket, at once and again later.
    for _ in 0..3 {
        assert_eq!(request(addr).await.as_deref(), Ok("wan1"));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
