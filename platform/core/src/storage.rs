//! Object storage with one interface over a local directory (embedded default) and S3 or an
//! S3-compatible server. Object keys are built from [`TenantId`]s only (`tenants/<id>/…`), so
//! no slug or other personal data ends up in a key.
//!
//! This module reads, writes and deletes single objects. Deciding *which* objects make up a
//! tenant's prefix and destroying it is provisioning's job.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use aws_sdk_s3::primitives::ByteStream;
use tokio::io::AsyncWriteExt;

use crate::ids::TenantId;
use crate::settings::StorageSettings;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("invalid object key '{0}'")]
    InvalidKey(String),
    #[error("file storage at {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the stored object is shorter than its metadata says")]
    ShortObject,
    #[error("S3 {operation} on bucket '{bucket}': {message}")]
    S3 {
        operation: &'static str,
        bucket: String,
        message: String,
    },
}

/// A validated, relative object key: `/`-separated components of `[A-Za-z0-9._-]`, never `.`
/// or `..`, never empty.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey(String);

impl ObjectKey {
    pub fn parse(s: &str) -> Result<Self, StorageError> {
        let ok = !s.is_empty()
            && s.len() <= 900
            && s.split('/').all(|c| {
                !c.is_empty()
                    && c != "."
                    && c != ".."
                    && c.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
            });
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(StorageError::InvalidKey(s.to_owned()))
        }
    }

    /// `tenants/<tenant-id>/<name>`.
    pub fn tenant_object(tenant: TenantId, name: &str) -> Result<Self, StorageError> {
        Self::parse(&format!("{}{name}", tenant_prefix(tenant)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// `tenants/<tenant-id>/`: the storage prefix of one tenant.
pub fn tenant_prefix(tenant: TenantId) -> String {
    format!("tenants/{tenant}/")
}

/// File-store temporary files (an upload before its atomic rename) start with this. They are
/// not objects: listings skip them, and only deleting a whole prefix removes them.
const TEMP_PREFIX: &str = ".tmp-";

/// Name of the object that marks a provisioned tenant prefix.
pub const TENANT_MARKER: &str = ".portico-tenant";

#[derive(Clone)]
pub enum ObjectStore {
    File(FileStore),
    S3(S3Store),
}

impl std::fmt::Debug for ObjectStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl ObjectStore {
    /// Builds the store named by the settings. S3 credentials and region come from the
    /// standard AWS environment/config chain.
    pub async fn from_settings(settings: &StorageSettings) -> Result<Self, StorageError> {
        match settings {
            StorageSettings::File { root } => Ok(Self::File(FileStore { root: root.clone() })),
            StorageSettings::S3 {
                bucket,
                prefix,
                endpoint,
            } => {
                let config = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
                let mut builder = aws_sdk_s3::config::Builder::from(&config);
                if let Some(endpoint) = endpoint {
                    builder = builder
                        .endpoint_url(endpoint.as_str().trim_end_matches('/'))
                        .force_path_style(true);
                }
                let client = aws_sdk_s3::Client::from_conf(builder.build());
                Ok(Self::S3(S3Store {
                    client,
                    bucket: bucket.clone(),
                    prefix: if prefix.is_empty() {
                        String::new()
                    } else {
                        format!("{prefix}/")
                    },
                }))
            }
        }
    }

    /// Human description without credentials (`file:///dir`, `s3://bucket/prefix`).
    pub fn describe(&self) -> String {
        match self {
            Self::File(f) => format!("file://{}", f.root.display()),
            Self::S3(s) => format!("s3://{}/{}", s.bucket, s.prefix),
        }
    }

    /// Checks that the store can be used: the bucket exists and answers (S3), or the root
    /// directory exists or can be created (file).
    pub async fn check(&self) -> Result<(), StorageError> {
        match self {
            Self::File(f) => tokio::fs::create_dir_all(&f.root)
                .await
                .map_err(|e| io_err(&f.root, e)),
            Self::S3(s) => s
                .client
                .head_bucket()
                .bucket(&s.bucket)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| s3_err("HeadBucket", &s.bucket, e)),
        }
    }

    pub async fn put(&self, key: &ObjectKey, bytes: Vec<u8>) -> Result<(), StorageError> {
        match self {
            Self::File(f) => f.put(key, &bytes).await,
            Self::S3(s) => s.put(key, bytes).await,
        }
    }

    /// The object's bytes, or `None` when it does not exist.
    pub async fn get(&self, key: &ObjectKey) -> Result<Option<Vec<u8>>, StorageError> {
        match self {
            Self::File(f) => f.get(key).await,
            Self::S3(s) => s.get(key).await,
        }
    }

    /// Starts a streaming upload to `key`.
    pub async fn writer(&self, key: &ObjectKey) -> Result<ObjectWriter, StorageError> {
        match self {
            Self::File(f) => f.temp_for(key).await,
            Self::S3(s) => {
                let full = s.full(key);
                let out = s
                    .client
                    .create_multipart_upload()
                    .bucket(&s.bucket)
                    .key(&full)
                    .send()
                    .await
                    .map_err(|e| s3_err("CreateMultipartUpload", &s.bucket, e))?;
                let upload_id = out.upload_id.ok_or_else(|| StorageError::S3 {
                    operation: "CreateMultipartUpload",
                    bucket: s.bucket.clone(),
                    message: "no upload id in the answer".into(),
                })?;
                Ok(ObjectWriter {
                    inner: Some(WriterInner::S3 {
                        store: s.clone(),
                        key: full,
                        upload_id,
                        parts: Vec::new(),
                        buf: Vec::new(),
                    }),
                })
            }
        }
    }

    /// Reads `len` bytes from `start` (`len` > 0), or `None` when the object does not exist.
    pub async fn read_range(
        &self,
        key: &ObjectKey,
        start: u64,
        len: u64,
    ) -> Result<Option<ObjectReader>, StorageError> {
        use tokio::io::{AsyncReadExt, AsyncSeekExt};
        match self {
            Self::File(f) => {
                let path = f.path(key);
                let mut file = match tokio::fs::File::open(&path).await {
                    Ok(file) => file,
                    Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
                    Err(e) => return Err(io_err(&path, e)),
                };
                file.seek(std::io::SeekFrom::Start(start))
                    .await
                    .map_err(|e| io_err(&path, e))?;
                Ok(Some(ObjectReader {
                    inner: ReaderInner::File(file.take(len), path),
                    remaining: len,
                }))
            }
            Self::S3(s) => {
                let out = s
                    .client
                    .get_object()
                    .bucket(&s.bucket)
                    .key(s.full(key))
                    .range(format!("bytes={start}-{}", start + len.max(1) - 1))
                    .send()
                    .await;
                match out {
                    Ok(out) => Ok(Some(ObjectReader {
                        inner: ReaderInner::S3(out.body, s.bucket.clone()),
                        remaining: len,
                    })),
                    Err(e) if e.as_service_error().is_some_and(|e| e.is_no_such_key()) => Ok(None),
                    Err(e) => {
                        // A range past the end of a (truncated) object.
                        if e.raw_response().is_some_and(|r| r.status().as_u16() == 416) {
                            return Err(StorageError::ShortObject);
                        }
                        Err(s3_err("GetObject", &s.bucket, e))
                    }
                }
            }
        }
    }

    /// Keys of all objects under `prefix` (which should end in `/`), sorted.
    pub async fn list(&self, prefix: &str) -> Result<Vec<ObjectKey>, StorageError> {
        Ok(self
            .list_sized(prefix)
            .await?
            .into_iter()
            .map(|(k, _)| k)
            .collect())
    }

    /// Keys and sizes (bytes) of all objects under `prefix`, sorted by key.
    pub async fn list_sized(&self, prefix: &str) -> Result<Vec<(ObjectKey, u64)>, StorageError> {
        let mut keys = match self {
            Self::File(f) => f.list(prefix).await?,
            Self::S3(s) => s.list(prefix).await?,
        };
        keys.sort();
        Ok(keys)
    }

    /// Deletes one object; deleting a missing object is not an error.
    pub async fn delete(&self, key: &ObjectKey) -> Result<(), StorageError> {
        match self {
            Self::File(f) => f.delete(key).await,
            Self::S3(s) => s.delete(key).await,
        }
    }

    /// Deletes everything under `prefix` (which must end in `/`), including what an interrupted
    /// upload left; returns how many objects were deleted. For provisioning, which owns
    /// prefixes.
    pub async fn delete_prefix(&self, prefix: &str) -> Result<PrefixDeletion, StorageError> {
        let keys = self.list_sized(prefix).await?;
        let mut gone = PrefixDeletion::default();
        for (key, size) in &keys {
            self.delete(key).await?;
            gone.objects += 1;
            gone.bytes += size;
        }
        match self {
            Self::File(f) => f.remove_dir(prefix).await?,
            Self::S3(s) => gone.uploads_aborted = s.abort_uploads(prefix).await?,
        }
        Ok(gone)
    }
}

/// What [`ObjectStore::delete_prefix`] removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct PrefixDeletion {
    pub objects: u64,
    pub bytes: u64,
    /// Unfinished S3 multipart uploads aborted (their parts are not objects, but hold data).
    pub uploads_aborted: u64,
}

/// S3 multipart part size: memory held per upload stays at about this much.
const PART_SIZE: usize = 8 * 1024 * 1024;

/// A streaming upload: nothing is visible under the key until [`ObjectWriter::finish`]; an
/// aborted or dropped writer leaves no object (S3: the multipart upload is aborted; file: the
/// temporary file is removed).
pub struct ObjectWriter {
    /// `None` once finished or aborted.
    inner: Option<WriterInner>,
}

impl Drop for ObjectWriter {
    /// A writer dropped unfinished (its request abandoned: a timeout, a shutdown) leaves
    /// nothing: the temporary file is removed, the multipart upload aborted in the background.
    fn drop(&mut self) {
        match self.inner.take() {
            None => {}
            Some(WriterInner::File { tmp, file, .. }) => {
                drop(file);
                let _ = std::fs::remove_file(&tmp);
            }
            Some(WriterInner::S3 {
                store,
                key,
                upload_id,
                ..
            }) => {
                if let Ok(rt) = tokio::runtime::Handle::try_current() {
                    rt.spawn(async move { abort_multipart(&store, &key, &upload_id).await });
                }
            }
        }
    }
}

enum WriterInner {
    File {
        tmp: PathBuf,
        path: PathBuf,
        /// Buffered: each write of the file goes through a blocking thread, and one per
        /// 64 KiB segment made that hand-over, not the disk, the limit.
        file: tokio::io::BufWriter<tokio::fs::File>,
    },
    S3 {
        store: S3Store,
        key: String,
        upload_id: String,
        parts: Vec<aws_sdk_s3::types::CompletedPart>,
        buf: Vec<u8>,
    },
}

impl ObjectWriter {
    pub async fn write(&mut self, data: &[u8]) -> Result<(), StorageError> {
        match &mut self.inner {
            None => Ok(()),
            Some(WriterInner::File { tmp, file, .. }) => {
                file.write_all(data).await.map_err(|e| io_err(tmp, e))
            }
            Some(WriterInner::S3 { buf, .. }) => {
                buf.extend_from_slice(data);
                if buf.len() >= PART_SIZE {
                    self.flush_part().await?;
                }
                Ok(())
            }
        }
    }

    async fn flush_part(&mut self) -> Result<(), StorageError> {
        let Some(WriterInner::S3 {
            store,
            key,
            upload_id,
            parts,
            buf,
        }) = &mut self.inner
        else {
            return Ok(());
        };
        let number = i32::try_from(parts.len() + 1).unwrap_or(i32::MAX);
        let body = std::mem::replace(buf, Vec::with_capacity(PART_SIZE));
        let out = store
            .client
            .upload_part()
            .bucket(&store.bucket)
            .key(key.as_str())
            .upload_id(upload_id.as_str())
            .part_number(number)
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| s3_err("UploadPart", &store.bucket, e))?;
        parts.push(
            aws_sdk_s3::types::CompletedPart::builder()
                .part_number(number)
                .set_e_tag(out.e_tag)
                .build(),
        );
        Ok(())
    }

    /// Makes the object visible under its key.
    pub async fn finish(mut self) -> Result<(), StorageError> {
        // The last (or only) part; an empty object is one empty part.
        let flush = matches!(&self.inner, Some(WriterInner::S3 { parts, buf, .. }) if !buf.is_empty() || parts.is_empty());
        if flush {
            self.flush_part().await?;
        }
        match self.inner.take() {
            None => Ok(()),
            Some(WriterInner::File {
                tmp,
                path,
                mut file,
            }) => {
                let synced = match file.flush().await {
                    Ok(()) => file.get_ref().sync_all().await,
                    Err(e) => Err(e),
                }
                .map_err(|e| io_err(&tmp, e));
                drop(file);
                let done = match synced {
                    Ok(()) => tokio::fs::rename(&tmp, &path)
                        .await
                        .map_err(|e| io_err(&path, e)),
                    Err(e) => Err(e),
                };
                if done.is_err() {
                    let _ = tokio::fs::remove_file(&tmp).await;
                }
                done
            }
            Some(WriterInner::S3 {
                store,
                key,
                upload_id,
                parts,
                ..
            }) => {
                let done = store
                    .client
                    .complete_multipart_upload()
                    .bucket(&store.bucket)
                    .key(key.as_str())
                    .upload_id(upload_id.as_str())
                    .multipart_upload(
                        aws_sdk_s3::types::CompletedMultipartUpload::builder()
                            .set_parts(Some(parts))
                            .build(),
                    )
                    .send()
                    .await;
                if let Err(e) = done {
                    abort_multipart(&store, &key, &upload_id).await;
                    return Err(s3_err("CompleteMultipartUpload", &store.bucket, e));
                }
                Ok(())
            }
        }
    }

    /// Drops everything written so far.
    pub async fn abort(mut self) {
        match self.inner.take() {
            None => {}
            Some(WriterInner::File { tmp, file, .. }) => {
                drop(file);
                let _ = tokio::fs::remove_file(&tmp).await;
            }
            Some(WriterInner::S3 {
                store,
                key,
                upload_id,
                ..
            }) => abort_multipart(&store, &key, &upload_id).await,
        }
    }
}

