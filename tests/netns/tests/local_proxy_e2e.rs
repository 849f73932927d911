//! The local proxy end to end, in the namespace topology:
//!
//! - client → ingress (SNI, PROXY v2) → home WAN → `local-proxy` (WAN listeners on both WAN
//!   addresses, PROXY v2 only from the ingress addresses) → LAN HTTP service, over HTTPS by name
//!   (`curl --resolve`); the service sees the client's address in X-Forwarded-For;
//! - meshc → `local-proxy` over Yggdrasil by name (`curl --resolve name:443:[home's 200::]`);
//! - transparent TCP and UDP streams (`IP_TRANSPARENT`): the LAN service sees the client's own
//!   address as its peer, through the ingress (TCP, and UDP with a PROXY v2 header) and over the
//!   mesh (IPv6); with home's policy route (fwmark → `local` table, nftables `socket
//!   transparent`) set up here as README.md documents it, and shown to be needed;
//! - multi-WAN replies with `rp_filter` strict on home's WAN links and on the router: HTTPS and
//!   UDP through each WAN alone work, and WAN2 breaks without its source rule.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use netns::cmd;
use netns::metrics::{self, Metrics};
use netns::topology::{addr, Bins, Options, Role, Topology};
use netns::wait::{check, wait_until};

/// The site's name (curl resolves it by `--resolve`).
const NAME: &str = "app.example.org";
/// The local proxy's admin listener inside home.
const LP_ADMIN: &str = "127.0.0.1:9181";
/// The ingress admin listener inside each ingress namespace.
const INGRESS_ADMIN: &str = "127.0.0.1:9180";
/// LAN service ports: HTTP, TCP and UDP peer echo.
const LAN_HTTP: u16 = 8000;
const LAN_TCP: u16 = 7100;
const LAN_UDP: u16 = 7101;
/// Stream ports on the local proxy: 7100/tcp and 7101/udp go to the LAN's IPv4 address,
/// 7102/tcp and 7102/udp to its IPv6 address (for mesh clients).
const STREAM4_TCP: u16 = 7100;
const STREAM4_UDP: u16 = 7101;
const STREAM6: u16 = 7102;
/// Ingress ports that reach home through one WAN only.
const VIA_WAN1: u16 = 8441;
const VIA_WAN2: u16 = 8442;
/// An ingress port that reaches home through wan1's IPv6 address only.
const VIA_WAN1_V6: u16 = 8443;
/// LAN IPv6 (ULA) for the mesh clients' transparent streams.
const HOME_LAN6: &str = "fd77::1";
const LAN6: &str = "fd77::2";
/// Policy routing of the transparent replies.
const TPROXY_MARK: &str = "1";
const TPROXY_TABLE: &str = "100";

fn started(start: Instant, what: &str) {
    eprintln!("[{:6.2}s] {what}", start.elapsed().as_secs_f64());
}

/// Binaries: the harness's, `ingress` and `local-proxy` from the same target dir (or
/// `INGRESS_BIN` / `LOCAL_PROXY_BIN`), and `peer-echo`.
struct E2eBins {
    harness: Bins,
    local_proxy: PathBuf,
    peer_echo: PathBuf,
}

fn bins() -> Result<E2eBins> {
    let peer_echo = PathBuf::from(env!("CARGO_BIN_EXE_peer-echo"));
    let dir = peer_echo.parent().context("peer-echo has no parent dir")?.to_path_buf();
    let harness = Bins::in_dir(&dir);
    let local_proxy = std::env::var_os("LOCAL_PROXY_BIN").map(PathBuf::from).unwrap_or_else(|| dir.join("local-proxy"));
    for (what, p) in [("ingress", &harness.ingress), ("local-proxy", &local_proxy)] {
        if !p.is_file() {
            bail!("{what} binary missing at {}: build it with `cargo build -p {what}`", p.display());
        }
    }
    for tool in ["openssl", "curl", "nft"] {
        let found = cmd::run_full(&["sh", "-c", &format!("command -v {tool}")], None, cmd::DEFAULT_TIMEOUT)?;
        if !found.status.success() {
            bail!("`{tool}` is required by this test (apt-get install -y {tool})");
        }
    }
    Ok(E2eBins { harness, local_proxy, peer_echo })
}

