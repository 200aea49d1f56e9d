-- Identity state that must be shared by every tenant and every runtime instance.

-- SAML assertion ids already consumed, kept until the assertion expires: a replayed assertion
-- is refused whichever tenant's ACS it is posted to and whichever instance receives it.
create table saml_replay (
    assertion_id text not null constraint saml_replay_pkey primary key,
    tenant_id uuid not null,
    expires_at timestamptz not null
);
create index saml_replay_expires_idx on saml_replay (expires_at);

-- E-mail domains claimed by one tenant's SSO connection, for home-realm discovery on the shared
-- login host. Set by operators (`portico tenant sso claim-domain`).
create table sso_domain_claims (
    domain text not null constraint sso_domain_claims_pkey primary key,
    tenant_id uuid not null references tenants (id) on delete cascade,
    connection_name text not null,
    created_at timestamptz not null default now()
);
