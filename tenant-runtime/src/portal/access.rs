//! Roles, users, sites, and four-eyes approvals of one tenant.
//!
//! Delegation never escalates: whoever defines or grants a role, or changes a user, must hold
//! every permission of the role (and of the user's current role). Actions the tenant's policy
//! marks sensitive (by default granting a role with `users.manage`, `roles.manage` or
//! `sso.manage`, defining such a role, and changing an SSO connection) are stored as a pending
//! approval (`202`) and carried out only when a *different* principal with the needed
//! permissions approves.

use crate::http::ErrorCode;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use secrecy::ExposeSecret;

use super::change::{self, Applied, Change, MANAGERS};
use super::dto::*;
use super::{ApiQuery, path_id};
use crate::caller::Authenticated;
use crate::http::{ApiJson, Problem};
use crate::state::Runtime;
use crate::store::audit::EventType;
use crate::store::roles::{self, Permission, Permissions, RoleName};
use crate::store::{approvals, sites, users};

/// `403 escalation_refused` (audited) unless the caller holds every permission in `perms`.
async fn no_escalation(auth: &Authenticated, perms: Permissions) -> Result<(), Problem> {
    if perms.is_subset(auth.caller.perms) {
        return Ok(());
    }
    let missing: Vec<&str> = perms
        .list()
        .into_iter()
        .filter(|p| !auth.caller.can(*p))
        .map(Permission::as_str)
        .collect();
    let problem = Problem::new(
        StatusCode::FORBIDDEN,
        ErrorCode::EscalationRefused,
        "You cannot grant a permission you do not hold",
    )
    .detail(format!("You do not hold: {}", missing.join(", ")));
    Err(auth.refuse(problem, "no_escalation").await)
}

/// `403 escalation_refused` (audited) unless `wanted` (`None`: every site) lies within the
/// caller's own sites.
async fn within_my_sites(auth: &Authenticated, wanted: Option<&[String]>) -> Result<(), Problem> {
    let Some(mine) = &auth.caller.sites else {
        return Ok(());
    };
    if wanted.is_some_and(|w| w.iter().all(|x| mine.contains(x))) {
        return Ok(());
    }
    let problem = Problem::new(
        StatusCode::FORBIDDEN,
        ErrorCode::EscalationRefused,
        "You cannot grant sites you do not have",
    )
    .detail(format!("You are limited to: {}", mine.join(", ")));
    Err(auth.refuse(problem, "site_scope").await)
}

/// `403 forbidden` (audited) unless the caller holds at least one of `perms`.
async fn any_of(auth: &Authenticated, perms: &[Permission]) -> Result<(), Problem> {
    if perms.iter().any(|p| auth.caller.can(*p)) {
        return Ok(());
    }
    let problem = Problem::forbidden(format!(
        "This needs one of: {}",
        perms
            .iter()
            .map(|p| p.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    ));
    Err(auth.refuse(problem, "require_any").await)
}

fn parse_permissions(names: &[String]) -> Result<Permissions, Problem> {
    let mut errors = Vec::new();
    let mut out = Vec::new();
    for (i, n) in names.iter().enumerate() {
        match Permission::parse(n) {
            Some(p) => out.push(p),
            None => errors.push((
                format!("permissions[{i}]"),
                format!("unknown permission '{n}'"),
            )),
        }
    }
    if errors.is_empty() {
        Ok(out.into_iter().collect())
    } else {
        Err(Problem::fields(errors))
    }
}

fn role_name(field: &str, s: &str) -> Result<RoleName, Problem> {
    RoleName::parse(s).ok_or_else(|| {
        Problem::fields(vec![(
            field.to_owned(),
            "lowercase letters, digits, '_' or '-', starting with a letter, at most 40".into(),
        )])
    })
}

/// The role named in a request's `role` field, if it exists and the caller holds all of it.
async fn grantable(auth: &Authenticated, role: &str) -> Result<(RoleName, roles::Role), Problem> {
    let name = role_name("role", role)?;
    let role = roles::get(&auth.conn, name.as_str())
        .await?
        .ok_or_else(|| {
            Problem::fields(vec![("role".into(), format!("there is no role '{name}'"))])
        })?;
    no_escalation(auth, role.permission_set()).await?;
    Ok((name, role))
}

/// Stores `change` as a pending approval (`202`), audited as requested.
pub(crate) async fn pending(auth: &Authenticated, change: &Change) -> Result<Response, Problem> {
    let target = change.target();
    let a = approvals::request(
        &auth.conn,
        change.policy_action(),
        &target,
        &change.payload(&auth.caller.name()),
        &auth.caller.principal(),
    )
    .await?;
    auth.record(
        EventType::ApprovalRequested,
        &target,
        serde_json::json!({"approval": a.id, "action": change.policy_action()}),
    )
    .await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(PendingApprovalDto {
            status: "pending_approval".into(),
            approval: a.into(),
        }),
    )
        .into_response())
}

