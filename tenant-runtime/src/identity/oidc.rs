//! OpenID Connect relying party, one per (tenant, connection), on top of `openidconnect`.
//!
//! Authorization code flow with PKCE (S256), `state` and `nonce`. What is configured rather
//! than left to defaults:
//!
//! - **Discovery is fetched by us** (size/time limits, no private addresses) and its `issuer`
//!   must equal the configured issuer exactly, byte for byte.
//! - **Algorithms**: RS256, ES256 and PS256 only (the confidential-client default would also
//!   accept HS256 keyed with the client secret).
//! - **JWKS refresh**: when an ID token names a `kid` the cached key set lacks, the key set is
//!   fetched again (at most once per [`JWKS_REFRESH_MIN`] per connection), so IdP key rotation
//!   works; a known `kid` whose signature fails is an impostor and is refused without refresh.
//! - **RFC 9207**: the `iss` authorization-response parameter must equal the issuer when
//!   present, and must be present when discovery says the IdP sends it.
//! - **azp**: with several audiences, `azp` must be present and equal our client id.
//! - **UserInfo**: when the IdP has a UserInfo endpoint, its claims (e-mail, groups) complete
//!   the ID token's — many IdPs put only `sub` in the ID token — and its `sub` must equal the
//!   ID token's. The ID token's own claims win.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use moka::future::Cache;
use openidconnect::core::{
    CoreClient, CoreIdToken, CoreJsonWebKeySet, CoreJwsSigningAlgorithm, CoreProviderMetadata,
    CoreResponseType,
};
use openidconnect::{
    AuthenticationFlow, AuthorizationCode, ClaimsVerificationError, ClientId, ClientSecret,
    CsrfToken, IssuerUrl, Nonce, OAuth2TokenResponse, PkceCodeChallenge, PkceCodeVerifier,
    RedirectUrl, Scope, SignatureVerificationError, TokenResponse,
};
use portico_core::TenantId;
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::Mutex;
use uuid::Uuid;

use super::fetch::{FetchError, Fetcher};
use crate::store::connections::OidcConfig;

const MAX_DOCUMENT_BYTES: usize = 256 * 1024;
/// The least time between two JWKS fetches of one connection.
pub const JWKS_REFRESH_MIN: Duration = Duration::from_secs(10);
/// How long discovery and keys are cached.
const PROVIDER_TTL: Duration = Duration::from_secs(3600);

#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error("discovery document: {0}")]
    Discovery(String),
    #[error("discovery answered issuer '{found}', configured '{configured}'")]
    IssuerMismatch { configured: String, found: String },
    #[error("the authorization response's iss '{0}' is not this connection's issuer")]
    IssParameter(String),
    #[error("the authorization response lacks the iss parameter the IdP promised")]
    IssMissing,
    #[error("the IdP returned an error: {0}")]
    Authorization(String),
    #[error("token request failed: {0}")]
    Token(String),
    #[error("no ID token in the token response")]
    NoIdToken,
    #[error("ID token rejected: {0}")]
    IdToken(String),
    #[error("ID token signed with a key the IdP does not publish")]
    UnknownKey,
    #[error("ID token with several audiences and no matching azp")]
    Azp,
    #[error("UserInfo: {0}")]
    UserInfo(String),
    #[error("configuration: {0}")]
    Config(String),
}

impl OidcError {
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Fetch(_) => "oidc_fetch",
            Self::Discovery(_) => "oidc_discovery",
            Self::IssuerMismatch { .. } => "oidc_issuer_mismatch",
            Self::IssParameter(_) => "oidc_iss_parameter",
            Self::IssMissing => "oidc_iss_missing",
            Self::Authorization(_) => "oidc_authorization_error",
            Self::Token(_) => "oidc_token_request",
            Self::NoIdToken => "oidc_no_id_token",
            Self::IdToken(_) => "oidc_id_token",
            Self::UnknownKey => "oidc_unknown_key",
            Self::Azp => "oidc_azp",
            Self::UserInfo(_) => "oidc_userinfo",
            Self::Config(_) => "oidc_config",
        }
    }
}

/// Discovery and keys of one IdP, as cached.
pub struct Provider {
    pub metadata: CoreProviderMetadata,
    /// `authorization_response_iss_parameter_supported` (RFC 9207).
    pub sends_iss: bool,
    jwks: Mutex<(CoreJsonWebKeySet, Option<Instant>)>,
}

