//! The operator API: `/operator/v1/*`, served only on the operator host, authenticated with
//! operator tokens, every action written to the control-plane audit trail (who, what, target,
//! outcome, client address, request id). It calls the same workflows as the CLI.

mod deletion;
mod exports;

use portico_http::ErrorCode;
use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::{FromRequestParts, MatchedPath, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use portico_core::{DbServerName, Hostname, Slug};
use portico_http::request_host;
use portico_http::{ApiJson, ClientIp, Problem, RequestId};
use portico_provisioning::ProvisionError;
use serde::Deserialize;
use uuid::Uuid;

use crate::context::Platform;
use crate::db_servers;
use crate::error::PlatformError;
use crate::operators::{AuditEntry, OperatorIdentity};
use crate::tenants::{self, CreateTenant};

#[derive(Clone)]
pub struct OperatorApi {
    pub platform: Arc<Platform>,
    pub operator_host: Hostname,
}

impl OperatorApi {
    pub fn routes(&self) -> Router {
        Router::new()
            .route(
                "/operator/v1/tenants",
                get(list_tenants).post(create_tenant),
            )
            .route("/operator/v1/tenants/{slug}", get(show_tenant))
            .route("/operator/v1/tenants/{slug}/suspend", post(suspend_tenant))
            .route("/operator/v1/tenants/{slug}/resume", post(resume_tenant))
            .route("/operator/v1/tenants/{slug}/moves", post(start_move))
            .route(
                "/operator/v1/tenants/{slug}/moves/rollback",
                post(rollback_move),
            )
            .route(
                "/operator/v1/tenants/{slug}/deletion",
                get(deletion::show_deletion).post(deletion::request_deletion),
            )
            .route(
                "/operator/v1/tenants/{slug}/restore",
                post(deletion::restore),
            )
            .route("/operator/v1/tenants/{slug}/exports", post(exports::start))
            .route("/operator/v1/exports/{id}", get(exports::show))
            .route("/operator/v1/exports/{id}/download", get(exports::download))
            .route("/operator/v1/approvals", get(deletion::list_approvals))
            .route(
                "/operator/v1/approvals/{id}/approve",
                post(deletion::approve),
            )
            .route("/operator/v1/approvals/{id}/reject", post(deletion::reject))
            .route("/operator/v1/runs/{run_id}", get(show_run))
            .route(
                "/operator/v1/db-servers",
                get(list_servers).post(add_server),
            )
            .route(
                "/operator/v1/fleet/migrations",
                get(list_fleet_runs).post(start_fleet_migration),
            )
            .route(
                "/operator/v1/fleet/migrations/{run_id}",
                get(show_fleet_run),
            )
            .route("/operator/v1/fleet/status", get(fleet_status))
            .route_layer(middleware::from_fn_with_state(
                self.clone(),
                operator_host_only,
            ))
            .with_state(self.clone())
    }
}

/// The operator API exists only on the operator host.
async fn operator_host_only(State(api): State<OperatorApi>, req: Request, next: Next) -> Response {
    match request_host(req.headers()) {
        Ok(h) if h == api.operator_host => next.run(req).await,
        Ok(_) => Problem::not_found().into_response(),
        Err(p) => p.into_response(),
    }
}

impl From<PlatformError> for Problem {
    fn from(e: PlatformError) -> Self {
        let conflict = |code, title, detail: String| {
            Problem::new(StatusCode::CONFLICT, code, title).detail(detail)
        };
        match e {
            PlatformError::InvalidInput(m) => Problem::invalid_input(m),
            PlatformError::Settings(s) => Problem::invalid_input(s.to_string()),
            PlatformError::SlugTaken(_) => {
                conflict(ErrorCode::SlugTaken, "Slug taken", e.to_string())
            }
            PlatformError::DomainTaken { .. } => {
                conflict(ErrorCode::DomainTaken, "Domain taken", e.to_string())
            }
            PlatformError::ServerExists(_) => conflict(
                ErrorCode::DbServerExists,
                "Database server exists",
                e.to_string(),
            ),
            PlatformError::InvalidState(m) => conflict(ErrorCode::InvalidState, "Invalid state", m),
            PlatformError::Conflict(m) => conflict(ErrorCode::Conflict, "Conflict", m),
            PlatformError::RetentionBlocked {
                legal_hold,
                message,
            } => {
                if legal_hold {
                    conflict(
                        ErrorCode::LegalHoldActive,
                        "Documents are under legal hold",
                        message,
                    )
                } else {
                    conflict(
                        ErrorCode::RetentionActive,
                        "Documents are under retention",
                        message,
                    )
                }
            }
            PlatformError::ApprovalNotFound(_) => Problem::new(
                StatusCode::NOT_FOUND,
                ErrorCode::NotFound,
                "No such approval",
            )
            .detail(e.to_string()),
            PlatformError::ApprovalDecided(_) => {
                conflict(ErrorCode::ApprovalDecided, "Already decided", e.to_string())
            }
            PlatformError::Infected(m) => Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                ErrorCode::UploadInfected,
                "Malware found",
            )
            .detail(m),
            PlatformError::SameOperator(m) => Problem::new(
                StatusCode::FORBIDDEN,
                ErrorCode::SameOperator,
                "Another operator must approve",
            )
            .detail(m),
            PlatformError::TenantNotFound(_) => Problem::new(
                StatusCode::NOT_FOUND,
                ErrorCode::TenantNotFound,
                "No such tenant",
            )
            .detail(e.to_string()),
            PlatformError::ServerNotFound(_) => Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                ErrorCode::DbServerNotFound,
                "No such database server",
            )
            .detail(e.to_string()),
            PlatformError::Busy(m) => Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::Busy,
                "Another operation holds this tenant",
            )
            .detail(m)
            .retry_after(5),
            PlatformError::Provision(
                ProvisionError::InvalidUrl(_)
                | ProvisionError::Unreachable { .. }
                | ProvisionError::Unsuitable { .. },
            ) => Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                ErrorCode::DbServerRejected,
                "The database server cannot be used",
            )
            .detail(e.to_string()),
            other => {
                tracing::error!(error = %portico_core::error_chain(&other), "operator API: internal error");
                Problem::internal()
            }
        }
    }
}

