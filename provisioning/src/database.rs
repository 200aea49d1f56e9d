//! Tenant databases and login roles on a database server, and the per-server template database
//! they are copied from.
//!
//! Isolation model: each tenant gets a database `t_<id>` and a login role `t_<id>` that owns
//! that database, and nothing else. The template's objects are owned by `pg_database_owner`,
//! PostgreSQL's implicit role whose only member is the *current* database's owner: in each copy
//! they belong to that copy's tenant role, and to no other role anywhere, without reassigning
//! anything. The database is copied while the role is created, then handed to the role.
//! `CONNECT` on the database is revoked from `PUBLIC` right after it is created, so other
//! tenants' roles are refused at connection time. The role gets a `CONNECTION LIMIT` and a
//! `statement_timeout`. Its password is set as a SCRAM-SHA-256 verifier computed here, so the
//! plaintext never reaches the server (or its statement log), at a low iteration count
//! (`scram.rs`: the password is random, so stretching would only slow every connection open).

use portico_core::TenantId;
use postgres_protocol::escape::{escape_identifier as ident, escape_literal as literal};
use secrecy::{ExposeSecret, SecretString};
use tokio_postgres::Client;
use tokio_postgres::error::SqlState;

use crate::server::DbServer;
use crate::{ProvisionError, migrations, pg_err};

/// NOLOGIN group of every tenant role, so that `pg_hba.conf` can confine tenant roles to the
/// database of the same name (`infra/postgresql/pg_hba.conf`). It carries no privileges.
pub const TENANT_GROUP: &str = "portico_tenants";

/// Deterministic names of a tenant's database and role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantDbNames {
    pub database: String,
    pub role: String,
}

