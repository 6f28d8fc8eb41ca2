//! Tensor naming schemes other than BlinkDL's, mapped onto the BlinkDL names the loaders read.
//!
//! Three schemes are recognised from the names alone:
//!
//! * **transformers** (`rwkv.` prefix): transformers' `RwkvForCausalLM` (RWKV-4) and the RWKV
//!   organisation's `-HF` repositories of RWKV-5 and RWKV-6 (remote code `modeling_rwkv5.py`,
//!   `modeling_rwkv6.py`). Prefixes and a few suffixes are renamed; no value changes.
//! * **fla** (`model.` / `lm_head.` prefixes): flash-linear-attention's RWKV-7
//!   (`fla/models/rwkv7`, as fla-hub's rwkv7 repositories store it). Besides renaming, the
//!   LoRA factors are transposed (fla keeps them as `nn.Linear` weights, `[out, in]`) and the
//!   fused token-shift coefficients `attn.x_x` `[6, C]`, when present, are split into rows.
//! * **BlinkDL** (`blocks.`, `emb.`, `ln_out.`): passed through unchanged.
//!
//! `head.weight` is spelt the same in BlinkDL and transformers files and counts for neither.
//! A file whose names belong to two schemes is refused.
//!
//! Which facts were confirmed, and from what:
//!
//! * transformers RWKV-4: read from transformers 5.25's `modeling_rwkv.py` and checked by
//!   running it: tools/formats/make_hf.py writes a folder with transformers' own
//!   `save_pretrained` and its forward reproduces the official logits. Names:
//!   `rwkv.embeddings.weight`, `rwkv.blocks.N.{pre_ln,ln1,ln2}.*`,
//!   `attention.{time_decay,time_first,time_mix_key,time_mix_value,time_mix_receptance}`,
//!   `attention.{key,value,receptance,output}.weight`,
//!   `feed_forward.{time_mix_key,time_mix_receptance,key.weight,receptance.weight,value.weight}`,
//!   `rwkv.ln_out.*`, `head.weight`; values exactly the BlinkDL ones (`time_decay` raw,
//!   `time_first` raw).
//! * RWKV-5 `-HF`: read from a `modeling_rwkv5.py` of the RWKV organisation's repositories
//!   (not run): as RWKV-4 plus `attention.{time_mix_gate,gate.weight,ln_x.*}`, and
//!   `attention.time_decay` / `attention.time_faaaa` `[H, N]` with raw values.
//! * RWKV-6 `-HF`: read from a `modeling_rwkv6.py` (not run): the BlinkDL suffixes
//!   `time_maa_{x,w,k,v,r,g,w1,w2}`, `time_decay` `[1, 1, C]`, `time_decay_w1/w2`,
//!   `time_faaaa`, and `feed_forward.time_maa_{k,r}`, all stored `[in, out]` as BlinkDL does.
//!   Older conversions (the names candle's `rwkv_v6.rs` reads) spell the same values
//!   `time_mix_{x,w,key,value,receptance,gate,w1,w2}` and `feed_forward.time_mix_{key,
//!   receptance}`; both spellings are accepted (a file is RWKV-6 when its attention has
//!   `time_maa_x` or `time_mix_x`).
//! * fla RWKV-7: read from flash-linear-attention 0.6's `fla/layers/rwkv7.py`,
//!   `fla/layers/rwkv6.py` (`LoRA`) and `fla/models/rwkv7/modeling_rwkv7.py`, and checked by
//!   running them: tools/formats/check_fla.py loads the v7 fixture folder into fla's
//!   `RWKV7ForCausalLM` with `strict=True` and its forward (fla's reference ops on CPU) gives
//!   the official logits. `LoRA` is `Linear(in, r, bias=False)`, activation,
//!   `Linear(r, out, bias)`, so BlinkDL's `w1` = `w_lora.lora.0.weight`ᵀ, `w2` =
//!   `w_lora.lora.2.weight`ᵀ, `w0` = `w_lora.lora.2.bias` (likewise `a`, `v`; `g_lora` has no
//!   bias); the decay is `-e^{-1/2}·σ(w_lora(x))`, the official formula. Layer 0 has no
//!   `v_lora`. `x_r … x_g` are `[1, 1, C]`, `k_k`, `k_a` and `ffn.x_k` `[C]`, `r_k` `[H, N]`;
//!   `g_norm` is the official `ln_x` with eps `head_dim · norm_eps`. The fused `attn.x_x`
//!   `[6, C]` (rows r, w, k, v, a, g) was seen in an earlier fla-derived `RWKV7Attention`.

