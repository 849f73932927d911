//! Access log files: lines appended to a shared in-memory buffer per file, written by one
//! writer thread per file (nginx's `access_log ... buffer= flush=` model).
//!
//! A request formats its line into a reused buffer of its own thread, then appends it to the
//! file's buffer under a short lock: no allocation per line, nothing handed to or freed on
//! another thread, no wake-up per line. The writer writes the buffer's whole lines in one
//! `write` when it reaches [`FLUSH_BYTES`] (the appending request wakes it, once per buffer)
//! or [`FLUSH_INTERVAL`] after its last write, whichever comes first; while it writes,
//! requests fill a second buffer. Requests never wait for the disk: when the lines waiting
//! reach [`MAX_PENDING`] bytes (the disk is slower than the traffic, or the writer is stuck
//! in a `write`), new ones are dropped and counted (`local_proxy_access_log_dropped_total`).
//! The writer is a plain thread, not a task, so a stalled `write` stalls only it.
//!
//! Files are opened with `O_APPEND` (lines from several writers or processes never
//! interleave mid-line: each write is whole lines), created 0640, and reopened after
//! [`reopen`] (SIGUSR1, SIGHUP), which wakes every writer to do it at once, which
//! is what logrotate's `postrotate` needs: rename the file, signal, and new lines go to a new
//! file. [`flush_all`] writes what is buffered (the end of the drain, before the process
//! leaves); the last [`Sink`] of a file gone, its writer writes what is left and ends.
//!
//! Files are shared process-wide by path: sites logging to the same file share one writer,
//! and a reload that keeps a path keeps its writer (and its buffered lines). A file opened for
//! a config that is then refused (a reload, or the start) and that this writer created is
//! removed again when its last sink goes, unless a line was written to it: a refused config
//! leaves nothing behind.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError, Weak};
use std::time::{Duration, Instant};

use tracing::warn;

use crate::metrics::names;

/// The writer is woken to write when this many bytes of lines are buffered (nginx's usual
/// `buffer=64k`): at 30,000 requests/s of ~500-byte lines, one wake and one `write` every
/// ~4 ms instead of one per line.
pub const FLUSH_BYTES: usize = 64 * 1024;
/// A line waits at most about this long in the buffer when traffic is too light to fill
/// [`FLUSH_BYTES`] (nginx's `flush=`). The default of an access log's `flush`.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(100);
/// Bytes of lines that may wait for the writer per file (about 7,000 typical lines, what the
/// queue of 8192 lines held before); beyond it, lines are dropped and counted. With the
/// buffer the writer is writing, a file's lines take at most twice this much memory.
pub const MAX_PENDING: usize = 4 * 1024 * 1024;
/// How long [`flush_all`] waits for the writers (a file on a stalled disk must not hold up
/// the process's exit for ever).
pub const FLUSH_ALL_WAIT: Duration = Duration::from_secs(5);
/// Mode of a newly created log file: the owner writes, its group (log readers) reads.
const MODE: u32 = 0o640;
/// A thread's line buffer is given back when a huge line has grown it past this.
const SCRATCH_KEEP: usize = 64 * 1024;

/// Bumped by [`reopen`]; each writer reopens its file when it sees a new value.
static GENERATION: AtomicU64 = AtomicU64::new(0);
/// Open writers by path (weak: a writer no route uses any more ends).
static WRITERS: OnceLock<Mutex<HashMap<PathBuf, Weak<Sink>>>> = OnceLock::new();
/// Every writer still running, for [`flush_all`] (those whose sinks are gone included: they
/// may still be writing their last lines).
static BUFFERS: OnceLock<Mutex<Vec<Weak<Shared>>>> = OnceLock::new();

thread_local! {
    /// Where this thread formats a line before appending it to a file's buffer.
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(1024));
}

/// Ask every access log writer to reopen its file (logrotate's `postrotate`), now: each is
/// woken, whatever its `flush` interval (an hour's would leave lines going to the renamed
/// file, which logrotate may compress or delete meanwhile).
pub fn reopen() {
    GENERATION.fetch_add(1, Ordering::SeqCst);
    let Some(buffers) = BUFFERS.get() else { return };
    let buffers: Vec<Arc<Shared>> =
        buffers.lock().unwrap_or_else(PoisonError::into_inner).iter().filter_map(Weak::upgrade).collect();
    for shared in buffers {
        shared.lock().woken = true;
        shared.wake.notify_one();
    }
}

