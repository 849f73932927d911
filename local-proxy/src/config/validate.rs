//! Raw → validated config: applies defaults, parses every leaf once and collects every
//! problem (field path + message) instead of stopping at the first.

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use http::{HeaderName, HeaderValue};
use shared::ports::{days, hours, ms, parse_host_port, parse_ip, secs, DurationRange, ListenSpec, PortRange};

use super::host::valid_host;
use super::raw::{ProxyProtocol, RawAccessLog, RawConfig, RawSite, RawStream};
use super::upstreams::{self, Kind as SetKind, RawSet, StreamTarget};
use super::{
    AccessLog, AccessLogFormat, CertFiles, Config, FieldError, Http, Mesh, MeshListen, Problems, Protocol, Site,
    Stream, Tls, Upstream, Wan,
};

/// The predefined `security` header set (a `[header_sets.security]` table replaces it).
pub const SECURITY_HEADERS: &[(&str, &str)] = &[
    ("strict-transport-security", "max-age=31536000; includeSubDomains"),
    ("x-frame-options", "SAMEORIGIN"),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "strict-origin-when-cross-origin"),
];

/// Paths that only vulnerability scanners ask for; answered 404 on sites that opt in.
pub const DEFAULT_SCANNER_PATHS: &[&str] = &[
    "/wp-admin",
    "/wp-login.php",
    "/wp-content",
    "/wp-includes",
    "/xmlrpc.php",
    "/.git",
    "/.env",
    "/.svn",
    "/.hg",
    "/.DS_Store",
    "/.aws",
    "/phpmyadmin",
    "/pma",
    "/cgi-bin",
    "/vendor/phpunit",
    "/server-status",
    "/config.php",
    "/admin.php",
    "/boaform",
    "/HNAP1",
];

/// The range each duration field accepts (documented next to its default in
/// `examples/local-proxy.toml`). Floors keep a typo from becoming a busy loop or an instant
/// timeout; ceilings keep deadlines far from instant overflow (hyper adds
/// `header_read_timeout` to `now` unchecked) and catch unit mistakes.
pub mod ranges {
    use super::*;
    /// `drain_timeout`, default 10s (the ingress's `limits.drain_timeout` has the same range).
    pub const DRAIN_TIMEOUT: DurationRange = DurationRange::new(ms(100), hours(1));
    /// `wan.proxy_header_timeout`, default 5s.
    pub const PROXY_HEADER_TIMEOUT: DurationRange = DurationRange::new(ms(100), secs(60));
    /// `http.tls_handshake_timeout`, default 10s.
    pub const TLS_HANDSHAKE_TIMEOUT: DurationRange = DurationRange::new(ms(100), secs(300));
    /// `http.header_read_timeout`, default 10s.
    pub const HEADER_READ_TIMEOUT: DurationRange = DurationRange::new(ms(100), secs(300));
    /// `http.idle_timeout`, default 300s; `stream.idle_timeout`, default 1h (tcp) / 300s (udp).
    pub const IDLE_TIMEOUT: DurationRange = DurationRange::new(ms(100), days(7));
    /// `http.upstream_connect_timeout` and `stream.connect_timeout`, default 5s.
    pub const CONNECT_TIMEOUT: DurationRange = DurationRange::new(ms(10), secs(60));
    /// `http.upstream_timeout`, default 60s.
    pub const UPSTREAM_TIMEOUT: DurationRange = DurationRange::new(ms(100), days(1));
    /// `tls.reload_interval`, default 5s.
    pub const RELOAD_INTERVAL: DurationRange = DurationRange::new(ms(100), days(1));
    /// `firewall.min_refresh`, default 10s.
    pub const MIN_REFRESH: DurationRange = DurationRange::new(secs(1), days(1));
    /// `firewall.max_refresh`, default 1h.
    pub const MAX_REFRESH: DurationRange = DurationRange::new(secs(1), days(7));
    /// `firewall.saved_max_age`, default 30d; at least a day, so that the file's hourly
    /// refresh is a small part of it.
    pub const SAVED_MAX_AGE: DurationRange = DurationRange::new(days(1), days(3650));
    /// `firewall.lookup_timeout`, default 5s.
    pub const LOOKUP_TIMEOUT: DurationRange = DurationRange::new(ms(100), secs(60));
    /// `*.access_log.flush`, default 100ms.
    pub const ACCESS_LOG_FLUSH: DurationRange = DurationRange::new(ms(1), hours(1));
}
use ranges::*;

