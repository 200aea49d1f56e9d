//! Documents: streamed, scanned, encrypted uploads; listing with filters and cursors;
//! downloads with `Range`; new versions; time-limited links.
//!
//! A link is `https://<tenant-host>/d/pdl_<token>`, the token being base64url of
//! `link id ‖ version id ‖ expiry ‖ HMAC-SHA256`, keyed with a secret of the tenant (kept
//! encrypted under the tenant's key) over those fields *and the tenant id*. On another tenant's
//! host the MAC is checked with that tenant's secret and id, so it fails. A link is also a row
//! (revocable, counted); every use is audited.

use crate::http::ErrorCode;
use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use futures_util::StreamExt;
use portico_core::TenantId;
use portico_core::keys::TenantKeyRef;
use portico_core::storage::ObjectKey;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::ids::{DocumentId, VersionId};
use crate::pools::TenantConn;

use super::dto::*;
use super::links::{link_key, open_link, seal_link};
use super::{ApiQuery, decode_cursor, encode_cursor, page_size, path_id};
use crate::caller::Authenticated;
use crate::catalog::TenantRoute;
use crate::content::cipher::{ObjectCipher, SEGMENT};
use crate::content::{self, ContentError, Segments};
use crate::error::RuntimeError;
use crate::http::{ApiJson, Problem};
use crate::state::Runtime;
use crate::store::audit::{self, EventType};
use crate::store::documents::{
    self, DOC_STATUSES, DOC_TYPES, Document, NewDocument, NewVersion, Version,
};
use crate::store::roles::Permission;

const LINK_PREFIX: &str = "pdl_";
const LINK_DEFAULT_S: i64 = 86_400;
const LINK_MAX_S: i64 = 30 * 86_400;

/// A document the caller may read (else 404, whether it exists or not).
async fn visible(auth: &Authenticated, id: &str) -> Result<Document, Problem> {
    auth.require(Permission::DocumentsRead).await?;
    let doc = documents::get(&auth.conn, path_id(id)?)
        .await?
        .ok_or_else(Problem::not_found)?;
    if !auth.caller.sees_site(doc.site.as_deref()) {
        return Err(Problem::not_found());
    }
    Ok(doc)
}

fn media_type(headers: &HeaderMap) -> Result<String, Problem> {
    let Some(v) = headers.get(header::CONTENT_TYPE) else {
        return Ok("application/octet-stream".into());
    };
    let v = v.to_str().unwrap_or("").trim();
    let essence = v
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let ok = essence.len() <= 100
        && essence.split_once('/').is_some_and(|(a, b)| {
            !a.is_empty()
                && !b.is_empty()
                && (a.bytes().chain(b.bytes()))
                    .all(|c| c.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&c))
        });
    if ok {
        Ok(essence)
    } else {
        Err(Problem::fields(vec![(
            "Content-Type".into(),
            "is not a media type".into(),
        )]))
    }
}

fn file_name(v: Option<&str>, errors: &mut Vec<(String, String)>) -> String {
    let name = v.unwrap_or("document").trim();
    if name.is_empty()
        || name.chars().count() > 255
        || name
            .chars()
            .any(|c| c.is_control() || c == '/' || c == '\\')
    {
        errors.push((
            "file_name".into(),
            "1 to 255 characters, no slashes or control characters".into(),
        ));
    }
    name.to_owned()
}

async fn audit_rejection(
    auth: &Authenticated,
    reason: &str,
    details: serde_json::Value,
) -> Result<(), Problem> {
    auth.audit(
        EventType::UploadRejected,
        None,
        false,
        Some(reason),
        details,
    )
    .await
}

