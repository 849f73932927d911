//! One HTTP request: health, ACME challenges, redirects to HTTPS, scanner blocks, the route,
//! the middlewares (`middleware`: hostile clients, rate limit, CORS preflight), forward auth,
//! then the reverse proxy to the site's upstream, with CORS headers and compression on the
//! way back. Every request is counted by site and result, and logged to its site's access
//! log when it has one.

use std::path::Path;
use std::sync::Arc;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use tokio::time::Instant;

use super::access::{Entry, RouteSeen};
use super::body::{full, Body, ClientBody};
use super::conn::Conn;
use super::forward::forward;
use super::forward_auth::{self, Verdict};
use super::middleware::Before;
use super::pages;
use super::park::BodyBusy;
use super::routes::{request_host, SiteRoute, STATUS_CLASSES};
use crate::metrics::names;
use crate::state::State;

const ACME_PREFIX: &str = "/.well-known/acme-challenge/";
const HEALTHZ: &str = "/healthz";

/// Answer one request.
pub async fn handle(mut req: Request<Incoming>, conn: Arc<Conn>) -> Response<Body> {
    let start = Instant::now();
    let routes = conn.state.routes.load_full();
    let host = request_host(&mut req);
    let route = host.as_deref().and_then(|h| routes.find(h)).cloned();
    // Counted at the end, on the site's kept metrics (the route itself moves into `respond`).
    let counted = route.clone();
    let log = match &route {
        Some(r) => r.access_log.clone(),
        None => routes.default_log.clone(),
    };
    let mut entry = log.map(|sink| {
        let site = route.as_ref().map(|r| r.site.host.as_str());
        Entry::new(sink, &req, &conn, site, host.as_deref())
    });
    let counter = entry.as_mut().and_then(|e| e.count_body(req.body()));
    let busy = req.extensions_mut().remove::<BodyBusy>();
    let req = req.map(|body| ClientBody::new(body, counter, busy));

    let logged = entry.is_some();
    let unanswered = Unanswered { counted: &counted, entry: &mut entry, start };
    let (resp, label) = respond(req, &conn, host.as_deref(), route, logged).await;
    unanswered.answered();
    let seconds = start.elapsed().as_secs_f64();
    match (&counted, label) {
        // The usual request: a site's, counted by its status class on the site's kept metrics.
        (Some(r), None) => r.metrics.record(&r.label, status_class(resp.status()), seconds),
        _ => {
            let site_label = match &counted {
                Some(r) => metrics::SharedString::from_shared(r.label.clone()),
                None => metrics::SharedString::const_str("unknown"),
            };
            let result = label.unwrap_or_else(|| STATUS_CLASSES[status_class(resp.status())]);
            metrics::counter!(names::HTTP_REQUESTS, "site" => site_label.clone(), "result" => result).increment(1);
            metrics::histogram!(names::HTTP_REQUEST_DURATION, "site" => site_label).record(seconds);
        }
    }
    match entry {
        Some(entry) => entry.finish(resp, label),
        None => resp,
    }
}

/// A request's count and log line while its response is being made. The request's future is
/// dropped before that if its client closes the connection or resets the stream: it is then
/// counted (result `client_closed`) and logged with status 499, as nginx logs it, instead of
/// leaving no trace (a slow upstream is what operators look for then).
/// It borrows the two: moved in and out, the entry (a few hundred bytes) was copied twice per
/// request (bench/instructions).
struct Unanswered<'a> {
    counted: &'a Option<Arc<SiteRoute>>,
    entry: &'a mut Option<Entry>,
    start: Instant,
}

impl Unanswered<'_> {
    /// The response is ready: the caller counts and logs it.
    fn answered(self) {
        std::mem::forget(self);
    }
}

impl Drop for Unanswered<'_> {
    fn drop(&mut self) {
        const RESULT: &str = "client_closed";
        let site = match self.counted {
            Some(r) => metrics::SharedString::from_shared(r.label.clone()),
            None => metrics::SharedString::const_str("unknown"),
        };
        metrics::counter!(names::HTTP_REQUESTS, "site" => site.clone(), "result" => RESULT).increment(1);
        metrics::histogram!(names::HTTP_REQUEST_DURATION, "site" => site).record(self.start.elapsed().as_secs_f64());
        if let Some(entry) = self.entry.take() {
            entry.unanswered(RESULT);
        }
    }
}

/// The index in [`STATUS_CLASSES`] of `status`'s class.
fn status_class(status: StatusCode) -> usize {
    match status.as_u16() {
        100..=199 => 0,
        200..=299 => 1,
        300..=399 => 2,
        400..=499 => 3,
        _ => 4,
    }
}

