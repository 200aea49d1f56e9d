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
    let Some(mut data) = row.map(|r| r.get::<_, serde_json::Value>(0)) else {
        return Ok(None);
    };
    // Audit events refer to their strings (`audit_values`): matched and shown through them.
    let mut names = vec![user.to_string(), format!("user:{user}")];
    if let Some(email) = data["user"]["email"].as_str().filter(|e| !e.is_empty()) {
        names.push(email.to_owned());
    }
    let events = crate::store::audit::concerning(conn, &names).await?;
    data["audit_events"] = events
        .into_iter()
        .map(|e| {
            serde_json::json!({
                "seq": e.seq,
                "at": e.at.format(&time::format_description::well_known::Rfc3339).ok(),
                "event_type": e.event_type, "actor": e.actor,
                "client_ip": e.client_ip, "target": e.target, "outcome": e.outcome,
                "reason": e.reason, "details": e.details,
            })
        })
        .collect();
    Ok(Some(data))
}

/// What an erasure changed.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Erased {
    /// The names the person is shown by from now on.
    pub pseudonym_email: String,
    pub pseudonym_name: String,
    /// Rows of the tenant's tables changed or deleted.
    pub rows: u64,
    /// Audit values replaced (their references stay in the chain).
    pub audit_values: u64,
}

/// The pseudonyms of an erased person: derived from their id alone, so they are stable and
/// reveal nothing the id does not.
pub fn pseudonyms(user: UserId) -> (String, String, String) {
    let short: String = user.to_string().replace('-', "").chars().take(12).collect();
    (
        format!("erased-{short}@erased.invalid"),
        format!("Erased user {short}"),
        format!("erased-{short}"),
    )
}

