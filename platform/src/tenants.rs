//! Tenant lifecycle workflows: create (a recorded, resumable run of idempotent steps), rollback
//! of an unfinished create, suspend, resume, and the read views.
//!
//! Create, step by step (each recorded in `provisioning_steps` with attempts and errors):
//!
//! | step       | does                                                            | recorded          |
//! |------------|-----------------------------------------------------------------|-------------------|
//! | (reserve)  | tenant row `provisioning`, domains, placement names, run        | one transaction   |
//! | `key`      | tenant key (KMS key + alias, or local wrapped key)              | `tenants.key_id`  |
//! | `role`     | the role with a random password (stored encrypted under the key)| ciphertext        |
//! | `database` | template (if needed), database copied from it, `PUBLIC` revoked |                   |
//! | `storage`  | `tenants/<id>/` marker object                                   |                   |
//! | `activate` | database handed to the role, login as the role, profile row,    | one transaction   |
//! |            | status `active`                                                 |                   |
//!
//! `key`, `role`, `database` and `storage` do not depend on each other and run concurrently;
//! `activate` waits for all four.
//!
//! All resource names derive from the tenant id, and every step tolerates its resource
//! already existing, so running the same `tenant create` again after a crash finishes the job.
//! A rollback destroys by name whatever may exist (objects, database, role, key), then the
//! catalog rows; it marks the run `rolling_back` first, so a create cannot resume half-undone
//! resources.

use std::time::Duration;

use portico_core::keys::TenantKeyRef;
use portico_core::storage::tenant_prefix;
use portico_core::{DbServerName, Hostname, RunId, Slug, TenantId};
use portico_provisioning::{RoleLimits, TenantDbNames, TenantProfile, database, keys, storage};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::catalog::{
    DomainRow, NewTenant, PlacementRow, StepRow, TenantDetailRow, TenantRow, Tier,
};
use crate::context::Platform;
use crate::db_servers;
use crate::error::{PlatformError, Result};

/// How long a command waits for another process holding the same tenant.
pub(crate) const LOCK_WAIT: Duration = Duration::from_secs(10);

/// A tenant create as asked for. Also stored with the run, so a re-run with other options is
/// refused instead of silently resuming something different.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateTenant {
    pub slug: Slug,
    pub display_name: Option<String>,
    pub domains: Vec<Hostname>,
    pub db_server: Option<DbServerName>,
    /// `None`: the `default_tier` setting decides.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<Tier>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PlacementView {
    pub db_server: String,
    /// The tenant's own database (dedicated) or its shared database (pooled).
    pub database: String,
    pub role: String,
    /// Pooled tier: the tenant's schema in the shared database.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schema: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProvisioningView {
    pub run_id: Uuid,
    pub status: String,
    pub error: Option<String>,
    pub steps: Vec<StepRow>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TenantView {
    pub id: TenantId,
    pub slug: String,
    pub display_name: String,
    pub status: String,
    pub tier: String,
    pub domains: Vec<DomainRow>,
    pub placement: Option<PlacementView>,
    pub storage_prefix: String,
    pub key_id: Option<String>,
    pub schema_version: Option<i32>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    pub provisioning: Option<ProvisioningView>,
    /// A move is copying the tenant: its writes answer `503 tenant_moving`.
    pub write_frozen: bool,
    /// The tenant's unfinished move (`running`, `failed` or `rolling_back`), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub open_move: Option<OpenMove>,
    /// The tenant's latest deletion: `status` (`grace`, `purging`, `purged`, `restored`),
    /// `grace_until`, `requested_by`, `approved_by`, `purged_at`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deletion: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Serialize)]
pub struct OpenMove {
    pub run_id: Uuid,
    pub status: String,
}

/// Test hook: when `PORTICO_TEST_PAUSE_AT` names this point, the process announces it on
/// stderr and stops making progress, so a test can `kill -9` it at a precise step. Only
/// meaningful to the crash tests; unset in every other use.
pub(crate) fn checkpoint(point: &str) {
    if std::env::var("PORTICO_TEST_PAUSE_AT").is_ok_and(|p| p == point) {
        eprintln!("PORTICO_PAUSED_AT {point}");
        loop {
            std::thread::park();
        }
    }
}

/// Runs one recorded step of a run (a move's, a purge's): the attempt counted, the crash
/// tests' checkpoints around it, success or the failure with its message recorded. With
/// `skip_done`, a step a previous attempt finished is not run again.
pub(crate) async fn recorded_step<F, Fut>(
    platform: &Platform,
    run: RunId,
    name: &'static str,
    skip_done: bool,
    body: F,
) -> Result<()>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    if skip_done && platform.catalog.step_state(run, name).await?.as_deref() == Some("done") {
        return Ok(());
    }
    platform.catalog.step_started(run, name).await?;
    checkpoint(&format!("before:{name}"));
    let span = tracing::info_span!("step", step = name, run_id = %run);
    match tracing::Instrument::instrument(body(), span).await {
        Ok(()) => {
            platform.catalog.step_done(run, name).await?;
            checkpoint(&format!("after:{name}"));
            Ok(())
        }
        Err(e) => {
            let message = portico_core::error_chain(&e);
            tracing::warn!(run_id = %run, step = name, error = %message, "step failed");
            platform.catalog.step_failed(run, name, &message).await?;
            Err(e)
        }
    }
}

