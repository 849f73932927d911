//! An HTTP/1 connection's server is built when the client's first bytes arrive, not when the
//! connection is accepted. hyper's HTTP/1 server allocates its 8 KiB write buffer when built
//! and its 8 KiB read buffer at its first read, and keeps both for the connection's life, so
//! every connection opened and not used yet (a browser's preconnect, a client's spare
//! connections) would hold them while idle. nginx waits the same way before it allocates its
//! header buffer.
//!
//! The wait reads nothing: the bytes stay in the kernel (`peek`) or in rustls, and hyper's
//! first read takes the whole request as it would have. (Reading a byte ahead and handing it
//! back would leave hyper's first read one byte short of its buffer's free space, and hyper
//! doubles its buffer for the next read.)

use std::future::Future;
use std::io;

use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

/// A client connection that can wait for its client's first bytes without taking them.
pub trait FirstBytes {
    /// Resolves once the client has sent something (`true`) or closed without a byte (`false`).
    fn arrived(&mut self) -> impl Future<Output = io::Result<bool>> + Send + '_;
}

impl FirstBytes for TcpStream {
    async fn arrived(&mut self) -> io::Result<bool> {
        peeked(self).await
    }
}

impl FirstBytes for TlsStream<TcpStream> {
    async fn arrived(&mut self) -> io::Result<bool> {
        let (tcp, tls) = self.get_mut();
        // Records that came with the handshake's last flight (a TLS 1.3 client may send its
        // request right behind its Finished) are in rustls already, not on the socket.
        match tls.process_new_packets() {
            Ok(state) if state.plaintext_bytes_to_read() == 0 && !state.peer_has_closed() => peeked(tcp).await,
            // Something to read, or a close hyper's first read sees.
            Ok(_) => Ok(true),
            // A bad record: tokio-rustls would report it only once more bytes came.
            Err(e) => Err(io::Error::new(io::ErrorKind::InvalidData, e)),
        }
    }
}

// The TLS handshake hands its stream over boxed (`tls::accept`).
impl<T: FirstBytes + Send> FirstBytes for Box<T> {
    fn arrived(&mut self) -> impl Future<Output = io::Result<bool>> + Send + '_ {
        (**self).arrived()
    }
}

async fn peeked(tcp: &TcpStream) -> io::Result<bool> {
    let mut byte = [0u8; 1];
    Ok(tcp.peek(&mut byte).await? > 0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, server)
    }

    #[tokio::test]
    async fn the_bytes_that_arrived_are_still_there_to_read() {
        let (mut client, mut server) = pair().await;
        let waiting = tokio::spawn(async move {
            let spoke = server.arrived().await.unwrap();
            (spoke, server)
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "nothing sent yet");
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let (spoke, mut server) = waiting.await.unwrap();
        assert!(spoke);
        drop(client);
        let mut all = Vec::new();
        server.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, b"GET / HTTP/1.1\r\n\r\n");
    }

    /// A TLS 1.3 client may send its request in the same flight as its Finished: the handshake
    /// reads both, so the request waits in rustls and the socket is empty. It has arrived.
    #[tokio::test]
    async fn a_request_sent_with_the_tls_finished_has_arrived() {
        use std::io::Write;
        use std::sync::Arc;

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["a.test".to_string()]).unwrap().self_signed(&key).unwrap();
        let server_cfg = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.der().clone()).unwrap();
        let client_cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();

        let (mut sock, server) = pair().await;
        let accepting = tokio::spawn(tokio_rustls::TlsAcceptor::from(Arc::new(server_cfg)).accept(server));
        let mut client = rustls::ClientConnection::new(Arc::new(client_cfg), "a.test".try_into().unwrap()).unwrap();
        // Written before the handshake: rustls sends it right behind its Finished.
        let request = b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n";
        client.writer().write_all(request).unwrap();
        let mut out = Vec::new();
        client.write_tls(&mut out).unwrap();
        sock.write_all(&out).await.unwrap();
        let mut buf = vec![0u8; 16 * 1024];
        while client.is_handshaking() {
            let n = sock.read(&mut buf).await.unwrap();
            assert!(n > 0, "the server closed during the handshake");
            client.read_tls(&mut &buf[..n]).unwrap();
            client.process_new_packets().unwrap();
        }
        let mut out = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut out).unwrap();
        }
        sock.write_all(&out).await.unwrap();

        let mut tls = accepting.await.unwrap().unwrap();
        let arrived = tokio::time::timeout(std::time::Duration::from_secs(2), tls.arrived()).await;
        assert!(matches!(arrived, Ok(Ok(true))), "{arrived:?}");
        let mut got = vec![0u8; request.len()];
        tls.read_exact(&mut got).await.unwrap();
        assert_eq!(got, request);
        drop(sock);
    }

    #[tokio::test]
    async fn a_client_that_leaves_silently_sent_nothing() {
        let (client, mut server) = pair().await;
        drop(client);
        assert!(!server.arrived().await.unwrap());
    }
}
