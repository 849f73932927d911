//! Connecting upstream: the plan in `attempts` says which path to try, when to race a second
//! path against a slow attempt (Happy Eyeballs across WANs) and with what timeout; this
//! drives it. A WAN that died between two health checks then costs a client tens of
//! milliseconds, not a failed connection or a full timeout.
//!
//! What a connect tells about its path: its latency (the health state's average, which the
//! health factor compares with the best path's) and whether it went wrong (delivered quality,
//! `crate::quality`). Latency counts once, there: a slow connect that completes is not a
//! loss, even when it was raced. A loss is an attempt that failed, or that connected only
//! after the kernel resent its SYN (or a SYN-ACK was resent: more than the initial
//! retransmission timeout, 1 s). An attempt that lost a race is not cut off: it goes on in
//! the background to its own timeout and is judged like any other.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;

use shared::descriptors::{Descriptors, Held, Side};

use crate::attempts::{Paths, Plan, PlanConfig, Start};
use crate::health::Outcome;
use crate::pool::{Kind, Path, Pool, Suspicion, Tried};

/// Every attempt failed; the last error says why.
#[derive(Debug, thiserror::Error)]
#[error("no path to home answered after {attempts} attempt(s); last: {} ({last})", self.cause().as_str())]
pub struct Unavailable {
    pub attempts: u32,
    pub last: io::Error,
}

/// Why the last attempt failed, as an operator reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// The home end answered with a reset: nothing listens there.
    Refused,
    /// No answer within the timeout: a dead or lossy WAN.
    TimedOut,
    /// No route to the address (ICMP unreachable, or no route here).
    Unreachable,
    /// This process was out of descriptors or memory.
    LocalResources,
    /// The pool had no path to try.
    NoPath,
    Other,
}

impl Cause {
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::Refused => "refused",
            Cause::TimedOut => "timed out",
            Cause::Unreachable => "unreachable",
            Cause::LocalResources => "out of local resources",
            Cause::NoPath => "no path",
            Cause::Other => "failed",
        }
    }
}

impl Unavailable {
    pub fn cause(&self) -> Cause {
        if shared::health::out_of_resources(&self.last) {
            return Cause::LocalResources;
        }
        match self.last.kind() {
            io::ErrorKind::ConnectionRefused => Cause::Refused,
            io::ErrorKind::TimedOut => Cause::TimedOut,
            io::ErrorKind::HostUnreachable | io::ErrorKind::NetworkUnreachable => Cause::Unreachable,
            io::ErrorKind::NotFound => Cause::NoPath,
            _ => Cause::Other,
        }
    }
}

/// What happened during a connect, for the pool's health and metrics.
#[derive(Debug)]
pub(crate) enum Event<'a> {
    /// The attempt on `slow` was raced by another path.
    Hedged {
        slow: usize,
    },
    Failed {
        index: usize,
        error: &'a io::Error,
        /// How long the attempt took.
        lasted: Duration,
    },
    Connected {
        index: usize,
        latency: Duration,
    },
    /// `index` lost a race: slow, not yet known dead (its attempt is handed back in
    /// [`Won::loser`] to finish in the background).
    Lost {
        index: usize,
    },
}

type Dialing<S> = Pin<Box<dyn Future<Output = io::Result<S>> + Send>>;

/// A connect that succeeded.
pub(crate) struct Won<S> {
    pub index: usize,
    pub stream: S,
    /// The attempt it beat in a race, still in flight.
    pub loser: Option<Loser<S>>,
}

/// An attempt that lost a race, still in flight: its own outcome is its path's verdict.
pub(crate) struct Loser<S> {
    pub index: usize,
    pub started: Instant,
    pub dialing: Dialing<S>,
    /// The race's third descriptor, held while its socket lasts.
    pub fd: Option<Held>,
}

