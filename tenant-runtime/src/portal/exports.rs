//! Self-service exports of the whole organisation (`data.export`): ask for one (four-eyes by
//! default, policy action `export_tenant_data`), follow it, and fetch the archive through a
//! time-limited link. The control plane makes the archive, the same signed, verifiable format
//! as an operator's export ([`crate::exports`]); it is kept for the platform's
//! `export_retention` and then deleted. Links are MACs under the tenant's link secret, bound to
//! the tenant, the export and an expiry; they work on the tenant's own host only.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use portico_core::TenantId;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use time::OffsetDateTime;
use utoipa::ToSchema;
use uuid::Uuid;

use super::change::{self, Applied, Change};
use super::dto::PendingApprovalDto;
use super::links::{link_key, open_link, seal_link};
use super::path_id;
use crate::caller::Authenticated;
use crate::catalog::TenantRoute;
use crate::exports::ExportStatus;
use crate::http::{ApiJson, ErrorCode, Problem};
use crate::state::Runtime;
use crate::store::audit::{self, EventType};
use crate::store::roles::Permission;

const EXPORT_LINK: &[u8] = b"portico-export-link-v1|";
const LINK_PREFIX: &str = "pxl_";
const LINK_DEFAULT_S: i64 = 3_600;
const LINK_MAX_S: i64 = 7 * 86_400;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExportRequest {
    /// The age X25519 recipient (`age1…`) the archive is encrypted to.
    pub recipient: Option<String>,
    /// `true` for an unencrypted archive (must be said; excludes `recipient`).
    #[serde(default)]
    pub plaintext: bool,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExportLinkRequest {
    /// Lifetime in seconds (60 to 604,800; default 3,600), never past the archive's expiry.
    pub expires_in_s: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ExportLinkDto {
    pub export_id: Uuid,
    /// Anyone holding it can download the archive until it expires.
    pub url: String,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

/// `POST /api/v1/exports`.
#[utoipa::path(post, path = "/api/v1/exports", tag = "exports", request_body = ExportRequest,
    responses((status = 201, description = "started", body = ExportStatus),
        (status = 202, description = "waiting for a second person's approval", body = PendingApprovalDto)),
    security(("bearer" = [])))]
pub async fn request(
    State(rt): State<Runtime>,
    mut auth: Authenticated,
    ApiJson(req): ApiJson<ExportRequest>,
) -> Result<Response, Problem> {
    auth.require(Permission::DataExport).await?;
    let exports = rt.exports()?;
    let recipient = match (req.recipient, req.plaintext) {
        (Some(_), true) => {
            return Err(Problem::fields(vec![(
                "plaintext".into(),
                "give either recipient or plaintext: true, not both".into(),
            )]));
        }
        (None, false) => {
            return Err(Problem::fields(vec![(
                "recipient".into(),
                "an export is encrypted: give recipient (age1…), or say plaintext: true".into(),
            )]));
        }
        (Some(r), false) => {
            let r = r.trim().to_owned();
            exports
                .check_recipient(&r)
                .map_err(|why| Problem::fields(vec![("recipient".into(), why)]))?;
            Some(r)
        }
        (None, true) => None,
    };
    let change = Change::ExportTenantData { recipient };
    if change.needs_approval(&auth).await? {
        return super::access::pending(&auth, &change).await;
    }
    let Applied::Export(started) = change::apply(&rt, &mut auth, &change, None).await? else {
        return Err(Problem::internal());
    };
    let location = format!("/api/v1/exports/{}", started.id);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(started),
    )
        .into_response())
}

/// `GET /api/v1/exports`: the organisation's self-service exports, newest first.
#[utoipa::path(get, path = "/api/v1/exports", tag = "exports",
    responses((status = 200, body = [ExportStatus])), security(("bearer" = [])))]
pub async fn list(
    State(rt): State<Runtime>,
    auth: Authenticated,
) -> Result<Json<Vec<ExportStatus>>, Problem> {
    auth.require(Permission::DataExport).await?;
    Ok(Json(rt.exports()?.list(auth.tenant.tenant_id).await?))
}

async fn visible(rt: &Runtime, auth: &Authenticated, id: &str) -> Result<ExportStatus, Problem> {
    auth.require(Permission::DataExport).await?;
    let id: Uuid = path_id(id)?;
    rt.exports()?
        .show(auth.tenant.tenant_id, id)
        .await?
        .ok_or_else(Problem::not_found)
}

