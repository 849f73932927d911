//! Reading our table back from the kernel over netlink (never from `nft` text) and decoding the
//! replies into a [`TableSpec`]: chains with hooks, sets with elements (an interval set's
//! start and interval-end elements turned back into prefixes), and rules whose
//! expressions are decompiled into [`Stmt`]s (anything unexpected is kept as `Stmt::Other`).
//! The decoder is sans-io; it also reads our own batches, which the tests use as a round trip.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Subnets, Ipv6Subnets};

use super::netlink::{self, attr, attr_str, attr_u32, attrs, cstr, push_attr, Msg};
use super::nft::{ELEM_F_INTERVAL_END, SET_F_INTERVAL};
use super::ruleset::{disjoint, ChainSpec, HookSpec, RuleSpec, SetSpec, Stmt, TableSpec, Verdict};
use super::tracker::Family;
use super::Error;

const MSG_NEWTABLE: u16 = 0;
const MSG_GETTABLE: u16 = 1;
const MSG_NEWCHAIN: u16 = 3;
const MSG_GETCHAIN: u16 = 4;
const MSG_NEWRULE: u16 = 6;
const MSG_GETRULE: u16 = 7;
const MSG_NEWSET: u16 = 9;
const MSG_GETSET: u16 = 10;
const MSG_NEWSETELEM: u16 = 12;
const MSG_GETSETELEM: u16 = 13;
const ENOENT: i32 = 2;
/// `NFTA_DATA_VALUE`, `NFTA_DATA_VERDICT` (and `NFTA_LIST_ELEM`, which the tests write).
#[cfg(test)]
const LIST_ELEM: u16 = 1;
const DATA_VALUE: u16 = 1;
const DATA_VERDICT: u16 = 2;

/// What a register holds while decoding a rule.
#[derive(Debug, Clone, PartialEq)]
enum Operand {
    Meta(u32),
    Payload { base: u32, offset: u32, len: u32 },
    Ct(u32),
    Masked(Box<Operand>, Vec<u8>, Vec<u8>),
}

const META_IIFNAME: u32 = 6;
const META_NFPROTO: u32 = 15;
const META_L4PROTO: u32 = 16;
const CT_STATE: u32 = 0;
const CMP_EQ: u32 = 0;
const CMP_NEQ: u32 = 1;
const CMP_GTE: u32 = 5;
const CMP_LTE: u32 = 3;

fn data_value(nested: Option<&[u8]>) -> Option<Vec<u8>> {
    Some(attr(nested?, DATA_VALUE)?.to_vec())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn be16(b: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes([*b.first()?, *b.get(1)?]))
}

fn is_dport(o: &Operand) -> bool {
    *o == Operand::Payload { base: 2, offset: 2, len: 2 }
}

fn decode_cmp(operand: Option<&Operand>, op: u32, data: &[u8], pending_low: &mut Option<u16>) -> Option<Stmt> {
    let stmt = match (operand?, op) {
        (Operand::Meta(META_IIFNAME), CMP_EQ) => {
            let name = match data.iter().position(|b| *b == 0) {
                Some(end) => String::from_utf8_lossy(&data[..end]).into_owned(),
                None => format!("{}*", String::from_utf8_lossy(data)),
            };
            Stmt::IifName(name)
        }
        (Operand::Meta(META_NFPROTO), CMP_EQ) if data.len() == 1 => Stmt::NfProto(data[0]),
        (Operand::Meta(META_L4PROTO), CMP_EQ) if data.len() == 1 => Stmt::L4Proto(data[0]),
        (o, CMP_EQ) if is_dport(o) => {
            let p = be16(data)?;
            Stmt::Dport(p, p)
        }
        (o, CMP_GTE) if is_dport(o) => {
            *pending_low = Some(be16(data)?);
            return None;
        }
        (o, CMP_LTE) if is_dport(o) && pending_low.is_some() => {
            let low = pending_low.take()?;
            Stmt::Dport(low, be16(data)?)
        }
        (Operand::Masked(inner, mask, xor), CMP_NEQ)
            if **inner == Operand::Ct(CT_STATE)
                && mask.len() == 4
                && xor.iter().all(|b| *b == 0)
                && data.iter().all(|b| *b == 0) =>
        {
            Stmt::CtState(u32::from_ne_bytes([mask[0], mask[1], mask[2], mask[3]]))
        }
        _ => return None,
    };
    Some(stmt)
}

