//! Stream forwards: TCP connections and UDP flows relayed to LAN services.

pub mod flow_socket;
pub mod log;
pub mod tcp;
pub mod udp;
