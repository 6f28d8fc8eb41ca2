//! Named tensors from a checkpoint: the only code that turns checkpoint keys into arrays.
//!
//! A [`TensorSource`] lists tensor names and hands out tensors; [`Scope`] is a name-scoped view
//! (`scope.pp("blocks.3").pp("att")`) whose getters check shapes and name the full tensor path
//! in every error. Each loadable piece also lists the tensors it reads as [`TensorSpec`]s, so a
//! loader can check a whole checkpoint's names, shapes and types with [`Scope::check`] from the
//! header alone, before it reads any tensor data.

mod checkpoint;
mod gguf;
mod hf;
mod memory;
mod names;
mod pickle;
mod pth;
mod quant;
mod safetensors;
mod table;

pub use self::checkpoint::{Checkpoint, Format};
pub use self::gguf::{GgmlType, GgufFile, GgufRwkv, GgufTensorInfo, GgufValue};
pub use self::hf::{open_folder, ShardedSafeTensors};
pub use self::memory::TensorMap;
pub use self::names::{blinkdl_view, detect_scheme, NameScheme, Renamed};
pub use self::pth::PthFile;
pub use self::quant::{
    write_quantized_safetensors, MatrixRole, Quantization, RawBlocks, QUANTIZED_BY_DEFAULT,
    QUANT_METADATA_PREFIX,
};
pub use self::safetensors::SafeTensorsFile;
pub use self::table::{element_size, RawTensor, TableEntry, TensorTable};

use crate::error::{Error, Result};
use crate::ops::gemm::Transpose;
use crate::ops::kernels::Dot;
use crate::ops::{aligned, Element, Linear};
use crate::storage::quant::{QuantFormat, QuantSource};
use crate::storage::Dense;
use half::{bf16, f16};
use ndarray::{Array1, Array2, ArrayD, IxDyn};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Storage type of weight matrices.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DType {
    /// 32-bit floats.
    F32,
    /// IEEE half precision.
    F16,
    /// bfloat16.
    Bf16,
}

impl std::str::FromStr for DType {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f32" => Ok(DType::F32),
            "f16" => Ok(DType::F16),
            "bf16" => Ok(DType::Bf16),
            _ => Err(Error::Dtype {
                name: "(requested storage type)".into(),
                dtype: s.into(),
            }),
        }
    }
}

/// A tensor as stored in a checkpoint, in its storage type.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Tensor {
    /// 32-bit floats.
    F32(ArrayD<f32>),
    /// IEEE half precision.
    F16(ArrayD<f16>),
    /// bfloat16.
    Bf16(ArrayD<bf16>),
}

impl Tensor {
    /// The tensor's shape.
    pub fn shape(&self) -> &[usize] {
        match self {
            Tensor::F32(a) => a.shape(),
            Tensor::F16(a) => a.shape(),
            Tensor::Bf16(a) => a.shape(),
        }
    }

    /// The storage type.
    pub fn dtype(&self) -> DType {
        match self {
            Tensor::F32(_) => DType::F32,
            Tensor::F16(_) => DType::F16,
            Tensor::Bf16(_) => DType::Bf16,
        }
    }

    /// The tensor stored as `dtype` (rounded to nearest when narrowing).
    pub fn to_dtype(self, dtype: DType) -> Tensor {
        if self.dtype() == dtype {
            return self;
        }
        let wide = self.into_f32();
        match dtype {
            DType::F32 => Tensor::F32(wide),
            DType::F16 => Tensor::F16(converted(&wide, f16::from_f32)),
            DType::Bf16 => Tensor::Bf16(converted(&wide, bf16::from_f32)),
        }
    }

    /// The values widened to f32.
    pub fn to_f32(&self) -> ArrayD<f32> {
        match self {
            Tensor::F32(a) => a.clone(),
            Tensor::F16(a) => converted(a, f32::from),
            Tensor::Bf16(a) => converted(a, f32::from),
        }
    }

