//! TCP services: the accept loop (limits checked, then spawn at once on the least-loaded
//! thread, `shared::workers`; nothing slow runs in the loop) and one task per connection:
//! connect through the pool, then relay.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::{TcpListener, TcpStream};
use tracing::Instrument;

use shared::descriptors::{Held, Side};
use shared::peek;
use shared::proxy_protocol::{write_v2, Command, SignatureWatch, Transport};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::config::Mode;
use crate::limits::FDS_PER_CONNECTION;
use crate::metrics::RouteFailure;
use crate::pool::{ActiveGuard, Kind, Pool};
use crate::relay::{relay, End};
use crate::runtime::{Service, Shared};

pub async fn accept_loop(listener: TcpListener, slot: Arc<ArcSwap<Service>>, shared: Arc<Shared>) {
    let mut stop = shared.stop.clone();
    // The port is the listener's; the exact local address is asked per connection only when
    // a PROXY header needs it (a wildcard listener's address differs per connection).
    let Ok(bound) = listener.local_addr() else { return };
    loop {
        let accepted = tokio::select! {
            biased;
            _ = stop.changed() => return,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) if shared::health::out_of_resources(&e) => {
                // Possibly EMFILE: connections in the backlog wait; retry shortly.
                crate::pool::local_resource_error("accept");
                shared::warn_every_second!(error = %e, "accept: out of resources, backing off");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            Err(e) => {
                tracing::debug!(error = %e, "accept failed");
                continue;
            }
        };
        let service = slot.load_full();
        let global = shared.global_limit.clone().try_acquire_owned();
        let local = service.limit.clone().try_acquire_owned();
        let permits = match (global, local) {
            (Ok(g), Ok(l)) => Some((g, l)),
            _ => None,
        }
        // Its two sockets, from the pool UDP flows share (their floor kept).
        .and_then(|(g, l)| Some((g, l, connection_fds(&shared)?)));
        let Some(permits) = permits else {
            // Refuse cleanly: close at once rather than let the client hang.
            service.m_refused.increment(1);
            tracing::debug!(service = %service.cfg.name, client = %peer, "connection limit reached, refused");
            drop(stream);
            continue;
        };
        service.m_accepted.increment(1);
        let conn = shared.conn_guard();
        let span = tracing::debug_span!("conn", service = %service.cfg.name, client = %peer);
        shared.workers.spawn_conn(stream, &shared.conns, move |stream| {
            async move {
                let _permits = permits;
                let _conn = conn;
                service.m_active.increment(1.0);
                handle(stream, peer, bound, &service).await;
                service.m_active.decrement(1.0);
            }
            .instrument(span)
        });
    }
}

/// A connection's two descriptors from the pool; when it is full, idle pipes kept for reuse
/// are closed first (a client is worth more than a cached pipe).
fn connection_fds(shared: &Shared) -> Option<Held> {
    let take = || shared.descriptors.take(Side::Streams, FDS_PER_CONNECTION);
    take().or_else(|| {
        #[cfg(target_os = "linux")]
        if crate::splice::PIPES.shed() > 0 {
            return take();
        }
        None
    })
}

