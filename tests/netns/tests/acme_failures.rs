//! The local proxy's ACME when things go wrong, in the namespace topology, with Debian's
//! `pebble` as the CA on the `stranger` host (as in acme_ingress): ingress1 (both WANs and the
//! mesh tier) and ingress2 (the mesh tier alone) in front, one run covering three proofs:
//!
//! - an existing certbot tree (`live/a.test/` linking into `archive/a.test/`, `renewal/a.test.conf`,
//!   a certificate from another CA 60 days old with one day left) is the storage folder: it is
//!   served at start through both ingress nodes and over the mesh, then renewed in place through
//!   the ingress (the next archive version, the links swapped, no `a.test-0001`, the renewal file
//!   untouched);
//! - challenge failures: every validation connection the CA opens is refused at first (an
//!   nftables rule in the CA's namespace, see `acme::refuse_validations`: Debian's pebble 2.4
//!   has no switch that fails challenges), so a.test and b.test each have an order fail with
//!   pebble's `connection` error, logged, counted and in GET /status, while a.test keeps serving certbot's
//!   certificate; then 20% of them are refused at random, and pebble rejects 20% of nonces
//!   (`PEBBLE_WFE_NONCEREJECT`, its own random failure mode) all along: both names are issued by
//!   retrying and served through both nodes and over the mesh;
//! - a name the CA refuses: `refused.invalid` (pebble's domainBlocklist holds the reserved
//!   `invalid` TLD, as Let's Encrypt refuses names outside the public suffixes) fails with
//!   pebble's `rejectedIdentifier` in the log, the orders metric and GET /status, is retried, is never
//!   served, and holds up neither a.test nor b.test.

mod acme;

use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use acme::*;
use anyhow::{bail, Context, Result};
use netns::metrics;
use netns::topology::{addr, Role, Topology};
use netns::wait::{check, wait_until};

const REFUSED: &str = "refused.invalid";
/// Validation connections refused at random once the first failures are in.
const RANDOM_PERCENT: u8 = 20;
const NONCE_REJECT_PERCENT: u8 = 20;

#[test]
fn acme_challenge_failures_a_certbot_tree_and_a_refused_name() {
    in_topology(40, run);
}

/// What a link in `live/a.test/` points to.
fn link(storage: &Path, file: &str) -> Result<String> {
    let p = storage.join("live/a.test").join(file);
    Ok(std::fs::read_link(&p).with_context(|| format!("{} is not a symlink", p.display()))?.display().to_string())
}

