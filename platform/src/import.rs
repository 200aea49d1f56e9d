//! Tenant import: `portico tenant import FILE --slug NEW --identity KEY` checks an export
//! (signature, every hash, the audit chain), then provisions a new tenant through the normal
//! create workflow (new id, role, database or schema, key, prefix) and, before the tenant turns
//! `active`, loads the archive into it in one transaction: every row as exported, document
//! content re-encrypted under the new tenant's keys, the audit chain kept as it was and
//! continued with a `tenant_imported` event. A killed import is finished by running it again
//! (the load is one transaction, repeated whole) or undone by `tenant create --rollback NEW`.
//!
//! Not carried over (the export leaves them out; see docs/export-format.md): the tenant's
//! link-signing secret (made anew: share links of the source stop working), OIDC client
//! secrets (an admin enters them again) and TOTP secrets (two-factor is enrolled again; until
//! then such a user cannot pass the second factor).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use portico_core::keys::TenantKeyRef;
use portico_core::storage::ObjectKey;
use portico_core::{DbServerName, Slug, TenantId};
use portico_tenant_runtime::content;
use portico_tenant_runtime::content::cipher::ObjectCipher;
use serde::Serialize;

use crate::catalog::Tier;
use crate::context::Platform;
use crate::db_servers;
use crate::error::{PlatformError, Result};
use crate::export::{CHUNK, ChainCheck, Manifest, Msg, open_archive, read_manifest};
use crate::tenants::{self, CreateTenant};

/// Tables of the archive not loaded: the new tenant's own profile row stays, and the
/// link-signing secret is made anew (its ciphertext is not exported).
const NOT_LOADED: &[&str] = &["tenant_profile", "tenant_secrets"];

/// Rows inserted per statement.
const BATCH_ROWS: usize = 1_000;
const BATCH_BYTES: usize = 4 * 1024 * 1024;

pub struct ImportRequest {
    pub file: PathBuf,
    pub identities: Vec<age::x25519::Identity>,
    /// The key the manifest must be signed by; `None`: the key the archive names.
    pub public_key: Option<portico_core::signing::PublicKey>,
    pub slug: Slug,
    pub display_name: Option<String>,
    pub tier: Option<Tier>,
    pub db_server: Option<DbServerName>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ImportReport {
    pub tenant: tenants::TenantView,
    pub source_tenant_id: TenantId,
    pub source_slug: String,
    pub signed_by: String,
    pub rows: u64,
    pub documents: usize,
}

fn invalid(m: impl Into<String>) -> PlatformError {
    PlatformError::InvalidInput(m.into())
}

fn pg(what: &'static str) -> impl Fn(tokio_postgres::Error) -> PlatformError {
    move |e| PlatformError::InvalidState(format!("{what}: {e}"))
}

/// Imports an archive as a new tenant (or finishes an interrupted import of it).
pub async fn import(platform: &Platform, req: ImportRequest) -> Result<ImportReport> {
    // The manifest and its signature first (seeking past the data); every file is checked
    // against it while it is loaded, and the load commits only if all of them agree.
    let (manifest, signed_by) = {
        let (file, ids, key) = (
            req.file.clone(),
            req.identities.clone(),
            req.public_key.clone(),
        );
        tokio::task::spawn_blocking(move || read_manifest(&file, &ids, key.as_ref()))
            .await
            .map_err(|e| PlatformError::InvalidState(format!("reading the archive: {e}")))??
    };
    if manifest.format != crate::export::FORMAT {
        return Err(invalid(format!(
            "unknown archive format '{}'",
            manifest.format
        )));
    }
    let latest = portico_provisioning::migrations::latest_version();
    if manifest.schema_version != Some(latest) {
        return Err(invalid(format!(
            "the archive is at tenant schema {:?}, this binary at {latest}: import it with the release that exported it, or migrate the source tenant and export again",
            manifest.schema_version
        )));
    }
    let create = CreateTenant {
        slug: req.slug.clone(),
        display_name: Some(
            req.display_name
                .clone()
                .unwrap_or_else(|| manifest.tenant.display_name.clone()),
        ),
        domains: Vec::new(),
        db_server: req.db_server.clone(),
        tier: req.tier,
    };
    let started = tenants::start_create(platform, create).await?;
    let (file, identities) = (req.file.clone(), req.identities.clone());
    let manifest_ref = &manifest;
    let load = move |tenant: TenantId| -> futures_util::future::BoxFuture<'_, Result<()>> {
        let (file, identities) = (file.clone(), identities.clone());
        Box::pin(async move { load(platform, tenant, &file, identities, manifest_ref).await })
    };
    let view = match Box::pin(tenants::finish_create_then(platform, &started, Some(&load))).await {
        Ok(v) => v,
        // Running it again would find the same: the tenant is removed again at once.
        Err(PlatformError::Infected(m) | PlatformError::BadArchive(m)) => {
            tenants::rollback(platform, &req.slug).await?;
            return Err(invalid(format!("{m}; nothing was imported")));
        }
        Err(e) => return Err(e),
    };
    tracing::info!(tenant_id = %view.id, source = %manifest.tenant.id, "tenant imported");
    Ok(ImportReport {
        tenant: view,
        source_tenant_id: manifest.tenant.id,
        source_slug: manifest.tenant.slug.clone(),
        signed_by,
        rows: manifest.tables.iter().map(|t| t.rows).sum(),
        documents: manifest.documents.len(),
    })
}

