//! The tenant catalog (control-plane database, sqlx). Store functions only: what to do with
//! the rows is the workflows' business. Constraint violations that an operator can cause are
//! mapped to [`PlatformError`] variants next to the query that can raise them.

use portico_core::{DbServerName, Hostname, RunId, Slug, TenantId};
use serde::Serialize;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::error::{PlatformError, Result};

/// The steps of a tenant create, in order.
pub const CREATE_STEPS: &[&str] = &["key", "role", "database", "storage", "activate"];

#[derive(Clone)]
pub struct Catalog {
    pool: PgPool,
    /// Connections with `synchronous_commit = off`, for step bookkeeping only (see
    /// [`Catalog::journal`]).
    journal: PgPool,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DbServerRow {
    pub id: Uuid,
    pub name: String,
    pub admin_url_ciphertext: Vec<u8>,
    pub display_url: String,
    pub max_connections: i32,
    pub created_at: OffsetDateTime,
    pub tenant_count: i64,
    /// The CA its certificate must chain to (TLS); `None`: plain TCP.
    pub ca_pem: Option<String>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TenantRow {
    pub id: Uuid,
    pub slug: String,
    pub display_name: String,
    pub status: String,
    pub tier: String,
    pub key_id: Option<String>,
    pub storage_prefix: String,
    pub schema_version: Option<i32>,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
}

impl TenantRow {
    pub fn tenant_id(&self) -> TenantId {
        TenantId::from_uuid(self.id)
    }
}

#[derive(Debug, Clone, Serialize, serde::Deserialize, sqlx::FromRow)]
pub struct DomainRow {
    pub hostname: String,
    pub kind: String,
    #[serde(rename = "primary")]
    pub is_primary: bool,
    pub verified: bool,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PlacementRow {
    pub db_server_id: Uuid,
    pub db_server: String,
    pub database_name: String,
    pub role_name: String,
    pub role_password_ciphertext: Option<Vec<u8>>,
    /// Pooled tier: the shared database and the tenant's schema there.
    pub shared_database_id: Option<Uuid>,
    pub schema_name: Option<String>,
    pub pool_role: Option<String>,
    pub pool_password_ciphertext: Option<Vec<u8>>,
}

impl PlacementRow {
    /// Pooled tier: the shared database and its pool role (the role is named after the
    /// database when the catalog does not say).
    pub fn shared_names(&self) -> Option<portico_provisioning::pooled::SharedDbNames> {
        self.shared_database_id
            .map(|_| portico_provisioning::pooled::SharedDbNames {
                database: self.database_name.clone(),
                pool_role: self
                    .pool_role
                    .clone()
                    .unwrap_or_else(|| self.database_name.clone()),
            })
    }

    /// Where the tenant's objects live, for migrations.
    pub fn target(&self) -> portico_provisioning::migrations::Target {
        match &self.schema_name {
            Some(schema) => portico_provisioning::migrations::Target::Schema {
                schema: schema.clone(),
                role: self.role_name.clone(),
            },
            None => portico_provisioning::migrations::Target::Database,
        }
    }
}

/// Where a new tenant's data goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    /// A database and login role of its own.
    #[default]
    Dedicated,
    /// A schema and NOLOGIN role in a shared database, reached through its pool role.
    Pooled,
}

impl Tier {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Dedicated => "dedicated",
            Self::Pooled => "pooled",
        }
    }
}

impl std::str::FromStr for Tier {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "dedicated" => Ok(Self::Dedicated),
            "pooled" => Ok(Self::Pooled),
            other => Err(format!(
                "unknown tier '{other}': use 'dedicated' or 'pooled'"
            )),
        }
    }
}

/// A tenant's create run, as far as resuming or rolling it back needs it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RunRow {
    pub id: Uuid,
    pub status: String,
    pub request: serde_json::Value,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize, sqlx::FromRow)]
pub struct StepRow {
    pub step: String,
    pub state: String,
    pub attempts: i32,
    pub error: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub started_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub finished_at: Option<OffsetDateTime>,
}

