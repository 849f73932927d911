//! Shared by the scenario tests: where the binaries are, a timer that prints phases.
#![allow(dead_code)]

use std::path::Path;
use std::time::Instant;

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
