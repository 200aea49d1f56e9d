//! Tenant lifecycle workflows: create (a recorded, resumable run of idempotent steps), rollback
//! of an unfinished create, suspend, resume, and the read views.
//!
//! Create, step by step (each recorded in `provisioning_steps` with attempts and errors):
//!
//! | step       | does                                                            | recorded          |
//! |------------|-----------------------------------------------------------------|-------------------|
//! | (reserve)  | tenant row `provisioning`, domains, placement names, run        | one transaction   |
//! | `key`      | tenant key (KMS key + alias, or local wrapped key)              | `tenants.key_id`  |
//! | `role`     | random password, encrypted under the tenant key, then the role  | ciphertext first  |
//! | `database` | template (if needed), database from it, grants, ownership       |                   |
//! | `storage`  | `tenants/<id>/` marker object                                   |                   |
//! | `activate` | login as the tenant role, profile row, status `active`          | one transaction   |
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

use crate::catalog::{DomainRow, NewTenant, StepRow, TenantRow};
use crate::context::Platform;
use crate::db_servers;
use crate::error::{PlatformError, Result};

/// How long a command waits for another process holding the same tenant.
const LOCK_WAIT: Duration = Duration::from_secs(10);

/// A tenant create as asked for. Also stored with the run, so a re-run with other options is
/// refused instead of silently resuming something different.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateTenant {
    pub slug: Slug,
    pub display_name: Option<String>,
    pub domains: Vec<Hostname>,
    pub db_server: Option<DbServerName>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PlacementView {
    pub db_server: String,
    pub database: String,
    pub role: String,
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
}

