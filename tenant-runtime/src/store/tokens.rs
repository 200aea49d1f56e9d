//! Tenant API tokens. A token is `ptk_` followed by 43 base64url characters (256 random bits);
//! only its SHA-256 is stored, in the tenant's own database, so a token can only be checked on
//! its own tenant's host. A token this long needs no slow hash: guessing is hopeless, and the
//! look-up is one indexed equality on the digest.

use crate::conn::TenantConn;
use crate::ids::UserId;
use secrecy::SecretString;
use serde::Serialize;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::error::RuntimeError;
use crate::store::roles::{Permission, Permissions};

pub const TOKEN_PREFIX: &str = "ptk_";

pub use portico_core::tokens::{generate, presented_digest};

use super::roles::RoleName;

/// A token's record (never its secret).
#[derive(Debug, Clone, Serialize)]
pub struct TokenInfo {
    pub id: Uuid,
    pub name: String,
    pub role: RoleName,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub revoked_at: Option<OffsetDateTime>,
}

/// The identity behind a valid token: its own role and sites, or, for a token that acts for a
/// user, that user's (and only while the user is active).
#[derive(Debug, Clone)]
pub struct TokenCaller {
    pub token_id: Uuid,
    pub name: String,
    pub role: RoleName,
    pub user_id: Option<UserId>,
    pub email: Option<String>,
    pub permissions: Permissions,
    pub sites: Option<Vec<String>>,
}

fn info(row: &tokio_postgres::Row) -> Result<TokenInfo, RuntimeError> {
    let role: String = row.get(2);
    Ok(TokenInfo {
        id: row.get(0),
        name: row.get(1),
        role: RoleName::parse(&role).ok_or_else(|| RuntimeError::Query {
            operation: "reading a token",
            message: format!("unknown role '{role}'"),
        })?,
        created_at: row.get(3),
        expires_at: row.get(4),
        revoked_at: row.get(5),
    })
}

/// Creates a token; the secret is returned once and never stored.
pub async fn create(
    client: &TenantConn,
    name: &str,
    role: RoleName,
    expires_at: Option<OffsetDateTime>,
) -> Result<(TokenInfo, SecretString), RuntimeError> {
    create_scoped(client, name, role, expires_at, None, None).await
}

/// Creates a token that acts for `user` (with that user's role and sites) or, without a user,
/// with `role` limited to `sites` (`None`: every site).
pub async fn create_scoped(
    client: &TenantConn,
    name: &str,
    role: RoleName,
    expires_at: Option<OffsetDateTime>,
    user: Option<UserId>,
    sites: Option<Vec<String>>,
) -> Result<(TokenInfo, SecretString), RuntimeError> {
    let name = name.trim();
    if name.is_empty() || name.len() > 100 || name.chars().any(char::is_control) {
        return Err(RuntimeError::InvalidInput(
            "a token name must be 1 to 100 printable characters".into(),
        ));
    }
    if let Some(sites) = &sites {
        crate::store::sites::require_all(client, sites).await?;
    }
    let (secret, hash) = generate(TOKEN_PREFIX);
    let row = client
        .query_one(
            "insert into api_tokens (id, name, role, token_hash, expires_at, user_id, site_scope)
             values ($1, $2, $3, $4, $5, $6, $7)
             returning id, name, role, created_at, expires_at, revoked_at",
            &[
                &Uuid::new_v4(),
                &name,
                &role.as_str(),
                &hash,
                &expires_at,
                &user,
                &sites,
            ],
        )
        .await
        .map_err(|e| match RuntimeError::constraint_of(&e) {
            Some("api_tokens_active_name_key") => {
                RuntimeError::Conflict(format!("an active token named '{name}' already exists"))
            }
            Some("api_tokens_role_fkey") => {
                RuntimeError::InvalidInput(format!("there is no role '{role}'"))
            }
            Some("api_tokens_user_id_fkey") => {
                RuntimeError::InvalidInput("there is no such user".into())
            }
            _ => RuntimeError::query("creating a token", e),
        })?;
    Ok((info(&row)?, secret))
}

pub async fn list(client: &TenantConn) -> Result<Vec<TokenInfo>, RuntimeError> {
    client
        .query(
            "select id, name, role, created_at, expires_at, revoked_at
               from api_tokens order by created_at, name",
            &[],
        )
        .await
        .map_err(|e| RuntimeError::query("listing tokens", e))?
        .iter()
        .map(info)
        .collect()
}

/// Revokes the active token named `name`.
pub async fn revoke(client: &TenantConn, name: &str) -> Result<TokenInfo, RuntimeError> {
    let row = client
        .query_opt(
            "update api_tokens set revoked_at = now()
              where name = $1 and revoked_at is null
             returning id, name, role, created_at, expires_at, revoked_at",
            &[&name],
        )
        .await
        .map_err(|e| RuntimeError::query("revoking a token", e))?
        .ok_or_else(|| RuntimeError::NotFound(format!("no active token named '{name}'")))?;
    info(&row)
}

/// What [`authenticate`] runs (`$1`: the presented token's digest).
pub const AUTHENTICATE: &str = "select t.id, t.name, coalesce(u.role, t.role), t.user_id, u.email,
            case when t.user_id is null then t.site_scope else u.site_scope end,
            array(select p.permission from role_permissions p
                   where p.role = coalesce(u.role, t.role))
       from api_tokens t left join users u on u.id = t.user_id
      where t.token_hash = $1 and t.revoked_at is null
        and (t.expires_at is null or t.expires_at > now())
        and (t.user_id is null or u.status = 'active')";

/// The caller behind a presented token's digest: active (not revoked, not expired) tokens only,
/// and for a user's token, active users only.
pub async fn authenticate(
    client: &crate::conn::TenantConn,
    digest: &[u8],
) -> Result<Option<TokenCaller>, RuntimeError> {
    let row = client
        .query_opt(AUTHENTICATE, &[&digest])
        .await
        .map_err(|e| RuntimeError::query("checking a token", e))?;
    Ok(row.and_then(|r| {
        let role: String = r.get(2);
        let perms: Vec<String> = r.get(6);
        Some(TokenCaller {
            token_id: r.get(0),
            name: r.get(1),
            role: RoleName::parse(&role)?,
            user_id: r.get(3),
            email: r.get(4),
            sites: r.get(5),
            permissions: perms.iter().filter_map(|p| Permission::parse(p)).collect(),
        })
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_well_formed_tokens_have_a_digest() {
        let (secret, hash) = generate(TOKEN_PREFIX);
        use secrecy::ExposeSecret;
        assert_eq!(
            presented_digest(TOKEN_PREFIX, secret.expose_secret()),
            Some(hash)
        );
        let s = secret.expose_secret();
        for bad in [
            "",
            "ptk_",
            &s[4..],
            &s[..s.len() - 1],
            &format!("{s}A"),
            &s.replace("ptk_", "pop_"),
            "ptk_!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!",
        ] {
            assert_eq!(presented_digest(TOKEN_PREFIX, bad), None, "{bad:?}");
        }
    }
}
