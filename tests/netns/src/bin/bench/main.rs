//! `bench`: our `ingress` side by side with HAProxy, nginx stream and a `direct` baseline in
//! the namespace topology. Each candidate runs in turn in `ingress1`; each workload is run
//! `--runs` times (default 3) and the median shown with the spread. Writes a markdown
//! report, the raw figures as JSON, and (through bench/plot.py) a PNG under bench/results/.
//! Run through `bench/run` (root; it installs what is needed and builds release binaries).

mod candidates;
mod report;
mod workloads;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use netns::services::{self, Listen};
use netns::topology::{Bins, Cut, Options, Role, Topology};
use netns::wait::{check, wait_until};

use candidates::Candidate;
use workloads::Figures;

struct Args {
    runs: usize,
    out: PathBuf,
    bins: PathBuf,
    quick: bool,
    /// Workloads to run (tcp, http, udp, failover, idle); all when empty.
    only: Vec<String>,
    /// Candidates to run; all when empty.
    candidates: Vec<String>,
    /// Worker threads of every candidate (ingress `threads`, HAProxy `nbthread`, nginx
    /// `worker_processes`); each one's default when absent.
    threads: candidates::Threads,
    /// `--pin`: each candidate on the last CPU, the bench and everything it starts (load
    /// generators, upstreams, the local proxy) on the others, as on a node whose proxy has no
    /// client or upstream beside it. The kernel's forwarding between the namespaces still runs
    /// wherever the packets arrive.
    pin: bool,
}

impl Args {
    fn wants(&self, workload: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|w| w == workload)
    }
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        runs: 3,
        out: PathBuf::from("bench/results"),
        bins: PathBuf::from("target/release"),
        quick: false,
        only: Vec::new(),
        candidates: Vec::new(),
        threads: None,
        pin: false,
    };
    let list = |v: Option<&String>| -> Vec<String> {
        v.map(|s| s.split(',').map(str::to_string).collect()).unwrap_or_default()
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--runs" => a.runs = it.next().context("--runs N")?.parse().context("--runs N")?,
            "--out" => a.out = it.next().context("--out DIR")?.into(),
            "--bins" => a.bins = it.next().context("--bins DIR")?.into(),
            "--quick" => a.quick = true,
            "--pin" => a.pin = true,
            "--only" => a.only = list(it.next()),
            "--candidates" => a.candidates = list(it.next()),
            "--threads" => {
                let n: usize = it.next().context("--threads N")?.parse().context("--threads N")?;
                anyhow::ensure!((1..=64).contains(&n), "--threads {n}: 1..=64");
                a.threads = Some(n);
            }
            other => anyhow::bail!(
                "unknown argument {other}; usage: bench [--runs 3] [--out DIR] [--bins DIR] [--quick] \
                 [--only tcp,http,udp,failover,idle] [--candidates ingress,haproxy,nginx,direct] [--threads N] [--pin]"
            ),
        }
    }
    a.runs = a.runs.clamp(1, 9);
    Ok(a)
}

