//! DNS lookups with `hickory-resolver`: one A or AAAA query per call, never answered from a
//! cache (the [`Tracker`](super::Tracker) decides when to ask again, from the records' TTLs),
//! turned into an [`Outcome`]: addresses with their TTL, "no such record", or a failure.
//! The system's configuration (`/etc/resolv.conf`) is read again when the file changes, as
//! glibc does: a DHCP client or resolvconf rewrites it when the network hands out another
//! resolver, and one read at start would ask the old one until a restart.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use hickory_resolver::config::{NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{Record, RecordType};
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::proto::ProtoErrorKind;
use hickory_resolver::{Name, TokioResolver};

use super::tracker::{Family, Outcome};

/// The answer records of one lookup → what the tracker learns: the addresses of the family
/// asked for, with the smallest TTL among those records and the CNAMEs that led to them (a
/// name pointed elsewhere is looked up again when its CNAME's TTL runs out, not the
/// provider's day-long A record's), or "no such record" when none is of the family. Sans-io,
/// so that it is tested and fuzzed on parsed responses.
pub fn outcome_of(records: &[Record], family: Family) -> Outcome {
    let kind = match family {
        Family::V4 => RecordType::A,
        Family::V6 => RecordType::AAAA,
    };
    let of_kind: Vec<_> = records.iter().filter(|r| r.record_type() == kind).collect();
    let addrs: Vec<_> = of_kind.iter().filter_map(|r| r.data().ip_addr()).collect();
    if addrs.is_empty() {
        let ttl = of_kind.iter().map(|r| r.ttl()).min().unwrap_or(0);
        return Outcome::NoRecords { ttl: Some(Duration::from_secs(u64::from(ttl))) };
    }
    let chain = records.iter().filter(|r| r.record_type() == kind || r.record_type() == RecordType::CNAME);
    let ttl = Duration::from_secs(u64::from(chain.map(|r| r.ttl()).min().unwrap_or(0)));
    Outcome::Addresses { addrs, ttl }
}

/// Where and how long to ask.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolverSettings {
    /// Resolvers to ask; empty means the system's (`/etc/resolv.conf`).
    pub nameservers: Vec<std::net::SocketAddr>,
    /// Bound on one lookup.
    pub timeout: Duration,
}

/// The resolver could not be set up (unreadable system configuration).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ResolverError(String);

/// A resolver asking the configured servers, or the system's.
pub struct Lookups {
    timeout: Duration,
    /// The resolver, and for the system's configuration the stamp of the file it was read from.
    current: Mutex<(TokioResolver, Option<Stamp>)>,
    /// The system's configuration file, read again when its stamp changes; None with
    /// configured nameservers.
    system: Option<PathBuf>,
}

/// What tells a rewritten (or replaced, or re-linked) file from the one read before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
    device: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp { modified: m.modified().ok(), len: m.len(), inode: m.ino(), device: m.dev() })
}

/// The system's resolver configuration file.
const RESOLV_CONF: &str = "/etc/resolv.conf";

impl std::fmt::Debug for Lookups {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lookups").field("timeout", &self.timeout).finish_non_exhaustive()
    }
}

impl Lookups {
    /// The configured nameservers (UDP, then TCP for truncated answers), or the system's.
    pub fn new(settings: &ResolverSettings) -> Result<Self, ResolverError> {
        Self::with_system_file(settings, Path::new(RESOLV_CONF))
    }

    /// [`Lookups::new`], the system's configuration read from `file`.
    fn with_system_file(settings: &ResolverSettings, file: &Path) -> Result<Self, ResolverError> {
        let system = settings.nameservers.is_empty().then(|| file.to_path_buf());
        let stamp = system.as_deref().and_then(stamp);
        let resolver = Self::build(settings, system.as_deref())?;
        Ok(Self { timeout: settings.timeout, current: Mutex::new((resolver, stamp)), system })
    }

