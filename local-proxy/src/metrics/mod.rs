//! Prometheus metrics: one process-wide recorder, rendered by the admin listener.

pub mod names;

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// How often histogram samples are folded into their buckets. Until then every sample is kept
/// (8 bytes, two histograms per request): at the exporter's default of 5 s, 60,000 requests a
/// second piled up about 5 MB between two folds, and the heap kept that size after. Folding
/// into buckets costs the same per sample whenever it runs; the thread wakes once a second.
const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Upper bounds, in seconds, of every duration histogram's buckets (request duration, upstream
/// latency, forward auth): from half a millisecond (a LAN connect or a cached page) to a
/// minute (a slow upload), as Prometheus `_bucket` series that sum across sites, upstreams
/// and instances, as Traefik's and Caddy's do. The exporter's default, rolling quantile
/// summaries, cannot be aggregated, and folding each sample into one cost about 2,000
/// instructions per request on the upkeep thread (bench/instructions), against a few
/// dozen for a bucket count.
pub const DURATION_BUCKETS: [f64; 16] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// Install the global recorder once (later calls, e.g. from several tests in one process,
/// share it) and return the handle that renders the exposition text.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            // Refused only for an empty list, which the constant is not.
            let builder = PrometheusBuilder::new().set_buckets(&DURATION_BUCKETS).unwrap_or_else(|_| PrometheusBuilder::new());
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            // Histograms keep every sample until drained, and only a scrape (render) or upkeep
            // drains them: with nobody scraping /metrics, RSS grew 34 bytes per request for
            // ever (request duration and upstream latency). `build_recorder` leaves upkeep to
            // us; a thread rather than a task, as the first install may come before any runtime.
            let upkeep = handle.clone();
            if let Err(e) = std::thread::Builder::new().name("metrics-upkeep".into()).spawn(move || loop {
                std::thread::sleep(UPKEEP_EVERY);
                upkeep.run_upkeep();
            }) {
                tracing::warn!(error = %e, "cannot start the metrics upkeep thread; histograms drain only when scraped");
            }
            // Fails only if another recorder was installed first; then ours stays unrendered
            // but the proxy still works.
            if let Err(e) = metrics::set_global_recorder(recorder) {
                tracing::warn!(error = %e, "metrics recorder already installed");
            }
            // Present from the start at 0: an alert on a counter's increase misses the event
            // that creates it (Prometheus has no earlier sample), and a refused reload or a
            // refused control request is often a single one.
            for result in ["ok", "invalid", "bind_failed"] {
                metrics::counter!(names::CONFIG_RELOADS, "result" => result).increment(0);
            }
            for denied in shared::admin::token::Denied::ALL {
                metrics::counter!(names::ADMIN_UNAUTHORIZED, "reason" => denied.as_str()).increment(0);
            }
            handle
        })
        .clone()
}
