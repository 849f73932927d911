//! `systemctl restart` under the packaged units, in a booted Debian bookworm host (systemd-nspawn
//! in the ingress1 namespace): the project's two .debs installed with dpkg, both services
//! running under their shipped units (descriptor store, Type=notify, the sandboxing), a client
//! in the same namespace opening a connection every 5 ms through ingress (PROXY v2) → local
//! proxy (a TCP stream) → an echo service outside the container, while `systemctl restart
//! local-proxy` runs three times and then `systemctl restart ingress` three times. Asserts: no
//! connection failed; each restart made a new main process; the listening sockets are the same
//! kernel sockets before and after (kept in systemd's descriptor store: what makes the queueing
//! possible); each new process logged serving the kept sockets. Then, as a control, `systemctl
//! stop` + `start` (which flushes the store) does fail connections of the same load. The
//! package's logrotate file rotates the stream's access log and the proxy reopens it. Last,
//! `dpkg --purge` of both packages removes what local-proxy wrote (/var/lib/local-proxy and
//! /var/log/local-proxy) and keeps its system user. Bounded: the loads last at most 60 s and
//! 20 s, the whole test well under 3 minutes with a cached root filesystem (~20 s here).

mod common;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use netns::cmd;
use netns::loadgen::LoadConfig;
use netns::nspawn::{self, Host, HostSpec, Rootfs, Ssh};
use netns::topology::{addr, Options, Role, Topology};
use netns::wait::{check, wait_until};

const RESTARTS: usize = 3;
/// The echo service, in the namespace but outside the container.
const ECHO: &str = "127.0.0.1:8001";
/// The local proxy's WAN address (the ingress's one path) and its stream port.
const HOME: &str = "127.0.0.2";
const STREAM_PORT: u16 = 9000;
/// The ingress's service port.
const SERVICE_PORT: u16 = 7000;
const SHORT: Duration = Duration::from_secs(20);

fn local_proxy_toml() -> String {
    format!(
        r#"# Short drains: the load's connections are brief, and the host powers off faster.
drain_timeout = "2s"

[admin]
listen = "127.0.0.1:9181"

[wan]
addresses = ["{HOME}"]
trusted_ingress = ["127.0.0.1"]

[[stream]]
name = "echo"
listen = "{STREAM_PORT}/tcp"
upstream = "{ECHO}"
# In the package's log directory (its postinst makes it, so the unit's check passes at the
# first start), rotated by the package's logrotate file.
access_log = {{ path = "{STREAM_LOG}" }}
"#
    )
}

/// The stream's access log.
const STREAM_LOG: &str = "/var/log/local-proxy/streams.log";

/// The package's /etc/logrotate.d/local-proxy rotates the access log and has the proxy reopen
/// it: after `logrotate -f`, the lines so far are in `.1` and a new connection's line is in a
/// new file (without the reopen it would go on into `.1`, and no new file would be made).
fn logrotate_reopens(h: &Host, ip: IpAddr) -> Result<()> {
    h.sh(&format!("test -s {STREAM_LOG}"), SHORT).context("the stream's access log has lines before rotating")?;
    h.sh("logrotate -f /etc/logrotate.d/local-proxy", SHORT).context("logrotate -f /etc/logrotate.d/local-proxy")?;
    let connect = format!(
        "import socket; s = socket.create_connection(('{ip}', {SERVICE_PORT}), 5); s.sendall(b'x\\n'); s.recv(1); s.close()"
    );
    h.sh(&format!("python3 -c \"{connect}\""), SHORT).context("one connection through ingress and local-proxy")?;
    wait_until("the new connection's line in a new log", SHORT, Duration::from_millis(100), || {
        let out = h.sh(
            &format!("ls -l {STREAM_LOG}*; test -s {STREAM_LOG}.1 && test -s {STREAM_LOG} && echo rotated"),
            SHORT,
        )?;
        check(out.contains("rotated"), || out.clone())
    })
    .with_context(|| journal(h, "local-proxy"))
}

fn ingress_toml() -> String {
    format!(
        r#"[admin]
listen = "127.0.0.1:9180"

[limits]
drain_timeout = "2s"

[pool.home]
# The path names its port: without one the ingress would connect to the client's port (7000),
# its own listener.
paths = [ {{ name = "home", address = "{HOME}:{STREAM_PORT}", weight = 1 }} ]
# A TCP connect: the local proxy answers PROXY LOCAL probes on its HTTPS port, not on streams.
health = {{ interval = "500ms", timeout = "400ms", rise = 2, fall = 2, port = {STREAM_PORT}, check = "tcp" }}

[[service]]
name = "echo"
listen = ["0.0.0.0:{SERVICE_PORT}"]
pool = "home"
proxy_protocol = "v2"
"#
    )
}

