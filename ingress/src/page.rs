//! `GET /`: the ingress's status page in the shared frame (`shared::admin::page`: server-
//! rendered first paint, the live part re-fetched every second, works without JavaScript):
//! per pool its tier and a card per path, the services, the last state changes. The same
//! renderer answers `?part=live`, so there is no second renderer in JavaScript.

use std::fmt::Write as _;

use shared::admin::page::{ago, bytes, clock, esc, summary};

use crate::control::Event;
use crate::status::{PathStatus, PoolStatus, Status};

/// The whole page, or with `live_only` the part the script swaps in each second.
pub fn render(s: &Status, live_only: bool) -> String {
    shared::admin::page::render(&s.header, live_only, |out| live(out, s))
}

fn live(out: &mut String, s: &Status) {
    let mut open = format!("{} open connection{}", s.open_connections, if s.open_connections == 1 { "" } else { "s" });
    if let Some((tcp, udp)) = shared::workers::per_thread(&s.threads, " · ") {
        let udp = udp.map(|u| format!("; UDP sockets per thread: {u}")).unwrap_or_default();
        let _ = write!(open, " (TCP per thread: {tcp}{udp})");
    }
    summary(out, &s.header, "", &open);
    for pool in &s.pools {
        pool_section(out, s.header.now_ms, pool);
    }
    out.push_str("<h2>Services</h2><div class=\"scroll\"><table><tr><th>service</th><th>listen</th><th>pool</th><th>flows</th></tr>");
    for svc in &s.services {
        let _ = write!(
            out,
            "<tr><td>{} <span class=\"mute\">{} {}</span></td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&svc.name),
            svc.protocol,
            svc.mode,
            esc(&svc.listen.join(", ")),
            esc(&svc.pool),
            svc.flows.map_or_else(|| "–".into(), |f| f.to_string()),
        );
    }
    out.push_str("</table></div>");
    events(out, &s.events);
}

fn pool_section(out: &mut String, now: u64, pool: &PoolStatus) {
    let _ = write!(
        out,
        "<section class=\"pool\" data-pool=\"{name}\"><h2>Pool {name} <span class=\"badge tier-{tier}\" data-tier=\"{tier}\">on {tier}</span> <span class=\"mute\">{}</span></h2><div class=\"cards\">",
        pool.balance,
        name = esc(&pool.name),
        tier = pool.tier,
    );
    for p in &pool.paths {
        path_card(out, now, &pool.name, p);
    }
    out.push_str("</div></section>");
}

fn path_card(out: &mut String, now: u64, pool: &str, p: &PathStatus) {
    let since = p.since_ms.map_or_else(|| "since start".to_owned(), |t| format!("for {}", ago(now, t)));
    let weight = match p.weight_override {
        Some(w) => format!("{w} <span class=\"mute\">(override; config {})</span>", p.configured_weight),
        None => p.weight.to_string(),
    };
    let latency = p.latency_ms.map_or_else(|| "–".to_owned(), |l| format!("{l:.1} ms"));
    let _ = write!(
        out,
        "<article class=\"card path {state}{warn}\" data-pool=\"{pool}\" data-path=\"{name}\" data-state=\"{state}\">\
         <h3><span>{name}{mesh}</span><span class=\"badge\">{state}</span></h3>\
         <div class=\"mute\">{addr} · {since}</div>{held}\
         <dl><dt>share</dt><dd>{recent:.0}% now · {minute:.0}% last min<div class=\"bar\"><i style=\"width:{minute:.0}%\"></i></div></dd>\
         <dt>weight</dt><dd>{weight} × health {factor:.2}</dd>\
         <dt>connect</dt><dd>{latency} · fail avg {fail:.2}</dd>\
         <dt>quality</dt><dd>{loss:.1}% went wrong · share × {qf:.2}</dd>\
         <dt>open</dt><dd>{conns} conn · {flows} flows</dd>\
         <dt>traffic</dt><dd>{rate}/s · {total} total</dd></dl></article>",
        state = p.state,
        // Held for flapping: shown like a warning, with the reason.
        warn = if p.held { " warn" } else { "" },
        held = p.held_reason.as_deref().map_or_else(String::new, |r| format!("<div class=\"mute\">{}</div>", esc(r))),
        pool = esc(pool),
        name = esc(&p.name),
        mesh = if p.mesh { " <span class=\"mute\">(mesh tier)</span>" } else { "" },
        addr = match (p.address.is_empty(), p.target == p.address) {
            (true, _) => format!("{} (no address)", esc(&p.target)),
            (false, true) => esc(&p.address),
            (false, false) => format!("{} → {}", esc(&p.target), esc(&p.address)),
        },
        recent = p.share_recent * 100.0,
        minute = p.share_minute * 100.0,
        factor = p.health_factor,
        fail = p.fail_avg,
        loss = p.quality_loss * 100.0,
        qf = p.quality_factor,
        conns = p.connections,
        flows = p.flows,
        rate = bytes(p.bytes_per_second),
        total = bytes(p.bytes_total),
    );
}

fn events(out: &mut String, events: &[Event]) {
    out.push_str("<h2>Last changes</h2>");
    if events.is_empty() {
        out.push_str("<p class=\"mute\">none since start</p>");
        return;
    }
    out.push_str("<div class=\"scroll\"><table id=\"events\"><tr><th>time (UTC)</th><th>what</th><th>change</th><th>why</th></tr>");
    for e in events {
        let what = if e.path.is_empty() { esc(&e.pool) } else { format!("{}/{}", esc(&e.pool), esc(&e.path)) };
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{what}</td><td>{} → {}</td><td>{}</td></tr>",
            clock(e.at_ms),
            esc(&e.from),
            esc(&e.to),
            esc(&e.reason),
        );
    }
    out.push_str("</table></div>");
}
