//! RWKV-7 time mix ("Goose", x070): the generalised delta rule with a value residual.
//!
//! ```text
//! x_s = x + δ ⊙ μ_s                         for s ∈ {r, w, k, v, a, g}   (static token shift)
//! r, k, v = W_r x_r, W_k x_k, W_v x_v
//! w = exp(−0.606531 · σ(w0 + tanh(x_w W1) W2))        decay, in (0.545, 1)
//! a = σ(a0 + (x_a A1) A2)                              in-context learning rate
//! g = σ(x_g G1) G2                                     output gate
//! v ← v + (v_first − v) ⊙ σ(v0 + (x_v V1) V2)          value residual (blocks after the first)
//! κ̂ = normalise_per_head(k ⊙ k_k);  k ← k ⊙ (1 + (a − 1) ⊙ k_a)
//! S ← S diag(w) + (S (−κ̂)) (κ̂ ⊙ a)ᵀ + v kᵀ;  y = S r    (see [`crate::mixer::wkv7`])
//! out = W_o ((GroupNorm_H(y) + (Σ_{j∈h} r_j k_j r_k[h, j]) v_h) ⊙ g)
//! ```
//!
//! `v_first` is block 0's `v` for the same tokens: the model hands it from block to block (see
//! [`Rwkv7TimeMix::forward_with_v_first`]). All of this is the official package's
//! `RWKV_x070_TMix_seq` / `_one`, operation for operation.

use crate::config::{Config, Version};
use crate::error::Result;
use crate::mixer::from_arrays::{build, layer_config, layer_params, random_layer};
use crate::mixer::from_arrays::{read_heads, read_rank};
use crate::mixer::rwkv5::WkvState;
use crate::mixer::{wkv7, MultiPath, Path, SequenceMixer};
use crate::ops::{join4, shift, sigmoid, HeadNorm, Linear, Team};
use crate::synthetic::Builder;
use crate::weights::{Scope, TensorSpec};
use ndarray::{s, Array1, Array2, ArrayView1, ArrayView2, ArrayViewMut1, Axis, Zip};

/// The decay scale `0.606531 ≈ e^{−1/2}`, as the official code writes it: `w = exp(−0.606531 σ(·))`.
pub const DECAY_SCALE: f32 = 0.606_531;

/// Whether [`Rwkv7TimeMix`]'s sequence path runs [`wkv7::chunked`] (chunks of [`CHUNK`], from
/// [`CHUNKED_FROM`] tokens on) rather than [`wkv7::scan`]: whichever is faster for the target
/// the crate is compiled for: the scan where the target has AVX2 (its loops then vectorise as
/// widely as the chunked form's products), the chunked form elsewhere (measurements in
/// docs/performance.md).
pub const USE_CHUNKED: bool = !cfg!(target_feature = "avx2");

/// Fewest tokens for which [`Rwkv7TimeMix`] uses [`wkv7::chunked`] (see [`USE_CHUNKED`]).
pub const CHUNKED_FROM: usize = 8;

/// Chunk length of [`Rwkv7TimeMix`]'s sequence path (16 was fastest of 8, 16, 24, 32).
pub const CHUNK: usize = 16;

/// A low-rank projection `x ↦ f(x A) B`; the checkpoint stores `A, B` as `[in, out]` (used as
/// `x A`), kept here as layers of their transposes in the storage type.
#[derive(Clone, Debug)]
pub struct Lora {
    /// `*1` (stored `[C, D]`) as a layer `[D, C]`.
    pub(crate) a: Linear,
    /// `*2` (stored `[D, C]`) as a layer `[C, D]`.
    pub(crate) b: Linear,
}

impl Lora {
    /// The tensors [`Lora::load`] reads: `{name}1` `[C, D]` and `{name}2` `[D, C]`.
    fn tensor_specs(att: &Scope, name: char, c: usize, d: usize) -> [TensorSpec; 2] {
        [
            att.spec(&format!("{name}1"), &[c, d]),
            att.spec(&format!("{name}2"), &[d, c]),
        ]
    }

    fn load(att: &Scope, name: char, c: usize, d: usize) -> Result<Self> {
        Ok(Lora {
            a: att.low_rank(&format!("{name}1"), c, d)?,
            b: att.low_rank(&format!("{name}2"), d, c)?,
        })
    }

    /// `inner(x A) B`.
    fn forward(&self, x: ArrayView2<f32>, inner: impl Fn(&mut Array2<f32>)) -> Array2<f32> {
        let mut z = self.a.forward(x);
        inner(&mut z);
        self.b.forward(z.view())
    }
}

/// The value residual of a block after the first: how far `v` moves toward block 0's values.
#[derive(Clone, Debug)]
pub struct ValueResidual {
    /// `att.v0`, `[C]`.
    pub(crate) v0: Array1<f32>,
    /// `att.v1`, `att.v2`.
    pub(crate) lora: Lora,
}

