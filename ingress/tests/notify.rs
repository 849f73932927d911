//! systemd notifications under `Type=notify` (the packaged unit): READY=1 only once every
//! listener is bound (a taken port holds it back, and STATUS= names the waiting service),
//! RELOADING=1 with MONOTONIC_USEC then READY=1 around SIGHUP, STOPPING=1 on SIGTERM.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

struct Child(std::process::Child);
impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The next state datagram, or None when `timeout` passes first. `FDSTORE=1` messages (each
/// listening socket handed to systemd's descriptor store; tests/netns ingress_restart covers
/// them) are skipped.
fn next(sock: &UnixDatagram, timeout: Duration) -> Option<String> {
    sock.set_read_timeout(Some(timeout)).unwrap();
    loop {
        let mut buf = [0u8; 1024];
        let text = sock.recv(&mut buf).ok().map(|n| String::from_utf8_lossy(&buf[..n]).into_owned())?;
        if !text.starts_with("FDSTORE=1\n") {
            return Some(text);
        }
    }
}

/// Datagrams until one equals `want` (returned with those before it), or panics after `limit`.
fn until(sock: &UnixDatagram, want: &str, limit: Duration) -> Vec<String> {
    let end = Instant::now() + limit;
    let mut seen = Vec::new();
    while let Some(left) = end.checked_duration_since(Instant::now()) {
        match next(sock, left) {
            Some(m) if m == want => return seen,
            Some(m) => seen.push(m),
            None => break,
        }
    }
    panic!("no {want:?} within {limit:?}; got {seen:?}");
}

fn kill(pid: u32, sig: &str) {
    assert!(Command::new("kill").args([sig, &pid.to_string()]).status().unwrap().success());
}

#[test]
fn ready_waits_for_every_listener_and_reload_and_stop_are_told() {
    let tmp = tempfile::Builder::new().prefix("ingress-notify-").tempdir().expect("temp dir");
    let dir = tmp.path();
    let sock_path = dir.join("notify.sock");
    let _ = std::fs::remove_file(&sock_path);
    let sock = UnixDatagram::bind(&sock_path).unwrap();

    // One port is held by this test (a listening socket: SO_REUSEADDR cannot share it), the
    // other is free. The path home is a documentation address, so no probe or client
    // connection can loop back into the ingress's own listeners.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let held_port = held.local_addr().unwrap().port();
    let free_port = test_support::free_port();
    let conf = dir.join("ingress.toml");
    std::fs::write(
        &conf,
        format!(
            "[pool.home]\npaths = [{{ name = \"w\", address = \"192.0.2.1\" }}]\n\
             [[service]]\nname = \"held\"\nlisten = [\"127.0.0.1:{held_port}\"]\npool = \"home\"\n\
             [[service]]\nname = \"free\"\nlisten = [\"127.0.0.1:{free_port}\"]\npool = \"home\"\n"
        ),
    )
    .unwrap();
    let child = Child(
        Command::new(env!("CARGO_BIN_EXE_ingress"))
            .args(["-c", conf.to_str().unwrap()])
            .env("NOTIFY_SOCKET", &sock_path)
            .env("INGRESS_LOG", "warn")
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let pid = child.0.id();

    // While the port is taken: a STATUS naming the waiting service, and no READY.
    let status = next(&sock, Duration::from_secs(10)).expect("a STATUS while a port is taken");
    assert!(status.starts_with("STATUS=") && status.contains("held (0/1)"), "{status}");
    while let Some(m) = next(&sock, Duration::from_millis(800)) {
        assert_ne!(m, "READY=1", "READY before every listener was bound");
    }

    // Port released: READY once the background retry binds it (backoff up to 5 s), after a
    // STATUS that no longer says "binding".
    drop(held);
    let before = until(&sock, "READY=1", Duration::from_secs(15));
    assert_eq!(before.last().map(String::as_str), Some("STATUS=every listener bound"), "{before:?}");
    assert!(std::net::TcpListener::bind(("127.0.0.1", held_port)).is_err(), "the ingress holds the port");

    kill(pid, "-HUP");
    // STATUS= summaries (paths up, open connections) may come in between.
    let reloading = std::iter::from_fn(|| next(&sock, Duration::from_secs(10)))
        .find(|m| !m.starts_with("STATUS="))
        .expect("RELOADING after SIGHUP");
    let usec = reloading.strip_prefix("RELOADING=1\nMONOTONIC_USEC=").unwrap_or_else(|| panic!("{reloading:?}"));
    assert!(usec.parse::<u64>().unwrap() > 0, "{reloading:?}");
    until(&sock, "READY=1", Duration::from_secs(10));

    // A reload refused for a port someone holds: READY with no "binding" STATUS (nothing is
    // being bound), and the refusal in the summary line until a reload applies.
    let squat = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let squat_port = squat.local_addr().unwrap().port();
    let original = std::fs::read_to_string(&conf).unwrap();
    let extra = format!("[[service]]\nname = \"late\"\nlisten = [\"127.0.0.1:{squat_port}\"]\npool = \"home\"\n");
    std::fs::write(&conf, format!("{original}{extra}")).unwrap();
    kill(pid, "-HUP");
    let told = until(&sock, "READY=1", Duration::from_secs(10));
    assert!(!told.iter().any(|m| m.contains("binding")), "{told:?}");
    let refused = std::iter::from_fn(|| next(&sock, Duration::from_secs(10)))
        .find(|m| m.contains("last reload refused"))
        .expect("the refusal in STATUS");
    assert!(refused.contains(&format!("127.0.0.1:{squat_port}")) && !refused.contains('\n'), "{refused}");
    std::fs::write(&conf, original).unwrap();
    kill(pid, "-HUP");
    until(&sock, "READY=1", Duration::from_secs(10));
    let after = std::iter::from_fn(|| next(&sock, Duration::from_secs(10)))
        .find(|m| m.starts_with("STATUS="))
        .expect("a new STATUS once a reload applies");
    assert!(!after.contains("refused"), "{after}");

    kill(pid, "-TERM");
    until(&sock, "STOPPING=1", Duration::from_secs(10));
    let mut child = child;
    let end = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.0.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < end, "no exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
}
