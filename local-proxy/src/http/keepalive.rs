//! Kept-alive HTTP/1.1 connections to one site's upstreams, on one event loop: a request
//! takes an idle connection to its upstream or opens one, and its response body hands the
//! connection back when it ends.
//!
//! Why not hyper-util's pooled client, which this replaced for sites (forward auth and health
//! checks still use it): per request it hashed its pool key (scheme and authority, a byte at a
//! time with SipHash) twice, built a connect future it then dropped, raced it against the
//! checkout, and spawned a task to return the connection once ready; with bench/instructions
//! that came to about 5,000 instructions per keep-alive request through the local proxy. Here
//! the idle lists are per upstream, found by comparing a few authorities, and a connection
//! goes back when its response body ends. Its task may not have turned idle yet at that
//! moment (it does as soon as it runs), so a checkout passes over connections that are not
//! ready and takes the newest one that is.
//!
//! As hyper-util's: a request that a reused connection could not even start (the upstream
//! closed it while idle) goes out again on another connection, whatever its method. One that
//! may be sent twice and went out on a connection idle for [`COPY_AFTER`], which then closed
//! or was reset before a whole answer and within [`STALE_WITHIN`], is [`SendError::Stale`]
//! with a copy of its headers, for the caller to send once more on a new connection (as nginx
//! and Go's client do: the upstream closed the connection as the request arrived, its
//! keep-alive timeout, so never read it); idle connections are closed after `IDLE_TIMEOUT`; a
//! request future dropped mid-way (the upstream timeout) closes its connection. A sweep every
//! `IDLE_TIMEOUT` closes what a checkout did not pass over, so an idle connection lives 30 to
//! 60 s.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::uri::{Authority, Scheme};
use http::{header, HeaderMap, HeaderValue, Request, Response, Uri};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use tokio::time::Instant;
use tower_service::Service;
use tracing::debug;

use super::body::BoxError;
use super::upstream::RequestBody;
use crate::config::Upstream;

/// Idle connections are closed after this long unused (hyper-util's pool had the same).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Idle connections kept per upstream; the oldest goes when one more comes back.
const MAX_IDLE: usize = 256;

/// A connection idle at least this long may have been closed by the upstream's own keep-alive
/// timeout (Apache, Node and uvicorn: 5 s; gunicorn: 2 s) with the close not yet seen here.
/// Before such a one is used, the event loop polls its sockets once, so a close that has
/// arrived is seen and another connection taken: written on a closed connection, the request
/// would fail after it was sent (a POST is not sent twice; a site with one upstream answers
/// 502). Shorter idle times never pay for the extra turn.
const RECHECK_AFTER: Duration = Duration::from_secs(1);

/// A request that may be sent twice keeps a copy of its headers while it goes out on a
/// connection idle at least this long, to go again on a new one if that one turns out closed
/// by the upstream (its keep-alive timeout struck as the request arrived). Kept-alive
/// connections under load come back within milliseconds; the copy of every request cost
/// about 1,400 instructions of 50,000 (bench/instructions).
const COPY_AFTER: Duration = Duration::from_millis(100);

/// A connection closed under a request fails it within a round trip of sending. Later, the
/// upstream had the request and worked on it (then crashed, or cut the answer short): that is
/// its own failure, and the request is not sent again to it.
const STALE_WITHIN: Duration = Duration::from_secs(1);

