//! The full RWKV model: embedding, blocks, output head.

use crate::block::{Block, BlockScratch, BlockState};
use crate::config::{Config, Version};
use crate::error::{Error, Result};
use crate::ops::{with_team, LayerNorm, Linear, Team, TeamBuffers};
use crate::state::{State, StateShape};
use crate::storage::quant::QuantType;
use crate::weights::{
    Checkpoint, DType, Quantization, SafeTensorsFile, Scope, TensorSource, TensorSpec,
};
use ndarray::{s, Array1, Array2, ArrayView2, ArrayViewMut1, Axis};
use std::path::Path;
use std::sync::atomic::AtomicUsize;

/// Tokens per piece of a prompt in [`Model::forward`]: the prompt's intermediates (about
/// fifteen `[T, C]` arrays and the channel mix's `[T, F]`) are this many rows long at most.
/// A multiple of the 16-token chunks of the RWKV-5/6 WKV, so the pieces cut no chunk.
pub const FORWARD_PIECE: usize = 1024;

/// Weights (elements) one token must read before one-token decode is shared between threads.
const PARALLEL_DECODE_MIN: usize = 1 << 20;

/// Runs `f` on a thread of rayon's pool (the calling thread if it is one), so that the many
/// parallel products inside are fork-joins within the pool rather than one trip into it
/// each from outside.
fn in_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    rayon::scope(|_| f())
}

/// Which logits [`Model::forward`] returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logits {
    /// Only the last token's, `[1, V]` (the head runs once).
    Last,
    /// Every token's, `[T, V]`.
    All,
}

/// How one-token decode ([`Model::step`], [`Model::step_into`]) runs its matrix products
/// ([`Model::set_executor`]). Every choice gives the same bits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Executor {
    /// The team where it pays: for a model large enough (about 8 M weights read per token),
    /// runs alternate between the team and the calling thread alone at first, then take the
    /// faster on average and probe the other now and then (with another process busy on a
    /// core, the calling thread alone can be faster); smaller models run on the calling
    /// thread. The default.
    #[default]
    Auto,
    /// Always the team: on threads of the team's own (as many as rayon's pool has, apart from
    /// rayon's global pool), one leads the token while the calling thread waits and, for each
    /// product (or group of independent products), the others take row chunks beside it; the
    /// lead never waits for a helper that fell behind, it computes the helper's chunk itself.
    Team,
    /// Each product split across rayon's global pool by a fork-join of its own.
    ForkJoin,
    /// Every product on the calling thread.
    Serial,
}

/// The buffers of [`Model::step_into`]: kept in a [`State`] (made with it, or on its first
/// step), cloned with it, never saved, loaded or compared.
#[derive(Clone)]
pub(crate) struct Workspace {
    /// The model configuration the buffers were sized for.
    config: Config,
    /// The residual stream, `[C]`.
    x: Array1<f32>,
    /// `ln_out` of the residual stream, `[C]`.
    xn: Array1<f32>,
    /// RWKV-7's block-0 values, `[C]`.
    v_first: Array1<f32>,
    block: BlockScratch,
    /// The shared buffers of the products (see [`crate::ops::with_team`]).
    team: TeamBuffers,
}

impl std::fmt::Debug for Workspace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workspace").finish_non_exhaustive()
    }
}

/// An RWKV language model (versions 4, 5.0, 5.1, 5.2, 6, 7) loaded from a BlinkDL-named
/// checkpoint.
///
/// Immutable and `Send + Sync`: one model serves any number of [`State`]s, from any threads.
#[derive(Clone, Debug)]
pub struct Model {
    config: Config,
    /// `emb.weight` and `blocks.0.ln0`.
    emb: Embedding,
    blocks: Vec<Block>,
    ln_out: LayerNorm,
    /// `head.weight`, `[V, C]`.
    head: Linear,
    /// Storage bytes of every matrix of the blocks (projections and low-rank factors).
    block_bytes: usize,
    /// How one-token decode runs its products.
    executor: Executor,
}

