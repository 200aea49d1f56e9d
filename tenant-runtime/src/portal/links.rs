//! Signed links of a tenant's (document links `/d/…`, export links `/x/…`): a payload and its
//! HMAC-SHA256 under the tenant's link secret (kept encrypted under the tenant's key, cached
//! per tenant), bound to the tenant and to the kind of link (`domain`). Verifiable without a
//! row; what a link may still do is checked by its handler.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use portico_core::TenantId;

use crate::error::RuntimeError;
use crate::http::Problem;
use crate::pools::TenantConn;
use crate::state::Runtime;
use crate::store::documents;

/// The tenant secret the link key is kept under.
const LINK_SECRET: &str = "link_hmac";

/// The tenant's link-signing key (created on first use, kept encrypted under the tenant key).
pub(crate) async fn link_key(rt: &Runtime, client: &TenantConn) -> Result<Arc<[u8; 32]>, Problem> {
    let (tenant, key) = (client.tenant(), client.key_ref());
    let keyring = &rt.content.keyring;
    rt.content
        .link_secrets
        .try_get_with(tenant, async {
            let stored = match documents::tenant_secret(client, LINK_SECRET).await? {
                Some(c) => c,
                None => {
                    let fresh = portico_core::keys::random_bytes::<32>();
                    let sealed = keyring.encrypt_for_tenant(tenant, key, &fresh).await?;
                    documents::put_tenant_secret(client, LINK_SECRET, &sealed).await?
                }
            };
            let plain = keyring.decrypt_for_tenant(tenant, key, &stored).await?;
            let k: [u8; 32] = plain
                .try_into()
                .map_err(|_| RuntimeError::InvalidInput("link secret".into()))?;
            Ok::<_, RuntimeError>(Arc::new(k))
        })
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "link secret unavailable");
            Problem::internal()
        })
}

/// A link token: `prefix`, then base64url of `payload` and its HMAC-SHA256 under the tenant's
/// link secret, bound to the tenant and to what kind of link it is (`domain`).
pub(crate) fn seal_link(
    secret: &[u8; 32],
    domain: &[u8],
    prefix: &str,
    tenant: TenantId,
    mut payload: Vec<u8>,
) -> String {
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret);
    let tag = aws_lc_rs::hmac::sign(&key, &mac_message(domain, tenant, &payload));
    payload.extend_from_slice(tag.as_ref());
    format!("{prefix}{}", URL_SAFE_NO_PAD.encode(payload))
}

/// The `len`-byte payload of a token [`seal_link`] made for this tenant and domain (the MAC
/// compared in constant time), else `None`.
pub(crate) fn open_link(
    secret: &[u8; 32],
    domain: &[u8],
    prefix: &str,
    tenant: TenantId,
    token: &str,
    len: usize,
) -> Option<Vec<u8>> {
    let raw = URL_SAFE_NO_PAD.decode(token.strip_prefix(prefix)?).ok()?;
    if raw.len() != len + 32 {
        return None;
    }
    let (payload, tag) = raw.split_at(len);
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret);
    aws_lc_rs::hmac::verify(&key, &mac_message(domain, tenant, payload), tag).ok()?;
    Some(payload.to_vec())
}

fn mac_message(domain: &[u8], tenant: TenantId, payload: &[u8]) -> Vec<u8> {
    let mut m = domain.to_vec();
    m.extend_from_slice(tenant.as_uuid().as_bytes());
    m.extend_from_slice(payload);
    m
}
