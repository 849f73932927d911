//! The admin API of the local proxy: `/status` follows its documented JSON schema, the status
//! page renders it without JavaScript, and runtime control of a stream's upstreams (drain,
//! weight) needs the bearer token, acts on the next connection, lets open ones finish, and
//! survives a reload until the config changes the field (in-process, loopback).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;

use common::{base_config, echo_upstream, Proxy};
use http::{Method, StatusCode};
use local_proxy::config;
use local_proxy::listeners::Origin;
use shared::admin::client;
use shared::admin::token::Token;
use tokio::net::TcpStream;

const TOKEN: &str = "lp-test-token-0123456789abcdef";

fn token_file(dir: &std::path::Path) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let f = dir.join("token");
    std::fs::write(&f, format!("{TOKEN}\n")).unwrap();
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
    f
}

fn conf(token: Option<&std::path::Path>, a: SocketAddr, b: SocketAddr, b_weight: u32) -> String {
    let text = base_config(&format!(
        "[[stream]]\nname = \"svc\"\nlisten = \"0/tcp\"\n\
         upstream = [{{ address = \"{a}\", weight = 3 }}, {{ address = \"{b}\", weight = {b_weight} }}]\n"
    ));
    match token {
        Some(t) => text.replacen(
            "listen = \"127.0.0.1:0\"\n",
            &format!("listen = \"127.0.0.1:0\"\ntoken_file = \"{}\"\n", t.display()),
            1,
        ),
        None => text,
    }
}

async fn call(admin: SocketAddr, method: Method, target: &str, token: Option<&str>) -> (StatusCode, String) {
    let token = token.map(|t| Token::new(t).unwrap());
    client::request(admin, method, target, token.as_ref(), "tester").await.expect("admin answers")
}

