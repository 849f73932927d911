//! Moving bytes between client and upstream: both directions at once, half-close passed
//! on, an idle timeout over both, bytes counted per path. Small messages are copied through
//! a per-thread buffer; bulk transfers go through `splice(2)` on Linux.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::pool::{ByteMeter, NEVER_BUSY};
use shared::proxy_protocol::{ClientHeader, SignatureWatch};
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
    /// The client's stream began with a PROXY header, which the watch given to [`relay`]
    /// stopped before home got the whole signature.
    ProxyHeader,
}

/// Bytes moved, client→upstream and upstream→client.
#[derive(Debug, Default, Clone, Copy)]
pub struct Totals {
    pub up: u64,
    pub down: u64,
}

/// What both directions share: the idle clock (`shared::idle`), the mark that counts the
/// connection busy for the bandwidth policy, and whether one direction has ended.
struct Activity {
    idle: shared::idle::Activity,
    busy_mark: AtomicU64,
    one_ended: AtomicBool,
}

impl Activity {
    fn touch(&self, bytes: &ByteMeter, n: u64) {
        self.idle.touch();
        bytes.mark_busy(&self.busy_mark, n);
    }
}

/// Relay until both directions finish, an error, or `idle` passes with no traffic. When
/// both finished, the half-close of the one that finished last is not passed on: the caller
/// closes both sockets as soon as this returns, and `close` sends that FIN (see `finish`).
/// `watch`: the client's bytes still to be screened for a PROXY signature, if the service
/// adds no header of its own (see `SignatureWatch`).
pub async fn relay(
    client: &TcpStream,
    upstream: &TcpStream,
    idle: Duration,
    (up_bytes, down_bytes): (&ByteMeter, &ByteMeter),
    watch: Option<SignatureWatch>,
) -> (End, Totals) {
    let activity = Activity {
        idle: shared::idle::Activity::new(),
        busy_mark: AtomicU64::new(NEVER_BUSY),
        one_ended: AtomicBool::new(false),
    };
    let up_total = AtomicU64::new(0);
    let down_total = AtomicU64::new(0);
    let both = async {
        tokio::try_join!(
            one_way(client, upstream, &activity, (up_bytes, &up_total), watch),
            one_way(upstream, client, &activity, (down_bytes, &down_total), None),
        )
    };
    let watchdog = activity.idle.idle_for(idle);
    let end = tokio::select! {
        r = both => match r {
            Ok(_) => End::Closed,
            Err(e) if ClientHeader::is(&e) => End::ProxyHeader,
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

/// `from` reached its end of stream: pass the half-close on to `to`, unless the other
/// direction has already ended, which ends the relay: its caller then closes both sockets,
/// and `close` sends the FIN as `shutdown` would (both receive queues are empty, having
/// been read to their ends of stream, so it is a FIN, not a reset). One call fewer per
/// connection: HAProxy closes without a `shutdown` too.
fn finish(to: &TcpStream, activity: &Activity) {
    if activity.one_ended.swap(true, Ordering::Relaxed) {
        return;
    }
    // The peer may already be gone; nothing to do about that here.
    let _ = socket2::SockRef::from(to).shutdown(std::net::Shutdown::Write);
}

/// Bytes read per small-message read, into the worker thread's buffer (HAProxy's default
/// buffer size). A read that fills it means more is waiting: a bulk transfer, whose next
/// reads go through a pipe.
const SMALL: usize = 16 * 1024;

/// Whether the rest of a bulk transfer can go through a pipe (`splice(2)`).
const PIPED: bool = cfg!(target_os = "linux");

/// Whether a read that returns less than asked shows the socket drained (`read_draining`).
const DRAINED_BY_SHORT_READ: bool = cfg!(target_os = "linux");

async fn one_way(
    from: &TcpStream,
    to: &TcpStream,
    activity: &Activity,
    (bytes, total): (&ByteMeter, &AtomicU64),
    mut watch: Option<SignatureWatch>,
) -> io::Result<()> {
    let moved = |n: usize| {
        bytes.increment(n as u64);
        total.fetch_add(n as u64, Ordering::Relaxed);
        activity.touch(bytes, n as u64);
    };
    // Small messages (requests, responses, interactive traffic) are read into the worker's
    // buffer and written at once: a read and a write, no pipe and no third call to learn the
    // socket is empty. Once a read fills the buffer, a bulk transfer is under way and what
    // follows is spliced through a pipe until a burst starts small again (HAProxy's
    // splice-auto works alike). Nothing here holds a buffer across an await but the rare
    // tail the destination would not take at once, so an idle connection costs no more.
    let mut bulk = false;
    loop {
        // With ERROR: a reset shows as such, not as a plain end of stream (below).
        let ready = from.ready(Interest::READABLE | Interest::ERROR).await?;
        if !bulk {
            // The peer's FIN had arrived when the readiness was observed, and no reset: a
            // read that empties the socket reaches the end of stream, so the half-close is
            // passed on with the last data instead of after one more read that returns 0
            // (HAProxy does the same with EPOLLRDHUP).
            let fin = ready.is_read_closed() && !ready.is_error();
            // The first reads are small ones (a full one has seen past any signature), so the
            // watch sees every byte of the stream's start.
            match copy_small(from, to, fin, &mut watch)? {
                Small::Eof => {
                    finish(to, activity);
                    return Ok(());
                }
                // An error readiness is never cleared by a read, so with nothing to read it
                // would wake this loop for ever: end with the socket's pending error. (Linux
                // raises EPOLLERR on TCP without EPOLLIN only with IP_RECVERR or an error
                // queue, neither used here; this keeps a surprise from becoming a spin.)
                Small::Nothing if ready.is_error() => {
                    return Err(from.take_error()?.unwrap_or_else(|| io::Error::other("socket error readiness")));
                }
                Small::Nothing => continue,
                Small::Read { read, rest, full, eof } => {
                    moved(read - rest.len());
                    write_all(to, &rest, &moved).await?;
                    if eof {
                        finish(to, activity);
                        return Ok(());
                    }
                    bulk = full && PIPED;
                    if !bulk {
                        continue;
                    }
                }
            }
        }
        match through_pipe(from, to, &moved).await? {
            Piped::Eof => {
                finish(to, activity);
                return Ok(());
            }
            Piped::Drained { big } => bulk = big,
            Piped::NoPipe => bulk = false,
        }
    }
}

/// What one small-message read did.
enum Small {
    /// End of stream.
    Eof,
    /// Nothing was waiting after all.
    Nothing,
    /// `read` bytes read and handed to the destination but for `rest` (empty when it took
    /// everything); `full`: the read filled the buffer, so more is likely waiting; `eof`:
    /// they were the last before the end of stream.
    Read { read: usize, rest: Vec<u8>, full: bool, eof: bool },
}

thread_local! {
    /// Each worker thread's small-message buffer: used only between two awaits, so one per
    /// thread serves all its connections (a buffer per connection would sit idle in every
    /// one of them).
    static BUF: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0; SMALL]);
}

/// One read from `from` (which was readable) through the thread's buffer, written to `to`
/// as far as it takes it without waiting. `fin`: `from`'s peer had sent its FIN before the
/// read (so a read that empties the socket ends the stream). `watch`: see [`relay`]; a read
/// that completes a signature is not passed on.
fn copy_small(from: &TcpStream, to: &TcpStream, fin: bool, watch: &mut Option<SignatureWatch>) -> io::Result<Small> {
    BUF.with_borrow_mut(|buf| {
        let read = match read_draining(from, buf) {
            Ok(0) => return Ok(Small::Eof),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Small::Nothing),
            Err(e) => return Err(e),
        };
        if let Some(w) = watch {
            if w.completes(&buf[..read]) {
                return Err(ClientHeader::error());
            }
            if w.decided() {
                *watch = None;
            }
        }
        let full = read == buf.len();
        let eof = fin && !full && DRAINED_BY_SHORT_READ;
        let mut off = 0;
        while off < read {
            match send_now(to, &buf[off..read], eof) {
                Ok(w) => off += w,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        Ok(Small::Read { read, rest: buf[off..read].to_vec(), full, eof })
    })
}

/// Write to `to` what it takes without waiting. `last`: the end of stream follows at once
/// (`finish`: a `shutdown`, or the caller's `close`), so on Linux the data goes with
/// `MSG_MORE`: the kernel holds the segment, and the FIN that follows rides in it, one
/// segment instead of two (a response and its close, as a server that closes after
/// answering sends them). What `to` does not take now is written without it (`write_all`),
/// which sends what was held.
fn send_now(to: &TcpStream, data: &[u8], last: bool) -> io::Result<usize> {
    #[cfg(target_os = "linux")]
    if last {
        return to.try_io(Interest::WRITABLE, || socket2::SockRef::from(to).send_with_flags(data, libc::MSG_MORE));
    }
    let _ = last;
    to.try_write(data)
}

/// Read what `from` holds into `buf`. A read that returns less than asked has emptied the
/// socket's receive queue (`tcp_recvmsg` copies from every queued segment until the buffer
/// is full), so on Linux it also clears `from`'s read readiness, sparing the read that
/// would only say `EAGAIN`: tokio's own `PollEvented::poll_read` does the same on epoll
/// ("reading a partially full buffer is sufficient to show that the socket buffer has been
/// drained", tokio 1.54 src/io/poll_evented.rs, tokio issue 5866). Returning `WouldBlock`
/// from `try_io`'s closure is how readiness is cleared; it clears only the readiness
/// observed before the read (tokio's readiness tick), so data arriving during or after the
/// read raises a new edge that is not lost. Not for `splice`: a splice into a pipe stops
/// at the pipe's 16 slots, one per queued segment, so a short splice may leave data queued.
fn read_draining(from: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    let mut short = 0;
    let r = from.try_io(Interest::READABLE, || {
        let n = std::io::Read::read(&mut &*socket2::SockRef::from(from), buf)?;
        if DRAINED_BY_SHORT_READ && n > 0 && n < buf.len() {
            short = n;
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    });
    match r {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock && short > 0 => Ok(short),
        r => r,
    }
}

/// Write all of `data` to `to`, waiting for it to take it; `moved` hears of every part taken,
/// so a slow reader that takes it bit by bit is not idle.
async fn write_all(to: &TcpStream, data: &[u8], moved: &impl Fn(usize)) -> io::Result<()> {
    let mut off = 0;
    while off < data.len() {
        to.writable().await?;
        match to.try_write(&data[off..]) {
            Ok(w) => {
                off += w;
                moved(w);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// How a burst through a pipe ended.
enum Piped {
    /// End of stream.
    Eof,
    /// `from` is drained; `big`: the burst began with at least a small-message buffer's
    /// worth, so the next one likely goes through a pipe too.
    Drained { big: bool },
    /// No pipe to be had (the pipe cap, a full descriptor pool, or the process's limit): the
    /// data goes through user space instead of failing the connection.
    NoPipe,
}

/// Splice what waits on `from` to `to` through a pipe, until `from` has nothing more. The
/// pipe is taken only now that data waits and given back once empty, so idle connections
/// hold none.
#[cfg(target_os = "linux")]
async fn through_pipe(from: &TcpStream, to: &TcpStream, moved: &impl Fn(usize)) -> io::Result<Piped> {
    use crate::splice::{pipe_to_socket, socket_to_pipe, CHUNK, PIPES};
    use std::os::fd::AsFd;

    let (from_fd, to_fd) = (from.as_fd(), to.as_fd());
    let pipe = match PIPES.take() {
        Ok(p) => p,
        Err(e) if shared::health::out_of_resources(&e) => {
            // Out of pipes (the budget, or descriptors): this part is copied instead.
            crate::pool::local_resource_error("pipe");
            return Ok(Piped::NoPipe);
        }
        Err(e) => return Err(e),
    };
    let mut first = None;
    loop {
        // Until `EAGAIN`: a short splice does not mean the socket is empty (see
        // `read_draining`).
        let filled = match from.try_io(Interest::READABLE, || socket_to_pipe(from_fd, &pipe, CHUNK)) {
            Ok(0) => {
                PIPES.give_back(pipe);
                return Ok(Piped::Eof);
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        };
        first.get_or_insert(filled);
        let mut left = filled;
        while left > 0 {
            to.writable().await?;
            match to.try_io(Interest::WRITABLE, || pipe_to_socket(&pipe, to_fd, left)) {
                // Counted as it goes: a slow reader may take a pipe's worth over longer
                // than the idle timeout, and is not idle.
                Ok(n) => {
                    left -= n;
                    moved(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                // The pipe still holds data: it is dropped with this error, not pooled.
                Err(e) => return Err(e),
            }
        }
    }
    PIPES.give_back(pipe);
    Ok(Piped::Drained { big: first.is_some_and(|n| n >= SMALL) })
}

/// No pipes here: everything goes through user space.
#[cfg(not(target_os = "linux"))]
async fn through_pipe(_: &TcpStream, _: &TcpStream, _: &impl Fn(usize)) -> io::Result<Piped> {
    Ok(Piped::NoPipe)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpListener};
    use std::sync::mpsc;
    use std::thread;

    /// Test traffic: each round either many small messages or one bulk transfer; contents
    /// vary per byte, so a lost, repeated or reordered chunk shows.
    fn rounds(seed: u32) -> Vec<Vec<Vec<u8>>> {
        let mut x = seed;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x
        };
        (0..12)
            .map(|round| match round % 3 {
                // A bulk transfer puts the relay in its pipe mode; the next round's small
                // messages then arrive while it is in it.
                1 => vec![(0..(1 << 19) + next() % 4096).map(|_| next() as u8).collect()],
                _ => (0..150).map(|_| (0..1 + next() % 200).map(|_| next() as u8).collect()).collect(),
            })
            .collect()
    }

    fn peer(s: &std::net::TcpStream) {
        // Every small message its own segment.
        s.set_nodelay(true).expect("nodelay");
        s.set_read_timeout(Some(Duration::from_secs(10))).expect("read timeout");
        s.set_write_timeout(Some(Duration::from_secs(10))).expect("write timeout");
    }

    /// The client sends rounds of many small messages (each its own write, so they queue
    /// as separate segments) and bulk transfers, each while the relay's thread is held busy
    /// so that the whole round waits queued when the relay next looks, and waits for each
    /// round's echo before the next: a relay that took a socket for drained while data still
    /// waited (a splice stops at the pipe's 16 slots) would strand that data, the echo would
    /// not come, and the round would time out. The client's last round (under 16 KiB) and
    /// its half-close are queued together, so the relay sees the FIN with the data; the
    /// upstream, seeing the end of stream, still sends a tail (over 16 KiB of small
    /// messages) through the half-closed connection and closes, again queued together.
    /// Every byte arrives in order, the relay ends with both sides closed (not by the idle
    /// timeout), and its totals and the path's byte meter count exactly what went each way.
    #[tokio::test]
    async fn small_messages_bulk_and_half_close_arrive_whole_and_counted() {
        let client_side = TcpListener::bind("127.0.0.1:0").expect("bind");
        let upstream_side = TcpListener::bind("127.0.0.1:0").expect("bind");
        let (client_addr, upstream_addr) =
            (client_side.local_addr().expect("addr"), upstream_side.local_addr().expect("addr"));
        let mut sent = rounds(0x9e37_79b9);
        sent.push(rounds(0x2545_f491).swap_remove(0).into_iter().take(40).collect());
        let tail_rounds = rounds(0x85eb_ca6b);
        let tail: Vec<u8> = [&tail_rounds[0], &tail_rounds[2]].into_iter().flatten().flatten().copied().collect();
        assert!(tail.len() > SMALL && sent.last().expect("rounds").concat().len() < SMALL);
        let up_expect: Vec<u8> = sent.iter().flatten().flatten().copied().collect();
        let down_expect: Vec<u8> = [&up_expect[..], &tail[..]].concat();

        // Holds the runtime's one thread (the relay's) for a while on request, so that a
        // round is written and queued before the relay can read any of it.
        let (hold_tx, mut hold_rx) = tokio::sync::mpsc::unbounded_channel::<mpsc::Sender<()>>();
        tokio::spawn(async move {
            while let Some(holding) = hold_rx.recv().await {
                let _ = holding.send(());
                thread::sleep(Duration::from_millis(30));
            }
        });
        let hold = move |tx: &tokio::sync::mpsc::UnboundedSender<mpsc::Sender<()>>| {
            let (holding_tx, holding_rx) = mpsc::channel();
            tx.send(holding_tx).expect("hold the relay");
            holding_rx.recv_timeout(Duration::from_secs(5)).expect("relay held");
        };
        let upstream_hold = hold_tx.clone();
        let client = thread::spawn(move || {
            let s = std::net::TcpStream::connect(client_addr).expect("client connect");
            peer(&s);
            let mut reader = s.try_clone().expect("clone");
            let (tx, rx) = mpsc::channel();
            let got = thread::spawn(move || {
                let (mut got, mut buf) = (Vec::new(), vec![0; 64 << 10]);
                loop {
                    match reader.read(&mut buf) {
                        Ok(0) | Err(_) => return got,
                        Ok(n) => {
                            got.extend_from_slice(&buf[..n]);
                            let _ = tx.send(got.len());
                        }
                    }
                }
            });
            let (mut w, mut want, mut echoed) = (&s, 0, 0);
            for (i, round) in sent.iter().enumerate() {
                hold(&hold_tx);
                for m in round {
                    w.write_all(m).expect("client write");
                    want += m.len();
                }
                if i + 1 == sent.len() {
                    break;
                }
                while echoed < want {
                    match rx.recv_timeout(Duration::from_secs(5)) {
                        Ok(n) => echoed = n,
                        Err(_) => panic!("round {i}: {echoed} of {want} bytes echoed, the rest stranded"),
                    }
                }
            }
            s.shutdown(Shutdown::Write).expect("client half-close");
            got.join().expect("client reader")
        });
        // The upstream echoes until the client's end of stream, then sends the tail, closes.
        let upstream = thread::spawn(move || {
            let (mut s, _) = upstream_side.accept().expect("upstream accept");
            peer(&s);
            let (mut got, mut buf) = (Vec::new(), vec![0; 64 << 10]);
            loop {
                match s.read(&mut buf).expect("upstream read") {
                    0 => break,
                    n => {
                        s.write_all(&buf[..n]).expect("echo");
                        got.extend_from_slice(&buf[..n]);
                    }
                }
            }
            hold(&upstream_hold);
            s.write_all(&tail).expect("tail after the half-close");
            s.shutdown(Shutdown::Write).expect("upstream close");
            got
        });

        client_side.set_nonblocking(true).expect("nonblocking");
        let listener = tokio::net::TcpListener::from_std(client_side).expect("listener");
        let (accepted, _) = listener.accept().await.expect("accept");
        let up = TcpStream::connect(upstream_addr).await.expect("connect upstream");
        let pool = crate::pool::tests::pool(&[1], false);
        let state = &pool.paths[0].state;
        let (end, totals) = tokio::time::timeout(
            Duration::from_secs(60),
            relay(&accepted, &up, Duration::from_secs(3), (&state.load.m_bytes_up, &state.load.m_bytes_down), None),
        )
        .await
        .expect("relay ends");
        drop((accepted, up));
        let client_got = client.join().expect("client");
        let upstream_got = upstream.join().expect("upstream");

        assert!(matches!(end, End::Closed), "relay ended {end:?}, not by both sides closing");
        assert_eq!(upstream_got.len(), up_expect.len(), "bytes client→upstream");
        assert!(upstream_got == up_expect, "client→upstream bytes differ");
        assert_eq!(client_got.len(), down_expect.len(), "bytes upstream→client");
        assert!(client_got == down_expect, "upstream→client bytes differ");
        assert_eq!((totals.up, totals.down), (up_expect.len() as u64, down_expect.len() as u64));
        assert_eq!(pool.paths[0].bytes_total(), (up_expect.len() + down_expect.len()) as u64);
    }

    /// A client that reads a download slower than the relay's writes complete (small socket
    /// buffers, 2 KiB every 100 ms) is moving data, not idle: with a 1 s idle timeout the
    /// relay still runs after 4 s, though a pipe's worth takes it three seconds.
    #[tokio::test]
    async fn a_slow_reader_is_not_idle() {
        let client_side = TcpListener::bind("127.0.0.1:0").expect("bind");
        let upstream_side = TcpListener::bind("127.0.0.1:0").expect("bind");
        let (client_addr, upstream_addr) =
            (client_side.local_addr().expect("addr"), upstream_side.local_addr().expect("addr"));
        let upstream = thread::spawn(move || {
            let (mut s, _) = upstream_side.accept().expect("upstream accept");
            peer(&s);
            // More than the client reads in the test; the write ends when the relay closes.
            let _ = s.write_all(&vec![7u8; 8 << 20]);
        });
        let client = thread::spawn(move || {
            let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
            s.set_recv_buffer_size(4096).expect("small receive buffer");
            s.connect(&client_addr.into()).expect("client connect");
            let mut s = std::net::TcpStream::from(s);
            peer(&s);
            let (start, mut got, mut buf) = (std::time::Instant::now(), 0usize, [0u8; 2048]);
            while start.elapsed() < Duration::from_secs(4) {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => return (got, start.elapsed()),
                    Ok(n) => got += n,
                }
                thread::sleep(Duration::from_millis(100));
            }
            (got, start.elapsed())
        });
        client_side.set_nonblocking(true).expect("nonblocking");
        let listener = tokio::net::TcpListener::from_std(client_side).expect("listener");
        let (accepted, _) = listener.accept().await.expect("accept");
        // A fixed send buffer (no autotuning to megabytes on loopback, where the kernel would
        // wake a writer only once a third of it had drained): writes complete as the client
        // reads.
        socket2::SockRef::from(&accepted).set_send_buffer_size(16 << 10).expect("small send buffer");
        let up = TcpStream::connect(upstream_addr).await.expect("connect upstream");
        let pool = crate::pool::tests::pool(&[1], false);
        let state = &pool.paths[0].state;
        let relayed =
            relay(&accepted, &up, Duration::from_secs(1), (&state.load.m_bytes_up, &state.load.m_bytes_down), None);
        let ended = tokio::time::timeout(Duration::from_secs(5), relayed).await;
        let (got, reading) = tokio::task::spawn_blocking(move || client.join().expect("client")).await.expect("join");
        drop((accepted, up));
        let _ = upstream.join();
        assert!(reading >= Duration::from_secs(4), "the client's download ended after {reading:?} ({got} bytes)");
        assert!(!matches!(ended, Ok((End::Idle, _))), "the relay took the slow reader for idle");
    }
}
