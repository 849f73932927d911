//! UDP services: one receive loop per listening socket owns the flow table; each flow has
//! a connected upstream socket (which demultiplexes replies) and one task pumping replies
//! back to the client from the address it sent to. No task per datagram: a busy listener's
//! datagrams are read in batches, and a flow's run of them goes out in one GSO send
//! (`shared::udp_batch`). Flows are admitted under the service's budget (all its ports) and
//! the process's (the descriptor budget); replies are read into one buffer per worker
//! thread, not one per flow (`shared::udp_relay`). On shutdown the flows stay for the
//! replies still on their way (`udp_relay::linger`). A listener on a wildcard address answers
//! each flow from the address its first datagram was sent to, and names that address in the
//! PROXY header (`Batch::for_listener`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use metrics::{counter, gauge, Counter, Gauge};
use tokio::net::UdpSocket;
use tokio::time::Instant;

use shared::proxy_protocol::{write_v2, Command, Transport, V2_SIGNATURE};

use crate::metrics as m;
use crate::pool::{ActiveGuard, Kind, PathState, Pool, Tried, NEVER_BUSY};
use crate::runtime::{Service, Shared};
use shared::listeners::{size_recv_buffer, RecvBufferKeeper};
use shared::udp_batch::{Batch, Run, Segmenting};
use shared::udp_flows::{evict_after, FlowEntry, FlowLife, FlowPermits, FlowTable, SourceShare};
use shared::udp_relay::{linger, pump};

/// A flow: the client, and on a wildcard listener the host's address it sent to.
type FlowKey = (SocketAddr, Option<IpAddr>);

struct Flow {
    guard: ActiveGuard,
    /// With `proxy_protocol = "v2"`: the PROXY v2 (DGRAM) header every datagram to home
    /// starts with, so the local proxy learns the client address; built once per flow.
    header: Option<Box<[u8]>>,
    upstream: Arc<UdpSocket>,
    /// The address it was opened to: the path's then, maybe not now (its name moved).
    to: IpAddr,
    /// Time of the flow's previous datagram, for the bandwidth policy's busy time (shared
    /// with the pump).
    busy_mark: Arc<AtomicU64>,
    life: FlowLife,
    /// The replies the pump has passed back (for `udp_expect_replies`).
    answers: Arc<Answers>,
    watch: ReplyWatch,
    /// Whether this flow's route takes UDP GSO, learned from its refusals.
    segmenting: Segmenting,
}

/// A flow's replies as its pump sees them.
#[derive(Default)]
struct Answers {
    /// Listener-clock ms of the last reply, plus one (0: never answered).
    last: AtomicU64,
    count: AtomicU64,
}

/// The passive signal of services with `udp_expect_replies`, for one flow, sans-io (times
/// in ms on the listener's clock): a flow that has been answered before and keeps sending
/// while no reply comes back for the reply timeout has lost its path, or its path is
/// suspect. Reported once per silence. A flow never answered is never judged: the service
/// may not answer this client at all (or not yet), which says nothing about the path.
///
/// It also measures the flow's reply ratio for the path's delivered quality: every
/// [`REPLY_WINDOW`] datagrams sent (once answered), the share of them not matched by a reply.
#[derive(Debug, Default)]
struct ReplyWatch {
    /// When the first datagram after the last reply was sent.
    unanswered_since: Option<u64>,
    reported: bool,
    /// Datagrams sent in the current ratio window, and the reply count when it began.
    window_sent: u32,
    window_replies: u64,
}

/// Datagrams per reply-ratio sample.
const REPLY_WINDOW: u32 = 50;

impl ReplyWatch {
    /// A datagram goes out at `now`; `replied`: the time of the flow's last reply. Some(how
    /// long) when the flow has now been sending unanswered for at least `timeout_ms`.
    fn on_send(&mut self, now: u64, replied: Option<u64>, timeout_ms: u64) -> Option<u64> {
        let replied = replied?;
        match self.unanswered_since {
            // Still no reply since the first unanswered datagram (a reply in the same ms
            // counts as an answer).
            Some(since) if since > replied => {
                let silent = now.saturating_sub(since);
                if !self.reported && silent >= timeout_ms {
                    self.reported = true;
                    return Some(silent);
                }
                None
            }
            _ => {
                self.unanswered_since = Some(now);
                self.reported = false;
                None
            }
        }
    }

