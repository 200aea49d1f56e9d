//! Tenant deletion: four-eyes approval between operators, a grace period during which the
//! tenant can be restored exactly as it was, then a recorded, resumable purge that destroys
//! the tenant's database (or schemas), role, objects and key, and a signed certificate saying
//! what was destroyed.
//!
//! ```text
//! request (operator A) ─► operator_approvals `pending`      refused: documents under retention
//!                                                             or legal hold, unless overridden
//! approve (operator B ≠ A) ─► tenant `deleting` (hosts answer 410 tenant_deleted, pools close)
//!                            tenant_deletions `grace` until now + grace
//! restore (during grace) ─► tenant back to its previous status, deletion `restored`
//! purge (after grace; `portico serve` or `portico tenant purge-due`) ─► deletion `purging`,
//!     a run of kind `purge`:
//! ```
//!
//! | step        | does                                                                   |
//! |-------------|------------------------------------------------------------------------|
//! | `export`    | with `export_first`: the tenant exported to the given recipient (kept in the export directory) |
//! | `inventory` | counts every table's rows, the objects and bytes under the prefix, and the audit chain head (recorded once, before anything is destroyed) |
//! | `sessions`  | the tenant role may no longer log in; its sessions are ended           |
//! | `database`  | the tenant database (dedicated) or its two schemas (pooled) dropped    |
//! | `role`      | the tenant role dropped                                                |
//! | `storage`   | every object and unfinished multipart upload under the prefix deleted  |
//! | `key`       | the tenant key destroyed (local) or scheduled for deletion (KMS)       |
//! | `catalog`   | domains, SSO domain claims and placement removed; tenant `deleted` (the tombstone); certificate signed and stored |
//!
//! Every step is idempotent and the run is recorded, so a purge killed anywhere is finished by
//! running it again (`portico tenant purge-due`). Document content is encrypted under keys
//! derived from the tenant key: once it is destroyed, copies of the objects anywhere (backups,
//! versioned buckets) cannot be decrypted — crypto-shredding.

use portico_core::signing::SigningKey;
use portico_core::{RunId, Slug, TenantId};
use portico_provisioning::keys::ShreddedKey;
use portico_provisioning::{TenantDbNames, database, keys, storage};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::catalog::StepRow;
use crate::context::Platform;
use crate::db_servers;
use crate::error::{PlatformError, Result};
use crate::operators::OperatorIdentity;
use crate::tenants::{LOCK_WAIT, checkpoint, tenant_row};

/// The steps of a purge, in order.
pub const PURGE_STEPS: &[&str] = &[
    "export",
    "inventory",
    "sessions",
    "database",
    "role",
    "storage",
    "key",
    "catalog",
];

/// A deletion as asked for by the requesting operator.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeletionRequest {
    pub reason: String,
    /// Grace period in days; at least (and by default) the `deletion_grace` setting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grace_days: Option<u32>,
    /// Why the tenant is deleted although documents are under retention or legal hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub override_retention: Option<String>,
    /// An age recipient: the purge first exports the tenant to it (kept in the export
    /// directory; the certificate names the manifest's hash). Also lets a tenant with
    /// retained documents be deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub export_first: Option<String>,
}

/// What the approver sees and decides on.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct ApprovalView {
    pub id: Uuid,
    pub kind: String,
    pub tenant_id: Uuid,
    pub slug: String,
    pub requested_by: String,
    #[serde(with = "time::serde::rfc3339")]
    pub requested_at: OffsetDateTime,
    pub request: serde_json::Value,
    pub status: String,
    pub decided_by: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub decided_at: Option<OffsetDateTime>,
    pub decision_note: Option<String>,
}

/// A tenant's deletion record.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct DeletionView {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub slug: String,
    /// `grace`, `purging`, `purged` or `restored`.
    pub status: String,
    pub reason: String,
    pub override_retention: Option<String>,
    pub requested_by: String,
    #[serde(with = "time::serde::rfc3339")]
    pub requested_at: OffsetDateTime,
    pub approved_by: String,
    #[serde(with = "time::serde::rfc3339")]
    pub approved_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub grace_until: OffsetDateTime,
    pub purge_run_id: Option<Uuid>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub restored_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub purged_at: Option<OffsetDateTime>,
    #[serde(skip)]
    pub previous_status: String,
    #[serde(skip)]
    pub inventory: sqlx::types::Json<Inventory>,
    #[serde(skip)]
    pub certificate: Option<serde_json::Value>,
}

