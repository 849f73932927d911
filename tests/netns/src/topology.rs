//! The scenario topology: hosts as namespaces, links as veths, real yggdrasil routers.
//!
//! ```text
//!  client 192.0.2.2 ──┐                        ┌── wan1 203.0.113.10 ──┐
//!  ingress1 192.0.2.11├── inet (router) ───────┤                       ├─ home ── lan 10.77.0.2
//!  ingress2 192.0.2.19│   rp_filter strict     └── wan2 198.51.100.7 ──┘  10.77.0.1
//!  stranger 192.0.2.34┘
//!
//!  meshnet (bridge, 10.99.0.0/24): home .10, ingress1 .11, ingress2 .12, meshc .20
//!  yggdrasil peers over meshnet only: ingress1→home, ingress2→home+ingress1, meshc→home
//! ```
//! Home answers on each WAN address and replies by the WAN the request came in on (source
//! policy routing: `from WAN1 table 101`, `from WAN2 table 102`); the router's strict rp_filter
//! drops a reply that leaves by the wrong link, so a working WAN2 path proves the routing.
//! Until the local proxy exists, the backends (`echo-server`) listen in home itself on the WAN
//! addresses and on home's mesh address; [`Topology::start_backends_in`] can put them in `lan`.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::cmd;
use crate::echo::{self, ConnLog};
use crate::faults;
use crate::ingress::{self, IngressConfig};
use crate::loadgen::{self, LoadConfig, Record, Summary, Tick};
use crate::metrics::{self, Metrics};
use crate::netns::{Netns, Veth};
use crate::proc_guard::Proc;
use crate::tempdir::TempDir;
use crate::wait::{check, wait_until};
use crate::ygg::{self, YggNode};

/// Addresses and ports of the topology (documentation and private ranges only).
pub mod addr {
    use std::net::Ipv4Addr;

    pub const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
    pub const CLIENT_GW: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
    pub const INGRESS1: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 11);
    pub const INGRESS1_GW: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 9);
    pub const INGRESS2: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 19);
    pub const INGRESS2_GW: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 17);
    /// A third ingress node, only after [`super::Topology::add_ingress3`] (roll-out tests).
    pub const INGRESS3: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 27);
    pub const INGRESS3_GW: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 25);
    pub const STRANGER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 34);
    pub const STRANGER_GW: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 33);
    /// Home's first WAN (its own /24 towards the router).
    pub const WAN1: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
    pub const WAN1_GW: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
    /// Home's second WAN.
    pub const WAN2: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
    pub const WAN2_GW: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
    pub const HOME_LAN: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
    pub const LAN: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
    /// Mesh underlay (yggdrasil peering only).
    pub const MESH_HOME: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 10);
    pub const MESH_INGRESS1: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 11);
    pub const MESH_INGRESS2: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 12);
    pub const MESH_INGRESS3: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 13);
    pub const MESH_MESHC: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 20);
    /// Yggdrasil peering port on the underlay.
    pub const YGG_PORT: u16 = 7991;
    /// The echo service, on each path.
    pub const ECHO_PORT: u16 = 7000;
    /// What the ingress health checks probe.
    pub const HEALTH_PORT: u16 = 8080;
    /// IPv6 (documentation prefix), only after [`super::Topology::add_ipv6`]: home's wan1
    /// is dual-stack, wan2 stays IPv4 only (a CGNAT'd or v4-only line).
    pub const WAN1_V6: std::net::Ipv6Addr = std::net::Ipv6Addr::new(0x2001, 0xdb8, 0xa1, 0, 0, 0, 0, 0x10);
    pub const WAN1_V6_GW: std::net::Ipv6Addr = std::net::Ipv6Addr::new(0x2001, 0xdb8, 0xa1, 0, 0, 0, 0, 1);
    pub const CLIENT_V6: std::net::Ipv6Addr = std::net::Ipv6Addr::new(0x2001, 0xdb8, 0x2, 0, 0, 0, 0, 2);
    pub const INGRESS1_V6: std::net::Ipv6Addr = std::net::Ipv6Addr::new(0x2001, 0xdb8, 0x11, 0, 0, 0, 0, 2);
    pub const INGRESS2_V6: std::net::Ipv6Addr = std::net::Ipv6Addr::new(0x2001, 0xdb8, 0x19, 0, 0, 0, 0, 2);
    /// Policy routing tables of home's WANs.
    pub const WAN1_TABLE: &str = "101";
    pub const WAN2_TABLE: &str = "102";
}

