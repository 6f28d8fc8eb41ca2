//! The one interface every weight matrix's storage implements, whatever holds the values: f32,
//! f16 or bf16 arrays owned or seen in a file's memory map, or blocks of quantized values.
//! [`Linear`](super::Linear) runs every product through it, so a new storage needs no change in
//! the layers.

use std::ops::Range;

/// A weight matrix `[out, in]` (PyTorch's layout; `y = W x`) as the products read it.
///
/// Decode reads each row once for up to 16 activation vectors ([`Matrix::row_dots`]); prefill
/// packs blocks of rows into f32 panels for the matrix-matrix kernels
/// ([`Matrix::pack_panel`]); an embedding reads single rows ([`Matrix::row_into`]). A storage
/// chooses its kernels' instruction set once, when it is built.
pub trait Matrix: Send + Sync + std::fmt::Debug {
    /// `(out, in)`.
    fn dim(&self) -> (usize, usize);

    /// The storage type's name: `f32`, `f16`, `bf16`, or a block format's.
    fn type_name(&self) -> &'static str;

    /// Bytes of storage: what one product with the whole matrix reads (one decoded token's
    /// share of the weights).
    fn size_bytes(&self) -> usize;

    /// Whether the values are read in place from a memory-mapped file.
    fn is_mapped(&self) -> bool {
        false
    }

    /// Row `r` as f32 into `out` (`in` values).
    ///
    /// # Panics
    /// If `r` is out of range or `out` has the wrong length.
    fn row_into(&self, r: usize, out: &mut [f32]);

    /// `out[(r − rows.start) · B + j] = W[r] · xs[j]` for the rows `r` of `rows`, with
    /// `B = xs.len()` vectors of `in` values each (at most 16): every row read once for all
    /// vectors.
    ///
    /// A product's rows are usually dotted in many calls (a few rows each, on several
    /// threads) with the same vectors: `prepared` holds what the storage made of the vectors
    /// for its kernels (a quantized copy, say) from one call to the next on a thread. The
    /// caller [`clear`](Prepared::clear)s it when the vectors change.
    ///
    /// # Panics
    /// If `rows` is out of range, a vector has the wrong length, there are more than 16 of
    /// them, or `out` is shorter than `rows.len() · B`.
    fn row_dots_prepared(
        &self,
        rows: Range<usize>,
        xs: &[&[f32]],
        prepared: &mut Prepared,
        out: &mut [f32],
    );

    /// [`Matrix::row_dots_prepared`] for one call alone.
    ///
    /// # Panics
    /// As [`Matrix::row_dots_prepared`].
    #[track_caller]
    fn row_dots(&self, rows: Range<usize>, xs: &[&[f32]], out: &mut [f32]) {
        self.row_dots_prepared(rows, xs, &mut Prepared::new(), out)
    }

    /// `dst[p · width + i] = W[rows.start + i][p]` for every `p < in` and `i < rows.len()`, and
    /// zero for `rows.len() ≤ i < width`: a block of rows transposed into one panel of the
    /// matrix-matrix kernels.
    ///
    /// # Panics
    /// If `rows` is out of range or longer than `width`, or `dst` is not `in · width` long.
    fn pack_panel(&self, rows: Range<usize>, width: usize, dst: &mut [f32]);

    /// Rounds `values` to what this storage type holds (f16 or bf16 rounding; identity for
    /// f32): how a transform of stored rows is kept in the file's precision, as the official
    /// loaders do when they transform a tensor in its own type.
    fn round_to_storage(&self, values: &mut [f32]);

    /// The storage itself, to look at its concrete type.
    fn as_any(&self) -> &dyn std::any::Any;
}

/// What a storage made of a product's input vectors for its kernels (e.g. the vectors
/// quantized to 8-bit blocks), kept between the [`Matrix::row_dots_prepared`] calls of one
/// product on one thread so that it is made once per thread and product rather than once per
/// call. Empty until a storage needs it; a dense storage never does.
#[derive(Default)]
pub struct Prepared {
    value: Option<Box<dyn std::any::Any + Send>>,
    current: bool,
}

impl Prepared {
    /// Nothing prepared yet.
    pub fn new() -> Prepared {
        Prepared::default()
    }

    /// Marks what is held as made from other vectors: the next call prepares anew (reusing
    /// the memory).
    pub fn clear(&mut self) {
        self.current = false;
    }

    /// The vectors' prepared form of type `T`: `make` fills it (a `T` kept from earlier
    /// calls, or a new one) unless it was made since the last [`Prepared::clear`].
    pub fn get_or_make<T: Default + Send + 'static>(&mut self, make: impl FnOnce(&mut T)) -> &T {
        if !self.value.as_ref().is_some_and(|v| v.is::<T>()) {
            self.value = Some(Box::new(T::default()));
            self.current = false;
        }
        let value = self
            .value
            .as_mut()
            .and_then(|v| v.downcast_mut::<T>())
            .expect("a T, stored above");
        if !self.current {
            make(value);
        }
        self.current = true;
        value
    }
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("current", &self.current)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::Prepared;

    /// What a slot holds is made once until it is cleared, made anew (in the same memory)
    /// after, and made anew when a storage asks for another type.
    #[test]
    fn prepared_is_made_once_per_clear_and_type() {
        let mut slot = Prepared::new();
        let mut makes = 0;
        let get = |slot: &mut Prepared, value: u32, makes: &mut i32| -> Vec<u32> {
            slot.get_or_make(|v: &mut Vec<u32>| {
                *makes += 1;
                v.push(value);
            })
            .clone()
        };
        assert_eq!(get(&mut slot, 1, &mut makes), [1]);
        assert_eq!(get(&mut slot, 2, &mut makes), [1], "kept until cleared");
        assert_eq!(makes, 1);
        slot.clear();
        assert_eq!(
            get(&mut slot, 3, &mut makes),
            [1, 3],
            "made again in the same value"
        );
        assert_eq!(makes, 2);
        let other = slot.get_or_make(|v: &mut Vec<u8>| v.push(7)).clone();
        assert_eq!(other, [7], "another type is made fresh");
        assert_eq!(get(&mut slot, 4, &mut makes), [4]);
        assert_eq!(makes, 3);
    }
}
