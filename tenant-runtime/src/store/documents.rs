//! Documents: metadata, the version chain, and time-limited links. Content lives in object
//! storage (see [`crate::content`]); each version row carries what is needed to read it back
//! (object key, wrapped data key, key reference, salt) but never a plaintext key.

use crate::conn::TenantConn;
use time::{Date, OffsetDateTime};
use uuid::Uuid;

use crate::ids::{DocumentId, VersionId};

use crate::error::RuntimeError;

pub const DOC_TYPES: [&str; 5] = [
    "invoice",
    "delivery_note",
    "contract",
    "certificate",
    "other",
];
pub const DOC_STATUSES: [&str; 3] = ["draft", "released", "archived"];

#[derive(Debug, Clone)]
pub struct Document {
    pub id: DocumentId,
    pub doc_type: String,
    pub title: String,
    pub period: Option<String>,
    pub site: Option<String>,
    pub status: String,
    pub retention_until: Option<Date>,
    pub created_by: String,
    pub created_at: OffsetDateTime,
    /// Set while the document is under a legal hold.
    pub legal_hold: Option<LegalHold>,
    pub current: Option<Version>,
}

/// A legal hold: while it lasts the document can be neither deleted nor replaced.
#[derive(Debug, Clone)]
pub struct LegalHold {
    pub reason: String,
    pub by: String,
    pub at: OffsetDateTime,
}

#[derive(Debug, Clone)]
pub struct Version {
    pub id: VersionId,
    pub document_id: DocumentId,
    pub version: i32,
    pub file_name: String,
    pub media_type: String,
    pub size: i64,
    pub sha256: Vec<u8>,
    pub object_key: String,
    pub data_key_wrapped: Vec<u8>,
    pub data_key_ref: String,
    pub nonce: Vec<u8>,
    pub segment_size: i32,
    pub valid_from: OffsetDateTime,
    pub valid_until: Option<OffsetDateTime>,
    pub replaced_by: Option<VersionId>,
    pub released_by: Option<String>,
    pub released_at: Option<OffsetDateTime>,
    pub created_at: OffsetDateTime,
}

/// Metadata of a new document.
#[derive(Debug, Clone)]
pub struct NewDocument {
    pub doc_type: String,
    pub title: String,
    pub period: Option<String>,
    pub site: Option<String>,
    pub status: String,
    pub retention_until: Option<Date>,
}

/// A stored content version to record.
#[derive(Debug, Clone)]
pub struct NewVersion {
    pub id: VersionId,
    pub file_name: String,
    pub media_type: String,
    pub size: i64,
    pub sha256: Vec<u8>,
    pub object_key: String,
    pub data_key_wrapped: Vec<u8>,
    pub data_key_ref: String,
    pub nonce: Vec<u8>,
    pub segment_size: i32,
    pub valid_until: Option<OffsetDateTime>,
    pub released_by: Option<String>,
}

const VERSION_COLUMNS: &str = "v.id, v.document_id, v.version, v.file_name, v.media_type, v.size,
    v.sha256, v.object_key, v.data_key_wrapped, v.data_key_ref, v.nonce, v.segment_size,
    v.valid_from, v.valid_until, v.replaced_by, v.released_by, v.released_at, v.created_at";

fn version_at(r: &tokio_postgres::Row, o: usize) -> Version {
    Version {
        id: r.get(o),
        document_id: r.get(o + 1),
        version: r.get(o + 2),
        file_name: r.get(o + 3),
        media_type: r.get(o + 4),
        size: r.get(o + 5),
        sha256: r.get(o + 6),
        object_key: r.get(o + 7),
        data_key_wrapped: r.get(o + 8),
        data_key_ref: r.get(o + 9),
        nonce: r.get(o + 10),
        segment_size: r.get(o + 11),
        valid_from: r.get(o + 12),
        valid_until: r.get(o + 13),
        replaced_by: r.get(o + 14),
        released_by: r.get(o + 15),
        released_at: r.get(o + 16),
        created_at: r.get(o + 17),
    }
}

const DOC_COLUMNS: &str = "d.id, d.doc_type, d.title, d.period, d.site, d.status,
    d.retention_until, d.created_by, d.created_at, d.legal_hold_reason, d.legal_hold_by,
    d.legal_hold_at";

