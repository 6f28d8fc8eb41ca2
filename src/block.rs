//! One residual block: `x += TimeMix(LN1(x)); x += ChannelMix(LN2(x))`, with the time mix chosen
//! by version at load time.

use crate::channel_mix::{ChannelMix, ChannelMixScratch};
use crate::config::{Config, Version};
use crate::error::Result;
use crate::mixer::rwkv4::{Rwkv4Scratch, Rwkv4State, Rwkv4TimeMix};
use crate::mixer::rwkv5::{Rwkv5TimeMix, WkvScratch, WkvState};
use crate::mixer::rwkv6::Rwkv6TimeMix;
use crate::mixer::rwkv7::{Rwkv7Scratch, Rwkv7TimeMix};
use crate::mixer::SequenceMixer;
use crate::ops::{zip_inplace, LayerNorm, Team};
use crate::weights::{Scope, TensorSpec};
use ndarray::{Array1, Array2, ArrayView1, ArrayView2, ArrayViewMut1};

/// The time mix of a block, one variant per architecture family.
// One value per block, built once at load: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub enum TimeMix {
    /// RWKV-4.
    V4(Rwkv4TimeMix),
    /// RWKV-5.0, 5.1, 5.2.
    V5(Rwkv5TimeMix),
    /// RWKV-6.
    V6(Rwkv6TimeMix),
    /// RWKV-7.
    V7(Rwkv7TimeMix),
}

/// The state of a [`TimeMix`].
#[derive(Clone, Debug, PartialEq)]
pub enum TimeMixState {
    /// RWKV-4's `(x_prev, aa, bb, pp)`.
    V4(Rwkv4State),
    /// RWKV-5/6/7's `(x_prev, S)` (`S` in each version's official orientation).
    Wkv(WkvState),
}

/// Buffers for [`TimeMix::step_into`], one variant per family (made by [`TimeMix::scratch`]).
// One value per state, made once: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub(crate) enum TimeMixScratch {
    /// RWKV-4.
    V4(Rwkv4Scratch),
    /// RWKV-5 and RWKV-6.
    Wkv(WkvScratch),
    /// RWKV-7.
    V7(Rwkv7Scratch),
}

impl TimeMix {
    /// Buffers for [`TimeMix::step_into`] (for RWKV-7, those of a block after the first also
    /// serve block 0).
    pub(crate) fn scratch(&self) -> TimeMixScratch {
        match self {
            TimeMix::V4(m) => TimeMixScratch::V4(m.scratch()),
            TimeMix::V5(m) => TimeMixScratch::Wkv(m.scratch()),
            TimeMix::V6(m) => TimeMixScratch::Wkv(m.scratch()),
            TimeMix::V7(m) => TimeMixScratch::V7(m.scratch()),
        }
    }

