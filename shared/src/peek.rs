//! Sans-io peeking at the first bytes of a connection to pick a route: the SNI of a TLS
//! ClientHello ([`sni`]), the Host of an HTTP/1.x request head ([`host`]), and a name router
//! with nginx-style wildcards ([`NameRouter`]).
//!
//! Invariants: the parsers take the bytes read so far and never panic; they return
//! `Err(Incomplete)` for every strict prefix of a complete message, look at no more than the
//! caller's limit, and return names lowercased, borrowed from the input when possible.

mod host;
mod router;
mod sni;

pub use host::{host, HeadScan, DEFAULT_MAX_HEAD};
pub use router::{NameRouter, PatternError};
pub use sni::{sni, HelloScan, DEFAULT_MAX_HELLO};

use std::borrow::Cow;

/// Why no name could be taken (yet) from the bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Consistent so far; read more bytes and call again.
    #[error("incomplete")]
    Incomplete,
    /// The first bytes are not a TLS handshake record.
    #[error("not a TLS handshake")]
    NotTls,
    /// The first bytes are not an HTTP/1.x request line.
    #[error("not an HTTP/1.x request")]
    NotHttp,
    /// The message does not end within the caller's limit.
    #[error("message longer than the limit")]
    TooLong,
    /// The message is of the right protocol but breaks its rules.
    #[error("malformed message")]
    Malformed,
}

/// Checks `name` as a host name (or an IP literal's text) and lowercases it, borrowing when it
/// already is lowercase. A single trailing dot is dropped so `a.example.org.` routes like
/// `a.example.org`. Allowed bytes are the URI reg-name set minus `%` (percent-encoded names
/// are not routable names), plus `:` for IPv6 literals.
fn normalize_name(name: &[u8]) -> Result<Cow<'_, str>, Error> {
    let name = name.strip_suffix(b".").unwrap_or(name);
    if name.is_empty() || name.len() > 253 {
        return Err(Error::Malformed);
    }
    let ok = |b: u8| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:".contains(&b);
    if !name.iter().all(|&b| ok(b)) {
        return Err(Error::Malformed);
    }
    // All bytes are ASCII, checked above.
    let s = std::str::from_utf8(name).map_err(|_| Error::Malformed)?;
    if s.bytes().any(|b| b.is_ascii_uppercase()) {
        Ok(Cow::Owned(s.to_ascii_lowercase()))
    } else {
        Ok(Cow::Borrowed(s))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn normalize() {
        assert!(matches!(normalize_name(b"a.example.org"), Ok(Cow::Borrowed("a.example.org"))));
        assert_eq!(normalize_name(b"A.Example.ORG.").unwrap(), "a.example.org");
        for bad in [&b""[..], b".", b"a b", b"a\0", b"\xc3\xa9.org", b"a/b", b"a%41"] {
            assert_eq!(normalize_name(bad), Err(Error::Malformed), "{bad:?}");
        }
        assert_eq!(normalize_name(&[b'a'; 254]), Err(Error::Malformed));
    }
}
