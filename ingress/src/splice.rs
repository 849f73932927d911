//! Zero-copy relay primitives for Linux: pipes and `splice(2)`, and `TCP_INFO`. All unsafe code of the
//! crate lives here. Pipes come from a bounded pool and are held by a connection only while
//! it moves data, so an idle connection costs its two sockets and nothing more.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwapOption;
use shared::descriptors::{Descriptors, Held, Side};

/// Pipes alive (in use or pooled) and how many may be. Beyond it, or when the descriptor
/// pool has no two descriptors to give, `take` fails with EMFILE and the relay copies
/// through user space.
static LIVE: AtomicUsize = AtomicUsize::new(0);
static LIMIT: AtomicUsize = AtomicUsize::new(usize::MAX);
/// The pool pipes take their descriptors from (its stream side), once a server set it.
static DESCRIPTORS: ArcSwapOption<Descriptors> = ArcSwapOption::const_empty();

/// Set the most pipes alive at once, and the pool each one's two descriptors come from.
pub fn set_pipe_limit(n: usize, descriptors: &Arc<Descriptors>) {
    LIMIT.store(n, Ordering::Relaxed);
    DESCRIPTORS.store(Some(descriptors.clone()));
}

/// Bytes moved per `splice` call at most; the pipe holds 64 KiB by default.
pub const CHUNK: usize = 1 << 16;

/// A non-blocking pipe; `fill` is how many bytes sit in it.
pub struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    _fds: Option<Held>,
}

impl Pipe {
    fn new() -> io::Result<Self> {
        let full = || io::Error::from_raw_os_error(libc::EMFILE);
        if LIVE.fetch_add(1, Ordering::Relaxed) >= LIMIT.load(Ordering::Relaxed) {
            LIVE.fetch_sub(1, Ordering::Relaxed);
            return Err(full());
        }
        let fds = match DESCRIPTORS.load().as_ref() {
            Some(pool) => match pool.take(Side::Streams, 2) {
                Some(fds) => Some(fds),
                None => {
                    LIVE.fetch_sub(1, Ordering::Relaxed);
                    return Err(full());
                }
            },
            None => None,
        };
        Self::open(fds).inspect_err(|_| {
            LIVE.fetch_sub(1, Ordering::Relaxed);
        })
    }

    fn open(fds_held: Option<Held>) -> io::Result<Self> {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: `fds` is a valid two-element array for pipe2 to fill.
        let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded, so both descriptors are open and owned by nobody else.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        Ok(Self { read, write, _fds: fds_held })
    }
}

