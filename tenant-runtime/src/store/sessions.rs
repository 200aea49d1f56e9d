//! Browser sessions and pre-login flows.
//!
//! A browser holds at most two cookies per tenant host, both `__Host-` prefixed (so host-only,
//! `Path=/`, `Secure`): the session (`SameSite=Lax`) and, before sign-in, the flow
//! (`SameSite=None`, because the SAML IdP returns with a cross-site POST that would not carry a
//! Lax cookie). Cookie values are 256 random bits; the database keeps only their SHA-256.

use crate::ids::UserId;
use std::net::IpAddr;

use crate::conn::TenantConn;
use secrecy::{ExposeSecret, SecretString};
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

use crate::error::RuntimeError;
use crate::store::tokens;

/// How long a pre-login flow (and each sign-in request it starts) stays usable.
pub const FLOW_TTL: Duration = Duration::minutes(15);

/// A fresh cookie value and its digest: the same 256-bit secrets as API tokens, without a
/// prefix.
pub fn new_secret() -> (SecretString, Vec<u8>) {
    tokens::generate("")
}

/// The digest of a presented cookie value, or `None` if it is not shaped like ours.
pub fn presented(value: &str) -> Option<Vec<u8>> {
    tokens::presented_digest("", value)
}

/// A CSRF token (kept in the session or flow row, embedded in forms).
pub fn random_token() -> String {
    new_secret().0.expose_secret().to_owned()
}

/// Constant-time comparison of a presented CSRF token (or TOTP code) with the expected one.
pub fn csrf_matches(expected: &str, presented: &str) -> bool {
    aws_lc_rs::constant_time::verify_slices_are_equal(expected.as_bytes(), presented.as_bytes())
        .is_ok()
}

// ---- flows -----------------------------------------------------------------------------------

pub struct Flow {
    pub id_hash: Vec<u8>,
    pub csrf_token: String,
}

pub async fn create_flow(client: &TenantConn) -> Result<(Flow, SecretString), RuntimeError> {
    let (value, hash) = new_secret();
    let csrf = random_token();
    client
        .execute(
            "insert into login_flows (id_hash, csrf_token, expires_at) values ($1, $2, $3)",
            &[&hash, &csrf, &(OffsetDateTime::now_utc() + FLOW_TTL)],
        )
        .await
        .map_err(|e| RuntimeError::query("starting a sign-in flow", e))?;
    // Expired flows of anyone are cleaned up as we go.
    client
        .execute(
            "delete from login_flows where expires_at < now() - interval '1 hour'",
            &[],
        )
        .await
        .map_err(|e| RuntimeError::query("cleaning sign-in flows", e))?;
    Ok((
        Flow {
            id_hash: hash,
            csrf_token: csrf,
        },
        value,
    ))
}

pub async fn get_flow(client: &TenantConn, hash: &[u8]) -> Result<Option<Flow>, RuntimeError> {
    let row = client
        .query_opt(
            "select id_hash, csrf_token from login_flows where id_hash = $1 and expires_at > now()",
            &[&hash],
        )
        .await
        .map_err(|e| RuntimeError::query("reading a sign-in flow", e))?;
    Ok(row.map(|r| Flow {
        id_hash: r.get(0),
        csrf_token: r.get(1),
    }))
}

pub async fn end_flow(client: &TenantConn, hash: &[u8]) -> Result<(), RuntimeError> {
    client
        .execute("delete from login_flows where id_hash = $1", &[&hash])
        .await
        .map_err(|e| RuntimeError::query("ending a sign-in flow", e))?;
    Ok(())
}

/// A pending SSO request of a flow (OIDC `state`, or SAML AuthnRequest `ID`).
pub struct PendingRequest {
    pub nonce: Option<String>,
    pub pkce_verifier: Option<SecretString>,
    pub return_to: String,
}

pub async fn add_request(
    client: &TenantConn,
    id: &str,
    flow_hash: &[u8],
    connection_id: Uuid,
    nonce: Option<&str>,
    pkce_verifier: Option<&SecretString>,
    return_to: &str,
) -> Result<(), RuntimeError> {
    client
        .execute(
            "insert into login_requests
                 (id, flow_hash, connection_id, nonce, pkce_verifier, return_to, expires_at)
             values ($1, $2, $3, $4, $5, $6, $7)",
            &[
                &id,
                &flow_hash,
                &connection_id,
                &nonce,
                &pkce_verifier.map(|v| v.expose_secret().to_owned()),
                &return_to,
                &(OffsetDateTime::now_utc() + FLOW_TTL),
            ],
        )
        .await
        .map_err(|e| RuntimeError::query("recording a sign-in request", e))?;
    Ok(())
}

