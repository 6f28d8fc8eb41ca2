//! Reading safetensors files whose tensors are f32, f16 or bf16, or blocks of a quantized
//! format in the crate's layout (see [`write_quantized_safetensors`](super::write_quantized_safetensors)).
//!
//! A file opened from a path is mapped into memory, not read: the header is parsed and checked
//! against the file's length, and each tensor is seen in place in its own byte range, so a
//! matrix stored in the layout the kernels read needs no copy at all.

use super::table::{TableEntry, TensorTable};
use super::DType;
use crate::error::{Error, Result};
use crate::storage::SharedBytes;
use safetensors::tensor::{Dtype, Metadata, TensorInfo};
use std::collections::HashMap;
use std::fs::File;
use std::path::Path;

/// Largest header accepted (the format's own limit).
const MAX_HEADER: u64 = 100_000_000;

/// A safetensors file whose header has been parsed and validated, its tensors seen in place in
/// the file's bytes (memory-mapped when opened from a path).
pub struct SafeTensorsFile {
    table: TensorTable,
    metadata: HashMap<String, String>,
}

impl std::fmt::Debug for SafeTensorsFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SafeTensorsFile")
            .field("tensors", &self.table.ordered_names().len())
            .finish()
    }
}

fn format_error(what: impl std::fmt::Display) -> Error {
    Error::Format(what.to_string())
}

/// The header length stored in the first 8 bytes of a file of `file_len` bytes, checked to fit
/// the file and the format's limit before anything is allocated for it.
fn header_len(len_bytes: [u8; 8], file_len: u64) -> Result<u64> {
    let header_len = u64::from_le_bytes(len_bytes);
    if header_len > MAX_HEADER || 8 + header_len > file_len {
        return Err(format_error(format!(
            "header of {header_len} bytes does not fit a file of {file_len} bytes (at most \
             {MAX_HEADER} bytes and the file's length less 8)"
        )));
    }
    Ok(header_len)
}

/// Parses the JSON header and checks it against a data section of `data_len` bytes (see
/// [`validate`]).
fn parse_header(header: &[u8], data_len: u64) -> Result<Metadata> {
    let metadata: Metadata = serde_json::from_slice(header).map_err(format_error)?;
    validate(&metadata, data_len)?;
    Ok(metadata)
}

/// Checks that the tensors' byte ranges tile the data section of `data_len` bytes exactly:
/// each range holds its dtype and shape, and taken in order of their offsets the ranges start
/// at 0, follow one another with no gap or overlap, and end at `data_len`. A header-length
/// field that is slightly off still parses (the header is space-padded) but leaves bytes over
/// at the end; this is what rejects it, as the `safetensors` crate's own reader does.
fn validate(metadata: &Metadata, data_len: u64) -> Result<()> {
    let mut ranges = Vec::with_capacity(metadata.tensors().len());
    for (name, info) in metadata.tensors() {
        let TensorInfo {
            dtype,
            shape,
            data_offsets: (start, end),
        } = info;
        let bits = shape
            .iter()
            .try_fold(dtype.bitsize() as u64, |acc, &d| acc.checked_mul(d as u64))
            .ok_or_else(|| format_error(format!("tensor `{name}`: shape {shape:?} overflows")))?;
        let size = bits.div_ceil(8);
        if *start as u64 > *end as u64 || (end - start) as u64 != size || *end as u64 > data_len {
            return Err(format_error(format!(
                "tensor `{name}`: bytes {start}..{end} do not hold {dtype:?} {shape:?} within a \
                 data section of {data_len} bytes (truncated file?)"
            )));
        }
        ranges.push((*start as u64, *end as u64, name));
    }
    ranges.sort_unstable();
    let mut covered = 0u64;
    for (start, end, name) in ranges {
        if start != covered {
            let what = if start < covered {
                "overlaps"
            } else {
                "leaves a gap before"
            };
            return Err(format_error(format!(
                "tensor `{name}` at bytes {start}..{end} {what} byte {covered} of the data section"
            )));
        }
        covered = end;
    }
    if covered != data_len {
        return Err(format_error(format!(
            "the tensors cover {covered} bytes of a data section of {data_len} bytes (wrong \
             header length, or bytes appended to the file?)"
        )));
    }
    Ok(())
}