impl Drop for Pipe {
    fn drop(&mut self) {
        LIVE.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Move up to `len` bytes from socket `from` into the pipe. `Ok(0)` is end of stream.
pub fn socket_to_pipe(from: BorrowedFd<'_>, pipe: &Pipe, len: usize) -> io::Result<usize> {
    splice(from.as_raw_fd(), pipe.write.as_raw_fd(), len)
}

/// Move up to `len` bytes from the pipe into socket `to`.
pub fn pipe_to_socket(pipe: &Pipe, to: BorrowedFd<'_>, len: usize) -> io::Result<usize> {
    splice(pipe.read.as_raw_fd(), to.as_raw_fd(), len)
}

/// Both descriptors come from live owners (`BorrowedFd` or the pipe's `OwnedFd`s), so they
/// stay open for the call.
fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: null offsets are allowed for pipes and sockets; the descriptors are borrowed
    // from live owners for the duration of the call and splice touches no user memory.
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Empty pipes kept for reuse, bounded so the pool never hoards descriptors.
pub struct PipePool {
    free: Mutex<Vec<Pipe>>,
    cap: usize,
}

impl PipePool {
    pub const fn new(cap: usize) -> Self {
        Self { free: Mutex::new(Vec::new()), cap }
    }

    pub fn take(&self) -> io::Result<Pipe> {
        // A few pipes per worker thread first: the common case takes no lock.
        if let Some(p) = local(Vec::pop) {
            return Ok(p);
        }
        if let Some(p) = self.free.lock().ok().and_then(|mut f| f.pop()) {
            return Ok(p);
        }
        Pipe::new()
    }

    /// Close the pipes kept for reuse (the shared ones, and this thread's; every other
    /// thread closes its own at its next take or give-back): their descriptors go back to
    /// the pool. How many were closed here.
    pub fn shed(&self) -> usize {
        let local = local(std::mem::take).len();
        SHEDS.fetch_add(1, Ordering::Relaxed);
        let shared = self.free.lock().map(|mut f| std::mem::take(&mut *f).len()).unwrap_or(0);
        local + shared
    }

    /// Return a pipe. Only empty pipes may come back: a pipe with data in it is dropped.
    pub fn give_back(&self, pipe: Pipe) {
        let spill = local(|l| {
            if l.len() < LOCAL_CAP {
                l.push(pipe);
                None
            } else {
                Some(pipe)
            }
        });
        if let Some(pipe) = spill {
            if let Ok(mut f) = self.free.lock() {
                if f.len() < self.cap {
                    f.push(pipe);
                }
            }
        }
    }
}

/// Pipes kept per thread before the shared pool is used.
const LOCAL_CAP: usize = 16;

thread_local! {
    /// This thread's pipes, and the count of sheds they were kept after.
    static LOCAL: std::cell::RefCell<(u64, Vec<Pipe>)> = const { std::cell::RefCell::new((0, Vec::new())) };
}

/// Sheds asked for so far: a thread whose pipes were kept before the last one closes them at
/// its next use (the accept loop sheds on its own thread; each worker keeps up to
/// `LOCAL_CAP`, which would otherwise hold their descriptors through a flood for good).
static SHEDS: AtomicU64 = AtomicU64::new(0);

/// `f` on this thread's pipes, those kept before the last shed closed first.
fn local<R>(f: impl FnOnce(&mut Vec<Pipe>) -> R) -> R {
    LOCAL.with(|l| {
        let mut l = l.borrow_mut();
        let sheds = SHEDS.load(Ordering::Relaxed);
        if l.0 != sheds {
            l.1.clear();
            l.0 = sheds;
        }
        f(&mut l.1)
    })
}

/// The process-wide pool (a few hundred pipes: busy connections at once, not all of them).
pub static PIPES: PipePool = PipePool::new(256);

/// What the kernel knows of one TCP connection's delivery (`TCP_INFO`): segments it had to
/// send again, its segment size, and its smoothed round trip.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpStats {
    pub total_retrans: u32,
    pub snd_mss: u32,
    pub rtt_us: u32,
}

/// `getsockopt(TCP_INFO)` on `fd`; None if the kernel refuses (not a TCP socket).
pub fn tcp_stats(fd: BorrowedFd<'_>) -> Option<TcpStats> {
    // SAFETY: `tcp_info` is plain integers, valid when zeroed; the kernel writes at most
    // `len` bytes into it (fewer on an older kernel, leaving the rest zero) and `fd` is a
    // live descriptor for the duration of the call (borrowed).
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast::<libc::c_void>(),
            &mut len,
        )
    };
    (rc == 0).then_some(TcpStats {
        total_retrans: info.tcpi_total_retrans,
        snd_mss: info.tcpi_snd_mss,
        rtt_us: info.tcpi_rtt,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pipes take their two descriptors from the pool when made, keep them while kept for
    /// reuse, and give them back when shed.
    #[test]
    fn pipes_hold_pool_descriptors_until_shed() {
        let pool = Descriptors::new(100, 0);
        set_pipe_limit(10, &pool);
        let pool_pipes = PipePool::new(4);
        let (a, b) = (pool_pipes.take().expect("a pipe"), pool_pipes.take().expect("a pipe"));
        assert_eq!(pool.used(), (4, 0));
        pool_pipes.give_back(a);
        pool_pipes.give_back(b);
        assert_eq!(pool.used(), (4, 0), "kept for reuse, still held");
        assert_eq!(pool_pipes.shed(), 2);
        assert_eq!(pool.used(), (0, 0));
        // A full pool: no pipe (the relay copies instead).
        let _all = pool.take(Side::Streams, 99).expect("the pool");
        assert!(pool_pipes.take().is_err());
    }

    /// A shed on one thread reaches the pipes another thread keeps, at its next use.
    #[test]
    fn a_shed_reaches_other_threads_pipes() {
        let pool = Descriptors::new(100, 0);
        set_pipe_limit(10, &pool);
        let (to_worker, at_worker) = std::sync::mpsc::channel::<()>();
        let (to_main, at_main) = std::sync::mpsc::channel::<()>();
        let worker = std::thread::spawn(move || {
            let pipes = PipePool::new(4);
            let (a, b) = (pipes.take().expect("a pipe"), pipes.take().expect("a pipe"));
            pipes.give_back(a);
            pipes.give_back(b);
            let _ = to_main.send(());
            let _ = at_worker.recv();
            // Its next use, after the shed.
            let c = pipes.take().expect("a pipe");
            pipes.give_back(c);
            let _ = to_main.send(());
            let _ = at_worker.recv();
        });
        let wait = std::time::Duration::from_secs(10);
        at_main.recv_timeout(wait).expect("the worker kept its pipes");
        assert_eq!(pool.used(), (4, 0), "two pipes kept on the worker's thread");
        PipePool::new(4).shed();
        to_worker.send(()).expect("worker");
        at_main.recv_timeout(wait).expect("the worker used a pipe");
        assert_eq!(pool.used(), (2, 0), "the kept ones closed, one made afresh and kept");
        to_worker.send(()).expect("worker");
        worker.join().expect("worker");
    }
}
