//! Per-tenant identity: SSO connections (SAML 2.0, OpenID Connect), local accounts with TOTP,
//! browser sessions, and the sign-in pages of tenant hosts and of the shared login host.

pub mod admin;
pub(crate) mod connections_api;
pub(crate) mod cookies;
pub mod fetch;
pub mod oidc;
pub(crate) mod pages;
pub(crate) mod return_to;
pub mod saml;
pub(crate) mod state;
pub(crate) mod web;