/// The hosts. `Inet` and `Meshnet` are the clearnet router and the mesh underlay bridge.
/// `Ingress3` exists only after [`Topology::add_ingress3`] and is not in [`Role::ALL`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Inet,
    Meshnet,
    Client,
    Ingress1,
    Ingress2,
    Home,
    Lan,
    Meshc,
    Stranger,
    Ingress3,
}

impl Role {
    pub const ALL: [Role; 9] = [
        Role::Inet,
        Role::Meshnet,
        Role::Client,
        Role::Ingress1,
        Role::Ingress2,
        Role::Home,
        Role::Lan,
        Role::Meshc,
        Role::Stranger,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Inet => "inet",
            Role::Meshnet => "meshnet",
            Role::Client => "client",
            Role::Ingress1 => "ingress1",
            Role::Ingress2 => "ingress2",
            Role::Home => "home",
            Role::Lan => "lan",
            Role::Meshc => "meshc",
            Role::Stranger => "stranger",
            Role::Ingress3 => "ingress3",
        }
    }
}

/// A home WAN link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wan {
    Wan1,
    Wan2,
}

impl Wan {
    pub fn name(self) -> &'static str {
        match self {
            Wan::Wan1 => "wan1",
            Wan::Wan2 => "wan2",
        }
    }
    pub fn addr(self) -> Ipv4Addr {
        match self {
            Wan::Wan1 => addr::WAN1,
            Wan::Wan2 => addr::WAN2,
        }
    }
    /// The router's end of the link.
    pub fn router_if(self) -> &'static str {
        match self {
            Wan::Wan1 => "r-wan1",
            Wan::Wan2 => "r-wan2",
        }
    }
}

/// How a WAN is cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// `ip link set down` on the router's end: home sees no carrier.
    LinkDown,
    /// An nftables drop of the WAN address on the router: the link stays up, nothing passes.
    Blackhole,
}

/// Where the harness finds its programs.
#[derive(Debug, Clone)]
pub struct Bins {
    pub loadgen: PathBuf,
    pub echo_server: PathBuf,
    pub ingress: PathBuf,
}

impl Bins {
    /// All three in one directory (cargo's `target/debug`).
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            loadgen: dir.join("loadgen"),
            echo_server: dir.join("echo-server"),
            ingress: std::env::var_os("INGRESS_BIN").map(PathBuf::from).unwrap_or_else(|| dir.join("ingress")),
        }
    }
}

/// What to bring up besides the namespaces and links.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Start yggdrasil in ingress1, ingress2, home and meshc and wait for the mesh.
    pub mesh: bool,
    /// Start the echo backends in home.
    pub backends: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self { mesh: true, backends: true }
    }
}

#[derive(Debug)]
struct Hosts {
    inet: Netns,
    meshnet: Netns,
    client: Netns,
    ingress1: Netns,
    ingress2: Netns,
    home: Netns,
    lan: Netns,
    meshc: Netns,
    stranger: Netns,
    ingress3: Option<Netns>,
}

impl Hosts {
    fn get(&self, r: Role) -> &Netns {
        match r {
            Role::Ingress3 => self.ingress3.as_ref().expect("ingress3 exists only after Topology::add_ingress3"),
            Role::Inet => &self.inet,
            Role::Meshnet => &self.meshnet,
            Role::Client => &self.client,
            Role::Ingress1 => &self.ingress1,
            Role::Ingress2 => &self.ingress2,
            Role::Home => &self.home,
            Role::Lan => &self.lan,
            Role::Meshc => &self.meshc,
            Role::Stranger => &self.stranger,
        }
    }
}

