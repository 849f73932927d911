//! The site table for one config generation: Host → site, its upstream client and pool.
//! Built whole on start-up and reload and swapped with `ArcSwap`; requests in flight keep theirs.

use std::sync::{Arc, OnceLock};

use shared::peek::{NameRouter, PatternError};
use shared::workers::PerLoop;

use crate::access_log::Sink;
use crate::config::routes::{normalise_path, traversal_free, HeaderRules, UnroutablePath};
use crate::config::{AccessLog, Config, Route, Site, Upstream, UpstreamSet};
use crate::pool::{Pool, Pools};

use super::forward_auth::AuthClient;
use super::keepalive::Connections;
use super::ratelimit::Limiter;
use super::upstream::{per_loop, ClientError};
use crate::config::middleware::Middlewares;

/// One routable site.
#[derive(Debug)]
pub struct SiteRoute {
    pub site: Site,
    /// Connections to the site's upstreams and its routes' (same TLS settings; kept alive
    /// per upstream), one set per event loop: a request uses its own loop's (`target`).
    pub clients: PerLoop<Connections>,
    /// The site's upstreams: health, weights, the pick.
    pub pool: Arc<Pool>,
    /// Where its requests are logged; `None`: not logged.
    pub access_log: Option<Arc<Sink>>,
    /// The site's forward auth (paths no route matches).
    pub auth: Option<Arc<AuthClient>>,
    /// `site.routes` with their pools, in match order.
    pub paths: Vec<PathRoute>,
    /// The site's rate limiter (paths no route takes).
    pub limiter: Option<Arc<Limiter>>,
    /// Every `auth_response_headers` name of the site and its routes: removed from every
    /// client request of the site, whichever route takes it. A public route often reaches the
    /// same application as a protected one, and that application trusts these headers.
    pub identity_headers: Vec<http::HeaderName>,
    /// `site.host` as the `site` label of the request metrics (shared, not copied per request).
    pub label: Arc<str>,
    /// The site's request metrics, kept once registered.
    pub metrics: SiteMetrics,
}

/// A site's request metrics (`HTTP_REQUESTS` by status class, `HTTP_REQUEST_DURATION`),
/// registered with the recorder at their first use and then kept: a request does not build,
/// hash and look up their keys (two label lists) in the recorder's registry. At first use,
/// not when the table is built, so a metric still appears in `/metrics` with its first
/// request, as with the macros; a reload's new table registers the same keys again (the
/// recorder returns the same series).
#[derive(Debug, Default)]
pub struct SiteMetrics {
    /// `result` = "1xx" .. "5xx", in that order.
    requests: [OnceLock<metrics::Counter>; 5],
    duration: OnceLock<metrics::Histogram>,
}

/// The `result` labels of responses counted by their status class.
pub const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

impl SiteMetrics {
    /// Count a request of the site `label` whose result is status class `class` (an index of
    /// [`STATUS_CLASSES`]) and record its duration.
    pub fn record(&self, label: &Arc<str>, class: usize, seconds: f64) {
        let site = || metrics::SharedString::from_shared(label.clone());
        if let Some(slot) = self.requests.get(class) {
            let result = STATUS_CLASSES[class];
            slot.get_or_init(
                || metrics::counter!(crate::metrics::names::HTTP_REQUESTS, "site" => site(), "result" => result),
            )
            .increment(1);
        }
        self.duration
            .get_or_init(|| metrics::histogram!(crate::metrics::names::HTTP_REQUEST_DURATION, "site" => site()))
            .record(seconds);
    }
}

/// One `[[site.route]]` ready to serve.
#[derive(Debug)]
pub struct PathRoute {
    pub route: Route,
    /// Its own pool, or its site's.
    pub pool: Arc<Pool>,
    pub auth: Option<Arc<AuthClient>>,
    /// The route's own rate limiter, or (inherited) its site's.
    pub limiter: Option<Arc<Limiter>>,
}