/// The response, and a result label when it is not just the status class. `logged`: what
/// the access log wants to know goes in the response's extensions (a map allocated per
/// response, so not when nothing reads it).
async fn respond(
    req: Request<ClientBody>,
    conn: &Conn,
    host: Option<&str>,
    route: Option<Arc<SiteRoute>>,
    logged: bool,
) -> (Response<Body>, Option<&'static str>) {
    let path = req.uri().path();

    // Ingress probes: on PROXY LOCAL connections, or for a name that is not a site (a probe
    // by address), so a site's own /healthz still reaches its upstream.
    if path == HEALTHZ && (conn.info.health_check || route.is_none()) {
        return (health(&conn.state, conn.info.health_check), Some("healthz"));
    }

    if !conn.tls && path.starts_with(ACME_PREFIX) {
        if let Some(resp) = crate::acme::challenges::http01_response(&conn.state.certs, &path[ACME_PREFIX.len()..]) {
            return (resp, Some("acme"));
        }
        let webroot = conn.state.config.load().http.acme_webroot.clone();
        if let Some(root) = webroot {
            return (acme(&root, &path[ACME_PREFIX.len()..]).await, Some("acme"));
        }
        // No webroot: the site's upstream may answer its own challenges (falls through).
    }

    let Some(route) = route else {
        let page = match host {
            Some(_) => pages::not_found("No site is served under this name."),
            // HTTP/1.1 requires a Host (RFC 9112 §3.2: 400 without one, or with several).
            None => pages::error(StatusCode::BAD_REQUEST, "The request names no host, or more than one."),
        };
        return (page, Some("unknown_site"));
    };

    // Only a challenge's own path stays on plain HTTP for the site's upstream to answer: not
    // anything under the prefix (`/.well-known/acme-challenge/../../account`, which an upstream
    // resolves to `/account`).
    let challenge = path.strip_prefix(ACME_PREFIX).is_some_and(is_token);
    if !conn.tls && !challenge && conn.state.config.load().http.redirect_to_https {
        let target = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let host = host.unwrap_or(&route.site.host);
        return (pages::redirect(&format!("https://{host}{target}")), Some("redirect"));
    }

    let Ok(target) = route.target(path) else {
        let mut resp = pages::error(StatusCode::BAD_REQUEST, "This path cannot be served.");
        super::headers::apply_response(resp.headers_mut(), &route.site.response_headers);
        return (resp, Some("bad_path"));
    };
    let mut seen = logged.then(|| RouteSeen { route: target.route.map(str::to_string), user: None });
    let after = match super::middleware::before(&req, conn.info.client.ip(), &target) {
        Before::Go(after) => after,
        Before::Answer(mut resp, label) => {
            super::headers::apply_response(resp.headers_mut(), target.response_headers);
            mark(&mut resp, seen);
            return (resp, Some(label));
        }
    };
    // After the hostile-client rules: a scanner that names itself is closed, whatever it asks.
    if is_blocked(path, &route.site.blocked_paths) {
        let mut resp = pages::not_found("Nothing here.");
        super::headers::apply_response(resp.headers_mut(), target.response_headers);
        mark(&mut resp, seen);
        return (after.finish(resp), Some("blocked"));
    }
    let mut req = req;
    // First, so a header the client names in `Connection` takes nothing this proxy or the
    // auth service adds below.
    let may_upgrade = req.version() == http::Version::HTTP_11;
    super::headers::strip_hop_by_hop(req.headers_mut(), may_upgrade);
    if req.version() == http::Version::HTTP_2 {
        super::headers::join_cookies(req.headers_mut());
    }
    // A client trusted as a proxy (`trust_forward_header`) keeps its claims for the auth
    // service's request; they go before the upstream's, as anyone's (Traefik's
    // trustForwardHeader is the auth request's alone).
    let trusted = target.auth.is_some_and(|a| a.trusts_forward_header());
    if !trusted {
        super::headers::drop_forwarding_claims(req.headers_mut());
    }
    // Identity headers come from the auth service only, on public routes too; nor may a
    // client slip one (or a forwarding claim) in under its `_` spelling.
    for name in &route.identity_headers {
        req.headers_mut().remove(name);
    }
    super::headers::drop_underscore_twins(req.headers_mut(), &route.identity_headers);
    // A route the path matches only loosely must allow it too; only its target's own auth
    // service's answer headers reach the upstream.
    for also in target.also_auth.iter() {
        if let Verdict::Deny(mut resp, label) = also.check(&req, conn, host, target.host, target.route).await {
            super::headers::apply_response(resp.headers_mut(), target.response_headers);
            mark(&mut resp, seen);
            return (after.finish(resp), Some(label));
        }
    }
    if let Some(auth) = target.auth {
        match auth.check(&req, conn, host, target.host, target.route).await {
            Verdict::Allow { headers, user } => {
                // Before the auth service's own go in (X-Forwarded-User may be one of them).
                if trusted {
                    super::headers::drop_forwarding_claims(req.headers_mut());
                }
                forward_auth::apply(req.headers_mut(), auth.response_headers(), headers);
                if let Some(seen) = seen.as_mut() {
                    seen.user = user;
                }
            }
            Verdict::Deny(mut resp, label) => {
                super::headers::apply_response(resp.headers_mut(), target.response_headers);
                mark(&mut resp, seen);
                return (after.finish(resp), Some(label));
            }
        }
    }
    super::headers::apply_request(req.headers_mut(), target.request_headers);

    let timeout = conn.state.config.load().http.upstream_timeout;
    let mut resp = after.finish(forward(req, &target, conn, host, timeout, logged).await);
    mark(&mut resp, seen);
    (resp, None)
}

