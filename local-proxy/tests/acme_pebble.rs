//! ACME against a real CA: Debian's `pebble` (with `pebble-challtestsrv` as its DNS, every name
//! resolving to the address the test picks) on loopback. The CA's validation reaches the proxy
//! through an ingress stand-in (PROXY v2 from a trusted address to the WAN listeners) or
//! straight to the mesh listener. Proven here: issuance over HTTP-01 and over TLS-ALPN-01, then
//! curl with pebble's root through two ingress addresses and over the mesh; renewal of
//! short-lived certificates without a restart and without failing a request of a continuous
//! load; pebble stopped (SIGSTOP) during a renewal: the old certificate keeps serving and the
//! retry succeeds once it runs again; badNonce rejections (pebble's random failure mode in this
//! version) retried until issued; a name the CA refuses reported with its error (log, metric,
//! GET /status) while the other is issued; a certbot `live/` picked up and renewed in place; the account kept and reused.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

// Loopback addresses of their own (not 127.0.0.1 / 127.0.0.4, which other tests bind with
// ephemeral ports), so the fixed ports chosen below stay free.
const WAN: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 13));
const INGRESS1: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));
const INGRESS2: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 3));
const MESH: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 14));
/// Where pebble listens (its own loopback address, so its ports never clash with the proxy's).
const PEBBLE: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 9));

/// A child process killed when the guard drops (test failure included).
struct Child(Option<tokio::process::Child>, &'static str);

impl Child {
    fn spawn(what: &'static str, cmd: &mut tokio::process::Command) -> Child {
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("`{what}` is required for this test ({e}); apt-get install -y pebble"));
        Child(Some(child), what)
    }

    fn pid(&self) -> i32 {
        self.0.as_ref().and_then(|c| c.id()).expect("running") as i32
    }

    fn signal(&self, sig: &str) {
        let status = std::process::Command::new("kill").args([sig, &self.pid().to_string()]).status().unwrap();
        assert!(status.success(), "kill {sig} {}", self.1);
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            // A stopped process must run again to die of SIGKILL promptly on every kernel.
            if let Some(id) = c.id() {
                let _ = std::process::Command::new("kill").args(["-CONT", &id.to_string()]).status();
            }
            let _ = c.start_kill();
        }
    }
}

// Ports free on every address (the proxy binds its own on the WAN and the mesh address).
use test_support::free_port;

/// How the CA's validation requests reach the proxy.
#[derive(Clone, Copy)]
enum Via {
    /// Through an ingress stand-in that adds PROXY v2 (the WAN listeners).
    Ingress,
    /// Straight to the mesh listener (no PROXY header).
    Mesh,
}

struct PebbleOptions {
    validity_secs: u64,
    blocklist: Vec<&'static str>,
    nonce_reject_percent: u32,
}

impl Default for PebbleOptions {
    fn default() -> Self {
        Self { validity_secs: 3600, blocklist: Vec::new(), nonce_reject_percent: 0 }
    }
}

/// pebble and its DNS.
struct Pebble {
    process: Child,
    _dns: Child,
    /// The ACME directory URL.
    directory: String,
    /// The TLS root of pebble's own HTTPS (ours, made here).
    api_ca: PathBuf,
    /// Pebble's issuing root, fetched from its management interface (trusted by clients only).
    root: PathBuf,
}

