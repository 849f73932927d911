//! The local proxy's ACME through the real ingress nodes, in the namespace topology, with
//! Debian's `pebble` as the CA on an internet host (the `stranger` namespace: neither an
//! ingress nor home) and `pebble-challtestsrv` as the CA's DNS, resolving the site names to
//! the ingress nodes:
//!
//! - ingress1's pool is both WANs plus the mesh tier (the deployed shape); ingress2's pool is
//!   the mesh tier alone, so everything through ingress2 reaches home over Yggdrasil, with its
//!   PROXY v2 header read because the local proxy lists both nodes' Yggdrasil addresses in
//!   `mesh.trusted_ingress`. Before the first certificate every path answers its probe "not
//!   ready" and the ingress tries them all, the mesh tier included: first issuance must work so;
//! - HTTP-01: a.test resolves to ingress1, b.test to ingress2; pebble's validation requests go
//!   through each ingress's plain-HTTP service (PROXY v2) to home's port 80 (WAN or mesh);
//! - then a SIGHUP turns HTTP-01 off and adds c.test (→ ingress1) and d.test (→ ingress2):
//!   TLS-ALPN-01 through each ingress's SNI passthrough to home's port 443;
//! - every name then answers `curl --cacert pebble-root https://name/` from the client through
//!   both ingress nodes, and from the mesh-only client over Yggdrasil (a direct mesh client,
//!   no header); the LAN service sees the client's own address in X-Forwarded-For either way.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use netns::cmd;
use netns::metrics;
use netns::topology::{addr, Bins, Options, Role, Topology};
use netns::wait::{check, wait_until};

const LP_ADMIN: &str = "127.0.0.1:9181";
const INGRESS_ADMIN: &str = "127.0.0.1:9180";
const LAN_HTTP: u16 = 8000;
/// The CA's host on the internet.
const CA_IP: Ipv4Addr = addr::STRANGER;
const PEBBLE_API: u16 = 14000;
const PEBBLE_MGMT: u16 = 15000;
const DNS_PORT: u16 = 8053;
const DNS_MGMT: u16 = 8055;

fn started(start: Instant, what: &str) {
    eprintln!("[{:6.2}s] {what}", start.elapsed().as_secs_f64());
}

struct AcmeBins {
    harness: Bins,
    local_proxy: PathBuf,
    peer_echo: PathBuf,
}

