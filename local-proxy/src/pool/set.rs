//! Every pool of one config generation, by site host and stream name, and their check tasks.
//! A reload builds the next generation from the previous one (members that stay keep their
//! state), stops the old checks and starts the new ones.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use http::{HeaderValue, Uri};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::warn;

use super::probe::Probe;
use super::{checks, Owner, Pool};
use crate::config::{Check, Config, Protocol};
use crate::http::upstream;

/// The pools of one config generation.
#[derive(Debug)]
pub struct Pools {
    /// The config they were built from: member i of a pool is upstream i of its site, route
    /// or stream in this one, not necessarily in the one a reload stores next.
    config: Arc<Config>,
    sites: HashMap<String, Arc<Pool>>,
    /// Routes with an upstream of their own, by [`route_pool_name`].
    routes: HashMap<String, Arc<Pool>>,
    streams: HashMap<String, Arc<Pool>>,
    /// Stops this generation's check tasks.
    checks: Mutex<Option<CancellationToken>>,
}

impl Pools {
    /// Pools for `config`, keeping the member state of `previous` where the same site or
    /// stream still has the same upstream.
    pub fn build(config: &Arc<Config>, previous: Option<&Pools>) -> Self {
        let mut pools = Pools {
            config: config.clone(),
            sites: HashMap::new(),
            routes: HashMap::new(),
            streams: HashMap::new(),
            checks: Mutex::new(None),
        };
        for site in &config.sites {
            let members = site.upstreams.members.iter().map(|m| (m.target.to_string(), m.weight, m.backup));
            let prev = previous.and_then(|p| p.sites.get(&site.host)).map(|p| &**p);
            let u = &site.upstreams;
            let pool = Pool::new(Owner::Site, &site.host, members, u.balance, u.health.clone(), u.critical, prev);
            pools.sites.insert(site.host.clone(), Arc::new(pool));
            for route in &site.routes {
                let Some(u) = &route.upstreams else { continue };
                let name = route_pool_name(&site.host, &route.name);
                let members = u.members.iter().map(|m| (m.target.to_string(), m.weight, m.backup));
                let prev = previous.and_then(|p| p.routes.get(&name)).map(|p| &**p);
                let pool = Pool::new(Owner::Site, &name, members, u.balance, u.health.clone(), u.critical, prev);
                pools.routes.insert(name, Arc::new(pool));
            }
        }
        for stream in &config.streams {
            let members = stream.upstreams.members.iter().map(|m| (m.target.to_string(), m.weight, m.backup));
            let prev = previous.and_then(|p| p.streams.get(&stream.name)).map(|p| &**p);
            let u = &stream.upstreams;
            let pool = Pool::new(Owner::Stream, &stream.name, members, u.balance, u.health.clone(), u.critical, prev);
            pools.streams.insert(stream.name.clone(), Arc::new(pool));
        }
        pools
    }

    pub fn site(&self, host: &str) -> Option<&Arc<Pool>> {
        self.sites.get(host)
    }

    /// The pool of a route with its own upstream (`None` for a route using its site's).
    pub fn route(&self, host: &str, route: &str) -> Option<&Arc<Pool>> {
        self.routes.get(&route_pool_name(host, route))
    }

    pub fn stream(&self, name: &str) -> Option<&Arc<Pool>> {
        self.streams.get(name)
    }

    /// The config these pools pair with: a connection that takes its stream's settings from
    /// here and its pool from the same `Pools` cannot pair a reload's pool with the config
    /// before it (read apart, a reload between the two reads could, and member i would be
    /// sent to the old config's upstream i).
    pub fn config(&self) -> &Arc<Config> {
        &self.config
    }

    /// Register every pool's series: this generation goes in (the start, or a reload that is
    /// applied; a refused one never calls it).
    pub fn publish(&self) {
        for pool in self.iter() {
            pool.publish();
        }
    }

    /// Whether `upstream` is a member of the pool that series name by its owner's label
    /// (`site`, for a route's own pool too, or `stream`) and `name`.
    pub fn runs(&self, owner: &str, name: &str, upstream: &str) -> bool {
        let pool = match owner {
            "site" => self.sites.get(name).or_else(|| self.routes.get(name)),
            "stream" => self.streams.get(name),
            _ => None,
        };
        pool.is_some_and(|p| p.members.iter().any(|m| *m.label == *upstream))
    }

    /// This generation replaces `previous`: the runtime weight overrides whose weight the
    /// config changed end now ([`Pool::end_changed_overrides`]).
    pub fn take_over(&self, previous: &Pools) {
        let sets =
            [(&self.sites, &previous.sites), (&self.routes, &previous.routes), (&self.streams, &previous.streams)];
        for (new, old) in sets {
            for (key, pool) in new {
                if let Some(before) = old.get(key) {
                    pool.end_changed_overrides(before);
                }
            }
        }
    }

    /// Every pool, sites first (status pages, the admin API).
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Pool>> {
        self.sites.values().chain(self.routes.values()).chain(self.streams.values())
    }

    /// The first `critical` site or stream with no usable upstream, as "site NAME" /
    /// "stream NAME": while there is one, the proxy answers its own health probes unhealthy.
    pub fn critical_down(&self) -> Option<String> {
        let mut down: Vec<&Arc<Pool>> = self.iter().filter(|p| p.critical && !p.any_usable()).collect();
        down.sort_by(|a, b| a.name.cmp(&b.name));
        down.first().map(|p| format!("{} {} has no healthy upstream", p.owner.label(), p.name))
    }

