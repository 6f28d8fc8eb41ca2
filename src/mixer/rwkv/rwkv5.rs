//! RWKV-5 time mix ("Eagle"; versions 5.0, 5.1, 5.2): multi-head matrix-valued state.
//!
//! ```text
//! x_s = x + δ ⊙ μ_s                    for s ∈ {k, v, r, g}     (static token shift)
//! r, k, v = W_r x_r, W_k x_k, W_v x_v  viewed per head as [H, N]
//! y_t = r_tᵀ (diag(u) k_t v_tᵀ + S),   S ← diag(w) S + k_t v_tᵀ  (see [`crate::mixer::wkv`])
//! out = W_o (GroupNorm_H(y) ⊙ silu(W_g x_g))                       (5.0: no gate)
//! ```
//!
//! 5.0 and 5.1 have one decay and one bonus per head; 5.2 has one per channel.
//!
//! The WKV part is the [`outer_product`] kernel with a constant per-key decay `w` and the
//! exclusive read-out plus bonus; [`SequenceMixer::forward`] runs it chunkwise in chunks of
//! [`DEFAULT_CHUNK`] tokens (one token: the recurrence), and [`MultiPath::forward_path`] runs any
//! path.

use crate::config::{Config, Version};
use crate::error::Result;
use crate::mixer::from_arrays::{build, layer_config, layer_params, random_layer};
use crate::mixer::outer_product::{self, Gate, Inputs, OuterState, ReadOut};
use crate::mixer::wkv::{self, WkvInputs};
use crate::mixer::{MultiPath, Path, SequenceMixer};
use crate::ops::{shift, silu, zip_inplace, HeadNorm, Linear, Team};
use crate::synthetic::Builder;
use crate::weights::{Scope, TensorSpec};
use ndarray::{Array1, Array2, Array3, ArrayD, ArrayView1, ArrayView2, ArrayViewMut1};

/// Chunk length of RWKV-5/6's default sequence path, chosen by measurement
/// (`cargo bench --bench mixers -- rwkv`; see the README's "Mixers" section).
pub const DEFAULT_CHUNK: usize = 16;

/// The path `forward` takes for `t` tokens: the recurrence for a single token, chunks otherwise.
pub fn default_path(t: usize) -> Path {
    if t <= 1 {
        Path::Recurrent
    } else {
        Path::Chunkwise(DEFAULT_CHUNK)
    }
}

/// RWKV-5/6's WKV through the [`outer_product`] kernel on `path`.
///
/// # Shapes
/// `x`: `[T, C]` each, `gate`: `[C]` or `[T, C]` log-decays, `bonus: [H, N]`, `s: [H, N, N]`.
#[track_caller]
pub(crate) fn wkv_path(
    x: WkvInputs,
    gate: Gate,
    bonus: &Array2<f32>,
    s: &mut Array3<f32>,
    path: Path,
) -> Array2<f32> {
    let u = bonus
        .view()
        .into_shape_with_order(x.r.ncols())
        .expect("[H, N] is contiguous");
    let x = Inputs {
        q: x.r.view(),
        k: x.k.view(),
        v: x.v.view(),
        gate: gate.reborrow(),
        read_out: ReadOut::Bonus(u.view()),
        eps: 0.0,
    };
    let mut state = OuterState {
        s: std::mem::take(s),
        z: None,
    };
    let y = match path {
        Path::Recurrent => outer_product::recurrent(&x, &mut state),
        Path::Parallel => outer_product::parallel(&x, &mut state),
        Path::Chunkwise(c) => outer_product::chunkwise(&x, &mut state, c),
    };
    *s = state.s;
    y
}

/// Recurrent state of one RWKV-5/6/7 time mix.
#[derive(Clone, Debug, PartialEq)]
pub struct WkvState {
    /// The previous token's layer-normed input, `[C]`.
    pub x_prev: Array1<f32>,
    /// One matrix per head, `[H, N, N]`, in the official orientation of each version:
    /// `[head, key, value]` for RWKV-5/6, `[head, value, key]` for RWKV-7.
    pub s: Array3<f32>,
}

