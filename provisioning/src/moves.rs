//! Building blocks of an online tenant move (the control plane's `moves` module orders them):
//! freezing the source's writes in PostgreSQL itself, copying a tenant between two targets
//! (any tier, any server) with its sequences, and verifying the copy by row counts and
//! checksums.
//!
//! The freeze does not depend on every runtime instance having heard of it: it revokes the
//! tenant role's write privileges on its tables (after taking `EXCLUSIVE` locks, which wait for
//! running writes and let reads through), so a write that arrives late fails with SQLSTATE
//! `42501` instead of landing in the source after the copy. What was revoked is returned first
//! (to be recorded), so an undo grants back exactly that.

use futures_util::{SinkExt, StreamExt};
use postgres_protocol::escape::escape_identifier as ident;
use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

use crate::migrations::Target;
use crate::{ProvisionError, pg_err};

/// A write privilege of the tenant's role on one of its tables, as the freeze found it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteGrant {
    pub schema: String,
    pub table: String,
    /// `INSERT`, `UPDATE`, `DELETE` or `TRUNCATE`.
    pub privilege: String,
}

/// The role a target's privileges are granted to: the database owner's (dedicated: the tenant
/// role acts through `pg_database_owner`) or the tenant role itself (pooled).
pub fn grantee(target: &Target) -> String {
    match target {
        Target::Database => "pg_database_owner".into(),
        Target::Schema { role, .. } => role.clone(),
    }
}

fn schemas_of(target: &Target) -> [String; 2] {
    [target.schema().to_owned(), target.audit_schema()]
}

fn qualified(schema: &str, table: &str) -> String {
    format!("{}.{}", ident(schema), ident(table))
}

/// The tenant's tables (schema and audit schema), in a stable order.
/// The tenant's tables (schema, name): its data schema's, then its audit schema's.
pub async fn tenant_tables(
    client: &impl tokio_postgres::GenericClient,
    target: &Target,
) -> Result<Vec<(String, String)>, ProvisionError> {
    let rows = client
        .query(
            "select n.nspname::text, c.relname::text from pg_class c
               join pg_namespace n on n.oid = c.relnamespace
              where n.nspname = any($1) and c.relkind in ('r', 'p')
              order by n.nspname = $2, c.relname",
            &[&schemas_of(target).to_vec(), &target.audit_schema()],
        )
        .await
        .map_err(|e| pg_err("listing the tenant's tables", e))?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Freezes the tenant's writes in the source: waits (at most `lock_wait_ms`) for running
/// writes to finish while reads go on, hands the write privileges it is about to revoke to
/// `record` (which returns the list to revoke: the one recorded by an earlier, interrupted
/// attempt wins), revokes them, and commits. Idempotent.
pub async fn freeze<F, Fut, E>(
    client: &mut Client,
    target: &Target,
    lock_wait_ms: u32,
    record: F,
) -> Result<Vec<WriteGrant>, E>
where
    F: FnOnce(Vec<WriteGrant>) -> Fut,
    Fut: std::future::Future<Output = Result<Vec<WriteGrant>, E>>,
    E: From<ProvisionError>,
{
    let grantee = grantee(target);
    let tx = client
        .transaction()
        .await
        .map_err(|e| pg_err("starting the freeze", e))?;
    let all = tenant_tables(&tx, target).await?;
    if all.is_empty() {
        return Err(ProvisionError::Conflict("the source holds no tenant tables".into()).into());
    }
    let list = all
        .iter()
        .map(|(s, t)| qualified(s, t))
        .collect::<Vec<_>>()
        .join(", ");
    tx.batch_execute(&format!(
        "set local lock_timeout = '{lock_wait_ms}ms'; lock table {list} in exclusive mode"
    ))
    .await
    .map_err(|e| pg_err("waiting for the tenant's running writes", e))?;
    let found = tx
        .query(
            "select n.nspname::text, c.relname::text, a.privilege_type::text from pg_class c
               join pg_namespace n on n.oid = c.relnamespace,
               lateral aclexplode(coalesce(c.relacl, acldefault('r', c.relowner))) a
              where n.nspname = any($1) and c.relkind in ('r', 'p')
                and a.grantee = $2::text::regrole
                and a.privilege_type in ('INSERT', 'UPDATE', 'DELETE', 'TRUNCATE')
              order by 1, 2, 3",
            &[&schemas_of(target).to_vec(), &grantee],
        )
        .await
        .map_err(|e| pg_err("reading the tenant's write privileges", e))?
        .iter()
        .map(|r| WriteGrant {
            schema: r.get(0),
            table: r.get(1),
            privilege: r.get(2),
        })
        .collect();
    let recorded = record(found).await?;
    let sql: String = recorded
        .iter()
        .map(|g| {
            Ok(format!(
                "revoke {} on {} from {};",
                privilege(&g.privilege)?,
                qualified(&g.schema, &g.table),
                ident(&grantee)
            ))
        })
        .collect::<Result<_, ProvisionError>>()?;
    tx.batch_execute(&sql)
        .await
        .map_err(|e| pg_err("revoking the tenant's write privileges", e))?;
    tx.commit()
        .await
        .map_err(|e| pg_err("committing the freeze", e))?;
    Ok(recorded)
}

/// Grants back what [`freeze`] revoked (an undone move). Idempotent; tables gone since are
/// skipped.
pub async fn unfreeze(
    client: &Client,
    target: &Target,
    grants: &[WriteGrant],
) -> Result<(), ProvisionError> {
    let grantee = grantee(target);
    let present = tenant_tables(client, target).await?;
    let sql: String = grants
        .iter()
        .filter(|g| present.contains(&(g.schema.clone(), g.table.clone())))
        .map(|g| {
            Ok(format!(
                "grant {} on {} to {};",
                privilege(&g.privilege)?,
                qualified(&g.schema, &g.table),
                ident(&grantee)
            ))
        })
        .collect::<Result<_, ProvisionError>>()?;
    client
        .batch_execute(&sql)
        .await
        .map_err(|e| pg_err("granting back the tenant's write privileges", e))
}

/// Only the four privileges the freeze revokes ever reach SQL.
fn privilege(p: &str) -> Result<&'static str, ProvisionError> {
    Ok(match p {
        "INSERT" => "insert",
        "UPDATE" => "update",
        "DELETE" => "delete",
        "TRUNCATE" => "truncate",
        other => {
            return Err(ProvisionError::Conflict(format!(
                "unexpected privilege '{other}' in a recorded freeze"
            )));
        }
    })
}

