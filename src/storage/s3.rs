//! S3 backend (AWS and S3-compatible servers). Small bodies go up in one PutObject;
//! larger or streamed ones as multipart uploads. Create-if-absent uses
//! `If-None-Match: *`, which AWS and current S3-compatible servers enforce atomically.
//! A server that answers it with 501 (older Ceph, R2 before 2024, some
//! gateways) is asked with HEAD first instead, for the rest of the process:
//! that still never overwrites an object a finished writer stored, but two
//! writers racing for the same key can no longer be told apart by the server.
//! The SDK's own retries are off: every request goes through [`RetryPolicy`].

use std::time::Duration;

use async_trait::async_trait;
use aws_config::BehaviorVersion;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::{ProvideCredentials, Region};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream as SdkBody;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, Delete, ObjectIdentifier};
use bytes::Bytes;
use futures::future::Either;

use super::watch::{Progress, Sliced};
use super::{
    ByteStream, CONNECT_TIMEOUT, Chunker, ObjectKey, ObjectMeta, PutBody, PutMode, RetryPolicy,
    Storage, StorageError, StorageOptions, Upload,
};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Debug)]
pub struct S3Storage {
    client: Client,
    bucket: String,
    prefix: String,
    location: String,
    retry: RetryPolicy,
    part_size: usize,
    /// The endpoint requests go to, for messages about reaching it.
    endpoint: String,
    /// A request that makes no progress for this long is abandoned.
    idle: Duration,
    /// Cleared when the server answers `If-None-Match` with 501.
    conditional: AtomicBool,
    /// The region requests are signed for, for messages about a bucket
    /// that lives in another.
    region: String,
    /// Whether upload bodies are part of the signature (SHA-256 of every
    /// byte, on both sides): only where nothing else protects them.
    sign_payload: bool,
    /// Ranged reads of one large object in flight (`storage_parallel_reads`).
    parallel_reads: usize,
    /// Parts of one object uploaded at once (`storage_parallel_writes`).
    parallel_writes: usize,
}

/// Whether an upload's answer says the server does not implement conditional writes.
fn lacks_conditional<E: ProvideErrorMetadata>(
    e: &SdkError<E, aws_smithy_runtime_api::http::Response>,
) -> bool {
    e.raw_response().map(|r| r.status().as_u16()) == Some(501) || e.code() == Some("NotImplemented")
}

/// Why the credential chain gave nothing, worded by the source the
/// environment names: a web identity (IRSA), a container endpoint (EKS Pod
/// Identity, ECS), or none.
fn no_credentials(why: &str) -> String {
    let var = |name: &str| std::env::var(name).unwrap_or_default();
    if std::env::var_os("AWS_WEB_IDENTITY_TOKEN_FILE").is_some() {
        format!(
            "STS did not let the web identity token ({}) assume role {} (AWS_ROLE_ARN): {why}",
            var("AWS_WEB_IDENTITY_TOKEN_FILE"),
            var("AWS_ROLE_ARN")
        )
    } else if std::env::var_os("AWS_CONTAINER_CREDENTIALS_FULL_URI").is_some() {
        format!(
            "the container credentials endpoint {} (AWS_CONTAINER_CREDENTIALS_FULL_URI) gave no \
             credentials: {why}",
            var("AWS_CONTAINER_CREDENTIALS_FULL_URI")
        )
    } else {
        format!(
            "no AWS credentials found ({why}); set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, \
             AWS_PROFILE, or run with an instance or web-identity role"
        )
    }
}

/// How long resolving credentials may take before cairn says there are none; the
/// instance-metadata probe is the slow part off EC2.
const CREDENTIALS_TIMEOUT: Duration = Duration::from_secs(5);