impl WkvState {
    /// The zero state for `h` heads of size `n`.
    pub fn new(h: usize, n: usize) -> Self {
        WkvState {
            x_prev: Array1::zeros(h * n),
            s: Array3::zeros((h, n, n)),
        }
    }
}

/// The part shared by RWKV-5 and RWKV-6 after the WKV kernel: per-head group norm, gate, output.
#[derive(Clone, Debug)]
pub struct WkvOutput {
    /// `att.ln_x`, per head, eps 64e-5.
    pub(crate) ln_x: HeadNorm,
    /// `att.gate.weight`, `[C, C]` (absent in 5.0).
    pub(crate) gate: Option<Linear>,
    /// `att.output.weight`, `[C, C]`.
    pub(crate) output: Linear,
}

impl WkvOutput {
    /// The tensors [`WkvOutput::load`] reads under `att`, with their shapes.
    pub(crate) fn tensor_specs(att: &Scope, config: &Config, gated: bool) -> Vec<TensorSpec> {
        let c = config.n_embd;
        let mut specs = vec![att.spec("ln_x.weight", &[c]), att.spec("ln_x.bias", &[c])];
        if gated {
            specs.push(att.spec("gate.weight", &[c, c]));
        }
        specs.push(att.spec("output.weight", &[c, c]));
        specs
    }

    pub(crate) fn load(att: &Scope, config: &Config, gated: bool) -> Result<Self> {
        let c = config.n_embd;
        Ok(WkvOutput {
            ln_x: HeadNorm::rwkv(
                att.vector("ln_x.weight", c)?,
                att.vector("ln_x.bias", c)?,
                config.n_head,
            ),
            gate: gated.then(|| att.linear("gate.weight", c, c)).transpose()?,
            output: att.linear("output.weight", c, c)?,
        })
    }

    /// `W_o (GroupNorm(y) ⊙ silu(W_g x_g))`; `xg` is ignored when there is no gate.
    pub(crate) fn forward(&self, mut y: Array2<f32>, xg: Option<ArrayView2<f32>>) -> Array2<f32> {
        match (&self.gate, xg) {
            (Some(gate), Some(xg)) => {
                // The norm overlaps the gate's product.
                let ((), g) = rayon::join(
                    || self.ln_x.forward_inplace(&mut y),
                    || {
                        let mut g = gate.forward(xg);
                        silu(&mut g);
                        g
                    },
                );
                zip_inplace(y.view_mut(), g.view(), |y, g| y * g);
            }
            _ => self.ln_x.forward_inplace(&mut y),
        }
        self.output.forward(y.view())
    }

    /// One token of `W_o (GroupNorm(y) ⊙ silu(W_g x_g))` into `out`, with `y` normalised and
    /// gated in place and `g` holding `W_g x_g` on entry (the caller runs that product
    /// together with the others of its input row); `g` is ignored when there is no gate.
    ///
    /// # Shapes
    /// `y, g, out: [C]`.
    #[track_caller]
    pub(crate) fn step_into<'w>(
        &'w self,
        mut y: ArrayViewMut1<f32>,
        mut g: ArrayViewMut1<f32>,
        out: ArrayViewMut1<f32>,
        team: &Team<'_, 'w>,
    ) {
        self.ln_x.forward_one_inplace(y.view_mut());
        if self.gate.is_some() {
            silu(&mut g);
            y *= &g;
        }
        team.matvec_into(&self.output, y.view(), out);
    }
}