fn validate_display_name(name: &str) -> Result<String> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 200 || name.chars().any(char::is_control) {
        return Err(PlatformError::InvalidInput(
            "invalid display name: use 1 to 200 printable characters".into(),
        ));
    }
    Ok(name.to_owned())
}

fn validate_domains(platform: &Platform, req: &CreateTenant) -> Result<()> {
    let base = &platform.settings.base_domain;
    let mut seen = std::collections::HashSet::new();
    for d in &req.domains {
        if d.is_within(base) {
            return Err(PlatformError::InvalidInput(format!(
                "domain '{d}' is under the base domain '{base}'; tenants get <slug>.{base} automatically"
            )));
        }
        if !seen.insert(d) {
            return Err(PlatformError::InvalidInput(format!(
                "domain '{d}' is given twice"
            )));
        }
    }
    Ok(())
}

/// Creates a tenant, or finishes an interrupted create of the same tenant.
#[tracing::instrument(name = "create", skip_all, fields(slug = %req.slug))]
pub async fn create(platform: &Platform, req: CreateTenant) -> Result<TenantView> {
    let started = Box::pin(start_create(platform, req)).await?;
    checkpoint("reserved");
    Box::pin(finish_create(platform, &started)).await
}

/// A create that is recorded in the catalog (tenant `provisioning`, run with its steps) and
/// can be finished by [`finish_create`], now or by any later process.
#[derive(Debug, Clone)]
pub struct StartedCreate {
    pub tenant: TenantId,
    pub run: RunId,
    req: CreateTenant,
    display_name: String,
}

impl StartedCreate {
    pub fn slug(&self) -> &Slug {
        &self.req.slug
    }
}

/// Validates a create and records it (or finds the unfinished create with the same options).
/// Every refusal (bad input, taken slug or domain, unknown server) happens here, before
/// anything is created. The CLI and the operator API both start creates here.
pub async fn start_create(platform: &Platform, req: CreateTenant) -> Result<StartedCreate> {
    let display_name =
        validate_display_name(req.display_name.as_deref().unwrap_or(req.slug.as_str()))?;
    validate_domains(platform, &req)?;
    let request = serde_json::to_value(&req)
        .map_err(|e| PlatformError::InvalidState(format!("cannot record the request: {e}")))?;
    // The two phases are boxed: each is a deep state machine, and nesting them unboxed
    // exceeds the compiler's layout depth limit in optimised builds.
    let (tenant, run) = Box::pin(find_or_reserve(platform, &req, &display_name, request)).await?;
    Ok(StartedCreate {
        tenant,
        run,
        req,
        display_name,
    })
}

/// Work a create runs after the tenant's tables are ready and before the tenant turns `active`
/// (an import loads its data here); meanwhile the tenant is `provisioning`. It must be
/// idempotent: a resumed create runs it again.
pub type BeforeActivate<'a> =
    &'a (dyn Fn(TenantId) -> futures_util::future::BoxFuture<'a, Result<()>> + Send + Sync);

/// Runs (or re-runs) every step of a recorded create, under the tenant's lock.
pub async fn finish_create(platform: &Platform, started: &StartedCreate) -> Result<TenantView> {
    Box::pin(finish_create_then(platform, started, None)).await
}

/// [`finish_create`], running `before_activate` just before the tenant turns `active`.
#[tracing::instrument(name = "finish_create", skip_all, fields(tenant_id = %started.tenant, run_id = %started.run))]
pub async fn finish_create_then<'a>(
    platform: &'a Platform,
    started: &StartedCreate,
    before_activate: Option<BeforeActivate<'a>>,
) -> Result<TenantView> {
    let (tenant, run, req) = (started.tenant, started.run, &started.req);
    let lock = platform.catalog.lock_tenant(tenant, LOCK_WAIT).await?;
    // Another process may have finished (or rolled back) this tenant while we waited.
    let outcome = match platform.catalog.tenant_by_id(tenant).await? {
        Some(t) if t.status == "provisioning" => {
            Box::pin(run_steps(
                platform,
                tenant,
                run,
                &req.slug,
                &started.display_name,
                before_activate,
            ))
            .await
        }
        Some(_) => Ok(()),
        None => Err(PlatformError::Conflict(format!(
            "tenant '{}' was rolled back by another process while this one waited",
            req.slug
        ))),
    };
    lock.release().await;
    outcome?;
    show(platform, req.slug.as_str()).await
}

