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
//! [`SafeTensorsStream`] writes the same layout tensor by tensor from a
//! [`TensorSource`](crate::weights::TensorSource), converting each as it goes, so a checkpoint
//! of any size is rewritten holding at most one tensor in memory.

use crate::error::{Error, Result};
use crate::weights::{element_size, DType, Tensor, TensorSource};
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
        tensors: Vec<(String, Values<'a>)>,
        metadata: &BTreeMap<String, String>,
    ) -> Result<Self> {
        let described = tensors
            .iter()
            .map(|(name, v)| (name.as_str(), v.dtype(), v.shape()))
            .collect();
        let (header, order) = layout(described, metadata)?;
        let mut slots: Vec<Option<Values<'a>>> =
            tensors.into_iter().map(|(_, v)| Some(v)).collect();
        Ok(SafeTensorsWriter {
            header,
            tensors: order
                .into_iter()
                .map(|i| slots[i].take().expect("each index once"))
                .collect(),
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

/// The header of a safetensors file holding `tensors` (name, type, shape) with `metadata`,
/// as written (length prefix, then the JSON padded with spaces to a multiple of 8 bytes), and
/// the file order of the tensors as indices into `tensors`: by element size, largest first,
/// then by name.
///
/// # Errors
/// [`Error::Format`] for a repeated name, a size that overflows, or a header larger than the
/// format allows.
fn layout(
    tensors: Vec<(&str, Dtype, &[usize])>,
    metadata: &BTreeMap<String, String>,
) -> Result<(Vec<u8>, Vec<usize>)> {
    let mut order: Vec<usize> = (0..tensors.len()).collect();
    order.sort_by(|&i, &j| {
        let (a, x, _) = tensors[i];
        let (b, y, _) = tensors[j];
        (y.bitsize(), a).cmp(&(x.bitsize(), b))
    });
    let mut header: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    if !metadata.is_empty() {
        header.insert("__metadata__".into(), serde_json::json!(metadata));
    }
    let mut offset = 0usize;
    for &i in &order {
        let (name, dtype, shape) = tensors[i];
        let len = shape
            .iter()
            .try_fold(dtype.bitsize() / 8, |acc, &d| acc.checked_mul(d))
            .and_then(|len| offset.checked_add(len))
            .ok_or_else(|| Error::Format(format!("tensor `{name}`: {shape:?} overflows")))?;
        let info = TensorInfo {
            dtype,
            shape: shape.to_vec(),
            data_offsets: (offset, len),
        };
        let info = serde_json::to_value(&info).map_err(|e| Error::Format(e.to_string()))?;
        if header.insert(name.to_string(), info).is_some() || name == "__metadata__" {
            return Err(Error::Format(format!("tensor name `{name}` given twice")));
        }
        offset = len;
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
    Ok((bytes, order))
}

/// The safetensors type of `dtype`.
fn st_dtype(dtype: DType) -> Dtype {
    match dtype {
        DType::F32 => Dtype::F32,
        DType::F16 => Dtype::F16,
        DType::Bf16 => Dtype::BF16,
    }
}

/// One tensor of a [`SafeTensorsStream`]: its name, the type it is written in and its shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamEntry {
    /// The tensor's name in the file (and in the source it is read from).
    pub name: String,
    /// The type it is written in (converted to it from the stored type if they differ).
    pub dtype: DType,
    /// The shape, outermost axis first.
    pub shape: Vec<usize>,
}

impl StreamEntry {
    /// Bytes of the tensor's values in the file.
    pub fn byte_len(&self) -> usize {
        self.shape.iter().product::<usize>() * element_size(self.dtype)
    }
}

/// A safetensors file written one tensor at a time from a [`TensorSource`], converting each
/// to the type its [`StreamEntry`] names: the header is laid out from the names, shapes and
/// types alone (tensors by element size, largest first, then by name; header keys sorted: the
/// bytes [`TensorMap::save`](crate::weights::TensorMap::save) writes for the same tensors), then
/// each tensor is read, converted and written in turn. A tensor the source holds in place
/// ([`TensorSource::raw`], e.g. in a memory-mapped file) is converted piece by piece from its
/// bytes, with no copy of the whole tensor; any other is read whole, one at a time. Narrowing
/// rounds to nearest, as [`Tensor::to_dtype`] does; a tensor written in its stored type is
/// copied bit for bit.
#[derive(Clone, Debug)]
pub struct SafeTensorsStream {
    header: Vec<u8>,
    entries: Vec<StreamEntry>,
}

/// Why a streamed write stopped: the output failed, or a tensor could not be read.
enum Stop {
    Output(std::io::Error),
    Source(Error),
}

impl From<std::io::Error> for Stop {
    fn from(e: std::io::Error) -> Stop {
        Stop::Output(e)
    }
}

/// Bytes copied or converted per write when a tensor is streamed from its stored bytes.
const COPY_PIECE: usize = 1 << 22;

impl SafeTensorsStream {
    /// Lays out a file holding `entries` (names unique) with `metadata` (written as
    /// `__metadata__` unless empty).
    ///
    /// # Errors
    /// [`Error::Format`] for a repeated name, a size that overflows, or a header larger than
    /// the format allows.
    pub fn new(entries: Vec<StreamEntry>, metadata: &BTreeMap<String, String>) -> Result<Self> {
        let described = entries
            .iter()
            .map(|e| (e.name.as_str(), st_dtype(e.dtype), e.shape.as_slice()))
            .collect();
        let (header, order) = layout(described, metadata)?;
        let mut slots: Vec<Option<StreamEntry>> = entries.into_iter().map(Some).collect();
        Ok(SafeTensorsStream {
            header,
            entries: order
                .into_iter()
                .map(|i| slots[i].take().expect("each index once"))
                .collect(),
        })
    }

    /// The tensors in file order.
    pub fn entries(&self) -> &[StreamEntry] {
        &self.entries
    }

    /// The length of the whole file in bytes.
    pub fn file_len(&self) -> u64 {
        self.header.len() as u64
            + self
                .entries
                .iter()
                .map(|e| e.byte_len() as u64)
                .sum::<u64>()
    }

    /// Writes the file to `path` atomically ([`write_atomic_with`]), each tensor read from
    /// `source` under its entry's name and converted to the entry's type; `progress` is called
    /// with the bytes written so far, after the header and after each piece of a tensor.
    ///
    /// # Errors
    /// [`Error::MissingTensor`] for a tensor `source` lacks, [`Error::Shape`] for one whose
    /// shape differs from its entry's, the source's own error for one it cannot read, or
    /// [`Error::Io`] naming `path` if the file cannot be written; the target is then unchanged.
    pub fn save(
        &self,
        path: impl AsRef<Path>,
        source: &dyn TensorSource,
        progress: &mut dyn FnMut(u64),
    ) -> Result<()> {
        let mut failed = None;
        let written = write_atomic_with(path, |out| match self.write(out, source, progress) {
            Ok(()) => Ok(()),
            Err(Stop::Output(e)) => Err(e),
            Err(Stop::Source(e)) => {
                let message = e.to_string();
                failed = Some(e);
                Err(std::io::Error::other(message))
            }
        });
        match failed {
            Some(e) => Err(e),
            None => written,
        }
    }

    /// Writes the whole file to `out`.
    fn write(
        &self,
        out: &mut dyn Write,
        source: &dyn TensorSource,
        progress: &mut dyn FnMut(u64),
    ) -> std::result::Result<(), Stop> {
        let mut out = Counted {
            out,
            done: 0,
            progress,
        };
        out.write_all(&self.header)?;
        for entry in &self.entries {
            let shape_error = |found: &[usize]| {
                Stop::Source(Error::Shape {
                    name: entry.name.clone(),
                    expected: format!("{:?}", entry.shape),
                    found: found.to_vec(),
                })
            };
            if let Some(raw) = source.raw(&entry.name) {
                if raw.shape != entry.shape {
                    return Err(shape_error(&raw.shape));
                }
                write_converted(&mut out, raw.bytes.as_slice(), raw.dtype, entry.dtype)?;
                continue;
            }
            let tensor = source.tensor(&entry.name).map_err(Stop::Source)?;
            if tensor.shape() != entry.shape.as_slice() {
                return Err(shape_error(tensor.shape()));
            }
            write_tensor(&mut out, &tensor, entry.dtype)?;
        }
        Ok(())
    }
}

/// A writer that reports the bytes written through it so far after every write.
struct Counted<'a> {
    out: &'a mut dyn Write,
    done: u64,
    progress: &'a mut dyn FnMut(u64),
}

impl Write for Counted<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.out.write(buf)?;
        self.done += n as u64;
        (self.progress)(self.done);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// Writes `tensor`'s values as `to`, little-endian, a piece at a time (widened to f32 and
/// narrowed element by element when the types differ).
fn write_tensor(out: &mut dyn Write, tensor: &Tensor, to: DType) -> std::io::Result<()> {
    fn converted<T: Copy>(
        values: &ndarray::ArrayD<T>,
        wide: fn(T) -> f32,
        to: DType,
        out: &mut dyn Write,
    ) -> std::io::Result<()> {
        let mut piece = Vec::with_capacity(ENCODE_PIECE * 4);
        for &v in values.iter() {
            encode(wide(v), to, &mut piece);
            if piece.len() >= ENCODE_PIECE * 4 {
                out.write_all(&piece)?;
                piece.clear();
            }
        }
        out.write_all(&piece)
    }
    match (tensor, to) {
        (Tensor::F32(a), DType::F32) => Values::F32(a.view()).write(out),
        (Tensor::F16(a), DType::F16) => Values::F16(a.view()).write(out),
        (Tensor::Bf16(a), DType::Bf16) => Values::Bf16(a.view()).write(out),
        (Tensor::F32(a), _) => converted(a, |v| v, to, out),
        (Tensor::F16(a), _) => converted(a, f16::to_f32, to, out),
        (Tensor::Bf16(a), _) => converted(a, bf16::to_f32, to, out),
    }
}

/// Appends `v` in `dtype`, little-endian, rounded to nearest when narrowing.
fn encode(v: f32, dtype: DType, out: &mut Vec<u8>) {
    match dtype {
        DType::F32 => out.extend_from_slice(&v.to_le_bytes()),
        DType::F16 => out.extend_from_slice(&f16::from_f32(v).to_le_bytes()),
        DType::Bf16 => out.extend_from_slice(&bf16::from_f32(v).to_le_bytes()),
    }
}

/// Writes `bytes` (little-endian values of type `from`) as values of type `to`, a piece at a
/// time: copied as they are when the types agree.
fn write_converted(
    out: &mut dyn Write,
    bytes: &[u8],
    from: DType,
    to: DType,
) -> std::io::Result<()> {
    if from == to {
        return bytes
            .chunks(COPY_PIECE)
            .try_for_each(|piece| out.write_all(piece));
    }
    let size = element_size(from);
    let mut converted = Vec::with_capacity(COPY_PIECE / size * element_size(to));
    for piece in bytes.chunks(COPY_PIECE - COPY_PIECE % size) {
        converted.clear();
        for v in piece.chunks_exact(size) {
            let wide = match from {
                DType::F32 => f32::from_le_bytes([v[0], v[1], v[2], v[3]]),
                DType::F16 => f16::from_le_bytes([v[0], v[1]]).to_f32(),
                DType::Bf16 => bf16::from_le_bytes([v[0], v[1]]).to_f32(),
            };
            encode(wide, to, &mut converted);
        }
        out.write_all(&converted)?;
    }
    Ok(())
}
