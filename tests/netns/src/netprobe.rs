//! A tiny reachability prober (binary `netprobe`) for firewall tests: TCP and UDP, from a chosen
//! source address, optionally with a PROXY v2 header; and a server mode answering both (TCP:
//! `<local addr>\n` then the echoed line; UDP: `<local addr> <payload>`). Results are reported
//! by exit code, so a test tells "dropped" (connect timeout) from "refused" (RST).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::cmd;

/// Exit codes of the client modes.
pub const EXIT_OK: i32 = 0;
pub const EXIT_TIMEOUT: i32 = 2;
pub const EXIT_REFUSED: i32 = 3;
pub const EXIT_OTHER: i32 = 4;

/// What a probe saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// The reply text.
    Answer(String),
    /// No answer in time: the packets were dropped (or nothing replied).
    Timeout,
    /// TCP reset: the host is reachable but nothing listens there.
    Refused,
    /// Anything else, with the probe's stderr.
    Error(String),
}

impl Seen {
    pub fn answered(&self) -> bool {
        matches!(self, Seen::Answer(_))
    }
}

/// One probe to run.
#[derive(Debug, Clone)]
pub struct Probe {
    pub udp: bool,
    pub to: SocketAddr,
    pub from: Option<IpAddr>,
    /// Send a PROXY v2 header first (TCP), claiming this client address.
    pub proxy_v2_client: Option<SocketAddr>,
    pub timeout: Duration,
    pub send: String,
}

impl Probe {
    pub fn tcp(to: SocketAddr) -> Self {
        Self { udp: false, to, from: None, proxy_v2_client: None, timeout: Duration::from_secs(1), send: "ping".into() }
    }

    pub fn udp(to: SocketAddr) -> Self {
        Self { udp: true, ..Self::tcp(to) }
    }

    pub fn from(mut self, ip: IpAddr) -> Self {
        self.from = Some(ip);
        self
    }

    pub fn timeout_ms(mut self, ms: u64) -> Self {
        self.timeout = Duration::from_millis(ms);
        self
    }

    pub fn proxy_v2(mut self, client: SocketAddr) -> Self {
        self.proxy_v2_client = Some(client);
        self
    }

    fn args(&self) -> Vec<String> {
        let mut a = vec![if self.udp { "udp" } else { "tcp" }.to_string(), "--to".into(), self.to.to_string()];
        if let Some(f) = self.from {
            a.extend(["--from".into(), f.to_string()]);
        }
        if let Some(c) = self.proxy_v2_client {
            a.extend(["--proxy-v2".into(), c.to_string()]);
        }
        a.extend(["--timeout-ms".into(), self.timeout.as_millis().to_string(), "--send".into(), self.send.clone()]);
        a
    }

    /// Runs `bin` (the `netprobe` binary) inside namespace `ns`.
    pub fn run_in(&self, bin: &Path, ns: &str) -> Result<Seen> {
        let mut argv = vec![bin.display().to_string()];
        argv.extend(self.args());
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let out = cmd::exec(ns, &argv, self.timeout * 3 + Duration::from_secs(5))?;
        Ok(match out.status.code() {
            Some(EXIT_OK) => Seen::Answer(out.stdout.trim().to_string()),
            Some(EXIT_TIMEOUT) => Seen::Timeout,
            Some(EXIT_REFUSED) => Seen::Refused,
            _ => Seen::Error(format!("{}: {}", out.status, out.stderr.trim())),
        })
    }
}

/// A PROXY v2 `PROXY` header for a TCP connection from `client` to `server`.
pub fn proxy_v2_header(client: SocketAddr, server: SocketAddr) -> Vec<u8> {
    let mut h = vec![0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A, 0x21];
    match (client, server) {
        (SocketAddr::V4(c), SocketAddr::V4(s)) => {
            h.push(0x11);
            h.extend_from_slice(&12u16.to_be_bytes());
            h.extend_from_slice(&c.ip().octets());
            h.extend_from_slice(&s.ip().octets());
        }
        _ => {
            let v6 = |a: SocketAddr| match a.ip() {
                IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
                IpAddr::V6(v6) => v6.octets(),
            };
            h.push(0x21);
            h.extend_from_slice(&36u16.to_be_bytes());
            h.extend_from_slice(&v6(client));
            h.extend_from_slice(&v6(server));
        }
    }
    h.extend_from_slice(&client.port().to_be_bytes());
    h.extend_from_slice(&server.port().to_be_bytes());
    h
}

