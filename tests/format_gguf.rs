//! llama.cpp GGUF checkpoints: the fixture models written as llama.cpp's converter writes them
//! (`tools/formats/make_gguf.py`) give the logits of their safetensors form and of the official
//! package, and malformed files give named errors.

mod common;
mod gguf_writer;

use common::*;
use gguf_writer::{write_gguf, Raw};
use ndarray::Array2;
use std::path::PathBuf;
use tokenshift::weights::{Checkpoint, Format, GgmlType, GgufFile, GgufValue, TensorMap};
use tokenshift::{Error, Logits, Model};

fn gguf_dir() -> PathBuf {
    fixtures_dir().join("formats/gguf")
}

fn gguf_bytes(name: &str) -> Vec<u8> {
    std::fs::read(gguf_dir().join(name)).unwrap()
}

fn logits(model: &Model, tokens: &[u32]) -> Array2<f32> {
    let mut state = model.init_state();
    model.forward(tokens, &mut state, Logits::All).unwrap()
}

/// The f32 GGUF files give the logits of the same model in safetensors (the same arithmetic
/// on the same values) and of the official package.
#[test]
fn f32_files_match_safetensors_and_official() {
    for (file, name) in [("v6-a.f32.gguf", "v6-a"), ("v7-a.f32.gguf", "v7-a")] {
        let dir = fixture(name);
        let checkpoint = Checkpoint::open(gguf_dir().join(file)).unwrap();
        assert_eq!(checkpoint.format(), Format::Gguf);
        let model = Model::from_source(checkpoint.source()).unwrap();
        let reference = load_model(&dir);
        let expected = Expected::load(&dir);
        let got = logits(&model, &expected.tokens);
        let d_st = max_abs_diff(got.view(), logits(&reference, &expected.tokens).view());
        let d_official = max_abs_diff(got.view(), expected.matrix("logits_seq").view());
        let mut state = model.init_state();
        let steps: Vec<_> = expected
            .tokens
            .iter()
            .map(|&t| model.step(t, &mut state).unwrap())
            .collect();
        let views: Vec<_> = steps.iter().map(|r| r.view()).collect();
        let stepped = ndarray::stack(ndarray::Axis(0), &views).unwrap();
        let d_step = max_abs_diff(stepped.view(), expected.matrix("logits_step").view());
        println!(
            "{file}: max |Δlogits| vs safetensors {d_st:.3e}, vs official {d_official:.3e} \
             (token by token {d_step:.3e})"
        );
        assert!(
            d_step <= 1e-4,
            "{file}: {d_step} from the official step logits"
        );
        assert!(d_st <= 1e-6, "{file}: {d_st} from the safetensors model");
        assert!(
            d_official <= 1e-4,
            "{file}: {d_official} from the official logits"
        );
    }
}

/// The f16 and bf16 GGUF files give the logits of the safetensors model with each tensor
/// rounded to the type the file stores it in (the converter keeps vectors, norms,
/// `time_faaaa` and the token-shift and decay low-rank matrices in f32).
#[test]
fn half_precision_files_match_the_rounded_safetensors_model() {
    for (file, name) in [("v6-a.f16.gguf", "v6-a"), ("v7-a.bf16.gguf", "v7-a")] {
        let dir = fixture(name);
        let checkpoint = Checkpoint::open(gguf_dir().join(file)).unwrap();
        let gguf = checkpoint.source();
        let st = Checkpoint::open(dir.join("model.safetensors")).unwrap();
        let mut rounded = TensorMap::new();
        let mut half = 0;
        for name in gguf.names() {
            let dtype = gguf.dtype(name).unwrap().unwrap();
            half += usize::from(dtype != tokenshift::weights::DType::F32);
            let t = st.source().tensor(name).unwrap().to_dtype(dtype);
            assert_eq!(t.shape(), st.source().shape(name).unwrap().as_slice());
            rounded.insert(name, t);
        }
        assert!(half > 0, "{file} stores no half-precision tensor");
        let tokens = Expected::load(&dir).tokens;
        let got = logits(&Model::from_source(gguf).unwrap(), &tokens);
        let want = logits(&Model::from_source(&rounded).unwrap(), &tokens);
        let d = max_abs_diff(got.view(), want.view());
        println!("{file}: max |Δlogits| vs the rounded safetensors model {d:.3e} ({half} half-precision tensors)");
        assert!(d <= 1e-6, "{file}: {d}");
    }
}

