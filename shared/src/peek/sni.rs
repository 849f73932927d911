//! SNI extraction from a TLS ClientHello, reassembling a hello that spans several records.

use std::borrow::Cow;

use super::{normalize_name, Error};

/// A sensible default for `sni`'s `max_len`: 16 KiB of records. Hellos with post-quantum key
/// shares are ~1.8 KiB; browsers pad to 512 bytes.
pub const DEFAULT_MAX_HELLO: usize = 16 * 1024;

const RECORD_HEADER: usize = 5;
const HANDSHAKE_HEADER: usize = 4;
const CONTENT_HANDSHAKE: u8 = 0x16;
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
const EXT_SERVER_NAME: u16 = 0;
const NAME_TYPE_HOST: u8 = 0;
/// RFC 8446 5.1: a plaintext record fragment is at most 2^14 bytes.
const MAX_FRAGMENT: usize = 1 << 14;

/// Returns the server name a TLS ClientHello asks for, lowercased.
///
/// `buf` holds the bytes read so far from the start of the connection. `Ok(None)`: a complete
/// hello without an SNI host name. `Err(Incomplete)`: read more. `Err(TooLong)`: the hello
/// does not complete within the first `max_len` bytes of `buf` (record headers included).
/// The name borrows from `buf` unless it spans records or has upper-case letters.
pub fn sni(buf: &[u8], max_len: usize) -> Result<Option<Cow<'_, str>>, Error> {
    let window = &buf[..buf.len().min(max_len)];
    let short = || {
        if buf.len() >= max_len {
            Err(Error::TooLong)
        } else {
            Err(Error::Incomplete)
        }
    };
    match window {
        [] => return short(),
        [CONTENT_HANDSHAKE] | [CONTENT_HANDSHAKE, 3] => return short(),
        [CONTENT_HANDSHAKE, 3, minor, ..] if *minor <= 4 => {}
        _ => return Err(Error::NotTls),
    }
    // Walk the records; the handshake message is the concatenation of their fragments.
    let mut hs_header = [0u8; HANDSHAKE_HEADER];
    let mut hs_seen = 0;
    let mut total = None;
    let mut first_frag: &[u8] = &[];
    let mut records = 0;
    for frag in (Fragments { buf: window, pos: 0 }) {
        let frag = frag?;
        records += 1;
        if records == 1 {
            first_frag = frag;
        }
        // The 4-byte handshake header may itself straddle records.
        let want = HANDSHAKE_HEADER.saturating_sub(hs_seen);
        for (i, &b) in frag.iter().take(want).enumerate() {
            hs_header[hs_seen + i] = b;
        }
        hs_seen += frag.len();
        if total.is_none() && hs_seen >= HANDSHAKE_HEADER {
            let [kind, a, b, c] = hs_header;
            if kind != HANDSHAKE_CLIENT_HELLO {
                return Err(Error::Malformed);
            }
            let t = HANDSHAKE_HEADER + usize::from_be_bytes([0, 0, 0, 0, 0, a, b, c]);
            // Even in one record the hello needs its record header in front of it.
            if t + RECORD_HEADER > max_len {
                return Err(Error::TooLong);
            }
            total = Some(t);
        }
        match total {
            Some(t) if hs_seen >= t && records == 1 => {
                return parse_hello(first_frag.get(..t).ok_or(Error::Malformed)?);
            }
            Some(t) if hs_seen >= t => {
                let msg = collect_handshake(window, t)?;
                return parse_hello(&msg).map(|n| n.map(|n| Cow::Owned(n.into_owned())));
            }
            _ => {}
        }
    }
    short()
}