    /// Count one datagram about to go out, from a flow answered `replies` times so far: at
    /// the end of a window (measured send to send, so the datagrams in flight at either end
    /// cancel out), the share of the window's datagrams left unanswered.
    fn unanswered_ratio(&mut self, replies: u64) -> Option<f64> {
        let mut ratio = None;
        if self.window_sent >= REPLY_WINDOW {
            let answered = replies.saturating_sub(self.window_replies) as f64;
            ratio = Some((1.0 - answered / f64::from(self.window_sent)).max(0.0));
            self.window_sent = 0;
        }
        if self.window_sent == 0 {
            self.window_replies = replies;
        }
        self.window_sent += 1;
        ratio
    }
}

/// How many times the path's usual connect latency (a round trip) a flow may wait for a
/// reply before it counts as silent, when that is longer than `udp_reply_timeout`.
const REPLY_RTTS: u32 = 4;

impl FlowEntry for Flow {
    fn last_active(&self) -> u64 {
        self.life.last_active()
    }

    fn permits(&self) -> Option<&FlowPermits> {
        self.life.permits()
    }

    const TRACKS_ANSWERS: bool = true;

    fn answered(&self) -> bool {
        self.answers.count.load(Ordering::Relaxed) > 0
    }
}

/// What a flow's reply pump needs of its listener.
struct Replies {
    listener: Arc<UdpSocket>,
    c: Arc<Counters>,
    epoch: Instant,
}

/// Per-listener counters, registered once.
struct Counters {
    dgrams_in: Counter,
    dgrams_out: Counter,
    bytes_in: Counter,
    bytes_out: Counter,
    drop_flow_cap: Counter,
    drop_source_share: Counter,
    drop_no_path: Counter,
    drop_resources: Counter,
    drop_send: Counter,
    drop_proxy_header: Counter,
}

impl Counters {
    fn new(service: &Service) -> Self {
        let s = service.cfg.name.clone();
        evictions_from_zero(service);
        Self {
            dgrams_in: counter!(m::UDP_DATAGRAMS, "service" => s.clone(), "direction" => "up"),
            dgrams_out: counter!(m::UDP_DATAGRAMS, "service" => s.clone(), "direction" => "down"),
            bytes_in: counter!(m::UDP_BYTES, "service" => s.clone(), "direction" => "up"),
            bytes_out: counter!(m::UDP_BYTES, "service" => s.clone(), "direction" => "down"),
            drop_flow_cap: counter!(m::UDP_DROPS, "service" => s.clone(), "reason" => "flow_cap"),
            drop_source_share: counter!(m::UDP_DROPS, "service" => s.clone(), "reason" => "source_share"),
            drop_no_path: counter!(m::UDP_DROPS, "service" => s.clone(), "reason" => "no_path"),
            drop_resources: counter!(m::UDP_DROPS, "service" => s.clone(), "reason" => "resources"),
            drop_send: counter!(m::UDP_DROPS, "service" => s.clone(), "reason" => "send_failed"),
            drop_proxy_header: counter!(m::UDP_DROPS, "service" => s, "reason" => "proxy_header"),
        }
    }
}

/// The service's eviction counters, present at 0 before the first eviction (an alert on their
/// increase would miss the one that created the series): at start, and after a reload, which
/// may add paths.
fn evictions_from_zero(service: &Service) {
    for path in service.pool.paths.iter() {
        let (s, p) = (service.cfg.name.clone(), path.name.to_string());
        counter!(m::UDP_FLOWS_EVICTED, "service" => s, "path" => p).increment(0);
    }
}

