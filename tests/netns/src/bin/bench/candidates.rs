//! The candidates put in turn in `ingress1`: our `ingress`, HAProxy (tcp mode, splice, the
//! same health checks, `backup` mesh), nginx stream (tcp and udp, passive checks, `backup`
//! mesh), and `direct` (no proxy: the client talks to home's WAN1 address).

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use netns::topology::{addr, Role, Topology};
use netns::wait::{check, wait_until};

/// Ports every candidate forwards (each to the same port on the chosen path).
pub const IPERF_PORT: u16 = 5201;
/// The UDP workload's iperf3 server. Its UDP goes over wan1 only: iperf3 binds a wildcard
/// UDP socket, which at a multi-WAN home replies from the main route's address whichever WAN
/// the datagram came in on, and a connected upstream socket (ours and nginx's alike) drops
/// such replies. (The local proxy binds per WAN address for exactly this reason.)
pub const IPERF_UDP_PORT: u16 = 5202;
pub const HTTP_PORT: u16 = 8081;
/// Home's local proxy (when the bench has its binary): TCP and UDP streams on this port in
/// front of home's UDP iperf3, reached through the ingress (PROXY v2, wan1 only).
pub const LP_PORT: u16 = 5203;
/// The local proxy's admin listener inside home.
const LP_ADMIN: &str = "127.0.0.1:9182";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Candidate {
    Ingress,
    Haproxy,
    Nginx,
    Direct,
}

impl Candidate {
    pub const ALL: [Candidate; 4] = [Candidate::Ingress, Candidate::Haproxy, Candidate::Nginx, Candidate::Direct];

    pub fn name(self) -> &'static str {
        match self {
            Candidate::Ingress => "ingress",
            Candidate::Haproxy => "haproxy",
            Candidate::Nginx => "nginx",
            Candidate::Direct => "direct",
        }
    }

    /// Where the client sends traffic for this candidate.
    pub fn target_ip(self) -> IpAddr {
        match self {
            Candidate::Direct => addr::WAN1.into(),
            _ => addr::INGRESS1.into(),
        }
    }

    pub fn is_proxy(self) -> bool {
        self != Candidate::Direct
    }

    pub fn udp(self) -> bool {
        // HAProxy has no generic UDP proxying (its issue #62).
        self != Candidate::Haproxy
    }
}

