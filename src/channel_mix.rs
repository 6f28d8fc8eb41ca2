//! Channel mix (the RWKV feed-forward block), shared by versions 4 to 7.
//!
//! ```text
//! x_k = x + δ ⊙ μ_k,   x_r = x + δ ⊙ μ_r          (token shift, see [`crate::ops::shift`])
//! out = σ(W_r x_r) ⊙ W_v relu(W_k x_k)²           (RWKV-7: W_v relu(W_k x_k)², no receptance)
//! ```

use crate::config::{Config, Version};
use crate::error::Result;
use crate::mixer::from_arrays::{build, layer_config, random_layer, Param};
use crate::mixer::SequenceMixer;
use crate::ops::{relu_squared, shift, sigmoid, zip_inplace, Linear, Team};
use crate::synthetic::Builder;
use crate::weights::{Scope, TensorMap, TensorSpec};
use ndarray::{Array1, Array2, ArrayView1, ArrayView2, ArrayViewMut1};

/// The channel mix of one block. Its state is the previous token's layer-normed input `[C]`.
#[derive(Clone, Debug)]
pub struct ChannelMix {
    /// Shift coefficient of the key input, `[C]`: `ffn.time_maa_k` (v6), `ffn.x_k` (v7) or
    /// `1 − ffn.time_mix_k` (v4/v5).
    pub(crate) maa_k: Array1<f32>,
    /// `ffn.key.weight`, `[F, C]`.
    pub(crate) key: Linear,
    /// `ffn.value.weight`, `[C, F]`.
    pub(crate) value: Linear,
    /// The receptance gate `σ(W_r x_r)`; RWKV-7 has none.
    pub(crate) receptance: Option<Receptance>,
}

/// The channel mix's receptance gate (versions 4 to 6).
#[derive(Clone, Debug)]
pub struct Receptance {
    /// Shift coefficient of the receptance input, `[C]` (`time_maa_r` or `1 − time_mix_r`).
    pub(crate) maa_r: Array1<f32>,
    /// `ffn.receptance.weight`, `[C, C]`.
    pub(crate) weight: Linear,
}

/// The parameters of a channel mix as a BlinkDL checkpoint stores them under `blocks.N.ffn`
/// (width `C`, hidden width `F`), for [`ChannelMix::new`]. The shift coefficients go under
/// the version's names: `time_mix_k`/`time_mix_r` (v4, v5), `time_maa_k`/`time_maa_r` (v6),
/// `x_k` (v7).
#[derive(Clone, Debug)]
pub struct ChannelMixParams {
    /// The key input's shift coefficient as stored, `[C]`.
    pub mix_k: Array1<f32>,
    /// The receptance input's shift coefficient as stored, `[C]` (`None` for v7).
    pub mix_r: Option<Array1<f32>>,
    /// `key.weight`, `[F, C]` (`[out, in]`, as every projection here).
    pub key: Array2<f32>,
    /// `value.weight`, `[C, F]`.
    pub value: Array2<f32>,
    /// `receptance.weight`, `[C, C]` (`None` for v7).
    pub receptance: Option<Array2<f32>>,
}

impl ChannelMixParams {
    /// The parameters under `version`'s checkpoint names.
    fn into_tensors(self, version: Version) -> TensorMap {
        let mut map = TensorMap::new();
        self.mix_k.insert_into(&maa_name(version, "k"), &mut map);
        self.mix_r.insert_into(&maa_name(version, "r"), &mut map);
        self.key.insert_into("key.weight", &mut map);
        self.value.insert_into("value.weight", &mut map);
        self.receptance.insert_into("receptance.weight", &mut map);
        map
    }
}

/// The name of the shift coefficient of input `s` (`k` or `r`) in `version`.
fn maa_name(version: Version, s: &str) -> String {
    match version {
        Version::V6 => format!("time_maa_{s}"),
        Version::V7 => format!("x_{s}"),
        _ => format!("time_mix_{s}"),
    }
}

