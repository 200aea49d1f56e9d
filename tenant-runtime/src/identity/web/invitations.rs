//! Accepting an invitation: a single-use link, a password, a first session.

use super::super::pages::render;
use super::*;
use crate::error::RuntimeError;
use crate::http::Problem;
use crate::store::sessions::{self};
use crate::store::{audit, users};
use axum::extract::{Form, Path};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

// ---- invitations -----------------------------------------------------------------------------

pub async fn invite_page(web: Web, Path(token): Path<String>) -> Result<Response, Problem> {
    let client = web.conn().await?;
    let Some(inv) = users::open_invitation(&client, &token).await? else {
        return Ok(render(
            StatusCode::NOT_FOUND,
            "error.html",
            minijinja::context! { title => "Invitation not valid", message => "This invitation link is unknown, used or expired.", request_id => web.request_id },
        ));
    };
    let (flow, set) = web.flow(&client).await?;
    Ok(with_cookies(
        render(
            StatusCode::OK,
            "invite.html",
            minijinja::context! { tenant => web.tenant.slug, email => inv.email, csrf => flow.csrf_token, min_len => users::MIN_PASSWORD_LEN },
        ),
        set,
    ))
}

#[derive(Deserialize)]
pub struct InviteForm {
    password: SecretString,
    csrf: String,
}

pub async fn invite_accept(
    web: Web,
    Path(token): Path<String>,
    Form(form): Form<InviteForm>,
) -> Result<Response, Problem> {
    let (flow, inv) = {
        let client = web.conn().await?;
        let Some(flow) = flow_csrf(&web, &client, &form.csrf).await? else {
            return Ok(csrf_failed());
        };
        let Some(inv) = users::open_invitation(&client, &token).await? else {
            return Ok(Problem::not_found()
                .detail("this invitation is unknown, used or expired")
                .into_response());
        };
        (flow, inv)
    };
    if let Err(RuntimeError::InvalidInput(message)) =
        users::check_password_policy(&form.password, &inv.email)
    {
        return Ok(render(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invite.html",
            minijinja::context! { tenant => web.tenant.slug, email => inv.email, csrf => flow.csrf_token, min_len => users::MIN_PASSWORD_LEN, error => message },
        ));
    }
    // Hashed with no pooled connection held (see `local_login`).
    let hash = web.identity().hash_password(form.password.clone()).await?;
    let mut client = web.conn().await?;
    let Some(user) = users::accept_invitation(&mut client, &token, &hash).await? else {
        return Ok(Problem::not_found()
            .detail("this invitation is unknown, used or expired")
            .into_response());
    };
    let mut e = web.event(audit::EventType::InvitationAccepted, &user.email, true);
    e.target = Some(&user.email);
    audit::record(&client, &e).await?;
    let (_, value) = start_session(&web, &client, user.id, None, false).await?;
    sessions::end_flow(&client, &flow.id_hash).await?;
    Ok(with_cookies(
        see_other("/account/mfa"),
        [
            session_cookie(Some(value.expose_secret()), web.identity().timeouts),
            flow_cookie(None),
        ],
    ))
}
