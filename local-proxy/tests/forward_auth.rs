//! Routes inside a site and forward auth, with the binary as deployed. No HTTP forward-auth
//! identity provider installs here from Debian: bookworm and its backports have no authelia,
//! authentik, oauth2-proxy or vouch-proxy package, and the one Web-SSO they have, lemonldap-ng,
//! checks requests as a FastCGI server behind nginx's auth_request (401 plus a Location for
//! nginx to redirect to), not as an HTTP endpoint. So the auth service is a small one in this
//! file that does what
//! Authelia's `/api/authz/forward-auth` and Authentik's `/outpost.goauthentik.io/auth/traefik`
//! do: it reads a session token (a real ES256 JWT, signed and validated with `jsonwebtoken`)
//! from a cookie or a bearer header and answers 302 to its login page (with a `Set-Cookie`)
//! when there is none, 401 when it is expired or forged, and 200 with `Remote-User`,
//! `X-User-Id` and `X-User-Role` when it is valid. Upstreams are echo servers that report
//! the headers they got.
//!
//! Cases: public route untouched (the auth service is not even asked); no token → the 302
//! reaches the client with its Location and Set-Cookie; valid token → the upstream sees the
//! auth service's X-User-Id/Role and not the client's injected ones (also when the answer
//! lacks one of them); expired → 401; auth service slow → 504; stopped → 503; WebSocket
//! through auth; route priorities (exact before prefix, longest prefix, priority first);
//! encoded-slash and dot-segment paths refused; the X-Forwarded-* the auth service saw
//! (including the PROXY-header client); access log `route` and `user`; metrics.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

const CLIENT: &str = "127.0.0.9";
const LOGIN: &str = "https://auth.example.org/";

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    uid: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    role: Option<String>,
}

/// The identity provider's signing key (ES256, as Authentik can be set to use).
struct Keys {
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl Keys {
    fn new() -> Self {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        Keys {
            encoding: EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).unwrap(),
            decoding: DecodingKey::from_ec_pem(key.public_key_pem().as_bytes()).unwrap(),
        }
    }

    /// A token for `sub` valid for `ttl_secs` from now (negative: already expired).
    fn token(&self, sub: &str, uid: &str, role: Option<&str>, ttl_secs: i64) -> String {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
        let claims =
            Claims { sub: sub.into(), exp: (now + ttl_secs) as u64, uid: uid.into(), role: role.map(Into::into) };
        jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims, &self.encoding).unwrap()
    }
}

/// The auth service: answers as Authelia's forward-auth endpoint does, records the headers
/// of every request it gets, and can be stopped (listener and open connections closed).
struct AuthService {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<hyper::HeaderMap>>>,
    tasks: JoinSet<()>,
}