use super::{DType, RawTensor, Tensor, TensorSource};
use crate::error::{Error, Result};
use ndarray::{ArrayD, Axis, IxDyn};
use std::collections::HashMap;

/// A tensor naming scheme (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum NameScheme {
    /// BlinkDL's own names (`emb.weight`, `blocks.N.att.*`, ...): what the loaders read.
    BlinkDl,
    /// transformers' RWKV-4 and the RWKV-5/6 `-HF` repositories (`rwkv.blocks.N.attention.*`).
    Transformers,
    /// flash-linear-attention's RWKV-7 (`model.layers.N.attn.*`).
    Fla,
}

impl std::fmt::Display for NameScheme {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NameScheme::BlinkDl => "BlinkDL",
            NameScheme::Transformers => "transformers RWKV",
            NameScheme::Fla => "flash-linear-attention RWKV-7",
        })
    }
}

/// The scheme one name belongs to, `None` for a name that fits several or none.
fn scheme_of(name: &str) -> Option<NameScheme> {
    if name.starts_with("rwkv.") {
        Some(NameScheme::Transformers)
    } else if name.starts_with("model.") || name.starts_with("lm_head.") {
        Some(NameScheme::Fla)
    } else if name.starts_with("blocks.") || name.starts_with("emb.") || name.starts_with("ln_out.")
    {
        Some(NameScheme::BlinkDl)
    } else {
        None
    }
}

/// The naming scheme of `names`: the one scheme any of them belongs to, BlinkDL if none does.
///
/// # Errors
/// A message naming one tensor of each scheme when names of two schemes are mixed.
pub fn detect_scheme<'a>(
    names: impl IntoIterator<Item = &'a str>,
) -> std::result::Result<NameScheme, String> {
    let mut seen: Vec<(NameScheme, &str)> = Vec::new();
    for name in names {
        if let Some(scheme) = scheme_of(name) {
            if !seen.iter().any(|(s, _)| *s == scheme) {
                seen.push((scheme, name));
            }
        }
    }
    seen.sort_by_key(|(_, name)| *name);
    match seen[..] {
        [] => Ok(NameScheme::BlinkDl),
        [(scheme, _)] => Ok(scheme),
        [(a, na), (b, nb), ..] => Err(format!(
            "tensor names of two naming schemes are mixed: `{na}` ({a}) and `{nb}` ({b})"
        )),
    }
}

/// How one BlinkDL-named tensor is made from the underlying source.
#[derive(Clone, Debug)]
pub(crate) enum Entry {
    /// The tensor of that name, as stored (seen in place).
    Same(String),
    /// The transpose of that `[a, b]` tensor (built owned).
    Transposed(String),
    /// Row `row` of that `[rows, C]` tensor, as `[C]` (seen in place).
    Row(String, usize),
    /// Zeros of that tensor's shape and type (a norm stored without bias).
    Zeros(String),
}

impl Entry {
    fn source_name(&self) -> &str {
        match self {
            Entry::Same(n) | Entry::Transposed(n) | Entry::Row(n, _) | Entry::Zeros(n) => n,
        }
    }
}

/// Another scheme's tensors under BlinkDL names: renamed tensors stay in place (their
/// [`TensorSource::raw`] is the source's), transformed ones are built on request.
pub struct Renamed {
    inner: Box<dyn TensorSource>,
    scheme: NameScheme,
    entries: HashMap<String, Entry>,
    order: Vec<String>,
}

