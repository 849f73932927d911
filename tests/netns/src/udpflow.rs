//! UDP flows from the `client` namespace (binary `udpflow`): `flows` sockets, each with its own
//! source port and connected to one target (flow i to target i mod n), each sending a numbered
//! datagram every `interval` for a bounded `duration`, then waiting `drain` for late replies.
//! A connected socket only accepts replies from the address it sent to, so every reply counted
//! also proves the ingress answered from the right address. Each reply names the backend
//! address that answered (`udp-echo`), so the path that carried every datagram is known.
//! Output: one JSON summary on stdout; optionally one JSON line per datagram in a records file.
//! Also holds the types the tests use to read that output.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::unix_ms;

/// What to do.
#[derive(Debug, Clone)]
pub struct FlowConfig {
    pub targets: Vec<SocketAddr>,
    pub flows: usize,
    pub interval: Duration,
    pub duration: Duration,
    /// How long to wait for replies after the last datagram.
    pub drain: Duration,
    /// Stop sending once this file exists.
    pub stop_file: Option<PathBuf>,
    /// One JSON line per datagram.
    pub records: Option<PathBuf>,
}

impl Default for FlowConfig {
    fn default() -> Self {
        Self {
            targets: vec![],
            flows: 1,
            interval: Duration::from_millis(5),
            duration: Duration::from_secs(5),
            drain: Duration::from_millis(1000),
            stop_file: None,
            records: None,
        }
    }
}

const USAGE: &str = "usage: udpflow --target ADDR:PORT [--target ...] [--flows 1] [--interval-ms 5]
  [--duration-ms 5000] [--drain-ms 1000] [--stop-file PATH] [--records PATH]";

/// Most flows (one socket and two threads each).
pub const MAX_FLOWS: usize = 500;

impl FlowConfig {
    /// Parses the command line (without the program name).
    pub fn from_args(args: &[String]) -> Result<Self> {
        let mut c = Self::default();
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let mut value = || it.next().with_context(|| format!("{flag} needs a value\n{USAGE}"));
            let ms = |v: &String| -> Result<Duration> {
                Ok(Duration::from_millis(v.parse().with_context(|| format!("{flag}: `{v}` is not milliseconds"))?))
            };
            match flag.as_str() {
                "--target" => {
                    let v = value()?;
                    c.targets.push(v.parse().with_context(|| format!("--target: `{v}` is not ADDR:PORT"))?)
                }
                "--flows" => {
                    let v = value()?;
                    c.flows = v.parse().with_context(|| format!("--flows: `{v}`"))?
                }
                "--interval-ms" => c.interval = ms(value()?)?,
                "--duration-ms" => c.duration = ms(value()?)?,
                "--drain-ms" => c.drain = ms(value()?)?,
                "--stop-file" => c.stop_file = Some(value()?.into()),
                "--records" => c.records = Some(value()?.into()),
                "-h" | "--help" => bail!("{USAGE}"),
                other => bail!("unknown argument `{other}`\n{USAGE}"),
            }
        }
        if c.targets.is_empty() {
            bail!("no --target\n{USAGE}");
        }
        if c.flows == 0 || c.flows > MAX_FLOWS {
            bail!("--flows: 1..={MAX_FLOWS}");
        }
        if c.interval.is_zero() {
            bail!("--interval-ms must be > 0");
        }
        if c.duration > Duration::from_secs(3600) || c.drain > Duration::from_secs(60) {
            bail!("--duration-ms: at most one hour; --drain-ms: at most a minute");
        }
        Ok(c)
    }

    /// The command line that [`FlowConfig::from_args`] reads back.
    pub fn to_args(&self) -> Vec<String> {
        let mut a = Vec::new();
        for t in &self.targets {
            a.extend(["--target".into(), t.to_string()]);
        }
        let ms = |d: Duration| d.as_millis().to_string();
        a.extend(["--flows".into(), self.flows.to_string()]);
        a.extend(["--interval-ms".into(), ms(self.interval)]);
        a.extend(["--duration-ms".into(), ms(self.duration)]);
        a.extend(["--drain-ms".into(), ms(self.drain)]);
        if let Some(p) = &self.stop_file {
            a.extend(["--stop-file".into(), p.display().to_string()]);
        }
        if let Some(p) = &self.records {
            a.extend(["--records".into(), p.display().to_string()]);
        }
        a
    }

    /// The longest a run may take (duration, drain, slack for thread start-up).
    pub fn bound(&self) -> Duration {
        self.duration + self.drain + Duration::from_secs(10)
    }
}