fn run(t: &mut Topology, b: &AcmeBins) -> Result<()> {
    let start = Instant::now();
    started(start, &format!("topology up ({}; dir {})", t.tag, t.dir().display()));
    let storage = t.dir().join("acme");
    let certbot_ca = certbot_lineage(t.dir(), &storage, "a.test", Duration::from_secs(86_400))?;
    let renewal_conf = std::fs::read_to_string(storage.join("renewal/a.test.conf"))?;
    let api_ca = pebble_api_cert(t.dir())?;
    let root = start_pebble(
        t,
        &api_ca,
        &PebbleOptions {
            nonce_reject_percent: NONCE_REJECT_PERCENT,
            blocklist: vec!["invalid".into()],
            ..Default::default()
        },
    )?;
    resolve_at(t, "b.test", addr::INGRESS2)?;
    refuse_validations(t, 100)?;
    start_lan(t, b)?;
    let mesh = t.home_mesh_addr().context("home mesh address")?;
    start_ingress(t, b, Role::Ingress1, &ingress_config(true, mesh))?;
    start_ingress(t, b, Role::Ingress2, &ingress_config(false, mesh))?;
    let names = ["a.test", "b.test", REFUSED];
    let cfg = local_proxy_config(t, &api_ca, &names, true, "retry_max = \"2s\"\n")?;
    start_local_proxy(t, b, &cfg)?;
    started(
        start,
        &format!(
            "certbot tree for a.test (one day left); pebble ({NONCE_REJECT_PERCENT}% nonces rejected, `invalid` \
             blocked); every validation connection refused; ingress1, ingress2, local-proxy up"
        ),
    );

    // certbot's certificate is picked up at start: served everywhere, trusted by its old CA.
    wait_served(t, &["a.test"], &certbot_ca, Duration::from_secs(20))?;
    let picked_up = start.elapsed().as_secs_f64();
    started(start, "a.test served with certbot's certificate via ingress1, ingress2 and the mesh");

    // Every challenge fails: the CA's error is logged and counted per name.
    wait_until("a failed order for each name", Duration::from_secs(20), Duration::from_millis(200), || {
        let failed = [
            orders(t, "a.test", "challenge_failed")?,
            orders(t, "b.test", "challenge_failed")?,
            orders(t, REFUSED, "refused")?,
        ];
        check(failed.iter().all(|n| *n >= 1.0), || format!("a.test, b.test, {REFUSED}: {failed:?}"))
    })?;
    let first_failures = start.elapsed().as_secs_f64();
    for name in ["a.test", "b.test"] {
        let what = format!("challenge for {name} failed");
        let lines = log_lines(t, &["certificate not renewed", &what, "urn:ietf:params:acme:error:connection"])?;
        if lines.is_empty() {
            bail!("no log line with pebble's connection error for {name}");
        }
        eprintln!("{}", lines[0]);
    }
    if log_lines(t, &["certificate=a.test", "still_serving_old=true"])?.is_empty() {
        bail!("a.test's failure is not logged as still serving the old certificate");
    }
    // (An attempt can also end on pebble's badNonce thrice: the next one meets the refusal.)
    let certificate = format!("certificate={REFUSED}");
    let refused_line = wait_until(
        &format!("pebble's rejectedIdentifier for {REFUSED} in the log"),
        Duration::from_secs(10),
        Duration::from_millis(200),
        || {
            let lines =
                log_lines(t, &["certificate not renewed", &certificate, "rejectedIdentifier", "forbidden by policy"])?;
            lines.first().cloned().context("not yet")
        },
    )?;
    eprintln!("{refused_line}");
    // GET /status says the same: a.test failing with pebble's error, certbot's day left;
    // the refused name with the CA's refusal.
    let (a_status, refused_status) =
        wait_until("the failures in GET /status", Duration::from_secs(10), Duration::from_millis(200), || {
            let (a, r) = (acme_status(t, "a.test")?, acme_status(t, REFUSED)?);
            let err = |c: &serde_json::Value| c["last_error"].as_str().unwrap_or_default().to_string();
            check(
                a["failures"].as_u64().unwrap_or(0) >= 1 && err(&a).contains("urn:ietf:params:acme:error:connection"),
                || format!("a.test: {a}"),
            )?;
            check(r["failures"].as_u64().unwrap_or(0) >= 1 && err(&r).contains("rejectedIdentifier"), || {
                format!("{REFUSED}: {r}")
            })?;
            Ok((a, r))
        })?;
    let days = a_status["days_left"].as_f64().unwrap_or(-1.0);
    if !(0.9..=1.1).contains(&days) {
        bail!("a.test: days_left {days} in /status, want certbot's certificate's one day: {a_status}");
    }
    if !refused_status["days_left"].is_null() {
        bail!("{REFUSED} has a certificate in /status: {refused_status}");
    }
    // The failed renewal keeps certbot's certificate serving; b.test has none yet.
    wait_served(t, &["a.test"], &certbot_ca, Duration::from_secs(5))?;
    let ing1 = IpAddr::from(addr::INGRESS1);
    if let Ok(body) = curl(t, Role::Client, "b.test", ing1, &root) {
        bail!("b.test served before any challenge passed: {body}");
    }
    let (opened, refused) = validations(t)?;
    if refused != opened || opened == 0 {
        bail!("{refused} of {opened} validation connections refused, want all of at least one");
    }
    let failed_all_refused = [orders(t, "a.test", "challenge_failed")?, orders(t, "b.test", "challenge_failed")?];
    started(
        start,
        &format!(
            "every validation refused ({opened} connections): failed orders a.test {}, b.test {}; {REFUSED} \
             refused by the CA; a.test still served with certbot's certificate",
            failed_all_refused[0], failed_all_refused[1]
        ),
    );

    // Validations refused at random from now on: issued by retrying, served everywhere.
    refuse_validations(t, RANDOM_PERCENT)?;
    let random_from = start.elapsed().as_secs_f64();
    wait_served(t, &["a.test", "b.test"], &root, Duration::from_secs(60))?;
    let issued = start.elapsed().as_secs_f64();
    let (opened, refused) = validations(t)?;
    let failed = [orders(t, "a.test", "challenge_failed")?, orders(t, "b.test", "challenge_failed")?];
    let rejected_nonce = [orders(t, "a.test", "refused")?, orders(t, "b.test", "refused")?];
    started(
        start,
        &format!(
            "{RANDOM_PERCENT}% of validations refused at random ({refused} of {opened}): a.test and b.test issued \
             and served via both nodes and the mesh"
        ),
    );
    for name in ["a.test", "b.test"] {
        let ok = orders(t, name, "ok")?;
        if ok != 1.0 {
            bail!("{name}: orders ok = {ok}, want 1");
        }
        // pebble's certificates last five years.
        let c = acme_status(t, name)?;
        if c["failures"] != 0 || !c["last_error"].is_null() || c["days_left"].as_f64().unwrap_or(0.0) < 365.0 {
            bail!("{name} in /status after the issuance: {c}");
        }
    }

    // Renewed in place: certbot's next archive version, its links swapped, its files kept.
    for stem in ["cert", "chain", "fullchain", "privkey"] {
        let target = link(&storage, &format!("{stem}.pem"))?;
        if target != format!("../../archive/a.test/{stem}2.pem") {
            bail!("live/a.test/{stem}.pem → {target}, want ../../archive/a.test/{stem}2.pem");
        }
        if !storage.join(format!("archive/a.test/{stem}1.pem")).is_file() {
            bail!("archive/a.test/{stem}1.pem is gone (certbot keeps the old versions)");
        }
    }
    let mode = std::fs::metadata(storage.join("archive/a.test/privkey2.pem"))?.permissions().mode() & 0o777;
    if mode != 0o600 {
        bail!("archive/a.test/privkey2.pem has mode {mode:o}, want 600");
    }
    if storage.join("live/a.test-0001").exists() {
        bail!("a.test renewed beside certbot's lineage (live/a.test-0001), not in place");
    }
    if std::fs::read_to_string(storage.join("renewal/a.test.conf"))? != renewal_conf {
        bail!("renewal/a.test.conf changed");
    }

    // The refused name: still refused after retries, never served; the others were not held up.
    wait_until(&format!("{REFUSED} retried"), Duration::from_secs(10), Duration::from_millis(200), || {
        let n = orders(t, REFUSED, "refused")?;
        check(n >= 2.0, || format!("{n} refused orders"))
    })?;
    let m = metrics::scrape(t.ns(Role::Home), LP_ADMIN)?;
    let consecutive = m.get("local_proxy_acme_consecutive_failures", &[("certificate", REFUSED)]).unwrap_or(0.0);
    if consecutive < 2.0 {
        bail!("{REFUSED}: consecutive failures {consecutive}, want at least 2");
    }
    if m.get("local_proxy_acme_orders_total", &[("certificate", REFUSED), ("result", "ok")]).is_some() {
        bail!("{REFUSED} was issued");
    }
    if m.get("local_proxy_acme_certificate_days_left", &[("certificate", REFUSED)]).is_some() {
        bail!("{REFUSED} has a certificate on disk");
    }
    if let Ok(body) = curl(t, Role::Client, REFUSED, ing1, &root) {
        bail!("{REFUSED} served: {body}");
    }
    let refused_orders = orders(t, REFUSED, "refused")?;
    t.proc_mut("local-proxy")?.ensure_running()?;
    eprintln!(
        "RESULT acme failures via ingress1/ingress2/mesh: certbot's a.test served from the start ({picked_up:.1}s); \
         every validation refused: first failed orders by {first_failures:.1}s (a.test {}, b.test {}); then \
         {RANDOM_PERCENT}% refused at random from {random_from:.1}s ({refused} of {opened} connections) and \
         {NONCE_REJECT_PERCENT}% nonces rejected: both issued by {issued:.1}s after failed orders a.test {}, b.test {} \
         (challenge) and {}, {} (CA refusals, badNonce); a.test renewed in place (archive version 2, links \
         swapped, renewal conf untouched); {REFUSED} refused {refused_orders} times (rejectedIdentifier), \
         never served; total {:.1}s",
        failed_all_refused[0],
        failed_all_refused[1],
        failed[0],
        failed[1],
        rejected_nonce[0],
        rejected_nonce[1],
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
