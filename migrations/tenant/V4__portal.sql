-- The customer portal: roles as named permission sets, sites (resource scopes), four-eyes
-- approvals, documents with encrypted content and a version chain, time-limited links,
-- service tickets with idempotent creation, and the tamper-evident audit log.

-- Roles. Built-in roles are seeded here and cannot be changed; custom roles are per tenant.
create table roles (
    name text not null constraint roles_pkey primary key
        constraint roles_name_check check (name ~ '^[a-z][a-z0-9_-]{0,39}$'),
    description text not null default '',
    built_in boolean not null default false,
    created_at timestamptz not null default now()
);
create table role_permissions (
    role text not null constraint role_permissions_role_fkey references roles (name) on delete cascade,
    permission text not null constraint role_permissions_permission_check check (permission in (
        'documents.read', 'documents.upload', 'documents.manage', 'tickets.create',
        'tickets.read_all', 'tickets.manage', 'users.manage', 'roles.manage', 'sso.manage',
        'audit.read')),
    constraint role_permissions_pkey primary key (role, permission)
);
insert into roles (name, description, built_in) values
    ('admin', 'Everything in this organization', true),
    ('member', 'Reads documents, opens and follows own tickets', true),
    ('accounting', 'Invoices and contracts: reads, uploads and manages documents', true),
    ('technician', 'Service cases: reads documents, sees and works on all tickets', true);
insert into role_permissions (role, permission)
select 'admin', p from unnest(array['documents.read', 'documents.upload', 'documents.manage',
    'tickets.create', 'tickets.read_all', 'tickets.manage', 'users.manage', 'roles.manage',
    'sso.manage', 'audit.read']) p
union all select 'member', p from unnest(array['documents.read', 'tickets.create']) p
union all select 'accounting', p from unnest(array['documents.read', 'documents.upload',
    'documents.manage', 'tickets.create']) p
union all select 'technician', p from unnest(array['documents.read', 'tickets.create',
    'tickets.read_all', 'tickets.manage']) p;

-- Sites (or projects): optional resource scopes. `site_scope` null means every site.
create table sites (
    code text not null constraint sites_pkey primary key
        constraint sites_code_check check (code ~ '^[a-z0-9][a-z0-9_-]{0,39}$'),
    name text not null,
    created_at timestamptz not null default now()
);

alter table users drop constraint users_role_check,
    add constraint users_role_fkey foreign key (role) references roles (name),
    add column site_scope text[];
alter table invitations drop constraint invitations_role_check,
    add constraint invitations_role_fkey foreign key (role) references roles (name);
alter table sso_connections drop constraint sso_connections_default_role_check,
    add constraint sso_connections_default_role_fkey foreign key (default_role) references roles (name);
-- A token may act for a user: it then has that user's role and sites and stops working the
-- moment the user is deactivated.
alter table api_tokens drop constraint api_tokens_role_check,
    add constraint api_tokens_role_fkey foreign key (role) references roles (name),
    add column user_id uuid constraint api_tokens_user_id_fkey references users (id),
    add column site_scope text[];

-- Four-eyes: actions the tenant marks sensitive wait here for a second admin.
create table approval_policy (
    action text not null constraint approval_policy_pkey primary key
        constraint approval_policy_action_check check (action in (
            'grant_privileged_role', 'change_privileged_role', 'change_sso_connection')),
    required boolean not null
);
insert into approval_policy (action, required) values
    ('grant_privileged_role', true), ('change_privileged_role', true), ('change_sso_connection', true);
create table approvals (
    id uuid not null constraint approvals_pkey primary key,
    action text not null,
    target text not null,
    payload jsonb not null,
    requested_by text not null,
    status text not null default 'pending'
        constraint approvals_status_check check (status in ('pending', 'approved', 'rejected', 'failed')),
    decided_by text,
    decided_at timestamptz,
    outcome text,
    created_at timestamptz not null default now(),
    expires_at timestamptz not null
);
create index approvals_pending_idx on approvals (created_at) where status = 'pending';

-- Tenant-wide secrets (the HMAC key of download links), encrypted under the tenant's key.
create table tenant_secrets (
    name text not null constraint tenant_secrets_pkey primary key,
    ciphertext bytea not null,
    created_at timestamptz not null default now()
);

