//! The browser side of sign-in on tenant hosts (`/login`, `/sso/…`, `/logout`, `/invite/…`,
//! `/account/mfa`, `/`) and home-realm discovery on the shared login host.
//!
//! The tenant is fixed by the host before any IdP says anything: every handler works on the
//! resolved tenant's database, with that tenant's connections, and builds its SP entity id, ACS
//! URL and OIDC redirect URI from that host. Every failed sign-in is audited with its reason;
//! the browser sees one generic page with the request id.

use crate::http::ErrorCode;
use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::{Form, FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use cookie::{Cookie, SameSite};
use portico_core::Hostname;
use portico_core::keys::{Keyring, TenantKeyRef};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use sqlx::PgPool;
use time::OffsetDateTime;
use tokio_postgres::Client;
use uuid::Uuid;

use super::fetch::Fetcher;
use super::oidc::{self, Providers};
use super::pages::{self, render};
use super::return_to::safe_return_to;
use super::saml::{self, SpUrls};
use crate::api::{Runtime, request_host};
use crate::catalog::TenantRoute;
use crate::error::RuntimeError;
use crate::http::{ClientIp, Problem, RequestId};
use crate::pools::TenantConn;
use crate::store::connections::{self, Connection, Protocol, role_for};
use crate::store::roles::RoleName as Role;
use crate::store::sessions::{self, Session, Timeouts};
use crate::store::{audit, users};

pub const SESSION_COOKIE: &str = "__Host-portico_session";
pub const FLOW_COOKIE: &str = "__Host-portico_flow";

/// Shared identity state of the runtime.
pub struct IdentityState {
    pub providers: Providers,
    pub keyring: Keyring,
    /// Writable control-plane pool, used for the shared SAML replay cache only.
    pub state_pool: PgPool,
    pub login_host: Hostname,
    /// What browsers see (scheme and port), for the URLs handed to them and to IdPs.
    public: portico_core::settings::RuntimeSettings,
    pub timeouts: Timeouts,
    /// Bounds concurrent argon2 work (19 MiB and tens of milliseconds each) to the cores.
    hashing: Arc<tokio::sync::Semaphore>,
}

impl IdentityState {
    /// Whether `password` matches `phc`, computed off the async workers behind the hashing
    /// semaphore.
    pub async fn verify_password(&self, password: SecretString, phc: String) -> bool {
        let Ok(_permit) = self.hashing.acquire().await else {
            return false;
        };
        tokio::task::spawn_blocking(move || users::verify_password(&password, &phc))
            .await
            .unwrap_or(false)
    }

    /// A new argon2id hash of `password`, behind the hashing semaphore.
    pub async fn hash_password(&self, password: SecretString) -> Result<String, RuntimeError> {
        let _permit = self
            .hashing
            .acquire()
            .await
            .map_err(|_| RuntimeError::InvalidInput("hashing is shut down".into()))?;
        tokio::task::spawn_blocking(move || users::hash_password(&password))
            .await
            .map_err(|_| RuntimeError::InvalidInput("hashing failed".into()))?
    }

    pub fn new(settings: &portico_core::Settings, keyring: Keyring, state_pool: PgPool) -> Self {
        let rt = &settings.runtime;
        Self {
            providers: Providers::new(Fetcher::new(rt.sso_allow_loopback)),
            keyring,
            state_pool,
            login_host: rt.login_host.clone(),
            public: rt.clone(),
            timeouts: Timeouts {
                idle: time::Duration::seconds(rt.session_idle.as_secs() as i64),
                absolute: time::Duration::seconds(rt.session_absolute.as_secs() as i64),
            },
            hashing: Arc::new(tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(2, |n| n.get()),
            )),
        }
    }

    pub fn origin(&self, host: &Hostname) -> String {
        self.public.public_origin(host.as_str())
    }
}

/// One browser request on a tenant host.
pub struct Web {
    pub rt: Runtime,
    pub tenant: Arc<TenantRoute>,
    pub host: Hostname,
    pub ip: Option<IpAddr>,
    pub request_id: String,
    pub headers: HeaderMap,
}

