//! SSO on tenant hosts: the start (SAML AuthnRequest / OIDC code flow with PKCE), SP metadata,
//! the SAML ACS and the OIDC callback, validated against this tenant's connection only, then
//! just-in-time provisioning and a session.

use super::super::oidc::{self};
use super::super::return_to::safe_return_to;
use super::super::saml::{self, SpUrls};
use super::*;
use crate::http::Problem;
use crate::pools::TenantConn;
use crate::store::connections::{self, Connection, OidcConfig, Protocol, role_for};
use crate::store::roles::RoleName as Role;
use crate::store::sessions::{self};
use crate::store::{audit, users};
use axum::extract::{Form, Path, Query};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

// ---- SSO -------------------------------------------------------------------------------------

#[derive(Deserialize)]
pub struct StartQuery {
    login_hint: Option<String>,
    return_to: Option<String>,
}

async fn end_reads(client: &TenantConn) -> Result<(), Failure> {
    client
        .end_reads()
        .await
        .map_err(|e| crate::error::RuntimeError::query("ending the reads", e).into())
}

pub(super) async fn connection(client: &TenantConn, name: &str) -> Result<Connection, Failure> {
    connections::by_name(client, name)
        .await?
        .ok_or_else(|| Failure::new("unknown_connection").on(name))
}

/// A browser back from its IdP: the named connection and the browser's sign-in flow, if any.
async fn arrival(
    web: &Web,
    client: &TenantConn,
    name: &str,
) -> Result<(Connection, Option<sessions::Flow>), Failure> {
    let conn = connection(client, name).await?;
    let flow = web.existing_flow(client).await?;
    Ok((conn, flow))
}

pub(super) async fn oidc_secret(web: &Web, conn: &Connection) -> Result<SecretString, Failure> {
    let c = conn
        .secret_ciphertext
        .as_ref()
        .ok_or_else(|| Failure::new("oidc_no_secret").on(&conn.name))?;
    let plain = web.open(c).await?;
    String::from_utf8(plain)
        .map(SecretString::from)
        .map_err(|_| Failure::new("oidc_secret_corrupt").on(&conn.name))
}

pub fn redirect_uri(origin: &str, connection: &str) -> String {
    format!("{origin}/sso/oidc/{connection}/callback")
}

pub async fn sso_start(
    web: Web,
    Path(name): Path<String>,
    Query(q): Query<StartQuery>,
) -> Result<Response, Problem> {
    web.attempt(async |web, client| sso_start_inner(web, client, &name, q).await)
        .await
}

pub(super) async fn sso_start_inner(
    web: &Web,
    client: &TenantConn,
    name: &str,
    q: StartQuery,
) -> Result<Response, Failure> {
    let conn = connection(client, name).await?;
    let (flow, set) = web.flow(client).await?;
    let origin = web.origin();
    let return_to = safe_return_to(&origin, q.return_to.as_deref());
    let url = match &conn.protocol {
        Protocol::Saml(cfg) => {
            let urls = SpUrls::new(&origin, &conn.name);
            let (id, url) = saml::authn_request(cfg, &urls, "")
                .map_err(|e| Failure::new(e.reason()).on(name))?;
            sessions::add_request(client, &id, &flow.id_hash, conn.id, None, None, &return_to)
                .await?;
            url
        }
        Protocol::Oidc(cfg) => {
            // The provider may be fetched from the IdP: no read-only transaction waits on it.
            end_reads(client).await?;
            let provider = web
                .rt
                .identity
                .providers
                .get(web.tenant.tenant_id, conn.id, cfg)
                .await
                .map_err(|e| Failure::new(e.reason()).on(name))?;
            let secret = oidc_secret(web, &conn).await?;
            let hint = q.login_hint.as_deref().filter(|h| users::valid_email(h));
            let auth = oidc::authorize(
                &provider,
                cfg,
                &secret,
                &redirect_uri(&origin, &conn.name),
                hint,
            )
            .await
            .map_err(|e| Failure::new(e.reason()).on(name))?;
            sessions::add_request(
                client,
                &auth.state,
                &flow.id_hash,
                conn.id,
                Some(&auth.nonce),
                Some(&auth.pkce_verifier),
                &return_to,
            )
            .await?;
            auth.url
        }
    };
    Ok(with_cookies(see_other(&url), set))
}

