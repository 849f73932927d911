//! Accept loops for TCP listeners. The loop only takes a connection permit, accepts, drops
//! untrusted peers and hands the connection to an event loop (`shared::workers`): the PROXY
//! read, TLS handshake and everything slow happen in the connection's own task there, each
//! under its own timeout.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, TryAcquireError};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info_span, warn, Instrument};

use crate::admission::{admit, mesh_ingress, peer_allowed};
use crate::http::{self, Conn, Proto};
use crate::listeners::{label, Origin, Role};
use crate::metrics::names;
use crate::state::State;
use crate::{stream, tls};

/// Accept on `listener` until `stop` (a child of shutdown; a reload that removes the listener
/// cancels it). What it serves is read per connection, so a reload can retarget it.
pub async fn accept_loop(
    listener: TcpListener,
    origin: Origin,
    role: Arc<ArcSwap<Role>>,
    stop: CancellationToken,
    state: Arc<State>,
    tracker: TaskTracker,
) {
    // Present from the start at 0, so an alert on its increase sees the first wait too.
    metrics::counter!(names::CONNECTION_LIMIT, "listener" => label(origin, &role.load())).increment(0);
    if let Role::Stream(name) = &**role.load() {
        metrics::counter!(names::STREAM_PROXY_HEADERS, "stream" => name.clone()).increment(0);
    }
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.cancelled() => return,
        };
        let role = role.load_full();
        let listener_label = label(origin, &role);
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Possibly EMFILE/ENFILE: back off briefly instead of spinning, keep accepting.
                metrics::counter!(names::ACCEPT_ERRORS, "listener" => listener_label).increment(1);
                warn!(listener = listener_label, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if !peer_allowed(origin, peer, &state.trusted) {
            metrics::counter!(names::CONNECTIONS, "listener" => listener_label, "result" => "untrusted").increment(1);
            debug!(listener = listener_label, %peer, "refused: not a trusted ingress");
            continue;
        }
        // A direct mesh client (anyone on the public mesh) first takes a slot of the mesh's
        // own budget, or is closed at once: waiting here would hold up the ingress nodes'
        // mesh tier on this listener, and taking the shared slots the WAN side needs.
        let mesh_slot = if origin == Origin::Mesh && !mesh_ingress(peer.ip(), &state.config.load().mesh.trusted_ingress)
        {
            match state.mesh_conn_limit.clone().try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(TryAcquireError::Closed) => return,
                Err(TryAcquireError::NoPermits) => {
                    metrics::counter!(names::CONNECTIONS, "listener" => listener_label, "result" => "mesh_limit")
                        .increment(1);
                    debug!(listener = listener_label, %peer, "mesh.max_connections reached; closed");
                    continue;
                }
            }
        } else {
            None
        };
        // The slot is taken with a connection in hand, not before accepting: a loop idle in
        // `accept` would hold one that a busier listener's clients wait for (every listener
        // shares the limit). So each loop may hold one connection over the limit while it
        // waits, and the rest wait in the listen backlog.
        let permit = match state.conn_limit.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(TryAcquireError::Closed) => return,
            Err(TryAcquireError::NoPermits) => {
                // Counted: it can be one kind of client (mesh peers skip the trust check) that
                // holds them all.
                metrics::counter!(names::CONNECTION_LIMIT, "listener" => listener_label).increment(1);
                debug!(listener = listener_label, "http.max_connections reached; waiting for a connection to end");
                let permit = tokio::select! {
                    p = state.conn_limit.clone().acquire_owned() => p,
                    _ = stop.cancelled() => return,
                };
                let Ok(permit) = permit else { return };
                permit
            }
        };
        let span = info_span!("conn", listener = listener_label, %peer, client = tracing::field::Empty);
        // On the event loop with the fewest connections, for its whole life (`shared::workers`).
        let conn_state = state.clone();
        state.workers.spawn_conn(stream, &tracker, move |stream| {
            connection(stream, origin, role, listener_label, conn_state, (permit, mesh_slot)).instrument(span)
        });
    }
}

/// A client connection's place under `http.max_connections` (and a mesh client's under
/// `mesh.max_connections`) and in the active-connections
/// gauge, for as long as its task lives, however it ends (an upgraded connection's tunnel
/// runs in that task too: [`Conn::set_tunnel`]).
#[derive(Debug)]
struct Slot {
    _permits: (OwnedSemaphorePermit, Option<OwnedSemaphorePermit>),
    listener: &'static str,
}

