//! A linear layer `y = W x` whose weight stays in its storage type (f32, f16 or bf16).
//!
//! Two algorithms, both split across rayon's threads:
//! - up to [`SMALL_BATCH`] rows (one-token decode, batched decode): each weight row is read once
//!   and dotted with every input row ([`kernels`](super::kernels));
//! - more rows (prefill): matrix-matrix products over blocks of output columns. Where the CPU
//!   has AVX-512F, or AVX2 with FMA and F16C, they run on the crate's own kernels
//!   ([`gemm`](super::gemm)), which widen and pack the weights a block at a time; elsewhere
//!   each block is widened to f32 and handed to ndarray's product.

use super::aligned;
use super::gemm;
use super::kernels::Weight;
use super::PARALLEL_MIN_WORK;
use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};
use ndarray::linalg::general_mat_mul;
use ndarray::{
    s, Array1, Array2, ArrayView1, ArrayView2, ArrayViewMut1, ArrayViewMut2, Axis, CowArray, Ix2,
};
use rayon::prelude::*;

/// Up to this many rows, [`Linear::forward`] streams the weights once through the dot-product
/// kernels; above it, it runs matrix-matrix products.
pub const SMALL_BATCH: usize = 16;

/// Rows per step when the dot-product kernels write a strided output.
const SUB_ROWS: usize = 16;

/// Output columns per task in the matrix-matrix path.
const GEMM_BLOCK: usize = 64;

/// A weight matrix stored PyTorch style as `[out, in]`; `y = W x`.
///
/// Any standard-layout matrix works; one whose data starts on a cache line streams faster
/// through the dot-product kernels (see [`aligned`](super::aligned)). The loaders and
/// [`Clone`] make every matrix so; [`aligned::matrix`](super::aligned::matrix) does it for one
/// built by hand.
#[derive(Debug)]
pub enum Linear {
    /// f32 weight `[out, in]`.
    F32(Array2<f32>),
    /// f16 weight `[out, in]`.
    F16(Array2<f16>),
    /// bf16 weight `[out, in]`.
    Bf16(Array2<bf16>),
}

impl Clone for Linear {
    fn clone(&self) -> Self {
        match self {
            Linear::F32(w) => Linear::F32(aligned::to_matrix(w.view())),
            Linear::F16(w) => Linear::F16(aligned::to_matrix(w.view())),
            Linear::Bf16(w) => Linear::Bf16(aligned::to_matrix(w.view())),
        }
    }
}

impl Linear {
    /// `(out, in)`.
    pub fn dim(&self) -> (usize, usize) {
        match self {
            Linear::F32(w) => w.dim(),
            Linear::F16(w) => w.dim(),
            Linear::Bf16(w) => w.dim(),
        }
    }

    /// Bytes of weight storage.
    pub fn size_bytes(&self) -> usize {
        let (out, inp) = self.dim();
        let each = match self {
            Linear::F32(_) => 4,
            Linear::F16(_) | Linear::Bf16(_) => 2,
        };
        out * inp * each
    }

    /// The weight widened to f32, `[out, in]`.
    pub fn to_f32(&self) -> Array2<f32> {
        match self {
            Linear::F32(w) => w.clone(),
            Linear::F16(w) => w.mapv(f32::from),
            Linear::Bf16(w) => w.mapv(f32::from),
        }
    }

    /// Row `r` widened to f32 into `out` (an embedding lookup).
    ///
    /// # Panics
    /// If `r` is out of range or `out` has the wrong length.
    #[track_caller]
    pub fn row_into(&self, r: usize, mut out: ArrayViewMut1<f32>) {
        match self {
            Linear::F32(w) => out.assign(&w.row(r)),
            Linear::F16(w) => out.zip_mut_with(&w.row(r), |o, v| *o = v.to_f32()),
            Linear::Bf16(w) => out.zip_mut_with(&w.row(r), |o, v| *o = v.to_f32()),
        }
    }

