//! Serving one client connection (TLS or plain) with hyper: HTTP/1.1 or h2 chosen by ALPN,
//! bounded head size and head read time (an HTTP/1 head started but not finished in time gets
//! a 408), an idle bound, and graceful close on shutdown: a connection that has not had its
//! first request yet is let start one (bounded by the head read time) before it is closed, so a
//! client accepted just before SIGTERM gets its answer instead of an empty close.
//!
//! The first request's head must be complete within `header_read_timeout` of the connection's
//! start, over both protocols; hyper's own head timer bounds the later ones. hyper's HTTP/1
//! server is built only once the client's first bytes are in (`first_bytes`), on the heap:
//! a connection not used yet holds none of it. A keep-alive HTTP/1 connection quiet between
//! requests is parked (`park`): its server is taken apart, and built again for the next
//! request, whose head is due as if hyper had waited for it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use hyper::body::Incoming;
use hyper::service::{service_fn, Service};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::debug;

use super::conn::Conn;
use super::first_bytes::FirstBytes;
use super::h2_streams::{StreamExec, Streams};
use super::handler::handle;
use super::head_timeout::{self, MarkOnDrop, Reclaim};
use super::headers::unshare_values;
use super::hostile;
use super::park::{quiet_between_requests, BodyBusy, Parkable};
use crate::config::Http;
use crate::idle::{Activity, Tracked};
use crate::metrics::names;

/// Which protocol the connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Http1,
    H2,
}

