-- The tenant's own profile row: one row per tenant database, written by provisioning as the
-- tenant's role and read by the runtime (GET /api/v1/tenant).
create table tenant_profile (
    singleton boolean not null default true
        constraint tenant_profile_pkey primary key
        constraint tenant_profile_singleton_check check (singleton),
    tenant_id uuid not null,
    slug text not null,
    display_name text not null,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now()
);
