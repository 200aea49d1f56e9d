//! The OpenAPI 3.1 document of `/api/v1`, generated from the handlers and DTOs (utoipa),
//! served at `/api/v1/openapi.json` and committed as `openapi/v1.json` (a test fails when the
//! two drift apart).

use axum::response::{IntoResponse, Response};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{access, audit_api, documents, dto, exports, personal, profile, tickets};
use crate::identity::connections_api;

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

/// Every operation's id is `<tag>_<handler>` (unique across the document), and every
/// operation documents the problems the platform can answer with, whatever the handler: the
/// edge (`400 invalid_host`, `422` for NUL characters, `429` limits, `503` busy or timed out),
/// tenant resolution (`404 tenant_not_found`, `403 tenant_suspended`), authentication (`401`
/// where a token is needed), the extractors (`413`, `415`, `422` for bodies), and `500`.
/// Error responses a handler declares without a body get the problem schema.
struct Problems;

const PROBLEM_JSON: &str = "application/problem+json";

fn problem_response(description: &str) -> utoipa::openapi::Response {
    let mut r = utoipa::openapi::Response::new(description);
    r.content.insert(
        PROBLEM_JSON.to_owned(),
        utoipa::openapi::Content::new(Some(utoipa::openapi::Ref::from_schema_name("ProblemDto"))),
    );
    r
}

impl Modify for Problems {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::RefOr;
        for item in openapi.paths.paths.values_mut() {
            let ops = [
                (&mut item.get, false),
                (&mut item.put, true),
                (&mut item.post, true),
                (&mut item.delete, true),
                (&mut item.patch, true),
            ];
            for (op, changes) in ops {
                let Some(op) = op.as_mut() else { continue };
                let tag = op
                    .tags
                    .as_ref()
                    .and_then(|t| t.first())
                    .cloned()
                    .unwrap_or_default();
                if let Some(id) = &op.operation_id {
                    op.operation_id = Some(format!("{tag}_{id}"));
                }
                let secured = op.security.as_ref().is_some_and(|s| !s.is_empty());
                let body = op.request_body.is_some();
                let mut statuses: Vec<(&str, &str)> = vec![
                    ("400", "Malformed request (invalid_host, bad_request)"),
                    (
                        "403",
                        "Not allowed (forbidden, escalation_refused, tenant_suspended, …)",
                    ),
                    ("404", "Not found (not_found, tenant_not_found)"),
                    (
                        "422",
                        "Invalid input (invalid_input, with the fields in `errors`)",
                    ),
                    (
                        "429",
                        "Rate limited (rate_limited, tenant_rate_limited, anonymous_rate_limited)",
                    ),
                    ("500", "Internal error (internal)"),
                    (
                        "503",
                        "Unavailable for now (tenant_busy, tenant_unavailable, request_timeout, …)",
                    ),
                ];
                if secured {
                    statuses.push(("401", "Not authenticated (unauthenticated, invalid_token)"));
                }
                if changes {
                    statuses.push(("409", "Conflict (conflict, approval_decided, …)"));
                }
                if body || changes {
                    statuses.push(("413", "Request body too large (payload_too_large)"));
                    statuses.push(("415", "Unsupported media type (unsupported_media_type)"));
                }
                let responses = &mut op.responses.responses;
                for (status, description) in statuses {
                    responses
                        .entry(status.to_owned())
                        .or_insert_with(|| RefOr::T(problem_response(description)));
                }
                for (status, response) in responses.iter_mut() {
                    if let (true, RefOr::T(r)) = (status.as_str() >= "400", response)
                        && r.content.is_empty()
                    {
                        let description = r.description.clone();
                        *r = problem_response(&description);
                    }
                }
            }
        }
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Portico tenant API", version = "1",
        description = "The API of one tenant's portal, served on the tenant's own host. Errors are RFC 9457 problem+json with a stable `code`; validation errors list the fields in `errors`."),
    modifiers(&Bearer, &Problems),
    paths(
        access::list_roles, access::create_role, access::update_role, access::delete_role,
        access::list_users, access::set_user_role, access::set_user_sites, access::deactivate_user,
        access::invite_user, access::list_sites, access::create_site, access::list_approvals,
        access::approve, access::reject, access::get_policy, access::set_policy,
        documents::upload, documents::list, documents::show, documents::content,
        documents::new_version, documents::create_link, documents::list_links,
        documents::revoke_link, documents::use_link, documents::delete,
        documents::set_legal_hold, documents::clear_legal_hold,
        tickets::create, tickets::list, tickets::show, tickets::set_status, tickets::comment,
        tickets::attach,
        audit_api::list,
        profile::get_tenant, profile::get_me, profile::get_features,
        personal::user_data, personal::my_data, personal::erase_user,
        exports::request, exports::list, exports::show, exports::discard, exports::create_link,
        exports::download,
        connections_api::list_connections, connections_api::show_connection,
        connections_api::create_connection, connections_api::remove_connection,
    ),
    components(schemas(dto::ProblemDto, dto::FieldErrorDto, dto::RoleDto, dto::UserDto, dto::ApprovalDto, dto::DocumentDto, dto::TicketDto, dto::AuditEventDto)),
    tags((name = "tenant"), (name = "access"), (name = "sso"), (name = "documents"), (name = "tickets"), (name = "exports"), (name = "audit")),
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
