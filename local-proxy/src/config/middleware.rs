//! Per-site (and per-route) request middlewares: `rate_limit`, `compression`, `cors` and
//! `hostile`. The raw values (a table, `true` for the defaults where that makes sense, or
//! `false` for off), their validation, and the validated types the HTTP side reads.
//!
//! A site without a field has the middleware off. A route inherits its site's value for
//! each field it does not set; a route's own table replaces the site's whole (it is not
//! merged field by field), and `false` turns an inherited one off on that route.

use std::str::FromStr;
use std::time::Duration;

use figment::value::Value;
use http::{HeaderName, Method};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use shared::ports::{days, ms, secs, DurationRange};

use super::Problems;

/// `rate_limit.per`, default 1s.
pub const RATE_LIMIT_PER: DurationRange = DurationRange::new(ms(1), days(1));
/// `cors.max_age`, default: not sent (browsers then cache a preflight for 5 s). Browsers cap
/// it themselves (Chromium at 2 h, Firefox at 24 h).
pub const CORS_MAX_AGE: DurationRange = DurationRange::new(secs(0), days(1));

/// `rate_limit.max_clients` default: about 100 bytes each (key, GCRA state, LRU links), so
/// some 10 MB per site or route at the bound.
pub const DEFAULT_MAX_CLIENTS: u64 = 100_000;
/// `compression.min_length` default, bytes: below it the encoding's framing outweighs the gain.
pub const DEFAULT_MIN_LENGTH: u64 = 1024;
/// `compression.types` default: textual types. Images, video, audio, archives and fonts in
/// WOFF/WOFF2 are compressed already and left as they are (they match none of these).
pub const DEFAULT_COMPRESSIBLE_TYPES: &[&str] = &[
    "text/*",
    "application/json",
    "application/javascript",
    "application/x-javascript",
    "application/ecmascript",
    "application/xml",
    "application/xhtml+xml",
    "application/wasm",
    "application/x-ndjson",
    "application/graphql-response+json",
    "*+json",
    "*+xml",
    "font/ttf",
    "font/otf",
    "application/vnd.ms-fontobject",
];
/// `hostile.close_user_agents` default: vulnerability scanners and brute-forcers that name
/// themselves (case-insensitive substrings of `User-Agent`).
pub const DEFAULT_HOSTILE_USER_AGENTS: &[&str] = &[
    "sqlmap",
    "nikto",
    "nmap scripting engine",
    "masscan",
    "zgrab",
    "nuclei",
    "wpscan",
    "acunetix",
    "netsparker",
    "dirbuster",
    "gobuster",
    "feroxbuster",
    "fuzz faster u fool",
    "wfuzz",
    "jorgee",
    "zmeu",
    "morfeus",
    "l9explore",
    "l9tcpid",
    "openvas",
    "hydra",
];
/// `hostile.refuse_headers` default: requests relayed by a Cloudflare Worker carry `CF-Worker`
/// (the worker's zone) and `CDN-Loop: cloudflare`; a home service reached through someone's
/// worker is being proxied by a stranger (the old config refused both).
pub const DEFAULT_REFUSE_HEADERS: &[&str] = &["cf-worker", "cdn-loop: cloudflare"];

/// The middlewares of a site or route; `None`: off.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Middlewares {
    pub rate_limit: Option<RateLimit>,
    pub compression: Option<Compression>,
    pub cors: Option<Cors>,
    pub hostile: Option<Hostile>,
}

/// The four fields as written on a site or route.
#[derive(Debug, Clone, Copy, Default)]
pub struct RawFields<'a> {
    pub rate_limit: Option<&'a Value>,
    pub compression: Option<&'a Value>,
    pub cors: Option<&'a Value>,
    pub hostile: Option<&'a Value>,
}

/// Requests per client address, GCRA (a token bucket without a refill task): `requests` per
/// `per` on average, up to `burst` at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimit {
    pub requests: u32,
    pub per: Duration,
    pub burst: u32,
    /// Clients remembered at once; past it the least recently seen is forgotten.
    pub max_clients: usize,
    /// IPv6 clients are counted per prefix of this length (one host usually has a /64).
    pub ipv6_prefix: u8,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRateLimit {
    requests: Option<u64>,
    per: Option<String>,
    burst: Option<u64>,
    max_clients: Option<u64>,
    ipv6_prefix: Option<u64>,
}

/// A content coding the proxy can apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Zstd,
    Brotli,
    Gzip,
}

