//! `limits.threads` sets the runtime's worker threads (as HAProxy's nbthread), read at start;
//! 1 is the main thread alone.

mod common;

use common::{free_port, Child};
use std::time::{Duration, Instant};

/// Threads of `pid` named like tokio's workers.
fn workers(pid: u32) -> usize {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return 0 };
    tasks
        .flatten()
        .filter(|t| std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.starts_with("tokio-rt-worker")))
        .count()
}

#[test]
fn the_runtime_has_as_many_workers_as_configured() {
    let port = free_port();
    let dir = std::env::temp_dir().join(format!("ingress-threads-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    for threads in [1usize, 3] {
        let file = dir.join(format!("t{threads}.toml"));
        std::fs::write(
            &file,
            format!(
                "[limits]\nthreads = {threads}\n[pool.p]\npaths = [{{ name = \"a\", address = \"127.0.0.2:9\" }}]\n\
                 [[service]]\nname = \"s\"\nlisten = [\"127.0.0.1:{port}\"]\npool = \"p\"\n"
            ),
        )
        .expect("write");
        let child = Child::ingress(&file);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "ingress never listened");
            std::thread::sleep(Duration::from_millis(20));
        }
        // threads = 1 runs the runtime on the main thread itself (current-thread scheduler):
        // no worker thread beside it.
        let want = if threads == 1 { 0 } else { threads };
        assert_eq!(workers(child.id()), want, "worker threads for threads = {threads}");
        drop(child);
    }
    let _ = std::fs::remove_dir_all(&dir);
}
