//! Azure Blob Storage backend (`az://<account>/<container>/<prefix>`), on
//! the `object_store` crate's Azure client: it signs requests for every
//! credential Azure users have (shared key, SAS, connection strings,
//! workload identity, managed identity) and speaks the Blob REST API. Its
//! HTTP goes through cairn's own connector, so that request bodies are sent
//! in slices that mark progress for the watchdog, and every response's
//! status and Azure error code are known for the error message. Its own
//! retries are off: cairn's retry policy and deadline rule, as on every
//! backend. Create-if-absent is `If-None-Match: *`, enforced atomically by
//! Azure: on Put Blob through the crate, and on the Put Block List that
//! commits a large object by the connector, which adds the condition the
//! crate cannot and signs the request anew (shared_key.rs).

use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::azure::{MicrosoftAzure, MicrosoftAzureBuilder};
use object_store::client::{
    HttpClient, HttpConnector, HttpError, HttpErrorKind, HttpRequest, HttpResponse,
    HttpResponseBody, HttpService,
};
use object_store::list::{PaginatedListOptions, PaginatedListStore};
use object_store::multipart::MultipartStore;
use object_store::path::Path;
use object_store::{
    ClientOptions, GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutOptions, PutPayload,
    RetryConfig,
};

use super::watch::{Progress, sliced};
use shared_key::SharedKey;

mod shared_key;
use super::{
    ByteStream, CONNECT_TIMEOUT, Chunker, ObjectKey, ObjectMeta, PutBody, PutMode, RetryPolicy,
    Storage, StorageError, StorageOptions, Upload,
};

/// The development storage account's key (`UseDevelopmentStorage=true`):
/// public, documented with Azurite and the storage emulator.
const EMULATOR_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// Blocks of a large object are at most this many (Azure's limit).
const MAX_BLOCKS: usize = 50_000;

pub struct AzureStorage {
    store: MicrosoftAzure,
    container: String,
    prefix: String,
    location: String,
    retry: RetryPolicy,
    part_size: usize,
    idle: Duration,
    /// Ranged reads of one large object in flight (`storage_parallel_reads`).
    parallel_reads: usize,
    /// Blocks of one blob uploaded at once (`storage_parallel_writes`).
    parallel_writes: usize,
    /// Which credential the requests carry, for messages.
    credential: String,
}

impl std::fmt::Debug for AzureStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AzureStorage")
            .field("location", &self.location)
            .finish()
    }
}

/// What cairn's connector learns of one storage request.
#[derive(Debug)]
struct Call {
    progress: Arc<Progress>,
    /// The last response's HTTP status (0: none came).
    status: AtomicU16,
    /// The last response's `x-ms-error-code`.
    code: std::sync::Mutex<Option<String>>,
    /// A block list this call commits must create its blob, not replace one.
    create_only: bool,
    /// Why getting a token for the call failed, if it did.
    identity: std::sync::Mutex<Option<TokenFailure>>,
    /// How far the server's clock (its `Date`) is ahead of this machine's,
    /// in seconds, from the last response.
    server_ahead: std::sync::Mutex<Option<i64>>,
}

/// A token request that failed: the identity endpoint's answer or why it
/// could not be reached.
#[derive(Debug, Clone)]
struct TokenFailure {
    reason: String,
    /// Unreachable, throttled or failing (5xx): worth asking again.
    transient: bool,
}

impl Call {
    fn new(progress: Arc<Progress>) -> Arc<Call> {
        Call::with(progress, false)
    }

    /// A call whose Put Block List must not replace an existing blob.
    fn create_only() -> Arc<Call> {
        Call::with(Progress::new(), true)
    }

    fn with(progress: Arc<Progress>, create_only: bool) -> Arc<Call> {
        Arc::new(Call {
            progress,
            status: AtomicU16::new(0),
            code: std::sync::Mutex::new(None),
            create_only,
            identity: std::sync::Mutex::new(None),
            server_ahead: std::sync::Mutex::new(None),
        })
    }

