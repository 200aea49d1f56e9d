//! `portico audit verify|export|anchor`: checking a tenant's hash-chained audit log against
//! itself and against the anchors the control plane keeps, exporting it as JSON lines, and
//! anchoring chain heads (on demand, and periodically from `portico serve`).

use std::io::Write;

use clap::Subcommand;
use portico_tenant_runtime::store::audit;
use serde::Serialize;

use crate::Platform;
use crate::error::PlatformError;

#[derive(Subcommand)]
pub enum AuditCmd {
    /// Check, as the database admin, that the audit log is still out of the tenant role's
    /// reach (owner, schema, triggers, functions, privileges); recompute its chain and compare
    /// it with the control plane's anchors. Exits 0 when intact; otherwise prints what is
    /// wrong (the first broken link) and exits 1.
    Verify {
        slug: String,
        #[arg(long)]
        json: bool,
    },
    /// Write a tenant's audit events as JSON lines (oldest first) to standard output.
    Export {
        slug: String,
        /// Only events at or after this time (RFC 3339).
        #[arg(long)]
        since: Option<String>,
    },
    /// Record the head of a tenant's audit chain in the control plane now.
    Anchor { slug: String },
}

/// What `verify` found.
#[derive(Debug, Serialize)]
pub struct Report {
    pub tenant: String,
    pub events: i64,
    pub head_seq: i64,
    pub head: String,
    pub anchors_checked: usize,
    /// Values replaced by erasures (their references still link; they cannot be opened).
    pub erased_values: i64,
    /// Events from before tenant schema 8 hashed over a value since erased: links checked,
    /// content not checkable.
    pub unverifiable_erased: i64,
    pub intact: bool,
    /// The first broken link: (sequence number, what is wrong).
    pub broken: Option<(i64, String)>,
    /// What is wrong with the log's protection (owner, schema, triggers, functions,
    /// privileges), checked as the database admin; empty when it is as provisioned.
    pub protection: Vec<String>,
}

/// Records the current head of `slug`'s chain; returns (seq, hex hash), or `None` for an empty
/// log. An anchor already stored for that position must agree (else the log was rewritten).
pub async fn anchor(p: &Platform, slug: &str) -> anyhow::Result<Option<(i64, String)>> {
    let (tenant, _) = p.tenant_key(slug).await?;
    let client = p.connect_as_tenant(slug).await?;
    let Some((seq, hash)) = audit::head(&client).await.map_err(PlatformError::from)? else {
        return Ok(None);
    };
    let stored: Vec<u8> = sqlx::query_scalar(
        "insert into audit_anchors (tenant_id, seq, hash) values ($1, $2, $3)
         on conflict (tenant_id, seq) do update set seq = excluded.seq
         returning hash",
    )
    .bind(tenant.as_uuid())
    .bind(seq)
    .bind(&hash)
    .fetch_one(p.catalog.pool())
    .await
    .map_err(|e| PlatformError::catalog("anchoring an audit chain", e))?;
    if stored != hash {
        return Err(PlatformError::InvalidState(format!(
            "tenant '{slug}': audit event {seq} differs from its anchor; run `portico audit verify {slug}`"
        ))
        .into());
    }
    Ok(Some((seq, hex::encode(hash))))
}

/// Anchors every active tenant (the periodic task of `portico serve`), except those whose schema
/// is older than the runtime serves: their chain is anchored when their migration carries it.
pub async fn anchor_all(p: &Platform) {
    let slugs: Vec<String> = match sqlx::query_scalar(
        "select slug from tenants where status = 'active' and coalesce(schema_version, 0) >= $1",
    )
    .bind(portico_tenant_runtime::MIN_TENANT_SCHEMA)
    .fetch_all(p.catalog.pool())
    .await
    {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "audit anchoring: cannot list tenants");
            return;
        }
    };
    for slug in slugs {
        match anchor(p, &slug).await {
            Ok(Some((seq, _))) => tracing::debug!(tenant = %slug, seq, "audit chain anchored"),
            Ok(None) => {}
            Err(e) => tracing::error!(tenant = %slug, error = %e, "audit anchoring failed"),
        }
    }
}