/// What a copy moved, and what both sides agreed on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CopyReport {
    pub tables: usize,
    pub rows: i64,
    pub sequences: usize,
}

/// Session settings both sides format rows under, so that checksums of equal rows agree.
const CANONICAL: &str = "set local timezone = 'UTC'; set local datestyle = 'ISO, YMD';
     set local intervalstyle = 'postgres'; set local extra_float_digits = 3;
     set local bytea_output = 'hex'";

/// One consistent, read-only snapshot of a database (`REPEATABLE READ`), with the session
/// settings that make every value's text form the same on any server (UTC, ISO dates, full
/// float precision, hex `bytea`): what copies, fingerprints and exports read from.
pub async fn snapshot(
    client: &mut Client,
) -> Result<tokio_postgres::Transaction<'_>, ProvisionError> {
    let tx = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(|e| pg_err("opening a snapshot", e))?;
    tx.batch_execute(CANONICAL)
        .await
        .map_err(|e| pg_err("preparing a snapshot", e))?;
    Ok(tx)
}

/// Copies every table and sequence value of the tenant from `src` (a connection to the source
/// database, as an admin allowed to read the tenant's tables) to `dst` (the destination
/// database, as an admin allowed to set `session_replication_role`), replacing whatever the
/// destination held, then compares row counts and checksums table by table. The destination
/// commits only if all agree; the source is only read, from one snapshot.
pub async fn copy_tenant(
    src: &mut Client,
    src_target: &Target,
    dst: &mut Client,
    dst_target: &Target,
) -> Result<CopyReport, ProvisionError> {
    let src_tx = snapshot(src).await?;
    let dst_tx = dst
        .transaction()
        .await
        .map_err(|e| pg_err("starting the destination copy", e))?;
    // Triggers (the audit chain's among them) and foreign-key checks stay off: the rows are
    // copies of rows that passed them, hashes and all.
    dst_tx
        .batch_execute(&format!(
            "{CANONICAL}; set local session_replication_role = replica"
        ))
        .await
        .map_err(|e| pg_err("preparing the destination copy", e))?;
    let map_schema = |s: &str| {
        if s == src_target.schema() {
            dst_target.schema().to_owned()
        } else {
            dst_target.audit_schema()
        }
    };
    let src_tables = tenant_tables(&src_tx, src_target).await?;
    let dst_tables = tenant_tables(&dst_tx, dst_target).await?;
    let wanted: Vec<(String, String)> = src_tables
        .iter()
        .map(|(s, t)| (map_schema(s), t.clone()))
        .collect();
    if wanted != dst_tables {
        return Err(ProvisionError::Conflict(
            "the destination's tables differ from the source's; are both at the same schema version?"
                .into(),
        ));
    }
    dst_tx
        .batch_execute(&format!(
            "truncate table {}",
            dst_tables
                .iter()
                .map(|(s, t)| qualified(s, t))
                .collect::<Vec<_>>()
                .join(", ")
        ))
        .await
        .map_err(|e| pg_err("emptying the destination", e))?;
    let mut report = CopyReport::default();
    for ((ss, t), (ds, _)) in src_tables.iter().zip(&dst_tables) {
        let columns = copy_columns(&src_tx, ss, t).await?;
        let out = src_tx
            .copy_out(&format!(
                "copy (select {columns} from {}) to stdout (format binary)",
                qualified(ss, t)
            ))
            .await
            .map_err(|e| pg_err("reading a source table", e))?;
        let sink = dst_tx
            .copy_in(&format!(
                "copy {} ({columns}) from stdin (format binary)",
                qualified(ds, t)
            ))
            .await
            .map_err(|e| pg_err("writing a destination table", e))?;
        futures_util::pin_mut!(out);
        futures_util::pin_mut!(sink);
        while let Some(chunk) = out.next().await {
            let chunk = chunk.map_err(|e| pg_err("reading a source table", e))?;
            sink.feed(chunk)
                .await
                .map_err(|e| pg_err("writing a destination table", e))?;
        }
        let copied = sink
            .as_mut()
            .finish()
            .await
            .map_err(|e| pg_err("writing a destination table", e))?;
        report.tables += 1;
        report.rows += i64::try_from(copied).unwrap_or(i64::MAX);
    }
    let sequences = src_tx
        .query(
            "select n.nspname::text, c.relname::text from pg_class c
               join pg_namespace n on n.oid = c.relnamespace
              where n.nspname = any($1) and c.relkind = 'S' order by 1, 2",
            &[&schemas_of(src_target).to_vec()],
        )
        .await
        .map_err(|e| pg_err("listing the tenant's sequences", e))?;
    for r in &sequences {
        let (s, name): (String, String) = (r.get(0), r.get(1));
        let state = src_tx
            .query_one(
                &format!("select last_value, is_called from {}", qualified(&s, &name)),
                &[],
            )
            .await
            .map_err(|e| pg_err("reading a sequence", e))?;
        let (last, called): (i64, bool) = (state.get(0), state.get(1));
        dst_tx
            .execute(
                "select setval($1::text::regclass, $2, $3)",
                &[&qualified(&map_schema(&s), &name), &last, &called],
            )
            .await
            .map_err(|e| pg_err("setting a sequence", e))?;
        report.sequences += 1;
    }
    for ((ss, t), (ds, _)) in src_tables.iter().zip(&dst_tables) {
        let a = checksum(&src_tx, ss, t).await?;
        let b = checksum(&dst_tx, ds, t).await?;
        if a != b {
            return Err(ProvisionError::Conflict(format!(
                "table {t}: the copy has {} rows (checksum {}), the source {} rows (checksum {})",
                b.0, b.1, a.0, a.1
            )));
        }
    }
    dst_tx
        .commit()
        .await
        .map_err(|e| pg_err("committing the copy", e))?;
    src_tx
        .commit()
        .await
        .map_err(|e| pg_err("closing the source snapshot", e))?;
    Ok(report)
}