/// The tenant and run to work on: an unfinished create with the same options, or a new one.
#[tracing::instrument(skip_all)]
async fn find_or_reserve(
    platform: &Platform,
    req: &CreateTenant,
    display_name: &str,
    request: serde_json::Value,
) -> Result<(TenantId, RunId)> {
    // Two attempts: when a concurrent create of the same slug wins the insert, the second
    // look-up finds its record and resumes it (or refuses different options).
    for _ in 0..2 {
        match platform.catalog.tenant_by_slug(req.slug.as_str()).await? {
            Some(existing) => return resumable(platform, req, existing, &request).await,
            None => match reserve(platform, req, display_name.to_owned(), request.clone()).await {
                Err(PlatformError::SlugTaken(_)) => continue,
                other => return other,
            },
        }
    }
    Err(PlatformError::SlugTaken(req.slug.to_string()))
}

async fn resumable(
    platform: &Platform,
    req: &CreateTenant,
    existing: TenantRow,
    request: &serde_json::Value,
) -> Result<(TenantId, RunId)> {
    let slug = &req.slug;
    if existing.status != "provisioning" {
        return Err(PlatformError::SlugTaken(slug.to_string()));
    }
    let run = platform
        .catalog
        .create_run(existing.tenant_id())
        .await?
        .ok_or_else(|| {
            PlatformError::InvalidState(format!(
                "tenant '{slug}' is provisioning but has no run recorded"
            ))
        })?;
    if run.status == "rolling_back" {
        return Err(PlatformError::InvalidState(format!(
            "a rollback of '{slug}' was interrupted; finish it with `portico tenant create --rollback {slug}`"
        )));
    }
    if run.request != *request {
        return Err(PlatformError::Conflict(format!(
            "tenant '{slug}' is already being created with other options; re-run with the same options to finish it, or roll it back with `portico tenant create --rollback {slug}`"
        )));
    }
    Ok((existing.tenant_id(), RunId::from_uuid(run.id)))
}

async fn reserve(
    platform: &Platform,
    req: &CreateTenant,
    display_name: String,
    request: serde_json::Value,
) -> Result<(TenantId, RunId)> {
    let subdomain = platform.settings.base_domain.tenant_subdomain(&req.slug);
    let hostnames: Vec<&str> = std::iter::once(&subdomain)
        .chain(&req.domains)
        .map(Hostname::as_str)
        .collect();
    if let Some((domain, owner)) = platform.catalog.first_taken_domain(&hostnames).await? {
        // A concurrent create of this very slug recorded its domains between our look-up of
        // the slug and this check: report the slug, so the caller resumes that create.
        if owner == req.slug.as_str() {
            return Err(PlatformError::SlugTaken(owner));
        }
        return Err(PlatformError::DomainTaken { domain, owner });
    }
    let server_row = db_servers::choose(platform, req.db_server.as_ref()).await?;
    // Refuse before recording anything if the server or the object store cannot take the
    // tenant.
    let server = db_servers::connect(platform, &server_row).await?;
    let server_ready = async { server.check_on(&*server.admin().await?).await };
    let (server_ready, store_ready) = tokio::join!(server_ready, platform.store.check());
    server_ready?;
    store_ready?;

    let id = TenantId::random();
    let names = TenantDbNames::for_tenant(id);
    let tier = req.tier.unwrap_or(match platform.settings.default_tier {
        portico_core::settings::DefaultTier::Dedicated => Tier::Dedicated,
        portico_core::settings::DefaultTier::Pooled => Tier::Pooled,
    });
    let run = platform
        .catalog
        .reserve_tenant(&NewTenant {
            tier,
            pooled_capacity: i32::try_from(platform.settings.pooled_tenants_per_database)
                .unwrap_or(i32::MAX),
            id,
            slug: req.slug.clone(),
            display_name,
            storage_prefix: tenant_prefix(id),
            subdomain,
            custom_domains: req.domains.clone(),
            db_server_id: server_row.id,
            database_name: names.database,
            role_name: names.role,
            request,
        })
        .await?;
    tracing::info!(tenant_id = %id, run_id = %run, "tenant reserved");
    Ok((id, run))
}

