//! The only code that creates or destroys tenant resources: PostgreSQL databases, roles and the
//! per-server template, tenant keys (KMS or local), and object-storage prefixes.
//!
//! Every operation here is idempotent (`ensure_*` creates what is missing and accepts what is
//! already there; `destroy_*` removes what exists and accepts what is gone), and every resource
//! name is derived from the [`TenantId`](portico_core::TenantId) alone. Together these make a
//! provisioning run resumable after a crash at any point, and a rollback able to find whatever a
//! crashed run left behind, without having to trust that the catalog recorded it.
//!
//! This crate knows nothing about the catalog; the control plane (`portico-platform`) records
//! what happened and decides what to call next.

pub mod database;
pub mod keys;
pub mod migrations;
pub mod moves;
pub mod pooled;
pub mod scram;
pub mod server;
pub mod storage;

pub use database::{RoleLimits, TenantDbNames, TenantProfile};
/// Quotes an SQL identifier.
pub use postgres_protocol::escape::escape_identifier as escape_ident;
pub use server::{AdminClient, DbServer, ServerInfo};

use portico_core::keys::KeyError;
use portico_core::storage::StorageError;

#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error("invalid database server URL: {0}")]
    InvalidUrl(String),
    #[error("cannot reach database server {server}: {message}")]
    Unreachable { server: String, message: String },
    #[error("database server {server}: {message}")]
    Unsuitable { server: String, message: String },
    #[error("{operation} failed: {message}")]
    Postgres {
        operation: &'static str,
        message: String,
    },
    #[error("tenant migrations failed: {0}")]
    Migration(String),
    #[error("key service: {0}")]
    Key(#[from] KeyError),
    #[error("object storage: {0}")]
    Storage(#[from] StorageError),
    #[error("{0}")]
    Conflict(String),
}

/// Formats a tokio-postgres error with the server's message (which never includes the
/// statement text, so no password or literal can leak through it).
pub(crate) fn pg_err(operation: &'static str, e: tokio_postgres::Error) -> ProvisionError {
    let message = match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => {
            let mut m = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                m.push_str(": ");
                m.push_str(&s.to_string());
                src = s.source();
            }
            m
        }
    };
    ProvisionError::Postgres { operation, message }
}
