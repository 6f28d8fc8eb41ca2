//! RWKV-4 time mix: a per-channel weighted average over the past with exponential decay and a
//! bonus for the current token, kept stable by a running maximum exponent.
//!
//! ```text
//! wkv_t = (Σ_{i<t} e^{−(t−1−i)·e^{td} + k_i} v_i + e^{u + k_t} v_t)
//!       / (Σ_{i<t} e^{−(t−1−i)·e^{td} + k_i}     + e^{u + k_t})
//! out_t = W_o (σ(W_r x_r) ⊙ wkv_t)
//! ```
//!
//! The state keeps `aa = Σ e^{…−pp} v`, `bb = Σ e^{…−pp}` and the exponent `pp` per channel,
//! exactly as the official implementation does (so states compare directly).

use crate::config::{Config, Version};
use crate::error::Result;
use crate::mixer::from_arrays::{build, layer_config, layer_params, random_layer};
use crate::mixer::{MultiPath, Path, SequenceMixer};
use crate::ops::{shift, sigmoid, Linear, Team};
use crate::synthetic::Builder;
use crate::weights::{Scope, TensorSpec};
use ndarray::{s, Array1, Array2, ArrayView1, ArrayView2, ArrayViewMut1, Zip};

/// `pp` before the first token: no past, so its weight `e^{pp}` is 0.
pub const PP_INIT: f32 = -1e30;

/// Recurrent state of one RWKV-4 time mix.
#[derive(Clone, Debug, PartialEq)]
pub struct Rwkv4State {
    /// The previous token's layer-normed input, `[C]`.
    pub x_prev: Array1<f32>,
    /// Weighted sum of values, scaled by `e^{−pp}`, `[C]`.
    pub aa: Array1<f32>,
    /// Sum of weights, scaled by `e^{−pp}`, `[C]`.
    pub bb: Array1<f32>,
    /// Running maximum exponent, `[C]`; starts at [`PP_INIT`].
    pub pp: Array1<f32>,
}

impl Rwkv4State {
    /// The state before the first token, for width `c`.
    pub fn new(c: usize) -> Self {
        Rwkv4State {
            x_prev: Array1::zeros(c),
            aa: Array1::zeros(c),
            bb: Array1::zeros(c),
            pp: Array1::from_elem(c, PP_INIT),
        }
    }
}

/// The RWKV-4 time mix of one block.
#[derive(Clone, Debug)]
pub struct Rwkv4TimeMix {
    /// `1 − att.time_mix_k`, `[C]` (see [`shift`]).
    pub(crate) maa_k: Array1<f32>,
    /// `1 − att.time_mix_v`, `[C]`.
    pub(crate) maa_v: Array1<f32>,
    /// `1 − att.time_mix_r`, `[C]`.
    pub(crate) maa_r: Array1<f32>,
    /// `−exp(att.time_decay)`: the log-decay per token, `[C]`.
    pub(crate) decay: Array1<f32>,
    /// `att.time_first` as stored: the log-bonus of the current token, `[C]`.
    pub(crate) first: Array1<f32>,
    /// `att.key.weight`, `[C, C]`.
    pub(crate) key: Linear,
    /// `att.value.weight`, `[C, C]`.
    pub(crate) value: Linear,
    /// `att.receptance.weight`, `[C, C]`.
    pub(crate) receptance: Linear,
    /// `att.output.weight`, `[C, C]`.
    pub(crate) output: Linear,
}