/// What a purge found and destroyed, recorded step by step.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inventory {
    /// Rows per table (`data.<table>`, `audit.<table>`), counted before anything was dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tables: Option<Vec<TableCount>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub objects: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// The last audit event's sequence number and hash (hex), if the log had any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit_head: Option<AuditHead>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uploads_aborted: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<Vec<ShreddedKey>>,
    /// Tier, server and database the data was in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableCount {
    pub table: String,
    pub rows: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditHead {
    pub seq: i64,
    pub hash: String,
}

/// Documents that keep a tenant from being deleted without an override.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Retained {
    pub under_retention: i64,
    pub legal_holds: i64,
}

/// A reason or note: 1 to 1000 printable characters (line breaks allowed).
fn text_ok(s: &str) -> bool {
    let s = s.trim();
    !s.is_empty() && s.chars().count() <= 1000 && !s.chars().any(|c| c.is_control() && c != '\n')
}

fn validate(platform: &Platform, req: &DeletionRequest) -> Result<()> {
    if !text_ok(&req.reason) {
        return Err(PlatformError::InvalidInput(
            "a deletion needs a reason: 1 to 1000 printable characters".into(),
        ));
    }
    if let Some(o) = &req.override_retention
        && !text_ok(o)
    {
        return Err(PlatformError::InvalidInput(
            "override_retention needs a reason: 1 to 1000 printable characters".into(),
        ));
    }
    if let Some(r) = &req.export_first {
        crate::export::parse_recipient(r)?;
    }
    let min_days = min_grace_days(platform);
    if let Some(days) = req.grace_days
        && (u64::from(days) < min_days || days > 3650)
    {
        return Err(PlatformError::InvalidInput(format!(
            "grace_days must be between {min_days} (the deletion_grace setting) and 3650"
        )));
    }
    Ok(())
}

/// The grace setting in whole days, rounded up (a grace is never shorter than the setting).
fn min_grace_days(platform: &Platform) -> u64 {
    platform.settings.deletion_grace.as_secs().div_ceil(86_400)
}

/// The grace a request gets: the days it asked for, else the setting.
fn grace_seconds(platform: &Platform, req: &DeletionRequest) -> i64 {
    let secs = match req.grace_days {
        Some(d) => u64::from(d) * 86_400,
        None => platform.settings.deletion_grace.as_secs(),
    };
    i64::try_from(secs).unwrap_or(i64::MAX)
}

/// Documents under retention or legal hold in the tenant's database.
pub async fn retained(platform: &Platform, slug: &str) -> Result<Retained> {
    let conn = platform.connect_as_tenant(slug).await?;
    let row = conn
        .query_one(
            "select count(*) filter (where retention_until > current_date),
                    count(*) filter (where legal_hold_at is not null)
               from documents",
            &[],
        )
        .await
        .map_err(|e| PlatformError::InvalidState(format!("reading the tenant's documents: {e}")))?;
    Ok(Retained {
        under_retention: row.get(0),
        legal_holds: row.get(1),
    })
}

/// Refuses a deletion of a tenant with retained documents unless the request overrides it.
async fn check_retention(platform: &Platform, slug: &str, req: &DeletionRequest) -> Result<()> {
    let r = retained(platform, slug).await?;
    if (r.under_retention > 0 || r.legal_holds > 0)
        && req.override_retention.is_none()
        && req.export_first.is_none()
    {
        return Err(PlatformError::RetentionBlocked {
            legal_hold: r.legal_holds > 0,
            message: format!(
                "tenant '{slug}' has {} document(s) under retention and {} under legal hold; a deletion must say export_first (an export made before the purge) or override_retention with a reason",
                r.under_retention, r.legal_holds
            ),
        });
    }
    Ok(())
}

/// Operator A asks for a tenant's deletion; a different operator must approve it.
pub async fn request(
    platform: &Platform,
    by: &OperatorIdentity,
    slug: &Slug,
    req: DeletionRequest,
) -> Result<ApprovalView> {
    validate(platform, &req)?;
    let t = tenant_row(platform, slug.as_str()).await?;
    if !matches!(t.status.as_str(), "active" | "suspended") {
        return Err(PlatformError::InvalidState(format!(
            "tenant '{slug}' is {}; only an active or suspended tenant can be deleted",
            t.status
        )));
    }
    check_retention(platform, slug.as_str(), &req).await?;
    let body = serde_json::to_value(&req)
        .map_err(|e| PlatformError::InvalidState(format!("cannot record the request: {e}")))?;
    let id = Uuid::new_v4();
    sqlx::query(
        "insert into operator_approvals
             (id, kind, tenant_id, requested_by, requested_by_token, request, status)
         values ($1, 'tenant_deletion', $2, $3, $4, $5, 'pending')",
    )
    .bind(id)
    .bind(t.id)
    .bind(&by.name)
    .bind(by.token_id)
    .bind(body)
    .execute(platform.catalog.pool())
    .await
    .map_err(|e| match crate::catalog::constraint(&e) {
        Some("operator_approvals_one_pending") => PlatformError::Conflict(format!(
            "a deletion of '{slug}' is already waiting for approval"
        )),
        _ => PlatformError::catalog("recording a deletion request", e),
    })?;
    tracing::info!(tenant_id = %t.id, approval = %id, operator = %by.name, "tenant deletion requested");
    approval(platform, id).await
}

