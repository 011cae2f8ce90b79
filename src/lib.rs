//! cairn keeps PostgreSQL clusters recoverable to any moment: it archives WAL and
//! takes base backups, compressed and encrypted, to a local directory, S3 or
//! GCS, and brings them back. The library never prints; the
//! binary (`main.rs`) owns presentation and exit codes.

pub mod archive;
pub mod backup;
pub mod codec;
pub mod config;
pub mod drill;
pub mod durable;
pub mod metrics;
pub mod pg;
pub mod progress;
pub mod retention;
pub mod storage;
pub mod wal;

use std::sync::{Arc, OnceLock};

use codec::{CodecError, Keyring};
use config::Config;
use storage::{Storage, StorageError};

/// What a command runs with: the configuration, the opened storage, and
/// where to report progress.
pub struct Context {
    pub config: Config,
    pub storage: Arc<dyn Storage>,
    /// Silent unless the binary shows progress.
    pub progress: progress::SharedProgress,
    keyring: OnceLock<Option<Keyring>>,
}

impl Context {
    pub async fn open(config: Config) -> Result<Self, StorageError> {
        Context::open_until(config, None).await
    }

    /// Opens the storage for a command that must be done with it by `until`
    /// (wal-push and wal-fetch: PostgreSQL waits for them).
    pub async fn open_until(
        config: Config,
        until: Option<std::time::Instant>,
    ) -> Result<Self, StorageError> {
        let mut options = config.storage_options();
        options.retry.until = until;
        let storage = storage::open(&config.storage, &options).await?;
        Ok(Context {
            config,
            storage,
            progress: Arc::new(progress::Silent),
            keyring: OnceLock::new(),
        })
    }

    /// A context on a storage of the caller's (the in-memory and
    /// fault-injecting backends of tests).
    pub fn with_storage(config: Config, storage: Arc<dyn Storage>) -> Self {
        Context {
            config,
            storage,
            progress: Arc::new(progress::Silent),
            keyring: OnceLock::new(),
        }
    }

    /// The identities for reading encrypted objects, loaded on first use so that
    /// commands that only write never need the secret key.
    pub fn keyring(&self) -> Result<Option<Keyring>, CodecError> {
        if let Some(k) = self.keyring.get() {
            return Ok(k.clone());
        }
        let files = &self.config.age_identity_file;
        let loaded = if files.is_empty() {
            None
        } else {
            Some(Keyring::from_files(files)?)
        };
        Ok(self.keyring.get_or_init(|| loaded).clone())
    }
}

/// Runs blocking work (filesystem calls) on a blocking thread, off the async
/// workers; a panic there becomes the caller's error.
pub(crate) async fn blocking<T, E>(
    f: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, E>
where
    T: Send + 'static,
    E: Send + 'static + From<tokio::task::JoinError>,
{
    tokio::task::spawn_blocking(f).await?
}

/// An error with its causes, `: `-separated: HTTP clients' top-level errors
/// ("error sending request") rarely say why.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        // Many errors repeat their source in their own text: say it once.
        let text = s.to_string();
        if !text.is_empty() && !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// The first SIGINT or SIGTERM (never, where they cannot be watched).
pub async fn interrupted() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    }
}
