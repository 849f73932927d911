//! Connection workers: `threads` event loops, each a current-thread runtime on a thread of its
//! own, the way HAProxy's `nbthread` and nginx's workers run. The calling thread's runtime
//! (the one that accepts, probes and reloads) is thread 0; each accepted TCP
//! connection is handed to the thread with the fewest connections and lives there to its end,
//! so its wake-ups never cross threads. Tokio's multi-thread runtime shares one reactor and
//! steals tasks between workers instead: on 2 cores, 12-15 % more CPU per relayed request than
//! one thread (bench/results/2026-12-02-vm-threads.md).
//!
//! UDP listening sockets are spread the same way, one socket to one loop for as long as it is
//! served ([`Workers::serve_udp`]): its receive loop, its flow table and its flows' reply pumps
//! all run there. A flow's state lives in one table, so a port served by one socket keeps to
//! one core; many ports (a TURN relay range, several services) use them all, and a busy port
//! served by a group of sockets, one per loop ([`Workers::serve_udp_group`]), has its clients
//! spread over every loop by the kernel.
//!
//! What a connection uses on its way out should live on its loop too: [`PerLoop`] keeps one
//! of a thing per loop (the local proxy's pooled upstream clients), picked by [`current`].

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use pin_project_lite::pin_project;
use tokio::net::{TcpStream, UdpSocket};
use tokio::runtime::Handle;
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use tokio_util::task::TaskTracker;

thread_local! {
    /// The event loop this thread runs: set on the threads `Workers::start` makes.
    static LOOP: Cell<usize> = const { Cell::new(0) };
}

/// The event loop the calling thread runs: 1.. on the threads [`Workers::start`] made, 0 on
/// any other thread (the caller's loop, thread 0).
pub fn current() -> usize {
    LOOP.with(Cell::get)
}

/// One `T` per event loop, each for the connections of its loop ([`PerLoop::get`] on their
/// thread). The local proxy keeps its pooled upstream clients so: a pool shared by all loops
/// hands a request on one thread an upstream connection whose task runs on another, and
/// every request then wakes that thread and is woken back (two cross-thread wake-ups).
#[derive(Debug)]
pub struct PerLoop<T> {
    /// Never empty.
    items: Box<[T]>,
}

impl<T> PerLoop<T> {
    /// `make(i)` for each loop `i` of `loops` (at least one).
    pub fn try_new<E>(loops: usize, make: impl FnMut(usize) -> Result<T, E>) -> Result<Self, E> {
        let items = (0..loops.max(1)).map(make).collect::<Result<Box<[T]>, E>>()?;
        Ok(Self { items })
    }

    /// The calling thread's loop's (the first one's on a thread no loop runs on, or when
    /// there are fewer items than loops).
    pub fn get(&self) -> &T {
        let i = current();
        self.items.get(i).unwrap_or(&self.items[0])
    }

    /// How many there are (one per loop).
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Never: there is at least one.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

/// The event loops connections are spread over. Dropping it stops the extra threads' loops
/// (their connections are closed).
#[derive(Debug)]
pub struct Workers {
    /// Threads 1.. (thread 0 is the caller's runtime).
    extra: Vec<Worker>,
    counts: Arc<Counts>,
}

#[derive(Debug)]
struct Worker {
    handle: Handle,
    /// Dropped with the worker: its loop then returns and its runtime ends.
    _stop: oneshot::Sender<()>,
}

#[derive(Debug)]
struct Counts {
    /// Connections running on each thread.
    open: Vec<AtomicUsize>,
    /// Connections ever placed on each thread.
    placed: Vec<AtomicU64>,
    /// Where the search for the least-loaded thread starts: ties go round.
    turn: AtomicUsize,
    /// UDP listening sockets served on each thread.
    udp: Vec<AtomicUsize>,
    /// As `turn`, for the UDP sockets (so that connections do not skew their rounds).
    udp_turn: AtomicUsize,
}

impl Counts {
    fn new(threads: usize) -> Arc<Self> {
        Arc::new(Self {
            open: (0..threads).map(|_| AtomicUsize::new(0)).collect(),
            placed: (0..threads).map(|_| AtomicU64::new(0)).collect(),
            turn: AtomicUsize::new(0),
            udp: (0..threads).map(|_| AtomicUsize::new(0)).collect(),
            udp_turn: AtomicUsize::new(0),
        })
    }

