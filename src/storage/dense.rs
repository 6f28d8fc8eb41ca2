//! Dense matrices of f32, f16 or bf16 values, owned or seen in place in a file's bytes.

use super::SharedBytes;
use crate::ops::gemm::Transpose;
use crate::ops::kernels::Dot;
use crate::ops::{aligned, Cpu, Element, Linear, Matrix, Prepared};
use ndarray::{Array2, ArrayView2};
use std::ops::Range;

/// Where a dense matrix's values are.
#[derive(Clone, Debug)]
enum Values<T> {
    /// An array that starts on a cache line.
    Owned(Array2<T>),
    /// Little-endian values in a file's bytes, checked to be aligned for `T` and to hold
    /// exactly the matrix.
    Mapped(SharedBytes),
}

/// A row-major `[out, in]` matrix of `T` (f32, f16 or bf16), read by the kernels of the
/// [`Cpu`] chosen when it was built.
#[derive(Clone, Debug)]
pub struct Dense<T: Element> {
    values: Values<T>,
    rows: usize,
    cols: usize,
    cpu: Cpu,
}

impl<T: Element> Dense<T> {
    /// The matrix `w`, copied to start on a cache line unless it already does (a matrix that
    /// starts on one streams faster through the dot-product kernels).
    pub fn new(w: Array2<T>) -> Self {
        let (rows, cols) = w.dim();
        Dense {
            values: Values::Owned(aligned::matrix(w)),
            rows,
            cols,
            cpu: Cpu::detect(),
        }
    }

    /// The `[rows, cols]` matrix whose little-endian values are `bytes`, used in place: `None`
    /// if the bytes are not exactly `rows · cols` values or not aligned for `T` (or the target
    /// is big-endian).
    pub fn mapped(bytes: SharedBytes, rows: usize, cols: usize) -> Option<Self> {
        let n = rows.checked_mul(cols)?;
        if bytes.values::<T>()?.len() != n {
            return None;
        }
        Some(Dense {
            values: Values::Mapped(bytes),
            rows,
            cols,
            cpu: Cpu::detect(),
        })
    }

    /// The same matrix read by `cpu`'s kernels (a test runs every instruction set this way).
    pub fn with_cpu(mut self, cpu: Cpu) -> Self {
        self.cpu = cpu;
        self
    }

    /// The values, row-major.
    pub fn values(&self) -> &[T] {
        match &self.values {
            Values::Owned(a) => a.as_slice().expect("aligned::matrix is standard layout"),
            Values::Mapped(b) => b.values().expect("checked by Dense::mapped"),
        }
    }

    /// The values as an array view.
    pub fn view(&self) -> ArrayView2<'_, T> {
        ArrayView2::from_shape((self.rows, self.cols), self.values()).expect("rows · cols values")
    }

    /// Rows `rows` of the values.
    #[track_caller]
    fn row_values(&self, rows: Range<usize>) -> &[T] {
        assert!(
            rows.start <= rows.end && rows.end <= self.rows,
            "Dense: rows {rows:?} of {}",
            self.rows
        );
        &self.values()[rows.start * self.cols..rows.end * self.cols]
    }
}

impl<T: Element + Dot + Transpose> Matrix for Dense<T> {
    fn dim(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    fn type_name(&self) -> &'static str {
        T::NAME
    }

    fn size_bytes(&self) -> usize {
        self.rows * self.cols * std::mem::size_of::<T>()
    }

    fn is_mapped(&self) -> bool {
        matches!(self.values, Values::Mapped(_))
    }

    #[track_caller]
    fn row_into(&self, r: usize, out: &mut [f32]) {
        assert_eq!(out.len(), self.cols, "Dense::row_into: output length");
        for (o, v) in out.iter_mut().zip(self.row_values(r..r + 1)) {
            *o = v.widen();
        }
    }

    #[track_caller]
    fn row_dots_prepared(
        &self,
        rows: Range<usize>,
        xs: &[&[f32]],
        _: &mut Prepared,
        out: &mut [f32],
    ) {
        let n = rows.len() * xs.len();
        assert!(out.len() >= n, "Dense::row_dots: output length");
        T::row_dots(self.cpu, self.row_values(rows), xs, &mut out[..n]);
    }

    #[track_caller]
    fn pack_panel(&self, rows: Range<usize>, width: usize, dst: &mut [f32]) {
        let isa = crate::ops::gemm::Isa::best(self.cpu);
        T::transpose_into(isa, self.row_values(rows), self.cols, width, dst);
    }

    fn round_to_storage(&self, values: &mut [f32]) {
        for v in values {
            *v = T::narrow(*v).widen();
        }
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

impl<T: Element + Dot + Transpose> From<Array2<T>> for Linear {
    /// A layer over the dense matrix `w` (`[out, in]`).
    fn from(w: Array2<T>) -> Linear {
        Linear::new(Dense::new(w))
    }
}
