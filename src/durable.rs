//! The one way cairn writes a local file that others read: into a temporary
//! name in the same directory, then renamed into place, so that no reader
//! ever sees a partial file; with the durability the caller chooses. All of
//! it is blocking: async callers use [`write`] or run [`TempFile`] on a
//! blocking thread.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// How much survives an operating-system crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Whole or absent for readers now; after an OS crash the file may be
    /// empty or torn (for files read at once and never trusted later).
    Atomic,
    /// Whole or absent even after an OS crash: the data is synced before the
    /// rename, and the directory after it.
    Durable,
}

/// Marker in temporary names, so that cleanups can recognise leftovers:
/// `.<name>.cairn-tmp.<pid>.<n>`.
pub const TMP_MARK: &str = ".cairn-tmp.";

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A temporary name next to `path`, unique in this process.
pub fn tmp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    path.with_file_name(format!(".{name}{TMP_MARK}{}.{n}", std::process::id()))
}

/// The process id in a temporary name, when it is one.
pub fn tmp_owner(name: &str) -> Option<i32> {
    let (_, rest) = name.split_once(TMP_MARK)?;
    rest.split('.').next()?.parse().ok()
}

/// A file being written under a temporary name; removed on drop unless
/// committed.
pub struct TempFile {
    file: Option<File>,
    tmp: PathBuf,
    dest: PathBuf,
}

impl TempFile {
    pub fn create(dest: &Path) -> io::Result<TempFile> {
        let tmp = tmp_path(dest);
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        Ok(TempFile {
            file: Some(file),
            tmp,
            dest: dest.to_path_buf(),
        })
    }

    pub fn file(&mut self) -> &mut File {
        self.file.as_mut().expect("open until committed")
    }

    /// Renames the file into place.
    pub fn commit(mut self, durability: Durability) -> io::Result<()> {
        let file = self.file.take().expect("committed once");
        if durability == Durability::Durable {
            file.sync_all()?;
        }
        drop(file);
        std::fs::rename(&self.tmp, &self.dest)?;
        if durability == Durability::Durable {
            sync_dir(&self.dest)?;
        }
        Ok(())
    }
}

impl Write for TempFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file().write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file().flush()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Syncs the directory holding `path`, so that a rename into it survives.
pub fn sync_dir(path: &Path) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)?.sync_all()
}

/// Writes `bytes` as the whole of `path` (blocking).
pub fn write_file(path: &Path, bytes: &[u8], durability: Durability) -> io::Result<()> {
    let mut f = TempFile::create(path)?;
    f.write_all(bytes)?;
    f.commit(durability)
}

/// Writes `bytes` as the whole of `path`, on a blocking thread.
pub async fn write(path: PathBuf, bytes: Vec<u8>, durability: Durability) -> io::Result<()> {
    tokio::task::spawn_blocking(move || write_file(&path, &bytes, durability))
        .await
        .map_err(io::Error::other)?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_whole_files_and_leaves_no_temporaries() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        write_file(&p, b"one", Durability::Durable).unwrap();
        write_file(&p, b"two", Durability::Atomic).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        {
            let mut t = TempFile::create(&p).unwrap();
            t.write_all(b"abandoned").unwrap();
        }
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["f".to_string()]);
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        let t = tmp_path(&p);
        let name = t.file_name().unwrap().to_str().unwrap();
        assert_eq!(tmp_owner(name), Some(std::process::id() as i32));
        assert_eq!(tmp_owner("f"), None);
    }
}