/// Drive `plan`: `dial(index, timeout)` connects to a path; `spare()` is a descriptor for a
/// race's second socket (none: no race); `on` hears every event. Returns the winning path,
/// its stream and the attempt it beat (if any), or the attempts made and the last error.
pub(crate) async fn drive<S, D>(
    plan: &mut Plan,
    paths: &mut impl Paths,
    mut dial: D,
    mut spare: impl FnMut() -> Option<Held>,
    mut on: impl FnMut(Event<'_>),
) -> Result<Won<S>, (u32, io::Error)>
where
    D: FnMut(usize, Duration) -> Dialing<S>,
{
    let mut slots: [Option<Dialing<S>>; 2] = [None, None];
    // Held while two attempts are in flight, then by the loser.
    let mut race_fd: Option<Held> = None;
    let mut launch = |s: Start, slots: &mut [Option<Dialing<S>>; 2]| slots[s.slot] = Some(dial(s.index, s.timeout));
    match plan.begin(Instant::now(), paths) {
        Some(s) => launch(s, &mut slots),
        None => return Err((0, io::Error::new(io::ErrorKind::NotFound, "pool has no paths"))),
    }
    loop {
        let hedge_at = plan.hedge_at();
        let woke = {
            let [first, second] = &mut slots;
            // Results before the hedge timer: an attempt that failed at its deadline is
            // retried as the next attempt, not raced (the same instant, one decision).
            tokio::select! {
                biased;
                r = poll_slot(first) => Woke::Done(0, r),
                r = poll_slot(second) => Woke::Done(1, r),
                _ = sleep_until(hedge_at) => Woke::Hedge,
            }
        };
        let (slot, result) = match woke {
            Woke::Done(slot, result) => (slot, result),
            Woke::Hedge => {
                // Descriptors run short (a flood holds them): the slow attempt goes on alone.
                let Some(fd) = spare() else {
                    plan.skip_hedge();
                    continue;
                };
                let slow = plan.in_slot(0).or(plan.in_slot(1)).map(|(i, _)| i);
                if let Some(s) = plan.on_hedge(Instant::now(), paths) {
                    if let Some(slow) = slow {
                        on(Event::Hedged { slow });
                    }
                    race_fd = Some(fd);
                    launch(s, &mut slots);
                }
                continue;
            }
        };
        slots[slot] = None;
        let Some((index, started)) = plan.in_slot(slot) else { continue };
        match result {
            Ok(stream) => {
                on(Event::Connected { index, latency: started.elapsed() });
                let other = plan.in_slot(1 - slot);
                let loser = match (plan.on_connected(slot), other, slots[1 - slot].take()) {
                    (Some(lost), Some((_, started)), Some(dialing)) => {
                        on(Event::Lost { index: lost });
                        Some(Loser { index: lost, started, dialing, fd: race_fd.take() })
                    }
                    _ => None,
                };
                return Ok(Won { index, stream, loser });
            }
            Err(error) => {
                on(Event::Failed { index, error: &error, lasted: started.elapsed() });
                // Its socket is closed: one attempt in flight at most from here.
                race_fd = None;
                if let Some(s) = plan.on_failed(slot, Instant::now(), paths) {
                    launch(s, &mut slots);
                } else if plan.in_flight() == 0 {
                    return Err((plan.attempts(), error));
                }
            }
        }
    }
}

enum Woke<S> {
    Done(usize, io::Result<S>),
    Hedge,
}

/// The slot's result when it has a dial in flight; never otherwise.
async fn poll_slot<S>(slot: &mut Option<Dialing<S>>) -> io::Result<S> {
    match slot {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The pool as the plan sees it.
struct PoolPaths<'a>(&'a Pool);

impl Paths for PoolPaths<'_> {
    fn pick(&mut self, tried: Tried) -> Option<usize> {
        self.0.pick(tried, Kind::Tcp).map(|(i, _)| i)
    }
    fn pick_racer(&mut self, tried: Tried) -> Option<usize> {
        self.0.pick_racer(tried, Kind::Tcp).map(|(i, _)| i)
    }
    fn remaining(&self, tried: Tried) -> usize {
        self.0.remaining(tried)
    }
    fn remaining_up(&self, tried: Tried) -> usize {
        self.0.remaining_up(tried)
    }
    fn is_up(&self, index: usize) -> bool {
        self.0.paths.get(index).is_some_and(|p| p.is_up())
    }
    fn usual_latency(&self, index: usize) -> Option<Duration> {
        // A path not yet measured is judged by the pool's best.
        self.0
            .paths
            .get(index)
            .and_then(|p| p.latency())
            .or_else(|| self.0.paths.iter().filter_map(|p| p.latency()).min())
    }
}

async fn attempt(addr: std::net::SocketAddr, timeout: Duration, data_first: bool) -> io::Result<TcpStream> {
    let dial = async move {
        let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4() } else { tokio::net::TcpSocket::new_v6() }?;
        if data_first {
            // Delayed ACKs from the start (`TCP_QUICKACK` off): the ACK of the SYN-ACK then
            // rides in the segment of the first bytes, sent as soon as the connect completes,
            // instead of going out alone (HAProxy does the same when it has data to send).
            // Only then: until data goes out Linux holds that ACK up to 200 ms
            // (`TCP_DELACK_MAX`), and a server that speaks first would not see its
            // connection accepted before.
            let _ = socket2::SockRef::from(&socket).set_quickack(false);
        }
        socket.connect(addr).await
    };
    match tokio::time::timeout(timeout, dial).await {
        Ok(r) => r,
        Err(_) => {
            Err(io::Error::new(io::ErrorKind::TimedOut, format!("connect timed out after {}ms", timeout.as_millis())))
        }
    }
}

