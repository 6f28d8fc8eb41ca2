//! llama.cpp's `rwkv6` and `rwkv7` GGUF layouts mapped back to BlinkDL names and layouts.
//!
//! llama.cpp's converter (`convert_hf_to_gguf.py`, from a Hugging Face RWKV-6/7 checkpoint)
//! renames every tensor (`blocks.N.att.key.weight` → `blk.N.time_mix_key.weight`, `ln0` →
//! `token_embd_norm`, `ln_out` → `output_norm`, `head` → `output`, ...) and changes some:
//!
//! * the token-shift vectors are fused into one `time_mix_lerp_fused` (RWKV-6: `w k v r g`,
//!   RWKV-7: `r w k v a g`), which is split here into slices of the file's bytes;
//! * the low-rank matrices are stored transposed (RWKV-6 `time_maa_w1`, `time_decay_w1/w2`,
//!   RWKV-7 `w1 w2 a1 a2 v1 v2 g1 g2`) and RWKV-6's stacked `time_maa_w2` `[5, D, C]` as
//!   `[5, C, D]`: transposed back here into owned tensors;
//! * RWKV-7's `r_k` `[H, N]` is flattened to `[C]`: viewed as `[H, N]` again;
//! * RWKV-7's block 0 gets copies of `a0 a1 a2` as `v0 v1 v2` (block 0 has no value
//!   residual): dropped;
//! * RWKV-6 with `rescale_every_n_layers = n > 0` has block `b`'s `att.output` and `ffn.value`
//!   divided by `2^(b / n)` (and llama.cpp halves the residual stream every `n` blocks to
//!   match): multiplied back here (exact, powers of two), so the crate's unscaled math applies.
//!
//! The decays (`time_decay`, `w0`) and `time_faaaa` are stored as BlinkDL stores them.
//!
//! A matrix stored in one of the crate's block formats (Q8_0, Q4_0, Q5_0, Q5_1, Q4_K, Q5_K,
//! Q6_K) that is only renamed is used in place as blocks. One that is transposed or rescaled (the low-rank
//! factors, RWKV-6's rescaled `att.output`/`ffn.value`) is decoded to f32, transformed, and
//! kept in f32: re-quantizing a transposed matrix would round it a second time along other
//! blocks, and these matrices are small (the low-rank factors) or few; a load that quantizes
//! (`Model::load_quantized`) quantizes them again if their role is quantized.

use super::{gguf_error, GgufFile, GgufValue};
use crate::error::{Error, Result};
use crate::ops::aligned;
use crate::weights::{
    element_size, DType, Quantization, RawBlocks, RawTensor, TableEntry, Tensor, TensorSource,
    TensorTable,
};
use ndarray::ArrayD;
use std::collections::HashMap;

/// The RWKV generation of a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Arch {
    V6,
    V7,
}

impl Arch {
    fn name(self) -> &'static str {
        match self {
            Arch::V6 => "rwkv6",
            Arch::V7 => "rwkv7",
        }
    }
}

/// How a tensor that cannot be used in place is made from its GGUF tensor.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Op {
    /// The last two axes swapped (a transpose, or `[5, C, D]` → `[5, D, C]`).
    SwapLastTwo,
    /// Every value multiplied by a power of two.
    Scale(f32),
}

/// A tensor built from a GGUF tensor at load.
#[derive(Clone, Debug)]
struct Built {
    from: String,
    op: Op,
    shape: Vec<usize>,
    dtype: std::result::Result<DType, String>,
}

/// The tensors of a llama.cpp `rwkv6` or `rwkv7` GGUF file under BlinkDL names, shapes and
/// layouts (the names and shapes `Model::from_source` reads). Renamed, reshaped and sliced
/// tensors are seen in place in the file's bytes ([`TensorSource::raw`]); transposed and
/// rescaled ones are built when read.
#[derive(Clone, Debug)]
pub struct GgufRwkv {
    arch: Arch,
    gguf: GgufFile,
    views: TensorTable,
    built: HashMap<String, Built>,
    built_order: Vec<String>,
}

/// The metadata of one architecture, read with its `{arch}.` prefix.
struct Meta<'a> {
    gguf: &'a GgufFile,
    arch: Arch,
}

