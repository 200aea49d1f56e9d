//! Service tickets: creation (idempotent per caller and `Idempotency-Key`), the status
//! workflow, comments and document attachments.

use crate::conn::TenantConn;
use crate::ids::UserId;
use time::OffsetDateTime;
use tokio_postgres::GenericClient;
use uuid::Uuid;

use crate::error::RuntimeError;

/// The workflow: which status may follow which.
pub const TRANSITIONS: &[(&str, &str)] = &[
    ("open", "in_progress"),
    ("open", "resolved"),
    ("in_progress", "waiting_for_customer"),
    ("in_progress", "resolved"),
    ("waiting_for_customer", "in_progress"),
    ("waiting_for_customer", "resolved"),
    ("resolved", "closed"),
    ("resolved", "in_progress"),
];
pub const STATUSES: [&str; 5] = [
    "open",
    "in_progress",
    "waiting_for_customer",
    "resolved",
    "closed",
];

pub fn allowed(from: &str, to: &str) -> bool {
    TRANSITIONS.iter().any(|(f, t)| *f == from && *t == to)
}

#[derive(Debug, Clone)]
pub struct Ticket {
    pub id: Uuid,
    pub number: i64,
    pub title: String,
    pub description: String,
    pub site: Option<String>,
    pub status: String,
    pub created_by: String,
    pub created_by_user: Option<UserId>,
    pub created_by_token: Option<Uuid>,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
    pub attachments: Vec<Uuid>,
}

#[derive(Debug, Clone)]
pub struct Comment {
    pub id: Uuid,
    pub author: String,
    pub body: String,
    pub created_at: OffsetDateTime,
}

const COLUMNS: &str = "t.id, t.number, t.title, t.description, t.site, t.status, t.created_by,
    t.created_by_user, t.created_by_token, t.created_at, t.updated_at,
    array(select a.document_id from ticket_attachments a where a.ticket_id = t.id order by a.document_id)";

fn ticket(r: &tokio_postgres::Row) -> Ticket {
    Ticket {
        id: r.get(0),
        number: r.get(1),
        title: r.get(2),
        description: r.get(3),
        site: r.get(4),
        status: r.get(5),
        created_by: r.get(6),
        created_by_user: r.get(7),
        created_by_token: r.get(8),
        created_at: r.get(9),
        updated_at: r.get(10),
        attachments: r.get(11),
    }
}

fn q(op: &'static str) -> impl Fn(tokio_postgres::Error) -> RuntimeError {
    move |e| match RuntimeError::constraint_of(&e) {
        Some("tickets_site_fkey") => RuntimeError::InvalidInput("unknown site".into()),
        Some("tickets_title_check") => {
            RuntimeError::InvalidInput("title must be 1 to 300 characters".into())
        }
        Some("ticket_comments_body_check") => {
            RuntimeError::InvalidInput("a comment must be 1 to 20000 characters".into())
        }
        Some("ticket_attachments_document_id_fkey") => {
            RuntimeError::InvalidInput("unknown document".into())
        }
        _ => RuntimeError::query(op, e),
    }
}

/// Who creates a ticket.
#[derive(Debug, Clone)]
pub struct Creator<'a> {
    pub name: &'a str,
    pub user: Option<UserId>,
    pub token: Option<Uuid>,
}

pub async fn create<C: GenericClient>(
    client: &C,
    title: &str,
    description: &str,
    site: Option<&str>,
    attachments: &[Uuid],
    by: &Creator<'_>,
) -> Result<Ticket, RuntimeError> {
    let id = Uuid::new_v4();
    client
        .execute(
            "insert into tickets (id, title, description, site, created_by, created_by_user, created_by_token)
             values ($1, $2, $3, $4, $5, $6, $7)",
            &[&id, &title, &description, &site, &by.name, &by.user, &by.token],
        )
        .await
        .map_err(q("creating a ticket"))?;
    for d in attachments {
        client
            .execute(
                "insert into ticket_attachments (ticket_id, document_id) values ($1, $2)
                 on conflict do nothing",
                &[&id, d],
            )
            .await
            .map_err(q("attaching a document"))?;
    }
    let row = client
        .query_one(
            &format!("select {COLUMNS} from tickets t where t.id = $1"),
            &[&id],
        )
        .await
        .map_err(q("reading a ticket"))?;
    Ok(ticket(&row))
}

pub async fn get(client: &TenantConn, id: Uuid) -> Result<Option<Ticket>, RuntimeError> {
    Ok(client
        .query_opt(
            &format!("select {COLUMNS} from tickets t where t.id = $1"),
            &[&id],
        )
        .await
        .map_err(q("reading a ticket"))?
        .as_ref()
        .map(ticket))
}

/// What a caller may see of the ticket list.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub status: Option<String>,
    pub site: Option<String>,
    /// Only tickets created by this user or token (callers without `tickets.read_all`).
    pub own_user: Option<UserId>,
    pub own_token: Option<Uuid>,
    pub only_own: bool,
    pub scope: Option<Vec<String>>,
    pub after: Option<i64>,
}