    /// Minutes this machine's clock is off the server's when a shared-key
    /// request was refused for it: Azure accepts 15 either way.
    fn clock_skew(&self) -> Option<i64> {
        let ahead = (*self.server_ahead.lock().unwrap_or_else(|p| p.into_inner()))?;
        (ahead.abs() > 15 * 60).then_some((-ahead as f64 / 60.0).round() as i64)
    }

    fn identity_failed(&self, reason: String, transient: bool) {
        *self.identity.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(TokenFailure { reason, transient });
    }

    fn identity(&self) -> Option<TokenFailure> {
        self.identity
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn status(&self) -> u16 {
        self.status.load(Ordering::Relaxed)
    }

    fn code(&self) -> Option<String> {
        self.code.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

tokio::task_local! {
    /// The request the connector is serving: the crate awaits its HTTP
    /// calls in the caller's task, so the call's state travels with it.
    static CALL: Arc<Call>;
}

/// The crate's HTTP client: reqwest, with bodies sliced for the watchdog.
#[derive(Debug)]
struct Connector {
    client: reqwest::Client,
    /// The account key, when requests are signed with it.
    signer: Option<Arc<SharedKey>>,
}

impl HttpConnector for Connector {
    fn connect(&self, _: &ClientOptions) -> object_store::Result<HttpClient> {
        Ok(HttpClient::new(Service {
            client: self.client.clone(),
            signer: self.signer.clone(),
        }))
    }
}

#[derive(Debug)]
struct Service {
    client: reqwest::Client,
    signer: Option<Arc<SharedKey>>,
}

impl Service {
    /// Makes a Put Block List create its blob only if absent: the condition
    /// the crate cannot send, then a new signature if Shared Key signed it
    /// (the signature covers `If-None-Match`; SAS and bearer tokens do not).
    fn create_only(&self, request: &mut reqwest::Request) -> Result<(), HttpError> {
        use reqwest::header::{AUTHORIZATION, HeaderValue, IF_NONE_MATCH};
        let commit = request
            .url()
            .query_pairs()
            .any(|(k, v)| k == "comp" && v == "blocklist");
        if !commit {
            return Ok(());
        }
        request
            .headers_mut()
            .insert(IF_NONE_MATCH, HeaderValue::from_static("*"));
        let shared_key = request
            .headers()
            .get(AUTHORIZATION)
            .is_some_and(|v| v.as_bytes().starts_with(b"SharedKey "));
        if let (true, Some(signer)) = (shared_key, &self.signer) {
            let auth = signer.authorization(request.method(), request.url(), request.headers());
            let auth = HeaderValue::from_str(&auth)
                .map_err(|e| HttpError::new(HttpErrorKind::Request, e))?;
            request.headers_mut().insert(AUTHORIZATION, auth);
        }
        Ok(())
    }
}

#[async_trait]
impl HttpService for Service {
    async fn call(&self, req: HttpRequest) -> Result<HttpResponse, HttpError> {
        use http_body_util::BodyExt;
        let call = CALL.try_with(|c| c.clone()).ok();
        let progress = call
            .as_ref()
            .map_or_else(Progress::new, |c| c.progress.clone());
        let (parts, body) = req.into_parts();
        // The crate asks Entra ID or the metadata service for tokens through
        // this client too; those requests alone carry no x-ms-version.
        let token_request = !parts.headers.contains_key("x-ms-version");
        let url: reqwest::Url = parts
            .uri
            .to_string()
            .parse()
            .map_err(|e| HttpError::new(HttpErrorKind::Request, e))?;
        if token_request {
            return token(&self.client, call.as_deref(), url, parts, body).await;
        }
        let mut request = reqwest::Request::new(parts.method, url);
        *request.headers_mut() = parts.headers;
        let bytes = body.collect().await?.to_bytes();
        if !bytes.is_empty() {
            // A streamed body with its length given: sent as is, not chunked.
            request.headers_mut().insert(
                reqwest::header::CONTENT_LENGTH,
                reqwest::header::HeaderValue::from(bytes.len()),
            );
            *request.body_mut() = Some(reqwest::Body::wrap_stream(sliced(bytes, progress.clone())));
        }
        if call.as_ref().is_some_and(|c| c.create_only) {
            self.create_only(&mut request)?;
        }
        let response = self.client.execute(request).await.map_err(http_error)?;
        progress.touch();
        if let Some(call) = &call {
            call.status
                .store(response.status().as_u16(), Ordering::Relaxed);
            *call.code.lock().unwrap_or_else(|p| p.into_inner()) = response
                .headers()
                .get("x-ms-error-code")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            *call.server_ahead.lock().unwrap_or_else(|p| p.into_inner()) = response
                .headers()
                .get(reqwest::header::DATE)
                .and_then(|v| v.to_str().ok())
                .and_then(seconds_ahead);
        }
        let (status, headers) = (response.status(), response.headers().clone());
        let stream = response.bytes_stream().map(move |chunk| {
            progress.touch();
            chunk.map(http_body::Frame::data).map_err(http_error)
        });
        let mut out = http::Response::new(HttpResponseBody::new(http_body_util::StreamBody::new(
            stream,
        )));
        *out.status_mut() = status;
        *out.headers_mut() = headers;
        Ok(out)
    }
}

/// A token request of the crate's: sent as is, its answer read whole (a
/// small JSON document), and a refusal's reason kept for the message.
async fn token(
    client: &reqwest::Client,
    call: Option<&Call>,
    url: reqwest::Url,
    parts: http::request::Parts,
    body: object_store::client::HttpRequestBody,
) -> Result<HttpResponse, HttpError> {
    use http_body_util::BodyExt;
    let mut endpoint = url.clone();
    endpoint.set_query(None);
    let mut request = reqwest::Request::new(parts.method, url);
    *request.headers_mut() = parts.headers;
    let bytes = body.collect().await?.to_bytes();
    if !bytes.is_empty() {
        *request.body_mut() = Some(reqwest::Body::from(bytes));
    }
    let answer = async {
        let response = client.execute(request).await?;
        let (status, headers) = (response.status(), response.headers().clone());
        Ok::<_, reqwest::Error>((status, headers, response.bytes().await?))
    };
    let (status, headers, body) = match answer.await {
        Ok(answer) => answer,
        Err(e) => {
            let e = e.without_url();
            if let Some(call) = call {
                let why = crate::error_chain(&e);
                call.identity_failed(format!("cannot reach {endpoint}: {why}"), true);
            }
            return Err(http_error(e));
        }
    };
    if !status.is_success()
        && let Some(call) = call
    {
        // OAuth 2.0 errors (Entra ID, the metadata service): `error` and
        // `error_description`; anything else by its status alone.
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let text = |k: &str| json.get(k).and_then(|v| v.as_str()).map(str::to_string);
        let reason = match (text("error"), text("error_description")) {
            (Some(e), Some(d)) => format!(": {e}: {}", d.lines().next().unwrap_or_default()),
            (Some(e), None) | (None, Some(e)) => format!(": {e}"),
            (None, None) => String::new(),
        };
        let transient = status.as_u16() == 429 || status.is_server_error();
        call.identity_failed(
            format!("{endpoint} answered HTTP {}{reason}", status.as_u16()),
            transient,
        );
    }
    let mut out = http::Response::new(HttpResponseBody::from(body));
    *out.status_mut() = status;
    *out.headers_mut() = headers;
    Ok(out)
}

/// How many seconds the HTTP date `date` (the server's clock) is ahead of
/// this machine's.
fn seconds_ahead(date: &str) -> Option<i64> {
    let format = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    let server = time::PrimitiveDateTime::parse(date, format)
        .ok()?
        .assume_utc();
    Some((server - time::OffsetDateTime::now_utc()).whole_seconds())
}

/// A reqwest failure as the crate's error, by kind (no URL: messages name
/// the object).
fn http_error(e: reqwest::Error) -> HttpError {
    let kind = if e.is_timeout() {
        HttpErrorKind::Timeout
    } else if e.is_connect() {
        HttpErrorKind::Connect
    } else if e.is_decode() {
        HttpErrorKind::Decode
    } else if e.is_body() || e.is_request() {
        HttpErrorKind::Interrupted
    } else {
        HttpErrorKind::Unknown
    };
    HttpError::new(kind, e.without_url())
}

/// Where the account's credentials come from, in the order cairn looks.
#[derive(Debug, Default)]
struct Credentials {
    key: Option<String>,
    sas: Option<String>,
    endpoint: Option<String>,
    emulator: bool,
    /// Which environment variable the credentials came from, for messages.
    source: &'static str,
}

/// Parses an Azure Storage connection string (`Key=Value;…`).
fn parse_connection_string(s: &str, account: &str) -> Result<Credentials, String> {
    let mut c = Credentials {
        source: "AZURE_STORAGE_CONNECTION_STRING",
        ..Credentials::default()
    };
    let (mut name, mut protocol, mut suffix) = (None, "https".to_string(), None);
    for field in s.split(';').map(str::trim).filter(|f| !f.is_empty()) {
        let Some((k, v)) = field.split_once('=') else {
            return Err(format!("field {field:?} is not Key=Value"));
        };
        match k {
            "AccountName" => name = Some(v.to_string()),
            "AccountKey" => c.key = Some(v.to_string()),
            "SharedAccessSignature" => c.sas = Some(v.to_string()),
            "BlobEndpoint" => c.endpoint = Some(v.trim_end_matches('/').to_string()),
            "DefaultEndpointsProtocol" => protocol = v.to_string(),
            "EndpointSuffix" => suffix = Some(v.to_string()),
            "UseDevelopmentStorage" if v.eq_ignore_ascii_case("true") => c.emulator = true,
            // Other services' endpoints and settings do not concern blobs.
            _ => {}
        }
    }
    if let Some(name) = &name
        && name != account
    {
        return Err(format!(
            "it is for account {name:?}, the storage URL names account {account:?}"
        ));
    }
    if c.key.is_none() && c.sas.is_none() && !c.emulator {
        return Err("it holds neither AccountKey nor SharedAccessSignature".into());
    }
    if c.endpoint.is_none()
        && let Some(suffix) = suffix
    {
        c.endpoint = Some(format!("{protocol}://{account}.blob.{suffix}"));
    }
    Ok(c)
}

fn sas_pairs(sas: &str) -> Vec<(String, String)> {
    url::form_urlencoded::parse(sas.trim_start_matches('?').as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

impl AzureStorage {
    pub async fn connect(
        account: &str,
        container: &str,
        prefix: &str,
        location: String,
        opts: &StorageOptions,
    ) -> Result<Self, StorageError> {
        let fail = |message: String| StorageError::Setup {
            location: location.clone(),
            message,
        };
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let secrets = &opts.azure_secrets;
        let mut creds = match &secrets.connection_string {
            Some(s) => parse_connection_string(s, account)
                .map_err(|e| fail(format!("AZURE_STORAGE_CONNECTION_STRING: {e}")))?,
            None => Credentials::default(),
        };
        if creds.key.is_none() && creds.sas.is_none() && !creds.emulator {
            if let Some(key) = &secrets.key {
                creds.key = Some(key.clone());
                creds.source = "AZURE_STORAGE_KEY";
            } else if let Some(sas) = &secrets.sas {
                creds.sas = Some(sas.clone());
                creds.source = "AZURE_STORAGE_SAS_TOKEN";
            }
        }
        let backstop = opts.idle_timeout
            + super::watch::drain_allowance(super::watch::DRAIN_SLACK)
            + Duration::from_secs(1);
        let client = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(backstop)
            .build()
            .map_err(|e| fail(e.to_string()))?;
        let mut b = MicrosoftAzureBuilder::new()
            .with_account(account)
            .with_container_name(container)
            .with_http_connector(Connector {
                client,
                signer: creds
                    .key
                    .as_deref()
                    .or(creds.emulator.then_some(EMULATOR_KEY))
                    .and_then(|k| SharedKey::new(account, k))
                    .map(Arc::new),
            })
            .with_retry(RetryConfig {
                max_retries: 0,
                retry_timeout: Duration::ZERO,
                ..RetryConfig::default()
            })
            .with_client_options(ClientOptions::new().with_allow_http(true));
        let endpoint = opts.azure_endpoint.clone().or(creds.endpoint.clone());
        if let Some(ep) = endpoint {
            b = b
                .with_endpoint(ep.trim_end_matches('/').to_string())
                .with_allow_http(true);
        } else if creds.emulator {
            b = b.with_use_emulator(true);
        }
        match (&creds.key, &creds.sas) {
            (Some(key), _) => b = b.with_access_key(key),
            (None, Some(sas)) => b = b.with_sas_authorization(sas_pairs(sas)),
            (None, None) => {
                if let Some(file) = env("AZURE_FEDERATED_TOKEN_FILE") {
                    // Workload identity: the pod's token, exchanged for one of
                    // the app registration or managed identity it names.
                    if let Err(e) = tokio::fs::File::open(&file).await {
                        return Err(fail(format!(
                            "cannot read the workload identity token file {file} \
                             (AZURE_FEDERATED_TOKEN_FILE): {e}"
                        )));
                    }
                    let (Some(client_id), Some(tenant)) =
                        (env("AZURE_CLIENT_ID"), env("AZURE_TENANT_ID"))
                    else {
                        return Err(fail(
                            "workload identity needs AZURE_CLIENT_ID and AZURE_TENANT_ID beside \
                             AZURE_FEDERATED_TOKEN_FILE (the AKS webhook sets all three)"
                                .into(),
                        ));
                    };
                    b = b
                        .with_federated_token_file(file)
                        .with_client_id(client_id)
                        .with_tenant_id(tenant);
                    if let Some(host) = env("AZURE_AUTHORITY_HOST") {
                        b = b.with_authority_host(host);
                    }
                } else {
                    // Managed identity, from the instance metadata service (or
                    // the endpoint App Service and Arc name).
                    if let Some(ep) = env("IDENTITY_ENDPOINT").or_else(|| env("MSI_ENDPOINT")) {
                        b = b.with_msi_endpoint(ep);
                    }
                    if let Some(id) = env("AZURE_CLIENT_ID") {
                        b = b.with_client_id(id);
                    }
                }
            }
        }
        let credential = match (&creds.key, &creds.sas) {
            (Some(_), _) => format!("the account key from {}", creds.source),
            (None, Some(_)) => format!("the SAS from {}", creds.source),
            (None, None) if creds.emulator => "the emulator's account".to_string(),
            (None, None) if env("AZURE_FEDERATED_TOKEN_FILE").is_some() => {
                "workload identity (AZURE_FEDERATED_TOKEN_FILE)".to_string()
            }
            (None, None) => "managed identity".to_string(),
        };
        let store = b.build().map_err(|e| fail(super::concise(&e)))?;
        Ok(AzureStorage {
            store,
            container: container.to_string(),
            prefix: prefix.to_string(),
            location,
            retry: opts.retry,
            part_size: opts.part_size,
            parallel_reads: opts.parallel_reads,
            parallel_writes: opts.parallel_writes,
            idle: opts.idle_timeout,
            credential,
        })
    }

    fn path(&self, key: &str) -> Path {
        Path::from(format!("{}{key}", self.prefix))
    }

    /// Runs one request under the watchdog, with the connector's state for it.
    async fn watched<F: std::future::Future>(
        &self,
        op: &'static str,
        key: &str,
        call: &Arc<Call>,
        request: F,
    ) -> Result<F::Output, StorageError> {
        let progress = call.progress.clone();
        super::watch::request(
            op,
            key,
            &self.location,
            &self.retry,
            self.idle,
            &progress,
            CALL.scope(call.clone(), request),
        )
        .await
    }

    /// The error of request `op` on `key`, by the HTTP status and Azure
    /// error code the connector saw.
    fn error(
        &self,
        op: &'static str,
        key: &str,
        call: &Call,
        e: object_store::Error,
    ) -> StorageError {
        let (key, location) = (key.to_string(), self.location.clone());
        if let Some(failure) = call.identity() {
            let message = format!("{} got no token: {}", self.credential, failure.reason);
            return if failure.transient {
                StorageError::Transient {
                    op,
                    key,
                    location,
                    message,
                }
            } else {
                StorageError::Permanent {
                    op,
                    key,
                    location,
                    message,
                }
            };
        }
        let status = call.status();
        let code = call.code();
        let skew = call.clock_skew();
        let detail = match &code {
            Some(code) => format!("HTTP {status} {code}"),
            None if status > 0 => format!("HTTP {status}: {}", super::concise(&e)),
            None => super::concise(&e),
        };
        match (status, code.as_deref(), &e) {
            (404, Some("ContainerNotFound"), _) => StorageError::NoStorage {
                location,
                message: format!("container {} (ContainerNotFound)", self.container),
            },
            (404, _, _) | (_, _, object_store::Error::NotFound { .. }) if status != 403 => {
                StorageError::NotFound { key, location }
            }
            (409 | 412, _, _) => StorageError::AlreadyExists { key, location },
            (403, Some("AuthorizationFailure"), _) => StorageError::Permanent {
                op,
                key,
                location,
                message: format!(
                    "{detail}: the account refused the request ({}): a wrong account key or SAS, \
                     one without permission to {op}, or a clock off by more than 15 minutes",
                    self.credential
                ),
            },
            (403, Some("AuthorizationPermissionMismatch"), _) => StorageError::Permanent {
                op,
                key,
                location,
                message: format!(
                    "{detail}: the credentials lack permission to {op} here (a SAS or role without \
                         that permission?)"
                ),
            },
            (403, Some("AuthenticationFailed"), _) if skew.is_some() => {
                let minutes = skew.unwrap_or_default();
                StorageError::Permanent {
                    op,
                    key,
                    location,
                    message: format!(
                        "{detail}: this machine's clock is {} minutes {} the store's, and Azure \
                         takes a signed request only within 15 minutes of its own time: set the \
                         clock right (NTP)",
                        minutes.abs(),
                        if minutes > 0 { "ahead of" } else { "behind" }
                    ),
                }
            }
            (403, Some("AuthenticationFailed"), _) => StorageError::Permanent {
                op,
                key,
                location,
                message: format!(
                    "{detail}: the request's signature was refused ({}): a wrong account key, \
                     an expired SAS, or a clock off by more than 15 minutes",
                    self.credential
                ),
            },
            (0 | 408 | 429 | 500..=599, _, _) => StorageError::Transient {
                op,
                key,
                location,
                message: detail,
            },
            _ => StorageError::Permanent {
                op,
                key,
                location,
                message: detail,
            },
        }
    }

    async fn put_single(&self, key: &str, body: Bytes, mode: PutMode) -> Result<(), StorageError> {
        let path = self.path(key);
        let opts = || {
            PutOptions::from(match mode {
                PutMode::Overwrite => object_store::PutMode::Overwrite,
                PutMode::CreateIfAbsent => object_store::PutMode::Create,
            })
        };
        self.retry
            .run(|| async {
                let call = Call::new(Progress::new());
                let put = self
                    .store
                    .put_opts(&path, PutPayload::from(body.clone()), opts());
                self.watched("put", key, &call, put)
                    .await?
                    .map(|_| ())
                    .map_err(|e| self.error("put", key, &call, e))
            })
            .await
    }

    /// Fails with `AlreadyExists` if `key` exists (create-if-absent of a
    /// body that goes up in blocks).
    async fn refuse_existing(&self, key: &str) -> Result<(), StorageError> {
        super::refuse_existing(self, key).await
    }

    async fn put_blocks(
        &self,
        key: &str,
        first: Bytes,
        mut rest: Chunker,
        mode: PutMode,
    ) -> Result<(), StorageError> {
        if mode == PutMode::CreateIfAbsent {
            // Not the guarantee (the commit's condition is), but no upload
            // of blocks that could never be committed.
            self.refuse_existing(key).await?;
        }
        let path = self.path(key);
        // Blocks are staged under an id of their own and become the blob
        // only with the block list: a failed upload leaves nothing visible
        // (uncommitted blocks expire after a week).
        let id = self
            .store
            .create_multipart(&path)
            .await
            .map_err(|e| self.error("start upload of", key, &Call::new(Progress::new()), e))?;
        let parts = super::upload_parts(first, &mut rest, self.parallel_writes, |number, chunk| {
            let (path, id) = (&path, &id);
            async move {
                if number >= MAX_BLOCKS {
                    return Err(StorageError::Permanent {
                        op: "put",
                        key: key.to_string(),
                        location: self.location.clone(),
                        message: format!("more than {MAX_BLOCKS} blocks: raise part_size"),
                    });
                }
                self.retry
                    .run(|| async {
                        let call = Call::new(Progress::new());
                        let put =
                            self.store
                                .put_part(path, id, number, PutPayload::from(chunk.clone()));
                        self.watched("upload block of", key, &call, put)
                            .await?
                            .map_err(|e| self.error("upload block of", key, &call, e))
                    })
                    .await
            }
        })
        .await?;
        self.retry
            .run(|| async {
                let call = match mode {
                    PutMode::CreateIfAbsent => Call::create_only(),
                    PutMode::Overwrite => Call::new(Progress::new()),
                };
                let done = self.store.complete_multipart(&path, &id, parts.clone());
                self.watched("complete upload of", key, &call, done)
                    .await?
                    .map(|_| ())
                    .map_err(|e| self.error("complete upload of", key, &call, e))
            })
            .await
    }
}

#[async_trait]
impl Storage for AzureStorage {
    fn location(&self) -> &str {
        &self.location
    }

    fn put_buffering(&self, size: u64) -> u64 {
        Upload::buffering(self.part_size, self.parallel_writes, size)
    }

    fn reads_ahead(&self) -> usize {
        self.parallel_reads
    }

    async fn put(&self, key: &ObjectKey, body: PutBody, mode: PutMode) -> Result<(), StorageError> {
        let key = key.as_str();
        match Upload::of(body, self.part_size, key, &self.location).await? {
            Upload::Single(b) => self.put_single(key, b, mode).await,
            Upload::Parts(first, rest) => self.put_blocks(key, first, rest, mode).await,
        }
    }

    async fn get_range(
        &self,
        key: &ObjectKey,
        start: u64,
        end: Option<u64>,
    ) -> Result<ByteStream, StorageError> {
        let path = self.path(key.as_str());
        let range = match end {
            Some(end) => Some(GetRange::Bounded(start..end.max(start + 1))),
            None if start > 0 => Some(GetRange::Offset(start)),
            None => None,
        };
        let result = self
            .retry
            .run(|| async {
                let call = Call::new(Progress::new());
                let get = self.store.get_opts(
                    &path,
                    GetOptions {
                        range: range.clone(),
                        ..GetOptions::default()
                    },
                );
                self.watched("get", key.as_str(), &call, get)
                    .await?
                    .map_err(|e| self.error("get", key.as_str(), &call, e))
            })
            .await?;
        Ok(Box::pin(result.into_stream().map_err(|e| {
            std::io::Error::other(crate::error_chain(&e))
        })))
    }

    async fn head(&self, key: &ObjectKey) -> Result<Option<ObjectMeta>, StorageError> {
        let path = self.path(key.as_str());
        let found = self
            .retry
            .run(|| async {
                let call = Call::new(Progress::new());
                match self
                    .watched("head", key.as_str(), &call, self.store.head(&path))
                    .await?
                {
                    Ok(meta) => Ok(Some(meta)),
                    Err(e) => match self.error("head", key.as_str(), &call, e) {
                        StorageError::NotFound { .. } => Ok(None),
                        other => Err(other),
                    },
                }
            })
            .await?;
        Ok(found.map(|m| ObjectMeta {
            key: key.clone(),
            size: m.size,
            modified: Some(m.last_modified.into()),
        }))
    }

    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: Option<usize>,
    ) -> Result<Vec<ObjectMeta>, StorageError> {
        let full_prefix = format!("{}{prefix}", self.prefix);
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self
                .retry
                .run(|| async {
                    let call = Call::new(Progress::new());
                    let opts = PaginatedListOptions {
                        // Exclusive, as cairn means it (the crate drops an
                        // object equal to it).
                        offset: start_after.map(|s| format!("{}{s}", self.prefix)),
                        max_keys: limit.map(|l| (l - out.len()).clamp(1, 5000)),
                        page_token: token.clone(),
                        ..PaginatedListOptions::default()
                    };
                    let list = self.store.list_paginated(Some(&full_prefix), opts);
                    self.watched("list", prefix, &call, list)
                        .await?
                        .map_err(|e| self.error("list", prefix, &call, e))
                })
                .await?;
            for o in page.result.objects {
                let Some(rel) = o.location.as_ref().strip_prefix(self.prefix.as_str()) else {
                    continue;
                };
                if start_after.is_some_and(|s| rel <= s) {
                    continue;
                }
                let Ok(key) = ObjectKey::new(rel) else {
                    continue;
                };
                out.push(ObjectMeta {
                    key,
                    size: o.size,
                    modified: Some(o.last_modified.into()),
                });
            }
            if limit.is_some_and(|l| out.len() >= l) {
                out.truncate(limit.unwrap_or(usize::MAX));
                break;
            }
            match page.page_token {
                Some(t) if !t.is_empty() => token = Some(t),
                _ => break,
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn delete_many(&self, keys: &[ObjectKey]) -> Result<(), StorageError> {
        let results: Vec<Result<(), StorageError>> = futures::stream::iter(keys.to_vec())
            .map(|key| async move {
                let path = self.path(key.as_str());
                self.retry
                    .run(|| async {
                        let call = Call::new(Progress::new());
                        match self
                            .watched("delete", key.as_str(), &call, self.store.delete(&path))
                            .await?
                        {
                            Ok(()) => Ok(()),
                            Err(e) => match self.error("delete", key.as_str(), &call, e) {
                                StorageError::NotFound { .. } => Ok(()),
                                other => Err(other),
                            },
                        }
                    })
                    .await
            })
            .buffer_unordered(16)
            .collect()
            .await;
        results.into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_strings_name_their_account_and_credential() {
        let c = parse_connection_string(
            "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=a2V5;EndpointSuffix=core.windows.net",
            "acct",
        )
        .unwrap();
        assert_eq!(c.key.as_deref(), Some("a2V5"));
        assert_eq!(
            c.endpoint.as_deref(),
            Some("https://acct.blob.core.windows.net")
        );
        let c = parse_connection_string(
            "BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1/;SharedAccessSignature=sv=2024&sig=x%2By",
            "devstoreaccount1",
        )
        .unwrap();
        assert_eq!(
            c.endpoint.as_deref(),
            Some("http://127.0.0.1:10000/devstoreaccount1")
        );
        assert_eq!(
            sas_pairs(c.sas.as_deref().unwrap()),
            vec![("sv".into(), "2024".into()), ("sig".into(), "x+y".into())]
        );
        assert!(
            parse_connection_string("AccountName=other;AccountKey=k", "acct")
                .unwrap_err()
                .contains("account \"other\"")
        );
        assert!(parse_connection_string("AccountName=acct", "acct").is_err());
        assert!(parse_connection_string("garbage", "acct").is_err());
        assert!(
            parse_connection_string("UseDevelopmentStorage=true", "acct")
                .unwrap()
                .emulator
        );
    }
}
