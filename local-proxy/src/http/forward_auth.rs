//! Forward auth: before a request goes upstream, ask an auth service (Authelia, Authentik's
//! outpost, oauth2-proxy, ...) whether it may, as Traefik's ForwardAuth and Caddy's
//! forward_auth do.
//!
//! The auth request is a `GET` of the configured address with no body, carrying the client's
//! headers (all of them, or only `auth_request_headers`; hop-by-hop and body framing ones
//! never) and the original request as `X-Forwarded-Method/Proto/Host/Uri/For` — ours, from
//! the connection (the PROXY header's client), unless `trust_forward_header` passes the
//! client's own on. A 2xx answer lets the request through with `auth_response_headers`
//! copied from it (each listed header is first removed from the client's request, so a
//! client cannot send its own `X-User-Id` and have it reach the upstream when the auth
//! answer lacks one). Any other answer goes back to the client as it came: status, headers
//! (`Location`, `Set-Cookie`, ...) and body. No answer: 503 when the service cannot be
//! reached or broke the exchange, 504 when it did not answer within `timeout`; never
//! "let through".

use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use tokio::time::Instant;

use super::body::{self, Body};
use super::conn::Conn;
use super::headers::strip_hop_by_hop;
use super::pages;
use super::upstream::{empty, error_chain, per_loop, pooled, ClientError, UpstreamClient};
use crate::config::ForwardAuth;
use crate::metrics::names;
use shared::workers::PerLoop;

/// The bytes of a 2xx answer's body read (and dropped) so its connection can be reused.
const DRAIN_MAX: usize = 64 * 1024;
/// The most of a denial's page (a sign-in redirect's, a 401's) passed on to the client.
const DENIAL_PAGE_MAX: usize = 64 * 1024;

pub const X_FORWARDED_METHOD: HeaderName = HeaderName::from_static("x-forwarded-method");
pub const X_FORWARDED_URI: HeaderName = HeaderName::from_static("x-forwarded-uri");

/// One auth service, as a site or route uses it.
#[derive(Debug)]
pub struct AuthClient {
    config: ForwardAuth,
    /// One per event loop (`upstream::per_loop`).
    clients: PerLoop<UpstreamClient>,
}

/// What the auth service decided.
pub enum Verdict {
    /// Go on: set these headers on the upstream request (after removing every configured
    /// name from it); `user` for the access log.
    Allow { headers: Vec<(HeaderName, HeaderValue)>, user: Option<String> },
    /// Answer the client with this; the label is the request's `result`.
    Deny(Response<Body>, &'static str),
}

impl AuthClient {
    /// The client of `config` for `loops` event loops.
    pub fn new(config: &ForwardAuth, connect_timeout: Duration, loops: usize) -> Result<Self, ClientError> {
        // The connect is part of the auth deadline; never wait longer for it than for the answer.
        let connect = connect_timeout.min(config.timeout);
        let clients = per_loop(config.insecure_skip_verify, config.ca_file.as_deref(), connect, loops, pooled)?;
        Ok(Self { config: config.clone(), clients })
    }

    /// Whether the client's X-Forwarded-* are taken as the original request's
    /// (`trust_forward_header`: the client is a proxy itself).
    pub fn trusts_forward_header(&self) -> bool {
        self.config.trust_forward_header
    }

    /// The headers this auth service's answer may set: removed from every client request.
    pub fn response_headers(&self) -> &[HeaderName] {
        &self.config.response_headers
    }

    /// Ask the auth service about `req` (not consumed: its body stays for the upstream).
    pub async fn check<B>(
        &self,
        req: &Request<B>,
        conn: &Conn,
        host: Option<&str>,
        site: &str,
        route: Option<&str>,
    ) -> Verdict {
        let start = Instant::now();
        let (verdict, result) = self.ask(req, conn, host, site).await;
        let labels =
            [("site", site.to_string()), ("route", route.unwrap_or("").to_string()), ("result", result.into())];
        metrics::counter!(names::FORWARD_AUTH, &labels).increment(1);
        metrics::histogram!(names::FORWARD_AUTH_DURATION, "site" => site.to_string())
            .record(start.elapsed().as_secs_f64());
        verdict
    }