impl Pebble {
    /// Start pebble validating HTTP-01 on `target_ip:http_port` and TLS-ALPN-01 on
    /// `target_ip:tls_port`.
    async fn start(dir: &Path, target_ip: IpAddr, http_port: u16, tls_port: u16, opts: PebbleOptions) -> Pebble {
        // pebble's API certificate, from a CA of ours.
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(rcgen::DnType::CommonName, "pebble API test CA");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let leaf_key = KeyPair::generate().unwrap();
        let mut leaf_params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        leaf_params.subject_alt_names.push(rcgen::SanType::IpAddress(PEBBLE));
        let leaf = leaf_params.signed_by(&leaf_key, &ca, &ca_key).unwrap();
        let api_ca = dir.join("pebble-api-ca.pem");
        std::fs::write(&api_ca, ca.pem()).unwrap();
        std::fs::write(dir.join("pebble-cert.pem"), leaf.pem()).unwrap();
        std::fs::write(dir.join("pebble-key.pem"), leaf_key.serialize_pem()).unwrap();

        let (api, mgmt, dns) = (free_port(), free_port(), free_port());
        let dns_mgmt = free_port();
        let config = serde_json::json!({
            "pebble": {
                "listenAddress": format!("{PEBBLE}:{api}"),
                "managementListenAddress": format!("{PEBBLE}:{mgmt}"),
                "certificate": dir.join("pebble-cert.pem"),
                "privateKey": dir.join("pebble-key.pem"),
                "httpPort": http_port,
                "tlsPort": tls_port,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": false,
                "domainBlocklist": opts.blocklist,
                "certificateValidityPeriod": opts.validity_secs,
            }
        });
        std::fs::write(dir.join("pebble.json"), config.to_string()).unwrap();
        let dns_child = Child::spawn(
            "pebble-challtestsrv",
            tokio::process::Command::new("pebble-challtestsrv")
                .arg("-defaultIPv4")
                .arg(target_ip.to_string())
                .args(["-defaultIPv6", "", "-http01", "", "-https01", "", "-tlsalpn01", ""])
                .arg("-dns01")
                .arg(format!("{PEBBLE}:{dns}"))
                .arg("-management")
                .arg(format!("{PEBBLE}:{dns_mgmt}")),
        );
        let process = Child::spawn(
            "pebble",
            tokio::process::Command::new("pebble")
                .arg("-config")
                .arg(dir.join("pebble.json"))
                .arg("-dnsserver")
                .arg(format!("{PEBBLE}:{dns}"))
                .env("PEBBLE_VA_NOSLEEP", "1")
                // Every order validates afresh (renewals included).
                .env("PEBBLE_AUTHZREUSE", "0")
                .env("PEBBLE_WFE_NONCEREJECT", opts.nonce_reject_percent.to_string()),
        );
        let mgmt_addr = SocketAddr::new(PEBBLE, mgmt);
        wait_until(Duration::from_secs(20), "pebble listening", || async move {
            TcpStream::connect(SocketAddr::new(PEBBLE, api)).await.is_ok()
                && TcpStream::connect(mgmt_addr).await.is_ok()
        })
        .await;
        // The issuing root: regenerated on every pebble start, served by the management API.
        let root_pem = https_get(mgmt_addr, "localhost", &api_ca, "/roots/0").await;
        assert!(root_pem.contains("BEGIN CERTIFICATE"), "pebble root: {root_pem}");
        let root = dir.join("pebble-root.pem");
        std::fs::write(&root, root_pem).unwrap();
        Pebble { process, _dns: dns_child, directory: format!("https://{PEBBLE}:{api}/dir"), api_ca, root }
    }
}

/// GET over HTTPS trusting `ca`; the body.
async fn https_get(addr: SocketAddr, name: &str, ca: &Path, path: &str) -> String {
    let s = TcpStream::connect(addr).await.unwrap();
    let mut tls = tls_over(s, name, ca).await.unwrap();
    let (status, text) = raw_get(&mut tls, name, path).await;
    assert_eq!(status, 200, "{text}");
    text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default()
}

/// The proxy with ACME on, and the stand-ins of two ingress nodes in front of its WAN listeners.
struct Setup {
    dir: tempfile::TempDir,
    pebble: Pebble,
    proxy: Proxy,
    /// Ingress stand-ins (from 127.0.0.2 and 127.0.0.3) to the WAN HTTPS listener.
    ingress_https: [SocketAddr; 2],
    storage: PathBuf,
    /// The proxy's config and its sites' upstream, for reloads.
    config: String,
    upstream: SocketAddr,
}

struct SetupOptions {
    names: Vec<&'static str>,
    via: Via,
    http_01: bool,
    tls_alpn_01: bool,
    pebble: PebbleOptions,
    /// Run before the proxy starts, with the storage folder (a certbot tree to take over).
    prepare: Option<fn(&Path)>,
    order_timeout: &'static str,
    /// `retry_min` and `retry_max`.
    retry: (&'static str, &'static str),
    /// Whether the ingress stand-in forwards plain HTTP (false: the CA's HTTP-01 validation
    /// finds the port closed, as behind an ingress that forwards only 443).
    http_forwarded: bool,
}

impl Default for SetupOptions {
    fn default() -> Self {
        Self {
            names: vec!["a.test"],
            via: Via::Ingress,
            http_01: true,
            tls_alpn_01: true,
            pebble: PebbleOptions::default(),
            prepare: None,
            order_timeout: "20s",
            retry: ("1s", "2s"),
            http_forwarded: true,
        }
    }
}

/// Relay every connection on `listener` to `target` from `from` with a PROXY v2 header (the
/// ingress's SNI passthrough and plain-HTTP services as the proxy sees them).
fn ingress_on(listener: TcpListener, from: IpAddr, target: SocketAddr) {
    tokio::spawn(async move {
        while let Ok((mut inbound, peer)) = listener.accept().await {
            tokio::spawn(async move {
                let mut out = connect_with_proxy(from, target, peer).await;
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
            });
        }
    });
}

