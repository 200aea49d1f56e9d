//! Tenant schema migrations (`migrations/tenant/V{n}__{name}.sql`), embedded at compile time
//! and run by refinery. They are applied once per server into a template database; tenant
//! databases are copies of that template.

use sha2::{Digest, Sha256};

mod embedded {
    refinery::embed_migrations!("../migrations/tenant");
}

pub fn runner() -> refinery::Runner {
    embedded::migrations::runner()
}

/// Version of how templates are built (ownership, grants). Part of the template name, so a
/// change to the build procedure also retires old templates.
const TEMPLATE_LAYOUT: &str = "layout-3";

/// The newest tenant schema version (the highest migration number).
pub fn latest_version() -> i32 {
    runner()
        .get_migrations()
        .iter()
        .map(|m| i32::try_from(m.version()).unwrap_or(i32::MAX))
        .max()
        .unwrap_or(0)
}

/// A short digest of every migration's version, name and checksum. It changes whenever a
/// migration is added (or, against the rules, edited), so a stale template is never reused.
pub fn fingerprint() -> String {
    let mut h = Sha256::new();
    h.update(TEMPLATE_LAYOUT.as_bytes());
    let mut migrations: Vec<_> = runner().get_migrations().to_vec();
    migrations.sort_by_key(|m| m.version());
    for m in migrations {
        h.update(format!("{}:{}:{};", m.version(), m.name(), m.checksum()));
    }
    hex::encode(&h.finalize()[..4])
}

/// Name of the template database for the current migrations: `portico_tpl_v<N>_<digest>`.
pub fn template_name() -> String {
    format!("portico_tpl_v{}_{}", latest_version(), fingerprint())
}
