//! Configuration: the TOML file (plus `LOCAL_PROXY_*` environment overrides) read into
//! [`raw::RawConfig`], then validated into [`Config`] with every field typed and every
//! default applied. `local-proxy check` and start-up go through the same [`load`].

pub mod acme;
pub mod ca_file;
pub mod firewall;
mod host;
pub mod middleware;
pub mod raw;
pub mod routes;
mod self_loop;
pub mod upstreams;
mod validate;

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Toml};
use figment::Figment;
use http::{HeaderName, HeaderValue};
use shared::ports::PortRange;

pub use routes::{ForwardAuth, PathMatch, Route};
pub use upstreams::{Check, Health, Member, StreamTarget, UpstreamSet};
pub use validate::{ranges, DEFAULT_SCANNER_PATHS, SECURITY_HEADERS};

/// Prefix of environment variables that override file values; `__` separates nesting
/// levels (`LOCAL_PROXY_HTTP__HTTPS_PORT=8443`).
pub const ENV_PREFIX: &str = "LOCAL_PROXY_";
/// The log filter variable (`LOCAL_PROXY_LOG=debug`): it shares the prefix, so the loader skips
/// it instead of refusing it as an unknown config key.
pub const LOG_ENV: &str = "LOCAL_PROXY_LOG";

/// A validated configuration. Built only by [`load`], [`from_toml_str`] or [`from_figment`].
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Log lines as text or JSON (read at start only).
    pub log_format: shared::logging::LogFormat,
    /// After SIGTERM, how long open connections may take to finish before the process leaves
    /// (`drain_timeout`, default 10s; read when the signal comes, so a reload changes it).
    pub drain_timeout: Duration,
    /// Event loops serving client connections (`threads`, `shared::workers`); `None`: one per
    /// core. Read at start only (a reload keeps the running count).
    pub threads: Option<usize>,
    /// Admin listener (metrics, `/healthz`, `/status`, the status page, runtime control);
    /// `None` when not configured.
    pub admin: Option<SocketAddr>,
    /// The bearer token runtime control needs (`admin.token_file`, read at each load);
    /// `None`: the control endpoints are off.
    pub admin_token: Option<shared::admin::token::Token>,
    /// Names the admin listener answers to besides IP addresses and localhost
    /// (`admin.allowed_hosts`; see `shared::admin`).
    pub admin_hosts: shared::admin::AllowedHosts,
    pub wan: Wan,
    pub mesh: Mesh,
    pub http: Http,
    pub tls: Tls,
    pub sites: Vec<Site>,
    pub streams: Vec<Stream>,
    /// The nftables allowlist kept from the ingress names; `None` when not configured.
    pub firewall: Option<firewall::Settings>,
    /// Certificates obtained and renewed with ACME; `None` when not configured.
    pub acme: Option<acme::Settings>,
    /// What passes but may not do what was meant, each under its field: printed by `check`,
    /// logged at start and at each reload.
    pub warnings: Vec<FieldError>,
}

/// WAN-side listeners: every connection must start with PROXY v2 from a trusted ingress.
#[derive(Debug, Clone, PartialEq)]
pub struct Wan {
    /// Local addresses the home router forwards the public ports to.
    pub addresses: Vec<IpAddr>,
    /// Ingress node addresses allowed to connect and send PROXY headers.
    pub trusted_ingress: Vec<IpAddr>,
    /// Bound on reading the PROXY header after accept.
    pub proxy_header_timeout: Duration,
}

/// Where the mesh listener binds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MeshListen {
    /// No mesh listener.
    Off,
    /// This node's Yggdrasil address, read from the admin socket at start-up.
    Auto,
    /// An explicit address.
    Address(IpAddr),
}

/// The Yggdrasil mesh listener: mesh clients connect directly (no PROXY header; the peer
/// address is the client address); the ingress nodes' mesh tier sends PROXY v2 like on WAN.
#[derive(Debug, Clone, PartialEq)]
pub struct Mesh {
    pub listen: MeshListen,
    /// Yggdrasil admin socket (`unix:///path` or `tcp://host:port`), used by `auto`;
    /// default `shared::ygg::DEFAULT_ENDPOINT`.
    pub admin_endpoint: String,
    /// The ingress nodes' own Yggdrasil addresses: connections from them on the mesh listener
    /// must start with PROXY v2 (their mesh tier), every other peer is a direct mesh client.
    /// Yggdrasil addresses are derived from the node's key, so a peer cannot claim one of
    /// these without that key. Default empty (nobody's headers are read on the mesh).
    pub trusted_ingress: Vec<IpAddr>,
    /// Connections of direct mesh clients (every mesh peer but `trusted_ingress`) open at once
    /// over the mesh TCP listeners; more are closed at accept. They count toward
    /// `http.max_connections` too, so the public mesh cannot take what the ingress needs.
    pub max_connections: usize,
}