// ---- roles -----------------------------------------------------------------------------------

#[utoipa::path(get, path = "/api/v1/roles", tag = "access",
    responses((status = 200, body = [RoleDto])), security(("bearer" = [])))]
pub async fn list_roles(auth: Authenticated) -> Result<Json<Vec<RoleDto>>, Problem> {
    any_of(&auth, &[Permission::UsersManage, Permission::RolesManage]).await?;
    Ok(Json(
        roles::list(&auth.conn)
            .await?
            .into_iter()
            .map(Into::into)
            .collect(),
    ))
}

#[utoipa::path(post, path = "/api/v1/roles", tag = "access", request_body = RoleRequest,
    responses((status = 201, body = RoleDto), (status = 202, body = PendingApprovalDto)),
    security(("bearer" = [])))]
pub async fn create_role(
    State(rt): State<Runtime>,
    auth: Authenticated,
    ApiJson(req): ApiJson<RoleRequest>,
) -> Result<Response, Problem> {
    auth.require(Permission::RolesManage).await?;
    let name = role_name("name", req.name.as_deref().unwrap_or(""))?;
    save_role(&rt, auth, name, req, false).await
}

#[utoipa::path(put, path = "/api/v1/roles/{name}", tag = "access", request_body = RoleRequest,
    params(("name" = String, Path)),
    responses((status = 200, body = RoleDto), (status = 202, body = PendingApprovalDto)),
    security(("bearer" = [])))]
pub async fn update_role(
    State(rt): State<Runtime>,
    auth: Authenticated,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<RoleRequest>,
) -> Result<Response, Problem> {
    auth.require(Permission::RolesManage).await?;
    let name = RoleName::parse(&name).ok_or_else(Problem::not_found)?;
    if req.name.as_deref().is_some_and(|n| n != name.as_str()) {
        return Err(Problem::fields(vec![(
            "name".into(),
            "cannot be changed".into(),
        )]));
    }
    let existing = roles::get(&auth.conn, name.as_str())
        .await?
        .ok_or_else(Problem::not_found)?;
    no_escalation(&auth, existing.permission_set()).await?;
    save_role(&rt, auth, name, req, true).await
}

async fn save_role(
    rt: &Runtime,
    mut auth: Authenticated,
    name: RoleName,
    req: RoleRequest,
    replace: bool,
) -> Result<Response, Problem> {
    let perms = parse_permissions(&req.permissions)?;
    if req.description.chars().count() > 500 {
        return Err(Problem::fields(vec![(
            "description".into(),
            "at most 500 characters".into(),
        )]));
    }
    no_escalation(&auth, perms).await?;
    let change = Change::SaveRole {
        name,
        description: req.description,
        permissions: perms.names(),
        replace,
    };
    if perms.intersects(Permissions::PRIVILEGED) && change.needs_approval(&auth).await? {
        return pending(&auth, &change).await;
    }
    let Applied::Role(role) = change::apply(rt, &mut auth, &change, None).await? else {
        return Err(Problem::internal());
    };
    let status = if replace {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(RoleDto::from(role))).into_response())
}

