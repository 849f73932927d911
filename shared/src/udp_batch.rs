//! Datagrams in batches, for relays under load: one `recvmmsg` reads what a busy listener has
//! queued (up to [`MAX_BATCH`]), and a run of one flow's datagrams of one size leaves in one
//! UDP GSO send that the kernel cuts into datagrams as late as it can (on a veth or a NIC with
//! segmentation offload, after routing and the firewall). At 100,000 datagrams/s that is two
//! system calls and one trip through the stack per batch instead of two and one per datagram
//! (bench/results/2026-12-04-vm-udp-batch.md).
//!
//! A quiet listener keeps one 64 KiB slot, as before; it takes [`MAX_BATCH`] once a read
//! fills every slot it has, and keeps them (untouched pages of the slots cost no memory). A
//! flow's replies come the same way: read in batches, sent to the client in runs
//! ([`Batch::runs`], [`Segmenting::send_to`]).
//!
//! Single datagrams go out with [`send_now`] (a full queue drops, as a router would) and
//! [`send_with_header`] (a PROXY header and the payload in one datagram, without a copy).
//!
//! A listener bound to a wildcard address ([`Batch::for_listener`]) learns each datagram's
//! destination ([`Batch::to`]) and answers from it (`from` in [`Segmenting::send_to`]): on a
//! host with several addresses (a failover IP, a keepalived VIP, a second IPv6 address) the
//! kernel would otherwise pick the route's source, and a client's NAT, QUIC stack or DNS stub
//! drops a reply from an address it did not send to.

use std::cell::RefCell;
use std::io;
use std::io::{IoSlice, IoSliceMut};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;

use nix::libc::{self, ECONNREFUSED, EINVAL, EIO, EMSGSIZE};
use nix::sys::socket::{
    recvmmsg, sendmsg, setsockopt, sockopt, ControlMessage, ControlMessageOwned, MsgFlags, MultiHeaders,
    SockaddrStorage,
};
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// Largest UDP payload.
pub const MAX_DATAGRAM: usize = 65_535;

/// Send without waiting and without tokio's readiness bookkeeping (which reports a fresh
/// socket as not yet writable): the kernel says WouldBlock only when the queue is full.
pub fn send_now(sock: &UdpSocket, data: &[u8], to: Option<SocketAddr>) -> io::Result<usize> {
    let s = socket2::SockRef::from(sock);
    match to {
        Some(to) => s.send_to(data, &to.into()),
        None => s.send(data),
    }
}

/// One datagram made of `header` (a PROXY v2 header) and `data`, without copying either.
pub fn send_with_header(sock: &UdpSocket, header: &[u8], data: &[u8]) -> io::Result<usize> {
    let parts = [io::IoSlice::new(header), io::IoSlice::new(data)];
    socket2::SockRef::from(sock).send_vectored(&parts)
}

/// Most datagrams one read takes and one GSO send carries (the kernel's limit is 64).
pub const MAX_BATCH: usize = 32;

/// Most bytes one GSO send carries: the kernel builds it as one IP packet (64 KiB) first.
const MAX_GSO_BYTES: usize = 60_000;

thread_local! {
    /// `recvmmsg`'s message headers (they hold pointers, so a listener's task, which may
    /// move between threads, cannot keep them): borrowed only during one call. One set per
    /// address family: the kernel writes each header's address length back (16 for IPv4, 28
    /// for IPv6) and nix does not reset it, so headers an IPv4 socket used would cut an IPv6
    /// source short. A listener that learns destinations has its own two sets, with room for
    /// one packet-info message each: the kernel writes the control length back too, and a
    /// header that once carried none would have no room left for the next.
    static HEADERS: RefCell<[Option<MultiHeaders<SockaddrStorage>>; 4]> = const { RefCell::new([None, None, None, None]) };
}

/// A socket's receive slots and what the last read put in them.
pub struct Batch {
    /// The slots, [`MAX_DATAGRAM`] bytes each, in one allocation: large enough that the
    /// allocator maps fresh pages, which cost memory only once a datagram is written to them.
    slots: Box<[u8]>,
    /// Per datagram of the last read: its length and its source (None: skipped).
    got: Vec<Option<(usize, SocketAddr)>>,
    /// Per datagram of the last read, its destination: only for a listener that learns them.
    to: Vec<Option<IpAddr>>,
    /// Whether the socket reports destinations ([`Batch::for_listener`]).
    destinations: bool,
    /// The socket's address family (0: IPv4, 1: IPv6), learned at the first read.
    family: Option<usize>,
}

impl Default for Batch {
    fn default() -> Self {
        Self::with_slots(1)
    }
}