#[tracing::instrument(skip_all, fields(tenant_id = %tenant, run_id = %run))]
async fn run_steps<'a>(
    platform: &'a Platform,
    tenant: TenantId,
    run: RunId,
    slug: &Slug,
    display_name: &str,
    before_activate: Option<BeforeActivate<'a>>,
) -> Result<()> {
    let placement = platform.catalog.placement(tenant).await?.ok_or_else(|| {
        PlatformError::InvalidState(format!("tenant {tenant} has no placement recorded"))
    })?;
    let server =
        db_servers::connect_id(platform, placement.db_server_id, &placement.db_server).await?;
    let names = TenantDbNames {
        database: placement.database_name.clone(),
        role: placement.role_name.clone(),
    };
    let limits = RoleLimits {
        connection_limit: platform.settings.tenant_connection_limit,
        statement_timeout_ms: platform.settings.tenant_statement_timeout_ms,
    };
    let ctx = StepCtx {
        platform,
        run,
        tenant,
        before_activate,
    };
    if let Some(shared) = placement.shared_database_id {
        let profile = TenantProfile {
            tenant_id: tenant,
            slug: slug.to_string(),
            display_name: display_name.to_owned(),
        };
        return Box::pin(run_pooled_steps(
            &ctx, &server, &placement, shared, &names, limits, &profile,
        ))
        .await;
    }

    // Every step runs on every attempt: each one accepts its resource already existing, so a
    // resumed run simply goes through them again, and a lost bookkeeping record never matters.
    //
    // The role password: on a first run it is generated here and stored (encrypted under the
    // tenant key) as soon as the key exists; a resumed run decrypts the stored one, so the role
    // keeps its password. `key` (then storing the password) and `storage` do not depend on the
    // `role → database` chain and run beside it.
    let key_step = ctx.key_step();
    let (password, key_and_store) = match placement.role_password_ciphertext.as_deref() {
        Some(ciphertext) => {
            let key = key_step.await?;
            (
                role_password(platform, tenant, &key, ciphertext).await?,
                None,
            )
        }
        None => (database::generate_password(), Some(key_step)),
    };
    let store_password = async {
        if let Some(key_step) = key_and_store {
            let key = key_step.await?;
            let ciphertext = platform
                .keyring
                .encrypt_for_tenant(tenant, &key, password.expose_secret().as_bytes())
                .await?;
            platform
                .catalog
                .set_role_password(tenant, &ciphertext)
                .await?;
        }
        Ok::<_, PlatformError>(())
    };
    let role_step = async {
        ctx.step("role", |_| async {
            let admin = server.admin().await?;
            database::ensure_role(&admin, &names, &password, limits).await
        })
        .await?;
        platform.catalog.step_done(run, "role").await
    };
    let database_step = async {
        ctx.step("database", |_| async {
            let admin = server.admin().await?;
            let template = database::ensure_template(&server, &admin).await?;
            database::ensure_database(&admin, &names, &template).await
        })
        .await?;
        platform.catalog.step_done(run, "database").await
    };
    let storage_step = ctx.storage_step();
    // Wait for all branches (none is abandoned half-way), then report the first failure.
    let (stored, role, db, prefix) =
        tokio::join!(store_password, role_step, database_step, storage_step);
    stored?;
    role?;
    db?;
    prefix?;

    let profile = TenantProfile {
        tenant_id: tenant,
        slug: slug.to_string(),
        display_name: display_name.to_owned(),
    };
    let version = ctx
        .step("activate", |_| async {
            database::hand_over(&*server.admin().await?, &names).await?;
            database::verify_and_seed(&server, &names, &password, &profile).await
        })
        .await?;
    if let Some(work) = before_activate {
        work(tenant).await?;
    }
    platform.catalog.activate(run, tenant, version).await?;
    tracing::info!(tenant_id = %tenant, run_id = %run, "tenant active");
    Ok(())
}

