//! The binary: `check` validates, `-c` runs, SIGHUP reloads (an invalid file is refused and
//! the running config stays), SIGTERM stops.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use tokio::io::{AsyncBufReadExt, BufReader};

const BIN: &str = env!("CARGO_BIN_EXE_local-proxy");

#[tokio::test]
async fn check_validates_example_and_names_bad_fields() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/local-proxy.toml");
    // The package's default config: it passes (the certbot folder not made yet is a warning).
    let out = run_tool(BIN, &["check", "-c", example], b"").await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok (10 sites, 11 streams)"));
    assert!(
        err.contains("warning: tls.certbot_live_dir: `/etc/letsencrypt/live` does not exist (yet)")
            || std::path::Path::new("/etc/letsencrypt/live").exists(),
        "{err}"
    );

    let bad = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/invalid/stream-range-mismatch.toml");
    let out = run_tool(BIN, &["check", "-c", bad], b"").await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("stream[0].upstream"));
}

/// `check` refuses what the server could not start with: a CA file that is missing or holds
/// no certificate, an access log whose directory does not exist. It creates no log file.
#[tokio::test]
async fn check_refuses_files_the_server_could_not_use() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let empty_ca = dir.join("empty.pem");
    std::fs::write(&empty_ca, "not a certificate\n").unwrap();
    let log = dir.join("logs/access.log");
    let text = base_config(&format!(
        "access_log = {{ path = \"{}\" }}\n[[site]]\nhost = \"a.test\"\nupstream = \"https://127.0.0.1:1\"\n\
         ca_file = \"{}\"\n[[site]]\nhost = \"b.test\"\nupstream = \"https://127.0.0.1:2\"\n\
         ca_file = \"{}/missing.pem\"\n",
        log.display(),
        empty_ca.display(),
        dir.display()
    ));
    let path = dir.join("lp.toml");
    std::fs::write(&path, &text).unwrap();
    let args = ["check", "-c", path.to_str().unwrap()];
    let check = || run_tool(BIN, &args, b"");
    let out = check().await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    for field in ["site[0].ca_file", "no usable certificate", "site[1].ca_file", "missing.pem"] {
        assert!(err.contains(field), "{field} not in: {err}");
    }

    // The CA files fixed: the log's directory is what is left, and then nothing.
    std::fs::write(&path, text.replace("ca_file", "# ca_file")).unwrap();
    let out = check().await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("http.access_log.path") && err.contains("does not exist"), "{err}");
    std::fs::create_dir(dir.join("logs")).unwrap();
    let out = check().await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!log.exists(), "check created the log file");
}

