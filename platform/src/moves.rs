//! Online tenant moves between tiers and servers: `portico tenant move <slug> --to-tier …
//! --to-server …` and `POST /operator/v1/tenants/{slug}/moves`.
//!
//! A move is a recorded run (`provisioning_runs` of kind `move`, its steps in
//! `provisioning_steps`, where from and to in `tenant_moves`):
//!
//! | step      | does                                                                   | tenant serves        |
//! |-----------|------------------------------------------------------------------------|----------------------|
//! | `prepare` | the destination: a database and login role (dedicated) or a schema in a shared database (pooled), at the newest migration | from the source |
//! | `freeze`  | catalog `write_frozen` (instances answer writes `503 tenant_moving`); in the source: waits for running writes, records and revokes the role's write privileges | reads from the source |
//! | `copy`    | every table (one snapshot, `COPY` binary) and sequence value into the emptied destination; row counts and checksums compared before the destination commits | reads from the source |
//! | `switch`  | one catalog transaction: placement → destination, tier, freeze lifted; instances hear it through the catalog notification | from the destination |
//! | `cleanup` | after `move_drain`, the source is dropped (database, or schemas; the role where it is no longer used) | from the destination |
//!
//! Every step is idempotent, so re-running `tenant move` after a crash at any point finishes the
//! move. Before `switch`, `tenant move --rollback` undoes it instead: write privileges granted
//! back, freeze lifted, destination dropped. The tenant is served from exactly one place
//! throughout: writes land only in the source until the freeze and only in the destination
//! after the switch; the freeze in PostgreSQL holds even for an instance that has not heard of
//! it. Document objects and keys do not move: prefix and key are the tenant's, not its tier's.

use portico_core::keys::TenantKeyRef;
use portico_core::{DbServerName, RunId, Slug, TenantId};
use portico_provisioning::migrations::Target;
use portico_provisioning::moves::{self as pgmove, WriteGrant};
use portico_provisioning::pooled::{self, SharedDbNames};
use portico_provisioning::{DbServer, RoleLimits, TenantDbNames, TenantProfile, database};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::catalog::{StepRow, Tier, constraint};
use crate::context::Platform;
use crate::db_servers;
use crate::error::{PlatformError, Result};
use crate::tenants::{LOCK_WAIT, checkpoint, pool_limits, pool_password, tenant_row};

/// The steps of a move, in order.
pub const MOVE_STEPS: &[&str] = &["prepare", "freeze", "copy", "switch", "cleanup"];

/// How long the freeze waits for the tenant's running writes before the step fails (and can be
/// re-run): the longest a write may run is the tenant statement timeout.
const FREEZE_LOCK_WAIT_MS: u32 = 30_000;

/// A move as asked for; what is left out stays as it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoveTenant {
    pub slug: Slug,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_tier: Option<Tier>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_server: Option<DbServerName>,
}