impl Batch {
    fn with_slots(n: usize) -> Self {
        Self {
            slots: vec![0u8; n * MAX_DATAGRAM].into_boxed_slice(),
            got: Vec::with_capacity(n),
            to: Vec::new(),
            destinations: false,
            family: None,
        }
    }

    /// The batch of a listening socket: one bound to a wildcard address is made to report
    /// each datagram's destination ([`Batch::to`]), so that the replies can leave from it.
    /// Without that report (a kernel that refuses it), the replies leave from the route's
    /// source, as they did before.
    pub fn for_listener(sock: &UdpSocket) -> Self {
        let wildcard = sock.local_addr().is_ok_and(|a| a.ip().is_unspecified());
        Self { destinations: wildcard && report_destinations(sock), ..Self::default() }
    }

    /// Waits until `sock` has datagrams and reads them, as many as there are slots. Returns
    /// how many were read. Cancel-safe (nothing is read until the socket is ready).
    pub async fn read(&mut self, sock: &UdpSocket) -> io::Result<usize> {
        loop {
            sock.readable().await?;
            match sock.try_io(Interest::READABLE, || self.recv(sock)) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => return r,
            }
        }
    }

    /// Reads the datagrams waiting on `sock` without waiting (WouldBlock when none is, and
    /// the socket's readiness is cleared so the next wait waits).
    pub fn try_read(&mut self, sock: &UdpSocket) -> io::Result<usize> {
        sock.try_io(Interest::READABLE, || self.recv(sock))
    }

    /// Hands the last read's datagrams to `send` in runs: consecutive, of one length, as
    /// many as one GSO send carries (what [`Segmenting::send_to`] takes). For a connected
    /// socket's batch, whose datagrams all come from one peer: a reply pump's.
    pub fn runs(&self, mut send: impl FnMut(&[&[u8]])) {
        let mut parts = [&[][..]; MAX_BATCH];
        let mut flush = |run: Option<Run<()>>| {
            if let Some(run) = run {
                let n = self.parts(&run, &mut parts);
                send(&parts[..n]);
            }
        };
        let mut run: Option<Run<()>> = None;
        for i in 0..self.len() {
            let Some((d, _)) = self.get(i) else { continue };
            if !run.as_mut().is_some_and(|r| r.extend(i, (), 0, d.len(), 0)) {
                flush(run.take());
                run = Some(Run::new(i, (), 0, d.len()));
            }
        }
        flush(run);
    }

    /// Reads the datagrams waiting on `sock` without waiting (WouldBlock when none is).
    fn recv(&mut self, sock: &UdpSocket) -> io::Result<usize> {
        if self.got.len() == self.slots() && self.slots() < MAX_BATCH {
            // The previous read filled every slot: this listener is busy.
            *self = Self { family: self.family, destinations: self.destinations, ..Self::with_slots(MAX_BATCH) };
        }
        let family = match self.family {
            Some(f) => f,
            None => *self.family.insert(usize::from(sock.local_addr()?.is_ipv6())),
        };
        self.got.clear();
        self.to.clear();
        let n = self.slots();
        let Self { slots, got, to, destinations, .. } = self;
        let destinations = *destinations;
        HEADERS.with_borrow_mut(|headers| {
            let set = &mut headers[family + 2 * usize::from(destinations)];
            let mut rest = slots.chunks_mut(MAX_DATAGRAM);
            let mut iovs: [[IoSliceMut<'_>; 1]; MAX_BATCH] =
                std::array::from_fn(|_| [IoSliceMut::new(rest.next().unwrap_or_default())]);
            let headers = set.get_or_insert_with(|| {
                let control = destinations.then(|| nix::cmsg_space!(libc::in6_pktinfo));
                MultiHeaders::preallocate(MAX_BATCH, control)
            });
            let read = recvmmsg(sock.as_raw_fd(), headers, iovs[..n].iter_mut(), MsgFlags::MSG_DONTWAIT, None)
                .map_err(io::Error::from)?;
            let mut lost_control = false;
            for m in read {
                // A source that is not an IP address (none for a UDP socket) or a datagram cut
                // short (none: every slot holds the largest) is skipped, not relayed wrong.
                let from = m.address.as_ref().and_then(socket_addr);
                got.push(from.filter(|_| !m.flags.contains(MsgFlags::MSG_TRUNC)).map(|from| (m.bytes, from)));
                if destinations {
                    let dst = m.cmsgs().ok().and_then(|mut c| c.find_map(|c| destination(&c)));
                    lost_control |= dst.is_none();
                    to.push(dst);
                }
            }
            if lost_control {
                // Not expected (every datagram of such a socket carries one); a header left
                // with less room than before would lose the next ones too: made anew.
                *set = None;
            }
            Ok(got.len())
        })
    }

    /// The `i`th datagram's destination, for a listener that learns them
    /// ([`Batch::for_listener`]); None for any other socket's.
    pub fn to(&self, i: usize) -> Option<IpAddr> {
        self.to.get(i).copied().flatten()
    }

    /// How many datagrams the last read took (skipped ones included).
    pub fn len(&self) -> usize {
        self.got.len()
    }

    pub fn is_empty(&self) -> bool {
        self.got.is_empty()
    }

    /// The `i`th datagram of the last read and its source; None for one that was skipped.
    pub fn get(&self, i: usize) -> Option<(&[u8], SocketAddr)> {
        let (n, from) = (*self.got.get(i)?)?;
        let start = i * MAX_DATAGRAM;
        Some((self.slots.get(start..start + n.min(MAX_DATAGRAM))?, from))
    }

    /// Slots held (1, or [`MAX_BATCH`] once the listener was busy).
    pub fn slots(&self) -> usize {
        self.slots.len() / MAX_DATAGRAM
    }
}

/// Asks the kernel for each datagram's destination on `sock` (`IP_PKTINFO`,
/// `IPV6_RECVPKTINFO`); whether it will give it.
fn report_destinations(sock: &UdpSocket) -> bool {
    let set = match sock.local_addr() {
        Ok(SocketAddr::V4(_)) => setsockopt(sock, sockopt::Ipv4PacketInfo, &true),
        Ok(SocketAddr::V6(_)) => setsockopt(sock, sockopt::Ipv6RecvPacketInfo, &true),
        Err(_) => return false,
    };
    set.is_ok()
}

/// The local address a datagram came to, from its packet-info message: for IPv4 the kernel's
/// `ipi_spec_dst`, the packet's destination when that is one of this host's (unicast), else
/// the receiving interface's address (a broadcast's), which an answer may come from.
fn destination(c: &ControlMessageOwned) -> Option<IpAddr> {
    match c {
        ControlMessageOwned::Ipv4PacketInfo(i) => {
            let local = match i.ipi_spec_dst.s_addr {
                0 => i.ipi_addr.s_addr,
                a => a,
            };
            Some(IpAddr::from(u32::from_be(local).to_be_bytes()))
        }
        ControlMessageOwned::Ipv6PacketInfo(i) => Some(IpAddr::from(i.ipi6_addr.s6_addr)),
        _ => None,
    }
}

/// The packet-info message that makes a datagram leave from `from`: only a unicast address
/// can be a source (a datagram to a wildcard listener may have been multicast or broadcast;
/// its answer then leaves from the route's source).
enum Source {
    V4(libc::in_pktinfo),
    V6(libc::in6_pktinfo),
}

impl Source {
    fn new(from: Option<IpAddr>) -> Option<Self> {
        let from = from?;
        // An IPv4-mapped address (a dual-stack socket from a socket unit) is judged as IPv4.
        let unicast = match from.to_canonical() {
            IpAddr::V4(ip) => !(ip.is_multicast() || ip.is_broadcast() || ip.is_unspecified()),
            IpAddr::V6(ip) => !(ip.is_multicast() || ip.is_unspecified()),
        };
        if !unicast {
            return None;
        }
        match from {
            IpAddr::V4(ip) => Some(Self::V4(libc::in_pktinfo {
                ipi_ifindex: 0,
                ipi_spec_dst: libc::in_addr { s_addr: u32::from(ip).to_be() },
                ipi_addr: libc::in_addr { s_addr: 0 },
            })),
            IpAddr::V6(ip) => Some(Self::V6(libc::in6_pktinfo {
                ipi6_addr: libc::in6_addr { s6_addr: ip.octets() },
                ipi6_ifindex: 0,
            })),
        }
    }

    fn message(&self) -> ControlMessage<'_> {
        match self {
            Self::V4(i) => ControlMessage::Ipv4PacketInfo(i),
            Self::V6(i) => ControlMessage::Ipv6PacketInfo(i),
        }
    }
}

