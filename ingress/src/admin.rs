//! The admin listener: `GET /metrics` (Prometheus text) and `GET /status` (one line per
//! path). A deliberately tiny HTTP/1.0 responder: it serves operators and scrapers only.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::pool::Kind;
use crate::server::Shared;

pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(5), answer(stream, &shared)).await;
        });
    }
}

async fn answer(mut stream: TcpStream, shared: &Shared) -> std::io::Result<()> {
    let mut buf = [0u8; 2048];
    let mut n = 0;
    while !buf[..n].windows(4).any(|w| w == b"\r\n\r\n") && n < buf.len() {
        let r = stream.read(&mut buf[n..]).await?;
        if r == 0 {
            break;
        }
        n += r;
    }
    let head = String::from_utf8_lossy(&buf[..n]);
    let target = head.split_whitespace().nth(1).unwrap_or("/");
    let (status, ctype, body) = match target {
        "/metrics" => ("200 OK", "text/plain; version=0.0.4", crate::metrics::render()),
        "/status" => ("200 OK", "text/plain", status_text(shared)),
        _ => ("404 Not Found", "text/plain", "try /metrics or /status\n".to_owned()),
    };
    let resp = format!(
        "HTTP/1.0 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(resp.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
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
                "  path {:<8} {:<40} {:<4} weight={} factor={:.2} connections={} flows={} rate={}B/s used={:.2} fail_avg={:.2} latency={}",
                p.name,
                p.ip,
                if p.is_up() { "up" } else { "down" },
                p.weight,
                p.factor(),
                p.active(Kind::Tcp),
                p.active(Kind::Udp),
                p.rate(),
                p.utilization(),
                h.fail_avg,
                h.latency_avg.map(|l| format!("{:.1}ms", l.as_secs_f64() * 1e3)).unwrap_or_else(|| "-".into()),
            );
        }
    }
    let _ = writeln!(out, "connections {}", shared.open_connections());
    out
}