/// A count field (absent: `default`) that must lie in `min..=max`.
fn count(c: &mut Problems, field: &str, value: Option<u64>, default: u64, min: u64, max: u64) -> u64 {
    let v = value.unwrap_or(default);
    if v < min || v > max {
        c.push(field, format!("{v} is out of range {min}..={max}"));
        return default;
    }
    v
}

pub(super) fn validate(raw: RawConfig, own: fn(std::net::IpAddr) -> bool) -> Result<Config, Problems> {
    let mut c = Problems::new();

    let admin = raw.admin.listen.as_deref().and_then(|s| {
        s.parse::<SocketAddr>().map_err(|_| c.push("admin.listen", format!("`{s}` is not IP:PORT"))).ok()
    });
    let admin_hosts = shared::admin::AllowedHosts::new(raw.admin.allowed_hosts.as_deref().unwrap_or_default())
        .unwrap_or_else(|e| {
            c.push("admin.allowed_hosts", e);
            Default::default()
        });
    let admin_token = raw.admin.token_file.as_deref().and_then(|f| {
        if !std::path::Path::new(f).is_absolute() {
            c.push("admin.token_file", format!("`{f}` is not an absolute path"));
            return None;
        }
        shared::admin::token::Token::from_file(std::path::Path::new(f)).map_err(|e| c.push("admin.token_file", e)).ok()
    });
    let log_format = c.choice("log_format", raw.log_format.as_ref(), shared::logging::LogFormat::Text);
    let drain_timeout = c.duration("drain_timeout", raw.drain_timeout.as_deref(), secs(10), DRAIN_TIMEOUT);
    // The ingress's `limits.threads` has the same range.
    let threads = raw.threads.map(|n| count(&mut c, "threads", Some(n), 1, 1, 1024) as usize);

    let wan = Wan {
        addresses: raw
            .wan
            .addresses
            .unwrap_or_else(|| vec!["0.0.0.0".into()])
            .iter()
            .enumerate()
            .filter_map(|(i, a)| c.ip(&format!("wan.addresses[{i}]"), a))
            .collect(),
        trusted_ingress: raw
            .wan
            .trusted_ingress
            .unwrap_or_default()
            .iter()
            .enumerate()
            .filter_map(|(i, a)| c.ip(&format!("wan.trusted_ingress[{i}]"), a))
            .collect(),
        proxy_header_timeout: c.duration(
            "wan.proxy_header_timeout",
            raw.wan.proxy_header_timeout.as_deref(),
            secs(5),
            PROXY_HEADER_TIMEOUT,
        ),
    };

    let mesh = Mesh {
        listen: match raw.mesh.listen.as_deref() {
            None | Some("off") => MeshListen::Off,
            Some("auto") => MeshListen::Auto,
            // Every address would serve any peer (an IPv6 client from the internet) as a mesh
            // client: no ingress address required, no PROXY header.
            Some(s) => match c.ip("mesh.listen", s) {
                Some(ip) if ip.is_unspecified() => {
                    c.push(
                        "mesh.listen",
                        format!(
                            "`{s}` is every address of this host: the mesh listener serves any peer as a \
                             client, without the ingress addresses or PROXY headers the WAN listeners \
                             require; give this node's Yggdrasil address, or \"auto\""
                        ),
                    );
                    MeshListen::Off
                }
                Some(ip) => MeshListen::Address(ip),
                None => MeshListen::Off,
            },
        },
        admin_endpoint: match raw.mesh.admin_endpoint {
            Some(e) => {
                match e.parse::<shared::ygg::Endpoint>() {
                    Err(err) => c.push("mesh.admin_endpoint", err.to_string()),
                    // The endpoint parser takes any u16; port 0 is not a place to connect to.
                    Ok(shared::ygg::Endpoint::Tcp(a)) if a.rsplit_once(':').is_some_and(|(_, p)| p == "0") => {
                        c.push("mesh.admin_endpoint", format!("`{e}`: port 0 is not a port (1-65535)"))
                    }
                    Ok(_) => {}
                }
                e
            }
            None => shared::ygg::DEFAULT_ENDPOINT.into(),
        },
        trusted_ingress: raw
            .mesh
            .trusted_ingress
            .unwrap_or_default()
            .iter()
            .enumerate()
            .filter_map(|(i, a)| c.ip(&format!("mesh.trusted_ingress[{i}]"), a))
            .map(|ip| ip.to_canonical())
            .collect(),
        max_connections: count(&mut c, "mesh.max_connections", raw.mesh.max_connections, 1_024, 1, 1_000_000) as usize,
    };

    let h = &raw.http;
    let mut http = Http {
        https_port: h.https_port.unwrap_or(443),
        http_port: h.http_port.unwrap_or(80),
        redirect_to_https: h.redirect_to_https.unwrap_or(true),
        acme_webroot: h.acme_webroot.as_ref().map(PathBuf::from),
        tls_handshake_timeout: c.duration(
            "http.tls_handshake_timeout",
            h.tls_handshake_timeout.as_deref(),
            secs(10),
            TLS_HANDSHAKE_TIMEOUT,
        ),
        header_read_timeout: c.duration(
            "http.header_read_timeout",
            h.header_read_timeout.as_deref(),
            secs(10),
            HEADER_READ_TIMEOUT,
        ),
        // hyper refuses buffers below 8 KiB.
        max_header_bytes: count(&mut c, "http.max_header_bytes", h.max_header_bytes, 32 * 1024, 8 * 1024, 1024 * 1024)
            as usize,
        idle_timeout: c.duration("http.idle_timeout", h.idle_timeout.as_deref(), secs(300), IDLE_TIMEOUT),
        upstream_connect_timeout: c.duration(
            "http.upstream_connect_timeout",
            h.upstream_connect_timeout.as_deref(),
            secs(5),
            CONNECT_TIMEOUT,
        ),
        upstream_timeout: c.duration(
            "http.upstream_timeout",
            h.upstream_timeout.as_deref(),
            secs(60),
            UPSTREAM_TIMEOUT,
        ),
        max_connections: count(&mut c, "http.max_connections", h.max_connections, 10_000, 1, 1_000_000) as usize,
        stream_stall: Duration::ZERO,
        access_log: h.access_log.as_ref().and_then(|a| access_log(&mut c, "http.access_log", a)),
    };
    if http.https_port != 0 && http.https_port == http.http_port {
        c.push("http.http_port", "must differ from http.https_port");
    }

    let mut certificates = Vec::new();
    for (i, cert) in raw.tls.certificates.iter().enumerate() {
        match (&cert.cert, &cert.key) {
            (Some(c1), Some(k)) => {
                for (what, path) in [("cert", c1), ("key", k)] {
                    if let Some(p) = super::relative(path) {
                        c.push(format!("tls.certificate[{i}].{what}"), p);
                    }
                }
                certificates.push(CertFiles { cert: c1.into(), key: k.into() })
            }
            (None, _) => c.push(format!("tls.certificate[{i}].cert"), "is required"),
            (_, None) => c.push(format!("tls.certificate[{i}].key"), "is required"),
        }
    }
    for (field, path) in [("tls.certbot_live_dir", &raw.tls.certbot_live_dir), ("http.acme_webroot", &h.acme_webroot)] {
        if let Some(p) = path.as_deref().and_then(super::relative) {
            c.push(field, p);
        }
    }
    let tls = Tls {
        certbot_live_dir: raw.tls.certbot_live_dir.as_ref().map(PathBuf::from),
        certificates,
        reload_interval: c.duration(
            "tls.reload_interval",
            raw.tls.reload_interval.as_deref(),
            secs(5),
            RELOAD_INTERVAL,
        ),
        acme_live_dir: None,
        acme_names: Vec::new(),
    };

    let header_sets = header_sets(&mut c, &raw.header_sets);
    let scanner_paths: Vec<String> = match &raw.scanners.paths {
        None => DEFAULT_SCANNER_PATHS.iter().map(|p| p.to_string()).collect(),
        Some(paths) => {
            for (i, p) in paths.iter().enumerate() {
                if !p.starts_with('/') {
                    c.push(format!("scanners.paths[{i}]"), format!("`{p}` must start with /"));
                }
            }
            paths.clone()
        }
    };

    let mut names = HashSet::new();
    let sites: Vec<Site> = raw
        .sites
        .iter()
        .enumerate()
        .filter_map(|(i, s)| site(&mut c, i, s, &header_sets, &scanner_paths, &mut names, http.access_log.as_ref()))
        .collect();

    let mut stream_names = HashSet::new();
    let mut stream_ports = HashSet::new();
    for (port, what) in [(http.https_port, "https"), (http.http_port, "http")] {
        if port != 0 {
            stream_ports.insert((Protocol::Tcp, port, what.to_string()));
        }
    }
    let mut streams = Vec::new();
    for (i, s) in raw.streams.iter().enumerate() {
        if let Some(st) = stream(&mut c, i, s) {
            if !stream_names.insert(st.name.clone()) {
                c.push(format!("stream[{i}].name"), format!("`{}` is used by another stream", st.name));
            }
            for port in st.listen_ports.iter().filter(|p| *p != 0) {
                if let Some((_, _, other)) = stream_ports.iter().find(|(pr, p, _)| *pr == st.protocol && *p == port) {
                    c.push(
                        format!("stream[{i}].listen"),
                        format!("{}/{} is already used by {other}", port, st.protocol),
                    );
                    break;
                }
            }
            for port in st.listen_ports.iter().filter(|p| *p != 0) {
                stream_ports.insert((st.protocol, port, st.name.clone()));
            }
            streams.push(st);
        }
    }

    let fixed_port = stream_ports.iter().any(|(_, p, _)| *p != 0);
    listen_addresses_apart(&mut c, &wan.addresses, &mesh.listen, fixed_port);

    // The admin listener on an address and port the proxy serves itself would never bind.
    if let Some(a) = admin.filter(|a| a.port() != 0) {
        let same_family = |ip: std::net::IpAddr| ip.is_ipv4() == a.is_ipv4();
        let shares = |ip: std::net::IpAddr| {
            ip == a.ip() || (same_family(ip) && (ip.is_unspecified() || a.ip().is_unspecified()))
        };
        let mesh_ip = match mesh.listen {
            MeshListen::Address(ip) => Some(ip),
            _ => None,
        };
        let on_ours = wan.addresses.iter().chain(&mesh_ip).any(|ip| shares(*ip));
        let taken = stream_ports.iter().find(|(pr, p, _)| *pr == Protocol::Tcp && *p == a.port());
        if let Some((_, _, other)) = taken.filter(|_| on_ours) {
            c.push("admin.listen", format!("{a} is on an address and port the proxy serves ({other})"));
        }
    }

    let firewall = super::firewall::validate(raw.firewall.as_ref(), &wan.trusted_ingress, &http, &streams, &mut c);

    let acme = super::acme::validate(raw.acme.as_ref(), &sites, &mut c);
    let tls = Tls {
        acme_live_dir: acme.as_ref().map(|a| a.live_dir()),
        acme_names: acme.as_ref().map(|a| a.names.clone()).unwrap_or_default(),
        ..tls
    };

    // Only on an otherwise valid config: then `sites` and `streams` are in the file's order,
    // so their indices name the right tables.
    if c.is_empty() {
        access_logs_agree(&mut c, super::access_logs(http.access_log.as_ref(), &sites, &streams));
    }

    let longest_auth = sites
        .iter()
        .flat_map(|s| s.forward_auth.iter().chain(s.routes.iter().filter_map(|r| r.forward_auth.as_ref())))
        .map(|a| a.timeout)
        .max()
        .unwrap_or_default();
    http.stream_stall = http.idle_timeout + http.upstream_timeout + longest_auth;

    let config = Config {
        log_format,
        drain_timeout,
        threads,
        admin,
        admin_token,
        admin_hosts,
        wan,
        mesh,
        http,
        tls,
        sites,
        streams,
        firewall,
        acme,
        warnings: Vec::new(),
    };
    let config = Config { warnings: warnings(&config), ..config };
    // As above: the indices must name the file's tables.
    if c.is_empty() {
        super::self_loop::check(&mut c, &config, own);
    }
    c.into_result(config)
}

