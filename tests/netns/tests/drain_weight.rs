//! Runtime control in the topology, through `ingress ctl` as an operator would type it on the
//! ingress node: under 200 new connections a second through ingress1, a wrong token is
//! refused (401) and changes nothing; `ctl drain wan1` stops new connections going to wan1 at
//! once while connections already open on it keep exchanging lines; `ctl undrain wan1` brings
//! it back; `ctl weight` turning 3:1 into 1:3 changes the split within a second, and a SIGHUP
//! reload of the same file keeps both overrides (the split and `ctl status --json` say so).
//! Every connection is counted (none may fail).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use netns::ingress::IngressConfig;
use netns::loadgen::{LoadConfig, Record};
use netns::scenario::{self, path_counts};
use netns::topology::{addr, Options, Role, Topology};

/// How long each phase of the load lasts: 3:1, drained, 3:1 again, 1:3.
const PHASE: Duration = Duration::from_secs(3);

/// `ingress ctl ARGS...` on ingress1 with its config; returns (Unix ms before, after, output).
fn ctl(t: &Topology, args: &[&str]) -> (u64, u64, String) {
    let bin = t.bins.ingress.display().to_string();
    let conf = t.dir().join("ingress1.toml").display().to_string();
    let mut argv = vec![bin.as_str(), "-c", conf.as_str(), "ctl"];
    argv.extend_from_slice(args);
    let before = netns::unix_ms();
    let out = t.exec(Role::Ingress1, &argv, Duration::from_secs(10)).unwrap_or_else(|e| panic!("ctl {args:?}: {e:#}"));
    (before, netns::unix_ms(), out)
}

/// wan1's share of the ok connections started in `[from, to)`, and the counts.
fn share(t: &Topology, records: &[Record], from: u64, to: u64) -> (f64, u64, u64) {
    let c = path_counts(t, records, from, to);
    let (w1, w2) = (c.get("wan1").copied().unwrap_or(0), c.get("wan2").copied().unwrap_or(0));
    (w1 as f64 / (w1 + w2).max(1) as f64, w1, w2)
}