async fn setup(opts: SetupOptions) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let storage = dir.path().join("acme");
    std::fs::create_dir_all(&storage).unwrap();
    if let Some(prepare) = opts.prepare {
        prepare(&storage);
    }
    // Fixed ports (both the WAN and the mesh listener use them), so pebble can be told.
    let (https_port, http_port) = (free_port(), free_port());
    // The ingress stand-ins pebble validates through (plain HTTP and TLS passthrough).
    let (val_http, val_tls) = (TcpListener::bind((WAN, 0)).await.unwrap(), TcpListener::bind((WAN, 0)).await.unwrap());
    let (target_ip, pebble_http, pebble_tls) = match opts.via {
        Via::Ingress => (WAN, val_http.local_addr().unwrap().port(), val_tls.local_addr().unwrap().port()),
        Via::Mesh => (MESH, http_port, https_port),
    };
    let pebble = Pebble::start(dir.path(), target_ip, pebble_http, pebble_tls, opts.pebble).await;
    let upstream = echo_upstream("app").await;
    let mut sites = String::new();
    for name in &opts.names {
        sites.push_str(&format!("[[site]]\nhost = \"{name}\"\nupstream = \"http://{upstream}\"\n"));
    }
    let config = format!(
        r#"
[admin]
listen = "127.0.0.1:0"
[wan]
addresses = ["{WAN}"]
trusted_ingress = ["{INGRESS1}", "{INGRESS2}"]
[mesh]
listen = "{MESH}"
[http]
https_port = {https_port}
http_port = {http_port}
[tls]
reload_interval = "200ms"
[acme]
directory = "{directory}"
directory_ca_file = "{api_ca}"
contact = ["admin@example.org"]
storage = "{storage}"
http_01 = {http_01}
tls_alpn_01 = {tls_alpn_01}
retry_min = "{retry_min}"
retry_max = "{retry_max}"
order_timeout = "{order_timeout}"
{sites}"#,
        directory = pebble.directory,
        api_ca = pebble.api_ca.display(),
        storage = storage.display(),
        http_01 = opts.http_01,
        tls_alpn_01 = opts.tls_alpn_01,
        order_timeout = opts.order_timeout,
        retry_min = opts.retry.0,
        retry_max = opts.retry.1,
    );
    let proxy = Proxy::start(&config).await;
    if opts.http_forwarded {
        ingress_on(val_http, INGRESS1, proxy.wan_http);
    } else {
        drop(val_http);
    }
    ingress_on(val_tls, INGRESS1, proxy.wan_https);
    let ingress_https = [
        ingress(INGRESS1, proxy.wan_https, "198.51.100.7:40000".parse().unwrap()).await,
        ingress(INGRESS2, proxy.wan_https, "198.51.100.8:40000".parse().unwrap()).await,
    ];
    Setup { dir, pebble, proxy, ingress_https, storage, config, upstream }
}

/// Serial number (hex) and issuer CN of the certificate served for `name` at `addr`, verified
/// against `root`; `None` when the handshake fails.
async fn served(addr: SocketAddr, name: &str, root: &Path) -> Option<(String, String)> {
    let s = TcpStream::connect(addr).await.ok()?;
    let tls = tls_over(s, name, root).await.ok()?;
    let certs = tls.get_ref().1.peer_certificates()?;
    let (_, cert) = x509_parser::parse_x509_certificate(certs.first()?).ok()?;
    let issuer = cert.issuer().iter_common_name().next()?.as_str().ok()?.to_string();
    Some((cert.raw_serial_as_string(), issuer))
}