    fn into_f32(self) -> ArrayD<f32> {
        match self {
            Tensor::F32(a) => a,
            other => other.to_f32(),
        }
    }
}

/// `a` with `convert` applied to every element, starting on a cache line.
fn converted<S: Copy, T: Copy + Default>(a: &ArrayD<S>, convert: fn(S) -> T) -> ArrayD<T> {
    aligned::collect(a.len(), a.iter().map(|&v| convert(v)))
        .into_shape_with_order(a.raw_dim())
        .expect("as many elements as the tensor")
}

/// Anything that holds named tensors: a safetensors file, or a map built in memory.
pub trait TensorSource: Send + Sync {
    /// Every tensor name, in no particular order.
    fn names(&self) -> Vec<&str>;
    /// The stored shape of `name`, or `None` if there is no such tensor.
    fn shape(&self, name: &str) -> Option<Vec<usize>>;
    /// The stored type of `name` without reading it: `Ok` for the types the crate reads,
    /// `Err` with the stored type written out (e.g. `I32`) for any other, `None` if there is
    /// no such tensor.
    fn dtype(&self, name: &str) -> Option<std::result::Result<DType, String>>;
    /// The tensor `name` in its storage type.
    ///
    /// # Errors
    /// [`Error::MissingTensor`] if absent, [`Error::Dtype`] if stored in an unsupported type.
    fn tensor(&self, name: &str) -> Result<Tensor>;
    /// The tensor `name` seen in place in a file's bytes (row-major, little-endian), for a
    /// source that holds it so; `None` if it has no such tensor, stores it in an unsupported
    /// type, or builds it (a renamed or transformed tensor). Loaders use it to keep a matrix in
    /// the file's memory map instead of copying it.
    fn raw(&self, name: &str) -> Option<RawTensor> {
        let _ = name;
        None
    }
    /// The tensor `name` as blocks of a quantized format seen in place in a file's bytes, for
    /// a source that holds it so (a GGUF `Q8_0` tensor, a quantized tensor of the crate's
    /// safetensors layout); `None` otherwise. Such a tensor's [`TensorSource::dtype`] is `Err`
    /// (the container's name for the type) and [`TensorSource::tensor`] decodes it to f32 with
    /// the crate's format, when it has it.
    fn blocks(&self, name: &str) -> Option<RawBlocks> {
        let _ = name;
        None
    }
}

/// A tensor a loader reads: its full name and the shape it must have, compared as
/// [`Scope::tensor`] compares (size-1 axes dropped from both). Each loadable piece lists its
/// tensors with a `tensor_specs` function beside its `load`, so that a whole checkpoint can be
/// checked by [`Scope::check`] before any tensor data is read.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TensorSpec {
    /// The full tensor name (e.g. `blocks.3.att.key.weight`).
    pub name: String,
    /// The expected shape.
    pub shape: Vec<usize>,
}

impl TensorSpec {
    /// Whether a tensor stored with shape `found` has this spec's shape by the rule of
    /// [`Scope::tensor`].
    pub fn fits(&self, found: &[usize]) -> bool {
        squeezed(found) == squeezed(&self.shape)
    }
}

/// A view of a [`TensorSource`] under a name prefix, with shape-checked getters.
#[derive(Clone)]
pub struct Scope<'a> {
    source: &'a dyn TensorSource,
    prefix: String,
    matrices: Option<DType>,
    quant: Option<&'a Quantization>,
    tally: Option<&'a AtomicUsize>,
}

impl std::fmt::Debug for Scope<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scope")
            .field("prefix", &self.prefix)
            .field("matrices", &self.matrices)
            .field("quant", &self.quant)
            .finish_non_exhaustive()
    }
}

/// Drops the size-1 axes, as the official loader's `squeeze` does.
fn squeezed(shape: &[usize]) -> Vec<usize> {
    shape.iter().copied().filter(|&d| d != 1).collect()
}

impl<'a> Scope<'a> {
    /// The root scope of `source`.
    pub fn new(source: &'a dyn TensorSource) -> Self {
        Scope {
            source,
            prefix: String::new(),
            matrices: None,
            quant: None,
            tally: None,
        }
    }

