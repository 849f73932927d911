//! The reverse proxy proper: rewrite the request for the upstream, pick an upstream of the
//! site's pool and send it under a deadline, retrying where that is safe, stream the response
//! back with the site's headers, and hand upgraded connections to `tunnel`.
//!
//! Retries: a failed connect moves to the next usable upstream (the body was never read, see
//! `replay`), as many times as there are upstreams; an idempotent request (GET, HEAD,
//! OPTIONS, PUT, DELETE) without a body or with one of at most `replay::BUFFER_MAX` bytes
//! (read whole first) that fails after it was sent, before any response byte, is sent once
//! more elsewhere; such a request whose kept-alive connection, idle a while, closed under it
//! (the upstream's keep-alive timeout struck as it arrived, so it was never read) goes once to
//! the same upstream on a new connection first, as nginx and Go's client do, and is not
//! counted against the upstream; anything else (a POST) fails with 502, and a request with no
//! answer within `upstream_timeout` with 504 (a hanging upstream is not asked twice). A
//! streamed request body restarts that wait with each piece the upstream takes, so an upload
//! may take as long as it moves; one the client stops sending ends in 408. With no usable
//! upstream: 503 and Retry-After.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::uri::PathAndQuery;
use http::{header, HeaderValue, Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use shared::health::{Outcome, Source};
use tokio::time::Instant;
use tracing::debug;

use super::access::{TunnelSeen, UpstreamSeen};
use super::body::{self, Body, BoxError, ClientBody};
use super::conn::Conn;
use super::headers::{apply_response, is_upgrade, set_forwarded, strip_hop_by_hop};
use super::keepalive::{BodyTimeout, Returning, SendError};
use super::pages;
use super::replay::{NotRead, Replay, Slot};
use super::routes::Target;
use super::upstream::error_chain;
use crate::metrics::names;
use crate::pool::{Active, Tried};

/// Seconds a client is told to wait when no upstream is usable (about a check round).
const RETRY_AFTER: &str = "5";

/// Send `req` to one of the site's upstreams and build the client's response; if `logged`,
/// the last upstream tried, its status and latency go in the response's extensions.
pub async fn forward(
    req: Request<ClientBody>,
    route: &Target<'_>,
    conn: &Conn,
    host: Option<&str>,
    timeout: Duration,
    logged: bool,
) -> Response<Body> {
    let mut seen = None;
    let mut resp = proxy(req, route, conn, host, timeout, logged.then_some(&mut seen)).await;
    if let Some(seen) = seen {
        resp.extensions_mut().insert(seen);
    }
    resp
}

async fn proxy(
    mut req: Request<ClientBody>,
    route: &Target<'_>,
    conn: &Conn,
    host: Option<&str>,
    timeout: Duration,
    // Only for a logged request: an `Arc` clone per attempt otherwise spent for nothing.
    mut seen: Option<&mut Option<UpstreamSeen>>,
) -> Response<Body> {
    let site = route;
    let pool = route.pool;
    // A reverse proxy opens no tunnels to where a client asks (nginx answers 405 too); the
    // upstream connection would carry a request-target it cannot read.
    if req.method() == http::Method::CONNECT {
        let mut resp = pages::error(StatusCode::METHOD_NOT_ALLOWED, "CONNECT is not served here.");
        resp.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD, POST, PUT, DELETE, OPTIONS, PATCH"));
        return with_site_headers(resp, route);
    }
    let upgrade = req.version() == Version::HTTP_11 && is_upgrade(req.headers());
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));

    // h2 clients carry the name in :authority; HTTP/1.1 upstreams need it as Host: the
    // authority as the client sent it, port included (as an HTTP/1.1 client's Host is
    // passed on), so an application that builds links from Host keeps a non-default port.
    if !req.headers().contains_key(header::HOST) {
        let authority = req.uri().authority().map(|a| a.as_str().rsplit('@').next().unwrap_or_default());
        if let Some(v) = authority.or(host).and_then(|h| HeaderValue::from_str(h).ok()) {
            req.headers_mut().insert(header::HOST, v);
        }
    }
    // Hop-by-hop headers went before the routes and forward auth (`handler::respond`).
    set_forwarded(req.headers_mut(), conn.forwarded_for(), conn.tls, host);
    let (mut parts, incoming) = req.into_parts();
    // Shared with the client's request (a reference count), not copied per attempt.
    let path = parts.uri.path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/"));
    let body = match Replay::new(incoming, &parts.method, timeout).await {
        Ok(body) => body,
        Err(NotRead::Stalled) => {
            debug!(site = %site.host, "request body stalled before any attempt: 408");
            let page =
                pages::error(StatusCode::REQUEST_TIMEOUT, "The rest of the request body did not arrive in time.");
            return with_site_headers(page, route);
        }
        Err(NotRead::Broke) => {
            return with_site_headers(pages::error(StatusCode::BAD_REQUEST, "The request body did not arrive."), route)
        }
    };
    let replayable = body.resendable() && parts.method.is_idempotent();

    let mut tried = Tried::default();
    let mut attempts = 0usize;
    let mut resent = false;
    // The upstream whose kept-alive connection closed under the request: asked again at once,
    // on a new connection (once per request).
    let mut stale: Option<usize> = None;
    let mut stale_retried = false;
    // Connects that found this process out of descriptors or local ports.
    let mut shortages = 0usize;
    let (mut resp, lease, guard) = loop {
        let (i, fresh) = match stale.take() {
            Some(i) => (i, true),
            None => {
                let Some(i) = pool.pick(tried) else {
                    if attempts == 0 {
                        pool.count_unavailable();
                        shared::warn_every_second!(site = %site.host, "no usable upstream: 503");
                        return with_site_headers(unavailable(), route);
                    }
                    // Every usable upstream refused the connect, or none could be tried for want
                    // of a descriptor or local port: this proxy's trouble, not theirs (503).
                    if shortages == attempts - usize::from(stale_retried) {
                        return with_site_headers(unavailable(), route);
                    }
                    return with_site_headers(pages::bad_gateway(), route);
                };
                tried.insert(i);
                (i, false)
            }
        };
        attempts += 1;
        let (Some(member), Some(state)) = (site.upstreams.members.get(i), pool.state(i)) else {
            return with_site_headers(pages::bad_gateway(), route);
        };
        let upstream = &member.target;
        if attempts > 1 {
            state.metrics().m_retries.increment(1);
        }
        state.metrics().m_requests.increment(1);
        let mut attempt = Request::new(body.attempt());
        *attempt.method_mut() = parts.method.clone();
        // Origin-form: the connection is the upstream's.
        *attempt.uri_mut() = Uri::from(path.clone());
        *attempt.version_mut() = Version::HTTP_11;
        // Each attempt but a stale retry goes to a different upstream: the last one possible
        // takes the headers instead of copying them (with one upstream, every request); a
        // stale one gives them back.
        let last = attempts - usize::from(stale_retried) >= pool.members.len();
        *attempt.headers_mut() = if last { std::mem::take(&mut parts.headers) } else { parts.headers.clone() };
        // hyper sends a GET or HEAD whose length it does not know without its body (they so
        // seldom have one); one that has one (a chunked search query) goes on chunked, as
        // nginx passes it on.
        if matches!(parts.method, http::Method::GET | http::Method::HEAD) && unknown_length(attempt.body()) {
            attempt.headers_mut().insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        }
        let guard = Active::new(state.clone());
        let start = Instant::now();
        let connected = AtomicBool::new(false);
        // The send's future built where it is awaited (a local moved into either arm would be
        // one more copy of it per request).
        let answer = match body.streaming() {
            // Due from `start`: one clock read less than `timeout`.
            None => tokio::time::timeout_at(
                start + timeout,
                route.client.send_noting(upstream, attempt, !fresh, replayable, &connected),
            )
            .await
            .map_err(|_| Late::Upstream),
            Some(slot) => {
                let send = route.client.send_noting(upstream, attempt, !fresh, replayable, &connected);
                answer_while_sending(send, slot, start, timeout).await
            }
        };
        let latency = start.elapsed();
        if let Some(seen) = seen.as_deref_mut() {
            *seen = Some(UpstreamSeen {
                upstream: pool.members.get(i).map_or_else(|| Arc::from(upstream.to_string()), |m| m.label.clone()),
                status: match &answer {
                    Ok(Ok((resp, _))) => Some(resp.status().as_u16()),
                    _ => None,
                },
                latency,
                attempts,
            });
        }
        match answer {
            Err(Late::Client) => {
                // Not the upstream's failure: the client stopped sending the body it announced.
                // No verdict on the upstream; a retry this was is over all the same.
                pool.record(i, Outcome::Local, Source::Traffic, None);
                debug!(site = %site.host, upstream = %upstream, "request body stalled: 408");
                return with_site_headers(
                    pages::error(StatusCode::REQUEST_TIMEOUT, "The rest of the request body did not arrive in time."),
                    route,
                );
            }
            Err(Late::Upstream) if !connected.load(Ordering::Relaxed) && body.intact() => {
                // The deadline came while connecting (upstream_timeout below
                // upstream_connect_timeout, or a connect that took it all): nothing was sent,
                // so the next upstream may take any request, as after a failed connect.
                metrics::counter!(names::UPSTREAM_ERRORS, "site" => site.host.to_string(), "result" => "timeout")
                    .increment(1);
                state.count_failure("timeout");
                pool.record(i, Outcome::Failed, Source::Traffic, Some("connect timed out"));
                debug!(site = %site.host, upstream = %upstream, "connect outlasted upstream_timeout; next upstream");
                continue;
            }
            Err(Late::Upstream) => {
                metrics::counter!(names::UPSTREAM_ERRORS, "site" => site.host.to_string(), "result" => "timeout")
                    .increment(1);
                state.count_failure("timeout");
                pool.record(i, Outcome::Failed, Source::Traffic, Some("request timed out"));
                shared::warn_every_second!(site = %site.host, upstream = %upstream, "upstream timed out");
                return with_site_headers(pages::gateway_timeout(), route);
            }
            Ok(Err(SendError::Stale(e, headers))) if !stale_retried => {
                // Not the upstream's failure: it closed an idle connection, as it may.
                if last {
                    parts.headers = *headers;
                }
                stale_retried = true;
                stale = Some(i);
                debug!(site = %site.host, upstream = %upstream, error = %e, "kept-alive connection closed under the request; again on a new one");
                continue;
            }
            Ok(Err(e)) if body.streaming().is_some_and(Slot::client_broke) => {
                // Not the upstream's failure: hyper's client stopped at the client's broken
                // body (bad chunks, a reset h2 stream, a closed connection). Counted against
                // the upstream, cancelled uploads would take healthy upstreams out.
                pool.record(i, Outcome::Local, Source::Traffic, None);
                debug!(site = %site.host, upstream = %upstream, error = %error_chain(&e), "request body broke off: 400");
                return with_site_headers(pages::error(StatusCode::BAD_REQUEST, "The request body broke off."), route);
            }
            Ok(Err(e)) if e.is_connect() && shared::health::caused_by_shortage(&e) => {
                // Out of descriptors or local ports (EMFILE, EADDRNOTAVAIL): says nothing of
                // the upstream, as with the probes and streams, so no failure of its. Another
                // upstream (another address) may still have local ports.
                metrics::counter!(names::UPSTREAM_ERRORS, "site" => site.host.to_string(), "result" => "local_resources")
                    .increment(1);
                pool.record(i, Outcome::Local, Source::Traffic, None);
                shortages += 1;
                let reason = error_chain(&e);
                shared::warn_every_second!(site = %site.host, upstream = %upstream, error = %reason,
                    "no descriptor or local port for the upstream connect");
                if body.intact() {
                    continue;
                }
                return with_site_headers(unavailable(), route);
            }
            Ok(Err(e)) => {
                let connect = e.is_connect();
                let result = if connect { "refused" } else { "error" };
                metrics::counter!(names::UPSTREAM_ERRORS, "site" => site.host.to_string(), "result" => result)
                    .increment(1);
                state.count_failure(if connect { "connect" } else { "error" });
                let reason = error_chain(&e);
                pool.record(i, Outcome::Failed, Source::Traffic, Some(&reason));
                // Never sent (the body still waits): any request may go to the next upstream.
                if connect && body.intact() {
                    debug!(site = %site.host, upstream = %upstream, error = %reason, "connect failed; next upstream");
                    continue;
                }
                if !connect && replayable && !resent {
                    resent = true;
                    debug!(site = %site.host, upstream = %upstream, error = %reason, "request failed; once more elsewhere");
                    continue;
                }
                shared::warn_every_second!(site = %site.host, upstream = %upstream, error = %reason, "upstream failed");
                return with_site_headers(pages::bad_gateway(), route);
            }
            Ok(Ok((resp, lease))) => {
                if resp.status().is_server_error() && pool.health.fail_on_5xx {
                    state.count_failure("5xx");
                    pool.record(i, Outcome::Failed, Source::Traffic, Some("answered 5xx"));
                } else {
                    pool.record_ok(i, latency, Source::Traffic);
                }
                break (resp, lease, guard);
            }
        }
    };

    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(client_upgrade) = client_upgrade else {
            // An upstream that switches protocols unasked breaks HTTP; do not pass it on.
            return with_site_headers(pages::bad_gateway(), route);
        };
        let upstream_upgrade = hyper::upgrade::on(&mut resp);
        // The connection is the tunnel's now, never another request's.
        drop(lease);
        let idle = conn.state.config.load().http.idle_timeout;
        // The access log line waits for the upgraded connection to end (its bytes, its
        // duration), as nginx's and HAProxy's do.
        let (ended, tunnel) = TunnelSeen::new();
        // The upgraded connection holds the upstream (least_conn counts it) until it ends.
        conn.set_tunnel(Box::pin(super::tunnel::splice(
            client_upgrade,
            upstream_upgrade,
            site.host.to_string(),
            idle,
            guard,
            ended,
        )));
        let (parts, _) = resp.into_parts();
        let mut resp = Response::from_parts(parts, body::full(""));
        // Connection/Upgrade stay: they are the client's confirmation of the switch. The
        // other hop-by-hop headers go, and the site's response rules apply, as to every
        // other answer.
        strip_hop_by_hop(resp.headers_mut(), true);
        resp.extensions_mut().insert(tunnel);
        return with_site_headers(resp, route);
    }

    strip_hop_by_hop(resp.headers_mut(), false);
    let (parts, incoming) = resp.into_parts();
    // The request counts as active on its upstream until the response body is done.
    let incoming = Returning::new(incoming, lease, timeout).map_err(move |e| {
        guard.count_cut_short(cut_short(&e), &e);
        e
    });
    with_site_headers(Response::from_parts(parts, body::stream(incoming)), route)
}