/// Home's services for the workloads: nginx (small HTTP responses, keep-alive, long client
/// timeouts for the idle test) and an iperf3 server. The echo backends come with the topology.
fn start_home_services(t: &mut Topology) -> Result<()> {
    // Tens of thousands of short connections per run: a wide ephemeral range and TIME_WAIT
    // reuse on every host that opens connections, the same for every candidate, so runs do
    // not collapse into port exhaustion (as they do with the defaults after a few runs).
    for role in [Role::Client, Role::Ingress1, Role::Home] {
        netns::cmd::sysctl(
            t.ns(role),
            &[("net.ipv4.ip_local_port_range", "1024 65000"), ("net.ipv4.tcp_tw_reuse", "1")],
        )?;
    }
    let dir = t.dir().display().to_string();
    let conf = format!(
        "daemon off;\nworker_processes 1;\nworker_rlimit_nofile 20000;\npid {dir}/home-nginx.pid;\n\
         error_log {dir}/home-nginx-error.log warn;\nevents {{ worker_connections 19000; }}\n\
         http {{ access_log off; keepalive_requests 100000; client_header_timeout 300s; keepalive_timeout 300s;\n\
           client_body_temp_path {dir}; proxy_temp_path {dir}; fastcgi_temp_path {dir}; uwsgi_temp_path {dir}; scgi_temp_path {dir};\n\
           server {{ listen {port}; listen [::]:{port}; location / {{ return 200 \"hello from home\\n\"; }} }} }}\n",
        port = candidates::HTTP_PORT
    );
    let file = format!("{dir}/home-nginx.conf");
    std::fs::write(&file, conf)?;
    t.spawn(
        Role::Home,
        "home-nginx",
        &["nginx".into(), "-c".into(), file, "-e".into(), format!("{dir}/home-nginx-error.log")],
    )?;
    t.spawn(
        Role::Home,
        "home-iperf3",
        &["iperf3".into(), "-s".into(), "-p".into(), candidates::IPERF_PORT.to_string()],
    )?;
    std::thread::sleep(Duration::from_millis(500));
    t.spawn(
        Role::Home,
        "home-iperf3-udp",
        &["iperf3".into(), "-s".into(), "-p".into(), candidates::IPERF_UDP_PORT.to_string()],
    )?;
    std::thread::sleep(Duration::from_millis(300));
    for name in ["home-nginx", "home-iperf3", "home-iperf3-udp"] {
        t.proc_mut(name)?.ensure_running()?;
    }
    Ok(())
}

/// `--pin`: moves this process (and so everything it starts later) off the last CPU, which
/// it returns for the candidates.
fn pin_apart() -> Result<usize> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    anyhow::ensure!(cpus >= 2, "--pin needs two CPUs or more; this machine has {cpus}");
    let last = cpus - 1;
    let others = format!("0-{}", last - 1);
    let pid = std::process::id().to_string();
    let out = std::process::Command::new("taskset").args(["-a", "-p", "-c", &others, &pid]).output()?;
    anyhow::ensure!(out.status.success(), "taskset: {}", String::from_utf8_lossy(&out.stderr).trim());
    Ok(last)
}

/// Home's local proxy in front of home's UDP iperf3 (`candidates::local_proxy_config`), when
/// the bench has its binary: UDP through the whole deployed chain. Returns whether it runs.
fn start_local_proxy(t: &mut Topology, bins: &std::path::Path, threads: candidates::Threads) -> Result<bool> {
    let bin = bins.join("local-proxy");
    if !bin.is_file() {
        eprintln!("no local-proxy in {}: UDP through it is not measured", bins.display());
        return Ok(false);
    }
    let file = format!("{}/bench-local-proxy.toml", t.dir().display());
    std::fs::write(&file, candidates::local_proxy_config(threads))?;
    t.spawn(Role::Home, "home-local-proxy", &[bin.display().to_string(), "-c".into(), file])?;
    let home = t.ns(Role::Home).to_string();
    let want = [Listen::Udp(candidates::LP_PORT), Listen::Tcp(candidates::LP_PORT)];
    wait_until("local-proxy listening", Duration::from_secs(15), Duration::from_millis(50), || {
        t.proc_mut("home-local-proxy")?.ensure_running()?;
        let missing = services::missing_listeners(&home, &want)?;
        check(missing.is_empty(), || format!("not listening on {missing:?}"))
    })?;
    Ok(true)
}

