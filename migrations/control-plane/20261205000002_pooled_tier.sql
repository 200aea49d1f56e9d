-- The pooled tier: tenants living as a schema of a shared tenant database, beside tenants with
-- a database of their own. Expand only (see docs/releases.md): the previous release reads a
-- pooled tenant's placement as one without a password (it refuses to route it; it never
-- reaches another tenant's data).

-- `shared` was reserved by the first catalog and never written; the tier is called `pooled`.
alter table tenants drop constraint tenants_tier_check;
alter table tenants add constraint tenants_tier_check check (tier in ('dedicated', 'pooled'));

-- A shared tenant database on a server, and the pool role the runtime logs in as. Database
-- and pool role have the same name (`p_<id>`), so `pg_hba.conf`'s `samerole` rule confines the
-- pool role to its database like a tenant role to its own.
create table shared_databases (
    id uuid not null constraint shared_databases_pkey primary key,
    db_server_id uuid not null
        constraint shared_databases_db_server_id_fkey references db_servers (id),
    database_name text not null,
    pool_role text not null,
    -- The pool role's password, encrypted under the control-plane key (bound to this row's
    -- id); null until the first tenant's create has set it.
    pool_password_ciphertext bytea,
    -- Most tenants placed in this database.
    capacity integer not null constraint shared_databases_capacity_check check (capacity > 0),
    created_at timestamptz not null default now(),
    constraint shared_databases_database_key unique (db_server_id, database_name)
);

-- A pooled tenant's placement names its shared database and its schema there.
alter table tenant_placements
    add column shared_database_id uuid
        constraint tenant_placements_shared_database_id_fkey references shared_databases (id),
    add column schema_name text,
    add constraint tenant_placements_tier_check
        check ((shared_database_id is null) = (schema_name is null));
alter table tenant_placements drop constraint tenant_placements_database_key;
create unique index tenant_placements_database_key on tenant_placements (db_server_id, database_name)
    where shared_database_id is null;
create unique index tenant_placements_schema_key on tenant_placements (shared_database_id, schema_name)
    where shared_database_id is not null;
create index tenant_placements_shared_database_id_idx on tenant_placements (shared_database_id);

-- A changed shared database (its pool password) reaches running instances like a changed
-- server: every pool on that server is rebuilt.
create function portico_notify_shared_database() returns trigger language plpgsql as $$
begin
    perform pg_notify('portico_catalog',
        json_build_object('db_server_id', coalesce(new.db_server_id, old.db_server_id))::text);
    return null;
end $$;
create trigger shared_databases_notify after update or delete on shared_databases
    for each row execute function portico_notify_shared_database();