impl std::fmt::Debug for Renamed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Renamed")
            .field("scheme", &self.scheme)
            .field("tensors", &self.order.len())
            .finish()
    }
}

impl Renamed {
    /// `inner` under BlinkDL names, its scheme detected from its names.
    ///
    /// # Errors
    /// A message naming the tensor: names of two schemes, a name the scheme has no BlinkDL
    /// counterpart for, two names mapped to one, or a tensor to split or transpose that has
    /// the wrong number of axes.
    pub fn new(inner: Box<dyn TensorSource>) -> std::result::Result<Renamed, String> {
        let scheme = detect_scheme(inner.names())?;
        let mut names: Vec<String> = inner.names().into_iter().map(String::from).collect();
        names.sort();
        let v6 = names
            .iter()
            .any(|n| n.ends_with(".attention.time_maa_x") || n.ends_with(".attention.time_mix_x"));
        let mut renamed = Renamed {
            inner,
            scheme,
            entries: HashMap::new(),
            order: Vec::new(),
        };
        for name in names {
            let mapped = match scheme {
                NameScheme::BlinkDl => vec![(name.clone(), Entry::Same(name.clone()))],
                NameScheme::Transformers => {
                    let target =
                        transformers_name(&name, v6).ok_or_else(|| unknown(&name, scheme))?;
                    vec![(target, Entry::Same(name.clone()))]
                }
                NameScheme::Fla => fla_entries(&name).ok_or_else(|| unknown(&name, scheme))?,
            };
            for (target, entry) in mapped {
                renamed.check_axes(&entry)?;
                renamed.insert(target, entry)?;
            }
        }
        Ok(renamed)
    }

    /// The scheme of the underlying names.
    pub fn scheme(&self) -> NameScheme {
        self.scheme
    }

    /// The source tensor name the BlinkDL tensor `name` is made from.
    pub fn source_name(&self, name: &str) -> Option<&str> {
        self.entries.get(name).map(Entry::source_name)
    }

    /// Adds `name`, made as `entry` says.
    ///
    /// # Errors
    /// A message if `name` is already present.
    pub(crate) fn insert(&mut self, name: String, entry: Entry) -> std::result::Result<(), String> {
        if let Some(old) = self.entries.get(&name) {
            return Err(format!(
                "tensors `{}` and `{}` both map to `{name}`",
                old.source_name(),
                entry.source_name()
            ));
        }
        self.order.push(name.clone());
        self.entries.insert(name, entry);
        Ok(())
    }

    /// Replaces (or adds) `name`, made as `entry` says.
    pub(crate) fn set(&mut self, name: &str, entry: Entry) {
        if self.entries.insert(name.to_string(), entry).is_none() {
            self.order.push(name.to_string());
        }
    }

    /// The entry of `name`.
    pub(crate) fn entry(&self, name: &str) -> Option<&Entry> {
        self.entries.get(name)
    }

    fn check_axes(&self, entry: &Entry) -> std::result::Result<(), String> {
        let (name, want) = match entry {
            Entry::Transposed(n) | Entry::Row(n, _) => (n, 2),
            _ => return Ok(()),
        };
        let shape = self.inner.shape(name).unwrap_or_default();
        if shape.len() != want {
            return Err(format!(
                "tensor `{name}` has shape {shape:?}, expected two axes"
            ));
        }
        if let Entry::Row(_, row) = entry {
            if *row >= shape[0] {
                return Err(format!(
                    "tensor `{name}` has shape {shape:?}, expected [6, C]"
                ));
            }
        }
        Ok(())
    }
}

fn unknown(name: &str, scheme: NameScheme) -> String {
    format!("tensor `{name}` has no counterpart among the RWKV tensors of the {scheme} names")
}