/// The RWKV-7 time mix of one block.
#[derive(Clone, Debug)]
pub struct Rwkv7TimeMix {
    /// Token-shift coefficients `att.x_r, x_w, x_k, x_v, x_a, x_g` as stored (`x + δ ⊙ μ`),
    /// each `[C]`, in that order.
    pub(crate) shift: [Array1<f32>; 6],
    /// `att.w0`, `[C]`: the decay's bias.
    pub(crate) w0: Array1<f32>,
    /// `att.w1`, `att.w2` (inner `tanh`).
    pub(crate) decay: Lora,
    /// `att.a0`, `[C]`: the in-context learning rate's bias.
    pub(crate) a0: Array1<f32>,
    /// `att.a1`, `att.a2` (no inner activation).
    pub(crate) iclr: Lora,
    /// `att.v0, v1, v2`; `None` in block 0, whose values are `v_first` (its `v*` tensors are
    /// never read, as in the official loader).
    pub(crate) value_residual: Option<ValueResidual>,
    /// `att.g1`, `att.g2` (inner `σ`, none outside).
    pub(crate) gate: Lora,
    /// `att.k_k`, `[C]`: scales `k` before the per-head normalisation that gives `κ̂`.
    pub(crate) k_k: Array1<f32>,
    /// `att.k_a`, `[C]`: how much the learning rate scales the written key.
    pub(crate) k_a: Array1<f32>,
    /// `att.r_k`, `[H, N]`: weights of the per-head bonus `(Σ r k r_k) v`.
    pub(crate) r_k: Array2<f32>,
    /// `att.receptance.weight`, `[C, C]`.
    pub(crate) receptance: Linear,
    /// `att.key.weight`, `[C, C]`.
    pub(crate) key: Linear,
    /// `att.value.weight`, `[C, C]`.
    pub(crate) value: Linear,
    /// `att.output.weight`, `[C, C]`.
    pub(crate) output: Linear,
    /// `att.ln_x`, per head, eps 64e-5.
    pub(crate) ln_x: HeadNorm,
}

// The element-wise formulas of one token, shared by the sequence path (row by row) and the
// one-token path.

/// The decay `w = exp(−0.606531 · σ(z))` of its pre-activation `z = w0 + tanh(x_w W1) W2`.
fn decay_of(z: f32) -> f32 {
    (-DECAY_SCALE / (1.0 + (-z).exp())).exp()
}

/// `κ̂`: `k ⊙ k_k` with each head's `n` channels divided by their L2 norm (at least 1e-12,
/// as `F.normalize(·, dim=-1)` does).
fn normalised_key(
    k: ArrayView1<f32>,
    k_k: ArrayView1<f32>,
    n: usize,
    mut kappa: ArrayViewMut1<f32>,
) {
    Zip::from(&mut kappa)
        .and(&k)
        .and(&k_k)
        .for_each(|kappa, &k, &kk| *kappa = k * kk);
    for mut head in kappa.exact_chunks_mut(n) {
        let norm = head.dot(&head).sqrt().max(1e-12);
        head /= norm;
    }
}

/// The key written to the state: `k ← k ⊙ (1 + (a − 1) ⊙ k_a)`.
fn scale_key(mut k: ArrayViewMut1<f32>, a: ArrayView1<f32>, k_a: ArrayView1<f32>) {
    Zip::from(&mut k)
        .and(&a)
        .and(&k_a)
        .for_each(|k, &a, &ka| *k *= 1.0 + (a - 1.0) * ka);
}

/// The value residual: `v ← v + (v_first − v) ⊙ σ(v0 + m)`, `mix` holding `m` (turned into
/// `σ(v0 + m)` in place).
fn mix_value(
    mut v: ArrayViewMut1<f32>,
    first: ArrayView1<f32>,
    v0: ArrayView1<f32>,
    mut mix: ArrayViewMut1<f32>,
) {
    Zip::from(&mut mix)
        .and(&v0)
        .for_each(|m, &v0| *m = 1.0 / (1.0 + (-(*m + v0)).exp()));
    Zip::from(&mut v)
        .and(&first)
        .and(&mix)
        .for_each(|v, &f, &m| *v += (f - *v) * m);
}

/// The rank-one update's vectors: `neg ← −κ̂`, then `κ̂ ← κ̂ ⊙ a`.
fn split_kappa(mut kappa: ArrayViewMut1<f32>, a: ArrayView1<f32>, mut neg: ArrayViewMut1<f32>) {
    Zip::from(&mut neg)
        .and(&mut kappa)
        .and(&a)
        .for_each(|neg, kappa, &a| {
            *neg = -*kappa;
            *kappa *= a;
        });
}