#[test]
fn ctl_drain_and_weight_under_load() {
    let start = Instant::now();
    let mut t = common::build(Options { mesh: false, backends: true });
    let token = t.dir().join("admin-token");
    std::fs::write(&token, "netns-drain-weight-token-0123456789\n").expect("write the token");
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).expect("token mode");
    let mut cfg = IngressConfig::standard(None);
    cfg.token_file = Some(token);
    t.start_ingress(Role::Ingress1, &cfg).expect("start ingress1");
    scenario::wait_paths(&t, Role::Ingress1, &[("wan1", true), ("wan2", true)], Duration::from_secs(10))
        .expect("both paths up");
    common::phase(start, "ingress1 up, control on");

    let target = vec![std::net::SocketAddr::from((addr::INGRESS1, addr::ECHO_PORT))];
    // 200 new connections a second for the four phases and the reload after them, stopped
    // once those are over (`ctl` runs take their time on a busy machine: a fixed length once
    // ended before the reload's window); the bound is only a backstop.
    let load = LoadConfig {
        targets: target.clone(),
        interval: Duration::from_millis(5),
        duration: PHASE * 8,
        connect_timeout: Duration::from_secs(2),
        io_timeout: Duration::from_secs(5),
        ..Default::default()
    };
    // Ten long connections opened before the drain, each exchanging a line every 100 ms until
    // a phase after the undrain (asked to stop then: `ctl` runs take their time on a busy
    // machine, and a fixed hold once ended before the undrain); the hold is only a backstop.
    let held = LoadConfig {
        targets: target,
        interval: Duration::from_millis(100),
        duration: Duration::from_secs(1),
        hold: PHASE * 8,
        hold_every: Duration::from_millis(100),
        connect_timeout: Duration::from_secs(2),
        io_timeout: Duration::from_secs(5),
        ..Default::default()
    };
    let held_run = t.start_load(Role::Client, "held", held).expect("start the held connections");
    let run = t.start_load(Role::Client, "load", load).expect("start loadgen");
    // A wrong token is refused (401) and changes nothing: the 3:1 split of this phase holds.
    let wrong = t.dir().join("wrong-token");
    std::fs::write(&wrong, "netns-wrong-token-0123456789abcdef\n").expect("write the wrong token");
    std::fs::set_permissions(&wrong, std::fs::Permissions::from_mode(0o600)).expect("token mode");
    let wrong_conf = t.dir().join("ingress1-wrong-token.toml");
    let good = cfg.token_file.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
    let text = std::fs::read_to_string(t.dir().join("ingress1.toml")).expect("ingress1.toml");
    std::fs::write(&wrong_conf, text.replace(&good, &wrong.display().to_string())).expect("write the config");
    let bin = t.bins.ingress.display().to_string();
    let argv = [bin.as_str(), "-c", wrong_conf.to_str().unwrap_or(""), "ctl", "drain", "wan1"];
    let refused = netns::cmd::exec(t.ns(Role::Ingress1), &argv, Duration::from_secs(10)).expect("run ctl");
    assert!(!refused.status.success() && refused.stderr.contains("401"), "{refused:?}");
    std::thread::sleep(PHASE);

    let (_, drained, out) = ctl(&t, &["drain", "wan1"]);
    assert!(out.contains("serving -> drained"), "{out}");
    common::phase(start, &format!("drained: {}", out.trim()));
    std::thread::sleep(PHASE);
    let (undrain_asked, undrained, out) = ctl(&t, &["undrain", "wan1"]);
    assert!(out.contains("drained -> serving"), "{out}");
    common::phase(start, &format!("undrained: {}", out.trim()));
    std::thread::sleep(PHASE);
    held_run.request_stop().expect("end the held connections");
    let (weight_asked, _, out1) = ctl(&t, &["weight", "wan1", "1"]);
    let (_, weighted, out2) = ctl(&t, &["weight", "wan2", "3"]);
    common::phase(start, &format!("weights: {} / {}", out1.trim(), out2.trim()));
    // Halfway through the last phase: reload the unchanged file; the overrides stay.
    std::thread::sleep(PHASE / 2);
    t.proc_mut("ingress1").expect("ingress1 runs").signal("HUP").expect("SIGHUP");
    let reloaded = netns::unix_ms();
    netns::wait::wait_until("the reload applied", Duration::from_secs(5), Duration::from_millis(20), || {
        let m = t.scrape(Role::Ingress1)?;
        let n = m.sum("ingress_config_reloads_total", &[("result", "applied")]);
        netns::wait::check(n >= 1.0, || format!("{n} reloads applied"))
    })
    .expect("SIGHUP applied");
    common::phase(start, "SIGHUP: reloaded");
    std::thread::sleep(PHASE / 2);
    run.request_stop().expect("stop the load");

    let r = run.finish(&mut t).expect("loadgen result");
    let h = held_run.finish(&mut t).expect("held loadgen result");
    let s = &r.summary;
    common::phase(start, &format!("load done: {} started, {} ok, {} failed", s.started, s.ok, s.failed));
    assert_eq!(s.failed, 0, "failed connections:\n{}", scenario::describe_failures(&r.records, s.start_ms));
    let end = s.end_ms;

    let before = share(&t, &r.records, 0, drained - PHASE.as_millis() as u64 / 2);
    let during = share(&t, &r.records, drained, undrain_asked);
    let back = share(&t, &r.records, undrained, weight_asked);
    let first_second = share(&t, &r.records, weighted, weighted + 1000);
    let after = share(&t, &r.records, weighted, end);
    let after_reload = share(&t, &r.records, reloaded + 100, end);
    let held_wan1: Vec<&Record> =
        h.records.iter().filter(|x| x.backend.as_deref().is_some_and(|b| t.path_of(b) == "wan1")).collect();
    common::report(&format!(
        "RESULT ctl drain/weight under 200 conn/s: 3:1 wan1 {:.3} ({}:{}); drained wan1 {} wan2 {}; undrained {:.3} ({}:{}); \
         weights 1:3 first second {:.3} ({}:{}), whole phase {:.3} ({}:{}), after a SIGHUP {:.3} ({}:{}); held \
         connections {} ok of {} ({} on wan1, opened before the drain, lasting {} ms)",
        before.0,
        before.1,
        before.2,
        during.1,
        during.2,
        back.0,
        back.1,
        back.2,
        first_second.0,
        first_second.1,
        first_second.2,
        after.0,
        after.1,
        after.2,
        after_reload.0,
        after_reload.1,
        after_reload.2,
        h.summary.ok,
        h.summary.started,
        held_wan1.len(),
        held_wan1.iter().map(|x| x.end_ms - x.start_ms).min().unwrap_or(0),
    ));

    assert!((0.6..=0.9).contains(&before.0), "3:1 before the drain: {before:?}");
    assert_eq!(during.1, 0, "new connections on wan1 while it was drained");
    assert!(during.2 >= 300, "the load went on over wan2 while wan1 was drained: {during:?}");
    assert!((0.6..=0.9).contains(&back.0), "3:1 again after the undrain: {back:?}");
    // 1:3 gives 0.25; the change doing nothing would leave 0.75.
    assert!((0.1..=0.4).contains(&first_second.0) && first_second.1 + first_second.2 >= 100, "{first_second:?}");
    assert!((0.1..=0.4).contains(&after.0), "1:3 after the weight change: {after:?}");
    assert!(
        (0.1..=0.4).contains(&after_reload.0) && after_reload.1 + after_reload.2 >= 100,
        "the overrides survive a reload of the same file: {after_reload:?}"
    );
    let status: serde_json::Value =
        serde_json::from_str(&ctl(&t, &["status", "--json"]).2).expect("ctl status --json prints JSON");
    let over = |name: &str| {
        status["pools"][0]["paths"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["name"] == name)
            .map(|p| (p["weight"].as_u64(), p["weight_override"].as_u64()))
    };
    assert_eq!(
        (over("wan1"), over("wan2")),
        (Some((Some(1), Some(1))), Some((Some(3), Some(3)))),
        "overrides after the SIGHUP: {status:#}"
    );
    // The long connections: every one ok, those on wan1 kept going through the whole drain.
    assert_eq!(h.summary.failed, 0, "{}", scenario::describe_failures(&h.records, h.summary.start_ms));
    assert!(!held_wan1.is_empty(), "no long connection landed on wan1: {:?}", h.summary.backends);
    for x in &held_wan1 {
        assert!(x.ok && x.start_ms < drained && x.end_ms > undrained, "a long wan1 connection: {x:?}");
    }
    common::phase(start, "done");
}
