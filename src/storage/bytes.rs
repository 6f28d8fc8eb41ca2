//! Read-only bytes shared by the tensors of one file: a memory map of the file, or bytes held
//! in memory. Cloning shares them; a sub-range is a cheap view.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

/// What owns the bytes: a `Vec` or a memory map.
trait Owner: Send + Sync {
    fn bytes(&self) -> &[u8];
}

impl Owner for Vec<u8> {
    fn bytes(&self) -> &[u8] {
        self
    }
}

impl Owner for memmap2::Mmap {
    fn bytes(&self) -> &[u8] {
        self
    }
}

/// A range of read-only bytes, shared: the whole of a file mapped into memory or read into a
/// `Vec`, or a part of one.
#[derive(Clone)]
pub struct SharedBytes {
    owner: Arc<dyn Owner>,
    start: usize,
    len: usize,
    mapped: bool,
}

impl fmt::Debug for SharedBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedBytes")
            .field("len", &self.len)
            .field("mapped", &self.mapped)
            .finish()
    }
}

/// Element types whose every bit pattern is a value, so little-endian file bytes can be viewed
/// as a slice of them in place.
pub trait Plain: Copy + Send + Sync + 'static + private::Sealed {}
impl Plain for u8 {}
impl Plain for u16 {}
impl Plain for u32 {}
impl Plain for f32 {}
impl Plain for half::f16 {}
impl Plain for half::bf16 {}

mod private {
    pub trait Sealed {}
    impl Sealed for u8 {}
    impl Sealed for u16 {}
    impl Sealed for u32 {}
    impl Sealed for f32 {}
    impl Sealed for half::f16 {}
    impl Sealed for half::bf16 {}
}

impl SharedBytes {
    /// Bytes held in memory.
    pub fn from_vec(bytes: Vec<u8>) -> Self {
        let len = bytes.len();
        SharedBytes {
            owner: Arc::new(bytes),
            start: 0,
            len,
            mapped: false,
        }
    }

    /// The whole of `file`, mapped read-only into memory.
    ///
    /// The mapping assumes that nothing truncates or rewrites the file while it is mapped (the
    /// crate's own writers replace files by renaming, which leaves a mapping of the old file
    /// intact). An empty file is held as an empty `Vec` (it cannot be mapped).
    ///
    /// # Errors
    /// What the operating system says if the file cannot be mapped.
    pub fn map(file: &std::fs::File) -> std::io::Result<Self> {
        if file.metadata()?.len() == 0 {
            return Ok(Self::from_vec(Vec::new()));
        }
        // SAFETY: the map is read-only and private to this process; the crate never writes the
        // file in place, and the documented contract is that no other process truncates or
        // rewrites it while mapped (the same contract as every memory-mapping model loader).
        let map = unsafe { memmap2::Mmap::map(file)? };
        let len = map.len();
        Ok(SharedBytes {
            owner: Arc::new(map),
            start: 0,
            len,
            mapped: true,
        })
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        &self.owner.bytes()[self.start..self.start + self.len]
    }

    /// Number of bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the bytes are a memory-mapped file (rather than bytes in memory).
    pub fn is_mapped(&self) -> bool {
        self.mapped
    }

    /// The bytes of `range` (relative to these), sharing the owner; `None` if it does not lie
    /// within them.
    pub fn slice(&self, range: Range<usize>) -> Option<SharedBytes> {
        if range.start > range.end || range.end > self.len {
            return None;
        }
        Some(SharedBytes {
            owner: self.owner.clone(),
            start: self.start + range.start,
            len: range.end - range.start,
            mapped: self.mapped,
        })
    }

    /// The bytes seen in place as little-endian values of `T`: `None` if their start is not
    /// aligned for `T`, their length is not a multiple of its size, or the target is
    /// big-endian (callers then decode a copy).
    pub fn values<T: Plain>(&self) -> Option<&[T]> {
        if cfg!(target_endian = "big") {
            return None;
        }
        let bytes = self.as_slice();
        // SAFETY: `T` is `Plain` (every bit pattern is a value, no padding, no drop), and
        // `align_to` only hands out the part of the slice that is aligned for `T`.
        let (head, body, tail) = unsafe { bytes.align_to::<T>() };
        (head.is_empty() && tail.is_empty()).then_some(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_share_and_check_bounds() {
        let b = SharedBytes::from_vec((0u8..16).collect());
        let s = b.slice(4..12).unwrap();
        assert_eq!(s.as_slice(), &[4, 5, 6, 7, 8, 9, 10, 11]);
        assert_eq!(s.slice(2..4).unwrap().as_slice(), &[6, 7]);
        assert!(s.slice(4..9).is_none());
        #[allow(clippy::reversed_empty_ranges)]
        let backwards = s.slice(3..2);
        assert!(backwards.is_none());
        assert!(!s.is_mapped());
    }

    #[test]
    fn values_in_place_only_when_aligned() {
        let words: Vec<u8> = [1.5f32, -2.0, 3.25]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let mut padded = vec![0u8; 4];
        padded.extend(&words);
        let b = SharedBytes::from_vec(padded);
        let at = b.slice(4..16).unwrap();
        if let Some(v) = at.values::<f32>() {
            assert_eq!(v, &[1.5, -2.0, 3.25]);
        }
        assert!(b.slice(5..13).unwrap().values::<f32>().is_none());
        assert!(b.slice(4..15).unwrap().values::<f32>().is_none());
    }

    #[test]
    fn a_mapped_file_reads_its_bytes() {
        let path = std::env::temp_dir().join(format!("tokenshift-map-{}", std::process::id()));
        std::fs::write(&path, b"mapped bytes").unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let b = SharedBytes::map(&file).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert!(b.is_mapped());
        assert_eq!(b.as_slice(), b"mapped bytes");
        assert_eq!(b.slice(7..12).unwrap().as_slice(), b"bytes");
    }
}
