//! Faults injected while traffic flows: links down/up, silent blackholes and random loss in the
//! harness's own nftables table (`inet lbtest`), and bandwidth limits with `tbf`.
//! (This kernel has no `netem`; delay comes from the NFQUEUE delayer, see [`crate::delay`], or
//! from queueing behind `tbf`.)

use std::net::IpAddr;

use anyhow::{bail, Result};

use crate::cmd;

/// The harness's nftables table in every namespace it touches.
pub const TABLE: &str = "lbtest";

/// `ip link set IFACE down` inside `ns`.
pub fn link_down(ns: &str, iface: &str) -> Result<()> {
    cmd::ip(ns, &["link", "set", iface, "down"])?;
    Ok(())
}

/// `ip link set IFACE up` inside `ns`.
pub fn link_up(ns: &str, iface: &str) -> Result<()> {
    cmd::ip(ns, &["link", "set", iface, "up"])?;
    Ok(())
}

fn nft(ns: &str, script: &str) -> Result<()> {
    let mut argv = vec!["ip", "netns", "exec", ns, "nft", "-f", "-"];
    if script.is_empty() {
        argv.pop();
    }
    cmd::run_stdin(&argv, Some(script))?;
    Ok(())
}

fn nft_ok(ns: &str, args: &[&str]) -> bool {
    let mut argv = vec!["nft"];
    argv.extend_from_slice(args);
    cmd::exec(ns, &argv, cmd::DEFAULT_TIMEOUT).is_ok_and(|o| o.status.success())
}

/// Creates the harness table in `ns` if it is missing: address sets `bh4`/`bh6` dropped in both
/// directions on the input, forward and output hooks (ahead of other filters).
fn ensure_table(ns: &str) -> Result<()> {
    if nft_ok(ns, &["list", "table", "inet", TABLE]) {
        return Ok(());
    }
    let drops = "ip saddr @bh4 drop; ip daddr @bh4 drop; ip6 saddr @bh6 drop; ip6 daddr @bh6 drop";
    nft(
        ns,
        &format!(
            "table inet {TABLE} {{
                set bh4 {{ type ipv4_addr; }}
                set bh6 {{ type ipv6_addr; }}
                chain input {{ type filter hook input priority -10; {drops}; }}
                chain forward {{ type filter hook forward priority -10; {drops}; }}
                chain output {{ type filter hook output priority -10; {drops}; }}
            }}"
        ),
    )
}

fn set_for(addr: IpAddr) -> &'static str {
    match addr {
        IpAddr::V4(_) => "bh4",
        IpAddr::V6(_) => "bh6",
    }
}

/// Silently drops every packet from or to `addr` passing through `ns` (the link stays up:
/// how most WAN outages look).
pub fn blackhole(ns: &str, addr: IpAddr) -> Result<()> {
    ensure_table(ns)?;
    nft(ns, &format!("add element inet {TABLE} {} {{ {addr} }}", set_for(addr)))
}

/// Lifts a [`blackhole`].
pub fn unblackhole(ns: &str, addr: IpAddr) -> Result<()> {
    ensure_table(ns)?;
    nft(ns, &format!("delete element inet {TABLE} {} {{ {addr} }}", set_for(addr)))
}

fn loss_chain(iface: &str) -> String {
    let safe: String = iface.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
    format!("loss_{safe}")
}

/// Drops `pct` percent of the packets entering or leaving `iface` in `ns`, each direction on
/// its own (`numgen random mod 100 < pct drop`). `pct = 0` removes the loss.
pub fn loss(ns: &str, iface: &str, pct: u8) -> Result<()> {
    if pct > 100 {
        bail!("loss: {pct}% is more than 100");
    }
    ensure_table(ns)?;
    let chain = loss_chain(iface);
    let mut script = String::new();
    if !nft_ok(ns, &["list", "chain", "inet", TABLE, &chain]) {
        script.push_str(&format!(
            "add chain inet {TABLE} {chain}
             add rule inet {TABLE} input iifname \"{iface}\" jump {chain}
             add rule inet {TABLE} forward iifname \"{iface}\" jump {chain}
             add rule inet {TABLE} forward oifname \"{iface}\" jump {chain}
             add rule inet {TABLE} output oifname \"{iface}\" jump {chain}
            "
        ));
    }
    script.push_str(&format!("flush chain inet {TABLE} {chain}\n"));
    match pct {
        0 => {}
        100 => script.push_str(&format!("add rule inet {TABLE} {chain} drop\n")),
        _ => script.push_str(&format!("add rule inet {TABLE} {chain} numgen random mod 100 < {pct} drop\n")),
    }
    nft(ns, &script)
}

/// Shapes egress of `iface` in `ns` with a token bucket: `rate` like `"2mbit"`, `burst` like
/// `"32kb"`, `latency` (the most a packet may queue, which is also the delay it adds when the
/// link is saturated) like `"50ms"`. Replaces an earlier shaping.
pub fn tbf(ns: &str, iface: &str, rate: &str, burst: &str, latency: &str) -> Result<()> {
    let argv =
        ["tc", "qdisc", "replace", "dev", iface, "root", "tbf", "rate", rate, "burst", burst, "latency", latency];
    cmd::exec_ok(ns, &argv, cmd::DEFAULT_TIMEOUT)?;
    Ok(())
}

/// Removes [`tbf`] shaping (back to the default qdisc).
pub fn tbf_clear(ns: &str, iface: &str) -> Result<()> {
    let out = cmd::exec(ns, &["tc", "qdisc", "del", "dev", iface, "root"], cmd::DEFAULT_TIMEOUT)?;
    // "No such file or directory" / "Cannot delete qdisc with handle of zero": nothing to remove.
    if !out.status.success() && !out.stderr.contains("handle of zero") && !out.stderr.contains("No such file") {
        bail!("tc qdisc del dev {iface} in {ns}: {}", out.stderr.trim());
    }
    Ok(())
}

/// Sends every packet entering or leaving `iface` in `ns` to NFQUEUE `queue` (with bypass: if
/// no delayer listens, packets pass); `None` removes it. This kernel lacks nftables' `queue`
/// expression but has the xtables NFQUEUE target, hence `iptables-legacy` here. Its filter
/// hooks run at priority 0, after the harness's loss and blackhole chains (-10), so dropped
/// packets are not delayed first.
pub fn queue_to(ns: &str, iface: &str, queue: Option<u16>) -> Result<()> {
    let chain = format!("lbtd_{}", &loss_chain(iface)["loss_".len()..]);
    let ipt = |args: &[&str]| -> Result<String> {
        let mut argv = vec!["iptables-legacy", "-w"];
        argv.extend_from_slice(args);
        cmd::exec_ok(ns, &argv, cmd::DEFAULT_TIMEOUT)
    };
    if ipt(&["-n", "-L", &chain]).is_err() {
        ipt(&["-N", &chain])?;
        ipt(&["-A", "INPUT", "-i", iface, "-j", &chain])?;
        ipt(&["-A", "FORWARD", "-i", iface, "-j", &chain])?;
        ipt(&["-A", "FORWARD", "-o", iface, "-j", &chain])?;
        ipt(&["-A", "OUTPUT", "-o", iface, "-j", &chain])?;
    }
    ipt(&["-F", &chain])?;
    if let Some(q) = queue {
        ipt(&["-A", &chain, "-j", "NFQUEUE", "--queue-num", &q.to_string(), "--queue-bypass"])?;
    }
    Ok(())
}
