//! Logging both binaries set up the same way: the filter from `<NAME>_LOG`, else the usual
//! `RUST_LOG`, else `info` (a value that does not parse is reported and skipped rather than
//! silently ignored); lines to stderr (journald takes them) as text, or as one JSON object
//! per line (`log_format = "json"`, for journald field extraction or Loki).

use tracing_subscriber::EnvFilter;

/// How log lines are written (`log_format` in both configs; read at start only: a reload
/// cannot swap the process's subscriber).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines; colour only on a terminal.
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `message` and the event's fields
    /// (`pool`, `path`, `from`, `to`, ...) side by side, and the current `span`.
    Json,
}

/// The filter from `own_var` (e.g. `INGRESS_LOG`), else `RUST_LOG`, else `info`.
pub fn filter(own_var: &str) -> EnvFilter {
    for var in [own_var, "RUST_LOG"] {
        if let Some(spec) = std::env::var_os(var) {
            let spec = spec.to_string_lossy();
            match EnvFilter::try_new(&*spec) {
                Ok(filter) => return filter,
                Err(e) => eprintln!("{var}={spec:?} ignored: {e}"),
            }
        }
    }
    EnvFilter::new("info")
}

/// Installs the process's subscriber: `format` lines to stderr, filtered by `own_var`.
pub fn init(own_var: &str, format: LogFormat) {
    let builder =
        tracing_subscriber::fmt().with_env_filter(filter(own_var)).with_writer(std::io::stderr).with_target(false);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).init(),
        // Flattened: the event's fields sit beside `level` and `timestamp`, as Loki and
        // journald's JSON readers expect; the current span is kept for its fields.
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).with_span_list(false).init(),
    }
}
