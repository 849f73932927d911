//! Checks, before any topology is built, that the harness can work here: root, the tools it
//! runs, yggdrasil 0.5.x, a TUN device. A missing piece is an error naming it (the tests fail,
//! never skip). Also removes what aborted earlier runs left, once per process.

use std::path::Path;
use std::sync::Once;

use anyhow::{bail, Context, Result};

use crate::cmd;

/// Tools the harness runs, with the Debian package that has each.
pub const TOOLS: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("tc", "iproute2"),
    ("ss", "iproute2"),
    ("nft", "nftables"),
    ("curl", "curl"),
    ("ping", "iputils-ping"),
    ("sysctl", "procps"),
    ("kill", "procps"),
    ("setpriv", "util-linux"),
    ("iptables-legacy", "iptables"),
    ("yggdrasil", "yggdrasil (bookworm-backports)"),
];

fn effective_uid() -> Result<u32> {
    let status = std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let line = status.lines().find(|l| l.starts_with("Uid:")).context("no Uid: line in /proc/self/status")?;
    line.split_whitespace().nth(2).context("short Uid: line")?.parse().context("Uid: not a number")
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH").map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file())).unwrap_or(false)
}

/// Errors naming everything that is missing; run `tests/netns/deps.sh` to install it.
pub fn require() -> Result<()> {
    let mut missing = Vec::new();
    match effective_uid() {
        Ok(0) => {}
        Ok(uid) => missing.push(format!("root (running as uid {uid}; network namespaces need root)")),
        Err(e) => missing.push(format!("root (cannot tell: {e:#})")),
    }
    for (tool, pkg) in TOOLS {
        if !on_path(tool) {
            missing.push(format!("`{tool}` (package {pkg})"));
        }
    }
    if on_path("yggdrasil") {
        match cmd::run(&["yggdrasil", "-version"]) {
            Ok(v) => {
                let version = v.lines().find_map(|l| l.strip_prefix("Build version:")).map(str::trim);
                if !version.is_some_and(|v| v.starts_with("0.5.")) {
                    missing.push(format!("yggdrasil 0.5.x (found {})", version.unwrap_or("an unknown version")));
                }
            }
            Err(e) => missing.push(format!("a working yggdrasil ({e:#})")),
        }
    }
    if !Path::new("/dev/net/tun").exists() {
        missing.push("/dev/net/tun (yggdrasil needs a TUN device)".into());
    }
    if !missing.is_empty() {
        bail!(
            "the netns harness cannot run here; missing: {}.\nRun the tests as root; install the tools with: sudo tests/netns/deps.sh",
            missing.join(", ")
        );
    }
    static CLEAN: Once = Once::new();
    CLEAN.call_once(|| match crate::netns::cleanup_stale() {
        Ok(removed) if !removed.is_empty() => {
            eprintln!("netns: removed leftovers of aborted runs: {removed:?}")
        }
        Ok(_) => {}
        Err(e) => eprintln!("netns: cleaning leftovers of aborted runs: {e:#}"),
    });
    Ok(())
}
