//! Creating and destroying tenant keys (and the control-plane key under `aws-kms`).
//!
//! KMS: a symmetric customer-managed key per tenant, tagged `portico:tenant_id=<id>` at creation
//! and then given the alias `alias/portico/tenant-<id>`. If a run dies between `CreateKey` and
//! `CreateAlias`, the tag is how a retry adopts the key and how a rollback finds it. Destroying
//! deletes the alias and schedules the key for deletion (KMS's minimum waiting period, 7 days).
//!
//! Local: a random 256-bit key, wrapped by the master key (bound to the tenant id), written
//! atomically to `tenant-keys/tenant-<id>.key`. Destroying deletes that file.

use std::io::ErrorKind;

use aws_sdk_kms::types::{KeyMetadata, KeySpec, KeyState, KeyUsageType, Tag};
use portico_core::TenantId;
use portico_core::keys::{
    KeyError, Keyring, KmsKeyring, LocalKeyring, PLATFORM_KEY_ALIAS, TENANT_TAG_KEY, TenantKeyRef,
    kms_err, random_bytes,
};

use crate::ProvisionError;

/// KMS's minimum waiting period before a scheduled key deletion happens.
pub const KMS_DELETION_WINDOW_DAYS: i32 = 7;

/// What exists of a tenant's key (for rollback checks and tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyPresence {
    /// No usable key: nothing on disk, or no alias and no tagged key that is not already
    /// scheduled for deletion.
    Absent,
    /// A usable key exists (its reference).
    Active(String),
}

fn io(path: &std::path::Path, e: std::io::Error) -> ProvisionError {
    ProvisionError::Key(KeyError::Io {
        path: path.display().to_string(),
        source: e,
    })
}

/// Makes sure the tenant has a key and returns its reference. `after_interruption` makes a KMS
/// run look for a tagged key a previous attempt may have created without its alias.
pub async fn ensure_tenant_key(
    keyring: &Keyring,
    tenant: TenantId,
    after_interruption: bool,
) -> Result<TenantKeyRef, ProvisionError> {
    match keyring {
        Keyring::Local(local) => {
            let local = local.clone();
            tokio::task::spawn_blocking(move || ensure_local_key(&local, tenant))
                .await
                .map_err(|e| ProvisionError::Conflict(format!("key task failed: {e}")))?
        }
        Keyring::Kms(kms) => ensure_kms_key(kms, tenant, after_interruption).await,
    }
}

fn ensure_local_key(
    local: &LocalKeyring,
    tenant: TenantId,
) -> Result<TenantKeyRef, ProvisionError> {
    let path = local.tenant_key_path(tenant);
    if !path.exists() {
        let wrapped = local.wrap_tenant_key(tenant, &random_bytes::<32>())?;
        // A concurrent creator may win; its key is kept and ours is discarded.
        portico_core::files::create_once(&path, &wrapped, 0o600).map_err(|e| io(&path, e))?;
    }
    Ok(LocalKeyring::key_ref(tenant))
}

async fn describe(kms: &KmsKeyring, key_id: &str) -> Result<Option<KeyMetadata>, ProvisionError> {
    match kms.client().describe_key().key_id(key_id).send().await {
        Ok(out) => Ok(out.key_metadata),
        Err(e)
            if e.as_service_error()
                .is_some_and(|e| e.is_not_found_exception()) =>
        {
            Ok(None)
        }
        Err(e) => Err(kms_err("DescribeKey", e).into()),
    }
}

fn usable(meta: &KeyMetadata) -> bool {
    !matches!(
        meta.key_state(),
        Some(KeyState::PendingDeletion) | Some(KeyState::PendingReplicaDeletion)
    )
}

/// Keys tagged with this tenant id that are not scheduled for deletion.
async fn tagged_keys(kms: &KmsKeyring, tenant: TenantId) -> Result<Vec<String>, ProvisionError> {
    let want = tenant.to_string();
    let mut found = Vec::new();
    let mut pages = kms.client().list_keys().into_paginator().send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| kms_err("ListKeys", e))?;
        for key in page.keys() {
            let Some(id) = key.key_id() else { continue };
            let tags = kms
                .client()
                .list_resource_tags()
                .key_id(id)
                .send()
                .await
                .map_err(|e| kms_err("ListResourceTags", e))?;
            let ours = tags
                .tags()
                .iter()
                .any(|t| t.tag_key() == TENANT_TAG_KEY && t.tag_value() == want);
            if ours && describe(kms, id).await?.as_ref().is_some_and(usable) {
                found.push(id.to_owned());
            }
        }
    }
    Ok(found)
}

