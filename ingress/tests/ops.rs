//! The binary under systemd's contracts and an operator's hands: READY=1 only once the
//! listeners accept, a STATUS= summary, WATCHDOG=1 pings that stop when the runtime or another
//! thread's event loop is wedged (the test hook),
//! `ingress ctl` driving the admin API, overrides that survive SIGHUP until the config
//! changes the field, and JSON log lines carrying the state change's fields.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, Read, Write};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, Child};

/// A fresh directory, removed when the returned value drops (a failed test's too).
fn tempdir(tag: &str) -> tempfile::TempDir {
    tempfile::Builder::new().prefix(&format!("ingress-ops-{tag}-")).tempdir().expect("temp dir")
}

/// A loopback TCP backend (a thread) that answers `name\n` and keeps the connection open.
fn backend(ip: &str, name: &'static str) -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind((ip, 0)).unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut s = s;
                let _ = s.write_all(format!("{name}\n").as_bytes());
                let mut buf = [0u8; 64];
                while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
            });
        }
    });
    addr
}

fn conf(
    admin: u16,
    front: u16,
    wan1: std::net::SocketAddr,
    wan2: std::net::SocketAddr,
    wan2_weight: u32,
    token: Option<&Path>,
    json: bool,
) -> String {
    let token = token.map(|t| format!("token_file = \"{}\"\n", t.display())).unwrap_or_default();
    let format = if json { "log_format = \"json\"\n" } else { "" };
    format!(
        "{format}[admin]\nlisten = \"127.0.0.1:{admin}\"\n{token}\
         [pool.home]\npaths = [{{ name = \"wan1\", address = \"{wan1}\" }}, {{ name = \"wan2\", address = \"{wan2}\", weight = {wan2_weight} }}]\n\
         health = {{ interval = \"100ms\", timeout = \"100ms\" }}\n\
         [[service]]\nname = \"echo\"\nlisten = [\"127.0.0.1:{front}\"]\npool = \"home\"\n"
    )
}

fn token_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let f = dir.join(name);
    std::fs::write(&f, format!("{text}\n")).unwrap();
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
    f
}

fn ctl(config: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ingress")).arg("-c").arg(config).arg("ctl").args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn status(config: &Path) -> serde_json::Value {
    let (ok, out, err) = ctl(config, &["status", "--json"]);
    assert!(ok, "{err}");
    serde_json::from_str(&out).unwrap()
}

fn path(s: &serde_json::Value, name: &str) -> serde_json::Value {
    s["pools"][0]["paths"].as_array().unwrap().iter().find(|p| p["name"] == name).unwrap().clone()
}

fn kill(pid: u32, sig: &str) {
    assert!(Command::new("kill").args([sig, &pid.to_string()]).status().unwrap().success());
}

/// Polls `f` every 20 ms until true; panics naming `what` after `limit`.
fn wait(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < end, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn reloads_applied(admin: u16) -> usize {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", admin)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    common::metric(&body, "ingress_config_reloads_total", &[("result", "applied")]) as usize
}

#[test]
fn ready_means_accepting_and_a_wedged_runtime_stops_the_watchdog() {
    let tmp = tempdir("notify");
    let dir = tmp.path();
    let sock_path = dir.join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    let (wan1, wan2) = (backend("127.0.0.2", "wan1"), backend("127.0.0.3", "wan2"));
    let front = free_port();
    let config = dir.join("ingress.toml");
    std::fs::write(&config, conf(free_port(), front, wan1, wan2, 1, None, false)).unwrap();
    let child = watched(&config, &sock_path, "1");
    sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 512];
    let mut pings_before_ready = 0;
    loop {
        let n = sock.recv(&mut buf).expect("READY=1 within 10 s");
        match &buf[..n] {
            b"READY=1" => break,
            b"WATCHDOG=1" => pings_before_ready += 1,
            _ => {}
        }
    }
    // The moment READY=1 arrives, the listener accepts and a client is served.
    let c = std::net::TcpStream::connect(("127.0.0.1", front)).expect("accepting at READY=1");
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut line = String::new();
    std::io::BufReader::new(&c).read_line(&mut line).unwrap();
    assert!(line == "wan1\n" || line == "wan2\n", "{line:?}");
    drop(c);

    // `systemctl status` gets a one-line summary.
    let end = Instant::now() + Duration::from_secs(5);
    let status = loop {
        assert!(Instant::now() < end, "no STATUS= summary within 5 s of READY=1");
        sock.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        let mut one = [0u8; 512];
        if let Ok(n) = sock.recv(&mut one) {
            if let Some(line) = std::str::from_utf8(&one[..n]).unwrap().strip_prefix("STATUS=") {
                break line.to_owned();
            }
        }
    };
    assert!(status.starts_with("home: 2/2 WAN up (wan1 wan2)") && status.contains("open connections"), "{status}");
    let alive = count_pings(&sock, Duration::from_secs(1));
    kill(child.id(), "-USR2");
    // Pings already queued, or sent before every worker is blocked, are let through.
    count_pings(&sock, Duration::from_millis(300));
    let wedged = count_pings(&sock, Duration::from_secs(1));
    println!(
        "watchdog 200 ms: {pings_before_ready} pings before READY, {alive} in a live second, {wedged} in a wedged one"
    );
    assert!(alive >= 5, "pings every 100 ms while alive: {alive}");
    assert_eq!(wedged, 0, "a wedged runtime sends no WATCHDOG=1 (systemd would restart it)");
    drop(child);
}

