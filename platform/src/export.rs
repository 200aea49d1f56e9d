//! Tenant export: one consistent snapshot of a tenant's tables and the plaintext of every
//! document version it references, in a tar archive encrypted to an `age` X25519 recipient,
//! with a manifest signed by the platform's Ed25519 key. `portico export verify` checks an
//! archive offline. The format is described in `docs/export-format.md`.
//!
//! Streamed with bounded memory: table rows are read through a cursor in batches into a
//! temporary file (a tar entry needs its size first), document content is decrypted segment
//! by segment straight into the archive, and the archive is written by a thread of its own
//! fed through a bounded channel. The archive is written as `<out>.partial` and renamed only
//! once complete; the manifest is its last entry, so a killed export never leaves a file that
//! looks complete.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use portico_core::TenantId;
use portico_core::keys::TenantKeyRef;
use portico_core::storage::ObjectKey;
use portico_tenant_runtime::content::Segments;
use portico_tenant_runtime::content::cipher::ObjectCipher;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

use crate::context::Platform;
use crate::db_servers;
use crate::error::{PlatformError, Result};
use crate::tenants::tenant_row;

/// The archive format this code writes.
pub const FORMAT: &str = "portico-export/1";

/// Columns left out of the data files: storage and key internals of this installation,
/// meaningless (or credentials) anywhere else. Document content is in `documents/`.
pub const EXCLUDED_COLUMNS: &[(&str, &[&str])] = &[
    (
        "document_versions",
        &[
            "object_key",
            "data_key_wrapped",
            "data_key_ref",
            "nonce",
            "segment_size",
        ],
    ),
    ("sso_connections", &["secret_ciphertext"]),
    (
        "local_credentials",
        &["totp_secret_ciphertext", "totp_pending_ciphertext"],
    ),
    ("tenant_secrets", &["ciphertext"]),
];

/// Tables that are not the tenant's data: the migration history (the manifest names the
/// schema version).
pub const SKIPPED_TABLES: &[&str] = &["refinery_schema_history"];

/// Rows fetched per round trip from the snapshot's cursor.
const BATCH: i64 = 2_000;
/// Bytes per chunk handed to the archive writer.
pub(crate) const CHUNK: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestTenant {
    pub id: TenantId,
    pub slug: String,
    pub display_name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestTable {
    /// `data.<table>` or `audit.<table>`.
    pub name: String,
    pub file: String,
    pub rows: u64,
    pub bytes: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestDocument {
    pub version_id: String,
    pub document_id: String,
    pub file: String,
    pub size: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestAudit {
    pub events: u64,
    pub head_seq: i64,
    /// Hex; 64 zeros for an empty log.
    pub head_hash: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub generator: String,
    pub tenant: ManifestTenant,
    pub tier: String,
    pub schema_version: Option<i32>,
    /// When the snapshot was taken (the database's clock), RFC 3339.
    pub snapshot_at: String,
    pub encrypted: bool,
    /// Personal data replaced by pseudonyms; credentials, sessions, tokens and the audit log
    /// left out (see `anonymize.rs`).
    #[serde(default)]
    pub anonymized: bool,
    pub tables: Vec<ManifestTable>,
    pub documents: Vec<ManifestDocument>,
    pub audit: ManifestAudit,
    /// Per table, the columns left out of its data file.
    pub excluded_columns: serde_json::Value,
}

/// What an export produced.
#[derive(Debug, Clone, Serialize)]
pub struct ExportReport {
    pub file: String,
    pub tenant: String,
    pub encrypted: bool,
    pub anonymized: bool,
    pub rows: u64,
    pub documents: usize,
    pub document_bytes: u64,
    pub archive_bytes: u64,
    /// SHA-256 of `manifest.json` (what a deletion certificate records).
    pub manifest_sha256: String,
}

/// Parses an `age` X25519 recipient (`age1…`).
pub fn parse_recipient(s: &str) -> Result<age::x25519::Recipient> {
    s.trim().parse().map_err(|_| {
        PlatformError::InvalidInput(format!(
            "'{}' is not an age X25519 recipient (age1…)",
            s.chars().take(80).collect::<String>()
        ))
    })
}

/// One message to the archive thread.
pub(crate) enum Msg {
    /// A new entry of `size` bytes; its data follows as `Data` until `End`.
    Entry {
        name: String,
        size: u64,
    },
    Data(Bytes),
    End,
}

/// Reads one entry's data from the channel.
struct EntryReader<'a> {
    rx: &'a mut tokio::sync::mpsc::Receiver<Msg>,
    buf: Bytes,
    done: bool,
}

impl Read for EntryReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.buf.is_empty() && !self.done {
            match self.rx.blocking_recv() {
                Some(Msg::Data(b)) => self.buf = b,
                Some(Msg::End) => self.done = true,
                Some(Msg::Entry { .. }) | None => {
                    return Err(std::io::Error::other("the export stopped mid-entry"));
                }
            }
        }
        let n = out.len().min(self.buf.len());
        out[..n].copy_from_slice(&self.buf[..n]);
        self.buf = self.buf.slice(n..);
        Ok(n)
    }
}

/// Counts what goes through (the archive's size).
struct Counting<W> {
    inner: W,
    written: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

type FileOut = Counting<std::io::BufWriter<std::fs::File>>;

/// Where the tar stream goes: through `age` to the file, or straight to it.
enum Sink {
    Age(age::stream::StreamWriter<FileOut>),
    Plain(FileOut),
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Self::Age(w) => w.write(buf),
            Self::Plain(w) => w.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Self::Age(w) => w.flush(),
            Self::Plain(w) => w.flush(),
        }
    }
}