/// Streams the request body into storage as a new version of `doc`; returns its record.
///
/// The caller's tenant connection goes back to the pool while the file streams, and a fresh
/// one is taken for what follows (returned with the version): an upload may take minutes,
/// and a handful of them must not hold every connection of the tenant's pool.
async fn store_body(
    rt: &Runtime,
    auth: Authenticated,
    headers: &HeaderMap,
    doc: DocumentId,
    name: String,
    valid_until: Option<OffsetDateTime>,
    body: Body,
) -> Result<(Authenticated, NewVersion, bool), Problem> {
    let media = media_type(headers)?;
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && len > rt.content.max_upload
    {
        return Err(too_large(rt.content.max_upload));
    }
    let tenant = auth.tenant.tenant_id;
    let key = auth.key_ref()?;
    // Fail closed: no scanner, no upload.
    let scan = match rt.content.scanner.start().await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "malware scanner unavailable; upload refused");
            audit_rejection(
                &auth,
                "scanner_unavailable",
                serde_json::json!({"file_name": name}),
            )
            .await?;
            return Err(scanner_unavailable());
        }
    };
    let dk = rt
        .content
        .keys
        .for_new_content(tenant, &key)
        .await
        .map_err(RuntimeError::from)?;
    let version = VersionId::random();
    let salt = portico_core::keys::random_bytes::<32>();
    let cipher = ObjectCipher::new(&dk.plaintext, &salt, tenant, version.as_uuid());
    let object = ObjectKey::tenant_object(tenant, &format!("documents/{doc}/{version}"))
        .map_err(|_| Problem::internal())?;
    let stream = body.into_data_stream();
    let Authenticated {
        tenant: route,
        caller,
        conn,
        ip,
    } = auth;
    drop(conn);
    let stored = content::store(
        &rt.content.store,
        &object,
        Some(cipher),
        scan,
        stream,
        rt.content.max_upload,
    )
    .await;
    let conn = match rt.pools.get(&route).await {
        Ok(c) => c,
        Err(e) => {
            // Nothing may point at the object now: it goes.
            if stored.is_ok() {
                let _ = rt.content.store.delete(&object).await;
            }
            return Err(e.into());
        }
    };
    let auth = Authenticated {
        tenant: route,
        caller,
        conn,
        ip,
    };
    let stored = match stored {
        Ok(s) => s,
        Err(ContentError::Infected(signature)) => {
            audit_rejection(
                &auth,
                "infected",
                serde_json::json!({"file_name": name, "signature": signature}),
            )
            .await?;
            return Err(Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                ErrorCode::UploadInfected,
                "The malware scanner rejected this file",
            )
            .detail(format!("Detected: {signature}")));
        }
        Err(ContentError::Scan(e)) => {
            tracing::error!(error = %e, "malware scan failed; upload refused");
            audit_rejection(
                &auth,
                "scanner_failed",
                serde_json::json!({"file_name": name}),
            )
            .await?;
            return Err(scanner_unavailable());
        }
        Err(ContentError::TooLarge(max)) => return Err(too_large(max)),
        Err(ContentError::Body(m)) => {
            return Err(Problem::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::UploadInterrupted,
                "The upload did not complete",
            )
            .detail(m));
        }
        Err(e) => {
            tracing::error!(error = %e, "storing document content failed");
            return Err(Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::StorageUnavailable,
                "Document storage is unavailable; retry shortly",
            )
            .retry_after(5));
        }
    };
    let released_by = Some(auth.caller.name());
    let version = NewVersion {
        id: version,
        file_name: name,
        media_type: media,
        size: i64::try_from(stored.size).unwrap_or(i64::MAX),
        sha256: stored.sha256,
        object_key: object.as_str().to_owned(),
        data_key_wrapped: dk.wrapped.clone(),
        data_key_ref: key.as_str().to_owned(),
        nonce: salt.to_vec(),
        segment_size: SEGMENT as i32,
        valid_until,
        released_by,
    };
    Ok((auth, version, stored.scanned))
}

fn too_large(max: u64) -> Problem {
    Problem::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::PayloadTooLarge,
        "The file is too large",
    )
    .detail(format!("The limit is {max} bytes"))
}

fn scanner_unavailable() -> Problem {
    Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::ScannerUnavailable,
        "Uploads are paused: the malware scanner is unavailable",
    )
    .retry_after(30)
}

#[utoipa::path(post, path = "/api/v1/documents", tag = "documents", params(UploadQuery),
    request_body(content = Vec<u8>, content_type = "application/octet-stream",
        description = "The file itself; its media type in Content-Type"),
    responses((status = 201, body = DocumentDto), (status = 422, description = "invalid metadata or upload_infected"),
        (status = 503, description = "scanner_unavailable")),
    security(("bearer" = [])))]
