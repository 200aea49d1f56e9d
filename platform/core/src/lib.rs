//! Shared foundations of Portico: typed ids, validated names, layered settings, object
//! storage and tenant keys.
//!
//! This crate performs *data* operations only (read/write objects, encrypt/decrypt under an
//! existing key). Creating or destroying tenant resources (keys, prefixes, databases, roles) is
//! the job of `portico-provisioning`, which builds on the handles defined here.

pub mod ids;
pub mod keys;
pub mod settings;
pub mod storage;

pub use ids::{DbServerName, Hostname, NameError, RunId, Slug, TenantId};
pub use settings::{KmsSettings, Settings, SettingsError, StorageSettings};