impl Meta<'_> {
    fn key(&self, key: &str) -> String {
        format!("{}.{key}", self.arch.name())
    }

    fn get(&self, key: &str) -> Option<(String, &GgufValue)> {
        let full = self.key(key);
        let v = self.gguf.get(&full)?;
        Some((full, v))
    }

    fn opt_usize(&self, key: &str) -> std::result::Result<Option<usize>, String> {
        match self.get(key) {
            None => Ok(None),
            Some((full, v)) => v
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .map(Some)
                .ok_or_else(|| format!("metadata `{full}` = {v:?} is not a non-negative integer")),
        }
    }

    fn usize(&self, key: &str) -> std::result::Result<usize, String> {
        self.opt_usize(key)?
            .ok_or_else(|| format!("metadata `{}` is missing", self.key(key)))
    }
}

/// Where one GGUF tensor goes.
enum Target {
    /// Renamed (shape kept as stored).
    Rename(String),
    /// Renamed and given another shape of the same element count.
    Reshape(String, Vec<usize>),
    /// Split along its outer axis into these names (each `[C]`).
    Split(Vec<String>),
    /// Built by an operation.
    Build(String, Op),
    /// Not needed (RWKV-7 block 0's copies of `a0 a1 a2`).
    Drop,
}

/// A block index as llama.cpp writes it (`0`, `1`, ... with no sign or leading zero).
fn block_index(s: &str) -> Option<usize> {
    let n: usize = s.parse().ok()?;
    (n.to_string() == s).then_some(n)
}

impl GgufRwkv {
    /// Maps the tensors of `gguf`, an `rwkv6` or `rwkv7` file, to BlinkDL names, after
    /// checking the metadata against the tensors.
    ///
    /// # Errors
    /// [`Error::Checkpoint`] (format `GGUF`) naming the key or tensor: an architecture other
    /// than `rwkv6` and `rwkv7` (e.g. `llama`, `rwkv6qwen2`, `arwkv7`); a missing or
    /// malformed `embedding_length`, `block_count`, `feed_forward_length`, `wkv.head_size`,
    /// `time_mix_extra_dim`, `time_decay_extra_dim` or LoRA rank, or one the tensors
    /// contradict; a value that changes the math in a way the crate does not implement (a
    /// layer-norm epsilon other than 1e-5, RMS norms, a token-shift count other than 2, a
    /// rescale on RWKV-7, an RWKV-7 without its gate); a tensor name outside llama.cpp's
    /// layout for the architecture.
    pub fn new(gguf: GgufFile) -> Result<GgufRwkv> {
        Self::build(&gguf)
            .map_err(|what| gguf_error(gguf.file(), what))
            .map(|(arch, views, built, built_order)| GgufRwkv {
                arch,
                views,
                built,
                built_order,
                gguf,
            })
    }

    /// The GGUF file the tensors come from (its metadata, its tensors under GGUF names).
    pub fn gguf(&self) -> &GgufFile {
        &self.gguf
    }

