//! Config validation shared by both binaries. [`Problems`] collects every problem of a
//! config in one pass, each under its field path (`pool.home.paths[0].address`,
//! `site[2].upstream`), and lists them all; both binaries print that list the same way.
//! [`Choice`] holds a value spelled as one of a serde enum's names, or the text given when it
//! names none, so validation reports a misspelling with every other problem instead of serde
//! stopping the parse at it.

use std::fmt;
use std::net::IpAddr;
use std::ops::Deref;
use std::time::Duration;

use serde::de::{DeserializeOwned, IntoDeserializer};
use serde::{Deserialize, Deserializer};

use crate::ports::{parse_ip, DurationRange};

/// One problem with one field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Path of the field, e.g. `pool.home.health.interval` or `site[2].upstream`; empty when
    /// the problem is the file as a whole (not found, not TOML).
    pub field: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

/// Every problem found in one config, in the order found. Reads as a slice of
/// [`FieldError`]s; displays as `invalid configuration:` and one `  - field: message` line
/// per problem.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Problems(Vec<FieldError>);

impl Problems {
    pub fn new() -> Self {
        Self::default()
    }

    /// Record that `field` is wrong, and why.
    pub fn push(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError { field: field.into(), message: message.into() });
    }

    /// `Ok(value)` when nothing was recorded, else every problem.
    pub fn into_result<T>(self, value: T) -> Result<T, Problems> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(self)
        }
    }

    /// An enum field: absent gives `default`, present must be one of its spellings.
    pub fn choice<T: Clone>(&mut self, field: &str, value: Option<&Choice<T>>, default: T) -> T {
        match value.map(Choice::known) {
            None => default,
            Some(Ok(v)) => v,
            Some(Err(e)) => {
                self.push(field, e);
                default
            }
        }
    }

    /// A duration field: absent gives `default`, present must parse and lie in `range`
    /// (otherwise `default` is returned, unused: the config is refused).
    pub fn duration(&mut self, field: &str, value: Option<&str>, default: Duration, range: DurationRange) -> Duration {
        match value {
            None => {
                debug_assert!(default >= range.min && default <= range.max, "{field}: default outside its range");
                default
            }
            Some(s) => range.parse(s).unwrap_or_else(|e| {
                self.push(field, e);
                default
            }),
        }
    }

    /// An IP address field; the bracketed IPv6 form is accepted too, but only whole (`[::1`
    /// is a typo, not an address).
    pub fn ip(&mut self, field: &str, value: &str) -> Option<IpAddr> {
        parse_ip(value).map_err(|e| self.push(field, e)).ok()
    }
}

impl Deref for Problems {
    type Target = [FieldError];
    fn deref(&self) -> &[FieldError] {
        &self.0
    }
}

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("invalid configuration:")?;
        for e in &self.0 {
            write!(f, "\n  - {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Problems {}

/// A config value naming one variant of the fieldless serde enum `T` (the accepted spellings
/// are `T`'s serde names, `rename_all` applied), or the text given when it names none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice<T> {
    Known(T),
    Unknown {
        given: String,
        /// `T`'s spellings, in declaration order.
        expected: &'static [&'static str],
    },
}

impl<T: Clone> Choice<T> {
    /// The variant, or why the text names none: "`v3` is not none or v2".
    pub fn known(&self) -> Result<T, String> {
        match self {
            Choice::Known(v) => Ok(v.clone()),
            Choice::Unknown { given, expected: [] } => Err(format!("`{given}` is not a known value")),
            Choice::Unknown { given, expected } => Err(format!("`{given}` is not {}", alternatives(expected))),
        }
    }
}

impl<'de, T: DeserializeOwned> Deserialize<'de> for Choice<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let given = String::deserialize(deserializer)?;
        match T::deserialize(<&str as IntoDeserializer<'_, Misspelt>>::into_deserializer(&given)) {
            Ok(v) => Ok(Choice::Known(v)),
            Err(Misspelt(expected)) => Ok(Choice::Unknown { given, expected }),
        }
    }
}

/// `a`, `a or b`, `a, b or c`.
fn alternatives(names: &[&str]) -> String {
    match names {
        [] => String::new(),
        [one] => (*one).to_owned(),
        [rest @ .., last] => format!("{} or {last}", rest.join(", ")),
    }
}

/// Serde's answer for a text that names no variant: the spellings it has (empty when serde
/// failed otherwise, e.g. `T` is not a fieldless enum).
#[derive(Debug)]
struct Misspelt(&'static [&'static str]);

impl fmt::Display for Misspelt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "not one of {}", alternatives(self.0))
    }
}

impl std::error::Error for Misspelt {}

impl serde::de::Error for Misspelt {
    fn custom<M: fmt::Display>(_: M) -> Self {
        Misspelt(&[])
    }
    fn unknown_variant(_: &str, expected: &'static [&'static str]) -> Self {
        Misspelt(expected)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
    #[serde(rename_all = "kebab-case")]
    enum Check {
        Tcp,
        ProxyV2,
        Http,
    }

    #[derive(Debug, Deserialize)]
    struct Raw {
        check: Option<Choice<Check>>,
    }

    fn check(text: &str) -> Result<Check, String> {
        let raw: Raw = serde_json::from_str(text).map_err(|e| e.to_string())?;
        raw.check.map_or(Ok(Check::Tcp), |c| c.known())
    }

    #[test]
    fn every_spelling_is_read_and_a_misspelling_names_them_all() {
        assert_eq!(check(r#"{"check": "tcp"}"#), Ok(Check::Tcp));
        assert_eq!(check(r#"{"check": "proxy-v2"}"#), Ok(Check::ProxyV2));
        assert_eq!(check(r#"{"check": "http"}"#), Ok(Check::Http));
        assert_eq!(check("{}"), Ok(Check::Tcp));
        assert_eq!(check(r#"{"check": "proxy_v2"}"#), Err("`proxy_v2` is not tcp, proxy-v2 or http".to_owned()));
        // Names are exact: no case folding.
        assert_eq!(check(r#"{"check": "TCP"}"#), Err("`TCP` is not tcp, proxy-v2 or http".to_owned()));
        // Not a string at all: the parser's own type error, as for any other field.
        assert!(check(r#"{"check": 5}"#).is_err_and(|e| e.contains("expected a string")));
    }

    #[test]
    fn problems_are_listed_in_order_each_under_its_field() {
        let mut p = Problems::new();
        assert_eq!(p.clone().into_result(1), Ok(1));
        let d = p.duration(
            "a.timeout",
            Some("5 parsecs"),
            Duration::from_secs(1),
            DurationRange::new(Duration::ZERO, Duration::from_secs(9)),
        );
        assert_eq!(d, Duration::from_secs(1));
        assert_eq!(p.ip("b.address", "[::1"), None);
        p.push("", "file not found");
        let fields: Vec<&str> = p.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["a.timeout", "b.address", ""]);
        let text = p.clone().into_result(()).unwrap_err().to_string();
        assert!(text.starts_with("invalid configuration:\n  - a.timeout: `5 parsecs`"), "{text}");
        assert!(text.contains("\n  - b.address: `[::1` is not an IP address\n  - file not found"), "{text}");
    }

    #[test]
    fn alternatives_read_as_a_list() {
        assert_eq!(alternatives(&["none", "v2"]), "none or v2");
        assert_eq!(alternatives(&["plain", "sni", "http"]), "plain, sni or http");
        assert_eq!(alternatives(&["json"]), "json");
    }
}