/// A test CA and a certificate for [`NAME`] signed by it, made with openssl.
/// Returns (ca.pem, fullchain.pem, key.pem).
fn make_cert(dir: &Path) -> Result<(PathBuf, PathBuf, PathBuf)> {
    let made = netns::tls::ca_signed(dir, "leaf", "netns e2e test CA", NAME, &format!("DNS:{NAME}"))?;
    let chain = dir.join("fullchain.pem");
    std::fs::write(
        &chain,
        format!("{}{}", std::fs::read_to_string(&made.leaf.cert)?, std::fs::read_to_string(&made.ca)?),
    )?;
    Ok((made.ca, chain, made.leaf.key))
}

fn local_proxy_config(t: &Topology, cert: &Path, key: &Path) -> Result<String> {
    let ygg = t.ygg(Role::Home).context("home has no yggdrasil router")?;
    let lan4 = addr::LAN;
    Ok(format!(
        r#"[admin]
listen = "{LP_ADMIN}"

[wan]
addresses = ["{wan1}", "{wan2}", "{wan1v6}"]
trusted_ingress = ["{ing1}", "{ing2}", "{ing1v6}", "{ing2v6}"]

[mesh]
listen = "auto"
admin_endpoint = "unix://{admin}"

[tls]
reload_interval = "1s"

[[tls.certificate]]
cert = "{cert}"
key = "{key}"

[[site]]
host = "{NAME}"
upstream = "http://{lan4}:{LAN_HTTP}"

[[stream]]
name = "echo4"
listen = "{STREAM4_TCP}/tcp"
upstream = "{lan4}:{LAN_TCP}"
transparent = true

[[stream]]
name = "echo4-udp"
listen = "{STREAM4_UDP}/udp"
upstream = "{lan4}:{LAN_UDP}"
transparent = true

[[stream]]
name = "echo6"
listen = "{STREAM6}/tcp"
upstream = "[{LAN6}]:{LAN_TCP}"
transparent = true

[[stream]]
name = "echo6-udp"
listen = "{STREAM6}/udp"
upstream = "[{LAN6}]:{LAN_UDP}"
transparent = true
"#,
        wan1 = addr::WAN1,
        wan2 = addr::WAN2,
        wan1v6 = addr::WAN1_V6,
        ing1 = addr::INGRESS1,
        ing2 = addr::INGRESS2,
        ing1v6 = addr::INGRESS1_V6,
        ing2v6 = addr::INGRESS2_V6,
        admin = ygg.admin.display(),
        cert = cert.display(),
        key = key.display(),
    ))
}