/// This socket's share of its port's `ingress_udp_flows_active`: the sockets of a port's group
/// (`udp_reuseport`) each add their table's flows, and a socket no longer served takes its
/// own back.
struct FlowsGauge {
    gauge: Gauge,
    shown: usize,
}

impl FlowsGauge {
    fn show(&mut self, flows: usize) {
        self.gauge.increment(flows as f64 - self.shown as f64);
        self.shown = flows;
    }
}

impl Drop for FlowsGauge {
    fn drop(&mut self) {
        self.gauge.decrement(self.shown as f64);
    }
}

fn flow_event(name: &'static str, service: &str, path: &str) {
    counter!(name, "service" => service.to_owned(), "path" => path.to_owned()).increment(1);
}

/// Why a flow left its path: the path went down, or a reload sent the service elsewhere.
/// Both are counted as migrated (the flow's next datagram, if any, opens it anew; a reload
/// ends flows at the listener's next sweep, so also ones that never send again), told apart
/// so an operator reading the counter after a reload does not take it for a failing WAN.
fn migrated(service: &str, path: &str, reason: &'static str) {
    counter!(m::UDP_FLOWS_MIGRATED, "service" => service.to_owned(), "path" => path.to_owned(), "reason" => reason)
        .increment(1);
}

/// Why `flow` must move on its next datagram, if it must: its path is down while another is
/// up (`path_down`), its path's name now gives another address than the one the flow was
/// opened to (`address_moved`), or it rides the mesh tier while a WAN path is up again and
/// not held by flap damping (`wan_back`: a flow that keeps talking never times out, and would
/// ride the fallback for days after the WANs came back). A path is matched by its state, which
/// a reload carries over.
fn stale(flow: &Flow, pool: &Pool) -> Option<&'static str> {
    let path = flow.guard.path();
    if !path.is_up() {
        let other_up = pool.paths.iter().any(|p| p.is_up() && !Arc::ptr_eq(&p.state, &path.state));
        return other_up.then_some("path_down");
    }
    if path.is_mesh && pool.any_wan_clear() {
        return Some("wan_back");
    }
    path.ip().is_some_and(|ip| ip != flow.to).then_some("address_moved")
}

/// After a reload, the flows the new service would not open as they are end, and the next
/// datagram of each opens a new one: all of them if the service now sends elsewhere (another
/// pool, port or PROXY header), else those whose path left the pool. A talking flow would
/// otherwise keep a removed path for good: nothing probes it any more, so it never goes down.
fn reloaded(table: &mut FlowTable<FlowKey, Flow>, before: &Service, now: &Service, gone: &mut Vec<Flow>) {
    let (b, n) = (&before.cfg, &now.cfg);
    let all = b.pool != n.pool || b.upstream_port != n.upstream_port || b.proxy_protocol != n.proxy_protocol;
    let paths = &now.pool.paths;
    table.drain_where(|f| all || !paths.iter().any(|p| Arc::ptr_eq(&p.state, &f.guard.path().state)), gone);
    for f in gone.drain(..) {
        migrated(&n.name, &f.guard.path().name, "reload");
    }
}