layer_params! {
    /// The parameters of an RWKV-4 time mix, named and laid out as a BlinkDL checkpoint stores
    /// them under `blocks.N.att` (width `C`), for [`Rwkv4TimeMix::new`].
    pub struct Rwkv4Params {
        /// `time_mix_k`, `[C]`: the share of the current token in the key's input.
        time_mix_k: Array1<f32> => "time_mix_k",
        /// `time_mix_v`, `[C]`.
        time_mix_v: Array1<f32> => "time_mix_v",
        /// `time_mix_r`, `[C]`.
        time_mix_r: Array1<f32> => "time_mix_r",
        /// `time_decay`, `[C]`: the decay is `e^{−e^{time_decay}}` per token.
        time_decay: Array1<f32> => "time_decay",
        /// `time_first`, `[C]`: the bonus `u` of the current token.
        time_first: Array1<f32> => "time_first",
        /// `key.weight`, `[C, C]` (`[out, in]`, as every projection here).
        key: Array2<f32> => "key.weight",
        /// `value.weight`, `[C, C]`.
        value: Array2<f32> => "value.weight",
        /// `receptance.weight`, `[C, C]`.
        receptance: Array2<f32> => "receptance.weight",
        /// `output.weight`, `[C, C]`.
        output: Array2<f32> => "output.weight",
    }
}

impl Rwkv4TimeMix {
    /// The layer from its parameters. The width `C` is `receptance`'s input width; every
    /// other array is checked against it.
    ///
    /// # Errors
    /// [`Error::Shape`](crate::Error::Shape) naming the first parameter (by its checkpoint
    /// name) of the wrong shape.
    pub fn new(params: Rwkv4Params) -> Result<Self> {
        let config = layer_config("Rwkv4TimeMix", Version::V4, params.receptance.ncols(), 0)?;
        let tensors = params.into_tensors();
        build(
            "Rwkv4TimeMix",
            &tensors,
            &config,
            Self::tensor_specs,
            Self::load,
        )
    }

    /// A layer of width `c` with random weights in the ranges of trained checkpoints,
    /// reproducible from `seed`.
    ///
    /// # Errors
    /// For a width of 0.
    pub fn random(c: usize, seed: u64) -> Result<Self> {
        random_layer(
            "Rwkv4TimeMix",
            Version::V4,
            (c, 0),
            0,
            seed,
            |_| {},
            |block, config| Self::load(&block.pp("att"), config),
        )
    }

    /// The width `C`.
    pub fn width(&self) -> usize {
        self.first.len()
    }

    /// Whether block 0's time mix under `att` is RWKV-4's (`time_mix_k`, `time_decay` and
    /// `time_first`, none of the later versions' tensors).
    pub(crate) fn detect(att: &Scope) -> bool {
        ["time_mix_k", "time_decay", "time_first"]
            .iter()
            .all(|n| att.contains(n))
    }

    /// Adds the random tensors of a time mix of `config` under `att` (e.g. `blocks.3.att`) that
    /// are RWKV-4's own (the four projections every version has are drawn before) to a
    /// synthetic checkpoint, in the ranges of trained ones.
    pub(crate) fn synthetic(b: &mut Builder, att: &str, config: &Config) {
        let c = config.n_embd;
        for s in ["k", "v", "r"] {
            b.small(format!("{att}.time_mix_{s}"), &[1, 1, c], 0.0, 1.0);
        }
        b.small(format!("{att}.time_decay"), &[c], -6.0, 2.0);
        b.small(format!("{att}.time_first"), &[c], -1.0, 1.0);
    }

    /// The tensors [`Rwkv4TimeMix::load`] reads under `att`, with their shapes.
    pub fn tensor_specs(att: &Scope, config: &Config) -> Vec<TensorSpec> {
        let c = config.n_embd;
        let vectors = ["time_mix_k", "time_mix_v", "time_mix_r"]
            .into_iter()
            .chain(["time_decay", "time_first"])
            .map(|name| att.spec(name, &[c]));
        let matrices = ["key", "value", "receptance", "output"]
            .map(|name| att.spec(&format!("{name}.weight"), &[c, c]));
        vectors.chain(matrices).collect()
    }

