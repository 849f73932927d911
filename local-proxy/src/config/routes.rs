//! Routes inside a site (`[[site.route]]`) and forward auth (`forward_auth = { ... }`, per
//! site or route): the raw tables, their validation, and the validated types.
//!
//! A route is what Traefik calls a router on one host: a path match (exact `path` or
//! `path_prefix`), a `priority`, and what differs from its site — its own upstream set,
//! response and request headers, middlewares. Whatever a route does not set it inherits from
//! its site, resolved here at validation: the runtime reads a route's fields only, never
//! its site's (a site with no routes is served by its own fields, exactly as before routes).
//!
//! Middlewares added later (rate limits, CORS, compression, hostile-client rules) follow
//! the same pattern as `forward_auth`: a field on [`crate::config::Site`] (the default) and
//! on [`Route`] holding the effective value (the route's own, else the site's; `false`
//! turns an inherited one off where that makes sense). At request time,
//! `http::routes::SiteRoute::target(path)` hands out a `Target` that carries the route's
//! (or site's) values.
//!
//! Match order (documented in README.md, "Routes inside a site"): higher `priority` first
//! (default 0); within one priority an exact `path` before any prefix, then the longest
//! prefix; the same path twice in one site is refused. `Site::routes` is kept in that order,
//! so the first route that matches wins. Paths are matched after percent-decoding and
//! merging repeated slashes; requests whose path holds an encoded `/` or `\`, a NUL or a
//! `.`/`..` segment are refused with 400 on sites that have routes (so no spelling of a
//! protected path can reach a public route's rules).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use figment::value::Value;
use http::{HeaderName, HeaderValue, Uri};
use serde::Deserialize;
use shared::ports::{ms, secs, DurationRange};

use super::raw::RawRoute;
use super::upstreams::{self, Kind as SetKind, RawSet, UpstreamSet};
use super::{Problems, Upstream};

/// Most routes in one site (matching walks them in order).
pub const MAX_ROUTES: usize = 64;
/// `forward_auth.timeout`, default 5s.
pub const FORWARD_AUTH_TIMEOUT: DurationRange = DurationRange::new(ms(100), secs(60));

/// Response or request headers: set, or removed (`None`).
pub type HeaderRules = Vec<(HeaderName, Option<HeaderValue>)>;

/// `forward_auth = { ... }` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawForwardAuth {
    pub address: Option<String>,
    pub timeout: Option<String>,
    pub trust_forward_header: Option<bool>,
    pub auth_request_headers: Option<Vec<String>>,
    pub auth_response_headers: Option<Vec<String>>,
    pub user_header: Option<String>,
    pub insecure_skip_verify: Option<bool>,
    pub ca_file: Option<String>,
}

/// A validated route; every field already holds the effective value (the site's where the
/// route sets none).
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    /// Unique in its site: the access log's `route` field and the route pool's name
    /// (`host#name`); default: the path as written.
    pub name: String,
    pub path: PathMatch,
    pub priority: i64,
    /// The route's own upstreams; `None`: the site's (its pool is shared).
    pub upstreams: Option<UpstreamSet<Upstream>>,
    /// The site's response headers with the route's sets and values on top.
    pub response_headers: HeaderRules,
    /// Set on (or, empty, removed from) the request sent upstream, after forward auth.
    pub request_headers: HeaderRules,
    /// The route's own, else the site's; `None`: no auth (`forward_auth = false`, or none).
    pub forward_auth: Option<ForwardAuth>,
    /// Each the route's own, else the site's.
    pub middlewares: super::middleware::Middlewares,
}

/// How a route matches the request path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    /// The whole path equals this (the query is not part of it).
    Exact(String),
    /// The path starts with this. A prefix ending in `/` matches below it; one that does not
    /// also matches only at a segment end: `/api` matches `/api` and `/api/x`, not `/apis`.
    Prefix(String),
}

