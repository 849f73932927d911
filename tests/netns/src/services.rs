//! Ingress configs beyond [`IngressConfig::standard`]: extra pools and services (UDP, port
//! ranges, `sni`/`http` routing) appended as TOML text, and an ingress start that waits for TCP
//! *and* UDP listeners. Also the UDP flow metric names and the `udp-echo`/`udpflow` runners.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::cmd;
use crate::ingress::{self, IngressConfig};
use crate::metrics;
use crate::topology::{Role, Topology};
use crate::udp_echo::{self, PeerLog};
use crate::udpflow::{self, Datagram, FlowConfig, Summary};
use crate::wait::{check, wait_until};

/// UDP metric names the ingress exports (labels `service`, and `path` or `direction`/`reason`).
pub mod names {
    pub const UDP_FLOWS_ACTIVE: &str = "ingress_udp_flows_active";
    pub const UDP_FLOWS_CREATED: &str = "ingress_udp_flows_created_total";
    pub const UDP_FLOWS_EXPIRED: &str = "ingress_udp_flows_expired_total";
    pub const UDP_FLOWS_EVICTED: &str = "ingress_udp_flows_evicted_total";
    pub const UDP_FLOWS_MIGRATED: &str = "ingress_udp_flows_migrated_total";
    pub const UDP_DATAGRAMS: &str = "ingress_udp_datagrams_total";
    pub const UDP_DROPS: &str = "ingress_udp_drops_total";
    pub const SERVICE_ROUTE_FAILURES: &str = "ingress_service_route_failures_total";
}

/// A listener the start waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listen {
    Tcp(u16),
    Udp(u16),
}

/// One path of an extra pool: name, `IP` or `IP:PORT`, weight.
pub type PathSpec<'a> = (&'a str, String, u32);