/// HTTP and TLS front-end settings shared by all sites.
#[derive(Debug, Clone, PartialEq)]
pub struct Http {
    pub https_port: u16,
    pub http_port: u16,
    /// Plain HTTP requests for known sites get a 308 to `https://` (ACME paths excepted).
    pub redirect_to_https: bool,
    /// Serve `/.well-known/acme-challenge/<token>` from this certbot `--webroot` directory.
    pub acme_webroot: Option<PathBuf>,
    pub tls_handshake_timeout: Duration,
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
    /// A client connection (h1, h2 or upgraded) with no bytes either way for this long is closed.
    /// An idle HTTP/1 keep-alive connection is closed earlier, by `header_read_timeout`.
    pub idle_timeout: Duration,
    pub upstream_connect_timeout: Duration,
    pub upstream_timeout: Duration,
    /// Concurrent client connections over all TCP listeners.
    pub max_connections: usize,
    /// An h2 stream nothing woke for this long is reset (`http::h2_streams`): longer than any
    /// wait a stream may have (`idle_timeout` for the client's window, `upstream_timeout`,
    /// the longest `forward_auth.timeout`). Derived, not a setting.
    pub stream_stall: Duration,
    /// The access log of sites without their own and of requests for no site; `None`: off.
    pub access_log: Option<AccessLog>,
}

/// Where and how an access log is written: one line per request, appended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLog {
    /// Absolute path; created 0640 if missing, reopened on SIGUSR1 and SIGHUP.
    pub path: PathBuf,
    pub format: AccessLogFormat,
    /// Longest a line waits in memory before it is written (nginx's `flush=`); every log
    /// naming one file must agree on it.
    pub flush: Duration,
}

/// The line format of an access log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccessLogFormat {
    /// One JSON object per line.
    Json,
}

/// Where certificates come from.
#[derive(Debug, Clone, PartialEq)]
pub struct Tls {
    /// certbot's `live/` directory: one `<name>/fullchain.pem` + `privkey.pem` per folder.
    pub certbot_live_dir: Option<PathBuf>,
    /// Explicit certificate/key pairs; names are taken from the certificates.
    pub certificates: Vec<CertFiles>,
    /// How often certificate files are checked for changes.
    pub reload_interval: Duration,
    /// ACME's `live/` directory (`[acme] storage`), read like `certbot_live_dir`.
    pub acme_live_dir: Option<PathBuf>,
    /// The names ACME keeps certificates for (`[acme] names`, lower case). A certificate in
    /// its `live/` (unless that is `certbot_live_dir` too) that covers none of them is left
    /// from a name taken out of `[acme]`: nobody renews it, and it is not served.
    pub acme_names: Vec<String>,
}

/// One explicit certificate chain and its key, both PEM.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// An HTTP site routed by Host.
#[derive(Debug, Clone, PartialEq)]
pub struct Site {
    /// Lower-case host name, possibly `*.example.org`.
    pub host: String,
    pub aliases: Vec<String>,
    /// One or several upstreams, balanced and checked as one set.
    pub upstreams: UpstreamSet<Upstream>,
    pub insecure_skip_verify: bool,
    pub ca_file: Option<PathBuf>,
    /// Response headers to set; `None` removes the header.
    pub response_headers: Vec<(HeaderName, Option<HeaderValue>)>,
    /// Paths answered with 404 without asking the upstream (empty unless opted in).
    pub blocked_paths: Vec<String>,
    /// The site's access log (its own, else `http.access_log`); `None`: not logged.
    pub access_log: Option<AccessLog>,
    /// `[[site.route]]`s in match order (see `routes`); paths none matches use the fields above.
    pub routes: Vec<Route>,
    /// Asked before every request that no route without it takes; `None`: no auth.
    pub forward_auth: Option<ForwardAuth>,
    /// Rate limit, compression, CORS, hostile-client rules of paths no route takes.
    pub middlewares: middleware::Middlewares,
}

impl Site {
    /// The site's own name and its aliases.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.host.as_str()).chain(self.aliases.iter().map(String::as_str))
    }
}

/// A LAN upstream for a site: `http://` or `https://` plus an authority.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub tls: bool,
    pub authority: http::uri::Authority,
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "https" } else { "http" };
        write!(f, "{scheme}://{}", self.authority)
    }
}

