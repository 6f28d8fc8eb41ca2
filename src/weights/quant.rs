//! Block-quantized matrices in checkpoints: which matrices a load quantizes
//! ([`Quantization`], [`MatrixRole`], [`QUANTIZED_BY_DEFAULT`]), the blocks a file holds in
//! place ([`RawBlocks`], [`TensorSource::blocks`](super::TensorSource::blocks)), and the
//! crate's quantized safetensors layout ([`write_quantized_safetensors`]).
//!
//! # The quantized safetensors layout
//!
//! A BlinkDL-named safetensors file in which each quantized matrix `[out, in]` is a `U8`
//! tensor `[out, in / VALUES · BYTES]` (its rows of blocks, bit for bit as GGUF stores them),
//! and the header's `__metadata__` names the format: key `tokenshift.quant.<tensor name>`,
//! value `q8_0`, `q4_0`, `q5_0`, `q5_1`, `q4_k`, `q5_k` or `q6_k`. Every other tensor is stored
//! as usual. The reader ([`SafeTensorsFile`](super::SafeTensorsFile)) sees such a tensor as
//! `[out, in]` in that format and the loaders use its blocks in place from the memory map.
//!
//! # Matrices narrower than a format's blocks
//!
//! A matrix whose rows do not split into the requested format's blocks is quantized to the
//! format's fallback, as llama.cpp's `llama_tensor_get_type` does: Q4_K → Q5_0, Q5_K → Q5_1,
//! Q6_K → Q8_0 for rows that are whole 32-value blocks (the shipped model's widths 192 and
//! 672, the 0.1B shape's channel-mix value at 2688), and kept as stored otherwise. The rule
//! is [`QuantType::fallback`], applied by [`Quantization::target`] for both a load and
//! `convert --quantize`.

use super::{DType, Tensor, TensorSource};
use crate::error::{Error, Result};
use crate::storage::quant::{QuantFormat, QuantType};
use crate::storage::SharedBytes;
use std::collections::BTreeMap;
use std::path::Path;

/// The `__metadata__` key prefix that marks a quantized tensor of a safetensors file.
pub const QUANT_METADATA_PREFIX: &str = "tokenshift.quant.";

/// The kinds of weight matrices a load may quantize.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MatrixRole {
    /// The blocks' projections: time mix key, value, receptance, gate, output; channel mix
    /// key, value, receptance. Nearly all of a model's weights.
    Projection,
    /// RWKV-6/7's low-rank (LoRA) factors (widths of 32 to 160: only `q8_0`/`q4_0` fit some).
    LowRank,
    /// The output head `head.weight`.
    Head,
    /// The token embedding `emb.weight` (read one row per token).
    Embedding,
}

impl MatrixRole {
    /// The role of the matrix at the full tensor path `path` read as a linear layer.
    pub fn of_linear(path: &str) -> MatrixRole {
        match path {
            "emb.weight" => MatrixRole::Embedding,
            "head.weight" => MatrixRole::Head,
            _ => MatrixRole::Projection,
        }
    }

    /// The role of a checkpoint tensor stored `[out, in]` under its BlinkDL name, `None` for
    /// anything else (vectors, and the low-rank factors, which are stored `[in, out]`):
    /// `emb.weight`, `head.weight`, and `blocks.N.att.*.weight` / `blocks.N.ffn.*.weight` of
    /// `key`, `value`, `receptance`, `gate`, `output`.
    pub fn of_tensor(name: &str) -> Option<MatrixRole> {
        match name {
            "emb.weight" => return Some(MatrixRole::Embedding),
            "head.weight" => return Some(MatrixRole::Head),
            _ => {}
        }
        let rest = name.strip_prefix("blocks.")?;
        let (n, rest) = rest.split_once('.')?;
        n.parse::<usize>().ok()?;
        let (part, rest) = rest.split_once('.')?;
        let proj = rest.strip_suffix(".weight")?;
        let known = ["key", "value", "receptance", "gate", "output"].contains(&proj);
        (matches!(part, "att" | "ffn") && known).then_some(MatrixRole::Projection)
    }
}

/// The matrices [`Model::load_quantized`](crate::Model::load_quantized) quantizes: the block
/// projections and the head. The head is a third of what a 0.1B model reads per token (65536
/// × 768), so decode gains little without it, and quantizing it as well changed the measured
/// quality little (README, Quantized weights). The embedding stays as stored (read one row
/// per token, so quantizing it saves memory but no decode time); the low-rank factors are small
/// (about 3% of an RWKV-7's weights) and most are narrower than a 256-value block.
pub const QUANTIZED_BY_DEFAULT: &[MatrixRole] = &[MatrixRole::Projection, MatrixRole::Head];

