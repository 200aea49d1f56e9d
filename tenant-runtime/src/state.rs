//! The runtime's shared state ([`Runtime`]): catalog reader, host resolver, per-tenant pools,
//! the catalog listener, the edge settings, the identity and content state, the anonymous
//! failure limits, and the background tasks that keep them. It sits below every feature: it
//! knows no handler and no route.

use crate::catalog::CatalogReader;
use crate::failures::AnonymousFailures;
use crate::http::{Edge, KeyedLimiter, keyed_limiter};
use crate::identity::state::IdentityState;
use crate::pools::{PoolSettings, TenantPools};
use crate::resolve::{ListenerState, Resolver, spawn_listener};
use portico_core::keys::Keyring;
use portico_core::{Hostname, Settings, TenantId};
use sqlx::PgPool;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

/// Hosts kept in the resolution cache.
const RESOLVER_CAPACITY: u64 = 100_000;

/// Everything a tenant request needs. Cloning is cheap (shared handles).
#[derive(Clone)]
pub struct Runtime {
    pub(crate) catalog: CatalogReader,
    pub(crate) resolver: Arc<Resolver>,
    pub pools: TenantPools,
    pub listener: ListenerState,
    pub(crate) operator_host: Hostname,
    pub edge: Edge,
    pub(crate) identity: Arc<IdentityState>,
    pub(crate) content: Arc<crate::content::ContentState>,
    /// Limits and aggregation of unauthenticated failures (`failures.rs`).
    pub(crate) failures: Arc<AnonymousFailures>,
    pub(crate) tenant_limiter: Option<Arc<KeyedLimiter<TenantId>>>,
    /// Self-service exports, made by the control plane (`None`: not offered here).
    pub(crate) exports: Option<crate::exports::Exports>,
    _tasks: Arc<Tasks>,
}

/// Background tasks (catalog listener, pool sweeper), aborted when the last handle goes.
struct Tasks(Vec<tokio::task::JoinHandle<()>>);
impl Drop for Tasks {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

impl Runtime {
    /// Starts the runtime on a catalog pool: resolver, pools, the catalog listener and the
    /// housekeeping task. `state` is a writable control-plane pool used only for the shared
    /// SAML replay cache.
    pub fn start(
        settings: &Settings,
        catalog: PgPool,
        state: PgPool,
        keyring: Keyring,
        store: portico_core::storage::ObjectStore,
    ) -> Self {
        let rt = &settings.runtime;
        let reader = CatalogReader::new(catalog.clone());
        let resolver = Arc::new(Resolver::new(
            reader.clone(),
            rt.tenant_cache_ttl,
            RESOLVER_CAPACITY,
        ));
        let identity = Arc::new(IdentityState::new(settings, keyring.clone(), state));
        let content = Arc::new(crate::content::ContentState::new(
            rt,
            keyring.clone(),
            store,
        ));
        let pools = TenantPools::new(
            keyring,
            PoolSettings {
                max_open_tenants: rt.max_open_tenants,
                per_tenant: rt.tenant_pool_size,
                wait: rt.pool_wait,
                instances: rt.instances,
                pooled_budget_percent: rt.pooled_budget_percent,
                shared_lanes: rt.shared_pool_lanes,
                shared_lane_size: rt.shared_lane_size,
                own_wait: crate::pools::OWN_WAIT,
                flood_connections: rt.flood_connections,
                others_window: crate::pools::OTHERS_WINDOW,
            },
        );
        let (listener, listen_task) = spawn_listener(catalog, resolver.clone(), pools.clone());
        let edge = Edge {
            trusted_proxies: Arc::new(rt.trusted_proxies.clone()),
            ip_limiter: keyed_limiter::<IpAddr>(rt.rate_limit_per_ip),
            request_timeout: rt.request_timeout,
            upload_timeout: rt.upload_timeout,
            body_limit: rt.body_limit_bytes,
        };
        let tenant_limiter = keyed_limiter::<TenantId>(rt.rate_limit_per_tenant);
        let failures = Arc::new(AnonymousFailures::new(
            rt.anonymous_limit_per_ip,
            rt.anonymous_limit_per_tenant,
        ));
        let sweep_task = {
            let pools = pools.clone();
            let ip = edge.ip_limiter.clone();
            let tenant = tenant_limiter.clone();
            let failures = failures.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(30));
                loop {
                    tick.tick().await;
                    pools.sweep().await;
                    failures
                        .flush(&pools, time::OffsetDateTime::now_utc(), false)
                        .await;
                    if let Some(l) = &ip {
                        l.retain_recent();
                        l.shrink_to_fit();
                    }
                    if let Some(l) = &tenant {
                        l.retain_recent();
                        l.shrink_to_fit();
                    }
                }
            })
        };
        Self {
            catalog: reader,
            resolver,
            pools,
            listener,
            operator_host: rt.operator_host.clone(),
            edge,
            identity,
            content,
            failures,
            tenant_limiter,
            exports: None,
            _tasks: Arc::new(Tasks(vec![listen_task, sweep_task])),
        }
    }

    /// Hands the runtime the control plane's self-service exports (`/api/v1/exports`), before
    /// its routes are made.
    pub fn with_exports(mut self, exports: crate::exports::Exports) -> Self {
        self.exports = Some(exports);
        self
    }

    /// The control plane's self-service exports, where this runtime offers them.
    pub(crate) fn exports(&self) -> Result<&crate::exports::Exports, crate::http::Problem> {
        self.exports.as_ref().ok_or_else(|| {
            crate::http::Problem::not_found().detail("Exports are not offered by this server")
        })
    }

    /// Records what is still only counted of unauthenticated failures (at shutdown).
    pub async fn flush_failures(&self) {
        self.failures
            .flush(&self.pools, time::OffsetDateTime::now_utc(), true)
            .await;
    }
}
