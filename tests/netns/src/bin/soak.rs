//! `soak`: a long run through the whole topology with everything an operator's week throws at
//! it, compressed: new connections every 20 ms from the client through both ingress nodes
//! (PROXY v2) to `local-proxy` in home (WAN listeners, the nftables allowlist from DNS, a
//! stream to the LAN echo), while
//! - wan1 flaps: nftables drops 30 % of its packets in 2-second bursts (2 s on, 4 s off);
//! - both ingress processes get SIGHUP every 2 s;
//! - the local proxy is restarted twice (SIGTERM, start again), at 1/3 and 2/3 of the run, its
//!   listening sockets kept meanwhile in a descriptor store as systemd keeps them for the
//!   packaged unit (`netns::fdstore`): the kernel queues clients until the new process serves;
//! - ingress-2's DNS answer (knotd, TTL 2 s) changes every 30 s: a second address added, then
//!   removed again, so the allowlist is rewritten while traffic flows.
//!
//! Every 10 s it samples open descriptors and RSS of each ingress and the local proxy, and at
//! the end prints failed connects (split: during a local-proxy restart, or not) and the slope
//! of descriptors and RSS per hour (least squares; for the local proxy since its last start).
//! Not run in CI: `scripts/soak [--minutes N]` (default 30) builds and runs it as root.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use netns::fdstore::FdStore;
use netns::knot::{self, Knot};
use netns::topology::{addr, Bins, Options, Role, Topology, Wan};
use netns::wait::{check, wait_until};
use netns::{cmd, metrics, scenario, unix_ms};

const INGRESS_ADMIN: &str = "127.0.0.1:9180";
const LP_ADMIN: &str = "127.0.0.1:9181";
/// The local proxy's plain HTTP port: what the ingress health checks probe (PROXY v2 LOCAL).
const LP_HTTP: u16 = addr::HEALTH_PORT;
const TTL: u32 = 2;
/// The extra address ingress-2's answer gains and loses.
const INGRESS2_EXTRA: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 20);
const SAMPLE_EVERY: Duration = Duration::from_secs(10);
const HUP_EVERY: Duration = Duration::from_secs(2);
const DNS_EVERY: Duration = Duration::from_secs(30);
const LOSS_ON: Duration = Duration::from_secs(2);
const LOSS_PERIOD: Duration = Duration::from_secs(6);
const LOSS_PCT: u8 = 30;
const PROCS: [&str; 3] = ["ingress1", "ingress2", "local-proxy"];

fn main() {
    if let Err(e) = run() {
        eprintln!("soak: {e:#}");
        std::process::exit(1);
    }
}

fn minutes() -> Result<u64> {
    let mut it = std::env::args().skip(1);
    let mut minutes = 30;
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--minutes" => minutes = it.next().context("--minutes needs a value")?.parse().context("--minutes")?,
            _ => bail!("usage: soak [--minutes N]"),
        }
    }
    if !(1..=24 * 60).contains(&minutes) {
        bail!("--minutes must be 1..=1440");
    }
    Ok(minutes)
}

fn ingress_config(mesh: IpAddr) -> String {
    let (w1, w2, echo) = (addr::WAN1, addr::WAN2, addr::ECHO_PORT);
    format!(
        r#"[admin]
listen = "{INGRESS_ADMIN}"

[pool.home]
paths = [ {{ name = "wan1", address = "{w1}", weight = 3 }}, {{ name = "wan2", address = "{w2}", weight = 1 }} ]
mesh = "{mesh}"
connect_timeout = "300ms"
health = {{ interval = "500ms", timeout = "400ms", rise = 2, fall = 2, port = {LP_HTTP}, check = "proxy-v2" }}

[[service]]
name = "echo"
listen = ["0.0.0.0:{echo}"]
pool = "home"
proxy_protocol = "v2"
"#
    )
}

