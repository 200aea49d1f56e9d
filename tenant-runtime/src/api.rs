//! The tenant runtime: its shared state ([`Runtime`]), the tenant-resolving middleware, the
//! `Authenticated` extractor, and the tenant API routes (`/api/v1/*`) plus `/healthz` and
//! `/readyz`.
//!
//! Resolve, then extract: [`resolve_tenant`] fixes the tenant from the `Host` header alone and
//! records it on the request span; handlers receive a connection of *that* tenant only, through
//! [`Authenticated`]. No handler takes a tenant id from the client.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{FromRef, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use portico_core::keys::Keyring;
use portico_core::{Hostname, Settings, TenantId};
use serde::Serialize;
use sqlx::PgPool;

use crate::catalog::{CatalogReader, TenantRoute, TenantStatus};
use crate::http::{Edge, KeyedLimiter, Problem, check_limit, keyed_limiter};
use crate::pools::{PoolSettings, TenantConn, TenantPools};
use crate::resolve::{ListenerState, Resolver, normalize_host, spawn_listener};
use crate::store::{profile, tokens};

/// Hosts kept in the resolution cache.
const RESOLVER_CAPACITY: u64 = 100_000;

/// Everything a tenant request needs. Cloning is cheap (shared handles).
#[derive(Clone)]
pub struct Runtime {
    pub catalog: CatalogReader,
    pub resolver: Arc<Resolver>,
    pub pools: TenantPools,
    pub listener: ListenerState,
    pub operator_host: Hostname,
    pub edge: Edge,
    tenant_limiter: Option<Arc<KeyedLimiter<TenantId>>>,
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
    /// housekeeping task.
    pub fn start(settings: &Settings, catalog: PgPool, keyring: Keyring) -> Self {
        let rt = &settings.runtime;
        let reader = CatalogReader::new(catalog.clone());
        let resolver = Arc::new(Resolver::new(
            reader.clone(),
            rt.tenant_cache_ttl,
            RESOLVER_CAPACITY,
        ));
        let pools = TenantPools::new(
            keyring,
            PoolSettings {
                max_open_tenants: rt.max_open_tenants,
                per_tenant: rt.tenant_pool_size,
                wait: rt.pool_wait,
                instances: rt.instances,
            },
        );
        let (listener, listen_task) = spawn_listener(catalog, resolver.clone(), pools.clone());
        let edge = Edge {
            trusted_proxies: Arc::new(rt.trusted_proxies.clone()),
            ip_limiter: keyed_limiter::<IpAddr>(rt.rate_limit_per_ip),
            request_timeout: rt.request_timeout,
        };
        let tenant_limiter = keyed_limiter::<TenantId>(rt.rate_limit_per_tenant);
        let sweep_task = {
            let pools = pools.clone();
            let ip = edge.ip_limiter.clone();
            let tenant = tenant_limiter.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(30));
                loop {
                    tick.tick().await;
                    pools.sweep().await;
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
            tenant_limiter,
            _tasks: Arc::new(Tasks(vec![listen_task, sweep_task])),
        }
    }

    /// `/api/v1/*` of tenant hosts.
    pub fn tenant_routes(&self) -> Router {
        Router::new()
            .route("/api/v1/tenant", get(get_tenant))
            .route("/api/v1/me", get(get_me))
            .route_layer(middleware::from_fn_with_state(self.clone(), resolve_tenant))
            .with_state(self.clone())
    }

    /// `/healthz` and `/readyz`, on every host.
    pub fn health_routes(&self) -> Router {
        Router::new()
            .route(
                "/healthz",
                get(|| async { Json(serde_json::json!({"status": "ok"})) }),
            )
            .route("/readyz", get(readyz))
            .with_state(self.clone())
    }
}

async fn readyz(State(rt): State<Runtime>) -> Response {
    let catalog = tokio::time::timeout(Duration::from_secs(2), rt.catalog.ping()).await;
    let catalog_ok = matches!(catalog, Ok(Ok(())));
    let listening = rt.listener.is_listening();
    if catalog_ok && listening {
        Json(serde_json::json!({"status": "ready", "catalog": "ok", "notifications": "listening"}))
            .into_response()
    } else {
        Problem::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", "Not ready")
            .detail(format!(
                "catalog {}, notifications {}",
                if catalog_ok { "ok" } else { "unreachable" },
                if listening {
                    "listening"
                } else {
                    "not listening"
                }
            ))
            .retry_after(1)
            .into_response()
    }
}