/// An authenticated operator, with where the request came from.
pub struct Operator {
    identity: OperatorIdentity,
    ip: Option<IpAddr>,
    request_id: String,
}

fn request_context(parts: &Parts) -> (Option<IpAddr>, String, String) {
    let ip = parts.extensions.get::<ClientIp>().map(|c| c.0);
    let request_id = parts
        .extensions
        .get::<RequestId>()
        .map(|r| r.0.clone())
        .unwrap_or_default();
    let route = parts
        .extensions
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str);
    (ip, request_id, format!("{} {route}", parts.method))
}

impl FromRequestParts<OperatorApi> for Operator {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, api: &OperatorApi) -> Result<Self, Problem> {
        let (ip, request_id, action) = request_context(parts);
        let presented = parts
            .headers
            .get(header::AUTHORIZATION)
            .map(|v| v.to_str().ok().and_then(|v| v.strip_prefix("Bearer ")));
        let identity = match presented {
            None => Err(Problem::unauthenticated()),
            Some(None) => Err(Problem::invalid_token()),
            Some(Some(token)) => match api.platform.catalog.operator_by_token(token.trim()).await {
                Ok(Some(identity)) => Ok(identity),
                Ok(None) => Err(Problem::invalid_token()),
                Err(e) => return Err(e.into()),
            },
        };
        match identity {
            Ok(identity) => Ok(Self {
                identity,
                ip,
                request_id,
            }),
            Err(problem) => {
                api.platform
                    .catalog
                    .audit(AuditEntry {
                        actor: "-",
                        action: &action,
                        target: None,
                        outcome: "denied",
                        client_ip: ip,
                        request_id: &request_id,
                        detail: Some(serde_json::json!({"code": problem.code})),
                    })
                    .await
                    .map_err(Problem::from)?;
                Err(problem)
            }
        }
    }
}