/// One side of a move.
#[derive(Debug, Clone, Serialize)]
pub struct MoveEnd {
    pub tier: String,
    pub db_server: String,
    pub database: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct MoveView {
    pub run_id: Uuid,
    pub tenant_id: TenantId,
    pub slug: String,
    /// `running`, `failed` (re-run to resume), `rolling_back`, `succeeded` or `rolled_back`.
    pub status: String,
    pub error: Option<String>,
    pub from: MoveEnd,
    pub to: MoveEnd,
    pub rows_copied: Option<i64>,
    /// From the start of the freeze to the switch (or until now, while frozen).
    pub write_freeze_ms: Option<i64>,
    pub steps: Vec<StepRow>,
}

/// A move recorded in the catalog, to be finished by [`finish_move`].
#[derive(Debug, Clone)]
pub struct StartedMove {
    pub tenant: TenantId,
    pub run: RunId,
    pub slug: Slug,
}

#[derive(Debug, Clone, sqlx::FromRow)]
struct MoveRow {
    run_id: Uuid,
    tenant_id: Uuid,
    slug: String,
    display_name: String,
    key_id: Option<String>,
    role_name: String,
    status: String,
    error: Option<String>,
    from_tier: String,
    from_db_server_id: Uuid,
    from_server: String,
    from_database_name: String,
    from_pool_role: Option<String>,
    to_tier: String,
    to_db_server_id: Uuid,
    to_server: String,
    to_database_name: String,
    to_shared_database_id: Option<Uuid>,
    to_pool_role: Option<String>,
    to_pool_password_ciphertext: Option<Vec<u8>>,
    to_role_password_ciphertext: Option<Vec<u8>>,
    frozen_grants: Option<sqlx::types::Json<Vec<WriteGrant>>>,
    rows_copied: Option<i64>,
    write_freeze_ms: Option<i64>,
    switched: bool,
    steps: sqlx::types::Json<Vec<StepRow>>,
}

impl MoveRow {
    fn tenant(&self) -> TenantId {
        TenantId::from_uuid(self.tenant_id)
    }
    fn run(&self) -> RunId {
        RunId::from_uuid(self.run_id)
    }
    fn target(&self, tier: &str) -> Target {
        if tier == "pooled" {
            Target::Schema {
                schema: self.role_name.clone(),
                role: self.role_name.clone(),
            }
        } else {
            Target::Database
        }
    }
    fn src_target(&self) -> Target {
        self.target(&self.from_tier)
    }
    fn dst_target(&self) -> Target {
        self.target(&self.to_tier)
    }
    fn same_server(&self) -> bool {
        self.from_db_server_id == self.to_db_server_id
    }
    fn view(self) -> MoveView {
        MoveView {
            run_id: self.run_id,
            tenant_id: self.tenant(),
            slug: self.slug,
            status: self.status,
            error: self.error,
            from: MoveEnd {
                tier: self.from_tier,
                db_server: self.from_server,
                database: self.from_database_name,
            },
            to: MoveEnd {
                tier: self.to_tier,
                db_server: self.to_server,
                database: self.to_database_name,
            },
            rows_copied: self.rows_copied,
            write_freeze_ms: self.write_freeze_ms,
            steps: self.steps.0,
        }
    }
}

const MOVE_SELECT: &str = "
    select m.run_id, m.tenant_id, t.slug, t.display_name, t.key_id, p.role_name,
           r.status, r.error,
           m.from_tier, m.from_db_server_id, fs.name as from_server, m.from_database_name,
           fsd.pool_role as from_pool_role,
           m.to_tier, m.to_db_server_id, ts.name as to_server, m.to_database_name,
           m.to_shared_database_id, tsd.pool_role as to_pool_role,
           tsd.pool_password_ciphertext as to_pool_password_ciphertext,
           m.to_role_password_ciphertext, m.frozen_grants, m.rows_copied,
           (extract(epoch from (coalesce(m.switched_at, now()) - m.frozen_at)) * 1000)::int8
               as write_freeze_ms,
           m.switched_at is not null as switched,
           coalesce((select json_agg(json_build_object(
                        'step', st.step, 'state', st.state, 'attempts', st.attempts,
                        'error', st.error, 'started_at', st.started_at,
                        'finished_at', st.finished_at) order by st.position)
                       from provisioning_steps st where st.run_id = r.id), '[]') as steps
      from tenant_moves m
      join provisioning_runs r on r.id = m.run_id
      join tenants t on t.id = m.tenant_id
      join tenant_placements p on p.tenant_id = m.tenant_id
      join db_servers fs on fs.id = m.from_db_server_id
      join db_servers ts on ts.id = m.to_db_server_id
      left join shared_databases fsd on fsd.id = m.from_shared_database_id
      left join shared_databases tsd on tsd.id = m.to_shared_database_id";

async fn open_move(platform: &Platform, tenant: TenantId) -> Result<Option<MoveRow>> {
    sqlx::query_as(&format!(
        "{MOVE_SELECT} where m.tenant_id = $1
                         and r.status in ('running', 'failed', 'rolling_back')"
    ))
    .bind(tenant.as_uuid())
    .fetch_optional(platform.catalog.pool())
    .await
    .map_err(|e| PlatformError::catalog("looking up the tenant's move", e))
}

async fn move_by_run(platform: &Platform, run: Uuid) -> Result<Option<MoveRow>> {
    sqlx::query_as(&format!("{MOVE_SELECT} where m.run_id = $1"))
        .bind(run)
        .fetch_optional(platform.catalog.pool())
        .await
        .map_err(|e| PlatformError::catalog("looking up a move", e))
}

/// A move run's view (for `GET /operator/v1/runs/{id}`), `None` when `run` is not a move.
pub async fn show(platform: &Platform, run: Uuid) -> Result<Option<MoveView>> {
    Ok(move_by_run(platform, run).await?.map(MoveRow::view))
}

/// Starts (and finishes) a move, or resumes the tenant's unfinished one.
#[tracing::instrument(name = "move", skip_all, fields(slug = %req.slug))]
pub async fn move_tenant(platform: &Platform, req: MoveTenant) -> Result<MoveView> {
    let started = start_move(platform, req).await?;
    Box::pin(finish_move(platform, &started)).await
}

/// Validates a move and records it, or finds the tenant's unfinished move (which the request
/// must not contradict). Every refusal happens here, before anything is created.
pub async fn start_move(platform: &Platform, req: MoveTenant) -> Result<StartedMove> {
    let slug = req.slug.clone();
    let t = tenant_row(platform, slug.as_str()).await?;
    let tenant = t.tenant_id();
    let to_server = match &req.to_server {
        Some(name) => Some(
            platform
                .catalog
                .db_server_by_name(name)
                .await?
                .ok_or_else(|| PlatformError::ServerNotFound(name.to_string()))?,
        ),
        None => None,
    };
    if let Some(open) = open_move(platform, tenant).await? {
        if open.status == "rolling_back" {
            return Err(PlatformError::InvalidState(format!(
                "an undo of the move of '{slug}' was interrupted; finish it with `portico tenant move --rollback {slug}`"
            )));
        }
        let same = req.to_tier.is_none_or(|w| w.as_str() == open.to_tier)
            && to_server
                .as_ref()
                .is_none_or(|s| s.id == open.to_db_server_id);
        if !same {
            return Err(PlatformError::Conflict(format!(
                "tenant '{slug}' is already moving to {} on '{}'; re-run without options (or with those) to finish it, or undo it with `portico tenant move --rollback {slug}`",
                open.to_tier, open.to_server
            )));
        }
        return Ok(StartedMove {
            tenant,
            run: open.run(),
            slug,
        });
    }
    if !matches!(t.status.as_str(), "active" | "suspended") {
        return Err(PlatformError::InvalidState(format!(
            "tenant '{slug}' is {}; only an active or suspended tenant can move",
            t.status
        )));
    }
    let placement =
        platform.catalog.placement(tenant).await?.ok_or_else(|| {
            PlatformError::InvalidState(format!("tenant '{slug}' has no placement"))
        })?;
    let from_tier = if placement.shared_database_id.is_some() {
        Tier::Pooled
    } else {
        Tier::Dedicated
    };
    let to_tier = req.to_tier.unwrap_or(from_tier);
    let to_server = match to_server {
        Some(s) => s,
        None => platform
            .catalog
            .db_server_by_id(placement.db_server_id)
            .await?
            .ok_or_else(|| PlatformError::ServerNotFound(placement.db_server.clone()))?,
    };
    if to_tier == from_tier && to_server.id == placement.db_server_id {
        return Err(PlatformError::InvalidInput(format!(
            "tenant '{slug}' is already {} on server '{}'; name another --to-tier or --to-server",
            from_tier.as_str(),
            placement.db_server
        )));
    }
    let latest = portico_provisioning::migrations::latest_version();
    if t.schema_version != Some(latest) {
        return Err(PlatformError::InvalidState(format!(
            "tenant '{slug}' is at schema version {}, this binary's is {latest}; run `portico tenant migrate {slug}` first",
            t.schema_version.map_or("none".into(), |v| v.to_string())
        )));
    }
    // Both servers must be reachable and let the admin copy with triggers off.
    for (id, name) in [
        (placement.db_server_id, placement.db_server.as_str()),
        (to_server.id, to_server.name.as_str()),
    ] {
        let server = db_servers::connect_id(platform, id, name).await?;
        let admin = server.admin().await?;
        if !pgmove::can_copy(&admin).await? {
            return Err(PlatformError::InvalidState(format!(
                "the admin of database server '{name}' may not set session_replication_role (needed to copy a tenant); use a superuser or grant it SET on that parameter"
            )));
        }
    }
    let run = RunId::random();
    let request = serde_json::to_value(&req)
        .map_err(|e| PlatformError::InvalidState(format!("cannot record the request: {e}")))?;
    let to_database = match to_tier {
        Tier::Dedicated => TenantDbNames::for_tenant(tenant).database,
        Tier::Pooled => String::new(),
    };
    let mut tx = platform
        .catalog
        .pool()
        .begin()
        .await
        .map_err(|e| PlatformError::catalog("recording the move", e))?;
    let map = |e: sqlx::Error| match constraint(&e) {
        Some("provisioning_runs_one_open_move") => PlatformError::Conflict(format!(
            "another process started a move of '{slug}' just now; re-run to join it"
        )),
        _ => PlatformError::catalog("recording the move", e),
    };
    let (to_shared, to_database): (Option<Uuid>, String) = match to_tier {
        Tier::Dedicated => (None, to_database),
        Tier::Pooled => {
            let (id, name) = crate::catalog::shared_database_with_room(
                &mut tx,
                to_server.id,
                i32::try_from(platform.settings.pooled_tenants_per_database).unwrap_or(i32::MAX),
            )
            .await
            .map_err(map)?;
            (Some(id), name)
        }
    };
    sqlx::query(
        "insert into provisioning_runs (id, tenant_id, kind, status, request)
         values ($1, $2, 'move', 'running', $3)",
    )
    .bind(run.as_uuid())
    .bind(tenant.as_uuid())
    .bind(&request)
    .execute(&mut *tx)
    .await
    .map_err(map)?;
    crate::catalog::insert_steps(&mut tx, run, MOVE_STEPS)
        .await
        .map_err(map)?;
    sqlx::query(
        "insert into tenant_moves
             (run_id, tenant_id, from_tier, from_db_server_id, from_database_name,
              from_shared_database_id, to_tier, to_db_server_id, to_database_name,
              to_shared_database_id)
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(run.as_uuid())
    .bind(tenant.as_uuid())
    .bind(from_tier.as_str())
    .bind(placement.db_server_id)
    .bind(&placement.database_name)
    .bind(placement.shared_database_id)
    .bind(to_tier.as_str())
    .bind(to_server.id)
    .bind(&to_database)
    .bind(to_shared)
    .execute(&mut *tx)
    .await
    .map_err(map)?;
    tx.commit().await.map_err(map)?;
    tracing::info!(tenant_id = %tenant, run_id = %run, from = from_tier.as_str(), to = to_tier.as_str(), "move recorded");
    Ok(StartedMove { tenant, run, slug })
}

/// Runs (or re-runs) the steps of a recorded move under the tenant's lock.
#[tracing::instrument(name = "finish_move", skip_all, fields(tenant_id = %started.tenant, run_id = %started.run))]
pub async fn finish_move(platform: &Platform, started: &StartedMove) -> Result<MoveView> {
    let lock = platform
        .catalog
        .lock_tenant(started.tenant, LOCK_WAIT)
        .await?;
    let outcome = Box::pin(run_move(platform, started.run.as_uuid())).await;
    lock.release().await;
    outcome?;
    move_by_run(platform, started.run.as_uuid())
        .await?
        .map(MoveRow::view)
        .ok_or_else(|| PlatformError::InvalidState("the move's record is gone".into()))
}

async fn run_move(platform: &Platform, run: Uuid) -> Result<()> {
    let m = move_by_run(platform, run)
        .await?
        .ok_or_else(|| PlatformError::InvalidState("the move's record is gone".into()))?;
    match m.status.as_str() {
        "succeeded" | "rolled_back" => return Ok(()),
        "rolling_back" => {
            return Err(PlatformError::InvalidState(format!(
                "the move of '{}' is being undone; finish that with `portico tenant move --rollback {}`",
                m.slug, m.slug
            )));
        }
        _ => {}
    }
    let ctx = MoveCtx::new(platform, &m).await?;
    if !m.switched {
        ctx.step("prepare", || ctx.prepare()).await?;
        ctx.step("freeze", || ctx.freeze()).await?;
        ctx.step("copy", || ctx.copy()).await?;
        ctx.step("switch", || ctx.switch()).await?;
    }
    ctx.step("cleanup", || ctx.cleanup()).await?;
    sqlx::query(
        "update provisioning_runs set status = 'succeeded', error = null, finished_at = now()
          where id = $1",
    )
    .bind(run)
    .execute(platform.catalog.pool())
    .await
    .map_err(|e| PlatformError::catalog("recording the finished move", e))?;
    tracing::info!(tenant_id = %m.tenant(), run_id = %run, to = %m.to_tier, "tenant moved");
    Ok(())
}

/// What the steps of one move share.
struct MoveCtx<'a> {
    platform: &'a Platform,
    m: &'a MoveRow,
    source: DbServer,
    dest: DbServer,
    names_from: TenantDbNames,
    names_to: TenantDbNames,
}

impl<'a> MoveCtx<'a> {
    async fn new(platform: &'a Platform, m: &'a MoveRow) -> Result<Self> {
        let source = db_servers::connect_id(platform, m.from_db_server_id, &m.from_server).await?;
        let dest = db_servers::connect_id(platform, m.to_db_server_id, &m.to_server).await?;
        Ok(Self {
            platform,
            m,
            source,
            dest,
            names_from: TenantDbNames {
                database: m.from_database_name.clone(),
                role: m.role_name.clone(),
            },
            names_to: TenantDbNames {
                database: m.to_database_name.clone(),
                role: m.role_name.clone(),
            },
        })
    }

