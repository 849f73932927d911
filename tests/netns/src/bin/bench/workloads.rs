//! The workloads, each bounded in time: TCP bulk (iperf3, 1 and 4 streams), small HTTP
//! requests (wrk, keep-alive and a new connection per request), UDP at a fixed offered rate
//! (iperf3 -u), failover under 400 new connections per second, and idle-connection memory.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use netns::loadgen::{LoadConfig, Record};
use netns::topology::{addr, Cut, Role, Topology, Wan};
use serde_json::Value;

use crate::candidates::{self, Candidate, HTTP_PORT, IPERF_PORT, IPERF_UDP_PORT};

pub const SECS: u64 = 5;

fn iperf(t: &Topology, c: Candidate, port: u16, extra: &[&str]) -> Result<Value> {
    let ip = c.target_ip().to_string();
    let secs = SECS.to_string();
    let port = port.to_string();
    let mut argv = vec!["iperf3", "-c", &ip, "-p", &port, "-t", &secs, "-J", "--connect-timeout", "3000"];
    argv.extend_from_slice(extra);
    let out = t.exec(Role::Client, &argv, Duration::from_secs(SECS + 20))?;
    let v: Value = serde_json::from_str(&out).context("iperf3 JSON")?;
    if let Some(e) = v.get("error") {
        bail!("iperf3: {e}");
    }
    Ok(v)
}

/// iperf3 now and then never ends a UDP test through a proxy (its client waits for a result
/// exchange that does not come: 2 of ~30 runs on 2026-12-04, ingress and nginx alike), and a
/// 30-minute bench should not die of it. Such a run, killed at its bound, is measured again,
/// at most twice, with a line saying so; any other failure stops the bench as before.
fn again_if_hung<T>(what: &str, mut run: impl FnMut() -> Result<T>) -> Result<T> {
    let mut attempt = 1;
    loop {
        match run() {
            Err(e) if attempt < 3 && format!("{e:#}").contains("timed out after") => {
                eprintln!("  {what}: iperf3 did not end ({e:#}); measured again");
                attempt += 1;
            }
            r => return r,
        }
    }
}

/// Gbit/s received, TCP, `streams` parallel streams.
pub fn tcp_bulk(t: &Topology, c: Candidate, streams: u32) -> Result<f64> {
    let p = streams.to_string();
    let v = again_if_hung("TCP bulk", || iperf(t, c, IPERF_PORT, &["-P", &p]))?;
    let bps = v["end"]["sum_received"]["bits_per_second"].as_f64().context("no sum_received")?;
    Ok(bps / 1e9)
}

/// UDP figures of one run.
#[derive(Debug, Clone, Copy)]
pub struct Udp {
    /// Delivered to the receiving iperf3 (home's; the client's with `reverse`).
    pub mbps: f64,
    /// Lost end to end, as iperf3 counts it.
    pub loss_pct: f64,
    /// Dropped by ingress1's kernel (its UDP sockets' receive or send buffers were full: the
    /// proxy did not keep up), in % of the datagrams sent. 0 for `direct` (ingress1 forwards).
    pub proxy_drop_pct: f64,
    /// Dropped in the receiver's namespace: home's iperf3 socket (the client's with
    /// `reverse`) did not keep up, in %.
    pub receiver_drop_pct: f64,
    /// Dropped by home's kernel, whichever socket (through the local proxy: its sockets'
    /// and, on the way in, home's iperf3's), in %.
    pub home_drop_pct: f64,
}

/// The `Udp:` counters of a namespace's kernel, by name (`/proc/net/snmp`).
fn udp_counters(t: &Topology, role: Role) -> Result<BTreeMap<String, u64>> {
    let snmp = t.exec(role, &["cat", "/proc/net/snmp"], Duration::from_secs(5))?;
    let mut rows = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(names), Some(values)) = (rows.next(), rows.next()) else { bail!("no Udp rows in /proc/net/snmp") };
    Ok(names
        .split_whitespace()
        .zip(values.split_whitespace())
        .skip(1)
        .filter_map(|(n, v)| Some((n.to_owned(), v.parse().ok()?)))
        .collect())
}