    /// Loads the tensors under `att` (e.g. scope `blocks.3.att`).
    ///
    /// # Errors
    /// A missing tensor or a wrong shape, named in full.
    pub fn load(att: &Scope, config: &Config) -> Result<Self> {
        let c = config.n_embd;
        let one_minus = |name: &str| att.vector(name, c).map(|m| 1.0 - m);
        Ok(Rwkv4TimeMix {
            maa_k: one_minus("time_mix_k")?,
            maa_v: one_minus("time_mix_v")?,
            maa_r: one_minus("time_mix_r")?,
            decay: att.vector("time_decay", c)?.mapv(|d| -d.exp()),
            first: att.vector("time_first", c)?,
            key: att.linear("key.weight", c, c)?,
            value: att.linear("value.weight", c, c)?,
            receptance: att.linear("receptance.weight", c, c)?,
            output: att.linear("output.weight", c, c)?,
        })
    }
}

/// One token of one channel: returns `wkv` and advances `(aa, bb, pp)`.
#[inline]
fn wkv4_channel(k: f32, v: f32, w: f32, u: f32, aa: &mut f32, bb: &mut f32, pp: &mut f32) -> f32 {
    let ww = u + k;
    let p = pp.max(ww);
    let e1 = (*pp - p).exp();
    let e2 = (ww - p).exp();
    let out = (e1 * *aa + e2 * v) / (e1 * *bb + e2);
    let ww = w + *pp;
    let p = ww.max(k);
    let e1 = (ww - p).exp();
    let e2 = (k - p).exp();
    *aa = e1 * *aa + e2 * v;
    *bb = e1 * *bb + e2;
    *pp = p;
    out
}

/// The stabilised WKV recurrence over `T` rows, updating `(aa, bb, pp)` in place.
///
/// # Shapes
/// `k, v: [T, C]`, `decay, first: [C]` → `[T, C]`.
///
/// # Panics
/// On mismatched shapes.
#[track_caller]
pub fn wkv4_scan(
    k: ArrayView2<f32>,
    v: ArrayView2<f32>,
    decay: ArrayView1<f32>,
    first: ArrayView1<f32>,
    state: &mut Rwkv4State,
) -> Array2<f32> {
    let width = decay.len();
    assert_eq!(k.dim(), v.dim(), "wkv4_scan: k and v shapes");
    assert_eq!(k.ncols(), width, "wkv4_scan: width");
    assert_eq!(first.len(), width, "wkv4_scan: bonus width");
    assert_eq!(state.pp.len(), width, "wkv4_scan: state width");
    let mut y = Array2::zeros(k.raw_dim());
    for (t, mut yt) in y.rows_mut().into_iter().enumerate() {
        for c in 0..width {
            yt[c] = wkv4_channel(
                k[[t, c]],
                v[[t, c]],
                decay[c],
                first[c],
                &mut state.aa[c],
                &mut state.bb[c],
                &mut state.pp[c],
            );
        }
    }
    y
}

/// One token of the WKV without allocating: writes `wkv` into `out` and advances
/// `(aa, bb, pp)` (the same operations as [`wkv4_scan`] for one row).
///
/// # Shapes
/// `k, v, decay, first, out: [C]`.
///
/// # Panics
/// On mismatched shapes.
#[track_caller]
pub fn wkv4_step_into(
    k: ArrayView1<f32>,
    v: ArrayView1<f32>,
    decay: ArrayView1<f32>,
    first: ArrayView1<f32>,
    state: &mut Rwkv4State,
    mut out: ArrayViewMut1<f32>,
) {
    let width = decay.len();
    for (name, x) in [("k", &k), ("v", &v), ("first", &first)] {
        assert_eq!(x.len(), width, "wkv4_step_into: `{name}` width");
    }
    assert_eq!(out.len(), width, "wkv4_step_into: output width");
    assert_eq!(state.pp.len(), width, "wkv4_step_into: state width");
    let Rwkv4State { aa, bb, pp, .. } = state;
    let params = decay.iter().zip(&first);
    let kv = k.iter().zip(&v);
    let abp = aa.iter_mut().zip(bb.iter_mut()).zip(pp.iter_mut());
    for (((o, (&k, &v)), (&w, &u)), ((aa, bb), pp)) in out.iter_mut().zip(kv).zip(params).zip(abp) {
        *o = wkv4_channel(k, v, w, u, aa, bb, pp);
    }
}

