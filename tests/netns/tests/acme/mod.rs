//! Shared by the ACME proofs in the namespace topology (acme_ingress, acme_renewal): pebble and
//! its DNS on the `stranger` host as the CA, the local proxy with `[acme]` on at home, the
//! ingress nodes in front, and curl with pebble's root as the client.
#![allow(dead_code)]
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use netns::cmd;
use netns::metrics;
use netns::topology::{addr, Bins, Role, Topology};
use netns::wait::{check, wait_until};

pub const LP_ADMIN: &str = "127.0.0.1:9181";
pub const INGRESS_ADMIN: &str = "127.0.0.1:9180";
pub const LAN_HTTP: u16 = 8000;
/// The CA's host on the internet.
pub const CA_IP: Ipv4Addr = addr::STRANGER;
pub const PEBBLE_API: u16 = 14000;
pub const PEBBLE_MGMT: u16 = 15000;
pub const DNS_PORT: u16 = 8053;
pub const DNS_MGMT: u16 = 8055;

pub fn started(start: Instant, what: &str) {
    eprintln!("[{:6.2}s] {what}", start.elapsed().as_secs_f64());
}

pub struct AcmeBins {
    pub harness: Bins,
    pub local_proxy: PathBuf,
    pub peer_echo: PathBuf,
}

/// Builds the ACME topology (mesh, no LAN backends) and runs `run` in it. On an error it
/// panics with the last `tail` lines of the local proxy's and pebble's logs. pebble gets
/// SIGCONT first, since a test may leave it stopped and it would then ignore the teardown's TERM.
pub fn in_topology(tail: usize, run: impl FnOnce(&mut Topology, &AcmeBins) -> Result<()>) {
    let b = bins().unwrap_or_else(|e| panic!("{e:#}"));
    let mut t = Topology::build(b.harness.clone(), netns::topology::Options { mesh: true, backends: false })
        .unwrap_or_else(|e| panic!("{e:#}"));
    let result = run(&mut t, &b);
    if let Ok(p) = t.proc_mut("pebble") {
        let _ = p.signal("CONT");
    }
    if let Err(e) = result {
        let mut log = |name: &str| t.proc_mut(name).map(|p| p.tail(tail)).unwrap_or_default();
        let (proxy, pebble) = (log("local-proxy"), log("pebble"));
        panic!("{e:#}\n{proxy}\n{pebble}");
    }
}

pub fn bins() -> Result<AcmeBins> {
    let peer_echo = PathBuf::from(env!("CARGO_BIN_EXE_peer-echo"));
    let dir = peer_echo.parent().context("peer-echo has no parent dir")?.to_path_buf();
    let harness = Bins::in_dir(&dir);
    let local_proxy = std::env::var_os("LOCAL_PROXY_BIN").map(PathBuf::from).unwrap_or_else(|| dir.join("local-proxy"));
    for (what, p) in [("ingress", &harness.ingress), ("local-proxy", &local_proxy)] {
        if !p.is_file() {
            bail!("{what} binary missing at {}: build it with `cargo build -p {what}`", p.display());
        }
    }
    for tool in ["openssl", "curl", "pebble", "pebble-challtestsrv"] {
        let found = cmd::run_full(&["sh", "-c", &format!("command -v {tool}")], None, cmd::DEFAULT_TIMEOUT)?;
        if !found.status.success() {
            bail!("`{tool}` is required by this test (tests/netns/deps.sh installs it)");
        }
    }
    Ok(AcmeBins { harness, local_proxy, peer_echo })
}

/// pebble's own HTTPS certificate (for the CA's address), from a CA made here with openssl.
/// Returns that CA's PEM (the local proxy trusts it for the directory only).
pub fn pebble_api_cert(dir: &Path) -> Result<PathBuf> {
    let made = netns::tls::ca_signed(dir, "pebble", "pebble API test CA", "pebble", &format!("IP:{CA_IP}"))?;
    Ok(made.ca)
}

