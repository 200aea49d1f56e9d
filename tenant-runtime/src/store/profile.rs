//! The tenant's profile row (written by provisioning, read by `GET /api/v1/tenant`).

use serde::Serialize;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::error::RuntimeError;

#[derive(Debug, Clone, Serialize)]
pub struct Profile {
    pub id: Uuid,
    pub slug: String,
    pub display_name: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// What [`get`] runs.
pub const GET: &str = "select tenant_id, slug, display_name, created_at from tenant_profile";

pub async fn get(client: &crate::conn::TenantConn) -> Result<Profile, RuntimeError> {
    let row = client
        .query_one(GET, &[])
        .await
        .map_err(|e| RuntimeError::query("reading the tenant profile", e))?;
    Ok(Profile {
        id: row.get(0),
        slug: row.get(1),
        display_name: row.get(2),
        created_at: row.get(3),
    })
}
