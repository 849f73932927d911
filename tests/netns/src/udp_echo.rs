//! The UDP backend (binary `udp-echo`): every datagram is answered to its sender, from the
//! address it was sent to, with `<local addr>\n` followed by the datagram itself, so a client
//! learns which path (WAN address) carried its flow, as the TCP `echo-server` tells it. Logs one
//! JSON line per new peer to stdout (`local`, `peer`; bounded: at most [`MAX_LOGGED`] peers per
//! socket). As a remote peer for TURN ([`Options`]): `--raw` echoes the bytes alone, and
//! `--answer-ip IP` sends each answer to IP at the sender's port instead of to the sender, as an
//! ICE peer answers a TURN relayed address that the relay's own datagrams do not come from.
//! `--sink ADDR:PORT` listens without ever answering (a syslog-like service), logging peers
//! the same way.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// Peers logged per listening socket; later new peers are answered but not logged.
pub const MAX_LOGGED: usize = 100_000;

/// Largest UDP payload over IPv4.
const MAX_DATAGRAM: usize = 65_507;

/// A new peer, as logged.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerLog {
    pub unix_ms: u64,
    /// The address the peer sent to (WAN address and port).
    pub local: String,
    /// The peer (for traffic through an ingress: the ingress's upstream socket of one flow).
    pub peer: String,
}

/// Reads a `udp-echo` stdout.
pub fn parse_log(text: &str) -> Vec<PeerLog> {
    text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

/// How to answer.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Echo the datagram alone, without the `<local addr>\n` line.
    pub raw: bool,
    /// Answer to this address (at the sender's port) instead of to the sender.
    pub answer_ip: Option<IpAddr>,
}

pub const USAGE: &str =
    "usage: udp-echo --listen ADDR:PORT [--listen ...] [--sink ADDR:PORT ...] [--raw] [--answer-ip IP]";

/// Binds every address in `listen` and answers on them until killed.
pub fn serve(listen: &[SocketAddr], opts: Options) -> Result<()> {
    serve_with_sinks(listen, &[], opts)
}

/// As [`serve`], and binds every address in `sinks` without ever answering there.
pub fn serve_with_sinks(listen: &[SocketAddr], sinks: &[SocketAddr], opts: Options) -> Result<()> {
    if listen.is_empty() && sinks.is_empty() {
        bail!("{USAGE}");
    }
    let mut handles = Vec::new();
    for (addr, answer) in listen.iter().map(|a| (a, true)).chain(sinks.iter().map(|a| (a, false))) {
        let s = UdpSocket::bind(addr).with_context(|| format!("binding udp {addr}"))?;
        handles.push(std::thread::spawn(move || answer_loop(s, opts, answer)));
    }
    eprintln!("udp-echo: listening on {listen:?}, sinks {sinks:?}");
    for h in handles {
        let _ = h.join();
    }
    Ok(())
}

fn answer_loop(s: UdpSocket, opts: Options, answer: bool) {
    let local = s.local_addr().map(|a| a.to_string()).unwrap_or_default();
    let mut seen: HashSet<SocketAddr> = HashSet::new();
    let mut buf = vec![0u8; 65_536];
    let mut reply = Vec::with_capacity(65_536);
    loop {
        let (n, peer) = match s.recv_from(&mut buf) {
            Ok(r) => r,
            Err(e) => {
                // ICMP errors of earlier replies surface here; they concern one peer only.
                eprintln!("udp-echo: {local}: receive: {e}");
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
        };
        if seen.len() < MAX_LOGGED && seen.insert(peer) {
            let log = PeerLog { unix_ms: crate::unix_ms(), local: local.clone(), peer: peer.to_string() };
            if let Ok(line) = serde_json::to_string(&log) {
                println!("{line}");
            }
        }
        if !answer {
            continue;
        }
        reply.clear();
        if !opts.raw {
            reply.extend_from_slice(local.as_bytes());
            reply.push(b'\n');
        }
        let room = MAX_DATAGRAM - reply.len();
        reply.extend_from_slice(&buf[..n.min(room)]);
        let to = opts.answer_ip.map_or(peer, |ip| SocketAddr::new(ip, peer.port()));
        if let Err(e) = s.send_to(&reply, to) {
            eprintln!("udp-echo: {local}: reply to {peer}: {e}");
        }
    }
}
