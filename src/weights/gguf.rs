//! llama.cpp's GGUF container (versions 2 and 3, little-endian): a header of typed metadata
//! key/value pairs and tensor descriptions, then the tensor data, aligned.
//!
//! [`GgufFile::parse`] reads the header into a [`TensorTable`] over the file's bytes (tensors of
//! type F32, F16 and BF16 are used in place; so are Q8_0, Q4_0, Q5_0, Q5_1, Q4_K, Q5_K and
//! Q6_K, as blocks (see [`TensorSource::blocks`](super::TensorSource::blocks)); every other GGML
//! type is listed under its name so a loader can name it in an error). Every count, length and
//! offset is checked against the file's length before anything is allocated, so arbitrary bytes
//! give an error, never a panic or a huge allocation. [`GgufFile::into_rwkv`] maps llama.cpp's
//! `rwkv6` and `rwkv7` tensors back to BlinkDL names and layouts (see [`GgufRwkv`]).

mod rwkv;

pub use self::rwkv::GgufRwkv;

use super::{DType, TableEntry, TensorTable};
use crate::error::{Error, Result};
use crate::storage::SharedBytes;
use std::collections::HashMap;
use std::ops::Range;

/// The four bytes a GGUF file starts with.
pub const GGUF_MAGIC: &[u8; 4] = b"GGUF";

/// The data alignment when the file does not set `general.alignment`.
pub const DEFAULT_ALIGNMENT: usize = 32;

/// The most axes a GGML tensor has.
const MAX_DIMS: usize = 4;

/// The deepest nesting of arrays in a metadata value that is read (deeper is refused, so that
/// a crafted file cannot exhaust the stack).
const MAX_NESTING: usize = 16;

/// The error for a malformed or unsupported GGUF file.
pub(crate) fn gguf_error(file: &str, what: impl Into<String>) -> Error {
    Error::Checkpoint {
        format: "GGUF",
        file: file.to_string(),
        what: what.into(),
    }
}

macro_rules! ggml_types {
    ($($variant:ident = $id:literal, $name:literal, $block:expr, $bytes:expr;)*) => {
        /// A GGML tensor type: its id in a GGUF file, its name, and its block layout (a block
        /// of `block_size` consecutive values along the innermost axis takes `block_bytes`).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[allow(non_camel_case_types)]
        #[non_exhaustive]
        pub enum GgmlType {
            $(
                #[doc = concat!("`", $name, "` (id ", stringify!($id), ").")]
                $variant,
            )*
        }

        impl GgmlType {
            /// Every type, in id order.
            pub const ALL: &'static [GgmlType] = &[$(GgmlType::$variant),*];

            /// The type with GGUF id `id`, `None` for an unknown or retired id.
            pub fn from_id(id: u32) -> Option<GgmlType> {
                match id {
                    $($id => Some(GgmlType::$variant),)*
                    _ => None,
                }
            }

            /// The type's id in a GGUF file.
            pub fn id(self) -> u32 {
                match self { $(GgmlType::$variant => $id,)* }
            }

            /// The type's name as GGML writes it (e.g. `Q4_K`).
            pub fn name(self) -> &'static str {
                match self { $(GgmlType::$variant => $name,)* }
            }

            /// Values per block (1 for the plain types).
            pub fn block_size(self) -> usize {
                match self { $(GgmlType::$variant => $block,)* }
            }

            /// Bytes per block.
            pub fn block_bytes(self) -> usize {
                match self { $(GgmlType::$variant => $bytes,)* }
            }
        }
    };
}

/// Values per block of the "K" quantizations.
const QK_K: usize = 256;