/// What `config` passes with but may not mean.
fn warnings(config: &Config) -> Vec<FieldError> {
    let mut out = Vec::new();
    let mut warn = |field: &str, message: String| out.push(FieldError { field: field.into(), message });
    let mesh_on = config.mesh.listen != MeshListen::Off;
    if mesh_on && config.mesh.max_connections >= config.http.max_connections {
        warn(
            "mesh.max_connections",
            format!(
                "{} is not below http.max_connections ({}): clients on the public mesh can take every \
                 connection slot the ingress nodes need",
                config.mesh.max_connections, config.http.max_connections
            ),
        );
    }
    if let MeshListen::Address(ip) = config.mesh.listen {
        if !shared::ygg::is_mesh_address(ip) {
            warn(
                "mesh.listen",
                format!(
                    "{ip} is not a Yggdrasil address (200::/7): whoever reaches it is served as a mesh client, \
                     with no PROXY header and no ingress address required (`yggdrasil -address` gives this \
                     node's, or use \"auto\")"
                ),
            );
        }
    }
    let trusted = !config.wan.trusted_ingress.is_empty()
        || config.firewall.as_ref().is_some_and(|f| !f.ingress_names.is_empty() || !f.static_addresses.is_empty());
    if !config.wan.addresses.is_empty() && !trusted {
        warn(
            "wan.trusted_ingress",
            "no ingress node is trusted (wan.trusted_ingress, firewall.ingress_names and firewall.static_addresses \
             are all empty, or [firewall] is off): the WAN listeners refuse every connection, the ingress \
             nodes' health probes included (set wan.addresses = [] to serve only the mesh)"
                .into(),
        );
    }
    let no_certificates =
        config.tls.certificates.is_empty() && config.tls.certbot_live_dir.is_none() && config.acme.is_none();
    let tls_listeners = !config.wan.addresses.is_empty() || mesh_on;
    if no_certificates && !config.sites.is_empty() && tls_listeners {
        warn(
            "tls",
            "no certificate source (tls.certificate, tls.certbot_live_dir or [acme]): every TLS handshake fails, \
             and the ingress nodes' probes of the HTTPS port with it"
                .into(),
        );
    }
    out
}