impl Sink {
    /// Ends the stream (age writes its last chunk), syncs the file; returns its size.
    fn finish(self) -> std::io::Result<u64> {
        let mut out = match self {
            Self::Age(w) => w.finish()?,
            Self::Plain(w) => w,
        };
        out.flush()?;
        let written = out.written;
        let file = out.inner.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        Ok(written)
    }
}

/// The archive thread: one tar entry per `Entry` message, in order; returns the archive's
/// size once the channel closes after the last entry.
fn write_archive(
    partial: &Path,
    recipient: Option<&age::x25519::Recipient>,
    mut rx: tokio::sync::mpsc::Receiver<Msg>,
) -> std::io::Result<u64> {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(partial)?;
    let out = Counting {
        inner: std::io::BufWriter::with_capacity(CHUNK, file),
        written: 0,
    };
    let mut sink = match recipient {
        Some(r) => {
            let enc = age::Encryptor::with_recipients(std::iter::once(r as &dyn age::Recipient))
                .map_err(std::io::Error::other)?;
            Sink::Age(enc.wrap_output(out)?)
        }
        None => Sink::Plain(out),
    };
    {
        let mut tar = tar::Builder::new(&mut sink);
        while let Some(msg) = rx.blocking_recv() {
            let (name, size) = match msg {
                Msg::Entry { name, size } => (name, size),
                // The end of an entry whose `size` bytes the tar writer has taken.
                Msg::End => continue,
                Msg::Data(_) => {
                    return Err(std::io::Error::other("an entry is longer than its size"));
                }
            };
            let mut header = tar::Header::new_ustar();
            header.set_size(size);
            header.set_mode(0o644);
            header.set_mtime(0);
            header.set_entry_type(tar::EntryType::Regular);
            let reader = EntryReader {
                rx: &mut rx,
                buf: Bytes::new(),
                done: false,
            };
            tar.append_data(&mut header, &name, reader.take(size))?;
        }
        tar.finish()?;
    }
    sink.finish()
}

/// The async side of the archive: entries go to the writer thread through a bounded channel.
struct Archive {
    tx: tokio::sync::mpsc::Sender<Msg>,
}

impl Archive {
    async fn send(&self, msg: Msg) -> Result<()> {
        self.tx
            .send(msg)
            .await
            .map_err(|_| PlatformError::InvalidState("the archive writer stopped".into()))
    }

    /// An entry with a file's content.
    async fn entry_from_file(&self, name: &str, path: &Path) -> Result<()> {
        let size = tokio::fs::metadata(path)
            .await
            .map_err(|e| io_error("reading a temporary file", e))?
            .len();
        self.send(Msg::Entry {
            name: name.to_owned(),
            size,
        })
        .await?;
        let mut f = tokio::fs::File::open(path)
            .await
            .map_err(|e| io_error("reading a temporary file", e))?;
        loop {
            let mut buf = vec![0u8; CHUNK];
            let n = f
                .read(&mut buf)
                .await
                .map_err(|e| io_error("reading a temporary file", e))?;
            if n == 0 {
                break;
            }
            buf.truncate(n);
            self.send(Msg::Data(Bytes::from(buf))).await?;
        }
        self.send(Msg::End).await
    }

    async fn entry_from_bytes(&self, name: &str, bytes: Vec<u8>) -> Result<()> {
        self.send(Msg::Entry {
            name: name.to_owned(),
            size: bytes.len() as u64,
        })
        .await?;
        self.send(Msg::Data(Bytes::from(bytes))).await?;
        self.send(Msg::End).await
    }
}

fn io_error(what: &str, e: std::io::Error) -> PlatformError {
    PlatformError::InvalidState(format!("{what}: {e}"))
}

fn pg(what: &'static str) -> impl Fn(tokio_postgres::Error) -> PlatformError {
    move |e| PlatformError::InvalidState(format!("{what}: {e}"))
}

fn hex_digest(h: Sha256) -> String {
    hex::encode(h.finalize())
}

/// How far an export has got (for `GET /operator/v1/exports/{id}`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Progress {
    pub tables: usize,
    pub rows: u64,
    pub documents: usize,
    pub document_bytes: u64,
}

/// Where an export reports its progress.
pub type ProgressSink = std::sync::Mutex<Progress>;

fn report_progress(sink: Option<&ProgressSink>, f: impl FnOnce(&mut Progress)) {
    if let Some(Ok(mut p)) = sink.map(std::sync::Mutex::lock) {
        f(&mut p);
    }
}

/// Exports `slug` to `out` (which must not exist), encrypted to `recipient` unless `None`
/// (plaintext, which the caller must have asked for explicitly).
pub async fn export(
    platform: &Platform,
    slug: &str,
    out: &Path,
    recipient: Option<age::x25519::Recipient>,
    anonymize: bool,
) -> Result<ExportReport> {
    export_with_progress(platform, slug, out, recipient, anonymize, None).await
}

