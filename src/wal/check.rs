//! Whether bytes are the WAL file their name says, of the cluster they are
//! meant for: a segment's long page header must place it where its name does
//! (page address of the name's position, a timeline no newer than the
//! name's), declare the size it has, and carry the expected system
//! identifier. `wal-fetch` checks every restored segment before PostgreSQL
//! sees it (an archived object copied under another name, or another
//! cluster's, decodes cleanly but is not this WAL), `wal-push` every segment
//! before it is stored.

use std::path::Path;

use crate::pg::wal::{LONG_PAGE_HEADER_LEN, LongPageHeader, SystemId, WalFileName};

/// Checks the first bytes (`first`, at least a long page header when the
/// file is that long) and the length of WAL file `name`. `system`: the
/// cluster it must belong to, when known. Returns the parsed header of a
/// segment or `.partial`, `None` for other WAL files (text).
pub fn check(
    name: &WalFileName,
    first: &[u8],
    len: u64,
    system: Option<SystemId>,
) -> Result<Option<LongPageHeader>, String> {
    let segment = match name {
        WalFileName::Segment(s) | WalFileName::Partial(s) => *s,
        WalFileName::History(_) | WalFileName::Backup(..) => return Ok(None),
    };
    if first.len() < LONG_PAGE_HEADER_LEN {
        return Err(format!("it is {len} bytes, shorter than a WAL page header"));
    }
    let h = LongPageHeader::parse(first).map_err(|e| e.to_string())?;
    if h.segment_size.bytes() != len {
        return Err(format!(
            "it is {len} bytes but its header says segments are {} bytes",
            h.segment_size.bytes()
        ));
    }
    let at = segment.start_lsn(h.segment_size);
    if h.page_addr != at {
        return Err(format!(
            "its first page is WAL position {}, not {at} where {name} begins (it is another \
             segment's contents under this name)",
            h.page_addr
        ));
    }
    if h.timeline.0 == 0 || h.timeline > segment.timeline {
        return Err(format!(
            "its first page is on timeline {}, after the name's timeline {}",
            h.timeline.0, segment.timeline.0
        ));
    }
    if let Some(want) = system
        && SystemId(h.system_identifier) != want
    {
        return Err(format!(
            "it belongs to the cluster with system identifier {}, not {want}",
            h.system_identifier
        ));
    }
    Ok(Some(h))
}

/// The system identifier of the data directory that `path` (a file in its
/// `pg_wal`, as `%p` names it) belongs to, when its `pg_control` can be read;
/// PostgreSQL runs restore_command in the data directory.
pub fn data_directory_system(path: &Path) -> Option<SystemId> {
    let pg_wal = path.parent().filter(|p| !p.as_os_str().is_empty())?;
    let pgdata = pg_wal.parent().filter(|p| !p.as_os_str().is_empty());
    let pgdata = pgdata.unwrap_or(Path::new("."));
    crate::pg::datadir::system_identifier(pgdata)
        .ok()
        .map(SystemId)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A segment's first page: long header at `addr`, timeline `tli`.
    fn page(addr: u64, tli: u32, sys: u64, size: u32) -> Vec<u8> {
        let mut b = vec![0u8; 64];
        b[0..2].copy_from_slice(&0xD110u16.to_le_bytes());
        b[2..4].copy_from_slice(&0x0002u16.to_le_bytes());
        b[4..8].copy_from_slice(&tli.to_le_bytes());
        b[8..16].copy_from_slice(&addr.to_le_bytes());
        b[24..32].copy_from_slice(&sys.to_le_bytes());
        b[32..36].copy_from_slice(&size.to_le_bytes());
        b[36..40].copy_from_slice(&8192u32.to_le_bytes());
        b
    }

    #[test]
    fn a_segment_must_be_where_its_name_says_of_the_right_cluster() {
        let name: WalFileName = "000000020000000100000003".parse().unwrap();
        let size = 16u32 << 20;
        let at = 0x1_0300_0000;
        let ok = page(at, 2, 7, size);
        assert!(check(&name, &ok, size.into(), Some(SystemId(7))).is_ok());
        assert!(check(&name, &ok, size.into(), None).is_ok());
        // The switch segment of a new timeline starts on the old one.
        assert!(check(&name, &page(at, 1, 7, size), size.into(), None).is_ok());
        let e = check(
            &name,
            &page(at - u64::from(size), 2, 7, size),
            size.into(),
            None,
        );
        assert!(e.unwrap_err().contains("another segment"));
        let e = check(&name, &page(at, 3, 7, size), size.into(), None);
        assert!(e.unwrap_err().contains("timeline 3"));
        let e = check(&name, &ok, size.into(), Some(SystemId(8)));
        assert!(e.unwrap_err().contains("system identifier 7, not 8"));
        let e = check(&name, &ok, 1 << 20, None);
        assert!(e.unwrap_err().contains("header says"));
        let e = check(&name, &ok[..10], 10, None);
        assert!(e.unwrap_err().contains("shorter"));
        let history: WalFileName = "00000002.history".parse().unwrap();
        assert_eq!(check(&history, b"1\t0/3000000\tx\n", 14, None), Ok(None));
    }
}
