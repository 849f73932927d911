//! Config leaves shared by both binaries, parsed once at config time: listen specifications
//! (an address with a port or an inclusive port range: `0.0.0.0:443`, `[::]:49160-49200`),
//! addresses with optional ports, and durations bounded to a per-field range. Also the
//! saturating `deadline` helpers: validation bounds every configured duration, and instant
//! arithmetic saturates as a second line of defence (`Instant + Duration` panics on overflow).

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::time::{Duration, Instant};

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

/// `ADDRESS:PORT` or `ADDRESS:FIRST-LAST`; IPv6 addresses in brackets, and only they: an IPv4
/// address in brackets (`[127.0.0.1]:80`) or an IPv6 one without (`::1:80`, where the port
/// cannot be told from the address) is refused.
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
        match (s.starts_with('['), ip) {
            (true, IpAddr::V4(_)) => {
                return Err(format!("`{s}`: brackets are for IPv6 addresses only; write `{host}:{ports}`"))
            }
            (false, IpAddr::V6(_)) => return Err(format!("`{s}`: an IPv6 address goes in brackets, `[IPv6]:PORT`")),
            _ => {}
        }
        let ports = ports.parse::<PortRange>().map_err(|e| format!("in `{s}`: {e}"))?;
        Ok(Self { ip, ports })
    }
}

/// Parse an IP address with an optional port (`203.0.113.10`, `203.0.113.10:8443`,
/// `2001:db8::1`, `[2001:db8::1]:8443`). A port must be 1-65535: port 0 is not a destination.
pub fn parse_host_port(s: &str) -> Result<(IpAddr, Option<u16>), String> {
    if let Ok(ip) = parse_ip(s) {
        return Ok((ip, None));
    }
    let sa = s.parse::<SocketAddr>().map_err(|_| format!("`{s}` is not an IP address or IP:PORT"))?;
    if sa.port() == 0 {
        return Err(format!("`{s}`: port 0 is not a port (1-65535)"));
    }
    Ok((sa.ip(), Some(sa.port())))
}

/// Parse a bare IP address, or an IPv6 address in brackets (`[2001:db8::1]`). A lone or
/// unbalanced bracket (`[::1`, `::1]`) is refused rather than trimmed away.
pub fn parse_ip(s: &str) -> Result<IpAddr, String> {
    let bad = || format!("`{s}` is not an IP address");
    match s.strip_prefix('[') {
        Some(rest) => match rest.strip_suffix(']') {
            Some(inner) => inner.parse::<std::net::Ipv6Addr>().map(IpAddr::V6).map_err(|_| bad()),
            None => Err(bad()),
        },
        None => s.parse::<IpAddr>().map_err(|_| bad()),
    }
}

/// Parse a duration such as `500ms`, `2s`, `5m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("`{s}` is not a duration like `500ms` or `30s`: {e}"))
}

/// The closed range of durations one config field accepts. Every configured duration has
/// one: a value far outside it is a typo, and an unbounded one overflows instant arithmetic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurationRange {
    pub min: Duration,
    pub max: Duration,
}

impl DurationRange {
    pub const fn new(min: Duration, max: Duration) -> Self {
        Self { min, max }
    }

    /// Parse `s` and check it lies in the range; the error quotes the value and the range.
    pub fn parse(&self, s: &str) -> Result<Duration, String> {
        let d = parse_duration(s)?;
        if d < self.min || d > self.max {
            return Err(format!("`{s}` is out of range {self}"));
        }
        Ok(d)
    }
}

impl fmt::Display for DurationRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}..={}", humantime::format_duration(self.min), humantime::format_duration(self.max))
    }
}

/// Durations from config: milliseconds, seconds, hours and days, for the range tables.
pub const fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}
/// `n` seconds.
pub const fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}
/// `n` hours.
pub const fn hours(n: u64) -> Duration {
    Duration::from_secs(n * 3600)
}
/// `n` days.
pub const fn days(n: u64) -> Duration {
    Duration::from_secs(n * 86_400)
}

/// How far a saturated deadline lies: about 30 years, as tokio's own "far future", so that
/// the result can still be added to and compared without overflowing.
const FAR_FUTURE: Duration = Duration::from_secs(86_400 * 365 * 30);

/// `now + d`, saturating at a far-future instant instead of panicking on overflow.
pub fn deadline(now: Instant, d: Duration) -> Instant {
    now.checked_add(d).or_else(|| now.checked_add(FAR_FUTURE)).unwrap_or(now)
}

/// [`deadline`] for tokio's clock (which the paused test clock drives).
pub fn tokio_deadline(now: tokio::time::Instant, d: Duration) -> tokio::time::Instant {
    tokio::time::Instant::from_std(deadline(now.into_std(), d))
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
        // Brackets belong to IPv6 only, and IPv6 needs them.
        let e = "[127.0.0.1]:80".parse::<ListenSpec>().unwrap_err();
        assert!(e.contains("brackets are for IPv6") && e.contains("`127.0.0.1:80`"), "{e}");
        assert!("[127.0.0.1]:49160-49200".parse::<ListenSpec>().is_err());
        let e = "::1:80".parse::<ListenSpec>().unwrap_err();
        assert!(e.contains("goes in brackets"), "{e}");
        assert!("2001:db8::1:80".parse::<ListenSpec>().is_err());
        assert_eq!("[::1]:80".parse::<ListenSpec>().unwrap().to_string(), "[::1]:80");
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
        assert!(parse_host_port("127.0.0.2:0").is_err());
        assert!(parse_host_port("[::1").is_err());
        assert!(parse_host_port("[::1]:70000").is_err());
        assert_eq!(parse_host_port("[::1]").unwrap(), ("::1".parse().unwrap(), None));
    }

    #[test]
    fn strict_ips() {
        assert!(parse_ip("[::1").is_err());
        assert!(parse_ip("::1]").is_err());
        assert!(parse_ip("[127.0.0.1]").is_err());
        assert!(parse_ip("[::1]").unwrap().is_ipv6());
        assert!(parse_ip("192.0.2.1").unwrap().is_ipv4());
    }

    #[test]
    fn duration_ranges() {
        let r = DurationRange::new(ms(50), hours(1));
        assert_eq!(r.parse("50ms"), Ok(ms(50)));
        assert_eq!(r.parse("1h"), Ok(hours(1)));
        assert!(r.parse("49ms").unwrap_err().contains("out of range 50ms..=1h"));
        assert!(r.parse("1ns").is_err());
        assert!(r.parse("3601s").is_err());
        assert!(r.parse("10000000000000000000s").is_err());
        assert!(r.parse("soon").is_err());
    }

    #[test]
    fn deadlines_saturate() {
        let now = Instant::now();
        assert_eq!(deadline(now, secs(1)), now + secs(1));
        let far = deadline(now, Duration::MAX);
        assert!(far > now + days(365));
        // Still usable: adding to or comparing with it does not overflow.
        assert!(deadline(far, Duration::MAX) >= far);
        let t = tokio::time::Instant::now();
        assert!(tokio_deadline(t, Duration::MAX) > t);
    }
}