    /// The llama.cpp architecture: `rwkv6` or `rwkv7`.
    pub fn architecture(&self) -> &'static str {
        self.arch.name()
    }

    #[allow(clippy::type_complexity)]
    fn build(
        gguf: &GgufFile,
    ) -> std::result::Result<(Arch, TensorTable, HashMap<String, Built>, Vec<String>), String> {
        let arch = match gguf.get("general.architecture") {
            None => return Err("metadata `general.architecture` is missing".into()),
            Some(v) => match v.as_str() {
                Some("rwkv6") => Arch::V6,
                Some("rwkv7") => Arch::V7,
                Some(other) => {
                    return Err(format!(
                        "architecture `{other}` is not read: only llama.cpp's `rwkv6` and \
                         `rwkv7` are"
                    ))
                }
                None => {
                    return Err(format!(
                        "metadata `general.architecture` = {v:?} is not text"
                    ))
                }
            },
        };
        let meta = Meta { gguf, arch };
        let c = meta.usize("embedding_length")?;
        let n_layer = meta.usize("block_count")?;
        let ffn = meta.usize("feed_forward_length")?;
        let head_size = meta.usize("wkv.head_size")?;
        if c == 0 || head_size == 0 || c % head_size != 0 {
            return Err(format!(
                "metadata `{}` = {head_size} does not divide `{}` = {c}",
                meta.key("wkv.head_size"),
                meta.key("embedding_length")
            ));
        }
        check_math(&meta)?;
        let rescale = meta.opt_usize("rescale_every_n_layers")?.unwrap_or(0);
        if arch == Arch::V7 && rescale != 0 {
            return Err(format!(
                "metadata `rwkv7.rescale_every_n_layers` = {rescale}: llama.cpp's RWKV-7 \
                 does not rescale, so the weights' meaning is unknown"
            ));
        }

        // Expected shapes (outermost axis first, compared with size-1 axes dropped) from the
        // metadata, by GGUF tensor stem.
        let mut expected: Vec<(&str, String, Vec<usize>)> = vec![
            (
                "channel_mix_key",
                meta.key("feed_forward_length"),
                vec![ffn, c],
            ),
            (
                "channel_mix_value",
                meta.key("feed_forward_length"),
                vec![c, ffn],
            ),
        ];
        match arch {
            Arch::V6 => {
                let dm = meta.usize("time_mix_extra_dim")?;
                let dd = meta.usize("time_decay_extra_dim")?;
                expected.extend([
                    (
                        "time_mix_w1",
                        meta.key("time_mix_extra_dim"),
                        vec![5 * dm, c],
                    ),
                    (
                        "time_mix_w2",
                        meta.key("time_mix_extra_dim"),
                        vec![5, c, dm],
                    ),
                    (
                        "time_mix_decay_w1",
                        meta.key("time_decay_extra_dim"),
                        vec![dd, c],
                    ),
                    (
                        "time_mix_decay_w2",
                        meta.key("time_decay_extra_dim"),
                        vec![c, dd],
                    ),
                    (
                        "time_mix_first",
                        meta.key("wkv.head_size"),
                        vec![c / head_size, head_size],
                    ),
                ]);
            }
            Arch::V7 => {
                for (rank_key, a, b) in [
                    ("attention.decay_lora_rank", "time_mix_w1", "time_mix_w2"),
                    ("attention.iclr_lora_rank", "time_mix_a1", "time_mix_a2"),
                    (
                        "attention.value_residual_mix_lora_rank",
                        "time_mix_v1",
                        "time_mix_v2",
                    ),
                    ("attention.gate_lora_rank", "time_mix_g1", "time_mix_g2"),
                ] {
                    let d = meta.usize(rank_key)?;
                    expected.push((a, meta.key(rank_key), vec![d, c]));
                    expected.push((b, meta.key(rank_key), vec![c, d]));
                }
                expected.push(("time_mix_r_k", meta.key("embedding_length"), vec![c]));
            }
        }

        let mut views = Vec::new();
        let mut view_blocks = Vec::new();
        let mut built = HashMap::new();
        let mut built_order = Vec::new();
        let mut blocks_seen = 0usize;
        for info in gguf.tensors() {
            let name = &info.name;
            let entry = gguf
                .table()
                .entry(name)
                .expect("every tensor is in the table");
            let (block, stem, suffix) = split_name(name).ok_or_else(|| {
                format!(
                    "tensor `{name}` is not part of llama.cpp's {} layout",
                    arch.name()
                )
            })?;
            if let Some(b) = block {
                if b >= n_layer {
                    return Err(format!(
                        "tensor `{name}` belongs to block {b}, but metadata `{}` = {n_layer}",
                        meta.key("block_count")
                    ));
                }
                blocks_seen = blocks_seen.max(b + 1);
                let found = &info.shape;
                let squeeze =
                    |s: &[usize]| s.iter().copied().filter(|&d| d != 1).collect::<Vec<_>>();
                let v1_of_block_0 = b == 0 && matches!(stem, "time_mix_v1" | "time_mix_v2");
                for (s, key, want) in &expected {
                    if *s == stem && !v1_of_block_0 && squeeze(found) != squeeze(want) {
                        return Err(format!(
                            "tensor `{name}` has shape {found:?}, but metadata `{key}` makes it \
                             {want:?}"
                        ));
                    }
                }
            } else if stem == "token_embd" && info.shape.last() != Some(&c) {
                return Err(format!(
                    "tensor `{name}` has shape {:?}, but metadata `{}` = {c}",
                    info.shape,
                    meta.key("embedding_length")
                ));
            }
            let unknown = || {
                format!(
                    "tensor `{name}` is not part of llama.cpp's {} layout",
                    arch.name()
                )
            };
            let target = match block {
                None => top_level(stem, suffix).ok_or_else(unknown)?,
                Some(b) => {
                    let factor = match (arch, rescale) {
                        (Arch::V6, n) if n > 0 => {
                            let k = b / n;
                            if k > 100 {
                                return Err(format!(
                                    "metadata `rwkv6.rescale_every_n_layers` = {n} scales block \
                                     {b} by 2^-{k}, beyond what is undone"
                                ));
                            }
                            2f32.powi(k as i32)
                        }
                        _ => 1.0,
                    };
                    let t = match arch {
                        Arch::V6 => v6_target(stem, suffix, factor),
                        Arch::V7 => v7_target(stem, suffix, b, c, head_size),
                    };
                    let prefix = format!("blocks.{b}.");
                    match t.ok_or_else(unknown)? {
                        Target::Rename(n) => Target::Rename(prefix + &n),
                        Target::Reshape(n, s) => Target::Reshape(prefix + &n, s),
                        Target::Split(ns) => {
                            Target::Split(ns.into_iter().map(|n| format!("{prefix}{n}")).collect())
                        }
                        Target::Build(n, op) => Target::Build(prefix + &n, op),
                        Target::Drop => Target::Drop,
                    }
                }
            };
            // Unread types are named with the GGUF tensor so errors point into the file.
            let dtype = entry
                .dtype
                .clone()
                .map_err(|t| format!("{t} (GGUF tensor `{name}`)"));
            // A matrix in one of the crate's block formats.
            let blocks = gguf.table().blocks(name);
            match target {
                Target::Drop => {}
                Target::Rename(to) => {
                    if let Some(b) = &blocks {
                        view_blocks.push((to.clone(), b.format.clone(), b.shape.clone()));
                    }
                    views.push((
                        to,
                        TableEntry {
                            dtype,
                            ..entry.clone()
                        },
                    ))
                }
                Target::Reshape(to, shape) => {
                    let n: usize = info.shape.iter().product();
                    if n != shape.iter().product::<usize>() {
                        return Err(format!(
                            "tensor `{name}` has shape {:?}, expected {} values to view as {shape:?}",
                            info.shape,
                            shape.iter().product::<usize>()
                        ));
                    }
                    views.push((
                        to,
                        TableEntry {
                            dtype,
                            shape,
                            range: entry.range.clone(),
                        },
                    ));
                }
                Target::Split(parts) => {
                    let k = parts.len();
                    let n: usize = info.shape.iter().product();
                    if info.shape.last() != Some(&c) || n != k * c {
                        let hint = if arch == Arch::V7 && n == 5 * c {
                            " (a 5-way fusion is an RWKV-7 without its output gate, which the \
                             crate does not run)"
                        } else {
                            ""
                        };
                        return Err(format!(
                            "tensor `{name}` has shape {:?}, expected {k} vectors of {c}{hint}",
                            info.shape
                        ));
                    }
                    for (i, to) in parts.into_iter().enumerate() {
                        let range = match &dtype {
                            Ok(d) => {
                                let len = c * element_size(*d);
                                let start = entry.range.start + i * len;
                                start..start + len
                            }
                            Err(_) => entry.range.clone(),
                        };
                        views.push((
                            to,
                            TableEntry {
                                dtype: dtype.clone(),
                                shape: vec![c],
                                range,
                            },
                        ));
                    }
                }
                Target::Build(to, op) => {
                    let mut shape = info.shape.clone();
                    if op == Op::SwapLastTwo {
                        let r = shape.len();
                        if r < 2 {
                            return Err(format!(
                                "tensor `{name}` has shape {shape:?}, expected a matrix"
                            ));
                        }
                        shape.swap(r - 2, r - 1);
                    }
                    if op == Op::Scale(1.0) {
                        if let Some(b) = &blocks {
                            view_blocks.push((to.clone(), b.format.clone(), b.shape.clone()));
                        }
                        views.push((
                            to,
                            TableEntry {
                                dtype,
                                ..entry.clone()
                            },
                        ));
                        continue;
                    }
                    // Blocks are decoded, transformed and kept in f32 (when the crate has
                    // the format; otherwise reading the tensor names it).
                    let dtype = match &blocks {
                        Some(b) if Quantization::none().reader(&b.format).is_ok() => Ok(DType::F32),
                        _ => dtype,
                    };
                    if built.contains_key(&to) {
                        return Err(format!("tensor `{name}` appears twice"));
                    }
                    built_order.push(to.clone());
                    built.insert(
                        to,
                        Built {
                            from: name.clone(),
                            op,
                            shape,
                            dtype,
                        },
                    );
                }
            }
        }
        if blocks_seen != n_layer {
            return Err(format!(
                "metadata `{}` = {n_layer}, but the tensors hold {blocks_seen} blocks",
                meta.key("block_count")
            ));
        }
        if let Some(name) = views
            .iter()
            .map(|(n, _)| n)
            .find(|n| built.contains_key(*n))
        {
            return Err(format!("tensor `{name}` is given twice"));
        }
        let views =
            TensorTable::new(gguf.table().bytes().clone(), views)?.with_blocks(view_blocks)?;
        Ok((arch, views, built, built_order))
    }
}

