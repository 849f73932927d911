//! The reverse proxy proper: rewrite the request for the upstream, send it under a deadline,
//! stream the response back with the site's headers, and splice upgraded connections.

use std::time::Duration;

use http::{header, HeaderValue, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tracing::{debug, warn};

use super::body::{self, Body};
use super::conn::Conn;
use super::headers::{apply_response, is_upgrade, set_forwarded, strip_hop_by_hop};
use super::pages;
use super::routes::SiteRoute;
use crate::idle::{Activity, Tracked};
use crate::metrics::names;

/// Send `req` to the site's upstream and build the client's response.
pub async fn forward(
    mut req: Request<Incoming>,
    route: &SiteRoute,
    conn: &Conn,
    host: Option<&str>,
    timeout: Duration,
) -> Response<Body> {
    let site = &route.site;
    let upgrade = req.version() == Version::HTTP_11 && is_upgrade(req.headers());
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));

    let scheme = if site.upstream.tls { "https" } else { "http" };
    let path = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let uri =
        match Uri::builder().scheme(scheme).authority(site.upstream.authority.clone()).path_and_query(path).build() {
            Ok(u) => u,
            Err(_) => return pages::error(StatusCode::BAD_REQUEST, "Bad request target."),
        };
    *req.uri_mut() = uri;
    // h2 clients carry the name in :authority; HTTP/1.1 upstreams need it as Host.
    if !req.headers().contains_key(header::HOST) {
        if let Some(v) = host.and_then(|h| HeaderValue::from_str(h).ok()) {
            req.headers_mut().insert(header::HOST, v);
        }
    }
    *req.version_mut() = Version::HTTP_11;
    strip_hop_by_hop(req.headers_mut(), upgrade);
    set_forwarded(req.headers_mut(), conn.info.client.ip(), conn.tls, host);

    let label = site.host.clone();
    let mut resp = match tokio::time::timeout(timeout, route.client.request(req)).await {
        Err(_) => {
            metrics::counter!(names::UPSTREAM_ERRORS, "site" => label, "result" => "timeout").increment(1);
            warn!(site = %site.host, upstream = %site.upstream, "upstream timed out");
            return with_site_headers(pages::gateway_timeout(), route);
        }
        Ok(Err(e)) => {
            let result = if e.is_connect() { "refused" } else { "error" };
            metrics::counter!(names::UPSTREAM_ERRORS, "site" => label, "result" => result).increment(1);
            warn!(site = %site.host, upstream = %site.upstream, error = %error_chain(&e), "upstream failed");
            return with_site_headers(pages::bad_gateway(), route);
        }
        Ok(Ok(resp)) => resp,
    };

    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(client_upgrade) = client_upgrade else {
            // An upstream that switches protocols unasked breaks HTTP; do not pass it on.
            return with_site_headers(pages::bad_gateway(), route);
        };
        let upstream_upgrade = hyper::upgrade::on(&mut resp);
        let idle = conn.state.config.load().http.idle_timeout;
        tokio::spawn(splice_upgrade(client_upgrade, upstream_upgrade, label, idle));
        let (parts, _) = resp.into_parts();
        // Connection/Upgrade stay: they are the client's confirmation of the switch.
        return Response::from_parts(parts, body::full(""));
    }

    strip_hop_by_hop(resp.headers_mut(), false);
    let (parts, incoming) = resp.into_parts();
    with_site_headers(Response::from_parts(parts, body::stream(incoming)), route)
}

fn with_site_headers(mut resp: Response<Body>, route: &SiteRoute) -> Response<Body> {
    apply_response(resp.headers_mut(), &route.site.response_headers);
    resp
}

/// hyper's error Display hides the cause ("client error (Connect)"); logs want all of it.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Copy bytes both ways between the upgraded client and upstream connections until both
/// sides close or nothing moves for `idle`.
async fn splice_upgrade(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    site: String,
    idle: Duration,
) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(pair) => pair,
        Err(e) => {
            debug!(site = %site, error = %e, "upgrade did not complete");
            metrics::counter!(names::UPGRADES, "site" => site, "result" => "failed").increment(1);
            return;
        }
    };
    metrics::counter!(names::UPGRADES, "site" => site.clone(), "result" => "ok").increment(1);
    let activity = Activity::new();
    let mut client = Tracked::new(TokioIo::new(client), activity.clone());
    let mut upstream = TokioIo::new(upstream);
    tokio::select! {
        res = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {
            if let Err(e) = res {
                debug!(site = %site, error = %e, "upgraded connection ended with an error");
            }
        }
        _ = activity.idle_for(idle) => debug!(site = %site, "upgraded connection idle, closed"),
    }
}
