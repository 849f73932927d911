//! Host extraction from an HTTP/1.x request head, for routing plain HTTP by name.

use std::borrow::Cow;

use super::{normalize_name, Error};

/// A sensible default for `host`'s `max_len`: 16 KiB, beyond which nginx and HAProxy also
/// refuse a request head by default.
pub const DEFAULT_MAX_HEAD: usize = 16 * 1024;

/// Longest method we wait for before deciding the bytes are not HTTP.
const MAX_METHOD: usize = 32;

/// Returns the host an HTTP/1.x request head names, lowercased and without its port.
///
/// The head must be complete (it ends at an empty line, `\r\n\r\n`; bare `\n` line ends are
/// tolerated as RFC 9112 allows) within the first `max_len` bytes, else `Incomplete` or
/// `TooLong`. The host comes from an absolute-form target (`GET http://host/ HTTP/1.1`), which
/// RFC 9112 3.2.2 says wins over the Host header, else from the single Host header. IPv6
/// literals are returned without brackets. `Ok(None)`: an HTTP/1.0 request without a Host, or
/// an empty Host; an HTTP/1.1 request without one, or with two, is `Malformed`.
pub fn host(buf: &[u8], max_len: usize) -> Result<Option<Cow<'_, str>>, Error> {
    let window = &buf[..buf.len().min(max_len)];
    check_method_prefix(window)?;
    let Some(head_len) = head_end(window) else {
        return if buf.len() >= max_len { Err(Error::TooLong) } else { Err(Error::Incomplete) };
    };
    let mut lines = Lines { rest: &window[..head_len] };
    let request_line = lines.next().ok_or(Error::NotHttp)??;
    let (target, minor) = request_line_parts(request_line)?;
    let mut host_header: Option<&[u8]> = None;
    for line in lines {
        let line = line?;
        if line.is_empty() {
            break;
        }
        let colon = line.iter().position(|&b| b == b':').ok_or(Error::Malformed)?;
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        // No whitespace before the colon (RFC 9112 5.1), no obsolete line folding.
        if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
            return Err(Error::Malformed);
        }
        if name.eq_ignore_ascii_case(b"host") {
            if host_header.is_some() {
                return Err(Error::Malformed);
            }
            host_header = Some(value.trim_ascii());
        }
    }
    if let Some(authority) = absolute_form_authority(target) {
        return host_of_authority(authority).map(Some);
    }
    match host_header {
        Some([]) => Ok(None),
        Some(value) => host_of_authority(value).map(Some),
        None if minor == 0 => Ok(None),
        None => Err(Error::Malformed),
    }
}

/// Fails fast with `NotHttp` on bytes that cannot start a request line, so a TLS hello or a
/// binary protocol sent to an HTTP port is refused at once instead of waiting for a timeout.
fn check_method_prefix(buf: &[u8]) -> Result<(), Error> {
    let method_len = buf.iter().take_while(|&&b| is_tchar(b)).count();
    match buf.get(method_len) {
        None if method_len <= MAX_METHOD => Ok(()),
        Some(b' ') if (1..=MAX_METHOD).contains(&method_len) => Ok(()),
        _ => Err(Error::NotHttp),
    }
}

/// Whether a head read piece by piece is complete yet, looking only at the bytes added since
/// the last call: a caller that asked [`host`] after every read of a client trickling its
/// head a byte at a time would scan it again each time (quadratic in its length).
#[derive(Debug, Default)]
pub struct HeadScan {
    /// Where the line being read starts.
    line_start: usize,
    /// How far the buffer was scanned.
    scanned: usize,
}

impl HeadScan {
    /// Whether `buf` (the same buffer, grown since the last call) holds a whole head, the
    /// same test as [`host`]'s.
    pub fn complete(&mut self, buf: &[u8]) -> bool {
        while let Some(nl) = buf.get(self.scanned..).and_then(|rest| rest.iter().position(|&b| b == b'\n')) {
            let end = self.scanned + nl;
            let line = buf.get(self.line_start..end).unwrap_or_default();
            self.scanned = end + 1;
            self.line_start = end + 1;
            if line.is_empty() || line == b"\r" {
                return true;
            }
        }
        self.scanned = buf.len();
        false
    }
}

/// Length of the head including its terminating empty line, if it is all there.
fn head_end(buf: &[u8]) -> Option<usize> {
    let mut start = 0;
    while let Some(nl) = buf[start..].iter().position(|&b| b == b'\n') {
        let line = &buf[start..start + nl];
        start += nl + 1;
        if line.is_empty() || line == b"\r" {
            return Some(start);
        }
    }
    None
}