impl S3Storage {
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
        // A short, single-attempt metadata client: off EC2 the probe must fail fast.
        let imds = aws_config::imds::Client::builder()
            .connect_timeout(Duration::from_millis(500))
            .read_timeout(Duration::from_millis(500))
            .max_attempts(1)
            .build();
        let region = match &opts.s3_region {
            Some(r) => Region::new(r.clone()),
            // Environment, then profile; never the metadata service, which hangs off EC2.
            None => {
                use aws_config::meta::region::ProvideRegion;
                match aws_config::environment::EnvironmentVariableRegionProvider::new()
                    .region()
                    .await
                {
                    Some(r) => r,
                    None => aws_config::profile::ProfileFileRegionProvider::new()
                        .region()
                        .await
                        .unwrap_or_else(|| Region::new("us-east-1")),
                }
            }
        };
        // Token files of workload identities (IRSA, EKS Pod Identity): a
        // missing or unreadable one is named here, not buried in the
        // chain's "no credentials".
        for var in [
            "AWS_WEB_IDENTITY_TOKEN_FILE",
            "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
        ] {
            if let Some(path) = std::env::var_os(var)
                && let Err(e) = tokio::fs::read(&path).await
            {
                return Err(fail(format!(
                    "cannot read the token file {} ({var}): {e}",
                    std::path::Path::new(&path).display()
                )));
            }
        }
        let credentials =
            aws_config::default_provider::credentials::DefaultCredentialsChain::builder()
                .imds_client(imds)
                .region(region.clone())
                .build()
                .await;
        match tokio::time::timeout(CREDENTIALS_TIMEOUT, credentials.provide_credentials()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                return Err(fail(no_credentials(&super::concise(&e))));
            }
            Err(_) => return Err(fail("timed out looking for AWS credentials".into())),
        }
        // Connecting is bounded here; everything after it by cairn's own
        // watchdog, on progress rather than duration (a whole-request read
        // timeout would fail large uploads on slow links forever).
        let timeouts = aws_config::timeout::TimeoutConfig::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .build();
        let region_name = region.to_string();
        let sdk = aws_config::defaults(BehaviorVersion::latest())
            .region(region)
            .credentials_provider(credentials)
            .retry_config(aws_config::retry::RetryConfig::disabled())
            .timeout_config(timeouts)
            .load()
            .await;
        use aws_sdk_s3::config::{RequestChecksumCalculation, ResponseChecksumValidation};
        let checksum = opts
            .s3_checksum
            .unwrap_or_else(|| super::S3Checksum::for_endpoint(opts.s3_endpoint.as_deref()));
        // An upload body needs its SHA-256 in the signature only on plain
        // HTTP without a checksum: TLS, or the CRC32 each upload then
        // carries, already makes the server refuse damaged bytes (AWS's own
        // CLI sends unsigned payloads over HTTPS for the same reason).
        let tls = opts
            .s3_endpoint
            .as_deref()
            .is_none_or(|e| e.starts_with("https://"));
        let sign_payload = !tls && checksum == super::S3Checksum::WhenRequired;
        let (request, response) = match checksum {
            super::S3Checksum::WhenSupported => (
                RequestChecksumCalculation::WhenSupported,
                ResponseChecksumValidation::WhenSupported,
            ),
            super::S3Checksum::WhenRequired => (
                RequestChecksumCalculation::WhenRequired,
                ResponseChecksumValidation::WhenRequired,
            ),
        };
        let mut conf = aws_sdk_s3::config::Builder::from(&sdk)
            .force_path_style(opts.s3_force_path_style)
            .request_checksum_calculation(request)
            .response_checksum_validation(response);
        if let Some(ep) = &opts.s3_endpoint {
            conf = conf.endpoint_url(ep);
        }
        Ok(S3Storage {
            client: Client::from_conf(conf.build()),
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
            location,
            retry: opts.retry,
            part_size: opts.part_size.max(5 << 20),
            parallel_reads: opts.parallel_reads,
            parallel_writes: opts.parallel_writes,
            endpoint: opts
                .s3_endpoint
                .clone()
                .unwrap_or_else(|| "the S3 endpoint of the region".into()),
            idle: opts.idle_timeout,
            conditional: AtomicBool::new(opts.s3_conditional_create),
            region: region_name,
            sign_payload,
        })
    }

    /// Whether create-if-absent may be left to the server.
    fn conditional(&self, mode: PutMode) -> bool {
        mode == PutMode::CreateIfAbsent && self.conditional.load(Ordering::Relaxed)
    }

    /// The server refused `If-None-Match`: from now on this process asks
    /// first ([`Self::refuse_existing`]), and says so once. The error to
    /// return: the object exists, or a transient one, so that the request
    /// is retried without the header.
    async fn without_conditional(&self, op: &'static str, key: &str) -> StorageError {
        if self.conditional.swap(false, Ordering::Relaxed) {
            tracing::warn!(
                "{} does not support conditional writes (If-None-Match, HTTP 501); cairn checks \
                 that an object is absent before creating it instead, which cannot stop two \
                 writers racing for the same key (set s3_conditional_create: false to skip \
                 asking in every process)",
                self.endpoint
            );
        }
        match self.refuse_existing(key).await {
            Err(e) => e,
            Ok(()) => StorageError::Transient {
                op,
                key: key.to_string(),
                location: self.location.clone(),
                message: "retrying without If-None-Match".into(),
            },
        }
    }

    /// Create-if-absent without the server's help: fails when `key` exists.
    async fn refuse_existing(&self, key: &str) -> Result<(), StorageError> {
        super::refuse_existing(self, key).await
    }

    /// Runs one request under the watchdog (see `watch::request`).
    async fn watched<F: std::future::Future>(
        &self,
        op: &'static str,
        key: &str,
        progress: &Arc<Progress>,
        request: F,
    ) -> Result<F::Output, StorageError> {
        let at = format!("{} (talking to {})", self.location, self.endpoint);
        super::watch::request(op, key, &at, &self.retry, self.idle, progress, request).await
    }

    /// A request body that marks progress as the client takes it, slice by
    /// slice, and keeps its bytes visible to the SDK (for signing and
    /// checksums).
    fn body(bytes: Bytes, progress: &Arc<Progress>) -> SdkBody {
        let progress = progress.clone();
        SdkBody::new(
            aws_smithy_types::body::SdkBody::from(bytes).map_preserve_contents(move |b| {
                aws_smithy_types::body::SdkBody::from_body_1_x(Sliced::new(b, progress.clone()))
            }),
        )
    }

    fn full_key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    fn error<E>(
        &self,
        op: &'static str,
        key: &str,
        e: SdkError<E, aws_smithy_runtime_api::http::Response>,
    ) -> StorageError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let (key, location) = (key.to_string(), self.location.clone());
        let status = e.raw_response().map(|r| r.status().as_u16());
        let code = e.code().map(str::to_string);
        let transient = match &e {
            SdkError::TimeoutError(_)
            | SdkError::DispatchFailure(_)
            | SdkError::ResponseError(_) => true,
            // A body that does not match its checksum or signed SHA-256 was
            // damaged on the way: sent again, it arrives whole.
            SdkError::ServiceError(_) => {
                matches!(status, Some(408 | 429 | 500..=599))
                    || matches!(
                        code.as_deref(),
                        Some("BadDigest" | "XAmzContentSHA256Mismatch")
                    )
            }
            _ => false,
        };
        // AWS names the bucket's region when a request went to another's
        // endpoint (301 PermanentRedirect, bodiless to a HEAD) or was signed
        // for another (400 AuthorizationHeaderMalformed).
        let elsewhere = e
            .raw_response()
            .and_then(|r| r.headers().get("x-amz-bucket-region"))
            .filter(|r| *r != self.region && matches!(status, Some(301 | 400 | 403)))
            .map(str::to_string);
        let message = match (&code, e.message()) {
            _ if elsewhere.is_some() => format!(
                "bucket {} is in region {r}, not {} (HTTP {}{}): set s3_region: {r}",
                self.bucket,
                self.region,
                status.unwrap_or_default(),
                code.as_deref().map(|c| format!(" {c}")).unwrap_or_default(),
                r = elsewhere.as_deref().unwrap_or_default(),
            ),
            (Some(c), Some(m)) if c == "AuthorizationHeaderMalformed" && m.contains("region") => {
                format!("{c}: {m}: set s3_region to the bucket's region")
            }
            (Some(c), Some(m)) if c == "RequestTimeTooSkewed" => format!(
                "{c}: {m}; this machine's clock is off by more than the server accepts \
                 (15 minutes on AWS): set it right (NTP)"
            ),
            (Some(c), Some(m)) => format!("{c}: {m}"),
            (Some(c), None) => c.clone(),
            _ => match status {
                // Bodiless answers (HEAD requests) carry no reason of their own.
                Some(403) => "access denied (HTTP 403): wrong credentials, a request signed \
                              with the wrong key or region, or a missing permission"
                    .to_string(),
                Some(301) => "the bucket is in another region (HTTP 301): set s3_region".into(),
                Some(s) => format!("HTTP {s}"),
                None if matches!(e, SdkError::DispatchFailure(_) | SdkError::TimeoutError(_)) => {
                    format!("cannot reach {}: {}", self.endpoint, crate::error_chain(&e))
                }
                None => crate::error_chain(&e),
            },
        };
        match (code.as_deref(), status) {
            (Some("NoSuchKey"), _) => StorageError::NotFound { key, location },
            (Some("NoSuchBucket"), _) => StorageError::NoStorage {
                location,
                message: format!("{message} (bucket {})", self.bucket),
            },
            (Some("PreconditionFailed"), _) | (_, Some(412)) => {
                StorageError::AlreadyExists { key, location }
            }
            _ if transient => StorageError::Transient {
                op,
                key,
                location,
                message,
            },
            _ => StorageError::Permanent {
                op,
                key,
                location,
                message,
            },
        }
    }

    /// Classifies a failed upload request. S3 servers reject a request they will
    /// not accept (bad signature, access denied, no such bucket) as soon as they
    /// have its headers and close the connection without reading the body; the
    /// SDK then sees only a broken pipe, which looks transient. A bodiless signed
    /// request for the same key gets the server's real answer: when that answer is
    /// a permanent error, it is the one to report (and retrying is pointless).
    async fn upload_error<E>(
        &self,
        op: &'static str,
        key: &str,
        e: SdkError<E, aws_smithy_runtime_api::http::Response>,
    ) -> StorageError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        // Only a connection the server closed is worth asking about; a
        // timeout is an answer already, and a probe would only double it.
        let closed = matches!(&e, SdkError::DispatchFailure(d) if !d.is_timeout());
        let err = self.error(op, key, e);
        if !closed {
            return err;
        }
        let probe = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(self.full_key(key))
            .range("bytes=0-0")
            .send();
        match self.watched(op, key, &Progress::new(), probe).await {
            Ok(Err(p)) => match self.error(op, key, p) {
                permanent @ StorageError::Permanent { .. } => permanent,
                _ => err,
            },
            Ok(Ok(_)) | Err(_) => err,
        }
    }

    async fn put_single(&self, key: &str, body: Bytes, mode: PutMode) -> Result<(), StorageError> {
        let full = self.full_key(key);
        if mode == PutMode::CreateIfAbsent && !self.conditional(mode) {
            self.refuse_existing(key).await?;
        }
        self.retry
            .run(|| async {
                let progress = Progress::new();
                let conditional = self.conditional(mode);
                let mut req = self
                    .client
                    .put_object()
                    .bucket(&self.bucket)
                    .key(&full)
                    .body(Self::body(body.clone(), &progress));
                if conditional {
                    req = req.if_none_match("*");
                }
                let sent = if self.sign_payload {
                    Either::Left(req.send())
                } else {
                    Either::Right(req.customize().disable_payload_signing().send())
                };
                match self.watched("put", key, &progress, sent).await? {
                    Ok(_) => Ok(()),
                    Err(e) if conditional && lacks_conditional(&e) => {
                        Err(self.without_conditional("put", key).await)
                    }
                    Err(e) => Err(self.upload_error("put", key, e).await),
                }
            })
            .await
    }

    async fn put_multipart(
        &self,
        key: &str,
        first: Bytes,
        mut rest: Chunker,
        mode: PutMode,
    ) -> Result<(), StorageError> {
        let full = self.full_key(key);
        if mode == PutMode::CreateIfAbsent && !self.conditional(mode) {
            self.refuse_existing(key).await?;
        }
        let upload_id = self
            .retry
            .run(|| async {
                let req = self
                    .client
                    .create_multipart_upload()
                    .bucket(&self.bucket)
                    .key(&full)
                    .send();
                self.watched("start upload of", key, &Progress::new(), req)
                    .await?
                    .map_err(|e| self.error("start upload of", key, e))
            })
            .await?
            .upload_id
            .ok_or_else(|| StorageError::Permanent {
                op: "start upload of",
                key: key.to_string(),
                location: self.location.clone(),
                message: "server returned no upload id".into(),
            })?;
        let result = async {
            let parts = super::upload_parts(first, &mut rest, self.parallel_writes, |i, chunk| {
                let (full, upload_id) = (&full, &upload_id);
                // S3 numbers parts from 1.
                let number = i as i32 + 1;
                async move {
                    let uploaded = self
                        .retry
                        .run(|| async {
                            let progress = Progress::new();
                            let req = self
                                .client
                                .upload_part()
                                .bucket(&self.bucket)
                                .key(full)
                                .upload_id(upload_id)
                                .part_number(number)
                                .body(Self::body(chunk.clone(), &progress));
                            let req = if self.sign_payload {
                                Either::Left(req.send())
                            } else {
                                Either::Right(req.customize().disable_payload_signing().send())
                            };
                            match self.watched("upload part of", key, &progress, req).await? {
                                Ok(out) => Ok(out),
                                Err(e) => Err(self.upload_error("upload part of", key, e).await),
                            }
                        })
                        .await?;
                    Ok(CompletedPart::builder()
                        .part_number(number)
                        .set_e_tag(uploaded.e_tag)
                        .build())
                }
            })
            .await?;
            let done = CompletedMultipartUpload::builder()
                .set_parts(Some(parts))
                .build();
            self.retry
                .run(|| async {
                    let conditional = self.conditional(mode);
                    let mut req = self
                        .client
                        .complete_multipart_upload()
                        .bucket(&self.bucket)
                        .key(&full)
                        .upload_id(&upload_id)
                        .multipart_upload(done.clone());
                    if conditional {
                        req = req.if_none_match("*");
                    }
                    match self
                        .watched("complete upload of", key, &Progress::new(), req.send())
                        .await?
                    {
                        Ok(_) => Ok(()),
                        Err(e) if conditional && lacks_conditional(&e) => {
                            Err(self.without_conditional("complete upload of", key).await)
                        }
                        Err(e) => Err(self.error("complete upload of", key, e)),
                    }
                })
                .await
        }
        .await;
        if result.is_err() {
            // Best effort: an abandoned upload costs storage until a lifecycle rule ends it.
            let abort = self
                .client
                .abort_multipart_upload()
                .bucket(&self.bucket)
                .key(&full)
                .upload_id(&upload_id)
                .send();
            let _ = self
                .watched("abort upload of", key, &Progress::new(), abort)
                .await;
        }
        result
    }
}

