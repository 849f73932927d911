//! systemd's part in a graceful restart, for tests and the soak that run `local-proxy` without
//! systemd: the notify socket (`NOTIFY_SOCKET`) with a file descriptor store, as the packaged
//! unit's `FileDescriptorStoreMax=` gives the service. The proxy sends `FDSTORE=1` + `FDNAME=`
//! with each listening socket and `FDSTOREREMOVE=1` for closed ones (sd_notify(3)); a start
//! passes the stored sockets back as systemd does (sd_listen_fds(3)): from descriptor 3, with
//! `LISTEN_FDS`, `LISTEN_FDNAMES` and `LISTEN_PID` set to the started process. While the store
//! holds them, the kernel queues connections for sockets no process is serving.

use std::io::IoSliceMut;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rustix::io::FdFlags;
use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};

/// Descriptors are duplicated from here up for the start command (clear of 3.. and of stdio).
const HIGH_FD: i32 = 300;

/// The notify socket and the descriptors stored through it.
#[derive(Debug)]
pub struct FdStore {
    sock: UnixDatagram,
    path: PathBuf,
    stored: Vec<(String, OwnedFd)>,
    /// `READY=1` messages seen so far.
    pub ready: u32,
    /// `STOPPING=1` messages seen so far.
    pub stopping: u32,
}

impl FdStore {
    /// A notify socket at `dir/notify.sock`.
    pub fn new(dir: &Path) -> Result<Self> {
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let sock = UnixDatagram::bind(&path).with_context(|| format!("binding {}", path.display()))?;
        sock.set_nonblocking(true)?;
        Ok(Self { sock, path, stored: Vec::new(), ready: 0, stopping: 0 })
    }

    pub fn socket_path(&self) -> &Path {
        &self.path
    }

    /// The names stored now, in the order they would be passed.
    pub fn names(&self) -> Vec<String> {
        self.stored.iter().map(|(n, _)| n.clone()).collect()
    }

    /// Takes in every message sent so far.
    pub fn poll(&mut self) -> Result<()> {
        loop {
            let mut buf = [0u8; 4096];
            let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(16))];
            let mut control = RecvAncillaryBuffer::new(&mut space);
            let mut iov = [IoSliceMut::new(&mut buf)];
            let got = match rustix::net::recvmsg(&self.sock, &mut iov, &mut control, RecvFlags::CMSG_CLOEXEC) {
                Ok(g) => g,
                Err(rustix::io::Errno::AGAIN) => return Ok(()),
                Err(e) => return Err(e).context("reading the notify socket"),
            };
            let mut fds: Vec<OwnedFd> = Vec::new();
            for m in control.drain() {
                if let RecvAncillaryMessage::ScmRights(r) = m {
                    fds.extend(r);
                }
            }
            let text = String::from_utf8_lossy(&buf[..got.bytes]).into_owned();
            let field = |k: &str| text.lines().find_map(|l| l.strip_prefix(k)).map(str::to_string);
            let name = field("FDNAME=").unwrap_or_else(|| "stored".into());
            if text.lines().any(|l| l == "FDSTORE=1") {
                // The proxy stores each socket under its own name; storing one again (after a
                // restart) is a no-op in systemd, a replacement here: the same socket either way.
                self.stored.retain(|(n, _)| *n != name);
                for fd in fds {
                    self.stored.push((name.clone(), fd));
                }
            } else if text.lines().any(|l| l == "FDSTOREREMOVE=1") {
                self.stored.retain(|(n, _)| *n != name);
            }
            self.ready += u32::from(text.lines().any(|l| l == "READY=1"));
            self.stopping += u32::from(text.lines().any(|l| l == "STOPPING=1"));
        }
    }

    /// Waits (bounded) until `READY=1` has been seen `count` times in all.
    pub fn wait_ready(&mut self, count: u32, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        loop {
            self.poll()?;
            if self.ready >= count {
                return Ok(());
            }
            if start.elapsed() > timeout {
                bail!("no READY=1 within {timeout:?} ({} so far, {count} wanted)", self.ready);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Forgets every stored descriptor (a plain stop, as `systemctl stop` flushes the store).
    pub fn clear(&mut self) {
        self.stored.clear();
    }

    /// `argv` wrapped so that it starts with the notify socket and the stored descriptors passed
    /// as systemd passes them. The returned descriptors are inheritable copies the wrapper moves
    /// to 3, 4, ...: keep them until the process is spawned, then drop them.
    pub fn command(&self, argv: &[String]) -> Result<(Vec<String>, Vec<OwnedFd>)> {
        let mut copies = Vec::new();
        let mut moves = Vec::new();
        let mut closes = Vec::new();
        for (i, (_, fd)) in self.stored.iter().enumerate() {
            let copy = rustix::io::fcntl_dupfd_cloexec(fd.as_fd(), HIGH_FD + i as i32)?;
            // Inheritable: the wrapper shell gets it and moves it into place.
            rustix::io::fcntl_setfd(&copy, FdFlags::empty())?;
            moves.push(format!("{}<&{}", 3 + i, copy.as_raw_fd()));
            closes.push(format!("{}<&-", copy.as_raw_fd()));
            copies.push(copy);
        }
        let names: Vec<String> = self.names();
        let mut script = String::new();
        if !copies.is_empty() {
            script.push_str(&format!(
                "exec {} {}; export LISTEN_FDS={} LISTEN_FDNAMES='{}'; ",
                moves.join(" "),
                closes.join(" "),
                copies.len(),
                names.join(":")
            ));
        }
        // $$ is the shell's pid, which `exec` hands on to the proxy.
        script.push_str(&format!("export NOTIFY_SOCKET='{}'; LISTEN_PID=$$ exec \"$@\"", self.path.display()));
        let mut out = vec!["bash".to_string(), "-c".into(), script, "fdstore-start".into()];
        out.extend(argv.iter().cloned());
        Ok((out, copies))
    }
}
