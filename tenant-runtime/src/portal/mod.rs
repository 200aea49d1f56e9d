//! The customer portal API under `/api/v1`: access (roles, users, sites, four-eyes approvals),
//! documents (encrypted content, versions, links), tickets, self-service exports and the audit
//! log. Request and
//! response bodies are DTOs ([`dto`]), separate from the store's domain types; the OpenAPI
//! document ([`openapi`]) is generated from these handlers and types.

pub(crate) mod access;
pub(crate) mod audit_api;
pub(crate) mod change;
pub(crate) mod documents;
pub(crate) mod dto;
pub(crate) mod exports;
pub(crate) mod links;
pub mod openapi;
pub(crate) mod personal;
pub(crate) mod profile;
pub(crate) mod tickets;

use axum::Router;
use axum::routing::{get, post, put};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::http::Problem;
use crate::state::Runtime;

/// The portal routes (tenant hosts; resolved by the caller's middleware).
pub fn routes() -> Router<Runtime> {
    Router::new()
        .route(
            "/api/v1/roles",
            get(access::list_roles).post(access::create_role),
        )
        .route(
            "/api/v1/roles/{name}",
            put(access::update_role).delete(access::delete_role),
        )
        .route("/api/v1/users", get(access::list_users))
        .route("/api/v1/users/invitations", post(access::invite_user))
        .route("/api/v1/users/{id}/role", put(access::set_user_role))
        .route("/api/v1/users/{id}/data-export", get(personal::user_data))
        .route("/api/v1/me/data-export", get(personal::my_data))
        .route("/api/v1/users/{id}/erasure", post(personal::erase_user))
        .route("/api/v1/users/{id}/sites", put(access::set_user_sites))
        .route(
            "/api/v1/users/{id}/deactivate",
            post(access::deactivate_user),
        )
        .route(
            "/api/v1/sites",
            get(access::list_sites).post(access::create_site),
        )
        .route("/api/v1/approvals", get(access::list_approvals))
        .route("/api/v1/approvals/{id}/approve", post(access::approve))
        .route("/api/v1/approvals/{id}/reject", post(access::reject))
        .route(
            "/api/v1/approval-policy",
            get(access::get_policy).put(access::set_policy),
        )
        .route(
            "/api/v1/documents",
            get(documents::list).post(documents::upload),
        )
        .route(
            "/api/v1/documents/{id}",
            get(documents::show).delete(documents::delete),
        )
        .route(
            "/api/v1/documents/{id}/legal-hold",
            axum::routing::put(documents::set_legal_hold).delete(documents::clear_legal_hold),
        )
        .route("/api/v1/documents/{id}/content", get(documents::content))
        .route(
            "/api/v1/documents/{id}/versions",
            post(documents::new_version),
        )
        .route(
            "/api/v1/documents/{id}/links",
            get(documents::list_links).post(documents::create_link),
        )
        .route(
            "/api/v1/documents/{id}/links/{link}",
            axum::routing::delete(documents::revoke_link),
        )
        .merge(
            Router::new()
                .route("/api/v1/tickets", get(tickets::list).post(tickets::create))
                .route("/api/v1/tickets/{id}", get(tickets::show))
                .route("/api/v1/tickets/{id}/status", post(tickets::set_status))
                .route("/api/v1/tickets/{id}/comments", post(tickets::comment))
                .route("/api/v1/tickets/{id}/attachments", post(tickets::attach))
                .route_layer(axum::middleware::from_fn_with_state(
                    "tickets",
                    crate::tenancy::require_feature,
                )),
        )
        .merge(
            Router::new()
                .route("/api/v1/exports", get(exports::list).post(exports::request))
                .route(
                    "/api/v1/exports/{id}",
                    get(exports::show).delete(exports::discard),
                )
                .route("/api/v1/exports/{id}/links", post(exports::create_link))
                .route_layer(axum::middleware::from_fn_with_state(
                    "data_exports",
                    crate::tenancy::require_feature,
                )),
        )
        .route("/api/v1/audit-events", get(audit_api::list))
        .route("/api/v1/openapi.json", get(openapi::serve))
}

/// Page size from a query (`1..=200`, default 50).
pub fn page_size(limit: Option<i64>) -> Result<i64, Problem> {
    match limit {
        None => Ok(50),
        Some(n) if (1..=200).contains(&n) => Ok(n),
        Some(_) => Err(Problem::fields(vec![(
            "limit".into(),
            "must be between 1 and 200".into(),
        )])),
    }
}

/// An opaque cursor: base64url of a short text.
pub fn encode_cursor(text: &str) -> String {
    URL_SAFE_NO_PAD.encode(text)
}

pub fn decode_cursor(cursor: &str) -> Result<String, Problem> {
    URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| {
            Problem::fields(vec![(
                "cursor".into(),
                "is not a cursor of this list".into(),
            )])
        })
}

pub use crate::http::ApiQuery;

/// A `site` field of a new object: one of the caller's sites, and a site that exists.
pub async fn check_site(
    auth: &crate::caller::Authenticated,
    site: Option<&str>,
) -> Result<(), Problem> {
    let field = |m: &str| Problem::fields(vec![("site".into(), m.into())]);
    if !auth.caller.sees_site(site) {
        return Err(auth
            .refuse(field("is not one of your sites"), "site_scope")
            .await);
    }
    if let Some(site) = site
        && crate::store::sites::first_unknown(&auth.conn, &[site.to_owned()])
            .await?
            .is_some()
    {
        return Err(field("unknown site"));
    }
    Ok(())
}

/// A path id that must be a UUID; anything else is simply not found.
pub fn path_id<T: crate::ids::PathId>(s: &str) -> Result<T, Problem> {
    T::from_path(s).ok_or_else(Problem::not_found)
}