    /// This scope with matrices quantized at load and blocks in the file read as `quant`
    /// says (without it: nothing quantized, blocks read with the crate's formats). A matrix
    /// the file holds in blocks is used as it is, whatever [`Scope::with_matrix_dtype`] asks.
    pub fn with_quantization(mut self, quant: &'a Quantization) -> Self {
        self.quant = Some(quant);
        self
    }

    /// This scope with the storage bytes of every matrix built by [`Scope::linear`] and the
    /// low-rank getters added to `tally` (what a model's blocks read per token).
    pub fn with_tally(mut self, tally: &'a AtomicUsize) -> Self {
        self.tally = Some(tally);
        self
    }

    /// Adds `layers`' storage bytes to the tally, if there is one.
    fn count(&self, layers: &[Linear]) {
        if let Some(t) = self.tally {
            let n: usize = layers.iter().map(Linear::size_bytes).sum();
            t.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// The format blocks named `name` are read with.
    fn reader(&self, path: &str, name: &str) -> Result<QuantFormat> {
        let none = Quantization::none();
        self.quant
            .unwrap_or(&none)
            .reader(name)
            .map_err(|what| Error::Blocks {
                name: path.to_string(),
                what,
            })
    }

    /// The format a matrix of `role` with rows of `cols` values is quantized to at load.
    fn target(&self, role: MatrixRole, cols: usize) -> Option<QuantFormat> {
        self.quant.and_then(|q| q.target(role, cols))
    }

    /// This scope with every matrix read by [`Scope::linear`] converted to `dtype` (`None`:
    /// kept as stored). Vectors and small matrices stay f32 whatever the setting.
    pub fn with_matrix_dtype(mut self, dtype: Option<DType>) -> Self {
        self.matrices = dtype;
        self
    }

    /// The scope one level down: `pp("att")` turns `blocks.0` into `blocks.0.att`.
    pub fn pp(&self, name: &str) -> Scope<'a> {
        Scope {
            source: self.source,
            prefix: self.path(name),
            matrices: self.matrices,
            quant: self.quant,
            tally: self.tally,
        }
    }

    /// The full tensor name of `name` in this scope.
    pub fn path(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{}", self.prefix, name)
        }
    }

    /// Whether the tensor `name` exists in this scope.
    pub fn contains(&self, name: &str) -> bool {
        self.source.shape(&self.path(name)).is_some()
    }

    /// The stored shape of `name`.
    ///
    /// # Errors
    /// [`Error::MissingTensor`] with the full path.
    pub fn shape(&self, name: &str) -> Result<Vec<usize>> {
        let path = self.path(name);
        self.source.shape(&path).ok_or(Error::MissingTensor(path))
    }

    /// The spec of the tensor `name` of this scope with shape `shape` (see [`TensorSpec`]).
    pub fn spec(&self, name: &str, shape: &[usize]) -> TensorSpec {
        TensorSpec {
            name: self.path(name),
            shape: shape.to_vec(),
        }
    }

    /// Checks every tensor of `specs` from the header alone, in order: present, of the spec's
    /// shape by the rule of [`Scope::tensor`], stored as f32, f16 or bf16. No tensor data is
    /// read. The specs carry full names (as [`Scope::spec`] makes them), so a list gathered from
    /// several scopes is checked at once from any scope of the same source.
    ///
    /// # Errors
    /// The first failure: [`Error::MissingTensor`], [`Error::Shape`] or [`Error::Dtype`], naming
    /// the tensor.
    pub fn check(&self, specs: &[TensorSpec]) -> Result<()> {
        specs
            .iter()
            .try_for_each(|spec| self.check_path(&spec.name, &spec.shape))
    }

