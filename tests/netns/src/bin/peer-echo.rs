//! `peer-echo`: a LAN service that tells each client the address it sees, and the probes that
//! ask it. Used by the local proxy end-to-end tests (`tests/local_proxy_e2e.rs`).
//!
//! ```text
//! peer-echo serve [--http ADDR]... [--tcp ADDR]... [--udp ADDR]...
//!     http: answers every request `200` with `peer=<peer>\n` and the request head;
//!     tcp:  writes `peer=<peer>\n`, then echoes lines;
//!     udp:  answers every datagram with `peer=<peer>`.
//!     Logs `<kind> peer=<peer>` per connection or datagram to stdout.
//! peer-echo tcp --to ADDR [--timeout-ms N] [--hold-ms N]
//!     connects, prints `local=<own addr>` and the greeting line; with --hold-ms, keeps the
//!     connection that long, then sends `ping` and prints `echo=<the line echoed back>`.
//! peer-echo udp --to ADDR [--proxy-client ADDR] [--timeout-ms N]
//!     sends one datagram (after a PROXY v2 header naming --proxy-client, if given), prints
//!     `local=<own addr>` and the reply; fails when no reply comes in time.
//! ```
//! Every wait is bounded; the server threads run until the process is killed.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// Idle bound of a served connection.
const IDLE: Duration = Duration::from_secs(30);
/// Largest request head read.
const MAX_HEAD: usize = 64 * 1024;
/// PROXY protocol v2 signature.
const V2_SIG: [u8; 12] = [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("serve") => serve(&args[1..]),
        Some("tcp") => probe_tcp(&args[1..]),
        Some("udp") => probe_udp(&args[1..]),
        _ => Err(anyhow::anyhow!("usage: peer-echo serve|tcp|udp ... (see the source's header)")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("peer-echo: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `--flag value` pairs.
fn flags(args: &[String]) -> Result<Vec<(&str, &str)>> {
    if !args.chunks_exact(2).remainder().is_empty() {
        bail!("flags come in pairs: {args:?}");
    }
    Ok(args.chunks(2).map(|c| (c[0].as_str(), c[1].as_str())).collect())
}

fn addr(v: &str) -> Result<SocketAddr> {
    v.parse().with_context(|| format!("`{v}` is not IP:PORT"))
}

fn timeout(f: &[(&str, &str)]) -> Result<Duration> {
    let ms = f.iter().find(|(k, _)| *k == "--timeout-ms").map(|(_, v)| v.parse::<u64>()).transpose()?;
    Ok(Duration::from_millis(ms.unwrap_or(3000)))
}

fn serve(args: &[String]) -> Result<()> {
    let mut threads = Vec::new();
    for (flag, value) in flags(args)? {
        let a = addr(value)?;
        match flag {
            "--http" => {
                let l = TcpListener::bind(a).with_context(|| format!("binding {a}"))?;
                threads.push(std::thread::spawn(move || accept(l, http)));
            }
            "--tcp" => {
                let l = TcpListener::bind(a).with_context(|| format!("binding {a}"))?;
                threads.push(std::thread::spawn(move || accept(l, tcp)));
            }
            "--udp" => {
                let s = UdpSocket::bind(a).with_context(|| format!("binding {a}"))?;
                threads.push(std::thread::spawn(move || udp(s)));
            }
            other => bail!("unknown flag {other}"),
        }
    }
    if threads.is_empty() {
        bail!("nothing to serve");
    }
    eprintln!("peer-echo: serving {args:?}");
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}

fn accept(l: TcpListener, handler: fn(TcpStream, SocketAddr) -> Result<()>) {
    loop {
        match l.accept() {
            Ok((s, peer)) => {
                std::thread::spawn(move || {
                    if let Err(e) = s.set_read_timeout(Some(IDLE)).and_then(|_| s.set_write_timeout(Some(IDLE))) {
                        eprintln!("peer-echo: {peer}: {e}");
                        return;
                    }
                    if let Err(e) = handler(s, peer) {
                        eprintln!("peer-echo: {peer}: {e:#}");
                    }
                });
            }
            Err(e) => {
                // Possibly EMFILE: back off instead of spinning.
                eprintln!("peer-echo: accept: {e}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

fn log(kind: &str, peer: SocketAddr) {
    println!("{kind} peer={peer}");
    let _ = std::io::stdout().flush();
}

fn http(s: TcpStream, peer: SocketAddr) -> Result<()> {
    log("http", peer);
    let mut w = s.try_clone()?;
    let mut r = BufReader::new(s.take(MAX_HEAD as u64));
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        head.push_str(&line);
    }
    let body = format!("peer={peer}\n{head}");
    write!(
        w,
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    Ok(())
}

fn tcp(s: TcpStream, peer: SocketAddr) -> Result<()> {
    log("tcp", peer);
    let mut w = s.try_clone()?;
    w.write_all(format!("peer={peer}\n").as_bytes())?;
    let mut r = BufReader::new(s);
    let mut line = String::new();
    while r.read_line(&mut line)? > 0 {
        w.write_all(line.as_bytes())?;
        line.clear();
    }
    Ok(())
}

fn udp(s: UdpSocket) {
    let mut buf = [0u8; 2048];
    loop {
        match s.recv_from(&mut buf) {
            Ok((_, peer)) => {
                log("udp", peer);
                if let Err(e) = s.send_to(format!("peer={peer}").as_bytes(), peer) {
                    eprintln!("peer-echo: udp reply to {peer}: {e}");
                }
            }
            Err(e) => {
                eprintln!("peer-echo: udp recv: {e}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

fn probe_tcp(args: &[String]) -> Result<()> {
    let f = flags(args)?;
    let to = addr(f.iter().find(|(k, _)| *k == "--to").context("--to ADDR")?.1)?;
    let t = timeout(&f)?;
    let s = TcpStream::connect_timeout(&to, t).with_context(|| format!("connecting {to}"))?;
    s.set_read_timeout(Some(t))?;
    println!("local={}", s.local_addr()?);
    let mut w = s.try_clone()?;
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).context("reading the greeting")?;
    if line.is_empty() {
        bail!("closed without a greeting");
    }
    print!("{line}");
    let _ = std::io::stdout().flush();
    if let Some((_, hold)) = f.iter().find(|(k, _)| *k == "--hold-ms") {
        std::thread::sleep(Duration::from_millis(hold.parse()?));
        w.write_all(b"ping\n")?;
        line.clear();
        r.read_line(&mut line).context("reading the echo after holding")?;
        if line.is_empty() {
            bail!("closed while held");
        }
        print!("echo={line}");
    }
    Ok(())
}

/// A PROXY v2 header for a datagram from `client` to `dest` (same family).
fn proxy_v2(client: SocketAddr, dest: SocketAddr) -> Result<Vec<u8>> {
    let mut h = V2_SIG.to_vec();
    h.push(0x21); // version 2, PROXY
    match (client, dest) {
        (SocketAddr::V4(c), SocketAddr::V4(d)) => {
            h.push(0x12); // AF_INET, DGRAM
            h.extend_from_slice(&12u16.to_be_bytes());
            h.extend_from_slice(&c.ip().octets());
            h.extend_from_slice(&d.ip().octets());
        }
        (SocketAddr::V6(c), SocketAddr::V6(d)) => {
            h.push(0x22); // AF_INET6, DGRAM
            h.extend_from_slice(&36u16.to_be_bytes());
            h.extend_from_slice(&c.ip().octets());
            h.extend_from_slice(&d.ip().octets());
        }
        _ => bail!("--proxy-client {client} and --to {dest} differ in family"),
    }
    h.extend_from_slice(&client.port().to_be_bytes());
    h.extend_from_slice(&dest.port().to_be_bytes());
    Ok(h)
}

fn probe_udp(args: &[String]) -> Result<()> {
    let f = flags(args)?;
    let to = addr(f.iter().find(|(k, _)| *k == "--to").context("--to ADDR")?.1)?;
    let t = timeout(&f)?;
    let any: SocketAddr = if to.is_ipv4() { "0.0.0.0:0".parse()? } else { "[::]:0".parse()? };
    let s = UdpSocket::bind(any)?;
    s.connect(to)?;
    s.set_read_timeout(Some(t))?;
    let mut datagram = match f.iter().find(|(k, _)| *k == "--proxy-client") {
        Some((_, c)) => proxy_v2(addr(c)?, to)?,
        None => Vec::new(),
    };
    datagram.extend_from_slice(b"hello");
    s.send(&datagram)?;
    println!("local={}", s.local_addr()?);
    let mut buf = [0u8; 2048];
    let n = s.recv(&mut buf).with_context(|| format!("no reply from {to} within {t:?}"))?;
    println!("{}", String::from_utf8_lossy(&buf[..n]));
    Ok(())
}