/// Connect to `port` (as seen on each path) through the pool. `data_first`: bytes wait to go
/// upstream as soon as it is connected (see `attempt`).
/// A race's second socket takes a descriptor from `descriptors`, or there is no race.
pub async fn connect(
    pool: &Arc<Pool>,
    port: u16,
    data_first: bool,
    descriptors: &Arc<Descriptors>,
) -> Result<(TcpStream, Arc<Path>), Unavailable> {
    let cfg = &pool.cfg;
    let mut plan = Plan::new(PlanConfig {
        max_attempts: cfg.max_attempts,
        connect_timeout: cfg.connect_timeout,
        final_connect_timeout: cfg.final_connect_timeout,
    });
    let dial = |index: usize, timeout: Duration| -> Dialing<TcpStream> {
        let addr = pool.paths.get(index).and_then(|p| p.addr(port));
        let connecting = pool.paths.get(index).map(|p| crate::pool::Connecting::new(p.clone()));
        Box::pin(async move {
            // Counted until the attempt ends, or is dropped with a race it lost.
            let _connecting = connecting;
            match addr {
                Some(addr) => attempt(addr, timeout, data_first).await,
                None => Err(io::Error::new(io::ErrorKind::NotFound, "no such path, or its name has no address")),
            }
        })
    };
    // The attempt raced for being slow, if any, while it lasts: no answer within 4x the
    // path's usual connect time is, on a WAN, mostly a lost SYN or SYN-ACK, so it counts
    // against the path's quality at once (a burst of loss bends the share within a hedge
    // delay, not a second later when the kernel resends the SYN); its end is sampled as
    // any attempt's, and a mere slowness leaves no trace (`Suspicion`).
    let mut raced: Option<(usize, Suspicion)> = None;
    let mut on = |ev: Event<'_>| match ev {
        Event::Hedged { slow } => {
            if let Some(p) = pool.paths.get(slow) {
                p.state.m_hedges.increment(1);
                tracing::debug!(pool = %pool.name, slow = %p.name, "connect slow; racing another path");
                raced = Some((slow, Path::suspect(p)));
                pool.quality_news();
            }
        }
        Event::Failed { index, error, .. } if error.kind() == io::ErrorKind::ConnectionRefused => {
            // A reset from home: the WAN delivered, the service's port is not served there
            // (the local proxy restarting, a stream not configured at home, one router's
            // forward missing). Held against the path, any client could knock every path of
            // every service down by connecting to such a port; the next path is tried all the
            // same, and the probes still judge the path.
            if let Some(p) = pool.paths.get(index) {
                p.state.m_refused.increment(1);
                tracing::debug!(pool = %pool.name, path = %p.name, %error, "connect refused by home");
            }
            raced.take_if(|(i, _)| *i == index);
        }
        Event::Failed { index, error, lasted } => {
            let outcome = outcome_of(error);
            if let Some(p) = pool.paths.get(index) {
                tracing::debug!(pool = %pool.name, path = %p.name, %error, "connect failed");
                if outcome == Outcome::Failed && p.began_on_current_address(lasted) {
                    p.quality_sample(1.0);
                }
            }
            raced.take_if(|(i, _)| *i == index);
            pool.record_connect(index, outcome, lasted);
        }
        Event::Connected { index, latency } => {
            if let Some(p) = pool.paths.get(index) {
                p.state.m_connects.increment(1);
                // Slow is not lost; a resent SYN or SYN-ACK takes the initial
                // retransmission timeout.
                if p.began_on_current_address(latency) {
                    p.quality_sample(if latency >= SYN_RTO { 1.0 } else { 0.0 });
                }
            }
            raced.take_if(|(i, _)| *i == index);
            pool.record_connect(index, Outcome::Ok { latency }, latency);
        }
        // A jittery WAN must not be taken down by a lost race, nor a slow one counted lossy:
        // the losing attempt finishes in the background and gives the verdict.
        Event::Lost { index } => {
            if let Some(p) = pool.paths.get(index) {
                tracing::debug!(pool = %pool.name, path = %p.name, "lost a race; its attempt finishes in the background");
            }
        }
    };
    let spare = || descriptors.take(Side::Streams, 1);
    let won = drive(&mut plan, &mut PoolPaths(pool), dial, spare, &mut on).await;
    match won {
        Ok(Won { index, stream, loser }) => {
            if let Some(loser) = loser {
                let suspicion = raced.take_if(|(i, _)| *i == loser.index).map(|(_, s)| s);
                judge_loser(pool.clone(), loser, suspicion);
            }
            let _ = stream.set_nodelay(true);
            match pool.paths.get(index) {
                Some(path) => Ok((stream, path.clone())),
                None => Err(Unavailable { attempts: plan.attempts(), last: io::Error::other("path vanished") }),
            }
        }
        Err((attempts, last)) => Err(Unavailable { attempts, last }),
    }
}

