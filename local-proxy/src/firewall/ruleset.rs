//! The table as data (sans-io): [`build`] turns settings and an allowlist into the table we
//! want; the kernel read-back (`readback`) decodes into the same types, so the two compare
//! with `==` and print the same nft-like listing.
//!
//! Shape (family `inet`): interval sets `allow4`/`allow6` holding prefixes (an address is a
//! full-length prefix; a prefix inside another is left out, since the kernel refuses
//! overlapping intervals); base chain `input` (filter, hook input,
//! policy accept) that jumps to `wan` for packets arriving on the WAN-side interfaces only, so
//! the yggdrasil interface and everything else is untouched; `wan` accepts established/related
//! and the allowlisted sources, then drops the protected ports (no drops while open).

use std::collections::BTreeSet;
use std::fmt;

use ipnet::IpNet;

use super::settings::{PortRule, Settings};
use super::tracker::{Allowlist, Family};

pub const SET4: &str = "allow4";
pub const SET6: &str = "allow6";
pub const BASE_CHAIN: &str = "input";
pub const WAN_CHAIN: &str = "wan";

/// `NF_INET_LOCAL_IN`.
pub const HOOK_INPUT: u32 = 1;
/// `NFPROTO_IPV4` / `NFPROTO_IPV6` as `meta nfproto` loads them.
pub const NFPROTO_IPV4: u8 = 2;
pub const NFPROTO_IPV6: u8 = 10;
/// Conntrack state bits (`ct state`).
pub const CT_ESTABLISHED: u32 = 2;
pub const CT_RELATED: u32 = 4;

/// A verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    Drop,
    Return,
    Continue,
    Jump(String),
    Goto(String),
}

/// One statement of a rule, as this module writes them and as the read-back decodes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stmt {
    /// `iifname "wan1"`; a trailing `*` matches a prefix.
    IifName(String),
    /// `ct state` has any of these bits.
    CtState(u32),
    /// `meta nfproto ipv4|ipv6` (the guard before reading an address from the network header).
    NfProto(u8),
    /// `ip saddr @set` / `ip6 saddr @set`.
    SaddrIn(Family, String),
    /// `meta l4proto tcp|udp`.
    L4Proto(u8),
    /// `th dport FIRST[-LAST]`.
    Dport(u16, u16),
    Verdict(Verdict),
    /// Anything the read-back could not decode, shown raw.
    Other(String),
}

/// A rule: statements in order, in a chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleSpec {
    pub chain: String,
    pub stmts: Vec<Stmt>,
}

/// A base chain's hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookSpec {
    pub kind: String,
    pub hook: u32,
    pub priority: i32,
    /// `true` = accept.
    pub policy_accept: bool,
}

/// A chain; `hook` is `None` for a regular chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainSpec {
    pub name: String,
    pub hook: Option<HookSpec>,
}

/// A named interval set of addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetSpec {
    pub name: String,
    pub family: Family,
    /// Disjoint prefixes (none inside another).
    pub elements: BTreeSet<IpNet>,
}

/// `prefixes` of `family` without those inside another (`192.0.2.11` goes when
/// `192.0.2.0/24` is there), host bits cleared.
pub fn disjoint(prefixes: impl IntoIterator<Item = IpNet>, family: Family) -> BTreeSet<IpNet> {
    let mut all: Vec<IpNet> = prefixes.into_iter().map(|n| n.trunc()).filter(|n| family.matches(&n.addr())).collect();
    // Shortest prefixes first: each one kept is checked against the wider ones before it.
    all.sort_by_key(|n| (n.prefix_len(), *n));
    let mut kept: Vec<IpNet> = Vec::new();
    for n in all {
        if !kept.iter().any(|k| k.contains(&n)) {
            kept.push(n);
        }
    }
    kept.into_iter().collect()
}

/// An element as nft lists it: an address alone, a shorter prefix as `ADDR/LEN`.
pub fn element_text(n: &IpNet) -> String {
    if n.prefix_len() == n.max_prefix_len() {
        n.addr().to_string()
    } else {
        n.to_string()
    }
}