pub async fn saml_metadata(web: Web, Path(name): Path<String>) -> Result<Response, Problem> {
    let client = web.conn().await?;
    let conn = connections::by_name(&client, &name)
        .await?
        .ok_or_else(Problem::not_found)?;
    let Protocol::Saml(cfg) = &conn.protocol else {
        return Err(Problem::not_found());
    };
    let xml = saml::sp_metadata(cfg, &SpUrls::new(&web.origin(), &conn.name)).map_err(|e| {
        tracing::error!(error = %e, "cannot render SP metadata");
        Problem::internal()
    })?;
    Ok((
        [(header::CONTENT_TYPE, "application/samlmetadata+xml")],
        xml,
    )
        .into_response())
}

#[derive(Deserialize)]
pub struct AcsForm {
    #[serde(rename = "SAMLResponse")]
    saml_response: String,
    /// IdP-initiated sign-ins may name where to go (checked like `return_to`).
    #[serde(rename = "RelayState")]
    relay_state: Option<String>,
}

pub async fn saml_acs(
    web: Web,
    Path(name): Path<String>,
    Form(form): Form<AcsForm>,
) -> Result<Response, Problem> {
    web.attempt(async |web, client| saml_acs_step(web, client, &name, form).await)
        .await
}

async fn saml_acs_step(
    web: &Web,
    client: &mut TenantConn,
    name: &str,
    form: AcsForm,
) -> Result<Response, Failure> {
    let (conn, flow) = arrival(web, client, name).await?;
    let Protocol::Saml(cfg) = &conn.protocol else {
        return Err(Failure::new("not_saml").on(name));
    };
    let pending = match &flow {
        Some(f) => sessions::pending_ids(client, &f.id_hash, conn.id).await?,
        None => Vec::new(),
    };
    let urls = SpUrls::new(&web.origin(), &conn.name);
    let (cfg2, xml_in, pending2) = (cfg.clone(), form.saml_response, pending.clone());
    let assertion = tokio::task::spawn_blocking(move || {
        saml::validate_response(&cfg2, &urls, &xml_in, &pending2)
    })
    .await
    .map_err(|_| Failure::new("internal_error").on(name))?
    .map_err(|e| {
        tracing::info!(error = %e, "SAML response refused");
        Failure::new(e.reason()).on(name)
    })?;
    let replay_new = crate::replay::record(
        &web.rt.identity.state_pool,
        web.tenant.tenant_id,
        &assertion.assertion_id,
        assertion.replay_until,
    )
    .await?;
    if !replay_new {
        return Err(Failure::new("saml_replay").on(name).by(&assertion.subject));
    }
    // SP-initiated: where the start asked to go; IdP-initiated: the RelayState, if any.
    let mut return_to = form.relay_state;
    if let (Some(id), Some(f)) = (&assertion.in_response_to, &flow) {
        match sessions::take_request(client, id, &f.id_hash, conn.id).await? {
            Some(req) => return_to = Some(req.return_to),
            None => return Err(Failure::new("saml_unknown_request").on(name)),
        }
    }
    let return_to = safe_return_to(&web.origin(), return_to.as_deref());
    // SAML has no `email_verified`: the connection says whether its IdP's e-mail counts.
    let email = assertion
        .email
        .as_deref()
        .filter(|_| cfg.email_authoritative);
    finish_sso(
        web,
        client,
        &conn,
        &assertion.subject,
        email,
        &assertion.attributes,
        flow.as_ref(),
        &return_to,
    )
    .await
}

#[derive(Deserialize)]
pub struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    iss: Option<String>,
    error: Option<String>,
}

pub async fn oidc_callback(
    web: Web,
    Path(name): Path<String>,
    Query(q): Query<CallbackQuery>,
) -> Result<Response, Problem> {
    web.attempt(async |web, client| {
        let (conn, flow) = arrival(web, client, &name).await?;
        let Protocol::Oidc(cfg) = &conn.protocol else {
            return Err(Failure::new("not_oidc").on(&name));
        };
        oidc_callback_step(web, client, &conn, cfg, flow, q).await
    })
    .await
}

