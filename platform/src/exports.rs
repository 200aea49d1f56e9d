//! Exports the control plane makes and keeps: asked for through the operator API
//! (`POST /operator/v1/tenants/{slug}/exports`, then polled and downloaded) or by a purge whose
//! deletion said `export_first`. Each is a `tenant_exports` row (who, for which recipient,
//! progress, the report) and a file in the `export_dir` setting, written by
//! [`crate::export::export_with_progress`] (so `FILE.partial` until complete).

use std::path::PathBuf;
use std::sync::Arc;

use axum::http::StatusCode;
use futures_util::future::BoxFuture;
use portico_core::TenantId;
use portico_http::{ErrorCode, Problem};
use portico_tenant_runtime::exports::{ExportFile, ExportStatus, TenantExports};
use serde::Serialize;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::context::Platform;
use crate::error::{PlatformError, Result};
use crate::export::{Progress, ProgressSink};
use crate::tenants::tenant_row;

/// A running export that has not reported progress for this long is shown as stalled (its
/// process probably ended); asking again makes a new one.
const STALLED_AFTER_S: i64 = 300;

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct ExportView {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub slug: String,
    pub requested_by: String,
    pub recipient: Option<String>,
    /// `running`, `succeeded` or `failed`.
    pub status: String,
    pub progress: serde_json::Value,
    pub report: Option<serde_json::Value>,
    pub error: Option<String>,
    #[serde(skip)]
    pub file_name: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub finished_at: Option<OffsetDateTime>,
    /// When the archive is deleted (`None`: kept, as a deletion's export is).
    #[serde(with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
    /// Running, but no progress for five minutes.
    pub stalled: bool,
}

const SELECT: &str = "select e.id, e.tenant_id, t.slug, e.requested_by, e.recipient, e.status,
        e.progress, e.report, e.error, e.file_name, e.created_at, e.updated_at, e.finished_at,
        e.expires_at, (e.status = 'running' and e.updated_at < now() - make_interval(secs => $2)) as stalled
   from tenant_exports e join tenants t on t.id = e.tenant_id";

pub async fn show(platform: &Platform, id: Uuid) -> Result<Option<ExportView>> {
    sqlx::query_as(&format!("{SELECT} where e.id = $1"))
        .bind(id)
        .bind(STALLED_AFTER_S as f64)
        .fetch_optional(platform.catalog.pool())
        .await
        .map_err(|e| PlatformError::catalog("reading an export", e))
}

/// The archive's path (in the export directory).
pub fn path(platform: &Platform, v: &ExportView) -> PathBuf {
    platform.settings.export_dir.join(&v.file_name)
}

/// Records a new export of `slug` (running), after checking the tenant and the recipient.
/// With `expires`, the archive is deleted `export_retention` after it was asked for.
pub async fn start(
    platform: &Platform,
    by: &str,
    slug: &str,
    recipient: Option<&str>,
    expires: bool,
) -> Result<ExportView> {
    let t = tenant_row(platform, slug).await?;
    if !matches!(t.status.as_str(), "active" | "suspended" | "deleting") {
        return Err(PlatformError::InvalidState(format!(
            "tenant '{slug}' is {}; there is nothing to export",
            t.status
        )));
    }
    if let Some(r) = recipient {
        crate::export::parse_recipient(r)?;
    }
    let id = Uuid::new_v4();
    let file_name = format!(
        "{}-{id}.{}",
        t.slug,
        if recipient.is_some() {
            "tar.age"
        } else {
            "tar"
        }
    );
    sqlx::query(
        "insert into tenant_exports
             (id, tenant_id, requested_by, recipient, status, file_name, expires_at)
         values ($1, $2, $3, $4, 'running', $5,
                 case when $6 then now() + make_interval(secs => $7) end)",
    )
    .bind(id)
    .bind(t.id)
    .bind(by)
    .bind(recipient.map(str::trim))
    .bind(&file_name)
    .bind(expires)
    .bind(platform.settings.export_retention.as_secs_f64())
    .execute(platform.catalog.pool())
    .await
    .map_err(|e| PlatformError::catalog("recording an export", e))?;
    show(platform, id)
        .await?
        .ok_or_else(|| PlatformError::InvalidState("the export vanished".into()))
}