/// How pebble behaves beyond its defaults.
#[derive(Debug, Clone, Default)]
pub struct PebbleOptions {
    /// Certificate lifetime in seconds (pebble's default: five years).
    pub validity_secs: Option<u64>,
    /// `PEBBLE_WFE_NONCEREJECT`: the share (percent) of valid nonces pebble rejects as
    /// `badNonce`, its random failure mode (0: none).
    pub nonce_reject_percent: u8,
    /// pebble's `domainBlocklist`: names (and everything under them) it refuses to order with
    /// `rejectedIdentifier`, as a real CA refuses a name its policy forbids.
    pub blocklist: Vec<String>,
}

/// pebble and its DNS in the CA's namespace; returns pebble's issuing root (PEM file).
pub fn start_pebble(t: &mut Topology, api_ca: &Path, opts: &PebbleOptions) -> Result<PathBuf> {
    let dir = t.dir().to_path_buf();
    let mut config = serde_json::json!({
        "pebble": {
            "listenAddress": format!("{CA_IP}:{PEBBLE_API}"),
            "managementListenAddress": format!("{CA_IP}:{PEBBLE_MGMT}"),
            "certificate": dir.join("pebble.pem"),
            "privateKey": dir.join("pebble.key"),
            // The ports the ingress nodes publish.
            "httpPort": 80,
            "tlsPort": 443,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
        }
    });
    if let Some(secs) = opts.validity_secs {
        // Short-lived certificates for the renewal proofs (pebble's default is five years).
        config["pebble"]["certificateValidityPeriod"] = serde_json::json!(secs);
    }
    if !opts.blocklist.is_empty() {
        config["pebble"]["domainBlocklist"] = serde_json::json!(opts.blocklist);
    }
    std::fs::write(dir.join("pebble.json"), config.to_string())?;
    let s = |v: &str| v.to_string();
    t.spawn(
        Role::Stranger,
        "challtestsrv",
        &[
            s("pebble-challtestsrv"),
            s("-defaultIPv4"),
            addr::INGRESS1.to_string(),
            s("-defaultIPv6"),
            s(""),
            s("-http01"),
            s(""),
            s("-https01"),
            s(""),
            s("-tlsalpn01"),
            s(""),
            s("-dns01"),
            format!("{CA_IP}:{DNS_PORT}"),
            s("-management"),
            format!("{CA_IP}:{DNS_MGMT}"),
        ],
    )?;
    t.spawn(
        Role::Stranger,
        "pebble",
        &[
            s("env"),
            s("PEBBLE_VA_NOSLEEP=1"),
            format!("PEBBLE_WFE_NONCEREJECT={}", opts.nonce_reject_percent),
            s("PEBBLE_AUTHZREUSE=0"),
            s("pebble"),
            s("-config"),
            dir.join("pebble.json").display().to_string(),
            s("-dnsserver"),
            format!("{CA_IP}:{DNS_PORT}"),
        ],
    )?;
    let ca = api_ca.display().to_string();
    let roots = format!("https://{CA_IP}:{PEBBLE_MGMT}/roots/0");
    let root = wait_until("pebble serving its root", Duration::from_secs(20), Duration::from_millis(100), || {
        t.proc_mut("pebble")?.ensure_running()?;
        t.proc_mut("challtestsrv")?.ensure_running()?;
        let pem = t.exec(
            Role::Stranger,
            &["curl", "-sS", "--max-time", "3", "--cacert", &ca, &roots],
            Duration::from_secs(5),
        )?;
        check(pem.contains("BEGIN CERTIFICATE"), || format!("roots/0: {pem}"))?;
        Ok(pem)
    })?;
    let file = dir.join("pebble-root.pem");
    std::fs::write(&file, root)?;
    Ok(file)
}

/// Point `name` at `ip` in the CA's DNS.
pub fn resolve_at(t: &Topology, name: &str, ip: Ipv4Addr) -> Result<()> {
    let body = serde_json::json!({ "host": name, "addresses": [ip.to_string()] }).to_string();
    let url = format!("http://{CA_IP}:{DNS_MGMT}/add-a");
    t.exec(Role::Stranger, &["curl", "-sS", "--max-time", "3", "-d", &body, &url], Duration::from_secs(5))?;
    Ok(())
}

