//! What the data path reads: the running config's pools and services (`Runtime`, swapped
//! whole on reload) and the state every accept loop and connection shares (`Shared`).
//! A leaf below the listeners, connection handlers and admin endpoint; `server` builds and
//! swaps it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arc_swap::ArcSwap;
use metrics::{counter, gauge, Counter, Gauge};
use shared::descriptors::Descriptors;
use shared::udp_flows::FlowBudget;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;

use crate::config::{Config, ServiceConfig};
use crate::limits::Budget;
use crate::metrics::{self as m, RouteFailure};
use crate::pool::Pool;

/// The permits of a service without `max_connections`: more than any descriptor budget
/// holds, so only the global cap applies.
pub const UNCAPPED: usize = 1 << 30;

/// A service as the data path sees it.
pub struct Service {
    pub cfg: ServiceConfig,
    pub pool: Arc<Pool>,
    /// `sni`/`http` modes: name → pool, with the service's pool as the default.
    pub router: shared::peek::NameRouter<Arc<Pool>>,
    /// Per-service connection cap: `max_connections`, or [`UNCAPPED`] without one. Every
    /// connection holds a permit, so a cap a reload adds counts those already open.
    pub limit: Arc<Semaphore>,
    /// UDP flows of this service across all its ports (kept across reloads by name).
    pub flows: Arc<FlowBudget>,
    /// The process's descriptor pool (`Shared::descriptors`), for a raced connect's socket.
    pub descriptors: Arc<Descriptors>,
    pub m_accepted: Counter,
    pub m_refused: Counter,
    pub m_active: Gauge,
    pub m_unavailable: Counter,
    /// Per `RouteFailure`, in its order.
    pub m_route_failures: [Counter; RouteFailure::ALL.len()],
}

/// Everything one config produced. Dropping it stops its health tasks.
pub struct Runtime {
    pub config: Config,
    pub pools: BTreeMap<String, Arc<Pool>>,
    pub services: HashMap<String, Arc<Service>>,
    health_tasks: Vec<JoinHandle<()>>,
}

impl Drop for Runtime {
    fn drop(&mut self) {
        for t in &self.health_tasks {
            t.abort();
        }
    }
}

impl Runtime {
    pub(crate) fn build(
        config: Config,
        budget: &Budget,
        descriptors: &Arc<Descriptors>,
        previous: Option<&Runtime>,
    ) -> Self {
        let mut pools = BTreeMap::new();
        let mut health_tasks = Vec::new();
        let lookups = Self::lookups(&config);
        for (name, pc) in &config.pools {
            let prev = previous.and_then(|p| p.pools.get(name)).map(|p| &**p);
            let pool = Arc::new(Pool::new(pc.clone(), prev));
            health_tasks.push(tokio::spawn(pool.clone().run_health(pc.health.port)));
            health_tasks.push(tokio::spawn(pool.clone().run_meters()));
            if let Some(lookups) = &lookups {
                health_tasks.push(tokio::spawn(crate::resolve::run(
                    pool.clone(),
                    lookups.clone(),
                    config.resolver.clone(),
                )));
            }
            pools.insert(name.clone(), pool);
        }
        let mut services = HashMap::new();
        for sc in &config.services {
            let Some(pool) = pools.get(&sc.pool).cloned() else {
                continue;
            };
            let prev = previous.and_then(|p| p.services.get(&sc.name));
            // The same semaphore across reloads, so the connections open stay counted (a
            // lower cap, or one a service had not, admits none until they are under it).
            let cap = |max: Option<u32>| max.map_or(UNCAPPED, |n| n as usize);
            let limit = match prev {
                Some(p) => {
                    shared::conn_limit::resize(&p.limit, cap(p.cfg.max_connections), cap(sc.max_connections));
                    p.limit.clone()
                }
                None => Arc::new(Semaphore::new(cap(sc.max_connections))),
            };
            let flow_cap = budget.service_flows(sc.max_flows);
            let flows = match prev {
                Some(p) => {
                    p.flows.set_cap(flow_cap);
                    p.flows.clone()
                }
                None => FlowBudget::new(flow_cap),
            };
            let mut router = shared::peek::NameRouter::new();
            router.set_default(pool.clone());
            for r in &sc.routes {
                let Some(target) = pools.get(&r.pool) else { continue };
                for n in &r.names {
                    // Validation already refused bad or duplicate patterns.
                    let _ = router.insert(n, target.clone());
                }
            }
            let l = [("service", sc.name.clone())];
            services.insert(
                sc.name.clone(),
                Arc::new(Service {
                    cfg: sc.clone(),
                    pool,
                    router,
                    limit,
                    flows,
                    descriptors: descriptors.clone(),
                    m_accepted: counter!(m::LISTENER_ACCEPTED, &l),
                    m_refused: counter!(m::LISTENER_REFUSED, &l),
                    m_active: gauge!(m::SERVICE_ACTIVE, &l),
                    m_unavailable: counter!(m::SERVICE_CONNECT_GIVEUPS, &l),
                    m_route_failures: RouteFailure::ALL.map(|why| {
                        counter!(m::SERVICE_ROUTE_FAILURES, "service" => sc.name.clone(), "reason" => why.as_str())
                    }),
                }),
            );
        }
        Self { config, pools, services, health_tasks }
    }