impl ChannelMix {
    /// The channel mix of `version` from its parameters. The width `C` is `key`'s input width
    /// and `F` its output width; every other array is checked against them.
    ///
    /// # Errors
    /// [`Error::InputShape`](crate::Error::InputShape) naming a receptance parameter given to
    /// v7; [`Error::MissingTensor`](crate::Error::MissingTensor) naming one v4 to v6 needs;
    /// [`Error::Shape`](crate::Error::Shape) naming the first parameter (by its checkpoint name)
    /// of the wrong shape.
    pub fn new(version: Version, params: ChannelMixParams) -> Result<Self> {
        let (f, c) = params.key.dim();
        let mut config = layer_config("ChannelMix", version, c, 1)?;
        config.dim_ffn = f;
        let tensors = params.into_tensors(version);
        build(
            "ChannelMix",
            &tensors,
            &config,
            Self::tensor_specs,
            Self::load,
        )
    }

    /// A channel mix of `version` of width `c` and hidden width `f` with random weights in the
    /// ranges of trained checkpoints, reproducible from `seed`.
    ///
    /// # Errors
    /// For a width of 0.
    pub fn random(version: Version, c: usize, f: usize, seed: u64) -> Result<Self> {
        let sizes = |config: &mut Config| config.dim_ffn = f;
        random_layer(
            "ChannelMix",
            version,
            (c, 1),
            0,
            seed,
            sizes,
            |block, config| Self::load(&block.pp("ffn"), config),
        )
    }

    /// The width `C`.
    pub fn width(&self) -> usize {
        self.maa_k.len()
    }

    /// The hidden width `F`.
    pub fn hidden(&self) -> usize {
        self.key.dim().0
    }

    /// The key projection `W_k`, `[F, C]`.
    pub fn key(&self) -> &Linear {
        &self.key
    }

    /// The value projection `W_v`, `[C, F]`.
    pub fn value(&self) -> &Linear {
        &self.value
    }

    /// Whether the output is gated by a receptance (versions 4 to 6).
    pub fn has_receptance(&self) -> bool {
        self.receptance.is_some()
    }

    /// Adds random tensors of a channel mix of `config` under `ffn` (e.g. `blocks.3.ffn`) to
    /// a synthetic checkpoint.
    pub(crate) fn synthetic(b: &mut Builder, ffn: &str, config: &Config) {
        let (c, f) = (config.n_embd, config.dim_ffn);
        b.matrix(format!("{ffn}.key.weight"), f, c);
        b.matrix(format!("{ffn}.value.weight"), c, f);
        let mixes: &[&str] = if config.version == Version::V7 {
            &["k"]
        } else {
            b.matrix(format!("{ffn}.receptance.weight"), c, c);
            &["k", "r"]
        };
        for s in mixes {
            let name = format!("{ffn}.{}", maa_name(config.version, s));
            b.small(name, &[1, 1, c], 0.0, 1.0);
        }
    }

    /// The tensors [`ChannelMix::load`] reads under `ffn`, with their shapes.
    pub fn tensor_specs(ffn: &Scope, config: &Config) -> Vec<TensorSpec> {
        let (c, f) = (config.n_embd, config.dim_ffn);
        let mut specs = vec![ffn.spec(&maa_name(config.version, "k"), &[c])];
        if config.version != Version::V7 {
            specs.push(ffn.spec(&maa_name(config.version, "r"), &[c]));
            specs.push(ffn.spec("receptance.weight", &[c, c]));
        }
        specs.push(ffn.spec("key.weight", &[f, c]));
        specs.push(ffn.spec("value.weight", &[c, f]));
        specs
    }

    /// Loads the tensors under `ffn` (e.g. scope `blocks.3.ffn`).
    ///
    /// # Errors
    /// A missing tensor or a wrong shape, named in full.
    pub fn load(ffn: &Scope, config: &Config) -> Result<Self> {
        let (c, f) = (config.n_embd, config.dim_ffn);
        let maa = |s: &str| {
            let m = ffn.vector(&maa_name(config.version, s), c);
            match config.version {
                Version::V6 | Version::V7 => m,
                _ => m.map(|m| 1.0 - m),
            }
        };
        let maa_k = maa("k")?;
        let receptance = (config.version != Version::V7)
            .then(|| -> Result<Receptance> {
                Ok(Receptance {
                    maa_r: maa("r")?,
                    weight: ffn.linear("receptance.weight", c, c)?,
                })
            })
            .transpose()?;
        Ok(ChannelMix {
            maa_k,
            key: ffn.linear("key.weight", f, c)?,
            value: ffn.linear("value.weight", c, f)?,
            receptance,
        })
    }
}

