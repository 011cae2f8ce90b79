//! Object storage: one streaming [`Storage`] trait and its backends (local directory,
//! S3, GCS), picked from the storage URL, plus an in-memory backend and a
//! fault-injecting wrapper for tests. Keys are relative to the URL's prefix.
//! Errors say whether an object is missing, already there, or whether the failure
//! is worth retrying; the retry policy lives in [`retry`], the watchdog that
//! ends requests that stop making progress in [`watch`], and [`resume`]
//! carries a download that broke mid-body on from where it stopped.

pub mod azure;
pub mod faulty;
pub mod file;
pub mod gcs;
pub mod memory;
pub mod ranged;
pub mod resume;
pub mod retry;
pub mod s3;
pub mod watch;
pub mod windowed;

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::Stream;

pub use retry::RetryPolicy;

/// A stream of bytes, as bodies travel in and out of storage.
pub type ByteStream = Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>;

/// A validated object key relative to the storage prefix: `/`-separated, no empty,
/// `.` or `..` segments, so that no key can address anything outside the prefix.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey(String);

impl ObjectKey {
    pub fn new(key: impl Into<String>) -> Result<Self, StorageError> {
        let key = key.into();
        let ok = !key.is_empty()
            && key
                .split('/')
                .all(|s| !s.is_empty() && s != "." && s != ".." && !s.contains('\0'));
        if ok {
            Ok(ObjectKey(key))
        } else {
            Err(StorageError::InvalidKey { key })
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a listing or `head` tells about an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    pub key: ObjectKey,
    pub size: u64,
    /// When the object was last written, where the listing says (retention
    /// tells an abandoned backup from one in progress by it).
    pub modified: Option<std::time::SystemTime>,
}

/// The body of a put: whole bytes in memory (length known, cheap to resend on retry)
/// or a stream of unknown length (sent in parts, each of which can be resent).
pub enum PutBody {
    Bytes(Bytes),
    Stream(ByteStream),
}

/// Whether a put may replace an existing object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutMode {
    Overwrite,
    /// Fail with [`StorageError::AlreadyExists`] if the key exists, atomically where
    /// the backend can do so.
    CreateIfAbsent,
}

/// How a storage operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("object {key} not found in {location}")]
    NotFound { key: String, location: String },
    #[error("object {key} already exists in {location}")]
    AlreadyExists { key: String, location: String },
    #[error("{key:?} is not a valid object key")]
    InvalidKey { key: String },
    /// The storage cannot be used at all (no credentials, a bad endpoint).
    #[error("cannot use {location}: {message}")]
    Setup { location: String, message: String },
    /// The storage itself (bucket, directory) does not exist. Never "not
    /// found": a mistyped URL must not look like the end of the archive.
    #[error("{location} does not exist: {message}")]
    NoStorage { location: String, message: String },
    /// Worth retrying (connection refused, timeout, 5xx, throttling); after the
    /// retry deadline it is reported as is.
    #[error("{op} {key} in {location} failed: {message}")]
    Transient {
        op: &'static str,
        key: String,
        location: String,
        message: String,
    },
    /// Retrying will not help (bad credentials, missing bucket, local I/O error).
    #[error("{op} {key} in {location} failed: {message}")]
    Permanent {
        op: &'static str,
        key: String,
        location: String,
        message: String,
    },
}

impl StorageError {
    /// The storage error an `io::Error` from a body stream carries, if it
    /// carries one (else the error back).
    pub fn from_io(e: std::io::Error) -> Result<StorageError, std::io::Error> {
        if e.get_ref().is_some_and(|i| i.is::<StorageError>()) {
            match e.into_inner().map(|b| b.downcast::<StorageError>()) {
                Some(Ok(s)) => Ok(*s),
                Some(Err(other)) => Err(std::io::Error::other(other)),
                None => Err(std::io::Error::other("unknown storage error")),
            }
        } else {
            Err(e)
        }
    }

    /// Whether an `io::Error` carries a storage error (a body that broke).
    pub fn is_in(e: &std::io::Error) -> bool {
        e.get_ref().is_some_and(|i| i.is::<StorageError>())
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, StorageError::NotFound { .. })
    }

    pub fn is_transient(&self) -> bool {
        matches!(self, StorageError::Transient { .. })
    }
}

