//! The `[acme]` section: defaults from the sites, shorthands, the masked EAB key, the example.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use local_proxy::config;

/// The example's `[acme]` block with its keys uncommented (it ships commented out: ACME is off
/// by default). The block runs from `# [acme]` to the first line that is not a comment.
fn example_with_acme_on() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/local-proxy.toml");
    let text = std::fs::read_to_string(path).unwrap();
    let mut inside = false;
    let mut out = String::new();
    for line in text.lines() {
        inside = line == "# [acme]" || (inside && line.starts_with('#'));
        let key = line.strip_prefix("# ").filter(|l| {
            l.starts_with("[acme")
                || l.split_once(" = ")
                    .is_some_and(|(k, _)| k.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
        });
        match key {
            Some(l) if inside => out.push_str(l),
            _ => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[test]
fn the_example_ships_acme_off_and_its_commented_block_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/local-proxy.toml");
    assert!(config::load(&path).unwrap().acme.is_none(), "the example must ship with [acme] commented out");
    let on = example_with_acme_on();
    assert!(
        on.lines().any(|l| l == "[acme]")
            && on
                .lines()
                .any(|l| l == "hmac_key = \"zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W\"")
    );
    // Its directory_ca_file is read: a file missing here is named; a real one loads.
    let e = config::from_toml_str(&on).unwrap_err().to_string();
    assert!(e.contains("acme.directory_ca_file") && e.contains("/etc/local-proxy/acme-ca.pem"), "{e}");
    let tmp = tempfile::tempdir().unwrap();
    let ca = tmp.path().join("acme-ca.pem");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    std::fs::write(&ca, params.self_signed(&rcgen::KeyPair::generate().unwrap()).unwrap().pem()).unwrap();
    let on = on.replace("/etc/local-proxy/acme-ca.pem", ca.to_str().unwrap());
    let c = config::from_toml_str(&on).unwrap();
    let acme = c.acme.as_ref().unwrap();
    assert_eq!(acme.directory_ca_file.as_deref(), Some(ca.as_path()));
    // Every key of the block took (the defaults it documents, and the examples).
    assert_eq!(acme.names, ["cloud.example.org", "grafana.example.org"]);
    assert_eq!(acme.contact, ["mailto:admin@example.org"]);
    assert_eq!(acme.directory, config::acme::LETS_ENCRYPT);
    assert_eq!(acme.key_type, config::acme::KeyType::EcdsaP256);
    assert_eq!(acme.storage, Path::new(config::acme::DEFAULT_STORAGE));
    assert!(acme.http_01 && acme.tls_alpn_01 && acme.external_account.is_some());
    assert_eq!(acme.retry_min, std::time::Duration::from_secs(120));
    assert_eq!(acme.retry_max, std::time::Duration::from_secs(6 * 3600));
    assert_eq!(acme.order_timeout, std::time::Duration::from_secs(300));
    // Without the names line: every site host and alias that is not a wildcard.
    let all = on.replace("\nnames = [", "\n# names = [");
    let acme = config::from_toml_str(&all).unwrap().acme.unwrap();
    assert!(acme.names.contains(&"cloud.example.org".to_string()) && acme.names.len() > 2);
    assert!(acme.names.iter().all(|n| !n.starts_with("*.")));
}

#[test]
fn acme_defaults_come_from_the_sites() {
    let c = config::from_toml_str(
        r#"
        [acme]
        [[site]]
        host = "a.example.org"
        aliases = ["www.a.example.org", "*.apps.example.org"]
        upstream = "http://127.0.0.1:8080"
        [[site]]
        host = "*.wild.example.org"
        upstream = "http://127.0.0.1:8080"
        "#,
    )
    .unwrap();
    let acme = c.acme.unwrap();
    assert_eq!(acme.directory, config::acme::LETS_ENCRYPT);
    assert_eq!(acme.names, ["a.example.org", "www.a.example.org"]);
    assert_eq!(acme.key_type, config::acme::KeyType::EcdsaP256);
    assert!(acme.http_01 && acme.tls_alpn_01);
    assert_eq!(acme.storage, Path::new(config::acme::DEFAULT_STORAGE));
    assert_eq!(c.tls.acme_live_dir.as_deref(), Some(Path::new("/var/lib/local-proxy/acme/live")));
    assert_eq!(acme.retry_min, std::time::Duration::from_secs(120));
}

#[test]
fn acme_external_account_key_is_masked_and_staging_is_a_shorthand() {
    let c = config::from_toml_str(
        r#"
        [acme]
        directory = "letsencrypt-staging"
        names = ["a.example.org"]
        contact = ["mailto:me@example.org", "you@example.org"]
        key_type = "rsa-2048"
        [acme.external_account]
        kid = "kid-1"
        hmac_key = "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W"
        "#,
    )
    .unwrap();
    let acme = c.acme.unwrap();
    assert_eq!(acme.directory, config::acme::LETS_ENCRYPT_STAGING);
    assert_eq!(acme.contact, ["mailto:me@example.org", "mailto:you@example.org"]);
    assert_eq!(acme.key_type, config::acme::KeyType::Rsa2048);
    let debug = format!("{acme:?}");
    assert!(debug.contains("MASKED") && !debug.contains("zWNDZM6eQ"), "{debug}");
    // enabled = false turns the section off.
    let off = config::from_toml_str("[acme]\nenabled = false\n").unwrap();
    assert!(off.acme.is_none());
    // Off, its values are checked but no file it names is read: a test CA's file may be gone.
    let off = config::from_toml_str("[acme]\nenabled = false\ndirectory_ca_file = \"/nonexistent/ca.pem\"\n").unwrap();
    assert!(off.acme.is_none());
}
