//! Remote incremental backups (PostgreSQL 17+, `summarize_wal = on`): the
//! parent's `backup_manifest` (the server's own, which cairn stores beside
//! every remote backup) goes up with `UPLOAD_MANIFEST`, `BASE_BACKUP (
//! INCREMENTAL )` then sends relation files as `INCREMENTAL.<name>` files
//! holding only the blocks changed since the parent, and each of those
//! becomes a cairn page set, so the backup is a delta like a local one:
//! the same catalog, lineage, retention and restore, with no
//! `pg_combinebackup` needed. When the server cannot (older version,
//! summaries off or gone, a parent it does not accept), the backup is full
//! and the log says why in one line.
//!
//! The server's incremental file (`basebackup_incremental.c`): u32 magic
//! `0xD3AE1F0D`, u32 block count, u32 truncation length (in blocks), the
//! block numbers (u32 each, relative to the segment file, ascending),
//! zero padding to a multiple of the page size when there are blocks, then
//! the blocks. The reconstructed file is `max(truncation length, last
//! block + 1)` blocks long: listed blocks from this file, the others below
//! the truncation length from the parent, zeros beyond the parent's end;
//! which is what applying a page set to the parent's file does.

use std::io::Read;

use super::BackupError;
use super::delta::{DeltaBase, page_set_head};
use super::push::{BackupKind, full_because, latest_parent};
use crate::Context;
use crate::archive::keys;
use crate::pg::page::{PAGE_SIZE, RELSEG_BLOCKS};
use crate::pg::replication::ReplicationConn;
use crate::pg::wal::{SystemId, TimelineId};

const MAGIC: u32 = 0xD3AE_1F0D;

/// The parent of a remote incremental backup, and its server manifest.
pub struct Parent {
    pub delta: DeltaBase,
    pub server_manifest: Vec<u8>,
}

/// The parent to build on, or `None` for a full backup (logged with the
/// reason when a delta was wanted).
pub async fn choose(
    ctx: &Context,
    kind: BackupKind,
    conn: &mut ReplicationConn,
    sysid: SystemId,
    timeline: TimelineId,
) -> Result<Option<Parent>, BackupError> {
    if !kind.wants_delta() {
        return Ok(None);
    }
    let version = conn.version_num;
    if version < 170000 {
        return full_because(format!(
            "the server runs PostgreSQL {}, which takes incremental backups from 17 on",
            version / 10000
        ));
    }
    if conn.show("summarize_wal").await? != "on" {
        return full_because(
            "summarize_wal is off on the server; turn it on for incremental backups".into(),
        );
    }
    let block_size = conn.show("block_size").await?;
    if block_size != PAGE_SIZE.to_string() {
        return full_because(format!(
            "the server's block_size is {block_size}; deltas need {PAGE_SIZE}"
        ));
    }
    let latest = match latest_parent(ctx, kind, sysid, version, timeline, None).await? {
        Ok(m) => m,
        Err(why) => return full_because(why),
    };
    let key = keys::server_manifest(&latest.name)?;
    let server_manifest = match crate::archive::objects::read_plain(ctx, &key, None).await {
        Ok(Some(m)) => m,
        Ok(None) => {
            return full_because(format!(
                "{} has no server backup_manifest to build on (a backup of the data directory, \
                 or one taken by an older cairn)",
                latest.name
            ));
        }
        // A damaged copy costs a full backup, not tonight's backup; the
        // parent itself is no worse for it (restores read cairn's manifest).
        Err(crate::archive::ArchiveError::Codec(e)) => {
            return full_because(format!(
                "the server backup_manifest of {} cannot be read ({e})",
                latest.name
            ));
        }
        Err(e) => return Err(e.into()),
    };
    Ok(Some(Parent {
        delta: DeltaBase::new(&latest),
        server_manifest,
    }))
}

/// Whether a path in the server's stream is an incremental file, and the
/// relation file it stands for (`base/5/INCREMENTAL.16384` → `base/5/16384`).
pub fn relation_of(path: &str) -> Option<String> {
    let (dir, name) = path.rsplit_once('/')?;
    let relation = name.strip_prefix("INCREMENTAL.")?;
    let in_relation_dir =
        dir.starts_with("base/") || dir == "global" || dir.starts_with("pg_tblspc/");
    (in_relation_dir && crate::pg::datadir::is_relation_file(relation))
        .then(|| format!("{dir}/{relation}"))
}

/// An incremental file's head, read: the page set it becomes.
pub struct Converted {
    /// The page set's head (cairn's format); the blocks follow as they are.
    pub head: Vec<u8>,
    pub blocks: usize,
    /// The relation file's length once the page set is applied.
    pub file_len: u64,
}

impl Converted {
    /// Bytes of the page-set entry.
    pub fn entry_len(&self) -> u64 {
        self.head.len() as u64 + (self.blocks * PAGE_SIZE) as u64
    }
}

