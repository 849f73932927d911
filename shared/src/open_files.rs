//! The open-files limit. Its soft value is usually 1,024 (a login shell, a container, a
//! service manager without `LimitNOFILE`), far below what a proxy's connection limits need,
//! while the hard one allows much more: at start both binaries raise the soft limit to the
//! hard one, as Go's runtime does for every program since 1.19.

/// Raise the soft open-files limit to the hard one; returns the soft limit now in force.
pub fn raise() -> u64 {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let lim = getrlimit(Resource::Nofile);
    let soft = lim.current.unwrap_or(u64::MAX);
    if lim.current != lim.maximum {
        match setrlimit(Resource::Nofile, Rlimit { current: lim.maximum, maximum: lim.maximum }) {
            Ok(()) => return lim.maximum.unwrap_or(u64::MAX),
            Err(e) => tracing::warn!(soft, error = %e, "cannot raise the open-files limit"),
        }
    }
    soft
}