/// A whole `inet` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSpec {
    pub name: String,
    pub sets: Vec<SetSpec>,
    pub chains: Vec<ChainSpec>,
    pub rules: Vec<RuleSpec>,
}

impl TableSpec {
    /// The allowlisted addresses and prefixes (both sets).
    pub fn allowed(&self) -> BTreeSet<IpNet> {
        self.sets.iter().flat_map(|s| s.elements.iter().copied()).collect()
    }

    /// Whether the `wan` chain drops anything (false while open).
    pub fn enforcing(&self) -> bool {
        self.rules.iter().any(|r| r.chain == WAN_CHAIN && r.stmts.last() == Some(&Stmt::Verdict(Verdict::Drop)))
    }
}

fn port_rule(p: &PortRule) -> RuleSpec {
    let (first, last) = p.ports;
    RuleSpec {
        chain: WAN_CHAIN.into(),
        stmts: vec![Stmt::L4Proto(p.protocol.number()), Stmt::Dport(first, last), Stmt::Verdict(Verdict::Drop)],
    }
}

/// The table for `settings` holding `allow` and, unless open, the static addresses.
pub fn build(settings: &Settings, allow: &Allowlist) -> TableSpec {
    build_with(settings, allow, &BTreeSet::new())
}

/// [`build`] with `extra` entries too unless open (the previous run's list, carried over).
pub fn build_with(settings: &Settings, allow: &Allowlist, extra: &BTreeSet<IpNet>) -> TableSpec {
    let mut all: BTreeSet<IpNet> = allow.addresses().into_iter().map(IpNet::from).collect();
    if matches!(allow, Allowlist::Only(_)) {
        all.extend(settings.static_addresses.iter().copied());
        all.extend(extra.iter().copied());
    }
    let set = |name: &str, family: Family| SetSpec {
        name: name.into(),
        family,
        elements: disjoint(all.iter().copied(), family),
    };
    let mut rules: Vec<RuleSpec> = settings
        .interfaces
        .iter()
        .map(|i| RuleSpec {
            chain: BASE_CHAIN.into(),
            stmts: vec![Stmt::IifName(i.clone()), Stmt::Verdict(Verdict::Jump(WAN_CHAIN.into()))],
        })
        .collect();
    let wan = |stmts: Vec<Stmt>| RuleSpec { chain: WAN_CHAIN.into(), stmts };
    rules.push(wan(vec![Stmt::CtState(CT_ESTABLISHED | CT_RELATED), Stmt::Verdict(Verdict::Accept)]));
    rules.push(wan(vec![
        Stmt::NfProto(NFPROTO_IPV4),
        Stmt::SaddrIn(Family::V4, SET4.into()),
        Stmt::Verdict(Verdict::Accept),
    ]));
    rules.push(wan(vec![
        Stmt::NfProto(NFPROTO_IPV6),
        Stmt::SaddrIn(Family::V6, SET6.into()),
        Stmt::Verdict(Verdict::Accept),
    ]));
    if matches!(allow, Allowlist::Only(_)) {
        rules.extend(settings.ports.iter().map(port_rule));
    }
    TableSpec {
        name: settings.table.clone(),
        sets: vec![set(SET4, Family::V4), set(SET6, Family::V6)],
        chains: vec![
            ChainSpec {
                name: BASE_CHAIN.into(),
                hook: Some(HookSpec {
                    kind: "filter".into(),
                    hook: HOOK_INPUT,
                    priority: settings.priority,
                    policy_accept: true,
                }),
            },
            ChainSpec { name: WAN_CHAIN.into(), hook: None },
        ],
        rules,
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Accept => f.write_str("accept"),
            Verdict::Drop => f.write_str("drop"),
            Verdict::Return => f.write_str("return"),
            Verdict::Continue => f.write_str("continue"),
            Verdict::Jump(c) => write!(f, "jump {c}"),
            Verdict::Goto(c) => write!(f, "goto {c}"),
        }
    }
}