/// Why a request got no response.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No connection: refused, unreachable, timed out, TLS failed. Nothing was sent.
    #[error("connect")]
    Connect(#[source] BoxError),
    /// A connection idle for [`COPY_AFTER`] or more was closed or reset under the request,
    /// before a whole answer and within [`STALE_WITHIN`]; the request's headers, to send it
    /// again.
    #[error("kept-alive connection closed")]
    Stale(#[source] hyper::Error, Box<HeaderMap>),
    /// The connection broke or the upstream answered with something that is not HTTP.
    #[error("request")]
    Request(#[source] hyper::Error),
}

impl SendError {
    pub fn is_connect(&self) -> bool {
        matches!(self, SendError::Connect(_))
    }
}

/// One site's upstream connections on one event loop (`routes::SiteRoute::clients`); clones
/// share them.
#[derive(Clone)]
pub struct Connections {
    inner: Arc<Inner>,
}

struct Inner {
    connector: HttpsConnector<HttpConnector>,
    /// Per upstream (a site has a few, so a scan beats hashing): its idle connections,
    /// oldest first.
    idle: Mutex<Vec<Idle>>,
    /// Whether the task that closes expired idle connections runs.
    sweeping: AtomicBool,
    /// [`COPY_AFTER`]; tests set their own.
    copy_after: Duration,
}

struct Idle {
    tls: bool,
    authority: Authority,
    conns: VecDeque<(SendRequest<RequestBody>, Instant)>,
}

impl Idle {
    /// By the authority's bytes as configured: `Authority`'s own `==` folds case byte by byte,
    /// a cost paid twice per proxied request (checkout and give-back) for lists that only ever
    /// hold the config's own spelling.
    fn serves(&self, upstream: &Upstream) -> bool {
        self.tls == upstream.tls && self.authority.as_str() == upstream.authority.as_str()
    }
}

/// Whether an idle connection is of no more use: closed, or idle past [`IDLE_TIMEOUT`].
fn spent(sender: &SendRequest<RequestBody>, since: Instant, now: Instant) -> bool {
    sender.is_closed() || now.duration_since(since) >= IDLE_TIMEOUT
}

impl std::fmt::Debug for Connections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connections").finish_non_exhaustive()
    }
}

impl Connections {
    pub fn new(connector: HttpsConnector<HttpConnector>) -> Self {
        Self::copying_after(connector, COPY_AFTER)
    }

    fn copying_after(connector: HttpsConnector<HttpConnector>, copy_after: Duration) -> Self {
        let idle = Mutex::new(Vec::new());
        Self { inner: Arc::new(Inner { connector, idle, sweeping: AtomicBool::new(false), copy_after }) }
    }

    /// Send `req` (origin-form URI) to `upstream` on an idle connection (if `reuse`) or a new
    /// one. The [`Lease`] holds the connection until the response body ends ([`Returning`]).
    /// `resendable`: the caller may send it twice, so it can be [`SendError::Stale`].
    pub async fn send(
        &self,
        upstream: &Upstream,
        req: Request<RequestBody>,
        reuse: bool,
        resendable: bool,
    ) -> Result<(Response<Incoming>, Lease), SendError> {
        self.send_noting(upstream, req, reuse, resendable, &AtomicBool::new(false)).await
    }