fn document(r: &tokio_postgres::Row) -> Document {
    let current = r.get::<_, Option<Uuid>>(12).map(|_| version_at(r, 12));
    let legal_hold = match (r.get(9), r.get(10), r.get(11)) {
        (Some(reason), Some(by), Some(at)) => Some(LegalHold { reason, by, at }),
        _ => None,
    };
    Document {
        id: r.get(0),
        doc_type: r.get(1),
        title: r.get(2),
        period: r.get(3),
        site: r.get(4),
        status: r.get(5),
        retention_until: r.get(6),
        created_by: r.get(7),
        created_at: r.get(8),
        legal_hold,
        current,
    }
}

fn q(op: &'static str) -> impl Fn(tokio_postgres::Error) -> RuntimeError {
    move |e| match RuntimeError::constraint_of(&e) {
        Some("documents_site_fkey") => RuntimeError::InvalidInput("unknown site".into()),
        Some("documents_period_check") => {
            RuntimeError::InvalidInput("period must be YYYY, YYYY-MM or YYYY-Qn".into())
        }
        Some("documents_title_check") => {
            RuntimeError::InvalidInput("title must be 1 to 300 characters".into())
        }
        Some("documents_doc_type_check") | Some("documents_status_check") => {
            RuntimeError::InvalidInput("unknown type or status".into())
        }
        _ => RuntimeError::query(op, e),
    }
}

async fn insert_version(
    tx: &tokio_postgres::Transaction<'_>,
    document: DocumentId,
    number: i32,
    v: &NewVersion,
) -> Result<(), RuntimeError> {
    tx.execute(
        "insert into document_versions (id, document_id, version, file_name, media_type, size,
             sha256, object_key, data_key_wrapped, data_key_ref, nonce, segment_size, valid_until,
             released_by, released_at)
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14,
                 case when $14::text is null then null else now() end)",
        &[
            &v.id,
            &document,
            &number,
            &v.file_name,
            &v.media_type,
            &v.size,
            &v.sha256,
            &v.object_key,
            &v.data_key_wrapped,
            &v.data_key_ref,
            &v.nonce,
            &v.segment_size,
            &v.valid_until,
            &v.released_by,
        ],
    )
    .await
    .map_err(q("recording a document version"))?;
    Ok(())
}

/// Records a new document with its first version.
pub async fn create(
    client: &mut TenantConn,
    id: DocumentId,
    d: &NewDocument,
    v: &NewVersion,
    actor: &str,
) -> Result<Document, RuntimeError> {
    let tx = client
        .transaction()
        .await
        .map_err(q("recording a document"))?;
    tx.execute(
        "insert into documents (id, doc_type, title, period, site, status, retention_until, created_by)
         values ($1, $2, $3, $4, $5, $6, $7, $8)",
        &[
            &id,
            &d.doc_type,
            &d.title,
            &d.period,
            &d.site,
            &d.status,
            &d.retention_until,
            &actor,
        ],
    )
    .await
    .map_err(q("recording a document"))?;
    insert_version(&tx, id, 1, v).await?;
    tx.execute(
        "update documents set current_version = $2 where id = $1",
        &[&id, &v.id],
    )
    .await
    .map_err(q("recording a document"))?;
    tx.commit().await.map_err(q("recording a document"))?;
    get(client, id)
        .await?
        .ok_or_else(|| RuntimeError::NotFound("document".into()))
}