fn bound_socket(to: SocketAddr, from: Option<IpAddr>, ty: Type, proto: Protocol) -> std::io::Result<Socket> {
    let s = Socket::new(Domain::for_address(to), ty, Some(proto))?;
    if let Some(ip) = from {
        s.bind(&SockAddr::from(SocketAddr::new(ip, 0)))?;
    }
    Ok(s)
}

/// Client side, as the binary runs it: prints the reply; returns the exit code.
pub fn client(p: &Probe) -> i32 {
    let result = if p.udp { udp_client(p) } else { tcp_client(p) };
    match result {
        Ok(reply) => {
            println!("{reply}");
            EXIT_OK
        }
        Err(e) => {
            eprintln!("netprobe: {e}");
            match e.kind() {
                std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => EXIT_TIMEOUT,
                std::io::ErrorKind::ConnectionRefused => EXIT_REFUSED,
                _ => EXIT_OTHER,
            }
        }
    }
}

fn tcp_client(p: &Probe) -> std::io::Result<String> {
    let s = bound_socket(p.to, p.from, Type::STREAM, Protocol::TCP)?;
    s.connect_timeout(&SockAddr::from(p.to), p.timeout)?;
    let mut stream: TcpStream = s.into();
    stream.set_read_timeout(Some(p.timeout))?;
    if let Some(client) = p.proxy_v2_client {
        stream.write_all(&proxy_v2_header(client, p.to))?;
    }
    stream.write_all(format!("{}\n", p.send).as_bytes())?;
    // Two lines: who answered, then the echo.
    let mut r = BufReader::new(stream);
    let mut out = String::new();
    for _ in 0..2 {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            break;
        }
        out.push_str(&line);
    }
    if out.is_empty() {
        return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "connection closed without a reply"));
    }
    Ok(out.trim_end().replace('\n', " | "))
}

fn udp_client(p: &Probe) -> std::io::Result<String> {
    let s = bound_socket(p.to, p.from, Type::DGRAM, Protocol::UDP)?;
    let sock: UdpSocket = s.into();
    sock.connect(p.to)?;
    sock.set_read_timeout(Some(p.timeout))?;
    sock.send(p.send.as_bytes())?;
    let mut buf = [0u8; 2048];
    let n = sock.recv(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// Server side: TCP and UDP echo on every given address, until killed.
pub fn serve(tcp: &[SocketAddr], udp: &[SocketAddr]) -> Result<()> {
    if tcp.is_empty() && udp.is_empty() {
        bail!("nothing to serve");
    }
    let mut handles = Vec::new();
    for addr in tcp {
        let l = TcpListener::bind(addr).with_context(|| format!("binding tcp {addr}"))?;
        handles.push(std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                std::thread::spawn(move || tcp_echo(s));
            }
        }));
    }
    for addr in udp {
        let s = UdpSocket::bind(addr).with_context(|| format!("binding udp {addr}"))?;
        let local = *addr;
        handles.push(std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while let Ok((n, peer)) = s.recv_from(&mut buf) {
                let reply = format!("{local} {}", String::from_utf8_lossy(&buf[..n]));
                let _ = s.send_to(reply.as_bytes(), peer);
            }
        }));
    }
    eprintln!("netprobe: serving tcp {tcp:?} udp {udp:?}");
    for h in handles {
        let _ = h.join();
    }
    Ok(())
}

fn tcp_echo(mut s: TcpStream) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let local = s.local_addr().map(|a| a.to_string()).unwrap_or_default();
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while s.read(&mut byte).map(|n| n == 1).unwrap_or(false) {
        line.push(byte[0]);
        if byte[0] == b'\n' {
            break;
        }
    }
    let _ = s.write_all(format!("{local}\n").as_bytes());
    let _ = s.write_all(&line);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_v2_header_shapes() {
        let c: SocketAddr = "192.0.2.11:40000".parse().unwrap_or_else(|_| unreachable!());
        let s: SocketAddr = "203.0.113.10:7000".parse().unwrap_or_else(|_| unreachable!());
        let h = proxy_v2_header(c, s);
        assert_eq!(h.len(), 16 + 12);
        assert_eq!(&h[16..20], &[192, 0, 2, 11]);
        assert_eq!(&h[26..28], &7000u16.to_be_bytes());
    }
}
