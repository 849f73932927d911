//! The local proxy renews its ACME certificate itself, in the namespace topology, with Debian's
//! `pebble` (on the `stranger` host, as in acme_ingress) issuing 30-second certificates:
//!
//! - a.test resolves to ingress1; a continuous HTTPS load from the client through ingress1
//!   (`curl --cacert pebble-root`, a new TLS connection each) reads the served certificate's
//!   serial and notAfter on every request;
//! - the certificate is replaced two thirds into its life (the client sees the new serial) with
//!   no restart of the local proxy and not one failed request;
//! - then pebble is stopped (SIGSTOP) before the next renewal point: the attempt times out
//!   (`order_timeout = "5s"`), the failure shows in `local_proxy_acme_consecutive_failures`,
//!   and the client is still served the old certificate without a failure; after SIGCONT the
//!   retry renews it before the old one expires.

mod acme;

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use acme::*;
use anyhow::{bail, Context, Result};
use netns::cmd;
use netns::metrics;
use netns::topology::{addr, Role, Topology};

/// pebble's certificate lifetime: renewal is due 20 s into each certificate's life.
const VALIDITY_SECS: u64 = 30;

/// A certificate the load's client saw: when first (seconds since the start), serial, notAfter.
#[derive(Clone, Debug)]
struct Seen {
    at: f64,
    serial: String,
    not_after: String,
}

