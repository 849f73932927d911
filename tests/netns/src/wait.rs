//! Bounded waiting: poll a condition until it holds or a deadline passes. Never a bare sleep.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};

/// Calls `f` every `poll` until it returns `Ok`, for at most `timeout`.
/// On timeout the error names `what` and carries the last error `f` returned.
pub fn wait_until<T>(what: &str, timeout: Duration, poll: Duration, mut f: impl FnMut() -> Result<T>) -> Result<T> {
    let start = Instant::now();
    loop {
        let last = match f() {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        if start.elapsed() >= timeout {
            return Err(anyhow!(
                "timed out after {:.1}s waiting for {what}: last error: {last:#}",
                start.elapsed().as_secs_f64()
            ));
        }
        std::thread::sleep(poll);
    }
}

/// Turns a boolean check into the `Result` [`wait_until`] expects.
pub fn check(ok: bool, msg: impl FnOnce() -> String) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(anyhow!(msg()))
    }
}

/// A stop flag for a test's load threads, set when the test ends, by a panic too: threads that
/// loop until told to stop would otherwise go on until the test binary exits.
#[derive(Debug, Default)]
pub struct StopOnDrop(pub Arc<AtomicBool>);

impl StopOnDrop {
    /// The flag, for a thread to poll.
    pub fn flag(&self) -> Arc<AtomicBool> {
        self.0.clone()
    }

    pub fn stop(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.stop();
    }
}
