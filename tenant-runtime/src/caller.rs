//! Who is calling: the [`Authenticated`] extractor (an API token of the resolved tenant, or —
//! for safe methods only — a browser session), the [`Caller`] with the permissions and sites
//! of its role read on every request, and the permission checks and audit helpers every
//! handler uses.

use crate::catalog::TenantRoute;
use crate::http::ErrorCode;
use crate::http::Problem;
use crate::identity::cookies::{self, SESSION_COOKIE};
use crate::ids::UserId;
use crate::pools::TenantConn;
use crate::state::Runtime;
use crate::store::roles::{Permission, Permissions, RoleName};
use crate::store::{audit, sessions, tokens, users};
use axum::extract::{FromRef, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use serde::Serialize;
use std::net::IpAddr;
use std::sync::Arc;

/// How a caller authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CallerKind {
    ApiToken,
    /// A browser session (safe methods only: cookies never authorise a state change here).
    User,
}

/// Who is calling, with the permissions and sites of their role, read from the tenant's
/// database on every request (so a revoked role or a deactivated user counts at once).
#[derive(Debug, Clone, Serialize)]
pub struct Caller {
    pub kind: CallerKind,
    /// The token's name, or the user's e-mail.
    pub name: String,
    pub email: Option<String>,
    pub user_id: Option<UserId>,
    pub token_id: Option<uuid::Uuid>,
    pub role: RoleName,
    pub permissions: Vec<Permission>,
    /// Sites this caller is limited to; `None`: every site.
    pub sites: Option<Vec<String>>,
    #[serde(skip)]
    pub perms: Permissions,
}

impl Caller {
    /// The actor recorded in the audit log: the user's e-mail (signed in, or through a token
    /// acting for them), else `token:<name>`.
    pub fn name(&self) -> String {
        match (self.email.as_ref().filter(|e| !e.is_empty()), self.kind) {
            (Some(email), _) => email.clone(),
            (None, CallerKind::ApiToken) => format!("token:{}", self.name),
            (None, CallerKind::User) => self.name.clone(),
        }
    }

    /// The principal an `Idempotency-Key` or an approval belongs to: the user (whichever of
    /// their tokens or sessions is used), else the token.
    pub fn principal(&self) -> String {
        match (self.user_id, self.token_id) {
            (Some(u), _) => format!("user:{u}"),
            (None, Some(t)) => format!("token:{t}"),
            (None, None) => self.name(),
        }
    }

    pub fn can(&self, p: Permission) -> bool {
        self.perms.contains(p)
    }

    /// `403 forbidden` unless the caller holds `p`.
    pub fn require(&self, p: Permission) -> Result<(), Problem> {
        if self.can(p) {
            Ok(())
        } else {
            Err(Problem::new(
                StatusCode::FORBIDDEN,
                ErrorCode::Forbidden,
                "You do not have the permission this needs",
            )
            .detail(format!("This needs the '{}' permission", p.as_str())))
        }
    }

    /// Whether the caller may see things of `site` (`None`: organization-wide things, which
    /// site-limited callers do not see).
    pub fn sees_site(&self, site: Option<&str>) -> bool {
        match (&self.sites, site) {
            (None, _) => true,
            (Some(allowed), Some(s)) => allowed.iter().any(|a| a == s),
            (Some(_), None) => false,
        }
    }
}

/// A request of an authenticated caller of the resolved tenant, with the connection its
/// credentials were checked on (handlers reuse it).
pub struct Authenticated {
    pub tenant: Arc<TenantRoute>,
    pub caller: Caller,
    pub conn: TenantConn,
    /// The true client address (behind trusted proxies), for the audit log.
    pub ip: Option<IpAddr>,
}