/// A running topology. Dropping it stops every process, then the routers, deletes every
/// namespace and finally the temp dir (fields drop in this order).
#[derive(Debug)]
pub struct Topology {
    procs: BTreeMap<String, Proc>,
    ygg: BTreeMap<Role, YggNode>,
    hosts: Hosts,
    pub bins: Bins,
    pub tag: String,
    dir: TempDir,
    /// `INGRESS_LOG` for the ingress processes started from now on (`log_ingress_connections`).
    ingress_log: Option<&'static str>,
    /// One topology per process at a time: the scenarios measure timing on 2 shared cores.
    _serial: MutexGuard<'static, ()>,
}

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

impl Topology {
    /// Builds everything (bounded: a few seconds; the mesh wait is at most 30 s).
    pub fn build(bins: Bins, opts: Options) -> Result<Self> {
        crate::preflight::require()?;
        // A test that panicked while holding it poisons it; the guard's data is nothing.
        let serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        for (name, p) in [("loadgen", &bins.loadgen), ("echo-server", &bins.echo_server)] {
            if !p.is_file() {
                bail!("{name} binary missing at {}: build with `cargo build -p netns`", p.display());
            }
        }
        let tag = crate::unique_tag();
        let dir = TempDir::new(&tag)?;
        let mk = |r: Role| Netns::new(&format!("{tag}-{}", r.as_str()));
        let hosts = Hosts {
            inet: mk(Role::Inet)?,
            meshnet: mk(Role::Meshnet)?,
            client: mk(Role::Client)?,
            ingress1: mk(Role::Ingress1)?,
            ingress2: mk(Role::Ingress2)?,
            home: mk(Role::Home)?,
            lan: mk(Role::Lan)?,
            meshc: mk(Role::Meshc)?,
            stranger: mk(Role::Stranger)?,
            ingress3: None,
        };
        let mut t = Self {
            procs: BTreeMap::new(),
            ygg: BTreeMap::new(),
            hosts,
            bins,
            tag,
            dir,
            ingress_log: None,
            _serial: serial,
        };
        t.wire().context("wiring the topology")?;
        if opts.mesh {
            t.start_mesh().context("starting the yggdrasil mesh")?;
        }
        if opts.backends {
            t.start_backends_in(Role::Home).context("starting the backends")?;
        }
        Ok(t)
    }

