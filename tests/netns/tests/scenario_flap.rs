//! Scenario: wan1 goes bad in bursts, not dead — nftables drops 30 % of its packets (each way)
//! for 2 s out of every 4 s while 400 new connections a second go through ingress1. The
//! ingress must hide every failed connect, and flap damping must keep wan1 from going down and
//! up at every burst: after the first bursts it is held down (it keeps failing) instead of
//! taking a fresh round of slow connects each time it comes back. Counted from ingress1's log
//! (one "state change" line per change, as an operator's alerting sees them): wan1's changes
//! until it is first held (learning that the path flaps: at most 4) and after that (at most
//! one, its release). While wan1 is held no new connection may be placed on it (wan2 is clean
//! and up), so no slow request after the first hold is wan1's doing.
//!
//! Slow requests (> 200 ms) are printed per 16 s and per path, split into those slow already
//! in the client's connect to ingress1 (nothing to do with the WANs) and those slow behind it;
//! they are not asserted on (wall time on 2 shared cores). The ignored `no_loss_control` runs
//! the same load on the same topology with no loss at all: the slow requests the topology
//! produces without any fault, the baseline the figures here are judged against.
//!
//! Measured (2026-12-01, 2 cores): the control has 0 slow requests during its 40 s of
//! "bursts". On a quiet machine (load at most 2.3) the bursts gave 60 slow requests, all on
//! wan1 before it was held, 0 after the hold, 4 in the tail. With other sessions' work on the cores (load 2.5-3.6) three runs gave
//! 1,057-1,340 during the bursts and 2,422-3,142 in the tail, all on wan2 and slow behind the
//! client's connect (1-3 s and more), none on wan1 after its hold: not failover. The ~20,000
//! TIME-WAIT sockets ingress1 holds towards wan2 at the end were there in both (the cause:
//! see below, not contention as first thought).
//!
//! Full length (2026-12-02, a held path's failed probes adding penalty; figures in
//! bench/results/2026-12-02-bursty-loss.md): 244,000 started, 0 failed, wan1's state changes
//! per minute [3, 0, 0, 0, 0, 0, 0, 0, 0, 0] (held from the second burst to the end), but
//! ~7,300-8,900 slow requests a minute, all but 64 on clean wan2 behind the client's connect,
//! in waves with a ~64 s period from ~30 s after wan2 took all the load. Not the echo
//! server's accept queue: `TcpExtListenOverflows` and `ListenDrops` in home stayed 0
//! throughout (and in CI-length runs sampled every 3 s); not SYN loss: ingress1's
//! `TcpExtTCPSynRetrans` stayed 0. They are ingress1's TIME-WAIT: the no-loss control has 0
//! for 40 s, then 1,063 in its tail (~44 s into the load, ~20,000 sockets in TIME-WAIT
//! towards one address and port), and with `net.ipv4.tcp_tw_reuse = 1` set in ingress1's
//! namespace the bursts cost 35 slow requests, all on wan1 before its hold, and the tail 0
//! (2026-12-02). The ingress role now sets it on every node (`ingress_sysctls`) and the
//! harness sets it in ingress1 and ingress2, as deployed.
//!
//! CI (2026-12-02, 15 s half-life then) saw wan1 fall in the first burst and again 16 s later,
//! penalty 1000 × 2^(-16/15) + 1000 = 1477, short of 1500: down, up, down, up, then held at a
//! third fall, 5 changes. The default half-life is 30 s since: falls within half a minute hold.
//!
//! Since 2026-12-02 (later) a path whose traffic says it delivers badly, or that fell
//! recently, is probed unraced and at the fast pace: wan1 falls, comes back and is held
//! within the first burst. Full length: slow requests per minute [13, 0, 0, 0, 0, 0, 0, 0, 0,
//! 0], changes [3, 0, ...]; CI length 9-13 slow (22-45 before). The per-burst breakdown the
//! test prints (wan1's connections and slow ones by time since each burst's start) shows
//! what is left: the first 50-250 ms of the first burst, before any connect was raced.
//!
//! The CI test runs 10 bursts (40 s); `scripts/bursty-loss` runs the ignored full-length one
//! (150 bursts, 10 minutes) and prints the same figures, per minute as well.
//!
//! Since 2026-12-06 a held path gains penalty from its falls, not from each failed probe:
//! the bursts still make wan1 fall again and again (CI length: held from the second burst to
//! the end, penalty ~7,300 at the end, 0 failed, 20 slow). `light_loss_after_a_flap_*` shows
//! what counting every failed probe cost: a held wan1 losing 2 % of its packets never came
//! back (penalty ~5,300 after a minute); now it is released ~10 s into the loss.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use netns::ingress::IngressConfig;
use netns::loadgen::{LoadConfig, Record};
use netns::scenario::{self, path_counts};
use netns::topology::{addr, Options, Role, Topology, Wan};
use netns::unix_ms;