const APPROVAL_SELECT: &str = "select a.id, a.kind, a.tenant_id, t.slug, a.requested_by,
        a.requested_at, a.request, a.status, a.decided_by, a.decided_at, a.decision_note
   from operator_approvals a join tenants t on t.id = a.tenant_id";

pub async fn approval(platform: &Platform, id: Uuid) -> Result<ApprovalView> {
    sqlx::query_as(&format!("{APPROVAL_SELECT} where a.id = $1"))
        .bind(id)
        .fetch_optional(platform.catalog.pool())
        .await
        .map_err(|e| PlatformError::catalog("reading an approval", e))?
        .ok_or_else(|| PlatformError::ApprovalNotFound(id.to_string()))
}

/// Approvals, pending first then newest; `all` includes decided ones.
pub async fn approvals(platform: &Platform, all: bool) -> Result<Vec<ApprovalView>> {
    sqlx::query_as(&format!(
        "{APPROVAL_SELECT} where $1 or a.status = 'pending'
          order by a.status <> 'pending', a.requested_at desc limit 500"
    ))
    .bind(all)
    .fetch_all(platform.catalog.pool())
    .await
    .map_err(|e| PlatformError::catalog("listing approvals", e))
}

/// A different operator approves: the tenant goes `deleting` at once and its grace starts.
pub async fn approve(
    platform: &Platform,
    by: &OperatorIdentity,
    id: Uuid,
    note: Option<&str>,
) -> Result<DeletionView> {
    let a = approval(platform, id).await?;
    decidable(&a, by, true, note)?;
    let req: DeletionRequest = serde_json::from_value(a.request.clone())
        .map_err(|e| PlatformError::InvalidState(format!("unreadable request: {e}")))?;
    let tenant = TenantId::from_uuid(a.tenant_id);
    let lock = platform.catalog.lock_tenant(tenant, LOCK_WAIT).await?;
    let outcome = async {
        let t = platform
            .catalog
            .tenant_by_id(tenant)
            .await?
            .ok_or_else(|| PlatformError::TenantNotFound(a.slug.clone()))?;
        if !matches!(t.status.as_str(), "active" | "suspended") {
            return Err(PlatformError::InvalidState(format!(
                "tenant '{}' is {}; it can no longer be deleted",
                a.slug, t.status
            )));
        }
        // Documents may have been put under hold since the request.
        check_retention(platform, &a.slug, &req).await?;
        let mut tx = platform
            .catalog
            .pool()
            .begin()
            .await
            .map_err(|e| PlatformError::catalog("approving a deletion", e))?;
        let decided = sqlx::query(
            "update operator_approvals
                set status = 'approved', decided_by = $2, decided_by_token = $3,
                    decided_at = now(), decision_note = $4
              where id = $1 and status = 'pending'",
        )
        .bind(id)
        .bind(&by.name)
        .bind(by.token_id)
        .bind(note)
        .execute(&mut *tx)
        .await
        .map_err(|e| PlatformError::catalog("approving a deletion", e))?;
        if decided.rows_affected() != 1 {
            return Err(PlatformError::ApprovalDecided(id.to_string()));
        }
        sqlx::query(
            "insert into tenant_deletions
                 (id, tenant_id, approval_id, reason, override_retention, previous_status,
                  requested_by, requested_at, approved_by, approved_at, grace_until, status)
             select $1, a.tenant_id, a.id, $2, $3, t.status, a.requested_by, a.requested_at,
                    a.decided_by, a.decided_at, a.decided_at + make_interval(secs => $4), 'grace'
               from operator_approvals a join tenants t on t.id = a.tenant_id
              where a.id = $5",
        )
        .bind(Uuid::new_v4())
        .bind(req.reason.trim())
        .bind(req.override_retention.as_deref().map(str::trim))
        .bind(grace_seconds(platform, &req) as f64)
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(|e| PlatformError::catalog("recording the deletion", e))?;
        let gone = sqlx::query(
            "update tenants set status = 'deleting', updated_at = now()
              where id = $1 and status in ('active', 'suspended')",
        )
        .bind(a.tenant_id)
        .execute(&mut *tx)
        .await
        .map_err(|e| PlatformError::catalog("marking the tenant deleting", e))?;
        if gone.rows_affected() != 1 {
            return Err(PlatformError::InvalidState(format!(
                "tenant '{}' changed status meanwhile; nothing was approved",
                a.slug
            )));
        }
        tx.commit()
            .await
            .map_err(|e| PlatformError::catalog("approving a deletion", e))?;
        Ok(())
    }
    .await;
    lock.release().await;
    outcome?;
    tracing::info!(tenant_id = %a.tenant_id, approval = %id, operator = %by.name, "tenant deletion approved");
    deletion_of(platform, &a.slug)
        .await?
        .ok_or_else(|| PlatformError::InvalidState("the deletion record vanished".into()))
}