#[utoipa::path(delete, path = "/api/v1/roles/{name}", tag = "access",
    params(("name" = String, Path)), responses((status = 204)), security(("bearer" = [])))]
pub async fn delete_role(
    auth: Authenticated,
    Path(name): Path<String>,
) -> Result<StatusCode, Problem> {
    auth.require(Permission::RolesManage).await?;
    let name = RoleName::parse(&name).ok_or_else(Problem::not_found)?;
    let role = roles::get(&auth.conn, name.as_str())
        .await?
        .ok_or_else(Problem::not_found)?;
    no_escalation(&auth, role.permission_set()).await?;
    roles::delete(&auth.conn, &name).await?;
    auth.record(EventType::RoleDeleted, name.as_str(), serde_json::json!({}))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- users -----------------------------------------------------------------------------------

#[utoipa::path(get, path = "/api/v1/users", tag = "access",
    responses((status = 200, body = [UserDto])), security(("bearer" = [])))]
pub async fn list_users(auth: Authenticated) -> Result<Json<Vec<UserDto>>, Problem> {
    auth.require(Permission::UsersManage).await?;
    Ok(Json(
        users::list(&auth.conn)
            .await?
            .into_iter()
            .map(Into::into)
            .collect(),
    ))
}

/// The user, if the caller may manage them: holding every permission of the user's role,
/// and (for a site-limited caller) only users limited to the caller's sites.
pub(super) async fn managed_user(auth: &Authenticated, id: &str) -> Result<users::User, Problem> {
    auth.require(Permission::UsersManage).await?;
    let user = users::get(&auth.conn, path_id(id)?)
        .await?
        .ok_or_else(Problem::not_found)?;
    let perms = users::permissions_of(&auth.conn, &user.role).await?;
    no_escalation(auth, perms).await?;
    if let Some(mine) = &auth.caller.sites {
        let theirs_ok = user
            .site_scope
            .as_ref()
            .is_some_and(|s| s.iter().all(|x| mine.contains(x)));
        if !theirs_ok {
            let problem = Problem::forbidden("This user is not limited to your sites");
            return Err(auth.refuse(problem, "site_scope").await);
        }
    }
    Ok(user)
}

#[utoipa::path(put, path = "/api/v1/users/{id}/role", tag = "access", request_body = SetRoleRequest,
    params(("id" = Uuid, Path)),
    responses((status = 200, body = UserDto), (status = 202, body = PendingApprovalDto)),
    security(("bearer" = [])))]
pub async fn set_user_role(
    State(rt): State<Runtime>,
    mut auth: Authenticated,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<SetRoleRequest>,
) -> Result<Response, Problem> {
    let user = managed_user(&auth, &id).await?;
    let (name, role) = grantable(&auth, &req.role).await?;
    let change = Change::GrantRole {
        user_id: user.id,
        email: user.email,
        role: name,
    };
    if role.permission_set().intersects(Permissions::PRIVILEGED)
        && change.needs_approval(&auth).await?
    {
        return pending(&auth, &change).await;
    }
    let Applied::User(updated) = change::apply(&rt, &mut auth, &change, None).await? else {
        return Err(Problem::internal());
    };
    Ok(Json(UserDto::from(updated)).into_response())
}

#[utoipa::path(put, path = "/api/v1/users/{id}/sites", tag = "access", request_body = SetSitesRequest,
    params(("id" = Uuid, Path)), responses((status = 200, body = UserDto)), security(("bearer" = [])))]
pub async fn set_user_sites(
    auth: Authenticated,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<SetSitesRequest>,
) -> Result<Json<UserDto>, Problem> {
    let user = managed_user(&auth, &id).await?;
    within_my_sites(&auth, req.sites.as_deref()).await?;
    let updated = users::set_sites(&auth.conn, user.id, req.sites.as_deref()).await?;
    auth.record(
        EventType::UserSitesChanged,
        &user.email,
        serde_json::json!({"sites": req.sites}),
    )
    .await?;
    Ok(Json(updated.into()))
}