    /// Replaces every row by `f` of it, computed in f32 and stored back in the storage type
    /// (so a half-precision table is never widened whole).
    pub fn map_rows(&mut self, f: impl Fn(ArrayView1<f32>) -> Array1<f32>) {
        fn each<T: Copy>(
            w: &mut Array2<T>,
            widen: fn(T) -> f32,
            narrow: fn(f32) -> T,
            f: &dyn Fn(ArrayView1<f32>) -> Array1<f32>,
        ) {
            for mut row in w.rows_mut() {
                let new = f(row.mapv(widen).view());
                row.zip_mut_with(&new, |o, &v| *o = narrow(v));
            }
        }
        match self {
            Linear::F32(w) => each(w, |v| v, |v| v, &f),
            Linear::F16(w) => each(w, f32::from, f16::from_f32, &f),
            Linear::Bf16(w) => each(w, f32::from, bf16::from_f32, &f),
        }
    }

    /// `yt = W xsᵀ` through the dot-product kernels (at most [`SMALL_BATCH`] rows), split
    /// across rayon's threads when `parallel`.
    pub(crate) fn streamed_into(
        &self,
        xs: ArrayView2<f32>,
        yt: ArrayViewMut2<f32>,
        parallel: bool,
    ) {
        match self {
            Linear::F32(w) => streamed(w.view(), xs, yt, parallel),
            Linear::F16(w) => streamed(w.view(), xs, yt, parallel),
            Linear::Bf16(w) => streamed(w.view(), xs, yt, parallel),
        }
    }

    /// Whether every weight row is contiguous in memory (what [`Linear::dot_rows`] needs).
    pub(crate) fn rows_contiguous(&self) -> bool {
        match self {
            Linear::F32(w) => w.is_standard_layout(),
            Linear::F16(w) => w.is_standard_layout(),
            Linear::Bf16(w) => w.is_standard_layout(),
        }
    }

    /// `out[(r − rows.start) · B + j] = W[r] · xs[j]` for the rows `r` of `rows`, `x` holding
    /// `B` rows of `inp` values.
    ///
    /// # Panics
    /// If the weight is not in standard layout, `B` is above [`SMALL_BATCH`] or `out` is too
    /// short.
    pub(crate) fn dot_rows(
        &self,
        x: &[f32],
        inp: usize,
        rows: std::ops::Range<usize>,
        out: &mut [f32],
    ) {
        match self {
            Linear::F32(w) => dot_rows(w.view(), x, inp, rows, out),
            Linear::F16(w) => dot_rows(w.view(), x, inp, rows, out),
            Linear::Bf16(w) => dot_rows(w.view(), x, inp, rows, out),
        }
    }

    /// `y = W x`.
    ///
    /// # Shapes
    /// `x: [in]`, `y: [out]`.
    ///
    /// # Panics
    /// If the shapes do not match the weight.
    #[track_caller]
    pub fn matvec_into(&self, x: ArrayView1<f32>, y: ArrayViewMut1<f32>) {
        let (out, inp) = self.dim();
        assert_eq!(x.len(), inp, "Linear::matvec_into: input length");
        assert_eq!(y.len(), out, "Linear::matvec_into: output length");
        let xs = x.insert_axis(Axis(0));
        let ys = y.insert_axis(Axis(1));
        self.streamed_into(xs, ys, true);
    }

    /// `ys = xs Wᵀ`: the layer applied to every row.
    ///
    /// # Shapes
    /// `xs: [T, in]` → `[T, out]`.
    ///
    /// # Panics
    /// If `xs` has the wrong number of columns.
    #[track_caller]
    pub fn forward(&self, xs: ArrayView2<f32>) -> Array2<f32> {
        let (out, inp) = self.dim();
        assert_eq!(xs.ncols(), inp, "Linear::forward: input width");
        let t = xs.nrows();
        let mut ys = Array2::zeros((t, out));
        if t <= SMALL_BATCH {
            self.streamed_into(xs, ys.view_mut().reversed_axes(), true);
            return ys;
        }
        match self {
            Linear::F32(w) => blocked_gemm(w.view(), borrowed, xs, ys.view_mut()),
            Linear::F16(w) => blocked_gemm(w.view(), widened, xs, ys.view_mut()),
            Linear::Bf16(w) => blocked_gemm(w.view(), widened, xs, ys.view_mut()),
        }
        ys
    }
}