fn bins() -> Result<AcmeBins> {
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
fn pebble_api_cert(dir: &Path) -> Result<PathBuf> {
    let p = |f: &str| dir.join(f).display().to_string();
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    let mut ca = vec!["openssl", "req", "-x509"];
    ca.extend(ec);
    let (ca_key, ca_pem) = (p("api-ca.key"), p("api-ca.pem"));
    ca.extend(["-keyout", &ca_key, "-out", &ca_pem, "-days", "2", "-subj", "/CN=pebble API test CA"]);
    cmd::run(&ca)?;
    let (key, csr) = (p("pebble.key"), p("pebble.csr"));
    let mut req = vec!["openssl", "req"];
    req.extend(ec);
    req.extend(["-keyout", &key, "-out", &csr, "-subj", "/CN=pebble"]);
    cmd::run(&req)?;
    let ext = dir.join("pebble.ext");
    std::fs::write(
        &ext,
        format!("subjectAltName=IP:{CA_IP}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"),
    )?;
    let (leaf, ext_s) = (p("pebble.pem"), ext.display().to_string());
    cmd::run(&[
        "openssl",
        "x509",
        "-req",
        "-in",
        &csr,
        "-CA",
        &ca_pem,
        "-CAkey",
        &ca_key,
        "-CAcreateserial",
        "-out",
        &leaf,
        "-days",
        "2",
        "-extfile",
        &ext_s,
    ])?;
    Ok(dir.join("api-ca.pem"))
}

/// pebble and its DNS in the CA's namespace; returns pebble's issuing root (PEM file).
fn start_pebble(t: &mut Topology, api_ca: &Path) -> Result<PathBuf> {
    let dir = t.dir().to_path_buf();
    let config = serde_json::json!({
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
            s("PEBBLE_WFE_NONCEREJECT=0"),
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
fn resolve_at(t: &Topology, name: &str, ip: Ipv4Addr) -> Result<()> {
    let body = serde_json::json!({ "host": name, "addresses": [ip.to_string()] }).to_string();
    let url = format!("http://{CA_IP}:{DNS_MGMT}/add-a");
    t.exec(Role::Stranger, &["curl", "-sS", "--max-time", "3", "-d", &body, &url], Duration::from_secs(5))?;
    Ok(())
}

fn local_proxy_config(t: &Topology, api_ca: &Path, names: &[&str], http_01: bool) -> Result<String> {
    let ygg = t.ygg(Role::Home).context("home has no yggdrasil router")?;
    let ing_mesh = |r: Role| t.ygg(r).map(|n| n.address).with_context(|| format!("{} has no yggdrasil", r.as_str()));
    let (ing1_mesh, ing2_mesh) = (ing_mesh(Role::Ingress1)?, ing_mesh(Role::Ingress2)?);
    let lan4 = addr::LAN;
    let mut sites = String::new();
    for n in ["a.test", "b.test", "c.test", "d.test"] {
        sites.push_str(&format!("[[site]]\nhost = \"{n}\"\nupstream = \"http://{lan4}:{LAN_HTTP}\"\n"));
    }
    let names: Vec<String> = names.iter().map(|n| format!("\"{n}\"")).collect();
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
retry_min = "1s"
retry_max = "5s"

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
fn ingress_config(wan: bool, mesh: Ipv6Addr) -> String {
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

fn start_lan(t: &mut Topology, b: &AcmeBins) -> Result<()> {
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

fn start_local_proxy(t: &mut Topology, b: &AcmeBins, config: &str) -> Result<()> {
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

fn start_ingress(t: &mut Topology, b: &AcmeBins, role: Role, config: &str) -> Result<()> {
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
fn curl(t: &Topology, role: Role, name: &str, ip: IpAddr, root: &Path) -> Result<String> {
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
fn wait_served(t: &Topology, names: &[&str], root: &Path, within: Duration) -> Result<()> {
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
fn forwarded_for(body: &str) -> Option<String> {
    body.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("x-forwarded-for").then(|| v.trim().to_string())
    })
}

/// Connections an ingress node's service accepted.
fn accepted(t: &Topology, role: Role, service: &str) -> Result<f64> {
    let m = metrics::scrape(t.ns(role), INGRESS_ADMIN)?;
    Ok(m.sum("ingress_listener_accepted_total", &[("service", service)]))
}

fn challenges_answered(t: &Topology, kind: &str) -> Result<f64> {
    let m = metrics::scrape(t.ns(Role::Home), LP_ADMIN)?;
    Ok(m.get("local_proxy_acme_challenges_answered_total", &[("challenge", kind)]).unwrap_or(0.0))
}

#[test]
fn acme_through_the_ingress_nodes() {
    let b = match bins() {
        Ok(b) => b,
        Err(e) => panic!("{e:#}"),
    };
    let mut t = match Topology::build(b.harness.clone(), Options { mesh: true, backends: false }) {
        Ok(t) => t,
        Err(e) => panic!("{e:#}"),
    };
    if let Err(e) = run(&mut t, &b) {
        let mut log = |name: &str| t.proc_mut(name).map(|p| p.tail(30)).unwrap_or_default();
        let (proxy, pebble) = (log("local-proxy"), log("pebble"));
        panic!("{e:#}\n{proxy}\n{pebble}");
    }
}

fn run(t: &mut Topology, b: &AcmeBins) -> Result<()> {
    let start = Instant::now();
    started(start, &format!("topology up ({}; dir {})", t.tag, t.dir().display()));
    let api_ca = pebble_api_cert(t.dir())?;
    let root = start_pebble(t, &api_ca)?;
    resolve_at(t, "b.test", addr::INGRESS2)?;
    resolve_at(t, "d.test", addr::INGRESS2)?;
    started(start, "pebble and its DNS up in the CA's host (a.test, c.test → ingress1; b.test, d.test → ingress2)");
    start_lan(t, b)?;
    let mesh = t.home_mesh_addr().context("home mesh address")?;
    start_ingress(t, b, Role::Ingress1, &ingress_config(true, mesh))?;
    start_ingress(t, b, Role::Ingress2, &ingress_config(false, mesh))?;
    let cfg = local_proxy_config(t, &api_ca, &["a.test", "b.test"], true)?;
    start_local_proxy(t, b, &cfg)?;
    started(
        start,
        "ingress1 (wan1, wan2, mesh), ingress2 (mesh only) and local-proxy up (no certificate yet: HTTP-01 only)",
    );

    wait_served(t, &["a.test", "b.test"], &root, Duration::from_secs(60))?;
    let http01 = challenges_answered(t, "http-01")?;
    if http01 < 2.0 {
        bail!("HTTP-01 answered {http01} times, want at least 2 (a.test via ingress1, b.test via ingress2)");
    }
    // Nothing but the CA spoke plain HTTP: each node's http service carried its validations.
    for role in [Role::Ingress1, Role::Ingress2] {
        let n = accepted(t, role, "http")?;
        if n < 1.0 {
            bail!("{}'s http service accepted {n} connections: the CA's validation did not pass it", role.as_str());
        }
    }
    // b.test's validation could only come through ingress2's mesh tier: the mesh listener took
    // its PROXY header (no refused header), and the LAN service sees the real client's address
    // through it, while a direct mesh client is itself the client.
    let m = metrics::scrape(t.ns(Role::Home), LP_ADMIN)?;
    let mesh_http = m.get("local_proxy_connections_total", &[("listener", "mesh-http"), ("result", "accepted")]);
    if mesh_http.unwrap_or(0.0) < 1.0 {
        bail!(
            "the mesh HTTP listener accepted {mesh_http:?} connections: b.test's validation did not come over the mesh"
        );
    }
    for listener in ["mesh-http", "mesh-https"] {
        for result in ["bad_header", "header_timeout"] {
            if let Some(n) = m.get("local_proxy_connections_total", &[("listener", listener), ("result", result)]) {
                bail!("{listener}: {n} connections refused ({result}): the ingress's mesh tier header was not read");
            }
        }
    }
    let meshc = t.ygg(Role::Meshc).context("meshc has no yggdrasil")?.address;
    for (role, via, want) in [
        (Role::Client, IpAddr::from(addr::INGRESS2), IpAddr::from(addr::CLIENT)),
        (Role::Client, IpAddr::from(addr::INGRESS1), IpAddr::from(addr::CLIENT)),
        (Role::Meshc, IpAddr::from(mesh), IpAddr::from(meshc)),
    ] {
        let body = curl(t, role, "b.test", via, &root)?;
        let xff = forwarded_for(&body);
        if xff.as_deref() != Some(want.to_string().as_str()) {
            bail!("b.test via {via}: X-Forwarded-For {xff:?}, want {want}; the LAN service saw:\n{body}");
        }
    }
    started(
        start,
        "a.test and b.test issued over HTTP-01 through ingress1 and ingress2 (its mesh tier); curl OK via both and \
         the mesh; X-Forwarded-For is the client via ingress2's mesh tier and the mesh client direct",
    );

    // SIGHUP: HTTP-01 off, two more names: TLS-ALPN-01 through each ingress's SNI passthrough.
    let cfg2 = local_proxy_config(t, &api_ca, &["a.test", "b.test", "c.test", "d.test"], false)?;
    std::fs::write(t.dir().join("local-proxy.toml"), &cfg2)?;
    t.proc_mut("local-proxy")?.signal("HUP")?;
    wait_served(t, &["c.test", "d.test"], &root, Duration::from_secs(90))?;
    let alpn = challenges_answered(t, "tls-alpn-01")?;
    if alpn < 2.0 {
        bail!("TLS-ALPN-01 answered {alpn} times, want at least 2 (c.test via ingress1, d.test via ingress2)");
    }
    if challenges_answered(t, "http-01")? != http01 {
        bail!("HTTP-01 was answered after it was turned off");
    }
    // The first two were not ordered again (not due).
    wait_served(t, &["a.test", "b.test"], &root, Duration::from_secs(10))?;
    let m = metrics::scrape(t.ns(Role::Home), LP_ADMIN)?;
    for name in ["a.test", "b.test", "c.test", "d.test"] {
        let ok = m.get("local_proxy_acme_orders_total", &[("certificate", name), ("result", "ok")]);
        if ok != Some(1.0) {
            bail!("{name}: orders ok = {ok:?}, want exactly 1");
        }
    }
    started(
        start,
        "c.test and d.test issued over TLS-ALPN-01 through ingress1 and ingress2; all four served everywhere",
    );
    eprintln!(
        "RESULT acme through the ingress nodes: HTTP-01 and TLS-ALPN-01 via both ingress nodes (ingress2 over its \
         mesh tier alone, PROXY v2 read from its Yggdrasil address), served via both and the mesh, in {:.1}s",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