const LOSS_PCT: u8 = 30;
const LOSS_ON: Duration = Duration::from_secs(2);
const PERIOD: Duration = Duration::from_secs(4);
/// Clean load before the first burst and after the last.
const LEAD: Duration = Duration::from_secs(4);
const TAIL: Duration = Duration::from_secs(6);
/// A request this slow (connect to echo) is counted slow.
const SLOW_MS: f64 = 200.0;
/// A connection the client started this soon after wan1 was held may have been placed
/// before the hold (the ingress accepts, then picks).
const HOLD_GRACE_MS: u64 = 50;
/// Edges of the windows (ms since a burst's start) the per-burst breakdown counts in.
const BURST_WINDOWS_MS: [u64; 7] = [0, 50, 100, 250, 500, 2000, 4000];

#[test]
fn bursty_loss_on_wan1_is_damped_not_flapped() {
    let f = bursty_loss(10, LOSS_PCT);
    f.assert_damped();
}

#[test]
#[ignore = "10 minutes: run by scripts/bursty-loss"]
fn bursty_loss_on_wan1_full_length() {
    let f = bursty_loss(150, LOSS_PCT);
    f.assert_damped();
}

/// The same load and topology with no loss at all: what the topology itself costs.
#[test]
#[ignore = "a control for the figures of the bursty-loss runs (50 s): cargo test -p netns --test scenario_flap -- --ignored no_loss_control"]
fn no_loss_control() {
    let f = bursty_loss(10, 0);
    assert_eq!(f.failed, 0, "failed connections with no fault at all");
    assert!(f.changes.is_empty(), "wan1 changed state with no fault at all: {:#?}", f.changes);
}

