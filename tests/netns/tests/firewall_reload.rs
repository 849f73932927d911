//! The local proxy's `[firewall]` follows a reload (SIGHUP), against a real authoritative
//! server (knotd, in its own namespace), while ingress1 and ingress2 keep opening TCP
//! connections (100/s each) to a protected port:
//! - ingress-3's name added to `ingress_names`: ingress3 passes once its name is looked up;
//!   the two others never see a failed connect during the swap (counted, asserted zero);
//! - the table renamed: the new one is in force before the old one goes (same batch); still no
//!   failed connect;
//! - a reload with a bad `[firewall]` section is refused and the running table is unchanged
//!   (read back from the kernel before and after);
//! - `static_addresses` with a CIDR prefix admits every address in it (two addresses of the
//!   stranger's subnet), for the firewall and for PROXY v2 trust, and nobody outside it; the
//!   kernel's table (`firewall show` and `nft -j`) holds the prefix;
//! - `[firewall]` removed on reload: the table is deleted; added again with the system
//!   resolver, whose configuration cannot be read in home: the reload is refused (it used to
//!   be applied with no table); added again on reload: the table is back, the ingress nodes
//!   pass and the client does not;
//! - across restarts (the proxy runs with `STATE_DIRECTORY`, as systemd starts it): stopped,
//!   the table renamed in the config and started again, the old table is gone and the new one
//!   lets the ingress nodes in; stopped, `[firewall]` removed and started again, no table is
//!   left.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use netns::knot::{self, Knot};
use netns::loadgen::LoadConfig;
use netns::netprobe::{Probe, Seen};
use netns::topology::{addr, Options, Role, Topology};
use netns::wait::{check, wait_until};
use netns::{cmd, metrics};

const TTL: u32 = 5;
/// Raw TCP echo in home on a protected port.
const RAW: u16 = 7101;
const ADMIN: &str = "127.0.0.1:9181";
const TABLE: &str = "lp_fw";
const TABLE_RENAMED: &str = "lp_fw_renamed";
/// The static prefix: the stranger's /29 (its address and a second one added below).
const PREFIX: &str = "192.0.2.32/29";
const STRANGER2: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 36);
/// An IPv6 prefix next to it: the kernel takes an IPv6 interval set too.
const PREFIX6: &str = "2001:db8:99::/48";
/// Connections per second from each of ingress1 and ingress2.
const RATE: u32 = 100;

fn netprobe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_netprobe"))
}

fn local_proxy_bin() -> PathBuf {
    let p = std::env::var_os("LOCAL_PROXY_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_BIN_EXE_loadgen")).parent().expect("bin dir").join("local-proxy"));
    assert!(p.is_file(), "{} missing: build it with `cargo build -p local-proxy`", p.display());
    p
}

fn sa(ip: impl Into<IpAddr>, port: u16) -> SocketAddr {
    SocketAddr::new(ip.into(), port)
}

/// What the `[firewall]` section holds in one step of the test.
#[derive(Clone)]
struct Fw {
    names: Vec<&'static str>,
    statics: Vec<&'static str>,
    table: &'static str,
    /// Replaces the section with something invalid.
    broken: bool,
    /// No `nameservers`: the system's resolver configuration.
    system_resolver: bool,
}

/// A resolver configuration for the programs `ip netns exec` starts in `ns` (it mounts
/// /etc/netns/NS/* over /etc for them) that no resolver can read; removed on drop.
struct BrokenResolvConf(PathBuf);

impl BrokenResolvConf {
    fn new(ns: &str) -> Self {
        let dir = Path::new("/etc/netns").join(ns);
        std::fs::create_dir_all(&dir).expect("creating /etc/netns/NS");
        let guard = Self(dir);
        std::fs::write(guard.0.join("resolv.conf"), "nameserver not-an-address\n").expect("writing resolv.conf");
        guard
    }
}