/// Buffers for the one-token paths of RWKV-5 and RWKV-6 ([`Rwkv5TimeMix::step_into`],
/// [`crate::mixer::rwkv6::Rwkv6TimeMix::step_into`]): made once by their `scratch` methods, reused
/// for every token.
#[derive(Clone, Debug)]
pub(crate) struct WkvScratch {
    pub(crate) delta: Array1<f32>,
    /// The shifted inputs, one row each: `x_w, x_k, x_v, x_r, x_g` (RWKV-5 leaves `x_w`
    /// unused), `[5, C]`.
    pub(crate) mixed: Array2<f32>,
    pub(crate) r: Array1<f32>,
    pub(crate) k: Array1<f32>,
    pub(crate) v: Array1<f32>,
    pub(crate) g: Array1<f32>,
    /// RWKV-6's per-token decay, `[C]`.
    pub(crate) w: Array1<f32>,
    pub(crate) y: Array1<f32>,
    /// RWKV-6's low-rank intermediates: the ddlerp's `[5·D]`, the decay's `[D_w]`.
    pub(crate) z_mix: Array1<f32>,
    pub(crate) z_decay: Array1<f32>,
}

impl WkvScratch {
    /// Buffers for width `c` with low-rank sizes `mix` (five times the ddlerp's `D`) and
    /// `decay`.
    pub(crate) fn new(c: usize, mix: usize, decay: usize) -> Self {
        let z = || Array1::zeros(c);
        WkvScratch {
            delta: z(),
            mixed: Array2::zeros((5, c)),
            r: z(),
            k: z(),
            v: z(),
            g: z(),
            w: z(),
            y: z(),
            z_mix: Array1::zeros(mix),
            z_decay: Array1::zeros(decay),
        }
    }
}

/// The RWKV-5.x time mix of one block.
#[derive(Clone, Debug)]
pub struct Rwkv5TimeMix {
    /// `1 − att.time_mix_k`, `[C]` (see [`shift`]).
    pub(crate) maa_k: Array1<f32>,
    /// `1 − att.time_mix_v`, `[C]`.
    pub(crate) maa_v: Array1<f32>,
    /// `1 − att.time_mix_r`, `[C]`.
    pub(crate) maa_r: Array1<f32>,
    /// `1 − att.time_mix_g`, `[C]` (5.1, 5.2).
    pub(crate) maa_g: Option<Array1<f32>>,
    /// `exp(−exp(att.time_decay))`, the decay per key channel, `[H, N]` (per-head values
    /// repeated along `N` for 5.0/5.1).
    pub(crate) decay: Array2<f32>,
    /// The bonus `u`, `[H, N]`: `att.time_faaaa` as stored, or `exp(att.time_first)` in files
    /// without `time_faaaa` (as the official loader does).
    pub(crate) bonus: Array2<f32>,
    /// `att.receptance.weight`, `[C, C]`.
    pub(crate) receptance: Linear,
    /// `att.key.weight`, `[C, C]`.
    pub(crate) key: Linear,
    /// `att.value.weight`, `[C, C]`.
    pub(crate) value: Linear,
    /// Group norm, gate and output projection.
    pub(crate) out: WkvOutput,
}

/// The stored shape of a per-head (5.0/5.1, `[H]`) or per-channel (5.2, `[H, N]`) parameter.
fn per_head_or_channel_shape(config: &Config) -> Vec<usize> {
    let (h, n) = (config.n_head, config.head_size);
    if config.version == Version::V5_2 {
        vec![h, n]
    } else {
        vec![h]
    }
}

/// A per-head or per-channel parameter (see [`per_head_or_channel_shape`]) as `[H, N]`.
fn per_head_or_channel(att: &Scope, name: &str, config: &Config) -> Result<Array2<f32>> {
    let (h, n) = (config.n_head, config.head_size);
    if config.version == Version::V5_2 {
        att.matrix(name, h, n)
    } else {
        let v = att.vector(name, h)?;
        Ok(Array2::from_shape_fn((h, n), |(i, _)| v[i]))
    }
}

/// `Ok` if `version` is an RWKV-5 version, else an error naming it.
fn check_rwkv5(layer: &str, version: Version) -> Result<()> {
    let ok = matches!(version, Version::V5_0 | Version::V5_1 | Version::V5_2);
    crate::mixer::check_arg(
        ok,
        layer,
        &format!("version {version}"),
        "5.0, 5.1 or 5.2",
        &[],
    )
}

