//! The admin listener (the shared hyper server, `shared::admin`): `GET /metrics`
//! (Prometheus text), `GET /healthz`, `GET /status` (JSON, see `status`), `GET /` (the
//! status page, see `page`) and runtime control (`POST /api/drain`, `/api/undrain`,
//! `/api/weight`), which needs the bearer token of `admin.token_file`: without one
//! configured the control endpoints are off (403); a missing or wrong token is refused
//! (401), counted and logged.

use std::sync::Arc;

use http::StatusCode;
use metrics::counter;
use shared::admin::control::{authorize, drain_word, weight_param, Action};
use shared::admin::{Call, Reply, Routes};
use tokio::net::TcpListener;

use crate::control::Event;
use crate::metrics as m;
use crate::pool::Path;
use crate::runtime::Shared;

/// Serve until the task is aborted (a reload that moves the listener, or shutdown), which
/// asks its open connections to end too.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let (status, metrics, hosts) = (shared.clone(), shared.clone(), shared.clone());
    let routes = Routes::new()
        .get("/metrics", move || Reply::metrics(crate::metrics::render_running(&metrics.runtime())))
        .get("/healthz", || Reply::text(StatusCode::OK, "ok\n"))
        .status(move || crate::status::collect(&status), crate::page::render)
        .control(move |c, action| control(&shared, c, action))
        .allowed_hosts(move || hosts.runtime().config.admin_hosts.clone())
        .on_refused(|| counter!(m::ADMIN_REFUSED).increment(1));
    shared::admin::serve(listener, routes, std::future::pending()).await;
}

/// One control request: authenticate, find the path, apply, record who did what.
fn control(shared: &Shared, c: &Call<'_>, action: Action) -> Reply {
    let rt = shared.runtime();
    let count = |reason: &'static str| counter!(m::ADMIN_UNAUTHORIZED, "reason" => reason).increment(1);
    let user = match authorize(rt.config.admin_token.as_ref(), c, action, count) {
        Ok(user) => user,
        Err(reply) => return reply,
    };
    let wanted = match c.param("path") {
        Ok(Some(wanted)) => wanted,
        Ok(None) => return Reply::text(StatusCode::BAD_REQUEST, "missing path=[POOL/]NAME\n"),
        Err(bad) => return bad,
    };
    let (pool, path) = match find(&rt.pools, &wanted) {
        Ok(found) => found,
        Err(reply) => return reply,
    };
    let who = format!("{user} from {}", c.peer);
    let (from, to) = match action {
        Action::Drain | Action::Undrain => {
            let on = matches!(action, Action::Drain);
            let was = path.control.set_drained(on);
            // Drained paths serve nothing: the last WAN drained puts the pool on the mesh
            // tier, one undrained takes it off (its gauge, event and status with it).
            pool.refresh_tier();
            (drain_word(was), drain_word(on))
        }
        Action::Weight if path.is_mesh => {
            // The mesh tier is not balanced against the WANs (it serves when none is up):
            // a weight would be shown and change nothing.
            return Reply::text(
                StatusCode::CONFLICT,
                format!("{}/{} is the mesh tier, which has no weight (drain it instead)\n", path.pool, path.name),
            );
        }
        Action::Weight => {
            let want = match weight_param(c) {
                Ok(w) => w,
                Err(reply) => return reply,
            };
            let was = path.control.set_weight(want);
            let show = |o: Option<u32>| {
                o.map_or_else(|| format!("weight {} (config)", path.weight), |w| format!("weight {w}"))
            };
            (show(was), show(want))
        }
    };
    counter!(m::ADMIN_CONTROL, "action" => action.as_str()).increment(1);
    let answer = format!("{}/{}: {from} -> {to}\n", path.pool, path.name);
    crate::control::record(Event::new(&path.pool, &path.name, from, to, format!("{} by {who}", action.as_str())));
    Reply::text(StatusCode::OK, answer)
}

/// The path `POOL/NAME`, or `NAME` when exactly one pool has a path of that name.
fn find<'a>(
    pools: &'a std::collections::BTreeMap<String, Arc<crate::pool::Pool>>,
    wanted: &str,
) -> Result<(&'a Arc<crate::pool::Pool>, &'a Arc<Path>), Reply> {
    let (pool, name) = match wanted.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, wanted),
    };
    let found: Vec<(&Arc<crate::pool::Pool>, &Arc<Path>)> = pools
        .values()
        .filter(|p| pool.is_none_or(|want| *p.name == *want))
        .flat_map(|p| p.paths.iter().filter(|path| *path.name == *name).map(move |path| (p, path)))
        .collect();
    match found.as_slice() {
        [one] => Ok(*one),
        [] => Err(Reply::text(StatusCode::NOT_FOUND, format!("no path `{wanted}`\n"))),
        many => {
            let names: Vec<String> = many.iter().map(|(_, p)| format!("{}/{}", p.pool, p.name)).collect();
            Err(Reply::text(
                StatusCode::CONFLICT,
                format!("`{wanted}` is ambiguous: say one of {}\n", names.join(", ")),
            ))
        }
    }
}
