//! Pieces of the roll-out test (`tests/rollout.rs`): the zone's authoritative server taking
//! TSIG-signed RFC 2136 updates (Debian's `knotd`, in a namespace of its own on the topology's
//! router, at [`crate::knot::DNS`]), `ansible-playbook` runs from the controller namespace, and
//! the PLAY RECAP read back per host.
//!
//! ```text
//!  dns 192.0.2.42/29 ── r-dns 192.0.2.41 (inet router)     knotd: zone lbt.test, key-signed updates
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::cmd;
use crate::knot::{DNS, DNS_GW, ZONE};
use crate::netns::Netns;
use crate::proc_guard::Proc;
use crate::wait::{check, wait_until};

/// The TSIG key's name (the secret is made per run by knot's `keymgr`).
pub const TSIG_KEY: &str = "rollout-update";

/// Tools the roll-out test runs besides the harness's, with their Debian package.
pub const TOOLS: &[(&str, &str)] = &[
    ("ansible-playbook", "ansible"),
    ("knotd", "knot"),
    ("keymgr", "knot"),
    ("kdig", "knot-dnsutils"),
    ("curl", "curl"),
    ("openssl", "openssl"),
];

fn on_path(tool: &str) -> bool {
    let dirs = std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect::<Vec<_>>()).unwrap_or_default();
    dirs.iter().chain([PathBuf::from("/usr/sbin")].iter()).any(|d| d.join(tool).is_file())
}

/// Errors naming what is missing (tests fail, never skip).
pub fn require() -> Result<()> {
    let mut missing: Vec<String> =
        TOOLS.iter().filter(|(t, _)| !on_path(t)).map(|(t, p)| format!("`{t}` (package {p})")).collect();
    // The dns role's reads and community.general.nsupdate run on the controller's python3.
    if cmd::run(&["/usr/bin/python3", "-c", "import dns.tsigkeyring, dns.update"]).is_err() {
        missing.push("dnspython for /usr/bin/python3 (package python3-dnspython)".into());
    }
    if !missing.is_empty() {
        bail!("the roll-out test needs: {}; install with: sudo tests/netns/deps.sh", missing.join(", "));
    }
    Ok(())
}

/// knotd serving [`ZONE`], taking updates signed with [`TSIG_KEY`] from anywhere in the
/// topology. Stopped on drop, then its namespace goes.
#[derive(Debug)]
pub struct TsigDns {
    proc: Option<Proc>,
    ns: Netns,
    /// The key's base64 secret.
    pub secret: String,
}