    fn wire(&mut self) -> Result<()> {
        let h = &self.hosts;
        let inet = h.inet.name();
        // Router: forwarding on, strict reverse-path filtering on every link (set before the
        // links exist so `default` applies to them).
        cmd::sysctl(
            inet,
            &[
                ("net.ipv4.ip_forward", "1"),
                ("net.ipv4.conf.all.rp_filter", "1"),
                ("net.ipv4.conf.default.rp_filter", "1"),
            ],
        )?;
        let hosts_on_router = [
            (&h.client, "r-client", addr::CLIENT, addr::CLIENT_GW),
            (&h.ingress1, "r-ing1", addr::INGRESS1, addr::INGRESS1_GW),
            (&h.ingress2, "r-ing2", addr::INGRESS2, addr::INGRESS2_GW),
            (&h.stranger, "r-stranger", addr::STRANGER, addr::STRANGER_GW),
        ];
        for (host, rif, a, gw) in hosts_on_router {
            Veth::new(&h.inet, rif, &[&format!("{gw}/29")], host, "eth0", &[&format!("{a}/29")])?;
            cmd::ip(host.name(), &["route", "add", "default", "via", &gw.to_string()])?;
        }
        // The ingress role's relay setting (ingress_sysctls in ansible/roles/ingress), as on a
        // deployed node: without it, a few hundred new connections a second towards one home
        // address fill the ephemeral range with TIME-WAIT sockets within a minute, and every
        // scenario's connects stall in the kernel's port search, whatever the failover does.
        for host in [&h.ingress1, &h.ingress2] {
            cmd::sysctl(host.name(), &[("net.ipv4.tcp_tw_reuse", "1")])?;
        }
        // The client namespace stands for many clients, each with ports of its own: at 400 new
        // connections a second to one ingress address and port, one namespace with the
        // defaults holds ~20,000 sockets in TIME-WAIT after a minute, and its own connects
        // then stall in the port search (the no-loss control of scenario_flap: 3,630 slow
        // requests from ~35 s on, on both WANs, with no fault at all; 0 with this).
        cmd::sysctl(h.client.name(), &[("net.ipv4.tcp_tw_reuse", "1")])?;
        // Home's two WANs, each its own link and /24.
        let home = h.home.name();
        cmd::sysctl(home, &[("net.ipv4.ip_forward", "1")])?;
        for (wan, gw, table) in
            [(Wan::Wan1, addr::WAN1_GW, addr::WAN1_TABLE), (Wan::Wan2, addr::WAN2_GW, addr::WAN2_TABLE)]
        {
            Veth::new(
                &h.inet,
                wan.router_if(),
                &[&format!("{gw}/24")],
                &h.home,
                wan.name(),
                &[&format!("{}/24", wan.addr())],
            )?;
            let gw = gw.to_string();
            cmd::ip(home, &["route", "add", "default", "via", &gw, "dev", wan.name(), "table", table])?;
            cmd::ip(home, &["rule", "add", "from", &wan.addr().to_string(), "table", table, "pref", table])?;
        }
        cmd::ip(home, &["route", "add", "default", "via", &addr::WAN1_GW.to_string(), "dev", "wan1", "metric", "10"])?;
        cmd::ip(home, &["route", "add", "default", "via", &addr::WAN2_GW.to_string(), "dev", "wan2", "metric", "20"])?;
        // LAN behind home.
        Veth::new(
            &h.home,
            "lan0",
            &[&format!("{}/24", addr::HOME_LAN)],
            &h.lan,
            "eth0",
            &[&format!("{}/24", addr::LAN)],
        )?;
        cmd::ip(h.lan.name(), &["route", "add", "default", "via", &addr::HOME_LAN.to_string()])?;
        // Mesh underlay: a bridge in `meshnet`, one port per mesh node.
        let meshnet = h.meshnet.name();
        cmd::ip(meshnet, &["link", "add", "name", "br0", "type", "bridge"])?;
        cmd::ip(meshnet, &["link", "set", "br0", "up"])?;
        let on_mesh = [
            (&h.home, "p-home", addr::MESH_HOME),
            (&h.ingress1, "p-ing1", addr::MESH_INGRESS1),
            (&h.ingress2, "p-ing2", addr::MESH_INGRESS2),
            (&h.meshc, "p-meshc", addr::MESH_MESHC),
        ];
        for (host, port, a) in on_mesh {
            Veth::new(&h.meshnet, port, &[], host, "mesh0", &[&format!("{a}/24")])?;
            cmd::ip(meshnet, &["link", "set", port, "master", "br0"])?;
        }
        Ok(())
    }

    fn start_mesh(&mut self) -> Result<()> {
        let uri = |a: Ipv4Addr| format!("tcp://{a}:{}", addr::YGG_PORT);
        let plan = [
            (Role::Home, vec![uri(addr::MESH_HOME)], vec![]),
            (Role::Ingress1, vec![uri(addr::MESH_INGRESS1)], vec![uri(addr::MESH_HOME)]),
            (Role::Ingress2, vec![], vec![uri(addr::MESH_HOME), uri(addr::MESH_INGRESS1)]),
            (Role::Meshc, vec![], vec![uri(addr::MESH_HOME)]),
        ];
        for (role, listen, peers) in plan {
            let node = ygg::start(self.ns(role), role.as_str(), self.dir.path(), &listen, &peers)?;
            self.ygg.insert(role, node);
        }
        let home = self.home_mesh_addr().context("home has no yggdrasil address")?;
        for role in [Role::Ingress1, Role::Ingress2, Role::Meshc] {
            ygg::wait_reachable(self.ns(role), home, Duration::from_secs(30))?;
        }
        Ok(())
    }

