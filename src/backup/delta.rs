//! Delta backups: what a backup built on a parent stores of each file. A
//! relation's main fork that the parent has is stored as a *page set*, the
//! pages whose LSN is at or after the parent's start (everything WAL replay
//! from the parent's start could not rebuild) plus the file's new length; any
//! other file is stored whole when its bytes changed and not at all otherwise.
//! Files gone since the parent are simply absent from the delta's manifest.
//!
//! The visibility map and free space map forks are compared whole: their pages
//! change without their LSN moving (a heap update clears visibility bits
//! without stamping the map page; the free space map is not WAL-logged), so a
//! page LSN cannot tell whether they changed. PostgreSQL's own incremental
//! backup sends the free space map whole for the same reason.
//!
//! Page-set entry format (one tar entry, `docs/FORMAT.md`):
//! ```text
//! 8    magic "CAIRNPS1"
//! 4    page size, u32 LE (8192)
//! 8    file length after the backup, u64 LE
//! 4    n, u32 LE
//! 4·n  page numbers, u32 LE, strictly ascending, each below length / page size
//! n·8192  the pages, in that order
//! ```

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;

use super::rate::{Paced, Reads};
use crate::archive::manifest::{FileEntry, Manifest, Stored};
use crate::pg::datadir::is_relation_file;
use crate::pg::page::{PAGE_SIZE, page_lsn};
use crate::pg::wal::Lsn;

const MAGIC: &[u8; 8] = b"CAIRNPS1";
const HEADER_LEN: usize = 24;

/// What a delta is built on: the parent's name, start LSN and files.
#[derive(Debug, Clone)]
pub struct DeltaBase {
    pub parent: String,
    /// The WAL file the parent started in: deltas are named
    /// `base_<start WAL file>_D_<this>`.
    pub parent_start_wal_file: String,
    pub from_lsn: Lsn,
    pub chain_depth: u32,
    files: HashMap<String, FileEntry>,
}

/// How a delta stores one file.
#[derive(Debug, PartialEq, Eq)]
pub enum FilePlan {
    Whole,
    /// The parent's bytes; `blake3` is carried over from its entry.
    Unchanged {
        blake3: String,
    },
    /// These pages (ascending numbers).
    Pages(Vec<u32>),
}

impl DeltaBase {
    pub fn new(parent: &Manifest) -> DeltaBase {
        DeltaBase {
            parent: parent.name.clone(),
            parent_start_wal_file: parent.start_wal_file.to_string(),
            from_lsn: parent.start_lsn,
            chain_depth: parent.chain_depth + 1,
            files: parent
                .files
                .iter()
                .filter(|f| !f.dir)
                .map(|f| (f.path.clone(), f.clone()))
                .collect(),
        }
    }

    /// Decides how to store `path` (open as `file`, `size` bytes now),
    /// reading it once; leaves `file` positioned at its start.
    pub fn plan_file(
        &self,
        path: &str,
        file: &mut File,
        size: u64,
        reads: Reads<'_>,
    ) -> io::Result<FilePlan> {
        let Some(old) = self.files.get(path) else {
            return Ok(FilePlan::Whole);
        };
        let plan = if is_paged(path) {
            if !size.is_multiple_of(PAGE_SIZE as u64) {
                // A page being added as we look: store it all, replay mends it.
                FilePlan::Whole
            } else {
                let pages = changed_pages(file, size, old.size, self.from_lsn, reads)?;
                if pages.is_empty() && size == old.size {
                    FilePlan::Unchanged {
                        blake3: String::new(),
                    }
                } else {
                    FilePlan::Pages(pages)
                }
            }
        } else if matches!(old.stored, Stored::Pages { .. }) || old.size != size {
            FilePlan::Whole
        } else {
            let mut hasher = blake3::Hasher::new();
            io::copy(
                &mut Paced::new(Read::by_ref(file).take(size), reads),
                &mut hasher,
            )?;
            let digest = crate::codec::hex(hasher.finalize().as_bytes());
            if digest == old.blake3 {
                FilePlan::Unchanged { blake3: digest }
            } else {
                FilePlan::Whole
            }
        };
        file.seek(SeekFrom::Start(0))?;
        Ok(plan)
    }
}

