//! A linear layer `y = W x` over a weight matrix in any storage ([`Matrix`]).
//!
//! Two algorithms, both split across rayon's threads:
//! - up to [`SMALL_BATCH`] rows (one-token decode, batched decode): each weight row is read once
//!   and dotted with every input row ([`Matrix::row_dots`]);
//! - more rows (prefill): matrix-matrix products over blocks of output columns. Where the CPU
//!   has AVX-512F, or AVX2 with FMA and F16C, they run on the crate's own kernels
//!   ([`gemm`](super::gemm)), which pack the weights a block at a time
//!   ([`Matrix::pack_panel`]); elsewhere each block is widened to f32 and handed to ndarray's
//!   product.

use super::gemm;
use super::matrix::{Matrix, Prepared};
use super::simd::Cpu;
use super::PARALLEL_MIN_WORK;
use ndarray::linalg::general_mat_mul;
use ndarray::{s, Array2, ArrayView1, ArrayView2, ArrayViewMut1, ArrayViewMut2, Axis};
use rayon::prelude::*;
use std::sync::Arc;

/// Up to this many rows, [`Linear::forward`] streams the weights once through the dot-product
/// kernels; above it, it runs matrix-matrix products.
pub const SMALL_BATCH: usize = 16;

/// Rows per step when the dot-product kernels write a strided output.
const SUB_ROWS: usize = 16;

/// Output columns per task in the matrix-matrix path.
const GEMM_BLOCK: usize = 64;

/// A linear layer `y = W x` whose weight `[out, in]` (PyTorch's layout) stays in its storage:
/// f32, f16 or bf16 values owned or in a file's memory map
/// ([`Dense`](crate::storage::Dense)), or any other [`Matrix`]. Cloning shares the weight.
///
/// `Linear::from(array)` makes one from an `Array2` of f32, f16 or bf16.
#[derive(Clone, Debug)]
pub struct Linear {
    w: Arc<dyn Matrix>,
    cpu: Cpu,
}

impl Linear {
    /// A layer over the matrix `w`.
    pub fn new(w: impl Matrix + 'static) -> Self {
        Self::shared(Arc::new(w))
    }

    /// A layer over a shared matrix.
    pub fn shared(w: Arc<dyn Matrix>) -> Self {
        Linear {
            w,
            cpu: Cpu::detect(),
        }
    }

    /// The weight's storage.
    pub fn matrix(&self) -> &dyn Matrix {
        &*self.w
    }

    /// `(out, in)`.
    pub fn dim(&self) -> (usize, usize) {
        self.w.dim()
    }

    /// Bytes of weight storage.
    pub fn size_bytes(&self) -> usize {
        self.w.size_bytes()
    }

    /// The weight widened to f32, `[out, in]`.
    pub fn to_f32(&self) -> Array2<f32> {
        let (out, inp) = self.dim();
        let mut a = Array2::zeros((out, inp));
        for (r, mut row) in a.rows_mut().into_iter().enumerate() {
            self.w
                .row_into(r, row.as_slice_mut().expect("rows of a new array"));
        }
        a
    }

