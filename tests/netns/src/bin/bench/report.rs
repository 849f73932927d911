//! The bench report: a markdown table (one row per workload, one column per candidate, the
//! median of the runs with their spread and each candidate's ratio to HAProxy and to
//! `direct`), failover figures per cut variant, and the raw figures as JSON for the plot.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use anyhow::Result;
use netns::topology::Topology;

use crate::candidates::Candidate;
use crate::workloads::{self, median, Failover, Figures};

/// `YYYY-MM-DD-<host>`, the file name stem under bench/results/.
pub fn stem() -> String {
    let date = std::process::Command::new("date")
        .arg("+%F")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default().trim().to_string();
    format!("{date}-{}", if host.is_empty() { "host" } else { &host })
}

pub fn versions(_t: &Topology) -> BTreeMap<String, String> {
    let run = |argv: &[&str]| {
        std::process::Command::new(argv[0])
            .args(&argv[1..])
            .output()
            .ok()
            .map(|o| {
                let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
                text.lines().next().unwrap_or("").trim().to_string()
            })
            .unwrap_or_else(|| "not found".into())
    };
    let mut v = BTreeMap::new();
    v.insert("kernel".into(), run(&["uname", "-sr"]));
    v.insert("cpus".into(), run(&["nproc"]));
    v.insert("cpu".into(), {
        let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        info.lines().find(|l| l.starts_with("model name")).and_then(|l| l.split(':').nth(1)).unwrap_or("").trim().into()
    });
    v.insert("haproxy".into(), run(&["haproxy", "-v"]));
    v.insert("nginx".into(), run(&["nginx", "-v"]));
    v.insert("iperf3".into(), run(&["iperf3", "--version"]));
    v.insert("wrk".into(), run(&["wrk", "--version"]));
    v.insert("ingress".into(), env!("CARGO_PKG_VERSION").into());
    v
}

/// Reads one figure of a failover run.
type Getter = fn(&Failover) -> Option<f64>;