pub async fn serve(socket: UdpSocket, slot: Arc<ArcSwap<Service>>, shared: Arc<Shared>) {
    let socket = Arc::new(socket);
    let local = match socket.local_addr() {
        Ok(a) => a,
        Err(_) => return,
    };
    let epoch = Instant::now();
    let now_ms = || epoch.elapsed().as_millis() as u64;
    let first = slot.load_full();
    // Labelled by the service the socket serves: built again when a reload gives its address
    // to a service of another name (flows opened before count on the old one's).
    let gauge = |service: &str| FlowsGauge {
        gauge: gauge!(m::UDP_FLOWS_ACTIVE, "service" => service.to_owned(), "listen" => local.to_string()),
        shown: 0,
    };
    let mut c = Arc::new(Counters::new(&first));
    let mut replies = Replies { listener: socket.clone(), c: c.clone(), epoch };
    let mut active = gauge(&first.cfg.name);
    let mut table: FlowTable<FlowKey, Flow> = FlowTable::new(first.cfg.idle_timeout.as_millis() as u64);
    let sweep_every = (first.cfg.idle_timeout / 4).clamp(Duration::from_millis(100), Duration::from_secs(5));
    let mut sweep = tokio::time::interval(sweep_every);
    let mut stop = shared.stop.clone();
    let mut batch = Batch::for_listener(&socket);
    // This port asked its service's budget for a slot (`FlowTable::admit_among`).
    let mut waiting = false;
    // The service as its flows were opened (a reload makes a new one).
    let mut opened_under = first.clone();
    let mut gone: Vec<Flow> = Vec::new();
    let mut recv_buffer = RecvBufferKeeper::default();
    recv_buffer.keep(&socket, first.cfg.udp_recv_buffer, &first.cfg.name);
    loop {
        // `None`: the sweep's turn, which also applies a reload to flows that only receive
        // (else a removed path's replies would reach their clients until they next send).
        let received = tokio::select! {
            biased;
            _ = stop.changed() => {
                linger(&table, now_ms).await;
                return;
            }
            _ = sweep.tick() => {
                let svc = slot.load();
                table.set_idle(svc.cfg.idle_timeout.as_millis() as u64);
                table.expire(now_ms(), &mut gone);
                for f in gone.drain(..) {
                    flow_event(m::UDP_FLOWS_EXPIRED, &svc.cfg.name, &f.guard.path().name);
                }
                active.show(table.len());
                None
            }
            r = batch.read(&socket) => Some(r),
        };
        if let Some(Err(e)) = &received {
            // ICMP errors surface here on some kernels; they concern one peer only.
            tracing::debug!(listen = %local, error = %e, "udp receive error");
            continue;
        }
        let now = now_ms();
        let svc = slot.load();
        recv_buffer.keep(&socket, svc.cfg.udp_recv_buffer, &svc.cfg.name);
        if !Arc::ptr_eq(&opened_under, &*svc) {
            reloaded(&mut table, &opened_under, &svc, &mut gone);
            if opened_under.cfg.name != svc.cfg.name {
                c = Arc::new(Counters::new(&svc));
                replies.c = c.clone();
                active = gauge(&svc.cfg.name);
            } else {
                evictions_from_zero(&svc);
            }
            active.show(table.len());
            opened_under = Arc::clone(&*svc);
        }
        if received.is_none() {
            continue;
        }
        // One flow's consecutive datagrams of one size, sent together once the run ends.
        let mut run: Option<Run<FlowKey>> = None;
        for i in 0..batch.len() {
            let Some((data, client)) = batch.get(i) else {
                flush(&mut run, &batch, &mut table, &c);
                continue;
            };
            // Where the client sent it: this listener's address, or on a wildcard one, the
            // host's address it was sent to. A client talking to two of them from one port
            // (two TURN servers' names on one host, over one ICE socket) holds two flows, each
            // answered from its own address, each with its own 5-tuple at home.
            let key: FlowKey = (client, batch.to(i));
            let n = data.len();
            c.dgrams_in.increment(1);
            c.bytes_in.increment(n as u64);
            // A service that adds no header forwards the datagram as it came, and one that
            // starts with a PROXY v2 header would reach home as this ingress's word on who the
            // client is (the local proxy takes a header from an ingress as such, and a
            // transparent stream sends from that address into the LAN). No client sends one.
            if !svc.cfg.proxy_protocol && data.starts_with(&V2_SIGNATURE) {
                c.drop_proxy_header.increment(1);
                tracing::debug!(service = %svc.cfg.name, %client, "datagram starts with a PROXY header; dropped");
                continue;
            }
            // Services that answer: a flow sending unanswered makes its path suspect. Judged
            // before the move below, so the datagram that tips the path down already moves.
            if let Some(flow) = table.get_mut(&key).filter(|_| svc.cfg.udp_expect_replies) {
                let path = flow.guard.path();
                // A flow opened on the address its path had before the name moved says
                // nothing of the new one (asked only when there is something to say).
                let to = flow.to;
                let current = || path.ip() == Some(to);
                let timeout = path
                    .latency()
                    .map_or(svc.cfg.udp_reply_timeout, |l| (l * REPLY_RTTS).max(svc.cfg.udp_reply_timeout));
                let replied = flow.answers.last.load(Ordering::Relaxed).checked_sub(1);
                if let Some(silent) = flow.watch.on_send(now, replied, timeout.as_millis() as u64) {
                    if current() {
                        tracing::debug!(service = %svc.cfg.name, path = %path.name, "udp flow unanswered: path suspect");
                        svc.pool.reply_silence(path, Duration::from_millis(silent), client.ip());
                    }
                }
                if replied.is_some() {
                    if let Some(r) = flow.watch.unanswered_ratio(flow.answers.count.load(Ordering::Relaxed)) {
                        if current() {
                            path.quality_sample(r);
                        }
                    }
                }
            }
            // A flow whose path went down moves on its next datagram, not after the timeout;
            // so does one opened on the address its path had before its name moved (the
            // client keeps it talking, so it would never time out, sending to an address the
            // home may no longer have). None: no flow yet; Some(None): one to keep.
            let stale = table.get(&key).map(|f| stale(f, &svc.pool));
            if stale != Some(None) {
                // What the run holds goes out before the table changes under it.
                flush(&mut run, &batch, &mut table, &c);
            }
            // A moving flow's slots go to its new flow: at a full budget, another flow would
            // otherwise be evicted for it (or the datagram dropped).
            let mut moved = None;
            if let Some(Some(reason)) = stale {
                if let Some(f) = table.remove(&key) {
                    migrated(&svc.cfg.name, &f.guard.path().name, reason);
                    moved = f.permits().cloned();
                }
            }
            if stale != Some(None) {
                let port = svc.cfg.upstream_port.unwrap_or(local.port());
                // Room first: a flood of new sources at the cap must not cost a socket each. A
                // new source takes the slot of this listener's longest-silent flow once that has
                // been silent a moment, so a legitimate client is not locked out by a flood;
                // a listener with none to give up gets one from another port's table.
                let Some(share) = svc.flows.share(client.ip()) else {
                    c.drop_source_share.increment(1);
                    tracing::debug!(service = %svc.cfg.name, %client, "source holds its share of the flows, datagram dropped");
                    continue;
                };
                let evict_idle = evict_after(svc.cfg.idle_timeout.as_millis() as u64);
                let acquire = || FlowPermits::acquire(&svc.flows, &shared.flows);
                let evicted = |f: Flow| flow_event(m::UDP_FLOWS_EVICTED, &svc.cfg.name, &f.guard.path().name);
                let permits = match moved {
                    Some(slots) => slots.reclaim(&svc.flows, acquire).await,
                    None => None,
                };
                let permits = match permits {
                    Some(p) => Some(p),
                    None => table.admit_among(&svc.flows, &mut waiting, now, evict_idle, acquire, evicted).await,
                };
                let Some(permits) = permits else {
                    c.drop_flow_cap.increment(1);
                    tracing::debug!(service = %svc.cfg.name, "flow budget full, datagram dropped");
                    continue;
                };
                let asked = key.1;
                // Built once admitted: a flood at the cap allocates nothing per datagram.
                let header = svc.cfg.proxy_protocol.then(|| {
                    let mut h = Vec::with_capacity(52);
                    let to = SocketAddr::new(asked.unwrap_or(local.ip()), local.port());
                    write_v2(&mut h, Command::Proxy, Transport::Datagram, Some((client, to)));
                    h.into_boxed_slice()
                });
                let to_client = (client, asked);
                let flow = match open_flow(&svc, port, to_client, &replies, now, header, (permits, share)).await {
                    Ok(flow) => flow,
                    Err(NoFlow::NoPath) => {
                        c.drop_no_path.increment(1);
                        continue;
                    }
                    Err(NoFlow::Resources) => {
                        c.drop_resources.increment(1);
                        continue;
                    }
                };
                flow_event(m::UDP_FLOWS_CREATED, &svc.cfg.name, &flow.guard.path().name);
                // No flow of this key exists (none, or removed above), so nothing is replaced.
                drop(table.insert(key, flow, now));
                active.show(table.len());
            }
            let Some(flow) = table.get(&key) else {
                continue;
            };
            flow.life.touch(now);
            let header = flow.header.as_ref().map_or(0, |h| h.len());
            if !run.as_mut().is_some_and(|r| r.extend(i, key, 0, n, header)) {
                flush(&mut run, &batch, &mut table, &c);
                run = Some(Run::new(i, key, 0, n));
            }
        }
        flush(&mut run, &batch, &mut table, &c);
    }
}

