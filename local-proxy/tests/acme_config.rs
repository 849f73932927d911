//! The `[acme]` section: defaults from the sites, shorthands, the masked EAB key, the example.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use local_proxy::config;

#[test]
fn the_example_certifies_its_sites_without_wildcards() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/local-proxy.toml");
    let c = config::load(&path).unwrap();
    let acme = c.acme.as_ref().unwrap();
    assert!(acme.names.contains(&"cloud.example.org".to_string()));
    assert!(acme.names.iter().all(|n| !n.starts_with("*.")));
    assert_eq!(acme.contact, ["mailto:admin@example.org"]);
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
}
