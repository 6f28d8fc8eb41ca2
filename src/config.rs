//! The version and sizes of a checkpoint, inferred once from its tensor names and shapes.
//!
//! This is the one place where a checkpoint's version is decided.

use crate::error::{Error, Result};
use crate::mixer::{
    rwkv4::Rwkv4TimeMix, rwkv5::Rwkv5TimeMix, rwkv6::Rwkv6TimeMix, rwkv7::Rwkv7TimeMix,
};
use crate::weights::{Scope, TensorSource};
use std::fmt;
use std::str::FromStr;

/// An RWKV architecture version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Version {
    /// RWKV-4: per-channel WKV with exponential decay, running-max state.
    V4,
    /// RWKV-5.0: matrix state per head, per-head decay and bonus, no gate.
    V5_0,
    /// RWKV-5.1: as 5.0 plus a SiLU gate.
    V5_1,
    /// RWKV-5.2 ("Eagle"): per-channel decay and bonus, gate.
    V5_2,
    /// RWKV-6 ("Finch"): data-dependent token shift and per-token decay.
    V6,
    /// RWKV-7 ("Goose", x070): generalised delta rule with a bounded per-token decay, value
    /// residual from block 0, channel mix without receptance.
    V7,
}

impl Version {
    /// Every version the crate runs.
    pub const ALL: [Version; 6] = [
        Version::V4,
        Version::V5_0,
        Version::V5_1,
        Version::V5_2,
        Version::V6,
        Version::V7,
    ];

    /// Whether the time mix keeps one `N × N` matrix per head (every version after 4).
    pub fn has_matrix_state(self) -> bool {
        self != Version::V4
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Version::V4 => "4",
            Version::V5_0 => "5.0",
            Version::V5_1 => "5.1",
            Version::V5_2 => "5.2",
            Version::V6 => "6",
            Version::V7 => "7",
        })
    }
}

impl FromStr for Version {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Version::ALL
            .into_iter()
            .find(|v| v.to_string() == s)
            .ok_or_else(|| Error::UnknownVersion(format!("no RWKV version is called `{s}`")))
    }
}

/// Sizes and version of a model, as read from a checkpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Architecture version.
    pub version: Version,
    /// Number of blocks `L`.
    pub n_layer: usize,
    /// Embedding width `C`.
    pub n_embd: usize,
    /// Heads `H` of the time mix (0 for RWKV-4, which has none).
    pub n_head: usize,
    /// Head size `N = C / H` (0 for RWKV-4).
    pub head_size: usize,
    /// Channel-mix hidden width `F`.
    pub dim_ffn: usize,
    /// Vocabulary size `V`.
    pub vocab: usize,
    /// RWKV-6 token-shift LoRA rank (`time_maa_w1` is `[C, 5·D]`); 0 otherwise.
    pub dim_mix_lora: usize,
    /// Decay LoRA rank: RWKV-6 `time_decay_w1` or RWKV-7 `w1`, `[C, D]`; 0 otherwise.
    pub dim_decay_lora: usize,
    /// RWKV-7 in-context learning rate LoRA rank (`a1` is `[C, D]`); 0 otherwise.
    pub dim_a_lora: usize,
    /// RWKV-7 value residual LoRA rank (`v1` of block 1 is `[C, D]`; 0 for one block, which
    /// has no residual); 0 for other versions.
    pub dim_v_lora: usize,
    /// RWKV-7 gate LoRA rank (`g1` is `[C, D]`); 0 otherwise.
    pub dim_g_lora: usize,
}

fn shape_of(src: &dyn TensorSource, name: &str) -> Result<Vec<usize>> {
    src.shape(name)
        .ok_or_else(|| Error::MissingTensor(name.to_string()))
}

fn shape_error(name: &str, expected: &str, found: Vec<usize>) -> Error {
    Error::Shape {
        name: name.to_string(),
        expected: expected.to_string(),
        found,
    }
}

/// Number of blocks: one more than the largest `blocks.N.` index, where every index below it
/// must name a tensor too. So the count is at most the number of tensors, whatever indices a
/// header writes, and nothing sized by it can outgrow the file.
pub(crate) fn count_layers(src: &dyn TensorSource) -> Result<usize> {
    let mut layers: Vec<usize> = src
        .names()
        .iter()
        .filter_map(|n| {
            n.strip_prefix("blocks.")?
                .split('.')
                .next()?
                .parse::<usize>()
                .ok()
        })
        .collect();
    layers.sort_unstable();
    layers.dedup();
    let Some(&last) = layers.last() else {
        return Err(Error::UnknownVersion(
            "no `blocks.N.*` tensors: not an RWKV checkpoint in BlinkDL naming".into(),
        ));
    };
    match layers.iter().enumerate().find(|&(i, &l)| i != l) {
        None => Ok(layers.len()),
        Some((absent, _)) => Err(Error::UnknownVersion(format!(
            "tensors name blocks up to `blocks.{last}`, but no tensor is under `blocks.{absent}`"
        ))),
    }
}

