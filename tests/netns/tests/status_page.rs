//! The ingress's status page in a real browser (headless chromium) inside the namespace
//! topology: a phone-sized screenshot saved as an artifact (target/status-page/), the page's
//! DOM showing wan1 down after wan1 is cut without the page being reloaded, and the same page
//! with JavaScript off rendering every path's state from the server.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use netns::browser::Browser;
use netns::ingress::{IngressConfig, ADMIN};
use netns::scenario;
use netns::topology::{Cut, Options, Role, Wan};

/// Where the screenshots go: `<workspace>/target/status-page/`.
fn artifacts() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/status-page")
}

/// wan1's state as the page's DOM shows it now.
fn wan1_state(b: &mut Browser, page: &netns::browser::Page) -> String {
    b.eval(page, r##"(document.querySelector('article[data-path="wan1"]') || {dataset: {}}).dataset.state || """##)
        .expect("evaluate")
        .as_str()
        .unwrap_or("")
        .to_owned()
}

#[test]
fn status_page_follows_a_wan_cut_live_and_works_without_javascript() {
    let start = Instant::now();
    let mut t = common::build(Options { mesh: false, backends: true });
    // Quick health checks so the page's one-second refresh dominates what the test sees.
    let mut cfg = IngressConfig::standard(None);
    cfg.health.interval = Duration::from_millis(200);
    cfg.health.timeout = Duration::from_millis(150);
    t.start_ingress(Role::Ingress1, &cfg).expect("start ingress1");
    scenario::wait_paths(&t, Role::Ingress1, &[("wan1", true), ("wan2", true)], Duration::from_secs(10))
        .expect("both paths up");
    common::phase(start, "ingress1 up");

    let url = format!("http://{ADMIN}/");
    let dir = t.dir().to_path_buf();
    let mut b = Browser::start(t.ns(Role::Ingress1), &dir).expect("start chromium");
    let page = b.open(&url, 412, 915, true).expect("open the status page");
    assert_eq!(wan1_state(&mut b, &page), "up");
    let shot = artifacts().join("ingress-phone.png");
    b.screenshot(&page, &shot).expect("screenshot");
    common::phase(start, &format!("page open, screenshot {}", shot.display()));
    // A mark that only this load of the page carries: a reload would drop it.
    b.eval(&page, "window.__notReloaded = 'same page'; 1").expect("mark the page");
    // Let the page refresh itself a couple of times first.
    std::thread::sleep(Duration::from_millis(2200));
    assert_eq!(wan1_state(&mut b, &page), "up");

    t.cut(Wan::Wan1, Cut::Blackhole).expect("cut wan1");
    let cut = Instant::now();
    let mut ingress_down = None;
    let mut dom_down = None;
    while cut.elapsed() < Duration::from_secs(10) && dom_down.is_none() {
        if ingress_down.is_none() {
            let m = t.scrape(Role::Ingress1).expect("scrape");
            if m.get(netns::ingress::names::PATH_UP, &[("path", "wan1")]) == Some(0.0) {
                ingress_down = Some(cut.elapsed());
            }
        }
        if wan1_state(&mut b, &page) == "down" {
            dom_down = Some(cut.elapsed());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let dom_down = dom_down.expect("the page shows wan1 down within 10 s of the cut");
    let ingress_down = ingress_down.unwrap_or(dom_down);
    common::report(&format!(
        "RESULT status page: wan1 cut -> ingress marks it down {} ms, page DOM shows it down {} ms (no reload; refresh every 1 s)",
        ingress_down.as_millis(),
        dom_down.as_millis()
    ));
    assert_eq!(b.eval(&page, "window.__notReloaded").expect("mark"), "same page", "the page was reloaded");
    assert!(
        dom_down <= Duration::from_secs(2),
        "the DOM showed wan1 down only {} ms after the cut",
        dom_down.as_millis()
    );
    let html = b.html(&page).expect("dom");
    assert!(html.contains("home/wan1") && html.contains("up → down"), "the change is in the event list");
    b.screenshot(&page, &artifacts().join("ingress-phone-wan1-down.png")).expect("screenshot");

    // JavaScript off: the server-rendered page already says it all.
    let plain = b.open(&url, 412, 915, false).expect("open without javascript");
    let html = b.html(&plain).expect("dom");
    assert!(
        html.contains(r#"data-path="wan1" data-state="down""#) && html.contains(r#"data-path="wan2" data-state="up""#),
        "server-rendered states missing:\n{html}"
    );
    assert!(html.contains(r#"http-equiv="refresh""#), "a no-script refresh is offered");
    b.screenshot(&plain, &artifacts().join("ingress-phone-no-javascript.png")).expect("screenshot");

    t.restore(Wan::Wan1, Cut::Blackhole).expect("restore wan1");
    common::phase(start, "done");
}
