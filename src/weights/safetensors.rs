//! Reading safetensors files whose tensors are f32, f16 or bf16.
//!
//! A file opened from a path is not read whole: the header is parsed and checked against the
//! file's length, and each tensor is read from its own byte range when asked for, so loading a
//! model needs memory for the model plus one tensor, not for a second copy of the file.

use super::{DType, Tensor, TensorSource};
use crate::error::{Error, Result};
use crate::ops::aligned;
use half::{bf16, f16};
use ndarray::{Array1, ArrayD, IxDyn};
use safetensors::tensor::{Dtype, Metadata, TensorInfo};
use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Bytes read from a file at a time when decoding a tensor.
const READ_PIECE: usize = 1 << 20;

/// Largest header accepted (the format's own limit).
const MAX_HEADER: u64 = 100_000_000;

enum Backing {
    Bytes(Vec<u8>),
    File(Mutex<File>, PathBuf),
}

/// A safetensors file whose header has been parsed and validated.
pub struct SafeTensorsFile {
    backing: Backing,
    data_start: u64,
    metadata: Metadata,
    names: Vec<String>,
}

impl std::fmt::Debug for SafeTensorsFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SafeTensorsFile")
            .field("tensors", &self.names.len())
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
    /// Opens the file at `path` and validates its header; tensors are read on request.
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
        let mut file = File::open(path).map_err(io)?;
        let file_len = file.metadata().map_err(io)?.len();
        let mut len_bytes = [0u8; 8];
        if file_len < 8 {
            return Err(format_error(format!(
                "{file_len} bytes: too short for a header"
            )));
        }
        file.read_exact(&mut len_bytes).map_err(io)?;
        let header_len = header_len(len_bytes, file_len)?;
        let mut header = vec![0u8; header_len as usize];
        file.read_exact(&mut header).map_err(io)?;
        let metadata = parse_header(&header, file_len - 8 - header_len)?;
        Ok(Self::new(
            Backing::File(Mutex::new(file), path.to_path_buf()),
            8 + header_len,
            metadata,
        ))
    }

    /// Validates `bytes` as a safetensors file, by the rules of [`SafeTensorsFile::open`].
    ///
    /// # Errors
    /// [`Error::Format`] if they are not a well-formed safetensors file.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self> {
        let file_len = bytes.len() as u64;
        let Some(len_bytes) = bytes.first_chunk::<8>() else {
            return Err(format_error(format!(
                "{file_len} bytes: too short for a header"
            )));
        };
        let header_len = header_len(*len_bytes, file_len)?;
        let header = &bytes[8..8 + header_len as usize];
        let metadata = parse_header(header, file_len - 8 - header_len)?;
        Ok(Self::new(Backing::Bytes(bytes), 8 + header_len, metadata))
    }

    fn new(backing: Backing, data_start: u64, metadata: Metadata) -> Self {
        let names = metadata.tensors().into_keys().collect();
        SafeTensorsFile {
            backing,
            data_start,
            metadata,
            names,
        }
    }

    /// The free-form `__metadata__` map of the header (empty if absent).
    pub fn metadata(&self) -> HashMap<String, String> {
        self.metadata.metadata().clone().unwrap_or_default()
    }

    /// The elements of a tensor whose range was validated, decoded by `from_le`. A file is read
    /// in pieces of [`READ_PIECE`] bytes, so decoding needs no second copy of the tensor.
    fn decode<T: Copy + Default, const B: usize>(
        &self,
        info: &TensorInfo,
        from_le: fn([u8; B]) -> T,
    ) -> Result<Array1<T>> {
        let (start, end) = info.data_offsets;
        let at = self.data_start as usize + start;
        let decode_into = |bytes: &[u8], out: &mut aligned::Buffer<T>| {
            out.extend(
                bytes
                    .chunks_exact(B)
                    .map(|c| from_le(c.try_into().expect("chunks_exact yields B bytes"))),
            )
        };
        let mut out = aligned::Buffer::with_capacity((end - start) / B);
        match &self.backing {
            Backing::Bytes(b) => decode_into(&b[at..at + (end - start)], &mut out),
            Backing::File(file, path) => {
                let io = |source| Error::Io {
                    path: path.clone(),
                    source,
                };
                let mut file = file.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                file.seek(SeekFrom::Start(at as u64)).map_err(io)?;
                let mut piece = vec![0u8; READ_PIECE.min(end - start)];
                let mut left = end - start;
                while left > 0 {
                    let n = left.min(piece.len());
                    file.read_exact(&mut piece[..n]).map_err(io)?;
                    decode_into(&piece[..n], &mut out);
                    left -= n;
                }
            }
        }
        Ok(out.into_array())
    }
}

fn array<T>(name: &str, shape: &[usize], values: Array1<T>) -> Result<ArrayD<T>> {
    values
        .into_shape_with_order(IxDyn(shape))
        .map_err(|e| format_error(format!("tensor `{name}`: {e}")))
}

impl TensorSource for SafeTensorsFile {
    fn names(&self) -> Vec<&str> {
        self.names.iter().map(String::as_str).collect()
    }

    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.metadata.info(name).map(|i| i.shape.clone())
    }

    fn dtype(&self, name: &str) -> Option<Result<DType, String>> {
        self.metadata.info(name).map(|info| match info.dtype {
            Dtype::F32 => Ok(DType::F32),
            Dtype::F16 => Ok(DType::F16),
            Dtype::BF16 => Ok(DType::Bf16),
            other => Err(format!("{other:?}")),
        })
    }

    fn tensor(&self, name: &str) -> Result<Tensor> {
        let info = self
            .metadata
            .info(name)
            .ok_or_else(|| Error::MissingTensor(name.to_string()))?;
        let dtype = self
            .dtype(name)
            .expect("present")
            .map_err(|dtype| Error::Dtype {
                name: name.to_string(),
                dtype,
            })?;
        let shape = &info.shape;
        Ok(match dtype {
            DType::F32 => Tensor::F32(array(name, shape, self.decode(info, f32::from_le_bytes)?)?),
            DType::F16 => Tensor::F16(array(
                name,
                shape,
                self.decode(info, |b| f16::from_bits(u16::from_le_bytes(b)))?,
            )?),
            DType::Bf16 => Tensor::Bf16(array(
                name,
                shape,
                self.decode(info, |b| bf16::from_bits(u16::from_le_bytes(b)))?,
            )?),
        })
    }
}
