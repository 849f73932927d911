//! Routing by name in the topology (issue 4): the ingress's 443 in `sni` mode and its 80 in
//! `http` mode route names to different pools, each pool a different backend in home (both
//! WANs, a fixed port per backend): TLS backends are `openssl s_server` with certificates made
//! here, HTTP backends `echo-server` (whose answer names the port it was reached on). From
//! client, `curl --resolve name:port:<ingress>` through both ingress nodes: exact names, a
//! wildcard, the default pool for other names and for a hello without SNI, Host matched without
//! case or port; the HTTP service also sends PROXY v2, which the backend sees before the replayed
//! request head, and nginx (`listen ... proxy_protocol`, a real peer) behind one name reports the
//! client's own address from it.

mod common;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use netns::echo;
use netns::ingress::names as inames;
use netns::scenario;
use netns::services::{self, names, Listen};
use netns::tls::{self, Cert};
use netns::topology::{addr, Options, Role, Topology};

/// nginx with `proxy_protocol` on, in home on both WAN addresses (pool `webn`, name
/// `n.example.test`).
const NGINX_PORT: u16 = 8082;

/// (pool, TLS port, HTTP port, backend id).
const SITES: [(&str, u16, u16, &str); 3] =
    [("a", 8443, 8081, "site-a"), ("b", 9443, 9081, "site-b"), ("c", 10443, 10081, "site-c")];

struct Setup {
    t: Topology,
    certs: Vec<Cert>,
}

fn setup(start: Instant) -> Setup {
    tls::require().expect("openssl and curl installed");
    let mut t = common::build(Options { mesh: false, backends: true });
    let dir = t.dir().to_path_buf();
    let certs = vec![
        tls::self_signed(&dir, "a", &["a.example.test"]).expect("cert a"),
        tls::self_signed(&dir, "b", &["b.example.test", "*.b.example.test"]).expect("cert b"),
        tls::self_signed(&dir, "c", &["c.example.test", "other.example.test"]).expect("cert c"),
    ];
    let mut extra = String::new();
    let mut http_listen = Vec::new();
    for (i, (site, tls_port, http_port, id)) in SITES.iter().enumerate() {
        tls::start_s_server(&mut t, Role::Home, &format!("tls-{site}"), *tls_port, &certs[i], id)
            .unwrap_or_else(|e| panic!("s_server {site}: {e:#}"));
        for (pool, port) in [(format!("tls{site}"), tls_port), (format!("web{site}"), http_port)] {
            let paths = [("wan1", format!("{}:{port}", addr::WAN1), 3), ("wan2", format!("{}:{port}", addr::WAN2), 1)];
            extra.push_str(&services::pool_toml(&pool, &paths, None));
        }
        for wan in [addr::WAN1, addr::WAN2] {
            http_listen.extend(["--listen".to_string(), format!("{wan}:{http_port}")]);
        }
    }
    let mut argv = vec![t.bins.echo_server.display().to_string()];
    argv.extend(http_listen);
    t.spawn(Role::Home, "http-backends", &argv).expect("start the HTTP backends");
    start_nginx(&mut t);
    let paths =
        [("wan1", format!("{}:{NGINX_PORT}", addr::WAN1), 3), ("wan2", format!("{}:{NGINX_PORT}", addr::WAN2), 1)];
    extra.push_str(&services::pool_toml("webn", &paths, None));
    let routes = |kind: &str| {
        let nginx = if kind == "web" { ", { names = [\"n.example.test\"], pool = \"webn\" }" } else { "" };
        format!(
            "routes = [ {{ names = [\"a.example.test\"], pool = \"{kind}a\" }}, \
             {{ names = [\"b.example.test\", \"*.b.example.test\"], pool = \"{kind}b\" }}{nginx} ]\n"
        )
    };
    extra.push_str(&format!(
        "[[service]]\nname = \"https\"\nlisten = [\"0.0.0.0:443\"]\nmode = \"sni\"\npool = \"tlsc\"\n{}\n\
         [[service]]\nname = \"http\"\nlisten = [\"0.0.0.0:80\"]\nmode = \"http\"\npool = \"webc\"\n\
         proxy_protocol = \"v2\"\n{}",
        routes("tls"),
        routes("web")
    ));
    let toml = services::standard_plus(&t, &extra);
    let wait = [Listen::Tcp(443), Listen::Tcp(80)];
    for role in [Role::Ingress1, Role::Ingress2] {
        services::start_ingress_toml(&mut t, role, &toml, &wait)
            .unwrap_or_else(|e| panic!("start ingress in {}: {e:#}", role.as_str()));
    }
    let home = t.ns(Role::Home).to_string();
    let mut ports: Vec<Listen> = SITES.iter().map(|s| Listen::Tcp(s.2)).collect();
    ports.push(Listen::Tcp(NGINX_PORT));
    netns::wait::wait_until("http backends listening", Duration::from_secs(10), Duration::from_millis(20), || {
        let missing = services::missing_listeners(&home, &ports)?;
        netns::wait::check(missing.is_empty(), || format!("{missing:?}"))
    })
    .expect("http backends");
    for role in [Role::Ingress1, Role::Ingress2] {
        for pool in ["tlsa", "tlsb", "tlsc", "weba", "webb", "webc", "webn"] {
            let m = t.scrape(role).expect("scrape");
            for path in ["wan1", "wan2"] {
                let up = m.get(inames::PATH_UP, &[("pool", pool), ("path", path)]);
                assert_eq!(up, Some(1.0), "{} {pool}/{path} not up", role.as_str());
            }
        }
    }
    common::phase(start, "TLS and HTTP backends and the ingress up");
    Setup { t, certs }
}

