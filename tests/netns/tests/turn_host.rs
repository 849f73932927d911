//! The roll-out routes coturn's answers back through the local proxy host (issue 18,
//! `ansible/roles/turn_host`, docs/turn.md): one booted Debian host (systemd-nspawn) on a LAN
//! of three namespaces behind a bridge, its default gateway the home router, not the local
//! proxy host:
//!
//! ```text
//!                     sw (br0, the LAN switch)
//!        ┌──────────────────┼──────────────────┐
//!   turn 192.168.1.40   lp 192.168.1.2     gw 192.168.1.1
//!   booted host; the    the local proxy    the home router: the turn
//!   machine's coturn    host (controller,  host's default gateway
//!   in its namespace    transparent route)
//! ```
//!
//! `lp` holds what the local_proxy role sets up for transparent streams (fwmark 1 → `local`
//! route, nftables `socket transparent`) and runs `ansible-playbook site.yml` over ssh with an
//! inventory of one `turn_hosts` host. A transparent socket in `lp` bound to an outside address
//! (192.0.2.34, as the local proxy's flow sockets are) sends a STUN Binding request to coturn:
//! - before the roll-out coturn's answer goes to the default gateway (counted in `gw`) and never
//!   reaches the socket;
//! - after it, coturn's answer (XOR-MAPPED-ADDRESS = the outside address) reaches the socket
//!   through `lp`, over UDP and TCP 3478; datagrams sent inside the host from a relay port go to
//!   `lp`, from another port to `gw`, and from a TURN port to a LAN address directly to it
//!   (counted by nftables in `lp` and `gw`);
//! - a second run changes nothing (PLAY RECAP changed=0);
//! - powered off, the unit's stop removes every rule; booted again, the rules are back and
//!   coturn's answer takes `lp` again;
//! - bad `turn_host_*` values fail site.yml's validation play, naming the variable, before any
//!   host play.
//!
//! Prints `RESULT turn_host ...` with the timings.

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use netns::cmd;
use netns::netns::{Netns, Veth};
use netns::nspawn::{self, Host, HostSpec, Rootfs, Ssh};
use netns::proc_guard::Proc;
use netns::rollout::{Ansible, PlaybookRun};
use netns::services::{missing_listeners, Listen};
use netns::tempdir::TempDir;
use netns::turn::{self, ServerConfig};
use netns::wait::{check, wait_until};
use serde_json::json;

const TURN: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 40);
const LP: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 2);
const GW: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 1);
/// An outside address (a peer or client), routed nowhere here: only `lp` takes it, for its
/// transparent sockets.
const OUTSIDE: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 34);
/// A port of the relay range (the role's default 49160-49200).
const RELAY_PORT: u16 = 49170;
/// A UDP port of the role's defaults coturn does not use here (started with --no-dtls).
const SPARE_TURN_PORT: u16 = 5349;
/// Not a TURN port.
const OTHER_PORT: u16 = 40000;
/// The route protocol of the role's rules (turn_host_route_protocol's default).
const PROTO: &str = "proto 246";
const HOST: &str = "coturn";
const RUN_TIMEOUT: Duration = Duration::from_secs(300);
const SHORT: Duration = Duration::from_secs(20);

/// A transparent socket in `lp` bound to an outside address, as the local proxy's flow
/// sockets are: a STUN Binding request to coturn over UDP or TCP, and the XOR-MAPPED-ADDRESS
/// of its answer. `probe.py udp|tcp OUTSIDE_IP PORT TURN_IP`; exit 1 without an answer.
const PROBE: &str = r#"
import os, socket, struct, sys
mode, ip, port, turn = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
IP_TRANSPARENT = 19
COOKIE = 0x2112A442
tid = os.urandom(12)
req = struct.pack('!HHI', 1, 0, COOKIE) + tid
def mapped(msg):
    if len(msg) < 20 or msg[0:2] != b'\x01\x01' or msg[8:20] != tid:
        return None
    body = msg[20:20 + struct.unpack('!H', msg[2:4])[0]]
    i = 0
    while i + 4 <= len(body):
        t, l = struct.unpack('!HH', body[i:i + 4])
        v = body[i + 4:i + 4 + l]
        if t == 0x0020 and l >= 8 and v[1] == 1:
            p = struct.unpack('!H', v[2:4])[0] ^ (COOKIE >> 16)
            a = struct.unpack('!I', v[4:8])[0] ^ COOKIE
            return '%s:%d' % (socket.inet_ntoa(struct.pack('!I', a)), p)
        i += 4 + ((l + 3) & ~3)
    return 'none'
