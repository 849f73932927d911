//! One access log line per request: the request's fields are taken when it arrives, the
//! response's when its head is ready, and the line is written when the response body is done
//! or dropped (client gone), so `bytes_sent` and `duration_ms` cover the whole answer. An
//! upgraded connection (101, WebSocket) is logged when it closes instead, with the bytes
//! that went through it both ways.
//!
//! Fields (JSON): `time` (RFC 3339 UTC, when the request arrived), `site` (null: no site),
//! `client`/`client_port` (the client as the proxy believes it: from the PROXY header of a
//! trusted ingress, else the peer), `method`, `host`, `uri` (path and query), `proto`,
//! `status`, `bytes_sent` (response body bytes; upgraded: bytes relayed to the client),
//! `bytes_received` (request body bytes read from the client by the end of the response;
//! upgraded: plus the bytes it sent through the tunnel), `duration_ms`, `result` (the handler's
//! verdict when not just the status: `redirect`, `blocked`, `healthz`, ...; `body_timeout`,
//! `body_error`: the upstream's body broke off after the status was sent; `stalled`: an h2
//! stream reset because its client took nothing for the stall period), `upstream`,
//! `upstream_status`, `upstream_ms` (time to its response head), `upstream_attempts`,
//! `tls_sni`, `tls_version`, `tls_cipher` (IANA name), `user_agent`, `referer`, `request_id` (`X-Request-Id`), `route`
//! (the `[[site.route]]` that served it; null: the site's own settings), `user` (from
//! forward auth's `user_header`; null without auth or header).

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{header, HeaderValue, Method, Request, Response, Version};
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use serde::Serialize;
use tokio::time::Instant;

use super::body::{Body, BoxError};
use super::conn::Conn;
use crate::access_log::Sink;

/// What the reverse proxy saw of the upstream, left in the response's extensions.
#[derive(Debug, Clone)]
pub struct UpstreamSeen {
    /// The upstream's configured URL (the pool's label: shared, not copied per request).
    pub upstream: Arc<str>,
    /// Its response status; `None` when it gave none (refused, failed, timed out).
    pub status: Option<u16>,
    /// Time to its response head (or to the failure).
    pub latency: Duration,
    /// Upstreams tried for this request (more than one after a retry).
    pub attempts: usize,
}

/// Which route of its site answered a request and who forward auth said the user is, left
/// in the response's extensions by the handler (fields `route` and `user`).
#[derive(Debug, Clone, Default)]
pub struct RouteSeen {
    /// The route's name; `None`: the site's own settings (no route matched, or none defined).
    pub route: Option<String>,
    /// From the forward auth answer's `user_header`.
    pub user: Option<String>,
}

/// What an upgraded connection carried, sent by its splice when it has closed.
#[derive(Debug, Clone, Copy, Default)]
pub struct TunnelEnd {
    /// Bytes the client sent through the tunnel.
    pub from_client: u64,
    /// Bytes relayed from the upstream to the client.
    pub to_client: u64,
}

/// What the access log does with a tunnel's end: fill in the line and write it.
type OnEnd = Box<dyn FnOnce(TunnelEnd) + Send>;

/// Left in a 101 response's extensions by the reverse proxy: the line is written when the
/// upgraded connection ends, in the splice's own task (the connection's, which a shutdown
/// drains), or with nothing moved when both sides are gone without one (the upgrade failed).
#[derive(Clone)]
pub struct TunnelSeen(Arc<Mutex<Option<OnEnd>>>);

/// The splice's side of [`TunnelSeen`].
pub struct TunnelDone(Arc<Mutex<Option<OnEnd>>>);

impl std::fmt::Debug for TunnelSeen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TunnelSeen")
    }
}

impl TunnelSeen {
    /// The splice's side and the extension.
    pub fn new() -> (TunnelDone, Self) {
        let shared = Arc::new(Mutex::new(None));
        (TunnelDone(shared.clone()), Self(shared))
    }

    fn on_end(&self, f: OnEnd) {
        // Only ever holds the callback: a panic elsewhere cannot leave it half-changed.
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(f);
    }
}

impl TunnelDone {
    /// The tunnel closed, having carried `end`.
    pub fn end(self, end: TunnelEnd) {
        let f = self.0.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(f) = f {
            f(end);
        }
    }
}