/// Runs a recorded export to its end, recording progress every second and the outcome.
pub async fn run(platform: &Platform, id: Uuid) -> Result<ExportView> {
    let v = show(platform, id)
        .await?
        .ok_or_else(|| PlatformError::InvalidState(format!("no export {id}")))?;
    let recipient = v
        .recipient
        .as_deref()
        .map(crate::export::parse_recipient)
        .transpose()?;
    tokio::fs::create_dir_all(&platform.settings.export_dir)
        .await
        .map_err(|e| {
            PlatformError::InvalidState(format!(
                "cannot make the export directory {}: {e}",
                platform.settings.export_dir.display()
            ))
        })?;
    let out = path(platform, &v);
    // An earlier attempt of this export that was never recorded as finished.
    let _ = tokio::fs::remove_file(&out).await;
    let progress: Arc<ProgressSink> = Arc::new(std::sync::Mutex::new(Progress::default()));
    let reporter = {
        let progress = progress.clone();
        async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
            loop {
                tick.tick().await;
                let now = progress.lock().map(|p| p.clone()).unwrap_or_default();
                let _ = record_progress(platform, id, &now).await;
            }
        }
    };
    let work = crate::export::export_with_progress(
        platform,
        &v.slug,
        &out,
        recipient,
        false,
        Some(&progress),
    );
    let outcome = tokio::select! {
        r = work => r,
        () = reporter => unreachable_reporter(),
    };
    let last = progress.lock().map(|p| p.clone()).unwrap_or_default();
    let map = |e| PlatformError::catalog("recording an export's outcome", e);
    match &outcome {
        Ok(report) => {
            sqlx::query(
                "update tenant_exports set status = 'succeeded', report = $2, progress = $3,
                        error = null, updated_at = now(), finished_at = now()
                  where id = $1",
            )
            .bind(id)
            .bind(serde_json::to_value(report).unwrap_or_default())
            .bind(serde_json::to_value(&last).unwrap_or_default())
            .execute(platform.catalog.pool())
            .await
            .map_err(map)?;
        }
        Err(e) => {
            sqlx::query(
                "update tenant_exports set status = 'failed', error = $2, updated_at = now(),
                        finished_at = now()
                  where id = $1",
            )
            .bind(id)
            .bind(e.to_string())
            .execute(platform.catalog.pool())
            .await
            .map_err(map)?;
        }
    }
    outcome?;
    show(platform, id)
        .await?
        .ok_or_else(|| PlatformError::InvalidState("the export vanished".into()))
}

/// The progress loop never ends by itself.
fn unreachable_reporter() -> Result<crate::export::ExportReport> {
    Err(PlatformError::InvalidState(
        "the progress reporter stopped".into(),
    ))
}

async fn record_progress(platform: &Platform, id: Uuid, p: &Progress) -> Result<()> {
    sqlx::query(
        "update tenant_exports set progress = $2, updated_at = now()
          where id = $1 and status = 'running'",
    )
    .bind(id)
    .bind(serde_json::to_value(p).unwrap_or_default())
    .execute(platform.catalog.pool())
    .await
    .map_err(|e| PlatformError::catalog("recording export progress", e))?;
    Ok(())
}

/// Starts an export in the background (the operator API answers 202 at once).
pub fn spawn(platform: Arc<Platform>, id: Uuid) {
    tokio::spawn(async move {
        if let Err(e) = run(&platform, id).await {
            tracing::error!(export = %id, error = %portico_core::error_chain(&e), "tenant export failed");
        }
    });
}

/// Deletes the archives of finished exports past their expiry (and what an interrupted run
/// left of them); returns how many expired.
pub async fn expire_due(platform: &Platform) -> Result<usize> {
    let due: Vec<(Uuid, String)> = sqlx::query_as(
        "select id, file_name from tenant_exports
          where status in ('succeeded', 'failed') and expires_at <= now()",
    )
    .fetch_all(platform.catalog.pool())
    .await
    .map_err(|e| PlatformError::catalog("listing expired exports", e))?;
    for (id, name) in &due {
        let path = platform.settings.export_dir.join(name);
        for p in [path.clone(), crate::export::partial_path(&path)] {
            match tokio::fs::remove_file(&p).await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(PlatformError::InvalidState(format!(
                        "cannot delete the expired export {}: {e}",
                        p.display()
                    )));
                }
            }
        }
        sqlx::query(
            "update tenant_exports set status = 'expired', updated_at = now() where id = $1",
        )
        .bind(id)
        .execute(platform.catalog.pool())
        .await
        .map_err(|e| PlatformError::catalog("recording an expired export", e))?;
        tracing::info!(export = %id, "expired export deleted");
    }
    Ok(due.len())
}

/// Self-service exports carry who asked on the tenant's side under this prefix.
const SELF_SERVICE: &str = "tenant:";

/// The control plane's side of tenant self-service exports (`/api/v1/exports` on tenant
/// hosts): the same exports as the operator API's, recorded as asked by the tenant, and
/// answered only to that tenant.
pub struct SelfService {
    pub platform: Arc<Platform>,
}

impl SelfService {
    async fn view(&self, tenant: TenantId, id: Uuid) -> Result<Option<ExportView>> {
        Ok(show(&self.platform, id).await?.filter(|v| {
            v.tenant_id == tenant.as_uuid() && v.requested_by.starts_with(SELF_SERVICE)
        }))
    }
}

