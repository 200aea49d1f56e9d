//! Connection pools under a global budget per database server.
//!
//! A dedicated tenant gets a deadpool pool that logs in as that tenant's own role (its
//! password is decrypted with the tenant's key when the pool is built). The pooled tenants of
//! one shared database share one pool that logs in as that database's pool role; each
//! [`TenantConn`] taken from it carries its tenant's context (`conn.rs`). Pools live in a
//! bounded moka cache keyed by tenant or shared database; every open connection holds a permit
//! of its server's budget (a semaphore sized `max_connections / instances`), so however many
//! tenants are hot the server never sees more than its budget from this instance.
//!
//! | event                                   | what happens                                        |
//! |-----------------------------------------|-----------------------------------------------------|
//! | any request                             | the tenant's gate first ([`TenantGate`]): at most   |
//! |                                         | `per_tenant` borrows, `flood_connections` for a     |
//! |                                         | flood (over 4× `per_tenant` requests) beside other  |
//! |                                         | tenants of the server                               |
//! | first request of a tenant               | pool built (cheap: no connection yet)               |
//! | request, idle connection in the pool    | taken (cleaned when it was given back)              |
//! | request, a connection of the pool is    | wait up to 100 ms for it (a round trip) rather than |
//! | being cleaned on its way back           | open another                                        |
//! | request, pool below its size            | new connection, after taking a budget permit        |
//! | budget exhausted, the pool has          | wait up to 100 ms for one of its own to come back   |
//! | connections (all busy)                  | (no churn of opens between busy tenants), then on   |
//! | budget exhausted                        | the least recently used idle connection of another  |
//! |                                         | tenant on the server is closed; wait                |
//! | a connection goes idle while one waits  | the waiter closes the least recently used idle one  |
//! | wait bound passed                       | `RuntimeError::Busy` (→ 503 `tenant_busy`)          |
//! | request abandoned (timeout) mid-query   | query cancelled, connection closed, not returned    |
//! | catalog change of the tenant / server   | pool evicted: closed, in-use connections dropped    |
//! | placement differs from the pool's       | pool rebuilt                                        |
//! | idle too long / too many open tenants   | evicted by the cache (least recently used), closed  |
//!
//! Connections are cleaned when they are given back, before the next borrower can take them
//! (what deadpool-postgres' `Clean` does at checkout: `RESET ALL`, `SET SESSION AUTHORIZATION
//! DEFAULT`, `UNLISTEN *`, advisory locks released, temp tables discarded; with a pooled
//! request's read-only transaction rolled back in the same message), so no session state
//! survives from one request to the next and a checkout costs no round trip.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
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

use crate::catalog::{Login, Placement, TenantRoute};
pub use crate::conn::TenantConn;
use crate::conn::{Session, SessionHandle, StatementCache, TenantContext};
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
    /// Connections of one dedicated tenant's pool; in the pooled tier, connections of the
    /// shared pool one tenant may hold at once (so one tenant cannot take all of them).
    pub per_tenant: u32,
    pub wait: Duration,
    pub instances: u32,
    /// Share of each server's budget kept for shared pools while this instance has one on
    /// that server: dedicated pools together hold at most the rest.
    pub pooled_budget_percent: u32,
    /// Pools (lanes) per shared database; a pooled tenant always uses the same lane.
    pub shared_lanes: u32,
    /// Connections of one lane (at most the server's budget in this instance).
    pub shared_lane_size: u32,
    /// How long a busy pool waits for one of its own connections before it takes another
    /// pool's while the budget is spent ([`OWN_WAIT`] in the runtime).
    pub own_wait: Duration,
    /// Connections a flooding tenant (more than [`FLOOD_FACTOR`] × `per_tenant` requests at
    /// once) holds at once while another tenant uses the same server ([`TenantGate`]).
    pub flood_connections: u32,
    /// How recently another tenant must have used a server for a flood to be held there
    /// ([`OTHERS_WINDOW`] in the runtime).
    pub others_window: Duration,
}

/// When a pooled connection was last handed out (or made).
fn used_at(m: &deadpool::managed::Metrics) -> std::time::Instant {
    m.recycled.unwrap_or(m.created)
}

/// A pool with at least this many checkouts in the current or the previous minute has steady
/// traffic: a dedicated one keeps its last connection (not swept, and reclaimed for another
/// pool only when no other idle connection is left).
const STEADY_PER_MINUTE: u32 = 30;