/// Streaming object storage. Implementations retry single requests through
/// [`RetryPolicy`]; callers never retry.
#[async_trait]
pub trait Storage: Send + Sync + fmt::Debug {
    /// The storage URL, for messages (never contains credentials).
    fn location(&self) -> &str;

    /// How many bytes a put of a streamed body of about `size` bytes holds in
    /// memory at once (a whole object or a part buffered for upload), so that
    /// callers running several puts can keep within a memory budget.
    fn put_buffering(&self, size: u64) -> u64;

    /// How many ranged reads of one large object are worth having in flight
    /// ([`windowed`]): 1 where one stream is as fast (a local disk).
    fn reads_ahead(&self) -> usize {
        1
    }

    /// Stores `body` under `key`; the object is visible only once complete.
    async fn put(&self, key: &ObjectKey, body: PutBody, mode: PutMode) -> Result<(), StorageError>;

    /// Streams the object's bytes; `NotFound` when the object is missing. Some
    /// servers say the same for a missing bucket: callers that must tell the two
    /// apart list, which fails for a missing bucket. A body that breaks is
    /// resumed where it broke (see [`resume`]); one that cannot be ends in an
    /// `io::Error` carrying the [`StorageError`].
    async fn get(&self, key: &ObjectKey) -> Result<ByteStream, StorageError> {
        self.get_range(key, 0, None).await
    }

    /// The object's bytes from `start` on, up to `end` (exclusive) when given:
    /// a ranged read. `end` must lie after `start`, within the object.
    async fn get_range(
        &self,
        key: &ObjectKey,
        start: u64,
        end: Option<u64>,
    ) -> Result<ByteStream, StorageError>;

    /// The object's metadata, or `None` when it does not exist.
    async fn head(&self, key: &ObjectKey) -> Result<Option<ObjectMeta>, StorageError>;

    /// Objects whose key starts with `prefix` and sorts after `start_after`, in key
    /// order, at most `limit` of them; pagination is the backend's business.
    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: Option<usize>,
    ) -> Result<Vec<ObjectMeta>, StorageError>;

    /// Deletes the objects; keys that do not exist are not an error. The
    /// order in which one call deletes them is the backend's.
    async fn delete_many(&self, keys: &[ObjectKey]) -> Result<(), StorageError>;

    /// Removes what writers that died left behind and listings do not show
    /// (temporary files, unfinished multipart uploads), when older than
    /// `older_than` and certainly not a live writer's. Returns how many.
    async fn remove_leftovers(&self, older_than: Duration) -> Result<usize, StorageError> {
        let _ = older_than;
        Ok(0)
    }
}

/// Settings the backends need besides the URL.
#[derive(Debug, Clone)]
pub struct StorageOptions {
    pub retry: RetryPolicy,
    /// A request that makes no progress (sends or receives nothing) for this
    /// long is abandoned, and retried if the deadline allows.
    pub idle_timeout: Duration,
    pub s3_endpoint: Option<String>,
    pub s3_region: Option<String>,
    pub s3_force_path_style: bool,
    /// `false`: the server does not implement `If-None-Match`, so creates
    /// ask first instead of trying the header and meeting a 501.
    pub s3_conditional_create: bool,
    /// When the S3 client computes and checks CRC checksums; `None` picks
    /// by endpoint (see [`S3Checksum::for_endpoint`]).
    pub s3_checksum: Option<S3Checksum>,
    pub gcs_endpoint: Option<String>,
    /// The Blob endpoint for Azure (Azurite, private endpoints); by default
    /// `https://<account>.blob.core.windows.net`.
    pub azure_endpoint: Option<String>,
    /// Azure credentials given as secrets; the others (workload and
    /// managed identity) come from the environment as Azure names them.
    pub azure_secrets: AzureSecrets,
    /// Bodies larger than this go up in parts (S3 multipart, GCS resumable chunks).
    pub part_size: usize,
    /// Ranged reads of one large object in flight ([`windowed`]); 1: one
    /// stream, for servers that serve a range by reading the whole object.
    pub parallel_reads: usize,
    /// Parts of one object uploaded at once ([`upload_parts`]; S3 and
    /// Azure: a GCS resumable upload takes its chunks in order).
    pub parallel_writes: usize,
}