impl FromRequestParts<Runtime> for Web {
    type Rejection = Response;
    async fn from_request_parts(parts: &mut Parts, rt: &Runtime) -> Result<Self, Response> {
        let tenant = parts
            .extensions
            .get::<Arc<TenantRoute>>()
            .cloned()
            .ok_or_else(|| Problem::not_found().into_response())?;
        let host = request_host(&parts.headers).map_err(IntoResponse::into_response)?;
        Ok(Self {
            rt: rt.clone(),
            tenant,
            host,
            ip: parts.extensions.get::<ClientIp>().map(|c| c.0),
            request_id: RequestId::current()
                .map(|r| r.0)
                .unwrap_or_else(|| Uuid::new_v4().to_string()),
            headers: parts.headers.clone(),
        })
    }
}

/// Why a sign-in failed (for the audit log).
struct Failure {
    reason: String,
    actor: String,
    connection: Option<String>,
}

impl Failure {
    fn new(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
            actor: "-".into(),
            connection: None,
        }
    }
    fn on(mut self, connection: &str) -> Self {
        self.connection = Some(connection.to_owned());
        self
    }
    fn by(mut self, actor: &str) -> Self {
        self.actor = actor.to_owned();
        self
    }
}

impl From<RuntimeError> for Failure {
    fn from(e: RuntimeError) -> Self {
        tracing::error!(error = %e, "sign-in failed on an internal error");
        Failure::new("internal_error")
    }
}

impl Web {
    fn identity(&self) -> &IdentityState {
        &self.rt.identity
    }

    fn origin(&self) -> String {
        self.identity().origin(&self.host)
    }

    async fn conn(&self) -> Result<TenantConn, Problem> {
        Ok(self.rt.pools.get(&self.tenant).await?)
    }

    fn cookie(&self, name: &str) -> Option<Vec<u8>> {
        cookie_digest(&self.headers, name)
    }

    fn event<'a>(
        &'a self,
        event_type: audit::EventType,
        actor: &'a str,
        ok: bool,
    ) -> audit::Event<'a> {
        let mut e = audit::Event::new(event_type, actor, ok);
        e.client_ip = self.ip;
        e.request_id = Some(&self.request_id);
        e
    }

    /// The answer to a sign-in attempt: its own on success; on failure, the failure is audited
    /// and the browser gets the generic page.
    async fn settle(&self, client: &Client, outcome: Result<Response, Failure>) -> Response {
        match outcome {
            Ok(r) => r,
            Err(f) => self.fail(client, f).await,
        }
    }

    async fn fail(&self, client: &Client, f: Failure) -> Response {
        tracing::info!(reason = %f.reason, connection = ?f.connection, "sign-in failed");
        metrics::counter!("portico_login_failures_total").increment(1);
        // Anyone can fail a sign-in: past the first few per address, reason and minute, the
        // failures are counted and summarised instead of written one by one.
        let full = self
            .rt
            .failures
            .note(
                &self.tenant,
                self.ip,
                audit::EventType::LoginFailure,
                &f.reason,
                OffsetDateTime::now_utc(),
            )
            .await;
        if full {
            let mut e = self.event(audit::EventType::LoginFailure, &f.actor, false);
            e.reason = Some(&f.reason);
            e.target = f.connection.as_deref();
            if let Err(err) = audit::record(client, &e).await {
                tracing::error!(error = %err, "could not audit a failed sign-in");
            }
        }
        pages::sign_in_failed(&self.request_id)
    }

    /// Encrypts a secret of this tenant (TOTP seed) under the tenant's key.
    async fn seal(&self, plaintext: &[u8]) -> Result<Vec<u8>, RuntimeError> {
        Ok(self
            .rt
            .identity
            .keyring
            .encrypt_for_tenant(self.tenant.tenant_id, &self.key()?, plaintext)
            .await?)
    }

    /// Decrypts what [`Web::seal`] (or the CLI, for OIDC client secrets) stored.
    async fn open(&self, ciphertext: &[u8]) -> Result<Vec<u8>, RuntimeError> {
        Ok(self
            .rt
            .identity
            .keyring
            .decrypt_for_tenant(self.tenant.tenant_id, &self.key()?, ciphertext)
            .await?)
    }

    fn key(&self) -> Result<TenantKeyRef, RuntimeError> {
        self.tenant
            .placement
            .as_ref()
            .map(|p| TenantKeyRef::new(p.key_id.clone()))
            .ok_or_else(|| RuntimeError::TenantDatabase("tenant has no placement".into()))
    }

    async fn session(&self, client: &Client) -> Result<Option<Session>, RuntimeError> {
        match self.cookie(SESSION_COOKIE) {
            Some(hash) => sessions::current(client, &hash, self.identity().timeouts.idle).await,
            None => Ok(None),
        }
    }

    /// The browser's live flow, if it has one.
    async fn existing_flow(&self, client: &Client) -> Result<Option<sessions::Flow>, RuntimeError> {
        match self.cookie(FLOW_COOKIE) {
            Some(hash) => sessions::get_flow(client, &hash).await,
            None => Ok(None),
        }
    }

    /// The browser's flow, or a new one (and the cookie to set).
    async fn flow(
        &self,
        client: &Client,
    ) -> Result<(sessions::Flow, Option<String>), RuntimeError> {
        if let Some(flow) = self.existing_flow(client).await? {
            return Ok((flow, None));
        }
        let (flow, value) = sessions::create_flow(client).await?;
        Ok((flow, Some(flow_cookie(Some(value.expose_secret())))))
    }
}

