//! Per-tenant connection pools under a global budget per database server.
//!
//! Each tenant gets a deadpool pool that logs in as that tenant's own role (its password is
//! decrypted with the tenant's key when the pool is built). Pools live in a bounded moka cache
//! keyed by `TenantId`; every open connection holds a permit of its server's budget (a
//! semaphore sized `max_connections / instances`), so however many tenants are hot the server
//! never sees more than its budget from this instance.
//!
//! | event                                   | what happens                                        |
//! |-----------------------------------------|-----------------------------------------------------|
//! | first request of a tenant               | pool built (cheap: no connection yet)               |
//! | request, idle connection in the pool    | taken, recycled (session state cleaned)             |
//! | request, pool below its size            | new connection, after taking a budget permit        |
//! | budget exhausted                        | the least recently used idle connection of another  |
//! |                                         | tenant on the server is closed; wait                |
//! | a connection goes idle while one waits  | the waiter closes the least recently used idle one  |
//! | wait bound passed                       | `RuntimeError::Busy` (→ 503 `tenant_busy`)          |
//! | request abandoned (timeout) mid-query   | query cancelled, connection closed, not returned    |
//! | catalog change of the tenant / server   | pool evicted: closed, in-use connections dropped    |
//! | placement differs from the pool's       | pool rebuilt                                        |
//! | idle too long / too many open tenants   | evicted by the cache (least recently used), closed  |
//!
//! Connections are recycled with deadpool-postgres' `Clean` method (`RESET ALL`, `SET SESSION
//! AUTHORIZATION DEFAULT`, `UNLISTEN *`, advisory locks released, temp tables discarded), so no
//! session state survives from one request to the next.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use deadpool::managed::{self, Metrics, Object, PoolError, RecycleResult};
use deadpool_postgres::{ClientWrapper, ManagerConfig, RecyclingMethod};
use moka::future::Cache;
use portico_core::TenantId;
use portico_core::keys::{Keyring, TenantKeyRef};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_postgres::NoTls;
use uuid::Uuid;

use crate::catalog::{Placement, TenantRoute};
use crate::error::RuntimeError;

/// A pool nobody used for this long is closed.
const POOL_IDLE: Duration = Duration::from_secs(300);
/// Longest a connection's clean-up (recycling) may take.
const RECYCLE_TIMEOUT: Duration = Duration::from_secs(2);
/// An idle connection older than this is closed by [`TenantPools::sweep`].
const CONNECTION_IDLE: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub max_open_tenants: u64,
    pub per_tenant: u32,
    pub wait: Duration,
    pub instances: u32,
}

/// One database server's connection budget in this instance.
pub struct ServerBudget {
    id: Uuid,
    size: u32,
    permits: Arc<Semaphore>,
    waiting: AtomicUsize,
    /// Signalled when a connection of this server goes back to a pool while someone waits.
    idle_returned: tokio::sync::Notify,
}

impl ServerBudget {
    fn open(&self) -> u32 {
        let available = u32::try_from(self.permits.available_permits()).unwrap_or(u32::MAX);
        self.size.saturating_sub(available)
    }
}

struct WaitGuard<'a>(&'a AtomicUsize);
impl Drop for WaitGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A tenant connection that holds a budget permit for as long as it is open.
pub struct BudgetedClient {
    client: ClientWrapper,
    _permit: OwnedSemaphorePermit,
}

struct TenantManager {
    pg: deadpool_postgres::Manager,
    tenant: TenantId,
    budget: Arc<ServerBudget>,
    registry: Weak<Inner>,
}

impl managed::Manager for TenantManager {
    type Type = BudgetedClient;
    type Error = RuntimeError;

