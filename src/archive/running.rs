//! Running-backup markers: a backup in progress is visible to retention from
//! its first moment, before any part is finished (temporary files and
//! unfinished multipart uploads are not listed). `backup-push` writes
//! `basebackups/<name>/running.json` as soon as it knows the backup's name,
//! naming its start position and parent, rewrites it every [`HEARTBEAT`]
//! while it runs, and deletes it after the manifest. `delete` keeps the WAL
//! from a live marker's start and its parent's chain; a marker not rewritten
//! for [`STALE_AFTER`] belongs to a writer that is gone, and its backup is an
//! ordinary unfinished one.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::{ArchiveError, keys, manifest::rfc3339, objects};
use crate::Context;
use crate::pg::wal::{Lsn, Segment, SystemId, TimelineId};
use crate::storage::{ObjectKey, PutMode, Storage};

/// Version of the marker layout; readers refuse newer ones.
pub const MARKER_VERSION: u32 = 1;
/// How often a running backup rewrites its marker.
pub const HEARTBEAT: Duration = Duration::from_secs(60);
/// A marker not rewritten for this long is abandoned. Many heartbeats, so
/// that a slow storage or a skewed clock does not make a live backup look dead.
pub const STALE_AFTER: time::Duration = time::Duration::minutes(15);

/// What a running backup says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Marker {
    pub marker_version: u32,
    pub name: String,
    pub system_identifier: SystemId,
    pub timeline: TimelineId,
    pub start_lsn: Lsn,
    pub start_wal_file: Segment,
    /// For a delta: the backup it is being built on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    pub hostname: String,
    pub pid: u32,
    #[serde(with = "rfc3339")]
    pub started: OffsetDateTime,
}

impl Marker {
    pub fn parse(bytes: &[u8], object: &str) -> Result<Marker, ArchiveError> {
        let bad = |detail: String| ArchiveError::BadRecord {
            object: object.to_string(),
            detail,
        };
        let m: Marker = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
        if m.marker_version > MARKER_VERSION {
            return Err(bad(format!(
                "marker version {} is newer than this cairn understands; upgrade cairn",
                m.marker_version
            )));
        }
        Ok(m)
    }
}

/// Whether a marker last written at `modified` still belongs to a live writer.
pub fn is_live(modified: Option<OffsetDateTime>, now: OffsetDateTime) -> bool {
    modified.is_some_and(|m| now - m < STALE_AFTER)
}

impl Marker {
    /// Whether its writer is certainly gone: it ran on this host (host names
    /// are unique per machine and per pod) and its process no longer exists.
    /// Elsewhere only the marker's age can tell.
    pub fn writer_gone(&self) -> bool {
        if self.hostname != super::hostname() {
            return false;
        }
        let Ok(pid) = i32::try_from(self.pid) else {
            return false;
        };
        // SAFETY: kill with signal 0 only checks whether the process exists
        // (EPERM: it does, as another user).
        let rc = unsafe { libc::kill(pid, 0) };
        rc != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
    }
}

/// A running backup's marker, kept fresh until [`Running::finish`] or drop.
pub struct Running {
    storage: Arc<dyn Storage>,
    key: ObjectKey,
    heartbeat: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Writes the marker and starts rewriting it every [`HEARTBEAT`].
    pub async fn start(ctx: &Context, marker: &Marker) -> Result<Running, ArchiveError> {
        let key = keys::running(&marker.name)?;
        let json = serde_json::to_vec_pretty(marker).expect("a marker serializes");
        // Overwrite: a dead attempt at the same backup may have left one.
        objects::write_plain(ctx, &key, &json, PutMode::Overwrite).await?;
        let storage = ctx.storage.clone();
        let (beat_key, beat_ctx) = (key.clone(), ctx.config.clone());
        let heartbeat = tokio::spawn(async move {
            let settings = crate::codec::CodecSettings {
                recipients: Vec::new(),
                ..beat_ctx.codec()
            };
            let Ok((bytes, _)) = crate::codec::encode_to_vec(&json, &settings) else {
                return;
            };
            let bytes = bytes::Bytes::from(bytes);
            loop {
                tokio::time::sleep(HEARTBEAT).await;
                let body = crate::storage::PutBody::Bytes(bytes.clone());
                if let Err(e) = storage.put(&beat_key, body, PutMode::Overwrite).await {
                    // The next beat tries again; a backup is not failed for it.
                    tracing::warn!(marker = %beat_key, error = %e, "could not refresh the running-backup marker");
                }
            }
        });
        Ok(Running {
            storage: ctx.storage.clone(),
            key,
            heartbeat,
        })
    }

    /// Stops the heartbeat and removes the marker (after the manifest).
    pub async fn finish(self) -> Result<(), ArchiveError> {
        self.heartbeat.abort();
        self.storage
            .delete_many(std::slice::from_ref(&self.key))
            .await?;
        Ok(())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // A failed backup leaves its marker to go stale: its parts are garbage
        // that `delete garbage` removes once the marker is old.
        self.heartbeat.abort();
    }
}
