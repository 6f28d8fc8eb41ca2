//! Hugging Face checkpoint folders: `config.json` beside `model.safetensors`, or beside shards
//! `model-0000i-of-0000n.safetensors` listed by `model.safetensors.index.json`.
//!
//! Every shard is a memory-mapped [`SafeTensorsFile`]; the shards together form one
//! [`ShardedSafeTensors`] source, which the naming adapter of [`super::names`] puts under the
//! BlinkDL names. `config.json` is read for the settings that change the computation: each is
//! honoured, checked against the tensors, or refused with a message naming it.
//!
//! Settings and what this reader does with them:
//!
//! * `model_type` / `architectures`: `rwkv` (`RwkvForCausalLM`), `rwkv5`, `rwkv6`
//!   (`Rwkv5ForCausalLM`, `Rwkv6ForCausalLM`) with transformers-style names, `rwkv7`
//!   (`RWKV7ForCausalLM`) with flash-linear-attention names; anything else is refused.
//! * `layer_norm_epsilon` (RWKV-4/5/6) and `norm_eps` (RWKV-7): the crate's LayerNorms use
//!   1e-5, so any other value is refused.
//! * `head_size_divisor` (RWKV-5/6): the official GroupNorm eps is 1e-5 · divisor² = 64e-5 with
//!   the released divisor 8, the value the crate uses; any other divisor is refused. (Some
//!   revisions of the RWKV-5 remote code call `group_norm` with eps 1e-5 whatever the divisor;
//!   the crate follows the official package and the trained model, eps 64e-5.)
//! * RWKV-7 GroupNorm eps is `head_dim · norm_eps` in fla; the official value is 64e-5, so it is
//!   refused unless `head_dim · norm_eps` = 64e-5 (`head_dim` 64 with `norm_eps` 1e-5).
//! * `head_size` / `head_dim` / `num_heads`, `hidden_size`, `vocab_size`, `num_hidden_layers`,
//!   `intermediate_size`, `attention_hidden_size` / `value_dim`, fla's `*_low_rank_dim`:
//!   checked against the tensors' shapes; a mismatch is an error naming the setting.
//! * `rescale_every`: accepted and not applied. transformers divides block i's `output` and
//!   `value` weights by 2^(i / rescale_every) in memory at inference and halves the residual
//!   stream after every `rescale_every`-th block; the weights in the files are the unscaled
//!   ones. This guards f16 activations against overflow. The crate keeps activations in f32,
//!   as the official package's fp32 path does (which never rescales), and computes with the
//!   stored, unscaled weights: the same numbers the official fp32 path computes, exactly, with
//!   no rescaling to undo. (Rescaling changes results only through the LayerNorm eps, which
//!   it does not scale; powers of two are otherwise exact in floating point.) A folder saved
//!   by transformers after an inference-mode forward would hold the divided weights; it cannot
//!   be told apart, and transformers itself would divide them again on reloading it.
//! * `tie_word_embeddings`: when true, the head is the embedding matrix (read in place from
//!   the same bytes); when false, a `head.weight` / `lm_head.weight` must be present.
//! * fla `norm_bias: false`: LayerNorms without bias read as zero biases; `norm_first: false`
//!   (no `pre_norm` on the embedding), `hidden_act` other than `sqrelu`, and `attn` (hybrid
//!   attention layers) are refused.
//!
//! `pytorch_model.bin` folders are refused with a message.

use super::names::{detect_scheme, Entry, NameScheme, Renamed};
use super::{DType, RawTensor, SafeTensorsFile, Tensor, TensorSource};
use crate::error::{Error, Result};
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Component, Path};

/// The error of a malformed or unsupported Hugging Face folder.
fn hf_error(file: &Path, what: impl Into<String>) -> Error {
    Error::Checkpoint {
        format: "Hugging Face",
        file: file.display().to_string(),
        what: what.into(),
    }
}

/// The name of the index of a sharded folder.
const INDEX: &str = "model.safetensors.index.json";

/// Several safetensors files read as one source, each tensor in exactly one of them.
pub struct ShardedSafeTensors {
    shards: Vec<SafeTensorsFile>,
    owner: HashMap<String, usize>,
    order: Vec<String>,
}

impl std::fmt::Debug for ShardedSafeTensors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardedSafeTensors")
            .field("shards", &self.shards.len())
            .field("tensors", &self.order.len())
            .finish()
    }
}

