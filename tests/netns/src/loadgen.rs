//! The load generator run inside the `client` namespace (binary `loadgen`): a new TCP connection
//! to the targets every `interval` for a bounded `duration`; each sends a line and expects the
//! backend's reply (`<backend addr>\n` then the echo). Every connection is counted: ok, failed
//! (with its error), slow; nothing is hidden. Output: one JSON line per second (`type: tick`),
//! then one `type: summary`; optionally one JSON line per connection in a records file.
//! Also holds the types the tests use to read that output.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::unix_ms;

/// What to do.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// Where to connect; with `fallback`, tried in order (rotated by `rotate`) until one connects.
    pub targets: Vec<SocketAddr>,
    pub interval: Duration,
    pub duration: Duration,
    pub connect_timeout: Duration,
    /// Timeout of each read and write.
    pub io_timeout: Duration,
    /// A connection slower than this (connect to echo) is counted `slow` (still ok).
    pub slow: Duration,
    /// Keep each connection open this long (or until `stop_file` appears), exchanging a line
    /// every `hold_every`.
    pub hold: Duration,
    pub hold_every: Duration,
    /// On a failed connect, try the next target (as a client with several DNS answers does).
    pub fallback: bool,
    /// Start each connection at the next target in turn (spreads over all ingress nodes).
    pub rotate: bool,
    /// Connections open at once; above it a start is skipped and counted `skipped`.
    pub max_inflight: usize,
    /// Stop starting connections once this file exists.
    pub stop_file: Option<PathBuf>,
    /// Write one JSON line per connection here.
    pub records: Option<PathBuf>,
}

impl Default for LoadConfig {
    fn default() -> Self {
        Self {
            targets: vec![],
            interval: Duration::from_millis(10),
            duration: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(3),
            io_timeout: Duration::from_secs(3),
            slow: Duration::from_millis(500),
            hold: Duration::ZERO,
            hold_every: Duration::from_millis(100),
            fallback: false,
            rotate: true,
            max_inflight: 1000,
            stop_file: None,
            records: None,
        }
    }
}

const USAGE: &str = "usage: loadgen --target ADDR:PORT [--target ...] [--interval-ms 10] [--duration-ms 5000]
  [--connect-timeout-ms 3000] [--io-timeout-ms 3000] [--slow-ms 500] [--hold-ms 0] [--hold-every-ms 100]
  [--fallback] [--no-rotate] [--max-inflight 1000] [--stop-file PATH] [--records PATH]";

impl LoadConfig {
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
                "--interval-ms" => c.interval = ms(value()?)?,
                "--duration-ms" => c.duration = ms(value()?)?,
                "--connect-timeout-ms" => c.connect_timeout = ms(value()?)?,
                "--io-timeout-ms" => c.io_timeout = ms(value()?)?,
                "--slow-ms" => c.slow = ms(value()?)?,
                "--hold-ms" => c.hold = ms(value()?)?,
                "--hold-every-ms" => c.hold_every = ms(value()?)?,
                "--fallback" => c.fallback = true,
                "--no-rotate" => c.rotate = false,
                "--max-inflight" => {
                    let v = value()?;
                    c.max_inflight = v.parse().with_context(|| format!("--max-inflight: `{v}`"))?
                }
                "--stop-file" => c.stop_file = Some(value()?.into()),
                "--records" => c.records = Some(value()?.into()),
                "-h" | "--help" => bail!("{USAGE}"),
                other => bail!("unknown argument `{other}`\n{USAGE}"),
            }
        }
        if c.targets.is_empty() {
            bail!("no --target\n{USAGE}");
        }
        if c.interval.is_zero() || c.hold_every.is_zero() {
            bail!("--interval-ms and --hold-every-ms must be > 0");
        }
        if c.duration > Duration::from_secs(3600) {
            bail!("--duration-ms: at most one hour");
        }
        Ok(c)
    }

    /// The command line that [`LoadConfig::from_args`] reads back.
    pub fn to_args(&self) -> Vec<String> {
        let mut a = Vec::new();
        for t in &self.targets {
            a.extend(["--target".into(), t.to_string()]);
        }
        let ms = |d: Duration| d.as_millis().to_string();
        a.extend(["--interval-ms".into(), ms(self.interval)]);
        a.extend(["--duration-ms".into(), ms(self.duration)]);
        a.extend(["--connect-timeout-ms".into(), ms(self.connect_timeout)]);
        a.extend(["--io-timeout-ms".into(), ms(self.io_timeout)]);
        a.extend(["--slow-ms".into(), ms(self.slow)]);
        a.extend(["--hold-ms".into(), ms(self.hold)]);
        a.extend(["--hold-every-ms".into(), ms(self.hold_every)]);
        if self.fallback {
            a.push("--fallback".into());
        }
        if !self.rotate {
            a.push("--no-rotate".into());
        }
        a.extend(["--max-inflight".into(), self.max_inflight.to_string()]);
        if let Some(p) = &self.stop_file {
            a.extend(["--stop-file".into(), p.display().to_string()]);
        }
        if let Some(p) = &self.records {
            a.extend(["--records".into(), p.display().to_string()]);
        }
        a
    }
}

