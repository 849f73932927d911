//! What both binaries' UDP flow relays share beyond the datagram I/O (`udp_batch`): the reply
//! pump, which reads in batches into one set of slots per worker thread, so thousands of
//! idle flows own no buffer at all, and the linger of a stopping listener's flows.

use std::cell::RefCell;
use std::io;
use std::time::Duration;

use tokio::net::UdpSocket;

use crate::udp_batch::Batch;
use crate::udp_flows::{FlowEntry, FlowTable};

thread_local! {
    /// The replies of every flow on this thread, read one flow's batch at a time between
    /// awaits: one batch per address family (a batch learns its sockets' family at its first
    /// read). Quiet flows own no buffer at all; on a busy thread the slots' untouched pages
    /// cost no memory.
    static REPLIES: RefCell<[Batch; 2]> = RefCell::new(Default::default());
}

/// Hand every datagram `upstream` (a connected socket) receives to `deliver`, forever (the
/// caller aborts the task when the flow ends): read in batches, in runs of one length
/// ([`Batch::runs`]), so that a busy flow's replies go out in GSO sends
/// ([`crate::udp_batch::Segmenting::send_to`]).
pub async fn pump(upstream: &UdpSocket, deliver: impl FnMut(&[&[u8]])) {
    pump_while(upstream, || true, deliver).await
}

/// [`pump`] while `owns` says the flow still owns `upstream`: a socket shared by the flows of
/// one conversation is read by the newest flow's pump alone, and an older one ends at the
/// first reply after it lost the socket, without reading it. Two pumps of one socket on two
/// threads would take turns with its replies and could send them out of order.
pub async fn pump_while(upstream: &UdpSocket, owns: impl Fn() -> bool, mut deliver: impl FnMut(&[&[u8]])) {
    let family = usize::from(upstream.local_addr().is_ok_and(|a| a.is_ipv6()));
    loop {
        if upstream.readable().await.is_err() {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        }
        let read = REPLIES.with_borrow_mut(|batches| {
            let batch = &mut batches[family];
            for _ in 0..RUN_BATCHES {
                // Asked before each batch: a newer flow may take the socket in between.
                if !owns() {
                    return Read::Lost;
                }
                match batch.try_read(upstream) {
                    Ok(_) => batch.runs(&mut deliver),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Read::Drained,
                    // ECONNREFUSED from an ICMP port unreachable: the service may come back.
                    Err(_) => return Read::Refused,
                }
            }
            Read::Busy
        });
        match read {
            Read::Lost => return,
            Read::Drained => {}
            Read::Refused => tokio::time::sleep(Duration::from_millis(10)).await,
            // Reads that succeed spend no cooperative budget: a flow whose upstream keeps its
            // queue full would hold the worker thread, and every socket and timer on it, for
            // as long as that lasts.
            Read::Busy => tokio::task::yield_now().await,
        }
    }
}

/// Batches a reply pump reads in a row before it lets the other tasks of its thread run.
const RUN_BATCHES: usize = 8;

enum Read {
    /// The socket is another flow's now ([`pump_while`]).
    Lost,
    Drained,
    Refused,
    Busy,
}

/// How long a stopping listener's flows must have been silent before they are let go, and the
/// most it waits for that (see [`linger`]). A reply on its way is one round trip to the
/// upstream behind plus its answer's time: a LAN service, or the home over a WAN (an
/// intercontinental round trip is ~150-250 ms), or a resolver that recurses. The quiet time is
/// only spent on a stop that found flows talking.
pub const LINGER_QUIET: Duration = Duration::from_millis(250);
pub const LINGER_MAX: Duration = Duration::from_secs(1);