/// Every BlinkDL tensor of the fixtures comes out of the GGUF file with its name, shape and
/// values; renamed, reshaped and split tensors are seen in place in the file's bytes, the
/// transposed and rescaled ones are built.
#[test]
fn tensors_come_out_under_blinkdl_names() {
    for (file, name) in [("v6-a.f32.gguf", "v6-a"), ("v7-a.f32.gguf", "v7-a")] {
        let gguf = Checkpoint::open(gguf_dir().join(file)).unwrap();
        let st = Checkpoint::open(fixture(name).join("model.safetensors")).unwrap();
        let (g, s) = (gguf.source(), st.source());
        let mut names: Vec<&str> = g.names();
        names.sort();
        let mut want: Vec<&str> = s.names();
        // RWKV-7 block 0's v0, v1, v2 are replaced by copies of a0, a1, a2 and dropped.
        want.retain(|n| !["blocks.0.att.v0", "blocks.0.att.v1", "blocks.0.att.v2"].contains(n));
        want.sort();
        assert_eq!(names, want, "{file}");
        for name in names {
            let (a, b) = (g.tensor(name).unwrap(), s.tensor(name).unwrap());
            let squeeze = |s: &[usize]| s.iter().copied().filter(|&d| d != 1).collect::<Vec<_>>();
            assert_eq!(squeeze(a.shape()), squeeze(b.shape()), "{file} {name}");
            let d = a
                .to_f32()
                .iter()
                .zip(b.to_f32().iter())
                .map(|(x, y)| (x - y).abs())
                .fold(0.0f32, f32::max);
            assert_eq!(d, 0.0, "{file} {name}");
        }
        let in_place = |n: &str| g.raw(n).is_some();
        assert!(
            in_place("blocks.0.att.key.weight") && in_place("emb.weight"),
            "{file}"
        );
        let built = if name == "v6-a" {
            // Block 1 is rescaled by 2 in the file (rescale_every_n_layers = 1).
            assert!(in_place("blocks.0.att.time_maa_w") && in_place("blocks.0.att.output.weight"));
            ["blocks.0.att.time_maa_w1", "blocks.1.att.output.weight"]
        } else {
            assert!(in_place("blocks.1.att.x_g") && in_place("blocks.1.att.r_k"));
            ["blocks.0.att.w1", "blocks.1.att.v2"]
        };
        assert!(built.iter().all(|n| !in_place(n)), "{file}");
    }
}

// ---------------------------------------------------------------------------------------------
/// The metadata and tensors of a fixture file, to change and write again.
fn parts(file: &str) -> (Vec<(String, GgufValue)>, Vec<Raw>) {
    let bytes = gguf_bytes(file);
    let g = GgufFile::from_bytes(bytes.clone()).unwrap();
    let tensors = g
        .tensors()
        .iter()
        .map(|t| Raw {
            name: t.name.clone(),
            ne: t.shape.iter().rev().map(|&d| d as u64).collect(),
            ty: t.ggml_type.id(),
            data: bytes[t.range.clone()].to_vec(),
        })
        .collect();
    (g.metadata().to_vec(), tensors)
}

fn set(meta: &mut Vec<(String, GgufValue)>, key: &str, value: Option<GgufValue>) {
    meta.retain(|(k, _)| k != key);
    if let Some(v) = value {
        meta.push((key.to_string(), v));
    }
}

