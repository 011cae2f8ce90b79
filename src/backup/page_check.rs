//! Page checksums verified while backup-push reads relation files, when the
//! cluster has data checksums: a page whose checksum fails, and still fails
//! when read again, and whose LSN is before the backup's start (so no WAL
//! replay will rewrite it) is corrupt on disk. The backup stores it as it is
//! (it is the only copy there is) and records it in the manifest; with
//! `fail_on_page_corruption` the backup fails instead. A page written while
//! the backup reads it (a torn read) carries an LSN at or after the start,
//! or reads back whole, and is not reported: the rule PostgreSQL's own
//! BASE_BACKUP follows.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::sync::Mutex;

use crate::archive::manifest::CorruptPage;
use crate::pg::page::{self, PAGE_SIZE, RELSEG_BLOCKS};
use crate::pg::wal::Lsn;

/// Pages reported per file in the log; the manifest has them all.
const LOGGED_PER_FILE: usize = 5;

/// What one backup's checks found, shared by the part workers.
#[derive(Debug)]
pub struct PageCheck {
    /// The backup's start: pages changed since are replayed, not checked.
    start_lsn: Lsn,
    found: Mutex<Vec<CorruptPage>>,
}

impl PageCheck {
    pub fn new(start_lsn: Lsn) -> Self {
        PageCheck {
            start_lsn,
            found: Mutex::new(Vec::new()),
        }
    }

    /// The corrupt pages found so far, by file and block.
    pub fn take_found(&self) -> Vec<CorruptPage> {
        let mut found = std::mem::take(&mut *self.found.lock().unwrap_or_else(|p| p.into_inner()));
        found.sort_by(|a, b| (&a.file, a.block).cmp(&(&b.file, b.block)));
        found
    }

    /// Wraps the reader of relation file `path` (its bytes as the backup
    /// stores them, laid out as `layout` says), checking each page that
    /// passes; other files pass unchecked.
    pub fn reader<'a, R: Read>(
        &'a self,
        path: &'a str,
        file: &'a File,
        layout: Layout,
        inner: R,
    ) -> Checked<'a, R> {
        let name = path.rsplit('/').next().unwrap_or(path);
        let checked = checked_file(path);
        let first_block = segment_of(name) * RELSEG_BLOCKS;
        Checked {
            inner,
            check: checked.then_some(self),
            path,
            file,
            layout,
            first_block,
            pos: 0,
            page: Box::new([0u8; PAGE_SIZE]),
            filled: 0,
            reported: 0,
        }
    }

    /// Checks one page read at `offset` of `file` (block `block` of its
    /// fork), reading it again before it counts as corrupt.
    fn check(
        &self,
        path: &str,
        file: &File,
        offset: u64,
        block: u32,
        page: &[u8; PAGE_SIZE],
    ) -> bool {
        if self.passes(page, block) {
            return true;
        }
        let mut again = [0u8; PAGE_SIZE];
        match file.read_exact_at(&mut again, offset) {
            Ok(()) if self.passes(&again, block) => true,
            // Shrunk while read: the truncation is in the WAL.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => true,
            _ => {
                let mut found = self.found.lock().unwrap_or_else(|p| p.into_inner());
                found.push(CorruptPage {
                    file: path.to_string(),
                    block,
                });
                false
            }
        }
    }

    /// A page that is new, changed since the start, or whose checksum holds.
    fn passes(&self, page: &[u8; PAGE_SIZE], block: u32) -> bool {
        page::is_new(page)
            || page::page_lsn(page) >= self.start_lsn
            || page::checksum(page, block) == page::stored_checksum(page)
    }
}

/// How a stored file's bytes map to the relation file's blocks.
#[derive(Debug, Clone)]
pub enum Layout {
    /// The file from its start.
    Whole,
    /// A delta's page set: a head of `head` bytes, then these blocks.
    Pages { head: u64, blocks: Vec<u32> },
}

/// Files whose pages carry checksums: relation files of every fork and
/// segment, in database directories, `global` and tablespaces.
fn checked_file(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    (path.starts_with("base/") || path.starts_with("global/") || path.starts_with("pg_tblspc/"))
        && crate::pg::datadir::is_relation_file(name)
}

/// The segment number of a relation file (`16384.3` is 3).
fn segment_of(name: &str) -> u32 {
    name.rsplit_once('.')
        .and_then(|(_, s)| s.parse().ok())
        .unwrap_or(0)
}

/// A reader that checks the pages passing through it.
pub struct Checked<'a, R> {
    inner: R,
    check: Option<&'a PageCheck>,
    path: &'a str,
    file: &'a File,
    layout: Layout,
    /// The first block of this segment file, counted from the fork's start.
    first_block: u32,
    /// Bytes read so far.
    pos: u64,
    /// The page being gathered, `filled` bytes of it.
    page: Box<[u8; PAGE_SIZE]>,
    filled: usize,
    reported: usize,
}