    /// Adds a third ingress node (roll-out tests): namespace `ingress3` on the router at
    /// [`addr::INGRESS3`] and on the mesh underlay at [`addr::MESH_INGRESS3`], like the other two
    /// (no router or backend of its own). Topologies without it are unchanged.
    pub fn add_ingress3(&mut self) -> Result<()> {
        if self.hosts.ingress3.is_some() {
            bail!("ingress3 already exists");
        }
        let ns = Netns::new(&format!("{}-{}", self.tag, Role::Ingress3.as_str()))?;
        let h = &self.hosts;
        let gw = addr::INGRESS3_GW;
        Veth::new(&h.inet, "r-ing3", &[&format!("{gw}/29")], &ns, "eth0", &[&format!("{}/29", addr::INGRESS3)])?;
        cmd::ip(ns.name(), &["route", "add", "default", "via", &gw.to_string()])?;
        Veth::new(&h.meshnet, "p-ing3", &[], &ns, "mesh0", &[&format!("{}/24", addr::MESH_INGRESS3)])?;
        cmd::ip(h.meshnet.name(), &["link", "set", "p-ing3", "master", "br0"])?;
        self.hosts.ingress3 = Some(ns);
        Ok(())
    }

    /// Adds IPv6 to the clearnet side: the router forwards it, client and both ingress nodes get
    /// an address and a default route, home's wan1 becomes dual-stack (wan2 stays IPv4 only) and
    /// an echo backend answers on wan1's IPv6 address (ports echo and health). No DAD, so the
    /// addresses are usable at once. Replies name the backend `[WAN1_V6]:port` (path `wan1`).
    pub fn add_ipv6(&mut self) -> Result<()> {
        let inet = self.ns(Role::Inet).to_string();
        cmd::sysctl(&inet, &[("net.ipv6.conf.all.forwarding", "1")])?;
        let hosts = [
            (Role::Client, "r-client", "eth0", addr::CLIENT_V6),
            (Role::Ingress1, "r-ing1", "eth0", addr::INGRESS1_V6),
            (Role::Ingress2, "r-ing2", "eth0", addr::INGRESS2_V6),
            (Role::Home, "r-wan1", "wan1", addr::WAN1_V6),
        ];
        for (role, rif, hif, a) in hosts {
            let seg = a.segments();
            let gw = Ipv6Addr::new(seg[0], seg[1], seg[2], 0, 0, 0, 0, 1);
            let ns = self.ns(role).to_string();
            // A link set down (a WAN cut) must not flush the IPv6 addresses, as IPv4 keeps its own.
            cmd::sysctl(&inet, &[(&format!("net.ipv6.conf.{rif}.keep_addr_on_down"), "1")])?;
            cmd::sysctl(&ns, &[(&format!("net.ipv6.conf.{hif}.keep_addr_on_down"), "1")])?;
            cmd::ip(&inet, &["-6", "addr", "add", &format!("{gw}/64"), "dev", rif, "nodad"])?;
            cmd::ip(&ns, &["-6", "addr", "add", &format!("{a}/64"), "dev", hif, "nodad"])?;
            cmd::ip(&ns, &["-6", "route", "add", "default", "via", &gw.to_string(), "dev", hif])?;
        }
        let mut argv = vec![self.bins.echo_server.display().to_string()];
        for port in [addr::ECHO_PORT, addr::HEALTH_PORT] {
            argv.push("--listen".into());
            argv.push(SocketAddr::new(addr::WAN1_V6.into(), port).to_string());
        }
        self.spawn(Role::Home, "backend-home-v6", &argv)?;
        let ns = self.ns(Role::Home).to_string();
        wait_until("the IPv6 backend listening", Duration::from_secs(10), Duration::from_millis(20), || {
            self.proc_mut("backend-home-v6")?.ensure_running()?;
            let out = cmd::exec_ok(&ns, &["ss", "-Hltn6"], cmd::DEFAULT_TIMEOUT)?;
            let n = out.lines().filter(|l| l.contains(&addr::WAN1_V6.to_string())).count();
            check(n >= 2, || format!("{n} of 2 sockets listening"))
        })
    }