/// `acme_extra`: more `[acme]` keys (lines), e.g. a shorter `order_timeout`; a key given there
/// replaces this function's own line for it (`retry_min`, `retry_max`). Every name in `names`
/// is a site besides a.test to d.test.
pub fn local_proxy_config(
    t: &Topology,
    api_ca: &Path,
    names: &[&str],
    http_01: bool,
    acme_extra: &str,
) -> Result<String> {
    let ygg = t.ygg(Role::Home).context("home has no yggdrasil router")?;
    let ing_mesh = |r: Role| t.ygg(r).map(|n| n.address).with_context(|| format!("{} has no yggdrasil", r.as_str()));
    let (ing1_mesh, ing2_mesh) = (ing_mesh(Role::Ingress1)?, ing_mesh(Role::Ingress2)?);
    let lan4 = addr::LAN;
    let mut sites = String::new();
    let mut hosts = vec!["a.test", "b.test", "c.test", "d.test"];
    for n in names {
        if !hosts.contains(n) {
            hosts.push(n);
        }
    }
    for n in hosts {
        sites.push_str(&format!("[[site]]\nhost = \"{n}\"\nupstream = \"http://{lan4}:{LAN_HTTP}\"\n"));
    }
    let names: Vec<String> = names.iter().map(|n| format!("\"{n}\"")).collect();
    let given = |key: &str| acme_extra.lines().any(|l| l.split_once('=').is_some_and(|(k, _)| k.trim() == key));
    let retry: String = [("retry_min", "1s"), ("retry_max", "5s")]
        .iter()
        .filter(|(k, _)| !given(k))
        .map(|(k, v)| format!("{k} = \"{v}\"\n"))
        .collect();
    Ok(format!(
        r#"[admin]
listen = "{LP_ADMIN}"

[wan]
addresses = ["{wan1}", "{wan2}"]
trusted_ingress = ["{ing1}", "{ing2}"]

[mesh]
listen = "auto"
admin_endpoint = "unix://{admin}"
trusted_ingress = ["{ing1_mesh}", "{ing2_mesh}"]

[tls]
reload_interval = "1s"

[acme]
directory = "https://{CA_IP}:{PEBBLE_API}/dir"
directory_ca_file = "{api_ca}"
contact = ["admin@example.org"]
storage = "{storage}"
names = [{names}]
http_01 = {http_01}
tls_alpn_01 = true
{retry}{acme_extra}
{sites}"#,
        wan1 = addr::WAN1,
        wan2 = addr::WAN2,
        ing1 = addr::INGRESS1,
        ing2 = addr::INGRESS2,
        admin = ygg.admin.display(),
        api_ca = api_ca.display(),
        storage = t.dir().join("acme").display(),
        names = names.join(", "),
    ))
}

/// The pool: both WANs (`wan`) and the mesh tier (home's Yggdrasil address). Until the first
/// certificate the home answers the PROXY LOCAL probes "not ready" (no certificate loaded) on
/// every path, the mesh included, so every path is down and the ingress tries each in turn:
/// whichever carries the CA's validation, its PROXY v2 header must be read.
pub fn ingress_config(wan: bool, mesh: Ipv6Addr) -> String {
    let (w1, w2) = (addr::WAN1, addr::WAN2);
    let paths = if wan {
        format!(
            r#"[ {{ name = "wan1", address = "{w1}", weight = 1 }}, {{ name = "wan2", address = "{w2}", weight = 1 }} ]"#
        )
    } else {
        "[]".to_string()
    };
    format!(
        r#"[admin]
listen = "{INGRESS_ADMIN}"

[pool.home]
paths = {paths}
mesh = "{mesh}"
health = {{ interval = "300ms", timeout = "250ms", rise = 2, fall = 2, port = 443, check = "proxy-v2" }}

[[service]]
name = "https"
listen = ["0.0.0.0:443"]
mode = "sni"
pool = "home"
proxy_protocol = "v2"

[[service]]
name = "http"
listen = ["0.0.0.0:80"]
mode = "http"
pool = "home"
proxy_protocol = "v2"
"#
    )
}

