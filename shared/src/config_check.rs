//! Config validation shared by both binaries. [`Choice`] holds a value spelled as one of a
//! serde enum's names, or the text given when it names none, so validation reports a
//! misspelling with every other problem instead of serde stopping the parse at it.

use std::fmt;

use serde::de::{DeserializeOwned, IntoDeserializer};
use serde::{Deserialize, Deserializer};

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
    fn alternatives_read_as_a_list() {
        assert_eq!(alternatives(&["none", "v2"]), "none or v2");
        assert_eq!(alternatives(&["plain", "sni", "http"]), "plain, sni or http");
        assert_eq!(alternatives(&["json"]), "json");
    }
}