impl AuthService {
    async fn start(keys: Arc<Keys>) -> AuthService {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<hyper::HeaderMap>>> = Arc::default();
        let mut tasks = JoinSet::new();
        let record = seen.clone();
        tasks.spawn(async move {
            let mut conns = JoinSet::new();
            while let Ok((s, _)) = l.accept().await {
                let (keys, record) = (keys.clone(), record.clone());
                conns.spawn(async move {
                    let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let (keys, record) = (keys.clone(), record.clone());
                        async move { Ok::<_, Infallible>(decide(&keys, &record, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(s), svc).await;
                });
            }
        });
        AuthService { addr, seen, tasks }
    }

    /// Stop answering: the accept loop and every open connection end (the JoinSets abort
    /// their tasks on drop), so the port refuses.
    fn stop(&mut self) {
        self.tasks.abort_all();
    }

    fn last_seen(&self) -> hyper::HeaderMap {
        self.seen.lock().unwrap().last().cloned().expect("the auth service was asked")
    }

    fn asked(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

fn response(status: u16, headers: &[(&str, &str)], body: &str) -> hyper::Response<Full<Bytes>> {
    let mut b = hyper::Response::builder().status(status);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(Bytes::from(body.to_string()))).unwrap()
}

async fn decide(
    keys: &Keys,
    record: &Mutex<Vec<hyper::HeaderMap>>,
    req: hyper::Request<hyper::body::Incoming>,
) -> hyper::Response<Full<Bytes>> {
    let h = req.headers().clone();
    record.lock().unwrap().push(h.clone());
    // The administrators' endpoint: a valid token of another role is refused.
    let admins_only = req.uri().path() == "/admins-only";
    if req.uri().path() == "/slow" {
        tokio::time::sleep(Duration::from_secs(3)).await;
        return response(200, &[("remote-user", "slowpoke")], "");
    }
    let token = h
        .get_all("cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix("session=").map(str::to_string))
        .or_else(|| {
            h.get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer ")).map(Into::into)
        });
    let Some(token) = token else {
        // Where the user wanted to go, rebuilt from what the proxy sent, as Authelia does.
        let get = |n: &str| h.get(n).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        let target = format!("{}://{}{}", get("x-forwarded-proto"), get("x-forwarded-host"), get("x-forwarded-uri"));
        let location = format!("{LOGIN}?rd={}", target.replace('&', "%26"));
        return response(
            302,
            &[("location", &location), ("set-cookie", "auth_flow=abc123; Path=/; HttpOnly; Secure")],
            "Found: sign in first\n",
        );
    };
    let mut validation = Validation::new(Algorithm::ES256);
    validation.leeway = 0;
    match jsonwebtoken::decode::<Claims>(&token, &keys.decoding, &validation) {
        Ok(data) if admins_only && data.claims.role.as_deref() != Some("admin") => {
            response(403, &[], "administrators only\n")
        }
        Ok(data) => {
            let c = data.claims;
            let mut headers = vec![
                ("remote-user", c.sub.as_str()),
                ("x-user-id", c.uid.as_str()),
                ("x-forwarded-user", c.sub.as_str()),
            ];
            if let Some(role) = &c.role {
                headers.push(("x-user-role", role.as_str()));
            }
            // Not in auth_response_headers: must not reach the upstream.
            headers.push(("x-auth-internal", "secret"));
            response(200, &headers, "")
        }
        Err(e) => response(401, &[("www-authenticate", "Bearer error=\"invalid_token\"")], &format!("{e}\n")),
    }
}

/// The running binary (tests/common) and the CA its certificate comes from.
struct Running {
    bin: Binary,
    ca: PathBuf,
}

impl std::ops::Deref for Running {
    type Target = Binary;
    fn deref(&self) -> &Binary {
        &self.bin
    }
}

async fn start(dir: &Path, sites: &str) -> Running {
    let live = dir.join("live");
    Ca::new(dir).certbot(&live, "app.example.org", &["app.example.org"], "app.example.org");
    Running { bin: spawn_binary(dir, &live, "", sites).await, ca: dir.join("ca.pem") }
}

/// An answer: status, headers, body.
struct Answer {
    status: u16,
    headers: hyper::HeaderMap,
    body: String,
}

impl Answer {
    /// The echo upstream's report lines `name: value` for `name` (lower case).
    fn echoed(&self, name: &str) -> Vec<&str> {
        self.body.lines().filter_map(|l| l.strip_prefix(&format!("{name}: "))).collect()
    }
}

/// One HTTP/1.1 GET for app.example.org over `s` with extra headers.
async fn get_on(s: TcpStream, path: &str, headers: &[(&str, &str)]) -> Answer {
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s)).await.unwrap();
    tokio::spawn(conn);
    let mut req = hyper::Request::builder().uri(path).header("host", "app.example.org");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(Bytes::new())).unwrap();
    let resp =
        tokio::time::timeout(Duration::from_secs(10), send.send_request(req)).await.expect("answer in 10s").unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    Answer { status, headers, body: String::from_utf8_lossy(&body).into() }
}

async fn get(p: &Running, path: &str, headers: &[(&str, &str)]) -> Answer {
    let s = connect_from(CLIENT.parse::<IpAddr>().unwrap(), p.mesh_http).await;
    get_on(s, path, headers).await
}

fn log_lines(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

/// The upstreams and auth services of the tests: the site's own upstream (`site`), one per
/// route with its own (`api`, `v2`, `public`, `static`), a WebSocket echo.
struct World {
    keys: Arc<Keys>,
    auth: AuthService,
    down_auth: AuthService,
    dead: SocketAddr,
    log: PathBuf,
    proxy: Running,
    _tmp: tempfile::TempDir,
}

async fn world() -> World {
    let tmp = tempfile::tempdir().unwrap();
    let keys = Arc::new(Keys::new());
    let auth = AuthService::start(keys.clone()).await;
    let down_auth = AuthService::start(keys.clone()).await;
    let (site, api, v2) = (echo_upstream("site").await, echo_upstream("api").await, echo_upstream("v2").await);
    let (public, stat, ws) = (echo_upstream("public").await, echo_upstream("static").await, ws_upstream().await);
    let dead = closed_port().await;
    let log = tmp.path().join("app.log");
    let a = auth.addr;
    let d = down_auth.addr;
    let sites = format!(
        r#"
[[site]]
host = "app.example.org"
upstream = "http://{site}"
access_log = {{ path = "{log}" }}
forward_auth = {{ address = "http://{a}/api/authz/forward-auth", auth_response_headers = ["Remote-User", "X-User-Id", "X-User-Role"], timeout = "1s" }}

# Public: no auth at all.
[[site.route]]
name = "public"
path_prefix = "/auth/"
upstream = "http://{public}"
forward_auth = false

[[site.route]]
name = "api"
path_prefix = "/api"
upstream = "http://{api}"
response_headers = {{ X-Route = "api" }}
request_headers = {{ X-Via-Route = "api" }}

# Exact beats the /api prefix: a public health path inside the protected API.
[[site.route]]
name = "api-health"
path = "/api/health"
forward_auth = false

# Longer prefix beats /api.
[[site.route]]
name = "v2"
path_prefix = "/api/v2/"
upstream = "http://{v2}"

# Priority beats length: /static/private/ is longer but has the lower priority.
[[site.route]]
name = "static"
path_prefix = "/static"
priority = 10
upstream = "http://{stat}"
forward_auth = false
[[site.route]]
name = "static-private"
path_prefix = "/static/private/"
upstream = "http://{api}"

# An app under a sub-path, told so by its route; its auth service names the user oauth2-proxy's way.
[[site.route]]
name = "prefixed"
path_prefix = "/prefixed/"
request_headers = {{ X-Forwarded-Prefix = "/prefixed" }}
forward_auth = {{ address = "http://{a}/api/authz/forward-auth", auth_response_headers = ["X-Forwarded-User"] }}

[[site.route]]
name = "ws"
path_prefix = "/ws/"
upstream = "http://{ws}"

[[site.route]]
name = "slow"
path_prefix = "/slow/"
forward_auth = {{ address = "http://{a}/slow", timeout = "300ms" }}

[[site.route]]
name = "down"
path_prefix = "/down/"
forward_auth = {{ address = "http://{d}/api/authz/forward-auth", auth_response_headers = ["Remote-User"] }}

# The client is trusted to name the original request; only its cookie goes to the auth service.
[[site.route]]
name = "trusting"
path_prefix = "/trusting/"
forward_auth = {{ address = "http://{a}/api/authz/forward-auth", trust_forward_header = true, auth_request_headers = ["Cookie"], auth_response_headers = ["X-User-Id"] }}

# For administrators only, under the site's sign-in for everyone.
[[site.route]]
name = "admins"
path_prefix = "/admins/"
forward_auth = {{ address = "http://{a}/admins-only", auth_response_headers = ["Remote-User"] }}

# Its own replicas, one dead, with active checks of their own.
[[site.route]]
name = "checked"
path_prefix = "/checked/"
upstream = ["http://{dead}", "http://{api}"]
forward_auth = false
[site.route.health]
path = "/"
interval = "200ms"
timeout = "100ms"
fall = 1
"#,
        log = log.display()
    );
    let proxy = start(tmp.path(), &sites).await;
    World { keys, auth, down_auth, dead, log, proxy, _tmp: tmp }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_auth_and_routes() {
    let mut w = world().await;
    let p = &w.proxy;
    let valid = w.keys.token("alice", "42", Some("viewer"), 300);
    let cookie = format!("theme=dark; session={valid}");

    // Public route: served without asking the auth service, and without the identity
    // headers a client tried to slip through it.
    let a = get(p, "/auth/login", &[("x-user-id", "0"), ("remote-user", "root"), ("x-other", "kept")]).await;
    assert_eq!((a.status, a.echoed("upstream")), (200, vec!["public"]), "{}", a.body);
    assert_eq!(w.auth.asked(), 0, "a public route must not ask the auth service");
    assert!(a.echoed("x-user-id").is_empty() && a.echoed("remote-user").is_empty(), "{}", a.body);
    assert_eq!(a.echoed("x-other"), ["kept"]);

    // No token: the auth service's 302 reaches the client as it came.
    let a = get(p, "/api/items?page=2&sort=name", &[]).await;
    assert_eq!(a.status, 302, "{}", a.body);
    assert_eq!(a.headers["location"], format!("{LOGIN}?rd=http://app.example.org/api/items?page=2%26sort=name"));
    assert_eq!(a.headers["set-cookie"], "auth_flow=abc123; Path=/; HttpOnly; Secure");
    assert_eq!(a.body, "Found: sign in first\n");
    assert_eq!(a.headers["x-route"], "api", "the route's response headers apply to the auth answer too");
    assert!(a.echoed("upstream").is_empty(), "the upstream was not reached");
    // What the auth service saw: the original request as X-Forwarded-*, ours, not the client's.
    let seen = w.auth.last_seen();
    assert_eq!(seen["x-forwarded-method"], "GET");
    assert_eq!(seen["x-forwarded-proto"], "http");
    assert_eq!(seen["x-forwarded-host"], "app.example.org");
    assert_eq!(seen["x-forwarded-uri"], "/api/items?page=2&sort=name");
    assert_eq!(seen["x-forwarded-for"], CLIENT);
    assert_eq!(seen["host"], w.auth.addr.to_string().as_str(), "Host names the auth service");

    // Valid token with injected identity headers: the upstream sees the auth service's only.
    let spoof = [
        ("cookie", cookie.as_str()),
        ("x-user-id", "0"),
        ("x-user-role", "admin"),
        ("remote-user", "root"),
        ("x-forwarded-for", "6.6.6.6"),
        ("x-forwarded-uri", "/elsewhere"),
        // The same under `_` names, which CGI-style servers read as the `-` ones.
        ("remote_user", "root"),
        ("x_user_role", "admin"),
        ("x_forwarded_for", "6.6.6.6"),
        ("x_api_key", "the application's own"),
    ];
    let a = get(p, "/api/items", &spoof).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.echoed("upstream"), ["api"]);
    assert_eq!(a.echoed("x-user-id"), ["42"], "{}", a.body);
    assert_eq!(a.echoed("x-user-role"), ["viewer"]);
    assert_eq!(a.echoed("remote-user"), ["alice"]);
    assert!(a.echoed("x-auth-internal").is_empty(), "only auth_response_headers are copied");
    assert_eq!(a.echoed("x-via-route"), ["api"], "the route's request headers");
    assert_eq!(a.echoed("x-forwarded-for"), [CLIENT]);
    for twin in ["remote_user", "x_user_role", "x_forwarded_for"] {
        assert!(a.echoed(twin).is_empty(), "spoofed {twin} reached the upstream: {}", a.body);
    }
    assert_eq!(a.echoed("x_api_key"), ["the application's own"], "other `_` headers pass");
    // The client's cookie went to the auth service (all headers by default), its spoofed
    // X-Forwarded-* did not (trust_forward_header = false).
    let seen = w.auth.last_seen();
    assert!(seen["cookie"].to_str().unwrap().contains("session="));
    assert_eq!(seen["x-forwarded-for"], CLIENT);
    assert_eq!(seen["x-forwarded-uri"], "/api/items");

    // A token without a role: the client's X-User-Role is removed all the same.
    let norole = w.keys.token("bob", "7", None, 300);
    let bearer = format!("Bearer {norole}");
    let a = get(p, "/api/items", &[("authorization", &bearer), ("x-user-role", "admin")]).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.echoed("x-user-id"), ["7"]);
    assert!(a.echoed("x-user-role").is_empty(), "spoofed role reached the upstream: {}", a.body);

    // Expired and forged tokens: 401 from the auth service, body and header passed on.
    let expired = format!("session={}", w.keys.token("alice", "42", Some("viewer"), -60));
    let a = get(p, "/api/items", &[("cookie", &expired)]).await;
    assert_eq!(a.status, 401, "{}", a.body);
    assert!(a.body.contains("ExpiredSignature"), "{}", a.body);
    assert_eq!(a.headers["www-authenticate"], "Bearer error=\"invalid_token\"");
    let forged = format!("session={}", Keys::new().token("alice", "42", Some("admin"), 300));
    assert_eq!(get(p, "/api/items", &[("cookie", &forged)]).await.status, 401);

    // A POST's body still reaches the upstream after the auth step (which gets none).
    let s = connect_from(CLIENT.parse::<IpAddr>().unwrap(), p.mesh_http).await;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s)).await.unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::post("/api/items")
        .header("host", "app.example.org")
        .header("cookie", &cookie)
        .body(Full::new(Bytes::from_static(b"{\"name\":\"x\"}")))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    let body = String::from_utf8_lossy(&resp.into_body().collect().await.unwrap().to_bytes()).to_string();
    assert!(body.contains("body-bytes: 12"), "{body}");
    let seen = w.auth.last_seen();
    assert_eq!(seen["x-forwarded-method"], "POST");
    assert!(!seen.contains_key("content-length"), "no body goes to the auth service");

    // trust_forward_header and auth_request_headers: the client's X-Forwarded-* pass to the
    // auth service, only its cookie goes along, and only X-User-Id comes back to the
    // upstream, which gets none of the client's other forwarding claims (trusted or not).
    let trusting = [
        ("cookie", cookie.as_str()),
        ("x-secret", "s3"),
        ("x-forwarded-uri", "/claimed"),
        ("x-forwarded-for", "198.51.100.1"),
        ("x-forwarded-prefix", "//evil.example"),
        ("x-original-url", "/admin"),
    ];
    let a = get(p, "/trusting/x", &trusting).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.echoed("x-user-id"), ["42"]);
    assert!(a.echoed("x-forwarded-prefix").is_empty() && a.echoed("x-original-url").is_empty(), "{}", a.body);
    assert!(a.echoed("x-forwarded-uri").is_empty(), "{}", a.body);
    assert!(a.echoed("remote-user").is_empty(), "not in this route's auth_response_headers");
    let seen = w.auth.last_seen();
    assert_eq!(seen["x-forwarded-uri"], "/claimed");
    assert_eq!(seen["x-forwarded-for"], "198.51.100.1");
    assert_eq!(seen["x-forwarded-method"], "GET", "not sent by the client: the proxy's");
    assert!(seen.contains_key("cookie") && !seen.contains_key("x-secret"), "{seen:?}");

    // A route's own pool runs its own checks: the dead replica goes down, requests go on.
    let dead_label = format!("http://{}", w.dead);
    let admin = p.admin;
    wait_until(Duration::from_secs(5), "the route's dead replica checked down", || {
        let dead_label = dead_label.clone();
        async move {
            let text = http_get(admin, "/metrics").await.1;
            let labels = [("site", "app.example.org#checked"), ("upstream", dead_label.as_str())];
            text.contains("app.example.org#checked") && metric_value(&text, "local_proxy_upstream_up", &labels) == 0.0
        }
    })
    .await;
    for _ in 0..10 {
        let a = get(p, "/checked/x", &[]).await;
        assert_eq!((a.status, a.echoed("upstream")), (200, vec!["api"]), "{}", a.body);
    }

    // Route priorities.
    let asked = w.auth.asked();
    let a = get(p, "/api/health", &[]).await;
    assert_eq!((a.status, a.echoed("upstream")), (200, vec!["site"]), "exact path before the /api prefix");
    assert_eq!(w.auth.asked(), asked, "the exact public route skips auth");
    let a = get(p, "/api/v2/things", &[("cookie", &cookie)]).await;
    assert_eq!(a.echoed("upstream"), ["v2"], "longest prefix");
    assert_eq!(get(p, "/apis", &[("cookie", &cookie)]).await.echoed("upstream"), ["site"], "/api stops at a segment");
    let a = get(p, "/static/private/x", &[]).await;
    assert_eq!((a.status, a.echoed("upstream")), (200, vec!["static"]), "priority 10 before a longer prefix");
    // No route: the site's own upstream, behind the site's auth.
    assert_eq!(get(p, "/other", &[]).await.status, 302);
    assert_eq!(get(p, "/other", &[("cookie", &cookie)]).await.echoed("upstream"), ["site"]);
    // Spellings of a protected path do not reach a public route, and ambiguous ones are refused.
    assert_eq!(get(p, "/%61pi/items", &[]).await.status, 302, "percent-encoded /api is still /api");
    assert_eq!(get(p, "//api//items", &[]).await.status, 302, "merged slashes");
    assert_eq!(get(p, "/auth/..%2Fapi/items", &[]).await.status, 400);
    assert_eq!(get(p, "/auth/../api/items", &[]).await.status, 400);

    // WAN with a PROXY header from the ingress: the auth service sees the real client.
    let client: SocketAddr = "203.0.113.7:4242".parse().unwrap();
    let s = connect_with_proxy("127.0.0.2".parse().unwrap(), p.wan_http, client).await;
    assert_eq!(get_on(s, "/api/items", &[("cookie", &cookie)]).await.status, 200);
    assert_eq!(w.auth.last_seen()["x-forwarded-for"], "203.0.113.7");

    // h2 over TLS: the name comes from :authority, the scheme is https.
    let cookie_arg = format!("cookie: {cookie}");
    let args = ["--http2", "-H", cookie_arg.as_str(), "-H", "x-user-role: admin"];
    let (out, err, ok) = curl(&args, "app.example.org", p.mesh_https, &p.ca, "/api/h2?q=1").await;
    assert!(ok && out.contains("upstream: api") && out.contains("x-user-role: viewer\n"), "{err}{out}");
    assert!(!out.contains("x-user-role: admin"), "{out}");
    // Host as an HTTP/1.1 client would have sent it: the authority, port included.
    assert!(out.contains(&format!("host: app.example.org:{}\n", p.mesh_https.port())), "{out}");
    let seen = w.auth.last_seen();
    assert_eq!(seen["x-forwarded-proto"], "https");
    assert_eq!(seen["x-forwarded-uri"], "/api/h2?q=1");
    assert_eq!(seen["x-forwarded-host"], format!("app.example.org:{}", p.mesh_https.port()).as_str());
    let (out, err, _) = curl(
        &["--http2", "-o", "/dev/null", "-w", "%{http_code} %{http_version}"],
        "app.example.org",
        p.mesh_https,
        &p.ca,
        "/api/h2",
    )
    .await;
    assert_eq!(out, "302 2", "{err}");

    // WebSocket through auth: refused without a token, upgraded and echoing with one.
    {
        use futures_util::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        use tokio_tungstenite::tungstenite::{Error, Message};
        let s = TcpStream::connect(p.mesh_http).await.unwrap();
        match tokio_tungstenite::client_async("ws://app.example.org/ws/chat", s).await {
            Err(Error::Http(resp)) => assert_eq!(resp.status(), 302),
            other => panic!("expected the login redirect, got {other:?}"),
        }
        let mut req = "ws://app.example.org/ws/chat".into_client_request().unwrap();
        req.headers_mut().insert("cookie", cookie.parse().unwrap());
        let s = TcpStream::connect(p.mesh_http).await.unwrap();
        let (mut ws, resp) = tokio_tungstenite::client_async(req, s).await.unwrap();
        assert_eq!(resp.status(), 101);
        ws.send(Message::text("hello through auth")).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hello through auth"));
    }

    // A slow auth service: 504 after the route's 300 ms, never let through.
    let t = std::time::Instant::now();
    let a = get(p, "/slow/x", &[("cookie", &cookie)]).await;
    let took = t.elapsed();
    assert_eq!(a.status, 504, "{}", a.body);
    assert!(a.echoed("upstream").is_empty());
    assert!(took >= Duration::from_millis(300) && took < Duration::from_secs(2), "took {took:?}");

    // The auth service answers, then is stopped: 503, never let through.
    assert_eq!(get(p, "/down/x", &[("cookie", &cookie)]).await.status, 200);
    w.down_auth.stop();
    wait_until(Duration::from_secs(5), "the stopped auth service refusing", || async {
        TcpStream::connect(w.down_auth.addr).await.is_err()
    })
    .await;
    let a = get(p, "/down/x", &[("cookie", &cookie)]).await;
    assert_eq!(a.status, 503, "{}", a.body);
    assert!(a.echoed("upstream").is_empty());

    // Counted by result.
    let text = http_get(p.admin, "/metrics").await.1;
    let m = |route: &str, result: &str| {
        metric_value(
            &text,
            "local_proxy_forward_auth_total",
            &[("site", "app.example.org"), ("route", route), ("result", result)],
        )
    };
    assert!(m("api", "denied") >= 4.0, "{text}");
    assert!(m("api", "allowed") >= 3.0);
    assert_eq!(m("slow", "timeout"), 1.0);
    assert_eq!(m("down", "unavailable"), 1.0);
    assert_eq!(m("down", "allowed"), 1.0);
    assert!(m("", "denied") >= 1.0, "the site's own auth counts under route=\"\"");

    // What the auth step costs: 300 GETs on one keep-alive connection each way (printed).
    for (path, hdrs) in [("/auth/x", vec![]), ("/api/x", vec![("cookie", cookie.as_str())])] {
        let s = connect_from(CLIENT.parse::<IpAddr>().unwrap(), p.mesh_http).await;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s)).await.unwrap();
        tokio::spawn(conn);
        let t = std::time::Instant::now();
        for _ in 0..300 {
            let mut req = hyper::Request::get(path).header("host", "app.example.org");
            for (k, v) in &hdrs {
                req = req.header(*k, *v);
            }
            send.ready().await.unwrap();
            let resp = send.send_request(req.body(Full::new(Bytes::new())).unwrap()).await.unwrap();
            assert_eq!(resp.status(), 200);
            resp.into_body().collect().await.unwrap();
        }
        let each = t.elapsed() / 300;
        println!("{path}: {each:?} per request ({:.0} req/s on one connection)", 1.0 / each.as_secs_f64());
    }

    // Routes with their own upstreams are pools of their own in /status (named host#route).
    let status = http_get(p.admin, "/status").await.1;
    let json: Value = serde_json::from_str(status.split_once("\r\n\r\n").unwrap().1).unwrap();
    let names: Vec<&str> = json["sites"].as_array().unwrap().iter().filter_map(|s| s["name"].as_str()).collect();
    for pool in ["app.example.org", "app.example.org#api", "app.example.org#v2", "app.example.org#checked"] {
        assert!(names.contains(&pool), "{pool} not in /status sites: {names:?}");
    }

    // The access log names the route and the user forward auth reported.
    let log = w.log.clone();
    wait_until(Duration::from_secs(5), "access log lines", || {
        let log = log.clone();
        async move { log_lines(&log).iter().any(|l| l["uri"] == "/down/x" && l["status"] == 503) }
    })
    .await;
    let lines = log_lines(&w.log);
    let ok = lines.iter().find(|l| l["uri"] == "/api/items" && l["status"] == 200).unwrap();
    assert_eq!((ok["route"].as_str(), ok["user"].as_str()), (Some("api"), Some("alice")), "{ok}");
    let public = lines.iter().find(|l| l["uri"] == "/auth/login").unwrap();
    assert_eq!((public["route"].as_str(), public["user"].as_str()), (Some("public"), None));
    let denied = lines.iter().find(|l| l["uri"] == "/api/items?page=2&sort=name").unwrap();
    assert_eq!((denied["status"].as_u64(), denied["result"].as_str()), (Some(302), Some("auth_denied")));
    let other = lines.iter().find(|l| l["uri"] == "/other" && l["status"] == 200).unwrap();
    assert_eq!(other["route"], Value::Null, "no route: the site's own settings");
}