fn main() -> Result<()> {
    let args = parse_args()?;
    let bins_dir = std::fs::canonicalize(&args.bins).with_context(|| format!("{}", args.bins.display()))?;
    let pin = if args.pin { Some(pin_apart()?) } else { None };
    let bins = Bins {
        loadgen: bins_dir.join("loadgen"),
        echo_server: bins_dir.join("echo-server"),
        ingress: bins_dir.join("ingress"),
    };
    let ingress_bin = bins.ingress.display().to_string();
    let holder = bins_dir.join("idle-holder").display().to_string();
    eprintln!("building the topology...");
    let mut t = Topology::build(bins, Options { mesh: true, backends: true })?;
    start_home_services(&mut t)?;
    let local_proxy = args.wants("udp") && start_local_proxy(&mut t, &bins_dir, args.threads)?;
    let mut figs: BTreeMap<Candidate, Figures> = BTreeMap::new();
    let mut failovers: BTreeMap<(Candidate, &'static str), Vec<workloads::Failover>> = BTreeMap::new();
    let add = |figs: &mut BTreeMap<Candidate, Figures>, c: Candidate, k: &str, v: f64| {
        figs.entry(c).or_default().entry(k.to_string()).or_default().push(v);
    };
    for run in 0..args.runs {
        // Every other run goes in the reverse order, so that no candidate always runs first
        // (on a cold upstream) or always right after another (in its TIME_WAIT sockets).
        let mut order = Candidate::ALL;
        if run % 2 == 1 {
            order.reverse();
        }
        for c in order {
            if !args.candidates.is_empty() && !args.candidates.iter().any(|n| n == c.name()) {
                continue;
            }
            eprintln!("run {}/{}: {}", run + 1, args.runs, c.name());
            let mut proc_name = candidates::start(&mut t, c, &ingress_bin, args.threads, pin)?;
            let res: Result<()> = (|| {
                if args.wants("tcp") {
                    add(&mut figs, c, "tcp1_gbps", workloads::tcp_bulk(&t, c, 1)?);
                    add(&mut figs, c, "tcp4_gbps", workloads::tcp_bulk(&t, c, 4)?);
                }
                if args.wants("http") {
                    let ka = workloads::http(&t, c, false)?;
                    add(&mut figs, c, "http_ka_rps", ka.rps);
                    add(&mut figs, c, "http_ka_p50_ms", ka.p50_ms);
                    add(&mut figs, c, "http_ka_p99_ms", ka.p99_ms);
                    add(&mut figs, c, "http_ka_errors", ka.errors as f64);
                    let nc = workloads::http(&t, c, true)?;
                    add(&mut figs, c, "http_new_rps", nc.rps);
                    add(&mut figs, c, "http_new_p50_ms", nc.p50_ms);
                    add(&mut figs, c, "http_new_p99_ms", nc.p99_ms);
                    add(&mut figs, c, "http_new_errors", nc.errors as f64);
                }
                if c.udp() && args.wants("udp") {
                    // 4 MB socket buffers at the ends (the proxy's own sockets have their
                    // udp_recv_buffer) let the receiver ride out the proxy's bursts and the
                    // scheduling of 2 shared cores, so what is lost is the proxy's doing.
                    // `rev`: home to the client, the proxy's reply path.
                    let mut runs = vec![
                        ("udp", None, false, false),
                        ("udp_w4m", Some("4M"), false, false),
                        ("udp_rev", None, true, false),
                        ("udp_rev_w4m", Some("4M"), true, false),
                    ];
                    if c == Candidate::Ingress && local_proxy {
                        // The deployed chain: the ingress, then home's local proxy.
                        runs.extend([
                            ("udp_lp", None, false, true),
                            ("udp_lp_w4m", Some("4M"), false, true),
                            ("udp_lp_rev", None, true, true),
                            ("udp_lp_rev_w4m", Some("4M"), true, true),
                        ]);
                    }
                    for (key, window, reverse, via_local_proxy) in runs {
                        let u = if via_local_proxy {
                            workloads::udp_via_local_proxy(&t, "1G", window, reverse)?
                        } else {
                            workloads::udp(&t, c, "1G", window, reverse)?
                        };
                        add(&mut figs, c, &format!("{key}_mbps"), u.mbps);
                        add(&mut figs, c, &format!("{key}_loss_pct"), u.loss_pct);
                        add(&mut figs, c, &format!("{key}_proxy_drop_pct"), u.proxy_drop_pct);
                        add(&mut figs, c, &format!("{key}_receiver_drop_pct"), u.receiver_drop_pct);
                        add(&mut figs, c, &format!("{key}_home_drop_pct"), u.home_drop_pct);
                    }
                }
                if let Some(p) = &proc_name {
                    if !args.quick && args.wants("failover") {
                        for (how, label) in [(Cut::LinkDown, "link"), (Cut::Blackhole, "blackhole")] {
                            let f = workloads::failover(&mut t, c, how, &format!("{}-{label}-{run}", c.name()))?;
                            eprintln!(
                                "  failover ({label}): {} failed, {} slow, detect {:?} ms, mesh {:?} ms, restore {:?} ms",
                                f.failed, f.slow, f.detect_wan1_ms, f.all_on_mesh_ms, f.restore_ms
                            );
                            failovers.entry((c, label)).or_default().push(f);
                        }
                    }
                    let mut peak_kb = candidates::peak_kb(&mut t, p)?;
                    if !args.quick && args.wants("idle") {
                        // Each count on a fresh process, every candidate alike: after the
                        // workloads above, one whose allocator pools kept their memory
                        // (HAProxy's) grew less for the same idle connections than one that
                        // had given it back, and the figure measured that history, not the
                        // cost. The same holds for 9,000 after 1,000.
                        for (count, key) in [(1000, "1k"), (9000, "9k")] {
                            if let Some(old) = proc_name.take() {
                                peak_kb = peak_kb.max(candidates::peak_kb(&mut t, &old)?);
                                t.stop(&old)?;
                            }
                            proc_name = candidates::start(&mut t, c, &ingress_bin, args.threads, pin)?;
                            let fresh = proc_name.clone().context("a proxy candidate starts a process")?;
                            let idle = workloads::idle_rss(&mut t, c, &fresh, &holder, count)?;
                            add(&mut figs, c, &format!("idle_{key}_kb_per_conn"), idle.kb_per_conn());
                            add(&mut figs, c, &format!("idle_{key}_opened"), idle.opened as f64);
                            add(&mut figs, c, &format!("idle_{key}_held"), idle.held as f64);
                        }
                        if let Some(last) = &proc_name {
                            peak_kb = peak_kb.max(candidates::peak_kb(&mut t, last)?);
                        }
                    }
                    add(&mut figs, c, "peak_rss_mb", peak_kb as f64 / 1024.0);
                }
                Ok(())
            })();
            if let Some(p) = proc_name {
                let _ = t.stop(&p);
            }
            res.with_context(|| format!("{} run {}", c.name(), run + 1))?;
        }
    }
    let mut versions = report::versions(&t);
    versions.insert(
        "threads".into(),
        args.threads.map_or_else(|| "each candidate's default (one per core)".into(), |n| n.to_string()),
    );
    if let Some(cpu) = pin {
        versions.insert("pinned".into(), format!("each candidate on CPU {cpu}, everything else on CPUs 0-{}", cpu - 1));
    }
    std::fs::create_dir_all(&args.out)?;
    // Runs at a set thread count get a file of their own (1 and 2 threads on the same day),
    // and so do pinned runs.
    let stem = args.out.join(format!(
        "{}{}{}",
        report::stem(),
        args.threads.map(|n| format!("-t{n}")).unwrap_or_default(),
        if pin.is_some() { "-pin" } else { "" }
    ));
    let md = report::markdown(&figs, &failovers, args.runs, &versions);
    std::fs::write(stem.with_extension("md"), &md)?;
    std::fs::write(stem.with_extension("json"), report::json(&figs, &failovers, &versions)?)?;
    println!("{md}");
    eprintln!("wrote {}.md and .json", stem.display());
    drop(t);
    Ok(())
}
