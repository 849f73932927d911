//! coturn at home behind the local proxy (issue 18; recipe in docs/turn.md), shared by
//! `tests/turn_home.rs` and `tests/turn_home_load.rs`: `turnserver` in lan (relay sockets on
//! the LAN address, `--external-ip INGRESS1/LAN`, static-auth-secret, TLS on 5349),
//! `local-proxy` in home with transparent streams for 3478/udp, 3478/tcp, 5349/tcp and the
//! relay range (port N → port N), the ingress on both nodes forwarding those ports with PROXY
//! v2 over both WANs, home's policy route for transparent sockets (fwmark → local table,
//! nftables `socket transparent`), coturn's host routing its TURN traffic to outside
//! addresses through home by source port only (it has no default route), and nftables
//! counters in lan that witness which source addresses reach the LAN host. `turnutils_uclient` runs in client against ingress1 and
//! relays to a peer in stranger.
//!
//! An L4 forwarder only carries flows started from outside: the relay reaches a peer once the
//! peer has sent to the relayed address (ICE's checks do that from both sides). The peer
//! `turnutils_peer` is an echo, so [`prime_relay_range`] first sends one datagram from its
//! address and port to every relay port of ingress1, as its ICE checks would.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::cmd;
use crate::metrics::{self, Metrics};
use crate::scenario;
use crate::services::{self, Listen};
use crate::topology::{addr, Role, Topology};
use crate::turn::{self, ServerConfig, UclientReport};
use crate::wait::{check, wait_until};

/// The relay range, forwarded port N → port N. coturn takes an even port per allocation and
/// keeps its odd neighbour free, so 41 ports (49160-49200, the deployment's) hold about 20
/// allocations and the 21st fails with 508; 80 ports leave room for the load test's 20.
pub const RELAY_MIN: u16 = 49160;
pub const RELAY_MAX: u16 = 49239;
pub const SECRET: &str = "lbt-turn-static-secret";
pub const USER: &str = "lbt";
/// The local proxy's admin listener inside home.
pub const LP_ADMIN: &str = "127.0.0.1:9181";
/// A second address of the stranger: answers the relay without a permission.
pub const STRANGER2: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 35);
/// Payload bytes of each uclient message (`-l`).
pub const MESSAGE_LEN: u16 = 120;

/// `local-proxy` next to the harness's binaries, or `LOCAL_PROXY_BIN`.
pub fn local_proxy_bin(bin_dir: &Path) -> Result<PathBuf> {
    let bin = std::env::var_os("LOCAL_PROXY_BIN").map(PathBuf::from).unwrap_or_else(|| bin_dir.join("local-proxy"));
    if !bin.is_file() {
        bail!("local-proxy binary missing at {}: cargo build -p local-proxy", bin.display());
    }
    Ok(bin)
}

fn local_proxy_config() -> String {
    let (lan, wan1, wan2, ing1, ing2) = (addr::LAN, addr::WAN1, addr::WAN2, addr::INGRESS1, addr::INGRESS2);
    let stream = |name: &str, listen: &str, upstream: &str| {
        format!(
            "[[stream]]\nname = \"{name}\"\nlisten = \"{listen}\"\nupstream = \"{upstream}\"\ntransparent = true\n\n"
        )
    };
    let mut s = format!(
        "[admin]\nlisten = \"{LP_ADMIN}\"\n\n[wan]\naddresses = [\"{wan1}\", \"{wan2}\"]\n\
         trusted_ingress = [\"{ing1}\", \"{ing2}\"]\n\n"
    );
    s.push_str(&stream("turn", "3478/udp", &format!("{lan}:3478")));
    s.push_str(&stream("turn-tcp", "3478/tcp", &format!("{lan}:3478")));
    s.push_str(&stream("turns", "5349/tcp", &format!("{lan}:5349")));
    s.push_str(&stream("turn-relay", &format!("{RELAY_MIN}-{RELAY_MAX}/udp"), &lan.to_string()));
    s
}

/// The ingress services: control ports and the relay range, PROXY v2, pool `home` (both WANs).
fn ingress_services() -> String {
    let udp = |name: &str, listen: &str| {
        format!(
            "[[service]]\nname = \"{name}\"\nlisten = [\"0.0.0.0:{listen}\"]\nprotocol = \"udp\"\npool = \"home\"\n\
             proxy_protocol = \"v2\"\nidle_timeout = \"300s\"\n\n"
        )
    };
    let tcp = |name: &str, port: u16| {
        format!("[[service]]\nname = \"{name}\"\nlisten = [\"0.0.0.0:{port}\"]\npool = \"home\"\nproxy_protocol = \"v2\"\n\n")
    };
    [
        udp("turn-udp", &turn::PORT.to_string()),
        udp("turn-relay", &format!("{RELAY_MIN}-{RELAY_MAX}")),
        tcp("turn-tcp", turn::PORT),
        tcp("turns", turn::TLS_PORT),
    ]
    .concat()
}