/// Light steady loss after a flap: wan1 is cut twice, 3 s apart (two falls: held), then loses
/// 2 % of its packets each way for the rest of the run, while 50 new connections a second go
/// through ingress1. A held path is probed unraced at the fast pace, so about 4 % of its
/// probes fail, one every few seconds, but two in a row (a fall, with `fall = 2`) only about
/// once a minute: it must be released once its penalty has decayed and then take new
/// connections again, as an unheld path with the same loss keeps serving. When each failed
/// probe of a held path added penalty it stayed held for good (penalty at the ceiling).
/// Half-life 10 s, so the hold after two falls is ~13 s.
#[test]
fn light_loss_after_a_flap_does_not_keep_wan1_held() {
    const HALF_LIFE: Duration = Duration::from_secs(10);
    const CUT: Duration = Duration::from_millis(1500);
    const LIGHT_LOSS_PCT: u8 = 2;
    /// Most time from the light loss's start to wan1's release: the hold (~13 s) plus room
    /// for a fall or two meanwhile (each adds ~10 s).
    const RELEASE_WITHIN: Duration = Duration::from_secs(60);
    const AFTER_RELEASE: Duration = Duration::from_secs(6);
    let start = Instant::now();
    let mut t = common::build(Options::default());
    let mut cfg = IngressConfig::standard(t.home_mesh_addr());
    cfg.health.flap_half_life = Some(HALF_LIFE);
    t.start_ingress(Role::Ingress1, &cfg).expect("start ingress1");
    scenario::wait_paths(&t, Role::Ingress1, &[("wan1", true), ("wan2", true)], Duration::from_secs(10))
        .expect("wan1 and wan2 up");
    let load = LoadConfig {
        targets: vec![std::net::SocketAddr::from((addr::INGRESS1, addr::ECHO_PORT))],
        interval: Duration::from_millis(20),
        duration: CUT * 2 + Duration::from_secs(3) + RELEASE_WITHIN + AFTER_RELEASE + Duration::from_secs(2),
        connect_timeout: Duration::from_secs(3),
        io_timeout: Duration::from_secs(15),
        rotate: false,
        ..Default::default()
    };
    let run = t.start_load(Role::Client, "load", load).expect("start loadgen");
    common::phase(start, "ingress1 up, load running");
    let held = |t: &mut Topology| wan1_changes(t).iter().any(|c| c.to == "held");
    let result: anyhow::Result<(u64, Option<u64>)> = (|| {
        for _ in 0..2 {
            t.loss(Wan::Wan1, 100)?;
            std::thread::sleep(CUT);
            t.loss(Wan::Wan1, 0)?;
            std::thread::sleep(Duration::from_millis(1500));
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while !held(&mut t) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        anyhow::ensure!(held(&mut t), "wan1 was not held after two cuts: {:#?}", wan1_changes(&mut t));
        t.loss(Wan::Wan1, LIGHT_LOSS_PCT)?;
        let light_from = unix_ms();
        common::phase(start, &format!("wan1 held; {LIGHT_LOSS_PCT} % loss each way from now on"));
        let released = |t: &mut Topology| {
            wan1_changes(t).iter().find(|c| c.from == "held" && c.at_ms >= light_from).map(|c| c.at_ms)
        };
        let deadline = Instant::now() + RELEASE_WITHIN;
        while released(&mut t).is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(250));
        }
        let at = released(&mut t);
        if at.is_some() {
            std::thread::sleep(AFTER_RELEASE);
        }
        Ok((light_from, at))
    })();
    let _ = t.loss(Wan::Wan1, 0);
    // The load's duration covers the longest wait; it ends as soon as the test has seen enough.
    let _ = run.request_stop();
    let (light_from, released_ms) = result.expect("cuts and light loss on wan1");
    let r = run.finish(&mut t).expect("loadgen result");
    let changes = wan1_changes(&mut t);
    let m = t.scrape(Role::Ingress1).ok();
    let metric = |name: &str| m.as_ref().and_then(|m| m.get(name, &[("path", "wan1")]));
    let on_wan1_after =
        released_ms.map(|at| path_counts(&t, &r.records, at + 2000, u64::MAX).get("wan1").copied().unwrap_or(0));
    common::report(&format!(
        "RESULT light loss after a flap ({LIGHT_LOSS_PCT} % each way, half-life {HALF_LIFE:?}): released {:?} ms after the loss began; \
         new connections on wan1 from 2 s after the release {on_wan1_after:?}; {} started, {} failed; penalty {:?}, \
         probe failures {:?}",
        released_ms.map(|at| at.saturating_sub(light_from)),
        r.summary.started,
        r.summary.failed,
        metric("ingress_path_flap_penalty"),
        metric("ingress_path_probe_failures_total"),
    ));
    for c in &changes {
        eprintln!("  {}", c.line);
    }
    assert!(
        released_ms.is_some(),
        "wan1 still held {RELEASE_WITHIN:?} into {LIGHT_LOSS_PCT} % loss: {:#?}",
        changes.iter().map(|c| &c.line).collect::<Vec<_>>()
    );
    assert!(on_wan1_after.unwrap_or(0) > 0, "no new connection on wan1 after its release");
    assert_eq!(r.summary.failed, 0, "failed connections:\n{}", scenario::describe_failures(&r.records, 0));
    common::phase(start, "done");
}

