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
    PersonErased,
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
        Self::PersonErased,
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
            Self::PersonErased => "person_erased",
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

use portico_core::audit_chain::{Commitments, Format, commitment, in_format, is_ref};
pub use portico_core::audit_chain::{GENESIS, canonical, link, sha256};
use std::collections::HashMap;

/// An event as it is stored (format 3): its strings committed, its payload hash over the
/// references.
struct Committed {
    at: OffsetDateTime,
    event_type: &'static str,
    request_id: Option<String>,
    actor: String,
    ip: Option<String>,
    target: Option<String>,
    outcome: &'static str,
    reason: Option<String>,
    details: serde_json::Value,
    payload_hash: Vec<u8>,
    values: Commitments,
}

fn commit(e: &Event<'_>) -> Committed {
    // Truncated to what PostgreSQL keeps, so the stored row serialises to the same bytes.
    let now = OffsetDateTime::now_utc();
    let at = now
        .replace_nanosecond(now.microsecond() * 1000)
        .unwrap_or(now);
    let ip = e.client_ip.map(|ip| ip.to_string());
    let outcome = if e.success { "success" } else { "failure" };
    let mut values = Commitments::default();
    let actor = values.commit(e.actor);
    let target = e.target.map(|t| values.commit(t));
    let reason = e.reason.map(|r| values.commit(r));
    let details = values.commit_json(&e.details);
    let payload = canonical(
        at,
        e.event_type.as_str(),
        &actor,
        ip.as_deref(),
        e.request_id,
        target.as_deref(),
        outcome,
        reason.as_deref(),
        &details,
    );
    let payload = in_format(Format::Committed, payload);
    Committed {
        at,
        event_type: e.event_type.as_str(),
        request_id: e.request_id.map(str::to_owned),
        actor,
        ip,
        target,
        outcome,
        reason,
        details,
        payload_hash: sha256(&payload),
        values,
    }
}

/// The values first, then the event that refers to them, in one statement.
const INSERT: &str = "with v as (
         insert into audit_values (ref, salt, value)
         select * from unnest($11::text[], $12::bytea[], $13::text[]))
     insert into audit_events
         (at, event_type, actor, client_ip, request_id, target, outcome, reason, details,
          payload_hash, seq, prev_hash, hash, format)
     values ($1, $2, $3, $4::text::inet, $5, $6, $7, $8, $9, $10, 0, '', '', 3)
     returning seq";

impl Committed {
    /// The parameters of [`INSERT`].
    fn params(&self) -> [&(dyn tokio_postgres::types::ToSql + Sync); 13] {
        [
            &self.at,
            &self.event_type,
            &self.actor,
            &self.ip,
            &self.request_id,
            &self.target,
            &self.outcome,
            &self.reason,
            &self.details,
            &self.payload_hash,
            &self.values.refs,
            &self.values.salts,
            &self.values.values,
        ]
    }
}

/// Appends an event; returns its sequence number.
pub async fn record(client: &TenantConn, e: &Event<'_>) -> Result<i64, RuntimeError> {
    let c = commit(e);
    let row = client
        .query_one(INSERT, &c.params())
        .await
        .map_err(|err| RuntimeError::query("recording an audit event", err))?;
    Ok(row.get(0))
}

/// [`record`] inside a transaction of the tenant's.
pub async fn record_in(
    tx: &tokio_postgres::Transaction<'_>,
    e: &Event<'_>,
) -> Result<i64, RuntimeError> {
    let c = commit(e);
    let row = tx
        .query_one(INSERT, &c.params())
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
    #[serde(skip)]
    format: i16,
}

impl Recorded {
    /// The canonical bytes of a format-3 event as stored (references), else of the event's
    /// strings as they are (plain, or resolved).
    fn canonical(&self, format: Format) -> Vec<u8> {
        let v1 = canonical(
            self.at,
            &self.event_type,
            &self.actor,
            self.client_ip.as_deref(),
            self.request_id.as_deref(),
            self.target.as_deref(),
            &self.outcome,
            self.reason.as_deref(),
            &self.details,
        );
        in_format(format, v1)
    }
}