/// The archive's entries, read by a thread of its own (age and tar are synchronous) and
/// handed over through a bounded channel.
fn read_archive(
    file: &Path,
    identities: &[age::x25519::Identity],
    tx: &tokio::sync::mpsc::Sender<Msg>,
) -> std::io::Result<()> {
    use std::io::Read;
    let (reader, _) = open_archive(file, identities).map_err(std::io::Error::other)?;
    let mut archive = tar::Archive::new(reader);
    // The load stopped taking entries (it failed, and its error is the one to report).
    let closed =
        |_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the import stopped reading");
    for entry in archive.entries()? {
        let mut entry = entry?;
        let name = crate::export::entry_name(&entry)?;
        tx.blocking_send(Msg::Entry {
            name,
            size: entry.size(),
        })
        .map_err(closed)?;
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = entry.read(&mut buf)?;
            if n == 0 {
                break;
            }
            tx.blocking_send(Msg::Data(Bytes::copy_from_slice(&buf[..n])))
                .map_err(closed)?;
        }
        tx.blocking_send(Msg::End).map_err(closed)?;
    }
    Ok(())
}

/// The next piece of the current entry; `None` at its end.
async fn next_data(rx: &mut tokio::sync::mpsc::Receiver<Msg>) -> Result<Option<Bytes>> {
    match rx.recv().await {
        Some(Msg::Data(b)) => Ok(Some(b)),
        Some(Msg::End) => Ok(None),
        Some(Msg::Entry { .. }) | None => Err(PlatformError::BadArchive(
            "the archive ended in the middle of an entry".into(),
        )),
    }
}