impl Encoding {
    /// The `Content-Encoding` token.
    pub fn token(self) -> &'static str {
        match self {
            Encoding::Zstd => "zstd",
            Encoding::Brotli => "br",
            Encoding::Gzip => "gzip",
        }
    }
}

/// Response compression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compression {
    /// Our preference when a client accepts several with the same q-value.
    pub encodings: Vec<Encoding>,
    /// Responses whose Content-Length is below this are sent as they are.
    pub min_length: u64,
    /// Lower-case media types: `type/subtype`, `type/*`, or `*+suffix`.
    pub types: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCompression {
    encodings: Option<Vec<String>>,
    min_length: Option<u64>,
    types: Option<Vec<String>>,
}

/// An allowed `Origin`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OriginPattern {
    /// `*`: any origin.
    Any,
    /// `scheme://host[:port]`, lower case.
    Exact(String),
    /// `scheme://*.suffix[:port]`: any name below `suffix` (not `suffix` itself).
    Subdomains { scheme: String, suffix: String, port: Option<u16> },
}

impl OriginPattern {
    /// Whether the `Origin` header value `origin` is allowed by this pattern.
    pub fn matches(&self, origin: &str) -> bool {
        match self {
            OriginPattern::Any => true,
            OriginPattern::Exact(o) => origin.eq_ignore_ascii_case(o),
            OriginPattern::Subdomains { scheme, suffix, port } => {
                let Some(rest) = origin.strip_prefix(scheme.as_str()).and_then(|r| r.strip_prefix("://")) else {
                    return false;
                };
                let (host, p) = match rest.rsplit_once(':') {
                    Some((h, p)) => match p.parse::<u16>() {
                        Ok(p) => (h, Some(p)),
                        Err(_) => return false,
                    },
                    None => (rest, None),
                };
                let host = host.to_ascii_lowercase();
                p == *port
                    && host.len() > suffix.len() + 1
                    && host.ends_with(suffix.as_str())
                    && host.as_bytes()[host.len() - suffix.len() - 1] == b'.'
            }
        }
    }
}

/// Which request headers a preflight may ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowHeaders {
    /// These (lower case); the CORS-safelisted ones need no listing.
    List(Vec<HeaderName>),
    /// `["*"]`: whatever the preflight's `Access-Control-Request-Headers` names.
    Mirror,
}

/// Cross-origin resource sharing, answered by the proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cors {
    pub allow_origins: Vec<OriginPattern>,
    pub allow_methods: Vec<Method>,
    pub allow_headers: AllowHeaders,
    pub allow_credentials: bool,
    pub expose_headers: Vec<HeaderName>,
    /// `Access-Control-Max-Age`; `None`: not sent.
    pub max_age: Option<Duration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCors {
    allow_origins: Option<Vec<String>>,
    allow_methods: Option<Vec<String>>,
    allow_headers: Option<Vec<String>>,
    allow_credentials: Option<bool>,
    expose_headers: Option<Vec<String>>,
    max_age: Option<String>,
}

/// A header whose presence gets a request refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderRule {
    pub name: HeaderName,
    /// Lower case; `None`: any value (presence alone).
    pub value_contains: Option<String>,
}

impl HeaderRule {
    /// Whether `headers` carry what this rule refuses.
    pub fn matches(&self, headers: &http::HeaderMap) -> bool {
        headers.get_all(&self.name).iter().any(|v| match &self.value_contains {
            None => true,
            Some(want) => v.to_str().is_ok_and(|s| s.to_ascii_lowercase().contains(want.as_str())),
        })
    }
}

/// Hostile-client rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hostile {
    /// Lower-case substrings of `User-Agent`: such connections are closed without an answer.
    pub close_user_agents: Vec<String>,
    /// Requests carrying any of these are answered 403.
    pub refuse_headers: Vec<HeaderRule>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHostile {
    close_user_agents: Option<Vec<String>>,
    refuse_headers: Option<Vec<String>>,
}

/// What a field's value says: off, the defaults, or a table.
enum Given<T> {
    Off,
    Defaults,
    Table(T),
}