/// One datagram, as written to the records file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Datagram {
    pub flow: usize,
    pub seq: u64,
    pub sent_ms: u64,
    /// When its reply came (none: lost).
    pub recv_ms: Option<u64>,
    /// The backend address the reply named.
    pub backend: Option<String>,
}

/// One flow, in the summary.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FlowSummary {
    pub flow: usize,
    /// The flow's source address (one port for its whole life).
    pub local: String,
    pub target: String,
    pub sent: u64,
    pub received: u64,
    pub lost: u64,
    /// Send or receive errors (ICMP unreachable surfaces as ECONNREFUSED).
    pub errors: u64,
    /// Replies per backend address.
    pub backends: BTreeMap<String, u64>,
    /// Per backend: send time of the first and of the last datagram it answered.
    pub first_ms: BTreeMap<String, u64>,
    pub last_ms: BTreeMap<String, u64>,
    /// Send times of the first and last unanswered datagram.
    pub lost_from_ms: Option<u64>,
    pub lost_to_ms: Option<u64>,
    /// Longest span without an answered datagram: from the last answered one before a run of
    /// losses to the first answered one after it (send times), in ms.
    pub max_gap_ms: u64,
}

/// The whole run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Summary {
    #[serde(rename = "type")]
    pub kind: String,
    pub start_ms: u64,
    pub end_ms: u64,
    pub flows: Vec<FlowSummary>,
}

impl Summary {
    pub fn sent(&self) -> u64 {
        self.flows.iter().map(|f| f.sent).sum()
    }
    pub fn received(&self) -> u64 {
        self.flows.iter().map(|f| f.received).sum()
    }
}

/// Reads a `udpflow` stdout: its summary, if it finished.
pub fn parse_output(stdout: &str) -> Option<Summary> {
    stdout.lines().filter(|l| l.contains("\"type\":\"summary\"")).find_map(|l| serde_json::from_str(l).ok())
}

