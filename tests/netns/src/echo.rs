//! The backend run in `home` (binary `echo-server`): on each connection it reads the first line,
//! answers `<local addr it was reached on>\n` then echoes that line and every later one; so the
//! client learns which path (WAN address or mesh address) carried it. Health probes are answered
//! too: an HTTP `GET`/`HEAD` gets `200 OK` with the local address as body, a PROXY v2 or v1
//! header is skipped (a v2 LOCAL header alone then EOF is a probe), a bare connect-and-close is
//! fine. Logs one JSON line per connection to stdout (`local`, `peer`, `kind`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// PROXY protocol v2 signature.
const V2_SIG: [u8; 12] = [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A];

/// Idle timeout of a connection.
const IDLE: Duration = Duration::from_secs(30);

/// One connection as logged.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConnLog {
    pub unix_ms: u64,
    pub local: String,
    pub peer: String,
    /// `echo`, `http`, `proxy-only`, `empty` or `error`.
    pub kind: String,
    /// Whether a PROXY header came first.
    pub proxy: bool,
    /// When the first line was read (and answered), Unix ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line_ms: Option<u64>,
}

/// Reads an echo-server stdout.
pub fn parse_log(text: &str) -> Vec<ConnLog> {
    text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

/// Binds every address in `listen` and serves them until killed.
pub fn serve(listen: &[SocketAddr]) -> Result<()> {
    if listen.is_empty() {
        bail!("usage: echo-server --listen ADDR:PORT [--listen ...]");
    }
    let mut handles = Vec::new();
    for addr in listen {
        let l = TcpListener::bind(addr).with_context(|| format!("binding {addr}"))?;
        handles.push(std::thread::spawn(move || accept_loop(l)));
    }
    eprintln!("echo-server: listening on {listen:?}");
    for h in handles {
        let _ = h.join();
    }
    Ok(())
}

fn accept_loop(l: TcpListener) {
    loop {
        match l.accept() {
            Ok((s, _)) => {
                std::thread::spawn(move || handle(s));
            }
            Err(e) => {
                // Possibly EMFILE: back off instead of spinning.
                eprintln!("echo-server: accept: {e}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

fn handle(s: TcpStream) {
    let local = s.local_addr().map(|a| a.to_string()).unwrap_or_default();
    let peer = s.peer_addr().map(|a| a.to_string()).unwrap_or_default();
    let mut log = ConnLog { unix_ms: crate::unix_ms(), local, peer, kind: "error".into(), proxy: false, line_ms: None };
    match converse(s, &log.local, &mut log.proxy, &mut log.line_ms) {
        Ok(kind) => log.kind = kind.into(),
        Err(e) => eprintln!("echo-server: {} from {}: {e:#}", log.local, log.peer),
    }
    if let Ok(line) = serde_json::to_string(&log) {
        println!("{line}");
    }
}

fn converse(s: TcpStream, local: &str, proxy: &mut bool, line_ms: &mut Option<u64>) -> Result<&'static str> {
    s.set_read_timeout(Some(IDLE))?;
    s.set_write_timeout(Some(IDLE))?;
    s.set_nodelay(true)?;
    let mut w = s.try_clone()?;
    let mut r = BufReader::new(s);
    let head = r.fill_buf()?;
    if head.is_empty() {
        return Ok("empty");
    }
    if head.len() >= 12 && head[..12] == V2_SIG || (head.len() < 12 && V2_SIG.starts_with(head)) {
        let mut fixed = [0u8; 16];
        r.read_exact(&mut fixed).context("PROXY v2 header")?;
        if fixed[..12] != V2_SIG {
            bail!("not a PROXY v2 header");
        }
        let len = u16::from_be_bytes([fixed[14], fixed[15]]) as usize;
        let mut rest = vec![0u8; len];
        r.read_exact(&mut rest).context("PROXY v2 addresses")?;
        *proxy = true;
    } else if head.starts_with(b"PROXY ") {
        let mut line = String::new();
        r.read_line(&mut line)?;
        *proxy = true;
    }
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Ok(if *proxy { "proxy-only" } else { "empty" });
    }
    if line.starts_with("GET ") || line.starts_with("HEAD ") {
        // Skip the headers, answer, close.
        loop {
            let mut h = String::new();
            if r.read_line(&mut h)? == 0 || h.trim().is_empty() {
                break;
            }
        }
        let body = format!("{local}\n");
        let head_only = line.starts_with("HEAD ");
        write!(
            w,
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
            body.len(),
            if head_only { "" } else { &body }
        )?;
        return Ok("http");
    }
    *line_ms = Some(crate::unix_ms());
    w.write_all(format!("{local}\n{line}").as_bytes())?;
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Ok("echo");
        }
        w.write_all(line.as_bytes())?;
    }
}
