//! Ingress configuration: a raw serde shape (unknown keys rejected everywhere) and a
//! validated `Config` with typed fields. `ingress check` and start-up share `load`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use figment::providers::{Env, Format, Toml};
use figment::Figment;
use serde::Deserialize;
use shared::config_check::{Choice, Problems};
use shared::ports::{days, hours, ms, parse_host_port, secs, DurationRange, ListenSpec};

/// The range each duration field accepts (documented next to its default in
/// `examples/ingress.toml`). Floors keep a typo from turning into a busy loop (a `1ns` probe
/// interval), ceilings keep deadlines far from instant overflow and catch unit mistakes.
pub mod ranges {
    use super::*;
    /// `limits.drain_timeout`, default 30s.
    pub const DRAIN_TIMEOUT: DurationRange = DurationRange::new(ms(100), hours(1));
    /// `pool.*.connect_timeout`, default 300ms.
    pub const CONNECT_TIMEOUT: DurationRange = DurationRange::new(ms(10), secs(60));
    /// `pool.*.final_connect_timeout`, default 3s.
    pub const FINAL_CONNECT_TIMEOUT: DurationRange = DurationRange::new(ms(10), secs(120));
    /// `pool.*.health.interval`, default 500ms: at most 20 probe rounds a second per pool.
    pub const HEALTH_INTERVAL: DurationRange = DurationRange::new(ms(50), hours(1));
    /// `pool.*.health.timeout`, default 400ms.
    pub const HEALTH_TIMEOUT: DurationRange = DurationRange::new(ms(10), secs(60));
    /// `pool.*.health.down_interval`, default 100ms: probes of a down path (overlapping, so
    /// a restored path answers the first probe sent after the restore).
    pub const DOWN_INTERVAL: DurationRange = DurationRange::new(ms(10), hours(1));
    /// `service.udp_reply_timeout`, default 100ms: how long a flow that expects replies may
    /// send unanswered before its path is suspect.
    pub const UDP_REPLY_TIMEOUT: DurationRange = DurationRange::new(ms(10), secs(60));
    /// `pool.*.health.flap_half_life`, default 30s: how fast a path's flap penalty decays.
    pub const FLAP_HALF_LIFE: DurationRange = DurationRange::new(secs(1), hours(1));
    /// `pool.*.health.flap_max_hold`, default 120s: the longest hold after the last fall.
    pub const FLAP_MAX_HOLD: DurationRange = DurationRange::new(secs(1), days(1));
    /// `pool.*.health.slow_start`, default 5s ("0s": a full share at once).
    pub const SLOW_START: DurationRange = DurationRange::new(ms(0), hours(1));
    /// `pool.*.health.flap_penalty` (0 turns damping off), `flap_suppress`, `flap_reuse`: 0..=this.
    pub const MAX_PENALTY: u32 = 1_000_000;
    /// `service.idle_timeout`, default 1h (tcp) / 60s (udp).
    pub const IDLE_TIMEOUT: DurationRange = DurationRange::new(ms(100), days(7));
    /// `service.peek_timeout`, default 5s.
    pub const PEEK_TIMEOUT: DurationRange = DurationRange::new(ms(100), secs(60));
    /// `resolver.min_refresh`, default 5s: the least time between two lookups of a name.
    pub const MIN_REFRESH: DurationRange = DurationRange::new(secs(1), hours(1));
    /// `resolver.max_refresh`, default 5m: the most, whatever the record's TTL.
    pub const MAX_REFRESH: DurationRange = DurationRange::new(secs(1), days(1));
    /// `resolver.timeout`, default 2s: one lookup.
    pub const LOOKUP_TIMEOUT: DurationRange = DurationRange::new(ms(100), secs(30));
    /// `limits.max_connections`, `service.max_connections`, `service.max_flows`: 1..=this.
    pub const MAX_COUNT: u32 = 1_000_000;
}
use ranges::*;

/// Every problem found in a config file, each naming its field: `FILE: invalid
/// configuration:` and a `  - field: message` line per problem, as the local proxy prints.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {problems}")]
pub struct ConfigError {
    pub file: String,
    pub problems: Problems,
}

/// Most listening ports of a service with `udp_reuseport` (each takes a socket per loop).
/// Environment variables that override the config file start with this (`INGRESS_ADMIN__LISTEN`
/// for `admin.listen`).
pub const ENV_PREFIX: &str = "INGRESS_";

pub const MAX_REUSEPORT_PORTS: usize = 64;

/// Most worker threads `limits.threads` may ask for.
const MAX_THREADS: u32 = 1024;

/// Most paths a pool may hold (WAN paths plus the mesh tier): the data path keeps tried
/// sets as bitmasks and candidates in a stack array of this size. Validation refuses more.
pub const MAX_PATHS: usize = 32;