    /// Starts `echo-server` in `role` (home, or lan later) on the echo and health ports of
    /// every address that carries traffic there: the WAN addresses and the mesh address in home,
    /// the LAN address in lan.
    pub fn start_backends_in(&mut self, role: Role) -> Result<()> {
        let ips: Vec<IpAddr> = match role {
            Role::Home => {
                let mut v: Vec<IpAddr> = vec![addr::WAN1.into(), addr::WAN2.into()];
                v.extend(self.home_mesh_addr().map(IpAddr::from));
                v
            }
            Role::Lan => vec![addr::LAN.into()],
            other => bail!("backends run in home or lan, not {}", other.as_str()),
        };
        let mut argv = vec![self.bins.echo_server.display().to_string()];
        for ip in &ips {
            for port in [addr::ECHO_PORT, addr::HEALTH_PORT] {
                argv.push("--listen".into());
                argv.push(SocketAddr::new(*ip, port).to_string());
            }
        }
        let name = format!("backend-{}", role.as_str());
        self.spawn(role, &name, &argv)?;
        let ns = self.ns(role).to_string();
        let want = ips.len() * 2;
        wait_until(&format!("{name} listening"), Duration::from_secs(10), Duration::from_millis(20), || {
            self.proc_mut(&name)?.ensure_running()?;
            let out = cmd::exec_ok(&ns, &["ss", "-Hltn"], cmd::DEFAULT_TIMEOUT)?;
            let n = out
                .lines()
                .filter(|l| {
                    l.contains(&format!(":{}", addr::ECHO_PORT)) || l.contains(&format!(":{}", addr::HEALTH_PORT))
                })
                .count();
            check(n >= want, || format!("{n} of {want} sockets listening"))
        })
    }

    /// The namespace name of a host.
    pub fn ns(&self, role: Role) -> &str {
        self.hosts.get(role).name()
    }

    /// The run's temp dir (configs, logs, sockets).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A yggdrasil router, if the mesh was started.
    pub fn ygg(&self, role: Role) -> Option<&YggNode> {
        self.ygg.get(&role)
    }

    /// Home's 200::/7 address, read from its admin socket.
    pub fn home_mesh_addr(&self) -> Option<Ipv6Addr> {
        self.ygg.get(&Role::Home).map(|n| n.address)
    }