fn decode_verdict(data: &[u8]) -> Option<Verdict> {
    let v = attr(attr(data, 2)?, DATA_VERDICT)?;
    let code = attr_u32(v, 1)? as i32;
    let chain = || attr_str(v, 2).unwrap_or_default();
    Some(match code {
        0 => Verdict::Drop,
        1 => Verdict::Accept,
        -1 => Verdict::Continue,
        -3 => Verdict::Jump(chain()),
        -4 => Verdict::Goto(chain()),
        -5 => Verdict::Return,
        _ => return None,
    })
}

/// Decompiles a rule's expression list.
fn decode_exprs(list: &[u8]) -> Vec<Stmt> {
    let mut regs: BTreeMap<u32, Operand> = BTreeMap::new();
    let mut out = Vec::new();
    let mut pending_low: Option<u16> = None;
    for (_, expr) in attrs(list) {
        let name = attr_str(expr, 1).unwrap_or_default();
        let data = attr(expr, 2).unwrap_or(&[]);
        let u = |k| attr_u32(data, k);
        let decoded: Option<Option<Stmt>> = match name.as_str() {
            "meta" => u(1).zip(u(2)).map(|(dreg, key)| {
                regs.insert(dreg, Operand::Meta(key));
                None
            }),
            "payload" => u(1).map(|dreg| {
                let p = Operand::Payload { base: u(2).unwrap_or(0), offset: u(3).unwrap_or(0), len: u(4).unwrap_or(0) };
                regs.insert(dreg, p);
                None
            }),
            "ct" => u(1).zip(u(2)).map(|(dreg, key)| {
                regs.insert(dreg, Operand::Ct(key));
                None
            }),
            "bitwise" => u(1).zip(u(2)).and_then(|(sreg, dreg)| {
                let inner = regs.get(&sreg)?.clone();
                let mask = data_value(attr(data, 4))?;
                let xor = data_value(attr(data, 5))?;
                regs.insert(dreg, Operand::Masked(Box::new(inner), mask, xor));
                Some(None)
            }),
            "cmp" => u(1).zip(u(2)).and_then(|(sreg, op)| {
                let value = data_value(attr(data, 3))?;
                let stmt = decode_cmp(regs.get(&sreg), op, &value, &mut pending_low);
                // A pending lower bound decodes to nothing yet; anything else unknown stays raw.
                if stmt.is_none() && pending_low.is_some() && op == CMP_GTE {
                    return Some(None);
                }
                stmt.map(Some).or(Some(Some(Stmt::Other(format!("cmp op {op} {}", hex(&value))))))
            }),
            "range" => u(1).zip(u(2)).and_then(|(sreg, op)| {
                let from = be16(&data_value(attr(data, 3))?)?;
                let to = be16(&data_value(attr(data, 4))?)?;
                (op == CMP_EQ && regs.get(&sreg).is_some_and(is_dport)).then_some(Some(Stmt::Dport(from, to)))
            }),
            "lookup" => u(2).and_then(|sreg| {
                let set = attr_str(data, 1)?;
                if u(5).unwrap_or(0) & 1 != 0 {
                    return None;
                }
                match regs.get(&sreg)? {
                    Operand::Payload { base: 1, offset: 12, len: 4 } => Some(Some(Stmt::SaddrIn(Family::V4, set))),
                    Operand::Payload { base: 1, offset: 8, len: 16 } => Some(Some(Stmt::SaddrIn(Family::V6, set))),
                    _ => None,
                }
            }),
            "immediate" if u(1) == Some(0) => decode_verdict(data).map(|v| Some(Stmt::Verdict(v))),
            _ => None,
        };
        match decoded {
            Some(Some(stmt)) => out.push(stmt),
            Some(None) => {}
            None => out.push(Stmt::Other(name)),
        }
    }
    if let Some(low) = pending_low {
        out.push(Stmt::Other(format!("th dport >= {low}")));
    }
    out
}