/// Rejects a pending request (any operator; its requester rejecting it withdraws it).
pub async fn reject(
    platform: &Platform,
    by: &OperatorIdentity,
    id: Uuid,
    note: Option<&str>,
) -> Result<ApprovalView> {
    let a = approval(platform, id).await?;
    decidable(&a, by, false, note)?;
    let done = sqlx::query(
        "update operator_approvals
            set status = 'rejected', decided_by = $2, decided_by_token = $3,
                decided_at = now(), decision_note = $4
          where id = $1 and status = 'pending'",
    )
    .bind(id)
    .bind(&by.name)
    .bind(by.token_id)
    .bind(note)
    .execute(platform.catalog.pool())
    .await
    .map_err(|e| PlatformError::catalog("rejecting a request", e))?;
    if done.rows_affected() != 1 {
        return Err(PlatformError::ApprovalDecided(id.to_string()));
    }
    approval(platform, id).await
}

fn decidable(
    a: &ApprovalView,
    by: &OperatorIdentity,
    approving: bool,
    note: Option<&str>,
) -> Result<()> {
    if note.is_some_and(|n| !text_ok(n)) {
        return Err(PlatformError::InvalidInput(
            "a decision's note must be 1 to 1000 printable characters".into(),
        ));
    }
    if a.status != "pending" {
        return Err(PlatformError::ApprovalDecided(a.id.to_string()));
    }
    if approving && a.requested_by == by.name {
        return Err(PlatformError::SameOperator(format!(
            "operator '{}' asked for this deletion and cannot approve it; another operator must",
            by.name
        )));
    }
    Ok(())
}

const DELETION_SELECT: &str = "select d.id, d.tenant_id, t.slug, d.status, d.reason,
        d.override_retention, d.requested_by, d.requested_at, d.approved_by, d.approved_at,
        d.grace_until, d.purge_run_id, d.restored_at, d.purged_at, d.previous_status,
        d.inventory, d.certificate
   from tenant_deletions d join tenants t on t.id = d.tenant_id";

/// The tenant's latest deletion record, if any.
pub async fn deletion_of(platform: &Platform, slug: &str) -> Result<Option<DeletionView>> {
    sqlx::query_as(&format!(
        "{DELETION_SELECT} where t.slug = $1 order by d.approved_at desc limit 1"
    ))
    .bind(slug)
    .fetch_optional(platform.catalog.pool())
    .await
    .map_err(|e| PlatformError::catalog("reading the deletion", e))
}

/// During the grace period: the tenant back as it was (its previous status; nothing was
/// destroyed, so data, sessions and tokens are as they were).
pub async fn restore(platform: &Platform, slug: &str) -> Result<DeletionView> {
    let t = tenant_row(platform, slug).await?;
    let lock = platform
        .catalog
        .lock_tenant(t.tenant_id(), LOCK_WAIT)
        .await?;
    let outcome = async {
        let d = deletion_of(platform, slug)
            .await?
            .filter(|d| matches!(d.status.as_str(), "grace" | "purging" | "purged"))
            .ok_or_else(|| {
                PlatformError::InvalidState(format!("tenant '{slug}' is not being deleted"))
            })?;
        if d.status != "grace" {
            return Err(PlatformError::InvalidState(format!(
                "tenant '{slug}' is past its grace period: the purge has started ({}); it cannot be restored",
                d.status
            )));
        }
        let mut tx = platform
            .catalog
            .pool()
            .begin()
            .await
            .map_err(|e| PlatformError::catalog("restoring a tenant", e))?;
        sqlx::query(
            "update tenant_deletions set status = 'restored', restored_at = now()
              where id = $1 and status = 'grace'",
        )
        .bind(d.id)
        .execute(&mut *tx)
        .await
        .map_err(|e| PlatformError::catalog("restoring a tenant", e))?;
        sqlx::query(
            "update tenants set status = $2, updated_at = now() where id = $1 and status = 'deleting'",
        )
        .bind(d.tenant_id)
        .bind(&d.previous_status)
        .execute(&mut *tx)
        .await
        .map_err(|e| PlatformError::catalog("restoring a tenant", e))?;
        tx.commit()
            .await
            .map_err(|e| PlatformError::catalog("restoring a tenant", e))?;
        Ok(())
    }
    .await;
    lock.release().await;
    outcome?;
    tracing::info!(tenant_id = %t.id, "tenant restored during its grace period");
    deletion_of(platform, slug)
        .await?
        .ok_or_else(|| PlatformError::InvalidState("the deletion record vanished".into()))
}