/// A path that an upstream ignoring case (or one trailing slash) serves as a stricter route's
/// must pass that route's auth too: `/ADMINS/x` and `/admins` are under the site's sign-in as
/// written, and under the administrators' route as Express serves them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stricter_route_spelt_otherwise_still_judges() {
    let w = world().await;
    let p = &w.proxy;
    let alice = format!("Bearer {}", w.keys.token("alice", "42", None, 300));
    let root = format!("Bearer {}", w.keys.token("root", "0", Some("admin"), 300));
    assert_eq!(get(p, "/other", &[("authorization", &alice)]).await.status, 200, "the site lets alice in");
    for path in ["/admins/x", "/ADMINS/x", "/Admins/x", "/admins", "/ADMINS"] {
        assert_eq!(get(p, path, &[("authorization", &alice)]).await.status, 403, "{path}: not for alice");
        assert_eq!(get(p, path, &[("authorization", &root)]).await.status, 200, "{path}: for root");
    }
    assert_eq!(get(p, "/ADMINS/x", &[]).await.status, 302, "no token: sign in first");
}

/// A raw HTTP/1.1 exchange on a new connection from the client address: the whole answer.
async fn raw(p: &Running, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = connect_from(CLIENT.parse::<IpAddr>().unwrap(), p.mesh_http).await;
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await.expect("answer in 10s").unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

/// A request whose target names its host (absolute form) with a Host header naming another:
/// the site it was routed to is what forward auth judges and what the upstream is told, so a
/// public name in the Host header cannot have a protected site's request judged as public.
/// Several Host headers are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_target_names_the_host_for_forward_auth_and_the_upstream() {
    let w = world().await;
    let p = &w.proxy;
    let a = raw(
        p,
        "GET http://app.example.org/api/items HTTP/1.1\r\nHost: public.example.org\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(a.starts_with("HTTP/1.1 302"), "{a}");
    assert_eq!(w.auth.last_seen()["x-forwarded-host"], "app.example.org");
    let token = w.keys.token("alice", "42", None, 300);
    let a = raw(
        p,
        &format!(
            "GET http://app.example.org/api/items HTTP/1.1\r\nHost: evil.example\r\nAuthorization: Bearer {token}\r\n\
             Connection: close\r\n\r\n"
        ),
    )
    .await;
    assert!(a.starts_with("HTTP/1.1 200"), "{a}");
    assert!(a.contains("\nhost: app.example.org\n"), "the upstream was told another host: {a}");
    assert!(!a.contains("evil.example"), "{a}");
    let a = raw(
        p,
        "GET /api/items HTTP/1.1\r\nHost: app.example.org\r\nHost: public.example.org\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(a.starts_with("HTTP/1.1 400"), "{a}");
}

/// Headers a client names in `Connection` go before anything is added: they cannot take the
/// identity forward auth vouched for, a route's request headers, or the Host the upstream
/// picks its site by.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_tokens_cannot_remove_what_the_proxy_adds() {
    let w = world().await;
    let token = w.keys.token("alice", "42", None, 300);
    let a = raw(
        &w.proxy,
        &format!(
            "GET /api/items HTTP/1.1\r\nHost: app.example.org\r\nAuthorization: Bearer {token}\r\n\
             Connection: close, Host, Remote-User, X-User-Id, X-Via-Route, X-Forwarded-For\r\n\r\n"
        ),
    )
    .await;
    assert!(a.starts_with("HTTP/1.1 200"), "{a}");
    for line in ["host: app.example.org", "remote-user: alice", "x-user-id: 42", "x-via-route: api"] {
        assert!(a.contains(&format!("\n{line}\n")), "the upstream did not see {line}: {a}");
    }
    assert!(a.contains(&format!("\nx-forwarded-for: {CLIENT}\n")), "{a}");
}

/// The client's forwarding claims (X-Forwarded-Port, -Prefix, -User, ...) never reach the
/// upstream, while those the route's `request_headers` and the auth service set do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clients_forwarding_claims_go_and_those_of_the_route_and_auth_stay() {
    let w = world().await;
    let bearer = format!("Bearer {}", w.keys.token("alice", "42", None, 300));
    let claims = [
        ("authorization", bearer.as_str()),
        ("x-forwarded-prefix", "//evil.example"),
        ("x-forwarded-user", "mallory"),
        ("x-forwarded-port", "8443"),
        ("x-original-url", "/admin"),
    ];
    let a = get(&w.proxy, "/prefixed/page", &claims).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.echoed("x-forwarded-prefix"), ["/prefixed"], "{}", a.body);
    assert_eq!(a.echoed("x-forwarded-user"), ["alice"], "{}", a.body);
    assert!(a.echoed("x-forwarded-port").is_empty() && a.echoed("x-original-url").is_empty(), "{}", a.body);
}

