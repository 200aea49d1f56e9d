//! Schema migrations across the fleet: `portico tenant migrate` (one tenant) and `portico fleet
//! migrate` (every tenant, in waves), both recorded in the catalog's ledger
//! (`migration_runs`, `migration_run_tenants`).
//!
//! A fleet run takes the catalog's fleet lock (one run at a time; a second is refused, naming
//! the first), plans its tenants (a canary wave, then everyone else) and records the plan before
//! touching any tenant, so a run killed at any point is resumed by the same command: tenants
//! already done are not touched again, interrupted ones are finished. Tenants are migrated
//! `concurrency` at a time, no database server taking more than its share. Each tenant's
//! migrations run as its server's admin, one transaction per migration (see
//! `portico_provisioning::migrations`); a failure rolls that migration back and is recorded,
//! and the run stops once failures exceed the budget. An unreachable server fails its tenants
//! fast, without spending the budget, and the others go on.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use portico_provisioning::ProvisionError;
use portico_provisioning::migrations::{self, LockPolicy, MigrateError, Migration};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::context::Platform;
use crate::db_servers;
use crate::error::{PlatformError, Result};

/// The catalog advisory-lock key of fleet runs ("portico" and 1).
const FLEET_LOCK: i64 = 0x706f_7274_6963_6f01;

/// What `fleet migrate` was asked for (kept with the run, so a resume does the same).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FleetOptions {
    /// Only tenants on this database server.
    pub server: Option<String>,
    /// Tenants migrated at once (in all).
    pub concurrency: usize,
    /// Tenants in the canary wave, besides those flagged as canaries.
    pub canary: usize,
    /// Failed tenants tolerated before the run stops.
    pub max_failures: usize,
}

impl Default for FleetOptions {
    fn default() -> Self {
        Self {
            server: None,
            concurrency: 4,
            canary: 0,
            max_failures: 0,
        }
    }
}

/// One tenant's result in a run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TenantResult {
    pub tenant_id: Uuid,
    pub slug: String,
    pub server: String,
    /// 0: the canary wave; 1: everyone else.
    pub wave: i32,
    /// `pending`, `running`, `succeeded`, `failed` or `skipped`.
    pub state: String,
    pub version_before: Option<i32>,
    pub version_after: Option<i32>,
    pub attempts: i32,
    pub duration_ms: Option<i64>,
    pub error: Option<String>,
}

/// What a run did, as `--json` prints it last and `fleet run show` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunSummary {
    pub run_id: Uuid,
    pub kind: String,
    /// `running`, `stopped`, `succeeded` or `failed`.
    pub status: String,
    pub target_version: i32,
    pub options: FleetOptions,
    pub started_by: String,
    pub error: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub finished_at: Option<OffsetDateTime>,
    pub tenants: i64,
    pub succeeded: i64,
    pub failed: i64,
    pub skipped: i64,
    pub pending: i64,
}

/// What a `fleet migrate` call printed at the end: the run (absent when nothing needed
/// migrating), whether it resumed an interrupted run, and how many tenants were already current.
#[derive(Debug, Clone, Serialize)]
pub struct FleetOutcome {
    pub run: Option<RunSummary>,
    pub resumed: bool,
    pub up_to_date: usize,
    pub dry_run: bool,
    /// With `--dry-run`: the plan.
    pub plan: Vec<TenantResult>,
}

/// Where progress goes (the CLI's progress bar or JSON lines; the API's log).
pub trait Progress: Send + Sync {
    /// The run is about to work on `todo` tenants, `done` of `total` being done already.
    fn started(&self, _run: Uuid, _total: u64, _done: u64) {}
    fn result(&self, _r: &TenantResult) {}
}

/// Progress nobody watches.
pub struct Quiet;
impl Progress for Quiet {}

/// Asks a run to stop scheduling tenants (Ctrl-C): in-flight tenants finish, the rest stay
/// pending and the run is recorded as stopped.
#[derive(Clone, Default)]
pub struct StopSignal(Arc<AtomicBool>);

impl StopSignal {
    pub fn stop(&self) {
        self.0.store(true, Ordering::Release);
    }