/// The kernel's initial retransmission timeout of a SYN (and of a SYN-ACK): a connect that
/// took longer had one of them lost.
const SYN_RTO: Duration = Duration::from_secs(1);

/// The attempt that lost a race finishes in the background, within its own timeout, and
/// gives its path's verdict: connected is a success with the latency it had (which the health
/// factor counts), and a loss for quality only if its SYN was resent (`TCP_INFO`) or it took
/// longer than `SYN_RTO`; failed is a failure. Its connection, if any, is closed at once.
/// The suspicion it raised by being slow, if any, lasts until then.
fn judge_loser(pool: Arc<Pool>, loser: Loser<TcpStream>, suspicion: Option<Suspicion>) {
    tokio::spawn(async move {
        // `_fd` until its socket is closed, with the task.
        let Loser { index, started, dialing, fd: _fd } = loser;
        let result = dialing.await;
        let lasted = started.elapsed();
        let Some(p) = pool.paths.get(index) else { return };
        let current = p.began_on_current_address(lasted);
        let outcome = match result {
            Ok(stream) => {
                if current {
                    p.quality_sample(if syn_resent(&stream) || lasted >= SYN_RTO { 1.0 } else { 0.0 });
                }
                Outcome::Ok { latency: lasted }
            }
            // Reached home (see `connect`): no verdict on the path.
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                p.state.m_refused.increment(1);
                return;
            }
            Err(e) => {
                let outcome = outcome_of(&e);
                if outcome == Outcome::Failed && current {
                    p.quality_sample(1.0);
                }
                outcome
            }
        };
        drop(suspicion);
        pool.record_connect(index, outcome, lasted);
    });
}

/// Whether the kernel had to send a connection's SYN again.
fn syn_resent(stream: &TcpStream) -> bool {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsFd;
        crate::splice::tcp_stats(stream.as_fd()).is_some_and(|s| s.total_retrans > 0)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = stream;
        false
    }
}

