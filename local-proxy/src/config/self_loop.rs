//! An upstream that leads back to this local proxy: an address of this host on a port it
//! listens on (HTTPS, HTTP or a stream's, on a WAN address or the mesh address). Each
//! request or connection sent there comes back in and is sent there again, until the
//! connection limit is spent and real clients are refused; so such a config is refused
//! (`local-proxy check`, start-up and reload alike). Upstreams given by name are not looked
//! up here, and neither is the mesh address of `listen = "auto"` (learnt at start-up).

use std::iter::once;
use std::net::{IpAddr, SocketAddr};

use shared::own_addrs::lands_on;
use shared::ports::{parse_ip, ListenSpec, PortRange};

use super::{Config, MeshListen, Problems, Protocol, UpstreamSet};

/// What `config` has the local proxy listen on, as `crate::listeners::plan` binds it.
fn listening(config: &Config) -> Vec<(Protocol, ListenSpec)> {
    let mesh = match config.mesh.listen {
        MeshListen::Address(ip) => Some(ip),
        MeshListen::Off | MeshListen::Auto => None,
    };
    let mut out = Vec::new();
    for ip in config.wan.addresses.iter().copied().chain(mesh) {
        for port in [config.http.https_port, config.http.http_port] {
            out.push((Protocol::Tcp, ListenSpec { ip, ports: PortRange::single(port) }));
        }
        out.extend(config.streams.iter().map(|s| (s.protocol, ListenSpec { ip, ports: s.listen_ports })));
    }
    out
}

/// Push a problem for every site, route or stream upstream of `config` that leads back to
/// it. `own`: whether an address is this host's (`shared::own_addrs::is_own`; asked only
/// about an upstream on a port of a listener bound to the unspecified address).
pub(super) fn check(c: &mut Problems, config: &Config, own: fn(IpAddr) -> bool) {
    let listeners = listening(config);
    let lands = |ip: IpAddr, protocol: Protocol, ports: PortRange| {
        lands_on(ip, &protocol, ports, listeners.iter().map(|(p, s)| (p, s)), own).map(|(_, at)| at)
    };
    for (i, site) in config.sites.iter().enumerate() {
        let routes = site.routes.iter().enumerate();
        let sets: Vec<(String, &UpstreamSet<super::Upstream>)> = once((format!("site[{i}]"), &site.upstreams))
            .chain(routes.filter_map(|(j, r)| Some((format!("site[{i}].route[{j}]"), r.upstreams.as_ref()?))))
            .collect();
        for (prefix, set) in sets {
            for m in &set.members {
                let a = &m.target.authority;
                let Ok(ip) = parse_ip(a.host()) else { continue };
                let port = a.port_u16().unwrap_or(if m.target.tls { 443 } else { 80 });
                if let Some(at) = lands(ip, Protocol::Tcp, PortRange::single(port)) {
                    c.push(format!("{prefix}.upstream"), message(&m.target.to_string(), at, Protocol::Tcp, "requests"));
                }
            }
        }
    }
    for (i, s) in config.streams.iter().enumerate() {
        for m in &s.upstreams.members {
            let t = &m.target;
            let to = |listen_port| t.addr(s.listen_ports, listen_port).port();
            let (first, last) = (to(s.listen_ports.first), to(s.listen_ports.last));
            if let Some(at) = lands(t.ip, s.protocol, PortRange { first, last }) {
                let what = if s.protocol == Protocol::Tcp { "connections" } else { "datagrams" };
                c.push(
                    format!("stream[{i}].upstream"),
                    message(&SocketAddr::new(t.ip, first).to_string(), at, s.protocol, what),
                );
            }
        }
    }
}

