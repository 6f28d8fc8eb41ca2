//! The version and sizes of a checkpoint, inferred once from its tensor names and shapes.
//!
//! This is the one place where a checkpoint's version is decided.

use crate::error::{Error, Result};
use crate::weights::TensorSource;
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

/// The version, from which tensors block 0's time mix has.
fn detect_version(src: &dyn TensorSource) -> Result<Version> {
    let has = |name: &str| src.shape(&format!("blocks.0.att.{name}")).is_some();
    if has("r_k") || has("x_r") || has("k_k") {
        return Ok(Version::V7);
    }
    if has("time_maa_x") {
        return Ok(Version::V6);
    }
    if has("ln_x.weight") {
        if !has("gate.weight") {
            return Ok(Version::V5_0);
        }
        let decay = shape_of(src, "blocks.0.att.time_decay")?;
        return Ok(if decay.len() == 2 && decay[1] > 1 {
            Version::V5_2
        } else {
            Version::V5_1
        });
    }
    if has("time_mix_k") && has("time_decay") && has("time_first") {
        return Ok(Version::V4);
    }
    let mut att: Vec<&str> = src
        .names()
        .into_iter()
        .filter(|n| n.starts_with("blocks.0.att."))
        .collect();
    att.sort_unstable();
    Err(Error::UnknownVersion(format!(
        "block 0's time-mix tensors {att:?} match no RWKV version (4: time_mix_k, time_decay, \
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
        match version {
            Version::V4 => {}
            Version::V5_0 | Version::V5_1 | Version::V5_2 => {
                let name = "blocks.0.att.time_decay";
                let decay = shape_of(src, name)?;
                let h = decay.first().copied().unwrap_or(0);
                if h == 0 || n_embd % h != 0 {
                    return Err(shape_error(
                        name,
                        &format!("[H, ..] with H dividing {n_embd}"),
                        decay,
                    ));
                }
                config.n_head = h;
                config.head_size = n_embd / h;
            }
            Version::V6 => {
                let name = "blocks.0.att.time_faaaa";
                let u = shape_of(src, name)?;
                match u[..] {
                    [h, n] if h * n == n_embd => (config.n_head, config.head_size) = (h, n),
                    _ => return Err(shape_error(name, &format!("[H, N] with H·N = {n_embd}"), u)),
                }
                let name = "blocks.0.att.time_maa_w1";
                let w1 = shape_of(src, name)?;
                match w1[..] {
                    [c, d5] if c == n_embd && d5 % 5 == 0 && d5 > 0 => config.dim_mix_lora = d5 / 5,
                    _ => return Err(shape_error(name, &format!("[{n_embd}, 5·D]"), w1)),
                }
                let name = "blocks.0.att.time_decay_w1";
                let w1 = shape_of(src, name)?;
                match w1[..] {
                    [c, d] if c == n_embd && d > 0 => config.dim_decay_lora = d,
                    _ => return Err(shape_error(name, &format!("[{n_embd}, D]"), w1)),
                }
            }
            Version::V7 => {
                let name = "blocks.0.att.r_k";
                let r_k = shape_of(src, name)?;
                match r_k[..] {
                    [h, n] if h * n == n_embd => (config.n_head, config.head_size) = (h, n),
                    _ => {
                        return Err(shape_error(
                            name,
                            &format!("[H, N] with H·N = {n_embd}"),
                            r_k,
                        ))
                    }
                }
                // Block 0's v1 is never used (and may be absent): read the rank from block 1.
                let v_layer = if n_layer > 1 { Some(1) } else { None };
                for (lora, layer, dim) in [
                    ("w1", Some(0), &mut config.dim_decay_lora),
                    ("a1", Some(0), &mut config.dim_a_lora),
                    ("v1", v_layer, &mut config.dim_v_lora),
                    ("g1", Some(0), &mut config.dim_g_lora),
                ] {
                    let Some(layer) = layer else { continue };
                    let name = format!("blocks.{layer}.att.{lora}");
                    let shape = shape_of(src, &name)?;
                    match shape[..] {
                        [c, d] if c == n_embd && d > 0 => *dim = d,
                        _ => return Err(shape_error(&name, &format!("[{n_embd}, D]"), shape)),
                    }
                }
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