/// [`export`], reporting progress to `progress`.
pub async fn export_with_progress(
    platform: &Platform,
    slug: &str,
    out: &Path,
    recipient: Option<age::x25519::Recipient>,
    anonymize: bool,
    progress: Option<&ProgressSink>,
) -> Result<ExportReport> {
    let t = tenant_row(platform, slug).await?;
    if !matches!(t.status.as_str(), "active" | "suspended" | "deleting") {
        return Err(PlatformError::InvalidState(format!(
            "tenant '{slug}' is {}; there is nothing to export",
            t.status
        )));
    }
    if out.exists() {
        return Err(PlatformError::InvalidInput(format!(
            "{} exists already; choose a new file",
            out.display()
        )));
    }
    let partial = partial_path(out);
    // What a killed export left (never a complete archive: it has no manifest).
    match std::fs::remove_file(&partial) {
        Ok(()) => tracing::info!(file = %partial.display(), "removed an unfinished export"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_error("removing an unfinished export", e)),
    }
    let placement = platform
        .catalog
        .placement(t.tenant_id())
        .await?
        .ok_or_else(|| PlatformError::InvalidState(format!("tenant '{slug}' has no placement")))?;
    let target = placement.target();
    let server =
        db_servers::connect_id(platform, placement.db_server_id, &placement.db_server).await?;
    let mut client = server.admin_in(&placement.database_name).await?;
    let tables = portico_provisioning::moves::tenant_tables(&client, &target).await?;
    let work = tempfile::Builder::new()
        .prefix(".portico-export-")
        .tempdir_in(
            out.parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new(".")),
        )
        .map_err(|e| io_error("making a temporary directory beside the output", e))?;

    let (tx, rx) = tokio::sync::mpsc::channel::<Msg>(8);
    let writer = {
        let (partial, recipient) = (partial.clone(), recipient.clone());
        tokio::task::spawn_blocking(move || write_archive(&partial, recipient.as_ref(), rx))
    };
    let archive = Archive { tx };
    let encrypted = recipient.is_some();
    let tenant = t.tenant_id();
    let produced = async {
        let tx = portico_provisioning::moves::snapshot(&mut client).await?;
        let snapshot_at: String = tx
            .query_one(
                "select to_char(now() at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
                &[],
            )
            .await
            .map_err(pg("reading the snapshot time"))?
            .get(0);
        let mut pseudonyms = if anonymize {
            Some(pseudonyms(&tx, target.schema()).await?)
        } else {
            None
        };
        let mut manifest_tables = Vec::new();
        for (schema, table) in tables
            .iter()
            .filter(|(_, t)| !SKIPPED_TABLES.contains(&t.as_str()))
        {
            let side = if *schema == target.schema() {
                "data"
            } else {
                "audit"
            };
            let name = format!("{side}.{table}");
            let file = format!("tables/{name}.jsonl");
            let tmp = work.path().join(format!("{name}.jsonl"));
            let (rows, bytes, sha) =
                dump_table(&tx, schema, table, &tmp, pseudonyms.as_mut()).await?;
            archive.entry_from_file(&file, &tmp).await?;
            let _ = tokio::fs::remove_file(&tmp).await;
            manifest_tables.push(ManifestTable {
                name,
                file,
                rows,
                bytes,
                sha256: sha,
            });
            report_progress(progress, |p| {
                p.tables += 1;
                p.rows += rows;
            });
        }
        crate::tenants::checkpoint("export:tables");
        // Every version the snapshot references, decrypted into the archive.
        let versions = tx
            .query(
                &format!(
                    "select id::text, document_id::text, size, object_key, data_key_wrapped,
                            data_key_ref, nonce, encode(sha256, 'hex')
                       from {}.document_versions order by id",
                    portico_provisioning::escape_ident(target.schema())
                ),
                &[],
            )
            .await
            .map_err(pg("listing document versions"))?;
        let content = content_state(platform);
        let mut documents = Vec::new();
        for v in &versions {
            let (id, document_id): (String, String) = (v.get(0), v.get(1));
            let size = u64::try_from(v.get::<_, i64>(2)).unwrap_or(0);
            let file = format!("documents/{id}");
            let sha = export_document(&content, &archive, tenant, v, &file, size).await?;
            if sha != v.get::<_, String>(7) {
                return Err(PlatformError::InvalidState(format!(
                    "document version {id}: its content does not match the hash recorded at upload"
                )));
            }
            documents.push(ManifestDocument {
                version_id: id,
                document_id,
                file,
                size,
                sha256: sha,
            });
            report_progress(progress, |p| {
                p.documents += 1;
                p.document_bytes += size;
            });
        }
        let audit = if anonymize {
            // The audit log is left out of an anonymised export.
            ManifestAudit {
                events: 0,
                head_seq: 0,
                head_hash: "0".repeat(64),
            }
        } else {
            audit_summary(&tx, &target).await?
        };
        tx.commit().await.map_err(pg("closing the snapshot"))?;
        let manifest = Manifest {
            format: FORMAT.into(),
            generator: format!("portico {}", env!("CARGO_PKG_VERSION")),
            tenant: ManifestTenant {
                id: tenant,
                slug: t.slug.clone(),
                display_name: t.display_name.clone(),
            },
            tier: t.tier.clone(),
            schema_version: t.schema_version,
            snapshot_at,
            encrypted,
            anonymized: anonymize,
            tables: manifest_tables,
            documents,
            audit,
            excluded_columns: serde_json::json!(
                EXCLUDED_COLUMNS
                    .iter()
                    .map(|(t, c)| (t.to_string(), serde_json::json!(c)))
                    .collect::<serde_json::Map<_, _>>()
            ),
        };
        let manifest_bytes = serde_json::to_vec_pretty(&manifest)
            .map_err(|e| PlatformError::InvalidState(format!("writing the manifest: {e}")))?;
        let signer = crate::signing::signing_key(platform).await?;
        let sig = serde_json::json!({
            "alg": "Ed25519",
            "key": signer.public_key().to_string(),
            "value": base64::Engine::encode(
                &base64::engine::general_purpose::STANDARD,
                signer.sign(&manifest_bytes),
            ),
        });
        let manifest_sha = hex::encode(Sha256::digest(&manifest_bytes));
        crate::tenants::checkpoint("export:manifest");
        // Last: an archive without them is visibly incomplete.
        archive
            .entry_from_bytes("manifest.json", manifest_bytes)
            .await?;
        archive
            .entry_from_bytes("manifest.sig", sig.to_string().into_bytes())
            .await?;
        Ok::<_, PlatformError>((manifest, manifest_sha))
    }
    .await;
    drop(archive);
    let written = writer
        .await
        .map_err(|e| PlatformError::InvalidState(format!("the archive writer failed: {e}")));
    let ((manifest, manifest_sha), archive_bytes) = match (produced, written) {
        (Ok(m), Ok(Ok(n))) => (m, n),
        // The writer's own error explains a "writer stopped" on this side.
        (_, Ok(Err(e))) => {
            let _ = std::fs::remove_file(&partial);
            return Err(io_error("writing the archive", e));
        }
        (Err(e), _) | (Ok(_), Err(e)) => {
            let _ = std::fs::remove_file(&partial);
            return Err(e);
        }
    };
    std::fs::rename(&partial, out).map_err(|e| io_error("finishing the archive", e))?;
    Ok(ExportReport {
        file: out.display().to_string(),
        tenant: slug.to_owned(),
        encrypted,
        anonymized: manifest.anonymized,
        rows: manifest.tables.iter().map(|t| t.rows).sum(),
        documents: manifest.documents.len(),
        document_bytes: manifest.documents.iter().map(|d| d.size).sum(),
        archive_bytes,
        manifest_sha256: manifest_sha,
    })
}

