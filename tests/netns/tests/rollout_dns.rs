//! The roll-out's own checks, without booting hosts (tests/rollout.rs does that):
//! - `ansible-lint --profile production` on `ansible/`: no violation;
//! - `ansible/dns.yml` against a real authoritative server (knotd in a namespace of its own,
//!   a TSIG key made by knot's `keymgr`, updates accepted only with that key), read back with
//!   `kdig`: A/AAAA of every published name = exactly the ingress nodes' addresses (+ the home's
//!   Yggdrasil AAAA, on the same name or on a separate one), each node's own name, the name
//!   listing every node; a second run changes nothing; `--check --diff` with a third node shows
//!   the change and changes nothing; the real run adds it; removing it removes its records; a
//!   wrong TSIG secret or key name fails, naming the variable, and changes nothing;
//! - `ansible/site.yml` with a missing required variable, an invalid WAN address, an invalid
//!   port: fails in the validation play, naming the variable, before any host is contacted
//!   (a valid inventory gets past it and fails only at the unreachable hosts).
//!
//! Everything runs inside namespaces this test makes (ansible-playbook too, with
//! `ip netns exec`): the only traffic is on their loopback.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Result};
use netns::cmd;
use netns::knot::ZONE;
use netns::netns::Netns;
use netns::rollout::{tsig_key, TsigDns};
use netns::tempdir::TempDir;
use netns::wait::check;
const TTL: u32 = 60;
const KEY: &str = "ansible-update";
const MESH: &str = "200:1111:2222:3333::7";
const PLAYBOOK_TIMEOUT: Duration = Duration::from_secs(300);

/// Tools these tests run, with their Debian package.
const TOOLS: &[(&str, &str)] = &[
    ("ansible-playbook", "ansible"),
    ("ansible-lint", "ansible-lint"),
    ("knotd", "knot"),
    ("keymgr", "knot"),
    ("kdig", "knot-dnsutils"),
    ("ip", "iproute2"),
    ("setpriv", "util-linux"),
];

fn on_path(tool: &str) -> bool {
    let dirs = std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect::<Vec<_>>()).unwrap_or_default();
    dirs.iter().chain([PathBuf::from("/usr/sbin")].iter()).any(|d| d.join(tool).is_file())
}

/// Fails (never skips) naming what is missing.
fn require() {
    let mut missing: Vec<String> =
        TOOLS.iter().filter(|(t, _)| !on_path(t)).map(|(t, p)| format!("`{t}` (package {p})")).collect();
    let uid = std::fs::read_to_string("/proc/self/status").ok().and_then(|s| {
        s.lines().find(|l| l.starts_with("Uid:")).and_then(|l| l.split_whitespace().nth(2)?.parse().ok())
    });
    if uid != Some(0u32) {
        missing.push("root (network namespaces)".into());
    }
    // ansible-playbook runs on Debian's python3; nsupdate and the role's reads need dnspython.
    if cmd::run(&["/usr/bin/python3", "-c", "import dns.tsigkeyring, dns.update"]).is_err() {
        missing.push("dnspython for /usr/bin/python3 (package python3-dnspython)".into());
    }
    assert!(missing.is_empty(), "rollout_dns needs: {} (tests/netns/deps.sh installs them)", missing.join(", "));
}

fn ansible_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../ansible").canonicalize().expect("ansible/ next to tests/")
}

/// Output of one ansible run.
struct Run {
    ok: bool,
    text: String,
}

impl Run {
    /// `changed=` per host from the PLAY RECAP.
    fn changed(&self) -> BTreeMap<String, u32> {
        self.recap("changed")
    }

    fn recap(&self, field: &str) -> BTreeMap<String, u32> {
        let mut out = BTreeMap::new();
        let Some(at) = self.text.rfind("PLAY RECAP") else { return out };
        for line in self.text[at..].lines().skip(1) {
            let mut words = line.split_whitespace();
            let Some(host) = words.next() else { continue };
            for w in words {
                if let Some(v) = w.strip_prefix(&format!("{field}=")) {
                    out.insert(host.to_string(), v.parse().unwrap_or(u32::MAX));
                }
            }
        }
        out
    }
}