#[async_trait]
impl Storage for S3Storage {
    fn location(&self) -> &str {
        &self.location
    }

    fn put_buffering(&self, size: u64) -> u64 {
        // A single PUT needs the whole body (S3 wants its length); multipart
        // uploads hold the parts in flight and the next one filling.
        Upload::buffering(self.part_size, self.parallel_writes, size)
    }

    fn reads_ahead(&self) -> usize {
        self.parallel_reads
    }

    async fn put(&self, key: &ObjectKey, body: PutBody, mode: PutMode) -> Result<(), StorageError> {
        let key = key.as_str();
        match Upload::of(body, self.part_size, key, &self.location).await? {
            Upload::Single(b) => self.put_single(key, b, mode).await,
            Upload::Parts(first, rest) => self.put_multipart(key, first, rest, mode).await,
        }
    }

    async fn get_range(
        &self,
        key: &ObjectKey,
        start: u64,
        end: Option<u64>,
    ) -> Result<ByteStream, StorageError> {
        let full = self.full_key(key.as_str());
        let out = self
            .retry
            .run(|| async {
                let mut req = self.client.get_object().bucket(&self.bucket).key(&full);
                match end {
                    Some(end) => {
                        req = req.range(format!("bytes={start}-{}", end.max(start + 1) - 1))
                    }
                    None if start > 0 => req = req.range(format!("bytes={start}-")),
                    None => {}
                }
                self.watched("get", key.as_str(), &Progress::new(), req.send())
                    .await?
                    .map_err(|e| self.error("get", key.as_str(), e))
            })
            .await?;
        let body = out.body;
        Ok(Box::pin(futures::stream::unfold(
            body,
            |mut body| async move {
                match body.next().await {
                    Some(Ok(b)) => Some((Ok(b), body)),
                    Some(Err(e)) => {
                        Some((Err(std::io::Error::other(crate::error_chain(&e))), body))
                    }
                    None => None,
                }
            },
        )))
    }

