//! The local proxy's nftables allowlist, kept from the ingress nodes' DNS names, against a real
//! authoritative server (knotd, in its own namespace, TTL 2 s):
//! - from the ingress namespaces the protected WAN ports answer (TCP through the proxy with a
//!   PROXY v2 header that only the DNS-fed trust set accepts, and raw TCP/UDP); from a stranger
//!   on the same router they do not; unprotected ports and the mesh listener are untouched;
//! - the kernel's table, read back by `local-proxy firewall show` and by `nft -j`, matches;
//! - `knsupdate` moves ingress-2 to a new address: within TTL + refresh bound the new address
//!   passes and the old does not;
//! - knotd stopped: the allowlist keeps the last known addresses;
//! - restart with DNS down: the previous run's allowlist is carried over (enforcing) until the
//!   names answer; after a reboot (the kernel's table gone), the list saved in the state
//!   directory is; with neither (a first start), closed (default) or open (configured);
//!   SIGTERM leaves the table (closed) unless `remove_on_exit`; other tables are never touched;
//! - static addresses only (no names): a static taken out of the config is refused after a
//!   restart (nothing is carried over).

mod common;

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use netns::knot::{self, Knot};
use netns::netprobe::{Probe, Seen};
use netns::topology::{addr, Options, Role, Topology};
use netns::wait::{check, wait_until};
use netns::{cmd, metrics};

const TTL: u32 = 2;
const MIN_REFRESH: Duration = Duration::from_secs(1);
/// Raw TCP/UDP echo in home on a protected port, and on an unprotected one.
const RAW: u16 = 7101;
const UNPROTECTED: u16 = 7102;
/// Nothing listens here (unprotected): a stranger gets a reset, not silence.
const CLOSED: u16 = 7103;
/// ingress-2's address after the DNS update (a second address in its namespace).
const INGRESS2_NEW: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 20);
const ADMIN: &str = "127.0.0.1:9181";
const TABLE: &str = "local_proxy";
/// The last enforcing table's allowlist, in the proxy's state directory.
const SAVED: &str = "firewall-allowed";

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

struct Proxy {
    config: PathBuf,
    bin: PathBuf,
    home: String,
    /// `STATE_DIRECTORY`, as systemd's StateDirectory= gives it: the table's name and its last
    /// enforcing allowlist are kept there across restarts and reboots.
    state: PathBuf,
}

impl Proxy {
    fn write_config(&self, mesh: IpAddr, on_no_answer: &str, remove_on_exit: bool) {
        let text = format!(
            r#"[admin]
listen = "{ADMIN}"

[wan]
addresses = ["{wan1}", "{wan2}"]
# No static trust: the PROXY v2 trust of the ingress nodes comes from DNS only.
trusted_ingress = []
proxy_header_timeout = "2s"

[mesh]
listen = "{mesh}"

[http]
https_port = 8443
http_port = 8081

[firewall]
ingress_names = ["ingress-1.{zone}", "ingress-2.{zone}"]
interfaces = ["wan1", "wan2"]
protect_ports = ["{echo}/tcp", "{raw}", "8443/tcp", "8081/tcp"]
nameservers = ["{dns}"]
min_refresh = "{min}s"
max_refresh = "30s"
lookup_timeout = "1s"
on_no_answer = "{on_no_answer}"
remove_on_exit = {remove_on_exit}
table = "{TABLE}"

[[stream]]
name = "echo"
listen = "{echo}/tcp"
upstream = "{lan}:{echo}"
"#,
            wan1 = addr::WAN1,
            wan2 = addr::WAN2,
            zone = knot::ZONE,
            echo = addr::ECHO_PORT,
            raw = RAW,
            dns = knot::DNS,
            min = MIN_REFRESH.as_secs(),
            lan = addr::LAN,
        );
        std::fs::write(&self.config, text).expect("writing local-proxy.toml");
    }

    /// As [`write_config`](Self::write_config) (closed, kept on exit), with `statics` instead
    /// of the ingress names.
    fn write_static_config(&self, mesh: IpAddr, statics: &[Ipv4Addr]) {
        self.write_config(mesh, "closed", false);
        let text = std::fs::read_to_string(&self.config).expect("reading local-proxy.toml");
        let list: Vec<String> = statics.iter().map(|a| format!("\"{a}\"")).collect();
        let names = format!("ingress_names = [\"ingress-1.{zone}\", \"ingress-2.{zone}\"]", zone = knot::ZONE);
        assert!(text.contains(&names), "{text}");
        let text = text.replace(&names, &format!("static_addresses = [{}]", list.join(", ")));
        std::fs::write(&self.config, text).expect("writing local-proxy.toml");
    }

