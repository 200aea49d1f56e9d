//! Read-only access to the tenant catalog: what a host name resolves to and how its tenant's
//! database is reached. The runtime never writes the catalog (see ARCHITECTURE.md); every query
//! here is a `select`.

use portico_core::TenantId;
use sqlx::PgPool;
use uuid::Uuid;

use crate::error::RuntimeError;

/// A tenant's lifecycle status as the catalog records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TenantStatus {
    Provisioning,
    Active,
    Suspended,
    Deleting,
    Deleted,
}

impl TenantStatus {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "provisioning" => Self::Provisioning,
            "active" => Self::Active,
            "suspended" => Self::Suspended,
            "deleting" => Self::Deleting,
            "deleted" => Self::Deleted,
            _ => return None,
        })
    }
}

/// Where a tenant's data lives and how to log in to it. Passwords are stored encrypted (a
/// tenant role's under the tenant's own key, a pool role's under the control-plane key); they
/// are decrypted only when a pool is built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub db_server_id: Uuid,
    /// The server's admin URL without credentials (`postgres://user@host:port/db`): host and
    /// port are taken from it.
    pub server_url: String,
    /// The server's connection budget, shared by all tenants on it.
    pub server_budget: u32,
    /// The CA (PEM) the server's certificate must chain to: connections use TLS. `None`: TCP.
    pub server_ca: Option<String>,
    /// The tenant's own database (dedicated tier) or its shared database (pooled tier).
    pub database: String,
    /// The tenant's role.
    pub role: String,
    pub key_id: String,
    pub login: Login,
}

/// How the runtime logs in for a tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Login {
    /// Dedicated tier: as the tenant's own role, to its own database.
    Tenant { password_ciphertext: Vec<u8> },
    /// Pooled tier: as the shared database's pool role, switching to the tenant's role and
    /// schema for every transaction.
    Pool {
        shared_database_id: Uuid,
        pool_role: String,
        password_ciphertext: Vec<u8>,
        /// The tenant's role and schema, as the statement that sets them (built once per
        /// route read, not per request).
        context: std::sync::Arc<crate::conn::TenantContext>,
    },
}

/// What a host name resolved to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantRoute {
    pub tenant_id: TenantId,
    pub slug: String,
    pub status: TenantStatus,
    /// The tenant database's schema version as the catalog records it (`None` until
    /// provisioning has recorded it).
    pub schema_version: Option<i32>,
    /// A move is copying the tenant: writes are refused (`503 tenant_moving`), reads go on.
    pub write_frozen: bool,
    /// The tenant's state of every feature flag, decided when the route was read.
    pub features: portico_core::features::Features,
    /// `None` until provisioning has recorded the key and the role.
    pub placement: Option<Placement>,
}

#[derive(Clone)]
pub struct CatalogReader {
    pool: PgPool,
}

#[derive(sqlx::FromRow)]
struct RouteRow {
    id: Uuid,
    slug: String,
    status: String,
    server_id: Option<Uuid>,
    display_url: Option<String>,
    max_connections: Option<i32>,
    database_name: Option<String>,
    role_name: Option<String>,
    key_id: Option<String>,
    role_password_ciphertext: Option<Vec<u8>>,
    schema_version: Option<i32>,
    settings: sqlx::types::Json<std::collections::BTreeMap<String, bool>>,
    rollouts: sqlx::types::Json<std::collections::BTreeMap<String, i32>>,
    schema_name: Option<String>,
    shared_database_id: Option<Uuid>,
    pool_role: Option<String>,
    pool_password_ciphertext: Option<Vec<u8>>,
    server_ca: Option<String>,
    write_frozen: bool,
}