/// Whether a hello read piece by piece could be decided yet, walking only the records added
/// since the last call: a caller that asked [`sni`] after every read of a client sending its
/// hello a tiny record at a time would walk every record again each time (quadratic in their
/// number: millions of steps for 16 KiB of one-byte records). False only where [`sni`] would
/// answer `Incomplete`.
#[derive(Debug, Default)]
pub struct HelloScan {
    /// Where the first record not yet walked whole starts.
    pos: usize,
    /// Handshake bytes in the records walked whole.
    hs_seen: usize,
    /// The handshake header's bytes seen so far (it may straddle records).
    hs_header: [u8; HANDSHAKE_HEADER],
}

impl HelloScan {
    /// Whether [`sni`] on `buf` (the same buffer, grown since the last call) with `max_len`
    /// may answer anything but `Incomplete`.
    pub fn ready(&mut self, buf: &[u8], max_len: usize) -> bool {
        let window = &buf[..buf.len().min(max_len)];
        if buf.len() >= max_len {
            return true;
        }
        loop {
            let Some(&[kind, major, minor, hi, lo]) = window.get(self.pos..).and_then(|r| r.first_chunk()) else {
                // A partial record header: what `sni` checks of it decides at once.
                return window.get(self.pos..).is_some_and(|r| {
                    r.first().is_some_and(|&k| k != CONTENT_HANDSHAKE)
                        || r.get(1).is_some_and(|&m| m != 3)
                        || r.get(2).is_some_and(|&m| m > 4)
                });
            };
            let len = usize::from(u16::from_be_bytes([hi, lo]));
            if kind != CONTENT_HANDSHAKE || major != 3 || minor > 4 || len == 0 || len > MAX_FRAGMENT {
                return true;
            }
            let start = self.pos + RECORD_HEADER;
            let have = window.len().saturating_sub(start).min(len);
            let frag = &window[start..start + have];
            let seen = self.hs_seen;
            // The handshake header's bytes from this fragment (it may begin in an earlier one).
            let mut header = self.hs_header;
            for (i, &b) in frag.iter().take(HANDSHAKE_HEADER.saturating_sub(seen)).enumerate() {
                header[seen + i] = b;
            }
            if seen + have >= HANDSHAKE_HEADER {
                let [kind, a, b, c] = header;
                let total = HANDSHAKE_HEADER + usize::from_be_bytes([0, 0, 0, 0, 0, a, b, c]);
                if kind != HANDSHAKE_CLIENT_HELLO || total + RECORD_HEADER > max_len || seen + have >= total {
                    return true;
                }
            }
            if have < len {
                // This record is not all here: the next call walks it again, from its start.
                return false;
            }
            self.hs_header = header;
            self.hs_seen += len;
            self.pos = start + len;
        }
    }
}

/// Concatenates handshake fragments from the start of `buf` until `total` bytes; only called
/// once the walk in `sni` has seen that many.
fn collect_handshake(buf: &[u8], total: usize) -> Result<Vec<u8>, Error> {
    let mut msg = Vec::with_capacity(total);
    for frag in (Fragments { buf, pos: 0 }) {
        let frag = frag?;
        let take = frag.len().min(total - msg.len());
        msg.extend_from_slice(&frag[..take]);
        if msg.len() == total {
            return Ok(msg);
        }
    }
    Err(Error::Incomplete)
}

/// Iterates record fragments of handshake records; a partial last record yields what it has.
struct Fragments<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Iterator for Fragments<'a> {
    type Item = Result<&'a [u8], Error>;

    fn next(&mut self) -> Option<Self::Item> {
        let rest = self.buf.get(self.pos..)?;
        let header = rest.first_chunk::<RECORD_HEADER>();
        let Some(&[kind, major, minor, hi, lo]) = header else {
            // A partial header of a later record: check what is there, then wait for more.
            return match rest {
                [] => None,
                [k, ..] if *k != CONTENT_HANDSHAKE => Some(Err(Error::Malformed)),
                _ => None,
            };
        };
        if kind != CONTENT_HANDSHAKE || major != 3 || minor > 4 {
            // Another content type (alert, CCS) interleaved into the hello.
            return Some(Err(Error::Malformed));
        }
        let len = usize::from(u16::from_be_bytes([hi, lo]));
        if len == 0 || len > MAX_FRAGMENT {
            // RFC 8446 5.1: zero-length handshake fragments are forbidden.
            return Some(Err(Error::Malformed));
        }
        let start = self.pos + RECORD_HEADER;
        let end = (start + len).min(self.buf.len());
        self.pos = start + len;
        Some(Ok(&self.buf[start..end]))
    }
}