pub async fn upload(
    State(rt): State<Runtime>,
    headers: HeaderMap,
    auth: Authenticated,
    ApiQuery(q): ApiQuery<UploadQuery>,
    body: Body,
) -> Result<(StatusCode, Json<DocumentDto>), Problem> {
    auth.require(Permission::DocumentsUpload).await?;
    let mut errors = Vec::new();
    let doc_type = q.doc_type.clone().unwrap_or_default();
    if !DOC_TYPES.contains(&doc_type.as_str()) {
        errors.push(("type".into(), format!("one of {}", DOC_TYPES.join(", "))));
    }
    let title = q.title.clone().unwrap_or_default().trim().to_owned();
    if title.is_empty() || title.chars().count() > 300 {
        errors.push(("title".into(), "1 to 300 characters".into()));
    }
    let status = q.status.clone().unwrap_or_else(|| "released".into());
    if !DOC_STATUSES.contains(&status.as_str()) {
        errors.push((
            "status".into(),
            format!("one of {}", DOC_STATUSES.join(", ")),
        ));
    }
    if let Some(p) = &q.period
        && !valid_period(p)
    {
        errors.push(("period".into(), "YYYY, YYYY-MM or YYYY-Qn".into()));
    }
    let retention_until = match q.retention_until.as_deref() {
        None => None,
        Some(d) => match parse_date(d) {
            Some(d) => Some(d),
            None => {
                errors.push(("retention_until".into(), "YYYY-MM-DD".into()));
                None
            }
        },
    };
    let valid_until = timestamp("valid_until", q.valid_until.as_deref(), &mut errors);
    let name = file_name(q.file_name.as_deref(), &mut errors);
    if !errors.is_empty() {
        return Err(Problem::fields(errors));
    }
    super::check_site(&auth, q.site.as_deref()).await?;
    let id = DocumentId::random();
    let (mut auth, version, scanned) =
        store_body(&rt, auth, &headers, id, name, valid_until, body).await?;
    let meta = NewDocument {
        doc_type,
        title,
        period: q.period.clone(),
        site: q.site.clone(),
        status,
        retention_until,
    };
    let actor = auth.caller.name();
    let doc = documents::create(&mut auth.conn, id, &meta, &version, &actor).await?;
    auth.record(
        EventType::DocumentUploaded,
        &id.to_string(),
        serde_json::json!({"version": version.id, "size": version.size, "type": meta.doc_type, "scanned": scanned}),
    )
    .await?;
    Ok((StatusCode::CREATED, Json(doc.into())))
}

fn parse_date(s: &str) -> Option<time::Date> {
    let mut it = s.splitn(3, '-');
    let (y, m, d) = (it.next()?, it.next()?, it.next()?);
    if y.len() != 4 || m.len() != 2 || d.len() != 2 {
        return None;
    }
    let month = time::Month::try_from(m.parse::<u8>().ok()?).ok()?;
    time::Date::from_calendar_date(y.parse().ok()?, month, d.parse().ok()?).ok()
}

fn valid_period(p: &str) -> bool {
    let b = p.as_bytes();
    let year = |s: &[u8]| s.len() == 4 && s.iter().all(u8::is_ascii_digit);
    match b.len() {
        4 => year(b),
        7 => {
            year(&b[..4])
                && b[4] == b'-'
                && ((b[5] == b'Q' && (b'1'..=b'4').contains(&b[6]))
                    || (matches!(&b[5..], [b'0', b'1'..=b'9'] | [b'1', b'0'..=b'2'])))
        }
        _ => false,
    }
}

#[utoipa::path(post, path = "/api/v1/documents/{id}/versions", tag = "documents",
    params(("id" = Uuid, Path), UploadQuery),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 201, body = VersionDto)), security(("bearer" = [])))]
pub async fn new_version(
    State(rt): State<Runtime>,
    headers: HeaderMap,
    auth: Authenticated,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<UploadQuery>,
    body: Body,
) -> Result<(StatusCode, Json<VersionDto>), Problem> {
    let doc = visible(&auth, &id).await?;
    auth.require(Permission::DocumentsManage).await?;
    if doc.legal_hold.is_some() {
        return Err(legal_hold_active());
    }
    let mut errors = Vec::new();
    if q.doc_type.is_some()
        || q.title.is_some()
        || q.period.is_some()
        || q.site.is_some()
        || q.status.is_some()
    {
        errors.push((
            "query".into(),
            "a new version takes only file_name and valid_until".into(),
        ));
    }
    let valid_until = timestamp("valid_until", q.valid_until.as_deref(), &mut errors);
    let name = file_name(q.file_name.as_deref(), &mut errors);
    if !errors.is_empty() {
        return Err(Problem::fields(errors));
    }
    let (mut auth, v, scanned) =
        store_body(&rt, auth, &headers, doc.id, name, valid_until, body).await?;
    let version = match documents::add_version(&mut auth.conn, doc.id, &v).await {
        Err(RuntimeError::Conflict(m)) if m == documents::LEGAL_HOLD_ACTIVE => {
            // Held while the content was uploading: its object goes.
            let _ = rt
                .content
                .store
                .delete(&ObjectKey::parse(&v.object_key).map_err(|_| Problem::internal())?)
                .await;
            return Err(legal_hold_active());
        }
        other => other?,
    };
    auth.record(
        EventType::DocumentVersionCreated,
        &doc.id.to_string(),
        serde_json::json!({"version": version.id, "number": version.version, "size": version.size, "scanned": scanned}),
    )
    .await?;
    Ok((StatusCode::CREATED, Json(version.into())))
}

#[utoipa::path(get, path = "/api/v1/documents", tag = "documents", params(DocumentQuery),
    responses((status = 200, body = DocumentPage)), security(("bearer" = [])))]
