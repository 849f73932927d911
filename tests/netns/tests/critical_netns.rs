//! `critical = true` in the real topology (issue 12): home's local proxy has a critical site
//! whose one upstream is a real HTTP service in the LAN namespace, checked actively (200 ms,
//! fall 2, rise 2). ingress1's pool probes the proxy's HTTPS port with PROXY v2 LOCAL
//! (`check = "proxy-v2"`) over both WAN paths and the mesh. When the LAN service dies, the
//! proxy's `/healthz` answers 503 naming the site, the ingress takes both WAN paths down and
//! the pool goes onto the mesh tier (local-proxy README, "the health the ingress sees"); when
//! the service is back, so are the WAN paths and the pool's tier is `wan` again.
//!
//! Flap damping is off in the pool (`flap_penalty = 0`): two falls within a half-life would
//! hold a path for ~20 s by design (`scenario_flap` proves that); here the return is checked.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use netns::cmd;
use netns::metrics::{self, Metrics};
use netns::topology::{addr, Bins, Options, Role, Topology};
use netns::wait::{check, wait_until};

const NAME: &str = "app.example.org";
const LP_ADMIN: &str = "127.0.0.1:9181";
const INGRESS_ADMIN: &str = "127.0.0.1:9180";
const LAN_HTTP: u16 = 8000;

fn phase(start: Instant, what: &str) {
    eprintln!("[{:6.2}s] {what}", start.elapsed().as_secs_f64());
}

/// Starts the LAN's HTTP service (peer-echo) as `lan-service` and waits until it listens.
fn start_lan(t: &mut Topology, peer_echo: &str) -> Result<()> {
    let listen = SocketAddr::from((addr::LAN, LAN_HTTP)).to_string();
    t.spawn(Role::Lan, "lan-service", &[peer_echo.to_string(), "serve".into(), "--http".into(), listen.clone()])?;
    let ns = t.ns(Role::Lan).to_string();
    wait_until("the LAN service listening", Duration::from_secs(10), Duration::from_millis(20), || {
        t.proc_mut("lan-service")?.ensure_running()?;
        let out = cmd::exec_ok(&ns, &["ss", "-Hltn"], cmd::DEFAULT_TIMEOUT)?;
        check(out.contains(&listen), || format!("listening: {out}"))
    })
}

/// (ingress_path_up of wan1, of wan2, ingress_pool_on_mesh) of pool `home` on ingress1.
fn ingress_state(t: &Topology) -> Result<(Option<f64>, Option<f64>, Option<f64>)> {
    let m: Metrics = metrics::scrape(t.ns(Role::Ingress1), INGRESS_ADMIN)?;
    let up = |p: &str| m.get("ingress_path_up", &[("pool", "home"), ("path", p)]);
    Ok((up("wan1"), up("wan2"), m.get("ingress_pool_on_mesh", &[("pool", "home")])))
}

/// The local proxy's `/healthz`: "<status>\n<body>".
fn healthz(t: &Topology) -> Result<String> {
    let url = format!("http://{LP_ADMIN}/healthz");
    t.exec(Role::Home, &["curl", "-s", "--max-time", "2", "-w", "\n%{http_code}", &url], Duration::from_secs(5))
}

#[test]
fn critical_site_down_moves_the_ingress_pool_to_the_mesh() {
    if let Err(e) = run() {
        panic!("{e:#}");
    }
}