/// Loads the archive into the new tenant's tables and storage, in one transaction on its
/// database (so a repeated load starts from empty tables again).
async fn load(
    platform: &Platform,
    tenant: TenantId,
    file: &Path,
    identities: Vec<age::x25519::Identity>,
    manifest: &Manifest,
) -> Result<()> {
    let placement = platform
        .catalog
        .placement(tenant)
        .await?
        .ok_or_else(|| PlatformError::InvalidState("the new tenant has no placement".into()))?;
    let key = TenantKeyRef::new(
        platform
            .catalog
            .tenant_by_id(tenant)
            .await?
            .and_then(|t| t.key_id)
            .ok_or_else(|| PlatformError::InvalidState("the new tenant has no key".into()))?,
    );
    let target = placement.target();
    let (data, audit) = (target.schema().to_owned(), target.audit_schema());
    let server =
        db_servers::connect_id(platform, placement.db_server_id, &placement.db_server).await?;
    let mut client = server.admin_in(&placement.database_name).await?;
    if !portico_provisioning::moves::can_copy(&client).await? {
        return Err(PlatformError::InvalidState(
            "the server's admin may not set session_replication_role; an import needs it (a superuser, or GRANT SET ON PARAMETER session_replication_role)".into(),
        ));
    }
    let tables = portico_provisioning::moves::tenant_tables(&client, &target).await?;
    let q = portico_provisioning::escape_ident;
    let tx = client
        .transaction()
        .await
        .map_err(pg("starting the import"))?;
    tx.batch_execute(&format!(
        "set local session_replication_role = replica;
         set local search_path = {}, {}, pg_temp;
         truncate {}",
        q(&audit),
        q(&data),
        tables
            .iter()
            .filter(|(_, t)| {
                !NOT_LOADED.contains(&t.as_str())
                    && !crate::export::SKIPPED_TABLES.contains(&t.as_str())
            })
            .map(|(s, t)| format!("{}.{}", q(s), q(t)))
            .collect::<Vec<_>>()
            .join(", ")
    ))
    .await
    .map_err(pg("emptying the new tenant's tables"))?;

    let (msg_tx, mut rx) = tokio::sync::mpsc::channel::<Msg>(16);
    let reader = {
        let file = file.to_owned();
        tokio::task::spawn_blocking(move || read_archive(&file, &identities, &msg_tx))
    };
    let docs: HashMap<&str, &crate::export::ManifestDocument> = manifest
        .documents
        .iter()
        .map(|d| (d.file.as_str(), d))
        .collect();
    // The upload path's pieces: data keys shared while their use limit allows, scanning
    // (unless turned off), the object store.
    let content = crate::export::content_state(platform);
    let mut seen: HashMap<String, (u64, String, u64)> = HashMap::new();
    let mut chain = ChainCheck::default();
    // Objects written but still being synced and made visible; all of them are, before the
    // load commits. Dropped on failure, they leave nothing behind.
    let mut finishing = tokio::task::JoinSet::new();
    let loaded = async {
        while let Some(msg) = rx.recv().await {
            let Msg::Entry { name, .. } = msg else {
                return Err(PlatformError::InvalidState(
                    "archive data outside an entry".into(),
                ));
            };
            if let Some(rest) = name
                .strip_prefix("tables/")
                .and_then(|n| n.strip_suffix(".jsonl"))
            {
                let (side, table) = rest
                    .split_once('.')
                    .ok_or_else(|| invalid(format!("unexpected entry {name}")))?;
                let schema = match side {
                    "data" => data.clone(),
                    "audit" => audit.clone(),
                    _ => return Err(invalid(format!("unexpected entry {name}"))),
                };
                let known = tables.iter().any(|(s, t)| *s == schema && t == table);
                let load = known && !NOT_LOADED.contains(&table);
                let audit = (table == "audit_events" && side == "audit").then_some(&mut chain);
                let got = load_table(&tx, &mut rx, &schema, table, load, audit).await?;
                seen.insert(name.clone(), got);
            } else if let Some(d) = docs.get(name.as_str()) {
                let target = DocTarget {
                    tenant,
                    key: &key,
                    content: &content,
                };
                let writer = load_document(&tx, &mut rx, &target, d).await?;
                // The object is synced and made visible while the next one is written.
                finishing.spawn(async move {
                    writer.finish().await.map_err(|e| {
                        PlatformError::InvalidState(format!("storing a document: {e}"))
                    })
                });
                while finishing.len() > FINISHING {
                    if let Some(done) = finishing.join_next().await {
                        joined(done)?;
                    }
                }
                seen.insert(name.clone(), (d.size, d.sha256.clone(), 0));
            } else if name == "manifest.json" || name == "manifest.sig" {
                while next_data(&mut rx).await?.is_some() {}
            } else {
                return Err(PlatformError::BadArchive(format!(
                    "the archive holds {name}, which its manifest does not list"
                )));
            }
        }
        while let Some(done) = finishing.join_next().await {
            joined(done)?;
        }
        Ok(())
    }
    .await;
    drop(rx);
    let read = reader
        .await
        .map_err(|e| PlatformError::InvalidState(format!("reading the archive: {e}")))?;
    match (read, loaded) {
        // The reading stopped because the load did: the load's error explains.
        (Err(e), Err(load)) if e.kind() == std::io::ErrorKind::BrokenPipe => return Err(load),
        // Otherwise a broken archive explains whatever the load saw.
        (Err(e), _) => {
            return Err(PlatformError::BadArchive(format!(
                "the archive cannot be read: {e}"
            )));
        }
        (Ok(()), loaded) => loaded?,
    }

    check_seen(manifest, &seen, &chain)?;
    let missing: i64 = tx
        .query_one(
            "select count(*) from document_versions where data_key_ref = ''",
            &[],
        )
        .await
        .map_err(pg("checking the documents"))?
        .get(0);
    if missing > 0 {
        return Err(PlatformError::InvalidState(format!(
            "{missing} document version(s) have no content in the archive"
        )));
    }
    // Identity columns continue after the imported values.
    for (schema, table) in &tables {
        let cols: Vec<String> = tx
            .query(
                "select a.attname::text from pg_attribute a
                  where a.attrelid = ($1 || '.' || $2)::regclass and a.attidentity <> ''",
                &[&q(schema), &q(table)],
            )
            .await
            .map_err(pg("reading identity columns"))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        for col in cols {
            let t = format!("{}.{}", q(schema), q(table));
            tx.execute(
                &format!(
                    "select setval(pg_get_serial_sequence($1, $2), coalesce(max({c}), 0) + 1, false)
                       from {t}",
                    c = q(&col)
                ),
                &[&t, &col],
            )
            .await
            .map_err(pg("continuing an identity column"))?;
        }
    }
    // The chain goes on from the imported head, with triggers on again.
    tx.batch_execute("set local session_replication_role = origin")
        .await
        .map_err(pg("finishing the import"))?;
    record_import(&tx, manifest).await?;
    // Events written plain (the import's own, and all of an archive from a schema before 8)
    // move their strings to `audit_values`, as the schema-8 migration does.
    portico_provisioning::migrations::convert_plain_events(&tx, &audit)
        .await
        .map_err(pg("converting the imported audit events"))?;
    crate::tenants::checkpoint("import:loaded");
    tx.commit().await.map_err(pg("committing the import"))?;
    Ok(())
}

