//! coturn in the topology (Debian package `coturn`): a `turnserver` started in a namespace with
//! a static long-term user and no TLS, and the report of `turnutils_uclient` parsed. (The remote
//! peer of the relay tests is `udp-echo --raw --answer-ip`.)
//!
//! What coturn does behind an L4 forwarder (coturn 4.6, `mainrelay.c`, `ns_turn_ioaddr.c`):
//! - the relayed address it advertises must be one peers can reach, so with the ingress in front
//!   it is the ingress address (`--external-ip`); relay sockets bind the one `--relay-ip`, so the
//!   ingress must send the relay range over the path that reaches that address (a pool with that
//!   WAN only).
//! - `--external-ip X` (with or without `/private`) also maps every peer address at X to the
//!   relay address: two clients of the same server relay to each other inside coturn, never
//!   through the ingress (the common case when both parties use the same TURN server).
//! - a remote peer that sends to the advertised relayed address reaches the relay through the
//!   ingress *from the ingress's address*, not its own: coturn's permission check (by peer IP)
//!   drops it unless `--server-relay` turns permissions off. Relay-to-peer datagrams leave home
//!   directly from the WAN address (an L4 forwarder only carries flows started towards it).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::services::{missing_listeners, Listen};
use crate::topology::{Role, Topology};
use crate::wait::{check, wait_until};

/// The programs the TURN tests run; all come with `coturn`.
pub const TOOLS: &[&str] = &["turnserver", "turnutils_uclient"];

/// The port `turnutils_uclient` sends to on a remote peer (`-e`), its default.
pub const PEER_PORT: u16 = 3480;

/// The TURN port (UDP and TCP).
pub const PORT: u16 = 3478;

/// The TURN-over-TLS port (with [`ServerConfig::tls`]).
pub const TLS_PORT: u16 = 5349;

/// Errors naming what is missing (install with `tests/netns/deps.sh`).
pub fn require() -> Result<()> {
    let on_path =
        |t: &str| std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(t).is_file()));
    let missing: Vec<&str> = TOOLS.iter().copied().filter(|t| !on_path(t)).collect();
    if !missing.is_empty() {
        bail!("missing {missing:?} (Debian package coturn): run tests/netns/deps.sh");
    }
    Ok(())
}

/// How to run `turnserver`.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Addresses it listens on (port [`PORT`], UDP and TCP).
    pub listen: Vec<Ipv4Addr>,
    /// The one address its relay sockets bind.
    pub relay_ip: Ipv4Addr,
    /// The relayed address advertised to clients (public part; see the module doc).
    pub external_ip: Option<Ipv4Addr>,
    /// The private part of `--external-ip PUBLIC/PRIVATE`: which relay address `external_ip`
    /// stands for (needed when coturn sits behind a forwarder on a LAN address).
    pub external_private: Option<Ipv4Addr>,
    pub min_port: u16,
    pub max_port: u16,
    pub user: String,
    pub password: String,
    /// `--use-auth-secret --static-auth-secret`: time-limited credentials (the TURN REST
    /// scheme; `turnutils_uclient -W`) instead of the static `user`/`password`.
    pub auth_secret: Option<String>,
    pub realm: String,
    /// (certificate, key): TLS on [`TLS_PORT`] besides plain [`PORT`].
    pub tls: Option<(PathBuf, PathBuf)>,
    /// `--server-relay`: no permission check on datagrams reaching the relay (non-standard).
    pub server_relay: bool,
}

impl ServerConfig {
    /// The command line; state (sqlite user db, pid file) goes under `dir`.
    pub fn argv(&self, dir: &Path) -> Vec<String> {
        let mut a: Vec<String> = ["turnserver", "-n", "--no-cli", "--no-dtls"].into_iter().map(String::from).collect();
        match &self.tls {
            Some((cert, key)) => a.extend([
                "--tls-listening-port".into(),
                TLS_PORT.to_string(),
                "--cert".into(),
                cert.display().to_string(),
                "--pkey".into(),
                key.display().to_string(),
            ]),
            None => a.push("--no-tls".into()),
        }
        for ip in &self.listen {
            a.extend(["--listening-ip".into(), ip.to_string()]);
        }
        a.extend(["--listening-port".into(), PORT.to_string()]);
        a.extend(["--relay-ip".into(), self.relay_ip.to_string()]);
        match (self.external_ip, self.external_private) {
            (Some(x), Some(p)) => a.extend(["--external-ip".into(), format!("{x}/{p}")]),
            (Some(x), None) => a.extend(["--external-ip".into(), x.to_string()]),
            _ => {}
        }
        a.extend(["--min-port".into(), self.min_port.to_string(), "--max-port".into(), self.max_port.to_string()]);
        match &self.auth_secret {
            Some(secret) => a.extend(["--use-auth-secret".into(), "--static-auth-secret".into(), secret.clone()]),
            None => a.extend(["--lt-cred-mech".into(), "--user".into(), format!("{}:{}", self.user, self.password)]),
        }
        a.extend(["--realm".into(), self.realm.clone()]);
        if self.server_relay {
            a.push("--server-relay".into());
        }
        a.extend(["--userdb".into(), dir.join("turndb").display().to_string()]);
        a.extend(["--pidfile".into(), dir.join("turnserver.pid").display().to_string()]);
        // Everything to stdout (the process guard keeps it in a file), no rollover; `-v` logs each
        // request (allocations, permissions, channel binds), not each relayed packet.
        a.extend(["--log-file".into(), "stdout".into(), "--simple-log".into(), "-v".into()]);
        a
    }
}

