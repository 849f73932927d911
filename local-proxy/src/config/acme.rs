//! The `[acme]` config section: the raw serde form (read by `config::raw`) and its validated
//! [`Settings`]. The section's presence turns ACME on (unless `enabled = false`); every field
//! has a default (see `examples/local-proxy.toml`), every problem is reported under its name.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use base64::Engine;
use shared::ports::{days, hours, secs, DurationRange};

use super::host::valid_host;
pub use super::raw::KeyType;
use super::raw::RawAcme;
use super::{Problems, Site};

/// Let's Encrypt's production directory, the default.
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";
/// Let's Encrypt's staging directory (`directory = "letsencrypt-staging"`).
pub const LETS_ENCRYPT_STAGING: &str = "https://acme-staging-v02.api.letsencrypt.org/directory";
/// Default storage: `account.json` and certbot's `live/<name>/` layout below it.
pub const DEFAULT_STORAGE: &str = "/var/lib/local-proxy/acme";

/// The range each `[acme]` duration accepts.
pub mod ranges {
    use super::*;
    /// `acme.retry_min`, default 2m: the first retry after a failed issuance.
    pub const RETRY_MIN: DurationRange = DurationRange::new(secs(1), days(1));
    /// `acme.retry_max`, default 6h: retries double up to this.
    pub const RETRY_MAX: DurationRange = DurationRange::new(secs(1), days(7));
    /// `acme.order_timeout`, default 5m: one issuance (challenges, finalize, download).
    pub const ORDER_TIMEOUT: DurationRange = DurationRange::new(secs(5), secs(3600));
}

/// An HMAC key that never shows in logs or `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub Vec<u8>);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MASKED")
    }
}

/// External account binding (CAs such as ZeroSSL or Google require it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalAccount {
    pub kid: String,
    /// The decoded HMAC key (written base64url, as CAs hand it out).
    pub hmac_key: Secret,
}

/// Validated `[acme]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// The CA's directory URL (https).
    pub directory: String,
    /// A PEM root to trust for the directory's HTTPS instead of the system roots (a private
    /// CA, or pebble in tests).
    pub directory_ca_file: Option<PathBuf>,
    /// `mailto:` contacts.
    pub contact: Vec<String>,
    pub external_account: Option<ExternalAccount>,
    /// Names to certify, lower case, no wildcards.
    pub names: Vec<String>,
    pub key_type: KeyType,
    /// `account.json` and `live/<name>/{fullchain,privkey}.pem` below it.
    pub storage: PathBuf,
    /// Answer HTTP-01 on the HTTP listeners.
    pub http_01: bool,
    /// Answer TLS-ALPN-01 (`acme-tls/1`) on the HTTPS listeners.
    pub tls_alpn_01: bool,
    pub retry_min: Duration,
    pub retry_max: Duration,
    pub order_timeout: Duration,
}

impl Settings {
    /// The certbot-layout `live/` directory that ACME writes and the TLS store reads.
    pub fn live_dir(&self) -> PathBuf {
        self.storage.join("live")
    }
}

fn err(errors: &mut Problems, field: &str, message: impl Into<String>) {
    errors.push(format!("acme.{field}"), message);
}