/// How a load treats block formats: the format matrices are quantized to (if any) and which
/// matrices ([`MatrixRole`]s), and the formats blocks found in a file are read with (the
/// crate's own, [`QuantType::format`], plus any given here, which take precedence by name).
#[derive(Clone, Debug, Default)]
pub struct Quantization {
    format: Option<QuantFormat>,
    roles: Vec<MatrixRole>,
    readers: Vec<QuantFormat>,
}

impl Quantization {
    /// No quantizing at load; blocks in files are read with the crate's formats.
    pub fn none() -> Quantization {
        Quantization::default()
    }

    /// Quantizing the matrices of [`QUANTIZED_BY_DEFAULT`] to `format`.
    pub fn to(format: QuantFormat) -> Quantization {
        Quantization {
            format: Some(format),
            roles: QUANTIZED_BY_DEFAULT.to_vec(),
            readers: Vec::new(),
        }
    }

    /// The same, quantizing the matrices of `roles` instead.
    pub fn with_roles(mut self, roles: &[MatrixRole]) -> Quantization {
        self.roles = roles.to_vec();
        self
    }

    /// The same, reading blocks named `format.name()` in a file with `format`.
    pub fn reading(mut self, format: QuantFormat) -> Quantization {
        self.readers.push(format);
        self
    }

    /// The format matrices are quantized to.
    pub fn format(&self) -> Option<QuantFormat> {
        self.format
    }

    /// The format a matrix of `role` with rows of `cols` values is quantized to: the format,
    /// or where its rows do not split into the format's blocks the format's fallback
    /// ([`QuantFormat::for_width`]: as llama.cpp, Q4_K → Q5_0, Q5_K → Q5_1, Q6_K → Q8_0 for
    /// rows that are whole 32-value blocks but not whole 256-value ones); `None` if this role
    /// is kept as stored or the rows do not split into either format's blocks.
    pub fn target(&self, role: MatrixRole, cols: usize) -> Option<QuantFormat> {
        self.format
            .filter(|_| self.roles.contains(&role) && cols > 0)
            .and_then(|f| f.for_width(cols))
    }

    /// The format the checkpoint tensor `name` of shape `shape` is quantized to (see
    /// [`MatrixRole::of_tensor`]): what `convert --quantize` stores, the same matrices a load
    /// with this quantization quantizes (bar the low-rank factors, which are stored
    /// transposed and so are never quantized in a file).
    pub fn tensor_target(&self, name: &str, shape: &[usize]) -> Option<QuantFormat> {
        let role = MatrixRole::of_tensor(name)?;
        match shape {
            [rows, cols] if *rows > 0 => self.target(role, *cols),
            _ => None,
        }
    }

    /// The format that reads blocks named `name`.
    ///
    /// # Errors
    /// Why there is none (an unknown name, or a format this build does not implement).
    pub fn reader(&self, name: &str) -> std::result::Result<QuantFormat, String> {
        if let Some(f) = self.readers.iter().find(|f| f.name() == name) {
            return Ok(*f);
        }
        Ok(name.parse::<QuantType>()?.format())
    }
}

/// A block-quantized matrix's bytes seen in place in a file (see
/// [`TensorSource::blocks`](super::TensorSource::blocks)).
#[derive(Clone, Debug)]
pub struct RawBlocks {
    /// The format's name as the crate writes it (`q8_0`, ...).
    pub format: String,
    /// The shape of the values, outermost axis first (`[out, in]` for a matrix).
    pub shape: Vec<usize>,
    /// The blocks, row-major.
    pub bytes: SharedBytes,
}

impl RawBlocks {
    /// The values decoded to f32 with `format` (which must be the blocks' format).
    ///
    /// # Errors
    /// [`Error::Blocks`] naming `name` if the bytes are not the shape's blocks or a block is bad.
    pub fn decode(&self, name: &str, format: QuantFormat) -> Result<Tensor> {
        let bad = |what: String| Error::Blocks {
            name: name.to_string(),
            what,
        };
        let cols = self.shape.last().copied().unwrap_or(1);
        let rows = self.shape.iter().rev().skip(1).product::<usize>();
        let m = format
            .build(
                crate::storage::quant::QuantSource::Blocks(&self.bytes),
                rows,
                cols,
            )
            .map_err(bad)?;
        let values = format.decode(self.bytes.as_slice()).map_err(bad)?;
        drop(m);
        let a = ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&self.shape), values)
            .map_err(|e| bad(e.to_string()))?;
        Ok(Tensor::F32(a))
    }
}