async fn handle(mut client: TcpStream, peer: SocketAddr, bound: SocketAddr, service: &Service) {
    let _ = client.set_nodelay(true);
    let port = service.cfg.upstream_port.unwrap_or(bound.port());
    // Bytes read from the client before connecting upstream (the ClientHello or request
    // head, or in plain mode whatever has arrived); they are replayed unchanged.
    let mut first = Vec::new();
    // A plain service that adds no PROXY header passes the client's bytes on as they come:
    // one that starts with a header of its own would reach home as this ingress's word on
    // who the client is (the local proxy, or a server told to trust this address for them,
    // takes it so). Sni and http services read a hello or request head first, which no
    // header is.
    let mut watch = (service.cfg.mode == Mode::Plain && !service.cfg.proxy_protocol).then(SignatureWatch::default);
    let pool = match service.cfg.mode {
        Mode::Plain => {
            // What the client has already sent goes up with the connect's last ACK (below).
            first = take_waiting(&client);
            if let Some(w) = &mut watch {
                if w.completes(&first) {
                    refused_proxy_header(service, peer);
                    return;
                }
            }
            &service.pool
        }
        mode => match peek_route(&mut client, mode, service, &mut first).await {
            Ok(pool) => pool,
            Err(why) => {
                service.m_route_failures[why as usize].increment(1);
                tracing::debug!(client = %peer, reason = why.as_str(), "no route; closing");
                return;
            }
        },
    };
    // Bytes to send the moment the upstream is connected: the peeked name's or the client's
    // waiting ones, or a PROXY header.
    let data_first = !first.is_empty() || service.cfg.proxy_protocol;
    let (mut upstream, path) = match crate::connect::connect(pool, port, data_first, &service.descriptors).await {
        Ok(c) => c,
        Err(e) => {
            service.m_unavailable.increment(1);
            shared::warn_every_second!(service = %service.cfg.name, client = %peer, error = %e, "no path home; closing client");
            return;
        }
    };
    // Asked now: once this side has closed and home's FIN has come (the usual end when the
    // client closes first) the socket is in TIME_WAIT, where getpeername fails.
    let home = upstream.peer_addr().ok().map(|a| a.ip());
    let guard = ActiveGuard::new(path, Kind::Tcp);
    let path = guard.path();
    let load = &path.state.load;
    tracing::debug!(path = %path.name, via = ?upstream.local_addr().ok(), "connected");
    let mut sent_first = 0;
    if data_first {
        // Without a header, `first` is sent as it is (it is not empty then).
        let mut head = Vec::new();
        if service.cfg.proxy_protocol {
            head.reserve(64 + first.len().max(PEEK_CHUNK));
            let local = if bound.ip().is_unspecified() { client.local_addr().unwrap_or(bound) } else { bound };
            write_v2(&mut head, Command::Proxy, Transport::Stream, Some((peer, local)));
        }
        let at = head.len();
        if first.is_empty() {
            // Whatever the client sent during the connect rides in the same segment as the
            // header (and the ACK of the SYN-ACK).
            head.extend_from_slice(&take_waiting(&client));
        } else if head.is_empty() {
            head = first;
        } else {
            head.extend_from_slice(&first);
        }
        sent_first = (head.len() - at) as u64;
        if let Err(e) = send_first(&mut upstream, &head, service.cfg.idle_timeout).await {
            tracing::debug!(error = %e, "the first bytes did not go home; closing");
            return;
        }
        // Back to quick ACKs now that the delayed one has ridden out (`connect::attempt` turned
        // them off): left in delayed-ACK mode, the socket would hold the ACK of a server's
        // first small write, and a server that writes again before it is ACKed (Nagle: a
        // banner, then an answer) would wait ~40 ms for the kernel's delayed-ACK timer.
        let _ = socket2::SockRef::from(&upstream).set_quickack(true);
        load.m_bytes_up.increment(sent_first);
    }
    let watch = watch.filter(|w| !w.decided());
    let (end, totals) =
        relay(&client, &upstream, service.cfg.idle_timeout, (&load.m_bytes_up, &load.m_bytes_down), watch).await;
    // The first bytes (header, peeked hello) went up too, and their retransmissions are in
    // the socket's count.
    record_delivery(path, &upstream, home, totals.up + sent_first);
    match end {
        End::Closed => tracing::debug!(up = totals.up, down = totals.down, "closed"),
        End::Idle => tracing::debug!(up = totals.up, down = totals.down, "idle timeout"),
        End::Error(e) => tracing::debug!(up = totals.up, down = totals.down, error = %e, "ended by error"),
        End::ProxyHeader => refused_proxy_header(service, peer),
    }
}

/// A plain service without PROXY headers met a client whose stream starts with one.
fn refused_proxy_header(service: &Service, peer: SocketAddr) {
    service.m_route_failures[RouteFailure::ProxyHeader as usize].increment(1);
    tracing::debug!(client = %peer, "the client's stream starts with a PROXY header; closed (the service adds none, so home would take it for ours)");
}

