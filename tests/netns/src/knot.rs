//! A real authoritative DNS server for the firewall tests: Debian's `knotd` in a namespace of its
//! own, linked to the topology's router, serving one zone with short TTLs and accepting RFC 2136
//! dynamic updates (`knsupdate`) from inside its namespace. Updates are written back to the zone
//! file at once, so a stopped and restarted server still has them.
//!
//! ```text
//!  dns 192.0.2.42/29 ── r-dns 192.0.2.41 (inet router)
//! ```

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::cmd;
use crate::netns::Netns;
use crate::proc_guard::Proc;
use crate::wait::{check, wait_until};

/// The server's address (a /29 of its own on the router).
pub const DNS: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 42);
pub const DNS_GW: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 41);
/// The zone served (`.test` is reserved for testing, RFC 6761).
pub const ZONE: &str = "lbt.test";

/// Tools this module runs, with their Debian package.
pub const TOOLS: &[(&str, &str)] = &[("knotd", "knot"), ("knsupdate", "knot-dnsutils"), ("kdig", "knot-dnsutils")];

fn on_path(tool: &str) -> bool {
    let dirs = std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect::<Vec<_>>()).unwrap_or_default();
    dirs.iter().chain([PathBuf::from("/usr/sbin")].iter()).any(|d| d.join(tool).is_file())
}

/// Errors naming each missing tool and its package (tests fail, never skip).
pub fn require() -> Result<()> {
    let missing: Vec<String> =
        TOOLS.iter().filter(|(t, _)| !on_path(t)).map(|(t, p)| format!("`{t}` (package {p})")).collect();
    if !missing.is_empty() {
        bail!("the DNS server for the firewall tests needs: {}", missing.join(", "));
    }
    Ok(())
}

/// The running server; on drop knotd is stopped and the namespace deleted.
#[derive(Debug)]
pub struct Knot {
    proc: Option<Proc>,
    dir: PathBuf,
    ttl: u32,
    ns: Netns,
}

impl Knot {
    /// Starts knotd in a new namespace `<tag>-dns` linked to `router_ns`, serving `records`
    /// (names relative to [`ZONE`]) with `ttl` seconds, and waits until it answers.
    pub fn start(router_ns: &str, tag: &str, dir: &Path, ttl: u32, records: &[(&str, IpAddr)]) -> Result<Self> {
        require()?;
        let ns = Netns::new(&format!("{tag}-dns"))?;
        let name = ns.name().to_string();
        cmd::ip(&name, &["link", "add", "name", "eth0", "type", "veth", "peer", "name", "r-dns", "netns", router_ns])
            .context("linking the DNS namespace to the router")?;
        cmd::ip(&name, &["addr", "add", &format!("{DNS}/29"), "dev", "eth0"])?;
        cmd::ip(router_ns, &["addr", "add", &format!("{DNS_GW}/29"), "dev", "r-dns"])?;
        cmd::ip(&name, &["link", "set", "eth0", "up"])?;
        cmd::ip(router_ns, &["link", "set", "r-dns", "up"])?;
        cmd::ip(&name, &["route", "add", "default", "via", &DNS_GW.to_string()])?;

        let dir = dir.join("knot");
        for sub in ["db", "zones", "run"] {
            std::fs::create_dir_all(dir.join(sub)).with_context(|| format!("creating {}", dir.join(sub).display()))?;
        }
        std::fs::write(dir.join("knot.conf"), config(&dir)).context("writing knot.conf")?;
        std::fs::write(dir.join("zones").join(format!("{ZONE}.zone")), zone(ttl, records))
            .context("writing the zone file")?;
        let mut k = Self { proc: None, dir, ttl, ns };
        k.run().context("starting knotd")?;
        Ok(k)
    }

    /// The namespace's name.
    pub fn ns(&self) -> &str {
        self.ns.name()
    }

    /// The records' TTL.
    pub fn ttl(&self) -> Duration {
        Duration::from_secs(u64::from(self.ttl))
    }

