//! UDP I/O for flow relays, used by both binaries: sends that never wait (a full send queue
//! drops the datagram, as a router would), a header and a payload in one datagram without a
//! copy, and a reply pump that reads into one buffer per worker thread, so thousands of idle
//! flows own no buffer at all.

use std::cell::RefCell;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::UdpSocket;

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

#[cfg(test)]
mod tests {
    use super::*;

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
