//! Portico's data plane: tenant resolution from the `Host` header (cached, invalidated through
//! the catalog's notifications), per-tenant connection pools under a per-server budget, tenant
//! API tokens, and the tenant HTTP API.
//!
//! This crate reads the catalog and never writes it, and it never creates or destroys tenant
//! resources (databases, roles, keys, prefixes): that is `portico-provisioning`'s job.

pub mod caller;
pub mod catalog;
pub mod content;
pub mod error;
pub mod failures;
pub mod http;
pub mod identity;
pub mod pools;
pub mod portal;
pub mod replay;
pub mod resolve;
pub mod routes;
pub mod state;
pub mod store;
pub mod tenancy;
pub mod textguard;

pub use error::RuntimeError;
pub use state::Runtime;
