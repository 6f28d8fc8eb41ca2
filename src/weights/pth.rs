//! Reading PyTorch checkpoints written by `torch.save` (BlinkDL's `.pth` releases).
//!
//! Such a file is a zip archive whose entries are stored, not compressed, under one folder
//! (named after the file it was first saved as, so it varies): `<folder>/data.pkl` pickles the
//! state dict, a dict of names to tensors, and each tensor's bytes are the entry
//! `<folder>/data/<key>` of the storage it views (torch aligns the entries' data to 64 bytes).
//! The pickle is read by the restricted reader of [`super::pickle`], which never executes
//! anything; each tensor becomes a [`TableEntry`] over its bytes in place in the file, so a
//! memory-mapped `.pth` is used without a copy, as a safetensors file is.
//!
//! Tensors must be row-major and contiguous (any stride is accepted along an axis of size 1);
//! a view with other strides (a transpose, a slice of columns) is refused with an error that
//! names it. Storages of f32, f16 and bf16 are read; a tensor of any other storage type (`Long`,
//! `Double`, ...) is listed with that type, so asking for it is an [`Error::Dtype`].

use super::pickle::{self, TensorRecord};
use super::table::{TableEntry, TensorTable};
use crate::error::{Error, Result};
use crate::storage::SharedBytes;
use std::collections::HashMap;
use std::ops::Range;
use std::path::Path;

/// A PyTorch `.pth` checkpoint whose archive and pickle have been read and checked, its
/// tensors seen in place in the file's bytes (memory-mapped when opened from a path).
pub struct PthFile {
    table: TensorTable,
}

impl std::fmt::Debug for PthFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PthFile")
            .field("tensors", &self.table.ordered_names().len())
            .finish()
    }
}

/// The error for the checkpoint `file`.
fn error(file: &str, what: impl Into<String>) -> Error {
    Error::Checkpoint {
        format: "PyTorch .pth",
        file: file.to_string(),
        what: what.into(),
    }
}

impl PthFile {
    /// Opens the `.pth` file at `path`, maps it into memory and reads its archive and pickle
    /// (see [`PthFile::from_shared`]).
    ///
    /// # Errors
    /// [`Error::Io`] if it cannot be read, else as [`PthFile::from_shared`].
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let io = |source| Error::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        let bytes = SharedBytes::map(&file).map_err(io)?;
        Self::from_shared(bytes, &path.display().to_string())
    }

    /// Reads `bytes` (a whole `.pth` file) as [`PthFile::from_shared`] does; errors name the
    /// file as bytes in memory. This is the entry point for fuzzing.
    ///
    /// # Errors
    /// As [`PthFile::from_shared`].
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self> {
        Self::from_shared(SharedBytes::from_vec(bytes), super::checkpoint::IN_MEMORY)
    }

    /// Reads `bytes` (a whole `.pth` file, `file` naming it in errors): the zip archive's
    /// directory, the state dict pickle, and every tensor's place in its storage.
    ///
    /// # Errors
    /// [`Error::Checkpoint`] naming the file and what is wrong: not a zip archive, no
    /// `<folder>/data.pkl` entry, a compressed entry, a big-endian archive, a pickle the
    /// restricted reader refuses (its message names the opcode, class or key), a storage entry
    /// missing or of another size than its element count says, a tensor whose shape and offset
    /// reach past its storage or whose strides are not row-major, or a name given twice.
    pub fn from_shared(bytes: SharedBytes, file: &str) -> Result<Self> {
        let entries = read_state_dict(bytes.as_slice()).map_err(|what| error(file, what))?;
        let table = TensorTable::new(bytes, entries).map_err(|what| error(file, what))?;
        Ok(PthFile { table })
    }

    /// The tensors, in the pickle's order.
    pub fn table(&self) -> &TensorTable {
        &self.table
    }
}

/// The archive's entries that matter: where each one's data lies in the file.
struct Archive {
    /// The folder everything is under (`archive`, or the name the file was saved as).
    folder: String,
    /// Entry name → byte range of its (stored) data.
    entries: HashMap<String, Range<usize>>,
}

