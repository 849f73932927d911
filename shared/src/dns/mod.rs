//! Names → addresses for both binaries: [`Lookups`] asks DNS (hickory-resolver, no cache),
//! [`Tracker`] (sans-io) decides when each name is due again from the records' TTLs within
//! refresh bounds, and keeps the last known addresses through failures.

mod lookup;
mod tracker;

pub use lookup::{outcome_of, Lookups, ResolverError, ResolverSettings};
pub use tracker::{Allowlist, Change, Family, OnNoAnswer, Outcome, Policy, Query, Tracker};
/// A DNS name as written in a config: letters, digits, `-` and `_` in dot-separated labels,
/// one trailing dot allowed; returned lower case without the dot. A name whose last label is
/// all digits is refused: it is a mistyped IP address (`203.0.113.300`), not a host.
pub fn parse_name(name: &str) -> Option<String> {
    let bare = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    let ok = !bare.is_empty()
        && bare.len() <= 253
        && bare.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        && !bare.rsplit('.').next().is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()));
    ok.then_some(bare)
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_and_what_is_not_one() {
        use super::parse_name;
        assert_eq!(parse_name("WAN1.Home.example.org.").as_deref(), Some("wan1.home.example.org"));
        assert_eq!(parse_name("_srv.example").as_deref(), Some("_srv.example"));
        for bad in [
            "",
            ".",
            "a..b",
            "-a.example",
            "a-.example",
            "a b.example",
            "203.0.113.300",
            "10.0.0",
            "x.123",
            &"a".repeat(64),
        ] {
            assert_eq!(parse_name(bad), None, "{bad:?}");
        }
    }
}