/// A failed connect is the path's failure, unless this process was out of resources.
fn outcome_of(e: &io::Error) -> Outcome {
    if shared::health::out_of_resources(e) {
        Outcome::Local
    } else {
        Outcome::Failed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attempts::tests::Fixed;
    use crate::pool::tests::pool;
    use shared::health::Source;

    /// With wan2 down, wan1 is the last path worth trying: its attempt gets the long timeout,
    /// so one lost SYN (resent after a second) does not fail the client. With both up, the
    /// first attempt gets the short one, as another path can take over.
    #[test]
    fn the_last_up_path_gets_the_long_timeout_whatever_is_down_behind_it() {
        let p = pool(&[1, 1], false);
        let first = |p: &Pool| plan(3).begin(Instant::now(), &mut PoolPaths(p)).expect("a path");
        assert_eq!(first(&p).timeout, 300 * MS, "another up path behind it");
        p.record(1, Outcome::Failed, Source::Probe);
        p.record(1, Outcome::Failed, Source::Probe);
        assert!(!p.paths[1].is_up());
        let s = first(&p);
        assert_eq!((s.index, s.timeout), (0, 3000 * MS));
    }

    /// A home that refuses a connect (nothing listens on that port there) was reached: the
    /// path is not judged by it, or any client could take every path down through such a
    /// port. The connect still moves on to the next path.
    #[tokio::test]
    async fn refused_connects_take_no_path_down() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let mut cfg = pool(&[1, 1], false).cfg.clone();
        cfg.paths[0].target = crate::config::Target::Ip("127.0.0.1".parse().unwrap());
        cfg.paths[1].target = crate::config::Target::Ip("127.0.0.2".parse().unwrap());
        let p = Arc::new(Pool::new(cfg, None));
        for _ in 0..4 {
            let e = connect(&p, port, false, &Descriptors::new(100, 0)).await.err().expect("nothing listens");
            assert_eq!(e.cause(), Cause::Refused);
        }
        assert!(p.paths.iter().all(|path| path.is_up()), "a refused connect took a path down");
    }

    const MS: Duration = Duration::from_millis(1);

    /// How each path behaves: answers (Ok) or fails after a delay.
    #[derive(Clone, Copy)]
    enum Peer {
        Answers(Duration),
        Fails(Duration),
        Silent,
    }

    fn dialer(peers: Vec<Peer>) -> impl FnMut(usize, Duration) -> Dialing<(usize, Instant)> {
        move |index, timeout| {
            let peer = peers[index];
            Box::pin(async move {
                let r = tokio::time::timeout(timeout, async {
                    match peer {
                        Peer::Answers(d) => {
                            tokio::time::sleep(d).await;
                            Ok((index, Instant::now()))
                        }
                        Peer::Fails(d) => {
                            tokio::time::sleep(d).await;
                            Err(io::Error::from(io::ErrorKind::ConnectionRefused))
                        }
                        Peer::Silent => std::future::pending().await,
                    }
                })
                .await;
                r.unwrap_or_else(|_| Err(io::Error::from(io::ErrorKind::TimedOut)))
            })
        }
    }

    fn plan(max: u32) -> Plan {
        Plan::new(PlanConfig { max_attempts: max, connect_timeout: 300 * MS, final_connect_timeout: 3000 * MS })
    }

    async fn run(
        peers: Vec<Peer>,
        latencies: Vec<Option<Duration>>,
        max: u32,
    ) -> (Result<usize, io::ErrorKind>, Vec<String>, Duration) {
        run_with(peers, latencies, max, &Descriptors::new(100, 0)).await
    }

    /// As `run`, a race's descriptor taken from `fds`.
    async fn run_with(
        peers: Vec<Peer>,
        latencies: Vec<Option<Duration>>,
        max: u32,
        fds: &Arc<Descriptors>,
    ) -> (Result<usize, io::ErrorKind>, Vec<String>, Duration) {
        let t0 = Instant::now();
        let mut log = Vec::new();
        let spare = || fds.take(Side::Streams, 1);
        let r = drive(&mut plan(max), &mut Fixed(latencies), dialer(peers), spare, |ev| {
            log.push(format!("{:?}@{}", ev_name(&ev), t0.elapsed().as_millis()))
        })
        .await;
        (r.map(|w| w.index).map_err(|(_, e)| e.kind()), log, t0.elapsed())
    }

    fn ev_name(ev: &Event<'_>) -> String {
        match ev {
            Event::Hedged { slow } => format!("hedged{slow}"),
            Event::Failed { index, .. } => format!("failed{index}"),
            Event::Connected { index, .. } => format!("connected{index}"),
            Event::Lost { index } => format!("lost{index}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_path_is_raced_after_four_times_its_latency() {
        // wan1 usually connects in 10 ms and now says nothing; wan2 answers in 10 ms.
        let (r, log, took) = run(vec![Peer::Silent, Peer::Answers(10 * MS)], vec![Some(10 * MS); 2], 3).await;
        assert_eq!(r, Ok(1));
        assert_eq!(log, ["\"hedged0\"@40", "\"connected1\"@50", "\"lost0\"@50"]);
        assert_eq!(took, 50 * MS, "the client paid the hedge delay and wan2's connect, no timeout");
    }

    /// A race's socket is a third descriptor: with none to spare (a flood holds the pool)
    /// the slow attempt goes on alone to its timeout, then the next path is tried.
    #[tokio::test(start_paused = true)]
    async fn no_race_without_a_descriptor_to_spare() {
        let fds = Descriptors::new(100, 0);
        let flood = fds.take(Side::Streams, 100).expect("the whole pool");
        let (r, log, took) =
            run_with(vec![Peer::Silent, Peer::Answers(10 * MS)], vec![Some(10 * MS); 2], 3, &fds).await;
        assert_eq!(r, Ok(1));
        assert_eq!(log, ["\"failed0\"@300", "\"connected1\"@310"]);
        assert_eq!(took, 310 * MS);
        drop(flood);
        assert_eq!(fds.used(), (0, 0), "nothing held after");
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_original_may_still_win_the_race() {
        // wan1 answers at 60 ms (slow, alive); wan2 raced at 40 ms takes 100 ms.
        let (r, log, _) = run(vec![Peer::Answers(60 * MS), Peer::Answers(100 * MS)], vec![Some(10 * MS); 2], 3).await;
        assert_eq!(r, Ok(0));
        assert_eq!(log, ["\"hedged0\"@40", "\"connected0\"@60", "\"lost1\"@60"]);
    }

    #[tokio::test(start_paused = true)]
    async fn the_attempt_that_lost_a_race_is_handed_back_still_in_flight() {
        // wan1 answers at 60 ms but is raced at 40 ms; wan2 answers 5 ms later and wins.
        let t0 = Instant::now();
        let peers = vec![Peer::Answers(60 * MS), Peer::Answers(5 * MS)];
        let fds = Descriptors::new(100, 0);
        let spare = || fds.take(Side::Streams, 1);
        let won = match drive(&mut plan(3), &mut Fixed(vec![Some(10 * MS); 2]), dialer(peers), spare, |_| {}).await {
            Ok(w) => w,
            Err((_, e)) => panic!("no path won: {e}"),
        };
        assert_eq!(won.index, 1);
        let loser = won.loser.expect("the slow attempt is handed back");
        assert_eq!((loser.index, loser.started), (0, t0));
        assert_eq!(fds.used(), (1, 0), "the loser's socket holds the race's descriptor");
        // Finished, it connects: wan1 was slow, not lossy.
        let Loser { dialing, fd, .. } = loser;
        let (i, at) = dialing.await.expect("the slow attempt connects");
        assert_eq!((i, at - t0), (0, 60 * MS));
        drop(fd);
        assert_eq!(fds.used(), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn refusals_retry_on_the_next_path_and_the_last_waits_long() {
        // Two refusals, then a path that answers only after 2 s: within the final timeout.
        let peers = vec![Peer::Fails(MS), Peer::Fails(MS), Peer::Answers(2000 * MS)];
        let (r, log, took) = run(peers, vec![Some(500 * MS); 3], 3).await;
        assert_eq!(r, Ok(2));
        assert_eq!(log, ["\"failed0\"@1", "\"failed1\"@2", "\"connected2\"@2002"]);
        assert_eq!(took, 2002 * MS);
    }

    #[tokio::test(start_paused = true)]
    async fn all_silent_fails_after_the_short_then_the_final_timeout() {
        let (r, log, took) = run(vec![Peer::Silent, Peer::Silent], vec![Some(100 * MS); 2], 3).await;
        assert_eq!(r, Err(io::ErrorKind::TimedOut));
        // wan1's hedge (4×100 ms, capped at connect_timeout) and its timeout fall together
        // at 300 ms: the failure wins, and wan2, the last path, gets the long timeout (3 s).
        assert_eq!(log, ["\"failed0\"@300", "\"failed1\"@3300"]);
        assert_eq!(took, 3300 * MS);
    }

    #[tokio::test]
    async fn unavailable_says_why() {
        let u = |kind| Unavailable { attempts: 1, last: io::Error::from(kind) };
        assert_eq!(u(io::ErrorKind::ConnectionRefused).cause(), Cause::Refused);
        assert_eq!(u(io::ErrorKind::TimedOut).cause(), Cause::TimedOut);
        assert_eq!(u(io::ErrorKind::HostUnreachable).cause(), Cause::Unreachable);
        let emfile = Unavailable { attempts: 1, last: io::Error::from_raw_os_error(libc::EMFILE) };
        assert_eq!(emfile.cause(), Cause::LocalResources);
        assert!(u(io::ErrorKind::ConnectionRefused).to_string().contains("refused"));
    }
}
