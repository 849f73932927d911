//! The admin HTTP server both binaries run on hyper (HTTP/1.1): each registers its own
//! routes (`GET path` → a reply); unknown paths get a 404 naming the routes, other methods
//! a 405. Slow or silent clients are cut by a header timeout; every connection is tracked,
//! so the server ends with its listener.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;

/// What a route answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: StatusCode,
    pub content_type: &'static str,
    pub body: String,
}

impl Reply {
    pub fn text(status: StatusCode, body: impl Into<String>) -> Self {
        Self { status, content_type: "text/plain; charset=utf-8", body: body.into() }
    }

    /// The Prometheus text exposition format.
    pub fn metrics(body: String) -> Self {
        Self { status: StatusCode::OK, content_type: "text/plain; version=0.0.4", body }
    }
}

type Handler = Arc<dyn Fn() -> Reply + Send + Sync>;

/// The routes of one binary's admin listener.
#[derive(Clone, Default)]
pub struct Routes {
    routes: Vec<(&'static str, Handler)>,
}

impl Routes {
    pub fn new() -> Self {
        Self::default()
    }

    /// Answer `GET path` with `handler`.
    pub fn get(mut self, path: &'static str, handler: impl Fn() -> Reply + Send + Sync + 'static) -> Self {
        self.routes.push((path, Arc::new(handler)));
        self
    }

    fn answer(&self, req: &Request<Incoming>) -> Reply {
        let Some((_, handler)) = self.routes.iter().find(|(p, _)| *p == req.uri().path()) else {
            let known: Vec<&str> = self.routes.iter().map(|(p, _)| *p).collect();
            return Reply::text(StatusCode::NOT_FOUND, format!("not found; try {}\n", known.join(", ")));
        };
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return Reply::text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
        }
        handler()
    }
}

/// How long a client may take to send its request head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Serve `routes` on `listener` until `stop` resolves; returns once every connection ended.
pub async fn serve(listener: TcpListener, routes: Routes, stop: impl Future<Output = ()>) {
    let routes = Arc::new(routes);
    let conns = TaskTracker::new();
    tokio::pin!(stop);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = &mut stop => break,
        };
        let stream = match accepted {
            Ok((s, _)) => s,
            Err(e) => {
                // Possibly EMFILE: back off rather than spin.
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let routes = routes.clone();
        conns.spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let reply = routes.answer(&req);
                async move { Ok::<_, Infallible>(into_response(reply)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
    drop(listener);
    conns.close();
    conns.wait().await;
}

fn into_response(reply: Reply) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(reply.body)));
    *resp.status_mut() = reply.status;
    resp.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static(reply.content_type));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

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
            .get("/healthz", || Reply::text(StatusCode::SERVICE_UNAVAILABLE, "unhealthy: no certificate\n"));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(l, routes, async move {
            let _ = rx.await;
        }));
        let close = "Connection: close\r\n\r\n";
        let r = get(addr, &format!("GET /metrics HTTP/1.1\r\nHost: a\r\n{close}")).await;
        assert!(r.starts_with("HTTP/1.1 200") && r.contains("version=0.0.4") && r.ends_with("up 1\n"), "{r}");
        let r = get(addr, &format!("GET /healthz HTTP/1.1\r\nHost: a\r\n{close}")).await;
        assert!(r.starts_with("HTTP/1.1 503") && r.contains("no certificate"), "{r}");
        let r = get(addr, &format!("GET /nope HTTP/1.1\r\nHost: a\r\n{close}")).await;
        assert!(r.starts_with("HTTP/1.1 404") && r.contains("/metrics, /healthz"), "{r}");
        let r = get(addr, &format!("POST /metrics HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n{close}")).await;
        assert!(r.starts_with("HTTP/1.1 405"), "{r}");
        // HTTP/1.0 scrapers still work.
        let r = get(addr, "GET /metrics HTTP/1.0\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.0 200") && r.ends_with("up 1\n"), "{r}");
        let _ = tx.send(());
        tokio::time::timeout(Duration::from_secs(5), server).await.unwrap().unwrap();
    }
}