/// The content pipeline of the runtime (data-key cache, scanner, store), for the control
/// plane's exports and imports.
pub(crate) fn content_state(platform: &Platform) -> portico_tenant_runtime::content::ContentState {
    portico_tenant_runtime::content::ContentState::new(
        &platform.settings.runtime,
        platform.keyring.clone(),
        platform.store.clone(),
    )
}

/// `<out>.partial`: where the archive is written until it is complete.
pub fn partial_path(out: &Path) -> PathBuf {
    let mut name = out
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".partial");
    out.with_file_name(name)
}

/// Writes one table's rows (one JSON object per line, excluded columns removed, in primary
/// key order) to `path`; returns rows, bytes and SHA-256.
async fn dump_table(
    tx: &tokio_postgres::Transaction<'_>,
    schema: &str,
    table: &str,
    path: &Path,
    mut anonymize: Option<&mut crate::anonymize::Pseudonyms>,
) -> Result<(u64, u64, String)> {
    let q = portico_provisioning::escape_ident;
    let dropped = anonymize.is_some() && crate::anonymize::DROPPED.contains(&table);
    let excluded: Vec<&str> = EXCLUDED_COLUMNS
        .iter()
        .find(|(t, _)| *t == table)
        .map(|(_, c)| c.to_vec())
        .unwrap_or_default();
    let key: Vec<String> = tx
        .query(
            "select a.attname::text from pg_index i
               join pg_attribute a on a.attrelid = i.indrelid and a.attnum = any(i.indkey::int2[])
              where i.indrelid = ($1 || '.' || $2)::regclass and i.indisprimary
              order by array_position(i.indkey::int2[], a.attnum)",
            &[&q(schema), &q(table)],
        )
        .await
        .map_err(pg("reading a primary key"))?
        .iter()
        .map(|r| q(r.get::<_, &str>(0)))
        .collect();
    let order = if key.is_empty() {
        "1".to_owned()
    } else {
        key.iter()
            .map(|k| format!("t.{k}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    // One table at a time: the cursor is closed before the next one is declared.
    let cursor = "portico_export";
    tx.execute(
        &format!(
            "declare {cursor} no scroll cursor for
             select (to_jsonb(t) - $1::text[])::text from {}.{} as t
              where not {dropped} order by {order}",
            q(schema),
            q(table)
        ),
        &[&excluded],
    )
    .await
    .map_err(pg("reading a table"))?;
    let mut file = tokio::io::BufWriter::new(
        tokio::fs::File::create(path)
            .await
            .map_err(|e| io_error("writing a temporary file", e))?,
    );
    let (mut rows, mut bytes, mut sha) = (0u64, 0u64, Sha256::new());
    loop {
        let batch = tx
            .query(&format!("fetch {BATCH} from {cursor}"), &[])
            .await
            .map_err(pg("reading a table"))?;
        if batch.is_empty() {
            break;
        }
        for r in &batch {
            let raw: &str = r.get(0);
            let anonymized;
            let line: &str = match anonymize.as_deref_mut() {
                Some(p) => {
                    let row: serde_json::Value = serde_json::from_str(raw).map_err(|e| {
                        PlatformError::InvalidState(format!("a row of {table}: {e}"))
                    })?;
                    anonymized = p.row(row).to_string();
                    &anonymized
                }
                None => raw,
            };
            sha.update(line.as_bytes());
            sha.update(b"\n");
            tokio::io::AsyncWriteExt::write_all(&mut file, line.as_bytes())
                .await
                .map_err(|e| io_error("writing a temporary file", e))?;
            tokio::io::AsyncWriteExt::write_all(&mut file, b"\n")
                .await
                .map_err(|e| io_error("writing a temporary file", e))?;
            rows += 1;
            bytes += line.len() as u64 + 1;
        }
    }
    tx.batch_execute(&format!("close {cursor}"))
        .await
        .map_err(pg("reading a table"))?;
    tokio::io::AsyncWriteExt::flush(&mut file)
        .await
        .map_err(|e| io_error("writing a temporary file", e))?;
    Ok((rows, bytes, hex_digest(sha)))
}

/// The pseudonyms of the tenant's people, read from the snapshot.
async fn pseudonyms(
    tx: &tokio_postgres::Transaction<'_>,
    schema: &str,
) -> Result<crate::anonymize::Pseudonyms> {
    let q = portico_provisioning::escape_ident(schema);
    let users: Vec<(uuid::Uuid, String, String)> = tx
        .query(
            &format!("select id, email, display_name from {q}.users"),
            &[],
        )
        .await
        .map_err(pg("reading the tenant's users"))?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let subjects: Vec<(uuid::Uuid, String)> = tx
        .query(
            &format!("select user_id, subject from {q}.user_identities"),
            &[],
        )
        .await
        .map_err(pg("reading the tenant's identities"))?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    Ok(crate::anonymize::Pseudonyms::new(&users, &subjects))
}

/// Decrypts one version's content into the archive; returns its SHA-256 (hex).
async fn export_document(
    content: &portico_tenant_runtime::content::ContentState,
    archive: &Archive,
    tenant: TenantId,
    v: &tokio_postgres::Row,
    file: &str,
    size: u64,
) -> Result<String> {
    let id: String = v.get(0);
    let version = uuid::Uuid::parse_str(&id)
        .map_err(|_| PlatformError::InvalidState(format!("bad version id {id}")))?;
    let object = ObjectKey::parse(v.get::<_, &str>(3))
        .map_err(|e| PlatformError::InvalidState(format!("version {id}: {e}")))?;
    let key = TenantKeyRef::new(v.get::<_, String>(5));
    // Versions share data keys: each is unwrapped (a KMS call) once per export.
    let dk = content
        .keys
        .open(tenant, &key, v.get::<_, &[u8]>(4))
        .await?;
    let cipher = ObjectCipher::new(&dk, v.get::<_, &[u8]>(6), tenant, version);
    archive
        .send(Msg::Entry {
            name: file.to_owned(),
            size,
        })
        .await?;
    let mut sha = Sha256::new();
    let mut sent = 0u64;
    if size > 0 {
        let mut segments = Segments::open(&content.store, &object, Some(cipher), size, 0, size - 1)
            .await
            .map_err(|e| PlatformError::InvalidState(format!("document version {id}: {e}")))?;
        while let Some(piece) = segments
            .next_piece()
            .await
            .map_err(|e| PlatformError::InvalidState(format!("document version {id}: {e}")))?
        {
            sha.update(&piece);
            sent += piece.len() as u64;
            archive.send(Msg::Data(piece)).await?;
        }
    }
    if sent != size {
        return Err(PlatformError::InvalidState(format!(
            "document version {id}: {sent} bytes read, {size} recorded"
        )));
    }
    archive.send(Msg::End).await?;
    Ok(hex_digest(sha))
}

/// The audit log's size and head, from the snapshot.
async fn audit_summary(
    tx: &tokio_postgres::Transaction<'_>,
    target: &portico_provisioning::migrations::Target,
) -> Result<ManifestAudit> {
    let r = tx
        .query_one(
            &format!(
                "select count(*), coalesce(max(seq), 0),
                        coalesce((select encode(hash, 'hex') from {a}.audit_events
                                   order by seq desc limit 1), repeat('0', 64))
                   from {a}.audit_events",
                a = portico_provisioning::escape_ident(&target.audit_schema())
            ),
            &[],
        )
        .await
        .map_err(pg("reading the audit head"))?;
    Ok(ManifestAudit {
        events: u64::try_from(r.get::<_, i64>(0)).unwrap_or(0),
        head_seq: r.get(1),
        head_hash: r.get(2),
    })
}

/// What `portico export verify` found.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    pub tenant: Option<String>,
    pub signed_by: Option<String>,
    pub tables: usize,
    pub rows: u64,
    pub documents: usize,
    pub document_bytes: u64,
    pub audit_events: u64,
    /// Empty when the archive is intact.
    pub problems: Vec<String>,
}

/// The age header every encrypted archive starts with.
const AGE_MAGIC: &[u8] = b"age-encryption.org/v1";

/// Reads the `AGE-SECRET-KEY-1…` lines of an identity file.
pub fn read_identities(path: &Path) -> Result<Vec<age::x25519::Identity>> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        PlatformError::InvalidInput(format!("cannot read identity {}: {e}", path.display()))
    })?;
    let ids: Vec<age::x25519::Identity> = text
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("AGE-SECRET-KEY-"))
        .filter_map(|l| l.parse().ok())
        .collect();
    if ids.is_empty() {
        return Err(PlatformError::InvalidInput(format!(
            "{} holds no age X25519 identity (AGE-SECRET-KEY-1…)",
            path.display()
        )));
    }
    Ok(ids)
}

