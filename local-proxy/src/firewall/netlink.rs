//! Netlink plumbing for nf_tables: sending a batch and collecting its acks, sending a request
//! and collecting its (dump) replies, and splitting raw buffers into messages and attributes.
//! The splitting is plain safe byte parsing, so the read-back can be tested on captured bytes.
//! All calls are blocking and short; callers in async code run them on a blocking thread.

use std::io;

use super::Error;

/// `NFNL_SUBSYS_NFTABLES`: the high byte of every nf_tables message type.
pub const SUBSYS_NFTABLES: u16 = 10;
pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;
pub const NLM_F_REQUEST: u16 = 0x1;
pub const NLM_F_ACK: u16 = 0x4;
/// `NLM_F_ROOT | NLM_F_MATCH`.
pub const NLM_F_DUMP: u16 = 0x300;
/// `NFPROTO_INET`.
pub const FAMILY_INET: u8 = 1;
const NLA_TYPE_MASK: u16 = 0x3fff;
const NLA_F_NESTED: u16 = 0x8000;

/// Receive buffer, aligned for `nlmsghdr` as libmnl requires.
#[repr(C, align(8))]
struct RecvBuf([u8; 65536]);

/// One netlink message (header fields and the bytes after the 16-byte header).
#[derive(Debug, Clone, Copy)]
pub struct Msg<'a> {
    pub kind: u16,
    pub flags: u16,
    pub seq: u32,
    pub body: &'a [u8],
}

impl<'a> Msg<'a> {
    /// For nf_tables messages: the `nfgenmsg` family and the attributes after it.
    pub fn nft(&self) -> Option<(u8, &'a [u8])> {
        let family = *self.body.first()?;
        Some((family, self.body.get(4..)?))
    }

    /// The nf_tables message number (`NFT_MSG_*`) if this is one.
    pub fn nft_kind(&self) -> Option<u16> {
        (self.kind >> 8 == SUBSYS_NFTABLES).then_some(self.kind & 0xff)
    }

    /// For `NLMSG_ERROR`: the errno (0 is an ack).
    pub fn error_code(&self) -> Option<i32> {
        let b = self.body.get(0..4)?;
        Some(i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
    }
}

fn u16_ne(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn u32_ne(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes([*b.get(at)?, *b.get(at + 1)?, *b.get(at + 2)?, *b.get(at + 3)?]))
}

/// Splits a buffer into messages; an error for a truncated or malformed one.
pub fn messages(mut buf: &[u8]) -> Result<Vec<Msg<'_>>, Error> {
    let mut out = Vec::new();
    while buf.len() >= 16 {
        let bad = || Error::Decode("truncated netlink message".into());
        let len = u32_ne(buf, 0).ok_or_else(bad)? as usize;
        if len < 16 || len > buf.len() {
            return Err(bad());
        }
        out.push(Msg {
            kind: u16_ne(buf, 4).ok_or_else(bad)?,
            flags: u16_ne(buf, 6).ok_or_else(bad)?,
            seq: u32_ne(buf, 8).ok_or_else(bad)?,
            body: &buf[16..len],
        });
        buf = &buf[len.next_multiple_of(4).min(buf.len())..];
    }
    Ok(out)
}

/// Iterates `(type, payload)` over netlink attributes, stopping at the first malformed one.
pub fn attrs(mut buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        let len = u16_ne(buf, 0)? as usize;
        let kind = u16_ne(buf, 2)? & NLA_TYPE_MASK;
        if len < 4 || len > buf.len() {
            return None;
        }
        let payload = &buf[4..len];
        buf = &buf[len.next_multiple_of(4).min(buf.len())..];
        Some((kind, payload))
    })
}

/// The first attribute of `kind`.
pub fn attr(buf: &[u8], kind: u16) -> Option<&[u8]> {
    attrs(buf).find(|(k, _)| *k == kind).map(|(_, p)| p)
}

/// A big-endian u32 attribute (nf_tables sends numbers in network order).
pub fn attr_u32(buf: &[u8], kind: u16) -> Option<u32> {
    let p = attr(buf, kind)?;
    Some(u32::from_be_bytes([*p.first()?, *p.get(1)?, *p.get(2)?, *p.get(3)?]))
}

/// A NUL-terminated string attribute.
pub fn attr_str(buf: &[u8], kind: u16) -> Option<String> {
    let p = attr(buf, kind)?;
    let end = p.iter().position(|b| *b == 0).unwrap_or(p.len());
    Some(String::from_utf8_lossy(&p[..end]).into_owned())
}