/// What one request goes to: a route of its site, or the site itself (no route matched, or
/// the site has none). Everything the request path needs is read from here.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// The site's host (metrics and log label).
    pub host: &'a str,
    /// The route's name; `None`: the site's own settings.
    pub route: Option<&'a str>,
    pub upstreams: &'a UpstreamSet<Upstream>,
    pub pool: &'a Arc<Pool>,
    pub client: &'a Connections,
    pub response_headers: &'a HeaderRules,
    /// Set on the upstream request (routes only; empty for the site).
    pub request_headers: &'a HeaderRules,
    pub auth: Option<&'a AuthClient>,
    /// Rate limit, compression, CORS and hostile-client rules.
    pub middlewares: &'a Middlewares,
    pub limiter: Option<&'a Limiter>,
    /// The forward auth and rate limit of a route the path matches only loosely (another
    /// case, one trailing `/` more or less), when they are not this target's own: an
    /// upstream that ignores those differences serves the request as that route's, so it
    /// must pass them too (the auth answer's headers are not applied).
    pub also_auth: Also<'a, AuthClient>,
    pub also_limiter: Also<'a, Limiter>,
}

impl SiteRoute {
    /// The target for a request path (path only, no query). A site without routes or forward
    /// auth takes any path; with either, a path that cannot be matched safely is refused: the
    /// auth service's rules match the path it is sent (X-Forwarded-Uri), so `/public/../admin`
    /// must not reach it for an upstream to resolve to `/admin`.
    pub fn target(&self, path: &str) -> Result<Target<'_>, UnroutablePath> {
        let site = Target {
            host: &self.site.host,
            route: None,
            upstreams: &self.site.upstreams,
            pool: &self.pool,
            client: self.clients.get(),
            response_headers: &self.site.response_headers,
            request_headers: &NO_HEADERS,
            auth: self.auth.as_deref(),
            middlewares: &self.site.middlewares,
            limiter: self.limiter.as_deref(),
            also_auth: Also::default(),
            also_limiter: Also::default(),
        };
        if self.paths.is_empty() {
            if self.auth.is_some() {
                traversal_free(path)?;
            }
            return Ok(site);
        }
        let path = normalise_path(path)?;
        let matched = self.paths.iter().find(|p| p.route.path.matches(&path));
        // A path that takes no auth as written but would if its case were another, or with a
        // trailing `/` more or less (`/ADMIN/x` beside a protected `/admin`, `/admin/` beside
        // an exact `/admin`), goes to the protected route: an upstream that ignores case serves
        // it as `/admin/x`, and one that does not answers 404 after the sign-in. (A public
        // route the path matches as written, `/api/health` under `/api`, stays.)
        let loose = |p: &&PathRoute| !p.route.path.matches(&path) && p.route.path.matches_loosely(&path);
        let unprotected = matched.map_or(site.auth.is_none(), |p| p.auth.is_none());
        let matched = match unprotected {
            true => self.paths.iter().find(|p| p.auth.is_some() && loose(p)).or(matched),
            false => matched,
        };
        // A path that takes some auth or rate limit as written, and another loosely, must pass
        // both (`/ADMIN/x` under the site's sign-in, beside `/admin` for administrators).
        let (auth, limiter) = matched.map_or((site.auth, site.limiter), |p| (p.auth.as_deref(), p.limiter.as_deref()));
        let mut also_auth = Also::default();
        let mut also_limiter = Also::default();
        for p in self.paths.iter().filter(loose) {
            also_auth.add(besides(p.auth.as_ref(), auth));
            also_limiter.add(besides(p.limiter.as_ref(), limiter));
        }
        let Some(p) = matched else { return Ok(Target { also_auth, also_limiter, ..site }) };
        Ok(Target {
            also_auth,
            also_limiter,
            route: Some(&p.route.name),
            upstreams: p.route.upstreams.as_ref().unwrap_or(&self.site.upstreams),
            pool: &p.pool,
            response_headers: &p.route.response_headers,
            request_headers: &p.route.request_headers,
            auth: p.auth.as_deref(),
            middlewares: &p.route.middlewares,
            limiter: p.limiter.as_deref(),
            ..site
        })
    }
}

