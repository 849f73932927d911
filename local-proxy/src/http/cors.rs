//! CORS answered by the proxy: preflights (`OPTIONS` with `Origin` and
//! `Access-Control-Request-Method`) get a 204 without asking the upstream; other requests
//! from an allowed origin get the `Access-Control-*` response headers the policy says.
//!
//! The proxy owns the policy of a site that has one: `Access-Control-*` headers the upstream
//! sets are removed, so an upstream's `*` cannot widen it, and a request from an origin that
//! is not allowed gets no CORS headers at all (the browser then keeps the response from the
//! page). `Vary: Origin` goes on every response whose headers depend on the origin.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};

use super::body::{full, Body};
use crate::config::middleware::{AllowHeaders, Cors, OriginPattern};
use crate::metrics::names;

const ACAO: HeaderName = header::ACCESS_CONTROL_ALLOW_ORIGIN;
const ACAC: HeaderName = header::ACCESS_CONTROL_ALLOW_CREDENTIALS;

/// Whether `req` is a CORS preflight.
pub fn is_preflight<B>(req: &Request<B>) -> bool {
    req.method() == Method::OPTIONS
        && req.headers().contains_key(header::ORIGIN)
        && req.headers().contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
}

/// The value for `Access-Control-Allow-Origin` when the request's origin is allowed.
fn allow_origin(request: &HeaderMap, cfg: &Cors) -> Option<HeaderValue> {
    let origin = request.get(header::ORIGIN)?;
    let text = origin.to_str().ok()?;
    if !cfg.allow_origins.iter().any(|p| p.matches(text)) {
        return None;
    }
    // `*` is only a valid answer without credentials; with them the origin is echoed.
    let any = cfg.allow_origins.contains(&OriginPattern::Any);
    Some(if any && !cfg.allow_credentials { HeaderValue::from_static("*") } else { origin.clone() })
}

/// Whether the answer depends on the origin (anything but a plain `*` policy).
fn varies(cfg: &Cors) -> bool {
    cfg.allow_credentials || !cfg.allow_origins.contains(&OriginPattern::Any)
}

fn join<T: AsRef<str>>(items: &[T]) -> Option<HeaderValue> {
    let text = items.iter().map(AsRef::as_ref).collect::<Vec<_>>().join(", ");
    (!text.is_empty()).then(|| HeaderValue::from_str(&text).ok()).flatten()
}

/// Answer a preflight; `site` labels the metric.
pub fn preflight<B>(req: &Request<B>, cfg: &Cors, site: &str) -> Response<Body> {
    let mut resp = Response::new(full(""));
    *resp.status_mut() = StatusCode::NO_CONTENT;
    let h = resp.headers_mut();
    h.insert(
        header::VARY,
        HeaderValue::from_static("origin, access-control-request-method, access-control-request-headers"),
    );
    let Some(origin) = allow_origin(req.headers(), cfg) else {
        metrics::counter!(names::CORS, "site" => site.to_string(), "result" => "preflight_denied").increment(1);
        return resp;
    };
    metrics::counter!(names::CORS, "site" => site.to_string(), "result" => "preflight").increment(1);
    h.insert(ACAO, origin);
    if cfg.allow_credentials {
        h.insert(ACAC, HeaderValue::from_static("true"));
    }
    if let Some(v) = join(&cfg.allow_methods.iter().map(Method::as_str).collect::<Vec<_>>()) {
        h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, v);
    }
    let headers = match &cfg.allow_headers {
        AllowHeaders::Mirror => req.headers().get(header::ACCESS_CONTROL_REQUEST_HEADERS).cloned(),
        AllowHeaders::List(list) => join(list),
    };
    if let Some(v) = headers {
        h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, v);
    }
    if let Some(age) = cfg.max_age {
        h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from(age.as_secs()));
    }
    resp
}