/// A `[pool.NAME]` table with the standard health timing (500 ms, 400 ms, rise 2, fall 2);
/// `port` is the probed port when the paths do not fix theirs.
pub fn pool_toml(name: &str, paths: &[PathSpec<'_>], port: Option<u16>) -> String {
    let paths: Vec<String> =
        paths.iter().map(|(n, a, w)| format!("{{ name = \"{n}\", address = \"{a}\", weight = {w} }}")).collect();
    let port = port.map(|p| format!(", port = {p}")).unwrap_or_default();
    let mut s = String::new();
    let _ = writeln!(s, "[pool.{name}]\npaths = [ {} ]", paths.join(", "));
    let _ = writeln!(s, "connect_timeout = \"300ms\"");
    let _ = writeln!(s, "health = {{ interval = \"500ms\", timeout = \"400ms\", rise = 2, fall = 2{port} }}\n");
    s
}

/// The standard config (pool `home`, TCP service `echo`) followed by `extra` (more `[pool.*]`
/// and `[[service]]` tables).
pub fn standard_plus(t: &Topology, extra: &str) -> String {
    let mut s = IngressConfig::standard(t.home_mesh_addr()).to_toml();
    s.push('\n');
    s.push_str(extra);
    s
}

/// Writes `toml` for `role`, checks it with `ingress check -c`, starts `ingress -c` there (the
/// process is named after the role, as [`Topology::start_ingress`] names it) and waits until
/// its admin endpoint answers and every listener in `wait` is bound.
pub fn start_ingress_toml(t: &mut Topology, role: Role, toml: &str, wait: &[Listen]) -> Result<()> {
    let name = role.as_str().to_string();
    let file = t.dir().join(format!("{name}.toml"));
    std::fs::write(&file, toml).with_context(|| format!("writing {}", file.display()))?;
    ingress::check(&t.bins.ingress, &file)?;
    let argv = vec![t.bins.ingress.display().to_string(), "-c".into(), file.display().to_string()];
    t.spawn(role, &name, &argv)?;
    let ns = t.ns(role).to_string();
    wait_until(&format!("ingress in {name} ready"), Duration::from_secs(15), Duration::from_millis(50), || {
        t.proc_mut(&name)?.ensure_running()?;
        metrics::scrape(&ns, ingress::ADMIN)?;
        let missing = missing_listeners(&ns, wait)?;
        check(missing.is_empty(), || format!("not listening on {missing:?}"))
    })
}

/// Which of `wait` are not bound in `ns` (any address).
pub fn missing_listeners(ns: &str, wait: &[Listen]) -> Result<Vec<Listen>> {
    let tcp = cmd::exec_ok(ns, &["ss", "-Hltn"], cmd::DEFAULT_TIMEOUT)?;
    let udp = cmd::exec_ok(ns, &["ss", "-Hlun"], cmd::DEFAULT_TIMEOUT)?;
    let bound = |text: &str, port: u16| {
        let suffix = format!(":{port}");
        text.lines().any(|l| l.split_whitespace().nth(3).is_some_and(|local| local.ends_with(&suffix)))
    };
    Ok(wait
        .iter()
        .copied()
        .filter(|l| match l {
            Listen::Tcp(p) => !bound(&tcp, *p),
            Listen::Udp(p) => !bound(&udp, *p),
        })
        .collect())
}

/// Starts `udp-echo` in `role` on every address of `listen` (named `udp-echo-<role>`) and waits
/// until each is bound.
pub fn start_udp_echo(t: &mut Topology, role: Role, listen: &[SocketAddr], opts: udp_echo::Options) -> Result<()> {
    start_udp_echo_with_sinks(t, role, listen, &[], opts)
}

/// As [`start_udp_echo`], with `sinks`: addresses that receive and never answer.
pub fn start_udp_echo_with_sinks(
    t: &mut Topology,
    role: Role,
    listen: &[SocketAddr],
    sinks: &[SocketAddr],
    opts: udp_echo::Options,
) -> Result<()> {
    let bin = t.bins.loadgen.with_file_name("udp-echo");
    if !bin.is_file() {
        bail!("udp-echo binary missing at {}: build with `cargo build -p netns`", bin.display());
    }
    let mut argv = vec![bin.display().to_string()];
    for a in listen {
        argv.extend(["--listen".into(), a.to_string()]);
    }
    for a in sinks {
        argv.extend(["--sink".into(), a.to_string()]);
    }
    if opts.raw {
        argv.push("--raw".into());
    }
    if let Some(ip) = opts.answer_ip {
        argv.extend(["--answer-ip".into(), ip.to_string()]);
    }
    let name = format!("udp-echo-{}", role.as_str());
    t.spawn(role, &name, &argv)?;
    let ns = t.ns(role).to_string();
    let want: Vec<String> = listen.iter().chain(sinks).map(|a| a.to_string()).collect();
    wait_until(&format!("{name} bound"), Duration::from_secs(10), Duration::from_millis(20), || {
        t.proc_mut(&name)?.ensure_running()?;
        let out = cmd::exec_ok(&ns, &["ss", "-Hlun"], cmd::DEFAULT_TIMEOUT)?;
        let missing: Vec<&String> = want.iter().filter(|a| !out.contains(a.as_str())).collect();
        check(missing.is_empty(), || format!("not bound: {missing:?}"))
    })
}

/// The peers `udp-echo` in `role` logged.
pub fn udp_echo_log(t: &mut Topology, role: Role) -> Result<Vec<PeerLog>> {
    Ok(udp_echo::parse_log(&t.proc_mut(&format!("udp-echo-{}", role.as_str()))?.stdout()))
}

/// A `udpflow` started by [`start_udpflow`].
#[derive(Debug)]
pub struct FlowRun {
    pub name: String,
    pub cfg: FlowConfig,
}

/// What a finished `udpflow` reported.
#[derive(Debug)]
pub struct FlowResult {
    pub summary: Summary,
    pub datagrams: Vec<Datagram>,
}

/// Starts `udpflow` in `role` (normally client), with a records file in the run's dir.
pub fn start_udpflow(t: &mut Topology, role: Role, name: &str, mut cfg: FlowConfig) -> Result<FlowRun> {
    let bin = t.bins.loadgen.with_file_name("udpflow");
    if !bin.is_file() {
        bail!("udpflow binary missing at {}: build with `cargo build -p netns`", bin.display());
    }
    cfg.records = Some(t.dir().join(format!("{name}.records")));
    cfg.stop_file = Some(t.dir().join(format!("{name}.stop")));
    let mut argv = vec![bin.display().to_string()];
    argv.extend(cfg.to_args());
    t.spawn(role, name, &argv)?;
    Ok(FlowRun { name: name.into(), cfg })
}

impl FlowRun {
    /// Waits (bounded by its duration and drain) for it to finish and reads its output.
    pub fn finish(self, t: &mut Topology) -> Result<FlowResult> {
        let p = t.proc_mut(&self.name)?;
        let status = p.wait_exit(self.cfg.bound())?;
        let summary = udpflow::parse_output(&p.stdout())
            .with_context(|| format!("{} ({status}) printed no summary:\n{}", self.name, p.tail(20)))?;
        let records = self.cfg.records.as_ref().context("no records file")?;
        let datagrams = udpflow::parse_records(&std::fs::read_to_string(records).unwrap_or_default());
        t.stop(&self.name)?;
        Ok(FlowResult { summary, datagrams })
    }
}