const COLUMNS: &str = "seq, at, event_type, actor, host(client_ip), request_id, target, outcome,
                       reason, details, prev_hash, hash, payload_hash, format";

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
        format: r.get(13),
    }
}

/// A committed value as stored: the value (a pseudonym once erased), and its salt, or the
/// erasure that dropped it.
struct Stored {
    value: String,
    salt: Option<Vec<u8>>,
    erased_seq: Option<i64>,
}

impl Recorded {
    fn refs(&self, out: &mut Vec<String>) {
        for s in [
            Some(&self.actor),
            self.target.as_ref(),
            self.reason.as_ref(),
        ]
        .into_iter()
        .flatten()
        {
            if is_ref(s) {
                out.push(s.clone());
            }
        }
        portico_core::audit_chain::refs_in(&self.details, out);
    }

    /// The event with every reference replaced by its value (a missing one left as it is).
    fn resolved(&self, values: &HashMap<String, Stored>) -> Recorded {
        let get = |s: &str| {
            values
                .get(s)
                .map_or_else(|| s.to_owned(), |v| v.value.clone())
        };
        let mut r = self.clone();
        r.actor = get(&self.actor);
        r.target = self.target.as_deref().map(get);
        r.reason = self.reason.as_deref().map(get);
        r.details = portico_core::audit_chain::map_strings(&self.details, &mut |s| get(s));
        r
    }
}

async fn values_of(
    client: &TenantConn,
    events: &[Recorded],
) -> Result<HashMap<String, Stored>, RuntimeError> {
    let mut refs = Vec::new();
    for e in events {
        e.refs(&mut refs);
    }
    if refs.is_empty() {
        return Ok(HashMap::new());
    }
    let rows = client
        .query(
            "select ref, value, salt, erased_seq from audit_values where ref = any($1)",
            &[&refs],
        )
        .await
        .map_err(|e| RuntimeError::query("reading audit values", e))?;
    Ok(rows
        .iter()
        .map(|r| {
            (
                r.get(0),
                Stored {
                    value: r.get(1),
                    salt: r.get(2),
                    erased_seq: r.get(3),
                },
            )
        })
        .collect())
}