/// Pool `home` (both WANs, the mesh as the last resort) for 443 and the streams, and pools with
/// one WAN each behind their own ports, so each WAN can be tried alone.
fn ingress_config(mesh: Ipv6Addr) -> String {
    let health =
        r#"health = { interval = "300ms", timeout = "250ms", rise = 2, fall = 2, port = 443, check = "proxy-v2" }"#;
    let (w1, w2, w1v6) = (addr::WAN1, addr::WAN2, addr::WAN1_V6);
    format!(
        r#"[admin]
listen = "{INGRESS_ADMIN}"

[pool.home]
paths = [ {{ name = "wan1", address = "{w1}", weight = 1 }}, {{ name = "wan2", address = "{w2}", weight = 1 }} ]
mesh = "{mesh}"
{health}

[pool.only1]
paths = [ {{ name = "wan1", address = "{w1}" }} ]
{health}

[pool.only2]
paths = [ {{ name = "wan2", address = "{w2}" }} ]
{health}

[pool.only1v6]
paths = [ {{ name = "wan1v6", address = "{w1v6}" }} ]
{health}

[[service]]
name = "https"
listen = ["0.0.0.0:443"]
mode = "sni"
pool = "home"
proxy_protocol = "v2"

[[service]]
name = "https-wan1"
listen = ["0.0.0.0:{VIA_WAN1}"]
mode = "sni"
pool = "only1"
proxy_protocol = "v2"
upstream_port = 443

[[service]]
name = "https-wan2"
listen = ["0.0.0.0:{VIA_WAN2}"]
mode = "sni"
pool = "only2"
proxy_protocol = "v2"
upstream_port = 443

[[service]]
name = "https-wan1-v6"
listen = ["0.0.0.0:{VIA_WAN1_V6}"]
mode = "sni"
pool = "only1v6"
proxy_protocol = "v2"
upstream_port = 443

[[service]]
name = "echo-tcp"
listen = ["0.0.0.0:{STREAM4_TCP}"]
pool = "home"
proxy_protocol = "v2"

[[service]]
name = "echo-udp"
listen = ["0.0.0.0:{STREAM4_UDP}"]
protocol = "udp"
pool = "home"
"#
    )
}

/// The LAN service, with IPv6 on the LAN link for the mesh clients' streams.
fn start_lan(t: &mut Topology, b: &E2eBins) -> Result<()> {
    // nodad: usable at once. Duplicate address detection keeps an address tentative (a bind
    // fails with EADDRNOTAVAIL) for a second or more on a loaded machine.
    cmd::ip(t.ns(Role::Home), &["addr", "add", &format!("{HOME_LAN6}/64"), "dev", "lan0", "nodad"])?;
    cmd::ip(t.ns(Role::Lan), &["addr", "add", &format!("{LAN6}/64"), "dev", "eth0", "nodad"])?;
    cmd::ip(t.ns(Role::Lan), &["-6", "route", "add", "default", "via", HOME_LAN6])?;
    let lan4 = IpAddr::from(addr::LAN);
    let lan6: IpAddr = LAN6.parse()?;
    let argv: Vec<String> = [
        b.peer_echo.display().to_string(),
        "serve".into(),
        "--http".into(),
        SocketAddr::new(lan4, LAN_HTTP).to_string(),
        "--tcp".into(),
        SocketAddr::new(lan4, LAN_TCP).to_string(),
        "--udp".into(),
        SocketAddr::new(lan4, LAN_UDP).to_string(),
        "--tcp".into(),
        SocketAddr::new(lan6, LAN_TCP).to_string(),
        "--udp".into(),
        SocketAddr::new(lan6, LAN_UDP).to_string(),
    ]
    .into();
    t.spawn(Role::Lan, "lan-service", &argv)?;
    let ns = t.ns(Role::Lan).to_string();
    wait_until("the LAN service listening", Duration::from_secs(10), Duration::from_millis(20), || {
        t.proc_mut("lan-service")?.ensure_running()?;
        let out = cmd::exec_ok(&ns, &["ss", "-Hltn"], cmd::DEFAULT_TIMEOUT)?;
        check(out.lines().count() >= 3, || format!("listening: {out}"))
    })
}

/// Home's side of the deployment: strict reverse-path filtering on every link, and the policy
/// route of transparent streams (README.md, "Transparent streams").
fn configure_home(t: &Topology) -> Result<()> {
    let home = t.ns(Role::Home);
    cmd::sysctl(
        home,
        &[
            ("net.ipv4.conf.all.rp_filter", "1"),
            ("net.ipv4.conf.default.rp_filter", "1"),
            ("net.ipv4.conf.wan1.rp_filter", "1"),
            ("net.ipv4.conf.wan2.rp_filter", "1"),
        ],
    )?;
    add_tproxy_rules(home)?;
    cmd::run_stdin(
        &["ip", "netns", "exec", home, "nft", "-f", "-"],
        Some(
            "table inet local_proxy_transparent {\n  chain prerouting {\n    type filter hook prerouting priority mangle; policy accept;\n    socket transparent 1 meta mark set 1 accept\n  }\n}\n",
        ),
    )?;
    Ok(())
}

