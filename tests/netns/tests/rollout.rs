//! The roll-out, for real (issue 10): `ansible/site.yml` takes bare Debian hosts booted in the
//! topology (systemd-nspawn, see `netns::nspawn`) to serving, over ssh from the controller
//! namespace, with the project's .debs and yggdrasil 0.5 from a local apt repository, and
//! publishes DNS in knotd with TSIG. Then:
//! - the home's certificate in certbot's layout (symlinks in live/) is made readable to the
//!   proxy; its config is 0640 root:local-proxy (the ACME EAB key) and the proxy is not in
//!   yggdrasil's group (the node's private key);
//! - ACME on, its storage outside the unit's state directory: the role makes it and the
//!   service, in its sandbox, may write it (a drop-in's ReadWritePaths=);
//! - runtime control works at once: `ingress ctl drain`/`undrain` on each node (the role's token,
//!   root-only, a systemd credential for the unit's transient user) and `local-proxy ctl` at home
//!   (its token 0640 root:local-proxy); the ingress's loopback admin listener answers the name in
//!   ingress_admin_allowed_hosts (421 without it) and 421 to another;
//! - a client fetches a LAN site by name over HTTPS through each ingress node, and meshc over
//!   the mesh (the site's AAAA = the home's Yggdrasil address, from DNS); the ingress nodes see
//!   both WAN paths up (the role's policy routing: the harness's own rules are removed first,
//!   and the router's strict rp_filter drops wan2 replies without them);
//! - wan1 is blackholed and restored while HTTPS requests flow through both nodes: none fails;
//! - a second run changes nothing on any host (PLAY RECAP changed=0);
//! - ingress3 (its yggdrasil key already in a file of its own, `PrivateKeyPath`: kept, so its
//!   address stays) added to the inventory, one run: it serves, its A record is published, the home's
//!   allowlist admits it from DNS with the local proxy's main PID unchanged; ingress1, given an
//!   admin token in the same run, restarts onto it (ctl works with it), ingress2 does not restart;
//! - ingress3 removed, one run: its records go, the home's allowlist drops it (its WAN connects
//!   fail while ingress1's pass);
//! - `--limit home`: the ingress nodes' Yggdrasil addresses are asked of their routers, the
//!   rendered mesh.trusted_ingress is the same (changed=0); with ingress2's yggdrasil stopped the
//!   run fails naming ingress2 and leaves the config alone;
//! - `--limit ingress`: the home's Yggdrasil address is asked of its router, the ingress
//!   configs keep their mesh tier (changed=0).
//!
//! Prints `RESULT rollout ...` with the timings (root filesystem, boot, each run, whole test).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use netns::aptrepo::{self, AptRepo, Controller, REPO_PORT};
use netns::cmd;
use netns::knot::{DNS, ZONE};
use netns::nspawn::{self, Host, HostSpec, Rootfs, Ssh};
use netns::rollout::{self, Ansible, PlaybookRun, TsigDns, TSIG_KEY};
use netns::tls;
use netns::topology::{addr, Cut, Options, Role, Topology, Wan};
use netns::wait::{check, wait_until};
use serde_json::json;

const SITE: &str = "cloud.lbt.test";
const LAN_PORT: u16 = 11000;
/// The admin token ingress1 is given in the inventory when ingress3 joins.
const GIVEN_TOKEN: &str = "given-by-the-operator-0123456789";
/// ACME's storage at home: outside the unit's state directory (/var/lib/local-proxy).
const ACME_STORAGE: &str = "/srv/acme";
/// TTL of the published records: the home's firewall re-resolves within it.
const TTL: u32 = 5;
const RUN_TIMEOUT: Duration = Duration::from_secs(600);
const YGG_PORT: u16 = 7991;

struct Node {
    name: &'static str,
    role: Role,
    addr: IpAddr,
}

fn ingress_nodes() -> [Node; 3] {
    [
        Node { name: "ingress1", role: Role::Ingress1, addr: addr::INGRESS1.into() },
        Node { name: "ingress2", role: Role::Ingress2, addr: addr::INGRESS2.into() },
        Node { name: "ingress3", role: Role::Ingress3, addr: addr::INGRESS3.into() },
    ]
}

/// The inventory for the topology, following inventory/hosts.yml (JSON is YAML).
fn inventory(
    ingress: &[&Node],
    ssh: &Ssh,
    repo_url: &str,
    secret: &str,
    debs: &(PathBuf, PathBuf),
) -> serde_json::Value {
    let mesh_home = format!("tcp://{}:{YGG_PORT}", addr::MESH_HOME);
    let mut ingress_hosts = serde_json::Map::new();
    for n in ingress {
        ingress_hosts.insert(
            n.name.into(),
            json!({
                "ansible_host": n.addr.to_string(),
                "ingress_public_addresses": [n.addr.to_string()],
                "yggdrasil_peers": [mesh_home],
            }),
        );
    }
    // One node lets ssh in over the mesh; the others keep the mesh inbound filter's default.
    if let Some(serde_json::Value::Object(ingress1)) = ingress_hosts.get_mut("ingress1") {
        ingress1.insert("yggdrasil_inbound_allow".into(), json!(["22/tcp"]));
        // A drain longer than the unit's stop timeout allows: the role's drop-in gives it time.
        ingress1.insert("ingress_drain_timeout".into(), json!("2m"));
    }
    let mut vars = ssh.ansible_vars();
    vars.extend(
        json!({
                "dns_zone": ZONE,
                "home_wans": [
                    { "name": "wan1", "address": addr::WAN1.to_string(), "weight": 3,
                      "interface": "wan1", "gateway": addr::WAN1_GW.to_string() },
                    { "name": "wan2", "address": addr::WAN2.to_string(), "weight": 1,
                      "interface": "wan2", "gateway": addr::WAN2_GW.to_string() },
                ],
                // The topology has no internet: yggdrasil comes from the local repository.
                "apt_mirror": repo_url,
                "yggdrasil_apt_source": aptrepo::source_line(repo_url),
                "ingress_deb": debs.0.display().to_string(),
                "local_proxy_deb": debs.1.display().to_string(),
                "ingress_admin_allowed_hosts": [format!("admin.{ZONE}")],
        })
        .as_object()
        .cloned()
        .unwrap_or_default(),
    );
    json!({
        "all": {
            "vars": vars,
            "children": {
                "ingress": { "hosts": ingress_hosts },
                "local_proxy": { "hosts": { "home": {
                    "ansible_host": addr::WAN1.to_string(),
                    "yggdrasil_listen": [mesh_home],
                    "local_proxy_sites": [
                        // An access log where the unit's LogsDirectory= puts it, which does not
                        // exist before the first start: the role makes it for the config check.
                        { "host": SITE, "upstream": format!("http://{}:{LAN_PORT}", addr::LAN),
                          "access_log": { "path": "/var/log/local-proxy/access.log" } },
                    ],
                    // A transparent stream: the routing unit loads its nftables table, which
                    // must survive nftables.service (below).
                    "local_proxy_streams": [
                        { "name": "turn", "listen": "3478/udp", "upstream": format!("{}:3478", addr::LAN),
                          "transparent": true },
                    ],
                    "local_proxy_firewall_nameservers": [DNS.to_string()],
                    "local_proxy_firewall_min_refresh": "1s",
                    "local_proxy_firewall_max_refresh": "5s",
                    // ACME storing outside the unit's state directory: the role makes the
                    // directory and lets the unit write it. The CA is out of reach here: the
                    // proxy keeps asking it, and serves certbot's certificate meanwhile.
                    "local_proxy_acme": true,
                    "local_proxy_acme_directory": "https://127.0.0.1:9/dir",
                    "local_proxy_acme_storage": ACME_STORAGE,
                } } },
                "dns": { "hosts": { "knot": {
                    "ansible_host": DNS.to_string(),
                    "dns_tsig_key_name": TSIG_KEY,
                    "dns_tsig_key_secret": secret,
                    "dns_published_names": ["cloud"],
                    "dns_ttl": TTL,
                } } },
            },
        }
    })
}

