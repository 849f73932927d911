//! local-proxy: the home half of the multi-WAN ingress. TLS termination and HTTP routing by
//! Host to LAN services, TCP/UDP stream forwards, PROXY v2 accepted only from ingress nodes,
//! and a listener on this node's Yggdrasil address for mesh clients.
#![forbid(unsafe_code)]

mod accept;
pub mod access_log;
pub mod acme;
pub mod admin;
pub mod admission;
pub mod app;
pub mod config;
pub mod events;
pub mod firewall;
pub mod http;
pub mod idle;
pub mod inherit;
pub mod listeners;
pub mod mesh;
pub mod metrics;
pub mod page;
pub mod pool;
mod running;
pub mod state;
pub mod status;
pub mod stream;
pub mod tls;
pub mod transparent;
pub mod trust;

pub use app::{start, start_on, Handle, Server};
