//! Relation pages as backups need them: the page size, the LSN in each
//! page's header (`PageHeaderData.pd_lsn` in PostgreSQL's `bufpage.h`),
//! which says when the page last changed in the WAL, and the page checksum
//! (`pg_checksum_page` in `checksum_impl.h`) that clusters with data
//! checksums keep in `pd_checksum`.

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

/// `RELSEG_SIZE`: blocks per relation segment file (1 GiB of 8 KiB pages);
/// a block's number in the checksum counts from the relation's start.
pub const RELSEG_BLOCKS: u32 = 131_072;

/// Offsets of the page header's `pd_checksum` and `pd_upper`.
const PD_CHECKSUM: usize = 8;
const PD_UPPER: usize = 14;

/// The checksum PostgreSQL stores in `pd_checksum`.
pub fn stored_checksum(page: &[u8]) -> u16 {
    u16::from_le_bytes([page[PD_CHECKSUM], page[PD_CHECKSUM + 1]])
}

/// A page never initialised (`PageIsNew`: `pd_upper` is 0), which carries
/// no checksum yet.
pub fn is_new(page: &[u8]) -> bool {
    page[PD_UPPER] == 0 && page[PD_UPPER + 1] == 0
}

/// The checksum of an 8 KiB `page` that is block `block` of its relation
/// fork (counted from the fork's start, across segment files): 32
/// interleaved FNV-1a-like sums over the page's 32-bit words with
/// `pd_checksum` taken as zero, two rounds of zeros, folded by XOR, mixed
/// with the block number, reduced to 1..=65535.
pub fn checksum(page: &[u8; PAGE_SIZE], block: u32) -> u16 {
    const PRIME: u32 = 16_777_619;
    const BASE: [u32; 32] = [
        0x5B1F36E9, 0xB8525960, 0x02AB50AA, 0x1DE66D2A, 0x79FF467A, 0x9BB9F8A3, 0x217E7CD2,
        0x83E13D2C, 0xF8D4474F, 0xE39EB970, 0x42C6AE16, 0x993216FA, 0x7B093B5D, 0x98DAFF3C,
        0xF718902A, 0x0B1C9CDB, 0xE58F764B, 0x187636BC, 0x5D7B3BB1, 0xE73DE7DE, 0x92BEC979,
        0xCCA6C0B2, 0x304A0979, 0x85AA43D4, 0x783125BB, 0x6CA8EAA2, 0xE407EAC6, 0x4B5CFC3E,
        0x9FBF8C76, 0x15CA20BE, 0xF2CA9FD3, 0x959BD756,
    ];
    #[inline(always)]
    fn mix(sum: u32, word: u32) -> u32 {
        let t = sum ^ word;
        t.wrapping_mul(PRIME) ^ (t >> 17)
    }
    let mut sums = BASE;
    // Rows of 32 words; the first row holds the header, whose checksum
    // field (bytes 8..10: the low half of word 2) counts as zero.
    for (row, chunk) in page.chunks_exact(128).enumerate() {
        let mut words = [0u32; 32];
        for (w, b) in words.iter_mut().zip(chunk.chunks_exact(4)) {
            *w = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        }
        if row == 0 {
            words[2] &= 0xFFFF_0000;
        }
        for (s, w) in sums.iter_mut().zip(words) {
            *s = mix(*s, w);
        }
    }
    for _ in 0..2 {
        for s in sums.iter_mut() {
            *s = mix(*s, 0);
        }
    }
    let folded = sums.iter().fold(0u32, |a, s| a ^ s) ^ block;
    ((folded % 65_535) + 1) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values from an independent port of `checksum_impl.h` that matched
    /// every page of a PostgreSQL 17 cluster with data checksums.
    #[test]
    fn checksums_as_postgresql_computes_them() {
        let mut page = [0u8; PAGE_SIZE];
        for (i, b) in page.iter_mut().enumerate() {
            *b = (i * 7 + 3) as u8;
        }
        assert_eq!(checksum(&page, 5), 0xaa47);
        assert_eq!(checksum(&page, RELSEG_BLOCKS * 2 + 9), 0xaa3f);
        // pd_checksum itself does not count.
        page[8] ^= 0xff;
        page[9] ^= 0x0f;
        assert_eq!(checksum(&page, 5), 0xaa47);
        page[100] ^= 1;
        assert_ne!(checksum(&page, 5), 0xaa47);
    }

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
