//! `local-proxy ctl …` against the real binary: it finds the admin listener and the token in
//! the config it is given, `status` prints the summary (or the JSON), drain/undrain/weight
//! act on the named upstream, and without a token file control is refused before any call.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const TOKEN: &str = "lp-ctl-token-0123456789abcdef";

struct Kid(Child);

impl Drop for Kid {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

use test_support::free_port;

fn config(dir: &Path, admin: u16, token: bool, a: &str, b: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let token_line = if token {
        let f = dir.join("token");
        std::fs::write(&f, format!("{TOKEN}\n")).unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        format!("token_file = \"{}\"\n", f.display())
    } else {
        String::new()
    };
    let file = dir.join(if token { "with-token.toml" } else { "without-token.toml" });
    std::fs::write(
        &file,
        format!(
            "[admin]\nlisten = \"127.0.0.1:{admin}\"\n{token_line}\
             [wan]\naddresses = [\"127.0.0.1\"]\ntrusted_ingress = [\"127.0.0.2\"]\n\
             [mesh]\nlisten = \"off\"\n[http]\nhttps_port = 0\nhttp_port = 0\n\
             [[stream]]\nname = \"svc\"\nlisten = \"0/tcp\"\nupstream = [\"{a}\", \"{b}\"]\n"
        ),
    )
    .unwrap();
    file
}

fn ctl(config: &Path, args: &[&str]) -> (bool, String, String) {
    let out =
        Command::new(env!("CARGO_BIN_EXE_local-proxy")).arg("-c").arg(config).arg("ctl").args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn upstream(config: &Path, label: &str) -> serde_json::Value {
    let (ok, out, err) = ctl(config, &["status", "--json"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["streams"][0]["upstreams"].as_array().unwrap().iter().find(|u| u["upstream"] == label).unwrap().clone()
}

#[test]
fn ctl_reads_the_config_and_drives_the_admin_api() {
    // Removed on drop, also when an assertion fails.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    // Two upstreams that accept (never read): the stream only needs them to exist.
    let (ua, ub) = (TcpListener::bind("127.0.0.1:0").unwrap(), TcpListener::bind("127.0.0.1:0").unwrap());
    let (a, b) = (ua.local_addr().unwrap().to_string(), ub.local_addr().unwrap().to_string());
    let admin = free_port();
    let with = config(&dir, admin, true, &a, &b);
    let without = config(&dir, admin, false, &a, &b);
    let log = std::fs::File::create(dir.join("stderr.log")).unwrap();
    let _proxy = Kid(Command::new(env!("CARGO_BIN_EXE_local-proxy"))
        .arg("-c")
        .arg(&with)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap());
    let start = Instant::now();
    let summary = loop {
        let (ok, out, err) = ctl(&with, &["status"]);
        if ok {
            break out;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "admin never answered: {err}\n{}",
            std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(summary.contains("svc") && summary.contains(&a), "{summary}");

    // A reader that left before the answer (`ctl status | head -0`): a normal end, no panic.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(env!("CARGO_BIN_EXE_local-proxy"))
        .arg("-c")
        .arg(&with)
        .args(["ctl", "status", "--json"])
        .stdout(writer)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.is_empty(), "{:?}: {err}", out.status);

    let (ok, out, err) = ctl(&with, &["drain", "svc", &a]);
    assert!(ok, "{err}");
    assert_eq!(out, format!("stream svc {a}: serving -> drained\n"));
    assert_eq!(upstream(&with, &a)["drained"], true);
    assert_eq!(upstream(&with, &b)["drained"], false);
    let (ok, _, err) = ctl(&with, &["undrain", "svc", &a]);
    assert!(ok, "{err}");
    assert_eq!(upstream(&with, &a)["drained"], false);

    let (ok, _, err) = ctl(&with, &["weight", "svc", &b, "7"]);
    assert!(ok, "{err}");
    assert_eq!(upstream(&with, &b)["weight"], 7);
    let (ok, _, err) = ctl(&with, &["weight", "svc", &b, "config"]);
    assert!(ok, "{err}");
    assert_eq!(upstream(&with, &b)["weight"], 1);

    // An unknown upstream: the server's reason on stderr, exit status 1.
    let (ok, _, err) = ctl(&with, &["drain", "svc", "127.0.0.1:1"]);
    assert!(!ok && err.starts_with("404"), "{err}");
    // No token file in the config: refused before calling.
    let (ok, _, err) = ctl(&without, &["drain", "svc", &a]);
    assert!(!ok && err.contains("admin.token_file"), "{err}");
    // `ctl` reads only [admin]: a config invalid elsewhere (an upstream half typed) still
    // drains; a token file gone fails control, naming the field, and not `status`.
    let text = std::fs::read_to_string(&with).unwrap();
    let broken = with.with_file_name("broken.toml");
    std::fs::write(&broken, format!("{text}[[stream]]\nname = \"new\"\nlisten = \"0/tcp\"\nupstream = \"192.168.\"\n"))
        .unwrap();
    assert!(local_proxy::config::load(&broken).is_err());
    let (ok, _, err) = ctl(&broken, &["drain", "svc", &a]);
    assert!(ok, "{err}");
    assert_eq!(upstream(&with, &a)["drained"], true);
    let (ok, _, err) = ctl(&broken, &["undrain", "svc", &a]);
    assert!(ok, "{err}");
    // Not TOML at all (a string left open in a table being typed): the `[admin]` table is
    // read alone, with a warning; with no config readable, `--admin` still reaches `status`.
    let half = with.with_file_name("half-typed.toml");
    std::fs::write(&half, format!("{text}[[stream]]\nname = \"new\nlisten = \"0/tcp\"\n")).unwrap();
    let (ok, _, err) = ctl(&half, &["drain", "svc", &a]);
    assert!(ok && err.contains("warning") && err.contains("[admin] table alone"), "{err}");
    assert_eq!(upstream(&with, &a)["drained"], true);
    let (ok, _, err) = ctl(&half, &["undrain", "svc", &a]);
    assert!(ok, "{err}");
    let nothing = with.with_file_name("no-such.toml");
    let (ok, _, err) = ctl(&nothing, &["status"]);
    assert!(!ok && err.contains("no-such.toml") && err.contains("--admin"), "{err}");
    let (ok, out, err) = ctl(&nothing, &["--admin", &format!("127.0.0.1:{admin}"), "status"]);
    assert!(ok && out.contains("svc"), "{err}");
    let gone = with.with_file_name("token-gone.toml");
    std::fs::write(&gone, text.replace("/token\"", "/no-such-token\"")).unwrap();
    let (ok, out, err) = ctl(&gone, &["status"]);
    assert!(ok && out.contains("svc"), "{err}");
    let (ok, _, err) = ctl(&gone, &["drain", "svc", &a]);
    assert!(!ok && err.contains("admin.token_file") && err.contains("no-such-token"), "{err}");
}