pub async fn verify(p: &Platform, slug: &str) -> anyhow::Result<Report> {
    let (tenant, _) = p.tenant_key(slug).await?;
    // The protection first, as the admin: a log the tenant role could rewrite proves nothing,
    // however well its chain verifies.
    let protection = {
        let (admin, role) = p.connect_as_admin(slug).await?;
        let target = p.tenant_target(slug).await?;
        portico_provisioning::database::audit_protection_problems(&admin, &role, &target).await?
    };
    let client = p.connect_as_tenant(slug).await?;
    let v = audit::verify(&client).await.map_err(PlatformError::from)?;
    let mut report = Report {
        tenant: slug.to_owned(),
        events: v.events,
        head_seq: v.head_seq,
        head: v.head.clone(),
        anchors_checked: 0,
        erased_values: v.erased_values,
        unverifiable_erased: v.unverifiable_erased,
        intact: v.broken.is_none() && protection.is_empty(),
        broken: v.broken.map(|b| (b.seq, b.problem)),
        protection,
    };
    if !report.intact {
        return Ok(report);
    }
    let anchors: Vec<(i64, Vec<u8>)> =
        sqlx::query_as("select seq, hash from audit_anchors where tenant_id = $1 order by seq")
            .bind(tenant.as_uuid())
            .fetch_all(p.catalog.pool())
            .await
            .map_err(|e| PlatformError::catalog("reading audit anchors", e))?;
    for (seq, hash) in anchors {
        report.anchors_checked += 1;
        let problem = match audit::hash_at(&client, seq)
            .await
            .map_err(PlatformError::from)?
        {
            None => Some(format!(
                "the log ends at event {} but event {seq} was anchored: events were removed",
                v.head_seq
            )),
            Some(h) if h != hash => Some("it differs from the hash anchored in the control plane: the log was rewritten up to here".to_owned()),
            Some(_) => None,
        };
        if let Some(problem) = problem {
            report.intact = false;
            report.broken = Some((seq, problem));
            break;
        }
    }
    Ok(report)
}

pub async fn run(p: &Platform, cmd: AuditCmd) -> anyhow::Result<bool> {
    match cmd {
        AuditCmd::Verify { slug, json } => {
            let r = verify(p, &slug).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else if !r.protection.is_empty() {
                println!(
                    "audit log of '{slug}' is UNPROTECTED: {}",
                    r.protection.join("; ")
                );
            } else if let Some((seq, problem)) = &r.broken {
                println!("audit log of '{slug}' is BROKEN at event {seq}: {problem}");
            } else {
                println!(
                    "audit log of '{slug}' is intact: {} events, head {} (event {}), {} anchor(s) match{}",
                    r.events,
                    r.head,
                    r.head_seq,
                    r.anchors_checked,
                    if r.erased_values > 0 {
                        format!(
                            "; {} value(s) erased ({} older event(s) whose content can no longer be checked)",
                            r.erased_values, r.unverifiable_erased
                        )
                    } else {
                        String::new()
                    }
                );
            }
            Ok(r.intact)
        }
        AuditCmd::Export { slug, since } => {
            let since = match since {
                None => None,
                Some(s) => Some(
                    time::OffsetDateTime::parse(&s, &time::format_description::well_known::Rfc3339)
                        .map_err(|_| {
                            PlatformError::InvalidInput(format!(
                                "--since '{s}' is not an RFC 3339 time"
                            ))
                        })?,
                ),
            };
            let client = p.connect_as_tenant(&slug).await?;
            let mut e = audit::Event::new(audit::EventType::ExportRequested, "cli", true);
            e.target = Some("audit_events");
            audit::record(&client, &e)
                .await
                .map_err(PlatformError::from)?;
            let mut filter = audit::Filter {
                since,
                ..audit::Filter::default()
            };
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            loop {
                let page = audit::list(&client, &filter, 5_000)
                    .await
                    .map_err(PlatformError::from)?;
                let Some(last) = page.last() else { break };
                filter.after = Some(last.seq);
                for event in &page {
                    serde_json::to_writer(&mut out, event)?;
                    out.write_all(b"\n")?;
                }
            }
            out.flush()?;
            Ok(true)
        }
        AuditCmd::Anchor { slug } => {
            match anchor(p, &slug).await? {
                Some((seq, hash)) => {
                    println!("anchored the audit log of '{slug}' at event {seq}: {hash}")
                }
                None => println!("the audit log of '{slug}' is empty; nothing to anchor"),
            }
            Ok(true)
        }
    }
}