fn socket_addr(s: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = s.as_sockaddr_in() {
        return Some(SocketAddr::from(*v4));
    }
    s.as_sockaddr_in6().map(|v6| SocketAddr::from(*v6))
}

/// What a connected socket's route takes of GSO, learned from its refusals: none at all
/// (a device without checksum offload, such as a TUN without offloads: EIO), or segments
/// only below some size (larger ones than the route's MTU: EINVAL).
#[derive(Debug, Clone, Copy)]
pub struct Segmenting {
    off: bool,
    /// Segments of this size or larger are sent one by one.
    refused_from: usize,
}

impl Default for Segmenting {
    fn default() -> Self {
        Self { off: false, refused_from: usize::MAX }
    }
}

/// How a run went out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    /// Datagrams the kernel took (the rest were dropped: a full send queue).
    pub datagrams: usize,
    /// System calls made.
    pub calls: usize,
}

impl Segmenting {
    /// Sends `datagrams` (one flow's, all of one length, at most [`MAX_BATCH`]) on the
    /// connected `sock`, each behind `header` when there is one: in one GSO send when there
    /// are several and the route takes it, else one by one. Never waits: a full queue drops.
    pub fn send(&mut self, sock: &UdpSocket, header: Option<&[u8]>, datagrams: &[&[u8]]) -> Sent {
        self.send_on(sock, None, header, datagrams)
    }