/// Whether the bonus under `att` is stored as `time_faaaa` (already `e^u`) rather than as
/// `time_first` (`u`): the former when the checkpoint has it.
fn bonus_is_faaaa(att: &Scope) -> bool {
    att.contains("time_faaaa")
}

layer_params! {
    /// The parameters of an RWKV-5 time mix (5.0, 5.1 or 5.2), named and laid out as a BlinkDL
    /// checkpoint stores them under `blocks.N.att` (width `C`, `H` heads of `N`), for
    /// [`Rwkv5TimeMix::new`].
    pub struct Rwkv5Params {
        /// `time_mix_k`, `[C]`: the share of the current token in the key's input.
        time_mix_k: Array1<f32> => "time_mix_k",
        /// `time_mix_v`, `[C]`.
        time_mix_v: Array1<f32> => "time_mix_v",
        /// `time_mix_r`, `[C]`.
        time_mix_r: Array1<f32> => "time_mix_r",
        /// `time_mix_g`, `[C]` (5.1 and 5.2; `None` for 5.0).
        time_mix_g: Option<Array1<f32>> => "time_mix_g",
        /// `time_decay`: `[H]` (5.0, 5.1) or `[H, N]` (5.2); the decay is `e^{−e^{time_decay}}`.
        time_decay: ArrayD<f32> => "time_decay",
        /// `time_faaaa`, shaped as `time_decay`: the bonus `u` (5.1 and 5.2 checkpoints store
        /// it so; give this or `time_first`).
        time_faaaa: Option<ArrayD<f32>> => "time_faaaa",
        /// `time_first`, shaped as `time_decay`: the bonus as `ln u` (5.0 checkpoints store it
        /// so; give this or `time_faaaa`).
        time_first: Option<ArrayD<f32>> => "time_first",
        /// `receptance.weight`, `[C, C]` (`[out, in]`, as every projection here).
        receptance: Array2<f32> => "receptance.weight",
        /// `key.weight`, `[C, C]`.
        key: Array2<f32> => "key.weight",
        /// `value.weight`, `[C, C]`.
        value: Array2<f32> => "value.weight",
        /// `gate.weight`, `[C, C]` (5.1 and 5.2; `None` for 5.0).
        gate: Option<Array2<f32>> => "gate.weight",
        /// `output.weight`, `[C, C]`.
        output: Array2<f32> => "output.weight",
        /// `ln_x.weight`, `[C]`: the per-head group norm's scale.
        ln_x_weight: Array1<f32> => "ln_x.weight",
        /// `ln_x.bias`, `[C]`.
        ln_x_bias: Array1<f32> => "ln_x.bias",
    }
}

impl Rwkv5TimeMix {
    /// The layer of `version` (5.0, 5.1 or 5.2) with `heads` heads from its parameters. The
    /// width `C` is `receptance`'s input width; every other array is checked against it.
    ///
    /// # Errors
    /// [`Error::InputShape`](crate::Error::InputShape) naming `version` when it is not an
    /// RWKV-5 version, `heads` when it does not divide `C`, or a gate parameter given to 5.0;
    /// [`Error::MissingTensor`](crate::Error::MissingTensor) naming a gate parameter 5.1 or 5.2
    /// needs; [`Error::Shape`](crate::Error::Shape) naming the first parameter (by its
    /// checkpoint name) of the wrong shape.
    pub fn new(version: Version, heads: usize, params: Rwkv5Params) -> Result<Self> {
        check_rwkv5("Rwkv5TimeMix", version)?;
        let config = layer_config("Rwkv5TimeMix", version, params.receptance.ncols(), heads)?;
        let tensors = params.into_tensors();
        build(
            "Rwkv5TimeMix",
            &tensors,
            &config,
            Self::tensor_specs,
            Self::load,
        )
    }