impl TenantDbNames {
    pub fn for_tenant(tenant: TenantId) -> Self {
        let name = format!("t_{}", tenant.simple());
        Self {
            database: name.clone(),
            role: name,
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct RoleLimits {
    pub connection_limit: u32,
    pub statement_timeout_ms: u32,
}

/// What provisioning writes into the tenant's own `tenant_profile` row.
#[derive(Debug, Clone)]
pub struct TenantProfile {
    pub tenant_id: TenantId,
    pub slug: String,
    pub display_name: String,
}

/// A fresh random role password (256 bits, URL-safe base64).
pub fn generate_password() -> SecretString {
    use base64::Engine;
    let bytes = portico_core::keys::random_bytes::<32>();
    SecretString::from(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// Makes sure the server has a template database at the current tenant schema, building it
/// when missing. Concurrent callers serialise on an advisory lock; a half-built template left by
/// a crash is discarded and rebuilt.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn ensure_template(server: &DbServer, admin: &Client) -> Result<String, ProvisionError> {
    let shipped = migrations::shipped();
    let name = migrations::template_name_of(&shipped);
    ensure_template_named(server, admin, &name, &shipped, true).await?;
    Ok(name)
}

/// [`ensure_template`] under a given name and for a given set of migrations; `remove_stale`
/// drops other `portico_tpl_*` templates after a build. Public for the tests, which build
/// templates of their own (at older schemas, too).
///
/// Advisory locks are per database: admin sessions connected to different databases of one
/// cluster (the control-plane server's admin is in the catalog database, a registered
/// server's usually in `postgres`) would not exclude each other and would create the same
/// database at once. So the lock is taken in the cluster's `postgres` maintenance database,
/// and only when that cannot be reached in the admin session's own.
#[doc(hidden)]
pub async fn ensure_template_named(
    server: &DbServer,
    admin: &Client,
    name: &str,
    migrations: &[migrations::Migration],
    remove_stale: bool,
) -> Result<(), ProvisionError> {
    if template_ready(admin, name).await? {
        return Ok(());
    }
    server
        .cluster_locked(
            admin,
            "portico:template",
            build_template(server, admin, name, migrations, remove_stale),
        )
        .await
}

async fn template_ready(
    admin: &tokio_postgres::Client,
    name: &str,
) -> Result<bool, ProvisionError> {
    let row = admin
        .query_opt(
            "select 1 from pg_database where datname = $1 and datistemplate",
            &[&name],
        )
        .await
        .map_err(|e| pg_err("looking up the template database", e))?;
    Ok(row.is_some())
}

async fn build_template(
    server: &DbServer,
    admin: &tokio_postgres::Client,
    name: &str,
    migrations: &[migrations::Migration],
    remove_stale: bool,
) -> Result<(), ProvisionError> {
    if template_ready(admin, name).await? {
        return Ok(());
    }
    let building = format!("{name}_build");
    tracing::info!(
        server = server.label(),
        template = name,
        "building tenant template database"
    );
    admin
        .batch_execute(&format!(
            "drop database if exists {b}",
            b = ident(&building)
        ))
        .await
        .map_err(|e| pg_err("removing a half-built template database", e))?;
    admin
        .batch_execute(&format!(
            "create database {b} template template0 encoding 'UTF8' strategy wal_log",
            b = ident(&building),
        ))
        .await
        .map_err(|e| pg_err("creating the template database", e))?;
    {
        let mut client = server.admin_in(&building).await?;
        // Objects created by the migrations are owned by `pg_database_owner`, so that in every
        // copy they belong to the copy's owner (the tenant role) and to nobody else.
        client
            .batch_execute("revoke all on schema public from public")
            .await
            .map_err(|e| pg_err("preparing the template schema", e))?;
        migrations::migrate_database(&mut client, migrations, Default::default())
            .await
            .map_err(|e| ProvisionError::Migration(e.to_string()))?;
    }
    admin
        .batch_execute(&format!(
            "alter database {b} with is_template true allow_connections false",
            b = ident(&building),
        ))
        .await
        .map_err(|e| pg_err("finishing the template database", e))?;
    // The rename is the commit point: a template under its final name is complete.
    admin
        .batch_execute(&format!(
            "alter database {b} rename to {n}",
            b = ident(&building),
            n = ident(name),
        ))
        .await
        .map_err(|e| pg_err("finishing the template database", e))?;
    if !remove_stale {
        return Ok(());
    }
    // Older templates are no longer needed. One still being copied from keeps its lock and
    // is left for the next build to remove.
    let stale = admin
        .query(
            "select datname from pg_database where datname like 'portico\\_tpl\\_%' and datname <> $1 and datname not like '%\\_build'",
            &[&name],
        )
        .await
        .map_err(|e| pg_err("listing old template databases", e))?;
    for row in stale {
        let old: String = row.get(0);
        let unmarked = admin
            .batch_execute(&format!(
                "alter database {o} with is_template false",
                o = ident(&old)
            ))
            .await;
        if unmarked.is_ok() {
            let _ = admin
                .batch_execute(&format!("drop database {o}", o = ident(&old)))
                .await;
        }
    }
    Ok(())
}

/// Creates the tenant's login role (a member of [`TENANT_GROUP`]), or brings one left by an
/// interrupted run to the wanted password and limits. One transaction.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn ensure_role(
    admin: &Client,
    names: &TenantDbNames,
    password: &SecretString,
    limits: RoleLimits,
) -> Result<(), ProvisionError> {
    ensure_login_role(admin, &names.role, password, limits, LoginRole::Tenant).await
}

/// Which kind of login role [`ensure_login_role`] makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LoginRole {
    /// A dedicated tenant's role: inherits (it owns its database through
    /// `pg_database_owner`), search path pinned to `public`.
    Tenant,
    /// A shared database's pool role: inherits nothing, so it has no privilege of its own and
    /// acts for a tenant only after `SET ROLE`.
    Pool,
}

/// A login role in [`TENANT_GROUP`] (so `pg_hba.conf` confines it to the database of its
/// name) with a SCRAM verifier computed here, a `CONNECTION LIMIT` and timeouts; an existing
/// one is brought to them. One implicit transaction.
pub(crate) async fn ensure_login_role(
    admin: &Client,
    role: &str,
    password: &SecretString,
    limits: RoleLimits,
    kind: LoginRole,
) -> Result<(), ProvisionError> {
    let verifier = crate::scram::role_verifier(password.expose_secret().as_bytes());
    let (inherit, search_path) = match kind {
        LoginRole::Tenant => (
            "inherit",
            format!("alter role {} set search_path = public;", ident(role)),
        ),
        LoginRole::Pool => ("noinherit", String::new()),
    };
    // A simple-query batch runs as one implicit transaction. Its commit need not wait for the
    // WAL flush: the first login as (or through) the role commits synchronously before the
    // catalog records the tenant active, which flushes this too; if the server crashes first,
    // the next run creates the role again.
    admin
        .batch_execute(&format!(
            "set local synchronous_commit = off;
             do $$ begin
               create role {g} nologin;
             exception when duplicate_object or unique_violation then null;
             end $$;
             do $$ begin
               create role {r};
             exception when duplicate_object then null;
             end $$;
             grant {g} to {r};
             alter role {r} with login nosuperuser nocreatedb nocreaterole {inherit} noreplication
                 nobypassrls connection limit {limit} password {pw};
             {search_path}
             alter role {r} set statement_timeout = {timeout};
             alter role {r} set idle_in_transaction_session_timeout = {idle};",
            r = ident(role),
            g = ident(TENANT_GROUP),
            limit = limits.connection_limit,
            pw = literal(&verifier),
            timeout = literal(&format!("{}ms", limits.statement_timeout_ms)),
            idle = literal(&format!(
                "{}ms",
                limits.statement_timeout_ms.saturating_mul(2)
            )),
        ))
        .await
        .map_err(|e| match kind {
            LoginRole::Tenant => pg_err("creating the tenant role", e),
            LoginRole::Pool => pg_err("creating the pool role", e),
        })
}

/// Creates the tenant database as a copy of the server's template (`STRATEGY WAL_LOG`), and
/// at once revokes `PUBLIC`'s default `CONNECT`/`TEMPORARY` on it. It stays owned by the admin
/// until [`hand_over`] gives it to the tenant role, so it does not have to wait for the role.
/// Accepts a database left by an interrupted run.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn ensure_database(
    admin: &Client,
    names: &TenantDbNames,
    template: &str,
) -> Result<(), ProvisionError> {
    let created = admin
        .batch_execute(&format!(
            "create database {d} template {t} strategy wal_log",
            d = ident(&names.database),
            t = ident(template),
        ))
        .await;
    match created {
        Ok(()) => {}
        Err(e) if database_exists_now(&e) => {}
        Err(e) => return Err(pg_err("creating the tenant database", e)),
    }
    // Asynchronous commit: the tenant's first login commits its profile row synchronously
    // before the catalog records the tenant active, which flushes this too.
    admin
        .batch_execute(&format!(
            "set local synchronous_commit = off; revoke all on database {d} from public",
            d = ident(&names.database)
        ))
        .await
        .map_err(|e| pg_err("restricting access to the tenant database", e))
}

/// Whether a failed `CREATE DATABASE` failed because the database is there: it existed
/// (`duplicate_database`), or another session's `CREATE DATABASE` of the same name — a killed
/// run's, still working on the server — committed while this one waited on the name's unique
/// index (`unique_violation`; had it rolled back, this one would have gone on).
pub(crate) fn database_exists_now(e: &tokio_postgres::Error) -> bool {
    matches!(
        e.code(),
        Some(&SqlState::DUPLICATE_DATABASE) | Some(&SqlState::UNIQUE_VIOLATION)
    )
}

/// Makes the tenant role the owner of its database — and so, through `pg_database_owner`, of
/// every object in it. Idempotent.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn hand_over(admin: &Client, names: &TenantDbNames) -> Result<(), ProvisionError> {
    admin
        .batch_execute(&format!(
            "set local synchronous_commit = off; alter database {d} owner to {r}",
            d = ident(&names.database),
            r = ident(&names.role),
        ))
        .await
        .map_err(|e| pg_err("handing the tenant database to its role", e))
}

