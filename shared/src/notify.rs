//! systemd service notifications: the `sd_notify(3)` datagram protocol, without libsystemd.
//!
//! Under `Type=notify` systemd passes a unix datagram socket in `NOTIFY_SOCKET` and waits for
//! `READY=1` before it calls the unit started (so units ordered after it, and `systemctl start`,
//! wait until every listener is bound). Around a `SIGHUP` reload the binaries send
//! `RELOADING=1` with `MONOTONIC_USEC` (the form systemd ≥ 253 requires for `Type=notify-reload`;
//! earlier versions accept it) and `READY=1` when the new configuration is in place or refused;
//! `STOPPING=1` when a drain starts. Outside systemd (no `NOTIFY_SOCKET`) every call is a no-op,
//! so the binaries run the same from a shell or the tests.
//!
//! [`store_fd`] and [`remove_fd`] keep listening sockets in the service's file descriptor store
//! (`FDSTORE=1` with the descriptor attached, `FDSTOREREMOVE=1`): systemd holds them open while
//! the service restarts and passes them back to the next process (`LISTEN_FDS`, `LISTEN_FDNAMES`).

use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::os::fd::BorrowedFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketAddrUnix};

/// The environment variable systemd sets for `Type=notify` services.
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// Every listener is bound: the service is up.
pub fn ready() -> io::Result<bool> {
    notify("READY=1")
}

/// A reload starts; send [`ready`] when it is done (applied or refused), else systemd keeps the
/// unit in the reloading state.
pub fn reloading() -> io::Result<bool> {
    notify(&format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec()))
}

/// The service is draining and will exit.
pub fn stopping() -> io::Result<bool> {
    notify("STOPPING=1")
}