    /// [`Connections::send`], setting `connected` once it has a connection to send on: a
    /// caller whose deadline comes before that knows nothing was sent.
    pub async fn send_noting(
        &self,
        upstream: &Upstream,
        mut req: Request<RequestBody>,
        reuse: bool,
        resendable: bool,
        connected: &AtomicBool,
    ) -> Result<(Response<Incoming>, Lease), SendError> {
        if !req.headers().contains_key(header::HOST) {
            if let Some(host) = host_header(upstream) {
                req.headers_mut().insert(header::HOST, host);
            }
        }
        // Each pass takes an idle connection out of the list, or opens the last one.
        loop {
            let (mut sender, idle) = match reuse.then(|| self.checkout(upstream)).flatten() {
                Some((sender, idle)) if idle >= RECHECK_AFTER => {
                    // Polled after the loop has polled its sockets (tokio defers a yield).
                    tokio::task::yield_now().await;
                    if !sender.is_ready() {
                        debug!(upstream = %upstream, "idle connection closed by the upstream; another one");
                        continue;
                    }
                    (sender, Some(idle))
                }
                Some((sender, idle)) => (sender, Some(idle)),
                // Boxed: the connect's future (a TLS stream inline, twice) is most of this
                // one's size, and every request's future, moved and copied on its way, has
                // room for it; a kept-alive request never opens a connection.
                None => (Box::pin(self.connect(upstream)).await?, None),
            };
            connected.store(true, Ordering::Relaxed);
            let reused = idle.is_some();
            let copy = idle
                .filter(|&i| resendable && i >= self.inner.copy_after)
                .map(|_| (Box::new(req.headers().clone()), Instant::now()));
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    return Ok((resp, Lease { sender, pool: Arc::downgrade(&self.inner), upstream: upstream.clone() }))
                }
                Err(mut e) => match (e.take_message(), copy) {
                    // Closed while idle, before our request started: it was never sent.
                    (Some(back), _) if reused => {
                        debug!(upstream = %upstream, error = %e.error(), "idle connection gone; another one");
                        req = back;
                    }
                    (None, Some((headers, sent))) if closed_under(e.error(), sent) => {
                        return Err(SendError::Stale(e.into_error(), headers))
                    }
                    _ => return Err(SendError::Request(e.into_error())),
                },
            }
        }
    }

    /// The newest ready idle connection to `upstream`, and how long it has been idle; expired
    /// and closed ones are dropped.
    fn checkout(&self, upstream: &Upstream) -> Option<(SendRequest<RequestBody>, Duration)> {
        let mut idle = self.inner.lock();
        let list = idle.iter_mut().find(|i| i.serves(upstream))?;
        let now = Instant::now();
        while list.conns.front().is_some_and(|(s, at)| spent(s, *at, now)) {
            list.conns.pop_front();
        }
        let i = list.conns.iter().rposition(|(s, _)| s.is_ready())?;
        list.conns.remove(i).map(|(s, at)| (s, now.duration_since(at)))
    }

    async fn connect(&self, upstream: &Upstream) -> Result<SendRequest<RequestBody>, SendError> {
        let mut target = http::uri::Parts::default();
        target.scheme = Some(if upstream.tls { Scheme::HTTPS } else { Scheme::HTTP });
        target.authority = Some(upstream.authority.clone());
        target.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
        let uri = Uri::from_parts(target).map_err(|e| SendError::Connect(e.into()))?;
        let io = self.inner.connector.clone().call(uri).await.map_err(SendError::Connect)?;
        let (sender, conn) = http1::Builder::new().handshake(io).await.map_err(SendError::Request)?;
        let label = upstream.to_string();
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                debug!(upstream = %label, error = %e, "upstream connection ended");
            }
        });
        Ok(sender)
    }

    /// How many connections are idle.
    #[cfg(test)]
    fn idle(&self) -> usize {
        self.inner.lock().iter().map(|l| l.conns.len()).sum()
    }
}

/// Whether a request sent at `sent` failed because its connection was closed under it: closed
/// or reset before a whole answer, within [`STALE_WITHIN`]. Not an answer that is not HTTP.
fn closed_under(e: &hyper::Error, sent: Instant) -> bool {
    use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset, UnexpectedEof};
    let reset = std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<std::io::Error>())
        .is_some_and(|io| matches!(io.kind(), ConnectionReset | BrokenPipe | ConnectionAborted | UnexpectedEof));
    sent.elapsed() < STALE_WITHIN && (e.is_incomplete_message() || reset)
}

/// The Host header hyper-util's client set when a request had none: the upstream's host, and
/// its port unless the scheme's default.
fn host_header(upstream: &Upstream) -> Option<HeaderValue> {
    let a = &upstream.authority;
    let default = if upstream.tls { 443 } else { 80 };
    match a.port_u16() {
        Some(p) if p != default => HeaderValue::from_str(a.as_str()).ok(),
        _ => HeaderValue::from_str(a.host()).ok(),
    }
}