fn add_tproxy_rules(home: &str) -> Result<()> {
    for fam in ["-4", "-6"] {
        cmd::ip(home, &[fam, "rule", "add", "fwmark", TPROXY_MARK, "lookup", TPROXY_TABLE, "pref", TPROXY_TABLE])?;
    }
    cmd::ip(home, &["-4", "route", "add", "local", "0.0.0.0/0", "dev", "lo", "table", TPROXY_TABLE])?;
    cmd::ip(home, &["-6", "route", "add", "local", "::/0", "dev", "lo", "table", TPROXY_TABLE])?;
    Ok(())
}

fn start_local_proxy(t: &mut Topology, b: &E2eBins, config: &str) -> Result<()> {
    let file = t.dir().join("local-proxy.toml");
    std::fs::write(&file, config)?;
    let (bin, f) = (b.local_proxy.display().to_string(), file.display().to_string());
    let out = cmd::run_full(&[&bin, "check", "-c", &f], None, Duration::from_secs(10))?;
    if !out.status.success() {
        bail!("`local-proxy check` refused the test config: {}{}", out.stderr, out.stdout);
    }
    t.spawn(Role::Home, "local-proxy", &[bin, "-c".into(), f])?;
    let home = t.ns(Role::Home).to_string();
    let mesh = t.home_mesh_addr().context("home mesh address")?;
    let want = [
        format!("{}:443", addr::WAN1),
        format!("{}:443", addr::WAN2),
        format!("[{mesh}]:443"),
        format!("{}:{STREAM4_TCP}", addr::WAN2),
    ];
    wait_until("local-proxy listening and healthy", Duration::from_secs(15), Duration::from_millis(50), || {
        t.proc_mut("local-proxy")?.ensure_running()?;
        let out = cmd::exec_ok(&home, &["ss", "-Hltn"], cmd::DEFAULT_TIMEOUT)?;
        let missing: Vec<&String> = want.iter().filter(|w| !out.contains(w.as_str())).collect();
        check(missing.is_empty(), || format!("not listening on {missing:?}"))?;
        let m = metrics::scrape(&home, LP_ADMIN)?;
        check(m.get("local_proxy_healthy", &[]) == Some(1.0), || "not healthy yet".into())
    })
}

fn start_ingress(t: &mut Topology, b: &E2eBins, role: Role, config: &str) -> Result<()> {
    let name = role.as_str();
    let file = t.dir().join(format!("{name}.toml"));
    std::fs::write(&file, config)?;
    netns::ingress::check(&b.harness.ingress, &file)?;
    t.spawn(role, name, &[b.harness.ingress.display().to_string(), "-c".into(), file.display().to_string()])?;
    let ns = t.ns(role).to_string();
    wait_until(&format!("ingress in {name}: every path up"), Duration::from_secs(15), Duration::from_millis(50), || {
        t.proc_mut(name)?.ensure_running()?;
        let m = metrics::scrape(&ns, INGRESS_ADMIN)?;
        for (pool, path) in [("home", "wan1"), ("home", "wan2"), ("only1", "wan1"), ("only2", "wan2")] {
            let up = m.get("ingress_path_up", &[("pool", pool), ("path", path)]);
            check(up == Some(1.0), || format!("pool {pool} path {path} up = {up:?}"))?;
        }
        Ok(())
    })
}

