-- Heads of each tenant's audit chain, recorded periodically and on demand. A tenant database
-- whose chain was rewritten (even consistently, from the first event) no longer holds these
-- hashes at these positions, which `portico audit verify` reports.
create table audit_anchors (
    tenant_id uuid not null constraint audit_anchors_tenant_id_fkey references tenants (id) on delete cascade,
    seq bigint not null,
    hash bytea not null,
    anchored_at timestamptz not null default now(),
    constraint audit_anchors_pkey primary key (tenant_id, seq)
);