impl Default for StorageOptions {
    fn default() -> Self {
        StorageOptions {
            retry: RetryPolicy::default(),
            idle_timeout: Duration::from_secs(30),
            s3_endpoint: None,
            s3_region: None,
            s3_force_path_style: false,
            s3_conditional_create: true,
            s3_checksum: None,
            gcs_endpoint: None,
            azure_endpoint: None,
            azure_secrets: AzureSecrets::default(),
            part_size: 32 << 20,
            parallel_reads: windowed::READS_AHEAD,
            parallel_writes: PARALLEL_WRITES,
        }
    }
}

/// Azure credentials that are secrets, from the variables Azure's own
/// tools read: a connection string, an account key, or a SAS token, in
/// that order. Never shown in `Debug`.
#[derive(Clone, Default)]
pub struct AzureSecrets {
    pub connection_string: Option<String>,
    pub key: Option<String>,
    pub sas: Option<String>,
}

impl AzureSecrets {
    /// `AZURE_STORAGE_CONNECTION_STRING`, `AZURE_STORAGE_KEY` (or
    /// `AZURE_STORAGE_ACCOUNT_KEY`), `AZURE_STORAGE_SAS_TOKEN`.
    pub fn from_env() -> Self {
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        AzureSecrets {
            connection_string: env("AZURE_STORAGE_CONNECTION_STRING"),
            key: env("AZURE_STORAGE_KEY").or_else(|| env("AZURE_STORAGE_ACCOUNT_KEY")),
            sas: env("AZURE_STORAGE_SAS_TOKEN"),
        }
    }
}

impl fmt::Debug for AzureSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AzureSecrets")
            .field("connection_string", &self.connection_string.is_some())
            .field("key", &self.key.is_some())
            .field("sas", &self.sas.is_some())
            .finish()
    }
}

/// When the S3 client adds CRC checksums to uploads and checks them on
/// downloads (`s3_checksum`). The AWS SDK does both on every request by
/// default; several S3-compatible servers answer such requests with 501 or
/// a signature error, so a custom endpoint gets them only where the API
/// requires them. cairn's own checksums (manifest BLAKE3, codec frame
/// checksums) cover the data either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum S3Checksum {
    /// On every request that supports them (the SDK's default).
    WhenSupported,
    /// Only where the operation requires one.
    WhenRequired,
}

impl S3Checksum {
    /// AWS itself (no endpoint) gets checksums on everything; S3-compatible
    /// servers only where required.
    pub fn for_endpoint(endpoint: Option<&str>) -> S3Checksum {
        match endpoint {
            None => S3Checksum::WhenSupported,
            Some(_) => S3Checksum::WhenRequired,
        }
    }
}

impl std::str::FromStr for S3Checksum {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "when_supported" => Ok(S3Checksum::WhenSupported),
            "when_required" => Ok(S3Checksum::WhenRequired),
            other => Err(format!(
                "{other:?} is not an S3 checksum mode (when_supported or when_required)"
            )),
        }
    }
}

/// The first line of an SDK message, at most 200 characters: some embed
/// whole debug dumps.
pub(crate) fn first_line(s: &str) -> String {
    let line = s.lines().next().unwrap_or_default();
    match line.char_indices().nth(200) {
        Some((i, _)) => format!("{}…", &line[..i]),
        None => line.to_string(),
    }
}

/// A credential provider's error chain as one readable line: request URLs
/// (long, and they repeat what the message names) and the SDK's debug dumps
/// of service errors (`unhandled error (X): Error { code: "X", message:
/// "…" }`, reduced to `X: …`) left out.
pub(crate) fn concise(e: &dyn std::error::Error) -> String {
    let mut s = crate::error_chain(e);
    while let Some(at) = s.find(" for url (") {
        let end = s[at..].find(')').map_or(s.len(), |i| at + i + 1);
        s.replace_range(at..end, "");
    }
    if let Some(at) = s.find("unhandled error (") {
        let quoted = |field: &str| {
            let from = s[at..].find(&format!("{field}: \""))? + at + field.len() + 3;
            let len = s[from..].find('"')?;
            Some(s[from..from + len].to_string())
        };
        if let (Some(code), Some(message)) = (quoted("code"), quoted("message")) {
            s = format!("{}{code}: {message}", &s[..at]);
        }
    }
    first_line(&s)
}

