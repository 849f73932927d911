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

/// How long a PROXY v2 LOCAL probe waits for the local proxy to close the connection (its
/// "cannot serve"): that close comes a round trip after the header left, so two round trips
/// of the path (`rtt`) plus 50 ms, at least 100 ms, at most 2 s. The wait comes after the
/// probe's timeout, which bounds the connect alone: a fixed 100 ms, or one cut to what the
/// timeout left, missed the close on a path slower than that (a far ingress, an LTE backup,
/// the mesh), and a home that cannot serve passed for healthy.
fn close_grace(rtt: Duration) -> Duration {
    (rtt * 2 + Duration::from_millis(50)).clamp(Duration::from_millis(100), Duration::from_secs(2))
}

/// Run one active check against `addr`; the connect is raced by a second one after
/// `hedge_after` (see `connect_hedged`). `usual_rtt`: the path's usual connect latency, when
/// known (a probe's own connect may have been quicker than the path's round trip is now).
pub async fn probe(
    addr: SocketAddr,
    kind: &CheckKind,
    timeout: Duration,
    hedge_after: Duration,
    usual_rtt: Option<Duration>,
) -> Outcome {
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
                // a close within the grace period (below, past the timeout) is a failure.
                let mut hdr = Vec::with_capacity(16);
                write_v2(&mut hdr, Command::Local, Transport::Unspec, None);
                s.write_all(&hdr).await.ok()?;
                return Some(Ok((latency, Some(s))));
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
        Some(Ok((latency, None)))
    })
    .await;
    match result {
        Ok(Some(Ok((latency, None)))) => Outcome::Ok { latency },
        Ok(Some(Ok((latency, Some(mut s))))) => {
            let grace = close_grace(latency.max(usual_rtt.unwrap_or_default()));
            let mut one = [0u8; 1];
            match tokio::time::timeout(grace, s.read(&mut one)).await {
                Err(_) | Ok(Ok(1..)) => Outcome::Ok { latency },
                Ok(Ok(0)) | Ok(Err(_)) => Outcome::Failed,
            }
        }
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
        assert!(matches!(probe(a, &CheckKind::Tcp, t, H, None).await, Outcome::Ok { .. }));
        assert!(matches!(probe(a, &CheckKind::ProxyV2Local, t, H, None).await, Outcome::Ok { .. }));
        assert_eq!(probe(b, &CheckKind::ProxyV2Local, t, H, None).await, Outcome::Failed);
        let http_check = CheckKind::Http { path: "/healthz".into(), host: "h".into() };
        assert!(matches!(probe(h, &http_check, t, H, None).await, Outcome::Ok { .. }));
        assert_eq!(probe(h, &http_check, t, H, None).await, Outcome::Failed);
        let refused: std::net::SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert_eq!(probe(refused, &CheckKind::Tcp, t, H, None).await, Outcome::Failed);
    }

    /// A local proxy that cannot serve closes a LOCAL probe a round trip after the header
    /// left: on a path of 150 ms (played here by a close 150 ms after the header is read),
    /// the probe waits for it and fails; one that stays open passes.
    #[tokio::test]
    async fn a_proxy_v2_probe_waits_a_slow_paths_round_trip_for_the_close() {
        use tokio::net::TcpListener;
        let rtt = Duration::from_millis(150);
        let closing = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let open = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (c, o) = (closing.local_addr().unwrap(), open.local_addr().unwrap());
        tokio::spawn(async move {
            loop {
                let (mut s, _) = closing.accept().await.unwrap();
                tokio::spawn(async move {
                    let _ = s.read(&mut [0u8; 16]).await;
                    tokio::time::sleep(rtt).await;
                    drop(s);
                });
            }
        });
        tokio::spawn(async move {
            let mut keep = Vec::new();
            loop {
                keep.push(open.accept().await.unwrap().0);
            }
        });
        // A timeout shorter than the close's round trip (it bounds the connect alone).
        let t = Duration::from_millis(200);
        assert_eq!(probe(c, &CheckKind::ProxyV2Local, t, H, Some(rtt)).await, Outcome::Failed);
        assert!(matches!(probe(o, &CheckKind::ProxyV2Local, t, H, Some(rtt)).await, Outcome::Ok { .. }));
    }

    #[test]
    fn the_close_grace_is_two_round_trips() {
        let ms = Duration::from_millis;
        assert_eq!(close_grace(ms(1)), ms(100), "at least 100 ms");
        assert_eq!(close_grace(ms(150)), ms(350));
        assert_eq!(close_grace(ms(5000)), ms(2000), "at most 2 s");
    }
}