/// Main-fork relation data files in database directories (`16384`,
/// `16384.1`), the files deltas store page by page; other forks are small and
/// compared whole (see the module comment).
pub fn is_paged(path: &str) -> bool {
    let in_database = path.starts_with("base/") || path.starts_with("pg_tblspc/");
    let name = path.rsplit('/').next().unwrap_or(path);
    in_database && is_relation_file(name) && !name.contains('_')
}

/// Pages of a `size`-byte relation file that a restore of the parent (a
/// `parent_size`-byte file) cannot rebuild by WAL replay from `from`: changed
/// at or after `from`, past the parent's end, or all zeros with no LSN (a page
/// the relation was extended by, perhaps where the parent had one before a
/// truncation). A page with no LSN but with contents was written while the
/// server did not log (wal_level minimal, before archiving was on): any change
/// since would have given it an LSN, so the parent's copy is current.
fn changed_pages(
    file: &mut File,
    size: u64,
    parent_size: u64,
    from: Lsn,
    reads: Reads<'_>,
) -> io::Result<Vec<u32>> {
    let mut pages = Vec::new();
    let mut buf = vec![0u8; 128 * PAGE_SIZE];
    let mut at = 0u64;
    let old_pages = parent_size / PAGE_SIZE as u64;
    while at < size {
        let want = buf.len().min((size - at) as usize);
        let n = read_full(file, &mut buf[..want])?;
        reads.took(n);
        if n == 0 {
            break; // shrunk since the walk; replay truncates it again
        }
        for (i, page) in buf[..n].chunks(PAGE_SIZE).enumerate() {
            let no = at / PAGE_SIZE as u64 + i as u64;
            let lsn = page_lsn(page);
            let new = lsn == Lsn(0) && page.iter().all(|&b| b == 0);
            if no >= old_pages || lsn >= from || new {
                pages.push(u32::try_from(no).map_err(|_| {
                    io::Error::new(io::ErrorKind::InvalidData, "relation file too large")
                })?);
            }
        }
        at += n as u64;
    }
    Ok(pages)
}

fn read_full(file: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Length of the page-set entry for `pages` pages.
pub fn page_set_len(pages: usize) -> u64 {
    HEADER_LEN as u64 + pages as u64 * (4 + PAGE_SIZE as u64)
}

/// The head of a page-set entry: what a file of `file_len` bytes becomes
/// by the `pages` that follow, in this order.
pub fn page_set_head(file_len: u64, pages: &[u32]) -> Vec<u8> {
    let mut head = Vec::with_capacity(HEADER_LEN + 4 * pages.len());
    head.extend_from_slice(MAGIC);
    head.extend_from_slice(&(PAGE_SIZE as u32).to_le_bytes());
    head.extend_from_slice(&file_len.to_le_bytes());
    head.extend_from_slice(&(pages.len() as u32).to_le_bytes());
    for p in pages {
        head.extend_from_slice(&p.to_le_bytes());
    }
    head
}

/// Reads a page-set entry out of a relation file: the header, then each page
/// as it is now (zeros past a shrunk end; WAL replay repairs both).
pub struct PageSetReader<'a> {
    file: &'a File,
    head: Vec<u8>,
    pages: Vec<u32>,
    /// Bytes of the entry handed out so far.
    pos: u64,
}

impl<'a> PageSetReader<'a> {
    pub fn new(file: &'a File, size: u64, pages: Vec<u32>) -> Self {
        let head = page_set_head(size, &pages);
        PageSetReader {
            file,
            head,
            pages,
            pos: 0,
        }
    }

    pub fn len(&self) -> u64 {
        page_set_len(self.pages.len())
    }

    /// Bytes before the first page: the header and the block list.
    pub fn head_len(&self) -> u64 {
        self.head.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.pages.is_empty()
    }
}