/// A line being filled in: a struct serialised once at the end, so a request costs a handful
/// of allocations instead of a map of owned keys and values (bench/access-log measured the
/// difference).
pub struct Entry {
    sink: Arc<Sink>,
    line: Line,
    start: Instant,
    /// The request body's bytes as read so far (see [`Entry::count_body`]).
    received: Option<Arc<AtomicU64>>,
    /// The h2 stream the request came on: reset by its connection's sweep, the line says so.
    stream: Option<Arc<super::h2_streams::StreamState>>,
}

/// One access log line, fields in the order they are written.
#[derive(Serialize)]
struct Line {
    #[serde(serialize_with = "rfc3339")]
    time: SystemTime,
    site: Option<String>,
    route: Option<String>,
    user: Option<String>,
    client: IpAddr,
    client_port: u16,
    #[serde(serialize_with = "method")]
    method: Method,
    host: Option<String>,
    #[serde(serialize_with = "path_and_query")]
    uri: Option<PathAndQuery>,
    proto: &'static str,
    status: u16,
    bytes_sent: u64,
    bytes_received: u64,
    duration_ms: f64,
    result: Option<&'static str>,
    #[serde(serialize_with = "shared_str")]
    upstream: Option<Arc<str>>,
    upstream_status: Option<u16>,
    upstream_ms: Option<f64>,
    upstream_attempts: Option<usize>,
    #[serde(serialize_with = "shared_str")]
    tls_sni: Option<Arc<str>>,
    tls_version: Option<&'static str>,
    tls_cipher: Option<&'static str>,
    #[serde(serialize_with = "header_value")]
    user_agent: Option<HeaderValue>,
    #[serde(serialize_with = "header_value")]
    referer: Option<HeaderValue>,
    #[serde(serialize_with = "header_value")]
    request_id: Option<HeaderValue>,
}

fn rfc3339<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_millis(*t))
}

fn method<S: serde::Serializer>(m: &Method, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(m.as_str())
}

fn path_and_query<S: serde::Serializer>(p: &Option<PathAndQuery>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(p.as_ref().map_or("/", PathAndQuery::as_str))
}

fn shared_str<S: serde::Serializer>(v: &Option<Arc<str>>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(v) => s.serialize_str(v),
        None => s.serialize_none(),
    }
}

/// A header's value as a string; null when absent or not visible ASCII (as before: never a
/// lossy or escaped rendering of arbitrary bytes).
fn header_value<S: serde::Serializer>(v: &Option<HeaderValue>, s: S) -> Result<S::Ok, S::Error> {
    match v.as_ref().and_then(|v| v.to_str().ok()) {
        Some(v) => s.serialize_str(v),
        None => s.serialize_none(),
    }
}

/// Header values are kept as they came (a reference count on the request's buffer, not a
/// copy) and rendered only when the line is written.
fn header<B>(req: &Request<B>, name: header::HeaderName) -> Option<HeaderValue> {
    req.headers().get(name).cloned()
}

impl Entry {
    /// The request's side, taken before the request is handled.
    pub fn new<B>(sink: Arc<Sink>, req: &Request<B>, conn: &Conn, site: Option<&str>, host: Option<&str>) -> Self {
        let proto = match req.version() {
            Version::HTTP_09 => "HTTP/0.9",
            Version::HTTP_10 => "HTTP/1.0",
            Version::HTTP_11 => "HTTP/1.1",
            Version::HTTP_2 => "HTTP/2",
            Version::HTTP_3 => "HTTP/3",
            _ => "unknown",
        };
        let tls = conn.tls_info.as_ref();
        let line = Line {
            time: SystemTime::now(),
            site: site.map(str::to_string),
            route: None,
            user: None,
            client: conn.info.client.ip(),
            client_port: conn.info.client.port(),
            method: req.method().clone(),
            host: host.map(str::to_string),
            uri: req.uri().path_and_query().cloned(),
            proto,
            status: 0,
            bytes_sent: 0,
            bytes_received: 0,
            duration_ms: 0.0,
            result: None,
            upstream: None,
            upstream_status: None,
            upstream_ms: None,
            upstream_attempts: None,
            tls_sni: tls.and_then(|t| t.sni.clone()),
            tls_version: tls.map(|t| t.version),
            tls_cipher: tls.and_then(|t| t.cipher),
            user_agent: header(req, header::USER_AGENT),
            referer: header(req, header::REFERER),
            request_id: header(req, header::HeaderName::from_static("x-request-id")),
        };
        Self { sink, line, start: Instant::now(), received: None, stream: super::h2_streams::current() }
    }

