//! The local proxy's ACME through the real ingress nodes, in the namespace topology, with
//! Debian's `pebble` as the CA on an internet host (the `stranger` namespace: neither an
//! ingress nor home) and `pebble-challtestsrv` as the CA's DNS, resolving the site names to
//! the ingress nodes:
//!
//! - ingress1's pool is both WANs plus the mesh tier (the deployed shape); ingress2's pool is
//!   the mesh tier alone, so everything through ingress2 reaches home over Yggdrasil, with its
//!   PROXY v2 header read because the local proxy lists both nodes' Yggdrasil addresses in
//!   `mesh.trusted_ingress`. Before the first certificate every path answers its probe "not
//!   ready" and the ingress tries them all, the mesh tier included: first issuance must work so;
//! - HTTP-01: a.test resolves to ingress1, b.test to ingress2; pebble's validation requests go
//!   through each ingress's plain-HTTP service (PROXY v2) to home's port 80 (WAN or mesh);
//! - then a SIGHUP turns HTTP-01 off and adds c.test (→ ingress1) and d.test (→ ingress2):
//!   TLS-ALPN-01 through each ingress's SNI passthrough to home's port 443;
//! - every name then answers `curl --cacert pebble-root https://name/` from the client through
//!   both ingress nodes, and from the mesh-only client over Yggdrasil (a direct mesh client,
//!   no header); the LAN service sees the client's own address in X-Forwarded-For either way.

mod acme;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use acme::*;
use anyhow::{bail, Context, Result};
use netns::metrics;
use netns::topology::{addr, Role, Topology};

#[test]
fn acme_through_the_ingress_nodes() {
    in_topology(30, run);
}

fn run(t: &mut Topology, b: &AcmeBins) -> Result<()> {
    let start = Instant::now();
    started(start, &format!("topology up ({}; dir {})", t.tag, t.dir().display()));
    let api_ca = pebble_api_cert(t.dir())?;
    let root = start_pebble(t, &api_ca, &PebbleOptions::default())?;
    resolve_at(t, "b.test", addr::INGRESS2)?;
    resolve_at(t, "d.test", addr::INGRESS2)?;
    started(start, "pebble and its DNS up in the CA's host (a.test, c.test → ingress1; b.test, d.test → ingress2)");
    start_lan(t, b)?;
    let mesh = t.home_mesh_addr().context("home mesh address")?;
    start_ingress(t, b, Role::Ingress1, &ingress_config(true, mesh))?;
    start_ingress(t, b, Role::Ingress2, &ingress_config(false, mesh))?;
    let cfg = local_proxy_config(t, &api_ca, &["a.test", "b.test"], true, "")?;
    start_local_proxy(t, b, &cfg)?;
    started(
        start,
        "ingress1 (wan1, wan2, mesh), ingress2 (mesh only) and local-proxy up (no certificate yet: HTTP-01 only)",
    );

    wait_served(t, &["a.test", "b.test"], &root, Duration::from_secs(60))?;
    let http01 = challenges_answered(t, "http-01")?;
    if http01 < 2.0 {
        bail!("HTTP-01 answered {http01} times, want at least 2 (a.test via ingress1, b.test via ingress2)");
    }
    // Nothing but the CA spoke plain HTTP: each node's http service carried its validations.
    for role in [Role::Ingress1, Role::Ingress2] {
        let n = accepted(t, role, "http")?;
        if n < 1.0 {
            bail!("{}'s http service accepted {n} connections: the CA's validation did not pass it", role.as_str());
        }
    }
    // b.test's validation could only come through ingress2's mesh tier: the mesh listener took
    // its PROXY header (no refused header), and the LAN service sees the real client's address
    // through it, while a direct mesh client is itself the client.
    let m = metrics::scrape(t.ns(Role::Home), LP_ADMIN)?;
    let mesh_http = m.get("local_proxy_connections_total", &[("listener", "mesh-http"), ("result", "accepted")]);
    if mesh_http.unwrap_or(0.0) < 1.0 {
        bail!(
            "the mesh HTTP listener accepted {mesh_http:?} connections: b.test's validation did not come over the mesh"
        );
    }
    for listener in ["mesh-http", "mesh-https"] {
        for result in ["bad_header", "header_timeout"] {
            if let Some(n) = m.get("local_proxy_connections_total", &[("listener", listener), ("result", result)]) {
                bail!("{listener}: {n} connections refused ({result}): the ingress's mesh tier header was not read");
            }
        }
    }
    let meshc = t.ygg(Role::Meshc).context("meshc has no yggdrasil")?.address;
    for (role, via, want) in [
        (Role::Client, IpAddr::from(addr::INGRESS2), IpAddr::from(addr::CLIENT)),
        (Role::Client, IpAddr::from(addr::INGRESS1), IpAddr::from(addr::CLIENT)),
        (Role::Meshc, IpAddr::from(mesh), IpAddr::from(meshc)),
    ] {
        let body = curl(t, role, "b.test", via, &root)?;
        let xff = forwarded_for(&body);
        if xff.as_deref() != Some(want.to_string().as_str()) {
            bail!("b.test via {via}: X-Forwarded-For {xff:?}, want {want}; the LAN service saw:\n{body}");
        }
    }
    started(
        start,
        "a.test and b.test issued over HTTP-01 through ingress1 and ingress2 (its mesh tier); curl OK via both and \
         the mesh; X-Forwarded-For is the client via ingress2's mesh tier and the mesh client direct",
    );

    // SIGHUP: HTTP-01 off, two more names: TLS-ALPN-01 through each ingress's SNI passthrough.
    let cfg2 = local_proxy_config(t, &api_ca, &["a.test", "b.test", "c.test", "d.test"], false, "")?;
    std::fs::write(t.dir().join("local-proxy.toml"), &cfg2)?;
    t.proc_mut("local-proxy")?.signal("HUP")?;
    wait_served(t, &["c.test", "d.test"], &root, Duration::from_secs(90))?;
    let alpn = challenges_answered(t, "tls-alpn-01")?;
    if alpn < 2.0 {
        bail!("TLS-ALPN-01 answered {alpn} times, want at least 2 (c.test via ingress1, d.test via ingress2)");
    }
    if challenges_answered(t, "http-01")? != http01 {
        bail!("HTTP-01 was answered after it was turned off");
    }
    // The first two were not ordered again (not due).
    wait_served(t, &["a.test", "b.test"], &root, Duration::from_secs(10))?;
    let m = metrics::scrape(t.ns(Role::Home), LP_ADMIN)?;
    for name in ["a.test", "b.test", "c.test", "d.test"] {
        let ok = m.get("local_proxy_acme_orders_total", &[("certificate", name), ("result", "ok")]);
        if ok != Some(1.0) {
            bail!("{name}: orders ok = {ok:?}, want exactly 1");
        }
    }
    started(
        start,
        "c.test and d.test issued over TLS-ALPN-01 through ingress1 and ingress2; all four served everywhere",
    );
    eprintln!(
        "RESULT acme through the ingress nodes: HTTP-01 and TLS-ALPN-01 via both ingress nodes (ingress2 over its \
         mesh tier alone, PROXY v2 read from its Yggdrasil address), served via both and the mesh, in {:.1}s",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