impl PathMatch {
    /// Whether `path` (already normalised by [`normalise_path`]) matches.
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Exact(p) => path == p,
            PathMatch::Prefix(p) => {
                path.starts_with(p.as_str())
                    && (p.ends_with('/') || matches!(path.as_bytes().get(p.len()), None | Some(b'/')))
            }
        }
    }

    /// [`PathMatch::matches`] with ASCII case ignored: what an upstream that ignores case
    /// (ASP.NET, IIS, Express by default) serves under the route.
    pub fn matches_ignoring_case(&self, path: &str) -> bool {
        match self {
            PathMatch::Exact(p) => path.eq_ignore_ascii_case(p),
            PathMatch::Prefix(p) => {
                path.as_bytes().get(..p.len()).is_some_and(|head| head.eq_ignore_ascii_case(p.as_bytes()))
                    && (p.ends_with('/') || matches!(path.as_bytes().get(p.len()), None | Some(b'/')))
            }
        }
    }

    /// [`PathMatch::matches_ignoring_case`], also with one trailing `/` more or less than the
    /// route's: `/admin/` for an exact `/admin`, `/admin` for a prefix `/admin/` (Express and
    /// Spring serve those as one resource).
    pub fn matches_loosely(&self, path: &str) -> bool {
        if self.matches_ignoring_case(path) {
            return true;
        }
        fn trim(s: &str) -> &str {
            if s.len() > 1 {
                s.strip_suffix('/').unwrap_or(s)
            } else {
                s
            }
        }
        match self {
            PathMatch::Exact(p) => trim(path).eq_ignore_ascii_case(trim(p)),
            PathMatch::Prefix(p) => p.len() > 1 && p.ends_with('/') && path.eq_ignore_ascii_case(&p[..p.len() - 1]),
        }
    }

    fn text(&self) -> &str {
        match self {
            PathMatch::Exact(p) | PathMatch::Prefix(p) => p,
        }
    }
}

/// Why a path cannot be routed (answered 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnroutablePath;

/// The path routes are matched against: percent-decoded, repeated slashes merged, each
/// segment without its path parameters (`/manager;x/html` is `/manager/html`, as Tomcat and
/// Jetty serve it). Refused: a `\`, plain or encoded, or an encoded `/` (upstreams disagree
/// on whether they split segments), a NUL, invalid UTF-8 after decoding, and `.`/`..`
/// segments (upstreams resolve them differently). With those refused, the path an upstream
/// acts on is the one the route was chosen by.
pub fn normalise_path(raw: &str) -> Result<String, UnroutablePath> {
    normalise(raw, false)
}

/// [`normalise_path`], with an encoded `/` decoded and `.` and `..` segments resolved (RFC
/// 3986, 5.2.4) instead of refused: the path a server that does both (nginx) serves. For a
/// check that must see what such an upstream would, not for routing.
pub fn resolve_path(raw: &str) -> Result<String, UnroutablePath> {
    normalise(raw, true)
}

/// `as_served`: resolve what routing refuses (an encoded `/`, dot segments), as nginx does.
fn normalise(raw: &str, as_served: bool) -> Result<String, UnroutablePath> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' && i + 2 < bytes.len() {
            let hex = |c: u8| (c as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                let d = (h * 16 + l) as u8;
                if (d == b'/' && !as_served) || d == b'\\' || d == 0 {
                    return Err(UnroutablePath);
                }
                out.push(d);
                i += 3;
                continue;
            }
        }
        if b == b'\\' {
            return Err(UnroutablePath);
        }
        out.push(b);
        i += 1;
    }
    let decoded = String::from_utf8(out).map_err(|_| UnroutablePath)?;
    let mut path = String::with_capacity(decoded.len() + 1);
    // Whether the last segment has no name: the path ends in `/` (`/admin/;x` is `/admin/`).
    let mut trailing = true;
    for seg in decoded.split('/') {
        // `..;x` is `..` to Tomcat and Jetty.
        let name = seg.split(';').next().unwrap_or(seg);
        if name == "." || name == ".." {
            if !as_served {
                return Err(UnroutablePath);
            }
            if name == ".." {
                // The segment before goes (none above the root).
                path.truncate(path.rfind('/').unwrap_or(0));
            }
            trailing = true;
            continue;
        }
        trailing = name.is_empty();
        if !trailing {
            path.push('/');
            path.push_str(name);
        }
    }
    if trailing {
        path.push('/');
    }
    Ok(path)
}