/// One database server's connection budget in this instance.
pub struct ServerBudget {
    id: Uuid,
    size: u32,
    permits: Arc<Semaphore>,
    waiting: AtomicUsize,
    /// Connections of dedicated pools open on this server.
    dedicated_open: AtomicU32,
    /// The most of them while a shared pool of this server is open here.
    dedicated_cap: u32,
    /// Signalled when a connection of this server goes back to a pool while someone waits.
    idle_returned: tokio::sync::Notify,
    /// Signalled (to all) whenever a connection of this server goes back to its pool, for
    /// pools waiting for one of their own ([`TenantPool::wait_for_own`]).
    returned: tokio::sync::Notify,
    /// Requests of busy pools waiting for one of their pool's own connections.
    waiting_own: AtomicUsize,
    /// The last two tenants that took a connection of this server, and when.
    recent: Mutex<Recent>,
}

impl ServerBudget {
    fn open(&self) -> u32 {
        let available = u32::try_from(self.permits.available_permits()).unwrap_or(u32::MAX);
        self.size.saturating_sub(available)
    }

    /// Whether a tenant other than `tenant` took a connection of this server within `window`.
    fn others_use(&self, tenant: TenantId, window: Duration) -> bool {
        let recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        recent
            .0
            .iter()
            .flatten()
            .any(|(t, at)| *t != tenant && at.elapsed() < window)
    }

    fn note_use(&self, tenant: TenantId) {
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        recent.0 = match recent.0[0] {
            Some((t, _)) if t == tenant => [Some((tenant, now)), recent.0[1]],
            _ => [Some((tenant, now)), recent.0[0]],
        };
    }
}

/// Counts a dedicated pool's connection against the server's dedicated share while it is open.
struct DedicatedSlot(Arc<ServerBudget>);
impl Drop for DedicatedSlot {
    fn drop(&mut self) {
        self.0.dedicated_open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Checkouts of a pool in the current and the previous minute.
#[derive(Default)]
struct Traffic(Mutex<(Option<Instant>, u32, u32)>);

impl Traffic {
    fn hit(&self) {
        let mut t = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        match t.0 {
            Some(start) if now.duration_since(start) < Duration::from_secs(60) => t.1 += 1,
            Some(start) if now.duration_since(start) < Duration::from_secs(120) => {
                *t = (Some(start + Duration::from_secs(60)), 1, t.1);
            }
            _ => *t = (Some(now), 1, 0),
        }
    }

    fn steady(&self) -> bool {
        let t = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let fresh =
            t.0.is_some_and(|start| start.elapsed() < Duration::from_secs(120));
        fresh && (t.1 >= STEADY_PER_MINUTE || t.2 >= STEADY_PER_MINUTE)
    }
}

struct WaitGuard<'a>(&'a AtomicUsize);
impl Drop for WaitGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A connection that holds a budget permit for as long as it is open.
pub struct BudgetedClient {
    client: ClientWrapper,
    statements: StatementCache,
    _permit: OwnedSemaphorePermit,
    _dedicated: Option<DedicatedSlot>,
}

/// What a pool is keyed by: a dedicated tenant, or one lane of a shared database's pooled
/// tenants (a tenant's lane is fixed by its id: a connection, and the catalog caches and plans
/// of its server process, serve a fraction of the database's tenants instead of all of them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum PoolKey {
    Tenant(TenantId),
    Shared(Uuid, u32),
}

/// What a pool logs in with; a pool whose spec no longer matches the catalog is rebuilt.
#[derive(Debug, Clone)]
struct PoolSpec {
    db_server_id: Uuid,
    server_url: String,
    server_budget: u32,
    server_ca: Option<String>,
    database: String,
    user: String,
    password_ciphertext: Vec<u8>,
    key_id: String,
}

struct TenantManager {
    pg: deadpool_postgres::Manager,
    key: PoolKey,
    budget: Arc<ServerBudget>,
    registry: Weak<Inner>,
}

impl managed::Manager for TenantManager {
    type Type = BudgetedClient;
    type Error = RuntimeError;

