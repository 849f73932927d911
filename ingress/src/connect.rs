//! Connecting upstream: pick a path, connect with a short timeout while other paths remain
//! and a long one on the last try, retry on the next path. A WAN that died between two
//! health checks costs a retry, not a client connection.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::health::{Outcome, Source};
use crate::pool::{Path, Pool, Tried};

/// Every attempt failed; the last error says why.
#[derive(Debug, thiserror::Error)]
#[error("no path to home answered after {attempts} attempt(s); last: {last}")]
pub struct Unavailable {
    pub attempts: u32,
    pub last: io::Error,
}

/// Connect to `port` (as seen on each path) through the pool.
pub async fn connect(pool: &Pool, port: u16) -> Result<(TcpStream, Arc<Path>), Unavailable> {
    let mut tried = Tried::default();
    // Built only on failure: the success path allocates nothing here.
    let mut last: Option<io::Error> = None;
    let mut attempts = 0;
    while attempts < pool.cfg.max_attempts {
        let Some((index, path)) = pool.pick(tried) else {
            break;
        };
        tried.insert(index);
        attempts += 1;
        let is_last = attempts == pool.cfg.max_attempts || pool.remaining(tried) == 0;
        // Short while another path can take over; long enough on the last try for a lost
        // SYN to be retransmitted (after 1 s) rather than failing the client.
        let timeout = if is_last { pool.cfg.final_connect_timeout } else { pool.cfg.connect_timeout };
        let addr = path.addr(port);
        let start = Instant::now();
        let result = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(r) => r,
            Err(_) => {
                Err(io::Error::new(io::ErrorKind::TimedOut, format!("connect timed out after {}", fmt_ms(timeout))))
            }
        };
        match result {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                path.state.m_connects.increment(1);
                pool.record(index, Outcome::Ok { latency: start.elapsed() }, Source::Traffic);
                return Ok((stream, path.clone()));
            }
            Err(e) => {
                tracing::debug!(pool = %pool.name, path = %path.name, %addr, error = %e, "connect failed, trying next path");
                pool.record(index, Outcome::Failed, Source::Traffic);
                last = Some(e);
            }
        }
    }
    let last = last.unwrap_or_else(|| io::Error::new(io::ErrorKind::NotFound, "pool has no paths"));
    Err(Unavailable { attempts, last })
}

fn fmt_ms(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}