/// The per-head bonus `y_h += (Σ_i r_i k_i r_k[h, i]) v_h` over heads of `n` channels.
fn add_bonus(
    mut y: ArrayViewMut1<f32>,
    r: ArrayView1<f32>,
    k: ArrayView1<f32>,
    v: ArrayView1<f32>,
    r_k: ArrayView2<f32>,
    n: usize,
) {
    for (h, mut yh) in y.exact_chunks_mut(n).into_iter().enumerate() {
        let cols = s![h * n..(h + 1) * n];
        let bonus: f32 = Zip::from(r.slice(cols))
            .and(k.slice(cols))
            .and(r_k.row(h))
            .fold(0.0, |acc, &r, &k, &rk| acc + r * k * rk);
        yh.scaled_add(bonus, &v.slice(cols));
    }
}

layer_params! {
    /// The parameters of an RWKV-7 time mix, named and laid out as a BlinkDL checkpoint stores
    /// them under `blocks.N.att` (width `C`, `H` heads of `N`, LoRA ranks `D_w`, `D_a`, `D_v`,
    /// `D_g`), for [`Rwkv7TimeMix::new`].
    pub struct Rwkv7Params {
        /// `x_r`, `[C]`: the receptance input's shift coefficient (`x + δ ⊙ x_r`).
        x_r: Array1<f32> => "x_r",
        /// `x_w`, `[C]`: the decay input's.
        x_w: Array1<f32> => "x_w",
        /// `x_k`, `[C]`: the key input's.
        x_k: Array1<f32> => "x_k",
        /// `x_v`, `[C]`: the value input's.
        x_v: Array1<f32> => "x_v",
        /// `x_a`, `[C]`: the learning rate input's.
        x_a: Array1<f32> => "x_a",
        /// `x_g`, `[C]`: the gate input's.
        x_g: Array1<f32> => "x_g",
        /// `w0`, `[C]`: the decay's bias.
        w0: Array1<f32> => "w0",
        /// `w1`, `[C, D_w]` (used as `x W1`, inner `tanh`).
        w1: Array2<f32> => "w1",
        /// `w2`, `[D_w, C]`.
        w2: Array2<f32> => "w2",
        /// `a0`, `[C]`: the in-context learning rate's bias.
        a0: Array1<f32> => "a0",
        /// `a1`, `[C, D_a]`.
        a1: Array2<f32> => "a1",
        /// `a2`, `[D_a, C]`.
        a2: Array2<f32> => "a2",
        /// `v0`, `[C]`: the value residual's bias (blocks after the first; `None` for block 0, whose values are `v_first`).
        v0: Option<Array1<f32>> => "v0",
        /// `v1`, `[C, D_v]` (with `v0`).
        v1: Option<Array2<f32>> => "v1",
        /// `v2`, `[D_v, C]` (with `v0`).
        v2: Option<Array2<f32>> => "v2",
        /// `g1`, `[C, D_g]` (inner `σ`).
        g1: Array2<f32> => "g1",
        /// `g2`, `[D_g, C]`.
        g2: Array2<f32> => "g2",
        /// `k_k`, `[C]`: scales `k` before the per-head normalisation.
        k_k: Array1<f32> => "k_k",
        /// `k_a`, `[C]`: how much the learning rate scales the written key.
        k_a: Array1<f32> => "k_a",
        /// `r_k`, `[H, N]`: weights of the per-head bonus.
        r_k: Array2<f32> => "r_k",
        /// `receptance.weight`, `[C, C]` (`[out, in]`, as every projection here).
        receptance: Array2<f32> => "receptance.weight",
        /// `key.weight`, `[C, C]`.
        key: Array2<f32> => "key.weight",
        /// `value.weight`, `[C, C]`.
        value: Array2<f32> => "value.weight",
        /// `output.weight`, `[C, C]`.
        output: Array2<f32> => "output.weight",
        /// `ln_x.weight`, `[C]`: the per-head group norm's scale.
        ln_x_weight: Array1<f32> => "ln_x.weight",
        /// `ln_x.bias`, `[C]`.
        ln_x_bias: Array1<f32> => "ln_x.bias",
    }
}

