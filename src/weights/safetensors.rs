//! Reading safetensors files whose tensors are f32, f16 or bf16.

use super::{Tensor, TensorSource};
use crate::error::{Error, Result};
use half::{bf16, f16};
use ndarray::{ArrayD, IxDyn};
use safetensors::tensor::{Dtype, Metadata, SafeTensors};
use std::collections::HashMap;
use std::path::Path;

/// A safetensors file held in memory, its header parsed and validated once.
///
/// Tensors are decoded on request; the decoded arrays do not borrow the file, so it can be dropped
/// once a model is built.
pub struct SafeTensorsFile {
    bytes: Vec<u8>,
    data_start: usize,
    metadata: Metadata,
    names: Vec<String>,
}

impl std::fmt::Debug for SafeTensorsFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SafeTensorsFile")
            .field("bytes", &self.bytes.len())
            .field("tensors", &self.metadata.tensors().len())
            .finish()
    }
}

impl SafeTensorsFile {
    /// Reads and validates the file at `path`.
    ///
    /// # Errors
    /// [`Error::Io`] if it cannot be read, [`Error::Format`] if it is not a well-formed
    /// safetensors file (bad header, truncated, offsets out of range).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_bytes(bytes)
    }

    /// Validates `bytes` as a safetensors file.
    ///
    /// # Errors
    /// [`Error::Format`] if they are not a well-formed safetensors file.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self> {
        let (header_len, metadata) =
            SafeTensors::read_metadata(&bytes).map_err(|e| Error::Format(e.to_string()))?;
        let names = metadata.tensors().into_keys().collect();
        Ok(SafeTensorsFile {
            bytes,
            data_start: 8 + header_len,
            metadata,
            names,
        })
    }

    /// The free-form `__metadata__` map of the header (empty if absent).
    pub fn metadata(&self) -> HashMap<String, String> {
        self.metadata.metadata().clone().unwrap_or_default()
    }
}

fn decode<T, const B: usize>(bytes: &[u8], from_le: fn([u8; B]) -> T) -> Vec<T> {
    bytes
        .chunks_exact(B)
        .map(|c| from_le(c.try_into().expect("chunks_exact yields B bytes")))
        .collect()
}

fn array<T>(name: &str, shape: &[usize], values: Vec<T>) -> Result<ArrayD<T>> {
    ArrayD::from_shape_vec(IxDyn(shape), values)
        .map_err(|e| Error::Format(format!("tensor `{name}`: {e}")))
}

impl TensorSource for SafeTensorsFile {
    fn names(&self) -> Vec<&str> {
        self.names.iter().map(String::as_str).collect()
    }

    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.metadata.info(name).map(|i| i.shape.clone())
    }

    fn tensor(&self, name: &str) -> Result<Tensor> {
        let info = self
            .metadata
            .info(name)
            .ok_or_else(|| Error::MissingTensor(name.to_string()))?;
        let (start, end) = info.data_offsets;
        // `from_bytes` validated every offset against the buffer length.
        let bytes = &self.bytes[self.data_start + start..self.data_start + end];
        let shape = &info.shape;
        Ok(match info.dtype {
            Dtype::F32 => Tensor::F32(array(name, shape, decode(bytes, f32::from_le_bytes))?),
            Dtype::F16 => Tensor::F16(array(
                name,
                shape,
                decode(bytes, |b| f16::from_bits(u16::from_le_bytes(b))),
            )?),
            Dtype::BF16 => Tensor::Bf16(array(
                name,
                shape,
                decode(bytes, |b| bf16::from_bits(u16::from_le_bytes(b))),
            )?),
            other => {
                return Err(Error::Dtype {
                    name: name.to_string(),
                    dtype: format!("{other:?}"),
                })
            }
        })
    }
}