async fn abort_multipart(store: &S3Store, key: &str, upload_id: &str) {
    if let Err(e) = store
        .client
        .abort_multipart_upload()
        .bucket(&store.bucket)
        .key(key)
        .upload_id(upload_id)
        .send()
        .await
    {
        tracing::warn!(error = %crate::error_chain(&e), "could not abort a multipart upload");
    }
}

/// A byte range of an object, read in chunks as they arrive.
pub struct ObjectReader {
    inner: ReaderInner,
    remaining: u64,
}

enum ReaderInner {
    File(tokio::io::Take<tokio::fs::File>, PathBuf),
    S3(ByteStream, String),
}

impl ObjectReader {
    /// The next chunk, or `None` at the end of the range. A range that ends early (the object
    /// is shorter than asked) is an error, never a short read.
    pub async fn next_chunk(&mut self) -> Result<Option<bytes::Bytes>, StorageError> {
        use tokio::io::AsyncReadExt;
        if self.remaining == 0 {
            return Ok(None);
        }
        let chunk = match &mut self.inner {
            ReaderInner::File(f, path) => {
                let mut buf = vec![0u8; 256 * 1024];
                let n = f.read(&mut buf).await.map_err(|e| io_err(path, e))?;
                buf.truncate(n);
                (n > 0).then(|| bytes::Bytes::from(buf))
            }
            ReaderInner::S3(body, bucket) => match body.next().await {
                Some(Ok(b)) => Some(b),
                Some(Err(e)) => return Err(s3_err("GetObject", bucket, e)),
                None => None,
            },
        };
        match chunk {
            None => Err(StorageError::ShortObject),
            Some(c) => {
                let len = c.len() as u64;
                if len > self.remaining {
                    let keep = usize::try_from(self.remaining).unwrap_or(usize::MAX);
                    self.remaining = 0;
                    return Ok(Some(c.slice(..keep)));
                }
                self.remaining -= len;
                Ok(Some(c))
            }
        }
    }
}