fn set_family(a: &[u8]) -> Option<Family> {
    match (attr_u32(a, 4), attr_u32(a, 5)) {
        (Some(7), _) | (_, Some(4)) => Some(Family::V4),
        (Some(8), _) | (_, Some(16)) => Some(Family::V6),
        _ => None,
    }
}

fn element_addr(family: Family, key: &[u8]) -> Option<IpAddr> {
    match family {
        Family::V4 => <[u8; 4]>::try_from(key).ok().map(|b| IpAddr::V4(Ipv4Addr::from(b))),
        Family::V6 => <[u8; 16]>::try_from(key).ok().map(|b| IpAddr::V6(Ipv6Addr::from(b))),
    }
}

/// The prefixes an interval set's elements describe: sorted by address (an interval's end
/// before the next one's start at the same address), each start runs to the next end (the
/// address before it) or, with none, to the top of the address space. An end with no start
/// before it (nft writes one at 0.0.0.0) is skipped. A range that is not one prefix becomes
/// the fewest prefixes covering it exactly.
fn intervals(family: Family, mut elems: Vec<(IpAddr, bool)>) -> BTreeSet<IpNet> {
    elems.sort_by_key(|(ip, end)| (*ip, !*end));
    let mut out = Vec::new();
    let mut it = elems.into_iter().peekable();
    while let Some((first, end)) = it.next() {
        if end {
            continue;
        }
        let last = match it.peek() {
            Some((next, true)) => {
                let next = *next;
                it.next();
                match next {
                    IpAddr::V4(a) => u32::from(a).checked_sub(1).map(|n| IpAddr::V4(Ipv4Addr::from(n))),
                    IpAddr::V6(a) => u128::from(a).checked_sub(1).map(|n| IpAddr::V6(Ipv6Addr::from(n))),
                }
            }
            _ => Some(match family {
                Family::V4 => IpAddr::V4(Ipv4Addr::from(u32::MAX)),
                Family::V6 => IpAddr::V6(Ipv6Addr::from(u128::MAX)),
            }),
        };
        match (first, last) {
            (IpAddr::V4(a), Some(IpAddr::V4(b))) if a <= b => out.extend(Ipv4Subnets::new(a, b, 0).map(IpNet::V4)),
            (IpAddr::V6(a), Some(IpAddr::V6(b))) if a <= b => out.extend(Ipv6Subnets::new(a, b, 0).map(IpNet::V6)),
            _ => {}
        }
    }
    disjoint(out, family)
}

