//! One TCP stream forward: pick an upstream of the stream's pool and connect under a deadline
//! (from the client's own address for a transparent stream); a failed connect counts against
//! that upstream and moves to the next usable one, so a refusing replica costs the client
//! nothing. Then optionally announce the client with a PROXY v2 header and relay both ways
//! with half-close and an idle bound. The connection holds its upstream (least_conn load)
//! until it ends, and is one access log line when the stream logs (`stream::log`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use shared::health::{Outcome, Source};
use shared::proxy_protocol::{self, ClientHeader, Command, Transport};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::debug;

use crate::access_log::Sink;
use crate::admission::ClientInfo;
use crate::config::Stream;
use crate::idle::{Activity, Tracked};
use crate::metrics::names;
use crate::pool::{Active, Pool, Tried};
use crate::stream::log::TcpConn;
use crate::transparent::{self, TransparentError};

/// Relay `client` (already admitted, header consumed) to one of the stream's upstreams;
/// `log`: the stream's access log.
pub async fn forward(
    client: TcpStream,
    info: ClientInfo,
    local: SocketAddr,
    stream: &Stream,
    pool: &Pool,
    log: Option<Arc<Sink>>,
) {
    let name = stream.name.clone();
    let mut line = TcpConn {
        stream: &stream.name,
        client: info.client,
        listen_port: local.port(),
        started: SystemTime::now(),
        start: std::time::Instant::now(),
        upstream: None,
        result: "no_upstream",
        end: "closed",
        bytes_in: 0,
        bytes_out: 0,
        attempts: 0,
    };
    let mut tried = Tried::default();
    let (upstream, _held) = loop {
        let Some(i) = pool.pick(tried) else {
            if tried == Tried::default() {
                pool.count_unavailable();
                shared::warn_every_second!(stream = %name, "no usable upstream; connection closed");
                count(&name, "no_upstream");
            }
            if let Some(sink) = &log {
                line.send(sink);
            }
            return;
        };
        let retry = tried != Tried::default();
        tried.insert(i);
        line.attempts += 1;
        let Some(state) = pool.state(i) else { return };
        state.metrics().m_requests.increment(1);
        if retry {
            state.metrics().m_retries.increment(1);
        }
        let target = stream.upstream_for(i, local.port());
        let start = Instant::now();
        match connect(stream, &info, target).await {
            Ok(s) => {
                pool.record_ok(i, start.elapsed(), Source::Traffic);
                (line.upstream, line.result) = (Some(target), "ok");
                break (s, Active::new(state.clone()));
            }
            Err((result, reason)) => {
                line.result = result;
                count(&name, result);
                if result != "transparent_failed" && result != "local_resources" {
                    state.count_failure(if result == "connect_timeout" { "timeout" } else { "connect" });
                    pool.record(i, Outcome::Failed, Source::Traffic, Some(&reason));
                } else {
                    // No verdict on the upstream; a retry this was is over all the same.
                    pool.record(i, Outcome::Local, Source::Traffic, None);
                }
            }
        }
    };
    count(&name, "ok");
    let _ = upstream.set_nodelay(true);
    let _ = client.set_nodelay(true);

    let activity = Activity::new();
    let to_upstream = metrics::counter!(names::STREAM_BYTES, "stream" => name.clone(), "direction" => "in");
    let to_client = metrics::counter!(names::STREAM_BYTES, "stream" => name.clone(), "direction" => "out");
    let mut client = Tracked::new(client, activity.clone()).count_reads(to_upstream);
    if !stream.proxy_protocol {
        // Without our header, one the client sends first would reach the upstream as our word
        // on who the client is (a service that trusts this host for PROXY headers takes it).
        client = client.refuse_proxy_header();
    }
    let mut upstream = Tracked::new(upstream, activity.clone()).count_reads(to_client);
    line.end = relay(&mut client, &mut upstream, &activity, stream, &info).await;
    if let Some(sink) = &log {
        (line.bytes_in, line.bytes_out) = (client.bytes_read(), upstream.bytes_read());
        line.send(sink);
    }
}

/// Send the PROXY header if configured, then relay both ways until both sides are done or
/// the connection idles out; how it ended (`closed`, `idle`, `error`, `proxy_header`).
async fn relay(
    client: &mut Tracked<TcpStream>,
    upstream: &mut Tracked<TcpStream>,
    activity: &Activity,
    stream: &Stream,
    info: &ClientInfo,
) -> &'static str {
    let name = &stream.name;
    if stream.proxy_protocol {
        let mut header = Vec::with_capacity(64);
        proxy_protocol::write_v2(&mut header, Command::Proxy, Transport::Stream, Some((info.client, info.destination)));
        if let Err(e) = upstream.write_all(&header).await {
            debug!(stream = %name, error = %e, "writing PROXY header failed");
            return "error";
        }
    }
    tokio::select! {
        res = tokio::io::copy_bidirectional(client, upstream) => match res {
            Ok(_) => "closed",
            Err(e) if ClientHeader::is(&e) => {
                debug!(stream = %name, client = %info.client, "the client's bytes start with a PROXY header; closed");
                metrics::counter!(names::STREAM_PROXY_HEADERS, "stream" => name.clone()).increment(1);
                "proxy_header"
            }
            Err(e) => {
                debug!(stream = %name, error = %e, "stream relay ended with an error");
                "error"
            }
        },
        _ = activity.idle_for(stream.idle_timeout) => {
            debug!(stream = %name, "stream idle, closed");
            "idle"
        }
    }
}

/// Connect to `target`; on failure the metrics result and the reason.
async fn connect(stream: &Stream, info: &ClientInfo, target: SocketAddr) -> Result<TcpStream, (&'static str, String)> {
    let name = &stream.name;
    if stream.transparent && transparent::usable(info.client, target) {
        return match transparent::connect_tcp(info.client, target, stream.connect_timeout).await {
            Ok(s) => Ok(s),
            Err(TransparentError::Timeout) => {
                shared::warn_every_second!(stream = %name, upstream = %target, "upstream connect timed out");
                Err(("connect_timeout", "connect timed out".into()))
            }
            Err(e) => {
                let result = if e.is_setup() { "transparent_failed" } else { "connect_failed" };
                shared::warn_every_second!(stream = %name, upstream = %target, client = %info.client, error = %e, "upstream connect failed");
                Err((result, e.to_string()))
            }
        };
    }
    if stream.transparent {
        // A mesh client (IPv6) to an IPv4 service, or the reverse: no way to use its address.
        metrics::counter!(names::STREAM_TRANSPARENT_FALLBACKS, "stream" => name.clone(), "reason" => "family")
            .increment(1);
    }
    match tokio::time::timeout(stream.connect_timeout, TcpStream::connect(target)).await {
        Err(_) => {
            shared::warn_every_second!(stream = %name, upstream = %target, "upstream connect timed out");
            Err(("connect_timeout", "connect timed out".into()))
        }
        Ok(Err(e)) => {
            shared::warn_every_second!(stream = %name, upstream = %target, error = %e, "upstream connect failed");
            // Out of descriptors: our failure, not the upstream's (counted, not recorded).
            let result = if shared::health::out_of_resources(&e) { "local_resources" } else { "connect_failed" };
            Err((result, format!("connect: {e}")))
        }
        Ok(Ok(s)) => Ok(s),
    }
}

fn count(stream: &str, result: &'static str) {
    metrics::counter!(names::STREAM_CONNECTIONS, "stream" => stream.to_string(), "result" => result).increment(1);
}
