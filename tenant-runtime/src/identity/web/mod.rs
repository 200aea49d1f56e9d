//! The browser side of sign-in on tenant hosts (`/login`, `/sso/…`, `/logout`, `/invite/…`,
//! `/account/mfa`, `/`) and home-realm discovery on the shared login host.
//!
//! The tenant is fixed by the host before any IdP says anything: every handler works on the
//! resolved tenant's database, with that tenant's connections, and builds its SP entity id, ACS
//! URL and OIDC redirect URI from that host. Every failed sign-in is audited with its reason;
//! the browser sees one generic page with the request id.

//!
//! One module per flow: [`local`] (password and TOTP sign-in), [`mfa`],
//! [`session`] (home, sign-out), [`invitations`], [`sso`], [`discovery`]; this module holds
//! the request type they share ([`Web`]) and the failure path.

pub mod discovery;
pub mod invitations;
pub mod local;
pub mod mfa;
pub mod session;
pub mod sso;

use super::cookies::*;
pub use super::cookies::{FLOW_COOKIE, SESSION_COOKIE, cookie_digest};
use super::pages::{self};
use super::state::IdentityState;
use crate::catalog::TenantRoute;
use crate::error::RuntimeError;
use crate::http::ErrorCode;
use crate::http::{ClientIp, Problem, RequestId};
use crate::ids::UserId;
use crate::pools::TenantConn;
use crate::state::Runtime;
use crate::store::audit;
use crate::store::sessions::{self, Session};
use crate::tenancy::request_host;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use portico_core::Hostname;
use portico_core::keys::TenantKeyRef;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use std::net::IpAddr;
use std::sync::Arc;
use time::OffsetDateTime;
use uuid::Uuid;

/// One browser request on a tenant host.
pub struct Web {
    pub rt: Runtime,
    pub tenant: Arc<TenantRoute>,
    pub host: Hostname,
    pub ip: Option<IpAddr>,
    pub request_id: String,
    pub headers: HeaderMap,
}

impl FromRequestParts<Runtime> for Web {
    type Rejection = Response;
    async fn from_request_parts(parts: &mut Parts, rt: &Runtime) -> Result<Self, Response> {
        let tenant = parts
            .extensions
            .get::<Arc<TenantRoute>>()
            .cloned()
            .ok_or_else(|| Problem::not_found().into_response())?;
        let host = request_host(&parts.headers).map_err(IntoResponse::into_response)?;
        Ok(Self {
            rt: rt.clone(),
            tenant,
            host,
            ip: parts.extensions.get::<ClientIp>().map(|c| c.0),
            request_id: RequestId::current()
                .map(|r| r.0)
                .unwrap_or_else(|| Uuid::new_v4().to_string()),
            headers: parts.headers.clone(),
        })
    }
}

/// Why a sign-in failed (for the audit log).
struct Failure {
    reason: String,
    actor: String,
    connection: Option<String>,
}

impl Failure {
    fn new(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
            actor: "-".into(),
            connection: None,
        }
    }
    fn on(mut self, connection: &str) -> Self {
        self.connection = Some(connection.to_owned());
        self
    }
    fn by(mut self, actor: &str) -> Self {
        self.actor = actor.to_owned();
        self
    }
}

impl From<RuntimeError> for Failure {
    fn from(e: RuntimeError) -> Self {
        tracing::error!(error = %e, "sign-in failed on an internal error");
        Failure::new("internal_error")
    }
}

impl Web {
    fn identity(&self) -> &IdentityState {
        &self.rt.identity
    }

    fn origin(&self) -> String {
        self.identity().origin(&self.host)
    }

    async fn conn(&self) -> Result<TenantConn, Problem> {
        Ok(self.rt.pools.get(&self.tenant).await?)
    }

    fn cookie(&self, name: &str) -> Option<Vec<u8>> {
        cookie_digest(&self.headers, name)
    }