    /// A layer of `version` (5.0, 5.1 or 5.2) of width `c` with `heads` heads and random
    /// weights in the ranges of trained checkpoints, reproducible from `seed`.
    ///
    /// # Errors
    /// As [`Rwkv5TimeMix::new`] for `version` and `heads` (or a width of 0).
    pub fn random(version: Version, c: usize, heads: usize, seed: u64) -> Result<Self> {
        check_rwkv5("Rwkv5TimeMix", version)?;
        random_layer(
            "Rwkv5TimeMix",
            version,
            (c, heads),
            0,
            seed,
            |_| {},
            |block, config| Self::load(&block.pp("att"), config),
        )
    }

    /// The RWKV-5 version of block 0's time mix under `att` (`ln_x` without RWKV-6's or
    /// RWKV-7's shift tensors): 5.0 without a gate, 5.2 with a decay per channel (`[H, N]`),
    /// 5.1 otherwise; `None` without `ln_x`.
    ///
    /// # Errors
    /// [`Error::MissingTensor`](crate::Error::MissingTensor) for a gated time mix without
    /// `time_decay`.
    pub(crate) fn detect(att: &Scope) -> Result<Option<Version>> {
        if !att.contains("ln_x.weight") {
            return Ok(None);
        }
        if !att.contains("gate.weight") {
            return Ok(Some(Version::V5_0));
        }
        let decay = att.shape("time_decay")?;
        Ok(Some(if decay.len() == 2 && decay[1] > 1 {
            Version::V5_2
        } else {
            Version::V5_1
        }))
    }

    /// Reads the head count and size from block 0's time mix under `att` (the length of
    /// `time_decay`'s first axis is `H`) into `config`.
    ///
    /// # Errors
    /// [`Error::Shape`](crate::Error::Shape) when `H` does not divide the width.
    pub(crate) fn read_sizes(att: &Scope, config: &mut Config) -> Result<()> {
        let c = config.n_embd;
        let decay = att.shape("time_decay")?;
        let h = decay.first().copied().unwrap_or(0);
        if h == 0 || !c.is_multiple_of(h) {
            return Err(crate::Error::Shape {
                name: att.path("time_decay"),
                expected: format!("[H, ..] with H dividing {c}"),
                found: decay,
            });
        }
        (config.n_head, config.head_size) = (h, c / h);
        Ok(())
    }

    /// Adds the random tensors of a time mix of `config` under `att` (e.g. `blocks.3.att`) that
    /// are RWKV-5's own to a synthetic checkpoint, in the ranges of trained ones.
    pub(crate) fn synthetic(b: &mut Builder, att: &str, config: &Config) {
        let (c, h, n) = (config.n_embd, config.n_head, config.head_size);
        let gated = config.version != Version::V5_0;
        let mixes: &[&str] = if gated {
            &["k", "v", "r", "g"]
        } else {
            &["k", "v", "r"]
        };
        for s in mixes {
            b.small(format!("{att}.time_mix_{s}"), &[1, 1, c], 0.0, 1.0);
        }
        if config.version == Version::V5_2 {
            b.small(format!("{att}.time_decay"), &[h, n], -8.0, 1.3);
            b.small(format!("{att}.time_faaaa"), &[h, n], -1.0, 1.0);
        } else {
            b.small(format!("{att}.time_decay"), &[h], -8.0, 1.3);
            b.small(format!("{att}.time_first"), &[h], -2.0, 0.5);
        }
        if gated {
            b.matrix(format!("{att}.gate.weight"), c, c);
        }
        b.layer_norm(&format!("{att}.ln_x"), c);
    }

    /// The tensors [`Rwkv5TimeMix::load`] reads under `att`, with their shapes: the bonus is
    /// `time_faaaa` or `time_first`, whichever the checkpoint has (the former if both).
    pub fn tensor_specs(att: &Scope, config: &Config) -> Vec<TensorSpec> {
        let c = config.n_embd;
        let gated = config.version != Version::V5_0;
        let per_head = per_head_or_channel_shape(config);
        let mut specs: Vec<TensorSpec> = ["time_mix_k", "time_mix_v", "time_mix_r"]
            .map(|name| att.spec(name, &[c]))
            .into();
        if gated {
            specs.push(att.spec("time_mix_g", &[c]));
        }
        specs.push(att.spec("time_decay", &per_head));
        let bonus = if bonus_is_faaaa(att) {
            "time_faaaa"
        } else {
            "time_first"
        };
        specs.push(att.spec(bonus, &per_head));
        for name in ["receptance", "key", "value"] {
            specs.push(att.spec(&format!("{name}.weight"), &[c, c]));
        }
        specs.extend(WkvOutput::tensor_specs(att, config, gated));
        specs
    }