/// Lines of a complete head, without their `\r\n` or `\n`; a CR anywhere else is an error
/// (a bare CR is a request-smuggling vector).
struct Lines<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Lines<'a> {
    type Item = Result<&'a [u8], Error>;

    fn next(&mut self) -> Option<Self::Item> {
        let nl = self.rest.iter().position(|&b| b == b'\n')?;
        let line = &self.rest[..nl];
        self.rest = &self.rest[nl + 1..];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().any(|&b| b == b'\r' || b == 0) {
            return Some(Err(Error::Malformed));
        }
        Some(Ok(line))
    }
}

/// Splits `METHOD SP target SP HTTP/1.x`, returning the target and the minor version.
fn request_line_parts(line: &[u8]) -> Result<(&[u8], u8), Error> {
    let mut parts = line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Error::NotHttp);
    };
    if method.is_empty() || !method.iter().all(|&b| is_tchar(b)) {
        return Err(Error::NotHttp);
    }
    let minor = match version {
        [b'H', b'T', b'T', b'P', b'/', b'1', b'.', minor] if minor.is_ascii_digit() => minor - b'0',
        _ => return Err(Error::NotHttp),
    };
    if target.is_empty() || target.iter().any(|&b| b <= b' ' || b == 0x7f) {
        return Err(Error::Malformed);
    }
    Ok((target, minor))
}

/// The authority of an absolute-form target (`http://user@host:port/path`), if it is one.
fn absolute_form_authority(target: &[u8]) -> Option<&[u8]> {
    let colon = target.iter().position(|&b| b == b':')?;
    let scheme = &target[..colon];
    if !(scheme.eq_ignore_ascii_case(b"http") || scheme.eq_ignore_ascii_case(b"https")) {
        return None;
    }
    let rest = target[colon + 1..].strip_prefix(b"//")?;
    let end = rest.iter().position(|&b| matches!(b, b'/' | b'?' | b'#')).unwrap_or(rest.len());
    let authority = &rest[..end];
    // Drop userinfo; the last '@' ends it.
    Some(match authority.iter().rposition(|&b| b == b'@') {
        Some(at) => &authority[at + 1..],
        None => authority,
    })
}

/// `host[:port]` or `[v6]:port` to a normalized host.
fn host_of_authority(authority: &[u8]) -> Result<Cow<'_, str>, Error> {
    let host = if let Some(rest) = authority.strip_prefix(b"[") {
        let close = rest.iter().position(|&b| b == b']').ok_or(Error::Malformed)?;
        check_port(&rest[close + 1..])?;
        &rest[..close]
    } else {
        match authority.iter().position(|&b| b == b':') {
            Some(colon) => {
                check_port(&authority[colon..])?;
                &authority[..colon]
            }
            None => authority,
        }
    };
    normalize_name(host)
}

/// What may follow a host: nothing, or `:` and up to five digits (an empty port is allowed
/// by RFC 3986).
fn check_port(rest: &[u8]) -> Result<(), Error> {
    match rest {
        [] => Ok(()),
        [b':', digits @ ..] if digits.len() <= 5 && digits.iter().all(u8::is_ascii_digit) => Ok(()),
        _ => Err(Error::Malformed),
    }
}