fn proto_name(p: u8) -> String {
    match p {
        6 => "tcp".into(),
        17 => "udp".into(),
        n => n.to_string(),
    }
}

impl fmt::Display for Stmt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stmt::IifName(n) => write!(f, "iifname \"{n}\""),
            Stmt::CtState(bits) => {
                let names: Vec<&str> =
                    [(1, "invalid"), (CT_ESTABLISHED, "established"), (CT_RELATED, "related"), (8, "new")]
                        .iter()
                        .filter(|(b, _)| bits & b != 0)
                        .map(|(_, n)| *n)
                        .collect();
                write!(f, "ct state {}", names.join(","))
            }
            Stmt::NfProto(NFPROTO_IPV4) => f.write_str("meta nfproto ipv4"),
            Stmt::NfProto(NFPROTO_IPV6) => f.write_str("meta nfproto ipv6"),
            Stmt::NfProto(n) => write!(f, "meta nfproto {n}"),
            Stmt::SaddrIn(Family::V4, s) => write!(f, "ip saddr @{s}"),
            Stmt::SaddrIn(Family::V6, s) => write!(f, "ip6 saddr @{s}"),
            Stmt::L4Proto(p) => write!(f, "meta l4proto {}", proto_name(*p)),
            Stmt::Dport(a, b) if a == b => write!(f, "th dport {a}"),
            Stmt::Dport(a, b) => write!(f, "th dport {a}-{b}"),
            Stmt::Verdict(v) => write!(f, "{v}"),
            Stmt::Other(s) => write!(f, "[{s}]"),
        }
    }
}

impl fmt::Display for RuleSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.stmts.iter().map(|s| s.to_string()).collect();
        f.write_str(&parts.join(" "))
    }
}

fn hook_name(h: u32) -> String {
    match h {
        0 => "prerouting".into(),
        1 => "input".into(),
        2 => "forward".into(),
        3 => "output".into(),
        4 => "postrouting".into(),
        5 => "ingress".into(),
        n => n.to_string(),
    }
}