#[utoipa::path(post, path = "/api/v1/users/{id}/deactivate", tag = "access",
    params(("id" = Uuid, Path)), responses((status = 200, body = UserDto)), security(("bearer" = [])))]
pub async fn deactivate_user(
    mut auth: Authenticated,
    Path(id): Path<String>,
) -> Result<Json<UserDto>, Problem> {
    let user = managed_user(&auth, &id).await?;
    if auth.caller.user_id == Some(user.id) {
        return Err(
            Problem::new(StatusCode::CONFLICT, ErrorCode::Conflict, "Conflict")
                .detail("You cannot deactivate yourself"),
        );
    }
    let done = users::deactivate_id(&mut auth.conn, user.id).await?;
    auth.record(
        EventType::UserDeactivated,
        &user.email,
        serde_json::json!({}),
    )
    .await?;
    Ok(Json(done.into()))
}

#[utoipa::path(post, path = "/api/v1/users/invitations", tag = "access", request_body = InviteRequest,
    responses((status = 201, body = InvitationDto)), security(("bearer" = [])))]
pub async fn invite_user(
    State(rt): State<Runtime>,
    headers: HeaderMap,
    auth: Authenticated,
    ApiJson(req): ApiJson<InviteRequest>,
) -> Result<(StatusCode, Json<InvitationDto>), Problem> {
    auth.require(Permission::UsersManage).await?;
    let (name, role) = grantable(&auth, &req.role).await?;
    // The invited user gets exactly these sites when they accept. A site-limited caller
    // invites into its own sites unless it names a subset of them.
    let sites = match (req.sites, &auth.caller.sites) {
        (None, Some(mine)) => Some(mine.clone()),
        (wanted, _) => wanted,
    };
    within_my_sites(&auth, sites.as_deref()).await?;
    if role.permission_set().intersects(Permissions::PRIVILEGED)
        && approvals::required(&auth.conn, change::GRANT_PRIVILEGED_ROLE).await?
    {
        return Err(Problem::new(
            StatusCode::FORBIDDEN,
            ErrorCode::ApprovalRequired,
            "Invite with an unprivileged role, then grant this one (which needs a second admin)",
        ));
    }
    let (inv, token) =
        users::invite(&auth.conn, &req.email, name.clone(), sites.as_deref()).await?;
    auth.record(
        EventType::UserInvited,
        &inv.email,
        serde_json::json!({"role": name.as_str(), "sites": inv.sites}),
    )
    .await?;
    let host = crate::tenancy::request_host(&headers)?;
    Ok((
        StatusCode::CREATED,
        Json(InvitationDto {
            email: inv.email,
            role: name.as_str().to_owned(),
            sites: inv.sites,
            url: format!(
                "{}/invite/{}",
                rt.identity.origin(&host),
                token.expose_secret()
            ),
            expires_at: inv.expires_at,
        }),
    ))
}

// ---- sites -----------------------------------------------------------------------------------

#[utoipa::path(get, path = "/api/v1/sites", tag = "access",
    responses((status = 200, body = [SiteDto])), security(("bearer" = [])))]
pub async fn list_sites(auth: Authenticated) -> Result<Json<Vec<SiteDto>>, Problem> {
    Ok(Json(
        sites::list(&auth.conn)
            .await?
            .into_iter()
            .filter(|(code, _)| auth.caller.sees_site(Some(code)))
            .map(|(code, name)| SiteDto { code, name })
            .collect(),
    ))
}

#[utoipa::path(post, path = "/api/v1/sites", tag = "access", request_body = SiteDto,
    responses((status = 201, body = SiteDto)), security(("bearer" = [])))]
