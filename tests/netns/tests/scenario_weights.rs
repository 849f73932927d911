//! Scenario 1: both WANs healthy; connections from the client through both ingress nodes are
//! spread over wan1 and wan2 by their weights (3:1), seen by the client, the backend and the
//! ingress metrics alike; the mesh carries nothing.

mod common;

use std::time::{Duration, Instant};

use netns::ingress::names;
use netns::scenario::{self, path_counts};
use netns::topology::{Options, Role};

#[test]
fn scenario1_weights_spread_over_both_wans() {
    let start = Instant::now();
    let mut t = common::build(Options::default());
    scenario::start_ingresses(&mut t).expect("start ingress on both nodes");
    common::phase(start, "ingress up on both nodes");

    let run = t
        .start_load(Role::Client, "load", scenario::standard_load(Duration::from_millis(5), Duration::from_secs(5)))
        .expect("start loadgen");
    let r = run.finish(&mut t).expect("loadgen result");
    let s = &r.summary;
    common::phase(start, &format!("load done: {} started, {} ok, {} failed", s.started, s.ok, s.failed));
    assert_eq!(s.failed, 0, "failed connections:\n{}", scenario::describe_failures(&r.records, s.start_ms));
    assert!(s.ok >= 500, "too few connections for a share: {}", s.ok);

    let counts = path_counts(&t, &r.records, 0, u64::MAX);
    let wan1 = *counts.get("wan1").unwrap_or(&0) as f64;
    let wan2 = *counts.get("wan2").unwrap_or(&0) as f64;
    let share1 = wan1 / (wan1 + wan2);
    common::report(&format!("RESULT both WANs up: {counts:?}; wan1 share {share1:.3} (weights 3:1 -> 0.75)"));
    assert!(!counts.contains_key("mesh"), "the mesh carried traffic while both WANs were up: {counts:?}");
    assert!((0.65..=0.85).contains(&share1), "wan1 share {share1:.3} is not near 0.75: {counts:?}");

    // The backend saw the same split on its WAN addresses. It logs a connection once it has
    // closed, which may be just after the client read its reply: wait for the last lines.
    let backend_counts = || {
        let log = t.backend_log(Role::Home);
        let echo: Vec<_> = log.iter().filter(|c| c.kind == "echo").collect();
        let b1 = echo.iter().filter(|c| t.path_of(&c.local) == "wan1").count() as u64;
        let b2 = echo.iter().filter(|c| t.path_of(&c.local) == "wan2").count() as u64;
        (b1, b2)
    };
    let want = (wan1 as u64, wan2 as u64);
    let _ = netns::wait::wait_until(
        "the backend logged every connection",
        Duration::from_secs(3),
        Duration::from_millis(50),
        || {
            let got = backend_counts();
            netns::wait::check(got == want, || format!("{got:?}"))
        },
    );
    assert_eq!(backend_counts(), want, "backend log and client disagree");

    // And the ingress metrics, per node.
    for role in [Role::Ingress1, Role::Ingress2] {
        let m = t.scrape(role).expect("scrape");
        let c1 = m.sum(names::PATH_CONNECTS, &[("path", "wan1")]);
        let c2 = m.sum(names::PATH_CONNECTS, &[("path", "wan2")]);
        let accepted = m.sum(names::LISTENER_ACCEPTED, &[]);
        eprintln!("{}: connects wan1={c1} wan2={c2}, accepted={accepted}", role.as_str());
        assert!(c1 + c2 >= accepted, "{}: fewer path connects than accepted connections", role.as_str());
        let share = c1 / (c1 + c2);
        assert!((0.6..=0.9).contains(&share), "{}: wan1 share {share:.3} from metrics", role.as_str());
    }
    let total = scenario::metric_sum(&t, names::PATH_CONNECTS, &[("path", "wan1")]).expect("metrics");
    assert!(total >= wan1, "metrics count {total} wan1 connects, the client saw {wan1}");
    common::phase(start, "done");
}