/// The BlinkDL name of a transformers / RWKV-5/6 `-HF` name (`v6`: the file is RWKV-6).
fn transformers_name(name: &str, v6: bool) -> Option<String> {
    match name {
        "rwkv.embeddings.weight" => return Some("emb.weight".into()),
        "head.weight" => return Some(name.into()),
        _ => {}
    }
    if let Some(rest) = name.strip_prefix("rwkv.ln_out.") {
        return Some(format!("ln_out.{rest}"));
    }
    let rest = name.strip_prefix("rwkv.blocks.")?;
    let (layer, rest) = rest.split_once('.')?;
    layer.parse::<usize>().ok()?;
    let mapped = if let Some(p) = rest.strip_prefix("pre_ln.") {
        format!("ln0.{p}")
    } else if rest.starts_with("ln1.") || rest.starts_with("ln2.") {
        rest.to_string()
    } else if let Some(s) = rest.strip_prefix("attention.") {
        let s = match (s, v6) {
            ("time_mix_key", false) => "time_mix_k",
            ("time_mix_value", false) => "time_mix_v",
            ("time_mix_receptance", false) => "time_mix_r",
            ("time_mix_gate", false) => "time_mix_g",
            ("time_mix_x", true) => "time_maa_x",
            ("time_mix_w", true) => "time_maa_w",
            ("time_mix_key", true) => "time_maa_k",
            ("time_mix_value", true) => "time_maa_v",
            ("time_mix_receptance", true) => "time_maa_r",
            ("time_mix_gate", true) => "time_maa_g",
            ("time_mix_w1", true) => "time_maa_w1",
            ("time_mix_w2", true) => "time_maa_w2",
            (s, _) => s,
        };
        format!("att.{s}")
    } else if let Some(s) = rest.strip_prefix("feed_forward.") {
        let s = match (s, v6) {
            ("time_mix_key", false) => "time_mix_k",
            ("time_mix_receptance", false) => "time_mix_r",
            ("time_mix_key", true) => "time_maa_k",
            ("time_mix_receptance", true) => "time_maa_r",
            (s, _) => s,
        };
        format!("ffn.{s}")
    } else {
        return None;
    };
    Some(format!("blocks.{layer}.{mapped}"))
}

/// The BlinkDL tensors made from one flash-linear-attention RWKV-7 tensor.
fn fla_entries(name: &str) -> Option<Vec<(String, Entry)>> {
    let same = |target: String| Some(vec![(target, Entry::Same(name.to_string()))]);
    match name {
        "model.embeddings.weight" => return same("emb.weight".into()),
        "lm_head.weight" => return same("head.weight".into()),
        _ => {}
    }
    if let Some(rest) = name.strip_prefix("model.norm.") {
        return same(format!("ln_out.{rest}"));
    }
    let rest = name.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    layer.parse::<usize>().ok()?;
    let block = |s: &str| format!("blocks.{layer}.{s}");
    for (fla, blinkdl) in [
        ("pre_norm.", "ln0."),
        ("attn_norm.", "ln1."),
        ("ffn_norm.", "ln2."),
        ("attn.g_norm.", "att.ln_x."),
    ] {
        if let Some(p) = rest.strip_prefix(fla) {
            return same(block(&format!("{blinkdl}{p}")));
        }
    }
    let plain = match rest {
        "attn.x_r" | "attn.x_w" | "attn.x_k" | "attn.x_v" | "attn.x_a" | "attn.x_g"
        | "attn.k_k" | "attn.k_a" | "attn.r_k" => format!("att.{}", &rest[5..]),
        "attn.r_proj.weight" => "att.receptance.weight".into(),
        "attn.k_proj.weight" => "att.key.weight".into(),
        "attn.v_proj.weight" => "att.value.weight".into(),
        "attn.o_proj.weight" => "att.output.weight".into(),
        "ffn.x_k" | "ffn.key.weight" | "ffn.value.weight" => rest.to_string(),
        "attn.x_x" => {
            let rows = ["x_r", "x_w", "x_k", "x_v", "x_a", "x_g"]
                .into_iter()
                .enumerate();
            return Some(
                rows.map(|(i, x)| (block(&format!("att.{x}")), Entry::Row(name.into(), i)))
                    .collect(),
            );
        }
        _ => {
            let lora = rest.strip_prefix("attn.")?;
            let (kind, part) = lora.split_once("_lora.lora.")?;
            if !matches!(kind, "w" | "a" | "v" | "g") {
                return None;
            }
            let (target, entry) = match part {
                "0.weight" => (format!("att.{kind}1"), Entry::Transposed(name.into())),
                "2.weight" => (format!("att.{kind}2"), Entry::Transposed(name.into())),
                "2.bias" => (format!("att.{kind}0"), Entry::Same(name.into())),
                _ => return None,
            };
            return Some(vec![(block(&target), entry)]);
        }
    };
    same(block(&plain))
}

