//! The frame both binaries' status pages share: one HTML document (no other site's scripts,
//! styles or fonts) whose `<main id="live">` is rendered on the server, so the first paint
//! needs no JavaScript; a small script ([`SCRIPT`], served beside the page as `?part=js` so the
//! Content-Security-Policy can refuse every inline script) re-fetches that part
//! (`?part=live`, the same renderer) every second and swaps it in. Without JavaScript a
//! `<noscript>` refresh reloads the page every 5 s. Cards wrap, so it reads on a phone.
//! Plus the little formatters the pages use.

use std::fmt::Write as _;

use super::status::Header;

/// A binary's status page: what `live` writes (its live part), in the whole page titled with
/// the binary's name, or alone with `live_only` (the part the script swaps in each second).
pub fn render(header: &Header, live_only: bool, live: impl FnOnce(&mut String)) -> String {
    let mut out = String::with_capacity(16 * 1024);
    live(&mut out);
    if live_only {
        out
    } else {
        document(header.binary, &out)
    }
}

/// The line a live part opens with: `BINARY VERSION · up … · {middle} · runtime control
/// on|off · updated HH:MM:SS`. `attrs` (each ` name="value"`, escaped by the caller) go on
/// its `<p id="summary">` after `data-now-ms`; `middle` is HTML.
pub fn summary(out: &mut String, header: &Header, attrs: &str, middle: &str) {
    let _ = write!(
        out,
        "<p id=\"summary\" data-now-ms=\"{}\"{attrs}>{} {} · up {} · {middle} · runtime control {} · updated {}</p>",
        header.now_ms,
        header.binary,
        esc(header.version),
        ago(header.now_ms, header.started_ms),
        if header.control { "on" } else { "off" },
        clock(header.now_ms),
    );
}

/// The whole page around `live` (the binary's server-rendered live part).
pub fn document(title: &str, live: &str) -> String {
    let mut out = String::with_capacity(live.len() + HEAD.len() + TAIL.len() + 256);
    out.push_str(&HEAD.replace("{title}", &esc(title)));
    // Not a live region: the whole part is replaced every second, and a screen reader would
    // read it all out again each time. The header's `#conn` line is the live region instead.
    out.push_str("<main id=\"live\">");
    out.push_str(live);
    out.push_str("</main>");
    out.push_str(TAIL);
    out
}