/// `s` as a literal in a PostgreSQL regular expression (ARE: a backslash before a
/// non-alphanumeric character stands for that character).
fn regex_literal(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 2);
    for c in s.chars() {
        if !c.is_alphanumeric() {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Erases a person (GDPR Art. 17), in the caller's transaction, after it recorded the
/// `person_erased` event `erasure_seq`: deletes their credentials, sessions, tokens and
/// invitations; replaces their e-mail, name and IdP subjects with pseudonyms in the user row,
/// in their identities, and wherever else they appear as text in any table of the tenant
/// (case-insensitively, as whole words; JSON included); and replaces them in the audit log's
/// values, dropping those values' salts. Their business records stay, attributed to the
/// pseudonym.
pub async fn erase(
    tx: &tokio_postgres::Transaction<'_>,
    user: UserId,
    erasure_seq: i64,
) -> Result<Erased, RuntimeError> {
    let q = |what: &'static str| move |e| RuntimeError::query(what, e);
    let row = tx
        .query_opt(
            "select email, display_name from users where id = $1 for update",
            &[&user.as_uuid()],
        )
        .await
        .map_err(q("reading the person"))?
        .ok_or_else(|| RuntimeError::NotFound("no such user".into()))?;
    let (email, name): (String, String) = (row.get(0), row.get(1));
    let subjects: Vec<String> = tx
        .query(
            "select subject from user_identities where user_id = $1 order by subject",
            &[&user.as_uuid()],
        )
        .await
        .map_err(q("reading the person's identities"))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let (pseudo_email, pseudo_name, pseudo_subject) = pseudonyms(user);
    // What to replace, longest first (an e-mail may contain the name).
    let mut terms: Vec<(String, String)> = Vec::new();
    if !email.is_empty() {
        terms.push((email.clone(), pseudo_email.clone()));
    }
    if name.trim().chars().count() >= 3 {
        terms.push((name.trim().to_owned(), pseudo_name.clone()));
    }
    for (i, s) in subjects.iter().enumerate() {
        if s.chars().count() >= 3 {
            terms.push((s.clone(), format!("{pseudo_subject}-{}", i + 1)));
        }
    }
    terms.sort_by_key(|(t, _)| std::cmp::Reverse(t.len()));
    let mut done = Erased {
        pseudonym_email: pseudo_email.clone(),
        pseudonym_name: pseudo_name.clone(),
        ..Erased::default()
    };
    for sql in [
        "delete from local_credentials where user_id = $1",
        "delete from sessions where user_id = $1",
        "delete from api_tokens where user_id = $1",
        "delete from invitations where accepted_by = $1
            or lower(email) = lower((select email from users where id = $1))",
    ] {
        done.rows += tx
            .execute(sql, &[&user.as_uuid()])
            .await
            .map_err(q("deleting the person's credentials"))?;
    }
    done.rows += tx
        .execute(
            "update users set email = $2, display_name = $3, status = 'deactivated'
              where id = $1",
            &[&user.as_uuid(), &pseudo_email, &pseudo_name],
        )
        .await
        .map_err(q("pseudonymising the person"))?;
    done.rows += tx
        .execute(
            "update user_identities i set subject = $2 || '-' || n.n
               from (select ctid, row_number() over (order by subject) as n
                       from user_identities where user_id = $1) n
              where i.ctid = n.ctid",
            &[&user.as_uuid(), &pseudo_subject],
        )
        .await
        .map_err(q("pseudonymising the person's identities"))?;
    if terms.is_empty() {
        return Ok(done);
    }
    // One nested regexp_replace per column: $1, $2 the first pattern and replacement, and so
    // on; the last parameter is every pattern at once, to find the rows.
    let patterns = |json: bool| -> Vec<String> {
        terms
            .iter()
            .map(|(t, _)| {
                let t = if json {
                    let quoted = serde_json::to_string(t).unwrap_or_default();
                    quoted[1..quoted.len().saturating_sub(1)].to_owned()
                } else {
                    t.clone()
                };
                format!("\\m{}\\M", regex_literal(&t))
            })
            .collect()
    };
    let replace = |column: &str| -> String {
        let mut expr = column.to_owned();
        for i in 0..terms.len() {
            expr = format!(
                "regexp_replace({expr}, ${}, ${}, 'gi')",
                2 * i + 1,
                2 * i + 2
            );
        }
        expr
    };
    let params = |json: bool| -> Vec<String> {
        let pats = patterns(json);
        let mut p = Vec::new();
        for (pat, (_, rep)) in pats.iter().zip(&terms) {
            p.push(pat.clone());
            p.push(rep.clone());
        }
        p.push(pats.join("|"));
        p
    };
    let last = 2 * terms.len() + 1;
    let columns = tx
        .query(
            "select c.table_schema::text, c.table_name::text, c.column_name::text,
                    c.data_type::text
               from information_schema.columns c
               join information_schema.tables t
                 on t.table_schema = c.table_schema and t.table_name = c.table_name
              where c.table_schema = any(current_schemas(false))
                and t.table_type = 'BASE TABLE'
                and c.data_type in ('text', 'character varying', 'jsonb', 'json')
                and c.table_name not in ('refinery_schema_history', 'audit_events', 'audit_values')
              order by 1, 2, 3",
            &[],
        )
        .await
        .map_err(q("listing the tenant's columns"))?;
    let ident = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
    for c in &columns {
        let (schema, table, column, kind): (String, String, String, String) =
            (c.get(0), c.get(1), c.get(2), c.get(3));
        let json = kind == "jsonb" || kind == "json";
        let col = ident(&column);
        let (read, write) = if json {
            (
                format!("{col}::text"),
                format!("({})::{kind}", replace(&format!("{col}::text"))),
            )
        } else {
            (col.clone(), replace(&col))
        };
        let sql = format!(
            "update {s}.{t} set {col} = {write} where {read} ~* ${last}",
            s = ident(&schema),
            t = ident(&table)
        );
        let p = params(json);
        let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = p
            .iter()
            .map(|s| s as &(dyn tokio_postgres::types::ToSql + Sync))
            .collect();
        done.rows += tx
            .execute(&sql, &refs)
            .await
            .map_err(q("pseudonymising the person's data"))?;
    }
    // The audit log's values: replaced, and their salts dropped.
    let p = params(false);
    let mut refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = p
        .iter()
        .map(|s| s as &(dyn tokio_postgres::types::ToSql + Sync))
        .collect();
    refs.push(&erasure_seq);
    done.audit_values = tx
        .execute(
            &format!(
                "update audit_values set value = {}, salt = null,
                        erased_seq = coalesce(erased_seq, ${})
                  where value ~* ${last}",
                replace("value"),
                last + 1
            ),
            &refs,
        )
        .await
        .map_err(q("erasing the person from the audit log"))?;
    Ok(done)
}
