//! [`TableSpec`] → one nftnl batch. Replacing is `add table; delete table; add table ...` in a
//! single transaction: the first add makes the delete safe when the table is absent, and the
//! kernel swaps old for new atomically (no moment without the table). Only our table is named.

use std::ffi::CString;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use nftnl::expr::{InterfaceName, Verdict as NftVerdict};
use nftnl::set::Set;
use nftnl::{nft_expr, Batch, Chain, ChainType, FinalizedBatch, Hook, MsgType, Policy, ProtoFamily, Rule, Table};

use super::ruleset::{Stmt, TableSpec, Verdict, HOOK_INPUT};
use super::tracker::Family;
use super::Error;

fn c(s: &str) -> Result<CString, Error> {
    CString::new(s).map_err(|_| Error::Encode(format!("name {s:?} contains NUL")))
}

/// The batch that replaces table `spec.name` with `spec`.
pub fn replace_batch(spec: &TableSpec) -> Result<FinalizedBatch, Error> {
    let table = Table::new(c(&spec.name)?, ProtoFamily::Inet);
    let mut batch = Batch::new();
    batch.add(&table, MsgType::Add);
    batch.add(&table, MsgType::Del);
    batch.add(&table, MsgType::Add);

    let mut set4: Option<Set<'_, Ipv4Addr>> = None;
    let mut set6: Option<Set<'_, Ipv6Addr>> = None;
    for (id, s) in (1u32..).zip(&spec.sets) {
        let name = c(&s.name)?;
        match s.family {
            Family::V4 => {
                let mut set = Set::<Ipv4Addr>::new_named(&name, id, &table, ProtoFamily::Inet);
                for a in s.elements.iter().filter_map(|a| match a {
                    IpAddr::V4(v4) => Some(v4),
                    IpAddr::V6(_) => None,
                }) {
                    set.add(a);
                }
                batch.add(&set, MsgType::Add);
                batch.add_iter(set.elems_iter(), MsgType::Add);
                set4 = Some(set);
            }
            Family::V6 => {
                let mut set = Set::<Ipv6Addr>::new_named(&name, id, &table, ProtoFamily::Inet);
                for a in s.elements.iter().filter_map(|a| match a {
                    IpAddr::V6(v6) => Some(v6),
                    IpAddr::V4(_) => None,
                }) {
                    set.add(a);
                }
                batch.add(&set, MsgType::Add);
                batch.add_iter(set.elems_iter(), MsgType::Add);
                set6 = Some(set);
            }
        }
    }

    let mut chains = Vec::new();
    for spec_chain in &spec.chains {
        let mut chain = Chain::new(c(&spec_chain.name)?, &table);
        if let Some(h) = &spec_chain.hook {
            if h.hook != HOOK_INPUT || h.kind != "filter" {
                return Err(Error::Encode(format!("chain {}: only filter/input hooks are written", spec_chain.name)));
            }
            chain.set_hook(Hook::In, h.priority);
            chain.set_type(ChainType::Filter);
            chain.set_policy(if h.policy_accept { Policy::Accept } else { Policy::Drop });
        }
        batch.add(&chain, MsgType::Add);
        chains.push(chain);
    }

    for r in &spec.rules {
        let chain = chains
            .iter()
            .find(|ch| ch.get_name().to_bytes() == r.chain.as_bytes())
            .ok_or_else(|| Error::Encode(format!("rule in unknown chain {}", r.chain)))?;
        let mut rule = Rule::new(chain);
        for stmt in &r.stmts {
            match stmt {
                Stmt::IifName(name) => {
                    rule.add_expr(&nft_expr!(meta iifname));
                    let iface = match name.strip_suffix('*') {
                        Some(prefix) => InterfaceName::StartingWith(c(prefix)?),
                        None => InterfaceName::Exact(c(name)?),
                    };
                    rule.add_expr(&nft_expr!(cmp == iface));
                }
                Stmt::CtState(bits) => {
                    rule.add_expr(&nft_expr!(ct state));
                    rule.add_expr(&nft_expr!(bitwise mask (*bits), xor 0u32));
                    rule.add_expr(&nft_expr!(cmp != 0u32));
                }
                Stmt::NfProto(p) => {
                    rule.add_expr(&nft_expr!(meta nfproto));
                    rule.add_expr(&nft_expr!(cmp == (*p)));
                }
                Stmt::SaddrIn(Family::V4, name) => {
                    let set = set4.as_ref().filter(|s| s.get_name().to_bytes() == name.as_bytes());
                    let set = set.ok_or_else(|| Error::Encode(format!("no IPv4 set {name}")))?;
                    rule.add_expr(&nft_expr!(payload ipv4 saddr));
                    rule.add_expr(&nft_expr!(lookup set));
                }
                Stmt::SaddrIn(Family::V6, name) => {
                    let set = set6.as_ref().filter(|s| s.get_name().to_bytes() == name.as_bytes());
                    let set = set.ok_or_else(|| Error::Encode(format!("no IPv6 set {name}")))?;
                    rule.add_expr(&nft_expr!(payload ipv6 saddr));
                    rule.add_expr(&nft_expr!(lookup set));
                }
                Stmt::L4Proto(p) => {
                    rule.add_expr(&nft_expr!(meta l4proto));
                    rule.add_expr(&nft_expr!(cmp == (*p)));
                }
                Stmt::Dport(first, last) => {
                    // The transport header's destination port: same offset for tcp and udp.
                    rule.add_expr(&nft_expr!(payload tcp dport));
                    let (lo, hi) = (first.to_be_bytes(), last.to_be_bytes());
                    if first == last {
                        rule.add_expr(&nft_expr!(cmp == &lo[..]));
                    } else {
                        // cmp compares bytes, so big-endian ports order like numbers.
                        rule.add_expr(&nft_expr!(cmp >= &lo[..]));
                        rule.add_expr(&nft_expr!(cmp <= &hi[..]));
                    }
                }
                Stmt::Verdict(v) => {
                    let v = match v {
                        Verdict::Accept => NftVerdict::Accept,
                        Verdict::Drop => NftVerdict::Drop,
                        Verdict::Return => NftVerdict::Return,
                        Verdict::Continue => NftVerdict::Continue,
                        Verdict::Jump(ch) => NftVerdict::Jump { chain: c(ch)? },
                        Verdict::Goto(ch) => NftVerdict::Goto { chain: c(ch)? },
                    };
                    rule.add_expr(&v);
                }
                Stmt::Other(s) => return Err(Error::Encode(format!("cannot write `{s}`"))),
            }
        }
        batch.add(&rule, MsgType::Add);
    }
    Ok(batch.finalize())
}

/// The batch that deletes table `name` (and only it), present or not.
pub fn remove_batch(name: &str) -> Result<FinalizedBatch, Error> {
    let table = Table::new(c(name)?, ProtoFamily::Inet);
    let mut batch = Batch::new();
    batch.add(&table, MsgType::Add);
    batch.add(&table, MsgType::Del);
    Ok(batch.finalize())
}