#[derive(Clone, Debug)]
pub struct FileStore {
    root: PathBuf,
}

fn io_err(path: &Path, source: std::io::Error) -> StorageError {
    StorageError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Bytes gathered before a write to a file object is handed to a blocking thread.
const FILE_WRITE_BUFFER: usize = 1 << 20;

impl FileStore {
    fn path(&self, key: &ObjectKey) -> PathBuf {
        self.root.join(key.as_str())
    }

    /// A temporary file next to `key`'s place (written, then renamed over it, so readers never
    /// see a partial object).
    async fn temp_for(&self, key: &ObjectKey) -> Result<ObjectWriter, StorageError> {
        let path = self.path(key);
        let dir = path.parent().unwrap_or(&self.root).to_path_buf();
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| io_err(&dir, e))?;
        let tmp = dir.join(format!(
            "{TEMP_PREFIX}{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        let file = tokio::fs::File::create(&tmp)
            .await
            .map_err(|e| io_err(&tmp, e))?;
        let file = tokio::io::BufWriter::with_capacity(FILE_WRITE_BUFFER, file);
        Ok(ObjectWriter {
            inner: Some(WriterInner::File { tmp, path, file }),
        })
    }

    async fn put(&self, key: &ObjectKey, bytes: &[u8]) -> Result<(), StorageError> {
        let mut w = self.temp_for(key).await?;
        w.write(bytes).await?;
        w.finish().await
    }

    async fn get(&self, key: &ObjectKey) -> Result<Option<Vec<u8>>, StorageError> {
        let path = self.path(key);
        match tokio::fs::read(&path).await {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(&path, e)),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<(ObjectKey, u64)>, StorageError> {
        let root = self.root.clone();
        let prefix = prefix.to_owned();
        tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            let start = root.join(prefix.trim_end_matches('/'));
            let mut stack = vec![start];
            while let Some(dir) = stack.pop() {
                let entries = match std::fs::read_dir(&dir) {
                    Ok(e) => e,
                    Err(e) if e.kind() == ErrorKind::NotFound => continue,
                    Err(e) => return Err(io_err(&dir, e)),
                };
                for entry in entries {
                    let entry = entry.map_err(|e| io_err(&dir, e))?;
                    let path = entry.path();
                    let ft = entry.file_type().map_err(|e| io_err(&path, e))?;
                    if ft.is_dir() {
                        stack.push(path);
                    } else if entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
                        // An unfinished upload: not an object.
                    } else if let Ok(rel) = path.strip_prefix(&root) {
                        let rel = rel.to_string_lossy().replace('\\', "/");
                        if let (true, Ok(k)) = (rel.starts_with(&prefix), ObjectKey::parse(&rel)) {
                            let size = entry.metadata().map_err(|e| io_err(&path, e))?.len();
                            out.push((k, size));
                        }
                    }
                }
            }
            Ok(out)
        })
        .await
        .map_err(|e| StorageError::Io {
            path: self.root.display().to_string(),
            source: std::io::Error::other(e),
        })?
    }

    /// Removes the directory of a prefix with whatever is left in it (temporary files).
    async fn remove_dir(&self, prefix: &str) -> Result<(), StorageError> {
        let key = ObjectKey::parse(prefix.trim_end_matches('/'))?;
        let dir = self.root.join(key.as_str());
        match tokio::fs::remove_dir_all(&dir).await {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&dir, e)),
        }
        // Parents left empty (`tenants/`) are removed too, up to the root.
        let mut parent = dir.parent().map(Path::to_path_buf);
        while let Some(d) = parent {
            if d == self.root
                || !d.starts_with(&self.root)
                || tokio::fs::remove_dir(&d).await.is_err()
            {
                break;
            }
            parent = d.parent().map(Path::to_path_buf);
        }
        Ok(())
    }

    async fn delete(&self, key: &ObjectKey) -> Result<(), StorageError> {
        let path = self.path(key);
        match tokio::fs::remove_file(&path).await {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&path, e)),
        }
        // Remove directories left empty, up to (not including) the root, so that a deleted
        // prefix leaves nothing behind. A non-empty directory stops the walk.
        let mut dir = path.parent().map(Path::to_path_buf);
        while let Some(d) = dir {
            if d == self.root || !d.starts_with(&self.root) {
                break;
            }
            if tokio::fs::remove_dir(&d).await.is_err() {
                break;
            }
            dir = d.parent().map(Path::to_path_buf);
        }
        Ok(())
    }
}