    fn limits(&self) -> RoleLimits {
        RoleLimits {
            connection_limit: self.platform.settings.tenant_connection_limit,
            statement_timeout_ms: self.platform.settings.tenant_statement_timeout_ms,
        }
    }

    fn key(&self) -> Result<TenantKeyRef> {
        self.m
            .key_id
            .clone()
            .map(TenantKeyRef::new)
            .ok_or_else(|| PlatformError::InvalidState("the tenant has no key".into()))
    }

    fn to_shared(&self) -> SharedDbNames {
        SharedDbNames {
            database: self.m.to_database_name.clone(),
            pool_role: self
                .m
                .to_pool_role
                .clone()
                .unwrap_or_else(|| self.m.to_database_name.clone()),
        }
    }

    /// Runs one recorded step of the move.
    async fn step<F, Fut>(&self, name: &'static str, body: F) -> Result<()>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<()>>,
    {
        crate::tenants::recorded_step(self.platform, self.m.run(), name, false, body).await
    }

    /// The dedicated destination's role password: the recorded one, or a new one recorded
    /// (encrypted under the tenant key) before the role gets it.
    async fn dedicated_password(&self) -> Result<SecretString> {
        let key = self.key()?;
        let tenant = self.m.tenant();
        let recorded = match self.m.to_role_password_ciphertext.clone() {
            Some(c) => c,
            None => {
                let fresh = database::generate_password();
                let ciphertext = self
                    .platform
                    .keyring
                    .encrypt_for_tenant(tenant, &key, fresh.expose_secret().as_bytes())
                    .await?;
                sqlx::query_scalar(
                    "update tenant_moves
                        set to_role_password_ciphertext = coalesce(to_role_password_ciphertext, $2)
                      where run_id = $1 returning to_role_password_ciphertext",
                )
                .bind(self.m.run_id)
                .bind(&ciphertext)
                .fetch_one(self.platform.catalog.pool())
                .await
                .map_err(|e| PlatformError::catalog("recording the role password", e))?
            }
        };
        let plain = self
            .platform
            .keyring
            .decrypt_for_tenant(tenant, &key, &recorded)
            .await?;
        String::from_utf8(plain)
            .map(SecretString::from)
            .map_err(|_| PlatformError::InvalidState("stored role password is not UTF-8".into()))
    }

    /// `prepare`: the destination, empty but complete, at the newest migration.
    async fn prepare(&self) -> Result<()> {
        let (dest, names) = (&self.dest, &self.names_to);
        let admin = dest.admin().await?;
        match self.m.to_shared_database_id {
            None => {
                let password = self.dedicated_password().await?;
                // On the source's server this turns the pooled tenant's NOLOGIN role into a
                // login role; the pool keeps its membership until the cleanup.
                database::ensure_role(&admin, names, &password, self.limits()).await?;
                let template = database::ensure_template(dest, &admin).await?;
                database::ensure_database(&admin, names, &template).await?;
                database::hand_over(&admin, names).await?;
                // Proof that the role can log in there.
                dest.connect_as(&names.database, &names.role, password.expose_secret())
                    .await?;
            }
            Some(shared) => {
                let shared_names = self.to_shared();
                let password = pool_password(
                    self.platform,
                    shared,
                    self.m.to_pool_password_ciphertext.clone(),
                )
                .await?;
                let limits =
                    pool_limits(self.platform, self.m.to_db_server_id, self.limits()).await?;
                pooled::ensure_shared_database(dest, &admin, &shared_names, &password, limits)
                    .await?;
                // Not `ensure_tenant_role`: on the source's server the role may still be the
                // dedicated source's login role.
                pgmove::grant_to_pool(&admin, &shared_names.pool_role, &names.role).await?;
                pooled::ensure_tenant_schema(dest, &shared_names, names).await?;
                // Proof that the pool role reaches the schema in the tenant's context.
                let profile = TenantProfile {
                    tenant_id: self.m.tenant(),
                    slug: self.m.slug.clone(),
                    display_name: self.m.display_name.clone(),
                };
                pooled::verify_and_seed(dest, &shared_names, &password, names, &profile).await?;
            }
        }
        Ok(())
    }

    /// `freeze`: writes refused by every instance (catalog flag) and by PostgreSQL (privileges
    /// revoked once running writes are done); reads go on from the source.
    async fn freeze(&self) -> Result<()> {
        sqlx::query(
            "with t as (update tenants set write_frozen = true, updated_at = now() where id = $2)
             update tenant_moves set frozen_at = coalesce(frozen_at, now()) where run_id = $1",
        )
        .bind(self.m.run_id)
        .bind(self.m.tenant_id)
        .execute(self.platform.catalog.pool())
        .await
        .map_err(|e| PlatformError::catalog("recording the write freeze", e))?;
        let mut client = self.source.admin_in(&self.names_from.database).await?;
        let run = self.m.run_id;
        let catalog = self.platform.catalog.pool();
        pgmove::freeze(
            &mut client,
            &self.m.src_target(),
            FREEZE_LOCK_WAIT_MS,
            |found| async move {
                let recorded: sqlx::types::Json<Vec<WriteGrant>> = sqlx::query_scalar(
                    "update tenant_moves set frozen_grants = coalesce(frozen_grants, $2)
                      where run_id = $1 returning frozen_grants",
                )
                .bind(run)
                .bind(sqlx::types::Json(&found))
                .fetch_one(catalog)
                .await
                .map_err(|e| PlatformError::catalog("recording the frozen privileges", e))?;
                Ok::<_, PlatformError>(recorded.0)
            },
        )
        .await?;
        Ok(())
    }

    /// `copy`: the whole tenant into the (emptied) destination, verified before it commits.
    async fn copy(&self) -> Result<()> {
        let mut src = self.source.admin_in(&self.names_from.database).await?;
        let mut dst = self.dest.admin_in(&self.names_to.database).await?;
        let report = pgmove::copy_tenant(
            &mut src,
            &self.m.src_target(),
            &mut dst,
            &self.m.dst_target(),
        )
        .await?;
        sqlx::query("update tenant_moves set rows_copied = $2 where run_id = $1")
            .bind(self.m.run_id)
            .bind(report.rows)
            .execute(self.platform.catalog.pool())
            .await
            .map_err(|e| PlatformError::catalog("recording the copy", e))?;
        tracing::info!(tenant_id = %self.m.tenant(), tables = report.tables, rows = report.rows, sequences = report.sequences, "tenant copied and verified");
        Ok(())
    }

    /// `switch`: one catalog transaction points the tenant at the destination and lifts the
    /// freeze; the catalog notification tells every instance.
    async fn switch(&self) -> Result<()> {
        let schema = self
            .m
            .to_shared_database_id
            .map(|_| self.m.role_name.clone());
        sqlx::query(
            "with p as (
               update tenant_placements
                  set db_server_id = $3, database_name = $4, shared_database_id = $5,
                      schema_name = $6,
                      role_password_ciphertext =
                        (select to_role_password_ciphertext from tenant_moves where run_id = $1)
                where tenant_id = $2),
             t as (
               update tenants set tier = $7, write_frozen = false, updated_at = now()
                where id = $2)
             update tenant_moves set switched_at = coalesce(switched_at, now()) where run_id = $1",
        )
        .bind(self.m.run_id)
        .bind(self.m.tenant_id)
        .bind(self.m.to_db_server_id)
        .bind(&self.m.to_database_name)
        .bind(self.m.to_shared_database_id)
        .bind(schema)
        .bind(&self.m.to_tier)
        .execute(self.platform.catalog.pool())
        .await
        .map_err(|e| PlatformError::catalog("switching the tenant's placement", e))?;
        Ok(())
    }