/// Refuses metadata that changes the math in ways the crate does not implement.
fn check_math(meta: &Meta) -> std::result::Result<(), String> {
    if let Some((key, v)) = meta.get("attention.layer_norm_epsilon") {
        match v.as_f64() {
            Some(eps) if eps as f32 == 1e-5f32 => {}
            _ => {
                return Err(format!(
                    "metadata `{key}` = {v:?}: the crate's layer norms use epsilon 1e-5"
                ))
            }
        }
    }
    if let Some((key, _)) = meta.get("attention.layer_norm_rms_epsilon") {
        return Err(format!(
            "metadata `{key}` asks for RMS norms, which RWKV-6/7 models do not use"
        ));
    }
    if let Some((key, v)) = meta.get("token_shift_count") {
        if v.as_u64() != Some(2) {
            return Err(format!(
                "metadata `{key}` = {v:?}: RWKV-6/7 blocks shift two vectors"
            ));
        }
    }
    Ok(())
}

/// `(block, stem, suffix)` of `blk.N.stem.suffix` or `stem.suffix`, suffix `weight` or `bias`.
fn split_name(name: &str) -> Option<(Option<usize>, &str, &str)> {
    let (rest, suffix) = name.rsplit_once('.')?;
    if suffix != "weight" && suffix != "bias" {
        return None;
    }
    match rest.strip_prefix("blk.") {
        Some(rest) => {
            let (n, stem) = rest.split_once('.')?;
            Some((Some(block_index(n)?), stem, suffix))
        }
        None => Some((None, rest, suffix)),
    }
}