/// A parsed storage URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageUrl {
    File(std::path::PathBuf),
    S3 {
        bucket: String,
        prefix: String,
    },
    Gcs {
        bucket: String,
        prefix: String,
    },
    /// `az://<account>/<container>/<prefix>`.
    Azure {
        account: String,
        container: String,
        prefix: String,
    },
}

/// The URL in its normal form (`file:///…`, `s3://bucket/prefix/`): the
/// location the backends name in errors and metrics label their series with.
impl std::fmt::Display for StorageUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StorageUrl::File(root) => write!(f, "file://{}", root.display()),
            StorageUrl::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
            StorageUrl::Gcs { bucket, prefix } => write!(f, "gs://{bucket}/{prefix}"),
            StorageUrl::Azure {
                account,
                container,
                prefix,
            } => write!(f, "az://{account}/{container}/{prefix}"),
        }
    }
}

impl StorageUrl {
    pub fn parse(s: &str) -> Result<Self, String> {
        let url = url::Url::parse(s).map_err(|e| format!("{s:?} is not a URL: {e}"))?;
        let prefix = || {
            let p = url.path().trim_matches('/');
            if p.is_empty() {
                String::new()
            } else {
                format!("{p}/")
            }
        };
        let bucket = || match url.host_str() {
            Some(b) if !b.is_empty() => Ok(b.to_string()),
            _ => Err(format!(
                "{s:?} names no bucket (expected {}://bucket/prefix)",
                url.scheme()
            )),
        };
        match url.scheme() {
            "file" => {
                if url.host_str().is_some_and(|h| !h.is_empty()) {
                    return Err(format!(
                        "{s:?}: a file URL needs an absolute path (file:///path)"
                    ));
                }
                let path = url.to_file_path().map_err(|_| {
                    format!("{s:?}: a file URL needs an absolute path (file:///path)")
                })?;
                Ok(StorageUrl::File(path))
            }
            "s3" => Ok(StorageUrl::S3 {
                bucket: bucket()?,
                prefix: prefix(),
            }),
            "gs" => Ok(StorageUrl::Gcs {
                bucket: bucket()?,
                prefix: prefix(),
            }),
            "az" => {
                let account = bucket()?;
                let path = url.path().trim_matches('/');
                let (container, rest) = path.split_once('/').unwrap_or((path, ""));
                if container.is_empty() {
                    return Err(format!(
                        "{s:?} names no container (expected az://account/container/prefix)"
                    ));
                }
                let rest = rest.trim_matches('/');
                Ok(StorageUrl::Azure {
                    account,
                    container: container.to_string(),
                    prefix: if rest.is_empty() {
                        String::new()
                    } else {
                        format!("{rest}/")
                    },
                })
            }
            other => Err(format!(
                "{s:?}: unsupported storage scheme {other:?} (use file://, s3://, gs:// or az://)"
            )),
        }
    }
}

/// Opens the backend that the URL names, with downloads that resume.
pub async fn open(
    url: &StorageUrl,
    opts: &StorageOptions,
) -> Result<Arc<dyn Storage>, StorageError> {
    let backend: Arc<dyn Storage> = match url {
        StorageUrl::File(root) => Arc::new(file::FileStorage::new(root.clone(), url.to_string())),
        StorageUrl::S3 { bucket, prefix } => {
            Arc::new(s3::S3Storage::connect(bucket, prefix, url.to_string(), opts).await?)
        }
        StorageUrl::Gcs { bucket, prefix } => {
            Arc::new(gcs::GcsStorage::connect(bucket, prefix, url.to_string(), opts).await?)
        }
        StorageUrl::Azure {
            account,
            container,
            prefix,
        } => Arc::new(
            azure::AzureStorage::connect(account, container, prefix, url.to_string(), opts).await?,
        ),
    };
    Ok(Arc::new(resume::Resuming::new(backend, opts)))
}

/// Create-if-absent without the server's help: `AlreadyExists` when `key`
/// exists (a HEAD; it cannot stop a writer racing for the same key).
pub(crate) async fn refuse_existing(storage: &dyn Storage, key: &str) -> Result<(), StorageError> {
    match storage.head(&ObjectKey::new(key)?).await? {
        Some(_) => Err(StorageError::AlreadyExists {
            key: key.to_string(),
            location: storage.location().to_string(),
        }),
        None => Ok(()),
    }
}

