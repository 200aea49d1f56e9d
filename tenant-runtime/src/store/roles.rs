//! Roles as named permission sets. Four built-in roles (seeded by `V4__portal.sql`, never
//! changed) and custom roles per tenant. Whoever grants or defines a role must hold every
//! permission in it ([`Permissions::is_subset`]), so delegation never escalates.

use crate::conn::TenantConn;
use serde::{Deserialize, Serialize};

use crate::error::RuntimeError;

/// Every permission.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
pub enum Permission {
    #[serde(rename = "documents.read")]
    DocumentsRead,
    #[serde(rename = "documents.upload")]
    DocumentsUpload,
    #[serde(rename = "documents.manage")]
    DocumentsManage,
    #[serde(rename = "tickets.create")]
    TicketsCreate,
    #[serde(rename = "tickets.read_all")]
    TicketsReadAll,
    #[serde(rename = "tickets.manage")]
    TicketsManage,
    #[serde(rename = "users.manage")]
    UsersManage,
    #[serde(rename = "roles.manage")]
    RolesManage,
    #[serde(rename = "sso.manage")]
    SsoManage,
    #[serde(rename = "audit.read")]
    AuditRead,
    /// Export the whole organisation's data (`/api/v1/exports`).
    #[serde(rename = "data.export")]
    DataExport,
}

impl Permission {
    pub const ALL: [Permission; 11] = [
        Self::DocumentsRead,
        Self::DocumentsUpload,
        Self::DocumentsManage,
        Self::TicketsCreate,
        Self::TicketsReadAll,
        Self::TicketsManage,
        Self::UsersManage,
        Self::RolesManage,
        Self::SsoManage,
        Self::AuditRead,
        Self::DataExport,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::DocumentsRead => "documents.read",
            Self::DocumentsUpload => "documents.upload",
            Self::DocumentsManage => "documents.manage",
            Self::TicketsCreate => "tickets.create",
            Self::TicketsReadAll => "tickets.read_all",
            Self::TicketsManage => "tickets.manage",
            Self::UsersManage => "users.manage",
            Self::RolesManage => "roles.manage",
            Self::SsoManage => "sso.manage",
            Self::AuditRead => "audit.read",
            Self::DataExport => "data.export",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == s)
    }

    fn bit(self) -> u16 {
        1 << (self as u16)
    }
}

/// A set of permissions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Permissions(u16);

impl Permissions {
    /// Granting a role with any of these is a privileged (four-eyes) action by default.
    pub const PRIVILEGED: Permissions = Permissions(
        (1 << Permission::UsersManage as u16)
            | (1 << Permission::RolesManage as u16)
            | (1 << Permission::SsoManage as u16)
            | (1 << Permission::DataExport as u16),
    );

    pub fn contains(self, p: Permission) -> bool {
        self.0 & p.bit() != 0
    }
    pub fn is_subset(self, of: Permissions) -> bool {
        self.0 & !of.0 == 0
    }
    pub fn intersects(self, other: Permissions) -> bool {
        self.0 & other.0 != 0
    }
    pub fn list(self) -> Vec<Permission> {
        Permission::ALL
            .into_iter()
            .filter(|p| self.contains(*p))
            .collect()
    }
    pub fn names(self) -> Vec<String> {
        self.list().iter().map(|p| p.as_str().to_owned()).collect()
    }
}

impl FromIterator<Permission> for Permissions {
    fn from_iter<I: IntoIterator<Item = Permission>>(iter: I) -> Self {
        Self(iter.into_iter().fold(0, |acc, p| acc | p.bit()))
    }
}

/// A role's name: `[a-z][a-z0-9_-]{0,39}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct RoleName(String);

impl RoleName {
    pub fn parse(s: &str) -> Option<Self> {
        let b = s.as_bytes();
        let ok = !b.is_empty()
            && b.len() <= 40
            && b[0].is_ascii_lowercase()
            && b.iter()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'_' | b'-'));
        ok.then(|| Self(s.to_owned()))
    }
    pub fn admin() -> Self {
        Self("admin".into())
    }
    pub fn member() -> Self {
        Self("member".into())
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    pub fn is_admin(&self) -> bool {
        self.0 == "admin"
    }
}

impl<'de> Deserialize<'de> for RoleName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "'{s}' is not a role name (lowercase letters, digits, '_' or '-', at most 40)"
            ))
        })
    }
}

impl std::fmt::Display for RoleName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A role and its permissions.
#[derive(Debug, Clone, Serialize)]
pub struct Role {
    pub name: RoleName,
    pub description: String,
    pub built_in: bool,
    pub permissions: Vec<Permission>,
}

impl Role {
    pub fn permission_set(&self) -> Permissions {
        self.permissions.iter().copied().collect()
    }
}

const ROLE_QUERY: &str = "select r.name, r.description, r.built_in,
        coalesce(array_agg(p.permission order by p.permission) filter (where p.permission is not null), '{}')
   from roles r left join role_permissions p on p.role = r.name";