impl Read for PageSetReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let head = self.head.len() as u64;
        if self.pos < head {
            let from = self.pos as usize;
            let n = buf.len().min(self.head.len() - from);
            buf[..n].copy_from_slice(&self.head[from..from + n]);
            self.pos += n as u64;
            return Ok(n);
        }
        let body = self.pos - head;
        let index = (body / PAGE_SIZE as u64) as usize;
        let Some(&page) = self.pages.get(index) else {
            return Ok(0);
        };
        let within = body % PAGE_SIZE as u64;
        let n = buf.len().min((PAGE_SIZE as u64 - within) as usize);
        let offset = page as u64 * PAGE_SIZE as u64 + within;
        let got = loop {
            match self.file.read_at(&mut buf[..n], offset) {
                Ok(k) => break k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        };
        if got == 0 {
            buf[..n].fill(0);
            self.pos += n as u64;
            return Ok(n);
        }
        self.pos += got as u64;
        Ok(got)
    }
}

/// The head of a page-set entry, as a restore reads it.
#[derive(Debug, PartialEq, Eq)]
pub struct PageSetHead {
    /// The file's length after applying the set.
    pub file_len: u64,
    pub pages: Vec<u32>,
}

impl PageSetHead {
    /// Reads and checks the head of an entry of `entry_len` bytes.
    pub fn read_from<R: Read>(r: &mut R, entry_len: u64) -> Result<PageSetHead, String> {
        let mut head = [0u8; HEADER_LEN];
        r.read_exact(&mut head)
            .map_err(|e| format!("page set header unreadable: {e}"))?;
        if &head[..8] != MAGIC {
            return Err("not a cairn page set (bad magic)".into());
        }
        let u32_at =
            |at: usize| u32::from_le_bytes([head[at], head[at + 1], head[at + 2], head[at + 3]]);
        let page_size = u32_at(8);
        if page_size as usize != PAGE_SIZE {
            return Err(format!(
                "page size {page_size}, this cairn restores {PAGE_SIZE}"
            ));
        }
        let mut len8 = [0u8; 8];
        len8.copy_from_slice(&head[12..20]);
        let file_len = u64::from_le_bytes(len8);
        let count = u32_at(20) as usize;
        if page_set_len(count) != entry_len {
            return Err(format!(
                "{count} pages do not fill an entry of {entry_len} bytes"
            ));
        }
        let mut raw = vec![0u8; 4 * count];
        r.read_exact(&mut raw)
            .map_err(|e| format!("page list unreadable: {e}"))?;
        let pages: Vec<u32> = raw
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let in_file = file_len / PAGE_SIZE as u64;
        let ordered = pages.windows(2).all(|w| w[0] < w[1]);
        if !ordered || pages.last().is_some_and(|&p| u64::from(p) >= in_file) {
            return Err("page numbers out of order or past the file's end".into());
        }
        Ok(PageSetHead { file_len, pages })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn page(lsn: u64, fill: u8) -> Vec<u8> {
        let mut p = vec![fill; PAGE_SIZE];
        p[..4].copy_from_slice(&((lsn >> 32) as u32).to_le_bytes());
        p[4..8].copy_from_slice(&(lsn as u32).to_le_bytes());
        p
    }

    fn base(entries: &[(&str, u64, &str)]) -> DeltaBase {
        DeltaBase {
            parent: "base_1".into(),
            parent_start_wal_file: "000000010000000000000001".into(),
            from_lsn: Lsn(0x100),
            chain_depth: 1,
            files: entries
                .iter()
                .map(|(p, size, b)| {
                    let e = FileEntry {
                        path: p.to_string(),
                        dir: false,
                        size: *size,
                        mode: 0o600,
                        blake3: b.to_string(),
                        part: Some(0),
                        stored: Stored::Whole,
                    };
                    (p.to_string(), e)
                })
                .collect(),
        }
    }

    #[test]
    fn relation_files_in_databases_are_paged() {
        assert!(is_paged("base/5/16384"));
        assert!(is_paged("base/5/16384.2"));
        assert!(is_paged("pg_tblspc/16400/PG_15_202209061/5/16401"));
        // Their pages change without their LSN moving: compared whole.
        assert!(!is_paged("base/5/16384_vm"));
        assert!(!is_paged("pg_tblspc/16400/PG_15_202209061/5/16401_fsm"));
        assert!(!is_paged("base/5/16384_init"));
        assert!(!is_paged("global/1262"));
        assert!(!is_paged("base/5/PG_VERSION"));
        assert!(!is_paged("pg_xact/0000"));
    }

    #[test]
    fn pages_changed_new_or_unlogged_are_stored_and_the_set_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("16384");
        let mut f = File::create(&path).unwrap();
        // 0: old; 1: changed; 2: new (zero); 3: written unlogged before
        // archiving, unchanged since; 4: new past the parent's end.
        for p in [
            page(0x50, 1),
            page(0x200, 2),
            vec![0; PAGE_SIZE],
            page(0, 4),
            page(0x10, 3),
        ] {
            f.write_all(&p).unwrap();
        }
        drop(f);
        let b = base(&[("base/5/16384", 4 * PAGE_SIZE as u64, "")]);
        let mut f = File::open(&path).unwrap();
        let size = 5 * PAGE_SIZE as u64;
        let plan = b
            .plan_file("base/5/16384", &mut f, size, Reads::FREE)
            .unwrap();
        assert_eq!(plan, FilePlan::Pages(vec![1, 2, 4]));
        let FilePlan::Pages(pages) = plan else {
            unreachable!()
        };
        let mut set = PageSetReader::new(&f, size, pages);
        let len = set.len();
        let mut bytes = Vec::new();
        set.read_to_end(&mut bytes).unwrap();
        assert_eq!(bytes.len() as u64, len);
        let mut r = &bytes[..];
        let head = PageSetHead::read_from(&mut r, len).unwrap();
        assert_eq!(
            head,
            PageSetHead {
                file_len: size,
                pages: vec![1, 2, 4]
            }
        );
        assert_eq!(&r[..PAGE_SIZE], &page(0x200, 2)[..]);
        assert_eq!(r.len(), 3 * PAGE_SIZE);
        // A damaged head is refused with a reason.
        let mut bad = bytes.clone();
        bad[0] = b'X';
        assert!(PageSetHead::read_from(&mut &bad[..], len).is_err());
        assert!(PageSetHead::read_from(&mut &bytes[..], len + 1).is_err());
    }