impl Provider {
    pub async fn jwks(&self) -> CoreJsonWebKeySet {
        self.jwks.lock().await.0.clone()
    }
}

/// Fetches and validates the discovery document and the key set of `issuer`.
pub async fn discover(fetcher: &Fetcher, issuer: &str) -> Result<Provider, OidcError> {
    let url = format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    );
    let body = fetcher.get(&url, MAX_DOCUMENT_BYTES).await?;
    let raw: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| OidcError::Discovery(e.to_string()))?;
    let found = raw
        .get("issuer")
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_owned();
    if found != issuer {
        return Err(OidcError::IssuerMismatch {
            configured: issuer.to_owned(),
            found,
        });
    }
    let sends_iss = raw
        .get("authorization_response_iss_parameter_supported")
        .and_then(|v| v.as_bool())
        .unwrap_or(false);
    let metadata: CoreProviderMetadata =
        serde_json::from_value(raw).map_err(|e| OidcError::Discovery(e.to_string()))?;
    for endpoint in [
        Some(metadata.authorization_endpoint().as_str()),
        metadata.token_endpoint().map(|t| t.as_str()),
        Some(metadata.jwks_uri().as_str()),
        metadata.userinfo_endpoint().map(|u| u.as_str()),
    ]
    .into_iter()
    .flatten()
    {
        fetcher.check_url(endpoint)?;
    }
    if metadata.token_endpoint().is_none() {
        return Err(OidcError::Discovery("no token endpoint".into()));
    }
    let jwks = fetch_jwks(fetcher, &metadata).await?;
    Ok(Provider {
        metadata,
        sends_iss,
        // The discovery fetch does not count against the refresh limit: the first unknown `kid`
        // may refresh at once.
        jwks: Mutex::new((jwks, None)),
    })
}

async fn fetch_jwks(
    fetcher: &Fetcher,
    metadata: &CoreProviderMetadata,
) -> Result<CoreJsonWebKeySet, OidcError> {
    let body = fetcher
        .get(metadata.jwks_uri().as_str(), MAX_DOCUMENT_BYTES)
        .await?;
    serde_json::from_slice(&body).map_err(|e| OidcError::Discovery(format!("JWKS: {e}")))
}

/// Cache of providers by (tenant, connection): one tenant's cache entry is never another's.
#[derive(Clone)]
pub struct Providers {
    cache: Cache<(TenantId, Uuid), Arc<Provider>>,
    fetcher: Fetcher,
    refresh_min: Duration,
}

impl Providers {
    pub fn new(fetcher: Fetcher) -> Self {
        Self {
            cache: Cache::builder()
                .max_capacity(10_000)
                .time_to_live(PROVIDER_TTL)
                .build(),
            fetcher,
            refresh_min: JWKS_REFRESH_MIN,
        }
    }

    /// The least time between two key-set fetches of one connection (default
    /// [`JWKS_REFRESH_MIN`]).
    pub fn with_refresh_min(mut self, refresh_min: Duration) -> Self {
        self.refresh_min = refresh_min;
        self
    }

    pub fn fetcher(&self) -> &Fetcher {
        &self.fetcher
    }

    pub async fn get(
        &self,
        tenant: TenantId,
        connection: Uuid,
        cfg: &OidcConfig,
    ) -> Result<Arc<Provider>, OidcError> {
        let key = (tenant, connection);
        if let Some(p) = self.cache.get(&key).await {
            return Ok(p);
        }
        let p = Arc::new(discover(&self.fetcher, &cfg.issuer).await?);
        self.cache.insert(key, p.clone()).await;
        Ok(p)
    }

    /// Fetches the key set again unless it was refreshed less than `refresh_min` ago.
    /// Returns whether it was refreshed.
    async fn refresh_jwks(&self, provider: &Provider) -> Result<bool, OidcError> {
        let mut guard = provider.jwks.lock().await;
        if guard.1.is_some_and(|t| t.elapsed() < self.refresh_min) {
            return Ok(false);
        }
        let fresh = fetch_jwks(&self.fetcher, &provider.metadata).await?;
        *guard = (fresh, Some(Instant::now()));
        Ok(true)
    }
}