/// nginx in home (one process, files in the run's dir) answering `client=<address:port from
/// the PROXY header>`.
fn start_nginx(t: &mut Topology) {
    let dir = t.dir().join("nginx");
    std::fs::create_dir_all(&dir).expect("nginx dir");
    let d = dir.display();
    let listen: String =
        [addr::WAN1, addr::WAN2].iter().map(|w| format!("listen {w}:{NGINX_PORT} proxy_protocol; ")).collect();
    let conf = format!(
        "daemon off; master_process off; pid {d}/nginx.pid; error_log {d}/error.log; user root;\n\
         events {{ }}\n\
         http {{ access_log off; client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d};\n\
           uwsgi_temp_path {d}; scgi_temp_path {d};\n\
           server {{ {listen}\n\
             location / {{ return 200 \"client=$proxy_protocol_addr:$proxy_protocol_port host=$host\\n\"; }} }} }}\n"
    );
    let file = dir.join("nginx.conf");
    std::fs::write(&file, conf).expect("write nginx.conf");
    let argv = ["nginx", "-c", &file.display().to_string(), "-e", &dir.join("error.log").display().to_string()]
        .map(String::from);
    t.spawn(Role::Home, "nginx", &argv).expect("nginx (Debian nginx-light, installed by scripts/deps.sh)");
}

/// `curl` from client; its stdout, or the error with stderr.
fn curl(t: &Topology, args: &[&str]) -> String {
    let mut argv = vec!["curl", "-sS", "--max-time", "5"];
    argv.extend_from_slice(args);
    t.exec(Role::Client, &argv, Duration::from_secs(10)).unwrap_or_else(|e| panic!("{e:#}"))
}

fn ingress_ips() -> [(Role, Ipv4Addr); 2] {
    [(Role::Ingress1, addr::INGRESS1), (Role::Ingress2, addr::INGRESS2)]
}

fn route_failures(t: &Topology) -> f64 {
    scenario::metric_sum(t, names::SERVICE_ROUTE_FAILURES, &[]).expect("scrape")
}