/// `ansible-playbook` inside namespace `ns`, from `ansible/` (its ansible.cfg and plugins).
fn playbook(ns: &str, inventory: &Path, playbook: &str, extra: &[&str]) -> Result<Run> {
    let dir = ansible_dir();
    let inv = inventory.display().to_string();
    let mut argv = vec![
        "env",
        "ANSIBLE_NOCOLOR=1",
        "ANSIBLE_FORCE_COLOR=0",
        "ANSIBLE_HOST_KEY_CHECKING=0",
        "ANSIBLE_RETRY_FILES_ENABLED=0",
        "sh",
        "-c",
        "cd \"$0\" && exec ansible-playbook \"$@\"",
    ];
    let dir_s = dir.display().to_string();
    argv.push(&dir_s);
    argv.extend(["-i", &inv, playbook]);
    argv.extend_from_slice(extra);
    let out = cmd::exec(ns, &argv, PLAYBOOK_TIMEOUT)?;
    Ok(Run { ok: out.status.success(), text: format!("{}{}", out.stdout, out.stderr) })
}

/// knotd with TSIG in its own namespace (loopback only), serving [`ZONE`]; a record the
/// playbook does not manage (`mail`) must survive every run.
fn start_knot(tag: &str, dir: &Path) -> Result<TsigDns> {
    TsigDns::start(None, tag, dir, TTL, KEY, "mail IN A 192.0.2.99\n")
}

/// Every A/AAAA/TXT of the names this test may touch, for "nothing changed" checks.
fn snapshot(k: &TsigDns, names: &[&str]) -> Result<BTreeMap<String, BTreeSet<String>>> {
    let mut out = BTreeMap::new();
    for n in names {
        for t in ["A", "AAAA", "TXT"] {
            out.insert(format!("{n} {t}"), k.dig(t, n)?);
        }
    }
    Ok(out)
}

struct Node {
    host: &'static str,
    v4: &'static str,
    v6: &'static str,
}

const N1: Node = Node { host: "ingress-1", v4: "192.0.2.11", v6: "2001:db8:11::1" };
const N2: Node = Node { host: "ingress-2", v4: "192.0.2.19", v6: "2001:db8:19::1" };
const N3: Node = Node { host: "ingress-3", v4: "192.0.2.27", v6: "2001:db8:27::1" };

/// Every name the runs below may write (for snapshots).
const NAMES: &[&str] = &[
    "@",
    "cloud",
    "www",
    "ingress-1",
    "ingress-2",
    "ingress-3",
    "ingress-nodes",
    "cloud-ygg",
    "www-ygg",
    "ygg",
    "_lb-managed",
    "mail",
];

/// The inventory the DNS runs use: ingress nodes, the home with a given Yggdrasil address (no
/// yggdrasil needed), the knot server with the key.
fn dns_inventory(dir: &Path, nodes: &[&Node], secret: &str, key: &str) -> Result<PathBuf> {
    let inv = dir.join("inventory");
    std::fs::create_dir_all(&inv)?;
    let mut hosts = String::new();
    for n in nodes {
        hosts.push_str(&format!(
            "        {h}: {{ ansible_host: {v4}, ingress_public_addresses: [\"{v4}\", \"{v6}\"] }}\n",
            h = n.host,
            v4 = n.v4,
            v6 = n.v6
        ));
    }
    let text = format!(
        r#"all:
  vars:
    dns_zone: {ZONE}
  children:
    ingress:
      hosts:
{hosts}    local_proxy:
      hosts:
        home: {{ ansible_host: 10.99.0.10, yggdrasil_address: "{MESH}" }}
    dns:
      hosts:
        knot:
          ansible_host: 127.0.0.1
          dns_tsig_key_name: {key}
          dns_tsig_key_secret: "{secret}"
          dns_published_names: ["@", cloud, www]
          dns_ttl: {TTL}
"#
    );
    std::fs::write(inv.join("hosts.yml"), text)?;
    Ok(inv)
}

fn set(values: &[&str]) -> BTreeSet<String> {
    values.iter().map(|s| s.to_string()).collect()
}

