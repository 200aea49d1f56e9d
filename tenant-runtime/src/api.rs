//! The tenant runtime: its shared state ([`Runtime`]), the tenant-resolving middleware, the
//! `Authenticated` extractor, and the tenant API routes (`/api/v1/*`) plus `/healthz` and
//! `/readyz`.
//!
//! Resolve, then extract: [`resolve_tenant`] fixes the tenant from the `Host` header alone and
//! records it on the request span; handlers receive a connection of *that* tenant only, through
//! [`Authenticated`]. No handler takes a tenant id from the client.

use crate::http::ErrorCode;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{FromRef, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use portico_core::keys::Keyring;
use portico_core::{Hostname, Settings, TenantId};
use serde::Serialize;
use sqlx::PgPool;

use crate::catalog::{CatalogReader, TenantRoute, TenantStatus};
use crate::failures::AnonymousFailures;
use crate::http::{Edge, KeyedLimiter, Problem, check_limit, keyed_limiter};
use crate::identity::admin::{self, NewConnection};
use crate::identity::web::{self, IdentityState, SESSION_COOKIE};
use crate::pools::{PoolSettings, TenantConn, TenantPools};
use crate::portal::change::{self, Applied, Change};
use crate::resolve::{ListenerState, Resolver, normalize_host, spawn_listener};
use crate::store::connections::{self, Connection};
use crate::store::roles::{Permission, Permissions, RoleName};
use crate::store::{audit, profile, sessions, tokens, users};

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
    pub identity: Arc<IdentityState>,
    pub content: Arc<crate::portal::ContentState>,
    /// Limits and aggregation of unauthenticated failures (`failures.rs`).
    pub failures: Arc<AnonymousFailures>,
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
        let content = Arc::new(crate::portal::ContentState::new(rt, keyring.clone(), store));
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
            _tasks: Arc::new(Tasks(vec![listen_task, sweep_task])),
        }
    }

    /// Records what is still only counted of unauthenticated failures (at shutdown).
    pub async fn flush_failures(&self) {
        self.failures
            .flush(&self.pools, time::OffsetDateTime::now_utc(), true)
            .await;
    }

    /// `/api/v1/*` of tenant hosts.
    pub fn tenant_routes(&self) -> Router {
        // Paths anyone may call without credentials: admitted per client address and per
        // tenant before any work (`failures.rs`).
        let anonymous = Router::new()
            .route("/login", post(web::local_login))
            .route("/login/totp", post(web::totp_verify))
            .route(
                "/invite/{token}",
                get(web::invite_page).post(web::invite_accept),
            )
            .route("/sso/{name}/start", get(web::sso_start))
            .route("/sso/saml/{name}/acs", post(web::saml_acs))
            .route("/sso/oidc/{name}/callback", get(web::oidc_callback))
            .route("/d/{token}", get(crate::portal::documents::use_link))
            .route_layer(middleware::from_fn_with_state(
                self.clone(),
                admit_anonymous,
            ));
        Router::new()
            .route("/api/v1/tenant", get(get_tenant))
            .route("/api/v1/me", get(get_me))
            .route(
                "/api/v1/sso/connections",
                get(list_connections).post(create_connection),
            )
            .route(
                "/api/v1/sso/connections/{name}",
                get(show_connection).delete(remove_connection),
            )
            .merge(crate::portal::routes())
            .route("/", get(root).post(web::discover))
            .merge(anonymous)
            .route("/login", get(web::login_page))
            .route("/login/totp", get(web::totp_page))
            .route("/logout", post(web::logout))
            .route("/account/mfa", get(web::mfa_page).post(web::mfa_enrol))
            .route("/account/mfa/start", post(web::mfa_start))
            .route("/account/mfa/remove", post(web::mfa_remove))
            .route("/sso/saml/{name}/metadata", get(web::saml_metadata))
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
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::NotReady,
            "Not ready",
        )
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
            ErrorCode::InvalidHost,
            "The Host header is missing or malformed",
        )
    })
}

