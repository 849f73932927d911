//! Every example config loads; every file in tests/invalid/ is refused with an error that
//! names the field given in its `# expect:` line.

use std::path::Path;

#[test]
fn examples_are_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("examples dir") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "toml") {
            ingress::Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
            n += 1;
        }
    }
    assert!(n >= 1, "no example configs found");
}

#[test]
fn invalid_configs_are_refused_naming_the_field() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/invalid");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("invalid dir") {
        let path = entry.expect("entry").path();
        let text = std::fs::read_to_string(&path).expect("read");
        let expect = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{} lacks an `# expect:` first line", path.display()));
        let err = match ingress::Config::load(&path) {
            Ok(_) => panic!("{} was accepted", path.display()),
            Err(e) => e.to_string(),
        };
        assert!(err.contains(expect), "{}: error does not mention `{expect}`:\n{err}", path.display());
        assert!(err.contains(&path.display().to_string()), "the error names the file");
        n += 1;
    }
    assert!(n >= 8);
}

/// The example spells out the flap damping knobs with their documented defaults; a pool
/// that leaves them out gets the same.
#[test]
fn example_damping_knobs_are_the_defaults() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/ingress.toml");
    let cfg = ingress::Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let default = shared::damping::DampingConfig::default();
    assert_eq!(cfg.pools["home"].health.damping, default);
    assert_eq!(cfg.pools["lab"].health.damping, default);
}

/// A pool's probe port, when `health.port` is not set, comes from its first TCP service:
/// probes are TCP connects, and a UDP service listed first (WireGuard's 51820) would have
/// them all refused and every path down. With only UDP services, the first one's port, with a
/// warning (home may answer TCP there too, as TURN does, so it is not refused); none once
/// `health.port` is set or every path fixes its port.
#[test]
fn the_default_probe_port_is_a_tcp_services() {
    let dir = tempfile::tempdir().expect("tempdir");
    let load = |pool: &str, services: &str| {
        let path = dir.path().join("probe-port.toml");
        std::fs::write(&path, format!("{pool}{services}")).expect("write");
        let config = ingress::Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
        let warned: Vec<String> = config.warnings.iter().map(|w| w.field.clone()).collect();
        (config.pools["home"].health.port, warned)
    };
    let pool = "[pool.home]\npaths = [{ name = \"wan1\", address = \"192.0.2.1\", weight = 1 }]\n";
    let wg = "[[service]]\nname = \"wg\"\nlisten = [\"0.0.0.0:51820\"]\nprotocol = \"udp\"\npool = \"home\"\n";
    let https = "[[service]]\nname = \"https\"\nlisten = [\"0.0.0.0:443\"]\npool = \"home\"\n";
    assert_eq!(load(pool, &format!("{wg}{https}")), (443, vec![]));
    assert_eq!(load(pool, wg), (51820, vec!["pool.home.health.port".to_string()]));
    let set = format!("{pool}[pool.home.health]\nport = 443\n");
    assert_eq!(load(&set, wg), (443, vec![]));
    let fixed = "[pool.home]\npaths = [{ name = \"wan1\", address = \"192.0.2.1:8443\" }]\n";
    assert_eq!(load(fixed, wg).1, Vec::<String>::new());
}

/// A fixed mesh address outside Yggdrasil's 200::/7 is taken, with a warning.
#[test]
fn a_mesh_tier_outside_yggdrasil_is_warned_about() {
    let dir = tempfile::tempdir().expect("tempdir");
    let load = |mesh: &str| {
        let path = dir.path().join("mesh.toml");
        let text = format!(
            "[pool.home]\npaths = [{{ name = \"wan1\", address = \"192.0.2.1\" }}]\nmesh = \"{mesh}\"\n\
             [[service]]\nname = \"https\"\nlisten = [\"0.0.0.0:443\"]\npool = \"home\"\n"
        );
        std::fs::write(&path, text).expect("write");
        let config = ingress::Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
        config.warnings.iter().map(|w| w.field.clone()).collect::<Vec<_>>()
    };
    assert_eq!(load("200:1111:2222:3333:4444:5555:6666:7777"), Vec::<String>::new());
    assert_eq!(load("2001:db8::9"), vec!["pool.home.mesh".to_string()]);
}

/// A listen address this host does not have (now) is taken, with a warning: the start waits
/// for it (a failover address that comes later), where a typo would wait for ever.
#[test]
fn a_listen_address_not_on_this_host_is_warned_about() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("listen.toml");
    let load = |listen: &str| {
        let text = format!(
            "[pool.home]\npaths = [{{ name = \"wan1\", address = \"192.0.2.1\" }}]\n\
             [[service]]\nname = \"https\"\nlisten = [\"{listen}\"]\npool = \"home\"\n"
        );
        std::fs::write(&path, text).expect("write");
        let config = ingress::Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
        config.warnings.iter().map(|w| w.field.clone()).collect::<Vec<_>>()
    };
    assert_eq!(load("0.0.0.0:443"), Vec::<String>::new());
    assert_eq!(load("127.0.0.1:443"), Vec::<String>::new());
    assert_eq!(load("[::]:443"), Vec::<String>::new());
    // TEST-NET-3: on no interface of a test machine.
    assert_eq!(load("203.0.113.77:443"), vec!["service `https`.listen[0]".to_string()]);
}

/// `check` prints a warning, names its file and field, and passes.
#[test]
fn check_prints_warnings_and_passes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("wg-only.toml");
    let text = "[pool.home]\npaths = [{ name = \"wan1\", address = \"192.0.2.1\" }]\n\
                [[service]]\nname = \"wg\"\nlisten = [\"0.0.0.0:51820\"]\nprotocol = \"udp\"\npool = \"home\"\n";
    std::fs::write(&path, text).expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ingress"))
        .args(["check", "-c"])
        .arg(&path)
        .output()
        .expect("run ingress check");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("wg-only.toml: warning: pool.home.health.port: not set"), "{err}");
}

/// Two UDP services on one port, one on the wildcard and one on a specific address, both with
/// `udp_reuseport`: their sockets all set SO_REUSEPORT (on one loop too), so the kernel binds
/// both, and the config is taken. Without it on both, refused
/// (tests/invalid/udp-wildcard-beside-specific.toml).
#[test]
fn udp_wildcard_beside_specific_is_taken_when_both_share_the_port() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("udp-reuseport.toml");
    let service = |name: &str, listen: &str| {
        format!(
            "[[service]]\nname = \"{name}\"\nlisten = [\"{listen}\"]\nprotocol = \"udp\"\npool = \"home\"\nudp_reuseport = true\n"
        )
    };
    let text = format!(
        "[pool.home]\npaths = [{{ name = \"wan1\", address = \"192.0.2.1\" }}]\n{}{}",
        service("dns", "0.0.0.0:53"),
        service("dns-lan", "10.0.0.5:53")
    );
    std::fs::write(&path, text).expect("write");
    ingress::Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
}