impl ShardedSafeTensors {
    /// The shards of a folder as its index lists them: `weight_map` maps each tensor name to
    /// the file that holds it, a plain file name within `dir`. Each file is memory-mapped.
    ///
    /// # Errors
    /// [`Error::Checkpoint`] naming the index or the shard: an index that is not JSON or has no
    /// `weight_map`, a file name outside the folder, a missing or malformed shard, a tensor the
    /// index names but its shard lacks, a tensor held by two shards.
    pub fn open_index(dir: &Path) -> Result<ShardedSafeTensors> {
        let index_path = dir.join(INDEX);
        let text = std::fs::read(&index_path).map_err(|source| Error::Io {
            path: index_path.clone(),
            source,
        })?;
        let index: Value = serde_json::from_slice(&text)
            .map_err(|e| hf_error(&index_path, format!("not JSON: {e}")))?;
        let Some(map) = index.get("weight_map").and_then(Value::as_object) else {
            return Err(hf_error(&index_path, "no `weight_map` object"));
        };
        let mut weight_map: Vec<(&str, &str)> = Vec::with_capacity(map.len());
        for (name, file) in map {
            let Some(file) = file.as_str() else {
                return Err(hf_error(
                    &index_path,
                    format!("`weight_map` entry of `{name}` is not a file name"),
                ));
            };
            weight_map.push((name, file));
        }
        let mut files: Vec<&str> = weight_map.iter().map(|&(_, f)| f).collect();
        files.sort_unstable();
        files.dedup();
        let mut shards = Vec::with_capacity(files.len());
        for &file in &files {
            let mut parts = Path::new(file).components();
            if !matches!(
                (parts.next(), parts.next()),
                (Some(Component::Normal(_)), None)
            ) {
                return Err(hf_error(
                    &index_path,
                    format!("shard `{file}` is not a file name within the folder"),
                ));
            }
            let path = dir.join(file);
            if !path.is_file() {
                return Err(hf_error(
                    &path,
                    format!("shard `{file}` named by {INDEX} is missing"),
                ));
            }
            let shard = SafeTensorsFile::open(&path).map_err(|e| match e {
                Error::Format(what) => hf_error(&path, format!("shard `{file}`: {what}")),
                other => other,
            })?;
            shards.push(shard);
        }
        let mut owner: HashMap<String, usize> = HashMap::new();
        let mut order = Vec::new();
        for (i, shard) in shards.iter().enumerate() {
            for name in shard.table().ordered_names() {
                if let Some(&first) = owner.get(name) {
                    return Err(hf_error(
                        dir,
                        format!(
                            "tensor `{name}` is in two shards, `{}` and `{}`",
                            files[first], files[i]
                        ),
                    ));
                }
                owner.insert(name.clone(), i);
                order.push(name.clone());
            }
        }
        for (name, file) in weight_map {
            let i = files.binary_search(&file).expect("listed above");
            if owner.get(name) != Some(&i) {
                return Err(hf_error(
                    &dir.join(file),
                    format!(
                        "{INDEX} puts tensor `{name}` in shard `{file}`, which does not hold it"
                    ),
                ));
            }
        }
        Ok(ShardedSafeTensors {
            shards,
            owner,
            order,
        })
    }

    fn shard(&self, name: &str) -> Option<&SafeTensorsFile> {
        self.owner.get(name).map(|&i| &self.shards[i])
    }
}

impl TensorSource for ShardedSafeTensors {
    fn names(&self) -> Vec<&str> {
        self.order.iter().map(String::as_str).collect()
    }

    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.shard(name)?.shape(name)
    }

    fn dtype(&self, name: &str) -> Option<std::result::Result<DType, String>> {
        self.shard(name)?.dtype(name)
    }

    fn tensor(&self, name: &str) -> Result<Tensor> {
        self.shard(name)
            .ok_or_else(|| Error::MissingTensor(name.to_string()))?
            .tensor(name)
    }

    fn raw(&self, name: &str) -> Option<RawTensor> {
        self.shard(name)?.raw(name)
    }

    fn blocks(&self, name: &str) -> Option<super::RawBlocks> {
        self.shard(name)?.blocks(name)
    }
}