    /// The checks of [`Scope::check`] for the tensor at the full path `path`.
    fn check_path(&self, path: &str, expected: &[usize]) -> Result<()> {
        let missing = || Error::MissingTensor(path.to_string());
        let found = self.source.shape(path).ok_or_else(missing)?;
        if squeezed(&found) != squeezed(expected) {
            return Err(Error::Shape {
                name: path.to_string(),
                expected: format!("{expected:?}"),
                found,
            });
        }
        match self.source.dtype(path).ok_or_else(missing)? {
            Ok(_) => Ok(()),
            Err(_) if self.source.blocks(path).is_some() => Ok(()),
            Err(dtype) => Err(Error::Dtype {
                name: path.to_string(),
                dtype,
            }),
        }
    }

    /// The tensor `name`, checked to have `expected` shape once size-1 axes are dropped from both
    /// (so `[1, 1, C]` and `[C]` are the same shape here, as they are to the official loader)
    /// and to be stored in a type the crate reads, before its data is read.
    ///
    /// # Errors
    /// As [`Scope::check`].
    pub fn tensor(&self, name: &str, expected: &[usize]) -> Result<Tensor> {
        let path = self.path(name);
        self.check_path(&path, expected)?;
        self.source.tensor(&path)
    }

    /// The tensor `name` widened to f32 and reshaped to `expected` (after the shape check of
    /// [`Scope::tensor`]).
    pub fn f32(&self, name: &str, expected: &[usize]) -> Result<ArrayD<f32>> {
        let a = self.tensor(name, expected)?.into_f32();
        let a = a.as_standard_layout().into_owned();
        Ok(a.into_shape_with_order(IxDyn(expected))
            .expect("element count checked by the shape test"))
    }

    /// A vector of length `n` (stored as `[n]`, `[1, 1, n]`, ...), in f32.
    pub fn vector(&self, name: &str, n: usize) -> Result<Array1<f32>> {
        Ok(self
            .f32(name, &[n])?
            .into_dimensionality()
            .expect("reshaped to one axis"))
    }

    /// A `[rows, cols]` matrix in f32.
    pub fn matrix(&self, name: &str, rows: usize, cols: usize) -> Result<Array2<f32>> {
        Ok(self
            .f32(name, &[rows, cols])?
            .into_dimensionality()
            .expect("reshaped to two axes"))
    }

    /// A low-rank matrix stored `[in, out]` and used as `x M` (RWKV-6/7's `*_w1`, `*_w2`), as
    /// a layer of its transpose `[out, in]` (so `M x` reads whole rows), kept in its storage
    /// type like [`Scope::linear`].
    pub fn low_rank(&self, name: &str, inp: usize, out: usize) -> Result<Linear> {
        let mut layers = self.low_rank_stack(name, 1, inp, out)?;
        Ok(layers.pop().expect("one layer"))
    }

    /// `count` low-rank matrices stored stacked as `[count, in, out]` (RWKV-6's
    /// `time_maa_w2`), each as [`Scope::low_rank`] makes it.
    pub fn low_rank_stack(
        &self,
        name: &str,
        count: usize,
        inp: usize,
        out: usize,
    ) -> Result<Vec<Linear>> {
        fn transposes<T: Element + Dot + Transpose>(
            a: ArrayD<T>,
            shape: (usize, usize, usize),
        ) -> Vec<Linear> {
            let a = a.as_standard_layout().into_owned();
            let a = a
                .into_shape_with_order(shape)
                .expect("element count checked by the shape test");
            a.outer_iter()
                .map(|m| Linear::new(Dense::new(aligned::to_matrix(m.t()))))
                .collect()
        }
        // One matrix is named by its own shape in errors, a stack by the stacked one.
        let stacked = [count, inp, out];
        let mut t = self.tensor(name, &stacked[usize::from(count == 1)..])?;
        let shape = (count, inp, out);
        if let Some(format) = self.target(MatrixRole::LowRank, inp) {
            // Each transpose `[out, in]` quantized from its f32 values.
            let path = self.path(name);
            let parts = transposes(t.into_f32(), shape);
            let layers = parts
                .iter()
                .map(|l| quantized(&path, format, &l.to_f32()))
                .collect::<Result<Vec<_>>>()?;
            self.count(&layers);
            return Ok(layers);
        }
        if let Some(dtype) = self.matrices {
            t = t.to_dtype(dtype);
        }
        let layers = match t {
            Tensor::F32(a) => transposes(a, shape),
            Tensor::F16(a) => transposes(a, shape),
            Tensor::Bf16(a) => transposes(a, shape),
        };
        self.count(&layers);
        Ok(layers)
    }

