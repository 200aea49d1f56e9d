-- Tenant catalog of the Portico control plane. Every constraint is named; the names are
-- mapped to operator-facing errors next to the queries that can violate them.

-- Tenant roles must never reach the catalog. (A warning, not an error, when the migrating
-- user does not own the database.)
do $$ begin
    execute format('revoke connect, temporary on database %I from public', current_database());
end $$;

create table db_servers (
    id uuid not null constraint db_servers_pkey primary key,
    name text not null constraint db_servers_name_key unique,
    -- The admin URL (with its password), encrypted under the control-plane key.
    admin_url_ciphertext bytea not null,
    -- The admin URL without credentials, safe to show.
    display_url text not null,
    max_connections integer not null
        constraint db_servers_max_connections_check check (max_connections > 0),
    created_at timestamptz not null default now()
);

create table tenants (
    id uuid not null constraint tenants_pkey primary key,
    slug text not null constraint tenants_slug_key unique,
    display_name text not null,
    status text not null constraint tenants_status_check
        check (status in ('provisioning', 'active', 'suspended', 'deleting', 'deleted')),
    tier text not null default 'dedicated'
        constraint tenants_tier_check check (tier in ('dedicated', 'shared')),
    -- KMS key id or local key reference; null until the key step has run.
    key_id text,
    storage_prefix text not null,
    schema_version integer,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now()
);

create table tenant_domains (
    hostname text not null constraint tenant_domains_pkey primary key,
    tenant_id uuid not null
        constraint tenant_domains_tenant_id_fkey references tenants (id) on delete cascade,
    kind text not null constraint tenant_domains_kind_check check (kind in ('subdomain', 'custom')),
    is_primary boolean not null default false,
    verified boolean not null default false,
    created_at timestamptz not null default now()
);
create unique index tenant_domains_one_primary on tenant_domains (tenant_id) where is_primary;
create index tenant_domains_tenant_id_idx on tenant_domains (tenant_id);

create table tenant_placements (
    tenant_id uuid not null constraint tenant_placements_pkey primary key
        constraint tenant_placements_tenant_id_fkey references tenants (id) on delete cascade,
    db_server_id uuid not null
        constraint tenant_placements_db_server_id_fkey references db_servers (id),
    database_name text not null,
    role_name text not null,
    -- The role's password, encrypted under the tenant's own key; null until the role step.
    role_password_ciphertext bytea,
    constraint tenant_placements_database_key unique (db_server_id, database_name)
);

create table provisioning_runs (
    id uuid not null constraint provisioning_runs_pkey primary key,
    tenant_id uuid not null
        constraint provisioning_runs_tenant_id_fkey references tenants (id) on delete cascade,
    kind text not null constraint provisioning_runs_kind_check check (kind in ('create')),
    status text not null
        constraint provisioning_runs_status_check check (status in ('running', 'succeeded', 'failed', 'rolling_back')),
    -- What was asked for, so that a re-run can refuse different options.
    request jsonb not null,
    error text,
    started_at timestamptz not null default now(),
    finished_at timestamptz
);
create unique index provisioning_runs_one_open_create
    on provisioning_runs (tenant_id) where kind = 'create';

create table provisioning_steps (
    run_id uuid not null
        constraint provisioning_steps_run_id_fkey references provisioning_runs (id) on delete cascade,
    position integer not null,
    step text not null,
    state text not null
        constraint provisioning_steps_state_check check (state in ('pending', 'running', 'done', 'failed')),
    attempts integer not null default 0,
    error text,
    started_at timestamptz,
    finished_at timestamptz,
    constraint provisioning_steps_pkey primary key (run_id, step)
);