/// The auth services (or rate limits) of the routes a path matches loosely, besides its own:
/// each one once, up to [`ALSO_MAX`] (more routes than that covering one path loosely, each
/// with another service, is a config no one writes; past it they are not asked). No allocation.
#[derive(Debug)]
pub struct Also<'a, T>([Option<&'a T>; ALSO_MAX]);

// By hand: derived, they would ask `T: Copy` of what is only referred to.
impl<T> Clone for Also<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for Also<'_, T> {}

/// How many [`Also`] holds.
const ALSO_MAX: usize = 4;

impl<T> Default for Also<'_, T> {
    fn default() -> Self {
        Self([None; ALSO_MAX])
    }
}

impl<'a, T> Also<'a, T> {
    fn add(&mut self, item: Option<&'a T>) {
        let Some(item) = item else { return };
        if self.iter().any(|held| std::ptr::eq(held, item)) {
            return;
        }
        if let Some(free) = self.0.iter_mut().find(|slot| slot.is_none()) {
            *free = Some(item);
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = &'a T> + '_ {
        self.0.iter().flatten().copied()
    }

    pub fn is_empty(&self) -> bool {
        self.0[0].is_none()
    }
}

/// `extra`, unless it is `own` (one shared by both).
fn besides<'a, T>(extra: Option<&'a Arc<T>>, own: Option<&T>) -> Option<&'a T> {
    extra.map(|e| &**e).filter(|e| !own.is_some_and(|o| std::ptr::eq(*e, o)))
}

static NO_HEADERS: HeaderRules = Vec::new();

/// Host → site: exact names first, then the longest `*.suffix` wildcard (nginx rules).
#[derive(Debug, Default)]
pub struct Routes {
    names: NameRouter<Arc<SiteRoute>>,
    /// `http.access_log`: where requests for no site are logged.
    pub default_log: Option<Arc<Sink>>,
}

/// Why the table could not be built.
#[derive(Debug, thiserror::Error)]
pub enum RoutesError {
    #[error("site {host}: {source}")]
    Client { host: String, source: ClientError },
    #[error("site {host}: {source}")]
    Name { host: String, source: PatternError },
    #[error("site {host}: no upstream pool")]
    NoPool { host: String },
    #[error("{field}: cannot open `{path}`: {source}")]
    AccessLog { field: String, path: String, source: std::io::Error },
    #[error("{field}: {source}")]
    AuthClient { field: String, source: ClientError },
}

/// The writer of `log`, opened (or shared) now; `field` names it in the error.
fn open_log(field: String, log: Option<&AccessLog>) -> Result<Option<Arc<Sink>>, RoutesError> {
    let Some(log) = log else { return Ok(None) };
    crate::access_log::open(&log.path, log.flush).map(Some).map_err(|source| RoutesError::AccessLog {
        field,
        path: log.path.display().to_string(),
        source,
    })
}

