//! The admin HTTP server both binaries run on hyper (HTTP/1.1): each registers its own
//! routes (`GET path` or `POST path` → a reply built from the [`Call`]); unknown paths get a
//! 404 naming the routes, other methods a 405. Slow or silent clients are cut by a header
//! timeout; every connection is tracked, so the server ends with its listener. Runtime
//! control is authenticated with a bearer [`token::Token`]; `ctl` subcommands talk to the
//! server with [`client::request`].

pub mod client;
pub mod control;
mod cross_site;
pub mod events;
mod host_check;
pub mod page;
pub mod series;
pub mod status;
pub mod token;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

pub use host_check::AllowedHosts;

/// What a route answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: StatusCode,
    pub content_type: &'static str,
    pub body: String,
    /// The methods a 405 names in its `Allow` header.
    pub allow: Option<String>,
}

impl Reply {
    pub fn text(status: StatusCode, body: impl Into<String>) -> Self {
        Self { status, content_type: "text/plain; charset=utf-8", body: body.into(), allow: None }
    }

    /// The Prometheus text exposition format.
    pub fn metrics(body: String) -> Self {
        Self { status: StatusCode::OK, content_type: "text/plain; version=0.0.4", body, allow: None }
    }

    pub fn json(status: StatusCode, body: String) -> Self {
        Self { status, content_type: "application/json", body, allow: None }
    }

    pub fn html(body: String) -> Self {
        Self { status: StatusCode::OK, content_type: "text/html; charset=utf-8", body, allow: None }
    }

    /// `value` as pretty JSON (a 500 naming the error if it cannot be encoded).
    pub fn json_of(value: &impl serde::Serialize) -> Self {
        match serde_json::to_string_pretty(value) {
            Ok(body) => Self::json(StatusCode::OK, body + "\n"),
            Err(e) => Self::text(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot encode the status: {e}\n")),
        }
    }
}

/// One request as a route sees it: enough to authenticate it, read its query and log who
/// sent it. Request bodies are not read: every control parameter is in the query.
pub struct Call<'a> {
    pub method: &'a Method,
    pub path: &'a str,
    pub query: &'a str,
    pub headers: &'a HeaderMap,
    pub peer: SocketAddr,
}

impl Call<'_> {
    /// The first `name=value` of the query, percent-decoded (`+` is a space); a 400 naming
    /// `name` when its value is not percent-encoded UTF-8 (rather than calling it missing).
    pub fn param(&self, name: &str) -> Result<Option<String>, Reply> {
        let Some((_, v)) = self
            .query
            .split('&')
            .map(|kv| kv.split_once('=').unwrap_or((kv, "")))
            .find(|(k, _)| decode(k).as_deref() == Some(name))
        else {
            return Ok(None);
        };
        decode(v).map(Some).ok_or_else(|| {
            Reply::text(
                StatusCode::BAD_REQUEST,
                format!("{name}: not percent-encoded UTF-8 (`{}`)\n", v.escape_debug()),
            )
        })
    }
}

/// Percent-decodes a query component; `None` when it is not valid UTF-8 or has a bad escape.
fn decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = [bytes.next()?, bytes.next()?];
                // Two hex digits: from_str_radix alone would take `%+4` as 4.
                if !hex.iter().all(u8::is_ascii_hexdigit) {
                    return None;
                }
                out.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
            }
            b => out.push(b),
        }
    }
    String::from_utf8(out).ok()
}

/// Percent-encodes a query component (the `ctl` client's side of [`Call::param`]).
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

