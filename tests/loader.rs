//! The loader rejects files whose tensors do not cover their data exactly, and checks every
//! tensor's name, shape and type from the header before it reads any tensor data.

mod common;

use common::*;
use safetensors::tensor::Dtype;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::PathBuf;
use std::sync::Mutex;
use tokenshift::weights::{SafeTensorsFile, Tensor, TensorSource};
use tokenshift::{Config, DType, Error, Model};

/// The system allocator, keeping for each thread the bytes it has allocated and not freed
/// since [`peak_bytes`] started watching it, and the most that ever were.
struct Tracking;

thread_local! {
    /// Whether this thread's allocations are being counted.
    static WATCHED: Cell<bool> = const { Cell::new(false) };
    /// Bytes allocated less bytes freed while watched (negative when older memory is freed).
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn track(grown: isize) {
    let _ = WATCHED.try_with(|watched| {
        if watched.get() {
            let live = LIVE.with(|l| {
                l.set(l.get() + grown);
                l.get()
            });
            PEAK.with(|p| p.set(p.get().max(live)));
        }
    });
}

// SAFETY: every call is forwarded unchanged to the system allocator; tracking touches only
// const-initialised thread-local cells, which do not allocate.
unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        track(layout.size() as isize);
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        track(layout.size() as isize);
        System.alloc_zeroed(layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        track(new_size as isize - layout.size() as isize);
        System.realloc(ptr, layout, new_size)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        track(-(layout.size() as isize));
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static ALLOCATOR: Tracking = Tracking;

/// What `f` returns, and the most heap memory it held at once on the calling thread.
fn peak_bytes<R>(f: impl FnOnce() -> R) -> (R, usize) {
    LIVE.with(|l| l.set(0));
    PEAK.with(|p| p.set(0));
    WATCHED.with(|w| w.set(true));
    let r = f();
    WATCHED.with(|w| w.set(false));
    (r, PEAK.with(Cell::get) as usize)
}

/// A directory of its own under the system's temporary directory, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(what: &str) -> TempDir {
        let dir =
            std::env::temp_dir().join(format!("tokenshift-loader-{what}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Copies of `good` (a safetensors file) that no longer cover their data exactly: the
/// header-length field 1 to 7 smaller and 1 to 8 larger, and 1 and 8 bytes appended. Each is
/// named by what was done to it.
fn miscovered(good: &[u8]) -> Vec<(String, Vec<u8>)> {
    let header_len = u64::from_le_bytes(good[..8].try_into().unwrap());
    let with_header_len = |n: u64| {
        let mut bytes = good.to_vec();
        bytes[..8].copy_from_slice(&n.to_le_bytes());
        bytes
    };
    let mut out: Vec<(String, Vec<u8>)> = (1..=7)
        .map(|d| {
            (
                format!("header length {d} too small"),
                with_header_len(header_len - d),
            )
        })
        .collect();
    out.extend((1..=8).map(|d| {
        (
            format!("header length {d} too large"),
            with_header_len(header_len + d),
        )
    }));
    for extra in [1, 8] {
        let mut bytes = good.to_vec();
        bytes.extend(std::iter::repeat_n(0u8, extra));
        out.push((format!("{extra} bytes appended"), bytes));
    }
    out
}

fn write(dir: &TempDir, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn assert_format_error<T>(what: &str, result: tokenshift::Result<T>) {
    match result {
        Err(Error::Format(_)) => {}
        Err(other) => panic!("{what}: expected a format error, got {other}"),
        Ok(_) => panic!("{what}: loaded"),
    }
}

#[test]
fn model_file_must_cover_its_data_exactly() {
    let good = std::fs::read(fixture("v6-a").join("model.safetensors")).unwrap();
    let dir = TempDir::new("model");
    Model::load(write(&dir, "good.safetensors", &good)).expect("the fixture itself loads");
    for (i, (what, bytes)) in miscovered(&good).into_iter().enumerate() {
        let path = write(&dir, &format!("bad-{i}.safetensors"), &bytes);
        assert_format_error(&format!("Model::load, {what}"), Model::load(&path));
        assert_format_error(
            &format!("Model::load_as, {what}"),
            Model::load_as(&path, tokenshift::DType::F16),
        );
        assert_format_error(
            &format!("Model::from_bytes, {what}"),
            Model::from_bytes(bytes),
        );
    }
}

#[test]
fn state_file_must_cover_its_data_exactly() {
    let model = load_model(&fixture("v6-a"));
    let mut state = model.init_state();
    model
        .forward(&[1, 2, 3], &mut state, tokenshift::Logits::Last)
        .unwrap();
    let dir = TempDir::new("state");
    let good_path = dir.join("good.safetensors");
    state.save(&good_path).unwrap();
    assert_eq!(model.load_state(&good_path).unwrap(), state);
    let good = std::fs::read(&good_path).unwrap();
    for (i, (what, bytes)) in miscovered(&good).into_iter().enumerate() {
        let path = write(&dir, &format!("bad-{i}.safetensors"), &bytes);
        assert_format_error(
            &format!("Model::load_state, {what}"),
            model.load_state(&path),
        );
        assert_format_error(
            &format!("State::load, {what}"),
            tokenshift::State::load(&path, model.config()),
        );
        assert_format_error(
            &format!("State::from_bytes, {what}"),
            tokenshift::State::from_bytes(bytes, model.config()),
        );
    }
}

/// A file whose header names a tensor larger than the file is refused before anything of that
/// size is allocated, and so is a header-length field larger than the file or the format's
/// limit.
#[test]
fn sizes_in_a_header_are_bounded_by_the_file() {
    let dir = TempDir::new("bounds");
    let good = std::fs::read(fixture("v4-a").join("model.safetensors")).unwrap();
    let file_len = good.len() as u64;
    for header_len in [file_len - 7, file_len, 100_000_001, u64::MAX / 2, u64::MAX] {
        let mut bytes = good.clone();
        bytes[..8].copy_from_slice(&header_len.to_le_bytes());
        let path = write(&dir, "long-header.safetensors", &bytes);
        assert_format_error(&format!("header length {header_len}"), Model::load(&path));
        assert_format_error(
            &format!("header length {header_len}"),
            Model::from_bytes(bytes),
        );
    }
    // One tensor claiming 2^40 f32 elements, in a file of a few hundred bytes.
    let header = br#"{"emb.weight":{"dtype":"F32","shape":[1048576,1048576],"data_offsets":[0,4398046511104]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header);
    bytes.extend_from_slice(&[0u8; 64]);
    let path = write(&dir, "huge-tensor.safetensors", &bytes);
    assert_format_error("a 4 TiB tensor", Model::load(&path));
    assert_format_error("a 4 TiB tensor", Model::from_bytes(bytes));
    // No elements, but axes whose product overflows: an error when read, not a panic.
    let header = br#"{"x":{"dtype":"F32","shape":[0,4611686018427387904,4],"data_offsets":[0,0]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header);
    let file = SafeTensorsFile::from_bytes(bytes).unwrap();
    assert_format_error("an empty tensor of overflowing shape", file.tensor("x"));
}

/// A source that forwards to another and records every tensor read through `tensor()`, with
/// the shape it came back in.
struct Recorder<'a> {
    inner: &'a dyn TensorSource,
    reads: Mutex<Vec<(String, Vec<usize>)>>,
}

impl<'a> Recorder<'a> {
    fn new(inner: &'a dyn TensorSource) -> Self {
        Recorder {
            inner,
            reads: Mutex::new(Vec::new()),
        }
    }

    fn reads(&self) -> Vec<(String, Vec<usize>)> {
        self.reads.lock().unwrap().clone()
    }
}

impl TensorSource for Recorder<'_> {
    fn names(&self) -> Vec<&str> {
        self.inner.names()
    }

    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.inner.shape(name)
    }

    fn dtype(&self, name: &str) -> Option<Result<DType, String>> {
        self.inner.dtype(name)
    }

    fn tensor(&self, name: &str) -> tokenshift::Result<Tensor> {
        let t = self.inner.tensor(name);
        let shape = t.as_ref().map(|t| t.shape().to_vec()).unwrap_or_default();
        self.reads.lock().unwrap().push((name.to_string(), shape));
        t
    }
}

/// The declared tensor list of every piece is exactly what the loaders read: each fixture
/// model (every version) is loaded through a recorder, and the names read (each once) and
/// their shapes equal [`Model::tensor_specs`].
#[test]
fn declared_tensors_are_exactly_the_tensors_read() {
    for dir in fixtures() {
        let file = SafeTensorsFile::open(dir.join("model.safetensors")).unwrap();
        let config = Config::from_source(&file).unwrap();
        let mut specs = Model::tensor_specs(&file, &config);
        specs.sort();
        for dtype in [None, Some(DType::F16)] {
            let recorder = Recorder::new(&file);
            Model::from_source_as(&recorder, dtype).unwrap();
            let mut reads = recorder.reads();
            reads.sort();
            let read_names: Vec<&str> = reads.iter().map(|(n, _)| n.as_str()).collect();
            let spec_names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
            assert_eq!(read_names, spec_names, "{}", dir.display());
            for (spec, (name, shape)) in specs.iter().zip(&reads) {
                assert!(
                    spec.fits(shape),
                    "{}: `{name}` was read as {shape:?}, declared {:?}",
                    dir.display(),
                    spec.shape
                );
            }
        }
    }
}

/// What is done to one tensor of a fixture, and the error that must name it.
#[derive(Clone, Copy, Debug)]
enum Fault {
    Missing,
    Reshaped,
    I32,
    F64,
}

fn with_fault(raw: &[RawTensor], name: &str, fault: Fault) -> Vec<u8> {
    let mut raw = raw.to_vec();
    let i = raw.iter().position(|t| t.0 == name).expect("tensor exists");
    let t = &mut raw[i];
    match fault {
        Fault::Missing => {
            raw.remove(i);
        }
        // As many elements, in another shape.
        Fault::Reshaped => t.2 = vec![t.2.iter().product::<usize>() / 2, 2],
        // The same bytes read as integers.
        Fault::I32 => t.1 = Dtype::I32,
        Fault::F64 => {
            t.1 = Dtype::F64;
            t.3 =
                t.3.chunks_exact(4)
                    .flat_map(|b| (f32::from_le_bytes(b.try_into().unwrap()) as f64).to_le_bytes())
                    .collect();
        }
    }
    write_tensors(&raw)
}

fn assert_names(fault: Fault, name: &str, err: &Error) {
    let named = match (fault, err) {
        (Fault::Missing, Error::MissingTensor(n)) => n == name,
        (Fault::Reshaped, Error::Shape { name: n, .. }) => n == name,
        (Fault::I32 | Fault::F64, Error::Dtype { name: n, .. }) => n == name,
        _ => false,
    };
    assert!(named, "{name} {fault:?}: {err}");
    assert!(err.to_string().contains(name), "{err}");
}

/// A late tensor that is absent, of the wrong shape or of an unsupported type is reported
/// from the header, before any tensor data is read.
#[test]
fn bad_late_tensor_is_found_before_any_tensor_is_read() {
    // `last.` stands for the last block.
    for (fixture_name, late) in [
        (
            "v6-b",
            ["head.weight", "last.ffn.value.weight", "ln_out.weight"],
        ),
        ("v7-a", ["head.weight", "last.att.v2", "last.att.r_k"]),
        (
            "v5.1-a",
            ["head.weight", "last.att.time_first", "last.ln2.bias"],
        ),
        (
            "v4-b",
            ["head.weight", "last.ffn.receptance.weight", "ln_out.bias"],
        ),
    ] {
        let dir = fixture(fixture_name);
        let n_layer = load_model(&dir).config().n_layer;
        let raw = raw_model(&dir);
        for name in late {
            let name = match name.strip_prefix("last.") {
                Some(rest) => format!("blocks.{}.{rest}", n_layer - 1),
                None => name.to_string(),
            };
            for fault in [Fault::Missing, Fault::Reshaped, Fault::I32, Fault::F64] {
                let bytes = with_fault(&raw, &name, fault);
                let err = Model::from_bytes(bytes.clone()).unwrap_err();
                assert_names(fault, &name, &err);
                let file = SafeTensorsFile::from_bytes(bytes).unwrap();
                let recorder = Recorder::new(&file);
                let err = Model::from_source(&recorder).unwrap_err();
                assert_names(fault, &name, &err);
                assert_eq!(
                    recorder.reads(),
                    vec![],
                    "{fixture_name} {name} {fault:?}: tensors read before the error"
                );
            }
        }
    }
}

/// A 1 GiB file (sparse on disk) whose header names a huge embedding and lacks the head is
/// rejected without reading a tensor.
#[test]
fn sparse_file_missing_a_tensor_is_rejected_unread() {
    let dir = TempDir::new("sparse");
    let mut raw = raw_model(&fixture("v6-b"));
    raw.retain(|t| t.0 != "head.weight" && t.0 != "emb.weight");
    let c = 48;
    let vocab = (1usize << 30) / (4 * c);
    let mut header = String::from("{");
    let mut offset = 0;
    for (name, _, shape, bytes) in &raw {
        let end = offset + bytes.len();
        header += &format!(
            r#""{name}":{{"dtype":"F32","shape":{shape:?},"data_offsets":[{offset},{end}]}},"#
        );
        offset = end;
    }
    let end = offset + vocab * c * 4;
    header += &format!(
        r#""emb.weight":{{"dtype":"F32","shape":[{vocab},{c}],"data_offsets":[{offset},{end}]}}}}"#
    );
    let path = dir.join("sparse.safetensors");
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    for t in &raw {
        bytes.extend_from_slice(&t.3);
    }
    std::fs::write(&path, &bytes).unwrap();
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len((8 + header.len() + end) as u64).unwrap();
    drop(file);
    let err = Model::load(&path).unwrap_err();
    assert_names(Fault::Missing, "head.weight", &err);
    let file = SafeTensorsFile::open(&path).unwrap();
    let recorder = Recorder::new(&file);
    let err = Model::from_source(&recorder).unwrap_err();
    assert_names(Fault::Missing, "head.weight", &err);
    assert_eq!(recorder.reads(), vec![]);
}

/// `raw` with a zero-size tensor `blocks.{i}.pad` added for each `i` of `layers`.
fn with_padding_blocks(
    raw: &[RawTensor],
    layers: impl IntoIterator<Item = usize>,
) -> Vec<RawTensor> {
    let mut raw = raw.to_vec();
    raw.extend(
        layers
            .into_iter()
            .map(|i| (format!("blocks.{i}.pad"), Dtype::F32, vec![0], vec![])),
    );
    raw
}

/// A header that names a block far past the others (here `blocks.100000000000.pad`, a tensor
/// of no bytes) is refused at once: the number of blocks is one more than the largest index
/// only when every index below it names a tensor too, so no loader sizes anything by a stray
/// index.
#[test]
fn a_block_index_past_the_others_is_refused() {
    let raw = raw_model(&fixture("v4-a"));
    let n_layer = load_model(&fixture("v4-a")).config().n_layer;
    for stray in [n_layer + 1, 100_000_000_000, usize::MAX] {
        let bytes = write_tensors(&with_padding_blocks(&raw, [stray]));
        let file = SafeTensorsFile::from_bytes(bytes.clone()).unwrap();
        let err = Config::from_source(&file).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, Error::UnknownVersion(_)), "{msg}");
        assert!(
            msg.contains(&format!("`blocks.{stray}`"))
                && msg.contains(&format!("`blocks.{n_layer}`")),
            "{msg}"
        );
        let err = Model::from_bytes(bytes).unwrap_err();
        assert!(matches!(err, Error::UnknownVersion(_)), "{err}");
    }
}

/// A header that names many blocks with no tensors of their own (20000 zero-size tensors
/// `blocks.{i}.pad` after a real model's blocks) is refused at the first incomplete block, and
/// the check before the refusal holds less memory than the file's length: the tensor list is
/// checked block by block, not built whole.
#[test]
fn checking_many_named_blocks_needs_less_memory_than_the_file() {
    let raw = raw_model(&fixture("v4-a"));
    let n_layer = load_model(&fixture("v4-a")).config().n_layer;
    let bytes = write_tensors(&with_padding_blocks(&raw, n_layer..n_layer + 20_000));
    let file_len = bytes.len();
    let file = SafeTensorsFile::from_bytes(bytes).unwrap();
    let (result, peak) = peak_bytes(|| Model::from_source(&file));
    let name = format!("blocks.{n_layer}.ln1.weight");
    assert_names(Fault::Missing, &name, &result.unwrap_err());
    assert!(
        peak < file_len,
        "{peak} bytes held to check a file of {file_len} bytes"
    );
}