const ROWS: &[(&str, &str, bool)] = &[
    ("tcp1_gbps", "TCP bulk, 1 stream (Gbit/s)", true),
    ("tcp4_gbps", "TCP bulk, 4 streams (Gbit/s)", true),
    ("http_ka_rps", "HTTP keep-alive (req/s)", true),
    ("http_ka_p50_ms", "HTTP keep-alive p50 (ms)", false),
    ("http_ka_p99_ms", "HTTP keep-alive p99 (ms)", false),
    ("http_new_rps", "HTTP new connection per request (req/s)", true),
    ("http_new_p50_ms", "HTTP new connection p50 (ms)", false),
    ("http_new_p99_ms", "HTTP new connection p99 (ms)", false),
    ("http_ka_errors", "HTTP keep-alive socket errors / non-2xx", false),
    ("http_new_errors", "HTTP new-connection socket errors / non-2xx", false),
    ("udp_mbps", "UDP 1200 B at 1 Gbit/s offered: delivered (Mbit/s)", true),
    ("udp_loss_pct", "UDP loss (%)", false),
    ("udp_proxy_drop_pct", "… dropped in ingress1's kernel: the proxy's sockets full (%)", false),
    ("udp_receiver_drop_pct", "… dropped at the receiver's socket (home's iperf3, %)", false),
    ("udp_w4m_loss_pct", "UDP loss, 4 MB socket buffers at both ends (%)", false),
    ("udp_w4m_proxy_drop_pct", "… dropped in ingress1's kernel (%)", false),
    ("udp_rev_mbps", "UDP home → client (the reply path), 1 Gbit/s offered: delivered (Mbit/s)", true),
    ("udp_rev_loss_pct", "… loss (%)", false),
    ("udp_rev_proxy_drop_pct", "… dropped in ingress1's kernel (%)", false),
    ("udp_rev_receiver_drop_pct", "… dropped at the receiver's socket (the client's iperf3, %)", false),
    ("udp_rev_w4m_loss_pct", "… loss, 4 MB socket buffers at both ends (%)", false),
    ("udp_rev_w4m_proxy_drop_pct", "… dropped in ingress1's kernel (%)", false),
    ("udp_lp_loss_pct", "UDP through the ingress and home's local proxy, 1 Gbit/s: loss (%)", false),
    ("udp_lp_proxy_drop_pct", "… dropped in ingress1's kernel (%)", false),
    ("udp_lp_home_drop_pct", "… dropped in home's kernel: the local proxy's sockets and iperf3's (%)", false),
    ("udp_lp_w4m_loss_pct", "… loss, 4 MB socket buffers at both ends (%)", false),
    ("udp_lp_w4m_proxy_drop_pct", "… dropped in ingress1's kernel (%)", false),
    ("udp_lp_w4m_home_drop_pct", "… dropped in home's kernel (%)", false),
    ("udp_lp_rev_loss_pct", "UDP home → client through the local proxy and the ingress: loss (%)", false),
    ("udp_lp_rev_proxy_drop_pct", "… dropped in ingress1's kernel (%)", false),
    ("udp_lp_rev_home_drop_pct", "… dropped in home's kernel: the local proxy's sockets (%)", false),
    ("udp_lp_rev_w4m_loss_pct", "… loss, 4 MB socket buffers at both ends (%)", false),
    ("udp_lp_rev_w4m_proxy_drop_pct", "… dropped in ingress1's kernel (%)", false),
    ("udp_lp_rev_w4m_home_drop_pct", "… dropped in home's kernel (%)", false),
    ("peak_rss_mb", "peak RSS of the proxy (MB; VmHWM summed over its processes: nginx's master and workers)", false),
    ("idle_1k_kb_per_conn", "memory per idle connection, 1,000 open (kB of Pss per connection held)", false),
    ("idle_1k_held", "… connections the proxy held", false),
    ("idle_1k_opened", "… connections the client opened", false),
    ("idle_9k_kb_per_conn", "memory per idle connection, 9,000 open (kB of Pss per connection held)", false),
    ("idle_9k_held", "… connections the proxy held", false),
    ("idle_9k_opened", "… connections the client opened", false),
];

fn cell(figs: &BTreeMap<Candidate, Figures>, c: Candidate, key: &str) -> String {
    let Some((med, lo, hi)) = figs.get(&c).and_then(|f| f.get(key)).and_then(|v| median(v)) else {
        return "n/a".into();
    };
    let mut s = fmt(med);
    if hi > lo {
        let _ = write!(s, " [{}–{}]", fmt(lo), fmt(hi));
    }
    for (other, tag) in [(Candidate::Haproxy, "H"), (Candidate::Direct, "D")] {
        if other == c {
            continue;
        }
        if let Some((base, _, _)) = figs.get(&other).and_then(|f| f.get(key)).and_then(|v| median(v)) {
            if base > 0.0 {
                let _ = write!(s, " · {:.2}×{tag}", med / base);
            }
        }
    }
    s
}