/// The steps of a pooled tenant's create (same names as a dedicated one's):
///
/// | step       | does                                                                 |
/// |------------|----------------------------------------------------------------------|
/// | `key`      | tenant key                                                           |
/// | `role`     | shared database and pool role (if new), tenant NOLOGIN role, membership |
/// | `database` | tenant schema and audit schema, at the newest migration             |
/// | `storage`  | `tenants/<id>/` marker object                                        |
/// | `activate` | as the pool role in the tenant's context: profile row; `active`      |
async fn run_pooled_steps(
    ctx: &StepCtx<'_>,
    server: &portico_provisioning::DbServer,
    placement: &PlacementRow,
    shared: Uuid,
    names: &TenantDbNames,
    limits: RoleLimits,
    profile: &TenantProfile,
) -> Result<()> {
    use portico_provisioning::pooled;
    let (platform, run, tenant) = (ctx.platform, ctx.run, ctx.tenant);
    let shared_names = placement.shared_names().ok_or_else(|| {
        PlatformError::InvalidState(format!("tenant {tenant} has no shared database"))
    })?;
    let key_step = ctx.key_step();
    let role_and_schema = async {
        let password =
            pool_password(platform, shared, placement.pool_password_ciphertext.clone()).await?;
        let pool_limits = pool_limits(platform, placement.db_server_id, limits).await?;
        ctx.step("role", |_| async {
            let admin = server.admin().await?;
            pooled::ensure_shared_database(server, &admin, &shared_names, &password, pool_limits)
                .await?;
            pooled::ensure_tenant_role(&admin, &shared_names, names).await
        })
        .await?;
        platform.catalog.step_done(run, "role").await?;
        ctx.step("database", |_| {
            pooled::ensure_tenant_schema(server, &shared_names, names)
        })
        .await?;
        platform.catalog.step_done(run, "database").await?;
        Ok::<_, PlatformError>(password)
    };
    let storage_step = ctx.storage_step();
    let (key, password, prefix) = tokio::join!(key_step, role_and_schema, storage_step);
    key?;
    let password = password?;
    prefix?;
    let version = ctx
        .step("activate", |_| {
            pooled::verify_and_seed(server, &shared_names, &password, names, profile)
        })
        .await?;
    if let Some(work) = ctx.before_activate {
        work(tenant).await?;
    }
    platform.catalog.activate(run, tenant, version).await?;
    tracing::info!(tenant_id = %tenant, run_id = %run, tier = "pooled", "tenant active");
    Ok(())
}

/// A shared database's pool password: the recorded one, or a new one recorded now (a
/// concurrent create may record first; its password wins).
pub(crate) async fn pool_password(
    platform: &Platform,
    shared: Uuid,
    recorded: Option<Vec<u8>>,
) -> Result<SecretString> {
    let purpose = portico_core::keys::pool_role_purpose(shared);
    let recorded = match recorded {
        Some(c) => c,
        None => {
            let fresh = database::generate_password();
            let ciphertext = platform
                .keyring
                .encrypt_platform(&purpose, fresh.expose_secret().as_bytes())
                .await?;
            platform
                .catalog
                .set_pool_password(shared, &ciphertext)
                .await?
        }
    };
    let plain = platform
        .keyring
        .decrypt_platform(&purpose, &recorded)
        .await?;
    String::from_utf8(plain)
        .map(SecretString::from)
        .map_err(|_| PlatformError::InvalidState("stored pool password is not UTF-8".into()))
}

/// A pool role's limits: it may open as many sessions as its server's budget allows.
pub(crate) async fn pool_limits(
    platform: &Platform,
    server: Uuid,
    limits: RoleLimits,
) -> Result<RoleLimits> {
    Ok(RoleLimits {
        connection_limit: u32::try_from(
            platform
                .catalog
                .db_server_by_id(server)
                .await?
                .map_or(100, |s| s.max_connections),
        )
        .unwrap_or(100)
        .max(limits.connection_limit),
        ..limits
    })
}

/// Runs one recorded step: marks it started (counting the attempt), runs it inside a span,
/// records a failure with its message. Marking success is left to the caller, which may record
/// a result with it.
struct StepCtx<'a> {
    platform: &'a Platform,
    run: RunId,
    tenant: TenantId,
    before_activate: Option<BeforeActivate<'a>>,
}

impl StepCtx<'_> {
    /// The `key` step (the same on both tiers): the tenant key, recorded with the run.
    async fn key_step(&self) -> Result<TenantKeyRef> {
        let (platform, tenant) = (self.platform, self.tenant);
        let key = self
            .step("key", |attempt| {
                keys::ensure_tenant_key(&platform.keyring, tenant, attempt > 1)
            })
            .await?;
        platform
            .catalog
            .key_created(self.run, tenant, key.as_str())
            .await?;
        Ok(key)
    }

    /// The `storage` step (the same on both tiers): the prefix's marker object.
    async fn storage_step(&self) -> Result<()> {
        self.step("storage", |_| {
            storage::ensure_prefix(&self.platform.store, self.tenant)
        })
        .await?;
        self.platform.catalog.step_done(self.run, "storage").await
    }

    async fn step<T, F, Fut>(&self, name: &'static str, body: F) -> Result<T>
    where
        F: FnOnce(i32) -> Fut,
        Fut: std::future::Future<
                Output = std::result::Result<T, portico_provisioning::ProvisionError>,
            >,
    {
        let attempt = self.platform.catalog.step_started(self.run, name).await?;
        checkpoint(&format!("before:{name}"));
        let span = tracing::info_span!("step", step = name);
        match tracing::Instrument::instrument(body(attempt), span).await {
            Ok(v) => {
                checkpoint(&format!("after:{name}"));
                Ok(v)
            }
            Err(e) => {
                let message = e.to_string();
                tracing::warn!(tenant_id = %self.tenant, step = name, error = %message, "provisioning step failed");
                self.platform
                    .catalog
                    .step_failed(self.run, name, &message)
                    .await?;
                Err(PlatformError::Step {
                    step: name,
                    source: e,
                })
            }
        }
    }
}