impl Setup {
    /// Wait until `name` is served with a certificate from pebble; its serial.
    async fn wait_issued(&self, name: &str, within: Duration) -> String {
        let end = Instant::now() + within;
        loop {
            if let Some((serial, _)) = served(self.proxy.mesh_https, name, &self.pebble.root).await {
                return serial;
            }
            if Instant::now() > end {
                let status = self.proxy.handle.acme().status();
                panic!("{name} not issued within {within:?}; ACME status: {status:?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Until ACME's status notes `name`'s issue: the certificate is served from within its
    /// install and the status noted after it, a moment later on a loaded machine (a full run
    /// once read the status in between).
    async fn wait_noted(&self, name: &str) {
        wait_until(Duration::from_secs(10), &format!("the status notes {name}'s issue"), || async {
            self.proxy.handle.acme().status().get(name).is_some_and(|c| !c.last_challenges.is_empty())
        })
        .await;
    }

    /// curl --cacert pebble-root https://name/ through both ingress stand-ins and over the mesh.
    async fn curl_everywhere(&self, name: &str) {
        for addr in [self.ingress_https[0], self.ingress_https[1], self.proxy.mesh_https] {
            let (out, err, ok) = curl(&[], name, addr, &self.pebble.root, "/").await;
            assert!(ok, "curl https://{name}/ via {addr}: {err}");
            assert!(out.contains("upstream: app"), "{out}");
        }
    }

    /// Reload with one more site, `host`: a new default ACME name, so ACME restarts.
    async fn reload_adding_site(&self, host: &str) {
        let more = format!("{}[[site]]\nhost = \"{host}\"\nupstream = \"http://{}\"\n", self.config, self.upstream);
        self.proxy.handle.reload(local_proxy::config::from_toml_str(&more).unwrap()).await.unwrap();
    }

    async fn orders(&self, certificate: &str, result: &str) -> f64 {
        self.proxy.metric("local_proxy_acme_orders_total", &[("certificate", certificate), ("result", result)]).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http01_through_the_ingress_then_served_everywhere_and_the_account_is_kept() {
    let s = setup(SetupOptions { names: vec!["a.test", "b.test"], tls_alpn_01: false, ..Default::default() }).await;
    s.wait_issued("a.test", Duration::from_secs(60)).await;
    s.wait_issued("b.test", Duration::from_secs(60)).await;
    s.curl_everywhere("a.test").await;
    s.curl_everywhere("b.test").await;
    s.wait_noted("a.test").await;
    // The counter is process-wide (other tests run beside this one): it moved; ACME's status
    // says which challenge this certificate took.
    assert!(s.proxy.metric("local_proxy_acme_challenges_answered_total", &[("challenge", "http-01")]).await >= 2.0);
    assert_eq!(s.proxy.handle.acme().status()["a.test"].last_challenges, ["http-01"]);
    // certbot layout, keys private, the account stored privately.
    use std::os::unix::fs::PermissionsExt;
    let live = s.storage.join("live/a.test");
    for f in ["fullchain.pem", "privkey.pem", "cert.pem", "chain.pem"] {
        assert!(live.join(f).is_file(), "{f}");
    }
    assert_eq!(std::fs::metadata(live.join("privkey.pem")).unwrap().permissions().mode() & 0o777, 0o600);
    let accounts: Vec<_> = std::fs::read_dir(s.storage.join("accounts")).unwrap().collect();
    assert_eq!(accounts.len(), 1);
    let account_file = accounts[0].as_ref().unwrap().path().join("account.json");
    assert_eq!(std::fs::metadata(&account_file).unwrap().permissions().mode() & 0o777, 0o600);
    let account_before = std::fs::read_to_string(&account_file).unwrap();
    // Days left is published (pebble's default here: one hour).
    let days = s.proxy.metric("local_proxy_acme_certificate_days_left", &[("certificate", "a.test")]).await;
    assert!(days > 0.0 && days <= 1.0 / 24.0 + 0.001, "days left {days}");
    let status = s.proxy.handle.acme().status();
    assert_eq!(status["a.test"].failures, 0);
    assert!(status["a.test"].days_left(unix_now()).is_some());

    // A restart of the proxy reuses the account (the file is unchanged) and the certificates.
    let config = s.proxy.handle.config();
    s.proxy.shutdown.cancel();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let text = format!(
        r#"
[admin]
listen = "127.0.0.1:0"
[wan]
addresses = ["{WAN}"]
[mesh]
listen = "{MESH}"
[http]
https_port = 0
http_port = 0
[acme]
directory = "{}"
directory_ca_file = "{}"
storage = "{}"
names = ["a.test"]
"#,
        s.pebble.directory,
        s.pebble.api_ca.display(),
        s.storage.display()
    );
    let again = Proxy::start(&text).await;
    let serial_disk = served(again.mesh_https, "a.test", &s.pebble.root).await.expect("served after restart");
    assert_eq!(std::fs::read_to_string(&account_file).unwrap(), account_before);
    assert!(config.acme.is_some());
    drop(serial_disk);
    drop(s.dir);
}

fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_alpn01_through_the_ingress_then_served_everywhere() {
    let s = setup(SetupOptions { names: vec!["alpn.test"], http_01: false, ..Default::default() }).await;
    s.wait_issued("alpn.test", Duration::from_secs(60)).await;
    s.wait_noted("alpn.test").await;
    s.curl_everywhere("alpn.test").await;
    assert!(s.proxy.metric("local_proxy_acme_challenges_answered_total", &[("challenge", "tls-alpn-01")]).await >= 1.0);
    assert_eq!(s.proxy.handle.acme().status()["alpn.test"].last_challenges, ["tls-alpn-01"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http01_over_the_mesh() {
    let s = setup(SetupOptions { names: vec!["mesh.test"], via: Via::Mesh, tls_alpn_01: false, ..Default::default() })
        .await;
    s.wait_issued("mesh.test", Duration::from_secs(60)).await;
    s.wait_noted("mesh.test").await;
    s.curl_everywhere("mesh.test").await;
    assert_eq!(s.proxy.handle.acme().status()["mesh.test"].last_challenges, ["http-01"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_alpn01_over_the_mesh() {
    let s = setup(SetupOptions { names: vec!["mesh-alpn.test"], via: Via::Mesh, http_01: false, ..Default::default() })
        .await;
    s.wait_issued("mesh-alpn.test", Duration::from_secs(60)).await;
    s.wait_noted("mesh-alpn.test").await;
    s.curl_everywhere("mesh-alpn.test").await;
    assert_eq!(s.proxy.handle.acme().status()["mesh-alpn.test"].last_challenges, ["tls-alpn-01"]);
}

/// Requests on new TLS connections in a loop until stopped: (ok, failed).
fn load(
    addr: SocketAddr,
    name: &'static str,
    root: PathBuf,
) -> (Arc<AtomicU64>, Arc<AtomicU64>, tokio::sync::oneshot::Sender<()>) {
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let (stop_tx, mut stop) = tokio::sync::oneshot::channel();
    let (o, f) = (ok.clone(), failed.clone());
    tokio::spawn(async move {
        // Bounded in count as well as by the stop signal.
        for _ in 0..100_000 {
            if stop.try_recv().is_ok() {
                return;
            }
            let attempt = async {
                let s = TcpStream::connect(addr).await.ok()?;
                let mut tls = tls_over(s, name, &root).await.ok()?;
                let (status, _) = raw_get(&mut tls, name, "/").await;
                (status == 200).then_some(())
            };
            match tokio::time::timeout(Duration::from_secs(5), attempt).await {
                Ok(Some(())) => o.fetch_add(1, Ordering::Relaxed),
                _ => f.fetch_add(1, Ordering::Relaxed),
            };
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    (ok, failed, stop_tx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_lived_certificates_are_renewed_without_a_restart_or_a_failed_request() {
    // 30 s certificates: renewed 20 s into their life.
    let s = setup(SetupOptions {
        names: vec!["renew.test"],
        pebble: PebbleOptions { validity_secs: 30, ..Default::default() },
        ..Default::default()
    })
    .await;
    let first = s.wait_issued("renew.test", Duration::from_secs(60)).await;
    let (ok, failed, stop) = load(s.ingress_https[0], "renew.test", s.pebble.root.clone());
    let mut serials = vec![first];
    let end = Instant::now() + Duration::from_secs(75);
    while serials.len() < 3 {
        assert!(Instant::now() < end, "only {} certificates within 75 s: {serials:?}", serials.len());
        if let Some((serial, _)) = served(s.proxy.mesh_https, "renew.test", &s.pebble.root).await {
            if serials.last() != Some(&serial) {
                serials.push(serial);
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let _ = stop.send(());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    println!("renewals: {serials:?}; requests during them: {ok} ok, {failed} failed");
    assert!(ok > 100, "{ok} requests only");
    assert_eq!(failed, 0, "{failed} of {} requests failed across two renewals", ok + failed);
    assert!(s.orders("renew.test", "ok").await >= 3.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pebble_stopped_during_a_renewal_keeps_the_old_certificate_until_the_retry_succeeds() {
    let s = setup(SetupOptions {
        names: vec!["stop.test"],
        // Renewal due 53 s in; two attempts time out (5 s each) while pebble is stopped; renewed
        // by the next retry once it runs, well before the old certificate expires at 80 s.
        pebble: PebbleOptions { validity_secs: 80, ..Default::default() },
        order_timeout: "5s",
        ..Default::default()
    })
    .await;
    let first = s.wait_issued("stop.test", Duration::from_secs(60)).await;
    // Stop pebble before the renewal (two thirds of 40 s) and keep it stopped past it.
    s.pebble.process.signal("-STOP");
    let (ok, failed, stop) = load(s.ingress_https[0], "stop.test", s.pebble.root.clone());
    let end = Instant::now() + Duration::from_secs(75);
    loop {
        let failures = s.proxy.handle.acme().status()["stop.test"].failures;
        if failures >= 2 {
            break;
        }
        assert!(Instant::now() < end, "no failed renewal attempt while pebble was stopped");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Still the first certificate, still serving.
    let (serial, _) = served(s.proxy.mesh_https, "stop.test", &s.pebble.root).await.expect("old certificate served");
    assert_eq!(serial, first);
    let status = s.proxy.handle.acme().status()["stop.test"].clone();
    println!("while pebble was stopped: {status:?}");
    assert!(status.last_error.is_some());
    assert!(s.proxy.metric("local_proxy_acme_consecutive_failures", &[("certificate", "stop.test")]).await >= 2.0);
    s.pebble.process.signal("-CONT");
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some((serial, _)) = served(s.proxy.mesh_https, "stop.test", &s.pebble.root).await {
            if serial != first {
                break;
            }
        }
        assert!(Instant::now() < end, "not renewed within 30 s of pebble running again");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let _ = stop.send(());
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    println!("requests while pebble was stopped and after: {ok} ok, {failed} failed");
    assert_eq!(failed, 0);
    assert_eq!(s.proxy.handle.acme().status()["stop.test"].failures, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_bad_nonce_rejections_are_retried_until_issued() {
    let s = setup(SetupOptions {
        names: vec!["nonce.test"],
        pebble: PebbleOptions { nonce_reject_percent: 60, ..Default::default() },
        ..Default::default()
    })
    .await;
    s.wait_issued("nonce.test", Duration::from_secs(90)).await;
    let failed = s.orders("nonce.test", "refused").await + s.orders("nonce.test", "transport").await;
    println!("attempts refused (badNonce 3 times in a row) before the issuance: {failed}");
}

/// A reload that restarts ACME (a new site changes the default names) keeps the wait after a
/// refused name's failure: it is not ordered again at every reload (the CA blocks a name for
/// an hour after five failed validations), while the new name is issued at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_the_wait_after_a_failure() {
    let s = setup(SetupOptions {
        names: vec!["blocked.test"],
        pebble: PebbleOptions { blocklist: vec!["blocked.test"], ..Default::default() },
        retry: ("10m", "1h"),
        ..Default::default()
    })
    .await;
    wait_until(Duration::from_secs(30), "blocked.test refused", || async {
        s.proxy.handle.acme().status().get("blocked.test").is_some_and(|c| c.failures >= 1)
    })
    .await;
    let refused = s.orders("blocked.test", "refused").await;
    s.reload_adding_site("later.test").await;
    s.wait_issued("later.test", Duration::from_secs(60)).await;
    let blocked = s.proxy.handle.acme().status()["blocked.test"].clone();
    assert_eq!(s.orders("blocked.test", "refused").await, refused, "ordered again after the reload: {blocked:?}");
    assert!(blocked.next_attempt.is_some_and(|t| t >= unix_now() + 500) && blocked.failures >= 1, "{blocked:?}");
}

/// A restart (a new server on the same storage folder, as a new process) keeps the wait after
/// a refused name's failure too: the failed attempts are read back from the storage folder, so
/// a proxy restarted again and again (a crash loop, an operator trying things) does not order
/// the name at each start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_the_wait_after_a_failure() {
    let mut s = setup(SetupOptions {
        names: vec!["blocked.test"],
        pebble: PebbleOptions { blocklist: vec!["blocked.test"], ..Default::default() },
        retry: ("10m", "1h"),
        ..Default::default()
    })
    .await;
    wait_until(Duration::from_secs(30), "blocked.test refused", || async {
        s.proxy.handle.acme().status().get("blocked.test").is_some_and(|c| c.failures >= 1)
    })
    .await;
    let refused = s.orders("blocked.test", "refused").await;
    let wait_until_at = s.proxy.handle.acme().status()["blocked.test"].next_attempt;

    s.proxy.shutdown.cancel();
    let old_mesh = s.proxy.mesh_https;
    wait_until(Duration::from_secs(10), "the first server's listeners closed", || async move {
        tokio::net::TcpStream::connect(old_mesh).await.is_err()
    })
    .await;
    s.proxy = Proxy::start(&s.config).await;
    // The new server's ACME has the account and has looked at the certificate.
    wait_until(Duration::from_secs(30), "blocked.test planned after the restart", || async {
        s.proxy.handle.acme().status().get("blocked.test").is_some_and(|c| c.next_attempt.is_some())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let blocked = s.proxy.handle.acme().status()["blocked.test"].clone();
    assert_eq!(s.orders("blocked.test", "refused").await, refused, "ordered again after the restart: {blocked:?}");
    assert!(blocked.failures >= 1 && blocked.next_attempt == wait_until_at, "{blocked:?}, was {wait_until_at:?}");
}

/// A key on disk that does not match the certificate (a crash between an install's two
/// renames: the key goes first) is no certificate: when ACME next looks (here after a reload
/// that restarts it) a new one is ordered and served, instead of waiting for the old chain's
/// renewal date while nothing can serve the pair.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_that_does_not_match_its_certificate_is_replaced() {
    let s = setup(SetupOptions::default()).await;
    let first = s.wait_issued("a.test", Duration::from_secs(60)).await;
    let other = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let key = s.storage.join("live/a.test/privkey.pem");
    let target = std::fs::canonicalize(&key).unwrap_or(key.clone());
    std::fs::write(&target, other.serialize_pem()).unwrap();
    s.reload_adding_site("later.test").await;
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        let now = served(s.proxy.mesh_https, "a.test", &s.pebble.root).await.map(|(serial, _)| serial);
        if now.as_ref().is_some_and(|n| *n != first) {
            break;
        }
        assert!(Instant::now() < end, "no new certificate for a.test: {:?}", s.proxy.handle.acme().status());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(s.orders("a.test", "ok").await >= 2.0);
}

/// Behind an ingress that forwards only 443, HTTP-01 (tried first) fails: the retry answers
/// TLS-ALPN-01 instead, and the certificate is issued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_http01_is_followed_by_tls_alpn01() {
    let s = setup(SetupOptions { http_forwarded: false, ..Default::default() }).await;
    s.wait_issued("a.test", Duration::from_secs(60)).await;
    s.wait_noted("a.test").await;
    let status = s.proxy.handle.acme().status()["a.test"].clone();
    assert_eq!(status.last_challenges, ["tls-alpn-01"], "{status:?}");
    assert!(s.orders("a.test", "challenge_failed").await >= 1.0, "HTTP-01 was not tried first: {status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_name_is_reported_and_holds_up_no_other() {
    let s = setup(SetupOptions {
        names: vec!["good.test", "blocked.test"],
        pebble: PebbleOptions { blocklist: vec!["blocked.test"], ..Default::default() },
        ..Default::default()
    })
    .await;
    s.wait_issued("good.test", Duration::from_secs(60)).await;
    wait_until(Duration::from_secs(30), "blocked.test refused", || async {
        s.proxy.handle.acme().status().get("blocked.test").is_some_and(|c| c.last_error.is_some())
    })
    .await;
    let error = s.proxy.handle.acme().status()["blocked.test"].last_error.clone().unwrap();
    println!("refusal: {error}");
    assert!(error.contains("rejectedIdentifier") || error.contains("blocked"), "{error}");
    assert!(s.orders("blocked.test", "refused").await >= 1.0);
    assert!(served(s.proxy.mesh_https, "blocked.test", &s.pebble.root).await.is_none());
    // GET /status shows both (schema-checked): the CA's error for the refused name, none for
    // the other, which has its certificate.
    let (code, text) = http_get(s.proxy.admin, "/status").await;
    assert_eq!(code, 200, "{text}");
    let status: serde_json::Value =
        serde_json::from_str(text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_default()).unwrap();
    let schema =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/status-local-proxy.schema.json"))
            .unwrap();
    let validator = jsonschema::validator_for(&serde_json::from_str(&schema).unwrap()).unwrap();
    let errors: Vec<String> = validator.iter_errors(&status).map(|e| format!("{e} at {}", e.instance_path())).collect();
    assert!(errors.is_empty(), "schema violations: {errors:#?}\n{status:#}");
    let cert = |dir: &str| {
        status["acme"]["certificates"].as_array().unwrap().iter().find(|c| c["dir"] == dir).cloned().unwrap()
    };
    let blocked = cert("blocked.test");
    assert!(blocked["last_error"].as_str().is_some_and(|e| e.contains("rejectedIdentifier")), "{blocked}");
    assert!(blocked["failures"].as_u64().is_some_and(|n| n >= 1) && blocked["days_left"].is_null(), "{blocked}");
    let good = cert("good.test");
    assert!(good["last_error"].is_null() && good["failures"] == 0, "{good}");
    assert!(good["days_left"].as_f64().is_some_and(|d| d > 0.0), "{good}");
    // The status page's ACME section shows the same: the refusal and its count, none for the
    // issued one.
    let (code, page) = http_get(s.proxy.admin, "/").await;
    assert_eq!(code, 200, "{page}");
    let row = |dir: &str| {
        let start = page.find(&format!("<tr data-acme=\"{dir}\"")).unwrap_or_else(|| panic!("no {dir} row: {page}"));
        page[start..].split_once("</tr>").map(|(r, _)| r.to_owned()).unwrap_or_default()
    };
    let blocked = row("blocked.test");
    assert!(blocked.contains("rejectedIdentifier") && blocked.contains("no certificate yet"), "{blocked}");
    assert!(!blocked.contains("data-failures=\"0\""), "{blocked}");
    let good = row("good.test");
    assert!(good.contains("data-failures=\"0\"") && good.ends_with("<td>0</td><td>–</td>"), "{good}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certbot_live_directory_is_picked_up_and_renewed_in_place() {
    // certbot's tree: live/old.test/*.pem → ../../archive/old.test/*1.pem, a certificate two
    // thirds through its life (from another CA), covering a name no longer wanted too.
    let prepare: fn(&Path) = |storage| {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["old.test".to_string(), "gone.test".to_string()]).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, "certbot's certificate");
        // From 2020 to tomorrow: far past two thirds, still valid.
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        let (y, m, d) = test_support::civil_from_days(unix_now() / 86_400 + 1);
        params.not_after = rcgen::date_time_ymd(y as i32, m as u8, d as u8);
        let cert = params.self_signed(&key).unwrap();
        let (live, archive) = (storage.join("live/old.test"), storage.join("archive/old.test"));
        std::fs::create_dir_all(&live).unwrap();
        std::fs::create_dir_all(&archive).unwrap();
        for (stem, text) in
            [("cert", cert.pem()), ("chain", cert.pem()), ("fullchain", cert.pem()), ("privkey", key.serialize_pem())]
        {
            std::fs::write(archive.join(format!("{stem}1.pem")), text).unwrap();
            std::os::unix::fs::symlink(format!("../../archive/old.test/{stem}1.pem"), live.join(format!("{stem}.pem")))
                .unwrap();
        }
    };
    let s = setup(SetupOptions { names: vec!["old.test"], prepare: Some(prepare), ..Default::default() }).await;
    s.wait_issued("old.test", Duration::from_secs(60)).await;
    s.curl_everywhere("old.test").await;
    let live = s.storage.join("live/old.test");
    assert_eq!(
        std::fs::read_link(live.join("fullchain.pem")).unwrap(),
        Path::new("../../archive/old.test/fullchain2.pem")
    );
    assert_eq!(std::fs::read_link(live.join("privkey.pem")).unwrap(), Path::new("../../archive/old.test/privkey2.pem"));
    assert!(!s.storage.join("live/old.test-0001").exists(), "renewed in place, not beside");
    // The renewed certificate covers the wanted name only.
    let names = local_proxy::acme::storage::read_cert(&live.join("fullchain.pem")).unwrap().unwrap().names;
    assert_eq!(names, ["old.test"]);
}

/// A reload that restarts ACME keeps the certificates it still asks for on `/status` and in
/// their series while the account is fetched again: here from a CA that does not answer, so
/// for good. They were cleared at the restart, and an operator saw no certificates at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_of_acme_keeps_the_status_while_the_ca_is_away() {
    let s = setup(SetupOptions { names: vec!["kept.test"], ..Default::default() }).await;
    s.wait_issued("kept.test", Duration::from_secs(60)).await;
    let closed = format!("https://127.0.0.1:{}/dir", free_port());
    assert!(s.config.contains(&s.pebble.directory));
    let away = s.config.replace(&s.pebble.directory, &closed);
    s.proxy.handle.reload(local_proxy::config::from_toml_str(&away).unwrap()).await.unwrap();
    wait_until(Duration::from_secs(10), "the account asked of the CA that is away", || async {
        s.proxy.handle.acme().account_error().is_some()
    })
    .await;
    let status = s.proxy.handle.acme().status();
    let kept = status.get("kept.test").expect("still on the status");
    assert_eq!(kept.names, ["kept.test"]);
    assert!(kept.not_after.is_some(), "with its certificate's end");
    let metrics = http_get(s.proxy.admin, "/metrics").await.1;
    let series = |name: &str| metrics.lines().any(|l| l.starts_with(name) && l.contains("certificate=\"kept.test\""));
    assert!(series("local_proxy_acme_certificate_days_left"), "{metrics}");
}

/// A certificate a reload no longer asks for leaves `/status` and its series: its count of
/// failed orders would otherwise keep `LocalProxyAcmeFailing` firing until a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_a_reload_drops_takes_its_failure_count_along() {
    let s = setup(SetupOptions {
        names: vec!["kept.test", "dropped.test"],
        pebble: PebbleOptions { blocklist: vec!["dropped.test"], ..Default::default() },
        ..Default::default()
    })
    .await;
    s.wait_issued("kept.test", Duration::from_secs(60)).await;
    wait_until(Duration::from_secs(30), "dropped.test refused", || async {
        s.proxy.handle.acme().status().get("dropped.test").is_some_and(|c| c.failures >= 1)
    })
    .await;
    let gauge = |text: &str, dir: &str| {
        text.lines().any(|l| {
            l.starts_with("local_proxy_acme_consecutive_failures") && l.contains(&format!("certificate=\"{dir}\""))
        })
    };
    let before = http_get(s.proxy.admin, "/metrics").await.1;
    assert!(gauge(&before, "dropped.test"), "{before}");
    let site = format!("[[site]]\nhost = \"dropped.test\"\nupstream = \"http://{}\"\n", s.upstream);
    assert!(s.config.contains(&site));
    let fewer = s.config.replace(&site, "");
    s.proxy.handle.reload(local_proxy::config::from_toml_str(&fewer).unwrap()).await.unwrap();
    wait_until(Duration::from_secs(10), "dropped.test gone from the status", || async {
        !s.proxy.handle.acme().status().contains_key("dropped.test")
    })
    .await;
    let after = http_get(s.proxy.admin, "/metrics").await.1;
    assert!(!gauge(&after, "dropped.test"), "{after}");
    assert!(gauge(&after, "kept.test"), "{after}");
}