    /// The recurrent path for one token into `out`, with every intermediate in `scratch`: no
    /// heap allocation; the products run where `team` says. `v_first`
    /// carries RWKV-7's value residual as in [`Rwkv7TimeMix::step_into`]; other versions
    /// ignore it.
    ///
    /// # Shapes
    /// `x, out, v_first: [C]`.
    ///
    /// # Panics
    /// If the state or the scratch is of another family than the mixer, or on wrong lengths.
    #[track_caller]
    pub(crate) fn step_into<'w>(
        &'w self,
        x: ArrayView1<f32>,
        state: &mut TimeMixState,
        out: ArrayViewMut1<f32>,
        scratch: &mut TimeMixScratch,
        v_first: Option<ArrayViewMut1<f32>>,
        team: &Team<'_, 'w>,
    ) {
        match (self, state, scratch) {
            (TimeMix::V4(m), TimeMixState::V4(s), TimeMixScratch::V4(b)) => {
                m.step_into(x, s, out, b, team)
            }
            (TimeMix::V5(m), TimeMixState::Wkv(s), TimeMixScratch::Wkv(b)) => {
                m.step_into(x, s, out, b, team)
            }
            (TimeMix::V6(m), TimeMixState::Wkv(s), TimeMixScratch::Wkv(b)) => {
                m.step_into(x, s, out, b, team)
            }
            (TimeMix::V7(m), TimeMixState::Wkv(s), TimeMixScratch::V7(b)) => {
                m.step_into(x, v_first, s, out, b, team)
            }
            _ => panic!("TimeMix::step_into: state or scratch of another RWKV version"),
        }
    }

    /// The tensors the time mix of block `layer` reads under `att`, with their shapes (those of
    /// its version's `tensor_specs`).
    pub fn tensor_specs(att: &Scope, config: &Config, layer: usize) -> Vec<TensorSpec> {
        match config.version {
            Version::V4 => Rwkv4TimeMix::tensor_specs(att, config),
            Version::V5_0 | Version::V5_1 | Version::V5_2 => {
                Rwkv5TimeMix::tensor_specs(att, config)
            }
            Version::V6 => Rwkv6TimeMix::tensor_specs(att, config),
            Version::V7 => Rwkv7TimeMix::tensor_specs(att, config, layer),
        }
    }

    fn load(att: &Scope, config: &Config, layer: usize) -> Result<Self> {
        Ok(match config.version {
            Version::V4 => TimeMix::V4(Rwkv4TimeMix::load(att, config)?),
            Version::V5_0 | Version::V5_1 | Version::V5_2 => {
                TimeMix::V5(Rwkv5TimeMix::load(att, config)?)
            }
            Version::V6 => TimeMix::V6(Rwkv6TimeMix::load(att, config)?),
            Version::V7 => TimeMix::V7(Rwkv7TimeMix::load(att, config, layer)?),
        })
    }

    /// The sequence path, carrying RWKV-7's value residual: `v_first` is block 0's values for
    /// the rows of `xs` (`None` before block 0, which fills it). Other versions ignore it.
    ///
    /// # Panics
    /// As [`SequenceMixer::forward`].
    pub fn forward_with_v_first(
        &self,
        xs: ArrayView2<f32>,
        state: &mut TimeMixState,
        v_first: &mut Option<Array2<f32>>,
    ) -> Array2<f32> {
        match (self, state) {
            (TimeMix::V7(m), TimeMixState::Wkv(s)) => m.forward_with_v_first(xs, v_first, s),
            (m, s) => m.forward(xs, s),
        }
    }

    /// The batched recurrent path, carrying RWKV-7's value residual as
    /// [`TimeMix::forward_with_v_first`] does (`v_first: [B, C]`, one row per sequence).
    ///
    /// # Panics
    /// As [`SequenceMixer::step_batch`].
    pub fn step_batch_with_v_first(
        &self,
        xs: ArrayView2<f32>,
        states: &mut [&mut TimeMixState],
        v_first: &mut Option<Array2<f32>>,
    ) -> Array2<f32> {
        match self {
            TimeMix::V7(m) => {
                let mut wkv: Vec<&mut WkvState> = states
                    .iter_mut()
                    .map(|s| match &mut **s {
                        TimeMixState::Wkv(s) => s,
                        _ => panic!("TimeMix::step_batch: state of another RWKV version"),
                    })
                    .collect();
                m.step_batch_with_v_first(xs, v_first, &mut wkv)
            }
            m => m.step_batch(xs, states),
        }
    }
}

impl SequenceMixer for TimeMix {
    type State = TimeMixState;

    fn init_state(&self) -> TimeMixState {
        match self {
            TimeMix::V4(m) => TimeMixState::V4(m.init_state()),
            TimeMix::V5(m) => TimeMixState::Wkv(m.init_state()),
            TimeMix::V6(m) => TimeMixState::Wkv(m.init_state()),
            TimeMix::V7(m) => TimeMixState::Wkv(m.init_state()),
        }
    }