/// The token embedding: `emb.weight` as stored (in place in a memory-mapped file), with
/// `blocks.0.ln0` applied to each row as it is read. The official loaders fold ln0 into the
/// table at load, in the checkpoint's type for v4-v6 (so a half-precision table gets rounded
/// rows: `rounded`) and in f32 for v7 (its loader widens every tensor first); applying it per
/// row gives the same values without a second copy of the table.
#[derive(Clone, Debug)]
struct Embedding {
    /// `emb.weight`, `[V, C]`.
    table: Linear,
    /// `blocks.0.ln0`.
    ln0: LayerNorm,
    /// Whether the normalised row is rounded to the table's storage type (v4-v6).
    rounded: bool,
}

impl Embedding {
    /// The embedding of `token` (checked to be in range) into `out`, `[C]`.
    fn row_into(&self, token: usize, mut out: ArrayViewMut1<f32>) {
        self.table.row_into(token, out.view_mut());
        self.ln0.forward_one_inplace(out.view_mut());
        if self.rounded {
            let values = out.as_slice_mut().expect("a contiguous row");
            self.table.matrix().round_to_storage(values);
        }
    }
}

impl Model {
    /// Loads a checkpoint in any supported container, detected from the file itself (see
    /// [`Checkpoint::open`]); matrices stored as the kernels read them stay in the file's
    /// memory map.
    ///
    /// # Errors
    /// [`Error::Io`], [`Error::Format`] or [`Error::Checkpoint`] for the container, and every
    /// error of [`Model::from_source`].
    pub fn load(path: impl AsRef<Path>) -> Result<Model> {
        Self::from_source(Checkpoint::open(path)?.source())
    }

    /// Loads a checkpoint from the bytes of a file (see [`Checkpoint::from_bytes`]).
    ///
    /// # Errors
    /// As [`Model::load`].
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Model> {
        Self::from_source(Checkpoint::from_bytes(bytes)?.source())
    }

    /// Builds the model from named tensors, detecting the version and sizes. Every tensor of
    /// [`Model::tensor_specs`] is checked (present, shape, storage type) from the names and
    /// shapes alone before any tensor is read.
    ///
    /// # Errors
    /// [`Error::UnknownVersion`], [`Error::MissingTensor`], [`Error::Shape`] or
    /// [`Error::Dtype`], each naming the tensor.
    pub fn from_source(source: &dyn TensorSource) -> Result<Model> {
        Self::from_source_as(source, None)
    }

    /// Loads a checkpoint with its matrices (block projections, low-rank factors,
    /// embedding, head) converted to `dtype` at load, e.g. an f32 file run with f16 weights.
    /// Vectors and decays stay f32.
    ///
    /// # Errors
    /// As [`Model::load`].
    pub fn load_as(path: impl AsRef<Path>, dtype: DType) -> Result<Model> {
        Self::from_source_as(Checkpoint::open(path)?.source(), Some(dtype))
    }

    /// [`Model::from_source`], with matrices converted to `dtype` when it is given.
    ///
    /// # Errors
    /// As [`Model::from_source`].
    pub fn from_source_as(source: &dyn TensorSource, dtype: Option<DType>) -> Result<Model> {
        Self::from_source_with(source, dtype, &Quantization::none())
    }

    /// Loads a checkpoint with the block projections and the head (the matrices of
    /// [`QUANTIZED_BY_DEFAULT`](crate::weights::QUANTIZED_BY_DEFAULT)) quantized to `ty` from
    /// their stored values (f32, f16 or bf16). A matrix whose rows do not split into whole
    /// blocks (e.g. a channel mix's `value` of width 224 in a 256-value format) stays as
    /// stored, and so do the embedding, the low-rank factors and the vectors. A
    /// matrix the file already holds in blocks is used as it is.
    ///
    /// # Errors
    /// The errors of [`Model::load`], and [`Error::Blocks`] naming a tensor whose blocks in
    /// the file are bad.
    pub fn load_quantized(path: impl AsRef<Path>, ty: QuantType) -> Result<Model> {
        let checkpoint = Checkpoint::open(path)?;
        Self::from_source_quantized(checkpoint.source(), &Quantization::to(ty.format()))
    }

    /// [`Model::from_source`] with matrices quantized at load and blocks in the source read as
    /// `quant` says (see [`Quantization`]).
    ///
    /// # Errors
    /// As [`Model::from_source`], and [`Error::Blocks`] naming the tensor for blocks in an
    /// unknown or unavailable format, of the wrong length, or bad (e.g. a NaN scale).
    pub fn from_source_quantized(source: &dyn TensorSource, quant: &Quantization) -> Result<Model> {
        Self::from_source_with(source, None, quant)
    }

