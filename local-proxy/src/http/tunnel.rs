//! Upgraded connections (WebSocket and any other `Upgrade:`): once both the client and the
//! upstream have switched protocols, bytes are copied both ways until both sides close or
//! nothing moves for the idle timeout; what moved is then reported to the access log line,
//! which waits for it (status 101, the tunnel's bytes, the duration to the close).

use std::time::Duration;

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tracing::debug;

use super::access::{TunnelDone, TunnelEnd};
use crate::idle::{Activity, Tracked};
use crate::metrics::names;
use crate::pool::Active;

/// Copy bytes both ways between the upgraded client and upstream connections, then send
/// what moved on `ended` (dropped unsent when the upgrade never completed: the line says 0).
/// `_held` keeps the request counted as active on its upstream until the end. Run in the
/// client connection's task once HTTP has let it go (`Conn::set_tunnel`).
pub async fn splice(
    client: OnUpgrade,
    upstream: OnUpgrade,
    site: String,
    idle: Duration,
    _held: Active,
    ended: TunnelDone,
) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(pair) => pair,
        Err(e) => {
            debug!(site = %site, error = %e, "upgrade did not complete");
            metrics::counter!(names::UPGRADES, "site" => site, "result" => "failed").increment(1);
            return;
        }
    };
    metrics::counter!(names::UPGRADES, "site" => site.clone(), "result" => "ok").increment(1);
    let activity = Activity::new();
    // Both sides count what they read: the client's reads are its bytes in, the upstream's
    // are what is relayed to the client (copied on as they come).
    let mut client = Tracked::new(TokioIo::new(client), activity.clone());
    let mut upstream = Tracked::new(TokioIo::new(upstream), activity.clone());
    tokio::select! {
        res = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {
            if let Err(e) = res {
                debug!(site = %site, error = %e, "upgraded connection ended with an error");
            }
        }
        _ = activity.idle_for(idle) => debug!(site = %site, "upgraded connection idle, closed"),
    }
    // Closed (dropped) before the report, so the line's duration covers the whole tunnel.
    let end = TunnelEnd { from_client: client.bytes_read(), to_client: upstream.bytes_read() };
    drop((client, upstream));
    ended.end(end);
}
