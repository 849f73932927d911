//! The config the scenarios give `ingress` is one it accepts (`ingress check -c`), so a
//! scenario failing later is about behaviour, not config shape.

mod common;

use netns::ingress::{self, IngressConfig};

#[test]
fn ingress_accepts_the_harness_config() {
    let dir = netns::tempdir::TempDir::new(&netns::unique_tag()).expect("temp dir");
    let bins = common::bins();
    for (name, cfg) in [
        ("with-mesh", IngressConfig::standard(Some("200:1111:2222:3333:4444:5555:6666:7777".parse().expect("addr")))),
        ("wan-only", IngressConfig::standard(None)),
    ] {
        let file = dir.path().join(format!("{name}.toml"));
        std::fs::write(&file, cfg.to_toml()).expect("write config");
        ingress::check(&bins.ingress, &file).unwrap_or_else(|e| panic!("{e:#}\n--- config ---\n{}", cfg.to_toml()));
    }
}