ggml_types! {
    F32 = 0, "F32", 1, 4;
    F16 = 1, "F16", 1, 2;
    Q4_0 = 2, "Q4_0", 32, 2 + 16;
    Q4_1 = 3, "Q4_1", 32, 2 + 2 + 16;
    Q5_0 = 6, "Q5_0", 32, 2 + 4 + 16;
    Q5_1 = 7, "Q5_1", 32, 2 + 2 + 4 + 16;
    Q8_0 = 8, "Q8_0", 32, 2 + 32;
    Q8_1 = 9, "Q8_1", 32, 4 + 4 + 32;
    Q2_K = 10, "Q2_K", QK_K, 2 + 2 + QK_K / 16 + QK_K / 4;
    Q3_K = 11, "Q3_K", QK_K, 2 + QK_K / 4 + QK_K / 8 + 12;
    Q4_K = 12, "Q4_K", QK_K, 2 + 2 + QK_K / 2 + 12;
    Q5_K = 13, "Q5_K", QK_K, 2 + 2 + QK_K / 2 + QK_K / 8 + 12;
    Q6_K = 14, "Q6_K", QK_K, 2 + QK_K / 2 + QK_K / 4 + QK_K / 16;
    Q8_K = 15, "Q8_K", QK_K, 4 + QK_K + QK_K / 8;
    IQ2_XXS = 16, "IQ2_XXS", QK_K, 2 + QK_K / 4;
    IQ2_XS = 17, "IQ2_XS", QK_K, 2 + QK_K / 4 + QK_K / 32;
    IQ3_XXS = 18, "IQ3_XXS", QK_K, 2 + QK_K / 4 + QK_K / 8;
    IQ1_S = 19, "IQ1_S", QK_K, 2 + QK_K / 8 + QK_K / 16;
    IQ4_NL = 20, "IQ4_NL", 32, 2 + 16;
    IQ3_S = 21, "IQ3_S", QK_K, 2 + QK_K / 4 + QK_K / 8 + QK_K / 32 + 4;
    IQ2_S = 22, "IQ2_S", QK_K, 2 + QK_K / 4 + QK_K / 16;
    IQ4_XS = 23, "IQ4_XS", QK_K, 2 + 2 + QK_K / 2 + QK_K / 64;
    I8 = 24, "I8", 1, 1;
    I16 = 25, "I16", 1, 2;
    I32 = 26, "I32", 1, 4;
    I64 = 27, "I64", 1, 8;
    F64 = 28, "F64", 1, 8;
    IQ1_M = 29, "IQ1_M", QK_K, QK_K / 8 + QK_K / 16 + QK_K / 32;
    BF16 = 30, "BF16", 1, 2;
    TQ1_0 = 34, "TQ1_0", QK_K, 2 + 4 * 13;
    TQ2_0 = 35, "TQ2_0", QK_K, 2 + 64;
    MXFP4 = 39, "MXFP4", 32, 1 + 16;
    NVFP4 = 40, "NVFP4", 64, 4 + 32;
    Q1_0 = 41, "Q1_0", 128, 2 + 16;
}

impl GgmlType {
    /// The crate's storage type for this GGML type: `Some` for F32, F16 and BF16, which are
    /// read in place; `None` for the quantized and integer types.
    pub fn dtype(self) -> Option<DType> {
        match self {
            GgmlType::F32 => Some(DType::F32),
            GgmlType::F16 => Some(DType::F16),
            GgmlType::BF16 => Some(DType::Bf16),
            _ => None,
        }
    }

    /// Bytes taken by `elements` values laid out as `ne0` per row, or `None` when the rows do
    /// not split into whole blocks or the size overflows.
    fn bytes_for(self, ne0: usize, elements: usize) -> Option<usize> {
        let block = self.block_size();
        if !ne0.is_multiple_of(block) {
            return None;
        }
        (elements / block).checked_mul(self.block_bytes())
    }
}

impl std::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A metadata value, in the type the file stores it.
#[derive(Clone, Debug, PartialEq)]
pub enum GgufValue {
    /// `UINT8` (type 0).
    U8(u8),
    /// `INT8` (type 1).
    I8(i8),
    /// `UINT16` (type 2).
    U16(u16),
    /// `INT16` (type 3).
    I16(i16),
    /// `UINT32` (type 4).
    U32(u32),
    /// `INT32` (type 5).
    I32(i32),
    /// `FLOAT32` (type 6).
    F32(f32),
    /// `BOOL` (type 7), one byte 0 or 1.
    Bool(bool),
    /// `STRING` (type 8): the bytes as stored (meant to be UTF-8; tokenizer entries may not
    /// be, so they are kept as bytes).
    String(Vec<u8>),
    /// `ARRAY` (type 9): values of one element type, possibly arrays themselves.
    Array(Vec<GgufValue>),
    /// `UINT64` (type 10).
    U64(u64),
    /// `INT64` (type 11).
    I64(i64),
    /// `FLOAT64` (type 12).
    F64(f64),
}

impl GgufValue {
    /// The value as a non-negative integer, for any integer type holding one.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            GgufValue::U8(v) => Some(v.into()),
            GgufValue::U16(v) => Some(v.into()),
            GgufValue::U32(v) => Some(v.into()),
            GgufValue::U64(v) => Some(v),
            GgufValue::I8(v) => u64::try_from(v).ok(),
            GgufValue::I16(v) => u64::try_from(v).ok(),
            GgufValue::I32(v) => u64::try_from(v).ok(),
            GgufValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a float, for `FLOAT32` and `FLOAT64`.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            GgufValue::F32(v) => Some(v.into()),
            GgufValue::F64(v) => Some(v),
            _ => None,
        }
    }

    /// The value as text, for a string that is valid UTF-8.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            GgufValue::String(b) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }

    /// The elements, for an array.
    pub fn as_array(&self) -> Option<&[GgufValue]> {
        match self {
            GgufValue::Array(v) => Some(v),
            _ => None,
        }
    }
}