/// One connection, as written to the records file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub seq: u64,
    pub start_ms: u64,
    pub end_ms: u64,
    /// The target that accepted the connection (none if every connect failed).
    pub target: Option<String>,
    /// The backend address the reply named.
    pub backend: Option<String>,
    /// The client's own address on the connection that reached the target: the `client=`
    /// of that connection in the ingress's logs.
    #[serde(default)]
    pub local: Option<String>,
    pub ok: bool,
    pub error: Option<String>,
    /// Connected to another target than the first one tried.
    pub fallback: bool,
    /// Connect to echo, in milliseconds.
    pub latency_ms: f64,
    /// The client's TCP connect to the target (the first part of `latency_ms`), in
    /// milliseconds: a SYN dropped before the proxy (its listen queue full, a starved CPU)
    /// shows here, a slow path behind the proxy in the rest.
    #[serde(default)]
    pub connect_ms: f64,
}

/// One second of completed connections.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Tick {
    #[serde(rename = "type")]
    pub kind: String,
    pub sec: u64,
    pub unix_ms: u64,
    pub started: u64,
    pub ok: u64,
    pub failed: u64,
    pub slow: u64,
    pub fallback: u64,
    pub skipped: u64,
    pub inflight: u64,
    pub backends: BTreeMap<String, u64>,
    pub errors: BTreeMap<String, u64>,
}

/// A failed connection, in the summary.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Failure {
    pub start_ms: u64,
    pub end_ms: u64,
    pub target: Option<String>,
    pub error: String,
}

/// The whole run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Summary {
    #[serde(rename = "type")]
    pub kind: String,
    pub start_ms: u64,
    pub end_ms: u64,
    pub started: u64,
    pub ok: u64,
    pub failed: u64,
    pub slow: u64,
    pub fallback: u64,
    pub skipped: u64,
    pub backends: BTreeMap<String, u64>,
    /// Per backend: start time of the first and of the last ok connection it answered.
    pub first_ms: BTreeMap<String, u64>,
    pub last_ms: BTreeMap<String, u64>,
    /// The first 200 failures.
    pub failures: Vec<Failure>,
    pub latency_ms: BTreeMap<String, f64>,
}

/// Reads a loadgen stdout: its ticks and its summary (if it finished).
pub fn parse_output(stdout: &str) -> (Vec<Tick>, Option<Summary>) {
    let mut ticks = Vec::new();
    let mut summary = None;
    for line in stdout.lines() {
        if line.contains("\"type\":\"tick\"") {
            if let Ok(t) = serde_json::from_str(line) {
                ticks.push(t);
            }
        } else if line.contains("\"type\":\"summary\"") {
            summary = serde_json::from_str(line).ok();
        }
    }
    (ticks, summary)
}

/// Reads a records file.
pub fn parse_records(text: &str) -> Vec<Record> {
    text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

/// One connection's outcome (see [`Record`]).
struct Outcome {
    target: Option<SocketAddr>,
    local: Option<SocketAddr>,
    backend: Option<String>,
    fell_back: bool,
    connected: Duration,
    result: Result<()>,
}

/// Runs one connection.
fn one(cfg: &LoadConfig, seq: u64, first: usize) -> Outcome {
    let t0 = Instant::now();
    let n = cfg.targets.len();
    let order: Vec<SocketAddr> = if cfg.fallback {
        (0..n).map(|i| cfg.targets[(first + i) % n]).collect()
    } else {
        vec![cfg.targets[first % n]]
    };
    let mut errors = Vec::new();
    let mut stream = None;
    for (i, addr) in order.iter().enumerate() {
        match TcpStream::connect_timeout(addr, cfg.connect_timeout) {
            Ok(s) => {
                stream = Some((i, *addr, s));
                break;
            }
            Err(e) => errors.push(format!("connect {addr}: {}", short_err(&e))),
        }
    }
    let connected = t0.elapsed();
    let Some((i, addr, s)) = stream else {
        let result = Err(anyhow::anyhow!(errors.join("; ")));
        return Outcome { target: None, local: None, backend: None, fell_back: false, connected, result };
    };
    let local = s.local_addr().ok();
    let mut backend = None;
    let result = converse(cfg, seq, s, &mut backend);
    Outcome { target: Some(addr), local, backend, fell_back: i > 0, connected, result }
}

fn short_err(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => "refused".into(),
        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => "timeout".into(),
        std::io::ErrorKind::ConnectionReset => "reset".into(),
        std::io::ErrorKind::UnexpectedEof => "eof".into(),
        _ => e.to_string(),
    }
}

