//! Health of one way to a backend (an ingress path, an upstream), sans-io: rise/fall
//! hysteresis over probes and real connects, failure and latency averages, and the factor
//! that scales the path's weight. Plain data; the owner serialises access and publishes
//! what the data path reads (atomics) after each change.

use std::time::Duration;

/// How a probe or a connect went.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Outcome {
    Ok {
        latency: Duration,
    },
    Failed,
    /// This process ran out of descriptors, memory or local ports (EMFILE, ENFILE, ENOBUFS,
    /// ENOMEM, EADDRNOTAVAIL) before it could try: says nothing about the path, so it changes
    /// no state.
    Local,
}

/// Whether `e` says this process ran out of descriptors, memory or local ports
/// ([`Outcome::Local`]), not that the peer failed: accept loops back off on it, and connects
/// and probes that meet it change no path's or upstream's health. EADDRNOTAVAIL is a connect
/// that found no free local port towards that address and port (the ephemeral range used up,
/// a host without the ingress role's sysctls), or no usable source address: this host's.
pub fn out_of_resources(e: &std::io::Error) -> bool {
    use rustix::io::Errno;
    matches!(
        Errno::from_io_error(e),
        Some(Errno::MFILE | Errno::NFILE | Errno::NOBUFS | Errno::NOMEM | Errno::ADDRNOTAVAIL)
    )
}

/// Whether an error or any of its causes is an I/O error that [`out_of_resources`] says is
/// this process's own shortage: an HTTP client's connect error wraps the socket's error.
pub fn caused_by_shortage(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    std::iter::from_fn(|| {
        let c = cause?;
        cause = c.source();
        Some(c)
    })
    .any(|c| c.downcast_ref::<std::io::Error>().is_some_and(out_of_resources))
}

/// Why `path` cannot be an HTTP health check's request path, or None: it starts with `/`,
/// has no spaces or control characters (it goes into the request line as written) and parses
/// as a URI path.
pub fn check_path_problem(path: &str) -> Option<String> {
    if !path.starts_with('/') || path.chars().any(|c| c.is_ascii_whitespace() || c.is_ascii_control()) {
        // Escaped: a CR or LF printed as it is would break the error's line.
        Some(format!("`{}` must start with / and have no spaces", path.escape_debug()))
    } else if path.parse::<http::uri::PathAndQuery>().is_err() {
        Some(format!("`{path}` is not a valid URI path (percent-encode <, > and the like)"))
    } else {
        None
    }
}

/// Why `host` cannot be an HTTP health check's Host header, or None.
pub fn check_host_problem(host: &str) -> Option<String> {
    let printable = host.bytes().all(|b| b.is_ascii_graphic());
    (host.is_empty() || !printable || http::HeaderValue::from_str(host).is_err())
        .then(|| format!("`{}` is not a valid Host header", host.escape_debug()))
}

/// A change of up/down state the caller should log and publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    WentUp,
    WentDown,
}

/// Where an outcome came from: active probes are the authority on bringing a path back;
/// passive failures may take a path down only when it is not the last usable one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Probe,
    Traffic,
}

/// Health of one path. Plain data; the owner serialises access.
#[derive(Debug, Clone)]
pub struct HealthState {
    pub up: bool,
    ok_run: u32,
    fail_run: u32,
    /// Exponentially weighted failure ratio, 0.0..=1.0.
    pub fail_avg: f64,
    /// Exponentially weighted connect latency of successful attempts.
    pub latency_avg: Option<Duration>,
}

impl Default for HealthState {
    fn default() -> Self {
        // Start up, like HAProxy: a fresh process serves at once and the first failed
        // checks take a dead path out.
        Self { up: true, ok_run: 0, fail_run: 0, fail_avg: 0.0, latency_avg: None }
    }
}

impl HealthState {
    /// Record one outcome. `may_go_down` is false when this is the last usable path and
    /// the evidence is a single real connect, not the active checks.
    pub fn record(
        &mut self,
        outcome: Outcome,
        source: Source,
        rise: u32,
        fall: u32,
        may_go_down: bool,
    ) -> Option<Transition> {
        let alpha = alpha(source);
        match outcome {
            Outcome::Ok { latency } => {
                self.fail_avg *= 1.0 - alpha;
                self.latency_avg = Some(match self.latency_avg {
                    None => latency,
                    Some(avg) => avg.mul_f64(1.0 - alpha * 1.5).saturating_add(latency.mul_f64(alpha * 1.5)),
                });
                self.fail_run = 0;
                self.ok_run = self.ok_run.saturating_add(1);
                // Only probes bring a path back: a lucky connect is not a recovery.
                if !self.up && (source == Source::Probe || self.ok_run >= rise.saturating_mul(2)) && self.ok_run >= rise
                {
                    self.up = true;
                    return Some(Transition::WentUp);
                }
            }
            Outcome::Failed => {
                self.fail_avg = self.fail_avg * (1.0 - alpha) + alpha;
                self.ok_run = 0;
                self.fail_run = self.fail_run.saturating_add(1);
                let allowed = source == Source::Probe || may_go_down;
                if self.up && self.fail_run >= fall && allowed {
                    self.up = false;
                    return Some(Transition::WentDown);
                }
            }
            Outcome::Local => {}
        }
        None
    }