    async fn head(&self, key: &ObjectKey) -> Result<Option<ObjectMeta>, StorageError> {
        let full = self.full_key(key.as_str());
        let r = self
            .retry
            .run(|| async {
                let req = self.client.head_object().bucket(&self.bucket).key(&full);
                match self
                    .watched("head", key.as_str(), &Progress::new(), req.send())
                    .await?
                {
                    Ok(o) => Ok(Some(o.content_length.unwrap_or(0).max(0) as u64)),
                    Err(e) if e.raw_response().map(|r| r.status().as_u16()) == Some(404) => {
                        Ok(None)
                    }
                    Err(e) => Err(self.error("head", key.as_str(), e)),
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
        let full_prefix = self.full_key(prefix);
        let start_after = start_after.map(|s| self.full_key(s));
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let want = limit.map(|l| (l - out.len()).min(1000) as i32);
            let page = self
                .retry
                .run(|| async {
                    let req = self
                        .client
                        .list_objects_v2()
                        .bucket(&self.bucket)
                        .prefix(&full_prefix)
                        .set_start_after(start_after.clone())
                        .set_continuation_token(token.clone())
                        .set_max_keys(want)
                        .send();
                    self.watched("list", prefix, &Progress::new(), req)
                        .await?
                        .map_err(|e| self.error("list", prefix, e))
                })
                .await?;
            for o in page.contents() {
                let Some(k) = o.key().and_then(|k| k.strip_prefix(&self.prefix)) else {
                    continue;
                };
                if let Ok(key) = ObjectKey::new(k) {
                    out.push(ObjectMeta {
                        key,
                        size: o.size().unwrap_or(0).max(0) as u64,
                        modified: o
                            .last_modified()
                            .and_then(|t| std::time::SystemTime::try_from(*t).ok()),
                    });
                }
            }
            token = page.next_continuation_token().map(str::to_string);
            let full = limit.is_some_and(|l| out.len() >= l);
            if token.is_none() || full || !page.is_truncated().unwrap_or(false) {
                break;
            }
        }
        Ok(out)
    }

    async fn delete_many(&self, keys: &[ObjectKey]) -> Result<(), StorageError> {
        for batch in keys.chunks(1000) {
            let objects = batch
                .iter()
                .map(|k| {
                    ObjectIdentifier::builder()
                        .key(self.full_key(k.as_str()))
                        .build()
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| StorageError::Permanent {
                    op: "delete",
                    key: batch[0].to_string(),
                    location: self.location.clone(),
                    message: e.to_string(),
                })?;
            let delete = Delete::builder()
                .set_objects(Some(objects))
                .quiet(true)
                .build()
                .map_err(|e| StorageError::Permanent {
                    op: "delete",
                    key: batch[0].to_string(),
                    location: self.location.clone(),
                    message: e.to_string(),
                })?;
            let out = self
                .retry
                .run(|| async {
                    let req = self
                        .client
                        .delete_objects()
                        .bucket(&self.bucket)
                        .delete(delete.clone())
                        .send();
                    self.watched("delete", batch[0].as_str(), &Progress::new(), req)
                        .await?
                        .map_err(|e| self.error("delete", batch[0].as_str(), e))
                })
                .await?;
            if let Some(err) = out.errors().iter().find(|e| e.code() != Some("NoSuchKey")) {
                return Err(StorageError::Permanent {
                    op: "delete",
                    key: err.key().unwrap_or_default().to_string(),
                    location: self.location.clone(),
                    message: format!(
                        "{}: {}",
                        err.code().unwrap_or("error"),
                        err.message().unwrap_or_default()
                    ),
                });
            }
        }
        Ok(())
    }
}
