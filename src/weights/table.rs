//! Tensors laid out in one file's bytes: what every container reader (safetensors, PyTorch
//! `.pth`, GGUF) produces once it has parsed its header, so that reading a tensor, checking it
//! and using it in place from a memory map is written once.

use super::quant::RawBlocks;
use super::{DType, Tensor, TensorSource};
use crate::error::{Error, Result};
use crate::ops::aligned;
use crate::storage::SharedBytes;
use half::{bf16, f16};
use ndarray::{ArrayD, IxDyn};
use std::collections::HashMap;
use std::ops::Range;

/// Where one tensor's values are in a file: row-major, little-endian, contiguous.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableEntry {
    /// The stored type: `Ok` for the types the crate reads, `Err` with the container's own name
    /// for the type (e.g. `I64`, `Q4_K`) for any other.
    pub dtype: std::result::Result<DType, String>,
    /// The shape, outermost axis first.
    pub shape: Vec<usize>,
    /// The byte range of the values within the file.
    pub range: Range<usize>,
}

/// A tensor's values seen in place in a file's bytes (see [`TensorSource::raw`]).
#[derive(Clone, Debug)]
pub struct RawTensor {
    /// The stored type.
    pub dtype: DType,
    /// The shape, outermost axis first.
    pub shape: Vec<usize>,
    /// The values, row-major, little-endian.
    pub bytes: SharedBytes,
}

impl RawTensor {
    /// The values decoded into an owned tensor that starts on a cache line.
    pub fn decode(&self) -> Tensor {
        let b = self.bytes.as_slice();
        let shape = IxDyn(&self.shape);
        match self.dtype {
            DType::F32 => Tensor::F32(decoded(b, shape, f32::from_le_bytes)),
            DType::F16 => Tensor::F16(decoded(b, shape, |v| f16::from_bits(u16::from_le_bytes(v)))),
            DType::Bf16 => Tensor::Bf16(decoded(b, shape, |v| {
                bf16::from_bits(u16::from_le_bytes(v))
            })),
        }
    }
}

/// `bytes` decoded `B` at a time by `from_le` into an array of `shape`.
fn decoded<T: Copy + Default, const B: usize>(
    bytes: &[u8],
    shape: IxDyn,
    from_le: fn([u8; B]) -> T,
) -> ArrayD<T> {
    let values = bytes
        .chunks_exact(B)
        .map(|c| from_le(c.try_into().expect("chunks_exact yields B bytes")));
    aligned::collect(bytes.len() / B, values)
        .into_shape_with_order(shape)
        .expect("the table checked the byte count against the shape")
}

/// Bytes per element of `dtype`.
pub fn element_size(dtype: DType) -> usize {
    match dtype {
        DType::F32 => 4,
        DType::F16 | DType::Bf16 => 2,
    }
}

/// Whether an array of `shape` can exist: the product of its non-zero axes fits an `isize`
/// (an empty tensor may still name axes too long to index).
fn indexable(shape: &[usize]) -> bool {
    shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d.max(1)))
        .is_some_and(|n| n <= isize::MAX as usize)
}

/// Implements [`TensorSource`] for a container type by handing every call to its `table`
/// field (a [`TensorTable`]).
macro_rules! tensor_source_via_table {
    ($t:ty) => {
        impl $crate::weights::TensorSource for $t {
            fn names(&self) -> Vec<&str> {
                self.table.names()
            }

            fn shape(&self, name: &str) -> Option<Vec<usize>> {
                self.table.shape(name)
            }

            fn dtype(
                &self,
                name: &str,
            ) -> Option<std::result::Result<$crate::weights::DType, String>> {
                self.table.dtype(name)
            }

            fn tensor(&self, name: &str) -> $crate::error::Result<$crate::weights::Tensor> {
                self.table.tensor(name)
            }

            fn raw(&self, name: &str) -> Option<$crate::weights::RawTensor> {
                self.table.raw(name)
            }

            fn blocks(&self, name: &str) -> Option<$crate::weights::RawBlocks> {
                self.table.blocks(name)
            }
        }
    };
}
pub(crate) use tensor_source_via_table;