/// Builds table `name` from nf_tables messages (dump replies or a batch), ignoring anything
/// that belongs to another table or family. `None` if no `NEWTABLE` for it was seen.
pub fn assemble(name: &str, msgs: &[Msg<'_>]) -> Option<TableSpec> {
    let mut seen = false;
    let mut t = TableSpec { name: name.into(), sets: Vec::new(), chains: Vec::new(), rules: Vec::new() };
    // Per set: whether it is an interval set, and its elements (key, interval end?).
    let mut raw_elems: BTreeMap<String, (bool, Vec<(IpAddr, bool)>)> = BTreeMap::new();
    for m in msgs {
        let (Some(kind), Some((family, a))) = (m.nft_kind(), m.nft()) else {
            continue;
        };
        if family != netlink::FAMILY_INET {
            continue;
        }
        // Every object names its table in attribute 1.
        if attr_str(a, 1).as_deref() != Some(name) {
            continue;
        }
        match kind {
            MSG_NEWTABLE => seen = true,
            MSG_NEWCHAIN => {
                let Some(chain) = attr_str(a, 3) else { continue };
                let hook = attr(a, 4).and_then(|h| {
                    Some(HookSpec {
                        kind: attr_str(a, 7).unwrap_or_else(|| "filter".into()),
                        hook: attr_u32(h, 1)?,
                        priority: attr_u32(h, 2).unwrap_or(0) as i32,
                        policy_accept: attr_u32(a, 5).unwrap_or(1) == 1,
                    })
                });
                t.chains.retain(|c| c.name != chain);
                t.chains.push(ChainSpec { name: chain, hook });
            }
            MSG_NEWSET => {
                let (Some(set), Some(family)) = (attr_str(a, 2), set_family(a)) else { continue };
                let interval = attr_u32(a, 3).unwrap_or(0) & SET_F_INTERVAL != 0;
                raw_elems.entry(set.clone()).or_default().0 = interval;
                if !t.sets.iter().any(|s| s.name == set) {
                    t.sets.push(SetSpec { name: set, family, elements: Default::default() });
                }
            }
            MSG_NEWSETELEM => {
                let Some(set_name) = attr_str(a, 2) else { continue };
                let Some(set) = t.sets.iter().find(|s| s.name == set_name) else { continue };
                let list = &mut raw_elems.entry(set_name).or_default().1;
                // Kernel dumps type each element NFTA_LIST_ELEM; our batches number them too.
                for (_, elem) in attrs(attr(a, 3).unwrap_or(&[])) {
                    if let Some(ip) = data_value(attr(elem, 1)).and_then(|k| element_addr(set.family, &k)) {
                        let end = attr_u32(elem, 3).unwrap_or(0) & ELEM_F_INTERVAL_END != 0;
                        list.push((ip, end));
                    }
                }
            }
            MSG_NEWRULE => {
                let Some(chain) = attr_str(a, 2) else { continue };
                t.rules.push(RuleSpec { chain, stmts: decode_exprs(attr(a, 4).unwrap_or(&[])) });
            }
            _ => {}
        }
    }
    for set in &mut t.sets {
        let Some((interval, elems)) = raw_elems.remove(&set.name) else { continue };
        set.elements = if interval {
            intervals(set.family, elems)
        } else {
            elems.into_iter().map(|(ip, _)| IpNet::from(ip)).collect()
        };
    }
    // Rules listed chain by chain, in chain order (a dump already is; a batch may interleave).
    let order: Vec<String> = t.chains.iter().map(|c| c.name.clone()).collect();
    t.rules.sort_by_key(|r| order.iter().position(|c| *c == r.chain).unwrap_or(usize::MAX));
    seen.then_some(t)
}

/// Reads table `inet <name>` from the kernel; `None` if it does not exist.
pub fn read_table(name: &str) -> Result<Option<TableSpec>, Error> {
    let with_table = |kind: u16| {
        let mut a = Vec::new();
        push_attr(&mut a, 1, &cstr(name), false);
        let flags = netlink::NLM_F_REQUEST | if kind == MSG_GETTABLE { 0 } else { netlink::NLM_F_DUMP };
        netlink::request(kind, flags, 1, netlink::FAMILY_INET, &a)
    };
    let mut raw = match netlink::query(&with_table(MSG_GETTABLE)) {
        Ok(r) => r,
        Err(Error::Kernel { errno: ENOENT }) => return Ok(None),
        Err(e) => return Err(e),
    };
    raw.extend(netlink::query(&with_table(MSG_GETCHAIN))?);
    let sets = netlink::query(&with_table(MSG_GETSET))?;
    let mut set_names = Vec::new();
    for bytes in &sets {
        for m in netlink::messages(bytes)? {
            if let Some((_, a)) = m.nft() {
                if attr_str(a, 1).as_deref() == Some(name) {
                    set_names.extend(attr_str(a, 2));
                }
            }
        }
    }
    raw.extend(sets);
    for set in set_names {
        let mut a = Vec::new();
        push_attr(&mut a, 1, &cstr(name), false);
        push_attr(&mut a, 2, &cstr(&set), false);
        let req =
            netlink::request(MSG_GETSETELEM, netlink::NLM_F_REQUEST | netlink::NLM_F_DUMP, 1, netlink::FAMILY_INET, &a);
        raw.extend(netlink::query(&req)?);
    }
    raw.extend(netlink::query(&with_table(MSG_GETRULE))?);
    let mut msgs = Vec::new();
    for bytes in &raw {
        msgs.extend(netlink::messages(bytes)?);
    }
    Ok(assemble(name, &msgs))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config;
    use crate::firewall::nft;
    use crate::firewall::ruleset::build;
    use crate::firewall::tracker::Allowlist;

    fn settings() -> crate::firewall::Settings {
        config::from_toml_str(
            r#"
            [firewall]
            ingress_names = ["ingress-1.example.org"]
            interfaces = ["wan1", "ppp*"]
            protect_ports = [443, "1514/udp", "49160-49200/udp", "7000-7001"]
            priority = -7
            "#,
        )
        .unwrap()
        .firewall
        .unwrap()
    }

    fn batch_bytes(spec: &TableSpec) -> Vec<u8> {
        nft::replace_batch(spec).unwrap().bytes
    }

    #[test]
    fn our_batch_decodes_back_to_the_same_table() {
        for allow in [
            Allowlist::Open,
            Allowlist::Only(Default::default()),
            Allowlist::Only(["192.0.2.11", "192.0.2.19", "2001:db8::11"].iter().map(|s| s.parse().unwrap()).collect()),
        ] {
            let spec = build(&settings(), &allow);
            let bytes = batch_bytes(&spec);
            let msgs = netlink::messages(&bytes).unwrap();
            let back = assemble(&spec.name, &msgs).expect("table seen");
            assert_eq!(back, spec, "\n{back}\nvs\n{spec}");
            assert_eq!(back.to_string(), spec.to_string());
        }
    }

    #[test]
    fn prefixes_round_trip_through_our_batch() {
        let s = config::from_toml_str(
            r#"
            [firewall]
            static_addresses = ["192.0.2.0/24", "198.51.100.0/31", "203.0.113.255", "255.255.255.0/24",
                                "0.0.0.0/8", "2001:db8::/48", "ffff:ffff::/32", "2001:db8:1::/127"]
            interfaces = ["wan1"]
            protect_ports = [443]
            "#,
        )
        .unwrap()
        .firewall
        .unwrap();
        let allow = Allowlist::Only(
            ["192.0.2.11", "198.51.100.2", "203.0.114.0", "2001:db8:1::2"].iter().map(|a| a.parse().unwrap()).collect(),
        );
        let spec = build(&s, &allow);
        let back = assemble(&spec.name, &netlink::messages(&batch_bytes(&spec)).unwrap()).expect("table seen");
        assert_eq!(back, spec, "\n{back}\nvs\n{spec}");
        let text = back.to_string();
        assert!(
            text.contains(
                "elements = { 0.0.0.0/8, 192.0.2.0/24, 198.51.100.0/31, 198.51.100.2, 203.0.113.255, 203.0.114.0, 255.255.255.0/24 }"
            ),
            "{text}"
        );
        assert!(
            text.contains("elements = { 2001:db8::/48, 2001:db8:1::/127, 2001:db8:1::2, ffff:ffff::/32 }"),
            "{text}"
        );
    }

    #[test]
    fn kernel_interval_dumps_decode_to_prefixes() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let nets = |list: &[&str]| list.iter().map(|n| n.parse::<IpNet>().unwrap()).collect::<BTreeSet<_>>();
        // As the kernel dumps a set nft filled: highest first, nft's 0.0.0.0 end marker, two
        // adjacent single addresses, a prefix, and a last interval open to the top.
        let dump = vec![
            (ip("255.255.255.0"), false),
            (ip("198.51.101.0"), true),
            (ip("198.51.100.0"), false),
            (ip("192.0.2.12"), true),
            (ip("192.0.2.11"), false),
            (ip("192.0.2.11"), true),
            (ip("192.0.2.10"), false),
            (ip("0.0.0.0"), true),
        ];
        assert_eq!(
            intervals(Family::V4, dump),
            nets(&["192.0.2.10/32", "192.0.2.11/32", "198.51.100.0/24", "255.255.255.0/24"])
        );
        // A range that is no single prefix: the fewest prefixes covering it.
        let range = vec![(ip("192.0.2.1"), false), (ip("192.0.2.5"), true)];
        assert_eq!(intervals(Family::V4, range), nets(&["192.0.2.1/32", "192.0.2.2/31", "192.0.2.4/32"]));
        let v6 = vec![(ip("2001:db8::"), false), (ip("2001:db9::"), true), (ip("::"), true)];
        assert_eq!(intervals(Family::V6, v6), nets(&["2001:db8::/32"]));
    }

    #[test]
    fn a_renamed_table_is_created_before_the_old_one_goes_in_one_batch() {
        let spec = build(&settings(), &Allowlist::Only(["192.0.2.11".parse().unwrap()].into()));
        let batch = nft::swap_batch(&spec, Some("old_table")).unwrap();
        let msgs = netlink::messages(&batch.bytes).unwrap();
        // One transaction: batch begin first, batch end last, numbered in order.
        assert_eq!((msgs[0].kind, msgs[msgs.len() - 1].kind), (0x10, 0x11));
        assert!(msgs.windows(2).all(|w| w[1].seq == w[0].seq + 1));
        // Every nf_tables message asks for an ack, and only the acks asked for are awaited.
        let nft: Vec<_> = msgs.iter().filter(|m| m.nft_kind().is_some()).collect();
        assert!(nft.iter().all(|m| batch.acks.contains(&m.seq)));
        // The sets come before the chains whose rules name them.
        let first = |kind: u16| nft.iter().position(|m| m.nft_kind() == Some(kind)).unwrap();
        assert!(first(MSG_NEWSET) < first(MSG_NEWCHAIN) && first(MSG_NEWSETELEM) < first(MSG_NEWRULE));
        // The old table is deleted last, after everything of the new one.
        let names: Vec<(u16, String)> = nft
            .iter()
            .filter(|m| matches!(m.nft_kind(), Some(MSG_NEWTABLE | 2)))
            .map(|m| (m.nft_kind().unwrap(), attr_str(m.nft().unwrap().1, 1).unwrap()))
            .collect();
        let old: Vec<usize> = (0..names.len()).filter(|i| names[*i].1 == "old_table").collect();
        assert_eq!(old.len(), 2, "{names:?}");
        assert_eq!(names[names.len() - 1], (2, "old_table".to_string()));
        let last_new_rule = nft.iter().rposition(|m| m.nft_kind() == Some(MSG_NEWRULE)).unwrap();
        let del_old = nft.iter().rposition(|m| m.nft_kind() == Some(2)).unwrap();
        assert!(last_new_rule < del_old);
        assert_eq!(assemble(&spec.name, &msgs).expect("new table"), spec);
        // Same name: a plain replace (its own add/delete/add of the table), nothing else deleted.
        let same = nft::swap_batch(&spec, Some(&spec.name)).unwrap();
        let same = netlink::messages(&same.bytes).unwrap();
        let tables: Vec<(u16, String)> = same
            .iter()
            .filter(|m| matches!(m.nft_kind(), Some(MSG_NEWTABLE | 2)))
            .map(|m| (m.nft_kind().unwrap(), attr_str(m.nft().unwrap().1, 1).unwrap()))
            .collect();
        let plain = [(MSG_NEWTABLE, spec.name.clone()), (2, spec.name.clone()), (MSG_NEWTABLE, spec.name.clone())];
        assert_eq!(tables, plain);
        assert_eq!(same.len(), netlink::messages(&nft::replace_batch(&spec).unwrap().bytes).unwrap().len());
    }

    #[test]
    fn other_tables_are_ignored_and_absent_table_is_none() {
        let spec = build(&settings(), &Allowlist::Open);
        let bytes = batch_bytes(&spec);
        let msgs = netlink::messages(&bytes).unwrap();
        assert!(assemble("someone_else", &msgs).is_none());
    }

    #[test]
    fn unknown_expressions_stay_visible() {
        // A rule with a counter and a reject we never write: shown raw, not dropped.
        let mut list = Vec::new();
        for name in ["counter", "reject"] {
            let mut e = Vec::new();
            push_attr(&mut e, 1, &cstr(name), false);
            push_attr(&mut list, LIST_ELEM, &e, true);
        }
        assert_eq!(decode_exprs(&list), vec![Stmt::Other("counter".into()), Stmt::Other("reject".into())]);
    }

    #[test]
    fn every_prefix_of_a_batch_decodes_without_panic() {
        let spec = build(&settings(), &Allowlist::Only(["192.0.2.11".parse().unwrap()].into()));
        let bytes = batch_bytes(&spec);
        for cut in 0..bytes.len() {
            if let Ok(msgs) = netlink::messages(&bytes[..cut]) {
                let _ = assemble(&spec.name, &msgs);
            }
        }
    }
}