/// A tenant with its domains, placement and create run, read in one query.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TenantDetailRow {
    #[sqlx(flatten)]
    pub tenant: TenantRow,
    pub db_server: Option<String>,
    pub database_name: Option<String>,
    pub role_name: Option<String>,
    pub schema_name: Option<String>,
    pub run_id: Option<Uuid>,
    pub run_status: Option<String>,
    pub run_error: Option<String>,
    pub domains: sqlx::types::Json<Vec<DomainRow>>,
    pub steps: sqlx::types::Json<Vec<StepRow>>,
    pub write_frozen: bool,
    /// The tenant's unfinished move, if any.
    pub move_run_id: Option<Uuid>,
    pub move_status: Option<String>,
    /// The tenant's latest deletion (status, grace, who asked and approved), if any.
    pub deletion: Option<serde_json::Value>,
}

/// Everything recorded in one transaction when a tenant create starts.
#[derive(Debug, Clone)]
pub struct NewTenant {
    pub id: TenantId,
    pub slug: Slug,
    pub display_name: String,
    pub storage_prefix: String,
    pub subdomain: Hostname,
    pub custom_domains: Vec<Hostname>,
    pub db_server_id: Uuid,
    pub database_name: String,
    pub role_name: String,
    pub tier: Tier,
    /// Pooled tier: most tenants per shared database.
    pub pooled_capacity: i32,
    pub request: serde_json::Value,
}

/// This binary's catalog release. Each release that adds catalog migrations raises it by one;
/// a binary runs against a catalog of its own release or of the next one (whose migrations
/// only add, see docs/releases.md), never an older one.
pub const CATALOG_RELEASE: i32 = 5;

pub(crate) fn constraint(e: &sqlx::Error) -> Option<&str> {
    match e {
        sqlx::Error::Database(db) => db.constraint(),
        _ => None,
    }
}

impl Catalog {
    pub async fn connect(url: &portico_core::settings::DatabaseUrl) -> Result<Self> {
        let options: PgConnectOptions = url.expose().parse().map_err(|_| {
            PlatformError::InvalidInput(
                "invalid setting PORTICO_DATABASE_URL: not a valid PostgreSQL URL".into(),
            )
        })?;
        let options = options.application_name("portico-control-plane");
        let connect_err = |e: sqlx::Error| PlatformError::Catalog {
            operation: "connecting to the control-plane database",
            message: format!("{} ({})", e, url.redacted()),
        };
        let pool = PgPoolOptions::new()
            .max_connections(5)
            .acquire_timeout(std::time::Duration::from_secs(10))
            .connect_with(options.clone())
            .await
            .map_err(connect_err)?;
        let journal = PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(std::time::Duration::from_secs(10))
            .connect_lazy_with(options.options([("synchronous_commit", "off")]));
        Ok(Self { pool, journal })
    }

