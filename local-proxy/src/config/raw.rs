//! The config file as written: serde structs with `deny_unknown_fields` everywhere and
//! loosely typed leaves (strings for addresses and durations), so that validation can
//! check every field and report all problems at once, each under its own name.

use std::collections::BTreeMap;

use serde::Deserialize;
use shared::config_check::Choice;

/// Root of `local-proxy.toml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub log_format: Option<shared::config_check::Choice<shared::logging::LogFormat>>,
    /// How long open connections may take to finish after SIGTERM.
    pub drain_timeout: Option<String>,
    /// Event loops serving client connections (absent: one per core).
    pub threads: Option<u64>,
    #[serde(default)]
    pub admin: RawAdmin,
    #[serde(default)]
    pub wan: RawWan,
    #[serde(default)]
    pub mesh: RawMesh,
    #[serde(default)]
    pub http: RawHttp,
    #[serde(default)]
    pub tls: RawTls,
    /// Named sets of response headers that sites refer to; `security` is predefined.
    #[serde(default)]
    pub header_sets: BTreeMap<String, BTreeMap<String, String>>,
    #[serde(default)]
    pub scanners: RawScanners,
    #[serde(default, rename = "site")]
    pub sites: Vec<RawSite>,
    #[serde(default, rename = "stream")]
    pub streams: Vec<RawStream>,
    /// `[firewall]`: the nftables allowlist kept from the ingress names; absent = no firewall.
    pub firewall: Option<super::firewall::RawFirewall>,
    /// `[acme]`: certificates obtained and renewed with ACME; absent = off.
    pub acme: Option<RawAcme>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub listen: Option<String>,
    pub token_file: Option<String>,
    pub allowed_hosts: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWan {
    pub addresses: Option<Vec<String>>,
    pub trusted_ingress: Option<Vec<String>>,
    pub proxy_header_timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMesh {
    pub listen: Option<String>,
    pub admin_endpoint: Option<String>,
    pub trusted_ingress: Option<Vec<String>>,
    pub max_connections: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHttp {
    pub https_port: Option<u16>,
    pub http_port: Option<u16>,
    pub redirect_to_https: Option<bool>,
    pub acme_webroot: Option<String>,
    pub tls_handshake_timeout: Option<String>,
    pub header_read_timeout: Option<String>,
    pub max_header_bytes: Option<u64>,
    pub idle_timeout: Option<String>,
    pub upstream_connect_timeout: Option<String>,
    pub upstream_timeout: Option<String>,
    pub max_connections: Option<u64>,
    /// The default access log of every site (and of requests for no site); absent = off.
    pub access_log: Option<RawAccessLog>,
}

/// `access_log = { path = "...", format = "json", flush = "100ms" }`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAccessLog {
    pub path: Option<String>,
    pub format: Option<Choice<super::AccessLogFormat>>,
    pub flush: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub certbot_live_dir: Option<String>,
    #[serde(default, rename = "certificate")]
    pub certificates: Vec<RawCertificate>,
    pub reload_interval: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCertificate {
    pub cert: Option<String>,
    pub key: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawScanners {
    pub paths: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSite {
    pub host: Option<String>,
    #[serde(default)]
    pub aliases: Vec<String>,
    /// A string, or a list of strings or tables: see [`RawUpstreams`] (read in validation,
    /// so a bad entry is reported under its own index).
    pub upstream: Option<figment::value::Value>,
    pub insecure_skip_verify: Option<bool>,
    pub ca_file: Option<String>,
    pub header_sets: Option<Vec<String>>,
    #[serde(default)]
    pub response_headers: BTreeMap<String, String>,
    pub block_scanners: Option<bool>,
    /// How requests are spread over several upstreams.
    pub balance: Option<Choice<Balance>>,
    pub health: Option<RawHealth>,
    /// The proxy's own health (`/healthz`, PROXY LOCAL) needs an upstream of this site up.
    pub critical: Option<bool>,
    /// This site's access log, instead of `http.access_log`.
    pub access_log: Option<RawAccessLog>,
    /// `[[site.route]]`: routes by path inside the site (see `config::routes`).
    #[serde(default, rename = "route")]
    pub routes: Vec<RawRoute>,
    /// `forward_auth = { address = ... }`: every request asks an auth service first.
    pub forward_auth: Option<figment::value::Value>,
    /// Middlewares (see `config::middleware`): a table, `true` (defaults) or `false`.
    pub rate_limit: Option<figment::value::Value>,
    pub compression: Option<figment::value::Value>,
    pub cors: Option<figment::value::Value>,
    pub hostile: Option<figment::value::Value>,
}

/// `upstream`: one URL or address (as before), or a list of them or of tables.
#[derive(Debug)]
pub enum RawUpstreams {
    One(String),
    /// `None`: an entry that could not be read (already reported).
    Many(Vec<Option<RawUpstreamEntry>>),
}

/// One entry of an `upstream` list.
#[derive(Debug)]
pub enum RawUpstreamEntry {
    Plain(String),
    Table(RawUpstream),
}

/// `{ url = ..., weight = ..., backup = ... }` (sites) or `{ address = ... }` (streams).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    pub url: Option<String>,
    pub address: Option<String>,
    pub weight: Option<u64>,
    pub backup: Option<bool>,
}

/// `[site.health]` / `[stream.health]`: active checks and the hysteresis of passive ones.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    /// Sites: the HTTP path probed (turns the active check on).
    pub path: Option<String>,
    /// Sites: accepted status codes, `"200-399"` or `"200"`.
    pub status: Option<String>,
    /// Sites: the Host header of probes.
    pub host: Option<String>,
    /// Streams: `"tcp"` (connect), `"udp"` (send/expect) or `"none"`.
    pub check: Option<Choice<StreamCheck>>,
    /// UDP streams: the probe datagram and the reply's expected start.
    pub send: Option<String>,
    pub expect: Option<String>,
    pub interval: Option<String>,
    pub timeout: Option<String>,
    pub rise: Option<u64>,
    pub fall: Option<u64>,
    /// Sites: 5xx answers count as passive failures.
    pub fail_on_5xx: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStream {
    pub name: Option<String>,
    pub listen: Option<String>,
    pub upstream: Option<figment::value::Value>,
    pub proxy_protocol: Option<Choice<ProxyProtocol>>,
    pub transparent: Option<bool>,
    pub connect_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    pub max_flows: Option<u64>,
    pub udp_recv_buffer: Option<u64>,
    /// One line per TCP connection or UDP flow of this stream.
    pub access_log: Option<RawAccessLog>,
    pub balance: Option<Choice<Balance>>,
    pub health: Option<RawHealth>,
    pub critical: Option<bool>,
}

/// `[[site.route]]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub name: Option<String>,
    pub path: Option<String>,
    pub path_prefix: Option<String>,
    pub priority: Option<i64>,
    pub upstream: Option<figment::value::Value>,
    pub balance: Option<Choice<Balance>>,
    pub health: Option<RawHealth>,
    pub critical: Option<bool>,
    pub header_sets: Option<Vec<String>>,
    #[serde(default)]
    pub response_headers: BTreeMap<String, String>,
    #[serde(default)]
    pub request_headers: BTreeMap<String, String>,
    /// A table, or `false` to turn the site's off on this route.
    pub forward_auth: Option<figment::value::Value>,
    /// Middlewares (see `config::middleware`): absent inherits the site's, a table replaces
    /// it, `false` turns it off on this route.
    pub rate_limit: Option<figment::value::Value>,
    pub compression: Option<figment::value::Value>,
    pub cors: Option<figment::value::Value>,
    pub hostile: Option<figment::value::Value>,
}

/// `[acme]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAcme {
    pub enabled: Option<bool>,
    pub directory: Option<String>,
    pub directory_ca_file: Option<String>,
    pub contact: Option<Vec<String>>,
    pub external_account: Option<RawExternalAccount>,
    pub names: Option<Vec<String>>,
    pub key_type: Option<Choice<KeyType>>,
    pub storage: Option<String>,
    pub http_01: Option<bool>,
    pub tls_alpn_01: Option<bool>,
    pub retry_min: Option<String>,
    pub retry_max: Option<String>,
    pub order_timeout: Option<String>,
}

/// `[acme.external_account]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawExternalAccount {
    pub kid: Option<String>,
    pub hmac_key: Option<String>,
}