/// Starts `turnserver` in `role` (process `turnserver`) and waits until it listens on UDP and
/// TCP [`PORT`] and its relay sockets are ready.
pub fn start_server(t: &mut Topology, role: Role, cfg: &ServerConfig) -> Result<()> {
    require()?;
    let argv = cfg.argv(t.dir());
    t.spawn(role, "turnserver", &argv)?;
    let ns = t.ns(role).to_string();
    wait_until("turnserver listening", Duration::from_secs(15), Duration::from_millis(50), || {
        let p = t.proc_mut("turnserver")?;
        p.ensure_running()?;
        let missing = missing_listeners(&ns, &[Listen::Udp(PORT), Listen::Tcp(PORT)])?;
        check(missing.is_empty(), || format!("not listening on {missing:?}"))?;
        // Relay ports are set up after the listeners.
        check(p.stdout().contains("Total General servers"), || "relay not initialised yet".into())
    })
}

/// What `turnutils_uclient` reported at its end.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UclientReport {
    pub send_msgs: u64,
    pub recv_msgs: u64,
    pub lost: u64,
    pub lost_pct: f64,
    pub send_dropped: u64,
    pub rtt_avg_ms: f64,
    pub rtt_max_ms: f64,
}

/// Reads the closing lines of `turnutils_uclient` (coturn 4.6):
/// `start_mclient: tot_send_msgs=80, tot_recv_msgs=80`,
/// `Total lost packets 0 (0.000000%), total send dropped 0 (0.000000%)`,
/// `Average round trip delay 0.5 ms; min = 0 ms, max = 2 ms`.
pub fn parse_uclient(text: &str) -> Result<UclientReport> {
    let num_after = |line: &str, key: &str| -> Option<f64> {
        let rest = &line[line.find(key)? + key.len()..];
        let n: String = rest.trim_start().chars().take_while(|c| c.is_ascii_digit() || *c == '.').collect();
        n.parse().ok()
    };
    let mut r = UclientReport::default();
    let (mut totals, mut lost, mut rtt) = (false, false, false);
    for line in text.lines() {
        if line.contains("start_mclient: tot_send_msgs=") {
            r.send_msgs = num_after(line, "tot_send_msgs=").context("tot_send_msgs")? as u64;
            r.recv_msgs = num_after(line, "tot_recv_msgs=").context("tot_recv_msgs")? as u64;
            totals = true;
        } else if line.contains("Total lost packets") {
            r.lost = num_after(line, "Total lost packets").context("lost packets")? as u64;
            r.lost_pct = num_after(line, "(").unwrap_or(0.0);
            r.send_dropped = num_after(line, "total send dropped").context("send dropped")? as u64;
            lost = true;
        } else if line.contains("Average round trip delay") {
            r.rtt_avg_ms = num_after(line, "Average round trip delay").unwrap_or(0.0);
            r.rtt_max_ms = num_after(line, "max =").unwrap_or(0.0);
            rtt = true;
        }
    }
    if !(totals && lost && rtt) {
        bail!("turnutils_uclient printed no closing report");
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_closing_report() {
        let text = "6: : start_mclient: msz=4, tot_send_msgs=51, tot_recv_msgs=51, tot_send_bytes ~ 5100, tot_recv_bytes ~ 5100\n\
            6: : start_mclient: tot_send_msgs=80, tot_recv_msgs=79\n\
            6: : start_mclient: tot_send_bytes ~ 8000, tot_recv_bytes ~ 7900\n\
            6: : Total transmit time is 6\n\
            6: : Total lost packets 1 (1.250000%), total send dropped 0 (0.000000%)\n\
            6: : Average round trip delay 0.512500 ms; min = 0 ms, max = 3 ms\n";
        let r = parse_uclient(text).unwrap();
        assert_eq!((r.send_msgs, r.recv_msgs, r.lost, r.send_dropped), (80, 79, 1, 0));
        assert_eq!((r.lost_pct, r.rtt_avg_ms, r.rtt_max_ms), (1.25, 0.5125, 3.0));
        assert!(parse_uclient("0: : Total connect time is 1\n").is_err());
    }
}