    async fn ask<B>(&self, req: &Request<B>, conn: &Conn, host: Option<&str>, site: &str) -> (Verdict, &'static str) {
        let c = &self.config;
        let start = Instant::now();
        let mut auth = Request::new(empty());
        *auth.uri_mut() = c.address.clone();
        *auth.headers_mut() = self.auth_headers(req, conn, host);
        let answer = tokio::time::timeout(c.timeout, self.clients.get().request(auth)).await;
        let resp = match answer {
            Err(_) => {
                shared::warn_every_second!(site, address = %c.address, "forward auth timed out: 504");
                let page = pages::error(StatusCode::GATEWAY_TIMEOUT, "The sign-in service took too long to answer.");
                return (Verdict::Deny(page, "auth_timeout"), "timeout");
            }
            Ok(Err(e)) => {
                shared::warn_every_second!(site, address = %c.address, error = %error_chain(&e), "forward auth unreachable: 503");
                let page =
                    pages::error(StatusCode::SERVICE_UNAVAILABLE, "The sign-in service is not answering right now.");
                return (Verdict::Deny(page, "auth_unavailable"), "unavailable");
            }
            Ok(Ok(resp)) => resp,
        };
        if !resp.status().is_success() {
            let (mut parts, incoming) = resp.into_parts();
            strip_hop_by_hop(&mut parts.headers, false);
            // Read whole within what is left of the timeout: a sign-in redirect's or a 401's
            // page is small, and an auth service stalling mid-page held the client's request
            // (an h2 stream, or the connection) and a pooled auth connection for the stream
            // stall bound, minutes. Cut, the denial goes with its head alone.
            let left = c.timeout.saturating_sub(start.elapsed());
            let page = tokio::time::timeout(left, http_body_util::Limited::new(incoming, DENIAL_PAGE_MAX).collect());
            let page = match page.await {
                Ok(Ok(page)) => Some(page.to_bytes()),
                Ok(Err(e)) => {
                    shared::warn_every_second!(site, address = %c.address, error = %e, "forward auth's denial page is over 64 KiB or broken: sent without it");
                    None
                }
                Err(_) => {
                    shared::warn_every_second!(site, address = %c.address, "forward auth's denial page did not come whole in time: sent without it");
                    None
                }
            };
            let page = page.map_or_else(
                || {
                    // Nothing of the page goes: no header may describe it.
                    parts.headers.remove(header::CONTENT_LENGTH);
                    parts.headers.remove(header::CONTENT_ENCODING);
                    body::full("")
                },
                body::full,
            );
            return (Verdict::Deny(Response::from_parts(parts, page), "auth_denied"), "denied");
        }
        let mut headers = Vec::new();
        for name in &c.response_headers {
            for v in resp.headers().get_all(name) {
                headers.push((name.clone(), v.clone()));
            }
        }
        let user = resp.headers().get(&c.user_header).and_then(|v| v.to_str().ok()).map(str::to_string);
        // Read what little body a 2xx has (bounded in size and time) so the connection is reused.
        let left = c.timeout.saturating_sub(start.elapsed());
        let drain = http_body_util::Limited::new(resp.into_body(), DRAIN_MAX).collect();
        let _ = tokio::time::timeout(left, drain).await;
        (Verdict::Allow { headers, user }, "allowed")
    }

    /// The auth request's headers: the client's (all or the listed ones) without hop-by-hop
    /// and body headers, and the original request as `X-Forwarded-*`.
    fn auth_headers<B>(&self, req: &Request<B>, conn: &Conn, host: Option<&str>) -> HeaderMap {
        let c = &self.config;
        let mut h = match &c.request_headers {
            None => req.headers().clone(),
            Some(names) => {
                let mut h = HeaderMap::new();
                for n in names {
                    for v in req.headers().get_all(n) {
                        h.append(n.clone(), v.clone());
                    }
                }
                h
            }
        };
        strip_hop_by_hop(&mut h, false);
        for name in [header::HOST, header::CONTENT_LENGTH, header::EXPECT] {
            h.remove(name);
        }
        let raw_host = req
            .headers()
            .get(header::HOST)
            .cloned()
            .or_else(|| req.uri().authority().and_then(|a| HeaderValue::from_str(a.as_str()).ok()))
            .or_else(|| host.and_then(|h| HeaderValue::from_str(h).ok()));
        let uri = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let client = conn.info.client.ip().to_canonical().to_string();
        let ours: [(HeaderName, Option<HeaderValue>); 5] = [
            (X_FORWARDED_METHOD, HeaderValue::from_str(req.method().as_str()).ok()),
            (
                super::headers::X_FORWARDED_PROTO,
                Some(HeaderValue::from_static(if conn.tls { "https" } else { "http" })),
            ),
            (super::headers::X_FORWARDED_HOST, raw_host),
            (X_FORWARDED_URI, HeaderValue::from_str(uri).ok()),
            (super::headers::X_FORWARDED_FOR, HeaderValue::from_str(&client).ok()),
        ];
        if !c.trust_forward_header {
            h.remove(header::FORWARDED);
            h.remove(super::headers::X_REAL_IP);
            if let Ok(v) = HeaderValue::from_str(&client) {
                h.insert(super::headers::X_REAL_IP, v);
            }
        }
        for (name, value) in ours {
            // Trusted: the client's own value, whether or not auth_request_headers lists it.
            let theirs = req.headers().get(&name).filter(|_| c.trust_forward_header).cloned();
            match theirs.or(value) {
                Some(v) => {
                    h.insert(name, v);
                }
                None => {
                    h.remove(name);
                }
            }
        }
        h
    }
}

/// Apply an allowed request's auth headers: every configured name removed from the client's
/// request first (spoofed `X-User-*` never reach the upstream), then the auth answer's values.
pub fn apply(headers: &mut HeaderMap, configured: &[HeaderName], from_auth: Vec<(HeaderName, HeaderValue)>) {
    for name in configured {
        headers.remove(name);
    }
    for (name, value) in from_auth {
        headers.append(name, value);
    }
}