/// Every WAN address and the mesh one bind the same ports, so two of them that the kernel sees
/// as the same place would fail the start ("address in use") where `check` passed: an address
/// listed twice, or a wildcard beside an address of its family (an IPv6 wildcard beside the
/// mesh listener, `auto` included). An IPv4-mapped address never binds (the sockets are
/// IPv6-only). `fixed_port`: some listener has a port other than 0 ("any free port").
fn listen_addresses_apart(c: &mut Problems, wan: &[IpAddr], mesh: &MeshListen, fixed_port: bool) {
    // `None`: `auto`, an IPv6 address not known yet (it clashes with the IPv6 wildcard only).
    let mesh_ip = match mesh {
        MeshListen::Address(ip) => Some(Some(*ip)),
        MeshListen::Auto => Some(None),
        MeshListen::Off => None,
    };
    let clash = |a: Option<IpAddr>, b: Option<IpAddr>| match (a, b) {
        (Some(x), Some(y)) => x == y || (x.is_ipv4() == y.is_ipv4() && (x.is_unspecified() || y.is_unspecified())),
        (Some(x), None) | (None, Some(x)) => x == IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        (None, None) => false,
    };
    let wan_fields = wan.iter().enumerate().map(|(i, ip)| (format!("wan.addresses[{i}]"), Some(*ip)));
    let mut bound: Vec<(String, Option<IpAddr>)> = Vec::new();
    for (field, ip) in wan_fields.chain(mesh_ip.map(|ip| ("mesh.listen".to_owned(), ip))) {
        if let Some(v4) = ip.and_then(|ip| match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped(),
            IpAddr::V4(_) => None,
        }) {
            c.push(field, format!("an IPv4-mapped address never binds here (the sockets are IPv6-only): write {v4}"));
            continue;
        }
        if let Some((other_field, other)) = bound.iter().find(|(_, other)| clash(*other, ip)).filter(|_| fixed_port) {
            let text = |a: Option<IpAddr>| {
                a.map_or("this node's Yggdrasil address (\"auto\")".to_owned(), |a| format!("`{a}`"))
            };
            let why = if [ip, *other].iter().flatten().any(IpAddr::is_unspecified) {
                "a wildcard takes its family's ports on every address, so the other cannot bind them \
                 (the start would fail: address in use); list the WAN-side addresses instead of the wildcard"
            } else {
                "the same address twice (the start would fail: address in use)"
            };
            let or_off = if field == "mesh.listen" { " (or set mesh.listen = \"off\")" } else { "" };
            c.push(field, format!("{} clashes with {other_field} ({}): {why}{or_off}", text(ip), text(*other)));
            continue;
        }
        bound.push((field, ip));
    }
}

