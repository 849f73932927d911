//! Path health: the active probes (TCP, PROXY v2 LOCAL, HTTP) that feed the sans-io state
//! machine in `shared::health`. Passive outcomes of real connects feed the same state; the
//! selector only reads the published atomics on `Path`.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use shared::proxy_protocol::{write_v2, Command, Transport};

use crate::config::CheckKind;
pub use shared::health::{HealthState, Outcome, Source, Transition};

/// Connect to `addr`; if that has not connected after `hedge_after`, race a second connect
/// (a second SYN) against it: the first to connect wins, a failure waits for the other. On a
/// lossy path one lost SYN or SYN-ACK would otherwise fail the probe (the kernel resends the
/// SYN only after a second), and two such in a row take a working path down; with the race
/// both must be lost. A dead path fails either way, as fast.
async fn connect_hedged(addr: SocketAddr, hedge_after: Duration) -> std::io::Result<TcpStream> {
    let first = TcpStream::connect(addr);
    tokio::pin!(first);
    tokio::select! {
        r = &mut first => return r,
        _ = tokio::time::sleep(hedge_after) => {}
    }
    let second = TcpStream::connect(addr);
    tokio::pin!(second);
    tokio::select! {
        r = &mut first => match r {
            Ok(s) => Ok(s),
            Err(_) => second.await,
        },
        r = &mut second => match r {
            Ok(s) => Ok(s),
            Err(_) => first.await,
        },
    }
}

/// Run one active check against `addr`; the connect is raced by a second one after
/// `hedge_after` (see `connect_hedged`).
pub async fn probe(addr: SocketAddr, kind: &CheckKind, timeout: Duration, hedge_after: Duration) -> Outcome {
    let start = tokio::time::Instant::now();
    let result = tokio::time::timeout(timeout, async {
        let mut s = match connect_hedged(addr, hedge_after).await {
            Ok(s) => s,
            Err(e) if shared::health::out_of_resources(&e) => return Some(Err(())),
            Err(_) => return None,
        };
        let latency = start.elapsed();
        match kind {
            CheckKind::Tcp => {}
            CheckKind::ProxyV2Local => {
                // LOCAL: "a health check, no client behind it". The local proxy keeps such a
                // connection open when it can serve and closes it at once when it cannot, so
                // a close within a short grace period is a failure.
                let mut hdr = Vec::with_capacity(16);
                write_v2(&mut hdr, Command::Local, Transport::Unspec, None);
                s.write_all(&hdr).await.ok()?;
                let grace = (timeout / 4).min(Duration::from_millis(100));
                let mut one = [0u8; 1];
                match tokio::time::timeout(grace, s.read(&mut one)).await {
                    Err(_) | Ok(Ok(1..)) => {}
                    Ok(Ok(0)) | Ok(Err(_)) => return None,
                }
            }
            CheckKind::Http { path, host } => {
                let req = format!(
                    "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: ingress-health\r\nConnection: close\r\n\r\n"
                );
                s.write_all(req.as_bytes()).await.ok()?;
                let mut buf = [0u8; 64];
                let mut n = 0;
                while n < 12 {
                    let r = s.read(&mut buf[n..]).await.ok()?;
                    if r == 0 {
                        break;
                    }
                    n += r;
                }
                let line = std::str::from_utf8(&buf[..n]).ok()?;
                let code = line.strip_prefix("HTTP/1.")?.get(2..5)?;
                if !(code.starts_with('2') || code.starts_with('3')) {
                    return None;
                }
            }
        }
        Some(Ok(latency))
    })
    .await;
    match result {
        Ok(Some(Ok(latency))) => Outcome::Ok { latency },
        Ok(Some(Err(()))) => Outcome::Local,
        _ => Outcome::Failed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: Duration = Duration::from_millis(30);

    #[tokio::test]
    async fn probes_judge_what_the_peer_does() {
        use tokio::net::TcpListener;
        let open = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let closing = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (a, b, h) = (open.local_addr().unwrap(), closing.local_addr().unwrap(), http.local_addr().unwrap());
        tokio::spawn(async move {
            let mut keep = Vec::new();
            loop {
                keep.push(open.accept().await.unwrap().0);
            }
        });
        tokio::spawn(async move {
            loop {
                drop(closing.accept().await.unwrap());
            }
        });
        tokio::spawn(async move {
            let mut n = 0;
            loop {
                let (mut s, _) = http.accept().await.unwrap();
                let mut buf = [0u8; 512];
                let _ = s.read(&mut buf).await;
                n += 1;
                let status = if n == 1 { "200 OK" } else { "503 Unavailable" };
                let _ = s.write_all(format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n").as_bytes()).await;
            }
        });
        let t = Duration::from_millis(400);
        assert!(matches!(probe(a, &CheckKind::Tcp, t, H).await, Outcome::Ok { .. }));
        assert!(matches!(probe(a, &CheckKind::ProxyV2Local, t, H).await, Outcome::Ok { .. }));
        assert_eq!(probe(b, &CheckKind::ProxyV2Local, t, H).await, Outcome::Failed);
        let http_check = CheckKind::Http { path: "/healthz".into(), host: "h".into() };
        assert!(matches!(probe(h, &http_check, t, H).await, Outcome::Ok { .. }));
        assert_eq!(probe(h, &http_check, t, H).await, Outcome::Failed);
        let refused: std::net::SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert_eq!(probe(refused, &CheckKind::Tcp, t, H).await, Outcome::Failed);
    }
}
