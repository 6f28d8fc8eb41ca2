//! Token shift: the only code that mixes a token with its predecessor.
//!
//! Every form is written as `x_t + δ_t ⊙ μ` with `δ_t = x_{t−1} − x_t` (the "maa" convention of
//! RWKV-6/7). RWKV-4/5 store the complementary "mix" coefficients (`x·μ' + prev·(1−μ')`); their
//! loaders convert with `μ = 1 − μ'`, which is the same function.

use super::{for_each_row_with, map_inplace, Linear, Team};
use crate::config::{Config, Version};
use crate::error::Result;
use crate::weights::{Scope, Tensor, TensorMap};
use ndarray::{
    s, Array1, Array2, Array3, ArrayView1, ArrayView2, ArrayViewMut1, ArrayViewMut2, Axis, Zip,
};
use rayon::prelude::*;

/// The shift differences `δ_t = x_{t−1} − x_t`, with `x_{−1} = prev` (the last row of the
/// previous call, kept in the state).
///
/// # Shapes
/// `xs: [T, C]`, `prev: [C]` → `[T, C]`.
///
/// # Panics
/// If `prev` is not as wide as `xs`.
#[track_caller]
pub fn delta(xs: ArrayView2<f32>, prev: ArrayView1<f32>) -> Array2<f32> {
    assert_eq!(xs.ncols(), prev.len(), "shift::delta: width");
    let t = xs.nrows();
    let mut d = Array2::zeros(xs.raw_dim());
    if t == 0 {
        return d;
    }
    Zip::from(d.row_mut(0))
        .and(prev)
        .and(xs.row(0))
        .for_each(|d, &p, &x| *d = p - x);
    Zip::from(d.slice_mut(s![1.., ..]))
        .and(xs.slice(s![..t - 1, ..]))
        .and(xs.slice(s![1.., ..]))
        .for_each(|d, &p, &x| *d = p - x);
    d
}

/// [`delta`], then stores `xs`' last row in `prev` for the next call (no change if `T = 0`).
///
/// # Shapes
/// `xs: [T, C]`, `prev: [C]` → `[T, C]`.
///
/// # Panics
/// If `prev` is not as wide as `xs`.
#[track_caller]
pub fn advance(xs: ArrayView2<f32>, prev: &mut Array1<f32>) -> Array2<f32> {
    let d = delta(xs, prev.view());
    if let Some(last) = xs.nrows().checked_sub(1) {
        prev.assign(&xs.row(last));
    }
    d
}

/// One token's shift difference into `delta`: `δ = prev − x`; then `prev ← x` (no allocation).
///
/// # Shapes
/// `x, prev, delta: [C]`.
///
/// # Panics
/// On mismatched lengths.
#[track_caller]
pub fn advance_into(x: ArrayView1<f32>, prev: &mut Array1<f32>, mut delta: ArrayViewMut1<f32>) {
    assert_eq!(x.len(), prev.len(), "shift::advance_into: width");
    Zip::from(&mut delta)
        .and(&*prev)
        .and(&x)
        .for_each(|d, &p, &x| *d = p - x);
    prev.assign(&x);
}

/// One token's static token shift into `out`: `out = x + δ ⊙ μ` (no allocation).
///
/// # Shapes
/// `x, delta, maa, out: [C]`.
///
/// # Panics
/// On mismatched lengths.
#[track_caller]
pub fn mix_into(
    x: ArrayView1<f32>,
    delta: ArrayView1<f32>,
    maa: ArrayView1<f32>,
    mut out: ArrayViewMut1<f32>,
) {
    Zip::from(&mut out)
        .and(&x)
        .and(&delta)
        .and(&maa)
        .for_each(|o, &x, &d, &m| *o = x + d * m);
}