#[derive(Clone, Debug)]
pub struct S3Store {
    client: aws_sdk_s3::Client,
    bucket: String,
    /// Deployment-wide key prefix ending in `/`, or empty.
    prefix: String,
}

fn s3_err(
    operation: &'static str,
    bucket: &str,
    e: impl std::error::Error + 'static,
) -> StorageError {
    let message = crate::error_chain(&e);
    StorageError::S3 {
        operation,
        bucket: bucket.to_owned(),
        message,
    }
}

impl S3Store {
    fn full(&self, key: &ObjectKey) -> String {
        format!("{}{}", self.prefix, key.as_str())
    }

    async fn put(&self, key: &ObjectKey, bytes: Vec<u8>) -> Result<(), StorageError> {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(self.full(key))
            .body(ByteStream::from(bytes))
            .send()
            .await
            .map_err(|e| s3_err("PutObject", &self.bucket, e))?;
        Ok(())
    }

    async fn get(&self, key: &ObjectKey) -> Result<Option<Vec<u8>>, StorageError> {
        match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(self.full(key))
            .send()
            .await
        {
            Ok(out) => {
                let data = out
                    .body
                    .collect()
                    .await
                    .map_err(|e| s3_err("GetObject", &self.bucket, e))?;
                Ok(Some(data.into_bytes().to_vec()))
            }
            Err(e) if e.as_service_error().is_some_and(|e| e.is_no_such_key()) => Ok(None),
            Err(e) => Err(s3_err("GetObject", &self.bucket, e)),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<(ObjectKey, u64)>, StorageError> {
        let mut out = Vec::new();
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(format!("{}{prefix}", self.prefix))
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| s3_err("ListObjectsV2", &self.bucket, e))?;
            for obj in page.contents() {
                let key = obj.key().and_then(|k| k.strip_prefix(&self.prefix));
                if let Some(Ok(k)) = key.map(ObjectKey::parse) {
                    out.push((k, u64::try_from(obj.size().unwrap_or(0)).unwrap_or(0)));
                }
            }
        }
        Ok(out)
    }