/// Inserts one table's rows in batches (`jsonb_populate_recordset`), identity values kept.
/// Returns the file's size, SHA-256 and line count (checked against the manifest later); with
/// `load` false the rows are only read (a table this tenant does not load). Audit events also
/// go through `chain`, which recomputes the hash chain.
async fn load_table(
    tx: &tokio_postgres::Transaction<'_>,
    rx: &mut tokio::sync::mpsc::Receiver<Msg>,
    schema: &str,
    table: &str,
    load: bool,
    mut chain: Option<&mut ChainCheck>,
) -> Result<(u64, String, u64)> {
    use sha2::Digest;
    let (mut sha, mut size, mut lines) = (sha2::Sha256::new(), 0u64, 0u64);
    let q = portico_provisioning::escape_ident;
    // Columns the export leaves out but the table requires get placeholders, replaced when the
    // document content is stored (and checked afterwards).
    let fill = if table == "document_versions" {
        serde_json::json!({
            "object_key": "", "data_key_wrapped": "\\x", "data_key_ref": "",
            "nonce": "\\x", "segment_size": 0
        })
    } else {
        serde_json::json!({})
    };
    let sql = format!(
        "insert into {s}.{t} overriding system value
         select * from jsonb_populate_recordset(null::{s}.{t},
             (select jsonb_agg($2::jsonb || e) from jsonb_array_elements($1::text::jsonb) e))",
        s = q(schema),
        t = q(table)
    );
    let insert = |batch: String| {
        let (sql, fill) = (&sql, &fill);
        async move {
            tx.execute(sql, &[&batch, fill]).await.map_err(|e| {
                // Rows the table refuses (a value of the wrong kind, a broken constraint) are
                // the archive's fault: the create is rolled back, not left to be resumed.
                let refused = e.code().is_some_and(|c| {
                    let c = c.code();
                    c.starts_with("22") || c.starts_with("23")
                });
                let m = format!("loading {table}: {e}");
                if refused {
                    PlatformError::BadArchive(m)
                } else {
                    PlatformError::InvalidState(m)
                }
            })
        }
    };
    // Batches are inserted by a second future while the next one is read and built, so the
    // server's inserting overlaps the archive's decrypting and the line splitting here.
    let (batch_tx, batch_rx) = tokio::sync::mpsc::channel::<String>(1);
    let inserting = async {
        // Owned here: a failed insert drops the receiver, and the reading stops at its next
        // batch instead of waiting for room forever.
        let mut batch_rx = batch_rx;
        while let Some(batch) = batch_rx.recv().await {
            insert(batch).await?;
        }
        Ok::<(), PlatformError>(())
    };
    let reading = async {
        let (mut batch, mut rows, mut partial) = (String::from("["), 0usize, Vec::<u8>::new());
        let stopped = || PlatformError::InvalidState(format!("loading {table} stopped"));
        while let Some(chunk) = next_data(rx).await? {
            sha.update(&chunk);
            size += chunk.len() as u64;
            partial.extend_from_slice(&chunk);
            // Every whole line of the buffer, then the rest moved to its front once (moving
            // it after each line cost as much as the load itself).
            let mut start = 0;
            while let Some(len) = partial[start..].iter().position(|b| *b == b'\n') {
                let line = &partial[start..start + len];
                start += len + 1;
                lines += 1;
                if let Some(c) = chain.as_deref_mut() {
                    c.event(line);
                }
                if !load {
                    continue;
                }
                let line = std::str::from_utf8(line).map_err(|_| {
                    PlatformError::BadArchive(format!("{table}: a row is not UTF-8"))
                })?;
                if rows > 0 {
                    batch.push(',');
                }
                batch.push_str(line);
                rows += 1;
                if rows >= BATCH_ROWS || batch.len() >= BATCH_BYTES {
                    batch.push(']');
                    let full = std::mem::replace(&mut batch, String::from("["));
                    batch_tx.send(full).await.map_err(|_| stopped())?;
                    rows = 0;
                }
            }
            partial.drain(..start);
        }
        if !partial.is_empty() {
            return Err(PlatformError::BadArchive(format!(
                "{table}: the last row has no line end"
            )));
        }
        if rows > 0 {
            batch.push(']');
            batch_tx.send(batch).await.map_err(|_| stopped())?;
        }
        drop(batch_tx);
        Ok(())
    };
    let (read, inserted) = tokio::join!(reading, inserting);
    // A failed insert stops the reading; its error is the one that explains.
    inserted?;
    read?;
    Ok((size, hex::encode(sha.finalize()), lines))
}