/// Validate `[acme]` against the sites (the default names are theirs).
pub fn validate(raw: Option<&RawAcme>, sites: &[Site], errors: &mut Problems) -> Option<Settings> {
    let raw = raw?;
    // `enabled = false` keeps the section for later: what it sets is checked all the same (a
    // mistake would otherwise wait for the day it is turned back on), what it lacks is not.
    let on = raw.enabled != Some(false);
    let e = errors;
    let directory = match raw.directory.as_deref() {
        None | Some("letsencrypt") => LETS_ENCRYPT.to_string(),
        Some("letsencrypt-staging") => LETS_ENCRYPT_STAGING.to_string(),
        Some(url) => {
            match url.parse::<http::Uri>() {
                Ok(u) if u.scheme_str() == Some("https") && u.host().is_some_and(|h| !h.is_empty()) => {}
                Ok(_) => err(e, "directory", format!("`{url}` must be an https:// URL (RFC 8555 requires HTTPS)")),
                Err(why) => err(e, "directory", format!("`{url}` is not a URL: {why}")),
            }
            url.to_string()
        }
    };
    let directory_ca_file = match raw.directory_ca_file.as_deref() {
        Some("") => {
            err(e, "directory_ca_file", "must not be empty (leave it out to use the system roots)");
            None
        }
        Some(path) => {
            // The file itself only when it is to be used: a disabled section may name a test
            // CA's file that is gone.
            if let Some(problem) = super::ca_file::problem(path).filter(|_| on) {
                err(e, "directory_ca_file", problem);
            }
            Some(PathBuf::from(path))
        }
        None => None,
    };

    let mut contact = Vec::new();
    for (i, c) in raw.contact.iter().flatten().enumerate() {
        let address = c.strip_prefix("mailto:").unwrap_or(c);
        let ok = address
            .split_once('@')
            .is_some_and(|(user, host)| !user.is_empty() && valid_host(&host.to_ascii_lowercase()))
            && !address.contains(|ch: char| ch.is_whitespace() || ch == ',' || ch == '<' || ch == '>');
        if ok {
            contact.push(format!("mailto:{address}"));
        } else {
            err(e, &format!("contact[{i}]"), format!("`{c}` is not an e-mail address"));
        }
    }

    let external_account = raw.external_account.as_ref().and_then(|x| {
        let kid = match x.kid.as_deref() {
            Some(k) if !k.is_empty() => Some(k.to_string()),
            _ => {
                err(e, "external_account.kid", "is required");
                None
            }
        };
        let key = match x.hmac_key.as_deref() {
            None => {
                err(e, "external_account.hmac_key", "is required");
                None
            }
            Some(k) => match base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(k.trim_end_matches('=')) {
                Ok(bytes) if bytes.len() >= 16 => Some(bytes),
                Ok(_) => {
                    err(e, "external_account.hmac_key", "is shorter than 16 bytes");
                    None
                }
                Err(_) => {
                    err(e, "external_account.hmac_key", "is not base64url (as the CA hands it out)");
                    None
                }
            },
        };
        Some(ExternalAccount { kid: kid?, hmac_key: Secret(key?) })
    });

    let names = match &raw.names {
        Some(list) => {
            let mut names: Vec<String> = Vec::new();
            for (i, n) in list.iter().enumerate() {
                let n = n.to_ascii_lowercase();
                if n.starts_with("*.") {
                    err(e, &format!("names[{i}]"), format!("`{n}`: wildcards need DNS-01, which is not supported"));
                } else if !valid_host(&n) {
                    err(e, &format!("names[{i}]"), format!("`{n}` is not a host name"));
                } else if names.contains(&n) {
                    err(e, &format!("names[{i}]"), format!("`{n}` is listed twice"));
                } else {
                    names.push(n);
                }
            }
            names
        }
        None => sites.iter().flat_map(|s| s.names()).filter(|n| !n.starts_with("*.")).map(String::from).collect(),
    };
    if on && names.is_empty() && !e.iter().any(|x| x.field.starts_with("acme.names")) {
        err(e, "names", "no name to certify (no site names one without a wildcard; list them here)");
    }

    let key_type = e.choice("acme.key_type", raw.key_type.as_ref(), KeyType::EcdsaP256);
    let storage = PathBuf::from(raw.storage.as_deref().unwrap_or(DEFAULT_STORAGE));
    if !storage.is_absolute() {
        err(e, "storage", format!("`{}` must be an absolute path", storage.display()));
    }
    let http_01 = raw.http_01.unwrap_or(true);
    let tls_alpn_01 = raw.tls_alpn_01.unwrap_or(true);
    if !http_01 && !tls_alpn_01 {
        err(e, "tls_alpn_01", "with http_01 also off, no challenge could be answered");
    }
    let retry_min = e.duration("acme.retry_min", raw.retry_min.as_deref(), secs(120), ranges::RETRY_MIN);
    let retry_max = e.duration("acme.retry_max", raw.retry_max.as_deref(), hours(6), ranges::RETRY_MAX);
    if retry_max < retry_min {
        err(e, "retry_max", "must not be below retry_min");
    }
    let order_timeout =
        e.duration("acme.order_timeout", raw.order_timeout.as_deref(), secs(300), ranges::ORDER_TIMEOUT);
    if !on {
        return None;
    }
    Some(Settings {
        directory,
        directory_ca_file,
        contact,
        external_account,
        names,
        key_type,
        storage,
        http_01,
        tls_alpn_01,
        retry_min,
        retry_max,
        order_timeout,
    })
}
