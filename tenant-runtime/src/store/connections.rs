//! SSO connections of this tenant: SAML 2.0 or OpenID Connect identity providers, their role
//! mappings, and (for OIDC) the client secret, encrypted under the tenant's key.

use crate::conn::TenantConn;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::error::RuntimeError;
use crate::store::roles::RoleName as Role;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Protocol {
    Saml(SamlConfig),
    Oidc(OidcConfig),
}

impl Protocol {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Saml(_) => "saml",
            Self::Oidc(_) => "oidc",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SamlConfig {
    /// The IdP's entity id (from its metadata): responses and assertions must be issued by it.
    pub idp_entity_id: String,
    /// The IdP's metadata as validated at save time (it carries the signing certificates).
    pub metadata_xml: String,
    /// Where AuthnRequests go (HTTP-Redirect binding).
    pub sso_url: String,
    /// Accept unsolicited responses (no `InResponseTo`).
    pub allow_idp_initiated: bool,
    /// The attribute whose values are matched by `--map-group`.
    pub group_attribute: String,
    pub metadata_url: Option<String>,
    /// Whether this IdP's e-mail attribute is authoritative (the IdP verifies the addresses it
    /// asserts). SAML has no `email_verified`; without this the asserted e-mail is not used.
    #[serde(default)]
    pub email_authoritative: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct OidcConfig {
    /// Exactly as configured; discovery must answer with this very issuer.
    pub issuer: String,
    pub client_id: String,
}

/// Assign `role` to users whose `attribute` (SAML attribute or OIDC claim) has `value`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RoleMapping {
    pub attribute: String,
    pub value: String,
    pub role: Role,
}

impl RoleMapping {
    /// `G=R` (SAML groups, with `default_attribute`) or `attr:G=R`.
    pub fn parse(spec: &str, default_attribute: &str) -> Result<Self, RuntimeError> {
        let bad = || {
            RuntimeError::InvalidInput(format!(
                "'{spec}' is not a mapping; expected VALUE=ROLE or ATTRIBUTE:VALUE=ROLE"
            ))
        };
        let (lhs, role) = spec.rsplit_once('=').ok_or_else(bad)?;
        let role = Role::parse(role.trim())
            .ok_or_else(|| RuntimeError::InvalidInput(format!("'{role}' is not a role name")))?;
        let (attribute, value) = match lhs.split_once(':') {
            Some((a, v)) => (a.trim(), v.trim()),
            None => (default_attribute, lhs.trim()),
        };
        if attribute.is_empty() || value.is_empty() {
            return Err(bad());
        }
        Ok(Self {
            attribute: attribute.to_owned(),
            value: value.to_owned(),
            role,
        })
    }
}

/// The role of a user with these attributes: the strongest mapped role, else the default.
pub fn role_for(
    default_role: Role,
    mappings: &[RoleMapping],
    attributes: &[(String, Vec<String>)],
) -> Role {
    let mut role = default_role;
    for m in mappings {
        let hit = attributes
            .iter()
            .any(|(name, values)| *name == m.attribute && values.contains(&m.value));
        if hit && (m.role.is_admin() || !role.is_admin()) {
            role = m.role.clone();
        }
    }
    role
}

#[derive(Debug, Clone, Serialize)]
pub struct Connection {
    pub id: Uuid,
    pub name: String,
    pub protocol: Protocol,
    pub default_role: Role,
    pub role_mappings: Vec<RoleMapping>,
    #[serde(skip)]
    pub secret_ciphertext: Option<Vec<u8>>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// A connection name is a lowercase DNS-label-like word: it appears in URLs.
pub fn valid_name(name: &str) -> bool {
    (1..=40).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

fn connection(row: &tokio_postgres::Row) -> Result<Connection, RuntimeError> {
    let bad = |m: String| RuntimeError::Query {
        operation: "reading an SSO connection",
        message: m,
    };
    let config: serde_json::Value = row.get(2);
    let mappings: serde_json::Value = row.get(5);
    let role: String = row.get(4);
    Ok(Connection {
        id: row.get(0),
        name: row.get(1),
        protocol: serde_json::from_value(config).map_err(|e| bad(e.to_string()))?,
        secret_ciphertext: row.get(3),
        default_role: Role::parse(&role).ok_or_else(|| bad(format!("unknown role '{role}'")))?,
        role_mappings: serde_json::from_value(mappings).map_err(|e| bad(e.to_string()))?,
        created_at: row.get(6),
    })
}

const COLUMNS: &str =
    "id, name, config, secret_ciphertext, default_role, role_mappings, created_at";

pub async fn create(
    client: &TenantConn,
    name: &str,
    protocol: &Protocol,
    secret_ciphertext: Option<&[u8]>,
    default_role: Role,
    role_mappings: &[RoleMapping],
) -> Result<Connection, RuntimeError> {
    if !valid_name(name) {
        return Err(RuntimeError::InvalidInput(format!(
            "'{name}' is not a connection name (1-40 of a-z, 0-9, '-')"
        )));
    }
    let config =
        serde_json::to_value(protocol).map_err(|e| RuntimeError::InvalidInput(e.to_string()))?;
    let mappings = serde_json::to_value(role_mappings)
        .map_err(|e| RuntimeError::InvalidInput(e.to_string()))?;
    let row = client
        .query_one(
            &format!(
                "insert into sso_connections
                     (id, name, kind, config, secret_ciphertext, default_role, role_mappings)
                 values ($1, $2, $3, $4, $5, $6, $7) returning {COLUMNS}"
            ),
            &[
                &Uuid::new_v4(),
                &name,
                &protocol.kind(),
                &config,
                &secret_ciphertext,
                &default_role.as_str(),
                &mappings,
            ],
        )
        .await
        .map_err(|e| match RuntimeError::constraint_of(&e) {
            Some("sso_connections_name_key") => {
                RuntimeError::Conflict(format!("a connection named '{name}' already exists"))
            }
            _ => RuntimeError::query("creating an SSO connection", e),
        })?;
    connection(&row)
}

pub async fn list(client: &TenantConn) -> Result<Vec<Connection>, RuntimeError> {
    client
        .query(
            &format!("select {COLUMNS} from sso_connections order by name"),
            &[],
        )
        .await
        .map_err(|e| RuntimeError::query("listing SSO connections", e))?
        .iter()
        .map(connection)
        .collect()
}

pub async fn by_name(client: &TenantConn, name: &str) -> Result<Option<Connection>, RuntimeError> {
    client
        .query_opt(
            &format!("select {COLUMNS} from sso_connections where name = $1"),
            &[&name],
        )
        .await
        .map_err(|e| RuntimeError::query("reading an SSO connection", e))?
        .as_ref()
        .map(connection)
        .transpose()
}

/// Removes a connection; its identities, sessions and pending requests go with it.
pub async fn remove(client: &TenantConn, name: &str) -> Result<(), RuntimeError> {
    let n = client
        .execute("delete from sso_connections where name = $1", &[&name])
        .await
        .map_err(|e| RuntimeError::query("removing an SSO connection", e))?;
    if n == 0 {
        return Err(RuntimeError::NotFound(format!(
            "no SSO connection named '{name}'"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mappings_parse_and_the_strongest_role_wins() {
        let m = RoleMapping::parse("admins=admin", "groups").unwrap();
        assert_eq!(m.attribute, "groups");
        let c = RoleMapping::parse("dept:it=member", "groups").unwrap();
        assert_eq!((c.attribute.as_str(), c.value.as_str()), ("dept", "it"));
        assert!(RoleMapping::parse("admins", "groups").is_err());
        assert!(RoleMapping::parse("admins=Root!", "groups").is_err());
        let attrs = vec![("groups".to_owned(), vec!["admins".to_owned()])];
        assert_eq!(
            role_for(Role::member(), &[c.clone(), m.clone()], &attrs),
            Role::admin()
        );
        assert_eq!(role_for(Role::member(), &[c], &attrs), Role::member());
        assert_eq!(role_for(Role::member(), &[], &attrs), Role::member());
    }

    #[test]
    fn connection_names_are_url_safe() {
        assert!(valid_name("okta-prod"));
        assert!(!valid_name("Okta"));
        assert!(!valid_name("a/b"));
        assert!(!valid_name(""));
    }
}