async fn oidc_callback_step(
    web: &Web,
    client: &mut TenantConn,
    conn: &Connection,
    cfg: &OidcConfig,
    flow: Option<sessions::Flow>,
    q: CallbackQuery,
) -> Result<Response, Failure> {
    let name = conn.name.as_str();
    let Some(flow) = flow else {
        return Err(Failure::new("oidc_no_flow").on(name));
    };
    let Some(state) = q.state.as_deref() else {
        return Err(Failure::new("oidc_no_state").on(name));
    };
    // Single use: the request is consumed whatever happens next.
    let Some(req) = sessions::take_request(client, state, &flow.id_hash, conn.id).await? else {
        return Err(Failure::new("oidc_state").on(name));
    };
    // Discovery and the code exchange talk to the IdP: no read-only transaction waits on them.
    end_reads(client).await?;
    let provider = web
        .rt
        .identity
        .providers
        .get(web.tenant.tenant_id, conn.id, cfg)
        .await
        .map_err(|e| Failure::new(e.reason()).on(name))?;
    oidc::check_iss_parameter(&provider, cfg, q.iss.as_deref())
        .map_err(|e| Failure::new(e.reason()).on(name))?;
    if let Some(err) = q.error {
        tracing::info!(error = %err.chars().take(100).collect::<String>(), "IdP returned an error");
        return Err(Failure::new("oidc_authorization_error").on(name));
    }
    let code = q
        .code
        .ok_or_else(|| Failure::new("oidc_no_code").on(name))?;
    let (Some(nonce), Some(verifier)) = (req.nonce, req.pkce_verifier) else {
        return Err(Failure::new("oidc_state").on(name));
    };
    let secret = oidc_secret(web, conn).await?;
    let identity = oidc::redeem(
        &web.rt.identity.providers,
        &provider,
        cfg,
        &secret,
        &redirect_uri(&web.origin(), &conn.name),
        &code,
        &verifier,
        &nonce,
    )
    .await
    .map_err(|e| {
        tracing::info!(error = %e, "OIDC sign-in refused");
        Failure::new(e.reason()).on(name)
    })?;
    let email = identity
        .email
        .as_deref()
        .filter(|_| identity.email_verified);
    finish_sso(
        web,
        client,
        conn,
        &identity.subject,
        email,
        &identity.claims,
        Some(&flow),
        &req.return_to,
    )
    .await
}

/// Just-in-time provisioning, role mapping, session. `verified_email` is the e-mail only when
/// the IdP vouches for it (OIDC `email_verified`, SAML: an authoritative connection); the user
/// is identified by (connection, subject) either way, and an e-mail another user holds is
/// never taken over.
#[allow(clippy::too_many_arguments)]
pub(super) async fn finish_sso(
    web: &Web,
    client: &mut TenantConn,
    conn: &Connection,
    subject: &str,
    verified_email: Option<&str>,
    attributes: &[(String, Vec<String>)],
    flow: Option<&sessions::Flow>,
    return_to: &str,
) -> Result<Response, Failure> {
    let role: Role = role_for(conn.default_role.clone(), &conn.role_mappings, attributes);
    let (user, created) =
        users::upsert_sso_user(client, conn.id, subject, verified_email, role).await?;
    // The actor: the e-mail the user has now, else the identity.
    let actor = if user.email.is_empty() {
        format!("{}:{subject}", conn.name)
    } else {
        user.email.clone()
    };
    if !user.active {
        return Err(Failure::new("user_deactivated").on(&conn.name).by(&actor));
    }
    let (_, value) = start_session(web, client, user.id, Some(conn.id), false).await?;
    if let Some(f) = flow {
        sessions::end_flow(client, &f.id_hash).await?;
    }
    let mut e = web.event(audit::EventType::LoginSuccess, &actor, true);
    e.target = Some(&conn.name);
    e.details = serde_json::json!({"method": conn.protocol.kind(), "subject": subject, "created": created, "role": user.role.as_str(), "user_id": user.id, "email_verified": verified_email.is_some()});
    audit::record(client, &e).await?;
    // Checked again here: a stored value may predate a stricter rule.
    let return_to = safe_return_to(&web.origin(), Some(return_to));
    Ok(with_cookies(
        see_other(&return_to),
        [
            session_cookie(Some(value.expose_secret()), web.identity().timeouts),
            flow_cookie(None),
        ],
    ))
}