/// An archive opened for reading: the file, or the plaintext of its age encryption (both
/// seekable: age decrypts only the chunks read).
pub enum Opened {
    Plain(std::io::BufReader<std::fs::File>),
    Age(age::stream::StreamReader<std::io::BufReader<std::fs::File>>),
}

impl Read for Opened {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Self::Plain(r) => r.read(buf),
            Self::Age(r) => r.read(buf),
        }
    }
}

impl std::io::Seek for Opened {
    fn seek(&mut self, pos: std::io::SeekFrom) -> std::io::Result<u64> {
        match self {
            Self::Plain(r) => r.seek(pos),
            Self::Age(r) => r.seek(pos),
        }
    }
}

/// Opens an archive for reading: decrypted with `identities` if it is encrypted.
pub fn open_archive(path: &Path, identities: &[age::x25519::Identity]) -> Result<(Opened, bool)> {
    let mut file = std::io::BufReader::new(std::fs::File::open(path).map_err(|e| {
        PlatformError::InvalidInput(format!("cannot read {}: {e}", path.display()))
    })?);
    let head =
        std::io::BufRead::fill_buf(&mut file).map_err(|e| io_error("reading the archive", e))?;
    if !head.starts_with(AGE_MAGIC) {
        return Ok((Opened::Plain(file), false));
    }
    if identities.is_empty() {
        return Err(PlatformError::InvalidInput(format!(
            "{} is encrypted; give the recipient's identity with --identity FILE",
            path.display()
        )));
    }
    let decryptor = age::Decryptor::new(file).map_err(|e| {
        PlatformError::InvalidInput(format!(
            "{} is not a readable age file: {e}",
            path.display()
        ))
    })?;
    let reader = decryptor
        .decrypt(identities.iter().map(|i| i as &dyn age::Identity))
        .map_err(|e| {
            PlatformError::InvalidInput(format!("cannot decrypt {}: {e}", path.display()))
        })?;
    Ok((Opened::Age(reader), true))
}

