//! The site table for one config generation: Host → site, its upstream client and pool.
//! Built whole on start-up and reload and swapped with `ArcSwap`; requests in flight keep theirs.

use std::sync::Arc;

use shared::peek::{NameRouter, PatternError};

use crate::access_log::Sink;
use crate::config::{AccessLog, Config, Site};
use crate::pool::{Pool, Pools};

use super::upstream::{client, ClientError, UpstreamClient};

/// One routable site.
#[derive(Debug)]
pub struct SiteRoute {
    pub site: Site,
    pub client: UpstreamClient,
    /// The site's upstreams: health, weights, the pick.
    pub pool: Arc<Pool>,
    /// Where its requests are logged; `None`: not logged.
    pub access_log: Option<Arc<Sink>>,
}

/// Host → site: exact names first, then the longest `*.suffix` wildcard (nginx rules).
#[derive(Debug, Default)]
pub struct Routes {
    names: NameRouter<Arc<SiteRoute>>,
    /// `http.access_log`: where requests for no site are logged.
    pub default_log: Option<Arc<Sink>>,
}

/// Why the table could not be built.
#[derive(Debug, thiserror::Error)]
pub enum RoutesError {
    #[error("site {host}: {source}")]
    Client { host: String, source: ClientError },
    #[error("site {host}: {source}")]
    Name { host: String, source: PatternError },
    #[error("site {host}: no upstream pool")]
    NoPool { host: String },
    #[error("{field}: cannot open `{path}`: {source}")]
    AccessLog { field: String, path: String, source: std::io::Error },
}

/// The writer of `log`, opened (or shared) now; `field` names it in the error.
fn open_log(field: String, log: Option<&AccessLog>) -> Result<Option<Arc<Sink>>, RoutesError> {
    let Some(log) = log else { return Ok(None) };
    crate::access_log::open(&log.path).map(Some).map_err(|source| RoutesError::AccessLog {
        field,
        path: log.path.display().to_string(),
        source,
    })
}

impl Routes {
    /// The table for `config`, with each site's pool from `pools` (built from the same config).
    pub fn build(config: &Config, pools: &Pools) -> Result<Self, RoutesError> {
        let mut routes = Self {
            default_log: open_log("http.access_log.path".into(), config.http.access_log.as_ref())?,
            ..Self::default()
        };
        for (i, site) in config.sites.iter().enumerate() {
            let route = Arc::new(SiteRoute {
                access_log: open_log(format!("site[{i}].access_log.path"), site.access_log.as_ref())?,
                client: client(site, config.http.upstream_connect_timeout, true)
                    .map_err(|source| RoutesError::Client { host: site.host.clone(), source })?,
                pool: pools.site(&site.host).cloned().ok_or_else(|| RoutesError::NoPool { host: site.host.clone() })?,
                site: site.clone(),
            });
            for name in site.names() {
                routes
                    .names
                    .insert(name, route.clone())
                    .map_err(|source| RoutesError::Name { host: site.host.clone(), source })?;
            }
        }
        Ok(routes)
    }

    /// The site for a normalised (lower-case, no port, no trailing dot) host.
    pub fn find(&self, host: &str) -> Option<&Arc<SiteRoute>> {
        self.names.lookup(host)
    }
}

/// The host a request is for, from the URI authority (h2, absolute-form) or the Host header,
/// lower-cased, without port or trailing dot.
pub fn request_host<B>(req: &http::Request<B>) -> Option<String> {
    let raw = match req.uri().authority() {
        Some(a) => a.as_str().to_string(),
        None => req.headers().get(http::header::HOST)?.to_str().ok()?.to_string(),
    };
    let raw = raw.rsplit_once('@').map(|(_, h)| h).unwrap_or(&raw);
    let host = if raw.starts_with('[') {
        // IPv6 literal: keep the brackets, drop a port after them.
        raw.split_once(']').map(|(h, _)| format!("{h}]"))?
    } else {
        raw.split(':').next().unwrap_or(raw).to_string()
    };
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    (!host.is_empty()).then_some(host)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_normalised() {
        let req = |h: &str| http::Request::builder().uri("/x").header("host", h).body(()).unwrap();
        assert_eq!(request_host(&req("Cloud.Example.org:443")).unwrap(), "cloud.example.org");
        assert_eq!(request_host(&req("cloud.example.org.")).unwrap(), "cloud.example.org");
        assert_eq!(request_host(&req("[200::1]:80")).unwrap(), "[200::1]");
        let h2 = http::Request::builder().uri("https://A.example.org/x").body(()).unwrap();
        assert_eq!(request_host(&h2).unwrap(), "a.example.org");
    }

    #[test]
    fn exact_beats_wildcard() {
        let c = crate::config::from_toml_str(
            r#"
            [[site]]
            host = "a.example.org"
            upstream = "http://127.0.0.1:1"
            [[site]]
            host = "*.example.org"
            upstream = "http://127.0.0.1:2"
            "#,
        )
        .unwrap();
        let r = Routes::build(&c, &Pools::build(&c, None)).unwrap();
        let upstream = |name: &str| r.find(name).map(|s| s.site.upstreams.members[0].target.authority.to_string());
        assert_eq!(upstream("a.example.org").unwrap(), "127.0.0.1:1");
        assert_eq!(upstream("b.example.org").unwrap(), "127.0.0.1:2");
        assert!(r.find("example.org").is_none());
        // nginx rules: a wildcard covers deeper names too.
        assert_eq!(upstream("x.b.example.org").unwrap(), "127.0.0.1:2");
    }
}
