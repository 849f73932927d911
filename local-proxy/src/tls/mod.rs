//! TLS termination: certificates by SNI from certbot directories and explicit files,
//! reloaded live; the bounded, classified server handshake.

mod handshake;
mod index;
mod load;
mod store;

pub use handshake::{accept, server_config, ConfigError, HandshakeError, ALPN};
pub use index::CertIndex;
pub use load::{load_pair, LoadError, LoadedCert};
pub use store::{check_sources, CertStore, Resolver};
