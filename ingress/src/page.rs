//! `GET /`: the status page. One self-contained HTML document (no external scripts, styles
//! or fonts), rendered on the server so the first paint needs no JavaScript; a small script
//! then fetches the live part (`/?part=live`, the same renderer) every second and swaps it
//! in, so there is one renderer, not a second one in JavaScript. Without JavaScript a
//! `<noscript>` refresh reloads the page every 5 s. Cards wrap, so it reads on a phone.

use std::fmt::Write as _;

use crate::control::Event;
use crate::status::{PathStatus, PoolStatus, Status};

/// The whole page, or with `live_only` the part the script swaps in each second.
pub fn render(s: &Status, live_only: bool) -> String {
    let mut out = String::with_capacity(16 * 1024);
    if live_only {
        live(&mut out, s);
        return out;
    }
    out.push_str(HEAD);
    out.push_str("<main id=\"live\" aria-live=\"polite\">");
    live(&mut out, s);
    out.push_str("</main>");
    out.push_str(TAIL);
    out
}

const HEAD: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1">
<title>ingress status</title>
<noscript><meta http-equiv="refresh" content="5"></noscript>
<style>
:root{--up:#1a7f37;--down:#cf222e;--drained:#9a6700;--mesh:#8250df;--fg:#1f2328;--mute:#656d76;--bg:#f6f8fa;--card:#fff;--line:#d0d7de}
@media (prefers-color-scheme:dark){:root{--fg:#e6edf3;--mute:#8d96a0;--bg:#0d1117;--card:#161b22;--line:#30363d;--up:#3fb950;--down:#f85149;--drained:#d29922;--mesh:#a371f7}}
*{box-sizing:border-box}body{margin:0;font:15px/1.4 system-ui,sans-serif;color:var(--fg);background:var(--bg)}
header{display:flex;flex-wrap:wrap;gap:.5em 1em;align-items:baseline;padding:.8em 1em;border-bottom:1px solid var(--line);background:var(--card)}
h1{font-size:1.2em;margin:0}h2{font-size:1.05em;margin:1.2em 0 .5em}.mute{color:var(--mute)}
main{padding:0 1em 2em;max-width:80em}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(17em,1fr));gap:.7em}
.path{background:var(--card);border:1px solid var(--line);border-left:6px solid var(--up);border-radius:6px;padding:.6em .8em}
.path.down{border-left-color:var(--down)}.path.drained{border-left-color:var(--drained)}
.path h3{margin:0 0 .3em;font-size:1em;display:flex;justify-content:space-between;gap:.5em}
.badge{font-size:.8em;font-weight:600;padding:.05em .5em;border-radius:1em;color:#fff;background:var(--up)}
.down .badge{background:var(--down)}.drained .badge{background:var(--drained)}.tier-mesh{background:var(--mesh)}
dl{display:grid;grid-template-columns:auto 1fr;gap:.1em .8em;margin:0}dt{color:var(--mute)}dd{margin:0;font-variant-numeric:tabular-nums}
.bar{height:.4em;background:var(--line);border-radius:.2em;overflow:hidden}.bar i{display:block;height:100%;background:var(--up)}
table{border-collapse:collapse;width:100%;background:var(--card)}td,th{border-bottom:1px solid var(--line);padding:.3em .5em;text-align:left;vertical-align:top}
.scroll{overflow-x:auto}.stale header{background:var(--drained);color:#fff}
</style></head><body>
<header><h1>ingress</h1><span class="mute" id="conn">live: refreshes every second</span></header>
"#;

const TAIL: &str = r#"
<script>
(function () {
  var live = document.getElementById("live"), conn = document.getElementById("conn");
  function tick() {
    fetch("?part=live", { cache: "no-store" }).then(function (r) {
      if (!r.ok) throw new Error("HTTP " + r.status);
      return r.text();
    }).then(function (html) {
      live.innerHTML = html;
      document.body.classList.remove("stale");
      conn.textContent = "live: refreshes every second";
    }).catch(function (e) {
      document.body.classList.add("stale");
      conn.textContent = "not updating (" + e.message + "); retrying";
    });
  }
  setInterval(tick, 1000);
})();
</script>
</body></html>
"#;

fn live(out: &mut String, s: &Status) {
    let _ = write!(
        out,
        "<p id=\"summary\" data-now-ms=\"{}\">{} {} · up {} · {} open connection{} · runtime control {} · updated {}</p>",
        s.now_ms,
        s.binary,
        esc(s.version),
        ago(s.now_ms, s.started_ms),
        s.open_connections,
        if s.open_connections == 1 { "" } else { "s" },
        if s.control { "on" } else { "off" },
        clock(s.now_ms),
    );
    for pool in &s.pools {
        pool_section(out, s.now_ms, pool);
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
        "<article class=\"path {state}\" data-pool=\"{pool}\" data-path=\"{name}\" data-state=\"{state}\">\
         <h3><span>{name}{mesh}</span><span class=\"badge\">{state}</span></h3>\
         <div class=\"mute\">{addr} · {since}</div>\
         <dl><dt>share</dt><dd>{recent:.0}% now · {minute:.0}% last min<div class=\"bar\"><i style=\"width:{minute:.0}%\"></i></div></dd>\
         <dt>weight</dt><dd>{weight} × health {factor:.2}</dd>\
         <dt>connect</dt><dd>{latency} · fail avg {fail:.2}</dd>\
         <dt>open</dt><dd>{conns} conn · {flows} flows</dd>\
         <dt>traffic</dt><dd>{rate}/s · {total} total</dd></dl></article>",
        state = p.state,
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

/// HTML-escapes text for element content and quoted attributes.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `YYYY-MM-DD HH:MM:SS` (UTC) of a Unix time in ms.
fn clock(ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_seconds(t).to_string().replace('T', " ").trim_end_matches('Z').to_owned()
}

/// How long ago `then` was, coarsely (`3 s`, `4 min`, `2 h 5 min`, `3 d 4 h`).
fn ago(now: u64, then: u64) -> String {
    let s = now.saturating_sub(then) / 1000;
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min", s / 60),
        3600..86400 => format!("{} h {} min", s / 3600, s % 3600 / 60),
        _ => format!("{} d {} h", s / 86400, s % 86400 / 3600),
    }
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u < UNITS.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_and_sizes_read_well() {
        assert_eq!(esc("<a href=\"x\">&'"), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
        assert_eq!(bytes(999), "999 B");
        assert_eq!(bytes(1_500_000), "1.5 MB");
        assert_eq!(ago(10_000, 4_000), "6 s");
        assert_eq!(ago(8_000_000, 0), "2 h 13 min");
        assert_eq!(clock(0), "1970-01-01 00:00:00");
    }
}