    /// Row `r` widened to f32 into `out` (an embedding lookup).
    ///
    /// # Panics
    /// If `r` is out of range or `out` has the wrong length.
    #[track_caller]
    pub fn row_into(&self, r: usize, mut out: ArrayViewMut1<f32>) {
        match out.as_slice_mut() {
            Some(o) => self.w.row_into(r, o),
            None => {
                let mut row = vec![0.0; out.len()];
                self.w.row_into(r, &mut row);
                out.assign(&ArrayView1::from(&row));
            }
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
        streamed(&*self.w, xs, yt, parallel)
    }

    /// `out[(r − rows.start) · B + j] = W[r] · xs[j]` for the rows `r` of `rows`, `x` holding
    /// `B` rows of `inp` values; `prepared` as [`Matrix::row_dots_prepared`] takes it.
    ///
    /// # Panics
    /// If `B` is above [`SMALL_BATCH`] or `out` is too short.
    pub(crate) fn dot_rows(
        &self,
        x: &[f32],
        inp: usize,
        rows: std::ops::Range<usize>,
        prepared: &mut Prepared,
        out: &mut [f32],
    ) {
        dot_rows(&*self.w, x, inp, rows, prepared, out)
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
        blocked_gemm(&*self.w, self.cpu, xs, ys.view_mut());
        ys
    }
}

/// `yt[r, j] = W[r] · xs[j]`: every weight row read once for all rows of `xs`, tasks of
/// consecutive rows split across rayon's threads when `parallel` and the product is large.
/// `yt` may have any layout (`[T, out]` seen transposed is the usual one); no heap allocation
/// for standard-layout inputs.
fn streamed(w: &dyn Matrix, xs: ArrayView2<f32>, mut yt: ArrayViewMut2<f32>, parallel: bool) {
    let (out, inp) = w.dim();
    let t = xs.nrows();
    assert!(t <= SMALL_BATCH, "streamed: at most SMALL_BATCH rows");
    if t == 0 || out == 0 {
        return;
    }
    let xs = xs.as_standard_layout();
    let x = xs.as_slice().expect("standard layout");
    let rows_per_task = out.div_ceil(64).max(8);
    let parallel = parallel && out * inp * t >= PARALLEL_MIN_WORK;
    let task = |prepared: &mut Prepared, (i, mut block): (usize, ArrayViewMut2<f32>)| {
        let start = i * rows_per_task;
        if let Some(y) = block.as_slice_mut() {
            dot_rows(w, x, inp, start..start + y.len() / t, prepared, y);
            return;
        }
        // Strided output: through a small buffer, `SUB_ROWS` rows at a time.
        let mut buf = [0.0f32; SUB_ROWS * SMALL_BATCH];
        for sub in (0..block.nrows()).step_by(SUB_ROWS) {
            let end = (sub + SUB_ROWS).min(block.nrows());
            let part = &mut buf[..(end - sub) * t];
            dot_rows(w, x, inp, start + sub..start + end, prepared, part);
            let part = ArrayView2::from_shape((end - sub, t), &*part).expect("sized above");
            block.slice_mut(s![sub..end, ..]).assign(&part);
        }
    };
    let blocks = yt.axis_chunks_iter_mut(Axis(0), rows_per_task);
    if parallel {
        blocks
            .into_par_iter()
            .enumerate()
            .for_each_init(Prepared::new, task);
    } else {
        let mut prepared = Prepared::new();
        blocks
            .enumerate()
            .for_each(|item| task(&mut prepared, item));
    }
}

/// `out[(r − rows.start) · B + j] = W[r] · xs[j]` for the rows `r` of `rows`: `x` holds `B`
/// rows of `inp` values, each weight row is read once for all of them; `prepared` as
/// [`Matrix::row_dots_prepared`] takes it.
///
/// # Panics
/// If `B` is above [`SMALL_BATCH`] or `out` is too short.
fn dot_rows(
    w: &dyn Matrix,
    x: &[f32],
    inp: usize,
    rows: std::ops::Range<usize>,
    prepared: &mut Prepared,
    out: &mut [f32],
) {
    let b = x.len() / inp.max(1);
    let mut xs: [&[f32]; SMALL_BATCH] = [&[]; SMALL_BATCH];
    for (slot, row) in xs.iter_mut().zip(x.chunks_exact(inp.max(1))) {
        *slot = row;
    }
    if inp == 0 {
        // Rows of no values: every product is zero (the vectors cannot say how many there are).
        out[..rows.len() * b].fill(0.0);
        return;
    }
    w.row_dots_prepared(rows.clone(), &xs[..b], prepared, &mut out[..rows.len() * b]);
}

/// `ys = xs Wᵀ` as matrix-matrix products over blocks of output columns, two blocks per rayon
/// thread (at least [`GEMM_BLOCK`] columns each). Where [`gemm`] runs on `cpu`, `xs` is packed
/// once for all blocks and each block of `W` is packed by [`gemm::product`]; otherwise each
/// block of `W` is widened to f32 just before ndarray's product, which packs all of `xs` again.
fn blocked_gemm(w: &dyn Matrix, cpu: Cpu, xs: ArrayView2<f32>, mut ys: ArrayViewMut2<f32>) {
    let (out, inp) = w.dim();
    let packed = gemm::PackedRows::new(cpu, xs);
    let run = |(start, mut y_block): (usize, ArrayViewMut2<f32>)| {
        let rows = start..start + y_block.ncols();
        if let Some(packed) = &packed {
            gemm::product(w, rows, packed, y_block);
        } else {
            let mut wide = Array2::zeros((rows.len(), inp));
            for (r, mut row) in rows.zip(wide.rows_mut()) {
                w.row_into(r, row.as_slice_mut().expect("rows of a new array"));
            }
            general_mat_mul(1.0, &xs, &wide.t(), 0.0, &mut y_block);
        }
    };
    let width = out
        .div_ceil(2 * rayon::current_num_threads())
        .next_multiple_of(16)
        .max(GEMM_BLOCK);
    let blocks: Vec<_> = ys
        .axis_chunks_iter_mut(Axis(1), width)
        .enumerate()
        .map(|(i, y)| (i * width, y))
        .collect();
    if out * inp * xs.nrows() < PARALLEL_MIN_WORK {
        blocks.into_iter().for_each(run);
    } else {
        blocks.into_par_iter().for_each(run);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::Dense;
    use half::{bf16, f16};

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
            let mut layers = Vec::new();
            for cpu in Cpu::detect().variants() {
                layers.push(Linear::new(Dense::new(w.clone()).with_cpu(cpu)));
                layers.push(Linear::new(Dense::new(w.mapv(f16::from_f32)).with_cpu(cpu)));
                layers.push(Linear::new(
                    Dense::new(w.mapv(bf16::from_f32)).with_cpu(cpu),
                ));
            }
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
