//! Tenant schema migrations (`migrations/tenant/V{n}__{name}.sql`), embedded at compile time by
//! refinery, and the one procedure that applies them: to a server's template database (which new
//! tenant databases are copies of) and to existing tenant databases (`portico tenant migrate`,
//! `portico fleet migrate`). Both run every migration the same way, as the server's admin
//! acting as `pg_database_owner`, so a migrated database ends up exactly like a fresh copy.
//!
//! Each migration runs in its own transaction with a `lock_timeout`; a lock timeout rolls it
//! back and it is retried with backoff. The history is refinery's table
//! (`refinery_schema_history`), written by the same transaction. Some migrations carry data
//! that SQL alone cannot (see [`carry_audit_events`]): those steps run inside the migration's
//! transaction, before and after its SQL.

use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Transaction};

use crate::{ProvisionError, pg_err};

mod embedded {
    refinery::embed_migrations!("../migrations/tenant");
}

pub use refinery::Migration;

pub fn runner() -> refinery::Runner {
    embedded::migrations::runner()
}

/// Every shipped tenant migration, in version order.
pub fn shipped() -> Vec<Migration> {
    let mut all = runner().get_migrations().to_vec();
    all.sort_by_key(|m| m.version());
    all
}

/// Version of how templates are built (ownership, grants). Part of the template name, so a
/// change to the build procedure also retires old templates.
const TEMPLATE_LAYOUT: &str = "layout-3";

/// The newest tenant schema version (the highest migration number).
pub fn latest_version() -> i32 {
    version_of(shipped().last())
}

fn version_of(m: Option<&Migration>) -> i32 {
    m.map_or(0, |m| i32::try_from(m.version()).unwrap_or(i32::MAX))
}

/// A short digest of every migration's version, name and checksum. It changes whenever a
/// migration is added (or, against the rules, edited), so a stale template is never reused.
pub fn fingerprint() -> String {
    fingerprint_of(&shipped())
}

fn fingerprint_of(migrations: &[Migration]) -> String {
    let mut h = Sha256::new();
    h.update(TEMPLATE_LAYOUT.as_bytes());
    for m in migrations {
        h.update(format!("{}:{}:{};", m.version(), m.name(), m.checksum()));
    }
    hex::encode(&h.finalize()[..4])
}

/// Name of the template database for the current migrations: `portico_tpl_v<N>_<digest>`.
pub fn template_name() -> String {
    template_name_of(&shipped())
}

/// Name of the template database for a set of migrations.
pub fn template_name_of(migrations: &[Migration]) -> String {
    format!(
        "portico_tpl_v{}_{}",
        version_of(migrations.last()),
        fingerprint_of(migrations)
    )
}

/// How migrations wait for locks held by the running application.
#[derive(Debug, Clone, Copy)]
pub struct LockPolicy {
    /// `lock_timeout` of each migration's statements: how long the migration may wait for a
    /// lock (and so how long application queries can queue behind it).
    pub lock_timeout: Duration,
    /// Attempts per migration before giving up on lock timeouts.
    pub attempts: u32,
    /// Wait before the second attempt; doubled for each further one.
    pub backoff: Duration,
}

impl Default for LockPolicy {
    fn default() -> Self {
        Self {
            lock_timeout: Duration::from_secs(2),
            attempts: 5,
            backoff: Duration::from_millis(200),
        }
    }
}

/// What migrating one database did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migrated {
    /// The schema version before (the highest applied migration; 0 for none).
    pub before: i32,
    /// The schema version after. Above the newest migration given when the database is newer
    /// than this binary (nothing is applied then).
    pub after: i32,
    /// Attempts made, summed over the migrations applied (lock timeouts retried).
    pub attempts: u32,
    /// Audit events of an older schema carried into the hash chain.
    pub carried_audit_events: u64,
}

/// Why migrating a database failed. Whatever migration failed was rolled back; the ones
/// before it stay applied (each is its own transaction).
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("migration V{version} failed: {message}")]
    Failed { version: i32, message: String },
    #[error(
        "migration V{version} still waited for locks after {attempts} attempts (lock_timeout {timeout_ms} ms)"
    )]
    LockTimeout {
        version: i32,
        attempts: u32,
        timeout_ms: u128,
    },
    #[error("migration V{version} applied to this database differs from the one this binary ships")]
    Divergent { version: i32 },
    #[error(transparent)]
    Provision(#[from] ProvisionError),
}

