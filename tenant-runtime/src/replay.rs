//! The shared SAML replay cache (`saml_replay` in the control plane): the runtime's only
//! control-plane write, through its own small writable pool, so that an assertion accepted by
//! one instance is refused by every other.

use portico_core::TenantId;
use sqlx::PgPool;
use time::OffsetDateTime;

use crate::error::RuntimeError;

/// Records an assertion id until `until`; false if it was there already (a replay).
/// Now and then it also drops expired entries.
pub(crate) async fn record(
    state_pool: &PgPool,
    tenant: TenantId,
    id: &str,
    until: OffsetDateTime,
) -> Result<bool, RuntimeError> {
    let inserted = sqlx::query(
        "insert into saml_replay (assertion_id, tenant_id, expires_at) values ($1, $2, $3)
         on conflict (assertion_id) do nothing",
    )
    .bind(id)
    .bind(tenant.as_uuid())
    .bind(until)
    .execute(state_pool)
    .await
    .map_err(|e| RuntimeError::catalog("recording a SAML assertion", e))?
    .rows_affected();
    if rand::random::<u8>() < 4 {
        let _ = sqlx::query("delete from saml_replay where expires_at < now()")
            .execute(state_pool)
            .await;
    }
    Ok(inserted == 1)
}
