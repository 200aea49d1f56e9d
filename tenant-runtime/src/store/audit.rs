//! Security-relevant events of this tenant (sign-ins, sign-in failures with their reason,
//! sessions, invitations, SSO connection changes). Written in the tenant's own database.

use std::net::IpAddr;

use serde::Serialize;
use time::OffsetDateTime;
use tokio_postgres::Client;

use crate::error::RuntimeError;

/// One event to record.
#[derive(Debug, Clone)]
pub struct Event<'a> {
    pub event_type: &'static str,
    pub actor: &'a str,
    pub client_ip: Option<IpAddr>,
    pub request_id: Option<&'a str>,
    pub target: Option<&'a str>,
    pub success: bool,
    pub reason: Option<&'a str>,
    pub details: serde_json::Value,
}

impl<'a> Event<'a> {
    pub fn new(event_type: &'static str, actor: &'a str, success: bool) -> Self {
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

pub async fn record(client: &Client, e: &Event<'_>) -> Result<(), RuntimeError> {
    let ip = e.client_ip.map(|ip| ip.to_string());
    client
        .execute(
            "insert into audit_events
                 (event_type, actor, client_ip, request_id, target, outcome, reason, details)
             values ($1, $2, $3::text::inet, $4, $5, $6, $7, $8)",
            &[
                &e.event_type,
                &e.actor,
                &ip,
                &e.request_id,
                &e.target,
                &if e.success { "success" } else { "failure" },
                &e.reason,
                &e.details,
            ],
        )
        .await
        .map_err(|err| RuntimeError::query("recording an audit event", err))?;
    Ok(())
}

/// A recorded event.
#[derive(Debug, Clone, Serialize)]
pub struct Recorded {
    pub id: i64,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    pub event_type: String,
    pub actor: String,
    pub client_ip: Option<String>,
    pub request_id: Option<String>,
    pub target: Option<String>,
    pub outcome: String,
    pub reason: Option<String>,
}

/// The latest `limit` events, oldest first.
pub async fn latest(client: &Client, limit: i64) -> Result<Vec<Recorded>, RuntimeError> {
    let rows = client
        .query(
            "select id, at, event_type, actor, host(client_ip), request_id, target, outcome, reason
               from (select * from audit_events order by id desc limit $1) e order by id",
            &[&limit],
        )
        .await
        .map_err(|e| RuntimeError::query("reading audit events", e))?;
    Ok(rows
        .iter()
        .map(|r| Recorded {
            id: r.get(0),
            at: r.get(1),
            event_type: r.get(2),
            actor: r.get(3),
            client_ip: r.get(4),
            request_id: r.get(5),
            target: r.get(6),
            outcome: r.get(7),
            reason: r.get(8),
        })
        .collect())
}