    /// The thread with the fewest open connections.
    fn pick(&self) -> usize {
        least(&self.open, &self.turn)
    }

    /// The thread serving the fewest UDP sockets.
    fn pick_udp(&self) -> usize {
        least(&self.udp, &self.udp_turn)
    }
}

/// The index of the smallest count, searched from the next turn on (ties go round).
fn least(counts: &[AtomicUsize], turn: &AtomicUsize) -> usize {
    let n = counts.len();
    if n <= 1 {
        return 0;
    }
    let start = turn.fetch_add(1, Ordering::Relaxed) % n;
    let mut best = start;
    let mut least = counts[start].load(Ordering::Relaxed);
    for k in 1..n {
        let i = (start + k) % n;
        let count = counts[i].load(Ordering::Relaxed);
        if count < least {
            (best, least) = (i, count);
        }
    }
    best
}

/// One event loop's share of the TCP connections and UDP sockets, as both binaries'
/// `/status` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LoopStatus {
    /// TCP connections open on this loop.
    pub open: usize,
    /// TCP connections placed on it since start.
    pub placed: u64,
    /// UDP listening sockets served on it (each with its flows).
    #[serde(default)]
    pub udp_sockets: usize,
}

/// For the status pages and the ctl summaries: each loop's open TCP connections joined by
/// `sep` (`"3 · 2"`), and its UDP sockets when any loop serves one; `None` with one loop.
pub fn per_thread(threads: &[LoopStatus], sep: &str) -> Option<(String, Option<String>)> {
    if threads.len() <= 1 {
        return None;
    }
    let column =
        |count: fn(&LoopStatus) -> usize| threads.iter().map(|t| count(t).to_string()).collect::<Vec<_>>().join(sep);
    let udp = threads.iter().any(|t| t.udp_sockets > 0).then(|| column(|t| t.udp_sockets));
    Some((column(|t| t.open), udp))
}

/// When each extra thread's loop last ran its heartbeat task (`Workers::heartbeats`).
pub struct Heartbeats {
    base: Instant,
    /// Milliseconds from `base`, per thread 1.. (0 until the first beat: started at `base`).
    beats: Arc<[AtomicU64]>,
}

impl Heartbeats {
    /// The first thread (numbered from 1) whose loop has not beaten within `within`.
    pub fn stalled(&self, within: Duration) -> Option<usize> {
        let now = since(self.base);
        let within = u64::try_from(within.as_millis()).unwrap_or(u64::MAX);
        self.beats.iter().position(|b| now.saturating_sub(b.load(Ordering::Relaxed)) > within).map(|i| i + 1)
    }
}

fn since(base: Instant) -> u64 {
    u64::try_from(base.elapsed().as_millis()).unwrap_or(u64::MAX)
}

pin_project! {
    /// A connection's task: `serve`'s future, built on the thread that runs it (a socket
    /// handed to another thread joins that thread's reactor first). Not an async block:
    /// one keeps the closure it was given beside the future the closure made (its captures
    /// twice in every connection's task, 176 bytes in the ingress's); here the future takes
    /// the closure's room.
    #[project = ConnTaskProj]
    enum ConnTask<F, Fut> {
        Start { start: Option<(F, std::net::TcpStream, Counted)> },
        Run { #[pin] fut: Fut, _placed: Counted },
    }
}

impl<F, Fut> Future for ConnTask<F, Fut>
where
    F: FnOnce(TcpStream) -> Fut,
    Fut: Future<Output = ()>,
{
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            let (serve, std, placed) = match self.as_mut().project() {
                ConnTaskProj::Run { fut, .. } => return fut.poll(cx),
                ConnTaskProj::Start { start } => match start.take() {
                    Some(start) => start,
                    None => return Poll::Ready(()),
                },
            };
            match TcpStream::from_std(std) {
                Ok(stream) => self.set(ConnTask::Run { fut: serve(stream), _placed: placed }),
                Err(e) => {
                    tracing::debug!(error = %e, "cannot register the connection on its thread; closing it");
                    return Poll::Ready(());
                }
            }
        }
    }
}

