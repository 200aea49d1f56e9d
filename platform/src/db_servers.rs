//! Registering database servers that host tenant databases. Admin URLs are kept encrypted
//! under the control-plane key; only a credential-free form is ever shown.

use portico_core::DbServerName;
use portico_core::settings::redact_url;
use portico_provisioning::{DbServer, ServerInfo};
use serde::Serialize;
use uuid::Uuid;

use crate::catalog::DbServerRow;
use crate::context::Platform;
use crate::error::{PlatformError, Result};

/// Name under which the control-plane server is registered when no other server exists.
pub const DEFAULT_SERVER: &str = "default";

#[derive(Debug, Clone, Serialize)]
pub struct DbServerView {
    pub id: Uuid,
    pub name: String,
    pub url: String,
    pub max_connections: i32,
    pub tenants: i64,
    /// Whether connections to it use TLS (verified against its registered CA).
    pub tls: bool,
}

impl From<DbServerRow> for DbServerView {
    fn from(r: DbServerRow) -> Self {
        Self {
            id: r.id,
            name: r.name,
            url: r.display_url,
            max_connections: r.max_connections,
            tenants: r.tenant_count,
            tls: r.ca_pem.is_some(),
        }
    }
}

fn purpose(id: Uuid) -> String {
    format!("db-server-admin-url:{id}")
}

/// Checks the server (reachable, PostgreSQL ≥ 15, admin has CREATEDB and CREATEROLE) and
/// records it. `max_connections` defaults to the server's own setting.
pub async fn add(
    platform: &Platform,
    name: &DbServerName,
    url: &str,
    max_connections: Option<u32>,
) -> Result<(DbServerView, ServerInfo)> {
    add_with_ca(platform, name, url, max_connections, None).await
}

/// [`add`] for a server reached over TLS, its certificate verified against the CA in `ca_pem`
/// (and the host the URL names).
pub async fn add_with_ca(
    platform: &Platform,
    name: &DbServerName,
    url: &str,
    max_connections: Option<u32>,
    ca_pem: Option<&str>,
) -> Result<(DbServerView, ServerInfo)> {
    // Refuse a known name before spending a round trip on the server.
    if platform.catalog.db_server_by_name(name).await?.is_some() {
        return Err(PlatformError::ServerExists(name.to_string()));
    }
    let max_connections =
        match max_connections {
            Some(0) => {
                return Err(PlatformError::InvalidInput(
                    "--max-connections must be at least 1".into(),
                ));
            }
            Some(n) => Some(i32::try_from(n).map_err(|_| {
                PlatformError::InvalidInput("--max-connections is too large".into())
            })?),
            None => None,
        };
    if let Some(pem) = ca_pem {
        portico_core::pgtls::check_ca(pem).map_err(|e| {
            PlatformError::InvalidInput(format!("the CA certificate (--ca-file, ca_pem): {e}"))
        })?;
    }
    let info = DbServer::from_url_with_ca(url, ca_pem)?.check().await?;
    let view = record_with_ca(
        platform,
        name,
        url,
        max_connections.unwrap_or(info.max_connections),
        ca_pem,
    )
    .await?;
    Ok((view, info))
}

/// Records a server without contacting it (`add` checks it first). The admin URL is encrypted
/// under the control-plane key, bound to the new row's id so the ciphertext cannot be moved to
/// another server row; only a credential-free form is stored in clear.
pub async fn record(
    platform: &Platform,
    name: &DbServerName,
    url: &str,
    max_connections: i32,
) -> Result<DbServerView> {
    record_with_ca(platform, name, url, max_connections, None).await
}

async fn record_with_ca(
    platform: &Platform,
    name: &DbServerName,
    url: &str,
    max_connections: i32,
    ca_pem: Option<&str>,
) -> Result<DbServerView> {
    portico_provisioning::keys::ensure_platform_key(&platform.keyring).await?;
    let id = Uuid::new_v4();
    let ciphertext = platform
        .keyring
        .encrypt_platform(&purpose(id), url.as_bytes())
        .await?;
    let display_url = redact_url(url);
    platform
        .catalog
        .insert_db_server(id, name, &ciphertext, &display_url, max_connections, ca_pem)
        .await?;
    Ok(DbServerView {
        id,
        name: name.to_string(),
        url: display_url,
        max_connections,
        tenants: 0,
        tls: ca_pem.is_some(),
    })
}

pub async fn list(platform: &Platform) -> Result<Vec<DbServerView>> {
    Ok(platform
        .catalog
        .list_db_servers()
        .await?
        .into_iter()
        .map(DbServerView::from)
        .collect())
}

/// The admin handle of a registered server (its URL decrypted once per process; the handle
/// keeps a small pool of admin connections).
#[tracing::instrument(level = "debug", skip_all)]
pub async fn connect(platform: &Platform, row: &DbServerRow) -> Result<DbServer> {
    if let Some(server) = platform
        .servers
        .lock()
        .ok()
        .and_then(|m| m.get(&row.id).cloned())
    {
        return Ok(server);
    }
    let url = platform
        .keyring
        .decrypt_platform(&purpose(row.id), &row.admin_url_ciphertext)
        .await?;
    let url = String::from_utf8(url)
        .map_err(|_| PlatformError::InvalidState("stored server URL is not UTF-8".into()))?;
    let server = DbServer::from_url_with_ca(&url, row.ca_pem.as_deref())?;
    if let Ok(mut m) = platform.servers.lock() {
        m.insert(row.id, server.clone());
    }
    Ok(server)
}

/// The admin handle of the registered server `id` (`name` for the error when it is gone): from
/// this process's cache, else read and decrypted once.
pub async fn connect_id(platform: &Platform, id: Uuid, name: &str) -> Result<DbServer> {
    if let Some(server) = platform
        .servers
        .lock()
        .ok()
        .and_then(|m| m.get(&id).cloned())
    {
        return Ok(server);
    }
    let row = platform
        .catalog
        .db_server_by_id(id)
        .await?
        .ok_or_else(|| PlatformError::ServerNotFound(name.to_owned()))?;
    connect(platform, &row).await
}

/// The server for a new tenant: the named one, else the registered server with the fewest
/// tenants per connection slot, else the control-plane server (registered as `default`).
#[tracing::instrument(level = "debug", skip_all)]
pub async fn choose(platform: &Platform, wanted: Option<&DbServerName>) -> Result<DbServerRow> {
    if let Some(name) = wanted {
        return platform
            .catalog
            .db_server_by_name(name)
            .await?
            .ok_or_else(|| PlatformError::ServerNotFound(name.to_string()));
    }
    let servers = platform.catalog.list_db_servers().await?;
    if let Some(best) = servers.into_iter().min_by(|a, b| {
        let load = |s: &DbServerRow| s.tenant_count as f64 / f64::from(s.max_connections.max(1));
        load(a)
            .total_cmp(&load(b))
            .then_with(|| a.name.cmp(&b.name))
    }) {
        return Ok(best);
    }
    let default = DbServerName::parse(DEFAULT_SERVER)
        .map_err(|e| PlatformError::InvalidState(e.to_string()))?;
    let url = platform.settings.database_url.expose().to_owned();
    // Boxed: registering (check, key, record) is deep and only happens once per catalog.
    match Box::pin(add(platform, &default, &url, None)).await {
        Ok(_) | Err(PlatformError::ServerExists(_)) => {}
        Err(e) => return Err(e),
    }
    platform
        .catalog
        .db_server_by_name(&default)
        .await?
        .ok_or_else(|| PlatformError::ServerNotFound(DEFAULT_SERVER.into()))
}
