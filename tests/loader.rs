//! The loader rejects files whose tensors do not cover their data exactly, and checks every
//! tensor's name, shape and type from the header before it reads any tensor data.

mod common;

use common::*;
use std::path::PathBuf;
use tokenshift::{Error, Model};

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
/// header-length field 1 to 7 smaller and 8 larger, and 1 and 8 bytes appended. Each is named
/// by what was done to it.
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
    out.push((
        "header length 8 too large".into(),
        with_header_len(header_len + 8),
    ));
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
}