    /// A linear layer stored PyTorch style as `[out, in]` (or with extra size-1 axes, by the
    /// rule of [`Scope::tensor`]), kept in its storage type (or the scope's matrix type, see
    /// [`Scope::with_matrix_dtype`]). A matrix the source holds in place in a file's bytes
    /// ([`TensorSource::raw`]) in the type wanted is used there, not copied; so is a matrix
    /// stored in blocks ([`TensorSource::blocks`]), every block checked. A matrix whose role
    /// ([`MatrixRole::of_linear`]) the scope's [`Quantization`] quantizes is quantized from its
    /// f32 values, unless its rows do not split into whole blocks (then it is kept as above).
    ///
    /// # Errors
    /// Those of [`Scope::check`]; [`Error::Blocks`] naming the tensor for blocks in an unknown
    /// or unavailable format, a byte count that is not the matrix's blocks, or a bad block.
    pub fn linear(&self, name: &str, out: usize, inp: usize) -> Result<Linear> {
        let layer = self.linear_uncounted(name, out, inp)?;
        self.count(std::slice::from_ref(&layer));
        Ok(layer)
    }

    /// [`Scope::linear`] without adding to the tally.
    fn linear_uncounted(&self, name: &str, out: usize, inp: usize) -> Result<Linear> {
        let path = self.path(name);
        self.check_path(&path, &[out, inp])?;
        if let Some(blocks) = self.source.blocks(&path) {
            let format = self.reader(&path, &blocks.format)?;
            let m = format
                .build(QuantSource::Blocks(&blocks.bytes), out, inp)
                .map_err(|what| Error::Blocks {
                    name: path.clone(),
                    what: format!("{} blocks: {what}", blocks.format),
                })?;
            return Ok(Linear::shared(m));
        }
        if let Some(format) = self.target(MatrixRole::of_linear(&path), inp) {
            let a = into_matrix(self.source.tensor(&path)?.into_f32(), (out, inp));
            return quantized(&path, format, &a);
        }
        if let Some(raw) = self.source.raw(&path) {
            if self.matrices.is_none_or(|d| d == raw.dtype) {
                if let Some(layer) = mapped(raw, out, inp) {
                    return Ok(layer);
                }
            }
        }
        let mut t = self.source.tensor(&path)?;
        if let Some(dtype) = self.matrices {
            t = t.to_dtype(dtype);
        }
        let shape = (out, inp);
        Ok(match t {
            Tensor::F32(a) => Linear::new(Dense::new(into_matrix(a, shape))),
            Tensor::F16(a) => Linear::new(Dense::new(into_matrix(a, shape))),
            Tensor::Bf16(a) => Linear::new(Dense::new(into_matrix(a, shape))),
        })
    }
}

/// A layer over `a` quantized to `format` (`path` names the matrix in errors).
fn quantized(path: &str, format: QuantFormat, a: &Array2<f32>) -> Result<Linear> {
    let (rows, cols) = a.dim();
    let a = a.as_standard_layout();
    let values = a.as_slice().expect("standard layout");
    let m = format
        .build(QuantSource::Values(values), rows, cols)
        .map_err(|what| Error::Blocks {
            name: path.to_string(),
            what,
        })?;
    Ok(Linear::shared(m))
}

/// A layer over the `[out, inp]` values of `raw` in place, if they are aligned for their type.
fn mapped(raw: RawTensor, out: usize, inp: usize) -> Option<Linear> {
    Some(match raw.dtype {
        DType::F32 => Linear::new(Dense::<f32>::mapped(raw.bytes, out, inp)?),
        DType::F16 => Linear::new(Dense::<f16>::mapped(raw.bytes, out, inp)?),
        DType::Bf16 => Linear::new(Dense::<bf16>::mapped(raw.bytes, out, inp)?),
    })
}