/// Adds a version that replaces the current one (which gets `valid_until` and `replaced_by`).
pub async fn add_version(
    client: &mut TenantConn,
    document: DocumentId,
    v: &NewVersion,
) -> Result<Version, RuntimeError> {
    let tx = client
        .transaction()
        .await
        .map_err(q("recording a version"))?;
    let row = tx
        .query_opt(
            "select current_version,
                    (select coalesce(max(version), 0) from document_versions where document_id = d.id),
                    d.legal_hold_at is not null
               from documents d where d.id = $1 for update",
            &[&document],
        )
        .await
        .map_err(q("recording a version"))?
        .ok_or_else(|| RuntimeError::NotFound("no such document".into()))?;
    // Checked under the row lock: a hold set while the content was uploading still wins.
    if row.get::<_, bool>(2) {
        return Err(RuntimeError::Conflict(LEGAL_HOLD_ACTIVE.into()));
    }
    let previous: Option<VersionId> = row.get(0);
    let number: i32 = row.get(1);
    insert_version(&tx, document, number + 1, v).await?;
    if let Some(prev) = previous {
        tx.execute(
            "update document_versions set valid_until = least(coalesce(valid_until, now()), now()),
                    replaced_by = $2
              where id = $1",
            &[&prev, &v.id],
        )
        .await
        .map_err(q("recording a version"))?;
    }
    tx.execute(
        "update documents set current_version = $2 where id = $1",
        &[&document, &v.id],
    )
    .await
    .map_err(q("recording a version"))?;
    tx.commit().await.map_err(q("recording a version"))?;
    version(client, v.id)
        .await?
        .ok_or_else(|| RuntimeError::NotFound("version".into()))
}

pub async fn get(client: &TenantConn, id: DocumentId) -> Result<Option<Document>, RuntimeError> {
    Ok(client
        .query_opt(
            &format!(
                "select {DOC_COLUMNS}, {VERSION_COLUMNS} from documents d
                   left join document_versions v on v.id = d.current_version
                  where d.id = $1"
            ),
            &[&id],
        )
        .await
        .map_err(q("reading a document"))?
        .as_ref()
        .map(document))
}

/// (id, site) of those of `ids` that exist.
pub async fn sites_of(
    client: &TenantConn,
    ids: &[DocumentId],
) -> Result<Vec<(DocumentId, Option<String>)>, RuntimeError> {
    Ok(client
        .query("select id, site from documents where id = any($1)", &[&ids])
        .await
        .map_err(q("reading documents"))?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}

pub async fn versions(
    client: &TenantConn,
    document: DocumentId,
) -> Result<Vec<Version>, RuntimeError> {
    Ok(client
        .query(
            &format!(
                "select {VERSION_COLUMNS} from document_versions v where v.document_id = $1
                  order by v.version"
            ),
            &[&document],
        )
        .await
        .map_err(q("reading versions"))?
        .iter()
        .map(|r| version_at(r, 0))
        .collect())
}

pub async fn version(client: &TenantConn, id: VersionId) -> Result<Option<Version>, RuntimeError> {
    Ok(client
        .query_opt(
            &format!("select {VERSION_COLUMNS} from document_versions v where v.id = $1"),
            &[&id],
        )
        .await
        .map_err(q("reading a version"))?
        .as_ref()
        .map(|r| version_at(r, 0)))
}

/// Filters of the document list.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub doc_type: Option<String>,
    pub period: Option<String>,
    pub site: Option<String>,
    pub status: Option<String>,
    /// Documents whose current version is valid at this moment.
    pub valid_at: Option<OffsetDateTime>,
    /// The caller's site scope (`None`: every site; organisation-wide documents only for those).
    pub scope: Option<Vec<String>>,
    /// Cursor: documents strictly after this (created_at, id) in the listing order.
    pub after: Option<(OffsetDateTime, DocumentId)>,
}

/// Newest first.
pub async fn list(
    client: &TenantConn,
    f: &Filter,
    limit: i64,
) -> Result<Vec<Document>, RuntimeError> {
    let (after_at, after_id) = f.after.map_or((None, None), |(a, i)| (Some(a), Some(i)));
    Ok(client
        .query(
            &format!(
                "select {DOC_COLUMNS}, {VERSION_COLUMNS} from documents d
                   left join document_versions v on v.id = d.current_version
                  where ($1::text is null or d.doc_type = $1)
                    and ($2::text is null or d.period = $2)
                    and ($3::text is null or d.site = $3)
                    and ($4::text is null or d.status = $4)
                    and ($5::timestamptz is null
                         or (v.valid_from <= $5 and (v.valid_until is null or v.valid_until > $5)))
                    and ($6::text[] is null or d.site = any($6))
                    and ($7::timestamptz is null or (d.created_at, d.id) < ($7, $8::uuid))
                  order by d.created_at desc, d.id desc
                  limit $9"
            ),
            &[
                &f.doc_type,
                &f.period,
                &f.site,
                &f.status,
                &f.valid_at,
                &f.scope,
                &after_at,
                &after_id,
                &limit,
            ],
        )
        .await
        .map_err(q("listing documents"))?
        .iter()
        .map(document)
        .collect())
}