/// Resolves the tenant from `Host` and refuses hosts that are not an active tenant's.
async fn resolve_tenant(State(rt): State<Runtime>, mut req: Request, next: Next) -> Response {
    if request_host(req.headers()).is_ok_and(|h| h == rt.identity.login_host) {
        // The shared login host: no tenant. Only `/` (home-realm discovery) answers there;
        // tenant handlers find no tenant and answer 404.
        req.extensions_mut().insert(LoginHost);
        return next.run(req).await;
    }
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
        TenantStatus::Deleting | TenantStatus::Deleted => return Err(not_found()),
    }
    check_limit(
        rt.tenant_limiter.as_deref(),
        &route.tenant_id,
        ErrorCode::TenantRateLimited,
    )?;
    Ok(route)
}

/// Admission to the anonymous paths: per client address and per tenant, before any work.
async fn admit_anonymous(State(rt): State<Runtime>, req: Request, next: Next) -> Response {
    if let Some(route) = req.extensions().get::<Arc<TenantRoute>>() {
        let ip = req.extensions().get::<crate::http::ClientIp>().map(|c| c.0);
        if let Err(p) = rt.failures.admit(route.tenant_id, ip) {
            return p.into_response();
        }
    }
    next.run(req).await
}

/// Marks requests to the shared login host.
#[derive(Clone, Copy)]
pub struct LoginHost;

/// `/`: the portal home on tenant hosts, home-realm discovery on the login host.
async fn root(State(rt): State<Runtime>, req: Request) -> Response {
    if req.extensions().get::<LoginHost>().is_some() {
        return web::discover_page().await;
    }
    let (mut parts, _) = req.into_parts();
    match web::Web::from_request_parts(&mut parts, &rt).await {
        Ok(w) => web::home(w).await.into_response(),
        Err(r) => r,
    }
}

/// How a caller authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CallerKind {
    ApiToken,
    /// A browser session (safe methods only: cookies never authorise a state change here).
    User,
}

/// Who is calling, with the permissions and sites of their role, read from the tenant's
/// database on every request (so a revoked role or a deactivated user counts at once).
#[derive(Debug, Clone, Serialize)]
pub struct Caller {
    pub kind: CallerKind,
    /// The token's name, or the user's e-mail.
    pub name: String,
    pub email: Option<String>,
    pub user_id: Option<uuid::Uuid>,
    pub token_id: Option<uuid::Uuid>,
    pub role: RoleName,
    pub permissions: Vec<Permission>,
    /// Sites this caller is limited to; `None`: every site.
    pub sites: Option<Vec<String>>,
    #[serde(skip)]
    pub perms: Permissions,
}

impl Caller {
    /// The actor recorded in the audit log: the user's e-mail (signed in, or through a token
    /// acting for them), else `token:<name>`.
    pub fn name(&self) -> String {
        match (self.email.as_ref().filter(|e| !e.is_empty()), self.kind) {
            (Some(email), _) => email.clone(),
            (None, CallerKind::ApiToken) => format!("token:{}", self.name),
            (None, CallerKind::User) => self.name.clone(),
        }
    }

    /// The principal an `Idempotency-Key` or an approval belongs to: the user (whichever of
    /// their tokens or sessions is used), else the token.
    pub fn principal(&self) -> String {
        match (self.user_id, self.token_id) {
            (Some(u), _) => format!("user:{u}"),
            (None, Some(t)) => format!("token:{t}"),
            (None, None) => self.name(),
        }
    }

    pub fn can(&self, p: Permission) -> bool {
        self.perms.contains(p)
    }

    /// `403 forbidden` unless the caller holds `p`.
    pub fn require(&self, p: Permission) -> Result<(), Problem> {
        if self.can(p) {
            Ok(())
        } else {
            Err(Problem::new(
                StatusCode::FORBIDDEN,
                ErrorCode::Forbidden,
                "You do not have the permission this needs",
            )
            .detail(format!("This needs the '{}' permission", p.as_str())))
        }
    }

    /// Whether the caller may see things of `site` (`None`: organization-wide things, which
    /// site-limited callers do not see).
    pub fn sees_site(&self, site: Option<&str>) -> bool {
        match (&self.sites, site) {
            (None, _) => true,
            (Some(allowed), Some(s)) => allowed.iter().any(|a| a == s),
            (Some(_), None) => false,
        }
    }
}