    async fn create(&self) -> Result<BudgetedClient, RuntimeError> {
        let budget = &self.budget;
        let permit = match budget.permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                budget.waiting.fetch_add(1, Ordering::AcqRel);
                let _guard = WaitGuard(&budget.waiting);
                let started = Instant::now();
                // Close the least recently used idle connection of another tenant, and again
                // whenever a connection goes idle while we wait, until a permit is ours.
                let permit = loop {
                    let idle_returned = budget.idle_returned.notified();
                    if let Some(registry) = self.registry.upgrade() {
                        registry.reclaim_idle(budget.id, self.tenant);
                    }
                    tokio::select! {
                        p = budget.permits.clone().acquire_owned() => {
                            break p.map_err(|_| RuntimeError::Busy)?;
                        }
                        () = idle_returned => {}
                    }
                };
                metrics::histogram!("portico_pool_budget_wait_seconds")
                    .record(started.elapsed().as_secs_f64());
                permit
            }
        };
        let client = self.pg.create().await.map_err(|e| {
            let message = match e.as_db_error() {
                Some(db) => db.message().to_owned(),
                None => e.to_string(),
            };
            RuntimeError::TenantDatabase(message)
        })?;
        metrics::counter!("portico_pool_connections_opened_total").increment(1);
        Ok(BudgetedClient {
            client,
            _permit: permit,
        })
    }

    async fn recycle(
        &self,
        obj: &mut BudgetedClient,
        metrics: &Metrics,
    ) -> RecycleResult<RuntimeError> {
        self.pg
            .recycle(&mut obj.client, metrics)
            .await
            .map_err(|e| match e {
                managed::RecycleError::Message(m) => managed::RecycleError::Message(m),
                managed::RecycleError::Backend(e) => {
                    managed::RecycleError::Backend(RuntimeError::query("recycling a connection", e))
                }
            })
    }
}

type Pool = managed::Pool<TenantManager>;

/// One tenant's pool and the placement it was built for.
pub struct TenantPool {
    placement: Placement,
    pool: Pool,
    budget: Arc<ServerBudget>,
}

struct Inner {
    cache: Cache<TenantId, Arc<TenantPool>>,
    budgets: Mutex<HashMap<Uuid, Arc<ServerBudget>>>,
    keyring: Keyring,
    settings: PoolSettings,
}

impl Inner {
    /// Closes one idle connection of another tenant on `server`, so its permit can serve a
    /// waiter. Returns whether one was closed.
    fn reclaim_idle(&self, server: Uuid, except: TenantId) -> bool {
        // The idle connection unused for longest, across this server's other tenants: hot
        // tenants keep their connections, cold ones give theirs up.
        let mut oldest: Option<(TenantId, Duration)> = None;
        for (tenant, p) in self.cache.iter() {
            if p.budget.id != server || *tenant == except {
                continue;
            }
            p.pool.retain(|_, m| {
                let idle = m.last_used();
                if oldest.is_none_or(|(_, d)| idle > d) {
                    oldest = Some((*tenant, idle));
                }
                true
            });
        }
        let Some((victim, age)) = oldest else {
            return false;
        };
        let Some(p) = self
            .cache
            .iter()
            .find(|(t, _)| **t == victim)
            .map(|(_, p)| p)
        else {
            return false;
        };
        let mut taken = false;
        let removed = p.pool.retain(|_, m| {
            if !taken && m.last_used() >= age {
                taken = true;
                false
            } else {
                true
            }
        });
        let closed = !removed.removed.is_empty();
        if closed {
            metrics::counter!("portico_pool_reclaimed_total").increment(1);
        }
        closed
    }

    fn budget_for(&self, placement: &Placement) -> Arc<ServerBudget> {
        let size = (placement.server_budget / self.settings.instances).max(1);
        let mut budgets = self.budgets.lock().unwrap_or_else(|p| p.into_inner());
        match budgets.get(&placement.db_server_id) {
            Some(b) if b.size == size => b.clone(),
            _ => {
                let b = Arc::new(ServerBudget {
                    id: placement.db_server_id,
                    size,
                    permits: Arc::new(Semaphore::new(size as usize)),
                    waiting: AtomicUsize::new(0),
                    idle_returned: tokio::sync::Notify::new(),
                });
                budgets.insert(placement.db_server_id, b.clone());
                b
            }
        }
    }
}

/// A pooled connection of one tenant. Dereferences to the tokio-postgres client (with its
/// statement cache). Dropping it returns it to the pool, or closes it when another request on
/// the same server is waiting for budget.
pub struct TenantConn {
    obj: Option<Object<TenantManager>>,
    budget: Arc<ServerBudget>,
    /// Whose connection this is, and that tenant's key: code handed a connection never needs
    /// a tenant id beside it that could disagree.
    tenant: TenantId,
    key: TenantKeyRef,
}

impl TenantConn {
    /// The tenant this connection belongs to (it is logged in as that tenant's role).
    pub fn tenant(&self) -> TenantId {
        self.tenant
    }

