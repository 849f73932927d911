//! Certificates obtained and renewed with ACME (RFC 8555) by the proxy itself: HTTP-01 answered
//! on the HTTP listeners, TLS-ALPN-01 (RFC 8737) in the TLS handshake, files kept in certbot's
//! layout that the TLS store serves, renewal at two thirds of the lifetime or in the CA's ARI
//! window (RFC 9773), retries with backoff while the current certificate keeps serving.

pub mod challenges;
pub mod issue;
pub mod manager;
pub mod plan;
pub mod storage;

pub use challenges::{Challenges, ACME_TLS_ALPN, HTTP01_PREFIX};
pub use manager::{run, Acme, CertStatus};