/// The shift differences of `B` independent sequences, one token each: row `b` of `xs` follows
/// `prevs[b]`, which then takes the row's value.
///
/// # Shapes
/// `xs: [B, C]`, `B` previous rows of `[C]` → `[B, C]`.
///
/// # Panics
/// If there is not one previous row per row of `xs`, or widths differ.
#[track_caller]
pub fn advance_each<'a>(
    xs: ArrayView2<f32>,
    prevs: impl ExactSizeIterator<Item = &'a mut Array1<f32>>,
) -> Array2<f32> {
    assert_eq!(
        prevs.len(),
        xs.nrows(),
        "shift::advance_each: one state per row"
    );
    let mut d = Array2::zeros(xs.raw_dim());
    for ((mut d, x), prev) in d.rows_mut().into_iter().zip(xs.rows()).zip(prevs) {
        assert_eq!(prev.len(), x.len(), "shift::advance_each: width");
        Zip::from(&mut d)
            .and(&*prev)
            .and(&x)
            .for_each(|d, &p, &x| *d = p - x);
        prev.assign(&x);
    }
    d
}

/// Static token shift (RWKV-4/5 `time_mix_*`, RWKV-6 `time_maa_*`, RWKV-7 `x_*`):
/// `x_t + δ_t ⊙ μ`.
///
/// # Shapes
/// `xs, delta: [T, C]`, `maa: [C]` → `[T, C]`.
///
/// # Panics
/// On mismatched shapes.
#[track_caller]
pub fn mix(xs: ArrayView2<f32>, delta: ArrayView2<f32>, maa: ArrayView1<f32>) -> Array2<f32> {
    assert_eq!(xs.dim(), delta.dim(), "shift::mix: delta shape");
    let mut out = delta.to_owned();
    for_each_row_with(out.view_mut(), xs, |mut o, x| {
        Zip::from(&mut o)
            .and(&x)
            .and(&maa)
            .for_each(|o, &x, &m| *o = x + *o * m)
    });
    out
}

/// RWKV-6's data-dependent token shift ("ddlerp"): five mixes (w, k, v, r, g) whose
/// coefficients are `μ_s + m_s(x)` with a shared low-rank projection:
///
/// `z = tanh((x + δ⊙μ_x) W1)` viewed as 5 rows of `D`; `m_s = z_s W2[s]`;
/// `x_s = x + δ ⊙ (μ_s + m_s)`.
#[derive(Clone, Debug)]
pub struct Ddlerp {
    /// `time_maa_x`, `[C]`.
    pub(crate) maa_x: Array1<f32>,
    /// `time_maa_w, _k, _v, _r, _g` stacked in that order, `[5, C]`.
    pub(crate) maa: Array2<f32>,
    /// `time_maa_w1` (stored `[C, 5·D]`, used as `x W1`) as a layer `[5·D, C]`.
    pub(crate) w1: Linear,
    /// `time_maa_w2` (stored `[5, D, C]`), the five `[D, C]` matrices as layers `[C, D]`.
    pub(crate) w2: [Linear; 5],
}

impl Ddlerp {
    /// The shift from its parameters as an RWKV-6 checkpoint stores them under
    /// `blocks.N.att`: `time_maa_x` `[C]`; `time_maa` the coefficients `time_maa_w, _k, _v,
    /// _r, _g` stacked in that order, `[5, C]`; `time_maa_w1` `[C, 5·D]` (used as `x W1`);
    /// `time_maa_w2` `[5, D, C]`. `C` is `time_maa_x`'s length and `D` a fifth of
    /// `time_maa_w1`'s columns; arrays of any memory layout are accepted.
    ///
    /// # Errors
    /// [`Error::Shape`](crate::Error::Shape) naming the first parameter of the wrong shape.
    pub fn new(
        time_maa_x: Array1<f32>,
        time_maa: Array2<f32>,
        time_maa_w1: Array2<f32>,
        time_maa_w2: Array3<f32>,
    ) -> Result<Self> {
        let (c, d) = (time_maa_x.len(), time_maa_w1.ncols() / 5);
        let mut map = TensorMap::new();
        let mut put = |name: &str, a: ndarray::ArrayD<f32>| map.insert(name, Tensor::F32(a));
        put("time_maa_x", time_maa_x.into_dyn());
        put("time_maa", time_maa.into_dyn());
        put("time_maa_w1", time_maa_w1.into_dyn());
        put("time_maa_w2", time_maa_w2.into_dyn());
        let scope = Scope::new(&map);
        let maa = scope.matrix("time_maa", 5, c)?;
        Ok(Ddlerp {
            maa_x: scope.vector("time_maa_x", c)?,
            maa,
            w1: scope.low_rank("time_maa_w1", c, 5 * d)?,
            w2: Self::w2(&scope, c, d)?,
        })
    }

