//! Service tickets. Creation honours `Idempotency-Key`: the same key with the same body gets
//! the first answer again (even when the requests race: one ticket is created), the same key
//! with another body gets `422 idempotency_key_reused`. Who sees a ticket: callers with
//! `tickets.read_all`, or its creator; always within the caller's sites.

use crate::http::ErrorCode;
use crate::ids::DocumentId;
use axum::Json;
use axum::extract::Path;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use super::dto::*;
use super::{ApiQuery, decode_cursor, encode_cursor, page_size, path_id};
use crate::caller::Authenticated;
use crate::http::{ApiJson, Problem};
use crate::store::audit::EventType;
use crate::store::documents;
use crate::store::roles::Permission;
use crate::store::tickets::{self, Claim, Creator, Ticket};

const IDEMPOTENCY_KEY: &str = "idempotency-key";

fn own(auth: &Authenticated, t: &Ticket) -> bool {
    match (auth.caller.user_id, auth.caller.token_id) {
        (Some(u), _) if t.created_by_user == Some(u) => true,
        (None, Some(tok)) => t.created_by_token == Some(tok) && t.created_by_user.is_none(),
        _ => false,
    }
}

fn sees(auth: &Authenticated, t: &Ticket) -> bool {
    auth.caller.sees_site(t.site.as_deref())
        && (auth.caller.can(Permission::TicketsReadAll) || own(auth, t))
}

async fn visible(auth: &Authenticated, id: &str) -> Result<Ticket, Problem> {
    let t = tickets::get(&auth.conn, path_id(id)?)
        .await?
        .ok_or_else(Problem::not_found)?;
    if sees(auth, &t) {
        Ok(t)
    } else {
        Err(Problem::not_found())
    }
}

/// Documents the caller may attach: ones they can read.
async fn check_attachments(auth: &Authenticated, ids: &[uuid::Uuid]) -> Result<(), Problem> {
    if ids.is_empty() {
        return Ok(());
    }
    auth.require(Permission::DocumentsRead).await?;
    // One query for all of them: the site of each that exists.
    let ids: Vec<DocumentId> = ids.iter().copied().map(DocumentId::from_uuid).collect();
    let found = documents::sites_of(&auth.conn, &ids).await?;
    for (i, id) in ids.iter().enumerate() {
        let ok = found
            .iter()
            .any(|(d, site)| d == id && auth.caller.sees_site(site.as_deref()));
        if !ok {
            return Err(Problem::fields(vec![(
                format!("attachments[{i}]"),
                "unknown document".into(),
            )]));
        }
    }
    Ok(())
}

#[utoipa::path(post, path = "/api/v1/tickets", tag = "tickets", request_body = NewTicketRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "1 to 200 printable characters")),
    responses((status = 201, body = TicketDto), (status = 422, description = "invalid_input or idempotency_key_reused")),
    security(("bearer" = [])))]