kind = socket.SOCK_DGRAM if mode == 'udp' else socket.SOCK_STREAM
s = socket.socket(socket.AF_INET, kind)
s.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((ip, port))
if mode == 'udp':
    s.settimeout(0.5)
    for _ in range(4):
        s.sendto(req, (turn, 3478))
        try:
            msg, src = s.recvfrom(2048)
        except socket.timeout:
            continue
        m = mapped(msg)
        if m:
            print('answer from %s:%d mapped %s' % (src[0], src[1], m))
            sys.exit(0)
    print('no answer')
    sys.exit(1)
s.settimeout(2)
try:
    s.connect((turn, 3478))
    s.sendall(req)
    msg = b''
    while len(msg) < 20 or len(msg) < 20 + struct.unpack('!H', msg[2:4])[0]:
        chunk = s.recv(2048)
        if not chunk:
            break
        msg += chunk
except OSError as e:
    print('tcp: %s' % e)
    sys.exit(1)
m = mapped(msg)
if not m:
    print('no answer')
    sys.exit(1)
print('answer from %s:%d mapped %s' % (turn, 3478, m))
"#;

/// nftables counters of what reaches a namespace from the turn host (prerouting, before any
/// routing decision there): coturn's STUN answers (udp and tcp 3478) and the test datagrams.
fn witness_rules() -> String {
    let from = format!("ip saddr {TURN}");
    let out = format!("ip daddr {OUTSIDE}");
    format!(
        "table inet witness {{\n counter answer_udp {{}}\n counter answer_tcp {{}}\n counter from_relay {{}}\n counter from_other {{}}\n counter to_lan {{}}\n\
         chain prerouting {{\n  type filter hook prerouting priority raw; policy accept;\n\
         {from} {out} udp sport 3478 counter name \"answer_udp\"\n\
         {from} {out} tcp sport 3478 counter name \"answer_tcp\"\n\
         {from} {out} udp sport {RELAY_PORT} counter name \"from_relay\"\n\
         {from} {out} udp sport {OTHER_PORT} counter name \"from_other\"\n\
         {from} ip daddr {GW} udp sport {SPARE_TURN_PORT} counter name \"to_lan\"\n }}\n}}\n"
    )
}

fn nft(ns: &str, rules: &str) -> Result<()> {
    cmd::run_stdin(&["ip", "netns", "exec", ns, "nft", "-f", "-"], Some(rules)).map(|_| ())
}

/// Packets counted by `name` in `ns`.
fn count(ns: &str, name: &str) -> Result<u64> {
    let out = cmd::exec_ok(ns, &["nft", "list", "counter", "inet", "witness", name], cmd::DEFAULT_TIMEOUT)?;
    out.split_whitespace()
        .skip_while(|w| *w != "packets")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("no packet count in {out}"))
}

/// The counters `answer_udp answer_tcp from_relay from_other to_lan` in `ns`.
fn counts(ns: &str) -> Result<[u64; 5]> {
    Ok([
        count(ns, "answer_udp")?,
        count(ns, "answer_tcp")?,
        count(ns, "from_relay")?,
        count(ns, "from_other")?,
        count(ns, "to_lan")?,
    ])
}

/// [`PROBE`] from `lp`, bound to OUTSIDE:`port`: Ok(its line) when coturn's answer arrived.
fn probe(lp: &str, mode: &str, port: u16) -> Result<String> {
    let port = port.to_string();
    let (outside, turn) = (OUTSIDE.to_string(), TURN.to_string());
    let out = cmd::exec(lp, &["python3", "-c", PROBE, mode, &outside, &port, &turn], Duration::from_secs(10))?;
    if !out.status.success() {
        bail!("{mode} probe from {outside}:{port}: {}{}", out.stdout.trim(), out.stderr.trim());
    }
    Ok(out.stdout.trim().to_string())
}