/// `check` reads the certificates as the server will: a listed pair that does not load, or a
/// `certbot_live_dir` that names one certificate's folder, is refused; a live folder not made
/// yet, a lineage that does not load, a config trusting no ingress node or with no certificate
/// source at all, and a mesh address outside 200::/7 pass with a warning each.
#[tokio::test]
async fn check_reads_certificates_and_warns() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let ca = Ca::new(dir);
    let live = dir.join("live");
    ca.certbot(&live, "a.test", &["a.test"], "a.test");
    let (chain, _) = ca.leaf(&["b.test"], "b.test");
    let (_, other_key) = ca.leaf(&["b.test"], "b.test");
    std::fs::write(dir.join("b.pem"), chain).unwrap();
    std::fs::write(dir.join("b.key"), other_key).unwrap();
    let path = dir.join("lp.toml");
    let check = |text: String| {
        std::fs::write(&path, text).unwrap();
        let path = path.clone();
        async move {
            let out = run_tool(BIN, &["check", "-c", path.to_str().unwrap()], b"").await;
            (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
        }
    };
    let site = "[[site]]\nhost = \"a.test\"\nupstream = \"http://127.0.0.1:1\"\n";
    let tls = |extra: &str| base_config(&format!("[tls]\n{extra}\n{site}"));

    let (ok, err) = check(tls(&format!("certbot_live_dir = \"{}\"", live.display()))).await;
    assert!(ok, "{err}");
    assert!(!err.contains("warning: tls"), "{err}");
    // A pair that is not there.
    let missing = format!("[[tls.certificate]]\ncert = \"{0}/none.pem\"\nkey = \"{0}/none.key\"", dir.display());
    let (ok, err) = check(tls(&missing)).await;
    assert!(!ok && err.contains("tls.certificate[0]") && err.contains("none.pem"), "{err}");
    // A key that is not the certificate's.
    let pair = format!("[[tls.certificate]]\ncert = \"{0}/b.pem\"\nkey = \"{0}/b.key\"", dir.display());
    let (ok, err) = check(tls(&pair)).await;
    assert!(!ok && err.contains("tls.certificate[0]") && err.contains("do not belong together"), "{err}");
    // One lineage's folder for the folder of them.
    let (ok, err) = check(tls(&format!("certbot_live_dir = \"{}/a.test\"", live.display()))).await;
    assert!(!ok && err.contains("tls.certbot_live_dir") && err.contains("one certificate's folder"), "{err}");
    // A file, not a folder: refused.
    let (ok, err) = check(tls(&format!("certbot_live_dir = \"{}/b.pem\"", dir.display()))).await;
    assert!(!ok && err.contains("tls.certbot_live_dir") && err.contains("b.pem"), "{err}");
    // Not made yet; a broken lineage: warnings.
    let (ok, err) = check(tls(&format!("certbot_live_dir = \"{}/nowhere\"", dir.display()))).await;
    assert!(ok && err.contains("warning: tls.certbot_live_dir") && err.contains("does not exist (yet)"), "{err}");
    std::fs::write(live.join("a.test/privkey.pem"), "no key\n").unwrap();
    let (ok, err) = check(tls(&format!("certbot_live_dir = \"{}\"", live.display()))).await;
    assert!(ok && err.contains("warning: tls.certbot_live_dir: not served"), "{err}");
    // Relative paths, read from wherever the server runs: refused.
    let (ok, err) = check(tls("certbot_live_dir = \"live\"")).await;
    assert!(!ok && err.contains("tls.certbot_live_dir: `live` is not an absolute path"), "{err}");
    // No certificate source; no trusted ingress node; the test mesh address: warnings.
    let bare = base_config(site).replace("trusted_ingress = [\"127.0.0.2\"]", "");
    let (ok, err) = check(bare).await;
    for w in
        ["warning: tls:", "warning: wan.trusted_ingress:", "warning: mesh.listen: 127.0.0.4 is not a Yggdrasil address"]
    {
        assert!(ok && err.contains(w), "{w} not in: {err}");
    }
}

fn site_config(live: &std::path::Path, upstream: SocketAddr) -> String {
    base_config(&format!(
        "[tls]\ncertbot_live_dir = \"{}\"\n[[site]]\nhost = \"a.test\"\nupstream = \"http://{upstream}\"\n",
        live.display()
    ))
}

/// The binary on `path`, its log (info) collected.
fn start_logged(path: &std::path::Path) -> (tokio::process::Child, Arc<Mutex<String>>) {
    let mut child = tokio::process::Command::new(BIN)
        .args(["-c", path.to_str().unwrap()])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let log = Arc::new(Mutex::new(String::new()));
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let sink = log.clone();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            let mut l = sink.lock().unwrap();
            l.push_str(&line);
            l.push('\n');
        }
    });
    (child, log)
}