// ---- links -----------------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct Link {
    pub id: Uuid,
    pub document_id: DocumentId,
    pub version_id: VersionId,
    pub expires_at: OffsetDateTime,
    pub created_by: String,
    pub created_at: OffsetDateTime,
    pub revoked_at: Option<OffsetDateTime>,
    pub uses: i32,
}

const LINK_COLUMNS: &str =
    "id, document_id, version_id, expires_at, created_by, created_at, revoked_at, uses";

fn link(r: &tokio_postgres::Row) -> Link {
    Link {
        id: r.get(0),
        document_id: r.get(1),
        version_id: r.get(2),
        expires_at: r.get(3),
        created_by: r.get(4),
        created_at: r.get(5),
        revoked_at: r.get(6),
        uses: r.get(7),
    }
}

pub async fn create_link(
    client: &TenantConn,
    document: DocumentId,
    version: VersionId,
    expires_at: OffsetDateTime,
    actor: &str,
) -> Result<Link, RuntimeError> {
    let row = client
        .query_one(
            &format!(
                "insert into document_links (id, document_id, version_id, expires_at, created_by)
                 values ($1, $2, $3, date_trunc('second', $4::timestamptz), $5)
                 returning {LINK_COLUMNS}"
            ),
            &[&Uuid::new_v4(), &document, &version, &expires_at, &actor],
        )
        .await
        .map_err(q("creating a link"))?;
    Ok(link(&row))
}

pub async fn get_link(client: &TenantConn, id: Uuid) -> Result<Option<Link>, RuntimeError> {
    Ok(client
        .query_opt(
            &format!("select {LINK_COLUMNS} from document_links where id = $1"),
            &[&id],
        )
        .await
        .map_err(q("reading a link"))?
        .as_ref()
        .map(link))
}

pub async fn links(client: &TenantConn, document: DocumentId) -> Result<Vec<Link>, RuntimeError> {
    Ok(client
        .query(
            &format!(
                "select {LINK_COLUMNS} from document_links where document_id = $1 order by created_at"
            ),
            &[&document],
        )
        .await
        .map_err(q("listing links"))?
        .iter()
        .map(link)
        .collect())
}

/// Revokes a link of this document; `NotFound` when there is none.
pub async fn revoke_link(
    client: &TenantConn,
    document: DocumentId,
    id: Uuid,
) -> Result<Link, RuntimeError> {
    let row = client
        .query_opt(
            &format!(
                "update document_links set revoked_at = coalesce(revoked_at, now())
                  where id = $1 and document_id = $2 returning {LINK_COLUMNS}"
            ),
            &[&id, &document],
        )
        .await
        .map_err(q("revoking a link"))?
        .ok_or_else(|| RuntimeError::NotFound("no such link".into()))?;
    Ok(link(&row))
}

/// Counts a use of a live link; `None` when it is revoked or expired.
pub async fn use_link(client: &TenantConn, id: Uuid) -> Result<Option<Link>, RuntimeError> {
    Ok(client
        .query_opt(
            &format!(
                "update document_links set uses = uses + 1
                  where id = $1 and revoked_at is null and expires_at > now()
                 returning {LINK_COLUMNS}"
            ),
            &[&id],
        )
        .await
        .map_err(q("using a link"))?
        .as_ref()
        .map(link))
}

// ---- tenant secrets --------------------------------------------------------------------------

/// The stored ciphertext of a tenant secret, if there is one.
pub async fn tenant_secret(
    client: &TenantConn,
    name: &str,
) -> Result<Option<Vec<u8>>, RuntimeError> {
    Ok(client
        .query_opt(
            "select ciphertext from tenant_secrets where name = $1",
            &[&name],
        )
        .await
        .map_err(|e| RuntimeError::query("reading a tenant secret", e))?
        .map(|r| r.get(0)))
}