/// Reads a whole object into memory; for small objects only.
pub async fn get_bytes(storage: &dyn Storage, key: &ObjectKey) -> Result<Bytes, StorageError> {
    use futures::TryStreamExt;
    let mut stream = storage.get(key).await?;
    let mut buf = bytes::BytesMut::new();
    while let Some(chunk) = stream.try_next().await.map_err(|e| {
        StorageError::from_io(e).unwrap_or_else(|e| StorageError::Transient {
            op: "read",
            key: key.to_string(),
            location: storage.location().to_string(),
            message: e.to_string(),
        })
    })? {
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// How a put's body goes up: whole in one request, or (larger than a part)
/// in parts: the first, and a chunker for the rest.
pub(crate) enum Upload {
    Single(Bytes),
    Parts(Bytes, Chunker),
}

impl Upload {
    /// Reads as much of `body` as decides which.
    pub(crate) async fn of(
        body: PutBody,
        part_size: usize,
        key: &str,
        location: &str,
    ) -> Result<Upload, StorageError> {
        let stream: ByteStream = match body {
            PutBody::Bytes(b) if b.len() <= part_size => return Ok(Upload::Single(b)),
            PutBody::Bytes(b) => Box::pin(futures::stream::iter([Ok(b)])),
            PutBody::Stream(s) => s,
        };
        let mut chunks = Chunker::new(stream, part_size, key, location);
        let first = chunks.next_chunk().await?.unwrap_or_default();
        Ok(if first.len() < part_size {
            Upload::Single(first)
        } else {
            Upload::Parts(first, chunks)
        })
    }

    /// What a put of about `size` bytes holds in memory: a single request
    /// the whole body; parts, those in flight and the next filling.
    pub(crate) fn buffering(part_size: usize, in_flight: usize, size: u64) -> u64 {
        let part = part_size as u64;
        if size <= part {
            size
        } else {
            (in_flight.max(1) as u64 + 1) * part
        }
    }
}

/// Splits a stream into chunks of exactly `size` bytes (the last may be shorter),
/// which is what multipart and resumable uploads need. Each chunk is a buffer
/// of its own, which the uploader hands back with [`Chunker::recycle`] once
/// its request is done: a new buffer per part is megabytes for the kernel to
/// map and fault in for every part sent.
pub(crate) struct Chunker {
    stream: ByteStream,
    size: usize,
    key: String,
    location: String,
    /// What the stream gave beyond the last chunk's end.
    carry: Bytes,
    /// Sent chunks' buffers, to fill again.
    spare: Vec<bytes::BytesMut>,
    done: bool,
}

impl Chunker {
    /// `key` and `location` name the upload in errors.
    pub(crate) fn new(stream: ByteStream, size: usize, key: &str, location: &str) -> Self {
        Chunker {
            stream,
            size,
            key: key.to_string(),
            location: location.to_string(),
            carry: Bytes::new(),
            spare: Vec::new(),
            done: false,
        }
    }

    /// The next chunk, or `None` at the end of the stream. A failing body stream
    /// is permanent: its bytes cannot be read again.
    pub(crate) async fn next_chunk(&mut self) -> Result<Option<Bytes>, StorageError> {
        use futures::TryStreamExt;
        let mut chunk = self
            .spare
            .pop()
            .unwrap_or_else(|| bytes::BytesMut::with_capacity(self.size));
        while chunk.len() < self.size {
            if self.carry.is_empty() {
                if self.done {
                    break;
                }
                let next = self
                    .stream
                    .try_next()
                    .await
                    .map_err(|e| StorageError::Permanent {
                        op: "read body for",
                        key: self.key.clone(),
                        location: self.location.clone(),
                        message: e.to_string(),
                    })?;
                match next {
                    Some(b) => self.carry = b,
                    None => self.done = true,
                }
                continue;
            }
            let n = self.carry.len().min(self.size - chunk.len());
            chunk.extend_from_slice(&self.carry.split_to(n));
        }
        if chunk.is_empty() {
            return Ok(None);
        }
        Ok(Some(chunk.freeze()))
    }

    /// Takes back a chunk whose upload is over, to fill its buffer again;
    /// one still referenced elsewhere is simply dropped.
    pub(crate) fn recycle(&mut self, chunk: Bytes) {
        // As many as can be in use at once: parts in flight and one filling.
        const KEPT: usize = MAX_PARALLEL_WRITES + 1;
        if let Ok(mut buf) = chunk.try_into_mut()
            && buf.capacity() >= self.size
            && self.spare.len() < KEPT
        {
            buf.clear();
            self.spare.push(buf);
        }
    }
}

/// Most parts of one object in flight (`storage_parallel_writes`).
pub const MAX_PARALLEL_WRITES: usize = 16;

/// Parts of one object in flight by default: one connection to an object
/// store carries about 100 MB/s (S3), less than one core compresses.
pub const PARALLEL_WRITES: usize = 2;

/// Sends a body in parts, `in_flight` at a time, while the next part is
/// read (compressed, encrypted) from the body. `upload` sends one part,
/// given its 0-based index and bytes, retrying as it sees fit; what it
/// returns comes back in part order. The first failure ends the upload:
/// the parts still in flight are dropped, and the caller aborts.
pub(crate) async fn upload_parts<T, F, Fut>(
    first: Bytes,
    rest: &mut Chunker,
    in_flight: usize,
    upload: F,
) -> Result<Vec<T>, StorageError>
where
    F: Fn(usize, Bytes) -> Fut,
    Fut: std::future::Future<Output = Result<T, StorageError>>,
{
    use futures::stream::{FuturesUnordered, StreamExt};
    let in_flight = in_flight.clamp(1, MAX_PARALLEL_WRITES);
    let start = |index: usize, chunk: Bytes| {
        let sent = upload(index, chunk.clone());
        // The chunk comes back with the result, for its buffer to be reused
        // once the request (and any retry's copy) is gone.
        async move { sent.await.map(|out| (index, out, chunk)) }
    };
    let mut running = FuturesUnordered::new();
    let mut results: Vec<Option<T>> = Vec::new();
    let mut finished = Vec::new();
    let mut next = Some(first);
    let mut reading = true;
    loop {
        while running.len() < in_flight
            && let Some(chunk) = next.take()
        {
            running.push(start(results.len(), chunk));
            results.push(None);
        }
        if next.is_none() && reading {
            // Read the next part while the ones in flight go on.
            let read = rest.next_chunk();
            let drive = drive(&mut running, &mut finished);
            match tokio::select! {
                biased;
                chunk = read => chunk?,
                e = drive => return Err(e),
            } {
                Some(chunk) => next = Some(chunk),
                None => reading = false,
            }
        } else {
            match running.next().await {
                Some(done) => finished.push(done?),
                None => break,
            }
        }
        for (index, out, chunk) in finished.drain(..) {
            results[index] = Some(out);
            rest.recycle(chunk);
        }
    }
    // The loop ends once every part read has finished; a part without its
    // result would make the object shorter than its body, so none may pass.
    results
        .into_iter()
        .map(|r| {
            r.ok_or_else(|| StorageError::Permanent {
                op: "upload",
                key: rest.key.clone(),
                location: rest.location.clone(),
                message: "a part's upload ended without a result".into(),
            })
        })
        .collect()
}

/// Polls the uploads in flight until one fails (its error is returned),
/// collecting those that finish; never returns while they succeed.
async fn drive<T, S>(running: &mut S, finished: &mut Vec<T>) -> StorageError
where
    S: futures::Stream<Item = Result<T, StorageError>> + Unpin,
{
    use futures::StreamExt;
    loop {
        match running.next().await {
            Some(Ok(done)) => finished.push(done),
            Some(Err(e)) => return e,
            None => std::future::pending::<()>().await,
        }
    }
}

/// Connect and request timeouts shared by the network backends, so that an
/// unreachable endpoint fails within the retry deadline instead of hanging.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn chunks_are_exact_and_their_buffers_are_filled_again() {
        // Pieces that straddle chunk ends, as a compressor's output does.
        let pieces: Vec<Result<Bytes, std::io::Error>> =
            (0..10u8).map(|i| Ok(Bytes::from(vec![i; 7]))).collect();
        let mut chunker = Chunker::new(Box::pin(futures::stream::iter(pieces)), 16, "k", "mem");
        let mut all = Vec::new();
        let mut lens = Vec::new();
        let mut recycled = None;
        while let Some(chunk) = chunker.next_chunk().await.unwrap() {
            if let Some(p) = recycled {
                assert_eq!(chunk.as_ptr(), p, "a recycled buffer is filled again");
            }
            all.extend_from_slice(&chunk);
            lens.push(chunk.len());
            recycled = Some(chunk.as_ptr());
            chunker.recycle(chunk);
        }
        assert_eq!(lens, [16, 16, 16, 16, 6]);
        let want: Vec<u8> = (0..10u8).flat_map(|i| [i; 7]).collect();
        assert_eq!(all, want);

        // A chunk still held elsewhere (a retry's copy) is not reused.
        let pieces = vec![Ok::<_, std::io::Error>(Bytes::from(vec![1u8; 40]))];
        let mut chunker = Chunker::new(Box::pin(futures::stream::iter(pieces)), 16, "k", "mem");
        let first = chunker.next_chunk().await.unwrap().unwrap();
        let held = first.clone();
        chunker.recycle(first);
        let second = chunker.next_chunk().await.unwrap().unwrap();
        assert_ne!(second.as_ptr(), held.as_ptr());
        assert_eq!(held, Bytes::from(vec![1u8; 16]));
    }

    #[tokio::test]
    async fn parts_go_up_several_at_once_and_come_back_in_order() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let body = || -> ByteStream {
            let pieces: Vec<std::io::Result<Bytes>> =
                (0..50u8).map(|i| Ok(Bytes::from(vec![i; 10]))).collect();
            Box::pin(futures::stream::iter(pieces))
        };
        for in_flight in [1, 3] {
            let mut rest = Chunker::new(body(), 16, "k", "mem");
            let first = rest.next_chunk().await.unwrap().unwrap();
            let (now, most) = (AtomicUsize::new(0), AtomicUsize::new(0));
            let parts = upload_parts(first, &mut rest, in_flight, |i, chunk| {
                let (now, most) = (&now, &most);
                async move {
                    let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(n, Ordering::SeqCst);
                    // Later parts finish first.
                    tokio::time::sleep(std::time::Duration::from_millis(40 - i as u64)).await;
                    now.fetch_sub(1, Ordering::SeqCst);
                    Ok((i, chunk))
                }
            })
            .await
            .unwrap();
            assert_eq!(most.load(Ordering::SeqCst), in_flight);
            let indexes: Vec<usize> = parts.iter().map(|(i, _)| *i).collect();
            assert_eq!(indexes, (0..32).collect::<Vec<_>>());
            let all: Vec<u8> = parts.iter().flat_map(|(_, c)| c.to_vec()).collect();
            let want: Vec<u8> = (0..50u8).flat_map(|i| [i; 10]).collect();
            assert_eq!(all, want);
        }

        // A part that fails ends the upload with its error.
        let mut rest = Chunker::new(body(), 16, "k", "mem");
        let first = rest.next_chunk().await.unwrap().unwrap();
        let e = upload_parts(first, &mut rest, 2, |i, _| async move {
            if i == 5 {
                Err(StorageError::Permanent {
                    op: "upload part of",
                    key: "k".into(),
                    location: "mem".into(),
                    message: "refused".into(),
                })
            } else {
                Ok(i)
            }
        })
        .await
        .unwrap_err();
        assert!(e.to_string().contains("refused"), "{e}");
    }

    #[test]
    fn keys_cannot_escape_the_prefix() {
        assert!(ObjectKey::new("wal/000000010000000000000001").is_ok());
        for bad in ["", "/wal", "wal/", "wal//x", "../x", "wal/../../x", "./x"] {
            assert!(ObjectKey::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn parses_storage_urls() {
        assert_eq!(
            StorageUrl::parse("file:///var/lib/cairn").unwrap(),
            StorageUrl::File("/var/lib/cairn".into())
        );
        assert_eq!(
            StorageUrl::parse("s3://bkt/a/b/").unwrap(),
            StorageUrl::S3 {
                bucket: "bkt".into(),
                prefix: "a/b/".into()
            }
        );
        assert_eq!(
            StorageUrl::parse("gs://bkt").unwrap(),
            StorageUrl::Gcs {
                bucket: "bkt".into(),
                prefix: String::new()
            }
        );
        assert!(StorageUrl::parse("ftp://x/y").is_err());
        assert!(StorageUrl::parse("s3:///nobucket").is_err());
        assert!(StorageUrl::parse("/var/lib/cairn").is_err());
        assert!(StorageUrl::parse("file://host/x").is_err());
    }
}
