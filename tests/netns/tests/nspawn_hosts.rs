//! Booted hosts in the topology: two Debian bookworm containers (systemd-nspawn on one shared
//! read-only root filesystem, an overlay each) boot to multi-user in the ingress1 and ingress2
//! namespaces; the controller reaches each over ssh; each installs yggdrasil 0.5 from the local
//! apt repository served inside the topology, and its packaged unit runs there with a generated
//! config (TUN and CAP_NET_ADMIN work);
//! nftables rules made inside a host are the namespace's; afterwards no process, mount or
//! namespace is left.

mod common;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use netns::aptrepo::{self, AptRepo, Controller, REPO_PORT};
use netns::nspawn::{self, Host, HostSpec, Rootfs, Ssh};
use netns::topology::{addr, Options, Role};

#[test]
fn two_booted_hosts_reached_over_ssh_install_from_the_local_repo() {
    let t0 = Instant::now();
    nspawn::require().unwrap_or_else(|e| panic!("{e:#}"));
    aptrepo::require().unwrap_or_else(|e| panic!("{e:#}"));
    let cache = common::cache_dir();
    let rootfs = Rootfs::get(&cache).unwrap_or_else(|e| panic!("root filesystem: {e:#}"));
    let rootfs_s = rootfs.built_in.map(|d| d.as_secs_f64());
    common::phase(t0, &format!("root filesystem {} (built in {rootfs_s:?} s)", rootfs.path.display()));
    let debs = aptrepo::download(&cache, &["yggdrasil/bookworm-backports"]).unwrap_or_else(|e| panic!("{e:#}"));

    let t = common::build(Options { mesh: false, backends: false });
    let mut ctl = Controller::start(t.ns(Role::Inet), &t.tag, t.dir()).expect("controller namespace");
    let repo = AptRepo::build(&t.dir().join("repo"), &debs).expect("local repository");
    let url = ctl.serve("apt-repo", &repo.dir, REPO_PORT).expect("serving the repository");
    common::phase(t0, &format!("repository {url}: {:?}", repo.contents));
    let ssh = Ssh::new(ctl.ns(), t.dir()).expect("ssh key");

    let plan = [("ingress1", Role::Ingress1, addr::INGRESS1), ("ingress2", Role::Ingress2, addr::INGRESS2)];
    let boot0 = Instant::now();
    // One after the other: two systemds booting at the same instant in this kernel's hybrid
    // cgroup setup now and then fail a unit with 219/CGROUP (ENOENT attaching to its cgroup).
    let mut hosts: Vec<Host> = Vec::new();
    for (name, role, a) in &plan {
        let spec = HostSpec::new(name, t.ns(*role), IpAddr::from(*a));
        let h = Host::boot(&rootfs, &spec, &ssh, &t.tag, t.dir()).unwrap_or_else(|e| panic!("booting {name}: {e:#}"));
        common::phase(t0, &format!("{} booted in {:.2}s", h.name, h.boot_time.as_secs_f64()));
        hosts.push(h);
    }
    let boot_both = boot0.elapsed();

    let short = Duration::from_secs(20);
    let mut machine_ids = BTreeSet::new();
    for h in &hosts {
        let state = h.sh_full("systemctl is-system-running", short).expect("ssh");
        let state = state.stdout.trim();
        // Not even degraded: every unit of the boot started (each container has a cgroup of its own).
        assert_eq!(state, "running", "{}: system state", h.name);
        assert_eq!(h.sh("hostname", short).expect("hostname").trim(), h.name);
        assert_eq!(h.sh("cat /proc/1/comm", short).expect("pid 1").trim(), "systemd", "{}: PID 1", h.name);
        machine_ids.insert(h.sh("cat /etc/machine-id", short).expect("machine-id").trim().to_string());
        // The container's addresses are the namespace's own.
        let a = h.sh("ip -4 -o addr show dev eth0", short).expect("ip addr");
        assert!(a.contains(&h.ssh_addr.to_string()), "{}: eth0 is {a}", h.name);
    }
    assert_eq!(machine_ids.len(), 2, "each host has its own machine-id: {machine_ids:?}");

    let install0 = Instant::now();
    for h in &hosts {
        let script = format!(
            "set -e; echo '{}' > /etc/apt/sources.list.d/lbt.list; \
             apt-get update -q; DEBIAN_FRONTEND=noninteractive apt-get install -y -q yggdrasil; \
             yggdrasil -genconf > /etc/yggdrasil/yggdrasil.conf; systemctl start yggdrasil",
            aptrepo::source_line(&url)
        );
        h.sh(&script, Duration::from_secs(180)).unwrap_or_else(|e| panic!("{}: installing yggdrasil: {e:#}", h.name));
        let v = h.sh("yggdrasil -version", short).expect("yggdrasil -version");
        assert!(v.contains("0.5."), "{}: {v}", h.name);
    }
    let install = install0.elapsed();
    common::phase(t0, &format!("yggdrasil installed on both in {:.2}s", install.as_secs_f64()));
    for h in &hosts {
        // The packaged service runs and has made its TUN (needs /dev/net/tun and CAP_NET_ADMIN).
        netns::wait::wait_until(
            &format!("yggdrasil running on {} with its TUN", h.name),
            Duration::from_secs(30),
            Duration::from_millis(200),
            || {
                let active = h.sh_full("systemctl is-active yggdrasil", short)?;
                if active.stdout.trim() != "active" {
                    let log = h.sh_full("journalctl -u yggdrasil --no-pager | tail -n 15", short)?;
                    anyhow::bail!("yggdrasil is {}:\n{}", active.stdout.trim(), log.stdout);
                }
                let tun = netns::cmd::exec_ok(&h.ns, &["ip", "-6", "-o", "addr", "show"], short)?;
                netns::wait::check(
                    tun.lines()
                        .any(|l| l.split_whitespace().nth(3).is_some_and(|a| a.starts_with("20") && a.contains(':'))),
                    || format!("no 200::/7 address in the namespace yet:\n{tun}"),
                )
            },
        )
        .unwrap_or_else(|e| panic!("{e:#}"));
        // nftables from inside the host acts on the namespace.
        h.sh("nft add table inet lbtsmoke", short).expect("nft inside the host");
        let tables = netns::cmd::exec_ok(&h.ns, &["nft", "list", "tables"], short).expect("nft list");
        assert!(tables.contains("lbtsmoke"), "{}: {tables}", h.name);
    }

    let pids: Vec<u32> = hosts.iter().map(Host::pid).collect();
    let machines: Vec<String> = hosts.iter().map(|h| h.machine.clone()).collect();
    let dir = t.dir().to_path_buf();
    let off0 = Instant::now();
    drop(hosts);
    let poweroff = off0.elapsed();
    for pid in &pids {
        assert!(!Path::new(&format!("/proc/{pid}")).exists(), "systemd-nspawn {pid} still runs");
    }
    for m in &machines {
        assert!(!Path::new("/run/systemd/nspawn/propagate").join(m).exists(), "{m} left its propagate dir");
    }
    let cgroups = std::fs::read_dir("/sys/fs/cgroup/systemd")
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect::<Vec<_>>())
        .unwrap_or_default();
    for m in &machines {
        assert!(!cgroups.contains(m), "{m} left its cgroup");
    }
    let mounts = std::fs::read_to_string("/proc/mounts").expect("mounts");
    assert!(!mounts.contains(&dir.display().to_string()), "a mount under {} is left:\n{mounts}", dir.display());
    let ns_names: Vec<String> = [Role::Ingress1, Role::Ingress2].iter().map(|r| t.ns(*r).to_string()).collect();
    for ns in &ns_names {
        let pids = netns::cmd::run(&["ip", "netns", "pids", ns]).expect("ip netns pids");
        assert!(pids.trim().is_empty(), "processes left in {ns}: {pids}");
    }
    drop(ctl);
    drop(t);
    let left = netns::netns::list().expect("ip netns list");
    for ns in &ns_names {
        assert!(!left.contains(ns), "namespace {ns} left");
    }
    if std::env::var_os("LBT_KEEP").is_none_or(|v| v != "1") {
        assert!(!dir.exists(), "temp dir {} left", dir.display());
    }

    common::report(&format!(
        "RESULT nspawn_hosts rootfs_build_s={} boot_two_s={:.2} apt_install_two_s={:.2} poweroff_two_s={:.2} total_s={:.2}",
        rootfs_s.map(|s| format!("{s:.1}")).unwrap_or_else(|| "cached".into()),
        boot_both.as_secs_f64(),
        install.as_secs_f64(),
        poweroff.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    ));
}