type HeaderSet = Vec<(HeaderName, Option<HeaderValue>)>;

fn header_pair(c: &mut Problems, field: &str, name: &str, value: &str) -> Option<(HeaderName, Option<HeaderValue>)> {
    let Ok(n) = HeaderName::from_str(name) else {
        c.push(field, format!("`{name}` is not a valid header name"));
        return None;
    };
    if value.is_empty() {
        return Some((n, None));
    }
    match HeaderValue::from_str(value) {
        Ok(v) => Some((n, Some(v))),
        Err(_) => {
            c.push(format!("{field}.{name}"), "is not a valid header value");
            None
        }
    }
}

fn header_sets(c: &mut Problems, raw: &BTreeMap<String, BTreeMap<String, String>>) -> BTreeMap<String, HeaderSet> {
    let mut sets = BTreeMap::new();
    let builtin =
        SECURITY_HEADERS.iter().map(|(n, v)| (HeaderName::from_static(n), Some(HeaderValue::from_static(v)))).collect();
    sets.insert("security".to_string(), builtin);
    for (set, headers) in raw {
        let list = headers.iter().filter_map(|(n, v)| header_pair(c, &format!("header_sets.{set}"), n, v)).collect();
        sets.insert(set.clone(), list);
    }
    sets
}

fn site(
    c: &mut Problems,
    i: usize,
    s: &RawSite,
    sets: &BTreeMap<String, HeaderSet>,
    scanner_paths: &[String],
    names: &mut HashSet<String>,
    default_log: Option<&AccessLog>,
) -> Option<Site> {
    let f = |name: &str| format!("site[{i}].{name}");
    let before = c.len();
    let host = match &s.host {
        None => {
            c.push(f("host"), "is required");
            String::new()
        }
        Some(h) => h.to_ascii_lowercase(),
    };
    let mut check_name = |c: &mut Problems, field: String, name: &str| {
        if !valid_host(name) {
            c.push(field, format!("`{name}` is not a host name (letters, digits, -, optional *. prefix)"));
        } else if !names.insert(name.to_string()) {
            c.push(field, format!("`{name}` is used by another site"));
        }
    };
    if s.host.is_some() {
        check_name(c, f("host"), &host);
    }
    let aliases: Vec<String> = s.aliases.iter().map(|a| a.to_ascii_lowercase()).collect();
    for (j, a) in aliases.iter().enumerate() {
        check_name(c, f(&format!("aliases[{j}]")), a);
    }

    let upstreams = upstreams::validate(
        c,
        RawSet {
            prefix: format!("site[{i}]"),
            kind: SetKind::Site,
            upstream: s.upstream.as_ref(),
            balance: s.balance.as_ref(),
            health: s.health.as_ref(),
            critical: s.critical,
        },
        parse_upstream,
    );

    let mut response_headers: HeaderSet = Vec::new();
    let set_names = s.header_sets.clone().unwrap_or_else(|| vec!["security".into()]);
    for (j, name) in set_names.iter().enumerate() {
        match sets.get(name) {
            Some(set) => response_headers.extend(set.iter().cloned()),
            None => c.push(f(&format!("header_sets[{j}]")), format!("no header set named `{name}`")),
        }
    }
    for (n, v) in &s.response_headers {
        if let Some(pair) = header_pair(c, &f("response_headers"), n, v) {
            // Per-site values win over the sets'.
            response_headers.retain(|(existing, _)| *existing != pair.0);
            response_headers.push(pair);
        }
    }

    let insecure_skip_verify = s.insecure_skip_verify.unwrap_or(false);
    if let Some(set) = &upstreams {
        if !set.members.iter().any(|m| m.target.tls) && (insecure_skip_verify || s.ca_file.is_some()) {
            c.push(f("insecure_skip_verify"), "only applies to an https:// upstream");
        }
    }
    if insecure_skip_verify && s.ca_file.is_some() {
        c.push(f("ca_file"), "makes no sense with insecure_skip_verify");
    } else if let Some(problem) = s.ca_file.as_deref().and_then(super::ca_file::problem) {
        c.push(f("ca_file"), problem);
    }

    let access_log = match &s.access_log {
        Some(a) => access_log(c, &f("access_log"), a),
        None => default_log.cloned(),
    };
    let forward_auth = s.forward_auth.as_ref().and_then(|v| match v {
        figment::value::Value::Bool(_, false) => {
            c.push(f("forward_auth"), "false only turns a site's forward auth off on a route; leave it out here");
            None
        }
        v => super::routes::forward_auth(c, &f("forward_auth"), v).flatten(),
    });
    let raw_middlewares = super::middleware::RawFields {
        rate_limit: s.rate_limit.as_ref(),
        compression: s.compression.as_ref(),
        cors: s.cors.as_ref(),
        hostile: s.hostile.as_ref(),
    };
    let middlewares = super::middleware::validate(c, &format!("site[{i}]"), raw_middlewares, None);
    let site_defaults = super::routes::SiteDefaults {
        prefix: &format!("site[{i}]"),
        response_headers: &response_headers,
        forward_auth: forward_auth.as_ref(),
        header_sets: sets,
        middlewares: &middlewares,
    };
    let routes = super::routes::routes(c, &site_defaults, &s.routes, parse_upstream);

    if c.len() != before {
        return None;
    }
    Some(Site {
        host,
        aliases,
        upstreams: upstreams?,
        insecure_skip_verify,
        ca_file: s.ca_file.as_ref().map(PathBuf::from),
        response_headers,
        blocked_paths: if s.block_scanners.unwrap_or(false) { scanner_paths.to_vec() } else { Vec::new() },
        access_log,
        routes,
        forward_auth,
        middlewares,
    })
}

