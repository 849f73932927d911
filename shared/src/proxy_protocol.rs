//! PROXY protocol (HAProxy `proxy-protocol.txt`): a sans-io v2 encoder, a parser that accepts v2
//! and v1 as HAProxy does, and an async reader that consumes exactly the header and never a byte
//! of the payload behind it.
//!
//! Invariants: `parse` never reads past the header it reports (`Parsed::len`), returns
//! `Incomplete` for every strict prefix of a valid header, and never panics on any input.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

/// The 12-byte v2 signature.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Length of the fixed part of a v2 header (signature, version/command, family, length).
pub const V2_FIXED_LEN: usize = 16;
/// Longest v1 line a receiver must accept, CRLF included (spec section 2.1).
pub const V1_MAX_LEN: usize = 107;
/// Shortest possible v1 header: `PROXY UNKNOWN\r\n`.
const V1_MIN_LEN: usize = 15;
const V1_PREFIX: &[u8] = b"PROXY ";

const ADDR_LEN_INET: usize = 12;
const ADDR_LEN_INET6: usize = 36;
const ADDR_LEN_UNIX: usize = 216;

/// Registered TLV types (spec section 2.2), for callers matching on `Tlv::kind`.
pub mod tlv {
    /// Application-Layer Protocol Negotiation.
    pub const ALPN: u8 = 0x01;
    /// Host name the client asked for (SNI or similar).
    pub const AUTHORITY: u8 = 0x02;
    /// CRC32c of the header.
    pub const CRC32C: u8 = 0x03;
    /// Padding; ignore.
    pub const NOOP: u8 = 0x04;
    /// Opaque connection identifier, up to 128 bytes.
    pub const UNIQUE_ID: u8 = 0x05;
    /// TLS information with sub-TLVs.
    pub const SSL: u8 = 0x20;
    /// Network namespace name.
    pub const NETNS: u8 = 0x30;
}

/// Why a buffer is not (yet) a PROXY header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The bytes so far are a valid prefix; read more. `needed` is a lower bound on the total
    /// header length counted from its start (exact for v2 once its 16-byte fixed part is in),
    /// or `None` for v1, whose end is the CRLF.
    #[error("incomplete PROXY header")]
    Incomplete {
        /// Total bytes the header needs from its start, when known.
        needed: Option<usize>,
    },
    /// The input starts with neither the v2 signature nor `PROXY `.
    #[error("not a PROXY protocol header")]
    NotProxy,
    /// The input is a PROXY header that breaks the specification.
    #[error("invalid PROXY header: {0}")]
    Invalid(&'static str),
}

/// Protocol version of a parsed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// Human-readable text line.
    V1,
    /// Binary header.
    V2,
}

/// The v2 command (v1 headers always report `Proxy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// The proxy opened the connection on its own (health check): use the real endpoints.
    Local,
    /// The connection is relayed on behalf of the client described by the addresses.
    Proxy,
}

/// Transport of the relayed connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Unknown or not given (LOCAL, AF_UNSPEC, v1 `UNKNOWN`).
    Unspec,
    /// SOCK_STREAM: TCP.
    Stream,
    /// SOCK_DGRAM: UDP.
    Datagram,
}

/// Address family announced by the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// No usable address: use the real connection endpoints.
    Unspec,
    /// IPv4.
    Inet,
    /// IPv6.
    Inet6,
    /// AF_UNIX; the 108-byte paths are not decoded and the addresses are reported as `None`.
    Unix,
}

/// A parsed header, borrowing its TLV bytes from the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parsed<'a> {
    /// v1 or v2.
    pub version: Version,
    /// LOCAL or PROXY.
    pub command: Command,
    /// Transport of the relayed connection.
    pub transport: Transport,
    /// Address family as announced (also for LOCAL, where it is ignored).
    pub family: Family,
    /// The client's address; `None` for LOCAL, UNSPEC, UNIX and v1 `UNKNOWN`.
    pub source: Option<SocketAddr>,
    /// The address the client connected to; `None` exactly when `source` is.
    pub destination: Option<SocketAddr>,
    /// Header length in bytes: the payload starts at `buf[len..]`.
    pub len: usize,
    /// The raw TLV area (v2 only, already checked to be well formed).
    tlv_bytes: &'a [u8],
}

impl<'a> Parsed<'a> {
    /// `(source, destination)` when the header carries a usable client address; otherwise the
    /// caller uses the real connection endpoints.
    pub fn addresses(&self) -> Option<(SocketAddr, SocketAddr)> {
        self.source.zip(self.destination)
    }

    /// The TLVs after the address block, in wire order (empty for v1 and LOCAL).
    pub fn tlvs(&self) -> Tlvs<'a> {
        Tlvs { rest: self.tlv_bytes }
    }

    /// An owned copy, for keeping past the input buffer.
    pub fn to_owned_header(&self) -> ProxyHeader {
        ProxyHeader {
            version: self.version,
            command: self.command,
            transport: self.transport,
            family: self.family,
            source: self.source,
            destination: self.destination,
            len: self.len,
            tlv_bytes: self.tlv_bytes.to_vec(),
        }
    }
}

