//! Routing by name: exact names, `*.suffix` wildcards and a default, as nginx's `server_name`.

use std::collections::HashMap;

/// foldhash instead of the standard SipHash: a lookup per request or connection, and its keys
/// (the names) come from the config, so a client choosing what it looks up cannot crowd a
/// bucket; SipHash's extra rounds (~200 instructions a lookup) buy nothing here. Still seeded
/// per process.
type Map<T> = HashMap<String, T, foldhash::fast::RandomState>;

use super::normalize_name;

/// Maps host names to targets.
///
/// Precedence, as nginx: an exact name, then the longest matching wildcard, then the default.
/// `*.example.org` matches any name with one **or more** labels before `.example.org`
/// (`a.example.org`, `a.b.example.org`) but not `example.org` itself; add that as an exact
/// name if wanted. Patterns and lookups are case-insensitive.
#[derive(Debug, Clone)]
pub struct NameRouter<T> {
    exact: Map<T>,
    /// Keyed by the suffix with its leading dot: `*.example.org` is stored as `.example.org`.
    wildcard: Map<T>,
    default: Option<T>,
}

/// A pattern that `NameRouter::insert` refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    /// Not a host name, or a `*` anywhere but as the whole first label.
    #[error("invalid name pattern {0:?}: use a host name or *.suffix")]
    Invalid(String),
    /// The same pattern was inserted twice.
    #[error("duplicate name pattern {0:?}")]
    Duplicate(String),
}

impl<T> Default for NameRouter<T> {
    fn default() -> Self {
        Self { exact: Map::default(), wildcard: Map::default(), default: None }
    }
}

impl<T> NameRouter<T> {
    /// An empty router: every lookup misses until names or a default are added.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `a.example.org` (exact) or `*.example.org` (wildcard). A trailing dot is ignored.
    pub fn insert(&mut self, pattern: &str, target: T) -> Result<(), PatternError> {
        let invalid = || PatternError::Invalid(pattern.to_owned());
        let (map, key) = match pattern.strip_prefix('*') {
            Some(suffix) => {
                let Some(rest) = suffix.strip_prefix('.') else {
                    return Err(invalid());
                };
                let name = normalize_name(rest.as_bytes()).map_err(|_| invalid())?;
                if name.contains('*') || name.starts_with('.') || name.contains("..") {
                    return Err(invalid());
                }
                (&mut self.wildcard, format!(".{name}"))
            }
            None => {
                let name = normalize_name(pattern.as_bytes()).map_err(|_| invalid())?;
                if name.contains('*') || name.starts_with('.') || name.contains("..") {
                    return Err(invalid());
                }
                (&mut self.exact, name.into_owned())
            }
        };
        if map.contains_key(&key) {
            return Err(PatternError::Duplicate(pattern.to_owned()));
        }
        map.insert(key, target);
        Ok(())
    }

    /// Sets the target for names that match nothing, and for connections without a name.
    pub fn set_default(&mut self, target: T) {
        self.default = Some(target);
    }

    /// The target for `name` (SNI or Host), or the default for `None` and for misses.
    pub fn route(&self, name: Option<&str>) -> Option<&T> {
        name.and_then(|n| self.lookup(n)).or(self.default.as_ref())
    }

    /// The target of the best exact or wildcard match for `name`, ignoring the default.
    pub fn lookup(&self, name: &str) -> Option<&T> {
        let name = name.strip_suffix('.').unwrap_or(name);
        if name.bytes().any(|b| b.is_ascii_uppercase()) {
            // Names from `sni` and `host` are already lowercase; this is for other callers.
            return self.lookup_lower(&name.to_ascii_lowercase());
        }
        self.lookup_lower(name)
    }

    fn lookup_lower(&self, name: &str) -> Option<&T> {
        if let Some(t) = self.exact.get(name) {
            return Some(t);
        }
        if self.wildcard.is_empty() {
            return None;
        }
        // Suffixes from the longest (after the first label) to the shortest; the first hit is
        // the longest wildcard. Starting after byte 0 keeps at least one label before it.
        name.char_indices().skip(1).filter(|&(_, c)| c == '.').find_map(|(i, _)| self.wildcard.get(&name[i..]))
    }

    /// Whether neither names nor a default were added.
    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.wildcard.is_empty() && self.default.is_none()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn router() -> NameRouter<&'static str> {
        let mut r = NameRouter::new();
        r.insert("cloud.example.org", "nextcloud").unwrap();
        r.insert("*.example.org", "wild").unwrap();
        r.insert("*.dev.example.org", "dev").unwrap();
        r.insert("a.dev.example.org", "a-exact").unwrap();
        r.insert("Example.ORG.", "apex").unwrap();
        r
    }

    #[test]
    fn precedence() {
        let r = router();
        let cases = [
            ("cloud.example.org", Some("nextcloud")),
            ("CLOUD.example.org.", Some("nextcloud")),
            ("x.example.org", Some("wild")),
            ("x.y.example.org", Some("wild")),
            ("b.dev.example.org", Some("dev")),
            ("c.b.dev.example.org", Some("dev")),
            ("a.dev.example.org", Some("a-exact")),
            ("dev.example.org", Some("wild")),
            ("example.org", Some("apex")),
            ("other.org", None),
            ("xexample.org", None),
            (".example.org", None),
        ];
        for (name, want) in cases {
            assert_eq!(r.lookup(name).copied(), want, "{name}");
        }
    }

    #[test]
    fn default_route() {
        let mut r = router();
        assert_eq!(r.route(None), None);
        assert_eq!(r.route(Some("other.org")), None);
        r.set_default("fallback");
        assert_eq!(r.route(None), Some(&"fallback"));
        assert_eq!(r.route(Some("other.org")), Some(&"fallback"));
        assert_eq!(r.route(Some("x.example.org")), Some(&"wild"));
    }

    #[test]
    fn bad_patterns() {
        let mut r = router();
        for p in ["*", "*.", "*example.org", "a.*.org", "**.org", "*.*.org", "a b", "", "a..b", ".a"] {
            assert_eq!(r.insert(p, "x"), Err(PatternError::Invalid(p.into())), "{p}");
        }
        assert_eq!(r.insert("*.EXAMPLE.org", "x"), Err(PatternError::Duplicate("*.EXAMPLE.org".into())));
        assert_eq!(r.insert("cloud.example.org", "x"), Err(PatternError::Duplicate("cloud.example.org".into())));
    }
}