/// Leave the route and user for the access log, when it wants them.
fn mark(resp: &mut Response<Body>, seen: Option<RouteSeen>) {
    if let Some(seen) = seen {
        resp.extensions_mut().insert(seen);
    }
}

/// Health as the ingress sees it: 200 when we can serve, 503 otherwise, with the reason for
/// an ingress's probe (PROXY LOCAL) only: anyone may ask by address, and the reason names
/// sites ("site wiki.lan has no healthy upstream") a wildcard certificate keeps out of the
/// certificate logs. The admin listener's /healthz gives it to the operator.
pub fn health(state: &State, probe: bool) -> Response<Body> {
    match state.health() {
        Ok(()) => pages::text(StatusCode::OK, "ok\n"),
        Err(why) if probe => pages::text(StatusCode::SERVICE_UNAVAILABLE, format!("unhealthy: {why}\n")),
        Err(_) => pages::text(StatusCode::SERVICE_UNAVAILABLE, "unhealthy\n"),
    }
}

/// Whether `path` is one of `blocked` or below it, ignoring ASCII case (scanners vary it),
/// as an upstream would serve it: decoded (an encoded `/` too), slashes merged, without path
/// parameters, `.` and `..` resolved (`/%2egit/config`, `//.git;x/config`, `/.git%2fconfig`
/// and `/x/../.git/config` are all `/.git/config`, which nginx serves for them). A path with
/// an encoded `\` or NUL is looked at as it came.
fn is_blocked(path: &str, blocked: &[String]) -> bool {
    if blocked.is_empty() {
        return false;
    }
    // Most paths are already as upstreams see them: nothing to decode, merge, cut or resolve.
    let plain = !path.bytes().any(|b| matches!(b, b'%' | b';')) && !path.contains("//") && !path.contains("/.");
    let normal;
    let path = if plain {
        path
    } else {
        normal = crate::config::routes::resolve_path(path);
        normal.as_deref().unwrap_or(path)
    };
    blocked.iter().any(|b| {
        path.len() >= b.len()
            && path.as_bytes()[..b.len()].eq_ignore_ascii_case(b.as_bytes())
            && matches!(path.as_bytes().get(b.len()), None | Some(b'/'))
    })
}

/// Serve a certbot webroot challenge file; tokens are base64url, so nothing else is read.
/// An ACME challenge token as RFC 8555 §8.3 makes them (base64url, no padding), of a sane length.
fn is_token(token: &str) -> bool {
    !token.is_empty()
        && token.len() <= 256
        && token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

async fn acme(webroot: &Path, token: &str) -> Response<Body> {
    if !is_token(token) {
        return pages::not_found("No such challenge.");
    }
    let file = webroot.join(".well-known/acme-challenge").join(token);
    match tokio::fs::read(&file).await {
        Ok(bytes) => {
            let mut resp = Response::new(full(bytes));
            resp.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("text/plain"));
            resp
        }
        Err(_) => pages::not_found("No such challenge."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocked_paths_match_segments() {
        let list = vec!["/wp-admin".to_string(), "/.git".to_string()];
        assert!(is_blocked("/wp-admin", &list));
        assert!(is_blocked("/WP-Admin/setup.php", &list));
        assert!(is_blocked("/.git/config", &list));
        assert!(!is_blocked("/.github/workflows", &list));
        assert!(!is_blocked("/.well-known/../index.html", &list));
        assert!(!is_blocked("/blog/wp-admin", &list));
        assert!(!is_blocked("/", &list));
        // As upstreams would serve them.
        for hidden in [
            "/%2egit/config",
            "//.git/config",
            "/.git;x/config",
            "/%2Egit",
            "/wp-admin;x/",
            "/./.git/config",
            "/x/../.git/config",
            "/x/%2e%2e/wp-admin/",
            "/.git%2fconfig",
            "/x/..%2F.git/config",
        ] {
            assert!(is_blocked(hidden, &list), "{hidden}");
        }
    }
}