/// What one purge-due pass did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PurgeReport {
    pub purged: Vec<String>,
    /// Exports whose archive expired and was deleted in this pass.
    pub exports_expired: usize,
    /// Tenants another process is purging right now (left to it).
    pub busy: Vec<String>,
    /// Tenants whose purge failed, with the error (run it again to resume).
    pub failed: Vec<(String, String)>,
}

/// Purges every tenant whose grace period is over, and finishes interrupted purges.
pub async fn purge_due(platform: &Platform) -> Result<PurgeReport> {
    let due: Vec<(Uuid, String)> = sqlx::query_as(
        "select d.tenant_id, t.slug from tenant_deletions d join tenants t on t.id = d.tenant_id
          where d.status = 'purging' or (d.status = 'grace' and d.grace_until <= now())
          order by d.grace_until",
    )
    .fetch_all(platform.catalog.pool())
    .await
    .map_err(|e| PlatformError::catalog("listing due purges", e))?;
    let mut report = PurgeReport {
        exports_expired: crate::exports::expire_due(platform).await?,
        ..PurgeReport::default()
    };
    for (tenant, slug) in due {
        match purge(platform, TenantId::from_uuid(tenant)).await {
            Ok(()) => report.purged.push(slug),
            Err(PlatformError::Busy(_)) => report.busy.push(slug),
            Err(e) => {
                tracing::error!(tenant_id = %tenant, error = %portico_core::error_chain(&e), "tenant purge failed");
                report.failed.push((slug, e.to_string()));
            }
        }
    }
    Ok(report)
}

/// The catalog advisory lock key that makes one instance at a time run the purge pass.
const PURGE_LOCK_KEY: i64 = 0x5052_4745; // "PRGE"

/// One purge pass of `portico serve`, if no other instance is running one; failures are
/// logged (and recorded in the purge run), never fatal.
pub async fn purge_due_once(platform: &Platform) {
    let lock = match platform.catalog.try_lock(PURGE_LOCK_KEY).await {
        Ok(Some(lock)) => lock,
        Ok(None) => return,
        Err(e) => {
            tracing::warn!(error = %e, "tenant purge: cannot take the purge lock");
            return;
        }
    };
    match purge_due(platform).await {
        Ok(r) if !r.purged.is_empty() => tracing::info!(purged = ?r.purged, "tenants purged"),
        Ok(_) => {}
        Err(e) => tracing::error!(error = %e, "tenant purge pass failed"),
    }
    lock.release().await;
}

/// Purges one tenant (its grace over, or its purge interrupted), under the tenant's lock.
async fn purge(platform: &Platform, tenant: TenantId) -> Result<()> {
    let lock = platform
        .catalog
        .lock_tenant(tenant, std::time::Duration::ZERO)
        .await?;
    let outcome = Box::pin(purge_locked(platform, tenant)).await;
    lock.release().await;
    outcome
}