impl Routes {
    /// The table for `config`, with each site's pool from `pools` (built from the same config)
    /// and its upstream clients for `loops` event loops (`shared::workers`).
    pub fn build(config: &Config, pools: &Pools, loops: usize) -> Result<Self, RoutesError> {
        let mut routes = Self {
            default_log: open_log("http.access_log.path".into(), config.http.access_log.as_ref())?,
            ..Self::default()
        };
        for (i, site) in config.sites.iter().enumerate() {
            let pool =
                pools.site(&site.host).cloned().ok_or_else(|| RoutesError::NoPool { host: site.host.clone() })?;
            let connect = config.http.upstream_connect_timeout;
            let auth = |field: String, fa: Option<&crate::config::ForwardAuth>| {
                fa.map(|fa| AuthClient::new(fa, connect, loops))
                    .transpose()
                    .map(|a| a.map(Arc::new))
                    .map_err(|source| RoutesError::AuthClient { field, source })
            };
            let site_auth = auth(format!("site[{i}].forward_auth"), site.forward_auth.as_ref())?;
            let site_limiter = site.middlewares.rate_limit.as_ref().map(|r| Arc::new(Limiter::new(r, &site.host, "")));
            let mut paths: Vec<PathRoute> = Vec::with_capacity(site.routes.len());
            for r in &site.routes {
                let pool = match r.upstreams {
                    None => pool.clone(),
                    Some(_) => pools
                        .route(&site.host, &r.name)
                        .cloned()
                        .ok_or_else(|| RoutesError::NoPool { host: format!("{}#{}", site.host, r.name) })?,
                };
                // A route that inherits the site's auth, or has the same as a route before it,
                // shares its client (and connections): one auth service is one, for
                // `also_auth` too, which asks only another.
                let same =
                    paths.iter().find(|p| p.route.forward_auth.is_some() && p.route.forward_auth == r.forward_auth);
                let auth = if r.forward_auth.is_some() && r.forward_auth == site.forward_auth {
                    site_auth.clone()
                } else if let Some(p) = same {
                    p.auth.clone()
                } else {
                    auth(format!("site[{i}].route {}.forward_auth", r.name), r.forward_auth.as_ref())?
                };
                // A route that inherits the site's rate limit shares its budget.
                let limiter = if r.middlewares.rate_limit == site.middlewares.rate_limit {
                    site_limiter.clone()
                } else {
                    r.middlewares.rate_limit.as_ref().map(|l| Arc::new(Limiter::new(l, &site.host, &r.name)))
                };
                paths.push(PathRoute { route: r.clone(), pool, auth, limiter });
            }
            let route = Arc::new(SiteRoute {
                access_log: open_log(format!("site[{i}].access_log.path"), site.access_log.as_ref())?,
                clients: per_loop(site.insecure_skip_verify, site.ca_file.as_deref(), connect, loops, Connections::new)
                    .map_err(|source| RoutesError::Client { host: site.host.clone(), source })?,
                pool,
                auth: site_auth,
                paths,
                limiter: site_limiter,
                identity_headers: identity_headers(site),
                label: Arc::from(site.host.as_str()),
                metrics: SiteMetrics::default(),
                site: site.clone(),
            });
            for name in site.names() {
                routes
                    .names
                    .insert(name, route.clone())
                    .map_err(|source| RoutesError::Name { host: site.host.clone(), source })?;
            }
        }
        Ok(routes)
    }

    /// The site for a normalised (lower-case, no port, no trailing dot) host.
    pub fn find(&self, host: &str) -> Option<&Arc<SiteRoute>> {
        self.names.lookup(host)
    }
}

/// The identity header names of `site`: its and its routes' `auth_response_headers`, once each.
fn identity_headers(site: &Site) -> Vec<http::HeaderName> {
    let mut names: Vec<http::HeaderName> = Vec::new();
    let all = site.forward_auth.iter().chain(site.routes.iter().filter_map(|r| r.forward_auth.as_ref()));
    for name in all.flat_map(|fa| fa.response_headers.iter()) {
        if !names.contains(name) {
            names.push(name.clone());
        }
    }
    names
}