fn message(upstream: &str, at: SocketAddr, protocol: Protocol, what: &str) -> String {
    format!(
        "`{upstream}` leads back to this local proxy: it listens on {at} ({protocol}), so {what} sent there \
         would come back in and be sent there again, in a loop; give the LAN service's address and port"
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::{from_toml_str, ConfigError};

    const BASE: &str = "[wan]\naddresses = [\"192.168.1.10\"]\ntrusted_ingress = [\"198.51.100.1\"]\n[tls]\ncertbot_live_dir = \"/etc/letsencrypt/live\"\n";

    fn problems(extra: &str) -> Vec<(String, String)> {
        match from_toml_str(&format!("{BASE}{extra}")) {
            Ok(_) => Vec::new(),
            Err(ConfigError::Invalid(p)) => p.iter().map(|e| (e.field.clone(), e.message.clone())).collect(),
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn a_site_upstream_on_the_proxys_own_https_listener_is_refused() {
        let p = problems("[[site]]\nhost = \"a.example.org\"\nupstream = \"https://192.168.1.10\"\n");
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].0, "site[0].upstream");
        assert!(p[0].1.contains("192.168.1.10:443 (tcp)"), "{}", p[0].1);
        // The same host on the service's own port is the usual case.
        assert!(problems("[[site]]\nhost = \"a.example.org\"\nupstream = \"http://192.168.1.10:8080\"\n").is_empty());
        // A route's own upstream, and the plain HTTP listener.
        let p = problems(
            "[[site]]\nhost = \"a.example.org\"\nupstream = \"http://192.168.1.20:8080\"\n\
             [[site.route]]\npath_prefix = \"/api\"\nupstream = [\"http://192.168.1.20:9000\", \"http://192.168.1.10\"]\n",
        );
        assert_eq!(p.iter().map(|(f, _)| f.as_str()).collect::<Vec<_>>(), ["site[0].route[0].upstream"], "{p:?}");
        assert!(p[0].1.contains("192.168.1.10:80 (tcp)"), "{}", p[0].1);
    }

    #[test]
    fn a_stream_forwarded_to_the_proxys_own_address_is_refused() {
        // The home server's own LAN address instead of the service's: port N goes to N, here.
        let p = problems("[[stream]]\nname = \"wazuh\"\nlisten = \"1514\"\nupstream = \"192.168.1.10\"\n");
        assert_eq!(p.iter().map(|(f, _)| f.as_str()).collect::<Vec<_>>(), ["stream[0].upstream"], "{p:?}");
        assert!(p[0].1.contains("192.168.1.10:1514 (tcp)") && p[0].1.contains("connections"), "{}", p[0].1);
        // A relay range mapped onto another stream's ports, over UDP.
        let p = problems(
            "[[stream]]\nname = \"turn\"\nlisten = \"3478/udp\"\nupstream = \"192.168.1.30\"\n\
             [[stream]]\nname = \"relay\"\nlisten = \"49160-49170/udp\"\nupstream = \"192.168.1.10:3470-3480\"\n",
        );
        assert_eq!(p.iter().map(|(f, _)| f.as_str()).collect::<Vec<_>>(), ["stream[1].upstream"], "{p:?}");
        assert!(p[0].1.contains("(udp)") && p[0].1.contains("datagrams"), "{}", p[0].1);
        // The same address over the other transport is another socket.
        assert!(problems(
            "[[stream]]\nname = \"dns\"\nlisten = \"1514/udp\"\nupstream = \"192.168.1.10:1600\"\n\
             [[stream]]\nname = \"w\"\nlisten = \"1600/tcp\"\nupstream = \"192.168.1.40\"\n"
        )
        .is_empty());
    }

    #[test]
    fn loopback_counts_as_this_host_behind_a_wildcard_listener() {
        let wild = "[wan]\naddresses = [\"0.0.0.0\"]\ntrusted_ingress = [\"198.51.100.1\"]\n[tls]\ncertbot_live_dir = \"/etc/letsencrypt/live\"\n";
        let text = format!("{wild}[[site]]\nhost = \"a.example.org\"\nupstream = \"http://127.0.0.1\"\n");
        match from_toml_str(&text) {
            Err(ConfigError::Invalid(p)) => assert!(p.iter().any(|e| e.field == "site[0].upstream"), "{p:?}"),
            other => panic!("accepted: {other:?}"),
        }
    }
}
