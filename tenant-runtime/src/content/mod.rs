//! Document content: streamed in and out of object storage in encrypted segments
//! ([`cipher`]), with per-tenant data keys ([`datakeys`]) and malware scanning on the way in
//! ([`scan`]). Memory per transfer stays bounded (a segment, plus one S3 part on upload)
//! whatever the size of the file.

pub mod cipher;
pub mod datakeys;
pub mod scan;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use portico_core::storage::{ObjectKey, ObjectReader, ObjectStore, ObjectWriter, StorageError};

use cipher::{CipherError, Layout, ObjectCipher, SEGMENT, TAG};
use scan::{ScanError, ScanSession, Verdict};

#[derive(Debug, thiserror::Error)]
pub enum ContentError {
    #[error("the upload is larger than the limit of {0} bytes")]
    TooLarge(u64),
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    #[error("{0}")]
    Cipher(#[from] CipherError),
    #[error("{0}")]
    Scan(#[from] ScanError),
    #[error("the malware scanner found '{0}'")]
    Infected(String),
    #[error("the upload was interrupted: {0}")]
    Body(String),
    #[error("the stored object is missing")]
    Missing,
    /// The storage writer task ended early; the error it ended with is the one reported.
    #[error("the storage writer stopped")]
    WriterStopped,
}

/// What was stored.
#[derive(Debug, Clone)]
pub struct Stored {
    pub size: u64,
    pub sha256: Vec<u8>,
    /// Whether a scanner looked at it (false only when scanning is turned off).
    pub scanned: bool,
}

/// Streams `body` into `key`: encrypted segment by segment with `cipher` (or stored as is,
/// for the benchmark's plaintext baseline), fed to `scan` on the way. The object becomes
/// visible only once the scanner has found it clean; otherwise nothing is left behind.
pub async fn store<S, E>(
    store: &ObjectStore,
    key: &ObjectKey,
    cipher: Option<ObjectCipher>,
    scan: Option<ScanSession>,
    body: S,
    max: u64,
) -> Result<Stored, ContentError>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let (stored, writer) = store_unfinished(store, key, cipher, scan, body, max).await?;
    writer.finish().await?;
    Ok(stored)
}

/// [`store`] up to the last step: the content written and found clean, and the writer whose
/// `finish` (sync and rename, or completing the multipart upload) makes the object visible.
/// For a caller that stores many objects and may finish one while writing the next (an
/// import); a writer dropped unfinished leaves nothing behind.
pub async fn store_unfinished<S, E>(
    store: &ObjectStore,
    key: &ObjectKey,
    cipher: Option<ObjectCipher>,
    mut scan: Option<ScanSession>,
    body: S,
    max: u64,
) -> Result<(Stored, ObjectWriter), ContentError>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let writer = store.writer(key).await?;
    // Encryption and storage writes run in a task of their own, fed plaintext segments
    // through a bounded queue: hashing and scanning (here) and sealing and sending (there) use
    // both cores, and a part travelling to S3 overlaps with the next one being prepared.
    // Memory stays bounded by the queue and one part.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(Vec<u8>, u64, bool)>(QUEUE_SEGMENTS);
    let write_task = tokio::spawn(async move {
        let mut writer = writer;
        while let Some((mut segment, index, last)) = rx.recv().await {
            if let Some(c) = &cipher
                && c.seal(index, last, &mut segment).is_err()
            {
                return (writer, Err(None));
            }
            if let Err(e) = writer.write(&segment).await {
                return (writer, Err(Some(e)));
            }
        }
        (writer, Ok(()))
    });
    let pumped = pump(&tx, scan.as_mut(), body, max).await;
    drop(tx);
    let (writer, written) = write_task
        .await
        .map_err(|e| ContentError::Body(format!("storage writer stopped: {e}")))?;
    let pumped = match (pumped, written) {
        (Ok(stored), Ok(())) => Ok(stored),
        // A failed write closes the queue; its error is the one to report.
        (_, Err(Some(e))) => Err(ContentError::Storage(e)),
        (_, Err(None)) => Err(ContentError::Cipher(CipherError::Encrypt)),
        (Err(e), Ok(())) => Err(e),
    };
    let verdict = match (&pumped, scan) {
        (Ok(_), Some(s)) => Some(s.finish().await),
        _ => None,
    };
    let outcome = match (pumped, verdict) {
        (Err(e), _) => Err(e),
        (Ok(_), Some(Err(e))) => Err(ContentError::Scan(e)),
        (Ok(_), Some(Ok(Verdict::Infected(name)))) => Err(ContentError::Infected(name)),
        (Ok(mut stored), verdict) => {
            stored.scanned = verdict.is_some();
            Ok(stored)
        }
    };
    match outcome {
        Ok(stored) => Ok((stored, writer)),
        Err(e) => {
            writer.abort().await;
            Err(e)
        }
    }
}

