//! Google Cloud Storage backend over the JSON API (`gcloud-storage`). Small bodies
//! go up in one request; larger or streamed ones through a resumable upload in
//! chunks. Create-if-absent sends `ifGenerationMatch=0`, which GCS enforces
//! atomically; it also looks first, which saves uploading a body that would be
//! refused and keeps emulators that ignore preconditions honest.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use gcloud_storage::client::{Client, ClientConfig};
use gcloud_storage::http::Error as GcsError;
use gcloud_storage::http::objects::delete::DeleteObjectRequest;
use gcloud_storage::http::objects::download::Range;
use gcloud_storage::http::objects::get::GetObjectRequest;
use gcloud_storage::http::objects::list::ListObjectsRequest;
use gcloud_storage::http::objects::upload::{Media, UploadObjectRequest, UploadType};
use gcloud_storage::http::resumable_upload_client::{ChunkSize, UploadStatus};

use super::watch::{Progress, sliced};
use super::{
    ByteStream, CONNECT_TIMEOUT, Chunker, ObjectKey, ObjectMeta, PutBody, PutMode, RetryPolicy,
    Storage, StorageError, StorageOptions, Upload,
};
use std::sync::Arc;

/// Resumable chunks must be multiples of 256 KiB.
const CHUNK_UNIT: usize = 256 << 10;

pub struct GcsStorage {
    client: Client,
    bucket: String,
    prefix: String,
    location: String,
    retry: RetryPolicy,
    part_size: usize,
    /// A request that makes no progress for this long is abandoned.
    idle: Duration,
    /// Ranged reads of one large object in flight (`storage_parallel_reads`).
    parallel_reads: usize,
}

impl std::fmt::Debug for GcsStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GcsStorage")
            .field("location", &self.location)
            .finish()
    }
}

impl GcsStorage {
    pub async fn connect(
        bucket: &str,
        prefix: &str,
        location: String,
        opts: &StorageOptions,
    ) -> Result<Self, StorageError> {
        let fail = |message: String| StorageError::Setup {
            location: location.clone(),
            message,
        };
        // cairn's watchdog times requests out on no progress (`watched`, and
        // downloads in `resume`); reqwest's read timeout (which restarts
        // with every read) is only a backstop, beyond the time the network
        // may take to deliver a body it took whole.
        let backstop = opts.idle_timeout
            + super::watch::drain_allowance(super::watch::DRAIN_SLACK)
            + Duration::from_secs(1);
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(backstop)
            .build()
            .map_err(|e| fail(e.to_string()))?;
        let mut config = ClientConfig {
            http: Some(reqwest_middleware::ClientBuilder::new(http).build()),
            ..ClientConfig::default()
        };
        let key_file = std::env::var_os("GOOGLE_APPLICATION_CREDENTIALS");
        // GKE Workload Identity and GCE: the metadata server, named by
        // GCE_METADATA_HOST where it is not at its usual address.
        let metadata_host = std::env::var_os("GCE_METADATA_HOST").is_some();
        if let Some(path) = &key_file
            && let Err(e) = tokio::fs::File::open(path).await
        {
            return Err(fail(format!(
                "cannot read the Google service-account key file {} \
                 (GOOGLE_APPLICATION_CREDENTIALS): {e}",
                std::path::Path::new(path).display()
            )));
        }
        if let Some(ep) = &opts.gcs_endpoint {
            config.storage_endpoint = ep.trim_end_matches('/').to_string();
        }
        let config = if opts.gcs_endpoint.is_some() && key_file.is_none() && !metadata_host {
            // Emulators and private endpoints without a credential source
            // take no credentials.
            config.anonymous()
        } else {
            match tokio::time::timeout(Duration::from_secs(5), config.with_auth()).await {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => {
                    // The assertion a key file signs is dated by this
                    // machine's clock; Google refuses one far from its own.
                    let e = if crate::error_chain(&e).contains("iat and exp") {
                        "the token endpoint refused the signed assertion as dated outside a \
                         reasonable timeframe (invalid_grant: Invalid JWT): this machine's clock \
                         is off, set it right (NTP)"
                            .to_string()
                    } else {
                        super::concise(&e)
                    };
                    return Err(fail(match (&key_file, metadata_host) {
                        (Some(path), _) => format!(
                            "no access token for the service-account key file {} \
                             (GOOGLE_APPLICATION_CREDENTIALS): {e}",
                            std::path::Path::new(path).display()
                        ),
                        (None, true) => format!(
                            "no access token from the metadata server (GCE_METADATA_HOST): {e}; \
                             check the pod's Kubernetes service account is bound to a Google one"
                        ),
                        (None, false) => format!(
                            "no Google credentials found ({e}); set GOOGLE_APPLICATION_CREDENTIALS \
                             to a service-account key file, or run with GKE Workload Identity or \
                             on GCE"
                        ),
                    }));
                }
                Err(_) => {
                    return Err(fail(
                        "timed out getting Google credentials (5 s): the metadata server or token \
                         endpoint did not answer"
                            .into(),
                    ));
                }
            }
        };
        Ok(GcsStorage {
            client: Client::new(config),
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
            location,
            retry: opts.retry,
            part_size: (opts.part_size / CHUNK_UNIT).max(1) * CHUNK_UNIT,
            parallel_reads: opts.parallel_reads,
            idle: opts.idle_timeout,
        })
    }