/// Read `value` under `field`: a table into `T`, `true` (where `bare_true`), or `false`.
fn given<T: DeserializeOwned>(errors: &mut Problems, field: &str, value: &Value, bare_true: bool) -> Option<Given<T>> {
    match value {
        Value::Bool(_, false) => Some(Given::Off),
        Value::Bool(_, true) if bare_true => Some(Given::Defaults),
        Value::Dict(..) => match value.deserialize::<T>() {
            Ok(t) => Some(Given::Table(t)),
            Err(e) => {
                errors.push(field, e.to_string());
                None
            }
        },
        _ => {
            let what = if bare_true { "a table, true or false" } else { "a table or false" };
            errors.push(field, format!("expected {what}"));
            None
        }
    }
}

/// A route's own value (`Some`, possibly off), else the inherited one.
fn pick<T>(own: Option<Option<T>>, parent: Option<T>) -> Option<T> {
    own.unwrap_or(parent)
}

/// Validate the four fields of a site (`inherited` = `None`) or a route (its site's values),
/// `prefix` being `site[0]` or `site[0].route[2]`. Problems go to `errors`.
pub fn validate(
    errors: &mut Problems,
    prefix: &str,
    raw: RawFields<'_>,
    inherited: Option<&Middlewares>,
) -> Middlewares {
    let f = |name: &str| format!("{prefix}.{name}");
    let rate_limit = raw.rate_limit.map(|v| match given::<RawRateLimit>(errors, &f("rate_limit"), v, false) {
        Some(Given::Table(t)) => rate_limit(errors, &f("rate_limit"), &t),
        _ => None,
    });
    let compression = raw.compression.map(|v| match given::<RawCompression>(errors, &f("compression"), v, true) {
        Some(Given::Table(t)) => compression(errors, &f("compression"), &t),
        Some(Given::Defaults) => compression(errors, &f("compression"), &RawCompression::default()),
        _ => None,
    });
    let cors = raw.cors.map(|v| match given::<RawCors>(errors, &f("cors"), v, false) {
        Some(Given::Table(t)) => cors(errors, &f("cors"), &t),
        _ => None,
    });
    let hostile = raw.hostile.map(|v| match given::<RawHostile>(errors, &f("hostile"), v, true) {
        Some(Given::Table(t)) => hostile(errors, &f("hostile"), &t),
        Some(Given::Defaults) => hostile(errors, &f("hostile"), &RawHostile::default()),
        _ => None,
    });
    Middlewares {
        rate_limit: pick(rate_limit, inherited.and_then(|m| m.rate_limit.clone())),
        compression: pick(compression, inherited.and_then(|m| m.compression.clone())),
        cors: pick(cors, inherited.and_then(|m| m.cors.clone())),
        hostile: pick(hostile, inherited.and_then(|m| m.hostile.clone())),
    }
}

/// `v` if it lies in `min..=max`; else an error under `field.name`, and `min`.
fn in_range(errors: &mut Problems, field: &str, name: &str, v: u64, min: u64, max: u64) -> u64 {
    if v < min || v > max {
        errors.push(format!("{field}.{name}"), format!("{v} is out of range {min}..={max}"));
        return min;
    }
    v
}

fn rate_limit(errors: &mut Problems, field: &str, raw: &RawRateLimit) -> Option<RateLimit> {
    let before = errors.len();
    let requests = match raw.requests {
        Some(r) => in_range(errors, field, "requests", r, 1, 1_000_000) as u32,
        None => {
            errors.push(format!("{field}.requests"), "is required (requests allowed per `per`)");
            1
        }
    };
    let burst = in_range(errors, field, "burst", raw.burst.unwrap_or(u64::from(requests)), 1, 1_000_000) as u32;
    let max_clients =
        in_range(errors, field, "max_clients", raw.max_clients.unwrap_or(DEFAULT_MAX_CLIENTS), 1, 10_000_000) as usize;
    let ipv6_prefix = in_range(errors, field, "ipv6_prefix", raw.ipv6_prefix.unwrap_or(64), 32, 128) as u8;
    let per = errors.duration(&format!("{field}.per"), raw.per.as_deref(), Duration::from_secs(1), RATE_LIMIT_PER);
    if errors.len() == before && per.as_nanos() < u128::from(requests) {
        errors.push(format!("{field}.requests"), format!("{requests} per {per:?} is more than one a nanosecond"));
    }
    // The limiter keeps a burst as one request's interval times (burst - 1) in u64
    // nanoseconds, and adds it to the time: past half the range that overflows.
    let interval = per.as_nanos() / u128::from(requests.max(1));
    if errors.len() == before && interval * u128::from(burst.saturating_sub(1)) > u128::from(u64::MAX / 2) {
        errors.push(
            format!("{field}.burst"),
            format!(
                "{burst} at one request per {:?} is a burst longer than the limiter can hold: lower burst or per",
                Duration::from_nanos(interval as u64)
            ),
        );
    }
    (errors.len() == before).then_some(RateLimit { requests, per, burst, max_clients, ipv6_prefix })
}