pub async fn list(
    auth: Authenticated,
    ApiQuery(q): ApiQuery<DocumentQuery>,
) -> Result<Json<DocumentPage>, Problem> {
    auth.require(Permission::DocumentsRead).await?;
    let limit = page_size(q.limit)?;
    let mut errors = Vec::new();
    let valid_at = timestamp("valid_at", q.valid_at.as_deref(), &mut errors);
    if let Some(t) = &q.doc_type
        && !DOC_TYPES.contains(&t.as_str())
    {
        errors.push(("type".into(), format!("one of {}", DOC_TYPES.join(", "))));
    }
    let after = match &q.cursor {
        None => None,
        Some(c) => {
            let text = decode_cursor(c)?;
            let parsed = text.split_once('|').and_then(|(ts, id)| {
                let ts = ts.parse::<i128>().ok()?;
                Some((
                    OffsetDateTime::from_unix_timestamp_nanos(ts).ok()?,
                    DocumentId::parse(id)?,
                ))
            });
            match parsed {
                Some(p) => Some(p),
                None => {
                    errors.push(("cursor".into(), "is not a cursor of this list".into()));
                    None
                }
            }
        }
    };
    if !errors.is_empty() {
        return Err(Problem::fields(errors));
    }
    let filter = documents::Filter {
        doc_type: q.doc_type,
        period: q.period,
        site: q.site,
        status: q.status,
        valid_at,
        scope: auth.caller.sites.clone(),
        after,
    };
    let items = documents::list(&auth.conn, &filter, limit + 1).await?;
    let more = items.len() as i64 > limit;
    let items: Vec<Document> = items.into_iter().take(limit as usize).collect();
    let next_cursor = if more {
        items
            .last()
            .map(|d| encode_cursor(&format!("{}|{}", d.created_at.unix_timestamp_nanos(), d.id)))
    } else {
        None
    };
    Ok(Json(DocumentPage {
        items: items.into_iter().map(Into::into).collect(),
        next_cursor,
    }))
}

#[utoipa::path(get, path = "/api/v1/documents/{id}", tag = "documents", params(("id" = Uuid, Path)),
    responses((status = 200, body = DocumentDto), (status = 404)), security(("bearer" = [])))]
pub async fn show(
    auth: Authenticated,
    Path(id): Path<String>,
) -> Result<Json<DocumentDto>, Problem> {
    let doc = visible(&auth, &id).await?;
    let versions = documents::versions(&auth.conn, doc.id).await?;
    let mut dto = DocumentDto::from(doc);
    dto.versions = Some(versions.into_iter().map(Into::into).collect());
    Ok(Json(dto))
}

/// The requested byte range (inclusive), `None` for the whole object, or `Err(())` when it
/// cannot be satisfied. Multiple ranges are answered with the whole object.
fn parse_range(headers: &HeaderMap, size: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(v) = headers.get(header::RANGE).and_then(|v| v.to_str().ok()) else {
        return Ok(None);
    };
    let Some(spec) = v.trim().strip_prefix("bytes=") else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let (a, b) = spec.split_once('-').ok_or(())?;
    let (a, b) = (a.trim(), b.trim());
    let range = match (a.is_empty(), b.is_empty()) {
        (true, false) => {
            let n: u64 = b.parse().map_err(|_| ())?;
            if n == 0 || size == 0 {
                return Err(());
            }
            (size.saturating_sub(n), size - 1)
        }
        (false, _) => {
            let start: u64 = a.parse().map_err(|_| ())?;
            let end: u64 = if b.is_empty() {
                size.saturating_sub(1)
            } else {
                b.parse().map_err(|_| ())?
            };
            if start >= size || end < start {
                return Err(());
            }
            (start, end.min(size - 1))
        }
        (true, true) => return Err(()),
    };
    Ok(Some(range))
}