    /// The resolver for paths given by name; none when no path is (the system's resolver
    /// configuration is then never read). A resolver that cannot be set up leaves those paths
    /// without an address (down), and says why.
    fn lookups(config: &Config) -> Option<Arc<shared::dns::Lookups>> {
        let named = config.pools.values().flat_map(|p| p.paths.iter().chain(&p.mesh)).any(|p| p.target.ip().is_none());
        if !named {
            return None;
        }
        let settings = shared::dns::ResolverSettings {
            nameservers: config.resolver.nameservers.clone(),
            timeout: config.resolver.timeout,
        };
        match shared::dns::Lookups::new(&settings) {
            Ok(l) => Some(Arc::new(l)),
            Err(e) => {
                tracing::error!(error = %e, "cannot set up the resolver: paths given by name stay without an address");
                None
            }
        }
    }
}

/// State shared by the accept loops, connection tasks and the admin listener.
pub struct Shared {
    pub(crate) runtime: ArcSwap<Runtime>,
    pub(crate) global_limit: Arc<Semaphore>,
    /// UDP flows across every service (each also takes a descriptor from `descriptors`).
    pub(crate) flows: Arc<FlowBudget>,
    /// The descriptor pool connections, raced connects, pipes and flows draw from.
    pub(crate) descriptors: Arc<Descriptors>,
    /// The open-files limit found (and raised) at start; reloads plan within it.
    pub(crate) open_files: u64,
    pub(crate) m_open: Gauge,
    pub(crate) stop: watch::Receiver<bool>,
    /// Client connection tasks, so a drain can wait for the last one to end.
    pub(crate) conns: tokio_util::task::TaskTracker,
    /// When this process started serving (Unix ms), and the placement samples behind the
    /// status page's shares.
    pub(crate) started_ms: u64,
    pub(crate) shares: crate::shares::Shares,
    /// The threads TCP connections are spread over (`limits.threads`).
    pub(crate) workers: shared::workers::Workers,
}

impl Shared {
    pub fn runtime(&self) -> arc_swap::Guard<Arc<Runtime>> {
        self.runtime.load()
    }
    /// Client TCP connections open, counted where they run (`shared::workers`).
    pub fn open_connections(&self) -> usize {
        self.workers.open().iter().sum()
    }
    /// TCP connections placed on each thread since the start, the calling thread's first.
    pub fn placed_per_thread(&self) -> Vec<u64> {
        self.workers.placed()
    }
    pub(crate) fn conn_guard(&self) -> ConnGuard {
        self.m_open.increment(1.0);
        ConnGuard(self.m_open.clone())
    }
}

/// Counts an open client connection in the global gauge (drain and `/status` count them per
/// thread, `shared::workers`).
pub(crate) struct ConnGuard(Gauge);

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}
