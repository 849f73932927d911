//! `ingress ctl …`: the operator's (and Ansible's) side of the admin API. Reads where the
//! admin listener is and the token from the same config the service runs with, calls the
//! API, prints the answer; exit status 0 on success, 1 otherwise (the server's reason on
//! stderr).

use std::net::SocketAddr;
use std::process::ExitCode;

use http::Method;
use ingress::Config;
use shared::admin::client;

use crate::Ctl;

pub fn run(config: &Config, admin: Option<SocketAddr>, what: Ctl) -> ExitCode {
    let Some(addr) = admin.or(config.admin).map(client::reach) else {
        eprintln!("no admin listener: set admin.listen in the config (or pass --admin)");
        return ExitCode::FAILURE;
    };
    let (method, target, json) = match &what {
        Ctl::Status { json } => (Method::GET, "/status".to_owned(), *json),
        Ctl::Drain { path } => (Method::POST, format!("/api/drain?path={}", shared::admin::encode(path)), false),
        Ctl::Undrain { path } => (Method::POST, format!("/api/undrain?path={}", shared::admin::encode(path)), false),
        Ctl::Weight { path, weight } => (
            Method::POST,
            format!("/api/weight?path={}&weight={}", shared::admin::encode(path), shared::admin::encode(weight)),
            false,
        ),
    };
    let token = config.admin_token.as_ref();
    if method == Method::POST && token.is_none() {
        eprintln!("runtime control needs admin.token_file in the config");
        return ExitCode::FAILURE;
    }
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(client::request(addr, method, &target, token, &client::operator())) {
        Ok((status, body)) if status.is_success() => {
            if matches!(what, Ctl::Status { .. }) && !json {
                print!("{}", summary(&body));
            } else {
                print!("{body}");
            }
            ExitCode::SUCCESS
        }
        Ok((status, body)) => {
            eprint!("{status}: {body}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
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
            let weight = match p["weight_override"].as_u64() {
                Some(w) => format!("{w} (override; config {})", p["configured_weight"]),
                None => p["weight"].to_string(),
            };
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