    async fn create(&self) -> Result<BudgetedClient, RuntimeError> {
        let budget = &self.budget;
        let registry = self.registry.upgrade();
        let dedicated = matches!(self.key, PoolKey::Tenant(_));
        // A dedicated connection takes a slot of the dedicated share first (given back if it
        // is over while a shared pool of the server is open here).
        let slot = || -> Option<DedicatedSlot> {
            if !dedicated {
                return None;
            }
            let n = budget.dedicated_open.fetch_add(1, Ordering::AcqRel) + 1;
            let slot = DedicatedSlot(budget.clone());
            let capped = n > budget.dedicated_cap
                && registry.as_ref().is_some_and(|r| r.has_shared_pool(budget));
            (!capped).then_some(slot)
        };
        let mut dedicated_slot = slot();
        let over_share = |s: &Option<DedicatedSlot>| dedicated && s.is_none();
        let first = if over_share(&dedicated_slot) {
            None
        } else {
            budget.permits.clone().try_acquire_owned().ok()
        };
        let permit = match first {
            Some(p) => p,
            None => {
                budget.waiting.fetch_add(1, Ordering::AcqRel);
                let _guard = WaitGuard(&budget.waiting);
                let started = Instant::now();
                // Close the least recently used idle connection of another pool (of another
                // dedicated tenant, when the dedicated share is what is full), and again
                // whenever a connection goes idle while we wait, until a permit is ours.
                let permit = loop {
                    let idle_returned = budget.idle_returned.notified();
                    if over_share(&dedicated_slot) {
                        dedicated_slot = slot();
                    }
                    let full_share = over_share(&dedicated_slot);
                    let reclaimed = registry
                        .as_ref()
                        .is_some_and(|r| r.reclaim_idle(budget, self.key, full_share));
                    if full_share {
                        // A dedicated connection closed just now frees a slot of the share.
                        if !reclaimed {
                            idle_returned.await;
                        }
                        continue;
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
            statements: StatementCache::default(),
            _permit: permit,
            _dedicated: dedicated_slot,
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

/// One pool and what it logs in with.
pub struct TenantPool {
    spec: PoolSpec,
    pool: Pool,
    budget: Arc<ServerBudget>,
    traffic: Traffic,
    /// Connections of this pool being cleaned on their way back to it.
    cleaning: Arc<AtomicUsize>,
}

impl TenantPool {
    /// A dedicated pool with steady traffic keeps its last connection.
    fn pinned(&self, key: PoolKey) -> bool {
        matches!(key, PoolKey::Tenant(_)) && self.traffic.steady()
    }

    /// A pool that has connections, all busy, waits a moment (`own_wait`, at most until
    /// `deadline`) for one of its own to come back instead of opening another:
    /// - while one of them is being cleaned on its way back (a round trip, against a
    ///   connection set-up many times longer; without this, a tenant whose requests follow
    ///   each other opens a second connection for the second request);
    /// - while the server's budget is spent, instead of closing another pool's idle
    ///   connection, which that pool would then open again: busy pools keep their
    ///   connections, and only pools with none take others' (no churn of connection opens
    ///   between hot tenants).
    async fn wait_for_own(&self, deadline: Instant, own_wait: Duration) {
        let limit = deadline.min(Instant::now() + own_wait);
        let mut counted = None;
        loop {
            // Created before the state is read: a return in between is not missed.
            let returned = self.budget.returned.notified();
            let status = self.pool.status();
            let budget_spent = self.budget.permits.available_permits() == 0;
            let cleaning = self.cleaning.load(Ordering::Acquire) > 0;
            if status.size == 0
                || status.available > 0
                || status.size >= status.max_size
                || !(budget_spent || cleaning)
            {
                return;
            }
            if counted.is_none() {
                self.budget.waiting_own.fetch_add(1, Ordering::AcqRel);
                counted = Some(WaitGuard(&self.budget.waiting_own));
            }
            if tokio::time::timeout_at(limit.into(), returned)
                .await
                .is_err()
            {
                return;
            }
        }
    }
}

/// One tenant's admission to its connections (both tiers), before its pool is asked:
/// - at most `tenant_pool_size` borrows at once (so in the pooled tier one tenant cannot take
///   its lane, and a flood queues behind itself);
/// - a tenant with more than [`FLOOD_FACTOR`] times as many requests at once as it may hold
///   connections (a flood) holds at most `flood_connections` at once while another tenant has
///   taken a connection of the same server within `others_window` ([`OTHERS_WINDOW`]): fewer of its statements
///   run at once on the server, so the others' do not queue behind them for the server's CPU.
///   Alone, it has all of them. A tenant that is merely busy (more requests than connections,
///   as the hottest tenants of a fleet often are) is no flood: cutting it to one connection
///   would queue its requests behind each other for nothing.
#[derive(Default)]
struct TenantGate {
    state: Mutex<GateState>,
    /// One waiter is woken when a borrow ends (it wakes the next if there is room).
    freed: tokio::sync::Notify,
}

#[derive(Default)]
struct GateState {
    in_use: u32,
    waiting: u32,
}

/// A borrow admitted by a tenant's gate; ends with the [`TenantConn`] that holds it.
pub(crate) struct GateGuard(Arc<TenantGate>);

impl Drop for GateGuard {
    fn drop(&mut self) {
        let mut state = self.0.state.lock().unwrap_or_else(|p| p.into_inner());
        state.in_use -= 1;
        let wake = state.waiting > 0;
        drop(state);
        if wake {
            self.0.freed.notify_one();
        }
    }
}

/// A request counted as waiting at a gate (until admitted, or dropped: timed out, abandoned).
struct WaitingGuard(Option<Arc<TenantGate>>);

impl Drop for WaitingGuard {
    fn drop(&mut self) {
        if let Some(gate) = self.0.take() {
            let mut state = gate.state.lock().unwrap_or_else(|p| p.into_inner());
            state.waiting -= 1;
            drop(state);
            // The wake-up this waiter may have consumed goes to the next one.
            gate.freed.notify_one();
        }
    }
}

/// The last two tenants that took a connection of a server, and when.
#[derive(Default)]
struct Recent([Option<(TenantId, Instant)>; 2]);

/// A tenant with more than this many times `tenant_pool_size` requests at once is a flood.
/// (Under Zipf access from 32 clients, the hottest of 1,000 tenants has about 4 at once.)
pub const FLOOD_FACTOR: u32 = 4;

/// How recently another tenant must have used a server for a flood to be held to
/// `flood_connections` there.
pub const OTHERS_WINDOW: Duration = Duration::from_secs(1);

/// How long a busy pool waits for one of its own connections before it takes another pool's
/// while the budget is spent (a request usually gives its connection back well before).
pub const OWN_WAIT: Duration = Duration::from_millis(100);

struct Inner {
    cache: Cache<PoolKey, Arc<TenantPool>>,
    /// Per tenant: its connections in use and the requests waiting for one ([`TenantGate`]).
    gates: Cache<TenantId, Arc<TenantGate>>,
    budgets: Mutex<HashMap<Uuid, Arc<ServerBudget>>>,
    keyring: Keyring,
    settings: PoolSettings,
    returning: Arc<Returning>,
}

impl Inner {
    /// Closes one idle connection of another tenant on `server`, so its permit can serve a
    /// waiter. Returns whether one was closed.
    fn reclaim_idle(
        &self,
        budget: &Arc<ServerBudget>,
        except: PoolKey,
        dedicated_only: bool,
    ) -> bool {
        // The idle connection unused for longest, across this server's other pools: hot
        // tenants keep their connections, cold ones give theirs up; a pinned pool keeps its
        // last one.
        // A pinned pool's last connection is taken only when no other idle one is left.
        let mut oldest: Option<(PoolKey, std::time::Instant)> = None;
        let mut oldest_pinned: Option<(PoolKey, std::time::Instant)> = None;
        for (key, p) in self.cache.iter() {
            if !Arc::ptr_eq(&p.budget, budget)
                || *key == except
                || (dedicated_only && !matches!(*key, PoolKey::Tenant(_)))
            {
                continue;
            }
            let slot = if p.pinned(*key) && p.pool.status().size <= 1 {
                &mut oldest_pinned
            } else {
                &mut oldest
            };
            p.pool.retain(|_, m| {
                let used = used_at(&m);
                if slot.is_none_or(|(_, u)| used < u) {
                    *slot = Some((*key, used));
                }
                true
            });
        }
        let Some((victim, used)) = oldest.or(oldest_pinned) else {
            return false;
        };
        let Some(p) = self
            .cache
            .iter()
            .find(|(k, _)| **k == victim)
            .map(|(_, p)| p)
        else {
            return false;
        };
        let mut taken = false;
        let removed = p.pool.retain(|_, m| {
            if !taken && used_at(&m) <= used {
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

    /// Whether a shared pool of `budget`'s server is open in this instance.
    fn has_shared_pool(&self, budget: &Arc<ServerBudget>) -> bool {
        self.cache
            .iter()
            .any(|(k, p)| matches!(*k, PoolKey::Shared(..)) && Arc::ptr_eq(&p.budget, budget))
    }

    fn budget_for(&self, spec: &PoolSpec) -> Arc<ServerBudget> {
        let size = (spec.server_budget / self.settings.instances).max(1);
        let kept = size * self.settings.pooled_budget_percent.min(100) / 100;
        let mut budgets = self.budgets.lock().unwrap_or_else(|p| p.into_inner());
        match budgets.get(&spec.db_server_id) {
            Some(b) if b.size == size => b.clone(),
            _ => {
                let b = Arc::new(ServerBudget {
                    id: spec.db_server_id,
                    size,
                    permits: Arc::new(Semaphore::new(size as usize)),
                    waiting: AtomicUsize::new(0),
                    dedicated_open: AtomicU32::new(0),
                    dedicated_cap: size.saturating_sub(kept).max(1),
                    idle_returned: tokio::sync::Notify::new(),
                    returned: tokio::sync::Notify::new(),
                    waiting_own: AtomicUsize::new(0),
                    recent: Mutex::default(),
                });
                budgets.insert(spec.db_server_id, b.clone());
                b
            }
        }
    }
}

/// A connection taken from a pool, as a [`TenantConn`] holds it. Dropping it returns it to
/// the pool, or closes it when another request on the same server is waiting for budget.
struct Pooled {
    obj: Object<TenantManager>,
    budget: Arc<ServerBudget>,
    returning: Arc<Returning>,
    /// The pool's count of connections being cleaned ([`TenantPool::cleaning`]).
    cleaning: Arc<AtomicUsize>,
}

/// Connections being cleaned on their way back to their pools.
#[derive(Default)]
struct Returning {
    count: AtomicUsize,
    done: tokio::sync::Notify,
}

impl Session for Pooled {
    fn client(&self) -> &tokio_postgres::Client {
        &self.obj.client
    }
    fn client_mut(&mut self) -> &mut tokio_postgres::Client {
        &mut self.obj.client
    }
    fn statements(&self) -> &StatementCache {
        &self.obj.statements
    }
}

impl SessionHandle for Pooled {
    fn release(self: Box<Self>, reads_open: bool) {
        let Pooled {
            obj,
            budget,
            returning,
            cleaning,
        } = *self;
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // Dropped outside a runtime: nothing can clean it; it is closed.
            drop(Object::take(obj));
            return;
        };
        if crate::http::request_abandoned() {
            // A query may still be running on it: cancel it, and close the connection rather
            // than hand it to the next request.
            let conn = Object::take(obj);
            let cancel = conn.client.cancel_token();
            runtime.spawn(async move {
                let _ = cancel.cancel_query(NoTls).await;
                drop(conn);
            });
            metrics::counter!("portico_pool_abandoned_total").increment(1);
            return;
        }
        // Cleaned before anyone else may take it (the pool's own recycling is `Fast`): off the
        // request's path, and in one message with the rollback of an open read-only
        // transaction.
        returning.count.fetch_add(1, Ordering::AcqRel);
        cleaning.fetch_add(1, Ordering::AcqRel);
        runtime.spawn(async move {
            let sql = if reads_open { RESET_AFTER_READS } else { RESET };
            match obj.client.batch_execute(sql).await {
                Ok(()) => {
                    // Back in the pool before the count drops: a borrower waiting for it
                    // ([`TenantPool::wait_for_own`]) sees one or the other.
                    drop(obj);
                    cleaning.fetch_sub(1, Ordering::AcqRel);
                    budget.returned.notify_waiters();
                    if budget.waiting.load(Ordering::Acquire) > 0 {
                        // A waiter closes the least recently used idle connection (maybe
                        // this one).
                        budget.idle_returned.notify_one();
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "a connection could not be cleaned; closed");
                    drop(Object::take(obj));
                    cleaning.fetch_sub(1, Ordering::AcqRel);
                    budget.returned.notify_waiters();
                }
            }
            returning.count.fetch_sub(1, Ordering::AcqRel);
            returning.done.notify_waiters();
        });
    }
}

/// What a connection is cleaned with before it goes back to its pool: everything a session can
/// carry from one borrower to the next (deadpool-postgres' `Clean`, which keeps prepared
/// statements).
macro_rules! reset_sql {
    () => {
        "CLOSE ALL; SET SESSION AUTHORIZATION DEFAULT; RESET ALL; UNLISTEN *; \
         SELECT pg_advisory_unlock_all(); DISCARD TEMP; DISCARD SEQUENCES"
    };
}
const RESET: &str = reset_sql!();
/// [`RESET`] after rolling back the request's read-only transaction (pooled tier).
const RESET_AFTER_READS: &str = concat!("ROLLBACK; ", reset_sql!());

/// Gauges of one server's budget, for `/metrics`.
#[derive(Debug, Clone)]
pub struct BudgetStats {
    pub db_server_id: Uuid,
    pub budget: u32,
    pub open: u32,
    pub idle: usize,
    pub waiting: usize,
    /// Requests of busy pools waiting for their own connections (not counted in `waiting`).
    pub waiting_own: usize,
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
                gates: Cache::builder()
                    .max_capacity(settings.max_open_tenants.saturating_mul(4))
                    .time_to_idle(POOL_IDLE)
                    .build(),
                budgets: Mutex::new(HashMap::new()),
                keyring,
                settings,
                returning: Arc::default(),
            }),
        }
    }

    /// Waits until every connection given back so far is cleaned and in its pool again (for
    /// tests that count idle connections).
    pub async fn settled(&self) {
        loop {
            // Created before the count is read: a notification in between is not missed.
            let done = self.inner.returning.done.notified();
            if self.inner.returning.count.load(Ordering::Acquire) == 0 {
                return;
            }
            done.await;
        }
    }

    /// `tenant`'s borrows in use and requests waiting at its gate, in this instance.
    pub async fn admission(&self, tenant: TenantId) -> (u32, u32) {
        match self.inner.gates.get(&tenant).await {
            Some(gate) => {
                let state = gate.state.lock().unwrap_or_else(|p| p.into_inner());
                (state.in_use, state.waiting)
            }
            None => (0, 0),
        }
    }

    /// Passes `tenant`'s gate ([`TenantGate`]) by `deadline`, or `None`.
    async fn admit(
        &self,
        gate: Arc<TenantGate>,
        tenant: TenantId,
        budget: &ServerBudget,
        deadline: Instant,
    ) -> Option<GateGuard> {
        let settings = &self.inner.settings;
        let mut waiting: Option<WaitingGuard> = None;
        loop {
            // Created before the state is read: a release in between is not missed.
            let freed = gate.freed.notified();
            {
                let mut state = gate.state.lock().unwrap_or_else(|p| p.into_inner());
                let demand = state.in_use + state.waiting + u32::from(waiting.is_none());
                let flood = demand > settings.per_tenant.saturating_mul(FLOOD_FACTOR);
                let limit = if flood && budget.others_use(tenant, settings.others_window) {
                    settings.flood_connections.min(settings.per_tenant)
                } else {
                    settings.per_tenant
                };
                if state.in_use < limit {
                    state.in_use += 1;
                    if let Some(mut w) = waiting.take() {
                        state.waiting -= 1;
                        w.0 = None;
                    }
                    let more = state.in_use < limit && state.waiting > 0;
                    drop(state);
                    budget.note_use(tenant);
                    if more {
                        // Room for another waiter too (the limit rose): pass the wake-up on.
                        gate.freed.notify_one();
                    }
                    return Some(GateGuard(gate.clone()));
                }
                if waiting.is_none() {
                    state.waiting += 1;
                    waiting = Some(WaitingGuard(Some(gate.clone())));
                }
            }
            if tokio::time::timeout_at(deadline.into(), freed)
                .await
                .is_err()
            {
                return None;
            }
        }
    }

    /// A connection for `route`'s tenant, in its context, within the wait bound.
    pub async fn get(&self, route: &TenantRoute) -> Result<TenantConn, RuntimeError> {
        let placement = route.placement.as_ref().ok_or_else(|| {
            RuntimeError::TenantDatabase("the tenant has no database placement yet".into())
        })?;
        let (key, context) = pool_of(route.tenant_id, placement, self.inner.settings.shared_lanes);
        let started = Instant::now();
        let deadline = started + self.inner.settings.wait;
        // The tenant's gate first: a flood of one tenant queues behind itself, not in front of
        // the others, and holds fewer connections while others use the server.
        let gate = self
            .inner
            .gates
            .get_with(route.tenant_id, async { Arc::new(TenantGate::default()) })
            .await;
        let mut pool = self.pool_for(key, placement, route.tenant_id).await?;
        let Some(share) = self
            .admit(gate, route.tenant_id, &pool.budget, deadline)
            .await
        else {
            metrics::counter!("portico_pool_busy_total").increment(1);
            return Err(RuntimeError::Busy);
        };
        let share = Some(share);
        // Twice at most: a pool closed by a concurrent eviction is rebuilt once.
        for attempt in 0..2 {
            if attempt > 0 {
                pool = self.pool_for(key, placement, route.tenant_id).await?;
            }
            pool.wait_for_own(deadline, self.inner.settings.own_wait)
                .await;
            let remaining = deadline.saturating_duration_since(Instant::now());
            let got = tokio::time::timeout(remaining, pool.pool.get()).await;
            metrics::histogram!("portico_pool_wait_seconds")
                .record(started.elapsed().as_secs_f64());
            return match got {
                Ok(Ok(obj)) => {
                    pool.traffic.hit();
                    Ok(TenantConn {
                        session: Some(Box::new(Pooled {
                            obj,
                            budget: pool.budget.clone(),
                            returning: self.inner.returning.clone(),
                            cleaning: pool.cleaning.clone(),
                        })),
                        context,
                        _share: share,
                        tenant: route.tenant_id,
                        key: TenantKeyRef::new(placement.key_id.clone()),
                        reads_open: Default::default(),
                    })
                }
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
        key: PoolKey,
        placement: &Placement,
        tenant: TenantId,
    ) -> Result<Arc<TenantPool>, RuntimeError> {
        let cache = &self.inner.cache;
        if let Some(p) = cache.get(&key).await {
            if spec_matches(&p.spec, placement) && !p.pool.is_closed() {
                return Ok(p);
            }
            self.evict_key(key).await;
        }
        cache
            .try_get_with(key, self.build(key, &spec_of(placement), tenant))
            .await
            .map_err(|e| RuntimeError::TenantDatabase(e.to_string()))
    }

    async fn build(
        &self,
        key: PoolKey,
        spec: &PoolSpec,
        tenant: TenantId,
    ) -> Result<Arc<TenantPool>, RuntimeError> {
        let keyring = &self.inner.keyring;
        let plain = match key {
            PoolKey::Tenant(_) => {
                keyring
                    .decrypt_for_tenant(
                        tenant,
                        &TenantKeyRef::new(spec.key_id.clone()),
                        &spec.password_ciphertext,
                    )
                    .await?
            }
            PoolKey::Shared(id, _) => {
                keyring
                    .decrypt_platform(
                        &portico_core::keys::pool_role_purpose(id),
                        &spec.password_ciphertext,
                    )
                    .await?
            }
        };
        let password = SecretString::from(String::from_utf8(plain).map_err(|_| {
            RuntimeError::TenantDatabase("the stored role password is not UTF-8".into())
        })?);
        let mut config = tokio_postgres::Config::from_str(&spec.server_url).map_err(|_| {
            RuntimeError::TenantDatabase("the database server's URL cannot be parsed".into())
        })?;
        // Pinned at start-up (and so restored by every `DISCARD ALL`). Dedicated: the audit
        // schema first, so nothing the tenant role creates can stand in for the audit log.
        // Pooled: nothing at all outside a tenant's context.
        let search_path = match key {
            PoolKey::Tenant(_) => crate::conn::DEDICATED_SEARCH_PATH,
            PoolKey::Shared(..) => "pg_catalog",
        };
        config
            .dbname(&spec.database)
            .user(&spec.user)
            .password(password.expose_secret())
            .application_name("portico-runtime")
            .options(format!("-c search_path={search_path}"))
            .connect_timeout(self.inner.settings.wait.max(Duration::from_secs(1)));
        let budget = self.inner.budget_for(spec);
        // Connections are cleaned when they are given back (`Pooled::release`), so a
        // checkout costs no round trip.
        let manager_config = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let pg = match &spec.server_ca {
            Some(ca) => {
                config.ssl_mode(tokio_postgres::config::SslMode::Require);
                let tls = portico_core::pgtls::connector(ca)
                    .map_err(|e| RuntimeError::TenantDatabase(e.to_string()))?;
                deadpool_postgres::Manager::from_config(config, tls, manager_config)
            }
            None => deadpool_postgres::Manager::from_config(config, NoTls, manager_config),
        };
        let manager = TenantManager {
            pg,
            key,
            budget: budget.clone(),
            registry: Arc::downgrade(&self.inner),
        };
        let max_size = match key {
            PoolKey::Tenant(_) => self.inner.settings.per_tenant,
            // Shared by the lane's pooled tenants: a few connections, each serving those
            // tenants often enough to keep their relations and plans cached.
            PoolKey::Shared(..) => self.inner.settings.shared_lane_size.min(budget.size),
        };
        let pool = Pool::builder(manager)
            .max_size(max_size as usize)
            // A connection whose clean-up hangs is discarded, not waited for.
            .recycle_timeout(Some(RECYCLE_TIMEOUT))
            // Most recently used first: a pool's surplus connections stay idle, age, and are
            // the first reclaimed for other pools (or closed by the sweep).
            .queue_mode(deadpool::managed::QueueMode::Lifo)
            .runtime(deadpool::Runtime::Tokio1)
            .build()
            .map_err(|e| RuntimeError::TenantDatabase(e.to_string()))?;
        tracing::debug!(pool = ?key, "pool built");
        Ok(Arc::new(TenantPool {
            spec: spec.clone(),
            pool,
            budget,
            traffic: Traffic::default(),
            cleaning: Arc::default(),
        }))
    }

    /// Closes and forgets a dedicated tenant's pool (suspension, placement or credential
    /// change). A pooled tenant has no pool of its own: its route is what changes.
    pub async fn evict(&self, tenant: TenantId) {
        self.evict_key(PoolKey::Tenant(tenant)).await;
    }

    async fn evict_key(&self, key: PoolKey) {
        if let Some(p) = self.inner.cache.remove(&key).await {
            p.pool.close();
            tracing::debug!(pool = ?key, "pool evicted");
        }
    }

    /// Evicts every pool on a server and forgets its budget (the server's record changed).
    pub async fn evict_server(&self, server: Uuid) {
        let keys: Vec<PoolKey> = self
            .inner
            .cache
            .iter()
            .filter(|(_, p)| p.budget.id == server)
            .map(|(k, _)| *k)
            .collect();
        for k in keys {
            self.evict_key(k).await;
        }
        self.inner
            .budgets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&server);
    }

    /// Closes idle connections older than a minute (a pinned pool keeps its most recently
    /// used one), and runs the caches' housekeeping.
    pub async fn sweep(&self) {
        self.sweep_idle_since(CONNECTION_IDLE).await;
    }

    /// [`TenantPools::sweep`] with another idle limit (the tests use zero: every idle
    /// connection but those pinned pools keep).
    pub async fn sweep_idle_since(&self, limit: Duration) {
        self.inner.cache.run_pending_tasks().await;
        self.inner.gates.run_pending_tasks().await;
        for (key, p) in self.inner.cache.iter() {
            let keep_one = p.pinned(*key);
            // Connections are told apart by when they were last used (an instant, not an
            // elapsed time, which grows between the two passes).
            let newest = if keep_one {
                let mut newest: Option<std::time::Instant> = None;
                p.pool.retain(|_, m| {
                    let used = used_at(&m);
                    newest = Some(newest.map_or(used, |n| n.max(used)));
                    true
                });
                newest
            } else {
                None
            };
            let mut kept = false;
            p.pool.retain(|_, m| {
                if !kept && newest == Some(used_at(&m)) {
                    kept = true;
                    return true;
                }
                m.last_used() < limit
            });
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
                    waiting_own: b.waiting_own.load(Ordering::Acquire),
                    tenant_pools,
                }
            })
            .collect()
    }
}

/// The lane of a pooled tenant among `lanes`: its id modulo the lanes (ids are random, so
/// tenants spread evenly).
pub fn lane_of(tenant: TenantId, lanes: u32) -> u32 {
    let lane = tenant.as_uuid().as_u128() % u128::from(lanes.max(1));
    u32::try_from(lane).unwrap_or(0)
}

/// The pool a tenant's connections come from, and the context they carry (pooled tier): its
/// shared database's lane ([`lane_of`]).
fn pool_of(tenant: TenantId, p: &Placement, lanes: u32) -> (PoolKey, Option<Arc<TenantContext>>) {
    match &p.login {
        Login::Tenant { .. } => (PoolKey::Tenant(tenant), None),
        Login::Pool {
            shared_database_id,
            context,
            ..
        } => (
            PoolKey::Shared(*shared_database_id, lane_of(tenant, lanes)),
            Some(context.clone()),
        ),
    }
}

/// What the pool for `p` logs in with: a dedicated tenant's role, or its shared database's
/// pool role (the same whichever of its tenants asked first).
fn spec_of(p: &Placement) -> PoolSpec {
    let (user, password, key_id) = login_of(p);
    PoolSpec {
        db_server_id: p.db_server_id,
        server_url: p.server_url.clone(),
        server_budget: p.server_budget,
        server_ca: p.server_ca.clone(),
        database: p.database.clone(),
        user: user.to_owned(),
        password_ciphertext: password.to_vec(),
        key_id: key_id.to_owned(),
    }
}

fn login_of(p: &Placement) -> (&str, &[u8], &str) {
    match &p.login {
        Login::Tenant {
            password_ciphertext,
        } => (&p.role, password_ciphertext, &p.key_id),
        Login::Pool {
            pool_role,
            password_ciphertext,
            ..
        } => (pool_role, password_ciphertext, ""),
    }
}

/// Whether an open pool still logs in as `p` says (checked on every request, without copying).
fn spec_matches(spec: &PoolSpec, p: &Placement) -> bool {
    let (user, password, key_id) = login_of(p);
    spec.db_server_id == p.db_server_id
        && spec.server_url == p.server_url
        && spec.server_budget == p.server_budget
        && spec.server_ca == p.server_ca
        && spec.database == p.database
        && spec.user == user
        && spec.password_ciphertext == password
        && spec.key_id == key_id
}
