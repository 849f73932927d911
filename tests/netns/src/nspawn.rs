//! Booted Debian hosts inside the topology's namespaces: a bookworm root filesystem built once
//! with `debootstrap` (cached under the cargo target dir, keyed by a hash of its recipe), shared
//! read-only by every host through an overlayfs whose upper and work dirs sit in the test's temp
//! dir, and booted with `systemd-nspawn --boot` into a namespace of the topology, so systemd,
//! sshd and whatever Ansible installs run as on a real machine, with the topology's links.
//!
//! How it runs on this machine (PID 1 is not systemd, cgroups are hybrid v1):
//! - `systemd-nspawn --register=no --keep-unit`: no machined and no scope unit;
//! - started through `unshare --mount --propagation private`, which mounts the overlay and execs
//!   nspawn: the overlay exists only in that private mount namespace, so it vanishes with the
//!   container, also when the test is killed (no mount is ever left behind). `ip netns exec` is
//!   not used: it remounts `/sys`, and nspawn then finds no cgroup hierarchy;
//! - `--network-namespace-path=/run/netns/<ns>`: the container shares the namespace with the
//!   harness (its links, addresses and routes are the topology's);
//! - `--capability=CAP_NET_ADMIN` (nspawn drops it by default even with a namespace of its own):
//!   yggdrasil makes its TUN, the local proxy writes nftables rules. nspawn copies /dev/net/tun
//!   into the container itself; a unit in the image gives it mode 0666 as udev would;
//! - a cgroup of its own below the test's in every v1 hierarchy, and legacy cgroups inside
//!   (`SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=0`): containers sharing cgroups have their systemds
//!   manage the same `system.slice` and fail units with 219/CGROUP;
//! - the console (read-only) goes to `<dir>/hosts/<name>.console`;
//! - `setpriv --pdeathsig KILL`: if the test dies, nspawn gets SIGKILL and its container with it.
//!
//! On drop a host is powered off (SIGTERM to nspawn, which asks the container's systemd for an
//! orderly halt), then SIGKILLed after [`POWEROFF_GRACE`].
//!
//! The root filesystem has no apt sources (the topology has no internet: the roll-out test points
//! apt at a repository served inside the topology, see [`crate::aptrepo`]), no ssh host keys
//! (each host gets its own ed25519 key) and an empty machine-id (each host gets its own); the apt
//! timers are masked so no background apt run holds the dpkg lock while Ansible installs.

use std::fs::File;
use std::io::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::cmd;
use crate::wait::{check, wait_until};

/// The Debian suite of the hosts.
pub const SUITE: &str = "bookworm";

/// Packages debootstrap adds to `minbase`: systemd as init, sshd for Ansible, python3 for its
/// modules (python3-apt for the apt module), iproute2 for policy routing, nftables (and with it
/// libnftnl11 and libmnl0, which the local proxy links) to read the firewall.
pub const PACKAGES: &[&str] = &[
    "systemd",
    "systemd-sysv",
    "dbus",
    "openssh-server",
    "python3",
    "python3-apt",
    "iproute2",
    "nftables",
    "ca-certificates",
    "adduser",
    "procps",
    // The local-proxy package's /etc/logrotate.d file is run in systemd_restart.
    "logrotate",
];

/// Bumped whenever the steps after debootstrap change (part of the cache key).
const RECIPE: &str = "lbt-rootfs-4";

/// Units masked in the image: background apt runs (they would hold the dpkg lock), timers of
/// no use in a test, and the console getty (the console is a read-only log).
const MASKED: &[&str] = &[
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "dpkg-db-backup.timer",
    "e2scrub_all.timer",
    "fstrim.timer",
    "console-getty.service",
];

/// How long a host gets to halt before SIGKILL.
pub const POWEROFF_GRACE: Duration = Duration::from_secs(15);
/// How long a boot may take until sshd answers and systemd reports running/degraded.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(90);

/// Tools this module runs, with their Debian package.
pub const TOOLS: &[(&str, &str)] = &[
    ("systemd-nspawn", "systemd-container"),
    ("debootstrap", "debootstrap"),
    ("unshare", "util-linux"),
    ("setpriv", "util-linux"),
    ("ssh", "openssh-client"),
    ("ssh-keygen", "openssh-client"),
];