fn converse(cfg: &LoadConfig, seq: u64, s: TcpStream, backend: &mut Option<String>) -> Result<()> {
    s.set_read_timeout(Some(cfg.io_timeout))?;
    s.set_write_timeout(Some(cfg.io_timeout))?;
    s.set_nodelay(true)?;
    let mut w = s.try_clone()?;
    let mut r = BufReader::new(s);
    let mut exchange = |line: &str, expect_banner: bool, backend: &mut Option<String>| -> Result<()> {
        w.write_all(line.as_bytes()).map_err(|e| anyhow::anyhow!("write: {}", short_err(&e)))?;
        if expect_banner {
            let b = read_line(&mut r).context("read banner")?;
            *backend = Some(b);
        }
        let echo = read_line(&mut r).context("read echo")?;
        if echo != line.trim_end() {
            bail!("bad echo: sent {:?} got {echo:?}", line.trim_end());
        }
        Ok(())
    };
    exchange(&format!("lbt {seq}\n"), true, backend)?;
    if !cfg.hold.is_zero() {
        let start = Instant::now();
        let mut k = 0u64;
        while start.elapsed() < cfg.hold && !cfg.stop_file.as_ref().is_some_and(|p| p.exists()) {
            std::thread::sleep(cfg.hold_every.min(cfg.hold.saturating_sub(start.elapsed())));
            k += 1;
            exchange(&format!("lbt {seq} {k}\n"), false, backend)
                .with_context(|| format!("held connection broke after {} ms", start.elapsed().as_millis()))?;
        }
    }
    Ok(())
}

fn read_line(r: &mut BufReader<TcpStream>) -> Result<String> {
    let mut line = String::new();
    match r.read_line(&mut line) {
        Ok(0) => bail!("eof"),
        Ok(_) => Ok(line.trim_end().to_string()),
        Err(e) => bail!("{}", short_err(&e)),
    }
}

