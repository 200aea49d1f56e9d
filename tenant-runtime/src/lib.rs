//! Portico's data plane: tenant resolution from the `Host` header (cached, invalidated through
//! the catalog's notifications), per-tenant connection pools under a per-server budget, tenant
//! API tokens, and the tenant HTTP API.
//!
//! This crate reads the catalog and never writes it, and it never creates or destroys tenant
//! resources (databases, roles, keys, prefixes): that is `portico-provisioning`'s job.

pub(crate) mod caller;
pub mod catalog;
pub mod conn;
pub mod content;
pub mod error;
pub mod exports;
pub(crate) mod failures;
/// The HTTP edge (`portico-http`), under its historical path.
pub use portico_http as http;
pub mod identity;
pub mod ids;
pub mod pools;
pub mod portal;
pub(crate) mod replay;
pub mod resolve;
pub(crate) mod routes;
pub(crate) mod state;
pub mod store;
pub(crate) mod tenancy;

pub use error::RuntimeError;
pub use state::Runtime;

/// The oldest tenant schema version this code serves. A tenant below it answers
/// `503 tenant_upgrading` until `portico tenant migrate`/`fleet migrate` has brought it up; a
/// tenant above the newest version this binary ships is served normally (the expand/contract
/// rule in docs/releases.md keeps a newer schema readable by the previous release).
///
/// Raise it only to the version whose objects the code starts to need, in the release that
/// starts to need them.
pub const MIN_TENANT_SCHEMA: i32 = 8;
