//! `/api/v1/sso/connections`: a tenant admin's SSO connections (admin only, site-unlimited
//! callers only for changes, four-eyes by default for changes).

use crate::caller::Authenticated;
use crate::http::ErrorCode;
use crate::http::Problem;
use crate::identity::admin::{self, NewConnection};
use crate::portal::change::{self, Applied, Change};
use crate::state::Runtime;
use crate::store::connections::Protocol;
use crate::store::connections::{self, Connection};
use crate::store::roles::Permission;
use crate::store::users;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

/// An SSO connection as the API shows it (never its client secret).
#[derive(Debug, Serialize, ToSchema)]
pub struct ConnectionDto {
    pub id: uuid::Uuid,
    pub name: String,
    pub protocol: ProtocolDto,
    pub default_role: String,
    pub role_mappings: Vec<RoleMappingDto>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: time::OffsetDateTime,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum ProtocolDto {
    Saml {
        idp_entity_id: String,
        metadata_xml: String,
        sso_url: String,
        allow_idp_initiated: bool,
        group_attribute: String,
        metadata_url: Option<String>,
        email_authoritative: bool,
    },
    Oidc {
        issuer: String,
        client_id: String,
    },
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RoleMappingDto {
    pub attribute: String,
    pub value: String,
    pub role: String,
}

impl From<Connection> for ConnectionDto {
    fn from(c: Connection) -> Self {
        Self {
            id: c.id,
            name: c.name,
            protocol: match c.protocol {
                Protocol::Saml(s) => ProtocolDto::Saml {
                    idp_entity_id: s.idp_entity_id,
                    metadata_xml: s.metadata_xml,
                    sso_url: s.sso_url,
                    allow_idp_initiated: s.allow_idp_initiated,
                    group_attribute: s.group_attribute,
                    metadata_url: s.metadata_url,
                    email_authoritative: s.email_authoritative,
                },
                Protocol::Oidc(o) => ProtocolDto::Oidc {
                    issuer: o.issuer,
                    client_id: o.client_id,
                },
            },
            default_role: c.default_role.as_str().to_owned(),
            role_mappings: c
                .role_mappings
                .into_iter()
                .map(|m| RoleMappingDto {
                    attribute: m.attribute,
                    value: m.value,
                    role: m.role.as_str().to_owned(),
                })
                .collect(),
            created_at: c.created_at,
        }
    }
}

#[utoipa::path(get, path = "/api/v1/sso/connections", tag = "sso",
    responses((status = 200, body = [ConnectionDto])), security(("bearer" = [])))]
pub async fn list_connections(auth: Authenticated) -> Result<Json<Vec<ConnectionDto>>, Problem> {
    auth.require(Permission::SsoManage).await?;
    Ok(Json(
        connections::list(&auth.conn)
            .await?
            .into_iter()
            .map(Into::into)
            .collect(),
    ))
}

#[utoipa::path(get, path = "/api/v1/sso/connections/{name}", tag = "sso",
    params(("name" = String, Path)), responses((status = 200, body = ConnectionDto)),
    security(("bearer" = [])))]
pub async fn show_connection(
    auth: Authenticated,
    axum::extract::Path(name): axum::extract::Path<String>,
) -> Result<Json<ConnectionDto>, Problem> {
    auth.require(Permission::SsoManage).await?;
    connections::by_name(&auth.conn, &name)
        .await?
        .map(|c| Json(c.into()))
        .ok_or_else(Problem::not_found)
}

#[utoipa::path(post, path = "/api/v1/sso/connections", tag = "sso", request_body = NewConnection,
    responses((status = 201, body = ConnectionDto),
        (status = 202, body = crate::portal::dto::PendingApprovalDto)),
    security(("bearer" = [])))]
pub async fn create_connection(
    State(rt): State<Runtime>,
    mut auth: Authenticated,
    crate::http::ApiJson(new): crate::http::ApiJson<NewConnection>,
) -> Result<Response, Problem> {
    auth.require(Permission::SsoManage).await?;
    // Users signing in through a new connection are not limited to sites: only an unlimited
    // caller may add one.
    if auth.caller.sites.is_some() {
        let problem = Problem::forbidden("Site-limited callers cannot change SSO connections");
        return Err(auth.refuse(problem, "site_scope").await);
    }
    let key = auth.key_ref()?;
    let prepared = admin::prepare(
        &auth.conn,
        &rt.identity.keyring,
        auth.tenant.tenant_id,
        &key,
        rt.identity.providers.fetcher(),
        new,
    )
    .await?;
    // Mapping an IdP group to a role is granting it: only roles the caller could grant.
    for role in prepared.roles() {
        let perms = users::permissions_of(&auth.conn, &role).await?;
        if !perms.is_subset(auth.caller.perms) {
            let problem = Problem::new(
                StatusCode::FORBIDDEN,
                ErrorCode::EscalationRefused,
                "You cannot grant a permission you do not hold",
            )
            .detail(format!("role '{role}' has permissions you do not hold"));
            return Err(auth.refuse(problem, "no_escalation").await);
        }
    }
    let change = Change::CreateSsoConnection {
        connection: prepared,
    };
    if change.needs_approval(&auth).await? {
        return crate::portal::access::pending(&auth, &change).await;
    }
    let Applied::Connection(created) = change::apply(&rt, &mut auth, &change, None).await? else {
        return Err(Problem::internal());
    };
    Ok((StatusCode::CREATED, Json(ConnectionDto::from(created))).into_response())
}

#[utoipa::path(delete, path = "/api/v1/sso/connections/{name}", tag = "sso",
    params(("name" = String, Path)),
    responses((status = 204), (status = 202, body = crate::portal::dto::PendingApprovalDto)),
    security(("bearer" = [])))]
pub async fn remove_connection(
    State(rt): State<Runtime>,
    mut auth: Authenticated,
    axum::extract::Path(name): axum::extract::Path<String>,
) -> Result<Response, Problem> {
    auth.require(Permission::SsoManage).await?;
    connections::by_name(&auth.conn, &name)
        .await?
        .ok_or_else(Problem::not_found)?;
    if auth.caller.sites.is_some() {
        let problem = Problem::forbidden("Site-limited callers cannot change SSO connections");
        return Err(auth.refuse(problem, "site_scope").await);
    }
    let change = Change::RemoveSsoConnection { name };
    if change.needs_approval(&auth).await? {
        return crate::portal::access::pending(&auth, &change).await;
    }
    change::apply(&rt, &mut auth, &change, None).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