pub fn start_lan(t: &mut Topology, b: &AcmeBins) -> Result<()> {
    let argv = [
        b.peer_echo.display().to_string(),
        "serve".into(),
        "--http".into(),
        SocketAddr::new(IpAddr::from(addr::LAN), LAN_HTTP).to_string(),
    ];
    t.spawn(Role::Lan, "lan-service", &argv)?;
    let ns = t.ns(Role::Lan).to_string();
    wait_until("the LAN service listening", Duration::from_secs(10), Duration::from_millis(20), || {
        t.proc_mut("lan-service")?.ensure_running()?;
        let out = cmd::exec_ok(&ns, &["ss", "-Hltn"], cmd::DEFAULT_TIMEOUT)?;
        check(out.contains(&format!(":{LAN_HTTP}")), || format!("listening: {out}"))
    })
}

pub fn start_local_proxy(t: &mut Topology, b: &AcmeBins, config: &str) -> Result<()> {
    let file = t.dir().join("local-proxy.toml");
    std::fs::write(&file, config)?;
    let (bin, f) = (b.local_proxy.display().to_string(), file.display().to_string());
    let out = cmd::run_full(&[&bin, "check", "-c", &f], None, Duration::from_secs(10))?;
    if !out.status.success() {
        bail!("`local-proxy check` refused the test config: {}{}", out.stderr, out.stdout);
    }
    t.spawn(Role::Home, "local-proxy", &[bin, "-c".into(), f])?;
    let home = t.ns(Role::Home).to_string();
    wait_until("local-proxy listening on 80 and 443", Duration::from_secs(15), Duration::from_millis(50), || {
        t.proc_mut("local-proxy")?.ensure_running()?;
        let out = cmd::exec_ok(&home, &["ss", "-Hltn"], cmd::DEFAULT_TIMEOUT)?;
        let want = [format!("{}:443", addr::WAN1), format!("{}:80", addr::WAN2)];
        let missing: Vec<&String> = want.iter().filter(|w| !out.contains(w.as_str())).collect();
        check(missing.is_empty(), || format!("not listening on {missing:?}"))
    })
}

pub fn start_ingress(t: &mut Topology, b: &AcmeBins, role: Role, config: &str) -> Result<()> {
    let name = role.as_str();
    let file = t.dir().join(format!("{name}.toml"));
    std::fs::write(&file, config)?;
    netns::ingress::check(&b.harness.ingress, &file)?;
    t.spawn(role, name, &[b.harness.ingress.display().to_string(), "-c".into(), file.display().to_string()])?;
    let ns = t.ns(role).to_string();
    // Before the first certificate the home says "not ready" to the PROXY LOCAL probes (no
    // certificate loaded): the paths come up once one is issued. Only wait for the listener.
    wait_until(&format!("ingress in {name} listening"), Duration::from_secs(15), Duration::from_millis(50), || {
        t.proc_mut(name)?.ensure_running()?;
        let out = cmd::exec_ok(&ns, &["ss", "-Hltn"], cmd::DEFAULT_TIMEOUT)?;
        check(out.contains("0.0.0.0:80") && out.contains("0.0.0.0:443"), || format!("listening: {out}"))
    })
}

/// `curl --cacert pebble-root https://name/` from `role` with `name` resolved to `ip`.
pub fn curl(t: &Topology, role: Role, name: &str, ip: IpAddr, root: &Path) -> Result<String> {
    let host = match ip {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => format!("[{a}]"),
    };
    let resolve = format!("{name}:443:{host}");
    let url = format!("https://{name}/hello");
    let root = root.display().to_string();
    t.exec(
        role,
        &["curl", "-sS", "--max-time", "10", "--resolve", &resolve, "--cacert", &root, &url],
        Duration::from_secs(20),
    )
}