impl MigrateError {
    /// The version at which migrating stopped, when one migration was to blame.
    pub fn version(&self) -> Option<i32> {
        match self {
            Self::Failed { version, .. }
            | Self::LockTimeout { version, .. }
            | Self::Divergent { version } => Some(*version),
            Self::Provision(_) => None,
        }
    }
}

/// refinery's history table, as refinery creates it (so template builds by older binaries and
/// ours have the same one).
const HISTORY_DDL: &str = "CREATE TABLE IF NOT EXISTS refinery_schema_history( \
     version INT4 PRIMARY KEY, name VARCHAR(255), applied_on VARCHAR(255), checksum VARCHAR(255));";

/// Where one tenant's objects live: a whole database (the dedicated tier: objects owned by
/// `pg_database_owner`, in `public` and `portico_audit`) or a schema of a shared database (the
/// pooled tier: objects owned by the tenant's role, in its schema `t_<id>` and its audit
/// schema `t_<id>_audit`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Database,
    Schema { schema: String, role: String },
}

impl Target {
    /// The schema holding the tenant's tables (and refinery's history).
    pub fn schema(&self) -> &str {
        match self {
            Self::Database => "public",
            Self::Schema { schema, .. } => schema,
        }
    }

    /// The schema holding the tenant's audit log (owned by `portico_audit`).
    pub fn audit_schema(&self) -> String {
        match self {
            Self::Database => "portico_audit".into(),
            Self::Schema { schema, .. } => audit_schema_of(schema),
        }
    }

    /// The role migrations act as.
    fn owner(&self) -> &str {
        match self {
            Self::Database => "pg_database_owner",
            Self::Schema { role, .. } => role,
        }
    }

    /// Second key of the advisory locks of this target (migrators; the audit chain): the
    /// database's own for a dedicated tenant, one per schema in a shared database, so tenants
    /// sharing a database never wait for each other.
    pub fn lock_key(&self) -> i32 {
        match self {
            Self::Database => 2,
            Self::Schema { schema, .. } => {
                let d = Sha256::digest(schema.as_bytes());
                // Keys 1 and 2 are the dedicated tier's; a collision only serialises two
                // schemas' migrators (or chain appends), never mixes them.
                i32::from_be_bytes([d[0] & 0x7f, d[1], d[2], d[3]]).max(16)
            }
        }
    }

    /// A shipped migration's SQL for this target. Migrations are written for a dedicated
    /// database; in a schema the same statements name the tenant's schema, audit schema and
    /// role instead (a test compares the resulting objects with a dedicated database's).
    pub fn sql_of(&self, sql: &str) -> String {
        let Self::Schema { schema, role } = self else {
            return sql.to_owned();
        };
        let audit = audit_schema_of(schema);
        let q = |s: &str| postgres_protocol::escape::escape_identifier(s);
        let chain_key = format!("727368, {}", self.chain_lock_key());
        sql.replace(
            "set role pg_database_owner",
            &format!("set role {}", q(role)),
        )
        .replace("to pg_database_owner", &format!("to {}", q(role)))
        .replace(
            "schema portico_audit authorization",
            &format!("schema {} authorization", q(&audit)),
        )
        .replace(
            "on schema portico_audit",
            &format!("on schema {}", q(&audit)),
        )
        .replace(
            "set schema portico_audit",
            &format!("set schema {}", q(&audit)),
        )
        .replace("portico_audit.", &format!("{}.", q(&audit)))
        .replace("public.", &format!("{}.", q(schema)))
        .replace("727368, 1)", &format!("{chain_key})"))
    }

    /// Second key of the audit chain's append lock.
    fn chain_lock_key(&self) -> i32 {
        match self {
            Self::Database => 1,
            Self::Schema { .. } => self.lock_key().wrapping_add(1).max(16),
        }
    }
}

/// The audit schema of a pooled tenant's schema.
pub fn audit_schema_of(schema: &str) -> String {
    format!("{schema}_audit")
}

/// The schema version of a database: its highest applied migration (0 for none).
pub async fn current_version(client: &Client) -> Result<i32, ProvisionError> {
    current_version_in(client, &Target::Database).await
}

/// The schema version of a tenant's objects, wherever they live.
pub async fn current_version_in(client: &Client, target: &Target) -> Result<i32, ProvisionError> {
    let history = format!("{}.refinery_schema_history", target.schema());
    let row = client
        .query_one(
            "select case when to_regclass(quote_ident($1) || '.refinery_schema_history') is null
                    then 0 else -1 end",
            &[&target.schema()],
        )
        .await
        .map_err(|e| pg_err("reading the tenant schema version", e))?;
    if row.get::<_, i32>(0) == 0 {
        return Ok(0);
    }
    let row = client
        .query_one(
            &format!(
                "select coalesce(max(version), 0)::int4 from {}",
                qualified(&history)
            ),
            &[],
        )
        .await
        .map_err(|e| pg_err("reading the tenant schema version", e))?;
    Ok(row.get(0))
}

