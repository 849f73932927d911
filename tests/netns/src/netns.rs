//! The namespace guard, veth links between namespaces, and removal of what aborted runs left.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::cmd;

/// A network namespace that exists while this guard lives. On drop, every process still inside
/// it is killed and the namespace deleted (its veth ends go with it).
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates namespace `name` (should start with a [`crate::unique_tag`]), with `lo` up,
    /// IPv6 duplicate address detection off (addresses usable at once) and forwarding off.
    pub fn new(name: &str) -> Result<Self> {
        cmd::run(&["ip", "netns", "add", name]).with_context(|| format!("creating netns {name}"))?;
        let ns = Self { name: name.to_string() };
        cmd::ip(name, &["link", "set", "lo", "up"])?;
        cmd::sysctl(name, &[("net.ipv6.conf.all.accept_dad", "0"), ("net.ipv6.conf.default.accept_dad", "0")])?;
        Ok(ns)
    }

    /// The namespace's name, for `ip -n` and `ip netns exec`.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = delete_ns(&self.name) {
            eprintln!("netns: cleaning up {}: {e:#}", self.name);
        }
    }
}

/// Kills every process inside `name` and deletes the namespace, retrying briefly while the
/// killed processes exit.
fn delete_ns(name: &str) -> Result<()> {
    kill_all_in(name);
    let mut last = None;
    for _ in 0..50 {
        match cmd::run(&["ip", "netns", "del", name]) {
            Ok(_) => return Ok(()),
            Err(e) => {
                if !ns_exists(name) {
                    return Ok(());
                }
                last = Some(e);
                kill_all_in(name);
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("could not delete netns {name}")))
}

fn ns_exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
}

/// SIGKILLs every process inside namespace `name` (best effort).
pub fn kill_all_in(name: &str) {
    if let Ok(pids) = cmd::run(&["ip", "netns", "pids", name]) {
        for pid in pids.split_whitespace() {
            let _ = cmd::run(&["kill", "-KILL", pid]);
        }
    }
}

/// Names of all namespaces (`ip netns list` prints `name` or `name (id: N)`).
pub fn list() -> Result<Vec<String>> {
    let out = cmd::run(&["ip", "netns", "list"])?;
    Ok(out.lines().filter_map(|l| l.split_whitespace().next()).map(str::to_string).collect())
}

/// The pid in a harness name `lbt<pid>x<n>-...`, if the name is one of ours.
pub fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(crate::PREFIX)?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    if digits.is_empty() || !rest[digits.len()..].starts_with('x') {
        return None;
    }
    digits.parse().ok()
}

fn pid_alive(pid: u32) -> bool {
    Path::new("/proc").join(pid.to_string()).exists()
}

/// Removes namespaces and temp dirs left by earlier harness runs whose process is dead
/// (aborted runs: SIGKILL, a timeout of the test runner). Returns what it removed.
pub fn cleanup_stale() -> Result<Vec<String>> {
    let mut removed = Vec::new();
    for name in list()? {
        if let Some(pid) = owner_pid(&name) {
            if !pid_alive(pid) {
                delete_ns(&name)?;
                removed.push(name);
            }
        }
    }
    // A namespace's own /etc files (`ip netns exec` mounts /etc/netns/NAME/* over /etc), as
    // firewall_reload writes one; /etc/netns itself stays (a test beside this one may be about
    // to use it).
    for dir in [Path::new("/etc/netns"), &std::env::temp_dir()] {
        sweep_dead(dir, &mut removed);
    }
    Ok(removed)
}

/// Removes the entries of `dir` named for a harness process that is gone.
fn sweep_dead(dir: &Path, removed: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if owner_pid(&name).is_some_and(|pid| !pid_alive(pid)) && std::fs::remove_dir_all(entry.path()).is_ok() {
            removed.push(entry.path().display().to_string());
        }
    }
}

/// One veth link: `a_if` in namespace `a`, `b_if` in namespace `b`.
#[derive(Debug, Clone)]
pub struct Veth {
    pub a: String,
    pub a_if: String,
    pub b: String,
    pub b_if: String,
}

impl Veth {
    /// Creates the pair directly in both namespaces (no name in the root namespace is used,
    /// so parallel runs cannot collide), assigns the addresses (CIDR, may be empty) and sets
    /// both ends up.
    pub fn new(a: &Netns, a_if: &str, a_addrs: &[&str], b: &Netns, b_if: &str, b_addrs: &[&str]) -> Result<Self> {
        cmd::ip(a.name(), &["link", "add", "name", a_if, "type", "veth", "peer", "name", b_if, "netns", b.name()])
            .with_context(|| format!("veth {}:{a_if} <-> {}:{b_if}", a.name(), b.name()))?;
        for addr in a_addrs {
            cmd::ip(a.name(), &["addr", "add", addr, "dev", a_if])?;
        }
        for addr in b_addrs {
            cmd::ip(b.name(), &["addr", "add", addr, "dev", b_if])?;
        }
        cmd::ip(a.name(), &["link", "set", a_if, "up"])?;
        cmd::ip(b.name(), &["link", "set", b_if, "up"])?;
        Ok(Self { a: a.name().into(), a_if: a_if.into(), b: b.name().into(), b_if: b_if.into() })
    }
}

#[cfg(test)]
mod tests {
    use super::owner_pid;

    #[test]
    fn owner_pid_parses_only_harness_names() {
        assert_eq!(owner_pid("lbt1234x0-home"), Some(1234));
        assert_eq!(owner_pid("lbt1234x17"), Some(1234));
        assert_eq!(owner_pid("lbtx0-home"), None);
        assert_eq!(owner_pid("lbt12-home"), None);
        assert_eq!(owner_pid("home"), None);
        assert_eq!(owner_pid("lbtprobe"), None);
    }
}