/// The digest of one of our cookies in a request, if present and well-formed.
pub fn cookie_digest(headers: &HeaderMap, name: &str) -> Option<Vec<u8>> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| Cookie::parse(c.trim().to_owned()).ok())
        .find(|c| c.name() == name)
        .and_then(|c| sessions::presented(c.value()))
}

fn session_cookie(value: Option<&str>, timeouts: Timeouts) -> String {
    let mut c = Cookie::build((SESSION_COOKIE, value.unwrap_or("").to_owned()))
        .path("/")
        .secure(true)
        .http_only(true)
        .same_site(SameSite::Lax);
    c = match value {
        Some(_) => c.max_age(timeouts.absolute),
        None => c.max_age(time::Duration::ZERO),
    };
    c.build().to_string()
}

fn flow_cookie(value: Option<&str>) -> String {
    // SameSite=None: the SAML IdP comes back with a cross-site POST.
    Cookie::build((FLOW_COOKIE, value.unwrap_or("").to_owned()))
        .path("/")
        .secure(true)
        .http_only(true)
        .same_site(SameSite::None)
        .max_age(match value {
            Some(_) => sessions::FLOW_TTL,
            None => time::Duration::ZERO,
        })
        .build()
        .to_string()
}

fn with_cookies(mut resp: Response, cookies: impl IntoIterator<Item = String>) -> Response {
    for c in cookies {
        if let Ok(v) = HeaderValue::from_str(&c) {
            resp.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    resp
}

fn see_other(to: &str) -> Response {
    Redirect::to(to).into_response()
}

// ---- /login ----------------------------------------------------------------------------------

pub async fn login_page(web: Web) -> Result<Response, Problem> {
    let client = web.conn().await?;
    if web.session(&client).await?.is_some_and(|s| !s.mfa_pending) {
        return Ok(see_other("/"));
    }
    let (flow, set) = web.flow(&client).await?;
    let conns = connections::list(&client).await?;
    let local = conns.is_empty() || has_local_accounts(&client).await?;
    let list: Vec<_> = conns
        .iter()
        .map(|c| minijinja::context! { name => c.name, kind => c.protocol.kind() })
        .collect();
    Ok(with_cookies(
        render(
            StatusCode::OK,
            "login.html",
            minijinja::context! { tenant => web.tenant.slug, connections => list, local => local, csrf => flow.csrf_token },
        ),
        set,
    ))
}

async fn has_local_accounts(client: &Client) -> Result<bool, RuntimeError> {
    Ok(client
        .query_one(
            "select exists (select 1 from user_identities where connection_id is null)",
            &[],
        )
        .await
        .map_err(|e| RuntimeError::query("checking local accounts", e))?
        .get(0))
}

#[derive(Deserialize)]
pub struct LocalLogin {
    email: String,
    password: SecretString,
    csrf: String,
}

/// Checks the CSRF token of a pre-login form against the browser's flow.
async fn flow_csrf(
    web: &Web,
    client: &Client,
    presented: &str,
) -> Result<Option<sessions::Flow>, RuntimeError> {
    Ok(web
        .existing_flow(client)
        .await?
        .filter(|f| sessions::csrf_matches(&f.csrf_token, presented)))
}

/// `POST /login`. Argon2 runs behind the runtime's hashing semaphore and never while a pooled
/// connection of the tenant is held: look-ups on one connection, given back; the hash; then a
/// fresh connection for the outcome. A flood of sign-ins cannot hold the tenant's pool.
pub async fn local_login(web: Web, Form(form): Form<LocalLogin>) -> Result<Response, Problem> {
    let email = form.email.trim().to_owned();
    let (flow, account) = {
        let client = web.conn().await?;
        let flow = flow_csrf(&web, &client, &form.csrf).await?;
        let account = match &flow {
            Some(_) => users::local_account(&client, &email).await?,
            None => None,
        };
        (flow, account)
    };
    let locked = account.as_ref().is_some_and(|a| {
        a.locked_until
            .is_some_and(|t| t > OffsetDateTime::now_utc())
    });
    let verified = match (&flow, &account) {
        (Some(_), Some(a)) if !locked => {
            web.identity()
                .verify_password(form.password.clone(), a.password_hash.clone())
                .await
        }
        (Some(_), None) => {
            // Same work as for a real account, so timing does not tell which e-mails exist.
            web.identity()
                .verify_password(form.password.clone(), users::dummy_hash().to_owned())
                .await;
            false
        }
        _ => false,
    };
    let mut client = web.conn().await?;
    let outcome =
        local_login_finish(&web, &mut client, &email, flow, account, locked, verified).await;
    Ok(web.settle(&client, outcome).await)
}

async fn local_login_finish(
    web: &Web,
    client: &mut TenantConn,
    email: &str,
    flow: Option<sessions::Flow>,
    account: Option<users::LocalAccount>,
    locked: bool,
    verified: bool,
) -> Result<Response, Failure> {
    let Some(flow) = flow else {
        return Err(Failure::new("csrf").by(email));
    };
    let Some(account) = account else {
        return Err(Failure::new("unknown_user").by(email));
    };
    if locked {
        return Err(Failure::new("locked").by(email));
    }
    if !verified {
        let locked = users::record_failure(client, account.user.id).await?;
        let reason = if locked.is_some() {
            "bad_password_locked"
        } else {
            "bad_password"
        };
        return Err(Failure::new(reason).by(email));
    }
    if !account.user.active {
        return Err(Failure::new("user_deactivated").by(email));
    }
    let mfa = account.totp_enabled;
    // With a second factor, failures are reset only once it is passed too: a known password
    // must not keep resetting the lock that guards the TOTP code.
    if !mfa {
        users::reset_failures(client, account.user.id).await?;
    }
    let (_, value) = start_session(web, client, account.user.id, None, mfa).await?;
    sessions::end_flow(client, &flow.id_hash).await?;
    let target = if mfa { "/login/totp" } else { "/" };
    if !mfa {
        let mut e = web.event(audit::EventType::LoginSuccess, email, true);
        e.details = serde_json::json!({"method": "password"});
        audit::record(client, &e).await?;
    }
    Ok(with_cookies(
        see_other(target),
        [
            session_cookie(Some(value.expose_secret()), web.identity().timeouts),
            flow_cookie(None),
        ],
    ))
}

/// A new session (fresh id), ending the browser's previous one.
async fn start_session(
    web: &Web,
    client: &Client,
    user_id: Uuid,
    connection: Option<Uuid>,
    mfa_pending: bool,
) -> Result<(Session, SecretString), RuntimeError> {
    if let Some(old) = web.cookie(SESSION_COOKIE) {
        sessions::end(client, &old).await?;
    }
    sessions::create(
        client,
        user_id,
        connection,
        mfa_pending,
        web.identity().timeouts,
        web.ip,
    )
    .await
}

// ---- TOTP ------------------------------------------------------------------------------------

fn totp(secret: &[u8], account: &str, issuer: &str) -> Option<totp_rs::TOTP> {
    totp_rs::TOTP::new(
        totp_rs::Algorithm::SHA1,
        6,
        1,
        30,
        secret.to_vec(),
        Some(issuer.to_owned()),
        account.to_owned(),
    )
    .ok()
}

/// The 30-second step `code` is valid for (current, previous or next), if any.
fn totp_step(t: &totp_rs::TOTP, code: &str) -> Option<i64> {
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let code = code.trim();
    for delta in [0i64, -1, 1] {
        let at = now + delta * 30;
        let expected = t.generate(at.max(0) as u64);
        if sessions::csrf_matches(&expected, code) {
            return Some(at.div_euclid(30));
        }
    }
    None
}

pub async fn totp_page(web: Web) -> Result<Response, Problem> {
    let client = web.conn().await?;
    Ok(match web.session(&client).await? {
        Some(s) if s.mfa_pending => render(
            StatusCode::OK,
            "totp.html",
            minijinja::context! { action => "/login/totp", csrf => s.csrf_token },
        ),
        _ => see_other("/login"),
    })
}

#[derive(Deserialize)]
pub struct CodeForm {
    code: String,
    csrf: String,
}

pub async fn totp_verify(web: Web, Form(form): Form<CodeForm>) -> Result<Response, Problem> {
    let client = web.conn().await?;
    let outcome = totp_verify_inner(&web, &client, form).await;
    Ok(web.settle(&client, outcome).await)
}

async fn totp_verify_inner(
    web: &Web,
    client: &Client,
    form: CodeForm,
) -> Result<Response, Failure> {
    let session = match web.session(client).await? {
        Some(s) if s.mfa_pending => s,
        _ => return Err(Failure::new("no_pending_mfa")),
    };
    if !sessions::csrf_matches(&session.csrf_token, &form.csrf) {
        return Err(Failure::new("csrf"));
    }
    let account = users::local_account_by_user(client, session.user_id)
        .await?
        .ok_or_else(|| Failure::new("no_local_account"))?;
    let email = account.user.email.clone();
    if account
        .locked_until
        .is_some_and(|t| t > OffsetDateTime::now_utc())
    {
        sessions::end(client, &session.id_hash).await?;
        return Err(Failure::new("locked").by(&email));
    }
    let secret = match &account.totp_secret_ciphertext {
        Some(c) => web.open(c).await?,
        None => return Err(Failure::new("no_totp").by(&email)),
    };
    let step = totp(&secret, &email, &web.tenant.slug).and_then(|t| totp_step(&t, &form.code));
    let fresh = match step {
        Some(step) => users::consume_totp_step(client, account.user.id, step, false).await?,
        None => false,
    };
    if !fresh {
        if users::record_failure(client, account.user.id)
            .await?
            .is_some()
        {
            sessions::end(client, &session.id_hash).await?;
        }
        return Err(Failure::new(if step.is_some() {
            "totp_replayed"
        } else {
            "bad_totp"
        })
        .by(&email));
    }
    users::reset_failures(client, account.user.id).await?;
    // Rotate: the password-only session is replaced by a full one.
    sessions::end(client, &session.id_hash).await?;
    let (_, value) = sessions::create(
        client,
        account.user.id,
        None,
        false,
        web.identity().timeouts,
        web.ip,
    )
    .await?;
    let mut e = web.event(audit::EventType::LoginSuccess, &email, true);
    e.details = serde_json::json!({"method": "password+totp"});
    audit::record(client, &e).await?;
    Ok(with_cookies(
        see_other("/"),
        [session_cookie(
            Some(value.expose_secret()),
            web.identity().timeouts,
        )],
    ))
}

/// `GET /account/mfa`: shows the second factor's state and forms. It changes nothing: a GET
/// rides cross-site top-level navigations with the Lax session cookie.
pub async fn mfa_page(web: Web) -> Result<Response, Problem> {
    let client = web.conn().await?;
    let Some(s) = web.session(&client).await?.filter(|s| !s.mfa_pending) else {
        return Ok(see_other("/login"));
    };
    let Some(account) = users::local_account_by_user(&client, s.user_id).await? else {
        return Ok(see_other("/"));
    };
    mfa_render(&web, &account, &s.csrf_token, StatusCode::OK, None).await
}

/// The MFA page for `account`: a pending secret to confirm, else the active factor's state.
async fn mfa_render(
    web: &Web,
    account: &users::LocalAccount,
    csrf: &str,
    status: StatusCode,
    error: Option<&str>,
) -> Result<Response, Problem> {
    let pending = match &account.totp_pending_ciphertext {
        Some(c) => {
            let secret = web.open(c).await?;
            totp(&secret, &account.user.email, &web.tenant.slug)
        }
        None => None,
    };
    Ok(render(
        status,
        "mfa.html",
        minijinja::context! {
            csrf => csrf, enabled => account.totp_enabled, error => error,
            secret => pending.as_ref().map(|t| t.get_secret_base32()),
            uri => pending.as_ref().map(|t| t.get_url()),
        },
    ))
}

#[derive(Deserialize)]
pub struct ReauthForm {
    csrf: String,
    /// The active second factor's current code, or:
    #[serde(default)]
    current_code: Option<String>,
    /// the account's password.
    #[serde(default)]
    password: Option<String>,
}

fn csrf_failed() -> Response {
    Problem::new(
        StatusCode::FORBIDDEN,
        ErrorCode::CsrfFailed,
        "The form has expired; reload the page",
    )
    .into_response()
}

/// Whether the form proves the account holder is here again: the active factor's current code
/// (each code once), or the password. A wrong answer counts towards the lockout.
async fn reauthenticated(
    web: &Web,
    client: &Client,
    account: &users::LocalAccount,
    form: &ReauthForm,
) -> Result<bool, Problem> {
    let code = form
        .current_code
        .as_deref()
        .filter(|c| !c.trim().is_empty());
    let ok = match (code, &account.totp_secret_ciphertext, &form.password) {
        (Some(code), Some(c), _) if account.totp_enabled => {
            let secret = web.open(c).await?;
            match totp(&secret, &account.user.email, &web.tenant.slug)
                .and_then(|t| totp_step(&t, code))
            {
                Some(step) => {
                    users::consume_totp_step(client, account.user.id, step, false).await?
                }
                None => false,
            }
        }
        (_, _, Some(password)) if !password.is_empty() => {
            let password = SecretString::from(password.clone());
            web.identity()
                .verify_password(password, account.password_hash.clone())
                .await
        }
        _ => false,
    };
    if !ok {
        users::record_failure(client, account.user.id).await?;
    }
    Ok(ok)
}

/// `POST /account/mfa/start`: a new secret to confirm. Replacing an active factor needs its
/// current code or the password first; until the new secret is confirmed the old one stays.
pub async fn mfa_start(web: Web, Form(form): Form<ReauthForm>) -> Result<Response, Problem> {
    let client = web.conn().await?;
    let Some(s) = web.session(&client).await?.filter(|s| !s.mfa_pending) else {
        return Ok(see_other("/login"));
    };
    if !sessions::csrf_matches(&s.csrf_token, &form.csrf) {
        return Ok(csrf_failed());
    }
    let Some(account) = users::local_account_by_user(&client, s.user_id).await? else {
        return Ok(see_other("/"));
    };
    if account.totp_enabled && !reauthenticated(&web, &client, &account, &form).await? {
        let mut e = web.event(
            audit::EventType::MfaEnrolmentStarted,
            &account.user.email,
            false,
        );
        e.reason = Some("reauthentication_failed");
        audit::record(&client, &e).await?;
        return mfa_render(
            &web,
            &account,
            &s.csrf_token,
            StatusCode::FORBIDDEN,
            Some("Enter your current code or your password to replace your second factor."),
        )
        .await;
    }
    let secret = portico_core::keys::random_bytes::<20>().to_vec();
    let ciphertext = web.seal(&secret).await?;
    users::set_pending_totp(&client, s.user_id, &ciphertext).await?;
    let e = web.event(
        audit::EventType::MfaEnrolmentStarted,
        &account.user.email,
        true,
    );
    audit::record(&client, &e).await?;
    Ok(see_other("/account/mfa"))
}

/// `POST /account/mfa`: confirms the pending secret with its first code.
pub async fn mfa_enrol(web: Web, Form(form): Form<CodeForm>) -> Result<Response, Problem> {
    let client = web.conn().await?;
    let Some(s) = web.session(&client).await?.filter(|s| !s.mfa_pending) else {
        return Ok(see_other("/login"));
    };
    if !sessions::csrf_matches(&s.csrf_token, &form.csrf) {
        return Ok(csrf_failed());
    }
    let Some(account) = users::local_account_by_user(&client, s.user_id).await? else {
        return Ok(see_other("/"));
    };
    let Some(pending) = account.totp_pending_ciphertext.clone() else {
        return Ok(see_other("/account/mfa"));
    };
    let secret = web.open(&pending).await?;
    let t = totp(&secret, &account.user.email, &web.tenant.slug)
        .ok_or_else(|| RuntimeError::InvalidInput("TOTP".into()))?;
    let ok = match totp_step(&t, &form.code) {
        Some(step) => users::confirm_totp(&client, s.user_id, &pending, step).await?,
        None => false,
    };
    let e = web.event(audit::EventType::MfaEnrolled, &account.user.email, ok);
    audit::record(&client, &e).await?;
    if !ok {
        return mfa_render(
            &web,
            &account,
            &s.csrf_token,
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("That code is not valid; enter the one your app shows now."),
        )
        .await;
    }
    Ok(see_other("/"))
}

/// `POST /account/mfa/remove`: turns the second factor off, with its current code or the
/// password.
pub async fn mfa_remove(web: Web, Form(form): Form<ReauthForm>) -> Result<Response, Problem> {
    let client = web.conn().await?;
    let Some(s) = web.session(&client).await?.filter(|s| !s.mfa_pending) else {
        return Ok(see_other("/login"));
    };
    if !sessions::csrf_matches(&s.csrf_token, &form.csrf) {
        return Ok(csrf_failed());
    }
    let Some(account) = users::local_account_by_user(&client, s.user_id).await? else {
        return Ok(see_other("/"));
    };
    let ok = reauthenticated(&web, &client, &account, &form).await?;
    let mut e = web.event(audit::EventType::MfaRemoved, &account.user.email, ok);
    if !ok {
        e.reason = Some("reauthentication_failed");
        audit::record(&client, &e).await?;
        return mfa_render(
            &web,
            &account,
            &s.csrf_token,
            StatusCode::FORBIDDEN,
            Some("Enter your current code or your password to remove your second factor."),
        )
        .await;
    }
    users::remove_totp(&client, s.user_id).await?;
    audit::record(&client, &e).await?;
    Ok(see_other("/account/mfa"))
}

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

// ---- invitations -----------------------------------------------------------------------------

pub async fn invite_page(web: Web, Path(token): Path<String>) -> Result<Response, Problem> {
    let client = web.conn().await?;
    let Some(inv) = users::open_invitation(&client, &token).await? else {
        return Ok(render(
            StatusCode::NOT_FOUND,
            "error.html",
            minijinja::context! { title => "Invitation not valid", message => "This invitation link is unknown, used or expired.", request_id => web.request_id },
        ));
    };
    let (flow, set) = web.flow(&client).await?;
    Ok(with_cookies(
        render(
            StatusCode::OK,
            "invite.html",
            minijinja::context! { tenant => web.tenant.slug, email => inv.email, csrf => flow.csrf_token, min_len => users::MIN_PASSWORD_LEN },
        ),
        set,
    ))
}

#[derive(Deserialize)]
pub struct InviteForm {
    password: SecretString,
    csrf: String,
}

pub async fn invite_accept(
    web: Web,
    Path(token): Path<String>,
    Form(form): Form<InviteForm>,
) -> Result<Response, Problem> {
    let (flow, inv) = {
        let client = web.conn().await?;
        let Some(flow) = flow_csrf(&web, &client, &form.csrf).await? else {
            return Ok(csrf_failed());
        };
        let Some(inv) = users::open_invitation(&client, &token).await? else {
            return Ok(Problem::not_found()
                .detail("this invitation is unknown, used or expired")
                .into_response());
        };
        (flow, inv)
    };
    if let Err(RuntimeError::InvalidInput(message)) =
        users::check_password_policy(&form.password, &inv.email)
    {
        return Ok(render(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invite.html",
            minijinja::context! { tenant => web.tenant.slug, email => inv.email, csrf => flow.csrf_token, min_len => users::MIN_PASSWORD_LEN, error => message },
        ));
    }
    // Hashed with no pooled connection held (see `local_login`).
    let hash = web.identity().hash_password(form.password.clone()).await?;
    let mut client = web.conn().await?;
    let Some(user) = users::accept_invitation(&mut client, &token, &hash).await? else {
        return Ok(Problem::not_found()
            .detail("this invitation is unknown, used or expired")
            .into_response());
    };
    let mut e = web.event(audit::EventType::InvitationAccepted, &user.email, true);
    e.target = Some(&user.email);
    audit::record(&client, &e).await?;
    let (_, value) = start_session(&web, &client, user.id, None, false).await?;
    sessions::end_flow(&client, &flow.id_hash).await?;
    Ok(with_cookies(
        see_other("/account/mfa"),
        [
            session_cookie(Some(value.expose_secret()), web.identity().timeouts),
            flow_cookie(None),
        ],
    ))
}

// ---- SSO -------------------------------------------------------------------------------------

#[derive(Deserialize)]
pub struct StartQuery {
    login_hint: Option<String>,
    return_to: Option<String>,
}

async fn connection(client: &Client, name: &str) -> Result<Connection, Failure> {
    connections::by_name(client, name)
        .await?
        .ok_or_else(|| Failure::new("unknown_connection").on(name))
}

async fn oidc_secret(web: &Web, conn: &Connection) -> Result<SecretString, Failure> {
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
    let client = web.conn().await?;
    let outcome = sso_start_inner(&web, &client, &name, q).await;
    Ok(web.settle(&client, outcome).await)
}

async fn sso_start_inner(
    web: &Web,
    client: &Client,
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
    let mut client = web.conn().await?;
    let outcome = saml_acs_inner(&web, &mut client, &name, form).await;
    Ok(web.settle(&client, outcome).await)
}

async fn saml_acs_inner(
    web: &Web,
    client: &mut TenantConn,
    name: &str,
    form: AcsForm,
) -> Result<Response, Failure> {
    let conn = connection(client, name).await?;
    let Protocol::Saml(cfg) = &conn.protocol else {
        return Err(Failure::new("not_saml").on(name));
    };
    let flow = web.existing_flow(client).await?;
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
    let replay_new = record_assertion(web, &assertion.assertion_id, assertion.replay_until).await?;
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

/// Records an assertion id in the shared replay cache; false if it was there already.
async fn record_assertion(
    web: &Web,
    id: &str,
    until: OffsetDateTime,
) -> Result<bool, RuntimeError> {
    let pool = &web.rt.identity.state_pool;
    let inserted = sqlx::query(
        "insert into saml_replay (assertion_id, tenant_id, expires_at) values ($1, $2, $3)
         on conflict (assertion_id) do nothing",
    )
    .bind(id)
    .bind(web.tenant.tenant_id.as_uuid())
    .bind(until)
    .execute(pool)
    .await
    .map_err(|e| RuntimeError::catalog("recording a SAML assertion", e))?
    .rows_affected();
    if rand::random::<u8>() < 4 {
        let _ = sqlx::query("delete from saml_replay where expires_at < now()")
            .execute(pool)
            .await;
    }
    Ok(inserted == 1)
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
    let mut client = web.conn().await?;
    let outcome = oidc_callback_inner(&web, &mut client, &name, q).await;
    Ok(web.settle(&client, outcome).await)
}

async fn oidc_callback_inner(
    web: &Web,
    client: &mut TenantConn,
    name: &str,
    q: CallbackQuery,
) -> Result<Response, Failure> {
    let conn = connection(client, name).await?;
    let Protocol::Oidc(cfg) = &conn.protocol else {
        return Err(Failure::new("not_oidc").on(name));
    };
    let flow = web.existing_flow(client).await?;
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
    let secret = oidc_secret(web, &conn).await?;
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
        &conn,
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
async fn finish_sso(
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
