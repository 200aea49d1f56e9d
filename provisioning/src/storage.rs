//! Creating and destroying a tenant's object-storage prefix (`tenants/<tenant-id>/`), with the
//! same code for `file://` and `s3://`.

use portico_core::TenantId;
use portico_core::storage::{ObjectKey, ObjectStore, PrefixDeletion, TENANT_MARKER, tenant_prefix};

use crate::ProvisionError;

/// Writes the prefix's marker object unless it is already there.
pub async fn ensure_prefix(
    store: &ObjectStore,
    tenant: TenantId,
) -> Result<String, ProvisionError> {
    let marker = ObjectKey::tenant_object(tenant, TENANT_MARKER)?;
    if store.get(&marker).await?.is_none() {
        let body = serde_json::json!({
            "tenant_id": tenant,
            "created_at": time::OffsetDateTime::now_utc()
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
        });
        store.put(&marker, body.to_string().into_bytes()).await?;
    }
    Ok(tenant_prefix(tenant))
}

/// Deletes everything under the tenant's prefix (objects, and whatever an interrupted upload
/// left); returns what was deleted.
pub async fn destroy_prefix(
    store: &ObjectStore,
    tenant: TenantId,
) -> Result<PrefixDeletion, ProvisionError> {
    Ok(store.delete_prefix(&tenant_prefix(tenant)).await?)
}

/// Objects currently under the tenant's prefix.
pub async fn prefix_objects(
    store: &ObjectStore,
    tenant: TenantId,
) -> Result<Vec<ObjectKey>, ProvisionError> {
    Ok(store.list(&tenant_prefix(tenant)).await?)
}