/// `a`'s two axes swapped, in standard layout.
fn transpose<T: Clone>(a: ArrayD<T>) -> ArrayD<T> {
    a.reversed_axes().as_standard_layout().into_owned()
}

/// Row `row` of `a`.
fn row_of<T: Clone>(a: ArrayD<T>, row: usize) -> ArrayD<T> {
    a.index_axis(Axis(0), row).to_owned()
}

impl TensorSource for Renamed {
    fn names(&self) -> Vec<&str> {
        self.order.iter().map(String::as_str).collect()
    }

    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        let entry = self.entries.get(name)?;
        let mut shape = self.inner.shape(entry.source_name())?;
        match entry {
            Entry::Transposed(_) => shape.reverse(),
            Entry::Row(..) => {
                shape.remove(0);
            }
            Entry::Same(_) | Entry::Zeros(_) => {}
        }
        Some(shape)
    }

    fn dtype(&self, name: &str) -> Option<std::result::Result<DType, String>> {
        self.inner.dtype(self.entries.get(name)?.source_name())
    }

    fn tensor(&self, name: &str) -> Result<Tensor> {
        let entry = self
            .entries
            .get(name)
            .ok_or_else(|| Error::MissingTensor(name.to_string()))?;
        let t = self.inner.tensor(entry.source_name())?;
        Ok(match entry {
            Entry::Same(_) => t,
            Entry::Transposed(_) => match t {
                Tensor::F32(a) => Tensor::F32(transpose(a)),
                Tensor::F16(a) => Tensor::F16(transpose(a)),
                Tensor::Bf16(a) => Tensor::Bf16(transpose(a)),
            },
            Entry::Row(_, row) => match t {
                Tensor::F32(a) => Tensor::F32(row_of(a, *row)),
                Tensor::F16(a) => Tensor::F16(row_of(a, *row)),
                Tensor::Bf16(a) => Tensor::Bf16(row_of(a, *row)),
            },
            Entry::Zeros(_) => {
                let dtype = t.dtype();
                Tensor::F32(ArrayD::zeros(IxDyn(t.shape()))).to_dtype(dtype)
            }
        })
    }

    fn raw(&self, name: &str) -> Option<RawTensor> {
        match self.entries.get(name)? {
            Entry::Same(source) => self.inner.raw(source),
            Entry::Row(source, row) => {
                let raw = self.inner.raw(source)?;
                let shape = raw.shape.get(1..)?.to_vec();
                let len = raw.bytes.len() / raw.shape.first().copied().filter(|&r| r > 0)?;
                let bytes = raw.bytes.slice(row * len..(row + 1) * len)?;
                Some(RawTensor {
                    dtype: raw.dtype,
                    shape,
                    bytes,
                })
            }
            Entry::Transposed(_) | Entry::Zeros(_) => None,
        }
    }

    fn blocks(&self, name: &str) -> Option<super::RawBlocks> {
        match self.entries.get(name)? {
            Entry::Same(source) => self.inner.blocks(source),
            _ => None,
        }
    }
}