fn nft(ns: &str, rules: &str) -> Result<()> {
    cmd::run_stdin(&["ip", "netns", "exec", ns, "nft", "-f", "-"], Some(rules)).map(|_| ())
}

/// Home: the policy route of transparent sockets (local-proxy/README.md). Lan: nftables
/// counters of what reaches the LAN host, by source. Stranger: its second address.
fn configure(t: &Topology) -> Result<()> {
    let home = t.ns(Role::Home);
    cmd::ip(home, &["rule", "add", "fwmark", "1", "lookup", "100", "pref", "100"])?;
    cmd::ip(home, &["route", "add", "local", "0.0.0.0/0", "dev", "lo", "table", "100"])?;
    nft(
        home,
        "table inet local_proxy_transparent {\n chain prerouting {\n  type filter hook prerouting priority mangle; \
         policy accept;\n  socket transparent 1 meta mark set 1 accept\n }\n}\n",
    )?;
    // The relay guard (docs/turn.md): coturn's relay datagrams that found no flow are dropped
    // here instead of leaving by a WAN.
    nft(
        home,
        &format!(
            "table inet local_proxy_turn_guard {{\n chain forward {{\n  type filter hook forward priority filter; \
             policy accept;\n  ip saddr {lan} udp sport {RELAY_MIN}-{RELAY_MAX} oifname {{ \"wan1\", \"wan2\" }} \
             counter drop\n }}\n}}\n",
            lan = addr::LAN
        ),
    )?;
    let (peer, stranger, client) = (addr::STRANGER, STRANGER2, addr::CLIENT);
    // The UDP length of uclient's messages, which the peer echoes; a run of them sent as one
    // GSO packet (the ingress's and the local proxy's replies) has a longer one (`datagrams`).
    let data_len = MESSAGE_LEN + 8;
    let relay = format!("udp dport {RELAY_MIN}-{RELAY_MAX}");
    nft(
        t.ns(Role::Lan),
        &format!(
            "table inet witness {{\n counter peer {{}}\n counter peer_data {{}}\n counter stranger {{}}\n\
             counter client_udp {{}}\n counter client_tcp {{}}\n counter to_peer {{}}\n\
             chain output {{\n  type filter hook output priority 0; policy accept;\n\
             ip daddr {peer} udp sport {RELAY_MIN}-{RELAY_MAX} counter name \"to_peer\"\n }}\n\
             chain input {{\n  type filter hook input priority 0; policy accept;\n\
             ip saddr {peer} {relay} counter name \"peer\"\n\
             ip saddr {peer} {relay} udp length >= {data_len} counter name \"peer_data\"\n\
             ip saddr {stranger} {relay} counter name \"stranger\"\n\
             ip saddr {client} udp dport 3478 counter name \"client_udp\"\n\
             ip saddr {client} tcp dport {{ 3478, 5349 }} counter name \"client_tcp\"\n }}\n}}\n"
        ),
    )?;
    // What reaches the peer from the relayed address (ingress1's relay ports).
    nft(
        t.ns(Role::Stranger),
        &format!(
            "table inet witness {{\n counter from_relay {{}}\n chain input {{\n  type filter hook input priority 0; \
             policy accept;\n  ip saddr {ing} udp sport {RELAY_MIN}-{RELAY_MAX} udp length >= {data_len} \
             counter name \"from_relay\"\n }}\n}}\n",
            ing = addr::INGRESS1
        ),
    )?;
    cmd::ip(t.ns(Role::Stranger), &["addr", "add", &format!("{STRANGER2}/29"), "dev", "eth0"])?;
    coturn_host_routes(t)
}

/// coturn's host without a default route: only docs/turn.md's source rules send its TURN
/// traffic to outside addresses through the local proxy host (home), the case of a LAN whose
/// router is not the local proxy host. The main table is consulted first without its default
/// route (`suppress_prefixlength 0`), so the LAN stays direct.
fn coturn_host_routes(t: &Topology) -> Result<()> {
    let lan = t.ns(Role::Lan);
    let from = addr::LAN.to_string();
    cmd::ip(lan, &["route", "del", "default"])?;
    cmd::ip(lan, &["route", "add", "default", "via", &addr::HOME_LAN.to_string(), "table", "200"])?;
    let relay = format!("{RELAY_MIN}-{RELAY_MAX}");
    let ports = [("udp", "3478"), ("udp", "5349"), ("udp", relay.as_str()), ("tcp", "3478"), ("tcp", "5349")];
    for (proto, sport) in ports {
        let sel = ["from", from.as_str(), "ipproto", proto, "sport", sport];
        cmd::ip(
            lan,
            &[&["rule", "add"][..], &sel, &["lookup", "main", "suppress_prefixlength", "0", "pref", "199"]].concat(),
        )?;
        cmd::ip(lan, &[&["rule", "add"][..], &sel, &["lookup", "200", "pref", "200"]].concat())?;
    }
    Ok(())
}