/// One of wan1's state changes, from ingress1's log.
#[derive(Debug, Clone)]
struct Change {
    at_ms: u64,
    from: String,
    to: String,
    line: String,
}

/// What a run measured, for the assertions.
struct Figures {
    failed: u64,
    /// wan1's changes during the bursts: until it was first held, and after that.
    learning: usize,
    later: usize,
    changes: Vec<Change>,
    /// New connections placed on wan1 while it was held (after the grace).
    on_wan1_while_held: usize,
    /// wan2's state changes and failed connects (ingress1): while wan2 neither changed state
    /// nor failed a connect, nothing may go to a held wan1.
    wan2_changes: usize,
    wan2_failures: f64,
}

impl Figures {
    fn assert_damped(&self) {
        let all: Vec<&String> = self.changes.iter().map(|c| &c.line).collect();
        assert_eq!(self.failed, 0, "failed connections (listed above)");
        assert!(
            self.later <= 1,
            "wan1 changed state {} times after it was first held (at most one wanted): {all:#?}",
            self.later
        );
        assert!(self.learning <= 4, "wan1 changed state {} times before it was held: {all:#?}", self.learning);
        // A held path still takes a retry after a failed attempt elsewhere, and serves while
        // no other WAN path is up: only with wan2 clean throughout is the answer exact.
        if self.wan2_changes == 0 && self.wan2_failures == 0.0 {
            assert_eq!(
                self.on_wan1_while_held, 0,
                "new connections were placed on wan1 while it was held down and wan2 was up and failed nothing"
            );
        } else {
            eprintln!(
                "not asserted: wan2 changed state {} times and failed {} connects (a starved machine?), so {} \
                 connections on held wan1 may be retries",
                self.wan2_changes, self.wan2_failures, self.on_wan1_while_held
            );
        }
    }
}

/// Unix ms of a log line's RFC 3339 UTC timestamp (`2026-12-01T21:38:56.123456Z ...`).
fn log_time_ms(line: &str) -> Option<u64> {
    let ts = line.split_whitespace().next()?.strip_suffix('Z')?;
    let (date, time) = ts.split_once('T')?;
    let d: Vec<i64> = date.split('-').map(str::parse).collect::<Result<_, _>>().ok()?;
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let t: Vec<i64> = hms.split(':').map(str::parse).collect::<Result<_, _>>().ok()?;
    if d.len() != 3 || t.len() != 3 {
        return None;
    }
    // Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's days_from_civil).
    let (y, m, day) = (if d[1] <= 2 { d[0] - 1 } else { d[0] }, d[1], d[2]);
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    let ms_frac: i64 = format!("{:0<3}", &frac[..frac.len().min(3)]).parse().ok()?;
    let ms = ((days * 24 + t[0]) * 60 + t[1]) * 60_000 + t[2] * 1000 + ms_frac;
    u64::try_from(ms).ok()
}

/// A `key=value` field of a log line.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace().find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

/// wan1's "state change" log lines in ingress1 so far.
fn wan1_changes(t: &mut Topology) -> Vec<Change> {
    changes_of(t, "wan1")
}

/// A path's "state change" log lines in ingress1 so far.
fn changes_of(t: &mut Topology, path: &str) -> Vec<Change> {
    let log = t.proc_mut(Role::Ingress1.as_str()).map(|p| p.stderr()).unwrap_or_default();
    let tag = format!("path={path} ");
    log.lines()
        .filter(|l| l.contains("state change") && l.contains(&tag))
        .map(|l| Change {
            at_ms: log_time_ms(l).unwrap_or(0),
            from: field(l, "from").unwrap_or("?").to_owned(),
            to: field(l, "to").unwrap_or("?").to_owned(),
            line: l.to_owned(),
        })
        .collect()
}