pub async fn create(
    headers: HeaderMap,
    mut auth: Authenticated,
    ApiJson(req): ApiJson<NewTicketRequest>,
) -> Result<Response, Problem> {
    auth.require(Permission::TicketsCreate).await?;
    let mut errors = Vec::new();
    let title = req.title.trim();
    if title.is_empty() || title.chars().count() > 300 {
        errors.push(("title".to_owned(), "1 to 300 characters".to_owned()));
    }
    if req.description.chars().count() > 20_000 {
        errors.push((
            "description".to_owned(),
            "at most 20000 characters".to_owned(),
        ));
    }
    let key = match headers.get(IDEMPOTENCY_KEY) {
        None => None,
        Some(v) => match v.to_str() {
            Ok(k) if !k.is_empty() && k.len() <= 200 && k.bytes().all(|b| b.is_ascii_graphic()) => {
                Some(k.to_owned())
            }
            _ => {
                errors.push((
                    "Idempotency-Key".to_owned(),
                    "1 to 200 printable ASCII characters".to_owned(),
                ));
                None
            }
        },
    };
    if !errors.is_empty() {
        return Err(Problem::fields(errors));
    }
    super::check_site(&auth, req.site.as_deref()).await?;
    check_attachments(&auth, &req.attachments).await?;
    let principal = auth.caller.principal();
    let name = auth.caller.name();
    let creator = Creator {
        name: &name,
        user: auth.caller.user_id,
        token: auth.caller.token_id,
    };
    // The request's fingerprint: its canonical JSON (sorted keys).
    let fingerprint = {
        let v = serde_json::to_value(&req).map_err(|_| Problem::internal())?;
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, v.to_string().as_bytes())
            .as_ref()
            .to_vec()
    };
    let q = |e| crate::error::RuntimeError::query("creating a ticket", e);
    let client = &mut auth.conn;
    let tx = client.transaction().await.map_err(q)?;
    if let Some(key) = &key {
        match tickets::claim(&tx, &principal, key, &fingerprint).await? {
            Claim::New => {}
            Claim::Replay { status, body } => {
                let status = StatusCode::from_u16(u16::try_from(status).unwrap_or(500))
                    .unwrap_or(StatusCode::OK);
                let mut r = (status, Json(body)).into_response();
                r.headers_mut().insert(
                    "idempotent-replayed",
                    axum::http::HeaderValue::from_static("true"),
                );
                return Ok(r);
            }
            Claim::Mismatch => {
                return Err(Problem::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    ErrorCode::IdempotencyKeyReused,
                    "This Idempotency-Key was used with a different request",
                ));
            }
        }
    }
    let t = tickets::create(
        &tx,
        title,
        &req.description,
        req.site.as_deref(),
        &req.attachments,
        &creator,
    )
    .await?;
    let dto = TicketDto::from(t);
    let body = serde_json::to_value(&dto).map_err(|_| Problem::internal())?;
    if let Some(key) = &key {
        tickets::remember(&tx, &principal, key, 201, &body).await?;
    }
    tx.commit().await.map_err(q)?;
    auth.record(
        EventType::TicketCreated,
        &dto.id.to_string(),
        serde_json::json!({"number": dto.number, "site": dto.site}),
    )
    .await?;
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

#[utoipa::path(get, path = "/api/v1/tickets", tag = "tickets", params(TicketQuery),
    responses((status = 200, body = TicketPage)), security(("bearer" = [])))]
pub async fn list(
    auth: Authenticated,
    ApiQuery(q): ApiQuery<TicketQuery>,
) -> Result<Json<TicketPage>, Problem> {
    let limit = page_size(q.limit)?;
    if let Some(s) = &q.status
        && !tickets::STATUSES.contains(&s.as_str())
    {
        return Err(Problem::fields(vec![(
            "status".into(),
            format!("one of {}", tickets::STATUSES.join(", ")),
        )]));
    }
    let after = match &q.cursor {
        None => None,
        Some(c) => Some(decode_cursor(c)?.parse::<i64>().map_err(|_| {
            Problem::fields(vec![(
                "cursor".into(),
                "is not a cursor of this list".into(),
            )])
        })?),
    };
    let filter = tickets::Filter {
        status: q.status,
        site: q.site,
        own_user: auth.caller.user_id,
        own_token: if auth.caller.user_id.is_none() {
            auth.caller.token_id
        } else {
            None
        },
        only_own: !auth.caller.can(Permission::TicketsReadAll),
        scope: auth.caller.sites.clone(),
        after,
    };
    let items = tickets::list(&auth.conn, &filter, limit + 1).await?;
    let more = items.len() as i64 > limit;
    let items: Vec<Ticket> = items.into_iter().take(limit as usize).collect();
    let next_cursor = if more {
        items.last().map(|t| encode_cursor(&t.number.to_string()))
    } else {
        None
    };
    Ok(Json(TicketPage {
        items: items.into_iter().map(Into::into).collect(),
        next_cursor,
    }))
}

#[utoipa::path(get, path = "/api/v1/tickets/{id}", tag = "tickets", params(("id" = uuid::Uuid, Path)),
    responses((status = 200, body = TicketDto), (status = 404)), security(("bearer" = [])))]
pub async fn show(auth: Authenticated, Path(id): Path<String>) -> Result<Json<TicketDto>, Problem> {
    let t = visible(&auth, &id).await?;
    let comments = tickets::comments(&auth.conn, t.id).await?;
    let mut dto = TicketDto::from(t);
    dto.comments = Some(comments.into_iter().map(Into::into).collect());
    Ok(Json(dto))
}