    /// A resolver for `settings`, or for the system's configuration in `system`.
    fn build(settings: &ResolverSettings, system: Option<&Path>) -> Result<TokioResolver, ResolverError> {
        let (config, mut opts) = if let Some(file) = system {
            std::fs::read(file)
                .map_err(|e| e.to_string())
                .and_then(|data| hickory_resolver::system_conf::parse_resolv_conf(data).map_err(|e| e.to_string()))
                .map_err(|e| {
                    ResolverError(format!("reading the system resolver configuration {}: {e}", file.display()))
                })?
        } else {
            let mut config = ResolverConfig::new();
            for ns in &settings.nameservers {
                config.add_name_server(NameServerConfig::new(*ns, Protocol::Udp));
                config.add_name_server(NameServerConfig::new(*ns, Protocol::Tcp));
            }
            let mut opts = ResolverOpts::default();
            // Explicit servers are the whole truth: /etc/hosts does not override them.
            opts.use_hosts_file = ResolveHosts::Never;
            (config, opts)
        };
        opts.timeout = settings.timeout;
        opts.attempts = 1;
        opts.cache_size = 0;
        opts.ndots = 0;
        Ok(TokioResolver::builder_with_config(config, TokioConnectionProvider::default()).with_options(opts).build())
    }

    /// The resolver to ask now: for the system's configuration, built again from the file
    /// when it changed since it was read (one `stat` per lookup; lookups are seconds apart). A
    /// file that cannot be read or parsed now keeps the resolver read before.
    fn resolver(&self) -> TokioResolver {
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(file) = &self.system {
            let now = stamp(file);
            if now != current.1 {
                current.1 = now;
                let settings = ResolverSettings { nameservers: Vec::new(), timeout: self.timeout };
                match Self::build(&settings, Some(file)) {
                    Ok(r) => {
                        tracing::info!(file = %file.display(), "resolver configuration changed; read again");
                        current.0 = r;
                    }
                    Err(e) => tracing::warn!(error = %e, "keeping the resolver configuration read before"),
                }
            }
        }
        current.0.clone()
    }