/// Reads the zip archive's central directory. Entries that torch does not write compressed
/// are refused if compressed; the others (`.format_version`, `version`, ...) are not read.
fn archive(bytes: &[u8]) -> std::result::Result<Archive, String> {
    let zip = rawzip::ZipArchive::from_slice(bytes)
        .map_err(|e| format!("not a readable zip archive: {e}"))?;
    let mut entries = HashMap::new();
    let mut pickles = Vec::new();
    let mut listing = zip.entries();
    while let Some(entry) = listing
        .next_entry()
        .map_err(|e| format!("the zip directory is malformed: {e}"))?
    {
        let name = String::from_utf8_lossy(entry.file_path().as_bytes()).into_owned();
        if entry.is_dir() {
            continue;
        }
        let method = entry.compression_method();
        let wayfinder = entry.wayfinder();
        let located = zip
            .get_entry(wayfinder)
            .map_err(|e| format!("entry `{name}`: {e}"))?;
        let (start, end) = located.compressed_data_range();
        let range = usize::try_from(start).map_err(|_| format!("entry `{name}` lies too far"))?
            ..usize::try_from(end).map_err(|_| format!("entry `{name}` lies too far"))?;
        if method != rawzip::CompressionMethod::STORE
            || wayfinder.uncompressed_size_hint() != wayfinder.compressed_size_hint()
        {
            // Only data.pkl, byteorder and the storages are read: refuse those compressed.
            let read = name.ends_with("/data.pkl")
                || name.ends_with("/byteorder")
                || name.contains("/data/");
            if read {
                return Err(format!(
                    "entry `{name}` is compressed ({method:?}); torch.save stores entries \
                     uncompressed, which is what is read"
                ));
            }
            continue;
        }
        if let Some(folder) = name.strip_suffix("/data.pkl") {
            if !folder.contains('/') {
                pickles.push(folder.to_string());
            }
        }
        if entries.insert(name.clone(), range).is_some() {
            return Err(format!("entry `{name}` appears twice"));
        }
    }
    let folder = match &pickles[..] {
        [one] => one.clone(),
        [] => {
            return Err(
                "a zip archive with no `<folder>/data.pkl` entry: not a torch.save \
                        checkpoint"
                    .into(),
            )
        }
        [a, b, ..] => return Err(format!("two pickles, `{a}/data.pkl` and `{b}/data.pkl`")),
    };
    Ok(Archive { folder, entries })
}

/// Parses the archive and pickle of a `.pth` file into table entries over `bytes`.
fn read_state_dict(bytes: &[u8]) -> std::result::Result<Vec<(String, TableEntry)>, String> {
    let archive = archive(bytes)?;
    let folder = &archive.folder;
    if let Some(range) = archive.entries.get(&format!("{folder}/byteorder")) {
        let order = &bytes[range.clone()];
        if order != b"little" {
            return Err(format!(
                "the tensors are stored `{}`-endian (only little-endian is read)",
                String::from_utf8_lossy(order)
            ));
        }
    }
    let pickle = &bytes[archive.entries[&format!("{folder}/data.pkl")].clone()];
    let tensors = pickle::state_dict(pickle).map_err(|e| format!("{folder}/data.pkl: {e}"))?;
    tensors
        .into_iter()
        .map(|(name, record)| {
            let entry =
                table_entry(&archive, &record).map_err(|e| format!("tensor `{name}`: {e}"))?;
            Ok((name, entry))
        })
        .collect()
}