    fn event<'a>(
        &'a self,
        event_type: audit::EventType,
        actor: &'a str,
        ok: bool,
    ) -> audit::Event<'a> {
        let mut e = audit::Event::new(event_type, actor, ok);
        e.client_ip = self.ip;
        e.request_id = Some(&self.request_id);
        e
    }

    /// The answer to a sign-in attempt: its own on success; on failure, the failure is audited
    /// and the browser gets the generic page.
    /// Runs one sign-in step on a pooled connection of the tenant; a failed step is audited
    /// (or counted, past the first few) and answered as a failed sign-in.
    async fn attempt(
        &self,
        step: impl AsyncFnOnce(&Web, &mut TenantConn) -> Result<Response, Failure>,
    ) -> Result<Response, Problem> {
        let mut client = self.conn().await?;
        Ok(match step(self, &mut client).await {
            Ok(r) => r,
            Err(f) => self.fail(&client, f).await,
        })
    }

    async fn fail(&self, client: &TenantConn, f: Failure) -> Response {
        tracing::info!(reason = %f.reason, connection = ?f.connection, "sign-in failed");
        metrics::counter!("portico_login_failures_total").increment(1);
        // Anyone can fail a sign-in: past the first few per address, reason and minute, the
        // failures are counted and summarised instead of written one by one.
        let full = self
            .rt
            .failures
            .note(
                &self.tenant,
                self.ip,
                audit::EventType::LoginFailure,
                &f.reason,
                OffsetDateTime::now_utc(),
            )
            .await;
        if full {
            let mut e = self.event(audit::EventType::LoginFailure, &f.actor, false);
            e.reason = Some(&f.reason);
            e.target = f.connection.as_deref();
            if let Err(err) = audit::record(client, &e).await {
                tracing::error!(error = %err, "could not audit a failed sign-in");
            }
        }
        pages::sign_in_failed(&self.request_id)
    }

    /// Encrypts a secret of this tenant (TOTP seed) under the tenant's key.
    async fn seal(&self, plaintext: &[u8]) -> Result<Vec<u8>, RuntimeError> {
        Ok(self
            .rt
            .identity
            .keyring
            .encrypt_for_tenant(self.tenant.tenant_id, &self.key()?, plaintext)
            .await?)
    }

    /// Decrypts what [`Web::seal`] (or the CLI, for OIDC client secrets) stored.
    async fn open(&self, ciphertext: &[u8]) -> Result<Vec<u8>, RuntimeError> {
        Ok(self
            .rt
            .identity
            .keyring
            .decrypt_for_tenant(self.tenant.tenant_id, &self.key()?, ciphertext)
            .await?)
    }

    fn key(&self) -> Result<TenantKeyRef, RuntimeError> {
        self.tenant
            .placement
            .as_ref()
            .map(|p| TenantKeyRef::new(p.key_id.clone()))
            .ok_or_else(|| RuntimeError::TenantDatabase("tenant has no placement".into()))
    }

    async fn session(&self, client: &TenantConn) -> Result<Option<Session>, RuntimeError> {
        match self.cookie(SESSION_COOKIE) {
            Some(hash) => sessions::current(client, &hash, self.identity().timeouts.idle).await,
            None => Ok(None),
        }
    }

    /// The browser's live flow, if it has one.
    async fn existing_flow(
        &self,
        client: &TenantConn,
    ) -> Result<Option<sessions::Flow>, RuntimeError> {
        match self.cookie(FLOW_COOKIE) {
            Some(hash) => sessions::get_flow(client, &hash).await,
            None => Ok(None),
        }
    }

    /// The browser's flow, or a new one (and the cookie to set).
    async fn flow(
        &self,
        client: &TenantConn,
    ) -> Result<(sessions::Flow, Option<String>), RuntimeError> {
        if let Some(flow) = self.existing_flow(client).await? {
            return Ok((flow, None));
        }
        let (flow, value) = sessions::create_flow(client).await?;
        Ok((flow, Some(flow_cookie(Some(value.expose_secret())))))
    }
}

/// A new session (fresh id), ending the browser's previous one.
async fn start_session(
    web: &Web,
    client: &TenantConn,
    user_id: UserId,
    connection: Option<Uuid>,
    mfa_pending: bool,
) -> Result<(Session, SecretString), RuntimeError> {
    if let Some(old) = web.cookie(SESSION_COOKIE) {
        sessions::end(client, &old).await?;
    }
    sessions::create(
        client,
        user_id,
        connection,
        mfa_pending,
        web.identity().timeouts,
        web.ip,
    )
    .await
}

/// Checks the CSRF token of a pre-login form against the browser's flow.
async fn flow_csrf(
    web: &Web,
    client: &TenantConn,
    presented: &str,
) -> Result<Option<sessions::Flow>, RuntimeError> {
    Ok(web
        .existing_flow(client)
        .await?
        .filter(|f| sessions::csrf_matches(&f.csrf_token, presented)))
}

fn totp(secret: &[u8], account: &str, issuer: &str) -> Option<totp_rs::TOTP> {
    totp_rs::TOTP::new(
        totp_rs::Algorithm::SHA1,
        6,
        1,
        30,
        secret.to_vec(),
        Some(issuer.to_owned()),
        account.to_owned(),
    )
    .ok()
}

/// The 30-second step `code` is valid for (current, previous or next), if any.
fn totp_step(t: &totp_rs::TOTP, code: &str) -> Option<i64> {
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let code = code.trim();
    for delta in [0i64, -1, 1] {
        let at = now + delta * 30;
        let expected = t.generate(at.max(0) as u64);
        if sessions::csrf_matches(&expected, code) {
            return Some(at.div_euclid(30));
        }
    }
    None
}

#[derive(Deserialize)]
pub struct CodeForm {
    code: String,
    csrf: String,
}

fn csrf_failed() -> Response {
    Problem::new(
        StatusCode::FORBIDDEN,
        ErrorCode::CsrfFailed,
        "The form has expired; reload the page",
    )
    .into_response()
}
