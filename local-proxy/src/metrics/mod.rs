//! Prometheus metrics: one process-wide recorder, rendered by the admin listener.

pub mod names;

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// How often histogram samples are folded into their summaries (the exporter's own default).
const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Install the global recorder once (later calls, e.g. from several tests in one process,
/// share it) and return the handle that renders the exposition text.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
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
            handle
        })
        .clone()
}