/// A listener's address, as the log announced it.
fn addr_of(log: &Mutex<String>, listener: &str) -> Option<SocketAddr> {
    let text = log.lock().unwrap().clone();
    text.lines()
        .filter(|l| l.contains("listening") && l.contains(&format!("listener=\"{listener}\"")))
        .filter_map(|l| l.split("addr=").nth(1))
        .filter_map(|a| a.split_whitespace().next())
        .find_map(|a| a.parse::<SocketAddr>().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_and_refuses_invalid_config() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path());
    let live = dir.path().join("live");
    ca.certbot(&live, "a.test", &["a.test"], "a.test");
    let (up_a, up_b) = (echo_upstream("a").await, echo_upstream("b").await);
    let path = dir.path().join("lp.toml");
    std::fs::write(&path, site_config(&live, up_a)).unwrap();

    let (mut child, log) = start_logged(&path);
    let addr_of = |listener: &str| addr_of(&log, listener);
    wait_until(Duration::from_secs(10), "listeners logged", || {
        let ok = addr_of("mesh-https").is_some() && addr_of("admin").is_some();
        async move { ok }
    })
    .await;
    let https = addr_of("mesh-https").unwrap();
    let admin = addr_of("admin").unwrap();

    let (out, err, ok) = curl(&[], "a.test", https, &ca.pem_path, "/").await;
    assert!(ok && out.contains("upstream: a"), "{out}{err}");

    let hup = || async {
        let pid = child.id().unwrap().to_string();
        assert!(run_tool("kill", &["-HUP", &pid], b"").await.status.success());
    };
    std::fs::write(&path, site_config(&live, up_b)).unwrap();
    hup().await;
    wait_until(Duration::from_secs(10), "reload to upstream b", || async {
        curl(&[], "a.test", https, &ca.pem_path, "/").await.0.contains("upstream: b")
    })
    .await;

    std::fs::write(&path, format!("{}\nsurprise = true\n", site_config(&live, up_a))).unwrap();
    hup().await;
    wait_until(Duration::from_secs(10), "refusal logged", || {
        let seen = log.lock().unwrap().contains("reload refused");
        async move { seen }
    })
    .await;
    assert!(log.lock().unwrap().contains("surprise"), "the error names the field");
    let (out, _, ok) = curl(&[], "a.test", https, &ca.pem_path, "/").await;
    assert!(ok && out.contains("upstream: b"), "running config stays: {out}");
    let metrics = http_get(admin, "/metrics").await.1;
    assert_eq!(metric_value(&metrics, "local_proxy_config_reloads_total", &[("result", "invalid")]), 1.0);
    assert_eq!(metric_value(&metrics, "local_proxy_config_reloads_total", &[("result", "ok")]), 1.0);

    let pid = child.id().unwrap().to_string();
    assert!(run_tool("kill", &["-TERM", &pid], b"").await.status.success());
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait()).await.unwrap().unwrap();
    assert!(status.success(), "{status}");
}