    /// Loads the tensors under `att` (e.g. scope `blocks.3.att`).
    ///
    /// # Errors
    /// A missing tensor or a wrong shape, named in full.
    pub fn load(att: &Scope, config: &Config) -> Result<Self> {
        let c = config.n_embd;
        let gated = config.version != Version::V5_0;
        let one_minus = |name: &str| att.vector(name, c).map(|m| 1.0 - m);
        let bonus = if bonus_is_faaaa(att) {
            per_head_or_channel(att, "time_faaaa", config)?
        } else {
            per_head_or_channel(att, "time_first", config)?.mapv(f32::exp)
        };
        Ok(Rwkv5TimeMix {
            maa_k: one_minus("time_mix_k")?,
            maa_v: one_minus("time_mix_v")?,
            maa_r: one_minus("time_mix_r")?,
            maa_g: gated.then(|| one_minus("time_mix_g")).transpose()?,
            decay: per_head_or_channel(att, "time_decay", config)?.mapv(|d| (-d.exp()).exp()),
            bonus,
            receptance: att.linear("receptance.weight", c, c)?,
            key: att.linear("key.weight", c, c)?,
            value: att.linear("value.weight", c, c)?,
            out: WkvOutput::load(att, config, gated)?,
        })
    }
}

impl Rwkv5TimeMix {
    /// The layer given the shift differences, with the recurrence supplied by the caller.
    fn apply(
        &self,
        xs: ArrayView2<f32>,
        delta: ArrayView2<f32>,
        recur: impl FnOnce(WkvInputs) -> Array2<f32>,
    ) -> Array2<f32> {
        let mixed = |maa: &Array1<f32>| shift::mix(xs, delta, maa.view());
        let r = self.receptance.forward(mixed(&self.maa_r).view());
        let k = self.key.forward(mixed(&self.maa_k).view());
        let v = self.value.forward(mixed(&self.maa_v).view());
        let xg = self.maa_g.as_ref().map(mixed);
        let decay = self
            .decay
            .view()
            .into_shape_with_order(xs.ncols())
            .expect("[H, N] is contiguous");
        let w = decay
            .broadcast(xs.raw_dim())
            .expect("decay is as wide as xs");
        let y = recur(WkvInputs {
            r: r.view(),
            k: k.view(),
            v: v.view(),
            w,
        });
        self.out.forward(y, xg.as_ref().map(|g| g.view()))
    }
}

/// An `[H, N]` parameter as `[C]`.
fn flat(a: &Array2<f32>, c: usize) -> ArrayView1<'_, f32> {
    a.view()
        .into_shape_with_order(c)
        .expect("[H, N] is contiguous")
}

impl Rwkv5TimeMix {
    /// Buffers for [`Rwkv5TimeMix::step_into`].
    pub(crate) fn scratch(&self) -> WkvScratch {
        WkvScratch::new(self.maa_k.len(), 0, 0)
    }