/// The normalised host of a request, or the `invalid_host` problem.
pub fn request_host(headers: &axum::http::HeaderMap) -> Result<Hostname, Problem> {
    let raw = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    normalize_host(raw).map_err(|_| {
        Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid_host",
            "The Host header is missing or malformed",
        )
    })
}

/// Resolves the tenant from `Host` and refuses hosts that are not an active tenant's.
async fn resolve_tenant(State(rt): State<Runtime>, mut req: Request, next: Next) -> Response {
    match resolve(&rt, req.headers()).await {
        Ok(route) => {
            req.extensions_mut().insert(route);
            next.run(req).await
        }
        Err(p) => p.into_response(),
    }
}

async fn resolve(
    rt: &Runtime,
    headers: &axum::http::HeaderMap,
) -> Result<Arc<TenantRoute>, Problem> {
    let host = request_host(headers)?;
    let not_found = || {
        Problem::new(
            StatusCode::NOT_FOUND,
            "tenant_not_found",
            "No tenant is served at this host",
        )
    };
    if host == rt.operator_host {
        return Err(not_found());
    }
    let route = rt.resolver.resolve(&host).await?.ok_or_else(not_found)?;
    // On the span (and so on the log line) whatever the answer, refusals included.
    tracing::Span::current().record("tenant_id", tracing::field::display(route.tenant_id));
    match route.status {
        TenantStatus::Active => {}
        TenantStatus::Suspended => {
            return Err(Problem::new(
                StatusCode::FORBIDDEN,
                "tenant_suspended",
                "This tenant is suspended",
            ));
        }
        TenantStatus::Provisioning => {
            return Err(Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "tenant_unavailable",
                "This tenant is being set up; retry shortly",
            )
            .retry_after(5));
        }
        TenantStatus::Deleting | TenantStatus::Deleted => return Err(not_found()),
    }
    check_limit(
        rt.tenant_limiter.as_deref(),
        &route.tenant_id,
        "tenant_rate_limited",
    )?;
    Ok(route)
}

/// Who is calling.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Caller {
    ApiToken(tokens::TokenCaller),
}

/// A request of an authenticated caller of the resolved tenant, with the connection its
/// credentials were checked on (handlers reuse it).
pub struct Authenticated {
    pub tenant: Arc<TenantRoute>,
    pub caller: Caller,
    pub conn: TenantConn,
}

impl<S> FromRequestParts<S> for Authenticated
where
    Runtime: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        let rt = Runtime::from_ref(state);
        let tenant = parts
            .extensions
            .get::<Arc<TenantRoute>>()
            .cloned()
            .ok_or_else(Problem::internal)?;
        let value = parts
            .headers
            .get(header::AUTHORIZATION)
            .ok_or_else(Problem::unauthenticated)?;
        let digest = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .and_then(|t| tokens::presented_digest(tokens::TOKEN_PREFIX, t.trim()))
            .ok_or_else(Problem::invalid_token)?;
        let conn = rt.pools.get(&tenant).await?;
        let caller = tokens::authenticate(&conn, &digest)
            .await?
            .ok_or_else(Problem::invalid_token)?;
        Ok(Self {
            tenant,
            caller: Caller::ApiToken(caller),
            conn,
        })
    }
}

async fn get_tenant(auth: Authenticated) -> Result<Json<profile::Profile>, Problem> {
    Ok(Json(profile::get(&auth.conn).await?))
}

#[derive(Serialize)]
struct Me {
    tenant_id: TenantId,
    tenant: String,
    caller: Caller,
}

async fn get_me(auth: Authenticated) -> Json<Me> {
    Json(Me {
        tenant_id: auth.tenant.tenant_id,
        tenant: auth.tenant.slug.clone(),
        caller: auth.caller,
    })
}