/// Transport of a stream forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

/// A TCP or UDP port (or port range) forwarded to a LAN service.
#[derive(Debug, Clone, PartialEq)]
pub struct Stream {
    pub name: String,
    pub protocol: Protocol,
    pub listen_ports: PortRange,
    /// One or several upstreams; each maps listen port N to its Nth port.
    pub upstreams: UpstreamSet<StreamTarget>,
    /// Send a PROXY v2 header with the client address to the upstream.
    pub proxy_protocol: bool,
    /// Connect to the upstream from the client's own address (`IP_TRANSPARENT`), so a service
    /// that cannot read PROXY headers sees the real client. Needs `CAP_NET_ADMIN` and the
    /// policy route in README.md; a client of the other address family (a mesh client to an
    /// IPv4 service) is forwarded from our own address instead, and counted.
    pub transparent: bool,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    /// UDP only: concurrent flows of the stream, across all its listening sockets.
    pub max_flows: usize,
    /// UDP only: the receive queue of the listening sockets and of each flow's socket, bytes.
    pub udp_recv_buffer: usize,
    /// One line per TCP connection or UDP flow when it ends; `None`: not logged.
    pub access_log: Option<AccessLog>,
}

impl Stream {
    /// Whether a flow opened under `self` sends as one opened under `other` would: the same
    /// stream (its name keys the flow budget and the metrics), upstreams (member i of each is
    /// the same target), ports, PROXY header and transparency.
    pub fn sends_as(&self, other: &Stream) -> bool {
        self.name == other.name
            && self.listen_ports == other.listen_ports
            && self.proxy_protocol == other.proxy_protocol
            && self.transparent == other.transparent
            && self.upstreams.members.iter().map(|m| &m.target).eq(other.upstreams.members.iter().map(|m| &m.target))
    }

    /// The address of upstream `member` (index into `upstreams.members`, clamped) for a
    /// connection that arrived on `listen_port`.
    pub fn upstream_for(&self, member: usize, listen_port: u16) -> SocketAddr {
        let members = &self.upstreams.members;
        let m = &members[member.min(members.len().saturating_sub(1))];
        m.target.addr(self.listen_ports, listen_port)
    }
}

pub use shared::config_check::{FieldError, Problems};

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read or parsed, or has a field of the wrong type or name.
    #[error("{0}")]
    Parse(Box<figment::Error>),
    /// The file parsed but some fields are invalid; every problem is listed (`invalid
    /// configuration:` and a `  - field: message` line each, as the ingress prints them).
    #[error("{0}")]
    Invalid(Problems),
}

/// Load and validate `path`, with `LOCAL_PROXY_*` environment overrides on top.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    from_figment(
        Figment::new().merge(Toml::file_exact(path)).merge(Env::prefixed(ENV_PREFIX).ignore(&["LOG"]).split("__")),
    )
}

/// The nftables table the config at `path` names (`[firewall] table`, with the same
/// environment overrides as [`load`]), read without validating anything else: removing the
/// table (the package's prerm) must not depend on a token file or a CA file still being
/// there. A file that cannot even be parsed gives the default name, with the reason.
pub fn firewall_table(path: &Path) -> (String, Option<ConfigError>) {
    #[derive(serde::Deserialize)]
    struct Only {
        firewall: Option<OnlyTable>,
    }
    #[derive(serde::Deserialize)]
    struct OnlyTable {
        table: Option<String>,
    }
    let figment =
        Figment::new().merge(Toml::file_exact(path)).merge(Env::prefixed(ENV_PREFIX).ignore(&["LOG"]).split("__"));
    match figment.extract::<Only>() {
        Ok(only) => (only.firewall.and_then(|f| f.table).unwrap_or_else(|| firewall::DEFAULT_TABLE.into()), None),
        Err(e) => (firewall::DEFAULT_TABLE.into(), Some(ConfigError::Parse(Box::new(e)))),
    }
}

/// Validate TOML text without environment overrides (tests, examples). Of this host's
/// addresses only loopback's count as its own (`self_loop`), so that the result does not
/// depend on the machine's interfaces.
pub fn from_toml_str(text: &str) -> Result<Config, ConfigError> {
    extract(Figment::new().merge(Toml::string(text)), shared::own_addrs::always_own)
}

/// Extract and validate from any figment.
pub fn from_figment(figment: Figment) -> Result<Config, ConfigError> {
    extract(figment, shared::own_addrs::is_own)
}