    /// The recurrent path for one token, writing the output into `out` and every intermediate
    /// into `scratch`: no heap allocation. The products run where `team` says. The same
    /// operations as the sequence path for one token.
    ///
    /// # Shapes
    /// `x, out: [C]`.
    ///
    /// # Panics
    /// If a length differs from the layer's width, or `scratch` was made for another shape.
    #[track_caller]
    pub(crate) fn step_into<'w>(
        &'w self,
        x: ArrayView1<f32>,
        state: &mut WkvState,
        out: ArrayViewMut1<f32>,
        scratch: &mut WkvScratch,
        team: &Team<'_, 'w>,
    ) {
        let sc = scratch;
        let c = x.len();
        shift::advance_into(x, &mut state.x_prev, sc.delta.view_mut());
        let d = sc.delta.view();
        let maa = [
            Some(&self.maa_k),
            Some(&self.maa_v),
            Some(&self.maa_r),
            self.maa_g.as_ref(),
        ];
        for (maa, row) in maa.into_iter().zip(1..5) {
            if let Some(maa) = maa {
                shift::mix_into(x, d, maa.view(), sc.mixed.row_mut(row));
            }
        }
        let m = &sc.mixed;
        let k = (&self.key, m.row(1), sc.k.view_mut());
        let v = (&self.value, m.row(2), sc.v.view_mut());
        let r = (&self.receptance, m.row(3), sc.r.view_mut());
        match &self.out.gate {
            Some(gate) => team.matvecs_into([k, v, r, (gate, m.row(4), sc.g.view_mut())]),
            None => team.matvecs_into([k, v, r]),
        }
        wkv::step_into(
            sc.r.view(),
            sc.k.view(),
            sc.v.view(),
            flat(&self.decay, c),
            flat(&self.bonus, c),
            &mut state.s,
            sc.y.view_mut(),
        );
        self.out
            .step_into(sc.y.view_mut(), sc.g.view_mut(), out, team);
    }
}

/// The size accessors and the [`SequenceMixer`] impl shared by the RWKV-5 and RWKV-6 time
/// mixes, which differ only in how they form `r, k, v, w` (their `apply`, `step_into` and
/// `forward_path`).
macro_rules! wkv_time_mix_sequence_mixer {
    ($ty:ty) => {
        impl $ty {
            /// The width `C`.
            pub fn width(&self) -> usize {
                self.receptance.dim().1
            }

            /// The number of heads `H`.
            pub fn heads(&self) -> usize {
                self.bonus.nrows()
            }

            /// The head size `N`.
            pub fn head_size(&self) -> usize {
                self.bonus.ncols()
            }
        }

        impl SequenceMixer for $ty {
            type State = WkvState;

            fn init_state(&self) -> WkvState {
                let (h, n) = self.bonus.dim();
                WkvState::new(h, n)
            }

            fn forward(&self, xs: ArrayView2<f32>, state: &mut WkvState) -> Array2<f32> {
                self.forward_path(xs, state, default_path(xs.nrows()))
            }

            /// Through `step_into` with a fresh scratch.
            fn step(&self, x: ArrayView1<f32>, state: &mut WkvState) -> Array1<f32> {
                let mut out = Array1::zeros(x.len());
                let team = crate::ops::Team::pool();
                self.step_into(x, state, out.view_mut(), &mut self.scratch(), &team);
                out
            }

            fn step_batch(&self, xs: ArrayView2<f32>, states: &mut [&mut WkvState]) -> Array2<f32> {
                let delta = shift::advance_each(xs, states.iter_mut().map(|s| &mut s.x_prev));
                let mut s: Vec<_> = states.iter_mut().map(|s| &mut s.s).collect();
                self.apply(xs, delta.view(), |inp| {
                    inp.scan_each(self.bonus.view(), &mut s)
                })
            }
        }
    };
}
pub(crate) use wkv_time_mix_sequence_mixer;

wkv_time_mix_sequence_mixer!(Rwkv5TimeMix);

impl MultiPath for Rwkv5TimeMix {
    fn forward_path(&self, xs: ArrayView2<f32>, state: &mut WkvState, path: Path) -> Array2<f32> {
        let delta = shift::advance(xs, &mut state.x_prev);
        let w = self
            .decay
            .view()
            .into_shape_with_order(xs.ncols())
            .expect("[H, N] is contiguous");
        self.apply(xs, delta.view(), |x| {
            wkv_path(x, Gate::KeyDecay(w), &self.bonus, &mut state.s, path)
        })
    }
}
