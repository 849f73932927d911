//! What the test suites of every crate in the workspace share (a dev-dependency, never
//! shipped).

use std::net::{Ipv4Addr, TcpListener, UdpSocket};
use std::sync::atomic::{AtomicU32, Ordering};

/// The ports [`free_port`] hands out: below Linux's default ephemeral range (32768-60999),
/// where the kernel never puts an outgoing connection's or a `bind(0)` socket's local port.
const FIRST: u32 = 20_000;
const COUNT: u32 = 12_000;

/// A port nothing uses right now on any address, for TCP and for UDP, for a process under
/// test to listen on.
///
/// A port taken with `bind(0)` and released comes from the ephemeral range, where any
/// outgoing connection of a test running alongside may take it before the process under
/// test binds it: the process then fails to start ("address in use"), now and then, on a
/// loaded machine. Ports from below that range are taken only by listeners; each call
/// moves on to the next one (threads of one test binary never share a port) from a start
/// that differs per process.
pub fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    if NEXT.load(Ordering::Relaxed) == u32::MAX {
        let _ = NEXT.compare_exchange(
            u32::MAX,
            std::process::id().wrapping_mul(7919) % COUNT,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }
    for _ in 0..COUNT {
        let port = (FIRST + NEXT.fetch_add(1, Ordering::Relaxed) % COUNT) as u16;
        let any = (Ipv4Addr::UNSPECIFIED, port);
        if TcpListener::bind(any).is_ok() && UdpSocket::bind(any).is_ok() {
            return port;
        }
    }
    panic!("no port free in {FIRST}..{}", FIRST + COUNT);
}

/// (year, month, day) of a day number since 1970-01-01 (Howard Hinnant's `civil_from_days`),
/// for the certificate dates tests write (no date crate in the tests).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m as u32, d as u32)
}

/// Threads of process `pid` whose name (`comm`, at most 15 bytes) starts with `prefix`: the
/// event loops a binary started (`shared::workers` names them `<name>-N`).
pub fn threads_named(pid: u32, prefix: &str) -> usize {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return 0 };
    tasks
        .flatten()
        .filter(|t| std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.starts_with(prefix)))
        .count()
}

/// Receives `count` datagrams on `sock`, each behind a PROXY v2 header, and returns what each
/// client sent, in order of arrival: the first byte of each payload (the burst tests send
/// `len` bytes of one value per datagram, so a datagram mixed with another shows).
pub async fn proxied_bursts(
    sock: &tokio::net::UdpSocket,
    count: usize,
    len: usize,
) -> std::collections::BTreeMap<std::net::SocketAddr, Vec<u8>> {
    let mut got: std::collections::BTreeMap<std::net::SocketAddr, Vec<u8>> = Default::default();
    let mut buf = [0u8; 2048];
    for i in 0..count {
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), sock.recv(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("datagram {i} of {count} never came"))
            .unwrap_or_else(|e| panic!("recv: {e}"));
        let parsed = shared::proxy_protocol::parse(&buf[..n])
            .unwrap_or_else(|e| panic!("datagram {i} without a PROXY v2 header: {e}"));
        let (client, _) = parsed.addresses().unwrap_or_else(|| panic!("datagram {i}: no addresses"));
        let payload = &buf[parsed.len..n];
        assert_eq!(payload.len(), len, "datagram {i} from {client} of the wrong size");
        assert!(payload.iter().all(|&b| b == payload[0]), "datagram {i}: bytes mixed with another's");
        got.entry(client).or_default().push(payload[0]);
    }
    got
}