/// The role's rules and table-200 route, as `ip` lists them in the host's namespace.
fn owned_rules(ns: &str) -> Result<(Vec<String>, String)> {
    let rules = cmd::ip(ns, &["-4", "rule", "show"])?;
    let mine = rules.lines().filter(|l| l.contains(PROTO)).map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "));
    let table = cmd::ip(ns, &["-4", "route", "show", "table", "200"]).unwrap_or_default();
    Ok((mine.collect(), table.trim().to_string()))
}

/// Checks the rules are the role's defaults: per port, the main table without its default
/// route at 199, then table 200 (default via the local proxy host) at 200.
fn check_rules(ns: &str) -> Result<()> {
    let (rules, table) = owned_rules(ns)?;
    let mut want = Vec::new();
    for (proto, ports) in [("udp", "3478"), ("udp", "5349"), ("udp", "49160-49200"), ("tcp", "3478"), ("tcp", "5349")] {
        let sel = format!("from {TURN} ipproto {proto} sport {ports}");
        want.push(format!("199: {sel} lookup main suppress_prefixlength 0 {PROTO}"));
        want.push(format!("200: {sel} lookup 200 {PROTO}"));
    }
    let mut got = rules.clone();
    got.sort();
    want.sort();
    check(got == want, || format!("rules {rules:#?}, expected {want:#?}"))?;
    check(table.contains(&format!("default via {LP} dev eth0")) && table.contains(PROTO), || {
        format!("table 200: {table:?}")
    })
}

/// Datagrams sent inside the booted host from coturn's address: 5 from a relay port and 5
/// from another port to the outside address, 5 from a TURN port to the LAN router.
fn send_from_host(host: &Host) -> Result<()> {
    let script = format!(
        "python3 - <<'EOF'\nimport socket\nfor sport, dst in (({RELAY_PORT}, '{OUTSIDE}'), ({OTHER_PORT}, '{OUTSIDE}'), \
         ({SPARE_TURN_PORT}, '{GW}')):\n    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n    \
         s.bind(('{TURN}', sport))\n    for _ in range(5):\n        s.sendto(b'x', (dst, 5000))\n    s.close()\nEOF"
    );
    host.sh(&script, SHORT).map(|_| ())
}

fn inventory(ssh: &Ssh, host_vars: serde_json::Value) -> serde_json::Value {
    json!({
        "all": {
            "vars": ssh.ansible_vars(),
            "children": { "turn_hosts": { "hosts": { HOST: host_vars } } },
        }
    })
}

fn good_host_vars() -> serde_json::Value {
    json!({ "ansible_host": TURN.to_string(), "turn_host_local_proxy_address": LP.to_string() })
}

fn write_inventory(path: &Path, inv: &serde_json::Value) {
    std::fs::write(path, serde_json::to_string_pretty(inv).expect("json")).expect("writing the inventory");
}

fn must_pass(run: &PlaybookRun, what: &str) {
    assert!(run.ok, "{what} failed (log {}):\n{}", run.log.display(), run.tail(60));
}

fn changed(run: &PlaybookRun) -> Option<u32> {
    run.recap().get(HOST).and_then(|f| f.get("changed")).copied()
}