    /// `cleanup`: once requests still running on the source (on instances that had not yet
    /// heard of the switch) have had `move_drain` to finish, the source goes.
    async fn cleanup(&self) -> Result<()> {
        let remaining_ms: i64 = sqlx::query_scalar(
            "select greatest(0, extract(epoch from
                      (switched_at + make_interval(secs => $2::float8 / 1000) - now())) * 1000)::int8
               from tenant_moves where run_id = $1",
        )
        .bind(self.m.run_id)
        .bind(
            i64::try_from(self.platform.settings.move_drain.as_millis()).unwrap_or(i64::MAX)
                as f64,
        )
        .fetch_one(self.platform.catalog.pool())
        .await
        .map_err(|e| PlatformError::catalog("reading the switch time", e))?;
        if remaining_ms > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(
                remaining_ms.unsigned_abs(),
            ))
            .await;
        }
        let admin = self.source.admin().await?;
        let names = &self.names_from;
        let role_stays = self.m.same_server();
        match self.m.from_pool_role.as_deref() {
            Some(pool_role) => {
                let inside = self.source.admin_in(&names.database).await?;
                pgmove::drop_schemas(&inside, &self.m.src_target()).await?;
                if role_stays {
                    pgmove::revoke_from_pool(&admin, pool_role, &names.role).await?;
                } else {
                    database::drop_role(&admin, names).await?;
                }
            }
            None => {
                database::drop_database(&admin, names).await?;
                if role_stays {
                    pgmove::disable_login(&admin, &names.role).await?;
                } else {
                    database::drop_role(&admin, names).await?;
                }
            }
        }
        Ok(())
    }

    /// Undo (before the switch): privileges back, freeze lifted, destination dropped.
    async fn undo(&self) -> Result<()> {
        if let Some(grants) = &self.m.frozen_grants {
            let client = self.source.admin_in(&self.names_from.database).await?;
            pgmove::unfreeze(&client, &self.m.src_target(), &grants.0).await?;
        }
        sqlx::query("update tenants set write_frozen = false, updated_at = now() where id = $1")
            .bind(self.m.tenant_id)
            .execute(self.platform.catalog.pool())
            .await
            .map_err(|e| PlatformError::catalog("lifting the write freeze", e))?;
        checkpoint("undo:unfrozen");
        let admin = self.dest.admin().await?;
        let names = &self.names_to;
        let role_stays = self.m.same_server();
        match self.m.to_shared_database_id {
            Some(_) => {
                let shared = self.to_shared();
                let exists: bool = admin
                    .query_one(
                        "select exists (select 1 from pg_database where datname = $1)",
                        &[&shared.database],
                    )
                    .await
                    .map_err(|e| {
                        PlatformError::InvalidState(format!(
                            "cannot look up the shared database: {e}"
                        ))
                    })?
                    .get(0);
                if exists {
                    let inside = self.dest.admin_in(&shared.database).await?;
                    pgmove::drop_schemas(&inside, &self.m.dst_target()).await?;
                }
                if role_stays {
                    pgmove::revoke_from_pool(&admin, &shared.pool_role, &names.role).await?;
                } else {
                    database::drop_role(&admin, names).await?;
                }
            }
            None => {
                database::end_stale_sessions(&admin, names).await?;
                database::drop_database(&admin, names).await?;
                if role_stays {
                    // Back to the pooled tenant's NOLOGIN role.
                    pgmove::disable_login(&admin, &names.role).await?;
                } else {
                    database::drop_role(&admin, names).await?;
                }
            }
        }
        checkpoint("undo:destination");
        Ok(())
    }
}