/// One tensor as the header describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GgufTensorInfo {
    /// The tensor's name (e.g. `blk.0.time_mix_key.weight`).
    pub name: String,
    /// The shape, outermost axis first (GGUF lists the innermost axis, `ne[0]`, first; this is
    /// that list reversed).
    pub shape: Vec<usize>,
    /// The stored type.
    pub ggml_type: GgmlType,
    /// The offset of the data from the start of the data section, as stored.
    pub offset: u64,
    /// The byte range of the data within the file.
    pub range: Range<usize>,
}

/// A parsed GGUF file: its metadata, its tensor descriptions and a [`TensorTable`] of the
/// tensors under their GGUF names.
#[derive(Clone, Debug)]
pub struct GgufFile {
    file: String,
    version: u32,
    metadata: Vec<(String, GgufValue)>,
    keys: HashMap<String, usize>,
    tensors: Vec<GgufTensorInfo>,
    alignment: usize,
    data_offset: usize,
    table: TensorTable,
}

impl GgufFile {
    /// Parses the GGUF file in `bytes` (the whole file, e.g. a memory map); `file` names it in
    /// errors.
    ///
    /// # Errors
    /// [`Error::Checkpoint`] (format `GGUF`) naming what is wrong: a bad magic, a version other
    /// than 2 or 3, a truncated header, a count, length or offset beyond the file, a value of
    /// unknown type, an unknown GGML tensor type, a bad alignment, a tensor whose data lies
    /// outside the file, a repeated key or tensor name.
    pub fn parse(bytes: SharedBytes, file: &str) -> Result<GgufFile> {
        Self::parse_inner(bytes, file).map_err(|what| gguf_error(file, what))
    }

    /// [`GgufFile::parse`] of bytes held in memory.
    ///
    /// # Errors
    /// As [`GgufFile::parse`].
    pub fn from_bytes(bytes: Vec<u8>) -> Result<GgufFile> {
        Self::parse(SharedBytes::from_vec(bytes), super::checkpoint::IN_MEMORY)
    }