/// The ingress on `config` under a 200 ms watchdog, its notifications to `notify`, the test
/// hook set to `hook`.
fn watched(config: &Path, notify: &Path, hook: &str) -> Child {
    Child::spawn(
        Command::new(env!("CARGO_BIN_EXE_ingress"))
            .arg("-c")
            .arg(config)
            .env("NOTIFY_SOCKET", notify)
            .env("WATCHDOG_USEC", "200000")
            .env(shared::watchdog::TEST_HOOK_ENV, hook),
    )
}

/// `WATCHDOG=1` messages on `sock` within `within`.
fn count_pings(sock: &UnixDatagram, within: Duration) -> usize {
    let mut buf = [0u8; 512];
    let end = Instant::now() + within;
    let mut pings = 0;
    while let Some(left) = end.checked_duration_since(Instant::now()) {
        sock.set_read_timeout(Some(left.max(Duration::from_millis(1)))).unwrap();
        match sock.recv(&mut buf) {
            Ok(n) if &buf[..n] == b"WATCHDOG=1" => pings += 1,
            Ok(_) => {}
            Err(_) => break,
        }
    }
    pings
}

/// The event loops of the other threads answer for themselves: wedged, they withhold the
/// pings though the main thread's loop still runs, as their connections are stuck with them.
#[test]
fn a_wedged_worker_loop_stops_the_watchdog_too() {
    let tmp = tempdir("notify-workers");
    let dir = tmp.path();
    let sock_path = dir.join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    let (wan1, wan2) = (backend("127.0.0.2", "wan1"), backend("127.0.0.3", "wan2"));
    let config = dir.join("ingress.toml");
    let text = conf(free_port(), free_port(), wan1, wan2, 1, None, false) + "[limits]\nthreads = 3\n";
    std::fs::write(&config, text).unwrap();
    let child = watched(&config, &sock_path, "workers");
    sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 512];
    loop {
        let n = sock.recv(&mut buf).expect("READY=1 within 10 s");
        if &buf[..n] == b"READY=1" {
            break;
        }
    }
    let alive = count_pings(&sock, Duration::from_secs(1));
    kill(child.id(), "-USR2");
    // Pings sent before the loops missed half an interval of beats are let through.
    count_pings(&sock, Duration::from_millis(300));
    let wedged = count_pings(&sock, Duration::from_secs(1));
    println!("watchdog 200 ms, 3 threads: {alive} pings in a live second, {wedged} with the other loops wedged");
    assert!(alive >= 5, "pings every 100 ms while alive: {alive}");
    assert_eq!(wedged, 0, "a wedged worker loop withholds WATCHDOG=1 (systemd would restart the process)");
    drop(child);
}