/// The spans (Unix ms, end exclusive) during which wan1 was held, from its changes.
fn held_spans(changes: &[Change]) -> Vec<(u64, u64)> {
    let mut spans = Vec::new();
    let mut since = None;
    for c in changes {
        if c.to == "held" {
            since = since.or(Some(c.at_ms));
        } else if c.from == "held" {
            if let Some(s) = since.take() {
                spans.push((s, c.at_ms));
            }
        }
    }
    if let Some(s) = since {
        spans.push((s, u64::MAX));
    }
    spans
}

/// Sockets in TIME-WAIT in `role` (the 4-tuples a busy client or proxy cannot reuse yet).
fn time_wait(t: &Topology, role: Role) -> Option<usize> {
    t.exec(role, &["ss", "-Htan", "state", "time-wait"], Duration::from_secs(10)).ok().map(|o| o.lines().count())
}

fn bursty_loss(bursts: u32, loss_pct: u8) -> Figures {
    let start = Instant::now();
    let mut t = common::build(Options::default());
    let cfg = IngressConfig::standard(t.home_mesh_addr());
    t.start_ingress(Role::Ingress1, &cfg).expect("start ingress1");
    scenario::wait_paths(&t, Role::Ingress1, &[("wan1", true), ("wan2", true)], Duration::from_secs(10))
        .expect("wan1 and wan2 up");
    common::phase(start, "ingress1 up");

    let loss_time = PERIOD * bursts;
    let duration = LEAD + loss_time + TAIL;
    // Two clients, a new connection every 5 ms each: 400 a second, all through ingress1.
    let load = LoadConfig {
        targets: vec![std::net::SocketAddr::from((addr::INGRESS1, addr::ECHO_PORT))],
        interval: Duration::from_millis(5),
        duration,
        connect_timeout: Duration::from_secs(3),
        // Lost segments are retransmitted (200 ms, 400 ms, ...): give exchanges time.
        io_timeout: Duration::from_secs(15),
        slow: Duration::from_millis(SLOW_MS as u64),
        rotate: false,
        ..Default::default()
    };
    let runs = [
        t.start_load(Role::Client, "load-a", load.clone()).expect("start loadgen a"),
        t.start_load(Role::Client, "load-b", load).expect("start loadgen b"),
    ];
    let t0 = Instant::now();
    let sleep_until = |at: Duration| {
        if let Some(d) = at.checked_sub(t0.elapsed()) {
            std::thread::sleep(d);
        }
    };
    sleep_until(LEAD);
    let loss_start_ms = unix_ms();
    let before = wan1_changes(&mut t).len();
    // The first quarter of the bursts (at least two) is for learning that wan1 flaps.
    let learn = (bursts / 4).max(2);
    let mut after_learning = before;
    let mut per_burst = Vec::new();
    let mut burst_starts = Vec::new();
    let result: anyhow::Result<()> = (|| {
        for i in 0..bursts {
            let at = LEAD + PERIOD * i;
            sleep_until(at);
            if i == learn {
                after_learning = wan1_changes(&mut t).len();
            }
            t.loss(Wan::Wan1, loss_pct)?;
            burst_starts.push(unix_ms());
            sleep_until(at + LOSS_ON);
            t.loss(Wan::Wan1, 0)?;
            per_burst.push(wan1_changes(&mut t).len());
        }
        Ok(())
    })();
    // Never leave the loss behind, whatever happened.
    let _ = t.loss(Wan::Wan1, 0);
    result.expect("loss bursts on wan1");
    let loss_end_ms = unix_ms();
    let at_loss_end = wan1_changes(&mut t).len();
    common::phase(start, &format!("{bursts} bursts of {loss_pct} % loss done"));
    let mut records: Vec<Record> = Vec::new();
    let (mut failed, mut started) = (0, 0);
    for r in runs {
        let r = r.finish(&mut t).expect("loadgen result");
        failed += r.summary.failed;
        started += r.summary.started;
        records.extend(r.records);
    }
    // After the load: dumping some 20,000 sockets must not stall the run it measures.
    let (tw_ingress, tw_client) = (time_wait(&t, Role::Ingress1), time_wait(&t, Role::Client));
    let changes = wan1_changes(&mut t);
    let wan2_changes = changes_of(&mut t, "wan2");
    assert!(
        changes.iter().all(|c| c.at_ms > 0),
        "a state change line without a readable timestamp: {:#?}",
        changes.iter().map(|c| &c.line).collect::<Vec<_>>()
    );
    let m = t.scrape(Role::Ingress1).ok();
    let metric = |name: &str, path: &str| m.as_ref().and_then(|m| m.get(name, &[("path", path)]));

    let is_slow = |r: &&Record| r.ok && r.latency_ms > SLOW_MS;
    let slow_in =
        |from: u64, to: u64| records.iter().filter(is_slow).filter(|r| r.start_ms >= from && r.start_ms < to).count();
    let windows = |len: u64| -> Vec<usize> {
        let n = (loss_end_ms - loss_start_ms).div_ceil(len);
        (0..n).map(|w| slow_in(loss_start_ms + w * len, (loss_start_ms + (w + 1) * len).min(loss_end_ms))).collect()
    };
    let share = |from: u64, to: u64| {
        let c = path_counts(&t, &records, from, to);
        let (a, b) = (c.get("wan1").copied().unwrap_or(0) as f64, c.get("wan2").copied().unwrap_or(0) as f64);
        a / (a + b).max(1.0)
    };
    // Changes during the bursts, split at the first hold.
    let during = &changes[before..at_loss_end];
    let first_held = during.iter().position(|c| c.to == "held").map_or(during.len(), |i| i + 1);
    let (learning, later) = (first_held, during.len() - first_held);
    let first_held_ms = during.iter().find(|c| c.to == "held").map(|c| c.at_ms);
    // Where the slow requests went: per path, and whether the client's own connect to
    // ingress1 was already slow (a SYN dropped or delayed before the proxy).
    let mut slow_by: BTreeMap<String, usize> = BTreeMap::new();
    let mut buckets = [0usize; 4];
    for r in records.iter().filter(is_slow).filter(|r| r.start_ms >= loss_start_ms) {
        let path = r.backend.as_deref().map(|b| t.path_of(b)).unwrap_or("unknown");
        let part = if r.connect_ms > SLOW_MS { "client connect" } else { "behind it" };
        *slow_by.entry(format!("{path}/{part}")).or_default() += 1;
        let b = match r.latency_ms {
            l if l < 400.0 => 0,
            l if l < 1000.0 => 1,
            l if l < 3000.0 => 2,
            _ => 3,
        };
        buckets[b] += 1;
    }
    let slow_on_wan1_after_hold = first_held_ms.map(|h| {
        records
            .iter()
            .filter(is_slow)
            .filter(|r| r.start_ms >= h && r.backend.as_deref().is_some_and(|b| t.path_of(b) == "wan1"))
            .count()
    });
    let spans = held_spans(&changes);
    let on_wan1_while_held = records
        .iter()
        .filter(|r| r.ok && r.backend.as_deref().is_some_and(|b| t.path_of(b) == "wan1"))
        .filter(|r| spans.iter().any(|&(s, e)| r.start_ms >= s + HOLD_GRACE_MS && r.start_ms < e))
        .count();
    // Per minute of loss (the bounds are per minute): changes, slow requests, share.
    let minutes = (loss_end_ms - loss_start_ms).div_ceil(60_000);
    let per_minute: Vec<(usize, usize, String)> = (0..minutes)
        .map(|i| {
            let (from, to) = (loss_start_ms + i * 60_000, (loss_start_ms + (i + 1) * 60_000).min(loss_end_ms));
            let n = changes.iter().filter(|c| c.at_ms >= from && c.at_ms < to).count();
            (n, slow_in(from, to), format!("{:.3}", share(from, to)))
        })
        .collect();
    let after_first_minute_max = per_minute.iter().skip(1).map(|m| m.0).max();
    common::report(&format!(
        "RESULT bursty loss ({loss_pct} % for {}s every {}s, {bursts} bursts, 400 conn/s): {started} started, {failed} failed; \
         wan1 state changes: {learning} until first held, {later} after that during the bursts ({} in the first {learn} bursts, {} in the {} after), {} in the clean tail; \
         cumulative after each burst {:?}; slow (> {SLOW_MS} ms) during the bursts: {} ({:?} per 16 s), in the tail {}; \
         slow during the bursts by path/part {slow_by:?}, by latency [<400, <1000, <3000, more] ms {buckets:?}; \
         slow on wan1 after its first hold {slow_on_wan1_after_hold:?}; new connections on wan1 while held {on_wan1_while_held} (held spans {}); \
         per minute (changes, slow, wan1 share) {per_minute:?}, most changes in a minute after the first {after_first_minute_max:?}; \
         wan1 share: {:.3} before, {:.3} during, {:.3} in the tail; at the end wan1 up {:?}, held {:?}, penalty {:?}, quality loss {:?}; \
         hedges wan1 {:?} wan2 {:?}, connect failures wan1 {:?} wan2 {:?}, wan2 state changes {}; TIME-WAIT sockets at the end: ingress1 {tw_ingress:?}, client {tw_client:?}",
        LOSS_ON.as_secs(),
        PERIOD.as_secs(),
        after_learning - before,
        at_loss_end - after_learning,
        bursts - learn,
        changes.len() - at_loss_end,
        per_burst.iter().map(|n| n - before).collect::<Vec<_>>(),
        slow_in(loss_start_ms, loss_end_ms),
        windows(16_000),
        slow_in(loss_end_ms, u64::MAX),
        spans.len(),
        share(0, loss_start_ms),
        share(loss_start_ms, loss_end_ms),
        share(loss_end_ms, u64::MAX),
        metric("ingress_path_up", "wan1"),
        metric("ingress_path_held", "wan1"),
        metric("ingress_path_flap_penalty", "wan1"),
        metric("ingress_path_quality_loss", "wan1"),
        metric("ingress_path_hedges_total", "wan1"),
        metric("ingress_path_hedges_total", "wan2"),
        metric("ingress_path_connect_failures_total", "wan1"),
        metric("ingress_path_connect_failures_total", "wan2"),
        wan2_changes.len(),
    ));
    for c in changes.iter().chain(&wan2_changes) {
        eprintln!("  {}", c.line);
    }
    // Where in a burst wan1's slow requests start, until its hold and one burst beyond: the
    // share wan1 still takes at each moment of a burst is what the damping and the quality
    // signal have to bring down.
    eprintln!("wan1 per burst until its first hold, by time since the burst's start: placed (slow)");
    let on_wan1: Vec<&Record> =
        records.iter().filter(|r| r.ok && r.backend.as_deref().is_some_and(|b| t.path_of(b) == "wan1")).collect();
    for (i, &b) in burst_starts.iter().enumerate() {
        if first_held_ms.is_some_and(|h| b > h + PERIOD.as_millis() as u64) {
            break;
        }
        let cells: Vec<String> = BURST_WINDOWS_MS
            .windows(2)
            .map(|w| {
                let (mut placed, mut slow) = (0, 0);
                for r in on_wan1.iter().filter(|r| r.start_ms >= b + w[0] && r.start_ms < b + w[1]) {
                    placed += 1;
                    slow += usize::from(is_slow(r));
                }
                format!("{}-{} ms {placed} ({slow})", w[0], w[1])
            })
            .collect();
        eprintln!("  burst {}: {}", i + 1, cells.join(", "));
    }
    if failed > 0 {
        eprintln!("failed connections:\n{}", scenario::describe_failures(&records, loss_start_ms));
    }
    common::phase(start, "done");
    let wan2_failures = metric("ingress_path_connect_failures_total", "wan2").unwrap_or(f64::NAN);
    Figures { failed, learning, later, changes, on_wan1_while_held, wan2_changes: wan2_changes.len(), wan2_failures }
}