/// An nft-like listing.
impl fmt::Display for TableSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "table inet {} {{", self.name)?;
        for s in &self.sets {
            let kind = match s.family {
                Family::V4 => "ipv4_addr",
                Family::V6 => "ipv6_addr",
            };
            let elems: Vec<String> = s.elements.iter().map(element_text).collect();
            writeln!(f, "\tset {} {{\n\t\ttype {kind}\n\t\tflags interval", s.name)?;
            if !elems.is_empty() {
                writeln!(f, "\t\telements = {{ {} }}", elems.join(", "))?;
            }
            writeln!(f, "\t}}\n")?;
        }
        for (i, c) in self.chains.iter().enumerate() {
            writeln!(f, "\tchain {} {{", c.name)?;
            if let Some(h) = &c.hook {
                let policy = if h.policy_accept { "accept" } else { "drop" };
                writeln!(
                    f,
                    "\t\ttype {} hook {} priority {}; policy {policy};",
                    h.kind,
                    hook_name(h.hook),
                    h.priority
                )?;
            }
            for r in self.rules.iter().filter(|r| r.chain == c.name) {
                writeln!(f, "\t\t{r}")?;
            }
            writeln!(f, "\t}}")?;
            if i + 1 < self.chains.len() {
                writeln!(f)?;
            }
        }
        writeln!(f, "}}")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config;

    fn settings() -> Settings {
        config::from_toml_str(
            r#"
            [firewall]
            ingress_names = ["ingress-1.example.org"]
            static_addresses = ["203.0.113.50"]
            interfaces = ["wan1", "wan2"]
            protect_ports = ["443/tcp", "1514", "49160-49200/udp"]
            priority = -5
            "#,
        )
        .unwrap()
        .firewall
        .unwrap()
    }

    fn allow(list: &[&str]) -> Allowlist {
        Allowlist::Only(list.iter().map(|s| s.parse().unwrap()).collect())
    }

    #[test]
    fn closed_table_listing() {
        let t = build(&settings(), &allow(&["203.0.113.50", "192.0.2.11", "2001:db8::11"]));
        assert!(t.enforcing());
        let expected = "\
table inet local_proxy {
\tset allow4 {
\t\ttype ipv4_addr
\t\tflags interval
\t\telements = { 192.0.2.11, 203.0.113.50 }
\t}

\tset allow6 {
\t\ttype ipv6_addr
\t\tflags interval
\t\telements = { 2001:db8::11 }
\t}

\tchain input {
\t\ttype filter hook input priority -5; policy accept;
\t\tiifname \"wan1\" jump wan
\t\tiifname \"wan2\" jump wan
\t}

\tchain wan {
\t\tct state established,related accept
\t\tmeta nfproto ipv4 ip saddr @allow4 accept
\t\tmeta nfproto ipv6 ip6 saddr @allow6 accept
\t\tmeta l4proto tcp th dport 443 drop
\t\tmeta l4proto tcp th dport 1514 drop
\t\tmeta l4proto udp th dport 1514 drop
\t\tmeta l4proto udp th dport 49160-49200 drop
\t}
}
";
        assert_eq!(t.to_string(), expected);
    }

    #[test]
    fn open_table_drops_nothing_and_empty_sets_have_no_elements_line() {
        let t = build(&settings(), &Allowlist::Open);
        assert!(!t.enforcing());
        assert!(t.allowed().is_empty());
        assert!(!t.to_string().contains("drop"));
        assert!(!t.to_string().contains("elements"));
        // Closed with nothing known: sets empty, drops present.
        let closed = build(&settings(), &allow(&[]));
        assert!(closed.enforcing());
        assert_eq!(closed.rules.len(), 2 + 3 + 4);
    }

    #[test]
    fn prefixes_cover_what_they_contain() {
        let s = config::from_toml_str(
            r#"
            [firewall]
            static_addresses = ["192.0.2.0/24", "192.0.2.128/25", "2001:db8::/48", "203.0.113.50"]
            interfaces = ["wan1"]
            protect_ports = [443]
            "#,
        )
        .unwrap()
        .firewall
        .unwrap();
        // DNS answers inside a static prefix add nothing; outside it they are single entries.
        let t = build(&s, &allow(&["192.0.2.11", "198.51.100.7", "2001:db8::11", "2001:db8:1::11"]));
        let text = t.to_string();
        assert!(text.contains("elements = { 192.0.2.0/24, 198.51.100.7, 203.0.113.50 }"), "{text}");
        assert!(text.contains("elements = { 2001:db8::/48, 2001:db8:1::11 }"), "{text}");
        assert_eq!(t.allowed().len(), 5);
        // Open: nothing is filtered, the sets stay empty.
        assert!(build(&s, &Allowlist::Open).allowed().is_empty());
        // Equal prefixes collapse; disjoint keeps each family to itself.
        let nets = ["10.0.0.0/8", "10.1.0.0/16", "10.0.0.0/8", "2001:db8::1/128"].map(|n| n.parse::<IpNet>().unwrap());
        assert_eq!(disjoint(nets, Family::V4), ["10.0.0.0/8".parse().unwrap()].into());
        assert_eq!(disjoint(nets, Family::V6).len(), 1);
    }

    #[test]
    fn only_wan_interfaces_reach_the_wan_chain() {
        let t = build(&settings(), &allow(&[]));
        let jumps: Vec<&RuleSpec> = t.rules.iter().filter(|r| r.chain == BASE_CHAIN).collect();
        assert!(jumps
            .iter()
            .all(|r| matches!(r.stmts[0], Stmt::IifName(_))
                && r.stmts[1] == Stmt::Verdict(Verdict::Jump(WAN_CHAIN.into()))));
        assert_eq!(jumps.len(), 2);
    }
}