    /// The tenant's key reference (for what is encrypted under the tenant's key).
    pub fn key_ref(&self) -> &TenantKeyRef {
        &self.key
    }
}

impl std::ops::Deref for TenantConn {
    type Target = ClientWrapper;
    fn deref(&self) -> &ClientWrapper {
        // Present until drop.
        match &self.obj {
            Some(o) => &o.client,
            None => unreachable!("a TenantConn holds its connection until dropped"),
        }
    }
}

impl std::ops::DerefMut for TenantConn {
    fn deref_mut(&mut self) -> &mut ClientWrapper {
        match &mut self.obj {
            Some(o) => &mut o.client,
            None => unreachable!("a TenantConn holds its connection until dropped"),
        }
    }
}

impl Drop for TenantConn {
    fn drop(&mut self) {
        let Some(obj) = self.obj.take() else { return };
        if crate::http::request_abandoned() {
            // A query may still be running on it: cancel it, and close the connection rather
            // than hand it to the next request.
            let conn = Object::take(obj);
            let cancel = conn.client.cancel_token();
            tokio::spawn(async move {
                let _ = cancel.cancel_query(NoTls).await;
                drop(conn);
            });
            metrics::counter!("portico_pool_abandoned_total").increment(1);
        } else {
            drop(obj);
            if self.budget.waiting.load(Ordering::Acquire) > 0 {
                // A waiter closes the least recently used idle connection (maybe this one).
                self.budget.idle_returned.notify_one();
            }
        }
    }
}

/// Gauges of one server's budget, for `/metrics`.
#[derive(Debug, Clone)]
pub struct BudgetStats {
    pub db_server_id: Uuid,
    pub budget: u32,
    pub open: u32,
    pub idle: usize,
    pub waiting: usize,
    pub tenant_pools: usize,
}

/// The per-tenant pools of this instance. Cloning shares them.
#[derive(Clone)]
pub struct TenantPools {
    inner: Arc<Inner>,
}

impl TenantPools {
    pub fn new(keyring: Keyring, settings: PoolSettings) -> Self {
        let cache = Cache::builder()
            .max_capacity(settings.max_open_tenants)
            .time_to_idle(POOL_IDLE)
            .eviction_listener(|_, p: Arc<TenantPool>, _| p.pool.close())
            .build();
        Self {
            inner: Arc::new(Inner {
                cache,
                budgets: Mutex::new(HashMap::new()),
                keyring,
                settings,
            }),
        }
    }

    /// A connection to `route`'s database as its own role, within the wait bound.
    pub async fn get(&self, route: &TenantRoute) -> Result<TenantConn, RuntimeError> {
        let placement = route.placement.as_ref().ok_or_else(|| {
            RuntimeError::TenantDatabase("the tenant has no database placement yet".into())
        })?;
        let started = Instant::now();
        let deadline = started + self.inner.settings.wait;
        // Twice at most: a pool closed by a concurrent eviction is rebuilt once.
        for _ in 0..2 {
            let pool = self.pool_for(route.tenant_id, placement).await?;
            let remaining = deadline.saturating_duration_since(Instant::now());
            let got = tokio::time::timeout(remaining, pool.pool.get()).await;
            metrics::histogram!("portico_pool_wait_seconds")
                .record(started.elapsed().as_secs_f64());
            return match got {
                Ok(Ok(obj)) => Ok(TenantConn {
                    obj: Some(obj),
                    budget: pool.budget.clone(),
                    tenant: route.tenant_id,
                    key: TenantKeyRef::new(placement.key_id.clone()),
                }),
                Err(_) | Ok(Err(PoolError::Timeout(_))) => {
                    metrics::counter!("portico_pool_busy_total").increment(1);
                    Err(RuntimeError::Busy)
                }
                Ok(Err(PoolError::Closed)) => continue,
                Ok(Err(PoolError::Backend(e))) => Err(e),
                Ok(Err(other)) => Err(RuntimeError::TenantDatabase(other.to_string())),
            };
        }
        Err(RuntimeError::Busy)
    }

    async fn pool_for(
        &self,
        tenant: TenantId,
        placement: &Placement,
    ) -> Result<Arc<TenantPool>, RuntimeError> {
        let cache = &self.inner.cache;
        if let Some(p) = cache.get(&tenant).await {
            if p.placement == *placement && !p.pool.is_closed() {
                return Ok(p);
            }
            self.evict(tenant).await;
        }
        cache
            .try_get_with(tenant, self.build(tenant, placement))
            .await
            .map_err(|e| RuntimeError::TenantDatabase(e.to_string()))
    }