/// The kernel socket (inode) listening on `port`, from `ss` in the namespace.
fn listen_inode(ns: &str, port: u16) -> Result<String> {
    let out = cmd::exec_ok(ns, &["ss", "-Hltne", &format!("sport = :{port}")], SHORT)?;
    let inode = out
        .split_whitespace()
        .find_map(|w| w.strip_prefix("ino:"))
        .with_context(|| format!("no listener on port {port}: {out}"))?;
    Ok(inode.to_string())
}

fn main_pid(h: &Host, unit: &str) -> Result<String> {
    Ok(h.sh(&format!("systemctl show -p MainPID --value {unit}"), SHORT)?.trim().to_string())
}

/// `systemctl restart unit` (waits for the stop, the drain and READY=1 of the new process);
/// returns how long it took and the new main pid.
fn restart(h: &Host, unit: &str) -> Result<(Duration, String)> {
    let before = main_pid(h, unit)?;
    let t = Instant::now();
    h.sh(&format!("systemctl restart {unit}"), Duration::from_secs(60))?;
    let took = t.elapsed();
    let after = main_pid(h, unit)?;
    if after == before || after == "0" {
        bail!("{unit}: main pid {before} before the restart, {after} after");
    }
    let active = h.sh_full(&format!("systemctl is-active {unit}"), SHORT)?;
    if active.stdout.trim() != "active" {
        bail!("{unit} is {} after the restart", active.stdout.trim());
    }
    Ok((took, after))
}

/// Both services' admin `/metrics`, the lines that count connections (for a failure's context).
fn counters(ns: &str) -> String {
    let mut out = String::new();
    for admin in ["127.0.0.1:9181", "127.0.0.1:9180"] {
        let text = cmd::exec(ns, &["curl", "-sS", "--max-time", "3", &format!("http://{admin}/metrics")], SHORT)
            .map(|o| o.stdout)
            .unwrap_or_default();
        for l in text.lines().filter(|l| !l.starts_with('#') && (l.contains("connections") || l.contains("path_up"))) {
            out.push_str(l);
            out.push('\n');
        }
    }
    out
}

fn journal(h: &Host, unit: &str) -> String {
    h.sh_full(&format!("journalctl -u {unit} --no-pager -o cat | tail -n 40"), SHORT)
        .map(|o| o.stdout)
        .unwrap_or_default()
}

/// What local-proxy's unit lets it write (StateDirectory=, LogsDirectory=): the ACME account
/// key and certificates' private keys, access logs with client addresses. Its postrm removes
/// both on purge.
const WRITTEN: [&str; 2] = ["/var/lib/local-proxy", "/var/log/local-proxy"];

/// `check` under the unit's sandbox (ProtectSystem=strict, the service user) refuses an access
/// log in a directory the sandbox mounts read-only, naming the field; the same check run plainly
/// as root passes (that config would otherwise start the service and fail at the first open).
fn check_refuses_read_only_log_dirs(h: &Host) -> Result<()> {
    let config = "[http]\naccess_log = { path = \"/srv/logs/access.log\" }\n";
    h.sh(
        &format!("mkdir -p /srv/logs && chown local-proxy /srv/logs && printf '%s' '{config}' > /etc/local-proxy/ro-test.toml"),
        SHORT,
    )?;
    let plain = h.sh_full("local-proxy check -c /etc/local-proxy/ro-test.toml", SHORT)?;
    if !plain.status.success() {
        bail!("check as root refused a writable log directory: {}", plain.stderr.trim());
    }
    let sandboxed = h.sh_full(
        "systemd-run --wait --pipe --quiet -p ProtectSystem=strict -p User=local-proxy \
         /usr/bin/local-proxy check -c /etc/local-proxy/ro-test.toml",
        SHORT,
    )?;
    let said = format!("{}{}", sandboxed.stdout, sandboxed.stderr);
    if sandboxed.status.success() || !(said.contains("http.access_log.path") && said.contains("read-only")) {
        bail!("check in the unit's sandbox did not refuse /srv/logs as read-only: {said}");
    }
    h.sh("rm -f /etc/local-proxy/ro-test.toml && rm -rf /srv/logs", SHORT)?;
    Ok(())
}

