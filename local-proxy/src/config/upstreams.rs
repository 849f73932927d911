//! Upstream sets of sites and streams: one upstream (a string, as before) or several (a list
//! of strings or of `{ url|address, weight, backup }` tables), the balancing policy, the
//! `[*.health]` checks and the `critical` flag. Validated here, each problem under its field.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::time::Duration;

use shared::balance::Policy;
use shared::config_check::Choice;
use shared::ports::{hours, ms, secs, DurationRange, PortRange};

use figment::value::Value;

use super::raw::{Balance, RawHealth, RawUpstream, RawUpstreamEntry, RawUpstreams, StreamCheck};
use super::Problems;

/// Most upstreams in one set (a tried-set is one `u64` bit mask per request).
pub const MAX_UPSTREAMS: usize = 64;
/// Largest weight; canary shares are written as weights (`10` and `90`).
pub const MAX_WEIGHT: u64 = 10_000;

/// `health.interval`, default 5s.
pub const HEALTH_INTERVAL: DurationRange = DurationRange::new(ms(100), hours(1));
/// `health.timeout`, default 2s (never above the interval).
pub const HEALTH_TIMEOUT: DurationRange = DurationRange::new(ms(10), secs(60));

/// Where a site or stream sends, and how.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamSet<T> {
    /// In configured order; at least one is not a backup and has a weight above 0.
    pub members: Vec<Member<T>>,
    pub balance: Policy,
    pub health: Health,
    /// The proxy's own health (what the ingress probes) requires one of these up.
    pub critical: bool,
}

/// One upstream of a set.
#[derive(Debug, Clone, PartialEq)]
pub struct Member<T> {
    pub target: T,
    /// Share of new requests (connections, flows) among the healthy primaries; 0 = none.
    pub weight: u32,
    /// Used only while no primary is up.
    pub backup: bool,
}

/// Active checks and the hysteresis that passive failures share.
#[derive(Debug, Clone, PartialEq)]
pub struct Health {
    pub check: Check,
    pub interval: Duration,
    pub timeout: Duration,
    /// Successful probes that bring a down upstream back.
    pub rise: u32,
    /// Failures in a row that take an upstream down.
    pub fall: u32,
    /// Sites: a 5xx answer counts as a passive failure of the upstream that gave it.
    pub fail_on_5xx: bool,
}

/// What an active check does.
#[derive(Debug, Clone, PartialEq)]
pub enum Check {
    /// No active checks: only real connects (and, opted in, 5xx answers) count.
    None,
    /// `GET path` with `Host: host` (default the site's name) over the upstream's own
    /// scheme and TLS settings; a status in `status` passes.
    Http { path: String, host: Option<String>, status: RangeInclusive<u16> },
    /// A TCP connect to the upstream (its first port for a range).
    Tcp,
    /// `send` as one datagram; any reply (or one starting with `expect`) passes.
    Udp { send: Vec<u8>, expect: Option<Vec<u8>> },
}

/// A stream's upstream: an address and the ports listen ports map to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamTarget {
    pub ip: IpAddr,
    /// Same length as the stream's listen range (or one port for a single listen port).
    pub ports: PortRange,
}

impl StreamTarget {
    /// The address a connection that arrived on `listen_port` of `listen` goes to.
    pub fn addr(&self, listen: PortRange, listen_port: u16) -> SocketAddr {
        let port = if listen.first == 0 {
            // Port 0 means "ephemeral" (tests): there is no range to map, use the upstream port.
            self.ports.first
        } else {
            self.ports.first.saturating_add(listen_port.saturating_sub(listen.first))
        };
        SocketAddr::new(self.ip, port)
    }
}

impl fmt::Display for StreamTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.ip {
            IpAddr::V4(ip) => write!(f, "{ip}:{}", self.ports),
            IpAddr::V6(ip) => write!(f, "[{ip}]:{}", self.ports),
        }
    }
}

/// Whether the config is for a site (URLs) or a stream (addresses) of one protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Site,
    TcpStream,
    UdpStream,
}

/// Everything a set is built from, as written.
pub(crate) struct RawSet<'a> {
    /// `site[2]` or `stream[0]`.
    pub prefix: String,
    pub kind: Kind,
    pub upstream: Option<&'a Value>,
    pub balance: Option<&'a Choice<Balance>>,
    pub health: Option<&'a RawHealth>,
    pub critical: Option<bool>,
}