/// Test hook: when `PORTICO_TEST_PAUSE_AT` names this point, the process announces it on
/// stderr and stops making progress, so a test can `kill -9` it at a precise step. Only
/// meaningful to the crash tests; unset in every other use.
fn checkpoint(point: &str) {
    if std::env::var("PORTICO_TEST_PAUSE_AT").is_ok_and(|p| p == point) {
        eprintln!("PORTICO_PAUSED_AT {point}");
        loop {
            std::thread::park();
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
pub async fn create(platform: &Platform, req: CreateTenant) -> Result<TenantView> {
    let display_name =
        validate_display_name(req.display_name.as_deref().unwrap_or(req.slug.as_str()))?;
    validate_domains(platform, &req)?;
    let request = serde_json::to_value(&req)
        .map_err(|e| PlatformError::InvalidState(format!("cannot record the request: {e}")))?;

    let (tenant, run, admin) = find_or_reserve(platform, &req, &display_name, request).await?;
    checkpoint("reserved");

    let lock = platform.catalog.lock_tenant(tenant, LOCK_WAIT).await?;
    // Another process may have finished (or rolled back) this tenant while we waited.
    let outcome = match platform.catalog.tenant_by_id(tenant).await? {
        Some(t) if t.status == "provisioning" => {
            run_steps(platform, tenant, run, &req.slug, &display_name, admin).await
        }
        Some(_) => Ok(()),
        None => Err(PlatformError::Conflict(format!(
            "tenant '{}' was rolled back by another process while this one waited",
            req.slug
        ))),
    };
    lock.release().await;
    outcome?;
    show_by_id(platform, req.slug.as_str()).await
}

/// An open admin connection to the tenant's database server, carried from the reserve check
/// into the steps so that one run opens it once.
type AdminConn = Option<portico_provisioning::AdminClient>;

/// The tenant and run to work on: an unfinished create with the same options, or a new one.
async fn find_or_reserve(
    platform: &Platform,
    req: &CreateTenant,
    display_name: &str,
    request: serde_json::Value,
) -> Result<(TenantId, RunId, AdminConn)> {
    // Two attempts: when a concurrent create of the same slug wins the insert, the second
    // look-up finds its record and resumes it (or refuses different options).
    for _ in 0..2 {
        match platform.catalog.tenant_by_slug(req.slug.as_str()).await? {
            Some(existing) => {
                let (tenant, run) = resumable(platform, req, existing, &request).await?;
                return Ok((tenant, run, None));
            }
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
    match existing {
        existing if existing.status != "provisioning" => {
            Err(PlatformError::SlugTaken(req.slug.to_string()))
        }
        existing => {
            let run = platform
                .catalog
                .create_run(existing.tenant_id())
                .await?
                .ok_or_else(|| {
                    PlatformError::InvalidState(format!(
                        "tenant '{}' is provisioning but has no run recorded",
                        req.slug
                    ))
                })?;
            if run.status == "rolling_back" {
                return Err(PlatformError::InvalidState(format!(
                    "a rollback of '{slug}' was interrupted; finish it with `portico tenant create --rollback {slug}`",
                    slug = req.slug
                )));
            }
            if run.request != *request {
                return Err(PlatformError::Conflict(format!(
                    "tenant '{slug}' is already being created with other options; re-run with the same options to finish it, or roll it back with `portico tenant create --rollback {slug}`",
                    slug = req.slug
                )));
            }
            Ok((existing.tenant_id(), RunId::from_uuid(run.id)))
        }
    }
}

async fn reserve(
    platform: &Platform,
    req: &CreateTenant,
    display_name: String,
    request: serde_json::Value,
) -> Result<(TenantId, RunId, AdminConn)> {
    let subdomain = platform.settings.base_domain.tenant_subdomain(&req.slug);
    for d in std::iter::once(&subdomain).chain(&req.domains) {
        if let Some(owner) = platform.catalog.domain_owner(d).await? {
            return Err(PlatformError::DomainTaken {
                domain: d.to_string(),
                owner,
            });
        }
    }
    let server_row = db_servers::choose(platform, req.db_server.as_ref()).await?;
    // Refuse before recording anything if the server cannot take the tenant.
    let server = db_servers::connect(platform, &server_row).await?;
    let admin = server.admin().await?;
    server.check_on(&admin).await?;

    let id = TenantId::random();
    let names = TenantDbNames::for_tenant(id);
    let run = platform
        .catalog
        .reserve_tenant(&NewTenant {
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
    Ok((id, run, Some(admin)))
}

async fn run_steps(
    platform: &Platform,
    tenant: TenantId,
    run: RunId,
    slug: &Slug,
    display_name: &str,
    admin: AdminConn,
) -> Result<()> {
    let steps = platform.catalog.steps(run).await?;
    let done = |name: &str| steps.iter().any(|s| s.step == name && s.state == "done");
    let placement = platform.catalog.placement(tenant).await?.ok_or_else(|| {
        PlatformError::InvalidState(format!("tenant {tenant} has no placement recorded"))
    })?;
    let server_row = platform
        .catalog
        .db_server_by_id(placement.db_server_id)
        .await?
        .ok_or_else(|| PlatformError::ServerNotFound(placement.db_server.clone()))?;
    let server = db_servers::connect(platform, &server_row).await?;
    let admin = match admin {
        Some(admin) => admin,
        None => server.admin().await?,
    };
    let names = TenantDbNames {
        database: placement.database_name.clone(),
        role: placement.role_name.clone(),
    };
    let limits = RoleLimits {
        connection_limit: platform.settings.tenant_connection_limit,
        statement_timeout_ms: platform.settings.tenant_statement_timeout_ms,
    };

    macro_rules! step {
        ($name:literal, $body:expr) => {{
            let attempt = platform.catalog.step_started(run, $name).await?;
            checkpoint(concat!("before:", $name));
            let outcome: std::result::Result<_, portico_provisioning::ProvisionError> =
                async { $body(attempt).await }.await;
            match outcome {
                Ok(v) => {
                    checkpoint(concat!("after:", $name));
                    v
                }
                Err(e) => {
                    let message = e.to_string();
                    tracing::warn!(tenant_id = %tenant, step = $name, error = %message, "provisioning step failed");
                    platform.catalog.step_failed(run, $name, &message).await?;
                    return Err(PlatformError::Step { step: $name, source: e });
                }
            }
        }};
    }

    // key
    let key_ref = if done("key") {
        TenantKeyRef::new(platform.catalog_key_id(tenant).await?)
    } else {
        let key = step!("key", |attempt: i32| keys::ensure_tenant_key(
            &platform.keyring,
            tenant,
            attempt > 1
        ));
        platform
            .catalog
            .key_created(run, tenant, key.as_str())
            .await?;
        key
    };

    // role: the password is decided (and stored encrypted) once, before the role exists.
    let password = role_password(
        platform,
        tenant,
        &key_ref,
        placement.role_password_ciphertext.as_deref(),
    )
    .await?;
    if !done("role") {
        step!("role", |_| database::ensure_role(
            &admin, &names, &password, limits
        ));
        platform.catalog.step_done(run, "role").await?;
    }

    if !done("database") {
        step!("database", |_| async {
            let template = database::ensure_template(&server, &admin).await?;
            database::ensure_database(&server, &admin, &names, &template).await
        });
        platform.catalog.step_done(run, "database").await?;
    }

    if !done("storage") {
        step!("storage", |_| storage::ensure_prefix(
            &platform.store,
            tenant
        ));
        platform.catalog.step_done(run, "storage").await?;
    }

    let profile = TenantProfile {
        tenant_id: tenant,
        slug: slug.to_string(),
        display_name: display_name.to_owned(),
    };
    let version = step!("activate", |_| database::verify_and_seed(
        &server, &names, &password, &profile
    ));
    platform.catalog.activate(run, tenant, version).await?;
    tracing::info!(tenant_id = %tenant, run_id = %run, "tenant active");
    Ok(())
}

async fn role_password(
    platform: &Platform,
    tenant: TenantId,
    key: &TenantKeyRef,
    stored: Option<&[u8]>,
) -> Result<SecretString> {
    if let Some(ciphertext) = stored {
        let plain = platform
            .keyring
            .decrypt_for_tenant(tenant, key, ciphertext)
            .await?;
        return String::from_utf8(plain)
            .map(SecretString::from)
            .map_err(|_| PlatformError::InvalidState("stored role password is not UTF-8".into()));
    }
    let password = database::generate_password();
    let ciphertext = platform
        .keyring
        .encrypt_for_tenant(tenant, key, password.expose_secret().as_bytes())
        .await?;
    platform
        .catalog
        .set_role_password(tenant, &ciphertext)
        .await?;
    Ok(password)
}

impl Platform {
    async fn catalog_key_id(&self, tenant: TenantId) -> Result<String> {
        let row = self.catalog.tenant_by_id(tenant).await?;
        row.and_then(|t| t.key_id).ok_or_else(|| {
            PlatformError::InvalidState(format!("tenant {tenant} has no key recorded"))
        })
    }

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
        role_password(
            self,
            t.tenant_id(),
            &TenantKeyRef::new(key),
            Some(&ciphertext),
        )
        .await
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
    let objects_deleted = storage::destroy_prefix(&platform.store, tenant).await?;
    checkpoint("rollback:storage");
    if let Some(placement) = platform.catalog.placement(tenant).await? {
        // The placement's foreign key keeps its server row alive.
        let row = platform
            .catalog
            .db_server_by_id(placement.db_server_id)
            .await?
            .ok_or_else(|| PlatformError::ServerNotFound(placement.db_server.clone()))?;
        let admin = db_servers::connect(platform, &row).await?.admin().await?;
        let names = TenantDbNames {
            database: placement.database_name,
            role: placement.role_name,
        };
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

async fn tenant_row(platform: &Platform, slug: &str) -> Result<TenantRow> {
    platform
        .catalog
        .tenant_by_slug(slug)
        .await?
        .ok_or_else(|| PlatformError::TenantNotFound(slug.to_owned()))
}

/// `active → suspended`.
pub async fn suspend(platform: &Platform, slug: &str) -> Result<TenantView> {
    change_status(platform, slug, "active", "suspended").await
}

/// `suspended → active`.
pub async fn resume(platform: &Platform, slug: &str) -> Result<TenantView> {
    change_status(platform, slug, "suspended", "active").await
}

async fn change_status(
    platform: &Platform,
    slug: &str,
    from: &str,
    to: &str,
) -> Result<TenantView> {
    let t = tenant_row(platform, slug).await?;
    if t.status == to {
        return show_by_id(platform, slug).await;
    }
    if !platform.catalog.transition(t.tenant_id(), from, to).await? {
        let verb = if to == "suspended" {
            "suspended"
        } else {
            "resumed"
        };
        return Err(PlatformError::InvalidState(format!(
            "tenant '{slug}' is {}; only a tenant that is {from} can be {verb}",
            t.status
        )));
    }
    tracing::info!(tenant_id = %t.id, from, to, "tenant status changed");
    show_by_id(platform, slug).await
}

pub async fn show(platform: &Platform, slug: &str) -> Result<TenantView> {
    show_by_id(platform, slug).await
}

async fn show_by_id(platform: &Platform, slug: &str) -> Result<TenantView> {
    let t = tenant_row(platform, slug).await?;
    view(platform, t).await
}

async fn view(platform: &Platform, t: TenantRow) -> Result<TenantView> {
    let tenant = t.tenant_id();
    let domains = platform.catalog.domains(tenant).await?;
    let placement = platform
        .catalog
        .placement(tenant)
        .await?
        .map(|p| PlacementView {
            db_server: p.db_server,
            database: p.database_name,
            role: p.role_name,
        });
    let provisioning = match platform.catalog.create_run(tenant).await? {
        Some(run) => Some(ProvisioningView {
            run_id: run.id,
            status: run.status,
            error: run.error,
            steps: platform.catalog.steps(RunId::from_uuid(run.id)).await?,
        }),
        None => None,
    };
    Ok(TenantView {
        id: tenant,
        slug: t.slug,
        display_name: t.display_name,
        status: t.status,
        tier: t.tier,
        domains,
        placement,
        storage_prefix: t.storage_prefix,
        key_id: t.key_id,
        schema_version: t.schema_version,
        created_at: t.created_at,
        updated_at: t.updated_at,
        provisioning,
    })
}

pub async fn list(platform: &Platform) -> Result<Vec<TenantView>> {
    let mut out = Vec::new();
    for t in platform.catalog.list_tenants().await? {
        out.push(view(platform, t).await?);
    }
    Ok(out)
}