fn text(s: &str) -> GgufValue {
    GgufValue::String(s.as_bytes().to_vec())
}

/// The reader reads everything the writer wrote: rewriting a fixture from what was read gives
/// the same bytes, and a file with another alignment gives the same tensors.
#[test]
fn fixtures_round_trip_through_the_reader() {
    for file in [
        "v6-a.f32.gguf",
        "v7-a.f32.gguf",
        "v6-a.f16.gguf",
        "v7-a.bf16.gguf",
    ] {
        let (meta, tensors) = parts(file);
        assert_eq!(write_gguf(3, &meta, &tensors), gguf_bytes(file), "{file}");
        let g = GgufFile::from_bytes(gguf_bytes(file)).unwrap();
        assert_eq!((g.version(), g.alignment()), (3, 32));
        assert_eq!(
            g.get("tokenizer.ggml.model").and_then(|v| v.as_str()),
            Some("rwkv")
        );
    }
    let (mut meta, tensors) = parts("v7-a.f32.gguf");
    set(&mut meta, "general.alignment", Some(GgufValue::U32(256)));
    let model = Model::from_bytes(write_gguf(2, &meta, &tensors)).unwrap();
    let reference = load_model(&fixture("v7-a"));
    let tokens = [1, 2, 3, 70, 127];
    assert_eq!(logits(&model, &tokens), logits(&reference, &tokens));
}

/// Every metadata value type, nested arrays included, is read back as written.
#[test]
fn every_value_type_is_read() {
    let values = vec![
        GgufValue::U8(200),
        GgufValue::I8(-5),
        GgufValue::U16(60000),
        GgufValue::I16(-30000),
        GgufValue::U32(4_000_000_000),
        GgufValue::I32(-2_000_000_000),
        GgufValue::F32(1.5),
        GgufValue::Bool(true),
        GgufValue::String(vec![0xff, b'a']),
        GgufValue::U64(u64::MAX),
        GgufValue::I64(i64::MIN),
        GgufValue::F64(-0.25),
        GgufValue::Array(vec![GgufValue::U8(1), GgufValue::U8(2)]),
        GgufValue::Array(vec![
            GgufValue::Array(vec![text("a"), text("bc")]),
            GgufValue::Array(vec![text("")]),
        ]),
        GgufValue::Array(vec![]),
    ];
    let meta: Vec<(String, GgufValue)> = values
        .iter()
        .enumerate()
        .map(|(i, v)| (format!("k{i}"), v.clone()))
        .collect();
    let g = GgufFile::from_bytes(write_gguf(3, &meta, &[])).unwrap();
    assert_eq!(g.metadata(), meta.as_slice());
    assert!(g.tensors().is_empty());
}

/// The GGML type table: ids, names and block sizes as ggml defines them.
#[test]
fn ggml_types_have_ids_names_and_block_sizes() {
    let cases = [
        (0, "F32", 1, 4),
        (1, "F16", 1, 2),
        (2, "Q4_0", 32, 18),
        (8, "Q8_0", 32, 34),
        (12, "Q4_K", 256, 144),
        (14, "Q6_K", 256, 210),
        (30, "BF16", 1, 2),
        (39, "MXFP4", 32, 17),
    ];
    for (id, name, block, bytes) in cases {
        let t = GgmlType::from_id(id).unwrap();
        assert_eq!(
            (t.id(), t.name(), t.block_size(), t.block_bytes()),
            (id, name, block, bytes)
        );
    }
    for retired in [4, 5, 31, 32, 33, 36, 37, 38, 1000] {
        assert_eq!(GgmlType::from_id(retired), None, "{retired}");
    }
    assert!(GgmlType::ALL
        .iter()
        .all(|&t| GgmlType::from_id(t.id()) == Some(t)));
}