impl<R: Read> Checked<'_, R> {
    /// Gathers `bytes` (read at stream position `at`) into pages, checking
    /// each one completed.
    fn take_in(&mut self, mut at: u64, mut bytes: &[u8]) {
        let Some(check) = self.check else {
            return;
        };
        let head = match &self.layout {
            Layout::Whole => 0,
            Layout::Pages { head, .. } => *head,
        };
        if at < head {
            let skip = ((head - at) as usize).min(bytes.len());
            bytes = &bytes[skip..];
            at += skip as u64;
        }
        while !bytes.is_empty() {
            let n = (PAGE_SIZE - self.filled).min(bytes.len());
            self.page[self.filled..self.filled + n].copy_from_slice(&bytes[..n]);
            self.filled += n;
            bytes = &bytes[n..];
            at += n as u64;
            if self.filled < PAGE_SIZE {
                continue;
            }
            self.filled = 0;
            let index = (at - head) / PAGE_SIZE as u64 - 1;
            let in_file = match &self.layout {
                Layout::Whole => Some(index as u32),
                Layout::Pages { blocks, .. } => blocks.get(index as usize).copied(),
            };
            let Some(in_file) = in_file else {
                continue;
            };
            let block = self.first_block + in_file;
            let offset = u64::from(in_file) * PAGE_SIZE as u64;
            if !check.check(self.path, self.file, offset, block, &self.page) {
                self.reported += 1;
                if self.reported <= LOGGED_PER_FILE {
                    tracing::warn!(
                        file = %self.path,
                        block,
                        "page checksum failed (data checksums are on, and the page was not \
                         written since the backup started): the page is corrupt on disk"
                    );
                }
            }
        }
    }
}

impl<R: Read> Read for Checked<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let at = self.pos;
        self.pos += n as u64;
        self.take_in(at, &buf[..n]);
        Ok(n)
    }
}

impl<R> Drop for Checked<'_, R> {
    fn drop(&mut self) {
        if self.reported > LOGGED_PER_FILE {
            tracing::warn!(
                file = %self.path,
                pages = self.reported,
                "pages of this file failed their checksum (the first {LOGGED_PER_FILE} are logged above)"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A page with a header, contents, an LSN and its right checksum.
    fn page(block: u32, lsn: u64, fill: u8) -> [u8; PAGE_SIZE] {
        let mut p = [fill; PAGE_SIZE];
        p[..4].copy_from_slice(&((lsn >> 32) as u32).to_le_bytes());
        p[4..8].copy_from_slice(&(lsn as u32).to_le_bytes());
        p[14..16].copy_from_slice(&1000u16.to_le_bytes());
        let sum = page::checksum(&p, block);
        p[8..10].copy_from_slice(&sum.to_le_bytes());
        p
    }

    fn file_of(pages: &[[u8; PAGE_SIZE]]) -> (tempfile::TempDir, File) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut f = File::create(&path).unwrap();
        for p in pages {
            f.write_all(p).unwrap();
        }
        (dir, File::open(&path).unwrap())
    }

    fn read_through(check: &PageCheck, path: &str, file: &File, layout: Layout) -> Vec<u8> {
        let mut out = Vec::new();
        let mut r = check.reader(path, file, layout, file);
        // Odd-sized reads, as a pipe would deliver them.
        let mut buf = [0u8; 3001];
        loop {
            let n = r.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        out
    }

    #[test]
    fn finds_a_corrupt_page_by_file_and_absolute_block() {
        let start = 0x1_0000_0000;
        let mut pages = vec![
            page(RELSEG_BLOCKS, 0x100, 1),
            page(RELSEG_BLOCKS + 1, 0x200, 2),
        ];
        pages[1][500] ^= 0x55; // corrupt, LSN before the start
        pages.push([0u8; PAGE_SIZE]); // new: not checked
        let mut late = page(RELSEG_BLOCKS + 3, start + 5, 3);
        late[600] ^= 1; // written during the backup: replay mends it
        pages.push(late);
        let (_d, f) = file_of(&pages);
        let check = PageCheck::new(Lsn(start));
        let out = read_through(&check, "base/5/16384.1", &f, Layout::Whole);
        assert_eq!(out.len(), pages.len() * PAGE_SIZE);
        assert_eq!(
            check.take_found(),
            vec![CorruptPage {
                file: "base/5/16384.1".into(),
                block: RELSEG_BLOCKS + 1
            }]
        );
    }

    #[test]
    fn other_files_pass_unchecked() {
        let mut bad = page(0, 0x100, 1);
        bad[100] ^= 1;
        let (_d, f) = file_of(&[bad]);
        let check = PageCheck::new(Lsn(u64::MAX));
        read_through(&check, "base/5/PG_VERSION", &f, Layout::Whole);
        read_through(&check, "pg_xact/0000", &f, Layout::Whole);
        assert!(check.take_found().is_empty());
    }

    #[test]
    fn a_page_set_is_checked_with_its_blocks_numbers() {
        let good = page(7, 0x100, 1);
        let mut bad = page(9, 0x100, 2);
        bad[4000] ^= 2;
        // The relation file: blocks 0..10, 7 good and 9 bad.
        let mut pages = vec![[0u8; PAGE_SIZE]; 10];
        pages[7] = good;
        pages[9] = bad;
        let (_d, f) = file_of(&pages);
        // A page set: a 20-byte head, then blocks 7 and 9.
        let mut stream = vec![0xAAu8; 20];
        stream.extend_from_slice(&good);
        stream.extend_from_slice(&bad);
        let check = PageCheck::new(Lsn(u64::MAX));
        let mut r = check.reader(
            "base/5/16384",
            &f,
            Layout::Pages {
                head: 20,
                blocks: vec![7, 9],
            },
            &stream[..],
        );
        io::copy(&mut r, &mut io::sink()).unwrap();
        drop(r);
        assert_eq!(
            check.take_found(),
            vec![CorruptPage {
                file: "base/5/16384".into(),
                block: 9
            }]
        );
    }
}