fn local_proxy_config(ygg_admin: &std::path::Path) -> String {
    format!(
        r#"[admin]
listen = "{LP_ADMIN}"

[wan]
addresses = ["{wan1}", "{wan2}"]
# PROXY v2 trust comes from the DNS-fed allowlist only.
trusted_ingress = []

[mesh]
listen = "auto"
admin_endpoint = "unix://{ygg}"

[http]
https_port = 0
http_port = {LP_HTTP}

[firewall]
ingress_names = ["ingress-1.{zone}", "ingress-2.{zone}"]
interfaces = ["wan1", "wan2"]
protect_ports = ["{echo}/tcp", "{LP_HTTP}/tcp"]
nameservers = ["{dns}"]
min_refresh = "1s"
max_refresh = "30s"
lookup_timeout = "1s"

[[stream]]
name = "echo"
listen = "{echo}/tcp"
upstream = "{lan}:{echo}"
"#,
        wan1 = addr::WAN1,
        wan2 = addr::WAN2,
        ygg = ygg_admin.display(),
        zone = knot::ZONE,
        echo = addr::ECHO_PORT,
        dns = knot::DNS,
        lan = addr::LAN,
    )
}

/// Descriptors and RSS (kB) of a process, from /proc.
fn sample(pid: u32) -> Option<(u64, u64)> {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.split_whitespace().next()?.parse().ok()?;
    Some((fds, rss))
}

/// Least-squares slope of `(seconds, value)` points, per hour.
fn slope_per_hour(points: &[(f64, f64)]) -> Option<f64> {
    if points.len() < 3 {
        return None;
    }
    let n = points.len() as f64;
    let (mx, my) = (points.iter().map(|p| p.0).sum::<f64>() / n, points.iter().map(|p| p.1).sum::<f64>() / n);
    let var: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let cov: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    (var > 0.0).then(|| cov / var * 3600.0)
}

struct LocalProxy {
    bin: PathBuf,
    config: PathBuf,
    home: String,
    /// systemd's part: the notify socket and the descriptor store.
    store: FdStore,
    starts: u32,
}

impl LocalProxy {
    fn start(&mut self, t: &mut Topology) -> Result<()> {
        let argv = vec![self.bin.display().to_string(), "-c".into(), self.config.display().to_string()];
        let (argv, copies) = self.store.command(&argv)?;
        t.spawn(Role::Home, "local-proxy", &argv)?;
        // The process has its copies of the stored sockets; ours go.
        drop(copies);
        self.starts += 1;
        let want = self.starts;
        wait_until("local-proxy READY=1", Duration::from_secs(20), Duration::from_millis(10), || {
            t.proc_mut("local-proxy")?.ensure_running()?;
            self.store.poll()?;
            check(self.store.ready >= want, || "no READY=1 yet".into())
        })?;
        wait_until("local-proxy serving", Duration::from_secs(20), Duration::from_millis(50), || {
            t.proc_mut("local-proxy")?.ensure_running()?;
            let out = cmd::exec_ok(&self.home, &["ss", "-Hltn"], cmd::DEFAULT_TIMEOUT)?;
            check(out.contains(&format!("{}:{} ", addr::WAN2, addr::ECHO_PORT)), || "not listening yet".into())?;
            let m = metrics::scrape(&self.home, LP_ADMIN)?;
            check(m.get("local_proxy_healthy", &[]) == Some(1.0), || "not healthy yet".into())
        })
    }
}

