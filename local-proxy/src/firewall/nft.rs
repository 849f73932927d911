//! [`TableSpec`] → one nf_tables batch. Replacing is `add table; delete table; add table ...` in
//! a single transaction: the first add makes the delete safe when the table is absent, and the
//! kernel swaps old for new atomically (no moment without the table). Only our tables are named.
//!
//! nftnl writes the table, chains and rules. Its safe API cannot make an interval set (no set
//! flags, no element flags), so the sets and their elements are encoded here and spliced into
//! nftnl's batch before the chains, the whole batch then renumbered: one transaction still.

use std::ffi::CString;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use nftnl::expr::{InterfaceName, Verdict as NftVerdict};
use nftnl::set::Set;
use nftnl::{nft_expr, Batch, Chain, ChainType, Hook, MsgType, Policy, ProtoFamily, Rule, Table};

use super::netlink::{self, cstr, push_attr};
use super::ruleset::{SetSpec, Stmt, TableSpec, Verdict, HOOK_INPUT};
use super::tracker::Family;
use super::Error;

/// `NFT_MSG_NEWSET`, `NFT_MSG_NEWSETELEM`, `NFT_MSG_NEWCHAIN`.
const MSG_NEWSET: u16 = 9;
const MSG_NEWSETELEM: u16 = 12;
const MSG_NEWCHAIN: u16 = 3;
/// `NLM_F_CREATE`, `NLM_F_EXCL`.
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_EXCL: u16 = 0x200;
/// `NFTA_SET_*`.
const SET_TABLE: u16 = 1;
const SET_NAME: u16 = 2;
const SET_FLAGS: u16 = 3;
const SET_KEY_TYPE: u16 = 4;
const SET_KEY_LEN: u16 = 5;
const SET_ID: u16 = 10;
/// `NFT_SET_INTERVAL`.
pub const SET_F_INTERVAL: u32 = 0x4;
/// `NFTA_SET_ELEM_LIST_*`.
const ELEM_LIST_TABLE: u16 = 1;
const ELEM_LIST_SET: u16 = 2;
const ELEM_LIST_ELEMENTS: u16 = 3;
const ELEM_LIST_SET_ID: u16 = 4;
/// `NFTA_LIST_ELEM`, `NFTA_SET_ELEM_KEY`, `NFTA_SET_ELEM_FLAGS`, `NFTA_DATA_VALUE`.
const LIST_ELEM: u16 = 1;
const ELEM_KEY: u16 = 1;
const ELEM_FLAGS: u16 = 3;
const DATA_VALUE: u16 = 1;
/// `NFT_SET_ELEM_INTERVAL_END`.
pub const ELEM_F_INTERVAL_END: u32 = 0x1;
/// nft's key types `ipv4_addr` and `ipv6_addr`.
const KEY_IPV4: u32 = 7;
const KEY_IPV6: u32 = 8;
/// Elements per message: a nested attribute's length is 16 bits (an IPv6 pair is ~72 bytes).
const ELEMS_PER_MSG: usize = 256;

fn c(s: &str) -> Result<CString, Error> {
    CString::new(s).map_err(|_| Error::Encode(format!("name {s:?} contains NUL")))
}

/// One transaction's bytes, ready to send, and the sequence numbers that ask for an ack.
#[derive(Debug, Clone)]
pub struct Encoded {
    pub bytes: Vec<u8>,
    pub acks: Vec<u32>,
}