    /// Runs one request under the watchdog (see `watch::request`).
    async fn watched<F: std::future::Future>(
        &self,
        op: &'static str,
        key: &str,
        progress: &Arc<Progress>,
        request: F,
    ) -> Result<F::Output, StorageError> {
        super::watch::request(
            op,
            key,
            &self.location,
            &self.retry,
            self.idle,
            progress,
            request,
        )
        .await
    }

    fn full_key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    fn error(&self, op: &'static str, key: &str, e: GcsError) -> StorageError {
        let (key, location) = (key.to_string(), self.location.clone());
        match &e {
            // A missing bucket is a configuration error, not a missing object.
            GcsError::Response(r)
                if r.code == 404 && r.message.to_lowercase().contains("bucket") =>
            {
                StorageError::NoStorage {
                    location,
                    message: format!("bucket {} ({})", self.bucket, r.message),
                }
            }
            GcsError::Response(r) if r.code == 404 => StorageError::NotFound { key, location },
            GcsError::Response(r) if r.code == 412 => StorageError::AlreadyExists { key, location },
            GcsError::Response(r) if r.is_retriable() => StorageError::Transient {
                op,
                key,
                location,
                message: format!("HTTP {}: {}", r.code, r.message),
            },
            GcsError::Response(r) => StorageError::Permanent {
                op,
                key,
                location,
                message: format!("HTTP {}: {}", r.code, r.message),
            },
            GcsError::HttpClient(h) | GcsError::RawResponse(h, _) => {
                let status = h.status().map(|s| s.as_u16());
                let message = super::concise(&e);
                match status {
                    Some(404) => StorageError::NotFound { key, location },
                    Some(412) => StorageError::AlreadyExists { key, location },
                    Some(408 | 429 | 500..=599) | None => StorageError::Transient {
                        op,
                        key,
                        location,
                        message,
                    },
                    Some(_) => StorageError::Permanent {
                        op,
                        key,
                        location,
                        message,
                    },
                }
            }
            _ => StorageError::Permanent {
                op,
                key,
                location,
                message: super::concise(&e),
            },
        }
    }

    fn upload_request(&self, mode: PutMode) -> UploadObjectRequest {
        UploadObjectRequest {
            bucket: self.bucket.clone(),
            if_generation_match: (mode == PutMode::CreateIfAbsent).then_some(0),
            ..Default::default()
        }
    }

    async fn put_single(&self, key: &str, body: Bytes, mode: PutMode) -> Result<(), StorageError> {
        let req = self.upload_request(mode);
        self.retry
            .run(|| async {
                let progress = Progress::new();
                let upload = if body.is_empty() {
                    // Metadata-and-media form: some emulators reject an empty media upload.
                    let media =
                        UploadType::Multipart(Box::new(gcloud_storage::http::objects::Object {
                            name: self.full_key(key),
                            ..Default::default()
                        }));
                    self.watched("put", key, &progress, async {
                        self.client.upload_object(&req, body.clone(), &media).await
                    })
                    .await?
                } else {
                    let mut media = Media::new(self.full_key(key));
                    media.content_length = Some(body.len() as u64);
                    let media = UploadType::Simple(media);
                    let stream = reqwest::Body::wrap_stream(sliced(body.clone(), progress.clone()));
                    self.watched("put", key, &progress, async {
                        self.client.upload_object(&req, stream, &media).await
                    })
                    .await?
                };
                upload.map(|_| ()).map_err(|e| self.error("put", key, e))
            })
            .await
    }

