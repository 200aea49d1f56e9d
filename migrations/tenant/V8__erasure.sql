-- Erasure that keeps the audit log verifiable. Personal data leaves the hashed event bodies:
-- every string of an event (actor, target, reason, each string in its details) moves to
-- `audit_values`, and the event keeps a reference `pv:<hex SHA-256(salt ‖ value)>` in its
-- place. Erasing a person replaces their values with a pseudonym and drops the salts; the
-- reference left behind is a commitment nobody can open or guess, and the chain still links.
-- Events recorded before this schema are converted by this migration's data step (their
-- payload hashes, computed over the original strings, stay: format 2); new events hash the
-- references (format 3). See `portico_core::audit_chain::Format`.
reset role;
alter table portico_audit.audit_events
    add column format smallint not null default 1
        constraint audit_events_format_check check (format in (1, 2, 3));
create table portico_audit.audit_values (
    ref text not null constraint audit_values_pkey primary key,
    value text not null,
    -- Null once erased: the reference can no longer be opened.
    salt bytea,
    -- The `person_erased` event that replaced the value.
    erased_seq bigint,
    constraint audit_values_erased_check check ((salt is null) = (erased_seq is not null))
);
-- Equality on values of any length (filters by actor or target).
create index audit_values_value_idx on portico_audit.audit_values using hash (value);
alter table portico_audit.audit_values owner to portico_audit;
revoke all on portico_audit.audit_values from public;
grant select, insert on portico_audit.audit_values to pg_database_owner;
grant update (value, salt, erased_seq) on portico_audit.audit_values to pg_database_owner;
set role pg_database_owner;

-- Erasing a person's data is four-eyes by default.
alter table approval_policy drop constraint approval_policy_action_check,
    add constraint approval_policy_action_check check (action in (
        'grant_privileged_role', 'change_privileged_role', 'change_sso_connection',
        'export_tenant_data', 'erase_person'));
insert into approval_policy (action, required) values ('erase_person', true);