/// `schema.table` with the schema quoted.
fn qualified(name: &str) -> String {
    match name.split_once('.') {
        Some((schema, table)) => format!(
            "{}.{table}",
            postgres_protocol::escape::escape_identifier(schema)
        ),
        None => name.to_owned(),
    }
}

/// Applies to the database `client` is connected to (as the server's admin) every migration of
/// `migrations` above its current version, each in its own transaction, acting as
/// `pg_database_owner` so that what is created belongs to the database's owner. Another
/// migrator of the same database waits. A database at a version this binary does not know
/// (newer) is left as it is.
pub async fn migrate_database(
    client: &mut Client,
    migrations: &[Migration],
    policy: LockPolicy,
) -> Result<Migrated, MigrateError> {
    migrate(client, &Target::Database, migrations, policy).await
}

/// [`migrate_database`] for a tenant wherever it lives: a whole database, or a schema of a
/// shared database (as the tenant's role, with the schema first on the search path).
pub async fn migrate(
    client: &mut Client,
    target: &Target,
    migrations: &[Migration],
    policy: LockPolicy,
) -> Result<Migrated, MigrateError> {
    client
        .execute("select pg_advisory_lock(727368, $1)", &[&target.lock_key()])
        .await
        .map_err(|e| pg_err("locking the tenant for migration", e))?;
    let result = migrate_locked(client, target, migrations, policy).await;
    let _ = client
        .execute(
            "select pg_advisory_unlock(727368, $1)",
            &[&target.lock_key()],
        )
        .await;
    let _ = client.batch_execute("reset role; reset search_path").await;
    result
}

async fn migrate_locked(
    client: &mut Client,
    target: &Target,
    migrations: &[Migration],
    policy: LockPolicy,
) -> Result<Migrated, MigrateError> {
    let q = postgres_protocol::escape::escape_identifier;
    let search_path = match target {
        Target::Database => String::new(),
        Target::Schema { schema, .. } => format!("set search_path = {};", q(schema)),
    };
    client
        .batch_execute(&format!(
            "set role {}; {search_path} {HISTORY_DDL}",
            q(target.owner())
        ))
        .await
        .map_err(|e| pg_err("preparing the migration history", e))?;
    let applied: Vec<(i32, String)> = client
        .query(
            &format!(
                "select version, checksum from {}.refinery_schema_history order by version",
                q(target.schema())
            ),
            &[],
        )
        .await
        .map_err(|e| pg_err("reading the migration history", e))?
        .iter()
        .map(|r| (r.get(0), r.get::<_, Option<String>>(1).unwrap_or_default()))
        .collect();
    let before = applied.last().map_or(0, |(v, _)| *v);
    for (version, checksum) in &applied {
        let ours = migrations.iter().find(|m| version_of(Some(m)) == *version);
        if ours.is_some_and(|m| m.checksum().to_string() != *checksum) {
            return Err(MigrateError::Divergent { version: *version });
        }
    }
    let mut done = Migrated {
        before,
        after: before,
        attempts: 0,
        carried_audit_events: 0,
    };
    for m in migrations.iter().filter(|m| version_of(Some(m)) > before) {
        let version = version_of(Some(m));
        let mut attempt = 0;
        loop {
            attempt += 1;
            done.attempts += 1;
            match apply_one(client, target, m, policy.lock_timeout).await {
                Ok(carried) => {
                    done.carried_audit_events += carried;
                    done.after = version;
                    break;
                }
                Err(e) if is_lock_timeout(&e) && attempt < policy.attempts => {
                    tracing::info!(
                        version,
                        attempt,
                        "migration waited too long for a lock; retrying"
                    );
                    tokio::time::sleep(policy.backoff.saturating_mul(1 << (attempt - 1).min(6)))
                        .await;
                }
                Err(e) if is_lock_timeout(&e) => {
                    return Err(MigrateError::LockTimeout {
                        version,
                        attempts: attempt,
                        timeout_ms: policy.lock_timeout.as_millis(),
                    });
                }
                Err(e) => {
                    return Err(MigrateError::Failed {
                        version,
                        message: describe(&e),
                    });
                }
            }
        }
    }
    Ok(done)
}

fn is_lock_timeout(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&SqlState::LOCK_NOT_AVAILABLE)
}

fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => e.to_string(),
    }
}

/// One migration, its data steps and its history row, in one transaction.
async fn apply_one(
    client: &mut Client,
    target: &Target,
    m: &Migration,
    lock_timeout: Duration,
) -> Result<u64, tokio_postgres::Error> {
    let started = Instant::now();
    let version = version_of(Some(m));
    let tx = client.transaction().await?;
    tx.batch_execute(&format!(
        "set local lock_timeout = '{}ms'",
        lock_timeout.as_millis().max(1)
    ))
    .await?;
    // Only a dedicated database can be at `V3` (schemas are created at the newest version).
    let carrying =
        version == CARRY_AUDIT_AT && *target == Target::Database && keep_audit_events(&tx).await?;
    tx.batch_execute(&target.sql_of(m.sql().unwrap_or_default()))
        .await?;
    let carried = if carrying {
        carry_audit_events(&tx).await?
    } else {
        0
    };
    if version == CONVERT_AUDIT_AT {
        tx.batch_execute("reset role").await?;
        convert_plain_events(&tx, &target.audit_schema()).await?;
        tx.batch_execute(&format!(
            "set role {}",
            postgres_protocol::escape::escape_identifier(target.owner())
        ))
        .await?;
    }
    let applied_on = OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .unwrap_or_default();
    tx.execute(
        &format!(
            "insert into {}.refinery_schema_history (version, name, applied_on, checksum)
             values ($1, $2, $3, $4)",
            postgres_protocol::escape::escape_identifier(target.schema())
        ),
        &[&version, &m.name(), &applied_on, &m.checksum().to_string()],
    )
    .await?;
    tx.commit().await?;
    tracing::info!(
        version,
        name = m.name(),
        ms = started.elapsed().as_millis() as u64,
        carried,
        "tenant migration applied"
    );
    Ok(carried)
}

/// The migration that moves the strings of audit events to `audit_values` (`V8__erasure`).
const CONVERT_AUDIT_AT: i32 = 8;

/// Moves the strings of every event still stored as it was written (format 1: by a schema
/// before 8, a migration or an import) to `audit_values` under fresh salts, leaving references
/// (format 2). The payload hashes and the chain do not change: a format-2 event is checked by
/// resolving its references, so the chain and every anchor stay valid across the conversion.
/// Runs as the database's admin (the table belongs to `portico_audit`), in the caller's
/// transaction; returns how many events it converted.
pub async fn convert_plain_events(
    tx: &Transaction<'_>,
    audit_schema: &str,
) -> Result<u64, tokio_postgres::Error> {
    use portico_core::audit_chain::Commitments;
    let a = postgres_protocol::escape::escape_identifier(audit_schema);
    tx.batch_execute(&format!(
        "alter table {a}.audit_events disable trigger audit_events_no_update"
    ))
    .await?;
    let mut converted = 0u64;
    let mut last = 0i64;
    loop {
        let rows = tx
            .query(
                &format!(
                    "select seq, actor, target, reason, details from {a}.audit_events
                      where format = 1 and seq > $1 order by seq limit {CARRY_BATCH}"
                ),
                &[&last],
            )
            .await?;
        let mut c = Commitments::default();
        let (mut seqs, mut actors, mut targets, mut reasons, mut details) =
            (vec![], vec![], vec![], vec![], vec![]);
        for r in &rows {
            last = r.get(0);
            seqs.push(last);
            actors.push(c.commit(r.get(1)));
            targets.push(r.get::<_, Option<&str>>(2).map(|t| c.commit(t)));
            reasons.push(r.get::<_, Option<&str>>(3).map(|t| c.commit(t)));
            details.push(c.commit_json(&r.get::<_, serde_json::Value>(4)));
        }
        tx.execute(
            &format!(
                "insert into {a}.audit_values (ref, salt, value)
                 select * from unnest($1::text[], $2::bytea[], $3::text[])"
            ),
            &[&c.refs, &c.salts, &c.values],
        )
        .await?;
        tx.execute(
            &format!(
                "update {a}.audit_events e
                    set actor = n.actor, target = n.target, reason = n.reason,
                        details = n.details, format = 2
                   from unnest($1::int8[], $2::text[], $3::text[], $4::text[], $5::jsonb[])
                        as n(seq, actor, target, reason, details)
                  where e.seq = n.seq"
            ),
            &[&seqs, &actors, &targets, &reasons, &details],
        )
        .await?;
        converted += rows.len() as u64;
        if (rows.len() as i64) < CARRY_BATCH {
            break;
        }
    }
    tx.batch_execute(&format!(
        "alter table {a}.audit_events enable trigger audit_events_no_update"
    ))
    .await?;
    Ok(converted)
}