    fn parse_inner(bytes: SharedBytes, file: &str) -> std::result::Result<GgufFile, String> {
        let mut r = Reader {
            bytes: bytes.as_slice(),
            pos: 0,
        };
        let magic = r.take(4, "the magic bytes")?;
        if magic != GGUF_MAGIC {
            return Err(format!(
                "the file starts with {magic:02x?}, not the GGUF magic `GGUF`"
            ));
        }
        let version = r.u32("the version")?;
        match version {
            2 | 3 => {}
            1 => {
                return Err(
                    "GGUF version 1 (32-bit counts) is not read; versions 2 and 3 are".into(),
                )
            }
            v if v.swap_bytes() == 2 || v.swap_bytes() == 3 => {
                return Err(format!(
                    "GGUF version {} stored big-endian; only little-endian files are read",
                    v.swap_bytes()
                ))
            }
            v => {
                return Err(format!(
                    "unsupported GGUF version {v}; versions 2 and 3 are read"
                ))
            }
        }
        let n_tensors = r.u64("the tensor count")?;
        let n_kv = r.u64("the metadata count")?;
        // Each metadata pair takes at least 13 bytes (key length, type, one byte of value) and
        // each tensor description at least 24 (name length, axis count, type, offset).
        let n_kv = r.count(n_kv, 13, "metadata pairs")?;
        let n_tensors = r.count(n_tensors, 24, "tensor descriptions")?;

        let mut metadata = Vec::with_capacity(n_kv);
        let mut keys = HashMap::with_capacity(n_kv);
        for i in 0..n_kv {
            let key = r.string(&format!("the key of metadata pair {i}"))?;
            let key = String::from_utf8(key)
                .map_err(|_| format!("the key of metadata pair {i} is not UTF-8"))?;
            let what = format!("metadata `{key}`");
            let ty = r.u32(&what)?;
            let value = r.value(ty, &what, 0)?;
            if keys.insert(key.clone(), metadata.len()).is_some() {
                return Err(format!("metadata key `{key}` appears twice"));
            }
            metadata.push((key, value));
        }

        let alignment = match keys.get("general.alignment").map(|&i| &metadata[i].1) {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_u64().and_then(|a| usize::try_from(a).ok()) {
                Some(a) if a.is_power_of_two() => a,
                _ => {
                    return Err(format!(
                        "metadata `general.alignment` = {v:?} is not a power of two"
                    ))
                }
            },
        };

        struct Described {
            name: String,
            dims: Vec<usize>,
            ty: GgmlType,
            offset: u64,
        }
        let mut described = Vec::with_capacity(n_tensors);
        for i in 0..n_tensors {
            let name = r.string(&format!("the name of tensor {i}"))?;
            let name = String::from_utf8(name)
                .map_err(|_| format!("the name of tensor {i} is not UTF-8"))?;
            let what = format!("tensor `{name}`");
            let n_dims = r.u32(&what)? as usize;
            if n_dims > MAX_DIMS {
                return Err(format!(
                    "{what} has {n_dims} axes; GGML tensors have at most {MAX_DIMS}"
                ));
            }
            let mut dims = Vec::with_capacity(n_dims);
            for _ in 0..n_dims {
                let d = r.u64(&what)?;
                let d = usize::try_from(d)
                    .ok()
                    .filter(|&d| d as u64 <= i64::MAX as u64)
                    .ok_or_else(|| format!("{what} has an axis of {d} elements"))?;
                dims.push(d);
            }
            let id = r.u32(&what)?;
            let ty = GgmlType::from_id(id)
                .ok_or_else(|| format!("{what} has unknown GGML type id {id}"))?;
            let offset = r.u64(&what)?;
            described.push(Described {
                name,
                dims,
                ty,
                offset,
            });
        }

        let data_offset = r
            .pos
            .checked_next_multiple_of(alignment)
            .ok_or("the data section starts beyond any file")?;
        let mut tensors = Vec::with_capacity(described.len());
        let mut entries = Vec::with_capacity(described.len());
        let mut blocks = Vec::new();
        for Described {
            name,
            dims,
            ty,
            offset,
        } in described
        {
            let what = format!("tensor `{name}`");
            let elements = dims
                .iter()
                .try_fold(1usize, |acc, &d| acc.checked_mul(d))
                .ok_or_else(|| format!("{what}: shape {dims:?} has too many elements"))?;
            let ne0 = dims.first().copied().unwrap_or(1);
            let size = ty.bytes_for(ne0, elements).ok_or_else(|| {
                format!(
                    "{what}: rows of {ne0} values do not split into {ty} blocks of {}",
                    ty.block_size()
                )
            })?;
            if offset % alignment as u64 != 0 {
                return Err(format!(
                    "{what}: data offset {offset} is not a multiple of the alignment {alignment}"
                ));
            }
            let start = usize::try_from(offset)
                .ok()
                .and_then(|o| data_offset.checked_add(o));
            let range = start
                .and_then(|s| Some(s..s.checked_add(size)?))
                .filter(|range| range.end <= bytes.len())
                .ok_or_else(|| {
                    format!(
                        "{what}: {size} bytes at data offset {offset} lie beyond the end of a \
                         file of {} bytes (data section at {data_offset})",
                        bytes.len()
                    )
                })?;
            let shape: Vec<usize> = dims.iter().rev().copied().collect();
            if let Some(q) = crate::storage::quant::QuantType::from_ggml(ty) {
                blocks.push((name.clone(), q.name().to_string(), shape.clone()));
            }
            entries.push((
                name.clone(),
                TableEntry {
                    dtype: ty.dtype().ok_or_else(|| ty.name().to_string()),
                    shape: shape.clone(),
                    range: range.clone(),
                },
            ));
            tensors.push(GgufTensorInfo {
                name,
                shape,
                ggml_type: ty,
                offset,
                range,
            });
        }
        let table = TensorTable::new(bytes, entries)?.with_blocks(blocks)?;
        Ok(GgufFile {
            file: file.to_string(),
            version,
            metadata,
            keys,
            tensors,
            alignment,
            data_offset,
            table,
        })
    }

    /// The name of the file in errors (its path, or a placeholder for bytes in memory).
    pub fn file(&self) -> &str {
        &self.file
    }

    /// The format version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Every metadata pair, in the file's order.
    pub fn metadata(&self) -> &[(String, GgufValue)] {
        &self.metadata
    }

