//! Request and response bodies of `/api/v1` (the API contract), kept apart from the store's
//! domain types so either can change without silently changing the other.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::store::{approvals, audit, documents, roles, tickets, users};

fn hex_opt(v: &[u8]) -> String {
    hex::encode(v)
}

// ---- access ----------------------------------------------------------------------------------

#[derive(Debug, Serialize, ToSchema)]
pub struct RoleDto {
    pub name: String,
    pub description: String,
    pub built_in: bool,
    /// Permission names, e.g. `documents.read`.
    pub permissions: Vec<String>,
}

impl From<roles::Role> for RoleDto {
    fn from(r: roles::Role) -> Self {
        Self {
            name: r.name.as_str().to_owned(),
            description: r.description,
            built_in: r.built_in,
            permissions: r
                .permissions
                .iter()
                .map(|p| p.as_str().to_owned())
                .collect(),
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RoleRequest {
    /// Only when creating: `[a-z][a-z0-9_-]{0,39}`.
    pub name: Option<String>,
    #[serde(default)]
    pub description: String,
    pub permissions: Vec<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UserDto {
    pub id: Uuid,
    pub email: String,
    pub display_name: String,
    pub role: String,
    pub active: bool,
    /// Sites the user is limited to; absent: every site.
    pub sites: Option<Vec<String>>,
}

impl From<users::User> for UserDto {
    fn from(u: users::User) -> Self {
        Self {
            id: u.id.as_uuid(),
            email: u.email,
            display_name: u.display_name,
            role: u.role.as_str().to_owned(),
            active: u.active,
            sites: u.site_scope,
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetRoleRequest {
    pub role: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetSitesRequest {
    /// `null`: every site.
    pub sites: Option<Vec<String>>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InviteRequest {
    pub email: String,
    pub role: String,
    /// Sites the invited user will be limited to; absent or `null`: every site (for a
    /// site-limited caller: the caller's own sites).
    #[serde(default)]
    pub sites: Option<Vec<String>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct InvitationDto {
    pub email: String,
    pub role: String,
    /// `null`: every site.
    pub sites: Option<Vec<String>>,
    /// The single-use link (shown once).
    pub url: String,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SiteDto {
    pub code: String,
    pub name: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ApprovalDto {
    pub id: Uuid,
    pub action: String,
    pub target: String,
    /// The requested change as the approver should see it (for a new SSO connection: name,
    /// protocol and IdP settings; never its encrypted secret).
    #[schema(value_type = Object)]
    pub details: serde_json::Value,
    /// Who asked (their e-mail, or `token:<name>`).
    pub requested_by: String,
    pub status: String,
    pub decided_by: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub decided_at: Option<OffsetDateTime>,
    pub outcome: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

impl From<approvals::Approval> for ApprovalDto {
    fn from(a: approvals::Approval) -> Self {
        let mut details = a.payload.clone();
        let requested_by = details
            .get("requested_by_name")
            .and_then(|n| n.as_str())
            .map_or_else(|| a.requested_by.clone(), str::to_owned);
        if let Some(obj) = details.as_object_mut() {
            obj.remove("requested_by_name");
            if let Some(c) = obj.get_mut("connection").and_then(|c| c.as_object_mut()) {
                c.remove("secret_ciphertext");
            }
        }
        Self {
            id: a.id.as_uuid(),
            action: a.action,
            target: a.target,
            details,
            requested_by,
            status: a.status,
            decided_by: a.decided_by,
            decided_at: a.decided_at,
            outcome: a.outcome,
            created_at: a.created_at,
            expires_at: a.expires_at,
        }
    }
}

/// `202 Accepted`: the change waits for a second admin.
#[derive(Debug, Serialize, ToSchema)]
pub struct PendingApprovalDto {
    pub status: String,
    pub approval: ApprovalDto,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyEntryDto {
    pub action: String,
    pub required: bool,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ApprovalQuery {
    /// `pending`, `approved`, `rejected` or `failed`.
    pub status: Option<String>,
}

// ---- documents -------------------------------------------------------------------------------

#[derive(Debug, Serialize, ToSchema)]
pub struct VersionDto {
    pub id: Uuid,
    pub version: i32,
    pub file_name: String,
    pub media_type: String,
    pub size: i64,
    /// Hex SHA-256 of the plaintext content.
    pub sha256: String,
    #[serde(with = "time::serde::rfc3339")]
    pub valid_from: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub valid_until: Option<OffsetDateTime>,
    pub replaced_by: Option<Uuid>,
    pub released_by: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub released_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

impl From<documents::Version> for VersionDto {
    fn from(v: documents::Version) -> Self {
        Self {
            id: v.id.as_uuid(),
            version: v.version,
            file_name: v.file_name,
            media_type: v.media_type,
            size: v.size,
            sha256: hex_opt(&v.sha256),
            valid_from: v.valid_from,
            valid_until: v.valid_until,
            replaced_by: v.replaced_by.map(|r| r.as_uuid()),
            released_by: v.released_by,
            released_at: v.released_at,
            created_at: v.created_at,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DocumentDto {
    pub id: Uuid,
    #[serde(rename = "type")]
    pub doc_type: String,
    pub title: String,
    pub period: Option<String>,
    pub site: Option<String>,
    pub status: String,
    /// `YYYY-MM-DD`.
    pub retention_until: Option<String>,
    pub created_by: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Set while the document is under a legal hold (it can be neither deleted nor replaced).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub legal_hold: Option<LegalHoldDto>,
    pub current_version: Option<VersionDto>,
    /// Every version, oldest first (only on `GET /documents/{id}`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub versions: Option<Vec<VersionDto>>,
}

impl From<documents::Document> for DocumentDto {
    fn from(d: documents::Document) -> Self {
        Self {
            id: d.id.as_uuid(),
            doc_type: d.doc_type,
            title: d.title,
            period: d.period,
            site: d.site,
            status: d.status,
            retention_until: d.retention_until.map(|d| d.to_string()),
            created_by: d.created_by,
            created_at: d.created_at,
            legal_hold: d.legal_hold.map(|h| LegalHoldDto {
                reason: h.reason,
                by: h.by,
                at: h.at,
            }),
            current_version: d.current.map(Into::into),
            versions: None,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LegalHoldDto {
    pub reason: String,
    /// Who set it.
    pub by: String,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// `PUT /documents/{id}/legal-hold`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LegalHoldRequest {
    /// Why the document is held (1 to 500 characters), shown to everyone who sees it.
    pub reason: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DocumentPage {
    pub items: Vec<DocumentDto>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// Metadata of an upload, in the query string (the body is the file itself, its media type
/// in `Content-Type`).
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct UploadQuery {
    /// `invoice`, `delivery_note`, `contract`, `certificate` or `other`.
    #[serde(rename = "type")]
    pub doc_type: Option<String>,
    pub title: Option<String>,
    /// `YYYY`, `YYYY-MM` or `YYYY-Qn`.
    pub period: Option<String>,
    pub site: Option<String>,
    /// `draft`, `released` (default) or `archived`.
    pub status: Option<String>,
    /// `YYYY-MM-DD`.
    pub retention_until: Option<String>,
    pub file_name: Option<String>,
    /// RFC 3339.
    pub valid_until: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DocumentQuery {
    #[serde(rename = "type")]
    pub doc_type: Option<String>,
    pub period: Option<String>,
    pub site: Option<String>,
    pub status: Option<String>,
    /// RFC 3339: documents whose current version is valid then.
    pub valid_at: Option<String>,
    pub limit: Option<i64>,
    pub cursor: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ContentQuery {
    /// A version of this document (default: the current one).
    pub version: Option<Uuid>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LinkRequest {
    /// Lifetime in seconds (60 to 2,592,000; default 86,400).
    pub expires_in_s: Option<i64>,
    /// A version of this document (default: the current one).
    pub version: Option<Uuid>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LinkDto {
    pub id: Uuid,
    pub document_id: Uuid,
    pub version_id: Uuid,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    pub created_by: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub revoked_at: Option<OffsetDateTime>,
    pub uses: i32,
    /// Only in the answer that creates the link.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

impl From<documents::Link> for LinkDto {
    fn from(l: documents::Link) -> Self {
        Self {
            id: l.id,
            document_id: l.document_id.as_uuid(),
            version_id: l.version_id.as_uuid(),
            expires_at: l.expires_at,
            created_by: l.created_by,
            created_at: l.created_at,
            revoked_at: l.revoked_at,
            uses: l.uses,
            url: None,
        }
    }
}

// ---- tickets ---------------------------------------------------------------------------------

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewTicketRequest {
    pub title: String,
    #[serde(default)]
    pub description: String,
    pub site: Option<String>,
    /// Documents to attach (ids).
    #[serde(default)]
    pub attachments: Vec<Uuid>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CommentDto {
    pub id: Uuid,
    pub author: String,
    pub body: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

impl From<tickets::Comment> for CommentDto {
    fn from(c: tickets::Comment) -> Self {
        Self {
            id: c.id,
            author: c.author,
            body: c.body,
            created_at: c.created_at,
        }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TicketDto {
    pub id: Uuid,
    pub number: i64,
    pub title: String,
    pub description: String,
    pub site: Option<String>,
    /// `open`, `in_progress`, `waiting_for_customer`, `resolved` or `closed`.
    pub status: String,
    pub created_by: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    pub attachments: Vec<Uuid>,
    /// Only on `GET /tickets/{id}`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub comments: Option<Vec<CommentDto>>,
}

impl From<tickets::Ticket> for TicketDto {
    fn from(t: tickets::Ticket) -> Self {
        Self {
            id: t.id,
            number: t.number,
            title: t.title,
            description: t.description,
            site: t.site,
            status: t.status,
            created_by: t.created_by,
            created_at: t.created_at,
            updated_at: t.updated_at,
            attachments: t.attachments,
            comments: None,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TicketPage {
    pub items: Vec<TicketDto>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct TicketQuery {
    pub status: Option<String>,
    pub site: Option<String>,
    pub limit: Option<i64>,
    pub cursor: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StatusRequest {
    pub status: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CommentRequest {
    pub body: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AttachRequest {
    pub document_id: Uuid,
}

// ---- audit -----------------------------------------------------------------------------------

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditEventDto {
    pub seq: i64,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    pub event_type: String,
    pub actor: String,
    pub client_ip: Option<String>,
    pub request_id: Option<String>,
    pub target: Option<String>,
    /// `success` or `failure`.
    pub outcome: String,
    pub reason: Option<String>,
    #[schema(value_type = Object)]
    pub details: serde_json::Value,
    pub prev_hash: String,
    pub hash: String,
}

impl From<audit::Recorded> for AuditEventDto {
    fn from(e: audit::Recorded) -> Self {
        Self {
            seq: e.seq,
            at: e.at,
            event_type: e.event_type,
            actor: e.actor,
            client_ip: e.client_ip,
            request_id: e.request_id,
            target: e.target,
            outcome: e.outcome,
            reason: e.reason,
            details: e.details,
            prev_hash: e.prev_hash,
            hash: e.hash,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditPage {
    pub items: Vec<AuditEventDto>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    pub event_type: Option<String>,
    pub actor: Option<String>,
    pub target: Option<String>,
    /// RFC 3339, inclusive.
    pub since: Option<String>,
    /// RFC 3339, exclusive.
    pub until: Option<String>,
    pub limit: Option<i64>,
    pub cursor: Option<String>,
}

/// Parses an RFC 3339 query value, naming the field when it is not one.
pub fn timestamp(
    field: &str,
    v: Option<&str>,
    errors: &mut Vec<(String, String)>,
) -> Option<OffsetDateTime> {
    let v = v?;
    match OffsetDateTime::parse(v, &time::format_description::well_known::Rfc3339) {
        Ok(t) => Some(t),
        Err(_) => {
            errors.push((field.to_owned(), "must be an RFC 3339 timestamp".into()));
            None
        }
    }
}

/// An RFC 9457 problem, as every error is answered (`application/problem+json`).
#[derive(Debug, Serialize, ToSchema)]
pub struct ProblemDto {
    /// `urn:portico:problem:<code>`.
    #[serde(rename = "type")]
    pub problem_type: String,
    pub title: String,
    pub status: u16,
    /// The stable code (never renamed).
    pub code: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// Per-field validation errors.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errors: Option<Vec<FieldErrorDto>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FieldErrorDto {
    pub field: String,
    pub detail: String,
}