    fn start(&self, t: &mut Topology) {
        let argv: Vec<String> = vec![
            "env".into(),
            format!("STATE_DIRECTORY={}", self.state.display()),
            self.bin.display().to_string(),
            "-c".into(),
            self.config.display().to_string(),
        ];
        t.spawn(Role::Home, "local-proxy", &argv).expect("starting local-proxy");
        let home = self.home.clone();
        wait_until("local-proxy listening", Duration::from_secs(15), Duration::from_millis(50), || {
            t.proc_mut("local-proxy")?.ensure_running()?;
            let out = cmd::exec_ok(&home, &["ss", "-Hltn"], cmd::DEFAULT_TIMEOUT)?;
            check(out.contains(&format!("{}:{} ", addr::WAN2, addr::ECHO_PORT)), || "not listening yet".into())?;
            metrics::scrape(&home, ADMIN).map(|_| ())
        })
        .expect("local-proxy ready");
    }

    fn show(&self) -> anyhow::Result<String> {
        let (b, c) = (self.bin.display().to_string(), self.config.display().to_string());
        cmd::exec_ok(&self.home, &[&b, "firewall", "show", "-c", &c], Duration::from_secs(5))
    }
}

/// The addresses in `firewall show`'s `elements = { ... }` lines.
fn shown_elements(show: &str) -> BTreeSet<String> {
    show.lines()
        .filter_map(|l| l.trim().strip_prefix("elements = { "))
        .flat_map(|l| l.trim_end_matches(" }").split(", ").map(str::to_string).collect::<Vec<_>>())
        .collect()
}

/// `nft -j list table inet local_proxy`, read in the test only (the product reads netlink).
fn nft_json(home: &str) -> anyhow::Result<serde_json::Value> {
    let out = cmd::exec_ok(home, &["nft", "-j", "list", "table", "inet", TABLE], cmd::DEFAULT_TIMEOUT)?;
    Ok(serde_json::from_str(&out)?)
}

fn nft_objects<'a>(v: &'a serde_json::Value, kind: &'a str) -> impl Iterator<Item = &'a serde_json::Value> + 'a {
    v["nftables"].as_array().into_iter().flatten().filter_map(move |o| o.get(kind))
}

fn nft_elements(v: &serde_json::Value) -> BTreeSet<String> {
    nft_objects(v, "set")
        .flat_map(|s| s["elem"].as_array().cloned().unwrap_or_default())
        .filter_map(|e| e.as_str().map(str::to_string))
        .collect()
}

/// Compares the kernel's table as `nft -j` sees it with `firewall show`: elements, hooks, rules.
fn assert_kernel_matches(home: &str, show: &str) {
    let v = nft_json(home).expect("nft -j list table");
    assert_eq!(nft_elements(&v), shown_elements(show), "set elements differ:\n{show}\n{v}");
    let chains: Vec<&serde_json::Value> = nft_objects(&v, "chain").collect();
    let input = chains.iter().find(|c| c["name"] == "input").expect("chain input");
    assert_eq!(
        (input["hook"].as_str(), input["type"].as_str(), input["policy"].as_str()),
        (Some("input"), Some("filter"), Some("accept"))
    );
    assert!(show.contains("type filter hook input priority 0; policy accept;"), "{show}");
    for chain in ["input", "wan"] {
        let kernel = nft_objects(&v, "rule").filter(|r| r["chain"] == chain).count();
        let block = show.split(&format!("chain {chain} {{")).nth(1).and_then(|b| b.split('}').next()).unwrap_or("");
        let shown = block.lines().filter(|l| !l.trim().is_empty() && !l.contains("type filter")).count();
        assert_eq!(kernel, shown, "rules in chain {chain}: nft has {kernel}, firewall show {shown}:\n{show}");
    }
    let drops = nft_objects(&v, "rule").filter(|r| r["expr"].to_string().contains("\"drop\"")).count();
    assert_eq!(drops, show.lines().filter(|l| l.ends_with(" drop")).count(), "{show}");
}

