//! Operators of the control plane: their API tokens (only a SHA-256 of each is kept in the
//! catalog) and the audit trail of everything they do through the operator API.

use portico_core::tokens::{generate, presented_digest};
use secrecy::SecretString;
use serde::Serialize;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::catalog::Catalog;
use crate::error::{PlatformError, Result};

pub const OPERATOR_TOKEN_PREFIX: &str = "pot_";

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct OperatorToken {
    pub id: Uuid,
    pub name: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub revoked_at: Option<OffsetDateTime>,
}

/// The operator behind a valid token.
#[derive(Debug, Clone)]
pub struct OperatorIdentity {
    pub token_id: Uuid,
    pub name: String,
}

/// One audit entry.
pub struct AuditEntry<'a> {
    pub actor: &'a str,
    pub action: &'a str,
    pub target: Option<&'a str>,
    pub outcome: &'a str,
    pub client_ip: Option<std::net::IpAddr>,
    pub request_id: &'a str,
    pub detail: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct AuditRow {
    pub id: i64,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    pub actor: String,
    pub action: String,
    pub target: Option<String>,
    pub outcome: String,
    pub client_ip: Option<String>,
    pub request_id: String,
    pub detail: Option<serde_json::Value>,
}

fn validate_name(name: &str) -> Result<&str> {
    let name = name.trim();
    if name.is_empty() || name.len() > 100 || name.chars().any(char::is_control) {
        return Err(PlatformError::InvalidInput(
            "a token name must be 1 to 100 printable characters".into(),
        ));
    }
    Ok(name)
}

impl Catalog {
    /// Creates an operator token; the secret is returned once and never stored.
    pub async fn create_operator_token(
        &self,
        name: &str,
        expires_at: Option<OffsetDateTime>,
    ) -> Result<(OperatorToken, SecretString)> {
        let name = validate_name(name)?;
        let (secret, hash) = generate(OPERATOR_TOKEN_PREFIX);
        let row = sqlx::query_as(
            "insert into operator_tokens (id, name, token_hash, expires_at)
             values ($1, $2, $3, $4)
             returning id, name, created_at, expires_at, revoked_at",
        )
        .bind(Uuid::new_v4())
        .bind(name)
        .bind(hash)
        .bind(expires_at)
        .fetch_one(self.pool())
        .await
        .map_err(|e| match crate::catalog::constraint(&e) {
            Some("operator_tokens_active_name_key") => {
                PlatformError::Conflict(format!("an active operator token named '{name}' exists"))
            }
            _ => PlatformError::catalog("creating an operator token", e),
        })?;
        Ok((row, secret))
    }

    pub async fn list_operator_tokens(&self) -> Result<Vec<OperatorToken>> {
        sqlx::query_as(
            "select id, name, created_at, expires_at, revoked_at
               from operator_tokens order by created_at, name",
        )
        .fetch_all(self.pool())
        .await
        .map_err(|e| PlatformError::catalog("listing operator tokens", e))
    }

    pub async fn revoke_operator_token(&self, name: &str) -> Result<OperatorToken> {
        sqlx::query_as(
            "update operator_tokens set revoked_at = now()
              where name = $1 and revoked_at is null
             returning id, name, created_at, expires_at, revoked_at",
        )
        .bind(name)
        .fetch_optional(self.pool())
        .await
        .map_err(|e| PlatformError::catalog("revoking an operator token", e))?
        .ok_or_else(|| {
            PlatformError::InvalidInput(format!("no active operator token named '{name}'"))
        })
    }

    /// The operator behind a presented token, if it is well formed, known, not revoked and
    /// not expired.
    pub async fn operator_by_token(&self, presented: &str) -> Result<Option<OperatorIdentity>> {
        let Some(digest) = presented_digest(OPERATOR_TOKEN_PREFIX, presented) else {
            return Ok(None);
        };
        let row: Option<(Uuid, String)> = sqlx::query_as(
            "select id, name from operator_tokens
              where token_hash = $1 and revoked_at is null
                and (expires_at is null or expires_at > now())",
        )
        .bind(digest)
        .fetch_optional(self.pool())
        .await
        .map_err(|e| PlatformError::catalog("checking an operator token", e))?;
        Ok(row.map(|(token_id, name)| OperatorIdentity { token_id, name }))
    }

    /// Appends an audit entry (a synchronous commit: the entry exists before the answer).
    pub async fn audit(&self, e: AuditEntry<'_>) -> Result<()> {
        sqlx::query(
            "insert into operator_audit
                 (actor, action, target, outcome, client_ip, request_id, detail)
             values ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(e.actor)
        .bind(e.action)
        .bind(e.target)
        .bind(e.outcome)
        .bind(e.client_ip.map(ipnet::IpNet::from))
        .bind(e.request_id)
        .bind(e.detail)
        .execute(self.pool())
        .await
        .map_err(|e| PlatformError::catalog("writing the audit trail", e))?;
        Ok(())
    }

    /// The newest audit entries, newest first.
    pub async fn audit_entries(&self, limit: i64) -> Result<Vec<AuditRow>> {
        sqlx::query_as(
            "select id, at, actor, action, target, outcome, host(client_ip) as client_ip,
                    request_id, detail
               from operator_audit order by id desc limit $1",
        )
        .bind(limit)
        .fetch_all(self.pool())
        .await
        .map_err(|e| PlatformError::catalog("reading the audit trail", e))
    }
}

impl Catalog {
    /// The slug of the tenant a provisioning run belongs to.
    pub async fn run_tenant_slug(&self, run: Uuid) -> Result<Option<String>> {
        sqlx::query_scalar(
            "select t.slug from provisioning_runs r join tenants t on t.id = r.tenant_id
              where r.id = $1",
        )
        .bind(run)
        .fetch_optional(self.pool())
        .await
        .map_err(|e| PlatformError::catalog("looking up a run", e))
    }
}