const HEAD: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1">
<title>{title}</title>
<noscript><meta http-equiv="refresh" content="5"></noscript>
<style>
:root{--up:#1a7f37;--down:#cf222e;--drained:#9a6700;--mesh:#8250df;--fg:#1f2328;--mute:#656d76;--bg:#f6f8fa;--card:#fff;--line:#d0d7de}
@media (prefers-color-scheme:dark){:root{--fg:#e6edf3;--mute:#8d96a0;--bg:#0d1117;--card:#161b22;--line:#30363d;--up:#3fb950;--down:#f85149;--drained:#d29922;--mesh:#a371f7}}
*{box-sizing:border-box}body{margin:0;font:15px/1.4 system-ui,sans-serif;color:var(--fg);background:var(--bg)}
header{display:flex;flex-wrap:wrap;gap:.5em 1em;align-items:baseline;padding:.8em 1em;border-bottom:1px solid var(--line);background:var(--card)}
h1{font-size:1.2em;margin:0}h2{font-size:1.05em;margin:1.2em 0 .5em}.mute{color:var(--mute)}
main{padding:0 1em 2em;max-width:80em}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(17em,1fr));gap:.7em}
.card{background:var(--card);border:1px solid var(--line);border-left:6px solid var(--up);border-radius:6px;padding:.6em .8em;overflow-wrap:anywhere}
.card.down,.card.bad{border-left-color:var(--down)}.card.drained,.card.warn{border-left-color:var(--drained)}
.card h3{margin:0 0 .3em;font-size:1em;display:flex;justify-content:space-between;gap:.5em}
.badge{font-size:.8em;font-weight:600;padding:.05em .5em;border-radius:1em;color:#fff;background:var(--up);white-space:nowrap}
.down .badge,.bad .badge{background:var(--down)}.drained .badge,.warn .badge{background:var(--drained)}.tier-mesh{background:var(--mesh)}.tier-none{background:var(--down)}
dl{display:grid;grid-template-columns:auto 1fr;gap:.1em .8em;margin:0}dt{color:var(--mute)}dd{margin:0;font-variant-numeric:tabular-nums}
.bar{height:.4em;background:var(--line);border-radius:.2em;overflow:hidden}.bar i{display:block;height:100%;background:var(--up)}
table{border-collapse:collapse;width:100%;background:var(--card)}td,th{border-bottom:1px solid var(--line);padding:.3em .5em;text-align:left;vertical-align:top}
.scroll{overflow-x:auto}.stale header{background:var(--drained);color:#fff}
</style></head><body>
<header><h1>{title}</h1><span class="mute" id="conn" role="status" aria-live="polite">live: refreshes every second</span></header>
"#;

// A query on the page's own address, as `?part=live` is: the page still works behind a proxy
// that serves it under a prefix, with or without a trailing slash.
const TAIL: &str = "\n<script src=\"?part=js\"></script>\n</body></html>\n";

/// The page's script, served as `GET /?part=js`. One request at a time, each cut after 5 s,
/// the next one a second after the last began (or at once if it took longer): a slow server
/// gets no pile of requests, and a hung one no answer swapped in late. The page turns
/// `stale` once what it shows is more than 3 s old, whatever the reason (failing, hanging,
/// or held while the operator selects text), so old data never passes for live during the
/// outage being watched. An answer the server rendered before the one shown is dropped,
/// unless the page has gone stale anyway (then the server's clock stepped back, and its
/// newest answer is the best there is). Only the header's `#conn` line is a live region, and
/// it changes only when the state does, so a screen reader hears "not updating" and "live"
/// rather than the whole page every second. Tables keep their horizontal scroll.
pub const SCRIPT: &str = r#"(function () {
  "use strict";
  var PERIOD = 1000, TIMEOUT = 5000, STALE = 3000;
  var live = document.getElementById("live"), conn = document.getElementById("conn");
  if (!live || !conn) return;
  if (typeof fetch !== "function" || typeof AbortController !== "function") {
    // Too old a browser to poll safely: reload like the <noscript> fallback does.
    setTimeout(function () { location.reload(); }, 5000);
    return;
  }
  // Ages and the poll schedule on the monotonic clock: a wall clock stepped back (NTP, a VM
  // resumed) would hold the next poll back by the step and keep the page "live" meanwhile.
  function now() { return performance.now(); }
  var lastSwap = now(), shownAt = Date.now(), why = "";

  // When the server rendered the live part under root (its data-now-ms), or NaN.
  function renderedAt(root) {
    var el = root.querySelector("[data-now-ms]"), v = el && el.getAttribute("data-now-ms");
    return v ? Number(v) : NaN;
  }
  function utc(ms) {
    var d = new Date(ms);
    return isNaN(d.getTime()) ? "?" : d.toISOString().slice(11, 19) + " UTC";
  }
  // Text the operator is selecting in the live part: replacing it would drop the selection.
  function selecting() {
    var s = window.getSelection ? window.getSelection() : null;
    return !!s && !s.isCollapsed && (live.contains(s.anchorNode) || live.contains(s.focusNode));
  }
  // Sets the stale class and the #conn line from the age of the last swap; the line is only
  // written when its text changes, as each write is announced.
  function mark() {
    // The wall clock too: the monotonic one stops while the machine sleeps in some browsers,
    // and a laptop opened after an hour must not show that hour-old page as live.
    var stale = now() - lastSwap > STALE || Date.now() - shownAt > STALE + PERIOD;
    var text = "live: refreshes every second";
    if (stale) {
      var at = renderedAt(live);
      text = "not updating: showing " + utc(isNaN(at) ? shownAt : at) + " (" +
        (why || "waiting for an answer") + "); retrying";
    }
    document.body.classList.toggle("stale", stale);
    if (conn.textContent !== text) conn.textContent = text;
  }
  function swap(html) {
    var t = document.createElement("template");
    t.innerHTML = html;
    if (renderedAt(t.content) < renderedAt(live) && now() - lastSwap <= STALE) {
      why = "an older answer arrived";
      return;
    }
    if (selecting()) {
      why = "paused while text is selected";
      return;
    }
    var boxes = live.querySelectorAll(".scroll"), lefts = [], i;
    for (i = 0; i < boxes.length; i++) lefts.push(boxes[i].scrollLeft);
    live.textContent = "";
    live.appendChild(t.content);
    boxes = live.querySelectorAll(".scroll");
    for (i = 0; i < boxes.length && i < lefts.length; i++) {
      if (lefts[i]) boxes[i].scrollLeft = lefts[i];
    }
    lastSwap = now();
    shownAt = Date.now();
    why = "";
  }
  function poll() {
    var began = now(), ctl = new AbortController();
    var timer = setTimeout(function () { ctl.abort(); }, TIMEOUT);
    fetch("?part=live", { cache: "no-store", signal: ctl.signal }).then(function (r) {
      if (!r.ok) throw new Error("HTTP " + r.status);
      return r.text();
    }).then(swap).catch(function (e) {
      why = ctl.signal.aborted ? "no answer within " + TIMEOUT / 1000 + " s" : (e && e.message) || "request failed";
    }).then(function () {
      // Whatever happened: the next poll first, so nothing below can stop the polling.
      clearTimeout(timer);
      setTimeout(poll, Math.min(PERIOD, Math.max(0, began + PERIOD - now())));
      mark();
    });
  }
  // The age is checked on its own clock: a hung request must not hold back "stale".
  setInterval(mark, 500);
  setTimeout(poll, PERIOD);
})();
"#;

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

/// `YYYY-MM-DD HH:MM:SS` (UTC) of a Unix time in ms; `–` past the year 9999. Times come from
/// peers too (an ACME server's renewal window), and humantime cannot write such a year.
pub fn clock(ms: u64) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let written = std::time::UNIX_EPOCH
        .checked_add(std::time::Duration::from_millis(ms))
        .is_some_and(|t| write!(out, "{}", humantime::format_rfc3339_seconds(t)).is_ok());
    if !written {
        return "–".to_owned();
    }
    out.replace('T', " ").trim_end_matches('Z').to_owned()
}

