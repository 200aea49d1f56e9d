//! Portico's control plane: the tenant catalog (sqlx), lifecycle workflows (create, rollback,
//! suspend, resume), database-server registry, and the `portico` command line and demo.
//!
//! The control plane decides and records; the `portico-provisioning` crate does every
//! creation and destruction of tenant resources.

pub mod anonymize;
pub mod api;
pub mod audit_cli;
pub mod catalog;
pub mod cli;
pub mod context;
pub mod db_servers;
pub mod deletion;
pub mod deletion_cli;
pub mod demo;
pub mod error;
pub mod export;
pub mod exports;
pub mod features;
pub mod fleet;
pub mod fleet_cli;
pub mod identity_cli;
pub mod import;
pub mod moves;
pub mod operators;
pub mod pgcluster;
pub mod serve;
pub mod signing;
pub mod tenants;

pub use context::Platform;
pub use error::PlatformError;