    /// The pool for step bookkeeping, whose commits do not wait for the WAL flush.
    ///
    /// Why that is safe: every step is idempotent and named from the tenant id, so a record
    /// lost in a crash of the *database server* only makes the next run redo a step. A crash of
    /// our own process loses nothing (the server already has the commit). The records that must
    /// be durable — the reservation that names the tenant before any resource exists, and the
    /// activation — go through the ordinary pool with synchronous commits. This keeps a tenant
    /// create close to the cost of copying its template (see the provisioning benchmark).
    pub(crate) fn journal(&self) -> &PgPool {
        &self.journal
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Applies the control-plane migrations (`migrations/control-plane`) this binary ships
    /// and records its release. A catalog already migrated by a newer release is left as it
    /// is if that release still serves this one (see [`Catalog::check_release`]).
    pub async fn migrate(&self) -> Result<()> {
        self.check_release(true).await?;
        let mut migrator = sqlx::migrate!("../migrations/control-plane");
        // Migrations of a newer release are not ours to judge.
        migrator.set_ignore_missing(true);
        migrator
            .run(&self.pool)
            .await
            .map_err(|e| PlatformError::Catalog {
                operation: "migrating the control-plane database",
                message: e.to_string(),
            })?;
        sqlx::query(
            "insert into catalog_releases (release, compatible_from) values ($1, $2)
             on conflict on constraint catalog_releases_pkey do nothing",
        )
        .bind(CATALOG_RELEASE)
        .bind(CATALOG_RELEASE - 1)
        .execute(&self.pool)
        .await
        .map_err(|e| PlatformError::catalog("recording the catalog release", e))?;
        Ok(())
    }

    /// Whether this binary may run against the catalog: every catalog migration it ships must
    /// be applied (else: run `portico migrate`), and migrations it does not know are accepted
    /// only when the newest release that applied them still serves this one (one release of
    /// overlap, for rolling deploys and rollback). `migrating` accepts an older catalog.
    pub async fn check_release(&self, migrating: bool) -> Result<()> {
        let migrator = sqlx::migrate!("../migrations/control-plane");
        let exists: bool =
            sqlx::query_scalar("select to_regclass('public._sqlx_migrations') is not null")
                .fetch_one(&self.pool)
                .await
                .map_err(|e| PlatformError::catalog("checking the catalog", e))?;
        let applied: Vec<i64> = if exists {
            sqlx::query_scalar("select version from _sqlx_migrations where success")
                .fetch_all(&self.pool)
                .await
                .map_err(|e| PlatformError::catalog("checking the catalog", e))?
        } else {
            Vec::new()
        };
        let ours: Vec<i64> = migrator.iter().map(|m| m.version).collect();
        if !migrating {
            if applied.is_empty() {
                return Err(PlatformError::InvalidState(
                    "the control-plane database is not set up yet; run `portico migrate`".into(),
                ));
            }
            if let Some(missing) = ours.iter().find(|v| !applied.contains(v)) {
                return Err(PlatformError::InvalidState(format!(
                    "the control-plane database is older than this binary (migration {missing} is not applied); run `portico migrate`"
                )));
            }
        }
        if applied.iter().any(|v| !ours.contains(v)) {
            let newest: Option<(i32, i32)> = sqlx::query_as(
                "select release, compatible_from from catalog_releases
                  order by release desc limit 1",
            )
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| PlatformError::catalog("checking the catalog release", e))?;
            match newest {
                Some((release, from)) if from <= CATALOG_RELEASE => {
                    tracing::debug!(
                        release,
                        "the catalog is newer than this binary but serves it"
                    );
                }
                Some((release, _)) => {
                    return Err(PlatformError::InvalidState(format!(
                        "the control-plane database belongs to release {release}, which no longer serves this binary (release {CATALOG_RELEASE}); upgrade the binary"
                    )));
                }
                None => {
                    return Err(PlatformError::InvalidState(
                        "the control-plane database has migrations this binary does not know; upgrade the binary".into(),
                    ));
                }
            }
        }
        Ok(())
    }

    // ---- database servers -------------------------------------------------------------

