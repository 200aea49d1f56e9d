-- API tokens of this tenant (partners, automation). Only a SHA-256 of the random 256-bit
-- secret is stored, in this tenant's own database: a token can only ever be checked here.
create table api_tokens (
    id uuid not null constraint api_tokens_pkey primary key,
    name text not null,
    role text not null constraint api_tokens_role_check check (role in ('admin', 'member')),
    token_hash bytea not null constraint api_tokens_token_hash_key unique,
    created_at timestamptz not null default now(),
    expires_at timestamptz,
    revoked_at timestamptz
);
create unique index api_tokens_active_name_key on api_tokens (name) where revoked_at is null;
