//! Four-eyes changes as values: what a sensitive request asks for is one [`Change`], stored as
//! the approval's payload while it waits, and carried out by one function, [`apply`], whether
//! it runs at once (the tenant's policy does not require approval) or after a second person
//! approved it. There is no second copy of the direct path.
//!
//! | change | policy action | the approver (and the requester, still, at decision time) holds |
//! |---|---|---|
//! | [`Change::GrantRole`] | `grant_privileged_role` | `users.manage` and every permission of the role |
//! | [`Change::SaveRole`] | `change_privileged_role` | `roles.manage` and every permission of the role |
//! | [`Change::CreateSsoConnection`], [`Change::RemoveSsoConnection`] | `change_sso_connection` | `sso.manage` |
//! | [`Change::DisableApprovalRule`] | `change_approval_policy` | `users.manage`, `roles.manage`, `sso.manage` |
//! | [`Change::ClearLegalHold`] | `clear_legal_hold` (always four-eyes: no policy row turns it off) | `documents.manage` |
//! | [`Change::ExportTenantData`] | `export_tenant_data` | `data.export` |
//! | [`Change::ErasePerson`] | `erase_person` | `users.manage` (and, site-limited, the person within their sites) |

use crate::ids::UserId;
use serde::{Deserialize, Serialize};

use crate::caller::Authenticated;
use crate::http::Problem;
use crate::identity::admin;
use crate::ids::DocumentId;
use crate::state::Runtime;
use crate::store::audit::EventType;
use crate::store::connections::{self, Connection};
use crate::store::roles::{self, Permission, Permissions, RoleName};
use crate::store::{approvals, documents, users};

pub const GRANT_PRIVILEGED_ROLE: &str = "grant_privileged_role";
pub const CHANGE_PRIVILEGED_ROLE: &str = "change_privileged_role";
pub const CHANGE_SSO_CONNECTION: &str = "change_sso_connection";
/// Turning a four-eyes rule off is itself four-eyes (turning one on is not).
pub const CHANGE_APPROVAL_POLICY: &str = "change_approval_policy";
/// Lifting a legal hold (setting one is not four-eyes).
pub const CLEAR_LEGAL_HOLD: &str = "clear_legal_hold";
/// Exporting the whole organisation's data (`POST /api/v1/exports`).
pub const EXPORT_TENANT_DATA: &str = "export_tenant_data";
/// Erasing a person's data (`POST /api/v1/users/{id}/erasure`).
pub const ERASE_PERSON: &str = "erase_person";

/// Who may decide on policy changes.
pub const MANAGERS: [Permission; 3] = [
    Permission::UsersManage,
    Permission::RolesManage,
    Permission::SsoManage,
];

/// A sensitive change. Serialised (tagged by `change`) it is what an approval keeps and what
/// the approver is shown (a connection's encrypted secret aside).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum Change {
    /// Give a user a role.
    GrantRole {
        user_id: UserId,
        email: String,
        role: RoleName,
    },
    /// Define (or, with `replace`, redefine) a custom role.
    SaveRole {
        name: RoleName,
        description: String,
        /// Permission names, sorted.
        permissions: Vec<String>,
        replace: bool,
    },
    CreateSsoConnection {
        connection: admin::Prepared,
    },
    RemoveSsoConnection {
        name: String,
    },
    /// Stop requiring approval for a policy action.
    DisableApprovalRule {
        action: String,
    },
    /// Lift a document's legal hold.
    ClearLegalHold {
        document: DocumentId,
        title: String,
    },
    /// Export the organisation's data, encrypted to `recipient` (an age public key) unless
    /// `None` (plaintext, said explicitly when asked).
    ExportTenantData {
        recipient: Option<String>,
    },
    /// Erase a person's data (GDPR Art. 17). Named by id only: the approval keeps no
    /// personal data of theirs.
    ErasePerson {
        user_id: UserId,
    },
}

/// What applying a change produced, for the direct path's answer.
pub enum Applied {
    User(users::User),
    Role(roles::Role),
    Connection(Connection),
    Export(crate::exports::ExportStatus),
    Erased(crate::store::personal::Erased),
    Done,
}

