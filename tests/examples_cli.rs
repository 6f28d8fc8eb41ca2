//! The command-line examples as a user runs them: every one answers `--help` with its options,
//! `inspect` describes a checkpoint from its header, and `convert` rewrites one (streamed,
//! atomically) so that it loads and runs as the original does. The examples are the binaries
//! `cargo test` builds beside this test (built here if missing, e.g. under `--test`).

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;
use tokenshift::weights::{Checkpoint, Tensor, TensorMap};
use tokenshift::{DType, Logits, Model, SafeTensorsStream, StreamEntry};

/// The built example `name`, from the target folder this test runs from. It is built with the
/// test's own profile once per test run, a no-op when `cargo test` already built it.
fn example(name: &str) -> PathBuf {
    static BUILT: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let exe = std::env::current_exe().expect("the test's own path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/<test>");
    let mut build = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    build
        .args(["build", "--quiet", "--example", name])
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    if let Some(target) = profile_dir.parent() {
        build.arg("--target-dir").arg(target);
    }
    if profile_dir.ends_with("release") {
        build.arg("--release");
    }
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if !built.iter().any(|b| b == name) {
        let status = build.status().expect("cargo runs");
        assert!(status.success(), "building example {name}");
        built.push(name.to_string());
    }
    profile_dir.join("examples").join(name)
}