/// Buffers for [`ChannelMix::step_into`]: made once by [`ChannelMix::scratch`], reused for
/// every token.
#[derive(Clone, Debug)]
pub(crate) struct ChannelMixScratch {
    delta: Array1<f32>,
    xk: Array1<f32>,
    xr: Array1<f32>,
    /// The hidden activations, `[F]`.
    k: Array1<f32>,
    r: Array1<f32>,
}

impl ChannelMix {
    /// Buffers for [`ChannelMix::step_into`].
    pub(crate) fn scratch(&self) -> ChannelMixScratch {
        let (f, c) = self.key.dim();
        ChannelMixScratch {
            delta: Array1::zeros(c),
            xk: Array1::zeros(c),
            xr: Array1::zeros(c),
            k: Array1::zeros(f),
            r: Array1::zeros(c),
        }
    }

    /// The recurrent path for one token, writing the output into `out` and every intermediate
    /// into `scratch`: no heap allocation; the products run where `team` says.
    ///
    /// # Shapes
    /// `x, x_prev, out: [C]`.
    ///
    /// # Panics
    /// If a length differs from the layer's width, or `scratch` was made for another layer
    /// shape.
    #[track_caller]
    pub(crate) fn step_into<'w>(
        &'w self,
        x: ArrayView1<f32>,
        x_prev: &mut Array1<f32>,
        mut out: ArrayViewMut1<f32>,
        scratch: &mut ChannelMixScratch,
        team: &Team<'_, 'w>,
    ) {
        let sc = scratch;
        shift::advance_into(x, x_prev, sc.delta.view_mut());
        shift::mix_into(x, sc.delta.view(), self.maa_k.view(), sc.xk.view_mut());
        let key = (&self.key, sc.xk.view(), sc.k.view_mut());
        match &self.receptance {
            Some(gate) => {
                shift::mix_into(x, sc.delta.view(), gate.maa_r.view(), sc.xr.view_mut());
                team.matvecs_into([key, (&gate.weight, sc.xr.view(), sc.r.view_mut())]);
            }
            None => team.matvecs_into([key]),
        }
        relu_squared(&mut sc.k);
        team.matvec_into(&self.value, sc.k.view(), out.view_mut());
        if self.receptance.is_some() {
            sigmoid(&mut sc.r);
            out *= &sc.r;
        }
    }
}

impl ChannelMix {
    /// The layer given the shift differences.
    fn apply(&self, xs: ArrayView2<f32>, delta: ArrayView2<f32>) -> Array2<f32> {
        let value = || {
            let xk = shift::mix(xs, delta, self.maa_k.view());
            let mut k = self.key.forward(xk.view());
            relu_squared(&mut k);
            self.value.forward(k.view())
        };
        match &self.receptance {
            Some(gate) => {
                // The gate's element-wise work overlaps the value's products.
                let (out, mut r) = rayon::join(value, || {
                    let xr = shift::mix(xs, delta, gate.maa_r.view());
                    let mut r = gate.weight.forward(xr.view());
                    sigmoid(&mut r);
                    r
                });
                zip_inplace(r.view_mut(), out.view(), |r, o| r * o);
                r
            }
            None => value(),
        }
    }
}

impl SequenceMixer for ChannelMix {
    type State = Array1<f32>;

    fn init_state(&self) -> Array1<f32> {
        Array1::zeros(self.maa_k.len())
    }

    fn forward(&self, xs: ArrayView2<f32>, x_prev: &mut Array1<f32>) -> Array2<f32> {
        let delta = shift::advance(xs, x_prev);
        self.apply(xs, delta.view())
    }

    /// The one-token path (the one the model decodes with), with a fresh scratch.
    fn step(&self, x: ArrayView1<f32>, x_prev: &mut Array1<f32>) -> Array1<f32> {
        let mut out = Array1::zeros(self.maa_k.len());
        self.step_into(
            x,
            x_prev,
            out.view_mut(),
            &mut self.scratch(),
            &Team::pool(),
        );
        out
    }

    fn step_batch(&self, xs: ArrayView2<f32>, states: &mut [&mut Array1<f32>]) -> Array2<f32> {
        let delta = shift::advance_each(xs, states.iter_mut().map(|s| &mut **s));
        self.apply(xs, delta.view())
    }
}