type Handler = Arc<dyn Fn(&Call<'_>) -> Reply + Send + Sync>;

/// The routes of one binary's admin listener.
#[derive(Clone, Default)]
pub struct Routes {
    routes: Vec<(Method, &'static str, Handler)>,
    /// Called for each connection closed at accept because [`MAX_CONNS`] were open (the
    /// binary counts it in its own metric).
    on_refused: Option<Arc<dyn Fn() + Send + Sync>>,
    /// The names requests may give besides addresses and localhost, as configured now.
    allowed_hosts: Option<Arc<dyn Fn() -> AllowedHosts + Send + Sync>>,
}

impl Routes {
    pub fn new() -> Self {
        Self::default()
    }

    /// Call `f` for each connection refused because the listener has [`MAX_CONNS`] open.
    pub fn on_refused(mut self, f: impl Fn() + Send + Sync + 'static) -> Self {
        self.on_refused = Some(Arc::new(f));
        self
    }

    /// The names (`admin.allowed_hosts`) requests may give besides IP addresses and
    /// localhost, read at each request (a reload changes them); once there are any, every
    /// connection is held to them, not only loopback ones (see `host_check`).
    pub fn allowed_hosts(mut self, f: impl Fn() -> AllowedHosts + Send + Sync + 'static) -> Self {
        self.allowed_hosts = Some(Arc::new(f));
        self
    }

    /// Answer `GET path` (and `HEAD path`) with `handler`.
    pub fn get(self, path: &'static str, handler: impl Fn() -> Reply + Send + Sync + 'static) -> Self {
        self.route(Method::GET, path, move |_| handler())
    }

    /// Answer `method path` with `handler`, which sees the request.
    pub fn route(
        mut self,
        method: Method,
        path: &'static str,
        handler: impl Fn(&Call<'_>) -> Reply + Send + Sync + 'static,
    ) -> Self {
        self.routes.push((method, path, Arc::new(handler)));
        self
    }

    /// `GET /status` (the JSON `collect` builds) and `GET /` (the status page `page` renders
    /// from the same value; `?part=live` asks for the part the page's script swaps in, and
    /// `?part=js` for that script: the Content-Security-Policy allows no inline one).
    pub fn status<T: serde::Serialize>(
        self,
        collect: impl Fn() -> T + Send + Sync + 'static,
        page: impl Fn(&T, bool) -> String + Send + Sync + 'static,
    ) -> Self {
        let collect = Arc::new(collect);
        let json = collect.clone();
        self.get("/status", move || Reply::json_of(&json())).route(Method::GET, "/", move |c| {
            match c.param("part").ok().flatten().as_deref() {
                Some("js") => Reply {
                    status: StatusCode::OK,
                    content_type: "text/javascript; charset=utf-8",
                    body: page::SCRIPT.to_owned(),
                    allow: None,
                },
                part => Reply::html(page(&collect(), part == Some("live"))),
            }
        })
    }

    /// Runtime control: `POST /api/drain`, `/api/undrain` and `/api/weight`, each handed to
    /// `handler` with its [`control::Action`].
    pub fn control(self, handler: impl Fn(&Call<'_>, control::Action) -> Reply + Send + Sync + 'static) -> Self {
        use control::Action;
        let handler = Arc::new(handler);
        let on = |action: Action| {
            let handler = handler.clone();
            move |c: &Call<'_>| handler(c, action)
        };
        self.route(Method::POST, "/api/drain", on(Action::Drain))
            .route(Method::POST, "/api/undrain", on(Action::Undrain))
            .route(Method::POST, "/api/weight", on(Action::Weight))
    }

    fn answer(&self, req: &Request<Incoming>, peer: SocketAddr) -> Reply {
        let path = req.uri().path();
        let method = if req.method() == Method::HEAD { &Method::GET } else { req.method() };
        let at_path: Vec<&(Method, &'static str, Handler)> =
            self.routes.iter().filter(|(_, p, _)| *p == path).collect();
        if at_path.is_empty() {
            let mut known: Vec<&str> = self.routes.iter().map(|(_, p, _)| *p).collect();
            known.dedup();
            return Reply::text(StatusCode::NOT_FOUND, format!("not found; try {}\n", known.join(", ")));
        }
        let Some((_, _, handler)) = at_path.iter().find(|(m, _, _)| m == method) else {
            let mut allowed: Vec<&str> = at_path.iter().map(|(m, _, _)| m.as_str()).collect();
            // HEAD is served wherever GET is.
            if allowed.contains(&"GET") {
                allowed.push("HEAD");
            }
            let allowed = allowed.join(", ");
            let mut reply = Reply::text(StatusCode::METHOD_NOT_ALLOWED, format!("only {allowed}\n"));
            reply.allow = Some(allowed);
            return reply;
        };
        let call = Call { method, path, query: req.uri().query().unwrap_or(""), headers: req.headers(), peer };
        handler(&call)
    }
}

/// How long a client may take to send its request head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// How long one connection is served before it is asked to close (kept-alive scrapers and the
/// status page open another). hyper's head timer runs only while a head is read; this also
/// ends a client that stopped reading its answer, as HAProxy's `timeout client` does.
const CONN_LIFETIME: Duration = Duration::from_secs(60);

/// Then how long the request in hand may take before the connection is dropped.
const CONN_FINISH: Duration = Duration::from_secs(10);

/// Connections served at once; past it a new one is closed at accept. The listener belongs on
/// loopback or a trusted network, and its clients retry.
const MAX_CONNS: usize = 64;

/// Of [`MAX_CONNS`], how many only this host's own clients may take (`ctl drain` during an
/// incident, a local scraper): a connection whose peer is the address it came in on. Others
/// reaching a listener on a wider address cannot fill it to the last slot.
const OWN_RESERVED: usize = 8;

/// Serve `routes` on `listener` until `stop` resolves; then every connection is asked to end
/// (one between requests closes at once, one in a request answers it first), and this returns
/// once they have: a status page left open on a kept-alive connection held up every restart's
/// drain until its connection's lifetime ran out.
pub async fn serve(listener: TcpListener, routes: Routes, stop: impl Future<Output = ()>) {
    let routes = Arc::new(routes);
    let conns = TaskTracker::new();
    let closing = tokio_util::sync::CancellationToken::new();
    // Aborted instead of stopped (the ingress ends its admin task so), the connections are
    // asked to end all the same: detached, they would go on serving the old listener's
    // clients for their whole lifetime after its address was moved or taken off.
    let _abort_closes = closing.clone().drop_guard();
    let open = Arc::new(Semaphore::new(MAX_CONNS));
    let others = Arc::new(Semaphore::new(MAX_CONNS - OWN_RESERVED));
    tokio::pin!(stop);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = &mut stop => break,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Possibly EMFILE: back off rather than spin.
                crate::warn_every_second!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // This host connecting to itself comes from the address it connects to.
        let own = stream.local_addr().is_ok_and(|l| l.ip() == peer.ip());
        let other = if own { None } else { others.clone().try_acquire_owned().ok() };
        let permit = open.clone().try_acquire_owned().ok().filter(|_| own || other.is_some());
        let Some(permit) = permit else {
            if let Some(refused) = &routes.on_refused {
                refused();
            }
            tracing::debug!(%peer, "admin connection closed: {MAX_CONNS} already open, {OWN_RESERVED} kept for this host");
            continue;
        };
        let routes = routes.clone();
        // Per connection, not per listener: one on 0.0.0.0 or [::] is reached on 127.0.0.1
        // too, and there a browser can be rebound to it as to a loopback-only one.
        let loopback = checks_host(stream.local_addr());
        let closing = closing.clone();
        conns.spawn(async move {
            let _permits = (permit, other);
            let svc = service_fn(move |req: Request<Incoming>| {
                let allowed = routes.allowed_hosts.as_ref().map(|f| f()).unwrap_or_default();
                let refused = if !host_check::answers(&req, loopback, &allowed) {
                    Some(Reply::text(
                        StatusCode::MISDIRECTED_REQUEST,
                        if allowed.is_empty() {
                            "this listener is on loopback and answers only to an IP address or localhost \
                             (or a name listed in admin.allowed_hosts)\n"
                        } else {
                            "this listener answers only to an IP address, localhost or a name listed in \
                             admin.allowed_hosts\n"
                        },
                    ))
                } else if cross_site::from_another_site(&req) {
                    tracing::debug!(%peer, path = req.uri().path(), "admin request from another site's page refused");
                    Some(Reply::text(
                        StatusCode::FORBIDDEN,
                        "refused: a page of another site sent this request; open this listener's address directly\n",
                    ))
                } else {
                    None
                };
                // A refused browser's connection is closed, not kept for its next request:
                // a page must not hold the listener's slots.
                let close = refused.is_some();
                let mut resp = into_response(refused.unwrap_or_else(|| routes.answer(&req, peer)));
                if close {
                    resp.headers_mut().insert(header::CONNECTION, header::HeaderValue::from_static("close"));
                }
                async move { Ok::<_, Infallible>(resp) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            let ended = tokio::select! {
                done = tokio::time::timeout(CONN_LIFETIME, conn.as_mut()) => done.is_ok(),
                _ = closing.cancelled() => false,
            };
            if !ended {
                conn.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(CONN_FINISH, conn).await;
            }
        });
    }
    drop(listener);
    closing.cancel();
    conns.close();
    conns.wait().await;
}

/// Whether a connection's requests must name this host even with no `admin.allowed_hosts`
/// (`host_check`): those that came in on a loopback address (IPv4 ones on a dual-stack socket as `::ffff:127.x.y.z`).
/// An address the kernel cannot tell is taken as loopback: refusing a name is the safe side.
fn checks_host(local: std::io::Result<SocketAddr>) -> bool {
    local.map_or(true, |a| a.ip().to_canonical().is_loopback())
}

/// The Content-Security-Policy of every answer. The page loads its one script from itself
/// (`?part=js`: no inline script, so markup slipped into it through a peer's text cannot run)
/// and fetches only from itself; its inline `style=` attributes and `<style>` need
/// `'unsafe-inline'` styles, which run nothing. No framing (clickjacking the control API's
/// caller), no `<base>`, no forms.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; connect-src 'self'; \
                   img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

fn into_response(reply: Reply) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(reply.body)));
    *resp.status_mut() = reply.status;
    resp.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static(reply.content_type));
    // Status and control answers change every second: never from a cache.
    resp.headers_mut().insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
    resp.headers_mut().insert(header::X_CONTENT_TYPE_OPTIONS, header::HeaderValue::from_static("nosniff"));
    resp.headers_mut().insert(header::CONTENT_SECURITY_POLICY, header::HeaderValue::from_static(CSP));
    // For browsers that predate frame-ancestors.
    resp.headers_mut().insert(header::X_FRAME_OPTIONS, header::HeaderValue::from_static("DENY"));
    if let Some(allow) = reply.allow.and_then(|a| header::HeaderValue::from_str(&a).ok()) {
        resp.headers_mut().insert(header::ALLOW, allow);
    }
    if reply.status == StatusCode::UNAUTHORIZED {
        resp.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// `routes` served on `l` until the sender is used or dropped; the server's task.
    fn started(l: TcpListener, routes: Routes) -> (tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(l, routes, async move {
            let _ = rx.await;
        }));
        (tx, server)
    }

    async fn get(addr: std::net::SocketAddr, request: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn routes_answer_and_the_rest_is_refused() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let routes = Routes::new()
            .get("/metrics", || Reply::metrics("up 1\n".into()))
            .get("/healthz", || Reply::text(StatusCode::SERVICE_UNAVAILABLE, "unhealthy: no certificate\n"))
            .route(Method::POST, "/api/echo", |c| {
                Reply::text(StatusCode::OK, format!("{} {:?}\n", c.path, c.param("name").ok().flatten()))
            });
        let (tx, server) = started(l, routes);
        let close = "Connection: close\r\n\r\n";
        let r = get(addr, &format!("GET /metrics HTTP/1.1\r\nHost: localhost\r\n{close}")).await;
        assert!(r.starts_with("HTTP/1.1 200") && r.contains("version=0.0.4") && r.ends_with("up 1\n"), "{r}");
        let r = get(addr, &format!("GET /healthz HTTP/1.1\r\nHost: localhost\r\n{close}")).await;
        assert!(r.starts_with("HTTP/1.1 503") && r.contains("no certificate"), "{r}");
        let r = get(addr, &format!("GET /nope HTTP/1.1\r\nHost: localhost\r\n{close}")).await;
        assert!(r.starts_with("HTTP/1.1 404") && r.contains("/metrics, /healthz"), "{r}");
        let r = get(addr, &format!("POST /metrics HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n{close}")).await;
        assert!(r.starts_with("HTTP/1.1 405") && r.contains("only GET, HEAD"), "{r}");
        assert!(r.to_ascii_lowercase().contains("\r\nallow: get, head\r\n"), "{r}");
        let r = get(addr, &format!("GET /api/echo HTTP/1.1\r\nHost: localhost\r\n{close}")).await;
        assert!(r.starts_with("HTTP/1.1 405") && r.contains("only POST"), "{r}");
        assert!(r.to_ascii_lowercase().contains("\r\nallow: post\r\n"), "{r}");
        let r = get(
            addr,
            &format!("POST /api/echo?x=1&name=w%C3%A4n+1 HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n{close}"),
        )
        .await;
        assert!(r.starts_with("HTTP/1.1 200") && r.ends_with("/api/echo Some(\"wän 1\")\n"), "{r}");
        // HTTP/1.0 scrapers still work.
        let r = get(addr, "GET /metrics HTTP/1.0\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.0 200") && r.ends_with("up 1\n"), "{r}");
        let _ = tx.send(());
        tokio::time::timeout(Duration::from_secs(5), server).await.unwrap().unwrap();
    }

    /// Stopping the server ends a kept-alive connection between requests (a status page left
    /// open) at once instead of waiting out its lifetime.
    #[tokio::test]
    async fn stopping_ends_kept_alive_connections() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let routes = Routes::new().get("/status", || Reply::json(StatusCode::OK, "{}".into()));
        let (tx, server) = started(l, routes);
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /status HTTP/1.1\r\nHost: localhost\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 1024];
        let n = s.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&buf[..n]));
        let _ = tx.send(());
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("serve ended with a connection kept alive")
            .unwrap();
        assert_eq!(s.read(&mut buf).await.unwrap_or(0), 0, "the kept-alive connection is closed");
    }

    /// The same when the server's task is aborted rather than stopped.
    #[tokio::test]
    async fn aborting_ends_kept_alive_connections_too() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let routes = Routes::new().get("/status", || Reply::json(StatusCode::OK, "{}".into()));
        let server = tokio::spawn(serve(l, routes, std::future::pending()));
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /status HTTP/1.1\r\nHost: localhost\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 1024];
        let n = s.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&buf[..n]));
        server.abort();
        let read = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await;
        assert_eq!(read.expect("still open after the abort").unwrap_or(0), 0, "the kept-alive connection is closed");
    }

    /// On loopback, a request for a name (DNS rebinding: a web page's own name pointed at
    /// 127.0.0.1) is refused; IP addresses, localhost and no Host at all are answered.
    #[tokio::test]
    async fn a_loopback_listener_answers_only_to_addresses_and_localhost() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let routes = Routes::new().get("/status", || Reply::json(StatusCode::OK, "{}".into()));
        let (tx, server) = started(l, routes);
        let ask = |host: &str| format!("GET /status HTTP/1.1\r\n{host}Connection: close\r\n\r\n");
        for host in [
            format!("Host: {addr}\r\n"),
            "Host: 127.0.0.1\r\n".into(),
            "Host: [::1]:9180\r\n".into(),
            "Host: LocalHost:9180\r\n".into(),
            "Host: admin.localhost\r\n".into(),
        ] {
            let r = get(addr, &ask(&host)).await;
            let lower = r.to_ascii_lowercase();
            assert!(r.starts_with("HTTP/1.1 200") && r.contains("nosniff"), "{host}: {r}");
            assert!(lower.contains(&format!("content-security-policy: {CSP}\r\n").to_ascii_lowercase()), "{host}: {r}");
            assert!(lower.contains("x-frame-options: deny\r\n"), "{host}: {r}");
        }
        let r = get(addr, "GET /status HTTP/1.0\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.0 200"), "{r}");
        for host in [
            "Host: rebind.example:9180\r\n",
            "Host: localhost.example\r\n",
            "Host: 127.0.0.1\r\nHost: evil.example\r\n",
            "Host: bad host\r\n",
        ] {
            let r = get(addr, &ask(host)).await;
            assert!(r.starts_with("HTTP/1.1 421") || r.starts_with("HTTP/1.1 400"), "{host}: {r}");
            assert!(!r.contains("{}"), "{host}: {r}");
        }
        let r = get(addr, "GET http://rebind.example/status HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            .await;
        assert!(r.starts_with("HTTP/1.1 421"), "{r}");
        let _ = tx.send(());
        tokio::time::timeout(Duration::from_secs(5), server).await.unwrap().unwrap();
    }

    /// A name in `admin.allowed_hosts` is answered, others still refused; the list is read at
    /// each request, so a reload that takes a name out refuses it from then on.
    #[tokio::test]
    async fn listed_names_are_answered_as_the_list_is_now() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let list = Arc::new(std::sync::Mutex::new(AllowedHosts::new(&["status.home.test".into()]).unwrap()));
        let now = list.clone();
        let routes = Routes::new()
            .get("/status", || Reply::json(StatusCode::OK, "{}".into()))
            .allowed_hosts(move || now.lock().unwrap().clone());
        let (tx, server) = started(l, routes);
        let ask = |host: &str| format!("GET /status HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        let r = get(addr, &ask("status.home.test")).await;
        assert!(r.starts_with("HTTP/1.1 200") && r.ends_with("{}"), "{r}");
        let r = get(addr, &ask("rebind.example")).await;
        assert!(r.starts_with("HTTP/1.1 421") && r.contains("admin.allowed_hosts"), "{r}");
        *list.lock().unwrap() = AllowedHosts::default();
        let r = get(addr, &ask("status.home.test")).await;
        assert!(r.starts_with("HTTP/1.1 421") && !r.contains("{}"), "{r}");
        let _ = tx.send(());
        tokio::time::timeout(Duration::from_secs(5), server).await.unwrap().unwrap();
    }

    /// A request a page of another site sent (a blind control `POST`, a kept-alive fetch
    /// under a `*.localhost` name) gets a 403 before any route sees it, and its connection
    /// is closed though it asked to keep it; a link followed to the page is answered.
    #[tokio::test]
    async fn requests_from_another_sites_page_are_refused_and_closed() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = calls.clone();
        let routes = Routes::new().get("/status", || Reply::json(StatusCode::OK, "{}".into())).route(
            Method::POST,
            "/api/drain",
            move |_| {
                counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Reply::text(StatusCode::UNAUTHORIZED, "no token\n")
            },
        );
        let (tx, server) = started(l, routes);
        // No `Connection: close`: the server must end the connection itself.
        let kept =
            |line: &str, more: &str| format!("{line} HTTP/1.1\r\nHost: a1.localhost:{}\r\n{more}\r\n", addr.port());
        for (line, more) in [
            ("GET /status", "Sec-Fetch-Site: cross-site\r\nSec-Fetch-Mode: no-cors\r\nSec-Fetch-Dest: image\r\n"),
            ("POST /api/drain?path=wan1", "Content-Length: 0\r\nOrigin: http://evil.example\r\n"),
        ] {
            let r = tokio::time::timeout(Duration::from_secs(5), get(addr, &kept(line, more)))
                .await
                .unwrap_or_else(|_| panic!("{line}: the connection was kept open"));
            assert!(r.starts_with("HTTP/1.1 403") && r.contains("another site") && !r.contains("{}"), "{line}: {r}");
        }
        assert_eq!(calls.load(std::sync::atomic::Ordering::Relaxed), 0, "no route saw a refused request");
        // A rebound name's refusal closes its connection too.
        let r = tokio::time::timeout(
            Duration::from_secs(5),
            get(addr, "GET /status HTTP/1.1\r\nHost: rebind.example\r\n\r\n"),
        )
        .await
        .expect("the misdirected request's connection was kept open");
        assert!(r.starts_with("HTTP/1.1 421"), "{r}");
        let nav = "Sec-Fetch-Site: cross-site\r\nSec-Fetch-Mode: navigate\r\nSec-Fetch-Dest: document\r\nConnection: close\r\n";
        let r = get(addr, &kept("GET /status", nav)).await;
        assert!(r.starts_with("HTTP/1.1 200") && r.ends_with("{}"), "{r}");
        let r = get(addr, &kept("POST /api/drain", "Content-Length: 0\r\nConnection: close\r\n")).await;
        assert!(r.starts_with("HTTP/1.1 401"), "{r}");
        assert_eq!(calls.load(std::sync::atomic::Ordering::Relaxed), 1);
        let _ = tx.send(());
        tokio::time::timeout(Duration::from_secs(5), server).await.unwrap().unwrap();
    }

    /// A listener on every address is reached on 127.0.0.1 too: there a rebound name is
    /// refused as on a loopback listener, and an address still answered.
    #[tokio::test]
    async fn a_wildcard_listener_checks_the_host_on_loopback_connections() {
        let l = TcpListener::bind("0.0.0.0:0").await.unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], l.local_addr().unwrap().port()));
        let routes = Routes::new().get("/status", || Reply::json(StatusCode::OK, "{}".into()));
        let (tx, server) = started(l, routes);
        let r = get(addr, "GET /status HTTP/1.1\r\nHost: rebind.example\r\nConnection: close\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 421") && !r.contains("{}"), "{r}");
        let r = get(addr, &format!("GET /status HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")).await;
        assert!(r.starts_with("HTTP/1.1 200") && r.ends_with("{}"), "{r}");
        let _ = tx.send(());
        tokio::time::timeout(Duration::from_secs(5), server).await.unwrap().unwrap();
        // An IPv4 connection on a dual-stack [::] socket shows its address IPv4-mapped.
        assert!(checks_host(Ok("[::ffff:127.0.0.1]:80".parse().unwrap())));
        assert!(checks_host(Ok("[::1]:80".parse().unwrap())));
        assert!(!checks_host(Ok("192.0.2.1:80".parse().unwrap())));
        assert!(!checks_host(Ok("[::ffff:192.0.2.1]:80".parse().unwrap())));
        assert!(checks_host(Err(std::io::ErrorKind::Other.into())));
    }

    /// The status routes: the page, its live part, and its script from its own path.
    #[tokio::test]
    async fn the_page_loads_its_script_from_its_own_path() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let routes = Routes::new().status(
            || 7u8,
            |v, live_only| {
                let part = format!("<p id=\"summary\" data-now-ms=\"{v}\">x</p>");
                if live_only {
                    part
                } else {
                    page::document("t", &part)
                }
            },
        );
        let (tx, server) = started(l, routes);
        let ask = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        let r = get(addr, &ask("/")).await;
        assert!(r.starts_with("HTTP/1.1 200") && r.contains("<script src=\"?part=js\"></script>"), "{r}");
        let r = get(addr, &ask("/?part=live")).await;
        assert!(r.ends_with("<p id=\"summary\" data-now-ms=\"7\">x</p>"), "{r}");
        let r = get(addr, &ask("/?part=js")).await;
        assert!(r.starts_with("HTTP/1.1 200") && r.contains("text/javascript") && r.ends_with(page::SCRIPT), "{r}");
        let _ = tx.send(());
        tokio::time::timeout(Duration::from_secs(5), server).await.unwrap().unwrap();
    }

    /// A client that asks for a large answer and never reads it, and 63 idle ones beside it:
    /// the 65th connection is closed at accept, and the stalled one is dropped once its life
    /// and the time to finish are over. The connections are made with the clock running (a
    /// paused clock could jump to a timeout while the kernel is still connecting), then the
    /// clock is paused and skips ahead.
    #[tokio::test]
    async fn connections_are_capped_and_a_stalled_reader_is_dropped() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let big = "x".repeat(16 << 20);
        let refused = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = refused.clone();
        let routes =
            Routes::new().get("/big", move || Reply::text(StatusCode::OK, big.clone())).on_refused(move || {
                counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            });
        let server = tokio::spawn(serve(l, routes, std::future::pending()));
        let mut stalled = tokio::net::TcpStream::connect(addr).await.unwrap();
        stalled.write_all(b"GET /big HTTP/1.1\r\nHost: localhost\r\n\r\n").await.unwrap();
        let mut idle = Vec::new();
        for _ in 1..MAX_CONNS {
            idle.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        }
        // The 65th: accepted by the kernel, closed by the server without an answer.
        let mut over = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut buf = Vec::new();
        let n = tokio::time::timeout(Duration::from_secs(5), over.read_to_end(&mut buf)).await;
        assert!(matches!(n, Ok(Ok(0)) | Ok(Err(_))), "{n:?}");
        assert_eq!(refused.load(std::sync::atomic::Ordering::Relaxed), 1, "the refusal is reported");
        // The idle ones end at the head timeout; the stalled one only at its life's end.
        tokio::time::pause();
        tokio::time::sleep(CONN_LIFETIME + CONN_FINISH + Duration::from_secs(1)).await;
        let mut got = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(600), stalled.read_to_end(&mut got)).await;
        assert!(read.is_ok(), "the stalled connection was never dropped");
        assert!(got.len() < (16 << 20), "it could not have been answered whole: {}", got.len());
        tokio::time::resume();
        // The listener serves again.
        let r = get(addr, "GET /nope HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 404"), "{r}");
        server.abort();
    }

    /// Clients from elsewhere fill all but the slots kept for this host's own: `ctl` still
    /// gets in. (127.0.0.2 connecting to 127.0.0.1 is "elsewhere": not its own address.)
    #[tokio::test]
    async fn slots_are_kept_for_this_hosts_own_clients() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let refused = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = refused.clone();
        let routes = Routes::new().get("/healthz", || Reply::text(StatusCode::OK, "ok\n")).on_refused(move || {
            count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        });
        let server = tokio::spawn(serve(l, routes, std::future::pending()));
        let from_elsewhere = || async {
            let s = tokio::net::TcpSocket::new_v4().unwrap();
            s.bind("127.0.0.2:0".parse().unwrap()).unwrap();
            let mut c = s.connect(addr).await.unwrap();
            // Answered, and kept alive: the connection holds its slot.
            c.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").await.unwrap();
            let mut buf = [0u8; 512];
            let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf)).await;
            (c, n.ok().and_then(Result::ok).unwrap_or(0))
        };
        let mut held = Vec::new();
        for i in 0..MAX_CONNS - OWN_RESERVED {
            let (c, n) = from_elsewhere().await;
            assert!(n > 0, "connection {i} from elsewhere was refused");
            held.push(c);
        }
        let (_, n) = from_elsewhere().await;
        assert_eq!(n, 0, "one more from elsewhere is closed unanswered");
        assert_eq!(refused.load(std::sync::atomic::Ordering::Relaxed), 1);
        let r = get(addr, "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 200"), "this host's own client: {r}");
        server.abort();
    }

    #[test]
    fn query_components_round_trip() {
        for s in ["wan1", "home/wan 1", "ä&=%+"] {
            assert_eq!(decode(&encode(s)).as_deref(), Some(s));
        }
        assert_eq!(decode("%4"), None);
        assert_eq!(decode("%zz"), None);
        assert_eq!(decode("%+4"), None, "two hex digits, not a sign and one");
    }

    #[test]
    fn a_badly_encoded_parameter_is_named_not_called_missing() {
        let headers = HeaderMap::new();
        let call = |query| Call {
            method: &Method::POST,
            path: "/api/drain",
            query,
            headers: &headers,
            peer: "127.0.0.1:1".parse().expect("address"),
        };
        assert_eq!(call("a=1&path=home%2Fwan1").param("path").ok().flatten().as_deref(), Some("home/wan1"));
        assert!(matches!(call("a=1").param("path"), Ok(None)));
        let Err(bad) = call("path=wan%zz").param("path") else { panic!("accepted") };
        assert_eq!(bad.status, StatusCode::BAD_REQUEST);
        assert!(bad.body.starts_with("path: not percent-encoded UTF-8"), "{}", bad.body);
        assert!(call("path=%ff").param("path").is_err(), "not UTF-8");
    }
}