impl Operator {
    /// Records the outcome of an action, then passes the result on.
    async fn record<T>(
        &self,
        api: &OperatorApi,
        action: &str,
        target: Option<&str>,
        result: Result<T, Problem>,
        detail: Option<serde_json::Value>,
    ) -> Result<T, Problem> {
        let (outcome, mut detail) = match &result {
            Ok(_) => ("succeeded", detail.unwrap_or_else(|| serde_json::json!({}))),
            Err(p) => ("failed", serde_json::json!({"code": p.code})),
        };
        detail["token_id"] = self.identity.token_id.to_string().into();
        api.platform
            .catalog
            .audit(AuditEntry {
                actor: &self.identity.name,
                action,
                target,
                outcome,
                client_ip: self.ip,
                request_id: &self.request_id,
                detail: Some(detail),
            })
            .await
            .map_err(Problem::from)?;
        result
    }
}

fn run_id(s: &str) -> Result<Uuid, Problem> {
    Uuid::parse_str(s).map_err(|_| Problem::invalid_input(format!("'{s}' is not a run id")))
}

fn no_such_run() -> Problem {
    Problem::new(StatusCode::NOT_FOUND, ErrorCode::RunNotFound, "No such run")
}

fn slug(s: &str) -> Result<Slug, Problem> {
    Slug::parse(s).map_err(|e| Problem::invalid_input(e.to_string()))
}

async fn list_tenants(State(api): State<OperatorApi>, op: Operator) -> Result<Response, Problem> {
    let result = tenants::list(&api.platform).await.map_err(Problem::from);
    let all = op.record(&api, "tenant.list", None, result, None).await?;
    Ok(Json(all).into_response())
}

#[derive(Clone, Copy)]
enum TenantAction {
    Show,
    Suspend,
    Resume,
}

/// Show, suspend or resume one tenant: the same workflow the CLI calls, audited.
async fn on_tenant(
    api: &OperatorApi,
    op: &Operator,
    s: &str,
    action: TenantAction,
) -> Result<Response, Problem> {
    let name = match action {
        TenantAction::Show => "tenant.show",
        TenantAction::Suspend => "tenant.suspend",
        TenantAction::Resume => "tenant.resume",
    };
    let result = async {
        let (p, slug) = (&api.platform, slug(s)?);
        let slug = slug.as_str();
        Ok(match action {
            TenantAction::Show => tenants::show(p, slug).await?,
            TenantAction::Suspend => tenants::suspend(p, slug).await?,
            TenantAction::Resume => tenants::resume(p, slug).await?,
        })
    }
    .await;
    let t = op.record(api, name, Some(s), result, None).await?;
    Ok(Json(t).into_response())
}

async fn show_tenant(
    State(api): State<OperatorApi>,
    op: Operator,
    Path(s): Path<String>,
) -> Result<Response, Problem> {
    on_tenant(&api, &op, &s, TenantAction::Show).await
}

async fn suspend_tenant(
    State(api): State<OperatorApi>,
    op: Operator,
    Path(s): Path<String>,
) -> Result<Response, Problem> {
    on_tenant(&api, &op, &s, TenantAction::Suspend).await
}

async fn resume_tenant(
    State(api): State<OperatorApi>,
    op: Operator,
    Path(s): Path<String>,
) -> Result<Response, Problem> {
    on_tenant(&api, &op, &s, TenantAction::Resume).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    slug: String,
    display_name: Option<String>,
    #[serde(default)]
    domains: Vec<String>,
    db_server: Option<String>,
    /// `dedicated` or `pooled`; default: the `default_tier` setting.
    tier: Option<String>,
}