/// A cursor over a byte slice whose reads fail with `Malformed` when they run out.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Error> {
        let (head, rest) = self.0.split_at_checked(n).ok_or(Error::Malformed)?;
        self.0 = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, Error> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, Error> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    /// A vector with a 1- or 2-byte length prefix.
    fn vec8(&mut self) -> Result<&'a [u8], Error> {
        let n = self.u8()?;
        self.take(usize::from(n))
    }
    fn vec16(&mut self) -> Result<&'a [u8], Error> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }
}

/// Parses one complete handshake message (header included) as a ClientHello.
fn parse_hello(msg: &[u8]) -> Result<Option<Cow<'_, str>>, Error> {
    let mut r = Reader(msg.get(HANDSHAKE_HEADER..).ok_or(Error::Malformed)?);
    let _legacy_version = r.u16()?;
    let _random = r.take(32)?;
    if r.vec8()?.len() > 32 {
        return Err(Error::Malformed);
    }
    let suites = r.vec16()?;
    if suites.is_empty() || suites.len() % 2 != 0 {
        return Err(Error::Malformed);
    }
    if r.vec8()?.is_empty() {
        return Err(Error::Malformed);
    }
    if r.0.is_empty() {
        // Pre-TLS-1.2 hellos may end here: no extensions at all.
        return Ok(None);
    }
    let mut exts = Reader(r.vec16()?);
    if !r.0.is_empty() {
        return Err(Error::Malformed);
    }
    let mut name = None;
    while !exts.0.is_empty() {
        let kind = exts.u16()?;
        let data = exts.vec16()?;
        if kind != EXT_SERVER_NAME {
            continue;
        }
        if name.is_some() {
            // RFC 8446 4.2: at most one extension of each type.
            return Err(Error::Malformed);
        }
        name = Some(server_name(data)?);
    }
    Ok(name.flatten())
}

