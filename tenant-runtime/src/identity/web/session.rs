//! The signed-in home page and sign-out.

use super::super::pages::render;
use super::*;
use crate::http::ErrorCode;
use crate::http::Problem;
use crate::store::sessions::{self};
use crate::store::{audit, users};
use axum::extract::Form;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

// ---- home and logout -------------------------------------------------------------------------

pub async fn home(web: Web) -> Result<Response, Problem> {
    let client = web.conn().await?;
    let Some(s) = web.session(&client).await?.filter(|s| !s.mfa_pending) else {
        return Ok(see_other("/login"));
    };
    let Some(user) = users::get(&client, s.user_id).await? else {
        return Ok(see_other("/login"));
    };
    let local = users::local_account_by_user(&client, s.user_id).await?;
    Ok(render(
        StatusCode::OK,
        "home.html",
        minijinja::context! {
            tenant => web.tenant.slug, email => user.email, role => user.role.as_str(),
            csrf => s.csrf_token, local => local.is_some(),
            mfa => local.map(|l| l.totp_enabled).unwrap_or(false),
        },
    ))
}

#[derive(Deserialize)]
pub struct CsrfForm {
    csrf: String,
}

pub async fn logout(web: Web, Form(form): Form<CsrfForm>) -> Result<Response, Problem> {
    let client = web.conn().await?;
    let Some(s) = web.session(&client).await? else {
        return Ok(with_cookies(
            see_other("/login"),
            [session_cookie(None, web.identity().timeouts)],
        ));
    };
    if !sessions::csrf_matches(&s.csrf_token, &form.csrf) {
        return Ok(Problem::new(
            StatusCode::FORBIDDEN,
            ErrorCode::CsrfFailed,
            "The form has expired; reload the page",
        )
        .into_response());
    }
    sessions::end(&client, &s.id_hash).await?;
    let email = users::get(&client, s.user_id)
        .await?
        .map(|u| u.email)
        .unwrap_or_default();
    audit::record(&client, &web.event(audit::EventType::Logout, &email, true)).await?;
    Ok(with_cookies(
        see_other("/login"),
        [session_cookie(None, web.identity().timeouts)],
    ))
}