/// RFC 9110 5.6.2 token characters.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const CURL: &[u8] = include_bytes!("../../tests/fixtures/curl_http1_get_with_port.bin");

    fn h(b: &[u8]) -> Result<Option<String>, Error> {
        host(b, DEFAULT_MAX_HEAD).map(|o| o.map(Cow::into_owned))
    }

    fn check_all_prefixes(head: &[u8], want: Option<&str>) {
        for n in 0..head.len() {
            assert_eq!(h(&head[..n]), Err(Error::Incomplete), "prefix {n}");
        }
        assert_eq!(h(head).unwrap().as_deref(), want);
    }

    #[test]
    fn curl_fixture_every_prefix() {
        check_all_prefixes(CURL, Some("cloud.example.org"));
        let mut with_body = CURL.to_vec();
        with_body.extend_from_slice(b"GET / HTTP/1.1\r\nHost: other\r\n\r\n");
        assert_eq!(h(&with_body).unwrap().as_deref(), Some("cloud.example.org"));
    }

    /// Fed a byte at a time, or in pieces of any size, the scan says "complete" exactly when
    /// `host` stops answering `Incomplete` for a complete-able head.
    #[test]
    fn head_scan_agrees_with_host_for_every_piece_size() {
        let heads: [&[u8]; 4] =
            [CURL, b"GET / HTTP/1.1\nHost: a\n\n", b"GET / HTTP/1.0\r\n\r\n", b"GET / HTTP/1.1\r\nHost: a\r\n\r\nrest"];
        for head in heads {
            for piece in [1, 2, 3, 7, 64, head.len()] {
                let mut scan = HeadScan::default();
                let mut done_at = None;
                for end in (piece..head.len() + piece).step_by(piece) {
                    let buf = &head[..end.min(head.len())];
                    if scan.complete(buf) {
                        done_at = Some(buf.len());
                        break;
                    }
                    assert!(matches!(h(buf), Err(Error::Incomplete)), "{piece}: {:?}", String::from_utf8_lossy(buf));
                }
                let at = done_at.expect("never complete");
                assert!(!matches!(h(&head[..at]), Err(Error::Incomplete)), "{piece}");
            }
        }
    }

    #[test]
    fn host_forms() {
        let cases: [(&[u8], Option<&str>); 10] = [
            (b"GET / HTTP/1.1\r\nHost: a.example.org\r\n\r\n", Some("a.example.org")),
            (b"GET / HTTP/1.1\r\nhOST:A.Example.org:8080 \r\n\r\n", Some("a.example.org")),
            (b"GET / HTTP/1.1\r\nHost: [2001:db8::1]:443\r\n\r\n", Some("2001:db8::1")),
            (b"GET / HTTP/1.1\r\nHost: 192.0.2.1\r\n\r\n", Some("192.0.2.1")),
            (b"GET / HTTP/1.1\nHost: a.example.org.\n\n", Some("a.example.org")),
            (b"GET / HTTP/1.0\r\n\r\n", None),
            (b"OPTIONS * HTTP/1.1\r\nHost:\r\n\r\n", None),
            (b"GET HTTP://U:P@B.example.org:81/x?y HTTP/1.1\r\nHost: a.example.org\r\n\r\n", Some("b.example.org")),
            (b"GET https://c.example.org HTTP/1.0\r\n\r\n", Some("c.example.org")),
            (
                b"POST /x HTTP/1.1\r\nContent-Length: 0\r\nX-Host: no\r\nHost: d.example.org\r\n\r\n",
                Some("d.example.org"),
            ),
        ];
        for (head, want) in cases {
            check_all_prefixes(head, want);
        }
    }

    #[test]
    fn rejects() {
        let malformed: [&[u8]; 9] = [
            b"GET / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a:80x\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: [::1\r\n\r\n",
            b"GET / HTTP/1.1\r\nno colon\r\n\r\n",
        ];
        for b in malformed {
            assert_eq!(h(b), Err(Error::Malformed), "{}", String::from_utf8_lossy(b));
        }
        let not_http: [&[u8]; 7] = [
            b"\x16\x03\x01\x02\x00",
            b"GET\t/ HTTP/1.1\r\n\r\n",
            b"GET / HTTP/2.0\r\n\r\n",
            b"GET / HTTP/1.1 extra\r\n\r\n",
            b"GET /\r\n\r\n",
            b" GET / HTTP/1.1\r\n\r\n",
            b"SSH-2.0-OpenSSH_9.2\r\n",
        ];
        for b in not_http {
            assert_eq!(h(b), Err(Error::NotHttp), "{}", String::from_utf8_lossy(b));
        }
        // A method that runs on for longer than any real one.
        assert_eq!(h(&[b'A'; 40]), Err(Error::NotHttp));
    }

    #[test]
    fn too_long() {
        let mut head = b"GET / HTTP/1.1\r\nHost: a.example.org\r\nX: ".to_vec();
        head.resize(200, b'x');
        assert_eq!(host(&head, 100), Err(Error::TooLong));
        assert_eq!(host(&head, 300), Err(Error::Incomplete));
        head.extend_from_slice(b"\r\n\r\n");
        assert_eq!(host(&head, 203), Err(Error::TooLong));
        assert_eq!(host(&head, 204).unwrap().as_deref(), Some("a.example.org"));
    }

    #[test]
    fn random_input_never_panics() {
        let mut rng = fastrand::Rng::with_seed(0x5eed_0003);
        let alphabet = b"GET /:HTTP1.0\r\n\r\nHost[]@?ab";
        let mut buf = Vec::with_capacity(256);
        for i in 0..200_000u32 {
            buf.clear();
            if i % 2 == 0 {
                buf.extend((0..rng.usize(0..120)).map(|_| alphabet[rng.usize(..alphabet.len())]));
            } else {
                buf.extend_from_slice(CURL);
                for _ in 0..rng.usize(1..4) {
                    let at = rng.usize(0..buf.len());
                    buf[at] = rng.u8(..);
                }
                buf.truncate(rng.usize(0..=CURL.len()));
            }
            let _ = host(&buf, rng.usize(0..200));
        }
    }
}