    fn is_set(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// The migration set and lock policy a run applies (the shipped migrations in production; the
/// tests and benchmarks build other situations with other sets).
#[derive(Clone)]
pub struct MigrationSet {
    pub migrations: Arc<Vec<Migration>>,
    pub policy: LockPolicy,
}

impl Default for MigrationSet {
    fn default() -> Self {
        Self {
            migrations: Arc::new(migrations::shipped()),
            policy: LockPolicy::default(),
        }
    }
}

impl MigrationSet {
    pub fn target(&self) -> i32 {
        self.migrations
            .last()
            .map_or(0, |m| i32::try_from(m.version()).unwrap_or(i32::MAX))
    }
}

/// A tenant as a run sees it.
#[derive(Debug, Clone, sqlx::FromRow)]
struct Candidate {
    tenant_id: Uuid,
    slug: String,
    status: String,
    schema_version: Option<i32>,
    canary: bool,
    server_id: Uuid,
    server: String,
    database_name: String,
    role_name: String,
    schema_name: Option<String>,
    wave: i32,
}

const CANDIDATES: &str = "select t.id as tenant_id, t.slug, t.status, t.schema_version, t.canary,
            s.id as server_id, s.name as server, p.database_name, p.role_name, p.schema_name,
            1 as wave
       from tenants t
       join tenant_placements p on p.tenant_id = t.id
       join db_servers s on s.id = p.db_server_id";

/// `portico tenant migrate <slug>`: brings one tenant to the newest schema, recorded as a run
/// of kind `tenant`.
pub async fn migrate_tenant(
    p: &Platform,
    slug: &str,
    set: &MigrationSet,
    started_by: &str,
) -> Result<(RunSummary, TenantResult)> {
    let c: Option<Candidate> = sqlx::query_as(&format!("{CANDIDATES} where t.slug = $1"))
        .bind(slug)
        .fetch_optional(p.catalog.pool())
        .await
        .map_err(|e| PlatformError::catalog("looking up the tenant", e))?;
    let c = match c {
        Some(c) if matches!(c.status.as_str(), "active" | "suspended") => c,
        Some(c) if c.status == "provisioning" => {
            return Err(PlatformError::InvalidState(format!(
                "tenant '{slug}' is still being provisioned; finish its create (`portico tenant create {slug}`) or roll it back first"
            )));
        }
        _ => return Err(PlatformError::TenantNotFound(slug.to_owned())),
    };
    // One single-tenant run of a tenant at a time; a run still marked running now was
    // interrupted (its process held this lock until it died).
    let lock = p
        .catalog
        .lock_tenant(
            portico_core::TenantId::from_uuid(c.tenant_id),
            Duration::from_secs(30),
        )
        .await?;
    let outcome = migrate_tenant_locked(p, c, set, started_by).await;
    lock.release().await;
    outcome
}

async fn migrate_tenant_locked(
    p: &Platform,
    c: Candidate,
    set: &MigrationSet,
    started_by: &str,
) -> Result<(RunSummary, TenantResult)> {
    sqlx::query(
        "update migration_runs set status = 'stopped', finished_at = now(),
                error = 'interrupted before it finished'
          where kind = 'tenant' and status = 'running'
            and id in (select run_id from migration_run_tenants where tenant_id = $1)",
    )
    .bind(c.tenant_id)
    .execute(p.catalog.pool())
    .await
    .map_err(|e| PlatformError::catalog("closing an interrupted run", e))?;
    let run = Uuid::new_v4();
    let options = FleetOptions {
        concurrency: 1,
        ..FleetOptions::default()
    };
    create_run(
        p,
        run,
        "tenant",
        set.target(),
        &options,
        started_by,
        &[c],
        &[],
    )
    .await?;
    let result = execute(p, run, set, &options, &Quiet, &StopSignal::default()).await?;
    audit(p, started_by, "tenant.migrate", &result).await;
    let mut rows = tenant_results(p, run).await?;
    let row = rows.pop().ok_or_else(|| {
        PlatformError::InvalidState("the run recorded no result for the tenant".into())
    })?;
    Ok((result, row))
}

/// Marks a tenant as a canary (first wave of every fleet run), or not.
pub async fn set_canary(p: &Platform, slug: &str, on: bool) -> Result<()> {
    let n = sqlx::query("update tenants set canary = $2 where slug = $1 and status <> 'deleted'")
        .bind(slug)
        .bind(on)
        .execute(p.catalog.pool())
        .await
        .map_err(|e| PlatformError::catalog("marking a canary", e))?
        .rows_affected();
    if n == 0 {
        return Err(PlatformError::TenantNotFound(slug.to_owned()));
    }
    Ok(())
}

/// `portico fleet migrate`: resumes this release's interrupted run if there is one, else plans
/// and runs a new one.
pub async fn migrate_fleet(
    p: &Platform,
    options: FleetOptions,
    dry_run: bool,
    set: &MigrationSet,
    started_by: &str,
    progress: &dyn Progress,
    stop: &StopSignal,
) -> Result<FleetOutcome> {
    start_fleet(p, options, dry_run, set, started_by)
        .await?
        .finish(p, set, progress, stop)
        .await
}

/// A fleet run planned and recorded (or resumed), holding the fleet lock until it is finished.
pub struct StartedFleet {
    lock: crate::catalog::AdvisoryLock,
    /// The run to execute (none: nothing to do, or a dry run).
    pub run: Option<Uuid>,
    pub resumed: bool,
    pub up_to_date: usize,
    pub dry_run: bool,
    pub plan: Vec<TenantResult>,
    options: FleetOptions,
}

impl StartedFleet {
    /// Works through the run (if any), then releases the fleet lock.
    pub async fn finish(
        self,
        p: &Platform,
        set: &MigrationSet,
        progress: &dyn Progress,
        stop: &StopSignal,
    ) -> Result<FleetOutcome> {
        let summary = match self.run {
            Some(run) => Some(execute(p, run, set, &self.options, progress, stop).await),
            None => None,
        };
        self.lock.release().await;
        if let Some(Ok(s)) = &summary {
            audit(p, &s.started_by, "fleet.run.finished", s).await;
        }
        Ok(FleetOutcome {
            run: summary.transpose()?,
            resumed: self.resumed,
            up_to_date: self.up_to_date,
            dry_run: self.dry_run,
            plan: self.plan,
        })
    }
}

/// Takes the fleet lock (refusing, with the open run named, when another run holds it), then
/// resumes this release's interrupted run or plans and records a new one.
pub async fn start_fleet(
    p: &Platform,
    options: FleetOptions,
    dry_run: bool,
    set: &MigrationSet,
    started_by: &str,
) -> Result<StartedFleet> {
    if options.concurrency == 0 {
        return Err(PlatformError::InvalidInput(
            "--concurrency must be at least 1".into(),
        ));
    }
    if let Some(name) = &options.server {
        let name = portico_core::DbServerName::parse(name)?;
        if p.catalog.db_server_by_name(&name).await?.is_none() {
            return Err(PlatformError::ServerNotFound(name.as_str().to_owned()));
        }
    }
    let Some(lock) = p.catalog.try_lock(FLEET_LOCK).await? else {
        let open = open_run(p).await?;
        return Err(PlatformError::Conflict(match open {
            Some(r) => format!(
                "fleet run {} is in progress (started {} by {}); wait for it to finish or stop it",
                r.run_id, r.started_at, r.started_by
            ),
            None => "another fleet run is starting; try again when it is done".into(),
        }));
    };
    let mut started = StartedFleet {
        lock,
        run: None,
        resumed: false,
        up_to_date: 0,
        dry_run,
        plan: Vec::new(),
        options: options.clone(),
    };
    match plan_fleet(p, options, dry_run, set, started_by, &mut started).await {
        Ok(()) => Ok(started),
        Err(e) => {
            started.lock.release().await;
            Err(e)
        }
    }
}

async fn plan_fleet(
    p: &Platform,
    options: FleetOptions,
    dry_run: bool,
    set: &MigrationSet,
    started_by: &str,
    started: &mut StartedFleet,
) -> Result<()> {
    let target = set.target();
    // An interrupted run (killed, stopped by Ctrl-C or by its failure budget) of this release
    // is resumed with the options it was started with; one of another release is closed, its
    // tenants planned afresh.
    if let Some(open) = open_run(p).await? {
        if open.target_version == target && !dry_run {
            sqlx::query(
                "update migration_run_tenants set state = 'pending'
                  where run_id = $1 and state in ('running', 'failed')",
            )
            .bind(open.run_id)
            .execute(p.catalog.pool())
            .await
            .map_err(|e| PlatformError::catalog("resuming the run", e))?;
            sqlx::query("update migration_runs set status = 'running', finished_at = null, error = null where id = $1")
                .bind(open.run_id)
                .execute(p.catalog.pool())
                .await
                .map_err(|e| PlatformError::catalog("resuming the run", e))?;
            started.run = Some(open.run_id);
            started.resumed = true;
            started.options = open.options;
            return Ok(());
        }
        if open.target_version != target {
            finish_run(
                p,
                open.run_id,
                "stopped",
                Some("superseded by a run of another release"),
            )
            .await?;
        }
    }
    let all: Vec<Candidate> = sqlx::query_as(&format!(
        "{CANDIDATES} where t.status in ('active', 'suspended', 'provisioning')
            and ($1::text is null or s.name = $1)
          order by t.id"
    ))
    .bind(options.server.as_deref())
    .fetch_all(p.catalog.pool())
    .await
    .map_err(|e| PlatformError::catalog("listing tenants", e))?;
    let behind = |c: &Candidate| c.schema_version.unwrap_or(0) < target;
    started.up_to_date = all.iter().filter(|c| !behind(c)).count();
    let (provisioning, mut todo): (Vec<Candidate>, Vec<Candidate>) = all
        .into_iter()
        .filter(behind)
        .partition(|c| c.status == "provisioning");
    // The canary wave: flagged tenants, then the first `canary` others (by id: stable).
    let mut extra = options.canary;
    for c in &mut todo {
        if c.canary {
            c.wave = 0;
        } else if extra > 0 {
            c.wave = 0;
            extra -= 1;
        }
    }
    todo.sort_by_key(|c| c.wave);
    if dry_run {
        started.plan = todo
            .iter()
            .map(|c| planned(c, "pending", None))
            .chain(
                provisioning
                    .iter()
                    .map(|c| planned(c, "skipped", Some(SKIP_PROVISIONING))),
            )
            .collect();
        return Ok(());
    }
    if todo.is_empty() && provisioning.is_empty() {
        return Ok(());
    }
    let run = Uuid::new_v4();
    create_run(
        p,
        run,
        "fleet",
        target,
        &options,
        started_by,
        &todo,
        &provisioning,
    )
    .await?;
    started.run = Some(run);
    Ok(())
}

/// Records a finished run in the operator audit trail (its request id is the run id). A failure
/// to write it is logged, not fatal: the run itself is in the ledger.
async fn audit(p: &Platform, actor: &str, action: &str, run: &RunSummary) {
    let request_id = run.run_id.to_string();
    let outcome = if run.status == "succeeded" {
        "succeeded"
    } else {
        "failed"
    };
    let entry = crate::operators::AuditEntry {
        actor,
        action,
        target: None,
        outcome,
        client_ip: None,
        request_id: &request_id,
        detail: Some(serde_json::json!({
            "run_id": run.run_id, "status": run.status, "target_version": run.target_version,
            "succeeded": run.succeeded, "failed": run.failed, "skipped": run.skipped,
            "pending": run.pending,
        })),
    };
    if let Err(e) = p.catalog.audit(entry).await {
        tracing::warn!(run_id = %run.run_id, error = %e, "could not record the run in the operator audit");
    }
}

const SKIP_PROVISIONING: &str = "the tenant is still being provisioned";

fn planned(c: &Candidate, state: &str, error: Option<&str>) -> TenantResult {
    TenantResult {
        tenant_id: c.tenant_id,
        slug: c.slug.clone(),
        server: c.server.clone(),
        wave: c.wave,
        state: state.into(),
        version_before: c.schema_version,
        version_after: None,
        attempts: 0,
        duration_ms: None,
        error: error.map(str::to_owned),
    }
}

#[allow(clippy::too_many_arguments)]
async fn create_run(
    p: &Platform,
    run: Uuid,
    kind: &str,
    target: i32,
    options: &FleetOptions,
    started_by: &str,
    todo: &[Candidate],
    skipped: &[Candidate],
) -> Result<()> {
    let options_json = serde_json::to_value(options)
        .map_err(|e| PlatformError::InvalidState(format!("run options: {e}")))?;
    let mut tx = p
        .catalog
        .pool()
        .begin()
        .await
        .map_err(|e| PlatformError::catalog("recording the run", e))?;
    let inserted = sqlx::query(
        "insert into migration_runs (id, kind, status, target_version, options, started_by)
         values ($1, $2, 'running', $3, $4, $5)",
    )
    .bind(run)
    .bind(kind)
    .bind(target)
    .bind(options_json)
    .bind(started_by)
    .execute(&mut *tx)
    .await;
    if let Err(e) = inserted {
        return Err(match crate::catalog::constraint(&e) {
            Some("migration_runs_one_open_fleet") => PlatformError::Busy(
                "another fleet run is in progress; see `portico fleet runs`".into(),
            ),
            _ => PlatformError::catalog("recording the run", e),
        });
    }
    let ids: Vec<Uuid> = todo.iter().map(|c| c.tenant_id).collect();
    let waves: Vec<i32> = todo.iter().map(|c| c.wave).collect();
    let versions: Vec<Option<i32>> = todo.iter().map(|c| c.schema_version).collect();
    sqlx::query(
        "insert into migration_run_tenants (run_id, tenant_id, wave, state, version_before)
         select $1, t, w, 'pending', v from unnest($2::uuid[], $3::int4[], $4::int4[]) as x(t, w, v)",
    )
    .bind(run)
    .bind(&ids)
    .bind(&waves)
    .bind(&versions)
    .execute(&mut *tx)
    .await
    .map_err(|e| PlatformError::catalog("recording the run's tenants", e))?;
    let skipped_ids: Vec<Uuid> = skipped.iter().map(|c| c.tenant_id).collect();
    sqlx::query(
        "insert into migration_run_tenants (run_id, tenant_id, wave, state, error, finished_at)
         select $1, t, 1, 'skipped', $3, now() from unnest($2::uuid[]) as t",
    )
    .bind(run)
    .bind(&skipped_ids)
    .bind(SKIP_PROVISIONING)
    .execute(&mut *tx)
    .await
    .map_err(|e| PlatformError::catalog("recording the run's tenants", e))?;
    tx.commit()
        .await
        .map_err(|e| PlatformError::catalog("recording the run", e))
}

/// Works through a recorded run's pending tenants, wave by wave.
async fn execute(
    p: &Platform,
    run: Uuid,
    set: &MigrationSet,
    options: &FleetOptions,
    progress: &dyn Progress,
    stop: &StopSignal,
) -> Result<RunSummary> {
    let todo: Vec<Candidate> = sqlx::query_as(
        "select t.id as tenant_id, t.slug, t.status, t.schema_version, t.canary,
                s.id as server_id, s.name as server, p.database_name, p.role_name, p.schema_name,
                r.wave
           from migration_run_tenants r
           join tenants t on t.id = r.tenant_id
           join tenant_placements p on p.tenant_id = t.id
           join db_servers s on s.id = p.db_server_id
          where r.run_id = $1 and r.state = 'pending'
          order by r.wave, t.id",
    )
    .bind(run)
    .fetch_all(p.catalog.pool())
    .await
    .map_err(|e| PlatformError::catalog("reading the run's tenants", e))?;
    let total: i64 =
        sqlx::query_scalar("select count(*) from migration_run_tenants where run_id = $1")
            .bind(run)
            .fetch_one(p.catalog.pool())
            .await
            .map_err(|e| PlatformError::catalog("reading the run", e))?;
    progress.started(
        run,
        u64::try_from(total).unwrap_or(0),
        u64::try_from(total).unwrap_or(0) - todo.len() as u64,
    );
    let servers: Vec<Uuid> = {
        let mut s: Vec<Uuid> = todo.iter().map(|c| c.server_id).collect();
        s.sort();
        s.dedup();
        s
    };
    // Each server's share of the concurrency (at least one).
    let share = options.concurrency.div_ceil(servers.len().max(1)).max(1);
    let down: std::sync::Mutex<HashMap<Uuid, String>> = Default::default();
    let mut failures = 0usize;
    let mut stopped: Option<String> = None;
    for wave in [0, 1] {
        let mut queue: std::collections::VecDeque<Candidate> =
            interleave(todo.iter().filter(|c| c.wave == wave).cloned().collect()).into();
        let mut busy: HashMap<Uuid, usize> = HashMap::new();
        let mut inflight = futures_util::stream::FuturesUnordered::new();
        let mut wave_failures = 0usize;
        loop {
            while stopped.is_none() && !stop.is_set() && inflight.len() < options.concurrency {
                let Some(i) = queue
                    .iter()
                    .position(|c| busy.get(&c.server_id).copied().unwrap_or(0) < share)
                else {
                    break;
                };
                let Some(c) = queue.remove(i) else { break };
                *busy.entry(c.server_id).or_default() += 1;
                let down = &down;
                inflight.push(async move {
                    let r = migrate_recorded(p, run, &c, set, down).await;
                    (c.server_id, r)
                });
            }
            let Some((server, r)) = futures_util::StreamExt::next(&mut inflight).await else {
                break;
            };
            if let Some(n) = busy.get_mut(&server) {
                *n = n.saturating_sub(1);
            }
            let (r, budget) = r?;
            if r.state == "failed" && budget {
                failures += 1;
                wave_failures += 1;
            }
            progress.result(&r);
            if failures > options.max_failures && stopped.is_none() {
                stopped = Some(format!(
                    "stopped after {failures} failed tenant(s) (--max-failures {})",
                    options.max_failures
                ));
            }
        }
        if wave == 0 && wave_failures > 0 && stopped.is_none() {
            stopped = Some(format!(
                "stopped after the canary wave: {wave_failures} canary tenant(s) failed"
            ));
        }
        if stopped.is_some() || stop.is_set() {
            break;
        }
    }
    let counts = run_counts(p, run).await?;
    let (status, error) = if let Some(reason) = stopped {
        ("stopped", Some(reason))
    } else if stop.is_set() && counts.pending > 0 {
        (
            "stopped",
            Some("interrupted; run the same command to resume".to_owned()),
        )
    } else if counts.failed > 0 {
        (
            "failed",
            Some(format!("{} tenant(s) failed", counts.failed)),
        )
    } else {
        ("succeeded", None)
    };
    finish_run(p, run, status, error.as_deref()).await?;
    run_summary(p, run)
        .await?
        .ok_or_else(|| PlatformError::InvalidState("the run disappeared".into()))
}

/// Round-robin over servers, so every server makes progress from the start.
fn interleave(tenants: Vec<Candidate>) -> Vec<Candidate> {
    let mut by_server: BTreeMap<Uuid, std::collections::VecDeque<Candidate>> = BTreeMap::new();
    for c in tenants {
        by_server.entry(c.server_id).or_default().push_back(c);
    }
    let mut out = Vec::new();
    loop {
        let mut any = false;
        for q in by_server.values_mut() {
            if let Some(c) = q.pop_front() {
                out.push(c);
                any = true;
            }
        }
        if !any {
            return out;
        }
    }
}

/// Migrates one tenant and records the result. Returns the result and whether a failure
/// counts against the budget (an unreachable server's do not).
///
/// The ledger rows are committed asynchronously (the catalog's journal pool): a record lost in
/// a crash of the catalog server only makes a resumed run look at that tenant again, and the
/// tenant database, not the ledger, says which migrations it has. The schema version the
/// runtime routes by is committed synchronously.
async fn migrate_recorded(
    p: &Platform,
    run: Uuid,
    c: &Candidate,
    set: &MigrationSet,
    down: &std::sync::Mutex<HashMap<Uuid, String>>,
) -> Result<(TenantResult, bool)> {
    let started = Instant::now();
    sqlx::query(
        "update migration_run_tenants
            set state = 'running', attempts = attempts + 1, started_at = now()
          where run_id = $1 and tenant_id = $2",
    )
    .bind(run)
    .bind(c.tenant_id)
    .execute(p.catalog.journal())
    .await
    .map_err(|e| PlatformError::catalog("recording progress", e))?;
    let known_down = down.lock().ok().and_then(|d| d.get(&c.server_id).cloned());
    let outcome = match known_down {
        Some(reason) => Err((reason, false)),
        None => migrate_database_of(p, c, set).await,
    };
    if let (Err((reason, false)), Ok(mut d)) = (&outcome, down.lock()) {
        d.entry(c.server_id).or_insert_with(|| reason.clone());
    }
    let ms = i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX);
    let (state, before, after, attempts, error, budget) = match &outcome {
        Ok(m) => (
            "succeeded",
            Some(m.before),
            Some(m.after),
            m.attempts,
            None,
            false,
        ),
        Err((e, budget)) => (
            "failed",
            c.schema_version,
            None,
            0,
            Some(e.clone()),
            *budget,
        ),
    };
    let row: (i32, Option<i32>) = sqlx::query_as(
        "update migration_run_tenants
            set state = $3, version_before = coalesce($4, version_before), version_after = $5,
                attempts = attempts + greatest($6 - 1, 0), duration_ms = $7, error = $8,
                finished_at = now()
          where run_id = $1 and tenant_id = $2
          returning attempts, version_after",
    )
    .bind(run)
    .bind(c.tenant_id)
    .bind(state)
    .bind(before)
    .bind(after)
    .bind(i32::try_from(attempts).unwrap_or(i32::MAX))
    .bind(ms)
    .bind(error.as_deref())
    .fetch_one(p.catalog.journal())
    .await
    .map_err(|e| PlatformError::catalog("recording a tenant's result", e))?;
    if let Some(reason) = &error {
        tracing::warn!(tenant = %c.slug, server = %c.server, error = %reason, "tenant migration failed");
    }
    Ok((
        TenantResult {
            version_before: before,
            version_after: row.1,
            attempts: row.0,
            duration_ms: Some(ms),
            ..planned(c, state, error.as_deref())
        },
        budget,
    ))
}

/// Connects to the tenant's database as its server's admin and migrates it; then records the
/// new version in the catalog and, if events were carried into the audit chain, anchors it.
/// Errors: the reason, and whether it counts against the budget.
async fn migrate_database_of(
    p: &Platform,
    c: &Candidate,
    set: &MigrationSet,
) -> std::result::Result<migrations::Migrated, (String, bool)> {
    let unreachable = |e: &dyn std::fmt::Display| {
        (
            format!("database server '{}' is unreachable: {e}", c.server),
            false,
        )
    };
    let server = db_servers::connect_id(p, c.server_id, &c.server)
        .await
        .map_err(|e| (e.to_string(), true))?;
    let mut client = match server.admin_in(&c.database_name).await {
        Ok(client) => client,
        Err(e @ ProvisionError::Unreachable { .. }) => return Err(unreachable(&e)),
        Err(e) => return Err((e.to_string(), true)),
    };
    // A pooled tenant is its schema (and role) in a shared database.
    let target = match &c.schema_name {
        Some(schema) => migrations::Target::Schema {
            schema: schema.clone(),
            role: c.role_name.clone(),
        },
        None => migrations::Target::Database,
    };
    let migrated = migrations::migrate(&mut client, &target, &set.migrations, set.policy)
        .await
        .map_err(|e: MigrateError| (e.to_string(), true))?;
    drop(client);
    sqlx::query(
        "update tenants set schema_version = $2, updated_at = now()
          where id = $1 and schema_version is distinct from $2",
    )
    .bind(c.tenant_id)
    .bind(migrated.after)
    .execute(p.catalog.pool())
    .await
    .map_err(|e| {
        (
            PlatformError::catalog("recording the schema version", e).to_string(),
            true,
        )
    })?;
    if migrated.carried_audit_events > 0 {
        crate::audit_cli::anchor(p, &c.slug)
            .await
            .map_err(|e| (format!("anchoring the carried audit chain: {e}"), true))?;
    }
    Ok(migrated)
}

#[derive(Debug, Default, sqlx::FromRow)]
struct Counts {
    tenants: i64,
    succeeded: i64,
    failed: i64,
    skipped: i64,
    pending: i64,
}

async fn run_counts(p: &Platform, run: Uuid) -> Result<Counts> {
    sqlx::query_as(
        "select count(*) as tenants,
                count(*) filter (where state = 'succeeded') as succeeded,
                count(*) filter (where state = 'failed') as failed,
                count(*) filter (where state = 'skipped') as skipped,
                count(*) filter (where state in ('pending', 'running')) as pending
           from migration_run_tenants where run_id = $1",
    )
    .bind(run)
    .fetch_one(p.catalog.pool())
    .await
    .map_err(|e| PlatformError::catalog("counting the run's tenants", e))
}

async fn finish_run(p: &Platform, run: Uuid, status: &str, error: Option<&str>) -> Result<()> {
    sqlx::query(
        "update migration_runs set status = $2, error = $3, finished_at = now() where id = $1",
    )
    .bind(run)
    .bind(status)
    .bind(error)
    .execute(p.catalog.pool())
    .await
    .map_err(|e| PlatformError::catalog("recording the run's end", e))?;
    Ok(())
}

type RunRow = (
    Uuid,
    String,
    String,
    i32,
    serde_json::Value,
    String,
    Option<String>,
    OffsetDateTime,
    Option<OffsetDateTime>,
);

const RUN_COLUMNS: &str =
    "id, kind, status, target_version, options, started_by, error, started_at, finished_at";

async fn summarise(p: &Platform, row: RunRow) -> Result<RunSummary> {
    let (run_id, kind, status, target_version, options, started_by, error, started_at, finished_at) =
        row;
    let counts = run_counts(p, run_id).await?;
    Ok(RunSummary {
        run_id,
        kind,
        status,
        target_version,
        options: serde_json::from_value(options).unwrap_or_default(),
        started_by,
        error,
        started_at,
        finished_at,
        tenants: counts.tenants,
        succeeded: counts.succeeded,
        failed: counts.failed,
        skipped: counts.skipped,
        pending: counts.pending,
    })
}

/// Which runs [`select_runs`] reads.
enum Runs {
    /// The fleet run still open (running, or stopped before the end).
    Open,
    One(Uuid),
    Newest(i64),
    LastFleet,
}

/// Runs, newest first, with their counts.
async fn select_runs(p: &Platform, which: Runs) -> Result<Vec<RunSummary>> {
    let (condition, id, limit) = match which {
        Runs::Open => (
            "kind = 'fleet' and $1::uuid is null and (status = 'running'
                or (status = 'stopped' and exists (select 1 from migration_run_tenants r
                     where r.run_id = migration_runs.id and r.state in ('pending', 'running', 'failed'))))",
            None,
            1,
        ),
        Runs::One(id) => ("id = $1", Some(id), 1),
        Runs::Newest(limit) => ("$1::uuid is null", None, limit),
        Runs::LastFleet => ("kind = 'fleet' and $1::uuid is null", None, 1),
    };
    let rows: Vec<RunRow> = sqlx::query_as(&format!(
        "select {RUN_COLUMNS} from migration_runs where {condition}
          order by started_at desc limit $2"
    ))
    .bind(id)
    .bind(limit)
    .fetch_all(p.catalog.pool())
    .await
    .map_err(|e| PlatformError::catalog("reading migration runs", e))?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        out.push(summarise(p, r).await?);
    }
    Ok(out)
}