#[utoipa::path(post, path = "/api/v1/tickets/{id}/status", tag = "tickets", params(("id" = uuid::Uuid, Path)),
    request_body = StatusRequest, responses((status = 200, body = TicketDto), (status = 409, description = "invalid_transition")),
    security(("bearer" = [])))]
pub async fn set_status(
    auth: Authenticated,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<StatusRequest>,
) -> Result<Json<TicketDto>, Problem> {
    let t = visible(&auth, &id).await?;
    if !tickets::STATUSES.contains(&req.status.as_str()) {
        return Err(Problem::fields(vec![(
            "status".into(),
            format!("one of {}", tickets::STATUSES.join(", ")),
        )]));
    }
    if !tickets::allowed(&t.status, &req.status) {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            ErrorCode::InvalidTransition,
            "This status change is not allowed",
        )
        .detail(format!(
            "{} → {} is not a step of the workflow",
            t.status, req.status
        )));
    }
    // Without tickets.manage, a creator may answer (waiting → in progress), close a resolved
    // ticket, or reopen it.
    let creator_step = own(&auth, &t)
        && matches!(
            (t.status.as_str(), req.status.as_str()),
            ("waiting_for_customer", "in_progress")
                | ("resolved", "closed")
                | ("resolved", "in_progress")
        );
    if !creator_step {
        auth.require(Permission::TicketsManage).await?;
    }
    let updated = tickets::set_status(&auth.conn, t.id, &t.status, &req.status)
        .await?
        .ok_or_else(|| {
            Problem::new(
                StatusCode::CONFLICT,
                ErrorCode::Conflict,
                "The ticket changed meanwhile; reload it",
            )
        })?;
    auth.record(
        EventType::TicketStatusChanged,
        &t.id.to_string(),
        serde_json::json!({"from": t.status, "to": req.status}),
    )
    .await?;
    Ok(Json(updated.into()))
}

#[utoipa::path(post, path = "/api/v1/tickets/{id}/comments", tag = "tickets", params(("id" = uuid::Uuid, Path)),
    request_body = CommentRequest, responses((status = 201, body = CommentDto)), security(("bearer" = [])))]
pub async fn comment(
    auth: Authenticated,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<CommentRequest>,
) -> Result<(StatusCode, Json<CommentDto>), Problem> {
    let t = visible(&auth, &id).await?;
    if t.status == "closed" {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            ErrorCode::TicketClosed,
            "This ticket is closed",
        ));
    }
    let body = req.body.trim();
    if body.is_empty() || body.chars().count() > 20_000 {
        return Err(Problem::fields(vec![(
            "body".into(),
            "1 to 20000 characters".into(),
        )]));
    }
    let c = tickets::comment(&auth.conn, t.id, &auth.caller.name(), body).await?;
    auth.record(
        EventType::TicketCommented,
        &t.id.to_string(),
        serde_json::json!({"comment": c.id}),
    )
    .await?;
    Ok((StatusCode::CREATED, Json(c.into())))
}

#[utoipa::path(post, path = "/api/v1/tickets/{id}/attachments", tag = "tickets", params(("id" = uuid::Uuid, Path)),
    request_body = AttachRequest, responses((status = 200, body = TicketDto)), security(("bearer" = [])))]
pub async fn attach(
    auth: Authenticated,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<AttachRequest>,
) -> Result<Json<TicketDto>, Problem> {
    let t = visible(&auth, &id).await?;
    check_attachments(&auth, &[req.document_id]).await?;
    auth.conn
        .execute(
            "insert into ticket_attachments (ticket_id, document_id) values ($1, $2) on conflict do nothing",
            &[&t.id, &req.document_id],
        )
        .await
        .map_err(|e| crate::error::RuntimeError::query("attaching a document", e))?;
    auth.record(
        EventType::TicketCommented,
        &t.id.to_string(),
        serde_json::json!({"attached": req.document_id}),
    )
    .await?;
    let t = tickets::get(&auth.conn, t.id)
        .await?
        .ok_or_else(Problem::not_found)?;
    Ok(Json(t.into()))
}