fn wan_paths() -> [(&'static str, IpAddr, u32); 2] {
    [("wan1", addr::WAN1.into(), 3), ("wan2", addr::WAN2.into(), 1)]
}

fn ip_in_url(ip: IpAddr) -> String {
    match ip {
        IpAddr::V6(v6) => format!("[{v6}]"),
        IpAddr::V4(v4) => v4.to_string(),
    }
}

/// Worker threads per candidate: `None` leaves each at its default (ours and HAProxy's: one
/// per core; nginx: `auto`, one worker process per core).
pub type Threads = Option<usize>;

pub fn ingress_config(mesh: Ipv6Addr, threads: Threads) -> String {
    let paths: Vec<String> = wan_paths()
        .iter()
        .map(|(n, ip, w)| format!("{{ name = \"{n}\", address = \"{ip}\", weight = {w} }}"))
        .collect();
    let threads = threads.map(|n| format!("threads = {n}\n")).unwrap_or_default();
    let mut s = format!(
        "[admin]\nlisten = \"127.0.0.1:9180\"\n[limits]\nmax_connections = 9500\n{threads}\
         [pool.home]\npaths = [{}]\nmesh = \"{mesh}\"\nconnect_timeout = \"300ms\"\n\
         health = {{ interval = \"500ms\", timeout = \"400ms\", rise = 2, fall = 2, port = {} }}\n",
        paths.join(", "),
        addr::HEALTH_PORT
    );
    for (name, port, proto) in [
        ("iperf", IPERF_PORT, "tcp"),
        ("iperf-udp-control", IPERF_UDP_PORT, "tcp"),
        ("http", HTTP_PORT, "tcp"),
        ("echo", addr::ECHO_PORT, "tcp"),
    ] {
        let _ = write!(
            s,
            "[[service]]\nname = \"{name}\"\nlisten = [\"0.0.0.0:{port}\"]\nprotocol = \"{proto}\"\npool = \"home\"\n"
        );
    }
    let _ = write!(
        s,
        "[pool.wan1only]\npaths = [{{ name = \"wan1\", address = \"{}\" }}]\nmesh = \"{mesh}\"\n\
         health = {{ interval = \"500ms\", timeout = \"400ms\", rise = 2, fall = 2, port = {} }}\n\
         [[service]]\nname = \"iperf-udp\"\nlisten = [\"0.0.0.0:{IPERF_UDP_PORT}\"]\nprotocol = \"udp\"\npool = \"wan1only\"\n\
         [[service]]\nname = \"lp-iperf-control\"\nlisten = [\"0.0.0.0:{LP_PORT}\"]\npool = \"wan1only\"\nproxy_protocol = \"v2\"\n\
         [[service]]\nname = \"lp-iperf-udp\"\nlisten = [\"0.0.0.0:{LP_PORT}\"]\nprotocol = \"udp\"\npool = \"wan1only\"\nproxy_protocol = \"v2\"\n",
        addr::WAN1,
        addr::HEALTH_PORT
    );
    s
}

/// Home's local proxy: WAN streams on [`LP_PORT`] (TCP for iperf3's control connection, UDP
/// for its data) to home's UDP iperf3, trusting ingress1's PROXY headers; `--threads` worker
/// loops as the candidates, else its default (one per core).
pub fn local_proxy_config(threads: Threads) -> String {
    let threads = threads.map(|n| format!("threads = {n}\n")).unwrap_or_default();
    let stream = |name: &str, proto: &str| {
        format!(
            "[[stream]]\nname = \"{name}\"\nlisten = \"{LP_PORT}/{proto}\"\nupstream = \"127.0.0.1:{IPERF_UDP_PORT}\"\n"
        )
    };
    format!(
        "{threads}[admin]\nlisten = \"{LP_ADMIN}\"\n[wan]\naddresses = [\"{}\"]\ntrusted_ingress = [\"{}\"]\n{}{}",
        addr::WAN1,
        addr::INGRESS1,
        stream("iperf-control", "tcp"),
        stream("iperf-udp", "udp")
    )
}

/// HAProxy as the playbook this project replaces ran it, tuned as its docs advise: splice,
/// `inter 500 fall 2 rise 2`, a 1 s connect timeout, redispatch on retry, mesh as `backup`.
pub fn haproxy_config(mesh: Ipv6Addr, dir: &str, threads: Threads) -> String {
    let nbthread = threads.map(|n| format!("  nbthread {n}\n")).unwrap_or_default();
    let mut s = format!(
        "global\n  maxconn 9000\n  maxpipes 400\n{nbthread}  stats socket {dir}/haproxy.sock\n\
         defaults\n  mode tcp\n  timeout connect 1s\n  timeout client 1h\n  timeout server 1h\n\
         \x20 option splice-auto\n  retries 3\n  option redispatch 1\n\
         backend home\n  balance roundrobin\n"
    );
    for (n, ip, w) in wan_paths() {
        let _ = writeln!(s, "  server {n} {ip} weight {w} check port {} inter 500 fall 2 rise 2", addr::HEALTH_PORT);
    }
    let _ = writeln!(s, "  server mesh [{mesh}] backup check port {} inter 500 fall 2 rise 2", addr::HEALTH_PORT);
    for port in [IPERF_PORT, IPERF_UDP_PORT, HTTP_PORT, addr::ECHO_PORT] {
        let _ = write!(s, "frontend f{port}\n  bind 0.0.0.0:{port}\n  default_backend home\n");
    }
    s
}

/// nginx stream: tcp and udp, weights, passive failure detection (active checks are nginx
/// Plus only), `proxy_next_upstream` retries, mesh as `backup`.
pub fn nginx_config(mesh: Ipv6Addr, dir: &str, threads: Threads) -> String {
    let workers = threads.map_or_else(|| "auto".to_string(), |n| n.to_string());
    // A proxied session takes two of a worker's connections (the client's and the
    // upstream's): 9,000 idle sessions on one worker (`--threads 1`) need 18,000 plus the
    // listeners. At 10,000 nginx dropped the sessions past the limit while the client counted
    // them open (its 9,000-connection figure halved at one worker: ~4.2 kB against ~8 at two).
    // 19,000 stays under the open-files limit beside it (20,000, the machine's), as home's
    // nginx does.
    let mut s = format!(
        "load_module /usr/lib/nginx/modules/ngx_stream_module.so;\ndaemon off;\nworker_processes {workers};\nworker_rlimit_nofile 20000;\npid {dir}/nginx.pid;\n\
         error_log {dir}/nginx-error.log warn;\nevents {{ worker_connections 19000; }}\nstream {{\n"
    );
    for (port, udp) in [
        (IPERF_PORT, false),
        (IPERF_UDP_PORT, false),
        (IPERF_UDP_PORT, true),
        (HTTP_PORT, false),
        (addr::ECHO_PORT, false),
    ] {
        let name = format!("home_{port}{}", if udp { "_udp" } else { "" });
        let _ = writeln!(s, "  upstream {name} {{");
        for (_, ip, w) in wan_paths().into_iter().filter(|(n, _, _)| !udp || *n == "wan1") {
            let _ = writeln!(s, "    server {ip}:{port} weight={w} max_fails=1 fail_timeout=2s;");
        }
        let _ = writeln!(s, "    server [{mesh}]:{port} backup;\n  }}");
        // The ingress's UDP listener has a 4 MiB receive buffer (`udp_recv_buffer`), so
        // nginx's gets the same (SO_RCVBUF: capped at net.core.rmem_max, where ours forces
        // past it). nginx has no setting for its upstream-side UDP sockets: those keep the
        // kernel's default, where ours also get `udp_recv_buffer`.
        let listen = if udp { format!("{port} udp rcvbuf=4m") } else { port.to_string() };
        let _ = writeln!(
            s,
            "  server {{ listen {listen}; proxy_pass {name}; proxy_connect_timeout 1s; \
             proxy_next_upstream on; proxy_next_upstream_tries 3; proxy_timeout 1h; }}"
        );
    }
    s.push_str("}\n");
    s
}

/// Start `c` in ingress1 (nothing for `direct`), on CPU `pin` alone when given; returns the
/// process name, waits until it carries traffic.
pub fn start(
    t: &mut Topology,
    c: Candidate,
    ingress_bin: &str,
    threads: Threads,
    pin: Option<usize>,
) -> Result<Option<String>> {
    let mesh = t.home_mesh_addr().context("the bench needs the mesh")?;
    let dir = t.dir().display().to_string();
    let name = format!("cand-{}", c.name());
    let argv: Vec<String> = match c {
        Candidate::Direct => return Ok(None),
        Candidate::Ingress => {
            let file = format!("{dir}/bench-ingress.toml");
            std::fs::write(&file, ingress_config(mesh, threads))?;
            vec![ingress_bin.into(), "-c".into(), file]
        }
        Candidate::Haproxy => {
            let file = format!("{dir}/haproxy.cfg");
            std::fs::write(&file, haproxy_config(mesh, &dir, threads))?;
            vec!["haproxy".into(), "-db".into(), "-f".into(), file]
        }
        Candidate::Nginx => {
            let file = format!("{dir}/nginx-stream.conf");
            std::fs::write(&file, nginx_config(mesh, &dir, threads))?;
            vec!["nginx".into(), "-c".into(), file, "-e".into(), format!("{dir}/nginx-error.log")]
        }
    };
    // Every thread and child (nginx's workers) inherits the CPU.
    let argv: Vec<String> = match pin {
        Some(cpu) => ["taskset".into(), "-c".into(), cpu.to_string()].into_iter().chain(argv).collect(),
        None => argv,
    };
    t.spawn(Role::Ingress1, &name, &argv)?;
    let target = SocketAddr::new(c.target_ip(), addr::ECHO_PORT);
    wait_until(&format!("{} serving", c.name()), Duration::from_secs(20), Duration::from_millis(100), || {
        t.proc_mut(&name)?.ensure_running()?;
        let backend = t.probe_echo(Role::Client, target)?;
        check(!backend.is_empty(), || "no backend".into())
    })?;
    // Let the health checks settle (two rounds at 500 ms).
    std::thread::sleep(Duration::from_millis(1200));
    Ok(Some(name))
}

/// The candidate's process and its direct children (nginx's workers).
fn processes(t: &mut Topology, name: &str) -> Result<Vec<u32>> {
    let pid = t.proc_mut(name)?.pid();
    let mut pids = vec![pid];
    for entry in std::fs::read_dir("/proc")? {
        let Ok(entry) = entry else { continue };
        let Ok(p) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
        // Field 4 (after the parenthesised name) is the parent pid.
        let ppid = stat.rsplit(')').next().and_then(|r| r.split_whitespace().nth(1)).and_then(|v| v.parse().ok());
        if ppid == Some(pid) {
            pids.push(p);
        }
    }
    Ok(pids)
}

/// `field` (kB) of /proc/PID/`file`, summed over the candidate's processes.
fn sum_kb(t: &mut Topology, name: &str, file: &str, field: &str) -> Result<u64> {
    let pids = processes(t, name)?;
    let mut total = 0;
    for p in &pids {
        let text = std::fs::read_to_string(format!("/proc/{p}/{file}")).unwrap_or_default();
        total += text
            .lines()
            .find(|l| l.starts_with(field))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
    }
    if total == 0 {
        bail!("no {field} in /proc/PID/{file} for {name} (pids {pids:?})");
    }
    Ok(total)
}

/// Peak resident memory (kB): VmHWM summed over the candidate's processes. For nginx (master
/// and workers) that is a per-process sum, which counts their shared pages in each and adds
/// peaks reached at different times; the kernel keeps no proportional peak to use instead.
pub fn peak_kb(t: &mut Topology, name: &str) -> Result<u64> {
    sum_kb(t, name, "status", "VmHWM:")
}

/// Current memory (kB): Pss summed over the candidate's processes, so that the pages nginx's
/// master and workers share count once (a sum of their RSS counts them in each).
pub fn pss_kb(t: &mut Topology, name: &str) -> Result<u64> {
    sum_kb(t, name, "smaps_rollup", "Pss:")
}

pub fn url(c: Candidate, port: u16) -> String {
    format!("http://{}:{port}/", ip_in_url(c.target_ip()))
}