/// Every file the manifest lists was loaded, unchanged; the audit chain is intact up to the
/// manifest's head.
fn check_seen(
    manifest: &Manifest,
    seen: &HashMap<String, (u64, String, u64)>,
    chain: &ChainCheck,
) -> Result<()> {
    let bad = |m: String| Err(PlatformError::BadArchive(m));
    for t in &manifest.tables {
        match seen.get(&t.file) {
            None => return bad(format!("{} is missing from the archive", t.file)),
            Some((size, sha, lines))
                if *size != t.bytes || *sha != t.sha256 || *lines != t.rows =>
            {
                return bad(format!("{} differs from the manifest", t.file));
            }
            Some(_) => {}
        }
    }
    for d in &manifest.documents {
        if !seen.contains_key(&d.file) {
            return bad(format!("{} is missing from the archive", d.file));
        }
    }
    if let Some(p) = &chain.problem {
        return bad(format!("audit chain: {p}"));
    }
    if chain.events != manifest.audit.events
        || chain.head_seq != manifest.audit.head_seq
        || hex::encode(&chain.prev) != manifest.audit.head_hash
    {
        return bad("audit chain: the events do not end at the manifest's head".into());
    }
    Ok(())
}

/// Objects an import may have synced and made visible in the background at once.
const FINISHING: usize = 4;

/// The outcome of one object's background finish.
fn joined(done: std::result::Result<Result<()>, tokio::task::JoinError>) -> Result<()> {
    done.map_err(|e| PlatformError::InvalidState(format!("storing a document: {e}")))?
}

/// Where imported content goes: the new tenant, its key, the content pipeline.
struct DocTarget<'a> {
    tenant: TenantId,
    key: &'a TenantKeyRef,
    content: &'a content::ContentState,
}