/// `GET /api/v1/exports/{id}`.
#[utoipa::path(get, path = "/api/v1/exports/{id}", tag = "exports", params(("id" = Uuid, Path)),
    responses((status = 200, body = ExportStatus)), security(("bearer" = [])))]
pub async fn show(
    State(rt): State<Runtime>,
    auth: Authenticated,
    Path(id): Path<String>,
) -> Result<Json<ExportStatus>, Problem> {
    Ok(Json(visible(&rt, &auth, &id).await?))
}

/// `DELETE /api/v1/exports/{id}`: deletes the archive now, ending every link to it (a link
/// cannot be revoked on its own: it is a MAC, not a row).
#[utoipa::path(delete, path = "/api/v1/exports/{id}", tag = "exports", params(("id" = Uuid, Path)),
    responses((status = 200, body = ExportStatus), (status = 409, description = "still running")),
    security(("bearer" = [])))]
pub async fn discard(
    State(rt): State<Runtime>,
    auth: Authenticated,
    Path(id): Path<String>,
) -> Result<Json<ExportStatus>, Problem> {
    let e = visible(&rt, &auth, &id).await?;
    let done = rt.exports()?.discard(auth.tenant.tenant_id, e.id).await?;
    auth.record(
        EventType::ExportDiscarded,
        &e.id.to_string(),
        serde_json::json!({}),
    )
    .await?;
    Ok(Json(done))
}

/// `POST /api/v1/exports/{id}/links`: a download link for a finished export.
#[utoipa::path(post, path = "/api/v1/exports/{id}/links", tag = "exports", params(("id" = Uuid, Path)),
    request_body = ExportLinkRequest,
    responses((status = 201, body = ExportLinkDto), (status = 409, description = "not finished"),
        (status = 410, description = "expired")),
    security(("bearer" = [])))]
pub async fn create_link(
    State(rt): State<Runtime>,
    headers: HeaderMap,
    auth: Authenticated,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<ExportLinkRequest>,
) -> Result<(StatusCode, Json<ExportLinkDto>), Problem> {
    let e = visible(&rt, &auth, &id).await?;
    let ttl = req.expires_in_s.unwrap_or(LINK_DEFAULT_S);
    if !(60..=LINK_MAX_S).contains(&ttl) {
        return Err(Problem::fields(vec![(
            "expires_in_s".into(),
            format!("between 60 and {LINK_MAX_S}"),
        )]));
    }
    match e.status.as_str() {
        "succeeded" => {}
        "expired" => return Err(crate::exports::archive_gone()),
        other => {
            return Err(Problem::new(
                StatusCode::CONFLICT,
                ErrorCode::InvalidState,
                "The export is not finished",
            )
            .detail(format!("export {} is {other}", e.id)));
        }
    }
    let mut expires = OffsetDateTime::now_utc() + time::Duration::seconds(ttl);
    if let Some(end) = e.expires_at {
        expires = expires.min(end);
    }
    let secret = link_key(&rt, &auth.conn).await?;
    let token = sign(
        &secret,
        auth.tenant.tenant_id,
        e.id,
        expires.unix_timestamp(),
    );
    let host = crate::tenancy::request_host(&headers)?;
    auth.record(
        EventType::ExportLinkCreated,
        &e.id.to_string(),
        serde_json::json!({"expires_at": expires.unix_timestamp()}),
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(ExportLinkDto {
            export_id: e.id,
            url: format!("{}/x/{token}", rt.identity.origin(&host)),
            expires_at: expires.replace_nanosecond(0).unwrap_or(expires),
        }),
    ))
}

fn sign(secret: &[u8; 32], tenant: TenantId, export: Uuid, expires: i64) -> String {
    let mut payload = export.as_bytes().to_vec();
    payload.extend_from_slice(&expires.to_be_bytes());
    seal_link(secret, EXPORT_LINK, LINK_PREFIX, tenant, payload)
}

/// (export, expiry) of a token whose MAC checks out for this tenant.
fn verify(secret: &[u8; 32], tenant: TenantId, token: &str) -> Option<(Uuid, i64)> {
    let payload = open_link(secret, EXPORT_LINK, LINK_PREFIX, tenant, token, 24)?;
    let export = Uuid::from_slice(&payload[..16]).ok()?;
    let expires = i64::from_be_bytes(payload[16..24].try_into().ok()?);
    Some((export, expires))
}