    /// The metadata value of `key`.
    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.keys.get(key).map(|&i| &self.metadata[i].1)
    }

    /// `general.architecture`, when it is a string.
    pub fn architecture(&self) -> Option<&str> {
        self.get("general.architecture")?.as_str()
    }

    /// The tensor descriptions, in the file's order.
    pub fn tensors(&self) -> &[GgufTensorInfo] {
        &self.tensors
    }

    /// The data alignment (`general.alignment`, 32 by default).
    pub fn alignment(&self) -> usize {
        self.alignment
    }

    /// Where the data section starts in the file.
    pub fn data_offset(&self) -> usize {
        self.data_offset
    }

    /// The tensors under their GGUF names, shapes outermost axis first.
    pub fn table(&self) -> &TensorTable {
        &self.table
    }

    /// The tensors of an `rwkv6` or `rwkv7` file under BlinkDL names and layouts.
    ///
    /// # Errors
    /// As [`GgufRwkv::new`].
    pub fn into_rwkv(self) -> Result<GgufRwkv> {
        GgufRwkv::new(self)
    }
}

/// A cursor over the header bytes whose reads check the remaining length first.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn take(&mut self, n: usize, what: &str) -> std::result::Result<&'a [u8], String> {
        if n > self.remaining() {
            return Err(format!(
                "the header is truncated: {what} needs {n} bytes at offset {}, the file has {} \
                 bytes",
                self.pos,
                self.bytes.len()
            ));
        }
        let b = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(b)
    }

    fn array<const N: usize>(&mut self, what: &str) -> std::result::Result<[u8; N], String> {
        Ok(self.take(N, what)?.try_into().expect("N bytes"))
    }

    fn u32(&mut self, what: &str) -> std::result::Result<u32, String> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> std::result::Result<u64, String> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// `count` items of at least `min_bytes` each, checked to fit in the rest of the file.
    fn count(
        &self,
        count: u64,
        min_bytes: usize,
        what: &str,
    ) -> std::result::Result<usize, String> {
        usize::try_from(count)
            .ok()
            .filter(|&n| n <= self.remaining() / min_bytes)
            .ok_or_else(|| {
                format!(
                    "the header is truncated or a count is corrupt: {count} {what} cannot fit in \
                     the {} bytes left at offset {}",
                    self.remaining(),
                    self.pos
                )
            })
    }

    fn string(&mut self, what: &str) -> std::result::Result<Vec<u8>, String> {
        let len = self.u64(what)?;
        let len = self.count(len, 1, &format!("bytes of {what}"))?;
        Ok(self.take(len, what)?.to_vec())
    }

    /// The smallest number of bytes a value of type `ty` takes.
    fn min_size(ty: u32) -> Option<usize> {
        Some(match ty {
            0 | 1 | 7 => 1,
            2 | 3 => 2,
            4..=6 => 4,
            8 | 10..=12 => 8,
            9 => 12,
            _ => return None,
        })
    }

    fn value(
        &mut self,
        ty: u32,
        what: &str,
        depth: usize,
    ) -> std::result::Result<GgufValue, String> {
        Ok(match ty {
            0 => GgufValue::U8(u8::from_le_bytes(self.array(what)?)),
            1 => GgufValue::I8(i8::from_le_bytes(self.array(what)?)),
            2 => GgufValue::U16(u16::from_le_bytes(self.array(what)?)),
            3 => GgufValue::I16(i16::from_le_bytes(self.array(what)?)),
            4 => GgufValue::U32(self.u32(what)?),
            5 => GgufValue::I32(i32::from_le_bytes(self.array(what)?)),
            6 => GgufValue::F32(f32::from_le_bytes(self.array(what)?)),
            7 => match self.array::<1>(what)?[0] {
                0 => GgufValue::Bool(false),
                1 => GgufValue::Bool(true),
                b => return Err(format!("{what}: boolean byte {b} is neither 0 nor 1")),
            },
            8 => GgufValue::String(self.string(what)?),
            9 => {
                if depth >= MAX_NESTING {
                    return Err(format!(
                        "{what}: arrays nested deeper than {MAX_NESTING} levels"
                    ));
                }
                let elem = self.u32(what)?;
                let min = Self::min_size(elem)
                    .ok_or_else(|| format!("{what}: array of unknown value type {elem}"))?;
                let n = self.u64(what)?;
                let n = self.count(n, min, &format!("elements of {what}"))?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value(elem, what, depth + 1)?);
                }
                GgufValue::Array(items)
            }
            10 => GgufValue::U64(self.u64(what)?),
            11 => GgufValue::I64(i64::from_le_bytes(self.array(what)?)),
            12 => GgufValue::F64(f64::from_le_bytes(self.array(what)?)),
            other => return Err(format!("{what} has unknown value type {other}")),
        })
    }
}
