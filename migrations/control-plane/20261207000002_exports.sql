-- Tenant exports asked for through the operator API (or made by a purge with `export_first`):
-- the archive is written to the export directory; this row says who asked, for which
-- recipient, how far it got and where the file is. Expand only (docs/releases.md).
create table tenant_exports (
    id uuid not null constraint tenant_exports_pkey primary key,
    tenant_id uuid not null
        constraint tenant_exports_tenant_id_fkey references tenants (id),
    requested_by text not null,
    -- The age recipient (a public key); null for a plaintext export.
    recipient text,
    status text not null constraint tenant_exports_status_check
        check (status in ('running', 'succeeded', 'failed')),
    -- Progress while running (rows, documents written), the export report when done.
    progress jsonb not null default '{}',
    report jsonb,
    error text,
    file_name text not null,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    finished_at timestamptz
);
create index tenant_exports_tenant_id_idx on tenant_exports (tenant_id, created_at);

-- A deletion may ask for an export to be made before the purge (`export_first`): the purge's
-- first step makes it, and the certificate names its manifest hash.
alter table tenant_deletions add column export_id uuid
    constraint tenant_deletions_export_id_fkey references tenant_exports (id);