/// Packets the LAN host's counter `name` saw (`peer`: the peer's datagrams, `stranger`,
/// `client_udp`, `client_tcp`; `to_peer`: coturn's datagrams to the peer). The peer's echoes
/// are counted by [`peer_echoes`].
pub fn witness(t: &Topology, name: &str) -> Result<u64> {
    counter(t, Role::Lan, name)
}

/// coturn's relay datagrams home's relay guard dropped (they found no flow).
pub fn guard_drops(t: &Topology) -> Result<u64> {
    let out = t.exec(
        Role::Home,
        &["nft", "list", "chain", "inet", "local_proxy_turn_guard", "forward"],
        cmd::DEFAULT_TIMEOUT,
    )?;
    packets(&out)
}

/// Datagrams that reached the peer's host from ingress1's relay ports.
pub fn at_peer_from_relay(t: &Topology) -> Result<u64> {
    datagrams(t, Role::Stranger, "from_relay")
}

/// The peer's echoes of uclient's messages that reached the LAN host (counter `peer_data`).
pub fn peer_echoes(t: &Topology) -> Result<u64> {
    datagrams(t, Role::Lan, "peer_data")
}

/// uclient's messages (`MESSAGE_LEN` bytes each) in what counter `name` saw. Not its packets:
/// the ingress and the local proxy send a run of equal datagrams as one UDP GSO packet, which
/// the kernel splits only at the receiving socket, after the input hook, so the counter sees
/// one packet of 28 + n × `MESSAGE_LEN` bytes (IPv4) for n datagrams.
fn datagrams(t: &Topology, role: Role, name: &str) -> Result<u64> {
    let out = t.exec(role, &["nft", "list", "counter", "inet", "witness", name], cmd::DEFAULT_TIMEOUT)?;
    let (packets, bytes) = (packets(&out)?, figure(&out, "bytes")?);
    Ok(bytes.saturating_sub(28 * packets) / u64::from(MESSAGE_LEN))
}

fn counter(t: &Topology, role: Role, name: &str) -> Result<u64> {
    packets(&t.exec(role, &["nft", "list", "counter", "inet", "witness", name], cmd::DEFAULT_TIMEOUT)?)
}

/// The first `packets N` in nft's listing.
fn packets(out: &str) -> Result<u64> {
    figure(out, "packets")
}

/// The first `WHAT N` (packets, bytes) in nft's listing.
fn figure(out: &str, what: &str) -> Result<u64> {
    out.split_whitespace()
        .skip_while(|w| *w != what)
        .nth(1)
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("no {what} count in {out}"))
}

fn make_cert(t: &Topology) -> Result<(PathBuf, PathBuf)> {
    let (cert, key) = (t.dir().join("turn.pem"), t.dir().join("turn.key"));
    let (c, k) = (cert.display().to_string(), key.display().to_string());
    let argv = [
        "openssl",
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=turn.lbt.test",
        "-keyout",
        &k,
        "-out",
        &c,
    ];
    let out = cmd::run_full(&argv, None, Duration::from_secs(20))?;
    if !out.status.success() {
        bail!("openssl req: {}", out.stderr);
    }
    Ok((cert, key))
}