/// Keep a stopping listener's flows until the replies still on their way have been relayed:
/// until every flow has been silent for [`LINGER_QUIET`], at most [`LINGER_MAX`]. The caller
/// no longer reads the listening socket (a restart hands it to the next process, which opens
/// flows of its own for what arrives next), and only sends replies out of it. Without this, a
/// restart dropped the answer to every datagram relayed just before it.
pub async fn linger<K, V>(table: &FlowTable<K, V>, now_ms: impl Fn() -> u64)
where
    K: Copy + Ord + std::hash::Hash,
    V: FlowEntry,
{
    let quiet = async {
        while let Some(wait) = table.until_quiet(now_ms(), LINGER_QUIET.as_millis() as u64) {
            tokio::time::sleep(Duration::from_millis(wait)).await;
        }
    };
    let _ = tokio::time::timeout(LINGER_MAX, quiet).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::udp_batch::{send_now, send_with_header};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    /// A flow whose last activity the test sets, as a reply pump would.
    struct Seen(Arc<AtomicU64>);

    impl FlowEntry for Seen {
        fn last_active(&self) -> u64 {
            self.0.load(Ordering::Relaxed)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn linger_waits_for_replies_on_their_way_and_no_longer() {
        let epoch = tokio::time::Instant::now();
        let now_ms = move || epoch.elapsed().as_millis() as u64;

        // No flows: nothing to wait for.
        let empty: FlowTable<u8, Seen> = FlowTable::new(60_000);
        linger(&empty, now_ms).await;
        assert_eq!(epoch.elapsed(), Duration::ZERO);

        // A datagram relayed at 0 ms; its reply arrives at 60 ms: let go LINGER_QUIET after that.
        let last = Arc::new(AtomicU64::new(0));
        let mut table = FlowTable::new(60_000);
        table.insert(1u8, Seen(last.clone()), 0);
        let reply = {
            let last = last.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(60)).await;
                last.store(now_ms(), Ordering::Relaxed);
            })
        };
        linger(&table, now_ms).await;
        assert_eq!(epoch.elapsed(), Duration::from_millis(60) + LINGER_QUIET);
        reply.await.unwrap();

        // A flow that never goes quiet (an upstream streaming on) is let go at LINGER_MAX.
        let start = tokio::time::Instant::now();
        last.store(now_ms(), Ordering::Relaxed);
        let chatty = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(10)).await;
                last.store(now_ms(), Ordering::Relaxed);
            }
        });
        linger(&table, now_ms).await;
        assert_eq!(start.elapsed(), LINGER_MAX);
        chatty.abort();
    }

    #[tokio::test]
    async fn header_and_payload_arrive_as_one_datagram_and_replies_are_pumped() {
        let a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        a.connect(b.local_addr().unwrap()).await.unwrap();
        b.connect(a.local_addr().unwrap()).await.unwrap();
        send_with_header(&a, b"HDR", b"payload").unwrap();
        let mut buf = [0u8; 64];
        let n = b.recv(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"HDRpayload");
        send_now(&b, b"one", None).unwrap();
        send_now(&b, b"two", None).unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let task =
            tokio::spawn(async move { pump(&a, |run| run.iter().for_each(|d| drop(tx.send(d.to_vec())))).await });
        assert_eq!(rx.recv().await.unwrap(), b"one");
        assert_eq!(rx.recv().await.unwrap(), b"two");
        task.abort();
    }

    /// Once a newer flow owns a shared socket, the older flow's pump ends at the next reply
    /// without reading it, and the newer pump alone relays every reply, in order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_older_pump_leaves_a_shared_socket_to_the_newer_one() {
        let a = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let b = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        a.connect(b.local_addr().unwrap()).await.unwrap();
        b.connect(a.local_addr().unwrap()).await.unwrap();
        let owner = Arc::new(AtomicU64::new(0));
        let pump_of = |me: u64| {
            let (a, owner) = (a.clone(), owner.clone());
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            let task = tokio::spawn(async move {
                let owns = || owner.load(Ordering::Relaxed) == me;
                pump_while(&a, owns, |run| run.iter().for_each(|d| drop(tx.send(d.to_vec())))).await
            });
            (task, rx)
        };
        let (old, mut old_got) = pump_of(0);
        send_now(&b, b"first", None).unwrap();
        assert_eq!(old_got.recv().await.unwrap(), b"first");
        owner.store(1, Ordering::Relaxed);
        let (new, mut new_got) = pump_of(1);
        for i in 0..100u8 {
            send_now(&b, &[i], None).unwrap();
        }
        for i in 0..100u8 {
            let got = tokio::time::timeout(Duration::from_secs(5), new_got.recv()).await.unwrap().unwrap();
            assert_eq!(got, [i], "every reply by the newer pump, in order");
        }
        tokio::time::timeout(Duration::from_secs(5), old).await.expect("the older pump ended").unwrap();
        assert!(old_got.try_recv().is_err(), "nothing more by the older pump");
        new.abort();
    }

    /// An upstream that keeps its flow's queue full does not hold the worker thread: another
    /// task on it (here a 10 ms timer) still runs.
    #[test]
    fn a_busy_pump_lets_its_thread_run_other_tasks() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let flood = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            flood.connect(a.local_addr().unwrap()).unwrap();
            a.connect(flood.local_addr().unwrap()).await.unwrap();
            let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let flooder = {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let deadline = std::time::Instant::now() + Duration::from_secs(3);
                    while !stop.load(Ordering::Relaxed) && std::time::Instant::now() < deadline {
                        let _ = flood.send(b"reply");
                    }
                })
            };
            let pumped = Arc::new(AtomicU64::new(0));
            let count = pumped.clone();
            let task = tokio::spawn(async move {
                pump(&a, |run| {
                    count.fetch_add(run.len() as u64, Ordering::Relaxed);
                    // A slow way out (one send per datagram, no GSO) beside a fast way in.
                    let until = std::time::Instant::now() + Duration::from_micros(100);
                    while std::time::Instant::now() < until {}
                })
                .await
            });
            // Let the pump start on a full queue, then ask for a turn: the timer's task notes how
            // much the pump had done when it ran. Held, it would run only once the flood ended
            // and the pump had drained the queue, with nothing pumped after it.
            while pumped.load(Ordering::Relaxed) == 0 {
                tokio::task::yield_now().await;
            }
            let at_timer = {
                let pumped = pumped.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    pumped.load(Ordering::Relaxed)
                })
            }
            .await
            .unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
            stop.store(true, Ordering::Relaxed);
            flooder.join().unwrap();
            task.abort();
            let total = pumped.load(Ordering::Relaxed);
            assert!(total > at_timer, "the timer ran only after the flood: {at_timer} of {total} pumped by then");
        });
    }
}