/// The reply-burst check of both relays: `upstream` sends 60 replies to `flow` at once (runs
/// of 500 bytes broken by a 300-byte one every 16th); each must reach `receiver` whole, in
/// order, from `from` (the relay's listening address).
pub async fn reply_burst(
    upstream: &tokio::net::UdpSocket,
    flow: std::net::SocketAddr,
    receiver: &tokio::net::UdpSocket,
    from: std::net::SocketAddr,
) {
    let replies: Vec<Vec<u8>> = (0..60u8).map(|i| vec![i; if i % 16 == 15 { 300 } else { 500 }]).collect();
    for r in &replies {
        upstream.send_to(r, flow).await.unwrap_or_else(|e| panic!("reply: {e}"));
    }
    let mut buf = vec![0u8; 65_536];
    for (i, r) in replies.iter().enumerate() {
        let (n, source) = tokio::time::timeout(std::time::Duration::from_secs(5), receiver.recv_from(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("reply {i} of {} never came", replies.len()))
            .unwrap_or_else(|e| panic!("recv: {e}"));
        assert_eq!(source, from, "reply {i} from the relay's listening address");
        assert_eq!(&buf[..n], &r[..], "reply {i}, whole and in order");
    }
}

/// The kernel's receive buffer of this machine's UDP socket on local port `port`: `ss`'s `rb`,
/// twice what `SO_RCVBUF` set (Linux keeps half for its bookkeeping).
pub fn udp_receive_buffer(port: u16) -> Option<u64> {
    let out = std::process::Command::new("ss").args(["-Hnuam", "sport", "=", &format!(":{port}")]).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.split(|c: char| c == ',' || c == '(' || c.is_whitespace()).find_map(|f| f.strip_prefix("rb")?.parse().ok())
}

/// This process's descriptors used up but `spare`, until dropped: the soft open-files limit
/// lowered to a few above what is open (`prlimit`, util-linux), those few taken (`/dev/null`),
/// `spare` of them given back. Dropped, they are closed and the limit put back.
pub struct DescriptorsTaken {
    files: Vec<std::fs::File>,
    soft: String,
}

impl DescriptorsTaken {
    /// `None` (said on stderr) unless each test runs in a process of its own (cargo-nextest,
    /// as scripts/test runs it): the limit is the whole process's, and tests running beside
    /// this one would meet it.
    pub fn all_but(spare: usize) -> Option<Self> {
        if std::env::var_os("NEXTEST_EXECUTION_MODE").is_none_or(|m| m != "process-per-test") {
            eprintln!("not run: needs cargo-nextest's process per test");
            return None;
        }
        let limits = std::fs::read_to_string("/proc/self/limits").expect("reading /proc/self/limits");
        let soft = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .and_then(|l| l.split_whitespace().nth(3))
            .expect("the open-files limit")
            .to_string();
        let in_use = std::fs::read_dir("/proc/self/fd").expect("reading /proc/self/fd").count();
        set_soft_nofile(&(in_use + 4 + spare).to_string());
        let mut files = Vec::new();
        for _ in 0..64 + spare {
            match std::fs::File::open("/dev/null") {
                Ok(f) => files.push(f),
                Err(e) => {
                    assert_eq!(e.raw_os_error(), Some(24), "not EMFILE: {e}");
                    files.truncate(files.len().saturating_sub(spare));
                    return Some(Self { files, soft });
                }
            }
        }
        set_soft_nofile(&soft);
        panic!("the lowered open-files limit was not reached");
    }
}

impl Drop for DescriptorsTaken {
    fn drop(&mut self) {
        self.files.clear();
        set_soft_nofile(&self.soft);
    }
}

fn set_soft_nofile(n: &str) {
    let pid = std::process::id().to_string();
    let done = std::process::Command::new("prlimit").args(["--pid", &pid, &format!("--nofile={n}:")]).status();
    assert!(done.as_ref().is_ok_and(|s| s.success()), "prlimit --nofile={n}: {done:?}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_outside_the_ephemeral_range_distinct_and_free() {
        let ports: Vec<u16> = (0..50).map(|_| free_port()).collect();
        let mut unique = ports.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), ports.len(), "{ports:?}");
        assert!(ports.iter().all(|&p| (20_000..32_000).contains(&p)), "{ports:?}");
        // Taken: the next call skips it.
        let held = TcpListener::bind((Ipv4Addr::UNSPECIFIED, free_port())).map(|l| l.local_addr());
        assert!(held.is_ok());
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_789), (2026, 12, 2));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }
}