/// Everything up in a fresh topology (built without the mesh): coturn in lan, the local proxy
/// in home, the ingress on both nodes with both WANs up.
pub fn start(t: &mut Topology, local_proxy: &Path) -> Result<()> {
    turn::require()?;
    configure(t).context("policy route, witness counters")?;
    let server = ServerConfig {
        listen: vec![addr::LAN],
        relay_ip: addr::LAN,
        external_ip: Some(addr::INGRESS1),
        external_private: Some(addr::LAN),
        min_port: RELAY_MIN,
        max_port: RELAY_MAX,
        user: USER.into(),
        password: String::new(),
        auth_secret: Some(SECRET.into()),
        realm: "lbt.test".into(),
        tls: Some(make_cert(t)?),
        server_relay: false,
    };
    turn::start_server(t, Role::Lan, &server).context("start turnserver in lan")?;

    let file = t.dir().join("local-proxy.toml");
    std::fs::write(&file, local_proxy_config())?;
    let (bin, f) = (local_proxy.display().to_string(), file.display().to_string());
    let out = cmd::run_full(&[&bin, "check", "-c", &f], None, Duration::from_secs(10))?;
    if !out.status.success() {
        bail!("local-proxy check: {}{}", out.stderr, out.stdout);
    }
    t.spawn(Role::Home, "local-proxy", &[bin, "-c".into(), f])?;
    let home = t.ns(Role::Home).to_string();
    let want = [Listen::Udp(turn::PORT), Listen::Tcp(turn::PORT), Listen::Tcp(turn::TLS_PORT), Listen::Udp(RELAY_MAX)];
    wait_until("local-proxy listening", Duration::from_secs(15), Duration::from_millis(50), || {
        t.proc_mut("local-proxy")?.ensure_running()?;
        let missing = services::missing_listeners(&home, &want)?;
        check(missing.is_empty(), || format!("not listening on {missing:?}"))?;
        metrics::scrape(&home, LP_ADMIN).map(|_| ())
    })?;

    let toml = services::standard_plus(t, &ingress_services());
    for role in [Role::Ingress1, Role::Ingress2] {
        services::start_ingress_toml(t, role, &toml, &want).with_context(|| format!("ingress in {}", role.as_str()))?;
    }
    for role in [Role::Ingress1, Role::Ingress2] {
        scenario::wait_paths(t, role, &[("wan1", true), ("wan2", true)], Duration::from_secs(10))?;
    }
    Ok(())
}

/// One datagram from `from` at the peer port to every relay port of ingress1 (what the peer's
/// ICE checks to the relayed candidate do): opens the flows through the ingress and the local
/// proxy that the relay's datagrams to the peer ride back on. coturn drops these (no
/// allocation yet).
pub fn prime_relay_range(t: &Topology, from: Ipv4Addr) -> Result<()> {
    let script = format!(
        "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ns.bind(('{from}', {peer}))\n\
         for p in range({RELAY_MIN}, {end}):\n    s.sendto(b'ice-check', ('{ing}', p))\n",
        peer = turn::PEER_PORT,
        end = RELAY_MAX + 1,
        ing = addr::INGRESS1
    );
    t.exec(Role::Stranger, &["python3", "-c", &script], cmd::DEFAULT_TIMEOUT).map(|_| ())
}

/// `turnutils_peer` (coturn's echo peer) in stranger on the peer port.
pub fn start_peer(t: &mut Topology) -> Result<()> {
    let argv: Vec<String> = ["turnutils_peer", "-L", &addr::STRANGER.to_string(), "-p", &turn::PEER_PORT.to_string()]
        .map(String::from)
        .into();
    t.spawn(Role::Stranger, "turnutils_peer", &argv)?;
    let ns = t.ns(Role::Stranger).to_string();
    let want = format!("{}:{}", addr::STRANGER, turn::PEER_PORT);
    wait_until("turnutils_peer bound", Duration::from_secs(5), Duration::from_millis(20), || {
        t.proc_mut("turnutils_peer")?.ensure_running()?;
        let out = cmd::exec_ok(&ns, &["ss", "-Hlun"], cmd::DEFAULT_TIMEOUT)?;
        check(out.contains(&want), || "not bound yet".into())
    })
}

/// `turnutils_uclient` arguments: `clients` allocations relaying `messages` each, one every
/// 10 ms (100/s), to the peer in stranger, through ingress1; `extra` flags (`-t`, `-S`, `-p`).
pub fn uclient_argv(clients: u32, messages: u32, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = ["turnutils_uclient", "-c", "-z", "10"].map(String::from).into();
    a.extend(["-l".into(), MESSAGE_LEN.to_string()]);
    a.extend(["-m".into(), clients.to_string(), "-n".into(), messages.to_string()]);
    a.extend(extra.iter().map(|s| s.to_string()));
    a.extend(["-e".into(), addr::STRANGER.to_string(), "-W".into(), SECRET.into(), "-u".into(), USER.into()]);
    a.push(addr::INGRESS1.to_string());
    a
}

/// Runs `turnutils_uclient` in client; its report and output. An error if it fails or
/// prints no report.
pub fn uclient(t: &Topology, argv: &[String], timeout: Duration) -> Result<(UclientReport, String)> {
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let out = cmd::exec(t.ns(Role::Client), &argv, timeout)?;
    let text = format!("{}{}", out.stdout, out.stderr);
    let report = turn::parse_uclient(&text).with_context(|| text.clone())?;
    if !out.status.success() {
        bail!("turnutils_uclient failed:\n{text}");
    }
    Ok((report, text))
}

/// The local proxy's metrics.
pub fn lp_metrics(t: &Topology) -> Result<Metrics> {
    metrics::scrape(t.ns(Role::Home), LP_ADMIN)
}