/// Reads only the manifest of an archive (seeking past every other entry, so an encrypted
/// archive is decrypted only where its tar headers are) and checks its signature; returns the
/// manifest and the signing key. The files themselves are checked by whoever reads them.
pub fn read_manifest(
    path: &Path,
    identities: &[age::x25519::Identity],
    expected: Option<&portico_core::signing::PublicKey>,
) -> Result<(Manifest, String)> {
    let (reader, _) = open_archive(path, identities)?;
    let (manifest, sig) = manifest_entries(path, reader)?;
    let (Some(manifest), Some(sig)) = (manifest, sig) else {
        return Err(PlatformError::InvalidInput(format!(
            "{} has no manifest.json and manifest.sig: it is incomplete",
            path.display()
        )));
    };
    let key = check_signature(&manifest, &sig, expected)
        .map_err(|p| PlatformError::InvalidInput(format!("{}: {p}", path.display())))?;
    let manifest: Manifest = serde_json::from_slice(&manifest).map_err(|e| {
        PlatformError::InvalidInput(format!(
            "{}: manifest.json is not a manifest: {e}",
            path.display()
        ))
    })?;
    Ok((manifest, key))
}

type ManifestParts = (Option<Vec<u8>>, Option<Vec<u8>>);

fn manifest_entries<R: Read + std::io::Seek>(path: &Path, reader: R) -> Result<ManifestParts> {
    let broken = broken_archive(path);
    let mut archive = tar::Archive::new(reader);
    let mut parts = (None, None);
    for entry in archive.entries_with_seek().map_err(&broken)? {
        let mut entry = entry.map_err(&broken)?;
        let name = entry_name(&entry).map_err(&broken)?;
        keep_manifest_part(&name, &mut entry, &mut parts).map_err(&broken)?;
    }
    Ok(parts)
}

/// An archive entry's path as text.
pub(crate) fn entry_name<R: Read>(entry: &tar::Entry<'_, R>) -> std::io::Result<String> {
    Ok(entry.path()?.to_string_lossy().into_owned())
}

/// The error of an archive that cannot be read to its end.
fn broken_archive(path: &Path) -> impl Fn(std::io::Error) -> PlatformError + '_ {
    move |e| {
        PlatformError::InvalidInput(format!(
            "{} is not a complete Portico export (or the identity is wrong): {e}",
            path.display()
        ))
    }
}

/// Keeps `manifest.json` or `manifest.sig` (whichever `name` is) in `parts`; `false` for any
/// other entry.
fn keep_manifest_part(
    name: &str,
    entry: &mut impl Read,
    parts: &mut ManifestParts,
) -> std::io::Result<bool> {
    let slot = match name {
        "manifest.json" => &mut parts.0,
        "manifest.sig" => &mut parts.1,
        _ => return Ok(false),
    };
    let mut buf = Vec::new();
    entry.take(256 * 1024 * 1024).read_to_end(&mut buf)?;
    *slot = Some(buf);
    Ok(true)
}

/// Checks an archive offline: the manifest's signature (by `expected` if given, else by the
/// key it names), every file's size and SHA-256 against the manifest, row counts, and the
/// audit chain of the exported events up to the manifest's head. Reads the archive once,
/// streaming.
pub fn verify(
    path: &Path,
    identities: &[age::x25519::Identity],
    expected: Option<&portico_core::signing::PublicKey>,
) -> Result<VerifyReport> {
    Ok(verify_with_manifest(path, identities, expected)?.0)
}