/// An owned parsed header, as returned by [`read_header`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyHeader {
    /// v1 or v2.
    pub version: Version,
    /// LOCAL or PROXY.
    pub command: Command,
    /// Transport of the relayed connection.
    pub transport: Transport,
    /// Address family as announced.
    pub family: Family,
    /// The client's address; `None` for LOCAL, UNSPEC, UNIX and v1 `UNKNOWN`.
    pub source: Option<SocketAddr>,
    /// The address the client connected to; `None` exactly when `source` is.
    pub destination: Option<SocketAddr>,
    /// Header length in bytes that was consumed from the stream.
    pub len: usize,
    tlv_bytes: Vec<u8>,
}

impl ProxyHeader {
    /// `(source, destination)` when the header carries a usable client address.
    pub fn addresses(&self) -> Option<(SocketAddr, SocketAddr)> {
        self.source.zip(self.destination)
    }

    /// The TLVs after the address block, in wire order.
    pub fn tlvs(&self) -> Tlvs<'_> {
        Tlvs { rest: &self.tlv_bytes }
    }
}

/// One type-length-value entry of a v2 header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tlv<'a> {
    /// The type byte (see [`tlv`]).
    pub kind: u8,
    /// The value bytes.
    pub value: &'a [u8],
}

/// Iterator over TLVs; the area was validated by `parse`, so it yields no errors.
#[derive(Debug, Clone)]
pub struct Tlvs<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Tlvs<'a> {
    type Item = Tlv<'a>;

    fn next(&mut self) -> Option<Tlv<'a>> {
        let (tlv, rest) = split_tlv(self.rest).ok()??;
        self.rest = rest;
        Some(tlv)
    }
}

/// Splits the first TLV off `buf`: `Ok(None)` on an empty buffer, `Err` when it does not fit.
fn split_tlv(buf: &[u8]) -> Result<Option<(Tlv<'_>, &[u8])>, Error> {
    let Some((&[kind, hi, lo], rest)) = buf.split_first_chunk::<3>() else {
        return if buf.is_empty() { Ok(None) } else { Err(Error::Invalid("truncated TLV header")) };
    };
    let len = usize::from(u16::from_be_bytes([hi, lo]));
    if rest.len() < len {
        return Err(Error::Invalid("TLV longer than the header"));
    }
    let (value, rest) = rest.split_at(len);
    Ok(Some((Tlv { kind, value }, rest)))
}

/// Parses a v2 or v1 header at the start of `buf`.
///
/// `Err(Incomplete)` means every byte so far is consistent with a header: read more and call
/// again with the longer buffer. Bytes after `Parsed::len` are payload and are not inspected.
pub fn parse(buf: &[u8]) -> Result<Parsed<'_>, Error> {
    if buf.starts_with(&V2_SIGNATURE) {
        parse_v2(buf)
    } else if buf.starts_with(V1_PREFIX) {
        parse_v1(buf)
    } else if buf.is_empty() {
        Err(Error::Incomplete { needed: Some(V1_MIN_LEN) })
    } else if V2_SIGNATURE.starts_with(buf) {
        Err(Error::Incomplete { needed: Some(V2_FIXED_LEN) })
    } else if V1_PREFIX.starts_with(buf) {
        Err(Error::Incomplete { needed: None })
    } else {
        Err(Error::NotProxy)
    }
}

fn parse_v2(buf: &[u8]) -> Result<Parsed<'_>, Error> {
    let Some(fixed) = buf.first_chunk::<V2_FIXED_LEN>() else {
        return Err(Error::Incomplete { needed: Some(V2_FIXED_LEN) });
    };
    let (ver_cmd, fam, len) = (fixed[12], fixed[13], u16::from_be_bytes([fixed[14], fixed[15]]));
    if ver_cmd >> 4 != 2 {
        return Err(Error::Invalid("version is not 2"));
    }
    let command = match ver_cmd & 0x0f {
        0 => Command::Local,
        1 => Command::Proxy,
        _ => return Err(Error::Invalid("unknown command")),
    };
    let (family, addr_len) = match fam >> 4 {
        0 => (Family::Unspec, 0),
        1 => (Family::Inet, ADDR_LEN_INET),
        2 => (Family::Inet6, ADDR_LEN_INET6),
        3 => (Family::Unix, ADDR_LEN_UNIX),
        _ => return Err(Error::Invalid("unknown address family")),
    };
    let transport = match fam & 0x0f {
        0 => Transport::Unspec,
        1 => Transport::Stream,
        2 => Transport::Datagram,
        _ => return Err(Error::Invalid("unknown transport")),
    };
    let total = V2_FIXED_LEN + usize::from(len);
    let Some(block) = buf.get(V2_FIXED_LEN..total) else {
        return Err(Error::Incomplete { needed: Some(total) });
    };
    let mut parsed = Parsed {
        version: Version::V2,
        command,
        transport,
        family,
        source: None,
        destination: None,
        len: total,
        tlv_bytes: &[],
    };
    // LOCAL: the spec says to discard the whole block, family included, so nothing in it can
    // make the header invalid. UNSPEC family or transport: the address block is opaque.
    if command == Command::Local || family == Family::Unspec || transport == Transport::Unspec {
        return Ok(parsed);
    }
    let Some((addrs, tlv_bytes)) = block.split_at_checked(addr_len) else {
        return Err(Error::Invalid("length too short for the address family"));
    };
    let mut rest = tlv_bytes;
    while let Some((_, r)) = split_tlv(rest)? {
        rest = r;
    }
    parsed.tlv_bytes = tlv_bytes;
    let ports = |p: &[u8]| -> Option<(u16, u16)> {
        let &[a, b, c, d] = p else { return None };
        Some((u16::from_be_bytes([a, b]), u16::from_be_bytes([c, d])))
    };
    match family {
        Family::Inet => {
            let (src, rest) = addrs.split_first_chunk::<4>().ok_or(SHORT)?;
            let (dst, rest) = rest.split_first_chunk::<4>().ok_or(SHORT)?;
            let (sp, dp) = ports(rest).ok_or(SHORT)?;
            parsed.source = Some(SocketAddr::new(Ipv4Addr::from(*src).into(), sp));
            parsed.destination = Some(SocketAddr::new(Ipv4Addr::from(*dst).into(), dp));
        }
        Family::Inet6 => {
            let (src, rest) = addrs.split_first_chunk::<16>().ok_or(SHORT)?;
            let (dst, rest) = rest.split_first_chunk::<16>().ok_or(SHORT)?;
            let (sp, dp) = ports(rest).ok_or(SHORT)?;
            parsed.source = Some(SocketAddr::new(Ipv6Addr::from(*src).into(), sp));
            parsed.destination = Some(SocketAddr::new(Ipv6Addr::from(*dst).into(), dp));
        }
        Family::Unix | Family::Unspec => {}
    }
    Ok(parsed)
}