/// Decodes the server_name extension (RFC 6066 3): the first host_name entry, if any.
fn server_name(data: &[u8]) -> Result<Option<Cow<'_, str>>, Error> {
    let mut outer = Reader(data);
    let mut list = Reader(outer.vec16()?);
    if !outer.0.is_empty() {
        return Err(Error::Malformed);
    }
    let mut found = None;
    while !list.0.is_empty() {
        let kind = list.u8()?;
        let value = list.vec16()?;
        if kind == NAME_TYPE_HOST && found.is_none() {
            found = Some(normalize_name(value)?);
        }
    }
    Ok(found)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const OPENSSL: &[u8] = include_bytes!("../../tests/fixtures/openssl_x.example.org.bin");
    const OPENSSL_TLS12: &[u8] = include_bytes!("../../tests/fixtures/openssl_tls12_y.example.org.bin");
    const CURL: &[u8] = include_bytes!("../../tests/fixtures/curl_Cloud.Example.Org.bin");
    const NO_SNI: &[u8] = include_bytes!("../../tests/fixtures/openssl_nosni.bin");

    fn fixtures() -> [(&'static [u8], Option<&'static str>); 4] {
        [
            (OPENSSL, Some("x.example.org")),
            (OPENSSL_TLS12, Some("y.example.org")),
            (CURL, Some("cloud.example.org")),
            (NO_SNI, None),
        ]
    }

    fn check_all_prefixes(hello: &[u8], want: Option<&str>) {
        for n in 0..hello.len() {
            assert_eq!(sni(&hello[..n], DEFAULT_MAX_HELLO), Err(Error::Incomplete), "prefix {n}");
        }
        assert_eq!(sni(hello, DEFAULT_MAX_HELLO).unwrap().as_deref(), want);
    }

    /// Re-frames a single-record hello into records cut at the given handshake offsets.
    fn resplit(hello: &[u8], cuts: &[usize]) -> Vec<u8> {
        let msg = &hello[RECORD_HEADER..];
        let mut out = Vec::new();
        let mut start = 0;
        for &end in cuts.iter().chain([msg.len()].iter()) {
            let frag = &msg[start..end];
            out.extend_from_slice(&hello[..3]);
            out.extend_from_slice(&(frag.len() as u16).to_be_bytes());
            out.extend_from_slice(frag);
            start = end;
        }
        out
    }

    #[test]
    fn fixtures_every_prefix() {
        for (hello, want) in fixtures() {
            // Each capture is exactly one record holding the whole hello.
            assert_eq!(usize::from(u16::from_be_bytes([hello[3], hello[4]])) + 5, hello.len());
            check_all_prefixes(hello, want);
        }
    }

    #[test]
    fn borrowed_when_single_record_and_lowercase() {
        assert!(matches!(sni(OPENSSL, DEFAULT_MAX_HELLO), Ok(Some(Cow::Borrowed(_)))));
        // Data after the hello (a pipelined record) is ignored.
        let mut more = OPENSSL.to_vec();
        more.extend_from_slice(b"\x17\x03\x03\x00\x01z");
        assert_eq!(sni(&more, DEFAULT_MAX_HELLO).unwrap().as_deref(), Some("x.example.org"));
    }

    #[test]
    fn fragmented_across_records() {
        for (hello, want) in fixtures() {
            let len = hello.len() - RECORD_HEADER;
            let splits: [&[usize]; 6] = [&[1], &[2], &[4], &[len / 2], &[3, len - 1], &[40, 41, len / 2]];
            for cuts in splits {
                let framed = resplit(hello, cuts);
                check_all_prefixes(&framed, want);
            }
        }
    }

    #[test]
    fn limits() {
        assert_eq!(sni(CURL, CURL.len() - 1), Err(Error::TooLong));
        assert_eq!(sni(CURL, CURL.len()).unwrap().as_deref(), Some("cloud.example.org"));
        // The announced handshake length alone exceeds the limit: TooLong before the bytes.
        assert_eq!(sni(&CURL[..9], 300), Err(Error::TooLong));
        // Many tiny records: the record overhead counts against the limit.
        let cuts: Vec<usize> = (1..CURL.len() - RECORD_HEADER).collect();
        let framed = resplit(CURL, &cuts);
        assert_eq!(framed.len(), 512 * 6);
        assert_eq!(sni(&framed, 2048), Err(Error::TooLong));
        assert_eq!(sni(&framed, framed.len()).unwrap().as_deref(), Some("cloud.example.org"));
    }

    #[test]
    fn not_tls_and_malformed() {
        for b in [&b"GET / HTTP/1.1\r\n"[..], b"\x15\x03\x03", b"\x16\x02", b"\x16\x03\x05", b"\x80\x2e\x01"] {
            assert_eq!(sni(b, DEFAULT_MAX_HELLO), Err(Error::NotTls), "{b:?}");
        }
        // A ServerHello (type 2), an alert between fragments, a zero-length record.
        let mut server_hello = OPENSSL.to_vec();
        server_hello[5] = 2;
        assert_eq!(sni(&server_hello, DEFAULT_MAX_HELLO), Err(Error::Malformed));
        let mut framed = resplit(OPENSSL, &[10]);
        framed[5 + 10] = 0x15;
        assert_eq!(sni(&framed, DEFAULT_MAX_HELLO), Err(Error::Malformed));
        assert_eq!(sni(b"\x16\x03\x01\x00\x00", DEFAULT_MAX_HELLO), Err(Error::Malformed));
        // An SNI name with a space in it.
        let at = OPENSSL.windows(13).position(|w| w == b"x.example.org").unwrap();
        let mut bad = OPENSSL.to_vec();
        bad[at + 1] = b' ';
        assert_eq!(sni(&bad, DEFAULT_MAX_HELLO), Err(Error::Malformed));
        // Truncating the extensions length by one breaks the structure.
        let mut bad = OPENSSL.to_vec();
        bad[at - 2] ^= 0x40;
        assert_eq!(sni(&bad, DEFAULT_MAX_HELLO), Err(Error::Malformed));
    }

    /// The scan never holds back what `sni` would decide, on every prefix of hellos split
    /// into records anywhere and mutated; and a hello sent a byte per record is walked once.
    #[test]
    fn the_scan_never_holds_back_a_decision() {
        let mut rng = fastrand::Rng::with_seed(0x5eed_0003);
        for i in 0..3_000u32 {
            let (hello, _) = fixtures()[(i % 4) as usize];
            let len = hello.len() - RECORD_HEADER;
            let mut cuts: Vec<usize> = (0..rng.usize(0..8)).map(|_| rng.usize(1..len)).collect();
            cuts.sort_unstable();
            cuts.dedup();
            let mut buf = resplit(hello, &cuts);
            if i % 2 == 1 {
                let at = rng.usize(0..buf.len());
                buf[at] = rng.u8(..);
            }
            let max = if i % 5 == 0 { rng.usize(1..buf.len() + 10) } else { DEFAULT_MAX_HELLO };
            let mut scan = HelloScan::default();
            let mut end = 0;
            while end < buf.len() {
                end = (end + rng.usize(1..40)).min(buf.len());
                let decided = !matches!(sni(&buf[..end], max), Err(Error::Incomplete));
                let ready = scan.ready(&buf[..end], max);
                assert!(ready || !decided, "held back {:?} at {end} of {}", sni(&buf[..end], max), buf.len());
                if ready {
                    break;
                }
            }
        }
        // A byte per record: ready only once the hello is whole.
        let (hello, name) = fixtures()[0];
        let cuts: Vec<usize> = (1..hello.len() - RECORD_HEADER).collect();
        let buf = resplit(hello, &cuts);
        let mut scan = HelloScan::default();
        let first = (1..=buf.len()).find(|&end| scan.ready(&buf[..end], DEFAULT_MAX_HELLO));
        assert_eq!(first, Some(buf.len()));
        assert_eq!(sni(&buf, DEFAULT_MAX_HELLO).unwrap().as_deref(), name);
    }

    #[test]
    fn random_and_mutated_input_never_panics() {
        let mut rng = fastrand::Rng::with_seed(0x5eed_0002);
        let mut buf = Vec::with_capacity(1024);
        for i in 0..200_000u32 {
            buf.clear();
            let (hello, _) = fixtures()[(i % 4) as usize];
            match i % 3 {
                0 => {
                    buf.push(0x16);
                    buf.push(3);
                    buf.extend((0..rng.usize(0..400)).map(|_| rng.u8(..)));
                }
                1 => {
                    buf.extend_from_slice(hello);
                    for _ in 0..rng.usize(1..6) {
                        let at = rng.usize(0..buf.len());
                        buf[at] = rng.u8(..);
                    }
                    buf.truncate(rng.usize(0..=hello.len()));
                }
                _ => {
                    let len = hello.len() - RECORD_HEADER;
                    let mut cuts = vec![rng.usize(1..len), rng.usize(1..len)];
                    cuts.sort_unstable();
                    cuts.dedup();
                    buf = resplit(hello, &cuts);
                    let at = rng.usize(0..buf.len());
                    buf[at] = rng.u8(..);
                }
            }
            let _ = sni(&buf, rng.usize(0..2048));
        }
    }
}
