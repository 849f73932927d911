//! One TCP stream forward: connect to the LAN service under a deadline (from the client's own
//! address for a transparent stream), optionally announce the client with a PROXY v2 header,
//! then relay both ways with half-close and an idle bound.

use std::net::SocketAddr;

use shared::proxy_protocol::{self, Command, Transport};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tracing::{debug, warn};

use crate::admission::ClientInfo;
use crate::config::Stream;
use crate::idle::{Activity, Tracked};
use crate::metrics::names;
use crate::transparent::{self, TransparentError};

/// Relay `client` (already admitted, header consumed) to the stream's upstream.
pub async fn forward(client: TcpStream, info: ClientInfo, local: SocketAddr, stream: &Stream) {
    let name = stream.name.clone();
    let target = stream.upstream_for(local.port());
    let upstream = if stream.transparent && transparent::usable(info.client, target) {
        match transparent::connect_tcp(info.client, target, stream.connect_timeout).await {
            Ok(s) => s,
            Err(TransparentError::Timeout) => {
                warn!(stream = %name, upstream = %target, "upstream connect timed out");
                count(&name, "connect_timeout");
                return;
            }
            Err(e) => {
                let result = if e.is_setup() { "transparent_failed" } else { "connect_failed" };
                warn!(stream = %name, upstream = %target, client = %info.client, error = %e, "upstream connect failed");
                count(&name, result);
                return;
            }
        }
    } else {
        if stream.transparent {
            // A mesh client (IPv6) to an IPv4 service, or the reverse: no way to use its address.
            metrics::counter!(names::STREAM_TRANSPARENT_FALLBACKS, "stream" => name.clone(), "reason" => "family")
                .increment(1);
        }
        match tokio::time::timeout(stream.connect_timeout, TcpStream::connect(target)).await {
            Err(_) => {
                warn!(stream = %name, upstream = %target, "upstream connect timed out");
                count(&name, "connect_timeout");
                return;
            }
            Ok(Err(e)) => {
                warn!(stream = %name, upstream = %target, error = %e, "upstream connect failed");
                count(&name, "connect_failed");
                return;
            }
            Ok(Ok(s)) => s,
        }
    };
    count(&name, "ok");
    let _ = upstream.set_nodelay(true);
    let _ = client.set_nodelay(true);

    let activity = Activity::new();
    let to_upstream = metrics::counter!(names::STREAM_BYTES, "stream" => name.clone(), "direction" => "in");
    let to_client = metrics::counter!(names::STREAM_BYTES, "stream" => name.clone(), "direction" => "out");
    let mut client = Tracked::new(client, activity.clone()).count_reads(to_upstream);
    let mut upstream = Tracked::new(upstream, activity.clone()).count_reads(to_client);
    if stream.proxy_protocol {
        let mut header = Vec::with_capacity(64);
        proxy_protocol::write_v2(&mut header, Command::Proxy, Transport::Stream, Some((info.client, info.destination)));
        if let Err(e) = upstream.write_all(&header).await {
            debug!(stream = %name, error = %e, "writing PROXY header failed");
            return;
        }
    }
    tokio::select! {
        res = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {
            if let Err(e) = res {
                debug!(stream = %name, error = %e, "stream relay ended with an error");
            }
        }
        _ = activity.idle_for(stream.idle_timeout) => debug!(stream = %name, "stream idle, closed"),
    }
}

fn count(stream: &str, result: &'static str) {
    metrics::counter!(names::STREAM_CONNECTIONS, "stream" => stream.to_string(), "result" => result).increment(1);
}
