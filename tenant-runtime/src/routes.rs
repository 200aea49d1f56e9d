//! The route table: the only module above the features. Tenant hosts get `/api/v1/*`, the
//! sign-in pages and `/d/{token}` behind tenant resolution; every host gets `/healthz` and
//! `/readyz`.

use crate::http::ErrorCode;
use crate::http::Problem;
use crate::identity::web::{self};
use crate::identity::{
    connections_api,
    web::{discovery, invitations, local, mfa, session, sso},
};
use crate::portal::profile;
use crate::state::Runtime;
use crate::tenancy::{LoginHost, admit_anonymous, resolve_tenant};
use axum::extract::{FromRequestParts, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use std::time::Duration;

impl Runtime {
    /// `/api/v1/*` of tenant hosts.
    pub fn tenant_routes(&self) -> Router {
        // Paths anyone may call without credentials: admitted per client address and per
        // tenant before any work (`failures.rs`).
        let anonymous = Router::new()
            .route("/login", post(local::local_login))
            .route("/login/totp", post(local::totp_verify))
            .route(
                "/invite/{token}",
                get(invitations::invite_page).post(invitations::invite_accept),
            )
            .route("/sso/{name}/start", get(sso::sso_start))
            .route("/sso/saml/{name}/acs", post(sso::saml_acs))
            .route("/sso/oidc/{name}/callback", get(sso::oidc_callback))
            .route("/d/{token}", get(crate::portal::documents::use_link))
            .merge(
                Router::new()
                    .route("/x/{token}", get(crate::portal::exports::download))
                    .route_layer(middleware::from_fn_with_state(
                        "data_exports",
                        crate::tenancy::require_feature,
                    )),
            )
            .route_layer(middleware::from_fn_with_state(
                self.clone(),
                admit_anonymous,
            ));
        Router::new()
            .route("/api/v1/tenant", get(profile::get_tenant))
            .route("/api/v1/me", get(profile::get_me))
            .route("/api/v1/features", get(profile::get_features))
            .route(
                "/api/v1/sso/connections",
                get(connections_api::list_connections).post(connections_api::create_connection),
            )
            .route(
                "/api/v1/sso/connections/{name}",
                get(connections_api::show_connection).delete(connections_api::remove_connection),
            )
            .merge(crate::portal::routes())
            .route("/", get(root).post(discovery::discover))
            .merge(anonymous)
            .route("/login", get(local::login_page))
            .route("/login/totp", get(local::totp_page))
            .route("/logout", post(session::logout))
            .route("/account/mfa", get(mfa::mfa_page).post(mfa::mfa_enrol))
            .route("/account/mfa/start", post(mfa::mfa_start))
            .route("/account/mfa/remove", post(mfa::mfa_remove))
            .route("/sso/saml/{name}/metadata", get(sso::saml_metadata))
            .route_layer(middleware::from_fn_with_state(self.clone(), resolve_tenant))
            .with_state(self.clone())
    }

    /// `/healthz` and `/readyz`, on every host.
    pub fn health_routes(&self) -> Router {
        Router::new()
            .route(
                "/healthz",
                get(|| async { Json(serde_json::json!({"status": "ok"})) }),
            )
            .route("/readyz", get(readyz))
            .with_state(self.clone())
    }
}

async fn readyz(State(rt): State<Runtime>) -> Response {
    let catalog = tokio::time::timeout(Duration::from_secs(2), rt.catalog.ping()).await;
    let catalog_ok = matches!(catalog, Ok(Ok(())));
    let listening = rt.listener.is_listening();
    if catalog_ok && listening {
        Json(serde_json::json!({"status": "ready", "catalog": "ok", "notifications": "listening"}))
            .into_response()
    } else {
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::NotReady,
            "Not ready",
        )
        .detail(format!(
            "catalog {}, notifications {}",
            if catalog_ok { "ok" } else { "unreachable" },
            if listening {
                "listening"
            } else {
                "not listening"
            }
        ))
        .retry_after(1)
        .into_response()
    }
}

/// `/`: the portal home on tenant hosts, home-realm discovery on the login host.
async fn root(State(rt): State<Runtime>, req: Request) -> Response {
    if req.extensions().get::<LoginHost>().is_some() {
        return discovery::discover_page().await;
    }
    let (mut parts, _) = req.into_parts();
    match web::Web::from_request_parts(&mut parts, &rt).await {
        Ok(w) => session::home(w).await.into_response(),
        Err(r) => r,
    }
}