-- Documents. Content lives in object storage under the tenant's prefix, encrypted with a data
-- key; the wrapped data key and the stream nonce are kept with each version.
create table documents (
    id uuid not null constraint documents_pkey primary key,
    doc_type text not null constraint documents_doc_type_check check (doc_type in (
        'invoice', 'delivery_note', 'contract', 'certificate', 'other')),
    title text not null constraint documents_title_check check (length(title) between 1 and 300),
    period text constraint documents_period_check check (period ~ '^[0-9]{4}(-(0[1-9]|1[0-2]|Q[1-4]))?$'),
    site text constraint documents_site_fkey references sites (code),
    status text not null default 'released'
        constraint documents_status_check check (status in ('draft', 'released', 'archived')),
    retention_until date,
    current_version uuid,
    created_by text not null,
    created_at timestamptz not null default now()
);
create index documents_list_idx on documents (created_at desc, id desc);
create table document_versions (
    id uuid not null constraint document_versions_pkey primary key,
    document_id uuid not null constraint document_versions_document_id_fkey references documents (id),
    version integer not null,
    file_name text not null,
    media_type text not null,
    size bigint not null,
    sha256 bytea not null,
    object_key text not null,
    data_key_wrapped bytea not null,
    data_key_ref text not null,
    nonce bytea not null,
    segment_size integer not null,
    valid_from timestamptz not null default now(),
    valid_until timestamptz,
    replaced_by uuid constraint document_versions_replaced_by_fkey references document_versions (id),
    released_by text,
    released_at timestamptz,
    created_at timestamptz not null default now(),
    constraint document_versions_number_key unique (document_id, version)
);
alter table documents add constraint documents_current_version_fkey
    foreign key (current_version) references document_versions (id);

create table document_links (
    id uuid not null constraint document_links_pkey primary key,
    document_id uuid not null constraint document_links_document_id_fkey references documents (id),
    version_id uuid not null constraint document_links_version_id_fkey references document_versions (id),
    expires_at timestamptz not null,
    created_by text not null,
    created_at timestamptz not null default now(),
    revoked_at timestamptz,
    uses integer not null default 0
);

-- Service tickets.
create table tickets (
    id uuid not null constraint tickets_pkey primary key,
    number bigint generated always as identity constraint tickets_number_key unique,
    title text not null constraint tickets_title_check check (length(title) between 1 and 300),
    description text not null default '',
    site text constraint tickets_site_fkey references sites (code),
    status text not null default 'open' constraint tickets_status_check check (status in (
        'open', 'in_progress', 'waiting_for_customer', 'resolved', 'closed')),
    created_by text not null,
    created_by_user uuid,
    created_by_token uuid,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now()
);
create table ticket_comments (
    id uuid not null constraint ticket_comments_pkey primary key,
    ticket_id uuid not null constraint ticket_comments_ticket_id_fkey references tickets (id),
    author text not null,
    body text not null constraint ticket_comments_body_check check (length(body) between 1 and 20000),
    created_at timestamptz not null default now()
);
create table ticket_attachments (
    ticket_id uuid not null constraint ticket_attachments_ticket_id_fkey references tickets (id),
    document_id uuid not null constraint ticket_attachments_document_id_fkey references documents (id),
    constraint ticket_attachments_pkey primary key (ticket_id, document_id)
);
-- Idempotency-Key records: one per (principal, key); the first request's fingerprint and answer.
create table idempotency_keys (
    principal text not null,
    key text not null,
    request_hash bytea not null,
    status integer,
    response jsonb,
    created_at timestamptz not null default now(),
    constraint idempotency_keys_pkey primary key (principal, key)
);

-- The audit log, rebuilt as a hash chain. (Tenant databases are copies of a template built
-- with every migration applied, so this table is empty whenever this runs.)
drop table audit_events;
create table audit_events (
    seq bigint not null constraint audit_events_pkey primary key,
    at timestamptz not null,
    event_type text not null,
    actor text not null,
    client_ip inet,
    request_id text,
    target text,
    outcome text not null constraint audit_events_outcome_check check (outcome in ('success', 'failure')),
    reason text,
    details jsonb not null default '{}',
    payload_hash bytea not null,
    prev_hash bytea not null,
    hash bytea not null
);
create index audit_events_type_idx on audit_events (event_type, at);

-- Chaining happens under a transaction-scoped lock, with a fresh snapshot per statement, so
-- concurrent inserts are serialised and each links to the one committed before it.
create function audit_events_chain() returns trigger language plpgsql as $$
declare
    last_seq bigint;
    last_hash bytea;
begin
    perform pg_advisory_xact_lock(727368, 1);
    select seq, hash into last_seq, last_hash from audit_events order by seq desc limit 1;
    new.seq := coalesce(last_seq, 0) + 1;
    new.prev_hash := coalesce(last_hash, '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea);
    new.hash := sha256(new.prev_hash || new.payload_hash);
    return new;
end $$;
create function audit_events_append_only() returns trigger language plpgsql as $$
begin
    raise exception 'audit_events is append-only' using errcode = 'insufficient_privilege';
end $$;
create trigger audit_events_chain before insert on audit_events
    for each row execute function audit_events_chain();
create trigger audit_events_no_update before update or delete on audit_events
    for each row execute function audit_events_append_only();
create trigger audit_events_no_truncate before truncate on audit_events
    for each statement execute function audit_events_append_only();

-- The table and its functions belong to a role no tenant is a member of, so the tenant role
-- (which owns everything else here) can insert and read, but cannot update, delete, truncate,
-- drop the triggers or replace the functions.
reset role;
do $$ begin
    create role portico_audit nologin;
exception when duplicate_object or unique_violation then null;
end $$;
alter table audit_events owner to portico_audit;
alter function audit_events_chain() owner to portico_audit;
alter function audit_events_append_only() owner to portico_audit;
revoke all on audit_events from public;
grant select, insert on audit_events to pg_database_owner;
set role pg_database_owner;
