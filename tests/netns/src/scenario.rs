//! Pieces the failover scenarios and the demo share: both ingress nodes started with the standard
//! config, the standard load, and reading what happened per path (counts, detection times).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::ingress::{names, IngressConfig};
use crate::loadgen::{LoadConfig, Record};
use crate::topology::{addr, Role, Topology};
use crate::wait::{check, wait_until};

/// The echo service on each ingress node, as DNS would list them.
pub fn ingress_targets() -> Vec<SocketAddr> {
    vec![SocketAddr::from((addr::INGRESS1, addr::ECHO_PORT)), SocketAddr::from((addr::INGRESS2, addr::ECHO_PORT))]
}

/// Starts `ingress` on both ingress nodes with [`IngressConfig::standard`] (mesh path = home's
/// yggdrasil address) and waits until each reports wan1 and wan2 up.
pub fn start_ingresses(t: &mut Topology) -> Result<IngressConfig> {
    let cfg = IngressConfig::standard(t.home_mesh_addr());
    for role in [Role::Ingress1, Role::Ingress2] {
        t.start_ingress(role, &cfg)?;
    }
    for role in [Role::Ingress1, Role::Ingress2] {
        wait_paths(t, role, &[("wan1", true), ("wan2", true)], Duration::from_secs(10))?;
    }
    Ok(cfg)
}

/// Waits until `ingress_path_up` of each listed path in `role` is as wanted.
pub fn wait_paths(t: &Topology, role: Role, want: &[(&str, bool)], timeout: Duration) -> Result<()> {
    wait_until(&format!("paths {want:?} in {}", role.as_str()), timeout, Duration::from_millis(50), || {
        let m = t.scrape(role)?;
        let wrong: Vec<String> = want
            .iter()
            .filter(|(p, up)| m.get(names::PATH_UP, &[("path", p)]) != Some(if *up { 1.0 } else { 0.0 }))
            .map(|(p, _)| format!("{p}={:?}", m.get(names::PATH_UP, &[("path", p)])))
            .collect();
        check(wrong.is_empty(), || format!("ingress_path_up: {}", wrong.join(", ")))
    })
}

/// New connections to both ingress nodes every `interval` for `duration`, falling back to the
/// other node on a failed connect (a client with both DNS answers).
pub fn standard_load(interval: Duration, duration: Duration) -> LoadConfig {
    LoadConfig {
        targets: ingress_targets(),
        interval,
        duration,
        connect_timeout: Duration::from_secs(2),
        io_timeout: Duration::from_secs(5),
        slow: Duration::from_millis(500),
        fallback: true,
        rotate: true,
        ..Default::default()
    }
}

/// Ok connections per path (wan1, wan2, mesh, ...) among `records` started in `[from, to)`
/// (Unix ms).
pub fn path_counts(t: &Topology, records: &[Record], from: u64, to: u64) -> BTreeMap<&'static str, u64> {
    let mut m = BTreeMap::new();
    for r in records.iter().filter(|r| r.ok && r.start_ms >= from && r.start_ms < to) {
        let path = r.backend.as_deref().map(|b| t.path_of(b)).unwrap_or("unknown");
        *m.entry(path).or_default() += 1;
    }
    m
}

/// Start time (Unix ms) of the last ok connection carried by `path`.
pub fn last_on_path(t: &Topology, records: &[Record], path: &str) -> Option<u64> {
    records
        .iter()
        .filter(|r| r.ok && r.backend.as_deref().is_some_and(|b| t.path_of(b) == path))
        .map(|r| r.start_ms)
        .max()
}

/// Start time of the first ok connection on `path` started at or after `from`.
pub fn first_on_path_after(t: &Topology, records: &[Record], path: &str, from: u64) -> Option<u64> {
    records
        .iter()
        .filter(|r| r.ok && r.start_ms >= from && r.backend.as_deref().is_some_and(|b| t.path_of(b) == path))
        .map(|r| r.start_ms)
        .min()
}

/// Failed connections, one line each (for assertion messages).
pub fn describe_failures(records: &[Record], since: u64) -> String {
    records
        .iter()
        .filter(|r| !r.ok)
        .map(|r| {
            format!(
                "  +{}ms {} -> {}: {}",
                r.start_ms.saturating_sub(since),
                r.seq,
                r.target.as_deref().unwrap_or("-"),
                r.error.as_deref().unwrap_or("?")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// [`describe_failures`], each followed by what the ingress it reached logged of it (with
/// [`Topology::log_ingress_connections`]: whether home was reached, on which path, how many
/// bytes each way moved and when it ended) and what the echo backend logged of the upstream
/// connection (`line_ms`: when it read the client's line and answered).
pub fn failures_with_ingress_logs(t: &mut Topology, records: &[Record], since: u64) -> String {
    let mut out = describe_failures(records, since);
    let backend = t.proc_mut(&format!("backend-{}", Role::Home.as_str())).map(|p| p.stdout()).unwrap_or_default();
    for r in records.iter().filter(|r| !r.ok) {
        let (Some(target), Some(local)) = (r.target.as_deref(), r.local.as_deref()) else { continue };
        let role = if target.starts_with(&format!("{}:", addr::INGRESS1)) { Role::Ingress1 } else { Role::Ingress2 };
        let Ok(p) = t.proc_mut(role.as_str()) else { continue };
        let needle = format!("client={local}}}");
        let lines: Vec<String> = p.stderr().lines().filter(|l| l.contains(&needle)).map(String::from).collect();
        // "via=Some(ADDR)": the upstream connection's own address, the backend's peer.
        let upstream = lines.iter().find_map(|l| l.split("via=Some(").nth(1)?.split(')').next().map(String::from));
        out.push_str(&format!("\n  {} from {local} on {}:", r.seq, role.as_str()));
        for l in &lines {
            out.push_str(&format!("\n    {l}"));
        }
        if let Some(up) = upstream {
            let peer = format!("\"peer\":\"{up}\"");
            for l in backend.lines().filter(|l| l.contains(&peer)) {
                out.push_str(&format!("\n    backend: {l}"));
            }
        }
    }
    out
}

/// Splits failed connections at a fault injected between `fault_start` and `fault_done` (Unix
/// ms, before and after the command that injected it): those started before `fault_done` whose
/// connect succeeded were in flight when the path died under them (an L4 proxy cannot move a
/// connection whose bytes were already sent: unavoidable); every other failure is a failed
/// connect the ingress should have hidden. Returns (in flight, others).
pub fn split_failures(records: &[Record], fault_done: u64) -> (Vec<Record>, Vec<Record>) {
    records.iter().filter(|r| !r.ok).cloned().partition(|r| {
        r.start_ms < fault_done && r.target.is_some() && !r.error.as_deref().unwrap_or("").starts_with("connect")
    })
}

/// A sum of a per-path counter over both ingress nodes.
pub fn metric_sum(t: &Topology, name: &str, labels: &[(&str, &str)]) -> Result<f64> {
    let mut total = 0.0;
    for role in [Role::Ingress1, Role::Ingress2] {
        total += t.scrape(role).with_context(|| format!("scraping {}", role.as_str()))?.sum(name, labels);
    }
    Ok(total)
}