// ---------- raw shape ----------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    log_format: Option<Choice<shared::logging::LogFormat>>,
    #[serde(default)]
    admin: Option<RawAdmin>,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    pool: BTreeMap<String, RawPool>,
    #[serde(default)]
    service: Vec<RawService>,
    #[serde(default)]
    resolver: RawResolver,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawResolver {
    nameservers: Option<Vec<String>>,
    min_refresh: Option<String>,
    max_refresh: Option<String>,
    timeout: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    listen: String,
    token_file: Option<String>,
    allowed_hosts: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_connections: Option<u32>,
    drain_timeout: Option<String>,
    threads: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPool {
    #[serde(default)]
    paths: Vec<RawPath>,
    mesh: Option<String>,
    connect_timeout: Option<String>,
    final_connect_timeout: Option<String>,
    max_attempts: Option<u32>,
    balance: Option<Choice<shared::balance::Policy>>,
    #[serde(default)]
    health: RawHealth,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPath {
    name: String,
    address: String,
    weight: Option<u32>,
    family: Option<Choice<AddressFamily>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    interval: Option<String>,
    timeout: Option<String>,
    down_interval: Option<String>,
    rise: Option<u32>,
    fall: Option<u32>,
    port: Option<u16>,
    check: Option<Choice<Check>>,
    http_path: Option<String>,
    http_host: Option<String>,
    flap_penalty: Option<u32>,
    flap_suppress: Option<u32>,
    flap_reuse: Option<u32>,
    flap_half_life: Option<String>,
    flap_max_hold: Option<String>,
    slow_start: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    name: String,
    listen: Vec<String>,
    protocol: Option<Choice<Protocol>>,
    mode: Option<Choice<Mode>>,
    pool: String,
    upstream_port: Option<u16>,
    proxy_protocol: Option<Choice<ProxyProtocol>>,
    idle_timeout: Option<String>,
    max_connections: Option<u32>,
    max_flows: Option<u32>,
    udp_expect_replies: Option<bool>,
    udp_reply_timeout: Option<String>,
    udp_recv_buffer: Option<usize>,
    udp_reuseport: Option<bool>,
    #[serde(default)]
    routes: Vec<RawRoute>,
    peek_timeout: Option<String>,
    peek_max: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    names: Vec<String>,
    pool: String,
}

/// `pool.*.health.check`: what a probe does (see [`CheckKind`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum Check {
    Tcp,
    ProxyV2,
    Http,
}

/// `service.proxy_protocol`: whether the upstream gets a PROXY v2 header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum ProxyProtocol {
    #[serde(rename = "none")]
    Off,
    V2,
}

// ---------- validated shape ----------

/// A validated ingress configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Log lines as text or JSON (read at start only).
    pub log_format: shared::logging::LogFormat,
    /// Address of the metrics/status listener; none when absent.
    pub admin: Option<SocketAddr>,
    /// The bearer token runtime control needs (`admin.token_file`, read at each load);
    /// none: the control endpoints are off.
    pub admin_token: Option<shared::admin::token::Token>,
    /// Names the admin listener answers to besides IP addresses and localhost
    /// (`admin.allowed_hosts`; see `shared::admin`).
    pub admin_hosts: shared::admin::AllowedHosts,
    /// Connections across all services; further clients are refused (closed at once).
    pub max_connections: u32,
    /// How long `SIGTERM` waits for established connections before exiting.
    pub drain_timeout: Duration,
    /// Event loops serving TCP connections (`shared::workers`); `None`: one per core; 1: the
    /// main thread alone. Read at start only.
    pub threads: Option<usize>,
    pub pools: BTreeMap<String, PoolConfig>,
    pub services: Vec<ServiceConfig>,
    /// How paths given by DNS name are looked up.
    pub resolver: ResolverConfig,
    /// What passes but may not do what was meant, each under its field: printed by `check`,
    /// logged at start and at each reload.
    pub warnings: Vec<shared::config_check::FieldError>,
}

/// `[resolver]`: the servers asked for paths given by name, and how often.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolverConfig {
    /// Empty: the system's resolvers (`/etc/resolv.conf`).
    pub nameservers: Vec<SocketAddr>,
    /// A name is looked up again when its TTL runs out, but not sooner than this ...
    pub min_refresh: Duration,
    /// ... and not later than this.
    pub max_refresh: Duration,
    /// Bound on one lookup.
    pub timeout: Duration,
}

/// Which addresses of a name a path may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AddressFamily {
    /// A records only.
    Ipv4,
    /// AAAA records only.
    Ipv6,
    /// Both; the path uses one address at a time (see docs/internals.md).
    #[default]
    Any,
}

impl AddressFamily {
    /// The lookups a path of this family needs, in the order its candidates are tried.
    pub fn lookups(self) -> &'static [shared::dns::Family] {
        use shared::dns::Family::{V4, V6};
        match self {
            AddressFamily::Ipv4 => &[V4],
            AddressFamily::Ipv6 => &[V6],
            AddressFamily::Any => &[V6, V4],
        }
    }
}

/// Where a path leads: a fixed address, or a DNS name followed as it changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Ip(IpAddr),
    Name { host: String, family: AddressFamily },
}

impl Target {
    /// The fixed address, if the path has one.
    pub fn ip(&self) -> Option<IpAddr> {
        match self {
            Target::Ip(ip) => Some(*ip),
            Target::Name { .. } => None,
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Ip(ip) => write!(f, "{ip}"),
            Target::Name { host, .. } => f.write_str(host),
        }
    }
}

