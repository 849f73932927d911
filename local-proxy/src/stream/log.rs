//! Stream access logs: one JSON line per TCP connection and per UDP flow, written when it
//! ends, through the same writers as the HTTP access log (`crate::access_log`): a bounded
//! buffer per file that never makes a connection wait (a full buffer drops and counts the
//! line), reopened on SIGUSR1 and SIGHUP. A stream may share its file with sites or other
//! streams (one writer per path).
//!
//! Fields: `time` (RFC 3339 UTC: when the connection was accepted or the flow's first
//! datagram arrived), `stream`, `proto` (`tcp`, `udp`), `client`/`client_port` (the client as
//! the proxy believes it: from a trusted ingress's PROXY header, else the peer), `listen_port`,
//! `upstream` (the address connected to; null when none was), `result` (`ok`, or why no
//! upstream took it: `no_upstream`, `connect_failed`, `connect_timeout`,
//! `transparent_failed`, `local_resources`), `end` (TCP: `closed`, `idle`, `error`; UDP: `idle`, `evicted` (its
//! slot went to a new client at `max_flows`), `upstream_down` (reopened on another upstream),
//! `reload` (a reload changed its stream; reopened under the new settings),
//! `stopped` (shutdown, or a reload closed its socket)), `bytes_in` (client to upstream, payload
//! only), `bytes_out` (upstream to client), `datagrams_in`/`datagrams_out` (UDP; null for
//! TCP), `attempts` (TCP: upstreams tried), `duration_ms` (to the end: an idle flow ends `idle_timeout`
//! after its last datagram).
//!
//! A UDP datagram refused before a flow exists (no upstream, flow cap, untrusted sender) has
//! no line: a flood would otherwise write one per datagram; the metrics count those.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Instant, SystemTime};

use serde::Serialize;

use crate::access_log::Sink;
use crate::config::Config;

/// The stream log writers of one config generation, by stream name.
#[derive(Debug, Default)]
pub struct StreamLogs {
    by_name: HashMap<String, Arc<Sink>>,
}

/// A stream's log file cannot be opened: the start or the reload is refused.
#[derive(Debug, thiserror::Error)]
#[error("{field}: cannot open `{path}`: {source}")]
pub struct StreamLogError {
    pub field: String,
    pub path: String,
    pub source: std::io::Error,
}

impl StreamLogs {
    /// Opens (or shares) the writer of every stream with an `access_log`.
    pub fn build(config: &Config) -> Result<Self, StreamLogError> {
        let mut by_name = HashMap::new();
        for (i, s) in config.streams.iter().enumerate() {
            let Some(log) = &s.access_log else { continue };
            let sink = crate::access_log::open(&log.path, log.flush).map_err(|source| StreamLogError {
                field: format!("stream[{i}].access_log.path"),
                path: log.path.display().to_string(),
                source,
            })?;
            by_name.insert(s.name.clone(), sink);
        }
        Ok(Self { by_name })
    }

    /// The writer of stream `name`, if it logs.
    pub fn get(&self, name: &str) -> Option<Arc<Sink>> {
        self.by_name.get(name).cloned()
    }
}

/// One line (see the module comment for the fields).
#[derive(Debug, Serialize)]
struct Line<'a> {
    time: String,
    stream: &'a str,
    proto: &'static str,
    client: String,
    client_port: u16,
    listen_port: u16,
    upstream: Option<String>,
    result: &'static str,
    end: &'static str,
    bytes_in: u64,
    bytes_out: u64,
    datagrams_in: Option<u64>,
    datagrams_out: Option<u64>,
    attempts: Option<u32>,
    duration_ms: u64,
}

impl Line<'_> {
    fn send(&self, sink: &Sink) {
        // Serializing plain strings and numbers cannot fail; skip the line rather than panic.
        let _ = sink.write(|buf| serde_json::to_writer(buf, self));
    }
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// What one TCP connection did, for its line.
#[derive(Debug)]
pub struct TcpConn<'a> {
    pub stream: &'a str,
    pub client: SocketAddr,
    pub listen_port: u16,
    pub started: SystemTime,
    pub start: Instant,
    pub upstream: Option<SocketAddr>,
    pub result: &'static str,
    pub end: &'static str,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub attempts: u32,
}

impl TcpConn<'_> {
    pub fn send(&self, sink: &Sink) {
        Line {
            time: rfc3339(self.started),
            stream: self.stream,
            proto: "tcp",
            client: self.client.ip().to_string(),
            client_port: self.client.port(),
            listen_port: self.listen_port,
            upstream: self.upstream.map(|u| u.to_string()),
            result: self.result,
            end: self.end,
            bytes_in: self.bytes_in,
            bytes_out: self.bytes_out,
            datagrams_in: None,
            datagrams_out: None,
            attempts: Some(self.attempts),
            duration_ms: self.start.elapsed().as_millis() as u64,
        }
        .send(sink);
    }
}

/// A UDP flow's byte and datagram counts; the reply pump adds to the `out` side.
#[derive(Debug, Default)]
pub struct FlowCounts {
    bytes_in: AtomicU64,
    datagrams_in: AtomicU64,
    bytes_out: AtomicU64,
    datagrams_out: AtomicU64,
}

impl FlowCounts {
    /// `n` datagrams of `len` payload bytes each sent to the upstream.
    pub fn inbound(&self, n: usize, len: usize) {
        self.bytes_in.fetch_add((n * len) as u64, Ordering::Relaxed);
        self.datagrams_in.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// `n` replies of `len` bytes each sent to the client.
    pub fn outbound(&self, n: usize, len: usize) {
        self.bytes_out.fetch_add((n * len) as u64, Ordering::Relaxed);
        self.datagrams_out.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// The log line of one UDP flow, sent when the flow is dropped (whatever removed it).
#[derive(Debug)]
pub struct FlowLog {
    sink: Arc<Sink>,
    stream: String,
    client: SocketAddr,
    listen_port: u16,
    upstream: SocketAddr,
    started: SystemTime,
    start: Instant,
    pub counts: Arc<FlowCounts>,
    /// Why it ended, set by whoever removes it; unset: its socket stopped serving.
    end: OnceLock<&'static str>,
}

impl FlowLog {
    pub fn new(sink: Arc<Sink>, stream: &str, client: SocketAddr, listen_port: u16, upstream: SocketAddr) -> Self {
        Self {
            sink,
            stream: stream.to_owned(),
            client,
            listen_port,
            upstream,
            started: SystemTime::now(),
            start: Instant::now(),
            counts: Arc::default(),
            end: OnceLock::new(),
        }
    }

    /// Why the flow ends (the first reason given wins).
    pub fn ending(&self, why: &'static str) {
        let _ = self.end.set(why);
    }
}

impl Drop for FlowLog {
    fn drop(&mut self) {
        let c = &self.counts;
        Line {
            time: rfc3339(self.started),
            stream: &self.stream,
            proto: "udp",
            client: self.client.ip().to_string(),
            client_port: self.client.port(),
            listen_port: self.listen_port,
            upstream: Some(self.upstream.to_string()),
            result: "ok",
            end: self.end.get().copied().unwrap_or("stopped"),
            bytes_in: c.bytes_in.load(Ordering::Relaxed),
            bytes_out: c.bytes_out.load(Ordering::Relaxed),
            datagrams_in: Some(c.datagrams_in.load(Ordering::Relaxed)),
            datagrams_out: Some(c.datagrams_out.load(Ordering::Relaxed)),
            attempts: None,
            duration_ms: self.start.elapsed().as_millis() as u64,
        }
        .send(&self.sink);
    }
}