/// The columns a copy carries: all but generated ones, in table order.
async fn copy_columns(
    client: &impl tokio_postgres::GenericClient,
    schema: &str,
    table: &str,
) -> Result<String, ProvisionError> {
    let rows = client
        .query(
            "select a.attname::text from pg_attribute a
              where a.attrelid = $1::text::regclass and a.attnum > 0 and not a.attisdropped
                and a.attgenerated = ''
              order by a.attnum",
            &[&qualified(schema, table)],
        )
        .await
        .map_err(|e| pg_err("listing a table's columns", e))?;
    Ok(rows
        .iter()
        .map(|r| ident(r.get::<_, &str>(0)))
        .collect::<Vec<_>>()
        .join(", "))
}

/// A table's row count and an order-independent checksum of its rows' text.
pub async fn checksum(
    client: &impl tokio_postgres::GenericClient,
    schema: &str,
    table: &str,
) -> Result<(i64, String), ProvisionError> {
    let row = client
        .query_one(
            &format!(
                "select count(*)::int8, coalesce(sum(hashtextextended(t::text, 0)::numeric), 0)::text
                   from {} as t",
                qualified(schema, table)
            ),
            &[],
        )
        .await
        .map_err(|e| pg_err("checksumming a table", e))?;
    Ok((row.get(0), row.get(1)))
}