fn role(row: &tokio_postgres::Row) -> Role {
    let perms: Vec<String> = row.get(3);
    Role {
        name: RoleName(row.get(0)),
        description: row.get(1),
        built_in: row.get(2),
        permissions: perms.iter().filter_map(|p| Permission::parse(p)).collect(),
    }
}

pub async fn list(client: &TenantConn) -> Result<Vec<Role>, RuntimeError> {
    Ok(client
        .query(
            &format!("{ROLE_QUERY} group by r.name order by r.built_in desc, r.name"),
            &[],
        )
        .await
        .map_err(|e| RuntimeError::query("listing roles", e))?
        .iter()
        .map(role)
        .collect())
}

pub async fn get(client: &TenantConn, name: &str) -> Result<Option<Role>, RuntimeError> {
    Ok(client
        .query_opt(
            &format!("{ROLE_QUERY} where r.name = $1 group by r.name"),
            &[&name],
        )
        .await
        .map_err(|e| RuntimeError::query("reading a role", e))?
        .as_ref()
        .map(role))
}

/// The role, or `invalid_input` naming it.
pub async fn require(client: &TenantConn, name: &RoleName) -> Result<Role, RuntimeError> {
    get(client, name.as_str())
        .await?
        .ok_or_else(|| RuntimeError::InvalidInput(format!("there is no role '{name}'")))
}

/// Creates a custom role, or replaces a custom role's permissions (`replace`).
pub async fn save(
    client: &mut TenantConn,
    name: &RoleName,
    description: &str,
    permissions: Permissions,
    replace: bool,
) -> Result<Role, RuntimeError> {
    let tx = client
        .transaction()
        .await
        .map_err(|e| RuntimeError::query("saving a role", e))?;
    let existing = tx
        .query_opt(
            "select built_in from roles where name = $1 for update",
            &[&name.as_str()],
        )
        .await
        .map_err(|e| RuntimeError::query("saving a role", e))?;
    match (existing.map(|r| r.get::<_, bool>(0)), replace) {
        (Some(true), _) => {
            return Err(RuntimeError::Conflict(format!(
                "'{name}' is a built-in role and cannot be changed"
            )));
        }
        (Some(false), false) => {
            return Err(RuntimeError::Conflict(format!(
                "a role named '{name}' already exists"
            )));
        }
        (None, true) => return Err(RuntimeError::NotFound(format!("no role named '{name}'"))),
        (Some(false), true) => {
            tx.execute(
                "update roles set description = $2 where name = $1",
                &[&name.as_str(), &description],
            )
            .await
            .map_err(|e| RuntimeError::query("saving a role", e))?;
            tx.execute(
                "delete from role_permissions where role = $1",
                &[&name.as_str()],
            )
            .await
            .map_err(|e| RuntimeError::query("saving a role", e))?;
        }
        (None, false) => {
            tx.execute(
                "insert into roles (name, description) values ($1, $2)",
                &[&name.as_str(), &description],
            )
            .await
            .map_err(|e| RuntimeError::query("saving a role", e))?;
        }
    }
    tx.execute(
        "insert into role_permissions (role, permission) select $1, unnest($2::text[])",
        &[&name.as_str(), &permissions.names()],
    )
    .await
    .map_err(|e| RuntimeError::query("saving a role", e))?;
    tx.commit()
        .await
        .map_err(|e| RuntimeError::query("saving a role", e))?;
    require(client, name).await
}

/// Deletes a custom role nobody holds.
pub async fn delete(client: &TenantConn, name: &RoleName) -> Result<(), RuntimeError> {
    let role = get(client, name.as_str())
        .await?
        .ok_or_else(|| RuntimeError::NotFound(format!("no role named '{name}'")))?;
    if role.built_in {
        return Err(RuntimeError::Conflict(format!(
            "'{name}' is a built-in role and cannot be deleted"
        )));
    }
    client
        .execute("delete from roles where name = $1", &[&name.as_str()])
        .await
        .map_err(|e| match RuntimeError::constraint_of(&e) {
            Some(_) => RuntimeError::Conflict(format!(
                "role '{name}' is still held by users, tokens, invitations or connections"
            )),
            None => RuntimeError::query("deleting a role", e),
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permission_sets() {
        let member: Permissions = [Permission::DocumentsRead, Permission::TicketsCreate]
            .into_iter()
            .collect();
        let admin: Permissions = Permission::ALL.into_iter().collect();
        assert!(member.is_subset(admin));
        assert!(!admin.is_subset(member));
        assert!(admin.intersects(Permissions::PRIVILEGED));
        assert!(!member.intersects(Permissions::PRIVILEGED));
        for p in Permission::ALL {
            assert_eq!(Permission::parse(p.as_str()), Some(p));
            assert_eq!(
                serde_json::to_value(p).unwrap(),
                serde_json::json!(p.as_str())
            );
        }
        assert!(RoleName::parse("site-lead_2").is_some());
        for bad in ["", "Admin", "1x", "a b", &"a".repeat(41)] {
            assert!(RoleName::parse(bad).is_none(), "{bad}");
        }
    }
}