/// Decrypts a stored role password.
async fn role_password(
    platform: &Platform,
    tenant: TenantId,
    key: &TenantKeyRef,
    ciphertext: &[u8],
) -> Result<SecretString> {
    let plain = platform
        .keyring
        .decrypt_for_tenant(tenant, key, ciphertext)
        .await?;
    String::from_utf8(plain)
        .map(SecretString::from)
        .map_err(|_| PlatformError::InvalidState("stored role password is not UTF-8".into()))
}

impl Platform {
    /// The tenant role's password, decrypted (for tests and, later, the runtime's pools).
    pub async fn tenant_role_password(&self, slug: &str) -> Result<SecretString> {
        let t = self
            .catalog
            .tenant_by_slug(slug)
            .await?
            .ok_or_else(|| PlatformError::TenantNotFound(slug.to_owned()))?;
        let key = t.key_id.clone().ok_or_else(|| {
            PlatformError::InvalidState(format!("tenant '{slug}' has no key yet"))
        })?;
        let placement = self.catalog.placement(t.tenant_id()).await?;
        let ciphertext = placement
            .and_then(|p| p.role_password_ciphertext)
            .ok_or_else(|| {
                PlatformError::InvalidState(format!("tenant '{slug}' has no role yet"))
            })?;
        role_password(self, t.tenant_id(), &TenantKeyRef::new(key), &ciphertext).await
    }
}

impl Platform {
    /// A direct connection to a tenant's database as the tenant's own role (for commands that
    /// manage tenant data, such as API tokens).
    pub async fn connect_as_tenant(
        &self,
        slug: &str,
    ) -> Result<portico_tenant_runtime::pools::TenantConn> {
        use portico_tenant_runtime::conn::{TenantConn, TenantContext};
        let t = tenant_row(self, slug).await?;
        if !matches!(t.status.as_str(), "active" | "suspended") {
            return Err(PlatformError::InvalidState(format!(
                "tenant '{slug}' is {}; its database is not ready",
                t.status
            )));
        }
        let key = TenantKeyRef::new(t.key_id.clone().ok_or_else(|| {
            PlatformError::InvalidState(format!("tenant '{slug}' has no key yet"))
        })?);
        let (placement, server) = self.placement_and_server(slug, &t).await?;
        if let Some(schema) = &placement.schema_name {
            // Pooled: the server's admin, in the tenant's context (its role and schema) for
            // every statement, exactly as the runtime's pool role is.
            let client = server.admin_in(&placement.database_name).await?;
            return Ok(TenantConn::direct(
                client,
                t.tenant_id(),
                key,
                Some(TenantContext::new(&placement.role_name, schema)),
            ));
        }
        let password = self.tenant_role_password(slug).await?;
        let client = server
            .connect_as(
                &placement.database_name,
                &placement.role_name,
                password.expose_secret(),
            )
            .await?;
        client
            .batch_execute(&format!(
                "set search_path = {}",
                portico_tenant_runtime::conn::DEDICATED_SEARCH_PATH
            ))
            .await
            .map_err(|e| {
                PlatformError::InvalidState(format!("cannot prepare the tenant session: {e}"))
            })?;
        Ok(TenantConn::direct(client, t.tenant_id(), key, None))
    }

    /// A connection to a tenant's database as its server's admin, with the tenant role's
    /// name (for checks the tenant role must not be able to fake, such as the audit log's
    /// ownership and triggers).
    pub async fn connect_as_admin(&self, slug: &str) -> Result<(tokio_postgres::Client, String)> {
        let t = tenant_row(self, slug).await?;
        let (placement, server) = self.placement_and_server(slug, &t).await?;
        let client = server.admin_in(&placement.database_name).await?;
        Ok((client, placement.role_name))
    }

    /// Where a tenant's objects live (its database, or its schema of a shared database).
    pub async fn tenant_target(
        &self,
        slug: &str,
    ) -> Result<portico_provisioning::migrations::Target> {
        let t = tenant_row(self, slug).await?;
        let placement = self
            .catalog
            .placement(t.tenant_id())
            .await?
            .ok_or_else(|| {
                PlatformError::InvalidState(format!("tenant '{slug}' has no placement"))
            })?;
        Ok(placement.target())
    }

