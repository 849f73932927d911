//! The bearer token that guards runtime control: read from a file the config names (so it
//! stays out of the config, the environment and `ps`), compared in constant time, never
//! printed (`Debug` says `MASKED`).

use std::fmt;
use std::path::Path;

use http::HeaderMap;

/// Shortest token accepted: guessing must be hopeless even without rate limits.
pub const MIN_LEN: usize = 16;

/// The secret an operator's `Authorization: Bearer …` must match.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(MASKED)")
    }
}

/// Why a control request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// No `Authorization: Bearer` header.
    Missing,
    /// A token that is not ours.
    Wrong,
}

impl Denied {
    pub const ALL: [Denied; 2] = [Denied::Missing, Denied::Wrong];

    pub fn as_str(self) -> &'static str {
        match self {
            Denied::Missing => "missing",
            Denied::Wrong => "wrong",
        }
    }
}

impl Token {
    /// Reads the token from `path`: its first line, trimmed. Refuses a file others may read
    /// (as ssh refuses such a key), an empty one and a short one, each with its reason.
    pub fn from_file(path: &Path) -> Result<Self, String> {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
        if meta.permissions().mode() & 0o004 != 0 {
            return Err(format!(
                "{}: readable by everyone (chmod o-r, e.g. 0640 root:<service group>)",
                path.display()
            ));
        }
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Self::new(text.lines().next().unwrap_or("").trim()).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// A token from its text (printable ASCII, no spaces, at least [`MIN_LEN`] characters).
    pub fn new(text: &str) -> Result<Self, String> {
        if text.len() < MIN_LEN {
            return Err(format!("the token must be at least {MIN_LEN} characters (got {})", text.len()));
        }
        if !text.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("the token must be printable ASCII without spaces".into());
        }
        Ok(Self(text.to_owned()))
    }

    /// The token's text, for a client's `Authorization` header.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Checks a request's `Authorization: Bearer <token>` header.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), Denied> {
        let Some(value) = headers.get(http::header::AUTHORIZATION) else {
            return Err(Denied::Missing);
        };
        let Some(given) = value.to_str().ok().and_then(|v| v.strip_prefix("Bearer ")) else {
            return Err(Denied::Missing);
        };
        if constant_time_eq(given.trim().as_bytes(), self.0.as_bytes()) {
            Ok(())
        } else {
            Err(Denied::Wrong)
        }
    }
}

/// Equal without an early exit, so response times do not reveal how much of a guess matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for (i, x) in a.iter().enumerate() {
        diff |= usize::from(x ^ b.get(i).copied().unwrap_or(0));
    }
    diff == 0
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn with_auth(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(http::header::AUTHORIZATION, HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn only_the_exact_bearer_token_passes() {
        let t = Token::new("0123456789abcdef").unwrap();
        assert_eq!(t.check(&with_auth("Bearer 0123456789abcdef")), Ok(()));
        assert_eq!(t.check(&HeaderMap::new()), Err(Denied::Missing));
        assert_eq!(t.check(&with_auth("Basic 0123456789abcdef")), Err(Denied::Missing));
        assert_eq!(t.check(&with_auth("Bearer 0123456789abcdeF")), Err(Denied::Wrong));
        assert_eq!(t.check(&with_auth("Bearer 0123456789abcdef0")), Err(Denied::Wrong));
        assert_eq!(t.check(&with_auth("Bearer 0123456789abcde")), Err(Denied::Wrong));
        assert_eq!(format!("{t:?}"), "Token(MASKED)");
    }

    #[test]
    fn files_that_are_short_empty_or_world_readable_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("shared-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("token");
        std::fs::write(&f, "0123456789abcdef\n").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(Token::from_file(&f).unwrap().expose(), "0123456789abcdef");
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(Token::from_file(&f).unwrap_err().contains("readable by everyone"));
        std::fs::write(&f, "short\n").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(Token::from_file(&f).unwrap_err().contains("at least 16"));
        assert!(Token::from_file(&dir.join("absent")).unwrap_err().contains("absent"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
