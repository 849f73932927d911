//! The async runtime both binaries serve on, started the same way: `threads` threads (`None`:
//! one per core; read at start only, a reload cannot change it; both binaries run
//! `threads = 1` on the calling thread alone), and the process's exit status from what the
//! server returns. The ingress runs one event loop per thread (`serve_per_thread`,
//! `crate::workers`); the local proxy, tokio's multi-thread runtime at `threads > 1`.

use std::fmt::Display;
use std::future::Future;
use std::process::ExitCode;

pub use crate::workers::Workers;

/// Builds the multi-thread runtime and blocks on `run()`: exit status 0 when it returns
/// `Ok`, 1 when it fails (logged) or the runtime cannot start (said on stderr).
pub fn serve<F, E>(threads: Option<usize>, run: impl FnOnce() -> F) -> ExitCode
where
    F: Future<Output = Result<(), E>>,
    E: Display,
{
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = threads {
        // Benchmarks match nginx's worker_processes and HAProxy's nbthread with it.
        builder.worker_threads(n);
    }
    serve_on(builder, run)
}

/// As [`serve`], except that one thread (`threads = Some(1)`) is the calling thread itself
/// (tokio's current-thread scheduler): `run()` and every task it spawns share it, where the
/// multi-thread runtime runs the tasks on one worker beside the thread blocked on `run()`
/// and pays for its cross-thread run queues and wake-ups on every task wake. Blocking work
/// still goes to the blocking pool. The local proxy at one thread (bench/tls keep-alive, the
/// two builds in the same 3 rounds): server CPU per request 19.5 vs 20.3 µs (HTTP/1.1) and
/// 18.9 vs 19.6 µs (h2), 2-15 % lower per round (bench/results/2026-12-02-vm-tls-cpu.md);
/// the ingress's new-connection HTTP 0.94× HAProxy from 0.88× (medians of 5 and 7 bench runs,
/// within their spread; bench/results/2026-12-02-vm-newconn.md).
pub fn serve_one_thread_inline<F, E>(threads: Option<usize>, run: impl FnOnce() -> F) -> ExitCode
where
    F: Future<Output = Result<(), E>>,
    E: Display,
{
    if threads == Some(1) {
        serve_on(tokio::runtime::Builder::new_current_thread(), run)
    } else {
        serve(threads, run)
    }
}

/// One event loop per thread, the calling thread's and `threads - 1` more (`None`: one per
/// core), each a current-thread runtime: `run()` gets the [`Workers`] to spread connections
/// over, and everything else it spawns (probes, reloads, UDP, the admin API) stays on the
/// calling thread. At `threads = 1` this is [`serve_one_thread_inline`].
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