fn gguf_error(what: &str, bytes: Vec<u8>) -> String {
    match GgufFile::from_bytes(bytes) {
        Err(e @ Error::Checkpoint { format: "GGUF", .. }) => e.to_string(),
        Err(e) => panic!("{what}: not a GGUF error: {e}"),
        Ok(_) => panic!("{what}: malformed file accepted"),
    }
}

fn load_error(what: &str, bytes: Vec<u8>) -> String {
    match Model::from_bytes(bytes) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("{what}: malformed file accepted"),
    }
}

/// Malformed containers are refused with a message that says what is wrong.
#[test]
fn malformed_files_give_named_errors() {
    let good = gguf_bytes("v7-a.f32.gguf");
    let header = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut b = good.clone();
        f(&mut b);
        b
    };
    let (meta, tensors) = parts("v7-a.f32.gguf");
    let with_tensor = |f: &dyn Fn(&mut Raw)| {
        let mut t: Vec<Raw> = parts("v7-a.f32.gguf").1;
        f(&mut t[0]);
        write_gguf(3, &meta, &t)
    };
    let with_meta = |key: &str, v: GgufValue| {
        let mut m = meta.clone();
        set(&mut m, key, Some(v));
        write_gguf(3, &m, &tensors)
    };
    let nested = (0..40).fold(GgufValue::U8(0), |v, _| GgufValue::Array(vec![v]));
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("bad magic", header(&|b| b[3] = b'X'), "not the GGUF magic"),
        ("version 1", header(&|b| b[4] = 1), "version 1"),
        (
            "version 4",
            header(&|b| b[4] = 4),
            "unsupported GGUF version 4",
        ),
        (
            "big-endian",
            header(&|b| b[4..8].copy_from_slice(&3u32.to_be_bytes())),
            "big-endian",
        ),
        ("empty", vec![], "truncated"),
        ("cut in the counts", good[..20].to_vec(), "truncated"),
        ("cut in the metadata", good[..200].to_vec(), "truncated"),
        (
            "huge tensor count",
            header(&|b| b[8..16].copy_from_slice(&u64::MAX.to_le_bytes())),
            "tensor descriptions cannot fit",
        ),
        (
            "huge metadata count",
            header(&|b| b[16..24].copy_from_slice(&(1u64 << 40).to_le_bytes())),
            "metadata pairs cannot fit",
        ),
        (
            "cut in the data",
            good[..good.len() - 1].to_vec(),
            "beyond the end",
        ),
        (
            "tensor beyond the file",
            {
                let mut t = parts("v7-a.f32.gguf").1;
                t.last_mut().unwrap().data.clear();
                write_gguf(3, &meta, &t)
            },
            "beyond the end",
        ),
        (
            "unknown tensor type",
            with_tensor(&|t| t.ty = 99),
            "unknown GGML type id 99",
        ),
        (
            "five axes",
            with_tensor(&|t| t.ne = vec![1, 1, 1, 1, 64]),
            "5 axes",
        ),
        (
            "partial quant block",
            with_tensor(&|t| {
                t.ty = 8;
                t.ne = vec![40, 2]
            }),
            "Q8_0 blocks of 32",
        ),
        (
            "alignment not a power of two",
            with_meta("general.alignment", GgufValue::U32(48)),
            "not a power of two",
        ),
        (
            "misaligned offset",
            {
                let mut b = with_meta("general.alignment", GgufValue::U32(32));
                let key = b
                    .windows(17)
                    .rposition(|w| w == b"general.alignment")
                    .unwrap();
                b[key + 21..key + 25].copy_from_slice(&4096u32.to_le_bytes());
                b
            },
            "not a multiple of the alignment 4096",
        ),
        ("nested too deep", with_meta("x", nested), "nested deeper"),
        (
            "bad boolean",
            {
                let mut b = with_meta("a.flag", GgufValue::Bool(true));
                let key = b.windows(6).rposition(|w| w == b"a.flag").unwrap();
                b[key + 6 + 4] = 2;
                b
            },
            "neither 0 nor 1",
        ),
        (
            "unknown value type",
            {
                let mut b = with_meta("a.value", GgufValue::U8(0));
                let key = b.windows(7).rposition(|w| w == b"a.value").unwrap();
                b[key + 7] = 13;
                b
            },
            "unknown value type 13",
        ),
        (
            "repeated key",
            {
                let mut m = meta.clone();
                m.push(m[0].clone());
                write_gguf(3, &m, &tensors)
            },
            "appears twice",
        ),
        (
            "repeated tensor",
            {
                let mut t = parts("v7-a.f32.gguf").1;
                t[1].name = t[0].name.clone();
                write_gguf(3, &meta, &t)
            },
            "appears twice",
        ),
    ];
    for (what, bytes, want) in cases {
        let err = gguf_error(what, bytes);
        assert!(err.contains(want), "{what}: {err}");
    }
}