    /// The loader behind every other: matrices converted to `dtype` when it is given,
    /// quantized as `quant` says.
    fn from_source_with(
        source: &dyn TensorSource,
        dtype: Option<DType>,
        quant: &Quantization,
    ) -> Result<Model> {
        let config = Config::from_source(source)?;
        let tally = AtomicUsize::new(0);
        let root = Scope::new(source)
            .with_matrix_dtype(dtype)
            .with_quantization(quant);
        for specs in Self::tensor_spec_groups(source, &config) {
            root.check(&specs)?;
        }
        let (v, c) = (config.vocab, config.n_embd);
        let ln = |s: Scope| -> Result<LayerNorm> {
            Ok(LayerNorm::new(s.vector("weight", c)?, s.vector("bias", c)?))
        };
        let table = root.linear("emb.weight", v, c)?;
        // The official loaders round the normalised rows to a half-precision table's type;
        // a table of blocks is decoded, not rounded to blocks.
        let dense = matches!(table.matrix().type_name(), "f32" | "f16" | "bf16");
        let emb = Embedding {
            table,
            ln0: ln(root.pp("blocks.0.ln0"))?,
            rounded: config.version != Version::V7 && dense,
        };
        let blocks = (0..config.n_layer)
            .map(|i| {
                let scope = root.pp(&format!("blocks.{i}")).with_tally(&tally);
                Block::load(&scope, &config, i)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Model {
            emb,
            blocks,
            ln_out: ln(root.pp("ln_out"))?,
            head: root.linear("head.weight", v, c)?,
            block_bytes: tally.into_inner(),
            config,
            executor: Executor::Auto,
        })
    }

    /// Every tensor [`Model::from_source`] reads from `source` for a model with `config` (as
    /// [`Config::from_source`] gives it), with the shape it must have: the embedding and
    /// `blocks.0.ln0`, each block's tensors ([`Block::tensor_specs`]), `ln_out` and the head.
    /// Where a loader picks between alternatives (RWKV-5's `time_faaaa` or `time_first`) the
    /// spec names the one `source` holds, as the loader does.
    pub fn tensor_specs(source: &dyn TensorSource, config: &Config) -> Vec<TensorSpec> {
        Self::tensor_spec_groups(source, config).flatten().collect()
    }

    /// [`Model::tensor_specs`] one piece at a time (the embedding's, each block's, the head's),
    /// so that checking them needs memory for one block's list, not for the whole model's.
    fn tensor_spec_groups<'s>(
        source: &'s dyn TensorSource,
        config: &'s Config,
    ) -> impl Iterator<Item = Vec<TensorSpec>> + 's {
        let root = Scope::new(source);
        let (v, c) = (config.vocab, config.n_embd);
        let first = vec![
            root.spec("blocks.0.ln0.weight", &[c]),
            root.spec("blocks.0.ln0.bias", &[c]),
            root.spec("emb.weight", &[v, c]),
        ];
        let last = vec![
            root.spec("ln_out.weight", &[c]),
            root.spec("ln_out.bias", &[c]),
            root.spec("head.weight", &[v, c]),
        ];
        let blocks = (0..config.n_layer).map(move |layer| {
            Block::tensor_specs(&root.pp(&format!("blocks.{layer}")), config, layer)
        });
        std::iter::once(first)
            .chain(blocks)
            .chain(std::iter::once(last))
    }

    /// Version and sizes.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The blocks, for running or inspecting single layers.
    pub fn blocks(&self) -> &[Block] {
        &self.blocks
    }

    /// The state before any token.
    pub fn init_state(&self) -> State {
        State {
            shape: StateShape::from(&self.config),
            blocks: self.blocks.iter().map(Block::init_state).collect(),
            workspace: Some(Box::new(self.workspace())),
        }
    }

    /// Fresh buffers for [`Model::step_into`].
    fn workspace(&self) -> Workspace {
        let c = self.config.n_embd;
        // RWKV-7's block 0 has no value residual: a later block's buffers serve every block.
        let last = self.blocks.last().expect("a model has at least one block");
        Workspace {
            config: self.config.clone(),
            x: Array1::zeros(c),
            xn: Array1::zeros(c),
            v_first: Array1::zeros(c),
            block: last.scratch(),
            // The largest joint products: a time-mix's projections of its mixed rows (up
            // to seven of width C for RWKV-7), the channel-mix's key and receptance.
            team: TeamBuffers::new(
                (8 * c).max(self.config.dim_ffn + c),
                self.config.vocab.max(self.config.dim_ffn + c).max(8 * c),
                1,
            ),
        }
    }

    /// Reads a state file saved for this model (see [`State::load`]).
    ///
    /// # Errors
    /// As [`State::load`].
    pub fn load_state(&self, path: impl AsRef<Path>) -> Result<State> {
        State::load(path, &self.config)
    }

    /// The initial state of a state-tuning file (`blocks.{l}.att.time_state`, safetensors; the
    /// model's own checkpoint if the tuned states were merged into it). See
    /// [`State::from_time_state`] for the orientation of each version.
    ///
    /// # Errors
    /// [`Error::Io`], [`Error::Format`], and the errors of [`State::from_time_state`].
    pub fn state_from_tuning(&self, path: impl AsRef<Path>) -> Result<State> {
        State::from_time_state(&SafeTensorsFile::open(path)?, &self.config)
    }

    /// Every entry point that takes a state ([`Model::step`], [`Model::step_into`],
    /// [`Model::forward`], [`Model::step_batch`], and so every [`crate::Session`] call) checks
    /// it here first: [`State::check`], array by array, so a state edited to the wrong shape
    /// is an error before any layer runs.
    fn check_state(&self, state: &State) -> Result<()> {
        state.check(&self.config)
    }

    fn check_tokens(&self, tokens: &[u32]) -> Result<()> {
        if tokens.is_empty() {
            return Err(Error::EmptyPrompt);
        }
        let vocab = self.config.vocab;
        match tokens.iter().find(|&&t| t as usize >= vocab) {
            Some(&token) => Err(Error::TokenOutOfRange { token, vocab }),
            None => Ok(()),
        }
    }

    /// Runs one token and returns its logits `[V]`: the recurrent path, [`Model::step_into`]
    /// into a new vector (the only heap allocation of the call once the state has been used).
    ///
    /// # Errors
    /// [`Error::TokenOutOfRange`]; [`Error::StateMismatch`] for a state of another model.
    pub fn step(&self, token: u32, state: &mut State) -> Result<Array1<f32>> {
        let mut logits = Array1::zeros(self.config.vocab);
        self.step_into(token, state, logits.view_mut())?;
        Ok(logits)
    }

    /// How one-token decode runs its matrix products.
    pub fn executor(&self) -> Executor {
        self.executor
    }

    /// Sets how one-token decode runs its matrix products ([`Executor::Auto`] unless set).
    pub fn set_executor(&mut self, executor: Executor) {
        self.executor = executor;
    }

    /// Runs one token and writes its logits `[V]` into `logits`: the recurrent path, every
    /// intermediate in buffers kept in the state. After the state's first step (or none, for
    /// a state from [`Model::init_state`]) it allocates nothing on the heap. The matrix
    /// products run as [`Model::executor`] says (by default shared between the team's threads
    /// when that pays); the result is the same bits either way.
    /// Gives the
    /// same logits and state as [`Model::forward`] on the one token (up to rounding).
    ///
    /// # Errors
    /// [`Error::TokenOutOfRange`]; [`Error::StateMismatch`] for a state of another model;
    /// [`Error::InputShape`] if `logits` is not `[V]`. No state changes on error.
    pub fn step_into(
        &self,
        token: u32,
        state: &mut State,
        logits: ArrayViewMut1<f32>,
    ) -> Result<()> {
        self.check_tokens(std::slice::from_ref(&token))?;
        self.check_state(state)?;
        if logits.len() != self.config.vocab {
            return Err(Error::InputShape {
                what: "step_into logits".into(),
                expected: format!("[{}]", self.config.vocab),
                found: vec![logits.len()],
            });
        }
        let State {
            blocks, workspace, ..
        } = state;
        // A state made by another model of the same state shape may carry buffers of other
        // sizes (e.g. another `dim_ffn`): remake them.
        if workspace.as_ref().is_none_or(|w| w.config != self.config) {
            *workspace = Some(Box::new(self.workspace()));
        }
        let Workspace {
            x,
            xn,
            v_first,
            block: scratch,
            team,
            ..
        } = &mut **workspace.as_mut().expect("made above");
        self.emb.row_into(token as usize, x.view_mut());
        let team_run = match self.executor {
            Executor::Auto if self.parallel_decode() => Some(true),
            Executor::Team => Some(false),
            _ => None,
        };
        match team_run {
            Some(measured) => with_team(team, measured, |t| {
                self.decode(blocks, x, xn, v_first, scratch, logits, t)
            }),
            None => {
                let t = match self.executor {
                    Executor::ForkJoin => Team::pool(),
                    _ => Team::serial(),
                };
                self.decode(blocks, x, xn, v_first, scratch, logits, &t)
            }
        }
        Ok(())
    }

    /// The blocks and the head for one token whose embedding is in `x` (see
    /// [`Model::step_into`]).
    #[allow(clippy::too_many_arguments)]
    fn decode<'w>(
        &'w self,
        states: &mut [BlockState],
        x: &mut Array1<f32>,
        xn: &mut Array1<f32>,
        v_first: &mut Array1<f32>,
        scratch: &mut BlockScratch,
        logits: ArrayViewMut1<f32>,
        team: &Team<'_, 'w>,
    ) {
        let v7 = self.config.version == Version::V7;
        for (block, s) in self.blocks.iter().zip(states.iter_mut()) {
            let v_first = v7.then(|| v_first.view_mut());
            block.step_into(x.view_mut(), s, scratch, v_first, team);
        }
        self.ln_out.forward_into(x.view(), xn.view_mut());
        team.matvec_into(&self.head, xn.view(), logits);
    }

    /// Advances `B` independent sequences by one token each: `tokens[b]` with `states[b]`,
    /// reading every weight once for the whole batch. Returns the logits `[B, V]`; each row
    /// is what [`Model::step`] gives for that token and state up to rounding, and so is each
    /// state: the batched products sum in another order than the one-token kernels, so the
    /// bits may differ. Over 64 steps at `B` = 2, 4 and 8 the rows differed from `step` by at
    /// most 3.6e-6 on the random-weight test models and by 7.9e-4 (6.7e-5 of the row's
    /// largest logit) on the trained model shipped in the repository (`tests/paths.rs`,
    /// `tests/shipped_model.rs`). `B = 0` returns `[0, V]`.
    ///
    /// # Errors
    /// [`Error::InputShape`] if `tokens` and `states` differ in length;
    /// [`Error::TokenOutOfRange`]; [`Error::StateMismatch`]. No state changes on error.
    pub fn step_batch(&self, tokens: &[u32], states: &mut [State]) -> Result<Array2<f32>> {
        if tokens.len() != states.len() {
            return Err(Error::InputShape {
                what: "step_batch states".into(),
                expected: format!("one state per token ({})", tokens.len()),
                found: vec![states.len()],
            });
        }
        if tokens.is_empty() {
            return Ok(Array2::zeros((0, self.config.vocab)));
        }
        self.check_tokens(tokens)?;
        for state in states.iter() {
            self.check_state(state)?;
        }
        Ok(in_pool(|| {
            let mut x = self.embed(tokens);
            let mut v_first = None;
            for (l, block) in self.blocks.iter().enumerate() {
                let mut block_states: Vec<_> =
                    states.iter_mut().map(|s| &mut s.blocks[l]).collect();
                block.step_batch(&mut x, &mut block_states, &mut v_first);
            }
            self.head_rows(x.view())
        }))
    }

    /// Whether one-token decode shares its products with rayon's workers: only when they are
    /// large enough to pay for waking them.
    fn parallel_decode(&self) -> bool {
        self.matrix_elements() + self.config.vocab * self.config.n_embd >= PARALLEL_DECODE_MIN
    }

    /// The embedding rows of `tokens` (already checked), `[T, C]`.
    fn embed(&self, tokens: &[u32]) -> Array2<f32> {
        let mut x = Array2::zeros((tokens.len(), self.config.n_embd));
        for (&t, row) in tokens.iter().zip(x.rows_mut()) {
            self.emb.row_into(t as usize, row);
        }
        x
    }

    /// Bytes of weights one [`Model::step`] reads: every matrix of every block, the head, the
    /// RWKV-6/7 low-rank matrices, each in its storage (f32, f16, bf16 or blocks, as loaded),
    /// and one embedding row in f32 (per-channel vectors, under 0.1% of the total, are left
    /// out). Decode speed × this / memory bandwidth is decode's roofline ratio.
    pub fn decode_bytes_per_token(&self) -> usize {
        self.block_bytes + self.config.n_embd * 4 + self.head.size_bytes()
    }

    /// Multiply-adds × 2 per token of a long prompt whose last logits only are computed: the
    /// block matrices and low-rank matrices (the head runs once per prompt; the WKV recurrence
    /// and elementwise work are left out). Prefill speed × this / GEMM FLOP/s is prefill's
    /// roofline ratio.
    pub fn prefill_flops_per_token(&self) -> usize {
        2 * (self.matrix_elements() + self.lora_elements())
    }

    /// Elements of the block matrices (time mix and channel mix, all layers).
    fn matrix_elements(&self) -> usize {
        let Config {
            n_embd: c,
            dim_ffn: f,
            n_layer,
            version,
            ..
        } = self.config;
        let att = match version {
            Version::V4 | Version::V5_0 | Version::V7 => 4 * c * c,
            Version::V5_1 | Version::V5_2 | Version::V6 => 5 * c * c,
        };
        // The channel mix's receptance (RWKV-7 has none).
        let ffn_r = if version == Version::V7 { 0 } else { c * c };
        n_layer * (att + 2 * c * f + ffn_r)
    }

    /// Elements of RWKV-6/7's low-rank (LoRA) matrices, kept in the storage type like the
    /// other matrices (block 0 of RWKV-7 has no value-residual LoRA).
    fn lora_elements(&self) -> usize {
        let Config {
            n_embd: c,
            n_layer,
            dim_mix_lora: dm,
            dim_decay_lora: dd,
            dim_a_lora: da,
            dim_v_lora: dv,
            dim_g_lora: dg,
            ..
        } = self.config;
        let v7 = n_layer * 2 * (da + dg) * c + n_layer.saturating_sub(1) * 2 * dv * c;
        n_layer * (2 * 5 * dm * c + 2 * dd * c) + v7
    }

    /// Runs a whole prompt at once (projections as matrix products over all tokens) and returns
    /// the logits of the last token (`[1, V]`) or of every token (`[T, V]`). `state` ends as if
    /// the tokens had gone through [`Model::step`] one by one.
    ///
    /// The prompt runs in pieces of [`FORWARD_PIECE`] tokens, the state carried from one to the
    /// next, so the memory it takes beyond the model is bounded whatever `T` is: the
    /// intermediates of one piece, plus the `[T, V]` result that [`Logits::All`] asks for.
    ///
    /// # Errors
    /// [`Error::EmptyPrompt`], [`Error::TokenOutOfRange`], [`Error::StateMismatch`]; the state
    /// is unchanged on error.
    pub fn forward(&self, tokens: &[u32], state: &mut State, which: Logits) -> Result<Array2<f32>> {
        self.check_tokens(tokens)?;
        self.check_state(state)?;
        Ok(in_pool(|| match which {
            Logits::Last => {
                let mut x = Array2::zeros((0, self.config.n_embd));
                for piece in tokens.chunks(FORWARD_PIECE) {
                    x = self.forward_piece(piece, state);
                }
                self.head_rows(x.slice(s![-1.., ..]))
            }
            Logits::All => {
                let mut logits = Array2::zeros((tokens.len(), self.config.vocab));
                let rows = logits.axis_chunks_iter_mut(Axis(0), FORWARD_PIECE);
                for (piece, mut rows) in tokens.chunks(FORWARD_PIECE).zip(rows) {
                    let x = self.forward_piece(piece, state);
                    rows.assign(&self.head_rows(x.view()));
                }
                logits
            }
        }))
    }

    /// The blocks over one piece of a prompt (ids already checked): the residual stream after
    /// the last block, `[T, C]`.
    fn forward_piece(&self, tokens: &[u32], state: &mut State) -> Array2<f32> {
        let mut x = self.embed(tokens);
        let mut v_first = None;
        for (block, s) in self.blocks.iter().zip(state.blocks.iter_mut()) {
            block.forward(&mut x, s, &mut v_first);
        }
        x
    }

    /// `ln_out` and the head over rows of the residual stream: `[T, C]` to `[T, V]`.
    fn head_rows(&self, x: ArrayView2<f32>) -> Array2<f32> {
        self.head.forward(self.ln_out.forward(x).view())
    }
}