/// One connection (or UDP socket) counted on its thread until it ends.
struct Counted {
    counts: Arc<Counts>,
    thread: usize,
    /// Which count: the connections open, or the UDP sockets served.
    of: fn(&Counts) -> &[AtomicUsize],
}

impl Counted {
    fn new(counts: &Arc<Counts>, thread: usize, of: fn(&Counts) -> &[AtomicUsize]) -> Self {
        of(counts)[thread].fetch_add(1, Ordering::Relaxed);
        Self { counts: counts.clone(), thread, of }
    }

    /// A connection: counted open, and as placed.
    fn conn(counts: &Arc<Counts>, thread: usize) -> Self {
        counts.placed[thread].fetch_add(1, Ordering::Relaxed);
        Self::new(counts, thread, |c| &c.open)
    }

    fn udp(counts: &Arc<Counts>, thread: usize) -> Self {
        Self::new(counts, thread, |c| &c.udp)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        (self.of)(&self.counts)[self.thread].fetch_sub(1, Ordering::Relaxed);
    }
}

impl Workers {
    /// The caller's runtime alone (as `start(1)`).
    pub fn none() -> Self {
        Self { extra: Vec::new(), counts: Counts::new(1) }
    }

    /// `threads` event loops in all: the caller's and `threads - 1` new threads named
    /// `name-1`, `name-2`, … each running a current-thread runtime (IO and timers enabled).
    pub fn start(threads: usize, name: &str) -> io::Result<Self> {
        let threads = threads.max(1);
        let mut extra = Vec::with_capacity(threads - 1);
        for i in 1..threads {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let handle = runtime.handle().clone();
            let (stop, stopped) = oneshot::channel::<()>();
            std::thread::Builder::new().name(format!("{name}-{i}")).spawn(move || {
                LOOP.with(|l| l.set(i));
                // The loop runs the connections handed to it until `stop` is dropped.
                runtime.block_on(async {
                    let _ = stopped.await;
                });
            })?;
            extra.push(Worker { handle, _stop: stop });
        }
        Ok(Self { extra, counts: Counts::new(threads) })
    }

