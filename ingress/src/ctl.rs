//! `ingress ctl …`: the operator's (and Ansible's) side of the admin API. Reads where the
//! admin listener is and the token from the same config the service runs with, calls the
//! API, prints the answer; exit status 0 on success, 1 otherwise (the server's reason on
//! stderr).

use std::net::SocketAddr;
use std::process::ExitCode;

use ingress::Config;
use shared::admin::client::{self, Call};

use crate::Ctl;

pub fn run(config: &Config, admin: Option<SocketAddr>, what: Ctl) -> ExitCode {
    let call = match &what {
        Ctl::Status(args) => Call::status(args, summary),
        Ctl::Drain { path } => Call::control("drain", &[("path", path.as_str())]),
        Ctl::Undrain { path } => Call::control("undrain", &[("path", path.as_str())]),
        Ctl::Weight { path, weight } => {
            Call::control("weight", &[("path", path.as_str()), ("weight", weight.as_str())])
        }
    };
    client::run(admin.or(config.admin), config.admin_token.as_ref(), call)
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
        }
    }
    let _ = writeln!(out, "open connections {}", v["open_connections"]);
    out
}