/// Logs in as the tenant role to its own database — proving that the stored password, the
/// grants and the ownership all work — writes the tenant's profile row as that role, and
/// returns the tenant schema version found there.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn verify_and_seed(
    server: &DbServer,
    names: &TenantDbNames,
    password: &SecretString,
    profile: &TenantProfile,
) -> Result<i32, ProvisionError> {
    let client = server
        .connect_as(&names.database, &names.role, password.expose_secret())
        .await?;
    seed_profile(&client, profile).await
}

/// Writes (or updates) the tenant's profile row and returns the tenant schema version, on a
/// session already acting as the tenant's role. Refuses a profile row of another tenant.
pub(crate) async fn seed_profile(
    client: &impl tokio_postgres::GenericClient,
    profile: &TenantProfile,
) -> Result<i32, ProvisionError> {
    let row = client
        .query_one(
            "with profile as (
               insert into tenant_profile (tenant_id, slug, display_name) values ($1, $2, $3)
               on conflict on constraint tenant_profile_pkey
               do update set slug = excluded.slug, display_name = excluded.display_name,
                             updated_at = now()
               returning tenant_id)
             select (select coalesce(max(version), 0)::int4 from refinery_schema_history),
                    (select tenant_id from profile)",
            &[
                &profile.tenant_id.as_uuid(),
                &profile.slug,
                &profile.display_name,
            ],
        )
        .await
        .map_err(|e| pg_err("writing the tenant profile as the tenant role", e))?;
    let written: uuid::Uuid = row.get(1);
    if written != profile.tenant_id.as_uuid() {
        return Err(ProvisionError::Conflict(
            "the tenant's profile row names another tenant".into(),
        ));
    }
    Ok(row.get(0))
}