fn compression(errors: &mut Problems, field: &str, raw: &RawCompression) -> Option<Compression> {
    let before = errors.len();
    let mut err = |name: String, m: String| errors.push(format!("{field}.{name}"), m);
    let encodings = match &raw.encodings {
        None => vec![Encoding::Zstd, Encoding::Brotli, Encoding::Gzip],
        Some(list) => {
            let mut out = Vec::new();
            for (i, e) in list.iter().enumerate() {
                let enc = match e.to_ascii_lowercase().as_str() {
                    "zstd" => Encoding::Zstd,
                    "br" => Encoding::Brotli,
                    "gzip" => Encoding::Gzip,
                    _ => {
                        err(format!("encodings[{i}]"), format!("`{e}` is not an encoding (zstd, br, gzip)"));
                        continue;
                    }
                };
                if out.contains(&enc) {
                    err(format!("encodings[{i}]"), format!("`{e}` is listed twice"));
                }
                out.push(enc);
            }
            if list.is_empty() {
                err("encodings".into(), "is empty (leave compression out, or set it to false, to turn it off)".into());
            }
            out
        }
    };
    let min_length = raw.min_length.unwrap_or(DEFAULT_MIN_LENGTH);
    if min_length > 1 << 30 {
        err("min_length".into(), format!("{min_length} is out of range 0..=1073741824"));
    }
    let types = match &raw.types {
        None => DEFAULT_COMPRESSIBLE_TYPES.iter().map(|t| t.to_string()).collect(),
        Some(list) => {
            for (i, t) in list.iter().enumerate() {
                let ok = match t.strip_prefix("*+") {
                    Some(suffix) => !suffix.is_empty() && !suffix.contains(['/', '*']),
                    None => t.split_once('/').is_some_and(|(a, b)| {
                        !a.is_empty() && !a.contains('*') && !b.is_empty() && (b == "*" || !b.contains('*'))
                    }),
                };
                if !ok || t.contains([' ', ';']) {
                    err(
                        format!("types[{i}]"),
                        format!("`{t}` is not a media type (`type/subtype`, `type/*` or `*+suffix`)"),
                    );
                }
            }
            list.iter().map(|t| t.to_ascii_lowercase()).collect()
        }
    };
    (errors.len() == before).then_some(Compression { encodings, min_length, types })
}

/// Parse one `allow_origins` entry.
fn origin_pattern(s: &str) -> Result<OriginPattern, String> {
    if s == "*" {
        return Ok(OriginPattern::Any);
    }
    let lower = s.to_ascii_lowercase();
    let Some((scheme, rest)) = lower.split_once("://") else {
        return Err(format!("`{s}` is not an origin (`https://host[:port]`, `https://*.suffix` or `*`)"));
    };
    if scheme != "http" && scheme != "https" {
        return Err(format!("`{s}`: the scheme must be http or https"));
    }
    if rest.contains(['/', '?', '#', '@']) {
        return Err(format!("`{s}`: an origin has no path, query or user (no trailing /)"));
    }
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) => match p.parse::<u16>() {
            Ok(p) if p != 0 => (h, Some(p)),
            _ => return Err(format!("`{s}`: `{p}` is not a port")),
        },
        None => (rest, None),
    };
    let bare = host.strip_prefix("*.").unwrap_or(host);
    let host_ok = !bare.is_empty()
        && !bare.contains('*')
        && bare.split('.').all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
    if !host_ok {
        return Err(format!("`{s}`: `{host}` is not a host name (a leading `*.` is the only wildcard)"));
    }
    Ok(match host.strip_prefix("*.") {
        Some(suffix) => OriginPattern::Subdomains { scheme: scheme.into(), suffix: suffix.into(), port },
        None => OriginPattern::Exact(lower),
    })
}

fn header_names(errors: &mut Problems, field: &str, list: &[String]) -> Vec<HeaderName> {
    let mut out = Vec::new();
    for (i, h) in list.iter().enumerate() {
        match HeaderName::from_str(h) {
            Ok(n) => out.push(n),
            Err(_) => errors.push(format!("{field}[{i}]"), format!("`{h}` is not a header name")),
        }
    }
    out
}