/// A request of an authenticated caller of the resolved tenant, with the connection its
/// credentials were checked on (handlers reuse it).
pub struct Authenticated {
    pub tenant: Arc<TenantRoute>,
    pub caller: Caller,
    pub conn: TenantConn,
    /// The true client address (behind trusted proxies), for the audit log.
    pub ip: Option<IpAddr>,
}

impl Authenticated {
    /// An audit event by this caller, with client address and request id filled in.
    pub async fn audit(
        &self,
        event_type: audit::EventType,
        target: Option<&str>,
        success: bool,
        reason: Option<&str>,
        details: serde_json::Value,
    ) -> Result<(), Problem> {
        let actor = self.caller.name();
        let request_id = crate::http::RequestId::current().map(|r| r.0);
        let mut e = audit::Event::new(event_type, &actor, success);
        e.client_ip = self.ip;
        e.request_id = request_id.as_deref();
        e.target = target;
        e.reason = reason;
        e.details = details;
        // The actor is the user (by id) with the e-mail they had at that moment.
        if let (Some(user), serde_json::Value::Object(map)) = (self.caller.user_id, &mut e.details)
        {
            map.insert("actor_user_id".into(), user.to_string().into());
        }
        audit::record(&self.conn, &e).await?;
        Ok(())
    }

    /// Records a successful action of this caller on `target`.
    pub async fn record(
        &self,
        event_type: audit::EventType,
        target: &str,
        details: serde_json::Value,
    ) -> Result<(), Problem> {
        self.audit(event_type, Some(target), true, None, details)
            .await
    }

    /// `problem`, after recording it as `permission_denied` with `reason` (a refusal of
    /// something the caller may not do); if the audit fails, that error instead.
    pub async fn refuse(&self, problem: Problem, reason: &str) -> Problem {
        let details = serde_json::json!({"code": problem.code});
        match self
            .audit(
                audit::EventType::PermissionDenied,
                None,
                false,
                Some(reason),
                details,
            )
            .await
        {
            Ok(()) => problem,
            Err(e) => e,
        }
    }

    /// `403` unless the caller holds `p`; a refusal is audited.
    pub async fn require(&self, p: Permission) -> Result<(), Problem> {
        if let Err(problem) = self.caller.require(p) {
            self.audit(
                audit::EventType::PermissionDenied,
                None,
                false,
                Some(p.as_str()),
                serde_json::json!({}),
            )
            .await?;
            return Err(problem);
        }
        Ok(())
    }

    /// The tenant's key reference.
    pub fn key_ref(&self) -> Result<portico_core::keys::TenantKeyRef, Problem> {
        self.tenant
            .placement
            .as_ref()
            .map(|p| portico_core::keys::TenantKeyRef::new(p.key_id.clone()))
            .ok_or_else(Problem::internal)
    }
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
            .ok_or_else(Problem::not_found)?;
        let Some(value) = parts.headers.get(header::AUTHORIZATION) else {
            return session_caller(&rt, parts, tenant).await;
        };
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
            caller: Caller {
                kind: CallerKind::ApiToken,
                name: caller.name,
                email: caller.email,
                user_id: caller.user_id,
                token_id: Some(caller.token_id),
                role: caller.role,
                permissions: caller.permissions.list(),
                sites: caller.sites,
                perms: caller.permissions,
            },
            conn,
            ip: parts.extensions.get::<crate::http::ClientIp>().map(|c| c.0),
        })
    }
}

