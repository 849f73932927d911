//! Locally generated responses: error pages a person can read, redirects, health.

use http::{header, HeaderValue, Response, StatusCode};

use super::body::{full, Body};

/// A small HTML page with a status and one sentence of explanation.
pub fn error(status: StatusCode, detail: &str) -> Response<Body> {
    let reason = status.canonical_reason().unwrap_or("Error");
    let code = status.as_u16();
    let html = format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{code} {reason}</title></head>\n\
         <body><h1>{code} {reason}</h1>\n<p>{detail}</p></body></html>\n"
    );
    let mut resp = Response::new(full(html));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// 502: the upstream refused the connection, is down, or broke the exchange.
pub fn bad_gateway() -> Response<Body> {
    error(
        StatusCode::BAD_GATEWAY,
        "The service behind this address is not answering right now (connection refused or \
         failed). Please try again in a moment.",
    )
}

/// 504: the upstream accepted the request but did not answer in time.
pub fn gateway_timeout() -> Response<Body> {
    error(
        StatusCode::GATEWAY_TIMEOUT,
        "The service behind this address took too long to answer. Please try again in a moment.",
    )
}

/// 404 for a path that only vulnerability scanners ask for, or a name we do not serve.
pub fn not_found(detail: &str) -> Response<Body> {
    error(StatusCode::NOT_FOUND, detail)
}

/// A plain-text response.
pub fn text(status: StatusCode, body: impl Into<String>) -> Response<Body> {
    let mut resp = Response::new(full(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// 308 to `location`, keeping the method and body.
pub fn redirect(location: &str) -> Response<Body> {
    let mut resp = error(StatusCode::PERMANENT_REDIRECT, "This site is served over HTTPS.");
    match HeaderValue::from_str(location) {
        Ok(v) => {
            resp.headers_mut().insert(header::LOCATION, v);
        }
        // Cannot happen for a validated host and a parsed path; answer plainly if it does.
        Err(_) => return error(StatusCode::BAD_REQUEST, "Bad request target."),
    }
    resp
}
