//! Client of the yggdrasil 0.5 admin socket JSON API (`getSelf`, `getPeers`), over a unix
//! socket or TCP, each call one connection under one timeout.
//!
//! Wire format (yggdrasil-go `src/admin/admin.go`): the client sends one JSON object
//! `{"request":"getPeers","arguments":{},"keepalive":false}`; the router answers one JSON object
//! `{"status":"success"|"error","error":"...","request":{...},"response":{...}}` and, without
//! keepalive, closes. Field names follow 0.5.12; `latency_ms` (0.5.8 to 0.5.11) is accepted too.
//! Durations are Go `time.Duration` values: integer nanoseconds.

use std::fmt;
use std::net::Ipv6Addr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Where an admin socket can live under Debian's yggdrasil unit: it runs with
/// `ProtectSystem=strict` and may write only its `RuntimeDirectory` (/run/yggdrasil), so
/// yggdrasil's compiled-in `AdminListen` (unix:///var/run/yggdrasil.sock) cannot be created there;
/// the roll-out's yggdrasil role sets `AdminListen` to this path.
pub const DEFAULT_ENDPOINT: &str = "unix:///run/yggdrasil/yggdrasil.sock";

/// Whether `ip` is a Yggdrasil address: in 200::/7, the only addresses the mesh routes (a node's
/// own, 200::/8, or a subnet's, 300::/8).
pub fn is_mesh_address(ip: std::net::IpAddr) -> bool {
    matches!(ip, std::net::IpAddr::V6(v6) if v6.segments()[0] & 0xfe00 == 0x0200)
}

/// Answers larger than this are refused rather than buffered (a getPeers answer is ~700 bytes
/// a peer).
const MAX_RESPONSE: usize = 4 * 1024 * 1024;

/// Where the admin socket listens, as in yggdrasil's `AdminListen` setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `unix:///path` (or a bare absolute path).
    Unix(PathBuf),
    /// `tcp://host:port` (or a bare `host:port`).
    Tcp(String),
}

impl FromStr for Endpoint {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        if let Some(path) = s.strip_prefix("unix://") {
            if !path.is_empty() {
                return Ok(Self::Unix(path.into()));
            }
        } else if s.starts_with('/') {
            return Ok(Self::Unix(s.into()));
        } else {
            let addr = s.strip_prefix("tcp://").unwrap_or(s);
            // Another scheme (`udp://`, `tls://`) is not an admin endpoint.
            if addr.contains("://") {
                return Err(Error::BadEndpoint(s.to_owned()));
            }
            if addr.rsplit_once(':').is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok()) {
                return Ok(Self::Tcp(addr.to_owned()));
            }
        }
        Err(Error::BadEndpoint(s.to_owned()))
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unix(p) => write!(f, "unix://{}", p.display()),
            Self::Tcp(a) => write!(f, "tcp://{a}"),
        }
    }
}

/// Why an admin call failed; each names the endpoint.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The endpoint string is not of a known form.
    #[error("yggdrasil admin endpoint {0:?} is not unix:///path or tcp://host:port")]
    BadEndpoint(String),
    /// Could not connect (router not running, wrong path, permissions).
    #[error("connecting to yggdrasil admin socket {endpoint}: {source}")]
    Connect {
        /// The endpoint.
        endpoint: String,
        /// The connect error.
        source: std::io::Error,
    },
    /// The connection failed or closed before a whole answer arrived.
    #[error("yggdrasil admin socket {endpoint}, {request}: {source}")]
    Io {
        /// The endpoint.
        endpoint: String,
        /// The request name.
        request: &'static str,
        /// The I/O error.
        source: std::io::Error,
    },
    /// No whole answer within the timeout.
    #[error("yggdrasil admin socket {endpoint} did not answer {request} within {timeout:?}")]
    Timeout {
        /// The endpoint.
        endpoint: String,
        /// The request name.
        request: &'static str,
        /// The timeout that ran out.
        timeout: Duration,
    },
    /// The router answered with `"status": "error"`.
    #[error("yggdrasil admin socket {endpoint}, {request}: router says {message:?}")]
    Remote {
        /// The endpoint.
        endpoint: String,
        /// The request name.
        request: &'static str,
        /// The router's `error` text.
        message: String,
    },
    /// The answer is not the JSON this client expects.
    #[error("yggdrasil admin socket {endpoint}, {request}: cannot decode answer: {source}")]
    Decode {
        /// The endpoint.
        endpoint: String,
        /// The request name.
        request: &'static str,
        /// The JSON error.
        source: serde_json::Error,
    },
    /// The answer exceeded the size limit.
    #[error("yggdrasil admin socket {endpoint}, {request}: answer larger than {MAX_RESPONSE} bytes")]
    TooLarge {
        /// The endpoint.
        endpoint: String,
        /// The request name.
        request: &'static str,
    },
}