/// The migration that rebuilds the audit log as a hash chain (`V4__portal` drops the table of
/// `V3__identity` and creates the chained one).
const CARRY_AUDIT_AT: i32 = 4;

/// Before `V4`: sets the events of the `V3` log, if there are any, aside under another name
/// (`V4` drops `audit_events`; an empty stand-in takes its place for that). Returns whether it
/// did.
async fn keep_audit_events(tx: &Transaction<'_>) -> Result<bool, tokio_postgres::Error> {
    let old = tx
        .query_one(
            "select exists (select 1 from pg_attribute
                             where attrelid = to_regclass('public.audit_events')
                               and attname = 'id' and not attisdropped)",
            &[],
        )
        .await?
        .get::<_, bool>(0);
    if !old
        || !tx
            .query_one("select exists (select 1 from public.audit_events)", &[])
            .await?
            .get::<_, bool>(0)
    {
        return Ok(false);
    }
    tx.batch_execute(&format!(
        "alter table public.audit_events rename to {CARRIED};
         alter table public.{CARRIED} rename constraint audit_events_pkey to {CARRIED}_pkey;
         alter index public.audit_events_type_idx rename to {CARRIED}_type_idx;
         create table public.audit_events (id bigint);"
    ))
    .await?;
    Ok(true)
}

/// Where the `V3` events wait while `V4` runs (dropped once they are carried over).
const CARRIED: &str = "portico_carried_audit_events";

/// Events carried over per batch (memory stays bounded whatever the log's size).
const CARRY_BATCH: i64 = 1000;

/// After `V4`: appends the kept events, oldest first and in batches, to the new chained log
/// (the chain trigger links them; their payload hashes are computed here, as the runtime
/// computes them), then one `audit_events_carried` event saying that it happened and how many.
/// The control plane anchors the new head once the migration has committed.
async fn carry_audit_events(tx: &Transaction<'_>) -> Result<u64, tokio_postgres::Error> {
    use portico_core::audit_chain::{canonical, sha256};
    let insert = tx
        .prepare(
            "insert into public.audit_events
                 (at, event_type, actor, client_ip, request_id, target, outcome, reason, details,
                  payload_hash, seq, prev_hash, hash)
             values ($1, $2, $3, $4::text::inet, $5, $6, $7, $8, $9, $10, 0, '', '')",
        )
        .await?;
    let append = async |at: OffsetDateTime,
                        event_type: &str,
                        actor: &str,
                        ip: Option<&str>,
                        request_id: Option<&str>,
                        target: Option<&str>,
                        outcome: &str,
                        reason: Option<&str>,
                        details: &serde_json::Value|
           -> Result<(), tokio_postgres::Error> {
        let payload = canonical(
            at, event_type, actor, ip, request_id, target, outcome, reason, details,
        );
        tx.execute(
            &insert,
            &[
                &at,
                &event_type,
                &actor,
                &ip,
                &request_id,
                &target,
                &outcome,
                &reason,
                details,
                &sha256(&payload),
            ],
        )
        .await
        .map(|_| ())
    };
    let mut carried = 0u64;
    let mut last = i64::MIN;
    loop {
        let rows = tx
            .query(
                &format!(
                    "select id, at, event_type, actor, host(client_ip), request_id, target,
                            outcome, reason, details
                       from public.{CARRIED} where id > $1 order by id limit {CARRY_BATCH}"
                ),
                &[&last],
            )
            .await?;
        for r in &rows {
            last = r.get(0);
            let details: serde_json::Value = r.get(9);
            append(
                r.get(1),
                r.get(2),
                r.get(3),
                r.get(4),
                r.get(5),
                r.get(6),
                r.get(7),
                r.get(8),
                &details,
            )
            .await?;
            carried += 1;
        }
        if (rows.len() as i64) < CARRY_BATCH {
            break;
        }
    }
    tx.batch_execute(&format!("drop table public.{CARRIED}"))
        .await?;
    let now = OffsetDateTime::now_utc();
    let now = now
        .replace_nanosecond(now.microsecond() * 1000)
        .unwrap_or(now);
    append(
        now,
        "audit_events_carried",
        "system:migration",
        None,
        None,
        None,
        "success",
        Some("schema_rebuilt"),
        &serde_json::json!({"events": carried, "from_schema": 3, "to_schema": CARRY_AUDIT_AT}),
    )
    .await?;
    Ok(carried)
}