fn cors(errors: &mut Problems, field: &str, raw: &RawCors) -> Option<Cors> {
    let before = errors.len();
    let f = |name: &str| format!("{field}.{name}");
    let mut allow_origins = Vec::new();
    match &raw.allow_origins {
        None => errors.push(f("allow_origins"), "is required"),
        Some(list) if list.is_empty() => errors.push(f("allow_origins"), "is empty: no origin could use it"),
        Some(list) => {
            for (i, o) in list.iter().enumerate() {
                match origin_pattern(o) {
                    Ok(p) => allow_origins.push(p),
                    Err(m) => errors.push(format!("{}[{i}]", f("allow_origins")), m),
                }
            }
        }
    }
    let allow_credentials = raw.allow_credentials.unwrap_or(false);
    if allow_credentials && allow_origins.contains(&OriginPattern::Any) {
        errors.push(
            f("allow_credentials"),
            "true with allow_origins = [\"*\"] would hand every site on the web the user's \
                      cookies; list the origins instead",
        );
    }
    let mut allow_methods = Vec::new();
    let methods = raw.allow_methods.clone().unwrap_or_else(|| vec!["GET".into(), "HEAD".into(), "POST".into()]);
    for (i, m) in methods.iter().enumerate() {
        // Method names are case-sensitive tokens; browsers upper-case only the standard ones.
        match Method::from_bytes(m.as_bytes()) {
            Ok(m) if m.as_str() != "*" => allow_methods.push(m),
            _ => errors.push(format!("{}[{i}]", f("allow_methods")), format!("`{m}` is not a method name")),
        }
    }
    let allow_headers = match raw.allow_headers.as_deref() {
        Some([star]) if star == "*" => AllowHeaders::Mirror,
        Some(list) => AllowHeaders::List(header_names(errors, &f("allow_headers"), list)),
        None => AllowHeaders::List(Vec::new()),
    };
    let expose_headers = header_names(errors, &f("expose_headers"), raw.expose_headers.as_deref().unwrap_or(&[]));
    let max_age =
        raw.max_age.as_deref().map(|m| errors.duration(&f("max_age"), Some(m), CORS_MAX_AGE.min, CORS_MAX_AGE));
    (errors.len() == before).then_some(Cors {
        allow_origins,
        allow_methods,
        allow_headers,
        allow_credentials,
        expose_headers,
        max_age,
    })
}

