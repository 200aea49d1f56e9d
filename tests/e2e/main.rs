//! End-to-end tests: the real `portico` binary and library against a real PostgreSQL cluster,
//! a SeaweedFS S3 server and moto's KMS endpoint, all started by `infra/test.sh`.

mod idp;
mod support;

mod architecture;
mod bad_input;
mod crash;
mod db_servers;
mod demo;
mod isolation;
mod lifecycle;
mod local_accounts;
mod nginx;
mod pools;
mod routing;
mod sso_admin;
mod sso_oidc;
mod sso_saml;
