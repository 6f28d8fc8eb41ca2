//! Hugging Face folders (tests/fixtures/formats/hf, written by tools/formats/make_hf.py from the
//! "-a" fixtures): each gives the logits of the BlinkDL safetensors it was made from, and the
//! official ones; malformed folders and files give named errors.

mod common;

use common::*;
use ndarray::Array2;
use std::path::{Path, PathBuf};
use tokenshift::weights::{Checkpoint, Format, SafeTensorsFile, TensorMap, TensorSource};
use tokenshift::{Error, Logits, Model};

/// The same model read through two containers: the same arithmetic on the same values.
const SAME_TOL: f32 = 1e-6;
/// Against the official package's f32 logits.
const OFFICIAL_TOL: f32 = 1e-4;

/// (folder under tests/fixtures/formats/hf, fixture it was made from, what it exercises).
const FOLDERS: [(&str, &str, &str); 4] = [
    (
        "v4-a",
        "v4-a",
        "transformers RwkvForCausalLM, 3 shards + index",
    ),
    (
        "v5.2-a",
        "v5.2-a",
        "RWKV-5 -HF names, one model.safetensors",
    ),
    ("v6-a", "v6-a", "RWKV-6 -HF names, 2 shards + index"),
    ("v7-a", "v7-a", "fla RWKV-7 names, transposed LoRA factors"),
];

fn hf_dir(name: &str) -> PathBuf {
    fixtures_dir().join("formats/hf").join(name)
}

fn logits(model: &Model, tokens: &[u32]) -> Array2<f32> {
    let mut state = model.init_state();
    model.forward(tokens, &mut state, Logits::All).unwrap()
}

/// Max |Δ| of the folder's logits against the BlinkDL file's and the official ones.
fn compare(model: &Model, fixture: &str) -> (f32, f32) {
    let dir = fixture_path(fixture);
    let expected = Expected::load(&dir);
    let reference = load_model(&dir);
    let got = logits(model, &expected.tokens);
    let same = max_abs_diff(got.view(), logits(&reference, &expected.tokens).view());
    let official = max_abs_diff(got.view(), expected.matrix("logits_seq").view());
    (same, official)
}

fn fixture_path(name: &str) -> PathBuf {
    fixture(name)
}

#[test]
fn folders_give_the_blinkdl_and_official_logits() {
    for (folder, fixture, what) in FOLDERS {
        let dir = hf_dir(folder);
        let checkpoint = Checkpoint::open(&dir).unwrap();
        assert_eq!(checkpoint.format(), Format::HuggingFace, "{folder}");
        let model = Model::load(&dir).unwrap_or_else(|e| panic!("{folder}: {e}"));
        let (same, official) = compare(&model, fixture);
        println!(
            "{folder:7} ({what}): max |Δlogits| vs BlinkDL file {same:.3e}, vs official \
             {official:.3e}"
        );
        assert!(same <= SAME_TOL, "{folder}: {same} from the BlinkDL file");
        assert!(
            official <= OFFICIAL_TOL,
            "{folder}: {official} from official"
        );
    }
}

#[test]
fn single_files_with_hf_names_load_without_a_folder() {
    for (folder, fixture) in [("v5.2-a", "v5.2-a"), ("v7-a", "v7-a")] {
        let file = hf_dir(folder).join("model.safetensors");
        let model = Model::load(&file).unwrap_or_else(|e| panic!("{folder}: {e}"));
        let (same, official) = compare(&model, fixture);
        println!("{folder} single file: vs BlinkDL {same:.3e}, vs official {official:.3e}");
        assert!(same <= SAME_TOL && official <= OFFICIAL_TOL, "{folder}");
    }
}

#[test]
fn renamed_tensors_stay_in_place_and_transformed_ones_are_built() {
    let checkpoint = Checkpoint::open(hf_dir("v7-a")).unwrap();
    let src = checkpoint.source();
    // (BlinkDL name, seen in place, stored shape after mapping)
    let cases: [(&str, bool, &[usize]); 5] = [
        ("blocks.0.att.key.weight", true, &[64, 64]),
        ("blocks.1.att.w0", true, &[64]),
        ("blocks.1.att.w1", false, &[64, 16]),
        ("blocks.1.att.v2", false, &[8, 64]),
        ("head.weight", true, &[128, 64]),
    ];
    let blinkdl = SafeTensorsFile::open(fixture("v7-a").join("model.safetensors")).unwrap();
    for (name, in_place, shape) in cases {
        assert_eq!(src.raw(name).is_some(), in_place, "{name}");
        assert_eq!(src.shape(name).unwrap(), shape, "{name}");
        let want = blinkdl.tensor(name).unwrap().to_f32();
        let got = src.tensor(name).unwrap().to_f32();
        assert_eq!(
            got.iter().collect::<Vec<_>>(),
            want.iter().collect::<Vec<_>>(),
            "{name}"
        );
    }
    assert!(
        src.shape("blocks.0.att.v1").is_none(),
        "fla has no layer-0 v_lora"
    );
}

