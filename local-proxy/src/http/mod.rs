//! The HTTP side: connection serving, request handling, the reverse proxy to upstreams.

pub mod access;
pub mod body;
pub mod compress;
mod conn;
pub mod cors;
mod first_bytes;
mod forward;
pub mod forward_auth;
pub mod h2_streams;
pub mod handler;
pub mod head_timeout;
pub mod headers;
pub mod hostile;
mod keepalive;
mod middleware;
pub mod pages;
mod park;
pub mod ratelimit;
mod replay;
pub mod routes;
pub mod serve;
mod tunnel;
pub mod upstream;

pub use conn::{Conn, TlsInfo};
pub use routes::Routes;
pub use serve::{serve_then_tunnel, Proto};
