//! Host → tenant. The `Host` header is normalised (port stripped, case folded, trailing dot
//! removed) and looked up in the catalog: a tenant's subdomain of the base domain or one of its
//! verified custom domains. Nothing else names a tenant.
//!
//! Answers are cached (moka, bounded, TTL as a backstop). The catalog announces every change
//! on channel `portico_catalog` (triggers in the control-plane migrations); [`spawn_listener`]
//! turns those into invalidations, and drops the whole cache whenever it is not sure it has
//! heard everything (start, reconnect).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use moka::future::Cache;
use portico_core::{Hostname, TenantId};
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use uuid::Uuid;

use crate::catalog::{CatalogReader, TenantRoute};
use crate::error::RuntimeError;
use crate::pools::TenantPools;

/// The notification channel the catalog triggers write to.
pub const CATALOG_CHANNEL: &str = "portico_catalog";

/// Why a `Host` header names no tenant host at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the Host header is missing or is not a valid host name")]
pub struct BadHost;

/// Normalises a `Host` header value: strips the port, folds case, removes a trailing dot, and
/// refuses anything that is not a DNS host name (IP literals included).
pub fn normalize_host(raw: &str) -> Result<Hostname, BadHost> {
    Hostname::from_host_header(raw).ok_or(BadHost)
}

type Entry = Option<Arc<TenantRoute>>;

/// The cached host → tenant map.
pub struct Resolver {
    catalog: CatalogReader,
    cache: Cache<Hostname, Entry>,
    /// Bumped on every invalidation, so a look-up that raced with one is not kept.
    generation: AtomicU64,
}

impl Resolver {
    pub fn new(catalog: CatalogReader, ttl: Duration, capacity: u64) -> Self {
        let cache = Cache::builder()
            .max_capacity(capacity)
            .time_to_live(ttl)
            .support_invalidation_closures()
            .build();
        Self {
            catalog,
            cache,
            generation: AtomicU64::new(0),
        }
    }

    /// The tenant of `host`, or `None` when no tenant has it.
    pub async fn resolve(&self, host: &Hostname) -> Result<Entry, RuntimeError> {
        if let Some(hit) = self.cache.get(host).await {
            metrics::counter!("portico_tenant_cache_total", "result" => "hit").increment(1);
            return Ok(hit);
        }
        metrics::counter!("portico_tenant_cache_total", "result" => "miss").increment(1);
        let before = self.generation.load(Ordering::Acquire);
        let entry = self
            .cache
            .try_get_with(host.clone(), async {
                let route = self.catalog.route_for_host(host.as_str()).await?;
                Ok::<_, RuntimeError>(route.map(Arc::new))
            })
            .await
            .map_err(|e| RuntimeError::Catalog {
                operation: "resolving a host",
                message: e.to_string(),
            })?;
        // A notification arrived while the catalog was read: what was read may predate it.
        if self.generation.load(Ordering::Acquire) != before {
            self.cache.invalidate(host).await;
        }
        Ok(entry)
    }

