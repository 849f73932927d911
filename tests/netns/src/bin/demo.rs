//! `demo`: the live failover demo. Builds the namespace topology (client, two ingress nodes,
//! home with two WANs, the yggdrasil mesh), runs `ingress` on both ingress nodes, sends a new
//! connection every 10 ms from the client, then cuts wan1, cuts wan2, restores wan1, restores
//! wan2, and prints a per-second timeline (connections per path, failures, which paths each
//! ingress sees up) and the detection times; then cleans up. Run as root, after
//! `cargo build -p ingress -p netns` (or `tests/netns/demo.sh`, which also installs what is missing).
//!
//! Options: `--cut blackhole|link` (how WANs are cut, default blackhole), `--phase-secs N`
//! (time between events, default 5), `--interval-ms N` (new connection every N ms, default 10).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use netns::ingress::names;
use netns::loadgen::Tick;
use netns::scenario;
use netns::topology::{addr, Bins, Cut, Options, Role, Topology, Wan};
use netns::unix_ms;

struct Args {
    cut: Cut,
    phase: Duration,
    interval: Duration,
}

fn args() -> Result<Args> {
    let mut a = Args { cut: Cut::Blackhole, phase: Duration::from_secs(5), interval: Duration::from_millis(10) };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--cut" => {
                a.cut = match value()?.as_str() {
                    "blackhole" => Cut::Blackhole,
                    "link" => Cut::LinkDown,
                    other => bail!("--cut: `{other}` is not blackhole or link"),
                }
            }
            "--phase-secs" => a.phase = Duration::from_secs(value()?.parse().context("--phase-secs")?),
            "--interval-ms" => a.interval = Duration::from_millis(value()?.parse().context("--interval-ms")?),
            _ => bail!("usage: demo [--cut blackhole|link] [--phase-secs 5] [--interval-ms 10]"),
        }
    }
    if a.phase < Duration::from_secs(2) || a.phase > Duration::from_secs(60) || a.interval.is_zero() {
        bail!("--phase-secs must be 2..=60 and --interval-ms > 0");
    }
    Ok(a)
}

#[derive(Clone, Copy)]
enum Event {
    Cut(Wan),
    Restore(Wan),
}

impl Event {
    fn label(self, how: Cut) -> String {
        let how = match how {
            Cut::Blackhole => "silent blackhole",
            Cut::LinkDown => "link down",
        };
        match self {
            Event::Cut(w) => format!(">>> CUT {} ({how})", w.name()),
            Event::Restore(w) => format!(">>> RESTORE {}", w.name()),
        }
    }
}

