//! Files the crate writes: replaced atomically, and the same bytes for the same content.

mod common;

use common::*;
use std::io::Read;
use std::path::{Path, PathBuf};
use tokenshift::weights::{SafeTensorsFile, Tensor, TensorMap};
use tokenshift::{write_atomic, write_atomic_with, Error, Logits, State};

/// A new empty directory for one test.
fn scratch_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tokenshift-files-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The names in `dir`, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn a_write_failing_half_way_leaves_the_old_file_and_no_temporary() {
    let dir = scratch_dir("half-way");
    let target = dir.join("state.safetensors");
    std::fs::write(&target, b"the old, complete file").unwrap();
    let err = write_atomic_with(&target, |w| {
        w.write_all(&[7u8; 100_000])?;
        Err(std::io::Error::other("disk full"))
    })
    .unwrap_err();
    match &err {
        Error::Io { path, source } => {
            assert_eq!(path, &target);
            assert_eq!(source.to_string(), "disk full");
        }
        other => panic!("expected Error::Io, got {other}"),
    }
    assert_eq!(std::fs::read(&target).unwrap(), b"the old, complete file");
    assert_eq!(listing(&dir), ["state.safetensors"]);
    // The same with no file there before: nothing is left behind.
    let fresh = dir.join("new.bin");
    assert!(write_atomic_with(&fresh, |_| Err(std::io::Error::other("no"))).is_err());
    assert_eq!(listing(&dir), ["state.safetensors"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_complete_write_replaces_the_file() {
    let dir = scratch_dir("complete");
    let target = dir.join("out.bin");
    std::fs::write(&target, vec![1u8; 1000]).unwrap();
    write_atomic(&target, b"short").unwrap();
    assert_eq!(std::fs::read(&target).unwrap(), b"short");
    write_atomic(dir.join("second.bin"), b"").unwrap();
    assert_eq!(listing(&dir), ["out.bin", "second.bin"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_missing_directory_is_an_io_error_naming_the_path() {
    let dir = scratch_dir("missing-dir");
    let target = dir.join("no/such/dir/state.safetensors");
    let model = load_model(&fixture("v6-a"));
    for err in [
        write_atomic(&target, b"x").unwrap_err(),
        model.init_state().save(&target).unwrap_err(),
        TensorMap::new().save(&target).unwrap_err(),
    ] {
        assert!(
            matches!(&err, Error::Io { path, .. } if path == &target),
            "{err}"
        );
        assert!(err.to_string().contains("no/such/dir/state.safetensors"));
    }
    // A directory where the file should be: refused, the directory untouched.
    std::fs::create_dir(dir.join("taken")).unwrap();
    let err = write_atomic(dir.join("taken"), b"x").unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err}");
    assert_eq!(listing(&dir), ["taken"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_reader_of_the_old_file_never_sees_it_change() {
    // The new file is a new inode renamed over the old one: a reader that opened the old file
    // (or mapped it) keeps reading the old, complete bytes.
    let dir = scratch_dir("reader");
    let target = dir.join("state.safetensors");
    let model = load_model(&fixture("v5.2-b"));
    let old_state = model.init_state();
    old_state.save(&target).unwrap();
    let old_bytes = old_state.to_bytes().unwrap();
    let mut reader = std::fs::File::open(&target).unwrap();

    let mut state = model.init_state();
    model.forward(&[1, 2, 3], &mut state, Logits::Last).unwrap();
    state.save(&target).unwrap();

    let mut seen = Vec::new();
    reader.read_to_end(&mut seen).unwrap();
    assert!(seen == old_bytes, "the open file kept its bytes");
    assert_eq!(model.load_state(&target).unwrap(), state);
    assert_eq!(listing(&dir), ["state.safetensors"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[cfg(unix)]
#[test]
fn an_existing_file_keeps_its_permissions_and_a_link_stays_a_link() {
    use std::os::unix::fs::PermissionsExt;
    let dir = scratch_dir("permissions");
    let target = dir.join("private.bin");
    std::fs::write(&target, b"old").unwrap();
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o640)).unwrap();
    write_atomic(&target, b"new").unwrap();
    let mode = std::fs::metadata(&target).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o640);

    let link = dir.join("link.bin");
    std::os::unix::fs::symlink("private.bin", &link).unwrap();
    write_atomic(&link, b"through the link").unwrap();
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(std::fs::read(&target).unwrap(), b"through the link");
    assert_eq!(listing(&dir), ["link.bin", "private.bin"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn one_state_always_gives_the_same_bytes() {
    for name in ["v4-b", "v5.2-b", "v6-a", "v7-b"] {
        let model = load_model(&fixture(name));
        let tokens = Rng::new(3).tokens(12, model.config().vocab);
        let files: Vec<Vec<u8>> = (0..20)
            .map(|_| {
                let mut state = model.init_state();
                model.forward(&tokens, &mut state, Logits::Last).unwrap();
                state.to_bytes().unwrap()
            })
            .collect();
        for (i, f) in files.iter().enumerate() {
            assert!(f == &files[0], "{name}: copy {i} differs from copy 0");
        }
        // A well-formed safetensors file, header padded to 8 bytes, that loads back.
        let parsed = safetensors::SafeTensors::deserialize(&files[0]).unwrap();
        assert_eq!(parsed.len(), model.init_state().tensors().len());
        let header = u64::from_le_bytes(files[0][..8].try_into().unwrap());
        assert_eq!(header % 8, 0);
        let mut state = model.init_state();
        model.forward(&tokens, &mut state, Logits::Last).unwrap();
        assert_eq!(
            State::from_bytes(files[0].clone(), model.config()).unwrap(),
            state
        );
        let dir = scratch_dir(&format!("same-bytes-{name}"));
        let (a, b) = (dir.join("a"), dir.join("b"));
        state.save(&a).unwrap();
        state.clone().save(&b).unwrap();
        assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
        assert_eq!(std::fs::read(&a).unwrap(), files[0]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn one_tensor_map_always_gives_the_same_bytes() {
    let dir = scratch_dir("tensor-map");
    let mut rng = Rng::new(5);
    let tensors: Vec<(String, Tensor)> = (0..12)
        .map(|i| {
            let a = rng.matrix(3, i + 1, 1.0).into_dyn();
            let t = match i % 3 {
                0 => Tensor::F32(a),
                1 => Tensor::F16(a.mapv(half::f16::from_f32)),
                _ => Tensor::Bf16(a.mapv(half::bf16::from_f32)),
            };
            (format!("t{i}"), t)
        })
        .collect();
    let files: Vec<Vec<u8>> = (0..20)
        .map(|k| {
            let mut map = TensorMap::new();
            for j in 0..tensors.len() {
                let (name, t) = &tensors[(j * 7 + k) % tensors.len()];
                map.insert(name.clone(), t.clone());
            }
            let path = dir.join(format!("map{k}.safetensors"));
            map.save(&path).unwrap();
            std::fs::read(&path).unwrap()
        })
        .collect();
    for (i, f) in files.iter().enumerate() {
        assert!(f == &files[0], "copy {i} differs from copy 0");
    }
    let parsed = safetensors::SafeTensors::deserialize(&files[0]).unwrap();
    assert_eq!(parsed.len(), tensors.len());
    let file = SafeTensorsFile::from_bytes(files[0].clone()).unwrap();
    for (name, t) in &tensors {
        use tokenshift::weights::TensorSource;
        let read = file.tensor(name).unwrap();
        assert_eq!(read.dtype(), t.dtype(), "{name}");
        assert_eq!(read.to_f32(), t.to_f32(), "{name}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