/// This node, from `getSelf`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct SelfInfo {
    /// The node's 200::/7 address.
    pub address: Ipv6Addr,
    /// The routed /64 for hosts behind it, as text (`300:…::/64`).
    pub subnet: String,
    /// Ed25519 public key, hex.
    #[serde(rename = "key")]
    pub public_key: String,
    /// `yggdrasil`.
    #[serde(default)]
    pub build_name: String,
    /// e.g. `0.5.12`.
    #[serde(default)]
    pub build_version: String,
    /// Size of the routing table.
    #[serde(default)]
    pub routing_entries: u64,
}

/// One configured or connected peer, from `getPeers`. A peer that is down has `up == false`,
/// an empty key, no address, and usually `last_error`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Peer {
    /// Peer URI (`tcp://…`, `tls://…`); absent for some inbound peers.
    #[serde(default)]
    pub remote: Option<String>,
    /// Whether the link is established.
    pub up: bool,
    /// Whether the peer connected to us.
    #[serde(default)]
    pub inbound: bool,
    /// The peer's 200::/7 address, when up.
    #[serde(default)]
    pub address: Option<Ipv6Addr>,
    /// Ed25519 public key, hex; empty when down.
    #[serde(rename = "key", default)]
    pub public_key: String,
    /// Local switch port number.
    #[serde(default)]
    pub port: u64,
    /// Link priority from the peer URI.
    #[serde(default)]
    pub priority: u64,
    /// Link cost the router computes from RTT (0.5.9 and later; 0 before).
    #[serde(default)]
    pub cost: u64,
    /// Bytes received on the link.
    #[serde(rename = "bytes_recvd", default)]
    pub bytes_received: u64,
    /// Bytes sent on the link.
    #[serde(default)]
    pub bytes_sent: u64,
    /// Receive rate, bytes per second (0.5.11 and later).
    #[serde(rename = "rate_recvd", default)]
    pub rate_received: u64,
    /// Send rate, bytes per second (0.5.11 and later).
    #[serde(default)]
    pub rate_sent: u64,
    /// Time the link has been up.
    #[serde(default, deserialize_with = "seconds_f64")]
    pub uptime: Duration,
    /// Measured RTT, when the router has one.
    #[serde(default, alias = "latency_ms", deserialize_with = "go_duration_opt")]
    pub latency: Option<Duration>,
    /// Time since the last error.
    #[serde(default, deserialize_with = "go_duration_opt")]
    pub last_error_time: Option<Duration>,
    /// The last connection error, if any.
    #[serde(default)]
    pub last_error: Option<String>,
}

/// A Go `time.Duration` (signed nanoseconds); negative values are clamped to zero and zero
/// reads as `None` (yggdrasil omits unmeasured latency as zero).
fn go_duration_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let ns = i64::deserialize(d)?;
    Ok((ns > 0).then(|| Duration::from_nanos(ns.unsigned_abs())))
}

fn seconds_f64<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = f64::deserialize(d)?;
    Duration::try_from_secs_f64(s.max(0.0)).map_err(serde::de::Error::custom)
}

#[derive(Deserialize)]
struct PeersResponse {
    peers: Vec<Peer>,
}

#[derive(Deserialize)]
struct Envelope {
    status: String,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    response: serde_json::Value,
}