fn hostile(errors: &mut Problems, field: &str, raw: &RawHostile) -> Option<Hostile> {
    let before = errors.len();
    let close_user_agents: Vec<String> = match &raw.close_user_agents {
        None => DEFAULT_HOSTILE_USER_AGENTS.iter().map(|s| s.to_string()).collect(),
        Some(list) => {
            for (i, p) in list.iter().enumerate() {
                if p.trim().is_empty() {
                    errors.push(format!("{field}.close_user_agents[{i}]"), "is empty (it would match every client)");
                }
            }
            list.iter().map(|s| s.to_ascii_lowercase()).collect()
        }
    };
    let rules: Vec<String> =
        raw.refuse_headers.clone().unwrap_or_else(|| DEFAULT_REFUSE_HEADERS.iter().map(|s| s.to_string()).collect());
    let mut refuse_headers = Vec::new();
    for (i, r) in rules.iter().enumerate() {
        let (name, value) = match r.split_once(':') {
            Some((n, v)) => (n.trim(), Some(v.trim())),
            None => (r.trim(), None),
        };
        let Ok(name) = HeaderName::from_str(name) else {
            errors.push(
                format!("{field}.refuse_headers[{i}]"),
                format!("`{r}`: `{name}` is not a header name (`name` or `name: value`)"),
            );
            continue;
        };
        if value == Some("") {
            errors.push(
                format!("{field}.refuse_headers[{i}]"),
                format!("`{r}`: nothing after `:` (write `{name}` alone for any value)"),
            );
            continue;
        }
        refuse_headers.push(HeaderRule { name, value_contains: value.map(str::to_ascii_lowercase) });
    }
    (errors.len() == before).then_some(Hostile { close_user_agents, refuse_headers })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn value(toml: &str) -> Value {
        use figment::providers::{Format, Toml};
        figment::Figment::new().merge(Toml::string(toml)).extract_inner::<Value>("v").unwrap()
    }

    fn site(toml_field: &str, toml: &str) -> (Middlewares, Problems) {
        let v = value(&format!("v = {toml}"));
        let mut raw = RawFields::default();
        match toml_field {
            "rate_limit" => raw.rate_limit = Some(&v),
            "compression" => raw.compression = Some(&v),
            "cors" => raw.cors = Some(&v),
            _ => raw.hostile = Some(&v),
        }
        let mut errors = Problems::new();
        let m = validate(&mut errors, "site[0]", raw, None);
        (m, errors)
    }

    #[test]
    fn rate_limit_defaults_and_errors() {
        let (m, e) = site("rate_limit", "{ requests = 50 }");
        assert!(e.is_empty(), "{e:?}");
        let r = m.rate_limit.unwrap();
        assert_eq!((r.requests, r.per, r.burst, r.max_clients, r.ipv6_prefix), (50, secs(1), 50, 100_000, 64));
        let (_, e) = site("rate_limit", "{ per = \"1s\" }");
        assert_eq!(e[0].field, "site[0].rate_limit.requests");
        assert!(e[0].message.contains("required"), "{e:?}");
        let (_, e) = site("rate_limit", "{ requests = 1, per = \"1d\", burst = 1000000 }");
        assert_eq!(e.iter().map(|e| e.field.as_str()).collect::<Vec<_>>(), ["site[0].rate_limit.burst"], "{e:?}");
        let (r, e) = site("rate_limit", "{ requests = 1, per = \"1d\", burst = 100000 }");
        assert!(e.is_empty() && r.rate_limit.is_some(), "{e:?}");
        let (_, e) = site("rate_limit", "{ requests = 5, burst = 0, ipv6_prefix = 16 }");
        let fields: Vec<&str> = e.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["site[0].rate_limit.burst", "site[0].rate_limit.ipv6_prefix"]);
        let (_, e) = site("rate_limit", "true");
        assert_eq!(e[0].field, "site[0].rate_limit");
    }

    #[test]
    fn routes_inherit_replace_or_turn_off() {
        let (site_m, _) = site("compression", "true");
        let off = value("v = false");
        let mut errors = Problems::new();
        let route = validate(&mut errors, "site[0].route[0]", RawFields::default(), Some(&site_m));
        assert_eq!(route.compression, site_m.compression);
        let route = validate(
            &mut errors,
            "site[0].route[0]",
            RawFields { compression: Some(&off), ..Default::default() },
            Some(&site_m),
        );
        assert!(route.compression.is_none());
        assert!(errors.is_empty());
    }

    #[test]
    fn origins_parse_and_match() {
        let p = origin_pattern("https://*.example.org").unwrap();
        assert!(p.matches("https://app.example.org"));
        assert!(p.matches("https://a.b.Example.org"));
        assert!(!p.matches("https://example.org"));
        assert!(!p.matches("https://evilexample.org"));
        assert!(!p.matches("http://app.example.org"));
        assert!(!p.matches("https://app.example.org:8443"));
        let p = origin_pattern("https://App.example.org:8443").unwrap();
        assert!(p.matches("https://app.example.org:8443"));
        assert!(!p.matches("https://app.example.org"));
        for bad in ["example.org", "https://example.org/", "ftp://x.org", "https://a.*.org", "https://x.org:0", "null"]
        {
            assert!(origin_pattern(bad).is_err(), "{bad}");
        }
        let (_, e) = site("cors", "{ allow_origins = [\"*\"], allow_credentials = true }");
        assert_eq!(e[0].field, "site[0].cors.allow_credentials");
    }

    #[test]
    fn hostile_rules() {
        let (m, e) = site("hostile", "true");
        assert!(e.is_empty());
        let h = m.hostile.unwrap();
        let mut headers = http::HeaderMap::new();
        headers.insert("cdn-loop", "cloudflare; loops=1".parse().unwrap());
        assert!(h.refuse_headers.iter().any(|r| r.matches(&headers)));
        headers.insert("cdn-loop", "fastly".parse().unwrap());
        assert!(!h.refuse_headers.iter().any(|r| r.matches(&headers)));
        headers.insert("cf-worker", "example.com".parse().unwrap());
        assert!(h.refuse_headers.iter().any(|r| r.matches(&headers)));
        let (_, e) = site("hostile", "{ refuse_headers = [\"x y\", \"via:\"], close_user_agents = [\" \"] }");
        let fields: Vec<&str> = e.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "site[0].hostile.close_user_agents[0]",
                "site[0].hostile.refuse_headers[0]",
                "site[0].hostile.refuse_headers[1]"
            ]
        );
    }
}