    pub async fn insert_db_server(
        &self,
        id: Uuid,
        name: &DbServerName,
        admin_url_ciphertext: &[u8],
        display_url: &str,
        max_connections: i32,
        ca_pem: Option<&str>,
    ) -> Result<()> {
        sqlx::query(
            "insert into db_servers (id, name, admin_url_ciphertext, display_url, max_connections,
                                     ca_pem)
             values ($1, $2, $3, $4, $5, $6)",
        )
        .bind(id)
        .bind(name.as_str())
        .bind(admin_url_ciphertext)
        .bind(display_url)
        .bind(max_connections)
        .bind(ca_pem)
        .execute(&self.pool)
        .await
        .map_err(|e| match constraint(&e) {
            Some("db_servers_name_key") => PlatformError::ServerExists(name.to_string()),
            _ => PlatformError::catalog("registering the database server", e),
        })?;
        Ok(())
    }

    const SERVER_COLUMNS: &str = "s.id, s.name, s.admin_url_ciphertext, s.display_url,
        s.max_connections, s.created_at, s.ca_pem,
        (select count(*) from tenant_placements p where p.db_server_id = s.id) as tenant_count";

    pub async fn list_db_servers(&self) -> Result<Vec<DbServerRow>> {
        sqlx::query_as(&format!(
            "select {} from db_servers s order by s.name",
            Self::SERVER_COLUMNS
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| PlatformError::catalog("listing database servers", e))
    }

    pub async fn db_server_by_name(&self, name: &DbServerName) -> Result<Option<DbServerRow>> {
        sqlx::query_as(&format!(
            "select {} from db_servers s where s.name = $1",
            Self::SERVER_COLUMNS
        ))
        .bind(name.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| PlatformError::catalog("looking up the database server", e))
    }

    pub async fn db_server_by_id(&self, id: Uuid) -> Result<Option<DbServerRow>> {
        sqlx::query_as(&format!(
            "select {} from db_servers s where s.id = $1",
            Self::SERVER_COLUMNS
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| PlatformError::catalog("looking up the database server", e))
    }

    // ---- tenants ----------------------------------------------------------------------

    const TENANT_COLUMNS: &str = "id, slug, display_name, status, tier, key_id, storage_prefix,
        schema_version, created_at, updated_at";

    pub async fn tenant_by_slug(&self, slug: &str) -> Result<Option<TenantRow>> {
        sqlx::query_as(&format!(
            "select {} from tenants where slug = $1",
            Self::TENANT_COLUMNS
        ))
        .bind(slug)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| PlatformError::catalog("looking up the tenant", e))
    }

    pub async fn tenant_by_id(&self, tenant: TenantId) -> Result<Option<TenantRow>> {
        sqlx::query_as(&format!(
            "select {} from tenants where id = $1",
            Self::TENANT_COLUMNS
        ))
        .bind(tenant.as_uuid())
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| PlatformError::catalog("looking up the tenant", e))
    }

    /// Tenants with everything shown about them (all, or the one with `slug`), in one query.
    pub async fn tenant_details(&self, slug: Option<&str>) -> Result<Vec<TenantDetailRow>> {
        sqlx::query_as(
            "select t.id, t.slug, t.display_name, t.status, t.tier, t.key_id, t.storage_prefix,
                    t.schema_version, t.created_at, t.updated_at,
                    s.name as db_server, p.database_name, p.role_name, p.schema_name,
                    r.id as run_id, r.status as run_status, r.error as run_error,
                    coalesce((select json_agg(json_build_object(
                                 'hostname', d.hostname, 'kind', d.kind,
                                 'primary', d.is_primary, 'verified', d.verified)
                               order by d.is_primary desc, d.hostname)
                              from tenant_domains d where d.tenant_id = t.id), '[]') as domains,
                    coalesce((select json_agg(json_build_object(
                                 'step', st.step, 'state', st.state, 'attempts', st.attempts,
                                 'error', st.error, 'started_at', st.started_at,
                                 'finished_at', st.finished_at)
                               order by st.position)
                              from provisioning_steps st where st.run_id = r.id), '[]') as steps,
                    t.write_frozen, mv.id as move_run_id, mv.status as move_status,
                    (select json_build_object('status', del.status,
                                'grace_until', del.grace_until, 'requested_by', del.requested_by,
                                'approved_by', del.approved_by, 'purged_at', del.purged_at)
                       from tenant_deletions del where del.tenant_id = t.id
                      order by del.approved_at desc limit 1) as deletion
             from tenants t
             left join tenant_placements p on p.tenant_id = t.id
             left join db_servers s on s.id = p.db_server_id
             left join provisioning_runs r on r.tenant_id = t.id and r.kind = 'create'
             left join provisioning_runs mv on mv.tenant_id = t.id and mv.kind = 'move'
                  and mv.status in ('running', 'failed', 'rolling_back')
             where $1::text is null or t.slug = $1
             order by t.slug",
        )
        .bind(slug)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| PlatformError::catalog("reading tenants", e))
    }

    /// The first of `hostnames` already owned by a tenant, with that tenant's slug.
    pub async fn first_taken_domain(&self, hostnames: &[&str]) -> Result<Option<(String, String)>> {
        sqlx::query_as(
            "select d.hostname, t.slug from tenant_domains d join tenants t on t.id = d.tenant_id
             where d.hostname = any($1) order by array_position($1, d.hostname) limit 1",
        )
        .bind(hostnames)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| PlatformError::catalog("looking up domains", e))
    }

    pub async fn placement(&self, tenant: TenantId) -> Result<Option<PlacementRow>> {
        sqlx::query_as(
            "select p.db_server_id, s.name as db_server, p.database_name, p.role_name,
                    p.role_password_ciphertext, p.shared_database_id, p.schema_name,
                    sd.pool_role, sd.pool_password_ciphertext
             from tenant_placements p join db_servers s on s.id = p.db_server_id
             left join shared_databases sd on sd.id = p.shared_database_id
             where p.tenant_id = $1",
        )
        .bind(tenant.as_uuid())
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| PlatformError::catalog("looking up the tenant placement", e))
    }

    /// Records a new tenant in `provisioning` state with its domains, placement and a create
    /// run with all steps pending: all or nothing.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn reserve_tenant(&self, new: &NewTenant) -> Result<RunId> {
        let run = RunId::random();
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(|e| PlatformError::catalog("starting the tenant record", e))?;
        let map = |e: sqlx::Error| match constraint(&e) {
            Some("tenants_slug_key") => PlatformError::SlugTaken(new.slug.to_string()),
            Some("tenant_domains_pkey") => PlatformError::Conflict(
                "one of the requested domains was taken by another tenant just now; try again"
                    .into(),
            ),
            _ => PlatformError::catalog("recording the new tenant", e),
        };
        sqlx::query(
            "insert into tenants (id, slug, display_name, status, storage_prefix, tier)
             values ($1, $2, $3, 'provisioning', $4, $5)",
        )
        .bind(new.id.as_uuid())
        .bind(new.slug.as_str())
        .bind(&new.display_name)
        .bind(&new.storage_prefix)
        .bind(new.tier.as_str())
        .execute(&mut *tx)
        .await
        .map_err(map)?;
        // The subdomain (primary, verified by construction) and the custom domains
        // (unverified), in one statement.
        let custom: Vec<&str> = new.custom_domains.iter().map(Hostname::as_str).collect();
        sqlx::query(
            "insert into tenant_domains (hostname, tenant_id, kind, is_primary, verified)
             select $2, $1, 'subdomain', true, true
             union all
             select d, $1, 'custom', false, false from unnest($3::text[]) as d",
        )
        .bind(new.id.as_uuid())
        .bind(new.subdomain.as_str())
        .bind(&custom)
        .execute(&mut *tx)
        .await
        .map_err(map)?;
        match new.tier {
            Tier::Dedicated => {
                sqlx::query(
                    "insert into tenant_placements (tenant_id, db_server_id, database_name, role_name)
                     values ($1, $2, $3, $4)",
                )
                .bind(new.id.as_uuid())
                .bind(new.db_server_id)
                .bind(&new.database_name)
                .bind(&new.role_name)
                .execute(&mut *tx)
                .await
                .map_err(map)?;
            }
            Tier::Pooled => {
                let shared =
                    shared_database_with_room(&mut tx, new.db_server_id, new.pooled_capacity)
                        .await
                        .map_err(map)?;
                sqlx::query(
                    "insert into tenant_placements
                         (tenant_id, db_server_id, database_name, role_name, shared_database_id,
                          schema_name)
                     values ($1, $2, $3, $4, $5, $4)",
                )
                .bind(new.id.as_uuid())
                .bind(new.db_server_id)
                .bind(&shared.1)
                .bind(&new.role_name)
                .bind(shared.0)
                .execute(&mut *tx)
                .await
                .map_err(map)?;
            }
        }
        sqlx::query(
            "insert into provisioning_runs (id, tenant_id, kind, status, request)
             values ($1, $2, 'create', 'running', $3)",
        )
        .bind(run.as_uuid())
        .bind(new.id.as_uuid())
        .bind(&new.request)
        .execute(&mut *tx)
        .await
        .map_err(map)?;
        insert_steps(&mut tx, run, CREATE_STEPS)
            .await
            .map_err(map)?;
        tx.commit().await.map_err(map)?;
        Ok(run)
    }

    pub async fn create_run(&self, tenant: TenantId) -> Result<Option<RunRow>> {
        sqlx::query_as(
            "select id, status, request from provisioning_runs
             where tenant_id = $1 and kind = 'create'",
        )
        .bind(tenant.as_uuid())
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| PlatformError::catalog("looking up the provisioning run", e))
    }

    /// A step's recorded state (`pending`, `running`, `done`, `failed`).
    pub async fn step_state(&self, run: RunId, step: &str) -> Result<Option<String>> {
        sqlx::query_scalar("select state from provisioning_steps where run_id = $1 and step = $2")
            .bind(run.as_uuid())
            .bind(step)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| PlatformError::catalog("reading a step", e))
    }

    /// Marks a step running and counts the attempt; returns the attempt number.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn step_started(&self, run: RunId, step: &str) -> Result<i32> {
        sqlx::query_scalar(
            "with r as (update provisioning_runs set status = 'running', error = null where id = $1)
             update provisioning_steps
             set state = 'running', attempts = attempts + 1, error = null,
                 started_at = now(), finished_at = null
             where run_id = $1 and step = $2 returning attempts",
        )
        .bind(run.as_uuid())
        .bind(step)
        .fetch_one(self.journal())
        .await
        .map_err(|e| PlatformError::catalog("recording a step start", e))
    }

    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn step_done(&self, run: RunId, step: &str) -> Result<()> {
        sqlx::query(
            "update provisioning_steps set state = 'done', finished_at = now(), error = null
             where run_id = $1 and step = $2",
        )
        .bind(run.as_uuid())
        .bind(step)
        .execute(self.journal())
        .await
        .map_err(|e| PlatformError::catalog("recording a finished step", e))?;
        Ok(())
    }

    pub async fn step_failed(&self, run: RunId, step: &str, error: &str) -> Result<()> {
        sqlx::query(
            "with s as (
               update provisioning_steps set state = 'failed', finished_at = now(), error = $3
               where run_id = $1 and step = $2)
             update provisioning_runs set status = 'failed', error = $4, finished_at = now()
             where id = $1",
        )
        .bind(run.as_uuid())
        .bind(step)
        .bind(error)
        .bind(format!("step '{step}' failed: {error}"))
        .execute(self.journal())
        .await
        .map_err(|e| PlatformError::catalog("recording a failed step", e))?;
        Ok(())
    }

    /// Records the key step's result and finishes the step in one statement.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn key_created(&self, run: RunId, tenant: TenantId, key_id: &str) -> Result<()> {
        sqlx::query(
            "with t as (update tenants set key_id = $3, updated_at = now() where id = $2)
             update provisioning_steps set state = 'done', finished_at = now(), error = null
             where run_id = $1 and step = 'key'",
        )
        .bind(run.as_uuid())
        .bind(tenant.as_uuid())
        .bind(key_id)
        .execute(self.journal())
        .await
        .map_err(|e| PlatformError::catalog("recording the tenant key", e))?;
        Ok(())
    }

    /// Stores the role password (already encrypted under the tenant key) before the role is
    /// created, so that a resumed run sets the same password. Losing this record in a server
    /// crash is harmless too: the next run generates a new password and `ensure_role` sets it.
    #[tracing::instrument(level = "debug", skip_all)]
    /// Records a shared database's pool password unless one is recorded already; returns the
    /// one recorded (ours, or the one a concurrent create stored first).
    pub async fn set_pool_password(&self, shared: Uuid, ciphertext: &[u8]) -> Result<Vec<u8>> {
        sqlx::query_scalar(
            "update shared_databases
                set pool_password_ciphertext = coalesce(pool_password_ciphertext, $2)
              where id = $1 returning pool_password_ciphertext",
        )
        .bind(shared)
        .bind(ciphertext)
        .fetch_one(self.journal())
        .await
        .map_err(|e| PlatformError::catalog("recording the pool password", e))
    }

    pub async fn set_role_password(&self, tenant: TenantId, ciphertext: &[u8]) -> Result<()> {
        sqlx::query(
            "update tenant_placements set role_password_ciphertext = $2 where tenant_id = $1",
        )
        .bind(tenant.as_uuid())
        .bind(ciphertext)
        .execute(self.journal())
        .await
        .map_err(|e| PlatformError::catalog("recording the role password", e))?;
        Ok(())
    }

    /// Final step: tenant `active` at `schema_version`, step done, run succeeded, in one
    /// statement on the durable (synchronous-commit) pool: the operator is told the tenant
    /// exists.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn activate(&self, run: RunId, tenant: TenantId, schema_version: i32) -> Result<()> {
        sqlx::query(
            "with t as (
               update tenants set status = 'active', schema_version = $3, updated_at = now()
               where id = $2 and status = 'provisioning'),
             s as (
               update provisioning_steps set state = 'done', finished_at = now(), error = null
               where run_id = $1 and step = 'activate')
             update provisioning_runs set status = 'succeeded', error = null, finished_at = now()
             where id = $1",
        )
        .bind(run.as_uuid())
        .bind(tenant.as_uuid())
        .bind(schema_version)
        .execute(&self.pool)
        .await
        .map_err(|e| PlatformError::catalog("activating the tenant", e))?;
        Ok(())
    }

    pub async fn mark_rolling_back(&self, run: RunId) -> Result<()> {
        sqlx::query(
            "update provisioning_runs set status = 'rolling_back', error = null where id = $1",
        )
        .bind(run.as_uuid())
        .execute(&self.pool)
        .await
        .map_err(|e| PlatformError::catalog("recording the rollback", e))?;
        Ok(())
    }

    /// Moves a tenant from one status to another; `false` when it was not in `from`.
    pub async fn transition(&self, tenant: TenantId, from: &str, to: &str) -> Result<bool> {
        let done = sqlx::query(
            "update tenants set status = $3, updated_at = now() where id = $1 and status = $2",
        )
        .bind(tenant.as_uuid())
        .bind(from)
        .bind(to)
        .execute(&self.pool)
        .await
        .map_err(|e| PlatformError::catalog("changing the tenant status", e))?;
        Ok(done.rows_affected() == 1)
    }

    /// Removes every catalog row of the tenant (domains, placement, runs, steps cascade).
    pub async fn delete_tenant(&self, tenant: TenantId) -> Result<()> {
        sqlx::query("delete from tenants where id = $1")
            .bind(tenant.as_uuid())
            .execute(&self.pool)
            .await
            .map_err(|e| PlatformError::catalog("removing the tenant record", e))?;
        Ok(())
    }

    /// Takes a session-level advisory lock on the tenant, waiting at most `wait` for another
    /// holder. The lock lives on a pooled connection held by the guard: a crashed holder's lock
    /// dies with its connection; [`AdvisoryLock::release`] unlocks and returns the connection.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn lock_tenant(
        &self,
        tenant: TenantId,
        wait: std::time::Duration,
    ) -> Result<AdvisoryLock> {
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(|e| PlatformError::catalog("locking the tenant", e))?;
        let key = advisory_key(tenant);
        // `set local` bounds the wait without leaving a setting on the pooled connection; the
        // session-level advisory lock outlives the transaction.
        let mut tx = sqlx::Connection::begin(&mut *conn)
            .await
            .map_err(|e| PlatformError::catalog("locking the tenant", e))?;
        sqlx::query(&format!(
            "set local lock_timeout = '{}ms'",
            wait.as_millis()
        ))
        .execute(&mut *tx)
        .await
        .map_err(|e| PlatformError::catalog("locking the tenant", e))?;
        let locked = sqlx::query("select pg_advisory_lock($1)")
            .bind(key)
            .execute(&mut *tx)
            .await;
        match locked {
            Ok(_) => {
                tx.commit()
                    .await
                    .map_err(|e| PlatformError::catalog("locking the tenant", e))?;
                Ok(AdvisoryLock {
                    conn: Some(conn),
                    key,
                })
            }
            Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("55P03") => {
                Err(PlatformError::Busy(
                    "another process is working on this tenant right now; try again when it is done"
                        .into(),
                ))
            }
            Err(e) => Err(PlatformError::catalog("locking the tenant", e)),
        }
    }
}