/// For a site whose forward auth judges every path (no routes): refuse a path an upstream
/// could resolve to another than the one the auth service is shown (`/public/../admin`): a
/// `.` or `..` segment, plain or percent-encoded, between `/`, `\` or their encodings, or
/// before path parameters; and a NUL. Unlike [`normalise_path`], an encoded `/` alone is let
/// through (RabbitMQ's `%2F` vhost, GitLab's `group%2Fproject`), and nothing is allocated.
pub fn traversal_free(raw: &str) -> Result<(), UnroutablePath> {
    let bytes = raw.as_bytes();
    // The current segment: its dots, and whether it has anything else.
    let (mut dots, mut other) = (0u32, false);
    let mut i = 0;
    loop {
        let (byte, len) = match bytes.get(i) {
            None => (None, 0),
            Some(b'%') => match bytes.get(i + 1..i + 3) {
                Some(hex) => match u8::from_str_radix(std::str::from_utf8(hex).unwrap_or("zz"), 16) {
                    Ok(d) => (Some(d), 3),
                    Err(_) => (Some(b'%'), 1),
                },
                None => (Some(b'%'), 1),
            },
            Some(&b) => (Some(b), 1),
        };
        match byte {
            Some(0) => return Err(UnroutablePath),
            Some(b'.') if !other => dots += 1,
            None | Some(b'/' | b'\\' | b';') => {
                if !other && (dots == 1 || dots == 2) {
                    return Err(UnroutablePath);
                }
                if byte.is_none() {
                    return Ok(());
                }
                // After `;` come parameters: the segment's name is over.
                (dots, other) = if byte == Some(b';') { (0, true) } else { (0, false) };
            }
            Some(_) => other = true,
        }
        i += len;
    }
}

/// Validated forward auth.
#[derive(Debug, Clone, PartialEq)]
pub struct ForwardAuth {
    /// `http://` or `https://` URL, path and query kept as written.
    pub address: Uri,
    /// Bound on the auth service's answer head; past it: 504.
    pub timeout: Duration,
    /// Pass the client's own `X-Forwarded-*` headers on instead of ours.
    pub trust_forward_header: bool,
    /// The client headers sent to the auth service; `None`: all of them.
    pub request_headers: Option<Vec<HeaderName>>,
    /// Copied from a 2xx answer onto the upstream request; always removed from the client's.
    pub response_headers: Vec<HeaderName>,
    /// The auth answer's header naming the user (access log `user`).
    pub user_header: HeaderName,
    pub insecure_skip_verify: bool,
    pub ca_file: Option<PathBuf>,
}

/// Headers the proxy sets itself or that describe a connection: a response header list
/// naming them would let the auth service break framing, so they are refused.
const NOT_COPIED: &[&str] =
    &["connection", "content-length", "transfer-encoding", "upgrade", "host", "te", "trailer", "keep-alive"];