impl Change {
    /// The approval-policy action this change falls under.
    pub fn policy_action(&self) -> &'static str {
        match self {
            Change::GrantRole { .. } => GRANT_PRIVILEGED_ROLE,
            Change::SaveRole { .. } => CHANGE_PRIVILEGED_ROLE,
            Change::CreateSsoConnection { .. } | Change::RemoveSsoConnection { .. } => {
                CHANGE_SSO_CONNECTION
            }
            Change::DisableApprovalRule { .. } => CHANGE_APPROVAL_POLICY,
            Change::ClearLegalHold { .. } => CLEAR_LEGAL_HOLD,
            Change::ExportTenantData { .. } => EXPORT_TENANT_DATA,
            Change::ErasePerson { .. } => ERASE_PERSON,
        }
    }

    /// What the change is about (the approval's and the audit event's target).
    pub fn target(&self) -> String {
        match self {
            Change::GrantRole { email, .. } => email.clone(),
            Change::SaveRole { name, .. } => name.as_str().to_owned(),
            Change::CreateSsoConnection { connection } => connection.name.clone(),
            Change::RemoveSsoConnection { name } => name.clone(),
            Change::DisableApprovalRule { action } => action.clone(),
            Change::ClearLegalHold { document, .. } => document.to_string(),
            Change::ExportTenantData { .. } => "organisation".to_owned(),
            Change::ErasePerson { user_id } => format!("user:{user_id}"),
        }
    }

    /// Whether the tenant's policy makes this change wait for a second person.
    pub async fn needs_approval(&self, auth: &Authenticated) -> Result<bool, Problem> {
        Ok(approvals::required(&auth.conn, self.policy_action()).await?)
    }

    /// The permissions whoever requests or approves this change must hold, read now (a role's
    /// permissions are those it has at decision time).
    pub async fn needs(&self, auth: &Authenticated) -> Result<Permissions, Problem> {
        let mut needs: Vec<Permission> = Vec::new();
        match self {
            Change::GrantRole { role, .. } => {
                needs.push(Permission::UsersManage);
                if let Some(r) = roles::get(&auth.conn, role.as_str()).await? {
                    needs.extend(r.permissions);
                }
            }
            Change::SaveRole { permissions, .. } => {
                needs.push(Permission::RolesManage);
                needs.extend(permissions.iter().filter_map(|p| Permission::parse(p)));
            }
            Change::CreateSsoConnection { .. } | Change::RemoveSsoConnection { .. } => {
                needs.push(Permission::SsoManage)
            }
            Change::DisableApprovalRule { .. } => needs.extend(MANAGERS),
            Change::ClearLegalHold { .. } => needs.push(Permission::DocumentsManage),
            Change::ExportTenantData { .. } => needs.push(Permission::DataExport),
            Change::ErasePerson { .. } => needs.push(Permission::UsersManage),
        }
        Ok(needs.into_iter().collect())
    }

    /// The user whose sites bound who may decide (site-limited approvers decide only on users
    /// within their sites); `None` for organisation-wide changes.
    pub fn subject_user(&self) -> Option<UserId> {
        match self {
            Change::GrantRole { user_id, .. } | Change::ErasePerson { user_id } => Some(*user_id),
            _ => None,
        }
    }

    /// The change as an approval payload, with the requester's display name.
    pub fn payload(&self, requested_by_name: &str) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        v["requested_by_name"] = requested_by_name.into();
        v
    }

    /// The change an approval keeps (`None` if the payload is not one: the request predates
    /// typed changes, or was altered).
    pub fn from_payload(payload: &serde_json::Value) -> Option<Self> {
        serde_json::from_value(payload.clone()).ok()
    }
}