impl Slot {
    fn new(permits: (OwnedSemaphorePermit, Option<OwnedSemaphorePermit>), listener: &'static str) -> Self {
        metrics::gauge!(names::CONNECTIONS_ACTIVE, "listener" => listener).increment(1.0);
        Self { _permits: permits, listener }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        metrics::gauge!(names::CONNECTIONS_ACTIVE, "listener" => self.listener).decrement(1.0);
    }
}

async fn connection(
    mut stream: TcpStream,
    origin: Origin,
    role: Arc<Role>,
    listener: &'static str,
    state: Arc<State>,
    permits: (OwnedSemaphorePermit, Option<OwnedSemaphorePermit>),
) {
    let _slot = Slot::new(permits, listener);
    // hyper and rustls write whole messages; with Nagle on, a small write that follows one
    // still unacknowledged (h2: the response after the SETTINGS frame) waits for the client's
    // delayed ACK, ~40 ms (bench/tls). nginx, HAProxy and Go servers set it too.
    let _ = stream.set_nodelay(true);
    let (peer, local) = match (stream.peer_addr(), stream.local_addr()) {
        (Ok(p), Ok(l)) => (p, l),
        // The peer already left.
        _ => return,
    };
    let config = state.config.load_full();
    let header_timeout = config.wan.proxy_header_timeout;
    let info =
        match admit(&mut stream, origin, peer, local, &state.trusted, &config.mesh.trusted_ingress, header_timeout)
            .await
        {
            Ok(info) => info,
            Err(refused) => {
                metrics::counter!(names::CONNECTIONS, "listener" => listener, "result" => refused.result())
                    .increment(1);
                debug!(reason = %refused, "refused");
                return;
            }
        };
    tracing::Span::current().record("client", tracing::field::display(info.client));
    let result = if info.health_check { "health_check" } else { "accepted" };
    metrics::counter!(names::CONNECTIONS, "listener" => listener, "result" => result).increment(1);

    match &*role {
        Role::Https => {
            if info.health_check && state.health().is_err() {
                // Closing at once tells a LOCAL-header probe that we cannot serve.
                metrics::counter!(names::CONNECTIONS, "listener" => listener, "result" => "unhealthy").increment(1);
                return;
            }
            let tls =
                match tls::accept(stream, state.tls.clone(), &state.certs, config.http.tls_handshake_timeout).await {
                    Ok(tls) => tls,
                    Err(e) => {
                        metrics::counter!(names::TLS_HANDSHAKES, "listener" => listener, "result" => e.result())
                            .increment(1);
                        debug!(error = %e, "TLS handshake refused");
                        return;
                    }
                };
            metrics::counter!(names::TLS_HANDSHAKES, "listener" => listener, "result" => "ok").increment(1);
            let proto = match tls.get_ref().1.alpn_protocol() {
                Some(b"h2") => Proto::H2,
                _ => Proto::Http1,
            };
            let tls_info = Some(crate::http::TlsInfo::of(tls.get_ref().1));
            http::serve_then_tunnel(tls, proto, Conn::new(info, true, tls_info, listener, state.clone())).await;
        }
        Role::Http => {
            http::serve_then_tunnel(stream, Proto::Http1, Conn::new(info, false, None, listener, state.clone())).await;
        }
        Role::Stream(name) => {
            if info.health_check {
                // A LOCAL-header probe only checks that the path reaches us.
                return;
            }
            // Loaded now: a reload may have come while the PROXY header was awaited. The
            // stream's settings come with its pool, from one generation (`Pools::config`).
            let pools = state.pools.load_full();
            let Some(cfg) = pools.config().streams.iter().find(|s| &s.name == name) else {
                debug!(stream = %name, "stream no longer configured; closing");
                return;
            };
            let Some(pool) = pools.stream(name) else {
                debug!(stream = %name, "stream has no pool yet; closing");
                return;
            };
            let log = state.stream_logs.load().get(name);
            // Boxed: inline, its state sized every connection's task, HTTP ones too (16,336
            // bytes, 12,056 boxed; resident only where written, so idle RSS did not change).
            Box::pin(stream::tcp::forward(stream, info, local, cfg, pool, log)).await;
        }
    }
}
