//! Layer norm and per-head group norm over the rows of `[T, C]` arrays.

use super::for_each_row;
use ndarray::{Array1, Array2, ArrayView1, ArrayView2, ArrayViewMut1, Zip};

/// Normalises `x` in place (to zero mean and unit biased variance for [`NormKind::Layer`], to
/// unit mean square for [`NormKind::Rms`]), then scales by `w` and adds `b` if there is one.
fn normalise(
    mut x: ArrayViewMut1<f32>,
    w: ArrayView1<f32>,
    b: Option<ArrayView1<f32>>,
    eps: f32,
    kind: NormKind,
) {
    let n = x.len() as f32;
    let mean = match kind {
        NormKind::Layer => x.sum() / n,
        NormKind::Rms => 0.0,
    };
    let var = x.fold(0.0, |acc, &v| acc + (v - mean) * (v - mean)) / n;
    let inv = 1.0 / (var + eps).sqrt();
    match b {
        Some(b) => Zip::from(&mut x)
            .and(&w)
            .and(&b)
            .for_each(|v, &w, &b| *v = (*v - mean) * inv * w + b),
        None => Zip::from(&mut x)
            .and(&w)
            .for_each(|v, &w| *v = (*v - mean) * inv * w),
    }
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
    fn normalise(&self, x: ArrayViewMut1<f32>) {
        let (w, b) = (self.weight.view(), Some(self.bias.view()));
        normalise(x, w, b, self.eps, NormKind::Layer);
    }

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
        self.normalise(y.view_mut());
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
        self.normalise(out);
    }

    /// Normalises one vector in place.
    ///
    /// # Panics
    /// If its length differs from the parameters'.
    #[track_caller]
    pub fn forward_one_inplace(&self, x: ArrayViewMut1<f32>) {
        assert_eq!(x.len(), self.weight.len(), "LayerNorm: width");
        self.normalise(x);
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
        for_each_row(ys.view_mut(), |row| self.normalise(row));
        ys
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

/// A normalisation of each head's channels (contiguous groups of `C / H`), then a per-channel
/// affine: RWKV-5/6/7's `ln_x` (a GroupNorm with a bias, [`HeadNorm::rwkv`]), RetNet's
/// GroupNorm and GLA's RMSNorm of their read-outs ([`HeadNorm::plain`]).
#[derive(Clone, Debug)]
pub struct HeadNorm {
    /// Per-channel scale, `[C]` (ones for an affine-free norm).
    pub weight: Array1<f32>,
    /// Per-channel shift, `[C]`, if any.
    pub bias: Option<Array1<f32>>,
    /// Number of heads `H`; `C` must be a multiple of it.
    pub heads: usize,
    /// Added to the variance (or mean square).
    pub eps: f32,
    /// Layer or RMS.
    pub kind: NormKind,
}

impl HeadNorm {
    /// RWKV's `ln_x`: a GroupNorm per head with `weight` and `bias` (`[C]`), eps 64e-5
    /// (training's 1e-5 with the head-size divisor 8 folded in).
    pub fn rwkv(weight: Array1<f32>, bias: Array1<f32>, heads: usize) -> Self {
        HeadNorm {
            weight,
            bias: Some(bias),
            heads,
            eps: 64e-5,
            kind: NormKind::Layer,
        }
    }

    /// An affine-free norm of `heads` heads over `width` channels.
    pub fn plain(width: usize, heads: usize, eps: f32, kind: NormKind) -> Self {
        HeadNorm {
            weight: Array1::ones(width),
            bias: None,
            heads,
            eps,
            kind,
        }
    }

    /// Normalises each head of each row in place.
    ///
    /// # Shapes
    /// `xs: [T, C]`.
    ///
    /// # Panics
    /// If `C` differs from the weight's length.
    #[track_caller]
    pub fn forward_inplace(&self, xs: &mut Array2<f32>) {
        assert_eq!(xs.ncols(), self.weight.len(), "HeadNorm: width");
        for_each_row(xs.view_mut(), |row| self.forward_one_inplace(row));
    }

    /// Normalises each head of one vector in place (no allocation).
    ///
    /// # Shapes
    /// `x: [C]`.
    ///
    /// # Panics
    /// If `C` differs from the weight's length.
    #[track_caller]
    pub fn forward_one_inplace(&self, mut x: ArrayViewMut1<f32>) {
        let c = self.weight.len();
        assert_eq!(x.len(), c, "HeadNorm: width");
        let n = c / self.heads;
        for h in 0..self.heads {
            let r = ndarray::s![h * n..(h + 1) * n];
            let b = self.bias.as_ref().map(|b| b.slice(r));
            normalise(x.slice_mut(r), self.weight.slice(r), b, self.eps, self.kind);
        }
    }
}