/// 1200-byte datagrams offered at `rate`, with where the lost ones were dropped: iperf3's
/// loss alone mixes the proxy's drops with the receiver's (a run in which the ingress's
/// kernel dropped none had 4.4 % loss, all at home's iperf3 socket, as direct's 4.5 %).
/// `window`: the sockets' buffer size iperf3 asks for at both ends (`-w`), None: the
/// kernel's default (212,992 bytes here, ~170 datagrams). `reverse`: home sends to the
/// client (iperf3 `-R`), so the datagrams take the proxy's reply path (a TURN relay's media
/// towards the client, a download).
pub fn udp(t: &Topology, c: Candidate, rate: &str, window: Option<&str>, reverse: bool) -> Result<Udp> {
    again_if_hung("UDP", || udp_once(t, c, IPERF_UDP_PORT, rate, window, reverse))
}

/// The same through the ingress and then home's local proxy (its UDP stream in front of
/// home's iperf3; the ingress sends PROXY v2 headers, as deployed).
pub fn udp_via_local_proxy(t: &Topology, rate: &str, window: Option<&str>, reverse: bool) -> Result<Udp> {
    again_if_hung("UDP", || udp_once(t, Candidate::Ingress, candidates::LP_PORT, rate, window, reverse))
}

fn udp_once(t: &Topology, c: Candidate, port: u16, rate: &str, window: Option<&str>, reverse: bool) -> Result<Udp> {
    let receiver = if reverse { Role::Client } else { Role::Home };
    let roles = [Role::Ingress1, receiver, Role::Home];
    let counters = || roles.iter().map(|r| udp_counters(t, *r)).collect::<Result<Vec<_>>>();
    let before = counters()?;
    let mut args = vec!["-u", "-b", rate, "-l", "1200"];
    if let Some(w) = window {
        args.extend(["-w", w]);
    }
    if reverse {
        args.push("-R");
    }
    let v = iperf(t, c, port, &args)?;
    let after = counters()?;
    let delta = |i: usize, k: &str| after[i].get(k).unwrap_or(&0).saturating_sub(*before[i].get(k).unwrap_or(&0));
    let sum = &v["end"]["sum"];
    let lost = sum["lost_percent"].as_f64().context("no lost_percent")?;
    let sent = sum["bits_per_second"].as_f64().context("no bits_per_second")?;
    let packets = sum["packets"].as_f64().context("no packets")?.max(1.0);
    let pct = |n: u64| n as f64 * 100.0 / packets;
    Ok(Udp {
        mbps: sent * (1.0 - lost / 100.0) / 1e6,
        loss_pct: lost,
        proxy_drop_pct: pct(delta(0, "InErrors") + delta(0, "SndbufErrors")),
        receiver_drop_pct: pct(delta(1, "InErrors")),
        home_drop_pct: pct(delta(2, "InErrors") + delta(2, "SndbufErrors")),
    })
}

/// wrk figures.
#[derive(Debug, Clone, Copy)]
pub struct Http {
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub errors: u64,
}

pub fn http(t: &Topology, c: Candidate, new_conn: bool) -> Result<Http> {
    let url = candidates::url(c, HTTP_PORT);
    let d = format!("{SECS}s");
    let mut argv = vec!["wrk", "-t", "2", "-c", "32", "-d", &d, "--latency", "--timeout", "2s"];
    if new_conn {
        argv.extend(["-H", "Connection: close"]);
    }
    argv.push(&url);
    let out = t.exec(Role::Client, &argv, Duration::from_secs(SECS + 20))?;
    let num = |line: &str| -> Option<f64> {
        let v = line.split_whitespace().nth(1)?;
        let (n, unit) = v.find(|ch: char| ch.is_alphabetic()).map(|i| v.split_at(i)).unwrap_or((v, ""));
        let n: f64 = n.parse().ok()?;
        Some(match unit {
            "us" => n / 1000.0,
            "ms" => n,
            "s" => n * 1000.0,
            "m" => n * 60_000.0,
            _ => n,
        })
    };
    let find = |prefix: &str| out.lines().map(str::trim).find(|l| l.starts_with(prefix));
    let rps = find("Requests/sec:").and_then(num).context("wrk: no Requests/sec")?;
    let p50_ms = find("50%").and_then(num).context("wrk: no p50")?;
    let p99_ms = find("99%").and_then(num).context("wrk: no p99")?;
    let errors = wrk_errors(&out)?;
    Ok(Http { rps, p50_ms, p99_ms, errors })
}