/// Wait until every name in `names` is served with pebble's certificate through both ingress
/// nodes and over the mesh.
pub fn wait_served(t: &Topology, names: &[&str], root: &Path, within: Duration) -> Result<()> {
    let mesh = t.home_mesh_addr().context("home mesh address")?;
    wait_until(&format!("{names:?} served with pebble's certificates"), within, Duration::from_millis(500), || {
        for name in names {
            for (role, ip) in [
                (Role::Client, IpAddr::from(addr::INGRESS1)),
                (Role::Client, IpAddr::from(addr::INGRESS2)),
                (Role::Meshc, IpAddr::from(mesh)),
            ] {
                let body = curl(t, role, name, ip, root).with_context(|| format!("{name} via {ip}"))?;
                check(body.contains("/hello"), || format!("{name} via {ip}: the LAN service said {body}"))?;
            }
        }
        Ok(())
    })
}

/// The `x-forwarded-for` value the LAN service saw (it echoes the request head).
pub fn forwarded_for(body: &str) -> Option<String> {
    body.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("x-forwarded-for").then(|| v.trim().to_string())
    })
}

/// Connections an ingress node's service accepted.
pub fn accepted(t: &Topology, role: Role, service: &str) -> Result<f64> {
    let m = metrics::scrape(t.ns(role), INGRESS_ADMIN)?;
    Ok(m.sum("ingress_listener_accepted_total", &[("service", service)]))
}

pub fn challenges_answered(t: &Topology, kind: &str) -> Result<f64> {
    let m = metrics::scrape(t.ns(Role::Home), LP_ADMIN)?;
    Ok(m.get("local_proxy_acme_challenges_answered_total", &[("challenge", kind)]).unwrap_or(0.0))
}

/// `local_proxy_acme_orders_total` of one certificate and result (0 when not counted yet).
pub fn orders(t: &Topology, certificate: &str, result: &str) -> Result<f64> {
    let m = metrics::scrape(t.ns(Role::Home), LP_ADMIN)?;
    Ok(m.get("local_proxy_acme_orders_total", &[("certificate", certificate), ("result", result)]).unwrap_or(0.0))
}

/// The nftables table in the CA's namespace that refuses its validation connections.
const REFUSE_TABLE: &str = "acme_refuse";

/// The CA's validation connections (from its host to the ingress nodes' ports 80 and 443):
/// `percent` of the new ones are refused with a TCP reset, each drawn at random (`numgen
/// random`); 100 refuses every one, 0 none. pebble validates a challenge with three requests
/// at once and fails it when any of them fails, which fails the authorization and the order:
/// the client must order again. Debian's pebble 2.4 has no switch that fails challenges (its
/// one random failure mode rejects nonces, [`PebbleOptions::nonce_reject_percent`]), so the
/// network fails them here, in the CA's own namespace. Replaces the previous setting and
/// zeroes [`validations`].
pub fn refuse_validations(t: &Topology, percent: u8) -> Result<()> {
    if percent > 100 {
        bail!("refuse_validations: {percent}% is more than 100");
    }
    let matching =
        format!("ip daddr {{ {}, {} }} tcp dport {{ 80, 443 }} ct state new", addr::INGRESS1, addr::INGRESS2);
    let mut script = format!(
        "table inet {REFUSE_TABLE} {{
            chain out {{ type filter hook output priority 0; }}
         }}
         flush chain inet {REFUSE_TABLE} out
         add rule inet {REFUSE_TABLE} out {matching} counter
        "
    );
    match percent {
        0 => {}
        100 => script.push_str(&format!("add rule inet {REFUSE_TABLE} out {matching} counter reject with tcp reset\n")),
        p => script.push_str(&format!(
            "add rule inet {REFUSE_TABLE} out {matching} numgen random mod 100 < {p} counter reject with tcp reset\n"
        )),
    }
    cmd::run_stdin(&["ip", "netns", "exec", t.ns(Role::Stranger), "nft", "-f", "-"], Some(&script))
        .context("setting the CA's validation refusals")?;
    Ok(())
}