fn top_level(stem: &str, suffix: &str) -> Option<Target> {
    let to = match (stem, suffix) {
        ("token_embd", "weight") => "emb.weight".to_string(),
        ("token_embd_norm", s) => format!("blocks.0.ln0.{s}"),
        ("output_norm", s) => format!("ln_out.{s}"),
        ("output", "weight") => "head.weight".to_string(),
        _ => return None,
    };
    Some(Target::Rename(to))
}

/// The targets both generations share.
fn common_target(stem: &str, suffix: &str) -> Option<Target> {
    let rename = |s: &str| Some(Target::Rename(s.to_string()));
    match (stem, suffix) {
        ("attn_norm", s) => rename(&format!("ln1.{s}")),
        ("attn_norm_2", s) => rename(&format!("ln2.{s}")),
        ("time_mix_ln", s) => rename(&format!("att.ln_x.{s}")),
        ("time_mix_key", "weight") => rename("att.key.weight"),
        ("time_mix_value", "weight") => rename("att.value.weight"),
        ("time_mix_receptance", "weight") => rename("att.receptance.weight"),
        ("channel_mix_key", "weight") => rename("ffn.key.weight"),
        _ => None,
    }
}

fn v6_target(stem: &str, suffix: &str, factor: f32) -> Option<Target> {
    if let Some(t) = common_target(stem, suffix) {
        return Some(t);
    }
    if suffix != "weight" {
        return None;
    }
    let rename = |s: &str| Some(Target::Rename(s.to_string()));
    let build = |s: &str, op| Some(Target::Build(s.to_string(), op));
    match stem {
        "time_mix_gate" => rename("att.gate.weight"),
        "time_mix_output" => build("att.output.weight", Op::Scale(factor)),
        "time_mix_w1" => build("att.time_maa_w1", Op::SwapLastTwo),
        "time_mix_w2" => build("att.time_maa_w2", Op::SwapLastTwo),
        "time_mix_decay_w1" => build("att.time_decay_w1", Op::SwapLastTwo),
        "time_mix_decay_w2" => build("att.time_decay_w2", Op::SwapLastTwo),
        "time_mix_decay" => rename("att.time_decay"),
        "time_mix_first" => rename("att.time_faaaa"),
        "time_mix_lerp_fused" => Some(Target::Split(
            ["w", "k", "v", "r", "g"]
                .map(|s| format!("att.time_maa_{s}"))
                .into(),
        )),
        "channel_mix_lerp_k" => rename("ffn.time_maa_k"),
        "channel_mix_lerp_r" => rename("ffn.time_maa_r"),
        "channel_mix_receptance" => rename("ffn.receptance.weight"),
        "channel_mix_value" => build("ffn.value.weight", Op::Scale(factor)),
        _ => {
            // The unfused token-shift vectors of older conversions.
            let s = stem.strip_prefix("time_mix_lerp_")?;
            ["x", "w", "k", "v", "r", "g"]
                .contains(&s)
                .then(|| Target::Rename(format!("att.time_maa_{s}")))
        }
    }
}

