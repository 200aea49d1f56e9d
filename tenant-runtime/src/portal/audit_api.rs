//! `GET /api/v1/audit-events`: the tenant's audit log, filtered, oldest first, with a cursor.

use axum::Json;

use super::dto::*;
use super::{ApiQuery, decode_cursor, encode_cursor, page_size};
use crate::caller::Authenticated;
use crate::http::Problem;
use crate::store::audit::{self, EventType};
use crate::store::roles::Permission;

#[utoipa::path(get, path = "/api/v1/audit-events", tag = "audit", params(AuditQuery),
    responses((status = 200, body = AuditPage)), security(("bearer" = [])))]
pub async fn list(
    auth: Authenticated,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> Result<Json<AuditPage>, Problem> {
    auth.require(Permission::AuditRead).await?;
    let limit = page_size(q.limit)?;
    let mut errors = Vec::new();
    let since = timestamp("since", q.since.as_deref(), &mut errors);
    let until = timestamp("until", q.until.as_deref(), &mut errors);
    if let Some(t) = &q.event_type
        && EventType::parse(t).is_none()
    {
        errors.push(("event_type".into(), "not an event type".into()));
    }
    let after = match &q.cursor {
        None => None,
        Some(c) => match decode_cursor(c)?.parse::<i64>() {
            Ok(n) => Some(n),
            Err(_) => {
                errors.push(("cursor".into(), "is not a cursor of this list".into()));
                None
            }
        },
    };
    if !errors.is_empty() {
        return Err(Problem::fields(errors));
    }
    let filter = audit::Filter {
        event_type: q.event_type,
        actor: q.actor,
        target: q.target,
        since,
        until,
        after,
    };
    let items = audit::list(&auth.conn, &filter, limit + 1).await?;
    let more = items.len() as i64 > limit;
    let items: Vec<_> = items.into_iter().take(limit as usize).collect();
    let next_cursor = if more {
        items.last().map(|e| encode_cursor(&e.seq.to_string()))
    } else {
        None
    };
    Ok(Json(AuditPage {
        items: items.into_iter().map(Into::into).collect(),
        next_cursor,
    }))
}
