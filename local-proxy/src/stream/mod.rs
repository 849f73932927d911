//! Stream forwards: TCP connections and UDP flows relayed to LAN services.

pub mod tcp;
pub mod udp;