/// Routes and forward auth change with a reload: a public route becomes protected, a new
/// route appears, and a reload with a bad route is refused while the old routes serve on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_follow_a_reload() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = Arc::new(Keys::new());
    let auth = AuthService::start(keys.clone()).await;
    let (site, api, extra) = (echo_upstream("site").await, echo_upstream("api").await, echo_upstream("extra").await);
    let a = auth.addr;
    let p = start(
        tmp.path(),
        &format!(
            r#"
[[site]]
host = "app.example.org"
upstream = "http://{site}"
[[site.route]]
name = "api"
path_prefix = "/api/"
upstream = "http://{api}"
# forward_auth: none yet
"#
        ),
    )
    .await;
    assert_eq!(get(&p, "/api/x", &[]).await.echoed("upstream"), ["api"]);
    assert_eq!(get(&p, "/extra/x", &[]).await.echoed("upstream"), ["site"]);

    let protected = format!(
        r#"forward_auth = {{ address = "http://{a}/api/authz/forward-auth", auth_response_headers = ["X-User-Id"] }}
[[site.route]]
name = "extra"
path_prefix = "/extra/"
upstream = "http://{extra}""#
    );
    p.reload("# forward_auth: none yet", &protected, "ok").await;
    assert_eq!(get(&p, "/api/x", &[]).await.status, 302, "the route is protected after the reload");
    let cookie = format!("session={}", keys.token("alice", "42", None, 300));
    let a = get(&p, "/api/x", &[("cookie", &cookie), ("x-user-id", "0")]).await;
    assert_eq!((a.echoed("upstream"), a.echoed("x-user-id")), (vec!["api"], vec!["42"]));
    assert_eq!(get(&p, "/extra/x", &[]).await.echoed("upstream"), ["extra"], "the new route serves");

    // A bad route: refused, the routes before it serve on.
    p.reload(r#"path_prefix = "/extra/""#, r#"path_prefix = "extra""#, "invalid").await;
    assert_eq!(get(&p, "/extra/x", &[]).await.echoed("upstream"), ["extra"]);
    assert_eq!(get(&p, "/api/x", &[]).await.status, 302);
    assert!(auth.asked() >= 3);
}

