//! RWKV-6 time mix ("Finch"): data-dependent token shift and a decay computed per token.
//!
//! ```text
//! x_w, x_k, x_v, x_r, x_g = ddlerp(x, δ)                       (see [`shift::Ddlerp`])
//! r, k, v = W_r x_r, W_k x_k, W_v x_v
//! w_t = exp(−exp(time_decay + tanh(x_w D1) D2))                (per token, per channel)
//! y_t = r_tᵀ (diag(u) k_t v_tᵀ + S),   S ← diag(w_t) S + k_t v_tᵀ
//! out = W_o (GroupNorm_H(y) ⊙ silu(W_g x_g))
//! ```
//!
//! The WKV part is the [`outer_product`](crate::mixer::outer_product) kernel with the per-token decay
//! `w_t` (`Gate::KeyTokenDecay`, the same f32 decays the official code multiplies by) and the
//! exclusive read-out plus bonus; `forward` runs it chunkwise
//! ([`DEFAULT_CHUNK`](crate::mixer::rwkv5::DEFAULT_CHUNK)).

use crate::config::{Config, Version};
use crate::error::Result;
use crate::mixer::from_arrays::{build, layer_config, layer_params, random_layer};
use crate::mixer::from_arrays::{read_heads, read_rank, shape_error};
use crate::mixer::outer_product::Gate;
use crate::mixer::rwkv5::{default_path, wkv_path, WkvOutput, WkvScratch, WkvState};
use crate::mixer::wkv::{self, WkvInputs};
use crate::mixer::{MultiPath, Path, SequenceMixer};
use crate::ops::shift::{self, Ddlerp};
use crate::ops::{for_each_row, join4, map_inplace, Linear, Team};
use crate::synthetic::Builder;
use crate::weights::{Scope, TensorSpec};
use ndarray::{Array1, Array2, Array3, ArrayView1, ArrayView2, ArrayViewMut1, Zip};

