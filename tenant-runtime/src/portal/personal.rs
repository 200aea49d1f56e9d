//! A person's data (GDPR Art. 15 and 20): `GET /api/v1/users/{id}/data-export` for someone who
//! manages that user (`users.manage`, within their sites, no escalation), and
//! `GET /api/v1/me/data-export` for the person themselves. Both are audited.

use axum::Json;
use axum::extract::Path;
use serde::Serialize;
use utoipa::ToSchema;

use crate::caller::Authenticated;
use crate::http::Problem;
use crate::ids::UserId;
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
