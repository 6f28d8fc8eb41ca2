//! How the crate writes files: atomically, and safetensors with bytes that depend only on
//! the content.
//!
//! [`write_atomic`] (and [`write_atomic_with`], which streams) writes to a temporary file in
//! the target's directory and renames it over the target only once every byte is written and
//! synced to disk. A write that fails half-way (disk full, a file-size limit, an error of the
//! caller's writer) leaves the target as it was and removes the temporary file. Every file the
//! crate and its examples write goes through here: [`State::save`](crate::State::save),
//! [`TensorMap::save`](crate::weights::TensorMap::save), the examples' outputs.
//!
//! [`SafeTensorsWriter`] lays out a safetensors file in one fixed order (tensors by element
//! size, largest first, then by name; header keys sorted), so the same tensors and metadata
//! always give the same bytes, and streams the data without a second copy of it.

use crate::error::{Error, Result};
use half::{bf16, f16};
use ndarray::ArrayViewD;
use safetensors::tensor::{Dtype, TensorInfo};
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Elements encoded at a time when a tensor is streamed.
const ENCODE_PIECE: usize = 1 << 14;

/// Names tried for the temporary file before giving up (each is new unless another process
/// picked the same one, which needs the same process id).
const NAME_ATTEMPTS: u32 = 64;

/// Temporary files made by this process so far, for unique names.
static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Replaces the file at `path` by `bytes`, atomically: see [`write_atomic_with`].
///
/// # Errors
/// [`Error::Io`] naming `path` when the directory cannot be written, the target is a
/// directory, or any write, sync or the rename fails; the target is then unchanged.
pub fn write_atomic(path: impl AsRef<Path>, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, |w| w.write_all(bytes))
}

/// Replaces the file at `path` by what `write` writes, atomically.
///
/// - `write` writes into a new temporary file `.{name}.{pid}.{n}.tmp` in the directory of
///   the target (created with `create_new`, so no other file is ever reused or truncated):
///   the directory must be writable, even where the target file itself is;
/// - the file is flushed and synced (`fsync`), then renamed over the target: a reader sees
///   the old file or the complete new one, and after a crash the target is one or the other;
/// - if anything fails (the directory is missing or read-only, `write` returns an error, the
///   disk is full, the sync or the rename fails), the temporary file is removed and the
///   target is left as it was;
/// - an existing target keeps its permission bits; a new one gets the default permissions
///   of a new file (as [`std::fs::write`] gives it). The owner and other attributes are the
///   writer's, since the target is a new file;
/// - if `path` is a symbolic link, the file it points to is replaced and the link kept;
/// - on Unix the directory is synced after the rename (best effort), so the rename itself
///   survives a crash.
///
/// # Errors
/// [`Error::Io`] naming `path` (the target, not the temporary file) with the operating
/// system's error, or the error `write` returned.
pub fn write_atomic_with(
    path: impl AsRef<Path>,
    write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<()> {
    let path = path.as_ref();
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let target = resolve_link(path);
    let (file, temp) = create_temp(&target).map_err(io)?;
    match fill(file, &target, write) {
        Ok(()) => {}
        Err(e) => {
            let _ = std::fs::remove_file(&temp);
            return Err(io(e));
        }
    }
    if let Err(e) = std::fs::rename(&temp, &target) {
        let _ = std::fs::remove_file(&temp);
        return Err(io(e));
    }
    sync_dir(&target);
    Ok(())
}

/// The file a symbolic link at `path` points to, or `path` itself (not a link, or a link
/// whose target cannot be resolved: then the link is replaced).
fn resolve_link(path: &Path) -> PathBuf {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => {
            std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
        }
        _ => path.to_path_buf(),
    }
}