/// Only reachable if the address-length table above is wrong; kept as an error, not a panic.
const SHORT: Error = Error::Invalid("address block too short");

fn parse_v1(buf: &[u8]) -> Result<Parsed<'_>, Error> {
    let window = &buf[..buf.len().min(V1_MAX_LEN)];
    // The spec forbids a lone CR or LF as terminator, so the first CR or LF must start "\r\n".
    let Some(end) = window.iter().position(|&b| b == b'\r' || b == b'\n') else {
        return if buf.len() >= V1_MAX_LEN {
            Err(Error::Invalid("v1 line longer than 107 bytes"))
        } else {
            Err(Error::Incomplete { needed: None })
        };
    };
    match (window[end], window.get(end + 1)) {
        (b'\r', Some(b'\n')) => {}
        (b'\r', None) if buf.len() < V1_MAX_LEN => return Err(Error::Incomplete { needed: None }),
        _ => return Err(Error::Invalid("v1 line not ended by CRLF")),
    }
    let len = end + 2;
    let line =
        std::str::from_utf8(&window[V1_PREFIX.len()..end]).map_err(|_| Error::Invalid("v1 line is not ASCII"))?;
    let mut parsed = Parsed {
        version: Version::V1,
        command: Command::Proxy,
        transport: Transport::Unspec,
        family: Family::Unspec,
        source: None,
        destination: None,
        len,
        tlv_bytes: &[],
    };
    let mut fields = line.split(' ');
    let family = match fields.next() {
        // Anything may follow UNKNOWN before the CRLF; the receiver must ignore it.
        Some("UNKNOWN") => return Ok(parsed),
        Some("TCP4") => Family::Inet,
        Some("TCP6") => Family::Inet6,
        _ => return Err(Error::Invalid("v1 protocol is not TCP4, TCP6 or UNKNOWN")),
    };
    let (Some(src), Some(dst), Some(sp), Some(dp), None) =
        (fields.next(), fields.next(), fields.next(), fields.next(), fields.next())
    else {
        return Err(Error::Invalid("v1 line needs exactly four address fields"));
    };
    let ip = |s: &str| -> Result<IpAddr, Error> {
        match family {
            Family::Inet => s.parse::<Ipv4Addr>().map(IpAddr::from),
            _ => s.parse::<Ipv6Addr>().map(IpAddr::from),
        }
        .map_err(|_| Error::Invalid("v1 address does not match its family"))
    };
    parsed.family = family;
    parsed.transport = Transport::Stream;
    parsed.source = Some(SocketAddr::new(ip(src)?, v1_port(sp)?));
    parsed.destination = Some(SocketAddr::new(ip(dst)?, v1_port(dp)?));
    Ok(parsed)
}

/// A decimal port without sign or leading zeros, as the spec requires.
fn v1_port(s: &str) -> Result<u16, Error> {
    let bad = Error::Invalid("v1 port is not a decimal 0..=65535 without leading zeros");
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || (s.len() > 1 && s.starts_with('0')) {
        return Err(bad);
    }
    s.parse().map_err(|_| bad)
}

/// Appends a v2 header without TLVs to `out`.
///
/// `Command::Local` always writes AF_UNSPEC with no address block (`addrs` is ignored).
/// `Command::Proxy` with `None` writes AF_UNSPEC too (the receiver then uses the real
/// endpoints). When source and destination families differ, the IPv4 one is written as an
/// IPv4-mapped IPv6 address so both fit one AF_INET6 block.
pub fn write_v2(out: &mut Vec<u8>, cmd: Command, transport: Transport, addrs: Option<(SocketAddr, SocketAddr)>) {
    // Without TLVs the block is at most 36 bytes, far below the u16 limit.
    let _ = write_v2_with_tlvs(out, cmd, transport, addrs, &[]);
}