/// When a writer writes and what it may hold; [`Params::default`] is what the proxy uses
/// (tests shrink them).
#[derive(Debug, Clone, Copy)]
pub struct Params {
    pub flush_bytes: usize,
    pub flush_interval: Duration,
    pub max_pending: usize,
}

impl Default for Params {
    fn default() -> Self {
        Self { flush_bytes: FLUSH_BYTES, flush_interval: FLUSH_INTERVAL, max_pending: MAX_PENDING }
    }
}

/// A file's buffer, shared by its sinks and its writer.
#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    /// The writer waits here for [`FLUSH_BYTES`], a flush request, the last sink's end or
    /// its timer.
    wake: Condvar,
    /// [`flush_all`] waits here for the writer.
    done: Condvar,
    params: Params,
}

#[derive(Debug, Default)]
struct State {
    /// Whole lines, newline-terminated, not yet taken by the writer.
    buf: Vec<u8>,
    /// Lines in `buf`.
    lines: u64,
    /// The writer has been woken for the current buffer (one wake per buffer, not per line).
    woken: bool,
    /// Flushes asked for ([`flush_all`]) and done.
    flush_asked: u64,
    flush_done: u64,
    /// Every sink is gone: write what is left and end.
    closed: bool,
    /// The writer's timer: `Params::flush_interval` at first, then what the last [`adopt`]
    /// asked for (a reload may change it).
    flush_interval: Duration,
    /// The writer has ended.
    ended: bool,
    /// A config naming this file is in use ([`adopt`]): the file stays when the writer ends,
    /// even empty.
    adopted: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Only whole updates happen under the lock (no panic can leave a half-appended line:
        // an append is one `extend_from_slice`).
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The appending side of one log file.
#[derive(Debug)]
pub struct Sink {
    shared: Arc<Shared>,
    /// The path as a metric label (bounded: it comes from the config).
    label: String,
    /// Lines this sink could not buffer (also in the metric).
    dropped: AtomicU64,
}

impl Sink {
    /// Format one line with `format` (which writes it without its newline) and buffer it;
    /// never waits for the disk. A `format` error leaves nothing behind and is returned.
    pub fn write<E>(&self, format: impl FnOnce(&mut Vec<u8>) -> Result<(), E>) -> Result<(), E> {
        let mut format = Some(format);
        let mut with = |scratch: &mut Vec<u8>| {
            scratch.clear();
            let result = format.take().map_or(Ok(()), |f| f(scratch));
            if result.is_ok() {
                scratch.push(b'\n');
                self.append(scratch);
            }
            if scratch.capacity() > SCRATCH_KEEP {
                *scratch = Vec::with_capacity(1024);
            }
            result
        };
        // The thread's own buffer; a fresh one while it is in use or being torn down (a line
        // written from a thread-local destructor).
        match SCRATCH.try_with(|s| s.try_borrow_mut().ok().map(|mut s| with(&mut s))) {
            Ok(Some(result)) => result,
            _ => with(&mut Vec::with_capacity(1024)),
        }
    }

    /// Buffer one whole line (ending in a newline) or drop and count it.
    fn append(&self, line: &[u8]) {
        let shared = &*self.shared;
        let mut state = shared.lock();
        if state.buf.len() + line.len() > shared.params.max_pending {
            drop(state);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            metrics::counter!(names::ACCESS_LOG_DROPPED, "log" => self.label.clone()).increment(1);
            return;
        }
        state.buf.extend_from_slice(line);
        state.lines += 1;
        let wake = !state.woken && state.buf.len() >= shared.params.flush_bytes;
        state.woken |= wake;
        drop(state);
        if wake {
            shared.wake.notify_one();
        }
    }

    /// Lines dropped so far because the buffer was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.wake.notify_one();
    }
}

/// The writer for `path`: the running one, or a new one writing buffered lines at least every
/// `flush`, with the file opened now (so an unwritable path refuses the config that names it).
/// A running writer keeps its timer until [`adopt`]: the config being loaded may still be
/// refused.
pub fn open(path: &Path, flush: Duration) -> std::io::Result<Arc<Sink>> {
    open_with(path, Params { flush_interval: flush, ..Params::default() })
}

/// The config naming `path` is in (the start's, or a reload's): its running writer writes at
/// least every `flush` from now on (a shorter timer applies to the lines already waiting), and
/// the file it created stays even if no line comes.
pub fn adopt(path: &Path, flush: Duration) {
    let Some(sink) = running(path) else { return };
    let mut state = sink.shared.lock();
    state.adopted = true;
    let changed = std::mem::replace(&mut state.flush_interval, flush) != flush;
    drop(state);
    if changed {
        sink.shared.wake.notify_one();
    }
}

/// The writer of `path`, if one runs.
fn running(path: &Path) -> Option<Arc<Sink>> {
    let writers = WRITERS.get_or_init(Default::default);
    let writers = writers.lock().unwrap_or_else(PoisonError::into_inner);
    writers.get(path).and_then(Weak::upgrade)
}

/// [`open`] with other [`Params`] (they apply only to a new writer).
pub fn open_with(path: &Path, params: Params) -> std::io::Result<Arc<Sink>> {
    let writers = WRITERS.get_or_init(Default::default);
    let mut writers = writers.lock().unwrap_or_else(PoisonError::into_inner);
    writers.retain(|_, w| w.strong_count() > 0);
    if let Some(sink) = writers.get(path).and_then(Weak::upgrade) {
        return Ok(sink);
    }
    let (file, created) = open_file(path)?;
    // The file as this writer made it, to tell it from one made at the same path later.
    let created = match created {
        true => file.metadata().ok().map(|m| FileId::of(&m)),
        false => None,
    };
    let state = State {
        buf: Vec::with_capacity(2 * params.flush_bytes),
        flush_interval: params.flush_interval,
        ..State::default()
    };
    let shared = Arc::new(Shared { state: Mutex::new(state), wake: Condvar::new(), done: Condvar::new(), params });
    let label = path.display().to_string();
    let (owned, for_writer, thread_label) = (path.to_path_buf(), shared.clone(), label.clone());
    std::thread::Builder::new()
        .name("access-log".into())
        .spawn(move || write_loop(owned, file, created, &for_writer, thread_label))?;
    let mut buffers = BUFFERS.get_or_init(Default::default).lock().unwrap_or_else(PoisonError::into_inner);
    buffers.retain(|b| b.strong_count() > 0);
    buffers.push(Arc::downgrade(&shared));
    drop(buffers);
    let sink = Arc::new(Sink { shared, label, dropped: AtomicU64::new(0) });
    writers.insert(path.to_path_buf(), Arc::downgrade(&sink));
    Ok(sink)
}

/// Have every writer write what is buffered now and wait (up to `wait` in all) until it has:
/// the end of the drain, so the last requests' lines are in the files when the process leaves.
/// Returns how many writers had not finished in time.
pub fn flush_all(wait: Duration) -> usize {
    let deadline = Instant::now() + wait;
    let buffers: Vec<Arc<Shared>> = match BUFFERS.get() {
        Some(b) => b.lock().unwrap_or_else(PoisonError::into_inner).iter().filter_map(Weak::upgrade).collect(),
        None => return 0,
    };
    buffers.iter().filter(|shared| !flush(shared, deadline)).count()
}

/// Have the writer of `shared` write what is buffered now; false if it has not by `deadline`.
fn flush(shared: &Shared, deadline: Instant) -> bool {
    let mut state = shared.lock();
    state.flush_asked += 1;
    let asked = state.flush_asked;
    shared.wake.notify_one();
    while state.flush_done < asked && !state.ended {
        let Some(left) = deadline.checked_duration_since(Instant::now()).filter(|d| !d.is_zero()) else {
            return false;
        };
        state = shared.done.wait_timeout(state, left).unwrap_or_else(PoisonError::into_inner).0;
    }
    true
}

/// Open `path` to append, creating it `MODE` whatever the umask (the packaged unit's is 0077,
/// which would leave the log shippers of the local-proxy group locked out); a file that is
/// there keeps the mode it has. True if this call created it.
fn open_file(path: &Path) -> std::io::Result<(File, bool)> {
    use std::os::unix::fs::PermissionsExt;
    match OpenOptions::new().append(true).create_new(true).mode(MODE).open(path) {
        Ok(f) => {
            // A file system without modes (some FUSE and CIFS mounts) still takes the log.
            if let Err(e) = f.set_permissions(std::fs::Permissions::from_mode(MODE)) {
                tracing::warn!(file = %path.display(), error = %e, "access log created without mode 0640");
            }
            Ok((f, true))
        }
        // There already (or made in between by someone else, with the umask's mode then).
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            Ok((OpenOptions::new().append(true).create(true).mode(MODE).open(path)?, false))
        }
        Err(e) => Err(e),
    }
}