/// Drops the tenant database (terminating its sessions) if it exists.
/// Ends server sessions still working on this tenant's database or role for a process that is
/// gone (a create killed while its `CREATE DATABASE` kept running on the server), and waits
/// until they have ended. Otherwise such a statement can finish after a rollback dropped the
/// database, and leave it behind.
pub async fn end_stale_sessions(
    admin: &Client,
    names: &TenantDbNames,
) -> Result<(), ProvisionError> {
    let stale = "select pid from pg_stat_activity
                  where pid <> pg_backend_pid() and state <> 'idle'
                    and (position($1 in query) > 0 or position($2 in query) > 0)";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let pids: Vec<i32> = admin
            .query(stale, &[&names.database, &names.role])
            .await
            .map_err(|e| pg_err("looking for stale sessions", e))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        if pids.is_empty() {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            return Err(ProvisionError::Conflict(format!(
                "{} server session(s) still work on the tenant's database; try again",
                pids.len()
            )));
        }
        // With a timeout, pg_terminate_backend waits until the session has ended.
        admin
            .execute(
                "select pg_terminate_backend(pid, 5000) from unnest($1::int4[]) as pid",
                &[&pids],
            )
            .await
            .map_err(|e| pg_err("ending stale sessions", e))?;
    }
}

pub async fn drop_database(admin: &Client, names: &TenantDbNames) -> Result<(), ProvisionError> {
    admin
        .batch_execute(&format!(
            "drop database if exists {d} with (force)",
            d = ident(&names.database)
        ))
        .await
        .map_err(|e| pg_err("dropping the tenant database", e))
}

/// Drops the tenant role if it exists. The database must be gone first.
pub async fn drop_role(admin: &Client, names: &TenantDbNames) -> Result<(), ProvisionError> {
    admin
        .batch_execute(&format!("drop role if exists {r}", r = ident(&names.role)))
        .await
        .map_err(|e| pg_err("dropping the tenant role", e))
}

/// Whether the tenant's database and role exist on the server (for checks and tests).
pub async fn tenant_objects_exist(
    admin: &Client,
    names: &TenantDbNames,
) -> Result<(bool, bool), ProvisionError> {
    let row = admin
        .query_one(
            "select exists (select 1 from pg_database where datname = $1),
                    exists (select 1 from pg_roles where rolname = $2)",
            &[&names.database, &names.role],
        )
        .await
        .map_err(|e| pg_err("looking up tenant objects", e))?;
    Ok((row.get(0), row.get(1)))
}

