//! Hostile clients: a `User-Agent` naming a scanner gets its connection closed without any
//! answer (nginx's 444: the scanner learns nothing, not even that a web server is here), and a
//! request carrying a refused header (a Cloudflare Worker's `CF-Worker`, `CDN-Loop:
//! cloudflare`) is answered 403. Both are counted and logged: the access log line of a
//! closed request has status 444 and result `closed`, a refused one 403 and `refused`.
//!
//! Closing: the handler returns a response marked with [`CloseConnection`]; the connection
//! server logs it, drops it and fails the request with [`Closed`], on which hyper closes an
//! HTTP/1 connection without writing anything and resets the h2 stream.

use http::header::{self, HeaderMap};
use http::{Response, StatusCode};

use super::body::{full, Body};
use super::pages;
use crate::config::middleware::Hostile;
use crate::metrics::names;

/// nginx's "connection closed without response", as the access log records it.
pub const CLOSED_STATUS: u16 = 444;

/// What the rules say about a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// A scanner's user agent: close without an answer.
    Close,
    /// A refused header: 403.
    Refuse,
}

/// Marks a response that must not be sent: the connection is closed instead.
#[derive(Debug, Clone, Copy)]
pub struct CloseConnection;

/// The request error that makes hyper close the connection unanswered.
#[derive(Debug, thiserror::Error)]
#[error("connection closed without a response (hostile client)")]
pub struct Closed;

/// Check `request` against `rules`; `site` labels the metric.
pub fn check(request: &HeaderMap, rules: &Hostile, site: &str) -> Option<Verdict> {
    if !rules.close_user_agents.is_empty() {
        if let Some(ua) = request.get(header::USER_AGENT) {
            let ua = String::from_utf8_lossy(ua.as_bytes()).to_ascii_lowercase();
            if let Some(p) = rules.close_user_agents.iter().find(|p| ua.contains(p.as_str())) {
                tracing::debug!(site, pattern = %p, "hostile user agent: closed without a response");
                metrics::counter!(names::HOSTILE, "site" => site.to_string(), "rule" => "user_agent").increment(1);
                return Some(Verdict::Close);
            }
        }
    }
    if let Some(rule) = rules.refuse_headers.iter().find(|r| r.matches(request)) {
        tracing::debug!(site, header = %rule.name, "refused header: 403");
        metrics::counter!(names::HOSTILE, "site" => site.to_string(), "rule" => "header").increment(1);
        return Some(Verdict::Refuse);
    }
    None
}

/// The response for a verdict, and its access-log result.
pub fn respond(verdict: Verdict) -> (Response<Body>, &'static str) {
    match verdict {
        Verdict::Close => {
            let mut resp = Response::new(full(""));
            // 444 is a valid status code number (100-999), never sent: only logged.
            *resp.status_mut() = StatusCode::from_u16(CLOSED_STATUS).unwrap_or(StatusCode::FORBIDDEN);
            resp.extensions_mut().insert(CloseConnection);
            (resp, "closed")
        }
        Verdict::Refuse => (pages::error(StatusCode::FORBIDDEN, "This request is not accepted here."), "refused"),
    }
}

/// Whether `resp` is to be dropped and its connection closed.
pub fn must_close<B>(resp: &Response<B>) -> bool {
    resp.extensions().get::<CloseConnection>().is_some()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::middleware::HeaderRule;

    #[test]
    fn verdicts() {
        let rules = Hostile {
            close_user_agents: vec!["sqlmap".into()],
            refuse_headers: vec![HeaderRule {
                name: header::HeaderName::from_static("cf-worker"),
                value_contains: None,
            }],
        };
        let mut h = HeaderMap::new();
        h.insert(header::USER_AGENT, "Mozilla/5.0 (Firefox)".parse().unwrap());
        assert_eq!(check(&h, &rules, "t"), None);
        h.insert(header::USER_AGENT, "SQLMap/1.7#stable (https://sqlmap.org)".parse().unwrap());
        assert_eq!(check(&h, &rules, "t"), Some(Verdict::Close));
        h.remove(header::USER_AGENT);
        h.insert("cf-worker", "example.com".parse().unwrap());
        assert_eq!(check(&h, &rules, "t"), Some(Verdict::Refuse));
        let (resp, result) = respond(Verdict::Close);
        assert!(must_close(&resp) && resp.status().as_u16() == 444 && result == "closed");
    }
}