/// Where the values of the tensor `record` lie in the file, checked against its storage.
fn table_entry(
    archive: &Archive,
    record: &TensorRecord,
) -> std::result::Result<TableEntry, String> {
    let storage = &record.storage;
    let entry = format!("{}/data/{}", archive.folder, storage.key);
    let range = archive
        .entries
        .get(&entry)
        .ok_or_else(|| format!("its storage has no entry `{entry}`"))?;
    let size = storage.kind.element_size as u64;
    let bytes = storage.numel.checked_mul(size);
    if bytes != Some(range.len() as u64) {
        return Err(format!(
            "storage `{entry}` holds {} bytes, not {} {}-byte elements",
            range.len(),
            storage.numel,
            size
        ));
    }
    let shape: Vec<usize> = record
        .shape
        .iter()
        .map(|&d| usize::try_from(d))
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| format!("shape {:?} is too large", record.shape))?;
    let numel = record
        .shape
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| format!("shape {:?} overflows", record.shape))?;
    // Row-major and contiguous: along each axis longer than 1, the stride is the number of
    // elements of one step of it.
    let mut expected = 1u64;
    for (axis, (&d, &s)) in record.shape.iter().zip(&record.stride).enumerate().rev() {
        if d > 1 && s != expected {
            return Err(format!(
                "shape {:?} with strides {:?} is not row-major and contiguous (axis {axis} \
                 has stride {s}, not {expected}); save it with .contiguous()",
                record.shape, record.stride
            ));
        }
        expected = expected.saturating_mul(d);
    }
    let end = record
        .offset
        .checked_add(numel)
        .filter(|&end| numel == 0 || end <= storage.numel)
        .ok_or_else(|| {
            format!(
                "{} elements from offset {} do not fit its storage `{entry}` of {} elements",
                numel, record.offset, storage.numel
            )
        })?;
    let (start, end) = if numel == 0 {
        (range.start, range.start)
    } else {
        // Within the storage's entry, whose length was checked above.
        (
            range.start + (record.offset * size) as usize,
            range.start + (end * size) as usize,
        )
    };
    Ok(TableEntry {
        dtype: storage.kind.dtype(),
        shape,
        range: start..end,
    })
}

super::table::tensor_source_via_table!(PthFile);

#[cfg(test)]
mod tests {
    use super::super::pickle::tests::Pickle;
    use super::*;
    use crate::weights::TensorSource;
    use std::io::Write;

    /// A zip archive of stored entries (or entries marked with `method`).
    fn zip(files: &[(&str, &[u8])], method: rawzip::CompressionMethod) -> Vec<u8> {
        let mut out = Vec::new();
        let mut ar = rawzip::ZipArchiveWriter::new(&mut out);
        for (name, data) in files {
            let (mut entry, config) = ar
                .new_file(*name)
                .compression_method(if name.ends_with(".pkl") {
                    method
                } else {
                    rawzip::CompressionMethod::STORE
                })
                .start()
                .unwrap();
            let mut w = config.wrap(&mut entry);
            w.write_all(data).unwrap();
            let (_, descriptor) = w.finish().unwrap();
            entry.finish(descriptor).unwrap();
        }
        ar.finish().unwrap();
        out
    }