fn fmt(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

pub fn markdown(
    figs: &BTreeMap<Candidate, Figures>,
    failovers: &BTreeMap<(Candidate, &'static str), Vec<Failover>>,
    runs: usize,
    versions: &BTreeMap<String, String>,
) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Benchmark: ingress vs HAProxy vs nginx stream vs direct\n");
    let _ = writeln!(
        s,
        "Network-namespace topology (client → ingress1 → home over wan1 (weight 3) / wan2 (weight 1), yggdrasil \
         mesh as the fallback tier), every candidate in turn in `ingress1`; `direct` is the client talking to home's \
         wan1 address with no proxy (the physical limit here). Median of {runs} run(s) (of an even count, the mean of \
         the middle two), [min–max] spread; ×H and ×D are ratios to HAProxy's and direct's medians. Workloads last \
         {} s each.\n",
        workloads::SECS
    );
    let _ = writeln!(s, "| workload | {} |", Candidate::ALL.map(|c| c.name()).join(" | "));
    let _ = writeln!(s, "|---|{}", "---|".repeat(Candidate::ALL.len()));
    for (key, label, _) in ROWS {
        let cells: Vec<String> = Candidate::ALL.iter().map(|&c| cell(figs, c, key)).collect();
        let _ = writeln!(s, "| {label} | {} |", cells.join(" | "));
    }
    let _ = writeln!(
        s,
        "\n## Failover\n\n400 new connections/s to the echo service through ingress1; wan1 cut at {} s, wan2 at {} s, \
         both restored at {} s. Slow = succeeded but took over 200 ms. Times from the fault's injection; medians.\n",
        workloads::CUT1_AT / 1000,
        workloads::CUT2_AT / 1000,
        workloads::RESTORE_AT / 1000
    );
    let proxies: Vec<Candidate> = Candidate::ALL.into_iter().filter(|c| c.is_proxy()).collect();
    for variant in ["link", "blackhole"] {
        let _ = writeln!(s, "### cut by {}\n", if variant == "link" { "link down" } else { "silent blackhole" });
        let _ = writeln!(s, "| figure | {} |", proxies.iter().map(|c| c.name()).collect::<Vec<_>>().join(" | "));
        let _ = writeln!(s, "|---|{}", "---|".repeat(proxies.len()));
        let rows: [(&str, Getter); 11] = [
            ("failed requests (all phases)", |f| Some(f.failed as f64)),
            ("… of which failed connects (the rest broke in flight)", |f| Some(f.failed_connects as f64)),
            ("dead path hurt clients for: wan1 cut → last slow/failed request (ms)", |f| {
                Some(f.hurt_after_wan1_ms as f64)
            }),
            ("… wan2 cut → last slow/failed request (ms)", |f| Some(f.hurt_after_wan2_ms as f64)),
            ("slow requests (>200 ms)", |f| Some(f.slow as f64)),
            ("slow after wan1 cut", |f| Some(f.slow_per_phase[1] as f64)),
            ("slow after wan2 cut", |f| Some(f.slow_per_phase[2] as f64)),
            ("detection: wan1 cut → last request on wan1 (ms)", |f| f.detect_wan1_ms.map(|v| v as f64)),
            ("wan2 cut → all traffic on the mesh (ms)", |f| f.all_on_mesh_ms.map(|v| v as f64)),
            ("restore → both WANs serving again (ms)", |f| f.restore_ms.map(|v| v as f64)),
            ("requests", |f| Some(f.requests as f64)),
        ];
        for (label, get) in rows {
            let cells: Vec<String> = proxies
                .iter()
                .map(|&c| {
                    let v: Vec<f64> =
                        failovers.get(&(c, variant)).map(|fs| fs.iter().filter_map(get).collect()).unwrap_or_default();
                    match median(&v) {
                        Some((m, lo, hi)) if hi > lo => format!("{} [{}–{}]", fmt(m), fmt(lo), fmt(hi)),
                        Some((m, _, _)) => fmt(m),
                        None => "n/a".into(),
                    }
                })
                .collect();
            let _ = writeln!(s, "| {label} | {} |", cells.join(" | "));
        }
        s.push('\n');
    }
    let _ = writeln!(s, "## Machine and versions\n");
    for (k, v) in versions {
        let _ = writeln!(s, "- {k}: {v}");
    }
    s
}

pub fn json(
    figs: &BTreeMap<Candidate, Figures>,
    failovers: &BTreeMap<(Candidate, &'static str), Vec<Failover>>,
    versions: &BTreeMap<String, String>,
) -> Result<String> {
    let figs: BTreeMap<&str, &Figures> = figs.iter().map(|(c, f)| (c.name(), f)).collect();
    let fo: BTreeMap<String, &Vec<Failover>> =
        failovers.iter().map(|((c, v), f)| (format!("{}/{v}", c.name()), f)).collect();
    Ok(serde_json::to_string_pretty(&serde_json::json!({ "figures": figs, "failover": fo, "versions": versions }))?)
}