/// Stores a tenant secret unless one exists; returns the stored ciphertext (the first writer
/// wins, so concurrent creators all end up with the same secret).
pub async fn put_tenant_secret(
    client: &TenantConn,
    name: &str,
    ciphertext: &[u8],
) -> Result<Vec<u8>, RuntimeError> {
    client
        .execute(
            "insert into tenant_secrets (name, ciphertext) values ($1, $2) on conflict do nothing",
            &[&name, &ciphertext],
        )
        .await
        .map_err(|e| RuntimeError::query("storing a tenant secret", e))?;
    tenant_secret(client, name)
        .await?
        .ok_or_else(|| RuntimeError::NotFound("tenant secret".into()))
}

/// The message of a refusal because of a legal hold (the handlers answer it with its own code).
pub const LEGAL_HOLD_ACTIVE: &str = "the document is under a legal hold";

/// Why a document could not be deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeleteRefused {
    /// Kept until this date.
    Retention(Date),
    LegalHold,
}

/// Sets (`Some((reason, by))`) or clears (`None`) a document's legal hold; `false` when the
/// document does not exist.
pub async fn set_legal_hold(
    client: &TenantConn,
    id: DocumentId,
    hold: Option<(&str, &str)>,
) -> Result<bool, RuntimeError> {
    let (reason, by) = hold.unzip();
    let n = client
        .execute(
            "update documents
                set legal_hold_reason = $2, legal_hold_by = $3,
                    legal_hold_at = case when $2::text is null then null else now() end
              where id = $1",
            &[&id, &reason, &by],
        )
        .await
        .map_err(q("changing a legal hold"))?;
    Ok(n == 1)
}

/// Deletes a document with its versions, links and ticket attachments in one transaction,
/// refused while its retention lasts (the database's `current_date` before `retention_until`)
/// or a legal hold is on.
/// Returns the object keys of its versions, queued in `object_deletions` in the same
/// transaction: the caller removes the objects, then [`objects_removed`].
pub async fn delete(
    client: &mut TenantConn,
    id: DocumentId,
) -> Result<Result<Vec<String>, DeleteRefused>, RuntimeError> {
    let tx = client
        .transaction()
        .await
        .map_err(q("deleting a document"))?;
    let row = tx
        .query_opt(
            "select retention_until, legal_hold_at is not null,
                    coalesce(retention_until > current_date, false)
               from documents where id = $1 for update",
            &[&id],
        )
        .await
        .map_err(q("deleting a document"))?
        .ok_or_else(|| RuntimeError::NotFound("no such document".into()))?;
    let retention: Option<Date> = row.get(0);
    if row.get::<_, bool>(1) {
        return Ok(Err(DeleteRefused::LegalHold));
    }
    if let Some(until) = retention.filter(|_| row.get::<_, bool>(2)) {
        return Ok(Err(DeleteRefused::Retention(until)));
    }
    let keys: Vec<String> = tx
        .query(
            "insert into object_deletions (object_key)
             select object_key from document_versions where document_id = $1
             on conflict on constraint object_deletions_pkey do nothing
             returning object_key",
            &[&id],
        )
        .await
        .map_err(q("deleting a document"))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    for sql in [
        "delete from document_links where document_id = $1",
        "delete from ticket_attachments where document_id = $1",
        "update documents set current_version = null where id = $1",
        "update document_versions set replaced_by = null where document_id = $1",
        "delete from document_versions where document_id = $1",
        "delete from documents where id = $1",
    ] {
        tx.execute(sql, &[&id])
            .await
            .map_err(q("deleting a document"))?;
    }
    tx.commit().await.map_err(q("deleting a document"))?;
    Ok(Ok(keys))
}

/// Objects queued for removal (those of the documents deleted just now, and any a crash left).
pub async fn queued_objects(client: &TenantConn, limit: i64) -> Result<Vec<String>, RuntimeError> {
    Ok(client
        .query(
            "select object_key from object_deletions order by queued_at, object_key limit $1",
            &[&limit],
        )
        .await
        .map_err(q("reading queued object deletions"))?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// Forgets queued objects that are gone from storage.
pub async fn objects_removed(client: &TenantConn, keys: &[String]) -> Result<(), RuntimeError> {
    client
        .execute(
            "delete from object_deletions where object_key = any($1)",
            &[&keys],
        )
        .await
        .map_err(q("recording removed objects"))?;
    Ok(())
}