/// What a first install of local-proxy leaves before any start: its config readable by the
/// service's group only (it may hold the ACME EAB key), and the state and log directories
/// made, so that `check` before the first start finds an access log's directory.
fn installed_modes(h: &Host) -> Result<()> {
    let got = h.sh(
        "stat -c '%n %a %U:%G' /etc/local-proxy/local-proxy.toml /var/lib/local-proxy /var/log/local-proxy",
        SHORT,
    )?;
    let want = "/etc/local-proxy/local-proxy.toml 640 root:local-proxy\n\
                /var/lib/local-proxy 700 local-proxy:local-proxy\n\
                /var/log/local-proxy 750 local-proxy:local-proxy";
    if got.trim() != want {
        bail!("after dpkg -i (packaging/local-proxy/postinst):\n{got}\nwanted:\n{want}");
    }
    Ok(())
}

/// Installing a package again (`dpkg -i`: an upgrade, the postinst's configure with the old
/// version) restarts its running service when the new binary's check accepts the config in
/// place, and leaves it running, its main pid unchanged, with a warning when the check refuses
/// it (before, the restart stopped it and the new process's ExecStartPre refused to start).
fn upgrade_restarts_only_on_a_config_that_passes(h: &Host) -> Result<()> {
    for unit in ["ingress", "local-proxy"] {
        let (conf, deb) = (format!("/etc/{unit}/{unit}.toml"), format!("/root/{unit}.deb"));
        let dpkg = format!("DEBIAN_FRONTEND=noninteractive dpkg -i {deb} 2>&1");
        let before = main_pid(h, unit)?;
        h.sh(&dpkg, Duration::from_secs(120)).with_context(|| format!("upgrading {unit}"))?;
        let restarted = main_pid(h, unit)?;
        if restarted == before || restarted == "0" {
            bail!("{unit}: an upgrade with a valid config did not restart it (main pid {before}, then {restarted})");
        }
        // A key no version accepts, in the last table of the file.
        h.sh(&format!("cp {conf} /root/{unit}.good && echo 'no_such_key = 1' >> {conf}"), SHORT)?;
        let said =
            h.sh(&dpkg, Duration::from_secs(120)).with_context(|| format!("upgrading {unit}, config refused"))?;
        let kept = main_pid(h, unit)?;
        let active = h.sh_full(&format!("systemctl is-active {unit}"), SHORT)?;
        if kept != restarted || active.stdout.trim() != "active" {
            bail!("{unit}: an upgrade whose check refuses the config touched the running service (main pid {restarted}, then {kept}; {})\n{said}", active.stdout.trim());
        }
        if !said.contains("left as it is") || !said.contains("no_such_key") {
            bail!("{unit}: the upgrade did not say why it left the service alone:\n{said}");
        }
        h.sh(&format!("install -m 0644 /root/{unit}.good {conf}"), SHORT)?;
    }
    Ok(())
}

/// `dpkg --purge` of both packages (stops the services first): each of [`WRITTEN`] gone, the
/// system user local-proxy still there (Debian keeps system users on purge; so does README.Debian).
fn purge(h: &Host) -> Result<()> {
    // The unit made both when local-proxy started; this config writes nothing into them, so a
    // file in each stands for the keys and logs (a purge must remove full directories).
    for d in WRITTEN {
        let script = format!("if [ -d {d} ]; then touch {d}/purge-test && echo present; else echo absent; fi");
        let out = h.sh(&script, SHORT)?;
        if out.trim() != "present" {
            bail!("{d} does not exist before the purge (the unit's StateDirectory=/LogsDirectory= makes it at start)");
        }
    }
    h.sh("DEBIAN_FRONTEND=noninteractive dpkg --purge local-proxy ingress >/dev/null", Duration::from_secs(120))
        .context("dpkg --purge local-proxy ingress")?;
    for d in WRITTEN {
        // First line: gone or left; then what is left, for the message.
        let out = h.sh(&format!("if [ -e {d} ]; then echo left; ls -la {d}; else echo gone; fi"), SHORT)?;
        if out.lines().next() != Some("gone") {
            bail!("dpkg --purge local-proxy left {d} behind (packaging/local-proxy/postrm):\n{out}");
        }
    }
    let user = h.sh_full("getent passwd local-proxy", SHORT)?;
    if !user.status.success() {
        bail!("dpkg --purge local-proxy removed the system user local-proxy (it should stay): {}", user.stderr.trim());
    }
    Ok(())
}