/// [`verify`], also returning the manifest when it could be read.
pub fn verify_with_manifest(
    path: &Path,
    identities: &[age::x25519::Identity],
    expected: Option<&portico_core::signing::PublicKey>,
) -> Result<(VerifyReport, Option<Manifest>)> {
    let (reader, encrypted) = open_archive(path, identities)?;
    let mut archive = tar::Archive::new(reader);
    let mut seen: std::collections::BTreeMap<String, (u64, String, u64)> = Default::default();
    let mut parts = (None, None);
    let mut chain = ChainCheck::default();
    let broken = broken_archive(path);
    for entry in archive.entries().map_err(&broken)? {
        let mut entry = entry.map_err(&broken)?;
        let name = entry_name(&entry).map_err(&broken)?;
        if keep_manifest_part(&name, &mut entry, &mut parts).map_err(&broken)? {
            continue;
        }
        let is_audit = name == "tables/audit.audit_events.jsonl";
        let (mut sha, mut size, mut lines) = (Sha256::new(), 0u64, 0u64);
        let mut line = Vec::new();
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = entry.read(&mut buf).map_err(&broken)?;
            if n == 0 {
                break;
            }
            sha.update(&buf[..n]);
            size += n as u64;
            for &b in &buf[..n] {
                if b == b'\n' {
                    lines += 1;
                    if is_audit {
                        chain.event(&line);
                    }
                    line.clear();
                } else if is_audit {
                    line.push(b);
                }
            }
        }
        seen.insert(name, (size, hex_digest(sha), lines));
    }
    let mut report = VerifyReport {
        tenant: None,
        signed_by: None,
        tables: 0,
        rows: 0,
        documents: 0,
        document_bytes: 0,
        audit_events: chain.events,
        problems: Vec::new(),
    };
    let (Some(manifest_bytes), Some(sig_bytes)) = parts else {
        report
            .problems
            .push("the archive has no manifest.json and manifest.sig: it is incomplete".into());
        return Ok((report, None));
    };
    // The signature first: nothing the manifest says counts before it is known to be ours.
    match check_signature(&manifest_bytes, &sig_bytes, expected) {
        Ok(key) => report.signed_by = Some(key),
        Err(p) => report.problems.push(p),
    }
    let manifest: Manifest = match serde_json::from_slice(&manifest_bytes) {
        Ok(m) => m,
        Err(e) => {
            report
                .problems
                .push(format!("manifest.json is not a manifest: {e}"));
            return Ok((report, None));
        }
    };
    report.tenant = Some(manifest.tenant.slug.clone());
    if manifest.encrypted != encrypted {
        report.problems.push(format!(
            "the manifest says encrypted = {}, the file is {}",
            manifest.encrypted,
            if encrypted { "encrypted" } else { "plaintext" }
        ));
    }
    let mut listed = std::collections::BTreeSet::new();
    for t in &manifest.tables {
        listed.insert(t.file.clone());
        match seen.get(&t.file) {
            None => report.problems.push(format!("{} is missing", t.file)),
            Some((size, sha, lines)) => {
                if *sha != t.sha256 || *size != t.bytes {
                    report.problems.push(format!(
                        "{} was changed (its SHA-256 or size differs from the manifest)",
                        t.file
                    ));
                }
                if *lines != t.rows {
                    report.problems.push(format!(
                        "{} has {lines} rows, the manifest says {}",
                        t.file, t.rows
                    ));
                }
            }
        }
        report.tables += 1;
        report.rows += t.rows;
    }
    for d in &manifest.documents {
        listed.insert(d.file.clone());
        match seen.get(&d.file) {
            None => report.problems.push(format!("{} is missing", d.file)),
            Some((size, sha, _)) if *sha != d.sha256 || *size != d.size => {
                report.problems.push(format!(
                    "{} was changed (its SHA-256 or size differs from the manifest)",
                    d.file
                ))
            }
            Some(_) => {}
        }
        report.documents += 1;
        report.document_bytes += d.size;
    }
    for extra in seen.keys().filter(|k| !listed.contains(*k)) {
        report
            .problems
            .push(format!("{extra} is not in the manifest"));
    }
    if let Some(p) = chain.problem {
        report.problems.push(format!("audit chain: {p}"));
    } else if chain.events != manifest.audit.events
        || chain.head_seq != manifest.audit.head_seq
        || hex::encode(&chain.prev) != manifest.audit.head_hash
    {
        report.problems.push(format!(
            "audit chain: the exported events end at {} ({} events), the manifest names {} ({} events)",
            chain.head_seq, chain.events, manifest.audit.head_seq, manifest.audit.events
        ));
    }
    Ok((report, Some(manifest)))
}

pub(crate) fn check_signature(
    manifest: &[u8],
    sig: &[u8],
    expected: Option<&portico_core::signing::PublicKey>,
) -> std::result::Result<String, String> {
    let sig: serde_json::Value =
        serde_json::from_slice(sig).map_err(|_| "manifest.sig is not JSON".to_owned())?;
    if sig["alg"] != "Ed25519" {
        return Err("manifest.sig: the algorithm is not Ed25519".into());
    }
    let key = portico_core::signing::PublicKey::parse(sig["key"].as_str().unwrap_or_default())
        .map_err(|e| format!("manifest.sig: {e}"))?;
    if let Some(expected) = expected
        && *expected != key
    {
        return Err(format!(
            "manifest.sig: signed by {key}, not by the expected key {expected}"
        ));
    }
    let value = base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        sig["value"].as_str().unwrap_or_default(),
    )
    .map_err(|_| "manifest.sig: the signature is not base64".to_owned())?;
    key.verify(manifest, &value).map_err(|_| {
        "manifest.json does not match its signature (changed after signing)".to_owned()
    })?;
    Ok(key.to_string())
}

