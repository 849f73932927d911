//! `GET /`: the local proxy's status page in the shared frame (`shared::admin::page`:
//! server-rendered first paint, the live part re-fetched every second, works without
//! JavaScript): health, each site's and stream's upstreams, certificates with days left,
//! ACME's account and certificates (next attempt, failures, the CA's last error), the
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
    let mut health = match &s.unhealthy {
        None => "healthy".to_owned(),
        Some(why) => format!("<strong>unhealthy</strong>: {}", esc(why)),
    };
    if let Some((tcp, udp)) = shared::workers::per_thread(&s.threads, " · ") {
        let _ = write!(health, " · connections per thread: {tcp}");
        if let Some(udp) = udp {
            let _ = write!(health, " · UDP sockets per thread: {udp}");
        }
    }
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
    acme(out, s);
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

/// ACME's account and certificates (what `/status` has under `acme`); nothing without
/// `[acme]`.
fn acme(out: &mut String, s: &Status) {
    let Some(acme) = &s.acme else {
        return;
    };
    let now = s.header.now_ms;
    out.push_str("<h2>ACME</h2>");
    if let Some(e) = &acme.account_error {
        let _ = write!(out, "<p id=\"acme-account\"><strong>account failing</strong>: {}</p>", esc(e));
    }
    if acme.certificates.is_empty() {
        out.push_str("<p class=\"mute\">no certificate to obtain</p>");
        return;
    }
    out.push_str(
        "<div class=\"scroll\"><table id=\"acme\"><tr><th>names</th><th>days left</th><th>next attempt (UTC)</th>\
         <th>failures</th><th>last error</th></tr>",
    );
    for c in &acme.certificates {
        let days = c.days_left.map_or_else(
            || "no certificate yet".to_owned(),
            |d| format!("{d:.1}{}", if d < CERT_WARN_DAYS { " ⚠" } else { "" }),
        );
        let next = c.next_attempt_ms.map_or_else(
            || "–".to_owned(),
            |t| if t > now { format!("{} (in {})", clock(t), ago(t, now)) } else { format!("{} (due)", clock(t)) },
        );
        let _ = write!(
            out,
            "<tr data-acme=\"{dir}\" data-failures=\"{failures}\"><td>{}</td><td>{days}</td><td>{next}</td><td>{failures}</td><td>{}</td></tr>",
            esc(&c.names.join(", ")),
            c.last_error.as_deref().map_or_else(|| "–".to_owned(), esc),
            dir = esc(&c.dir),
            failures = c.failures,
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

#[cfg(test)]
mod tests {
    use shared::admin::status::Header;

    use super::*;
    use crate::status::{AcmeCertStatus, AcmeStatus};

    fn status(acme: Option<AcmeStatus>) -> Status {
        let header = Header {
            schema: 1,
            binary: "local-proxy",
            version: "0",
            now_ms: 86_400_000,
            started_ms: 0,
            control: false,
        };
        Status {
            header,
            healthy: true,
            unhealthy: None,
            threads: vec![],
            sites: vec![],
            streams: vec![],
            certificates: vec![],
            acme,
            firewall: None,
            events: vec![],
        }
    }

    /// The ACME section shows what `/status` has under `acme`: the account's error, and per
    /// certificate its names, days left, next attempt, failures and the CA's last error.
    #[test]
    fn acme_section_shows_account_and_certificates() {
        let cert = |dir: &str, days_left, failures, last_error: Option<&str>| AcmeCertStatus {
            dir: dir.into(),
            names: vec![dir.into(), format!("www.{dir}")],
            not_after_ms: None,
            days_left,
            next_attempt_ms: Some(86_400_000 + 7_200_000),
            failures,
            last_error: last_error.map(Into::into),
            last_challenges: vec![],
        };
        let page = render(
            &status(Some(AcmeStatus {
                account_error: Some("directory <down>".into()),
                certificates: vec![
                    cert("good.test", Some(60.26), 0, None),
                    cert("blocked.test", None, 3, Some("urn:ietf:params:acme:error:rejectedIdentifier")),
                ],
            })),
            true,
        );
        assert!(page.contains("<h2>ACME</h2>"), "{page}");
        assert!(page.contains("<strong>account failing</strong>: directory &lt;down&gt;"), "{page}");
        assert!(
            page.contains(
                "<tr data-acme=\"good.test\" data-failures=\"0\"><td>good.test, www.good.test</td><td>60.3</td>\
                 <td>1970-01-02 02:00:00 (in 2 h 0 min)</td><td>0</td><td>–</td></tr>"
            ),
            "{page}"
        );
        assert!(
            page.contains(
                "<tr data-acme=\"blocked.test\" data-failures=\"3\"><td>blocked.test, www.blocked.test</td>\
                 <td>no certificate yet</td><td>1970-01-02 02:00:00 (in 2 h 0 min)</td><td>3</td>\
                 <td>urn:ietf:params:acme:error:rejectedIdentifier</td></tr>"
            ),
            "{page}"
        );
        // Without `[acme]`: no section.
        assert!(!render(&status(None), true).contains("ACME"));
    }
}