    /// One lookup of `name` for `family`, bounded by the lookup timeout.
    pub async fn lookup(&self, name: &str, family: Family) -> Outcome {
        // Fully qualified, so no search domain is tried.
        let fqdn = match Name::from_ascii(format!("{name}.")) {
            Ok(n) => n,
            Err(e) => return Outcome::Failed { error: format!("bad name: {e}") },
        };
        let kind = match family {
            Family::V4 => RecordType::A,
            Family::V6 => RecordType::AAAA,
        };
        let resolver = self.resolver();
        // Nothing cached may answer: a name is only looked up again when the tracker says so.
        resolver.clear_cache();
        // hickory bounds each attempt; this outer bound also covers connection set-up.
        let bound = self.timeout.saturating_add(Duration::from_millis(500));
        match tokio::time::timeout(bound, resolver.lookup(fqdn, kind)).await {
            Err(_) => Outcome::Failed { error: format!("timed out after {bound:?}") },
            Ok(Ok(lookup)) => outcome_of(lookup.records(), family),
            Ok(Err(e)) => {
                let negative = e.proto().and_then(|p| match p.kind() {
                    ProtoErrorKind::NoRecordsFound { response_code, negative_ttl, .. }
                        if matches!(*response_code, ResponseCode::NoError | ResponseCode::NXDomain) =>
                    {
                        Some(negative_ttl.map(|t| Duration::from_secs(u64::from(t))))
                    }
                    _ => None,
                });
                match negative {
                    Some(ttl) => Outcome::NoRecords { ttl },
                    None => Outcome::Failed { error: e.to_string() },
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use hickory_resolver::proto::op::{Message, MessageType};
    use hickory_resolver::proto::rr::rdata::A;
    use hickory_resolver::proto::rr::{RData, Record};
    use hickory_resolver::proto::serialize::binary::{BinDecodable, BinEncodable};
    use tokio::net::UdpSocket;

    use super::*;

    /// A resolver on `ip`:53 (the port a resolv.conf names; needs root) answering every A
    /// question with `answer`.
    async fn resolver_on(ip: &str, answer: Ipv4Addr) -> tokio::task::JoinHandle<()> {
        let sock = UdpSocket::bind((ip, 53)).await.expect("binding port 53 (the test runs as root, as CI does)");
        tokio::spawn(async move {
            let mut buf = [0u8; 512];
            loop {
                let Ok((n, from)) = sock.recv_from(&mut buf).await else { continue };
                let Ok(question) = Message::from_bytes(&buf[..n]) else { continue };
                let mut reply = Message::new();
                reply
                    .set_id(question.id())
                    .set_message_type(MessageType::Response)
                    .set_recursion_desired(true)
                    .set_recursion_available(true);
                for q in question.queries() {
                    reply.add_query(q.clone());
                    if q.query_type() == RecordType::A {
                        reply.add_answer(Record::from_rdata(q.name().clone(), 60, RData::A(A(answer))));
                    }
                }
                if let Ok(bytes) = reply.to_bytes() {
                    let _ = sock.send_to(&bytes, from).await;
                }
            }
        })
    }

    /// Addresses reached through a CNAME are due again when the CNAME's TTL runs out, if that
    /// is the shorter.
    #[test]
    fn a_cnames_ttl_bounds_its_addresses() {
        use hickory_resolver::proto::rr::rdata::CNAME;
        let name = |n: &str| Name::from_ascii(n).expect("name");
        let cname =
            Record::from_rdata(name("ingress.example.org."), 300, RData::CNAME(CNAME(name("vm.cloud.example."))));
        let a = Record::from_rdata(name("vm.cloud.example."), 86_400, RData::A(A(Ipv4Addr::new(192, 0, 2, 7))));
        match outcome_of(&[cname.clone(), a.clone()], Family::V4) {
            Outcome::Addresses { addrs, ttl } => {
                assert_eq!(addrs, [IpAddr::from([192, 0, 2, 7])]);
                assert_eq!(ttl, Duration::from_secs(300));
            }
            other => panic!("{other:?}"),
        }
        let Outcome::Addresses { ttl, .. } = outcome_of(&[a], Family::V4) else { panic!("addresses") };
        assert_eq!(ttl, Duration::from_secs(86_400), "no CNAME: the record's own");
        assert!(matches!(outcome_of(&[cname], Family::V4), Outcome::NoRecords { .. }));
    }

    /// The system's configuration is read again once the file changes (here replaced, as DHCP
    /// clients and resolvconf do), and one that cannot be read keeps the resolver read before.
    #[tokio::test]
    async fn a_rewritten_resolv_conf_is_read_again() {
        let one = resolver_on("127.0.0.21", Ipv4Addr::new(192, 0, 2, 21)).await;
        let two = resolver_on("127.0.0.22", Ipv4Addr::new(192, 0, 2, 22)).await;
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("resolv.conf");
        let write = |server: &str| {
            let next = dir.path().join("resolv.conf.new");
            std::fs::write(&next, format!("nameserver {server}\n")).expect("write");
            std::fs::rename(&next, &file).expect("rename");
        };
        write("127.0.0.21");
        let settings = ResolverSettings { nameservers: Vec::new(), timeout: Duration::from_secs(2) };
        let lookups = Lookups::with_system_file(&settings, &file).expect("resolver");
        let addrs = |o: Outcome| match o {
            Outcome::Addresses { addrs, .. } => addrs,
            other => panic!("{other:?}"),
        };
        let at = |last: u8| vec![IpAddr::from([192, 0, 2, last])];
        assert_eq!(addrs(lookups.lookup("a.test", Family::V4).await), at(21));
        write("127.0.0.22");
        assert_eq!(addrs(lookups.lookup("a.test", Family::V4).await), at(22), "the new resolver asked");
        std::fs::remove_file(&file).expect("remove");
        assert_eq!(addrs(lookups.lookup("a.test", Family::V4).await), at(22), "no file: the last one kept");
        one.abort();
        two.abort();
    }
}
