//! The account's second factor: `/account/mfa` shows it (a GET changes nothing); setting it up,
//! replacing and removing it are CSRF-protected POSTs, and replacing or removing an active one
//! needs its current code or the password again.

use super::super::pages::render;
use super::*;
use crate::conn::TenantConn;
use crate::error::RuntimeError;
use crate::http::Problem;
use crate::store::sessions::{self};
use crate::store::{audit, users};
use axum::extract::Form;
use axum::http::StatusCode;
use axum::response::Response;
use secrecy::SecretString;
use serde::Deserialize;

/// `GET /account/mfa`: shows the second factor's state and forms. It changes nothing: a GET
/// rides cross-site top-level navigations with the Lax session cookie.
pub async fn mfa_page(web: Web) -> Result<Response, Problem> {
    let client = web.conn().await?;
    let Some(s) = web.session(&client).await?.filter(|s| !s.mfa_pending) else {
        return Ok(see_other("/login"));
    };
    let Some(account) = users::local_account_by_user(&client, s.user_id).await? else {
        return Ok(see_other("/"));
    };
    mfa_render(&web, &account, &s.csrf_token, StatusCode::OK, None).await
}

/// The MFA page for `account`: a pending secret to confirm, else the active factor's state.
pub(super) async fn mfa_render(
    web: &Web,
    account: &users::LocalAccount,
    csrf: &str,
    status: StatusCode,
    error: Option<&str>,
) -> Result<Response, Problem> {
    let pending = match &account.totp_pending_ciphertext {
        Some(c) => {
            let secret = web.open(c).await?;
            totp(&secret, &account.user.email, &web.tenant.slug)
        }
        None => None,
    };
    Ok(render(
        status,
        "mfa.html",
        minijinja::context! {
            csrf => csrf, enabled => account.totp_enabled, error => error,
            secret => pending.as_ref().map(|t| t.get_secret_base32()),
            uri => pending.as_ref().map(|t| t.get_url()),
        },
    ))
}

#[derive(Deserialize)]
pub struct ReauthForm {
    csrf: String,
    /// The active second factor's current code, or:
    #[serde(default)]
    current_code: Option<String>,
    /// the account's password.
    #[serde(default)]
    password: Option<String>,
}

/// Whether the form proves the account holder is here again: the active factor's current code
/// (each code once), or the password. A wrong answer counts towards the lockout.
pub(super) async fn reauthenticated(
    web: &Web,
    client: &TenantConn,
    account: &users::LocalAccount,
    form: &ReauthForm,
) -> Result<bool, Problem> {
    let code = form
        .current_code
        .as_deref()
        .filter(|c| !c.trim().is_empty());
    let ok = match (code, &account.totp_secret_ciphertext, &form.password) {
        (Some(code), Some(c), _) if account.totp_enabled => {
            let secret = web.open(c).await?;
            match totp(&secret, &account.user.email, &web.tenant.slug)
                .and_then(|t| totp_step(&t, code))
            {
                Some(step) => {
                    users::consume_totp_step(client, account.user.id, step, false).await?
                }
                None => false,
            }
        }
        (_, _, Some(password)) if !password.is_empty() => {
            let password = SecretString::from(password.clone());
            web.identity()
                .verify_password(password, account.password_hash.clone())
                .await
        }
        _ => false,
    };
    if !ok {
        users::record_failure(client, account.user.id).await?;
    }
    Ok(ok)
}

/// The full session and local account behind a POST of the MFA forms, or the answer to give
/// instead: to `/login` without a full session, `403` on a bad CSRF token, home without a
/// local account.
async fn signed_in_account(
    web: &Web,
    client: &TenantConn,
    csrf: &str,
) -> Result<Result<(Session, users::LocalAccount), Response>, Problem> {
    let Some(s) = web.session(client).await?.filter(|s| !s.mfa_pending) else {
        return Ok(Err(see_other("/login")));
    };
    if !sessions::csrf_matches(&s.csrf_token, csrf) {
        return Ok(Err(csrf_failed()));
    }
    match users::local_account_by_user(client, s.user_id).await? {
        Some(account) => Ok(Ok((s, account))),
        None => Ok(Err(see_other("/"))),
    }
}