fn on_path(tool: &str) -> bool {
    let dirs = std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect::<Vec<_>>()).unwrap_or_default();
    dirs.iter().chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")].iter()).any(|d| d.join(tool).is_file())
}

/// Errors naming each missing tool and its package (tests fail, never skip), and anything else
/// the hosts need: root, overlayfs, /dev/net/tun.
pub fn require() -> Result<()> {
    crate::preflight::require()?;
    let mut missing: Vec<String> =
        TOOLS.iter().filter(|(t, _)| !on_path(t)).map(|(t, p)| format!("`{t}` (package {p})")).collect();
    let fs = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
    if !fs.lines().any(|l| l.split_whitespace().last() == Some("overlay")) {
        missing.push("overlayfs in the kernel (/proc/filesystems has no `overlay`)".into());
    }
    if !missing.is_empty() {
        bail!("booted hosts need: {}; install with: sudo tests/netns/deps.sh", missing.join(", "));
    }
    cleanup_stale();
    Ok(())
}

/// Removes what nspawn leaves in /run for containers of dead harness runs (the mounts and
/// processes die with them).
fn cleanup_stale() {
    cleanup_stale_cgroups();
    let Ok(entries) = std::fs::read_dir("/run/systemd/nspawn/propagate") else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(pid) = crate::netns::owner_pid(&name) {
            if !Path::new("/proc").join(pid.to_string()).exists() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

/// The Debian mirror the machine's own apt uses (deb.debian.org through whatever the machine
/// configures), so debootstrap fetches from the same place as `apt-get`.
pub fn mirror() -> String {
    let mut found = None;
    if let Ok(entries) = std::fs::read_dir("/etc/apt/sources.list.d") {
        let mut files: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        files.sort();
        for f in files.iter().filter(|f| f.extension().is_some_and(|e| e == "sources")) {
            let text = std::fs::read_to_string(f).unwrap_or_default();
            found = text
                .lines()
                .filter_map(|l| l.strip_prefix("URIs:"))
                .flat_map(str::split_whitespace)
                .find(|u| u.trim_end_matches('/').ends_with("/debian"))
                .map(str::to_string);
            if found.is_some() {
                break;
            }
        }
    }
    if found.is_none() {
        let text = std::fs::read_to_string("/etc/apt/sources.list").unwrap_or_default();
        found = text
            .lines()
            .filter(|l| l.trim_start().starts_with("deb "))
            .flat_map(str::split_whitespace)
            .find(|w| w.starts_with("http") && w.trim_end_matches('/').ends_with("/debian"))
            .map(str::to_string);
    }
    found.unwrap_or_else(|| "http://deb.debian.org/debian".into()).trim_end_matches('/').to_string()
}

/// FNV-1a, 64 bits: a stable hash for cache keys (std's hasher may change between releases).
pub fn fnv64(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The cached root filesystem.
#[derive(Debug, Clone)]
pub struct Rootfs {
    pub path: PathBuf,
    /// How long building it took, if this call built it (None: taken from the cache).
    pub built_in: Option<Duration>,
}

impl Rootfs {
    /// The root filesystem under `cache` (`<target>/nspawn`): `rootfs-<hash>` where the hash
    /// covers the suite, the mirror, [`PACKAGES`] and the post-build recipe. Built with
    /// debootstrap when missing (~1-1.5 min), into a temp name renamed into place when complete,
    /// under a lock file so concurrent runs build it once. An incomplete or older tree is never
    /// used: delete `<target>/nspawn` to force a rebuild.
    pub fn get(cache: &Path) -> Result<Self> {
        std::fs::create_dir_all(cache).with_context(|| format!("creating {}", cache.display()))?;
        let mirror = mirror();
        let base_key = format!("{SUITE}|{mirror}|{}", PACKAGES.join(","));
        let key = format!("{RECIPE}|{base_key}");
        let path = cache.join(format!("rootfs-{:016x}", fnv64(key.as_bytes())));
        let base = cache.join(format!("base-{:016x}", fnv64(base_key.as_bytes())));
        let lock = File::create(cache.join("rootfs.lock")).context("creating the rootfs lock file")?;
        lock.lock().context("locking the rootfs cache")?;
        if path.join("etc/lbt-rootfs").is_file() {
            return Ok(Self { path, built_in: None });
        }
        let start = Instant::now();
        if !base.join("etc/os-release").is_file() {
            debootstrap(cache, &base, &mirror)?;
        }
        // Older recipes' trees are of no further use.
        for e in std::fs::read_dir(cache)?.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if (n.starts_with("rootfs-") || n.starts_with("finishing-")) && e.path() != path {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        let tmp = cache.join(format!("finishing-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        let (b, t) = (base.display().to_string(), tmp.display().to_string());
        let out = cmd::run_full(&["cp", "-a", "--reflink=auto", &b, &t], None, Duration::from_secs(300))?;
        if !out.status.success() {
            let _ = std::fs::remove_dir_all(&tmp);
            bail!("copying {b} to {t} failed ({}): {}", out.status, out.stderr.trim());
        }
        finish_image(&tmp).inspect_err(|_| {
            let _ = std::fs::remove_dir_all(&tmp);
        })?;
        std::fs::write(tmp.join("etc/lbt-rootfs"), format!("{key}\n"))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("moving the root filesystem to {}", path.display()))?;
        Ok(Self { path, built_in: Some(start.elapsed()) })
    }
}

/// `debootstrap --variant=minbase --include=PACKAGES` into `base` (through a temp name).
fn debootstrap(cache: &Path, base: &Path, mirror: &str) -> Result<()> {
    let tmp = cache.join(format!("building-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let include = format!("--include={}", PACKAGES.join(","));
    let t = tmp.display().to_string();
    eprintln!("nspawn: building the {SUITE} root filesystem with debootstrap from {mirror} into {t}");
    let out = cmd::run_full(
        &["debootstrap", "--variant=minbase", &include, SUITE, &t, mirror],
        None,
        Duration::from_secs(900),
    )?;
    if !out.status.success() {
        let _ = std::fs::remove_dir_all(&tmp);
        let tail: Vec<&str> = out.stdout.lines().rev().take(20).collect();
        bail!(
            "debootstrap failed ({}): {}\n{}",
            out.status,
            out.stderr.trim(),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    for e in std::fs::read_dir(cache)?.flatten() {
        if e.file_name().to_string_lossy().starts_with("base-") {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
    std::fs::rename(&tmp, base).with_context(|| format!("moving the debootstrap tree to {}", base.display()))
}

/// The steps after debootstrap (see the module docs).
fn finish_image(root: &Path) -> Result<()> {
    let etc = root.join("etc");
    for e in std::fs::read_dir(etc.join("ssh"))?.flatten() {
        if e.file_name().to_string_lossy().starts_with("ssh_host_") {
            std::fs::remove_file(e.path())?;
        }
    }
    std::fs::write(etc.join("machine-id"), "")?;
    let _ = std::fs::remove_file(etc.join("apt/sources.list"));
    std::fs::write(
        etc.join("ssh/sshd_config.d/lbt.conf"),
        "# netns harness: Ansible connects as root with a key made per run\n\
         PermitRootLogin prohibit-password\nPasswordAuthentication no\nUseDNS no\n\
         HostKey /etc/ssh/ssh_host_ed25519_key\n",
    )?;
    let system = etc.join("systemd/system");
    std::fs::create_dir_all(&system)?;
    for unit in MASKED {
        let link = system.join(unit);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink("/dev/null", &link)?;
    }
    // nspawn copies the machine's /dev/net/tun into the container with the machine's mode (0600
    // here); a Debian host's udev makes it 0666, which yggdrasil's unit (User=yggdrasil with
    // CAP_NET_ADMIN) needs. udev does not run in a container: a oneshot unit does it at boot.
    std::fs::write(
        system.join("lbt-tun-mode.service"),
        "[Unit]\nDescription=/dev/net/tun mode 0666 (as udev sets it on a host)\nDefaultDependencies=no\n\
         Before=sysinit.target\n\n[Service]\nType=oneshot\nExecStart=/bin/chmod 0666 /dev/net/tun\n\n\
         [Install]\nWantedBy=sysinit.target\n",
    )?;
    let wants = system.join("sysinit.target.wants");
    std::fs::create_dir_all(&wants)?;
    let _ = std::fs::remove_file(wants.join("lbt-tun-mode.service"));
    std::os::unix::fs::symlink("/etc/systemd/system/lbt-tun-mode.service", wants.join("lbt-tun-mode.service"))?;
    // The downloaded archives are of no use in the image.
    if let Ok(entries) = std::fs::read_dir(root.join("var/cache/apt/archives")) {
        for e in entries.flatten() {
            if e.path().extension().is_some_and(|x| x == "deb") {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    Ok(())
}

/// An ssh client identity for the hosts of one run, used from a namespace that reaches them.
#[derive(Debug, Clone)]
pub struct Ssh {
    /// The namespace ssh runs in.
    pub ns: String,
    /// The private key (its `.pub` beside it).
    pub key: PathBuf,
}

impl Ssh {
    /// The inventory variables that let ansible reach the booted hosts as root with this key
    /// (fresh host keys every run: not checked), for `all.vars`.
    pub fn ansible_vars(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut vars = serde_json::Map::new();
        for (k, v) in [
            ("ansible_user", "root".to_string()),
            ("ansible_ssh_private_key_file", self.key.display().to_string()),
            (
                "ansible_ssh_common_args",
                "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o IdentitiesOnly=yes".to_string(),
            ),
            ("ansible_python_interpreter", "/usr/bin/python3".to_string()),
        ] {
            vars.insert(k.into(), v.into());
        }
        vars
    }

    /// Makes an ed25519 key pair `<dir>/id_ed25519` for this run.
    pub fn new(ns: &str, dir: &Path) -> Result<Self> {
        let key = dir.join("id_ed25519");
        let k = key.display().to_string();
        cmd::run(&["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "lbt-controller", "-f", &k])
            .context("making the run's ssh key")?;
        Ok(Self { ns: ns.into(), key })
    }

    /// The public key line (for authorized_keys).
    pub fn public_key(&self) -> Result<String> {
        let p = self.key.with_extension("pub");
        std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))
    }

    /// The options every ssh call (and Ansible) uses: this key, no host key checks (hosts are
    /// made per run), no prompts, a short connect timeout.
    pub fn options(&self) -> Vec<String> {
        [
            "-i",
            &self.key.display().to_string(),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "LogLevel=ERROR",
            "-o",
            "ConnectTimeout=3",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    /// Runs `script` (a shell command line) as root on `addr`; the full output.
    pub fn run(&self, addr: IpAddr, script: &str, timeout: Duration) -> Result<cmd::Output> {
        let target = format!("root@{addr}");
        let opts = self.options();
        let mut argv = vec!["ip", "netns", "exec", &self.ns, "ssh"];
        argv.extend(opts.iter().map(String::as_str));
        argv.extend([target.as_str(), "--", script]);
        cmd::run_full(&argv, None, timeout)
    }

    /// Like [`Ssh::run`]; a non-zero exit is an error carrying the output.
    pub fn ok(&self, addr: IpAddr, script: &str, timeout: Duration) -> Result<String> {
        let out = self.run(addr, script, timeout)?;
        if !out.status.success() {
            bail!("ssh root@{addr} `{script}` failed ({}): {}{}", out.status, out.stderr.trim(), out.stdout.trim());
        }
        Ok(out.stdout)
    }
}

/// What a host is made of.
#[derive(Debug, Clone)]
pub struct HostSpec {
    /// Short name: hostname, and the machine name after the run's tag.
    pub name: String,
    /// The topology namespace it boots in.
    pub ns: String,
    /// Where the controller reaches its sshd.
    pub ssh_addr: IpAddr,
    /// `nameserver` lines for its /etc/resolv.conf (empty: none).
    pub nameservers: Vec<IpAddr>,
    /// Files to place before boot: path inside the host (absolute), contents, mode.
    pub files: Vec<(PathBuf, Vec<u8>, u32)>,
}

impl HostSpec {
    pub fn new(name: &str, ns: &str, ssh_addr: IpAddr) -> Self {
        Self { name: name.into(), ns: ns.into(), ssh_addr, nameservers: vec![], files: vec![] }
    }
}

/// A booted host. Dropping it powers it off; its overlay goes with its mount namespace.
#[derive(Debug)]
pub struct Host {
    pub name: String,
    pub machine: String,
    pub ns: String,
    pub ssh_addr: IpAddr,
    ssh: Ssh,
    child: Child,
    status: Option<ExitStatus>,
    console: PathBuf,
    merged: PathBuf,
    cgroups: Vec<PathBuf>,
    started: Instant,
    /// From spawning nspawn until systemd reported running/degraded.
    pub boot_time: Duration,
}

impl Host {
    /// Boots `spec` on `rootfs` with its overlay under `<dir>/hosts/<name>` and waits (at most
    /// [`BOOT_TIMEOUT`]) until sshd answers `ssh` and `systemctl is-system-running --wait` says
    /// running or degraded.
    pub fn boot(rootfs: &Rootfs, spec: &HostSpec, ssh: &Ssh, tag: &str, dir: &Path) -> Result<Self> {
        let mut host = Self::start(rootfs, spec, ssh, tag, dir)?;
        host.wait_booted()?;
        Ok(host)
    }

    /// Starts booting (see [`Host::boot`]) without waiting; [`Host::wait_booted`] finishes.
    /// Several can boot side by side, but two systemds starting at the same instant here (hybrid
    /// cgroups, legacy mode in the container) now and then fail a unit with 219/CGROUP (ENOENT
    /// attaching to its cgroup) and boot `degraded`: the tests boot one after the other
    /// (~0.5 s each).
    pub fn start(rootfs: &Rootfs, spec: &HostSpec, ssh: &Ssh, tag: &str, dir: &Path) -> Result<Self> {
        let base = dir.join("hosts").join(&spec.name);
        let (upper, work, merged) = (base.join("upper"), base.join("work"), base.join("merged"));
        for d in [&upper, &work, &merged] {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        prepare_upper(&upper, spec, &ssh.public_key()?)?;
        let machine = format!("{tag}-{}", spec.name);
        let console = dir.join("hosts").join(format!("{}.console", spec.name));
        let netns_path = format!("--network-namespace-path=/run/netns/{}", spec.ns);
        let machine_arg = format!("--machine={machine}");
        let hostname_arg = format!("--hostname={}", spec.name);
        let cgroups = own_cgroups(&machine)?;
        let cg_list: Vec<String> = cgroups.iter().map(|c| c.display().to_string()).collect();
        let script = "for d in $LBT_CGROUPS; do mkdir \"$d\" && echo $$ > \"$d/cgroup.procs\" || exit 91; done; \
                      mount -t overlay overlay -o \"lowerdir=$1,upperdir=$2,workdir=$3\" \"$4\" || exit 90; \
                      m=$4; shift 4; exec systemd-nspawn -D \"$m\" \"$@\"";
        let mut child = Command::new("setpriv");
        child
            .args(["--pdeathsig", "KILL", "unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh"])
            .arg(&rootfs.path)
            .arg(&upper)
            .arg(&work)
            .arg(&merged)
            .args([
                "--boot",
                "--register=no",
                "--keep-unit",
                &machine_arg,
                &hostname_arg,
                &netns_path,
                "--capability=CAP_NET_ADMIN",
                "--resolv-conf=off",
                "--timezone=off",
                "--link-journal=no",
                "--console=read-only",
            ])
            .env("LBT_CGROUPS", cg_list.join(" "))
            // Legacy (v1 only) cgroups in the container: in hybrid mode nspawn would give it the
            // cgroup2 hierarchy from its root, shared by every container (units of the same
            // name in two containers then collide: 219/CGROUP).
            .env("SYSTEMD_NSPAWN_UNIFIED_HIERARCHY", "0")
            .stdin(Stdio::null());
        let out = File::create(&console).with_context(|| format!("creating {}", console.display()))?;
        let err = out.try_clone()?;
        let start = Instant::now();
        let child =
            child.stdout(out).stderr(err).spawn().with_context(|| format!("starting systemd-nspawn for {machine}"))?;
        Ok(Self {
            name: spec.name.clone(),
            machine,
            ns: spec.ns.clone(),
            ssh_addr: spec.ssh_addr,
            ssh: ssh.clone(),
            child,
            status: None,
            console,
            merged,
            cgroups,
            started: start,
            boot_time: Duration::ZERO,
        })
    }

    /// Waits (at most [`BOOT_TIMEOUT`] from the start) until the host is booted; sets
    /// [`Host::boot_time`].
    pub fn wait_booted(&mut self) -> Result<()> {
        self.wait_booted_inner().with_context(|| format!("booting {}", self.name))?;
        self.boot_time = self.started.elapsed();
        Ok(())
    }

    fn wait_booted_inner(&mut self) -> Result<()> {
        let start = self.started;
        let deadline = BOOT_TIMEOUT.saturating_sub(start.elapsed()).max(Duration::from_secs(1));
        wait_until(&format!("sshd of {} answering", self.name), deadline, Duration::from_millis(200), || {
            self.ensure_running()?;
            self.ssh.ok(self.ssh_addr, "true", Duration::from_secs(5)).map(|_| ())
        })?;
        let left = BOOT_TIMEOUT.saturating_sub(start.elapsed()).max(Duration::from_secs(5));
        let state = wait_until(&format!("{} booted", self.name), left, Duration::from_millis(200), || {
            self.ensure_running()?;
            let out = self.ssh.run(self.ssh_addr, "systemctl is-system-running --wait", Duration::from_secs(30))?;
            let state = out.stdout.trim().to_string();
            check(state == "running" || state == "degraded", || format!("system state {state:?}"))?;
            Ok(state)
        })?;
        if state == "degraded" {
            let script = "for u in $(systemctl --failed --plain --no-legend | cut -d' ' -f1); do \
                          journalctl -b -u $u --no-pager | tail -n 8; done; journalctl -b --no-pager | grep -iE 'cgroup' | tail -n 12";
            let failed = self.ssh.run(self.ssh_addr, script, Duration::from_secs(10))?;
            eprintln!("nspawn: {} booted degraded; failed units:\n{}", self.name, failed.stdout.trim());
        }
        Ok(())
    }

    /// Errors (with the console's tail) if nspawn has exited.
    pub fn ensure_running(&mut self) -> Result<()> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        if let Some(status) = self.status {
            bail!("systemd-nspawn for {} exited ({status}):\n{}", self.machine, self.console_tail(30));
        }
        Ok(())
    }

    /// The pid of systemd-nspawn (the only process this guard kills).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Runs a shell command line as root on the host over ssh; stdout, or an error.
    pub fn sh(&self, script: &str, timeout: Duration) -> Result<String> {
        self.ssh.ok(self.ssh_addr, script, timeout)
    }

    /// Like [`Host::sh`], returning the full output whatever the exit status.
    pub fn sh_full(&self, script: &str, timeout: Duration) -> Result<cmd::Output> {
        self.ssh.run(self.ssh_addr, script, timeout)
    }

    /// A path inside the running host, seen from here (through nspawn's mount namespace, where
    /// the overlay is mounted).
    pub fn path(&self, inside: &str) -> PathBuf {
        let root = PathBuf::from(format!("/proc/{}/root", self.pid()));
        root.join(self.merged.strip_prefix("/").unwrap_or(&self.merged)).join(inside.trim_start_matches('/'))
    }

    /// The console output so far.
    pub fn console(&self) -> String {
        std::fs::read(&self.console).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
    }

    fn console_tail(&self, n: usize) -> String {
        let c = self.console();
        let lines: Vec<&str> = c.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Powers the host off: SIGTERM to nspawn (an orderly halt of the container), SIGKILL after
    /// [`POWEROFF_GRACE`]. Returns how long it took.
    pub fn poweroff(&mut self) -> Result<Duration> {
        let start = Instant::now();
        if self.status.is_none() {
            let _ = cmd::run(&["kill", "-TERM", &self.pid().to_string()]);
            loop {
                if let Some(s) = self.child.try_wait()? {
                    self.status = Some(s);
                    break;
                }
                if start.elapsed() > POWEROFF_GRACE {
                    eprintln!("nspawn: {} did not halt within {POWEROFF_GRACE:?}; SIGKILL", self.machine);
                    let _ = self.child.kill();
                    self.status = Some(self.child.wait()?);
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let _ = std::fs::remove_dir_all(Path::new("/run/systemd/nspawn/propagate").join(&self.machine));
        for c in &self.cgroups {
            remove_cgroup(c);
        }
        Ok(start.elapsed())
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("[host {} console]\n{}", self.name, self.console_tail(15));
        }
        if let Err(e) = self.poweroff() {
            eprintln!("nspawn: powering off {}: {e:#}", self.machine);
        }
    }
}

/// The cgroups this process is in, one per hierarchy, as directories: on hybrid v1 each
/// controller's (`cpuset` left out: a new one needs cpus and mems set before it takes a task)
/// and `name=systemd`; on pure v2 the unified one.
fn my_cgroups() -> Result<Vec<PathBuf>> {
    let mine = std::fs::read_to_string("/proc/self/cgroup").context("reading /proc/self/cgroup")?;
    let mut dirs = Vec::new();
    let mut unified = None;
    for l in mine.lines() {
        let mut f = l.splitn(3, ':');
        let (Some(_), Some(ctrl), Some(path)) = (f.next(), f.next(), f.next()) else { continue };
        let path = path.trim_start_matches('/');
        if ctrl.is_empty() {
            unified = Some(Path::new("/sys/fs/cgroup").join(path));
            continue;
        }
        if ctrl.split(',').any(|c| c == "cpuset") {
            continue;
        }
        let mount = Path::new("/sys/fs/cgroup").join(ctrl.strip_prefix("name=").unwrap_or(ctrl));
        if mount.join("cgroup.procs").is_file() {
            dirs.push(mount.join(path));
        }
    }
    if dirs.is_empty() {
        dirs.extend(unified.filter(|u| u.join("cgroup.procs").is_file()));
    }
    if dirs.is_empty() {
        bail!("no usable cgroup hierarchy in /proc/self/cgroup:\n{mine}");
    }
    Ok(dirs)
}

/// Cgroups of its own for a container, below the test's own in every hierarchy: with
/// `--keep-unit` nspawn leaves the container in the cgroups it was started in, and two
/// containers sharing them have their systemds manage the same `system.slice` (units then fail
/// with 219/CGROUP at random).
fn own_cgroups(machine: &str) -> Result<Vec<PathBuf>> {
    let dirs: Vec<PathBuf> = my_cgroups()?.into_iter().map(|d| d.join(machine)).collect();
    for d in &dirs {
        remove_cgroup(d);
    }
    Ok(dirs)
}

/// Removes a cgroup and whatever its container's systemd left below it (deepest first).
fn remove_cgroup(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// Cgroups of containers of dead harness runs (see [`own_cgroups`]).
fn cleanup_stale_cgroups() {
    for root in my_cgroups().unwrap_or_default() {
        let Ok(entries) = std::fs::read_dir(&root) else { continue };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(pid) = crate::netns::owner_pid(&name) {
                if !Path::new("/proc").join(pid.to_string()).exists() {
                    remove_cgroup(&e.path());
                }
            }
        }
    }
}

/// Writes the per-host files into the overlay's upper dir before boot.
fn prepare_upper(upper: &Path, spec: &HostSpec, authorized_key: &str) -> Result<()> {
    let put = |inside: &Path, data: &[u8], mode: u32| -> Result<()> {
        let p = upper.join(inside.strip_prefix("/").unwrap_or(inside));
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let mut f = File::create(&p).with_context(|| format!("creating {}", p.display()))?;
        f.write_all(data)?;
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(mode))?;
        Ok(())
    };
    let name = &spec.name;
    put(Path::new("/etc/hostname"), format!("{name}\n").as_bytes(), 0o644)?;
    put(Path::new("/etc/hosts"), format!("127.0.0.1 localhost\n127.0.1.1 {name}\n::1 localhost\n").as_bytes(), 0o644)?;
    let uuid = std::fs::read_to_string("/proc/sys/kernel/random/uuid").context("reading a random uuid")?;
    put(Path::new("/etc/machine-id"), format!("{}\n", uuid.trim().replace('-', "")).as_bytes(), 0o444)?;
    let resolv: String = spec.nameservers.iter().map(|a| format!("nameserver {a}\n")).collect();
    put(Path::new("/etc/resolv.conf"), resolv.as_bytes(), 0o644)?;
    put(Path::new("/root/.ssh/authorized_keys"), authorized_key.as_bytes(), 0o600)?;
    std::fs::set_permissions(upper.join("root/.ssh"), std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
    let hk = upper.join("etc/ssh/ssh_host_ed25519_key");
    std::fs::create_dir_all(hk.parent().context("host key dir")?)?;
    cmd::run(&[
        "ssh-keygen",
        "-q",
        "-t",
        "ed25519",
        "-N",
        "",
        "-C",
        &format!("root@{name}"),
        "-f",
        &hk.display().to_string(),
    ])
    .context("making the host's ssh key")?;
    for (inside, data, mode) in &spec.files {
        put(inside, data, *mode)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::fnv64;

    #[test]
    fn fnv64_is_stable() {
        assert_eq!(fnv64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
