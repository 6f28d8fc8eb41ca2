//! The recurrent state of a whole model: plain data, cloned to fork, saved and loaded as
//! safetensors.
//!
//! # File layout
//!
//! A state file is a safetensors file of f32 tensors, one group per block `l`:
//!
//! | tensor | shape | meaning |
//! |---|---|---|
//! | `blocks.{l}.att.x_prev` | `[C]` | previous token's `ln1` output |
//! | `blocks.{l}.att.aa`, `.bb`, `.pp` | `[C]` | RWKV-4 WKV numerator, denominator, exponent |
//! | `blocks.{l}.att.wkv` | `[H, N, N]` | matrix per head: RWKV-5/6 `[head, key, value]`, RWKV-7 `[head, value, key]` |
//! | `blocks.{l}.ffn.x_prev` | `[C]` | previous token's `ln2` output |
//!
//! and the metadata `format = tokenshift-state`, `format_version = 1`, `version`, `n_layer`,
//! `n_embd`, `n_head`, `head_size`. Loading checks all of them against the model. The WKV
//! matrix is in the official package's orientation for each version, so `att.wkv` is entry
//! `3l + 1` of its state list as is.
//!
//! # State tuning
//!
//! A state-tuned checkpoint (RWKV-PEFT, "state tuning") holds one learned initial WKV matrix
//! per block, `blocks.{l}.att.time_state` `[H, N, N]`, always stored `[head, value, key]` (the
//! layout of the CUDA kernels that trained it). [`State::from_time_state`] turns it into an
//! initial state:
//!
//! - RWKV-5/6: the transpose `time_state.transpose(1, 2)`, as the official package does when
//!   a checkpoint contains `time_state`;
//! - RWKV-7: `time_state` as stored, since the RWKV-7 state is `[head, value, key]` itself
//!   (the official package 0.8.32 does not read `time_state` for RWKV-7; RWKV-PEFT's RWKV-7
//!   state tuning passes it to the kernel as the initial state unchanged);
//! - RWKV-4 has no matrix state and no state tuning.
//!
//! The token-shift entries start at zero, as in the official package.

use crate::block::{BlockState, TimeMixState};
use crate::config::{Config, Version};
use crate::error::{Error, Result};
use crate::mixer::rwkv4::Rwkv4State;
use crate::mixer::rwkv5::WkvState;
use crate::model::Workspace;
use crate::save::{SafeTensorsWriter, Values};
use crate::weights::{SafeTensorsFile, Scope, TensorSource, TensorSpec};
use ndarray::{Array1, ArrayD, ArrayViewD, Ix3};
use std::collections::BTreeMap;
use std::path::Path;

const FORMAT: &str = "tokenshift-state";
const FORMAT_VERSION: &str = "1";

/// The sizes that decide a state's layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StateShape {
    /// Architecture version.
    pub version: Version,
    /// Blocks.
    pub n_layer: usize,
    /// Width `C`.
    pub n_embd: usize,
    /// Heads `H` (0 for RWKV-4).
    pub n_head: usize,
    /// Head size `N` (0 for RWKV-4).
    pub head_size: usize,
}

impl From<&Config> for StateShape {
    fn from(c: &Config) -> Self {
        StateShape {
            version: c.version,
            n_layer: c.n_layer,
            n_embd: c.n_embd,
            n_head: c.n_head,
            head_size: c.head_size,
        }
    }
}

