//! The control plane's error type. Every variant's message is written for an operator: one line
//! saying what is wrong (and, where useful, what to do). Internal failures say which operation
//! failed; their causes never include secrets (the provisioning and key errors are built so).

use portico_core::keys::KeyError;
use portico_core::storage::StorageError;
use portico_provisioning::ProvisionError;

#[derive(Debug, thiserror::Error)]
pub enum PlatformError {
    #[error("{0}")]
    InvalidInput(String),
    #[error("{0}")]
    Settings(#[from] portico_core::SettingsError),
    #[error("tenant slug '{0}' is already taken")]
    SlugTaken(String),
    #[error("domain '{domain}' is already used by tenant '{owner}'")]
    DomainTaken { domain: String, owner: String },
    #[error("no tenant named '{0}'")]
    TenantNotFound(String),
    #[error("no database server named '{0}' (see `portico db-server list`)")]
    ServerNotFound(String),
    #[error("a database server named '{0}' is already registered")]
    ServerExists(String),
    #[error("{0}")]
    InvalidState(String),
    #[error("{0}")]
    Busy(String),
    #[error("{0}")]
    Conflict(String),
    /// Documents under retention or legal hold keep the tenant from being deleted.
    #[error("{message}")]
    RetentionBlocked { legal_hold: bool, message: String },
    #[error("no approval with id '{0}' (see `portico operator approvals list`)")]
    ApprovalNotFound(String),
    #[error("approval {0} is already decided")]
    ApprovalDecided(String),
    /// An archive whose content does not match its signed manifest.
    #[error("{0}")]
    BadArchive(String),
    /// Content the malware scanner refused.
    #[error("{0}")]
    Infected(String),
    /// Four-eyes: the operator who asked may not approve.
    #[error("{0}")]
    SameOperator(String),
    #[error("provisioning step '{step}' failed: {source}")]
    Step {
        step: &'static str,
        #[source]
        source: ProvisionError,
    },
    #[error(transparent)]
    Provision(#[from] ProvisionError),
    #[error("keys: {0}")]
    Key(#[from] KeyError),
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    #[error("catalog: {operation}: {message}")]
    Catalog {
        operation: &'static str,
        message: String,
    },
}

/// An invalid name (slug, host name, server name) is bad input.
impl From<portico_core::NameError> for PlatformError {
    fn from(e: portico_core::NameError) -> Self {
        Self::InvalidInput(e.to_string())
    }
}

impl PlatformError {
    /// Wraps a catalog error that no constraint mapping claimed.
    pub fn catalog(operation: &'static str, e: sqlx::Error) -> Self {
        let message = match &e {
            sqlx::Error::Database(db) => db.message().to_owned(),
            other => other.to_string(),
        };
        Self::Catalog { operation, message }
    }
}

pub type Result<T, E = PlatformError> = std::result::Result<T, E>;

/// Tenant-store errors met by control-plane commands (tokens).
impl From<portico_tenant_runtime::RuntimeError> for PlatformError {
    fn from(e: portico_tenant_runtime::RuntimeError) -> Self {
        use portico_tenant_runtime::RuntimeError as R;
        match e {
            R::InvalidInput(m) | R::NotFound(m) => Self::InvalidInput(m),
            R::Conflict(m) => Self::Conflict(m),
            other => Self::InvalidState(other.to_string()),
        }
    }
}