/// The errors wrk counted: "Socket errors: connect A, read B, write C, timeout D" and
/// "Non-2xx or 3xx responses: N" (each printed only when not zero), both summed. Read field by
/// field: the digits of "2xx" and "3xx" are not counts.
fn wrk_errors(out: &str) -> Result<u64> {
    let mut errors = 0;
    for line in out.lines().map(str::trim) {
        let counts: Vec<&str> = if let Some(fields) = line.strip_prefix("Socket errors:") {
            // "connect 0", "read 12", ...: the number after each name.
            fields.split(',').map(|f| f.split_whitespace().nth(1).unwrap_or("")).collect()
        } else if let Some(n) = line.strip_prefix("Non-2xx or 3xx responses:") {
            vec![n.trim()]
        } else {
            continue;
        };
        for n in counts {
            errors += n.parse::<u64>().with_context(|| format!("wrk: a count in {line:?}"))?;
        }
    }
    Ok(errors)
}

/// Failover figures (ms are from the fault's injection).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Failover {
    pub requests: u64,
    pub failed: u64,
    /// Succeeded but took over 200 ms.
    pub slow: u64,
    pub failed_per_phase: [u64; 4],
    /// Failures whose connect itself failed (what a proxy should hide); the rest broke in
    /// flight when the path died under an established connection.
    pub failed_connects: u64,
    /// wan1 cut → start of the last request that was slow or failed in that phase: how long
    /// the dead path kept hurting clients (0: none was).
    pub hurt_after_wan1_ms: u64,
    /// The same after the wan2 cut (until traffic flows cleanly over the mesh).
    pub hurt_after_wan2_ms: u64,
    pub slow_per_phase: [u64; 4],
    /// wan1 cut → last request started on wan1.
    pub detect_wan1_ms: Option<u64>,
    /// wan2 cut → last request started off the mesh.
    pub all_on_mesh_ms: Option<u64>,
    /// restore → both WANs have served a request again.
    pub restore_ms: Option<u64>,
    /// Per 250 ms bucket from the start: (wan1, wan2, mesh, failed).
    pub timeline: Vec<[u64; 4]>,
}

pub const CUT1_AT: u64 = 3_000;
pub const CUT2_AT: u64 = 9_000;
pub const RESTORE_AT: u64 = 15_000;
pub const END_AT: u64 = 20_000;

