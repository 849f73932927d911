//! The controller host of the roll-out tests and the apt repository it serves.
//!
//! The topology has no internet, so the booted hosts install packages from a flat apt
//! repository (`deb [trusted=yes] http://192.0.2.50:8000/ ./`) served with `python3 -m
//! http.server` from the controller namespace, which hangs off the topology's router like the
//! DNS server does and reaches every host (Ansible and ssh run there too):
//!
//! ```text
//!  ctl 192.0.2.50/29 ── r-ctl 192.0.2.49 (inet router)
//! ```
//!
//! Debian's packages for the repository (yggdrasil from bookworm-backports, ...) are fetched on
//! the machine itself with `apt-get download` before any topology exists, cached under
//! `<target>/nspawn/debs-<hash>` (the hash covers the list and the mirror), and indexed with
//! `apt-ftparchive` (package apt-utils) together with the project's own .debs.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::cmd;
use crate::netns::Netns;
use crate::proc_guard::Proc;
use crate::wait::{check, wait_until};

/// The controller's address (a /29 of its own on the router).
pub const CTL: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 50);
pub const CTL_GW: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 49);
/// The repository's HTTP port on the controller.
pub const REPO_PORT: u16 = 8000;

/// Errors naming a missing `apt-ftparchive`, `apt-get` or `python3`.
pub fn require() -> Result<()> {
    let on_path =
        |t: &str| std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(t).is_file()));
    let missing: Vec<&str> = [("apt-ftparchive", "apt-utils"), ("apt-get", "apt"), ("python3", "python3")]
        .into_iter()
        .filter(|(t, _)| !on_path(t))
        .map(|(_, p)| p)
        .collect();
    if !missing.is_empty() {
        bail!("the local apt repository needs the Debian packages {missing:?}: run tests/netns/deps.sh");
    }
    Ok(())
}

/// Fetches `specs` (`apt-get download` arguments, e.g. `yggdrasil/bookworm-backports`) from the
/// machine's configured Debian mirror into the cache, once; the .deb files.
pub fn download(cache: &Path, specs: &[&str]) -> Result<Vec<PathBuf>> {
    require()?;
    let key = format!("{}|{}", crate::nspawn::mirror(), specs.join(","));
    let dir = cache.join(format!("debs-{:016x}", crate::nspawn::fnv64(key.as_bytes())));
    if !dir.join("complete").is_file() {
        let tmp = cache.join(format!("debs-building-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        let script = format!("cd '{}' && apt-get download {}", tmp.display(), specs.join(" "));
        let out = cmd::run_full(&["sh", "-c", &script], None, Duration::from_secs(300))?;
        if !out.status.success() {
            let _ = std::fs::remove_dir_all(&tmp);
            bail!(
                "`apt-get download {}` failed ({}): {}\n(is bookworm-backports in the machine's apt sources? run tests/netns/deps.sh)",
                specs.join(" "),
                out.status,
                out.stderr.trim()
            );
        }
        std::fs::write(tmp.join("complete"), format!("{key}\n"))?;
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::rename(&tmp, &dir).with_context(|| format!("moving the downloads to {}", dir.display()))?;
    }
    debs_in(&dir)
}

/// The .deb files in `dir`, sorted.
pub fn debs_in(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "deb"))
        .collect();
    v.sort();
    Ok(v)
}

/// A flat repository in a directory: the .debs, `Packages` and `Release`.
#[derive(Debug, Clone)]
pub struct AptRepo {
    pub dir: PathBuf,
    /// `name version` of every package in it.
    pub contents: Vec<String>,
}

impl AptRepo {
    /// Copies `debs` into `dir` and indexes them as suite `bookworm-backports` (where Debian has
    /// yggdrasil 0.5), see [`AptRepo::build_as`].
    pub fn build(dir: &Path, debs: &[PathBuf]) -> Result<Self> {
        Self::build_as(dir, debs, "bookworm-backports")
    }