impl Rwkv7TimeMix {
    /// The layer with `heads` heads from its parameters: with the value residual when `v0`,
    /// `v1` and `v2` are given (a block after the first), without when they are `None` (block
    /// 0). The width `C` is `receptance`'s input width, the LoRA ranks those of `w1`, `a1`,
    /// `v1` and `g1`; every other array is checked against them.
    ///
    /// # Errors
    /// [`Error::InputShape`](crate::Error::InputShape) naming `heads` when it does not divide
    /// `C`; [`Error::MissingTensor`](crate::Error::MissingTensor) naming `v1` or `v2` when only
    /// some of the value residual is given; [`Error::Shape`](crate::Error::Shape) naming the
    /// first parameter (by its checkpoint name) of the wrong shape.
    pub fn new(heads: usize, params: Rwkv7Params) -> Result<Self> {
        let mut config = layer_config(
            "Rwkv7TimeMix",
            Version::V7,
            params.receptance.ncols(),
            heads,
        )?;
        config.dim_decay_lora = params.w1.ncols();
        config.dim_a_lora = params.a1.ncols();
        config.dim_v_lora = params.v1.as_ref().map_or(0, |v1| v1.ncols());
        config.dim_g_lora = params.g1.ncols();
        let residual = [
            params.v0.is_some(),
            params.v1.is_some(),
            params.v2.is_some(),
        ];
        let layer = usize::from(residual.contains(&true));
        let tensors = params.into_tensors();
        build(
            "Rwkv7TimeMix",
            &tensors,
            &config,
            |att, config| Self::tensor_specs(att, config, layer),
            |att, config| Self::load(att, config, layer),
        )
    }

    /// A layer of width `c` with `heads` heads and random weights in the ranges of trained
    /// checkpoints (the release's LoRA ranks), with the value residual of a block after the
    /// first when `value_residual`; reproducible from `seed`.
    ///
    /// # Errors
    /// As [`Rwkv7TimeMix::new`] for `heads` (or a width of 0).
    pub fn random(c: usize, heads: usize, value_residual: bool, seed: u64) -> Result<Self> {
        let layer = usize::from(value_residual);
        random_layer(
            "Rwkv7TimeMix",
            Version::V7,
            (c, heads),
            layer,
            seed,
            |_| {},
            |block, config| Self::load(&block.pp("att"), config, layer),
        )
    }

    /// The width `C`.
    pub fn width(&self) -> usize {
        self.receptance.dim().1
    }

    /// The number of heads `H`.
    pub fn heads(&self) -> usize {
        self.r_k.nrows()
    }

    /// The head size `N`.
    pub fn head_size(&self) -> usize {
        self.r_k.ncols()
    }

    /// Whether the layer mixes its values toward block 0's (a block after the first).
    pub fn has_value_residual(&self) -> bool {
        self.value_residual.is_some()
    }

    /// Whether block 0's time mix under `att` is RWKV-7's (it has `r_k`, `x_r` or `k_k`).
    pub(crate) fn detect(att: &Scope) -> bool {
        ["r_k", "x_r", "k_k"].iter().any(|n| att.contains(n))
    }

    /// Reads the head count and size (from `r_k`, `[H, N]`) and the LoRA ranks (`w1`, `a1`,
    /// `g1` of block 0 under `att0`; `v1` of block 1 under `att1`, when there is a block 1:
    /// block 0's is never used and may be absent) into `config`.
    ///
    /// # Errors
    /// [`Error::MissingTensor`](crate::Error::MissingTensor) or
    /// [`Error::Shape`](crate::Error::Shape) naming the tensor.
    pub(crate) fn read_sizes(
        att0: &Scope,
        att1: Option<&Scope>,
        config: &mut Config,
    ) -> Result<()> {
        let c = config.n_embd;
        (config.n_head, config.head_size) = read_heads(att0, "r_k", c)?;
        config.dim_decay_lora = read_rank(att0, "w1", c)?;
        config.dim_a_lora = read_rank(att0, "a1", c)?;
        config.dim_g_lora = read_rank(att0, "g1", c)?;
        if let Some(att1) = att1 {
            config.dim_v_lora = read_rank(att1, "v1", c)?;
        }
        Ok(())
    }

    /// Adds the random tensors of a time mix of `config` under `att` (e.g. `blocks.3.att`) that
    /// are RWKV-7's own to a synthetic checkpoint, in the ranges of trained ones (the value
    /// residual's `v0`, `v1`, `v2` only when `config` has a value LoRA rank).
    pub(crate) fn synthetic(b: &mut Builder, att: &str, config: &Config) {
        let (c, h, n) = (config.n_embd, config.n_head, config.head_size);
        for s in ["r", "w", "k", "v", "a", "g"] {
            b.small(format!("{att}.x_{s}"), &[1, 1, c], 0.0, 1.0);
        }
        let loras = [
            ('w', config.dim_decay_lora, (-7.0, 2.0)),
            ('a', config.dim_a_lora, (-1.0, 1.0)),
            ('v', config.dim_v_lora, (-1.0, 1.0)),
        ];
        for (name, d, (lo, hi)) in loras.into_iter().filter(|l| l.1 > 0) {
            b.small(format!("{att}.{name}0"), &[1, 1, c], lo, hi);
            b.low_rank(format!("{att}.{name}1"), &[c, d], c);
            b.low_rank(format!("{att}.{name}2"), &[d, c], d);
        }
        let dg = config.dim_g_lora;
        b.low_rank(format!("{att}.g1"), &[c, dg], c);
        b.low_rank(format!("{att}.g2"), &[dg, c], dg);
        b.small(format!("{att}.k_k"), &[1, 1, c], 0.7, 1.0);
        b.small(format!("{att}.k_a"), &[1, 1, c], 0.8, 1.2);
        b.small(format!("{att}.r_k"), &[h, n], -0.3, 0.3);
        b.layer_norm(&format!("{att}.ln_x"), c);
    }