/// Reads the head of the server's incremental file `path` (`size` bytes in
/// its stream) up to its first block, checking it.
pub fn convert<R: Read>(r: &mut R, path: &str, size: u64) -> Result<Converted, BackupError> {
    let bad = |why: String| {
        BackupError::BadArgument(format!(
            "the server sent incremental file {path} that cairn cannot read: {why}"
        ))
    };
    let mut word = || -> Result<u32, BackupError> {
        let mut b = [0u8; 4];
        r.read_exact(&mut b)
            .map_err(|e| bad(format!("its header ends early ({e})")))?;
        Ok(u32::from_le_bytes(b))
    };
    let magic = word()?;
    if magic != MAGIC {
        return Err(bad(format!("magic {magic:#010x}, not {MAGIC:#010x}")));
    }
    let count = word()?;
    // Servers before a 17.x fix could say more than a segment holds.
    let truncation = word()?.min(RELSEG_BLOCKS);
    if count > RELSEG_BLOCKS {
        return Err(bad(format!("{count} blocks, more than a segment holds")));
    }
    let mut blocks = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let b = word()?;
        if b >= RELSEG_BLOCKS || blocks.last().is_some_and(|&last| b <= last) {
            return Err(bad(format!("block number {b} out of order or range")));
        }
        blocks.push(b);
    }
    let mut head_len = 12 + 4 * u64::from(count);
    if count > 0 && !head_len.is_multiple_of(PAGE_SIZE as u64) {
        let padding = PAGE_SIZE as u64 - head_len % PAGE_SIZE as u64;
        std::io::copy(&mut r.take(padding), &mut std::io::sink())
            .map_err(|e| bad(format!("its header ends early ({e})")))?;
        head_len += padding;
    }
    let expected = head_len + u64::from(count) * PAGE_SIZE as u64;
    if size != expected {
        return Err(bad(format!(
            "{size} bytes, but its header makes it {expected}"
        )));
    }
    let length = blocks.last().map_or(0, |&b| b + 1).max(truncation);
    let file_len = u64::from(length) * PAGE_SIZE as u64;
    Ok(Converted {
        head: page_set_head(file_len, &blocks),
        blocks: blocks.len(),
        file_len,
    })
}

/// The incremental backup's `backup_label` as a restore needs it: without
/// the `INCREMENTAL FROM` lines, with which PostgreSQL refuses to start (it
/// expects pg_combinebackup to have removed them).
pub fn restorable_label(label: &[u8]) -> Vec<u8> {
    String::from_utf8_lossy(label)
        .lines()
        .filter(|l| !l.starts_with("INCREMENTAL FROM "))
        .map(|l| format!("{l}\n"))
        .collect::<String>()
        .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn incremental(count: u32, truncation: u32, blocks: &[u32]) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&MAGIC.to_le_bytes());
        f.extend_from_slice(&count.to_le_bytes());
        f.extend_from_slice(&truncation.to_le_bytes());
        for b in blocks {
            f.extend_from_slice(&b.to_le_bytes());
        }
        if count > 0 {
            f.resize(f.len().next_multiple_of(PAGE_SIZE), 0);
        }
        for (i, _) in blocks.iter().enumerate() {
            f.extend(std::iter::repeat_n(i as u8 + 1, PAGE_SIZE));
        }
        f
    }

    #[test]
    fn an_incremental_file_becomes_a_page_set() {
        let f = incremental(3, 600, &[0, 205, 470]);
        let mut r = &f[..];
        let c = convert(&mut r, "base/5/INCREMENTAL.16384", f.len() as u64).unwrap();
        assert_eq!(c.blocks, 3);
        assert_eq!(c.file_len, 600 * PAGE_SIZE as u64);
        assert_eq!(c.head, page_set_head(600 * 8192, &[0, 205, 470]));
        // What is left is the blocks, in order.
        assert_eq!(r.len(), 3 * PAGE_SIZE);
        assert_eq!(r[0], 1);
        assert_eq!(c.entry_len(), c.head.len() as u64 + r.len() as u64);
        // A block past the truncation length lengthens the file.
        let f = incremental(1, 2, &[9]);
        let c = convert(&mut &f[..], "x", f.len() as u64).unwrap();
        assert_eq!(c.file_len, 10 * PAGE_SIZE as u64);
    }

    #[test]
    fn an_empty_incremental_file_is_twelve_bytes() {
        let f = incremental(0, 1, &[]);
        assert_eq!(f.len(), 12);
        let c = convert(&mut &f[..], "x", 12).unwrap();
        assert_eq!((c.blocks, c.file_len), (0, PAGE_SIZE as u64));
    }

    #[test]
    fn a_bad_header_is_named() {
        let mut f = incremental(1, 2, &[1]);
        f[0] ^= 1;
        let e = convert(&mut &f[..], "base/5/INCREMENTAL.1", f.len() as u64)
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("base/5/INCREMENTAL.1") && e.contains("magic"),
            "{e}"
        );
        let f = incremental(2, 2, &[5, 3]);
        assert!(convert(&mut &f[..], "x", f.len() as u64).is_err());
        let f = incremental(1, 2, &[1]);
        assert!(convert(&mut &f[..], "x", f.len() as u64 + 1).is_err());
    }

    #[test]
    fn paths_of_incremental_files() {
        assert_eq!(
            relation_of("base/5/INCREMENTAL.16384.1").as_deref(),
            Some("base/5/16384.1")
        );
        assert_eq!(
            relation_of("global/INCREMENTAL.1262_vm").as_deref(),
            Some("global/1262_vm")
        );
        assert_eq!(relation_of("base/5/16384"), None);
        assert_eq!(relation_of("pg_xact/INCREMENTAL.0000"), None);
    }

    #[test]
    fn labels_lose_their_incremental_lines() {
        let label = b"START WAL LOCATION: 0/4000028 (file 000000010000000000000004)\n\
            INCREMENTAL FROM LSN: 0/2000028\nINCREMENTAL FROM TLI: 1\nLABEL: x\n";
        assert_eq!(
            String::from_utf8(restorable_label(label)).unwrap(),
            "START WAL LOCATION: 0/4000028 (file 000000010000000000000004)\nLABEL: x\n"
        );
    }
}