    /// A tenant's placement and a connection to its database server.
    async fn placement_and_server(
        &self,
        slug: &str,
        t: &crate::catalog::TenantRow,
    ) -> Result<(crate::catalog::PlacementRow, portico_provisioning::DbServer)> {
        let placement = self
            .catalog
            .placement(t.tenant_id())
            .await?
            .ok_or_else(|| {
                PlatformError::InvalidState(format!("tenant '{slug}' has no placement"))
            })?;
        let server =
            db_servers::connect_id(self, placement.db_server_id, &placement.db_server).await?;
        Ok((placement, server))
    }
}

/// What a rollback removed.
#[derive(Debug, Clone, Serialize)]
pub struct RollbackReport {
    pub id: TenantId,
    pub slug: String,
    pub objects_deleted: usize,
}

/// Undoes an unfinished create: objects, database, role, key, then the catalog rows. Refused
/// for a tenant that finished provisioning.
pub async fn rollback(platform: &Platform, slug: &Slug) -> Result<RollbackReport> {
    let t = platform
        .catalog
        .tenant_by_slug(slug.as_str())
        .await?
        .ok_or_else(|| PlatformError::TenantNotFound(slug.to_string()))?;
    if t.status != "provisioning" {
        return Err(PlatformError::InvalidState(format!(
            "tenant '{slug}' is {}; rollback only undoes an unfinished create",
            t.status
        )));
    }
    let tenant = t.tenant_id();
    let lock = platform.catalog.lock_tenant(tenant, LOCK_WAIT).await?;
    let outcome = destroy(platform, tenant).await;
    lock.release().await;
    let objects_deleted = outcome?;
    tracing::info!(tenant_id = %tenant, "unfinished tenant create rolled back");
    Ok(RollbackReport {
        id: tenant,
        slug: slug.to_string(),
        objects_deleted,
    })
}

async fn destroy(platform: &Platform, tenant: TenantId) -> Result<usize> {
    if let Some(run) = platform.catalog.create_run(tenant).await? {
        platform
            .catalog
            .mark_rolling_back(RunId::from_uuid(run.id))
            .await?;
    }
    checkpoint("rollback:marked");
    let objects_deleted = usize::try_from(
        storage::destroy_prefix(&platform.store, tenant)
            .await?
            .objects,
    )
    .unwrap_or(usize::MAX);
    checkpoint("rollback:storage");
    if let Some(placement) = platform.catalog.placement(tenant).await? {
        // The placement's foreign key keeps its server row alive.
        let server =
            db_servers::connect_id(platform, placement.db_server_id, &placement.db_server).await?;
        let admin = server.admin().await?;
        let names = TenantDbNames {
            database: placement.database_name.clone(),
            role: placement.role_name.clone(),
        };
        if let Some(shared) = placement.shared_names() {
            // The shared database stays (other tenants live there); only this tenant's
            // schemas and role go.
            portico_provisioning::pooled::drop_tenant(&server, &admin, &shared, &names).await?;
            checkpoint("rollback:database");
            checkpoint("rollback:role");
            keys::destroy_tenant_key(&platform.keyring, tenant).await?;
            checkpoint("rollback:key");
            platform.catalog.delete_tenant(tenant).await?;
            return Ok(objects_deleted);
        }
        database::end_stale_sessions(&admin, &names).await?;
        database::drop_database(&admin, &names).await?;
        checkpoint("rollback:database");
        database::drop_role(&admin, &names).await?;
        checkpoint("rollback:role");
    }
    keys::destroy_tenant_key(&platform.keyring, tenant).await?;
    checkpoint("rollback:key");
    platform.catalog.delete_tenant(tenant).await?;
    Ok(objects_deleted)
}

impl Platform {
    /// The tenant's id and key reference (to encrypt a tenant secret such as an OIDC client
    /// secret before it is stored in the tenant's database).
    pub async fn tenant_key(
        &self,
        slug: &str,
    ) -> Result<(portico_core::TenantId, portico_core::keys::TenantKeyRef)> {
        let t = tenant_row(self, slug).await?;
        let key = t.key_id.clone().ok_or_else(|| {
            PlatformError::InvalidState(format!("tenant '{slug}' has no key yet"))
        })?;
        Ok((t.tenant_id(), portico_core::keys::TenantKeyRef::new(key)))
    }