/// The host a request is for, lower-cased, without userinfo, port or trailing dot; `None`
/// (answered 400) for several Host headers, an HTTP/1.1 request without one (RFC 9112
/// §3.2; nginx alike), or a host that is not a plain name or address ([`plain_host`]). A
/// target with an authority (h2's `:authority`, HTTP/1.1's absolute
/// form) names the host (RFC 9112 §3.2.2, RFC 9113 §8.3.1; Go's server, so Caddy and
/// Traefik, do the same), and a Host header that disagrees is replaced by it: the site is
/// found by the authority, so forward auth's X-Forwarded-Host and the upstream's Host must be
/// it too, or a client could have a protected site's auth judge a public name.
pub fn request_host<B>(req: &mut http::Request<B>) -> Option<String> {
    let replace = {
        let mut hosts = req.headers().get_all(http::header::HOST).iter();
        let (host, several) = (hosts.next(), hosts.next().is_some());
        if several || (host.is_none() && req.version() == http::Version::HTTP_11) {
            return None;
        }
        let Some(authority) = req.uri().authority() else {
            return host_name(host?.to_str().ok().filter(|h| plain_host(h))?);
        };
        let name = without_userinfo(authority.as_str());
        if !plain_host(name) {
            return None;
        }
        let replace = match host {
            Some(v) => !v.as_bytes().eq_ignore_ascii_case(name.as_bytes()),
            // h2's usual request: nothing to align, nothing allocated; a userinfo would reach
            // forward auth, which falls back to the authority.
            None => name.len() != authority.as_str().len(),
        };
        // From a parsed authority: always a valid header value.
        replace.then(|| http::HeaderValue::from_str(name).ok()).flatten()
    };
    if let Some(v) = replace {
        req.headers_mut().insert(http::header::HOST, v);
    }
    host_name(req.uri().authority()?.as_str())
}

/// Whether `raw` is `host[:port]` with a host of letters, digits, `-`, `_` and `.` (no empty
/// label but a trailing one) or an IP address in brackets, and a port of digits. The site is
/// found by this name, and the Host that forward auth and the upstream are shown is this
/// header: with a `/`, `@`, `%` or `\` in it, an auth service or application that parses it
/// into a URL could see another host than the one routed on (`a.example.org/@b.example.org`
/// was routed to b). nginx refuses `/` and `..` in a Host, Go's server (so Caddy and
/// Traefik) `/`, `@` and `\`.
fn plain_host(raw: &str) -> bool {
    // One pass over the bytes: this runs for every request.
    let b = raw.as_bytes();
    if b.first() == Some(&b'[') {
        let Some(close) = b.iter().position(|&c| c == b']') else { return false };
        let ip = &b[1..close];
        let address = !ip.is_empty() && ip.iter().all(|&c| c.is_ascii_hexdigit() || c == b':' || c == b'.');
        return address && plain_port(&b[close + 1..]);
    }
    // Bytes in the current label: 0 at a `.` means an empty label.
    let mut label = 0usize;
    for (i, &c) in b.iter().enumerate() {
        match c {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' => label += 1,
            b'.' if label > 0 => label = 0,
            b':' => return i > 0 && plain_port(&b[i..]),
            _ => return false,
        }
    }
    !b.is_empty()
}

/// What follows a host: nothing, or `:` and up to five digits.
fn plain_port(rest: &[u8]) -> bool {
    match rest.split_first() {
        None => true,
        Some((b':', port)) => port.len() <= 5 && port.iter().all(u8::is_ascii_digit),
        Some(_) => false,
    }
}

fn without_userinfo(authority: &str) -> &str {
    authority.rsplit_once('@').map_or(authority, |(_, h)| h)
}