#[test]
fn sni_routes_names_to_pools() {
    let start = Instant::now();
    let s = setup(start);
    let t = &s.t;
    let cert = |i: usize| s.certs[i].cert.display().to_string();
    // (name sent as SNI, certificate to trust, backend expected)
    let cases = [
        ("a.example.test", cert(0), "site-a"),
        ("b.example.test", cert(1), "site-b"),
        ("x.b.example.test", cert(1), "site-b"),
        ("other.example.test", cert(2), "site-c"),
    ];
    let mut seen = Vec::new();
    for (_, ip) in ingress_ips() {
        for (name, ca, want) in &cases {
            let resolve = format!("{name}:443:{ip}");
            let url = format!("https://{name}/id.txt");
            let got = curl(t, &["--cacert", ca, "--resolve", &resolve, &url]);
            assert_eq!(got.trim(), *want, "{name} via {ip}");
            seen.push(format!("{name}@{ip}->{}", got.trim()));
        }
        // No SNI at all (an IP literal): the default pool.
        let got = curl(t, &["-k", &format!("https://{ip}/id.txt")]);
        assert_eq!(got.trim(), "site-c", "no SNI via {ip}");
        // The wrong certificate for a name fails verification: the backend really is another.
        let wrong = format!("a.example.test:443:{ip}");
        let out = netns::cmd::exec(
            t.ns(Role::Client),
            &["curl", "-sS", "--max-time", "5", "--cacert", &cert(1), "--resolve", &wrong, "https://a.example.test/"],
            Duration::from_secs(10),
        )
        .expect("curl");
        assert!(!out.status.success(), "site a's backend verified with site b's certificate");
    }
    let connects = |pool: &str| {
        scenario::metric_sum(t, inames::PATH_CONNECTS, &[("pool", pool)]).expect("scrape the ingress nodes")
    };
    let (a, b, c) = (connects("tlsa"), connects("tlsb"), connects("tlsc"));
    common::report(&format!(
        "RESULT sni routing: {} requests each to its backend ({}); upstream connects per pool: tlsa {a}, tlsb {b}, \
         tlsc {c}",
        seen.len() + 2,
        seen.join(", ")
    ));
    assert_eq!(
        (a, b, c),
        (4.0, 4.0, 4.0),
        "connects per pool (a: 2 + 2 wrong certificate, b: 2 + 2 wildcard, c: 2 + 2 no SNI)"
    );
    assert_eq!(route_failures(t), 0.0, "route failures");
    common::phase(start, "done");
}

#[test]
fn http_host_routes_names_to_pools() {
    let start = Instant::now();
    let mut s = setup(start);
    let t = &mut s.t;
    // (Host, backend port expected)
    let cases =
        [("a.example.test", 8081), ("b.example.test", 9081), ("x.b.example.test", 9081), ("other.example.test", 10081)];
    let mut requests = 0;
    for (_, ip) in ingress_ips() {
        for (name, port) in cases {
            let resolve = format!("{name}:80:{ip}");
            let got = curl(t, &["--resolve", &resolve, &format!("http://{name}/")]);
            let reached: std::net::SocketAddr = got.trim().parse().unwrap_or_else(|_| panic!("answer {got:?}"));
            assert_eq!(reached.port(), port, "{name} via {ip} reached {reached}");
            requests += 1;
        }
        // Host compared without case and port.
        let got = curl(t, &["-H", "Host: B.Example.TEST:80", &format!("http://{ip}/")]);
        assert!(got.trim().ends_with(":9081"), "Host B.Example.TEST:80 via {ip} reached {got:?}");
        requests += 1;
    }
    // nginx learns the client's own address (192.0.2.2) from the PROXY v2 header.
    let mut nginx_saw = Vec::new();
    for (_, ip) in ingress_ips() {
        let resolve = format!("n.example.test:80:{ip}");
        let got = curl(t, &["--resolve", &resolve, "http://n.example.test/"]);
        let client = got.trim().strip_prefix("client=").and_then(|r| r.split_whitespace().next());
        let client: std::net::SocketAddr =
            client.and_then(|c| c.parse().ok()).unwrap_or_else(|| panic!("nginx answered {got:?}"));
        assert_eq!(client.ip(), std::net::IpAddr::from(addr::CLIENT), "nginx via {ip}: {got:?}");
        assert!(got.contains("host=n.example.test"), "nginx via {ip}: {got:?}");
        nginx_saw.push(client.to_string());
    }
    let log = echo::parse_log(&t.proc_mut("http-backends").expect("http backends").stdout());
    let http: Vec<&echo::ConnLog> = log.iter().filter(|c| c.kind == "http").collect();
    let with_proxy = http.iter().filter(|c| c.proxy).count();
    common::report(&format!(
        "RESULT http Host routing: {requests} requests each to its backend; {} answered by the backends, {with_proxy} \
         of them after a PROXY v2 header; nginx (proxy_protocol) behind n.example.test saw clients {nginx_saw:?}",
        http.len()
    ));
    assert_eq!(http.len(), requests, "requests the backends answered");
    assert_eq!(with_proxy, requests, "requests that came with a PROXY v2 header");
    assert_eq!(route_failures(t), 0.0, "route failures");
    common::phase(start, "done");
}