/// Every prefix of a header is refused, never read past its end.
#[test]
fn every_truncated_header_is_refused() {
    let good = gguf_bytes("v6-a.f16.gguf");
    let data_offset = GgufFile::from_bytes(good.clone()).unwrap().data_offset();
    for len in 0..data_offset {
        let err = gguf_error(&format!("{len} bytes"), good[..len].to_vec());
        assert!(err.contains("GGUF"), "{len}: {err}");
    }
}

/// Well-formed GGUF files that are not RWKV-6/7 as the crate runs them are refused by name.
#[test]
fn unsupported_models_give_named_errors() {
    let v6 = parts("v6-a.f32.gguf");
    let v7 = parts("v7-a.f32.gguf");
    let changed = |(meta, tensors): &(Vec<(String, GgufValue)>, Vec<Raw>),
                   key: &str,
                   v: Option<GgufValue>| {
        let mut m = meta.clone();
        set(&mut m, key, v);
        write_gguf(3, &m, tensors)
    };
    let retyped = |name: &str, ty: u32| {
        let mut t = parts("v7-a.f32.gguf").1;
        t.iter_mut().find(|t| t.name == name).unwrap().ty = ty;
        write_gguf(3, &v7.0, &t)
    };
    let extra_tensor = {
        let mut t = parts("v7-a.f32.gguf").1;
        let mut extra = parts("v7-a.f32.gguf").1.swap_remove(0);
        extra.name = "blk.0.ffn_gate.weight".into();
        t.push(extra);
        write_gguf(3, &v7.0, &t)
    };
    let no_gate = {
        let mut t = parts("v7-a.f32.gguf").1;
        t.retain(|t| !t.name.contains("time_mix_g"));
        for t in t
            .iter_mut()
            .filter(|t| t.name.ends_with("lerp_fused.weight"))
        {
            t.ne[3] = 5;
            t.data.truncate(5 * 64 * 4);
        }
        write_gguf(3, &v7.0, &t)
    };
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "llama",
            changed(&v7, "general.architecture", Some(text("llama"))),
            "architecture `llama`",
        ),
        (
            "rwkv6qwen2",
            changed(&v6, "general.architecture", Some(text("rwkv6qwen2"))),
            "architecture `rwkv6qwen2`",
        ),
        (
            "arwkv7",
            changed(&v7, "general.architecture", Some(text("arwkv7"))),
            "architecture `arwkv7`",
        ),
        (
            "no architecture",
            changed(&v7, "general.architecture", None),
            "`general.architecture` is missing",
        ),
        (
            // A block format the crate does not run (Q8_0, Q4_0, Q5_0, Q5_1, Q4_K, Q5_K and
            // Q6_K are run, tests/quant_load.rs).
            "quantized",
            retyped("blk.0.time_mix_key.weight", 3),
            "`blocks.0.att.key.weight` is stored as Q4_1 (GGUF tensor `blk.0.time_mix_key.weight`)",
        ),
        (
            "eps",
            changed(
                &v6,
                "rwkv6.attention.layer_norm_epsilon",
                Some(GgufValue::F32(1e-6)),
            ),
            "epsilon 1e-5",
        ),
        (
            "rms eps",
            changed(
                &v7,
                "rwkv7.attention.layer_norm_rms_epsilon",
                Some(GgufValue::F32(1e-6)),
            ),
            "RMS",
        ),
        (
            "token shift",
            changed(&v7, "rwkv7.token_shift_count", Some(GgufValue::U32(1))),
            "token_shift_count",
        ),
        (
            "v7 rescale",
            changed(&v7, "rwkv7.rescale_every_n_layers", Some(GgufValue::U32(6))),
            "does not rescale",
        ),
        (
            "block count",
            changed(&v6, "rwkv6.block_count", Some(GgufValue::U32(3))),
            "the tensors hold 2 blocks",
        ),
        (
            "fewer blocks",
            changed(&v6, "rwkv6.block_count", Some(GgufValue::U32(1))),
            "belongs to block 1",
        ),
        (
            "width",
            changed(&v7, "rwkv7.embedding_length", Some(GgufValue::U32(32))),
            "rwkv7.embedding_length",
        ),
        (
            "ffn",
            changed(&v6, "rwkv6.feed_forward_length", Some(GgufValue::U32(256))),
            "rwkv6.feed_forward_length",
        ),
        (
            "head size",
            changed(&v6, "rwkv6.wkv.head_size", Some(GgufValue::U32(32))),
            "rwkv6.wkv.head_size",
        ),
        (
            "head size 0",
            changed(&v7, "rwkv7.wkv.head_size", Some(GgufValue::U32(0))),
            "does not divide",
        ),
        (
            "mix lora",
            changed(&v6, "rwkv6.time_mix_extra_dim", Some(GgufValue::U32(32))),
            "rwkv6.time_mix_extra_dim",
        ),
        (
            "decay lora",
            changed(&v6, "rwkv6.time_decay_extra_dim", None),
            "`rwkv6.time_decay_extra_dim` is missing",
        ),
        (
            "gate lora",
            changed(
                &v7,
                "rwkv7.attention.gate_lora_rank",
                Some(GgufValue::U32(8)),
            ),
            "gate_lora_rank",
        ),
        (
            "negative",
            changed(&v7, "rwkv7.block_count", Some(GgufValue::I32(-1))),
            "not a non-negative integer",
        ),
        (
            "extra tensor",
            extra_tensor,
            "`blk.0.ffn_gate.weight` is not part of llama.cpp's rwkv7 layout",
        ),
        ("no gate", no_gate, "without its output gate"),
    ];
    for (what, bytes, want) in cases {
        let err = load_error(what, bytes);
        assert!(err.contains(want), "{what}: {err}");
    }
}

/// RWKV-6 files from before llama.cpp fused the token-shift vectors (separate
/// `time_mix_lerp_w/k/v/r/g`) give the same model.
#[test]
fn rwkv6_files_with_separate_token_shift_vectors_load() {
    let (meta, tensors) = parts("v6-a.f32.gguf");
    let mut unfused = Vec::new();
    for t in tensors {
        match t.name.strip_suffix("time_mix_lerp_fused.weight") {
            Some(prefix) => {
                for (i, s) in ["w", "k", "v", "r", "g"].iter().enumerate() {
                    unfused.push(Raw {
                        name: format!("{prefix}time_mix_lerp_{s}.weight"),
                        ne: vec![64, 1, 1],
                        ty: t.ty,
                        data: t.data[i * 256..(i + 1) * 256].to_vec(),
                    });
                }
            }
            None => unfused.push(t),
        }
    }
    let model = Model::from_bytes(write_gguf(3, &meta, &unfused)).unwrap();
    let reference = load_model(&fixture("v6-a"));
    let tokens = [0, 5, 127, 64, 1];
    assert_eq!(logits(&model, &tokens), logits(&reference, &tokens));
}
