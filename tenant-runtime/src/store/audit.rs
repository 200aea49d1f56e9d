//! The tenant's audit log: append-only and hash-chained, in the tenant's own database.
//!
//! Each event's *payload hash* is SHA-256 of its canonical serialization ([`canonical`]: a JSON
//! array of the fields in a fixed order, objects with sorted keys). The database links it to
//! the event before it (`hash = SHA-256(prev_hash ‖ payload_hash)`, in a trigger under a lock,
//! see `V4__portal.sql`), so editing, deleting or reordering any event breaks every hash after
//! it. The runtime role may insert and read only; the table belongs to another role. The head
//! of the chain is anchored in the control plane, so rewriting the whole chain is detected too.

use std::net::IpAddr;

use crate::conn::TenantConn;
use serde::Serialize;
use time::OffsetDateTime;

use crate::error::RuntimeError;

/// Every event type, in one documented list (`as_str` is what is stored).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    LoginSuccess,
    LoginFailure,
    Logout,
    MfaEnrolled,
    MfaEnrolmentStarted,
    MfaRemoved,
    ApprovalPolicyChanged,
    AnonymousFailures,
    UserInvited,
    InvitationAccepted,
    UserDeactivated,
    UserSitesChanged,
    RoleGranted,
    RoleRevoked,
    RoleCreated,
    RoleChanged,
    RoleDeleted,
    SiteCreated,
    ApprovalRequested,
    ApprovalApproved,
    ApprovalRejected,
    SsoConnectionChanged,
    DocumentUploaded,
    DocumentDownloaded,
    DocumentVersionCreated,
    DocumentLinkCreated,
    DocumentLinkUsed,
    DocumentLinkRevoked,
    DocumentDeleted,
    LegalHoldSet,
    LegalHoldCleared,
    TenantImported,
    UploadRejected,
    TicketCreated,
    TicketStatusChanged,
    TicketCommented,
    TokenCreated,
    TokenRevoked,
    ExportRequested,
    ExportLinkCreated,
    ExportDownloaded,
    ExportDiscarded,
    PersonalDataExported,
    PermissionDenied,
}

impl EventType {
    pub const ALL: &'static [EventType] = &[
        Self::LoginSuccess,
        Self::LoginFailure,
        Self::Logout,
        Self::MfaEnrolled,
        Self::MfaEnrolmentStarted,
        Self::MfaRemoved,
        Self::ApprovalPolicyChanged,
        Self::AnonymousFailures,
        Self::UserInvited,
        Self::InvitationAccepted,
        Self::UserDeactivated,
        Self::UserSitesChanged,
        Self::RoleGranted,
        Self::RoleRevoked,
        Self::RoleCreated,
        Self::RoleChanged,
        Self::RoleDeleted,
        Self::SiteCreated,
        Self::ApprovalRequested,
        Self::ApprovalApproved,
        Self::ApprovalRejected,
        Self::SsoConnectionChanged,
        Self::DocumentUploaded,
        Self::DocumentDownloaded,
        Self::DocumentVersionCreated,
        Self::DocumentLinkCreated,
        Self::DocumentLinkUsed,
        Self::DocumentLinkRevoked,
        Self::DocumentDeleted,
        Self::LegalHoldSet,
        Self::LegalHoldCleared,
        Self::TenantImported,
        Self::UploadRejected,
        Self::TicketCreated,
        Self::TicketStatusChanged,
        Self::TicketCommented,
        Self::TokenCreated,
        Self::TokenRevoked,
        Self::ExportRequested,
        Self::ExportLinkCreated,
        Self::ExportDownloaded,
        Self::ExportDiscarded,
        Self::PersonalDataExported,
        Self::PermissionDenied,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::LoginSuccess => "login_success",
            Self::LoginFailure => "login_failure",
            Self::Logout => "logout",
            Self::MfaEnrolled => "mfa_enrolled",
            Self::MfaEnrolmentStarted => "mfa_enrolment_started",
            Self::MfaRemoved => "mfa_removed",
            Self::ApprovalPolicyChanged => "approval_policy_changed",
            Self::AnonymousFailures => "anonymous_failures",
            Self::UserInvited => "user_invited",
            Self::InvitationAccepted => "invitation_accepted",
            Self::UserDeactivated => "user_deactivated",
            Self::UserSitesChanged => "user_sites_changed",
            Self::RoleGranted => "role_granted",
            Self::RoleRevoked => "role_revoked",
            Self::RoleCreated => "role_created",
            Self::RoleChanged => "role_changed",
            Self::RoleDeleted => "role_deleted",
            Self::SiteCreated => "site_created",
            Self::ApprovalRequested => "approval_requested",
            Self::ApprovalApproved => "approval_approved",
            Self::ApprovalRejected => "approval_rejected",
            Self::SsoConnectionChanged => "sso_connection_changed",
            Self::DocumentUploaded => "document_uploaded",
            Self::DocumentDownloaded => "document_downloaded",
            Self::DocumentVersionCreated => "document_version_created",
            Self::DocumentLinkCreated => "document_link_created",
            Self::DocumentLinkUsed => "document_link_used",
            Self::DocumentLinkRevoked => "document_link_revoked",
            Self::DocumentDeleted => "document_deleted",
            Self::LegalHoldSet => "legal_hold_set",
            Self::LegalHoldCleared => "legal_hold_cleared",
            Self::TenantImported => "tenant_imported",
            Self::UploadRejected => "upload_rejected",
            Self::TicketCreated => "ticket_created",
            Self::TicketStatusChanged => "ticket_status_changed",
            Self::TicketCommented => "ticket_commented",
            Self::TokenCreated => "token_created",
            Self::TokenRevoked => "token_revoked",
            Self::ExportRequested => "export_requested",
            Self::ExportLinkCreated => "export_link_created",
            Self::ExportDownloaded => "export_downloaded",
            Self::ExportDiscarded => "export_discarded",
            Self::PersonalDataExported => "personal_data_exported",
            Self::PermissionDenied => "permission_denied",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|t| t.as_str() == s)
    }
}