/// What the browser is sent to, and what must be remembered for the callback.
pub struct Authorization {
    pub url: String,
    pub state: String,
    pub nonce: String,
    pub pkce_verifier: SecretString,
}

fn client(
    provider: &Provider,
    jwks: CoreJsonWebKeySet,
    cfg: &OidcConfig,
    secret: &SecretString,
    redirect_uri: &str,
) -> Result<
    CoreClient<
        openidconnect::EndpointSet,
        openidconnect::EndpointNotSet,
        openidconnect::EndpointNotSet,
        openidconnect::EndpointNotSet,
        openidconnect::EndpointMaybeSet,
        openidconnect::EndpointMaybeSet,
    >,
    OidcError,
> {
    let metadata = provider.metadata.clone().set_jwks(jwks);
    Ok(CoreClient::from_provider_metadata(
        metadata,
        ClientId::new(cfg.client_id.clone()),
        Some(ClientSecret::new(secret.expose_secret().to_owned())),
    )
    .set_redirect_uri(
        RedirectUrl::new(redirect_uri.to_owned()).map_err(|e| OidcError::Config(e.to_string()))?,
    ))
}

pub async fn authorize(
    provider: &Provider,
    cfg: &OidcConfig,
    secret: &SecretString,
    redirect_uri: &str,
    login_hint: Option<&str>,
) -> Result<Authorization, OidcError> {
    let client = client(provider, provider.jwks().await, cfg, secret, redirect_uri)?;
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let mut request = client
        .authorize_url(
            AuthenticationFlow::<CoreResponseType>::AuthorizationCode,
            CsrfToken::new_random,
            Nonce::new_random,
        )
        .add_scope(Scope::new("email".into()))
        .set_pkce_challenge(challenge);
    let scopes = provider.metadata.scopes_supported();
    if scopes.is_some_and(|s| s.iter().any(|s| s.as_str() == "groups")) {
        request = request.add_scope(Scope::new("groups".into()));
    }
    if let Some(hint) = login_hint {
        request = request.add_extra_param("login_hint", hint.to_owned());
    }
    let (url, state, nonce) = request.url();
    Ok(Authorization {
        url: url.to_string(),
        state: state.secret().clone(),
        nonce: nonce.secret().clone(),
        pkce_verifier: SecretString::from(verifier.secret().clone()),
    })
}

/// A verified sign-in.
#[derive(Debug, Clone)]
pub struct Identity {
    pub subject: String,
    pub email: Option<String>,
    /// Whether the IdP asserted `email_verified: true` for that e-mail.
    pub email_verified: bool,
    pub claims: Vec<(String, Vec<String>)>,
}

/// Checks the RFC 9207 `iss` parameter of the authorization response.
pub fn check_iss_parameter(
    provider: &Provider,
    cfg: &OidcConfig,
    iss: Option<&str>,
) -> Result<(), OidcError> {
    match iss {
        Some(iss) if iss == cfg.issuer => Ok(()),
        Some(iss) => Err(OidcError::IssParameter(iss.to_owned())),
        None if provider.sends_iss => Err(OidcError::IssMissing),
        None => Ok(()),
    }
}

/// Redeems the code (with the PKCE verifier) and verifies the ID token.
#[allow(clippy::too_many_arguments)]
pub async fn redeem(
    providers: &Providers,
    provider: &Provider,
    cfg: &OidcConfig,
    secret: &SecretString,
    redirect_uri: &str,
    code: &str,
    pkce_verifier: &SecretString,
    nonce: &str,
) -> Result<Identity, OidcError> {
    let client = client(provider, provider.jwks().await, cfg, secret, redirect_uri)?;
    let response = client
        .exchange_code(AuthorizationCode::new(code.to_owned()))
        .map_err(|e| OidcError::Config(e.to_string()))?
        .set_pkce_verifier(PkceCodeVerifier::new(
            pkce_verifier.expose_secret().to_owned(),
        ))
        .request_async(providers.fetcher().client())
        .await
        .map_err(|e| OidcError::Token(token_error(&e)))?;
    let id_token = response.id_token().ok_or(OidcError::NoIdToken)?;
    let mut identity = verify_id_token(providers, provider, cfg, secret, id_token, nonce).await?;
    if let Some(endpoint) = provider.metadata.userinfo_endpoint() {
        let body = providers
            .fetcher()
            .get_bearer(
                endpoint.as_str(),
                response.access_token().secret(),
                MAX_DOCUMENT_BYTES,
            )
            .await?;
        let info: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&body)
            .map_err(|_| OidcError::UserInfo("not a JSON object".into()))?;
        if info.get("sub").and_then(|v| v.as_str()) != Some(identity.subject.as_str()) {
            return Err(OidcError::UserInfo("its sub is not the ID token's".into()));
        }
        let from_userinfo = identity.email.is_none();
        for (k, v) in claim_values(&info) {
            if !identity.claims.iter().any(|(name, _)| *name == k) {
                if k == "email" && from_userinfo {
                    identity.email = v.first().cloned();
                }
                identity.claims.push((k, v));
            }
        }
        if from_userinfo {
            identity.email_verified = identity.email.is_some()
                && info.get("email_verified").and_then(|v| v.as_bool()) == Some(true);
        }
    }
    Ok(identity)
}