async fn ensure_kms_key(
    kms: &KmsKeyring,
    tenant: TenantId,
    after_interruption: bool,
) -> Result<TenantKeyRef, ProvisionError> {
    let alias = KmsKeyring::tenant_alias(tenant);
    if let Some(meta) = describe(kms, &alias).await? {
        if !usable(&meta) {
            return Err(ProvisionError::Conflict(format!(
                "the key behind {alias} is scheduled for deletion"
            )));
        }
        return Ok(TenantKeyRef::new(meta.key_id()));
    }
    let adopted = if after_interruption {
        tagged_keys(kms, tenant).await?.into_iter().next()
    } else {
        None
    };
    let key_id = match adopted {
        Some(id) => id,
        None => {
            let out = kms
                .client()
                .create_key()
                .description(format!("Portico tenant {tenant}"))
                .key_usage(KeyUsageType::EncryptDecrypt)
                .key_spec(KeySpec::SymmetricDefault)
                .tags(
                    Tag::builder()
                        .tag_key(TENANT_TAG_KEY)
                        .tag_value(tenant.to_string())
                        .build()
                        .map_err(|e| kms_err("CreateKey", e))?,
                )
                .send()
                .await
                .map_err(|e| kms_err("CreateKey", e))?;
            out.key_metadata
                .map(|m| m.key_id)
                .ok_or_else(|| ProvisionError::Conflict("CreateKey returned no key id".into()))?
        }
    };
    match kms
        .client()
        .create_alias()
        .alias_name(&alias)
        .target_key_id(&key_id)
        .send()
        .await
    {
        Ok(_) => Ok(TenantKeyRef::new(key_id)),
        Err(e)
            if e.as_service_error()
                .is_some_and(|e| e.is_already_exists_exception()) =>
        {
            // Another run won the race: use its key, retire ours.
            let meta = describe(kms, &alias).await?.ok_or_else(|| {
                ProvisionError::Conflict(format!("{alias} vanished while it was being created"))
            })?;
            if meta.key_id() != key_id {
                schedule_deletion(kms, &key_id).await?;
            }
            Ok(TenantKeyRef::new(meta.key_id()))
        }
        Err(e) => Err(kms_err("CreateAlias", e).into()),
    }
}

async fn schedule_deletion(kms: &KmsKeyring, key_id: &str) -> Result<(), ProvisionError> {
    match kms
        .client()
        .schedule_key_deletion()
        .key_id(key_id)
        .pending_window_in_days(KMS_DELETION_WINDOW_DAYS)
        .send()
        .await
    {
        Ok(_) => Ok(()),
        // Already pending deletion, or gone.
        Err(e)
            if e.as_service_error().is_some_and(|e| {
                e.is_kms_invalid_state_exception() || e.is_not_found_exception()
            }) =>
        {
            Ok(())
        }
        Err(e) => Err(kms_err("ScheduleKeyDeletion", e).into()),
    }
}

/// Destroys the tenant's key: deletes the local key file, or deletes the KMS alias and
/// schedules every key of the tenant (aliased or only tagged) for deletion.
pub async fn destroy_tenant_key(keyring: &Keyring, tenant: TenantId) -> Result<(), ProvisionError> {
    match keyring {
        Keyring::Local(local) => {
            let path = local.tenant_key_path(tenant);
            match tokio::fs::remove_file(&path).await {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
                Err(e) => Err(io(&path, e)),
            }
        }
        Keyring::Kms(kms) => {
            let alias = KmsKeyring::tenant_alias(tenant);
            if let Some(meta) = describe(kms, &alias).await? {
                match kms.client().delete_alias().alias_name(&alias).send().await {
                    Ok(_) => {}
                    Err(e)
                        if e.as_service_error()
                            .is_some_and(|e| e.is_not_found_exception()) => {}
                    Err(e) => return Err(kms_err("DeleteAlias", e).into()),
                }
                if usable(&meta) {
                    schedule_deletion(kms, meta.key_id()).await?;
                }
            }
            for key_id in tagged_keys(kms, tenant).await? {
                schedule_deletion(kms, &key_id).await?;
            }
            Ok(())
        }
    }
}