impl Drop for BrokenResolvConf {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
        // Only if empty: someone else's namespaces may have files there.
        let _ = std::fs::remove_dir("/etc/netns");
    }
}

fn config(fw: Option<&Fw>) -> String {
    let mut text = format!(
        r#"[admin]
listen = "{ADMIN}"

[wan]
addresses = ["{wan1}", "{wan2}"]
# No static trust: PROXY v2 trust comes from the firewall's list only.
trusted_ingress = []
proxy_header_timeout = "2s"

[http]
https_port = 8443
http_port = 8081

[[stream]]
name = "echo"
listen = "{echo}/tcp"
upstream = "{lan}:{echo}"
"#,
        wan1 = addr::WAN1,
        wan2 = addr::WAN2,
        echo = addr::ECHO_PORT,
        lan = addr::LAN,
    );
    if let Some(fw) = fw {
        let list = |v: &[&str]| v.iter().map(|s| format!("\"{s}\"")).collect::<Vec<_>>().join(", ");
        let names: Vec<String> = fw.names.iter().map(|n| format!("{n}.{}", knot::ZONE)).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        // Broken: a prefix with host bits set and no interfaces (two field errors).
        let interfaces = if fw.broken { "[]" } else { "[\"wan1\", \"wan2\"]" };
        let statics = if fw.broken { "[\"192.0.2.33/29\"]".to_string() } else { format!("[{}]", list(&fw.statics)) };
        text.push_str(&format!(
            r#"
[firewall]
ingress_names = [{names}]
static_addresses = {statics}
interfaces = {interfaces}
protect_ports = ["{echo}/tcp", "{RAW}/tcp", "8443/tcp", "8081/tcp"]
{nameservers}
min_refresh = "1s"
max_refresh = "30s"
lookup_timeout = "1s"
table = "{table}"
"#,
            names = list(&names),
            echo = addr::ECHO_PORT,
            nameservers = if fw.system_resolver { String::new() } else { format!("nameservers = [\"{}\"]", knot::DNS) },
            table = fw.table,
        ));
    }
    text
}

struct Proxy {
    /// The config the proxy runs with (rewritten before each SIGHUP).
    config: PathBuf,
    /// The last good config, for `firewall show` (it reads the table name from a config).
    shown: PathBuf,
    bin: PathBuf,
    home: String,
}

impl Proxy {
    fn write(&self, fw: Option<&Fw>) {
        let text = config(fw);
        std::fs::write(&self.config, &text).expect("writing local-proxy.toml");
        if fw.is_some_and(|f| !f.broken) {
            std::fs::write(&self.shown, &text).expect("writing show.toml");
        }
    }

    /// SIGHUP, then waits for the reload's outcome in the reload counter.
    fn reload(&self, t: &mut Topology, result: &str) {
        let before = reloads(&self.home, result);
        t.proc_mut("local-proxy").expect("proc").signal("HUP").expect("SIGHUP");
        wait_until(&format!("reload counted as {result}"), Duration::from_secs(10), Duration::from_millis(20), || {
            let n = reloads(&self.home, result);
            check(n > before, || format!("{result} reloads still {n}"))
        })
        .expect("reload outcome");
    }

    fn show(&self) -> anyhow::Result<String> {
        let (b, c) = (self.bin.display().to_string(), self.shown.display().to_string());
        cmd::exec_ok(&self.home, &[&b, "firewall", "show", "-c", &c], Duration::from_secs(5))
    }
}

fn reloads(home: &str, result: &str) -> f64 {
    metrics::scrape(home, ADMIN)
        .map(|m| m.matching("local_proxy_config_reloads_total", &[("result", result)]).map(|s| s.value).sum())
        .unwrap_or(0.0)
}

/// The entries in `firewall show`'s `elements = { ... }` lines, sorted.
fn shown_elements(show: &str) -> Vec<String> {
    let mut v: Vec<String> = show
        .lines()
        .filter_map(|l| l.trim().strip_prefix("elements = { "))
        .flat_map(|l| l.trim_end_matches(" }").split(", ").map(str::to_string).collect::<Vec<_>>())
        .collect();
    v.sort();
    v
}