    /// # Panics
    /// If the state is of another family than the mixer (the model checks states before use).
    fn forward(&self, xs: ArrayView2<f32>, state: &mut TimeMixState) -> Array2<f32> {
        match (self, state) {
            (TimeMix::V4(m), TimeMixState::V4(s)) => m.forward(xs, s),
            (TimeMix::V5(m), TimeMixState::Wkv(s)) => m.forward(xs, s),
            (TimeMix::V6(m), TimeMixState::Wkv(s)) => m.forward(xs, s),
            (TimeMix::V7(m), TimeMixState::Wkv(s)) => m.forward(xs, s),
            _ => panic!("TimeMix::forward: state of another RWKV version"),
        }
    }

    /// # Panics
    /// If a state is of another family than the mixer (the model checks states before use).
    fn step_batch(&self, xs: ArrayView2<f32>, states: &mut [&mut TimeMixState]) -> Array2<f32> {
        fn v4(s: &mut TimeMixState) -> &mut Rwkv4State {
            match s {
                TimeMixState::V4(s) => s,
                _ => panic!("TimeMix::step_batch: state of another RWKV version"),
            }
        }
        fn wkv(s: &mut TimeMixState) -> &mut WkvState {
            match s {
                TimeMixState::Wkv(s) => s,
                _ => panic!("TimeMix::step_batch: state of another RWKV version"),
            }
        }
        match self {
            TimeMix::V4(m) => m.step_batch(
                xs,
                &mut states.iter_mut().map(|s| v4(s)).collect::<Vec<_>>(),
            ),
            TimeMix::V5(m) => m.step_batch(
                xs,
                &mut states.iter_mut().map(|s| wkv(s)).collect::<Vec<_>>(),
            ),
            TimeMix::V6(m) => m.step_batch(
                xs,
                &mut states.iter_mut().map(|s| wkv(s)).collect::<Vec<_>>(),
            ),
            TimeMix::V7(m) => m.step_batch(
                xs,
                &mut states.iter_mut().map(|s| wkv(s)).collect::<Vec<_>>(),
            ),
        }
    }
}

/// The state of one block.
#[derive(Clone, Debug, PartialEq)]
pub struct BlockState {
    /// Time-mix state.
    pub att: TimeMixState,
    /// Channel-mix shift state (previous token's `LN2` output), `[C]`.
    pub ffn: Array1<f32>,
}

/// Buffers for [`Block::step_into`] (made by [`Block::scratch`]).
#[derive(Clone, Debug)]
pub(crate) struct BlockScratch {
    /// The layer-normed input of a sub-layer, `[C]`.
    xn: Array1<f32>,
    /// A sub-layer's output, `[C]`.
    out: Array1<f32>,
    att: TimeMixScratch,
    ffn: ChannelMixScratch,
}

/// One residual block.
#[derive(Clone, Debug)]
pub struct Block {
    /// `ln1`, before the time mix.
    pub ln1: LayerNorm,
    /// `ln2`, before the channel mix.
    pub ln2: LayerNorm,
    /// `att.*`.
    pub att: TimeMix,
    /// `ffn.*`.
    pub ffn: ChannelMix,
}

impl Block {
    /// The tensors [`Block::load`] reads under `block` (`blocks.{layer}`), with their shapes.
    pub fn tensor_specs(block: &Scope, config: &Config, layer: usize) -> Vec<TensorSpec> {
        let c = config.n_embd;
        let mut specs: Vec<TensorSpec> = ["ln1.weight", "ln1.bias", "ln2.weight", "ln2.bias"]
            .map(|name| block.spec(name, &[c]))
            .into();
        specs.extend(TimeMix::tensor_specs(&block.pp("att"), config, layer));
        specs.extend(ChannelMix::tensor_specs(&block.pp("ffn"), config));
        specs
    }

    /// Loads block `layer` from its scope `block` (`blocks.{layer}`).
    ///
    /// # Errors
    /// A missing tensor or a wrong shape, named in full.
    pub fn load(block: &Scope, config: &Config, layer: usize) -> Result<Self> {
        let c = config.n_embd;
        let ln = |name: &str| -> Result<LayerNorm> {
            let s = block.pp(name);
            Ok(LayerNorm::new(s.vector("weight", c)?, s.vector("bias", c)?))
        };
        Ok(Block {
            ln1: ln("ln1")?,
            ln2: ln("ln2")?,
            att: TimeMix::load(&block.pp("att"), config, layer)?,
            ffn: ChannelMix::load(&block.pp("ffn"), config)?,
        })
    }

