//! Layer norm and per-head group norm over the rows of `[T, C]` arrays.

use super::for_each_row;
use ndarray::{Array1, Array2, ArrayView1, ArrayView2, ArrayViewMut1, Zip};

/// Normalises `x` in place to zero mean and unit (biased) variance, then applies `w`, `b`.
fn normalise(mut x: ArrayViewMut1<f32>, w: ArrayView1<f32>, b: ArrayView1<f32>, eps: f32) {
    let n = x.len() as f32;
    let mean = x.sum() / n;
    let var = x.fold(0.0, |acc, &v| acc + (v - mean) * (v - mean)) / n;
    let inv = 1.0 / (var + eps).sqrt();
    Zip::from(&mut x)
        .and(&w)
        .and(&b)
        .for_each(|v, &w, &b| *v = (*v - mean) * inv * w + b);
}

/// LayerNorm over the channel axis: `y = (x − mean) / sqrt(var + eps) · weight + bias`.
#[derive(Clone, Debug)]
pub struct LayerNorm {
    /// `ln*.weight`, `[C]`.
    pub weight: Array1<f32>,
    /// `ln*.bias`, `[C]`.
    pub bias: Array1<f32>,
    /// 1e-5 in every RWKV version.
    pub eps: f32,
}

impl LayerNorm {
    /// The RWKV layer norm (eps 1e-5).
    pub fn new(weight: Array1<f32>, bias: Array1<f32>) -> Self {
        LayerNorm {
            weight,
            bias,
            eps: 1e-5,
        }
    }

    /// Normalises one vector.
    ///
    /// # Panics
    /// If its length differs from the parameters'.
    #[track_caller]
    pub fn forward_one(&self, x: ArrayView1<f32>) -> Array1<f32> {
        assert_eq!(x.len(), self.weight.len(), "LayerNorm: width");
        let mut y = x.to_owned();
        normalise(y.view_mut(), self.weight.view(), self.bias.view(), self.eps);
        y
    }

    /// Normalises one vector into `out` (no allocation).
    ///
    /// # Shapes
    /// `x: [C]`, `out: [C]`.
    ///
    /// # Panics
    /// If either length differs from the parameters'.
    #[track_caller]
    pub fn forward_into(&self, x: ArrayView1<f32>, mut out: ArrayViewMut1<f32>) {
        assert_eq!(x.len(), self.weight.len(), "LayerNorm: width");
        assert_eq!(out.len(), self.weight.len(), "LayerNorm: output width");
        out.assign(&x);
        normalise(out, self.weight.view(), self.bias.view(), self.eps);
    }

    /// Normalises one vector in place.
    ///
    /// # Panics
    /// If its length differs from the parameters'.
    #[track_caller]
    pub fn forward_one_inplace(&self, x: ArrayViewMut1<f32>) {
        assert_eq!(x.len(), self.weight.len(), "LayerNorm: width");
        normalise(x, self.weight.view(), self.bias.view(), self.eps);
    }

    /// Normalises every row.
    ///
    /// # Shapes
    /// `xs: [T, C]` → `[T, C]`.
    ///
    /// # Panics
    /// If `C` differs from the parameters' length.
    #[track_caller]
    pub fn forward(&self, xs: ArrayView2<f32>) -> Array2<f32> {
        assert_eq!(xs.ncols(), self.weight.len(), "LayerNorm: width");
        let mut ys = xs.to_owned();
        for_each_row(ys.view_mut(), |row| {
            normalise(row, self.weight.view(), self.bias.view(), self.eps)
        });
        ys
    }
}

/// GroupNorm with `groups` contiguous groups of channels (one per head), then a per-channel
/// affine: RWKV-5/6/7's `ln_x`, with eps 64e-5 (training's 1e-5 with the head-size divisor 8
/// folded in).
#[derive(Clone, Debug)]
pub struct GroupNorm {
    /// `ln_x.weight`, `[C]`.
    pub weight: Array1<f32>,
    /// `ln_x.bias`, `[C]`.
    pub bias: Array1<f32>,
    /// Number of groups `H`; `C` must be a multiple of it.
    pub groups: usize,
    /// 64e-5 for RWKV-5 and later.
    pub eps: f32,
}