/// Sends the run's datagrams to their flow's upstream (see `shared::udp_batch`). Never waits
/// on one upstream: a full send queue drops them, as a router would.
fn flush(run: &mut Option<Run<FlowKey>>, batch: &Batch, table: &mut FlowTable<FlowKey, Flow>, c: &Counters) {
    let Some(run) = run.take() else { return };
    let Some(flow) = table.get_mut(&run.key) else { return };
    let sent = batch.send(&run, &mut flow.segmenting, &flow.upstream, flow.header.as_deref());
    if sent.datagrams > 0 {
        let meter = &flow.guard.path().state.load.m_bytes_up;
        let bytes = (sent.datagrams * run.len) as u64;
        meter.increment(bytes);
        meter.mark_busy(&flow.busy_mark, bytes);
    }
    let dropped = run.count().saturating_sub(sent.datagrams);
    if dropped > 0 {
        c.drop_send.increment(dropped as u64);
    }
}

/// Why a new source got no flow.
#[derive(Debug, PartialEq)]
enum NoFlow {
    /// No path could take it: none usable, or every usable one's socket failed to connect.
    NoPath,
    /// The socket could not be made on our side (descriptors, memory): nothing to hold against
    /// the paths, and not a "no path" an operator would go looking for at home.
    Resources,
}