/// Events with their references resolved, as people read them.
async fn readable(
    client: &TenantConn,
    events: Vec<Recorded>,
) -> Result<Vec<Recorded>, RuntimeError> {
    let values = values_of(client, &events).await?;
    Ok(events.iter().map(|e| e.resolved(&values)).collect())
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
    readable(client, rows.iter().map(from_row).collect()).await
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

/// Events matching the filter, oldest first, at most `limit`, as people read them.
pub async fn list(
    client: &TenantConn,
    f: &Filter,
    limit: i64,
) -> Result<Vec<Recorded>, RuntimeError> {
    readable(client, list_stored(client, f, limit).await?).await
}

/// Events concerning someone known by any of `names` (as actor, target, or the user named in
/// the details), oldest first, as people read them.
pub async fn concerning(
    client: &TenantConn,
    names: &[String],
) -> Result<Vec<Recorded>, RuntimeError> {
    let rows = client
        .query(
            &format!(
                "with refs as (select ref from audit_values where value = any($1))
                 select {COLUMNS} from audit_events e
                  where e.actor = any($1) or e.target = any($1)
                     or e.actor in (select ref from refs) or e.target in (select ref from refs)
                     or e.details->>'actor_user_id' in (select ref from refs)
                     or e.details->>'user_id' in (select ref from refs)
                  order by seq"
            ),
            &[&names],
        )
        .await
        .map_err(|e| RuntimeError::query("reading audit events", e))?;
    readable(client, rows.iter().map(from_row).collect()).await
}

/// Events as stored (references unresolved).
async fn list_stored(
    client: &TenantConn,
    f: &Filter,
    limit: i64,
) -> Result<Vec<Recorded>, RuntimeError> {
    let rows = client
        .query(
            &format!(
                "select {COLUMNS} from audit_events
                  where ($1::text is null or event_type = $1)
                    and ($2::text is null or actor = $2
                         or actor in (select ref from audit_values where value = $2))
                    and ($3::text is null or target = $3
                         or target in (select ref from audit_values where value = $3))
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
    /// Values a person's erasure replaced (their references still link; they can no longer
    /// be opened).
    pub erased_values: i64,
    /// Events written before tenant schema 8 whose payload hash covers a value since erased:
    /// their links are checked, their content cannot be.
    pub unverifiable_erased: i64,
}

/// Walks the whole chain in pages: every link, every payload hash (of format-2 events, over
/// their resolved values unless one was erased), every committed value against its reference,
/// and every erased value back to a `person_erased` event.
pub async fn verify(client: &TenantConn) -> Result<Verification, RuntimeError> {
    let mut v = Verification {
        events: 0,
        head: hex::encode(GENESIS),
        head_seq: 0,
        broken: None,
        erased_values: 0,
        unverifiable_erased: 0,
    };
    let mut prev = GENESIS.to_vec();
    let mut erasures: Vec<(i64, i64)> = Vec::new();
    loop {
        let page = list_stored(
            client,
            &Filter {
                after: Some(v.head_seq),
                ..Filter::default()
            },
            5_000,
        )
        .await?;
        if page.is_empty() {
            break;
        }
        let values = values_of(client, &page).await?;
        for e in &page {
            if let Err(problem) = check(e, &prev, &values, &mut v, &mut erasures) {
                v.broken = Some(Break {
                    seq: e.seq,
                    problem,
                });
                return Ok(v);
            }
            prev = link(&prev, &e.payload_hash);
            v.head = hex::encode(&prev);
            v.head_seq = e.seq;
            v.events += 1;
        }
    }
    // Every erased value names the erasure that replaced it: a `person_erased` event.
    erasures.sort_unstable();
    erasures.dedup();
    let seqs: Vec<i64> = erasures.iter().map(|(s, _)| *s).collect();
    let found: Vec<i64> = client
        .query(
            "select seq from audit_events where seq = any($1) and event_type = 'person_erased'",
            &[&seqs],
        )
        .await
        .map_err(|e| RuntimeError::query("reading the audit chain", e))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if let Some((erasure, event)) = erasures.iter().find(|(s, _)| !found.contains(s)) {
        v.broken = Some(Break {
            seq: *event,
            problem: format!(
                "a value it refers to was replaced, naming event {erasure}, which is not an erasure"
            ),
        });
    }
    Ok(v)
}

/// One event against the chain so far. Erased values are counted in `v` and their erasures
/// (erasure seq, event seq) collected for the caller to check.
fn check(
    e: &Recorded,
    prev: &[u8],
    values: &HashMap<String, Stored>,
    v: &mut Verification,
    erasures: &mut Vec<(i64, i64)>,
) -> Result<(), String> {
    if e.seq != v.head_seq + 1 {
        return Err(format!(
            "event {} is missing (next stored is {})",
            v.head_seq + 1,
            e.seq
        ));
    }
    let format = Format::from_i16(e.format).ok_or("its format is unknown")?;
    let mut erased = false;
    if format != Format::Plain {
        let mut refs = Vec::new();
        e.refs(&mut refs);
        for r in &refs {
            let stored = values.get(r).ok_or("a value it refers to is missing")?;
            match (&stored.salt, stored.erased_seq) {
                (Some(salt), _) => {
                    if commitment(salt, &stored.value) != *r {
                        return Err("a value it refers to was changed".into());
                    }
                }
                (None, Some(erasure)) => {
                    erased = true;
                    v.erased_values += 1;
                    erasures.push((erasure, e.seq));
                }
                (None, None) => return Err("a value it refers to has no salt".into()),
            }
        }
    }
    let content = match format {
        Format::Plain | Format::Committed => Some(e.canonical(format)),
        Format::Converted if erased => None,
        Format::Converted => Some(e.resolved(values).canonical(format)),
    };
    match content {
        Some(c) if sha256(&c) != e.payload_hash => {
            return Err("its content does not match its payload hash".into());
        }
        Some(_) => {}
        None => v.unverifiable_erased += 1,
    }
    if e.prev_hash != hex::encode(prev) {
        return Err("it does not link to the event before it".into());
    }
    if hex::encode(link(prev, &e.payload_hash)) != e.hash {
        return Err("its chain hash is wrong".into());
    }
    Ok(())
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