    /// The tensors [`Rwkv7TimeMix::load`] reads under `att` for block `layer`, with their
    /// shapes (block 0: no `v0`, `v1`, `v2`).
    pub fn tensor_specs(att: &Scope, config: &Config, layer: usize) -> Vec<TensorSpec> {
        let c = config.n_embd;
        let mut specs: Vec<TensorSpec> = ["x_r", "x_w", "x_k", "x_v", "x_a", "x_g"]
            .map(|name| att.spec(name, &[c]))
            .into();
        if layer > 0 {
            specs.push(att.spec("v0", &[c]));
            specs.extend(Lora::tensor_specs(att, 'v', c, config.dim_v_lora));
        }
        specs.push(att.spec("w0", &[c]));
        specs.extend(Lora::tensor_specs(att, 'w', c, config.dim_decay_lora));
        specs.push(att.spec("a0", &[c]));
        specs.extend(Lora::tensor_specs(att, 'a', c, config.dim_a_lora));
        specs.extend(Lora::tensor_specs(att, 'g', c, config.dim_g_lora));
        specs.extend([
            att.spec("k_k", &[c]),
            att.spec("k_a", &[c]),
            att.spec("r_k", &[config.n_head, config.head_size]),
        ]);
        for name in ["receptance", "key", "value", "output"] {
            specs.push(att.spec(&format!("{name}.weight"), &[c, c]));
        }
        specs.extend([att.spec("ln_x.weight", &[c]), att.spec("ln_x.bias", &[c])]);
        specs
    }

    /// Loads the tensors under `att` (e.g. scope `blocks.3.att`) of block `layer`. Block 0 reads
    /// no `v0`, `v1`, `v2`.
    ///
    /// # Errors
    /// A missing tensor or a wrong shape, named in full.
    pub fn load(att: &Scope, config: &Config, layer: usize) -> Result<Self> {
        let c = config.n_embd;
        let (h, n) = (config.n_head, config.head_size);
        let vector = |name: &str| att.vector(name, c);
        let shift = ["x_r", "x_w", "x_k", "x_v", "x_a", "x_g"]
            .map(vector)
            .into_iter()
            .collect::<Result<Vec<_>>>()?;
        let value_residual = (layer > 0)
            .then(|| -> Result<ValueResidual> {
                Ok(ValueResidual {
                    v0: vector("v0")?,
                    lora: Lora::load(att, 'v', c, config.dim_v_lora)?,
                })
            })
            .transpose()?;
        Ok(Rwkv7TimeMix {
            shift: shift.try_into().expect("six vectors"),
            w0: vector("w0")?,
            decay: Lora::load(att, 'w', c, config.dim_decay_lora)?,
            a0: vector("a0")?,
            iclr: Lora::load(att, 'a', c, config.dim_a_lora)?,
            value_residual,
            gate: Lora::load(att, 'g', c, config.dim_g_lora)?,
            k_k: vector("k_k")?,
            k_a: vector("k_a")?,
            r_k: att.matrix("r_k", h, n)?,
            receptance: att.linear("receptance.weight", c, c)?,
            key: att.linear("key.weight", c, c)?,
            value: att.linear("value.weight", c, c)?,
            output: att.linear("output.weight", c, c)?,
            ln_x: HeadNorm::rwkv(
                att.vector("ln_x.weight", c)?,
                att.vector("ln_x.bias", c)?,
                h,
            ),
        })
    }

    /// The per-token decay `w = exp(−0.606531 · σ(w0 + tanh(x_w W1) W2))`, `[T, C]`.
    pub fn decay(&self, xw: ArrayView2<f32>) -> Array2<f32> {
        let mut d = self.decay.forward(xw, |z| z.mapv_inplace(f32::tanh));
        d += &self.w0;
        d.mapv_inplace(decay_of);
        d
    }

    /// The sequence path with the value residual: `v_first` holds block 0's values `[T, C]`
    /// for the rows of `xs`. Block 0 (no [`ValueResidual`]), or any block given `None`, stores
    /// its own values there; the blocks after it mix toward them.
    ///
    /// # Shapes
    /// `xs: [T, C]` → `[T, C]`; `v_first: [T, C]`.
    ///
    /// # Panics
    /// If `xs` or `v_first` has the wrong shape.
    #[track_caller]
    pub fn forward_with_v_first(
        &self,
        xs: ArrayView2<f32>,
        v_first: &mut Option<Array2<f32>>,
        state: &mut WkvState,
    ) -> Array2<f32> {
        self.forward_path_with_v_first(xs, v_first, state, default_path(xs.nrows()))
    }