    /// A shift of width `c` with LoRA rank `d` and random parameters in the ranges of trained
    /// checkpoints, reproducible from `seed`.
    ///
    /// # Errors
    /// For a width or rank of 0.
    pub fn random(c: usize, d: usize, seed: u64) -> Result<Self> {
        crate::mixer::check_arg(
            c > 0 && d > 0,
            "Ddlerp",
            "width and rank",
            "positive",
            &[c, d],
        )?;
        let mut config = Config::standard(Version::V6, 1, c, c, 1);
        config.dim_mix_lora = d;
        let map = crate::synthetic::random_checkpoint(&config, crate::weights::DType::F32, seed)?;
        Self::load(&Scope::new(&map).pp("blocks.0.att"), c, d)
    }

    /// The width `C`.
    pub fn width(&self) -> usize {
        self.maa_x.len()
    }

    /// The rank `D` of the low-rank projection.
    pub fn rank(&self) -> usize {
        self.w1.dim().0 / 5
    }

    /// Loads the shift of an RWKV-6 time mix under `att` (width `c`, LoRA rank `d`).
    pub(crate) fn load(att: &Scope, c: usize, d: usize) -> Result<Self> {
        let maa = ["w", "k", "v", "r", "g"]
            .map(|s| att.vector(&format!("time_maa_{s}"), c))
            .into_iter()
            .collect::<Result<Vec<_>>>()?;
        let maa_views: Vec<_> = maa.iter().map(|m| m.view()).collect();
        Ok(Ddlerp {
            maa_x: att.vector("time_maa_x", c)?,
            maa: ndarray::stack(ndarray::Axis(0), &maa_views).expect("five vectors of width C"),
            w1: att.low_rank("time_maa_w1", c, 5 * d)?,
            w2: Self::w2(att, c, d)?,
        })
    }

    /// `time_maa_w2` under `scope` as five layers `[C, D]`.
    fn w2(scope: &Scope, c: usize, d: usize) -> Result<[Linear; 5]> {
        Ok(scope
            .low_rank_stack("time_maa_w2", 5, d, c)?
            .try_into()
            .expect("five layers"))
    }

    /// The five shifted inputs `[x_w, x_k, x_v, x_r, x_g]`.
    ///
    /// # Shapes
    /// `xs, delta: [T, C]` → five `[T, C]`.
    ///
    /// # Panics
    /// On mismatched shapes.
    #[track_caller]
    pub fn forward(&self, xs: ArrayView2<f32>, delta: ArrayView2<f32>) -> [Array2<f32>; 5] {
        let d = self.w2[0].dim().1;
        let mut z = self.w1.forward(mix(xs, delta, self.maa_x.view()).view());
        map_inplace(&mut z, f32::tanh);
        // The five outputs are independent: one task each.
        let outs: Vec<Array2<f32>> = (0..5)
            .into_par_iter()
            .map(|s| {
                let mut out = self.w2[s].forward(z.slice(s![.., s * d..(s + 1) * d]));
                Zip::from(&mut out)
                    .and_broadcast(self.maa.row(s))
                    .and(&delta)
                    .and(&xs)
                    .for_each(|o, &m, &d, &x| *o = x + d * (*o + m));
                out
            })
            .collect();
        outs.try_into().expect("five outputs")
    }