/// `source` under BlinkDL names: unchanged when it already uses them, else wrapped in the
/// [`Renamed`] adapter of its scheme. Used for single safetensors files and for folders alike;
/// `file` names the source in errors.
///
/// # Errors
/// [`Error::Checkpoint`] naming `file` and the tensor when the names cannot be mapped (see
/// [`Renamed::new`]).
pub fn blinkdl_view(source: Box<dyn TensorSource>, file: &str) -> Result<Box<dyn TensorSource>> {
    let error = |what: String| Error::Checkpoint {
        format: "safetensors",
        file: file.to_string(),
        what,
    };
    match detect_scheme(source.names()).map_err(error)? {
        NameScheme::BlinkDl => Ok(source),
        _ => Ok(Box::new(Renamed::new(source).map_err(error)?)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transformers_names_map_to_blinkdl_names() {
        // (name, file is RWKV-6, BlinkDL name)
        let cases = [
            ("rwkv.embeddings.weight", false, "emb.weight"),
            ("head.weight", false, "head.weight"),
            ("rwkv.ln_out.bias", false, "ln_out.bias"),
            ("rwkv.blocks.0.pre_ln.weight", false, "blocks.0.ln0.weight"),
            ("rwkv.blocks.3.ln2.bias", false, "blocks.3.ln2.bias"),
            (
                "rwkv.blocks.1.attention.time_mix_key",
                false,
                "blocks.1.att.time_mix_k",
            ),
            (
                "rwkv.blocks.1.attention.time_mix_gate",
                false,
                "blocks.1.att.time_mix_g",
            ),
            (
                "rwkv.blocks.1.attention.time_faaaa",
                false,
                "blocks.1.att.time_faaaa",
            ),
            (
                "rwkv.blocks.1.attention.ln_x.weight",
                false,
                "blocks.1.att.ln_x.weight",
            ),
            (
                "rwkv.blocks.1.feed_forward.time_mix_receptance",
                false,
                "blocks.1.ffn.time_mix_r",
            ),
            (
                "rwkv.blocks.1.feed_forward.value.weight",
                false,
                "blocks.1.ffn.value.weight",
            ),
            (
                "rwkv.blocks.2.attention.time_maa_w1",
                true,
                "blocks.2.att.time_maa_w1",
            ),
            (
                "rwkv.blocks.2.attention.time_mix_x",
                true,
                "blocks.2.att.time_maa_x",
            ),
            (
                "rwkv.blocks.2.attention.time_mix_key",
                true,
                "blocks.2.att.time_maa_k",
            ),
            (
                "rwkv.blocks.2.attention.time_mix_w2",
                true,
                "blocks.2.att.time_maa_w2",
            ),
            (
                "rwkv.blocks.2.feed_forward.time_mix_key",
                true,
                "blocks.2.ffn.time_maa_k",
            ),
            (
                "rwkv.blocks.2.feed_forward.time_maa_r",
                true,
                "blocks.2.ffn.time_maa_r",
            ),
        ];
        for (name, v6, want) in cases {
            assert_eq!(transformers_name(name, v6).as_deref(), Some(want), "{name}");
        }
        for name in [
            "rwkv.blocks.x.ln1.weight",
            "rwkv.encoder.weight",
            "rwkv.blocks.0.mlp.w",
        ] {
            assert_eq!(transformers_name(name, false), None, "{name}");
        }
    }

    #[test]
    fn fla_names_map_to_blinkdl_names() {
        // (fla name, BlinkDL name, how it is made: "same", "transposed" or "row i")
        let cases = [
            ("model.embeddings.weight", "emb.weight", "same"),
            ("lm_head.weight", "head.weight", "same"),
            ("model.norm.weight", "ln_out.weight", "same"),
            ("model.layers.0.pre_norm.bias", "blocks.0.ln0.bias", "same"),
            (
                "model.layers.4.attn_norm.weight",
                "blocks.4.ln1.weight",
                "same",
            ),
            ("model.layers.4.ffn_norm.bias", "blocks.4.ln2.bias", "same"),
            ("model.layers.4.attn.x_a", "blocks.4.att.x_a", "same"),
            ("model.layers.4.attn.r_k", "blocks.4.att.r_k", "same"),
            (
                "model.layers.4.attn.r_proj.weight",
                "blocks.4.att.receptance.weight",
                "same",
            ),
            (
                "model.layers.4.attn.o_proj.weight",
                "blocks.4.att.output.weight",
                "same",
            ),
            (
                "model.layers.4.attn.g_norm.weight",
                "blocks.4.att.ln_x.weight",
                "same",
            ),
            (
                "model.layers.4.attn.w_lora.lora.0.weight",
                "blocks.4.att.w1",
                "transposed",
            ),
            (
                "model.layers.4.attn.a_lora.lora.2.weight",
                "blocks.4.att.a2",
                "transposed",
            ),
            (
                "model.layers.4.attn.v_lora.lora.2.bias",
                "blocks.4.att.v0",
                "same",
            ),
            (
                "model.layers.4.attn.g_lora.lora.0.weight",
                "blocks.4.att.g1",
                "transposed",
            ),
            ("model.layers.4.ffn.x_k", "blocks.4.ffn.x_k", "same"),
            (
                "model.layers.4.ffn.key.weight",
                "blocks.4.ffn.key.weight",
                "same",
            ),
        ];
        for (name, want, how) in cases {
            let entries = fla_entries(name).unwrap_or_else(|| panic!("{name} unmapped"));
            let [(target, entry)] = &entries[..] else {
                panic!("{name}: {entries:?}")
            };
            let made = match entry {
                Entry::Same(_) => "same",
                Entry::Transposed(_) => "transposed",
                other => panic!("{name}: {other:?}"),
            };
            assert_eq!((target.as_str(), made), (want, how), "{name}");
        }
        let fused = fla_entries("model.layers.2.attn.x_x").unwrap();
        let rows: Vec<_> = fused
            .iter()
            .map(|(t, e)| match e {
                Entry::Row(_, i) => (t.as_str(), *i),
                other => panic!("{other:?}"),
            })
            .collect();
        let want = ["x_r", "x_w", "x_k", "x_v", "x_a", "x_g"]
            .iter()
            .enumerate()
            .map(|(i, x)| (format!("blocks.2.att.{x}"), i))
            .collect::<Vec<_>>();
        let want: Vec<_> = want.iter().map(|(t, i)| (t.as_str(), *i)).collect();
        assert_eq!(rows, want);
        for name in [
            "model.layers.0.attn.q_proj.weight",
            "model.layers.0.attn.x_lora.lora.0.weight",
            "model.layers.0.attn.w_lora.lora.1.weight",
            "model.rotary.inv_freq",
        ] {
            assert!(fla_entries(name).is_none(), "{name}");
        }
    }

    #[test]
    fn schemes_are_detected_from_the_names() {
        // (names, scheme or the start of the error)
        let cases: [(&[&str], std::result::Result<NameScheme, &str>); 6] = [
            (
                &["emb.weight", "blocks.0.ln1.weight", "head.weight"],
                Ok(NameScheme::BlinkDl),
            ),
            (
                &["rwkv.embeddings.weight", "head.weight"],
                Ok(NameScheme::Transformers),
            ),
            (
                &["model.embeddings.weight", "lm_head.weight"],
                Ok(NameScheme::Fla),
            ),
            (&["head.weight"], Ok(NameScheme::BlinkDl)),
            (&[], Ok(NameScheme::BlinkDl)),
            (
                &["rwkv.ln_out.weight", "blocks.0.ln1.weight"],
                Err("tensor names of two"),
            ),
        ];
        for (names, want) in cases {
            let got = detect_scheme(names.iter().copied());
            match (got, want) {
                (Ok(a), Ok(b)) => assert_eq!(a, b, "{names:?}"),
                (Err(e), Err(w)) => assert!(e.starts_with(w), "{e}"),
                (got, want) => panic!("{names:?}: {got:?}, expected {want:?}"),
            }
        }
    }
}