/// Pick a path and open the flow's upstream socket, skipping paths whose socket fails.
/// `client`: the client, and the address to answer it from (None: the listener's own).
async fn open_flow(
    svc: &Service,
    port: u16,
    client: (SocketAddr, Option<IpAddr>),
    replies: &Replies,
    now: u64,
    header: Option<Box<[u8]>>,
    (permits, share): (FlowPermits, SourceShare),
) -> Result<Flow, NoFlow> {
    let pool = &svc.pool;
    let mut tried = Tried::default();
    while let Some((i, path)) = pool.pick(tried, Kind::Udp) {
        tried.insert(i);
        // Picked paths have an address; one lost to a lookup since is skipped.
        let Some(target) = path.addr(port) else { continue };
        let bind_ip = match target.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        };
        let sock = match UdpSocket::bind((bind_ip, 0)).await {
            Ok(s) => s,
            Err(e) => {
                shared::warn_every_second!(error = %e, "cannot open an upstream udp socket");
                if shared::health::out_of_resources(&e) {
                    crate::pool::local_resource_error("udp_socket");
                    return Err(NoFlow::Resources);
                }
                return Err(NoFlow::NoPath);
            }
        };
        // The home's replies at full rate (best effort: a cap is the listener's to report).
        let _ = size_recv_buffer(&sock, svc.cfg.udp_recv_buffer);
        if let Err(e) = sock.connect(target).await {
            tracing::debug!(path = %path.name, %target, error = %e, "udp connect failed, trying next path");
            continue;
        }
        let upstream = Arc::new(sock);
        let last = Arc::new(AtomicU64::new(now));
        let busy_mark = Arc::new(AtomicU64::new(NEVER_BUSY));
        let answers = Arc::new(Answers::default());
        let guard = ActiveGuard::new(path.clone(), Kind::Udp);
        let pump = tokio::spawn(permits.held_by(pump_replies(
            upstream.clone(),
            Replies { listener: replies.listener.clone(), c: replies.c.clone(), epoch: replies.epoch },
            client,
            last.clone(),
            answers.clone(),
            busy_mark.clone(),
            guard.path().state.clone(),
        )));
        let life = FlowLife::new(last, pump, permits, share);
        let (watch, segmenting) = Default::default();
        let to = target.ip();
        return Ok(Flow { guard, header, upstream, to, busy_mark, life, answers, watch, segmenting });
    }
    Err(NoFlow::NoPath)
}

