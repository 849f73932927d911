//! DNS lookups with `hickory-resolver`: one A or AAAA query per call, never answered from a
//! cache (the [`Tracker`](super::Tracker) decides when to ask again, from the records' TTLs),
//! turned into an [`Outcome`]: addresses with their TTL, "no such record", or a failure.

use std::time::Duration;

use hickory_resolver::config::{NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{Record, RecordType};
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::proto::ProtoErrorKind;
use hickory_resolver::{Name, TokioResolver};

use super::tracker::{Family, Outcome};

/// The answer records of one lookup → what the tracker learns: the addresses of the family
/// asked for, with the smallest TTL among those records, or "no such record" (with that TTL)
/// when none is of the family. Sans-io, so that it is tested and fuzzed on parsed responses.
pub fn outcome_of(records: &[Record], family: Family) -> Outcome {
    let kind = match family {
        Family::V4 => RecordType::A,
        Family::V6 => RecordType::AAAA,
    };
    let records: Vec<_> = records.iter().filter(|r| r.record_type() == kind).collect();
    let addrs: Vec<_> = records.iter().filter_map(|r| r.data().ip_addr()).collect();
    let ttl = Duration::from_secs(u64::from(records.iter().map(|r| r.ttl()).min().unwrap_or(0)));
    if addrs.is_empty() {
        Outcome::NoRecords { ttl: Some(ttl) }
    } else {
        Outcome::Addresses { addrs, ttl }
    }
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
    resolver: TokioResolver,
    timeout: Duration,
}

impl std::fmt::Debug for Lookups {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lookups").field("timeout", &self.timeout).finish_non_exhaustive()
    }
}

impl Lookups {
    /// The configured nameservers (UDP, then TCP for truncated answers), or the system's.
    pub fn new(settings: &ResolverSettings) -> Result<Self, ResolverError> {
        let (config, mut opts) = if settings.nameservers.is_empty() {
            hickory_resolver::system_conf::read_system_conf()
                .map_err(|e| ResolverError(format!("reading the system resolver configuration: {e}")))?
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
        let resolver =
            TokioResolver::builder_with_config(config, TokioConnectionProvider::default()).with_options(opts).build();
        Ok(Self { resolver, timeout: settings.timeout })
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
        // Nothing cached may answer: a name is only looked up again when the tracker says so.
        self.resolver.clear_cache();
        // hickory bounds each attempt; this outer bound also covers connection set-up.
        let bound = self.timeout.saturating_add(Duration::from_millis(500));
        match tokio::time::timeout(bound, self.resolver.lookup(fqdn, kind)).await {
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
