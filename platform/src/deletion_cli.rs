//! The command line of tenant deletion: `tenant delete|restore|purge-due|certificate`,
//! `operator approvals list|approve|reject`, `certificate verify` (offline) and `export
//! public-key`. Commands that act for an operator (request, approve, reject) identify them by
//! the operator token in `PORTICO_OPERATOR_TOKEN` and are written to the operator audit trail
//! like API calls.

use std::path::PathBuf;

use clap::Subcommand;
use portico_core::signing::{PublicKey, verify_document};

use crate::cli::json;
use crate::context::Platform;
use crate::deletion::{self, ApprovalView, DeletionRequest, DeletionView};
use crate::error::PlatformError;
use crate::operators::{AuditEntry, OperatorIdentity};

#[derive(Subcommand)]
pub enum ApprovalsCmd {
    /// Requests waiting for another operator's approval (`--all`: decided ones too).
    List {
        #[arg(long)]
        all: bool,
        #[arg(long)]
        json: bool,
    },
    /// Approve a request another operator made (acting as the operator whose token is in
    /// PORTICO_OPERATOR_TOKEN).
    Approve {
        id: String,
        #[arg(long)]
        note: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Reject (or, as its requester, withdraw) a request.
    Reject {
        id: String,
        #[arg(long)]
        note: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub enum CertificateCmd {
    /// Verify a deletion certificate offline: its Ed25519 signature over its content, by the
    /// given public key (as `portico export public-key` prints it) or, without one, by the key
    /// it names (printed, to compare with the published key).
    Verify {
        file: PathBuf,
        #[arg(long)]
        public_key: Option<String>,
    },
}

#[derive(Subcommand)]
pub enum ExportCmd {
    /// Print the platform's signing public key (export manifests, deletion certificates;
    /// publish it).
    PublicKey,
    /// Verify an export offline: the manifest's signature, every file's SHA-256 and size, the
    /// row counts and the audit chain. Exits non-zero, naming each problem, if anything fails.
    Verify {
        file: PathBuf,
        /// The recipient's age identity file (AGE-SECRET-KEY-1…), for an encrypted archive.
        #[arg(long)]
        identity: Option<PathBuf>,
        /// The platform key the manifest must be signed by (`portico export public-key`).
        #[arg(long)]
        public_key: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

/// `portico tenant export <slug> --out FILE --recipient age1… | --plaintext`
pub async fn export(
    p: &Platform,
    slug: &str,
    out: PathBuf,
    recipient: Option<String>,
    anonymize: bool,
    as_json: bool,
) -> anyhow::Result<()> {
    let recipient = recipient
        .as_deref()
        .map(crate::export::parse_recipient)
        .transpose()?;
    let report = crate::export::export(
        p,
        crate::cli::slug(slug)?.as_str(),
        &out,
        recipient,
        anonymize,
    )
    .await?;
    if as_json {
        json(&report)?;
    } else {
        println!(
            "exported '{}' to {} ({}; {} rows, {} document versions, {} bytes); manifest SHA-256 {}",
            report.tenant,
            report.file,
            if report.encrypted {
                "encrypted"
            } else {
                "PLAINTEXT"
            },
            report.rows,
            report.documents,
            report.archive_bytes,
            report.manifest_sha256
        );
    }
    Ok(())
}

/// `portico export verify FILE`: offline (no settings, no catalog).
pub fn verify_export(
    file: PathBuf,
    identity: Option<PathBuf>,
    public_key: Option<String>,
    as_json: bool,
) -> anyhow::Result<bool> {
    let identities = identity
        .as_deref()
        .map(crate::export::read_identities)
        .transpose()?
        .unwrap_or_default();
    let expected = public_key
        .as_deref()
        .map(PublicKey::parse)
        .transpose()
        .map_err(|e| PlatformError::InvalidInput(format!("--public-key: {e}")))?;
    let report = crate::export::verify(&file, &identities, expected.as_ref())?;
    if as_json {
        json(&report)?;
    } else if report.problems.is_empty() {
        println!(
            "valid export of tenant '{}': {} tables, {} rows, {} document versions ({} bytes), audit chain of {} events intact; signed by {}{}",
            report.tenant.as_deref().unwrap_or("?"),
            report.tables,
            report.rows,
            report.documents,
            report.document_bytes,
            report.audit_events,
            report.signed_by.as_deref().unwrap_or("?"),
            if expected.is_some() {
                ""
            } else {
                " (compare with the published key: portico export public-key)"
            }
        );
    } else {
        for p in &report.problems {
            eprintln!("error: {p}");
        }
    }
    Ok(report.problems.is_empty())
}

/// The operator acting through the CLI: the token in `PORTICO_OPERATOR_TOKEN`.
async fn operator(p: &Platform) -> anyhow::Result<OperatorIdentity> {
    let token = std::env::var("PORTICO_OPERATOR_TOKEN").map_err(|_| {
        PlatformError::InvalidInput(
            "this command acts for an operator: set PORTICO_OPERATOR_TOKEN to your operator token"
                .into(),
        )
    })?;
    p.catalog
        .operator_by_token(token.trim())
        .await?
        .ok_or_else(|| {
            PlatformError::InvalidInput(
                "PORTICO_OPERATOR_TOKEN is not a valid operator token (unknown, revoked or expired)"
                    .into(),
            )
            .into()
        })
}

/// Records a CLI action in the operator audit trail, then passes the result on.
async fn audited<T>(
    p: &Platform,
    who: &OperatorIdentity,
    action: &str,
    target: &str,
    result: Result<T, PlatformError>,
) -> anyhow::Result<T> {
    let outcome = if result.is_ok() {
        "succeeded"
    } else {
        "failed"
    };
    let detail = match &result {
        Ok(_) => serde_json::json!({"via": "cli", "token_id": who.token_id}),
        Err(e) => {
            serde_json::json!({"via": "cli", "token_id": who.token_id, "error": e.to_string()})
        }
    };
    p.catalog
        .audit(AuditEntry {
            actor: &who.name,
            action,
            target: Some(target),
            outcome,
            client_ip: None,
            request_id: &format!("cli-{}", uuid::Uuid::new_v4()),
            detail: Some(detail),
        })
        .await?;
    Ok(result?)
}

fn print_approval(a: &ApprovalView) {
    println!(
        "{}  {}  {}  requested by {} at {}  [{}]",
        a.id, a.kind, a.slug, a.requested_by, a.requested_at, a.status
    );
    if let Some(reason) = a.request.get("reason").and_then(|v| v.as_str()) {
        println!("    reason: {reason}");
    }
    if let Some(o) = a.request.get("override_retention").and_then(|v| v.as_str()) {
        println!("    overrides retention and legal holds: {o}");
    }
    if let Some(days) = a
        .request
        .get("grace_days")
        .and_then(serde_json::Value::as_u64)
    {
        println!("    grace: {days} days");
    }
    if let Some(by) = &a.decided_by {
        println!(
            "    decided by {by}{}",
            a.decision_note
                .as_deref()
                .map(|n| format!(": {n}"))
                .unwrap_or_default()
        );
    }
}

fn print_deletion(d: &DeletionView) {
    println!(
        "tenant '{}': deletion {} (requested by {}, approved by {}); restorable until {}",
        d.slug, d.status, d.requested_by, d.approved_by, d.grace_until
    );
}

fn approval_id(s: &str) -> Result<uuid::Uuid, PlatformError> {
    uuid::Uuid::parse_str(s)
        .map_err(|_| PlatformError::InvalidInput(format!("'{s}' is not an approval id")))
}

/// `portico operator approvals …`
pub async fn approvals(p: &Platform, cmd: ApprovalsCmd) -> anyhow::Result<()> {
    match cmd {
        ApprovalsCmd::List { all, json: as_json } => {
            let list = deletion::approvals(p, all).await?;
            if as_json {
                json(&list)?;
            } else if list.is_empty() {
                println!("no requests are waiting for approval");
            } else {
                list.iter().for_each(print_approval);
            }
        }
        ApprovalsCmd::Approve {
            id,
            note,
            json: as_json,
        } => decide(p, &id, note.as_deref(), true, as_json).await?,
        ApprovalsCmd::Reject {
            id,
            note,
            json: as_json,
        } => decide(p, &id, note.as_deref(), false, as_json).await?,
    }
    Ok(())
}

/// Approves or rejects a request, as the operator of `PORTICO_OPERATOR_TOKEN`, audited.
async fn decide(
    p: &Platform,
    id: &str,
    note: Option<&str>,
    approve: bool,
    as_json: bool,
) -> anyhow::Result<()> {
    let who = operator(p).await?;
    let aid = approval_id(id);
    if approve {
        let result = match aid {
            Ok(aid) => deletion::approve(p, &who, aid, note).await,
            Err(e) => Err(e),
        };
        let d = audited(p, &who, "approval.approve", id, result).await?;
        if as_json {
            json(&d)
        } else {
            print_deletion(&d);
            Ok(())
        }
    } else {
        let result = match aid {
            Ok(aid) => deletion::reject(p, &who, aid, note).await,
            Err(e) => Err(e),
        };
        let a = audited(p, &who, "approval.reject", id, result).await?;
        if as_json {
            json(&a)
        } else {
            print_approval(&a);
            Ok(())
        }
    }
}

/// `portico tenant delete <slug> --reason …`
pub async fn delete(
    p: &Platform,
    slug: &str,
    req: DeletionRequest,
    as_json: bool,
) -> anyhow::Result<()> {
    let who = operator(p).await?;
    let result = match crate::cli::slug(slug) {
        Ok(s) => deletion::request(p, &who, &s, req).await,
        Err(e) => Err(e),
    };
    let a = audited(p, &who, "tenant.delete_request", slug, result).await?;
    if as_json {
        json(&a)?;
    } else {
        println!(
            "deletion of '{}' requested (approval {}); another operator must approve it: portico operator approvals approve {}",
            a.slug, a.id, a.id
        );
    }
    Ok(())
}

pub async fn restore(p: &Platform, slug: &str, as_json: bool) -> anyhow::Result<()> {
    let d = deletion::restore(p, crate::cli::slug(slug)?.as_str()).await?;
    if as_json {
        json(&d)?;
    } else {
        println!("tenant '{}' restored ({})", d.slug, d.previous_status);
        // Fleet runs pass over tenants that are being deleted.
        let t = crate::tenants::show(p, &d.slug).await?;
        if t.schema_version < Some(portico_provisioning::migrations::latest_version()) {
            println!(
                "its tenant schema is behind this release: run `portico tenant migrate {}`",
                d.slug
            );
        }
    }
    Ok(())
}

pub async fn purge_due(p: &Platform, as_json: bool) -> anyhow::Result<()> {
    let report = deletion::purge_due(p).await?;
    if as_json {
        json(&report)?;
    } else {
        for s in &report.purged {
            println!("purged '{s}'");
        }
        for s in &report.busy {
            println!("'{s}' is being purged by another process");
        }
        for (s, e) in &report.failed {
            println!("purge of '{s}' failed: {e}");
        }
        if report.exports_expired > 0 {
            println!("deleted {} expired export(s)", report.exports_expired);
        }
        if report.purged.is_empty() && report.busy.is_empty() && report.failed.is_empty() {
            println!("no tenant is due for purging");
        }
    }
    if !report.failed.is_empty() {
        return Err(PlatformError::InvalidState(format!(
            "{} purge(s) failed; run `portico tenant purge-due` again to resume",
            report.failed.len()
        ))
        .into());
    }
    Ok(())
}

pub async fn certificate(p: &Platform, slug: &str, out: Option<PathBuf>) -> anyhow::Result<()> {
    let doc = deletion::certificate(p, crate::cli::slug(slug)?.as_str()).await?;
    let text = serde_json::to_string_pretty(&doc)?;
    match out {
        Some(path) => {
            std::fs::write(&path, format!("{text}\n")).map_err(|e| {
                PlatformError::InvalidInput(format!("cannot write {}: {e}", path.display()))
            })?;
            println!("certificate written to {}", path.display());
        }
        None => println!("{text}"),
    }
    Ok(())
}

/// `portico certificate verify FILE`: offline (no settings, no catalog).
pub fn verify_certificate(cmd: CertificateCmd) -> anyhow::Result<()> {
    let CertificateCmd::Verify { file, public_key } = cmd;
    let text = std::fs::read_to_string(&file)
        .map_err(|e| PlatformError::InvalidInput(format!("cannot read {}: {e}", file.display())))?;
    let doc: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| PlatformError::InvalidInput(format!("{} is not JSON: {e}", file.display())))?;
    let expected = public_key
        .as_deref()
        .map(PublicKey::parse)
        .transpose()
        .map_err(|e| PlatformError::InvalidInput(format!("--public-key: {e}")))?;
    let (key, payload) = verify_document(&doc, expected.as_ref())
        .map_err(|e| PlatformError::InvalidInput(format!("{}: {e}", file.display())))?;
    if payload.get("kind").and_then(|v| v.as_str()) != Some("portico-deletion-certificate/1") {
        return Err(PlatformError::InvalidInput(format!(
            "{}: signed, but not a deletion certificate",
            file.display()
        ))
        .into());
    }
    let slug = payload["tenant"]["slug"].as_str().unwrap_or("?");
    println!(
        "valid deletion certificate of tenant '{slug}' ({}), purged {}, signed by {key}{}",
        payload["tenant"]["id"].as_str().unwrap_or("?"),
        payload["purged_at"].as_str().unwrap_or("?"),
        if expected.is_some() {
            ""
        } else {
            " (compare with the published key: portico export public-key)"
        }
    );
    Ok(())
}

pub async fn public_key(p: &Platform) -> anyhow::Result<()> {
    println!("{}", crate::signing::public_key(p).await?);
    Ok(())
}
