//! Tenant self-service exports as the runtime sees them. The control plane makes the archive (it
//! holds the snapshot connection, the export-signing key and the export directory); the runtime
//! asks for it through [`TenantExports`], which the platform hands to [`crate::Runtime`] at
//! start. Every call names the tenant the request was resolved to, and an implementation
//! answers only about that tenant's self-service exports.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderValue, header};
use axum::response::Response;
use futures_util::future::BoxFuture;
use portico_core::TenantId;
use serde::Serialize;
use time::OffsetDateTime;
use tokio::io::AsyncReadExt;
use uuid::Uuid;

use crate::http::Problem;

/// One self-service export of the tenant, as its admins see it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ExportStatus {
    pub id: Uuid,
    /// `running`, `succeeded`, `failed` or `expired` (the archive was deleted).
    pub status: String,
    /// Encrypted to an age recipient (else plaintext, as asked).
    pub encrypted: bool,
    /// Who asked (`user:<id>` or `token:<id>`).
    pub requested_by: String,
    /// Tables, rows, documents and bytes written so far.
    #[schema(value_type = Object)]
    pub progress: serde_json::Value,
    pub error: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub finished_at: Option<OffsetDateTime>,
    /// When the archive is deleted.
    #[serde(with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
    /// Running, but without progress for five minutes (ask again).
    pub stalled: bool,
}

/// A finished archive, opened for reading.
pub struct ExportFile {
    pub file: tokio::fs::File,
    pub len: Option<u64>,
    pub name: String,
}

/// What the control plane offers the runtime for self-service exports.
pub trait TenantExports: Send + Sync {
    /// Why `recipient` is not an age X25519 recipient, if it is not (checked when the export
    /// is asked for, before any approval).
    fn check_recipient(&self, recipient: &str) -> Result<(), String>;
    /// Records and starts an export of `tenant`, encrypted to `recipient` unless `None`.
    fn start<'a>(
        &'a self,
        tenant: TenantId,
        requested_by: &'a str,
        recipient: Option<&'a str>,
    ) -> BoxFuture<'a, Result<ExportStatus, Problem>>;
    /// The tenant's self-service exports, newest first.
    fn list(&self, tenant: TenantId) -> BoxFuture<'_, Result<Vec<ExportStatus>, Problem>>;
    /// One of the tenant's self-service exports (`None` for any other id).
    fn show(
        &self,
        tenant: TenantId,
        id: Uuid,
    ) -> BoxFuture<'_, Result<Option<ExportStatus>, Problem>>;
    /// The archive of one of the tenant's exports that succeeded and has not expired.
    fn open(&self, tenant: TenantId, id: Uuid) -> BoxFuture<'_, Result<ExportFile, Problem>>;
    /// Deletes a finished export's archive now, ending every link to it (`409` while it runs).
    fn discard(&self, tenant: TenantId, id: Uuid) -> BoxFuture<'_, Result<ExportStatus, Problem>>;
}

pub type Exports = Arc<dyn TenantExports>;

/// `410`: the export's archive was deleted (expired or discarded); its links end with it.
pub fn archive_gone() -> Problem {
    Problem::new(
        axum::http::StatusCode::GONE,
        crate::http::ErrorCode::LinkExpired,
        "The export has expired",
    )
    .detail("Its archive was deleted; ask for a new export")
}

/// A file as a streamed download (64 KiB reads; bounded memory whatever its size).
pub fn attachment(f: ExportFile) -> Response {
    let body = futures_util::stream::unfold(f.file, |mut f| async move {
        let mut buf = vec![0u8; 64 * 1024];
        match f.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok::<_, std::io::Error>(bytes::Bytes::from(buf)), f))
            }
            Err(e) => Some((Err(e), f)),
        }
    });
    let mut response = Response::new(Body::from_stream(body));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if let Some(len) = f.len
        && let Ok(h) = HeaderValue::from_str(&len.to_string())
    {
        headers.insert(header::CONTENT_LENGTH, h);
    }
    if let Ok(h) = HeaderValue::from_str(&format!("attachment; filename=\"{}\"", f.name)) {
        headers.insert(header::CONTENT_DISPOSITION, h);
    }
    response
}
