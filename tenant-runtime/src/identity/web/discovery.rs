//! Home-realm discovery on the shared login host: an e-mail domain claimed by one tenant sends
//! the browser to that tenant's IdP; anything else gets the same neutral page.

use super::super::pages::render;
use super::*;
use crate::http::Problem;
use crate::state::Runtime;
use crate::store::users;
use axum::extract::{Form, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use portico_core::Hostname;
use serde::Deserialize;

// ---- the shared login host -------------------------------------------------------------------

pub async fn discover_page() -> Response {
    render(
        StatusCode::OK,
        "discover.html",
        minijinja::context! { neutral => false },
    )
}

#[derive(Deserialize)]
pub struct DiscoverForm {
    email: String,
}

/// Home-realm discovery: a domain claimed by exactly one tenant's connection sends the browser
/// to that tenant's host; anything else gets the same neutral page.
pub async fn discover(State(rt): State<Runtime>, Form(form): Form<DiscoverForm>) -> Response {
    let email = form.email.trim().to_ascii_lowercase();
    let neutral = || {
        render(
            StatusCode::OK,
            "discover.html",
            minijinja::context! { neutral => true },
        )
    };
    let Some((_, domain)) = email
        .rsplit_once('@')
        .filter(|_| users::valid_email(&email))
    else {
        return neutral();
    };
    match rt.catalog.claimed_domain(domain).await {
        Ok(Some((host, connection))) => {
            let Ok(host) = Hostname::parse(&host) else {
                return neutral();
            };
            let mut url = url::Url::parse(&format!(
                "{}/sso/{connection}/start",
                rt.identity.origin(&host)
            ))
            .expect("an origin and a connection name form a URL");
            url.query_pairs_mut().append_pair("login_hint", &email);
            see_other(url.as_str())
        }
        Ok(None) => neutral(),
        Err(e) => Problem::from(e).into_response(),
    }
}