/// Runs probes in parallel: `(label, namespace, probe, expect an answer?)`.
/// After `what`: our table gone from the kernel, its record and saved allowlist gone from the
/// state directory, and the bystander table as it was.
fn assert_nothing_of_ours_left(home: &str, state: &Path, bystander: &str, what: &str) {
    let gone = cmd::exec(home, &["nft", "list", "table", "inet", TABLE], cmd::DEFAULT_TIMEOUT).expect("nft");
    assert!(!gone.status.success(), "{what} left the table:\n{}", gone.stdout);
    assert!(!state.join(SAVED).exists() && !state.join("firewall-table").exists(), "{what} left the records");
    let still =
        cmd::exec_ok(home, &["nft", "list", "table", "inet", "bystander"], cmd::DEFAULT_TIMEOUT).expect("bystander");
    assert_eq!(still, bystander, "{what} touched another table");
}

fn expect_all(bin: &Path, cases: &[(&str, &str, Probe, bool)]) {
    let results: Vec<(String, Seen, bool)> = std::thread::scope(|s| {
        let handles: Vec<_> = cases
            .iter()
            .map(|(label, ns, p, want)| {
                s.spawn(move || (label.to_string(), p.run_in(bin, ns).expect("running netprobe"), *want))
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("probe thread")).collect()
    });
    let bad: Vec<String> = results
        .iter()
        .filter(|(_, seen, want)| seen.answered() != *want)
        .map(|(l, seen, want)| format!("{l}: {seen:?} (wanted {})", if *want { "an answer" } else { "no answer" }))
        .collect();
    assert!(bad.is_empty(), "unexpected reachability:\n{}", bad.join("\n"));
}

#[test]
fn firewall_allowlist_from_dns() {
    let start = Instant::now();
    let mut t = common::build(Options { mesh: true, backends: false });
    t.start_backends_in(Role::Lan).expect("echo backends in lan");
    let home = t.ns(Role::Home).to_string();
    let (ing1, ing2, stranger, meshc) = (
        t.ns(Role::Ingress1).to_string(),
        t.ns(Role::Ingress2).to_string(),
        t.ns(Role::Stranger).to_string(),
        t.ns(Role::Meshc).to_string(),
    );
    let mesh: IpAddr = t.home_mesh_addr().expect("home mesh address").into();
    cmd::ip(&ing2, &["addr", "add", &format!("{INGRESS2_NEW}/29"), "dev", "eth0"]).expect("second ingress2 address");

    let mut dns = Knot::start(
        t.ns(Role::Inet),
        &t.tag,
        t.dir(),
        TTL,
        &[("ingress-1", addr::INGRESS1.into()), ("ingress-2", addr::INGRESS2.into())],
    )
    .expect("knotd");
    common::phase(start, "knotd serving ingress-1/ingress-2 (TTL 2 s)");

    // Raw echo on a protected and an unprotected port, WAN and mesh sides.
    let np = netprobe();
    let mut serve = vec![np.display().to_string(), "serve".into()];
    for ip in [IpAddr::from(addr::WAN1), addr::WAN2.into(), mesh] {
        for port in [RAW, UNPROTECTED] {
            serve.extend(["--tcp".into(), sa(ip, port).to_string(), "--udp".into(), sa(ip, port).to_string()]);
        }
    }
    t.spawn(Role::Home, "raw-echo", &serve).expect("raw echo in home");
    // Someone else's table: must survive everything below unchanged.
    cmd::run_stdin(
        &["ip", "netns", "exec", &home, "nft", "-f", "-"],
        Some("table inet bystander {\n chain c { type filter hook input priority 10; policy accept; }\n}\n"),
    )
    .expect("bystander table");
    let bystander =
        cmd::exec_ok(&home, &["nft", "list", "table", "inet", "bystander"], cmd::DEFAULT_TIMEOUT).expect("list");

    let state = t.dir().join("state");
    std::fs::create_dir_all(&state).expect("state directory");
    let proxy = Proxy { config: t.dir().join("local-proxy.toml"), bin: local_proxy_bin(), home: home.clone(), state };
    proxy.write_config(mesh, "closed", false);
    let t0 = Instant::now();
    proxy.start(&mut t);
    let both: BTreeSet<String> = [addr::INGRESS1.to_string(), addr::INGRESS2.to_string()].into();
    let show =
        wait_until("both ingress addresses in the table", Duration::from_secs(10), Duration::from_millis(50), || {
            let s = proxy.show()?;
            check(shown_elements(&s) == both, || format!("elements {:?}", shown_elements(&s)))?;
            Ok(s)
        })
        .expect("allowlist from DNS");
    common::phase(
        start,
        &format!("local-proxy up; both ingress addresses allowed {:.2}s after start", t0.elapsed().as_secs_f64()),
    );
    eprintln!("{show}");
    assert!(show.contains("enforcing"), "{show}");
    assert_kernel_matches(&home, &show);

    // Reachability matrix.
    let client = sa(addr::CLIENT, 40000);
    let via_proxy = |wan: Ipv4Addr| Probe::tcp(sa(wan, addr::ECHO_PORT)).proxy_v2(client);
    expect_all(
        &np,
        &[
            ("ingress1 PROXY wan1:7000", &ing1, via_proxy(addr::WAN1), true),
            ("ingress2 PROXY wan2:7000", &ing2, via_proxy(addr::WAN2), true),
            ("ingress1 tcp wan2:7101", &ing1, Probe::tcp(sa(addr::WAN2, RAW)), true),
            ("ingress1 udp wan1:7101", &ing1, Probe::udp(sa(addr::WAN1, RAW)), true),
            ("ingress2 udp wan2:7101", &ing2, Probe::udp(sa(addr::WAN2, RAW)), true),
            ("stranger PROXY wan1:7000", &stranger, via_proxy(addr::WAN1), false),
            ("stranger tcp wan2:7101", &stranger, Probe::tcp(sa(addr::WAN2, RAW)), false),
            ("stranger udp wan1:7101", &stranger, Probe::udp(sa(addr::WAN1, RAW)), false),
            ("stranger udp wan2:7101", &stranger, Probe::udp(sa(addr::WAN2, RAW)), false),
            ("stranger tcp wan1:8443", &stranger, Probe::tcp(sa(addr::WAN1, 8443)), false),
            ("stranger tcp wan1:7102 (unprotected)", &stranger, Probe::tcp(sa(addr::WAN1, UNPROTECTED)), true),
            ("stranger udp wan2:7102 (unprotected)", &stranger, Probe::udp(sa(addr::WAN2, UNPROTECTED)), true),
            ("meshc tcp mesh:7000 (proxy)", &meshc, Probe::tcp(sa(mesh, addr::ECHO_PORT)), true),
            ("meshc tcp mesh:7101", &meshc, Probe::tcp(sa(mesh, RAW)), true),
            ("meshc udp mesh:7101", &meshc, Probe::udp(sa(mesh, RAW)), true),
        ],
    );
    // Silence, not a reset, on protected ports; a reset where nothing listens unprotected.
    assert_eq!(Probe::tcp(sa(addr::WAN1, RAW)).run_in(&np, &stranger).expect("probe"), Seen::Timeout);
    assert_eq!(Probe::tcp(sa(addr::WAN1, CLOSED)).run_in(&np, &stranger).expect("probe"), Seen::Refused);
    let answer = via_proxy(addr::WAN1).run_in(&np, &ing1).expect("probe");
    assert!(
        matches!(&answer, Seen::Answer(a) if a.starts_with(&format!("{}:{}", addr::LAN, addr::ECHO_PORT))),
        "{answer:?}"
    );

    // Our table taken away behind the proxy's back, as Debian's nftables.service does on
    // start and reload (`flush ruleset`): the periodic read-back installs it again (every
    // 10 s), and strangers are refused again.
    cmd::exec_ok(&home, &["nft", "delete", "table", "inet", TABLE], cmd::DEFAULT_TIMEOUT).expect("delete our table");
    let gone = Instant::now();
    wait_until("our table back", Duration::from_secs(15), Duration::from_millis(100), || {
        let s = proxy.show()?;
        check(shown_elements(&s) == both, || format!("elements {:?}", shown_elements(&s)))?;
        nft_json(&home)?;
        Ok(())
    })
    .expect("the table installed again");
    assert_kernel_matches(&home, &show);
    assert_eq!(Probe::tcp(sa(addr::WAN1, RAW)).run_in(&np, &stranger).expect("probe"), Seen::Timeout);
    common::phase(start, &format!("table deleted behind the proxy: back after {:.1}s", gone.elapsed().as_secs_f64()));
    common::phase(
        start,
        "ingress nodes pass, the stranger does not (tcp+udp), unprotected ports and the mesh untouched",
    );

    // Metrics: addresses per name, last refresh; no failures so far (no AAAA record is an
    // answer, not a failure).
    let m = metrics::scrape(&home, ADMIN).expect("scrape");
    for name in ["ingress-1", "ingress-2"] {
        let name = format!("{name}.{}", knot::ZONE);
        let labels = [("name", name.as_str())];
        let count: f64 = m.matching("local_proxy_firewall_addresses", &labels).map(|s| s.value).sum();
        assert_eq!(count, 1.0, "addresses of {name}");
        let refreshed: f64 =
            m.matching("local_proxy_firewall_last_refresh_timestamp_seconds", &labels).map(|s| s.value).sum();
        assert!(refreshed > 1.0e9, "last refresh of {name}: {refreshed}");
    }
    let failures: f64 = m.matching("local_proxy_firewall_lookup_failures_total", &[]).map(|s| s.value).sum();
    assert_eq!(failures, 0.0, "lookup failures while DNS answers");
    assert_eq!(m.matching("local_proxy_firewall_open", &[]).map(|s| s.value).sum::<f64>(), 0.0);

    // DNS moves ingress-2; the old address must stop passing, the new one start.
    let old2 = IpAddr::from(addr::INGRESS2);
    let new2 = IpAddr::from(INGRESS2_NEW);
    dns.set("ingress-2", &[new2]).expect("knsupdate");
    let updated = Instant::now();
    let bound = Duration::from_secs(u64::from(TTL)) + MIN_REFRESH + Duration::from_secs(2);
    wait_until("the new ingress-2 address passes and the old does not", bound, Duration::from_millis(100), || {
        let new_ok = Probe::udp(sa(addr::WAN1, RAW)).from(new2).timeout_ms(400).run_in(&np, &ing2)?;
        let old_ok = Probe::udp(sa(addr::WAN1, RAW)).from(old2).timeout_ms(400).run_in(&np, &ing2)?;
        check(new_ok.answered() && !old_ok.answered(), || format!("new {new_ok:?}, old {old_ok:?}"))
    })
    .expect("DNS update followed");
    let took = updated.elapsed();
    expect_all(
        &np,
        &[
            ("ingress2 (new) tcp wan2:7101", &ing2, Probe::tcp(sa(addr::WAN2, RAW)).from(new2), true),
            ("ingress2 (new) PROXY wan1:7000", &ing2, via_proxy(addr::WAN1).from(new2), true),
            ("ingress2 (old) tcp wan2:7101", &ing2, Probe::tcp(sa(addr::WAN2, RAW)).from(old2), false),
            ("ingress1 tcp wan1:7101", &ing1, Probe::tcp(sa(addr::WAN1, RAW)), true),
        ],
    );
    let show = proxy.show().expect("firewall show");
    assert_eq!(shown_elements(&show), [addr::INGRESS1.to_string(), INGRESS2_NEW.to_string()].into(), "{show}");
    assert_kernel_matches(&home, &show);
    common::phase(
        start,
        &format!(
            "RESULT DNS update followed in {:.2}s (TTL {TTL}s, min_refresh {}s, bound {:.0}s)",
            took.as_secs_f64(),
            MIN_REFRESH.as_secs(),
            bound.as_secs_f64()
        ),
    );

    // DNS down: the last known addresses stay.
    dns.stop().expect("stop knotd");
    let down = Instant::now();
    wait_until("lookup failures counted", Duration::from_secs(10), Duration::from_millis(200), || {
        let m = metrics::scrape(&home, ADMIN)?;
        let failures: f64 = m.matching("local_proxy_firewall_lookup_failures_total", &[]).map(|s| s.value).sum();
        check(failures >= 2.0, || format!("{failures} failures"))
    })
    .expect("failures while DNS is down");
    std::thread::sleep((Duration::from_secs(u64::from(TTL)) * 3).saturating_sub(down.elapsed()));
    expect_all(
        &np,
        &[
            ("ingress1 udp wan1:7101 (DNS down)", &ing1, Probe::udp(sa(addr::WAN1, RAW)), true),
            ("ingress2 tcp wan2:7101 (DNS down)", &ing2, Probe::tcp(sa(addr::WAN2, RAW)).from(new2), true),
            ("ingress1 PROXY wan2:7000 (DNS down)", &ing1, via_proxy(addr::WAN2), true),
            ("stranger udp wan1:7101 (DNS down)", &stranger, Probe::udp(sa(addr::WAN1, RAW)), false),
        ],
    );
    let show = proxy.show().expect("firewall show");
    assert_eq!(shown_elements(&show).len(), 2, "{show}");
    let log = t.proc_mut("local-proxy").expect("proc").stderr();
    assert!(log.contains("keeping the last known addresses"), "no failure log line:\n{log}");
    common::phase(
        start,
        &format!("knotd stopped {:.1}s: allowlist kept, failures counted and logged", down.elapsed().as_secs_f64()),
    );

    // SIGTERM: the table stays (closed).
    t.stop("local-proxy").expect("stop local-proxy");
    let show_after = nft_json(&home).expect("table left in place");
    assert_eq!(nft_elements(&show_after).len(), 2, "{show_after}");
    expect_all(&np, &[("stranger udp wan1:7101 (proxy stopped)", &stranger, Probe::udp(sa(addr::WAN1, RAW)), false)]);

    // Restart with DNS still down: the previous run's allowlist is carried over (as a failed
    // lookup keeps the last known addresses while running), enforcing; strangers stay out.
    // The same start, with DNS down, carries the list over: enforcing, the two known ingress
    // addresses in the kernel's table, ingress1 in and the stranger out, and `logged` said.
    let start_carrying = |t: &mut Topology, when: &str, logged: &str| {
        proxy.start(t);
        let show = proxy.show().expect("firewall show");
        assert!(shown_elements(&show).len() == 2 && show.contains("enforcing"), "{when}: {show}");
        assert_kernel_matches(&home, &show);
        let (ingress1, outsider) =
            (format!("ingress1 udp wan1:7101 ({when}, no DNS)"), format!("stranger udp wan1:7101 ({when}, no DNS)"));
        expect_all(
            &np,
            &[
                (&ingress1, &ing1, Probe::udp(sa(addr::WAN1, RAW)), true),
                (&outsider, &stranger, Probe::udp(sa(addr::WAN1, RAW)), false),
            ],
        );
        let log = t.proc_mut("local-proxy").expect("proc").stderr();
        assert!(log.contains(logged), "{when}: {log}");
    };
    start_carrying(&mut t, "restarted", "allowlist of the previous run kept");

    // Reboot with DNS still down (the home router's DNS slower to come up than the server): the
    // kernel's table goes with the reboot, so the list comes from the state directory, where
    // each enforcing table's list was saved; enforcing, strangers stay out.
    let saved = std::fs::read_to_string(proxy.state.join(SAVED)).expect("the saved allowlist");
    assert!(
        saved.starts_with(&format!("table {TABLE}\n")) && saved.contains(&format!("\n{}/32\n", addr::INGRESS1)),
        "{saved}"
    );
    t.stop("local-proxy").expect("stop local-proxy");
    cmd::exec_ok(&home, &["nft", "delete", "table", "inet", TABLE], cmd::DEFAULT_TIMEOUT).expect("delete our table");
    start_carrying(&mut t, "rebooted", "carrying over the allowlist saved in the state directory");
    common::phase(start, "reboot with DNS down (table deleted, proxy started): the saved allowlist carried over");
    dns.run().expect("knotd again");
    let back = Instant::now();
    wait_until("ingress-1 allowed again once DNS answers", Duration::from_secs(30), Duration::from_millis(100), || {
        let s = proxy.show()?;
        check(shown_elements(&s).len() == 2, || format!("elements {:?}", shown_elements(&s)))
    })
    .expect("allowlist back");
    expect_all(&np, &[("ingress1 udp wan1:7101 (DNS back)", &ing1, Probe::udp(sa(addr::WAN1, RAW)), true)]);
    common::phase(
        start,
        &format!(
            "restart and reboot with DNS down: allowlist carried over; answered again {:.1}s after DNS came back",
            back.elapsed().as_secs_f64()
        ),
    );

    // on_no_answer = "open": with DNS down the protected ports accept everyone, with a warning,
    // until the first answer; remove_on_exit deletes the table on SIGTERM.
    t.stop("local-proxy").expect("stop local-proxy");
    dns.stop().expect("stop knotd");
    // No previous table to carry over (a first start): what on_no_answer says applies. A first
    // start has no saved list either: left there, it would be carried over (enforcing) as
    // after the reboot above, open or not.
    cmd::exec_ok(&home, &["nft", "delete", "table", "inet", TABLE], cmd::DEFAULT_TIMEOUT).expect("nft delete table");
    std::fs::remove_file(proxy.state.join(SAVED)).expect("removing the saved allowlist");
    proxy.write_config(mesh, "open", true);
    proxy.start(&mut t);
    let show = proxy.show().expect("firewall show");
    assert!(show.contains("OPEN") && !show.lines().any(|l| l.ends_with(" drop")), "{show}");
    expect_all(
        &np,
        &[("stranger udp wan1:7101 (open: no answer yet)", &stranger, Probe::udp(sa(addr::WAN1, RAW)), true)],
    );
    let log = t.proc_mut("local-proxy").expect("proc").stderr();
    assert!(log.contains("firewall OPEN until the first DNS answer"), "{log}");
    dns.run().expect("knotd again");
    wait_until("enforcing after the first answer", Duration::from_secs(30), Duration::from_millis(100), || {
        let s = proxy.show()?;
        check(s.contains("enforcing") && shown_elements(&s).len() == 2, || s.clone())
    })
    .expect("closes after the first answer");
    expect_all(
        &np,
        &[
            ("stranger udp wan1:7101 (answered: closed)", &stranger, Probe::udp(sa(addr::WAN1, RAW)), false),
            ("ingress1 udp wan1:7101 (answered)", &ing1, Probe::udp(sa(addr::WAN1, RAW)), true),
        ],
    );
    t.stop("local-proxy").expect("stop local-proxy");
    // No table of ours any more: neither its name nor its list is kept (a reboot carries nothing).
    assert_nothing_of_ours_left(&home, &proxy.state, &bystander, "remove_on_exit");
    common::phase(start, "open mode until the first answer; remove_on_exit; the bystander table untouched");

    // Static addresses only: with no name to wait for, nothing is carried over a restart, so
    // an address taken out of the config is refused (and not trusted) once the proxy restarts.
    proxy.write_static_config(mesh, &[addr::INGRESS1, addr::STRANGER]);
    proxy.start(&mut t);
    expect_all(&np, &[("stranger udp wan1:7101 (a static address)", &stranger, Probe::udp(sa(addr::WAN1, RAW)), true)]);
    t.stop("local-proxy").expect("stop local-proxy");
    // The saved list still has the stranger: with no names it is not carried over either.
    let saved = std::fs::read_to_string(proxy.state.join(SAVED)).expect("the saved allowlist");
    assert!(saved.contains(&format!("\n{}/32\n", addr::STRANGER)), "{saved}");
    proxy.write_static_config(mesh, &[addr::INGRESS1]);
    proxy.start(&mut t);
    let show = proxy.show().expect("firewall show");
    assert_eq!(shown_elements(&show), [addr::INGRESS1.to_string()].into(), "{show}");
    expect_all(
        &np,
        &[
            (
                "stranger udp wan1:7101 (static address removed, restarted)",
                &stranger,
                Probe::udp(sa(addr::WAN1, RAW)),
                false,
            ),
            ("ingress1 udp wan1:7101 (static)", &ing1, Probe::udp(sa(addr::WAN1, RAW)), true),
        ],
    );
    t.stop("local-proxy").expect("stop local-proxy");
    common::phase(start, "static addresses only: one removed from the config is refused after a restart");

    // The package's removal (its prerm) after the config's table was renamed while the proxy
    // was stopped: the config names a table that is not there, the record the one that is.
    let text = std::fs::read_to_string(&proxy.config).expect("reading local-proxy.toml");
    let renamed = text.replace(&format!("table = \"{TABLE}\""), "table = \"renamed_since\"");
    assert_ne!(text, renamed, "the config names its table");
    std::fs::write(&proxy.config, renamed).expect("writing local-proxy.toml");
    assert!(proxy.state.join("firewall-table").exists() && proxy.state.join(SAVED).exists(), "records before removal");
    let (b, c, s) =
        (proxy.bin.display().to_string(), proxy.config.display().to_string(), proxy.state.display().to_string());
    let out = cmd::exec_ok(&home, &[&b, "firewall", "remove", "-c", &c, "--state-dir", &s], Duration::from_secs(5))
        .expect("firewall remove --state-dir");
    assert!(out.contains(&format!("table inet {TABLE}: removed")), "{out}");
    assert_nothing_of_ours_left(&home, &proxy.state, &bystander, "firewall remove --state-dir");
    common::phase(start, "firewall remove --state-dir: the recorded table gone though the config names another");
    drop(dns);
    drop(t);
}
