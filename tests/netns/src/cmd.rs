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
            // Its children too (debootstrap's dpkg, scripts/package's cargo): killed alone, it
            // would leave them running, holding its output pipes and its work directory.
            let tree = descendants(child.id());
            let _ = child.kill();
            if !tree.is_empty() {
                let _ = Command::new("kill").arg("-KILL").args(tree.iter().map(u32::to_string)).status();
            }
            let _ = child.wait();
            bail!("`{}` timed out after {timeout:?}", argv.join(" "));
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let stdout = out_reader.map(|h| h.join().unwrap_or_default()).unwrap_or_default();
    let stderr = err_reader.map(|h| h.join().unwrap_or_default()).unwrap_or_default();
    Ok(Output { status, stdout, stderr })
}

/// Every process descended from `pid`, by the parents `/proc/PID/stat` names (taken before
/// `pid` dies: its orphans then get another parent).
fn descendants(pid: u32) -> Vec<u32> {
    let mut parents = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(p) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else { continue };
        // `PID (COMM) STATE PPID ...`: COMM may hold spaces and parentheses, so from the last `)`.
        let ppid = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
        if let Some(ppid) = ppid {
            parents.push((p, ppid));
        }
    }
    let (mut out, mut frontier) = (Vec::new(), vec![pid]);
    while let Some(p) = frontier.pop() {
        for &(c, parent) in &parents {
            if parent == p && !out.contains(&c) {
                out.push(c);
                frontier.push(c);
            }
        }
    }
    out
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A command that times out is killed with what it started: a grandchild left behind
    /// would go on running (and holding the command's pipes) after the test.
    #[test]
    fn a_timed_out_command_is_killed_with_its_children() {
        let dir = crate::tempdir::TempDir::new(&crate::unique_tag()).expect("temp dir");
        let pid_file = dir.path().join("pid");
        let script = format!("sleep 30 & echo $! > {}; wait", pid_file.display());
        let r = run_full(&["sh", "-c", &script], None, Duration::from_millis(500));
        assert!(r.is_err_and(|e| e.to_string().contains("timed out")));
        let pid = std::fs::read_to_string(&pid_file).expect("the script wrote its child's pid");
        let gone = || {
            std::fs::read_to_string(format!("/proc/{}/stat", pid.trim()))
                .map_or(true, |s| s.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')))
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while !gone() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(gone(), "the backgrounded sleep {} outlived the timeout", pid.trim());
    }
}
