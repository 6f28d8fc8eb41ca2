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
    /// Writes the tensors as a safetensors file (each in its storage type), atomically
    /// ([`crate::write_atomic`]): if the write fails, a file already at `path` is left as it
    /// was. The bytes depend only on the tensors, whatever order they were inserted in: they
    /// are laid out by element size (largest first), then by name, and streamed to the file
    /// without a second copy in memory.
    ///
    /// # Errors
    /// [`Error::Io`] naming `path` if the file cannot be written.
    pub fn save(&self, path: impl AsRef<std::path::Path>) -> Result<()> {
        use crate::save::{SafeTensorsWriter, Values};
        let tensors = self
            .tensors
            .iter()
            .map(|(name, t)| {
                let values = match t {
                    Tensor::F32(a) => Values::F32(a.view()),
                    Tensor::F16(a) => Values::F16(a.view()),
                    Tensor::Bf16(a) => Values::Bf16(a.view()),
                };
                (name.clone(), values)
            })
            .collect();
        let file = SafeTensorsWriter::new(tensors, &Default::default())?;
        crate::save::write_atomic_with(path, |out| file.write(out))
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