#[test]
fn ctl_drives_the_api_and_sighup_keeps_overrides_until_the_config_changes_them() {
    let tmp = tempdir("ctl");
    let dir = tmp.path();
    let (wan1, wan2) = (backend("127.0.0.2", "wan1"), backend("127.0.0.3", "wan2"));
    let (admin, front) = (free_port(), free_port());
    let token = token_file(dir, "token", "ctl-test-token-0123456789");
    let config = dir.join("ingress.toml");
    std::fs::write(&config, conf(admin, front, wan1, wan2, 1, Some(&token), true)).unwrap();
    let log = std::fs::File::create(dir.join("stderr.log")).unwrap();
    let child = Child(
        Command::new(env!("CARGO_BIN_EXE_ingress"))
            .arg("-c")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    wait("admin listener", Duration::from_secs(10), || std::net::TcpStream::connect(("127.0.0.1", admin)).is_ok());

    let (ok, out, err) = ctl(&config, &["drain", "wan1"]);
    assert!(ok && out == "home/wan1: serving -> drained\n", "{out}{err}");
    let (ok, out, err) = ctl(&config, &["weight", "wan2", "5"]);
    assert!(ok && out == "home/wan2: weight 1 (config) -> weight 5\n", "{out}{err}");
    let (ok, out, _) = ctl(&config, &["status"]);
    assert!(ok && out.contains("wan1") && out.contains("drained") && out.contains("5 (override; config 1)"), "{out}");

    // A wrong token: refused, nothing changed.
    let wrong = dir.join("wrong.toml");
    let wrong_token = token_file(dir, "wrong-token", "not-the-token-0123456789");
    std::fs::write(&wrong, conf(admin, front, wan1, wan2, 1, Some(&wrong_token), false)).unwrap();
    let (ok, _, err) = ctl(&wrong, &["undrain", "wan1"]);
    assert!(!ok && err.starts_with("401"), "{err}");
    assert_eq!(path(&status(&config), "wan1")["state"], "drained");
    // No token file in the config: the CLI says what is missing.
    let none = dir.join("none.toml");
    std::fs::write(&none, conf(admin, front, wan1, wan2, 1, None, false)).unwrap();
    let (ok, _, err) = ctl(&none, &["undrain", "wan1"]);
    assert!(!ok && err.contains("admin.token_file"), "{err}");
    // `ctl` reads only [admin]: a config invalid elsewhere (mid-edit) still drains, and looking
    // needs no token (a token file it may not read fails control only, naming the field).
    let broken = dir.join("broken.toml");
    let text = conf(admin, front, wan1, wan2, 1, Some(&token), false);
    let half_written = "[[service]]\nname = \"new\"\nlisten = [\"0.0.0.0:\"]\npool = \"not-yet\"\n";
    std::fs::write(&broken, format!("{text}{half_written}")).unwrap();
    let (ok, out, err) = ctl(&broken, &["drain", "wan2"]);
    assert!(ok && out == "home/wan2: serving -> drained\n", "{out}{err}");
    let (ok, _, err) = ctl(&broken, &["undrain", "wan2"]);
    assert!(ok, "{err}");
    let unreadable = dir.join("unreadable.toml");
    let missing = dir.join("no-such-token");
    std::fs::write(&unreadable, text.replace(&token.display().to_string(), &missing.display().to_string())).unwrap();
    let (ok, out, err) = ctl(&unreadable, &["status"]);
    assert!(ok && out.contains("wan1"), "{err}");
    let (ok, _, err) = ctl(&unreadable, &["undrain", "wan1"]);
    assert!(!ok && err.contains("admin.token_file") && err.contains("no-such-token"), "{err}");

    // SIGHUP with the same file: both overrides stay.
    kill(child.id(), "-HUP");
    wait("reload applied", Duration::from_secs(10), || reloads_applied(admin) >= 1);
    let s = status(&config);
    assert_eq!(
        (path(&s, "wan1")["state"].clone(), path(&s, "wan2")["weight_override"].clone()),
        ("drained".into(), 5.into())
    );
    // Every new connection goes to wan2 while wan1 is drained.
    for _ in 0..5 {
        let c = std::net::TcpStream::connect(("127.0.0.1", front)).unwrap();
        let mut line = String::new();
        std::io::BufReader::new(&c).read_line(&mut line).unwrap();
        assert_eq!(line, "wan2\n");
    }
    // The config changes wan2's weight: the config wins, the drain (no config field) stays.
    std::fs::write(&config, conf(admin, front, wan1, wan2, 2, Some(&token), true)).unwrap();
    kill(child.id(), "-HUP");
    wait("second reload applied", Duration::from_secs(10), || reloads_applied(admin) >= 2);
    let s = status(&config);
    assert_eq!(path(&s, "wan2")["weight"], 2);
    assert_eq!(path(&s, "wan2")["weight_override"], serde_json::Value::Null);
    assert_eq!(path(&s, "wan1")["state"], "drained");
    let (ok, out, _) = ctl(&config, &["undrain", "home/wan1"]);
    assert!(ok && out == "home/wan1: drained -> serving\n", "{out}");

    // JSON log lines: the operator's changes carry pool, path, from, to and who.
    drop(child);
    let text = std::fs::read_to_string(dir.join("stderr.log")).unwrap();
    let lines: Vec<serde_json::Value> =
        text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect();
    let drain = lines
        .iter()
        .find(|l| l["message"] == "state change" && l["to"] == "drained")
        .unwrap_or_else(|| panic!("{text}"));
    assert_eq!(
        (drain["level"].as_str(), drain["pool"].as_str(), drain["path"].as_str(), drain["from"].as_str()),
        (Some("INFO"), Some("home"), Some("wan1"), Some("serving"))
    );
    assert!(drain["reason"].as_str().unwrap().starts_with("drain by "), "{drain}");
    assert!(lines.iter().any(|l| l["message"] == "admin: control request refused" && l["reason"] == "wrong"), "{text}");
}
