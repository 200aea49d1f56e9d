//! Tenant deletion through the operator API: one operator requests, another approves (or
//! anyone rejects), any operator restores during the grace period; the purge itself runs in
//! `portico serve` (or `portico tenant purge-due`). Every call is audited like the others.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use portico_http::{ApiJson, Problem};
use serde::Deserialize;
use uuid::Uuid;

use super::{Operator, OperatorApi, slug};
use crate::deletion::{self, DeletionRequest};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DeletionBody {
    reason: String,
    grace_days: Option<u32>,
    override_retention: Option<String>,
    /// An age recipient: export the tenant to it before the purge.
    export_first: Option<String>,
}

/// `POST /operator/v1/tenants/{slug}/deletion`: 202 with the approval another operator must
/// give.
pub(super) async fn request_deletion(
    State(api): State<OperatorApi>,
    op: Operator,
    Path(s): Path<String>,
    ApiJson(body): ApiJson<DeletionBody>,
) -> Result<Response, Problem> {
    let result = async {
        let req = DeletionRequest {
            reason: body.reason,
            grace_days: body.grace_days,
            override_retention: body.override_retention,
            export_first: body.export_first,
        };
        Ok(Box::pin(deletion::request(
            &api.platform,
            &op.identity,
            &slug(&s)?,
            req,
        ))
        .await?)
    }
    .await;
    let detail = result
        .as_ref()
        .ok()
        .map(|a| serde_json::json!({"approval_id": a.id, "request": a.request}));
    let a = op
        .record(&api, "tenant.delete_request", Some(&s), result, detail)
        .await?;
    let location = format!("/operator/v1/approvals/{}", a.id);
    let mut response = (StatusCode::ACCEPTED, Json(&a)).into_response();
    if let Ok(v) = axum::http::HeaderValue::from_str(&location) {
        response
            .headers_mut()
            .insert(axum::http::header::LOCATION, v);
    }
    Ok(response)
}

#[derive(Deserialize)]
pub(super) struct ListQuery {
    #[serde(default)]
    all: bool,
}

/// `GET /operator/v1/approvals[?all=true]`: pending requests (all with `all`).
pub(super) async fn list_approvals(
    State(api): State<OperatorApi>,
    op: Operator,
    Query(q): Query<ListQuery>,
) -> Result<Response, Problem> {
    let result = deletion::approvals(&api.platform, q.all)
        .await
        .map_err(Problem::from);
    let all = op.record(&api, "approval.list", None, result, None).await?;
    Ok(Json(all).into_response())
}

fn approval_id(s: &str) -> Result<Uuid, Problem> {
    Uuid::parse_str(s).map_err(|_| Problem::invalid_input(format!("'{s}' is not an approval id")))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct DecisionBody {
    note: Option<String>,
}

/// The optional JSON body of a decision (`{"note": …}`); an empty body has no note.
fn decision_note(body: &[u8]) -> Result<Option<String>, Problem> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let b: DecisionBody = serde_json::from_slice(body)
        .map_err(|e| Problem::invalid_input(format!("invalid JSON body: {e}")))?;
    Ok(b.note)
}

/// `POST /operator/v1/approvals/{id}/approve`: by an operator other than the requester; the
/// tenant goes `deleting` at once.
pub(super) async fn approve(
    State(api): State<OperatorApi>,
    op: Operator,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, Problem> {
    let result = async {
        let note = decision_note(&body)?;
        Ok(Box::pin(deletion::approve(
            &api.platform,
            &op.identity,
            approval_id(&id)?,
            note.as_deref(),
        ))
        .await?)
    }
    .await;
    let detail = result
        .as_ref()
        .ok()
        .map(|d| serde_json::json!({"tenant": d.slug, "grace_until": d.grace_until.to_string()}));
    let d = op
        .record(&api, "approval.approve", Some(&id), result, detail)
        .await?;
    Ok(Json(d).into_response())
}

/// `POST /operator/v1/approvals/{id}/reject`.
pub(super) async fn reject(
    State(api): State<OperatorApi>,
    op: Operator,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, Problem> {
    let result = async {
        let note = decision_note(&body)?;
        Ok(deletion::reject(
            &api.platform,
            &op.identity,
            approval_id(&id)?,
            note.as_deref(),
        )
        .await?)
    }
    .await;
    let a = op
        .record(&api, "approval.reject", Some(&id), result, None)
        .await?;
    Ok(Json(a).into_response())
}

/// `POST /operator/v1/tenants/{slug}/restore`: during the grace period.
pub(super) async fn restore(
    State(api): State<OperatorApi>,
    op: Operator,
    Path(s): Path<String>,
) -> Result<Response, Problem> {
    let result =
        async { Ok(Box::pin(deletion::restore(&api.platform, slug(&s)?.as_str())).await?) }.await;
    let d = op
        .record(&api, "tenant.restore", Some(&s), result, None)
        .await?;
    Ok(Json(d).into_response())
}

/// `GET /operator/v1/tenants/{slug}/deletion`: the deletion record (and its certificate once
/// purged).
pub(super) async fn show_deletion(
    State(api): State<OperatorApi>,
    op: Operator,
    Path(s): Path<String>,
) -> Result<Response, Problem> {
    let result = async {
        let d = deletion::deletion_of(&api.platform, slug(&s)?.as_str())
            .await?
            .ok_or_else(|| {
                Problem::new(
                    StatusCode::NOT_FOUND,
                    portico_http::ErrorCode::NotFound,
                    "This tenant has no deletion",
                )
            })?;
        let mut v = serde_json::to_value(&d)
            .map_err(|e| Problem::from(crate::PlatformError::InvalidState(e.to_string())))?;
        v["certificate"] = d.certificate.clone().unwrap_or(serde_json::Value::Null);
        Ok(v)
    }
    .await;
    let v = op
        .record(&api, "tenant.deletion_show", Some(&s), result, None)
        .await?;
    Ok(Json(v).into_response())
}