/// The records dns.yml must leave for `nodes` (mesh AAAA on the published names).
fn expect_records(k: &TsigDns, nodes: &[&Node], mesh_same_name: bool) -> Result<()> {
    let v4: Vec<&str> = nodes.iter().map(|n| n.v4).collect();
    let v6: Vec<&str> = nodes.iter().map(|n| n.v6).collect();
    let mut v6_pub = v6.clone();
    if mesh_same_name {
        v6_pub.push(MESH);
    }
    for name in ["@", "cloud", "www"] {
        let a = k.dig("A", name)?;
        check(a == set(&v4), || format!("{name} A = {a:?}, want exactly {v4:?}"))?;
        let aaaa = k.dig("AAAA", name)?;
        check(aaaa == set(&v6_pub), || format!("{name} AAAA = {aaaa:?}, want exactly {v6_pub:?}"))?;
    }
    let a = k.dig("A", "ingress-nodes")?;
    check(a == set(&v4), || format!("ingress-nodes A = {a:?}, want {v4:?}"))?;
    for n in nodes {
        let a = k.dig("A", n.host)?;
        check(a == set(&[n.v4]), || format!("{} A = {a:?}, want {}", n.host, n.v4))?;
        let aaaa = k.dig("AAAA", n.host)?;
        check(aaaa == set(&[n.v6]), || format!("{} AAAA = {aaaa:?}, want {}", n.host, n.v6))?;
    }
    let mail = k.dig("A", "mail")?;
    check(mail == set(&["192.0.2.99"]), || format!("the unmanaged mail A changed: {mail:?}"))?;
    Ok(())
}

fn assert_changed_zero(run: &Run, what: &str) {
    assert!(run.ok, "{what}: the run failed:\n{}", run.text);
    let changed = run.changed();
    assert!(!changed.is_empty(), "{what}: no PLAY RECAP:\n{}", run.text);
    assert!(changed.values().all(|c| *c == 0), "{what}: changed {changed:?}, want 0 everywhere:\n{}", run.text);
}

#[test]
fn ansible_lint_production_profile() {
    require();
    let dir = ansible_dir();
    let dir_s = dir.display().to_string();
    // --offline: no galaxy (Debian's ansible bundles the pinned collections).
    let out = cmd::run_full(
        &[
            "env",
            "NO_COLOR=1",
            "sh",
            "-c",
            "cd \"$0\" && exec ansible-lint --offline --nocolor --profile production",
            &dir_s,
        ],
        None,
        Duration::from_secs(600),
    )
    .expect("running ansible-lint");
    let text = format!("{}{}", out.stdout, out.stderr);
    assert!(out.status.success(), "ansible-lint --profile production failed:\n{text}");
    assert!(text.contains("Passed with production profile: 0 failure(s), 0 warning(s)"), "ansible-lint:\n{text}");
    eprintln!("RESULT rollout_dns lint: {}", text.lines().last().unwrap_or_default());
}

