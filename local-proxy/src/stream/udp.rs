//! UDP stream forwards. One task per listening socket reads datagrams (in batches when it is
//! busy, each flow's run of them sent on in one GSO send: `shared::udp_batch`) and owns a flow
//! table (`shared::udp_flows`) keyed by (sender, client); each flow has its own connected
//! upstream socket (it sorts the replies) and a reply pump reading into one buffer per worker
//! thread.
//! Flows are admitted under the stream's budget, shared by all its sockets; at the cap a new
//! source takes the slot of the flow silent longest (after an eighth of the idle timeout, at
//! most 250 ms), so a flood of one-shot sources cannot lock legitimate clients out, and no
//! client address holds more than a quarter of a nearly full budget (`FlowBudget::share`), so
//! neither can one that keeps its many flows talking; flows expire after the idle timeout.
//! On WAN-side sockets only trusted ingress peers are heard; a datagram may start
//! with a PROXY v2 header naming the client, which is stripped (on the mesh socket too, from
//! the ingress nodes' mesh addresses in `mesh.trusted_ingress`). A transparent stream binds
//! each flow's upstream socket to the client's own address (see `transparent`). Replies go
//! out of the listening socket, from the address the flow's first datagram was sent to (one
//! WAN address, or on a wildcard socket the one asked: `Batch::for_listener`), so they leave
//! by the WAN the flow came in on. A flow is pinned to the upstream its stream's pool picked
//! when it opened (it counts as that upstream's load); when that upstream goes down, the flow's
//! next datagram opens it anew on a usable one. A stream with an access log writes one line
//! per flow when it ends (`stream::log`). When the process stops (a restart), each socket's
//! flows stay for the replies still on their way (`udp_relay::linger`); a reload that removes
//! a socket ends its flows at once, because a reload waits for the socket to close (its port
//! may be bound again by the new config).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use metrics::{Counter, Gauge};
use shared::listeners::{size_recv_buffer, RecvBufferKeeper};
use shared::proxy_protocol::{self, Command, Transport, V2_SIGNATURE};
use shared::udp_batch::{Batch, Run, Segmenting};
use shared::udp_flows::{evict_after, FlowBudget, FlowEntry, FlowLife, FlowPermits, FlowTable, SourceShare};
use shared::udp_relay::{linger, pump_while};
use tokio::net::UdpSocket;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;

use crate::access_log::Sink;
use crate::admission::mesh_ingress;
use crate::config::Stream;
use crate::listeners::Origin;
use crate::metrics::names;
use crate::pool::{Active, Pool, Tried};
use crate::state::State;
use crate::stream::flow_socket::{FlowSocket, ReplyTo};
use crate::stream::log::{FlowCounts, FlowLog};
use crate::transparent::{self, TransparentError};

type FlowKey = (SocketAddr, SocketAddr);

/// `(client, destination, payload)` of an accepted datagram.
type Inbound<'a> = (SocketAddr, SocketAddr, &'a [u8]);

struct Flow {
    /// The upstream socket and reply route (shared with an older flow of the same
    /// transparent conversation; see `flow_socket`).
    upstream: Arc<FlowSocket>,
    /// The pool member the flow went to; held (counted as active) while the flow lives.
    member: Active,
    /// PROXY v2 header sent with every datagram to the upstream, when configured.
    header: Option<Box<[u8]>>,
    active: Gauge,
    life: FlowLife,
    /// Its access log line, written when the flow is dropped.
    log: Option<FlowLog>,
    /// Whether the route to its upstream takes UDP GSO, learned from its refusals.
    segmenting: Segmenting,
}

impl Flow {
    /// Why the flow ends, for its access log line.
    fn ending(&self, why: &'static str) {
        if let Some(l) = &self.log {
            l.ending(why);
        }
    }
}

impl FlowEntry for Flow {
    fn last_active(&self) -> u64 {
        self.life.last_active()
    }

    fn permits(&self) -> Option<&FlowPermits> {
        self.life.permits()
    }
}

impl Drop for Flow {
    fn drop(&mut self) {
        self.active.decrement(1.0);
    }
}

