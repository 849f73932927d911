//! Access log files: one writer thread per file, fed through a bounded channel.
//!
//! Requests never wait for the disk: a line is handed over with `try_send`, and when the
//! channel is full (the disk is slower than the traffic) the line is dropped and counted
//! (`local_proxy_access_log_dropped_total`). The writer is a plain thread, not a task, so a
//! stalled `write` stalls only it. Files are opened with `O_APPEND` (lines from several
//! writers or processes never interleave mid-line: each batch of whole lines is one write),
//! created 0640, and reopened after [`reopen`] (SIGUSR1, SIGHUP), which is what logrotate's
//! `postrotate` needs: rename the file, signal, and new lines go to a new file.
//!
//! Files are shared process-wide by path: sites logging to the same file share one writer,
//! and a reload that keeps a path keeps its writer (and its queued lines).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use tracing::warn;

use crate::metrics::names;

/// Lines queued per file before new ones are dropped (about 4 MB of typical lines).
pub const QUEUE: usize = 8192;
/// Mode of a newly created log file: the owner writes, its group (log readers) reads.
const MODE: u32 = 0o640;
/// A batch written at once stops growing past this many bytes (what [`LINGER`] gathers at
/// some 200,000 lines a second; a smaller cap would bound the writer's rate instead).
const BATCH_BYTES: usize = 1024 * 1024;
/// How often an idle writer looks whether it should reopen its file.
const REOPEN_POLL: Duration = Duration::from_millis(200);
/// After the first line of a batch, how long the writer lets more gather before writing.
/// Without it a busy proxy wakes the writer for nearly every line (a futex wake and two
/// context switches per request: 30 % of HTTPS throughput on 2 cores, bench/access-log);
/// with it, at most one wake per this interval, and lines reach the file this much later.
const LINGER: Duration = Duration::from_millis(5);

/// Bumped by [`reopen`]; each writer reopens its file when it sees a new value.
static GENERATION: AtomicU64 = AtomicU64::new(0);
/// Open writers by path (weak: a writer no route uses any more ends).
static WRITERS: OnceLock<Mutex<HashMap<PathBuf, Weak<Sink>>>> = OnceLock::new();

/// Ask every access log writer to reopen its file (logrotate's `postrotate`).
pub fn reopen() {
    GENERATION.fetch_add(1, Ordering::SeqCst);
}

/// The sending side of one log file.
#[derive(Debug)]
pub struct Sink {
    tx: SyncSender<Vec<u8>>,
    /// The path as a metric label (bounded: it comes from the config).
    label: String,
    /// Lines this sink could not queue (also in the metric).
    dropped: AtomicU64,
}

impl Sink {
    /// Queue one line (without its newline); never waits.
    pub fn send(&self, mut line: Vec<u8>) {
        line.push(b'\n');
        // Full: the disk is behind. Disconnected cannot happen while a sink exists (its
        // thread ends only when every sink is gone), but would lose the line just the same.
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = self.tx.try_send(line) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            metrics::counter!(names::ACCESS_LOG_DROPPED, "log" => self.label.clone()).increment(1);
        }
    }

    /// Lines dropped so far because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// The writer for `path`: the running one, or a new one with the file opened now (so an
/// unwritable path refuses the config that names it).
pub fn open(path: &Path) -> std::io::Result<Arc<Sink>> {
    let writers = WRITERS.get_or_init(Default::default);
    let mut writers = writers.lock().unwrap_or_else(|e| e.into_inner());
    writers.retain(|_, w| w.strong_count() > 0);
    if let Some(sink) = writers.get(path).and_then(Weak::upgrade) {
        return Ok(sink);
    }
    let file = open_file(path)?;
    let (tx, rx) = sync_channel(QUEUE);
    let label = path.display().to_string();
    let owned = path.to_path_buf();
    let thread_label = label.clone();
    std::thread::Builder::new().name("access-log".into()).spawn(move || write_loop(owned, file, rx, thread_label))?;
    let sink = Arc::new(Sink { tx, label, dropped: AtomicU64::new(0) });
    writers.insert(path.to_path_buf(), Arc::downgrade(&sink));
    Ok(sink)
}