    async fn build(
        &self,
        tenant: TenantId,
        placement: &Placement,
    ) -> Result<Arc<TenantPool>, RuntimeError> {
        let plain = self
            .inner
            .keyring
            .decrypt_for_tenant(
                tenant,
                &TenantKeyRef::new(placement.key_id.clone()),
                &placement.password_ciphertext,
            )
            .await?;
        let password = SecretString::from(String::from_utf8(plain).map_err(|_| {
            RuntimeError::TenantDatabase("the stored role password is not UTF-8".into())
        })?);
        let mut config = tokio_postgres::Config::from_str(&placement.server_url).map_err(|_| {
            RuntimeError::TenantDatabase("the database server's URL cannot be parsed".into())
        })?;
        config
            .dbname(&placement.database)
            .user(&placement.role)
            .password(password.expose_secret())
            .application_name("portico-runtime")
            // Pinned at start-up (and so restored by every `DISCARD ALL`): a schema the tenant
            // role creates under its own name never comes first on our search path.
            .options("-c search_path=public")
            .connect_timeout(self.inner.settings.wait.max(Duration::from_secs(1)));
        let budget = self.inner.budget_for(placement);
        let manager = TenantManager {
            pg: deadpool_postgres::Manager::from_config(
                config,
                NoTls,
                ManagerConfig {
                    recycling_method: RecyclingMethod::Clean,
                },
            ),
            tenant,
            budget: budget.clone(),
            registry: Arc::downgrade(&self.inner),
        };
        let pool = Pool::builder(manager)
            .max_size(self.inner.settings.per_tenant as usize)
            // A connection whose clean-up hangs is discarded, not waited for.
            .recycle_timeout(Some(RECYCLE_TIMEOUT))
            // Most recently used first: a tenant's surplus connections stay idle, age, and are
            // the first reclaimed for other tenants (or closed by the sweep).
            .queue_mode(deadpool::managed::QueueMode::Lifo)
            .runtime(deadpool::Runtime::Tokio1)
            .build()
            .map_err(|e| RuntimeError::TenantDatabase(e.to_string()))?;
        tracing::debug!(tenant_id = %tenant, "tenant pool built");
        Ok(Arc::new(TenantPool {
            placement: placement.clone(),
            pool,
            budget,
        }))
    }

    /// Closes and forgets a tenant's pool (suspension, placement or credential change).
    pub async fn evict(&self, tenant: TenantId) {
        if let Some(p) = self.inner.cache.remove(&tenant).await {
            p.pool.close();
            tracing::debug!(tenant_id = %tenant, "tenant pool evicted");
        }
    }

    /// Evicts every pool on a server and forgets its budget (the server's record changed).
    pub async fn evict_server(&self, server: Uuid) {
        let tenants: Vec<TenantId> = self
            .inner
            .cache
            .iter()
            .filter(|(_, p)| p.budget.id == server)
            .map(|(t, _)| *t)
            .collect();
        for t in tenants {
            self.evict(t).await;
        }
        self.inner
            .budgets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&server);
    }

    /// Closes idle connections older than a minute, and runs the cache's housekeeping.
    pub async fn sweep(&self) {
        self.inner.cache.run_pending_tasks().await;
        for (_, p) in self.inner.cache.iter() {
            p.pool.retain(|_, m| m.last_used() < CONNECTION_IDLE);
        }
    }

    /// Open tenant pools.
    pub fn open_pools(&self) -> u64 {
        self.inner.cache.entry_count()
    }

    /// Per-server gauges.
    pub fn stats(&self) -> Vec<BudgetStats> {
        let budgets: Vec<Arc<ServerBudget>> = self
            .inner
            .budgets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        budgets
            .into_iter()
            .map(|b| {
                let (mut idle, mut tenant_pools) = (0, 0);
                for (_, p) in self.inner.cache.iter() {
                    if Arc::ptr_eq(&p.budget, &b) {
                        idle += p.pool.status().available;
                        tenant_pools += 1;
                    }
                }
                BudgetStats {
                    db_server_id: b.id,
                    budget: b.size,
                    open: b.open(),
                    idle,
                    waiting: b.waiting.load(Ordering::Acquire),
                    tenant_pools,
                }
            })
            .collect()
    }
}
