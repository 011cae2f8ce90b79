//! The restore plan, pure: for a backup's chain (full backup first), which
//! parts to read, in which order, and what to do with each file in them.
//! For every file of the restored backup, the newest backup of the chain that
//! holds it whole writes it, and each later one's page set patches it; parts
//! holding nothing needed are not read; the restored backup's control part
//! (pg_control) comes last.

use std::collections::{HashMap, HashSet};

use crate::archive::ArchiveError;
use crate::archive::manifest::{FileEntry, Manifest, PartEntry, Stored};

/// What a restore does with one file entry of one backup of the chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// A newer backup of the chain holds this file, or it is gone.
    Skip,
    /// Create the file from the entry's bytes.
    Write { mode: u32 },
    /// Apply the entry's page set to the file an older backup wrote.
    Patch { mode: u32 },
    /// Read the entry and check it against the manifest, writing nothing.
    Verify,
}

/// One part to read, and what to do with each file entry in it.
#[derive(Debug, Clone)]
pub struct PartWork {
    /// Index of its backup in the chain.
    pub backup: usize,
    pub part: PartEntry,
    pub files: HashMap<String, (FileEntry, Action)>,
}

/// The parts of one backup of the chain: data parts in any order, then
/// (for the restored backup) the control part.
#[derive(Debug, Clone, Default)]
pub struct Stage {
    pub data: Vec<PartWork>,
    pub control: Vec<PartWork>,
}

/// The whole restore, oldest backup first: a delta's page sets patch what
/// its ancestors wrote.
#[derive(Debug, Clone, Default)]
pub struct RestorePlan {
    pub stages: Vec<Stage>,
    /// Tar bytes to read, for progress.
    pub bytes: u64,
    pub parts: usize,
}

/// Plans the restore of `chain` (full first, the restored backup last).
pub fn plan(chain: &[Manifest]) -> Result<RestorePlan, ArchiveError> {
    plan_keeping(chain, &HashSet::new())
}

/// Plans the restore of `chain` over a directory where the files in `keep`
/// already hold what the restore would write (`backup-fetch --delta`):
/// those are left alone, and parts holding nothing else are not read.
pub fn plan_keeping(
    chain: &[Manifest],
    keep: &HashSet<String>,
) -> Result<RestorePlan, ArchiveError> {
    let mut sources = sources(chain)?;
    for actions in &mut sources {
        actions.retain(|path, _| !keep.contains(path));
    }
    let mut out = RestorePlan::default();
    for (k, (manifest, actions)) in chain.iter().zip(&sources).enumerate() {
        let is_last = k + 1 == chain.len();
        let by_part = files_by_part(manifest);
        let mut stage = Stage::default();
        for p in &manifest.parts {
            let Some(files) = by_part.get(&p.key) else {
                continue;
            };
            if !files.iter().any(|f| actions.contains_key(&f.path)) {
                continue;
            }
            let work = PartWork {
                backup: k,
                part: p.clone(),
                files: files
                    .iter()
                    .filter(|f| !f.dir)
                    .map(|f| {
                        let action = actions.get(&f.path).copied().unwrap_or(Action::Skip);
                        (f.path.clone(), ((*f).clone(), action))
                    })
                    .collect(),
            };
            out.bytes += p.raw_size;
            out.parts += 1;
            // pg_control last: until it exists, the directory cannot be started.
            if p.control && is_last {
                stage.control.push(work);
            } else {
                stage.data.push(work);
            }
        }
        out.stages.push(stage);
    }
    Ok(out)
}

/// Every part of every backup of `chain`, each entry to be read and checked
/// against its manifest, nothing written (backup-verify).
pub fn verify_all(chain: &[Manifest]) -> RestorePlan {
    let mut out = RestorePlan::default();
    for (k, manifest) in chain.iter().enumerate() {
        let by_part = files_by_part(manifest);
        let mut stage = Stage::default();
        for p in &manifest.parts {
            let files = by_part
                .get(&p.key)
                .map(|files| {
                    files
                        .iter()
                        .filter(|f| !f.dir)
                        .map(|f| (f.path.clone(), ((*f).clone(), Action::Verify)))
                        .collect()
                })
                .unwrap_or_default();
            out.bytes += p.raw_size;
            out.parts += 1;
            stage.data.push(PartWork {
                backup: k,
                part: p.clone(),
                files,
            });
        }
        out.stages.push(stage);
    }
    out
}