/// The key bytes of an address (network order).
fn key(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// The first address after `net`, or `None` when it ends at the top of the address space.
fn after(net: &IpNet) -> Option<IpAddr> {
    match net.broadcast() {
        IpAddr::V4(b) => u32::from(b).checked_add(1).map(|n| IpAddr::V4(Ipv4Addr::from(n))),
        IpAddr::V6(b) => u128::from(b).checked_add(1).map(|n| IpAddr::V6(Ipv6Addr::from(n))),
    }
}

/// A set element: its key and whether it ends an interval.
fn element(out: &mut Vec<u8>, ip: IpAddr, end: bool) {
    let mut value = Vec::new();
    push_attr(&mut value, DATA_VALUE, &key(ip), false);
    let mut e = Vec::new();
    push_attr(&mut e, ELEM_KEY, &value, true);
    if end {
        push_attr(&mut e, ELEM_FLAGS, &ELEM_F_INTERVAL_END.to_be_bytes(), false);
    }
    push_attr(out, LIST_ELEM, &e, true);
}

/// `NEWSET` (interval flag) and its `NEWSETELEM`s: each prefix is the interval from its first
/// address to the first address after it (an interval-end element; none at the very top).
fn set_messages(table: &str, id: u32, s: &SetSpec) -> Vec<Vec<u8>> {
    let (kind, len) = match s.family {
        Family::V4 => (KEY_IPV4, 4u32),
        Family::V6 => (KEY_IPV6, 16u32),
    };
    let mut a = Vec::new();
    push_attr(&mut a, SET_TABLE, &cstr(table), false);
    push_attr(&mut a, SET_NAME, &cstr(&s.name), false);
    push_attr(&mut a, SET_FLAGS, &SET_F_INTERVAL.to_be_bytes(), false);
    push_attr(&mut a, SET_KEY_TYPE, &kind.to_be_bytes(), false);
    push_attr(&mut a, SET_KEY_LEN, &len.to_be_bytes(), false);
    push_attr(&mut a, SET_ID, &id.to_be_bytes(), false);
    let flags = netlink::NLM_F_REQUEST | NLM_F_CREATE | netlink::NLM_F_ACK;
    let mut out = vec![netlink::request(MSG_NEWSET, flags, 0, netlink::FAMILY_INET, &a)];
    let nets: Vec<&IpNet> = s.elements.iter().filter(|n| s.family.matches(&n.addr())).collect();
    for chunk in nets.chunks(ELEMS_PER_MSG) {
        let mut list = Vec::new();
        for net in chunk {
            element(&mut list, net.network(), false);
            if let Some(end) = after(net) {
                element(&mut list, end, true);
            }
        }
        let mut a = Vec::new();
        push_attr(&mut a, ELEM_LIST_TABLE, &cstr(table), false);
        push_attr(&mut a, ELEM_LIST_SET, &cstr(&s.name), false);
        push_attr(&mut a, ELEM_LIST_SET_ID, &id.to_be_bytes(), false);
        push_attr(&mut a, ELEM_LIST_ELEMENTS, &list, true);
        let flags = netlink::NLM_F_REQUEST | NLM_F_CREATE | NLM_F_EXCL | netlink::NLM_F_ACK;
        out.push(netlink::request(MSG_NEWSETELEM, flags, 0, netlink::FAMILY_INET, &a));
    }
    out
}

/// The batch that replaces table `spec.name` with `spec`.
pub fn replace_batch(spec: &TableSpec) -> Result<Encoded, Error> {
    swap_batch(spec, None)
}

/// The batch that replaces table `spec.name` with `spec` and then, in the same transaction,
/// deletes table `old` (a renamed table: the new one is in force before the old one goes).
pub fn swap_batch(spec: &TableSpec, old: Option<&str>) -> Result<Encoded, Error> {
    let table = Table::new(c(&spec.name)?, ProtoFamily::Inet);
    let mut batch = Batch::new();
    batch.add(&table, MsgType::Add);
    batch.add(&table, MsgType::Del);
    batch.add(&table, MsgType::Add);

    // nftnl sets stand in for ours in the lookup expressions (name and transaction id); they
    // are never added to the batch.
    let mut set4: Option<Set<'_, Ipv4Addr>> = None;
    let mut set6: Option<Set<'_, Ipv6Addr>> = None;
    let mut sets = Vec::new();
    for (id, s) in (1u32..).zip(&spec.sets) {
        let name = c(&s.name)?;
        match s.family {
            Family::V4 => set4 = Some(Set::new_named(&name, id, &table, ProtoFamily::Inet)),
            Family::V6 => set6 = Some(Set::new_named(&name, id, &table, ProtoFamily::Inet)),
        }
        sets.extend(set_messages(&spec.name, id, s));
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
    if let Some(old) = old.filter(|o| *o != spec.name) {
        let gone = Table::new(c(old)?, ProtoFamily::Inet);
        batch.add(&gone, MsgType::Add);
        batch.add(&gone, MsgType::Del);
    }
    splice(batch.finalize(), sets)
}

/// nftnl's batch with `sets` inserted before its first chain (sets first, as the rules name
/// them), every message renumbered in order.
fn splice(batch: nftnl::FinalizedBatch, sets: Vec<Vec<u8>>) -> Result<Encoded, Error> {
    let mut raw = Vec::new();
    for chunk in &batch {
        raw.extend_from_slice(chunk);
    }
    let mut msgs: Vec<netlink::Msg<'_>> = netlink::messages(&raw)?;
    // Before the first chain; with none, before the batch end.
    let at = msgs.iter().position(|m| m.nft_kind() == Some(MSG_NEWCHAIN)).unwrap_or(msgs.len().saturating_sub(1));
    let tail = msgs.split_off(at);
    let own = sets.iter().map(|b| netlink::messages(b)).collect::<Result<Vec<_>, _>>()?;
    let mut out = Encoded { bytes: Vec::new(), acks: Vec::new() };
    for (seq, mut m) in (1u32..).zip(msgs.into_iter().chain(own.into_iter().flatten()).chain(tail)) {
        m.seq = seq;
        if m.flags & netlink::NLM_F_ACK != 0 {
            out.acks.push(seq);
        }
        netlink::encode(&m, &mut out.bytes);
    }
    Ok(out)
}

/// The batch that deletes table `name` (and only it), present or not.
pub fn remove_batch(name: &str) -> Result<Encoded, Error> {
    let table = Table::new(c(name)?, ProtoFamily::Inet);
    let mut batch = Batch::new();
    batch.add(&table, MsgType::Add);
    batch.add(&table, MsgType::Del);
    splice(batch.finalize(), Vec::new())
}
