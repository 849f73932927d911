//! Which names an admin listener answers to. A web page the operator opens can point a name
//! of its own at the listener's address (DNS rebinding) and then read, from the operator's
//! browser, what the listener serves without a token: the status page, the metrics, the event
//! log. The browser sends the page's name as Host, so a request is refused (421) unless it
//! names the host by an IP address, `localhost` (or a `*.localhost` name), no name at all (as
//! HTTP/1.0 scrapers may), or a name the operator listed in `admin.allowed_hosts` (Syncthing
//! and Django guard their listeners the same way). Without a list, only loopback connections
//! are held to it: a listener on a LAN address is reached by whatever names the network gives
//! it, and one who knows them opts in.

use std::net::IpAddr;
use std::sync::Arc;

use http::{header, Request};

/// The names of `admin.allowed_hosts`: lowercase, without a trailing dot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowedHosts(Arc<[String]>);

impl AllowedHosts {
    /// From the config's list; `Err` names the first entry that is not a DNS name (a port, a
    /// scheme, a path or a wildcard are not part of one).
    pub fn new(names: &[String]) -> Result<Self, String> {
        let mut out = Vec::with_capacity(names.len());
        for given in names {
            let name = given.strip_suffix('.').unwrap_or(given).to_ascii_lowercase();
            let label_ok = |l: &str| {
                (1..=63).contains(&l.len())
                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    && !l.starts_with('-')
                    && !l.ends_with('-')
            };
            if name.len() > 253 || !name.split('.').all(label_ok) {
                return Err(format!(
                    "`{given}` is not a host name (list names as the browser's address bar shows them, \
                     without scheme or port; IP addresses and localhost are always answered)"
                ));
            }
            out.push(name);
        }
        Ok(Self(out.into()))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn lists(&self, host: &str) -> bool {
        let host = host.strip_suffix('.').unwrap_or(host);
        self.0.iter().any(|n| n.eq_ignore_ascii_case(host))
    }
}

/// Whether `req`, on a connection that came in on a loopback address (`loopback`), names a
/// host this listener answers to (see the module).
pub(super) fn answers<B>(req: &Request<B>, loopback: bool, allowed: &AllowedHosts) -> bool {
    if !loopback && allowed.is_empty() {
        return true;
    }
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let (named, more) = (hosts.next(), hosts.next());
    let authority = match (req.uri().authority(), named, more) {
        (_, Some(_), Some(_)) => return false,
        (Some(a), _, _) => a.clone(),
        (None, None, _) => return true,
        (None, Some(v), _) => match http::uri::Authority::try_from(v.as_bytes()) {
            Ok(a) => a,
            Err(_) => return false,
        },
    };
    let host = authority.host();
    let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    bare.parse::<IpAddr>().is_ok()
        || host.eq_ignore_ascii_case("localhost")
        || host.len() > 10 && host.as_bytes()[host.len() - 10..].eq_ignore_ascii_case(b".localhost")
        || allowed.lists(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(host: &str) -> Request<()> {
        Request::get("/status").header(header::HOST, host).body(()).unwrap()
    }

    #[test]
    fn listed_names_are_answered_on_every_connection_and_others_refused() {
        let allowed = AllowedHosts::new(&["Status.Home.Lan.".into(), "proxy".into()]).unwrap();
        for loopback in [true, false] {
            for host in
                ["status.home.lan", "STATUS.home.lan:9181", "status.home.lan.", "proxy", "10.0.0.5:9181", "[::1]"]
            {
                assert!(answers(&req(host), loopback, &allowed), "{host} (loopback: {loopback})");
            }
            for host in ["rebind.example", "home.lan", "status.home.lan.evil.example", "xstatus.home.lan"] {
                assert!(!answers(&req(host), loopback, &allowed), "{host} (loopback: {loopback})");
            }
        }
        // Without a list only loopback connections are checked.
        let none = AllowedHosts::default();
        assert!(answers(&req("rebind.example"), false, &none));
        assert!(!answers(&req("rebind.example"), true, &none));
        assert!(answers(&req("localhost"), true, &none));
    }

    #[test]
    fn entries_that_are_not_host_names_are_refused_by_name() {
        for bad in ["http://status.home.lan", "status.home.lan:9181", "*.home.lan", "", "a..b", "-a.lan", "a b"] {
            let e = AllowedHosts::new(&["ok.lan".into(), bad.into()]).expect_err(bad);
            assert!(e.contains(&format!("`{bad}`")), "{bad}: {e}");
        }
    }
}