impl Catalog {
    /// Takes a session-level advisory lock on `key` if no one holds it, without waiting. The
    /// guard is the same as a tenant lock's: a crashed holder's lock dies with its connection.
    pub async fn try_lock(&self, key: i64) -> Result<Option<AdvisoryLock>> {
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(|e| PlatformError::catalog("taking a lock", e))?;
        let got: bool = sqlx::query_scalar("select pg_try_advisory_lock($1)")
            .bind(key)
            .fetch_one(&mut *conn)
            .await
            .map_err(|e| PlatformError::catalog("taking a lock", e))?;
        Ok(got.then_some(AdvisoryLock {
            conn: Some(conn),
            key,
        }))
    }
}

/// Records `steps` of `run`, pending, in order.
pub(crate) async fn insert_steps(
    tx: &mut sqlx::Transaction<'_, Postgres>,
    run: RunId,
    steps: &[&str],
) -> std::result::Result<(), sqlx::Error> {
    sqlx::query(
        "insert into provisioning_steps (run_id, position, step, state)
         select $1, (s.ord - 1)::int4, s.step, 'pending'
           from unnest($2::text[]) with ordinality as s(step, ord)",
    )
    .bind(run.as_uuid())
    .bind(steps)
    .execute(&mut **tx)
    .await
    .map(|_| ())
}

