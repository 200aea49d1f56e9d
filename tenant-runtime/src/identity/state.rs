//! What the identity endpoints share across requests: the IdP clients, the keyring, the SAML
//! replay cache's pool, session timeouts and the bound on concurrent password hashing.

use super::fetch::Fetcher;
use super::oidc::Providers;
use crate::error::RuntimeError;
use crate::store::sessions::Timeouts;
use crate::store::users;
use portico_core::Hostname;
use portico_core::keys::Keyring;
use secrecy::SecretString;
use sqlx::PgPool;
use std::sync::Arc;

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