    /// The state before the first token.
    pub fn init_state(&self) -> BlockState {
        BlockState {
            att: self.att.init_state(),
            ffn: self.ffn.init_state(),
        }
    }

    /// Buffers for [`Block::step_into`] (for RWKV-7, those of a block after the first also serve
    /// block 0).
    pub(crate) fn scratch(&self) -> BlockScratch {
        let c = self.ln1.weight.len();
        BlockScratch {
            xn: Array1::zeros(c),
            out: Array1::zeros(c),
            att: self.att.scratch(),
            ffn: self.ffn.scratch(),
        }
    }

    /// Runs one token through the block, updating the residual stream `x` in place, with
    /// every intermediate in `scratch`: no heap allocation; the products run where `team`
    /// says. `v_first` as in [`TimeMix::step_into`].
    ///
    /// # Shapes
    /// `x, v_first: [C]`.
    ///
    /// # Panics
    /// If the state or the scratch does not belong to a block of this shape.
    #[track_caller]
    pub(crate) fn step_into<'w>(
        &'w self,
        mut x: ArrayViewMut1<f32>,
        state: &mut BlockState,
        scratch: &mut BlockScratch,
        v_first: Option<ArrayViewMut1<f32>>,
        team: &Team<'_, 'w>,
    ) {
        let sc = scratch;
        self.ln1.forward_into(x.view(), sc.xn.view_mut());
        self.att.step_into(
            sc.xn.view(),
            &mut state.att,
            sc.out.view_mut(),
            &mut sc.att,
            v_first,
            team,
        );
        x += &sc.out;
        self.ln2.forward_into(x.view(), sc.xn.view_mut());
        self.ffn.step_into(
            sc.xn.view(),
            &mut state.ffn,
            sc.out.view_mut(),
            &mut sc.ffn,
            team,
        );
        x += &sc.out;
    }

    /// Runs the block over the rows of `x` in place. `v_first` carries RWKV-7's value residual
    /// from block 0 to the others: pass the same variable, `None` at first, to every block in
    /// order (see [`TimeMix::forward_with_v_first`]).
    ///
    /// # Shapes
    /// `x: [T, C]`; `v_first: [T, C]`.
    pub fn forward(
        &self,
        x: &mut Array2<f32>,
        state: &mut BlockState,
        v_first: &mut Option<Array2<f32>>,
    ) {
        let att = self.att.forward_with_v_first(
            self.ln1.forward(x.view()).view(),
            &mut state.att,
            v_first,
        );
        zip_inplace(x.view_mut(), att.view(), |x, a| x + a);
        let ffn = self
            .ffn
            .forward(self.ln2.forward(x.view()).view(), &mut state.ffn);
        zip_inplace(x.view_mut(), ffn.view(), |x, f| x + f);
    }

    /// Runs one token of each of `B` sequences: row `b` of `x` with `states[b]`; `v_first` as
    /// in [`Block::forward`], one row per sequence.
    ///
    /// # Shapes
    /// `x: [B, C]`; `v_first: [B, C]`.
    pub fn step_batch(
        &self,
        x: &mut Array2<f32>,
        states: &mut [&mut BlockState],
        v_first: &mut Option<Array2<f32>>,
    ) {
        let mut att: Vec<_> = states.iter_mut().map(|s| &mut s.att).collect();
        let xs = self.ln1.forward(x.view());
        let out = self
            .att
            .step_batch_with_v_first(xs.view(), &mut att, v_first);
        *x += &out;
        let mut ffn: Vec<_> = states.iter_mut().map(|s| &mut s.ffn).collect();
        let out = self
            .ffn
            .step_batch(self.ln2.forward(x.view()).view(), &mut ffn);
        *x += &out;
    }
}