fn v7_target(stem: &str, suffix: &str, block: usize, c: usize, head_size: usize) -> Option<Target> {
    if let Some(t) = common_target(stem, suffix) {
        return Some(t);
    }
    if suffix != "weight" {
        return None;
    }
    let rename = |s: &str| Some(Target::Rename(s.to_string()));
    match stem {
        "time_mix_output" => rename("att.output.weight"),
        "time_mix_lerp_fused" => Some(Target::Split(
            ["r", "w", "k", "v", "a", "g"]
                .map(|s| format!("att.x_{s}"))
                .into(),
        )),
        "time_mix_k_k" => rename("att.k_k"),
        "time_mix_k_a" => rename("att.k_a"),
        "time_mix_r_k" => Some(Target::Reshape(
            "att.r_k".into(),
            vec![c / head_size, head_size],
        )),
        "time_mix_v0" | "time_mix_v1" | "time_mix_v2" if block == 0 => Some(Target::Drop),
        "channel_mix_lerp_k" => rename("ffn.x_k"),
        "channel_mix_value" => rename("ffn.value.weight"),
        _ => {
            let s = stem.strip_prefix("time_mix_")?;
            let b = s.as_bytes();
            if s.len() != 2 || !b"wavg".contains(&b[0]) {
                return None;
            }
            match b[1] {
                b'0' if b[0] != b'g' => rename(&format!("att.{s}")),
                b'1' | b'2' => Some(Target::Build(format!("att.{s}"), Op::SwapLastTwo)),
                _ => None,
            }
        }
    }
}

/// `a` with its last two axes swapped, in standard layout from a cache line.
fn swapped<T: Copy + Default>(mut a: ArrayD<T>) -> ArrayD<T> {
    let r = a.ndim();
    a.swap_axes(r - 2, r - 1);
    let shape = a.raw_dim();
    aligned::collect(a.len(), a.iter().copied())
        .into_shape_with_order(shape)
        .expect("as many elements as the array")
}