/// The oldest shared database of the server with room for one more tenant (counting tenants
/// placed there and moves on their way there), else a new one recorded now. Placements on one
/// server take turns here (transaction lock), so none overfills a database.
pub(crate) async fn shared_database_with_room(
    tx: &mut sqlx::Transaction<'_, Postgres>,
    server: Uuid,
    capacity: i32,
) -> std::result::Result<(Uuid, String), sqlx::Error> {
    sqlx::query("select pg_advisory_xact_lock(727368, 3)")
        .execute(&mut **tx)
        .await?;
    let new_id = Uuid::new_v4();
    sqlx::query_as(
        "with room as (
           select sd.id, sd.database_name from shared_databases sd
            where sd.db_server_id = $1
              and (select count(*) from tenant_placements p where p.shared_database_id = sd.id)
                + (select count(*) from tenant_moves m
                     join provisioning_runs r on r.id = m.run_id
                    where m.to_shared_database_id = sd.id
                      and r.status in ('running', 'failed', 'rolling_back')) < sd.capacity
            order by sd.created_at, sd.id limit 1),
         made as (
           insert into shared_databases (id, db_server_id, database_name, pool_role, capacity)
           select $2, $1, $3, $3, $4 where not exists (select 1 from room)
           returning id, database_name)
         select id, database_name from room union all select id, database_name from made",
    )
    .bind(server)
    .bind(new_id)
    .bind(portico_provisioning::pooled::SharedDbNames::for_id(new_id).database)
    .bind(capacity.max(1))
    .fetch_one(&mut **tx)
    .await
}

/// A tenant's advisory-lock key: the first 8 bytes of its id.
fn advisory_key(tenant: TenantId) -> i64 {
    let b = tenant.as_uuid().into_bytes();
    i64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
}

/// Holds a session-level advisory lock (a tenant's, or the fleet run lock). Release it with
/// [`AdvisoryLock::release`]; dropping it unreleased closes its connection instead (which also
/// releases the lock), so a connection holding a lock never goes back to the pool.
pub struct AdvisoryLock {
    conn: Option<sqlx::pool::PoolConnection<Postgres>>,
    key: i64,
}

impl AdvisoryLock {
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn release(mut self) {
        if let Some(mut conn) = self.conn.take() {
            let unlocked = sqlx::query_scalar::<_, bool>("select pg_advisory_unlock($1)")
                .bind(self.key)
                .fetch_one(&mut *conn)
                .await;
            if !matches!(unlocked, Ok(true)) {
                drop(conn.detach());
            }
        }
    }
}

impl Drop for AdvisoryLock {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            drop(conn.detach());
        }
    }
}
