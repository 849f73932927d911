//! The `[firewall]` config section: the raw serde form (read by `config::raw`) and its validated
//! [`Settings`], checked field by field so every problem is reported at once under its name.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;
use shared::ports::{days, hours, parse_host_port, parse_ip, secs, DurationRange, PortRange};

use crate::config::{Http, Problems, Protocol, Stream};

/// Default nftables table name (family `inet`).
pub const DEFAULT_TABLE: &str = "local_proxy";

/// `[firewall]` as written. The section's presence turns the firewall on (unless `enabled = false`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFirewall {
    pub enabled: Option<bool>,
    pub ingress_names: Option<Vec<String>>,
    pub static_addresses: Option<Vec<String>>,
    pub interfaces: Option<Vec<String>>,
    pub protect_ports: Option<Vec<RawPort>>,
    pub nameservers: Option<Vec<String>>,
    pub min_refresh: Option<String>,
    pub max_refresh: Option<String>,
    pub lookup_timeout: Option<String>,
    pub on_no_answer: Option<shared::config_check::Choice<OnNoAnswer>>,
    pub table: Option<String>,
    pub priority: Option<i32>,
    pub remove_on_exit: Option<bool>,
    pub saved_max_age: Option<String>,
}

/// A `protect_ports` entry: `443` or `"443"`, `"443/tcp"`, `"49160-49200/udp"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RawPort {
    Number(i64),
    Text(String),
}

/// What the firewall does before any DNS answer has arrived (start-up with DNS down): only
/// static addresses pass (`Closed`, default), or the protected ports stay open to everybody
/// until the first answer, with a warning (`Open`).
pub use shared::dns::OnNoAnswer;

/// One protected port or port range for one transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortRule {
    pub protocol: Proto,
    pub ports: (u16, u16),
}

/// Transport of a [`PortRule`] (ordered, unlike `config::Protocol`, so rules sort stably).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    /// The IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Proto::Tcp => 6,
            Proto::Udp => 17,
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

impl PortRule {
    pub fn range(&self) -> PortRange {
        PortRange { first: self.ports.0, last: self.ports.1 }
    }
}

impl fmt::Display for PortRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.range(), self.protocol)
    }
}

/// Validated `[firewall]` settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// DNS names of the ingress nodes, lower case, without a trailing dot.
    pub ingress_names: Vec<String>,
    /// Always allowed: `firewall.static_addresses` (addresses and CIDR prefixes; a single
    /// address is a full-length prefix) plus `wan.trusted_ingress`.
    pub static_addresses: BTreeSet<IpNet>,
    /// WAN-side interfaces the chain filters (a trailing `*` matches a prefix).
    pub interfaces: Vec<String>,
    /// Ports closed to everyone but the allowlist on those interfaces.
    pub ports: Vec<PortRule>,
    /// Resolvers to ask; empty means the system's (`/etc/resolv.conf`).
    pub nameservers: Vec<SocketAddr>,
    /// Lower bound on the time between two lookups of a name (TTL 0 does not hammer DNS).
    pub min_refresh: Duration,
    /// Upper bound: a name is looked up at least this often whatever its TTL.
    pub max_refresh: Duration,
    /// Bound on one lookup.
    pub lookup_timeout: Duration,
    pub on_no_answer: OnNoAnswer,
    /// nftables table name (family `inet`).
    pub table: String,
    /// Priority of the input hook.
    pub priority: i32,
    /// Delete the table on shutdown instead of leaving it (closed) in place.
    pub remove_on_exit: bool,
    /// A start after a reboot carries the saved allowlist only if a running proxy kept it
    /// within this long.
    pub saved_max_age: Duration,
}

fn err(errors: &mut Problems, field: &str, message: impl Into<String>) {
    errors.push(format!("firewall.{field}"), message);
}

fn duration(
    errors: &mut Problems,
    field: &str,
    value: Option<&str>,
    default: Duration,
    range: DurationRange,
) -> Duration {
    errors.duration(&format!("firewall.{field}"), value, default, range)
}

/// An interface name as the kernel allows it (at most 15 bytes), with an optional trailing `*`.
fn interface_ok(name: &str) -> bool {
    let bare = name.strip_suffix('*').unwrap_or(name);
    !bare.is_empty()
        && name.len() <= 15
        && bare.bytes().all(|b| b.is_ascii_graphic() && b != b'/' && b != b'*' && b != b'"')
}