/// The fleet run still open (running, or stopped before the end), if any.
async fn open_run(p: &Platform) -> Result<Option<RunSummary>> {
    Ok(select_runs(p, Runs::Open).await?.pop())
}

/// One run, with its counts.
pub async fn run_summary(p: &Platform, run: Uuid) -> Result<Option<RunSummary>> {
    Ok(select_runs(p, Runs::One(run)).await?.pop())
}

/// The newest runs, newest first.
pub async fn runs(p: &Platform, limit: i64) -> Result<Vec<RunSummary>> {
    select_runs(p, Runs::Newest(limit)).await
}

/// Every tenant result of a run, in the order they were planned.
pub async fn tenant_results(p: &Platform, run: Uuid) -> Result<Vec<TenantResult>> {
    type Row = (
        Uuid,
        String,
        String,
        i32,
        String,
        Option<i32>,
        Option<i32>,
        i32,
        Option<i64>,
        Option<String>,
    );
    let rows: Vec<Row> = sqlx::query_as(
        "select t.id, t.slug, s.name, r.wave, r.state, r.version_before, r.version_after,
                r.attempts, r.duration_ms, r.error
           from migration_run_tenants r
           join tenants t on t.id = r.tenant_id
           join tenant_placements p on p.tenant_id = t.id
           join db_servers s on s.id = p.db_server_id
          where r.run_id = $1
          order by r.wave, t.id",
    )
    .bind(run)
    .fetch_all(p.catalog.pool())
    .await
    .map_err(|e| PlatformError::catalog("reading the run's tenants", e))?;
    Ok(rows
        .into_iter()
        .map(
            |(tenant_id, slug, server, wave, state, before, after, attempts, ms, error)| {
                TenantResult {
                    tenant_id,
                    slug,
                    server,
                    wave,
                    state,
                    version_before: before,
                    version_after: after,
                    attempts,
                    duration_ms: ms,
                    error,
                }
            },
        )
        .collect())
}

