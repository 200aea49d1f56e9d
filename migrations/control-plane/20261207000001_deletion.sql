-- Tenant deletion: operator four-eyes approvals, the deletion record with its grace period,
-- purge runs, and the platform's signing key (deletion certificates, export manifests).
-- Expand only (see docs/releases.md): the previous release never reads these tables, and a
-- tenant it finds `deleting` it already answers as gone.

-- Requests of one operator that a different operator must approve.
create table operator_approvals (
    id uuid not null constraint operator_approvals_pkey primary key,
    kind text not null constraint operator_approvals_kind_check
        check (kind in ('tenant_deletion')),
    tenant_id uuid not null
        constraint operator_approvals_tenant_id_fkey references tenants (id) on delete cascade,
    -- The operator (token name) who asked, and the token used.
    requested_by text not null,
    requested_by_token uuid not null,
    requested_at timestamptz not null default now(),
    -- What is asked for (reason, grace, overrides), shown to the approver as it is.
    request jsonb not null,
    status text not null constraint operator_approvals_status_check
        check (status in ('pending', 'approved', 'rejected')),
    decided_by text,
    decided_by_token uuid,
    decided_at timestamptz,
    decision_note text,
    constraint operator_approvals_decision_check
        check ((status = 'pending') = (decided_by is null)),
    -- Approved only by another operator (a requester may withdraw: reject their own).
    constraint operator_approvals_other_operator_check
        check (status <> 'approved' or decided_by <> requested_by)
);
create unique index operator_approvals_one_pending
    on operator_approvals (tenant_id, kind) where status = 'pending';

-- A tenant's deletion: approved, restorable until `grace_until`, then purged. Kept after the
-- purge as the tombstone's record, with the signed certificate.
create table tenant_deletions (
    id uuid not null constraint tenant_deletions_pkey primary key,
    tenant_id uuid not null
        constraint tenant_deletions_tenant_id_fkey references tenants (id),
    approval_id uuid not null
        constraint tenant_deletions_approval_id_fkey references operator_approvals (id),
    reason text not null,
    -- A reason to delete although documents are under retention or legal hold.
    override_retention text,
    -- The status the tenant had before (a restore brings it back).
    previous_status text not null constraint tenant_deletions_previous_status_check
        check (previous_status in ('active', 'suspended')),
    requested_by text not null,
    requested_at timestamptz not null,
    approved_by text not null,
    approved_at timestamptz not null,
    grace_until timestamptz not null,
    status text not null constraint tenant_deletions_status_check
        check (status in ('grace', 'purging', 'purged', 'restored')),
    -- What the purge destroyed (tables and rows, objects and bytes, keys), filled step by step.
    inventory jsonb not null default '{}',
    purge_run_id uuid
        constraint tenant_deletions_purge_run_id_fkey references provisioning_runs (id),
    restored_at timestamptz,
    purged_at timestamptz,
    -- The signed deletion certificate (a `portico-signed/1` document).
    certificate jsonb
);
create unique index tenant_deletions_one_open
    on tenant_deletions (tenant_id) where status in ('grace', 'purging');
create index tenant_deletions_due_idx on tenant_deletions (grace_until) where status = 'grace';

-- A purge is a provisioning run of kind `purge`.
alter table provisioning_runs drop constraint provisioning_runs_kind_check;
alter table provisioning_runs add constraint provisioning_runs_kind_check
    check (kind in ('create', 'move', 'purge'));

-- Platform signing keys (Ed25519), the private half encrypted under the control-plane key.
create table signing_keys (
    purpose text not null constraint signing_keys_pkey primary key
        constraint signing_keys_purpose_check check (purpose in ('export-signing')),
    public_key bytea not null,
    private_key_ciphertext bytea not null,
    created_at timestamptz not null default now()
);
