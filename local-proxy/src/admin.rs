//! The admin listener (the shared hyper server, `shared::admin`): `GET /metrics`
//! (Prometheus text), `GET /healthz`, `GET /status` (JSON, see `status`), `GET /` (the
//! status page, see `page`) and runtime control of upstreams (`POST /api/drain`,
//! `/api/undrain`, `/api/weight` with `name=SITE_OR_STREAM&upstream=URL_OR_ADDRESS`), which
//! needs the bearer token of `admin.token_file`: without one configured the control
//! endpoints are off (403); a missing or wrong token is refused (401), counted and logged.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use http::StatusCode;
use shared::admin::control::{authorize, drain_word, weight_param, Action};
use shared::admin::{Call, Reply, Routes};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::events::Event;
use crate::metrics::names;
use crate::pool::{Member, Pool, NO_OVERRIDE};
use crate::state::State;

/// Serve the admin endpoints until `stop` (shutdown, or a reload that moves the listener).
pub async fn serve(listener: TcpListener, stop: CancellationToken, state: Arc<State>) {
    let (metrics, health, status, hosts) = (state.clone(), state.clone(), state.clone(), state.clone());
    let routes = Routes::new()
        .get("/metrics", move || {
            let served = publish_certificates(&metrics);
            Reply::metrics(running_series(&metrics, &served))
        })
        .get("/healthz", move || match health.health() {
            Ok(()) => Reply::text(StatusCode::OK, "ok\n"),
            Err(why) => Reply::text(StatusCode::SERVICE_UNAVAILABLE, format!("unhealthy: {why}\n")),
        })
        .status(move || crate::status::collect(&status), crate::page::render)
        .control(move |c, action| control(&state, c, action))
        .allowed_hosts(move || hosts.config.load().admin_hosts.clone())
        .on_refused(|| metrics::counter!(names::ADMIN_REFUSED).increment(1));
    shared::admin::serve(listener, routes, stop.cancelled_owned()).await;
}

/// Each served certificate's end as a gauge, by its first name (the alert rules read it);
/// those first names.
fn publish_certificates(state: &State) -> Vec<String> {
    let mut served = Vec::new();
    for (names, not_after) in state.certs.certificates() {
        if let Some(first) = names.into_iter().next() {
            metrics::gauge!(names::CERTIFICATE_EXPIRY, "certificate" => first.clone()).set(not_after as f64);
            served.push(first);
        }
    }
    served
}

/// The exposition without the gauges of what does not run (`shared::admin::series`):
/// upstreams the running pools do not have (removed by a reload, or built by a refused one),
/// certificates no longer `served` (the expiry alert would fire for ever), and sites, their
/// routes and streams no longer configured.
fn running_series(state: &State, served: &[String]) -> String {
    let (pools, config) = (state.pools.load(), state.config.load());
    shared::admin::series::retain(&state.metrics.render(), |l| {
        if l.name == names::CERTIFICATE_EXPIRY {
            return l.get("certificate").is_some_and(|c| served.iter().any(|s| *s == *c));
        }
        // A name a reload removed from the firewall (its failing gauge would alert for good).
        if l.name.starts_with("local_proxy_firewall_") {
            if let Some(name) = l.get("name").filter(|n| n.as_ref() != "static") {
                return config
                    .firewall
                    .as_ref()
                    .is_some_and(|f| f.ingress_names.iter().any(|n| n.as_str() == name.as_ref()));
            }
        }
        if l.name == names::ACME_FAILURES || l.name == names::ACME_DAYS_LEFT {
            return l.get("certificate").is_some_and(|c| state.acme.keeps(&c));
        }
        let (site, stream) = (l.get("site"), l.get("stream"));
        if let Some(upstream) = l.get("upstream") {
            let owner = site.map(|s| ("site", s)).or(stream.map(|s| ("stream", s)));
            return owner.is_some_and(|(key, name)| pools.runs(key, &name, &upstream));
        }
        let route = l.get("route");
        let site_runs = site.is_none_or(|s| {
            // A route's series ("" for the site's own) need the route too.
            config.sites.iter().any(|c| {
                *c.host == *s && route.as_deref().is_none_or(|r| r.is_empty() || c.routes.iter().any(|x| x.name == r))
            })
        });
        site_runs && stream.is_none_or(|s| config.streams.iter().any(|c| *c.name == *s))
    })
}

/// One control request: authenticate, find the upstream, apply, record who did what.
fn control(state: &State, c: &Call<'_>, action: Action) -> Reply {
    let config = state.config.load();
    let count = |reason: &'static str| metrics::counter!(names::ADMIN_UNAUTHORIZED, "reason" => reason).increment(1);
    let user = match authorize(config.admin_token.as_ref(), c, action, count) {
        Ok(user) => user,
        Err(reply) => return reply,
    };
    let (name, upstream) = match (c.param("name"), c.param("upstream")) {
        (Ok(Some(name)), Ok(Some(upstream))) => (name, upstream),
        (Err(bad), _) | (_, Err(bad)) => return bad,
        _ => return Reply::text(StatusCode::BAD_REQUEST, "missing name=SITE_OR_STREAM and upstream=URL_OR_ADDRESS\n"),
    };
    let pools = state.pools.load();
    // A route with its own upstreams is named `host#route` (as in /status and the metrics).
    let site = pools.site(&name).or_else(|| name.split_once('#').and_then(|(h, r)| pools.route(h, r)));
    let pool: &Arc<Pool> = match (site, pools.stream(&name)) {
        (Some(p), None) | (None, Some(p)) => p,
        (Some(_), Some(_)) => {
            return Reply::text(StatusCode::CONFLICT, format!("`{name}` is both a site and a stream\n"));
        }
        (None, None) => return Reply::text(StatusCode::NOT_FOUND, format!("no site or stream `{name}`\n")),
    };
    let Some(member) = pool.members.iter().find(|m| *m.label == *upstream) else {
        let known: Vec<&str> = pool.members.iter().map(|m| &*m.label).collect();
        return Reply::text(
            StatusCode::NOT_FOUND,
            format!("`{name}` has no upstream `{upstream}`; it has {}\n", known.join(", ")),
        );
    };
    let (from, to) = match action {
        Action::Drain | Action::Undrain => {
            let on = matches!(action, Action::Drain);
            let was = member.state.drain.swap(on, Ordering::Relaxed);
            (drain_word(was), drain_word(on))
        }
        Action::Weight => {
            let want = match weight_param(c) {
                Ok(w) => w.unwrap_or(NO_OVERRIDE),
                Err(reply) => return reply,
            };
            let was = member.state.weight_override.swap(want, Ordering::Relaxed);
            (weight_word(member, was), weight_word(member, want))
        }
    };
    metrics::counter!(names::ADMIN_CONTROL, "action" => action.as_str()).increment(1);
    let answer = format!("{} {name} {upstream}: {from} -> {to}\n", pool.owner.label());
    crate::events::record(Event {
        at_ms: shared::admin::page::now_ms(),
        owner: pool.owner.label(),
        name: name.clone(),
        upstream: upstream.clone(),
        from,
        to,
        reason: format!("{} by {user} from {}", action.as_str(), c.peer),
    });
    Reply::text(StatusCode::OK, answer)
}

fn weight_word(m: &Member, w: u32) -> String {
    if w == NO_OVERRIDE {
        format!("weight {} (config)", m.weight)
    } else {
        format!("weight {w}")
    }
}