impl GroupNorm {
    /// RWKV's `ln_x` group norm (eps 64e-5).
    pub fn new(weight: Array1<f32>, bias: Array1<f32>, groups: usize) -> Self {
        GroupNorm {
            weight,
            bias,
            groups,
            eps: 64e-5,
        }
    }

    /// Normalises each group of each row in place.
    ///
    /// # Shapes
    /// `xs: [T, C]`, `C = groups · N`.
    ///
    /// # Panics
    /// If `C` differs from the parameters' length.
    #[track_caller]
    pub fn forward_inplace(&self, xs: &mut Array2<f32>) {
        let c = self.weight.len();
        assert_eq!(xs.ncols(), c, "GroupNorm: width");
        for_each_row(xs.view_mut(), |row| self.forward_one_inplace(row));
    }

    /// Normalises each group of one vector in place (no allocation).
    ///
    /// # Shapes
    /// `x: [C]`, `C = groups · N`.
    ///
    /// # Panics
    /// If `C` differs from the parameters' length.
    #[track_caller]
    pub fn forward_one_inplace(&self, mut x: ArrayViewMut1<f32>) {
        let c = self.weight.len();
        assert_eq!(x.len(), c, "GroupNorm: width");
        let n = c / self.groups;
        for g in 0..self.groups {
            let r = g * n..(g + 1) * n;
            normalise(
                x.slice_mut(ndarray::s![r.clone()]),
                self.weight.slice(ndarray::s![r.clone()]),
                self.bias.slice(ndarray::s![r]),
                self.eps,
            );
        }
    }
}

/// What a [`HeadNorm`] subtracts and divides by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NormKind {
    /// `(x − mean) / sqrt(var + eps)` (GroupNorm, one group per head).
    Layer,
    /// `x / sqrt(mean(x²) + eps)` (RMSNorm per head).
    Rms,
}

/// A per-head normalisation of the mixers' read-outs (RetNet's GroupNorm, GLA's RMSNorm), then
/// a per-channel scale `weight`.
#[derive(Clone, Debug)]
pub struct HeadNorm {
    /// Per-channel scale, `[H·V]` (ones for an affine-free norm).
    pub weight: Array1<f32>,
    /// Number of heads `H`.
    pub heads: usize,
    /// Added to the variance (or mean square).
    pub eps: f32,
    /// Layer or RMS.
    pub kind: NormKind,
}

impl HeadNorm {
    /// An affine-free norm of `heads` heads over `width` channels.
    pub fn plain(width: usize, heads: usize, eps: f32, kind: NormKind) -> Self {
        HeadNorm {
            weight: Array1::ones(width),
            heads,
            eps,
            kind,
        }
    }

    /// Normalises each head of each row in place.
    ///
    /// # Shapes
    /// `xs: [T, H·V]`.
    ///
    /// # Panics
    /// If the width differs from the weight's.
    #[track_caller]
    pub fn forward_inplace(&self, xs: &mut Array2<f32>) {
        let c = self.weight.len();
        assert_eq!(xs.ncols(), c, "HeadNorm: width");
        let n = c / self.heads;
        for mut row in xs.rows_mut() {
            for (mut x, w) in row
                .exact_chunks_mut(n)
                .into_iter()
                .zip(self.weight.exact_chunks(n))
            {
                let len = n as f32;
                let mean = match self.kind {
                    NormKind::Layer => x.sum() / len,
                    NormKind::Rms => 0.0,
                };
                let var = x.fold(0.0, |a, &v| a + (v - mean) * (v - mean)) / len;
                let inv = 1.0 / (var + self.eps).sqrt();
                Zip::from(&mut x)
                    .and(&w)
                    .for_each(|v, &w| *v = (*v - mean) * inv * w);
            }
        }
    }
}