/// The RWKV-6 time mix of one block.
#[derive(Clone, Debug)]
pub struct Rwkv6TimeMix {
    /// Data-dependent token shift (`att.time_maa_*`).
    pub(crate) shift: Ddlerp,
    /// `att.time_decay` as stored, `[C]`: the base of the log-log decay.
    pub(crate) time_decay: Array1<f32>,
    /// `att.time_decay_w1` (stored `[C, D]`) as a layer `[D, C]`.
    pub(crate) decay_w1: Linear,
    /// `att.time_decay_w2` (stored `[D, C]`) as a layer `[C, D]`.
    pub(crate) decay_w2: Linear,
    /// `att.time_faaaa` as stored: the bonus `u`, `[H, N]`.
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

/// The log-decay `ln w = −exp(time_decay + z)` of one channel, `z` the low-rank term
/// `tanh(x_w D1) D2` (shared by the sequence and the one-token paths).
fn log_decay_of(z: f32, time_decay: f32) -> f32 {
    -(z + time_decay).exp()
}

layer_params! {
    /// The parameters of an RWKV-6 time mix, named and laid out as a BlinkDL checkpoint stores
    /// them under `blocks.N.att` (width `C`, `H` heads of `N`, LoRA ranks `D` and `D_w`), for
    /// [`Rwkv6TimeMix::new`].
    pub struct Rwkv6Params {
        /// `time_maa_x`, `[C]`: the mix that feeds the shift's low-rank projection.
        time_maa_x: Array1<f32> => "time_maa_x",
        /// `time_maa_w`, `[C]`: the decay input's base mix.
        time_maa_w: Array1<f32> => "time_maa_w",
        /// `time_maa_k`, `[C]`.
        time_maa_k: Array1<f32> => "time_maa_k",
        /// `time_maa_v`, `[C]`.
        time_maa_v: Array1<f32> => "time_maa_v",
        /// `time_maa_r`, `[C]`.
        time_maa_r: Array1<f32> => "time_maa_r",
        /// `time_maa_g`, `[C]`.
        time_maa_g: Array1<f32> => "time_maa_g",
        /// `time_maa_w1`, `[C, 5·D]` (used as `x W1`).
        time_maa_w1: Array2<f32> => "time_maa_w1",
        /// `time_maa_w2`, `[5, D, C]`: one `[D, C]` matrix per mix, in the order w, k, v, r, g.
        time_maa_w2: Array3<f32> => "time_maa_w2",
        /// `time_decay`, `[C]`: the base of the log-log decay.
        time_decay: Array1<f32> => "time_decay",
        /// `time_decay_w1`, `[C, D_w]`.
        time_decay_w1: Array2<f32> => "time_decay_w1",
        /// `time_decay_w2`, `[D_w, C]`.
        time_decay_w2: Array2<f32> => "time_decay_w2",
        /// `time_faaaa`, `[H, N]`: the bonus `u`.
        time_faaaa: Array2<f32> => "time_faaaa",
        /// `receptance.weight`, `[C, C]` (`[out, in]`, as every projection here).
        receptance: Array2<f32> => "receptance.weight",
        /// `key.weight`, `[C, C]`.
        key: Array2<f32> => "key.weight",
        /// `value.weight`, `[C, C]`.
        value: Array2<f32> => "value.weight",
        /// `gate.weight`, `[C, C]`.
        gate: Array2<f32> => "gate.weight",
        /// `output.weight`, `[C, C]`.
        output: Array2<f32> => "output.weight",
        /// `ln_x.weight`, `[C]`: the per-head group norm's scale.
        ln_x_weight: Array1<f32> => "ln_x.weight",
        /// `ln_x.bias`, `[C]`.
        ln_x_bias: Array1<f32> => "ln_x.bias",
    }
}

impl Rwkv6TimeMix {
    /// The layer with `heads` heads from its parameters. The width `C` is `receptance`'s
    /// input width, the LoRA ranks those of `time_maa_w1` and `time_decay_w1`; every other
    /// array is checked against them.
    ///
    /// # Errors
    /// [`Error::InputShape`](crate::Error::InputShape) naming `heads` when it does not divide
    /// `C`; [`Error::Shape`](crate::Error::Shape) naming the first parameter (by its checkpoint
    /// name) of the wrong shape.
    pub fn new(heads: usize, params: Rwkv6Params) -> Result<Self> {
        let mut config = layer_config(
            "Rwkv6TimeMix",
            Version::V6,
            params.receptance.ncols(),
            heads,
        )?;
        config.dim_mix_lora = params.time_maa_w1.ncols() / 5;
        config.dim_decay_lora = params.time_decay_w1.ncols();
        let tensors = params.into_tensors();
        build(
            "Rwkv6TimeMix",
            &tensors,
            &config,
            Self::tensor_specs,
            Self::load,
        )
    }

    /// A layer of width `c` with `heads` heads and random weights in the ranges of trained
    /// checkpoints (the release's LoRA ranks), reproducible from `seed`.
    ///
    /// # Errors
    /// As [`Rwkv6TimeMix::new`] for `heads` (or a width of 0).
    pub fn random(c: usize, heads: usize, seed: u64) -> Result<Self> {
        random_layer(
            "Rwkv6TimeMix",
            Version::V6,
            (c, heads),
            0,
            seed,
            |_| {},
            |block, config| Self::load(&block.pp("att"), config),
        )
    }

    /// The data-dependent token shift.
    pub fn shift(&self) -> &Ddlerp {
        &self.shift
    }

    /// Whether block 0's time mix under `att` is RWKV-6's (it has `time_maa_x`).
    pub(crate) fn detect(att: &Scope) -> bool {
        att.contains("time_maa_x")
    }

    /// Reads the head count and size (from `time_faaaa`, `[H, N]`) and the LoRA ranks (from
    /// `time_maa_w1`, `[C, 5·D]`, and `time_decay_w1`, `[C, D_w]`) of block 0's time mix under
    /// `att` into `config`.
    ///
    /// # Errors
    /// [`Error::MissingTensor`](crate::Error::MissingTensor) or
    /// [`Error::Shape`](crate::Error::Shape) naming the tensor.
    pub(crate) fn read_sizes(att: &Scope, config: &mut Config) -> Result<()> {
        let c = config.n_embd;
        (config.n_head, config.head_size) = read_heads(att, "time_faaaa", c)?;
        let w1 = att.shape("time_maa_w1")?;
        match w1[..] {
            [rows, d5] if rows == c && d5 % 5 == 0 && d5 > 0 => config.dim_mix_lora = d5 / 5,
            _ => return Err(shape_error(att, "time_maa_w1", format!("[{c}, 5·D]"), w1)),
        }
        config.dim_decay_lora = read_rank(att, "time_decay_w1", c)?;
        Ok(())
    }