pub async fn create_site(
    auth: Authenticated,
    ApiJson(req): ApiJson<SiteDto>,
) -> Result<(StatusCode, Json<SiteDto>), Problem> {
    auth.require(Permission::UsersManage).await?;
    if auth.caller.sites.is_some() {
        let problem = Problem::forbidden("Site-limited callers cannot create sites");
        return Err(auth.refuse(problem, "site_scope").await);
    }
    if req.name.trim().is_empty() || req.name.chars().count() > 200 {
        return Err(Problem::fields(vec![(
            "name".into(),
            "1 to 200 characters".into(),
        )]));
    }
    sites::create(&auth.conn, &req.code, req.name.trim()).await?;
    auth.record(EventType::SiteCreated, &req.code, serde_json::json!({}))
        .await?;
    Ok((StatusCode::CREATED, Json(req)))
}

// ---- approvals -------------------------------------------------------------------------------

#[utoipa::path(get, path = "/api/v1/approvals", tag = "access", params(ApprovalQuery),
    responses((status = 200, body = [ApprovalDto])), security(("bearer" = [])))]
pub async fn list_approvals(
    auth: Authenticated,
    ApiQuery(q): ApiQuery<ApprovalQuery>,
) -> Result<Json<Vec<ApprovalDto>>, Problem> {
    any_of(&auth, &MANAGERS).await?;
    Ok(Json(
        approvals::list(&auth.conn, q.status.as_deref())
            .await?
            .into_iter()
            .map(Into::into)
            .collect(),
    ))
}

/// A pending approval `auth` may decide on, with its change: another person than the
/// requester, holding what the change needs (within their sites, for a site-limited approver),
/// and a requester who still could make the request.
async fn decidable(
    auth: &Authenticated,
    id: &str,
) -> Result<(approvals::Approval, Change), Problem> {
    any_of(auth, &MANAGERS).await?;
    let a = approvals::get(&auth.conn, path_id(id)?)
        .await?
        .ok_or_else(Problem::not_found)?;
    if a.status != "pending" {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            ErrorCode::ApprovalDecided,
            "Already decided",
        )
        .detail(format!("This request is {}", a.status)));
    }
    if a.requested_by == auth.caller.principal() {
        return Err(Problem::new(
            StatusCode::FORBIDDEN,
            ErrorCode::FourEyes,
            "A second person must decide on this request",
        ));
    }
    // Service tokens belong to no person, so two of them (made by one operator) are not two
    // pairs of eyes: only people decide.
    if auth.caller.user_id.is_none() {
        let problem = Problem::new(
            StatusCode::FORBIDDEN,
            ErrorCode::FourEyes,
            "A second person must decide on this request",
        )
        .detail("Service tokens cannot decide on approvals; use a token acting for a user");
        return Err(auth.refuse(problem, "service_token_approval").await);
    }
    let change = Change::from_payload(&a.payload).ok_or_else(|| {
        tracing::error!(approval = %a.id, "an approval's payload is not a change");
        Problem::internal()
    })?;
    let needs = change.needs(auth).await?;
    no_escalation(auth, needs).await?;
    // A site-limited approver decides only on users within its sites, and on nothing that
    // applies to the whole organisation.
    if auth.caller.sites.is_some() {
        let target_sites = match change.subject_user() {
            Some(u) => users::get(&auth.conn, u).await?.and_then(|u| u.site_scope),
            None => None,
        };
        within_my_sites(auth, target_sites.as_deref()).await?;
    }
    // The request stands only while its requester could still make it: still active (or the
    // token still live) and still holding what it needed.
    let standing = approvals::requester_permissions(&auth.conn, &a.requested_by).await?;
    if !standing.is_some_and(|p| needs.is_subset(p)) {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            ErrorCode::RequesterLostRights,
            "The requester can no longer make this request",
        )
        .detail("The requester is no longer active or no longer holds what this needs"));
    }
    Ok((a, change))
}

#[utoipa::path(post, path = "/api/v1/approvals/{id}/approve", tag = "access",
    params(("id" = Uuid, Path)), responses((status = 200, body = ApprovalDto)), security(("bearer" = [])))]
