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
