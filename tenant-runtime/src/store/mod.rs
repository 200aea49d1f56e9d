//! Tenant SQL, one module per area. Every function takes a connection of the tenant it works
//! on (a [`crate::pools::TenantConn`] in the runtime, or a direct login as the tenant's role in
//! the CLI): there is no tenant id parameter to get wrong, the database *is* the tenant.

pub(crate) mod approvals;
pub mod audit;
pub mod connections;
pub(crate) mod documents;
pub mod personal;
pub mod profile;
pub mod roles;
pub(crate) mod sessions;
pub(crate) mod sites;
pub(crate) mod tickets;
pub mod tokens;
pub mod users;