    /// The same on an unconnected `sock` (a listener's), every datagram to `to`, without a
    /// header: a flow's replies to its client, from the address it sent to when that is
    /// `from` (a wildcard listener's; see [`Batch::to`]).
    pub fn send_to(&mut self, sock: &UdpSocket, to: SocketAddr, from: Option<IpAddr>, datagrams: &[&[u8]]) -> Sent {
        self.send_on(sock, Some((to, Source::new(from))), None, datagrams)
    }

    /// `header` only with `to` None (a connected socket).
    fn send_on(
        &mut self,
        sock: &UdpSocket,
        to: Option<(SocketAddr, Option<Source>)>,
        header: Option<&[u8]>,
        datagrams: &[&[u8]],
    ) -> Sent {
        let to = to.as_ref().map(|(to, from)| (*to, from.as_ref()));
        let datagrams = &datagrams[..datagrams.len().min(MAX_BATCH)];
        let head = header.unwrap_or_default();
        let segment = head.len() + datagrams.first().map_or(0, |d| d.len());
        // Empty datagrams stay one by one: a segment size of 0 would send a single one.
        if datagrams.len() > 1 && !self.off && segment > 0 && segment < self.refused_from {
            match send_gso(sock, to, head, datagrams, segment) {
                Ok(()) => return Sent { datagrams: datagrams.len(), calls: 1 },
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Sent { datagrams: 0, calls: 1 },
                Err(e) => {
                    // EINVAL may also be the send's, not the segments' (a source address that
                    // left this host): the size is marked refused only once single sends of
                    // it go through.
                    let mut too_large = false;
                    match e.raw_os_error() {
                        Some(EIO) => self.off = true,
                        Some(EINVAL | EMSGSIZE) => too_large = true,
                        // An ICMP error reported once on a connected socket, before anything
                        // left: says nothing about GSO.
                        Some(ECONNREFUSED) => {}
                        // Anything else may come after part of the run went out (a device
                        // failing halfway through the segments): sent again, some would be
                        // sent twice. The run is dropped, as a router would.
                        _ => return Sent { datagrams: 0, calls: 1 },
                    }
                    // Refused before anything left: the datagrams go one by one.
                    let one_by_one = self.one_by_one(sock, to, header, datagrams);
                    if too_large && one_by_one.datagrams > 0 {
                        self.refused_from = self.refused_from.min(segment);
                    }
                    return Sent { calls: one_by_one.calls + 1, ..one_by_one };
                }
            }
        }
        self.one_by_one(sock, to, header, datagrams)
    }

    fn one_by_one(
        &self,
        sock: &UdpSocket,
        to: Option<(SocketAddr, Option<&Source>)>,
        header: Option<&[u8]>,
        datagrams: &[&[u8]],
    ) -> Sent {
        let mut sent = 0;
        for d in datagrams {
            let r = match (header, to) {
                (Some(h), _) => send_with_header(sock, h, d),
                (None, Some((to, Some(from)))) => send_from(sock, d, to, from),
                (None, to) => send_now(sock, d, to.map(|(to, _)| to)),
            };
            sent += usize::from(r.is_ok());
        }
        Sent { datagrams: sent, calls: datagrams.len() }
    }

    /// Whether one more `segment`-byte datagram (header included) may join a run of `count`.
    fn fits(count: usize, segment: usize) -> bool {
        count < MAX_BATCH && (count + 1) * segment <= MAX_GSO_BYTES
    }
}

/// One datagram to `to` from the address `from` names.
fn send_from(sock: &UdpSocket, data: &[u8], to: SocketAddr, from: &Source) -> io::Result<usize> {
    let iov = [IoSlice::new(data)];
    let to = SockaddrStorage::from(to);
    sendmsg(sock.as_raw_fd(), &iov, &[from.message()], MsgFlags::MSG_DONTWAIT, Some(&to)).map_err(io::Error::from)
}