/// `LOCAL_PROXY_LOG` shares the config override prefix: it must set the log filter, not be
/// refused as an unknown config key (by `check` and by the server), and win over `RUST_LOG`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_proxy_log_sets_the_filter_and_is_no_config_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lp.toml");
    std::fs::write(&path, base_config("")).unwrap();
    let out = tokio::process::Command::new(BIN)
        .args(["check", "-c", path.to_str().unwrap()])
        .env("LOCAL_PROXY_LOG", "debug")
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "check refused LOCAL_PROXY_LOG: {}", String::from_utf8_lossy(&out.stderr));

    // RUST_LOG=error alone would hide the info-level "listening" lines; LOCAL_PROXY_LOG=debug
    // must take precedence and show them.
    let mut child = tokio::process::Command::new(BIN)
        .args(["-c", path.to_str().unwrap()])
        .env("LOCAL_PROXY_LOG", "debug")
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = String::new();
    let found = tokio::time::timeout(Duration::from_secs(10), async {
        while let Ok(Some(line)) = lines.next_line().await {
            seen.push_str(&line);
            seen.push('\n');
            if line.contains("listening") && line.contains("listener=\"admin\"") {
                return true;
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    assert!(found, "no admin listener logged with LOCAL_PROXY_LOG=debug; stderr:\n{seen}");
    let pid = child.id().unwrap().to_string();
    assert!(run_tool("kill", &["-TERM", &pid], b"").await.status.success());
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait()).await.unwrap().unwrap();
    assert!(status.success(), "{status}");
}

/// `drain_timeout` bounds the drain after SIGTERM: a connection that never finishes (a stream
/// to an upstream that never answers) holds the exit for that long, not for the 10 s default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_for_drain_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lp.toml");
    let silent = silent_upstream().await;
    let text = base_config(&format!("[[stream]]\nname = \"hold\"\nlisten = \"0/tcp\"\nupstream = \"{silent}\"\n"));
    std::fs::write(&path, format!("drain_timeout = \"800ms\"\n{text}")).unwrap();
    let (mut child, log) = start_logged(&path);
    let addr_of = |listener: &str| addr_of(&log, listener);
    wait_until(Duration::from_secs(10), "stream and admin listeners logged", || {
        let ok = addr_of("mesh-stream").is_some() && addr_of("admin").is_some();
        async move { ok }
    })
    .await;
    let admin = addr_of("admin").unwrap();
    // A mesh client's connection, forwarded to the silent upstream: it stays open.
    let held = tokio::net::TcpStream::connect(addr_of("mesh-stream").unwrap()).await.unwrap();
    wait_until(Duration::from_secs(5), "the forward counted open", || async move {
        let text = http_get(admin, "/metrics").await.1;
        metric_value(&text, "local_proxy_connections_active", &[("listener", "mesh-stream")]) == 1.0
    })
    .await;

    let pid = child.id().unwrap().to_string();
    let asked = std::time::Instant::now();
    assert!(run_tool("kill", &["-TERM", &pid], b"").await.status.success());
    let status = tokio::time::timeout(Duration::from_secs(8), child.wait()).await.expect("exit within 8 s").unwrap();
    let took = asked.elapsed();
    assert!(status.success(), "{status}");
    // It waited for the open connection (not an instant exit) and left at the deadline.
    assert!(took >= Duration::from_millis(700) && took < Duration::from_secs(4), "exit after {took:?}");
    assert!(log.lock().unwrap().contains("drain deadline"), "{}", log.lock().unwrap());
    drop(held);
}

/// A WebSocket open at SIGTERM is drained like any connection: it keeps carrying messages
/// until it ends or `drain_timeout` passes, and the process leaves at the deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_an_open_websocket_for_drain_timeout() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lp.toml");
    let ws_up = ws_upstream().await;
    let text = base_config(&format!(
        "redirect_to_https = false\n[[site]]\nhost = \"ws.test\"\nupstream = \"http://{ws_up}\"\n"
    ));
    std::fs::write(&path, format!("drain_timeout = \"2s\"\n{text}")).unwrap();
    let (mut child, log) = start_logged(&path);
    wait_until(Duration::from_secs(10), "the mesh http listener logged", || {
        let ok = addr_of(&log, "mesh-http").is_some();
        async move { ok }
    })
    .await;
    let tcp = tokio::net::TcpStream::connect(addr_of(&log, "mesh-http").unwrap()).await.unwrap();
    let (mut ws, resp) = tokio_tungstenite::client_async("ws://ws.test/socket", tcp).await.unwrap();
    assert_eq!(resp.status(), 101);
    let mut echo = async |text: &str| {
        ws.send(Message::text(text.to_string())).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(2), ws.next()).await.expect("an echo").unwrap().unwrap();
        assert_eq!(got.into_text().unwrap().as_str(), text);
    };
    echo("before").await;

    let pid = child.id().unwrap().to_string();
    let asked = std::time::Instant::now();
    assert!(run_tool("kill", &["-TERM", &pid], b"").await.status.success());
    tokio::time::sleep(Duration::from_millis(300)).await;
    echo("while draining").await;
    let status = tokio::time::timeout(Duration::from_secs(8), child.wait()).await.expect("exit within 8 s").unwrap();
    let took = asked.elapsed();
    assert!(status.success(), "{status}");
    assert!(took >= Duration::from_millis(1900) && took < Duration::from_secs(6), "exit after {took:?}");
    assert!(log.lock().unwrap().contains("drain deadline"), "{}", log.lock().unwrap());
}

/// At start the soft open-files limit is raised to the hard one (512 to 4,096 here), and a
/// config that may need more descriptors than that is warned about, with the numbers.
#[tokio::test]
async fn the_open_files_limit_is_raised_and_a_short_one_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("lp.toml");
    std::fs::write(&path, base_config("max_connections = 10000\n")).unwrap();
    let mut child = tokio::process::Command::new("sh")
        .args(["-c", &format!("ulimit -S -n 512 && ulimit -H -n 4096 && exec {BIN} -c {}", path.display())])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let warned = tokio::time::timeout(Duration::from_secs(10), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("open-files limit is below") {
                return line;
            }
        }
        String::new()
    })
    .await
    .expect("no warning within 10 s");
    assert!(
        warned.contains("wanted=20064")
            && warned.contains("max_connections=10000")
            && warned.contains("open_files=4096"),
        "{warned}"
    );
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let open: Vec<&str> =
        limits.lines().find(|l| l.starts_with("Max open files")).unwrap().split_whitespace().skip(3).take(2).collect();
    assert_eq!(open, ["4096", "4096"], "soft limit not raised to the hard one: {limits}");
}
