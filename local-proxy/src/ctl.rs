//! `local-proxy ctl …`: the operator's (and Ansible's) side of the admin API. Reads where
//! the admin listener is and the token from the same config the service runs with, calls the
//! API, prints the answer; exit status 0 on success, 1 otherwise (the server's reason on
//! stderr).

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;

use shared::admin::client::{self, Call};
use shared::workers::LoopStatus;

use crate::Ctl;

pub fn run(path: &Path, admin: Option<SocketAddr>, what: Ctl) -> ExitCode {
    let call = match &what {
        Ctl::Status(args) => Call::status(args, summary),
        Ctl::Drain { name, upstream } => {
            Call::control("drain", &[("name", name.as_str()), ("upstream", upstream.as_str())])
        }
        Ctl::Undrain { name, upstream } => {
            Call::control("undrain", &[("name", name.as_str()), ("upstream", upstream.as_str())])
        }
        Ctl::Weight { name, upstream, weight } => Call::control(
            "weight",
            &[("name", name.as_str()), ("upstream", upstream.as_str()), ("weight", weight.as_str())],
        ),
    };
    client::run_with_config(path, local_proxy::config::ENV_PREFIX, admin, call)
}

/// A few lines per site, stream, certificate and firewall name from the `/status` JSON; the
/// raw JSON if it does not parse.
fn summary(body: &str) -> String {
    use std::fmt::Write as _;
    let Ok(v) = serde_json::from_str::<serde_json::Value>(body) else {
        return body.to_owned();
    };
    let text = |x: &serde_json::Value| x.as_str().unwrap_or("?").to_owned();
    let mut out = String::new();
    let mut health =
        if v["healthy"] == true { "healthy".to_owned() } else { format!("UNHEALTHY: {}", text(&v["unhealthy"])) };
    let threads: Vec<LoopStatus> = serde_json::from_value(v["threads"].clone()).unwrap_or_default();
    if let Some((tcp, udp)) = shared::workers::per_thread(&threads, " ") {
        let udp = udp.map(|u| format!("; UDP sockets per thread: {u}")).unwrap_or_default();
        let _ = write!(health, " (connections per thread: {tcp}{udp})");
    }
    let _ = writeln!(out, "{health}");
    for (kind, key) in [("site", "sites"), ("stream", "streams")] {
        for set in v[key].as_array().into_iter().flatten() {
            // UDP streams: open flows against the cap.
            let flows = match (set["flows"].as_u64(), set["max_flows"].as_u64()) {
                (Some(n), Some(cap)) => format!(", {n}/{cap} UDP flows"),
                _ => String::new(),
            };
            let _ = writeln!(out, "{kind} {} ({}{flows})", text(&set["name"]), text(&set["balance"]));
            for u in set["upstreams"].as_array().into_iter().flatten() {
                let weight = client::weight_text(u);
                let _ = writeln!(
                    out,
                    "  {:<40} {:<8} weight {:<24} open {}",
                    text(&u["upstream"]),
                    text(&u["state"]),
                    weight,
                    u["active"]
                );
            }
        }
    }
    for c in v["certificates"].as_array().into_iter().flatten() {
        let names: Vec<String> = c["names"].as_array().into_iter().flatten().map(text).collect();
        let _ = writeln!(out, "certificate {} — {} days left", names.join(", "), c["days_left"]);
    }
    // ACME: the account's problem and every certificate whose last order failed.
    if let Some(e) = v["acme"]["account_error"].as_str() {
        let _ = writeln!(out, "acme account: {e}");
    }
    for c in v["acme"]["certificates"].as_array().into_iter().flatten() {
        if c["failures"].as_u64().unwrap_or(0) > 0 {
            let _ = writeln!(
                out,
                "acme {}: {} failed orders, last: {}",
                text(&c["dir"]),
                c["failures"],
                text(&c["last_error"])
            );
        }
    }
    // Indexed as a `Value`, not a map: a field missing from another version's answer reads as
    // null rather than panicking.
    if v["firewall"].is_object() {
        let fw = &v["firewall"];
        let enforcing = if fw["enforcing"] == true { "enforcing" } else { "OPEN" };
        let _ = writeln!(out, "firewall table {} {enforcing}, {} allowed", text(&fw["table"]), fw["allowed"]);
        for n in fw["names"].as_array().into_iter().flatten() {
            let addrs: Vec<String> = n["addresses"].as_array().into_iter().flatten().map(text).collect();
            let _ = writeln!(out, "  {} → {} ({} failed lookups)", text(&n["name"]), addrs.join(", "), n["failures"]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn udp_streams_show_their_flows() {
        let status = r#"{"healthy": true, "sites": [], "certificates": [], "firewall": null, "streams": [
            {"name": "dns", "balance": "least_conn", "flows": 3, "max_flows": 4096, "upstreams": []},
            {"name": "ssh", "balance": "round_robin", "flows": null, "max_flows": null, "upstreams": []}]}"#;
        let out = super::summary(status);
        assert!(out.contains("stream dns (least_conn, 3/4096 UDP flows)\n"), "{out}");
        assert!(out.contains("stream ssh (round_robin)\n"), "{out}");
    }

    /// Each event loop's open connections follow the health, when there is more than one.
    #[test]
    fn connections_per_thread_are_shown() {
        let status = r#"{"healthy": true, "threads": [{"open": 3, "placed": 9}, {"open": 2, "placed": 8}],
            "sites": [], "streams": [], "certificates": [], "firewall": null}"#;
        assert!(super::summary(status).starts_with("healthy (connections per thread: 3 2)\n"));
        let udp = r#"{"healthy": true, "threads": [{"open": 3, "placed": 9, "udp_sockets": 1},
            {"open": 2, "placed": 8, "udp_sockets": 1}], "sites": [], "streams": []}"#;
        let out = super::summary(udp);
        assert!(out.starts_with("healthy (connections per thread: 3 2; UDP sockets per thread: 1 1)\n"), "{out}");
        let one = r#"{"healthy": true, "threads": [{"open": 3, "placed": 9}], "sites": [], "streams": []}"#;
        assert!(super::summary(one).starts_with("healthy\n"));
    }

    #[test]
    fn acme_failures_are_shown() {
        let status = r#"{"healthy": true, "sites": [], "streams": [], "certificates": [], "firewall": null,
            "acme": {"account_error": null, "certificates": [
                {"dir": "a.test", "failures": 0, "last_error": null},
                {"dir": "x.invalid", "failures": 2, "last_error": "the CA refused: rejectedIdentifier"}]}}"#;
        let out = super::summary(status);
        assert!(out.contains("acme x.invalid: 2 failed orders, last: the CA refused: rejectedIdentifier\n"), "{out}");
        assert!(!out.contains("acme a.test") && !out.contains("acme account"), "{out}");
    }

    /// Another version's answer, without some of the firewall's fields: shown as null, no panic.
    #[test]
    fn a_firewall_without_some_fields_is_shown() {
        let status = r#"{"healthy": true, "firewall": {"table": "lb_allow", "names": [{"name": "a.test"}]}}"#;
        let out = super::summary(status);
        assert!(out.contains("firewall table lb_allow OPEN, null allowed\n"), "{out}");
        assert!(out.contains("  a.test →  (null failed lookups)\n"), "{out}");
    }
}
