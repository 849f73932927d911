//! The admin listener (the shared hyper server, `shared::admin`): `/metrics` (Prometheus
//! text) and `/healthz`.

use std::sync::Arc;

use http::StatusCode;
use shared::admin::{Reply, Routes};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::state::State;

/// Serve the admin endpoints until `stop` (shutdown, or a reload that moves the listener).
pub async fn serve(listener: TcpListener, stop: CancellationToken, state: Arc<State>) {
    let metrics = state.clone();
    let routes =
        Routes::new().get("/metrics", move || Reply::metrics(metrics.metrics.render())).get("/healthz", move || {
            match state.health() {
                Ok(()) => Reply::text(StatusCode::OK, "ok\n"),
                Err(why) => Reply::text(StatusCode::SERVICE_UNAVAILABLE, format!("unhealthy: {why}\n")),
            }
        });
    shared::admin::serve(listener, routes, stop.cancelled_owned()).await;
}