    /// The counter the request's body adds its bytes to (`body::ClientBody`), read when the
    /// line is written; `None` for a request without a body (its count stays 0 and nothing
    /// is allocated, the common GET).
    pub fn count_body(&mut self, body: &Incoming) -> Option<Arc<AtomicU64>> {
        if http_body::Body::is_end_stream(body) {
            return None;
        }
        let counter = Arc::new(AtomicU64::new(0));
        self.received = Some(counter.clone());
        Some(counter)
    }

    /// Send the line of a request dropped before its response was ready (its client closed
    /// the connection or reset the stream): status 499 and `result`, as nginx logs it.
    pub fn unanswered(mut self, result: &'static str) {
        self.line.status = 499;
        // A stream reset by its connection's stall sweep was the proxy's doing, not the client's.
        let stalled = self.stream.as_ref().is_some_and(|s| s.stalled());
        self.line.result = Some(if stalled { "stalled" } else { result });
        drop(Pending { entry: Some(self), bytes: 0, tunnel_in: 0 });
    }

    /// Add the response's side and send the line once `resp`'s body is done or dropped.
    pub fn finish(mut self, mut resp: Response<Body>, result: Option<&'static str>) -> Response<Body> {
        let l = &mut self.line;
        l.status = resp.status().as_u16();
        l.result = result;
        // Taken, not copied: nothing reads them after the log.
        if let Some(route) = resp.extensions_mut().remove::<RouteSeen>() {
            l.route = route.route;
            l.user = route.user;
        }
        if let Some(seen) = resp.extensions_mut().remove::<UpstreamSeen>() {
            l.upstream = Some(seen.upstream);
            l.upstream_status = seen.status;
            l.upstream_ms = Some(ms(seen.latency));
            l.upstream_attempts = Some(seen.attempts);
        }
        let mut pending = Pending { entry: Some(self), bytes: 0, tunnel_in: 0 };
        if let Some(tunnel) = resp.extensions().get::<TunnelSeen>() {
            // The 101's own body is empty: the line waits for the tunnel's end instead.
            tunnel.on_end(Box::new(move |end| {
                pending.bytes = end.to_client;
                pending.tunnel_in = end.from_client;
                drop(pending);
            }));
            return resp;
        }
        resp.map(move |inner| Counted { inner, pending }.boxed())
    }
}

/// The response body on its way to the client: counts its bytes, notes how it broke off if
/// it did, and sends the line when dropped (with `pending`).
struct Counted {
    inner: Body,
    pending: Pending,
}

impl http_body::Body for Counted {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &polled {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    this.pending.bytes += data.len() as u64;
                }
            }
            Some(Err(e)) => {
                if let Some(entry) = this.pending.entry.as_mut() {
                    // The status was sent already; the result says the answer is incomplete.
                    entry.line.result = Some(super::forward::cut_short(e));
                }
            }
            None => {}
        }
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1_000_000.0).round() / 1000.0
}

/// Sends the line when dropped: with the body, when it has ended or the client left (with
/// the tunnel's task, when the upgraded connection has closed).
struct Pending {
    entry: Option<Entry>,
    /// Response body bytes sent (upgraded: relayed to the client).
    bytes: u64,
    /// Bytes the client sent through an upgraded connection.
    tunnel_in: u64,
}

impl Drop for Pending {
    fn drop(&mut self) {
        let Some(mut entry) = self.entry.take() else { return };
        if entry.stream.as_ref().is_some_and(|s| s.stalled()) {
            entry.line.result.get_or_insert("stalled");
        }
        entry.line.bytes_sent = self.bytes;
        let body = entry.received.as_ref().map_or(0, |c| c.load(Ordering::Relaxed));
        entry.line.bytes_received = body + self.tunnel_in;
        entry.line.duration_ms = ms(entry.start.elapsed());
        // Formatted into this thread's reused buffer, then appended to the file's: no
        // allocation, nothing for another thread to free.
        let Entry { sink, line, .. } = &entry;
        if let Err(e) = sink.write(|buf| serde_json::to_writer(buf, line)) {
            tracing::debug!(error = %e, "access log line not serialised");
        }
    }
}
