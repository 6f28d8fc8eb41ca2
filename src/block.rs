//! One residual block: `x += TimeMix(LN1(x)); x += ChannelMix(LN2(x))`, with the time mix chosen
//! by version at load time.

use crate::channel_mix::ChannelMix;
use crate::config::{Config, Version};
use crate::error::Result;
use crate::mixer::rwkv4::{Rwkv4State, Rwkv4TimeMix};
use crate::mixer::rwkv5::{Rwkv5TimeMix, WkvState};
use crate::mixer::rwkv6::Rwkv6TimeMix;
use crate::mixer::SequenceMixer;
use crate::ops::LayerNorm;
use crate::weights::Scope;
use ndarray::{Array1, Array2, ArrayView2};

/// The time mix of a block, one variant per architecture family.
#[derive(Clone, Debug)]
pub enum TimeMix {
    /// RWKV-4.
    V4(Rwkv4TimeMix),
    /// RWKV-5.0, 5.1, 5.2.
    V5(Rwkv5TimeMix),
    /// RWKV-6.
    V6(Rwkv6TimeMix),
}

/// The state of a [`TimeMix`].
#[derive(Clone, Debug, PartialEq)]
pub enum TimeMixState {
    /// RWKV-4's `(x_prev, aa, bb, pp)`.
    V4(Rwkv4State),
    /// RWKV-5/6's `(x_prev, S)`.
    Wkv(WkvState),
}

impl TimeMix {
    fn load(att: &Scope, config: &Config) -> Result<Self> {
        Ok(match config.version {
            Version::V4 => TimeMix::V4(Rwkv4TimeMix::load(att, config)?),
            Version::V5_0 | Version::V5_1 | Version::V5_2 => {
                TimeMix::V5(Rwkv5TimeMix::load(att, config)?)
            }
            Version::V6 => TimeMix::V6(Rwkv6TimeMix::load(att, config)?),
        })
    }
}

impl SequenceMixer for TimeMix {
    type State = TimeMixState;

    fn init_state(&self) -> TimeMixState {
        match self {
            TimeMix::V4(m) => TimeMixState::V4(m.init_state()),
            TimeMix::V5(m) => TimeMixState::Wkv(m.init_state()),
            TimeMix::V6(m) => TimeMixState::Wkv(m.init_state()),
        }
    }

    /// # Panics
    /// If the state is of another family than the mixer (the model checks states before use).
    fn forward(&self, xs: ArrayView2<f32>, state: &mut TimeMixState) -> Array2<f32> {
        match (self, state) {
            (TimeMix::V4(m), TimeMixState::V4(s)) => m.forward(xs, s),
            (TimeMix::V5(m), TimeMixState::Wkv(s)) => m.forward(xs, s),
            (TimeMix::V6(m), TimeMixState::Wkv(s)) => m.forward(xs, s),
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
    /// Loads block `blocks.{i}` from `root`.
    ///
    /// # Errors
    /// A missing tensor or a wrong shape, named in full.
    pub fn load(block: &Scope, config: &Config) -> Result<Self> {
        let c = config.n_embd;
        let ln = |name: &str| -> Result<LayerNorm> {
            let s = block.pp(name);
            Ok(LayerNorm::new(s.vector("weight", c)?, s.vector("bias", c)?))
        };
        Ok(Block {
            ln1: ln("ln1")?,
            ln2: ln("ln2")?,
            att: TimeMix::load(&block.pp("att"), config)?,
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

    /// Runs the block over the rows of `x` in place.
    ///
    /// # Shapes
    /// `x: [T, C]`.
    pub fn forward(&self, x: &mut Array2<f32>, state: &mut BlockState) {
        let att = self
            .att
            .forward(self.ln1.forward(x.view()).view(), &mut state.att);
        *x += &att;
        let ffn = self
            .ffn
            .forward(self.ln2.forward(x.view()).view(), &mut state.ffn);
        *x += &ffn;
    }

    /// Runs one token of each of `B` sequences: row `b` of `x` with `states[b]`.
    ///
    /// # Shapes
    /// `x: [B, C]`.
    pub fn step_batch(&self, x: &mut Array2<f32>, states: &mut [&mut BlockState]) {
        let mut att: Vec<_> = states.iter_mut().map(|s| &mut s.att).collect();
        let out = self
            .att
            .step_batch(self.ln1.forward(x.view()).view(), &mut att);
        *x += &out;
        let mut ffn: Vec<_> = states.iter_mut().map(|s| &mut s.ffn).collect();
        let out = self
            .ffn
            .step_batch(self.ln2.forward(x.view()).view(), &mut ffn);
        *x += &out;
    }
}