/// How much of what went upstream (`sent` bytes) had to be sent again: the path's delivered
/// quality, if `home` (the address the connection reached) is the address the path has now:
/// a connection opened before its name moved says nothing of the new one.
fn record_delivery(path: &crate::pool::Path, upstream: &TcpStream, home: Option<std::net::IpAddr>, sent: u64) {
    if let Some((retrans, wrong)) = crate::relay::delivery(upstream, sent) {
        path.state.m_retrans.increment(u64::from(retrans));
        if home.is_some_and(|ip| path.ip() == Some(ip)) {
            path.quality_sample(wrong);
        }
    }
}

/// Write the first bytes (PROXY header, peeked name) home, bounded like the relay that
/// follows: a home side that takes nothing for `limit` ends the connection. (Usually they fit
/// the fresh socket's send buffer at once; past it, a zero window is never given up on by TCP.)
async fn send_first(upstream: &mut TcpStream, head: &[u8], limit: Duration) -> std::io::Result<()> {
    match tokio::time::timeout(limit, upstream.write_all(head)).await {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "home took none of them for idle_timeout")),
    }
}

/// The bytes the client has sent so far, up to `PEEK_CHUNK`, taken by one non-blocking read
/// (empty if none wait, or on an error or end of stream, which the relay then meets itself).
/// A plain read: tokio's `try_read` would refuse until the reactor has seen the socket
/// readable, which a fresh connection often has not yet. The buffer is this call's own, so
/// it is not kept in the connection's task.
fn take_waiting(client: &TcpStream) -> Vec<u8> {
    let mut buf = [0u8; PEEK_CHUNK];
    match std::io::Read::read(&mut &*socket2::SockRef::from(client), &mut buf) {
        Ok(n) => buf[..n].to_vec(),
        Err(_) => Vec::new(),
    }
}

/// An HTTP head this long has shown whether it starts with a method (`peek::host` waits for
/// at most 32 bytes of one).
const METHOD_CHECKED: usize = 40;

/// Bytes asked for per read while peeking.
const PEEK_CHUNK: usize = 4096;