    /// Copies `debs` into `dir` and indexes them; the `Release` file names `suite` as its suite
    /// and codename (apt's `-t <suite>` / `default_release` then finds the packages there).
    pub fn build_as(dir: &Path, debs: &[PathBuf], suite: &str) -> Result<Self> {
        require()?;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        for d in debs {
            let name = d.file_name().context("a .deb without a file name")?;
            std::fs::copy(d, dir.join(name)).with_context(|| format!("copying {}", d.display()))?;
        }
        let script = format!(
            "apt-ftparchive packages . > Packages && apt-ftparchive -o APT::FTPArchive::Release::Suite={suite} \
             -o APT::FTPArchive::Release::Codename={suite} -o APT::FTPArchive::Release::Origin=lbt-test release . > Release.new \
             && mv Release.new Release"
        );
        let out = cmd::run_full(
            &["sh", "-c", &format!("cd '{}' && {script}", dir.display())],
            None,
            Duration::from_secs(60),
        )?;
        if !out.status.success() {
            bail!("indexing the repository failed ({}): {}", out.status, out.stderr.trim());
        }
        let packages = std::fs::read_to_string(dir.join("Packages"))?;
        let contents: Vec<String> = packages
            .split("\n\n")
            .filter_map(|stanza| {
                let field = |f: &str| stanza.lines().find_map(|l| l.strip_prefix(f)).map(str::trim);
                Some(format!("{} {}", field("Package:")?, field("Version:")?))
            })
            .collect();
        if contents.len() != debs.len() {
            bail!("the repository indexes {} packages, {} were given: {contents:?}", contents.len(), debs.len());
        }
        Ok(Self { dir: dir.into(), contents })
    }
}

/// The apt sources line for a flat repository at `url`.
pub fn source_line(url: &str) -> String {
    format!("deb [trusted=yes] {url} ./")
}

/// The controller namespace, linked to the topology's router; processes it serves stop on drop,
/// then the namespace goes.
#[derive(Debug)]
pub struct Controller {
    procs: Vec<Proc>,
    ns: Netns,
    logdir: PathBuf,
}

impl Controller {
    /// Makes `<tag>-ctl` with [`CTL`] on a link to the router namespace `router_ns`.
    pub fn start(router_ns: &str, tag: &str, logdir: &Path) -> Result<Self> {
        let ns = Netns::new(&format!("{tag}-ctl"))?;
        let name = ns.name().to_string();
        cmd::ip(&name, &["link", "add", "name", "eth0", "type", "veth", "peer", "name", "r-ctl", "netns", router_ns])
            .context("linking the controller to the router")?;
        cmd::ip(&name, &["addr", "add", &format!("{CTL}/29"), "dev", "eth0"])?;
        cmd::ip(router_ns, &["addr", "add", &format!("{CTL_GW}/29"), "dev", "r-ctl"])?;
        cmd::ip(&name, &["link", "set", "eth0", "up"])?;
        cmd::ip(router_ns, &["link", "set", "r-ctl", "up"])?;
        cmd::ip(&name, &["route", "add", "default", "via", &CTL_GW.to_string()])?;
        Ok(Self { procs: vec![], ns, logdir: logdir.into() })
    }

    pub fn ns(&self) -> &str {
        self.ns.name()
    }

    /// Serves `dir` over HTTP on [`CTL`]:`port` and waits until it answers; the base URL.
    pub fn serve(&mut self, name: &str, dir: &Path, port: u16) -> Result<String> {
        let d = dir.display().to_string();
        let p = port.to_string();
        let ctl = CTL.to_string();
        let argv = ["python3", "-m", "http.server", "--bind", &ctl, "--directory", &d, &p];
        let proc = Proc::spawn(self.ns.name(), name, &argv, &self.logdir)?;
        self.procs.push(proc);
        let url = format!("http://{CTL}:{port}/");
        let ns = self.ns.name().to_string();
        wait_until(&format!("{name} serving {url}"), Duration::from_secs(10), Duration::from_millis(50), || {
            if let Some(p) = self.procs.last_mut() {
                p.ensure_running()?;
            }
            let out =
                cmd::exec(&ns, &["curl", "-sf", "-o", "/dev/null", "--max-time", "2", &url], Duration::from_secs(5))?;
            check(out.status.success(), || format!("curl exited {}", out.status))
        })?;
        Ok(url)
    }

    /// The controller's address as an `IpAddr`.
    pub fn addr(&self) -> IpAddr {
        CTL.into()
    }
}
