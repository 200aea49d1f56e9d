-- Online moves of a tenant between tiers and servers. Expand only (see docs/releases.md): the
-- previous release ignores the write freeze flag (the freeze is also enforced in the tenant's
-- database, where it revokes the tenant role's write privileges) and never reads move runs.

-- While set, the runtime answers the tenant's writes `503 tenant_moving`; reads go on.
alter table tenants add column write_frozen boolean not null default false;

-- A move is a provisioning run of kind `move`, with its steps in `provisioning_steps`.
alter table provisioning_runs drop constraint provisioning_runs_kind_check;
alter table provisioning_runs add constraint provisioning_runs_kind_check
    check (kind in ('create', 'move'));
alter table provisioning_runs drop constraint provisioning_runs_status_check;
alter table provisioning_runs add constraint provisioning_runs_status_check
    check (status in ('running', 'succeeded', 'failed', 'rolling_back', 'rolled_back'));
create unique index provisioning_runs_one_open_move on provisioning_runs (tenant_id)
    where kind = 'move' and status in ('running', 'failed', 'rolling_back');

-- Where a move comes from and goes to. The destination's shared database (pooled) is chosen
-- when the move is recorded and counts against that database's capacity until the move ends.
create table tenant_moves (
    run_id uuid not null constraint tenant_moves_pkey primary key
        constraint tenant_moves_run_id_fkey references provisioning_runs (id) on delete cascade,
    tenant_id uuid not null
        constraint tenant_moves_tenant_id_fkey references tenants (id) on delete cascade,
    from_tier text not null constraint tenant_moves_from_tier_check
        check (from_tier in ('dedicated', 'pooled')),
    from_db_server_id uuid not null
        constraint tenant_moves_from_db_server_id_fkey references db_servers (id),
    from_database_name text not null,
    from_shared_database_id uuid
        constraint tenant_moves_from_shared_database_id_fkey references shared_databases (id),
    to_tier text not null constraint tenant_moves_to_tier_check
        check (to_tier in ('dedicated', 'pooled')),
    to_db_server_id uuid not null
        constraint tenant_moves_to_db_server_id_fkey references db_servers (id),
    to_database_name text not null,
    to_shared_database_id uuid
        constraint tenant_moves_to_shared_database_id_fkey references shared_databases (id),
    -- A dedicated destination's role password, encrypted under the tenant's key (a pooled
    -- source has none); null until the prepare step has made it.
    to_role_password_ciphertext bytea,
    -- The write privileges the freeze revoked in the source (table, privilege), recorded
    -- before they are revoked, so a rollback grants back exactly these.
    frozen_grants jsonb,
    rows_copied bigint,
    frozen_at timestamptz,
    switched_at timestamptz
);
create index tenant_moves_tenant_id_idx on tenant_moves (tenant_id);
create index tenant_moves_to_shared_database_id_idx on tenant_moves (to_shared_database_id);