/// `forward_auth` (a table, or `false`) under `field`. `Ok(None)`: `false`.
pub(crate) fn forward_auth(errors: &mut Problems, field: &str, value: &Value) -> Option<Option<ForwardAuth>> {
    let mut err = |f: String, m: String| errors.push(f, m);
    let raw = match value {
        Value::Bool(_, false) => return Some(None),
        Value::Dict(..) => match value.deserialize::<RawForwardAuth>() {
            Ok(r) => r,
            Err(e) => {
                err(field.into(), e.to_string());
                return None;
            }
        },
        _ => {
            err(field.into(), "expected a table `{ address = \"http://...\" }`, or false (routes)".into());
            return None;
        }
    };
    let f = |name: &str| format!("{field}.{name}");
    let before = errors.len();
    let mut err = |f: String, m: String| errors.push(f, m);
    let address = match raw.address.as_deref() {
        None => {
            err(f("address"), "is required".into());
            Uri::default()
        }
        Some(a) => match Uri::from_str(a) {
            Ok(u) if matches!(u.scheme_str(), Some("http" | "https")) && u.authority().is_some() => {
                if let Some(au) = u.authority() {
                    if au.as_str().contains('@') {
                        err(f("address"), format!("`{a}` must not contain credentials"));
                    } else if let Err(e) = super::validate::check_port(a, au) {
                        err(f("address"), e);
                    }
                }
                u
            }
            Ok(_) => {
                err(f("address"), format!("`{a}` must be an http:// or https:// URL with a host"));
                Uri::default()
            }
            Err(e) => {
                err(f("address"), format!("`{a}` is not a URL: {e}"));
                Uri::default()
            }
        },
    };
    let timeout = match FORWARD_AUTH_TIMEOUT.parse(raw.timeout.as_deref().unwrap_or("5s")) {
        Ok(d) => d,
        Err(e) => {
            err(f("timeout"), e);
            FORWARD_AUTH_TIMEOUT.min
        }
    };
    let mut names = |name: &str, list: &[String], check_copy: bool| -> Vec<HeaderName> {
        let mut out = Vec::new();
        for (j, h) in list.iter().enumerate() {
            match HeaderName::from_str(h) {
                Ok(n) if check_copy && NOT_COPIED.contains(&n.as_str()) => {
                    err(format!("{field}.{name}[{j}]"), format!("`{h}` cannot be copied: the proxy sets it"))
                }
                Ok(n) => out.push(n),
                Err(_) => err(format!("{field}.{name}[{j}]"), format!("`{h}` is not a valid header name")),
            }
        }
        out
    };
    let request_headers = raw.auth_request_headers.as_ref().map(|l| names("auth_request_headers", l, false));
    let response_headers = names("auth_response_headers", raw.auth_response_headers.as_deref().unwrap_or(&[]), true);
    let user_header = match HeaderName::from_str(raw.user_header.as_deref().unwrap_or("remote-user")) {
        Ok(n) => n,
        Err(_) => {
            err(f("user_header"), "is not a valid header name".into());
            HeaderName::from_static("remote-user")
        }
    };
    let insecure_skip_verify = raw.insecure_skip_verify.unwrap_or(false);
    let tls = address.scheme_str() == Some("https");
    if !tls && (insecure_skip_verify || raw.ca_file.is_some()) {
        let which = if insecure_skip_verify { "insecure_skip_verify" } else { "ca_file" };
        err(f(which), "only applies to an https:// address".into());
    }
    if insecure_skip_verify && raw.ca_file.is_some() {
        err(f("ca_file"), "makes no sense with insecure_skip_verify".into());
    } else if let Some(problem) = raw.ca_file.as_deref().filter(|_| tls).and_then(super::ca_file::problem) {
        err(f("ca_file"), problem);
    }
    (errors.len() == before).then(|| {
        Some(ForwardAuth {
            address,
            timeout,
            trust_forward_header: raw.trust_forward_header.unwrap_or(false),
            request_headers,
            response_headers,
            user_header,
            insecure_skip_verify,
            ca_file: raw.ca_file.map(PathBuf::from),
        })
    })
}

/// What a site passes down to its routes' validation.
pub(crate) struct SiteDefaults<'a> {
    /// `site[3]`.
    pub prefix: &'a str,
    pub response_headers: &'a HeaderRules,
    pub forward_auth: Option<&'a ForwardAuth>,
    pub header_sets: &'a BTreeMap<String, HeaderRules>,
    pub middlewares: &'a super::middleware::Middlewares,
}

fn header_rules(errors: &mut Problems, field: &str, raw: &BTreeMap<String, String>, into: &mut HeaderRules) {
    for (n, v) in raw {
        let Ok(name) = HeaderName::from_str(n) else {
            errors.push(field, format!("`{n}` is not a valid header name"));
            continue;
        };
        let value = if v.is_empty() {
            None
        } else {
            match HeaderValue::from_str(v) {
                Ok(v) => Some(v),
                Err(_) => {
                    errors.push(format!("{field}.{n}"), "is not a valid header value");
                    continue;
                }
            }
        };
        into.retain(|(existing, _)| *existing != name);
        into.push((name, value));
    }
}

fn route_path(errors: &mut Problems, field: &str, p: &str) -> bool {
    let ok = p.starts_with('/')
        && !p.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control() || b == b'?' || b == b'#' || b == b'%')
        && !p.contains("//")
        && !p.split('/').any(|s| s == "." || s == "..");
    if !ok {
        errors.push(
            field,
            format!(
                "`{p}` must start with /, be written decoded (no %, ?, #, spaces) and have no empty, . or .. segments"
            ),
        );
    }
    ok
}

