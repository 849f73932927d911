//! A UDP flow's upstream socket and where its replies go, and the registry that lets one
//! transparent conversation survive its ingress flow moving to another WAN.
//!
//! Why: a transparent flow's socket holds the client's own address and port, which the LAN
//! service sees as the conversation's identity (coturn keys allocations and permissions on
//! it). When a WAN goes down, the ingress moves its flow to another path: the same client,
//! through the same ingress node, now arrives from a new ingress socket on another WAN
//! socket here (or from the node's Yggdrasil address, its mesh tier; or over IPv6 instead of
//! IPv4), so a new flow opens in that socket's table. It must not get a socket of its own (the
//! client's port is taken by the old one, the service would see another port and coturn
//! would lose the allocation); it takes over the old socket and points its replies at the new
//! path. A conversation is known by the address the client sent to (the PROXY header's
//! destination: the ingress node's public address and port), which every path of one node
//! carries alike and which differs between nodes, and between two addresses of one node (two
//! TURN servers' names on one host, which ICE keeps apart). Another conversation of the same
//! client address and port is kept apart (its own socket, any free port of the address).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, Weak};

use arc_swap::ArcSwap;
use tokio::net::UdpSocket;

use crate::transparent::{self, TransparentError};

/// Where replies go: out of the listening socket the flow's datagrams came in on, to the
/// sender (the ingress's flow socket, or the mesh client).
pub struct ReplyTo {
    /// Not owned: a socket a reload removed must close with its table, though an older flow
    /// of a moved conversation (in another socket's table) still holds this route; replies
    /// that would go out of it are dropped then, as they would be with the socket closed.
    pub socket: Weak<UdpSocket>,
    pub sender: SocketAddr,
    /// On a wildcard socket, the address the sender sent to: the replies leave from it (an
    /// ingress's flow socket is connected to it and takes nothing from another).
    pub from: Option<IpAddr>,
}

/// (client, upstream) of a registered transparent socket.
type Key = (SocketAddr, SocketAddr);

/// A flow's connected upstream socket. Shared by the flows of one conversation (see the
/// module doc); each of their reply pumps reads it and sends to the current [`ReplyTo`].
pub struct FlowSocket {
    pub upstream: UdpSocket,
    reply: ArcSwap<ReplyTo>,
    /// How many times the conversation moved to a new flow ([`FlowSocket::moves`]).
    moves: AtomicU64,
    /// The address the client sent to (the conversation, with the key); registered sockets only.
    registered: Option<(Key, SocketAddr)>,
}

/// Live transparent sockets by (client, upstream); an entry goes when its socket drops.
static REGISTRY: LazyLock<Mutex<HashMap<Key, Weak<FlowSocket>>>> = LazyLock::new(Default::default);

impl FlowSocket {
    /// A socket of our own address (not transparent), replies to `reply`.
    pub fn plain(upstream: UdpSocket, reply: ReplyTo) -> Arc<Self> {
        Arc::new(Self { upstream, reply: ArcSwap::from_pointee(reply), moves: AtomicU64::new(0), registered: None })
    }

    /// The current reply route (one atomic load per reply).
    pub fn reply_to(&self) -> arc_swap::Guard<Arc<ReplyTo>> {
        self.reply.load()
    }

    /// How many times the conversation moved to a new flow. A flow notes the count it was
    /// opened at: once it differs, a newer flow owns the socket, and the replies this flow's
    /// pump still reads from the shared socket are not its own activity (else it would never
    /// go idle while the upstream talks, and hold its slot and counts for the whole call).
    pub fn moves(&self) -> u64 {
        self.moves.load(Ordering::Relaxed)
    }

