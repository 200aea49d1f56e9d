//! The OpenAPI 3.1 document of `/api/v1`, generated from the handlers and DTOs (utoipa),
//! served at `/api/v1/openapi.json` and committed as `openapi/v1.json` (a test fails when the
//! two drift apart).

use axum::response::{IntoResponse, Response};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{access, audit_api, documents, dto, tickets};

struct Bearer;

impl Modify for Bearer {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Portico tenant API", version = "1",
        description = "The API of one tenant's portal, served on the tenant's own host. Errors are RFC 9457 problem+json with a stable `code`; validation errors list the fields in `errors`."),
    modifiers(&Bearer),
    paths(
        access::list_roles, access::create_role, access::update_role, access::delete_role,
        access::list_users, access::set_user_role, access::set_user_sites, access::deactivate_user,
        access::invite_user, access::list_sites, access::create_site, access::list_approvals,
        access::approve, access::reject, access::get_policy, access::set_policy,
        documents::upload, documents::list, documents::show, documents::content,
        documents::new_version, documents::create_link, documents::list_links,
        documents::revoke_link, documents::use_link,
        tickets::create, tickets::list, tickets::show, tickets::set_status, tickets::comment,
        tickets::attach,
        audit_api::list,
    ),
    components(schemas(dto::RoleDto, dto::UserDto, dto::ApprovalDto, dto::DocumentDto, dto::TicketDto, dto::AuditEventDto)),
    tags((name = "access"), (name = "documents"), (name = "tickets"), (name = "audit")),
)]
pub struct ApiDoc;

/// The document as pretty JSON (what is committed).
pub fn json() -> String {
    ApiDoc::openapi().to_pretty_json().unwrap_or_default()
}

pub async fn serve() -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        json(),
    )
        .into_response()
}