impl CatalogReader {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The tenant a (normalised) host name belongs to: its subdomain of the base domain or a
    /// verified custom domain. Unverified domains resolve to nothing.
    #[tracing::instrument(level = "debug", skip(self))]
    pub async fn route_for_host(&self, host: &str) -> Result<Option<TenantRoute>, RuntimeError> {
        let row: Option<RouteRow> = sqlx::query_as(
            "select t.id, t.slug, t.status, s.id as server_id, s.display_url, s.max_connections,
                    p.database_name, p.role_name, t.key_id, p.role_password_ciphertext,
                    t.schema_version,
                    (select coalesce(json_object_agg(f.flag, f.enabled), '{}')
                       from tenant_features f where f.tenant_id = t.id) as settings,
                    (select coalesce(json_object_agg(r.flag, r.percent), '{}')
                       from feature_rollouts r) as rollouts,
                    p.schema_name, sd.id as shared_database_id, sd.pool_role,
                    sd.pool_password_ciphertext, s.ca_pem as server_ca, t.write_frozen
               from tenant_domains d
               join tenants t on t.id = d.tenant_id
               left join tenant_placements p on p.tenant_id = t.id
               left join db_servers s on s.id = p.db_server_id
               left join shared_databases sd on sd.id = p.shared_database_id
              where d.hostname = $1 and d.verified",
        )
        .bind(host)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| RuntimeError::catalog("resolving a host", e))?;
        let Some(row) = row else {
            return Ok(None);
        };
        let tenant_id = TenantId::from_uuid(row.id);
        let status = TenantStatus::parse(&row.status).ok_or_else(|| RuntimeError::Catalog {
            operation: "resolving a host",
            message: format!("unknown tenant status '{}'", row.status),
        })?;
        let login = match (
            row.shared_database_id,
            row.pool_role,
            row.pool_password_ciphertext,
            row.schema_name,
            row.role_password_ciphertext,
        ) {
            (
                Some(shared_database_id),
                Some(pool_role),
                Some(password_ciphertext),
                Some(schema),
                _,
            ) => Some(Login::Pool {
                shared_database_id,
                pool_role,
                password_ciphertext,
                context: std::sync::Arc::new(crate::conn::TenantContext::new(
                    row.role_name.as_deref().unwrap_or_default(),
                    &schema,
                )),
            }),
            (None, _, _, None, Some(password_ciphertext)) => Some(Login::Tenant {
                password_ciphertext,
            }),
            _ => None,
        };
        let placement = match (
            row.server_id,
            row.display_url,
            row.max_connections,
            row.database_name,
            row.role_name,
            row.key_id,
            login,
        ) {
            (
                Some(db_server_id),
                Some(server_url),
                Some(budget),
                Some(database),
                Some(role),
                Some(key_id),
                Some(login),
            ) => Some(Placement {
                db_server_id,
                server_url,
                server_budget: budget.max(1).unsigned_abs(),
                server_ca: row.server_ca.clone(),
                database,
                role,
                key_id,
                login,
            }),
            _ => None,
        };
        let slug = row.slug;
        let schema_version = row.schema_version;
        let (settings, rollouts) = (row.settings, row.rollouts);
        Ok(Some(TenantRoute {
            tenant_id,
            slug,
            status,
            schema_version,
            write_frozen: row.write_frozen,
            features: portico_core::features::Features::decide(tenant_id, &settings.0, &rollouts.0),
            placement,
        }))
    }

    /// The tenant host and connection that claim an e-mail domain, for home-realm discovery:
    /// only a domain claimed by exactly one active tenant answers.
    pub async fn claimed_domain(
        &self,
        domain: &str,
    ) -> Result<Option<(String, String)>, RuntimeError> {
        let row: Option<(String, String)> = sqlx::query_as(
            "select d.hostname, c.connection_name
               from sso_domain_claims c
               join tenants t on t.id = c.tenant_id and t.status = 'active'
               join tenant_domains d on d.tenant_id = t.id and d.is_primary and d.verified
              where c.domain = lower($1)",
        )
        .bind(domain)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| RuntimeError::catalog("looking up a claimed domain", e))?;
        Ok(row)
    }

    /// A cheap round trip, for readiness.
    pub async fn ping(&self) -> Result<(), RuntimeError> {
        sqlx::query("select 1")
            .execute(&self.pool)
            .await
            .map(|_| ())
            .map_err(|e| RuntimeError::catalog("checking the catalog", e))
    }
}