/// Opens the Hugging Face folder `dir` and returns its tensors under BlinkDL names, after
/// checking `config.json` against them (see the module documentation).
///
/// # Errors
/// [`Error::Io`] for a file that cannot be read, [`Error::Checkpoint`] naming the folder or
/// file and what is wrong: no `config.json` or no safetensors weights, a malformed index or
/// shard, tensor names that cannot be mapped, a `config.json` setting the crate does not
/// honour or that contradicts the tensors.
pub fn open_folder(dir: &Path) -> Result<Box<dyn TensorSource>> {
    let config_path = dir.join("config.json");
    if !config_path.is_file() {
        return Err(hf_error(dir, "no `config.json` in the folder"));
    }
    let text = std::fs::read(&config_path).map_err(|source| Error::Io {
        path: config_path.clone(),
        source,
    })?;
    let config: Value = serde_json::from_slice(&text)
        .map_err(|e| hf_error(&config_path, format!("not JSON: {e}")))?;
    if !config.is_object() {
        return Err(hf_error(&config_path, "not a JSON object"));
    }
    let single = dir.join("model.safetensors");
    let source: Box<dyn TensorSource> = if dir.join(INDEX).is_file() {
        Box::new(ShardedSafeTensors::open_index(dir)?)
    } else if single.is_file() {
        Box::new(SafeTensorsFile::open(&single).map_err(|e| match e {
            Error::Format(what) => hf_error(&single, what),
            other => other,
        })?)
    } else if dir.join("pytorch_model.bin").exists()
        || dir.join("pytorch_model.bin.index.json").exists()
    {
        return Err(hf_error(
            dir,
            "PyTorch `pytorch_model.bin` weights are not read; convert them to safetensors",
        ));
    } else {
        return Err(hf_error(
            dir,
            format!("neither `model.safetensors` nor `{INDEX}` in the folder"),
        ));
    };
    let scheme = detect_scheme(source.names()).map_err(|what| hf_error(dir, what))?;
    let mut renamed = Renamed::new(source).map_err(|what| hf_error(dir, what))?;
    apply_config(&mut renamed, scheme, &config).map_err(|what| hf_error(&config_path, what))?;
    Ok(Box::new(renamed))
}