/// Validation connections the CA opened since the last [`refuse_validations`], and how many
/// of them were refused: the packet counters of its two rules.
pub fn validations(t: &Topology) -> Result<(u64, u64)> {
    let out = cmd::exec_ok(
        t.ns(Role::Stranger),
        &["nft", "-j", "list", "chain", "inet", REFUSE_TABLE, "out"],
        cmd::DEFAULT_TIMEOUT,
    )?;
    let v: serde_json::Value = serde_json::from_str(&out).with_context(|| format!("nft -j said {out}"))?;
    let counters: Vec<u64> = v["nftables"]
        .as_array()
        .context("nft -j: no nftables array")?
        .iter()
        .filter_map(|item| item["rule"]["expr"].as_array())
        .filter_map(|expr| expr.iter().find_map(|e| e["counter"]["packets"].as_u64()))
        .collect();
    Ok((counters.first().copied().unwrap_or(0), counters.get(1).copied().unwrap_or(0)))
}

/// `YYMMDDHHMMSSZ` (ASN.1 UTCTime, as `openssl ca -startdate` takes it) of a Unix time.
fn utc_time(unix: i64) -> String {
    let (days, secs) = (unix.div_euclid(86_400), unix.rem_euclid(86_400));
    let (y, m, d) = test_support::civil_from_days(days);
    format!("{:02}{m:02}{d:02}{:02}{:02}{:02}Z", y % 100, secs / 3600, secs % 3600 / 60, secs % 60)
}