/// Walks the exported audit events (in `seq` order) and recomputes the chain.
pub(crate) struct ChainCheck {
    pub(crate) prev: Vec<u8>,
    pub(crate) events: u64,
    pub(crate) head_seq: i64,
    pub(crate) problem: Option<String>,
}

impl Default for ChainCheck {
    fn default() -> Self {
        Self {
            prev: portico_core::audit_chain::GENESIS.to_vec(),
            events: 0,
            head_seq: 0,
            problem: None,
        }
    }
}

impl ChainCheck {
    pub(crate) fn event(&mut self, line: &[u8]) {
        if self.problem.is_some() {
            return;
        }
        if let Err(p) = self.check(line) {
            self.problem = Some(p);
        }
    }

    fn check(&mut self, line: &[u8]) -> std::result::Result<(), String> {
        use portico_core::audit_chain::{Format, canonical, in_format, link, sha256};
        let e: serde_json::Value =
            serde_json::from_slice(line).map_err(|_| "an event is not JSON".to_owned())?;
        let seq = e["seq"].as_i64().ok_or("an event has no seq")?;
        if seq != self.head_seq + 1 {
            return Err(format!(
                "event {} is missing (next is {seq})",
                self.head_seq + 1
            ));
        }
        let at = time::OffsetDateTime::parse(
            e["at"].as_str().unwrap_or_default(),
            &time::format_description::well_known::Rfc3339,
        )
        .map_err(|_| format!("event {seq}: unreadable time"))?;
        let text = |k: &str| e[k].as_str();
        // inet as text: a host address, without a full-length mask.
        let ip = text("client_ip").map(|s| s.trim_end_matches("/32").trim_end_matches("/128"));
        let bytes = |k: &str| -> std::result::Result<Vec<u8>, String> {
            hex::decode(text(k).unwrap_or_default().trim_start_matches("\\x"))
                .map_err(|_| format!("event {seq}: unreadable {k}"))
        };
        // Archives of schemas before 8 have no format: their events are plain.
        let format = i16::try_from(e["format"].as_i64().unwrap_or(1))
            .ok()
            .and_then(Format::from_i16)
            .ok_or_else(|| format!("event {seq}: unknown format"))?;
        let payload = bytes("payload_hash")?;
        // A format-2 event is hashed over the strings its references stand for
        // (`audit_values`): its links are checked here, its content by `portico audit verify`
        // on the tenant.
        if format != Format::Converted {
            let computed = sha256(&in_format(
                format,
                canonical(
                    at,
                    text("event_type").unwrap_or_default(),
                    text("actor").unwrap_or_default(),
                    ip,
                    text("request_id"),
                    text("target"),
                    text("outcome").unwrap_or_default(),
                    text("reason"),
                    &e["details"],
                ),
            ));
            if computed != payload {
                return Err(format!(
                    "event {seq}: its content does not match its payload hash"
                ));
            }
        }
        if bytes("prev_hash")? != self.prev {
            return Err(format!(
                "event {seq}: it does not link to the event before it"
            ));
        }
        let h = link(&self.prev, &payload);
        if h != bytes("hash")? {
            return Err(format!("event {seq}: its chain hash is wrong"));
        }
        self.prev = h;
        self.head_seq = seq;
        self.events += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portico_core::audit_chain::{GENESIS, canonical, link, sha256};

    /// Two events as PostgreSQL's `to_jsonb` writes them.
    fn events() -> Vec<serde_json::Value> {
        let mut prev = GENESIS.to_vec();
        let mut out = Vec::new();
        for (seq, actor) in [(1, "ann@acme.example"), (2, "ben@acme.example")] {
            let at = time::OffsetDateTime::from_unix_timestamp(1_800_000_000 + seq).expect("time")
                + time::Duration::microseconds(123_456);
            let details = serde_json::json!({"n": seq});
            let payload = sha256(&canonical(
                at,
                "login",
                actor,
                Some("10.0.0.1"),
                None,
                None,
                "success",
                None,
                &details,
            ));
            let hash = link(&prev, &payload);
            out.push(serde_json::json!({
                "seq": seq,
                "at": at.format(&time::format_description::well_known::Rfc3339).expect("fmt"),
                "event_type": "login", "actor": actor, "client_ip": "10.0.0.1",
                "request_id": null, "target": null, "outcome": "success", "reason": null,
                "details": details,
                "payload_hash": format!("\\x{}", hex::encode(&payload)),
                "prev_hash": format!("\\x{}", hex::encode(&prev)),
                "hash": format!("\\x{}", hex::encode(&hash)),
            }));
            prev = hash;
        }
        out
    }

    fn walk(events: &[serde_json::Value]) -> ChainCheck {
        let mut c = ChainCheck::default();
        for e in events {
            c.event(e.to_string().as_bytes());
        }
        c
    }

    #[test]
    fn the_exported_chain_is_recomputed_and_any_change_is_found() {
        let good = events();
        let c = walk(&good);
        assert_eq!((c.problem.as_deref(), c.events, c.head_seq), (None, 2, 2));

        let mut edited = good.clone();
        edited[0]["actor"] = "mallory@evil.example".into();
        assert!(
            walk(&edited)
                .problem
                .expect("found")
                .contains("payload hash")
        );

        let dropped = vec![good[1].clone()];
        assert!(walk(&dropped).problem.expect("found").contains("missing"));

        let mut relinked = good.clone();
        relinked[1]["prev_hash"] = format!("\\x{}", "00".repeat(32)).into();
        assert!(walk(&relinked).problem.expect("found").contains("link"));
    }
}
