//! `ingress ctl …`: the operator's (and Ansible's) side of the admin API. Reads where the
//! admin listener is and the token file from the same config the service runs with (its
//! `[admin]` alone: see `CtlSettings`), calls the API, prints the answer; exit status 0 on
//! success, 1 otherwise (the server's reason on stderr).

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;

use shared::admin::client::{self, Call};
use shared::workers::LoopStatus;

use crate::Ctl;

pub fn run(path: &Path, admin: Option<SocketAddr>, what: Ctl) -> ExitCode {
    let call = match &what {
        Ctl::Status(args) => Call::status(args, summary),
        Ctl::Drain { path } => Call::control("drain", &[("path", path.as_str())]),
        Ctl::Undrain { path } => Call::control("undrain", &[("path", path.as_str())]),
        Ctl::Weight { path, weight } => {
            Call::control("weight", &[("path", path.as_str()), ("weight", weight.as_str())])
        }
    };
    client::run_with_config(path, ingress::config::ENV_PREFIX, admin, call)
}

/// One line per path from the `/status` JSON; the raw JSON if it does not parse.
fn summary(body: &str) -> String {
    use std::fmt::Write as _;
    let Ok(v) = serde_json::from_str::<serde_json::Value>(body) else {
        return body.to_owned();
    };
    let mut out = String::new();
    for pool in v["pools"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "pool {} (on {}, {})",
            pool["name"].as_str().unwrap_or("?"),
            pool["tier"].as_str().unwrap_or("?"),
            pool["balance"].as_str().unwrap_or("?")
        );
        for p in pool["paths"].as_array().into_iter().flatten() {
            let weight = client::weight_text(p);
            let _ = writeln!(
                out,
                "  {:<10} {:<8} weight {:<24} share {:>5.1}% now {:>5.1}% 1m  conns {:<6} flows {:<6} {}",
                p["name"].as_str().unwrap_or("?"),
                p["state"].as_str().unwrap_or("?"),
                weight,
                p["share_recent"].as_f64().unwrap_or(0.0) * 100.0,
                p["share_minute"].as_f64().unwrap_or(0.0) * 100.0,
                p["connections"],
                p["flows"],
                p["address"].as_str().unwrap_or(""),
            );
            // Delivered quality and flap damping: what bends or blocks its share.
            let _ = write!(
                out,
                "             quality loss {:.2}% factor {:.3}  flap penalty {:.0}  falls {}",
                p["quality_loss"].as_f64().unwrap_or(0.0) * 100.0,
                p["quality_factor"].as_f64().unwrap_or(1.0),
                p["flap_penalty"].as_f64().unwrap_or(0.0),
                p["falls"],
            );
            match p["held_reason"].as_str() {
                Some(why) => {
                    let _ = writeln!(out, "\n             held: {why}");
                }
                None => out.push('\n'),
            }
        }
    }
    let _ = write!(out, "open connections {}", v["open_connections"]);
    let threads: Vec<LoopStatus> = serde_json::from_value(v["threads"].clone()).unwrap_or_default();
    match shared::workers::per_thread(&threads, " ") {
        Some((tcp, udp)) => {
            let udp = udp.map(|u| format!("; UDP sockets per thread: {u}")).unwrap_or_default();
            let _ = writeln!(out, " (TCP per thread: {tcp}{udp})");
        }
        None => out.push('\n'),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_shows_quality_and_why_a_path_is_held() {
        let body = r#"{"open_connections": 3, "pools": [{"name": "home", "tier": "wan", "balance": "round_robin",
            "paths": [
              {"name": "wan1", "state": "held", "weight": 1, "share_recent": 0.0, "share_minute": 0.02,
               "connections": 0, "flows": 0, "address": "192.0.2.1", "quality_loss": 0.0312, "quality_factor": 0.72,
               "flap_penalty": 9013.4, "falls": 2, "held_reason": "flapping: 2 falls; penalty 9013 reached 1500"},
              {"name": "wan2", "state": "up", "weight": 1, "share_recent": 1.0, "share_minute": 0.98,
               "connections": 3, "flows": 0, "address": "198.51.100.1", "quality_loss": 0.0, "quality_factor": 1.0,
               "flap_penalty": 0.0, "falls": 0, "held_reason": null}]}]}"#;
        let out = summary(body);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 7, "{out}");
        assert!(lines[1].contains("wan1") && lines[1].contains("held"), "{out}");
        assert!(lines[2].contains("quality loss 3.12% factor 0.720  flap penalty 9013  falls 2"), "{out}");
        assert_eq!(lines[3].trim(), "held: flapping: 2 falls; penalty 9013 reached 1500", "{out}");
        assert!(lines[5].contains("quality loss 0.00% factor 1.000  flap penalty 0  falls 0"), "{out}");
        assert_eq!(lines[6], "open connections 3");
        let threads = body.replacen(
            r#""open_connections": 3,"#,
            r#""open_connections": 3, "threads": [{"open": 2, "placed": 9}, {"open": 1, "placed": 8}],"#,
            1,
        );
        assert_eq!(summary(&threads).lines().last(), Some("open connections 3 (TCP per thread: 2 1)"));
        let udp = threads
            .replace(r#""placed": 9}"#, r#""placed": 9, "udp_sockets": 0}"#)
            .replace(r#""placed": 8}"#, r#""placed": 8, "udp_sockets": 3}"#);
        assert_eq!(
            summary(&udp).lines().last(),
            Some("open connections 3 (TCP per thread: 2 1; UDP sockets per thread: 0 3)")
        );
        // Not JSON: printed as it came.
        assert_eq!(summary("nope"), "nope");
    }
}