    /// One token's five shifted inputs into the rows of `out` (`x_w, x_k, x_v, x_r, x_g`),
    /// with `z: [5·D]` and `tmp: [C]` as scratch (no allocation); the low-rank products run
    /// where `team` says.
    ///
    /// # Shapes
    /// `x, delta: [C]`, `z: [5·D]`, `tmp: [C]`, `out: [5, C]`.
    ///
    /// # Panics
    /// On mismatched shapes.
    #[track_caller]
    pub(crate) fn step_into<'w>(
        &'w self,
        x: ArrayView1<f32>,
        delta: ArrayView1<f32>,
        mut z: ArrayViewMut1<f32>,
        mut tmp: ArrayViewMut1<f32>,
        mut out: ArrayViewMut2<f32>,
        team: &Team<'_, 'w>,
    ) {
        let d = self.w2[0].dim().1;
        assert_eq!(out.nrows(), 5, "Ddlerp::step_into: five outputs");
        mix_into(x, delta, self.maa_x.view(), tmp.view_mut());
        team.matvec_into(&self.w1, tmp.view(), z.view_mut());
        z.mapv_inplace(f32::tanh);
        let z = z.view();
        let mut rows = out.rows_mut().into_iter();
        team.matvecs_into(std::array::from_fn::<_, 5, _>(|s| {
            let o = rows.next().expect("five rows");
            (&self.w2[s], z.slice_move(s![s * d..(s + 1) * d]), o)
        }));
        for (s, mut o) in out.rows_mut().into_iter().enumerate() {
            Zip::from(&mut o)
                .and(&self.maa.row(s))
                .and(&x)
                .and(&delta)
                .for_each(|o, &m, &x, &d| *o = x + d * (*o + m));
        }
    }
}

/// Short causal depthwise convolution (H3, Hyena, Mamba, fla's `ShortConvolution`):
///
/// ```text
/// y_t[c] = b[c] + Σ_{j=0}^{K−1} W[c, K−1−j] x_{t−j}[c]
/// ```
///
/// (PyTorch `Conv1d(groups = C, padding = K−1)` truncated to the first `T` outputs: the last
/// tap `W[:, K−1]` multiplies the current token). The rows before the first are taken from
/// `prev` (the previous call's last `K − 1` rows, oldest first; zeros at a sequence's start),
/// which then receives this call's last `K − 1` rows. Token shift is the case `K = 2` with tied
/// taps: `x_t + δ_t ⊙ μ = W[:,1] x_t + W[:,0] x_{t−1}` with `W = [μ, 1 − μ]`, no bias.
///
/// # Shapes
/// `xs: [T, C]`, `weight: [C, K]`, `bias: [C]`, `prev: [K − 1, C]` → `[T, C]`.
///
/// # Panics
/// On mismatched shapes, or `K = 0`.
#[track_caller]
pub fn causal_conv(
    xs: ArrayView2<f32>,
    weight: ArrayView2<f32>,
    bias: Option<ArrayView1<f32>>,
    prev: &mut Array2<f32>,
) -> Array2<f32> {
    let (c, k) = weight.dim();
    assert!(
        k > 0,
        "shift::causal_conv: the kernel needs at least one tap"
    );
    assert_eq!(xs.ncols(), c, "shift::causal_conv: width");
    assert_eq!(
        prev.dim(),
        (k - 1, c),
        "shift::causal_conv: state must be [K − 1, C]"
    );
    if let Some(b) = &bias {
        assert_eq!(b.len(), c, "shift::causal_conv: bias width");
    }
    let t = xs.nrows();
    // The padded input: the carried rows, then this call's rows.
    let padded = ndarray::concatenate(Axis(0), &[prev.view(), xs]).expect("same width");
    let mut y = match bias {
        Some(b) => b.broadcast((t, c)).expect("bias is [C]").to_owned(),
        None => Array2::zeros((t, c)),
    };
    for tap in 0..k {
        // Tap `tap` multiplies x_{t−(K−1−tap)}: row t + tap of the padded input.
        Zip::from(&mut y)
            .and(padded.slice(s![tap..tap + t, ..]))
            .and_broadcast(weight.column(tap))
            .for_each(|y, &x, &w| *y += w * x);
    }
    prev.assign(&padded.slice(s![t.., ..]));
    y
}