fn write_inventory(path: &Path, inv: &serde_json::Value) {
    std::fs::write(path, serde_json::to_string_pretty(inv).expect("json")).expect("writing the inventory");
}

/// Panics with the output's tail unless the run succeeded, and with each host's journal of the
/// last minute (a unit's own error, nft's say, is there only, not in Ansible's output).
fn must_pass(run: &PlaybookRun, what: &str, hosts: &BTreeMap<String, Host>) {
    if run.ok {
        return;
    }
    let journals: String = hosts
        .iter()
        .map(|(name, h)| {
            let journal = h
                .sh("journalctl -b --since -60s --no-pager | tail -n 40", Duration::from_secs(10))
                .unwrap_or_else(|e| format!("(not asked: {e:#})"));
            format!("\n-- {name}'s journal:\n{journal}")
        })
        .collect();
    panic!("{what} failed (log {}):\n{}{journals}", run.log.display(), run.tail(60));
}

/// `curl` the site over HTTPS from `role`, the name resolved to `to`; the body.
fn fetch(t: &Topology, role: Role, to: IpAddr, ca: &Path, max_time: u32) -> Result<String> {
    let target = match to {
        IpAddr::V6(a) => format!("{SITE}:443:[{a}]"),
        IpAddr::V4(a) => format!("{SITE}:443:{a}"),
    };
    let ca_s = ca.display().to_string();
    let mt = max_time.to_string();
    let url = format!("https://{SITE}/rollout");
    t.exec(
        role,
        &["curl", "-sS", "--fail", "--max-time", &mt, "--cacert", &ca_s, "--resolve", &target, &url],
        Duration::from_secs(u64::from(max_time) + 5),
    )
}

/// Waits until the site answers through `to` from `role` with the LAN service's reply.
fn wait_serving(t: &Topology, role: Role, to: IpAddr, ca: &Path, timeout: Duration) -> Result<String> {
    wait_until(&format!("{SITE} via {to} from {}", role.as_str()), timeout, Duration::from_millis(500), || {
        let body = fetch(t, role, to, ca, 5)?;
        check(body.contains("peer="), || format!("not the LAN service: {body}"))?;
        Ok(body)
    })
}

/// The A records of `name` as the client gets them from the zone's server (kdig in the client's
/// namespace, over the topology).
fn client_lookup(t: &Topology, name: &str) -> Result<Vec<IpAddr>> {
    let server = format!("@{DNS}");
    let fqdn = format!("{name}.");
    let out =
        t.exec(Role::Client, &["kdig", &server, "+short", "+time=2", "+retry=1", &fqdn, "A"], Duration::from_secs(10))?;
    out.lines().map(|l| l.trim().parse::<IpAddr>().with_context(|| format!("not an address: {l:?}"))).collect()
}

/// The local proxy's main PID in the home host.
fn proxy_pid(home: &Host) -> Result<u32> {
    let out = home.sh("systemctl show -p MainPID --value local-proxy", Duration::from_secs(10))?;
    let pid: u32 = out.trim().parse().with_context(|| format!("MainPID {out:?}"))?;
    if pid == 0 {
        bail!("local-proxy is not running");
    }
    Ok(pid)
}