    /// [`Rwkv7TimeMix::forward_with_v_first`] with the WKV recurrence run by `path`:
    /// [`wkv7::scan`] (`Recurrent`), [`wkv7::chunked`] (`Chunkwise(c)`), or one chunk of the
    /// whole call (`Parallel`).
    ///
    /// # Panics
    /// As [`Rwkv7TimeMix::forward_with_v_first`], or for `Path::Chunkwise(0)`.
    #[track_caller]
    pub fn forward_path_with_v_first(
        &self,
        xs: ArrayView2<f32>,
        v_first: &mut Option<Array2<f32>>,
        state: &mut WkvState,
        path: Path,
    ) -> Array2<f32> {
        let delta = shift::advance(xs, &mut state.x_prev);
        self.apply(xs, delta.view(), v_first, |[r, w, k, v, a, b]| match path {
            Path::Recurrent => wkv7::scan(r, w, k, v, a, b, &mut state.s),
            Path::Chunkwise(c) => wkv7::chunked(r, w, k, v, a, b, &mut state.s, c),
            Path::Parallel => wkv7::chunked(r, w, k, v, a, b, &mut state.s, r.nrows().max(1)),
        })
    }

    /// One token of each of `B` sequences (row `b` of `xs` with `states[b]`), with the value
    /// residual: `v_first` holds block 0's values `[B, C]` for these rows (filled by block 0,
    /// as in [`Rwkv7TimeMix::forward_with_v_first`]).
    ///
    /// # Shapes
    /// `xs: [B, C]` → `[B, C]`; `v_first: [B, C]`.
    ///
    /// # Panics
    /// If `states.len() != B`, or on wrong shapes.
    #[track_caller]
    pub fn step_batch_with_v_first(
        &self,
        xs: ArrayView2<f32>,
        v_first: &mut Option<Array2<f32>>,
        states: &mut [&mut WkvState],
    ) -> Array2<f32> {
        let delta = shift::advance_each(xs, states.iter_mut().map(|s| &mut s.x_prev));
        self.apply(xs, delta.view(), v_first, |x| {
            let mut y = Array2::zeros(x[0].raw_dim());
            for (b, state) in states.iter_mut().enumerate() {
                let [r, w, k, v, a, b_] = x.map(|m| m.slice_move(ndarray::s![b..b + 1, ..]));
                y.row_mut(b)
                    .assign(&wkv7::scan(r, w, k, v, a, b_, &mut state.s).row(0));
            }
            y
        })
    }

    /// The layer given the shift differences and `v_first`, with the WKV recurrence supplied
    /// by the caller (it gets `[r, w, k, v, a, b]`, each `[T, C]`).
    fn apply(
        &self,
        xs: ArrayView2<f32>,
        delta: ArrayView2<f32>,
        v_first: &mut Option<Array2<f32>>,
        recur: impl FnOnce([ArrayView2<f32>; 6]) -> Array2<f32>,
    ) -> Array2<f32> {
        let n = self.r_k.ncols();
        let [xr, xw, xk, xv, xa, xg] = self
            .shift
            .each_ref()
            .map(|mu| shift::mix(xs, delta, mu.view()));
        // Independent products: each side's element-wise work overlaps the other's blocks.
        let (r, mut k, mut v, w) = join4(
            || self.receptance.forward(xr.view()),
            || self.key.forward(xk.view()),
            || self.value.forward(xv.view()),
            || self.decay(xw.view()),
        );
        let (a, g) = rayon::join(
            || {
                let mut a = self.iclr.forward(xa.view(), |_| ());
                a += &self.a0;
                sigmoid(&mut a);
                a
            },
            || self.gate.forward(xg.view(), sigmoid),
        );

        let mut kappa = Array2::zeros(k.raw_dim());
        let mut neg_kappa = Array2::zeros(k.raw_dim());
        Zip::from(k.rows_mut())
            .and(a.rows())
            .and(kappa.rows_mut())
            .and(neg_kappa.rows_mut())
            .for_each(|k, a, mut kappa, neg| {
                normalised_key(k.view(), self.k_k.view(), n, kappa.view_mut());
                scale_key(k, a, self.k_a.view());
                split_kappa(kappa, a, neg);
            });
        if let (Some(res), Some(first)) = (&self.value_residual, v_first.as_ref()) {
            assert_eq!(first.dim(), v.dim(), "Rwkv7TimeMix: v_first shape");
            let mut mix = res.lora.forward(xv.view(), |_| ());
            Zip::from(v.rows_mut())
                .and(first.rows())
                .and(mix.rows_mut())
                .for_each(|v, first, mix| mix_value(v, first, res.v0.view(), mix));
        } else {
            *v_first = Some(v.clone());
        }

        let mut y = recur([
            r.view(),
            w.view(),
            k.view(),
            v.view(),
            neg_kappa.view(),
            kappa.view(),
        ]);
        self.ln_x.forward_inplace(&mut y);
        Zip::from(y.rows_mut())
            .and(r.rows())
            .and(k.rows())
            .and(v.rows())
            .for_each(|y, r, k, v| add_bonus(y, r, k, v, self.r_k.view(), n));
        y *= &g;
        self.output.forward(y.view())
    }
}

