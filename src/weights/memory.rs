//! Tensors held in memory under their checkpoint names.

use super::{DType, Tensor, TensorSource};
use crate::error::{Error, Result};
use std::collections::HashMap;

/// A name → tensor map: a checkpoint built in memory (see [`crate::synthetic`]) or converted
/// from another format.
#[derive(Clone, Debug, Default)]
pub struct TensorMap {
    tensors: HashMap<String, Tensor>,
}

impl TensorMap {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) the tensor `name`.
    pub fn insert(&mut self, name: impl Into<String>, tensor: Tensor) {
        self.tensors.insert(name.into(), tensor);
    }

    /// Removes the tensor `name`, returning it.
    pub fn remove(&mut self, name: &str) -> Option<Tensor> {
        self.tensors.remove(name)
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    /// Whether there are no tensors.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }
}

impl TensorMap {
    /// Writes the tensors as a safetensors file (each in its storage type).
    ///
    /// # Errors
    /// [`Error::Io`] if the file cannot be written.
    pub fn save(&self, path: impl AsRef<std::path::Path>) -> Result<()> {
        use safetensors::tensor::{Dtype, TensorView};
        let path = path.as_ref();
        let encoded: Vec<(&str, Dtype, Vec<usize>, Vec<u8>)> = self
            .tensors
            .iter()
            .map(|(name, t)| {
                let (dtype, bytes): (Dtype, Vec<u8>) = match t {
                    Tensor::F32(a) => {
                        (Dtype::F32, a.iter().flat_map(|v| v.to_le_bytes()).collect())
                    }
                    Tensor::F16(a) => {
                        (Dtype::F16, a.iter().flat_map(|v| v.to_le_bytes()).collect())
                    }
                    Tensor::Bf16(a) => (
                        Dtype::BF16,
                        a.iter().flat_map(|v| v.to_le_bytes()).collect(),
                    ),
                };
                (name.as_str(), dtype, t.shape().to_vec(), bytes)
            })
            .collect();
        let views = encoded
            .iter()
            .map(|(name, dtype, shape, bytes)| {
                TensorView::new(*dtype, shape.clone(), bytes)
                    .map(|v| (*name, v))
                    .map_err(|e| Error::Format(e.to_string()))
            })
            .collect::<Result<Vec<_>>>()?;
        safetensors::serialize_to_file(views, None, path).map_err(|e| match e {
            safetensors::SafeTensorError::IoError(source) => Error::Io {
                path: path.to_path_buf(),
                source,
            },
            other => Error::Format(other.to_string()),
        })
    }
}

impl TensorSource for TensorMap {
    fn names(&self) -> Vec<&str> {
        self.tensors.keys().map(String::as_str).collect()
    }

    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.tensors.get(name).map(|t| t.shape().to_vec())
    }

    fn dtype(&self, name: &str) -> Option<Result<DType, String>> {
        self.tensors.get(name).map(|t| Ok(t.dtype()))
    }

    fn tensor(&self, name: &str) -> Result<Tensor> {
        self.tensors
            .get(name)
            .cloned()
            .ok_or_else(|| Error::MissingTensor(name.to_string()))
    }
}