/// One event to record.
#[derive(Debug, Clone)]
pub struct Event<'a> {
    pub event_type: EventType,
    pub actor: &'a str,
    pub client_ip: Option<IpAddr>,
    pub request_id: Option<&'a str>,
    pub target: Option<&'a str>,
    pub success: bool,
    pub reason: Option<&'a str>,
    pub details: serde_json::Value,
}

impl<'a> Event<'a> {
    pub fn new(event_type: EventType, actor: &'a str, success: bool) -> Self {
        Self {
            event_type,
            actor,
            client_ip: None,
            request_id: None,
            target: None,
            success,
            reason: None,
            details: serde_json::json!({}),
        }
    }
}

pub use portico_core::audit_chain::{GENESIS, canonical, link, sha256};

/// Appends an event; returns its sequence number.
pub async fn record(client: &TenantConn, e: &Event<'_>) -> Result<i64, RuntimeError> {
    // Truncated to what PostgreSQL keeps, so the stored row serialises to the same bytes.
    let now = OffsetDateTime::now_utc();
    let at = now
        .replace_nanosecond(now.microsecond() * 1000)
        .unwrap_or(now);
    let ip = e.client_ip.map(|ip| ip.to_string());
    let outcome = if e.success { "success" } else { "failure" };
    let details = &e.details;
    let payload = canonical(
        at,
        e.event_type.as_str(),
        e.actor,
        ip.as_deref(),
        e.request_id,
        e.target,
        outcome,
        e.reason,
        details,
    );
    let row = client
        .query_one(
            "insert into audit_events
                 (at, event_type, actor, client_ip, request_id, target, outcome, reason, details,
                  payload_hash, seq, prev_hash, hash)
             values ($1, $2, $3, $4::text::inet, $5, $6, $7, $8, $9, $10, 0, '', '')
             returning seq",
            &[
                &at,
                &e.event_type.as_str(),
                &e.actor,
                &ip,
                &e.request_id,
                &e.target,
                &outcome,
                &e.reason,
                details,
                &sha256(&payload),
            ],
        )
        .await
        .map_err(|err| RuntimeError::query("recording an audit event", err))?;
    Ok(row.get(0))
}

/// A recorded event, as the API and exports show it.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct Recorded {
    pub seq: i64,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    pub event_type: String,
    pub actor: String,
    pub client_ip: Option<String>,
    pub request_id: Option<String>,
    pub target: Option<String>,
    pub outcome: String,
    pub reason: Option<String>,
    pub details: serde_json::Value,
    /// Hex SHA-256 of the event before this one.
    pub prev_hash: String,
    /// Hex SHA-256 linking this event to the chain.
    pub hash: String,
    #[serde(skip)]
    payload_hash: Vec<u8>,
}

impl Recorded {
    fn canonical(&self) -> Vec<u8> {
        canonical(
            self.at,
            &self.event_type,
            &self.actor,
            self.client_ip.as_deref(),
            self.request_id.as_deref(),
            self.target.as_deref(),
            &self.outcome,
            self.reason.as_deref(),
            &self.details,
        )
    }
}

const COLUMNS: &str = "seq, at, event_type, actor, host(client_ip), request_id, target, outcome,
                       reason, details, prev_hash, hash, payload_hash";

fn from_row(r: &tokio_postgres::Row) -> Recorded {
    Recorded {
        seq: r.get(0),
        at: r.get(1),
        event_type: r.get(2),
        actor: r.get(3),
        client_ip: r.get(4),
        request_id: r.get(5),
        target: r.get(6),
        outcome: r.get(7),
        reason: r.get(8),
        details: r.get(9),
        prev_hash: hex::encode(r.get::<_, Vec<u8>>(10)),
        hash: hex::encode(r.get::<_, Vec<u8>>(11)),
        payload_hash: r.get(12),
    }
}

/// The latest `limit` events, oldest first.
pub async fn latest(client: &TenantConn, limit: i64) -> Result<Vec<Recorded>, RuntimeError> {
    let rows = client
        .query(
            &format!(
                "select {COLUMNS} from (select * from audit_events order by seq desc limit $1) e
                  order by seq"
            ),
            &[&limit],
        )
        .await
        .map_err(|e| RuntimeError::query("reading audit events", e))?;
    Ok(rows.iter().map(from_row).collect())
}