/// Flow budgets by stream name, shared by every socket of a stream (WAN addresses, mesh)
/// and kept across reloads; the cap follows the stream's `max_flows`.
static BUDGETS: LazyLock<Mutex<HashMap<String, Arc<FlowBudget>>>> = LazyLock::new(Default::default);

fn stream_budget(name: &str, cap: usize) -> Arc<FlowBudget> {
    let mut map = BUDGETS.lock().unwrap_or_else(|p| p.into_inner());
    let b = map.entry(name.to_string()).or_insert_with(|| FlowBudget::new(cap));
    b.set_cap(cap);
    b.clone()
}

/// UDP flows of stream `name` open now, over all its sockets (status page, `/status`).
pub fn open_flows(name: &str) -> usize {
    let map = BUDGETS.lock().unwrap_or_else(|p| p.into_inner());
    map.get(name).map_or(0, |b| b.used())
}

/// No process-wide cap beyond the streams' own (the ingress derives one from its descriptor
/// budget; here the streams are few and configured by the operator).
static GLOBAL: LazyLock<Arc<FlowBudget>> = LazyLock::new(|| FlowBudget::new(usize::MAX));

/// Why a datagram was dropped: the `result` of `local_proxy_udp_dropped_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dropped {
    Untrusted,
    BadHeader,
    SourceShare,
    FlowLimit,
    StreamRemoved,
    SendFailed,
    NoUpstream,
    TransparentFailed,
    ProxyHeader,
}

impl Dropped {
    const ALL: [Self; 9] = [
        Self::Untrusted,
        Self::BadHeader,
        Self::SourceShare,
        Self::FlowLimit,
        Self::StreamRemoved,
        Self::SendFailed,
        Self::NoUpstream,
        Self::TransparentFailed,
        Self::ProxyHeader,
    ];

    fn label(self) -> &'static str {
        match self {
            Self::Untrusted => "untrusted",
            Self::BadHeader => "bad_header",
            Self::SourceShare => "source_share",
            Self::FlowLimit => "flow_limit",
            Self::StreamRemoved => "stream_removed",
            Self::SendFailed => "send_failed",
            Self::NoUpstream => "no_upstream",
            Self::TransparentFailed => "transparent_failed",
            Self::ProxyHeader => "proxy_header",
        }
    }
}

/// Hot-path counters of one stream, registered once per listening loop (and again only if a
/// reload renames the stream): a flood of dropped datagrams costs no label allocation each.
struct Counters {
    stream: Arc<String>,
    dgrams_in: Counter,
    dgrams_out: Counter,
    evicted: Counter,
    /// By `Dropped as usize`.
    dropped: [Counter; Dropped::ALL.len()],
}

impl Counters {
    fn new(stream: Arc<String>) -> Arc<Self> {
        // All present from the start at 0, so an alert on their increase sees the first one.
        let dropped = Dropped::ALL.map(|d| {
            let c = metrics::counter!(names::UDP_DROPPED, "stream" => stream.to_string(), "result" => d.label());
            c.increment(0);
            c
        });
        let evicted = metrics::counter!(names::UDP_FLOWS_EVICTED, "stream" => stream.to_string());
        evicted.increment(0);
        let c = |dir: &'static str| metrics::counter!(names::UDP_DATAGRAMS, "stream" => stream.to_string(), "direction" => dir);
        Arc::new(Self { dgrams_in: c("in"), dgrams_out: c("out"), evicted, dropped, stream })
    }

