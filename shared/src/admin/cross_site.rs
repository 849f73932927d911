//! Requests a browser sends on behalf of another site's page. Reading is open on the admin
//! listener and the control API needs a bearer token no browser has, but a page the operator
//! opens could still reach it: blind `POST`s that fill the unauthorized counter and the log,
//! and kept-alive connections under `a1.localhost`, `a2.localhost`, … (every such name is
//! loopback to a browser) that hold the listener's connection slots, `ctl`'s among them.
//! Browsers say where a request comes from (Fetch Metadata; `Origin` before it), and `ctl`,
//! scrapers and `curl` send neither, so such a request is refused and its connection closed.

use http::{header, HeaderValue, Method, Request};

/// Whether `req` was sent by a browser for a page of another origin, other than by the user
/// following a link or typing the address (a top-level navigation: the page that asked cannot
/// read the answer, and an operator's dashboard may link to the status page).
pub(super) fn from_another_site<B>(req: &Request<B>) -> bool {
    let headers = req.headers();
    if let Some(site) = headers.get("sec-fetch-site") {
        let site = site.as_bytes();
        // `none` is the user's own doing: typed, bookmarked, reloaded.
        if site.eq_ignore_ascii_case(b"same-origin") || site.eq_ignore_ascii_case(b"none") {
            return false;
        }
        // `same-site` too: another port of localhost is another program's page.
        return !top_level_navigation(req);
    }
    // A browser without Fetch Metadata (Safari before 16.4) still sends `Origin` with every
    // POST and cross-origin fetch.
    let Some(origin) = headers.get(header::ORIGIN) else { return false };
    let host = match (req.uri().authority(), headers.get(header::HOST)) {
        (Some(a), _) => a.as_str().as_bytes(),
        (None, Some(h)) => h.as_bytes(),
        (None, None) => return true,
    };
    !names_host(origin, host)
}

/// A link followed or an address typed: `GET` of a whole document. A frame is not one (it
/// would show the page inside another, which the answers forbid anyway).
fn top_level_navigation<B>(req: &Request<B>) -> bool {
    let is =
        |name: &str, value: &[u8]| req.headers().get(name).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(value));
    matches!(*req.method(), Method::GET | Method::HEAD)
        && is("sec-fetch-mode", b"navigate")
        && is("sec-fetch-dest", b"document")
}

/// Whether an `Origin` (`http://127.0.0.1:9180`) is the listener's own as the request names
/// it (`127.0.0.1:9180`). `https` too: the page may be served through a TLS proxy. `null` (a
/// sandboxed frame, a file) is no origin.
fn names_host(origin: &HeaderValue, host: &[u8]) -> bool {
    let origin = origin.as_bytes();
    let rest = [b"http://".as_slice(), b"https://"].iter().find_map(|scheme| {
        (origin.len() > scheme.len() && origin[..scheme.len()].eq_ignore_ascii_case(scheme))
            .then(|| &origin[scheme.len()..])
    });
    rest.is_some_and(|rest| rest.eq_ignore_ascii_case(host))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: Method, headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder().method(method).uri("/status");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn browsers_are_told_apart_from_tools() {
        let host = ("host", "127.0.0.1:9180");
        let refused = [
            vec![host, ("sec-fetch-site", "cross-site"), ("sec-fetch-mode", "no-cors"), ("sec-fetch-dest", "image")],
            vec![host, ("sec-fetch-site", "cross-site"), ("sec-fetch-mode", "cors"), ("sec-fetch-dest", "empty")],
            vec![host, ("sec-fetch-site", "same-site"), ("sec-fetch-mode", "no-cors")],
            vec![host, ("sec-fetch-site", "cross-site"), ("sec-fetch-mode", "navigate"), ("sec-fetch-dest", "iframe")],
            vec![host, ("sec-fetch-site", "something-new")],
            vec![host, ("origin", "http://evil.example")],
            vec![host, ("origin", "null")],
            vec![host, ("origin", "http://127.0.0.1:9181")],
            vec![host, ("origin", "http://127.0.0.1:9180.evil.example")],
            vec![("origin", "http://127.0.0.1:9180")],
        ];
        for headers in refused {
            assert!(from_another_site(&req(Method::GET, &headers)), "{headers:?}");
        }
        let answered = [
            vec![host],
            vec![],
            vec![host, ("sec-fetch-site", "same-origin"), ("sec-fetch-mode", "cors")],
            vec![host, ("sec-fetch-site", "none"), ("sec-fetch-mode", "navigate"), ("sec-fetch-dest", "document")],
            vec![
                host,
                ("sec-fetch-site", "cross-site"),
                ("sec-fetch-mode", "navigate"),
                ("sec-fetch-dest", "document"),
            ],
            vec![host, ("origin", "http://127.0.0.1:9180")],
            vec![host, ("origin", "HTTPS://127.0.0.1:9180")],
        ];
        for headers in answered {
            assert!(!from_another_site(&req(Method::GET, &headers)), "{headers:?}");
        }
        // A cross-site navigation that posts (a form) is no link followed.
        let form =
            [host, ("sec-fetch-site", "cross-site"), ("sec-fetch-mode", "navigate"), ("sec-fetch-dest", "document")];
        assert!(from_another_site(&req(Method::POST, &form)));
        // The authority of an absolute request target is the name the request gives.
        let absolute = Request::get("http://127.0.0.1:9180/status")
            .header("host", "other")
            .header("origin", "http://127.0.0.1:9180")
            .body(())
            .unwrap();
        assert!(!from_another_site(&absolute));
    }
}