/// A file of the restored backup written whole from one entry (no page set
/// of a later backup changes it): a file already holding `size` bytes
/// whose BLAKE3 is `blake3` is what the restore would write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reusable {
    pub path: String,
    pub size: u64,
    pub blake3: String,
    pub mode: u32,
    /// The backup of the chain (its index) that holds the file whole, and
    /// the part (its index in that manifest).
    pub backup: usize,
    pub part: Option<usize>,
}

/// Files a restore over an existing directory may keep when they match,
/// with what they must hold. The control files are always written (they
/// come last, and say where recovery starts).
pub fn reusable(chain: &[Manifest]) -> Result<Vec<Reusable>, ArchiveError> {
    let sources = sources(chain)?;
    let by_path: Vec<HashMap<&str, &FileEntry>> = chain
        .iter()
        .map(|m| m.files.iter().map(|f| (f.path.as_str(), f)).collect())
        .collect();
    let mut out = Vec::new();
    for (k, actions) in sources.iter().enumerate() {
        for (path, action) in actions {
            if !matches!(action, Action::Write { .. }) || CONTROL_FILES.contains(&path.as_str()) {
                continue;
            }
            let Some(whole) = by_path[k].get(path.as_str()) else {
                continue;
            };
            // Later page sets must leave the file as it is: no pages, the
            // same length (how an incremental backup stores a relation file
            // unchanged since its parent).
            let untouched =
                sources[k + 1..]
                    .iter()
                    .enumerate()
                    .all(|(j, later)| match later.get(path) {
                        None => true,
                        Some(Action::Patch { .. }) => {
                            by_path[k + 1 + j].get(path.as_str()).is_some_and(|e| {
                                matches!(e.stored, Stored::Pages { pages: 0, .. })
                                    && e.size == whole.size
                            })
                        }
                        Some(_) => false,
                    });
            if untouched {
                out.push(Reusable {
                    path: path.clone(),
                    size: whole.size,
                    blake3: whole.blake3.clone(),
                    mode: match action {
                        Action::Write { mode } => *mode,
                        _ => whole.mode,
                    },
                    backup: k,
                    part: whole.part,
                });
            }
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// Written on every restore, never kept.
const CONTROL_FILES: [&str; 4] = [
    "global/pg_control",
    "backup_label",
    "tablespace_map",
    "backup_manifest",
];

/// For each backup of `chain` (full first), the files to take from it: for
/// every file of the last backup, the newest backup that holds it whole, then
/// each later one's page set. Files of older backups that the last one does
/// not list were removed, and are never written.
fn sources(chain: &[Manifest]) -> Result<Vec<HashMap<String, Action>>, ArchiveError> {
    let Some(last) = chain.last() else {
        return Ok(Vec::new());
    };
    let maps: Vec<HashMap<&str, &FileEntry>> = chain
        .iter()
        .map(|m| {
            m.files
                .iter()
                .filter(|f| !f.dir)
                .map(|f| (f.path.as_str(), f))
                .collect()
        })
        .collect();
    let mut out = vec![HashMap::new(); chain.len()];
    for f in last.files.iter().filter(|f| !f.dir) {
        let mut k = chain.len() - 1;
        loop {
            let broken = |reason: String| ArchiveError::BrokenChain {
                name: last.name.clone(),
                reason,
            };
            let e = maps[k].get(f.path.as_str()).ok_or_else(|| {
                broken(format!(
                    "file {} is not in {}, on which the next backup of the chain builds",
                    f.path, chain[k].name
                ))
            })?;
            match e.stored {
                Stored::Whole => {
                    out[k].insert(f.path.clone(), Action::Write { mode: f.mode });
                    break;
                }
                Stored::Pages { .. } => {
                    out[k].insert(f.path.clone(), Action::Patch { mode: f.mode });
                }
                Stored::Unchanged => {}
            }
            if k == 0 {
                return Err(broken(format!(
                    "no backup of its chain holds file {} whole",
                    f.path
                )));
            }
            k -= 1;
        }
    }
    Ok(out)
}

fn files_by_part(manifest: &Manifest) -> HashMap<String, Vec<&FileEntry>> {
    let mut by_part: HashMap<String, Vec<&FileEntry>> = HashMap::new();
    for f in &manifest.files {
        if let Some(p) = f.part.and_then(|i| manifest.parts.get(i)) {
            by_part.entry(p.key.clone()).or_default().push(f);
        }
    }
    by_part
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::manifest::Kind;

    fn file(path: &str, part: usize, stored: Stored) -> FileEntry {
        FileEntry {
            path: path.into(),
            dir: false,
            size: 8192,
            mode: 0o600,
            blake3: "x".into(),
            part: (stored != Stored::Unchanged).then_some(part),
            stored,
        }
    }

    fn part(key: &str, control: bool) -> PartEntry {
        PartEntry {
            key: key.into(),
            raw_size: 10,
            stored_size: 5,
            blake3: "y".into(),
            control,
            index: None,
        }
    }

    /// A full backup (base/1/10, base/1/11, base/1/gone, pg_control) and a
    /// delta on it: base/1/10 as a page set, base/1/11 unchanged, gone gone.
    fn full_and_delta() -> [Manifest; 2] {
        let mut full = crate::archive::manifest::tests::sample();
        full.parts = vec![part("part_00001.tar", false), part("part_00002.tar", true)];
        full.files = vec![
            file("base/1/10", 0, Stored::Whole),
            file("base/1/11", 0, Stored::Whole),
            file("base/1/gone", 0, Stored::Whole),
            file("global/pg_control", 1, Stored::Whole),
        ];
        let mut delta = full.clone();
        delta.name = "base_d".into();
        delta.kind = Kind::Delta;
        delta.parent = Some(full.name.clone());
        delta.chain_depth = 1;
        delta.files = vec![
            file(
                "base/1/10",
                0,
                Stored::Pages {
                    bytes: 10,
                    pages: 1,
                },
            ),
            file("base/1/11", 0, Stored::Unchanged),
            file("global/pg_control", 1, Stored::Whole),
        ];
        [full, delta]
    }

    #[test]
    fn each_file_comes_from_its_newest_whole_copy_then_page_sets() {
        let [full, delta] = full_and_delta();
        let p = plan(&[full, delta]).unwrap();
        assert_eq!(p.stages.len(), 2);
        // The full backup's control part holds only pg_control, which the
        // delta has whole: not read.
        assert_eq!(p.stages[0].data.len(), 1);
        assert!(p.stages[0].control.is_empty());
        let first = &p.stages[0].data[0].files;
        assert_eq!(first["base/1/10"].1, Action::Write { mode: 0o600 });
        assert_eq!(first["base/1/11"].1, Action::Write { mode: 0o600 });
        assert_eq!(first["base/1/gone"].1, Action::Skip);
        assert_eq!(
            p.stages[1].data[0].files["base/1/10"].1,
            Action::Patch { mode: 0o600 }
        );
        assert_eq!(p.stages[1].control.len(), 1);
        assert_eq!(p.parts, 3);
    }

    #[test]
    fn only_files_written_whole_and_never_patched_may_be_kept() {
        let mut chain = full_and_delta();
        let kept = reusable(&chain).unwrap();
        assert_eq!(
            kept.iter().map(|r| r.path.as_str()).collect::<Vec<_>>(),
            ["base/1/11"]
        );
        // A page set of no pages at the same length (an incremental's
        // unchanged file) leaves the file as its whole copy: kept too.
        chain[1].files[0].stored = Stored::Pages {
            bytes: 24,
            pages: 0,
        };
        let kept = reusable(&chain).unwrap();
        assert_eq!(kept.len(), 2);
        assert_eq!(kept[0].blake3, chain[0].files[0].blake3);
        // At another length it is not.
        chain[1].files[0].size = 16384;
        assert_eq!(reusable(&chain).unwrap().len(), 1);
        // Keeping it leaves the full backup's data part for base/1/10 only.
        let p = plan_keeping(&chain, &HashSet::from(["base/1/11".to_string()])).unwrap();
        assert_eq!(p.stages[0].data[0].files["base/1/11"].1, Action::Skip);
        assert_eq!(
            p.stages[0].data[0].files["base/1/10"].1,
            Action::Write { mode: 0o600 }
        );
        // Nothing else needed from a part: it is not read at all.
        let all = HashSet::from(["base/1/10".to_string(), "base/1/11".to_string()]);
        let p = plan_keeping(&chain, &all).unwrap();
        assert!(p.stages[0].data.is_empty());
    }

    #[test]
    fn a_chain_without_a_whole_copy_is_refused() {
        let mut lone = crate::archive::manifest::tests::sample();
        lone.files = vec![file("base/1/10", 0, Stored::Unchanged)];
        let e = plan(&[lone]).unwrap_err().to_string();
        assert!(e.contains("holds file base/1/10 whole"), "{e}");
    }
}