    fn bump(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    pub async fn invalidate_host(&self, host: &Hostname) {
        self.bump();
        self.cache.invalidate(host).await;
    }

    pub fn invalidate_tenant(&self, tenant: TenantId) {
        self.bump();
        // Cannot fail: the cache is built with invalidation closures.
        let _ = self
            .cache
            .invalidate_entries_if(move |_, v| v.as_ref().is_some_and(|r| r.tenant_id == tenant));
    }

    pub fn invalidate_all(&self) {
        self.bump();
        self.cache.invalidate_all();
    }
}

#[derive(serde::Deserialize)]
struct Change {
    tenant_id: Option<Uuid>,
    hostname: Option<String>,
    db_server_id: Option<Uuid>,
    /// The change does not touch how the tenant's database is reached (a schema version or a
    /// feature flag): its cached route goes, its pool stays.
    #[serde(default)]
    keep_pool: bool,
    /// A fleet-wide feature rollout changed: every cached route goes, no pool.
    #[serde(default)]
    features: bool,
}

/// Whether the catalog listener is currently connected and listening (for `/readyz`).
#[derive(Clone, Default)]
pub struct ListenerState(Arc<AtomicBool>);

impl ListenerState {
    pub fn is_listening(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// Listens on [`CATALOG_CHANNEL`] until the returned handle is dropped or aborted. A lost
/// connection is replaced at once; only when connecting fails does it back off (50 ms doubling
/// to 3.2 s), so an unreachable catalog is not hammered. Each change invalidates the cached hosts of its tenant and
/// evicts the tenant's pool (suspension, placement or credential changes).
pub fn spawn_listener(
    pool: PgPool,
    resolver: Arc<Resolver>,
    pools: TenantPools,
) -> (ListenerState, tokio::task::JoinHandle<()>) {
    let state = ListenerState::default();
    let flag = state.clone();
    let task = tokio::spawn(async move {
        let mut failures: u32 = 0;
        loop {
            match listen_once(&pool, &resolver, &pools, &flag).await {
                Ok(()) => {
                    tracing::warn!("catalog notifications: connection lost; reconnecting");
                    failures = 0;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "catalog notifications unavailable; retrying");
                    failures = failures.saturating_add(1);
                }
            }
            flag.0.store(false, Ordering::Release);
            // Anything may have changed unheard.
            resolver.invalidate_all();
            if failures > 0 {
                tokio::time::sleep(retry_backoff(failures)).await;
            }
        }
    });
    (state, task)
}

/// 50 ms after the first failed attempt, doubling up to 3.2 s.
fn retry_backoff(failures: u32) -> Duration {
    Duration::from_millis(50 << failures.saturating_sub(1).min(6))
}

async fn listen_once(
    pool: &PgPool,
    resolver: &Resolver,
    pools: &TenantPools,
    flag: &ListenerState,
) -> Result<(), sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.ignore_pool_close_event(true);
    listener.listen(CATALOG_CHANNEL).await?;
    flag.0.store(true, Ordering::Release);
    // Changes made before we listened were not heard.
    resolver.invalidate_all();
    tracing::info!("listening for catalog changes");
    while let Some(n) = listener.try_recv().await? {
        let Ok(change) = serde_json::from_str::<Change>(n.payload()) else {
            tracing::warn!("ignoring a malformed catalog notification");
            continue;
        };
        if let Some(id) = change.tenant_id.map(TenantId::from_uuid) {
            tracing::debug!(tenant_id = %id, "catalog change");
            resolver.invalidate_tenant(id);
            if !change.keep_pool {
                pools.evict(id).await;
            }
        }
        if change.features {
            resolver.invalidate_all();
        }
        if let Some(host) = change
            .hostname
            .as_deref()
            .and_then(|h| Hostname::parse(h).ok())
        {
            resolver.invalidate_host(&host).await;
        }
        if let Some(server) = change.db_server_id {
            resolver.invalidate_all();
            pools.evict_server(server).await;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_backoff_grows_and_is_capped() {
        assert_eq!(retry_backoff(1), Duration::from_millis(50));
        assert_eq!(retry_backoff(2), Duration::from_millis(100));
        assert_eq!(retry_backoff(7), Duration::from_millis(3200));
        assert_eq!(retry_backoff(8), Duration::from_millis(3200));
        assert_eq!(retry_backoff(u32::MAX), Duration::from_millis(3200));
    }

    #[test]
    fn hosts_are_normalised() {
        for (raw, want) in [
            ("acme.portal.localhost", "acme.portal.localhost"),
            ("ACME.Portal.LocalHost:8080", "acme.portal.localhost"),
            ("acme.portal.localhost.", "acme.portal.localhost"),
            ("acme.portal.localhost.:443", "acme.portal.localhost"),
        ] {
            assert_eq!(
                normalize_host(raw).map(|h| h.as_str().to_owned()),
                Ok(want.into())
            );
        }
        for bad in [
            "",
            ":80",
            "acme.portal.localhost:",
            "acme.portal.localhost:80x",
            "acme.portal.localhost:123456",
            "acme.portal.localhost:65536",
            "[::1]:80",
            "127.0.0.1",
            "127.0.0.1:80",
            "acme_corp.portal.localhost",
            "acme portal.localhost",
            "a..b",
            "localhost",
            "acme.portal.localhost:80:80",
        ] {
            assert_eq!(normalize_host(bad), Err(BadHost), "{bad:?}");
        }
    }
}