/// Buffers for [`Rwkv7TimeMix::step_into`]: made once by [`Rwkv7TimeMix::scratch`], reused
/// for every token.
#[derive(Clone, Debug)]
pub(crate) struct Rwkv7Scratch {
    delta: Array1<f32>,
    /// The shifted inputs `x_r, x_w, x_k, x_v, x_a, x_g`, `[6, C]`.
    mixed: Array2<f32>,
    r: Array1<f32>,
    w: Array1<f32>,
    k: Array1<f32>,
    v: Array1<f32>,
    a: Array1<f32>,
    g: Array1<f32>,
    /// `κ̂`, then `κ̂ ⊙ a`.
    kappa: Array1<f32>,
    /// `−κ̂`.
    neg_kappa: Array1<f32>,
    /// The value residual's mix.
    mix: Array1<f32>,
    y: Array1<f32>,
    /// Low-rank intermediates of the decay, in-context rate, gate and value residual, one
    /// after the other.
    mid: Array1<f32>,
}

impl Rwkv7TimeMix {
    /// Buffers for [`Rwkv7TimeMix::step_into`]. Those of a block with a value residual also
    /// serve block 0 (with the same sizes), not the other way round.
    pub(crate) fn scratch(&self) -> Rwkv7Scratch {
        let c = self.w0.len();
        let z = || Array1::zeros(c);
        let mid: usize = [&self.decay, &self.iclr, &self.gate]
            .into_iter()
            .chain(self.value_residual.as_ref().map(|r| &r.lora))
            .map(|l| l.a.dim().0)
            .sum();
        Rwkv7Scratch {
            delta: z(),
            mixed: Array2::zeros((6, c)),
            r: z(),
            w: z(),
            k: z(),
            v: z(),
            a: z(),
            g: z(),
            kappa: z(),
            neg_kappa: z(),
            mix: z(),
            y: z(),
            mid: Array1::zeros(mid),
        }
    }