/// Both addresses as IPv4 when both are IPv4-mapped IPv6 ones (a header has one family).
fn canonical_pair(src: SocketAddr, dst: SocketAddr) -> (SocketAddr, SocketAddr) {
    let v4 = |a: SocketAddr| match a.ip().to_canonical() {
        ip @ std::net::IpAddr::V4(_) => Some(SocketAddr::new(ip, a.port())),
        std::net::IpAddr::V6(_) => None,
    };
    match (v4(src), v4(dst)) {
        (Some(s), Some(d)) => (s, d),
        _ => (src, dst),
    }
}

/// Why a header could not be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// Addresses and TLVs together exceed the 65535 bytes the length field can announce.
    #[error("PROXY v2 header too long: {0} bytes after the fixed part")]
    TooLong(usize),
}

/// Like [`write_v2`], then appends `tlvs` as `(type, value)` in order. On error `out` is left
/// as it was.
pub fn write_v2_with_tlvs(
    out: &mut Vec<u8>,
    cmd: Command,
    transport: Transport,
    addrs: Option<(SocketAddr, SocketAddr)>,
    tlvs: &[(u8, &[u8])],
) -> Result<(), EncodeError> {
    let addrs = match cmd {
        Command::Local => None,
        // A dual-stack socket (one a socket unit passed in) sees IPv4 peers as ::ffff:a.b.c.d:
        // told as IPv4, as on an IPv4 socket.
        Command::Proxy => addrs.map(|(src, dst)| canonical_pair(src, dst)),
    };
    let (fam, addr_len) = match addrs {
        None => (0u8, 0),
        Some((SocketAddr::V4(_), SocketAddr::V4(_))) => (1, ADDR_LEN_INET),
        Some(_) => (2, ADDR_LEN_INET6),
    };
    let tlv_len: usize = tlvs.iter().map(|(_, v)| 3 + v.len()).sum();
    let block_len = addr_len + tlv_len;
    let len16 = u16::try_from(block_len).map_err(|_| EncodeError::TooLong(block_len))?;
    let ver_cmd = match cmd {
        Command::Local => 0x20,
        Command::Proxy => 0x21,
    };
    let proto = match (cmd, addrs, transport) {
        (Command::Local, _, _) | (_, None, _) | (_, _, Transport::Unspec) => 0,
        (_, _, Transport::Stream) => 1,
        (_, _, Transport::Datagram) => 2,
    };
    out.reserve(V2_FIXED_LEN + block_len);
    out.extend_from_slice(&V2_SIGNATURE);
    out.push(ver_cmd);
    out.push(if addrs.is_some() { (fam << 4) | proto } else { 0 });
    out.extend_from_slice(&len16.to_be_bytes());
    match addrs {
        None => {}
        Some((SocketAddr::V4(s), SocketAddr::V4(d))) => {
            out.extend_from_slice(&s.ip().octets());
            out.extend_from_slice(&d.ip().octets());
            out.extend_from_slice(&s.port().to_be_bytes());
            out.extend_from_slice(&d.port().to_be_bytes());
        }
        Some((s, d)) => {
            out.extend_from_slice(&v6_octets(s.ip()));
            out.extend_from_slice(&v6_octets(d.ip()));
            out.extend_from_slice(&s.port().to_be_bytes());
            out.extend_from_slice(&d.port().to_be_bytes());
        }
    }
    for (kind, value) in tlvs {
        out.push(*kind);
        // Cannot truncate: the sum of all TLV lengths passed the u16 check above.
        out.extend_from_slice(&(value.len() as u16).to_be_bytes());
        out.extend_from_slice(value);
    }
    Ok(())
}

