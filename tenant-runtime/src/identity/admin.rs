//! Managing SSO connections: shared by the CLI (`portico tenant sso …`) and the tenant admin
//! API (`/api/v1/sso/connections`). Everything is validated before anything is stored.

use crate::conn::TenantConn;
use portico_core::TenantId;
use portico_core::keys::{Keyring, TenantKeyRef};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use super::fetch::Fetcher;
use super::{oidc, saml};
use crate::error::RuntimeError;
use crate::store::connections::{self, Connection, OidcConfig, Protocol, RoleMapping};
use crate::store::roles::RoleName as Role;

/// A connection to create, as the CLI and the API describe it.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum NewConnection {
    Saml {
        name: String,
        metadata_xml: Option<String>,
        metadata_url: Option<String>,
        #[serde(default)]
        allow_idp_initiated: bool,
        #[schema(value_type = Option<String>)]
        default_role: Option<Role>,
        /// `GROUP=ROLE` (or `attribute:GROUP=ROLE`).
        #[serde(default)]
        map_group: Vec<String>,
        group_attribute: Option<String>,
        /// The IdP verifies the e-mail addresses it asserts (otherwise they are not used).
        #[serde(default)]
        email_authoritative: bool,
    },
    Oidc {
        name: String,
        issuer: String,
        client_id: String,
        #[schema(value_type = String, format = Password)]
        client_secret: SecretString,
        #[schema(value_type = Option<String>)]
        default_role: Option<Role>,
        /// `claim:VALUE=ROLE`.
        #[serde(default)]
        map_claim: Vec<String>,
    },
}

/// A validated connection, ready to store (secrets already encrypted under the tenant's key):
/// what a four-eyes approval keeps until it is approved.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Prepared {
    pub name: String,
    pub protocol: Protocol,
    pub secret_ciphertext: Option<Vec<u8>>,
    pub default_role: Role,
    pub mappings: Vec<RoleMapping>,
}

impl Prepared {
    /// Every role this connection can give.
    pub fn roles(&self) -> Vec<Role> {
        let mut all = vec![self.default_role.clone()];
        all.extend(self.mappings.iter().map(|m| m.role.clone()));
        all
    }

    pub async fn store(&self, client: &TenantConn) -> Result<Connection, RuntimeError> {
        connections::create(
            client,
            &self.name,
            &self.protocol,
            self.secret_ciphertext.as_deref(),
            self.default_role.clone(),
            &self.mappings,
        )
        .await
    }
}

/// Validates and stores a new connection. SAML metadata must carry a signing certificate; OIDC
/// discovery must answer with exactly the configured issuer.
pub async fn create(
    client: &TenantConn,
    keyring: &Keyring,
    tenant: TenantId,
    key: &TenantKeyRef,
    fetcher: &Fetcher,
    new: NewConnection,
) -> Result<Connection, RuntimeError> {
    prepare(client, keyring, tenant, key, fetcher, new)
        .await?
        .store(client)
        .await
}

/// Validates a new connection (fetching and checking its metadata or discovery document) and
/// encrypts its secret, without storing anything.
pub async fn prepare(
    client: &TenantConn,
    keyring: &Keyring,
    tenant: TenantId,
    key: &TenantKeyRef,
    fetcher: &Fetcher,
    new: NewConnection,
) -> Result<Prepared, RuntimeError> {
    let name = match &new {
        NewConnection::Saml { name, .. } | NewConnection::Oidc { name, .. } => name.clone(),
    };
    if !connections::valid_name(&name) {
        return Err(RuntimeError::InvalidInput(format!(
            "'{name}' is not a connection name (1-40 of a-z, 0-9, '-')"
        )));
    }
    if connections::by_name(client, &name).await?.is_some() {
        return Err(RuntimeError::Conflict(format!(
            "a connection named '{name}' already exists"
        )));
    }
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
            email_authoritative,
        } => {
            let group_attribute = group_attribute.unwrap_or_else(|| "groups".into());
            // Cheap checks first: nothing is fetched for a request that is wrong anyway.
            let mappings = map_group
                .iter()
                .map(|m| RoleMapping::parse(m, &group_attribute))
                .collect::<Result<Vec<_>, _>>()?;
            check_roles(client, default_role.as_ref(), &mappings).await?;
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
                email_authoritative,
            )
            .map_err(|e| invalid(format!("the IdP metadata is refused: {e}")))?;
            let p = Prepared {
                name,
                protocol: Protocol::Saml(cfg),
                secret_ciphertext: None,
                default_role: default_role.unwrap_or(Role::member()),
                mappings,
            };
            Ok(p)
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
            check_roles(client, default_role.as_ref(), &mappings).await?;
            fetcher
                .check_url(&issuer)
                .map_err(|e| invalid(e.to_string()))?;
            oidc::discover(fetcher, &issuer)
                .await
                .map_err(|e| invalid(format!("OIDC discovery failed: {e}")))?;
            let ciphertext = keyring
                .encrypt_for_tenant(tenant, key, client_secret.expose_secret().as_bytes())
                .await?;
            let p = Prepared {
                name,
                protocol: Protocol::Oidc(OidcConfig { issuer, client_id }),
                secret_ciphertext: Some(ciphertext),
                default_role: default_role.unwrap_or(Role::member()),
                mappings,
            };
            Ok(p)
        }
    }
}

/// Every role the connection can give must exist (checked before anything is fetched).
async fn check_roles(
    client: &TenantConn,
    default_role: Option<&Role>,
    mappings: &[RoleMapping],
) -> Result<(), RuntimeError> {
    for r in default_role
        .into_iter()
        .chain(mappings.iter().map(|m| &m.role))
    {
        crate::store::roles::require(client, r).await?;
    }
    Ok(())
}
