//! One TCP stream forward: connect to the LAN service under a deadline, optionally announce
//! the client with a PROXY v2 header, then relay both ways with half-close and an idle bound.

use std::net::SocketAddr;

use shared::proxy_protocol::{self, Command, Transport};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tracing::{debug, warn};

use crate::admission::ClientInfo;
use crate::config::Stream;
use crate::idle::{Activity, Tracked};
use crate::metrics::names;

/// Relay `client` (already admitted, header consumed) to the stream's upstream.
pub async fn forward(client: TcpStream, info: ClientInfo, local: SocketAddr, stream: &Stream) {
    let name = stream.name.clone();
    let target = stream.upstream_for(local.port());
    let upstream = match tokio::time::timeout(stream.connect_timeout, TcpStream::connect(target)).await {
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