/// Carries out `change` as `auth`'s act (the approver's, after an approval), auditing it; the
/// approval, if any, is named in the audit details.
pub async fn apply(
    rt: &Runtime,
    auth: &mut Authenticated,
    change: &Change,
    approval: Option<&approvals::Approval>,
) -> Result<Applied, Problem> {
    let details = |extra: serde_json::Value| {
        let mut d = extra;
        if let Some(a) = approval {
            d["approval"] = a.id.to_string().into();
            d["requested_by"] = a
                .payload
                .get("requested_by_name")
                .cloned()
                .unwrap_or_default();
        }
        d
    };
    match change {
        Change::GrantRole {
            user_id,
            email,
            role,
        } => {
            let previous = users::get(&auth.conn, *user_id)
                .await?
                .ok_or_else(Problem::not_found)?
                .role;
            let updated = users::set_role(&auth.conn, *user_id, role).await?;
            auth.record(
                EventType::RoleRevoked,
                email,
                details(serde_json::json!({"role": previous.as_str()})),
            )
            .await?;
            auth.record(
                EventType::RoleGranted,
                email,
                details(serde_json::json!({"role": role.as_str(), "previous": previous.as_str()})),
            )
            .await?;
            Ok(Applied::User(updated))
        }
        Change::SaveRole {
            name,
            description,
            permissions,
            replace,
        } => {
            let perms: Permissions = permissions
                .iter()
                .filter_map(|p| Permission::parse(p))
                .collect();
            let role = roles::save(&mut auth.conn, name, description, perms, *replace).await?;
            let t = if *replace {
                EventType::RoleChanged
            } else {
                EventType::RoleCreated
            };
            auth.audit(
                t,
                Some(name.as_str()),
                true,
                None,
                details(serde_json::json!({"permissions": perms.names()})),
            )
            .await?;
            Ok(Applied::Role(role))
        }
        Change::CreateSsoConnection { connection } => {
            let c = connection.store(&auth.conn).await?;
            auth.record(
                EventType::SsoConnectionChanged,
                &c.name,
                details(serde_json::json!({"change": "created"})),
            )
            .await?;
            Ok(Applied::Connection(c))
        }
        Change::RemoveSsoConnection { name } => {
            connections::remove(&auth.conn, name).await?;
            auth.record(
                EventType::SsoConnectionChanged,
                name,
                details(serde_json::json!({"change": "removed"})),
            )
            .await?;
            Ok(Applied::Done)
        }
        Change::DisableApprovalRule { action } => {
            approvals::set_policy(&auth.conn, action, false).await?;
            auth.record(
                EventType::ApprovalPolicyChanged,
                action,
                details(serde_json::json!({"required": false})),
            )
            .await?;
            Ok(Applied::Done)
        }
        Change::ClearLegalHold { document, title } => {
            if !documents::set_legal_hold(&auth.conn, *document, None).await? {
                return Err(Problem::not_found());
            }
            auth.record(
                EventType::LegalHoldCleared,
                &document.to_string(),
                details(serde_json::json!({"title": title})),
            )
            .await?;
            Ok(Applied::Done)
        }
        Change::ExportTenantData { recipient } => {
            // The export belongs to whoever asked, also when a second person approved it.
            let by = approval.map_or_else(|| auth.caller.principal(), |a| a.requested_by.clone());
            let started = rt
                .exports()?
                .start(auth.tenant.tenant_id, &by, recipient.as_deref())
                .await?;
            auth.record(
                EventType::ExportRequested,
                &started.id.to_string(),
                details(serde_json::json!({"encrypted": started.encrypted, "for": by})),
            )
            .await?;
            Ok(Applied::Export(started))
        }
        Change::ErasePerson { user_id } => {
            // The event first (the erased values name it), then the erasure, in one
            // transaction: either the person is erased and it is recorded, or neither.
            let actor = auth.caller.name();
            let request_id = crate::http::RequestId::current().map(|r| r.0);
            let target = format!("user:{user_id}");
            let mut e = crate::store::audit::Event::new(EventType::PersonErased, &actor, true);
            e.target = Some(&target);
            e.details = details(serde_json::json!({"user_id": user_id.to_string()}));
            let e = auth.stamp(e, request_id.as_deref());
            let tx = auth
                .conn
                .transaction()
                .await
                .map_err(|e| crate::error::RuntimeError::query("starting a transaction", e))?;
            let seq = crate::store::audit::record_in(&tx, &e).await?;
            let erased = crate::store::personal::erase(&tx, *user_id, seq).await?;
            tx.commit()
                .await
                .map_err(|e| crate::error::RuntimeError::query("committing an erasure", e))?;
            Ok(Applied::Erased(erased))
        }
    }
}