impl TsigDns {
    /// Starts it in `<tag>-dns`, linked to `router_ns` (at [`DNS`]) or, with `None`, on its
    /// own loopback only, with a zone holding SOA, NS, `extra_records` and `ttl`, taking
    /// updates signed with the key named `key`.
    pub fn start(
        router_ns: Option<&str>,
        tag: &str,
        dir: &Path,
        ttl: u32,
        key: &str,
        extra_records: &str,
    ) -> Result<Self> {
        let ns = Netns::new(&format!("{tag}-dns"))?;
        let name = ns.name().to_string();
        if let Some(router_ns) = router_ns {
            cmd::ip(
                &name,
                &["link", "add", "name", "eth0", "type", "veth", "peer", "name", "r-dns", "netns", router_ns],
            )
            .context("linking the DNS namespace to the router")?;
            cmd::ip(&name, &["addr", "add", &format!("{DNS}/29"), "dev", "eth0"])?;
            cmd::ip(router_ns, &["addr", "add", &format!("{DNS_GW}/29"), "dev", "r-dns"])?;
            cmd::ip(&name, &["link", "set", "eth0", "up"])?;
            cmd::ip(router_ns, &["link", "set", "r-dns", "up"])?;
            cmd::ip(&name, &["route", "add", "default", "via", &DNS_GW.to_string()])?;
        }
        let listen =
            if router_ns.is_some() { format!("{DNS}@53, 127.0.0.1@53") } else { "127.0.0.1@53, ::1@53".into() };
        let ns_addr = if router_ns.is_some() { DNS.to_string() } else { "127.0.0.1".into() };
        let (secret, key_yaml) = tsig_key(key)?;
        let d = dir.join("knot");
        for sub in ["db", "zones", "run"] {
            std::fs::create_dir_all(d.join(sub))?;
        }
        let dd = d.display();
        let conf = format!(
            r#"server:
    rundir: "{dd}/run"
    pidfile: "{dd}/run/knot.pid"
    listen: [ {listen} ]

database:
    storage: "{dd}/db"

log:
  - target: stderr
    any: info

{key_yaml}

acl:
  - id: updates_with_the_key
    key: {key}
    action: update

template:
  - id: default
    storage: "{dd}/zones"
    semantic-checks: off
    zonefile-sync: 0
    zonefile-load: whole
    journal-content: none

zone:
  - domain: {ZONE}.
    file: "{ZONE}.zone"
    acl: updates_with_the_key
"#
        );
        std::fs::write(d.join("knot.conf"), conf)?;
        let zone = format!(
            "$ORIGIN {ZONE}.\n$TTL {ttl}\n@ IN SOA ns.{ZONE}. hostmaster.{ZONE}. 1 60 60 3600 {ttl}\n@ IN NS ns.{ZONE}.\nns IN A {ns_addr}\n{extra_records}"
        );
        std::fs::write(d.join("zones").join(format!("{ZONE}.zone")), zone)?;
        let conf_path = d.join("knot.conf").display().to_string();
        let proc = Proc::spawn(ns.name(), "knotd", &["knotd", "-c", &conf_path], &d)?;
        let mut k = Self { proc: Some(proc), ns, secret };
        wait_until("knotd answering", Duration::from_secs(10), Duration::from_millis(50), || {
            if let Some(p) = k.proc.as_mut() {
                p.ensure_running()?;
            }
            let soa = k.dig("SOA", ZONE)?;
            check(!soa.is_empty(), || "no SOA yet".into())
        })?;
        Ok(k)
    }

    pub fn ns(&self) -> &str {
        self.ns.name()
    }

    /// `kdig +short` for `name` (relative to the zone, "@" = apex, or a full name ending in
    /// the zone).
    pub fn dig(&self, rtype: &str, name: &str) -> Result<BTreeSet<String>> {
        let n = name.trim_end_matches('.');
        let fqdn = if n == "@" {
            format!("{ZONE}.")
        } else if n == ZONE || n.ends_with(&format!(".{ZONE}")) {
            format!("{n}.")
        } else {
            format!("{n}.{ZONE}.")
        };
        let out = cmd::exec_ok(
            self.ns(),
            &["kdig", "@127.0.0.1", "+short", "+time=2", "+retry=1", &fqdn, rtype],
            Duration::from_secs(10),
        )?;
        Ok(out.lines().map(|l| l.trim().trim_matches('"').to_string()).filter(|l| !l.is_empty()).collect())
    }

    /// knotd's log so far.
    pub fn log(&self) -> String {
        self.proc.as_ref().map(|p| p.stderr()).unwrap_or_default()
    }
}

impl Drop for TsigDns {
    fn drop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            if std::thread::panicking() {
                eprintln!("knotd log:\n{}", p.tail(30));
            }
            let _ = p.stop();
        }
    }
}

/// A new TSIG key named `name` from knot's `keymgr`: its base64 secret and the `key:`
/// section for knot.conf.
pub fn tsig_key(name: &str) -> Result<(String, String)> {
    let out = cmd::run(&["keymgr", "-t", name, "hmac-sha256"]).context("making the TSIG key")?;
    let secret = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("secret:"))
        .map(|s| s.trim().to_string())
        .context("keymgr printed no secret")?;
    let yaml = out.lines().filter(|l| !l.starts_with('#')).collect::<Vec<_>>().join("\n");
    Ok((secret, yaml))
}

/// One `ansible-playbook` run.
#[derive(Debug)]
pub struct PlaybookRun {
    pub ok: bool,
    /// stdout and stderr.
    pub text: String,
    pub elapsed: Duration,
    /// Where the output was saved.
    pub log: PathBuf,
}

impl PlaybookRun {
    /// The PLAY RECAP: host → (field → count), e.g. `changed`, `failed`, `unreachable`.
    pub fn recap(&self) -> BTreeMap<String, BTreeMap<String, u32>> {
        parse_recap(&self.text)
    }

