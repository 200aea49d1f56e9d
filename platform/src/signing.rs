//! The platform's signing key (Ed25519): made on first use, its private half stored in the
//! catalog encrypted under the control-plane key (local master key or KMS). It signs deletion
//! certificates (and export manifests); `portico export public-key` prints the public half to
//! publish, and verification needs nothing else.

use portico_core::signing::{PublicKey, SigningKey};

use crate::context::Platform;
use crate::error::{PlatformError, Result};

const PURPOSE: &str = "export-signing";

fn key_error(e: portico_core::signing::SignatureError) -> PlatformError {
    PlatformError::InvalidState(format!("the platform signing key: {e}"))
}

/// The platform's signing key, made and recorded now if there is none yet (a concurrent
/// first use may record first; its key wins).
pub async fn signing_key(platform: &Platform) -> Result<SigningKey> {
    if let Some(key) = load(platform).await? {
        return Ok(key);
    }
    let (key, pkcs8) = SigningKey::generate().map_err(key_error)?;
    let ciphertext = platform
        .keyring
        .encrypt_platform(&purpose_context(), &pkcs8)
        .await?;
    sqlx::query(
        "insert into signing_keys (purpose, public_key, private_key_ciphertext)
         values ($1, $2, $3) on conflict on constraint signing_keys_pkey do nothing",
    )
    .bind(PURPOSE)
    .bind(key.public_key().as_bytes().as_slice())
    .bind(ciphertext)
    .execute(platform.catalog.pool())
    .await
    .map_err(|e| PlatformError::catalog("recording the signing key", e))?;
    load(platform)
        .await?
        .ok_or_else(|| PlatformError::InvalidState("the signing key vanished".into()))
}

/// The public half (made now if there is no key yet).
pub async fn public_key(platform: &Platform) -> Result<PublicKey> {
    Ok(signing_key(platform).await?.public_key())
}

fn purpose_context() -> String {
    format!("signing-key:{PURPOSE}")
}

async fn load(platform: &Platform) -> Result<Option<SigningKey>> {
    let row: Option<(Vec<u8>, Vec<u8>)> = sqlx::query_as(
        "select public_key, private_key_ciphertext from signing_keys where purpose = $1",
    )
    .bind(PURPOSE)
    .fetch_optional(platform.catalog.pool())
    .await
    .map_err(|e| PlatformError::catalog("reading the signing key", e))?;
    let Some((public, ciphertext)) = row else {
        return Ok(None);
    };
    let pkcs8 = platform
        .keyring
        .decrypt_platform(&purpose_context(), &ciphertext)
        .await?;
    let key = SigningKey::from_pkcs8(&pkcs8).map_err(key_error)?;
    if key.public_key().as_bytes().as_slice() != public.as_slice() {
        return Err(PlatformError::InvalidState(
            "the stored signing key does not match its recorded public key".into(),
        ));
    }
    Ok(Some(key))
}