fn run(name: &str, args: &[&str]) -> Output {
    Command::new(example(name))
        .args(args)
        .output()
        .expect("the example runs")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn scratch_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tokenshift-cli-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn model_path(fixture_name: &str) -> PathBuf {
    fixture(fixture_name).join("model.safetensors")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn every_example_describes_each_of_its_options_in_help() {
    let table: &[(&str, &[&str])] = &[
        (
            "generate",
            &[
                "--model",
                "--vocab",
                "--prompt",
                "--max-tokens",
                "--temperature",
                "--top-p",
                "--top-k",
                "--seed",
                "--state-in",
                "--state-out",
            ],
        ),
        (
            "chat",
            &[
                "--model",
                "--vocab",
                "--max-tokens",
                "--temperature",
                "--top-p",
                "--top-k",
                "--seed",
                "--state-in",
                "--state-out",
            ],
        ),
        (
            "tokenize",
            &["--vocab", "--text-file", "--text", "--decode", "--out"],
        ),
        (
            "logits",
            &["--model", "--tokens", "--mode", "--out", "--state-out"],
        ),
        (
            "bench",
            &[
                "--model",
                "--layers",
                "--embd",
                "--head-size",
                "--vocab",
                "--version",
                "--dtype",
                "--threads",
                "--prefill",
                "--batch",
                "--decode-tokens",
                "--write-model",
                "--memory",
                "--busy-core",
                "--vs-f32",
                "--json",
            ],
        ),
        ("inspect", &["PATH", "--json"]),
        ("convert", &["INPUT", "OUTPUT", "--dtype"]),
    ];
    for (name, options) in table {
        let out = run(name, &["--help"]);
        assert!(out.status.success(), "{name} --help: {}", stderr(&out));
        let help = stdout(&out);
        let lines: Vec<&str> = help.lines().collect();
        for option in *options {
            let at = lines
                .iter()
                .position(|l| {
                    let l = l.trim_start();
                    l.starts_with(&format!("{option} "))
                        || l == *option
                        || l.starts_with(&format!("<{option}>"))
                })
                .unwrap_or_else(|| panic!("{name} --help lists no {option}:\n{help}"));
            // The description follows on the same line, or on the next one.
            let words = lines[at].split_whitespace().count()
                + lines
                    .get(at + 1)
                    .map_or(0, |l| l.split_whitespace().count());
            assert!(
                words > 4,
                "{name} --help: {option} has no description: `{}`",
                lines[at]
            );
        }
    }
}

#[test]
fn a_bad_option_is_refused_before_any_work() {
    let table: &[(&str, &[&str], &str)] = &[
        ("generate", &["--max-tokens", "many"], "--max-tokens"),
        ("generate", &["--no-such-flag"], "--no-such-flag"),
        (
            "logits",
            &["--model", "m", "--tokens", "1,x"],
            "not a token id",
        ),
        (
            "logits",
            &["--model", "m", "--tokens", "1", "--mode", "fast"],
            "--mode",
        ),
        (
            "tokenize",
            &["--text", "a", "--decode", "1"],
            "cannot be used with",
        ),
        ("tokenize", &["--text", "a", "--out", "f"], "--decode"),
        ("convert", &["in.safetensors"], "OUTPUT"),
        ("convert", &["a", "b", "--dtype", "f8"], "--dtype"),
        ("bench", &["--memory"], "--model"),
    ];
    for (name, args, says) in table {
        let out = run(name, args);
        assert_eq!(out.status.code(), Some(2), "{name} {args:?}");
        assert!(
            stderr(&out).contains(says),
            "{name} {args:?}: {}",
            stderr(&out)
        );
    }
}

#[test]
fn inspect_lists_the_header_in_model_order_with_totals() {
    let path = model_path("v5.2-a");
    let out = run("inspect", &[s(&path)]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let checkpoint = Checkpoint::open(&path).unwrap();
    let source = checkpoint.source();
    let bytes: usize = source
        .names()
        .iter()
        .map(|n| source.shape(n).unwrap().iter().product::<usize>() * 4)
        .sum();
    for expected in [
        "container: safetensors".to_string(),
        "model:     RWKV-5.2 n_layer=2".to_string(),
        format!("F32          {} tensors", source.names().len()),
        format!("total:     {} tensors, {bytes} bytes", source.names().len()),
    ] {
        assert!(text.contains(&expected), "no `{expected}` in:\n{text}");
    }
    let order: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("  ")?.split_whitespace().next())
        .filter(|n| n.contains('.'))
        .collect();
    assert_eq!(order.first(), Some(&"emb.weight"));
    assert_eq!(order.last(), Some(&"ln_out.weight"));
    let first_of = |prefix: &str| order.iter().position(|n| n.starts_with(prefix)).unwrap();
    assert!(
        first_of("blocks.0.") < first_of("blocks.1.") && first_of("blocks.1.") < first_of("head.")
    );
}

#[test]
fn inspect_json_agrees_with_the_text() {
    let path = model_path("v7-a");
    let out = run("inspect", &["--json", s(&path)]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["container"], "safetensors");
    assert_eq!(v["config"]["version"], "7");
    assert_eq!(v["config"]["n_layer"], 2);
    let tensors = v["tensors"].as_array().unwrap();
    let sum: u64 = tensors.iter().map(|t| t["bytes"].as_u64().unwrap()).sum();
    assert_eq!(v["total"]["bytes"], sum);
    assert_eq!(v["total"]["tensors"], tensors.len());
    assert_eq!(v["dtypes"]["F32"]["tensors"], tensors.len());
    assert_eq!(tensors[0]["name"], "emb.weight");
}

#[test]
fn inspect_and_convert_name_what_they_cannot_read() {
    let dir = scratch_dir("unreadable");
    let junk = dir.join("junk.safetensors");
    std::fs::write(&junk, b"not a checkpoint at all").unwrap();
    let missing = dir.join("missing.safetensors");
    for (name, args) in [
        ("inspect", vec![s(&junk)]),
        ("inspect", vec![s(&missing)]),
        ("convert", vec![s(&junk), s(&dir.join("out"))]),
    ] {
        let out = run(name, &args);
        assert_eq!(out.status.code(), Some(1), "{name} {args:?}");
        let err = stderr(&out);
        assert!(
            err.starts_with("error: ") && err.contains(args[0]),
            "{name}: {err}"
        );
    }
    assert!(!dir.join("out").exists());
    // A valid container that is no model: listed, then the error.
    let expected = fixture("v6-a").join("expected.safetensors");
    let out = run("inspect", &[s(&expected)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains("tokens"), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("unrecognised checkpoint"),
        "{}",
        stderr(&out)
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Every tensor of `path`: name → (type, shape, little-endian bytes).
fn tensor_bytes(path: &Path) -> Vec<(String, DType, Vec<usize>, Vec<u8>)> {
    let checkpoint = Checkpoint::open(path).unwrap();
    let source = checkpoint.source();
    let mut names = source.names();
    names.sort_unstable();
    names
        .into_iter()
        .map(|n| {
            let raw = source.raw(n).unwrap();
            (
                n.to_string(),
                raw.dtype,
                raw.shape,
                raw.bytes.as_slice().to_vec(),
            )
        })
        .collect()
}

#[test]
fn convert_to_f32_reproduces_every_tensor_bit_for_bit() {
    let dir = scratch_dir("f32");
    for name in ["v4-a", "v5.2-a", "v6-a", "v7-a"] {
        let input = model_path(name);
        let output = dir.join(format!("{name}.safetensors"));
        for dtype in [None, Some("f32")] {
            let mut args = vec![s(&input), s(&output)];
            args.extend(dtype.iter().flat_map(|d| ["--dtype", d]));
            let out = run("convert", &args);
            assert!(out.status.success(), "{name}: {}", stderr(&out));
            assert!(stdout(&out).contains("tensors"), "{}", stdout(&out));
            assert_eq!(
                tensor_bytes(&output),
                tensor_bytes(&input),
                "{name} {dtype:?}"
            );
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn convert_to_f16_runs_as_the_original_loaded_as_f16() {
    let dir = scratch_dir("f16");
    let input = model_path("v5.2-a");
    let output = dir.join("f16.safetensors");
    let out = run("convert", &[s(&input), s(&output), "--dtype", "f16"]);
    assert!(out.status.success(), "{}", stderr(&out));
    for (_, dtype, _, _) in tensor_bytes(&output) {
        assert_eq!(dtype, DType::F16);
    }
    let tokens = [3u32, 14, 15, 92, 65, 35, 89, 79];
    let logits = |m: &Model| {
        let mut state = m.init_state();
        m.forward(&tokens, &mut state, Logits::All).unwrap()
    };
    let converted = logits(&Model::load(&output).unwrap());
    let loaded_as = logits(&Model::load_as(&input, DType::F16).unwrap());
    let original = logits(&Model::load(&input).unwrap());
    // The crate's own f16 load keeps vectors in f32; the file stores them in f16 too.
    let diff = max_abs_diff(converted.view(), loaded_as.view());
    let scale = original.iter().fold(0f32, |m, v| m.max(v.abs()));
    println!(
        "f16 file vs load_as(F16): {diff:.2e}; vs f32: {:.2e}; load_as(F16) vs f32: {:.2e}; \
         largest |logit| {scale:.2}",
        max_abs_diff(converted.view(), original.view()),
        max_abs_diff(loaded_as.view(), original.view())
    );
    assert!(
        diff <= 1e-2 * scale.max(1.0),
        "f16 file vs load_as f16: {diff} (scale {scale})"
    );
    assert!(max_abs_diff(converted.view(), original.view()) <= 2e-2 * scale.max(1.0));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn convert_keeps_a_tensor_in_its_type_bit_for_bit() {
    // f32 → bf16, then bf16 "as stored": the same file, byte for byte.
    let dir = scratch_dir("bf16");
    let input = model_path("v6-a");
    let (a, b) = (dir.join("a.safetensors"), dir.join("b.safetensors"));
    assert!(run("convert", &[s(&input), s(&a), "--dtype", "bf16"])
        .status
        .success());
    assert!(run("convert", &[s(&a), s(&b)]).status.success());
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    // And widened back to f32, every value is the bf16 one.
    let c = dir.join("c.safetensors");
    assert!(run("convert", &[s(&a), s(&c), "--dtype", "f32"])
        .status
        .success());
    let narrow = Checkpoint::open(&a).unwrap();
    let wide = Checkpoint::open(&c).unwrap();
    for name in narrow.source().names() {
        let Tensor::F32(w) = wide.source().tensor(name).unwrap() else {
            panic!("{name} is f32")
        };
        assert_eq!(narrow.source().tensor(name).unwrap().to_f32(), w, "{name}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn convert_refuses_to_write_over_its_input() {
    let dir = scratch_dir("same");
    let input = dir.join("model.safetensors");
    std::fs::copy(model_path("v6-a"), &input).unwrap();
    let before = std::fs::read(&input).unwrap();
    let hard = dir.join("hard.safetensors");
    std::fs::hard_link(&input, &hard).unwrap();
    let spelled = format!("{}/./model.safetensors", s(&dir));
    for output in [
        s(&input),
        s(&hard),
        spelled.as_str(),
        s(&dir.join("model.safetensors")),
    ] {
        let out = run("convert", &[s(&input), output, "--dtype", "f16"]);
        assert_eq!(out.status.code(), Some(1), "{output}");
        let err = stderr(&out);
        assert!(err.contains("refusing to overwrite an input"), "{err}");
    }
    assert_eq!(std::fs::read(&input).unwrap(), before);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_stream_writes_the_bytes_tensor_map_save_writes() {
    // The streamed writer lays out the same file as the crate's in-memory one.
    let dir = scratch_dir("stream");
    let checkpoint = Checkpoint::open(model_path("v7-a")).unwrap();
    let source = checkpoint.source();
    for dtype in [DType::F32, DType::F16, DType::Bf16] {
        let mut map = TensorMap::new();
        let mut entries = Vec::new();
        for name in source.names() {
            let t = source.tensor(name).unwrap().to_dtype(dtype);
            entries.push(StreamEntry {
                name: name.to_string(),
                dtype,
                shape: t.shape().to_vec(),
            });
            map.insert(name, t);
        }
        let (streamed, saved) = (dir.join("streamed"), dir.join("saved"));
        let stream = SafeTensorsStream::new(entries, &Default::default()).unwrap();
        let mut last = 0;
        stream
            .save(&streamed, source, &mut |done| {
                assert!(done >= last);
                last = done;
            })
            .unwrap();
        assert_eq!(last, stream.file_len());
        map.save(&saved).unwrap();
        assert_eq!(
            std::fs::read(&streamed).unwrap(),
            std::fs::read(&saved).unwrap()
        );
        // From the in-memory source (no bytes in place), the same again.
        stream.save(&streamed, &map, &mut |_| {}).unwrap();
        assert_eq!(
            std::fs::read(&streamed).unwrap(),
            std::fs::read(&saved).unwrap()
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_stream_that_cannot_read_a_tensor_leaves_the_target_as_it_was() {
    let dir = scratch_dir("stream-error");
    let target = dir.join("out.safetensors");
    std::fs::write(&target, b"old").unwrap();
    let map = TensorMap::new();
    let entries = vec![StreamEntry {
        name: "emb.weight".into(),
        dtype: DType::F16,
        shape: vec![2, 3],
    }];
    let stream = SafeTensorsStream::new(entries.clone(), &Default::default()).unwrap();
    let err = stream.save(&target, &map, &mut |_| {}).unwrap_err();
    assert!(err.to_string().contains("emb.weight"), "{err}");
    let mut wrong = TensorMap::new();
    wrong.insert(
        "emb.weight",
        Tensor::F32(ndarray::ArrayD::zeros(vec![3, 2])),
    );
    let err = stream.save(&target, &wrong, &mut |_| {}).unwrap_err();
    assert!(err.to_string().contains("emb.weight"), "{err}");
    assert_eq!(std::fs::read(&target).unwrap(), b"old");
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        1,
        "no temporary file left"
    );
    let twice = vec![entries[0].clone(), entries[0].clone()];
    assert!(SafeTensorsStream::new(twice, &Default::default()).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn generate_runs_the_shipped_model_with_no_model_given_and_guards_its_inputs() {
    let out = run("generate", &["--max-tokens", "8"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).starts_with("In the beginning"),
        "{}",
        stdout(&out)
    );
    assert!(
        stderr(&out).contains("generation: 8 tokens"),
        "{}",
        stderr(&out)
    );

    let model = model_path("v6-a");
    let before = std::fs::read(&model).unwrap();
    for (name, args) in [
        (
            "generate",
            vec!["--model", s(&model), "--state-out", s(&model)],
        ),
        ("chat", vec!["--model", s(&model), "--state-out", s(&model)]),
        (
            "logits",
            vec!["--model", s(&model), "--tokens", "1", "--out", s(&model)],
        ),
    ] {
        let out = run(name, &args);
        assert_eq!(out.status.code(), Some(1), "{name}");
        assert!(
            stderr(&out).contains("refusing to overwrite an input"),
            "{}",
            stderr(&out)
        );
    }
    assert_eq!(std::fs::read(&model).unwrap(), before);
}