/// Named tensors in the bytes of one file.
#[derive(Clone, Debug)]
pub struct TensorTable {
    bytes: SharedBytes,
    entries: HashMap<String, TableEntry>,
    order: Vec<String>,
    /// The entries that hold block-quantized values: name → (format name, shape of the values).
    blocks: HashMap<String, (String, Vec<usize>)>,
}

impl TensorTable {
    /// A table over `bytes` (a whole file) with `entries` in the file's own order. Each entry of
    /// a readable type must lie within the bytes and hold exactly its shape's elements; names
    /// must be distinct.
    ///
    /// # Errors
    /// [`Error::Format`]-style messages are the caller's to wrap: the returned `String` names
    /// the tensor and what is wrong.
    pub fn new(
        bytes: SharedBytes,
        entries: Vec<(String, TableEntry)>,
    ) -> std::result::Result<Self, String> {
        let mut map = HashMap::with_capacity(entries.len());
        let mut order = Vec::with_capacity(entries.len());
        for (name, entry) in entries {
            if entry.range.start > entry.range.end || entry.range.end > bytes.len() {
                return Err(format!(
                    "tensor `{name}`: bytes {}..{} lie outside a file of {} bytes",
                    entry.range.start,
                    entry.range.end,
                    bytes.len()
                ));
            }
            if let Ok(dtype) = entry.dtype {
                let size = entry
                    .shape
                    .iter()
                    .try_fold(element_size(dtype), |acc, &d| acc.checked_mul(d));
                if size != Some(entry.range.len()) {
                    return Err(format!(
                        "tensor `{name}`: {} bytes do not hold {dtype:?} {:?}",
                        entry.range.len(),
                        entry.shape
                    ));
                }
            }
            if map.contains_key(&name) {
                return Err(format!("tensor `{name}` appears twice"));
            }
            order.push(name.clone());
            map.insert(name, entry);
        }
        Ok(TensorTable {
            bytes,
            entries: map,
            order,
            blocks: HashMap::new(),
        })
    }

    /// The table with the entries named in `blocks` marked as block-quantized: `(name, format,
    /// shape)`, the format as the crate names it (`q8_0`, ...) and the shape of the values
    /// (outermost axis first), which replaces the entry's. Such an entry keeps its `Err` type
    /// (the container's name for it) and is handed out by [`TensorSource::blocks`]; its bytes
    /// are checked against the shape when a format reads them.
    ///
    /// # Errors
    /// A message naming a tensor that is not in the table or has a type the crate reads.
    pub fn with_blocks(
        mut self,
        blocks: Vec<(String, String, Vec<usize>)>,
    ) -> std::result::Result<Self, String> {
        for (name, format, shape) in blocks {
            match self.entries.get(&name) {
                Some(TableEntry { dtype: Err(_), .. }) => {}
                Some(_) => return Err(format!("tensor `{name}` is not stored in blocks")),
                None => return Err(format!("no tensor `{name}` to store in {format} blocks")),
            }
            self.blocks.insert(name, (format, shape));
        }
        Ok(self)
    }

    /// The file's bytes.
    pub fn bytes(&self) -> &SharedBytes {
        &self.bytes
    }

    /// The entry of `name`.
    pub fn entry(&self, name: &str) -> Option<&TableEntry> {
        self.entries.get(name)
    }

    /// Tensor names in the file's order.
    pub fn ordered_names(&self) -> &[String] {
        &self.order
    }
}