/// A change of the second factor refused for want of re-authentication: audited as a failed
/// `event`, and the MFA page again with `message`.
async fn reauthentication_refused(
    web: &Web,
    client: &TenantConn,
    account: &users::LocalAccount,
    csrf: &str,
    event: audit::EventType,
    message: &str,
) -> Result<Response, Problem> {
    let mut e = web.event(event, &account.user.email, false);
    e.reason = Some("reauthentication_failed");
    audit::record(client, &e).await?;
    mfa_render(web, account, csrf, StatusCode::FORBIDDEN, Some(message)).await
}

/// `POST /account/mfa/start`: a new secret to confirm. Replacing an active factor needs its
/// current code or the password first; until the new secret is confirmed the old one stays.
pub async fn mfa_start(web: Web, Form(form): Form<ReauthForm>) -> Result<Response, Problem> {
    let client = web.conn().await?;
    let (s, account) = match signed_in_account(&web, &client, &form.csrf).await? {
        Ok(found) => found,
        Err(answer) => return Ok(answer),
    };
    if account.totp_enabled && !reauthenticated(&web, &client, &account, &form).await? {
        return reauthentication_refused(
            &web,
            &client,
            &account,
            &s.csrf_token,
            audit::EventType::MfaEnrolmentStarted,
            "Enter your current code or your password to replace your second factor.",
        )
        .await;
    }
    let secret = portico_core::keys::random_bytes::<20>().to_vec();
    let ciphertext = web.seal(&secret).await?;
    users::set_pending_totp(&client, s.user_id, &ciphertext).await?;
    let e = web.event(
        audit::EventType::MfaEnrolmentStarted,
        &account.user.email,
        true,
    );
    audit::record(&client, &e).await?;
    Ok(see_other("/account/mfa"))
}

/// `POST /account/mfa`: confirms the pending secret with its first code.
pub async fn mfa_enrol(web: Web, Form(form): Form<CodeForm>) -> Result<Response, Problem> {
    let client = web.conn().await?;
    let (s, account) = match signed_in_account(&web, &client, &form.csrf).await? {
        Ok(found) => found,
        Err(answer) => return Ok(answer),
    };
    let Some(pending) = account.totp_pending_ciphertext.clone() else {
        return Ok(see_other("/account/mfa"));
    };
    let secret = web.open(&pending).await?;
    let t = totp(&secret, &account.user.email, &web.tenant.slug)
        .ok_or_else(|| RuntimeError::InvalidInput("TOTP".into()))?;
    let ok = match totp_step(&t, &form.code) {
        Some(step) => users::confirm_totp(&client, s.user_id, &pending, step).await?,
        None => false,
    };
    let e = web.event(audit::EventType::MfaEnrolled, &account.user.email, ok);
    audit::record(&client, &e).await?;
    if !ok {
        return mfa_render(
            &web,
            &account,
            &s.csrf_token,
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("That code is not valid; enter the one your app shows now."),
        )
        .await;
    }
    Ok(see_other("/"))
}

/// `POST /account/mfa/remove`: turns the second factor off, with its current code or the
/// password.
pub async fn mfa_remove(web: Web, Form(form): Form<ReauthForm>) -> Result<Response, Problem> {
    let client = web.conn().await?;
    let (s, account) = match signed_in_account(&web, &client, &form.csrf).await? {
        Ok(found) => found,
        Err(answer) => return Ok(answer),
    };
    if !reauthenticated(&web, &client, &account, &form).await? {
        return reauthentication_refused(
            &web,
            &client,
            &account,
            &s.csrf_token,
            audit::EventType::MfaRemoved,
            "Enter your current code or your password to remove your second factor.",
        )
        .await;
    }
    let e = web.event(audit::EventType::MfaRemoved, &account.user.email, true);
    users::remove_totp(&client, s.user_id).await?;
    audit::record(&client, &e).await?;
    Ok(see_other("/account/mfa"))
}