impl TryFrom<CreateBody> for CreateTenant {
    type Error = Problem;
    fn try_from(b: CreateBody) -> Result<Self, Problem> {
        let invalid = |e: portico_core::NameError| Problem::invalid_input(e.to_string());
        Ok(CreateTenant {
            slug: Slug::parse(&b.slug).map_err(invalid)?,
            display_name: b.display_name,
            domains: b
                .domains
                .iter()
                .map(|d| Hostname::parse(d))
                .collect::<Result<_, _>>()
                .map_err(invalid)?,
            db_server: b
                .db_server
                .map(|n| DbServerName::parse(&n))
                .transpose()
                .map_err(invalid)?,
            tier: b
                .tier
                .map(|t| t.parse::<crate::catalog::Tier>())
                .transpose()
                .map_err(Problem::invalid_input)?,
        })
    }
}

/// Records the create and answers 202 at once; the steps run in the background. Polling
/// `GET /operator/v1/runs/{run_id}` shows their progress. Posting the same body again resumes
/// an interrupted create (the same run).
async fn create_tenant(
    State(api): State<OperatorApi>,
    op: Operator,
    ApiJson(body): ApiJson<CreateBody>,
) -> Result<Response, Problem> {
    let target = body.slug.clone();
    let result = async {
        let req = CreateTenant::try_from(body)?;
        Ok(tenants::start_create(&api.platform, req).await?)
    }
    .await;
    let detail = result
        .as_ref()
        .ok()
        .map(|s| serde_json::json!({"tenant_id": s.tenant, "run_id": s.run}));
    let started = op
        .record(&api, "tenant.create", Some(&target), result, detail)
        .await?;
    let platform = api.platform.clone();
    let background = started.clone();
    tokio::spawn(async move {
        match tenants::finish_create(&platform, &background).await {
            Ok(_) => {
                tracing::info!(tenant_id = %background.tenant, run_id = %background.run, "tenant created")
            }
            Err(e) => tracing::error!(
                tenant_id = %background.tenant,
                run_id = %background.run,
                error = %portico_core::error_chain(&e),
                "tenant create failed; POST the same request again to resume it"
            ),
        }
    });
    let run_url = format!("/operator/v1/runs/{}", started.run);
    Ok(accepted(
        serde_json::json!({
            "tenant_id": started.tenant,
            "slug": started.slug(),
            "run_id": started.run,
            "status": "provisioning",
            "run_url": run_url,
            "tenant_url": format!("/operator/v1/tenants/{}", started.slug()),
        }),
        &run_url,
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MoveBody {
    /// `dedicated` or `pooled`; default: the tenant's tier.
    to_tier: Option<String>,
    /// A registered server's name; default: the tenant's server.
    to_server: Option<String>,
}

/// Records the move (or finds the tenant's unfinished one) and answers 202 at once; the steps
/// run in the background. `GET /operator/v1/runs/{run_id}` shows their progress; posting again
/// resumes an interrupted move.
async fn start_move(
    State(api): State<OperatorApi>,
    op: Operator,
    Path(s): Path<String>,
    ApiJson(body): ApiJson<MoveBody>,
) -> Result<Response, Problem> {
    let result = async {
        let req = crate::moves::MoveTenant {
            slug: slug(&s)?,
            to_tier: body
                .to_tier
                .map(|t| t.parse::<crate::catalog::Tier>())
                .transpose()
                .map_err(Problem::invalid_input)?,
            to_server: body
                .to_server
                .map(|n| DbServerName::parse(&n))
                .transpose()
                .map_err(|e| Problem::invalid_input(e.to_string()))?,
        };
        Ok(crate::moves::start_move(&api.platform, req).await?)
    }
    .await;
    let detail = result
        .as_ref()
        .ok()
        .map(|m| serde_json::json!({"tenant_id": m.tenant, "run_id": m.run}));
    let started = op
        .record(&api, "tenant.move", Some(&s), result, detail)
        .await?;
    let platform = api.platform.clone();
    let background = started.clone();
    tokio::spawn(async move {
        if let Err(e) = crate::moves::finish_move(&platform, &background).await {
            tracing::error!(
                tenant_id = %background.tenant,
                run_id = %background.run,
                error = %portico_core::error_chain(&e),
                "tenant move failed; POST again to resume it, or roll it back"
            );
        }
    });
    let run_url = format!("/operator/v1/runs/{}", started.run);
    Ok(accepted(
        serde_json::json!({
            "tenant_id": started.tenant,
            "slug": started.slug,
            "run_id": started.run,
            "status": "running",
            "run_url": run_url,
        }),
        &run_url,
    ))
}

/// Undoes the tenant's unfinished move (refused once it has switched).
async fn rollback_move(
    State(api): State<OperatorApi>,
    op: Operator,
    Path(s): Path<String>,
) -> Result<Response, Problem> {
    let result = async { Ok(crate::moves::rollback_move(&api.platform, &slug(&s)?).await?) }.await;
    let v = op
        .record(&api, "tenant.move_rollback", Some(&s), result, None)
        .await?;
    Ok(Json(v).into_response())
}

async fn show_run(
    State(api): State<OperatorApi>,
    op: Operator,
    Path(run): Path<String>,
) -> Result<Response, Problem> {
    let result = async {
        let id = run_id(&run)?;
        if let Some(m) = crate::moves::show(&api.platform, id).await? {
            return serde_json::to_value(m)
                .map_err(|e| Problem::from(PlatformError::InvalidState(e.to_string())));
        }
        let slug = api
            .platform
            .catalog
            .run_tenant_slug(id)
            .await?
            .ok_or_else(no_such_run)?;
        let t = tenants::show(&api.platform, &slug).await?;
        let p = t.provisioning.ok_or_else(no_such_run)?;
        Ok(serde_json::json!({
            "run_id": p.run_id,
            "tenant_id": t.id,
            "slug": t.slug,
            "tenant_status": t.status,
            "status": p.status,
            "error": p.error,
            "steps": p.steps,
        }))
    }
    .await;
    let v = op
        .record(&api, "run.show", Some(&run), result, None)
        .await?;
    Ok(Json(v).into_response())
}

async fn list_servers(State(api): State<OperatorApi>, op: Operator) -> Result<Response, Problem> {
    let result = db_servers::list(&api.platform).await.map_err(Problem::from);
    let all = op
        .record(&api, "db_server.list", None, result, None)
        .await?;
    Ok(Json(all).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddServerBody {
    name: String,
    url: String,
    max_connections: Option<u32>,
    /// PEM of the CA the server's certificate must chain to (TLS to the server).
    ca_pem: Option<String>,
}

async fn add_server(
    State(api): State<OperatorApi>,
    op: Operator,
    ApiJson(body): ApiJson<AddServerBody>,
) -> Result<Response, Problem> {
    let target = body.name.clone();
    let result = async {
        let name =
            DbServerName::parse(&body.name).map_err(|e| Problem::invalid_input(e.to_string()))?;
        let (view, _) = db_servers::add_with_ca(
            &api.platform,
            &name,
            &body.url,
            body.max_connections,
            body.ca_pem.as_deref(),
        )
        .await?;
        Ok(view)
    }
    .await;
    let view = op
        .record(&api, "db_server.add", Some(&target), result, None)
        .await?;
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FleetBody {
    server: Option<String>,
    #[serde(default = "default_concurrency")]
    concurrency: usize,
    #[serde(default)]
    canary: usize,
    #[serde(default)]
    max_failures: usize,
    #[serde(default)]
    dry_run: bool,
}

fn default_concurrency() -> usize {
    crate::fleet::FleetOptions::default().concurrency
}

/// Plans (or resumes) a fleet migration run and answers 202 with its id at once; the tenants
/// are migrated in the background. Nothing to do (or a dry run): 200 with the plan.
async fn start_fleet_migration(
    State(api): State<OperatorApi>,
    op: Operator,
    ApiJson(body): ApiJson<FleetBody>,
) -> Result<Response, Problem> {
    use crate::fleet::{self, FleetOptions, MigrationSet, Quiet, StopSignal};
    let options = FleetOptions {
        server: body.server,
        concurrency: body.concurrency,
        canary: body.canary,
        max_failures: body.max_failures,
    };
    let set = MigrationSet::default();
    let actor = format!("operator:{}", op.identity.name);
    let result = fleet::start_fleet(&api.platform, options, body.dry_run, &set, &actor)
        .await
        .map_err(Problem::from);
    let detail = result
        .as_ref()
        .ok()
        .map(|s| serde_json::json!({"run_id": s.run, "resumed": s.resumed, "dry_run": s.dry_run}));
    let started = op
        .record(&api, "fleet.migrate", None, result, detail)
        .await?;
    let Some(run) = started.run else {
        let body = serde_json::json!({
            "run_id": null,
            "dry_run": started.dry_run,
            "up_to_date": started.up_to_date,
            "plan": started.plan,
        });
        // Releases the lock.
        let _ = started
            .finish(&api.platform, &set, &Quiet, &StopSignal::default())
            .await;
        return Ok(Json(body).into_response());
    };
    let resumed = started.resumed;
    let platform = api.platform.clone();
    tokio::spawn(async move {
        match started
            .finish(&platform, &set, &Quiet, &StopSignal::default())
            .await
        {
            Ok(o) => {
                tracing::info!(run_id = %run, status = ?o.run.map(|r| r.status), "fleet run finished")
            }
            Err(e) => {
                tracing::error!(run_id = %run, error = %portico_core::error_chain(&e), "fleet run failed; POST again to resume it")
            }
        }
    });
    let run_url = format!("/operator/v1/fleet/migrations/{run}");
    Ok(accepted(
        serde_json::json!({"run_id": run, "resumed": resumed, "run_url": run_url}),
        &run_url,
    ))
}

/// `202 Accepted` with `body`, and `Location` naming where to follow the work.
fn accepted(body: serde_json::Value, location: &str) -> Response {
    let mut response = (StatusCode::ACCEPTED, Json(body)).into_response();
    if let Ok(v) = HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, v);
    }
    response
}

async fn list_fleet_runs(
    State(api): State<OperatorApi>,
    op: Operator,
) -> Result<Response, Problem> {
    let result = crate::fleet::runs(&api.platform, 100)
        .await
        .map_err(Problem::from);
    let runs = op.record(&api, "fleet.runs", None, result, None).await?;
    Ok(Json(runs).into_response())
}

async fn show_fleet_run(
    State(api): State<OperatorApi>,
    op: Operator,
    Path(run): Path<String>,
) -> Result<Response, Problem> {
    let result = async {
        let id = run_id(&run)?;
        let summary = crate::fleet::run_summary(&api.platform, id)
            .await?
            .ok_or_else(no_such_run)?;
        let tenants = crate::fleet::tenant_results(&api.platform, id).await?;
        Ok(serde_json::json!({"run": summary, "tenants": tenants}))
    }
    .await;
    let v = op
        .record(&api, "fleet.run.show", Some(&run), result, None)
        .await?;
    Ok(Json(v).into_response())
}

async fn fleet_status(State(api): State<OperatorApi>, op: Operator) -> Result<Response, Problem> {
    let result = crate::fleet::status(&api.platform)
        .await
        .map_err(Problem::from);
    let st = op.record(&api, "fleet.status", None, result, None).await?;
    Ok(Json(st).into_response())
}