    /// A real attempt that failed while others on the path got through after it began: the
    /// path delivers worse (the failure average moves), but this failure does not join the
    /// run of failures a fall needs. Counted in it, one such and one lost probe took a path
    /// with 5 % loss down while most of its connects got through.
    pub fn record_outlived_failure(&mut self) {
        let alpha = alpha(Source::Traffic);
        self.fail_avg = self.fail_avg * (1.0 - alpha) + alpha;
    }

    /// Between states: up with failures pending, or down with successes pending.
    pub fn transitional(&self) -> bool {
        (self.up && self.fail_run > 0) || (!self.up && self.ok_run > 0)
    }

    /// Share multiplier in (0, 1]: falls with the failure ratio and with connect latency
    /// above the best path's (`best` is the lowest latency among the pool's up paths).
    pub fn factor(&self, best: Option<Duration>) -> f64 {
        let loss = (1.0 - self.fail_avg).clamp(0.0, 1.0).powi(2);
        // A floor of 2 ms keeps sub-millisecond jitter on fast links from mattering.
        let floor = Duration::from_millis(2);
        let lat = match (best, self.latency_avg) {
            (Some(best), Some(own)) => ((best + floor).as_secs_f64() / (own + floor).as_secs_f64()).clamp(0.1, 1.0),
            _ => 1.0,
        };
        (loss * lat).clamp(0.02, 1.0)
    }
}

/// How far one outcome moves the averages: traffic gives many more samples than probes, so
/// each moves them less.
fn alpha(source: Source) -> f64 {
    match source {
        Source::Probe => 0.25,
        Source::Traffic => 0.05,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: Outcome = Outcome::Ok { latency: Duration::from_millis(1) };

    #[test]
    fn this_hosts_shortages_are_told_from_the_peers_failures() {
        use rustix::io::Errno;
        for local in [Errno::MFILE, Errno::NFILE, Errno::NOBUFS, Errno::NOMEM, Errno::ADDRNOTAVAIL] {
            assert!(out_of_resources(&local.into()), "{local}");
        }
        for peer in [Errno::CONNREFUSED, Errno::TIMEDOUT, Errno::HOSTUNREACH, Errno::NETUNREACH, Errno::CONNRESET] {
            assert!(!out_of_resources(&peer.into()), "{peer}");
        }
    }

    #[test]
    fn fall_and_rise_hysteresis() {
        let mut s = HealthState::default();
        assert_eq!(s.record(Outcome::Failed, Source::Probe, 2, 2, true), None);
        assert_eq!(s.record(Outcome::Failed, Source::Probe, 2, 2, true), Some(Transition::WentDown));
        assert_eq!(s.record(OK, Source::Probe, 2, 2, true), None);
        assert_eq!(s.record(Outcome::Failed, Source::Probe, 2, 2, true), None);
        assert_eq!(s.record(OK, Source::Probe, 2, 2, true), None);
        assert_eq!(s.record(OK, Source::Probe, 2, 2, true), Some(Transition::WentUp));
    }

    #[test]
    fn last_usable_path_survives_traffic_failures() {
        let mut s = HealthState::default();
        for _ in 0..10 {
            assert_eq!(s.record(Outcome::Failed, Source::Traffic, 2, 2, false), None);
        }
        assert!(s.up);
        // ...but probes still take it down.
        assert_eq!(s.record(Outcome::Failed, Source::Probe, 2, 2, false), Some(Transition::WentDown));
    }

    #[test]
    fn traffic_alone_needs_more_to_bring_a_path_back() {
        let mut s = HealthState { up: false, ..Default::default() };
        assert_eq!(s.record(OK, Source::Traffic, 2, 2, true), None);
        assert_eq!(s.record(OK, Source::Traffic, 2, 2, true), None);
        assert_eq!(s.record(OK, Source::Traffic, 2, 2, true), None);
        assert_eq!(s.record(OK, Source::Traffic, 2, 2, true), Some(Transition::WentUp));
    }

    #[test]
    fn factor_falls_with_failures_and_latency() {
        let mut s = HealthState::default();
        s.record(Outcome::Ok { latency: Duration::from_millis(1) }, Source::Probe, 2, 2, true);
        assert!((s.factor(Some(Duration::from_millis(1))) - 1.0).abs() < 1e-9);
        let clean = s.factor(None);
        for _ in 0..3 {
            s.record(Outcome::Failed, Source::Traffic, 2, 100, true);
        }
        let lossy = s.factor(None);
        assert!(lossy < clean && lossy > 0.5, "{lossy}");
        let mut slow = HealthState::default();
        slow.record(Outcome::Ok { latency: Duration::from_millis(40) }, Source::Probe, 2, 2, true);
        let f = slow.factor(Some(Duration::from_millis(1)));
        assert!((0.02..0.2).contains(&f), "{f}");
    }
}
