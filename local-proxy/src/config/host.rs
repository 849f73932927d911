//! Host names as sites and certificates use them (a leaf: site, route and `[acme]`
//! validation all check names with it).

/// A host name as sites and certificates use it: lower case, optional `*.` prefix.
pub(crate) fn valid_host(name: &str) -> bool {
    let bare = name.strip_prefix("*.").unwrap_or(name);
    !bare.is_empty()
        && bare.len() <= 253
        && bare.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}
