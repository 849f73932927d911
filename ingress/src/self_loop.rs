//! A path that leads back to this ingress: its address is one of this host's own and a port
//! its traffic goes to is one this ingress listens on. Every connection, UDP datagram or
//! health probe sent there comes back in as a new client, so the probes measure this ingress
//! instead of home, and what is relayed there is relayed there again: one probe grows into
//! thousands of connections a second until the connection limit (or the flow budget) is
//! spent and real clients are refused (measured: 4,652 open after 1.5 s). A config naming
//! such an address is refused; a path's name that resolves to one (a dynamic-DNS record
//! pointed at the cloud node instead of home) has that address skipped (`resolve`).

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use shared::own_addrs::lands_on;
use shared::ports::{ListenSpec, PortRange};

use crate::config::{Protocol, ServiceConfig};

/// Where one pool's traffic could land on this host, sans-io: the ports its traffic goes to,
/// and this ingress's listeners.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OwnPorts {
    /// What the pool sends, unless a path fixes the port: each service's upstream port, or
    /// the ports it listens on (port N forwards to N); and the health probes.
    sends: Vec<(Protocol, PortRange)>,
    listeners: Vec<Listener>,
}

#[derive(Debug, Clone, PartialEq)]
struct Listener {
    service: String,
    protocol: Protocol,
    spec: ListenSpec,
}

/// A path address that leads back, and the listener it would land on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loop {
    pub service: String,
    pub protocol: Protocol,
    pub listener: SocketAddr,
}

impl fmt::Display for Loop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let proto = match self.protocol {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        };
        write!(
            f,
            "it is an address of this host and service `{}` listens on {} ({proto}): what this pool \
             sends there (traffic or health probes) would come back into this ingress instead of \
             reaching home, where relaying it again loops until the connection limit is spent; \
             give home's address",
            self.service, self.listener
        )
    }
}

impl OwnPorts {
    /// For pool `pool` (probed on `health_port`) among `services`. Port 0 (any free port,
    /// tests) is left out: what it binds is not known here.
    pub fn for_pool(pool: &str, health_port: u16, services: &[ServiceConfig]) -> Self {
        let mut sends = Vec::new();
        if health_port != 0 {
            sends.push((Protocol::Tcp, PortRange::single(health_port)));
        }
        let mut listeners = Vec::new();
        for s in services {
            let live = s.listen.iter().filter(|l| l.ports.first != 0);
            if s.pool == pool || s.routes.iter().any(|r| r.pool == pool) {
                match s.upstream_port {
                    Some(port) => sends.push((s.protocol, PortRange::single(port))),
                    None => sends.extend(live.clone().map(|l| (s.protocol, l.ports))),
                }
            }
            listeners.extend(live.map(|&spec| Listener { service: s.name.clone(), protocol: s.protocol, spec }));
        }
        Self { sends, listeners }
    }