/// Writes one version's content, scanned and encrypted under the new tenant's keys, and points
/// its row at it; returns the object's writer, to be finished (made visible) before commit.
async fn load_document(
    tx: &tokio_postgres::Transaction<'_>,
    rx: &mut tokio::sync::mpsc::Receiver<Msg>,
    target: &DocTarget<'_>,
    d: &crate::export::ManifestDocument,
) -> Result<portico_core::storage::ObjectWriter> {
    let (tenant, key, content) = (target.tenant, target.key, target.content);
    let data_key = content.keys.for_new_content(tenant, key).await?;
    let scan = content.scanner.start().await.map_err(|e| {
        PlatformError::InvalidState(format!(
            "the malware scanner is unreachable ({e}); an import scans every document"
        ))
    })?;
    let version = uuid::Uuid::parse_str(&d.version_id)
        .map_err(|_| invalid(format!("bad version id {}", d.version_id)))?;
    let salt = portico_core::keys::random_bytes::<32>();
    let cipher = ObjectCipher::new(&data_key.plaintext, &salt, tenant, version);
    let object = ObjectKey::tenant_object(
        tenant,
        &format!("documents/{}/{}", d.document_id, d.version_id),
    )
    .map_err(|e| invalid(format!("version {}: {e}", d.version_id)))?;
    let body = futures_util::stream::unfold(rx, |rx| async move {
        match next_data(rx).await {
            Ok(Some(b)) => Some((Ok::<_, String>(b), rx)),
            Ok(None) => None,
            Err(e) => Some((Err(e.to_string()), rx)),
        }
    });
    let (stored, writer) = content::store_unfinished(
        &content.store,
        &object,
        Some(cipher),
        scan,
        Box::pin(body),
        u64::MAX,
    )
    .await
    .map_err(|e| match e {
        content::ContentError::Infected(name) => PlatformError::Infected(format!(
            "document version {} of the archive holds malware ('{name}')",
            d.version_id
        )),
        other => PlatformError::InvalidState(format!("storing version {}: {other}", d.version_id)),
    })?;
    if stored.size != d.size || hex::encode(&stored.sha256) != d.sha256 {
        return Err(PlatformError::BadArchive(format!(
            "version {}: its content differs from the manifest",
            d.version_id
        )));
    }
    let n = tx
        .execute(
            "update document_versions
                set object_key = $2, data_key_wrapped = $3, data_key_ref = $4, nonce = $5,
                    segment_size = $6
              where id = $1",
            &[
                &version,
                &object.as_str(),
                &data_key.wrapped,
                &key.as_str(),
                &salt.as_slice(),
                &i32::try_from(content::cipher::SEGMENT).unwrap_or(i32::MAX),
            ],
        )
        .await
        .map_err(pg("recording a document version"))?;
    if n != 1 {
        return Err(invalid(format!(
            "document {} in the archive has no row in document_versions",
            d.version_id
        )));
    }
    Ok(writer)
}

/// Appends the `tenant_imported` event (the chain trigger links it to the imported head).
async fn record_import(tx: &tokio_postgres::Transaction<'_>, manifest: &Manifest) -> Result<()> {
    use portico_core::audit_chain::{canonical, sha256};
    let now = time::OffsetDateTime::now_utc();
    let at = now
        .replace_nanosecond(now.microsecond() * 1000)
        .unwrap_or(now);
    let details = serde_json::json!({
        "source_tenant_id": manifest.tenant.id,
        "source_slug": manifest.tenant.slug,
        "snapshot_at": manifest.snapshot_at,
        "source_audit_head_seq": manifest.audit.head_seq,
        "source_audit_head": manifest.audit.head_hash,
    });
    let event_type = portico_tenant_runtime::store::audit::EventType::TenantImported.as_str();
    let actor = "platform:import";
    let payload = canonical(
        at, event_type, actor, None, None, None, "success", None, &details,
    );
    tx.execute(
        "insert into audit_events
             (at, event_type, actor, client_ip, request_id, target, outcome, reason, details,
              payload_hash, seq, prev_hash, hash)
         values ($1, $2, $3, null, null, null, 'success', null, $4, $5, 0, '', '')",
        &[&at, &event_type, &actor, &details, &sha256(&payload)],
    )
    .await
    .map_err(pg("recording the import in the audit log"))?;
    Ok(())
}