    fn dropped(&self, why: Dropped, n: usize) {
        self.dropped[why as usize].increment(n as u64);
    }
}

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
    let epoch = Instant::now();
    let now_ms = || epoch.elapsed().as_millis() as u64;
    let idle_of = |name: &str| {
        let config = state.config.load();
        config.streams.iter().find(|s| s.name == name).map_or(Duration::from_secs(60), |s| s.idle_timeout)
    };
    let mut table: FlowTable<FlowKey, Flow> = FlowTable::new(idle_of(&stream_name.load()).as_millis() as u64);
    let mut sweep = tokio::time::interval(Duration::from_millis(100));
    let mut gone = Vec::new();
    let mut counters = Counters::new(stream_name.load_full());
    let mut batch = Batch::for_listener(&socket);
    // This socket asked its stream's budget for a slot (`FlowTable::admit_among`).
    let mut waiting = false;
    let mut recv_buffer = RecvBufferKeeper::default();
    if let Some(s) = state.config.load().streams.iter().find(|s| s.name == **stream_name.load()) {
        recv_buffer.keep(&socket, s.udp_recv_buffer, &s.name);
    }
    // The config the table's flows were opened under, and the name it knew the socket's stream by.
    let mut opened_under = (state.config.load_full(), stream_name.load_full());
    loop {
        // `None`: the sweep's turn, which also applies a reload to flows that only receive
        // (else a removed upstream's replies would reach their clients until they next send).
        let received = tokio::select! {
            r = batch.read(&socket) => Some(r),
            _ = sweep.tick() => {
                table.set_idle(idle_of(&stream_name.load()).as_millis() as u64);
                table.expire(now_ms(), &mut gone);
                gone.iter().for_each(|f: &Flow| f.ending("idle"));
                gone.clear();
                None
            }
            _ = stop.cancelled() => {
                if state.shutdown.is_cancelled() {
                    linger(&table, now_ms).await;
                }
                return;
            }
        };
        let name = stream_name.load_full();
        if !Arc::ptr_eq(&name, &counters.stream) {
            counters = Counters::new(name.clone());
        }
        if let Some(Err(e)) = &received {
            debug!(stream = %name, error = %e, "recv failed");
            continue;
        }
        // The batch's settings come with the pools of their generation: a flow opened after a
        // reload that came while it waited for room (`admit_among`) still pairs member i with
        // its own upstream i, and the next batch sees the reload.
        let pools = state.pools.load_full();
        let config = pools.config();
        let Some(stream) = config.streams.iter().find(|s| s.name == *name) else {
            // A reload removed the stream; this socket closes as soon as its loop sees it.
            if received.is_some() {
                counters.dropped(Dropped::StreamRemoved, batch.len());
            }
            continue;
        };
        recv_buffer.keep(&socket, stream.udp_recv_buffer, &stream.name);
        if !Arc::ptr_eq(&opened_under.0, config) {
            // A reload: if it changed where or how this socket's stream sends (its upstreams,
            // PROXY header, transparency, or the stream itself), the flows end and the next
            // datagram of each opens a new one under the new settings, as nginx's new workers
            // would take it; a talking flow would otherwise keep its old upstream for as long as
            // it talks. Other changes (timeouts, checks, weights) leave the flows alone: a
            // reopened flow has a new source port, which a TURN server takes for a new client.
            let before = opened_under.0.streams.iter().find(|s| s.name == *opened_under.1);
            if !before.is_some_and(|b| b.sends_as(stream)) {
                table.drain_where(|_| true, &mut gone);
                gone.iter().for_each(|f: &Flow| f.ending("reload"));
                gone.clear();
            }
            opened_under = (config.clone(), name.clone());
        }
        if received.is_none() {
            continue;
        }
        let now = now_ms();
        // One flow's consecutive datagrams of one shape, sent together once the run ends.
        let mut run: Option<Run<FlowKey>> = None;
        for i in 0..batch.len() {
            let Some((datagram, sender)) = batch.get(i) else {
                flush(&mut run, &batch, &mut table, &counters);
                continue;
            };
            // Where the sender sent it: this socket's address, or on a wildcard one, the host's
            // address it was sent to (the flow answers from it; see `ReplyTo::from`).
            let asked = batch.to(i);
            let here = SocketAddr::new(asked.unwrap_or(local.ip()), local.port());
            let (client, destination, payload) = match classify(origin, sender, here, datagram, state) {
                Ok(Some(c)) => c,
                Ok(None) => continue,
                Err(result) => {
                    counters.dropped(result, 1);
                    continue;
                }
            };
            // Without our header, the client's own would reach the upstream as our word on who
            // the client is (the ingress drops such datagrams likewise).
            if !stream.proxy_protocol && payload.starts_with(&V2_SIGNATURE) {
                counters.dropped(Dropped::ProxyHeader, 1);
                continue;
            }
            let key = (sender, client);
            // None: no flow yet; Some(true): its upstream went down and another can take it.
            // With none to move to, the flow stays where it is (the down may be one failed
            // check): ended, its datagram would be dropped and the flow reopened later from a
            // new source port, which a TURN allocation or a game server takes for another
            // client. The ingress keeps a flow on a down path likewise.
            let down = table.get(&key).map(|f| {
                !f.member.is_up() && pools.stream(&stream.name).is_some_and(|p| p.any_usable_besides(f.member.state()))
            });
            if down != Some(false) {
                // What the run holds goes out before the table changes under it.
                flush(&mut run, &batch, &mut table, &counters);
            }
            // The upstream a flow leaves is not picked for it again (its retry may be due).
            let mut avoid = Tried::default();
            // A moving flow's slots go to its new flow: at a full budget, another flow would
            // otherwise be evicted for it (or the datagram dropped).
            let mut moved = None;
            if down == Some(true) {
                // Its upstream went down: this datagram opens the flow again on a usable one.
                if let Some(f) = table.remove(&key) {
                    let pool = pools.stream(&stream.name);
                    let members = pool.as_ref().map_or(&[][..], |p| &p.members[..]);
                    if let Some(i) = members.iter().position(|m| Arc::ptr_eq(&m.state, f.member.state())) {
                        avoid.insert(i);
                    }
                    f.ending("upstream_down");
                    moved = f.permits().cloned();
                }
            }
            if down != Some(false) {
                // Room first: a flood of new sources at the cap must not cost a socket each.
                let budget = stream_budget(&stream.name, stream.max_flows);
                // An ingress relaying without PROXY headers speaks for all its clients under
                // its own address: not one source to hold to a share.
                let relay = client == sender
                    && match origin {
                        Origin::Wan => true,
                        Origin::Mesh => mesh_ingress(sender.ip(), &state.config.load().mesh.trusted_ingress),
                    };
                let share = if relay { budget.share_unbounded(client.ip()) } else { budget.share(client.ip()) };
                let Some(share) = share else {
                    counters.dropped(Dropped::SourceShare, 1);
                    continue;
                };
                let evict_idle = evict_after(stream.idle_timeout.as_millis() as u64);
                let acquire = || FlowPermits::acquire(&budget, &GLOBAL);
                let evicted = |f: Flow| {
                    f.ending("evicted");
                    counters.evicted.increment(1);
                };
                let permits = match moved {
                    Some(slots) => slots.reclaim(&budget, acquire).await,
                    None => None,
                };
                let permits = match permits {
                    Some(p) => Some(p),
                    None => table.admit_among(&budget, &mut waiting, now, evict_idle, acquire, evicted).await,
                };
                let Some(permits) = permits else {
                    counters.dropped(Dropped::FlowLimit, 1);
                    continue;
                };
                let Some(pool) = pools.stream(&stream.name) else { continue };
                let log = state.stream_logs.load().get(&stream.name);
                let opened = open_flow(
                    key,
                    destination,
                    (local, asked),
                    stream,
                    pool,
                    &socket,
                    (permits, share),
                    now,
                    epoch,
                    &counters,
                    flow_tasks,
                    log,
                    avoid,
                );
                let Some(flow) = opened.await else {
                    continue;
                };
                drop(table.insert(key, flow, now));
            }
            let Some(flow) = table.get(&key) else { continue };
            flow.life.touch(now);
            let header = flow.header.as_ref().map_or(0, |h| h.len());
            // The payload is the datagram's tail (past a PROXY header when there is one).
            let skip = datagram.len() - payload.len();
            if !run.as_mut().is_some_and(|r| r.extend(i, key, skip, payload.len(), header)) {
                flush(&mut run, &batch, &mut table, &counters);
                run = Some(Run::new(i, key, skip, payload.len()));
            }
        }
        flush(&mut run, &batch, &mut table, &counters);
    }
}