/// `portico fleet status`: where the fleet stands.
#[derive(Debug, Clone, Serialize)]
pub struct FleetStatus {
    /// The newest tenant schema this binary ships.
    pub latest_version: i32,
    /// The oldest tenant schema this binary serves.
    pub minimum_version: i32,
    pub tenants: i64,
    /// Tenants by schema version (`none` for tenants without one yet).
    pub by_version: BTreeMap<String, i64>,
    /// Per server: tenants, and how many are behind the latest schema.
    pub by_server: BTreeMap<String, ServerCounts>,
    /// Tenants by lifecycle status.
    pub by_status: BTreeMap<String, i64>,
    /// Tenants by their state in the newest fleet run.
    pub last_run: Option<RunSummary>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ServerCounts {
    pub tenants: i64,
    pub behind: i64,
}

pub async fn status(p: &Platform) -> Result<FleetStatus> {
    let latest = migrations::latest_version();
    let rows: Vec<(Option<i32>, Option<String>, String, i64)> = sqlx::query_as(
        "select t.schema_version, s.name, t.status, count(*)
           from tenants t
           left join tenant_placements p on p.tenant_id = t.id
           left join db_servers s on s.id = p.db_server_id
          where t.status <> 'deleted'
          group by 1, 2, 3",
    )
    .fetch_all(p.catalog.pool())
    .await
    .map_err(|e| PlatformError::catalog("counting tenants", e))?;
    let mut st = FleetStatus {
        latest_version: latest,
        minimum_version: portico_tenant_runtime::MIN_TENANT_SCHEMA,
        tenants: 0,
        by_version: BTreeMap::new(),
        by_server: BTreeMap::new(),
        by_status: BTreeMap::new(),
        last_run: None,
    };
    for (version, server, status, n) in rows {
        st.tenants += n;
        *st.by_version
            .entry(version.map_or("none".into(), |v| v.to_string()))
            .or_default() += n;
        let s = st
            .by_server
            .entry(server.unwrap_or_else(|| "-".into()))
            .or_insert(ServerCounts {
                tenants: 0,
                behind: 0,
            });
        s.tenants += n;
        if version.unwrap_or(0) < latest {
            s.behind += n;
        }
        *st.by_status.entry(status).or_default() += n;
    }
    st.last_run = select_runs(p, Runs::LastFleet).await?.pop();
    Ok(st)
}
