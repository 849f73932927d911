//! systemd's service watchdog (`WatchdogSec=` in the unit): systemd passes the interval in
//! `WATCHDOG_USEC` and restarts the service when no `WATCHDOG=1` arrives within it. The ping
//! is sent by a task on the binary's own async runtime, so it proves that runtime still
//! schedules work: a wedged runtime (every worker blocked) stops pinging and is restarted,
//! which a thread of its own would hide.

use std::time::Duration;

/// The watchdog interval systemd asks for; none when the watchdog is off, or meant for
/// another process (`WATCHDOG_PID` set to a pid not ours).
pub fn interval() -> Option<Duration> {
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.trim().parse::<u32>().ok() != Some(std::process::id()) {
            return None;
        }
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.trim().parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// What both binaries start on their main runtime: the test hook ([`arm_test_hook`]), and
/// under systemd's watchdog the pings, from a task on this runtime (a wedged runtime must
/// miss them), withheld while another of `workers`' loops misses its heartbeats for half the
/// interval: its connections are stuck with it, and no other thread can take them over.
pub fn start(workers: &crate::workers::Workers) -> std::io::Result<()> {
    arm_test_hook(workers.handles())?;
    if let Some(every) = interval() {
        let beats = workers.heartbeats(every / 8);
        tokio::spawn(run_checked(every, move || beats.stalled(every / 2)));
    }
    Ok(())
}

/// Pings `WATCHDOG=1` at half of `every` (systemd's advice), forever, while `stalled` names
/// no other thread's event loop (`crate::workers::Heartbeats`), so that systemd restarts a
/// process one of whose loops is wedged. Spawn it on the runtime whose liveness it vouches
/// for.
async fn run_checked(every: Duration, stalled: impl Fn() -> Option<usize>) {
    let mut tick = tokio::time::interval((every / 2).max(Duration::from_millis(10)));
    // A late tick means the runtime was busy: ping once, do not burst.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut withheld = false;
    loop {
        tick.tick().await;
        if let Some(thread) = stalled() {
            if !withheld {
                tracing::error!(thread, "an event loop has stopped running its tasks; watchdog pings withheld");
            }
            withheld = true;
            continue;
        }
        if withheld {
            tracing::warn!("every event loop runs again; watchdog pings resumed");
            withheld = false;
        }
        if let Err(e) = crate::notify::notify("WATCHDOG=1") {
            tracing::warn!(error = %e, "sd_notify WATCHDOG=1");
        }
    }
}

/// The test hook's switch: with `TEST_WEDGE_RUNTIME_ON_SIGUSR2=1` in its environment a
/// binary wedges its runtime on SIGUSR2, so a test can watch the pings stop; with `=workers`,
/// only the event loops of the other threads (`crate::workers`). Not a config knob (and
/// outside both binaries' config environment prefixes): tests only.
pub const TEST_HOOK_ENV: &str = "TEST_WEDGE_RUNTIME_ON_SIGUSR2";

/// Arms the test hook when [`TEST_HOOK_ENV`] is `1` or `workers` (then `others`, the other
/// threads' loops, are the ones wedged); otherwise does nothing.
pub fn arm_test_hook(others: Vec<tokio::runtime::Handle>) -> std::io::Result<()> {
    let only_others = match std::env::var(TEST_HOOK_ENV).as_deref() {
        Ok("1") => false,
        Ok("workers") => true,
        _ => return Ok(()),
    };
    let mut usr2 = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined2())?;
    tokio::spawn(async move {
        if usr2.recv().await.is_some() {
            if only_others {
                tracing::warn!(loops = others.len(), "test hook: wedging the other threads' event loops");
                for loop_ in others {
                    loop_.spawn(async { block_for_good() });
                }
            } else {
                wedge_runtime();
            }
        }
    });
    Ok(())
}

fn block_for_good() {
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// Blocks every worker thread of the current multi-thread runtime for good (the watchdog
/// test's stand-in for a deadlock).
fn wedge_runtime() {
    let workers = tokio::runtime::Handle::current().metrics().num_workers();
    tracing::warn!(workers, "test hook: wedging every runtime worker");
    for _ in 0..workers.max(1) * 2 {
        tokio::spawn(async { block_for_good() });
    }
}