    /// Which path a backend address (as named in a reply) belongs to: wan1, wan2, mesh, lan.
    pub fn path_of(&self, backend: &str) -> &'static str {
        let Ok(sa) = backend.parse::<SocketAddr>() else {
            return "unknown";
        };
        match sa.ip() {
            ip if ip == IpAddr::from(addr::WAN1) || ip == IpAddr::from(addr::WAN1_V6) => "wan1",
            ip if ip == IpAddr::from(addr::WAN2) => "wan2",
            ip if Some(ip) == self.home_mesh_addr().map(IpAddr::from) => "mesh",
            ip if ip == IpAddr::from(addr::LAN) => "lan",
            _ => "unknown",
        }
    }

    /// Starts a process in `role`, owned by the topology under `name`.
    pub fn spawn(&mut self, role: Role, name: &str, argv: &[String]) -> Result<()> {
        if self.procs.contains_key(name) {
            bail!("a process named {name} already runs");
        }
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let p = Proc::spawn(self.ns(role), name, &argv, self.dir.path())?;
        self.procs.insert(name.to_string(), p);
        Ok(())
    }

    /// Ingress processes started from now on log each connection (its connect, races and
    /// end, with the client's address), so that a failed connection can be followed through
    /// them (`scenario::failures_with_ingress_logs`).
    pub fn log_ingress_connections(&mut self) {
        self.ingress_log = Some("info,ingress::tcp=debug,ingress::connect=debug");
    }

    /// A process started with [`Topology::spawn`].
    pub fn proc_mut(&mut self, name: &str) -> Result<&mut Proc> {
        self.procs.get_mut(name).with_context(|| format!("no process named {name}"))
    }

    /// Stops (SIGTERM, then SIGKILL) and forgets a process.
    pub fn stop(&mut self, name: &str) -> Result<()> {
        let mut p = self.procs.remove(name).with_context(|| format!("no process named {name}"))?;
        p.stop()?;
        Ok(())
    }

    /// Runs a command in `role` with a timeout; its stdout, or an error.
    pub fn exec(&self, role: Role, argv: &[&str], timeout: Duration) -> Result<String> {
        cmd::exec_ok(self.ns(role), argv, timeout)
    }

    /// Cuts a WAN on the router side.
    pub fn cut(&self, wan: Wan, how: Cut) -> Result<()> {
        match how {
            Cut::LinkDown => faults::link_down(self.ns(Role::Inet), wan.router_if()),
            Cut::Blackhole => faults::blackhole(self.ns(Role::Inet), wan.addr().into()),
        }
    }

    /// Undoes [`Topology::cut`].
    pub fn restore(&self, wan: Wan, how: Cut) -> Result<()> {
        match how {
            Cut::LinkDown => faults::link_up(self.ns(Role::Inet), wan.router_if()),
            Cut::Blackhole => faults::unblackhole(self.ns(Role::Inet), wan.addr().into()),
        }
    }

    /// Random loss of `pct` percent each way on a WAN link (0 removes it).
    pub fn loss(&self, wan: Wan, pct: u8) -> Result<()> {
        faults::loss(self.ns(Role::Inet), wan.router_if(), pct)
    }

    /// Delays every packet on a WAN link by `ms` each way (so the round trip grows by twice
    /// that) with the NFQUEUE delayer; 0 removes the delay.
    pub fn delay(&mut self, wan: Wan, ms: u64) -> Result<()> {
        let name = format!("delayer-{}", wan.name());
        let queue = match wan {
            Wan::Wan1 => 11,
            Wan::Wan2 => 12,
        };
        let inet = self.ns(Role::Inet).to_string();
        faults::queue_to(&inet, wan.router_if(), None)?;
        if self.procs.contains_key(&name) {
            self.stop(&name)?;
        }
        if ms == 0 {
            return Ok(());
        }
        let bin = self.bins.loadgen.with_file_name("delayer");
        let argv =
            [bin.display().to_string(), "--queue".into(), queue.to_string(), "--delay-ms".into(), ms.to_string()];
        self.spawn(Role::Inet, &name, &argv)?;
        wait_until(&format!("{name} bound"), Duration::from_secs(5), Duration::from_millis(10), || {
            let p = self.proc_mut(&name)?;
            p.ensure_running()?;
            check(p.stderr().contains("delayer: queue"), || "not yet bound".into())
        })?;
        faults::queue_to(&inet, wan.router_if(), Some(queue))
    }

    /// One TCP exchange with the echo service at `to` from `role` (through `loadgen`): the
    /// backend address that answered.
    pub fn probe_echo(&self, role: Role, to: SocketAddr) -> Result<String> {
        let cfg = LoadConfig {
            targets: vec![to],
            // One connection: the first starts at once, the second would be due after the end.
            interval: Duration::from_secs(10),
            duration: Duration::from_millis(1),
            connect_timeout: Duration::from_secs(2),
            io_timeout: Duration::from_secs(2),
            ..Default::default()
        };
        let mut argv = vec![self.bins.loadgen.display().to_string()];
        argv.extend(cfg.to_args());
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let out = cmd::exec_ok(self.ns(role), &argv, Duration::from_secs(10))?;
        let (_, summary) = loadgen::parse_output(&out);
        let s = summary.with_context(|| format!("loadgen printed no summary: {out}"))?;
        if s.ok != 1 || s.started != 1 {
            bail!("echo via {to} from {} failed: {}", role.as_str(), serde_json::to_string(&s)?);
        }
        s.backends.keys().next().cloned().context("reply named no backend")
    }

    /// Starts `loadgen` in `role` (normally client); see [`LoadRun`].
    pub fn start_load(&mut self, role: Role, name: &str, mut cfg: LoadConfig) -> Result<LoadRun> {
        let records = self.dir.path().join(format!("{name}.records"));
        let stop_file = self.dir.path().join(format!("{name}.stop"));
        cfg.records = Some(records.clone());
        cfg.stop_file = Some(stop_file.clone());
        let mut argv = vec![self.bins.loadgen.display().to_string()];
        argv.extend(cfg.to_args());
        self.spawn(role, name, &argv)?;
        Ok(LoadRun { name: name.into(), records, stop_file, cfg })
    }

    /// The connections the backends in `role` logged.
    pub fn backend_log(&self, role: Role) -> Vec<ConnLog> {
        self.procs.get(&format!("backend-{}", role.as_str())).map(|p| echo::parse_log(&p.stdout())).unwrap_or_default()
    }

    /// Writes the ingress config for `role`, checks it with `ingress check -c`, starts
    /// `ingress -c` there and waits until its admin endpoint and listeners answer.
    pub fn start_ingress(&mut self, role: Role, config: &IngressConfig) -> Result<()> {
        let name = role.as_str().to_string();
        let file = self.dir.path().join(format!("{name}.toml"));
        std::fs::write(&file, config.to_toml()).with_context(|| format!("writing {}", file.display()))?;
        ingress::check(&self.bins.ingress, &file)?;
        let argv = [self.bins.ingress.display().to_string(), "-c".into(), file.display().to_string()];
        if self.procs.contains_key(&name) {
            bail!("a process named {name} already runs");
        }
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let env: Vec<(&str, &str)> = self.ingress_log.map(|f| ("INGRESS_LOG", f)).into_iter().collect();
        let p = Proc::spawn_env(self.ns(role), &name, &argv, self.dir.path(), &env)?;
        self.procs.insert(name.clone(), p);
        let ns = self.ns(role).to_string();
        let ports: Vec<String> = config
            .services
            .iter()
            .flat_map(|s| s.listen.iter())
            .filter_map(|l| l.rsplit(':').next().map(|p| format!(":{p} ")))
            .collect();
        wait_until(&format!("ingress in {name} ready"), Duration::from_secs(15), Duration::from_millis(50), || {
            self.proc_mut(&name)?.ensure_running()?;
            metrics::scrape(&ns, &config.admin_listen)?;
            let out = cmd::exec_ok(&ns, &["ss", "-Hltn"], cmd::DEFAULT_TIMEOUT)?;
            let missing: Vec<&String> = ports.iter().filter(|p| !out.contains(p.as_str())).collect();
            check(missing.is_empty(), || format!("not listening on {missing:?}"))
        })
    }

    /// Scrapes an ingress's metrics.
    pub fn scrape(&self, role: Role) -> Result<Metrics> {
        metrics::scrape(self.ns(role), ingress::ADMIN)
    }
}