/// Validate a site's routes, returned in match order.
pub(crate) fn routes(
    errors: &mut Problems,
    site: &SiteDefaults<'_>,
    raw: &[RawRoute],
    parse_upstream: fn(&str) -> Result<Upstream, String>,
) -> Vec<Route> {
    if raw.len() > MAX_ROUTES {
        errors.push(format!("{}.route", site.prefix), format!("has {} routes; at most {MAX_ROUTES}", raw.len()));
    }
    let mut out: Vec<(usize, Route)> = Vec::new();
    for (j, r) in raw.iter().enumerate() {
        let prefix = format!("{}.route[{j}]", site.prefix);
        let f = |name: &str| format!("{prefix}.{name}");
        let before = errors.len();
        let path = match (&r.path, &r.path_prefix) {
            (Some(p), None) => route_path(errors, &f("path"), p).then(|| PathMatch::Exact(p.clone())),
            (None, Some(p)) => route_path(errors, &f("path_prefix"), p).then(|| PathMatch::Prefix(p.clone())),
            (Some(_), Some(_)) => {
                errors.push(f("path"), "give path (exact) or path_prefix, not both");
                None
            }
            (None, None) => {
                errors.push(f("path_prefix"), "is required (or path, for an exact match)");
                None
            }
        };
        let name = r.name.clone().or_else(|| path.as_ref().map(|p| p.text().to_string())).unwrap_or_default();
        if r.name.is_some()
            && (name.is_empty()
                || name.len() > 64
                || !name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/')))
        {
            errors.push(
                f("name"),
                format!("`{name}`: 1 to 64 letters, digits, -, _, . or / (it is a log field and a pool name)"),
            );
        }
        let has_upstream = r.upstream.is_some();
        if !has_upstream {
            for (set, key) in
                [(r.balance.is_some(), "balance"), (r.health.is_some(), "health"), (r.critical.is_some(), "critical")]
            {
                if set {
                    errors.push(f(key), "only applies to a route with its own upstream");
                }
            }
        }
        let upstreams = if has_upstream {
            upstreams::validate(
                errors,
                RawSet {
                    prefix: prefix.clone(),
                    kind: SetKind::Site,
                    upstream: r.upstream.as_ref(),
                    balance: r.balance.as_ref(),
                    health: r.health.as_ref(),
                    critical: r.critical,
                },
                parse_upstream,
            )
        } else {
            None
        };
        let mut response_headers = site.response_headers.clone();
        for (k, set) in r.header_sets.iter().flatten().enumerate() {
            match site.header_sets.get(set) {
                Some(rules) => {
                    for (n, v) in rules {
                        response_headers.retain(|(existing, _)| existing != n);
                        response_headers.push((n.clone(), v.clone()));
                    }
                }
                None => errors.push(f(&format!("header_sets[{k}]")), format!("no header set named `{set}`")),
            }
        }
        header_rules(errors, &f("response_headers"), &r.response_headers, &mut response_headers);
        let mut request_headers = Vec::new();
        header_rules(errors, &f("request_headers"), &r.request_headers, &mut request_headers);
        for (n, _) in &request_headers {
            if NOT_COPIED.contains(&n.as_str()) {
                errors.push(format!("{}.{n}", f("request_headers")), "is set by the proxy");
            }
        }
        let forward_auth = match &r.forward_auth {
            None => Some(site.forward_auth.cloned()),
            Some(v) => forward_auth(errors, &f("forward_auth"), v),
        };
        let raw_middlewares = super::middleware::RawFields {
            rate_limit: r.rate_limit.as_ref(),
            compression: r.compression.as_ref(),
            cors: r.cors.as_ref(),
            hostile: r.hostile.as_ref(),
        };
        let middlewares = super::middleware::validate(errors, &prefix, raw_middlewares, Some(site.middlewares));
        if errors.len() != before {
            continue;
        }
        let (Some(path), Some(forward_auth)) = (path, forward_auth) else { continue };
        if has_upstream && upstreams.is_none() {
            continue;
        }
        if let Some((k, _)) = out.iter().find(|(_, o)| o.name == name) {
            errors.push(f("name"), format!("`{name}` is also the name of route[{k}] (names default to the path)"));
            continue;
        }
        if let Some((k, _)) = out.iter().find(|(_, o)| o.path == path) {
            errors.push(
                f(if r.path.is_some() { "path" } else { "path_prefix" }),
                format!("`{}` is also route[{k}]'s: one of them could never match", path.text()),
            );
            continue;
        }
        out.push((
            j,
            Route {
                name,
                path,
                priority: r.priority.unwrap_or(0),
                upstreams,
                response_headers,
                request_headers,
                forward_auth,
                middlewares,
            },
        ));
    }
    out.sort_by(|(ia, a), (ib, b)| {
        b.priority
            .cmp(&a.priority)
            .then_with(|| matches!(b.path, PathMatch::Exact(_)).cmp(&matches!(a.path, PathMatch::Exact(_))))
            .then_with(|| b.path.text().len().cmp(&a.path.text().len()))
            .then_with(|| ia.cmp(ib))
    });
    out.into_iter().map(|(_, r)| r).collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_match_at_segment_ends() {
        let api = PathMatch::Prefix("/api".into());
        assert!(api.matches("/api"));
        assert!(api.matches("/api/x"));
        assert!(!api.matches("/apis"));
        let slash = PathMatch::Prefix("/api/".into());
        assert!(slash.matches("/api/x"));
        assert!(!slash.matches("/api"));
        assert!(PathMatch::Prefix("/".into()).matches("/anything"));
        assert!(PathMatch::Exact("/login".into()).matches("/login"));
        assert!(!PathMatch::Exact("/login".into()).matches("/login/"));
    }

    #[test]
    fn paths_are_normalised_or_refused() {
        assert_eq!(normalise_path("/%61pi/x").unwrap(), "/api/x");
        assert_eq!(normalise_path("//api///x").unwrap(), "/api/x");
        assert_eq!(normalise_path("/a/").unwrap(), "/a/");
        assert_eq!(normalise_path("").unwrap(), "/");
        assert_eq!(normalise_path("/50%").unwrap(), "/50%");
        assert_eq!(normalise_path("/%zz").unwrap(), "/%zz");
        assert_eq!(normalise_path("/a;v=1/..b").unwrap(), "/a/..b");
        // Path parameters are not part of a segment's name (Tomcat serves /manager/html).
        assert_eq!(normalise_path("/manager;x/html").unwrap(), "/manager/html");
        // Resolved instead of refused, as nginx and Apache serve them.
        for (raw, resolved) in [
            ("/./.git/config", "/.git/config"),
            ("/x/../.git/config", "/.git/config"),
            ("/%2e%2E/a/%2e/b", "/a/b"),
            ("/a/b/..", "/a/"),
            ("/a/.", "/a/"),
            ("/..", "/"),
            ("/../../a", "/a"),
            ("/a/..;x/b", "/b"),
        ] {
            assert_eq!(resolve_path(raw).unwrap(), resolved, "{raw}");
            assert!(normalise_path(raw).is_err(), "{raw}");
        }
        // An encoded / is a / to nginx: decoded before the dots are resolved.
        assert_eq!(resolve_path("/.git%2fconfig").unwrap(), "/.git/config");
        assert_eq!(resolve_path("/x/..%2F.git/config").unwrap(), "/.git/config");
        assert!(normalise_path("/.git%2fconfig").is_err());
        assert!(resolve_path("/a%5c..").is_err(), "an encoded \\ is still refused");
        assert_eq!(normalise_path("/;x//admin;jsessionid=1").unwrap(), "/admin");
        // A last segment of parameters only leaves the path ending in `/`, as Tomcat reads it.
        assert_eq!(normalise_path("/admin/;x").unwrap(), "/admin/");
        assert_eq!(normalise_path("/;x").unwrap(), "/");
        assert!(PathMatch::Prefix("/admin/".into()).matches(&normalise_path("/admin/;x").unwrap()));
        for bad in [
            "/api%2Fx",
            "/a%5cb",
            "/x%00",
            "/public/../api",
            "/./api",
            "/public/%2e%2e/api",
            "/%ff",
            "/public/..;x/api",
            "/public/..\\admin",
            "/a\\b",
        ] {
            assert!(normalise_path(bad).is_err(), "{bad}");
        }
    }
}