/// `curl https://NAME/` from `role` with NAME resolved to `ip:port`; the body on success.
fn curl(t: &Topology, role: Role, ip: IpAddr, port: u16, ca: &Path, max_time: &str) -> Result<String> {
    let host = match ip {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => format!("[{a}]"),
    };
    let resolve = format!("{NAME}:{port}:{host}");
    let url = format!("https://{NAME}:{port}/hello");
    let ca = ca.display().to_string();
    t.exec(
        role,
        &["curl", "-sS", "--max-time", max_time, "--resolve", &resolve, "--cacert", &ca, &url],
        Duration::from_secs(20),
    )
}

/// The `x-forwarded-for` value the LAN service saw (header names as the proxy wrote them).
fn forwarded_for(body: &str) -> Option<String> {
    body.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("x-forwarded-for").then(|| v.trim().to_string())
    })
}

/// `peer-echo tcp|udp` from `role`: (its own address, the peer the LAN service saw).
fn probe(
    t: &Topology,
    b: &E2eBins,
    role: Role,
    kind: &str,
    to: SocketAddr,
    extra: &[&str],
) -> Result<(String, String)> {
    let (bin, to_s) = (b.peer_echo.display().to_string(), to.to_string());
    let mut argv = vec![bin.as_str(), kind, "--to", &to_s, "--timeout-ms", "3000"];
    argv.extend_from_slice(extra);
    let out = t.exec(role, &argv, Duration::from_secs(10))?;
    let field = |k: &str| out.lines().find_map(|l| l.strip_prefix(k)).map(str::to_string);
    match (field("local="), field("peer=")) {
        (Some(l), Some(p)) => Ok((l, p)),
        _ => bail!("{kind} probe to {to} from {} printed: {out}", role.as_str()),
    }
}

/// Step 7 of the test: listener changes on SIGHUP, in the real binary.
fn reload_listeners(t: &mut Topology, b: &E2eBins, cfg: &str, mesh: Ipv6Addr) -> Result<()> {
    const LATE: u16 = 7103;
    let held_to = SocketAddr::new(mesh.into(), STREAM6).to_string();
    let argv: Vec<String> = [b.peer_echo.display().to_string(), "tcp".into(), "--to".into(), held_to]
        .into_iter()
        .chain(["--timeout-ms", "8000", "--hold-ms", "3000"].map(String::from))
        .collect();
    t.spawn(Role::Meshc, "held", &argv)?;
    wait_until("the held connection greeted", Duration::from_secs(5), Duration::from_millis(20), || {
        let p = t.proc_mut("held")?;
        check(p.stdout().contains("peer="), || format!("held said: {}", p.tail(5)))
    })?;

    let echo6 = format!("[[stream]]\nname = \"echo6\"\nlisten = \"{STREAM6}/tcp\"\nupstream = \"[{LAN6}]:{LAN_TCP}\"\ntransparent = true\n");
    if !cfg.contains(&echo6) {
        bail!("the test config has no echo6 stream to remove");
    }
    let late =
        format!("[[stream]]\nname = \"late\"\nlisten = \"{LATE}/tcp\"\nupstream = \"{}:{LAN_TCP}\"\n", addr::LAN);
    std::fs::write(t.dir().join("local-proxy.toml"), cfg.replace(&echo6, &late))?;
    t.proc_mut("local-proxy")?.signal("HUP")?;
    let home = t.ns(Role::Home).to_string();
    let (late_addr, gone) = (format!("[{mesh}]:{LATE}"), format!("[{mesh}]:{STREAM6}"));
    wait_until("the reload's listeners", Duration::from_secs(10), Duration::from_millis(50), || {
        let out = cmd::exec_ok(&home, &["ss", "-Hltn"], cmd::DEFAULT_TIMEOUT)?;
        check(out.contains(&late_addr) && !out.contains(&gone), || format!("listening:\n{out}"))
    })?;
    let (_, peer) = probe(t, b, Role::Meshc, "tcp", SocketAddr::new(mesh.into(), LATE), &[])?;
    if !peer.starts_with(&format!("{}:", addr::HOME_LAN)) {
        bail!("the new, not transparent stream: the LAN service saw {peer}, want the proxy's LAN address");
    }
    if probe(t, b, Role::Meshc, "tcp", SocketAddr::new(mesh.into(), STREAM6), &[]).is_ok() {
        bail!("the removed stream's port still answers");
    }
    let held = t.proc_mut("held")?;
    let status = held.wait_exit(Duration::from_secs(10))?;
    if !status.success() || !held.stdout().contains("echo=ping") {
        bail!("the connection held across the reload broke ({status}):\n{}", held.tail(10));
    }
    let reloads = lp_metrics(t)?.get("local_proxy_config_reloads_total", &[("result", "ok")]);
    if reloads != Some(1.0) {
        bail!("local_proxy_config_reloads_total{{result=\"ok\"}} = {reloads:?}");
    }
    Ok(())
}

