//! Header rewriting at the proxy boundary: hop-by-hop headers dropped, the client address
//! and scheme added for the upstream, per-site response headers applied.

use std::net::IpAddr;

use bytes::BytesMut;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// Headers that describe one connection, not the message (RFC 9110 7.6.1), with the legacy
/// `Keep-Alive` and `Proxy-Connection` still sent. `Trailer` is not one (RFC 9110 6.6.2,
/// unlike RFC 2616): it announces the message's trailer fields, and hyper sends an HTTP/1.1
/// client only the trailers it announces. Bit `i` of [`hop_by_hop_found`]'s mask is entry `i`.
/// A static, not a const: a const array would be built and dropped at every use.
static HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
];
const CONNECTION_BIT: u8 = 1 << 0;
const TRANSFER_ENCODING_BIT: u8 = 1 << 2;
const UPGRADE_BIT: u8 = 1 << 3;

/// Which of [`HOP_BY_HOP`] `headers` has, one bit each, from one scan of the names: by
/// length first, so that the usual names (`date`, `server`, `content-type`) cost one
/// comparison of a number.
fn hop_by_hop_found(headers: &HeaderMap) -> u8 {
    headers.keys().fold(0, |found, name| {
        let n = name.as_str();
        let index = match n.len() {
            10 => (n == "connection").then_some(0).or((n == "keep-alive").then_some(4)),
            2 => (n == "te").then_some(1),
            17 => (n == "transfer-encoding").then_some(2),
            7 => (n == "upgrade").then_some(3),
            16 => (n == "proxy-connection").then_some(5),
            18 => (n == "proxy-authenticate").then_some(6),
            19 => (n == "proxy-authorization").then_some(7),
            _ => None,
        };
        index.map_or(found, |i| found | 1 << i)
    })
}