/// Filters for listing events.
#[derive(Debug, Default, Clone)]
pub struct Filter {
    pub event_type: Option<String>,
    pub actor: Option<String>,
    pub target: Option<String>,
    pub since: Option<OffsetDateTime>,
    pub until: Option<OffsetDateTime>,
    /// Events after this sequence number (cursor).
    pub after: Option<i64>,
}

/// Events matching the filter, oldest first, at most `limit`.
pub async fn list(
    client: &TenantConn,
    f: &Filter,
    limit: i64,
) -> Result<Vec<Recorded>, RuntimeError> {
    let rows = client
        .query(
            &format!(
                "select {COLUMNS} from audit_events
                  where ($1::text is null or event_type = $1)
                    and ($2::text is null or actor = $2)
                    and ($3::text is null or target = $3)
                    and ($4::timestamptz is null or at >= $4)
                    and ($5::timestamptz is null or at < $5)
                    and seq > coalesce($6::bigint, 0)
                  order by seq limit $7"
            ),
            &[
                &f.event_type,
                &f.actor,
                &f.target,
                &f.since,
                &f.until,
                &f.after,
                &limit,
            ],
        )
        .await
        .map_err(|e| RuntimeError::query("reading audit events", e))?;
    Ok(rows.iter().map(from_row).collect())
}

/// The head of the chain: (sequence number, hash), or `None` for an empty log.
pub async fn head(client: &TenantConn) -> Result<Option<(i64, Vec<u8>)>, RuntimeError> {
    let row = client
        .query_opt(
            "select seq, hash from audit_events order by seq desc limit 1",
            &[],
        )
        .await
        .map_err(|e| RuntimeError::query("reading the audit head", e))?;
    Ok(row.map(|r| (r.get(0), r.get(1))))
}

/// The hash stored for one sequence number.
pub async fn hash_at(client: &TenantConn, seq: i64) -> Result<Option<Vec<u8>>, RuntimeError> {
    let row = client
        .query_opt("select hash from audit_events where seq = $1", &[&seq])
        .await
        .map_err(|e| RuntimeError::query("reading the audit chain", e))?;
    Ok(row.map(|r| r.get(0)))
}

/// The first break found in the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Break {
    pub seq: i64,
    pub problem: String,
}

/// What verifying the chain found.
#[derive(Debug, Clone, Serialize)]
pub struct Verification {
    pub events: i64,
    /// Hex hash of the last event checked.
    pub head: String,
    pub head_seq: i64,
    pub broken: Option<Break>,
}

/// Walks the whole chain in pages, recomputing every payload hash and every link.
pub async fn verify(client: &TenantConn) -> Result<Verification, RuntimeError> {
    let mut prev = GENESIS.to_vec();
    let mut expected_seq = 1_i64;
    let mut count = 0_i64;
    loop {
        let page = list(
            client,
            &Filter {
                after: Some(expected_seq - 1),
                ..Filter::default()
            },
            5_000,
        )
        .await?;
        if page.is_empty() {
            break;
        }
        for e in &page {
            let fail = |problem: String| {
                Ok(Verification {
                    events: count,
                    head: hex::encode(&prev),
                    head_seq: expected_seq - 1,
                    broken: Some(Break {
                        seq: e.seq,
                        problem,
                    }),
                })
            };
            if e.seq != expected_seq {
                return fail(format!(
                    "event {} is missing (next stored is {})",
                    expected_seq, e.seq
                ));
            }
            if sha256(&e.canonical()) != e.payload_hash {
                return fail("its content does not match its payload hash".into());
            }
            if e.prev_hash != hex::encode(&prev) {
                return fail("it does not link to the event before it".into());
            }
            let h = link(&prev, &e.payload_hash);
            if hex::encode(&h) != e.hash {
                return fail("its chain hash is wrong".into());
            }
            prev = h;
            expected_seq += 1;
            count += 1;
        }
    }
    Ok(Verification {
        events: count,
        head: hex::encode(&prev),
        head_seq: expected_seq - 1,
        broken: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_form_is_stable_and_field_sensitive() {
        let at = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let d = serde_json::json!({"b": 1, "a": "x", "c": {"z": [1, {"y": null, "x": true}]}});
        let one = canonical(
            at,
            "logout",
            "a@x",
            Some("127.0.0.1"),
            None,
            None,
            "success",
            None,
            &d,
        );
        assert_eq!(
            String::from_utf8(one.clone()).unwrap(),
            r#"["portico-audit-v1","2027-01-15T08:00:00.000000Z","logout","a@x","127.0.0.1",null,null,"success",null,{"a":"x","b":1,"c":{"z":[1,{"x":true,"y":null}]}}]"#
        );
        let other = canonical(
            at,
            "logout",
            "b@x",
            Some("127.0.0.1"),
            None,
            None,
            "success",
            None,
            &d,
        );
        assert_ne!(one, other);
        for t in EventType::ALL {
            assert_eq!(EventType::parse(t.as_str()), Some(*t));
        }
    }
}