fn lp_metrics(t: &Topology) -> Result<Metrics> {
    metrics::scrape(t.ns(Role::Home), LP_ADMIN)
}

#[test]
fn local_proxy_end_to_end() {
    if let Err(e) = run() {
        panic!("{e:#}");
    }
}

fn run() -> Result<()> {
    let start = Instant::now();
    let b = bins()?;
    let mut t = Topology::build(b.harness.clone(), Options { mesh: true, backends: false })?;
    started(start, &format!("topology up ({}; dir {})", t.tag, t.dir().display()));
    // Dual-stack clearnet: home's wan1 has an IPv6 address too, the ingress nodes IPv6 routes.
    t.add_ipv6()?;
    let (ca, chain, key) = make_cert(t.dir())?;
    start_lan(&mut t, &b)?;
    configure_home(&t)?;
    let cfg = local_proxy_config(&t, &chain, &key)?;
    start_local_proxy(&mut t, &b, &cfg)?;
    started(start, "local-proxy up in home (WAN1, WAN2, mesh), LAN service up");
    let mesh = t.home_mesh_addr().context("home mesh address")?;
    let icfg = ingress_config(mesh);
    start_ingress(&mut t, &b, Role::Ingress1, &icfg)?;
    start_ingress(&mut t, &b, Role::Ingress2, &icfg)?;
    started(start, "ingress1 and ingress2 up, every path healthy (PROXY v2 LOCAL probes)");

    // 1. HTTPS by name through each ingress: the LAN service sees the client in X-Forwarded-For.
    let client = IpAddr::from(addr::CLIENT).to_string();
    for ingress in [addr::INGRESS1, addr::INGRESS2] {
        let body = curl(&t, Role::Client, ingress.into(), 443, &ca, "10")?;
        let xff = forwarded_for(&body);
        if xff.as_deref() != Some(client.as_str()) {
            bail!("via {ingress}: X-Forwarded-For {xff:?}, want {client}; the service saw:\n{body}");
        }
        if !body.starts_with(&format!("peer={}:", addr::HOME_LAN)) {
            bail!("the HTTP service should see the proxy as its TCP peer:\n{body}");
        }
    }
    started(start, "client -> ingress1/ingress2 -> WAN -> local-proxy -> lan over HTTPS by name; XFF = client");

    // 2. The mesh-only client, straight to home's Yggdrasil address by name.
    let meshc = t.ygg(Role::Meshc).context("meshc router")?.address;
    let body = curl(&t, Role::Meshc, mesh.into(), 443, &ca, "10")?;
    if forwarded_for(&body).as_deref() != Some(meshc.to_string().as_str()) {
        bail!("over the mesh: want X-Forwarded-For {meshc}; the service saw:\n{body}");
    }
    started(start, &format!("meshc -> [{mesh}]:443 over yggdrasil by name; XFF = {meshc}"));

    // 3. Multi-WAN replies, rp_filter strict on home's WAN links and on the router.
    for port in [VIA_WAN1, VIA_WAN2] {
        let body = curl(&t, Role::Client, addr::INGRESS1.into(), port, &ca, "10")?;
        if forwarded_for(&body).as_deref() != Some(client.as_str()) {
            bail!("via port {port} (one WAN): the service saw:\n{body}");
        }
    }
    for (wan, port) in [(addr::WAN1, 40001), (addr::WAN2, 40002)] {
        // UDP replies leave from the WAN socket the datagram came in on. The datagram carries a
        // PROXY v2 header, as an ingress that relays UDP with one would send.
        let to = SocketAddr::new(wan.into(), STREAM4_UDP);
        let fake_client = format!("{}:{port}", addr::CLIENT);
        let (_, peer) = probe(&t, &b, Role::Ingress1, "udp", to, &["--proxy-client", &fake_client])?;
        if peer != fake_client {
            bail!("UDP via {wan}: the LAN service saw {peer}, want {fake_client}");
        }
    }
    let home = t.ns(Role::Home).to_string();
    let wan2 = addr::WAN2.to_string();
    cmd::ip(&home, &["rule", "del", "from", &wan2, "table", addr::WAN2_TABLE])?;
    let broken = curl(&t, Role::Client, addr::INGRESS1.into(), VIA_WAN2, &ca, "3");
    let broken_udp = probe(&t, &b, Role::Ingress1, "udp", SocketAddr::new(addr::WAN2.into(), STREAM4_UDP), &[]);
    cmd::ip(&home, &["rule", "add", "from", &wan2, "table", addr::WAN2_TABLE, "pref", addr::WAN2_TABLE])?;
    if broken.is_ok() || broken_udp.is_ok() {
        bail!(
            "WAN2 answered without its source rule (HTTPS {:?}, UDP {:?}): rp_filter is not strict",
            broken.is_ok(),
            broken_udp.is_ok()
        );
    }
    wait_until("HTTPS through WAN2 again", Duration::from_secs(15), Duration::from_millis(200), || {
        curl(&t, Role::Client, addr::INGRESS1.into(), VIA_WAN2, &ca, "3")
    })?;
    started(start, "each WAN alone carries HTTPS and UDP with strict rp_filter; WAN2 fails without its source rule");

    // 3b. wan1's IPv6 address alone: the local proxy's socket on it, PROXY v2 from the ingress
    //     nodes' IPv6 addresses trusted (the client's address reaches the service).
    for ingress in [addr::INGRESS1, addr::INGRESS2] {
        let body = curl(&t, Role::Client, ingress.into(), VIA_WAN1_V6, &ca, "10")?;
        if forwarded_for(&body).as_deref() != Some(client.as_str()) {
            bail!("via {ingress} and wan1's IPv6 address: the service saw:\n{body}");
        }
    }
    let sockets = cmd::exec_ok(&home, &["ss", "-Hltn6"], cmd::DEFAULT_TIMEOUT)?;
    if !sockets.contains(&format!("[{}]:443", addr::WAN1_V6)) {
        bail!("no local-proxy socket on [{}]:443:\n{sockets}", addr::WAN1_V6);
    }
    started(start, "HTTPS through wan1's IPv6 address: its own socket, PROXY v2 from IPv6 ingress addresses trusted");

    // 4. Transparent TCP: through the ingress (client address from PROXY v2) and over the mesh.
    for ingress in [addr::INGRESS1, addr::INGRESS2] {
        let (local, peer) = probe(&t, &b, Role::Client, "tcp", SocketAddr::new(ingress.into(), STREAM4_TCP), &[])?;
        if local != peer {
            bail!("transparent TCP via {ingress}: the LAN service saw {peer}, the client is {local}");
        }
    }
    let (local, peer) = probe(&t, &b, Role::Meshc, "tcp", SocketAddr::new(mesh.into(), STREAM6), &[])?;
    if local != peer {
        bail!("transparent TCP over the mesh: the LAN service saw {peer}, the client is {local}");
    }
    started(start, "transparent TCP: lan sees the client's own address and port (via ingress, and over the mesh)");

    // 5. Transparent UDP over the mesh (a real client's datagrams), and through the real ingress,
    //    which relays UDP without a PROXY header: there the ingress is the best address known.
    let (local, peer) = probe(&t, &b, Role::Meshc, "udp", SocketAddr::new(mesh.into(), STREAM6), &[])?;
    if local != peer {
        bail!("transparent UDP over the mesh: the LAN service saw {peer}, the client is {local}");
    }
    let (_, peer) = probe(&t, &b, Role::Client, "udp", SocketAddr::new(addr::INGRESS1.into(), STREAM4_UDP), &[])?;
    let peer_ip: SocketAddr = peer.parse().with_context(|| format!("peer {peer}"))?;
    if peer_ip.ip() != IpAddr::from(addr::INGRESS1) {
        bail!("UDP through ingress1: the LAN service saw {peer}, want ingress1's address");
    }
    started(start, "transparent UDP: lan sees the mesh client's address; through the ingress, the ingress's");

    // 6. The policy route is what makes it work: without the fwmark rule the service's replies
    //    are forwarded away instead of reaching the proxy's transparent socket.
    for fam in ["-4", "-6"] {
        cmd::ip(&home, &[fam, "rule", "del", "fwmark", TPROXY_MARK, "lookup", TPROXY_TABLE])?;
    }
    let without = probe(&t, &b, Role::Client, "tcp", SocketAddr::new(addr::INGRESS1.into(), STREAM4_TCP), &[]);
    let without6 = probe(&t, &b, Role::Meshc, "udp", SocketAddr::new(mesh.into(), STREAM6), &[]);
    for fam in ["-4", "-6"] {
        cmd::ip(&home, &[fam, "rule", "add", "fwmark", TPROXY_MARK, "lookup", TPROXY_TABLE, "pref", TPROXY_TABLE])?;
    }
    if without.is_ok() || without6.is_ok() {
        bail!("transparent streams worked without the fwmark rule: {without:?} {without6:?}");
    }
    let (local, peer) = probe(&t, &b, Role::Client, "tcp", SocketAddr::new(addr::INGRESS1.into(), STREAM4_TCP), &[])?;
    if local != peer {
        bail!("after restoring the rule: lan saw {peer}, client {local}");
    }
    started(start, "without home's fwmark rule transparent streams fail; with it they work again");

    // 7. SIGHUP with listener changes: the mesh clients' TCP stream (7102) removed, a new one
    //    (7103, not transparent) added; a connection held on the removed one goes on.
    reload_listeners(&mut t, &b, &cfg, mesh)?;
    started(start, "SIGHUP: new stream port bound, removed one closed, held connection kept");

    let m = lp_metrics(&t)?;
    let ok = |s: &str| m.get("local_proxy_stream_connections_total", &[("stream", s), ("result", "ok")]).unwrap_or(0.0);
    let failed_setup = m.sum("local_proxy_stream_connections_total", &[("result", "transparent_failed")]);
    if ok("echo4") < 3.0 || ok("echo6") < 2.0 || failed_setup > 0.0 {
        bail!("stream metrics: echo4 ok {}, echo6 ok {}, transparent_failed {failed_setup}", ok("echo4"), ok("echo6"));
    }
    let log = t.proc_mut("lan-service")?.stdout();
    if !log.lines().any(|l| l == format!("tcp peer={}", peer)) {
        bail!("the LAN service's log lacks tcp peer={peer}:\n{log}");
    }
    eprintln!(
        "RESULT local proxy e2e: HTTPS via both ingress nodes and the mesh, multi-WAN with strict rp_filter, \
         transparent TCP/UDP (v4 via ingress, v6 over the mesh) in {:.1}s",
        start.elapsed().as_secs_f64()
    );
    drop(t);
    started(start, "cleaned up");
    Ok(())
}
