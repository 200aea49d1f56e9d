//! Per-tenant identity: SSO connections (SAML 2.0, OpenID Connect), local accounts with TOTP,
//! browser sessions, and the sign-in pages of tenant hosts and of the shared login host.

pub mod admin;
pub mod connections_api;
pub mod cookies;
pub mod fetch;
pub mod oidc;
pub mod pages;
pub mod return_to;
pub mod saml;
pub mod state;
pub mod web;