impl StateShape {
    /// The metadata entries, in the order they are checked.
    fn metadata(&self) -> Vec<(String, String)> {
        [
            ("format", FORMAT.to_string()),
            ("format_version", FORMAT_VERSION.to_string()),
            ("version", self.version.to_string()),
            ("n_layer", self.n_layer.to_string()),
            ("n_embd", self.n_embd.to_string()),
            ("n_head", self.n_head.to_string()),
            ("head_size", self.head_size.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
}

/// Everything a model carries from one token to the next, for every block.
///
/// Create one with [`crate::Model::init_state`]; clone it to snapshot or fork a conversation.
///
/// Besides the recurrent values it holds the scratch buffers of [`crate::Model::step_into`]
/// (made with the state, or on its first step after loading), which are cloned with it but
/// never compared, listed, saved or loaded: two states are equal when their shapes and block
/// states are.
#[derive(Clone, Debug)]
pub struct State {
    pub(crate) shape: StateShape,
    pub(crate) blocks: Vec<BlockState>,
    pub(crate) workspace: Option<Box<Workspace>>,
}

impl PartialEq for State {
    fn eq(&self, other: &Self) -> bool {
        self.shape == other.shape && self.blocks == other.blocks
    }
}

impl State {
    /// The sizes this state was made for.
    pub fn shape(&self) -> StateShape {
        self.shape
    }

    /// Per-block states.
    pub fn blocks(&self) -> &[BlockState] {
        &self.blocks
    }

    /// Per-block states, to edit (e.g. to set a tuned initial state).
    pub fn blocks_mut(&mut self) -> &mut [BlockState] {
        &mut self.blocks
    }

    /// Checks that the state fits a model with `config`: the recorded shape, then the number
    /// of blocks, each block's variant for the version (RWKV-4's `(x_prev, aa, bb, pp)`, the
    /// WKV matrix state otherwise) and every array's shape (`[C]`, and `[H, N, N]` for the
    /// matrix), each array in standard (row-major) layout. A state edited through
    /// [`State::blocks_mut`] is checked like any other; [`crate::Model`] runs this before
    /// every use of a state, so a bad one is an error rather than a panic inside a layer.
    ///
    /// # Errors
    /// [`Error::StateMismatch`] naming the block and the array (as the module docs name the
    /// tensors, e.g. `blocks.1.att.wkv`), with the expected and found shapes.
    pub fn check(&self, config: &Config) -> Result<()> {
        let want = StateShape::from(config);
        if self.shape != want {
            return Err(Error::StateMismatch(format!(
                "the state was made for {:?}, the model is {:?}",
                self.shape, want
            )));
        }
        if self.blocks.len() != config.n_layer {
            return Err(Error::StateMismatch(format!(
                "the state has {} blocks, the model {}",
                self.blocks.len(),
                config.n_layer
            )));
        }
        let c = config.n_embd;
        let (h, n) = (config.n_head, config.head_size);
        for (l, b) in self.blocks.iter().enumerate() {
            let array = |name: &str, shape: &[usize], expected: &[usize], standard: bool| {
                if shape != expected {
                    Err(Error::StateMismatch(format!(
                        "`blocks.{l}.{name}` has shape {shape:?}, expected {expected:?}"
                    )))
                } else if !standard {
                    Err(Error::StateMismatch(format!(
                        "`blocks.{l}.{name}` is not in standard (row-major) layout"
                    )))
                } else {
                    Ok(())
                }
            };
            let vector =
                |name: &str, a: &Array1<f32>| array(name, a.shape(), &[c], a.is_standard_layout());
            match (&b.att, config.version.has_matrix_state()) {
                (TimeMixState::V4(s), false) => {
                    vector("att.x_prev", &s.x_prev)?;
                    vector("att.aa", &s.aa)?;
                    vector("att.bb", &s.bb)?;
                    vector("att.pp", &s.pp)?;
                }
                (TimeMixState::Wkv(s), true) => {
                    vector("att.x_prev", &s.x_prev)?;
                    array("att.wkv", s.s.shape(), &[h, n, n], s.s.is_standard_layout())?;
                }
                (found, _) => {
                    let kind = |s: &TimeMixState| match s {
                        TimeMixState::V4(_) => "RWKV-4's (x_prev, aa, bb, pp)",
                        TimeMixState::Wkv(_) => "the matrix state (x_prev, wkv) of RWKV-5/6/7",
                    };
                    let expected = if config.version.has_matrix_state() {
                        "the matrix state (x_prev, wkv) of RWKV-5/6/7"
                    } else {
                        "RWKV-4's (x_prev, aa, bb, pp)"
                    };
                    return Err(Error::StateMismatch(format!(
                        "`blocks.{l}.att` holds {}, RWKV-{} needs {expected}",
                        kind(found),
                        config.version
                    )));
                }
            }
            vector("ffn.x_prev", &b.ffn)?;
        }
        Ok(())
    }

    /// The state as named tensors (see the module docs for the names).
    pub fn tensors(&self) -> Vec<(String, ArrayD<f32>)> {
        self.tensor_views()
            .into_iter()
            .map(|(name, a)| (name, a.to_owned()))
            .collect()
    }

    /// [`State::tensors`] without copying.
    fn tensor_views(&self) -> Vec<(String, ArrayViewD<'_, f32>)> {
        let mut out = Vec::new();
        for (l, b) in self.blocks.iter().enumerate() {
            let name = |s: &str| format!("blocks.{l}.{s}");
            match &b.att {
                TimeMixState::V4(s) => {
                    out.push((name("att.x_prev"), s.x_prev.view().into_dyn()));
                    out.push((name("att.aa"), s.aa.view().into_dyn()));
                    out.push((name("att.bb"), s.bb.view().into_dyn()));
                    out.push((name("att.pp"), s.pp.view().into_dyn()));
                }
                TimeMixState::Wkv(s) => {
                    out.push((name("att.x_prev"), s.x_prev.view().into_dyn()));
                    out.push((name("att.wkv"), s.s.view().into_dyn()));
                }
            }
            out.push((name("ffn.x_prev"), b.ffn.view().into_dyn()));
        }
        out
    }

    /// The state as the official Python package lists it: per block `[att_x_prev, aa, bb, pp,
    /// ffn_x_prev]` (RWKV-4) or `[att_x_prev, S [H, N, N], ffn_x_prev]` with `S` indexed
    /// `[head, key, value]` (RWKV-5/6) or `[head, value, key]` (RWKV-7).
    pub fn to_official_list(&self) -> Vec<ArrayD<f32>> {
        self.tensors().into_iter().map(|(_, a)| a).collect()
    }

    /// The state as the bytes of a safetensors file (the layout of the module docs). The
    /// bytes depend only on the state: tensors are in name order and the header's keys sorted,
    /// so saving one state twice gives the same file.
    ///
    /// # Errors
    /// [`Error::StateMismatch`] naming the tensor if a value is NaN or infinite (such a file
    /// would not load: a state that overflowed is not written); [`Error::Format`] if the
    /// header would be over the format's limit.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        self.to_bytes_with_metadata(&BTreeMap::new())
    }

    /// [`State::to_bytes`] with `extra` entries added to the file's metadata, e.g. what an
    /// application needs to resume (the `generate` example records the token still to be
    /// read). [`State::load`] ignores them; read them with
    /// [`SafeTensorsFile::metadata`](crate::weights::SafeTensorsFile::metadata).
    ///
    /// # Errors
    /// [`Error::StateMismatch`] if a key of `extra` is one of the state's own (`format`,
    /// `format_version`, `version`, `n_layer`, `n_embd`, `n_head`, `head_size`), and as
    /// [`State::to_bytes`].
    pub fn to_bytes_with_metadata(&self, extra: &BTreeMap<String, String>) -> Result<Vec<u8>> {
        let mut metadata: BTreeMap<String, String> = self.shape.metadata().into_iter().collect();
        for (key, value) in extra {
            if metadata.insert(key.clone(), value.clone()).is_some() {
                return Err(Error::StateMismatch(format!(
                    "metadata `{key}` is the state's own and cannot be set"
                )));
            }
        }
        let views = self.tensor_views();
        for (name, a) in &views {
            finite(name, a.iter())?;
        }
        let tensors = views
            .into_iter()
            .map(|(name, a)| (name, Values::F32(a)))
            .collect();
        Ok(SafeTensorsWriter::new(tensors, &metadata)?.to_bytes())
    }

    /// Writes the state to a safetensors file, atomically ([`crate::write_atomic`]): if the
    /// write fails, a file already at `path` is left as it was.
    ///
    /// # Errors
    /// [`Error::Io`] naming `path` if the file cannot be written; as [`State::to_bytes`] for a
    /// state with a NaN or an infinity (nothing is written then).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        crate::save::write_atomic(path, &self.to_bytes()?)
    }

    /// Reads a state saved by [`State::save`] for a model with `config`.
    ///
    /// # Errors
    /// [`Error::Io`], [`Error::Format`] for a file that is not safetensors, and
    /// [`Error::StateMismatch`] when the file was not saved for a model of this version and
    /// these sizes (or lacks a tensor, or has one of the wrong shape), or when a tensor holds
    /// a NaN or an infinity (the message names the tensor and the index).
    pub fn load(path: impl AsRef<Path>, config: &Config) -> Result<State> {
        let file = SafeTensorsFile::open(path)?;
        Self::from_file(&file, config)
    }

    /// [`State::load`] from the bytes of a file.
    ///
    /// # Errors
    /// As [`State::load`], without [`Error::Io`].
    pub fn from_bytes(bytes: Vec<u8>, config: &Config) -> Result<State> {
        Self::from_file(&SafeTensorsFile::from_bytes(bytes)?, config)
    }

    /// The initial state given by a state-tuning checkpoint: `blocks.{l}.att.time_state`
    /// `[H, N, N]` of every block, in the orientation the module docs give for each version
    /// (transposed for RWKV-5/6, as stored for RWKV-7); token-shift entries zero. `source` may
    /// be the tuning file or a model checkpoint that contains `time_state`.
    ///
    /// # Errors
    /// [`Error::StateMismatch`] for RWKV-4 (which has no matrix state) or a `time_state` that
    /// holds a NaN or an infinity; [`Error::MissingTensor`], [`Error::Shape`] or
    /// [`Error::Dtype`] naming the `time_state` tensor.
    pub fn from_time_state(source: &dyn TensorSource, config: &Config) -> Result<State> {
        if !config.version.has_matrix_state() {
            return Err(Error::StateMismatch(format!(
                "RWKV-{} has no matrix state to tune",
                config.version
            )));
        }
        let (h, n) = (config.n_head, config.head_size);
        let root = Scope::new(source);
        let name = |l: usize| format!("blocks.{l}.att.time_state");
        let specs: Vec<_> = (0..config.n_layer)
            .map(|l| root.spec(&name(l), &[h, n, n]))
            .collect();
        root.check(&specs)?;
        let blocks = (0..config.n_layer)
            .map(|l| {
                let name = name(l);
                let tuned = root.f32(&name, &[h, n, n])?;
                finite(&name, tuned.iter())?;
                let tuned = tuned
                    .into_dimensionality::<Ix3>()
                    .expect("reshaped to three axes");
                let s = match config.version {
                    Version::V7 => tuned,
                    _ => tuned
                        .permuted_axes([0, 2, 1])
                        .as_standard_layout()
                        .into_owned(),
                };
                Ok(BlockState {
                    att: TimeMixState::Wkv(WkvState {
                        x_prev: Array1::zeros(config.n_embd),
                        s,
                    }),
                    ffn: Array1::zeros(config.n_embd),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(State {
            shape: StateShape::from(config),
            blocks,
            workspace: None,
        })
    }

    /// Every tensor of a state file for `config`, with its shape (the layout of the module
    /// docs), checked from the header before any tensor is read.
    fn tensor_specs(root: &Scope, config: &Config) -> Vec<TensorSpec> {
        let c = config.n_embd;
        let (h, n) = (config.n_head, config.head_size);
        let mut specs = Vec::new();
        for l in 0..config.n_layer {
            let b = root.pp(&format!("blocks.{l}"));
            specs.push(b.spec("att.x_prev", &[c]));
            if config.version.has_matrix_state() {
                specs.push(b.spec("att.wkv", &[h, n, n]));
            } else {
                specs.extend(["att.aa", "att.bb", "att.pp"].map(|name| b.spec(name, &[c])));
            }
            specs.push(b.spec("ffn.x_prev", &[c]));
        }
        specs
    }

    fn from_file(file: &SafeTensorsFile, config: &Config) -> Result<State> {
        let shape = StateShape::from(config);
        let found = file.metadata();
        for (key, want) in shape.metadata() {
            let got = found.get(&key).map(String::as_str).unwrap_or("(absent)");
            if got != want {
                return Err(Error::StateMismatch(format!(
                    "metadata `{key}` is {got}, the model needs {want}"
                )));
            }
        }
        let mismatch = |e: Error| Error::StateMismatch(e.to_string());
        let root = Scope::new(file);
        root.check(&Self::tensor_specs(&root, config))
            .map_err(mismatch)?;
        let c = config.n_embd;
        let (h, n) = (config.n_head, config.head_size);
        let blocks = (0..config.n_layer)
            .map(|l| {
                let b = root.pp(&format!("blocks.{l}"));
                let vector = |name: &str| {
                    let a = b.vector(name, c).map_err(mismatch)?;
                    finite(&b.path(name), a.iter())?;
                    Ok::<_, Error>(a)
                };
                let att = if config.version.has_matrix_state() {
                    let s = b.f32("att.wkv", &[h, n, n]).map_err(mismatch)?;
                    finite(&b.path("att.wkv"), s.iter())?;
                    TimeMixState::Wkv(WkvState {
                        x_prev: vector("att.x_prev")?,
                        s: s.into_dimensionality::<Ix3>()
                            .expect("reshaped to three axes"),
                    })
                } else {
                    TimeMixState::V4(Rwkv4State {
                        x_prev: vector("att.x_prev")?,
                        aa: vector("att.aa")?,
                        bb: vector("att.bb")?,
                        pp: vector("att.pp")?,
                    })
                };
                Ok(BlockState {
                    att,
                    ffn: vector("ffn.x_prev")?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(State {
            shape,
            blocks,
            workspace: None,
        })
    }
}

/// `Ok` if every value of the tensor `name` is finite, else [`Error::StateMismatch`] naming it,
/// the value and its place.
fn finite<'a>(name: &str, values: impl Iterator<Item = &'a f32>) -> Result<()> {
    match values.enumerate().find(|(_, v)| !v.is_finite()) {
        Some((i, v)) => Err(Error::StateMismatch(format!(
            "tensor `{name}` holds {v} at element {i} (row-major); a state must be finite"
        ))),
        None => Ok(()),
    }
}
