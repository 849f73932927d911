//! local-proxy: the home half of the multi-WAN ingress. TLS termination and HTTP routing by
//! Host to LAN services, TCP/UDP stream forwards, PROXY v2 accepted only from ingress nodes,
//! and a listener on this node's Yggdrasil address for mesh clients.
#![forbid(unsafe_code)]

pub mod config;
