//! Local accounts: the sign-in page, password sign-in (argon2 off the pool) and the TOTP step.

use super::super::pages::render;
use super::*;
use crate::error::RuntimeError;
use crate::http::Problem;
use crate::pools::TenantConn;
use crate::store::connections::{self};
use crate::store::sessions::{self};
use crate::store::{audit, users};
use axum::extract::Form;
use axum::http::StatusCode;
use axum::response::Response;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use time::OffsetDateTime;

// ---- /login ----------------------------------------------------------------------------------

pub async fn login_page(web: Web) -> Result<Response, Problem> {
    let client = web.conn().await?;
    if web.session(&client).await?.is_some_and(|s| !s.mfa_pending) {
        return Ok(see_other("/"));
    }
    let (flow, set) = web.flow(&client).await?;
    let conns = connections::list(&client).await?;
    let local = conns.is_empty() || has_local_accounts(&client).await?;
    let list: Vec<_> = conns
        .iter()
        .map(|c| minijinja::context! { name => c.name, kind => c.protocol.kind() })
        .collect();
    Ok(with_cookies(
        render(
            StatusCode::OK,
            "login.html",
            minijinja::context! { tenant => web.tenant.slug, connections => list, local => local, csrf => flow.csrf_token },
        ),
        set,
    ))
}

pub(super) async fn has_local_accounts(client: &TenantConn) -> Result<bool, RuntimeError> {
    Ok(client
        .query_one(
            "select exists (select 1 from user_identities where connection_id is null)",
            &[],
        )
        .await
        .map_err(|e| RuntimeError::query("checking local accounts", e))?
        .get(0))
}

#[derive(Deserialize)]
pub struct LocalLogin {
    email: String,
    password: SecretString,
    csrf: String,
}

/// `POST /login`. Argon2 runs behind the runtime's hashing semaphore and never while a pooled
/// connection of the tenant is held: look-ups on one connection, given back; the hash; then a
/// fresh connection for the outcome. A flood of sign-ins cannot hold the tenant's pool.
pub async fn local_login(web: Web, Form(form): Form<LocalLogin>) -> Result<Response, Problem> {
    let email = form.email.trim().to_owned();
    let (flow, account) = {
        let client = web.conn().await?;
        let flow = flow_csrf(&web, &client, &form.csrf).await?;
        let account = match &flow {
            Some(_) => users::local_account(&client, &email).await?,
            None => None,
        };
        (flow, account)
    };
    let locked = account.as_ref().is_some_and(|a| {
        a.locked_until
            .is_some_and(|t| t > OffsetDateTime::now_utc())
    });
    let verified = match (&flow, &account) {
        (Some(_), Some(a)) if !locked => {
            web.identity()
                .verify_password(form.password.clone(), a.password_hash.clone())
                .await
        }
        (Some(_), None) => {
            // Same work as for a real account, so timing does not tell which e-mails exist.
            web.identity()
                .verify_password(form.password.clone(), users::dummy_hash().to_owned())
                .await;
            false
        }
        _ => false,
    };
    web.attempt(async |web, client| {
        local_login_finish(web, client, &email, flow, account, locked, verified).await
    })
    .await
}

pub(super) async fn local_login_finish(
    web: &Web,
    client: &mut TenantConn,
    email: &str,
    flow: Option<sessions::Flow>,
    account: Option<users::LocalAccount>,
    locked: bool,
    verified: bool,
) -> Result<Response, Failure> {
    let Some(flow) = flow else {
        return Err(Failure::new("csrf").by(email));
    };
    let Some(account) = account else {
        return Err(Failure::new("unknown_user").by(email));
    };
    if locked {
        return Err(Failure::new("locked").by(email));
    }
    if !verified {
        let locked = users::record_failure(client, account.user.id).await?;
        let reason = if locked.is_some() {
            "bad_password_locked"
        } else {
            "bad_password"
        };
        return Err(Failure::new(reason).by(email));
    }
    if !account.user.active {
        return Err(Failure::new("user_deactivated").by(email));
    }
    let mfa = account.totp_enabled;
    // With a second factor, failures are reset only once it is passed too: a known password
    // must not keep resetting the lock that guards the TOTP code.
    if !mfa {
        users::reset_failures(client, account.user.id).await?;
    }
    let (_, value) = start_session(web, client, account.user.id, None, mfa).await?;
    sessions::end_flow(client, &flow.id_hash).await?;
    let target = if mfa { "/login/totp" } else { "/" };
    if !mfa {
        let mut e = web.event(audit::EventType::LoginSuccess, email, true);
        e.details = serde_json::json!({"method": "password"});
        audit::record(client, &e).await?;
    }
    Ok(with_cookies(
        see_other(target),
        [
            session_cookie(Some(value.expose_secret()), web.identity().timeouts),
            flow_cookie(None),
        ],
    ))
}

// ---- TOTP ------------------------------------------------------------------------------------

pub async fn totp_page(web: Web) -> Result<Response, Problem> {
    let client = web.conn().await?;
    Ok(match web.session(&client).await? {
        Some(s) if s.mfa_pending => render(
            StatusCode::OK,
            "totp.html",
            minijinja::context! { action => "/login/totp", csrf => s.csrf_token },
        ),
        _ => see_other("/login"),
    })
}

pub async fn totp_verify(web: Web, Form(form): Form<CodeForm>) -> Result<Response, Problem> {
    web.attempt(async |web, client| totp_verify_inner(web, client, form).await)
        .await
}

pub(super) async fn totp_verify_inner(
    web: &Web,
    client: &TenantConn,
    form: CodeForm,
) -> Result<Response, Failure> {
    let session = match web.session(client).await? {
        Some(s) if s.mfa_pending => s,
        _ => return Err(Failure::new("no_pending_mfa")),
    };
    if !sessions::csrf_matches(&session.csrf_token, &form.csrf) {
        return Err(Failure::new("csrf"));
    }
    let account = users::local_account_by_user(client, session.user_id)
        .await?
        .ok_or_else(|| Failure::new("no_local_account"))?;
    let email = account.user.email.clone();
    if account
        .locked_until
        .is_some_and(|t| t > OffsetDateTime::now_utc())
    {
        sessions::end(client, &session.id_hash).await?;
        return Err(Failure::new("locked").by(&email));
    }
    let secret = match &account.totp_secret_ciphertext {
        Some(c) => web.open(c).await?,
        None => return Err(Failure::new("no_totp").by(&email)),
    };
    let step = totp(&secret, &email, &web.tenant.slug).and_then(|t| totp_step(&t, &form.code));
    let fresh = match step {
        Some(step) => users::consume_totp_step(client, account.user.id, step, false).await?,
        None => false,
    };
    if !fresh {
        if users::record_failure(client, account.user.id)
            .await?
            .is_some()
        {
            sessions::end(client, &session.id_hash).await?;
        }
        return Err(Failure::new(if step.is_some() {
            "totp_replayed"
        } else {
            "bad_totp"
        })
        .by(&email));
    }
    users::reset_failures(client, account.user.id).await?;
    // Rotate: the password-only session is replaced by a full one.
    sessions::end(client, &session.id_hash).await?;
    let (_, value) = sessions::create(
        client,
        account.user.id,
        None,
        false,
        web.identity().timeouts,
        web.ip,
    )
    .await?;
    let mut e = web.event(audit::EventType::LoginSuccess, &email, true);
    e.details = serde_json::json!({"method": "password+totp"});
    audit::record(client, &e).await?;
    Ok(with_cookies(
        see_other("/"),
        [session_cookie(
            Some(value.expose_secret()),
            web.identity().timeouts,
        )],
    ))
}