/// Asks the router about itself.
pub async fn get_self(endpoint: &Endpoint, timeout: Duration) -> Result<SelfInfo, Error> {
    call(endpoint, "getSelf", timeout).await
}

/// Lists the router's peers, up and down, in the router's order.
pub async fn get_peers(endpoint: &Endpoint, timeout: Duration) -> Result<Vec<Peer>, Error> {
    let r: PeersResponse = call(endpoint, "getPeers", timeout).await?;
    Ok(r.peers)
}

/// Sends one argument-less request and decodes the `response` member as `T`.
pub async fn call<T: DeserializeOwned>(
    endpoint: &Endpoint,
    request: &'static str,
    timeout: Duration,
) -> Result<T, Error> {
    let name = || endpoint.to_string();
    let work = async {
        match endpoint {
            Endpoint::Unix(path) => {
                let s = tokio::net::UnixStream::connect(path)
                    .await
                    .map_err(|source| Error::Connect { endpoint: name(), source })?;
                exchange(s, request).await
            }
            Endpoint::Tcp(addr) => {
                let s = tokio::net::TcpStream::connect(addr.as_str())
                    .await
                    .map_err(|source| Error::Connect { endpoint: name(), source })?;
                exchange(s, request).await
            }
        }
    };
    let reply = match tokio::time::timeout(timeout, work).await {
        Err(_) => return Err(Error::Timeout { endpoint: name(), request, timeout }),
        Ok(Err(Exchange::Io(source))) => return Err(Error::Io { endpoint: name(), request, source }),
        Ok(Err(Exchange::TooLarge)) => return Err(Error::TooLarge { endpoint: name(), request }),
        Ok(Err(Exchange::Other(e))) => return Err(e),
        Ok(Ok(reply)) => reply,
    };
    decode(&reply).map_err(|e| match e {
        Decoded::Json(source) => Error::Decode { endpoint: name(), request, source },
        Decoded::Remote(message) => Error::Remote { endpoint: name(), request, message },
    })
}

enum Exchange {
    Io(std::io::Error),
    TooLarge,
    Other(Error),
}

impl From<Error> for Exchange {
    fn from(e: Error) -> Self {
        Self::Other(e)
    }
}

/// Writes the request, then reads until the bytes hold one whole JSON value: the router closes
/// after it, but stopping at the value's end keeps us from depending on that.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, request: &str) -> Result<Vec<u8>, Exchange> {
    let req = serde_json::json!({ "request": request, "arguments": {}, "keepalive": false });
    let mut bytes = req.to_string().into_bytes();
    bytes.push(b'\n');
    s.write_all(&bytes).await.map_err(Exchange::Io)?;
    s.flush().await.map_err(Exchange::Io)?;
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    let mut end = ValueEnd::default();
    loop {
        let n = s.read(&mut chunk).await.map_err(Exchange::Io)?;
        if n == 0 {
            // Closed: whatever we have is the answer (decode reports it if truncated).
            return Ok(buf);
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > MAX_RESPONSE {
            return Err(Exchange::TooLarge);
        }
        if end.whole(&chunk[..n], &buf) {
            return Ok(buf);
        }
    }
}

/// Where a reply's top-level value may end, found by one pass over the bytes as they arrive.
/// Parsing the whole reply after every chunk instead cost time quadratic in its length (seconds
/// of CPU for a 4 MiB reply); the parser now runs only once the brackets close, in practice
/// once per reply.
#[derive(Default)]
struct ValueEnd {
    depth: usize,
    started: bool,
    in_string: bool,
    escaped: bool,
    /// The brackets closed, or the reply is not an object or array (an answer `decode`
    /// refuses, so there is nothing to wait for).
    ended: bool,
}

impl ValueEnd {
    /// Takes the next bytes of `buf` (which ends with them); whether the reply is whole: its
    /// brackets closed and the parser agrees, or it is no object or array at all (read no
    /// further: parsing it again at every chunk is the cost this scan avoids).
    fn whole(&mut self, next: &[u8], buf: &[u8]) -> bool {
        self.feed(next) && (!self.started || is_complete_json(buf))
    }

