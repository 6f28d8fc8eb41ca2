//! Arrays whose data starts on a cache-line boundary.
//!
//! The dot-product kernels load 32 or 64 bytes of a row at a time. When a row starts on a
//! [`ALIGN`]-byte boundary no such load straddles two cache lines; when it does not, half or
//! all of them do, which can halve a kernel's rate with data in cache (docs/performance.md).
//! The loaders put every weight matrix
//! on the boundary, and the team's input buffers start on one; the kernels are correct at any
//! address, only slower.

use ndarray::{s, Array1, Array2, ArrayView2};

/// The boundary, in bytes: one cache line.
pub const ALIGN: usize = 64;

/// Whether `p` is on an [`ALIGN`]-byte boundary.
pub fn is_aligned<T>(p: *const T) -> bool {
    (p as usize).is_multiple_of(ALIGN)
}

/// A growing buffer whose first element is on an [`ALIGN`]-byte boundary (a few padding
/// elements in front of it stay in the allocation, out of view), filled in pieces.
pub(crate) struct Buffer<T> {
    vec: Vec<T>,
    pad: usize,
}

impl<T: Copy + Default> Buffer<T> {
    /// Room for `len` elements: up to that many keep the data on the boundary (more are kept
    /// too, but the data may then move off it).
    pub(crate) fn with_capacity(len: usize) -> Buffer<T> {
        let size = std::mem::size_of::<T>().max(1);
        let mut vec = Vec::with_capacity(len + ALIGN / size);
        let pad = (ALIGN - vec.as_ptr() as usize % ALIGN) % ALIGN / size;
        vec.resize(pad, T::default());
        Buffer { vec, pad }
    }

    pub(crate) fn extend(&mut self, items: impl IntoIterator<Item = T>) {
        self.vec.extend(items);
    }

    /// The elements, without the padding.
    pub(crate) fn into_array(self) -> Array1<T> {
        Array1::from_vec(self.vec).slice_move(s![self.pad..])
    }
}

/// An array of the items of `items` (`len` of them, or the data may not start on the
/// boundary) whose first element is on an [`ALIGN`]-byte boundary.
pub fn collect<T: Copy + Default>(len: usize, items: impl IntoIterator<Item = T>) -> Array1<T> {
    let mut buffer = Buffer::with_capacity(len);
    buffer.extend(items);
    buffer.into_array()
}

/// `len` zeros (or `T::default()`) starting on the boundary.
pub fn zeros<T: Copy + Default>(len: usize) -> Array1<T> {
    collect(len, std::iter::repeat_n(T::default(), len))
}

/// A standard-layout copy of `a` that starts on the boundary.
pub fn to_matrix<T: Copy + Default>(a: ArrayView2<T>) -> Array2<T> {
    let data = collect(a.len(), a.iter().copied());
    data.into_shape_with_order(a.dim())
        .expect("as many elements as the view")
}

/// `a` in standard layout on the boundary: itself when it already is, else a copy.
pub fn matrix<T: Copy + Default>(a: Array2<T>) -> Array2<T> {
    if a.is_standard_layout() && is_aligned(a.as_ptr()) {
        a
    } else {
        to_matrix(a.view())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::f16;

    #[test]
    fn arrays_start_on_the_boundary_and_keep_their_values() {
        // (An empty array has no data to place.)
        for len in [1, 7, 768, 10_000] {
            let a = collect(len, (0..len).map(|i| i as f32));
            assert!(is_aligned(a.as_ptr()), "f32 × {len}");
            assert_eq!(a.to_vec(), (0..len).map(|i| i as f32).collect::<Vec<_>>());
            let z = zeros::<f16>(len);
            assert!(is_aligned(z.as_ptr()), "f16 zeros × {len}");
            assert!(z.iter().all(|v| *v == f16::ZERO));
        }
        let m = Array2::from_shape_fn((5, 3), |(i, j)| (10 * i + j) as u16);
        let t = to_matrix(m.t());
        assert!(is_aligned(t.as_ptr()) && t.is_standard_layout());
        assert_eq!(t, m.t());
        assert!(collect(0, 0..0u8).is_empty());
        let moved_ptr = t.as_ptr();
        assert_eq!(
            matrix(t).as_ptr(),
            moved_ptr,
            "no copy when already aligned"
        );
    }

    #[test]
    fn more_items_than_announced_are_kept() {
        let a = collect(2, 0..5u32);
        assert_eq!(a.to_vec(), vec![0, 1, 2, 3, 4]);
    }
}