/// An `ArrayD` of `rows · cols` elements as a standard-layout `[rows, cols]` matrix that starts
/// on a cache line (no copy when it already is one, as the loaders make them).
fn into_matrix<T: Copy + Default>(a: ArrayD<T>, (rows, cols): (usize, usize)) -> Array2<T> {
    let a = if a.shape() == [rows, cols] {
        a.into_dimensionality().expect("two axes")
    } else {
        a.as_standard_layout()
            .into_owned()
            .into_shape_with_order((rows, cols))
            .expect("element count checked by the shape test")
    };
    aligned::matrix(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Where the values of a dense layer start.
    fn start(l: &Linear) -> *const u8 {
        let m: &dyn std::any::Any = l.matrix().as_any();
        if let Some(d) = m.downcast_ref::<Dense<f32>>() {
            d.values().as_ptr().cast()
        } else if let Some(d) = m.downcast_ref::<Dense<f16>>() {
            d.values().as_ptr().cast()
        } else {
            let d = m.downcast_ref::<Dense<bf16>>().expect("a dense layer");
            d.values().as_ptr().cast()
        }
    }

    /// A matrix of a file kept in its stored type is used in place from the file's memory map;
    /// every matrix a loader builds (from memory, converted, transposed) starts on a cache
    /// line; each keeps its values.
    #[test]
    fn loaded_matrices_are_mapped_or_start_on_a_cache_line() {
        let values = |n: usize| (0..n).map(|i| (i % 13) as f32 / 4.0).collect::<Vec<f32>>();
        let dense = Array2::from_shape_vec((6, 5), values(30)).unwrap();
        let stack = ArrayD::from_shape_vec(IxDyn(&[3, 5, 2]), values(30)).unwrap();
        let mut map = TensorMap::new();
        for (suffix, dtype) in [("32", DType::F32), ("16", DType::F16), ("b16", DType::Bf16)] {
            let t = Tensor::F32(dense.clone().into_dyn()).to_dtype(dtype);
            map.insert(format!("w{suffix}"), t);
            map.insert(
                format!("s{suffix}"),
                Tensor::F32(stack.clone()).to_dtype(dtype),
            );
        }
        let path = std::env::temp_dir().join(format!("tokenshift-align-{}.st", std::process::id()));
        map.save(&path).unwrap();
        let file = SafeTensorsFile::open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        let sources: [(&dyn TensorSource, bool); 2] = [(&map, false), (&file, true)];
        for (source, is_file) in sources {
            for convert in [None, Some(DType::F32), Some(DType::F16), Some(DType::Bf16)] {
                let scope = Scope::new(source).with_matrix_dtype(convert);
                for (suffix, stored) in
                    [("32", DType::F32), ("16", DType::F16), ("b16", DType::Bf16)]
                {
                    let w = scope.linear(&format!("w{suffix}"), 6, 5).unwrap();
                    let in_place = is_file && convert.is_none_or(|d| d == stored);
                    assert_eq!(w.matrix().is_mapped(), in_place, "w{suffix} {convert:?}");
                    assert!(
                        in_place || aligned::is_aligned(start(&w)),
                        "w{suffix} {convert:?}"
                    );
                    assert_eq!(w.to_f32(), dense);
                    let parts = scope
                        .low_rank_stack(&format!("s{suffix}"), 3, 5, 2)
                        .unwrap();
                    for (k, part) in parts.iter().enumerate() {
                        assert!(
                            aligned::is_aligned(start(part)),
                            "s{suffix}[{k}] {convert:?}"
                        );
                        let want = stack.index_axis(ndarray::Axis(0), k).t().to_owned();
                        assert_eq!(part.to_f32().into_dyn(), want);
                    }
                }
            }
        }
    }
}
