-- Identity of this tenant's people: users, their sign-in identities, SSO connections, local
-- credentials, invitations, browser sessions, pending sign-in flows, and the audit trail of
-- sign-in events. Everything lives in the tenant's own database.

-- Who may sign in. A user is identified by its identities (connection, subject), never by email.
create table users (
    id uuid not null constraint users_pkey primary key,
    email text not null,
    display_name text not null default '',
    role text not null constraint users_role_check check (role in ('admin', 'member')),
    status text not null default 'active' constraint users_status_check check (status in ('active', 'deactivated')),
    created_at timestamptz not null default now(),
    last_login_at timestamptz
);
create index users_email_idx on users (lower(email));

-- Identity providers of this tenant. `config` holds the protocol settings; OIDC client secrets
-- are stored encrypted under the tenant's key (never in `config`).
create table sso_connections (
    id uuid not null constraint sso_connections_pkey primary key,
    name text not null constraint sso_connections_name_key unique,
    kind text not null constraint sso_connections_kind_check check (kind in ('saml', 'oidc')),
    config jsonb not null,
    secret_ciphertext bytea,
    default_role text not null constraint sso_connections_default_role_check check (default_role in ('admin', 'member')),
    role_mappings jsonb not null default '[]',
    created_at timestamptz not null default now()
);

-- (connection, subject) -> user. `connection_id` null is the local-account identity.
create table user_identities (
    user_id uuid not null references users (id) on delete cascade,
    connection_id uuid references sso_connections (id) on delete cascade,
    subject text not null,
    created_at timestamptz not null default now()
);
create unique index user_identities_sso_key on user_identities (connection_id, subject) where connection_id is not null;
create unique index user_identities_local_key on user_identities (lower(subject)) where connection_id is null;

-- Local accounts: argon2id hash (PHC string), optional TOTP secret (encrypted under the
-- tenant's key), failure counter and lock for backoff.
create table local_credentials (
    user_id uuid not null constraint local_credentials_pkey primary key references users (id) on delete cascade,
    password_hash text not null,
    totp_secret_ciphertext bytea,
    totp_enabled boolean not null default false,
    totp_last_step bigint,
    failed_attempts integer not null default 0,
    locked_until timestamptz,
    updated_at timestamptz not null default now()
);

-- Single-use, expiring invitations; only the SHA-256 of the token is kept.
create table invitations (
    id uuid not null constraint invitations_pkey primary key,
    email text not null,
    role text not null constraint invitations_role_check check (role in ('admin', 'member')),
    token_hash bytea not null constraint invitations_token_hash_key unique,
    created_at timestamptz not null default now(),
    expires_at timestamptz not null,
    accepted_at timestamptz,
    accepted_by uuid references users (id)
);

-- Browser sessions; only the SHA-256 of the cookie value is kept. `mfa_pending` sessions have
-- passed the password and wait for the second factor: they authorise nothing else.
create table sessions (
    id_hash bytea not null constraint sessions_pkey primary key,
    user_id uuid not null references users (id) on delete cascade,
    csrf_token text not null,
    mfa_pending boolean not null default false,
    connection_id uuid references sso_connections (id) on delete cascade,
    created_at timestamptz not null default now(),
    last_seen_at timestamptz not null default now(),
    expires_at timestamptz not null,
    client_ip inet
);
create index sessions_user_idx on sessions (user_id);
create index sessions_expires_idx on sessions (expires_at);

-- A browser's pre-login state (cookie `__Host-portico_flow`): its CSRF token, and the sign-in
-- requests it started. `state`/`nonce`/`InResponseTo` are single-use: consumed atomically.
create table login_flows (
    id_hash bytea not null constraint login_flows_pkey primary key,
    csrf_token text not null,
    created_at timestamptz not null default now(),
    expires_at timestamptz not null
);
create index login_flows_expires_idx on login_flows (expires_at);
create table login_requests (
    id text not null constraint login_requests_pkey primary key,
    flow_hash bytea not null references login_flows (id_hash) on delete cascade,
    connection_id uuid not null references sso_connections (id) on delete cascade,
    nonce text,
    pkce_verifier text,
    return_to text not null default '/',
    created_at timestamptz not null default now(),
    expires_at timestamptz not null
);
create index login_requests_flow_idx on login_requests (flow_hash);

-- Sign-in events and other security-relevant actions, newest last.
create table audit_events (
    id bigint generated always as identity constraint audit_events_pkey primary key,
    at timestamptz not null default now(),
    event_type text not null,
    actor text not null,
    client_ip inet,
    request_id text,
    target text,
    outcome text not null constraint audit_events_outcome_check check (outcome in ('success', 'failure')),
    reason text,
    details jsonb not null default '{}'
);
create index audit_events_type_idx on audit_events (event_type, at);
