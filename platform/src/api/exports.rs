//! Tenant exports through the operator API: ask (202 with the export's URLs), poll its
//! progress, download the archive when it is done. Every call is audited.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use portico_http::{ApiJson, ErrorCode, Problem};
use serde::Deserialize;
use uuid::Uuid;

use super::{Operator, OperatorApi, accepted, slug};
use crate::exports;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ExportBody {
    /// The age X25519 recipient (`age1…`) the archive is encrypted to.
    recipient: Option<String>,
    /// `true` to write the archive unencrypted (must be said; excludes `recipient`).
    #[serde(default)]
    plaintext: bool,
}

/// `POST /operator/v1/tenants/{slug}/exports`.
pub(super) async fn start(
    State(api): State<OperatorApi>,
    op: Operator,
    Path(s): Path<String>,
    ApiJson(body): ApiJson<ExportBody>,
) -> Result<Response, Problem> {
    let result = async {
        let slug = slug(&s)?;
        match (&body.recipient, body.plaintext) {
            (Some(_), true) => {
                return Err(Problem::invalid_input(
                    "give either recipient or plaintext: true, not both",
                ));
            }
            (None, false) => {
                return Err(Problem::invalid_input(
                    "an export is encrypted: give recipient (age1…), or say plaintext: true",
                ));
            }
            _ => {}
        }
        Ok(exports::start(
            &api.platform,
            &op.identity.name,
            slug.as_str(),
            body.recipient.as_deref(),
            true,
        )
        .await?)
    }
    .await;
    let detail = result
        .as_ref()
        .ok()
        .map(|v| serde_json::json!({"export_id": v.id, "encrypted": v.recipient.is_some()}));
    let v = op
        .record(&api, "tenant.export", Some(&s), result, detail)
        .await?;
    exports::spawn(api.platform.clone(), v.id);
    let status_url = format!("/operator/v1/exports/{}", v.id);
    Ok(accepted(
        serde_json::json!({
            "export_id": v.id,
            "slug": v.slug,
            "status": v.status,
            "status_url": status_url,
            "download_url": format!("{status_url}/download"),
        }),
        &status_url,
    ))
}

fn export_id(s: &str) -> Result<Uuid, Problem> {
    Uuid::parse_str(s).map_err(|_| Problem::invalid_input(format!("'{s}' is not an export id")))
}

fn no_such_export() -> Problem {
    Problem::new(StatusCode::NOT_FOUND, ErrorCode::NotFound, "No such export")
}

/// `GET /operator/v1/exports/{id}`.
pub(super) async fn show(
    State(api): State<OperatorApi>,
    op: Operator,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let result = async {
        exports::show(&api.platform, export_id(&id)?)
            .await?
            .ok_or_else(no_such_export)
    }
    .await;
    let v = op
        .record(&api, "export.show", Some(&id), result, None)
        .await?;
    Ok(Json(v).into_response())
}

/// `GET /operator/v1/exports/{id}/download`: the archive, once the export has succeeded.
pub(super) async fn download(
    State(api): State<OperatorApi>,
    op: Operator,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let result = async {
        let v = exports::show(&api.platform, export_id(&id)?)
            .await?
            .ok_or_else(no_such_export)?;
        if v.status == "expired" {
            return Err(Problem::new(
                StatusCode::GONE,
                ErrorCode::NotFound,
                "The export has expired",
            )
            .detail(format!(
                "export {}'s archive was deleted when it expired",
                v.id
            )));
        }
        if v.status != "succeeded" {
            return Err(Problem::new(
                StatusCode::CONFLICT,
                ErrorCode::InvalidState,
                "The export is not finished",
            )
            .detail(format!("export {} is {}", v.id, v.status)));
        }
        let path = exports::path(&api.platform, &v);
        let file = tokio::fs::File::open(&path).await.map_err(|e| {
            tracing::error!(export = %v.id, error = %e, "an export's archive is missing");
            Problem::new(StatusCode::GONE, ErrorCode::NotFound, "The archive is gone")
        })?;
        let len = file.metadata().await.map(|m| m.len()).ok();
        Ok((v, file, len))
    }
    .await;
    let (v, file, len) = op
        .record(&api, "export.download", Some(&id), result, None)
        .await?;
    Ok(portico_tenant_runtime::exports::attachment(
        portico_tenant_runtime::exports::ExportFile {
            file,
            len,
            name: v.file_name,
        },
    ))
}
