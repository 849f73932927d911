//! UDP stream forwards. One task per listening socket reads datagrams and keeps a flow table
//! keyed by (sender, client); each flow has its own connected upstream socket (it sorts the
//! replies) and a reply task that ends when the flow idles out. On WAN-side sockets only
//! trusted ingress peers are heard; a datagram may start with a PROXY v2 header naming the
//! client, which is stripped. A transparent stream binds each flow's upstream socket to the
//! client's own address (see `transparent`). Replies go out of the listening socket, which is
//! bound to one WAN address, so they leave by the WAN the flow came in on.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use shared::proxy_protocol::{self, Command, Transport, V2_SIGNATURE};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::config::Stream;
use crate::idle::Activity;
use crate::listeners::Origin;
use crate::metrics::names;
use crate::state::State;
use crate::transparent::{self, TransparentError};

/// Largest datagram relayed.
const MAX_DATAGRAM: usize = 65_535;

type FlowKey = (SocketAddr, SocketAddr);

/// `(client, destination, payload)` of an accepted datagram.
type Inbound<'a> = (SocketAddr, SocketAddr, &'a [u8]);

#[derive(Debug)]
struct Flow {
    upstream: UdpSocket,
    activity: Activity,
    /// PROXY v2 header prepended to every datagram to the upstream, when configured.
    header: Option<Vec<u8>>,
}

type Flows = Arc<Mutex<HashMap<FlowKey, Arc<Flow>>>>;

/// Serve one UDP socket of a stream until `stop` (shutdown, or a reload that removes it).
/// Returns once every flow of the socket has ended, so the port is free again.
pub async fn serve(
    socket: UdpSocket,
    origin: Origin,
    stream_name: Arc<ArcSwap<String>>,
    stop: CancellationToken,
    state: Arc<State>,
) {
    let flow_tasks = TaskTracker::new();
    serve_flows(socket, origin, stream_name, &stop, &state, &flow_tasks).await;
    flow_tasks.close();
    flow_tasks.wait().await;
}

async fn serve_flows(
    socket: UdpSocket,
    origin: Origin,
    stream_name: Arc<ArcSwap<String>>,
    stop: &CancellationToken,
    state: &Arc<State>,
    flow_tasks: &TaskTracker,
) {
    let socket = Arc::new(socket);
    let Ok(local) = socket.local_addr() else { return };
    let flows: Flows = Arc::default();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let received = tokio::select! {
            r = socket.recv_from(&mut buf) => r,
            _ = stop.cancelled() => return,
        };
        let name = stream_name.load_full();
        let (n, sender) = match received {
            Ok(r) => r,
            Err(e) => {
                debug!(stream = %name, error = %e, "recv failed");
                continue;
            }
        };
        let config = state.config.load();
        let Some(stream) = config.streams.iter().find(|s| s.name == *name) else {
            continue;
        };
        let datagram = &buf[..n];
        let (client, destination, payload) = match classify(origin, sender, local, datagram, state) {
            Ok(Some(c)) => c,
            Ok(None) => continue,
            Err(result) => {
                drop_count(&name, result);
                continue;
            }
        };
        let key = (sender, client);
        let existing = lock(&flows).get(&key).cloned();
        let flow = match existing {
            Some(f) => f,
            None => match open_flow(&flows, key, destination, local, stream, &socket, stop, flow_tasks).await {
                Some(f) => f,
                None => continue,
            },
        };
        flow.activity.touch();
        let sent = match &flow.header {
            Some(h) => {
                let mut out = Vec::with_capacity(h.len() + payload.len());
                out.extend_from_slice(h);
                out.extend_from_slice(payload);
                flow.upstream.send(&out).await
            }
            None => flow.upstream.send(payload).await,
        };
        match sent {
            Ok(_) => {
                metrics::counter!(names::UDP_DATAGRAMS, "stream" => name.to_string(), "direction" => "in").increment(1)
            }
            Err(e) => {
                debug!(stream = %name, error = %e, "send to upstream failed");
                drop_count(&name, "send_failed");
            }
        }
    }
}

/// Who the datagram is from and where its payload starts. `Ok(None)`: a LOCAL health probe,
/// silently consumed. `Err(result)`: dropped, with the metrics result.
fn classify<'a>(
    origin: Origin,
    sender: SocketAddr,
    local: SocketAddr,
    datagram: &'a [u8],
    state: &State,
) -> Result<Option<Inbound<'a>>, &'static str> {
    if origin == Origin::Mesh {
        return Ok(Some((sender, local, datagram)));
    }
    if !state.trusted.contains(sender.ip()) {
        return Err("untrusted");
    }
    if !datagram.starts_with(&V2_SIGNATURE) {
        // The ingress may relay UDP without a header; then it is the best client address known.
        return Ok(Some((sender, local, datagram)));
    }
    let parsed = proxy_protocol::parse(datagram).map_err(|_| "bad_header")?;
    let payload = &datagram[parsed.len..];
    Ok(match (parsed.command, parsed.addresses()) {
        (Command::Local, _) => None,
        (Command::Proxy, Some((client, dest))) => Some((client, dest, payload)),
        (Command::Proxy, None) => Some((sender, local, payload)),
    })
}