fn status_of(v: ExportView) -> ExportStatus {
    ExportStatus {
        id: v.id,
        encrypted: v.recipient.is_some(),
        requested_by: v
            .requested_by
            .strip_prefix(SELF_SERVICE)
            .unwrap_or(&v.requested_by)
            .to_owned(),
        status: v.status,
        progress: v.progress,
        error: v.error,
        created_at: v.created_at,
        finished_at: v.finished_at,
        expires_at: v.expires_at,
        stalled: v.stalled,
    }
}

impl TenantExports for SelfService {
    fn check_recipient(&self, recipient: &str) -> std::result::Result<(), String> {
        crate::export::parse_recipient(recipient)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    fn start<'a>(
        &'a self,
        tenant: TenantId,
        requested_by: &'a str,
        recipient: Option<&'a str>,
    ) -> BoxFuture<'a, std::result::Result<ExportStatus, Problem>> {
        Box::pin(async move {
            let slug: String = sqlx::query_scalar("select slug from tenants where id = $1")
                .bind(tenant.as_uuid())
                .fetch_one(self.platform.catalog.pool())
                .await
                .map_err(|e| PlatformError::catalog("reading a tenant", e))?;
            let by = format!("{SELF_SERVICE}{requested_by}");
            let v = start(&self.platform, &by, &slug, recipient, true).await?;
            spawn(self.platform.clone(), v.id);
            Ok(status_of(v))
        })
    }

    fn list(
        &self,
        tenant: TenantId,
    ) -> BoxFuture<'_, std::result::Result<Vec<ExportStatus>, Problem>> {
        Box::pin(async move {
            let rows: Vec<ExportView> = sqlx::query_as(&format!(
                "{SELECT} where e.tenant_id = $1 and starts_with(e.requested_by, $3)
                  order by e.created_at desc, e.id"
            ))
            .bind(tenant.as_uuid())
            .bind(STALLED_AFTER_S as f64)
            .bind(SELF_SERVICE)
            .fetch_all(self.platform.catalog.pool())
            .await
            .map_err(|e| PlatformError::catalog("listing exports", e))?;
            Ok(rows.into_iter().map(status_of).collect())
        })
    }

    fn show(
        &self,
        tenant: TenantId,
        id: Uuid,
    ) -> BoxFuture<'_, std::result::Result<Option<ExportStatus>, Problem>> {
        Box::pin(async move { Ok(self.view(tenant, id).await?.map(status_of)) })
    }

    fn open(
        &self,
        tenant: TenantId,
        id: Uuid,
    ) -> BoxFuture<'_, std::result::Result<ExportFile, Problem>> {
        Box::pin(async move {
            let v = self
                .view(tenant, id)
                .await?
                .ok_or_else(Problem::not_found)?;
            let gone = portico_tenant_runtime::exports::archive_gone;
            if v.status == "expired" || v.expires_at.is_some_and(|t| t <= OffsetDateTime::now_utc())
            {
                return Err(gone());
            }
            if v.status != "succeeded" {
                return Err(Problem::new(
                    StatusCode::CONFLICT,
                    ErrorCode::InvalidState,
                    "The export is not finished",
                ));
            }
            let file = tokio::fs::File::open(path(&self.platform, &v))
                .await
                .map_err(|e| {
                    tracing::error!(export = %v.id, error = %e, "an export's archive is missing");
                    gone()
                })?;
            let len = file.metadata().await.map(|m| m.len()).ok();
            Ok(ExportFile {
                file,
                len,
                name: v.file_name,
            })
        })
    }

    fn discard(
        &self,
        tenant: TenantId,
        id: Uuid,
    ) -> BoxFuture<'_, std::result::Result<ExportStatus, Problem>> {
        Box::pin(async move {
            let v = self
                .view(tenant, id)
                .await?
                .ok_or_else(Problem::not_found)?;
            if v.status == "running" && !v.stalled {
                return Err(Problem::new(
                    StatusCode::CONFLICT,
                    ErrorCode::InvalidState,
                    "The export is still running",
                ));
            }
            // Due now: the purge pass's own step deletes the archive and marks it expired.
            sqlx::query(
                "update tenant_exports
                    set expires_at = least(expires_at, now()),
                        status = case when status = 'running' then 'failed' else status end,
                        error = case when status = 'running' then 'stalled; discarded' else error end
                  where id = $1 and status <> 'expired'",
            )
            .bind(id)
            .execute(self.platform.catalog.pool())
            .await
            .map_err(|e| PlatformError::catalog("discarding an export", e))?;
            expire_due(&self.platform).await?;
            let v = self
                .view(tenant, id)
                .await?
                .ok_or_else(Problem::not_found)?;
            Ok(status_of(v))
        })
    }
}