fn run() -> Result<()> {
    let start = Instant::now();
    let peer_echo = PathBuf::from(env!("CARGO_BIN_EXE_peer-echo"));
    let dir = peer_echo.parent().context("peer-echo has no parent dir")?.to_path_buf();
    let lp_bin = std::env::var_os("LOCAL_PROXY_BIN").map(PathBuf::from).unwrap_or_else(|| dir.join("local-proxy"));
    let bins = Bins::in_dir(&dir);
    for (what, p) in [("ingress", &bins.ingress), ("local-proxy", &lp_bin)] {
        if !p.is_file() {
            bail!("{what} binary missing at {}: build it with `cargo build -p {what}`", p.display());
        }
    }
    let ingress_bin = bins.ingress.clone();
    let mut t = Topology::build(bins, Options { mesh: true, backends: false })?;
    phase(start, &format!("topology up ({}; dir {})", t.tag, t.dir().display()));
    let peer_echo = peer_echo.display().to_string();
    start_lan(&mut t, &peer_echo)?;

    let cert = netns::tls::self_signed(t.dir(), "app", &[NAME])?;
    let ygg = t.ygg(Role::Home).context("home has no yggdrasil router")?;
    let lp_cfg = format!(
        r#"[admin]
listen = "{LP_ADMIN}"

[wan]
addresses = ["{wan1}", "{wan2}"]
trusted_ingress = ["{ing1}", "{ing2}"]

[mesh]
listen = "auto"
admin_endpoint = "unix://{admin}"

[[tls.certificate]]
cert = "{cert}"
key = "{key}"

[[site]]
host = "{NAME}"
upstream = "http://{lan}:{LAN_HTTP}"
critical = true
health = {{ path = "/", interval = "200ms", timeout = "150ms", rise = 2, fall = 2 }}
"#,
        wan1 = addr::WAN1,
        wan2 = addr::WAN2,
        ing1 = addr::INGRESS1,
        ing2 = addr::INGRESS2,
        admin = ygg.admin.display(),
        cert = cert.cert.display(),
        key = cert.key.display(),
        lan = addr::LAN,
    );
    let lp_file = t.dir().join("local-proxy.toml");
    std::fs::write(&lp_file, &lp_cfg)?;
    let (lp, f) = (lp_bin.display().to_string(), lp_file.display().to_string());
    let out = cmd::run_full(&[&lp, "check", "-c", &f], None, Duration::from_secs(10))?;
    if !out.status.success() {
        bail!("`local-proxy check` refused the test config: {}{}", out.stderr, out.stdout);
    }
    t.spawn(Role::Home, "local-proxy", &[lp, "-c".into(), f])?;
    let home = t.ns(Role::Home).to_string();
    wait_until("local-proxy healthy", Duration::from_secs(15), Duration::from_millis(50), || {
        t.proc_mut("local-proxy")?.ensure_running()?;
        let m = metrics::scrape(&home, LP_ADMIN)?;
        check(m.get("local_proxy_healthy", &[]) == Some(1.0), || "not healthy yet".into())
    })?;
    phase(start, "local-proxy up and healthy (critical site's LAN upstream up)");

    let mesh = t.home_mesh_addr().context("home mesh address")?;
    let icfg = format!(
        r#"[admin]
listen = "{INGRESS_ADMIN}"

[pool.home]
paths = [ {{ name = "wan1", address = "{w1}", weight = 1 }}, {{ name = "wan2", address = "{w2}", weight = 1 }} ]
mesh = "{mesh}"
health = {{ interval = "200ms", timeout = "150ms", rise = 2, fall = 2, port = 443, check = "proxy-v2", flap_penalty = 0 }}

[[service]]
name = "https"
listen = ["0.0.0.0:443"]
mode = "sni"
pool = "home"
proxy_protocol = "v2"
"#,
        w1 = addr::WAN1,
        w2 = addr::WAN2,
    );
    let ifile = t.dir().join("ingress1.toml");
    std::fs::write(&ifile, icfg)?;
    netns::ingress::check(&ingress_bin, &ifile)?;
    t.spawn(
        Role::Ingress1,
        "ingress1",
        &[ingress_bin.display().to_string(), "-c".into(), ifile.display().to_string()],
    )?;
    let all_up =
        wait_until("ingress1: wan1 and wan2 up, tier wan", Duration::from_secs(15), Duration::from_millis(50), || {
            t.proc_mut("ingress1")?.ensure_running()?;
            let s = ingress_state(&t)?;
            check(s == (Some(1.0), Some(1.0), Some(0.0)) || s == (Some(1.0), Some(1.0), None), || format!("{s:?}"))?;
            Ok(s)
        })?;
    // Paths may start out up: hold the state across several probe rounds, none failing, so
    // "up" is the probes' verdict and not the start-up default.
    std::thread::sleep(Duration::from_millis(1000));
    let steady = ingress_state(&t)?;
    let m = metrics::scrape(t.ns(Role::Ingress1), INGRESS_ADMIN)?;
    let wan_failures = m.sum("ingress_path_probe_failures_total", &[("pool", "home"), ("path", "wan1")])
        + m.sum("ingress_path_probe_failures_total", &[("pool", "home"), ("path", "wan2")]);
    if steady != (Some(1.0), Some(1.0), Some(0.0)) || wan_failures > 0.0 {
        bail!("before the cut: (wan1, wan2, on_mesh) = {steady:?}, WAN probe failures {wan_failures}");
    }
    phase(start, &format!("all up: (wan1, wan2, on_mesh) = {all_up:?}, held 1 s with no WAN probe failure"));

    // The LAN service dies.
    t.stop("lan-service")?;
    let cut = Instant::now();
    let body = wait_until(
        "local-proxy /healthz unhealthy naming the site",
        Duration::from_secs(10),
        Duration::from_millis(20),
        || {
            let h = healthz(&t)?;
            check(h.ends_with("503") && h.contains(NAME), || format!("/healthz: {h:?}"))?;
            Ok(h)
        },
    )?;
    let lp_down = cut.elapsed();
    let down = wait_until(
        "ingress1: both WAN paths down, tier mesh",
        Duration::from_secs(10),
        Duration::from_millis(20),
        || {
            let s = ingress_state(&t)?;
            check(s == (Some(0.0), Some(0.0), Some(1.0)), || format!("(wan1, wan2, on_mesh) = {s:?}"))
        },
    );
    if let Err(e) = down {
        bail!("{e:#}\n--- ingress1\n{}", t.proc_mut("ingress1")?.tail(30));
    }
    let wan_down = cut.elapsed();
    phase(
        start,
        &format!(
            "LAN service killed: /healthz 503 after {} ms ({:?}); WAN paths down, tier mesh after {} ms",
            lp_down.as_millis(),
            body.lines().next().unwrap_or(""),
            wan_down.as_millis()
        ),
    );

    // The LAN service is back.
    start_lan(&mut t, &peer_echo)?;
    let back = Instant::now();
    wait_until("local-proxy /healthz ok", Duration::from_secs(10), Duration::from_millis(20), || {
        let h = healthz(&t)?;
        check(h.ends_with("200"), || format!("/healthz: {h:?}"))
    })?;
    let lp_up = back.elapsed();
    let up =
        wait_until("ingress1: both WAN paths up, tier wan", Duration::from_secs(10), Duration::from_millis(20), || {
            let s = ingress_state(&t)?;
            check(s == (Some(1.0), Some(1.0), Some(0.0)), || format!("(wan1, wan2, on_mesh) = {s:?}"))
        });
    if let Err(e) = up {
        bail!("{e:#}\n--- ingress1\n{}", t.proc_mut("ingress1")?.tail(30));
    }
    let wan_up = back.elapsed();
    let m = metrics::scrape(t.ns(Role::Ingress1), INGRESS_ADMIN)?;
    let failovers = m.sum("ingress_mesh_failovers_total", &[("pool", "home")]);
    eprintln!(
        "RESULT critical site in the topology: LAN upstream killed -> local-proxy /healthz 503 in {} ms, \
         ingress1 wan1+wan2 down and pool on the mesh tier in {} ms; upstream back -> /healthz ok in {} ms, \
         wan1+wan2 up and tier wan in {} ms (checks 200 ms, fall 2, rise 2 at both layers); failovers counted {failovers}; \
         total {:.1}s",
        lp_down.as_millis(),
        wan_down.as_millis(),
        lp_up.as_millis(),
        wan_up.as_millis(),
        start.elapsed().as_secs_f64()
    );
    if failovers < 1.0 {
        bail!("ingress_mesh_failovers_total{{pool=\"home\"}} = {failovers}: the move onto the mesh was not counted");
    }
    drop(t);
    Ok(())
}