    /// A transparent socket from `client` to `upstream` for a client that sent to
    /// `destination`, and the move count the calling flow owns it at ([`FlowSocket::moves`],
    /// taken under the registry's lock, so a takeover on another loop right after cannot be
    /// mistaken for this flow's): the live one of the same client, upstream and destination,
    /// now replying to `reply` (a move: the count is 1 or more), or a new one (0) on the
    /// client's exact port (shared with its sockets to other upstreams; see
    /// [`transparent::udp`]), else on any port of its address when another conversation holds
    /// that exact pair.
    ///
    /// The lookup, the new socket and its entry happen under the registry's lock: the first
    /// datagrams of one conversation arriving on two event loops at once (the ingress moving
    /// its flow while the old path still delivers) must not make two sockets connected to the
    /// same upstream on the client's port, between which the kernel would split the replies.
    pub fn transparent(
        client: SocketAddr,
        upstream: SocketAddr,
        destination: SocketAddr,
        reply: ReplyTo,
    ) -> Result<(Arc<Self>, u64), TransparentError> {
        let key = (client, upstream);
        // Declared before the guard, so it is dropped after it on every way out: it may hold
        // the last reference to another conversation's socket, whose drop takes this lock.
        let live: Option<Arc<Self>>;
        let mut map = REGISTRY.lock().unwrap_or_else(|p| p.into_inner());
        live = map.get(&key).and_then(Weak::upgrade);
        if let Some(s) = live.as_ref().filter(|s| s.registered.as_ref().is_some_and(|(_, to)| *to == destination)) {
            s.reply.store(Arc::new(reply));
            let owned = s.moves.fetch_add(1, Ordering::Relaxed) + 1;
            return Ok((s.clone(), owned));
        }
        let held_elsewhere = live.is_some();
        let sock = transparent::udp(client, upstream, !held_elsewhere)?;
        let exact = sock.local_addr().is_ok_and(|a| a == client);
        let registered = (exact && !held_elsewhere).then_some((key, destination));
        let s = Arc::new(Self {
            upstream: sock,
            reply: ArcSwap::from_pointee(reply),
            moves: AtomicU64::new(0),
            registered,
        });
        if s.registered.is_some() {
            map.insert(key, Arc::downgrade(&s));
        }
        Ok((s, 0))
    }
}