/// Validate a set; `parse` turns one upstream string into its target.
pub(crate) fn validate<T: PartialEq + Clone>(
    errors: &mut Problems,
    raw: RawSet<'_>,
    mut parse: impl FnMut(&str) -> Result<T, String>,
) -> Option<UpstreamSet<T>> {
    let before = errors.len();
    let mut err = |field: String, message: String| errors.push(field, message);
    let f = |name: &str| format!("{}.{name}", raw.prefix);
    let key = if raw.kind == Kind::Site { "url" } else { "address" };

    let mut members: Vec<Member<T>> = Vec::new();
    let written = raw.upstream.map(|v| read(&mut err, &f("upstream"), v));
    match written.as_ref().and_then(Option::as_ref) {
        None if written.is_none() => err(f("upstream"), "is required".into()),
        None => {}
        Some(RawUpstreams::One(s)) => match parse(s.as_str()) {
            Ok(target) => members.push(Member { target, weight: 1, backup: false }),
            Err(e) => err(f("upstream"), e),
        },
        Some(RawUpstreams::Many(list)) => {
            if list.is_empty() {
                err(f("upstream"), "is an empty list: give at least one upstream".into());
            }
            if list.len() > MAX_UPSTREAMS {
                err(f("upstream"), format!("has {} upstreams; at most {MAX_UPSTREAMS}", list.len()));
            }
            for (j, entry) in list.iter().enumerate() {
                let at = f(&format!("upstream[{j}]"));
                let Some(entry) = entry else { continue };
                let (text, table) = match entry {
                    RawUpstreamEntry::Plain(s) => (Some(s.as_str()), &RawUpstream::default()),
                    RawUpstreamEntry::Table(t) => {
                        let (mine, other, other_key) = match raw.kind {
                            Kind::Site => (&t.url, &t.address, "address"),
                            _ => (&t.address, &t.url, "url"),
                        };
                        if other.is_some() {
                            err(format!("{at}.{other_key}"), format!("is not a field here: this set takes `{key}`"));
                        }
                        if mine.is_none() {
                            err(format!("{at}.{key}"), "is required".into());
                        }
                        (mine.as_deref(), t)
                    }
                };
                let weight = table.weight.unwrap_or(1);
                if weight > MAX_WEIGHT {
                    err(format!("{at}.weight"), format!("{weight} is out of range 0..={MAX_WEIGHT}"));
                }
                let Some(text) = text else { continue };
                let field = if matches!(entry, RawUpstreamEntry::Table(_)) { format!("{at}.{key}") } else { at };
                match parse(text) {
                    Ok(target) => {
                        if let Some(k) = members.iter().position(|m| m.target == target) {
                            err(field, format!("`{text}` duplicates upstream[{k}]"));
                            continue;
                        }
                        members.push(Member {
                            target,
                            weight: weight.min(MAX_WEIGHT) as u32,
                            backup: table.backup.unwrap_or(false),
                        });
                    }
                    Err(e) => err(field, e),
                }
            }
            // The set-wide checks only make sense once every entry parsed.
            if !members.is_empty() && members.len() == list.len() {
                if members.iter().all(|m| m.backup) {
                    err(f("upstream"), "every upstream is a backup: at least one must be a primary".into());
                } else if members.iter().filter(|m| !m.backup).all(|m| m.weight == 0) {
                    err(f("upstream"), "every primary upstream has weight 0: nothing would be served".into());
                }
            }
        }
    }

    let balance = match raw.balance.map(Choice::known) {
        None => Policy::RoundRobin,
        Some(Ok(b)) => b.into(),
        Some(Err(e)) => {
            err(f("balance"), e);
            Policy::RoundRobin
        }
    };
    let health =
        health(&mut err, &f("health"), raw.kind, raw.health.unwrap_or(&RawHealth::default()), raw.health.is_some());
    (errors.len() == before).then(|| UpstreamSet { members, balance, health, critical: raw.critical.unwrap_or(false) })
}

/// `upstream` as written: a string, or a list whose entries are strings or tables (an entry
/// that is neither, or a table with an unknown key, is reported and left out as `None`).
fn read(err: &mut impl FnMut(String, String), field: &str, value: &Value) -> Option<RawUpstreams> {
    match value {
        Value::String(_, s) => Some(RawUpstreams::One(s.clone())),
        Value::Array(_, items) => Some(RawUpstreams::Many(
            items
                .iter()
                .enumerate()
                .map(|(j, item)| match item {
                    Value::String(_, s) => Some(RawUpstreamEntry::Plain(s.clone())),
                    Value::Dict(..) => match item.deserialize::<RawUpstream>() {
                        Ok(t) => Some(RawUpstreamEntry::Table(t)),
                        Err(e) => {
                            err(format!("{field}[{j}]"), e.to_string());
                            None
                        }
                    },
                    _ => {
                        err(format!("{field}[{j}]"), "expected a string or a table".into());
                        None
                    }
                })
                .collect(),
        )),
        _ => {
            err(field.into(), "expected a string, or a list of strings or tables".into());
            None
        }
    }
}