/// Streams a version's plaintext (or a range of it). The first segment is decrypted before the
/// answer starts, so a bad object gets a problem, not a broken body.
async fn serve(
    rt: &Runtime,
    tenant: TenantId,
    v: &Version,
    headers: &HeaderMap,
) -> Result<(Response, Option<(u64, u64)>), Problem> {
    let size = u64::try_from(v.size).unwrap_or(0);
    // Content is cut into segments of the size recorded with it; this build reads one size.
    if u64::try_from(v.segment_size).ok() != Some(crate::content::cipher::SEGMENT) {
        tracing::error!(version = %v.id, segment_size = v.segment_size, "unsupported segment size");
        return Err(Problem::internal());
    }
    let range = match parse_range(headers, size) {
        Ok(r) => r,
        Err(()) => {
            return Err(Problem::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                ErrorCode::RangeNotSatisfiable,
                "The requested range is not within the file",
            )
            .header(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes */{size}"))
                    .map_err(|_| Problem::internal())?,
            ));
        }
    };
    let (start, end) = range.unwrap_or((0, size.saturating_sub(1)));
    let key = TenantKeyRef::new(v.data_key_ref.clone());
    let integrity = |e: &dyn std::fmt::Display| {
        tracing::error!(error = %e, version = %v.id, "document content failed its integrity check");
        Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::ContentIntegrity,
            "The stored content failed its integrity check",
        )
    };
    let dk = rt
        .content
        .keys
        .open(tenant, &key, &v.data_key_wrapped)
        .await
        .map_err(|e| integrity(&e))?;
    let cipher = ObjectCipher::new(&dk, &v.nonce, tenant, v.id.as_uuid());
    let object = ObjectKey::parse(&v.object_key).map_err(|_| Problem::internal())?;
    let mut segments = Segments::open(&rt.content.store, &object, Some(cipher), size, start, end)
        .await
        .map_err(|e| integrity(&e))?;
    let first = segments.next_piece().await.map_err(|e| integrity(&e))?;
    let body = futures_util::stream::iter(first.map(Ok)).chain(segments.into_stream());
    let len = if size == 0 { 0 } else { end - start + 1 };
    let mut response = Response::new(Body::from_stream(body));
    *response.status_mut() = if range.is_some() {
        StatusCode::PARTIAL_CONTENT
    } else {
        StatusCode::OK
    };
    let h = response.headers_mut();
    let hv = |s: String| HeaderValue::from_str(&s).map_err(|_| Problem::internal());
    h.insert(header::CONTENT_TYPE, hv(v.media_type.clone())?);
    h.insert(header::CONTENT_LENGTH, hv(len.to_string())?);
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::ETAG, hv(format!("\"{}\"", hex::encode(&v.sha256)))?);
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, no-store"),
    );
    let safe: String = v
        .file_name
        .chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .filter(|c| *c != '"')
        .collect();
    h.insert(
        header::CONTENT_DISPOSITION,
        hv(format!("attachment; filename=\"{safe}\""))?,
    );
    if range.is_some() {
        h.insert(
            header::CONTENT_RANGE,
            hv(format!("bytes {start}-{end}/{size}"))?,
        );
    }
    Ok((response, range))
}

#[utoipa::path(get, path = "/api/v1/documents/{id}/content", tag = "documents",
    params(("id" = Uuid, Path), ContentQuery, ("Range" = Option<String>, Header, description = "bytes=a-b")),
    responses((status = 200, description = "the file", content_type = "application/octet-stream"),
        (status = 206, description = "a range of the file"), (status = 416)),
    security(("bearer" = [])))]
pub async fn content(
    State(rt): State<Runtime>,
    headers: HeaderMap,
    auth: Authenticated,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<ContentQuery>,
) -> Result<Response, Problem> {
    let doc = visible(&auth, &id).await?;
    let v = pick_version(&auth.conn, &doc, q.version).await?;
    let served = serve(&rt, auth.tenant.tenant_id, &v, &headers).await;
    let (ok, reason) = match &served {
        Ok(_) => (true, None),
        Err(p) => (false, Some(p.code.as_str())),
    };
    auth.audit(
        EventType::DocumentDownloaded,
        Some(&doc.id.to_string()),
        ok,
        reason,
        serde_json::json!({"version": v.id, "range": served.as_ref().ok().and_then(|(_, r)| *r).map(|(a, b)| format!("{a}-{b}"))}),
    )
    .await?;
    served.map(|(r, _)| r)
}

async fn pick_version(
    client: &TenantConn,
    doc: &Document,
    wanted: Option<Uuid>,
) -> Result<Version, Problem> {
    match wanted.map(VersionId::from_uuid) {
        None => doc.current.clone().ok_or_else(Problem::not_found),
        Some(v) => documents::version(client, v)
            .await?
            .filter(|v| v.document_id == doc.id)
            .ok_or_else(Problem::not_found),
    }
}

// ---- links -----------------------------------------------------------------------------------

const DOCUMENT_LINK: &[u8] = b"portico-link-v1|";

fn sign(
    secret: &[u8; 32],
    tenant: TenantId,
    link: Uuid,
    version: VersionId,
    expires: i64,
) -> String {
    let mut payload = Vec::with_capacity(72);
    payload.extend_from_slice(link.as_bytes());
    payload.extend_from_slice(version.as_uuid().as_bytes());
    payload.extend_from_slice(&expires.to_be_bytes());
    seal_link(secret, DOCUMENT_LINK, LINK_PREFIX, tenant, payload)
}

/// (link, version, expiry) of a token whose MAC checks out for this tenant.
fn verify(secret: &[u8; 32], tenant: TenantId, token: &str) -> Option<(Uuid, VersionId, i64)> {
    let payload = open_link(secret, DOCUMENT_LINK, LINK_PREFIX, tenant, token, 40)?;
    let link = Uuid::from_slice(&payload[..16]).ok()?;
    let version = VersionId::from_uuid(Uuid::from_slice(&payload[16..32]).ok()?);
    let expires = i64::from_be_bytes(payload[32..40].try_into().ok()?);
    Some((link, version, expires))
}

