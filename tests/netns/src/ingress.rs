//! The `ingress` binary in the topology: its TOML config (the shape `ingress -c` reads) and the
//! names of the metrics the scenarios read.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv6Addr};
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Result};

use crate::cmd;
use crate::topology::addr;

/// Metric names the ingress exports (labels `pool`, `path` = wan1/wan2/mesh).
pub mod names {
    pub const PATH_CONNECTS: &str = "ingress_path_connects_total";
    pub const PATH_CONNECT_FAILURES: &str = "ingress_path_connect_failures_total";
    pub const PATH_UP: &str = "ingress_path_up";
    pub const PATH_HEALTH_FACTOR: &str = "ingress_path_health_factor";
    pub const PATH_ACTIVE: &str = "ingress_path_active_connections";
    pub const MESH_FAILOVERS: &str = "ingress_mesh_failovers_total";
    pub const LISTENER_ACCEPTED: &str = "ingress_listener_accepted_total";
    pub const PATH_HAS_ADDRESS: &str = "ingress_path_has_address";
    pub const PATH_DNS_LOOKUPS: &str = "ingress_path_dns_lookups_total";
    pub const PATH_DNS_LEADS_BACK: &str = "ingress_path_dns_leads_back";
    pub const PATH_ADDRESS_CHANGES: &str = "ingress_path_address_changes_total";
}

/// Where the admin endpoint listens inside each ingress namespace.
pub const ADMIN: &str = "127.0.0.1:9180";

/// One path of the pool.
#[derive(Debug, Clone)]
pub struct PathCfg {
    pub name: String,
    pub address: IpAddr,
    pub weight: u32,
    /// A DNS name to use instead of `address`, with its `family` (paths by name).
    pub host: Option<(String, &'static str)>,
}

/// Active health checks.
#[derive(Debug, Clone)]
pub struct HealthCfg {
    pub interval: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
    pub port: u16,
    /// `flap_half_life`; `None`: the default (30 s).
    pub flap_half_life: Option<Duration>,
}

/// One `[[service]]`.
#[derive(Debug, Clone)]
pub struct ServiceCfg {
    pub name: String,
    pub listen: Vec<String>,
    pub upstream_port: Option<u16>,
}

/// The ingress config the scenarios use: pool `home` with wan1 (weight 3), wan2 (weight 1) and
/// the mesh, service `echo` on port [`addr::ECHO_PORT`].
#[derive(Debug, Clone)]
pub struct IngressConfig {
    pub admin_listen: String,
    pub paths: Vec<PathCfg>,
    pub mesh: Option<Ipv6Addr>,
    pub connect_timeout: Duration,
    pub health: HealthCfg,
    pub services: Vec<ServiceCfg>,
    /// The body of a `[resolver]` section (paths by name), if any.
    pub resolver: Option<String>,
    /// `admin.token_file`: runtime control (drain, weight) on with this bearer token file.
    pub token_file: Option<std::path::PathBuf>,
}

impl IngressConfig {
    /// The standard config for the topology; `mesh` is home's yggdrasil address.
    pub fn standard(mesh: Option<Ipv6Addr>) -> Self {
        Self {
            admin_listen: ADMIN.into(),
            paths: vec![
                PathCfg { name: "wan1".into(), address: addr::WAN1.into(), weight: 3, host: None },
                PathCfg { name: "wan2".into(), address: addr::WAN2.into(), weight: 1, host: None },
            ],
            mesh,
            connect_timeout: Duration::from_millis(300),
            health: HealthCfg {
                interval: Duration::from_millis(500),
                timeout: Duration::from_millis(400),
                rise: 2,
                fall: 2,
                port: addr::HEALTH_PORT,
                flap_half_life: None,
            },
            services: vec![ServiceCfg {
                name: "echo".into(),
                listen: vec![format!("0.0.0.0:{}", addr::ECHO_PORT)],
                upstream_port: Some(addr::ECHO_PORT),
            }],
            resolver: None,
            token_file: None,
        }
    }

    /// The TOML text.
    pub fn to_toml(&self) -> String {
        let ms = |d: Duration| format!("\"{}ms\"", d.as_millis());
        let mut s = String::new();
        let _ = writeln!(s, "[admin]\nlisten = \"{}\"", self.admin_listen);
        if let Some(f) = &self.token_file {
            let _ = writeln!(s, "token_file = \"{}\"", f.display());
        }
        s.push('\n');
        if let Some(r) = &self.resolver {
            let _ = writeln!(s, "[resolver]\n{r}\n");
        }
        let _ = writeln!(s, "[pool.home]");
        let paths: Vec<String> = self
            .paths
            .iter()
            .map(|p| match &p.host {
                None => format!("{{ name = \"{}\", address = \"{}\", weight = {} }}", p.name, p.address, p.weight),
                Some((host, family)) => format!(
                    "{{ name = \"{}\", address = \"{host}\", family = \"{family}\", weight = {} }}",
                    p.name, p.weight
                ),
            })
            .collect();
        let _ = writeln!(s, "paths = [ {} ]", paths.join(", "));
        if let Some(m) = self.mesh {
            let _ = writeln!(s, "mesh = \"{m}\"");
        }
        let _ = writeln!(s, "connect_timeout = {}", ms(self.connect_timeout));
        let h = &self.health;
        let half_life = h.flap_half_life.map(|d| format!(", flap_half_life = {}", ms(d))).unwrap_or_default();
        let _ = writeln!(
            s,
            "health = {{ interval = {}, timeout = {}, rise = {}, fall = {}, port = {}{half_life} }}\n",
            ms(h.interval),
            ms(h.timeout),
            h.rise,
            h.fall,
            h.port
        );
        for svc in &self.services {
            let listen: Vec<String> = svc.listen.iter().map(|l| format!("\"{l}\"")).collect();
            let _ = writeln!(s, "[[service]]\nname = \"{}\"\nlisten = [{}]", svc.name, listen.join(", "));
            let _ = writeln!(s, "protocol = \"tcp\"\npool = \"home\"");
            if let Some(p) = svc.upstream_port {
                let _ = writeln!(s, "upstream_port = {p}");
            }
            s.push('\n');
        }
        s
    }
}

/// `ingress check -c FILE`: errors with its output unless it accepts the file.
pub fn check(bin: &Path, file: &Path) -> Result<()> {
    if !bin.is_file() {
        bail!("{} does not exist: build it with `cargo build -p ingress`", bin.display());
    }
    let (b, f) = (bin.display().to_string(), file.display().to_string());
    let out = cmd::run_full(&[&b, "check", "-c", &f], None, Duration::from_secs(10))?;
    if !out.status.success() {
        bail!(
            "`{b} check -c {f}` rejected the harness config ({}):\n{}{}",
            out.status,
            out.stderr.trim(),
            out.stdout.trim()
        );
    }
    Ok(())
}
