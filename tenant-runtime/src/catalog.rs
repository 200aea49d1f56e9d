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

/// Where a tenant's data lives and how to log in to it. The password is stored encrypted
/// under the tenant's own key; it is decrypted only when a pool is built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub db_server_id: Uuid,
    /// The server's admin URL without credentials (`postgres://user@host:port/db`): host and
    /// port are taken from it.
    pub server_url: String,
    /// The server's connection budget, shared by all tenants on it.
    pub server_budget: u32,
    pub database: String,
    pub role: String,
    pub key_id: String,
    pub password_ciphertext: Vec<u8>,
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
    /// The tenant's state of every feature flag, decided when the route was read.
    pub features: portico_core::features::Features,
    /// `None` until provisioning has recorded the key and the role.
    pub placement: Option<Placement>,
}

#[derive(Clone)]
pub struct CatalogReader {
    pool: PgPool,
}

type RouteRow = (
    Uuid,
    String,
    String,
    Option<Uuid>,
    Option<String>,
    Option<i32>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<Vec<u8>>,
    Option<i32>,
    sqlx::types::Json<std::collections::BTreeMap<String, bool>>,
    sqlx::types::Json<std::collections::BTreeMap<String, i32>>,
);

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
            "select t.id, t.slug, t.status, s.id, s.display_url, s.max_connections,
                    p.database_name, p.role_name, t.key_id, p.role_password_ciphertext,
                    t.schema_version,
                    (select coalesce(json_object_agg(f.flag, f.enabled), '{}')
                       from tenant_features f where f.tenant_id = t.id),
                    (select coalesce(json_object_agg(r.flag, r.percent), '{}')
                       from feature_rollouts r)
               from tenant_domains d
               join tenants t on t.id = d.tenant_id
               left join tenant_placements p on p.tenant_id = t.id
               left join db_servers s on s.id = p.db_server_id
              where d.hostname = $1 and d.verified",
        )
        .bind(host)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| RuntimeError::catalog("resolving a host", e))?;
        let Some((
            id,
            slug,
            status,
            server_id,
            url,
            budget,
            db,
            role,
            key,
            secret,
            schema_version,
            settings,
            rollouts,
        )) = row
        else {
            return Ok(None);
        };
        let tenant_id = TenantId::from_uuid(id);
        let status = TenantStatus::parse(&status).ok_or_else(|| RuntimeError::Catalog {
            operation: "resolving a host",
            message: format!("unknown tenant status '{status}'"),
        })?;
        let placement = match (server_id, url, budget, db, role, key, secret) {
            (
                Some(db_server_id),
                Some(server_url),
                Some(budget),
                Some(database),
                Some(role),
                Some(key_id),
                Some(password_ciphertext),
            ) => Some(Placement {
                db_server_id,
                server_url,
                server_budget: budget.max(1).unsigned_abs(),
                database,
                role,
                key_id,
                password_ciphertext,
            }),
            _ => None,
        };
        Ok(Some(TenantRoute {
            tenant_id,
            slug,
            status,
            schema_version,
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