#[test]
fn systemctl_restart_loses_no_connection() {
    let t0 = Instant::now();
    nspawn::require().unwrap_or_else(|e| panic!("{e:#}"));
    let cache = common::cache_dir();
    let rootfs = Rootfs::get(&cache).unwrap_or_else(|e| panic!("root filesystem: {e:#}"));
    let debs = common::project_debs().unwrap_or_else(|e| panic!("{e:#}"));
    common::phase(t0, &format!("packages {} and {}", debs.0.display(), debs.1.display()));
    let mut t = common::build(Options { mesh: false, backends: false });
    if let Err(e) = run(&mut t, &rootfs, &debs, t0) {
        let echo = t.proc_mut("echo").map(|p| p.tail(10)).unwrap_or_default();
        panic!("{e:#}\necho service:\n{echo}");
    }
}

fn run(t: &mut Topology, rootfs: &Rootfs, debs: &(PathBuf, PathBuf), t0: Instant) -> Result<()> {
    let ns = t.ns(Role::Ingress1).to_string();
    let ip = IpAddr::from(addr::INGRESS1);
    // ssh from the namespace itself: the container shares its network.
    let ssh = Ssh::new(&ns, t.dir())?;
    let mut spec = HostSpec::new("restarts", &ns, ip);
    for (deb, name) in [(&debs.0, "ingress.deb"), (&debs.1, "local-proxy.deb")] {
        let data = std::fs::read(deb).with_context(|| format!("reading {}", deb.display()))?;
        spec.files.push((PathBuf::from("/root").join(name), data, 0o644));
    }
    spec.files.push((PathBuf::from("/root/local-proxy.toml"), local_proxy_toml().into_bytes(), 0o644));
    spec.files.push((PathBuf::from("/root/ingress.toml"), ingress_toml().into_bytes(), 0o644));
    let h = Host::boot(rootfs, &spec, &ssh, &t.tag, t.dir())?;
    common::phase(t0, &format!("host booted in {:.2}s", h.boot_time.as_secs_f64()));

    // Both packages, their configs in place, both services started under the packaged units.
    h.sh(
        "DEBIAN_FRONTEND=noninteractive dpkg -i /root/ingress.deb /root/local-proxy.deb >/dev/null",
        Duration::from_secs(120),
    )
    .context("dpkg -i")?;
    installed_modes(&h)?;
    h.sh(
        "set -e; install -m 0644 /root/local-proxy.toml /etc/local-proxy/local-proxy.toml; \
         install -m 0644 /root/ingress.toml /etc/ingress/ingress.toml; \
         systemctl start local-proxy ingress",
        Duration::from_secs(120),
    )
    .with_context(|| format!("installing and starting\n{}\n{}", journal(&h, "local-proxy"), journal(&h, "ingress")))?;
    let echo_bin = t.bins.echo_server.display().to_string();
    t.spawn(Role::Ingress1, "echo", &[echo_bin, "--listen".into(), ECHO.into()])?;
    let target: SocketAddr = SocketAddr::new(ip, SERVICE_PORT);
    wait_until(
        "a connection through ingress and local-proxy",
        Duration::from_secs(20),
        Duration::from_millis(200),
        || {
            // bash's /dev/tcp: one line out, the echo's two lines back (its address, the line).
            let script = format!(
                "exec 3<>/dev/tcp/{}/{}; printf 'hello\\n' >&3; timeout 3 head -n 2 <&3",
                target.ip(),
                target.port()
            );
            let out = cmd::exec(&ns, &["bash", "-c", &script], Duration::from_secs(5))?;
            check(out.stdout.contains(ECHO) && out.stdout.contains("hello"), || {
                format!("the echo answered {:?} {:?}", out.stdout, out.stderr)
            })
        },
    )
    .with_context(|| format!("{}\n{}\n{}", journal(&h, "local-proxy"), journal(&h, "ingress"), counters(&ns)))?;
    let inodes = |t: &Topology| -> Result<(String, String)> {
        Ok((listen_inode(t.ns(Role::Ingress1), SERVICE_PORT)?, listen_inode(t.ns(Role::Ingress1), STREAM_PORT)?))
    };
    let before = inodes(t)?;
    common::phase(t0, "ingress and local-proxy running under their packaged units; the echo answers through both");

    let load = LoadConfig {
        targets: vec![target],
        interval: Duration::from_millis(5),
        duration: Duration::from_secs(60),
        connect_timeout: Duration::from_secs(3),
        io_timeout: Duration::from_secs(10),
        slow: Duration::from_millis(500),
        ..Default::default()
    };
    let run = t.start_load(Role::Ingress1, "load", load)?;
    std::thread::sleep(Duration::from_secs(1));
    let mut took = Vec::new();
    for unit in ["local-proxy", "ingress"] {
        for i in 0..RESTARTS {
            let (d, pid) =
                restart(&h, unit).with_context(|| format!("restart {} of {unit}\n{}", i + 1, journal(&h, unit)))?;
            common::phase(
                t0,
                &format!("systemctl restart {unit} #{}: {:.2}s, new main pid {pid}", i + 1, d.as_secs_f64()),
            );
            took.push((unit, d));
            // Let the new process serve a while before the next restart.
            std::thread::sleep(Duration::from_millis(700));
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    run.request_stop()?;
    let r = run.finish(t)?;
    let s = &r.summary;
    common::phase(t0, &format!("load done: {} started, {} ok, {} failed, {} slow", s.started, s.ok, s.failed, s.slow));

    let after = inodes(t)?;
    let kept = |unit: &str| -> Result<usize> {
        let n = h.sh(
            &format!(
                "journalctl -u {unit} --no-pager -o cat | grep -c 'serving the socket kept across the restart' || true"
            ),
            SHORT,
        )?;
        Ok(n.trim().parse().unwrap_or(0))
    };
    let (kept_lp, kept_ing) = (kept("local-proxy")?, kept("ingress")?);
    let max_ms = r.records.iter().map(|x| x.latency_ms).fold(0.0, f64::max);
    let failures: Vec<String> = s.failures.iter().take(5).map(|f| format!("{} at {}", f.error, f.start_ms)).collect();
    if s.failed != 0 {
        bail!("{} of {} connections failed during the restarts: {failures:?}", s.failed, s.started);
    }
    if s.started < 1000 {
        bail!("only {} connections started: the load did not run through the restarts", s.started);
    }
    if before != after {
        bail!("listening sockets (inodes ingress:{SERVICE_PORT}, local-proxy:{STREAM_PORT}) {before:?} before, {after:?} after: not kept in systemd's store");
    }
    if kept_lp < RESTARTS || kept_ing < RESTARTS {
        bail!(
            "kept sockets served: local-proxy logged it {kept_lp} times, ingress {kept_ing}, want {RESTARTS} each\n{}\n{}",
            journal(&h, "local-proxy"),
            journal(&h, "ingress")
        );
    }
    // Control: `systemctl stop` flushes the store, so a stop + start leaves a gap with no socket
    // at all: the same load must see refused connections, or it could not have seen a failure
    // above.
    let control = LoadConfig {
        targets: vec![target],
        interval: Duration::from_millis(5),
        duration: Duration::from_secs(20),
        connect_timeout: Duration::from_secs(1),
        io_timeout: Duration::from_secs(3),
        ..Default::default()
    };
    let run = t.start_load(Role::Ingress1, "control", control)?;
    std::thread::sleep(Duration::from_millis(500));
    h.sh("systemctl stop ingress && sleep 0.5 && systemctl start ingress", Duration::from_secs(60))?;
    std::thread::sleep(Duration::from_millis(500));
    run.request_stop()?;
    let c = run.finish(t)?.summary;
    if c.failed == 0 {
        bail!("control: stop + start (store flushed) failed no connection of {}: the load cannot see a gap", c.started);
    }
    common::phase(t0, &format!("control (stop + start): {} of {} connections failed", c.failed, c.started));
    logrotate_reopens(&h, ip)?;
    common::phase(t0, "logrotate -f: the access log rotated and reopened");
    upgrade_restarts_only_on_a_config_that_passes(&h)?;
    common::phase(t0, "dpkg -i again: each running service restarted on a valid config, left running on a refused one");
    check_refuses_read_only_log_dirs(&h)?;
    common::phase(t0, "check in the unit's sandbox refuses a read-only access log directory");
    purge(&h)?;
    common::phase(t0, &format!("dpkg --purge: {} gone, user local-proxy kept", WRITTEN.join(" and ")));
    let secs = |u: &str| {
        took.iter().filter(|(x, _)| *x == u).map(|(_, d)| format!("{:.2}", d.as_secs_f64())).collect::<Vec<_>>()
    };
    common::report(&format!(
        "RESULT systemd_restart: {} connections ({} ok, {} failed, {} slow > 500 ms, max {:.0} ms) through ingress and \
         local-proxy while systemctl restart ran {RESTARTS}x each under the packaged units (local-proxy {:?} s, ingress \
         {:?} s); listening sockets kept (inodes {:?}); control stop + start: {} of {} failed; dpkg --purge removed \
         local-proxy's state and logs; total {:.1}s",
        s.started,
        s.ok,
        s.failed,
        s.slow,
        max_ms,
        secs("local-proxy"),
        secs("ingress"),
        after,
        c.failed,
        c.started,
        t0.elapsed().as_secs_f64()
    ));
    drop(h);
    Ok(())
}