/// A yggdrasil config whose key is kept in a file of its own (`PrivateKeyPath`), as an operator
/// may have it before the roll-out: (config, key file, the address it gives). Made with this
/// machine's yggdrasil.
fn ygg_config_with_key_file(dir: &Path, key_path: &str) -> Result<(Vec<u8>, Vec<u8>, String)> {
    let ygg = |args: &[&str]| -> Result<String> {
        let out = std::process::Command::new("yggdrasil").args(args).output().context("running yggdrasil")?;
        if !out.status.success() {
            bail!("yggdrasil {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let whole = dir.join("ygg-keyfile.json");
    std::fs::write(&whole, ygg(&["-genconf", "-json"])?)?;
    let whole_s = whole.display().to_string();
    let key = ygg(&["-useconffile", &whole_s, "-exportkey"])?;
    let address = ygg(&["-useconffile", &whole_s, "-address"])?.trim().to_string();
    let config = serde_json::to_vec_pretty(&json!({ "PrivateKeyPath": key_path }))?;
    Ok((config, key.into_bytes(), address))
}

/// A host's Yggdrasil address (getSelf on its admin socket).
fn ygg_address(h: &Host) -> Result<String> {
    let out =
        h.sh("yggdrasilctl -json -endpoint unix:///run/yggdrasil/yggdrasil.sock getSelf", Duration::from_secs(10))?;
    let v: serde_json::Value = serde_json::from_str(&out).with_context(|| format!("getSelf said {out:?}"))?;
    let a: Ipv6Addr = v["address"].as_str().and_then(|a| a.parse().ok()).with_context(|| format!("getSelf: {out}"))?;
    Ok(a.to_string())
}

/// `mesh.trusted_ingress` of the home's rendered config, and whether the running proxy took the
/// file (`local-proxy check` on it; the role reloads after checking).
fn mesh_trusted(home: &Host) -> Result<BTreeSet<String>> {
    let text = home.sh("cat /etc/local-proxy/local-proxy.toml", Duration::from_secs(10))?;
    let mesh = text.split("\n[mesh]\n").nth(1).context("no [mesh] section")?;
    let line = mesh
        .lines()
        .take_while(|l| !l.starts_with('['))
        .find_map(|l| l.strip_prefix("trusted_ingress = "))
        .with_context(|| format!("[mesh] has no trusted_ingress:\n{mesh}"))?;
    let list: Vec<String> = serde_json::from_str(line).with_context(|| format!("trusted_ingress = {line}"))?;
    Ok(list.into_iter().map(|a| a.parse::<Ipv6Addr>().map(|a| a.to_string()).unwrap_or(a)).collect())
}

/// The last lines of a unit's journal on a host (for failure messages).
fn journal(h: &Host, unit: &str) -> String {
    h.sh(&format!("journalctl -b -u {unit} --no-pager | tail -n 25"), Duration::from_secs(10))
        .unwrap_or_else(|e| format!("{e:#}"))
}

/// The addresses the home's allowlist holds (`local-proxy firewall show`).
fn allowlist(home: &Host) -> Result<String> {
    home.sh("local-proxy firewall show -c /etc/local-proxy/local-proxy.toml", Duration::from_secs(10))
}

/// Whether a TCP connect from `role` to `to:port` completes within `secs` seconds (a firewall
/// that drops the SYN makes it time out).
fn tcp_connect(t: &Topology, role: Role, to: IpAddr, port: u16, secs: u64) -> bool {
    let script = format!("import socket; socket.create_connection(('{to}', {port}), timeout={secs}).close()");
    t.exec(role, &["python3", "-c", &script], Duration::from_secs(secs + 5)).is_ok()
}

/// Whether a TCP connect from meshc to `[to]:port` over the mesh completes within 3 s (the mesh
/// inbound filter drops the SYN of a port it does not let in).
fn mesh_connect(t: &Topology, to: Ipv6Addr, port: u16) -> bool {
    tcp_connect(t, Role::Meshc, to.into(), port, 3)
}

/// Whether a TCP connect from `role` to the home's WAN1 HTTPS port completes within 2 s (the
/// allowlist drops the SYN of an address it does not hold).
fn wan_connect(t: &Topology, role: Role) -> bool {
    tcp_connect(t, role, addr::WAN1.into(), 443, 2)
}

#[test]
fn site_yml_takes_bare_hosts_to_serving_and_adds_and_removes_a_node() {
    let t0 = Instant::now();
    let phase = |what: &str| common::phase(t0, what);
    nspawn::require().unwrap_or_else(|e| panic!("{e:#}"));
    aptrepo::require().unwrap_or_else(|e| panic!("{e:#}"));
    rollout::require().unwrap_or_else(|e| panic!("{e:#}"));
    tls::require().unwrap_or_else(|e| panic!("{e:#}"));

    // Before any namespace exists: the root filesystem, Debian's .debs, the project's .debs.
    let cache = common::cache_dir();
    let rootfs = Rootfs::get(&cache).unwrap_or_else(|e| panic!("root filesystem: {e:#}"));
    let rootfs_s = rootfs.built_in.map(|d| format!("{:.1}", d.as_secs_f64())).unwrap_or_else(|| "cached".into());
    let ygg_debs = aptrepo::download(&cache, &["yggdrasil/bookworm-backports"]).unwrap_or_else(|e| panic!("{e:#}"));
    let debs = common::project_debs().unwrap_or_else(|e| panic!("{e:#}"));
    phase(&format!("root filesystem ({rootfs_s}), packages {} {}", debs.0.display(), debs.1.display()));

    let mut t = common::build(Options { mesh: false, backends: false });
    t.add_ingress3().expect("ingress3");
    // Bare home: the harness's policy routing goes; the role must set it up.
    for (wan_table, pref) in [(addr::WAN1_TABLE, addr::WAN1_TABLE), (addr::WAN2_TABLE, addr::WAN2_TABLE)] {
        cmd::ip(t.ns(Role::Home), &["rule", "del", "pref", pref]).expect("removing the harness's rule");
        cmd::ip(t.ns(Role::Home), &["route", "flush", "table", wan_table]).expect("flushing the harness's table");
    }
    let dir = t.dir().to_path_buf();
    let mut ctl = Controller::start(t.ns(Role::Inet), &t.tag, &dir).expect("controller");
    let dns = TsigDns::start(Some(t.ns(Role::Inet)), &t.tag, &dir, TTL, TSIG_KEY, "").expect("knotd");
    let repo = AptRepo::build(&dir.join("repo"), &ygg_debs).expect("repository");
    let repo_url = ctl.serve("apt-repo", &repo.dir, REPO_PORT).expect("serving the repository");
    let ssh = Ssh::new(ctl.ns(), &dir).expect("ssh key");

    // The site's certificate, certbot's layout, in the home before the roll-out.
    let cert = tls::self_signed(&dir, "cloud", &[SITE]).expect("certificate");
    let live = format!("/etc/letsencrypt/live/{SITE}");
    let read = |p: &Path| std::fs::read(p).expect("reading the certificate");
    let mut home_spec = HostSpec::new("home", t.ns(Role::Home), addr::WAN1.into());
    home_spec.files = vec![
        (format!("{live}/fullchain.pem").into(), read(&cert.cert), 0o644),
        (format!("{live}/privkey.pem").into(), read(&cert.key), 0o600),
    ];
    let mut specs = vec![home_spec];
    // ingress3 has yggdrasil set up already, its key in a file of its own: the role keeps it
    // (it used to read no key back, make a new one, and so give the node a new address).
    let key_path = "/etc/yggdrasil/private.pem";
    let (ygg_conf, ygg_key, ygg3_address) = ygg_config_with_key_file(&dir, key_path).expect("a key file");
    for n in ingress_nodes() {
        let mut spec = HostSpec::new(n.name, t.ns(n.role), n.addr);
        if n.role == Role::Ingress3 {
            // Readable by the user the package makes later (yggdrasil).
            spec.files = vec![
                ("/etc/yggdrasil/yggdrasil.conf".into(), ygg_conf.clone(), 0o644),
                (key_path.into(), ygg_key.clone(), 0o644),
            ];
        }
        specs.push(spec);
    }
    let boot0 = Instant::now();
    // One after the other (see nspawn::Host::start): ~0.5 s each.
    let mut hosts: BTreeMap<String, Host> = BTreeMap::new();
    for mut spec in specs {
        spec.nameservers = vec![DNS.into()];
        let h = Host::boot(&rootfs, &spec, &ssh, &t.tag, &dir).unwrap_or_else(|e| panic!("{}: {e:#}", spec.name));
        hosts.insert(spec.name.clone(), h);
    }
    let boot = boot0.elapsed();
    phase(&format!("4 hosts booted in {:.1}s", boot.as_secs_f64()));

    // The LAN service behind the home.
    let pe = Path::new(env!("CARGO_BIN_EXE_peer-echo")).display().to_string();
    let lan_listen = format!("{}:{LAN_PORT}", addr::LAN);
    t.spawn(Role::Lan, "lan-site", &[pe, "serve".into(), "--http".into(), lan_listen.clone()]).expect("LAN site");
    let lan_ns = t.ns(Role::Lan).to_string();
    wait_until("LAN site listening", Duration::from_secs(10), Duration::from_millis(50), || {
        let out = cmd::exec_ok(&lan_ns, &["ss", "-Hltn"], cmd::DEFAULT_TIMEOUT)?;
        check(out.contains(&lan_listen), || "not yet".into())
    })
    .expect("LAN site");

    let nodes = ingress_nodes();
    let two: Vec<&Node> = nodes.iter().take(2).collect();
    let three: Vec<&Node> = nodes.iter().collect();
    let inv_path = dir.join("hosts.yml");
    write_inventory(&inv_path, &inventory(&two, &ssh, &repo_url, &dns.secret, &debs));
    let ansible = Ansible {
        ns: ctl.ns().to_string(),
        dir: common::repo_root().join("ansible"),
        inventory: inv_path.clone(),
        logdir: dir.clone(),
    };

    // As certbot lays them out: the files in archive/, symlinks (root's) in live/.
    hosts["home"]
        .sh(
            &format!(
                "set -e; a=/etc/letsencrypt/archive/{SITE}; mkdir -p $a; chmod 700 /etc/letsencrypt/archive; \
                 for f in fullchain privkey; do mv {live}/$f.pem $a/${{f}}1.pem; \
                 ln -s ../../archive/{SITE}/${{f}}1.pem {live}/$f.pem; done"
            ),
            Duration::from_secs(10),
        )
        .expect("certbot's layout");

    // 1. Bare hosts to serving.
    let run1 = ansible.run("site.yml", &[], RUN_TIMEOUT, "site-1").expect("ansible-playbook");
    must_pass(&run1, "site.yml on bare hosts", &hosts);
    phase(&format!("site.yml from bare hosts in {:.1}s", run1.elapsed.as_secs_f64()));
    // The mesh came up filtered on every node: the (closed) inbound filter was in force before
    // yggdrasil's first start, not only once the service's role ran later in the run.
    for (name, host) in [("home", &hosts["home"]), ("ingress1", &hosts["ingress1"]), ("ingress2", &hosts["ingress2"])] {
        let since = host
            .sh(
                "systemctl show -p ActiveEnterTimestampMonotonic --value yggdrasil-inbound yggdrasil",
                Duration::from_secs(10),
            )
            .expect("systemctl show");
        let t: Vec<u64> = since.lines().filter_map(|l| l.trim().parse().ok()).collect();
        assert!(
            t.len() == 2 && t[0] > 0 && t[0] < t[1],
            "{name}: the inbound filter did not start before yggdrasil (monotonic µs: {since})"
        );
    }

    let home = &hosts["home"];
    // The config may hold the ACME EAB key: the service's group reads it, nobody else. The
    // proxy is not in yggdrasil's group (its private key, its admin socket): the role writes
    // the mesh address itself.
    let facts = home
        .sh("stat -c '%a %U %G' /etc/local-proxy/local-proxy.toml; id -nG local-proxy", Duration::from_secs(10))
        .expect("config mode and groups");
    let mut facts = facts.lines();
    assert_eq!(facts.next(), Some("640 root local-proxy"), "the config's mode and owner");
    let groups = facts.next().unwrap_or("");
    assert!(!groups.split_whitespace().any(|g| g == "yggdrasil"), "local-proxy's groups: {groups}");
    // The service, in its sandbox (ProtectSystem=strict), may write ACME's storage outside its
    // state directory: the role's drop-in (ReadWritePaths=), applied by a restart.
    let pid = proxy_pid(home).expect("local-proxy pid");
    let probe = format!(
        "nsenter -t {pid} -m -- setpriv --reuid local-proxy --regid local-proxy --clear-groups \
         sh -c 'touch {ACME_STORAGE}/.probe && rm {ACME_STORAGE}/.probe' && stat -c '%a %U' {ACME_STORAGE}"
    );
    let storage = home
        .sh(&probe, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("the service cannot write {ACME_STORAGE}: {e:#}\n{}", journal(home, "local-proxy")));
    assert_eq!(storage.trim(), "700 local-proxy", "{ACME_STORAGE}'s mode and owner");
    for (name, want) in [("ingress1", "2min 15s"), ("ingress2", "45s")] {
        let got = hosts[name]
            .sh("systemctl show -p TimeoutStopUSec --value ingress", Duration::from_secs(10))
            .expect("the ingress unit's stop timeout");
        assert_eq!(got.trim(), want, "{name}: TimeoutStopSec for its drain_timeout");
    }
    // Runtime control works on every host once a run has passed: the roles keep a token (the
    // ingress's as a systemd credential for its transient user), and `ctl` reads it as root.
    for n in &two {
        let out = hosts[n.name]
            .sh(
                &format!("stat -c '%a %U %G' /etc/ingress/admin-token; ingress ctl drain wan1 && ingress ctl undrain wan1; \
                 for name in admin.{ZONE} other.example; do python3 -c \"import http.client as h, sys; \
                 c = h.HTTPConnection('127.0.0.1', 9180); c.request('GET', '/healthz', headers={{'Host': sys.argv[1]}}); \
                 print(sys.argv[1], c.getresponse().status)\" $name; done"),
                Duration::from_secs(20),
            )
            .unwrap_or_else(|e| panic!("{}: ingress ctl: {e:#}\n{}", n.name, journal(&hosts[n.name], "ingress")));
        assert!(
            out.starts_with("600 root root\n")
                && out.contains("serving -> drained")
                && out.contains("drained -> serving")
                && out.contains(&format!("admin.{ZONE} 200"))
                && out.contains("other.example 421"),
            "{}: the token's mode and owner, a drain and an undrain, the admin listener's names: {out}",
            n.name
        );
    }
    let upstream = format!("http://{}:{LAN_PORT}", addr::LAN);
    let out = home
        .sh(
            &format!(
                "stat -c '%a %U %G' /etc/local-proxy/admin-token; \
                 local-proxy ctl drain {SITE} {upstream} && local-proxy ctl undrain {SITE} {upstream}"
            ),
            Duration::from_secs(20),
        )
        .unwrap_or_else(|e| panic!("local-proxy ctl: {e:#}\n{}", journal(home, "local-proxy")));
    assert!(
        out.starts_with("640 root local-proxy\n")
            && out.contains("serving -> drained")
            && out.contains("drained -> serving"),
        "home: the token's mode and owner, then a drain and an undrain: {out}"
    );
    let mesh: Ipv6Addr = home
        .sh("yggdrasilctl -json -endpoint unix:///run/yggdrasil/yggdrasil.sock getSelf", Duration::from_secs(10))
        .ok()
        .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
        .and_then(|v| v["address"].as_str().and_then(|a| a.parse().ok()))
        .expect("the home's yggdrasil address");
    let want_a: BTreeSet<String> = two.iter().map(|n| n.addr.to_string()).collect();
    assert_eq!(dns.dig("A", "cloud").unwrap(), want_a, "A of {SITE}");
    assert_eq!(dns.dig("AAAA", "cloud").unwrap(), BTreeSet::from([mesh.to_string()]), "AAAA of {SITE}");
    for n in &two {
        assert_eq!(dns.dig("A", n.name).unwrap(), BTreeSet::from([n.addr.to_string()]), "A of {}", n.name);
    }

    // The ingress nodes' mesh tier sends PROXY v2: the home trusts their Yggdrasil addresses
    // for it (the role renders mesh.trusted_ingress from each node's yggdrasil_address).
    let ygg_of = |names: &[&Node]| -> BTreeSet<String> {
        names.iter().map(|n| ygg_address(&hosts[n.name]).unwrap_or_else(|e| panic!("{}: {e:#}", n.name))).collect()
    };
    assert_eq!(mesh_trusted(home).expect("mesh.trusted_ingress"), ygg_of(&two), "mesh.trusted_ingress after run 1");

    let ca = cert.cert.clone();
    // The client looks the name up itself (the topology's DNS server, over the topology) and
    // fetches through every address it gets.
    let resolved = client_lookup(&t, SITE).expect("the client's lookup");
    assert_eq!(resolved.iter().map(IpAddr::to_string).collect::<BTreeSet<_>>(), want_a, "the client's A of {SITE}");
    for to in resolved {
        let body = wait_serving(&t, Role::Client, to, &ca, Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("{e:#}\nlocal-proxy log:\n{}", journal(home, "local-proxy")));
        assert!(
            body.to_ascii_lowercase().contains(&format!("x-forwarded-for: {}", addr::CLIENT)),
            "the LAN service sees the client's address as X-Forwarded-For: {body}"
        );
    }
    // Both WAN paths up on every node: the role's policy routing carries wan2's replies.
    for n in &two {
        wait_until(
            &format!("both paths up on {}", n.name),
            Duration::from_secs(30),
            Duration::from_millis(500),
            || {
                let m = netns::metrics::scrape(t.ns(n.role), netns::ingress::ADMIN)?;
                let up = |p: &str| m.get(netns::ingress::names::PATH_UP, &[("path", p)]);
                check(up("wan1") == Some(1.0) && up("wan2") == Some(1.0), || {
                    format!("wan1 {:?} wan2 {:?}", up("wan1"), up("wan2"))
                })
            },
        )
        .unwrap_or_else(|e| panic!("{e:#}"));
    }
    // Over the mesh: meshc peers with the home's yggdrasil (the port the inventory set) and
    // fetches the site at the AAAA the dns role published.
    let meshc =
        netns::ygg::start(t.ns(Role::Meshc), "meshc", &dir, &[], &[format!("tcp://{}:{YGG_PORT}", addr::MESH_HOME)])
            .expect("meshc's yggdrasil");
    netns::ygg::wait_reachable(t.ns(Role::Meshc), mesh, Duration::from_secs(30)).expect("home over the mesh");
    wait_serving(&t, Role::Meshc, mesh.into(), &ca, Duration::from_secs(30)).expect("the site over the mesh");
    phase("serving through ingress1, ingress2 and the mesh");

    // The mesh inbound filter: sshd listens on every address of each host, the mesh's included,
    // yet from meshc only ingress1's (yggdrasil_inbound_allow 22/tcp) answers; the home's and
    // ingress2's drop the SYN (counted), while the home's site answered above.
    let sshd = home.sh("ss -Htln 'sport = :22'", Duration::from_secs(10)).expect("ss on the home");
    assert!(sshd.contains("[::]:22") || sshd.contains("*:22"), "sshd on the home listens on: {sshd}");
    let ygg_ip = |name: &str| -> Ipv6Addr {
        let a = ygg_address(&hosts[name]).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        a.parse().unwrap_or_else(|e| panic!("{name}'s Yggdrasil address {a}: {e}"))
    };
    let (ygg1, ygg2) = (ygg_ip("ingress1"), ygg_ip("ingress2"));
    for to in [ygg1, ygg2] {
        netns::ygg::wait_reachable(t.ns(Role::Meshc), to, Duration::from_secs(30))
            .expect("an ingress node over the mesh");
    }
    wait_until("ssh on ingress1 over the mesh", Duration::from_secs(20), Duration::from_millis(200), || {
        if mesh_connect(&t, ygg1, 22) {
            Ok(())
        } else {
            bail!("no connection")
        }
    })
    .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(!mesh_connect(&t, mesh, 22), "the home's sshd answered over the mesh");
    assert!(!mesh_connect(&t, ygg2, 22), "ingress2's sshd answered over the mesh");
    let dropped =
        home.sh("nft list chain inet yggdrasil_inbound mesh", Duration::from_secs(10)).expect("the home's filter");
    // The refused connects were dropped by the last rule; the mesh's own traffic came in through
    // the TUN, its sources' route, so the reverse-path rule dropped none of it.
    let counted = |rpf: bool| dropped.lines().find(|l| l.contains("counter packets") && l.contains("fib saddr") == rpf);
    assert!(counted(false).is_some_and(|l| !l.contains("counter packets 0 ")), "{dropped}");
    assert!(counted(true).is_some_and(|l| l.contains("counter packets 0 ")), "{dropped}");
    // Debian's nftables.service begins with `flush ruleset` (and its stop flushes too): the
    // filter and the transparent streams' table come back after its restart, its reload and a
    // stop then start, and the filter still drops. (The routing unit's comes back by a queued
    // reload, the local proxy's allowlist by its read-back every 10 s: waited for.)
    for action in ["restart nftables", "reload nftables", "stop nftables && systemctl start nftables"] {
        home.sh(&format!("systemctl {action}"), Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("systemctl {action}: {e:#}"));
        for table in ["yggdrasil_inbound", "local_proxy_transparent", "local_proxy"] {
            wait_until(
                &format!("{table} after systemctl {action}"),
                Duration::from_secs(20),
                Duration::from_millis(100),
                || home.sh(&format!("nft list table inet {table}"), Duration::from_secs(10)),
            )
            .unwrap_or_else(|e| panic!("{e:#}"));
        }
        assert!(!mesh_connect(&t, mesh, 22), "the home's sshd answered over the mesh after nftables {action}");
    }
    phase("mesh inbound filter: ssh only where allowed, kept across nftables.service");

    // 2. wan1 blackholed and restored while requests flow through both nodes: none fails.
    let ca_s = ca.display().to_string();
    // Each request prints `<start ms> <end ms> <ingress> <HTTP code>`.
    let loop_script = format!(
        "for i in $(seq 1 60); do for a in {} {}; do s=$(date +%s%3N); \
           c=$(curl -s -o /dev/null -w '%{{http_code}}' --max-time 10 --cacert '{ca_s}' \
             --resolve {SITE}:443:$a https://{SITE}/cut); echo \"$s $(date +%s%3N) $a $c\"; done; sleep 0.1; done",
        addr::INGRESS1,
        addr::INGRESS2
    );
    t.spawn(Role::Client, "https-load", &["sh".into(), "-c".into(), loop_script]).expect("load");
    let count = |t: &mut Topology| t.proc_mut("https-load").map(|p| p.stdout().lines().count()).unwrap_or(0);
    wait_until("20 requests before the cut", Duration::from_secs(60), Duration::from_millis(100), || {
        let n = count(&mut t);
        check(n >= 20, || format!("{n} so far"))
    })
    .expect("load running");
    let cut_ms = netns::unix_ms();
    t.cut(Wan::Wan1, Cut::Blackhole).expect("cut");
    // The blackhole is in force once `nft` has returned.
    let cut_done_ms = netns::unix_ms();
    let at_cut = count(&mut t);
    wait_until("40 requests during the cut", Duration::from_secs(60), Duration::from_millis(100), || {
        let n = count(&mut t);
        check(n >= at_cut + 40, || format!("{} since the cut", n - at_cut))
    })
    .expect("load during the cut");
    t.restore(Wan::Wan1, Cut::Blackhole).expect("restore");
    let status = t.proc_mut("https-load").unwrap().wait_exit(Duration::from_secs(120)).expect("load ends");
    let lines = t.proc_mut("https-load").unwrap().stdout();
    let reqs: Vec<(u64, u64, String, String)> = lines
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Some((f.first()?.parse().ok()?, f.get(1)?.parse().ok()?, f.get(2)?.to_string(), f.get(3)?.to_string()))
        })
        .collect();
    let total = reqs.len();
    assert!(status.success() && total == 120, "load: {status}, {total} requests:\n{lines}");
    assert!(reqs.iter().any(|r| r.0 > cut_ms + 3000), "no request long after the cut:\n{lines}");
    // As in the cut scenarios: a connection already relaying over wan1 when it is blackholed
    // cannot be moved by an L4 proxy (its packets are simply lost); those, started before the
    // cut and still running at it, are counted apart (at most one per ingress node, since the
    // requests are sequential). Every request started after the blackhole was in force must
    // succeed.
    let (split, failed): (Vec<_>, Vec<_>) =
        reqs.iter().filter(|r| r.3 != "200").partition(|r| r.0 <= cut_done_ms && r.1 >= cut_ms);
    assert!(
        failed.is_empty(),
        "{} of {total} requests failed across the wan1 cut (cut {cut_ms}..{cut_done_ms}): {failed:?}",
        failed.len()
    );
    assert!(split.len() <= 2, "requests in flight at the cut that failed: {split:?}");
    phase(&format!(
        "{total} requests across a wan1 blackhole: none failed ({} in flight at the cut were lost)",
        split.len()
    ));
    let split_lost = split.len();

    // 3. A second run changes nothing.
    let run2 = ansible.run("site.yml", &[], RUN_TIMEOUT, "site-2").expect("ansible-playbook");
    must_pass(&run2, "the second site.yml", &hosts);
    let recap = run2.recap();
    for h in ["home", "ingress1", "ingress2", "knot"] {
        let changed = recap.get(h).and_then(|f| f.get("changed")).copied();
        assert_eq!(
            changed,
            Some(0),
            "second run on {h}: {:?}\nchanged tasks: {:#?}",
            recap.get(h),
            run2.changed_tasks()
        );
    }
    phase(&format!("second site.yml: changed=0 everywhere in {:.1}s", run2.elapsed.as_secs_f64()));

    // 4. ingress3 joins: one run.
    let pid_before = proxy_pid(home).expect("local-proxy pid");
    let ingress_pids = || -> Vec<String> {
        two.iter()
            .map(|n| hosts[n.name].sh("systemctl show -p MainPID --value ingress", Duration::from_secs(10)))
            .collect::<Result<_>>()
            .unwrap_or_else(|e| panic!("the ingress nodes' main PIDs: {e:#}"))
    };
    let ingress_pids_before = ingress_pids();
    // ingress1 is given a token of the operator's in the same run: it restarts onto it, and
    // only it (the others keep the token they run with).
    let mut inv3 = inventory(&three, &ssh, &repo_url, &dns.secret, &debs);
    inv3["all"]["children"]["ingress"]["hosts"]["ingress1"]["ingress_admin_token"] = json!(GIVEN_TOKEN);
    write_inventory(&inv_path, &inv3);
    let run3 = ansible.run("site.yml", &[], RUN_TIMEOUT, "site-3-add").expect("ansible-playbook");
    must_pass(&run3, "site.yml adding ingress3", &hosts);
    let i3 = &nodes[2];
    assert_eq!(dns.dig("A", "ingress3").unwrap(), BTreeSet::from([i3.addr.to_string()]), "A of ingress3");
    let want3: BTreeSet<String> = three.iter().map(|n| n.addr.to_string()).collect();
    assert_eq!(dns.dig("A", "cloud").unwrap(), want3, "A of {SITE} with ingress3");
    assert_eq!(dns.dig("A", "ingress-nodes").unwrap(), want3, "A of the name listing every node");
    let i3s = i3.addr.to_string();
    wait_until("the home's allowlist admits ingress3", Duration::from_secs(30), Duration::from_millis(500), || {
        let fw = allowlist(home)?;
        check(fw.contains(&i3s), || format!("not yet:\n{fw}"))
    })
    .unwrap_or_else(|e| panic!("{e:#}"));
    let resolved = client_lookup(&t, SITE).expect("the client's lookup");
    assert!(resolved.contains(&i3.addr), "the client's A of {SITE} lacks ingress3: {resolved:?}");
    wait_serving(&t, Role::Client, i3.addr, &ca, Duration::from_secs(60)).expect("the site through ingress3");
    wait_until("ingress3 uses the WAN paths", Duration::from_secs(30), Duration::from_millis(500), || {
        let m = netns::metrics::scrape(t.ns(Role::Ingress3), netns::ingress::ADMIN)?;
        let up = m.get(netns::ingress::names::PATH_UP, &[("path", "wan1")]);
        check(up == Some(1.0), || format!("wan1 {up:?}"))
    })
    .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(wan_connect(&t, Role::Ingress3), "ingress3 reaches the home's WAN port once admitted");
    assert_eq!(mesh_trusted(home).expect("mesh.trusted_ingress"), ygg_of(&three), "mesh.trusted_ingress with ingress3");
    assert_eq!(
        ygg_address(&hosts["ingress3"]).expect("ingress3's address"),
        ygg3_address,
        "ingress3's key, kept in a file of its own, was replaced"
    );
    assert_eq!(proxy_pid(home).expect("local-proxy pid"), pid_before, "the local proxy was restarted");
    let ingress_pids_after = ingress_pids();
    assert!(
        ingress_pids_before.iter().chain(&ingress_pids_after).all(|p| p.trim() != "0")
            && ingress_pids_after[0] != ingress_pids_before[0]
            && ingress_pids_after[1] == ingress_pids_before[1],
        "ingress1 (given a token) restarts, ingress2 does not: {ingress_pids_before:?} -> {ingress_pids_after:?}"
    );
    let out = hosts["ingress1"]
        .sh(
            "cat /etc/ingress/admin-token; echo; cat /run/credentials/ingress.service/admin-token; echo; \
             ingress ctl weight wan2 2 && ingress ctl weight wan2 config",
            Duration::from_secs(20),
        )
        .unwrap_or_else(|e| panic!("ingress1's given token: {e:#}\n{}", journal(&hosts["ingress1"], "ingress")));
    assert!(
        out.starts_with(&format!("{GIVEN_TOKEN}\n{GIVEN_TOKEN}\n")) && out.matches(" -> ").count() == 2,
        "ingress1's token file, its credential, then two weight changes through ctl: {out}"
    );
    phase(&format!("ingress3 added in {:.1}s: serving, published, admitted", run3.elapsed.as_secs_f64()));

    // 5. ingress3 leaves: one run.
    write_inventory(&inv_path, &inventory(&two, &ssh, &repo_url, &dns.secret, &debs));
    let run4 = ansible.run("site.yml", &[], RUN_TIMEOUT, "site-4-remove").expect("ansible-playbook");
    must_pass(&run4, "site.yml removing ingress3", &hosts);
    assert!(dns.dig("A", "ingress3").unwrap().is_empty(), "ingress3's A record is gone");
    assert_eq!(dns.dig("A", "cloud").unwrap(), want_a, "A of {SITE} without ingress3");
    assert_eq!(dns.dig("A", "ingress-nodes").unwrap(), want_a, "A of the name listing every node");
    wait_until("the home's allowlist drops ingress3", Duration::from_secs(30), Duration::from_millis(500), || {
        let fw = allowlist(home)?;
        check(!fw.contains(&i3s), || format!("still there:\n{fw}"))
    })
    .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(!wan_connect(&t, Role::Ingress3), "ingress3 still reaches the home's WAN port");
    assert!(wan_connect(&t, Role::Ingress1), "ingress1 no longer reaches the home's WAN port");
    assert_eq!(
        mesh_trusted(home).expect("mesh.trusted_ingress"),
        ygg_of(&two),
        "mesh.trusted_ingress without ingress3"
    );
    assert_eq!(proxy_pid(home).expect("local-proxy pid"), pid_before, "the local proxy was restarted");
    phase(&format!("ingress3 removed in {:.1}s", run4.elapsed.as_secs_f64()));

    // 6. The home alone (`--limit home`): the ingress nodes are outside the run, so no play
    // read their Yggdrasil addresses; the role asks their routers (getSelf, delegated) and
    // renders the same mesh.trusted_ingress: nothing changes. With ingress2's router stopped
    // the run fails naming it, before the config is touched.
    let home_config = home.sh("cat /etc/local-proxy/local-proxy.toml", Duration::from_secs(10)).expect("config");
    let ingress_configs: Vec<String> = ["ingress1", "ingress2"]
        .iter()
        .map(|n| hosts[*n].sh("cat /etc/ingress/ingress.toml", Duration::from_secs(10)).expect("config"))
        .collect();
    // The two limited runs (below) side by side: they play on disjoint hosts (each only reads
    // the other side's router) and must change nothing, so neither can see the other's work;
    // one after the other they took ~9 s each. Their times in the RESULT line overlap.
    let (run5, run5b) = std::thread::scope(|s| {
        let home_run = s.spawn(|| ansible.run("site.yml", &["--limit", "home"], RUN_TIMEOUT, "site-5-limit-home"));
        let ingress_run = ansible.run("site.yml", &["--limit", "ingress"], RUN_TIMEOUT, "site-5b-limit-ingress");
        (home_run.join().expect("the --limit home run's thread"), ingress_run)
    });
    let (run5, run5b) = (run5.expect("ansible-playbook"), run5b.expect("ansible-playbook"));
    must_pass(&run5, "site.yml --limit home", &hosts);
    let recap = run5.recap();
    assert_eq!(recap.keys().collect::<Vec<_>>(), ["home"], "--limit home ran on {:?}", recap.keys());
    let changed = recap.get("home").and_then(|f| f.get("changed")).copied();
    assert_eq!(changed, Some(0), "--limit home: {:?}\nchanged tasks: {:#?}", recap.get("home"), run5.changed_tasks());
    assert_eq!(mesh_trusted(home).expect("mesh.trusted_ingress"), ygg_of(&two), "mesh.trusted_ingress, --limit home");
    // The ingress nodes alone (`--limit ingress`): the home is outside the run, so no play read
    // its Yggdrasil address; the ingress role asks the home's router and renders the same mesh
    // tier (before, the mesh line was left out: no fallback home with every WAN down).
    must_pass(&run5b, "site.yml --limit ingress", &hosts);
    let recap = run5b.recap();
    assert_eq!(recap.keys().collect::<Vec<_>>(), ["ingress1", "ingress2"], "--limit ingress ran on {:?}", recap.keys());
    for (n, before) in ["ingress1", "ingress2"].iter().zip(&ingress_configs) {
        let changed = recap.get(*n).and_then(|f| f.get("changed")).copied();
        assert_eq!(
            changed,
            Some(0),
            "--limit ingress on {n}: {:?}\nchanged: {:#?}",
            recap.get(*n),
            run5b.changed_tasks()
        );
        let after = hosts[*n].sh("cat /etc/ingress/ingress.toml", Duration::from_secs(10)).expect("config");
        assert_eq!(&after, before, "--limit ingress rewrote {n}'s config");
        assert!(after.contains(&format!("mesh = \"{mesh}\"")), "{n}'s mesh tier, --limit ingress:\n{after}");
    }
    phase(&format!(
        "--limit ingress: changed=0, the mesh tier read from the home's router ({:.1}s)",
        run5b.elapsed.as_secs_f64()
    ));
    hosts["ingress2"].sh("systemctl stop yggdrasil", Duration::from_secs(30)).expect("stopping ingress2's yggdrasil");
    let run6 = ansible
        .run("site.yml", &["--limit", "home"], RUN_TIMEOUT, "site-6-limit-home-ygg-down")
        .expect("ansible-playbook");
    assert!(!run6.ok, "--limit home passed with ingress2's yggdrasil stopped:\n{}", run6.tail(40));
    assert!(
        run6.text.contains("getSelf gave none") && run6.text.contains("for ingress2 ("),
        "--limit home with ingress2's yggdrasil stopped did not fail naming ingress2:\n{}",
        run6.tail(40)
    );
    assert_eq!(
        home.sh("cat /etc/local-proxy/local-proxy.toml", Duration::from_secs(10)).expect("config"),
        home_config,
        "the failed --limit home run changed the config"
    );
    phase(&format!(
        "--limit home: changed=0, mesh.trusted_ingress read from the nodes ({:.1}s); with ingress2's yggdrasil \
         stopped it fails naming ingress2 ({:.1}s)",
        run5.elapsed.as_secs_f64(),
        run6.elapsed.as_secs_f64()
    ));

    let off0 = Instant::now();
    drop(meshc);
    drop(hosts);
    let poweroff = off0.elapsed();
    drop(dns);
    drop(ctl);
    drop(t);
    common::report(&format!(
        "RESULT rollout rootfs_build_s={rootfs_s} boot_four_s={:.1} site1_bare_s={:.1} site2_unchanged_s={:.1} site3_add_s={:.1} site4_remove_s={:.1} limit_home_s={:.1} limit_ingress_s={:.1} limit_home_ygg_down_s={:.1} cut_requests={total} cut_failed=0 cut_in_flight_lost={split_lost} poweroff_s={:.1} total_s={:.1}",
        boot.as_secs_f64(),
        run1.elapsed.as_secs_f64(),
        run2.elapsed.as_secs_f64(),
        run3.elapsed.as_secs_f64(),
        run4.elapsed.as_secs_f64(),
        run5.elapsed.as_secs_f64(),
        run5b.elapsed.as_secs_f64(),
        run6.elapsed.as_secs_f64(),
        poweroff.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    ));
}
