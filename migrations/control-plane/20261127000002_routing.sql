-- Routing: catalog change notifications for the tenant runtime, operator tokens and the
-- control-plane audit trail.

-- Every change that can alter how a host resolves or how a tenant is reached is announced on
-- channel `portico_catalog`, so running instances drop what they cached (within a second)
-- instead of waiting for their TTL. The payload names what changed; notifications are sent at
-- commit and only if the transaction commits.
create function portico_notify_tenant() returns trigger language plpgsql as $$
begin
    perform pg_notify('portico_catalog',
        json_build_object('tenant_id', coalesce(new.id, old.id))::text);
    return null;
end $$;

create function portico_notify_tenant_child() returns trigger language plpgsql as $$
begin
    if tg_op <> 'INSERT' then
        perform pg_notify('portico_catalog', json_build_object('tenant_id', old.tenant_id)::text);
    end if;
    if tg_op <> 'DELETE' then
        perform pg_notify('portico_catalog', json_build_object('tenant_id', new.tenant_id)::text);
    end if;
    return null;
end $$;

create function portico_notify_domain() returns trigger language plpgsql as $$
begin
    if tg_op <> 'INSERT' then
        perform pg_notify('portico_catalog',
            json_build_object('tenant_id', old.tenant_id, 'hostname', old.hostname)::text);
    end if;
    if tg_op <> 'DELETE' then
        perform pg_notify('portico_catalog',
            json_build_object('tenant_id', new.tenant_id, 'hostname', new.hostname)::text);
    end if;
    return null;
end $$;

create function portico_notify_db_server() returns trigger language plpgsql as $$
begin
    perform pg_notify('portico_catalog',
        json_build_object('db_server_id', coalesce(new.id, old.id))::text);
    return null;
end $$;

create trigger tenants_notify after insert or update or delete on tenants
    for each row execute function portico_notify_tenant();
create trigger tenant_placements_notify after insert or update or delete on tenant_placements
    for each row execute function portico_notify_tenant_child();
create trigger tenant_domains_notify after insert or update or delete on tenant_domains
    for each row execute function portico_notify_domain();
create trigger db_servers_notify after update or delete on db_servers
    for each row execute function portico_notify_db_server();

-- Operator API tokens: only a SHA-256 of the (random, 256-bit) secret is stored.
create table operator_tokens (
    id uuid not null constraint operator_tokens_pkey primary key,
    name text not null,
    token_hash bytea not null constraint operator_tokens_token_hash_key unique,
    created_at timestamptz not null default now(),
    expires_at timestamptz,
    revoked_at timestamptz
);
create unique index operator_tokens_active_name_key on operator_tokens (name)
    where revoked_at is null;

-- Every operator API action: who, what, when, from where, under which request id.
create table operator_audit (
    id bigint generated always as identity constraint operator_audit_pkey primary key,
    at timestamptz not null default now(),
    actor text not null,
    action text not null,
    target text,
    outcome text not null constraint operator_audit_outcome_check
        check (outcome in ('succeeded', 'accepted', 'failed', 'denied')),
    client_ip inet,
    request_id text not null,
    detail jsonb
);
create index operator_audit_at_idx on operator_audit (at);