    /// Starts, on every extra thread, a task that notes the time every `every`: a loop that
    /// stops noting it is wedged (a task that blocks its thread or never yields), and so are
    /// the connections it holds, which no other thread can take over. The main thread's
    /// loop is vouched for by whatever runs `Heartbeats::stalled` on it (the watchdog).
    pub fn heartbeats(&self, every: Duration) -> Heartbeats {
        let base = Instant::now();
        let beats: Arc<[AtomicU64]> = self.extra.iter().map(|_| AtomicU64::new(0)).collect();
        for (i, worker) in self.extra.iter().enumerate() {
            let beats = beats.clone();
            worker.handle.spawn(async move {
                let mut tick = tokio::time::interval(every.max(Duration::from_millis(1)));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    beats[i].store(since(base), Ordering::Relaxed);
                }
            });
        }
        Heartbeats { base, beats }
    }

    /// The other threads' runtimes.
    pub fn handles(&self) -> Vec<Handle> {
        self.extra.iter().map(|w| w.handle.clone()).collect()
    }

    /// How many event loops connections are spread over.
    pub fn threads(&self) -> usize {
        self.extra.len() + 1
    }

    /// Each loop's connections and UDP sockets, thread 0's first.
    pub fn status(&self) -> Vec<LoopStatus> {
        (self.open().into_iter().zip(self.placed()).zip(self.udp_sockets()))
            .map(|((open, placed), udp_sockets)| LoopStatus { open, placed, udp_sockets })
            .collect()
    }

    /// UDP sockets served on each thread, thread 0 first.
    pub fn udp_sockets(&self) -> Vec<usize> {
        self.counts.udp.iter().map(|u| u.load(Ordering::Relaxed)).collect()
    }

    /// Connections open on each thread, thread 0 first.
    pub fn open(&self) -> Vec<usize> {
        self.counts.open.iter().map(|o| o.load(Ordering::Relaxed)).collect()
    }

    /// Connections ever placed on each thread, thread 0 first.
    pub fn placed(&self) -> Vec<u64> {
        self.counts.placed.iter().map(|p| p.load(Ordering::Relaxed)).collect()
    }

    /// Runs `serve` for a connection accepted on the caller's runtime, on the thread with the
    /// fewest connections, tracked by `tracker` (a drain waits for it). Handed to another
    /// thread, the socket leaves this runtime's reactor and joins that thread's.
    pub fn spawn_conn<F, Fut>(&self, stream: TcpStream, tracker: &TaskTracker, serve: F)
    where
        F: FnOnce(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let thread = self.counts.pick();
        let placed = Counted::conn(&self.counts, thread);
        let Some(worker) = thread.checked_sub(1).and_then(|i| self.extra.get(i)) else {
            tracker.spawn(ConnTask::<F, Fut>::Run { fut: serve(stream), _placed: placed });
            return;
        };
        let std = match stream.into_std() {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(error = %e, "cannot hand the connection to its thread; closing it");
                return;
            }
        };
        worker.handle.spawn(tracker.track_future(ConnTask::Start { start: Some((serve, std, placed)) }));
    }

    /// Runs `serve` for a UDP listening socket bound on the caller's runtime, on the thread
    /// serving the fewest UDP sockets, until it returns. What `serve` spawns (the flows'
    /// reply pumps) runs on that thread too. Dropping the returned future (the caller's task
    /// aborted: a reload removed the socket) stops `serve` on its thread. The socket moves
    /// between reactors without closing, so no datagram queued meanwhile is lost.
    pub async fn serve_udp<F, Fut>(&self, socket: UdpSocket, serve: F)
    where
        F: FnOnce(UdpSocket) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let thread = self.counts.pick_udp();
        let mut set = JoinSet::new();
        self.serve_udp_on(thread, socket, serve, &mut set);
        // Its end, or its thread's: dropped with the workers, the socket is closed there.
        while set.join_next().await.is_some() {}
    }

    /// As [`Workers::serve_udp`] for the sockets of one port's group
    /// (`listeners::udp_group`), one on each loop in turn from thread 0, so that one busy
    /// port's clients are served by every loop; a group of one goes where `serve_udp` would
    /// put it. Returns when every socket's `serve` has.
    pub async fn serve_udp_group<F, Fut>(&self, sockets: Vec<UdpSocket>, serve: F)
    where
        F: Fn(UdpSocket) -> Fut + Clone + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let alone = sockets.len() == 1;
        let mut set = JoinSet::new();
        for (i, socket) in sockets.into_iter().enumerate() {
            let thread = if alone { self.counts.pick_udp() } else { i % self.threads() };
            self.serve_udp_on(thread, socket, serve.clone(), &mut set);
        }
        while set.join_next().await.is_some() {}
    }

    /// Starts `serve(socket)` on `thread`'s loop, counted there, in `set` (which aborts it
    /// when dropped).
    fn serve_udp_on<F, Fut>(&self, thread: usize, socket: UdpSocket, serve: F, set: &mut JoinSet<()>)
    where
        F: FnOnce(UdpSocket) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let served = Counted::udp(&self.counts, thread);
        let Some(worker) = thread.checked_sub(1).and_then(|i| self.extra.get(i)) else {
            set.spawn(async move {
                let _served = served;
                serve(socket).await;
            });
            return;
        };
        let local = socket.local_addr().ok();
        let std = match socket.into_std() {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(?local, error = %e, "cannot hand the udp socket to its thread; it is not served");
                return;
            }
        };
        set.spawn_on(
            async move {
                let _served = served;
                match UdpSocket::from_std(std) {
                    Ok(socket) => serve(socket).await,
                    Err(e) => {
                        tracing::error!(?local, error = %e, "cannot register the udp socket on its thread; it is not served")
                    }
                }
            },
            &worker.handle,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use std::sync::Mutex;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Equal counts go round; a thread holding more connections gets the next ones.
    #[test]
    fn the_thread_with_fewest_connections_is_picked() {
        let counts = Counts::new(3);
        let picks: Vec<usize> = (0..6).map(|_| counts.pick()).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2], "ties go round");
        let held: Vec<Counted> = (0..4).map(|_| Counted::conn(&counts, 1)).collect();
        let _one = Counted::conn(&counts, 0);
        for _ in 0..6 {
            assert_eq!(counts.pick(), 2, "thread 2 holds none");
        }
        drop(held);
        assert_eq!(counts.open[1].load(Ordering::Relaxed), 0, "a connection's end is counted");
        assert_eq!(counts.placed[1].load(Ordering::Relaxed), 4, "placements are kept");
        for _ in 0..6 {
            assert_ne!(counts.pick(), 0, "thread 0 still holds one");
        }
    }

    /// A loop whose thread is blocked is named once it has missed its beats for longer than
    /// asked, and no longer once it runs again.
    #[test]
    fn a_blocked_loop_is_named_stalled_until_it_runs_again() {
        let workers = Workers::start(3, "test-beat").expect("workers");
        let beats = workers.heartbeats(Duration::from_millis(20));
        // Margins wide enough for a loaded machine: 1 s without a beat, a 3 s block.
        let within = Duration::from_secs(1);
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(beats.stalled(within), None, "every loop beats");
        workers.extra[1].handle.spawn(async { std::thread::sleep(Duration::from_secs(3)) });
        std::thread::sleep(Duration::from_millis(2000));
        assert_eq!(beats.stalled(within), Some(2), "thread 2 is blocked");
        let deadline = Instant::now() + Duration::from_secs(10);
        while beats.stalled(within).is_some() {
            assert!(Instant::now() < deadline, "thread 2 never beat again");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Connections accepted on the caller's runtime are served on every thread, each on the
    /// thread it was placed on, and the tracker waits for them all.
    #[tokio::test(flavor = "current_thread")]
    async fn connections_spread_over_the_threads_and_are_served_there() {
        let workers = Workers::start(3, "test-worker").expect("workers");
        assert_eq!(workers.threads(), 3);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let tracker = TaskTracker::new();
        let seen = Arc::new(Mutex::new(BTreeSet::new()));
        let clients = tokio::spawn(async move {
            let mut open = Vec::new();
            for i in 0..30u8 {
                let mut c = tokio::net::TcpStream::connect(addr).await.expect("connect");
                c.write_all(&[i]).await.expect("write");
                let mut back = [0u8; 1];
                c.read_exact(&mut back).await.expect("echo");
                assert_eq!(back, [i]);
                // Held open, so that each next one goes to a less loaded thread.
                open.push(c);
            }
            open
        });
        for _ in 0..30 {
            let (stream, _) = listener.accept().await.expect("accept");
            let seen = seen.clone();
            workers.spawn_conn(stream, &tracker, move |mut s| async move {
                let name = std::thread::current().name().map(str::to_owned);
                seen.lock().expect("lock").insert((name, current()));
                let mut b = [0u8; 1];
                if s.read_exact(&mut b).await.is_ok() {
                    let _ = s.write_all(&b).await;
                }
                // Until the client closes.
                let _ = s.read(&mut b).await;
            });
        }
        let open = clients.await.expect("clients");
        assert_eq!(workers.placed(), [10, 10, 10], "held connections spread evenly");
        drop(open);
        tracker.close();
        tokio::time::timeout(std::time::Duration::from_secs(10), tracker.wait()).await.expect("all ended");
        let seen = seen.lock().expect("lock").clone();
        assert_eq!(seen.len(), 3, "served on three threads: {seen:?}");
        // Each loop knows its number: the workers' from their names, the caller's is 0.
        assert!(seen.contains(&(Some("test-worker-1".into()), 1)) && seen.contains(&(Some("test-worker-2".into()), 2)));
        assert!(seen.iter().any(|(_, i)| *i == 0), "the caller's loop is 0: {seen:?}");
        assert_eq!(workers.counts.open.iter().map(|o| o.load(Ordering::Relaxed)).sum::<usize>(), 0);
    }

    /// UDP sockets bound on the caller's runtime are served on every thread, ties in turn, and
    /// one whose serving future is dropped stops on its thread: its socket closes.
    #[tokio::test(flavor = "current_thread")]
    async fn udp_sockets_spread_over_the_threads_and_stop_with_their_caller() {
        let workers = Arc::new(Workers::start(3, "test-udp").expect("workers"));
        let seen = Arc::new(Mutex::new(BTreeSet::new()));
        let mut served = Vec::new();
        for _ in 0..6 {
            let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
            let addr = socket.local_addr().expect("addr");
            let (workers, seen) = (workers.clone(), seen.clone());
            let task = tokio::spawn(async move {
                workers
                    .serve_udp(socket, move |s| async move {
                        // An echo that answers with the number of the loop it runs on.
                        let mut b = [0u8; 16];
                        while let Ok((_, from)) = s.recv_from(&mut b).await {
                            seen.lock().expect("lock").insert(current());
                            let _ = s.send_to(&[current() as u8], from).await;
                        }
                    })
                    .await
            });
            served.push((addr, task));
        }
        let client = UdpSocket::bind("127.0.0.1:0").await.expect("client");
        let mut loops = Vec::new();
        for (addr, _) in &served {
            client.send_to(b"?", addr).await.expect("send");
            let mut b = [0u8; 1];
            let got = tokio::time::timeout(Duration::from_secs(5), client.recv(&mut b)).await;
            got.expect("answered in time").expect("recv");
            loops.push(b[0]);
        }
        assert_eq!(loops, [0, 1, 2, 0, 1, 2], "sockets placed in turn and served on their loops");
        assert_eq!(workers.udp_sockets(), [2, 2, 2]);
        assert_eq!(seen.lock().expect("lock").len(), 3);
        let status = workers.status();
        assert_eq!(status.iter().map(|l| l.udp_sockets).collect::<Vec<_>>(), [2, 2, 2]);
        // Aborting the caller's task (a reload removing the socket) stops it on loop 1.
        let (addr, task) = served.remove(1);
        task.abort();
        let deadline = Instant::now() + Duration::from_secs(5);
        while workers.udp_sockets() != [2, 1, 2] || std::net::UdpSocket::bind(addr).is_err() {
            assert!(Instant::now() < deadline, "the socket on loop 1 was not closed: {:?}", workers.udp_sockets());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // The next socket goes to the loop serving the fewest.
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let (w, s) = (workers.clone(), seen.clone());
        let again = tokio::spawn(async move {
            w.serve_udp(socket, move |_| async move {
                s.lock().expect("lock").insert(100 + current());
            })
            .await
        });
        tokio::time::timeout(Duration::from_secs(5), again).await.expect("served in time").expect("task");
        assert!(seen.lock().expect("lock").contains(&101), "served on loop 1: {:?}", seen.lock());
        assert_eq!(workers.udp_sockets(), [2, 1, 2], "served and ended: counted off again");
    }

    /// Each loop's tasks get their own loop's item; a thread no loop runs on gets the first.
    #[tokio::test(flavor = "current_thread")]
    async fn each_loop_gets_its_own_item() {
        let workers = Workers::start(3, "test-per-loop").expect("workers");
        let per = Arc::new(PerLoop::try_new(workers.threads(), |i| Ok::<_, ()>(i * 10)).expect("items"));
        assert_eq!(per.len(), 3);
        assert_eq!(*per.get(), 0, "the caller's loop");
        for (i, handle) in workers.handles().into_iter().enumerate() {
            let per = per.clone();
            let got = handle.spawn(async move { *per.get() }).await.expect("task");
            assert_eq!(got, (i + 1) * 10, "loop {}", i + 1);
        }
        let other = std::thread::spawn({
            let per = per.clone();
            move || *per.get()
        });
        assert_eq!(other.join().expect("thread"), 0, "not a loop's thread");
        let one = PerLoop::try_new(0, |_| Ok::<_, ()>("only")).expect("items");
        assert_eq!((one.len(), *one.get()), (1, "only"), "at least one");
    }
}