/// A path's `address`: an IP (`203.0.113.10`, `[2001:db8::1]:8443`) or a DNS name
/// (`wan1.home.example.org`, `wan1.home.example.org:8443`), checked for syntax only.
fn parse_target(s: &str, family: AddressFamily) -> Result<(Target, Option<u16>), String> {
    let ip_error = match parse_host_port(s) {
        Ok((ip, port)) => return Ok((Target::Ip(ip), port)),
        Err(e) => e,
    };
    let (host, port) = match s.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => match port.parse::<u16>() {
            Ok(0) | Err(_) => return Err(format!("`{s}`: `{port}` is not a port (1-65535)")),
            Ok(p) => (host, Some(p)),
        },
        _ => (s, None),
    };
    match shared::dns::parse_name(host) {
        // A single label would be asked as a top-level domain: a typo, not a home's name.
        Some(host) if !host.contains('.') => {
            Err(format!("`{s}` is neither an IP address nor a fully qualified DNS name (like wan1.example.org)"))
        }
        Some(host) => Ok((Target::Name { host, family }, port)),
        // Brackets, colons or a numeric last label: meant as an address, so say what is wrong with it.
        None if host.contains(['[', ']', ':'])
            || host.rsplit('.').next().is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit())) =>
        {
            Err(ip_error)
        }
        None => Err(format!("`{s}` is neither an IP address nor a DNS name")),
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct PoolConfig {
    pub name: String,
    pub paths: Vec<PathConfig>,
    /// The mesh tier: the local proxy's Yggdrasil address, used only when no WAN path is up.
    pub mesh: Option<PathConfig>,
    /// Connect timeout of an attempt while other candidate paths remain.
    pub connect_timeout: Duration,
    /// Connect timeout of the last attempt (long enough to outlive one lost SYN).
    pub final_connect_timeout: Duration,
    /// Paths tried per client connection before giving up.
    pub max_attempts: u32,
    /// How new connections (and, apart, new UDP flows) are spread over healthy paths.
    pub balance: shared::balance::Policy,
    pub health: HealthConfig,
    /// Where this pool's traffic would land on this host (`crate::self_loop`): a path's
    /// address is checked against it, a name's answers as they come.
    pub own_ports: crate::self_loop::OwnPorts,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PathConfig {
    pub name: String,
    pub target: Target,
    /// A fixed upstream port for this path, overriding the service's.
    pub port: Option<u16>,
    pub weight: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HealthConfig {
    pub interval: Duration,
    pub timeout: Duration,
    /// Probe interval while a path is down; its probes overlap (one need not time out
    /// before the next starts), so a restored path is seen within about this long.
    pub down_interval: Duration,
    pub rise: u32,
    pub fall: u32,
    /// Port probed on each path (unless the path fixes its own port).
    pub port: u16,
    pub check: CheckKind,
    /// Flap damping and slow start of the pool's paths (`flap_*`, `slow_start`).
    pub damping: shared::damping::DampingConfig,
}

#[derive(Debug, Clone, PartialEq)]
pub enum CheckKind {
    /// A TCP connect that completes.
    Tcp,
    /// Connect, send a PROXY v2 LOCAL header, expect the peer not to reset.
    ProxyV2Local,
    /// `GET path` with Host; a 2xx/3xx status line is healthy.
    Http { path: String, host: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Bytes pass through untouched.
    Plain,
    /// TLS passthrough routed by the ClientHello's SNI.
    Sni,
    /// Plain HTTP routed by the request's Host.
    Http,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServiceConfig {
    pub name: String,
    pub listen: Vec<ListenSpec>,
    pub protocol: Protocol,
    pub mode: Mode,
    pub pool: String,
    pub upstream_port: Option<u16>,
    pub proxy_protocol: bool,
    pub idle_timeout: Duration,
    pub max_connections: Option<u32>,
    /// UDP only: most flows (one upstream socket each) before new clients are dropped.
    pub max_flows: usize,
    /// UDP only: the service answers its clients, so a flow that has been answered before
    /// and keeps sending unanswered for `udp_reply_timeout` makes its path suspect.
    pub udp_expect_replies: bool,
    pub udp_reply_timeout: Duration,
    /// UDP only: the receive queue of the listening sockets and of each flow's socket, bytes.
    pub udp_recv_buffer: usize,
    /// UDP only: each port served by one socket per event loop (`SO_REUSEPORT`), its clients
    /// spread over them by the kernel, instead of one socket on one loop.
    pub udp_reuseport: bool,
    /// `sni`/`http` modes: names (exact or `*.suffix`) to pools; `pool` is the default.
    pub routes: Vec<RouteConfig>,
    /// `sni`/`http` modes: how long a client may take to send its ClientHello/request head.
    pub peek_timeout: Duration,
    /// `sni`/`http` modes: most bytes read while looking for the name.
    pub peek_max: usize,
}

impl ServiceConfig {
    /// Sockets on each of its listening ports when served by `loops` event loops.
    pub fn sockets_per_port(&self, loops: usize) -> usize {
        if self.protocol == Protocol::Udp && self.udp_reuseport {
            loops.max(1)
        } else {
            1
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct RouteConfig {
    pub names: Vec<String>,
    pub pool: String,
}

impl Config {
    /// Load a file, apply `INGRESS_`-prefixed environment overrides (`INGRESS_LIMITS__MAX_CONNECTIONS=5`),
    /// and validate.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let file = path.display().to_string();
        if !path.exists() {
            let mut problems = Problems::new();
            problems.push("", "file not found");
            return Err(ConfigError { file, problems });
        }
        let figment =
            Figment::new().merge(Toml::file(path)).merge(Env::prefixed(ENV_PREFIX).ignore(&["LOG"]).split("__"));
        Self::from_figment(figment, file, shared::own_addrs::is_own)
    }

    /// Parse TOML text (no environment overrides); used by tests. Of this host's addresses
    /// only loopback's count as its own (`crate::self_loop`), so that the result does not
    /// depend on the machine's interfaces.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        Self::from_figment(Figment::new().merge(Toml::string(text)), "<string>".into(), shared::own_addrs::always_own)
    }

    /// `own`: whether an address is this host's (`shared::own_addrs::is_own`).
    fn from_figment(figment: Figment, file: String, own: fn(IpAddr) -> bool) -> Result<Self, ConfigError> {
        let raw: RawConfig = figment.extract().map_err(|e| {
            // Not TOML, a key unknown or of the wrong type: figment's text names the key and file.
            let mut problems = Problems::new();
            for e in e {
                problems.push("", e.to_string());
            }
            ConfigError { file: file.clone(), problems }
        })?;
        validate(raw, own).map_err(|problems| ConfigError { file, problems })
    }
}

/// A count field that, when present, must lie in 1..=max.
fn count(p: &mut Problems, field: &str, v: Option<u32>, max: u32) {
    if let Some(n) = v {
        if n == 0 || n > max {
            p.push(field, format!("must be 1..={max} (got {n})"));
        }
    }
}

/// A port field that, when present, must be 1-65535 (a destination, never "any").
fn port(p: &mut Problems, field: &str, v: Option<u16>) {
    if v == Some(0) {
        p.push(field, "port 0 is not a port (1-65535)");
    }
}

/// A pool's flap damping knobs (`field` is the pool's `health` table).
fn damping_config(p: &mut Problems, field: &str, h: &RawHealth) -> shared::damping::DampingConfig {
    let d = shared::damping::DampingConfig::default();
    let f = |k: &str| format!("{field}.{k}");
    let mut count = |k: &str, v: Option<u32>, default: u32| match v {
        Some(n) if n > MAX_PENALTY => {
            p.push(f(k), format!("must be 0..={MAX_PENALTY} (got {n})"));
            default
        }
        Some(n) => n,
        None => default,
    };
    let cfg = shared::damping::DampingConfig {
        penalty: count("flap_penalty", h.flap_penalty, d.penalty),
        suppress: count("flap_suppress", h.flap_suppress, d.suppress),
        reuse: count("flap_reuse", h.flap_reuse, d.reuse),
        half_life: p.duration(&f("flap_half_life"), h.flap_half_life.as_deref(), d.half_life, FLAP_HALF_LIFE),
        max_hold: p.duration(&f("flap_max_hold"), h.flap_max_hold.as_deref(), d.max_hold, FLAP_MAX_HOLD),
        slow_start: p.duration(&f("slow_start"), h.slow_start.as_deref(), d.slow_start, SLOW_START),
    };
    for (k, problem) in cfg.problems() {
        p.push(f(k), problem);
    }
    cfg
}

fn validate(raw: RawConfig, own: fn(IpAddr) -> bool) -> Result<Config, Problems> {
    let mut p = Problems::new();
    let mut warnings = Vec::new();

    // Port 0 here means "any free port" (tests read the bound address back).
    let admin = raw.admin.as_ref().and_then(|a| match a.listen.parse::<SocketAddr>() {
        Ok(sa) => Some(sa),
        Err(_) => {
            p.push("admin.listen", format!("`{}` is not IP:PORT", a.listen));
            None
        }
    });
    let admin_token = raw.admin.as_ref().and_then(|a| a.token_file.as_ref()).and_then(|f| {
        if !Path::new(f).is_absolute() {
            p.push("admin.token_file", format!("`{f}` is not an absolute path"));
            return None;
        }
        shared::admin::token::Token::from_file(Path::new(f)).map_err(|e| p.push("admin.token_file", e)).ok()
    });
    let admin_hosts = raw.admin.as_ref().and_then(|a| a.allowed_hosts.as_deref()).unwrap_or_default();
    let admin_hosts = shared::admin::AllowedHosts::new(admin_hosts).unwrap_or_else(|e| {
        p.push("admin.allowed_hosts", e);
        Default::default()
    });
    let log_format = p.choice("log_format", raw.log_format.as_ref(), shared::logging::LogFormat::Text);
    let max_connections = raw.limits.max_connections.unwrap_or(20_000);
    count(&mut p, "limits.max_connections", Some(max_connections), MAX_COUNT);
    let drain_timeout =
        p.duration("limits.drain_timeout", raw.limits.drain_timeout.as_deref(), secs(30), DRAIN_TIMEOUT);
    count(&mut p, "limits.threads", raw.limits.threads, MAX_THREADS);
    let threads = raw.limits.threads.map(|n| n as usize);

    let mut pools = BTreeMap::new();
    for (name, rp) in &raw.pool {
        let f = |field: &str| format!("pool.{name}.{field}");
        let mut paths = Vec::new();
        let mut names = HashSet::new();
        // `ctl` and the admin API name a path POOL/NAME.
        if name.contains('/') {
            p.push(format!("pool.{name}"), "a pool's name cannot contain `/` (paths are named POOL/NAME)");
        }
        if rp.paths.is_empty() && rp.mesh.is_none() {
            p.push(format!("pool.{name}"), "needs at least one entry in `paths` or a `mesh` address");
        }
        // The pool keeps its paths (mesh included) in a fixed-size array: refuse what it
        // could not hold rather than let it drop paths, or the mesh tier, silently.
        let slots = rp.paths.len() + usize::from(rp.mesh.is_some());
        if slots > MAX_PATHS {
            p.push(
                f("paths"),
                format!(
                    "{} paths{} is more than the {} a pool holds",
                    rp.paths.len(),
                    if rp.mesh.is_some() { " plus the mesh tier" } else { "" },
                    MAX_PATHS
                ),
            );
        }
        for (i, rpath) in rp.paths.iter().enumerate() {
            let field = format!("pool.{name}.paths[{i}]");
            if rpath.name.is_empty() || rpath.name == "mesh" {
                p.push(format!("{field}.name"), "must be non-empty and not `mesh` (reserved for the mesh tier)");
            }
            if rpath.name.contains('/') {
                p.push(format!("{field}.name"), "cannot contain `/` (paths are named POOL/NAME)");
            }
            if !names.insert(rpath.name.clone()) {
                p.push(format!("{field}.name"), format!("`{}` is used twice in this pool", rpath.name));
            }
            let weight = rpath.weight.unwrap_or(1);
            if weight == 0 || weight > 1000 {
                p.push(format!("{field}.weight"), format!("must be 1..=1000 (got {weight})"));
            }
            let family = p.choice(&format!("{field}.family"), rpath.family.as_ref(), AddressFamily::default());
            match parse_target(&rpath.address, family) {
                Ok((target, port)) => {
                    if rpath.family.is_some() && matches!(target, Target::Ip(_)) {
                        p.push(format!("{field}.family"), "only for an address given by name");
                    }
                    paths.push(PathConfig { name: rpath.name.clone(), target, port, weight })
                }
                Err(e) => p.push(format!("{field}.address"), e),
            }
        }
        // The mesh tier by name: the local proxy's Yggdrasil AAAA (Yggdrasil is IPv6 only).
        let mesh = rp.mesh.as_ref().and_then(|m| match parse_target(m, AddressFamily::Ipv6) {
            Ok((target, port)) => Some(PathConfig { name: "mesh".into(), target, port, weight: 1 }),
            Err(e) => {
                p.push(f("mesh"), e);
                None
            }
        });
        if let Some(ip) = mesh.as_ref().and_then(|m| m.target.ip()).filter(|ip| !shared::ygg::is_mesh_address(*ip)) {
            warnings.push(shared::config_check::FieldError {
                field: f("mesh"),
                message: format!(
                    "{ip} is not a Yggdrasil address (200::/7): the fallback goes there all the same, but not \
                     over the mesh (the home's address is its local proxy's, `yggdrasil -address`)"
                ),
            });
        }
        let connect_timeout =
            p.duration(&f("connect_timeout"), rp.connect_timeout.as_deref(), ms(300), CONNECT_TIMEOUT);
        let final_connect_timeout = p.duration(
            &f("final_connect_timeout"),
            rp.final_connect_timeout.as_deref(),
            secs(3),
            FINAL_CONNECT_TIMEOUT,
        );
        let max_attempts = rp.max_attempts.unwrap_or(3);
        if max_attempts == 0 || max_attempts > 10 {
            p.push(f("max_attempts"), format!("must be 1..=10 (got {max_attempts})"));
        }
        let h = &rp.health;
        let interval = p.duration(&f("health.interval"), h.interval.as_deref(), ms(500), HEALTH_INTERVAL);
        let timeout = p.duration(&f("health.timeout"), h.timeout.as_deref(), ms(400), HEALTH_TIMEOUT);
        let down_interval = p.duration(&f("health.down_interval"), h.down_interval.as_deref(), ms(100), DOWN_INTERVAL);
        port(&mut p, &f("health.port"), h.port);
        let rise = h.rise.unwrap_or(2);
        let fall = h.fall.unwrap_or(2);
        if rise == 0 || rise > 100 {
            p.push(f("health.rise"), "must be 1..=100");
        }
        if fall == 0 || fall > 100 {
            p.push(f("health.fall"), "must be 1..=100");
        }
        let check = match p.choice(&f("health.check"), h.check.as_ref(), Check::Tcp) {
            Check::Tcp => CheckKind::Tcp,
            Check::ProxyV2 => CheckKind::ProxyV2Local,
            Check::Http => CheckKind::Http {
                path: h.http_path.clone().unwrap_or_else(|| "/healthz".into()),
                host: h.http_host.clone().unwrap_or_else(|| "localhost".into()),
            },
        };
        if !matches!(check, CheckKind::Http { .. }) && (h.http_path.is_some() || h.http_host.is_some()) {
            p.push(f("health"), "http_path/http_host need check = \"http\"");
        }
        // Both go into the probe's request as written.
        if let Some(problem) = h.http_path.as_deref().and_then(shared::health::check_path_problem) {
            p.push(f("health.http_path"), problem);
        }
        if let Some(problem) = h.http_host.as_deref().and_then(shared::health::check_host_problem) {
            p.push(f("health.http_host"), problem);
        }
        // The probe port defaults to the first port of the first TCP service using the pool:
        // probes are TCP connects, and a UDP service's port (WireGuard's 51820) has nothing
        // answering TCP at home, which would fail every probe and keep every path down. Only
        // with no TCP service, the first UDP one's, as before (the home may answer TCP there
        // too, as TURN and DNS do).
        let first_port = |tcp: bool| {
            raw.service
                .iter()
                .filter(|s| &s.pool == name)
                .filter(|s| {
                    let udp = s.protocol.as_ref().is_some_and(|p| matches!(p.known(), Ok(Protocol::Udp)));
                    udp != tcp
                })
                .find_map(|s| {
                    s.upstream_port
                        .or_else(|| s.listen.first().and_then(|l| l.parse::<ListenSpec>().ok()).map(|l| l.ports.first))
                })
        };
        let port = h.port.or_else(|| first_port(true)).or_else(|| first_port(false));
        let probes_udp_port = h.port.is_none() && first_port(true).is_none();
        if let Some(udp) = port.filter(|_| probes_udp_port && paths.iter().chain(mesh.iter()).any(|p| p.port.is_none()))
        {
            warnings.push(shared::config_check::FieldError {
                field: f("health.port"),
                message: format!(
                    "not set, and no TCP service names this pool: its probes (TCP connects) go to {udp}, a UDP \
                     service's port; if home answers only UDP there (WireGuard), every probe fails and every path \
                     reads as down. Set it to a TCP port home answers on (the local proxy's https_port)"
                ),
            });
        }
        let port = match port {
            Some(port) if port != 0 => port,
            _ => {
                if paths.iter().chain(mesh.iter()).any(|p| p.port.is_none()) {
                    p.push(f("health.port"), "set a port to probe (no service gives one)");
                }
                0
            }
        };
        let damping = damping_config(&mut p, &f("health"), h);
        let health = HealthConfig { interval, timeout, down_interval, rise, fall, port, check, damping };
        pools.insert(
            name.clone(),
            PoolConfig {
                name: name.clone(),
                paths,
                mesh,
                connect_timeout,
                final_connect_timeout,
                max_attempts,
                balance: p.choice(&f("balance"), rp.balance.as_ref(), shared::balance::Policy::default()),
                health,
                own_ports: Default::default(),
            },
        );
    }

    let rr = &raw.resolver;
    let min_refresh = p.duration("resolver.min_refresh", rr.min_refresh.as_deref(), secs(5), MIN_REFRESH);
    let max_refresh = p.duration("resolver.max_refresh", rr.max_refresh.as_deref(), secs(300), MAX_REFRESH);
    if min_refresh > max_refresh {
        p.push("resolver.min_refresh", format!("{min_refresh:?} is more than resolver.max_refresh ({max_refresh:?})"));
    }
    let timeout = p.duration("resolver.timeout", rr.timeout.as_deref(), secs(2), LOOKUP_TIMEOUT);
    let mut nameservers = Vec::new();
    for (i, ns) in rr.nameservers.iter().flatten().enumerate() {
        match parse_host_port(ns) {
            Ok((ip, port)) => nameservers.push(SocketAddr::new(ip, port.unwrap_or(53))),
            Err(e) => p.push(format!("resolver.nameservers[{i}]"), e),
        }
    }
    let resolver = ResolverConfig { nameservers, min_refresh, max_refresh, timeout };

    let mut services = Vec::new();
    let mut service_names = HashSet::new();
    let mut bound: HashSet<(Protocol, IpAddr, u16)> = HashSet::new();
    let mut tcp_ports = WildcardPorts::default();
    // UDP sockets are bound without `SO_REUSEADDR`: the same rule holds, unless both have
    // `SO_REUSEPORT` (`udp_reuseport`, on one loop too).
    let mut udp_ports = WildcardPorts::default();
    for (i, rs) in raw.service.iter().enumerate() {
        let field = if rs.name.is_empty() { format!("service[{i}]") } else { format!("service `{}`", rs.name) };
        if rs.name.is_empty() {
            p.push(format!("{field}.name"), "must not be empty");
        }
        if !service_names.insert(rs.name.clone()) {
            p.push(format!("{field}.name"), "used by two services");
        }
        let protocol = p.choice(&format!("{field}.protocol"), rs.protocol.as_ref(), Protocol::Tcp);
        let mode = p.choice(&format!("{field}.mode"), rs.mode.as_ref(), Mode::Plain);
        if protocol == Protocol::Udp && mode != Mode::Plain {
            p.push(format!("{field}.mode"), "udp services are plain only");
        }
        if !raw.pool.contains_key(&rs.pool) {
            p.push(format!("{field}.pool"), format!("no pool named `{}`", rs.pool));
        }
        if rs.listen.is_empty() {
            p.push(format!("{field}.listen"), "needs at least one address");
        }
        let mut listen = Vec::new();
        for (j, l) in rs.listen.iter().enumerate() {
            match l.parse::<ListenSpec>() {
                Ok(spec) => {
                    // IPv6 listeners are IPv6-only (so `0.0.0.0` and `::` can both be listed):
                    // a mapped address would never bind.
                    if let Some(v4) = match spec.ip {
                        IpAddr::V6(v6) => v6.to_ipv4_mapped(),
                        IpAddr::V4(_) => None,
                    } {
                        let why = "an IPv4-mapped address never binds here (listeners are IPv6-only)";
                        p.push(format!("{field}.listen[{j}]"), format!("`{l}`: {why}; write `{v4}:{}`", spec.ports));
                        continue;
                    }
                    if !spec.ports.is_single() && rs.upstream_port.is_some() {
                        p.push(
                            format!("{field}.upstream_port"),
                            format!("cannot be set with the port range `{l}` (port N forwards to N)"),
                        );
                    }
                    for port in spec.ports.iter() {
                        // Two UDP sockets that both set SO_REUSEPORT may share a port so.
                        let shared = protocol == Protocol::Udp && rs.udp_reuseport == Some(true);
                        let ports = if protocol == Protocol::Tcp { &mut tcp_ports } else { &mut udp_ports };
                        let clash = port != 0
                            && (!bound.insert((protocol, spec.ip, port)) || !ports.insert(spec.ip, port, shared));
                        if clash {
                            p.push(
                                format!("{field}.listen[{j}]"),
                                format!("{l} overlaps another listener on port {port}"),
                            );
                            break;
                        }
                    }
                    if !spec.ip.is_unspecified() && !own(spec.ip) {
                        warnings.push(shared::config_check::FieldError {
                            field: format!("{field}.listen[{j}]"),
                            message: format!(
                                "{} is not an address of this host (now): the start waits until it can bind it \
                                 (READY only then; `systemctl status` names the wait), a reload binds it in the \
                                 background",
                                spec.ip
                            ),
                        });
                    }
                    listen.push(spec);
                }
                Err(e) => p.push(format!("{field}.listen[{j}]"), e),
            }
        }
        let proxy_protocol =
            p.choice(&format!("{field}.proxy_protocol"), rs.proxy_protocol.as_ref(), ProxyProtocol::Off)
                == ProxyProtocol::V2;
        let default_idle = if protocol == Protocol::Udp { Duration::from_secs(60) } else { Duration::from_secs(3600) };
        let idle_timeout =
            p.duration(&format!("{field}.idle_timeout"), rs.idle_timeout.as_deref(), default_idle, IDLE_TIMEOUT);
        count(&mut p, &format!("{field}.max_flows"), rs.max_flows, MAX_COUNT);
        if rs.max_flows.is_some() && protocol != Protocol::Udp {
            p.push(format!("{field}.max_flows"), "only udp services have flows (use max_connections)");
        }
        if rs.max_connections.is_some() && protocol == Protocol::Udp {
            p.push(format!("{field}.max_connections"), "udp services are capped by max_flows");
        }
        count(&mut p, &format!("{field}.max_connections"), rs.max_connections, MAX_COUNT);
        port(&mut p, &format!("{field}.upstream_port"), rs.upstream_port);
        if protocol != Protocol::Udp && (rs.udp_expect_replies.is_some() || rs.udp_reply_timeout.is_some()) {
            p.push(
                format!("{field}.udp_expect_replies"),
                "udp_expect_replies and udp_reply_timeout need protocol = \"udp\"",
            );
        }
        let udp_recv_buffer = rs.udp_recv_buffer.unwrap_or(shared::listeners::UDP_RECV_BUFFER);
        if rs.udp_recv_buffer.is_some() && protocol != Protocol::Udp {
            p.push(format!("{field}.udp_recv_buffer"), "needs protocol = \"udp\" (TCP sockets size their own queues)");
        }
        let range = shared::listeners::UDP_RECV_BUFFER_RANGE;
        if !range.contains(&udp_recv_buffer) {
            p.push(
                format!("{field}.udp_recv_buffer"),
                format!("must be {}..={} bytes (got {udp_recv_buffer})", range.start(), range.end()),
            );
        }
        if rs.udp_reuseport.is_some() && protocol != Protocol::Udp {
            p.push(format!("{field}.udp_reuseport"), "needs protocol = \"udp\" (TCP connections are spread already)");
        }
        let ports = listen.iter().map(|l| l.addrs().count()).sum::<usize>();
        if rs.udp_reuseport == Some(true) && ports > MAX_REUSEPORT_PORTS {
            p.push(
                format!("{field}.udp_reuseport"),
                format!(
                    "is for a few busy ports (at most {MAX_REUSEPORT_PORTS}; this service listens on {ports}): \
                     a range's ports are spread over the loops already, one socket each"
                ),
            );
        }
        let udp_reply_timeout = p.duration(
            &format!("{field}.udp_reply_timeout"),
            rs.udp_reply_timeout.as_deref(),
            ms(100),
            UDP_REPLY_TIMEOUT,
        );
        if mode == Mode::Plain && (!rs.routes.is_empty() || rs.peek_timeout.is_some() || rs.peek_max.is_some()) {
            p.push(format!("{field}.routes"), "routes, peek_timeout and peek_max need mode = \"sni\" or \"http\"");
        }
        let mut router = shared::peek::NameRouter::new();
        for (j, r) in rs.routes.iter().enumerate() {
            if !raw.pool.contains_key(&r.pool) {
                p.push(format!("{field}.routes[{j}].pool"), format!("no pool named `{}`", r.pool));
            }
            if r.names.is_empty() {
                p.push(format!("{field}.routes[{j}].names"), "needs at least one name");
            }
            for n in &r.names {
                if let Err(e) = router.insert(n, ()) {
                    p.push(format!("{field}.routes[{j}].names"), e.to_string());
                }
            }
        }
        let peek_timeout =
            p.duration(&format!("{field}.peek_timeout"), rs.peek_timeout.as_deref(), secs(5), PEEK_TIMEOUT);
        let peek_max = rs.peek_max.unwrap_or(16 * 1024);
        if !(512..=65536).contains(&peek_max) {
            p.push(format!("{field}.peek_max"), format!("must be 512..=65536 bytes (got {peek_max})"));
        }
        services.push(ServiceConfig {
            name: rs.name.clone(),
            listen,
            protocol,
            mode,
            pool: rs.pool.clone(),
            upstream_port: rs.upstream_port,
            proxy_protocol,
            idle_timeout,
            max_connections: rs.max_connections,
            max_flows: rs.max_flows.unwrap_or(4096) as usize,
            udp_expect_replies: rs.udp_expect_replies.unwrap_or(false),
            udp_reply_timeout,
            udp_recv_buffer,
            udp_reuseport: rs.udp_reuseport.unwrap_or(false),
            routes: rs.routes.iter().map(|r| RouteConfig { names: r.names.clone(), pool: r.pool.clone() }).collect(),
            peek_timeout,
            peek_max,
        });
    }
    if services.is_empty() {
        p.push("service", "at least one [[service]] is needed");
    }
    if let Some(a) = admin.filter(|a| a.port() != 0) {
        if bound.contains(&(Protocol::Tcp, a.ip(), a.port())) || !tcp_ports.insert(a.ip(), a.port(), false) {
            p.push("admin.listen", format!("{a} overlaps a service's listener on port {}", a.port()));
        }
    }
    for pool in pools.values_mut() {
        pool.own_ports = crate::self_loop::OwnPorts::for_pool(&pool.name, pool.health.port, &services);
        let fields =
            pool.paths.iter().enumerate().map(|(i, path)| (format!("pool.{}.paths[{i}].address", pool.name), path));
        let mesh = pool.mesh.iter().map(|path| (format!("pool.{}.mesh", pool.name), path));
        for (field, path) in fields.chain(mesh) {
            let Some(ip) = path.target.ip() else { continue };
            if let Some(l) = pool.own_ports.leads_back(ip, path.port, own) {
                p.push(field, format!("{ip}: {l}"));
            }
        }
    }
    p.into_result(Config {
        log_format,
        admin,
        admin_token,
        admin_hosts,
        max_connections,
        drain_timeout,
        threads,
        pools,
        services,
        resolver,
        warnings,
    })
}

/// The ports of one protocol taken so far, per address family: a socket on the wildcard
/// address and one on a specific address of the same family and port cannot both be bound
/// (IPv6 sockets are v6-only, so the families are apart), unless both share the port
/// (`SO_REUSEPORT`). Per port and family: (wildcard, shared) of each socket taken.
#[derive(Default)]
struct WildcardPorts(HashMap<(u16, bool), Vec<(bool, bool)>>);

impl WildcardPorts {
    /// Take `port` on `ip` (`shared`: with `SO_REUSEPORT`); false if a wildcard and a
    /// specific address would share it and not both share ports.
    fn insert(&mut self, ip: IpAddr, port: u16, shared: bool) -> bool {
        let taken = self.0.entry((port, ip.is_ipv6())).or_default();
        let wildcard = ip.is_unspecified();
        let free = taken.iter().all(|&(w, s)| !(wildcard || w) || (shared && s));
        taken.push((wildcard, shared));
        free
    }
}