/// A `static_addresses` entry: an address (`203.0.113.9`, `[2001:db8::9]`) or a CIDR prefix
/// (`192.0.2.0/24`, `2001:db8::/48`) whose host bits are zero (a typo such as `192.0.2.9/24`
/// is refused rather than silently widened).
fn static_entry(text: &str) -> Result<IpNet, String> {
    let text = text.trim();
    let Some((addr, _)) = text.split_once('/') else {
        return parse_ip(text).map(|ip| IpNet::from(ip.to_canonical()));
    };
    let net: IpNet = text
        .parse()
        .map_err(|_| format!("`{text}` is not an address or a CIDR prefix (ADDRESS/LENGTH, length 0-32 or 0-128)"))?;
    if net.trunc() != net {
        return Err(format!("`{text}`: host bits are set after /{}; the prefix is {}", net.prefix_len(), net.trunc()));
    }
    if addr.parse::<std::net::Ipv6Addr>().is_ok_and(|a| a.to_ipv4_mapped().is_some()) {
        return Err(format!("`{text}`: write an IPv4-mapped prefix in its IPv4 form"));
    }
    Ok(net)
}

fn port_entry(raw: &RawPort) -> Result<Vec<PortRule>, String> {
    let text = match raw {
        RawPort::Number(n) => n.to_string(),
        RawPort::Text(s) => s.trim().to_string(),
    };
    let (ports, protos): (&str, &[Proto]) = match text.rsplit_once('/') {
        Some((p, "tcp")) => (p, &[Proto::Tcp]),
        Some((p, "udp")) => (p, &[Proto::Udp]),
        Some((_, other)) => return Err(format!("`{text}`: unknown protocol `{other}` (tcp or udp)")),
        None => (text.as_str(), &[Proto::Tcp, Proto::Udp]),
    };
    let range: PortRange =
        ports.parse().map_err(|e| format!("{e}; expected PORT, FIRST-LAST, optionally /tcp or /udp"))?;
    if range.first == 0 {
        return Err(format!("`{text}`: port 0 cannot be protected"));
    }
    Ok(protos.iter().map(|&protocol| PortRule { protocol, ports: (range.first, range.last) }).collect())
}

/// The ports the proxy itself listens on: the default for `protect_ports`.
fn own_ports(http: &Http, streams: &[Stream]) -> Vec<PortRule> {
    let mut out = Vec::new();
    for port in [http.https_port, http.http_port] {
        if port != 0 {
            out.push(PortRule { protocol: Proto::Tcp, ports: (port, port) });
        }
    }
    for s in streams.iter().filter(|s| s.listen_ports.first != 0) {
        let protocol = match s.protocol {
            Protocol::Tcp => Proto::Tcp,
            Protocol::Udp => Proto::Udp,
        };
        out.push(PortRule { protocol, ports: (s.listen_ports.first, s.listen_ports.last) });
    }
    out
}

