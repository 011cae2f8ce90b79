//! A large file's 1 MiB units and their BLAKE3 chaining values. BLAKE3 is a
//! tree: the hash of a file is built from the chaining values ("CVs") of its
//! aligned 1 MiB subtrees, so a backup can record every unit's CV at no extra
//! hashing cost, a restore can tell which units of a local file differ by
//! hashing them one by one, and the CVs merge back into the file's hash,
//! which the manifest holds. Built on `blake3::hazmat`; tested against
//! `blake3::hash`.

use blake3::hazmat::{
    ChainingValue, HasherExt, Mode, merge_subtrees_non_root, merge_subtrees_root,
};

/// Bytes per unit: a power of two of BLAKE3 chunks, so units are subtrees.
pub const UNIT: u64 = 1 << 20;

/// A unit's chaining value.
pub type UnitCv = ChainingValue;

/// How many units a file of `size` bytes has; files of one unit or less have
/// none (their hash is their only checksum).
pub fn unit_count(size: u64) -> u64 {
    if size > UNIT { size.div_ceil(UNIT) } else { 0 }
}

/// The CV of unit `index` (its bytes: `UNIT`, or fewer for the file's last)
/// of a file larger than one unit.
pub fn unit_cv(index: u64, bytes: &[u8]) -> UnitCv {
    let mut h = blake3::Hasher::new();
    h.set_input_offset(index * UNIT);
    h.update(bytes);
    h.finalize_non_root()
}

/// The BLAKE3 hash of a file from its units' CVs (at least two).
pub fn root_of(cvs: &[UnitCv]) -> Option<blake3::Hash> {
    if cvs.len() < 2 {
        return None;
    }
    let left = left_len(cvs.len());
    Some(merge_subtrees_root(
        &subtree(&cvs[..left]),
        &subtree(&cvs[left..]),
        Mode::Hash,
    ))
}

/// The left subtree of `n` units: the largest power of two below `n`, as
/// BLAKE3 splits its input (the last unit may be short; it holds at least a
/// byte, so the rule is the same as for full units).
fn left_len(n: usize) -> usize {
    debug_assert!(n >= 2);
    1 << (usize::BITS - 1 - (n - 1).leading_zeros())
}

fn subtree(cvs: &[UnitCv]) -> UnitCv {
    if cvs.len() == 1 {
        return cvs[0];
    }
    let left = left_len(cvs.len());
    merge_subtrees_non_root(&subtree(&cvs[..left]), &subtree(&cvs[left..]), Mode::Hash)
}

/// Hashes a file of known size as it streams past: its BLAKE3 and, when it
/// is larger than one unit, every unit's CV.
pub struct UnitHasher {
    units: bool,
    whole: blake3::Hasher,
    unit: blake3::Hasher,
    index: u64,
    filled: u64,
    cvs: Vec<UnitCv>,
}

impl UnitHasher {
    pub fn new(size: u64) -> Self {
        UnitHasher {
            units: size > UNIT,
            whole: blake3::Hasher::new(),
            unit: blake3::Hasher::new(),
            index: 0,
            filled: 0,
            cvs: Vec::with_capacity(unit_count(size) as usize),
        }
    }

    pub fn update(&mut self, mut data: &[u8]) {
        if !self.units {
            self.whole.update(data);
            return;
        }
        while !data.is_empty() {
            // A full unit ends only when more follows: a file that turns out
            // to be one unit long is then hashed as a root, not a subtree.
            if self.filled == UNIT {
                self.end_unit();
            }
            let n = data.len().min((UNIT - self.filled) as usize);
            self.unit.update(&data[..n]);
            self.filled += n as u64;
            data = &data[n..];
        }
    }

    fn end_unit(&mut self) {
        self.cvs.push(self.unit.finalize_non_root());
        self.index += 1;
        self.filled = 0;
        self.unit = blake3::Hasher::new();
        self.unit.set_input_offset(self.index * UNIT);
    }

    /// The file's hash and its units' CVs (none for a file of one unit or
    /// less, even if it was declared larger).
    pub fn finalize(mut self) -> (blake3::Hash, Vec<UnitCv>) {
        if !self.units {
            return (self.whole.finalize(), Vec::new());
        }
        if self.cvs.is_empty() {
            // At most one unit went in: the hasher is at offset 0, a root.
            return (self.unit.finalize(), Vec::new());
        }
        self.end_unit();
        // At least two CVs now, so there is a root.
        let root = root_of(&self.cvs).unwrap_or_else(|| blake3::hash(&[]));
        (root, self.cvs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 4093) as u8).collect()
    }

    #[test]
    fn units_merge_into_the_file_hash() {
        let u = UNIT as usize;
        for len in [
            u + 1,
            u + 1023,
            u + 1024,
            2 * u,
            2 * u + 5,
            3 * u,
            3 * u + 4097,
            4 * u,
            5 * u - 1,
            7 * u + 3,
            8 * u,
            9 * u + 1,
        ] {
            let data = bytes(len);
            let cvs: Vec<UnitCv> = data
                .chunks(u)
                .enumerate()
                .map(|(i, c)| unit_cv(i as u64, c))
                .collect();
            assert_eq!(cvs.len() as u64, unit_count(len as u64));
            assert_eq!(root_of(&cvs), Some(blake3::hash(&data)), "{len}");
            // And streamed in odd pieces.
            let mut h = UnitHasher::new(len as u64);
            for piece in data.chunks(300_001) {
                h.update(piece);
            }
            let (root, streamed) = h.finalize();
            assert_eq!(root, blake3::hash(&data), "{len}");
            assert_eq!(streamed, cvs);
        }
    }

    #[test]
    fn small_files_have_no_units() {
        for (len, declared) in [
            (0, 0),
            (1, 1),
            (UNIT as usize, UNIT),
            (UNIT as usize, 3 * UNIT),
            (5, 3 * UNIT),
        ] {
            let data = bytes(len);
            let mut h = UnitHasher::new(declared);
            h.update(&data);
            let (root, cvs) = h.finalize();
            assert_eq!(root, blake3::hash(&data));
            assert!(cvs.is_empty());
            assert_eq!(unit_count(len as u64), 0);
        }
        assert_eq!(root_of(&[[0; 32]]), None);
    }
}