/// 400 new connections per second (two clients, 5 ms apart each) to the echo service; wan1
/// cut at 3 s, wan2 at 9 s, both restored at 15 s.
pub fn failover(t: &mut Topology, c: Candidate, how: Cut, tag: &str) -> Result<Failover> {
    let target = SocketAddr::new(c.target_ip(), addr::ECHO_PORT);
    let cfg = LoadConfig {
        targets: vec![target],
        interval: Duration::from_millis(5),
        duration: Duration::from_millis(END_AT),
        connect_timeout: Duration::from_secs(3),
        io_timeout: Duration::from_secs(5),
        slow: Duration::from_millis(200),
        rotate: false,
        ..Default::default()
    };
    let start_ms = netns::unix_ms();
    let runs = [
        t.start_load(Role::Client, &format!("fo-{tag}-a"), cfg.clone())?,
        t.start_load(Role::Client, &format!("fo-{tag}-b"), cfg)?,
    ];
    let started = Instant::now();
    let at = |ms: u64| {
        let due = Duration::from_millis(ms);
        if let Some(wait) = due.checked_sub(started.elapsed()) {
            std::thread::sleep(wait);
        }
        netns::unix_ms()
    };
    let mut times = [0u64; 3];
    let result: Result<()> = (|| {
        times[0] = at(CUT1_AT);
        t.cut(Wan::Wan1, how)?;
        times[1] = at(CUT2_AT);
        t.cut(Wan::Wan2, how)?;
        times[2] = at(RESTORE_AT);
        t.restore(Wan::Wan1, how)?;
        t.restore(Wan::Wan2, how)?;
        Ok(())
    })();
    if result.is_err() {
        // Never leave a WAN cut for the next candidate.
        let _ = t.restore(Wan::Wan1, how);
        let _ = t.restore(Wan::Wan2, how);
    }
    result?;
    let mut records: Vec<Record> = Vec::new();
    for r in runs {
        records.extend(r.finish(t)?.records);
    }
    let path = |r: &Record| r.backend.as_deref().map(|b| t.path_of(b)).unwrap_or("none");
    let phase = |ms: u64| match ms {
        m if m < times[0] => 0,
        m if m < times[1] => 1,
        m if m < times[2] => 2,
        _ => 3,
    };
    let mut f = Failover { requests: records.len() as u64, ..Default::default() };
    let buckets = (END_AT / 250 + 8) as usize;
    f.timeline = vec![[0; 4]; buckets];
    for r in &records {
        let p = phase(r.start_ms);
        let b = (r.start_ms.saturating_sub(start_ms) / 250) as usize;
        let hurt = !r.ok || r.latency_ms > 200.0;
        if hurt && (p == 1 || p == 2) {
            let since = r.start_ms.saturating_sub(times[p - 1]);
            let slot = if p == 1 { &mut f.hurt_after_wan1_ms } else { &mut f.hurt_after_wan2_ms };
            *slot = (*slot).max(since);
        }
        if !r.ok {
            f.failed += 1;
            f.failed_per_phase[p] += 1;
            if r.error.as_deref().unwrap_or("").starts_with("connect") {
                f.failed_connects += 1;
            }
            if let Some(x) = f.timeline.get_mut(b) {
                x[3] += 1;
            }
            continue;
        }
        if r.latency_ms > 200.0 {
            f.slow += 1;
            f.slow_per_phase[p] += 1;
        }
        let i = match path(r) {
            "wan1" => 0,
            "wan2" => 1,
            _ => 2,
        };
        if let Some(x) = f.timeline.get_mut(b) {
            x[i] += 1;
        }
    }
    let last_on = |pred: &dyn Fn(&str) -> bool, from: u64, to: u64| {
        records
            .iter()
            .filter(|r| r.ok && r.start_ms >= from && r.start_ms < to && pred(path(r)))
            .map(|r| r.start_ms)
            .max()
    };
    f.detect_wan1_ms = last_on(&|p| p == "wan1", times[0], times[1]).map(|m| m - times[0]).or(Some(0));
    f.all_on_mesh_ms = last_on(&|p| p != "mesh", times[1], times[2]).map(|m| m - times[1]).or(Some(0));
    let first_on =
        |p: &str| records.iter().filter(|r| r.ok && r.start_ms >= times[2] && path(r) == p).map(|r| r.start_ms).min();
    f.restore_ms = match (first_on("wan1"), first_on("wan2")) {
        (Some(a), Some(b)) => Some(a.max(b) - times[2]),
        _ => None,
    };
    Ok(f)
}

/// Memory per idle connection: what the candidate grew by with `count` idle connections
/// opened through it, and how many it held.
pub struct Idle {
    /// Pss growth (kB) of the candidate's processes.
    pub kb: u64,
    /// Connections the client opened.
    pub opened: u64,
    /// Client connections established at the candidate when measured. A proxy out of
    /// connection slots closes the extras while the client, which never reads, still counts
    /// them open: the growth is theirs to share only if held.
    pub held: u64,
}

impl Idle {
    pub fn kb_per_conn(&self) -> f64 {
        self.kb as f64 / self.opened.min(self.held).max(1) as f64
    }
}