fn main() {
    if let Err(e) = run() {
        eprintln!("demo: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let a = args()?;
    let exe = std::env::current_exe().context("where am I")?;
    let bins = Bins::in_dir(exe.parent().context("exe dir")?);
    if !bins.ingress.is_file() {
        bail!("{} missing: run `cargo build -p ingress -p netns` first", bins.ingress.display());
    }
    println!("Building the topology (namespaces, veths, yggdrasil routers)...");
    let t0 = Instant::now();
    let mut t = Topology::build(bins, Options::default())?;
    scenario::start_ingresses(&mut t)?;
    let mesh = t.home_mesh_addr().map(|m| m.to_string()).unwrap_or_default();
    println!("Ready in {:.1}s.", t0.elapsed().as_secs_f64());
    println!(
        "  client {} -> ingress1 {} / ingress2 {} -> home wan1 {} (weight 3) / wan2 {} (weight 1) / mesh {mesh}",
        addr::CLIENT,
        addr::INGRESS1,
        addr::INGRESS2,
        addr::WAN1,
        addr::WAN2
    );
    println!(
        "  a new TCP connection every {} ms, alternating between both ingress nodes; each is answered by home\n  \
         naming the address it arrived on, so the path is known.\n",
        a.interval.as_millis()
    );
    let events = [Event::Cut(Wan::Wan1), Event::Cut(Wan::Wan2), Event::Restore(Wan::Wan1), Event::Restore(Wan::Wan2)];
    let total = a.phase * (events.len() as u32 + 1);
    let load = t.start_load(Role::Client, "demo-load", scenario::standard_load(a.interval, total))?;
    println!(
        "legend: = wan1  - wan2  ~ mesh  X failed;  'up' shows the paths each ingress sees up (1, 2, m = on mesh)"
    );
    println!(
        "{:>4}  {:<40} {:>5} {:>5} {:>5} {:>4} {:>4}  {:<6} {:<6}  event",
        "t", "share of connections", "wan1", "wan2", "mesh", "fail", "slow", "ing1", "ing2"
    );
    let start = Instant::now();
    let mut event_times: Vec<(Event, u64)> = Vec::new();
    let mut printed = 0usize;
    let mut next_event = 0usize;
    let mut pending_label: Option<String> = None;
    while start.elapsed() < total + Duration::from_secs(2) {
        if next_event < events.len() && start.elapsed() >= a.phase * (next_event as u32 + 1) {
            let ev = events[next_event];
            match ev {
                Event::Cut(w) => t.cut(w, a.cut)?,
                Event::Restore(w) => t.restore(w, a.cut)?,
            }
            event_times.push((ev, unix_ms()));
            pending_label = Some(ev.label(a.cut));
            next_event += 1;
        }
        let ticks = load.ticks_so_far(&mut t)?;
        for tick in ticks.iter().skip(printed) {
            let label = pending_label.take().unwrap_or_default();
            println!(
                "{}",
                row(&t, tick, &ingress_state(&t, Role::Ingress1), &ingress_state(&t, Role::Ingress2), &label)
            );
        }
        printed = printed.max(ticks.len());
        std::thread::sleep(Duration::from_millis(50));
    }
    let r = load.finish(&mut t)?;
    for tick in r.ticks.iter().skip(printed) {
        println!("{}", row(&t, tick, "", "", ""));
    }
    let s = &r.summary;
    println!(
        "\n{} connections: {} ok, {} FAILED, {} slow (>500 ms); latency p50 {:.1} ms, p99 {:.1} ms, max {:.0} ms",
        s.started,
        s.ok,
        s.failed,
        s.slow,
        s.latency_ms.get("p50").copied().unwrap_or(0.0),
        s.latency_ms.get("p99").copied().unwrap_or(0.0),
        s.latency_ms.get("max").copied().unwrap_or(0.0)
    );
    println!("\nWhat each event took to act on (from the client's connections):");
    for (ev, at) in &event_times {
        let line = match ev {
            Event::Cut(w) => {
                let until = event_times
                    .iter()
                    .find(|(e, _)| matches!(e, Event::Restore(x) if x == w))
                    .map(|(_, ms)| *ms)
                    .unwrap_or(u64::MAX);
                let last = r
                    .records
                    .iter()
                    .filter(|x| x.ok && x.start_ms >= *at && x.start_ms < until)
                    .filter(|x| x.backend.as_deref().is_some_and(|b| t.path_of(b) == w.name()))
                    .map(|x| x.start_ms - at)
                    .max();
                let delayed = r
                    .records
                    .iter()
                    .filter(|x| x.start_ms >= *at && x.start_ms < at + 3000 && x.latency_ms > 250.0)
                    .count();
                match last {
                    Some(ms) => format!(
                        "last new connection over {} {ms} ms after the cut; {delayed} connections delayed >250 ms",
                        w.name()
                    ),
                    None => format!(
                        "no new connection over {} after the cut; {delayed} connections delayed >250 ms",
                        w.name()
                    ),
                }
            }
            Event::Restore(w) => match scenario::first_on_path_after(&t, &r.records, w.name(), *at) {
                Some(first) => format!("first connection over {} {} ms after the restore", w.name(), first - at),
                None => format!("{} carried nothing after the restore", w.name()),
            },
        };
        println!("  {:<28} {line}", ev.label(a.cut).trim_start_matches(">>> "));
    }
    if let (Some((_, cut2)), Some((_, back1))) = (event_times.get(1), event_times.get(2)) {
        let mesh_first = scenario::first_on_path_after(&t, &r.records, "mesh", *cut2);
        let mesh_n = scenario::path_counts(&t, &r.records, *cut2, *back1).get("mesh").copied().unwrap_or(0);
        match mesh_first {
            Some(f) => println!("  both WANs down: first connection over the yggdrasil mesh {} ms after the cut; {mesh_n} carried by the mesh", f - cut2),
            None => println!("  both WANs down: the mesh carried nothing"),
        }
    }
    if s.failed > 0 {
        // Connections already relaying over a WAN when it died cannot be moved by an L4 proxy;
        // a failed connect (or anything after the cut took effect) is a real failure.
        let mut in_flight = Vec::new();
        let mut failed: Vec<_> = r.records.iter().filter(|x| !x.ok).cloned().collect();
        for (ev, at) in &event_times {
            if let Event::Cut(_) = ev {
                let window: Vec<_> = failed.iter().filter(|x| x.start_ms + 100 >= *at).cloned().collect();
                let (fl, _) = scenario::split_failures(&window, at + 100);
                failed.retain(|x| !fl.iter().any(|y| y.seq == x.seq));
                in_flight.extend(fl);
            }
        }
        if !in_flight.is_empty() {
            println!(
                "\n{} connections were already relaying over a WAN when it was cut and broke (no L4 proxy can move them):\n{}",
                in_flight.len(),
                scenario::describe_failures(&in_flight, s.start_ms)
            );
        }
        if !failed.is_empty() {
            println!("\nFAILED connections:\n{}", scenario::describe_failures(&failed, s.start_ms));
        }
    }
    let fo = scenario::metric_sum(&t, names::MESH_FAILOVERS, &[]).unwrap_or(-1.0);
    println!("\ningress metrics: mesh failovers {fo}; cleaning up...");
    drop(t);
    println!("done.");
    if s.failed > 0 {
        bail!("{} connections failed", s.failed);
    }
    Ok(())
}

/// "12", "1-", "-2", "m" (on the mesh), "??" (no answer).
fn ingress_state(t: &Topology, role: Role) -> String {
    let Ok(m) = t.scrape(role) else { return "??".into() };
    if m.get("ingress_pool_on_mesh", &[]) == Some(1.0) {
        return "m".into();
    }
    let up = |p: &str| m.get(names::PATH_UP, &[("path", p)]) == Some(1.0);
    format!("{}{}", if up("wan1") { "1" } else { "-" }, if up("wan2") { "2" } else { "-" })
}

fn row(t: &Topology, tick: &Tick, ing1: &str, ing2: &str, label: &str) -> String {
    let mut per: BTreeMap<&str, u64> = BTreeMap::new();
    for (b, n) in &tick.backends {
        *per.entry(t.path_of(b)).or_default() += n;
    }
    let (w1, w2, m) = (
        per.get("wan1").copied().unwrap_or(0),
        per.get("wan2").copied().unwrap_or(0),
        per.get("mesh").copied().unwrap_or(0),
    );
    let all = (w1 + w2 + m + tick.failed).max(1);
    let width = 40u64;
    let bar = |n: u64, c: char| std::iter::repeat_n(c, (n * width / all) as usize).collect::<String>();
    let b = format!("{}{}{}{}", bar(w1, '='), bar(w2, '-'), bar(m, '~'), bar(tick.failed, 'X'));
    format!(
        "{:>3}s  {:<40} {:>5} {:>5} {:>5} {:>4} {:>4}  {:<6} {:<6}  {label}",
        tick.sec, b, w1, w2, m, tick.failed, tick.slow, ing1, ing2
    )
}