/// `own`: whether an address is this host's, for upstreams that would lead back here.
fn extract(figment: Figment, own: fn(IpAddr) -> bool) -> Result<Config, ConfigError> {
    let raw: raw::RawConfig = figment.extract().map_err(|e| ConfigError::Parse(Box::new(e)))?;
    validate::validate(raw, own).map_err(ConfigError::Invalid)
}

impl Config {
    /// Logs [`Config::warnings`] (at start and at each reload).
    pub fn log_warnings(&self) {
        for w in &self.warnings {
            tracing::warn!(field = %w.field, "configuration: {}", w.message);
        }
    }

    /// Descriptors this config may hold at once: two per client connection (the client's and
    /// its upstream's), one per UDP flow, and a reserve for listeners, logs and the runtime.
    pub fn descriptors_wanted(&self) -> u64 {
        let flows: u64 = self.streams.iter().filter(|s| s.protocol == Protocol::Udp).map(|s| s.max_flows as u64).sum();
        2 * self.http.max_connections as u64 + flows + 64
    }

    /// Every access log this config names, with its field (`http.access_log`,
    /// `site[2].access_log`, `stream[0].access_log`), in the file's order.
    pub fn access_logs(&self) -> impl Iterator<Item = (String, &AccessLog)> {
        access_logs(self.http.access_log.as_ref(), &self.sites, &self.streams)
    }

    /// For `check`: each access log's directory exists and its path is not a directory. The
    /// server opens (and creates) the files itself and refuses the config when it cannot;
    /// `check` must not create them, as it may run as another user (Ansible's validate).
    pub fn check_access_log_dirs(&self, c: &mut Problems) {
        let mut seen: Vec<&Path> = Vec::new();
        for (field, log) in self.access_logs() {
            // Sites without their own log share the default's: one problem per file.
            if seen.contains(&log.path.as_path()) {
                continue;
            }
            seen.push(&log.path);
            let field = format!("{field}.path");
            match log.path.parent() {
                Some(dir) if !dir.is_dir() => c.push(field, format!("directory `{}` does not exist", dir.display())),
                _ if log.path.is_dir() => c.push(field, format!("`{}` is a directory", log.path.display())),
                // The file if it is there (a link to a writable one, or one a drop-in's
                // ReadWritePaths= names), else the directory it is to be made in.
                Some(dir) => {
                    let target = if log.path.exists() { log.path.as_path() } else { dir };
                    if read_only(target) {
                        c.push(field, read_only_problem(target, "/var/log/local-proxy"));
                    }
                }
                _ => {}
            }
        }
        if let Some(acme) = &self.acme {
            if acme.storage.is_dir() && read_only(&acme.storage) {
                c.push("acme.storage", read_only_problem(&acme.storage, "/var/lib/local-proxy"));
            }
        }
    }
}

/// The problem with a path the server opens itself, if it is relative: it would be taken from
/// the working directory, which is wherever `check` ran and / under systemd.
fn relative(path: &str) -> Option<String> {
    (!Path::new(path).is_absolute()).then(|| format!("`{path}` is not an absolute path"))
}

/// Whether `dir` (or a file) is on a file system mounted read-only for this process: the
/// packaged unit's `ProtectSystem=strict` makes everything but its own directories so, and
/// `check` runs in the same sandbox (ExecStartPre, ExecReload). Only that: whether this user
/// may write there depends on who runs `check`.
fn read_only(dir: &Path) -> bool {
    rustix::fs::access(dir, rustix::fs::Access::WRITE_OK).is_err_and(|e| e == rustix::io::Errno::ROFS)
}

fn read_only_problem(path: &Path, writable: &str) -> String {
    format!(
        "`{}` is read-only here (the packaged unit may write only below {writable}, or where a \
         drop-in's ReadWritePaths= allows)",
        path.display()
    )
}

/// Every access log a config names, with its field (`http.access_log`, `site[2].access_log`,
/// `stream[0].access_log`), in the file's order.
fn access_logs<'a>(
    http: Option<&'a AccessLog>,
    sites: &'a [Site],
    streams: &'a [Stream],
) -> impl Iterator<Item = (String, &'a AccessLog)> + 'a {
    let sites =
        sites.iter().enumerate().filter_map(|(i, s)| Some((format!("site[{i}].access_log"), s.access_log.as_ref()?)));
    let streams = streams
        .iter()
        .enumerate()
        .filter_map(|(i, s)| Some((format!("stream[{i}].access_log"), s.access_log.as_ref()?)));
    http.map(|l| ("http.access_log".to_owned(), l)).into_iter().chain(sites).chain(streams)
}