async fn status(admin: SocketAddr) -> serde_json::Value {
    let (code, body) = call(admin, Method::GET, "/status", None).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn upstream(s: &serde_json::Value, label: &str) -> serde_json::Value {
    s["streams"][0]["upstreams"].as_array().unwrap().iter().find(|u| u["upstream"] == label).unwrap().clone()
}

/// Which upstream answers a new connection through the stream.
async fn served_by(listen: SocketAddr, i: usize) -> String {
    let mut s = TcpStream::connect(listen).await.unwrap();
    let (status, text) = common::raw_get(&mut s, "svc", &format!("/{i}")).await;
    assert_eq!(status, 200, "{text}");
    text.lines().find_map(|l| l.strip_prefix("upstream: ")).unwrap().to_owned()
}

/// A GET on a kept-alive connection through the stream: the echo's answer ends with its
/// `body-bytes:` line.
async fn keepalive_get(s: &mut TcpStream, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: svc\r\n\r\n").as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&out).contains("body-bytes: 0\n") {
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), s.read(&mut buf)).await.unwrap().unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&out));
        out.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn tally(listen: SocketAddr, n: usize) -> (usize, usize) {
    let mut t = (0, 0);
    for i in 0..n {
        match served_by(listen, i).await.as_str() {
            "a" => t.0 += 1,
            _ => t.1 += 1,
        }
    }
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_schema_token_drain_weight_and_reload() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (echo_upstream("a").await, echo_upstream("b").await);
    let token = token_file(tmp.path());
    let config_text = conf(Some(&token), a, b, 1);
    let proxy = Proxy::start(&config_text).await;
    let listen = proxy.listeners_tcp[&(Origin::Mesh, "svc".to_string())];
    let (la, lb) = (a.to_string(), b.to_string());

    // /status follows the documented schema (and the schema can fail).
    let schema_text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/status-local-proxy.schema.json"))
            .unwrap();
    let validator = jsonschema::validator_for(&serde_json::from_str(&schema_text).unwrap()).unwrap();
    let s = status(proxy.admin).await;
    let errors: Vec<String> = validator.iter_errors(&s).map(|e| format!("{e} at {}", e.instance_path())).collect();
    assert!(errors.is_empty(), "schema violations: {errors:#?}\n{s:#}");
    assert_eq!((s["control"].clone(), s["streams"][0]["protocol"].clone()), (true.into(), "tcp".into()));
    let mut bad = s.clone();
    bad["streams"][0]["upstreams"][0]["state"] = "sideways".into();
    assert!(!validator.is_valid(&bad));

    // The page, server-rendered: every upstream with its state.
    let (code, page) = call(proxy.admin, Method::GET, "/", None).await;
    assert_eq!(code, StatusCode::OK);
    assert!(page.contains(&format!("data-upstream=\"{la}\" data-state=\"up\"")), "{page}");
    assert!(page.contains("<meta name=\"viewport\"") && !page.contains("src=\"http"));

    // No token, a wrong one: 401, counted, nothing changed.
    let drain_a = format!("/api/drain?name=svc&upstream={}", shared::admin::encode(&la));
    assert_eq!(call(proxy.admin, Method::POST, &drain_a, None).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(
        call(proxy.admin, Method::POST, &drain_a, Some("wrong-token-0123456789")).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(proxy.metric("local_proxy_admin_unauthorized_total", &[("reason", "wrong")]).await, 1.0);
    assert_eq!(upstream(&status(proxy.admin).await, &la)["drained"], false);

    // Drain a: every new connection goes to b; one opened on a before goes on.
    let mut open_on_a = loop {
        let mut s = TcpStream::connect(listen).await.unwrap();
        if keepalive_get(&mut s, "/keep").await.contains("upstream: a") {
            break s;
        }
    };
    let (code, body) = call(proxy.admin, Method::POST, &drain_a, Some(TOKEN)).await;
    assert_eq!((code, body), (StatusCode::OK, format!("stream svc {la}: serving -> drained\n")));
    assert_eq!(tally(listen, 20).await, (0, 20));
    let text = keepalive_get(&mut open_on_a, "/again").await;
    assert!(text.contains("upstream: a"), "the open connection still reaches a: {text}");
    assert_eq!(
        call(proxy.admin, Method::POST, &drain_a.replace("drain", "undrain"), Some(TOKEN)).await.0,
        StatusCode::OK
    );
    assert_eq!(tally(listen, 40).await, (30, 10), "3:1 again");

    // Weights 3:1 → 1:3 at once.
    for (l, w) in [(&la, 1), (&lb, 3)] {
        let t = format!("/api/weight?name=svc&upstream={}&weight={w}", shared::admin::encode(l));
        assert_eq!(call(proxy.admin, Method::POST, &t, Some(TOKEN)).await.0, StatusCode::OK);
    }
    assert_eq!(tally(listen, 40).await, (10, 30));
    let s = status(proxy.admin).await;
    assert_eq!(
        (upstream(&s, &la)["weight"].clone(), upstream(&s, &la)["weight_override"].clone()),
        (1.into(), 1.into())
    );
    assert!(s["events"][0]["reason"].as_str().unwrap().starts_with("weight by tester from 127.0.0.1:"), "{s:#}");
    assert_eq!(
        call(proxy.admin, Method::POST, "/api/drain?name=svc&upstream=nope", Some(TOKEN)).await.0,
        StatusCode::NOT_FOUND
    );

    // A reload of the same file keeps the overrides; one changing b's weight ends b's.
    proxy.handle.reload(config::from_toml_str(&config_text).unwrap()).await.unwrap();
    let s = status(proxy.admin).await;
    assert_eq!((upstream(&s, &la)["weight"].clone(), upstream(&s, &lb)["weight"].clone()), (1.into(), 3.into()));
    // ... unless that reload is refused (here a new stream's port is taken): then b's stays.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let refused = format!(
        "{}[[stream]]\nname = \"taken\"\nlisten = \"{}/tcp\"\nupstream = \"{a}\"\n",
        conf(Some(&token), a, b, 2),
        held.local_addr().unwrap().port()
    );
    assert!(proxy.handle.reload(config::from_toml_str(&refused).unwrap()).await.is_err());
    let s = status(proxy.admin).await;
    assert_eq!(upstream(&s, &lb)["weight_override"], 3, "a refused reload ended an override: {s:#}");
    assert_eq!(tally(listen, 40).await, (10, 30));
    proxy.handle.reload(config::from_toml_str(&conf(Some(&token), a, b, 2)).unwrap()).await.unwrap();
    let s = status(proxy.admin).await;
    assert_eq!(upstream(&s, &la)["weight_override"], 1);
    assert_eq!(
        (upstream(&s, &lb)["weight"].clone(), upstream(&s, &lb)["weight_override"].clone()),
        (2.into(), serde_json::Value::Null)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_file_control_is_off() {
    let (a, b) = (echo_upstream("a").await, echo_upstream("b").await);
    let proxy = Proxy::start(&conf(None, a, b, 1)).await;
    let t = format!("/api/drain?name=svc&upstream={}", shared::admin::encode(&a.to_string()));
    let (code, body) = call(proxy.admin, Method::POST, &t, Some(TOKEN)).await;
    assert_eq!(code, StatusCode::FORBIDDEN);
    assert!(body.contains("admin.token_file"), "{body}");
}

/// `admin.allowed_hosts` lets the listener answer to a name (a LAN one, here on loopback),
/// refuses others, and follows a reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_answers_to_the_names_listed() {
    let (a, b) = (echo_upstream("a").await, echo_upstream("b").await);
    let listed = |names: &str| {
        conf(None, a, b, 1).replacen(
            "listen = \"127.0.0.1:0\"\n",
            &format!("listen = \"127.0.0.1:0\"\nallowed_hosts = [{names}]\n"),
            1,
        )
    };
    let text = listed("\"Proxy.Home.Test\"");
    assert!(text.contains("allowed_hosts"), "{text}");
    let proxy = Proxy::start(&text).await;
    let ask = |host: &'static str| {
        let admin = proxy.admin;
        async move {
            let mut s = TcpStream::connect(admin).await.unwrap();
            let req = format!("GET /healthz HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
            tokio::io::AsyncWriteExt::write_all(&mut s, req.as_bytes()).await.unwrap();
            let mut out = String::new();
            tokio::io::AsyncReadExt::read_to_string(&mut s, &mut out).await.unwrap();
            out
        }
    };
    assert!(ask("proxy.home.test:9181").await.starts_with("HTTP/1.1 200"));
    assert!(ask("127.0.0.1").await.starts_with("HTTP/1.1 200"));
    assert!(ask("rebind.example").await.starts_with("HTTP/1.1 421"));
    proxy.handle.reload(config::from_toml_str(&listed("")).unwrap()).await.unwrap();
    assert!(ask("proxy.home.test").await.starts_with("HTTP/1.1 421"), "the reload took the name out");
}

/// A UDP stream's open flows are in `/status` (schema-checked, `max_flows` beside them) and on
/// the page, and go back to 0 once they idle out; a TCP stream says null.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_flows_per_stream_in_status_and_page() {
    use tokio::net::UdpSocket;
    let echo = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let echo_addr = echo.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        while let Ok((n, peer)) = echo.recv_from(&mut buf).await {
            let _ = echo.send_to(&buf[..n], peer).await;
        }
    });
    let a = echo_upstream("a").await;
    // The stream's name is its flow budget's key, process-wide: one no other test uses.
    let text = base_config(&format!(
        "[[stream]]\nname = \"svc\"\nlisten = \"0/tcp\"\nupstream = \"{a}\"\n\
         [[stream]]\nname = \"flows-status\"\nlisten = \"0/udp\"\nupstream = \"{echo_addr}\"\n\
         idle_timeout = \"1500ms\"\nmax_flows = 50\n"
    ));
    let proxy = Proxy::start(&text).await;
    let listen = proxy.listeners_udp[&(Origin::Mesh, "flows-status".to_string())];
    // Three clients (three source ports), each one flow; each is answered through it.
    let mut clients = Vec::new();
    for i in 0..3 {
        let c = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        c.send_to(format!("hello {i}").as_bytes(), listen).await.unwrap();
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), c.recv(&mut buf)).await.unwrap().unwrap();
        assert_eq!(&buf[..n], format!("hello {i}").as_bytes());
        clients.push(c);
    }
    let schema_text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/status-local-proxy.schema.json"))
            .unwrap();
    let validator = jsonschema::validator_for(&serde_json::from_str(&schema_text).unwrap()).unwrap();
    let s = status(proxy.admin).await;
    let errors: Vec<String> = validator.iter_errors(&s).map(|e| format!("{e} at {}", e.instance_path())).collect();
    assert!(errors.is_empty(), "schema violations: {errors:#?}\n{s:#}");
    let stream = |s: &serde_json::Value, name: &str| {
        s["streams"].as_array().unwrap().iter().find(|x| x["name"] == name).unwrap().clone()
    };
    let udp = stream(&s, "flows-status");
    assert_eq!((udp["flows"].clone(), udp["max_flows"].clone()), (3.into(), 50.into()), "{s:#}");
    assert_eq!(udp["upstreams"][0]["active"], 3, "each flow holds its upstream");
    let tcp = stream(&s, "svc");
    assert_eq!((tcp["flows"].clone(), tcp["max_flows"].clone()), (serde_json::Value::Null, serde_json::Value::Null));
    let mut bad = s.clone();
    bad["streams"][1]["flows"] = (-1).into();
    assert!(!validator.is_valid(&bad), "a negative flow count is refused by the schema");
    let (_, page) = call(proxy.admin, Method::GET, "/", None).await;
    assert!(page.contains("<span data-flows=\"3\">3/50 flows</span>"), "{page}");
    let summary = local_proxy::status::summary(&proxy.handle.status());
    assert!(summary.contains("streams 2/2 serving (upstreams 2/2 up, 3 UDP flows)"), "{summary}");

    // Silent past idle_timeout: the flows end and the count follows.
    let start = std::time::Instant::now();
    loop {
        let s = status(proxy.admin).await;
        if stream(&s, "flows-status")["flows"] == 0 {
            break;
        }
        assert!(start.elapsed() < std::time::Duration::from_secs(10), "flows never idled out: {s:#}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    println!("3 UDP flows shown, 0 again {:?} after (idle_timeout 1.5 s)", start.elapsed());
    drop(clients);
}

/// A certificate the config no longer serves leaves `/metrics` (the expiry alert reads it,
/// and would fire for a certificate nobody uses); the one that replaced it is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_only_the_certificates_served() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = common::Ca::new(tmp.path());
    let (old, new) = (tmp.path().join("old-live"), tmp.path().join("new-live"));
    ca.certbot(&old, "a.test", &["a.test"], "a.test");
    ca.certbot(&new, "b.test", &["b.test"], "b.test");
    let up = echo_upstream("a").await;
    let site = format!("[[site]]\nhost = \"b.test\"\nupstream = \"http://{up}\"\n");
    let proxy = common::spawn_binary(tmp.path(), &old, "", &site).await;
    let expiry = "local_proxy_certificate_expiry_timestamp_seconds";
    let served = |m: &str, name: &str| m.lines().any(|l| l.starts_with(expiry) && l.contains(&format!("\"{name}\"")));
    assert!(served(&common::http_get(proxy.admin, "/metrics").await.1, "a.test"));

    proxy.reload(&old.display().to_string(), &new.display().to_string(), "ok").await;
    let m = common::http_get(proxy.admin, "/metrics").await.1;
    assert!(served(&m, "b.test") && !served(&m, "a.test"), "expiry series after the reload:\n{m}");
}

/// A route a reload removes takes its rate limit's gauge out of `/metrics`; its site's own
/// stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_only_the_routes_that_run() {
    let up = echo_upstream("a").await;
    let site = |route: &str| {
        base_config(&format!(
            "[[site]]\nhost = \"a.test\"\nupstream = \"http://{up}\"\nrate_limit = {{ requests = 5, per = \"1s\" }}\n{route}"
        ))
    };
    let with_route =
        site("[[site.route]]\nname = \"api\"\npath_prefix = \"/api\"\nrate_limit = { requests = 9, per = \"1s\" }\n");
    let proxy = Proxy::start(&with_route).await;
    let gauge = |m: &str, route: &str| {
        let route = format!("route=\"{route}\"");
        m.lines().any(|l| l.starts_with("local_proxy_rate_limit_clients{") && l.contains(&route))
    };
    let m = common::http_get(proxy.admin, "/metrics").await.1;
    assert!(gauge(&m, "api") && gauge(&m, ""), "{m}");
    proxy.handle.reload(config::from_toml_str(&site("")).unwrap()).await.unwrap();
    let m = common::http_get(proxy.admin, "/metrics").await.1;
    assert!(!gauge(&m, "api") && gauge(&m, ""), "{m}");
}
