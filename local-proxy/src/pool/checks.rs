//! The active-check loop of one pool: every member probed at once each `interval`, each
//! outcome fed to the pool's health state; while a member changes state (up but failing,
//! down but answering) the next round comes after a quarter of the interval (HAProxy's
//! `fastinter`), so the verdict lands within about `fall × interval` at most.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use shared::health::{Outcome, Source};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::probe::{self, Probe};
use super::Pool;

/// Shortest round interval while a member changes state.
const FAST_FLOOR: Duration = Duration::from_millis(50);

/// Probe `pool`'s members (`probes[i]` checks member i) until `stop`.
pub async fn run(pool: Arc<Pool>, probes: Vec<Probe>, stop: CancellationToken) {
    let (interval, timeout) = (pool.health.interval, pool.health.timeout);
    loop {
        let round = tokio::time::Instant::now();
        let results = tokio::select! {
            r = join_all(probes.iter().map(|p| probe::run(p, timeout))) => r,
            _ = stop.cancelled() => return,
        };
        for (i, result) in results.into_iter().enumerate() {
            match result {
                Ok(latency) => pool.record(i, Outcome::Ok { latency }, Source::Probe, None),
                Err(failure) if failure.local => {
                    // Our own exhaustion (the open-files limit): not the upstream's failure.
                    shared::warn_every_second!(name = %pool.name, reason = %failure.reason, "health check could not run");
                    pool.record(i, Outcome::Local, Source::Probe, Some(&failure.reason));
                }
                Err(failure) => {
                    if let Some(m) = pool.members.get(i) {
                        debug!(name = %pool.name, upstream = %m.label, reason = %failure.reason, "health check failed");
                        m.state.count_failure("probe");
                    }
                    pool.record(i, Outcome::Failed, Source::Probe, Some(&failure.reason));
                }
            }
        }
        pool.round_done();
        let changing = pool.members.iter().any(|m| m.state.health_snapshot().transitional());
        let next = if changing { (interval / 4).max(FAST_FLOOR) } else { interval };
        tokio::select! {
            _ = tokio::time::sleep_until(shared::ports::tokio_deadline(round, next)) => {}
            _ = stop.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Check, Health};
    use crate::pool::Owner;
    use shared::balance::Policy;

    /// A dead member goes down after `fall` rounds (fast rounds while it changes state), the
    /// live one stays up; the time it took is printed, not asserted.
    #[tokio::test]
    async fn a_refusing_member_goes_down_and_the_live_one_stays() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let live = listener.local_addr().unwrap();
        let dead = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let health = Health {
            check: Check::Tcp,
            interval: Duration::from_millis(200),
            timeout: Duration::from_millis(150),
            rise: 2,
            fall: 3,
            fail_on_5xx: false,
        };
        let members = [(live.to_string(), 1, false), (dead.to_string(), 1, false)];
        let pool = Arc::new(Pool::new(Owner::Stream, "s", members, Policy::RoundRobin, health, false, None));
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(pool.clone(), vec![Probe::Tcp(live), Probe::Tcp(dead)], stop.clone()));
        let start = std::time::Instant::now();
        for _ in 0..100 {
            if !pool.members[1].state.is_up() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!pool.members[1].state.is_up(), "the refusing member stays up");
        println!("down after {:?} (fall 3 x interval 200ms = 600ms)", start.elapsed());
        assert!(pool.members[0].state.is_up());
        assert_eq!(pool.pick(crate::pool::Tried::default()), Some(0));
        stop.cancel();
        task.await.unwrap();
        drop(listener);
    }
}