/// The blocks of `name` as the crate's safetensors layout stores them: the logical shape of a
/// `U8` tensor `[rows, row_bytes]` in `format` (a [`QuantType`] name).
pub(crate) fn logical_shape(
    name: &str,
    format: &str,
    stored: &[usize],
) -> std::result::Result<Vec<usize>, String> {
    let q: QuantType = format
        .parse()
        .map_err(|e| format!("tensor `{name}`: {e}"))?;
    match stored {
        [rows, row_bytes] if row_bytes % q.block_bytes() == 0 => {
            Ok(vec![*rows, row_bytes / q.block_bytes() * q.block_values()])
        }
        _ => Err(format!(
            "tensor `{name}`: U8 shape {stored:?} is not rows of whole {}-byte {q} blocks",
            q.block_bytes()
        )),
    }
}

/// Writes `source`'s tensors to `path` (atomically) as a safetensors file in the crate's
/// quantized layout (see [`QUANT_METADATA_PREFIX`]): each tensor `name` for which `quantize`
/// gives a format is quantized to it from its f32 values (or copied as stored if it already
/// holds blocks), every other f32/f16/bf16 tensor is copied as stored (or converted to
/// `dtype`). Tensors in other types are left out and returned by name.
///
/// # Errors
/// [`Error::Io`] for the output; the errors of reading a tensor; [`Error::Blocks`] if a format
/// does not fit a tensor.
pub fn write_quantized_safetensors(
    source: &dyn TensorSource,
    path: impl AsRef<Path>,
    dtype: Option<DType>,
    quantize: &dyn Fn(&str, &[usize]) -> Option<QuantFormat>,
) -> Result<Vec<String>> {
    use safetensors::tensor::{Dtype, TensorView};
    let mut names = source.names();
    names.sort_unstable();
    let mut skipped = Vec::new();
    let mut data: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    let mut meta = BTreeMap::new();
    for name in names {
        let shape = source.shape(name).unwrap_or_default();
        let bad = |what: String| Error::Blocks {
            name: name.to_string(),
            what,
        };
        if let Some(b) = source.blocks(name) {
            let rows: usize = b.shape.iter().rev().skip(1).product();
            let row_bytes = b.bytes.len() / rows.max(1);
            meta.insert(format!("{QUANT_METADATA_PREFIX}{name}"), b.format.clone());
            data.push((
                name.to_string(),
                Dtype::U8,
                vec![rows, row_bytes],
                b.bytes.as_slice().to_vec(),
            ));
            continue;
        }
        let stored = match source.dtype(name) {
            Some(Ok(d)) => d,
            _ => {
                skipped.push(name.to_string());
                continue;
            }
        };
        if let Some(format) = quantize(name, &shape) {
            let values = source.tensor(name)?.to_f32();
            let values = values.as_standard_layout();
            let values = values.as_slice().expect("standard layout");
            let cols = shape.last().copied().unwrap_or(1);
            let rows = values.len() / cols.max(1);
            let bytes = format.encode(values).map_err(bad)?;
            meta.insert(
                format!("{QUANT_METADATA_PREFIX}{name}"),
                format.name().to_string(),
            );
            data.push((
                name.to_string(),
                Dtype::U8,
                vec![rows, bytes.len() / rows.max(1)],
                bytes,
            ));
            continue;
        }
        let t = source.tensor(name)?.to_dtype(dtype.unwrap_or(stored));
        let (dt, bytes) = match &t {
            Tensor::F32(a) => (Dtype::F32, a.iter().flat_map(|v| v.to_le_bytes()).collect()),
            Tensor::F16(a) => (Dtype::F16, a.iter().flat_map(|v| v.to_le_bytes()).collect()),
            Tensor::Bf16(a) => (
                Dtype::BF16,
                a.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ),
        };
        data.push((name.to_string(), dt, t.shape().to_vec(), bytes));
    }
    let views = data
        .iter()
        .map(|(n, dt, shape, bytes)| {
            TensorView::new(*dt, shape.clone(), bytes)
                .map(|v| (n.clone(), v))
                .map_err(|e| Error::Blocks {
                    name: n.clone(),
                    what: e.to_string(),
                })
        })
        .collect::<Result<Vec<_>>>()?;
    let meta: std::collections::HashMap<String, String> = meta.into_iter().collect();
    let bytes =
        safetensors::serialize(views, Some(meta)).map_err(|e| Error::Format(e.to_string()))?;
    crate::save::write_atomic(path, &bytes)?;
    Ok(skipped)
}