fn send_gso(
    sock: &UdpSocket,
    to: Option<(SocketAddr, Option<&Source>)>,
    head: &[u8],
    datagrams: &[&[u8]],
    segment: usize,
) -> io::Result<()> {
    let size = u16::try_from(segment).map_err(|_| io::Error::from_raw_os_error(EMSGSIZE))?;
    let mut iov = [IoSlice::new(&[]); 2 * MAX_BATCH];
    let mut k = 0;
    for d in datagrams {
        if !head.is_empty() {
            iov[k] = IoSlice::new(head);
            k += 1;
        }
        iov[k] = IoSlice::new(d);
        k += 1;
    }
    let gso = ControlMessage::UdpGsoSegments(&size);
    let from = to.and_then(|(_, from)| from);
    let (cmsg, n) = match from {
        Some(from) => ([gso, from.message()], 2),
        None => ([gso, gso], 1),
    };
    let to = to.map(|(to, _)| SockaddrStorage::from(to));
    sendmsg(sock.as_raw_fd(), &iov[..k], &cmsg[..n], MsgFlags::MSG_DONTWAIT, to.as_ref())
        .map(drop)
        .map_err(io::Error::from)
}

/// Consecutive datagrams of a batch of one flow (`key`), all of one length: what one
/// [`Segmenting::send`] carries. Each may start with bytes that are not sent on (`skip`: a
/// PROXY header the relay strips), the same number for all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run<K = SocketAddr> {
    pub key: K,
    pub skip: usize,
    /// Each datagram's length after `skip`.
    pub len: usize,
    /// The batch's datagrams `start..end`.
    pub start: usize,
    pub end: usize,
}

impl<K: Copy + Eq> Run<K> {
    pub fn new(i: usize, key: K, skip: usize, len: usize) -> Self {
        Self { key, skip, len, start: i, end: i + 1 }
    }

    /// Adds the batch's `i`th datagram when it continues this run (the next one, same flow,
    /// same shape, room left for one more segment led by a `header`-byte header).
    pub fn extend(&mut self, i: usize, key: K, skip: usize, len: usize, header: usize) -> bool {
        let joins = i == self.end
            && key == self.key
            && skip == self.skip
            && len == self.len
            && Segmenting::fits(self.end - self.start, header + len);
        if joins {
            self.end += 1;
        }
        joins
    }

    /// How many datagrams the run holds.
    pub fn count(&self) -> usize {
        self.end - self.start
    }
}

impl Batch {
    /// Sends the run's datagrams (past their `skip` bytes) on its flow's connected `sock`
    /// (see [`Segmenting::send`]).
    pub fn send<K>(&self, run: &Run<K>, seg: &mut Segmenting, sock: &UdpSocket, header: Option<&[u8]>) -> Sent {
        let mut parts = [&[][..]; MAX_BATCH];
        let n = self.parts(run, &mut parts);
        seg.send(sock, header, &parts[..n])
    }