    async fn put_resumable(
        &self,
        key: &str,
        first: Bytes,
        mut rest: Chunker,
        mode: PutMode,
    ) -> Result<(), StorageError> {
        let req = self.upload_request(mode);
        let media = UploadType::Simple(Media::new(self.full_key(key)));
        let session = self
            .retry
            .run(|| async {
                self.watched("start upload of", key, &Progress::new(), async {
                    self.client.prepare_resumable_upload(&req, &media).await
                })
                .await?
                .map_err(|e| self.error("start upload of", key, e))
            })
            .await?;
        // The last chunk must carry the total size, so each chunk goes up
        // once the one after it is read; meanwhile the one after that is
        // read, so that compressing and sending overlap.
        let mut offset = 0u64;
        let mut current = first;
        let mut next = rest.next_chunk().await?;
        loop {
            let len = current.len() as u64;
            let total = next.is_none().then_some(offset + len);
            let range = ChunkSize::new(offset, offset + len - 1, total);
            let upload = self.retry.run(|| async {
                let progress = Progress::new();
                let body = reqwest::Body::wrap_stream(sliced(current.clone(), progress.clone()));
                self.watched("upload part of", key, &progress, async {
                    session.upload_multiple_chunk(body, &range).await
                })
                .await?
                .map_err(|e| self.error("upload part of", key, e))
            });
            let (status, after) = if next.is_some() {
                tokio::try_join!(upload, rest.next_chunk())?
            } else {
                (upload.await?, None)
            };
            offset += len;
            match (next, status) {
                (None, UploadStatus::Ok(_)) => return Ok(()),
                (Some(n), UploadStatus::ResumeIncomplete(_) | UploadStatus::NotStarted) => {
                    rest.recycle(std::mem::replace(&mut current, n));
                    next = after;
                }
                (_, s) => {
                    return Err(StorageError::Permanent {
                        op: "upload",
                        key: key.to_string(),
                        location: self.location.clone(),
                        message: format!(
                            "unexpected resumable upload state {s:?} at byte {offset}"
                        ),
                    });
                }
            }
        }
    }
}

#[async_trait]
impl Storage for GcsStorage {
    fn location(&self) -> &str {
        &self.location
    }

    fn put_buffering(&self, size: u64) -> u64 {
        // A simple upload needs the whole body; a resumable one sends a
        // chunk while it holds the next and reads the one after.
        Upload::buffering(self.part_size, 2, size)
    }

    fn reads_ahead(&self) -> usize {
        self.parallel_reads
    }

    async fn put(&self, key: &ObjectKey, body: PutBody, mode: PutMode) -> Result<(), StorageError> {
        if mode == PutMode::CreateIfAbsent && self.head(key).await?.is_some() {
            return Err(StorageError::AlreadyExists {
                key: key.to_string(),
                location: self.location.clone(),
            });
        }
        let key = key.as_str();
        match Upload::of(body, self.part_size, key, &self.location).await? {
            Upload::Single(b) => self.put_single(key, b, mode).await,
            Upload::Parts(first, rest) => self.put_resumable(key, first, rest, mode).await,
        }
    }

    async fn get_range(
        &self,
        key: &ObjectKey,
        start: u64,
        end: Option<u64>,
    ) -> Result<ByteStream, StorageError> {
        let req = GetObjectRequest {
            bucket: self.bucket.clone(),
            object: self.full_key(key.as_str()),
            ..Default::default()
        };
        let range = match end {
            // Inclusive in the header.
            Some(end) => Range(Some(start), Some(end.max(start + 1) - 1)),
            None => Range((start > 0).then_some(start), None),
        };
        let stream = self
            .retry
            .run(|| async {
                self.watched("get", key.as_str(), &Progress::new(), async {
                    self.client.download_streamed_object(&req, &range).await
                })
                .await?
                .map_err(|e| self.error("get", key.as_str(), e))
            })
            .await?;
        Ok(Box::pin(stream.map_err(|e| {
            std::io::Error::other(crate::error_chain(&e))
        })))
    }

