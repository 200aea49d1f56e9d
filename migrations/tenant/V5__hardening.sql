-- Hardening: invitations carry the sites of the user they create, and the audit log moves out
-- of the tenant role's reach.

-- The sites an invited user will be limited to (null: every site), copied to the user on
-- acceptance, so a site-limited admin cannot mint an unlimited user by inviting one.
alter table invitations add column site_scope text[];

-- A new TOTP secret waits here for its first code; the active one stays in force until then,
-- so starting a (re-)enrolment can never switch a working second factor off.
alter table local_credentials add column totp_pending_ciphertext bytea;

-- The audit log lives in its own schema, owned (like the table, its functions and its
-- triggers) by `portico_audit`, a role no tenant is a member of. The tenant role owns its
-- database and so `public`: it could create a schema named after itself (first on the default
-- `"$user", public` search path) holding a shadow `audit_events`, or drop `public` with
-- everything in it. It can neither create objects in nor drop this schema. Every reference is
-- schema-qualified, and every function pins its search path, so nothing the tenant role
-- creates is ever resolved in their place.
reset role;
create schema portico_audit authorization portico_audit;
revoke all on schema portico_audit from public;
grant usage on schema portico_audit to pg_database_owner;
alter table public.audit_events set schema portico_audit;
alter function public.audit_events_chain() set schema portico_audit;
alter function public.audit_events_append_only() set schema portico_audit;

-- Chaining runs as `portico_audit` (security definer) with a pinned search path: it reads only
-- the real table, and no operator or function of the tenant's can stand in for the built-ins.
create or replace function portico_audit.audit_events_chain() returns trigger
    language plpgsql security definer set search_path = pg_catalog, pg_temp as $$
declare
    last_seq bigint;
    last_hash bytea;
begin
    perform pg_catalog.pg_advisory_xact_lock(727368, 1);
    select e.seq, e.hash into last_seq, last_hash
      from portico_audit.audit_events e order by e.seq desc limit 1;
    new.seq := coalesce(last_seq, 0) + 1;
    new.prev_hash := coalesce(last_hash, '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea);
    new.hash := pg_catalog.sha256(new.prev_hash operator(pg_catalog.||) new.payload_hash);
    return new;
end $$;
create or replace function portico_audit.audit_events_append_only() returns trigger
    language plpgsql set search_path = pg_catalog, pg_temp as $$
begin
    raise exception 'audit_events is append-only' using errcode = 'insufficient_privilege';
end $$;
alter function portico_audit.audit_events_chain() owner to portico_audit;
alter function portico_audit.audit_events_append_only() owner to portico_audit;
set role pg_database_owner;