/// How long ago `then` was (both Unix ms), coarsely: `3 s`, `4 min`, `2 h 5 min`, `3 d 4 h`.
pub fn ago(now: u64, then: u64) -> String {
    let s = now.saturating_sub(then) / 1000;
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min", s / 60),
        3600..86400 => format!("{} h {} min", s / 3600, s % 3600 / 60),
        _ => format!("{} d {} h", s / 86400, s % 86400 / 3600),
    }
}

/// A byte count in decimal units: `999 B`, `1.5 MB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut u = 0;
    // 999.95 and up would print as "1000.0" in this unit: the next one reads "1.0".
    while v >= 999.95 && u < UNITS.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_and_sizes_and_times_read_well() {
        assert_eq!(esc("<a href=\"x\">&'"), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
        assert_eq!(bytes(999), "999 B");
        assert_eq!(bytes(1_500_000), "1.5 MB");
        assert_eq!(bytes(999_949), "999.9 kB");
        assert_eq!(bytes(999_950), "1.0 MB");
        assert_eq!(ago(10_000, 4_000), "6 s");
        assert_eq!(ago(8_000_000, 0), "2 h 13 min");
        assert_eq!(clock(0), "1970-01-01 00:00:00");
        // 9999-12-31 23:59:59 UTC, then a second later, and the largest value.
        assert_eq!(clock(253_402_300_799_000), "9999-12-31 23:59:59");
        assert_eq!(clock(253_402_300_800_000), "–");
        assert_eq!(clock(u64::MAX), "–");
        let header = Header { schema: 1, binary: "b", version: "1<2", now_ms: 8_000, started_ms: 2_000, control: true };
        let mut line = String::new();
        summary(&mut line, &header, " data-x=\"1\"", "3 open");
        assert_eq!(
            line,
            "<p id=\"summary\" data-now-ms=\"8000\" data-x=\"1\">b 1&lt;2 · up 6 s · 3 open · runtime control on · updated 1970-01-01 00:00:08</p>"
        );
        assert_eq!(render(&header, true, |out| out.push_str("<p>x</p>")), "<p>x</p>");
        assert!(render(&header, false, |out| out.push_str("<p>x</p>")).starts_with("<!doctype html>"));
        let doc = document("a <b>", "<p>live</p>");
        assert!(
            doc.contains("<title>a &lt;b&gt;</title>")
                && doc.contains("<main id=\"live\"><p>live</p></main>")
                && doc.contains("id=\"conn\" role=\"status\" aria-live=\"polite\">")
        );
        // The Content-Security-Policy allows no inline script: the only one is `?part=js`.
        assert_eq!(doc.matches("<script").count(), 1);
        assert!(doc.contains("<script src=\"?part=js\"></script>") && SCRIPT.contains("?part=live"));
    }
}