    async fn head(&self, key: &ObjectKey) -> Result<Option<ObjectMeta>, StorageError> {
        let req = GetObjectRequest {
            bucket: self.bucket.clone(),
            object: self.full_key(key.as_str()),
            ..Default::default()
        };
        let r = self
            .retry
            .run(|| async {
                let got = self
                    .watched(
                        "head",
                        key.as_str(),
                        &Progress::new(),
                        self.client.get_object(&req),
                    )
                    .await?;
                match got {
                    Ok(o) => Ok(Some(o.size.max(0) as u64)),
                    Err(e) => match self.error("head", key.as_str(), e) {
                        StorageError::NotFound { .. } => Ok(None),
                        other => Err(other),
                    },
                }
            })
            .await?;
        Ok(r.map(|size| ObjectMeta {
            key: key.clone(),
            size,
            modified: None,
        }))
    }

    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: Option<usize>,
    ) -> Result<Vec<ObjectMeta>, StorageError> {
        let start_after = start_after.map(|s| self.full_key(s));
        let mut out = Vec::new();
        let mut token = None;
        loop {
            let req = ListObjectsRequest {
                bucket: self.bucket.clone(),
                prefix: Some(self.full_key(prefix)),
                // startOffset is inclusive; the exact key is filtered out below.
                start_offset: start_after.clone(),
                max_results: limit.map(|l| (l - out.len() + 1).min(1000) as i32),
                page_token: token.take(),
                ..Default::default()
            };
            let page = self
                .retry
                .run(|| async {
                    let listed = self
                        .watched(
                            "list",
                            prefix,
                            &Progress::new(),
                            self.client.list_objects(&req),
                        )
                        .await?;
                    listed.map_err(|e| {
                        match self.error("list", prefix, e) {
                            // Listing never finds "no object": a 404 here is a missing bucket.
                            StorageError::NotFound { location, .. } => StorageError::NoStorage {
                                location,
                                message: format!("bucket {}", self.bucket),
                            },
                            other => other,
                        }
                    })
                })
                .await?;
            for o in page.items.unwrap_or_default() {
                if start_after.as_deref().is_some_and(|s| o.name.as_str() <= s) {
                    continue;
                }
                let Some(k) = o.name.strip_prefix(&self.prefix) else {
                    continue;
                };
                if let Ok(key) = ObjectKey::new(k) {
                    out.push(ObjectMeta {
                        key,
                        size: o.size.max(0) as u64,
                        modified: o.updated.map(std::time::SystemTime::from),
                    });
                }
            }
            token = page.next_page_token;
            if token.is_none() || limit.is_some_and(|l| out.len() >= l) {
                break;
            }
        }
        // Emulators may ignore maxResults and ordering; the contract does not.
        out.sort_by(|a, b| a.key.cmp(&b.key));
        if let Some(l) = limit {
            out.truncate(l);
        }
        Ok(out)
    }

    async fn delete_many(&self, keys: &[ObjectKey]) -> Result<(), StorageError> {
        // The JSON API has no multi-delete (the batch endpoint is not in the client);
        // a few run at once, which the emulator's small listen backlog also needs.
        futures::stream::iter(keys.iter().cloned())
            .map(|key| async move {
                let req = DeleteObjectRequest {
                    bucket: self.bucket.clone(),
                    object: self.full_key(key.as_str()),
                    ..Default::default()
                };
                self.retry
                    .run(|| async {
                        let deleted = self
                            .watched(
                                "delete",
                                key.as_str(),
                                &Progress::new(),
                                self.client.delete_object(&req),
                            )
                            .await?;
                        match deleted {
                            Ok(()) => Ok(()),
                            Err(e) => match self.error("delete", key.as_str(), e) {
                                StorageError::NotFound { .. } => Ok(()),
                                other => Err(other),
                            },
                        }
                    })
                    .await
            })
            .buffer_unordered(4)
            .try_collect::<Vec<()>>()
            .await
            .map(|_| ())
    }
}