    /// Takes the next bytes; whether the value may have ended.
    fn feed(&mut self, bytes: &[u8]) -> bool {
        for &b in bytes {
            if self.ended {
                break;
            }
            if !self.started {
                match b {
                    b' ' | b'\t' | b'\r' | b'\n' => {}
                    b'{' | b'[' => (self.started, self.depth) = (true, 1),
                    _ => self.ended = true,
                }
            } else if self.in_string {
                match b {
                    _ if self.escaped => self.escaped = false,
                    b'\\' => self.escaped = true,
                    b'"' => self.in_string = false,
                    _ => {}
                }
            } else {
                match b {
                    b'"' => self.in_string = true,
                    b'{' | b'[' => self.depth += 1,
                    b'}' | b']' => {
                        self.depth -= 1;
                        self.ended = self.depth == 0;
                    }
                    _ => {}
                }
            }
        }
        self.ended
    }
}

/// Whether `buf` starts with one whole JSON value (anything but an early end is "complete":
/// a syntax error is better reported by `decode` than waited on).
fn is_complete_json(buf: &[u8]) -> bool {
    let mut values = serde_json::Deserializer::from_slice(buf).into_iter::<serde::de::IgnoredAny>();
    match values.next() {
        None => false,
        // A number that ends where the bytes end may go on (`2` of `25`).
        Some(Ok(_)) => !(values.byte_offset() == buf.len() && buf.last().is_some_and(u8::is_ascii_digit)),
        Some(Err(e)) if e.is_eof() => false,
        // A number cut after its `.` or `e` is reported as a syntax error, not as EOF: an
        // error on the last byte read may still be mended by the bytes to come (found by
        // fuzzing: a reply cut inside `2.269830e-7` ended the exchange early). An error
        // before the last byte is final.
        Some(Err(e)) => (e.line(), e.column()) != end_position(buf),
    }
}

/// The (line, column) serde_json gives the last byte of `buf` (both 1-based; columns count
/// bytes).
fn end_position(buf: &[u8]) -> (usize, usize) {
    let line = 1 + buf.iter().filter(|&&b| b == b'\n').count();
    let column = buf.len() - buf.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    (line, column)
}

enum Decoded {
    Json(serde_json::Error),
    Remote(String),
}

/// The reply parsing of [`get_self`] and [`get_peers`] without the socket (sans-io, for
/// tests and fuzzing): whether `buf` already holds a whole reply, and its decoded `getSelf`
/// and `getPeers` answers; `Err` says what is wrong with the bytes or what the router refused.
pub mod sans_io {
    use super::*;

    /// Whether the bytes read so far hold one whole JSON value (the exchange stops there).
    pub fn reply_complete(buf: &[u8]) -> bool {
        ValueEnd::default().whole(buf, buf)
    }

    /// A `getSelf` reply.
    pub fn decode_self(reply: &[u8]) -> Result<SelfInfo, String> {
        decode(reply).map_err(text)
    }

    /// A `getPeers` reply.
    pub fn decode_peers(reply: &[u8]) -> Result<Vec<Peer>, String> {
        decode::<PeersResponse>(reply).map(|r| r.peers).map_err(text)
    }

    fn text(e: Decoded) -> String {
        match e {
            Decoded::Json(e) => e.to_string(),
            Decoded::Remote(m) => m,
        }
    }
}