/// `yt[r, j] = W[r] · xs[j]`: every weight row read once for all rows of `xs`, tasks of
/// consecutive rows split across rayon's threads when `parallel` and the product is large.
/// `yt` may have any layout (`[T, out]` seen transposed is the usual one); no heap allocation
/// for standard-layout inputs.
fn streamed<T: Weight>(
    w: ArrayView2<T>,
    xs: ArrayView2<f32>,
    mut yt: ArrayViewMut2<f32>,
    parallel: bool,
) {
    let (out, inp) = w.dim();
    let t = xs.nrows();
    assert!(t <= SMALL_BATCH, "streamed: at most SMALL_BATCH rows");
    if t == 0 || out == 0 {
        return;
    }
    let w = w.as_standard_layout();
    let xs = xs.as_standard_layout();
    let x = xs.as_slice().expect("standard layout");
    let rows_per_task = out.div_ceil(64).max(8);
    let parallel = parallel && out * inp * t >= PARALLEL_MIN_WORK;
    let task = |(i, mut block): (usize, ArrayViewMut2<f32>)| {
        let start = i * rows_per_task;
        if let Some(y) = block.as_slice_mut() {
            dot_rows(w.view(), x, inp, start..start + y.len() / t, y);
            return;
        }
        // Strided output: through a small buffer, `SUB_ROWS` rows at a time.
        let mut buf = [0.0f32; SUB_ROWS * SMALL_BATCH];
        for sub in (0..block.nrows()).step_by(SUB_ROWS) {
            let end = (sub + SUB_ROWS).min(block.nrows());
            let part = &mut buf[..(end - sub) * t];
            dot_rows(w.view(), x, inp, start + sub..start + end, part);
            let part = ArrayView2::from_shape((end - sub, t), &*part).expect("sized above");
            block.slice_mut(s![sub..end, ..]).assign(&part);
        }
    };
    let blocks = yt.axis_chunks_iter_mut(Axis(0), rows_per_task);
    if parallel {
        blocks.into_par_iter().enumerate().for_each(task);
    } else {
        blocks.enumerate().for_each(task);
    }
}

/// `out[(r − rows.start) · B + j] = W[r] · xs[j]` for the rows `r` of `rows`: `x` holds `B`
/// rows of `inp` values, each weight row is read once for all of them.
///
/// # Panics
/// If a weight row is not contiguous, `B` is above [`SMALL_BATCH`] or `out` is too short.
fn dot_rows<T: Weight>(
    w: ArrayView2<T>,
    x: &[f32],
    inp: usize,
    rows: std::ops::Range<usize>,
    out: &mut [f32],
) {
    let b = x.len() / inp.max(1);
    let mut xs: [&[f32]; SMALL_BATCH] = [&[]; SMALL_BATCH];
    for (slot, row) in xs.iter_mut().zip(x.chunks_exact(inp.max(1))) {
        *slot = row;
    }
    let w = w.as_slice().expect("weights in standard layout");
    T::row_dots(
        &w[rows.start * inp..rows.end * inp],
        &xs[..b],
        &mut out[..rows.len() * b],
    );
}