/// `balance` of a site, route or stream: the `shared::balance::Policy` the local proxy
/// offers (not `bandwidth`, which needs the ingress's byte counts per path).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    RoundRobin,
    LeastConn,
    RandomTwo,
}

impl From<Balance> for shared::balance::Policy {
    fn from(b: Balance) -> Self {
        match b {
            Balance::RoundRobin => Self::RoundRobin,
            Balance::LeastConn => Self::LeastConn,
            Balance::RandomTwo => Self::RandomTwo,
        }
    }
}

/// `stream.health.check`: `tcp` for TCP streams, `udp` for UDP streams, or `none`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamCheck {
    None,
    Tcp,
    Udp,
}

/// `stream.proxy_protocol`: `v2` sends the upstream a PROXY v2 header first; `none` (default)
/// does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProxyProtocol {
    #[default]
    None,
    V2,
}

/// The key type of certificates (the account key is always ECDSA P-256).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum KeyType {
    #[serde(rename = "ecdsa-p256")]
    EcdsaP256,
    #[serde(rename = "rsa-2048")]
    Rsa2048,
}

impl std::fmt::Display for KeyType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            KeyType::EcdsaP256 => "ecdsa-p256",
            KeyType::Rsa2048 => "rsa-2048",
        })
    }
}