/// Runs the load described by `cfg`, printing ticks and the summary to `out`.
pub fn run(cfg: &LoadConfig, out: &mut impl Write) -> Result<Summary> {
    let mut records = match &cfg.records {
        Some(p) => Some(BufWriter::new(File::create(p).with_context(|| format!("creating {}", p.display()))?)),
        None => None,
    };
    let (tx, rx) = mpsc::channel::<Record>();
    let inflight = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut summary = Summary { kind: "summary".into(), start_ms: unix_ms(), ..Default::default() };
    let mut tick = Tick { kind: "tick".into(), ..Default::default() };
    let mut latencies = Vec::new();
    let mut seq = 0u64;
    let mut next_start = Duration::ZERO;
    let mut next_tick = Duration::from_secs(1);
    // After the last start, wait for the stragglers at most this long.
    let drain = cfg.connect_timeout * cfg.targets.len() as u32 + cfg.io_timeout * 2 + cfg.hold + Duration::from_secs(2);
    let mut stopping = false;
    loop {
        let now = start.elapsed();
        if !stopping && (now >= cfg.duration || cfg.stop_file.as_ref().is_some_and(|p| p.exists())) {
            stopping = true;
        }
        if stopping && (inflight.load(Ordering::SeqCst) == 0 || now >= cfg.duration + drain) {
            // A finished connection decrements `inflight` after sending its record: collect
            // what is queued before leaving.
            while let Ok(rec) = rx.try_recv() {
                account(cfg, &rec, &mut tick, &mut summary, &mut latencies);
                write_record(records.as_mut(), &rec)?;
            }
            break;
        }
        if !stopping && now >= next_start {
            next_start += cfg.interval;
            tick.started += 1;
            summary.started += 1;
            if inflight.load(Ordering::SeqCst) >= cfg.max_inflight {
                tick.skipped += 1;
                summary.skipped += 1;
            } else {
                inflight.fetch_add(1, Ordering::SeqCst);
                let (cfg2, tx2, inflight2) = (cfg.clone(), tx.clone(), inflight.clone());
                let this = seq;
                let first = if cfg.rotate { seq as usize % cfg.targets.len() } else { 0 };
                std::thread::spawn(move || {
                    let start_ms = unix_ms();
                    let t0 = Instant::now();
                    let o = one(&cfg2, this, first);
                    let rec = Record {
                        seq: this,
                        start_ms,
                        end_ms: unix_ms(),
                        target: o.target.map(|t| t.to_string()),
                        backend: o.backend,
                        local: o.local.map(|a| a.to_string()),
                        ok: o.result.is_ok(),
                        error: o.result.err().map(|e| format!("{e:#}")),
                        fallback: o.fell_back,
                        latency_ms: t0.elapsed().as_secs_f64() * 1000.0,
                        connect_ms: o.connected.as_secs_f64() * 1000.0,
                    };
                    let _ = tx2.send(rec);
                    inflight2.fetch_sub(1, Ordering::SeqCst);
                });
            }
            seq += 1;
        }
        while let Ok(rec) = rx.try_recv() {
            account(cfg, &rec, &mut tick, &mut summary, &mut latencies);
            write_record(records.as_mut(), &rec)?;
        }
        if start.elapsed() >= next_tick {
            tick.sec = next_tick.as_secs();
            tick.unix_ms = unix_ms();
            tick.inflight = inflight.load(Ordering::SeqCst) as u64;
            writeln!(out, "{}", serde_json::to_string(&tick)?)?;
            out.flush()?;
            tick = Tick { kind: "tick".into(), ..Default::default() };
            next_tick += Duration::from_secs(1);
            if let Some(w) = records.as_mut() {
                w.flush()?;
            }
        }
        let sleep = next_start.saturating_sub(start.elapsed()).min(Duration::from_millis(2));
        std::thread::sleep(sleep.max(Duration::from_micros(200)));
    }
    // Connections still open after the drain bound are failures too.
    let stuck = inflight.load(Ordering::SeqCst) as u64;
    if stuck > 0 {
        summary.failed += stuck;
        *tick.errors.entry("still open at the end".into()).or_default() += stuck;
        tick.failed += stuck;
        summary.failures.push(Failure {
            start_ms: 0,
            end_ms: unix_ms(),
            target: None,
            error: format!("{stuck} connections still open at the end"),
        });
    }
    tick.sec = next_tick.as_secs();
    tick.unix_ms = unix_ms();
    writeln!(out, "{}", serde_json::to_string(&tick)?)?;
    summary.end_ms = unix_ms();
    latencies.sort_by(f64::total_cmp);
    for (name, q) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0)] {
        if !latencies.is_empty() {
            let i = ((latencies.len() - 1) as f64 * q).round() as usize;
            summary.latency_ms.insert(name.into(), latencies[i]);
        }
    }
    writeln!(out, "{}", serde_json::to_string(&summary)?)?;
    out.flush()?;
    if let Some(mut w) = records {
        w.flush()?;
    }
    Ok(summary)
}

fn write_record(w: Option<&mut BufWriter<File>>, rec: &Record) -> Result<()> {
    if let Some(w) = w {
        serde_json::to_writer(&mut *w, rec)?;
        w.write_all(b"\n")?;
    }
    Ok(())
}

fn account(cfg: &LoadConfig, rec: &Record, tick: &mut Tick, s: &mut Summary, latencies: &mut Vec<f64>) {
    if rec.fallback {
        tick.fallback += 1;
        s.fallback += 1;
    }
    if rec.ok {
        tick.ok += 1;
        s.ok += 1;
        latencies.push(rec.latency_ms);
        if rec.latency_ms > cfg.slow.as_secs_f64() * 1000.0 && cfg.hold.is_zero() {
            tick.slow += 1;
            s.slow += 1;
        }
        if let Some(b) = &rec.backend {
            *tick.backends.entry(b.clone()).or_default() += 1;
            *s.backends.entry(b.clone()).or_default() += 1;
            let last = s.last_ms.entry(b.clone()).or_insert(rec.start_ms);
            *last = (*last).max(rec.start_ms);
            let first = s.first_ms.entry(b.clone()).or_insert(rec.start_ms);
            *first = (*first).min(rec.start_ms);
        }
    } else {
        tick.failed += 1;
        s.failed += 1;
        let err = rec.error.clone().unwrap_or_default();
        // Bounded label: the error without addresses and numbers.
        let class: String = err.chars().filter(|c| !c.is_ascii_digit()).take(80).collect();
        *tick.errors.entry(class).or_default() += 1;
        if s.failures.len() < 200 {
            s.failures.push(Failure {
                start_ms: rec.start_ms,
                end_ms: rec.end_ms,
                target: rec.target.clone(),
                error: err,
            });
        }
    }
}