fn health(err: &mut impl FnMut(String, String), prefix: &str, kind: Kind, h: &RawHealth, present: bool) -> Health {
    let f = |name: &str| format!("{prefix}.{name}");
    let mut not_here = |name: &str, set: bool, what: &str| {
        if set {
            err(f(name), format!("only applies to {what}"));
        }
    };
    let site = kind == Kind::Site;
    not_here("path", !site && h.path.is_some(), "sites");
    not_here("status", !site && h.status.is_some(), "sites");
    not_here("host", !site && h.host.is_some(), "sites");
    not_here("fail_on_5xx", !site && h.fail_on_5xx.is_some(), "sites");
    not_here("check", site && h.check.is_some(), "streams (sites are checked over HTTP when path is set)");
    not_here("send", kind != Kind::UdpStream && h.send.is_some(), "udp streams");
    not_here("expect", kind != Kind::UdpStream && h.expect.is_some(), "udp streams");
    if kind == Kind::UdpStream && h.expect.is_some() && h.send.is_none() {
        err(f("expect"), "needs send: the probe datagram whose answer it matches".into());
    }

    let check = match kind {
        Kind::Site => match &h.path {
            None => {
                if h.status.is_some() || h.host.is_some() {
                    err(f("path"), "is required for HTTP checks (status and host are set)".into());
                }
                Check::None
            }
            Some(p) => {
                // The probe's URI is built from it: one that does not parse has no check.
                if let Some(problem) = shared::health::check_path_problem(p) {
                    err(f("path"), problem);
                }
                if let Some(problem) = h.host.as_deref().and_then(shared::health::check_host_problem) {
                    err(f("host"), problem);
                }
                let status = match h.status.as_deref().unwrap_or("200-399").parse::<PortRange>() {
                    Ok(r) if r.first >= 100 && r.last <= 599 => r.first..=r.last,
                    _ => {
                        err(f("status"), "expected a status code or range within 100-599, like \"200-399\"".into());
                        200..=399
                    }
                };
                Check::Http { path: p.clone(), host: h.host.clone(), status }
            }
        },
        Kind::TcpStream | Kind::UdpStream => {
            let default = match (kind, present) {
                (_, false) => StreamCheck::None,
                (Kind::TcpStream, true) => StreamCheck::Tcp,
                _ if h.send.is_some() => StreamCheck::Udp,
                _ => StreamCheck::None,
            };
            let given = match h.check.as_ref().map(Choice::known) {
                None => Ok(default),
                Some(Ok(c)) => Ok(c),
                Some(Err(e)) => Err(e),
            };
            match (given, kind) {
                (Ok(StreamCheck::None), _) => Check::None,
                (Ok(StreamCheck::Tcp), Kind::TcpStream) => Check::Tcp,
                (Ok(StreamCheck::Udp), Kind::UdpStream) => match &h.send {
                    Some(send) if !send.is_empty() => Check::Udp {
                        send: send.as_bytes().to_vec(),
                        expect: h.expect.as_ref().map(|e| e.as_bytes().to_vec()),
                    },
                    _ => {
                        err(f("send"), "is required for udp checks (the probe datagram)".into());
                        Check::None
                    }
                },
                (Err(e), _) => {
                    err(f("check"), e);
                    Check::None
                }
                (Ok(_), _) => {
                    let (given, want) = if kind == Kind::TcpStream { ("udp", "tcp") } else { ("tcp", "udp") };
                    err(f("check"), format!("`{given}` is for {given} streams: this one takes {want} or none"));
                    Check::None
                }
            }
        }
    };
    let mut dur = |name: &str, value: &Option<String>, default: &str, range: DurationRange| match range
        .parse(value.as_deref().unwrap_or(default))
    {
        Ok(d) => d,
        Err(e) => {
            err(f(name), e);
            range.min
        }
    };
    let interval = dur("interval", &h.interval, "5s", HEALTH_INTERVAL);
    let timeout = dur("timeout", &h.timeout, "2s", HEALTH_TIMEOUT);
    if h.timeout.is_some() && timeout > interval {
        err(f("timeout"), format!("must not exceed the interval ({})", humantime::format_duration(interval)));
    }
    let mut count = |name: &str, value: Option<u64>, default: u64| match value.unwrap_or(default) {
        v @ 1..=100 => v as u32,
        v => {
            err(f(name), format!("{v} is out of range 1..=100"));
            default as u32
        }
    };
    let rise = count("rise", h.rise, 2);
    let fall = count("fall", h.fall, 3);
    Health {
        check,
        // With the default interval and a short configured one, keep the timeout inside it.
        timeout: timeout.min(interval),
        interval,
        rise,
        fall,
        fail_on_5xx: h.fail_on_5xx.unwrap_or(false),
    }
}
