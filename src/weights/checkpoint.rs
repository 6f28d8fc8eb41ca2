//! Opening a checkpoint in any supported container, detected from the file itself (magic
//! bytes, header, names), never from the extension.

use super::{GgufFile, PthFile, SafeTensorsFile, TensorSource};
use crate::error::{Error, Result};
use crate::storage::SharedBytes;
use std::path::{Path, PathBuf};

/// A checkpoint's container.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Format {
    /// A safetensors file (BlinkDL names, or a single Hugging Face file).
    SafeTensors,
    /// A PyTorch `torch.save` zip archive (BlinkDL's `.pth` releases).
    Pth,
    /// A llama.cpp GGUF file.
    Gguf,
    /// A Hugging Face folder: `config.json` and one or several safetensors shards.
    HuggingFace,
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Format::SafeTensors => "safetensors",
            Format::Pth => "PyTorch .pth",
            Format::Gguf => "GGUF",
            Format::HuggingFace => "Hugging Face folder",
        })
    }
}

/// A checkpoint opened from a file, a folder or bytes: its container and its tensors under
/// the BlinkDL names the loaders read (other naming schemes are mapped on the way).
pub struct Checkpoint {
    format: Format,
    path: Option<PathBuf>,
    source: Box<dyn TensorSource>,
}

impl std::fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpoint")
            .field("format", &self.format)
            .field("path", &self.path)
            .field("tensors", &self.source.names().len())
            .finish()
    }
}

/// The name used in errors for a checkpoint read from bytes rather than a file.
pub(crate) const IN_MEMORY: &str = "(bytes in memory)";

impl Checkpoint {
    /// Opens the checkpoint at `path`: a folder is read as a Hugging Face folder, a file by its
    /// first bytes (`GGUF` → GGUF, a zip archive → PyTorch `.pth`, anything else must be a
    /// safetensors file). Files are memory-mapped, not read.
    ///
    /// # Errors
    /// [`Error::Io`] naming the path, or the error of the detected container's reader.
    pub fn open(path: impl AsRef<Path>) -> Result<Checkpoint> {
        let path = path.as_ref();
        let io = |source| Error::Io {
            path: path.to_path_buf(),
            source,
        };
        if path.is_dir() {
            return Ok(Checkpoint {
                format: Format::HuggingFace,
                path: Some(path.to_path_buf()),
                source: super::hf::open_folder(path)?,
            });
        }
        let file = std::fs::File::open(path).map_err(io)?;
        let bytes = SharedBytes::map(&file).map_err(io)?;
        let mut checkpoint = Self::from_shared(bytes, &path.display().to_string())?;
        checkpoint.path = Some(path.to_path_buf());
        Ok(checkpoint)
    }

    /// The checkpoint in `bytes` (the whole of a file), detected as [`Checkpoint::open`] does.
    ///
    /// # Errors
    /// The error of the detected container's reader.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Checkpoint> {
        Self::from_shared(SharedBytes::from_vec(bytes), IN_MEMORY)
    }

    /// The checkpoint in the bytes of a whole file; `name` names it in errors.
    fn from_shared(bytes: SharedBytes, name: &str) -> Result<Checkpoint> {
        let format = detect(bytes.as_slice());
        let source: Box<dyn TensorSource> = match format {
            Format::SafeTensors => {
                super::names::blinkdl_view(Box::new(SafeTensorsFile::from_shared(bytes)?), name)?
            }
            Format::Pth => {
                super::names::blinkdl_view(Box::new(PthFile::from_shared(bytes, name)?), name)?
            }
            Format::Gguf => Box::new(GgufFile::parse(bytes, name)?.into_rwkv()?),
            other => return Err(unsupported(other, Path::new(name))),
        };
        Ok(Checkpoint {
            format,
            path: None,
            source,
        })
    }

    /// The container.
    pub fn format(&self) -> Format {
        self.format
    }

    /// The file or folder it was opened from (`None` for bytes).
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The tensors under BlinkDL names.
    pub fn source(&self) -> &dyn TensorSource {
        &*self.source
    }
}

/// The container of a file from its first bytes.
fn detect(bytes: &[u8]) -> Format {
    if bytes.starts_with(b"GGUF") {
        Format::Gguf
    } else if bytes.starts_with(b"PK\x03\x04") {
        Format::Pth
    } else {
        Format::SafeTensors
    }
}

/// The error for a container the crate recognises but cannot read yet.
fn unsupported(format: Format, path: &Path) -> Error {
    Error::Checkpoint {
        format: match format {
            Format::SafeTensors => "safetensors",
            Format::Pth => "PyTorch .pth",
            Format::Gguf => "GGUF",
            Format::HuggingFace => "Hugging Face",
        },
        file: path.display().to_string(),
        what: "this container is not read yet".into(),
    }
}
