//! The admin listener (the shared hyper server, `shared::admin`): `GET /metrics`
//! (Prometheus text), `GET /status` (one line per path) and `GET /healthz`.

use std::fmt::Write as _;
use std::sync::Arc;

use http::StatusCode;
use shared::admin::{Reply, Routes};
use tokio::net::TcpListener;

use crate::pool::Kind;
use crate::runtime::Shared;

/// Serve until the task is aborted (a reload that moves the listener, or shutdown).
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let status = shared.clone();
    let routes = Routes::new()
        .get("/metrics", || Reply::metrics(crate::metrics::render()))
        .get("/status", move || Reply::text(StatusCode::OK, status_text(&status)))
        .get("/healthz", || Reply::text(StatusCode::OK, "ok\n"));
    shared::admin::serve(listener, routes, std::future::pending()).await;
}

fn status_text(shared: &Shared) -> String {
    let rt = shared.runtime();
    let mut out = String::new();
    for pool in rt.pools.values() {
        let tier = if pool.on_mesh() { "mesh" } else { "wan" };
        let _ = writeln!(out, "pool {} tier={tier} balance={}", pool.name, pool.cfg.balance.as_str());
        for p in &pool.paths {
            let h = p.health_snapshot();
            let _ = writeln!(
                out,
                "  path {:<8} {:<40} {:<4} weight={} factor={:.2} connections={} flows={} rate={}B/s busy={:.2} fail_avg={:.2} latency={}",
                p.name,
                p.ip().map_or_else(|| "-".to_owned(), |ip| ip.to_string()),
                if p.is_up() { "up" } else { "down" },
                p.weight,
                p.factor(),
                p.active(Kind::Tcp),
                p.active(Kind::Udp),
                p.rate(),
                p.busy(),
                h.fail_avg,
                h.latency_avg.map(|l| format!("{:.1}ms", l.as_secs_f64() * 1e3)).unwrap_or_else(|| "-".into()),
            );
        }
    }
    let _ = writeln!(out, "connections {}", shared.open_connections());
    out
}