/// String-ish claims as (name, values).
fn claim_values(obj: &serde_json::Map<String, serde_json::Value>) -> Vec<(String, Vec<String>)> {
    let mut values = Vec::new();
    for (k, v) in obj {
        let vals: Vec<String> = match v {
            serde_json::Value::String(s) => vec![s.clone()],
            serde_json::Value::Array(a) => a
                .iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect(),
            serde_json::Value::Bool(b) => vec![b.to_string()],
            _ => continue,
        };
        values.push((k.clone(), vals));
    }
    values
}

fn token_error<E: std::error::Error>(e: &E) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

/// Verifies an ID token for this connection: signature (refreshing the key set once for an
/// unknown `kid`), issuer, audience, azp, expiry and nonce.
pub async fn verify_id_token(
    providers: &Providers,
    provider: &Provider,
    cfg: &OidcConfig,
    secret: &SecretString,
    id_token: &CoreIdToken,
    nonce: &str,
) -> Result<Identity, OidcError> {
    let nonce = Nonce::new(nonce.to_owned());
    let attempt = |jwks: CoreJsonWebKeySet| {
        let cfg = cfg.clone();
        let nonce = nonce.clone();
        async move {
            let issuer =
                IssuerUrl::new(cfg.issuer.clone()).map_err(|e| OidcError::Config(e.to_string()))?;
            let verifier = openidconnect::IdTokenVerifier::new_confidential_client(
                ClientId::new(cfg.client_id.clone()),
                ClientSecret::new(secret.expose_secret().to_owned()),
                issuer,
                jwks,
            )
            .set_allowed_algs([
                CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256,
                CoreJwsSigningAlgorithm::EcdsaP256Sha256,
                CoreJwsSigningAlgorithm::RsaSsaPssSha256,
            ]);
            id_token
                .claims(&verifier, &nonce)
                .cloned()
                .map_err(|e| match e {
                    ClaimsVerificationError::SignatureVerification(
                        SignatureVerificationError::NoMatchingKey,
                    ) => None,
                    other => Some(OidcError::IdToken(token_error(&other))),
                })
        }
    };
    let claims = match attempt(provider.jwks().await).await {
        Ok(c) => c,
        Err(Some(e)) => return Err(e),
        Err(None) => {
            // An unknown key id: the IdP may have rotated its keys.
            if !providers.refresh_jwks(provider).await? {
                return Err(OidcError::UnknownKey);
            }
            match attempt(provider.jwks().await).await {
                Ok(c) => c,
                Err(Some(e)) => return Err(e),
                Err(None) => return Err(OidcError::UnknownKey),
            }
        }
    };
    if claims.audiences().len() > 1
        && claims.authorized_party().map(|a| a.as_str()) != Some(cfg.client_id.as_str())
    {
        return Err(OidcError::Azp);
    }
    let subject = claims.subject().as_str().to_owned();
    let email = claims.email().map(|e| e.as_str().to_owned());
    let email_verified = email.is_some() && claims.email_verified() == Some(true);
    // Non-standard claims (groups, …) come from the payload the signature was just verified on.
    let payload = id_token
        .to_string()
        .split('.')
        .nth(1)
        .and_then(|p| URL_SAFE_NO_PAD.decode(p).ok())
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .unwrap_or_default();
    let values = payload.as_object().map(claim_values).unwrap_or_default();
    Ok(Identity {
        subject,
        email,
        email_verified,
        claims: values,
    })
}