/// Whether this admin session may turn triggers off for a copy (superuser, or granted `SET` on
/// `session_replication_role`), checked before a move records anything.
pub async fn can_copy(client: &Client) -> Result<bool, ProvisionError> {
    client
        .query_one(
            "select has_parameter_privilege(current_user, 'session_replication_role', 'SET')",
            &[],
        )
        .await
        .map(|r| r.get(0))
        .map_err(|e| pg_err("checking the admin's rights", e))
}

/// Gives a pooled destination's shared database access to the tenant role without changing
/// the role (on the source's server it may still be the dedicated source's login role).
pub async fn grant_to_pool(
    admin: &Client,
    pool_role: &str,
    role: &str,
) -> Result<(), ProvisionError> {
    admin
        .batch_execute(&format!(
            "do $$ begin
               create role {r};
             exception when duplicate_object then null;
             end $$;
             grant {r} to {p};",
            r = ident(role),
            p = ident(pool_role),
        ))
        .await
        .map_err(|e| pg_err("creating the tenant role", e))
}

/// Takes the pool role's membership in the tenant role away (the tenant left that shared
/// database but its role lives on in this cluster). Accepts either role gone.
pub async fn revoke_from_pool(
    admin: &Client,
    pool_role: &str,
    role: &str,
) -> Result<(), ProvisionError> {
    admin
        .batch_execute(&format!(
            "do $$ begin
               execute format('revoke %I from %I', {r}, {p});
             exception when undefined_object then null;
             end $$;",
            r = postgres_protocol::escape::escape_literal(role),
            p = postgres_protocol::escape::escape_literal(pool_role),
        ))
        .await
        .map_err(|e| pg_err("revoking the pool role's membership", e))
}

/// Makes a dedicated tenant's login role a pooled tenant's NOLOGIN role (it left its own
/// database for a schema of a shared one on the same server).
pub async fn disable_login(admin: &Client, role: &str) -> Result<(), ProvisionError> {
    admin
        .batch_execute(&format!(
            "do $$ begin
               execute format('alter role %I with nologin password null', {r});
             exception when undefined_object then null;
             end $$;",
            r = postgres_protocol::escape::escape_literal(role),
        ))
        .await
        .map_err(|e| pg_err("disabling the tenant role's login", e))
}

/// Drops a pooled tenant's two schemas in a shared database (nothing else there). Accepts them
/// gone, and the database gone.
pub async fn drop_schemas(in_shared_db: &Client, target: &Target) -> Result<(), ProvisionError> {
    in_shared_db
        .batch_execute(&format!(
            "drop schema if exists {} cascade; drop schema if exists {} cascade",
            ident(&target.audit_schema()),
            ident(target.schema()),
        ))
        .await
        .map_err(|e| pg_err("dropping the tenant schema", e))
}

/// Row count and checksum of every table of a tenant, named `data.<table>` or
/// `audit.<table>` (so two tiers compare), read from one snapshot: what a verified copy keeps.
pub async fn fingerprint(
    client: &mut Client,
    target: &Target,
) -> Result<Vec<(String, i64, String)>, ProvisionError> {
    table_stats(client, target, true).await
}

/// Row count of every table of a tenant (named as by [`fingerprint`]), from one snapshot,
/// without checksumming the rows.
pub async fn row_counts(
    client: &mut Client,
    target: &Target,
) -> Result<Vec<(String, i64)>, ProvisionError> {
    Ok(table_stats(client, target, false)
        .await?
        .into_iter()
        .map(|(t, n, _)| (t, n))
        .collect())
}

async fn table_stats(
    client: &mut Client,
    target: &Target,
    checksums: bool,
) -> Result<Vec<(String, i64, String)>, ProvisionError> {
    let tx = snapshot(client).await?;
    let mut out = Vec::new();
    for (s, t) in tenant_tables(&tx, target).await? {
        let (rows, sum) = if checksums {
            checksum(&tx, &s, &t).await?
        } else {
            let n: i64 = tx
                .query_one(
                    &format!("select count(*)::int8 from {}", qualified(&s, &t)),
                    &[],
                )
                .await
                .map_err(|e| pg_err("counting a table's rows", e))?
                .get(0);
            (n, String::new())
        };
        let side = if s == target.schema() {
            "data"
        } else {
            "audit"
        };
        out.push((format!("{side}.{t}"), rows, sum));
    }
    // Ended here, not on drop: a dropped transaction's rollback waits for the connection to
    // be polled again.
    tx.commit()
        .await
        .map_err(|e| pg_err("closing a snapshot", e))?;
    out.sort();
    Ok(out)
}
