//! The log filter both binaries use: `<NAME>_LOG`, else the usual `RUST_LOG`, else `info`.
//! A value that does not parse is reported and skipped rather than silently ignored.

use tracing_subscriber::EnvFilter;

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
