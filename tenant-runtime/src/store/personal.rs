//! Everything this tenant holds about one person (GDPR Art. 15 and 20), in one read: profile,
//! role and sites, identities, the local account's state (never its secrets), sessions, tokens
//! acting for them, invitations to their address, audit events where they are actor or target,
//! tickets and comments they wrote, documents and versions they put in, approvals they asked
//! for or decided. Secrets (hashes, TOTP and token material) are never part of it.

use crate::error::RuntimeError;
use crate::ids::UserId;
use crate::pools::TenantConn;

/// The person's data as one JSON object, or `None` if there is no such user. A person is
/// matched by their id, and in free-text actor columns by the names the platform records for
/// them: their e-mail and `user:<id>`.
pub async fn export(
    conn: &TenantConn,
    user: UserId,
) -> Result<Option<serde_json::Value>, RuntimeError> {
    let row = conn
        .query_opt(
            "with u as (select * from users where id = $1),
                  refs as (select array_remove(array[nullif(u.email, ''), 'user:' || u.id::text], null)
                                  as names, u.id::text as id from u)
             select jsonb_build_object(
               'user', (select to_jsonb(u) from u),
               'identities', (select coalesce(jsonb_agg(jsonb_build_object(
                     'connection', c.name, 'kind', c.kind, 'subject', i.subject,
                     'created_at', i.created_at) order by i.created_at), '[]')
                   from user_identities i left join sso_connections c on c.id = i.connection_id
                  where i.user_id = $1),
               'local_account', (select jsonb_build_object('totp_enabled', l.totp_enabled,
                     'failed_attempts', l.failed_attempts, 'locked_until', l.locked_until,
                     'updated_at', l.updated_at)
                   from local_credentials l where l.user_id = $1),
               'sessions', (select coalesce(jsonb_agg(jsonb_build_object(
                     'created_at', s.created_at, 'last_seen_at', s.last_seen_at,
                     'expires_at', s.expires_at, 'client_ip', host(s.client_ip),
                     'mfa_pending', s.mfa_pending) order by s.created_at), '[]')
                   from sessions s where s.user_id = $1),
               'tokens', (select coalesce(jsonb_agg(jsonb_build_object(
                     'id', t.id, 'name', t.name, 'role', t.role, 'site_scope', t.site_scope,
                     'created_at', t.created_at, 'expires_at', t.expires_at,
                     'revoked_at', t.revoked_at) order by t.created_at), '[]')
                   from api_tokens t where t.user_id = $1),
               'invitations', (select coalesce(jsonb_agg(jsonb_build_object(
                     'email', i.email, 'role', i.role, 'created_at', i.created_at,
                     'expires_at', i.expires_at, 'accepted_at', i.accepted_at)
                     order by i.created_at), '[]')
                   from invitations i, u
                  where i.accepted_by = $1 or lower(i.email) = lower(u.email)),
               'audit_events', (select coalesce(jsonb_agg(jsonb_build_object(
                     'seq', e.seq, 'at', e.at, 'event_type', e.event_type, 'actor', e.actor,
                     'client_ip', host(e.client_ip), 'target', e.target, 'outcome', e.outcome,
                     'reason', e.reason, 'details', e.details) order by e.seq), '[]')
                   from audit_events e, refs
                  where e.actor = any(refs.names) or e.target = any(refs.names)
                     or e.target = refs.id or e.details->>'actor_user_id' = refs.id
                     or e.details->>'user_id' = refs.id),
               'tickets', (select coalesce(jsonb_agg(jsonb_build_object(
                     'id', t.id, 'number', t.number, 'title', t.title,
                     'description', t.description, 'status', t.status,
                     'created_at', t.created_at) order by t.number), '[]')
                   from tickets t, refs
                  where t.created_by_user = $1 or t.created_by = any(refs.names)),
               'ticket_comments', (select coalesce(jsonb_agg(jsonb_build_object(
                     'id', c.id, 'ticket_id', c.ticket_id, 'body', c.body,
                     'created_at', c.created_at) order by c.created_at), '[]')
                   from ticket_comments c, refs where c.author = any(refs.names)),
               'documents', (select coalesce(jsonb_agg(jsonb_build_object(
                     'id', d.id, 'type', d.doc_type, 'title', d.title, 'period', d.period,
                     'site', d.site, 'created_at', d.created_at) order by d.created_at), '[]')
                   from documents d, refs where d.created_by = any(refs.names)),
               'document_versions_released', (select coalesce(jsonb_agg(jsonb_build_object(
                     'id', v.id, 'document_id', v.document_id, 'version', v.version,
                     'file_name', v.file_name, 'size', v.size, 'released_at', v.released_at)
                     order by v.created_at), '[]')
                   from document_versions v, refs where v.released_by = any(refs.names)),
               'approvals', (select coalesce(jsonb_agg(jsonb_build_object(
                     'id', a.id, 'action', a.action, 'target', a.target,
                     'requested_by', a.requested_by, 'decided_by', a.decided_by,
                     'status', a.status, 'created_at', a.created_at,
                     'decided_at', a.decided_at) order by a.created_at), '[]')
                   from approvals a, refs
                  where a.requested_by = any(refs.names) or a.decided_by = any(refs.names)
                     or a.target = any(refs.names) or a.target = refs.id)
             )
             where exists (select 1 from u)",
            &[&user.as_uuid()],
        )
        .await
        .map_err(|e| RuntimeError::query("reading a person's data", e))?;
    Ok(row.map(|r| r.get(0)))
}
