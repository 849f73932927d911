//! A guard for a process started inside a namespace (`setpriv --pdeathsig KILL ip netns exec NS
//! ...`; both exec, so the child's pid is the program's). Its stdout and stderr go to files in a log dir. On drop it is
//! stopped: SIGTERM, then SIGKILL after a bounded wait. While a test is panicking, the tail of
//! its logs is printed so the failure shows what the process said.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// How long a SIGTERMed process gets before SIGKILL.
pub const TERM_GRACE: Duration = Duration::from_secs(3);

/// A running process and the files holding its output.
#[derive(Debug)]
pub struct Proc {
    name: String,
    ns: String,
    child: Child,
    status: Option<ExitStatus>,
    out: PathBuf,
    err: PathBuf,
}

impl Proc {
    /// Starts `argv` inside namespace `ns`; output goes to `<logdir>/<name>.out` and `.err`.
    pub fn spawn(ns: &str, name: &str, argv: &[&str], logdir: &Path) -> Result<Self> {
        Self::spawn_env(ns, name, argv, logdir, &[])
    }

    /// As [`Proc::spawn`], with `env` added to the harness's environment.
    pub fn spawn_env(ns: &str, name: &str, argv: &[&str], logdir: &Path, env: &[(&str, &str)]) -> Result<Self> {
        let (prog, args) = argv.split_first().context("empty command")?;
        let out = logdir.join(format!("{name}.out"));
        let err = logdir.join(format!("{name}.err"));
        // `setpriv --pdeathsig KILL` (util-linux): if the harness dies without running its
        // drops (SIGKILL, abort), the kernel kills this process too. The signal fires when the
        // *thread* that spawned it ends, so a `Proc` lives and dies on one thread (tests do).
        let child = Command::new("setpriv")
            .args(["--pdeathsig", "KILL", "ip", "netns", "exec", ns, prog])
            .args(args)
            // The harness's own INGRESS_BIN (which ingress binary to test) must not reach the
            // ingress: it reads INGRESS_* as config overrides and refuses the unknown key.
            .env_remove("INGRESS_BIN")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(File::create(&out).with_context(|| format!("creating {}", out.display()))?)
            .stderr(File::create(&err).with_context(|| format!("creating {}", err.display()))?)
            .spawn()
            .with_context(|| format!("starting {name} in {ns}: {}", argv.join(" ")))?;
        Ok(Self { name: name.into(), ns: ns.into(), child, status: None, out, err })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether it still runs (reaps it if it exited).
    pub fn is_running(&mut self) -> bool {
        self.poll().is_none()
    }

    fn poll(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// Errors (with the log tail) if the process has exited.
    pub fn ensure_running(&mut self) -> Result<()> {
        if let Some(status) = self.poll() {
            bail!("{} in {} exited ({status}):\n{}", self.name, self.ns, self.tail(30));
        }
        Ok(())
    }

    /// Waits at most `timeout` for the process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.poll() {
                return Ok(status);
            }
            if start.elapsed() > timeout {
                bail!("{} in {} still running after {timeout:?}", self.name, self.ns);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends `signal` (a `kill` name: TERM, KILL, ...).
    pub fn signal(&self, signal: &str) -> Result<()> {
        crate::cmd::run(&["kill", &format!("-{signal}"), &self.pid().to_string()])?;
        Ok(())
    }

    /// SIGKILL at once, as a crash would; waits for the exit.
    pub fn kill_hard(&mut self) -> Result<ExitStatus> {
        if let Some(status) = self.poll() {
            return Ok(status);
        }
        let _ = self.child.kill();
        let status = self.child.wait().context("waiting for killed process")?;
        self.status = Some(status);
        Ok(status)
    }

    /// SIGTERM, then SIGKILL after [`TERM_GRACE`].
    pub fn stop(&mut self) -> Result<ExitStatus> {
        if let Some(status) = self.poll() {
            return Ok(status);
        }
        let _ = self.signal("TERM");
        match self.wait_exit(TERM_GRACE) {
            Ok(status) => Ok(status),
            Err(_) => self.kill_hard(),
        }
    }

    /// Everything written to stdout so far.
    pub fn stdout(&self) -> String {
        read_lossy(&self.out)
    }

    /// Everything written to stderr so far.
    pub fn stderr(&self) -> String {
        read_lossy(&self.err)
    }

    pub fn stdout_path(&self) -> &Path {
        &self.out
    }

    /// The last `n` lines of stderr and stdout, labelled.
    pub fn tail(&self, n: usize) -> String {
        let last = |s: String| {
            let lines: Vec<&str> = s.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        };
        format!(
            "--- {} stderr ---\n{}\n--- {} stdout ---\n{}",
            self.name,
            last(self.stderr()),
            self.name,
            last(self.stdout())
        )
    }
}

fn read_lossy(path: &Path) -> String {
    match std::fs::read(path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("[{} in {}]\n{}", self.name, self.ns, self.tail(15));
        }
        let _ = self.stop();
    }
}