#[test]
fn turn_host_role_routes_coturns_answers_through_the_local_proxy_host() {
    let t0 = Instant::now();
    let phase = |what: &str| common::phase(t0, what);
    nspawn::require().unwrap_or_else(|e| panic!("{e:#}"));
    turn::require().unwrap_or_else(|e| panic!("{e:#}"));
    assert!(
        cmd::run(&["sh", "-c", "command -v ansible-playbook"]).is_ok(),
        "ansible-playbook missing (package ansible): run tests/netns/deps.sh"
    );
    let _ = netns::netns::cleanup_stale();
    let rootfs = Rootfs::get(&common::cache_dir()).unwrap_or_else(|e| panic!("root filesystem: {e:#}"));
    let rootfs_s = rootfs.built_in.map(|d| format!("{:.1}", d.as_secs_f64())).unwrap_or_else(|| "cached".into());

    // The LAN: a bridge in sw, the turn host, the local proxy host and the router on it.
    let tag = netns::unique_tag();
    let tmp = TempDir::new(&tag).expect("temp dir");
    let dir = tmp.path().to_path_buf();
    let mk = |n: &str| Netns::new(&format!("{tag}-{n}")).unwrap_or_else(|e| panic!("namespace {n}: {e:#}"));
    let (sw, turn_ns, lp_ns, gw_ns) = (mk("sw"), mk("turn"), mk("lp"), mk("gw"));
    cmd::ip(sw.name(), &["link", "add", "br0", "type", "bridge"]).expect("bridge");
    cmd::ip(sw.name(), &["link", "set", "br0", "up"]).expect("bridge up");
    for (ns, port, a) in [(&turn_ns, "p-turn", TURN), (&lp_ns, "p-lp", LP), (&gw_ns, "p-gw", GW)] {
        let cidr = format!("{a}/24");
        Veth::new(&sw, port, &[], ns, "eth0", &[cidr.as_str()]).expect("veth");
        cmd::ip(sw.name(), &["link", "set", port, "master", "br0"]).expect("bridge port");
    }
    let (host_ns, lp, gw) = (turn_ns.name(), lp_ns.name(), gw_ns.name());
    cmd::ip(host_ns, &["route", "add", "default", "via", &GW.to_string()]).expect("turn host's default route");
    // lp: what the local_proxy role sets up for transparent streams.
    cmd::ip(lp, &["rule", "add", "fwmark", "1", "lookup", "100", "pref", "100"]).expect("fwmark rule");
    cmd::ip(lp, &["route", "add", "local", "0.0.0.0/0", "dev", "lo", "table", "100"]).expect("local route");
    nft(
        lp,
        "table inet local_proxy_transparent {\n chain prerouting {\n  type filter hook prerouting priority mangle; \
         policy accept;\n  socket transparent 1 meta mark set 1 accept\n }\n}\n",
    )
    .expect("socket transparent rule");
    for ns in [lp, gw] {
        nft(ns, &witness_rules()).expect("witness counters");
    }

    // coturn (the machine's, Debian's 4.6) in the turn host's namespace, bound to its LAN address.
    let server = ServerConfig {
        listen: vec![TURN],
        relay_ip: TURN,
        external_ip: None,
        external_private: None,
        min_port: 49160,
        max_port: 49200,
        user: "lbt".into(),
        password: "lbt-password".into(),
        auth_secret: None,
        realm: "lbt.test".into(),
        tls: None,
        server_relay: false,
    };
    let argv = server.argv(&dir);
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let mut coturn = Proc::spawn(host_ns, "turnserver", &argv, &dir).expect("turnserver");
    wait_until("turnserver listening", Duration::from_secs(15), Duration::from_millis(50), || {
        coturn.ensure_running()?;
        let missing = missing_listeners(host_ns, &[Listen::Udp(turn::PORT), Listen::Tcp(turn::PORT)])?;
        check(missing.is_empty(), || format!("not listening on {missing:?}"))
    })
    .unwrap_or_else(|e| panic!("{e:#}"));

    let ssh = Ssh::new(lp, &dir).expect("ssh key");
    let spec = HostSpec::new(HOST, host_ns, IpAddr::from(TURN));
    let mut host = Host::boot(&rootfs, &spec, &ssh, &tag, &dir).unwrap_or_else(|e| panic!("booting: {e:#}"));
    let boot_s = host.boot_time.as_secs_f64();
    phase(&format!("root filesystem {rootfs_s}; {HOST} booted in {boot_s:.2}s"));

    // Before the roll-out: coturn answers the outside address by its default gateway.
    let gw0 = counts(gw).expect("counters");
    let before = probe(lp, "udp", 40001);
    assert!(before.is_err(), "coturn's answer reached lp without the role's rules: {before:?}");
    let gw1 = counts(gw).expect("counters");
    let lp1 = counts(lp).expect("counters");
    assert!(gw1[0] > gw0[0], "coturn's unanswered STUN answers did not reach gw either: {gw0:?} -> {gw1:?}");
    assert_eq!(lp1[0], 0, "coturn's answers reached lp without the role's rules");
    let stray_before = gw1[0] - gw0[0];
    phase(&format!("without the role: {stray_before} STUN answers went to gw, none to lp"));

    // 1. The roll-out.
    let inv_path = dir.join("hosts.yml");
    write_inventory(&inv_path, &inventory(&ssh, good_host_vars()));
    let ansible = Ansible {
        ns: lp.to_string(),
        dir: common::repo_root().join("ansible"),
        inventory: inv_path.clone(),
        logdir: dir.clone(),
    };
    let run1 = ansible.run("site.yml", &[], RUN_TIMEOUT, "site-1").expect("ansible-playbook");
    if !run1.ok {
        let journal = host.sh("journalctl -b -u turn-host-routing --no-pager | tail -n 20", SHORT);
        eprintln!("turn-host-routing's journal:\n{}", journal.unwrap_or_else(|e| format!("{e:#}")));
    }
    must_pass(&run1, "site.yml with a turn_hosts host");
    assert!(changed(&run1).is_some_and(|c| c > 0), "the first run changed nothing: {:?}", run1.recap());
    check_rules(host_ns).unwrap_or_else(|e| panic!("after the first run: {e:#}"));
    let unit = host.sh("systemctl is-enabled turn-host-routing; systemctl is-active turn-host-routing", SHORT);
    let unit = unit.expect("systemctl");
    assert_eq!(unit.split_whitespace().collect::<Vec<_>>(), ["enabled", "active"], "turn-host-routing.service");
    phase(&format!("site.yml in {:.1}s: rules in place", run1.elapsed.as_secs_f64()));

    // coturn's answers now reach the transparent socket in lp, over UDP and TCP.
    let lp_before = counts(lp).expect("counters");
    let gw_before = counts(gw).expect("counters");
    let udp = probe(lp, "udp", 40002).unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(udp, format!("answer from {TURN}:3478 mapped {OUTSIDE}:40002"), "UDP");
    let tcp = probe(lp, "tcp", 40003).unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(tcp, format!("answer from {TURN}:3478 mapped {OUTSIDE}:40003"), "TCP");
    send_from_host(&host).expect("datagrams from the host");
    let lp_after = counts(lp).expect("counters");
    let gw_after = counts(gw).expect("counters");
    let d = |a: [u64; 5], b: [u64; 5]| -> Vec<u64> { a.iter().zip(b).map(|(x, y)| y - x).collect() };
    let (at_lp, at_gw) = (d(lp_before, lp_after), d(gw_before, gw_after));
    // answer_udp answer_tcp from_relay from_other to_lan
    assert!(at_lp[0] >= 1 && at_gw[0] == 0, "UDP answers: lp {at_lp:?} gw {at_gw:?}");
    assert!(at_lp[1] >= 2 && at_gw[1] == 0, "TCP answers: lp {at_lp:?} gw {at_gw:?}");
    assert!(at_lp[2] == 5 && at_gw[2] == 0, "from the relay port: lp {at_lp:?} gw {at_gw:?}");
    assert!(at_lp[3] == 0 && at_gw[3] == 5, "from another port: lp {at_lp:?} gw {at_gw:?}");
    assert!(at_lp[4] == 0 && at_gw[4] == 5, "from a TURN port to the LAN: lp {at_lp:?} gw {at_gw:?}");
    phase(&format!("{udp} (UDP), {tcp} (TCP); counted at lp {at_lp:?}, at gw {at_gw:?} (answers udp, tcp; from the relay port, another port; to the LAN)"));

    // 2. A second run changes nothing.
    let run2 = ansible.run("site.yml", &[], RUN_TIMEOUT, "site-2").expect("ansible-playbook");
    must_pass(&run2, "the second site.yml");
    assert_eq!(changed(&run2), Some(0), "second run: {:?}\nchanged: {:#?}", run2.recap(), run2.changed_tasks());
    phase(&format!("second site.yml: changed=0 in {:.1}s", run2.elapsed.as_secs_f64()));

    // 3. Power off (the unit's stop removes the rules) and boot again (its start adds them).
    let reboot0 = Instant::now();
    host.poweroff().expect("poweroff");
    let (left, _) = owned_rules(host_ns).expect("ip rule");
    assert!(left.is_empty(), "rules left after the host's poweroff: {left:#?}");
    // A new boot of the same overlay: the harness makes the ssh host key again.
    let upper = dir.join("hosts").join(HOST).join("upper/etc/ssh");
    for f in ["ssh_host_ed25519_key", "ssh_host_ed25519_key.pub"] {
        std::fs::remove_file(upper.join(f)).expect("removing the old host key");
    }
    drop(host);
    let host = Host::boot(&rootfs, &spec, &ssh, &tag, &dir).unwrap_or_else(|e| panic!("booting again: {e:#}"));
    let reboot_s = reboot0.elapsed().as_secs_f64();
    check_rules(host_ns).unwrap_or_else(|e| panic!("after the reboot: {e:#}"));
    let udp = probe(lp, "udp", 40004).unwrap_or_else(|e| panic!("after the reboot: {e:#}"));
    assert_eq!(udp, format!("answer from {TURN}:3478 mapped {OUTSIDE}:40004"), "UDP after the reboot");
    phase(&format!("powered off (rules gone) and booted again in {reboot_s:.1}s: rules back, {udp}"));

    // 4. Bad values fail the validation play, naming the variable; no host play starts.
    type Edit = fn(&mut serde_json::Value);
    let cases: [(&str, Edit, &[&str]); 4] = [
        (
            "missing local proxy address",
            |v| {
                v.as_object_mut().expect("object").remove("turn_host_local_proxy_address");
            },
            &["turn_host_local_proxy_address of coturn is required", "got nothing"],
        ),
        (
            "local proxy address of the other family",
            |v| v["turn_host_local_proxy_address"] = "2001:db8::2".into(),
            &["turn_host_local_proxy_address of coturn is required", "same family"],
        ),
        (
            "ansible_host a name",
            |v| v["ansible_host"] = "coturn.lan".into(),
            &["turn_host_address of coturn must be", "got coturn.lan"],
        ),
        (
            "backwards relay range",
            |v| v["turn_host_udp_ports"] = json!(["3478", "49200-49160"]),
            &["turn_host_udp_ports of coturn", "the range runs backwards"],
        ),
    ];
    let bad0 = Instant::now();
    let failures: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = cases
            .iter()
            .enumerate()
            .map(|(i, (case, edit, needles))| {
                let ansible = &ansible;
                let ssh = &ssh;
                let dir = &dir;
                s.spawn(move || -> Result<()> {
                    let mut vars = good_host_vars();
                    edit(&mut vars);
                    let path = dir.join(format!("bad-{i}.yml"));
                    write_inventory(&path, &inventory(ssh, vars));
                    let a = Ansible { inventory: path, ..ansible.clone() };
                    let r = a.run("site.yml", &[], RUN_TIMEOUT, &format!("bad-{i}"))?;
                    if r.ok {
                        bail!("{case}: site.yml succeeded:\n{}", r.text);
                    }
                    if r.text.contains("PLAY [TURN hosts") {
                        bail!("{case}: the TURN hosts play started:\n{}", r.text);
                    }
                    for n in *needles {
                        if !r.text.contains(n) {
                            bail!("{case}: the failure does not say `{n}`:\n{}", r.tail(30));
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        handles.into_iter().filter_map(|h| h.join().expect("thread").err().map(|e| format!("{e:#}"))).collect()
    });
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    let bad_s = bad0.elapsed().as_secs_f64();
    phase(&format!("{} bad inventories rejected by the validation play in {bad_s:.1}s", cases.len()));
    check_rules(host_ns).expect("the rejected runs left the rules alone");

    drop(host);
    drop(coturn);
    common::report(&format!(
        "RESULT turn_host rootfs_build_s={rootfs_s} boot_s={boot_s:.2} stray_answers_before={stray_before} site1_s={:.1} \
         site2_s={:.1} site2_changed=0 reboot_s={reboot_s:.1} bad_inventories={} bad_s={bad_s:.1} total_s={:.1}",
        run1.elapsed.as_secs_f64(),
        run2.elapsed.as_secs_f64(),
        cases.len(),
        t0.elapsed().as_secs_f64()
    ));
}
