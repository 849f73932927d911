//! `GET /`: the local proxy's status page in the shared frame (`shared::admin::page`:
//! server-rendered first paint, the live part re-fetched every second, works without
//! JavaScript): health, each site's and stream's upstreams, certificates with days left, the
//! firewall allowlist, the last operator changes.

use std::fmt::Write as _;

use shared::admin::page::{ago, clock, esc, summary};

use crate::status::{SetStatus, Status};

/// Certificates closer than this to their end are shown as a warning.
const CERT_WARN_DAYS: f64 = 14.0;

/// The whole page, or with `live_only` the part the script swaps in each second.
pub fn render(s: &Status, live_only: bool) -> String {
    shared::admin::page::render(&s.header, live_only, |out| live(out, s))
}

fn live(out: &mut String, s: &Status) {
    let health = match &s.unhealthy {
        None => "healthy".to_owned(),
        Some(why) => format!("<strong>unhealthy</strong>: {}", esc(why)),
    };
    summary(out, &s.header, &format!(" data-healthy=\"{}\"", s.healthy), &health);
    for (kind, sets) in [("Sites", &s.sites), ("Streams", &s.streams)] {
        if sets.is_empty() {
            continue;
        }
        let _ = write!(out, "<h2>{kind}</h2><div class=\"cards\">");
        for set in sets {
            set_card(out, set);
        }
        out.push_str("</div>");
    }
    certificates(out, s);
    firewall(out, s);
    events(out, s);
}

fn set_card(out: &mut String, set: &SetStatus) {
    let usable = set.upstreams.iter().filter(|u| u.state == "up").count();
    let class = match usable {
        0 => "bad",
        n if n < set.upstreams.len() => "warn",
        _ => "",
    };
    let what = match (&set.protocol, &set.listen_ports) {
        (Some(p), Some(ports)) => format!("{p} :{ports} · "),
        _ => String::new(),
    };
    // UDP streams: open flows against the cap (at the cap new clients take idle slots or drop).
    let flows = match (set.flows, set.max_flows) {
        (Some(n), Some(cap)) => format!("<span data-flows=\"{n}\">{n}/{cap} flows</span> · "),
        _ => String::new(),
    };
    let _ = write!(
        out,
        "<article class=\"card {class}\" data-set=\"{name}\"><h3><span>{name}</span><span class=\"badge\">{usable}/{total} usable</span></h3>\
         <div class=\"mute\">{what}{flows}{balance}{critical}</div><table>",
        name = esc(&set.name),
        total = set.upstreams.len(),
        balance = set.balance,
        critical = if set.critical { " · critical" } else { "" },
    );
    for u in &set.upstreams {
        let weight = match u.weight_override {
            Some(w) => format!("{w} (override; config {})", u.configured_weight),
            None => u.weight.to_string(),
        };
        let _ = write!(
            out,
            "<tr data-upstream=\"{up}\" data-state=\"{state}\"><td>{up}{backup}</td><td>{state}</td><td>weight {weight}</td><td>{active} open</td></tr>",
            up = esc(&u.upstream),
            backup = if u.backup { " <span class=\"mute\">(backup)</span>" } else { "" },
            state = u.state,
            active = u.active,
        );
    }
    out.push_str("</table></article>");
}

fn certificates(out: &mut String, s: &Status) {
    out.push_str("<h2>Certificates</h2>");
    if s.certificates.is_empty() {
        out.push_str("<p class=\"mute\">none loaded</p>");
        return;
    }
    out.push_str(
        "<div class=\"scroll\"><table id=\"certificates\"><tr><th>names</th><th>days left</th><th>ends (UTC)</th></tr>",
    );
    for c in &s.certificates {
        let _ = write!(
            out,
            "<tr data-days-left=\"{days}\"><td>{}</td><td>{days:.1}{warn}</td><td>{}</td></tr>",
            esc(&c.names.join(", ")),
            clock(c.not_after_ms),
            days = c.days_left,
            warn = if c.days_left < CERT_WARN_DAYS { " ⚠" } else { "" },
        );
    }
    out.push_str("</table></div>");
}

fn firewall(out: &mut String, s: &Status) {
    let Some(fw) = &s.firewall else {
        return;
    };
    let _ = write!(
        out,
        "<h2>Firewall <span class=\"mute\">table inet {} · {} · {} addresses allowed</span></h2>\
         <div class=\"scroll\"><table id=\"firewall\"><tr><th>ingress name</th><th>addresses</th><th>last answer</th><th>failed lookups</th></tr>",
        esc(&fw.table),
        if fw.enforcing { "enforcing" } else { "OPEN (not filtering)" },
        fw.allowed,
    );
    for n in &fw.names {
        let addrs: Vec<String> = n.addresses.iter().map(|a| a.to_string()).collect();
        let last = n.last_answer_ms.map_or_else(|| "never".to_owned(), |t| format!("{} ago", ago(s.header.now_ms, t)));
        let err =
            n.last_error.as_deref().map(|e| format!(" <span class=\"mute\">({})</span>", esc(e))).unwrap_or_default();
        let _ = write!(
            out,
            "<tr data-name=\"{name}\"><td>{name}</td><td>{}</td><td>{last}</td><td>{}{err}</td></tr>",
            esc(&addrs.join(", ")),
            n.failures,
            name = esc(&n.name),
        );
    }
    if !fw.static_addresses.is_empty() {
        let _ = write!(
            out,
            "<tr><td>static</td><td>{}</td><td>–</td><td>–</td></tr>",
            esc(&fw.static_addresses.join(", "))
        );
    }
    out.push_str("</table></div>");
}

fn events(out: &mut String, s: &Status) {
    out.push_str("<h2>Last changes</h2>");
    if s.events.is_empty() {
        out.push_str("<p class=\"mute\">none since start</p>");
        return;
    }
    out.push_str("<div class=\"scroll\"><table id=\"events\"><tr><th>time (UTC)</th><th>what</th><th>change</th><th>why</th></tr>");
    for e in &s.events {
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{} {} {}</td><td>{} → {}</td><td>{}</td></tr>",
            clock(e.at_ms),
            e.owner,
            esc(&e.name),
            esc(&e.upstream),
            esc(&e.from),
            esc(&e.to),
            esc(&e.reason),
        );
    }
    out.push_str("</table></div>");
}
