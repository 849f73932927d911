//! Running commands, in the root namespace or inside a named one, always with a timeout.

use std::io::{Read, Write};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Timeout for the short configuration commands (`ip`, `nft`, `tc`, `sysctl`).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// What a finished command printed.
#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `argv` with `stdin` fed in, killing it after `timeout`.
/// Errors if it cannot start or times out; a non-zero exit is returned, not an error.
pub fn run_full(argv: &[&str], stdin: Option<&str>, timeout: Duration) -> Result<Output> {
    let (prog, args) = argv.split_first().context("empty command")?;
    let mut child = Command::new(prog)
        .args(args)
        // Not for the ingress's config overrides (INGRESS_*): see `Proc::spawn`.
        .env_remove("INGRESS_BIN")
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start `{}`", argv.join(" ")))?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // Small inputs (nft scripts): fits the pipe buffer, no writer thread needed.
        pipe.write_all(input.as_bytes()).with_context(|| format!("writing stdin of `{}`", argv.join(" ")))?;
    }
    // Readers on threads: a chatty child must not block on a full pipe while we wait.
    let out_reader = child.stdout.take().map(spawn_reader);
    let err_reader = child.stderr.take().map(spawn_reader);
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            bail!("`{}` timed out after {timeout:?}", argv.join(" "));
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let stdout = out_reader.map(|h| h.join().unwrap_or_default()).unwrap_or_default();
    let stderr = err_reader.map(|h| h.join().unwrap_or_default()).unwrap_or_default();
    Ok(Output { status, stdout, stderr })
}

fn spawn_reader<R: Read + Send + 'static>(mut r: R) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// Runs `argv` and returns its stdout; a non-zero exit is an error carrying stderr.
pub fn run(argv: &[&str]) -> Result<String> {
    run_stdin(argv, None)
}

/// Like [`run`], feeding `stdin`.
pub fn run_stdin(argv: &[&str], stdin: Option<&str>) -> Result<String> {
    let out = run_full(argv, stdin, DEFAULT_TIMEOUT)?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}{}",
            argv.join(" "),
            out.status,
            out.stderr.trim(),
            stdin.map(|s| format!("\ninput:\n{s}")).unwrap_or_default()
        );
    }
    Ok(out.stdout)
}

/// Runs `argv` inside namespace `ns` (`ip netns exec`), killing it after `timeout`.
pub fn exec(ns: &str, argv: &[&str], timeout: Duration) -> Result<Output> {
    let mut full = vec!["ip", "netns", "exec", ns];
    full.extend_from_slice(argv);
    run_full(&full, None, timeout)
}

/// Runs `argv` inside `ns` and returns stdout; non-zero exit or timeout is an error.
pub fn exec_ok(ns: &str, argv: &[&str], timeout: Duration) -> Result<String> {
    let out = exec(ns, argv, timeout)?;
    if !out.status.success() {
        bail!("`{}` in {ns} failed ({}): {}{}", argv.join(" "), out.status, out.stderr.trim(), out.stdout.trim());
    }
    Ok(out.stdout)
}

/// `ip -n NS ARGS...`
pub fn ip(ns: &str, args: &[&str]) -> Result<String> {
    let mut full = vec!["ip", "-n", ns];
    full.extend_from_slice(args);
    run(&full)
}

/// Sets sysctls inside `ns`: `pairs` of `(key, value)`.
pub fn sysctl(ns: &str, pairs: &[(&str, &str)]) -> Result<()> {
    let kv: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let mut argv = vec!["sysctl", "-q", "-w"];
    argv.extend(kv.iter().map(String::as_str));
    exec_ok(ns, &argv, DEFAULT_TIMEOUT)?;
    Ok(())
}