/// Read until the SNI or Host can be decided, bounded in time and size; pick the pool.
async fn peek_route<'a>(
    client: &mut TcpStream,
    mode: Mode,
    service: &'a Service,
    buf: &mut Vec<u8>,
) -> Result<&'a Arc<Pool>, RouteFailure> {
    let max = service.cfg.peek_max;
    let mut head = peek::HeadScan::default();
    let mut hello = peek::HelloScan::default();
    let mut method_checked = false;
    let read = async {
        loop {
            let parsed = match mode {
                // Parsed once the records read so far can decide it: not walked again after
                // every read of a client that sends its hello a tiny record at a time.
                Mode::Sni if !hello.ready(buf, max) => Err(peek::Error::Incomplete),
                Mode::Sni => peek::sni(buf, max),
                // Once the method has been checked (bytes that cannot start one are refused at
                // once), the head is parsed only when whole: not again after every byte of a
                // client that trickles it.
                _ if method_checked && !head.complete(buf) => Err(peek::Error::Incomplete),
                _ => {
                    method_checked = buf.len() > METHOD_CHECKED;
                    peek::host(buf, max)
                }
            };
            match parsed {
                Ok(name) => return service.router.route(name.as_deref()).ok_or(RouteFailure::NoRoute),
                Err(peek::Error::Incomplete) => {}
                Err(peek::Error::NotTls) => return Err(RouteFailure::NotTls),
                Err(peek::Error::NotHttp) => return Err(RouteFailure::NotHttp),
                Err(peek::Error::TooLong) => return Err(RouteFailure::TooLong),
                Err(peek::Error::Malformed) => return Err(RouteFailure::Malformed),
            }
            if buf.len() >= max {
                return Err(RouteFailure::TooLong);
            }
            // Read straight into the heap buffer: a stack array here would sit in every
            // connection's task, plain ones included, for its whole life.
            let start = buf.len();
            buf.resize(start + PEEK_CHUNK.min(max - start), 0);
            let got = client.read(&mut buf[start..]).await;
            buf.truncate(start + *got.as_ref().unwrap_or(&0));
            match got {
                Ok(0) => return Err(RouteFailure::Closed),
                Ok(_) => {}
                Err(_) => return Err(RouteFailure::ReadError),
            }
        }
    };
    tokio::time::timeout(service.cfg.peek_timeout, read).await.unwrap_or(Err(RouteFailure::Timeout))
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::time::{Duration, Instant};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// The usual end of a connection whose client closes first: this side's FIN, then home's.
    /// Its socket is in TIME_WAIT then and has no peer address any more; the delivery sample
    /// is still taken (by the address the connection reached).
    #[tokio::test]
    async fn a_connection_closed_by_the_client_first_still_gives_a_quality_sample() {
        let mut cfg = crate::pool::tests::pool(&[1], false).cfg.clone();
        cfg.paths[0].target = crate::config::Target::Ip("127.0.0.1".parse().expect("ip"));
        let pool = crate::pool::Pool::new(cfg, None);
        let path = &pool.paths[0];
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let mut upstream = tokio::net::TcpStream::connect(listener.local_addr().expect("addr")).await.expect("connect");
        let home = upstream.peer_addr().ok().map(|a| a.ip());
        let (mut at_home, _) = listener.accept().await.expect("accept");
        upstream.write_all(b"request").await.expect("write");
        upstream.shutdown().await.expect("shutdown");
        let mut got = Vec::new();
        at_home.read_to_end(&mut got).await.expect("home reads");
        drop(at_home);
        assert_eq!(upstream.read(&mut [0u8; 16]).await.expect("read"), 0, "home's FIN");
        let deadline = Instant::now() + Duration::from_secs(2);
        while upstream.peer_addr().is_ok() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(upstream.peer_addr().is_err(), "the socket is past having a peer (TIME_WAIT)");
        for _ in 0..50 {
            path.quality_sample(1.0);
        }
        let before = path.quality_loss();
        super::record_delivery(path, &upstream, home, 7);
        // One clean sample takes ALPHA (2 %) off; the clock alone, microseconds of a 10 s
        // half-life.
        assert!(path.quality_loss() < before * 0.99, "no sample: {before} -> {}", path.quality_loss());
    }

    /// `take_waiting` takes what the client has sent so far: nothing on a fresh connection,
    /// the bytes once the client wrote, and they are gone from the socket after.
    #[tokio::test]
    async fn take_waiting_takes_the_bytes_the_client_sent() {
        let listener = crate::listener::bind_tcp("127.0.0.1:0".parse().expect("addr")).expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut client = std::net::TcpStream::connect(addr).expect("connect");
        let (accepted, _) = listener.accept().await.expect("accept");
        assert!(super::take_waiting(&accepted).is_empty(), "nothing sent yet");
        client.write_all(b"GET / HTTP/1.1\r\n").expect("write");
        let deadline = Instant::now() + Duration::from_secs(5);
        let got = loop {
            let got = super::take_waiting(&accepted);
            if !got.is_empty() {
                break got;
            }
            assert!(Instant::now() < deadline, "the client's bytes never showed");
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        assert_eq!(got, b"GET / HTTP/1.1\r\n");
        assert!(super::take_waiting(&accepted).is_empty(), "taken, not peeked");
    }

    /// A home side that reads nothing: the first bytes give up after the limit instead of
    /// waiting on its zero window for good.
    #[tokio::test(start_paused = true)]
    async fn first_bytes_to_a_home_that_never_reads_give_up_after_the_limit() {
        let home = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
        home.set_recv_buffer_size(4096).expect("rcvbuf");
        home.bind(&"127.0.0.1:0".parse::<std::net::SocketAddr>().expect("addr").into()).expect("bind");
        home.listen(1).expect("listen");
        let addr = home.local_addr().expect("addr").as_socket().expect("inet");
        let mut upstream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (_held, _) = home.accept().expect("accept");
        // More than any send buffer takes (tcp_wmem's largest is 4 MiB by default).
        let head = vec![b'x'; 64 << 20];
        let limit = Duration::from_secs(3600);
        let started = tokio::time::Instant::now();
        let sent = tokio::time::timeout(limit * 2, super::send_first(&mut upstream, &head, limit)).await;
        let err = sent.expect("still waiting past twice the limit").expect_err("a home that reads nothing took it all");
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= limit);
    }
}
