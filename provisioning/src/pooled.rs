//! The pooled tier: tenants as schemas of a shared tenant database.
//!
//! A shared database `p_<id>` holds many tenants. Each has
//! - a NOLOGIN role `t_<id>` owning its schema `t_<id>` (the same objects a dedicated tenant
//!   database holds, created by the same migrations, `migrations::Target::Schema`), and
//! - an audit schema `t_<id>_audit` owned by `portico_audit`, in which the tenant role may only
//!   read and append (as in a dedicated database).
//!
//! The runtime logs in as the database's pool role `p_<id>` (same name as the database, so the
//! `samerole` rule of `pg_hba.conf` confines it there). The pool role is `NOINHERIT`: it holds
//! no privilege of its own, only membership in its tenants' roles, which it uses by `SET ROLE`
//! inside each transaction. `PUBLIC` has nothing on the database or its `public` schema, so
//! outside a tenant's context the pool role can read nothing but the system catalogs.
//!
//! Every function here is idempotent (it accepts what an interrupted run left).

use postgres_protocol::escape::escape_identifier as ident;
use secrecy::{ExposeSecret, SecretString};
use tokio_postgres::Client;
use uuid::Uuid;

use crate::database::{
    LoginRole, RoleLimits, TenantDbNames, TenantProfile, ensure_login_role, seed_profile,
};
use crate::migrations::{self, Target};
use crate::server::DbServer;
use crate::{ProvisionError, pg_err};

/// Names of a shared database and its pool role (the same name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedDbNames {
    pub database: String,
    pub pool_role: String,
}

impl SharedDbNames {
    pub fn for_id(id: Uuid) -> Self {
        let name = format!("p_{}", id.simple());
        Self {
            database: name.clone(),
            pool_role: name,
        }
    }
}

/// A pooled tenant's migration target (schema and role named after the tenant).
pub fn target_of(names: &TenantDbNames) -> Target {
    Target::Schema {
        schema: names.role.clone(),
        role: names.role.clone(),
    }
}

/// Creates the shared database and its pool role, or brings what an interrupted run left to
/// the wanted password and limits. `limits.connection_limit` bounds the pool role's sessions.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn ensure_shared_database(
    server: &DbServer,
    admin: &Client,
    names: &SharedDbNames,
    password: &SecretString,
    limits: RoleLimits,
) -> Result<(), ProvisionError> {
    // Creates of tenants in one shared database run at once: the first makes it, the others
    // wait here (concurrent `CREATE DATABASE`/`ALTER ROLE`/`GRANT` of one object fail rather
    // than wait).
    let key = format!("portico:shared:{}", names.database);
    server
        .cluster_locked(
            admin,
            &key,
            ensure_shared_locked(server, admin, names, password, limits),
        )
        .await
}

async fn ensure_shared_locked(
    server: &DbServer,
    admin: &Client,
    names: &SharedDbNames,
    password: &SecretString,
    limits: RoleLimits,
) -> Result<(), ProvisionError> {
    ensure_login_role(admin, &names.pool_role, password, limits, LoginRole::Pool).await?;
    let created = admin
        .batch_execute(&format!(
            "create database {d} template template0 encoding 'UTF8' strategy wal_log",
            d = ident(&names.database),
        ))
        .await;
    match created {
        Ok(()) => {}
        Err(e) if crate::database::database_exists_now(&e) => {}
        Err(e) => return Err(pg_err("creating the shared database", e)),
    }
    admin
        .batch_execute(&format!(
            "revoke all on database {d} from public; grant connect on database {d} to {r}",
            d = ident(&names.database),
            r = ident(&names.pool_role),
        ))
        .await
        .map_err(|e| pg_err("restricting access to the shared database", e))?;
    let inside = server.admin_in(&names.database).await?;
    inside
        .batch_execute("revoke all on schema public from public")
        .await
        .map_err(|e| pg_err("preparing the shared database", e))?;
    Ok(())
}

/// Creates the tenant's NOLOGIN role and makes the pool role a member of it (usable only by
/// `SET ROLE`: the pool role does not inherit).
#[tracing::instrument(level = "debug", skip_all)]
pub async fn ensure_tenant_role(
    admin: &Client,
    shared: &SharedDbNames,
    names: &TenantDbNames,
) -> Result<(), ProvisionError> {
    admin
        .batch_execute(&format!(
            "do $$ begin
               create role {r};
             exception when duplicate_object then null;
             end $$;
             alter role {r} with nologin nosuperuser nocreatedb nocreaterole inherit noreplication
                 nobypassrls;
             grant {r} to {p};",
            r = ident(&names.role),
            p = ident(&shared.pool_role),
        ))
        .await
        .map_err(|e| pg_err("creating the tenant role", e))
}

/// Creates the tenant's schema (owned by its role) and brings it to the newest tenant
/// migration. The role must exist.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn ensure_tenant_schema(
    server: &DbServer,
    shared: &SharedDbNames,
    names: &TenantDbNames,
) -> Result<i32, ProvisionError> {
    let mut inside = server.admin_in(&shared.database).await?;
    inside
        .batch_execute(&format!(
            "create schema if not exists {s} authorization {r}; revoke all on schema {s} from public",
            s = ident(&names.role),
            r = ident(&names.role),
        ))
        .await
        .map_err(|e| pg_err("creating the tenant schema", e))?;
    let migrated = migrations::migrate(
        &mut inside,
        &target_of(names),
        &migrations::shipped(),
        Default::default(),
    )
    .await
    .map_err(|e| ProvisionError::Migration(e.to_string()))?;
    Ok(migrated.after)
}

/// Logs in as the pool role, switches to the tenant's role and schema the way the runtime
/// does (transaction-locally), writes the tenant's profile row as that role, and returns the
/// schema version found there: proof that password, membership and grants all work.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn verify_and_seed(
    server: &DbServer,
    shared: &SharedDbNames,
    password: &SecretString,
    names: &TenantDbNames,
    profile: &TenantProfile,
) -> Result<i32, ProvisionError> {
    let mut client = server
        .connect_as(
            &shared.database,
            &shared.pool_role,
            password.expose_secret(),
        )
        .await?;
    let tx = client
        .transaction()
        .await
        .map_err(|e| pg_err("starting the tenant check", e))?;
    tx.execute(
        "select set_config('role', $1, true), set_config('search_path', $2, true)",
        &[&names.role, &format!("{}, pg_temp", ident(&names.role))],
    )
    .await
    .map_err(|e| pg_err("switching to the tenant role", e))?;
    let version = seed_profile(&tx, profile).await?;
    tx.commit()
        .await
        .map_err(|e| pg_err("writing the tenant profile as the tenant role", e))?;
    Ok(version)
}

/// Drops a pooled tenant's schemas (ending nothing else: other tenants keep working) and its
/// role. Accepts any of them already gone, and a shared database that was never created.
pub async fn drop_tenant(
    server: &DbServer,
    admin: &Client,
    shared: &SharedDbNames,
    names: &TenantDbNames,
) -> Result<(), ProvisionError> {
    let exists = admin
        .query_one(
            "select exists (select 1 from pg_database where datname = $1)",
            &[&shared.database],
        )
        .await
        .map_err(|e| pg_err("looking up the shared database", e))?
        .get::<_, bool>(0);
    if exists {
        let inside = server.admin_in(&shared.database).await?;
        crate::moves::drop_schemas(&inside, &target_of(names)).await?;
    }
    admin
        .batch_execute(&format!("drop role if exists {r}", r = ident(&names.role)))
        .await
        .map_err(|e| pg_err("dropping the tenant role", e))
}
