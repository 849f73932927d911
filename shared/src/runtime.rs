//! The async runtime both binaries serve on, started the same way: one event loop per thread
//! (`serve_per_thread`, `crate::workers`), `threads` of them (`None`: one per core; read at
//! start only, a reload cannot change it; `threads = 1` is the calling thread alone), and the
//! process's exit status from what the server returns.

use std::fmt::Display;
use std::future::Future;
use std::process::ExitCode;

pub use crate::workers::Workers;

/// One event loop per thread, the calling thread's and `threads - 1` more (`None`: one per
/// core), each a current-thread runtime: `run()` gets the [`Workers`] to spread connections
/// and UDP sockets over, and everything else it spawns (probes, reloads, the admin API) stays
/// on the calling thread. Each loop is tokio's current-thread scheduler; the multi-thread runtime
/// cost more CPU per request: at `threads = 1` its one worker ran the tasks beside the thread
/// blocked on `run()` and paid for cross-thread queues on every wake-up (the local proxy's
/// keep-alive requests 2-15 % more CPU, bench/results/2026-12-02-vm-tls-cpu.md), and at 2 its
/// shared reactor and task stealing 12-15 % more per relayed request than one loop per
/// thread (bench/results/2026-12-02-vm-threads.md).
pub fn serve_per_thread<F, E>(threads: Option<usize>, name: &str, run: impl FnOnce(Workers) -> F) -> ExitCode
where
    F: Future<Output = Result<(), E>>,
    E: Display,
{
    let threads = threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let workers = match Workers::start(threads, name) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("cannot start {threads} worker threads: {e}");
            return ExitCode::FAILURE;
        }
    };
    serve_on(tokio::runtime::Builder::new_current_thread(), || run(workers))
}

fn serve_on<F, E>(mut builder: tokio::runtime::Builder, run: impl FnOnce() -> F) -> ExitCode
where
    F: Future<Output = Result<(), E>>,
    E: Display,
{
    let runtime = match builder.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}