    /// Whether sending this pool's traffic to `ip` (on `fixed_port` if the path fixes one)
    /// would land on one of this ingress's listeners. `own` says whether an address is this
    /// host's (`shared::own_addrs::is_own`); asked at most once, and only for a wildcard
    /// listener on a port the traffic goes to.
    pub fn leads_back(&self, ip: IpAddr, fixed_port: Option<u16>, own: impl FnOnce(IpAddr) -> bool) -> Option<Loop> {
        let mut own = Some(own);
        let mut known = None;
        let mut is_own = |ip| *known.get_or_insert_with(|| own.take().is_some_and(|f| f(ip)));
        self.sends.iter().find_map(|&(protocol, sends)| {
            let sends = fixed_port.map(PortRange::single).unwrap_or(sends);
            let listeners = self.listeners.iter().map(|l| (&l.protocol, &l.spec));
            let (i, listener) = lands_on(ip, &protocol, sends, listeners, &mut is_own)?;
            Some(Loop { service: self.listeners[i].service.clone(), protocol, listener })
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn own_ports(services: &str, pool: &str) -> OwnPorts {
        // Home is on TEST-NET-3, which is never this host's, so the config itself passes.
        let text = format!("[pool.home]\npaths = [{{ name = \"wan1\", address = \"203.0.113.9\" }}]\n{services}");
        let c = Config::from_toml(&text).unwrap();
        let p = &c.pools[pool];
        OwnPorts::for_pool(pool, p.health.port, &c.services)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn an_own_address_on_a_port_the_pool_sends_to_is_a_loop() {
        let own = own_ports(
            "[[service]]\nname = \"web\"\nlisten = [\"0.0.0.0:8080\", \"[::]:8080\"]\npool = \"home\"\n\
             [[service]]\nname = \"turn\"\nlisten = [\"0.0.0.0:49160-49200\"]\nprotocol = \"udp\"\npool = \"home\"\n",
            "home",
        );
        let l = own.leads_back(ip("192.0.2.1"), None, |_| true).unwrap();
        assert_eq!((l.service.as_str(), l.listener), ("web", "0.0.0.0:8080".parse().unwrap()));
        assert_eq!(own.leads_back(ip("::1"), None, |_| true).unwrap().listener, "[::]:8080".parse().unwrap());
        // Not this host's: home.
        assert_eq!(own.leads_back(ip("192.0.2.1"), None, |_| false), None);
        // A path that fixes its port sends everything there: into the relay range, a loop;
        // elsewhere, none.
        let l = own.leads_back(ip("127.0.0.1"), Some(49170), |_| true).unwrap();
        assert_eq!((l.service.as_str(), l.protocol), ("turn", Protocol::Udp));
        assert_eq!(own.leads_back(ip("127.0.0.1"), Some(9000), |_| true), None);
    }

    #[test]
    fn a_listener_on_one_address_takes_only_that_address() {
        let own = own_ports("[[service]]\nname = \"web\"\nlisten = [\"127.0.0.1:8080\"]\npool = \"home\"\n", "home");
        assert!(own.leads_back(ip("127.0.0.1"), None, |_| panic!("not asked: the listener names it")).is_some());
        assert!(own.leads_back(ip("::ffff:127.0.0.1"), None, |_| true).is_some());
        assert_eq!(own.leads_back(ip("127.0.0.2"), None, |_| true), None);
    }

    #[test]
    fn upstream_ports_health_probes_and_routes_count() {
        // The service forwards 80 to 8080 at home: the pool sends to 8080 (and probes it,
        // by default), which this host does not listen on ...
        let service = "[[service]]\nname = \"web\"\nlisten = [\"0.0.0.0:80\"]\nupstream_port = 8080\npool = \"home\"\n";
        assert_eq!(own_ports(service, "home").leads_back(ip("127.0.0.1"), None, |_| true), None);
        // ... unless the probes go to 80: they would reach this ingress, not home.
        let own = own_ports(&format!("[pool.home.health]\nport = 80\n{service}"), "home");
        let l = own.leads_back(ip("127.0.0.1"), None, |_| true).unwrap();
        assert_eq!(l.listener, "0.0.0.0:80".parse().unwrap(), "the health probe's port");
        // A pool reached through an SNI route sends to the service's ports too.
        let own = own_ports(
            "[pool.other]\npaths = [{ name = \"x\", address = \"203.0.113.10\" }]\n\
             [pool.other.health]\nport = 9\n\
             [[service]]\nname = \"tls\"\nlisten = [\"0.0.0.0:443\"]\nmode = \"sni\"\npool = \"home\"\n\
             routes = [{ names = [\"a.example.org\"], pool = \"other\" }]\n",
            "other",
        );
        assert_eq!(own.leads_back(ip("127.0.0.1"), None, |_| true).unwrap().service, "tls");
    }

    #[test]
    fn any_free_port_is_left_out() {
        let own = own_ports(
            "[pool.home.health]\nport = 9\n[[service]]\nname = \"web\"\nlisten = [\"127.0.0.1:0\"]\npool = \"home\"\n",
            "home",
        );
        assert_eq!(own.leads_back(ip("127.0.0.1"), None, |_| true), None);
    }
}