    /// Whether every pool with active checks has finished its first round (READY=1 waits).
    pub fn probed(&self) -> bool {
        self.iter().all(|p| p.probed())
    }

    /// Start the active checks configured in `config` (children of `parent`, on `tasks`).
    pub fn start_checks(&self, config: &Config, tasks: &TaskTracker, parent: &CancellationToken) {
        let stop = parent.child_token();
        let sets = config.sites.iter().flat_map(|site| {
            let own = std::iter::once((site, &site.upstreams, self.sites.get(&site.host)));
            let routes = site.routes.iter().filter_map(move |r| {
                let u = r.upstreams.as_ref()?;
                Some((site, u, self.routes.get(&route_pool_name(&site.host, &r.name))))
            });
            own.chain(routes)
        });
        for (site, set, pool) in sets {
            let Check::Http { path, host, status } = &set.health.check else { continue };
            let Some(pool) = pool else { continue };
            // The site's own TLS settings, but a fresh connection per probe: a probe must
            // see a refused connect or a bad certificate, not a pooled connection's past.
            let client = match upstream::client(site, config.http.upstream_connect_timeout, false) {
                Ok(c) => Arc::new(c),
                Err(e) => {
                    warn!(site = %site.host, error = %e, "health checks off: no client");
                    continue;
                }
            };
            let host = host.as_deref().unwrap_or(&site.host);
            let Ok(host) = HeaderValue::from_str(host) else { continue };
            let probes = set
                .members
                .iter()
                .filter_map(|m| {
                    let uri = format!("{}{path}", m.target).parse::<Uri>().ok()?;
                    Some(Probe::Http { client: client.clone(), uri, host: host.clone(), status: status.clone() })
                })
                .collect::<Vec<_>>();
            if probes.len() == pool.members.len() {
                pool.mark_checked();
                tasks.spawn(checks::run(pool.clone(), probes, stop.clone()));
            } else {
                // Validation parses the path; said, not silent, should anything still fail.
                warn!(site = %site.host, %path, "health checks off: a probe URI does not parse");
            }
        }
        for stream in &config.streams {
            let Some(pool) = self.streams.get(&stream.name) else { continue };
            // A range is checked on its first port.
            let first = |i: usize| stream.upstream_for(i, stream.listen_ports.first);
            let probes: Vec<Probe> = match (&stream.upstreams.health.check, stream.protocol) {
                (Check::Tcp, Protocol::Tcp) => (0..pool.members.len()).map(|i| Probe::Tcp(first(i))).collect(),
                (Check::Udp { send, expect }, Protocol::Udp) => (0..pool.members.len())
                    .map(|i| Probe::Udp {
                        addr: first(i),
                        send: Arc::from(send.as_slice()),
                        expect: expect.as_deref().map(Arc::from),
                    })
                    .collect(),
                _ => continue,
            };
            pool.mark_checked();
            tasks.spawn(checks::run(pool.clone(), probes, stop.clone()));
        }
        let old = self.checks.lock().unwrap_or_else(|e| e.into_inner()).replace(stop);
        if let Some(old) = old {
            old.cancel();
        }
    }

    /// Stop this generation's checks (a newer one took over).
    pub fn stop_checks(&self) {
        if let Some(t) = self.checks.lock().unwrap_or_else(|e| e.into_inner()).take() {
            t.cancel();
        }
    }
}

/// The pool (and metrics `site` label) name of a route with its own upstream: `host#route`.
pub fn route_pool_name(host: &str, route: &str) -> String {
    format!("{host}#{route}")
}

/// The site a pool belongs to: the host of a route's own pool ([`route_pool_name`]), or the
/// pool's name as it is.
pub fn pool_site(pool: &str) -> &str {
    pool.split_once('#').map_or(pool, |(host, _)| host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_route_pools_site_is_its_host() {
        assert_eq!(pool_site(&route_pool_name("cloud.example", "dav")), "cloud.example");
        assert_eq!(pool_site("cloud.example"), "cloud.example");
    }

    /// A reload that reorders a stream's upstreams: the next generation's pool and the config
    /// it hands out pair member i with the same upstream, and the members keep their state.
    #[test]
    fn a_generation_pairs_each_pool_with_its_own_config() {
        let stream = |upstreams: &str| {
            let toml = format!("[[stream]]\nname = \"agents\"\nlisten = \"50000\"\nupstream = {upstreams}\n");
            Arc::new(crate::config::from_toml_str(&toml).unwrap())
        };
        let first = Pools::build(&stream(r#"["192.168.1.40:50000", "192.168.1.41:50000"]"#), None);
        let second_config = stream(r#"["192.168.1.41:50000", "192.168.1.40:50000"]"#);
        let second = Pools::build(&second_config, Some(&first));
        assert!(Arc::ptr_eq(second.config(), &second_config));
        for pools in [&first, &second] {
            let pool = pools.stream("agents").unwrap();
            let cfg = &pools.config().streams[0];
            for (i, member) in pool.members.iter().enumerate() {
                assert_eq!(*member.label, *cfg.upstreams.members[i].target.to_string(), "member {i}");
            }
        }
        let kept = |pools: &Pools, label: &str| {
            let pool = pools.stream("agents").unwrap();
            pool.members.iter().find(|m| &*m.label == label).map(|m| Arc::as_ptr(&m.state)).unwrap()
        };
        assert_eq!(kept(&first, "192.168.1.40:50000"), kept(&second, "192.168.1.40:50000"));
    }
}
