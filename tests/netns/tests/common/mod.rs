//! Shared by the scenario tests: where the binaries are, a timer that prints phases; for the
//! booted-host tests, the root filesystem cache and the project's packages.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use netns::topology::{Bins, Options, Topology};

pub fn bins() -> Bins {
    let loadgen = Path::new(env!("CARGO_BIN_EXE_loadgen"));
    Bins::in_dir(loadgen.parent().expect("loadgen has a parent dir"))
}

pub fn build(opts: Options) -> Topology {
    let t0 = Instant::now();
    let t = Topology::build(bins(), opts).unwrap_or_else(|e| panic!("building the topology: {e:#}"));
    eprintln!("[{}] topology up in {:.2}s (dir {})", t.tag, t0.elapsed().as_secs_f64(), t.dir().display());
    t
}

/// Prints `what` with the time since `start`.
pub fn phase(start: Instant, what: &str) {
    eprintln!("[{:6.2}s] {what}", start.elapsed().as_secs_f64());
}

/// Prints a result line and appends it to `<target>/tmp/netns-results.txt`, so the figures
/// (detection times, shares) survive cargo's output capture of passing tests.
pub fn report(line: &str) {
    eprintln!("{line}");
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("netns-results.txt");
    let stamped = format!("{} {line}\n", netns::unix_ms());
    let _ = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| std::io::Write::write_all(&mut f, stamped.as_bytes()));
}

/// Where the booted-host tests keep the bookworm root filesystem between runs.
pub fn cache_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).parent().expect("target dir").join("nspawn")
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("repository root")
}

/// The project's packages (ingress, local-proxy): the newest `target/debian/<name>_*_amd64.deb`
/// of each, made with `scripts/package` when either is missing.
pub fn project_debs() -> Result<(PathBuf, PathBuf)> {
    let dir = repo_root().join("target/debian");
    let find = |name: &str| -> Option<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&format!("{name}_")) && n.ends_with("_amd64.deb"))
            })
            .collect();
        v.sort_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok());
        v.pop()
    };
    if find("ingress").is_none() || find("local-proxy").is_none() {
        eprintln!("no packages in {}: running scripts/package", dir.display());
        let script = repo_root().join("scripts/package").display().to_string();
        let out = netns::cmd::run_full(&[&script], None, Duration::from_secs(1500))?;
        if !out.status.success() {
            bail!("scripts/package failed ({}): {}\n{}", out.status, out.stderr.trim(), out.stdout.trim());
        }
    }
    Ok((
        find("ingress").context("scripts/package made no ingress .deb")?,
        find("local-proxy").context("scripts/package made no local-proxy .deb")?,
    ))
}
