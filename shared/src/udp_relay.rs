//! UDP I/O for flow relays, used by both binaries: sends that never wait (a full send queue
//! drops the datagram, as a router would), a header and a payload in one datagram without a
//! copy, and a reply pump that reads into one buffer per worker thread, so thousands of idle
//! flows own no buffer at all.

use std::cell::RefCell;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::UdpSocket;

use crate::udp_flows::{FlowEntry, FlowTable};

/// Largest UDP payload.
pub const MAX_DATAGRAM: usize = 65_535;

/// Send without waiting and without tokio's readiness bookkeeping (which reports a fresh
/// socket as not yet writable): the kernel says WouldBlock only when the queue is full.
pub fn send_now(sock: &UdpSocket, data: &[u8], to: Option<SocketAddr>) -> io::Result<usize> {
    let s = socket2::SockRef::from(sock);
    match to {
        Some(to) => s.send_to(data, &to.into()),
        None => s.send(data),
    }
}

/// One datagram made of `header` (a PROXY v2 header) and `data`, without copying either.
pub fn send_with_header(sock: &UdpSocket, header: &[u8], data: &[u8]) -> io::Result<usize> {
    let parts = [io::IoSlice::new(header), io::IoSlice::new(data)];
    socket2::SockRef::from(sock).send_vectored(&parts)
}

thread_local! {
    static REPLY_BUF: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; MAX_DATAGRAM].into_boxed_slice());
}

/// Hand every datagram `upstream` receives to `deliver`, forever (the caller aborts the
/// task when the flow ends). The buffer is borrowed only between awaits.
pub async fn pump(upstream: &UdpSocket, mut deliver: impl FnMut(&[u8])) {
    loop {
        if upstream.readable().await.is_err() {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        }
        let refused = REPLY_BUF.with_borrow_mut(|buf| loop {
            match upstream.try_recv(buf) {
                Ok(n) => deliver(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                // ECONNREFUSED from an ICMP port unreachable: the service may come back.
                Err(_) => return true,
            }
        });
        if refused {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// How long a stopping listener's flows must have been silent before they are let go, and the
/// most it waits for that (see [`linger`]). A reply on its way is one round trip to the
/// upstream behind plus its answer's time: a LAN service, or the home over a WAN (an
/// intercontinental round trip is ~150-250 ms), or a resolver that recurses. The quiet time is
/// only spent on a stop that found flows talking.
pub const LINGER_QUIET: Duration = Duration::from_millis(250);
pub const LINGER_MAX: Duration = Duration::from_secs(1);

/// Keep a stopping listener's flows until the replies still on their way have been relayed:
/// until every flow has been silent for [`LINGER_QUIET`], at most [`LINGER_MAX`]. The caller
/// no longer reads the listening socket (a restart hands it to the next process, which opens
/// flows of its own for what arrives next), and only sends replies out of it. Without this, a
/// restart dropped the answer to every datagram relayed just before it.
pub async fn linger<K, V>(table: &FlowTable<K, V>, now_ms: impl Fn() -> u64)
where
    K: Copy + Eq + std::hash::Hash,
    V: FlowEntry,
{
    let quiet = async {
        while let Some(wait) = table.until_quiet(now_ms(), LINGER_QUIET.as_millis() as u64) {
            tokio::time::sleep(Duration::from_millis(wait)).await;
        }
    };
    let _ = tokio::time::timeout(LINGER_MAX, quiet).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    /// A flow whose last activity the test sets, as a reply pump would.
    struct Seen(Arc<AtomicU64>);

    impl FlowEntry for Seen {
        fn last_active(&self) -> u64 {
            self.0.load(Ordering::Relaxed)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn linger_waits_for_replies_on_their_way_and_no_longer() {
        let epoch = tokio::time::Instant::now();
        let now_ms = move || epoch.elapsed().as_millis() as u64;

        // No flows: nothing to wait for.
        let empty: FlowTable<u8, Seen> = FlowTable::new(60_000);
        linger(&empty, now_ms).await;
        assert_eq!(epoch.elapsed(), Duration::ZERO);

        // A datagram relayed at 0 ms; its reply arrives at 60 ms: let go LINGER_QUIET after that.
        let last = Arc::new(AtomicU64::new(0));
        let mut table = FlowTable::new(60_000);
        table.insert(1u8, Seen(last.clone()), 0);
        let reply = {
            let last = last.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(60)).await;
                last.store(now_ms(), Ordering::Relaxed);
            })
        };
        linger(&table, now_ms).await;
        assert_eq!(epoch.elapsed(), Duration::from_millis(60) + LINGER_QUIET);
        reply.await.unwrap();

        // A flow that never goes quiet (an upstream streaming on) is let go at LINGER_MAX.
        let start = tokio::time::Instant::now();
        last.store(now_ms(), Ordering::Relaxed);
        let chatty = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(10)).await;
                last.store(now_ms(), Ordering::Relaxed);
            }
        });
        linger(&table, now_ms).await;
        assert_eq!(start.elapsed(), LINGER_MAX);
        chatty.abort();
    }

    #[tokio::test]
    async fn header_and_payload_arrive_as_one_datagram_and_replies_are_pumped() {
        let a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        a.connect(b.local_addr().unwrap()).await.unwrap();
        b.connect(a.local_addr().unwrap()).await.unwrap();
        send_with_header(&a, b"HDR", b"payload").unwrap();
        let mut buf = [0u8; 64];
        let n = b.recv(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"HDRpayload");
        send_now(&b, b"one", None).unwrap();
        send_now(&b, b"two", None).unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let task = tokio::spawn(async move { pump(&a, |d| drop(tx.send(d.to_vec()))).await });
        assert_eq!(rx.recv().await.unwrap(), b"one");
        assert_eq!(rx.recv().await.unwrap(), b"two");
        task.abort();
    }
}