fn lock(flows: &Flows) -> std::sync::MutexGuard<'_, HashMap<FlowKey, Arc<Flow>>> {
    // A poisoned map is still consistent: entries are inserted and removed whole.
    flows.lock().unwrap_or_else(|p| p.into_inner())
}

fn drop_count(stream: &str, result: &'static str) {
    metrics::counter!(names::UDP_DROPPED, "stream" => stream.to_string(), "result" => result).increment(1);
}

#[allow(clippy::too_many_arguments)]
async fn open_flow(
    flows: &Flows,
    key: FlowKey,
    destination: SocketAddr,
    local: SocketAddr,
    stream: &Stream,
    socket: &Arc<UdpSocket>,
    stop: &CancellationToken,
    flow_tasks: &TaskTracker,
) -> Option<Arc<Flow>> {
    if lock(flows).len() >= stream.max_flows {
        drop_count(&stream.name, "flow_limit");
        return None;
    }
    let target = stream.upstream_for(local.port());
    let upstream = if stream.transparent && transparent::usable(key.1, target) {
        match transparent::udp(key.1, target).await {
            Ok(s) => s,
            Err(e) => {
                transparent_failed(&stream.name, target, &e);
                drop_count(&stream.name, if e.is_setup() { "transparent_failed" } else { "send_failed" });
                return None;
            }
        }
    } else {
        if stream.transparent {
            // A mesh client (IPv6) to an IPv4 service, or the reverse: no way to use its address.
            metrics::counter!(names::STREAM_TRANSPARENT_FALLBACKS, "stream" => stream.name.clone(), "reason" => "family")
                .increment(1);
        }
        plain_flow_socket(stream, target).await?
    };
    let header = stream.proxy_protocol.then(|| {
        let mut h = Vec::with_capacity(64);
        proxy_protocol::write_v2(&mut h, Command::Proxy, Transport::Datagram, Some((key.1, destination)));
        h
    });
    let flow = Arc::new(Flow { upstream, activity: Activity::new(), header });
    lock(flows).insert(key, flow.clone());
    metrics::gauge!(names::UDP_FLOWS_ACTIVE, "stream" => stream.name.clone()).increment(1.0);
    flow_tasks.spawn(replies(
        flows.clone(),
        key,
        flow.clone(),
        socket.clone(),
        stream.name.clone(),
        stream.idle_timeout,
        stop.clone(),
    ));
    Some(flow)
}

/// A flow socket from our own address (any port), connected to the upstream.
async fn plain_flow_socket(stream: &Stream, target: SocketAddr) -> Option<UdpSocket> {
    let any: IpAddr = match target {
        SocketAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        SocketAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    };
    let upstream = match UdpSocket::bind(SocketAddr::new(any, 0)).await {
        Ok(s) => s,
        Err(e) => {
            warn!(stream = %stream.name, error = %e, "cannot open a flow socket");
            drop_count(&stream.name, "send_failed");
            return None;
        }
    };
    if let Err(e) = upstream.connect(target).await {
        warn!(stream = %stream.name, upstream = %target, error = %e, "cannot reach upstream");
        drop_count(&stream.name, "send_failed");
        return None;
    }
    Some(upstream)
}

/// A missing capability is a deployment fault (warn); anything else is per flow (debug).
fn transparent_failed(stream: &str, upstream: SocketAddr, e: &TransparentError) {
    match e {
        TransparentError::Option(_) => warn!(stream, %upstream, error = %e, "transparent flow refused"),
        _ => debug!(stream, %upstream, error = %e, "transparent flow failed"),
    }
}

/// Relay the upstream's replies to the sender until the flow idles out.
async fn replies(
    flows: Flows,
    key: FlowKey,
    flow: Arc<Flow>,
    socket: Arc<UdpSocket>,
    name: String,
    idle: std::time::Duration,
    stop: CancellationToken,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        tokio::select! {
            r = flow.upstream.recv(&mut buf) => match r {
                Ok(n) => {
                    flow.activity.touch();
                    match socket.send_to(&buf[..n], key.0).await {
                        Ok(_) => metrics::counter!(names::UDP_DATAGRAMS, "stream" => name.clone(), "direction" => "out")
                            .increment(1),
                        Err(_) => drop_count(&name, "send_failed"),
                    }
                }
                // ICMP port unreachable from the upstream surfaces here; the flow may recover.
                Err(e) => debug!(stream = %name, error = %e, "upstream recv error"),
            },
            _ = flow.activity.idle_for(idle) => break,
            _ = stop.cancelled() => break,
        }
    }
    lock(&flows).remove(&key);
    metrics::gauge!(names::UDP_FLOWS_ACTIVE, "stream" => name).decrement(1.0);
}
