//! The async runtime both binaries serve on, started the same way: `threads` worker threads
//! (`None`: one per core; read at start only, a reload cannot change it), and the process's
//! exit status from what the server returns.

use std::fmt::Display;
use std::future::Future;
use std::process::ExitCode;

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