/// Sends the run's payloads to their flow's upstream (`shared::udp_batch`). Never waits on one
/// upstream: a full send queue drops them, as a router would.
fn flush(run: &mut Option<Run<FlowKey>>, batch: &Batch, table: &mut FlowTable<FlowKey, Flow>, counters: &Counters) {
    let Some(run) = run.take() else { return };
    let Some(flow) = table.get_mut(&run.key) else { return };
    let sent = batch.send(&run, &mut flow.segmenting, &flow.upstream.upstream, flow.header.as_deref());
    counters.dgrams_in.increment(sent.datagrams as u64);
    if let Some(l) = &flow.log {
        l.counts.inbound(sent.datagrams, run.len);
    }
    let dropped = run.count().saturating_sub(sent.datagrams);
    if dropped > 0 {
        debug!(stream = %counters.stream, dropped, "send to upstream failed");
        counters.dropped(Dropped::SendFailed, dropped);
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
) -> Result<Option<Inbound<'a>>, Dropped> {
    match origin {
        // A mesh client; an ingress node's mesh tier (mesh.trusted_ingress) may carry headers.
        Origin::Mesh if !mesh_ingress(sender.ip(), &state.config.load().mesh.trusted_ingress) => {
            return Ok(Some((sender, local, datagram)))
        }
        Origin::Mesh => {}
        Origin::Wan if !state.trusted.contains(sender.ip()) => return Err(Dropped::Untrusted),
        Origin::Wan => {}
    }
    if !datagram.starts_with(&V2_SIGNATURE) {
        // The ingress may relay UDP without a header; then it is the best client address known.
        return Ok(Some((sender, local, datagram)));
    }
    let parsed = proxy_protocol::parse(datagram).map_err(|_| Dropped::BadHeader)?;
    let payload = &datagram[parsed.len..];
    Ok(match (parsed.command, parsed.addresses()) {
        (Command::Local, _) => None,
        (Command::Proxy, Some((client, dest))) => Some((client, dest, payload)),
        (Command::Proxy, None) => Some((sender, local, payload)),
    })
}