/// The directory `target` is in (`.` for a bare file name).
fn parent_dir(target: &Path) -> &Path {
    match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Creates a new, uniquely named temporary file beside `target`.
fn create_temp(target: &Path) -> std::io::Result<(File, PathBuf)> {
    let name = target
        .file_name()
        .ok_or_else(|| std::io::Error::new(ErrorKind::InvalidInput, "the path names no file"))?;
    let dir = parent_dir(target);
    let pid = std::process::id();
    let mut last = None;
    for _ in 0..NAME_ATTEMPTS {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let mut temp_name = std::ffi::OsString::from(".");
        temp_name.push(name);
        temp_name.push(format!(".{pid}.{n}.tmp"));
        let temp = dir.join(temp_name);
        match OpenOptions::new().write(true).create_new(true).open(&temp) {
            Ok(file) => return Ok((file, temp)),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.expect("at least one attempt"))
}

/// Runs `write` into `file`, then flushes, copies the target's permissions and syncs.
fn fill(
    file: File,
    target: &Path,
    write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let mut out = BufWriter::new(file);
    write(&mut out)?;
    let file = out.into_inner().map_err(|e| e.into_error())?;
    match std::fs::metadata(target) {
        Ok(m) if m.is_file() => file.set_permissions(m.permissions())?,
        _ => {}
    }
    file.sync_all()
}

/// Syncs the directory holding `target`, so that the rename is on disk (Unix; errors are
/// ignored: the data itself is already synced).
fn sync_dir(target: &Path) {
    #[cfg(unix)]
    if let Ok(dir) = File::open(parent_dir(target)) {
        let _ = dir.sync_all();
    }
    #[cfg(not(unix))]
    let _ = target;
}

/// The values of one tensor to write, in any memory layout (written in logical, row-major
/// order).
pub(crate) enum Values<'a> {
    F32(ArrayViewD<'a, f32>),
    F16(ArrayViewD<'a, f16>),
    Bf16(ArrayViewD<'a, bf16>),
}

impl Values<'_> {
    fn dtype(&self) -> Dtype {
        match self {
            Values::F32(_) => Dtype::F32,
            Values::F16(_) => Dtype::F16,
            Values::Bf16(_) => Dtype::BF16,
        }
    }

    fn shape(&self) -> &[usize] {
        match self {
            Values::F32(a) => a.shape(),
            Values::F16(a) => a.shape(),
            Values::Bf16(a) => a.shape(),
        }
    }

    fn byte_len(&self) -> usize {
        self.shape().iter().product::<usize>() * self.dtype().bitsize() / 8
    }

    /// Writes the little-endian bytes, a piece of [`ENCODE_PIECE`] elements at a time.
    fn write(&self, out: &mut dyn Write) -> std::io::Result<()> {
        fn pieces<T: Copy, const B: usize>(
            values: &ArrayViewD<T>,
            to_le: fn(T) -> [u8; B],
            out: &mut dyn Write,
        ) -> std::io::Result<()> {
            let mut buf = Vec::with_capacity(ENCODE_PIECE * B);
            for &v in values.iter() {
                buf.extend_from_slice(&to_le(v));
                if buf.len() == ENCODE_PIECE * B {
                    out.write_all(&buf)?;
                    buf.clear();
                }
            }
            out.write_all(&buf)
        }
        match self {
            Values::F32(a) => pieces(a, f32::to_le_bytes, out),
            Values::F16(a) => pieces(a, f16::to_le_bytes, out),
            Values::Bf16(a) => pieces(a, bf16::to_le_bytes, out),
        }
    }
}

/// A safetensors file laid out in a fixed order: see the [module docs](self).
pub(crate) struct SafeTensorsWriter<'a> {
    /// Length prefix and header, padded with spaces to a multiple of 8 bytes.
    header: Vec<u8>,
    /// The tensors in file order.
    tensors: Vec<Values<'a>>,
}

impl<'a> SafeTensorsWriter<'a> {
    /// Lays out `tensors` (names unique) with `metadata` (written as `__metadata__` unless
    /// empty).
    ///
    /// # Errors
    /// [`Error::Format`] for a repeated name or a header larger than the format allows.
    pub(crate) fn new(
        mut tensors: Vec<(String, Values<'a>)>,
        metadata: &BTreeMap<String, String>,
    ) -> Result<Self> {
        tensors.sort_by(|(a, x), (b, y)| {
            (y.dtype().bitsize(), a.as_str()).cmp(&(x.dtype().bitsize(), b.as_str()))
        });
        let mut header: BTreeMap<String, serde_json::Value> = BTreeMap::new();
        if !metadata.is_empty() {
            header.insert("__metadata__".into(), serde_json::json!(metadata));
        }
        let mut offset = 0;
        for (name, values) in &tensors {
            let end = offset + values.byte_len();
            let info = TensorInfo {
                dtype: values.dtype(),
                shape: values.shape().to_vec(),
                data_offsets: (offset, end),
            };
            let info = serde_json::to_value(&info).map_err(|e| Error::Format(e.to_string()))?;
            if header.insert(name.clone(), info).is_some() || name == "__metadata__" {
                return Err(Error::Format(format!("tensor name `{name}` given twice")));
            }
            offset = end;
        }
        let mut json = serde_json::to_vec(&header).map_err(|e| Error::Format(e.to_string()))?;
        json.resize(json.len().next_multiple_of(8), b' ');
        if json.len() > 100_000_000 {
            return Err(Error::Format(format!(
                "a header of {} bytes is over the format's limit",
                json.len()
            )));
        }
        let mut bytes = (json.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(&json);
        Ok(SafeTensorsWriter {
            header: bytes,
            tensors: tensors.into_iter().map(|(_, v)| v).collect(),
        })
    }

    /// Writes the whole file to `out`.
    pub(crate) fn write(&self, out: &mut dyn Write) -> std::io::Result<()> {
        out.write_all(&self.header)?;
        self.tensors.iter().try_for_each(|t| t.write(out))
    }

    /// The whole file as bytes.
    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        let len = self.header.len() + self.tensors.iter().map(Values::byte_len).sum::<usize>();
        let mut out = Vec::with_capacity(len);
        self.write(&mut out).expect("writing to a Vec cannot fail");
        out
    }
}
