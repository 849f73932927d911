//! The order the per-site (or per-route) middlewares run in, around forward auth and the
//! upstream:
//!
//! 1. hostile-client rules: a scanner's user agent is closed unanswered, a refused header 403;
//! 2. the rate limit (preflights count too): 429 with `Retry-After`;
//! 3. a CORS preflight is answered here, 204;
//! 4. (scanner paths, forward auth and the upstream, in the handler);
//! 5. on the way back, every response (the upstream's, an auth denial, a 429) gets the CORS
//!    headers and is compressed where the rules allow.
//!
//! What the response side needs of the request (its origin verdict, the chosen encoding, the
//! method) is taken before the request goes on, since the request is consumed by then.

use std::net::IpAddr;

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};

use super::body::Body;
use super::routes::Target;
use super::{compress, cors, hostile, pages, ratelimit};
use crate::config::middleware::{Encoding, Middlewares};

/// What the response side does, decided from the request.
pub struct After<'a> {
    mw: &'a Middlewares,
    site: &'a str,
    /// CORS: the `Access-Control-Allow-Origin` value when the origin is allowed.
    origin: Option<HeaderValue>,
    encoding: Option<Encoding>,
    method: Method,
}

/// What steps 1-3 decided.
pub enum Before<'a> {
    /// The request goes on; its response is finished later.
    Go(After<'a>),
    /// This is the answer, with its access-log result.
    Answer(Response<Body>, &'static str),
}

/// Run steps 1-3 for `req` from `client`.
pub fn before<'a, B>(req: &Request<B>, client: IpAddr, target: &Target<'a>) -> Before<'a> {
    let mw = target.middlewares;
    let site = target.host;
    if let Some(rules) = &mw.hostile {
        if let Some(verdict) = hostile::check(req.headers(), rules, site) {
            let (resp, result) = hostile::respond(verdict);
            return Before::Answer(resp, result);
        }
    }
    let preflight = mw.cors.is_some() && cors::is_preflight(req);
    let origin = match &mw.cors {
        Some(c) if !preflight => cors::decide(req.headers(), c, site),
        _ => None,
    };
    let encoding = mw.compression.as_ref().and_then(|c| compress::choose(req.headers(), c));
    let after = After { mw, site, origin, encoding, method: req.method().clone() };
    for limiter in target.limiter.into_iter().chain(target.also_limiter.iter()) {
        if let Err(limited) = limiter.check(client) {
            return Before::Answer(after.finish(too_many(limited.retry_after)), "rate_limited");
        }
    }
    if let (true, Some(c)) = (preflight, &mw.cors) {
        return Before::Answer(cors::preflight(req, c, site), "cors_preflight");
    }
    Before::Go(after)
}

impl After<'_> {
    /// Step 5 on `resp`.
    pub fn finish(self, mut resp: Response<Body>) -> Response<Body> {
        if let Some(c) = &self.mw.cors {
            cors::apply(&mut resp, self.origin, c);
        }
        match &self.mw.compression {
            Some(c) => compress::apply(resp, &self.method, self.encoding, c, self.site),
            None => resp,
        }
    }
}

/// 429 with the wait in whole seconds.
fn too_many(wait: std::time::Duration) -> Response<Body> {
    let mut resp = pages::error(
        StatusCode::TOO_MANY_REQUESTS,
        "Too many requests from your address. Please wait a moment and try again.",
    );
    resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(ratelimit::retry_after_secs(wait)));
    resp
}