/// Checks `config.json` against the tensors and applies the settings that add tensors (tied
/// head, bias-free norms).
fn apply_config(
    src: &mut Renamed,
    scheme: NameScheme,
    config: &Value,
) -> std::result::Result<(), String> {
    let get = |key: &str| config.get(key).filter(|v| !v.is_null());
    let uint = |key: &str| -> std::result::Result<Option<usize>, String> {
        match get(key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .map(Some)
                .ok_or_else(|| format!("`{key}` is {v}, expected a whole number")),
        }
    };
    let float = |key: &str| -> std::result::Result<Option<f64>, String> {
        match get(key) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| format!("`{key}` is {v}, expected a number")),
        }
    };
    let boolean = |key: &str, default: bool| -> std::result::Result<bool, String> {
        match get(key) {
            None => Ok(default),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| format!("`{key}` is {v}, expected true or false")),
        }
    };

    // Which model the folder claims to be.
    let model_type = match get("model_type") {
        Some(v) => v
            .as_str()
            .ok_or_else(|| format!("`model_type` is {v}, expected a string"))?
            .to_string(),
        None => {
            let arch = get("architectures")
                .and_then(Value::as_array)
                .and_then(|a| a.first())
                .and_then(Value::as_str)
                .ok_or("neither `model_type` nor `architectures` says which model this is")?;
            match arch {
                "RwkvForCausalLM" => "rwkv",
                "Rwkv5ForCausalLM" => "rwkv5",
                "Rwkv6ForCausalLM" => "rwkv6",
                "RWKV7ForCausalLM" => "rwkv7",
                other => return Err(format!("unknown architecture `{other}`")),
            }
            .to_string()
        }
    };
    let expected_scheme = match model_type.as_str() {
        "rwkv" | "rwkv5" | "rwkv6" => NameScheme::Transformers,
        "rwkv7" => NameScheme::Fla,
        other => {
            return Err(format!(
                "unknown `model_type` `{other}` (known: rwkv, rwkv5, rwkv6, rwkv7)"
            ))
        }
    };
    if let Some(archs) = get("architectures").and_then(Value::as_array) {
        for arch in archs {
            let known = matches!(
                (arch.as_str(), model_type.as_str()),
                (Some("RwkvForCausalLM"), "rwkv")
                    | (Some("Rwkv5ForCausalLM"), "rwkv5")
                    | (Some("Rwkv6ForCausalLM"), "rwkv6")
                    | (Some("RWKV7ForCausalLM"), "rwkv7")
            );
            if !known {
                return Err(format!(
                    "architecture {arch} is not a causal language model of `model_type` \
                     `{model_type}`"
                ));
            }
        }
    }
    if scheme != NameScheme::BlinkDl && scheme != expected_scheme {
        return Err(format!(
            "`model_type` `{model_type}` expects {expected_scheme} tensor names, the files use \
             {scheme} names"
        ));
    }

    // Settings that change the computation.
    let eps_key = if model_type == "rwkv7" {
        "norm_eps"
    } else {
        "layer_norm_epsilon"
    };
    let eps = float(eps_key)?;
    if let Some(eps) = eps {
        if (eps - 1e-5).abs() > 1e-12 {
            return Err(format!(
                "`{eps_key}` is {eps}; the crate's LayerNorms use 1e-5 (as the official package)"
            ));
        }
    }
    if let Some(d) = float("head_size_divisor")? {
        if d != 8.0 {
            return Err(format!(
                "`head_size_divisor` is {d}: the GroupNorm eps would be 1e-5·{d}² instead of the \
                 64e-5 (divisor 8) the crate uses"
            ));
        }
    }
    if model_type == "rwkv7" {
        if !boolean("norm_first", true)? {
            return Err(
                "`norm_first` is false (no pre-norm of the embedding): not RWKV-7 as \
                        the official package computes it"
                    .into(),
            );
        }
        if let Some(act) = get("hidden_act") {
            if act.as_str() != Some("sqrelu") {
                return Err(format!(
                    "`hidden_act` is {act}; RWKV-7's channel mix uses sqrelu"
                ));
            }
        }
        if let Some(attn) = get("attn") {
            return Err(format!(
                "`attn` is {attn}: hybrid softmax-attention layers are not supported"
            ));
        }
    }

    // Sizes against the tensors.
    let shape = |name: &str| src.shape(name);
    let emb = shape("emb.weight").ok_or("no embedding tensor")?;
    let [vocab, hidden] = emb[..] else {
        return Err(format!("the embedding has shape {emb:?}, expected [V, C]"));
    };
    let layers = crate::config::count_layers(src).map_err(|e| e.to_string())?;
    let mut checks = vec![
        ("vocab_size", vocab, "the embedding's rows".to_string()),
        ("hidden_size", hidden, "the embedding's columns".to_string()),
        (
            "num_hidden_layers",
            layers,
            "the blocks in the files".to_string(),
        ),
        ("attention_hidden_size", hidden, "hidden_size".to_string()),
    ];
    if let Some([f, _]) = shape("blocks.0.ffn.key.weight").as_deref() {
        checks.push(("intermediate_size", *f, "blocks.0's ffn key rows".into()));
    }
    let heads = shape("blocks.0.att.time_faaaa").or_else(|| shape("blocks.0.att.r_k"));
    if let Some([h, n]) = heads.as_deref() {
        let key = if model_type == "rwkv7" {
            "head_dim"
        } else {
            "head_size"
        };
        checks.push((key, *n, "the per-head tensors' columns".into()));
        checks.push(("num_heads", *h, "the per-head tensors' rows".into()));
    }
    if model_type == "rwkv7" {
        for (key, name) in [
            ("decay_low_rank_dim", "blocks.0.att.w1"),
            ("a_low_rank_dim", "blocks.0.att.a1"),
            ("gate_low_rank_dim", "blocks.0.att.g1"),
            ("v_low_rank_dim", "blocks.1.att.v1"),
        ] {
            if let Some([_, d]) = shape(name).as_deref() {
                checks.push((key, *d, format!("`{name}`'s columns")));
            }
        }
    }
    for (key, found, what) in checks {
        if let Some(value) = uint(key)? {
            if value != found {
                return Err(format!("`{key}` is {value} but {what} give {found}"));
            }
        }
    }
    if model_type == "rwkv7" {
        match get("value_dim") {
            None => {}
            Some(Value::Array(dims)) if dims.iter().all(|d| d.as_u64() == Some(hidden as u64)) => {}
            Some(v) if v.as_u64() == Some(hidden as u64) => {}
            Some(v) => {
                return Err(format!(
                    "`value_dim` is {v}; only value_dim = hidden_size ({hidden}) is supported"
                ))
            }
        }
        if let Some([_, n]) = shape("blocks.0.att.r_k").as_deref() {
            let gn_eps = *n as f64 * eps.unwrap_or(1e-5);
            if (gn_eps - 64e-5).abs() > 1e-12 {
                return Err(format!(
                    "the GroupNorm eps head_dim·norm_eps is {gn_eps:e} (head_dim {n}); the \
                     crate's RWKV-7 uses the official 64e-5"
                ));
            }
        }
        if !boolean("norm_bias", true)? {
            let norms = ["ln_out".to_string()]
                .into_iter()
                .chain((0..layers).flat_map(|l| {
                    let mut v = vec![format!("blocks.{l}.ln1"), format!("blocks.{l}.ln2")];
                    if l == 0 {
                        v.push("blocks.0.ln0".into());
                    }
                    v
                }));
            for norm in norms {
                let bias = format!("{norm}.bias");
                if src.entry(&bias).is_none() {
                    if let Some(Entry::Same(w)) = src.entry(&format!("{norm}.weight")).cloned() {
                        src.set(&bias, Entry::Zeros(w));
                    }
                }
            }
        }
    }

    // The head.
    if boolean("tie_word_embeddings", false)? {
        let emb = src
            .entry("emb.weight")
            .cloned()
            .ok_or("no embedding tensor")?;
        src.set("head.weight", emb);
    } else if src.entry("head.weight").is_none() {
        return Err("no head tensor (`head.weight` / `lm_head.weight`) and \
                    `tie_word_embeddings` is false"
            .into());
    }
    Ok(())
}
