//! TCP services: the accept loop (limits checked, then spawn at once; nothing slow runs in
//! the loop) and one task per connection: connect through the pool, then relay.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::{TcpListener, TcpStream};
use tracing::Instrument;

use crate::pool::ActiveGuard;
use crate::relay::{relay, End};
use crate::server::{Service, Shared};

pub async fn accept_loop(listener: TcpListener, slot: Arc<ArcSwap<Service>>, shared: Arc<Shared>) {
    let mut stop = shared.stop.clone();
    loop {
        let accepted = tokio::select! {
            biased;
            _ = stop.changed() => return,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) if crate::listener::is_resource_exhaustion(&e) => {
                // Possibly EMFILE: connections in the backlog wait; retry shortly.
                tracing::warn!(error = %e, "accept: out of resources, backing off");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            Err(e) => {
                tracing::debug!(error = %e, "accept failed");
                continue;
            }
        };
        let service = slot.load_full();
        let global = shared.global_limit.load_full().try_acquire_owned();
        let local = service.limit.as_ref().map(|l| l.clone().try_acquire_owned());
        let permits = match (global, local) {
            (Ok(g), None) => (g, None),
            (Ok(g), Some(Ok(l))) => (g, Some(l)),
            _ => {
                // Refuse cleanly: close at once rather than let the client hang.
                service.m_refused.increment(1);
                tracing::debug!(service = %service.cfg.name, client = %peer, "connection limit reached, refused");
                drop(stream);
                continue;
            }
        };
        service.m_accepted.increment(1);
        let conn = shared.conn_guard();
        let span = tracing::debug_span!("conn", service = %service.cfg.name, client = %peer);
        tokio::spawn(
            async move {
                let _permits = permits;
                let _conn = conn;
                service.m_active.increment(1.0);
                handle(stream, peer, &service).await;
                service.m_active.decrement(1.0);
            }
            .instrument(span),
        );
    }
}

async fn handle(client: TcpStream, peer: SocketAddr, service: &Service) {
    let _ = client.set_nodelay(true);
    let local = match client.local_addr() {
        Ok(a) => a,
        Err(_) => return,
    };
    let port = service.cfg.upstream_port.unwrap_or(local.port());
    let (upstream, path) = match crate::connect::connect(&service.pool, port).await {
        Ok(c) => c,
        Err(e) => {
            service.m_unavailable.increment(1);
            tracing::warn!(service = %service.cfg.name, client = %peer, error = %e, "no path home; closing client");
            return;
        }
    };
    let guard = ActiveGuard::new(path);
    let path = guard.path();
    tracing::debug!(path = %path.name, "connected");
    let (end, totals) =
        relay(&client, &upstream, service.cfg.idle_timeout, &path.state.m_bytes_up, &path.state.m_bytes_down).await;
    match end {
        End::Closed => tracing::debug!(up = totals.up, down = totals.down, "closed"),
        End::Idle => tracing::debug!(up = totals.up, down = totals.down, "idle timeout"),
        End::Error(e) => {
            tracing::debug!(up = totals.up, down = totals.down, error = %e, "ended by error")
        }
    }
}