/// Longest a start-up waits for the first health round before it sends [`ready`] anyway: long
/// enough for one round with the default check timeouts (2 s), short enough that a check
/// stuck on an unreachable backend does not hold `systemctl start` for long.
pub const FIRST_ROUND_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Waits until `done()` says every pool has finished its first health round, or `limit`
/// passes (logged). The first connections after READY=1 then see the checks' first answers:
/// a backend that failed its first check already has a reduced share, and is out at once only
/// with `fall = 1` (a fresh backend starts up and needs `fall` failures to go down).
/// Returns whether the round finished. Both binaries call it before [`ready`] at start-up.
pub async fn wait_first_round(done: impl Fn() -> bool, limit: std::time::Duration) -> bool {
    let start = tokio::time::Instant::now();
    while !done() {
        if start.elapsed() >= limit {
            tracing::warn!(waited = ?limit, "first health round not done; ready anyway");
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    true
}

/// Sends `state` to the socket named by `NOTIFY_SOCKET`. `Ok(false)` when the variable is not
/// set (not started by systemd, or not as `Type=notify`): nothing to tell.
pub fn notify(state: &str) -> io::Result<bool> {
    match std::env::var_os(NOTIFY_SOCKET) {
        None => Ok(false),
        Some(target) => {
            let target = target.to_str().ok_or_else(|| invalid("NOTIFY_SOCKET is not valid UTF-8".into()))?;
            notify_to(target, state).map(|()| true)
        }
    }
}

/// Sends `state` as one datagram to `target`: a filesystem path (`/run/systemd/notify`) or an
/// abstract socket name written with a leading `@`, as systemd passes them.
pub fn notify_to(target: &str, state: &str) -> io::Result<()> {
    let addr = if let Some(name) = target.strip_prefix('@') {
        SocketAddr::from_abstract_name(name.as_bytes())?
    } else if target.starts_with('/') {
        SocketAddr::from_pathname(target)?
    } else {
        return Err(invalid(format!("NOTIFY_SOCKET={target:?}: neither a path nor an @abstract name")));
    };
    let sock = UnixDatagram::unbound()?;
    // Never wait for the receiver: the callers run on the async runtime, and a blocking send
    // to a full queue (a manager that stopped reading) parked a worker thread that held the
    // I/O driver, which stalled every listener and the admin API with it (seen in the soak:
    // STATUS= lines every 2 s filled an unread queue after ~330 s). The protocol is
    // best-effort; a message the queue has no room for fails with `WouldBlock` and is logged.
    sock.set_nonblocking(true)?;
    let sent = sock.send_to_addr(state.as_bytes(), &addr)?;
    if sent != state.len() {
        return Err(io::Error::new(io::ErrorKind::WriteZero, "short datagram to NOTIFY_SOCKET"));
    }
    Ok(())
}

/// Puts `fd` in systemd's file descriptor store under `name` (the unit needs
/// `FileDescriptorStoreMax=`): systemd keeps it open across a restart and hands it to the next
/// process in `LISTEN_FDS` with `name` in `LISTEN_FDNAMES`. Storing the same socket again is
/// harmless (systemd keeps one copy). `Ok(false)` outside systemd.
pub fn store_fd(name: &str, fd: BorrowedFd<'_>) -> io::Result<bool> {
    if !fd_name_valid(name) {
        return Err(invalid(format!("{name:?} is not a valid FDNAME")));
    }
    match std::env::var_os(NOTIFY_SOCKET) {
        None => Ok(false),
        Some(target) => {
            let target = target.to_str().ok_or_else(|| invalid("NOTIFY_SOCKET is not valid UTF-8".into()))?;
            send_with_fd(target, &format!("FDSTORE=1\nFDNAME={name}"), fd).map(|()| true)
        }
    }
}

/// Drops every descriptor stored under `name` from systemd's store (a listener a reload closed:
/// kept there, the kernel would go on queueing connections nobody accepts). `Ok(false)` outside
/// systemd.
pub fn remove_fd(name: &str) -> io::Result<bool> {
    if !fd_name_valid(name) {
        return Err(invalid(format!("{name:?} is not a valid FDNAME")));
    }
    notify(&format!("FDSTOREREMOVE=1\nFDNAME={name}"))
}

/// What systemd accepts as a descriptor name: 1 to 255 printable ASCII characters, no `:` (the
/// separator in `LISTEN_FDNAMES`).
pub fn fd_name_valid(name: &str) -> bool {
    (1..=255).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_graphic() && b != b':')
}

/// Like [`notify_to`], with one descriptor attached (`SCM_RIGHTS`).
pub fn send_with_fd(target: &str, state: &str, fd: BorrowedFd<'_>) -> io::Result<()> {
    let addr = if let Some(name) = target.strip_prefix('@') {
        SocketAddrUnix::new_abstract_name(name.as_bytes())?
    } else if target.starts_with('/') {
        SocketAddrUnix::new(target)?
    } else {
        return Err(invalid(format!("NOTIFY_SOCKET={target:?}: neither a path nor an @abstract name")));
    };
    let sock = UnixDatagram::unbound()?;
    let fds = [fd];
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
        return Err(io::Error::other("no room for the descriptor in the control message"));
    }
    // Non-blocking for the same reason as `notify_to`.
    let sent =
        rustix::net::sendmsg_addr(&sock, &addr, &[IoSlice::new(state.as_bytes())], &mut control, SendFlags::DONTWAIT)?;
    if sent != state.len() {
        return Err(io::Error::new(io::ErrorKind::WriteZero, "short datagram to NOTIFY_SOCKET"));
    }
    Ok(())
}