impl Inner {
    /// The idle lists. Nothing panics while holding them, and a list is whole after any
    /// change, so a poisoned lock is taken as it is rather than turning pooling off.
    fn lock(&self) -> MutexGuard<'_, Vec<Idle>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Keep `sender` for the next request to `upstream`, unless it is closed.
    fn put_back(self: &Arc<Self>, upstream: &Upstream, sender: SendRequest<RequestBody>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.lock();
        let at = Instant::now();
        match idle.iter_mut().find(|i| i.serves(upstream)) {
            Some(list) => {
                if list.conns.len() >= MAX_IDLE {
                    list.conns.pop_front();
                }
                list.conns.push_back((sender, at));
            }
            None => idle.push(Idle {
                tls: upstream.tls,
                authority: upstream.authority.clone(),
                conns: VecDeque::from([(sender, at)]),
            }),
        }
        drop(idle);
        // A body may be dropped off any runtime (at shutdown): no sweep then, and no panic.
        if !self.sweeping.swap(true, Ordering::Relaxed) {
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => drop(rt.spawn(sweep(Arc::downgrade(self)))),
                Err(_) => self.sweeping.store(false, Ordering::Relaxed),
            }
        }
    }

    /// Drop closed connections and those idle past [`IDLE_TIMEOUT`].
    fn sweep(&self) {
        let mut idle = self.lock();
        let now = Instant::now();
        for list in idle.iter_mut() {
            list.conns.retain(|(s, at)| !spent(s, *at, now));
        }
        idle.retain(|list| !list.conns.is_empty());
    }
}

/// Close expired idle connections every [`IDLE_TIMEOUT`] (a checkout only drops those it
/// passes), on the loop that returned them, until the site's table is gone (a reload).
async fn sweep(pool: Weak<Inner>) {
    loop {
        tokio::time::sleep(IDLE_TIMEOUT).await;
        let Some(inner) = pool.upgrade() else { return };
        inner.sweep();
    }
}

/// A connection lent to one request until its response body ends.
pub struct Lease {
    sender: SendRequest<RequestBody>,
    /// Weak: a response still streaming after a reload does not keep the old table's
    /// connections; its connection is then just closed.
    pool: Weak<Inner>,
    upstream: Upstream,
}

impl Lease {
    fn give_back(self) {
        if let Some(pool) = self.pool.upgrade() {
            pool.put_back(&self.upstream, self.sender);
        }
    }
}

/// A response body that gives its connection back when it ends. Dropped before its end (the
/// client went away), the connection is closed with it rather than drained: what is left of
/// the body may be large or never end. An upstream that sends nothing more of it for
/// `read_timeout` (`http.upstream_timeout`, as nginx's `proxy_read_timeout`) ends it with an
/// error, and the client's response is cut short rather than left hanging.
pub struct Returning {
    inner: Incoming,
    lease: Option<Lease>,
    read_timeout: Duration,
    /// The wait for the next frame, armed only while one is awaited and reused for the next
    /// wait. (An HTTP/1.1 client's body is usually in hand when first polled, so starts none;
    /// an h2 stream's task usually polls before the upstream's task has passed it on:
    /// bench/results/2026-12-05-vm-hardening-cost.md.)
    waiting: Option<Pin<Box<tokio::time::Sleep>>>,
    armed: bool,
}

/// The upstream sent nothing of its response body for this long.
#[derive(Debug, thiserror::Error)]
#[error("the upstream sent nothing more of its response for {0:?}")]
pub struct BodyTimeout(pub Duration);

impl Returning {
    pub fn new(inner: Incoming, lease: Lease, read_timeout: Duration) -> Self {
        Self { inner, lease: Some(lease), read_timeout, waiting: None, armed: false }
    }

    fn ended(&mut self) {
        if let Some(lease) = self.lease.take() {
            lease.give_back();
        }
    }
}