/// Which file a path names (device and inode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileId(u64, u64);

impl FileId {
    fn of(meta: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        Self(meta.dev(), meta.ino())
    }
}

/// Remove the empty file `created` at `path` that a writer made for a config never taken,
/// unless a new writer has opened the path meanwhile (the map's lock keeps one from opening it
/// while this looks) or the file there is another one by now.
fn remove_unadopted(path: &Path, created: FileId) {
    let writers = WRITERS.get_or_init(Default::default);
    let writers = writers.lock().unwrap_or_else(PoisonError::into_inner);
    if writers.get(path).is_some_and(|w| w.strong_count() > 0) {
        return;
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if FileId::of(&m) == created && m.len() == 0 => {
            if let Err(e) = std::fs::remove_file(path) {
                warn!(path = %path.display(), error = %e, "cannot remove the access log made for a refused config");
            }
        }
        _ => {}
    }
}

/// Writes `batch` (whole lines) to `out`. On failure, the number of its lines that went whole,
/// and `torn` says whether the failure left one in part (a disk filling up mid-batch): the next
/// write first ends it, so that the next line does not join it, and each line still parses
/// alone (only the torn one is lost).
fn write_batch(out: &mut impl Write, batch: &[u8], torn: &mut bool) -> Result<(), (u64, std::io::Error)> {
    if *torn {
        out.write_all(b"\n").map_err(|e| (0, e))?;
        *torn = false;
    }
    let mut done = 0;
    while done < batch.len() {
        let e = match out.write(&batch[done..]) {
            Ok(0) => std::io::Error::from(std::io::ErrorKind::WriteZero),
            Ok(n) => {
                done += n;
                continue;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => e,
        };
        let written = &batch[..done];
        *torn = written.last().is_some_and(|&b| b != b'\n');
        return Err((written.iter().filter(|&&b| b == b'\n').count() as u64, e));
    }
    Ok(())
}

/// Whether the file at `path` ends in a line in part (no newline after its last byte). Read
/// through a handle of its own: the writer's is append-only.
fn ends_torn(path: &Path) -> bool {
    use std::os::unix::fs::FileExt;
    let Ok(file) = File::open(path) else { return false };
    let Some(last) = file.metadata().ok().and_then(|m| m.len().checked_sub(1)) else { return false };
    let mut byte = [0u8];
    file.read_at(&mut byte, last).is_ok_and(|n| n == 1 && byte[0] != b'\n')
}

/// Write the buffered lines when woken or at each interval, until every [`Sink`] of this file
/// is gone (then once more). `created`: the file this writer made, removed at the end if no
/// config took it and nothing was written.
fn write_loop(path: PathBuf, file: File, mut created: Option<FileId>, shared: &Shared, label: String) {
    let mut seen = GENERATION.load(Ordering::SeqCst);
    // The buffer being written; swapped with the one requests append to.
    let mut batch = Vec::with_capacity(2 * shared.params.flush_bytes);
    // A full disk fails every batch: warn when writing starts failing, not at each batch.
    let mut failing = false;
    // A line in part at the file's end (a failed write's, this run's or an earlier one's):
    // ended before the next (`write_batch`).
    let mut torn = ends_torn(&path);
    let mut file = Some(file);
    let mut state = shared.lock();
    loop {
        // Until the interval is up, unless woken for a reason (a spurious wake-up is none; a
        // new interval from a reload counts from the same start).
        let since = Instant::now();
        while !state.woken && !state.closed && state.flush_done == state.flush_asked {
            let due = since + state.flush_interval;
            let Some(left) = due.checked_duration_since(Instant::now()).filter(|d| !d.is_zero()) else { break };
            state = shared.wake.wait_timeout(state, left).unwrap_or_else(PoisonError::into_inner).0;
        }
        std::mem::swap(&mut state.buf, &mut batch);
        let lines = std::mem::take(&mut state.lines);
        state.woken = false;
        let (asked, closed) = (state.flush_asked, state.closed);
        drop(state);

        let generation = GENERATION.load(Ordering::SeqCst);
        if generation != seen || file.is_none() {
            seen = generation;
            // Not the file this writer made any more (rotated, or reopened after a failure).
            created = None;
            // The old file (renamed by logrotate) is closed once the new one is open; while
            // the new one cannot be opened (tried again at each wake), lines are dropped and
            // counted.
            match open_file(&path) {
                Ok((f, _)) => {
                    // Reopened after a failure or a reload, or a new file after a rotation:
                    // what is at its end says.
                    torn = ends_torn(&path);
                    file = Some(f);
                }
                Err(e) => {
                    if !failing {
                        warn!(path = %path.display(), error = %e, "access log: cannot reopen");
                    }
                    failing = true;
                    file = None;
                }
            }
        }
        if lines > 0 {
            let written = match file.as_mut() {
                Some(f) => write_batch(f, &batch, &mut torn),
                None => Err((0, std::io::Error::other("not open"))),
            };
            match written {
                Ok(()) => {
                    created = None;
                    if std::mem::take(&mut failing) {
                        tracing::info!(path = %path.display(), "access log: writing again");
                    }
                    metrics::counter!(names::ACCESS_LOG_LINES, "log" => label.clone()).increment(lines);
                }
                Err((whole, e)) => {
                    metrics::counter!(names::ACCESS_LOG_LINES, "log" => label.clone()).increment(whole);
                    let lines = lines.saturating_sub(whole);
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
        batch.clear();
        // A flood grew it (up to MAX_PENDING): give the memory back.
        if batch.capacity() > 4 * shared.params.flush_bytes {
            batch = Vec::with_capacity(2 * shared.params.flush_bytes);
        }

        state = shared.lock();
        state.flush_done = asked;
        if closed {
            // No sink is left to append: everything has been written. A file no config took
            // goes before the writer says it has ended.
            let adopted = state.adopted;
            drop(state);
            if let Some(created) = created.filter(|_| !adopted) {
                remove_unadopted(&path, created);
            }
            shared.lock().ended = true;
            shared.done.notify_all();
            return;
        }
        shared.done.notify_all();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::io::Read;

    const HOUR: Duration = Duration::from_secs(3600);

    /// Takes `room` bytes, then fails as a full disk does.
    struct Filling {
        out: Vec<u8>,
        room: usize,
    }

    impl Write for Filling {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let n = buf.len().min(self.room);
            if n == 0 {
                return Err(std::io::Error::from_raw_os_error(28));
            }
            self.out.extend_from_slice(&buf[..n]);
            self.room -= n;
            Ok(n)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A disk filling up mid-batch tears a line: the lines written whole are counted, and once
    /// there is room again the torn one is ended first, so every later line parses alone.
    #[test]
    fn a_line_torn_by_a_full_disk_does_not_join_the_next() {
        let mut out = Filling { out: Vec::new(), room: 20 };
        let mut torn = false;
        let batch = b"{\"a\":1}\n{\"b\":22222222222222}\n{\"c\":3}\n";
        let (whole, _) = write_batch(&mut out, batch, &mut torn).unwrap_err();
        assert_eq!((whole, torn), (1, true));
        assert!(write_batch(&mut out, b"{\"d\":4}\n", &mut torn).is_err(), "still full");
        assert!(torn);
        out.room = 100;
        write_batch(&mut out, b"{\"d\":4}\n", &mut torn).unwrap();
        assert!(!torn);
        let text = String::from_utf8(out.out).unwrap();
        assert_eq!(text, "{\"a\":1}\n{\"b\":2222222\n{\"d\":4}\n");
        // Ending on a whole line tears nothing.
        let mut out = Filling { out: Vec::new(), room: 8 };
        let (whole, _) = write_batch(&mut out, b"{\"a\":1}\n{\"b\":2}\n", &mut torn).unwrap_err();
        assert_eq!((whole, torn), (1, false));
        // A file opened again (a reload, a restart) says itself whether it ends torn.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("access.log");
        assert!(!ends_torn(&file), "none there");
        for (text, torn) in [("", false), ("{}\n", false), ("{}\n{\"b\":2", true)] {
            std::fs::write(&file, text).unwrap();
            assert_eq!(ends_torn(&file), torn, "{text:?}");
        }
    }
    /// Taken by the tests that check nothing was written yet, the one whose writer is stuck,
    /// the one that calls `flush_all` (which flushes every test's writer) and those that call
    /// `reopen` or depend on no reopen (it wakes every test's writer).
    static SERIAL: Mutex<()> = Mutex::new(());

    fn serial() -> MutexGuard<'static, ()> {
        SERIAL.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// This sink's writer only (not the other tests').
    fn flush_one(sink: &Sink) {
        assert!(flush(&sink.shared, Instant::now() + Duration::from_secs(10)), "not flushed in 10 s");
    }

    fn line(sink: &Sink, text: &str) {
        sink.write(|b| {
            b.extend_from_slice(text.as_bytes());
            Ok::<_, std::convert::Infallible>(())
        })
        .unwrap();
    }

    fn read(path: &Path) -> String {
        std::fs::read_to_string(path).unwrap_or_default()
    }

    /// Polls (every 10 ms, for at most 10 s) until `path` holds `n` lines.
    fn wait_lines(path: &Path, n: usize) -> String {
        for _ in 0..1000 {
            let text = read(path);
            if text.lines().count() >= n {
                return text;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("{} has not {n} lines: {:?}", path.display(), read(path));
    }

    /// Below the size, nothing is written until the interval has passed since the writer's
    /// last wake; then the lines are written without anything else waking it.
    #[test]
    fn lines_below_the_size_are_written_at_the_interval() {
        let _serial = serial();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("timer.log");
        let interval = Duration::from_millis(1500);
        let params = Params { flush_bytes: 1 << 20, flush_interval: interval, max_pending: 1 << 20 };
        let opened = Instant::now();
        let sink = open_with(&path, params).unwrap();
        for i in 0..3 {
            line(&sink, &format!("line {i}"));
        }
        std::thread::sleep(Duration::from_millis(200));
        // Checked well before the interval (a machine that stalled the test for over a
        // second cannot tell): nothing written yet.
        if opened.elapsed() < interval / 2 {
            assert_eq!(read(&path), "", "written before the interval");
        }
        assert_eq!(wait_lines(&path, 3), "line 0\nline 1\nline 2\n");
        assert!(opened.elapsed() >= interval, "written after {:?}", opened.elapsed());
    }

    /// A reload that shortens a file's `flush` applies to the lines already waiting once its
    /// config is in, not when it is only opened (a refused config changes nothing): opened
    /// with an hour, a line waits; opened again with 20 ms, it still waits; set, it is written.
    #[test]
    fn a_shorter_flush_from_a_reload_applies_to_waiting_lines() {
        let _serial = serial();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("reflush.log");
        let sink = open(&path, HOUR).unwrap();
        line(&sink, "waiting");
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(read(&path), "", "written before an hour");
        let again = open(&path, Duration::from_millis(20)).unwrap();
        assert!(Arc::ptr_eq(&sink, &again), "one writer per file");
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(read(&path), "", "opening for a config not yet in keeps the running timer");
        adopt(&path, Duration::from_millis(20));
        assert_eq!(wait_lines(&path, 1), "waiting\n");
    }

    /// The line that brings the buffer to its size wakes the writer (long before the
    /// interval); those before it wait.
    #[test]
    fn a_buffer_at_its_size_is_written_at_once() {
        let _serial = serial();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("size.log");
        let params = Params { flush_bytes: 1000, flush_interval: HOUR, max_pending: 1 << 20 };
        let sink = open_with(&path, params).unwrap();
        let text = "x".repeat(99);
        for _ in 0..9 {
            line(&sink, &text);
        }
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(read(&path), "", "900 bytes written before the size");
        line(&sink, &text);
        let all = wait_lines(&path, 10);
        assert_eq!(all.len(), 1000);
        assert!(all.lines().all(|l| l == text));
    }

    /// A buffer that cannot take a line drops it and counts it (the writer is not woken here:
    /// the size is never reached); what was buffered is written whole by `flush_all`, and
    /// the freed buffer takes lines again.
    #[test]
    fn a_full_buffer_drops_and_counts_lines_and_flush_all_writes_the_rest() {
        let _serial = serial();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("full.log");
        let params = Params { flush_bytes: 1 << 20, flush_interval: HOUR, max_pending: 4000 };
        let sink = open_with(&path, params).unwrap();
        let text = "y".repeat(99);
        for _ in 0..100 {
            line(&sink, &text);
        }
        assert_eq!(sink.dropped(), 60);
        assert_eq!(read(&path), "");
        assert_eq!(flush_all(Duration::from_secs(10)), 0);
        let all = read(&path);
        assert_eq!(all.len(), 4000, "exactly the 40 lines that fitted");
        assert!(all.lines().all(|l| l == text));
        line(&sink, "after");
        assert_eq!(flush_all(Duration::from_secs(10)), 0);
        assert!(read(&path).ends_with("\nafter\n"));
        assert_eq!(sink.dropped(), 60);
    }

    /// The last sink gone, the writer writes what is left and ends.
    #[test]
    fn the_last_sink_gone_its_lines_are_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("closed.log");
        let params = Params { flush_bytes: 1 << 20, flush_interval: HOUR, max_pending: 1 << 20 };
        let sink = open_with(&path, params).unwrap();
        let shared = Arc::downgrade(&sink.shared);
        line(&sink, "one");
        line(&sink, "two");
        drop(sink);
        assert_eq!(wait_lines(&path, 2), "one\ntwo\n");
        // Its thread ends and lets go of the buffer.
        for _ in 0..1000 {
            if shared.strong_count() == 0 {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("the writer did not end");
    }

    /// Waits (every 10 ms, at most 10 s) until the writer of `shared` has ended.
    fn wait_ended(shared: &Weak<Shared>) {
        for _ in 0..1000 {
            if shared.upgrade().is_none_or(|s| s.lock().ended) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("the writer did not end");
    }

    /// A file opened for a config that is not taken: made by this writer and empty, it is
    /// removed when the last sink goes; one that was there before, one written to and one a
    /// config took ([`adopt`]) stay.
    #[test]
    fn a_file_made_for_a_refused_config_is_removed_while_empty() {
        // A reopen meanwhile (another test's) would make the file no longer the one it made.
        let _serial = serial();
        let dir = tempfile::tempdir().unwrap();
        let ended = |path: &Path, adopted: bool, text: Option<&str>| {
            let sink = open(path, HOUR).unwrap();
            if adopted {
                adopt(path, HOUR);
            }
            if let Some(text) = text {
                line(&sink, text);
            }
            let shared = Arc::downgrade(&sink.shared);
            drop(sink);
            wait_ended(&shared);
        };
        let refused = dir.path().join("refused.log");
        ended(&refused, false, None);
        assert!(!refused.exists(), "the refused config's empty file is still there");

        let there = dir.path().join("there.log");
        std::fs::write(&there, "").unwrap();
        ended(&there, false, None);
        assert!(there.exists(), "a file made by someone else was removed");

        let adopted = dir.path().join("adopted.log");
        ended(&adopted, true, None);
        assert!(adopted.exists(), "the file of a config that was taken was removed");

        let written = dir.path().join("written.log");
        ended(&written, false, Some("kept"));
        assert_eq!(read(&written), "kept\n");
    }

    /// The refused config's writer ends after the next reload has opened the same path (its
    /// own writer, as the old one's sinks were gone): the file is the new writer's and stays.
    /// Nor is a file removed that was replaced at the path meanwhile.
    #[test]
    fn a_made_file_another_writer_has_open_or_that_was_replaced_stays() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("again.log");
        let sink = open(&path, HOUR).unwrap();
        let made = FileId::of(&std::fs::metadata(&path).unwrap());
        remove_unadopted(&path, made);
        assert!(path.exists(), "removed under the writer that has it open");
        drop(sink);

        let replaced = dir.path().join("replaced.log");
        std::fs::write(&replaced, "").unwrap();
        let made = FileId::of(&std::fs::metadata(&replaced).unwrap());
        // Renamed away (logrotate), so the new file cannot take its inode.
        std::fs::rename(&replaced, dir.path().join("replaced.log.1")).unwrap();
        std::fs::write(&replaced, "").unwrap();
        remove_unadopted(&replaced, made);
        assert!(replaced.exists(), "the file now at the path was removed");
    }

    /// A writer with a long `flush` reopens at the signal, not at its next interval.
    #[test]
    fn a_reopen_is_not_held_by_a_long_flush_interval() {
        // reopen() wakes every writer of the process: not while another test counts writes.
        let _serial = serial();
        let dir = tempfile::tempdir().unwrap();
        let (path, rotated) = (dir.path().join("slow.log"), dir.path().join("slow.log.1"));
        let params = Params { flush_interval: Duration::from_secs(3600), ..Params::default() };
        let sink = open_with(&path, params).unwrap();
        line(&sink, "before");
        flush_one(&sink);
        std::fs::rename(&path, &rotated).unwrap();
        reopen();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !path.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(path.exists(), "not reopened within 5 s of the signal");
        assert_eq!(read(&rotated), "before\n");
    }

    /// logrotate's way while four threads log as fast as they can: rename, reopen; every line
    /// is whole and in exactly one of the two files, and new lines go to the new file.
    #[test]
    fn a_rotation_under_load_loses_and_splits_no_line() {
        let _serial = serial();
        let dir = tempfile::tempdir().unwrap();
        let (path, rotated) = (dir.path().join("rot.log"), dir.path().join("rot.log.1"));
        // Small buffers and a short interval: many writes, and the reopen lands amid them.
        let params = Params { flush_bytes: 4096, flush_interval: Duration::from_millis(5), max_pending: 1 << 24 };
        let sink = open_with(&path, params).unwrap();
        const THREADS: usize = 4;
        const EACH: usize = 20_000;
        let threads: Vec<_> = (0..THREADS)
            .map(|t| {
                let sink = sink.clone();
                std::thread::spawn(move || {
                    for i in 0..EACH {
                        // Lengths vary so a split line could not pass for a whole one.
                        line(&sink, &format!("{t} {i} {}", "z".repeat(i % 300)));
                    }
                })
            })
            .collect();
        wait_lines(&path, 1000);
        std::fs::rename(&path, &rotated).unwrap();
        reopen();
        for t in threads {
            t.join().unwrap();
        }
        flush_one(&sink);
        // The reopen is done by now (the flush woke the writer after it): this one is new.
        line(&sink, "last");
        flush_one(&sink);
        assert_eq!(sink.dropped(), 0);
        let (old, new) = (read(&rotated), read(&path));
        assert!(old.ends_with('\n'), "the rotated file ends mid-line");
        assert!(new.ends_with("last\n"), "the last line went to the old file");
        let mut seen = vec![vec![false; EACH]; THREADS];
        for l in old.lines().chain(new.lines()).filter(|l| *l != "last") {
            let mut parts = l.split(' ');
            let (t, i): (usize, usize) =
                (parts.next().unwrap().parse().unwrap(), parts.next().unwrap().parse().unwrap());
            assert_eq!(parts.next().unwrap(), "z".repeat(i % 300), "split line {l:?}");
            assert!(!std::mem::replace(&mut seen[t][i], true), "line {t} {i} twice");
        }
        assert!(seen.iter().flatten().all(|s| *s), "lines lost");
        println!("rotated file: {} lines, new file: {} lines", old.lines().count(), new.lines().count());
        assert!(old.lines().count() >= 1000);
    }

    /// A disk that stops taking writes: the log is a FIFO whose reader never reads, so the
    /// writer thread blocks once the pipe is full. Writing lines goes on without waiting;
    /// what the buffer cannot hold is dropped and counted; reading then drains whole lines.
    #[test]
    fn a_stalled_file_drops_and_counts_lines_instead_of_blocking() {
        // Its writer is stuck: a flush_all meanwhile would wait for it.
        let _serial = serial();
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("stalled.log");
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
        // Opening a FIFO for writing waits for a reader: open the read end alongside.
        let reader = {
            let fifo = fifo.clone();
            std::thread::spawn(move || File::open(fifo).unwrap())
        };
        let sink = open(&fifo, FLUSH_INTERVAL).unwrap();
        let mut reader = reader.join().unwrap();

        const LINES: usize = 200_000;
        let text = "x".repeat(99);
        let start = Instant::now();
        for _ in 0..LINES {
            line(&sink, &text);
        }
        let took = start.elapsed();
        let dropped = sink.dropped() as usize;
        println!("{LINES} lines written in {took:?} against a stalled file: {dropped} dropped");
        // At most the buffer, the pipe's buffer (64 KiB) and the batch the writer is stuck
        // writing (at most another full buffer) got through.
        let through = (2 * MAX_PENDING + 64 * 1024) / 100;
        assert!(dropped >= LINES - through, "only {dropped} dropped");
        assert!(dropped < LINES);

        // The reader drains: what was buffered arrives as whole 100-byte lines.
        drop(sink);
        let mut all = Vec::new();
        reader.read_to_end(&mut all).unwrap();
        assert_eq!(all.len() % 100, 0);
        assert_eq!(all.len() / 100, LINES - dropped);
        assert!(all.chunks(100).all(|l| l[99] == b'\n' && l[..99].iter().all(|b| *b == b'x')));
    }
}
