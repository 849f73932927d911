//! Network-namespace harness: hosts made of network namespaces and veth links, real processes
//! (yggdrasil routers, the `ingress` binary, backends, load generators) run inside them, and
//! faults injected with `ip link`, nftables and `tc` while traffic flows.
//!
//! Invariants: every namespace, process and temp dir is owned by an RAII guard and removed on
//! drop, also while panicking; every name carries the `lbt<pid>x<n>` tag of the run that made it
//! (so parallel and aborted runs never collide, and [`netns::cleanup_stale`] can remove what a
//! dead run left); every wait is bounded. Traffic only goes to addresses inside the namespaces.
#![forbid(unsafe_code)]

pub mod aptrepo;
pub mod browser;
pub mod cmd;
pub mod delay;
pub mod echo;
pub mod faults;
pub mod fdstore;
pub mod ingress;
pub mod knot;
pub mod loadgen;
pub mod metrics;
pub mod netns;
pub mod netprobe;
pub mod nspawn;
pub mod preflight;
pub mod proc_guard;
pub mod rollout;
pub mod scenario;
pub mod services;
pub mod tempdir;
pub mod tls;
pub mod topology;
pub mod turn;
pub mod turn_home;
pub mod udp_echo;
pub mod udpflow;
pub mod wait;
pub mod ygg;

use std::sync::atomic::{AtomicU32, Ordering};

/// Prefix of every name this harness creates: `lbt` then the pid of the test process.
pub const PREFIX: &str = "lbt";

/// A tag unique within this machine while this process lives: `lbt<pid>x<n>`.
pub fn unique_tag() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{PREFIX}{}x{n}", std::process::id())
}

/// Milliseconds since the Unix epoch (shared clock between the tests and `loadgen` output).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