#[allow(clippy::too_many_arguments)]
async fn open_flow(
    key: FlowKey,
    destination: SocketAddr,
    (local, asked): (SocketAddr, Option<IpAddr>),
    stream: &Stream,
    pool: &Pool,
    socket: &Arc<UdpSocket>,
    (permits, share): (FlowPermits, SourceShare),
    now: u64,
    epoch: Instant,
    counters: &Arc<Counters>,
    flow_tasks: &TaskTracker,
    log: Option<Arc<Sink>>,
    avoid: Tried,
) -> Option<Flow> {
    let Some((index, member)) = pool.pick(avoid).and_then(|i| Some((i, pool.state(i)?.clone()))) else {
        pool.count_unavailable();
        counters.dropped(Dropped::NoUpstream, 1);
        return None;
    };
    member.metrics().m_requests.increment(1);
    let member = Active::new(member);
    let target = stream.upstream_for(index, local.port());
    let reply = ReplyTo { socket: Arc::downgrade(socket), sender: key.0, from: asked };
    // The socket's move count this flow owns it at (a plain socket never moves).
    let mut owned = 0;
    let upstream = if stream.transparent && transparent::usable(key.1, target) {
        match FlowSocket::transparent(key.1, target, destination, reply) {
            Ok((s, at)) => {
                owned = at;
                if at > 0 {
                    debug!(stream = %stream.name, client = %key.1, sender = %key.0, "transparent flow moved to a new path");
                    metrics::counter!(names::UDP_FLOWS_MOVED, "stream" => stream.name.clone()).increment(1);
                }
                s
            }
            Err(e) => {
                transparent_failed(&stream.name, target, &e);
                counters.dropped(if e.is_setup() { Dropped::TransparentFailed } else { Dropped::SendFailed }, 1);
                return None;
            }
        }
    } else {
        if stream.transparent {
            // A mesh client (IPv6) to an IPv4 service, or the reverse: no way to use its address.
            metrics::counter!(names::STREAM_TRANSPARENT_FALLBACKS, "stream" => stream.name.clone(), "reason" => "family")
                .increment(1);
        }
        FlowSocket::plain(plain_flow_socket(stream, target, counters).await?, reply)
    };
    // The upstream's replies at full rate (best effort: a cap is the listener's to report).
    let _ = size_recv_buffer(&upstream.upstream, stream.udp_recv_buffer);
    let header = stream.proxy_protocol.then(|| {
        let mut h = Vec::with_capacity(64);
        proxy_protocol::write_v2(&mut h, Command::Proxy, Transport::Datagram, Some((key.1, destination)));
        h.into_boxed_slice()
    });
    let last = Arc::new(AtomicU64::new(now));
    let active = metrics::gauge!(names::UDP_FLOWS_ACTIVE, "stream" => stream.name.clone());
    active.increment(1.0);
    let log = log.map(|sink| FlowLog::new(sink, &stream.name, key.1, local.port(), target));
    let counts = log.as_ref().map(|l| l.counts.clone());
    let pump = flow_tasks.spawn(permits.held_by(replies(
        upstream.clone(),
        owned,
        last.clone(),
        epoch,
        counters.clone(),
        counts,
    )));
    Some(Flow {
        upstream,
        member,
        header,
        active,
        life: FlowLife::new(last, pump, permits, share),
        log,
        segmenting: Segmenting::default(),
    })
}

