//! TURN relay under load through the ingress with stock coturn on a LAN host (issue 18; the
//! set-up is `netns::turn_home`, the functional tests are `turn_home.rs`): 20 allocations
//! relaying 100 datagrams/s each to `turnutils_peer` in stranger for 15 s (`TURN_LOAD_SECS`
//! for longer, e.g. 30), loss printed.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use netns::topology::{addr, Options};
use netns::turn_home::{self as home, prime_relay_range, start_peer, uclient, uclient_argv};

#[test]
fn turn_relay_under_load() {
    let start = Instant::now();
    let secs: u32 = std::env::var("TURN_LOAD_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(15);
    let mut t = common::build(Options { mesh: false, backends: true });
    let dir = PathBuf::from(env!("CARGO_BIN_EXE_loadgen")).parent().expect("bin dir").to_path_buf();
    let lp = home::local_proxy_bin(&dir).expect("local-proxy binary");
    home::start(&mut t, &lp).unwrap_or_else(|e| panic!("coturn, local proxy, ingress: {e:#}"));
    common::phase(start, "turnserver in lan, local proxy in home, ingress up");
    prime_relay_range(&t, addr::STRANGER).expect("prime the relay range");
    start_peer(&mut t).expect("turnutils_peer");
    let (clients, messages) = (20, secs * 100);
    let t0 = Instant::now();
    let (r, out) = uclient(&t, &uclient_argv(clients, messages, &[]), Duration::from_secs(u64::from(secs) + 60))
        .unwrap_or_else(|e| panic!("{e:#}"));
    common::report(&format!(
        "RESULT turn_home load {clients} allocations x 100/s for {secs} s: {} sent, {} received, {} lost ({:.2}%), \
         send dropped {}, rtt avg {} ms max {} ms, {:.1} s",
        r.send_msgs,
        r.recv_msgs,
        r.lost,
        r.lost_pct,
        r.send_dropped,
        r.rtt_avg_ms,
        r.rtt_max_ms,
        t0.elapsed().as_secs_f64()
    ));
    let m = home::lp_metrics(&t).expect("scrape the local proxy");
    let relay_in = m.sum("local_proxy_udp_datagrams_total", &[("stream", "turn-relay"), ("direction", "in")]);
    let relay_out = m.sum("local_proxy_udp_datagrams_total", &[("stream", "turn-relay"), ("direction", "out")]);
    common::report(&format!(
        "RESULT turn_home load: the local proxy's relay stream carried {relay_in} in, {relay_out} out"
    ));
    assert_eq!(r.send_msgs, u64::from(clients * messages), "messages sent\n{out}");
    assert!(r.lost_pct < 5.0, "lost {}% under load\n{out}", r.lost_pct);
    common::phase(start, "done");
}