/// The log-sum-exp ("parallel") form of the WKV over chunks of `chunk` rows, carrying
/// `(aa, bb, pp)` between chunks; `chunk ≥ T` is the parallel form [`wkv4_parallel`], `chunk = 1`
/// the recurrence.
///
/// For a chunk starting after the carried state and a row `j` in it (0-based), per channel with
/// `λ = decay ≤ 0`, the exponents are `pp + j·λ` (the carried sums `aa`, `bb`),
/// `k_i + (j−1−i)·λ` for the chunk's rows `i < j`, and `u + k_j` for row `j` itself; with `m`
/// their maximum,
///
/// ```text
/// wkv_j = (aa e^{pp+jλ−m} + Σ_{i<j} e^{k_i+(j−1−i)λ−m} v_i + e^{u+k_j−m} v_j)
///       / (bb e^{pp+jλ−m} + Σ_{i<j} e^{k_i+(j−1−i)λ−m}     + e^{u+k_j−m})
/// ```
///
/// and after a chunk of `n` rows `pp' = max(pp + nλ, max_i k_i + (n−1−i)λ)`, `aa'`, `bb'` the
/// sums with exponents less `pp'` (the same representation the recurrence keeps). Every
/// exponent is `≤ 0` after subtracting the maximum, so keys of any size are safe. Work per chunk
/// is `O(n²)` per channel (the recurrence is `O(1)` per token, so this form is for testing and
/// for callers that want the quadratic form).
///
/// # Shapes
/// `k, v: [T, C]`, `decay, first: [C]` → `[T, C]`.
///
/// # Panics
/// On mismatched shapes, or if `chunk` is 0.
#[track_caller]
pub fn wkv4_chunkwise(
    k: ArrayView2<f32>,
    v: ArrayView2<f32>,
    decay: ArrayView1<f32>,
    first: ArrayView1<f32>,
    state: &mut Rwkv4State,
    chunk: usize,
) -> Array2<f32> {
    let width = decay.len();
    assert!(chunk > 0, "wkv4_chunkwise: chunk must be positive");
    assert_eq!(k.dim(), v.dim(), "wkv4_chunkwise: k and v shapes");
    assert_eq!(k.ncols(), width, "wkv4_chunkwise: width");
    assert_eq!(first.len(), width, "wkv4_chunkwise: bonus width");
    assert_eq!(state.pp.len(), width, "wkv4_chunkwise: state width");
    let t_len = k.nrows();
    let mut y = Array2::zeros(k.raw_dim());
    let mut m = Array1::<f32>::zeros(width);
    let mut num = Array1::<f32>::zeros(width);
    let mut den = Array1::<f32>::zeros(width);
    let mut c0 = 0;
    while c0 < t_len {
        let n = chunk.min(t_len - c0);
        let kc = k.slice(s![c0..c0 + n, ..]);
        let vc = v.slice(s![c0..c0 + n, ..]);
        // Row j reads exponents pp + jλ, k_i + (j−1−i)λ (i < j) and u + k_j.
        for j in 0..=n {
            let at_end = j == n;
            // The carried term.
            Zip::from(&mut m)
                .and(&state.pp)
                .and(&decay)
                .for_each(|m, &p, &w| *m = p + lagged(j, w));
            // The chunk's earlier rows (up to the end when updating the state: lag n−1−i).
            for i in 0..j {
                let lag = j - 1 - i;
                Zip::from(&mut m)
                    .and(kc.row(i))
                    .and(&decay)
                    .for_each(|m, &k, &w| *m = m.max(k + lagged(lag, w)));
            }
            if !at_end {
                Zip::from(&mut m)
                    .and(kc.row(j))
                    .and(&first)
                    .for_each(|m, &k, &u| *m = m.max(u + k));
            }
            for c in 0..width {
                let e = (state.pp[c] + lagged(j, decay[c]) - m[c]).exp();
                num[c] = state.aa[c] * e;
                den[c] = state.bb[c] * e;
            }
            for i in 0..j {
                let lag = j - 1 - i;
                Zip::from(&mut num)
                    .and(&mut den)
                    .and(&m)
                    .and(kc.row(i))
                    .and(vc.row(i))
                    .and(&decay)
                    .for_each(|num, den, &m, &k, &v, &w| {
                        let e = (k + lagged(lag, w) - m).exp();
                        *num += e * v;
                        *den += e;
                    });
            }
            if at_end {
                state.aa.assign(&num);
                state.bb.assign(&den);
                state.pp.assign(&m);
            } else {
                let (kj, vj) = (kc.row(j), vc.row(j));
                let mut yj = y.row_mut(c0 + j);
                for c in 0..width {
                    let e = (first[c] + kj[c] - m[c]).exp();
                    yj[c] = (num[c] + e * vj[c]) / (den[c] + e);
                }
            }
        }
        c0 += n;
    }
    y
}