async fn pump_replies(
    upstream: Arc<UdpSocket>,
    replies: Replies,
    (client, from): (SocketAddr, Option<IpAddr>),
    last: Arc<AtomicU64>,
    answers: Arc<Answers>,
    busy_mark: Arc<AtomicU64>,
    path: Arc<PathState>,
) {
    let Replies { listener, c, epoch } = replies;
    let bytes_down = &path.load.m_bytes_down;
    // The route to this client takes GSO or not, whatever the route home does.
    let mut segmenting = Segmenting::default();
    pump(&upstream, |run| {
        let now = epoch.elapsed().as_millis() as u64;
        shared::udp_flows::mark_active(&last, now);
        answers.last.store(now + 1, Ordering::Relaxed);
        answers.count.fetch_add(run.len() as u64, Ordering::Relaxed);
        let at = path.note_reply();
        let sent = segmenting.send_to(&listener, client, from, run).datagrams;
        if sent > 0 {
            let bytes = (sent * run[0].len()) as u64;
            c.dgrams_out.increment(sent as u64);
            c.bytes_out.increment(bytes);
            bytes_down.increment(bytes);
            bytes_down.mark_busy_at(&busy_mark, at, bytes);
        }
        if sent < run.len() {
            c.drop_send.increment((run.len() - sent) as u64);
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flow_is_judged_only_after_it_was_answered_and_once_per_silence() {
        let mut w = ReplyWatch::default();
        // Never answered: never judged, however long it sends.
        for t in (0..1000).step_by(10) {
            assert_eq!(w.on_send(t, None, 100), None);
        }
        // Answered at 1000 (each datagram answered within a ms): never silent.
        for t in (1000..1500).step_by(10) {
            assert_eq!(w.on_send(t, Some(t.saturating_sub(9)), 100), None);
        }
        // Replies stop after the one at 1491: the first unanswered datagram goes at 1500;
        // reported at the first datagram 100 ms after it, once.
        let reports: Vec<(u64, u64)> =
            (1500..2000).step_by(10).filter_map(|t| w.on_send(t, Some(1491), 100).map(|s| (t, s))).collect();
        assert_eq!(reports, [(1600, 100)]);
        // A reply comes back (at 2005): a new silence is reported again.
        assert_eq!(w.on_send(2010, Some(2005), 100), None);
        assert_eq!(w.on_send(2100, Some(2005), 100), None, "the silence starts at the first unanswered send (2010)");
        assert_eq!(w.on_send(2110, Some(2005), 100), Some(100));
    }

    #[test]
    fn a_reply_in_the_same_millisecond_answers() {
        let mut w = ReplyWatch::default();
        assert_eq!(w.on_send(0, Some(0), 50), None);
        assert_eq!(w.on_send(10, Some(10), 50), None);
        assert_eq!(w.on_send(100, Some(100), 50), None);
    }

    #[test]
    fn the_reply_ratio_is_sampled_every_window() {
        let mut w = ReplyWatch::default();
        // Every datagram answered: nothing went wrong.
        let mut replies = 10;
        let mut samples = Vec::new();
        for i in 0..201u32 {
            samples.extend(w.unanswered_ratio(replies));
            // Answered before the next one goes, but one in ten not in the second half.
            if i < 100 || i % 10 != 0 {
                replies += 1;
            }
        }
        assert_eq!(samples.len(), 4);
        assert_eq!(&samples[..2], [0.0, 0.0]);
        assert!(samples[2..].iter().all(|&r| (r - 0.1).abs() < 0.03), "{samples:?}");
    }
}