impl TensorSource for TensorTable {
    fn names(&self) -> Vec<&str> {
        self.order.iter().map(String::as_str).collect()
    }

    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        if let Some((_, shape)) = self.blocks.get(name) {
            return Some(shape.clone());
        }
        self.entries.get(name).map(|e| e.shape.clone())
    }

    fn dtype(&self, name: &str) -> Option<std::result::Result<DType, String>> {
        self.entries.get(name).map(|e| e.dtype.clone())
    }

    fn tensor(&self, name: &str) -> Result<Tensor> {
        if let Some(raw) = self.raw(name) {
            return Ok(raw.decode());
        }
        if let Some(blocks) = self.blocks(name) {
            // A block-quantized tensor read as values: decoded with the crate's format.
            let format = super::quant::Quantization::none()
                .reader(&blocks.format)
                .map_err(|what| Error::Blocks {
                    name: name.to_string(),
                    what,
                })?;
            return blocks.decode(name, format);
        }
        Err(match self.entries.get(name) {
            None => Error::MissingTensor(name.to_string()),
            Some(TableEntry { dtype: Err(d), .. }) => Error::Dtype {
                name: name.to_string(),
                dtype: d.clone(),
            },
            Some(e) => Error::Format(format!(
                "tensor `{name}`: shape {:?} has more elements than an array can index",
                e.shape
            )),
        })
    }

    fn raw(&self, name: &str) -> Option<RawTensor> {
        let e = self.entries.get(name)?;
        if !indexable(&e.shape) {
            return None;
        }
        Some(RawTensor {
            dtype: e.dtype.clone().ok()?,
            shape: e.shape.clone(),
            bytes: self.bytes.slice(e.range.clone()).expect("checked by new"),
        })
    }

    fn blocks(&self, name: &str) -> Option<RawBlocks> {
        let (format, shape) = self.blocks.get(name)?;
        let e = self.entries.get(name)?;
        Some(RawBlocks {
            format: format.clone(),
            shape: shape.clone(),
            bytes: self.bytes.slice(e.range.clone()).expect("checked by new"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(
        entries: Vec<(&str, TableEntry)>,
        len: usize,
    ) -> std::result::Result<TensorTable, String> {
        let bytes = SharedBytes::from_vec((0..len).map(|i| i as u8).collect());
        TensorTable::new(
            bytes,
            entries
                .into_iter()
                .map(|(n, e)| (n.to_string(), e))
                .collect(),
        )
    }

    fn entry(dtype: DType, shape: &[usize], range: Range<usize>) -> TableEntry {
        TableEntry {
            dtype: Ok(dtype),
            shape: shape.to_vec(),
            range,
        }
    }

    #[test]
    fn entries_are_checked_against_the_file() {
        assert!(table(vec![("a", entry(DType::F32, &[2, 2], 0..16))], 16).is_ok());
        let cases = [
            (vec![("a", entry(DType::F32, &[2, 2], 0..17))], "outside"),
            (
                vec![("a", entry(DType::F16, &[2, 2], 0..16))],
                "do not hold",
            ),
            (
                vec![("a", entry(DType::F32, &[usize::MAX, 2], 0..16))],
                "do not hold",
            ),
            (
                vec![
                    ("a", entry(DType::F16, &[2], 0..4)),
                    ("a", entry(DType::F16, &[2], 4..8)),
                ],
                "twice",
            ),
        ];
        for (entries, want) in cases {
            let err = table(entries, 16).unwrap_err();
            assert!(err.contains(want), "{err}");
        }
    }

    #[test]
    fn tensors_decode_little_endian() {
        let values = [1.0f32, -2.5, 0.125];
        let mut bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        bytes.extend(half::bf16::from_f32(3.0).to_le_bytes());
        let t = TensorTable::new(
            SharedBytes::from_vec(bytes),
            vec![
                ("f".into(), entry(DType::F32, &[3], 0..12)),
                ("b".into(), entry(DType::Bf16, &[1, 1], 12..14)),
                (
                    "q".into(),
                    TableEntry {
                        dtype: Err("Q4_K".into()),
                        shape: vec![7],
                        range: 14..14,
                    },
                ),
            ],
        )
        .unwrap();
        assert_eq!(t.tensor("f").unwrap().to_f32().as_slice().unwrap(), &values);
        assert_eq!(t.tensor("b").unwrap().to_f32().as_slice().unwrap(), &[3.0]);
        assert!(matches!(t.tensor("q"), Err(Error::Dtype { dtype, .. }) if dtype == "Q4_K"));
        assert!(matches!(t.tensor("x"), Err(Error::MissingTensor(_))));
        assert_eq!(t.names(), ["f", "b", "q"]);
    }
}