fn table_exists(home: &str, table: &str) -> bool {
    cmd::exec(home, &["nft", "list", "table", "inet", table], cmd::DEFAULT_TIMEOUT).is_ok_and(|o| o.status.success())
}

/// A TCP probe to the protected raw port from `ns` (source `from` if given).
fn passes(np: &Path, ns: &str, from: Option<IpAddr>) -> Seen {
    let mut p = Probe::tcp(sa(addr::WAN1, RAW)).timeout_ms(500);
    if let Some(ip) = from {
        p = p.from(ip);
    }
    p.run_in(np, ns).unwrap_or_else(|e| Seen::Error(e.to_string()))
}

#[test]
fn firewall_follows_reload_without_a_gap() {
    let start = Instant::now();
    let mut t = common::build(Options { mesh: false, backends: false });
    t.add_ingress3().expect("ingress3");
    t.start_backends_in(Role::Lan).expect("echo backends in lan");
    let home = t.ns(Role::Home).to_string();
    let (ing3, stranger, client) =
        (t.ns(Role::Ingress3).to_string(), t.ns(Role::Stranger).to_string(), t.ns(Role::Client).to_string());
    cmd::ip(&stranger, &["addr", "add", &format!("{STRANGER2}/29"), "dev", "eth0"]).expect("second stranger address");

    let dns = Knot::start(
        t.ns(Role::Inet),
        &t.tag,
        t.dir(),
        TTL,
        &[
            ("ingress-1", addr::INGRESS1.into()),
            ("ingress-2", addr::INGRESS2.into()),
            ("ingress-3", addr::INGRESS3.into()),
        ],
    )
    .expect("knotd");
    let np = netprobe();
    let mut serve = vec![np.display().to_string(), "serve".into()];
    for ip in [addr::WAN1, addr::WAN2] {
        serve.extend(["--tcp".into(), sa(ip, RAW).to_string()]);
    }
    t.spawn(Role::Home, "raw-echo", &serve).expect("raw echo in home");

    let proxy = Proxy {
        config: t.dir().join("local-proxy.toml"),
        shown: t.dir().join("show.toml"),
        bin: local_proxy_bin(),
        home: home.clone(),
    };
    // Before the proxy starts: `ip netns exec` mounts it for the programs it starts.
    let _resolv = BrokenResolvConf::new(&home);
    let two = Fw {
        names: vec!["ingress-1", "ingress-2"],
        statics: vec![],
        table: TABLE,
        broken: false,
        system_resolver: false,
    };
    proxy.write(Some(&two));
    // As systemd's StateDirectory= gives it: where the table's name is kept across restarts.
    let state = t.dir().join("state");
    std::fs::create_dir_all(&state).expect("state directory");
    let argv: Vec<String> = vec![
        "env".into(),
        format!("STATE_DIRECTORY={}", state.display()),
        proxy.bin.display().to_string(),
        "-c".into(),
        proxy.config.display().to_string(),
    ];
    t.spawn(Role::Home, "local-proxy", &argv).expect("starting local-proxy");
    let want2 = vec![addr::INGRESS1.to_string(), addr::INGRESS2.to_string()];
    wait_until("both ingress addresses in the table", Duration::from_secs(15), Duration::from_millis(50), || {
        t.proc_mut("local-proxy")?.ensure_running()?;
        let s = proxy.show()?;
        check(shown_elements(&s) == want2 && s.contains("enforcing"), || s.clone())?;
        metrics::scrape(&home, ADMIN).map(|_| ())
    })
    .expect("allowlist from DNS");
    assert_eq!(passes(&np, &ing3, None), Seen::Timeout, "ingress3 is not listed yet");
    common::phase(start, "local-proxy up: ingress-1 and ingress-2 allowed, ingress3 dropped");

    // Continuous probes from both allowlisted ingress nodes, each to its own WAN address.
    let load = |target: Ipv4Addr| LoadConfig {
        targets: vec![sa(target, RAW)],
        interval: Duration::from_millis(u64::from(1000 / RATE)),
        duration: Duration::from_secs(120),
        connect_timeout: Duration::from_secs(1),
        io_timeout: Duration::from_secs(2),
        ..LoadConfig::default()
    };
    let load1 = t.start_load(Role::Ingress1, "probes-ingress1", load(addr::WAN1)).expect("loadgen in ingress1");
    let load2 = t.start_load(Role::Ingress2, "probes-ingress2", load(addr::WAN2)).expect("loadgen in ingress2");
    std::thread::sleep(Duration::from_secs(2));

    // 1. ingress-3 added.
    let three = Fw { names: vec!["ingress-1", "ingress-2", "ingress-3"], ..two.clone() };
    proxy.write(Some(&three));
    let hup = Instant::now();
    proxy.reload(&mut t, "ok");
    wait_until("ingress3 passes", Duration::from_secs(10), Duration::from_millis(20), || {
        let seen = passes(&np, &ing3, None);
        check(seen.answered(), || format!("{seen:?}"))
    })
    .expect("ingress3 allowed after the reload");
    let admitted = hup.elapsed();
    let show = proxy.show().expect("firewall show");
    let want3 = vec![addr::INGRESS1.to_string(), addr::INGRESS2.to_string(), addr::INGRESS3.to_string()];
    assert_eq!(shown_elements(&show), want3, "{show}");
    common::report(&format!(
        "RESULT firewall reload: ingress-3 added by SIGHUP passes after {:.0} ms (lookup + one batch)",
        admitted.as_secs_f64() * 1000.0
    ));
    std::thread::sleep(Duration::from_secs(2));

    // 2. The table renamed: the new table first, the old deleted in the same batch.
    let renamed = Fw { table: TABLE_RENAMED, ..three.clone() };
    proxy.write(Some(&renamed));
    proxy.reload(&mut t, "ok");
    wait_until("the renamed table replaces the old", Duration::from_secs(10), Duration::from_millis(20), || {
        check(table_exists(&home, TABLE_RENAMED) && !table_exists(&home, TABLE), || "old table still there".into())
    })
    .expect("table renamed");
    let show = proxy.show().expect("firewall show");
    assert_eq!(shown_elements(&show), want3, "{show}");
    assert!(show.contains(&format!("table inet {TABLE_RENAMED} ")), "{show}");
    common::phase(start, "table renamed on reload; the old one gone");
    std::thread::sleep(Duration::from_secs(2));

    // 3. A bad [firewall] section: refused, the running table unchanged.
    let before = proxy.show().expect("firewall show");
    let nft_before =
        cmd::exec_ok(&home, &["nft", "list", "table", "inet", TABLE_RENAMED], cmd::DEFAULT_TIMEOUT).expect("nft");
    proxy.write(Some(&Fw { broken: true, ..renamed.clone() }));
    proxy.reload(&mut t, "invalid");
    std::thread::sleep(Duration::from_millis(500));
    let after = proxy.show().expect("firewall show");
    assert_eq!(after, before, "a refused reload changed the table");
    let nft_after =
        cmd::exec_ok(&home, &["nft", "list", "table", "inet", TABLE_RENAMED], cmd::DEFAULT_TIMEOUT).expect("nft");
    assert_eq!(nft_after, nft_before);
    let log = t.proc_mut("local-proxy").expect("proc").stderr();
    for needle in ["reload refused", "firewall.static_addresses[0]", "firewall.interfaces"] {
        assert!(log.contains(needle), "no `{needle}` in the log:\n{log}");
    }
    assert!(passes(&np, &ing3, None).answered(), "ingress3 after the refused reload");
    common::phase(start, "a bad [firewall] reload refused naming its fields; the table read back unchanged");

    // 4. A static CIDR prefix: every address in it passes (firewall and PROXY trust), no other.
    let cidr = Fw { statics: vec![PREFIX, PREFIX6], ..renamed.clone() };
    proxy.write(Some(&cidr));
    proxy.reload(&mut t, "ok");
    wait_until("the prefix in the table", Duration::from_secs(10), Duration::from_millis(20), || {
        let s = proxy.show()?;
        check(shown_elements(&s).contains(&PREFIX.to_string()), || s.clone())
    })
    .expect("prefix applied");
    for from in [addr::STRANGER, STRANGER2] {
        let seen = passes(&np, &stranger, Some(from.into()));
        assert!(seen.answered(), "{from} inside {PREFIX}: {seen:?}");
        let proxied = Probe::tcp(sa(addr::WAN1, addr::ECHO_PORT))
            .proxy_v2(sa(addr::CLIENT, 40000))
            .from(from.into())
            .run_in(&np, &stranger)
            .expect("probe");
        assert!(
            matches!(&proxied, Seen::Answer(a) if a.starts_with(&format!("{}:{}", addr::LAN, addr::ECHO_PORT))),
            "PROXY v2 from {from} (inside {PREFIX}) not trusted: {proxied:?}"
        );
    }
    assert_eq!(passes(&np, &client, None), Seen::Timeout, "the client is outside every entry");
    let show = proxy.show().expect("firewall show");
    let json = cmd::exec_ok(&home, &["nft", "-j", "list", "table", "inet", TABLE_RENAMED], cmd::DEFAULT_TIMEOUT)
        .expect("nft -j");
    let v: serde_json::Value = serde_json::from_str(&json).expect("nft json");
    let prefixes: Vec<String> = v["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| o.get("set"))
        .flat_map(|s| s["elem"].as_array().cloned().unwrap_or_default())
        .filter_map(|e| Some(format!("{}/{}", e["prefix"]["addr"].as_str()?, e["prefix"]["len"].as_u64()?)))
        .collect();
    assert_eq!(prefixes, vec![PREFIX.to_string(), PREFIX6.to_string()], "nft -j: {v}");
    let mut want = want3.clone();
    want.extend([PREFIX.to_string(), PREFIX6.to_string()]);
    want.sort();
    assert_eq!(shown_elements(&show), want, "{show}");
    assert!(show.contains("flags interval"), "{show}");
    common::phase(
        start,
        &format!("static {PREFIX}: both stranger addresses pass and are PROXY-trusted; the client does not"),
    );

    // The probes: zero failed connects through every swap.
    load1.request_stop().expect("stop");
    load2.request_stop().expect("stop");
    let r1 = load1.finish(&mut t).expect("ingress1 probes");
    let r2 = load2.finish(&mut t).expect("ingress2 probes");
    for (who, r) in [("ingress1", &r1), ("ingress2", &r2)] {
        let s = &r.summary;
        common::report(&format!(
            "RESULT firewall reload probes {who}: {} connects over {:.1}s ({RATE}/s asked), {} ok, {} failed, {} skipped",
            s.started,
            s.end_ms.saturating_sub(s.start_ms) as f64 / 1000.0,
            s.ok,
            s.failed,
            s.skipped,
        ));
        assert!(s.started >= u64::from(RATE) * 5, "{who}: only {} connects", s.started);
        assert_eq!(s.failed, 0, "{who} lost access during a swap: {:?}", s.failures);
        assert_eq!(s.ok + s.skipped, s.started, "{who}");
    }

    // 5. [firewall] removed: the table goes.
    proxy.write(None);
    proxy.reload(&mut t, "ok");
    wait_until("the table deleted", Duration::from_secs(10), Duration::from_millis(20), || {
        check(!table_exists(&home, TABLE_RENAMED), || "still there".into())
    })
    .expect("table removed with the section");
    assert!(passes(&np, &client, None).answered(), "no firewall: the client reaches the port");
    common::phase(start, "[firewall] removed on reload: table deleted");

    // 6. Added again with the system resolver, which cannot be read in home: refused, no table.
    proxy.write(Some(&Fw { system_resolver: true, ..two.clone() }));
    proxy.reload(&mut t, "invalid");
    std::thread::sleep(Duration::from_millis(500));
    assert!(!table_exists(&home, TABLE), "a table from a refused reload");
    let log = t.proc_mut("local-proxy").expect("proc").stderr();
    assert!(log.contains("firewall: resolver: reading the system resolver configuration"), "{log}");
    assert!(passes(&np, &client, None).answered(), "no firewall still: the client reaches the port");
    common::phase(start, "[firewall] with an unreadable system resolver: reload refused, no table");

    // 7. Added again on reload: the firewall starts then.
    proxy.write(Some(&two));
    proxy.reload(&mut t, "ok");
    wait_until("the table back with both names", Duration::from_secs(10), Duration::from_millis(20), || {
        let s = proxy.show()?;
        check(shown_elements(&s) == want2 && s.contains("enforcing"), || s.clone())
    })
    .expect("firewall added by a reload");
    assert!(passes(&np, t.ns(Role::Ingress1), None).answered(), "ingress1 after the re-add");
    assert_eq!(passes(&np, &client, None), Seen::Timeout, "the client after the re-add");
    assert!(!table_exists(&home, TABLE_RENAMED), "the removed table came back");
    common::phase(start, "[firewall] added on reload: table installed, ingress-1 passes, the client does not");

    // 8. Stopped (the table stays, closed), renamed in the config, started again: the old
    // table goes in the first batch, the new one lets ingress-1 in and keeps the client out.
    t.stop("local-proxy").expect("stop local-proxy");
    assert!(table_exists(&home, TABLE), "the table left closed on exit");
    proxy.write(Some(&Fw { table: TABLE_RENAMED, ..two.clone() }));
    t.spawn(Role::Home, "local-proxy", &argv).expect("starting local-proxy again");
    wait_until("the renamed table, enforcing", Duration::from_secs(15), Duration::from_millis(50), || {
        t.proc_mut("local-proxy")?.ensure_running()?;
        let s = proxy.show()?;
        check(shown_elements(&s) == want2 && s.contains("enforcing"), || s.clone())
    })
    .expect("renamed table after the restart");
    assert!(!table_exists(&home, TABLE), "the previous run's table is still there after the rename");
    assert!(passes(&np, t.ns(Role::Ingress1), None).answered(), "ingress1 after the restart");
    assert_eq!(passes(&np, &client, None), Seen::Timeout, "the client after the restart");
    common::phase(start, "restarted with the table renamed: the old table deleted, the new one enforcing");

    // 9. Stopped, [firewall] removed, started again: the table the last run left goes.
    t.stop("local-proxy").expect("stop local-proxy");
    assert!(table_exists(&home, TABLE_RENAMED), "the table left closed on exit");
    proxy.write(None);
    t.spawn(Role::Home, "local-proxy", &argv).expect("starting local-proxy without a firewall");
    wait_until("the proxy serving", Duration::from_secs(15), Duration::from_millis(50), || {
        t.proc_mut("local-proxy")?.ensure_running()?;
        metrics::scrape(&home, ADMIN).map(|_| ())
    })
    .expect("local-proxy up");
    assert!(!table_exists(&home, TABLE_RENAMED), "the last run's table stayed with no [firewall]");
    assert!(!state.join("firewall-table").exists(), "the record of a deleted table stayed");
    assert!(passes(&np, &client, None).answered(), "no firewall: the client reaches the port");
    common::phase(start, "restarted with no [firewall]: the last run's table deleted");
    t.stop("local-proxy").expect("stop local-proxy");
    drop(dns);
    drop(t);
}