/// Decodes an answer envelope and its `response` member.
fn decode<T: DeserializeOwned>(reply: &[u8]) -> Result<T, Decoded> {
    // Only the first JSON value counts; the router sends nothing after it.
    let env: Envelope = serde_json::Deserializer::from_slice(reply)
        .into_iter()
        .next()
        .unwrap_or_else(|| serde_json::from_slice(reply))
        .map_err(Decoded::Json)?;
    if env.status != "success" {
        return Err(Decoded::Remote(env.error.unwrap_or_else(|| format!("status {:?}", env.status))));
    }
    T::deserialize(env.response).map_err(Decoded::Json)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use tokio::net::UnixListener;

    // Captured from yggdrasil 0.5.12 (Debian bookworm-backports): two routers peered over
    // loopback, then the second one alone with its peer gone.
    const SELF: &[u8] = include_bytes!("../tests/fixtures/ygg_0.5.12_getself.json");
    const PEERS: &[u8] = include_bytes!("../tests/fixtures/ygg_0.5.12_getpeers.json");
    const PEERS_DOWN: &[u8] = include_bytes!("../tests/fixtures/ygg_0.5.12_getpeers_down.json");
    const ERROR: &[u8] = include_bytes!("../tests/fixtures/ygg_0.5.12_error.json");

    fn peers(reply: &[u8]) -> Vec<Peer> {
        decode::<PeersResponse>(reply).ok().unwrap().peers
    }

    #[test]
    fn endpoints() {
        let ok = [
            ("unix:///var/run/yggdrasil.sock", Endpoint::Unix("/var/run/yggdrasil.sock".into())),
            ("/tmp/y.sock", Endpoint::Unix("/tmp/y.sock".into())),
            ("tcp://localhost:9001", Endpoint::Tcp("localhost:9001".into())),
            ("127.0.0.1:9001", Endpoint::Tcp("127.0.0.1:9001".into())),
            ("tcp://[::1]:9001", Endpoint::Tcp("[::1]:9001".into())),
        ];
        for (s, want) in ok {
            assert_eq!(s.parse::<Endpoint>().unwrap(), want, "{s}");
        }
        for s in ["", "unix://", "tcp://host", "localhost", "udp://a:1", "tcp://:1"] {
            assert!(matches!(s.parse::<Endpoint>(), Err(Error::BadEndpoint(_))), "{s}");
        }
        assert_eq!(DEFAULT_ENDPOINT.parse::<Endpoint>().unwrap().to_string(), DEFAULT_ENDPOINT);
    }

    #[test]
    fn decode_get_self() {
        let s: SelfInfo = decode(SELF).ok().unwrap();
        assert_eq!(s.address, "201:c1fa:2e6f:c2f3:34ad:a9b0:2b68:5549".parse::<Ipv6Addr>().unwrap());
        assert_eq!(s.subnet, "301:c1fa:2e6f:c2f3::/64");
        assert_eq!(s.public_key.len(), 64);
        assert_eq!((s.build_name.as_str(), s.build_version.as_str()), ("yggdrasil", "0.5.12"));
        assert_eq!(s.routing_entries, 2);
    }

    #[test]
    fn decode_get_peers_up_and_down() {
        let up = peers(PEERS);
        assert_eq!(up.len(), 1);
        let p = &up[0];
        assert!(p.up && !p.inbound);
        assert_eq!(p.remote.as_deref(), Some("tcp://127.0.0.1:17991"));
        assert_eq!(p.address, Some("201:c1fa:2e6f:c2f3:34ad:a9b0:2b68:5549".parse().unwrap()));
        assert_eq!(p.cost, 1);
        assert_eq!(p.latency, Some(Duration::from_micros(720)));
        assert_eq!((p.bytes_received, p.bytes_sent, p.rate_received), (531, 773, 207));
        assert_eq!(p.uptime, Duration::from_nanos(2_269_830_631));
        assert_eq!(p.last_error_time, Some(Duration::from_nanos(4_270_528_810)));
        assert!(p.last_error.as_deref().unwrap().contains("connection refused"));

        let down = peers(PEERS_DOWN);
        let p = &down[0];
        assert!(!p.up);
        assert_eq!((p.address, p.latency, p.cost), (None, None, 0));
        assert_eq!(p.public_key, "");
        assert_eq!(p.uptime, Duration::ZERO);
        assert!(p.last_error.is_some());
    }

    #[test]
    fn decode_older_and_errors() {
        // 0.5.8 to 0.5.11 named the RTT `latency_ms` (still nanoseconds) and had no rates;
        // 0.5.0 to 0.5.8 had no cost.
        let old = br#"{"status":"success","request":{"request":"getPeers"},"response":{"peers":[
            {"remote":"tls://198.51.100.7:443","up":true,"inbound":false,
             "address":"200::1","key":"ab","port":2,"priority":0,"latency_ms":15000000}]}}"#;
        let p = &peers(old)[0];
        assert_eq!((p.latency, p.cost), (Some(Duration::from_millis(15)), 0));

        let Err(Decoded::Remote(m)) = decode::<SelfInfo>(ERROR) else { panic!("expected a remote error") };
        assert_eq!(m, "Unknown action 'nosuch', try 'list' for help");
        assert!(matches!(decode::<SelfInfo>(b"{\"status\":"), Err(Decoded::Json(_))));
        assert!(matches!(
            decode::<SelfInfo>(br#"{"status":"success","response":{"address":"x"}}"#),
            Err(Decoded::Json(_))
        ));
    }

    #[test]
    fn completeness() {
        assert!(!is_complete_json(b""));
        assert!(!is_complete_json(&SELF[..SELF.len() / 2]));
        assert!(!is_complete_json(&SELF[..SELF.len() - 2]));
        assert!(is_complete_json(SELF));
        // A syntax error is final once bytes follow it; on the last byte read it may be a
        // value still arriving (a number cut after `.` or `e`).
        assert!(is_complete_json(b"{] "));
        assert!(!is_complete_json(b"{\"a\": 2."));
        assert!(!is_complete_json(b"{\"a\": 2.5e-"));
        assert!(is_complete_json(b"{\"a\": 2.5e-7}"));
        // Completeness never goes away as bytes arrive, whatever they are.
        for (short, long) in [(&b"2"[..], &b"25"[..]), (b"2", b"2T"), (b"{}", b"{}5"), (b"0", b"0en")] {
            assert!(!is_complete_json(short) || is_complete_json(long), "{short:?} then {long:?}");
        }
        assert!(!is_complete_json(b"25") && is_complete_json(b"25 ") && is_complete_json(b"{}5"));
        // Completeness only grows as bytes arrive: every prefix of a reply.
        let mut seen = false;
        for cut in 0..=SELF.len() {
            let now = is_complete_json(&SELF[..cut]);
            assert!(now || !seen, "complete at a shorter prefix, not at {cut}");
            seen |= now;
        }
    }

    #[test]
    fn value_end_scan() {
        let ends = |b: &[u8]| ValueEnd::default().feed(b);
        // Brackets and quotes inside strings, escaped quotes and backslashes.
        let tricky = br#" {"a": "}]\"{", "b": ["\\", {"c": "\\\"}"}], "d": 2.5e-7}"#;
        assert!(ends(tricky) && is_complete_json(tricky));
        for cut in 0..tricky.len() {
            assert!(!ends(&tricky[..cut]), "ended early at {cut}: {:?}", String::from_utf8_lossy(&tricky[..cut]));
        }
        // Not an object or array: nothing to wait for (decode refuses it), whatever follows.
        assert!(ends(b"25") && ends(b" \"x") && !ends(b"  \n"));
        let mut end = ValueEnd::default();
        let string = [&b"\""[..], &[b'a'; 4095]].concat();
        assert!(end.whole(&string, &string), "an open string at the top: whole at once");
        // Fed in pieces as it arrives, it agrees with the parser at every cut, on real replies.
        for reply in [SELF, PEERS, PEERS_DOWN, &tricky[..]] {
            for cut in 0..=reply.len() {
                let mut end = ValueEnd::default();
                let pieces = end.feed(&reply[..cut / 2]) | end.feed(&reply[cut / 2..cut]);
                let whole = &reply[..cut];
                assert_eq!(pieces && is_complete_json(whole), is_complete_json(whole), "at {cut}");
                assert_eq!(sans_io::reply_complete(whole), is_complete_json(whole), "at {cut}");
            }
        }
        // A reply as deep and long as the limit allows is scanned once, its end found at its end.
        let deep: Vec<u8> = [vec![b'['; 1 << 20], vec![b']'; 1 << 20]].concat();
        let mut end = ValueEnd::default();
        assert!(deep.chunks(4096).enumerate().all(|(i, c)| end.feed(c) == (i == 511)));
    }

    fn sock_path() -> PathBuf {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        std::env::temp_dir().join(format!("shared-ygg-test-{}-{n}.sock", std::process::id()))
    }

    /// A stand-in router: reads one request, checks its shape, answers `reply` and, when
    /// `close` is false, keeps the connection open as a keepalive router would.
    async fn serve_once(listener: UnixListener, want: &'static str, reply: &'static [u8], close: bool) {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut req = Vec::new();
        while !req.ends_with(b"\n") {
            let mut b = [0u8; 256];
            let n = s.read(&mut b).await.unwrap();
            assert!(n > 0);
            req.extend_from_slice(&b[..n]);
        }
        let v: serde_json::Value = serde_json::from_slice(&req).unwrap();
        assert_eq!(v, serde_json::json!({"request": want, "arguments": {}, "keepalive": false}));
        s.write_all(reply).await.unwrap();
        if !close {
            std::future::pending::<()>().await;
        }
    }

    #[tokio::test]
    async fn over_unix_socket() {
        let path = sock_path();
        let ep = Endpoint::Unix(path.clone());
        let t = Duration::from_secs(5);

        let l = UnixListener::bind(&path).unwrap();
        let server = tokio::spawn(serve_once(l, "getSelf", SELF, true));
        let s = get_self(&ep, t).await.unwrap();
        assert_eq!(s.build_version, "0.5.12");
        server.await.unwrap();
        std::fs::remove_file(&path).unwrap();

        // The answer is taken as soon as it is whole, even if the server keeps the line open.
        let l = UnixListener::bind(&path).unwrap();
        let server = tokio::spawn(serve_once(l, "getPeers", PEERS, false));
        let p = get_peers(&ep, t).await.unwrap();
        assert_eq!(p[0].cost, 1);
        server.abort();
        std::fs::remove_file(&path).unwrap();

        let l = UnixListener::bind(&path).unwrap();
        let server = tokio::spawn(serve_once(l, "getPeers", ERROR, true));
        let e = get_peers(&ep, t).await.unwrap_err();
        assert!(matches!(e, Error::Remote { .. }), "{e}");
        assert!(e.to_string().contains(&path.display().to_string()), "{e}");
        server.await.unwrap();
        std::fs::remove_file(&path).unwrap();

        // A truncated answer followed by a close.
        let l = UnixListener::bind(&path).unwrap();
        let server = tokio::spawn(serve_once(l, "getSelf", &SELF[..40], true));
        let e = get_self(&ep, t).await.unwrap_err();
        assert!(matches!(e, Error::Decode { .. }), "{e}");
        server.await.unwrap();
        std::fs::remove_file(&path).unwrap();

        // Nobody listening.
        let e = get_self(&ep, t).await.unwrap_err();
        assert!(matches!(e, Error::Connect { .. }), "{e}");
        assert!(e.to_string().contains("shared-ygg-test"), "{e}");
    }

    #[tokio::test(start_paused = true)]
    async fn silent_router_times_out() {
        let path = sock_path();
        let l = UnixListener::bind(&path).unwrap();
        let server = tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            std::future::pending::<()>().await;
            drop(s);
        });
        let ep = Endpoint::Unix(path.clone());
        let e = get_self(&ep, Duration::from_secs(2)).await.unwrap_err();
        assert!(matches!(e, Error::Timeout { .. }), "{e}");
        server.abort();
        std::fs::remove_file(&path).unwrap();
    }

    #[tokio::test]
    async fn over_tcp_loopback() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut b = [0u8; 256];
            let _ = s.read(&mut b).await.unwrap();
            s.write_all(SELF).await.unwrap();
        });
        let ep: Endpoint = format!("tcp://{addr}").parse().unwrap();
        let s = get_self(&ep, Duration::from_secs(5)).await.unwrap();
        assert_eq!(s.subnet, "301:c1fa:2e6f:c2f3::/64");
        server.await.unwrap();
    }
}