/// `GET /x/{token}`: the archive through a link, on its own tenant's host only. Every use is
/// audited; refusals past the first few per address and minute are counted and summarised.
#[utoipa::path(get, path = "/x/{token}", tag = "exports", params(("token" = String, Path)),
    responses((status = 200, description = "the archive"), (status = 404, description = "link_invalid"),
        (status = 410, description = "link_expired")))]
pub async fn download(
    State(rt): State<Runtime>,
    tenant: Option<axum::Extension<Arc<TenantRoute>>>,
    ip: Option<axum::Extension<crate::http::ClientIp>>,
    Path(token): Path<String>,
) -> Result<Response, Problem> {
    let tenant = tenant.map(|t| t.0).ok_or_else(Problem::not_found)?;
    let conn = rt.pools.get(&tenant).await?;
    let ip = ip.map(|i| i.0.0);
    let request_id = crate::http::RequestId::current().map(|r| r.0);
    let record = |export: Option<Uuid>, reason: Option<&'static str>| {
        let (rt, tenant, conn, request_id) = (&rt, &tenant, &conn, request_id.clone());
        async move {
            let full = reason.is_none()
                || rt
                    .failures
                    .note(
                        tenant,
                        ip,
                        EventType::ExportDownloaded,
                        reason.unwrap_or("refused"),
                        OffsetDateTime::now_utc(),
                    )
                    .await;
            if !full {
                return Ok::<_, Problem>(());
            }
            let actor = export.map_or_else(|| "link:unknown".to_owned(), |e| format!("link:{e}"));
            let mut e = audit::Event::new(EventType::ExportDownloaded, &actor, reason.is_none());
            e.client_ip = ip;
            e.request_id = request_id.as_deref();
            e.reason = reason;
            let target = export.map(|x| x.to_string());
            e.target = target.as_deref();
            audit::record(conn, &e).await?;
            Ok(())
        }
    };
    let invalid = || {
        Problem::new(
            StatusCode::NOT_FOUND,
            ErrorCode::LinkInvalid,
            "This link is not valid here",
        )
    };
    let secret = link_key(&rt, &conn).await?;
    let Some((export, expires)) = verify(&secret, tenant.tenant_id, &token) else {
        record(None, Some("link_invalid")).await?;
        return Err(invalid());
    };
    if expires <= OffsetDateTime::now_utc().unix_timestamp() {
        record(Some(export), Some("link_expired")).await?;
        return Err(Problem::new(
            StatusCode::GONE,
            ErrorCode::LinkExpired,
            "This link has expired",
        ));
    }
    let file = match rt.exports()?.open(tenant.tenant_id, export).await {
        Ok(f) => f,
        Err(p) => {
            record(Some(export), Some("export_unavailable")).await?;
            return Err(p);
        }
    };
    record(Some(export), None).await?;
    Ok(crate::exports::attachment(file))
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    #[test]
    fn a_link_is_bound_to_its_tenant_export_expiry_and_kind() {
        let secret = [7u8; 32];
        let (acme, globex) = (TenantId::random(), TenantId::random());
        let export = Uuid::new_v4();
        let token = sign(&secret, acme, export, 1_800_000_000);
        assert_eq!(verify(&secret, acme, &token), Some((export, 1_800_000_000)));
        assert_eq!(verify(&secret, globex, &token), None);
        assert_eq!(verify(&[8u8; 32], acme, &token), None);
        // A later expiry written into the token breaks its MAC.
        let mut raw = URL_SAFE_NO_PAD
            .decode(token.strip_prefix(LINK_PREFIX).expect("prefix"))
            .expect("base64");
        raw[23] ^= 1;
        let stretched = format!("{LINK_PREFIX}{}", URL_SAFE_NO_PAD.encode(&raw));
        assert_eq!(verify(&secret, acme, &stretched), None);
        // A MAC made for a document link does not make an export link.
        let mut payload = export.as_bytes().to_vec();
        payload.extend_from_slice(&1_800_000_000_i64.to_be_bytes());
        let other = seal_link(&secret, b"portico-link-v1|", LINK_PREFIX, acme, payload);
        assert_eq!(verify(&secret, acme, &other), None);
        assert_eq!(verify(&secret, acme, "pdl_AAAA"), None);
    }
}