impl Drop for FlowSocket {
    fn drop(&mut self) {
        let Some((key, _)) = self.registered else { return };
        let mut map = REGISTRY.lock().unwrap_or_else(|p| p.into_inner());
        // Only our own entry: a newer socket of the same pair may have replaced it.
        if map.get(&key).is_some_and(|w| std::ptr::eq(w.as_ptr(), self)) {
            map.remove(&key);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    async fn listener() -> Arc<UdpSocket> {
        Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap())
    }

    /// The same client and upstream sending to the same ingress address share one socket,
    /// whichever path of the node brings it (another WAN socket, the node's mesh address: the
    /// reply route follows the newest flow); sent to another address (another node, or a
    /// second address of the same node) they get their own.
    #[tokio::test]
    async fn one_socket_per_conversation_and_ingress_node() {
        if transparent::probe().is_err() {
            assert!(!rustix::process::geteuid().is_root(), "root, yet IP_TRANSPARENT refused");
            return;
        }
        let upstream = listener().await.local_addr().unwrap();
        let (wan1, wan2) = (listener().await, listener().await);
        let client: SocketAddr = "192.0.2.78:40124".parse().unwrap();
        let via = |socket: &Arc<UdpSocket>, sender: &str| ReplyTo {
            socket: Arc::downgrade(socket),
            sender: sender.parse().unwrap(),
            from: None,
        };
        // The ingress nodes' public addresses, as the PROXY headers name them.
        let (node1, node2): (SocketAddr, SocketAddr) =
            ("203.0.113.1:3478".parse().unwrap(), "203.0.113.2:3478".parse().unwrap());
        let (a, owned) = FlowSocket::transparent(client, upstream, node1, via(&wan1, "192.0.2.11:5000")).unwrap();
        assert_eq!(owned, 0);
        assert_eq!(a.upstream.local_addr().unwrap(), client);
        assert_eq!(a.moves(), 0);
        let (b, owned) = FlowSocket::transparent(client, upstream, node1, via(&wan2, "192.0.2.11:5001")).unwrap();
        assert!(owned == 1 && Arc::ptr_eq(&a, &b), "moved: the newer flow owns the socket");
        assert_eq!(a.moves(), 1);
        assert_eq!(a.reply_to().sender.port(), 5001);
        assert!(std::ptr::eq(a.reply_to().socket.as_ptr(), Arc::as_ptr(&wan2)));
        // Both WANs down: the node's mesh tier brings it from its Yggdrasil address. Still a move.
        let (m, owned) = FlowSocket::transparent(client, upstream, node1, via(&wan1, "[200::11]:5002")).unwrap();
        assert!(owned == 2 && Arc::ptr_eq(&a, &m), "the mesh path is the same conversation");
        assert_eq!(a.reply_to().sender, "[200::11]:5002".parse().unwrap());
        let (c, owned) = FlowSocket::transparent(client, upstream, node2, via(&wan1, "192.0.2.19:5000")).unwrap();
        assert!(owned == 0 && !Arc::ptr_eq(&a, &c));
        assert_ne!(c.upstream.local_addr().unwrap(), client);
        // The same node, the client sending to its second address: another conversation, and
        // the first keeps its reply route.
        let second: SocketAddr = "203.0.113.9:3478".parse().unwrap();
        let (e, owned) = FlowSocket::transparent(client, upstream, second, via(&wan2, "192.0.2.11:5003")).unwrap();
        assert!(owned == 0 && !Arc::ptr_eq(&a, &e));
        assert_eq!(a.reply_to().sender, "[200::11]:5002".parse().unwrap());
        // Gone with its last flow: the next one starts afresh on the exact port.
        drop((a, b, m));
        let (d, owned) = FlowSocket::transparent(client, upstream, node1, via(&wan1, "192.0.2.11:5004")).unwrap();
        assert_eq!(owned, 0);
        assert_eq!(d.upstream.local_addr().unwrap(), client);
    }

    /// A flow's reply route does not keep its listening socket open: once the socket's
    /// table lets it go (a reload removed it), its port can be bound again, though the route
    /// is still held (by an older flow of a moved conversation).
    #[tokio::test]
    async fn a_reply_route_does_not_hold_its_listening_socket() {
        let wan = listener().await;
        let addr = wan.local_addr().unwrap();
        let upstream = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let flow = FlowSocket::plain(upstream, ReplyTo { socket: Arc::downgrade(&wan), sender: addr, from: None });
        drop(wan);
        assert!(flow.reply_to().socket.upgrade().is_none());
        UdpSocket::bind(addr).await.expect("the removed listener's port is free again");
    }

    /// A conversation through another ingress node ending on one thread while a second one
    /// opens on another: the second may hold the last reference to the first's socket for a
    /// moment, and dropping it (which takes the registry's lock) must not happen under that
    /// lock. 20,000 rounds, each bounded: a deadlock fails the round instead of hanging.
    #[test]
    fn a_conversation_ending_while_another_node_opens_one_does_not_deadlock() {
        if transparent::probe().is_err() {
            assert!(!rustix::process::geteuid().is_root(), "root, yet IP_TRANSPARENT refused");
            return;
        }
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let handle = rt.handle().clone();
        std::thread::spawn(move || {
            handle.block_on(async {
                let upstream = listener().await.local_addr().unwrap();
                let wan = listener().await;
                let client = SocketAddr::from(([192, 0, 2, 80], 42000));
                let via = |sender: &str| ReplyTo {
                    socket: Arc::downgrade(&wan),
                    sender: sender.parse().unwrap(),
                    from: None,
                };
                let (node1, node2) =
                    (SocketAddr::from(([203, 0, 113, 1], 3478)), SocketAddr::from(([203, 0, 113, 2], 3478)));
                for _ in 0..20_000 {
                    let (first, _) = FlowSocket::transparent(client, upstream, node1, via("192.0.2.11:5000")).unwrap();
                    let ender = std::thread::spawn(move || drop(first));
                    let (second, _) = FlowSocket::transparent(client, upstream, node2, via("192.0.2.19:5000")).unwrap();
                    ender.join().unwrap();
                    drop(second);
                }
            });
            let _ = done_tx.send(());
        });
        assert!(done_rx.recv_timeout(std::time::Duration::from_secs(60)).is_ok(), "deadlocked (or a minute)");
    }

    /// The first datagrams of one conversation on two event loops at once (the ingress
    /// moving its flow while the old path still delivers): one socket between them, never two
    /// connected to the same upstream from the client's port. 200 conversations, each opened
    /// by two threads released together.
    #[test]
    fn two_loops_opening_one_conversation_share_one_socket() {
        if transparent::probe().is_err() {
            // Root (CI) has CAP_NET_ADMIN: there the test must run, not pass by skipping.
            assert!(!rustix::process::geteuid().is_root(), "root, yet IP_TRANSPARENT refused");
            return;
        }
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async {
            let upstream = listener().await.local_addr().unwrap();
            let (wan1, wan2) = (listener().await, listener().await);
            for port in 41000..41200u16 {
                let client = SocketAddr::from(([192, 0, 2, 79], port));
                let barrier = Arc::new(std::sync::Barrier::new(2));
                let open = |wan: &Arc<UdpSocket>, sender: &str| {
                    let (barrier, reply) = (
                        barrier.clone(),
                        ReplyTo { socket: Arc::downgrade(wan), sender: sender.parse().unwrap(), from: None },
                    );
                    tokio::task::spawn_blocking(move || {
                        barrier.wait();
                        FlowSocket::transparent(client, upstream, SocketAddr::from(([203, 0, 113, 1], 3478)), reply)
                            .unwrap()
                    })
                };
                let (a, b) = (open(&wan1, "192.0.2.11:5000"), open(&wan2, "192.0.2.11:5001"));
                let ((a, a_owned), (b, b_owned)) = (a.await.unwrap(), b.await.unwrap());
                assert!(Arc::ptr_eq(&a, &b), "two sockets for {client}");
                assert_eq!(a_owned + b_owned, 1, "{client}: one opened it, the other took it over");
            }
        });
    }
}
