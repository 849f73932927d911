//! The bandwidth policy against plain round robin on a bulk mix: wan2 shaped to 200 Mbit/s
//! (tbf on home's wan2 egress, the download direction), wan1 unshaped, equal weights. Eight
//! clients download 2 MB files back to back for 8 s through ingress1. Round robin gives each
//! path half the transfers, so the slow path holds clients back; the bandwidth policy counts
//! the transfers busy on each path and sends new ones where fewer pile up. Asserts that the
//! bandwidth policy ends with a larger share of the bytes on wan1 than round robin.

mod common;

use std::time::{Duration, Instant};

use netns::faults;
use netns::scenario;
use netns::services::{self, Listen};
use netns::topology::{addr, Options, Role};

const BULK_PORT: u16 = 9100;
const FILE_BYTES: u64 = 2_000_000;
const WORKERS: u32 = 8;
const SECONDS: u32 = 8;

fn config(policy: &str) -> String {
    format!(
        r#"
[admin]
listen = "127.0.0.1:9180"

[pool.home]
paths = [{{ name = "wan1", address = "{}", weight = 1 }}, {{ name = "wan2", address = "{}", weight = 1 }}]
balance = "{policy}"
health = {{ interval = "500ms", timeout = "400ms", rise = 2, fall = 2, port = {} }}

[[service]]
name = "bulk"
listen = ["0.0.0.0:{BULK_PORT}"]
pool = "home"
"#,
        addr::WAN1,
        addr::WAN2,
        addr::HEALTH_PORT
    )
}

/// Runs the download mix through ingress1 under `policy`; returns (wan1 bytes, wan2 bytes,
/// transfers completed).
fn run(t: &mut netns::topology::Topology, policy: &str) -> (f64, f64, u64) {
    services::start_ingress_toml(t, Role::Ingress1, &config(policy), &[Listen::Tcp(BULK_PORT)]).expect("ingress");
    scenario::wait_paths(t, Role::Ingress1, &[("wan1", true), ("wan2", true)], Duration::from_secs(10))
        .expect("both paths up");
    // Each worker loops until the deadline; every transfer that read the whole file counts.
    let script = format!(
        "end=$((SECONDS+{SECONDS})); for w in $(seq {WORKERS}); do \
           ( n=0; while [ $SECONDS -lt $end ]; do \
               b=$(socat -u TCP:{}:{BULK_PORT},connect-timeout=5 - | wc -c); \
               [ \"$b\" = {FILE_BYTES} ] && n=$((n+1)); done; echo $n ) & \
         done; wait",
        addr::INGRESS1
    );
    let out = t
        .exec(Role::Client, &["bash", "-c", &script], Duration::from_secs(u64::from(SECONDS) + 30))
        .expect("download mix");
    let done: u64 = out.split_whitespace().filter_map(|n| n.parse::<u64>().ok()).sum();
    let m = t.scrape(Role::Ingress1).expect("scrape");
    let bytes = |p: &str| m.sum("ingress_path_bytes_total", &[("path", p), ("direction", "down")]);
    let r = (bytes("wan1"), bytes("wan2"), done);
    t.stop(Role::Ingress1.as_str()).expect("stop ingress");
    r
}

#[test]
fn bandwidth_policy_moves_more_bytes_over_the_faster_wan_than_round_robin() {
    let start = Instant::now();
    let mut t = common::build(Options::default());
    let home = t.ns(Role::Home).to_string();
    for (name, ip) in [("bulk-wan1", addr::WAN1), ("bulk-wan2", addr::WAN2)] {
        let argv = [
            "socat".to_string(),
            format!("TCP-LISTEN:{BULK_PORT},bind={ip},fork,reuseaddr"),
            format!("SYSTEM:head -c {FILE_BYTES} /dev/zero"),
        ];
        t.spawn(Role::Home, name, &argv).expect("bulk source");
    }
    faults::tbf(&home, "wan2", "200mbit", "256kb", "50ms").expect("shape wan2");
    common::phase(start, "bulk sources up, wan2 shaped to 200 Mbit/s");

    let mut shares = Vec::new();
    for policy in ["round_robin", "bandwidth"] {
        let (w1, w2, done) = run(&mut t, policy);
        let share = w1 / (w1 + w2);
        common::report(&format!(
            "RESULT bulk mix, equal weights, wan2 at 200 Mbit/s, {policy}: wan1 {:.0} MB, wan2 {:.0} MB, \
             wan1 share {share:.3}, {done} transfers of {} MB in {SECONDS} s",
            w1 / 1e6,
            w2 / 1e6,
            FILE_BYTES / 1_000_000
        ));
        assert!(done > 0, "{policy}: no transfer completed");
        assert!(w2 > 0.0, "{policy}: wan2 carried nothing (it is healthy and must get some)");
        shares.push(share);
    }
    faults::tbf_clear(&home, "wan2").expect("unshape");
    assert!(
        shares[1] > shares[0] + 0.05,
        "the bandwidth policy should put more bytes on the unshaped wan1: round robin {:.3}, bandwidth {:.3}",
        shares[0],
        shares[1]
    );
    common::phase(start, "done");
}
