//! Connecting upstream: pick a path and connect; if it has not answered within a few times
//! its usual connect latency, race a second path against it (Happy Eyeballs across WANs);
//! retry on further paths up to `max_attempts`. A WAN that died between two health checks
//! then costs a client tens of milliseconds, not a failed connection or a full timeout.

use std::future::Future;
use std::io;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::health::{Outcome, Source};
use crate::pool::{Kind, Path, Pool, Tried};

/// Every attempt failed; the last error says why.
#[derive(Debug, thiserror::Error)]
#[error("no path to home answered after {attempts} attempt(s); last: {last}")]
pub struct Unavailable {
    pub attempts: u32,
    pub last: io::Error,
}

/// Hedge no earlier than this: below it, scheduling noise would start needless races.
const HEDGE_FLOOR: Duration = Duration::from_millis(30);

struct Attempt {
    index: usize,
    path: Arc<Path>,
    started: Instant,
}

async fn attempt(addr: std::net::SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(r) => r,
        Err(_) => {
            Err(io::Error::new(io::ErrorKind::TimedOut, format!("connect timed out after {}ms", timeout.as_millis())))
        }
    }
}

/// Connect to `port` (as seen on each path) through the pool.
pub async fn connect(pool: &Arc<Pool>, port: u16) -> Result<(TcpStream, Arc<Path>), Unavailable> {
    let cfg = &pool.cfg;
    let mut tried = Tried::default();
    let mut attempts = 0u32;
    // Two attempt slots: the current one and, after the hedge delay, a racer.
    let mut slots: [Option<Attempt>; 2] = [None, None];
    let mut futs = [pin!(None), pin!(None)];
    let hedge_timer = pin!(tokio::time::sleep(Duration::MAX / 4));
    let mut hedge_timer: Pin<&mut tokio::time::Sleep> = hedge_timer;

    // Start an attempt in a free slot; false when no path is left to try.
    let start = |slot: usize,
                 slots: &mut [Option<Attempt>; 2],
                 futs: &mut [Pin<&mut Option<_>>; 2],
                 tried: &mut Tried,
                 attempts: &mut u32|
     -> bool {
        if *attempts >= cfg.max_attempts {
            return false;
        }
        let Some((index, path)) = pool.pick(*tried, Kind::Tcp) else { return false };
        tried.insert(index);
        *attempts += 1;
        let is_last = *attempts == cfg.max_attempts || pool.remaining(*tried) == 0;
        // Short while another path can take over; long enough on the last try for a lost
        // SYN to be retransmitted (after 1 s) rather than failing the client.
        let timeout = if is_last { cfg.final_connect_timeout } else { cfg.connect_timeout };
        futs[slot].set(Some(attempt(path.addr(port), timeout)));
        slots[slot] = Some(Attempt { index, path: path.clone(), started: Instant::now() });
        true
    };

    if !start(0, &mut slots, &mut futs, &mut tried, &mut attempts) {
        return Err(Unavailable { attempts, last: no_paths() });
    }
    let arm = |slots: &[Option<Attempt>; 2], timer: &mut Pin<&mut tokio::time::Sleep>| -> bool {
        let Some(a) = slots.iter().flatten().next() else { return false };
        // A path not yet measured is judged by the pool's best, else by a WAN-ish 50 ms.
        let usual = a
            .path
            .latency()
            .or_else(|| pool.paths.iter().filter_map(|p| p.latency()).min())
            .unwrap_or(Duration::from_millis(50));
        let delay = (usual * 4).clamp(HEDGE_FLOOR, cfg.connect_timeout.max(HEDGE_FLOOR));
        timer.as_mut().reset(a.started + delay);
        true
    };
    let mut hedge_armed = arm(&slots, &mut hedge_timer) && pool.remaining(tried) > 0;

    let last = loop {
        enum Event {
            Done(usize, io::Result<TcpStream>),
            Hedge,
        }
        let ev = std::future::poll_fn(|cx: &mut Context<'_>| {
            for (i, f) in futs.iter_mut().enumerate() {
                if let Some(fut) = f.as_mut().as_pin_mut() {
                    if let Poll::Ready(r) = fut.poll(cx) {
                        f.set(None);
                        return Poll::Ready(Event::Done(i, r));
                    }
                }
            }
            if hedge_armed && hedge_timer.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Event::Hedge);
            }
            Poll::Pending
        })
        .await;
        match ev {
            Event::Hedge => {
                hedge_armed = false;
                let free = if slots[0].is_none() { 0 } else { 1 };
                if slots[free].is_none() && start(free, &mut slots, &mut futs, &mut tried, &mut attempts) {
                    if let Some(slow) = &slots[1 - free] {
                        slow.path.state.m_hedges.increment(1);
                        tracing::debug!(pool = %pool.name, slow = %slow.path.name, "connect slow; racing another path");
                    }
                }
            }
            Event::Done(i, Ok(stream)) => {
                let Some(won) = slots[i].take() else { continue };
                let _ = stream.set_nodelay(true);
                won.path.state.m_connects.increment(1);
                pool.record(won.index, Outcome::Ok { latency: won.started.elapsed() }, Source::Traffic);
                // The loser of a race is slow, not yet known dead: a jittery WAN must not be
                // taken down by a lost race. A background connect with the normal timeout
                // gives the verdict (its connection, if any, is closed at once).
                if let Some(lost) = slots[1 - i].take() {
                    verify_in_background(pool.clone(), lost, port);
                }
                return Ok((stream, won.path));
            }
            Event::Done(i, Err(e)) => {
                let Some(failed) = slots[i].take() else { continue };
                tracing::debug!(pool = %pool.name, path = %failed.path.name, error = %e, "connect failed");
                pool.record(failed.index, outcome_of(&e), Source::Traffic);
                let racing = slots[1 - i].is_some();
                if !racing {
                    if !start(i, &mut slots, &mut futs, &mut tried, &mut attempts) {
                        break e;
                    }
                    hedge_armed = arm(&slots, &mut hedge_timer) && pool.remaining(tried) > 0;
                }
            }
        }
    };
    Err(Unavailable { attempts, last })
}

fn verify_in_background(pool: Arc<Pool>, lost: Attempt, port: u16) {
    let timeout = pool.cfg.connect_timeout;
    tokio::spawn(async move {
        let start = Instant::now();
        let outcome = match attempt(lost.path.addr(port), timeout).await {
            Ok(_) => Outcome::Ok { latency: start.elapsed() },
            Err(e) => outcome_of(&e),
        };
        pool.record(lost.index, outcome, Source::Traffic);
    });
}

/// A failed connect is the path's failure, unless this process was out of resources.
fn outcome_of(e: &io::Error) -> Outcome {
    if crate::listener::is_resource_exhaustion(e) {
        Outcome::Local
    } else {
        Outcome::Failed
    }
}

fn no_paths() -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, "pool has no paths")
}