/// The candidate's memory growth with `count` idle connections open through it.
pub fn idle_rss(t: &mut Topology, c: Candidate, proc_name: &str, holder_bin: &str, count: usize) -> Result<Idle> {
    let before = candidates::pss_kb(t, proc_name)?;
    let name = format!("idle-{}-{count}", c.name());
    let target = SocketAddr::new(c.target_ip(), HTTP_PORT).to_string();
    let argv: Vec<String> = vec![
        holder_bin.into(),
        "--target".into(),
        target,
        "--count".into(),
        count.to_string(),
        "--hold-ms".into(),
        "90000".into(),
    ];
    t.spawn(Role::Client, &name, &argv)?;
    let deadline = Instant::now() + Duration::from_secs(80);
    let opened = loop {
        let out = t.proc_mut(&name)?.stdout();
        if let Some(line) = out.lines().find(|l| l.starts_with("ready")) {
            break line.split_whitespace().nth(1).and_then(|n| n.parse::<u64>().ok()).unwrap_or(0);
        }
        if Instant::now() > deadline {
            bail!("idle-holder never got ready");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // Let the proxy finish its upstream connects (and close what it cannot hold).
    std::thread::sleep(Duration::from_millis(1500));
    let with = candidates::pss_kb(t, proc_name)?;
    let held = held_connections(t)?;
    t.stop(&name)?;
    Ok(Idle { kb: with.saturating_sub(before), opened, held })
}

/// Established connections to the candidate's HTTP port in ingress1: the clients' side, one per
/// session it holds. (Its upstream connections have ephemeral local ports, which the kernel
/// does not hand out while a listener owns the port.) Those still in its listeners' accept
/// queues (their Recv-Q) are the kernel's, not held: a candidate at its limit stops accepting.
fn held_connections(t: &Topology) -> Result<u64> {
    let sport = format!("( sport = :{HTTP_PORT} )");
    let limit = Duration::from_secs(10);
    let out = t.exec(Role::Ingress1, &["ss", "-Htn", "state", "established", &sport], limit)?;
    let established = out.lines().filter(|l| !l.trim().is_empty()).count() as u64;
    let listening = t.exec(Role::Ingress1, &["ss", "-Hltn", &sport], limit)?;
    let mut queued = 0u64;
    for line in listening.lines().filter(|l| !l.trim().is_empty()) {
        // State, Recv-Q (the accept queue of a listener), Send-Q, local, peer.
        let field = line.split_whitespace().nth(1).unwrap_or_default();
        queued += field.parse::<u64>().with_context(|| format!("ss: no accept queue in {line:?}"))?;
    }
    Ok(established.saturating_sub(queued))
}

/// Median and spread of repeated figures. With an even count the median is the mean of the
/// two middle figures (taking either one alone favours one end: with two runs, the better or
/// the worse run by the metric's direction).
pub fn median(v: &[f64]) -> Option<(f64, f64, f64)> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    let mid = if n % 2 == 1 { s[n / 2] } else { (s[n / 2 - 1] + s[n / 2]) / 2.0 };
    Some((mid, s[0], s[n - 1]))
}

pub type Figures = BTreeMap<String, Vec<f64>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_an_even_count_is_the_mean_of_the_middle_two() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0]), Some((3.0, 3.0, 3.0)));
        assert_eq!(median(&[4.0, 2.0]), Some((3.0, 2.0, 4.0)));
        assert_eq!(median(&[5.0, 1.0, 3.0]), Some((3.0, 1.0, 5.0)));
        assert_eq!(median(&[8.0, 1.0, 2.0, 4.0]), Some((3.0, 1.0, 8.0)));
    }

    #[test]
    fn wrk_errors_sum_socket_errors_and_non_2xx_responses() {
        let out = "Running 5s test @ http://192.0.2.11:8081/\n\
                   \x20 Socket errors: connect 1, read 12, write 0, timeout 3\n\
                   \x20 Non-2xx or 3xx responses: 40\n\
                   Requests/sec:  12345.67\n";
        assert_eq!(wrk_errors(out).ok(), Some(56));
        assert_eq!(wrk_errors("Requests/sec:  12345.67\n").ok(), Some(0));
        assert!(wrk_errors("  Socket errors: connect x, read 1, write 0, timeout 0\n").is_err());
    }
}