/// A certbot lineage for `name` under `storage` (the folder certbot calls its config dir),
/// laid out as certbot does: `live/<name>/{cert,chain,fullchain,privkey}.pem` are relative
/// symlinks to `../../archive/<name>/<file>1.pem`, `live/<name>/README`, and
/// `renewal/<name>.conf` naming the live files; live/ and archive/ 0700, the key 0600. The
/// certificate comes from a CA of its own (made here with `openssl ca`: the CA certbot used,
/// which the test client trusts until the renewal), valid from 60 days ago until `left` from
/// now, so far past two thirds of its life: due at once. Returns that CA's PEM.
pub fn certbot_lineage(dir: &Path, storage: &Path, name: &str, left: Duration) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let work = dir.join("certbot-ca");
    std::fs::create_dir_all(&work)?;
    let p = |f: &str| work.join(f).display().to_string();
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    let (ca_key, ca_pem) = (p("ca.key"), p("ca.pem"));
    let mut ca = vec!["openssl", "req", "-x509", "-days", "400", "-subj", "/CN=certbot era test CA"];
    ca.extend(ec);
    ca.extend(["-keyout", &ca_key, "-out", &ca_pem]);
    cmd::run(&ca).context("making certbot's test CA")?;
    let (key, csr, leaf) = (p("leaf.key"), p("leaf.csr"), p("leaf.pem"));
    let subj = format!("/CN={name}");
    let mut req = vec!["openssl", "req", "-subj", &subj];
    req.extend(ec);
    req.extend(["-keyout", &key, "-out", &csr]);
    cmd::run(&req).with_context(|| format!("making the key and request for {name}"))?;
    std::fs::write(work.join("index.txt"), "")?;
    std::fs::write(work.join("serial"), "1000\n")?;
    std::fs::write(
        work.join("ca.cnf"),
        format!(
            "[ca]\ndefault_ca = certbot_era\n[certbot_era]\ndatabase = {db}\nnew_certs_dir = {w}\nserial = {serial}\n\
             default_md = sha256\npolicy = any\nunique_subject = no\n[any]\ncommonName = supplied\n",
            db = p("index.txt"),
            w = work.display(),
            serial = p("serial"),
        ),
    )?;
    std::fs::write(
        work.join("leaf.ext"),
        format!(
            "subjectAltName=DNS:{name}\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\n\
             extendedKeyUsage=serverAuth\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n"
        ),
    )?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs() as i64;
    let (start, end) = (utc_time(now - 60 * 86_400), utc_time(now + left.as_secs() as i64));
    let (cnf, ext) = (p("ca.cnf"), p("leaf.ext"));
    cmd::run(&[
        "openssl",
        "ca",
        "-batch",
        "-notext",
        "-config",
        &cnf,
        "-cert",
        &ca_pem,
        "-keyfile",
        &ca_key,
        "-in",
        &csr,
        "-out",
        &leaf,
        "-startdate",
        &start,
        "-enddate",
        &end,
        "-extfile",
        &ext,
    ])
    .with_context(|| format!("signing {name}'s certificate ({start} to {end})"))?;

    let (leaf_pem, ca_text, key_pem) =
        (std::fs::read_to_string(&leaf)?, std::fs::read_to_string(&ca_pem)?, std::fs::read_to_string(&key)?);
    let (live, archive, renewal) = (storage.join("live"), storage.join("archive"), storage.join("renewal"));
    let (live_dir, archive_dir) = (live.join(name), archive.join(name));
    for d in [&live_dir, &archive_dir, &renewal] {
        std::fs::create_dir_all(d)?;
    }
    for d in [&live, &archive] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700))?;
    }
    for (stem, text, mode) in [
        ("cert", leaf_pem.clone(), 0o644),
        ("chain", ca_text.clone(), 0o644),
        ("fullchain", format!("{leaf_pem}{ca_text}"), 0o644),
        ("privkey", key_pem, 0o600),
    ] {
        let file = archive_dir.join(format!("{stem}1.pem"));
        std::fs::write(&file, text)?;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode))?;
        std::os::unix::fs::symlink(format!("../../archive/{name}/{stem}1.pem"), live_dir.join(format!("{stem}.pem")))?;
    }
    std::fs::write(
        live_dir.join("README"),
        "This directory contains your keys and certificates.\n\n\
         `privkey.pem`  : the private key for your certificate.\n\
         `fullchain.pem`: the certificate file used in most server software.\n\
         `chain.pem`    : used for OCSP stapling in Nginx >=1.3.7.\n\
         `cert.pem`     : will break many server configurations, and should not be used\n\
         \x20                without reading further documentation (see link below).\n",
    )?;
    let l = |f: &str| live_dir.join(f).display().to_string();
    std::fs::write(
        renewal.join(format!("{name}.conf")),
        format!(
            "# renew_before_expiry = 30 days\nversion = 2.1.0\narchive_dir = {}\ncert = {}\nprivkey = {}\n\
             chain = {}\nfullchain = {}\n\n# Options used in the renewal process\n[renewalparams]\n\
             account = 0123456789abcdef0123456789abcdef\nauthenticator = webroot\nwebroot_path = /var/www/html,\n\
             server = https://acme-v02.api.letsencrypt.org/directory\nkey_type = ecdsa\n",
            archive_dir.display(),
            l("cert.pem"),
            l("privkey.pem"),
            l("chain.pem"),
            l("fullchain.pem"),
        ),
    )?;
    Ok(PathBuf::from(ca_pem))
}

/// One certificate of ACME's part of the local proxy's `GET /status` (by its `live/` folder).
pub fn acme_status(t: &Topology, dir: &str) -> Result<serde_json::Value> {
    let url = format!("http://{LP_ADMIN}/status");
    let text = t.exec(Role::Home, &["curl", "-sS", "--fail", "--max-time", "3", &url], Duration::from_secs(5))?;
    let status: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("/status: {text}"))?;
    let certs = status["acme"]["certificates"].as_array().with_context(|| format!("/status has no acme: {text}"))?;
    certs.iter().find(|c| c["dir"] == dir).cloned().with_context(|| format!("/status: no ACME certificate {dir}"))
}

/// The lines of the local proxy's log (stderr) that contain every one of `words`.
pub fn log_lines(t: &mut Topology, words: &[&str]) -> Result<Vec<String>> {
    let log = t.proc_mut("local-proxy")?.stderr();
    Ok(log.lines().filter(|l| words.iter().all(|w| l.contains(w))).map(str::to_string).collect())
}