/// Segments queued between the pipeline stages (each at most 64 KiB and a tag).
const QUEUE_SEGMENTS: usize = 64;

async fn pump<S, E>(
    writer: &tokio::sync::mpsc::Sender<(Vec<u8>, u64, bool)>,
    mut scan: Option<&mut ScanSession>,
    mut body: S,
    max: u64,
) -> Result<Stored, ContentError>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let seg = SEGMENT as usize;
    let mut hash = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    let mut size = 0u64;
    let mut index = 0u64;
    // A full segment is only sealed once more data arrives: the last one is sealed as last.
    let mut pending: Vec<u8> = Vec::with_capacity(seg * 2);
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| ContentError::Body(e.to_string()))?;
        size += chunk.len() as u64;
        if size > max {
            return Err(ContentError::TooLarge(max));
        }
        hash.update(&chunk);
        if let Some(s) = scan.as_deref_mut() {
            s.feed(&chunk).await?;
        }
        pending.extend_from_slice(&chunk);
        while pending.len() > seg {
            let rest = pending.split_off(seg);
            let segment = std::mem::replace(&mut pending, rest);
            writer
                .send((segment, index, false))
                .await
                .map_err(|_| ContentError::WriterStopped)?;
            index += 1;
        }
    }
    writer
        .send((pending, index, true))
        .await
        .map_err(|_| ContentError::WriterStopped)?;
    Ok(Stored {
        size,
        sha256: hash.finish().as_ref().to_vec(),
        scanned: false,
    })
}

/// Chunks this many ahead of the consumer.
const READ_AHEAD_CHUNKS: usize = 16;

fn read_ahead(
    mut reader: ObjectReader,
) -> tokio::sync::mpsc::Receiver<Result<Bytes, StorageError>> {
    let (tx, rx) = tokio::sync::mpsc::channel(READ_AHEAD_CHUNKS);
    tokio::spawn(async move {
        loop {
            match reader.next_chunk().await {
                Ok(Some(c)) => {
                    // The consumer went away (the client disconnected): stop reading.
                    if tx.send(Ok(c)).await.is_err() {
                        return;
                    }
                }
                Ok(None) => return,
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            }
        }
    });
    rx
}

/// Reads plaintext `start..=end` of an object, decrypting only the segments it touches.
pub struct Segments {
    /// Chunks read ahead by a task of their own (so fetching overlaps with decrypting).
    reader: Option<tokio::sync::mpsc::Receiver<Result<Bytes, StorageError>>>,
    cipher: Option<ObjectCipher>,
    layout: Layout,
    next: u64,
    last: u64,
    start: u64,
    end: u64,
    buf: bytes::BytesMut,
    failed: bool,
}

