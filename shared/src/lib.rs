//! Library shared by `ingress` and `local-proxy`.
#![forbid(unsafe_code)]

pub mod admin;
pub mod balance;
pub mod cli;
pub mod config_check;
pub mod conn_limit;
pub mod damping;
pub mod descriptors;
pub mod dns;
pub mod health;
pub mod idle;
pub mod inherit;
pub mod listeners;
pub mod log_every;
pub mod logging;
pub mod notify;
pub mod open_files;
pub mod own_addrs;
pub mod peek;
pub mod ports;
pub mod proxy_protocol;
pub mod runtime;
pub mod udp_batch;
pub mod udp_flows;
pub mod udp_relay;
pub mod watchdog;
pub mod workers;
pub mod ygg;