#[utoipa::path(post, path = "/api/v1/documents/{id}/links", tag = "documents", params(("id" = Uuid, Path)),
    request_body = LinkRequest, responses((status = 201, body = LinkDto)), security(("bearer" = [])))]
pub async fn create_link(
    State(rt): State<Runtime>,
    headers: HeaderMap,
    auth: Authenticated,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<LinkRequest>,
) -> Result<(StatusCode, Json<LinkDto>), Problem> {
    let doc = visible(&auth, &id).await?;
    auth.require(Permission::DocumentsManage).await?;
    let ttl = req.expires_in_s.unwrap_or(LINK_DEFAULT_S);
    if !(60..=LINK_MAX_S).contains(&ttl) {
        return Err(Problem::fields(vec![(
            "expires_in_s".into(),
            format!("between 60 and {LINK_MAX_S}"),
        )]));
    }
    let v = pick_version(&auth.conn, &doc, req.version).await?;
    let expires = OffsetDateTime::now_utc() + time::Duration::seconds(ttl);
    let link =
        documents::create_link(&auth.conn, doc.id, v.id, expires, &auth.caller.name()).await?;
    let secret = link_key(&rt, &auth.conn).await?;
    let token = sign(
        &secret,
        auth.tenant.tenant_id,
        link.id,
        v.id,
        link.expires_at.unix_timestamp(),
    );
    let host = crate::tenancy::request_host(&headers)?;
    auth.record(
        EventType::DocumentLinkCreated,
        &doc.id.to_string(),
        serde_json::json!({"link": link.id, "version": v.id, "expires_at": link.expires_at.unix_timestamp()}),
    )
    .await?;
    let mut dto = LinkDto::from(link);
    dto.url = Some(format!("{}/d/{token}", rt.identity.origin(&host)));
    Ok((StatusCode::CREATED, Json(dto)))
}

#[utoipa::path(get, path = "/api/v1/documents/{id}/links", tag = "documents", params(("id" = Uuid, Path)),
    responses((status = 200, body = [LinkDto])), security(("bearer" = [])))]
pub async fn list_links(
    auth: Authenticated,
    Path(id): Path<String>,
) -> Result<Json<Vec<LinkDto>>, Problem> {
    let doc = visible(&auth, &id).await?;
    auth.require(Permission::DocumentsManage).await?;
    Ok(Json(
        documents::links(&auth.conn, doc.id)
            .await?
            .into_iter()
            .map(Into::into)
            .collect(),
    ))
}

#[utoipa::path(delete, path = "/api/v1/documents/{id}/links/{link}", tag = "documents",
    params(("id" = Uuid, Path), ("link" = Uuid, Path)), responses((status = 204)), security(("bearer" = [])))]
