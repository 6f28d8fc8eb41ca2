//! Channel mix (the RWKV feed-forward block), shared by versions 4 to 7.
//!
//! ```text
//! x_k = x + δ ⊙ μ_k,   x_r = x + δ ⊙ μ_r          (token shift, see [`crate::ops::shift`])
//! out = σ(W_r x_r) ⊙ W_v relu(W_k x_k)²           (RWKV-7: W_v relu(W_k x_k)², no receptance)
//! ```

use crate::config::{Config, Version};
use crate::error::Result;
use crate::mixer::SequenceMixer;
use crate::ops::{relu_squared, shift, sigmoid, zip_inplace, Linear, Team};
use crate::weights::{Scope, TensorSpec};
use ndarray::{Array1, Array2, ArrayView1, ArrayView2, ArrayViewMut1};

/// The channel mix of one block. Its state is the previous token's layer-normed input `[C]`.
#[derive(Clone, Debug)]
pub struct ChannelMix {
    /// Shift coefficient of the key input, `[C]`: `ffn.time_maa_k` (v6), `ffn.x_k` (v7) or
    /// `1 − ffn.time_mix_k` (v4/v5).
    pub maa_k: Array1<f32>,
    /// `ffn.key.weight`, `[F, C]`.
    pub key: Linear,
    /// `ffn.value.weight`, `[C, F]`.
    pub value: Linear,
    /// The receptance gate `σ(W_r x_r)`; RWKV-7 has none.
    pub receptance: Option<Receptance>,
}

/// The channel mix's receptance gate (versions 4 to 6).
#[derive(Clone, Debug)]
pub struct Receptance {
    /// Shift coefficient of the receptance input, `[C]` (`time_maa_r` or `1 − time_mix_r`).
    pub maa_r: Array1<f32>,
    /// `ffn.receptance.weight`, `[C, C]`.
    pub weight: Linear,
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

    /// Through [`ChannelMix::step_into`] with a fresh scratch.
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
