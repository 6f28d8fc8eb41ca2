//! A linear layer `y = W x` whose weight stays in its storage type (f32, f16 or bf16).

use half::{bf16, f16};
use ndarray::linalg::{general_mat_mul, general_mat_vec_mul};
use ndarray::{s, Array2, ArrayView1, ArrayView2, ArrayViewMut1, ArrayViewMut2, Axis};

/// Output rows widened per block in the half-precision matrix product.
const WIDEN_BLOCK: usize = 64;

/// A weight matrix stored PyTorch style as `[out, in]`; `y = W x`.
///
/// Half-precision weights are widened to f32 inside the products, never as a whole matrix.
#[derive(Clone, Debug)]
pub enum Linear {
    /// f32 weight `[out, in]`.
    F32(Array2<f32>),
    /// f16 weight `[out, in]`.
    F16(Array2<f16>),
    /// bf16 weight `[out, in]`.
    Bf16(Array2<bf16>),
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

    /// The weight widened to f32, `[out, in]`.
    pub fn to_f32(&self) -> Array2<f32> {
        match self {
            Linear::F32(w) => w.clone(),
            Linear::F16(w) => w.mapv(f32::from),
            Linear::Bf16(w) => w.mapv(f32::from),
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
    pub fn matvec_into(&self, x: ArrayView1<f32>, mut y: ArrayViewMut1<f32>) {
        let (out, inp) = self.dim();
        assert_eq!(x.len(), inp, "Linear::matvec_into: input length");
        assert_eq!(y.len(), out, "Linear::matvec_into: output length");
        match self {
            Linear::F32(w) => general_mat_vec_mul(1.0, w, &x, 0.0, &mut y),
            Linear::F16(w) => matvec_widening(w.view(), f32::from, x, y),
            Linear::Bf16(w) => matvec_widening(w.view(), f32::from, x, y),
        }
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
        let mut ys = Array2::zeros((xs.nrows(), out));
        if xs.nrows() == 1 {
            self.matvec_into(xs.row(0), ys.row_mut(0));
            return ys;
        }
        match self {
            Linear::F32(w) => general_mat_mul(1.0, &xs, &w.t(), 0.0, &mut ys),
            Linear::F16(w) => matmul_widening(w.view(), f32::from, xs, ys.view_mut()),
            Linear::Bf16(w) => matmul_widening(w.view(), f32::from, xs, ys.view_mut()),
        }
        ys
    }
}

fn matvec_widening<T: Copy>(
    w: ArrayView2<T>,
    widen: fn(T) -> f32,
    x: ArrayView1<f32>,
    mut y: ArrayViewMut1<f32>,
) {
    for (row, yi) in w.outer_iter().zip(y.iter_mut()) {
        *yi = row.iter().zip(x.iter()).map(|(&a, &b)| widen(a) * b).sum();
    }
}

/// `ys = xs Wᵀ` for a half-precision `W`, widening `WIDEN_BLOCK` output rows at a time.
fn matmul_widening<T: Copy>(
    w: ArrayView2<T>,
    widen: fn(T) -> f32,
    xs: ArrayView2<f32>,
    mut ys: ArrayViewMut2<f32>,
) {
    for (b, block) in w.axis_chunks_iter(Axis(0), WIDEN_BLOCK).enumerate() {
        let wide = block.mapv(widen);
        let start = b * WIDEN_BLOCK;
        let mut out = ys.slice_mut(s![.., start..start + block.nrows()]);
        general_mat_mul(1.0, &xs, &wide.t(), 0.0, &mut out);
    }
}