/// Reads a records file.
pub fn parse_records(text: &str) -> Vec<Datagram> {
    text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

/// What one flow's receiver saw: per seq, (receive time, backend index).
#[derive(Default)]
struct Replies {
    got: BTreeMap<u64, (u64, usize)>,
    backends: Vec<String>,
}

/// Runs every flow; prints the summary to `out`.
pub fn run(cfg: &FlowConfig, out: &mut impl Write) -> Result<Summary> {
    let start_ms = unix_ms();
    let mut handles = Vec::new();
    for flow in 0..cfg.flows {
        let target = cfg.targets[flow % cfg.targets.len()];
        let bind: SocketAddr =
            if target.is_ipv4() { (Ipv4Addr::UNSPECIFIED, 0).into() } else { (Ipv6Addr::UNSPECIFIED, 0).into() };
        let sock = UdpSocket::bind(bind).with_context(|| format!("flow {flow}: bind"))?;
        sock.connect(target).with_context(|| format!("flow {flow}: connect {target}"))?;
        let cfg = cfg.clone();
        handles.push(std::thread::spawn(move || one_flow(&cfg, flow, sock)));
    }
    let mut summary = Summary { kind: "summary".into(), start_ms, ..Default::default() };
    let mut records = match &cfg.records {
        Some(p) => Some(BufWriter::new(File::create(p).with_context(|| format!("creating {}", p.display()))?)),
        None => None,
    };
    for h in handles {
        let (fs, datagrams) = h.join().map_err(|_| anyhow::anyhow!("a flow thread panicked"))??;
        if let Some(w) = records.as_mut() {
            for d in &datagrams {
                serde_json::to_writer(&mut *w, d)?;
                w.write_all(b"\n")?;
            }
        }
        summary.flows.push(fs);
    }
    if let Some(mut w) = records {
        w.flush()?;
    }
    summary.end_ms = unix_ms();
    writeln!(out, "{}", serde_json::to_string(&summary)?)?;
    Ok(summary)
}

fn one_flow(cfg: &FlowConfig, flow: usize, sock: UdpSocket) -> Result<(FlowSummary, Vec<Datagram>)> {
    let local = sock.local_addr()?.to_string();
    let target = sock.peer_addr()?.to_string();
    sock.set_read_timeout(Some(Duration::from_millis(20)))?;
    let replies = Arc::new(Mutex::new(Replies::default()));
    let errors = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let receiver = {
        let (sock, replies, errors, done) = (sock.try_clone()?, replies.clone(), errors.clone(), done.clone());
        std::thread::spawn(move || receive(&sock, flow, &replies, &errors, &done))
    };
    let start = Instant::now();
    let mut sent_ms = Vec::new();
    let mut seq = 0u64;
    while start.elapsed() < cfg.duration && !cfg.stop_file.as_ref().is_some_and(|p| p.exists()) {
        let due = cfg.interval * seq as u32;
        if let Some(wait) = due.checked_sub(start.elapsed()) {
            std::thread::sleep(wait);
        }
        sent_ms.push(unix_ms());
        if sock.send(format!("lbtu {flow} {seq}\n").as_bytes()).is_err() {
            errors.fetch_add(1, Ordering::Relaxed);
        }
        seq += 1;
    }
    std::thread::sleep(cfg.drain);
    done.store(true, Ordering::Relaxed);
    let _ = receiver.join();
    let r = replies.lock().map_err(|_| anyhow::anyhow!("receiver panicked"))?;
    let mut s =
        FlowSummary { flow, local, target, sent: seq, errors: errors.load(Ordering::Relaxed), ..Default::default() };
    let mut datagrams = Vec::with_capacity(sent_ms.len());
    let mut last_ok: Option<u64> = None;
    let mut in_gap = false;
    for (i, &sent) in sent_ms.iter().enumerate() {
        let got = r.got.get(&(i as u64));
        let backend = got.map(|(_, b)| r.backends[*b].clone());
        match &backend {
            Some(b) => {
                s.received += 1;
                *s.backends.entry(b.clone()).or_default() += 1;
                s.first_ms.entry(b.clone()).or_insert(sent);
                s.last_ms.insert(b.clone(), sent);
                if in_gap {
                    let from = last_ok.unwrap_or(sent_ms[0]);
                    s.max_gap_ms = s.max_gap_ms.max(sent - from);
                    in_gap = false;
                }
                last_ok = Some(sent);
            }
            None => {
                s.lost += 1;
                s.lost_from_ms.get_or_insert(sent);
                s.lost_to_ms = Some(sent);
                in_gap = true;
            }
        }
        datagrams.push(Datagram { flow, seq: i as u64, sent_ms: sent, recv_ms: got.map(|(t, _)| *t), backend });
    }
    if in_gap {
        // Lost to the end: the gap runs to the last datagram sent.
        let from = last_ok.unwrap_or(sent_ms[0]);
        s.max_gap_ms = s.max_gap_ms.max(sent_ms.last().copied().unwrap_or(from) - from);
    }
    Ok((s, datagrams))
}

fn receive(sock: &UdpSocket, flow: usize, replies: &Mutex<Replies>, errors: &AtomicU64, done: &AtomicBool) {
    let mut buf = vec![0u8; 65_536];
    let prefix = format!("lbtu {flow} ");
    while !done.load(Ordering::Relaxed) {
        let n = match sock.recv(&mut buf) {
            Ok(n) => n,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => continue,
            Err(_) => {
                errors.fetch_add(1, Ordering::Relaxed);
                continue;
            }
        };
        let now = unix_ms();
        let text = String::from_utf8_lossy(&buf[..n]);
        let Some((backend, rest)) = text.split_once('\n') else { continue };
        let Some(seq) = rest.trim_end().strip_prefix(&prefix).and_then(|s| s.parse::<u64>().ok()) else {
            continue;
        };
        let Ok(mut r) = replies.lock() else { return };
        let idx = match r.backends.iter().position(|b| b == backend) {
            Some(i) => i,
            None => {
                r.backends.push(backend.to_string());
                r.backends.len() - 1
            }
        };
        r.got.entry(seq).or_insert((now, idx));
    }
}