/// Appends one attribute (payload padded to 4 bytes).
pub fn push_attr(out: &mut Vec<u8>, kind: u16, payload: &[u8], nested: bool) {
    let len = 4 + payload.len();
    let kind = if nested { kind | NLA_F_NESTED } else { kind };
    out.extend_from_slice(&(len as u16).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(payload);
    out.resize(out.len().next_multiple_of(4), 0);
}

/// A NUL-terminated string payload.
pub fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

/// An nf_tables request: header, `nfgenmsg` (family, version 0, res_id 0), attributes.
pub fn request(msg: u16, flags: u16, seq: u32, family: u8, attributes: &[u8]) -> Vec<u8> {
    let len = 16 + 4 + attributes.len();
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&(len as u32).to_ne_bytes());
    out.extend_from_slice(&((SUBSYS_NFTABLES << 8) | msg).to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
    out.extend_from_slice(&[family, 0, 0, 0]);
    out.extend_from_slice(attributes);
    out
}

/// Appends `m` as bytes (header with port id 0, body padded to 4 bytes).
pub fn encode(m: &Msg<'_>, out: &mut Vec<u8>) {
    out.extend_from_slice(&((16 + m.body.len()) as u32).to_ne_bytes());
    out.extend_from_slice(&m.kind.to_ne_bytes());
    out.extend_from_slice(&m.flags.to_ne_bytes());
    out.extend_from_slice(&m.seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
    out.extend_from_slice(m.body);
    out.resize(out.len().next_multiple_of(4), 0);
}

fn socket() -> Result<mnl::Socket, Error> {
    mnl::Socket::new(mnl::Bus::Netfilter).map_err(|e| Error::Netlink { what: "opening a netfilter socket", source: e })
}

fn io_err(what: &'static str) -> impl Fn(io::Error) -> Error {
    move |source| Error::Netlink { what, source }
}

/// Sends a whole batch (one `sendto`, so one transaction) and waits for an ack of every
/// sequence number in `acks`; the first error aborts (the kernel then rolls the whole
/// transaction back).
pub fn send_batch(bytes: &[u8], acks: &[u32]) -> Result<(), Error> {
    let sock = socket()?;
    let sent = sock.send(bytes).map_err(io_err("sending the batch"))?;
    if sent < bytes.len() {
        return Err(Error::Netlink { what: "sending the batch", source: io::Error::other("short send") });
    }
    let mut buf = Box::new(RecvBuf([0; 65536]));
    let mut waiting: std::collections::BTreeSet<u32> = acks.iter().copied().collect();
    while !waiting.is_empty() {
        let n = sock.recv_raw(&mut buf.0[..]).map_err(io_err("receiving acks"))?;
        for m in messages(&buf.0[..n])? {
            if m.kind != NLMSG_ERROR {
                continue;
            }
            match m.error_code() {
                Some(0) => {
                    waiting.remove(&m.seq);
                }
                Some(code) => return Err(Error::Refused { source: io::Error::from_raw_os_error(-code) }),
                None => return Err(Error::Decode("short netlink error message".into())),
            }
        }
    }
    Ok(())
}

/// Sends one request and returns every reply message's bytes, until `NLMSG_DONE` (a dump) or
/// the first non-multipart reply. An `NLMSG_ERROR` with a non-zero code is an error.
pub fn query(req: &[u8]) -> Result<Vec<Vec<u8>>, Error> {
    let sock = socket()?;
    sock.send(req).map_err(io_err("sending a request"))?;
    let mut buf = Box::new(RecvBuf([0; 65536]));
    let mut out = Vec::new();
    loop {
        let n = sock.recv_raw(&mut buf.0[..]).map_err(io_err("receiving a reply"))?;
        for m in messages(&buf.0[..n])? {
            match m.kind {
                NLMSG_DONE => return Ok(out),
                NLMSG_ERROR => {
                    let code = m.error_code().unwrap_or(0);
                    if code == 0 {
                        return Ok(out);
                    }
                    return Err(Error::Kernel { errno: -code });
                }
                _ => {
                    let mut raw = Vec::with_capacity(16 + m.body.len());
                    encode(&m, &mut raw);
                    out.push(raw);
                    // NLM_F_MULTI: more follow until NLMSG_DONE.
                    if m.flags & 0x2 == 0 {
                        return Ok(out);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trips_through_the_splitters() {
        let mut a = Vec::new();
        push_attr(&mut a, 1, &cstr("local_proxy"), false);
        push_attr(&mut a, 4, &7u32.to_be_bytes(), false);
        let mut nested = Vec::new();
        push_attr(&mut nested, 2, &[1, 2, 3], false);
        push_attr(&mut a, 5, &nested, true);
        let mut buf = request(4, NLM_F_REQUEST | NLM_F_DUMP, 9, FAMILY_INET, &a);
        buf.extend(request(1, NLM_F_REQUEST, 10, FAMILY_INET, &[]));
        let msgs = messages(&buf).unwrap();
        assert_eq!(msgs.len(), 2);
        assert_eq!(msgs[0].nft_kind(), Some(4));
        assert_eq!(msgs[0].seq, 9);
        let (family, attributes) = msgs[0].nft().unwrap();
        assert_eq!(family, FAMILY_INET);
        assert_eq!(attr_str(attributes, 1).unwrap(), "local_proxy");
        assert_eq!(attr_u32(attributes, 4), Some(7));
        assert_eq!(attr(attr(attributes, 5).unwrap(), 2), Some(&[1u8, 2, 3][..]));
        assert_eq!(msgs[1].nft_kind(), Some(1));
    }

    #[test]
    fn truncated_input_is_an_error_not_a_panic() {
        let buf = request(4, NLM_F_REQUEST, 1, FAMILY_INET, &[0; 12]);
        for cut in 16..buf.len() {
            assert!(messages(&buf[..cut]).is_err(), "prefix of {cut} bytes");
        }
        // Attributes: every prefix yields at most the whole ones.
        let mut a = Vec::new();
        push_attr(&mut a, 1, &cstr("x"), false);
        push_attr(&mut a, 2, &[0; 8], false);
        for cut in 0..a.len() {
            assert!(attrs(&a[..cut]).count() <= 2);
        }
    }
}