pub async fn approve(
    State(rt): State<Runtime>,
    mut auth: Authenticated,
    Path(id): Path<String>,
) -> Result<Json<ApprovalDto>, Problem> {
    let (a, change) = decidable(&auth, &id).await?;
    let me = auth.caller.principal();
    approvals::decide(&auth.conn, a.id, &me, "approved", "applying")
        .await?
        .ok_or_else(|| {
            Problem::new(
                StatusCode::CONFLICT,
                ErrorCode::ApprovalDecided,
                "Already decided or expired",
            )
        })?;
    auth.record(EventType::ApprovalApproved, &a.target, serde_json::json!({"approval": a.id, "action": a.action, "requested_by": a.payload.get("requested_by_name")}))
    .await?;
    let applied = change::apply(&rt, &mut auth, &change, Some(&a)).await;
    let (status, outcome) = match &applied {
        // The requester finds what the approval started in the outcome.
        Ok(Applied::Export(e)) => ("approved", format!("applied: export {}", e.id)),
        Ok(_) => ("approved", "applied".to_owned()),
        Err(p) => (
            "failed",
            p.detail.clone().unwrap_or_else(|| p.title.to_owned()),
        ),
    };
    approvals::set_outcome(&auth.conn, a.id, status, &outcome).await?;
    applied?;
    let done = approvals::get(&auth.conn, a.id)
        .await?
        .ok_or_else(Problem::not_found)?;
    Ok(Json(done.into()))
}

#[utoipa::path(post, path = "/api/v1/approvals/{id}/reject", tag = "access",
    params(("id" = Uuid, Path)), responses((status = 200, body = ApprovalDto)), security(("bearer" = [])))]
pub async fn reject(
    auth: Authenticated,
    Path(id): Path<String>,
) -> Result<Json<ApprovalDto>, Problem> {
    let (a, _) = decidable(&auth, &id).await?;
    let done = approvals::decide(
        &auth.conn,
        a.id,
        &auth.caller.principal(),
        "rejected",
        "rejected",
    )
    .await?
    .ok_or_else(|| {
        Problem::new(
            StatusCode::CONFLICT,
            ErrorCode::ApprovalDecided,
            "Already decided or expired",
        )
    })?;
    auth.record(
        EventType::ApprovalRejected,
        &a.target,
        serde_json::json!({"approval": a.id, "action": a.action}),
    )
    .await?;
    Ok(Json(done.into()))
}

// ---- policy ----------------------------------------------------------------------------------

#[utoipa::path(get, path = "/api/v1/approval-policy", tag = "access",
    responses((status = 200, body = [PolicyEntryDto])), security(("bearer" = [])))]
pub async fn get_policy(auth: Authenticated) -> Result<Json<Vec<PolicyEntryDto>>, Problem> {
    any_of(&auth, &MANAGERS).await?;
    Ok(Json(
        approvals::policy(&auth.conn)
            .await?
            .into_iter()
            .map(|(action, required)| PolicyEntryDto { action, required })
            .collect(),
    ))
}

#[utoipa::path(put, path = "/api/v1/approval-policy", tag = "access", request_body = PolicyEntryDto,
    responses((status = 200, body = [PolicyEntryDto]), (status = 202, body = PendingApprovalDto)),
    security(("bearer" = [])))]
pub async fn set_policy(
    auth: Authenticated,
    ApiJson(req): ApiJson<PolicyEntryDto>,
) -> Result<Response, Problem> {
    no_escalation(&auth, MANAGERS.into_iter().collect()).await?;
    if !approvals::policy(&auth.conn)
        .await?
        .iter()
        .any(|(a, _)| *a == req.action)
    {
        return Err(Problem::fields(vec![(
            "action".into(),
            format!("unknown action '{}'", req.action),
        )]));
    }
    if !req.required {
        return pending(
            &auth,
            &Change::DisableApprovalRule {
                action: req.action.clone(),
            },
        )
        .await;
    }
    approvals::set_policy(&auth.conn, &req.action, true).await?;
    auth.record(
        EventType::ApprovalPolicyChanged,
        &req.action,
        serde_json::json!({"required": true}),
    )
    .await?;
    Ok(get_policy(auth).await?.into_response())
}