/// `curl --cacert pebble-root https://a.test/hello` through ingress1 in a loop, each on a new
/// connection, until stopped; counts the outcomes and records each new certificate served.
struct Load {
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    last_error: Arc<Mutex<String>>,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Load {
    fn start(t: &Topology, root: &std::path::Path, start: Instant) -> Load {
        let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (last_error, seen) = (Arc::new(Mutex::new(String::new())), Arc::new(Mutex::new(Vec::new())));
        let stop = Arc::new(AtomicBool::new(false));
        let (o, f, e, s, halt) = (ok.clone(), failed.clone(), last_error.clone(), seen.clone(), stop.clone());
        let ns = t.ns(Role::Client).to_string();
        let root = root.display().to_string();
        let resolve = format!("a.test:443:{}", addr::INGRESS1);
        let thread = std::thread::spawn(move || {
            while !halt.load(Ordering::Relaxed) {
                let argv = [
                    "curl",
                    "-sS",
                    "-o",
                    "/dev/null",
                    "--max-time",
                    "5",
                    "--resolve",
                    &resolve,
                    "--cacert",
                    &root,
                    "-w",
                    "%{http_code}\n%{certs}",
                    "https://a.test/hello",
                ];
                match cmd::exec(&ns, &argv, Duration::from_secs(10)) {
                    Ok(out) if out.status.success() && out.stdout.starts_with("200\n") => {
                        o.fetch_add(1, Ordering::Relaxed);
                        // The leaf comes first in curl's certificate listing.
                        let field =
                            |k: &str| out.stdout.lines().find_map(|l| l.strip_prefix(k)).map(|v| v.trim().to_string());
                        if let (Some(serial), Some(not_after)) = (field("Serial Number:"), field("Expire date:")) {
                            let mut seen = s.lock().unwrap_or_else(|p| p.into_inner());
                            if seen.last().map(|l: &Seen| &l.serial) != Some(&serial) {
                                let at = start.elapsed().as_secs_f64();
                                eprintln!("[{at:6.2}s] client served serial {serial}, notAfter {not_after}");
                                seen.push(Seen { at, serial, not_after });
                            }
                        }
                    }
                    other => {
                        f.fetch_add(1, Ordering::Relaxed);
                        let what = match other {
                            Ok(out) => {
                                format!("{}: {} {}", out.status, out.stdout.lines().next().unwrap_or(""), out.stderr)
                            }
                            Err(err) => format!("{err:#}"),
                        };
                        eprintln!("[{:6.2}s] request failed: {what}", start.elapsed().as_secs_f64());
                        *e.lock().unwrap_or_else(|p| p.into_inner()) = what;
                    }
                }
            }
        });
        Load { ok, failed, last_error, seen, stop, thread: Some(thread) }
    }

    fn counts(&self) -> (u64, u64) {
        (self.ok.load(Ordering::Relaxed), self.failed.load(Ordering::Relaxed))
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Errors if any request failed so far.
    fn none_failed(&self, when: &str) -> Result<()> {
        let (ok, failed) = self.counts();
        if failed > 0 {
            let last = self.last_error.lock().unwrap_or_else(|p| p.into_inner()).clone();
            bail!("{when}: {failed} of {} requests failed; last: {last}", ok + failed);
        }
        Ok(())
    }

    /// Waits until the client has seen `n` certificates; the newest.
    fn wait_certificates(&self, n: usize, within: Duration) -> Result<Seen> {
        let end = Instant::now() + within;
        loop {
            let seen = self.seen();
            if seen.len() >= n {
                return Ok(seen[n - 1].clone());
            }
            if Instant::now() > end {
                bail!("the client saw {} certificates within {within:?}, want {n}: {seen:?}", seen.len());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn acme_renewal_under_load_and_with_the_ca_stopped() {
    in_topology(30, run);
}

fn consecutive_failures(t: &Topology) -> Result<f64> {
    let m = metrics::scrape(t.ns(Role::Home), LP_ADMIN)?;
    Ok(m.get("local_proxy_acme_consecutive_failures", &[("certificate", "a.test")]).unwrap_or(0.0))
}

fn run(t: &mut Topology, b: &AcmeBins) -> Result<()> {
    let start = Instant::now();
    started(start, &format!("topology up ({}; dir {})", t.tag, t.dir().display()));
    let api_ca = pebble_api_cert(t.dir())?;
    let root = start_pebble(t, &api_ca, &PebbleOptions { validity_secs: Some(VALIDITY_SECS), ..Default::default() })?;
    start_lan(t, b)?;
    let mesh = t.home_mesh_addr().context("home mesh address")?;
    start_ingress(t, b, Role::Ingress1, &ingress_config(true, mesh))?;
    // order_timeout's floor: an attempt against the stopped CA gives up after 5 s.
    let cfg = local_proxy_config(t, &api_ca, &["a.test"], true, "order_timeout = \"5s\"\n")?;
    start_local_proxy(t, b, &cfg)?;
    let pid = t.proc_mut("local-proxy")?.pid();
    started(start, &format!("pebble ({VALIDITY_SECS} s certificates), ingress1 and local-proxy up"));

    let ing1 = IpAddr::from(addr::INGRESS1);
    netns::wait::wait_until(
        "a.test issued and served via ingress1",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || {
            let body = curl(t, Role::Client, "a.test", ing1, &root)?;
            netns::wait::check(body.contains("/hello"), || format!("the LAN service said {body}"))
        },
    )?;
    let load = Load::start(t, &root, start);
    let first = load.wait_certificates(1, Duration::from_secs(10))?;
    started(start, "a.test issued over HTTP-01 through ingress1; load running");

    // Renewal under load: due two thirds into the first certificate's life.
    let second = load.wait_certificates(2, Duration::from_secs(VALIDITY_SECS))?;
    load.none_failed("across the first renewal")?;
    let (ok1, failed1) = load.counts();
    if ok1 < 20 {
        bail!("only {ok1} requests across the first renewal");
    }
    started(
        start,
        &format!("renewed under load: {} → {}; {ok1} requests ok, {failed1} failed", first.serial, second.serial),
    );

    // The CA stopped before the next renewal point (two thirds of the second certificate's life).
    t.proc_mut("pebble")?.signal("STOP")?;
    let stopped = start.elapsed().as_secs_f64();
    started(start, "pebble stopped (SIGSTOP)");
    let end = Instant::now() + Duration::from_secs(VALIDITY_SECS);
    while consecutive_failures(t)? < 1.0 {
        if Instant::now() > end {
            bail!("no failed renewal attempt within {VALIDITY_SECS} s of pebble stopping");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let failed_at = start.elapsed().as_secs_f64();
    let seen = load.seen();
    if seen.len() != 2 {
        bail!("the certificate changed while pebble was stopped: {seen:?}");
    }
    load.none_failed("while pebble was stopped")?;
    let (ok2, _) = load.counts();
    started(
        start,
        &format!("renewal attempt failed with pebble stopped; old certificate {} still served", second.serial),
    );
    t.proc_mut("pebble")?.signal("CONT")?;
    let resumed = start.elapsed().as_secs_f64();
    // Before the old certificate expires: the retry comes retry_min (1 s) after the failure.
    let third = load.wait_certificates(3, Duration::from_secs(10))?;
    std::thread::sleep(Duration::from_millis(500));
    load.none_failed("after pebble resumed")?;
    let (ok3, failed3) = load.counts();
    drop(load);
    if t.proc_mut("local-proxy")?.pid() != pid {
        bail!("local-proxy restarted");
    }
    t.proc_mut("local-proxy")?.ensure_running()?;
    if consecutive_failures(t)? != 0.0 {
        bail!("consecutive failures not reset after the renewal");
    }
    let m = metrics::scrape(t.ns(Role::Home), LP_ADMIN)?;
    let orders_ok = m.get("local_proxy_acme_orders_total", &[("certificate", "a.test"), ("result", "ok")]);
    if orders_ok != Some(3.0) {
        bail!("orders ok = {orders_ok:?}, want 3 (issue, renewal, renewal after the retry)");
    }
    eprintln!(
        "RESULT acme renewal via ingress1 ({VALIDITY_SECS} s certificates): first {} at {:.1}s, renewed under load \
         at {:.1}s ({} after {:.1}s); pebble stopped at {stopped:.1}s, renewal attempt failed at {failed_at:.1}s \
         ({} ok, 0 failed meanwhile, old certificate served), SIGCONT at {resumed:.1}s, renewed at {:.1}s ({:.1}s \
         later; old notAfter {}, new {}); {ok3} requests ok, {failed3} failed; total {:.1}s",
        first.serial,
        first.at,
        second.at,
        second.serial,
        second.at - first.at,
        ok2 - ok1,
        third.at,
        third.at - resumed,
        second.not_after,
        third.not_after,
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