fn v6_octets(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// Why [`read_header`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// No complete header within the timeout.
    #[error("no PROXY header within {0:?}")]
    Timeout(Duration),
    /// The stream closed or failed before the header was complete.
    #[error("reading PROXY header: {0}")]
    Io(#[from] std::io::Error),
    /// The bytes are not a valid PROXY header.
    #[error(transparent)]
    Proxy(#[from] Error),
}

/// Reads exactly one PROXY header (v2 or v1) from `r` within `timeout`, leaving the payload
/// after it unread.
///
/// Uses plain reads (no peek), sized so that no read can run past the header: 15 bytes first
/// (the shortest header of either version), then the rest of the v2 fixed part and the
/// announced length, or for v1 one or two bytes at a time until CRLF. Pass the raw stream (a
/// socket can then be handed on, e.g. to splice); a `BufReader` would work, but the payload it
/// buffers would stay inside it. An announced v2 length is trusted up to 64 KiB, so accept
/// PROXY headers only from trusted peers, as the spec requires anyway.
pub async fn read_header<R: AsyncRead + Unpin>(r: &mut R, timeout: Duration) -> Result<ProxyHeader, ReadError> {
    match tokio::time::timeout(timeout, read_header_inner(r)).await {
        Ok(res) => res,
        Err(_) => Err(ReadError::Timeout(timeout)),
    }
}

async fn read_header_inner<R: AsyncRead + Unpin>(r: &mut R) -> Result<ProxyHeader, ReadError> {
    let mut buf = vec![0u8; V1_MIN_LEN];
    r.read_exact(&mut buf).await?;
    loop {
        match parse(&buf) {
            Ok(p) => return Ok(p.to_owned_header()),
            Err(Error::Incomplete { needed: Some(n) }) => {
                let have = buf.len();
                buf.resize(n.max(have + 1), 0);
                r.read_exact(&mut buf[have..]).await?;
            }
            Err(Error::Incomplete { needed: None }) => {
                // v1: a header that does not yet end in CR still needs at least "\r\n".
                let more = if buf.last() == Some(&b'\r') { 1 } else { 2 };
                let have = buf.len();
                buf.resize(have + more, 0);
                r.read_exact(&mut buf[have..]).await?;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Watches the start of a client's byte stream for a PROXY signature (v1 `PROXY `, or v2's 12
/// bytes), for a relay that adds no header of its own: a server behind it that trusts the
/// relay's address for PROXY headers (the local proxy from an ingress; Caddy, Traefik or
/// HAProxy told to) would take the client's header for the relay's word on who the client
/// is. Fed each read in order; [`SignatureWatch::completes`] says when a read completes a
/// signature, so its caller can close before passing on that read: the server never gets a
/// whole one, and a stream that only starts like one goes through untouched.
#[derive(Debug, Clone, Copy, Default)]
pub struct SignatureWatch {
    /// Bytes of the stream seen so far (while undecided).
    seen: usize,
    /// What the stream cannot be any more: bit 0 v1, bit 1 v2.
    ruled_out: u8,
}

impl SignatureWatch {
    /// Whether `data`, the stream's next bytes, complete a signature at its start.
    pub fn completes(&mut self, data: &[u8]) -> bool {
        for &b in data {
            if self.decided() {
                return false;
            }
            let at = self.seen;
            if V1_PREFIX.get(at) != Some(&b) {
                self.ruled_out |= 1;
            }
            if V2_SIGNATURE.get(at) != Some(&b) {
                self.ruled_out |= 2;
            }
            self.seen += 1;
            if self.ruled_out & 1 == 0 && self.seen == V1_PREFIX.len()
                || self.ruled_out & 2 == 0 && self.seen == V2_SIGNATURE.len()
            {
                return true;
            }
        }
        false
    }

    /// Whether the stream is known not to start with a signature (nothing more to watch).
    pub fn decided(&self) -> bool {
        self.ruled_out == 3
    }
}

/// What a relay's read fails with when its [`SignatureWatch`] stopped the client's stream.
#[derive(Debug)]
pub struct ClientHeader;

impl ClientHeader {
    pub fn error() -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::InvalidData, ClientHeader)
    }

    /// Whether `e` is that error (as a relay that carried it returns it).
    pub fn is(e: &std::io::Error) -> bool {
        e.get_ref().is_some_and(|inner| inner.is::<ClientHeader>())
    }
}

impl std::fmt::Display for ClientHeader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the client's stream starts with a PROXY header")
    }
}

impl std::error::Error for ClientHeader {}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// Every way of cutting a signature into reads completes it at the read that brings its
    /// last byte; a stream that only starts like one, or has one later, is never stopped.
    #[test]
    fn the_watch_stops_the_read_that_completes_a_signature() {
        let mut v1 = b"PROXY TCP4 192.0.2.1 192.0.2.2 1 2\r\nGET /".to_vec();
        let mut v2 = V2_SIGNATURE.to_vec();
        v2.extend_from_slice(b"\x21\x11\x00\x0c");
        for (stream, whole) in [(&mut v1, 6), (&mut v2, 12)] {
            for cut in 1..stream.len() {
                let mut w = SignatureWatch::default();
                let (a, b) = stream.split_at(cut);
                assert_eq!(w.completes(a), cut >= whole, "cut at {cut}");
                if cut < whole {
                    assert!(w.completes(b), "cut at {cut}");
                }
            }
            // One byte at a time: the completing byte is the signature's last.
            let mut w = SignatureWatch::default();
            let at = stream.iter().position(|b| w.completes(std::slice::from_ref(b)));
            assert_eq!(at, Some(whole - 1));
        }
        for benign in [&b"PROXZ"[..], b"PROX", b"\r\n\r\nGET", b"GET / HTTP/1.1\r\n\r\nPROXY TCP4 ", b"SSH-2.0-x"] {
            let mut w = SignatureWatch::default();
            assert!(!w.completes(benign), "{benign:?}");
            assert!(!w.completes(b"PROXY \r\n\r\n\0\r\nQUIT\n"), "{benign:?}: a signature later on");
        }
        let mut w = SignatureWatch::default();
        assert!(!w.completes(b"G") && w.decided());
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn check_all_prefixes(header: &[u8]) {
        for n in 0..header.len() {
            match parse(&header[..n]) {
                Err(Error::Incomplete { needed }) => {
                    if let Some(needed) = needed {
                        assert!(needed > n && needed <= header.len(), "prefix {n}: {needed}");
                    }
                }
                other => panic!("prefix {n} of {header:02x?}: {other:?}"),
            }
        }
        assert_eq!(parse(header).unwrap().len, header.len());
    }

    #[test]
    fn spec_v2_bytes_tcp4() {
        // HAProxy `send-proxy-v2` output for 172.19.0.1:42578 -> 172.19.0.3:80, then payload.
        let mut wire = vec![
            0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a, 0x21, 0x11, 0x00, 0x0c, 0xac, 0x13,
            0x00, 0x01, 0xac, 0x13, 0x00, 0x03, 0xa6, 0x52, 0x00, 0x50,
        ];
        wire.extend_from_slice(b"GET / HTTP/1.1\r\n");
        let p = parse(&wire).unwrap();
        assert_eq!(p.version, Version::V2);
        assert_eq!(p.command, Command::Proxy);
        assert_eq!(p.transport, Transport::Stream);
        assert_eq!(p.family, Family::Inet);
        assert_eq!(p.source, Some(sa("172.19.0.1:42578")));
        assert_eq!(p.destination, Some(sa("172.19.0.3:80")));
        assert_eq!(p.len, 28);
        assert_eq!(&wire[p.len..], b"GET / HTTP/1.1\r\n");
        check_all_prefixes(&wire[..28]);

        let mut out = Vec::new();
        write_v2(&mut out, Command::Proxy, Transport::Stream, Some((sa("172.19.0.1:42578"), sa("172.19.0.3:80"))));
        assert_eq!(out, &wire[..28]);
    }

    /// A dual-stack socket's IPv4 peers (::ffff:a.b.c.d) are written as IPv4; a pair with a
    /// real IPv6 address stays IPv6, both addresses in that family.
    #[test]
    fn mapped_addresses_are_written_as_ipv4() {
        let mut out = Vec::new();
        let mapped = (sa("[::ffff:198.51.100.7]:40000"), sa("[::ffff:192.0.2.11]:443"));
        write_v2(&mut out, Command::Proxy, Transport::Datagram, Some(mapped));
        let p = parse(&out).unwrap();
        assert_eq!(p.family, Family::Inet);
        assert_eq!((p.source, p.destination), (Some(sa("198.51.100.7:40000")), Some(sa("192.0.2.11:443"))));
        out.clear();
        let mixed = (sa("[2001:db8::7]:40000"), sa("[::ffff:192.0.2.11]:443"));
        write_v2(&mut out, Command::Proxy, Transport::Stream, Some(mixed));
        let p = parse(&out).unwrap();
        assert_eq!(p.family, Family::Inet6);
        assert_eq!((p.source, p.destination), (Some(mixed.0), Some(mixed.1)));
    }

    #[test]
    fn spec_v1_examples() {
        type Case = (&'static [u8], Option<(&'static str, &'static str)>);
        let cases: [Case; 5] = [
            (
                b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\nGET / HTTP/1.1\r\n",
                Some(("192.168.0.1:56324", "192.168.0.11:443")),
            ),
            (
                b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n",
                Some(("255.255.255.255:65535", "255.255.255.255:65535")),
            ),
            (
                b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n",
                Some((
                    "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535",
                    "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535",
                )),
            ),
            (b"PROXY UNKNOWN\r\n", None),
            (
                b"PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n",
                None,
            ),
        ];
        for (wire, addrs) in cases {
            let p = parse(wire).unwrap();
            let end = wire.windows(2).position(|w| w == b"\r\n").unwrap() + 2;
            assert_eq!(p.len, end);
            assert!(p.len <= V1_MAX_LEN);
            assert_eq!(p.version, Version::V1);
            assert_eq!(p.tlvs().count(), 0);
            let want = addrs.map(|(s, d)| (sa(s), sa(d)));
            assert_eq!(p.addresses(), want);
            check_all_prefixes(&wire[..end]);
        }
    }

    #[test]
    fn v1_rejects() {
        let bad: [&[u8]; 14] = [
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rx",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
            b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n",
            b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 ::1 ::1 1 2\r\n",
            b"PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY \r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n",
        ];
        for b in bad {
            assert!(matches!(parse(b), Err(Error::Invalid(_))), "{:?}", String::from_utf8_lossy(b));
        }
        // No CRLF within 107 bytes.
        let mut long = b"PROXY UNKNOWN ".to_vec();
        long.resize(V1_MAX_LEN, b'a');
        assert!(matches!(parse(&long), Err(Error::Invalid(_))));
        assert!(matches!(parse(&long[..V1_MAX_LEN - 1]), Err(Error::Incomplete { .. })));
        // CRLF straddling the limit: the CR is byte 107, so the line would be 108 bytes.
        long[V1_MAX_LEN - 1] = b'\r';
        long.push(b'\n');
        assert!(matches!(parse(&long), Err(Error::Invalid(_))));
    }

    #[test]
    fn not_proxy() {
        for b in [&b"GET / HTTP/1.1\r\n"[..], b"\x16\x03\x01", b"PROXZ", b"\r\n\r\n\x01"] {
            assert_eq!(parse(b), Err(Error::NotProxy));
        }
        assert!(matches!(parse(b""), Err(Error::Incomplete { .. })));
        assert!(matches!(parse(b"PRO"), Err(Error::Incomplete { .. })));
    }

    #[test]
    fn round_trips() {
        let cases = [
            (Transport::Stream, "192.0.2.1:1234", "198.51.100.7:443"),
            (Transport::Datagram, "192.0.2.1:1234", "198.51.100.7:3478"),
            (Transport::Stream, "[2001:db8::1]:5555", "[2001:db8::2]:443"),
            (Transport::Datagram, "[2001:db8::1]:5555", "[2001:db8::2]:1514"),
        ];
        for (t, s, d) in cases {
            let mut out = b"junk".to_vec();
            write_v2(&mut out, Command::Proxy, t, Some((sa(s), sa(d))));
            out.extend_from_slice(b"payload");
            let p = parse(&out[4..]).unwrap();
            assert_eq!(p.command, Command::Proxy);
            assert_eq!(p.transport, t);
            assert_eq!(p.addresses(), Some((sa(s), sa(d))));
            assert_eq!(&out[4 + p.len..], b"payload");
            check_all_prefixes(&out[4..4 + p.len]);
        }
    }

    #[test]
    fn mixed_families_map_to_v6() {
        let mut out = Vec::new();
        let (s, d) = (sa("192.0.2.1:1000"), sa("[2001:db8::2]:443"));
        write_v2(&mut out, Command::Proxy, Transport::Stream, Some((s, d)));
        assert_eq!(out[13], 0x21);
        let p = parse(&out).unwrap();
        assert_eq!(p.family, Family::Inet6);
        assert_eq!(p.source, Some(sa("[::ffff:192.0.2.1]:1000")));
        assert_eq!(p.destination, Some(d));
        assert_eq!(p.len, 16 + 36);
    }

    #[test]
    fn local_and_unspec() {
        let mut out = Vec::new();
        write_v2(&mut out, Command::Local, Transport::Stream, Some((sa("192.0.2.1:1"), sa("192.0.2.2:2"))));
        assert_eq!(out.len(), 16);
        assert_eq!(&out[12..], &[0x20, 0x00, 0x00, 0x00]);
        let p = parse(&out).unwrap();
        assert_eq!(p.command, Command::Local);
        assert_eq!(p.family, Family::Unspec);
        assert_eq!(p.transport, Transport::Unspec);
        assert_eq!(p.addresses(), None);
        check_all_prefixes(&out);

        // LOCAL must skip whatever block it announces, even one too short for its family.
        let mut local = V2_SIGNATURE.to_vec();
        local.extend_from_slice(&[0x20, 0x21, 0x00, 0x03, 1, 2, 3]);
        let p = parse(&local).unwrap();
        assert_eq!((p.len, p.addresses()), (19, None));

        let mut out = Vec::new();
        write_v2(&mut out, Command::Proxy, Transport::Stream, None);
        assert_eq!(&out[12..], &[0x21, 0x00, 0x00, 0x00]);
        let p = parse(&out).unwrap();
        assert_eq!((p.command, p.family, p.addresses()), (Command::Proxy, Family::Unspec, None));
    }

    #[test]
    fn unix_family_is_skipped() {
        let mut h = V2_SIGNATURE.to_vec();
        h.extend_from_slice(&[0x21, 0x31, 0x00, 216]);
        h.extend_from_slice(&[b'/'; 216]);
        let p = parse(&h).unwrap();
        assert_eq!((p.family, p.len, p.addresses()), (Family::Unix, 232, None));
        h[15] = 215;
        h.pop();
        assert!(matches!(parse(&h), Err(Error::Invalid(_))));
    }

    #[test]
    fn tlvs_round_trip_and_validation() {
        let mut out = Vec::new();
        let alpn: &[u8] = b"h2";
        let tlvs = [(tlv::ALPN, alpn), (tlv::NOOP, &[][..]), (tlv::AUTHORITY, b"x.example.org")];
        write_v2_with_tlvs(
            &mut out,
            Command::Proxy,
            Transport::Stream,
            Some((sa("192.0.2.1:1"), sa("192.0.2.2:2"))),
            &tlvs,
        )
        .unwrap();
        let p = parse(&out).unwrap();
        let got: Vec<_> = p.tlvs().map(|t| (t.kind, t.value)).collect();
        assert_eq!(got, tlvs);
        let owned = p.to_owned_header();
        assert_eq!(owned.tlvs().count(), 3);
        check_all_prefixes(&out);

        // A TLV that overruns the announced block, and a dangling partial TLV header.
        let mut bad = out.clone();
        bad[16 + 12 + 1] = 0x03; // ALPN length 0x0302
        assert_eq!(parse(&bad), Err(Error::Invalid("TLV longer than the header")));
        let mut bad = out.clone();
        bad.push(0x04);
        bad[15] += 1;
        assert_eq!(parse(&bad), Err(Error::Invalid("truncated TLV header")));

        let big = vec![0u8; 65535];
        let mut o = b"keep".to_vec();
        let r = write_v2_with_tlvs(&mut o, Command::Proxy, Transport::Stream, None, &[(0xe0, &big)]);
        assert_eq!(r, Err(EncodeError::TooLong(65538)));
        assert_eq!(o, b"keep");
    }

    #[test]
    fn bogus_fixed_fields() {
        let mut base = Vec::new();
        write_v2(&mut base, Command::Proxy, Transport::Stream, Some((sa("192.0.2.1:1"), sa("192.0.2.2:2"))));
        let patch = |i: usize, v: u8| {
            let mut b = base.clone();
            b[i] = v;
            parse(&b).map(|p| p.len)
        };
        assert_eq!(patch(12, 0x11), Err(Error::Invalid("version is not 2")));
        assert_eq!(patch(12, 0x22), Err(Error::Invalid("unknown command")));
        assert_eq!(patch(13, 0x41), Err(Error::Invalid("unknown address family")));
        assert_eq!(patch(13, 0x13), Err(Error::Invalid("unknown transport")));
        // Length shorter than the IPv4 block, and an IPv6 family announced with an IPv4 length.
        for len in 0..12 {
            assert!(matches!(patch(15, len), Err(Error::Invalid(_))), "len {len}");
        }
        assert!(matches!(patch(13, 0x21), Err(Error::Invalid(_))));
        // A long announced length is Incomplete, saying how much is needed.
        let mut b = base.clone();
        b[14] = 0xff;
        b[15] = 0xff;
        assert_eq!(parse(&b), Err(Error::Incomplete { needed: Some(16 + 65535) }));
    }

    #[test]
    fn random_input_never_panics() {
        let mut rng = fastrand::Rng::with_seed(0x5eed_0001);
        let mut valid = Vec::new();
        write_v2_with_tlvs(
            &mut valid,
            Command::Proxy,
            Transport::Datagram,
            Some((sa("[2001:db8::1]:1"), sa("[2001:db8::2]:2"))),
            &[(tlv::UNIQUE_ID, b"abc")],
        )
        .unwrap();
        let v1 = b"PROXY TCP6 2001:db8::1 2001:db8::2 65535 1\r\n";
        let mut buf = Vec::with_capacity(256);
        for i in 0..300_000u32 {
            buf.clear();
            match i % 4 {
                // Pure noise, sometimes behind a v2 signature so the deeper code runs.
                0 => buf.extend((0..rng.usize(0..200)).map(|_| rng.u8(..))),
                1 => {
                    buf.extend_from_slice(&V2_SIGNATURE);
                    buf.extend((0..rng.usize(0..120)).map(|_| rng.u8(..)));
                }
                // A valid header with a few bytes flipped, then truncated.
                2 => {
                    buf.extend_from_slice(&valid);
                    for _ in 0..rng.usize(1..4) {
                        let at = rng.usize(12..buf.len());
                        buf[at] = rng.u8(..);
                    }
                    buf.truncate(rng.usize(0..=valid.len()));
                }
                _ => {
                    buf.extend_from_slice(v1);
                    let at = rng.usize(6..buf.len());
                    buf[at] = rng.u8(..);
                    buf.truncate(rng.usize(0..=v1.len()));
                }
            }
            if let Ok(p) = parse(&buf) {
                assert!(p.len <= buf.len());
                assert_eq!(p.source.is_some(), p.destination.is_some());
                let _ = p.tlvs().count();
            }
        }
    }

    #[tokio::test]
    async fn read_header_leaves_payload() {
        let mut v2 = Vec::new();
        write_v2(&mut v2, Command::Proxy, Transport::Stream, Some((sa("192.0.2.1:40000"), sa("198.51.100.7:443"))));
        let v1 = b"PROXY TCP4 192.0.2.1 198.51.100.7 40000 443\r\n".to_vec();
        let unknown = b"PROXY UNKNOWN\r\n".to_vec();
        for header in [v2, v1, unknown] {
            let (mut client, mut server) = tokio::io::duplex(4096);
            client.write_all(&header).await.unwrap();
            client.write_all(b"\x16\x03\x01payload").await.unwrap();
            drop(client);
            let h = read_header(&mut server, Duration::from_secs(5)).await.unwrap();
            assert_eq!(h.len, header.len());
            let mut rest = Vec::new();
            server.read_to_end(&mut rest).await.unwrap();
            assert_eq!(rest, b"\x16\x03\x01payload");
        }
    }

    #[tokio::test]
    async fn read_header_byte_by_byte_and_errors() {
        let (mut client, mut server) = tokio::io::duplex(1);
        let task = tokio::spawn(async move {
            client.write_all(b"PROXY TCP4 192.0.2.1 198.51.100.7 1 2\r\nX").await.unwrap();
            client
        });
        let h = read_header(&mut server, Duration::from_secs(5)).await.unwrap();
        assert_eq!(h.source, Some(sa("192.0.2.1:1")));
        let mut x = [0u8; 1];
        server.read_exact(&mut x).await.unwrap();
        assert_eq!(&x, b"X");
        drop(task.await.unwrap());

        let (mut client, mut server) = tokio::io::duplex(64);
        client.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n").await.unwrap();
        let e = read_header(&mut server, Duration::from_secs(5)).await;
        assert!(matches!(e, Err(ReadError::Proxy(Error::NotProxy))), "{e:?}");

        let (mut client, mut server) = tokio::io::duplex(64);
        client.write_all(&V2_SIGNATURE).await.unwrap();
        drop(client);
        let e = read_header(&mut server, Duration::from_secs(5)).await;
        assert!(matches!(e, Err(ReadError::Io(_))), "{e:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn read_header_times_out() {
        let (_client, mut server) = tokio::io::duplex(64);
        let e = read_header(&mut server, Duration::from_secs(3)).await;
        assert!(matches!(e, Err(ReadError::Timeout(_))), "{e:?}");
    }
}
