//! Moving bytes between client and upstream: both directions at once, half-close passed
//! on, an idle timeout over both, bytes counted per path. `splice(2)` on Linux, a
//! buffered copy elsewhere.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::pool::{ByteMeter, NEVER_BUSY};
use tokio::io::Interest;
use tokio::net::TcpStream;

/// Why a relay ended.
#[derive(Debug)]
pub enum End {
    /// Both sides closed their sending halves.
    Closed,
    /// Nothing moved either way for the idle timeout.
    Idle,
    /// A socket error (reset, broken pipe): both sides are closed.
    Error(io::Error),
}

/// Bytes moved, client→upstream and upstream→client.
#[derive(Debug, Default, Clone, Copy)]
pub struct Totals {
    pub up: u64,
    pub down: u64,
}

/// What both directions share: the idle clock (`shared::idle`), and the mark that counts
/// the connection busy for the bandwidth policy.
struct Activity {
    idle: shared::idle::Activity,
    busy_mark: AtomicU64,
}

impl Activity {
    fn touch(&self, bytes: &ByteMeter) {
        self.idle.touch();
        bytes.mark_busy(&self.busy_mark);
    }
}

/// Relay until both directions finish, an error, or `idle` passes with no traffic.
pub async fn relay(
    client: &TcpStream,
    upstream: &TcpStream,
    idle: Duration,
    up_bytes: &ByteMeter,
    down_bytes: &ByteMeter,
) -> (End, Totals) {
    let activity = Activity { idle: shared::idle::Activity::new(), busy_mark: AtomicU64::new(NEVER_BUSY) };
    let up_total = AtomicU64::new(0);
    let down_total = AtomicU64::new(0);
    let both = async {
        tokio::try_join!(
            one_way(client, upstream, &activity, up_bytes, &up_total),
            one_way(upstream, client, &activity, down_bytes, &down_total),
        )
    };
    let watchdog = activity.idle.idle_for(idle);
    let end = tokio::select! {
        r = both => match r {
            Ok(_) => End::Closed,
            Err(e) => End::Error(e),
        },
        _ = watchdog => End::Idle,
    };
    let totals = Totals { up: up_total.load(Ordering::Relaxed), down: down_total.load(Ordering::Relaxed) };
    (end, totals)
}

/// After a relay: the segments the ingress had to send again on `upstream` (`TCP_INFO`) and
/// their share of the segments it sent (data segments estimated from the `sent` bytes and
/// the segment size, plus the SYN and the FIN), as a quality sample of the path. None where
/// the kernel does not tell.
pub fn delivery(upstream: &TcpStream, sent: u64) -> Option<(u32, f64)> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsFd;
        let s = crate::splice::tcp_stats(upstream.as_fd())?;
        let segments = sent.div_ceil(u64::from(s.snd_mss.max(1))) + 2;
        Some((s.total_retrans, (f64::from(s.total_retrans) / segments as f64).min(1.0)))
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (upstream, sent);
        None
    }
}

fn shutdown_write(s: &TcpStream) {
    // The peer may already be gone; nothing to do about that here.
    let _ = socket2::SockRef::from(s).shutdown(std::net::Shutdown::Write);
}

#[cfg(target_os = "linux")]
async fn one_way(
    from: &TcpStream,
    to: &TcpStream,
    activity: &Activity,
    bytes: &ByteMeter,
    total: &AtomicU64,
) -> io::Result<()> {
    use crate::splice::{pipe_to_socket, socket_to_pipe, CHUNK, PIPES};
    use std::os::fd::AsFd;

    let (from_fd, to_fd) = (from.as_fd(), to.as_fd());
    loop {
        from.readable().await?;
        // Take a pipe only now that data waits; give it back as soon as it is empty and the
        // source has nothing more, so idle connections hold none.
        let pipe = match PIPES.take() {
            Ok(p) => p,
            // Out of pipes (the descriptor budget's share, or the process's limit): this
            // chunk goes through user space instead of failing the connection.
            Err(e) if crate::listener::is_resource_exhaustion(&e) => {
                let mut buf = vec![0u8; FALLBACK_CHUNK];
                match copy_chunk(from, to, &mut buf, activity, bytes, total).await? {
                    Copied::Eof => return Ok(()),
                    Copied::Bytes | Copied::Nothing => continue,
                }
            }
            Err(e) => return Err(e),
        };
        loop {
            let filled = match from.try_io(Interest::READABLE, || socket_to_pipe(from_fd, &pipe, CHUNK)) {
                Ok(0) => {
                    PIPES.give_back(pipe);
                    shutdown_write(to);
                    return Ok(());
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            };
            let mut left = filled;
            while left > 0 {
                to.writable().await?;
                match to.try_io(Interest::WRITABLE, || pipe_to_socket(&pipe, to_fd, left)) {
                    Ok(n) => left -= n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    // The pipe still holds data: it is dropped with this error, not pooled.
                    Err(e) => return Err(e),
                }
            }
            bytes.increment(filled as u64);
            total.fetch_add(filled as u64, Ordering::Relaxed);
            activity.touch(bytes);
        }
        PIPES.give_back(pipe);
    }
}

#[cfg(not(target_os = "linux"))]
async fn one_way(
    from: &TcpStream,
    to: &TcpStream,
    activity: &Activity,
    bytes: &ByteMeter,
    total: &AtomicU64,
) -> io::Result<()> {
    let mut buf = vec![0u8; FALLBACK_CHUNK];
    loop {
        from.readable().await?;
        if let Copied::Eof = copy_chunk(from, to, &mut buf, activity, bytes, total).await? {
            return Ok(());
        }
    }
}

/// Bytes per read when copying through user space.
const FALLBACK_CHUNK: usize = 32 * 1024;

enum Copied {
    Bytes,
    Nothing,
    Eof,
}

/// One read from `from` (which was readable) written wholly to `to`, through `buf`. At end
/// of stream the half-close is passed on.
async fn copy_chunk(
    from: &TcpStream,
    to: &TcpStream,
    buf: &mut [u8],
    activity: &Activity,
    bytes: &ByteMeter,
    total: &AtomicU64,
) -> io::Result<Copied> {
    let n = match from.try_read(buf) {
        Ok(0) => {
            shutdown_write(to);
            return Ok(Copied::Eof);
        }
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Copied::Nothing),
        Err(e) => return Err(e),
    };
    let mut off = 0;
    while off < n {
        to.writable().await?;
        match to.try_write(&buf[off..n]) {
            Ok(w) => off += w,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    bytes.increment(n as u64);
    total.fetch_add(n as u64, Ordering::Relaxed);
    activity.touch(bytes);
    Ok(Copied::Bytes)
}