/// `access_log = { path, format, flush }` under `field`: an absolute file path (the file
/// itself is opened when the routes are built, so a directory that does not exist refuses the
/// config there, under the same field), format `json`.
fn access_log(c: &mut Problems, field: &str, raw: &RawAccessLog) -> Option<AccessLog> {
    let before = c.len();
    let format = c.choice(&format!("{field}.format"), raw.format.as_ref(), AccessLogFormat::Json);
    let flush = c.duration(
        &format!("{field}.flush"),
        raw.flush.as_deref(),
        crate::access_log::FLUSH_INTERVAL,
        ACCESS_LOG_FLUSH,
    );
    let path = match raw.path.as_deref() {
        None => {
            c.push(format!("{field}.path"), "is required");
            PathBuf::new()
        }
        Some(p) => {
            let path = PathBuf::from(p);
            if !path.is_absolute() {
                c.push(format!("{field}.path"), format!("`{p}` is not an absolute path"));
            } else if p.ends_with('/') || path.file_name().is_none() {
                c.push(format!("{field}.path"), format!("`{p}` names a directory, not a file"));
            }
            path
        }
    };
    (c.len() == before).then_some(AccessLog { path, format, flush })
}

/// One file has one writer, so every log naming it must ask for the same `flush` (the writer
/// would otherwise hold some lines longer than their log says). `logs` are (field, log) in
/// config order; the later of two that disagree is the one named.
fn access_logs_agree<'a>(c: &mut Problems, logs: impl IntoIterator<Item = (String, &'a AccessLog)>) {
    let mut first: BTreeMap<&PathBuf, (String, Duration)> = BTreeMap::new();
    for (field, log) in logs {
        match first.get(&log.path) {
            None => {
                first.insert(&log.path, (field, log.flush));
            }
            Some((other, flush)) if *flush != log.flush => c.push(
                format!("{field}.flush"),
                format!(
                    "{:?} differs from {other}.flush ({flush:?}), which writes the same file `{}`",
                    log.flush,
                    log.path.display()
                ),
            ),
            Some(_) => {}
        }
    }
}