/// `ys = xs Wᵀ` as matrix-matrix products over blocks of output columns, two blocks per rayon
/// thread (at least [`GEMM_BLOCK`] columns each). Where [`gemm`] runs, `xs` is packed once
/// for all blocks and each block of `W` is packed by [`gemm::product`]; otherwise each block of
/// `W` is made f32 by `widen` (no copy for f32) just before ndarray's product, which packs all
/// of `xs` again.
fn blocked_gemm<T: Weight>(
    w: ArrayView2<T>,
    widen: impl for<'b> Fn(ArrayView2<'b, T>) -> CowArray<'b, f32, Ix2> + Sync,
    xs: ArrayView2<f32>,
    mut ys: ArrayViewMut2<f32>,
) {
    let (out, inp) = w.dim();
    let packed = gemm::PackedRows::new(xs);
    let run = |(w_block, mut y_block): (ArrayView2<T>, ArrayViewMut2<f32>)| {
        if let Some(packed) = &packed {
            gemm::product(w_block, packed, y_block);
        } else {
            let wide = widen(w_block);
            general_mat_mul(1.0, &xs, &wide.t(), 0.0, &mut y_block);
        }
    };
    let width = out
        .div_ceil(2 * rayon::current_num_threads())
        .next_multiple_of(16)
        .max(GEMM_BLOCK);
    let blocks: Vec<_> = w
        .axis_chunks_iter(Axis(0), width)
        .zip(ys.axis_chunks_iter_mut(Axis(1), width))
        .collect();
    if out * inp * xs.nrows() < PARALLEL_MIN_WORK {
        blocks.into_iter().for_each(run);
    } else {
        blocks.into_par_iter().for_each(run);
    }
}

/// A half-precision block as f32.
fn widened<T: Copy + Into<f32>>(block: ArrayView2<T>) -> CowArray<f32, Ix2>
where
    [T]: HalfFloatSliceExt,
{
    match block.as_slice() {
        // `half`'s slice conversion: 8 values at a time where the CPU converts in SIMD.
        Some(values) => CowArray::from(
            Array2::from_shape_vec(block.dim(), values.to_f32_vec()).expect("same length"),
        ),
        None => CowArray::from(block.mapv(Into::into)),
    }
}

/// An f32 block as it is.
fn borrowed(block: ArrayView2<f32>) -> CowArray<f32, Ix2> {
    CowArray::from(block)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(w: &Array2<f32>, xs: &Array2<f32>) -> Array2<f64> {
        Array2::from_shape_fn((xs.nrows(), w.nrows()), |(t, r)| {
            w.row(r)
                .iter()
                .zip(xs.row(t))
                .map(|(a, b)| *a as f64 * *b as f64)
                .sum()
        })
    }

    #[test]
    fn every_path_and_type_matches_a_plain_product() {
        // Sizes that exercise the serial and parallel, streamed and blocked paths, ragged blocks.
        for (out, inp) in [(5, 3), (70, 33), (300, 257)] {
            let w = Array2::from_shape_fn((out, inp), |(i, j)| {
                ((i * 7 + j * 3) % 11) as f32 / 5.0 - 1.0
            });
            let layers = [
                Linear::F32(w.clone()),
                Linear::F16(w.mapv(f16::from_f32)),
                Linear::Bf16(w.mapv(bf16::from_f32)),
            ];
            for layer in &layers {
                let wide = layer.to_f32();
                for t in [1, 2, 5, SMALL_BATCH, SMALL_BATCH + 1, 40] {
                    let xs = Array2::from_shape_fn((t, inp), |(i, j)| {
                        ((i * 5 + j) % 13) as f32 / 6.0 - 1.0
                    });
                    let ys = layer.forward(xs.view());
                    let r = reference(&wide, &xs);
                    for (a, b) in ys.iter().zip(r.iter()) {
                        assert!(
                            (*a as f64 - b).abs() <= 1e-4 * (1.0 + b.abs()),
                            "{out}x{inp} T={t}"
                        );
                    }
                    let mut y = ndarray::Array1::zeros(out);
                    layer.matvec_into(xs.row(0), y.view_mut());
                    for (a, b) in y.iter().zip(ys.row(0)) {
                        assert!(
                            (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
                            "matvec equals row 0"
                        );
                    }
                }
            }
        }
    }
}