fn run() -> Result<()> {
    let minutes = minutes()?;
    let total = Duration::from_secs(minutes * 60);
    let exe = std::env::current_exe().context("where am I")?;
    let dir = exe.parent().context("exe dir")?.to_path_buf();
    let bins = Bins::in_dir(&dir);
    let lp_bin = std::env::var_os("LOCAL_PROXY_BIN").map(PathBuf::from).unwrap_or_else(|| dir.join("local-proxy"));
    // The children inherit the environment, and both binaries read LOCAL_PROXY_* / INGRESS_*
    // as config overrides (an unknown key `bin` would stop them): read once, then gone.
    // Single-threaded still, so changing the environment is sound.
    std::env::remove_var("LOCAL_PROXY_BIN");
    std::env::remove_var("INGRESS_BIN");
    for b in [&bins.ingress, &lp_bin] {
        if !b.is_file() {
            bail!("{} missing: run `cargo build -p ingress -p local-proxy -p netns` first", b.display());
        }
    }
    println!("soak: {minutes} min; building the topology...");
    let mut t = Topology::build(bins, Options { mesh: true, backends: false })?;
    t.start_backends_in(Role::Lan)?;
    let home = t.ns(Role::Home).to_string();
    let dns = Knot::start(
        t.ns(Role::Inet),
        &t.tag,
        t.dir(),
        TTL,
        &[("ingress-1", addr::INGRESS1.into()), ("ingress-2", addr::INGRESS2.into())],
    )?;
    let mesh: IpAddr = t.home_mesh_addr().context("home mesh address")?.into();
    let ygg_admin = t.ygg(Role::Home).context("home yggdrasil")?.admin.clone();
    let store = FdStore::new(t.dir())?;
    let mut lp =
        LocalProxy { bin: lp_bin, config: t.dir().join("local-proxy.toml"), home: home.clone(), store, starts: 0 };
    std::fs::write(&lp.config, local_proxy_config(&ygg_admin))?;
    lp.start(&mut t)?;
    let icfg = t.dir().join("ingress.toml");
    std::fs::write(&icfg, ingress_config(mesh))?;
    netns::ingress::check(&t.bins.ingress, &icfg)?;
    for role in [Role::Ingress1, Role::Ingress2] {
        let argv = vec![t.bins.ingress.display().to_string(), "-c".into(), icfg.display().to_string()];
        t.spawn(role, role.as_str(), &argv)?;
    }
    for role in [Role::Ingress1, Role::Ingress2] {
        let ns = t.ns(role).to_string();
        wait_until(
            &format!("{} paths up", role.as_str()),
            Duration::from_secs(20),
            Duration::from_millis(100),
            || {
                let m = metrics::scrape(&ns, INGRESS_ADMIN)?;
                let up = |p| m.get("ingress_path_up", &[("pool", "home"), ("path", p)]) == Some(1.0);
                check(up("wan1") && up("wan2"), || "wan1/wan2 not both up".into())
            },
        )?;
    }
    println!("ready: client -> ingress1/ingress2 (SIGHUP every 2 s) -> wan1 (30 % loss bursts) / wan2 / mesh -> local-proxy (restarted twice, allowlist from DNS) -> lan echo");

    let load = t.start_load(Role::Client, "soak-load", scenario::standard_load(Duration::from_millis(20), total))?;
    let start = Instant::now();
    let mut samples: BTreeMap<&str, Vec<(f64, u64, u64)>> = BTreeMap::new();
    let mut restarts: Vec<(u64, u64)> = Vec::new();
    let restart_at = [total / 3, total * 2 / 3];
    let (mut next_sample, mut next_hup, mut next_dns) = (Duration::ZERO, HUP_EVERY, DNS_EVERY);
    let (mut loss_on, mut dns_extra, mut hups, mut dns_changes, mut flaps) = (false, false, 0u64, 0u64, 0u64);
    let mut lp_started_at = 0.0f64;
    println!(
        "{:>6}  {:>9} {:>9} {:>9}   {:>12} {:>12} {:>12}",
        "t", "ing1 fd", "ing2 fd", "lp fd", "ing1 rss kB", "ing2 rss kB", "lp rss kB"
    );
    while start.elapsed() < total {
        let now = start.elapsed();
        // systemd reads its notify socket all the time; so does its stand-in here (an unread
        // socket fills, and the proxy's STATUS= lines then fail: counted in its log, no stall).
        lp.store.poll()?;
        // wan1 flapping: LOSS_ON of loss at the start of every LOSS_PERIOD.
        let want_loss = now.as_millis() % LOSS_PERIOD.as_millis() < LOSS_ON.as_millis();
        if want_loss != loss_on {
            t.loss(Wan::Wan1, if want_loss { LOSS_PCT } else { 0 })?;
            loss_on = want_loss;
            flaps += u64::from(want_loss);
        }
        if now >= next_hup {
            for name in ["ingress1", "ingress2"] {
                t.proc_mut(name)?.signal("HUP")?;
            }
            hups += 1;
            next_hup += HUP_EVERY;
        }
        if now >= next_dns {
            dns_extra = !dns_extra;
            let mut addrs: Vec<IpAddr> = vec![addr::INGRESS2.into()];
            if dns_extra {
                addrs.push(INGRESS2_EXTRA.into());
            }
            dns.set("ingress-2", &addrs)?;
            dns_changes += 1;
            next_dns += DNS_EVERY;
        }
        if restarts.len() < restart_at.len() && now >= restart_at[restarts.len()] {
            let from = unix_ms();
            t.stop("local-proxy")?;
            lp.store.poll()?;
            lp.start(&mut t)?;
            restarts.push((from, unix_ms()));
            lp_started_at = start.elapsed().as_secs_f64();
            println!("        local-proxy restarted ({} ms down)", unix_ms() - from);
        }
        if now >= next_sample {
            let mut row = Vec::new();
            for name in PROCS {
                let pid = t.proc_mut(name)?.pid();
                let (fds, rss) = sample(pid).with_context(|| format!("sampling {name} (pid {pid})"))?;
                samples.entry(name).or_default().push((now.as_secs_f64(), fds, rss));
                row.push((fds, rss));
            }
            println!(
                "{:>5}s  {:>9} {:>9} {:>9}   {:>12} {:>12} {:>12}",
                now.as_secs(),
                row[0].0,
                row[1].0,
                row[2].0,
                row[0].1,
                row[1].1,
                row[2].1
            );
            next_sample += SAMPLE_EVERY;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    t.loss(Wan::Wan1, 0)?;
    let r = load.finish(&mut t)?;
    for name in PROCS {
        t.proc_mut(name)?.ensure_running().with_context(|| format!("{name} died during the soak"))?;
    }

    let failed: Vec<_> = r.records.iter().filter(|rec| !rec.ok).collect();
    // A connection started while the local proxy was down (or within 1 s after, while the
    // ingress health checks bring the paths back) is a restart casualty; the rest are not.
    let in_restart = |ms: u64| restarts.iter().any(|&(a, b)| ms + 1000 >= a && ms <= b + 1000);
    let (during, other): (Vec<&netns::loadgen::Record>, Vec<_>) =
        failed.iter().partition(|rec| in_restart(rec.start_ms));
    println!("\n== soak summary ({minutes} min)");
    println!(
        "connections: {} started, {} ok, {} failed ({} during the 2 local-proxy restarts, {} otherwise), {} slow (>500 ms)",
        r.summary.started,
        r.summary.ok,
        failed.len(),
        during.len(),
        other.len(),
        r.summary.slow
    );
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    for rec in &failed {
        *errors.entry(rec.error.clone().unwrap_or_default()).or_default() += 1;
    }
    for (e, n) in &errors {
        println!("  {n:>6} x {e}");
    }
    println!("events: {hups} SIGHUPs to each ingress, {flaps} loss bursts on wan1, {dns_changes} DNS answer changes, {} local-proxy restarts", restarts.len());
    println!(
        "{:<12} {:>10} {:>10} {:>14}   {:>12} {:>12} {:>16}",
        "process", "fd first", "fd last", "fd slope/h", "rss first kB", "rss last kB", "rss slope kB/h"
    );
    for name in PROCS {
        let s = &samples[name];
        // The local proxy restarted: judge its trend since its last start.
        let s: Vec<_> = if name == "local-proxy" {
            s.iter().filter(|p| p.0 >= lp_started_at).copied().collect()
        } else {
            s.clone()
        };
        let (Some(first), Some(last)) = (s.first(), s.last()) else { continue };
        let fd: Vec<(f64, f64)> = s.iter().map(|p| (p.0, p.1 as f64)).collect();
        let rss: Vec<(f64, f64)> = s.iter().map(|p| (p.0, p.2 as f64)).collect();
        let show = |v: Option<f64>| v.map(|v| format!("{v:+.1}")).unwrap_or_else(|| "n/a".into());
        println!(
            "{:<12} {:>10} {:>10} {:>14}   {:>12} {:>12} {:>16}",
            name,
            first.1,
            last.1,
            show(slope_per_hour(&fd)),
            first.2,
            last.2,
            show(slope_per_hour(&rss))
        );
    }
    let zero = |n: usize| if n == 0 { "zero".to_string() } else { n.to_string() };
    println!(
        "failed connects: {} ({} during the local-proxy restarts, {} otherwise)",
        zero(failed.len()),
        zero(during.len()),
        zero(other.len())
    );
    drop(dns);
    if !failed.is_empty() {
        // The goal is zero: a script or an operator running it sees a failure in the exit status.
        bail!("{} failed connects", failed.len());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::slope_per_hour;

    #[test]
    fn slope_of_a_line_and_of_a_flat_series() {
        let line: Vec<(f64, f64)> = (0..10).map(|i| (f64::from(i) * 10.0, 100.0 + f64::from(i))).collect();
        let s = slope_per_hour(&line).unwrap_or_default();
        assert!((s - 360.0).abs() < 1e-6, "{s}");
        let flat: Vec<(f64, f64)> = (0..10).map(|i| (f64::from(i), 5.0)).collect();
        assert_eq!(slope_per_hour(&flat), Some(0.0));
        assert_eq!(slope_per_hour(&flat[..2]), None);
    }
}
