//! The example config loads; every file in tests/invalid/ fails naming its field.
#![allow(clippy::unwrap_used, clippy::result_large_err)]

use std::path::Path;

use local_proxy::config::{self, ConfigError, MeshListen, Protocol};

#[test]
fn example_config_loads() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/local-proxy.toml");
    let c = config::load(&path).unwrap();
    assert_eq!(c.mesh.listen, MeshListen::Auto);
    assert_eq!(c.mesh.trusted_ingress.len(), 2);
    assert_eq!(c.drain_timeout, std::time::Duration::from_secs(10));
    assert_eq!(c.http.https_port, 443);
    assert!(c.sites.iter().any(|s| s.host == "wazuh.example.org" && s.insecure_skip_verify));
    let relay = c.streams.iter().find(|s| s.name == "turn-relay").unwrap();
    assert_eq!(relay.protocol, Protocol::Udp);
    assert_eq!(relay.listen_ports.len(), 41);
    assert_eq!(relay.upstream_for(0, 49170).port(), 49170);
    // The quiet set removes Server; the security set adds HSTS.
    let cloud = c.sites.iter().find(|s| s.host == "cloud.example.org").unwrap();
    assert!(cloud.response_headers.iter().any(|(n, v)| n == "server" && v.is_none()));
    assert!(cloud.response_headers.iter().any(|(n, _)| n == "strict-transport-security"));
    // Routes come in match order; the outpost's is public, the others inherit the site's auth.
    let photos = c.sites.iter().find(|s| s.host == "photos.example.org").unwrap();
    let auth = photos.forward_auth.as_ref().unwrap();
    assert_eq!(auth.user_header, "x-authentik-username");
    let names: Vec<&str> = photos.routes.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["outpost", "ws", "share"]);
    assert!(photos.routes[0].forward_auth.is_none() && photos.routes[0].upstreams.is_some());
    assert_eq!(photos.routes[1].forward_auth.as_ref(), Some(auth));
    // Middlewares: a site's defaults, a route's own rate limit over its site's, one inherited.
    let hostile = cloud.middlewares.hostile.as_ref().unwrap();
    assert!(hostile.close_user_agents.iter().any(|u| u == "sqlmap"));
    assert_eq!(hostile.refuse_headers.len(), 2);
    assert_eq!(photos.middlewares.rate_limit.as_ref().unwrap().requests, 20);
    let share = photos.routes.iter().find(|r| r.name == "share").unwrap();
    assert_eq!(share.middlewares.rate_limit.as_ref().unwrap().requests, 2);
    assert!(share.middlewares.compression.is_some() && photos.middlewares.compression.is_none());
    let ws = photos.routes.iter().find(|r| r.name == "ws").unwrap();
    assert_eq!(ws.middlewares.rate_limit, photos.middlewares.rate_limit, "inherited");
    let app = c.sites.iter().find(|s| s.host == "app.example.org").unwrap();
    assert!(app.middlewares.cors.as_ref().unwrap().allow_credentials);
}

#[test]
fn empty_config_has_defaults() {
    let c = config::from_toml_str("").unwrap();
    assert_eq!(c.http.http_port, 80);
    assert_eq!(c.mesh.listen, MeshListen::Off);
    assert!(c.mesh.trusted_ingress.is_empty());
    assert_eq!(c.drain_timeout, std::time::Duration::from_secs(10));
    assert!(c.admin.is_none());
    assert_eq!(c.threads, None, "one worker thread per core");
    assert_eq!(config::from_toml_str("threads = 1").unwrap().threads, Some(1));
}

/// WAN and mesh addresses that bind apart pass: one wildcard per family, a wildcard of the
/// other family beside the mesh, and anything at all on ports chosen by the kernel.
#[test]
fn listen_addresses_that_bind_apart_pass() {
    for text in [
        "[wan]\naddresses = [\"0.0.0.0\", \"::\"]",
        "[wan]\naddresses = [\"0.0.0.0\", \"2001:db8::2\"]\n[mesh]\nlisten = \"auto\"",
        "[wan]\naddresses = [\"192.168.1.2\", \"2001:db8::2\"]\n[mesh]\nlisten = \"200:1111:2222:3333:4444:5555:6666:7777\"",
        "[wan]\naddresses = [\"0.0.0.0\", \"127.0.0.1\", \"::\"]\n[mesh]\nlisten = \"auto\"\n[http]\nhttps_port = 0\nhttp_port = 0",
    ] {
        if let Err(e) = config::from_toml_str(text) {
            panic!("{text}: {e}");
        }
    }
}

#[test]
fn every_invalid_file_fails_naming_its_field() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/invalid");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        seen += 1;
        let text = std::fs::read_to_string(&path).unwrap();
        // First line: `# field: <name>` for each field the error must name.
        let fields: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("# field: ")).collect();
        assert!(!fields.is_empty(), "{} has no `# field:` line", path.display());
        let err = config::load(&path).expect_err(&format!("{} must fail", path.display()));
        let msg = err.to_string();
        for f in fields {
            assert!(msg.contains(f), "{}: `{msg}` does not name `{f}`", path.display());
        }
    }
    assert!(seen >= 10, "only {seen} invalid configs");
}