/// A `loadgen` started by [`Topology::start_load`].
#[derive(Debug)]
pub struct LoadRun {
    pub name: String,
    pub records: PathBuf,
    pub stop_file: PathBuf,
    pub cfg: LoadConfig,
}

/// What a finished `loadgen` reported.
#[derive(Debug)]
pub struct LoadResult {
    pub ticks: Vec<Tick>,
    pub summary: Summary,
    pub records: Vec<Record>,
}

impl LoadRun {
    /// Ticks printed so far (for live timelines).
    pub fn ticks_so_far(&self, t: &mut Topology) -> Result<Vec<Tick>> {
        Ok(loadgen::parse_output(&t.proc_mut(&self.name)?.stdout()).0)
    }

    /// Asks it to stop starting connections now (the open ones finish).
    pub fn request_stop(&self) -> Result<()> {
        std::fs::write(&self.stop_file, b"stop").context("writing the stop file")
    }

    /// Waits (bounded by its duration and drain time) for it to finish and reads its output.
    pub fn finish(self, t: &mut Topology) -> Result<LoadResult> {
        let c = &self.cfg;
        let bound = c.duration
            + c.connect_timeout * c.targets.len() as u32
            + c.io_timeout * 2
            + c.hold
            + Duration::from_secs(10);
        let p = t.proc_mut(&self.name)?;
        let status = p.wait_exit(bound)?;
        let out = p.stdout();
        let (ticks, summary) = loadgen::parse_output(&out);
        let summary =
            summary.with_context(|| format!("{} ({status}) printed no summary:\n{}", self.name, p.tail(20)))?;
        let records = loadgen::parse_records(&std::fs::read_to_string(&self.records).unwrap_or_default());
        t.stop(&self.name)?;
        Ok(LoadResult { ticks, summary, records })
    }
}
