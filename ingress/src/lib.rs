//! The cloud-side ingress: listeners → pools of paths home (WAN addresses, then the
//! Yggdrasil mesh tier) with health-weighted choice, retries and zero-copy relaying.

pub mod admin;
pub mod attempts;
pub mod config;
pub mod connect;
pub mod control;
pub mod health;
pub mod limits;
pub mod listener;
pub mod metrics;
pub mod page;
pub mod pool;
pub mod quality;
pub mod relay;
pub mod resolve;
pub mod runtime;
pub mod self_loop;
pub mod server;
pub mod shares;
#[cfg(target_os = "linux")]
mod splice;
pub mod status;
pub mod tcp;
pub mod udp;

pub use config::Config;
pub use server::Server;