/// Undoes the tenant's unfinished move (refused once it has switched: then only finishing it
/// is possible).
pub async fn rollback_move(platform: &Platform, slug: &Slug) -> Result<MoveView> {
    let t = tenant_row(platform, slug.as_str()).await?;
    let tenant = t.tenant_id();
    let lock = platform.catalog.lock_tenant(tenant, LOCK_WAIT).await?;
    let outcome = async {
        let m = open_move(platform, tenant).await?.ok_or_else(|| {
            PlatformError::InvalidState(format!("tenant '{slug}' has no unfinished move"))
        })?;
        if m.switched {
            return Err(PlatformError::InvalidState(format!(
                "the move of '{slug}' has switched to the destination already; finish it with `portico tenant move {slug}`"
            )));
        }
        sqlx::query(
            "update provisioning_runs set status = 'rolling_back', error = null where id = $1",
        )
        .bind(m.run_id)
        .execute(platform.catalog.pool())
        .await
        .map_err(|e| PlatformError::catalog("recording the undo", e))?;
        let ctx = MoveCtx::new(platform, &m).await?;
        ctx.undo().await?;
        sqlx::query(
            "update provisioning_runs set status = 'rolled_back', error = null, finished_at = now()
              where id = $1",
        )
        .bind(m.run_id)
        .execute(platform.catalog.pool())
        .await
        .map_err(|e| PlatformError::catalog("recording the undo", e))?;
        tracing::info!(tenant_id = %tenant, run_id = %m.run_id, "move undone");
        Ok(m.run_id)
    }
    .await;
    lock.release().await;
    let run = outcome?;
    move_by_run(platform, run)
        .await?
        .map(MoveRow::view)
        .ok_or_else(|| PlatformError::InvalidState("the move's record is gone".into()))
}