impl SafeTensorsFile {
    /// Opens the file at `path`, maps it into memory and validates its header; tensors are
    /// decoded (or used in place, see [`TensorSource::raw`](super::TensorSource::raw)) on request.
    ///
    /// The header may be at most 100 MB and the file's length less 8; the tensors' byte
    /// ranges must cover the data section after it exactly, as [`SafeTensorsFile::from_bytes`]
    /// requires too. Nothing is allocated from a header value before it is checked against
    /// the file's length.
    ///
    /// # Errors
    /// [`Error::Io`] if it cannot be read, [`Error::Format`] if it is not a well-formed
    /// safetensors file (bad header, truncated, offsets out of range, gaps, overlaps or bytes
    /// no tensor covers).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let io = |source| Error::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        Self::from_shared(SharedBytes::map(&file).map_err(io)?)
    }

    /// Validates `bytes` as a safetensors file, by the rules of [`SafeTensorsFile::open`].
    ///
    /// # Errors
    /// [`Error::Format`] if they are not a well-formed safetensors file.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self> {
        Self::from_shared(SharedBytes::from_vec(bytes))
    }

    /// Validates the bytes of a whole file, by the rules of [`SafeTensorsFile::open`].
    ///
    /// # Errors
    /// [`Error::Format`] if they are not a well-formed safetensors file.
    pub fn from_shared(bytes: SharedBytes) -> Result<Self> {
        let b = bytes.as_slice();
        let file_len = b.len() as u64;
        let Some(len_bytes) = b.first_chunk::<8>() else {
            return Err(format_error(format!(
                "{file_len} bytes: too short for a header"
            )));
        };
        let header_len = header_len(*len_bytes, file_len)?;
        let header = &b[8..8 + header_len as usize];
        let metadata = parse_header(header, file_len - 8 - header_len)?;
        let data_start = 8 + header_len as usize;
        let mut entries: Vec<_> = metadata
            .tensors()
            .into_iter()
            .map(|(name, info)| {
                let (start, end) = info.data_offsets;
                let entry = TableEntry {
                    dtype: dtype_of(info.dtype),
                    shape: info.shape.clone(),
                    range: data_start + start..data_start + end,
                };
                (name, entry)
            })
            .collect();
        entries.sort_by_key(|(_, e)| e.range.start);
        let meta = metadata.metadata().clone().unwrap_or_default();
        // The crate's quantized layout: `U8` tensors of blocks named in the metadata.
        let mut blocks = Vec::new();
        for (key, format) in &meta {
            let Some(name) = key.strip_prefix(super::QUANT_METADATA_PREFIX) else {
                continue;
            };
            let Some((_, entry)) = entries.iter().find(|(n, _)| n == name) else {
                return Err(format_error(format!(
                    "metadata `{key}` names no tensor of the file"
                )));
            };
            if entry.dtype != Err("U8".to_string()) {
                return Err(format_error(format!(
                    "tensor `{name}`: stored as {:?}, but metadata `{key}` makes it {format} \
                     blocks (stored as U8)",
                    entry.dtype
                )));
            }
            let shape =
                super::quant::logical_shape(name, format, &entry.shape).map_err(format_error)?;
            let format = format
                .parse::<crate::storage::quant::QuantType>()
                .map_err(format_error)?
                .name()
                .to_string();
            blocks.push((name.to_string(), format, shape));
        }
        let table = TensorTable::new(bytes, entries)
            .and_then(|t| t.with_blocks(blocks))
            .map_err(format_error)?;
        Ok(SafeTensorsFile {
            table,
            metadata: meta,
        })
    }

    /// The free-form `__metadata__` map of the header (empty if absent).
    pub fn metadata(&self) -> HashMap<String, String> {
        self.metadata.clone()
    }

    /// The tensors, in the order of their bytes in the file.
    pub fn table(&self) -> &TensorTable {
        &self.table
    }
}

/// The crate's type for a safetensors dtype, or its name if the crate does not read it.
fn dtype_of(dtype: Dtype) -> std::result::Result<DType, String> {
    match dtype {
        Dtype::F32 => Ok(DType::F32),
        Dtype::F16 => Ok(DType::F16),
        Dtype::BF16 => Ok(DType::Bf16),
        other => Err(format!("{other:?}")),
    }
}

super::table::tensor_source_via_table!(SafeTensorsFile);
