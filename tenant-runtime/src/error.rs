//! The runtime's error type. Library-level: it knows nothing of HTTP; `http::problem` maps each
//! variant to a status and a stable code. Messages never carry secrets or SQL text.

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("catalog: {operation}: {message}")]
    Catalog {
        operation: &'static str,
        message: String,
    },
    /// The tenant's database could not be reached or refused the login.
    #[error("tenant database: {0}")]
    TenantDatabase(String),
    /// No connection became free within the wait bound.
    #[error("no tenant connection became free in time")]
    Busy,
    /// A query on the tenant database failed.
    #[error("tenant query: {operation}: {message}")]
    Query {
        operation: &'static str,
        message: String,
    },
    /// The tenant's data is read-only for now (a move froze its writes in the database).
    #[error("tenant query: {operation}: the tenant's data is read-only while it moves")]
    ReadOnly { operation: &'static str },
    #[error("keys: {0}")]
    Key(#[from] portico_core::keys::KeyError),
    #[error("{0}")]
    InvalidInput(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    NotFound(String),
}

impl RuntimeError {
    pub fn catalog(operation: &'static str, e: sqlx::Error) -> Self {
        let message = match &e {
            sqlx::Error::Database(db) => db.message().to_owned(),
            other => other.to_string(),
        };
        Self::Catalog { operation, message }
    }

    /// A failed tenant query; keeps PostgreSQL's message, never the statement.
    pub fn query(operation: &'static str, e: tokio_postgres::Error) -> Self {
        // Tenant roles hold every privilege their queries need, except while a move has frozen
        // the tenant's writes (it revokes them): an instance that has not yet heard of the
        // freeze gets this, and answers as if it had.
        if e.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE) {
            return Self::ReadOnly { operation };
        }
        let message = match e.as_db_error() {
            Some(db) => db.message().to_owned(),
            None => e.to_string(),
        };
        Self::Query { operation, message }
    }

    /// The name of the violated constraint, if a query failed on one.
    pub fn constraint_of(e: &tokio_postgres::Error) -> Option<&str> {
        e.as_db_error().and_then(|d| d.constraint())
    }
}

pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;

/// How a runtime error answers over HTTP: stable codes for the expected ones, a generic
/// `internal` (cause logged) for the rest.
impl From<RuntimeError> for portico_http::Problem {
    fn from(e: RuntimeError) -> Self {
        match e {
            RuntimeError::Busy => portico_http::Problem::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                portico_http::ErrorCode::TenantBusy,
                "The tenant is busy; retry shortly",
            )
            .retry_after(1),
            RuntimeError::TenantDatabase(ref m) => {
                tracing::error!(error = %m, "tenant database unavailable");
                portico_http::Problem::new(
                    axum::http::StatusCode::SERVICE_UNAVAILABLE,
                    portico_http::ErrorCode::TenantUnavailable,
                    "The tenant is temporarily unavailable",
                )
                .retry_after(5)
            }
            RuntimeError::Catalog { .. } => {
                tracing::error!(error = %e, "catalog unavailable");
                portico_http::Problem::new(
                    axum::http::StatusCode::SERVICE_UNAVAILABLE,
                    portico_http::ErrorCode::CatalogUnavailable,
                    "Service temporarily unavailable",
                )
                .retry_after(5)
            }
            RuntimeError::ReadOnly { .. } => moving(),
            RuntimeError::InvalidInput(m) => portico_http::Problem::invalid_input(m),
            RuntimeError::Conflict(m) => portico_http::Problem::new(
                axum::http::StatusCode::CONFLICT,
                portico_http::ErrorCode::Conflict,
                "Conflict",
            )
            .detail(m),
            RuntimeError::NotFound(m) => portico_http::Problem::not_found().detail(m),
            RuntimeError::Query { .. } | RuntimeError::Key(_) => {
                tracing::error!(error = %e, "internal error");
                portico_http::Problem::internal()
            }
        }
    }
}

/// `503 tenant_moving`: the tenant's writes are frozen while a move copies it; reads go on.
pub fn moving() -> portico_http::Problem {
    portico_http::Problem::new(
        axum::http::StatusCode::SERVICE_UNAVAILABLE,
        portico_http::ErrorCode::TenantMoving,
        "This organization's data is being moved; changes are possible again in a few seconds",
    )
    .retry_after(2)
}
