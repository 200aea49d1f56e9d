//! End-to-end tests: the real `portico` binary and library against a real PostgreSQL cluster,
//! a SeaweedFS S3 server and moto's KMS endpoint, all started by `infra/test.sh`.

mod archive;
mod idp;
mod portal;
mod support;

mod access;
mod architecture;
mod audit_log;
mod bad_input;
mod crash;
mod db_servers;
mod deletion;
mod demo;
mod documents;
mod erasure;
mod export;
mod fleet;
mod hardening;
mod isolation;
mod lifecycle;
mod local_accounts;
mod moves;
mod nginx;
mod openapi;
mod personal_data;
mod pooled;
mod pools;
mod records;
mod routing;
mod sso_admin;
mod sso_oidc;
mod sso_saml;
mod tenant_exports;
mod tickets;
mod tls;