// ----------------------------------------------------------------------------------------------
// Variants built from the committed folders.

/// A fresh copy of a fixture folder in the temporary directory.
fn copy_folder(name: &str, tag: &str) -> PathBuf {
    let to = std::env::temp_dir().join(format!("tokenshift-hf-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&to);
    std::fs::create_dir_all(&to).unwrap();
    for entry in std::fs::read_dir(hf_dir(name)).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
    to
}

fn edit_json(path: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(path, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
}

/// All tensors of a folder's single `model.safetensors`, renamed by `rename` (None: dropped).
fn rewrite(dir: &Path, rename: impl Fn(&str) -> Option<String>) {
    let path = dir.join("model.safetensors");
    let file = SafeTensorsFile::open(&path).unwrap();
    let mut map = TensorMap::new();
    for name in file.names() {
        if let Some(new) = rename(name) {
            map.insert(new, file.tensor(name).unwrap());
        }
    }
    drop(file);
    map.save(&path).unwrap();
}

#[test]
fn spelling_variants_give_the_same_logits() {
    // RWKV-6 in the older `time_mix_*` spelling (the values are the same maa coefficients).
    let v6 = copy_folder("v6-a", "v6-mix");
    let index = v6.join("model.safetensors.index.json");
    let mut map = TensorMap::new();
    for shard in [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ] {
        let file = SafeTensorsFile::open(v6.join(shard)).unwrap();
        for name in file.names() {
            let new = name
                .replace("attention.time_maa_k", "attention.time_mix_key")
                .replace("attention.time_maa_v", "attention.time_mix_value")
                .replace("attention.time_maa_r", "attention.time_mix_receptance")
                .replace("attention.time_maa_g", "attention.time_mix_gate")
                .replace("attention.time_maa_", "attention.time_mix_")
                .replace("feed_forward.time_maa_k", "feed_forward.time_mix_key")
                .replace(
                    "feed_forward.time_maa_r",
                    "feed_forward.time_mix_receptance",
                );
            map.insert(new, file.tensor(name).unwrap());
        }
        std::fs::remove_file(v6.join(shard)).unwrap();
    }
    std::fs::remove_file(index).unwrap();
    map.save(v6.join("model.safetensors")).unwrap();
    let (same, _) = compare(&Model::load(&v6).unwrap(), "v6-a");
    assert!(same <= SAME_TOL, "v6 time_mix spelling: {same}");

    // RWKV-7 with the token-shift coefficients fused into `attn.x_x` [6, C].
    let v7 = copy_folder("v7-a", "v7-fused");
    let path = v7.join("model.safetensors");
    let file = SafeTensorsFile::open(&path).unwrap();
    let mut map = TensorMap::new();
    for name in file.names() {
        if !name.contains(".attn.x_") {
            map.insert(name, file.tensor(name).unwrap());
        }
    }
    for layer in 0..2 {
        let rows: Vec<f32> = ["r", "w", "k", "v", "a", "g"]
            .iter()
            .flat_map(|x| {
                let t = file
                    .tensor(&format!("model.layers.{layer}.attn.x_{x}"))
                    .unwrap();
                t.to_f32().iter().copied().collect::<Vec<_>>()
            })
            .collect();
        let fused = ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&[6, 64]), rows).unwrap();
        map.insert(
            format!("model.layers.{layer}.attn.x_x"),
            tokenshift::weights::Tensor::F32(fused),
        );
    }
    drop(file);
    map.save(&path).unwrap();
    let checkpoint = Checkpoint::open(&v7).unwrap();
    assert!(
        checkpoint.source().raw("blocks.1.att.x_a").is_some(),
        "rows stay in place"
    );
    let (same, _) = compare(&Model::load(&v7).unwrap(), "v7-a");
    assert!(same <= SAME_TOL, "v7 fused x_x: {same}");

    for dir in [v6, v7] {
        std::fs::remove_dir_all(dir).unwrap();
    }
}

#[test]
fn tied_embeddings_read_the_embedding_as_head() {
    let dir = copy_folder("v7-a", "tied");
    rewrite(&dir, |n| (n != "lm_head.weight").then(|| n.to_string()));
    let missing = Checkpoint::open(&dir).unwrap_err().to_string();
    assert!(missing.contains("tie_word_embeddings"), "{missing}");
    edit_json(&dir.join("config.json"), |c| {
        c["tie_word_embeddings"] = true.into()
    });
    let checkpoint = Checkpoint::open(&dir).unwrap();
    let src = checkpoint.source();
    let head = src.raw("head.weight").expect("the embedding, in place");
    let emb = src.raw("emb.weight").unwrap();
    assert_eq!(
        head.bytes.as_slice().as_ptr(),
        emb.bytes.as_slice().as_ptr()
    );
    Model::from_source(src).unwrap();
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn norms_without_bias_read_as_zero_bias() {
    let dir = copy_folder("v7-a", "nobias");
    // fla's LayerNorms lose their bias; the GroupNorm (`g_norm`) always has one.
    let layer_norm_bias = |n: &str| n.ends_with("norm.bias") && !n.ends_with("g_norm.bias");
    rewrite(&dir, |n| (!layer_norm_bias(n)).then(|| n.to_string()));
    edit_json(&dir.join("config.json"), |c| c["norm_bias"] = false.into());
    let checkpoint = Checkpoint::open(&dir).unwrap();
    let bias = checkpoint
        .source()
        .tensor("blocks.1.ln2.bias")
        .unwrap()
        .to_f32();
    assert!(bias.len() == 64 && bias.iter().all(|&b| b == 0.0));
    Model::from_source(checkpoint.source()).unwrap();
    std::fs::remove_dir_all(dir).unwrap();
}

// ----------------------------------------------------------------------------------------------
// Malformed inputs.

/// The message of a Hugging Face error, which must name `file` (a path ending).
fn hf_error(result: tokenshift::Result<Checkpoint>, file: &str) -> String {
    match result {
        Err(e @ Error::Checkpoint { .. }) => {
            let Error::Checkpoint { file: f, .. } = &e else {
                unreachable!()
            };
            assert!(
                f.ends_with(file),
                "error names `{f}`, expected `{file}`: {e}"
            );
            e.to_string()
        }
        Err(other) => panic!("expected a checkpoint error, got {other}"),
        Ok(_) => panic!("expected an error naming {file}"),
    }
}

#[test]
fn malformed_folders_give_named_errors() {
    type Edit = fn(&Path);
    // (case, folder to start from, edit, file the error names, words the message has)
    let cases: [(&str, &str, Edit, &str, &str); 14] = [
        (
            "missing shard",
            "v4-a",
            |d| std::fs::remove_file(d.join("model-00002-of-00003.safetensors")).unwrap(),
            "model-00002-of-00003.safetensors",
            "missing",
        ),
        (
            "index names a missing tensor",
            "v4-a",
            |d| {
                edit_json(&d.join("model.safetensors.index.json"), |v| {
                    v["weight_map"]["rwkv.blocks.0.attention.gate.weight"] =
                        "model-00001-of-00003.safetensors".into()
                })
            },
            "model-00001-of-00003.safetensors",
            "rwkv.blocks.0.attention.gate.weight",
        ),
        (
            "index puts a tensor in the wrong shard",
            "v4-a",
            |d| {
                edit_json(&d.join("model.safetensors.index.json"), |v| {
                    v["weight_map"]["head.weight"] = "model-00001-of-00003.safetensors".into()
                })
            },
            "model-00001-of-00003.safetensors",
            "does not hold",
        ),
        (
            "index names a file outside the folder",
            "v4-a",
            |d| {
                edit_json(&d.join("model.safetensors.index.json"), |v| {
                    v["weight_map"]["head.weight"] = "../model-00003-of-00003.safetensors".into()
                })
            },
            "model.safetensors.index.json",
            "not a file name within the folder",
        ),
        (
            "index is not JSON",
            "v6-a",
            |d| std::fs::write(d.join("model.safetensors.index.json"), b"{ weight_map").unwrap(),
            "model.safetensors.index.json",
            "not JSON",
        ),
        (
            "no config.json",
            "v5.2-a",
            |d| std::fs::remove_file(d.join("config.json")).unwrap(),
            "",
            "config.json",
        ),
        (
            "PyTorch weights",
            "v5.2-a",
            |d| std::fs::rename(d.join("model.safetensors"), d.join("pytorch_model.bin")).unwrap(),
            "",
            "pytorch_model.bin",
        ),
        (
            "unknown model_type",
            "v5.2-a",
            |d| edit_json(&d.join("config.json"), |c| c["model_type"] = "llama".into()),
            "config.json",
            "llama",
        ),
        (
            "model_type of the other scheme",
            "v5.2-a",
            |d| {
                edit_json(&d.join("config.json"), |c| {
                    c["model_type"] = "rwkv7".into();
                    c["architectures"] = serde_json::json!(["RWKV7ForCausalLM"]);
                })
            },
            "config.json",
            "expects",
        ),
        (
            "layer_norm_epsilon",
            "v4-a",
            |d| {
                edit_json(&d.join("config.json"), |c| {
                    c["layer_norm_epsilon"] = 1e-6.into()
                })
            },
            "config.json",
            "layer_norm_epsilon",
        ),
        (
            "head_size_divisor",
            "v6-a",
            |d| {
                edit_json(&d.join("config.json"), |c| {
                    c["head_size_divisor"] = 4.into()
                })
            },
            "config.json",
            "head_size_divisor",
        ),
        (
            "norm_eps",
            "v7-a",
            |d| edit_json(&d.join("config.json"), |c| c["norm_eps"] = 1e-6.into()),
            "config.json",
            "norm_eps",
        ),
        (
            "vocab_size vs the embedding",
            "v5.2-a",
            |d| edit_json(&d.join("config.json"), |c| c["vocab_size"] = 65536.into()),
            "config.json",
            "vocab_size",
        ),
        (
            "head_size vs time_faaaa",
            "v6-a",
            |d| edit_json(&d.join("config.json"), |c| c["head_size"] = 64.into()),
            "config.json",
            "head_size",
        ),
    ];
    for (i, (case, folder, edit, file, words)) in cases.into_iter().enumerate() {
        let dir = copy_folder(folder, &format!("bad{i}"));
        edit(&dir);
        let file = if file.is_empty() {
            dir.display().to_string()
        } else {
            file.to_string()
        };
        let message = hf_error(Checkpoint::open(&dir), &file);
        println!("{case}: {message}");
        assert!(message.contains(words), "{case}: {message}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}

#[test]
fn two_shards_holding_one_tensor_are_refused() {
    let dir = copy_folder("v6-a", "twice");
    let second = dir.join("model-00002-of-00002.safetensors");
    let first = SafeTensorsFile::open(dir.join("model-00001-of-00002.safetensors")).unwrap();
    let shared = first.names()[0].to_string();
    let file = SafeTensorsFile::open(&second).unwrap();
    let mut map = TensorMap::new();
    for name in file.names() {
        map.insert(name, file.tensor(name).unwrap());
    }
    map.insert(shared.clone(), first.tensor(&shared).unwrap());
    drop((file, first));
    map.save(&second).unwrap();
    let message = hf_error(Checkpoint::open(&dir), &dir.display().to_string());
    assert!(
        message.contains(&shared) && message.contains("two shards"),
        "{message}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn single_files_mixing_schemes_or_unknown_names_are_refused() {
    let t = || tokenshift::weights::Tensor::F32(ndarray::ArrayD::zeros(ndarray::IxDyn(&[4])));
    // (tensor names in one file, words the message has)
    let cases: [(&[&str], &str); 3] = [
        (
            &["rwkv.blocks.0.ln1.weight", "blocks.0.ln2.weight"],
            "mixed",
        ),
        (
            &["model.layers.0.attn_norm.weight", "rwkv.ln_out.weight"],
            "mixed",
        ),
        (
            &["model.layers.0.self_attn.q_proj.weight"],
            "no counterpart",
        ),
    ];
    for (names, words) in cases {
        let mut map = TensorMap::new();
        for name in names {
            map.insert(*name, t());
        }
        let path =
            std::env::temp_dir().join(format!("tokenshift-hf-mixed-{}.st", std::process::id()));
        map.save(&path).unwrap();
        let message = hf_error(Checkpoint::open(&path), &path.display().to_string());
        assert!(
            message.contains(words) && message.contains(names[0]),
            "{message}"
        );
        std::fs::remove_file(path).unwrap();
    }
}