    /// The run's datagrams past their `skip` bytes: `out[..n]`, n returned.
    fn parts<'a, K>(&'a self, run: &Run<K>, out: &mut [&'a [u8]; MAX_BATCH]) -> usize {
        let mut n = 0;
        for i in run.start..run.end {
            let d = self.get(i).and_then(|(d, _)| d.get(run.skip..));
            if let (Some(d), Some(slot)) = (d, out.get_mut(n)) {
                *slot = d;
                n += 1;
            }
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn read(rx: &UdpSocket, batch: &mut Batch) -> usize {
        tokio::time::timeout(Duration::from_secs(5), batch.read(rx)).await.expect("in time").expect("read")
    }

    /// A quiet listener reads one datagram a call; once a read fills its slot, the rest of
    /// its queue comes in one call, each datagram with its own source and bytes.
    #[tokio::test]
    async fn a_busy_listener_reads_its_queue_in_one_call() {
        let rx = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let to = rx.local_addr().expect("addr");
        let a = UdpSocket::bind("127.0.0.1:0").await.expect("a");
        let b = UdpSocket::bind("127.0.0.1:0").await.expect("b");
        let sent: Vec<(SocketAddr, Vec<u8>)> = (0..10u8)
            .map(|i| {
                let from = if i % 3 == 0 { &b } else { &a };
                (from.local_addr().expect("addr"), vec![i; 100 + usize::from(i)])
            })
            .collect();
        for (i, (_, d)) in sent.iter().enumerate() {
            let from = if i % 3 == 0 { &b } else { &a };
            from.send_to(d, to).await.expect("send");
        }
        let mut batch = Batch::default();
        assert_eq!(read(&rx, &mut batch).await, 1);
        assert_eq!(batch.slots(), 1);
        assert_eq!(batch.get(0), Some((&sent[0].1[..], sent[0].0)));
        assert_eq!(read(&rx, &mut batch).await, 9, "the other nine in one call");
        assert_eq!(batch.slots(), MAX_BATCH);
        for i in 0..9 {
            let (from, d) = &sent[i + 1];
            assert_eq!(batch.get(i), Some((&d[..], *from)), "datagram {}", i + 1);
        }
        assert_eq!(batch.get(9), None);
    }

    /// Sources of both families come out whole on one thread, whichever family read first
    /// (the kernel writes back the address length into headers shared by the thread's sockets).
    #[tokio::test(flavor = "current_thread")]
    async fn ipv6_sources_are_whole_after_an_ipv4_read_on_the_same_thread() {
        let v4 = UdpSocket::bind("127.0.0.1:0").await.expect("v4");
        let v6 = UdpSocket::bind("[::1]:0").await.expect("v6");
        let from4 = UdpSocket::bind("127.0.0.1:0").await.expect("from4");
        let from6 = UdpSocket::bind("[::1]:0").await.expect("from6");
        let (mut b4, mut b6) = (Batch::default(), Batch::default());
        for round in 0..3 {
            from4.send_to(b"four", v4.local_addr().expect("addr")).await.expect("send");
            from6.send_to(b"six", v6.local_addr().expect("addr")).await.expect("send");
            assert_eq!(read(&v4, &mut b4).await, 1);
            assert_eq!(b4.get(0), Some((&b"four"[..], from4.local_addr().expect("addr"))), "round {round}");
            assert_eq!(read(&v6, &mut b6).await, 1);
            assert_eq!(b6.get(0), Some((&b"six"[..], from6.local_addr().expect("addr"))), "round {round}");
        }
    }

    /// Ten datagrams behind a header leave in one call and arrive as ten, in order.
    #[tokio::test]
    async fn a_run_leaves_in_one_gso_send_and_arrives_as_datagrams() {
        let (tx, rx) = pair().await;
        let payloads: Vec<Vec<u8>> = (0..10u8).map(|i| vec![i; 1200]).collect();
        let parts: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
        let mut seg = Segmenting::default();
        assert_eq!(seg.send(&tx, Some(b"HDR"), &parts), Sent { datagrams: 10, calls: 1 });
        let mut buf = [0u8; 4096];
        for (i, p) in payloads.iter().enumerate() {
            let n =
                tokio::time::timeout(Duration::from_secs(5), rx.recv(&mut buf)).await.expect("in time").expect("recv");
            assert_eq!(&buf[..3], b"HDR", "datagram {i}");
            assert_eq!(&buf[3..n], &p[..], "datagram {i}");
        }
    }

    /// A segment size the kernel refuses (here: a run larger than one IP packet) is sent one
    /// by one, and not tried as one send again; other sizes still are.
    #[tokio::test]
    async fn a_refused_segment_size_goes_one_by_one_from_then_on() {
        let (tx, rx) = pair().await;
        let big = vec![7u8; 40_000];
        let mut seg = Segmenting::default();
        assert_eq!(seg.send(&tx, None, &[&big, &big]), Sent { datagrams: 2, calls: 3 });
        assert_eq!(seg.send(&tx, None, &[&big, &big]), Sent { datagrams: 2, calls: 2 }, "remembered");
        let small = [1u8; 100];
        assert_eq!(seg.send(&tx, None, &[&small, &small]), Sent { datagrams: 2, calls: 1 });
        let mut buf = vec![0u8; 65_536];
        let mut sizes = Vec::new();
        for _ in 0..6 {
            let n =
                tokio::time::timeout(Duration::from_secs(5), rx.recv(&mut buf)).await.expect("in time").expect("recv");
            sizes.push(n);
        }
        assert_eq!(sizes, [40_000, 40_000, 40_000, 40_000, 100, 100]);
    }

    #[test]
    fn a_run_takes_the_next_datagram_of_its_flow_and_shape_while_there_is_room() {
        let a = SocketAddr::from(([127, 0, 0, 1], 1000));
        let b = SocketAddr::from(([127, 0, 0, 1], 1001));
        let mut run = Run::new(0, a, 0, 1200);
        assert!(run.extend(1, a, 0, 1200, 0));
        assert!(!run.extend(3, a, 0, 1200, 0), "not the next one");
        assert!(!run.extend(2, b, 0, 1200, 0), "another flow");
        assert!(!run.extend(2, a, 0, 1199, 0), "another size");
        assert!(!run.extend(2, a, 28, 1200, 0), "another header to strip");
        assert_eq!(run.count(), 2);
        let mut full = Run::new(0, a, 0, 100);
        let mut i = 1;
        while full.extend(i, a, 0, 100, 16) {
            i += 1;
        }
        assert_eq!(full.count(), MAX_BATCH, "at most a batch");
        let mut large = Run::new(0, a, 0, 9000);
        let mut i = 1;
        while large.extend(i, a, 0, 9000, 0) {
            i += 1;
        }
        assert_eq!(large.count(), MAX_GSO_BYTES / 9000, "at most one IP packet's worth");
    }

    /// A run's parts are its datagrams past the bytes it strips.
    #[tokio::test]
    async fn a_runs_parts_skip_what_is_stripped() {
        let rx = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let tx = UdpSocket::bind("127.0.0.1:0").await.expect("tx");
        let from = tx.local_addr().expect("addr");
        for d in [&b"HDRone"[..], b"HDRtwo", b"HDRsix"] {
            tx.send_to(d, rx.local_addr().expect("addr")).await.expect("send");
        }
        let mut batch = Batch::default();
        read(&rx, &mut batch).await;
        assert_eq!(read(&rx, &mut batch).await, 2);
        let mut run = Run::new(0, from, 3, 3);
        assert!(run.extend(1, from, 3, 3, 0));
        let mut out = [&[][..]; MAX_BATCH];
        let n = batch.parts(&run, &mut out);
        assert_eq!(&out[..n], [&b"two"[..], b"six"]);
    }

    /// A reply batch splits where the length changes and where a run would outgrow one GSO
    /// send, and its runs, sent to an address from an unconnected socket, arrive whole and in
    /// order.
    #[tokio::test]
    async fn replies_go_out_in_runs_of_one_length_to_their_client() {
        let (upstream, flow) = pair().await;
        let listener = UdpSocket::bind("127.0.0.1:0").await.expect("listener");
        let client = UdpSocket::bind("127.0.0.1:0").await.expect("client");
        // 20 of 500 bytes, one of 300, 8 of 9,000 (at most 6 per send), 3 of 500.
        let mut sent: Vec<Vec<u8>> = Vec::new();
        let lengths = [(20, 500), (1, 300), (8, 9000), (3, 500)];
        for (count, len) in lengths {
            for _ in 0..count {
                sent.push(vec![sent.len() as u8; len]);
            }
        }
        for d in &sent {
            upstream.send(d).await.expect("send");
        }
        let mut batch = Batch::default();
        let mut got_runs = Vec::new();
        let mut read_total = 0;
        while read_total < sent.len() {
            read_total += read(&flow, &mut batch).await;
            let mut seg = Segmenting::default();
            let to = client.local_addr().expect("addr");
            batch.runs(|run| {
                got_runs.push((run.len(), run[0].len()));
                let one_send = Sent { datagrams: run.len(), calls: 1 };
                assert_eq!(seg.send_to(&listener, to, None, run), one_send, "a run in one GSO send");
            });
        }
        // The first read takes one (a quiet socket's one slot); the next, the other 31.
        assert_eq!(got_runs, [(1, 500), (19, 500), (1, 300), (6, 9000), (2, 9000), (3, 500)]);
        let mut buf = vec![0u8; 65_536];
        for (i, d) in sent.iter().enumerate() {
            let (n, from) = tokio::time::timeout(Duration::from_secs(5), client.recv_from(&mut buf))
                .await
                .expect("in time")
                .expect("recv");
            assert_eq!(from, listener.local_addr().expect("addr"));
            assert_eq!(&buf[..n], &d[..], "datagram {i}, whole and in order");
        }
    }

    /// A wildcard listener learns which of the host's addresses each datagram was sent to, and
    /// its replies (one alone, and a run in one GSO send) leave from that address: here
    /// 127.0.0.3 and 127.0.0.4, neither of them the route's source (127.0.0.1).
    #[tokio::test]
    async fn a_wildcard_listener_answers_from_the_address_it_was_asked_at() {
        let listener = UdpSocket::bind("0.0.0.0:0").await.expect("listener");
        let port = listener.local_addr().expect("addr").port();
        let mut batch = Batch::for_listener(&listener);
        let client = UdpSocket::bind("127.0.0.1:0").await.expect("client");
        for (ip, run) in [("127.0.0.3", 1), ("127.0.0.4", 5)] {
            let asked = SocketAddr::new(ip.parse().expect("ip"), port);
            client.send_to(b"question", asked).await.expect("send");
            assert_eq!(read(&listener, &mut batch).await, 1);
            let (d, from) = batch.get(0).expect("datagram");
            assert_eq!((d, from), (&b"question"[..], client.local_addr().expect("addr")));
            assert_eq!(batch.to(0), Some(asked.ip()), "its destination");
            let answers = vec![&b"answer"[..]; run];
            let mut seg = Segmenting::default();
            let sent = seg.send_to(&listener, from, batch.to(0), &answers);
            assert_eq!(sent, Sent { datagrams: run, calls: 1 }, "{ip}");
            for i in 0..run {
                let mut buf = [0u8; 64];
                let (n, source) = tokio::time::timeout(Duration::from_secs(5), client.recv_from(&mut buf))
                    .await
                    .expect("in time")
                    .expect("recv");
                assert_eq!((&buf[..n], source), (&b"answer"[..], asked), "reply {i} to {ip}");
            }
        }
    }

    /// A reply from an address this host no longer has (a failover address moved away) is
    /// refused, GSO or not (over IPv6 with EINVAL, the error of a segment size the route
    /// refuses): that says nothing of the segments' size, and a later run from an address it
    /// has still goes out in one GSO send.
    #[tokio::test]
    async fn a_source_that_left_does_not_lower_the_gso_size() {
        // Documentation prefixes: on no interface of a test machine.
        for (wild, client, gone, here) in
            [("0.0.0.0:0", "127.0.0.1:0", "203.0.113.9", "127.0.0.1"), ("[::]:0", "[::1]:0", "2001:db8::9", "::1")]
        {
            let listener = UdpSocket::bind(wild).await.expect("listener");
            let client = UdpSocket::bind(client).await.expect("client");
            let to = client.local_addr().expect("addr");
            let answers = vec![&b"answer"[..]; 4];
            let mut seg = Segmenting::default();
            let sent = seg.send_to(&listener, to, Some(gone.parse().expect("ip")), &answers);
            assert_eq!(sent.datagrams, 0, "{gone}: refused");
            assert_eq!(seg.refused_from, usize::MAX, "{gone}: not taken for a segment size refused");
            let sent = seg.send_to(&listener, to, Some(here.parse().expect("ip")), &answers);
            assert_eq!(sent, Sent { datagrams: 4, calls: 1 }, "{here}: one GSO send");
        }
    }

    /// The same over IPv6, and a listener on one address learns nothing (its replies leave
    /// from that address anyway).
    #[tokio::test]
    async fn destinations_over_ipv6_and_none_for_a_specific_address() {
        let wild = UdpSocket::bind("[::]:0").await.expect("listener");
        let asked = SocketAddr::new("::1".parse().expect("ip"), wild.local_addr().expect("addr").port());
        let client = UdpSocket::bind("[::1]:0").await.expect("client");
        client.send_to(b"six", asked).await.expect("send");
        let mut batch = Batch::for_listener(&wild);
        assert_eq!(read(&wild, &mut batch).await, 1);
        assert_eq!(batch.to(0), Some(asked.ip()));
        let specific = UdpSocket::bind("127.0.0.1:0").await.expect("specific");
        let v4 = UdpSocket::bind("127.0.0.1:0").await.expect("v4 client");
        v4.send_to(b"four", specific.local_addr().expect("addr")).await.expect("send");
        let mut batch = Batch::for_listener(&specific);
        assert_eq!(read(&specific, &mut batch).await, 1);
        assert_eq!(batch.get(0).map(|(d, _)| d), Some(&b"four"[..]));
        assert_eq!(batch.to(0), None);
    }

    /// A broadcast's answer leaves from the receiving interface's address (the kernel's
    /// `ipi_spec_dst`), and no answer is sent from a broadcast or multicast address, an
    /// IPv4-mapped one included.
    #[test]
    fn answers_leave_from_a_unicast_address() {
        let addr = |s: &str| libc::in_addr { s_addr: u32::from(s.parse::<std::net::Ipv4Addr>().expect("ip")).to_be() };
        let broadcast =
            libc::in_pktinfo { ipi_ifindex: 2, ipi_spec_dst: addr("192.0.2.10"), ipi_addr: addr("192.0.2.255") };
        let dst = destination(&ControlMessageOwned::Ipv4PacketInfo(broadcast));
        assert_eq!(dst, Some("192.0.2.10".parse().expect("ip")));
        let bare = libc::in_pktinfo { ipi_ifindex: 2, ipi_spec_dst: addr("0.0.0.0"), ipi_addr: addr("192.0.2.11") };
        assert_eq!(destination(&ControlMessageOwned::Ipv4PacketInfo(bare)), Some("192.0.2.11".parse().expect("ip")));
        for no in ["255.255.255.255", "224.0.0.251", "::ffff:255.255.255.255", "::ffff:224.0.0.1", "ff02::1", "::"] {
            assert!(Source::new(Some(no.parse().expect("ip"))).is_none(), "{no}");
        }
        for yes in ["192.0.2.10", "::ffff:192.0.2.10", "2001:db8::1"] {
            assert!(Source::new(Some(yes.parse().expect("ip"))).is_some(), "{yes}");
        }
    }

    async fn pair() -> (UdpSocket, UdpSocket) {
        let tx = UdpSocket::bind("127.0.0.1:0").await.expect("tx");
        let rx = UdpSocket::bind("127.0.0.1:0").await.expect("rx");
        tx.connect(rx.local_addr().expect("addr")).await.expect("connect");
        rx.connect(tx.local_addr().expect("addr")).await.expect("connect");
        (tx, rx)
    }
}