#[test]
fn all_errors_are_reported_at_once() {
    let err = config::from_toml_str(
        r#"
        [wan]
        addresses = ["nope"]
        proxy_header_timeout = "soon"
        [[site]]
        host = "a.example.org"
        upstream = "ftp://x"
        "#,
    )
    .unwrap_err();
    let ConfigError::Invalid(errors) = err else { panic!("expected Invalid, got {err}") };
    let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(fields, ["wan.addresses[0]", "wan.proxy_header_timeout", "site[0].upstream"]);
}

#[test]
fn environment_overrides_the_file() {
    figment::Jail::expect_with(|jail| {
        jail.create_file("lp.toml", "[http]\nhttps_port = 443\n")?;
        jail.set_env("LOCAL_PROXY_HTTP__HTTPS_PORT", "8443");
        jail.set_env("LOCAL_PROXY_ADMIN__LISTEN", "127.0.0.1:9181");
        let c = config::load(Path::new("lp.toml")).map_err(|e| e.to_string())?;
        assert_eq!(c.http.https_port, 8443);
        assert_eq!(c.admin, Some("127.0.0.1:9181".parse().unwrap()));
        Ok(())
    });
}

#[test]
fn missing_file_is_an_error() {
    assert!(config::load(Path::new("/nonexistent/local-proxy.toml")).is_err());
}

/// Every enum-valued field is read through `Choice`: each accepted spelling works, and every
/// misspelling in one file is reported together, under its field, naming every allowed value.
#[test]
fn misspelt_choices_are_all_reported_with_every_allowed_value() {
    let c = config::from_toml_str(
        r#"
        [http]
        access_log = { path = "/var/log/local-proxy/access.log", format = "json" }
        [[site]]
        host = "a.example.org"
        upstream = ["http://192.0.2.1:80", "http://192.0.2.2:80"]
        balance = "random_two"
        [[stream]]
        name = "t"
        listen = "1515"
        upstream = "192.0.2.3:1515"
        proxy_protocol = "v2"
        balance = "least_conn"
        health = { check = "tcp" }
        [[stream]]
        name = "u"
        listen = "3478/udp"
        upstream = "192.0.2.4:3478"
        health = { check = "none" }
        "#,
    )
    .unwrap();
    assert_eq!(c.sites[0].upstreams.balance, shared::balance::Policy::RandomTwo);
    assert!(c.streams[0].proxy_protocol);
    assert_eq!(c.streams[0].upstreams.balance, shared::balance::Policy::LeastConn);
    assert_eq!(c.streams[0].upstreams.health.check, config::Check::Tcp);
    assert_eq!(c.streams[1].upstreams.health.check, config::Check::None);

    let err = config::from_toml_str(
        r#"
        [http]
        access_log = { path = "/var/log/local-proxy/access.log", format = "clf" }
        [[site]]
        host = "a.example.org"
        upstream = "http://192.0.2.1:80"
        balance = "bandwidth"
        [[stream]]
        name = "t"
        listen = "1515"
        upstream = "192.0.2.3:1515"
        proxy_protocol = "v1"
        health = { check = "http" }
        [[stream]]
        name = "u"
        listen = "3478/udp"
        upstream = "192.0.2.4:3478"
        health = { check = "tcp" }
        [firewall]
        interfaces = ["eth0"]
        ingress_names = ["ingress.example.org"]
        on_no_answer = "ajar"
        [acme]
        names = ["a.example.org"]
        contact = ["admin@example.org"]
        key_type = "rsa-4096"
        "#,
    )
    .unwrap_err();
    let ConfigError::Invalid(errors) = err else { panic!("expected Invalid, got {err}") };
    let got: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    for want in [
        "http.access_log.format: `clf` is not json",
        "site[0].balance: `bandwidth` is not round_robin, least_conn or random_two",
        "stream[0].proxy_protocol: `v1` is not none or v2",
        "stream[0].health.check: `http` is not none, tcp or udp",
        "stream[1].health.check: `tcp` is for tcp streams: this one takes udp or none",
        "firewall.on_no_answer: `ajar` is not closed or open",
        "acme.key_type: `rsa-4096` is not ecdsa-p256 or rsa-2048",
    ] {
        assert!(got.iter().any(|g| g == want), "no `{want}` in {got:#?}");
    }
}

/// The firewall table's name is read without validating the rest (the package's prerm removes
/// the table with it): a config whose token file is gone still names its table; one that does
/// not parse gives the default name and says why.
#[test]
fn the_firewall_table_is_named_whatever_else_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lp.toml");
    std::fs::write(
        &path,
        "[admin]\nlisten = \"127.0.0.1:9181\"\ntoken_file = \"/nonexistent/admin-token\"\n\
         [firewall]\ntable = \"home_allow\"\ningress = [\"ingress1.example.org\"]\n",
    )
    .unwrap();
    assert!(config::load(&path).is_err(), "the token file is missing: the config is invalid");
    let (table, error) = config::firewall_table(&path);
    assert_eq!((table.as_str(), error.is_none()), ("home_allow", true));
    std::fs::write(&path, "[firewall\ntable = \"home_allow\"\n").unwrap();
    let (table, error) = config::firewall_table(&path);
    assert_eq!(table, local_proxy::config::firewall::DEFAULT_TABLE);
    assert!(error.is_some());
}
