//! Listen specifications: an address with a port or an inclusive port range
//! (`0.0.0.0:443`, `[::]:49160-49200`). Parsed once at config time.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

/// An inclusive range of ports; a single port is a range of one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    pub fn single(port: u16) -> Self {
        Self { first: port, last: port }
    }
    pub fn is_single(&self) -> bool {
        self.first == self.last
    }
    pub fn len(&self) -> usize {
        usize::from(self.last - self.first) + 1
    }
    pub fn is_empty(&self) -> bool {
        false
    }
    pub fn contains(&self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }
    pub fn iter(&self) -> impl Iterator<Item = u16> {
        self.first..=self.last
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_single() {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

impl FromStr for PortRange {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let parse = |p: &str| p.trim().parse::<u16>().map_err(|_| format!("`{p}` is not a port number (0-65535)"));
        match s.split_once('-') {
            None => Ok(Self::single(parse(s)?)),
            Some((a, b)) => {
                let (first, last) = (parse(a)?, parse(b)?);
                if first > last || first == 0 {
                    return Err(format!("port range `{s}` must be ascending and start above 0"));
                }
                Ok(Self { first, last })
            }
        }
    }
}

/// `ADDRESS:PORT` or `ADDRESS:FIRST-LAST`; IPv6 addresses in brackets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ListenSpec {
    pub ip: IpAddr,
    pub ports: PortRange,
}

impl ListenSpec {
    /// Every socket address this spec binds, one per port.
    pub fn addrs(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.ports.iter().map(move |p| SocketAddr::new(self.ip, p))
    }
}

impl fmt::Display for ListenSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.ip {
            IpAddr::V4(ip) => write!(f, "{ip}:{}", self.ports),
            IpAddr::V6(ip) => write!(f, "[{ip}]:{}", self.ports),
        }
    }
}

impl FromStr for ListenSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (host, ports) = if let Some(rest) = s.strip_prefix('[') {
            let (h, p) =
                rest.split_once("]:").ok_or_else(|| format!("`{s}`: expected `[IPv6]:PORT` or `[IPv6]:FIRST-LAST`"))?;
            (h, p)
        } else {
            s.rsplit_once(':').ok_or_else(|| format!("`{s}`: expected `IP:PORT` or `IP:FIRST-LAST`"))?
        };
        let ip = host.parse::<IpAddr>().map_err(|_| format!("`{host}` in `{s}` is not an IP address"))?;
        let ports = ports.parse::<PortRange>().map_err(|e| format!("in `{s}`: {e}"))?;
        Ok(Self { ip, ports })
    }
}

/// Parse an IP address with an optional port (`203.0.113.10`, `203.0.113.10:8443`,
/// `2001:db8::1`, `[2001:db8::1]:8443`).
pub fn parse_host_port(s: &str) -> Result<(IpAddr, Option<u16>), String> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok((ip, None));
    }
    s.parse::<SocketAddr>()
        .map(|sa| (sa.ip(), Some(sa.port())))
        .map_err(|_| format!("`{s}` is not an IP address or IP:PORT"))
}

/// Parse a duration such as `500ms`, `2s`, `5m`.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("`{s}` is not a duration like `500ms` or `30s`: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_specs() {
        let s: ListenSpec = "0.0.0.0:443".parse().unwrap();
        assert_eq!(s.ports, PortRange::single(443));
        let s: ListenSpec = "[::]:49160-49200".parse().unwrap();
        assert!(s.ip.is_ipv6());
        assert_eq!(s.ports.len(), 41);
        assert_eq!(s.to_string(), "[::]:49160-49200");
        assert!("0.0.0.0".parse::<ListenSpec>().is_err());
        assert!("0.0.0.0:70000".parse::<ListenSpec>().is_err());
        assert!("0.0.0.0:10-5".parse::<ListenSpec>().is_err());
        assert!("nothost:80".parse::<ListenSpec>().is_err());
        assert!("[::1:80".parse::<ListenSpec>().is_err());
    }

    #[test]
    fn host_ports() {
        assert_eq!(parse_host_port("127.0.0.2").unwrap().1, None);
        assert_eq!(parse_host_port("127.0.0.2:81").unwrap().1, Some(81));
        assert_eq!(parse_host_port("[200::1]:81").unwrap().1, Some(81));
        assert!(parse_host_port("200::1").unwrap().0.is_ipv6());
        assert!(parse_host_port("home.example.org").is_err());
    }
}