#[test]
fn dns_records_against_knot() {
    require();
    let tag = netns::unique_tag();
    let tmp = TempDir::new(&tag).expect("temp dir");
    let k = start_knot(&tag, tmp.path()).expect("starting knotd");
    let ns = k.ns().to_string();
    let both = [&N1, &N2];
    let three = [&N1, &N2, &N3];

    // 1. First run: every record appears.
    let inv = dns_inventory(tmp.path(), &both, &k.secret, KEY).unwrap();
    let r = playbook(&ns, &inv, "dns.yml", &[]).unwrap();
    assert!(r.ok, "first dns.yml run failed:\n{}", r.text);
    assert!(r.changed().get("knot").copied().unwrap_or(0) > 0, "first run changed nothing:\n{}", r.text);
    expect_records(&k, &both, true).unwrap_or_else(|e| panic!("after the first run: {e:#}\n{}", r.text));
    let reg = k.dig("TXT", "_lb-managed").unwrap();
    assert_eq!(reg, set(&["@", "cloud", "www", "ingress-1", "ingress-2", "ingress-nodes"]), "registry");

    // 2. Again: nothing to do.
    let r = playbook(&ns, &inv, "dns.yml", &[]).unwrap();
    assert_changed_zero(&r, "second run");

    // 3. A third node, --check --diff: the change is shown, nothing changes.
    let before = snapshot(&k, NAMES).unwrap();
    let inv = dns_inventory(tmp.path(), &three, &k.secret, KEY).unwrap();
    let r = playbook(&ns, &inv, "dns.yml", &["--check", "--diff"]).unwrap();
    assert!(r.ok, "--check --diff failed:\n{}", r.text);
    for line in [
        format!("cloud.{ZONE}. A: [192.0.2.11 192.0.2.19] -> [192.0.2.11 192.0.2.19 192.0.2.27]"),
        format!("ingress-3.{ZONE}. A: [] -> [192.0.2.27]"),
        format!("ingress-3.{ZONE}. AAAA: [] -> [2001:db8:27::1]"),
    ] {
        assert!(r.text.contains(&line), "--check --diff does not show `{line}`:\n{}", r.text);
    }
    assert!(r.changed().get("knot").copied().unwrap_or(0) > 0, "--check reports no change:\n{}", r.text);
    assert_eq!(snapshot(&k, NAMES).unwrap(), before, "--check changed the zone");

    // 4. For real: the third node's records appear; then nothing to do.
    let r = playbook(&ns, &inv, "dns.yml", &[]).unwrap();
    assert!(r.ok, "run with ingress-3 failed:\n{}", r.text);
    expect_records(&k, &three, true).unwrap_or_else(|e| panic!("with ingress-3: {e:#}\n{}", r.text));
    assert_changed_zero(&playbook(&ns, &inv, "dns.yml", &[]).unwrap(), "run after adding ingress-3");

    // 5. The mesh AAAA on separate names, then back: the separate names go again.
    let r = playbook(&ns, &inv, "dns.yml", &["-e", "dns_mesh_records=separate"]).unwrap();
    assert!(r.ok, "separate mesh names failed:\n{}", r.text);
    expect_records(&k, &three, false).unwrap_or_else(|e| panic!("separate mesh names: {e:#}\n{}", r.text));
    for name in ["cloud-ygg", "www-ygg", "ygg"] {
        assert_eq!(k.dig("AAAA", name).unwrap(), set(&[MESH]), "{name} AAAA");
        assert!(k.dig("A", name).unwrap().is_empty(), "{name} has an A record");
    }
    let r = playbook(&ns, &inv, "dns.yml", &[]).unwrap();
    assert!(r.ok, "back to same_name failed:\n{}", r.text);
    expect_records(&k, &three, true).unwrap_or_else(|e| panic!("back to same_name: {e:#}\n{}", r.text));
    for name in ["cloud-ygg", "www-ygg", "ygg"] {
        assert!(k.dig("AAAA", name).unwrap().is_empty(), "{name} AAAA left behind");
    }

    // 6. ingress-3 leaves the inventory: its records go, everywhere.
    let inv = dns_inventory(tmp.path(), &both, &k.secret, KEY).unwrap();
    let r = playbook(&ns, &inv, "dns.yml", &[]).unwrap();
    assert!(r.ok, "run without ingress-3 failed:\n{}", r.text);
    expect_records(&k, &both, true).unwrap_or_else(|e| panic!("after removing ingress-3: {e:#}\n{}", r.text));
    for t in ["A", "AAAA"] {
        assert!(k.dig(t, "ingress-3").unwrap().is_empty(), "ingress-3 {t} left behind");
    }
    assert!(!k.dig("TXT", "_lb-managed").unwrap().contains("ingress-3"), "registry still lists ingress-3");
    assert_changed_zero(&playbook(&ns, &inv, "dns.yml", &[]).unwrap(), "run after removing ingress-3");

    // 7. A wrong TSIG secret, and an unknown key name, with a change pending: the play fails
    //    clearly and the zone is as it was.
    let before = snapshot(&k, NAMES).unwrap();
    let (wrong_secret, _) = tsig_key(KEY).unwrap();
    let inv = dns_inventory(tmp.path(), &three, &wrong_secret, KEY).unwrap();
    let r = playbook(&ns, &inv, "dns.yml", &[]).unwrap();
    assert!(!r.ok, "a wrong TSIG secret did not fail:\n{}", r.text);
    assert!(r.text.contains("BADSIG") && r.text.contains("dns_tsig_key_secret"), "unclear failure:\n{}", r.text);
    assert_eq!(snapshot(&k, NAMES).unwrap(), before, "a wrong TSIG secret changed the zone");
    let inv = dns_inventory(tmp.path(), &three, &k.secret, "no-such-key").unwrap();
    let r = playbook(&ns, &inv, "dns.yml", &[]).unwrap();
    assert!(!r.ok, "an unknown TSIG key did not fail:\n{}", r.text);
    assert!(r.text.contains("BADKEY") && r.text.contains("dns_tsig_key_name"), "unclear failure:\n{}", r.text);
    assert_eq!(snapshot(&k, NAMES).unwrap(), before, "an unknown TSIG key changed the zone");

    // 8. The apex leaves dns_published_names, with the zone written with its final dot: its
    //    records go (the stale names were looked up as `@.zone.`, and the apex kept them).
    let inv = dns_inventory(tmp.path(), &both, &k.secret, KEY).unwrap();
    let vars = format!(r#"{{"dns_published_names": ["cloud", "www"], "dns_zone": "{ZONE}."}}"#);
    let r = playbook(&ns, &inv, "dns.yml", &["-e", &vars]).unwrap();
    assert!(r.ok, "run without the apex failed:\n{}", r.text);
    for t in ["A", "AAAA"] {
        let left = k.dig(t, "@").unwrap();
        assert!(left.is_empty(), "the apex's {t} left behind: {left:?}\n{}", r.text);
    }
    assert_eq!(k.dig("A", "cloud").unwrap(), set(&[N1.v4, N2.v4]), "cloud A");
    assert!(!k.dig("TXT", "_lb-managed").unwrap().contains("@"), "registry still lists the apex");
    assert_changed_zero(&playbook(&ns, &inv, "dns.yml", &["-e", &vars]).unwrap(), "run after removing the apex");
    eprintln!("RESULT rollout_dns knot: add/--check/remove/separate-mesh/wrong-key/apex all as expected");
}

/// An inventory for site.yml whose hosts cannot be reached (the namespace has only `lo`):
/// a run that gets past validation fails at the first host task as UNREACHABLE.
fn site_inventory(dir: &Path, case: &str, edit: impl Fn(&mut serde_json::Value)) -> Result<PathBuf> {
    let inv = dir.join(format!("site-{case}"));
    std::fs::create_dir_all(&inv)?;
    // Only the path check of the validation play looks at these files; no host is reached.
    let debs = dir.join("debs");
    std::fs::create_dir_all(&debs)?;
    for f in ["ingress_0.0.1-1_amd64.deb", "local-proxy_0.0.1-1_amd64.deb"] {
        std::fs::write(debs.join(f), b"")?;
    }
    let mut v = serde_json::json!({
        "all": {
            "vars": {
                "dns_zone": ZONE,
                "ansible_ssh_common_args": "-o ConnectTimeout=3",
                "ingress_deb_dir": debs.display().to_string(),
                "local_proxy_deb_dir": debs.display().to_string(),
                "home_wans": [
                    { "name": "wan1", "address": "203.0.113.10", "weight": 3, "interface": "wan1", "gateway": "203.0.113.1" },
                    { "name": "wan2", "address": "198.51.100.7", "weight": 1, "interface": "wan2", "gateway": "198.51.100.1" }
                ]
            },
            "children": {
                "ingress": { "hosts": {
                    "ingress-1": { "ansible_host": "192.0.2.11", "ingress_public_addresses": ["192.0.2.11"] },
                    "ingress-2": { "ansible_host": "192.0.2.19", "ingress_public_addresses": ["192.0.2.19", "2001:db8:19::1"] }
                }},
                "local_proxy": { "hosts": {
                    "home": {
                        "ansible_host": "10.99.0.10",
                        "local_proxy_streams": [
                            { "name": "wazuh-agents", "listen": "1514/udp", "upstream": "10.77.0.2:1514", "transparent": true }
                        ]
                    }
                }},
                "dns": { "hosts": {
                    "knot": {
                        "ansible_host": "192.0.2.42",
                        "dns_tsig_key_name": KEY,
                        "dns_tsig_key_secret": "c2VjcmV0c2VjcmV0c2VjcmV0",
                        "dns_published_names": ["@", "cloud"]
                    }
                }}
            }
        }
    });
    edit(&mut v);
    // JSON is YAML.
    std::fs::write(inv.join("hosts.yml"), serde_json::to_string_pretty(&v)?)?;
    Ok(inv)
}

/// A change to the valid inventory that makes it bad.
type Edit = Box<dyn Fn(&mut serde_json::Value)>;

/// Runs site.yml and checks it failed in the validation play with every `needles` in the output.
fn expect_rejected(ns: &str, inv: &Path, case: &str, needles: &[&str]) -> Result<()> {
    let r = playbook(ns, inv, "site.yml", &[])?;
    if r.ok {
        bail!("{case}: site.yml succeeded:\n{}", r.text);
    }
    for n in needles {
        if !r.text.contains(n) {
            bail!("{case}: the failure does not say `{n}`:\n{}", r.text);
        }
    }
    if r.text.contains("UNREACHABLE") || r.text.contains("PLAY [Yggdrasil on every node]") {
        bail!("{case}: a host play started before the validation failed:\n{}", r.text);
    }
    let unreachable = r.recap("unreachable");
    if unreachable.values().any(|u| *u != 0) {
        bail!("{case}: hosts were contacted: {unreachable:?}\n{}", r.text);
    }
    Ok(())
}

#[test]
fn site_rejects_bad_input_before_any_host() {
    require();
    let tag = netns::unique_tag();
    let tmp = TempDir::new(&tag).expect("temp dir");
    // Only loopback in here: no host of the inventory can be reached, nothing leaves.
    let ns = Netns::new(&format!("{tag}-ctl")).expect("namespace");

    // A valid inventory passes validation and fails only when the hosts are contacted.
    let inv = site_inventory(tmp.path(), "valid", |_| {}).unwrap();
    let r = playbook(ns.name(), &inv, "site.yml", &[]).unwrap();
    assert!(!r.ok, "site.yml against unreachable hosts succeeded?\n{}", r.text);
    assert!(
        r.text.contains("PLAY [Yggdrasil on every node]") && r.text.contains("UNREACHABLE"),
        "a valid inventory did not get past validation:\n{}",
        r.text
    );

    let cases: Vec<(&str, Edit, Vec<&str>)> = vec![
        (
            "missing ingress_public_addresses",
            Box::new(|v| {
                v["all"]["children"]["ingress"]["hosts"]["ingress-2"]
                    .as_object_mut()
                    .unwrap()
                    .remove("ingress_public_addresses");
            }),
            vec!["ingress_public_addresses of ingress-2 is required"],
        ),
        (
            "missing dns_zone",
            Box::new(|v| {
                v["all"]["vars"].as_object_mut().unwrap().remove("dns_zone");
            }),
            vec!["dns_zone is required"],
        ),
        (
            "missing home_wans",
            Box::new(|v| {
                v["all"]["vars"].as_object_mut().unwrap().remove("home_wans");
            }),
            vec!["home_wans is required"],
        ),
        (
            "missing TSIG secret",
            Box::new(|v| {
                v["all"]["children"]["dns"]["hosts"]["knot"].as_object_mut().unwrap().remove("dns_tsig_key_secret");
            }),
            vec!["dns_tsig_key_secret is required"],
        ),
        (
            "invalid WAN address",
            Box::new(|v| v["all"]["vars"]["home_wans"][1]["address"] = "198.51.100.300".into()),
            vec!["home_wans[1] (wan2)", "address must be an IPv4 or IPv6 address (got 198.51.100.300)"],
        ),
        (
            "WAN name with a slash",
            Box::new(|v| v["all"]["vars"]["home_wans"][1]["name"] = "wan/2".into()),
            vec!["home_wans[1] (wan/2): name must be a label", "(got wan/2)"],
        ),
        (
            "invalid WAN gateway",
            Box::new(|v| v["all"]["vars"]["home_wans"][0]["gateway"] = "2001:db8::1".into()),
            vec!["home_wans[0] (wan1) on home", "gateway must be an address of the same family"],
        ),
        (
            "invalid mesh inbound port",
            Box::new(|v| v["all"]["vars"]["yggdrasil_inbound_allow"] = serde_json::json!(["22/tcp", "70000/udp"])),
            vec!["yggdrasil_inbound_allow of", "(got ['22/tcp', '70000/udp']", "'70000': ports are 1..65535"],
        ),
        (
            "mesh inbound range downwards",
            Box::new(|v| v["all"]["vars"]["yggdrasil_inbound_allow"] = serde_json::json!(["2000-1000/udp"])),
            vec!["yggdrasil_inbound_allow of", "'2000-1000': the range runs backwards"],
        ),
        (
            "ansible over the filtered mesh",
            Box::new(|v| v["all"]["children"]["ingress"]["hosts"]["ingress-1"]["ansible_host"] = "201:1111::1".into()),
            vec![
                "ingress-1 is reached at a Yggdrasil address (201:1111::1)",
                "22/tcp",
                "to its yggdrasil_inbound_allow",
            ],
        ),
        (
            "invalid ingress address",
            Box::new(|v| {
                v["all"]["children"]["ingress"]["hosts"]["ingress-1"]["ingress_public_addresses"] =
                    serde_json::json!(["192.0.2.1111"])
            }),
            vec!["ingress_public_addresses of ingress-1"],
        ),
        (
            "invalid service port",
            Box::new(|v| {
                v["all"]["vars"]["ingress_services"] =
                    serde_json::json!([{ "name": "web", "ports": ["80"] }, { "name": "odd", "ports": ["70000"] }])
            }),
            vec!["ingress_services[1] (odd)", "ports are 1..65535"],
        ),
        (
            "invalid port range",
            Box::new(|v| {
                v["all"]["vars"]["ingress_services"] =
                    serde_json::json!([{ "name": "relay", "ports": ["49200-49160"], "protocol": "udp" }])
            }),
            vec!["ingress_services[0] (relay)", "the range runs backwards"],
        ),
        (
            "invalid stream listen port",
            Box::new(|v| {
                v["all"]["children"]["local_proxy"]["hosts"]["home"]["local_proxy_streams"][0]["listen"] =
                    "0/udp".into()
            }),
            vec!["local_proxy_streams[0] (wazuh-agents)", "ports are 1..65535"],
        ),
        (
            "invalid WAN weight",
            Box::new(|v| v["all"]["vars"]["home_wans"][0]["weight"] = 0.into()),
            vec!["home_wans[0] (wan1)", "weight must be 1..1000 (got 0)"],
        ),
    ];
    // Each case is one ansible-playbook start (~1.5 s of Python, failing before any host):
    // three at a time, each on its own inventory, instead of one after the other.
    let runs: Vec<(&str, PathBuf, &Vec<&str>)> = cases
        .iter()
        .map(|(case, edit, needles)| {
            (*case, site_inventory(tmp.path(), &case.replace(' ', "-"), edit).unwrap(), needles)
        })
        .collect();
    let ns_name = ns.name();
    let mut failures = Vec::new();
    for chunk in runs.chunks(3) {
        std::thread::scope(|s| {
            let handles: Vec<_> = chunk
                .iter()
                .map(|(case, inv, needles)| s.spawn(move || expect_rejected(ns_name, inv, case, needles)))
                .collect();
            for (h, (case, _, _)) in handles.into_iter().zip(chunk) {
                match h.join() {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => failures.push(format!("{e:#}")),
                    Err(_) => failures.push(format!("{case}: the thread running it panicked")),
                }
            }
        });
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    eprintln!("RESULT rollout_dns bad input: {} cases rejected in the validation play, no host contacted", cases.len());
}