/// Whether a request asks to switch protocols (WebSocket and friends). Not to h2c: an
/// upstream that switched would take every later request on the connection as its own
/// stream, past the routes, forward auth and rate limits that judge each request here
/// ("h2c smuggling"). Such a request goes on as an ordinary one, its `Upgrade` dropped.
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    let Some(protocols) = headers.get(header::UPGRADE) else { return false };
    let h2c = protocols.to_str().map_or(true, |v| v.split(',').any(|p| p.trim().eq_ignore_ascii_case("h2c")));
    !h2c && headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Drop hop-by-hop headers, including any the `Connection` header names (in any case, in
/// every `Connection` header). With `may_upgrade` (an HTTP/1.1 request), a request to switch
/// protocols ([`is_upgrade`]) keeps `Connection: upgrade` and `Upgrade`, so the upstream sees
/// it; asked only when there is a hop-by-hop header at all.
///
/// Runs twice per proxied request (request and response), so the common cases cost one pass
/// over the names ([`hop_by_hop_found`]): none at all returns there, and the usual one, a
/// `Connection: keep-alive` naming no header, is one removal. The names a `Connection` header
/// lists are removed by `&str` (lowercased on the stack by `http`, no `HeaderName` built), and
/// its values copied only when one names a header.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, may_upgrade: bool) {
    let found = hop_by_hop_found(headers);
    if found == 0 {
        return;
    }
    let upgrade_value = if may_upgrade && found & UPGRADE_BIT != 0 && is_upgrade(headers) {
        headers.get(header::UPGRADE).cloned()
    } else {
        None
    };
    // A message framed by Transfer-Encoding goes on re-framed by hyper; a Content-Length sent
    // beside it is wrong for that framing (RFC 9112 6.3), and hyper's client keeps it in an
    // upstream's response: passed on, the client would read that many bytes of the body.
    if found & TRANSFER_ENCODING_BIT != 0 {
        headers.remove(header::CONTENT_LENGTH);
    }
    if found & CONNECTION_BIT != 0 {
        let names_some = headers.get_all(header::CONNECTION).iter().any(|v| named_by(v).next().is_some());
        // `remove` returns the first value only: the others are taken before.
        let values: Vec<HeaderValue> =
            if names_some { headers.get_all(header::CONNECTION).iter().cloned().collect() } else { Vec::new() };
        headers.remove(header::CONNECTION);
        for value in &values {
            for name in named_by(value) {
                headers.remove(name);
            }
        }
    }
    // The others found (some may be gone already, named by `Connection`).
    for (i, name) in HOP_BY_HOP.iter().enumerate().skip(1) {
        if found & 1 << i != 0 {
            headers.remove(name);
        }
    }
    if let Some(v) = upgrade_value {
        headers.insert(header::UPGRADE, v);
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// The header names one `Connection` value lists (comma-separated tokens, any case).
/// `close` and `keep-alive` are the usual values: the first names no header, the second one
/// removed anyway. `Host` is the request's own, not the connection's, whatever a client says.
/// A token that is no valid header name names nothing when removed.
fn named_by(connection: &HeaderValue) -> impl Iterator<Item = &str> {
    let list = connection.to_str().unwrap_or("");
    list.split(',').map(str::trim).filter(|token| {
        !(token.is_empty()
            || token.eq_ignore_ascii_case("close")
            || token.eq_ignore_ascii_case("keep-alive")
            || token.eq_ignore_ascii_case("host"))
    })
}

/// The `X-Forwarded-For` / `X-Real-IP` value for a client address (IPv4-mapped IPv6 shown
/// as IPv4). Built once per connection (`Conn::forwarded_for`), cloned per request.
pub fn client_value(client: IpAddr) -> HeaderValue {
    use std::io::Write;
    // The longest text form of an IPv6 address is 45 bytes.
    let mut buf = [0u8; 48];
    let mut w = &mut buf[..];
    let len = match write!(w, "{}", client.to_canonical()) {
        Ok(()) => 48 - w.len(),
        Err(_) => 0,
    };
    // An address's text is ASCII digits, hex, dots and colons: always a valid value.
    HeaderValue::from_bytes(&buf[..len]).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Tell the upstream who the client is (`client`: from [`client_value`]). Client-sent
/// values are replaced, never appended to: the client is on the internet and could claim
/// any address. `X-Forwarded-Host` takes the request's own `Host` value when it already is
/// `host` (no copy), else a new value.
pub fn set_forwarded(headers: &mut HeaderMap, client: &HeaderValue, tls: bool, host: Option<&str>) {
    headers.insert(X_FORWARDED_FOR, client.clone());
    headers.insert(X_REAL_IP, client.clone());
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(if tls { "https" } else { "http" }));
    headers.remove(header::FORWARDED);
    let value = host.and_then(|h| match headers.get(header::HOST) {
        Some(v) if v.as_bytes() == h.as_bytes() => Some(v.clone()),
        _ => HeaderValue::from_str(h).ok(),
    });
    match value {
        Some(v) => {
            headers.insert(X_FORWARDED_HOST, v);
        }
        None => {
            headers.remove(X_FORWARDED_HOST);
        }
    }
}

/// Remove the client's forwarding claims other than those [`set_forwarded`] replaces:
/// frameworks behind a trusted proxy build redirects and links from them (Spring and Rack read
/// X-Forwarded-Port and -Prefix, Symfony -Port, IIS rewrites by X-Original-URL). Done before
/// forward auth and the route's `request_headers`, which may set some of them on purpose
/// (`X-Forwarded-User`, `X-Forwarded-Prefix`). One scan of the names, then a removal of each
/// found (a client may send thousands of distinct `x-forwarded-*` names: a scan per removal
/// would be quadratic); allocates only when there is one.
pub fn drop_forwarding_claims(headers: &mut HeaderMap) {
    let claims: Vec<HeaderName> = headers.keys().filter(|n| claims_forwarding(n)).cloned().collect();
    for name in claims {
        headers.remove(name);
    }
}

/// Remove the headers spelled with `_` whose `-` spelling is one this proxy sets, replaces or
/// removes: a forwarding header (`X_Forwarded_For`, `X_Real_IP`, `Forwarded`…) or one of
/// `identity` (the auth service's `Remote_User`). Servers that map names to CGI variables
/// (Django under ASGI, gunicorn before 22, Puma before 6.4.3) read both spellings as one, so
/// the client's twin would pass the removal of the real name: on a public route it is taken
/// for the user, on a protected one joined to the real value. nginx drops every `_` name by
/// default; only the twins go here, so an application's own `_` headers still arrive. One
/// scan of the names, comparing `_` as `-` in place; allocates only when there is a twin.
pub fn drop_underscore_twins(headers: &mut HeaderMap, identity: &[HeaderName]) {
    // Names are lower case; `a` is the client's, `b` one of ours.
    let same =
        |a: &[u8], b: &[u8]| a.len() == b.len() && a.iter().zip(b).all(|(&x, &y)| x == y || (x == b'_' && y == b'-'));
    let twin = |name: &HeaderName| {
        let n = name.as_str().as_bytes();
        n.contains(&b'_')
            && (["x-real-ip", "forwarded", "x-original-url", "x-rewrite-url"].iter().any(|m| same(n, m.as_bytes()))
                || n.get(..12).is_some_and(|head| same(head, b"x-forwarded-"))
                || identity.iter().any(|i| same(n, i.as_str().as_bytes())))
    };
    let twins: Vec<HeaderName> = headers.keys().filter(|n| twin(n)).cloned().collect();
    for name in twins {
        headers.remove(name);
    }
}

/// A forwarding header this proxy does not set itself (those it sets, it replaces).
fn claims_forwarding(name: &HeaderName) -> bool {
    let n = name.as_str();
    match n.strip_prefix("x-forwarded-") {
        Some(rest) => !matches!(rest, "for" | "proto" | "host"),
        None => n == "x-original-url" || n == "x-rewrite-url",
    }
}

/// An h2 client may send its cookies as several `cookie` fields; HTTP/1.1 allows one, and
/// RFC 9113 8.2.3 has them joined with "; " before a request goes on over HTTP/1.1 (several
/// `Cookie` lines reach most frameworks as the first one only). Nothing to do for one.
pub fn join_cookies(headers: &mut HeaderMap) {
    let all = headers.get_all(header::COOKIE);
    if all.iter().nth(1).is_none() {
        return;
    }
    let mut joined = Vec::with_capacity(all.iter().map(|v| v.len() + 2).sum());
    for v in all {
        if !joined.is_empty() {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(v.as_bytes());
    }
    // Valid values joined by "; " are a valid value.
    if let Ok(mut v) = HeaderValue::from_bytes(&joined) {
        v.set_sensitive(true);
        headers.insert(header::COOKIE, v);
    }
}

/// Give `headers`' values one small buffer of their own: `serve` does it to every response it
/// gives an h2 client.
///
/// hyper parses an upstream's response head into values that share that upstream
/// connection's 8 KiB read buffer. h2's HPACK encoder keeps each value it indexes in the client
/// connection's table until the table evicts it, and with the value the whole buffer: 8 kB
/// more per h2 connection that has had an answer, and one more each time a new `Date` is
/// indexed (DHAT; bench/results/2026-12-05-vm-connection-task.md). One copy of the values'
/// bytes per response, into one allocation.
pub fn unshare_values(headers: &mut HeaderMap) {
    let len = headers.values().map(HeaderValue::len).sum();
    let mut buf = BytesMut::with_capacity(len);
    for v in headers.values() {
        buf.extend_from_slice(v.as_bytes());
    }
    let buf = buf.freeze();
    // `values_mut` visits the values in the order `values` did: the map did not change.
    let mut at = 0;
    for v in headers.values_mut() {
        let end = at + v.len();
        // The bytes were a valid value a moment ago, so this cannot fail; if it did, the
        // value would stay shared, which is only memory.
        if let Ok(mut own) = HeaderValue::from_maybe_shared(buf.slice(at..end)) {
            own.set_sensitive(v.is_sensitive());
            *v = own;
        }
        at = end;
    }
}

/// Apply a site's response headers: set the given ones, remove those with no value.
pub fn apply_response(headers: &mut HeaderMap, rules: &[(HeaderName, Option<HeaderValue>)]) {
    for (name, value) in rules {
        match value {
            Some(v) => {
                headers.insert(name.clone(), v.clone());
            }
            None => {
                headers.remove(name);
            }
        }
    }
}

/// Apply a route's request headers (the same rules, on the request sent upstream).
pub fn apply_request(headers: &mut HeaderMap, rules: &[(HeaderName, Option<HeaderValue>)]) {
    apply_response(headers, rules);
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn unshared_values_keep_their_bytes_order_and_sensitivity_but_not_the_read_buffer() {
        let read_buf = bytes::Bytes::copy_from_slice(b"nginxSat, 05 Dec 2026 16:23:58 GMTtext/plainsecret");
        let shared = |r: std::ops::Range<usize>| HeaderValue::from_maybe_shared(read_buf.slice(r)).unwrap();
        let mut h = HeaderMap::new();
        h.insert(header::SERVER, shared(0..5));
        h.insert(header::DATE, shared(5..34));
        h.append(header::VARY, shared(34..44));
        h.append(header::VARY, shared(0..5));
        let mut secret = shared(44..50);
        secret.set_sensitive(true);
        h.insert(header::SET_COOKIE, secret);
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static(""));
        let expected = h.clone();
        assert!(!read_buf.is_unique());

        unshare_values(&mut h);
        assert_eq!(h, expected);
        assert_eq!(h.get_all(header::VARY).iter().collect::<Vec<_>>(), ["text/plain", "nginx"]);
        assert!(h.get(header::SET_COOKIE).unwrap().is_sensitive());
        assert!(!h.get(header::SERVER).unwrap().is_sensitive());
        // Nothing in the map holds the read buffer any more.
        drop(expected);
        assert!(read_buf.is_unique());
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_go() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, x-secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key(header::ACCEPT));
    }

    /// Each hop-by-hop name alone is found as its own bit and removed; names of the same
    /// length (`set-cookie` beside `connection`) are kept.
    #[test]
    fn every_hop_by_hop_name_is_found_and_removed() {
        for (i, name) in HOP_BY_HOP.iter().enumerate() {
            let mut h = HeaderMap::new();
            h.insert(name.clone(), HeaderValue::from_static("x"));
            for kept in ["set-cookie", "tk", "x-frame-options", "content-location", "x-content-type-opt"] {
                h.insert(HeaderName::from_static(kept), HeaderValue::from_static("1"));
            }
            assert_eq!(hop_by_hop_found(&h), 1 << i, "{name}");
            strip_hop_by_hop(&mut h, false);
            assert_eq!(h.len(), 5, "{name}: {h:?}");
            assert!(!h.contains_key(name), "{name}");
        }
    }

    #[test]
    fn connection_tokens_in_any_case_and_every_connection_header_go() {
        let mut h = HeaderMap::new();
        h.append(header::CONNECTION, HeaderValue::from_static("X-Secret , close"));
        h.append(header::CONNECTION, HeaderValue::from_static("x-other,,Keep-Alive"));
        h.append(header::CONNECTION, HeaderValue::from_static("X-THIRD"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("x-other", HeaderValue::from_static("2"));
        h.append("x-third", HeaderValue::from_static("3"));
        h.append("x-third", HeaderValue::from_static("4"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
        h.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        h.insert(header::HOST, HeaderValue::from_static("a.example.org"));
        h.insert("x-kept", HeaderValue::from_static("5"));
        strip_hop_by_hop(&mut h, false);
        let mut left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["host", "x-kept"]);
    }

    #[test]
    fn a_connection_token_that_is_no_header_name_is_skipped() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("bad name, x-a, \"q\""));
        h.insert("x-a", HeaderValue::from_static("1"));
        h.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key(header::ACCEPT));
    }

    #[test]
    fn without_hop_by_hop_headers_nothing_changes() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("a.example.org"));
        h.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        h.insert("x-connection", HeaderValue::from_static("keep-alive"));
        let before = h.clone();
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h, before);
    }

    #[test]
    fn only_hop_by_hop_names_without_connection_go() {
        let mut h = HeaderMap::new();
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert("Proxy-Connection", HeaderValue::from_static("keep-alive"));
        h.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key(header::ACCEPT));
    }

    #[test]
    fn upgrade_is_kept_when_asked() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(is_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h[header::UPGRADE], "websocket");
        assert_eq!(h[header::CONNECTION], "upgrade");
    }

    #[test]
    fn forwarded_headers_replace_client_claims() {
        let mut h = HeaderMap::new();
        h.insert(X_FORWARDED_FOR, HeaderValue::from_static("1.2.3.4"));
        set_forwarded(&mut h, &client_value("::ffff:198.51.100.7".parse().unwrap()), true, Some("a.example.org"));
        assert_eq!(h[X_FORWARDED_FOR], "198.51.100.7");
        assert_eq!(h[X_REAL_IP], "198.51.100.7");
        assert_eq!(h[X_FORWARDED_PROTO], "https");
        assert_eq!(h[X_FORWARDED_HOST], "a.example.org");
    }

    #[test]
    fn forwarded_host_reuses_a_matching_host_and_is_dropped_without_one() {
        let client = client_value("2001:db8::7".parse().unwrap());
        assert_eq!(client, "2001:db8::7");
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("a.example.org:8443"));
        h.insert(header::FORWARDED, HeaderValue::from_static("for=1.2.3.4"));
        h.insert(X_REAL_IP, HeaderValue::from_static("1.2.3.4"));
        set_forwarded(&mut h, &client, false, Some("a.example.org"));
        assert_eq!(h[X_FORWARDED_HOST], "a.example.org");
        assert_eq!(h[X_FORWARDED_FOR], "2001:db8::7");
        assert_eq!(h[X_REAL_IP], "2001:db8::7");
        assert_eq!(h[X_FORWARDED_PROTO], "http");
        assert!(!h.contains_key(header::FORWARDED));
        h.insert(header::HOST, HeaderValue::from_static("a.example.org"));
        set_forwarded(&mut h, &client, true, Some("a.example.org"));
        assert_eq!(h[X_FORWARDED_HOST], "a.example.org");
        set_forwarded(&mut h, &client, true, None);
        assert!(!h.contains_key(X_FORWARDED_HOST));
        assert_eq!(h.get_all(X_FORWARDED_FOR).iter().count(), 1);
    }

    #[test]
    fn a_connection_token_cannot_take_the_host() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, Host, remote-user"));
        h.insert(header::HOST, HeaderValue::from_static("app.example.org"));
        h.insert("remote-user", HeaderValue::from_static("mallory"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1);
        assert_eq!(h[header::HOST], "app.example.org");
    }

    #[test]
    fn transfer_encoding_takes_a_content_length_beside_it() {
        let mut h = HeaderMap::new();
        h.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
        strip_hop_by_hop(&mut h, false);
        assert!(h.is_empty(), "{h:?}");
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h[header::CONTENT_LENGTH], "5");
    }

    #[test]
    fn trailer_announcements_stay() {
        let mut h = HeaderMap::new();
        h.insert(header::TRAILER, HeaderValue::from_static("x-checksum"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1);
        assert_eq!(h[header::TRAILER], "x-checksum");
    }

    #[test]
    fn an_h2c_upgrade_is_no_upgrade() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade, HTTP2-Settings"));
        h.insert(header::UPGRADE, HeaderValue::from_static("H2C"));
        h.insert("http2-settings", HeaderValue::from_static("AAMAAABkAAQAAP__"));
        assert!(!is_upgrade(&h));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket, h2c"));
        assert!(!is_upgrade(&h));
        strip_hop_by_hop(&mut h, false);
        assert!(h.is_empty(), "{h:?}");
    }

    #[test]
    fn other_forwarding_claims_go() {
        let mut h = HeaderMap::new();
        for name in ["x-forwarded-port", "x-forwarded-prefix", "X-Forwarded-Ssl", "x-original-url", "x-rewrite-url"] {
            h.insert(HeaderName::from_bytes(name.as_bytes()).unwrap(), HeaderValue::from_static("//evil.example"));
        }
        h.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        h.insert("x-forwarded-thing-of-ours", HeaderValue::from_static("1"));
        h.insert("x-forwardedness", HeaderValue::from_static("kept"));
        drop_forwarding_claims(&mut h);
        set_forwarded(&mut h, &client_value("192.0.2.1".parse().unwrap()), false, None);
        let mut left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["accept", "x-forwarded-for", "x-forwarded-proto", "x-forwardedness", "x-real-ip"]);
    }

    #[test]
    fn underscore_twins_of_managed_headers_go() {
        let mut h = HeaderMap::new();
        for name in
            ["remote_user", "x_forwarded_for", "X_Forwarded_Proto", "x_real_ip", "x-forwarded_host", "forwarded"]
        {
            h.insert(HeaderName::from_bytes(name.as_bytes()).unwrap(), HeaderValue::from_static("spoof"));
        }
        h.insert("x_api_key", HeaderValue::from_static("kept"));
        h.insert("remote-user", HeaderValue::from_static("kept: the real name is the identity rule's"));
        drop_underscore_twins(&mut h, &[HeaderName::from_static("remote-user")]);
        let mut left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["forwarded", "remote-user", "x_api_key"]);
    }

    #[test]
    fn cookies_in_several_fields_are_joined() {
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("a=1"));
        h.append(header::COOKIE, HeaderValue::from_static("b=2; c=3"));
        h.append(header::COOKIE, HeaderValue::from_static("d=4"));
        join_cookies(&mut h);
        assert_eq!(h.get_all(header::COOKIE).iter().collect::<Vec<_>>(), ["a=1; b=2; c=3; d=4"]);
        let mut one = HeaderMap::new();
        one.insert(header::COOKIE, HeaderValue::from_static("a=1"));
        let before = one.clone();
        join_cookies(&mut one);
        assert_eq!(one, before);
    }
}