    /// Adds the random tensors of a time mix of `config` under `att` (e.g. `blocks.3.att`) that
    /// are RWKV-6's own to a synthetic checkpoint, in the ranges of trained ones.
    pub(crate) fn synthetic(b: &mut Builder, att: &str, config: &Config) {
        let (c, h, n) = (config.n_embd, config.n_head, config.head_size);
        let (dm, dd) = (config.dim_mix_lora, config.dim_decay_lora);
        for s in ["x", "w", "k", "v", "r", "g"] {
            b.small(format!("{att}.time_maa_{s}"), &[1, 1, c], 0.0, 1.0);
        }
        b.low_rank(format!("{att}.time_maa_w1"), &[c, 5 * dm], c);
        b.low_rank(format!("{att}.time_maa_w2"), &[5, dm, c], dm);
        b.small(format!("{att}.time_decay"), &[1, 1, c], -8.0, 1.3);
        b.low_rank(format!("{att}.time_decay_w1"), &[c, dd], c);
        b.low_rank(format!("{att}.time_decay_w2"), &[dd, c], dd);
        b.small(format!("{att}.time_faaaa"), &[h, n], -1.0, 1.0);
        b.matrix(format!("{att}.gate.weight"), c, c);
        b.layer_norm(&format!("{att}.ln_x"), c);
    }

    /// The tensors [`Rwkv6TimeMix::load`] reads under `att`, with their shapes.
    pub fn tensor_specs(att: &Scope, config: &Config) -> Vec<TensorSpec> {
        let c = config.n_embd;
        let (dm, dd) = (config.dim_mix_lora, config.dim_decay_lora);
        let mut specs: Vec<TensorSpec> = ["w", "k", "v", "r", "g", "x"]
            .map(|s| att.spec(&format!("time_maa_{s}"), &[c]))
            .into();
        specs.extend([
            att.spec("time_maa_w1", &[c, 5 * dm]),
            att.spec("time_maa_w2", &[5, dm, c]),
            att.spec("time_decay", &[c]),
            att.spec("time_decay_w1", &[c, dd]),
            att.spec("time_decay_w2", &[dd, c]),
            att.spec("time_faaaa", &[config.n_head, config.head_size]),
        ]);
        for name in ["receptance", "key", "value"] {
            specs.push(att.spec(&format!("{name}.weight"), &[c, c]));
        }
        specs.extend(WkvOutput::tensor_specs(att, config, true));
        specs
    }

    /// Loads the tensors under `att` (e.g. scope `blocks.3.att`).
    ///
    /// # Errors
    /// A missing tensor or a wrong shape, named in full.
    pub fn load(att: &Scope, config: &Config) -> Result<Self> {
        let c = config.n_embd;
        let dd = config.dim_decay_lora;
        Ok(Rwkv6TimeMix {
            shift: Ddlerp::load(att, c, config.dim_mix_lora)?,
            time_decay: att.vector("time_decay", c)?,
            decay_w1: att.low_rank("time_decay_w1", c, dd)?,
            decay_w2: att.low_rank("time_decay_w2", dd, c)?,
            bonus: att.matrix("time_faaaa", config.n_head, config.head_size)?,
            receptance: att.linear("receptance.weight", c, c)?,
            key: att.linear("key.weight", c, c)?,
            value: att.linear("value.weight", c, c)?,
            out: WkvOutput::load(att, config, true)?,
        })
    }

    /// The per-token decay `w = exp(−exp(time_decay + tanh(x_w D1) D2))`, `[T, C]`.
    pub fn decay(&self, xw: ArrayView2<f32>) -> Array2<f32> {
        let mut w = self.log_decay(xw);
        map_inplace(&mut w, f32::exp);
        w
    }