/// `t` times `factor` (a power of two, so exact), kept in its storage type unless a value
/// would overflow it (then in f32).
fn scaled(t: Tensor, factor: f32) -> Tensor {
    let dtype = t.dtype();
    let mut wide = t.to_f32();
    wide.mapv_inplace(|v| v * factor);
    let narrow = Tensor::F32(wide.clone()).to_dtype(dtype);
    let overflowed = narrow
        .to_f32()
        .iter()
        .zip(wide.iter())
        .any(|(n, w)| n.is_finite() != w.is_finite());
    if overflowed {
        Tensor::F32(wide)
    } else {
        narrow
    }
}

impl GgufRwkv {
    fn make(&self, name: &str, b: &Built) -> Result<Tensor> {
        if let Err(dtype) = &b.dtype {
            return Err(Error::Dtype {
                name: name.to_string(),
                dtype: dtype.clone(),
            });
        }
        let t = self.gguf.table().tensor(&b.from)?;
        Ok(match b.op {
            Op::SwapLastTwo => match t {
                Tensor::F32(a) => Tensor::F32(swapped(a)),
                Tensor::F16(a) => Tensor::F16(swapped(a)),
                Tensor::Bf16(a) => Tensor::Bf16(swapped(a)),
            },
            Op::Scale(f) => scaled(t, f),
        })
    }
}

impl TensorSource for GgufRwkv {
    fn names(&self) -> Vec<&str> {
        let mut names = self.views.names();
        names.extend(self.built_order.iter().map(String::as_str));
        names
    }

    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.views
            .shape(name)
            .or_else(|| self.built.get(name).map(|b| b.shape.clone()))
    }

    fn dtype(&self, name: &str) -> Option<std::result::Result<DType, String>> {
        self.views
            .dtype(name)
            .or_else(|| self.built.get(name).map(|b| b.dtype.clone()))
    }

    fn tensor(&self, name: &str) -> Result<Tensor> {
        match self.built.get(name) {
            Some(b) => self.make(name, b),
            None => self.views.tensor(name),
        }
    }

    fn raw(&self, name: &str) -> Option<RawTensor> {
        self.views.raw(name)
    }

    fn blocks(&self, name: &str) -> Option<RawBlocks> {
        self.views.blocks(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::IxDyn;

    /// Undoing the rescale is exact and keeps the storage type, unless a value would overflow
    /// it (then the tensor is given in f32).
    #[test]
    fn rescale_is_undone_exactly() {
        let values = [1.5f32, -0.25, 3e-5, 20000.0];
        let f32s = ArrayD::from_shape_vec(IxDyn(&[2, 2]), values.to_vec()).unwrap();
        let cases = [
            (Tensor::F32(f32s.clone()), 4.0, DType::F32),
            (
                Tensor::F32(f32s.clone()).to_dtype(DType::Bf16),
                4.0,
                DType::Bf16,
            ),
            (
                Tensor::F32(f32s.clone()).to_dtype(DType::F16),
                2.0,
                DType::F16,
            ),
            // 20000 · 4 is beyond f16's largest value, 65504.
            (
                Tensor::F32(f32s.clone()).to_dtype(DType::F16),
                4.0,
                DType::F32,
            ),
        ];
        for (t, factor, dtype) in cases {
            let want: Vec<f32> = t.to_f32().iter().map(|v| v * factor).collect();
            let got = scaled(t, factor);
            assert_eq!(got.dtype(), dtype);
            assert_eq!(got.to_f32().iter().copied().collect::<Vec<_>>(), want);
        }
    }

    /// The last two axes are swapped whatever the rank.
    #[test]
    fn last_two_axes_swap() {
        let a = ArrayD::from_shape_vec(IxDyn(&[2, 2, 3]), (0..12).collect::<Vec<u16>>()).unwrap();
        let s = swapped(a.clone());
        assert_eq!(s.shape(), [2, 3, 2]);
        for (i, j, k) in
            (0..2).flat_map(|i| (0..2).flat_map(move |j| (0..3).map(move |k| (i, j, k))))
        {
            assert_eq!(s[[i, k, j]], a[[i, j, k]]);
        }
    }

    #[test]
    fn block_indices_are_canonical() {
        for (s, want) in [
            ("0", Some(0)),
            ("12", Some(12)),
            ("01", None),
            ("+1", None),
            ("", None),
            ("x", None),
        ] {
            assert_eq!(block_index(s), want, "{s}");
        }
    }
}