/// Newest first (by number), `after` is the last number seen.
pub async fn list(
    client: &TenantConn,
    f: &Filter,
    limit: i64,
) -> Result<Vec<Ticket>, RuntimeError> {
    Ok(client
        .query(
            &format!(
                "select {COLUMNS} from tickets t
                  where ($1::text is null or t.status = $1)
                    and ($2::text is null or t.site = $2)
                    and (not $3 or (t.created_by_user is not distinct from $4::uuid and $4::uuid is not null)
                                or (t.created_by_token is not distinct from $5::uuid and $5::uuid is not null))
                    and ($6::text[] is null or t.site = any($6))
                    and ($7::bigint is null or t.number < $7)
                  order by t.number desc limit $8"
            ),
            &[
                &f.status,
                &f.site,
                &f.only_own,
                &f.own_user,
                &f.own_token,
                &f.scope,
                &f.after,
                &limit,
            ],
        )
        .await
        .map_err(q("listing tickets"))?
        .iter()
        .map(ticket)
        .collect())
}

/// Moves a ticket from `from` to `to` (only if it is still in `from`).
pub async fn set_status(
    client: &TenantConn,
    id: Uuid,
    from: &str,
    to: &str,
) -> Result<Option<Ticket>, RuntimeError> {
    let done = client
        .execute(
            "update tickets set status = $3, updated_at = now() where id = $1 and status = $2",
            &[&id, &from, &to],
        )
        .await
        .map_err(q("changing a ticket's status"))?;
    if done == 0 {
        return Ok(None);
    }
    get(client, id).await
}

pub async fn comment(
    client: &TenantConn,
    ticket: Uuid,
    author: &str,
    body: &str,
) -> Result<Comment, RuntimeError> {
    let row = client
        .query_one(
            "insert into ticket_comments (id, ticket_id, author, body) values ($1, $2, $3, $4)
             returning id, author, body, created_at",
            &[&Uuid::new_v4(), &ticket, &author, &body],
        )
        .await
        .map_err(q("adding a comment"))?;
    client
        .execute(
            "update tickets set updated_at = now() where id = $1",
            &[&ticket],
        )
        .await
        .map_err(q("adding a comment"))?;
    Ok(Comment {
        id: row.get(0),
        author: row.get(1),
        body: row.get(2),
        created_at: row.get(3),
    })
}

pub async fn comments(client: &TenantConn, ticket: Uuid) -> Result<Vec<Comment>, RuntimeError> {
    Ok(client
        .query(
            "select id, author, body, created_at from ticket_comments where ticket_id = $1
              order by created_at, id",
            &[&ticket],
        )
        .await
        .map_err(q("reading comments"))?
        .iter()
        .map(|r| Comment {
            id: r.get(0),
            author: r.get(1),
            body: r.get(2),
            created_at: r.get(3),
        })
        .collect())
}

// ---- idempotency -----------------------------------------------------------------------------

/// The outcome of claiming an `Idempotency-Key`.
#[derive(Debug)]
pub enum Claim {
    /// First use: the transaction holds the key until it commits.
    New,
    /// Used before with the same request: its answer.
    Replay {
        status: i32,
        body: serde_json::Value,
    },
    /// Used before with a different request.
    Mismatch,
}

/// Claims `(principal, key)` inside `tx`. A concurrent first use of the same key blocks here
/// until that transaction ends (the unique key makes PostgreSQL wait), then sees its answer.
pub async fn claim(
    tx: &tokio_postgres::Transaction<'_>,
    principal: &str,
    key: &str,
    request_hash: &[u8],
) -> Result<Claim, RuntimeError> {
    let inserted = tx
        .execute(
            "insert into idempotency_keys (principal, key, request_hash) values ($1, $2, $3)
             on conflict do nothing",
            &[&principal, &key, &request_hash],
        )
        .await
        .map_err(|e| RuntimeError::query("claiming an idempotency key", e))?;
    if inserted == 1 {
        return Ok(Claim::New);
    }
    let row = tx
        .query_one(
            "select request_hash, status, response from idempotency_keys
              where principal = $1 and key = $2",
            &[&principal, &key],
        )
        .await
        .map_err(|e| RuntimeError::query("reading an idempotency key", e))?;
    let hash: Vec<u8> = row.get(0);
    if hash != request_hash {
        return Ok(Claim::Mismatch);
    }
    match (row.get::<_, Option<i32>>(1), row.get(2)) {
        (Some(status), Some(body)) => Ok(Claim::Replay { status, body }),
        _ => Ok(Claim::Mismatch),
    }
}

/// Stores the answer of a claimed key (in the same transaction as the work).
pub async fn remember(
    tx: &tokio_postgres::Transaction<'_>,
    principal: &str,
    key: &str,
    status: i32,
    body: &serde_json::Value,
) -> Result<(), RuntimeError> {
    tx.execute(
        "update idempotency_keys set status = $3, response = $4 where principal = $1 and key = $2",
        &[&principal, &key, &status, body],
    )
    .await
    .map_err(|e| RuntimeError::query("storing an idempotent answer", e))?;
    Ok(())
}