    /// The recurrent path for one token, writing the output into `out` and every intermediate
    /// into `scratch`: no heap allocation; the products run where `team` says. The same
    /// operations as [`Rwkv7TimeMix::forward_with_v_first`] for one token, the low-rank
    /// products as vector-matrix products.
    ///
    /// `v_first` carries the value residual: given a buffer, a block without a
    /// [`ValueResidual`] (block 0) writes its values into it and a block with one mixes toward
    /// it; `None` runs the block on its own (its own first block: `v` unchanged).
    ///
    /// # Shapes
    /// `x, out, v_first: [C]`.
    ///
    /// # Panics
    /// If a length differs from the layer's width, or `scratch` was made for another shape.
    #[track_caller]
    pub(crate) fn step_into<'w>(
        &'w self,
        x: ArrayView1<f32>,
        v_first: Option<ArrayViewMut1<f32>>,
        state: &mut WkvState,
        out: ArrayViewMut1<f32>,
        scratch: &mut Rwkv7Scratch,
        team: &Team<'_, 'w>,
    ) {
        let sc = scratch;
        let n = self.r_k.ncols();
        shift::advance_into(x, &mut state.x_prev, sc.delta.view_mut());
        for (mu, row) in self.shift.iter().zip(sc.mixed.rows_mut()) {
            shift::mix_into(x, sc.delta.view(), mu.view(), row);
        }
        let m = &sc.mixed;
        let (xr, xw, xk, xv, xa, xg) = (m.row(0), m.row(1), m.row(2), m.row(3), m.row(4), m.row(5));
        let ranks = [&self.decay, &self.iclr, &self.gate].map(|l| l.a.dim().0);
        let residual = self.value_residual.as_ref().zip(v_first.as_ref());
        let rank_v = residual.map_or(0, |(res, _)| res.lora.a.dim().0);
        assert!(
            sc.mid.len() >= ranks.iter().sum::<usize>() + rank_v,
            "Rwkv7TimeMix: scratch made for another layer shape"
        );
        let (mut zw, rest) = sc.mid.view_mut().split_at(Axis(0), ranks[0]);
        let (mut za, rest) = rest.split_at(Axis(0), ranks[1]);
        let (mut zg, rest) = rest.split_at(Axis(0), ranks[2]);
        let mut zv = rest.slice_move(s![..rank_v]);
        // The products of the mixed rows, then the LoRAs' second halves: two joint jobs.
        let first = [
            (&self.receptance, xr, sc.r.view_mut()),
            (&self.key, xk, sc.k.view_mut()),
            (&self.value, xv, sc.v.view_mut()),
            (&self.decay.a, xw, zw.view_mut()),
            (&self.iclr.a, xa, za.view_mut()),
            (&self.gate.a, xg, zg.view_mut()),
        ];
        match residual {
            Some((res, _)) => {
                let [r, k, v, w, a, g] = first;
                team.matvecs_into([r, k, v, w, a, g, (&res.lora.a, xv, zv.view_mut())]);
            }
            None => team.matvecs_into(first),
        }
        zw.mapv_inplace(f32::tanh);
        sigmoid(&mut zg);
        let second = [
            (&self.decay.b, zw.view(), sc.w.view_mut()),
            (&self.iclr.b, za.view(), sc.a.view_mut()),
            (&self.gate.b, zg.view(), sc.g.view_mut()),
        ];
        match residual {
            Some((res, _)) => {
                let [w, a, g] = second;
                team.matvecs_into([w, a, g, (&res.lora.b, zv.view(), sc.mix.view_mut())]);
            }
            None => team.matvecs_into(second),
        }
        Zip::from(&mut sc.w)
            .and(&self.w0)
            .for_each(|w, &w0| *w = decay_of(*w + w0));
        sc.a += &self.a0;
        sigmoid(&mut sc.a);

        normalised_key(sc.k.view(), self.k_k.view(), n, sc.kappa.view_mut());
        scale_key(sc.k.view_mut(), sc.a.view(), self.k_a.view());
        split_kappa(sc.kappa.view_mut(), sc.a.view(), sc.neg_kappa.view_mut());
        match (&self.value_residual, v_first) {
            (Some(res), Some(first)) => {
                mix_value(
                    sc.v.view_mut(),
                    first.view(),
                    res.v0.view(),
                    sc.mix.view_mut(),
                );
            }
            (None, Some(mut first)) => first.assign(&sc.v),
            (_, None) => {}
        }

        wkv7::step_into(
            sc.r.view(),
            sc.w.view(),
            sc.k.view(),
            sc.v.view(),
            sc.neg_kappa.view(),
            sc.kappa.view(),
            &mut state.s,
            sc.y.view_mut(),
        );
        self.ln_x.forward_one_inplace(sc.y.view_mut());
        let (r, k, v) = (sc.r.view(), sc.k.view(), sc.v.view());
        add_bonus(sc.y.view_mut(), r, k, v, self.r_k.view(), n);
        sc.y *= &sc.g;
        team.matvec_into(&self.output, sc.y.view(), out);
    }
}

/// The path [`Rwkv7TimeMix`]'s `forward` takes for `t` tokens (see [`USE_CHUNKED`]).
pub fn default_path(t: usize) -> Path {
    if USE_CHUNKED && t >= CHUNKED_FROM {
        Path::Chunkwise(CHUNK)
    } else {
        Path::Recurrent
    }
}

/// On its own, a block is its own first block: with no `v_first` given, the value residual
/// leaves `v` unchanged (see [`Rwkv7TimeMix::forward_with_v_first`]).
impl SequenceMixer for Rwkv7TimeMix {
    type State = WkvState;

    fn init_state(&self) -> WkvState {
        let (h, n) = self.r_k.dim();
        WkvState::new(h, n)
    }

    fn forward(&self, xs: ArrayView2<f32>, state: &mut WkvState) -> Array2<f32> {
        self.forward_with_v_first(xs, &mut None, state)
    }

    /// The one-token path (the one the model decodes with), with a fresh scratch and no `v_first`.
    fn step(&self, x: ArrayView1<f32>, state: &mut WkvState) -> Array1<f32> {
        let mut out = Array1::zeros(x.len());
        self.step_into(
            x,
            None,
            state,
            out.view_mut(),
            &mut self.scratch(),
            &Team::pool(),
        );
        out
    }

    fn step_batch(&self, xs: ArrayView2<f32>, states: &mut [&mut WkvState]) -> Array2<f32> {
        self.step_batch_with_v_first(xs, &mut None, states)
    }
}

/// Paths as in [`Rwkv7TimeMix::forward_path_with_v_first`], the block on its own.
impl MultiPath for Rwkv7TimeMix {
    fn forward_path(&self, xs: ArrayView2<f32>, state: &mut WkvState, path: Path) -> Array2<f32> {
        self.forward_path_with_v_first(xs, &mut None, state, path)
    }
}
