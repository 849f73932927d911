//! The admin listener: `/metrics` (Prometheus text) and `/healthz`, plain HTTP/1.1.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::warn;

use crate::http::body::Body;
use crate::http::{handler, pages};
use crate::state::State;

/// Serve the admin endpoints until `stop` (shutdown, or a reload that moves the listener).
pub async fn serve(listener: TcpListener, stop: CancellationToken, state: Arc<State>, tracker: TaskTracker) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.cancelled() => return,
        };
        let stream = match accepted {
            Ok((s, _)) => s,
            Err(e) => {
                warn!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let state = state.clone();
        tracker.spawn(async move {
            let svc = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(respond(req, &state)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn respond(req: Request<Incoming>, state: &State) -> Response<Body> {
    match req.uri().path() {
        "/metrics" => {
            let mut resp = pages::text(StatusCode::OK, state.metrics.render());
            resp.headers_mut()
                .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("text/plain; version=0.0.4"));
            resp
        }
        "/healthz" => handler::health(state),
        _ => pages::not_found("Try /metrics or /healthz."),
    }
}