/// Serve `io` until the client leaves, breaks a limit, idles out, or shutdown drains it.
pub async fn serve<IO>(mut io: IO, proto: Proto, conn: Arc<Conn>)
where
    IO: AsyncRead + AsyncWrite + FirstBytes + Unpin + Send + 'static,
{
    let config = conn.state.config.load_full();
    let http = &config.http;
    let shutdown = conn.state.shutdown.clone();
    let listener = conn.listener;
    let activity = Activity::new();
    let first_head_deadline = Instant::now() + http.header_read_timeout;

    let first_request = Arc::new(AtomicBool::new(false));
    let seen = first_request.clone();
    let served_one = first_request.clone();
    let started = Arc::new(Notify::new());
    let starts = started.clone();
    let svc = service_fn(move |req| {
        seen.store(true, Ordering::Relaxed);
        starts.notify_one();
        let conn = conn.clone();
        // Boxed: hyper's HTTP/1 dispatcher keeps a slot the size of this future for the whole
        // connection, idle or not; the request's state machine is 5.4 kB (rustc's
        // -Zprint-type-sizes; bench/results/2026-12-05-vm-request-future.md), so it lives on
        // the heap only while a request is in flight.
        Box::pin(async move {
            let mut resp = handle(req, conn).await;
            // Every response bound for an h2 client, whoever built it, leaves with header values
            // of its own: h2's HPACK table would otherwise keep an upstream's read buffer alive.
            if proto == Proto::H2 {
                unshare_values(resp.headers_mut());
            }
            // A hostile client: its access log line is written as the response drops here;
            // failing the request makes hyper close the connection (h2: reset the stream)
            // without writing anything.
            if hostile::must_close(&resp) {
                return Err(hostile::Closed);
            }
            Ok(resp)
        })
    });

    let mut answered_408 = false;
    let result: Result<(), (&'static str, String)> = match proto {
        Proto::Http1 => 'h1: {
            // Each round serves the connection from its client's next bytes until hyper ends
            // it or it is parked (`park`): the first round from the connection's start, later
            // ones from the next request on a parked keep-alive connection. `head_due` is when
            // the round's first head must be complete: hyper times each later head itself.
            let mut head_due = first_head_deadline;
            let mut parked = false;
            // Bytes the last round's server had read past its last request.
            let mut ahead = Bytes::new();
            loop {
                if ahead.is_empty() {
                    let arrived = tokio::select! {
                        arrived = io.arrived() => arrived,
                        // Quiet since its last answer for header_read_timeout: as hyper ends an
                        // idle keep-alive connection, silently. Silent from the start: a head
                        // timeout.
                        _ = tokio::time::sleep_until(head_due) => {
                            break 'h1 if parked { Ok(()) } else { Err(("head_timeout", String::new())) };
                        }
                        _ = activity.idle_for(http.idle_timeout) => break 'h1 Err(("idle_timeout", String::new())),
                        // Between requests, as hyper closes an idle connection on a graceful
                        // shutdown.
                        _ = shutdown.cancelled(), if parked => break 'h1 Ok(()),
                    };
                    match arrived {
                        Ok(true) => {}
                        // Closed before asking anything: as hyper ends such a connection, quietly.
                        Ok(false) => break 'h1 Ok(()),
                        // Reset before asking anything (a TLS client that closes with the session
                        // tickets unread resets), or a bad TLS record: as hyper ends a read error
                        // on an idle connection, quietly.
                        Err(e) => {
                            debug!(listener, error = %e, "connection closed before a request");
                            break 'h1 Ok(());
                        }
                    }
                }
                let (io_parkable, park) = Parkable::new(Tracked::new(io, activity.clone()), std::mem::take(&mut ahead));
                // hyper owns the socket while it serves; a second handle lets us answer a
                // timed-out head with a 408 after hyper has given up on it.
                let io_shared = Reclaim::new(io_parkable);
                let reclaim = io_shared.handle();
                let progress = io_shared.progress();
                let marks = progress.clone();
                let round_request = Arc::new(AtomicBool::new(false));
                let seen = round_request.clone();
                let round_started = Arc::new(Notify::new());
                let round_starts = round_started.clone();
                let svc = svc.clone();
                let holds = park.clone();
                let svc = service_fn(move |mut req: Request<Incoming>| {
                    seen.store(true, Ordering::Relaxed);
                    round_starts.notify_one();
                    let response = holds.busy();
                    if !http_body::Body::is_end_stream(req.body()) {
                        req.extensions_mut().insert(BodyBusy::new(holds.busy()));
                    }
                    let answer = svc.call(req);
                    let marks = marks.clone();
                    async move { answer.await.map(|r| r.map(|body| MarkOnDrop::new(body, marks, response))) }
                });
                let mut c = Box::pin(
                    hyper::server::conn::http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(http.header_read_timeout)
                        .max_buf_size(http.max_header_bytes)
                        .keep_alive(true)
                        .serve_connection(TokioIo::new(io_shared), svc)
                        .with_upgrades(),
                );
                let res = tokio::select! {
                    // hyper first: what woke it (a body dropped, a close) is seen before parking.
                    biased;
                    res = c.as_mut() => res.map_err(classify),
                    _ = first_head_due(head_due, &round_request) => Err(("head_timeout", String::new())),
                    _ = idled_out(&activity, http, || (!park.in_flight()).then(|| activity.last())) => {
                        Err(("idle_timeout", String::new()))
                    }
                    _ = quiet_between_requests(&activity, &progress, &park) => {
                        // No response or request body in hand (their guards), nothing written
                        // left waiting, hyper polled first: take the socket and what it read
                        // ahead, and let its buffers go.
                        drop(reclaim);
                        let taken = std::pin::Pin::into_inner(c)
                            .into_parts()
                            .and_then(|parts| Some((parts.io.into_inner().into_inner()?, parts.read_buf)));
                        let Some((io_parkable, read_ahead)) = taken else { break 'h1 Ok(()) };
                        let (back, unread) = io_parkable.into_parts();
                        io = back.into_inner();
                        // hyper's unparsed bytes came from the front of what `Parkable` still
                        // held. Copied out: the read buffer's 8 KiB would stay with them.
                        ahead = match (read_ahead.is_empty(), unread.is_empty()) {
                            (true, true) => Bytes::new(),
                            _ => [read_ahead, unread].concat().into(),
                        };
                        head_due = shared::ports::tokio_deadline(activity.last(), http.header_read_timeout);
                        parked = true;
                        metrics::counter!(names::HTTP_PARKED, "listener" => listener).increment(1);
                        continue;
                    }
                    _ = shutdown.cancelled() => {
                        let ended = tokio::select! {
                            res = c.as_mut() => Some(res.map_err(classify)),
                            // Draining does not give a head more time than it had.
                            _ = first_head_due(head_due, &round_request) => Some(Err(("head_timeout", String::new()))),
                            _ = first_request_started(&round_request, &round_started, http.header_read_timeout) => None,
                        };
                        match ended {
                            Some(res) => res,
                            None => {
                                c.as_mut().graceful_shutdown();
                                c.as_mut().await.map_err(classify)
                            }
                        }
                    }
                };
                if matches!(res, Err(("head_timeout", _))) && progress.head_started() {
                    head_timeout::answer(reclaim).await;
                    answered_408 = true;
                }
                break 'h1 res;
            }
        }
        Proto::H2 => {
            // Boxed as well (~2.7 kB): `serve`'s future is as large as its largest branch, and
            // every HTTP/1 connection's task would carry an inline h2 server's size.
            let io = TokioIo::new(Tracked::new(io, activity.clone()));
            let streams = Streams::new(http.stream_stall, listener);
            let mut c = Box::pin(
                hyper::server::conn::http2::Builder::new(StreamExec(streams.clone()))
                    .timer(TokioTimer::new())
                    .max_header_list_size(http.max_header_bytes as u32)
                    // nginx's default (HAProxy's is 100). Each stream may hold an upstream
                    // connection, one whose client grants no flow-control window until
                    // `StreamExec` drops it.
                    .max_concurrent_streams(128)
                    .serve_connection(io, svc),
            );
            tokio::select! {
                res = c.as_mut() => res.map_err(classify),
                // h2 has no head-read timeout of its own.
                _ = first_head_due(first_head_deadline, &first_request) => Err(("head_timeout", String::new())),
                idled = idled_out(&activity, http, || streams.quiet_since()) => match idled {
                    // No stream for idle_timeout: a kept-alive connection's end, with GOAWAY
                    // (streams the client opened meanwhile are still answered).
                    Idled::Quiet => {
                        c.as_mut().graceful_shutdown();
                        match tokio::time::timeout(http.stream_stall, c.as_mut()).await {
                            Ok(res) => res.map_err(classify),
                            Err(_) => Err(("idle_timeout", String::new())),
                        }
                    }
                    Idled::Stuck => Err(("idle_timeout", String::new())),
                },
                _ = shutdown.cancelled() => {
                    let ended = tokio::select! {
                        res = c.as_mut() => Some(res),
                        _ = first_request_started(&first_request, &started, http.header_read_timeout) => None,
                    };
                    match ended {
                        Some(res) => res.map_err(classify),
                        None => {
                            c.as_mut().graceful_shutdown();
                            c.await.map_err(classify)
                        }
                    }
                }
            }
        }
    };
    if let Err((result, detail)) = result {
        if result == "hostile_closed" {
            debug!(listener, "connection of a hostile client closed without a response");
            return;
        }
        // After a request, a head timeout is just an idle keep-alive connection ending.
        if result == "head_timeout" && served_one.load(Ordering::Relaxed) && !answered_408 {
            debug!(listener, "idle keep-alive connection closed");
            return;
        }
        debug!(listener, result, detail = %detail, answered_408, "HTTP connection ended with an error");
        metrics::counter!(names::HTTP_CONNECTION_ERRORS, "listener" => listener, "result" => result).increment(1);
    }
}