impl Body for Returning {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let Poll::Ready(polled) = Pin::new(&mut this.inner).poll_frame(cx) else {
            if !this.armed {
                let deadline = Instant::now() + this.read_timeout;
                match &mut this.waiting {
                    Some(timer) => timer.as_mut().reset(deadline),
                    None => this.waiting = Some(Box::pin(tokio::time::sleep_until(deadline))),
                }
                this.armed = true;
            }
            if this.waiting.as_mut().is_none_or(|timer| timer.as_mut().poll(cx).is_pending()) {
                return Poll::Pending;
            }
            // The connection is not reused.
            this.lease = None;
            return Poll::Ready(Some(Err(BodyTimeout(this.read_timeout).into())));
        };
        this.armed = false;
        match &polled {
            None => this.ended(),
            Some(Ok(_)) if this.inner.is_end_stream() => this.ended(),
            // A broken body: the connection is not reused.
            Some(Err(_)) => this.lease = None,
            _ => {}
        }
        Poll::Ready(polled.map(|r| r.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Returning {
    fn drop(&mut self) {
        // An empty body (HEAD, 204, 304) is never polled.
        if self.inner.is_end_stream() {
            self.ended();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::atomic::AtomicUsize;

    use http_body_util::{BodyExt, Full};
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    use tokio::net::TcpListener;

    use super::*;

    /// A plain HTTP/1.1 upstream on loopback answering "hello" with a length, counting the
    /// connections it accepted; `keep_alive = false` closes each after its answer.
    async fn upstream(keep_alive: bool) -> (Upstream, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let svc = service_fn(|_req: Request<Incoming>| async {
                        Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from_static(b"hello"))))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .keep_alive(keep_alive)
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        (Upstream { tls: false, authority: addr.to_string().parse().unwrap() }, accepted)
    }

    fn connections() -> Connections {
        super::super::upstream::per_loop(false, None, Duration::from_secs(2), 1, Connections::new)
            .unwrap()
            .get()
            .clone()
    }

    fn get() -> Request<RequestBody> {
        Request::get("/").body(super::super::upstream::empty()).unwrap()
    }

    /// Send and read the whole answer through [`Returning`], as the proxy does.
    async fn fetch(c: &Connections, to: &Upstream) -> String {
        let (resp, lease) = c.send(to, get(), true, true).await.unwrap();
        let body = Returning::new(resp.into_body(), lease, Duration::from_secs(60)).collect().await.unwrap().to_bytes();
        String::from_utf8_lossy(&body).into_owned()
    }

    /// Until the connection task has turned idle (it runs on this same loop).
    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    /// `n` requests, each after the one before has ended and its connection settled.
    async fn one_by_one(c: &Connections, to: &Upstream, n: usize) {
        for i in 0..n {
            assert_eq!(fetch(c, to).await, "hello", "request {i}");
            settle().await;
        }
    }

    #[tokio::test]
    async fn requests_one_after_another_share_one_connection() {
        let (to, accepted) = upstream(true).await;
        let c = connections();
        one_by_one(&c, &to, 5).await;
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        assert_eq!(c.idle(), 1);
    }

    #[tokio::test]
    async fn requests_at_once_each_get_a_connection_and_all_come_back() {
        let (to, accepted) = upstream(true).await;
        let c = connections();
        let (a, b, d) = tokio::join!(fetch(&c, &to), fetch(&c, &to), fetch(&c, &to));
        assert_eq!((a.as_str(), b.as_str(), d.as_str()), ("hello", "hello", "hello"));
        settle().await;
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
        assert_eq!(c.idle(), 3);
        // The next ones take those, no new connection.
        one_by_one(&c, &to, 3).await;
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_connection_the_upstream_closed_is_not_reused() {
        let (to, accepted) = upstream(false).await;
        let c = connections();
        one_by_one(&c, &to, 3).await;
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
        // Each checkout dropped the closed ones before it: at most the last is listed.
        assert!(c.idle() <= 1, "closed connections kept: {}", c.idle());
    }

    #[tokio::test]
    async fn a_body_dropped_before_its_end_takes_its_connection_along() {
        let (to, accepted) = upstream(true).await;
        let c = connections();
        let (resp, lease) = c.send(&to, get(), true, true).await.unwrap();
        drop(Returning::new(resp.into_body(), lease, Duration::from_secs(60)));
        settle().await;
        assert_eq!(c.idle(), 0);
        assert_eq!(fetch(&c, &to).await, "hello");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn different_upstreams_keep_their_own_connections() {
        let (one, accepted_one) = upstream(true).await;
        let (two, accepted_two) = upstream(true).await;
        let c = connections();
        for _ in 0..3 {
            fetch(&c, &one).await;
            fetch(&c, &two).await;
            settle().await;
        }
        assert_eq!((accepted_one.load(Ordering::SeqCst), accepted_two.load(Ordering::SeqCst)), (1, 1));
        assert_eq!(c.idle(), 2);
    }

    #[tokio::test]
    async fn a_refused_connect_is_a_connect_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let to = Upstream { tls: false, authority: addr.to_string().parse().unwrap() };
        let err = connections().send(&to, get(), true, true).await.err().expect("refused");
        assert!(err.is_connect(), "{err:?}");
    }

    #[tokio::test]
    async fn idle_connections_are_closed_after_the_idle_timeout() {
        let (to, accepted) = upstream(true).await;
        let c = connections();
        fetch(&c, &to).await;
        settle().await;
        assert_eq!(c.idle(), 1);
        // Only the clock moves: the sweep task wakes and drops it.
        tokio::time::pause();
        tokio::time::advance(IDLE_TIMEOUT + Duration::from_secs(1)).await;
        settle().await;
        assert_eq!(c.idle(), 0);
        tokio::time::resume();
        fetch(&c, &to).await;
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    /// The upstream closes an idle connection without a word while this loop is busy, and
    /// the next request comes before the loop has polled its sockets (the close is not seen
    /// yet): the request goes out on a new connection, not on the closed one.
    #[test]
    fn a_connection_closed_while_the_loop_was_busy_is_not_written_to() {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (close_tx, close_rx) = std::sync::mpsc::channel::<()>();
        // On a thread of its own: it closes while the client's loop is blocked.
        let server = std::thread::spawn(move || {
            let mut served = 0;
            for conn in listener.incoming().take(2) {
                let mut conn = conn.unwrap();
                let mut buf = [0u8; 4096];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = conn.read(&mut buf).unwrap();
                    assert!(n > 0, "closed before a request");
                    got.extend_from_slice(&buf[..n]);
                }
                conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello").unwrap();
                served += 1;
                if served == 1 {
                    close_rx.recv().unwrap();
                }
            }
            served
        });
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let c = connections();
        let to = Upstream { tls: false, authority: addr.to_string().parse().unwrap() };
        rt.block_on(async {
            assert_eq!(fetch(&c, &to).await, "hello");
            settle().await;
            assert_eq!(c.idle(), 1);
        });
        // The server drops the first connection; this loop does not run meanwhile, and the
        // connection has been idle past RECHECK_AFTER when the next request takes it.
        close_tx.send(()).unwrap();
        std::thread::sleep(RECHECK_AFTER + Duration::from_millis(200));
        let second = rt.block_on(async { c.send(&to, get(), true, true).await.map(|(r, _)| r.status()) });
        assert_eq!(second.expect("the second request").as_u16(), 200);
        assert_eq!(server.join().unwrap(), 2);
    }

    /// An upstream that answers `answered` requests on each connection, then reads the next
    /// and, after `working` (0: its keep-alive timeout struck as the request arrived), closes
    /// without a word; counts the requests it read.
    async fn closing_after(answered: usize, working: Duration) -> (Upstream, Arc<AtomicUsize>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let requests = Arc::new(AtomicUsize::new(0));
        let count = requests.clone();
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                let count = count.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    for i in 0..=answered {
                        let mut got = Vec::new();
                        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                            match tcp.read(&mut buf).await {
                                Ok(n) if n > 0 => got.extend_from_slice(&buf[..n]),
                                _ => return,
                            }
                        }
                        count.fetch_add(1, Ordering::SeqCst);
                        if i == answered {
                            tokio::time::sleep(working).await;
                        } else {
                            let _ = tcp.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello").await;
                        }
                    }
                });
            }
        });
        (Upstream { tls: false, authority: addr.to_string().parse().unwrap() }, requests)
    }

    #[tokio::test]
    async fn a_connection_idle_a_while_closed_under_a_request_is_stale_and_a_new_one_serves_it() {
        let (to, requests) = closing_after(1, Duration::ZERO).await;
        let c = connections();
        assert_eq!(fetch(&c, &to).await, "hello");
        settle().await;
        assert_eq!(c.idle(), 1);
        tokio::time::sleep(COPY_AFTER).await;
        let mut req = get();
        req.headers_mut().insert("x-request", HeaderValue::from_static("1"));
        let err = c.send(&to, req, true, true).await.err().expect("closed under the request");
        let SendError::Stale(_, headers) = err else { panic!("{err:?}") };
        assert_eq!(headers.get("x-request").map(|v| v.as_bytes()), Some(&b"1"[..]), "the headers come back");
        // The caller's retry, on a new connection.
        let (resp, _) = c.send(&to, get(), false, true).await.expect("a new connection answers");
        assert_eq!(resp.status(), 200);
        assert_eq!(requests.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn no_copy_no_stale_under_load_for_a_request_sent_once_or_on_a_new_connection() {
        // Reused before COPY_AFTER, as under load (an hour here, so a stalled machine cannot
        // make it longer): kept no copy, so a plain request error.
        let (to, _) = closing_after(1, Duration::ZERO).await;
        let quick = super::super::upstream::per_loop(false, None, Duration::from_secs(2), 1, |connector| {
            Connections::copying_after(connector, Duration::from_secs(3600))
        })
        .unwrap()
        .get()
        .clone();
        assert_eq!(fetch(&quick, &to).await, "hello");
        settle().await;
        let err = quick.send(&to, get(), true, true).await.err().expect("closed under the request");
        assert!(matches!(err, SendError::Request(_)), "{err:?}");
        // A request the caller will not send twice.
        let c = connections();
        assert_eq!(fetch(&c, &to).await, "hello");
        settle().await;
        tokio::time::sleep(COPY_AFTER).await;
        let err = c.send(&to, get(), true, false).await.err().expect("closed under the request");
        assert!(matches!(err, SendError::Request(_)), "{err:?}");
        // Closed after working on it a while: the upstream's own failure.
        let (to, _) = closing_after(1, STALE_WITHIN + Duration::from_millis(200)).await;
        assert_eq!(fetch(&c, &to).await, "hello");
        settle().await;
        tokio::time::sleep(COPY_AFTER).await;
        let err = c.send(&to, get(), true, true).await.err().expect("closed under the request");
        assert!(matches!(err, SendError::Request(_)), "{err:?}");
        // A new connection closed under its first request kept nothing alive.
        let (to, _) = closing_after(0, Duration::ZERO).await;
        let err = c.send(&to, get(), true, true).await.err().expect("closed under the request");
        assert!(matches!(err, SendError::Request(_)), "{err:?}");
    }

    /// A body ending outside any runtime (dropped at shutdown) gives its connection back
    /// without starting the sweep task, which would panic there.
    #[test]
    fn a_body_dropped_off_the_runtime_gives_its_connection_back() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let c = connections();
        let body = rt.block_on(async {
            let (to, _) = upstream(true).await;
            let head = Request::head("/").body(super::super::upstream::empty()).unwrap();
            let (resp, lease) = c.send(&to, head, true, true).await.unwrap();
            Returning::new(resp.into_body(), lease, Duration::from_secs(60))
        });
        drop(body);
        assert_eq!(c.idle(), 1);
        assert!(!c.inner.sweeping.load(Ordering::Relaxed));
    }

    #[test]
    fn the_host_header_leaves_out_the_default_port() {
        let host = |tls, a: &str| host_header(&Upstream { tls, authority: a.parse().unwrap() }).unwrap();
        assert_eq!(host(false, "app.lan:80"), "app.lan");
        assert_eq!(host(true, "app.lan:443"), "app.lan");
        assert_eq!(host(false, "app.lan:8080"), "app.lan:8080");
        assert_eq!(host(true, "app.lan"), "app.lan");
        assert_eq!(host(false, "[fd00::1]:8080"), "[fd00::1]:8080");
    }
}
