//! The HTTP side: connection serving, request handling, the reverse proxy to upstreams.

pub mod access;
pub mod body;
mod conn;
mod forward;
pub mod forward_auth;
pub mod handler;
pub mod head_timeout;
pub mod headers;
pub mod pages;
mod replay;
pub mod routes;
pub mod serve;
pub mod upstream;

pub use conn::{Conn, TlsInfo};
pub use routes::Routes;
pub use serve::{serve, Proto};