async fn purge_locked(platform: &Platform, tenant: TenantId) -> Result<()> {
    // Start (or find) the run: `grace` → `purging` only once the grace is over.
    let (deletion, run): (Uuid, Uuid) = {
        let mut tx = platform
            .catalog
            .pool()
            .begin()
            .await
            .map_err(|e| PlatformError::catalog("starting a purge", e))?;
        let row: Option<(Uuid, String, Option<Uuid>)> = sqlx::query_as(
            "select id, status, purge_run_id from tenant_deletions
              where tenant_id = $1
                and (status = 'purging' or (status = 'grace' and grace_until <= now()))
              for update",
        )
        .bind(tenant.as_uuid())
        .fetch_optional(&mut *tx)
        .await
        .map_err(|e| PlatformError::catalog("starting a purge", e))?;
        let Some((id, _, existing)) = row else {
            // Restored, or purged by another process meanwhile.
            return Ok(());
        };
        let run = match existing {
            Some(run) => run,
            None => {
                let run = RunId::random();
                sqlx::query(
                    "insert into provisioning_runs (id, tenant_id, kind, status, request)
                     values ($1, $2, 'purge', 'running', $3)",
                )
                .bind(run.as_uuid())
                .bind(tenant.as_uuid())
                .bind(serde_json::json!({"deletion_id": id}))
                .execute(&mut *tx)
                .await
                .map_err(|e| PlatformError::catalog("recording the purge", e))?;
                crate::catalog::insert_steps(&mut tx, run, PURGE_STEPS)
                    .await
                    .map_err(|e| PlatformError::catalog("recording the purge", e))?;
                sqlx::query(
                    "update tenant_deletions set status = 'purging', purge_run_id = $2 where id = $1",
                )
                .bind(id)
                .bind(run.as_uuid())
                .execute(&mut *tx)
                .await
                .map_err(|e| PlatformError::catalog("recording the purge", e))?;
                run.as_uuid()
            }
        };
        tx.commit()
            .await
            .map_err(|e| PlatformError::catalog("starting a purge", e))?;
        (id, run)
    };
    checkpoint("purge:started");
    let run = RunId::from_uuid(run);
    let t = platform
        .catalog
        .tenant_by_id(tenant)
        .await?
        .ok_or_else(|| PlatformError::InvalidState(format!("tenant {tenant} vanished")))?;
    let placement = platform.catalog.placement(tenant).await?;
    let names = TenantDbNames::for_tenant(tenant);
    let ctx = PurgeCtx {
        platform,
        run,
        deletion,
    };

    ctx.step("export", || export_first(platform, deletion))
        .await?;

    ctx.step("inventory", || async {
        let mut inv = ctx.inventory().await?;
        if inv.tables.is_none() {
            // Only the first attempt counts: after it, things may already be gone.
            let objects = platform.store.list_sized(&t.storage_prefix).await?;
            inv.objects = Some(objects.len() as u64);
            inv.bytes = Some(objects.iter().map(|(_, s)| s).sum());
            if let Some(p) = &placement {
                let server = db_servers::connect_id(platform, p.db_server_id, &p.db_server).await?;
                let target = p.target();
                let mut client = server.admin_in(&p.database_name).await?;
                let counts = portico_provisioning::moves::row_counts(&mut client, &target).await?;
                inv.tables = Some(
                    counts
                        .into_iter()
                        .map(|(table, rows)| TableCount { table, rows })
                        .collect(),
                );
                inv.audit_head = database::audit_head(&client, &target)
                    .await?
                    .map(|(seq, hash)| AuditHead { seq, hash });
                inv.placement = Some(serde_json::json!({
                    "tier": t.tier,
                    "db_server": p.db_server,
                    "database": p.database_name,
                    "schema": p.schema_name,
                    "role": p.role_name,
                }));
            } else {
                inv.tables = Some(Vec::new());
            }
            ctx.save_inventory(&inv).await?;
        }
        Ok(())
    })
    .await?;

    let server = match &placement {
        Some(p) => Some(db_servers::connect_id(platform, p.db_server_id, &p.db_server).await?),
        None => None,
    };
    ctx.step("sessions", || async {
        if let (Some(p), Some(server)) = (&placement, &server) {
            let admin = server.admin().await?;
            if p.shared_database_id.is_none() {
                portico_provisioning::moves::disable_login(&admin, &names.role).await?;
            }
            end_role_sessions(&admin, &names.role).await?;
        }
        Ok(())
    })
    .await?;

    ctx.step("database", || async {
        if let (Some(p), Some(server)) = (&placement, &server) {
            let admin = server.admin().await?;
            if let Some(shared) = p.shared_names() {
                // The tenant's schemas (and its role: the `role` step then finds it gone).
                portico_provisioning::pooled::drop_tenant(server, &admin, &shared, &names).await?;
            } else {
                database::end_stale_sessions(&admin, &names).await?;
                database::drop_database(&admin, &names).await?;
            }
        }
        Ok(())
    })
    .await?;

    ctx.step("role", || async {
        if let Some(server) = &server {
            database::drop_role(&*server.admin().await?, &names).await?;
        }
        Ok(())
    })
    .await?;

    ctx.step("storage", || async {
        let gone = storage::destroy_prefix(&platform.store, tenant).await?;
        let mut inv = ctx.inventory().await?;
        inv.uploads_aborted = Some(inv.uploads_aborted.unwrap_or(0) + gone.uploads_aborted);
        ctx.save_inventory(&inv).await
    })
    .await?;

    ctx.step("key", || async {
        let mut inv = ctx.inventory().await?;
        let key_id = t
            .key_id
            .clone()
            .unwrap_or_else(|| format!("tenant-{tenant}"));
        let shredded = keys::shred_tenant_key(&platform.keyring, tenant, &key_id).await?;
        inv.keys = Some(vec![shredded]);
        ctx.save_inventory(&inv).await
    })
    .await?;

    let signer = crate::signing::signing_key(platform).await?;
    ctx.step("catalog", || {
        finish(platform, tenant, run, deletion, &signer)
    })
    .await?;
    tracing::info!(tenant_id = %tenant, run_id = %run, "tenant purged");
    Ok(())
}