    /// Claims an e-mail domain for one tenant's SSO connection (home-realm discovery).
    pub async fn claim_domain(&self, slug: &str, connection: &str, domain: &str) -> Result<()> {
        let t = tenant_row(self, slug).await?;
        let domain = domain.trim().to_ascii_lowercase();
        portico_core::Hostname::parse(&domain).map_err(|e| {
            PlatformError::InvalidInput(format!("'{domain}' is not a domain name: {e}"))
        })?;
        let done = sqlx::query(
            "insert into sso_domain_claims (domain, tenant_id, connection_name) values ($1, $2, $3)
             on conflict (domain) do update set connection_name = excluded.connection_name
              where sso_domain_claims.tenant_id = excluded.tenant_id",
        )
        .bind(&domain)
        .bind(t.id)
        .bind(connection)
        .execute(self.catalog.pool())
        .await
        .map_err(|e| PlatformError::catalog("claiming a domain", e))?;
        if done.rows_affected() == 0 {
            return Err(PlatformError::Conflict(format!(
                "'{domain}' is already claimed by another tenant"
            )));
        }
        Ok(())
    }

    /// Releases a claimed domain of this tenant.
    pub async fn unclaim_domain(&self, slug: &str, domain: &str) -> Result<()> {
        let t = tenant_row(self, slug).await?;
        let done = sqlx::query(
            "delete from sso_domain_claims where domain = lower($1) and tenant_id = $2",
        )
        .bind(domain.trim())
        .bind(t.id)
        .execute(self.catalog.pool())
        .await
        .map_err(|e| PlatformError::catalog("releasing a domain", e))?;
        if done.rows_affected() == 0 {
            return Err(PlatformError::InvalidInput(format!(
                "tenant '{slug}' has not claimed '{domain}'"
            )));
        }
        Ok(())
    }
}

pub(crate) async fn tenant_row(platform: &Platform, slug: &str) -> Result<TenantRow> {
    platform
        .catalog
        .tenant_by_slug(slug)
        .await?
        .ok_or_else(|| PlatformError::TenantNotFound(slug.to_owned()))
}

/// `active → suspended`.
pub async fn suspend(platform: &Platform, slug: &str) -> Result<TenantView> {
    change_status(platform, slug, "active", "suspended", "suspended").await
}

/// `suspended → active`.
pub async fn resume(platform: &Platform, slug: &str) -> Result<TenantView> {
    change_status(platform, slug, "suspended", "active", "resumed").await
}

/// Moves the tenant `from → to`; a tenant already in `to` is left as it is.
async fn change_status(
    platform: &Platform,
    slug: &str,
    from: &str,
    to: &str,
    verb: &str,
) -> Result<TenantView> {
    let t = tenant_row(platform, slug).await?;
    if t.status != to {
        if !platform.catalog.transition(t.tenant_id(), from, to).await? {
            return Err(PlatformError::InvalidState(format!(
                "tenant '{slug}' is {}; only a tenant that is {from} can be {verb}",
                t.status
            )));
        }
        tracing::info!(tenant_id = %t.id, from, to, "tenant status changed");
    }
    show(platform, slug).await
}

#[tracing::instrument(skip_all)]
pub async fn show(platform: &Platform, slug: &str) -> Result<TenantView> {
    platform
        .catalog
        .tenant_details(Some(slug))
        .await?
        .into_iter()
        .next()
        .map(view)
        .ok_or_else(|| PlatformError::TenantNotFound(slug.to_owned()))
}

fn view(row: TenantDetailRow) -> TenantView {
    let t = row.tenant;
    let placement = match (row.db_server, row.database_name, row.role_name) {
        (Some(db_server), Some(database), Some(role)) => Some(PlacementView {
            db_server,
            database,
            role,
            schema: row.schema_name,
        }),
        _ => None,
    };
    let provisioning = match (row.run_id, row.run_status) {
        (Some(run_id), Some(status)) => Some(ProvisioningView {
            run_id,
            status,
            error: row.run_error,
            steps: row.steps.0,
        }),
        _ => None,
    };
    TenantView {
        id: t.tenant_id(),
        slug: t.slug,
        display_name: t.display_name,
        status: t.status,
        tier: t.tier,
        domains: row.domains.0,
        placement,
        storage_prefix: t.storage_prefix,
        key_id: t.key_id,
        schema_version: t.schema_version,
        created_at: t.created_at,
        updated_at: t.updated_at,
        provisioning,
        write_frozen: row.write_frozen,
        open_move: row
            .move_run_id
            .zip(row.move_status)
            .map(|(run_id, status)| OpenMove { run_id, status }),
        deletion: row.deletion,
    }
}

pub async fn list(platform: &Platform) -> Result<Vec<TenantView>> {
    Ok(platform
        .catalog
        .tenant_details(None)
        .await?
        .into_iter()
        .map(view)
        .collect())
}