    fn f32s(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    /// A checkpoint under `folder` with the pickle `pkl` and storage `0` of six f32 values
    /// (and storage `1` of four i64 values).
    fn checkpoint(folder: &str, pkl: &Pickle) -> Vec<u8> {
        let storage = f32s(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let longs = [0u8; 32];
        let names = [
            format!("{folder}/data.pkl"),
            format!("{folder}/byteorder"),
            format!("{folder}/data/0"),
            format!("{folder}/data/1"),
        ];
        let files: Vec<(&str, &[u8])> = vec![
            (&names[0], &pkl.0),
            (&names[1], b"little"),
            (&names[2], &storage),
            (&names[3], &longs),
        ];
        zip(&files, rawzip::CompressionMethod::STORE)
    }

    fn tensor(name: &str, numel: u32, offset: u32, shape: &[u32], stride: &[u32]) -> Pickle {
        Pickle::default().tensor(name, "FloatStorage", "0", numel, offset, shape, stride)
    }

    #[test]
    fn tensors_are_views_of_their_storage_in_place() {
        let pkl = Pickle::dict(vec![
            tensor("m", 6, 0, &[2, 3], &[3, 1]),
            tensor("tail", 6, 4, &[2], &[1]),
            tensor("row", 6, 1, &[1, 2], &[7, 1]),
            tensor("none", 6, 6, &[0, 5], &[5, 1]),
            Pickle::default().tensor("ids", "LongStorage", "1", 4, 0, &[4], &[1]),
        ]);
        let file = PthFile::from_bytes(checkpoint("anything", &pkl)).unwrap();
        assert_eq!(file.names(), ["m", "tail", "row", "none", "ids"]);
        let values = |n: &str| {
            file.tensor(n)
                .unwrap()
                .to_f32()
                .iter()
                .copied()
                .collect::<Vec<_>>()
        };
        assert_eq!(values("m"), [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        assert_eq!(file.shape("m"), Some(vec![2, 3]));
        assert_eq!(values("tail"), [5.0, 6.0]);
        assert_eq!(values("row"), [2.0, 3.0]);
        assert_eq!(values("none"), Vec::<f32>::new());
        assert_eq!(file.dtype("ids"), Some(Err("Long".into())));
        assert!(matches!(file.tensor("ids"), Err(Error::Dtype { dtype, .. }) if dtype == "Long"));
        assert!(file.raw("m").is_some());
    }

    #[test]
    fn malformed_checkpoints_are_errors_naming_the_file_and_the_fault() {
        let ok = |t: Pickle| checkpoint("archive", &Pickle::dict(vec![t]));
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (
                b"PK\x03\x04 not really".to_vec(),
                "not a readable zip archive",
            ),
            (
                zip(
                    &[("x/other.txt", b"hello")],
                    rawzip::CompressionMethod::STORE,
                ),
                "no `<folder>/data.pkl` entry",
            ),
            (
                zip(
                    &[("a/data.pkl", b"\x80\x02}."), ("b/data.pkl", b"\x80\x02}.")],
                    rawzip::CompressionMethod::STORE,
                ),
                "two pickles",
            ),
            (
                zip(
                    &[("a/data.pkl", b"\x80\x02}.")],
                    rawzip::CompressionMethod::DEFLATE,
                ),
                "entry `a/data.pkl` is compressed",
            ),
            (
                zip(
                    &[("a/data.pkl", b"\x80\x02}."), ("a/byteorder", b"big")],
                    rawzip::CompressionMethod::STORE,
                ),
                "`big`-endian",
            ),
            (
                checkpoint(
                    "archive",
                    &Pickle::default().op(b"\x80\x02}q\x00cos\nsystem\n"),
                ),
                "archive/data.pkl: GLOBAL at byte 5: class `os.system` is not allowed",
            ),
            (
                checkpoint("archive", &Pickle::default().op(b"\x80\x02}(")),
                "archive/data.pkl: truncated",
            ),
            (
                ok(tensor("big", 6, 0, &[2, 4], &[4, 1])),
                "tensor `big`: 8 elements from offset 0 do not fit its storage",
            ),
            (
                ok(tensor("late", 6, 5, &[2], &[1])),
                "tensor `late`: 2 elements from offset 5",
            ),
            (
                ok(tensor("claims", 7, 0, &[2], &[1])),
                "tensor `claims`: storage `archive/data/0` holds 24 bytes, not 7",
            ),
            (
                ok(tensor("t", 6, 0, &[3, 2], &[1, 3])),
                "tensor `t`: shape [3, 2] with strides [1, 3] is not row-major",
            ),
            (
                ok(tensor("huge", 6, 0, &[i32::MAX as u32; 3], &[0, 0, 1])),
                "tensor `huge`: shape [2147483647, 2147483647, 2147483647] overflows",
            ),
            (
                ok(Pickle::default().tensor("k", "FloatStorage", "9", 1, 0, &[1], &[1])),
                "tensor `k`: its storage has no entry `archive/data/9`",
            ),
            (
                checkpoint(
                    "archive",
                    &Pickle::dict(vec![
                        tensor("a", 6, 0, &[2], &[1]),
                        tensor("a", 6, 2, &[2], &[1]),
                    ]),
                ),
                "tensor `a` appears twice",
            ),
        ];
        for (bytes, want) in cases {
            let err = PthFile::from_bytes(bytes).unwrap_err();
            let text = err.to_string();
            assert!(
                matches!(
                    err,
                    Error::Checkpoint {
                        format: "PyTorch .pth",
                        ..
                    }
                ),
                "{text}"
            );
            assert!(text.contains("(bytes in memory)"), "{text}");
            assert!(text.contains(want), "{want:?} not in {text:?}");
        }
    }

    #[test]
    fn every_truncation_of_a_checkpoint_is_an_error() {
        let bytes = checkpoint(
            "archive",
            &Pickle::dict(vec![tensor("m", 6, 0, &[6], &[1])]),
        );
        assert!(PthFile::from_bytes(bytes.clone()).is_ok());
        for n in 0..bytes.len() {
            assert!(
                PthFile::from_bytes(bytes[..n].to_vec()).is_err(),
                "{n} bytes"
            );
        }
    }
}