impl Authenticated {
    /// `e` as an act of this caller: client address, the request's id, and the acting user (by
    /// id) in the details beside the e-mail they had at that moment (the actor).
    pub fn stamp<'a>(
        &self,
        mut e: audit::Event<'a>,
        request_id: Option<&'a str>,
    ) -> audit::Event<'a> {
        e.client_ip = self.ip;
        e.request_id = request_id;
        if let (Some(user), serde_json::Value::Object(map)) = (self.caller.user_id, &mut e.details)
        {
            map.insert("actor_user_id".into(), user.to_string().into());
        }
        e
    }

    /// An audit event by this caller, with client address and request id filled in.
    pub async fn audit(
        &self,
        event_type: audit::EventType,
        target: Option<&str>,
        success: bool,
        reason: Option<&str>,
        details: serde_json::Value,
    ) -> Result<(), Problem> {
        let actor = self.caller.name();
        let request_id = crate::http::RequestId::current().map(|r| r.0);
        let mut e = audit::Event::new(event_type, &actor, success);
        e.target = target;
        e.reason = reason;
        e.details = details;
        audit::record(&self.conn, &self.stamp(e, request_id.as_deref())).await?;
        Ok(())
    }

    /// Records a successful action of this caller on `target`.
    pub async fn record(
        &self,
        event_type: audit::EventType,
        target: &str,
        details: serde_json::Value,
    ) -> Result<(), Problem> {
        self.audit(event_type, Some(target), true, None, details)
            .await
    }

    /// `problem`, after recording it as `permission_denied` with `reason` (a refusal of
    /// something the caller may not do); if the audit fails, that error instead.
    pub async fn refuse(&self, problem: Problem, reason: &str) -> Problem {
        let details = serde_json::json!({"code": problem.code});
        match self
            .audit(
                audit::EventType::PermissionDenied,
                None,
                false,
                Some(reason),
                details,
            )
            .await
        {
            Ok(()) => problem,
            Err(e) => e,
        }
    }

    /// `403` unless the caller holds `p`; a refusal is audited.
    pub async fn require(&self, p: Permission) -> Result<(), Problem> {
        if let Err(problem) = self.caller.require(p) {
            self.audit(
                audit::EventType::PermissionDenied,
                None,
                false,
                Some(p.as_str()),
                serde_json::json!({}),
            )
            .await?;
            return Err(problem);
        }
        Ok(())
    }

    /// The tenant's key reference.
    pub fn key_ref(&self) -> Result<portico_core::keys::TenantKeyRef, Problem> {
        Ok(self.conn.key_ref().clone())
    }
}

impl<S> FromRequestParts<S> for Authenticated
where
    Runtime: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        let rt = Runtime::from_ref(state);
        let tenant = parts
            .extensions
            .get::<Arc<TenantRoute>>()
            .cloned()
            .ok_or_else(Problem::not_found)?;
        let Some(value) = parts.headers.get(header::AUTHORIZATION) else {
            return session_caller(&rt, parts, tenant).await;
        };
        let digest = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .and_then(|t| tokens::presented_digest(tokens::TOKEN_PREFIX, t.trim()))
            .ok_or_else(Problem::invalid_token)?;
        let conn = rt.pools.get(&tenant).await?;
        let caller = tokens::authenticate(&conn, &digest)
            .await?
            .ok_or_else(Problem::invalid_token)?;
        Ok(Self {
            tenant,
            caller: Caller {
                kind: CallerKind::ApiToken,
                name: caller.name,
                email: caller.email,
                user_id: caller.user_id,
                token_id: Some(caller.token_id),
                role: caller.role,
                permissions: caller.permissions.list(),
                sites: caller.sites,
                perms: caller.permissions,
            },
            conn,
            ip: parts.extensions.get::<crate::http::ClientIp>().map(|c| c.0),
        })
    }
}

/// A browser session as the caller: `GET`/`HEAD` only, full (not waiting for a second factor)
/// sessions of active users only.
async fn session_caller(
    rt: &Runtime,
    parts: &Parts,
    tenant: Arc<TenantRoute>,
) -> Result<Authenticated, Problem> {
    let safe = matches!(
        parts.method,
        axum::http::Method::GET | axum::http::Method::HEAD
    );
    let hash = cookies::cookie_digest(&parts.headers, SESSION_COOKIE);
    let (Some(hash), true) = (hash, safe) else {
        return Err(Problem::unauthenticated());
    };
    let conn = rt.pools.get(&tenant).await?;
    let session = sessions::current(&conn, &hash, rt.identity.timeouts.idle)
        .await?
        .filter(|s| !s.mfa_pending)
        .ok_or_else(Problem::unauthenticated)?;
    let (user, perms) = users::with_permissions(&conn, session.user_id)
        .await?
        .filter(|(u, _)| u.active)
        .ok_or_else(Problem::unauthenticated)?;
    // SSO users whose IdP vouched for no e-mail have none: they act as `user:<id>`.
    let email = Some(user.email).filter(|e| !e.is_empty());
    Ok(Authenticated {
        tenant,
        caller: Caller {
            kind: CallerKind::User,
            name: email.clone().unwrap_or_else(|| format!("user:{}", user.id)),
            email,
            user_id: Some(user.id),
            token_id: None,
            role: user.role,
            permissions: perms.list(),
            sites: user.site_scope,
            perms,
        },
        conn,
        ip: parts.extensions.get::<crate::http::ClientIp>().map(|c| c.0),
    })
}