fn open_file(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().append(true).create(true).mode(MODE).open(path)
}

/// Write queued lines in batches until every [`Sink`] of this file is gone.
fn write_loop(path: PathBuf, file: File, rx: Receiver<Vec<u8>>, label: String) {
    let mut file = Some(file);
    let mut seen = GENERATION.load(Ordering::SeqCst);
    let mut batch = Vec::with_capacity(BATCH_BYTES);
    // A full disk fails every batch: warn when writing starts failing, not at each batch.
    let mut failing = false;
    loop {
        let first = match rx.recv_timeout(REOPEN_POLL) {
            Ok(line) => Some(line),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let generation = GENERATION.load(Ordering::SeqCst);
        if generation != seen || file.is_none() {
            seen = generation;
            // The old file (renamed by logrotate) is closed once the new one is open; while
            // the new one cannot be opened (tried again at each batch and poll), lines are
            // dropped and counted.
            match open_file(&path) {
                Ok(f) => file = Some(f),
                Err(e) => {
                    if !failing {
                        warn!(path = %path.display(), error = %e, "access log: cannot reopen");
                    }
                    failing = true;
                    file = None;
                }
            }
        }
        let Some(first) = first else { continue };
        std::thread::sleep(LINGER);
        batch.clear();
        batch.extend_from_slice(&first);
        while batch.len() < BATCH_BYTES {
            match rx.try_recv() {
                Ok(line) => batch.extend_from_slice(&line),
                Err(_) => break,
            }
        }
        let lines = batch.iter().filter(|b| **b == b'\n').count() as u64;
        let written = match file.as_mut() {
            Some(f) => f.write_all(&batch),
            None => Err(std::io::Error::other("not open")),
        };
        match written {
            Ok(()) => {
                if std::mem::take(&mut failing) {
                    tracing::info!(path = %path.display(), "access log: writing again");
                }
                metrics::counter!(names::ACCESS_LOG_LINES, "log" => label.clone()).increment(lines)
            }
            Err(e) => {
                metrics::counter!(names::ACCESS_LOG_DROPPED, "log" => label.clone()).increment(lines);
                if !failing {
                    warn!(path = %path.display(), error = %e, lines, "access log: write failed; lines dropped and counted until it works again");
                }
                failing = true;
                // Try a fresh open before the next batch.
                file = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::io::Read;
    use std::time::Instant;

    /// A disk that stops taking writes: the log is a FIFO whose reader never reads, so the
    /// writer thread blocks once the pipe is full. Sending goes on without waiting; what
    /// the queue cannot hold is dropped and counted; reading then drains whole lines.
    #[test]
    fn a_stalled_file_drops_and_counts_lines_instead_of_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("stalled.log");
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
        // Opening a FIFO for writing waits for a reader: open the read end alongside.
        let reader = {
            let fifo = fifo.clone();
            std::thread::spawn(move || File::open(fifo).unwrap())
        };
        let sink = open(&fifo).unwrap();
        let mut reader = reader.join().unwrap();

        const LINES: usize = 50_000;
        let line = vec![b'x'; 99];
        let start = Instant::now();
        for _ in 0..LINES {
            sink.send(line.clone());
        }
        let took = start.elapsed();
        let dropped = sink.dropped() as usize;
        println!("{LINES} lines sent in {took:?} against a stalled file: {dropped} dropped");
        // At most the queue, the pipe's buffer (64 KiB) and the batch the writer is stuck
        // writing (up to BATCH_BYTES, and the line that passes it) got through.
        let through = QUEUE + (64 * 1024 + BATCH_BYTES) / 100 + 2;
        assert!(dropped >= LINES - through, "only {dropped} dropped");
        assert!(dropped < LINES);

        // The reader drains: what was queued arrives as whole 100-byte lines.
        drop(sink);
        let mut all = Vec::new();
        reader.read_to_end(&mut all).unwrap();
        assert_eq!(all.len() % 100, 0);
        assert_eq!(all.len() / 100, LINES - dropped);
        assert!(all.chunks(100).all(|l| l[99] == b'\n' && l[..99].iter().all(|b| *b == b'x')));
    }
}