fn parse_upstream(u: &str) -> Result<Upstream, String> {
    let uri = http::Uri::from_str(u).map_err(|e| format!("`{u}` is not a URL: {e}"))?;
    let tls = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => return Err(format!("`{u}` must start with http:// or https://")),
    };
    if uri.path() != "/" && !uri.path().is_empty() {
        return Err(format!("`{u}` must not have a path"));
    }
    if uri.query().is_some() {
        return Err(format!("`{u}` must not have a query"));
    }
    let authority = uri.authority().cloned().ok_or_else(|| format!("`{u}` has no host"))?;
    if authority.as_str().contains('@') {
        return Err(format!("`{u}` must not contain credentials"));
    }
    check_port(u, &authority)?;
    let host = authority.host();
    let host_ok = match host.strip_prefix('[') {
        Some(_) => parse_ip(host).is_ok_and(|ip| ip.is_ipv6()),
        None => host.parse::<std::net::Ipv4Addr>().is_ok() || valid_host(&host.to_ascii_lowercase()),
    };
    if !host_ok || host.starts_with("*.") {
        return Err(format!("`{u}`: `{host}` is not a host name or IP address"));
    }
    Ok(Upstream { tls, authority })
}

/// The port of URL `u`'s `authority`, if it has one, is 1-65535. `http::Uri` keeps an
/// out-of-range port as text and `port_u16()` then reports none, so `http://host:70000` would
/// quietly go to port 80: the port text is checked here.
pub(super) fn check_port(u: &str, authority: &http::uri::Authority) -> Result<(), String> {
    let port_text = authority.as_str().strip_prefix(authority.host()).unwrap_or_default();
    match port_text.strip_prefix(':') {
        Some(port) => match port.parse::<u16>() {
            Ok(p) if p != 0 => Ok(()),
            _ => Err(format!("`{u}`: `{port}` is not a port (1-65535)")),
        },
        None if port_text.is_empty() => Ok(()),
        None => Err(format!("`{u}` has a malformed host")),
    }
}