impl Segments {
    /// Opens the range; `end` is inclusive and must be below the size (or the object empty).
    pub async fn open(
        store: &ObjectStore,
        key: &ObjectKey,
        cipher: Option<ObjectCipher>,
        size: u64,
        start: u64,
        end: u64,
    ) -> Result<Self, ContentError> {
        let layout = Layout {
            size,
            overhead: if cipher.is_some() { TAG } else { 0 },
        };
        let first = start / SEGMENT;
        let last = if size == 0 { 0 } else { end / SEGMENT };
        let from = layout.stored_offset(first);
        let to = layout.stored_offset(last) + layout.stored_len(last);
        // An empty plaintext object (the baseline only) stores nothing: nothing to read.
        let reader = if to > from {
            Some(
                store
                    .read_range(key, from, to - from)
                    .await?
                    .ok_or(ContentError::Missing)?,
            )
        } else {
            None
        };
        let next = if reader.is_some() { first } else { last + 1 };
        let reader = reader.map(read_ahead);
        Ok(Self {
            reader,
            cipher,
            layout,
            next,
            last,
            start,
            end,
            buf: bytes::BytesMut::new(),
            failed: false,
        })
    }

    /// The next piece of plaintext, or `None` at the end of the range.
    pub async fn next_piece(&mut self) -> Result<Option<Bytes>, ContentError> {
        if self.failed || self.next > self.last {
            return Ok(None);
        }
        let i = self.next;
        let need = usize::try_from(self.layout.stored_len(i)).unwrap_or(usize::MAX);
        while self.buf.len() < need {
            let Some(reader) = self.reader.as_mut() else {
                return Ok(None);
            };
            match reader.recv().await.transpose() {
                Ok(Some(c)) => self.buf.extend_from_slice(&c),
                Ok(None) | Err(StorageError::ShortObject) => {
                    self.failed = true;
                    return Err(CipherError::Authentication.into());
                }
                Err(e) => {
                    self.failed = true;
                    return Err(e.into());
                }
            }
        }
        // Splitting off the front of the buffer moves no bytes.
        let mut segment = self.buf.split_to(need);
        if let Some(c) = &self.cipher {
            let last = i + 1 == self.layout.segments();
            match c.open_in_place(i, last, &mut segment) {
                Ok(len) => segment.truncate(len),
                Err(e) => {
                    self.failed = true;
                    return Err(e.into());
                }
            }
        }
        self.next += 1;
        let seg_start = i * SEGMENT;
        let from = usize::try_from(self.start.saturating_sub(seg_start)).unwrap_or(0);
        let to = usize::try_from((self.end + 1).saturating_sub(seg_start))
            .unwrap_or(usize::MAX)
            .min(segment.len());
        Ok(Some(segment.freeze().slice(from.min(to)..to)))
    }

    /// The rest of the range as a body stream; an integrity failure ends it with an error
    /// (the client sees a broken transfer, never wrong bytes).
    pub fn into_stream(self) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send {
        futures_util::stream::unfold(self, |mut s| async move {
            match s.next_piece().await {
                Ok(Some(b)) => Some((Ok(b), s)),
                Ok(None) => None,
                Err(e) => {
                    tracing::error!(error = %e, "document download stopped");
                    s.failed = true;
                    Some((Err(std::io::Error::other(e.to_string())), s))
                }
            }
        })
    }
}

/// What the document endpoints share: storage, data keys, the scanner, link secrets.
pub struct ContentState {
    pub store: portico_core::storage::ObjectStore,
    pub keys: datakeys::DataKeys,
    pub scanner: scan::Scanner,
    pub max_upload: u64,
    pub keyring: portico_core::keys::Keyring,
    /// Each tenant's link-signing key, decrypted once per cache lifetime.
    pub link_secrets: moka::future::Cache<portico_core::TenantId, std::sync::Arc<[u8; 32]>>,
}

impl ContentState {
    pub fn new(
        rt: &portico_core::settings::RuntimeSettings,
        keyring: portico_core::keys::Keyring,
        store: portico_core::storage::ObjectStore,
    ) -> Self {
        Self {
            store,
            keys: datakeys::DataKeys::new(keyring.clone(), rt.data_key_ttl, rt.data_key_max_uses),
            scanner: scan::Scanner::new(rt.clamd.clone()),
            max_upload: rt.max_upload_bytes,
            keyring,
            link_secrets: moka::future::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(rt.data_key_ttl)
                .build(),
        }
    }
}