/// The origin verdict for a request that is not a preflight, taken before the request is
/// sent on (its headers are not kept): `Some(value)` for `Access-Control-Allow-Origin`.
pub fn decide(request: &HeaderMap, cfg: &Cors, site: &str) -> Option<HeaderValue> {
    request.get(header::ORIGIN)?;
    let allowed = allow_origin(request, cfg);
    if allowed.is_none() {
        metrics::counter!(names::CORS, "site" => site.to_string(), "result" => "denied").increment(1);
    }
    allowed
}

/// Put the policy's headers on the response to a request that is not a preflight.
pub fn apply(resp: &mut Response<Body>, allowed: Option<HeaderValue>, cfg: &Cors) {
    let h = resp.headers_mut();
    for name in [
        ACAO,
        ACAC,
        header::ACCESS_CONTROL_ALLOW_METHODS,
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        header::ACCESS_CONTROL_MAX_AGE,
    ] {
        h.remove(name);
    }
    if varies(cfg) {
        h.append(header::VARY, HeaderValue::from_static("origin"));
    }
    let Some(origin) = allowed else { return };
    h.insert(ACAO, origin);
    if cfg.allow_credentials {
        h.insert(ACAC, HeaderValue::from_static("true"));
    }
    if let Some(v) = join(&cfg.expose_headers) {
        h.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, v);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn cfg(origins: Vec<OriginPattern>, credentials: bool) -> Cors {
        Cors {
            allow_origins: origins,
            allow_methods: vec![Method::GET, Method::PUT],
            allow_headers: AllowHeaders::List(vec![HeaderName::from_static("x-token")]),
            allow_credentials: credentials,
            expose_headers: vec![HeaderName::from_static("x-total")],
            max_age: Some(Duration::from_secs(600)),
        }
    }

    fn req(origin: &str) -> Request<()> {
        Request::builder()
            .method("OPTIONS")
            .uri("/x")
            .header("origin", origin)
            .header("access-control-request-method", "PUT")
            .header("access-control-request-headers", "x-token")
            .body(())
            .unwrap()
    }

    #[test]
    fn preflight_allowed_and_denied() {
        let c = cfg(vec![OriginPattern::Exact("https://app.example.org".into())], true);
        let r = req("https://app.example.org");
        assert!(is_preflight(&r));
        let resp = preflight(&r, &c, "t");
        let h = resp.headers();
        assert_eq!(resp.status(), 204);
        assert_eq!(h[ACAO], "https://app.example.org");
        assert_eq!(h[ACAC], "true");
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_METHODS], "GET, PUT");
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_HEADERS], "x-token");
        assert_eq!(h[header::ACCESS_CONTROL_MAX_AGE], "600");
        let resp = preflight(&req("https://evil.example.net"), &c, "t");
        assert_eq!(resp.status(), 204);
        assert!(resp.headers().keys().all(|k| !k.as_str().starts_with("access-control-")));
    }

    #[test]
    fn actual_requests_get_headers_only_when_allowed() {
        let c = cfg(vec![OriginPattern::Any], false);
        let r = req("https://anywhere.example");
        let allowed = decide(r.headers(), &c, "t");
        let mut resp = Response::new(full("x"));
        resp.headers_mut().insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("DELETE"));
        apply(&mut resp, allowed, &c);
        assert_eq!(resp.headers()[ACAO], "*");
        assert_eq!(resp.headers()[header::ACCESS_CONTROL_EXPOSE_HEADERS], "x-total");
        assert!(resp.headers().get(header::ACCESS_CONTROL_ALLOW_METHODS).is_none(), "the upstream's are removed");
        assert!(resp.headers().get(header::VARY).is_none());

        let c = cfg(vec![OriginPattern::Exact("https://app.example.org".into())], false);
        let mut resp = Response::new(full("x"));
        resp.headers_mut().insert(ACAO, HeaderValue::from_static("*"));
        apply(&mut resp, decide(req("https://evil.example.net").headers(), &c, "t"), &c);
        assert!(resp.headers().get(ACAO).is_none());
        assert_eq!(resp.headers()[header::VARY], "origin");
    }
}