/// `lag · λ`, the log-decay over `lag` tokens: 0 at lag 0 even for a decay of exactly 0
/// (`λ = −∞`, a `time_decay` above ~88.7), where the product would be NaN.
fn lagged(lag: usize, w: f32) -> f32 {
    if lag == 0 {
        0.0
    } else {
        lag as f32 * w
    }
}

/// The WKV's parallel form: [`wkv4_chunkwise`] with one chunk of all `T` rows (`O(T²)` per
/// channel), starting from and updating the carried state.
///
/// # Shapes
/// `k, v: [T, C]`, `decay, first: [C]` → `[T, C]`.
///
/// # Panics
/// On mismatched shapes.
#[track_caller]
pub fn wkv4_parallel(
    k: ArrayView2<f32>,
    v: ArrayView2<f32>,
    decay: ArrayView1<f32>,
    first: ArrayView1<f32>,
    state: &mut Rwkv4State,
) -> Array2<f32> {
    let t = k.nrows().max(1);
    wkv4_chunkwise(k, v, decay, first, state, t)
}

/// The WKV on `path`.
#[track_caller]
pub(crate) fn wkv4_path(
    k: ArrayView2<f32>,
    v: ArrayView2<f32>,
    decay: ArrayView1<f32>,
    first: ArrayView1<f32>,
    state: &mut Rwkv4State,
    path: Path,
) -> Array2<f32> {
    match path {
        Path::Recurrent => wkv4_scan(k, v, decay, first, state),
        Path::Parallel => wkv4_parallel(k, v, decay, first, state),
        Path::Chunkwise(c) => wkv4_chunkwise(k, v, decay, first, state, c),
    }
}

impl MultiPath for Rwkv4TimeMix {
    fn forward_path(&self, xs: ArrayView2<f32>, state: &mut Rwkv4State, path: Path) -> Array2<f32> {
        let delta = shift::advance(xs, &mut state.x_prev);
        self.apply(xs, delta.view(), |k, v| {
            wkv4_path(k, v, self.decay.view(), self.first.view(), state, path)
        })
    }
}

/// Buffers for [`Rwkv4TimeMix::step_into`]: made once by [`Rwkv4TimeMix::scratch`], reused
/// for every token.
#[derive(Clone, Debug)]
pub(crate) struct Rwkv4Scratch {
    delta: Array1<f32>,
    xk: Array1<f32>,
    xv: Array1<f32>,
    xr: Array1<f32>,
    k: Array1<f32>,
    v: Array1<f32>,
    r: Array1<f32>,
}

impl Rwkv4TimeMix {
    /// Buffers for [`Rwkv4TimeMix::step_into`].
    pub(crate) fn scratch(&self) -> Rwkv4Scratch {
        let z = || Array1::zeros(self.decay.len());
        Rwkv4Scratch {
            delta: z(),
            xk: z(),
            xv: z(),
            xr: z(),
            k: z(),
            v: z(),
            r: z(),
        }
    }