/// An auth service that sends its denial's head and then stalls mid-page: the client gets
/// the denial, head and all, once the auth timeout is over, instead of waiting on its body
/// for the stream stall bound (minutes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denial_page_that_stalls_is_cut_at_the_auth_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap();
    let _stalling = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut s, _)) = l.accept().await {
            let _ = s.read(&mut [0u8; 4096]).await;
            let head = "HTTP/1.1 401 Unauthorized\r\nContent-Length: 100\r\nWWW-Authenticate: Bearer\r\n\r\nthe first";
            let _ = s.write_all(head.as_bytes()).await;
            held.push(s);
        }
    });
    let up = echo_upstream("site").await;
    let tmp = tempfile::tempdir().unwrap();
    let sites = format!(
        "[[site]]\nhost = \"app.example.org\"\nupstream = \"http://{up}\"\nforward_auth = {{ address = \"http://{a}/auth\", timeout = \"1s\" }}\n"
    );
    let p = start(tmp.path(), &sites).await;
    let s = connect_from(CLIENT.parse::<IpAddr>().unwrap(), p.mesh_http).await;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s)).await.unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::get("/x").header("host", "app.example.org").body(Full::new(Bytes::new())).unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), send.send_request(req)).await.expect("a head").unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(resp.headers()["www-authenticate"], "Bearer");
    let body = tokio::time::timeout(Duration::from_secs(10), resp.into_body().collect()).await;
    let body = body.expect("the denial's body ends instead of waiting on the stalled page");
    assert!(body.is_ok_and(|b| b.to_bytes().is_empty()), "cut, the page goes without its partial body");
}