    async fn delete(&self, key: &ObjectKey) -> Result<(), StorageError> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(self.full(key))
            .send()
            .await
            .map_err(|e| s3_err("DeleteObject", &self.bucket, e))?;
        Ok(())
    }

    /// Aborts every unfinished multipart upload under `prefix`.
    async fn abort_uploads(&self, prefix: &str) -> Result<u64, StorageError> {
        let mut aborted = 0;
        loop {
            let page = self
                .client
                .list_multipart_uploads()
                .bucket(&self.bucket)
                .prefix(format!("{}{prefix}", self.prefix))
                .send()
                .await
                .map_err(|e| s3_err("ListMultipartUploads", &self.bucket, e))?;
            let uploads = page.uploads();
            if uploads.is_empty() {
                return Ok(aborted);
            }
            for u in uploads {
                let (Some(key), Some(id)) = (u.key(), u.upload_id()) else {
                    continue;
                };
                self.client
                    .abort_multipart_upload()
                    .bucket(&self.bucket)
                    .key(key)
                    .upload_id(id)
                    .send()
                    .await
                    .map_err(|e| s3_err("AbortMultipartUpload", &self.bucket, e))?;
                aborted += 1;
            }
            if !page.is_truncated().unwrap_or(false) {
                return Ok(aborted);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_keys_refuse_traversal() {
        for bad in ["", "/abs", "a//b", "a/../b", "..", "a/./b", "a b", "a/"] {
            assert!(ObjectKey::parse(bad).is_err(), "{bad:?} should be refused");
        }
        let t = TenantId::random();
        let k = ObjectKey::tenant_object(t, TENANT_MARKER).unwrap();
        assert_eq!(k.as_str(), format!("tenants/{t}/.portico-tenant"));
    }

    #[tokio::test]
    async fn file_store_roundtrip_and_cleanup() {
        let dir = tempfile::tempdir().unwrap();
        let store = ObjectStore::File(FileStore {
            root: dir.path().to_path_buf(),
        });
        let t = TenantId::random();
        let k = ObjectKey::tenant_object(t, "a/b/c.bin").unwrap();
        store.put(&k, b"hello".to_vec()).await.unwrap();
        assert_eq!(store.get(&k).await.unwrap().as_deref(), Some(&b"hello"[..]));
        assert_eq!(
            store.list(&tenant_prefix(t)).await.unwrap(),
            vec![k.clone()]
        );
        store.delete(&k).await.unwrap();
        store.delete(&k).await.unwrap();
        assert_eq!(store.get(&k).await.unwrap(), None);
        // Nothing is left behind: not even empty directories.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn streamed_writes_appear_only_when_finished_and_leave_nothing_when_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let store = ObjectStore::File(FileStore {
            root: dir.path().to_path_buf(),
        });
        let t = TenantId::random();
        let k = ObjectKey::tenant_object(t, "documents/a").unwrap();
        let mut w = store.writer(&k).await.unwrap();
        w.write(b"hello ").await.unwrap();
        w.write(b"world").await.unwrap();
        assert_eq!(
            store.get(&k).await.unwrap(),
            None,
            "not visible before finish"
        );
        w.finish().await.unwrap();
        assert_eq!(
            store.get(&k).await.unwrap().as_deref(),
            Some(&b"hello world"[..])
        );
        // Abandoned (its request dropped): the temporary file goes with it.
        let k2 = ObjectKey::tenant_object(t, "documents/b").unwrap();
        let mut w = store.writer(&k2).await.unwrap();
        w.write(b"partial").await.unwrap();
        drop(w);
        let left: Vec<_> = std::fs::read_dir(dir.path().join(format!("tenants/{t}/documents")))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left, ["a"]);
    }

    #[tokio::test]
    async fn unfinished_uploads_are_not_objects_and_go_with_their_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let store = ObjectStore::File(FileStore {
            root: dir.path().to_path_buf(),
        });
        let t = TenantId::random();
        let marker = ObjectKey::tenant_object(t, TENANT_MARKER).unwrap();
        store.put(&marker, b"{}".to_vec()).await.unwrap();
        // What a process killed between writing and renaming leaves behind.
        let tenant_dir = dir.path().join(format!("tenants/{t}"));
        std::fs::write(tenant_dir.join(".tmp-123-abc"), b"partial").unwrap();
        assert_eq!(store.list(&tenant_prefix(t)).await.unwrap(), vec![marker]);
        assert_eq!(
            store
                .delete_prefix(&tenant_prefix(t))
                .await
                .unwrap()
                .objects,
            1
        );
        assert!(!tenant_dir.exists());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