/// A tenant key after [`shred_tenant_key`]: which key, and when it is (or was) destroyed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ShreddedKey {
    pub key_id: String,
    /// The key's state afterwards: `Destroyed` (local key file deleted), or the KMS state
    /// (`PendingDeletion`).
    pub state: String,
    /// When KMS deletes the key (RFC 3339); for a local key, `None`: it is already gone.
    pub deletion_date: Option<String>,
}

/// Destroys the tenant's key ([`destroy_tenant_key`]) and reports what became of `key_id`
/// (the key the catalog recorded), for a deletion certificate. Idempotent: a re-run reports
/// the pending deletion a previous run scheduled.
pub async fn shred_tenant_key(
    keyring: &Keyring,
    tenant: TenantId,
    key_id: &str,
) -> Result<ShreddedKey, ProvisionError> {
    destroy_tenant_key(keyring, tenant).await?;
    match keyring {
        Keyring::Local(_) => Ok(ShreddedKey {
            key_id: key_id.to_owned(),
            state: "Destroyed".into(),
            deletion_date: None,
        }),
        Keyring::Kms(kms) => {
            let meta = describe(kms, key_id).await?;
            Ok(ShreddedKey {
                key_id: key_id.to_owned(),
                state: meta
                    .as_ref()
                    .and_then(|m| m.key_state())
                    .map_or_else(|| "NotFound".to_owned(), |s| s.as_str().to_owned()),
                deletion_date: meta.as_ref().and_then(|m| m.deletion_date()).and_then(|d| {
                    d.fmt(aws_sdk_kms::primitives::DateTimeFormat::DateTime)
                        .ok()
                }),
            })
        }
    }
}

/// Whether the tenant still has a usable key. Under KMS this checks key state with
/// `DescribeKey` rather than trusting the server to refuse use of a deleted key.
pub async fn tenant_key_presence(
    keyring: &Keyring,
    tenant: TenantId,
) -> Result<KeyPresence, ProvisionError> {
    match keyring {
        Keyring::Local(local) => {
            let path = local.tenant_key_path(tenant);
            Ok(if path.exists() {
                KeyPresence::Active(LocalKeyring::key_ref(tenant).as_str().to_owned())
            } else {
                KeyPresence::Absent
            })
        }
        Keyring::Kms(kms) => {
            let alias = KmsKeyring::tenant_alias(tenant);
            if let Some(meta) = describe(kms, &alias).await? {
                return Ok(KeyPresence::Active(format!(
                    "{} ({:?})",
                    meta.key_id(),
                    meta.key_state()
                )));
            }
            Ok(match tagged_keys(kms, tenant).await?.into_iter().next() {
                Some(id) => KeyPresence::Active(id),
                None => KeyPresence::Absent,
            })
        }
    }
}

/// Under `aws-kms`, makes sure the control-plane key (`alias/portico/control-plane`) exists.
pub async fn ensure_platform_key(keyring: &Keyring) -> Result<(), ProvisionError> {
    let Keyring::Kms(kms) = keyring else {
        return Ok(());
    };
    if describe(kms, PLATFORM_KEY_ALIAS).await?.is_some() {
        return Ok(());
    }
    let out = kms
        .client()
        .create_key()
        .description("Portico control plane")
        .key_usage(KeyUsageType::EncryptDecrypt)
        .key_spec(KeySpec::SymmetricDefault)
        .send()
        .await
        .map_err(|e| kms_err("CreateKey", e))?;
    let key_id = out
        .key_metadata
        .map(|m| m.key_id)
        .ok_or_else(|| ProvisionError::Conflict("CreateKey returned no key id".into()))?;
    match kms
        .client()
        .create_alias()
        .alias_name(PLATFORM_KEY_ALIAS)
        .target_key_id(&key_id)
        .send()
        .await
    {
        Ok(_) => Ok(()),
        Err(e)
            if e.as_service_error()
                .is_some_and(|e| e.is_already_exists_exception()) =>
        {
            schedule_deletion(kms, &key_id).await
        }
        Err(e) => Err(kms_err("CreateAlias", e).into()),
    }
}