    /// The per-token log-decay `ln w = −exp(time_decay + tanh(x_w D1) D2)`, `[T, C]` (formed
    /// without going through `w`, so strong decays keep their value instead of underflowing).
    pub fn log_decay(&self, xw: ArrayView2<f32>) -> Array2<f32> {
        let mut d = self.decay_w1.forward(xw);
        map_inplace(&mut d, f32::tanh);
        let mut d = self.decay_w2.forward(d.view());
        for_each_row(d.view_mut(), |mut row| {
            row.zip_mut_with(&self.time_decay, |d, &base| *d = log_decay_of(*d, base))
        });
        d
    }
}

impl Rwkv6TimeMix {
    /// The layer given the shift differences, with the recurrence supplied by the caller.
    fn apply(
        &self,
        xs: ArrayView2<f32>,
        delta: ArrayView2<f32>,
        recur: impl FnOnce(WkvInputs) -> Array2<f32>,
    ) -> Array2<f32> {
        let [xw, xk, xv, xr, xg] = self.shift.forward(xs, delta);
        let (r, k, v, w) = join4(
            || self.receptance.forward(xr.view()),
            || self.key.forward(xk.view()),
            || self.value.forward(xv.view()),
            || self.decay(xw.view()),
        );
        let y = recur(WkvInputs {
            r: r.view(),
            k: k.view(),
            v: v.view(),
            w: w.view(),
        });
        self.out.forward(y, Some(xg.view()))
    }
}

impl Rwkv6TimeMix {
    /// Buffers for [`Rwkv6TimeMix::step_into`].
    pub(crate) fn scratch(&self) -> WkvScratch {
        WkvScratch::new(
            self.time_decay.len(),
            self.shift.w1.dim().0,
            self.decay_w1.dim().0,
        )
    }

    /// The recurrent path for one token, writing the output into `out` and every intermediate
    /// into `scratch`: no heap allocation; the products, the low-rank ones included, run
    /// where `team` says.
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
        // `y` is free until the WKV: the ddlerp's scratch row.
        self.shift.step_into(
            x,
            sc.delta.view(),
            sc.z_mix.view_mut(),
            sc.y.view_mut(),
            sc.mixed.view_mut(),
            team,
        );
        let m = &sc.mixed;
        let r = (&self.receptance, m.row(3), sc.r.view_mut());
        let k = (&self.key, m.row(1), sc.k.view_mut());
        let v = (&self.value, m.row(2), sc.v.view_mut());
        let w1 = (&self.decay_w1, m.row(0), sc.z_decay.view_mut());
        match &self.out.gate {
            Some(gate) => team.matvecs_into([r, k, v, w1, (gate, m.row(4), sc.g.view_mut())]),
            None => team.matvecs_into([r, k, v, w1]),
        }
        sc.z_decay.mapv_inplace(f32::tanh);
        team.matvec_into(&self.decay_w2, sc.z_decay.view(), sc.w.view_mut());
        Zip::from(&mut sc.w)
            .and(&self.time_decay)
            .for_each(|w, &base| *w = log_decay_of(*w, base).exp());
        let u = self
            .bonus
            .view()
            .into_shape_with_order(c)
            .expect("[H, N] is contiguous");
        wkv::step_into(
            sc.r.view(),
            sc.k.view(),
            sc.v.view(),
            sc.w.view(),
            u,
            &mut state.s,
            sc.y.view_mut(),
        );
        self.out
            .step_into(sc.y.view_mut(), sc.g.view_mut(), out, team);
    }
}

crate::mixer::rwkv5::wkv_time_mix_sequence_mixer!(Rwkv6TimeMix);

impl MultiPath for Rwkv6TimeMix {
    fn forward_path(&self, xs: ArrayView2<f32>, state: &mut WkvState, path: Path) -> Array2<f32> {
        let delta = shift::advance(xs, &mut state.x_prev);
        self.apply(xs, delta.view(), |x| {
            let w = x.w;
            wkv_path(x, Gate::KeyTokenDecay(w), &self.bonus, &mut state.s, path)
        })
    }
}