/// The version, from which tensors block 0's time mix has (each version's time mix knows
/// its own; the later versions are asked first, since they keep some earlier names).
fn detect_version(src: &dyn TensorSource) -> Result<Version> {
    let att = Scope::new(src).pp("blocks.0.att");
    if Rwkv7TimeMix::detect(&att) {
        return Ok(Version::V7);
    }
    if Rwkv6TimeMix::detect(&att) {
        return Ok(Version::V6);
    }
    if let Some(version) = Rwkv5TimeMix::detect(&att)? {
        return Ok(version);
    }
    if Rwkv4TimeMix::detect(&att) {
        return Ok(Version::V4);
    }
    let mut names: Vec<&str> = src
        .names()
        .into_iter()
        .filter(|n| n.starts_with("blocks.0.att."))
        .collect();
    names.sort_unstable();
    Err(Error::UnknownVersion(format!(
        "block 0's time-mix tensors {names:?} match no RWKV version (4: time_mix_k, time_decay, \
         time_first; 5.x: ln_x; 6: time_maa_x; 7: r_k, x_r)"
    )))
}

impl Config {
    /// Reads version and sizes from the names and shapes in `src`. Shapes of the other tensors
    /// are checked when the model is built.
    ///
    /// # Errors
    /// [`Error::UnknownVersion`] naming what was found, [`Error::MissingTensor`] or
    /// [`Error::Shape`] for the tensors the sizes are read from.
    pub fn from_source(src: &dyn TensorSource) -> Result<Config> {
        let version = detect_version(src)?;
        let n_layer = count_layers(src)?;
        let emb = shape_of(src, "emb.weight")?;
        let [vocab, n_embd] = emb[..] else {
            return Err(shape_error("emb.weight", "[V, C]", emb));
        };
        let ffn = shape_of(src, "blocks.0.ffn.key.weight")?;
        let [dim_ffn, _] = ffn[..] else {
            return Err(shape_error("blocks.0.ffn.key.weight", "[F, C]", ffn));
        };
        let att_key = shape_of(src, "blocks.0.att.key.weight")?;
        if att_key != [n_embd, n_embd] {
            return Err(shape_error(
                "blocks.0.att.key.weight",
                &format!("[{n_embd}, {n_embd}] (attention width = embedding width)"),
                att_key,
            ));
        }
        for (what, size) in [
            ("vocabulary", vocab),
            ("embedding width", n_embd),
            ("ffn width", dim_ffn),
        ] {
            if size == 0 {
                return Err(Error::UnknownVersion(format!(
                    "the checkpoint's {what} is 0"
                )));
            }
        }
        let mut config = Config {
            version,
            n_layer,
            n_embd,
            n_head: 0,
            head_size: 0,
            dim_ffn,
            vocab,
            dim_mix_lora: 0,
            dim_decay_lora: 0,
            dim_a_lora: 0,
            dim_v_lora: 0,
            dim_g_lora: 0,
        };
        let scope = Scope::new(src);
        let att0 = scope.pp("blocks.0.att");
        match version {
            Version::V4 => {}
            Version::V5_0 | Version::V5_1 | Version::V5_2 => {
                Rwkv5TimeMix::read_sizes(&att0, &mut config)?
            }
            Version::V6 => Rwkv6TimeMix::read_sizes(&att0, &mut config)?,
            Version::V7 => {
                let att1 = (n_layer > 1).then(|| scope.pp("blocks.1.att"));
                Rwkv7TimeMix::read_sizes(&att0, att1.as_ref(), &mut config)?
            }
        }
        Ok(config)
    }
}

impl fmt::Display for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "RWKV-{} n_layer={} n_embd={} n_head={} head_size={} dim_ffn={} vocab={}",
            self.version,
            self.n_layer,
            self.n_embd,
            self.n_head,
            self.head_size,
            self.dim_ffn,
            self.vocab
        )?;
        if self.version == Version::V6 {
            write!(
                f,
                " lora_mix={} lora_decay={}",
                self.dim_mix_lora, self.dim_decay_lora
            )?;
        }
        if self.version == Version::V7 {
            write!(
                f,
                " lora_w={} lora_a={} lora_v={} lora_g={}",
                self.dim_decay_lora, self.dim_a_lora, self.dim_v_lora, self.dim_g_lora
            )?;
        }
        Ok(())
    }
}
