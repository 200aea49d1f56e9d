-- Fleet schema migrations, per-tenant feature flags, and the catalog's release window.
-- Expand only (see docs/releases.md): nothing here removes or changes what an older binary
-- reads.

-- The catalog releases applied so far, and the oldest binary release each one still serves.
-- `portico migrate` writes its own release; every binary reads the newest row to decide
-- whether it may run against this catalog.
create table catalog_releases (
    release integer not null constraint catalog_releases_pkey primary key,
    compatible_from integer not null,
    applied_at timestamptz not null default now(),
    constraint catalog_releases_window_check check (compatible_from <= release)
);

-- Canary tenants are migrated first, in a wave of their own.
alter table tenants add column canary boolean not null default false;

-- Schema migration runs: `fleet` runs (one open at a time) and single-tenant runs.
create table migration_runs (
    id uuid not null constraint migration_runs_pkey primary key,
    kind text not null constraint migration_runs_kind_check check (kind in ('fleet', 'tenant')),
    status text not null constraint migration_runs_status_check
        check (status in ('running', 'stopped', 'succeeded', 'failed')),
    target_version integer not null,
    -- What was asked for (server, concurrency, canary, max failures), so a resume keeps it.
    options jsonb not null,
    started_by text not null,
    error text,
    started_at timestamptz not null default now(),
    finished_at timestamptz
);
create unique index migration_runs_one_open_fleet on migration_runs (kind)
    where kind = 'fleet' and status = 'running';
create index migration_runs_started_at_idx on migration_runs (started_at desc);

create table migration_run_tenants (
    run_id uuid not null constraint migration_run_tenants_run_id_fkey
        references migration_runs (id) on delete cascade,
    tenant_id uuid not null constraint migration_run_tenants_tenant_id_fkey
        references tenants (id) on delete cascade,
    -- 0: the canary wave; 1: everyone else.
    wave integer not null,
    state text not null constraint migration_run_tenants_state_check
        check (state in ('pending', 'running', 'succeeded', 'failed', 'skipped')),
    version_before integer,
    version_after integer,
    attempts integer not null default 0,
    duration_ms bigint,
    error text,
    started_at timestamptz,
    finished_at timestamptz,
    constraint migration_run_tenants_pkey primary key (run_id, tenant_id)
);
create index migration_run_tenants_open_idx on migration_run_tenants (run_id, wave)
    where state in ('pending', 'running');

-- Feature flags: a fleet-wide rollout percentage (stable per tenant id) and per-tenant
-- overrides, which win.
create table feature_rollouts (
    flag text not null constraint feature_rollouts_pkey primary key,
    percent integer not null constraint feature_rollouts_percent_check check (percent between 0 and 100),
    updated_at timestamptz not null default now()
);
create table tenant_features (
    tenant_id uuid not null constraint tenant_features_tenant_id_fkey
        references tenants (id) on delete cascade,
    flag text not null,
    enabled boolean not null,
    updated_at timestamptz not null default now(),
    constraint tenant_features_pkey primary key (tenant_id, flag)
);

-- Flag changes reach every instance through the catalog channel. They change what a tenant's
-- route carries, not how its database is reached: `keep_pool` tells the runtime to keep the
-- tenant's connections (older runtimes ignore the field and simply reconnect).
create function portico_notify_features() returns trigger language plpgsql as $$
begin
    if tg_table_name = 'tenant_features' then
        perform pg_notify('portico_catalog', json_build_object(
            'tenant_id', coalesce(new.tenant_id, old.tenant_id), 'keep_pool', true)::text);
    else
        perform pg_notify('portico_catalog', json_build_object('features', true)::text);
    end if;
    return null;
end $$;
create trigger tenant_features_notify after insert or update or delete on tenant_features
    for each row execute function portico_notify_features();
create trigger feature_rollouts_notify after insert or update or delete on feature_rollouts
    for each row execute function portico_notify_features();

-- A tenant's schema version (or canary mark) changing does not change how it is reached
-- either: keep its pool then, drop it for every other change.
create or replace function portico_notify_tenant() returns trigger language plpgsql as $$
begin
    perform pg_notify('portico_catalog', json_build_object(
        'tenant_id', coalesce(new.id, old.id),
        'keep_pool', tg_op = 'UPDATE'
            and old.status = new.status
            and old.key_id is not distinct from new.key_id
            and old.slug = new.slug)::text);
    return null;
end $$;
