//! Managing SSO connections: shared by the CLI (`portico tenant sso …`) and the tenant admin
//! API (`/api/v1/sso/connections`). Everything is validated before anything is stored.

use portico_core::TenantId;
use portico_core::keys::{Keyring, TenantKeyRef};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use tokio_postgres::Client;

use super::fetch::Fetcher;
use super::{oidc, saml};
use crate::error::RuntimeError;
use crate::store::connections::{self, Connection, OidcConfig, Protocol, RoleMapping};
use crate::store::tokens::TokenRole as Role;

/// A connection to create, as the CLI and the API describe it.
#[derive(Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum NewConnection {
    Saml {
        name: String,
        metadata_xml: Option<String>,
        metadata_url: Option<String>,
        #[serde(default)]
        allow_idp_initiated: bool,
        default_role: Option<Role>,
        #[serde(default)]
        map_group: Vec<String>,
        group_attribute: Option<String>,
    },
    Oidc {
        name: String,
        issuer: String,
        client_id: String,
        client_secret: SecretString,
        default_role: Option<Role>,
        #[serde(default)]
        map_claim: Vec<String>,
    },
}

/// Validates and stores a new connection. SAML metadata must carry a signing certificate; OIDC
/// discovery must answer with exactly the configured issuer.
pub async fn create(
    client: &Client,
    keyring: &Keyring,
    tenant: TenantId,
    key: &TenantKeyRef,
    fetcher: &Fetcher,
    new: NewConnection,
) -> Result<Connection, RuntimeError> {
    let invalid = |m: String| RuntimeError::InvalidInput(m);
    match new {
        NewConnection::Saml {
            name,
            metadata_xml,
            metadata_url,
            allow_idp_initiated,
            default_role,
            map_group,
            group_attribute,
        } => {
            let group_attribute = group_attribute.unwrap_or_else(|| "groups".into());
            // Cheap checks first: nothing is fetched for a request that is wrong anyway.
            let mappings = map_group
                .iter()
                .map(|m| RoleMapping::parse(m, &group_attribute))
                .collect::<Result<Vec<_>, _>>()?;
            let xml = match (metadata_xml, &metadata_url) {
                (Some(x), None) => x,
                (None, Some(url)) => {
                    let bytes = fetcher
                        .get(url, saml::MAX_METADATA_BYTES)
                        .await
                        .map_err(|e| invalid(e.to_string()))?;
                    String::from_utf8(bytes)
                        .map_err(|_| invalid("the metadata is not UTF-8".into()))?
                }
                _ => {
                    return Err(invalid(
                        "give exactly one of the metadata document and the metadata URL".into(),
                    ));
                }
            };
            let cfg = saml::config_from_metadata(
                xml,
                metadata_url,
                allow_idp_initiated,
                group_attribute.clone(),
            )
            .map_err(|e| invalid(format!("the IdP metadata is refused: {e}")))?;
            connections::create(
                client,
                &name,
                &Protocol::Saml(cfg),
                None,
                default_role.unwrap_or(Role::Member),
                &mappings,
            )
            .await
        }
        NewConnection::Oidc {
            name,
            issuer,
            client_id,
            client_secret,
            default_role,
            map_claim,
        } => {
            if client_id.trim().is_empty() || client_id.len() > 255 {
                return Err(invalid("a client id is 1 to 255 characters".into()));
            }
            if client_secret.expose_secret().is_empty() {
                return Err(invalid("the client secret is empty".into()));
            }
            let mappings = map_claim
                .iter()
                .map(|m| RoleMapping::parse(m, "groups"))
                .collect::<Result<Vec<_>, _>>()?;
            fetcher
                .check_url(&issuer)
                .map_err(|e| invalid(e.to_string()))?;
            oidc::discover(fetcher, &issuer)
                .await
                .map_err(|e| invalid(format!("OIDC discovery failed: {e}")))?;
            let ciphertext = keyring
                .encrypt_for_tenant(tenant, key, client_secret.expose_secret().as_bytes())
                .await?;
            connections::create(
                client,
                &name,
                &Protocol::Oidc(OidcConfig { issuer, client_id }),
                Some(&ciphertext),
                default_role.unwrap_or(Role::Member),
                &mappings,
            )
            .await
        }
    }
}