fn stream(c: &mut Problems, i: usize, s: &RawStream) -> Option<Stream> {
    let f = |name: &str| format!("stream[{i}].{name}");
    let before = c.len();
    let name = s.name.clone().unwrap_or_else(|| {
        c.push(f("name"), "is required");
        String::new()
    });
    if s.name.is_some()
        && (name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
    {
        c.push(f("name"), "must be letters, digits, - and _ (it is a metrics label)");
    }

    let (protocol, listen_ports) = match &s.listen {
        None => {
            c.push(f("listen"), "is required");
            (Protocol::Tcp, PortRange::single(0))
        }
        Some(l) => {
            let (ports, proto) = match l.rsplit_once('/') {
                Some((p, "tcp")) => (p, Protocol::Tcp),
                Some((p, "udp")) => (p, Protocol::Udp),
                Some((_, other)) => {
                    c.push(f("listen"), format!("unknown protocol `{other}` (tcp or udp)"));
                    (l.as_str(), Protocol::Tcp)
                }
                None => (l.as_str(), Protocol::Tcp),
            };
            match ports.parse::<PortRange>() {
                Ok(r) => (proto, r),
                Err(e) => {
                    c.push(f("listen"), format!("{e}; expected PORT or FIRST-LAST, with /tcp (the default) or /udp"));
                    (proto, PortRange::single(0))
                }
            }
        }
    };

    let upstreams = upstreams::validate(
        c,
        RawSet {
            prefix: format!("stream[{i}]"),
            kind: if protocol == Protocol::Tcp { SetKind::TcpStream } else { SetKind::UdpStream },
            upstream: s.upstream.as_ref(),
            balance: s.balance.as_ref(),
            health: s.health.as_ref(),
            critical: s.critical,
        },
        |u| upstream_target(u, listen_ports),
    );

    let proxy_protocol =
        c.choice(&f("proxy_protocol"), s.proxy_protocol.as_ref(), ProxyProtocol::None) == ProxyProtocol::V2;
    let transparent = s.transparent.unwrap_or(false);
    if transparent && proxy_protocol {
        c.push(f("transparent"), "choose one way to pass the client address: transparent or proxy_protocol = \"v2\"");
    }
    let idle_default = match protocol {
        Protocol::Tcp => hours(1),
        Protocol::Udp => secs(300),
    };
    let connect_timeout = c.duration(&f("connect_timeout"), s.connect_timeout.as_deref(), secs(5), CONNECT_TIMEOUT);
    let idle_timeout = c.duration(&f("idle_timeout"), s.idle_timeout.as_deref(), idle_default, IDLE_TIMEOUT);
    let max_flows = count(c, &f("max_flows"), s.max_flows, 4096, 1, 1_000_000) as usize;
    if s.max_flows.is_some() && protocol == Protocol::Tcp {
        c.push(f("max_flows"), "only applies to udp streams");
    }
    let range = shared::listeners::UDP_RECV_BUFFER_RANGE;
    let udp_recv_buffer = count(
        c,
        &f("udp_recv_buffer"),
        s.udp_recv_buffer,
        shared::listeners::UDP_RECV_BUFFER as u64,
        *range.start() as u64,
        *range.end() as u64,
    ) as usize;
    if s.udp_recv_buffer.is_some() && protocol == Protocol::Tcp {
        c.push(f("udp_recv_buffer"), "only applies to udp streams");
    }
    if s.connect_timeout.is_some() && protocol == Protocol::Udp {
        c.push(f("connect_timeout"), "only applies to tcp streams (UDP has no connect)");
    }
    let access_log = s.access_log.as_ref().and_then(|a| access_log(c, &f("access_log"), a));
    let st = Stream {
        name,
        protocol,
        listen_ports,
        upstreams: upstreams?,
        proxy_protocol,
        transparent,
        connect_timeout,
        idle_timeout,
        max_flows,
        udp_recv_buffer,
        access_log,
    };
    (c.len() == before).then_some(st)
}

/// `IP` (same ports as listened on), `IP:PORT` or `IP:FIRST-LAST` (same length as the listen range).
fn upstream_target(u: &str, listen: PortRange) -> Result<StreamTarget, String> {
    if let Ok((ip, None)) = parse_host_port(u) {
        if listen.first == 0 {
            return Err(format!("`{u}` needs a port when listening on port 0"));
        }
        return Ok(StreamTarget { ip, ports: listen });
    }
    let spec = u.parse::<ListenSpec>().map_err(|e| format!("{e}; expected IP, IP:PORT or IP:FIRST-LAST"))?;
    if spec.ports.first == 0 {
        return Err(format!("`{u}`: upstream port 0 is not a port"));
    }
    if !spec.ports.is_single() && spec.ports.len() != listen.len() {
        return Err(format!("`{u}` has {} ports but listen has {}", spec.ports.len(), listen.len()));
    }
    if spec.ports.is_single() && !listen.is_single() {
        return Err(format!("`{u}`: a listen range of {} ports needs an upstream range or a bare IP", listen.len()));
    }
    Ok(StreamTarget { ip: spec.ip, ports: spec.ports })
}