    /// The last `n` lines of the output.
    pub fn tail(&self, n: usize) -> String {
        let lines: Vec<&str> = self.text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Names of the tasks that reported `changed:` (for a readable failure of a "changed=0" check).
    pub fn changed_tasks(&self) -> Vec<String> {
        let mut task = String::new();
        let mut out = Vec::new();
        for l in self.text.lines() {
            if let Some(t) = l.strip_prefix("TASK [").or_else(|| l.strip_prefix("RUNNING HANDLER [")) {
                task = t.split(']').next().unwrap_or("").to_string();
            } else if l.starts_with("changed:") {
                out.push(format!("{task}: {l}"));
            }
        }
        out
    }
}

/// Parses the PLAY RECAP block of an ansible-playbook output.
pub fn parse_recap(text: &str) -> BTreeMap<String, BTreeMap<String, u32>> {
    let mut out = BTreeMap::new();
    let Some(at) = text.rfind("PLAY RECAP") else { return out };
    for line in text[at..].lines().skip(1) {
        let Some((host, rest)) = line.split_once(" : ") else { continue };
        let fields: BTreeMap<String, u32> = rest
            .split_whitespace()
            .filter_map(|w| w.split_once('='))
            .map(|(k, v)| (k.to_string(), v.parse().unwrap_or(u32::MAX)))
            .collect();
        if !fields.is_empty() {
            out.insert(host.trim().to_string(), fields);
        }
    }
    out
}

/// Where and how `ansible-playbook` runs: inside namespace `ns`, from `dir` (the repository's
/// `ansible/`: its ansible.cfg, roles and plugins), against `inventory`, logs in `logdir`.
#[derive(Debug, Clone)]
pub struct Ansible {
    pub ns: String,
    pub dir: PathBuf,
    pub inventory: PathBuf,
    pub logdir: PathBuf,
}

impl Ansible {
    /// Runs `ansible-playbook -i <inventory> <playbook> <extra>`, bounded by `timeout`; the
    /// output is also saved as `<logdir>/<label>.log`.
    pub fn run(&self, playbook: &str, extra: &[&str], timeout: Duration, label: &str) -> Result<PlaybookRun> {
        let dir_s = self.dir.display().to_string();
        let inv = self.inventory.display().to_string();
        let local_tmp_env = format!("ANSIBLE_LOCAL_TEMP={}", self.logdir.join("ansible-tmp").display());
        let mut argv = vec![
            "env",
            "ANSIBLE_NOCOLOR=1",
            "ANSIBLE_FORCE_COLOR=0",
            "ANSIBLE_HOST_KEY_CHECKING=0",
            "ANSIBLE_RETRY_FILES_ENABLED=0",
            &local_tmp_env,
            "sh",
            "-c",
            "cd \"$0\" && exec ansible-playbook \"$@\"",
            &dir_s,
            "-i",
            &inv,
            playbook,
        ];
        argv.extend_from_slice(extra);
        let start = Instant::now();
        let out = cmd::exec(&self.ns, &argv, timeout)?;
        let text = format!("{}{}", out.stdout, out.stderr);
        let log = self.logdir.join(format!("{label}.log"));
        std::fs::write(&log, &text).with_context(|| format!("writing {}", log.display()))?;
        Ok(PlaybookRun { ok: out.status.success(), text, elapsed: start.elapsed(), log })
    }
}

#[cfg(test)]
mod tests {
    use super::parse_recap;

    #[test]
    fn recap_per_host() {
        let text = "PLAY [x]\n\nPLAY RECAP *********\n\
                    home                       : ok=40   changed=0    unreachable=0    failed=0    skipped=3    rescued=0    ignored=0   \n\
                    ingress1                   : ok=30   changed=2    unreachable=0    failed=1    skipped=1    rescued=0    ignored=0   \n\n";
        let r = parse_recap(text);
        assert_eq!(r.len(), 2);
        assert_eq!(r["home"]["changed"], 0);
        assert_eq!(r["ingress1"]["changed"], 2);
        assert_eq!(r["ingress1"]["failed"], 1);
    }
}
