//! Four-eyes approvals: sensitive actions wait here until a second, different principal with
//! the needed permissions approves (then they are carried out) or rejects them.

use crate::conn::TenantConn;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::ids::ApprovalId;

use crate::error::RuntimeError;

/// How long a request waits for a decision.
pub const TTL: time::Duration = time::Duration::days(7);

#[derive(Debug, Clone)]
pub struct Approval {
    pub id: ApprovalId,
    pub action: String,
    pub target: String,
    pub payload: serde_json::Value,
    pub requested_by: String,
    pub status: String,
    pub decided_by: Option<String>,
    pub decided_at: Option<OffsetDateTime>,
    pub outcome: Option<String>,
    pub created_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
}

const COLUMNS: &str = "id, action, target, payload, requested_by, status, decided_by, decided_at,
    outcome, created_at, expires_at";

fn approval(r: &tokio_postgres::Row) -> Approval {
    Approval {
        id: r.get(0),
        action: r.get(1),
        target: r.get(2),
        payload: r.get(3),
        requested_by: r.get(4),
        status: r.get(5),
        decided_by: r.get(6),
        decided_at: r.get(7),
        outcome: r.get(8),
        created_at: r.get(9),
        expires_at: r.get(10),
    }
}

/// Whether the tenant requires approval for `action`.
pub async fn required(client: &TenantConn, action: &str) -> Result<bool, RuntimeError> {
    Ok(client
        .query_opt(
            "select required from approval_policy where action = $1",
            &[&action],
        )
        .await
        .map_err(|e| RuntimeError::query("reading the approval policy", e))?
        .is_none_or(|r| r.get(0)))
}

pub async fn policy(client: &TenantConn) -> Result<Vec<(String, bool)>, RuntimeError> {
    Ok(client
        .query(
            "select action, required from approval_policy order by action",
            &[],
        )
        .await
        .map_err(|e| RuntimeError::query("reading the approval policy", e))?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}

pub async fn set_policy(
    client: &TenantConn,
    action: &str,
    required: bool,
) -> Result<(), RuntimeError> {
    let n = client
        .execute(
            "update approval_policy set required = $2 where action = $1",
            &[&action, &required],
        )
        .await
        .map_err(|e| RuntimeError::query("changing the approval policy", e))?;
    if n == 0 {
        return Err(RuntimeError::NotFound(format!("no policy for '{action}'")));
    }
    Ok(())
}

pub async fn request(
    client: &TenantConn,
    action: &str,
    target: &str,
    payload: &serde_json::Value,
    requested_by: &str,
) -> Result<Approval, RuntimeError> {
    let row = client
        .query_one(
            &format!(
                "insert into approvals (id, action, target, payload, requested_by, expires_at)
                 values ($1, $2, $3, $4, $5, now() + make_interval(secs => $6))
                 returning {COLUMNS}"
            ),
            &[
                &ApprovalId::random(),
                &action,
                &target,
                payload,
                &requested_by,
                &(TTL.whole_seconds() as f64),
            ],
        )
        .await
        .map_err(|e| RuntimeError::query("requesting an approval", e))?;
    Ok(approval(&row))
}

pub async fn get(client: &TenantConn, id: ApprovalId) -> Result<Option<Approval>, RuntimeError> {
    Ok(client
        .query_opt(
            &format!("select {COLUMNS} from approvals where id = $1"),
            &[&id],
        )
        .await
        .map_err(|e| RuntimeError::query("reading an approval", e))?
        .as_ref()
        .map(approval))
}

pub async fn list(
    client: &TenantConn,
    status: Option<&str>,
) -> Result<Vec<Approval>, RuntimeError> {
    Ok(client
        .query(
            &format!(
                "select {COLUMNS} from approvals where ($1::text is null or status = $1)
                  order by created_at desc limit 500"
            ),
            &[&status],
        )
        .await
        .map_err(|e| RuntimeError::query("listing approvals", e))?
        .iter()
        .map(approval)
        .collect())
}

/// Takes a pending, unexpired approval for a decision by `by` (never its requester). Returns
/// `None` when it is not pending any more (someone else decided first) or has expired.
pub async fn decide(
    client: &TenantConn,
    id: ApprovalId,
    by: &str,
    status: &str,
    outcome: &str,
) -> Result<Option<Approval>, RuntimeError> {
    Ok(client
        .query_opt(
            &format!(
                "update approvals set status = $3, decided_by = $2, decided_at = now(), outcome = $4
                  where id = $1 and status = 'pending' and expires_at > now() and requested_by <> $2
                 returning {COLUMNS}"
            ),
            &[&id, &by, &status, &outcome],
        )
        .await
        .map_err(|e| RuntimeError::query("deciding an approval", e))?
        .as_ref()
        .map(approval))
}

/// Records how carrying out an approved action went.
pub async fn set_outcome(
    client: &TenantConn,
    id: ApprovalId,
    status: &str,
    outcome: &str,
) -> Result<(), RuntimeError> {
    client
        .execute(
            "update approvals set status = $2, outcome = $3 where id = $1",
            &[&id, &status, &outcome],
        )
        .await
        .map_err(|e| RuntimeError::query("recording an approval outcome", e))?;
    Ok(())
}

/// The permissions a requester (`user:<id>` or `token:<id>`, as [`request`] stored it) holds
/// *now*: `None` when that user is no longer active or that token is revoked or expired.
pub async fn requester_permissions(
    client: &TenantConn,
    principal: &str,
) -> Result<Option<crate::store::roles::Permissions>, RuntimeError> {
    let (kind, id) = principal.split_once(':').unwrap_or(("", ""));
    let Ok(id) = Uuid::parse_str(id) else {
        return Ok(None);
    };
    let sql = match kind {
        "user" => {
            "select array(select p.permission from role_permissions p where p.role = u.role)
               from users u where u.id = $1 and u.status = 'active'"
        }
        "token" => {
            "select array(select p.permission from role_permissions p
                           where p.role = coalesce(u.role, t.role))
               from api_tokens t left join users u on u.id = t.user_id
              where t.id = $1 and t.revoked_at is null
                and (t.expires_at is null or t.expires_at > now())
                and (t.user_id is null or u.status = 'active')"
        }
        _ => return Ok(None),
    };
    let row = client
        .query_opt(sql, &[&id])
        .await
        .map_err(|e| RuntimeError::query("checking an approval's requester", e))?;
    Ok(row.map(|r| {
        r.get::<_, Vec<String>>(0)
            .iter()
            .filter_map(|p| crate::store::roles::Permission::parse(p))
            .collect()
    }))
}