/// [`serve`], then, in the same task, the tunnel the connection became if a request upgraded it
/// (`Conn::set_tunnel`).
pub async fn serve_then_tunnel<IO>(io: IO, proto: Proto, conn: Conn)
where
    IO: AsyncRead + AsyncWrite + FirstBytes + Unpin + Send + 'static,
{
    let conn = Arc::new(conn);
    serve(io, proto, conn.clone()).await;
    let tunnel = conn.take_tunnel();
    drop(conn);
    if let Some(tunnel) = tunnel {
        tunnel.await;
    }
}

/// How a connection idled out.
enum Idled {
    /// Nothing in flight for `idle_timeout`.
    Quiet,
    /// A request in flight, and no byte moved either way for `stream_stall`.
    Stuck,
}

/// Resolves once the connection has idled out. `quiet_since`: `None` while a request is in
/// flight, else since when nothing has been. A request waiting for its upstream moves no byte
/// for up to `upstream_timeout` (and forward auth's timeout), which may be longer than
/// `idle_timeout`; while one is in flight the bound is `stream_stall`, longer than any such
/// wait (as nginx's client timeouts do not run while it waits for the upstream).
async fn idled_out(activity: &Activity, http: &Http, quiet_since: impl Fn() -> Option<Instant>) -> Idled {
    loop {
        let now = Instant::now();
        let (due, idled) = match quiet_since() {
            Some(since) => (shared::ports::tokio_deadline(since, http.idle_timeout), Idled::Quiet),
            None => (shared::ports::tokio_deadline(activity.last(), http.stream_stall), Idled::Stuck),
        };
        if now >= due {
            return idled;
        }
        // Looked at again at least once per idle_timeout: a request that starts or ends
        // changes the bound.
        tokio::time::sleep_until(due.min(shared::ports::tokio_deadline(now, http.idle_timeout))).await;
    }
}

/// Resolves at `deadline` if no request has started by then (`started`: its head is not
/// complete); never otherwise. Once one has started, the timer is no longer polled, only the
/// flag read: this is polled at every wake-up of the connection's task, several per request.
async fn first_head_due(deadline: Instant, started: &AtomicBool) {
    let timer = tokio::time::sleep_until(deadline);
    tokio::pin!(timer);
    std::future::poll_fn(|cx| {
        if started.load(Ordering::Relaxed) {
            return std::task::Poll::Pending;
        }
        std::future::Future::poll(timer.as_mut(), cx)
    })
    .await;
}

/// At shutdown: a connection that has had no request yet may hold one not read so far (the
/// client connected just before SIGTERM), and a graceful shutdown now would close it unread.
/// Returns once its first request has started (the caller then shuts down gracefully: that
/// request is answered, with `Connection: close` or GOAWAY) or `bound` has passed.
async fn first_request_started(first_request: &AtomicBool, started: &Notify, bound: Duration) {
    if first_request.load(Ordering::Relaxed) {
        return;
    }
    tokio::select! {
        _ = started.notified() => {}
        _ = tokio::time::sleep(bound) => {}
    }
}

fn classify(e: hyper::Error) -> (&'static str, String) {
    let ours = std::error::Error::source(&e).is_some_and(|s| s.is::<hostile::Closed>());
    let result = if ours {
        // Counted by the hostile-client metric and logged with status 444 already.
        "hostile_closed"
    } else if e.is_parse_too_large() {
        "head_too_large"
    } else if e.is_timeout() {
        "head_timeout"
    } else if e.is_parse() || e.is_parse_status() {
        "malformed"
    } else if e.is_incomplete_message() || e.is_canceled() || e.is_closed() {
        // The client went away mid-exchange: ordinary on the internet.
        "client_closed"
    } else {
        "io"
    };
    (result, e.to_string())
}