/// CLOCK_MONOTONIC in microseconds: the clock systemd compares `MONOTONIC_USEC` against
/// (`Instant` uses the same clock but does not expose its value).
fn monotonic_usec() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    // Both fields are non-negative for CLOCK_MONOTONIC; saturate rather than wrap if not.
    let secs = u64::try_from(t.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(t.tv_nsec).unwrap_or(0);
    secs.saturating_mul(1_000_000).saturating_add(nanos / 1_000)
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn receive(sock: &UnixDatagram) -> String {
        let mut buf = [0u8; 256];
        let n = sock.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn a_path_socket_receives_the_state() {
        let path = std::env::temp_dir().join(format!("shared-notify-test-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let sock = UnixDatagram::bind(&path).unwrap();
        notify_to(path.to_str().unwrap(), "READY=1").unwrap();
        assert_eq!(receive(&sock), "READY=1");
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn an_abstract_socket_receives_the_state() {
        let name = format!("shared-notify-test-{}", std::process::id());
        let sock = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap()).unwrap();
        notify_to(&format!("@{name}"), "STOPPING=1").unwrap();
        assert_eq!(receive(&sock), "STOPPING=1");
    }

    /// A receiver that never reads: the sends fail with `WouldBlock` once its queue is full
    /// instead of blocking the caller (a runtime worker) until it reads.
    #[test]
    fn a_full_queue_fails_the_send_instead_of_blocking() {
        let name = format!("shared-notify-full-{}", std::process::id());
        let _sock = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap()).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let target = format!("@{name}");
            // The kernel's queue (net.unix.max_dgram_qlen, 512 by default) fills long before.
            let first_failure =
                (0..100_000).find_map(|i| notify_to(&target, "STATUS=busy").err().map(|e| (i, e.kind())));
            let _ = tx.send(first_failure);
        });
        let got = rx.recv_timeout(std::time::Duration::from_secs(30)).expect("a send blocked on the full queue");
        let (sent, kind) = got.expect("100,000 datagrams queued to a reader that never reads");
        assert_eq!(kind, io::ErrorKind::WouldBlock, "after {sent} datagrams");
        assert!(sent > 0, "the first datagram must be queued");
    }

    #[test]
    fn a_relative_target_is_refused_by_name() {
        let e = notify_to("run/notify", "READY=1").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert!(e.to_string().contains("NOTIFY_SOCKET"), "{e}");
    }

    #[test]
    fn a_stored_descriptor_arrives_with_its_name() {
        use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
        use std::os::fd::AsFd;
        let name = format!("shared-notify-fd-{}", std::process::id());
        let sock = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap()).unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        send_with_fd(&format!("@{name}"), "FDSTORE=1\nFDNAME=wan-tcp-127.0.0.1-443", listener.as_fd()).unwrap();
        let mut buf = [0u8; 256];
        let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(2))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        let got = rustix::net::recvmsg(&sock, &mut iov, &mut control, RecvFlags::empty()).unwrap();
        let text = String::from_utf8(buf[..got.bytes].to_vec()).unwrap();
        assert_eq!(text, "FDSTORE=1\nFDNAME=wan-tcp-127.0.0.1-443");
        let mut fds = Vec::new();
        for m in control.drain() {
            if let RecvAncillaryMessage::ScmRights(r) = m {
                fds.extend(r);
            }
        }
        assert_eq!(fds.len(), 1);
        // The received descriptor is the same listening socket.
        let copy = std::net::TcpListener::from(fds.remove(0));
        assert_eq!(copy.local_addr().unwrap(), listener.local_addr().unwrap());
    }

    #[test]
    fn fd_names_follow_systemd_rules() {
        assert!(fd_name_valid("wan-tcp-[2001_db8__2]-443"));
        assert!(!fd_name_valid(""));
        assert!(!fd_name_valid("a:b"));
        assert!(!fd_name_valid("a b"));
        assert!(!fd_name_valid(&"x".repeat(256)));
        // Outside systemd nothing is sent, but a bad name is still refused.
        assert!(remove_fd("a:b").is_err());
    }

    #[test]
    fn monotonic_usec_advances_with_instant() {
        let a = monotonic_usec();
        std::thread::sleep(std::time::Duration::from_millis(5));
        let b = monotonic_usec();
        assert!(b >= a + 5_000, "{a} then {b}");
    }
}
