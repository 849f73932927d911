//! What the server knows about the connection a request came on: read by the request
//! handler and the reverse proxy alike (a leaf, so neither depends on the other for it).

use std::sync::Arc;

use crate::admission::ClientInfo;
use crate::state::State;

#[derive(Debug)]
pub struct Conn {
    pub info: ClientInfo,
    /// Whether the client connection is TLS (`X-Forwarded-Proto`).
    pub tls: bool,
    pub listener: &'static str,
    pub state: Arc<State>,
}
