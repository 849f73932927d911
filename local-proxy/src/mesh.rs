//! This node's Yggdrasil address, from the yggdrasil admin socket (`getSelf`).

use std::net::IpAddr;
use std::time::Duration;

use shared::ygg::{self, Endpoint};

/// How long the admin socket may take to answer.
const TIMEOUT: Duration = Duration::from_secs(5);

/// Ask the yggdrasil router at `endpoint` for this node's 200::/7 address.
pub async fn self_address(endpoint: &str) -> Result<IpAddr, String> {
    let endpoint: Endpoint = endpoint.parse().map_err(|e: ygg::Error| e.to_string())?;
    let info = ygg::get_self(&endpoint, TIMEOUT).await.map_err(|e| e.to_string())?;
    Ok(IpAddr::V6(info.address))
}