/// The `export` step: with `export_first`, the tenant's export (recorded against the deletion
/// before it starts, so a re-run finishes the same one).
async fn export_first(platform: &Platform, deletion: Uuid) -> Result<()> {
    let (recipient, export_id, slug): (Option<String>, Option<Uuid>, String) = sqlx::query_as(
        "select a.request->>'export_first', d.export_id, t.slug
           from tenant_deletions d join operator_approvals a on a.id = d.approval_id
           join tenants t on t.id = d.tenant_id
          where d.id = $1",
    )
    .bind(deletion)
    .fetch_one(platform.catalog.pool())
    .await
    .map_err(|e| PlatformError::catalog("reading the deletion's export", e))?;
    let Some(recipient) = recipient else {
        return Ok(());
    };
    let id = match export_id {
        Some(id) => {
            let done = crate::exports::show(platform, id)
                .await?
                .is_some_and(|v| v.status == "succeeded");
            if done {
                return Ok(());
            }
            id
        }
        None => {
            // Kept (no expiry): it is the record of what was deleted.
            let v =
                crate::exports::start(platform, "platform:purge", &slug, Some(&recipient), false)
                    .await?;
            sqlx::query("update tenant_deletions set export_id = $2 where id = $1")
                .bind(deletion)
                .bind(v.id)
                .execute(platform.catalog.pool())
                .await
                .map_err(|e| PlatformError::catalog("recording the deletion's export", e))?;
            v.id
        }
    };
    Box::pin(crate::exports::run(platform, id)).await?;
    Ok(())
}

/// Ends every server session logged in as the role (dedicated tier; a pooled tenant's role
/// cannot log in, and the shared pool's sessions serve other tenants).
async fn end_role_sessions(admin: &tokio_postgres::Client, role: &str) -> Result<()> {
    admin
        .execute(
            "select pg_terminate_backend(pid, 5000) from pg_stat_activity
              where usename = $1 and pid <> pg_backend_pid()",
            &[&role],
        )
        .await
        .map_err(|e| PlatformError::InvalidState(format!("ending the tenant's sessions: {e}")))?;
    Ok(())
}

struct PurgeCtx<'a> {
    platform: &'a Platform,
    run: RunId,
    deletion: Uuid,
}

impl PurgeCtx<'_> {
    async fn inventory(&self) -> Result<Inventory> {
        let inv: sqlx::types::Json<Inventory> =
            sqlx::query_scalar("select inventory from tenant_deletions where id = $1")
                .bind(self.deletion)
                .fetch_one(self.platform.catalog.pool())
                .await
                .map_err(|e| PlatformError::catalog("reading the purge inventory", e))?;
        Ok(inv.0)
    }

    async fn save_inventory(&self, inv: &Inventory) -> Result<()> {
        sqlx::query("update tenant_deletions set inventory = $2 where id = $1")
            .bind(self.deletion)
            .bind(sqlx::types::Json(inv))
            .execute(self.platform.catalog.pool())
            .await
            .map_err(|e| PlatformError::catalog("recording the purge inventory", e))?;
        Ok(())
    }

    /// Runs a step unless a previous attempt finished it.
    async fn step<F, Fut>(&self, name: &'static str, body: F) -> Result<()>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<()>>,
    {
        crate::tenants::recorded_step(self.platform, self.run, name, true, body).await
    }
}