/// Validate `[firewall]`; `None` when absent or disabled. Problems go to `errors`.
pub fn validate(
    raw: Option<&RawFirewall>,
    trusted_ingress: &[IpAddr],
    http: &Http,
    streams: &[Stream],
    errors: &mut Problems,
) -> Option<Settings> {
    let raw = raw?;
    // `enabled = false` keeps the section for later: what it sets is checked all the same (a
    // mistake would otherwise wait for the day it is turned back on), what it lacks is not.
    let on = raw.enabled != Some(false);
    let e = errors;
    let mut ingress_names = Vec::new();
    for (i, n) in raw.ingress_names.iter().flatten().enumerate() {
        match shared::dns::parse_name(n) {
            Some(n) if ingress_names.contains(&n) => {
                err(e, &format!("ingress_names[{i}]"), format!("`{n}` is listed twice"))
            }
            Some(n) => ingress_names.push(n),
            None => err(e, &format!("ingress_names[{i}]"), format!("`{n}` is not a DNS name")),
        }
    }
    let mut static_addresses: BTreeSet<IpNet> = trusted_ingress.iter().map(|a| IpNet::from(a.to_canonical())).collect();
    for (i, a) in raw.static_addresses.iter().flatten().enumerate() {
        match static_entry(a) {
            Ok(net) => {
                static_addresses.insert(net);
            }
            Err(m) => err(e, &format!("static_addresses[{i}]"), m),
        }
    }
    if on && ingress_names.is_empty() && static_addresses.is_empty() {
        err(
            e,
            "ingress_names",
            "no ingress names, no static addresses and no wan.trusted_ingress: every protected port would be closed to all",
        );
    }
    let interfaces: Vec<String> = raw.interfaces.clone().unwrap_or_default();
    if on && interfaces.is_empty() {
        err(e, "interfaces", "is required: the WAN-side interfaces to filter (never the yggdrasil one)");
    }
    for (i, name) in interfaces.iter().enumerate() {
        if !interface_ok(name) {
            err(
                e,
                &format!("interfaces[{i}]"),
                format!("`{name}` is not an interface name (1-15 characters, optional trailing *)"),
            );
        }
    }
    let mut ports: BTreeSet<PortRule> = BTreeSet::new();
    match &raw.protect_ports {
        None => ports.extend(own_ports(http, streams)),
        Some(list) => {
            for (i, p) in list.iter().enumerate() {
                match port_entry(p) {
                    Ok(rules) => ports.extend(rules),
                    Err(m) => err(e, &format!("protect_ports[{i}]"), m),
                }
            }
        }
    }
    if on && ports.is_empty() {
        err(e, "protect_ports", "no port to protect");
    }
    let mut nameservers = Vec::new();
    for (i, ns) in raw.nameservers.iter().flatten().enumerate() {
        match parse_host_port(ns) {
            Ok((ip, port)) => nameservers.push(SocketAddr::new(ip, port.unwrap_or(53))),
            Err(m) => err(e, &format!("nameservers[{i}]"), m),
        }
    }
    use crate::config::ranges::{LOOKUP_TIMEOUT, MAX_REFRESH, MIN_REFRESH, SAVED_MAX_AGE};
    let min_refresh = duration(e, "min_refresh", raw.min_refresh.as_deref(), secs(10), MIN_REFRESH);
    let max_refresh = duration(e, "max_refresh", raw.max_refresh.as_deref(), hours(1), MAX_REFRESH);
    if min_refresh > max_refresh {
        err(e, "max_refresh", "must not be below min_refresh");
    }
    let lookup_timeout = duration(e, "lookup_timeout", raw.lookup_timeout.as_deref(), secs(5), LOOKUP_TIMEOUT);
    let saved_max_age = duration(e, "saved_max_age", raw.saved_max_age.as_deref(), days(30), SAVED_MAX_AGE);
    let on_no_answer = e.choice("firewall.on_no_answer", raw.on_no_answer.as_ref(), OnNoAnswer::Closed);
    let table = raw.table.clone().unwrap_or_else(|| DEFAULT_TABLE.to_string());
    if table.is_empty()
        || table.len() > 64
        || !table.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        err(e, "table", format!("`{table}`: 1-64 letters, digits, _ and -"));
    }
    if !on {
        return None;
    }
    Some(Settings {
        ingress_names,
        static_addresses,
        interfaces,
        ports: ports.into_iter().collect(),
        nameservers,
        min_refresh,
        max_refresh,
        lookup_timeout,
        on_no_answer,
        table,
        priority: raw.priority.unwrap_or(0),
        remove_on_exit: raw.remove_on_exit.unwrap_or(false),
        saved_max_age,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use crate::config::{self, ConfigError};

    use super::*;

    fn load(text: &str) -> Result<Option<Settings>, Problems> {
        match config::from_toml_str(text) {
            Ok(c) => Ok(c.firewall),
            Err(ConfigError::Invalid(errs)) => Err(errs),
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn absent_or_disabled_is_none() {
        assert_eq!(load("").unwrap(), None);
        assert_eq!(load("[firewall]\nenabled = false\n").unwrap(), None);
    }

    #[test]
    fn defaults_and_own_ports() {
        let s = load(
            r#"
            [wan]
            trusted_ingress = ["203.0.113.50"]
            [firewall]
            ingress_names = ["Ingress-1.Example.org."]
            interfaces = ["wan1", "ppp*"]
            [[stream]]
            name = "relay"
            listen = "49160-49200/udp"
            upstream = "192.168.1.40"
            "#,
        )
        .unwrap()
        .unwrap();
        assert_eq!(s.ingress_names, vec!["ingress-1.example.org"]);
        assert!(s.static_addresses.contains(&"203.0.113.50/32".parse().unwrap()));
        assert_eq!(s.table, DEFAULT_TABLE);
        assert_eq!(s.on_no_answer, OnNoAnswer::Closed);
        assert_eq!((s.min_refresh, s.max_refresh), (Duration::from_secs(10), Duration::from_secs(3600)));
        assert_eq!(s.saved_max_age, Duration::from_secs(30 * 86_400));
        let ports: Vec<String> = s.ports.iter().map(|p| p.to_string()).collect();
        assert_eq!(ports, vec!["80/tcp", "443/tcp", "49160-49200/udp"]);
        assert!(s.nameservers.is_empty() && !s.remove_on_exit);
    }

    #[test]
    fn explicit_ports_and_nameservers() {
        let s = load(
            r#"
            [firewall]
            static_addresses = ["2001:db8::5"]
            interfaces = ["eth0"]
            protect_ports = [443, "1514/udp", "49160-49200", "55000/tcp"]
            nameservers = ["192.0.2.53", "[2001:db8::53]:5353"]
            on_no_answer = "open"
            "#,
        )
        .unwrap()
        .unwrap();
        let ports: Vec<String> = s.ports.iter().map(|p| p.to_string()).collect();
        assert_eq!(ports, vec!["443/tcp", "49160-49200/tcp", "55000/tcp", "443/udp", "1514/udp", "49160-49200/udp"]);
        assert_eq!(s.nameservers[0], "192.0.2.53:53".parse().unwrap());
        assert_eq!(s.nameservers[1], "[2001:db8::53]:5353".parse().unwrap());
        assert_eq!(s.on_no_answer, OnNoAnswer::Open);
    }

    #[test]
    fn every_problem_is_named() {
        let errs = load(
            r#"
            [firewall]
            ingress_names = ["bad name"]
            interfaces = ["much-too-long-interface"]
            protect_ports = ["80/sctp", 0, "9-3"]
            nameservers = ["nowhere"]
            min_refresh = "2h"
            on_no_answer = "maybe"
            saved_max_age = "12h"
            table = "no spaces"
            "#,
        )
        .unwrap_err();
        let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
        for f in [
            "firewall.ingress_names[0]",
            "firewall.interfaces[0]",
            "firewall.protect_ports[0]",
            "firewall.protect_ports[1]",
            "firewall.protect_ports[2]",
            "firewall.nameservers[0]",
            "firewall.max_refresh",
            "firewall.on_no_answer",
            "firewall.table",
            "firewall.saved_max_age",
        ] {
            assert!(fields.contains(&f), "{f} missing from {fields:?}");
        }
    }

    #[test]
    fn static_addresses_and_prefixes() {
        let s = load(
            r#"
            [wan]
            trusted_ingress = ["203.0.113.50"]
            [firewall]
            static_addresses = ["192.0.2.0/24", "2001:db8::/48", "[2001:db8:1::9]", "::ffff:198.51.100.9", "0.0.0.0/0"]
            interfaces = ["eth0"]
            protect_ports = [443]
            "#,
        )
        .unwrap()
        .unwrap();
        let got: Vec<String> = s.static_addresses.iter().map(|n| n.to_string()).collect();
        assert_eq!(
            got,
            vec![
                "0.0.0.0/0",
                "192.0.2.0/24",
                "198.51.100.9/32",
                "203.0.113.50/32",
                "2001:db8::/48",
                "2001:db8:1::9/128"
            ]
        );
        let errs = load(
            r#"
            [firewall]
            static_addresses = ["192.0.2.9/24", "192.0.2.0/33", "2001:db8::/129", "::ffff:192.0.2.0/120", "192.0.2.0/", "nonsense/8"]
            interfaces = ["eth0"]
            "#,
        )
        .unwrap_err();
        let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
        for i in 0..6 {
            let f = format!("firewall.static_addresses[{i}]");
            assert!(fields.contains(&f.as_str()), "{f} missing from {errs:?}");
        }
        let host_bits = errs.iter().find(|e| e.field == "firewall.static_addresses[0]").unwrap();
        assert!(host_bits.message.contains("192.0.2.0/24"), "{}", host_bits.message);
    }

    #[test]
    fn needs_interfaces_and_someone_to_allow() {
        let errs = load("[firewall]\n").unwrap_err();
        let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
        assert!(fields.contains(&"firewall.interfaces") && fields.contains(&"firewall.ingress_names"), "{fields:?}");
    }
}