pub async fn revoke_link(
    auth: Authenticated,
    Path((id, link)): Path<(String, String)>,
) -> Result<StatusCode, Problem> {
    let doc = visible(&auth, &id).await?;
    auth.require(Permission::DocumentsManage).await?;
    let link = documents::revoke_link(&auth.conn, doc.id, path_id(&link)?).await?;
    auth.record(
        EventType::DocumentLinkRevoked,
        &doc.id.to_string(),
        serde_json::json!({"link": link.id}),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /d/{token}`: a document through a link, on its own tenant's host only.
#[utoipa::path(get, path = "/d/{token}", tag = "documents", params(("token" = String, Path)),
    responses((status = 200, description = "the file"), (status = 404, description = "link_invalid"),
        (status = 410, description = "link_expired or link_revoked")))]
pub async fn use_link(
    State(rt): State<Runtime>,
    headers: HeaderMap,
    tenant: Option<axum::Extension<Arc<TenantRoute>>>,
    ip: Option<axum::Extension<crate::http::ClientIp>>,
    Path(token): Path<String>,
) -> Result<Response, Problem> {
    let tenant = tenant.map(|t| t.0).ok_or_else(Problem::not_found)?;
    let conn = rt.pools.get(&tenant).await?;
    let request_id = crate::http::RequestId::current().map(|r| r.0);
    let record =
        |ok: bool, link: Option<Uuid>, reason: Option<&'static str>, details: serde_json::Value| {
            let conn = &conn;
            let request_id = request_id.clone();
            let ip = ip.as_ref().map(|i| i.0.0);
            // Anyone can present a bad link: past the first few per address, reason and
            // minute, refusals are counted and summarised (`failures.rs`).
            let (rt, tenant) = (&rt, &tenant);
            async move {
                let full = ok
                    || rt
                        .failures
                        .note(
                            tenant,
                            ip,
                            EventType::DocumentLinkUsed,
                            reason.unwrap_or("refused"),
                            OffsetDateTime::now_utc(),
                        )
                        .await;
                if !full {
                    return Ok(0);
                }
                let actor = link.map_or_else(|| "link:unknown".to_owned(), |l| format!("link:{l}"));
                let mut e = audit::Event::new(EventType::DocumentLinkUsed, &actor, ok);
                e.client_ip = ip;
                e.request_id = request_id.as_deref();
                e.reason = reason;
                e.details = details;
                audit::record(conn, &e).await
            }
        };
    let secret = link_key(&rt, &conn).await?;
    let Some((link_id, version_id, expires)) = verify(&secret, tenant.tenant_id, &token) else {
        record(false, None, Some("link_invalid"), serde_json::json!({})).await?;
        return Err(Problem::new(
            StatusCode::NOT_FOUND,
            ErrorCode::LinkInvalid,
            "This link is not valid here",
        ));
    };
    let gone = |code: ErrorCode, title: &'static str| Problem::new(StatusCode::GONE, code, title);
    let row = documents::get_link(&conn, link_id)
        .await?
        .filter(|l| l.version_id == version_id);
    let now = OffsetDateTime::now_utc();
    let refusal = match &row {
        None => Some(("link_invalid", None)),
        Some(l) if l.revoked_at.is_some() => Some((
            "link_revoked",
            Some(gone(ErrorCode::LinkRevoked, "This link has been revoked")),
        )),
        Some(l) if l.expires_at <= now || expires <= now.unix_timestamp() => Some((
            "link_expired",
            Some(gone(ErrorCode::LinkExpired, "This link has expired")),
        )),
        Some(_) => None,
    };
    if let Some((reason, problem)) = refusal {
        record(false, Some(link_id), Some(reason), serde_json::json!({})).await?;
        return Err(problem.unwrap_or_else(|| {
            Problem::new(
                StatusCode::NOT_FOUND,
                ErrorCode::LinkInvalid,
                "This link is not valid here",
            )
        }));
    }
    // Counted only while still live (a revocation racing this request wins).
    let Some(link) = documents::use_link(&conn, link_id).await? else {
        record(
            false,
            Some(link_id),
            Some("link_revoked"),
            serde_json::json!({}),
        )
        .await?;
        return Err(gone(ErrorCode::LinkRevoked, "This link has been revoked"));
    };
    let v = documents::version(&conn, link.version_id)
        .await?
        .ok_or_else(Problem::not_found)?;
    let served = serve(&rt, tenant.tenant_id, &v, &headers).await;
    record(
        served.is_ok(),
        Some(link.id),
        served.as_ref().err().map(|p| p.code.as_str()),
        serde_json::json!({"document": link.document_id, "version": v.id, "use": link.uses}),
    )
    .await?;
    served.map(|(r, _)| r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    #[test]
    fn link_tokens_are_bound_to_secret_and_tenant() {
        let (a, b) = (TenantId::random(), TenantId::random());
        let (l, v) = (Uuid::new_v4(), VersionId::random());
        let t = sign(&[1; 32], a, l, v, 1_900_000_000);
        assert_eq!(verify(&[1; 32], a, &t), Some((l, v, 1_900_000_000)));
        assert_eq!(verify(&[1; 32], b, &t), None);
        assert_eq!(verify(&[2; 32], a, &t), None);
        let mut raw = URL_SAFE_NO_PAD.decode(&t[4..]).unwrap();
        raw[39] ^= 1; // a later expiry
        assert_eq!(
            verify(&[1; 32], a, &format!("pdl_{}", URL_SAFE_NO_PAD.encode(raw))),
            None
        );
    }

    #[test]
    fn periods_and_ranges() {
        for ok in ["2026", "2026-01", "2026-12", "2026-Q4"] {
            assert!(valid_period(ok), "{ok}");
        }
        for bad in ["26", "2026-13", "2026-00", "2026-Q5", "2026-1", "abcd"] {
            assert!(!valid_period(bad), "{bad}");
        }
        let mut h = HeaderMap::new();
        h.insert(header::RANGE, HeaderValue::from_static("bytes=10-19"));
        assert_eq!(parse_range(&h, 100), Ok(Some((10, 19))));
        h.insert(header::RANGE, HeaderValue::from_static("bytes=-10"));
        assert_eq!(parse_range(&h, 100), Ok(Some((90, 99))));
        h.insert(header::RANGE, HeaderValue::from_static("bytes=90-"));
        assert_eq!(parse_range(&h, 100), Ok(Some((90, 99))));
        h.insert(header::RANGE, HeaderValue::from_static("bytes=100-"));
        assert_eq!(parse_range(&h, 100), Err(()));
    }
}

#[utoipa::path(delete, path = "/api/v1/documents/{id}", tag = "documents",
    params(("id" = Uuid, Path)),
    responses((status = 204, description = "Deleted with every version and its content"),
        (status = 404), (status = 409, description = "`retention_active` or `legal_hold_active`")),
    security(("bearer" = [])))]
pub async fn delete(
    State(rt): State<Runtime>,
    auth: Authenticated,
    Path(id): Path<String>,
) -> Result<StatusCode, Problem> {
    let doc = visible(&auth, &id).await?;
    auth.require(Permission::DocumentsManage).await?;
    let mut auth = auth;
    let keys = match documents::delete(&mut auth.conn, doc.id).await? {
        Ok(keys) => keys,
        Err(documents::DeleteRefused::Retention(until)) => {
            return Err(Problem::new(
                StatusCode::CONFLICT,
                ErrorCode::RetentionActive,
                "The document is kept until its retention date",
            )
            .detail(format!("retention_until is {until}")));
        }
        Err(documents::DeleteRefused::LegalHold) => return Err(legal_hold_active()),
    };
    auth.record(
        EventType::DocumentDeleted,
        &doc.id.to_string(),
        serde_json::json!({"title": doc.title, "versions": keys.len()}),
    )
    .await?;
    remove_queued_objects(&rt, &auth).await;
    Ok(StatusCode::NO_CONTENT)
}

/// Removes the queued objects of deleted documents from storage (this deletion's, and any an
/// earlier crash left), then forgets them. Only keys under the tenant's own prefix are
/// touched; a failure leaves them queued for the next deletion.
async fn remove_queued_objects(rt: &Runtime, auth: &Authenticated) {
    let prefix = portico_core::storage::tenant_prefix(auth.tenant.tenant_id);
    let Ok(queued) = documents::queued_objects(&auth.conn, 1000).await else {
        return;
    };
    let mut removed = Vec::new();
    for key in queued {
        let Ok(object) = ObjectKey::parse(&key) else {
            continue;
        };
        if !key.starts_with(&prefix) {
            tracing::warn!(tenant_id = %auth.tenant.tenant_id, "a queued object deletion names another prefix; left alone");
            continue;
        }
        match rt.content.store.delete(&object).await {
            Ok(()) => removed.push(key),
            Err(e) => {
                tracing::warn!(tenant_id = %auth.tenant.tenant_id, error = %e, "removing a deleted document's object failed; it stays queued");
            }
        }
    }
    if !removed.is_empty() {
        let _ = documents::objects_removed(&auth.conn, &removed).await;
    }
}

fn legal_hold_active() -> Problem {
    Problem::new(
        StatusCode::CONFLICT,
        ErrorCode::LegalHoldActive,
        "The document is under a legal hold",
    )
}

#[utoipa::path(put, path = "/api/v1/documents/{id}/legal-hold", tag = "documents",
    params(("id" = Uuid, Path)), request_body = LegalHoldRequest,
    responses((status = 200, body = DocumentDto), (status = 404)), security(("bearer" = [])))]
pub async fn set_legal_hold(
    auth: Authenticated,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<LegalHoldRequest>,
) -> Result<Json<DocumentDto>, Problem> {
    let doc = visible(&auth, &id).await?;
    auth.require(Permission::DocumentsManage).await?;
    let reason = body.reason.trim();
    if reason.is_empty() || reason.chars().count() > 500 || reason.chars().any(char::is_control) {
        return Err(Problem::fields(vec![(
            "reason".into(),
            "1 to 500 printable characters".into(),
        )]));
    }
    documents::set_legal_hold(&auth.conn, doc.id, Some((reason, &auth.caller.name()))).await?;
    auth.record(
        EventType::LegalHoldSet,
        &doc.id.to_string(),
        serde_json::json!({"title": doc.title, "reason": reason}),
    )
    .await?;
    let doc = documents::get(&auth.conn, doc.id)
        .await?
        .ok_or_else(Problem::not_found)?;
    Ok(Json(doc.into()))
}

/// Lifting a hold is four-eyes, always: it answers 202 with the approval a second person with
/// `documents.manage` decides.
#[utoipa::path(delete, path = "/api/v1/documents/{id}/legal-hold", tag = "documents",
    params(("id" = Uuid, Path)),
    responses((status = 202, body = PendingApprovalDto), (status = 404),
        (status = 409, description = "the document is not held")),
    security(("bearer" = [])))]
pub async fn clear_legal_hold(
    State(rt): State<Runtime>,
    mut auth: Authenticated,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let doc = visible(&auth, &id).await?;
    auth.require(Permission::DocumentsManage).await?;
    if doc.legal_hold.is_none() {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            ErrorCode::InvalidTransition,
            "The document is not under a legal hold",
        ));
    }
    let change = super::change::Change::ClearLegalHold {
        document: doc.id,
        title: doc.title,
    };
    if change.needs_approval(&auth).await? {
        return super::access::pending(&auth, &change).await;
    }
    super::change::apply(&rt, &mut auth, &change, None).await?;
    Ok(axum::response::IntoResponse::into_response(
        StatusCode::NO_CONTENT,
    ))
}