/// The last step, in one catalog transaction: domains, SSO claims, features and placement
/// removed, the tenant a `deleted` tombstone, the certificate signed and stored, the run and
/// the deletion finished.
async fn finish(
    platform: &Platform,
    tenant: TenantId,
    run: RunId,
    deletion: Uuid,
    signer: &SigningKey,
) -> Result<()> {
    let map = |e| PlatformError::catalog("finishing the purge", e);
    let mut tx = platform.catalog.pool().begin().await.map_err(map)?;
    for sql in [
        "delete from tenant_domains where tenant_id = $1",
        "delete from sso_domain_claims where tenant_id = $1",
        "delete from tenant_features where tenant_id = $1",
        "delete from tenant_placements where tenant_id = $1",
        "update tenants set status = 'deleted', write_frozen = false, updated_at = now()
          where id = $1",
    ] {
        sqlx::query(sql)
            .bind(tenant.as_uuid())
            .execute(&mut *tx)
            .await
            .map_err(map)?;
    }
    sqlx::query(
        "update provisioning_steps set state = 'done', finished_at = now(), error = null
          where run_id = $1 and step = 'catalog'",
    )
    .bind(run.as_uuid())
    .execute(&mut *tx)
    .await
    .map_err(map)?;
    sqlx::query(
        "update provisioning_runs set status = 'succeeded', error = null, finished_at = now()
          where id = $1",
    )
    .bind(run.as_uuid())
    .execute(&mut *tx)
    .await
    .map_err(map)?;
    let purged_at: OffsetDateTime = sqlx::query_scalar(
        "update tenant_deletions set status = 'purged', purged_at = now() where id = $1
         returning purged_at",
    )
    .bind(deletion)
    .fetch_one(&mut *tx)
    .await
    .map_err(map)?;
    let payload = certificate_payload(&mut tx, deletion, run, purged_at).await?;
    let doc = signer.sign_document(payload);
    sqlx::query("update tenant_deletions set certificate = $2 where id = $1")
        .bind(deletion)
        .bind(&doc)
        .execute(&mut *tx)
        .await
        .map_err(map)?;
    tx.commit().await.map_err(map)?;
    Ok(())
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// The certificate's content, read inside the finishing transaction.
async fn certificate_payload(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    deletion: Uuid,
    run: RunId,
    purged_at: OffsetDateTime,
) -> Result<serde_json::Value> {
    let map = |e| PlatformError::catalog("writing the certificate", e);
    let d: DeletionView = sqlx::query_as(&format!("{DELETION_SELECT} where d.id = $1"))
        .bind(deletion)
        .fetch_one(&mut **tx)
        .await
        .map_err(map)?;
    let (display_name,): (String,) =
        sqlx::query_as("select display_name from tenants where id = $1")
            .bind(d.tenant_id)
            .fetch_one(&mut **tx)
            .await
            .map_err(map)?;
    let steps: Vec<StepRow> = sqlx::query_as(
        "select step, state, attempts, error, started_at, finished_at
           from provisioning_steps where run_id = $1 order by position",
    )
    .bind(run.as_uuid())
    .fetch_all(&mut **tx)
    .await
    .map_err(map)?;
    let export_sha: Option<String> = sqlx::query_scalar(
        "select e.report->>'manifest_sha256' from tenant_deletions d
           join tenant_exports e on e.id = d.export_id where d.id = $1",
    )
    .bind(deletion)
    .fetch_optional(&mut **tx)
    .await
    .map_err(map)?
    .flatten();
    let inv = &d.inventory.0;
    let tables = inv.tables.clone().unwrap_or_default();
    let rows: i64 = tables.iter().map(|t| t.rows).sum();
    Ok(serde_json::json!({
        "kind": "portico-deletion-certificate/1",
        "tenant": {"id": d.tenant_id, "slug": d.slug, "display_name": display_name},
        "reason": d.reason,
        "override_retention": d.override_retention,
        "requested_by": d.requested_by,
        "requested_at": rfc3339(d.requested_at),
        "approved_by": d.approved_by,
        "approved_at": rfc3339(d.approved_at),
        "grace_until": rfc3339(d.grace_until),
        "grace_seconds": (d.grace_until - d.approved_at).whole_seconds(),
        "purge_run_id": run.as_uuid(),
        "purged_at": rfc3339(purged_at),
        "steps": steps.iter().map(|s| serde_json::json!({
            "step": s.step,
            "attempts": s.attempts,
            "started_at": s.started_at.map(rfc3339),
            "finished_at": s.finished_at.map(rfc3339).unwrap_or_else(|| rfc3339(purged_at)),
        })).collect::<Vec<_>>(),
        "placement": inv.placement,
        "destroyed": {
            "tables": tables.iter().map(|t| serde_json::json!({"table": t.table, "rows": t.rows})).collect::<Vec<_>>(),
            "rows": rows,
            "objects": inv.objects.unwrap_or(0),
            "bytes": inv.bytes.unwrap_or(0),
            "uploads_aborted": inv.uploads_aborted.unwrap_or(0),
            "keys": inv.keys.clone().unwrap_or_default(),
        },
        "audit_chain_head": inv.audit_head,
        "export_manifest_sha256": export_sha,
    }))
}

/// The tenant's signed deletion certificate (once purged).
pub async fn certificate(platform: &Platform, slug: &str) -> Result<serde_json::Value> {
    let d = deletion_of(platform, slug)
        .await?
        .ok_or_else(|| PlatformError::InvalidState(format!("tenant '{slug}' was never deleted")))?;
    d.certificate.ok_or_else(|| {
        PlatformError::InvalidState(format!(
            "tenant '{slug}' is not purged yet (deletion {}); the certificate is written by the purge",
            d.status
        ))
    })
}