/// A browser session as the caller: `GET`/`HEAD` only, full (not waiting for a second factor)
/// sessions of active users only.
async fn session_caller(
    rt: &Runtime,
    parts: &Parts,
    tenant: Arc<TenantRoute>,
) -> Result<Authenticated, Problem> {
    let safe = matches!(
        parts.method,
        axum::http::Method::GET | axum::http::Method::HEAD
    );
    let hash = web::cookie_digest(&parts.headers, SESSION_COOKIE);
    let (Some(hash), true) = (hash, safe) else {
        return Err(Problem::unauthenticated());
    };
    let conn = rt.pools.get(&tenant).await?;
    let session = sessions::current(&conn, &hash, rt.identity.timeouts.idle)
        .await?
        .filter(|s| !s.mfa_pending)
        .ok_or_else(Problem::unauthenticated)?;
    let (user, perms) = users::with_permissions(&conn, session.user_id)
        .await?
        .filter(|(u, _)| u.active)
        .ok_or_else(Problem::unauthenticated)?;
    // SSO users whose IdP vouched for no e-mail have none: they act as `user:<id>`.
    let email = Some(user.email).filter(|e| !e.is_empty());
    Ok(Authenticated {
        tenant,
        caller: Caller {
            kind: CallerKind::User,
            name: email.clone().unwrap_or_else(|| format!("user:{}", user.id)),
            email,
            user_id: Some(user.id),
            token_id: None,
            role: user.role,
            permissions: perms.list(),
            sites: user.site_scope,
            perms,
        },
        conn,
        ip: parts.extensions.get::<crate::http::ClientIp>().map(|c| c.0),
    })
}

async fn list_connections(auth: Authenticated) -> Result<Json<Vec<Connection>>, Problem> {
    auth.require(Permission::SsoManage).await?;
    Ok(Json(connections::list(&auth.conn).await?))
}

async fn show_connection(
    auth: Authenticated,
    axum::extract::Path(name): axum::extract::Path<String>,
) -> Result<Json<Connection>, Problem> {
    auth.require(Permission::SsoManage).await?;
    connections::by_name(&auth.conn, &name)
        .await?
        .map(Json)
        .ok_or_else(Problem::not_found)
}

async fn create_connection(
    State(rt): State<Runtime>,
    mut auth: Authenticated,
    crate::http::ApiJson(raw): crate::http::ApiJson<serde_json::Value>,
) -> Result<Response, Problem> {
    auth.require(Permission::SsoManage).await?;
    // Users signing in through a new connection are not limited to sites: only an unlimited
    // caller may add one.
    if auth.caller.sites.is_some() {
        let problem = Problem::forbidden("Site-limited callers cannot change SSO connections");
        return Err(auth.refuse(problem, "site_scope").await);
    }
    let new: NewConnection =
        serde_json::from_value(raw.clone()).map_err(|e| Problem::invalid_input(e.to_string()))?;
    let key = auth.key_ref()?;
    let prepared = admin::prepare(
        &auth.conn,
        &rt.identity.keyring,
        auth.tenant.tenant_id,
        &key,
        rt.identity.providers.fetcher(),
        new,
    )
    .await?;
    // Mapping an IdP group to a role is granting it: only roles the caller could grant.
    for role in prepared.roles() {
        let perms = users::permissions_of(&auth.conn, &role).await?;
        if !perms.is_subset(auth.caller.perms) {
            let problem = Problem::new(
                StatusCode::FORBIDDEN,
                ErrorCode::EscalationRefused,
                "You cannot grant a permission you do not hold",
            )
            .detail(format!("role '{role}' has permissions you do not hold"));
            return Err(auth.refuse(problem, "no_escalation").await);
        }
    }
    let change = Change::CreateSsoConnection {
        connection: prepared,
    };
    if change.needs_approval(&auth).await? {
        return crate::portal::access::pending(&auth, &change).await;
    }
    let Applied::Connection(created) = change::apply(&mut auth, &change, None).await? else {
        return Err(Problem::internal());
    };
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

async fn remove_connection(
    mut auth: Authenticated,
    axum::extract::Path(name): axum::extract::Path<String>,
) -> Result<Response, Problem> {
    auth.require(Permission::SsoManage).await?;
    connections::by_name(&auth.conn, &name)
        .await?
        .ok_or_else(Problem::not_found)?;
    if auth.caller.sites.is_some() {
        let problem = Problem::forbidden("Site-limited callers cannot change SSO connections");
        return Err(auth.refuse(problem, "site_scope").await);
    }
    let change = Change::RemoveSsoConnection { name };
    if change.needs_approval(&auth).await? {
        return crate::portal::access::pending(&auth, &change).await;
    }
    change::apply(&mut auth, &change, None).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
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
