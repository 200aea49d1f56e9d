//! `/api/v1/tenant` and `/api/v1/me`: the tenant's profile and who the caller is.

use crate::caller::{Authenticated, Caller};
use crate::http::Problem;
use crate::store::profile;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

/// The tenant's profile.
#[derive(Debug, Serialize, ToSchema)]
pub struct TenantDto {
    pub id: uuid::Uuid,
    pub slug: String,
    pub display_name: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: time::OffsetDateTime,
}

/// Who is calling.
#[derive(Debug, Serialize, ToSchema)]
pub struct CallerDto {
    /// `api_token` or `user` (a browser session).
    pub kind: String,
    /// The e-mail, else `user:<id>` or the token's name.
    pub name: String,
    pub email: Option<String>,
    pub user_id: Option<uuid::Uuid>,
    pub token_id: Option<uuid::Uuid>,
    pub role: String,
    pub permissions: Vec<String>,
    /// Sites the caller is limited to; `null`: every site.
    pub sites: Option<Vec<String>>,
}

impl From<Caller> for CallerDto {
    fn from(c: Caller) -> Self {
        Self {
            kind: match c.kind {
                crate::caller::CallerKind::ApiToken => "api_token".into(),
                crate::caller::CallerKind::User => "user".into(),
            },
            name: c.name,
            email: c.email,
            user_id: c.user_id.map(|u| u.as_uuid()),
            token_id: c.token_id,
            role: c.role.as_str().to_owned(),
            permissions: c
                .permissions
                .iter()
                .map(|p| p.as_str().to_owned())
                .collect(),
            sites: c.sites,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MeDto {
    pub tenant_id: uuid::Uuid,
    /// The tenant's slug.
    pub tenant: String,
    pub caller: CallerDto,
}

#[utoipa::path(get, path = "/api/v1/tenant", tag = "tenant",
    responses((status = 200, body = TenantDto)), security(("bearer" = [])))]
pub async fn get_tenant(auth: Authenticated) -> Result<Json<TenantDto>, Problem> {
    let p = profile::get(&auth.conn).await?;
    Ok(Json(TenantDto {
        id: p.id,
        slug: p.slug,
        display_name: p.display_name,
        created_at: p.created_at,
    }))
}

#[utoipa::path(get, path = "/api/v1/me", tag = "tenant",
    responses((status = 200, body = MeDto)), security(("bearer" = [])))]
pub async fn get_me(auth: Authenticated) -> Json<MeDto> {
    Json(MeDto {
        tenant_id: auth.tenant.tenant_id.as_uuid(),
        tenant: auth.tenant.slug.clone(),
        caller: auth.caller.into(),
    })
}

/// One feature flag as the caller's tenant has it.
#[derive(Debug, Serialize, ToSchema)]
pub struct FeatureDto {
    pub name: String,
    pub description: String,
    pub enabled: bool,
    /// `tenant` (set for this tenant), `rollout` (a fleet-wide percentage) or `default`.
    pub source: String,
}

/// The caller's tenant's feature flags (every flag this release knows).
#[utoipa::path(get, path = "/api/v1/features", tag = "tenant",
    responses((status = 200, body = Vec<FeatureDto>)), security(("bearer" = [])))]
pub async fn get_features(auth: Authenticated) -> Json<Vec<FeatureDto>> {
    Json(
        portico_core::features::FLAGS
            .iter()
            .filter_map(|f| {
                let state = auth.tenant.features.0.get(f.name)?;
                Some(FeatureDto {
                    name: f.name.to_owned(),
                    description: f.description.to_owned(),
                    enabled: state.enabled,
                    source: serde_json::to_value(state.source)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default(),
                })
            })
            .collect(),
    )
}