/// `raw` (an authority or a Host header) as a site name: lower-cased, without userinfo, port
/// or trailing dot.
fn host_name(raw: &str) -> Option<String> {
    let raw = without_userinfo(raw);
    let host = if raw.starts_with('[') {
        // IPv6 literal: keep the brackets, drop a port after them.
        raw.split_once(']').map(|(h, _)| &raw[..h.len() + 1])?
    } else {
        raw.split(':').next().unwrap_or(raw)
    };
    // One allocation per request: the name is cut in place and lowercased into its copy.
    let host = host.trim_end_matches('.');
    (!host.is_empty()).then(|| host.to_ascii_lowercase())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_normalised() {
        let req = |h: &str| http::Request::builder().uri("/x").header("host", h).body(()).unwrap();
        assert_eq!(request_host(&mut req("Cloud.Example.org:443")).unwrap(), "cloud.example.org");
        assert_eq!(request_host(&mut req("cloud.example.org.")).unwrap(), "cloud.example.org");
        assert_eq!(request_host(&mut req("[200::1]:80")).unwrap(), "[200::1]");
        let mut h2 =
            http::Request::builder().version(http::Version::HTTP_2).uri("https://A.example.org/x").body(()).unwrap();
        assert_eq!(request_host(&mut h2).unwrap(), "a.example.org");
    }

    #[test]
    fn the_targets_authority_is_the_host() {
        let versioned = |version: http::Version, uri: &str, hosts: &[&str]| {
            let mut b = http::Request::builder().version(version).uri(uri);
            for h in hosts {
                b = b.header("host", *h);
            }
            b.body(()).unwrap()
        };
        let req = |uri: &str, hosts: &[&str]| versioned(http::Version::HTTP_11, uri, hosts);
        let h2 = |uri: &str, hosts: &[&str]| versioned(http::Version::HTTP_2, uri, hosts);
        let h10 = |uri: &str, hosts: &[&str]| versioned(http::Version::HTTP_10, uri, hosts);
        let host = |r: &http::Request<()>| {
            r.headers().get_all("host").iter().map(|v| v.to_str().unwrap().to_string()).collect::<Vec<_>>()
        };
        // Absolute form (or h2) naming another host than the Host header: the target wins.
        let mut r = req("http://user@secret.example.org:8443/admin", &["public.example.org"]);
        assert_eq!(request_host(&mut r).unwrap(), "secret.example.org");
        assert_eq!(host(&r), ["secret.example.org:8443"]);
        // h2 naming another host in a host header: the same.
        let mut r = h2("https://a.example.org/", &["b.example.org"]);
        assert_eq!(request_host(&mut r).unwrap(), "a.example.org");
        assert_eq!(host(&r), ["a.example.org"]);
        // Agreeing (case aside) or absent where allowed: left as it is.
        let mut r = req("https://A.example.org/", &["a.example.org"]);
        assert_eq!(request_host(&mut r).unwrap(), "a.example.org");
        assert_eq!(host(&r), ["a.example.org"]);
        let mut r = h2("https://a.example.org/", &[]);
        assert_eq!(request_host(&mut r).unwrap(), "a.example.org");
        assert!(host(&r).is_empty());
        // A userinfo without a Host (HTTP/1.0): the Host says the name alone.
        let mut r = h10("http://user@a.example.org/", &[]);
        assert_eq!(request_host(&mut r).unwrap(), "a.example.org");
        assert_eq!(host(&r), ["a.example.org"]);
        // Origin form: one Host is the host.
        assert_eq!(request_host(&mut req("/x", &["a.example.org"])).unwrap(), "a.example.org");
        // No host: HTTP/1.0 names none; HTTP/1.1 must have a Host, whatever the target.
        assert_eq!(request_host(&mut h10("/x", &[])), None);
        assert_eq!(request_host(&mut req("/x", &[])), None);
        assert_eq!(request_host(&mut req("https://a.example.org/", &[])), None);
        // A Host that says more than a name and port: none (a URL parser would read another
        // host in the first: that is what auth and the upstream are shown).
        for bad in [
            "public.example.org/@secret.example.org",
            "public.example.org@secret.example.org",
            "evil.com/.example.org",
            "evil.com%2f.example.org",
            "a.example.org\\@b.example.org",
            "a..example.org",
            ".example.org",
            "a.example.org:80x",
            "a.example.org:123456",
            "[200::1",
            "[200::1]x",
            "[]",
            "",
        ] {
            assert_eq!(request_host(&mut req("/x", &[bad])), None, "{bad}");
        }
        for good in
            ["a.example.org", "A-b_c.example.org.", "a.example.org:", "a:8443", "[200::1]", "[::ffff:1.2.3.4]:80"]
        {
            assert!(request_host(&mut req("/x", &[good])).is_some(), "{good}");
        }
        assert_eq!(request_host(&mut req("http://a!b.example.org/x", &["a.example.org"])), None);
        // Several Host headers: none, whatever the target.
        assert_eq!(request_host(&mut req("/x", &["a.example.org", "b.example.org"])), None);
        assert_eq!(request_host(&mut req("https://a.example.org/", &["a.example.org", "a.example.org"])), None);
    }

    #[test]
    fn a_site_with_forward_auth_refuses_paths_its_auth_could_misjudge() {
        let c = crate::config::from_toml_str(
            r#"
            [[site]]
            host = "auth.example.org"
            upstream = "http://127.0.0.1:1"
            forward_auth = { address = "http://127.0.0.1:9091/api/authz/forward-auth" }
            [[site]]
            host = "open.example.org"
            upstream = "http://127.0.0.1:2"
            "#,
        )
        .unwrap();
        let r = Routes::build(&c, &Pools::build(&Arc::new(c.clone()), None), 1).unwrap();
        let target = |host: &str, path: &str| r.find(host).unwrap().target(path).is_ok();
        for bad in [
            "/public/../admin",
            "/public/%2e%2e/admin",
            "/public/%2E./admin",
            "/public/..%2Fadmin",
            "/public%2F..%2Fadmin",
            "/public\\..\\admin",
            "/public/..;jsessionid=x/admin",
            "/public/./x",
            "/public/..",
            "/a%00b",
        ] {
            assert!(!target("auth.example.org", bad), "{bad}");
            assert!(target("open.example.org", bad), "{bad}: a site without auth or routes takes any path");
        }
        for good in [
            "/public/page",
            "/api/queues/%2F/q",
            "/projects/group%2Fproject",
            "/a/...",
            "/.well-known/x",
            "/a.b/..c",
            "/%zz",
            "/x%2",
        ] {
            assert!(target("auth.example.org", good), "{good}");
        }
    }

    /// A path that is public as written but protected with its case ignored takes the
    /// protected route (an upstream that ignores case would serve it as that one).
    #[test]
    fn a_path_protected_but_for_its_case_takes_the_protected_route() {
        let c = crate::config::from_toml_str(
            r#"
            [[site]]
            host = "app.example.org"
            upstream = "http://127.0.0.1:1"
            [[site.route]]
            path_prefix = "/admin"
            forward_auth = { address = "http://127.0.0.1:9091/api/authz/forward-auth" }
            [[site.route]]
            path = "/Admin/help"
            [[site]]
            host = "all.example.org"
            upstream = "http://127.0.0.1:2"
            forward_auth = { address = "http://127.0.0.1:9091/api/authz/forward-auth" }
            [[site.route]]
            path_prefix = "/public"
            forward_auth = false
            "#,
        )
        .unwrap();
        let r = Routes::build(&c, &Pools::build(&Arc::new(c.clone()), None), 1).unwrap();
        let auth = |host: &str, path: &str| r.find(host).unwrap().target(path).unwrap().auth.is_some();
        for protected in ["/admin", "/admin/users", "/ADMIN/users", "/Admin", "/Admin/help", "/aDmIn/x"] {
            assert!(auth("app.example.org", protected), "{protected}");
        }
        for public in ["/", "/administrator", "/ADMINISTRATOR", "/other"] {
            assert!(!auth("app.example.org", public), "{public}");
        }
        // The site's own auth is not given up for a public route's other case, nor the public
        // route's for its own.
        assert!(!auth("all.example.org", "/public/x"));
        assert!(auth("all.example.org", "/PUBLIC/x"));
    }

    /// One trailing `/` more or less takes the protected route as another case does; and a
    /// path under some auth or rate limit as written, and another loosely, keeps both.
    #[test]
    fn a_path_spelt_otherwise_keeps_every_protection() {
        let c = crate::config::from_toml_str(
            r#"
            [[site]]
            host = "open.example.org"
            upstream = "http://127.0.0.1:1"
            [[site.route]]
            path = "/admin"
            forward_auth = { address = "http://127.0.0.1:9091/admins" }
            [[site.route]]
            path_prefix = "/panel/"
            forward_auth = { address = "http://127.0.0.1:9091/admins" }
            [[site.route]]
            path = "/login"
            rate_limit = { requests = 1 }
            [[site]]
            host = "signed.example.org"
            upstream = "http://127.0.0.1:2"
            forward_auth = { address = "http://127.0.0.1:9091/everyone" }
            [[site.route]]
            path_prefix = "/admin"
            forward_auth = { address = "http://127.0.0.1:9091/admins" }
            [[site.route]]
            path = "/api"
            forward_auth = { address = "http://127.0.0.1:9091/api" }
            [[site.route]]
            path_prefix = "/api/"
            forward_auth = { address = "http://127.0.0.1:9091/api" }
            [[site.route]]
            path = "/a"
            forward_auth = { address = "http://127.0.0.1:9091/admins" }
            [[site.route]]
            path = "/a/"
            rate_limit = { requests = 1 }
            [[site.route]]
            path = "/panel"
            forward_auth = { address = "http://127.0.0.1:9091/admins" }
            [[site.route]]
            path_prefix = "/panel/"
            forward_auth = { address = "http://127.0.0.1:9091/panel" }
            "#,
        )
        .unwrap();
        let r = Routes::build(&c, &Pools::build(&Arc::new(c.clone()), None), 1).unwrap();
        let t = |host: &str, path: &str| {
            let t = r.find(host).unwrap().target(path).unwrap();
            (t.auth.is_some(), !t.also_auth.is_empty(), t.limiter.is_some() || !t.also_limiter.is_empty())
        };
        for path in ["/admin", "/admin/", "/ADMIN/", "/panel/", "/panel/x", "/panel", "/PANEL"] {
            assert_eq!(t("open.example.org", path), (true, false, false), "{path}");
        }
        for path in ["/admin/x", "/panels", "/"] {
            assert_eq!(t("open.example.org", path), (false, false, false), "{path}");
        }
        for path in ["/login", "/LOGIN", "/login/", "/Login/"] {
            assert_eq!(t("open.example.org", path), (false, false, true), "{path}: rate limited");
        }
        // Signed in as written, the administrators' auth too as an upstream may serve it.
        assert_eq!(t("signed.example.org", "/ADMIN/x"), (true, true, false));
        assert_eq!(t("signed.example.org", "/admin/x"), (true, false, false), "the route's own only");
        assert_eq!(t("signed.example.org", "/other"), (true, false, false));
        // Two routes with the same auth service: asked once.
        assert_eq!(t("signed.example.org", "/api/"), (true, false, false));
        assert_eq!(t("signed.example.org", "/API"), (true, true, false), "the site's, and the API's");
        // The auth of one loose route and the rate limit of another both count.
        assert_eq!(t("signed.example.org", "/A"), (true, true, true));
        // Every loose route's auth service, each once.
        let asked = |path: &str| r.find("signed.example.org").unwrap().target(path).unwrap().also_auth.iter().count();
        assert_eq!((asked("/A"), asked("/API"), asked("/Panel"), asked("/panel/x")), (1, 1, 2, 0));
    }

    #[test]
    fn exact_beats_wildcard() {
        let c = crate::config::from_toml_str(
            r#"
            [[site]]
            host = "a.example.org"
            upstream = "http://127.0.0.1:1"
            [[site]]
            host = "*.example.org"
            upstream = "http://127.0.0.1:2"
            "#,
        )
        .unwrap();
        let r = Routes::build(&c, &Pools::build(&Arc::new(c.clone()), None), 1).unwrap();
        let upstream = |name: &str| r.find(name).map(|s| s.site.upstreams.members[0].target.authority.to_string());
        assert_eq!(upstream("a.example.org").unwrap(), "127.0.0.1:1");
        assert_eq!(upstream("b.example.org").unwrap(), "127.0.0.1:2");
        assert!(r.find("example.org").is_none());
        // nginx rules: a wildcard covers deeper names too.
        assert_eq!(upstream("x.b.example.org").unwrap(), "127.0.0.1:2");
    }
}
