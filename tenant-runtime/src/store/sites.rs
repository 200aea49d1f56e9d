//! Sites (or projects): the resource scopes of documents, tickets, users and tokens.

use crate::conn::TenantConn;

use crate::error::RuntimeError;

pub async fn create(client: &TenantConn, code: &str, name: &str) -> Result<(), RuntimeError> {
    client
        .execute(
            "insert into sites (code, name) values ($1, $2)",
            &[&code, &name],
        )
        .await
        .map_err(|e| match RuntimeError::constraint_of(&e) {
            Some("sites_pkey") => RuntimeError::Conflict(format!("site '{code}' exists")),
            Some("sites_code_check") => RuntimeError::InvalidInput(
                "a site code is 1 to 40 lowercase letters, digits, '_' or '-'".into(),
            ),
            _ => RuntimeError::query("creating a site", e),
        })?;
    Ok(())
}

/// (code, name) of every site.
pub async fn list(client: &TenantConn) -> Result<Vec<(String, String)>, RuntimeError> {
    Ok(client
        .query("select code, name from sites order by code", &[])
        .await
        .map_err(|e| RuntimeError::query("listing sites", e))?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}

/// The first of `codes` that is not a site, if any (one query).
pub async fn first_unknown(
    client: &TenantConn,
    codes: &[String],
) -> Result<Option<String>, RuntimeError> {
    if codes.is_empty() {
        return Ok(None);
    }
    Ok(client
        .query_opt(
            "select c from unnest($1::text[]) with ordinality as u(c, n)
              where not exists (select 1 from sites s where s.code = u.c)
              order by n limit 1",
            &[&codes],
        )
        .await
        .map_err(|e| RuntimeError::query("checking sites", e))?
        .map(|r| r.get(0)))
}

/// `InvalidInput` naming the first of `codes` that is not a site.
pub async fn require_all(client: &TenantConn, codes: &[String]) -> Result<(), RuntimeError> {
    match first_unknown(client, codes).await? {
        Some(c) => Err(RuntimeError::InvalidInput(format!("unknown site '{c}'"))),
        None => Ok(()),
    }
}
