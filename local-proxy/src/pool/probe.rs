//! One active check of one upstream: an HTTP GET over the site's own client settings (TLS
//! verification included, but a fresh connection each time), a TCP connect, or a UDP
//! datagram and its reply. Returns the time to the verdict, or why it failed (for the log
//! line that takes an upstream down).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::RangeInclusive;
use std::sync::Arc;
use std::time::Duration;

use http::{header, HeaderValue, Request, Uri};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::Instant;

use crate::http::upstream::{self, error_chain, UpstreamClient};

/// How one upstream is checked.
#[derive(Debug, Clone)]
pub enum Probe {
    /// The client is shared by the site's probes (boxed: it is large).
    Http {
        client: Arc<UpstreamClient>,
        uri: Uri,
        host: HeaderValue,
        status: RangeInclusive<u16>,
    },
    Tcp(SocketAddr),
    Udp {
        addr: SocketAddr,
        send: Arc<[u8]>,
        expect: Option<Arc<[u8]>>,
    },
}

/// Why a check failed.
#[derive(Debug)]
pub struct Failure {
    pub reason: String,
    /// This process was out of descriptors or memory before it could ask: that says nothing
    /// about the upstream (`shared::health::Outcome::Local`).
    pub local: bool,
}

impl From<String> for Failure {
    fn from(reason: String) -> Self {
        Self { reason, local: false }
    }
}

/// A failed socket call, `what` naming it.
fn io_failure(what: &str) -> impl Fn(std::io::Error) -> Failure + '_ {
    move |e| Failure { local: shared::health::out_of_resources(&e), reason: format!("{what}: {e}") }
}

/// Run one check within `timeout`.
pub async fn run(probe: &Probe, timeout: Duration) -> Result<Duration, Failure> {
    let start = Instant::now();
    match tokio::time::timeout(timeout, check(probe)).await {
        Err(_) => Err(format!("no answer within {}", humantime::format_duration(timeout)).into()),
        Ok(Err(e)) => Err(e),
        Ok(Ok(())) => Ok(start.elapsed()),
    }
}

async fn check(probe: &Probe) -> Result<(), Failure> {
    match probe {
        Probe::Http { client, uri, host, status } => {
            let mut req = Request::new(upstream::empty());
            *req.uri_mut() = uri.clone();
            req.headers_mut().insert(header::HOST, host.clone());
            req.headers_mut().insert(header::USER_AGENT, HeaderValue::from_static("local-proxy-health"));
            let resp = client
                .request(req)
                .await
                .map_err(|e| Failure { reason: error_chain(&e), local: shared::health::caused_by_shortage(&e) })?;
            let code = resp.status().as_u16();
            // The body is not read: dropping the response closes the (unpooled) connection.
            if status.contains(&code) {
                Ok(())
            } else {
                Err(format!("status {code}, expected {}-{}", status.start(), status.end()).into())
            }
        }
        Probe::Tcp(addr) => TcpStream::connect(addr).await.map(drop).map_err(io_failure("connect")),
        Probe::Udp { addr, send, expect } => {
            let any: IpAddr = match addr {
                SocketAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
                SocketAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
            };
            let socket = UdpSocket::bind(SocketAddr::new(any, 0)).await.map_err(io_failure("socket"))?;
            // Connected: an ICMP port unreachable comes back as an error on recv.
            socket.connect(addr).await.map_err(io_failure("connect"))?;
            socket.send(send).await.map_err(io_failure("send"))?;
            let mut buf = vec![0u8; 2048];
            let n = socket.recv(&mut buf).await.map_err(io_failure("recv"))?;
            match expect {
                Some(e) if !buf[..n].starts_with(e) => {
                    Err(format!("reply of {n} bytes does not start as expected").into())
                }
                _ => Ok(()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tcp_and_udp_probes_judge_what_the_peer_does() {
        let open = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = open.local_addr().unwrap();
        let t = Duration::from_secs(2);
        assert!(run(&Probe::Tcp(addr), t).await.is_ok());
        drop(open);
        let refused = run(&Probe::Tcp(addr), t).await.unwrap_err();
        assert!(refused.reason.contains("connect") && !refused.local, "{refused:?}");

        let echo = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let uaddr = echo.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; 64];
            while let Ok((n, from)) = echo.recv_from(&mut buf).await {
                let reply = if &buf[..n] == b"ping" { &b"pong!"[..] } else { &b"what"[..] };
                let _ = echo.send_to(reply, from).await;
            }
        });
        let udp = |send: &[u8], expect: Option<&[u8]>| Probe::Udp {
            addr: uaddr,
            send: Arc::from(send),
            expect: expect.map(Arc::from),
        };
        assert!(run(&udp(b"ping", Some(b"pong")), t).await.is_ok());
        assert!(run(&udp(b"other", None), t).await.is_ok(), "any reply passes without expect");
        assert!(run(&udp(b"other", Some(b"pong")), t).await.is_err());
        // Nobody on the port: ICMP unreachable (refused) or silence, both fail.
        let closed = UdpSocket::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
        let dead = Probe::Udp { addr: closed, send: Arc::from(&b"ping"[..]), expect: None };
        assert!(run(&dead, Duration::from_millis(300)).await.is_err());
    }

    /// A probe that cannot even open its socket (this process is out of descriptors) fails as
    /// `local`, which changes no upstream's health. The soft open-files limit is lowered to a
    /// few above what is open (prlimit, util-linux), those few used up, and the limit put back.
    #[tokio::test]
    async fn a_probe_without_descriptors_is_a_local_failure() {
        let open = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = open.local_addr().unwrap();
        let Some(taken) = test_support::DescriptorsTaken::all_but(0) else { return };
        let failed = run(&Probe::Tcp(addr), Duration::from_secs(2)).await;
        let udp = Probe::Udp { addr, send: Arc::from(&b"x"[..]), expect: None };
        let failed_udp = run(&udp, Duration::from_secs(2)).await;
        drop(taken);
        let failed = failed.unwrap_err();
        assert!(failed.local, "{failed:?}");
        assert!(failed_udp.unwrap_err().local);
        assert!(run(&Probe::Tcp(addr), Duration::from_secs(2)).await.is_ok(), "descriptors back: it passes");
    }
}
