//! A person's data (GDPR Art. 15 and 20): `GET /api/v1/users/{id}/data-export` for someone who
//! manages that user (`users.manage`, within their sites, no escalation), and
//! `GET /api/v1/me/data-export` for the person themselves; and erasure (Art. 17),
//! `POST /api/v1/users/{id}/erasure`. All audited.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use super::change::{self, Applied, Change};
use crate::caller::Authenticated;
use crate::http::{ErrorCode, Problem};
use crate::ids::UserId;
use crate::state::Runtime;
use crate::store::{audit, personal};

/// Everything held about one person; each section is a list (or an object) of what the
/// tenant's database has.
#[derive(Debug, Serialize, ToSchema)]
pub struct PersonalDataDto {
    /// `portico-personal-data/1`
    pub format: String,
    #[serde(with = "time::serde::rfc3339")]
    pub generated_at: time::OffsetDateTime,
    /// Profile, role, sites, identities, the local account's state, sessions, tokens acting
    /// for them, invitations, audit events, tickets, comments, documents, approvals.
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
}

async fn export_of(auth: &Authenticated, user: UserId) -> Result<Json<PersonalDataDto>, Problem> {
    let data = personal::export(&auth.conn, user)
        .await?
        .ok_or_else(Problem::not_found)?;
    auth.record(
        audit::EventType::PersonalDataExported,
        &format!("user:{user}"),
        serde_json::json!({"user_id": user.to_string()}),
    )
    .await?;
    Ok(Json(PersonalDataDto {
        format: "portico-personal-data/1".into(),
        generated_at: time::OffsetDateTime::now_utc(),
        data,
    }))
}

#[utoipa::path(get, path = "/api/v1/users/{id}/data-export", tag = "access",
    params(("id" = Uuid, Path)), responses((status = 200, body = PersonalDataDto)),
    security(("bearer" = [])))]
pub async fn user_data(
    auth: Authenticated,
    Path(id): Path<String>,
) -> Result<Json<PersonalDataDto>, Problem> {
    let user = super::access::managed_user(&auth, &id).await?;
    export_of(&auth, user.id).await
}

#[utoipa::path(get, path = "/api/v1/me/data-export", tag = "tenant",
    responses((status = 200, body = PersonalDataDto)), security(("bearer" = [])))]
pub async fn my_data(auth: Authenticated) -> Result<Json<PersonalDataDto>, Problem> {
    // A service token that acts for nobody holds no one's personal data.
    let user = auth.caller.user_id.ok_or_else(Problem::not_found)?;
    export_of(&auth, user).await
}

/// What erasing a person did.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErasureDto {
    pub user_id: uuid::Uuid,
    /// The names the person is shown by from now on, everywhere.
    pub pseudonym_email: String,
    pub pseudonym_name: String,
    /// Rows of the organisation's tables changed or deleted.
    pub rows: u64,
    /// Values in the audit log replaced (the chain still verifies).
    pub audit_values: u64,
}

/// `POST /api/v1/users/{id}/erasure` (GDPR Art. 17): deactivates the person, ends their
/// sessions, deletes their credentials, tokens and invitations, and replaces their e-mail,
/// name and IdP subjects with pseudonyms everywhere, the audit log's values included.
/// Four-eyes by default (policy action `erase_person`). Nobody erases themselves.
#[utoipa::path(post, path = "/api/v1/users/{id}/erasure", tag = "access",
    params(("id" = Uuid, Path)),
    responses((status = 200, body = ErasureDto),
        (status = 202, description = "waiting for a second person's approval", body = crate::portal::dto::PendingApprovalDto),
        (status = 409, description = "yourself")),
    security(("bearer" = [])))]
pub async fn erase_user(
    State(rt): State<Runtime>,
    mut auth: Authenticated,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let user = super::access::managed_user(&auth, &id).await?;
    if auth.caller.user_id == Some(user.id) {
        return Err(
            Problem::new(StatusCode::CONFLICT, ErrorCode::Conflict, "Conflict")
                .detail("You cannot erase yourself"),
        );
    }
    let change = Change::ErasePerson { user_id: user.id };
    if change.needs_approval(&auth).await? {
        return super::access::pending(&auth, &change).await;
    }
    let Applied::Erased(e) = change::apply(&rt, &mut auth, &change, None).await? else {
        return Err(Problem::internal());
    };
    Ok(Json(ErasureDto {
        user_id: user.id.as_uuid(),
        pseudonym_email: e.pseudonym_email,
        pseudonym_name: e.pseudonym_name,
        rows: e.rows,
        audit_values: e.audit_values,
    })
    .into_response())
}