/// Checks, as the server's admin in a tenant database, that the audit log is still out of the
/// tenant role's reach: its schema, table and functions belong to `portico_audit`, the three
/// triggers are there and enabled and call the shipped functions, the functions pin their
/// search path and their bodies are the ones the tenant migrations define, and the tenant
/// role can neither change the table nor create in its schema. Returns what is wrong (empty:
/// all is well). The tenant role cannot fake any of this: catalogs are read as the admin.
pub async fn audit_protection_problems(
    admin_in_tenant_db: &Client,
    tenant_role: &str,
    target: &migrations::Target,
) -> Result<Vec<String>, ProvisionError> {
    let schema = target.audit_schema();
    // Our schema names (`portico_audit`, `t_<hex>_audit`) never need quoting, so they read
    // the same in `regclass` input and `regprocedure` output.
    let table = format!("{schema}.audit_events");
    let values = format!("{schema}.audit_values");
    let f = |name: &str| format!("{schema}.{name}()");
    let row = admin_in_tenant_db
        .query_one(
            "select
               (select pg_get_userbyid(n.nspowner) from pg_namespace n
                 where n.nspname = $2),
               (select pg_get_userbyid(c.relowner) from pg_class c
                 where c.oid = to_regclass($3) and c.relkind = 'r'),
               array(select format('%s:%s:%s', t.tgname, t.tgenabled, t.tgfoid::regprocedure)
                       from pg_trigger t
                      where t.tgrelid = to_regclass($3)
                        and not t.tgisinternal
                      order by t.tgname),
               array(select format('%s:%s:%s:%s', p.proname, pg_get_userbyid(p.proowner),
                                   case when p.prosecdef then 'definer' else 'invoker' end,
                                   coalesce(array_to_string(p.proconfig, ','), ''))
                       from pg_proc p join pg_namespace n on n.oid = p.pronamespace
                      where n.nspname = $2 order by p.proname),
               array(select p.prosrc from pg_proc p join pg_namespace n on n.oid = p.pronamespace
                      where n.nspname = $2 order by p.proname),
               coalesce(has_table_privilege($1, $3,
                        'update, delete, truncate, trigger, references'), true),
               coalesce(has_schema_privilege($1, $2, 'create'), true),
               pg_has_role($1, 'portico_audit', 'member'),
               (select pg_get_userbyid(c.relowner) from pg_class c
                 where c.oid = to_regclass($4) and c.relkind = 'r'),
               coalesce(has_table_privilege($1, $4, 'delete, truncate, trigger, references'),
                        true)
                 or coalesce(has_column_privilege($1, $4, 'ref', 'update'), true)",
            &[&tenant_role, &schema, &table, &values],
        )
        .await
        .map_err(|e| pg_err("checking the audit log's protection", e))?;
    let mut problems = Vec::new();
    let owner = |i: usize| row.get::<_, Option<String>>(i);
    match owner(0).as_deref() {
        Some(AUDIT_ROLE) => {}
        Some(o) => problems.push(format!("schema {schema} is owned by {o}")),
        None => problems.push(format!("schema {schema} is missing")),
    }
    match owner(1).as_deref() {
        Some(AUDIT_ROLE) => {}
        Some(o) => problems.push(format!("table {schema}.audit_events is owned by {o}")),
        None => problems.push(format!("table {schema}.audit_events is missing")),
    }
    let mut expect = |column: usize, what: &str, layout: &str, expected: &[String]| {
        let found: Vec<String> = row.get(column);
        if found != expected {
            problems.push(format!(
                "the audit {what} are [{}], expected [{}] ({layout})",
                found.join("; "),
                expected.join("; ")
            ));
        }
    };
    expect(
        2,
        "triggers",
        "name:enabled:function",
        &[
            format!("audit_events_chain:O:{}", f("audit_events_chain")),
            format!(
                "audit_events_no_truncate:O:{}",
                f("audit_events_append_only")
            ),
            format!("audit_events_no_update:O:{}", f("audit_events_append_only")),
        ],
    );
    expect(
        3,
        "functions",
        "name:owner:security:settings",
        &[
            "audit_events_append_only:portico_audit:invoker:search_path=pg_catalog, pg_temp".into(),
            "audit_events_chain:portico_audit:definer:search_path=pg_catalog, pg_temp".into(),
        ],
    );
    let bodies: Vec<String> = row.get(4);
    let shipped: String = migrations::shipped()
        .iter()
        .filter_map(|m| m.sql())
        .map(|sql| target.sql_of(sql))
        .collect();
    if bodies.iter().any(|b| !shipped.contains(b.as_str())) {
        problems.push("an audit function's body is not the one the migrations define".into());
    }
    if row.get::<_, bool>(5) {
        problems.push(format!(
            "role {tenant_role} may change {schema}.audit_events"
        ));
    }
    if row.get::<_, bool>(6) {
        problems.push(format!(
            "role {tenant_role} may create objects in schema {schema}"
        ));
    }
    if row.get::<_, bool>(7) {
        problems.push(format!("role {tenant_role} is a member of portico_audit"));
    }
    // The values events refer to: the tenant role adds them, and an erasure replaces them
    // (value, salt, erasure); it can neither delete them nor move a reference.
    match owner(8).as_deref() {
        Some(AUDIT_ROLE) => {}
        Some(o) => problems.push(format!("table {values} is owned by {o}")),
        None => problems.push(format!("table {values} is missing")),
    }
    if row.get::<_, bool>(9) {
        problems.push(format!(
            "role {tenant_role} may delete from {values} or change its references"
        ));
    }
    Ok(problems)
}

/// The role that owns the audit log in every tenant database (created by the migrations).
pub const AUDIT_ROLE: &str = "portico_audit";

/// The last event of a tenant's audit chain (sequence number, hash in hex), read as the admin
/// in the tenant's database (or shared database); `None` for an empty log.
pub async fn audit_head(
    admin_in_db: &Client,
    target: &crate::migrations::Target,
) -> Result<Option<(i64, String)>, ProvisionError> {
    let row = admin_in_db
        .query_opt(
            &format!(
                "select seq, encode(hash, 'hex') from {}.audit_events order by seq desc limit 1",
                ident(&target.audit_schema())
            ),
            &[],
        )
        .await
        .map_err(|e| pg_err("reading the audit chain head", e))?;
    Ok(row.map(|r| (r.get(0), r.get(1))))
}
