//! Resolve, then extract: [`resolve_tenant`] fixes the tenant from the `Host` header alone and
//! records it on the request span, then the status gate answers for tenants that are not
//! active and the per-tenant limit applies; [`admit_anonymous`] admits the anonymous paths.
//! No handler takes a tenant id from the client.

use crate::catalog::{TenantRoute, TenantStatus};
use crate::http::ErrorCode;
use crate::http::{Problem, check_limit};
use crate::state::Runtime;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
pub use portico_http::request_host;
use std::sync::Arc;

/// Resolves the tenant from `Host` and refuses hosts that are not an active tenant's.
pub(crate) async fn resolve_tenant(
    State(rt): State<Runtime>,
    mut req: Request,
    next: Next,
) -> Response {
    if request_host(req.headers()).is_ok_and(|h| h == rt.identity.login_host) {
        // The shared login host: no tenant. Only `/` (home-realm discovery) answers there;
        // tenant handlers find no tenant and answer 404.
        req.extensions_mut().insert(LoginHost);
        return next.run(req).await;
    }
    match resolve(&rt, req.method(), req.headers()).await {
        Ok(route) => {
            req.extensions_mut().insert(route);
            next.run(req).await
        }
        Err(p) => p.into_response(),
    }
}

async fn resolve(
    rt: &Runtime,
    method: &axum::http::Method,
    headers: &axum::http::HeaderMap,
) -> Result<Arc<TenantRoute>, Problem> {
    let host = request_host(headers)?;
    let not_found = || {
        Problem::new(
            StatusCode::NOT_FOUND,
            ErrorCode::TenantNotFound,
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
                ErrorCode::TenantSuspended,
                "This tenant is suspended",
            ));
        }
        TenantStatus::Provisioning => {
            return Err(Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::TenantUnavailable,
                "This tenant is being set up; retry shortly",
            )
            .retry_after(5));
        }
        // Approved for deletion (restorable during its grace period) or purged: gone for
        // every caller at once, whatever session or token it presents.
        TenantStatus::Deleting | TenantStatus::Deleted => {
            return Err(Problem::new(
                StatusCode::GONE,
                ErrorCode::TenantDeleted,
                "This tenant has been deleted",
            ));
        }
    }
    // Below the oldest schema this code serves: the fleet migration has not reached it yet.
    // (A newer schema than this binary knows is served: removals ship a release later.)
    if route
        .schema_version
        .is_some_and(|v| v < crate::MIN_TENANT_SCHEMA)
    {
        return Err(Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::TenantUpgrading,
            "This tenant's data is being upgraded; retry shortly",
        )
        .retry_after(30));
    }
    // A move is copying the tenant: only requests that change nothing go on.
    if route.write_frozen && !method.is_safe() {
        return Err(crate::error::moving());
    }
    check_limit(
        rt.tenant_limiter.as_deref(),
        &route.tenant_id,
        ErrorCode::TenantRateLimited,
    )?;
    Ok(route)
}

/// Admission to the anonymous paths: per client address and per tenant, before any work.
pub(crate) async fn admit_anonymous(
    State(rt): State<Runtime>,
    req: Request,
    next: Next,
) -> Response {
    if let Some(route) = req.extensions().get::<Arc<TenantRoute>>() {
        let ip = req.extensions().get::<crate::http::ClientIp>().map(|c| c.0);
        if let Err(p) = rt.failures.admit(route.tenant_id, ip) {
            return p.into_response();
        }
    }
    next.run(req).await
}

/// Gates a whole capability behind feature flag `flag`: `404 feature_disabled` for tenants that
/// do not have it. The flags come with the resolved tenant (no query).
pub(crate) async fn require_feature(
    State(flag): State<&'static str>,
    req: Request,
    next: Next,
) -> Response {
    let on = req
        .extensions()
        .get::<Arc<TenantRoute>>()
        .is_some_and(|t| t.features.enabled(flag));
    if !on {
        return Problem::new(
            StatusCode::NOT_FOUND,
            ErrorCode::FeatureDisabled,
            "This feature is not enabled for this organization",
        )
        .into_response();
    }
    next.run(req).await
}

/// Marks requests to the shared login host.
#[derive(Clone, Copy)]
pub struct LoginHost;