/// Consumes (deletes) the pending request `id` if it belongs to this flow and connection and
/// has not expired: single use, bound to the browser.
pub async fn take_request(
    client: &TenantConn,
    id: &str,
    flow_hash: &[u8],
    connection_id: Uuid,
) -> Result<Option<PendingRequest>, RuntimeError> {
    let row = client
        .query_opt(
            "delete from login_requests
              where id = $1 and flow_hash = $2 and connection_id = $3 and expires_at > now()
              returning connection_id, nonce, pkce_verifier, return_to",
            &[&id, &flow_hash, &connection_id],
        )
        .await
        .map_err(|e| RuntimeError::query("consuming a sign-in request", e))?;
    Ok(row.map(|r| PendingRequest {
        nonce: r.get(1),
        pkce_verifier: r.get::<_, Option<String>>(2).map(SecretString::from),
        return_to: r.get(3),
    }))
}

/// The ids of this flow's pending requests for a connection (SAML `InResponseTo` candidates).
pub async fn pending_ids(
    client: &TenantConn,
    flow_hash: &[u8],
    connection_id: Uuid,
) -> Result<Vec<String>, RuntimeError> {
    Ok(client
        .query(
            "select id from login_requests
              where flow_hash = $1 and connection_id = $2 and expires_at > now()",
            &[&flow_hash, &connection_id],
        )
        .await
        .map_err(|e| RuntimeError::query("reading sign-in requests", e))?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

// ---- sessions --------------------------------------------------------------------------------

/// Session lifetimes.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub idle: Duration,
    pub absolute: Duration,
}

#[derive(Debug, Clone)]
pub struct Session {
    pub id_hash: Vec<u8>,
    pub user_id: UserId,
    pub csrf_token: String,
    pub mfa_pending: bool,
}

/// Creates a session for `user_id` (always a fresh id: rotation at every login step).
pub async fn create(
    client: &TenantConn,
    user_id: UserId,
    connection_id: Option<Uuid>,
    mfa_pending: bool,
    timeouts: Timeouts,
    client_ip: Option<IpAddr>,
) -> Result<(Session, SecretString), RuntimeError> {
    let (value, hash) = new_secret();
    let csrf = random_token();
    client
        .execute(
            "insert into sessions
                 (id_hash, user_id, csrf_token, mfa_pending, connection_id, expires_at, client_ip)
             values ($1, $2, $3, $4, $5, $6, $7::text::inet)",
            &[
                &hash,
                &user_id,
                &csrf,
                &mfa_pending,
                &connection_id,
                &(OffsetDateTime::now_utc() + timeouts.absolute),
                &client_ip.map(|ip| ip.to_string()),
            ],
        )
        .await
        .map_err(|e| RuntimeError::query("creating a session", e))?;
    client
        .execute("delete from sessions where expires_at < now()", &[])
        .await
        .map_err(|e| RuntimeError::query("cleaning sessions", e))?;
    Ok((
        Session {
            id_hash: hash,
            user_id,
            csrf_token: csrf,
            mfa_pending,
        },
        value,
    ))
}

/// How stale `last_seen_at` may get before a request writes it again: the idle timeout is
/// enforced to within this, and most requests are a read only.
const TOUCH_AFTER_S: f64 = 60.0;

/// The live session behind a cookie: not expired (absolute), not idle too long, of an active
/// user. Refreshes `last_seen_at` when it is more than a minute old.
pub async fn current(
    client: &TenantConn,
    hash: &[u8],
    idle: Duration,
) -> Result<Option<Session>, RuntimeError> {
    let idle_s = idle.whole_seconds() as f64;
    let row = client
        .query_opt(
            "select s.id_hash, s.user_id, s.csrf_token, s.mfa_pending, s.connection_id,
                    s.last_seen_at < now() - make_interval(secs => $3)
               from sessions s join users u on u.id = s.user_id
              where s.id_hash = $1 and u.status = 'active' and s.expires_at > now()
                and s.last_seen_at > now() - make_interval(secs => $2)",
            &[&hash, &idle_s, &TOUCH_AFTER_S],
        )
        .await
        .map_err(|e| RuntimeError::query("reading a session", e))?;
    let Some(r) = row else { return Ok(None) };
    if r.get::<_, bool>(5) {
        let touched = client
            .execute(
                "update sessions set last_seen_at = now() where id_hash = $1",
                &[&hash],
            )
            .await
            .map_err(|e| RuntimeError::query("touching a session", e));
        match touched {
            // A move froze the tenant's writes: the read goes on; the next request touches.
            Ok(_) | Err(RuntimeError::ReadOnly { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(Some(Session {
        id_hash: r.get(0),
        user_id: r.get(1),
        csrf_token: r.get(2),
        mfa_pending: r.get(3),
    }))
}

pub async fn end(client: &TenantConn, hash: &[u8]) -> Result<(), RuntimeError> {
    client
        .execute("delete from sessions where id_hash = $1", &[&hash])
        .await
        .map_err(|e| RuntimeError::query("ending a session", e))?;
    Ok(())
}