    #[test]
    fn unchanged_files_are_not_stored() {
        let dir = tempfile::tempdir().unwrap();
        let rel = dir.path().join("rel");
        std::fs::write(&rel, [page(0x50, 1), page(0x60, 2)].concat()).unwrap();
        let conf = dir.path().join("conf");
        std::fs::write(&conf, b"same").unwrap();
        let same = crate::codec::hex(blake3::hash(b"same").as_bytes());
        let b = base(&[
            ("base/5/16384", 2 * PAGE_SIZE as u64, ""),
            ("postgresql.conf", 4, &same),
            ("pg_hba.conf", 4, "other"),
        ]);
        let mut f = File::open(&rel).unwrap();
        let plan = b
            .plan_file("base/5/16384", &mut f, 2 * PAGE_SIZE as u64, Reads::FREE)
            .unwrap();
        assert_eq!(
            plan,
            FilePlan::Unchanged {
                blake3: String::new()
            }
        );
        let mut f = File::open(&conf).unwrap();
        assert_eq!(
            b.plan_file("postgresql.conf", &mut f, 4, Reads::FREE)
                .unwrap(),
            FilePlan::Unchanged { blake3: same }
        );
        let mut f = File::open(&conf).unwrap();
        assert_eq!(
            b.plan_file("pg_hba.conf", &mut f, 4, Reads::FREE).unwrap(),
            FilePlan::Whole
        );
        let mut f = File::open(&conf).unwrap();
        assert_eq!(
            b.plan_file("new_file", &mut f, 4, Reads::FREE).unwrap(),
            FilePlan::Whole
        );
        // A shrunk relation keeps no pages but a new length.
        let mut f = File::open(&rel).unwrap();
        let b = base(&[("base/5/16384", 3 * PAGE_SIZE as u64, "")]);
        let plan = b
            .plan_file("base/5/16384", &mut f, 2 * PAGE_SIZE as u64, Reads::FREE)
            .unwrap();
        assert_eq!(plan, FilePlan::Pages(vec![]));
    }
}