/// Who a request waited on past `upstream_timeout`.
enum Late {
    /// No answer, and (while a body streamed) it took none of the body.
    Upstream,
    /// The client sent no more of its body.
    Client,
}

/// Await `send` while a streamed request body goes out: `timeout` bounds each wait for the
/// next piece of the body and then the wait for the answer, not the whole upload (nginx's
/// `proxy_read_timeout` starts once the request is sent too); a large upload on a slow link
/// would otherwise end in 504 after `timeout`.
async fn answer_while_sending<F: std::future::Future>(
    send: F,
    body: &Slot,
    start: Instant,
    timeout: Duration,
) -> Result<F::Output, Late> {
    let mut send = std::pin::pin!(send);
    let mut due = start + timeout;
    loop {
        if let Ok(answer) = tokio::time::timeout_at(due, send.as_mut()).await {
            return Ok(answer);
        }
        let next = body.last_moved() + timeout;
        if next <= Instant::now() {
            return Err(if body.waiting_for_client() { Late::Client } else { Late::Upstream });
        }
        due = next;
    }
}

/// How a response body that ended in error broke off: the access log's `result` and the
/// error counters' label.
pub fn cut_short(e: &BoxError) -> &'static str {
    if e.is::<BodyTimeout>() {
        "body_timeout"
    } else {
        "body_error"
    }
}

/// 503 with Retry-After: every upstream of the site is down or drained.
fn unavailable() -> Response<Body> {
    let mut resp = pages::error(
        StatusCode::SERVICE_UNAVAILABLE,
        "The service behind this address is down right now. Please try again in a moment.",
    );
    resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER));
    resp
}

fn with_site_headers(mut resp: Response<Body>, route: &Target<'_>) -> Response<Body> {
    apply_response(resp.headers_mut(), route.response_headers);
    resp
}

/// Whether `body` has something to send whose length is not known ahead.
fn unknown_length(body: &impl http_body::Body) -> bool {
    !body.is_end_stream() && body.size_hint().exact().is_none()
}