    /// The recurrent path for one token, writing the output into `out` and every intermediate
    /// into `scratch`: no heap allocation; the products run where `team` says.
    ///
    /// # Shapes
    /// `x, out: [C]`.
    ///
    /// # Panics
    /// If a length differs from the layer's width, or `scratch` was made for another width.
    #[track_caller]
    pub(crate) fn step_into<'w>(
        &'w self,
        x: ArrayView1<f32>,
        state: &mut Rwkv4State,
        out: ArrayViewMut1<f32>,
        scratch: &mut Rwkv4Scratch,
        team: &Team<'_, 'w>,
    ) {
        let sc = scratch;
        shift::advance_into(x, &mut state.x_prev, sc.delta.view_mut());
        let d = sc.delta.view();
        shift::mix_into(x, d, self.maa_k.view(), sc.xk.view_mut());
        shift::mix_into(x, d, self.maa_v.view(), sc.xv.view_mut());
        shift::mix_into(x, d, self.maa_r.view(), sc.xr.view_mut());
        team.matvecs_into([
            (&self.receptance, sc.xr.view(), sc.r.view_mut()),
            (&self.key, sc.xk.view(), sc.k.view_mut()),
            (&self.value, sc.xv.view(), sc.v.view_mut()),
        ]);
        sigmoid(&mut sc.r);
        // The WKV goes into `xk`, then `σ(r) ⊙ wkv`.
        wkv4_step_into(
            sc.k.view(),
            sc.v.view(),
            self.decay.view(),
            self.first.view(),
            state,
            sc.xk.view_mut(),
        );
        sc.xk *= &sc.r;
        team.matvec_into(&self.output, sc.xk.view(), out);
    }
}

impl Rwkv4TimeMix {
    /// The layer given the shift differences, with the recurrence over `(k, v)` supplied by the
    /// caller.
    fn apply(
        &self,
        xs: ArrayView2<f32>,
        delta: ArrayView2<f32>,
        recur: impl FnOnce(ArrayView2<f32>, ArrayView2<f32>) -> Array2<f32>,
    ) -> Array2<f32> {
        let xk = shift::mix(xs, delta, self.maa_k.view());
        let xv = shift::mix(xs, delta, self.maa_v.view());
        let xr = shift::mix(xs, delta, self.maa_r.view());
        let mut r = self.receptance.forward(xr.view());
        sigmoid(&mut r);
        let k = self.key.forward(xk.view());
        let v = self.value.forward(xv.view());
        let wkv = recur(k.view(), v.view());
        self.output.forward((r * wkv).view())
    }
}

impl SequenceMixer for Rwkv4TimeMix {
    type State = Rwkv4State;

    fn init_state(&self) -> Rwkv4State {
        Rwkv4State::new(self.decay.len())
    }

    fn forward(&self, xs: ArrayView2<f32>, state: &mut Rwkv4State) -> Array2<f32> {
        let delta = shift::advance(xs, &mut state.x_prev);
        self.apply(xs, delta.view(), |k, v| {
            wkv4_scan(k, v, self.decay.view(), self.first.view(), state)
        })
    }

    /// The one-token path (the one the model decodes with), with a fresh scratch.
    fn step(&self, x: ArrayView1<f32>, state: &mut Rwkv4State) -> Array1<f32> {
        let mut out = Array1::zeros(self.decay.len());
        self.step_into(x, state, out.view_mut(), &mut self.scratch(), &Team::pool());
        out
    }

    fn step_batch(&self, xs: ArrayView2<f32>, states: &mut [&mut Rwkv4State]) -> Array2<f32> {
        let delta = shift::advance_each(xs, states.iter_mut().map(|s| &mut s.x_prev));
        self.apply(xs, delta.view(), |k, v| {
            let mut y = Array2::zeros(k.raw_dim());
            for (b, state) in states.iter_mut().enumerate() {
                let rows = ndarray::s![b..b + 1, ..];
                let (k, v) = (k.slice(rows), v.slice(rows));
                let yb = wkv4_scan(k, v, self.decay.view(), self.first.view(), state);
                y.row_mut(b).assign(&yb.row(0));
            }
            y
        })
    }
}
