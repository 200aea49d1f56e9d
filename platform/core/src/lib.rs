//! Shared foundations of Portico: typed ids, validated names, layered settings, object
//! storage and tenant keys.
//!
//! This crate performs *data* operations only (read/write objects, encrypt/decrypt under an
//! existing key). Creating or destroying tenant resources (keys, prefixes, databases, roles) is
//! the job of `portico-provisioning`, which builds on the handles defined here.

pub mod audit_chain;
pub mod features;
pub mod files;
pub mod ids;
pub mod keys;
pub mod pgtls;
pub mod settings;
pub mod signing;
pub mod storage;
pub mod tokens;

pub use ids::{DbServerName, Hostname, NameError, RunId, Slug, TenantId};
pub use settings::{KmsSettings, Settings, SettingsError, StorageSettings};

/// An error and its `source()` chain on one line (`a: b: c`), skipping a cause whose text the
/// previous one already contains. For SDK errors, whose own `Display` is terse ("dispatch
/// failure") and whose `Debug` is unreadable.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = vec![e.to_string()];
    let mut source = e.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !parts.last().is_some_and(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = cause.source();
    }
    parts.join(": ").replace(['\n', '\r'], " ")
}