    /// Starts knotd (again) and waits until it answers for the zone.
    pub fn run(&mut self) -> Result<()> {
        if self.proc.is_some() {
            bail!("knotd already runs");
        }
        let conf = self.dir.join("knot.conf").display().to_string();
        let p = Proc::spawn(self.ns.name(), "knotd", &["knotd", "-c", &conf], &self.dir)?;
        self.proc = Some(p);
        wait_until("knotd answering", Duration::from_secs(10), Duration::from_millis(50), || {
            if let Some(p) = self.proc.as_mut() {
                p.ensure_running()?;
            }
            let soa = self.dig("SOA", ZONE)?;
            check(!soa.is_empty(), || "no SOA yet".into())
        })
    }

    /// Stops knotd (SIGTERM, then SIGKILL); the namespace stays, so queries go unanswered.
    pub fn stop(&mut self) -> Result<()> {
        if let Some(mut p) = self.proc.take() {
            p.stop()?;
        }
        Ok(())
    }

    /// `kdig +short` inside the server's namespace.
    pub fn dig(&self, rtype: &str, name: &str) -> Result<Vec<String>> {
        let fqdn = if name.ends_with('.') { name.to_string() } else { format!("{name}.") };
        let out = cmd::exec_ok(
            self.ns.name(),
            &["kdig", "@127.0.0.1", "+short", "+time=1", "+retry=0", &fqdn, rtype],
            Duration::from_secs(5),
        )?;
        Ok(out.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_string).collect())
    }

    /// Replaces every A/AAAA record of `name` (relative to the zone) with `addrs` in one dynamic
    /// update (`knsupdate`), and waits until the server answers with them.
    pub fn set(&self, name: &str, addrs: &[IpAddr]) -> Result<()> {
        let fqdn = format!("{name}.{ZONE}.");
        let mut script =
            format!("server 127.0.0.1 53\nzone {ZONE}.\nupdate delete {fqdn} A\nupdate delete {fqdn} AAAA\n");
        for a in addrs {
            let rtype = if a.is_ipv4() { "A" } else { "AAAA" };
            let _ = writeln!(script, "update add {fqdn} {} {rtype} {a}", self.ttl);
        }
        script.push_str("send\n");
        cmd::run_stdin(&["ip", "netns", "exec", self.ns.name(), "knsupdate"], Some(&script)).context("knsupdate")?;
        let want: Vec<String> = addrs.iter().filter(|a| a.is_ipv4()).map(|a| a.to_string()).collect();
        wait_until(&format!("{fqdn} updated"), Duration::from_secs(5), Duration::from_millis(20), || {
            let mut got = self.dig("A", &fqdn)?;
            got.sort();
            let mut w = want.clone();
            w.sort();
            check(got == w, || format!("A {got:?}, want {w:?}"))
        })
    }

    /// knotd's log so far.
    pub fn log(&self) -> String {
        self.proc.as_ref().map(|p| p.stderr()).unwrap_or_default()
    }
}

impl Drop for Knot {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

fn config(dir: &Path) -> String {
    let d = dir.display();
    format!(
        r#"server:
    rundir: "{d}/run"
    pidfile: "{d}/run/knot.pid"
    listen: [ {DNS}@53, 127.0.0.1@53 ]

database:
    storage: "{d}/db"

log:
  - target: stderr
    any: info

acl:
  - id: updates_from_the_test
    address: [ 127.0.0.1 ]
    action: update

template:
  - id: default
    storage: "{d}/zones"
    semantic-checks: off
    zonefile-sync: 0
    zonefile-load: whole
    journal-content: none

zone:
  - domain: {ZONE}.
    file: "{ZONE}.zone"
    acl: updates_from_the_test
"#
    )
}

fn zone(ttl: u32, records: &[(&str, IpAddr)]) -> String {
    let mut z = format!(
        "$ORIGIN {ZONE}.\n$TTL {ttl}\n@ IN SOA ns.{ZONE}. hostmaster.{ZONE}. 1 60 60 3600 {ttl}\n@ IN NS ns.{ZONE}.\nns IN A {DNS}\n"
    );
    for (name, a) in records {
        let rtype = if a.is_ipv4() { "A" } else { "AAAA" };
        let _ = writeln!(z, "{name} {ttl} IN {rtype} {a}");
    }
    z
}
