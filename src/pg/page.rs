//! Relation pages as delta backups need them: the page size and the LSN in
//! each page's header (`PageHeaderData.pd_lsn` in PostgreSQL's `bufpage.h`),
//! which says when the page last changed in the WAL.

use super::wal::Lsn;

/// `BLCKSZ`: the page size of every build cairn takes delta backups of.
/// backup-push checks the server's `block_size` and takes a full backup of
/// any other.
pub const PAGE_SIZE: usize = 8192;

/// The LSN of the last WAL record that changed `page` (its first 8 bytes:
/// `xlogid` then `xrecoff`, in the server's byte order, little-endian on every
/// platform cairn runs on). Zero for a page never written through the WAL,
/// such as a new, all-zero page.
pub fn page_lsn(page: &[u8]) -> Lsn {
    let word = |at: usize| {
        page.get(at..at + 4)
            .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    Lsn((u64::from(word(0)) << 32) | u64::from(word(4)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_page_lsn() {
        let mut page = vec![0u8; PAGE_SIZE];
        assert_eq!(page_lsn(&page), Lsn(0));
        page[..4].copy_from_slice(&1u32.to_le_bytes());
        page[4..8].copy_from_slice(&0x2000_0028u32.to_le_bytes());
        assert_eq!(page_lsn(&page).to_string(), "1/20000028");
        assert_eq!(page_lsn(&page[..3]), Lsn(0));
    }
}