/// A flow socket from our own address (any port), connected to the upstream.
async fn plain_flow_socket(stream: &Stream, target: SocketAddr, counters: &Counters) -> Option<UdpSocket> {
    let any: IpAddr = match target {
        SocketAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        SocketAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    };
    let upstream = match UdpSocket::bind(SocketAddr::new(any, 0)).await {
        Ok(s) => s,
        Err(e) => {
            shared::warn_every_second!(stream = %stream.name, error = %e, "cannot open a flow socket");
            counters.dropped(Dropped::SendFailed, 1);
            return None;
        }
    };
    if let Err(e) = upstream.connect(target).await {
        shared::warn_every_second!(stream = %stream.name, upstream = %target, error = %e, "cannot reach upstream");
        counters.dropped(Dropped::SendFailed, 1);
        return None;
    }
    Some(upstream)
}

/// A missing capability is a deployment fault (warn); anything else is per flow (debug).
fn transparent_failed(stream: &str, upstream: SocketAddr, e: &TransparentError) {
    match e {
        TransparentError::Option(_) => {
            shared::warn_every_second!(stream, %upstream, error = %e, "transparent flow refused");
        }
        _ => debug!(stream, %upstream, error = %e, "transparent flow failed"),
    }
}

/// Relay the upstream's replies to the sender until the flow ends (its task is aborted), or
/// until it no longer owns the socket (`owned`, the socket's move count as it opened): a
/// transparent conversation that moved to a newer flow shares the socket with it, whose pump
/// relays them from then on, and this flow, which its sender no longer uses, must go idle.
async fn replies(
    upstream: Arc<FlowSocket>,
    owned: u64,
    last: Arc<AtomicU64>,
    epoch: Instant,
    counters: Arc<Counters>,
    counts: Option<Arc<FlowCounts>>,
) {
    // The route back to the sender takes GSO or not, whatever the route upstream does.
    let mut segmenting = Segmenting::default();
    pump_while(
        &upstream.upstream,
        || upstream.moves() == owned,
        |run| {
            // Read just before the move: relayed on the new route, but not this flow's activity.
            if upstream.moves() == owned {
                shared::udp_flows::mark_active(&last, epoch.elapsed().as_millis() as u64);
            }
            let to = upstream.reply_to();
            // Its listening socket gone (a reload removed it): nowhere to send from.
            let sent =
                to.socket.upgrade().map_or(0, |socket| segmenting.send_to(&socket, to.sender, to.from, run).datagrams);
            counters.dgrams_out.increment(sent as u64);
            if let Some(c) = &counts {
                c.outbound(sent, run[0].len());
            }
            if sent < run.len() {
                counters.dropped(Dropped::SendFailed, run.len() - sent);
            }
        },
    )
    .await;
}
