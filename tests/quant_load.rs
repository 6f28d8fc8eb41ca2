//! Block-quantized weights at load: quantizing a fixture model's projections at load gives
//! logits close to f32; the crate's quantized safetensors layout round-trips them exactly;
//! a GGUF file whose matrices are quantized loads them in place; malformed blocks are errors
//! naming the tensor.
//!
//! The crate's formats are plugged in by name (`QuantType::format`); these tests run the
//! plumbing with a format of their own, `TestQ8`, laid out as GGML's Q8_0 (an f16 scale and 32
//! signed bytes per 32 values), so they hold for any `BlockFormat`.

mod common;
mod gguf_writer;

use common::*;
use gguf_writer::{write_gguf, Raw};
use half::f16;
use ndarray::Array2;
use tokenshift::ops::Cpu;
use tokenshift::storage::quant::QuantFormat;
use tokenshift::storage::BlockFormat;
use tokenshift::weights::{
    write_quantized_safetensors, Checkpoint, GgufFile, MatrixRole, Quantization, SafeTensorsFile,
    TensorSource,
};
use tokenshift::{Error, Logits, Model};

/// GGML's Q8_0 layout, written plainly: `d` (f16) then 32 values `q` with `x = d · q`.
#[derive(Debug)]
struct TestQ8;

impl BlockFormat for TestQ8 {
    const NAME: &'static str = "q8_0";
    const VALUES: usize = 32;
    const BYTES: usize = 34;
    type Activation = Vec<f32>;

    fn dequantize(block: &[u8], out: &mut [f32]) {
        let d = f16::from_le_bytes([block[0], block[1]]).to_f32();
        for (o, &q) in out.iter_mut().zip(&block[2..34]) {
            *o = d * f32::from(q as i8);
        }
    }

    fn quantize(values: &[f32], block: &mut [u8]) {
        let amax = values.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        block[..2].copy_from_slice(&f16::from_f32(d).to_le_bytes());
        for (b, v) in block[2..34].iter_mut().zip(values) {
            *b = ((v * id).round() as i8) as u8;
        }
    }

    fn quantize_activation_into(_: Cpu, x: &[f32], act: &mut Vec<f32>) {
        act.clear();
        act.extend_from_slice(x);
    }

    fn dot(_cpu: Cpu, row: &[u8], x: &Vec<f32>) -> f32 {
        let mut values = [0f32; 32];
        let mut sum = 0f32;
        for (block, xs) in row.chunks_exact(34).zip(x.chunks_exact(32)) {
            Self::dequantize(block, &mut values);
            sum += values.iter().zip(xs).map(|(a, b)| a * b).sum::<f32>();
        }
        sum
    }

    fn check_block(block: &[u8]) -> Result<(), String> {
        let d = f16::from_le_bytes([block[0], block[1]]);
        if d.is_finite() {
            Ok(())
        } else {
            Err(format!("scale {d}"))
        }
    }
}

fn test_format() -> QuantFormat {
    QuantFormat::of::<TestQ8>()
}

fn logits(model: &Model, tokens: &[u32]) -> Array2<f32> {
    let mut state = model.init_state();
    model.forward(tokens, &mut state, Logits::All).unwrap()
}

const TOKENS: [u32; 8] = [1, 2, 3, 70, 127, 5, 64, 9];

fn max_abs(a: &Array2<f32>, b: &Array2<f32>) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Every fixture model with its block projections quantized at load gives logits within a
/// loose bound of the f32 model's, and reads fewer bytes per token. Measured with 8-bit
/// blocks over 8 tokens: max |Δlogit| from 2.1e-2 (v4-a) to 1.1e-1 (v5.0-a), against largest
/// logits of about 3.5 (these random-weight models have no structure for the rounding to
/// average out over); asserted below 5% of the largest logit.
#[test]
fn quantized_at_load_is_close_to_f32() {
    let quant = Quantization::to(test_format());
    for dir in fixtures().into_iter().filter(|d| d.ends_with_a()) {
        let file = SafeTensorsFile::open(dir.join("model.safetensors")).unwrap();
        let dense = Model::from_source(&file).unwrap();
        let q = Model::from_source_quantized(&file, &quant).unwrap();
        let (want, got) = (logits(&dense, &TOKENS), logits(&q, &TOKENS));
        let diff = max_abs(&want, &got);
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        eprintln!(
            "{}: max |Δlogit| {diff:.2e} (largest logit {scale:.2})",
            dir.display()
        );
        assert!(
            diff > 0.0 && diff < 0.05 * scale.max(1.0),
            "{}",
            dir.display()
        );
        // Decode reads each projection in blocks: 34 bytes for 32 values instead of 128.
        assert!(
            (q.decode_bytes_per_token() as f64) < 0.6 * dense.decode_bytes_per_token() as f64,
            "{}",
            dir.display()
        );
        // Decode and prefill agree on the quantized model too.
        let mut state = q.init_state();
        for (t, &tok) in TOKENS.iter().enumerate() {
            let row = q.step(tok, &mut state).unwrap();
            let d = row
                .iter()
                .zip(got.row(t))
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(d < 1e-3, "{} token {t}: {d}", dir.display());
        }
    }
}

trait FixtureName {
    fn ends_with_a(&self) -> bool;
}

impl FixtureName for std::path::PathBuf {
    fn ends_with_a(&self) -> bool {
        self.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('v') && n.ends_with("-a"))
    }
}

/// The default set quantizes the projections and the head; the embedding and the low-rank
/// factors can be asked for too (those that are whole blocks wide).
#[test]
fn the_quantized_set_is_chosen_by_role() {
    let file = SafeTensorsFile::open(fixture("v7-a").join("model.safetensors")).unwrap();
    let dense = Model::from_source(&file).unwrap();
    let default = Model::from_source_quantized(&file, &Quantization::to(test_format())).unwrap();
    let all = Quantization::to(test_format()).with_roles(&[
        MatrixRole::Projection,
        MatrixRole::LowRank,
        MatrixRole::Head,
        MatrixRole::Embedding,
    ]);
    let all = Model::from_source_quantized(&file, &all).unwrap();
    let b = |m: &Model| m.decode_bytes_per_token();
    assert!(b(&all) < b(&default) && b(&default) < b(&dense));
    let diff = max_abs(&logits(&dense, &TOKENS), &logits(&all, &TOKENS));
    eprintln!("v7-a, every matrix in blocks: max |Δlogit| {diff:.2e}");
    assert!(diff < 0.1);
    assert_eq!(
        MatrixRole::of_tensor("blocks.3.att.gate.weight"),
        Some(MatrixRole::Projection)
    );
    assert_eq!(MatrixRole::of_tensor("blocks.3.att.w1"), None);
    assert_eq!(MatrixRole::of_tensor("blocks.3.ln1.weight"), None);
}

/// A file written in the crate's quantized safetensors layout loads (blocks in place from the
/// map) to the same logits as quantizing at load, and names each format in its metadata.
#[test]
fn quantized_safetensors_round_trip() {
    let quant = Quantization::to(test_format());
    for dir in fixtures().into_iter().filter(|d| d.ends_with_a()) {
        let file = SafeTensorsFile::open(dir.join("model.safetensors")).unwrap();
        let at_load = Model::from_source_quantized(&file, &quant).unwrap();
        let out = std::env::temp_dir().join(format!(
            "tokenshift-quant-{}-{}.safetensors",
            std::process::id(),
            dir.file_name().unwrap().to_str().unwrap()
        ));
        let skipped = write_quantized_safetensors(&file, &out, None, &|name, shape| {
            quant.tensor_target(name, shape)
        })
        .unwrap();
        assert!(skipped.is_empty());
        let written = SafeTensorsFile::open(&out).unwrap();
        // As `Model::load` opens it (the container detected, the names checked).
        let checkpoint = Checkpoint::open(&out).unwrap();
        std::fs::remove_file(&out).unwrap();
        assert_eq!(
            written.metadata()["tokenshift.quant.blocks.0.att.key.weight"],
            "q8_0"
        );
        let blocks = written.blocks("blocks.0.att.key.weight").unwrap();
        assert!(blocks.bytes.is_mapped());
        assert_eq!(blocks.shape, [64, 64]);
        assert_eq!(written.shape("blocks.0.att.key.weight").unwrap(), [64, 64]);
        let reading = Quantization::none().reading(test_format());
        let loaded = Model::from_source_quantized(checkpoint.source(), &reading).unwrap();
        assert_eq!(
            logits(&loaded, &TOKENS),
            logits(&at_load, &TOKENS),
            "{}",
            dir.display()
        );
        assert_eq!(
            loaded.decode_bytes_per_token(),
            at_load.decode_bytes_per_token()
        );
    }
}

/// The projections llama.cpp's `rwkv6` layout stores as `[out, in]` matrices and the adapter
/// only renames (`time_mix_output` and `channel_mix_value` are rescaled past block 0 in this
/// fixture, `rescale_every_n_layers` = 1, so they are decoded, rescaled and kept in f32, which
/// needs the crate's own format).
const V6_PROJECTIONS: [&str; 6] = [
    "time_mix_key",
    "time_mix_value",
    "time_mix_receptance",
    "time_mix_gate",
    "channel_mix_key",
    "channel_mix_receptance",
];

/// The f32 `rwkv6` GGUF fixture with its renamed block projections stored as `ty` (GGML type
/// id) blocks made by `encode` from their values.
fn quantized_gguf(ty: u32, encode: &dyn Fn(&[f32]) -> Vec<u8>) -> Vec<u8> {
    let path = fixtures_dir().join("formats/gguf/v6-a.f32.gguf");
    let bytes = std::fs::read(path).unwrap();
    let g = GgufFile::from_bytes(bytes.clone()).unwrap();
    let tensors: Vec<Raw> = g
        .tensors()
        .iter()
        .map(|t| {
            let data = bytes[t.range.clone()].to_vec();
            let ne = t.shape.iter().rev().map(|&d| d as u64).collect();
            let projection = V6_PROJECTIONS
                .iter()
                .any(|p| t.name.ends_with(&format!(".{p}.weight")));
            if projection {
                let values: Vec<f32> = data
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                    .collect();
                Raw {
                    name: t.name.clone(),
                    ne,
                    ty,
                    data: encode(&values),
                }
            } else {
                Raw {
                    name: t.name.clone(),
                    ne,
                    ty: t.ggml_type.id(),
                    data,
                }
            }
        })
        .collect();
    write_gguf(3, g.metadata(), &tensors)
}

/// A GGUF file whose projections are Q8_0 loads them as blocks in place: quantizing the rest
/// at load gives the logits of the f32 file quantized at load (the same blocks).
#[test]
fn quantized_gguf_loads_in_place() {
    let encode = |v: &[f32]| test_format().encode(v).unwrap();
    let bytes = quantized_gguf(8, &encode);
    let path = std::env::temp_dir().join(format!("tokenshift-q8-{}.gguf", std::process::id()));
    std::fs::write(&path, &bytes).unwrap();
    let checkpoint = Checkpoint::open(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    let source = checkpoint.source();
    let key = source.blocks("blocks.1.att.key.weight").unwrap();
    assert_eq!(
        (key.format.as_str(), key.shape.as_slice()),
        ("q8_0", &[64, 64][..])
    );
    assert!(key.bytes.is_mapped());
    let both = Quantization::to(test_format()).reading(test_format());
    let model = Model::from_source_quantized(source, &both).unwrap();

    let f32_file = Checkpoint::open(fixtures_dir().join("formats/gguf/v6-a.f32.gguf")).unwrap();
    let at_load =
        Model::from_source_quantized(f32_file.source(), &Quantization::to(test_format())).unwrap();
    assert_eq!(logits(&model, &TOKENS), logits(&at_load, &TOKENS));
    assert_eq!(
        model.decode_bytes_per_token(),
        at_load.decode_bytes_per_token()
    );

    // The crate's own Q8_0 reads such a file as it is: the same blocks, with the activation
    // quantized to 8 bits for its integer dot products, so close to the test format's logits.
    let own = Model::from_bytes(bytes).unwrap();
    let (a, b) = (logits(&own, &TOKENS), logits(&model, &TOKENS));
    let scale = b.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let diff = a
        .iter()
        .zip(&b)
        .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()));
    assert!(diff <= 0.05 * scale, "{diff} of {scale}");
}

/// A bad block (a NaN scale), blocks of the wrong length, an unknown or unavailable format:
/// errors naming the tensor.
#[test]
fn malformed_blocks_are_named_errors() {
    let reading = Quantization::none().reading(test_format());
    // A NaN scale in block 1 of row 2 of block 0's key.
    let mut bytes = quantized_gguf(8, &|v| test_format().encode(v).unwrap());
    let g = GgufFile::from_bytes(bytes.clone()).unwrap();
    let key = g
        .tensors()
        .iter()
        .find(|t| t.name == "blk.0.time_mix_key.weight")
        .unwrap();
    let at = key.range.start + (2 * 2 + 1) * 34;
    bytes[at..at + 2].copy_from_slice(&f16::NAN.to_le_bytes());
    let gguf = Checkpoint::from_bytes(bytes).unwrap();
    let err = Model::from_source_quantized(gguf.source(), &reading).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(&err, Error::Blocks { name, .. } if name == "blocks.0.att.key.weight"),
        "{msg}"
    );
    assert!(msg.contains("block 1 of row 2"), "{msg}");

    // Q4_0 blocks of zeros are valid blocks: the crate's own Q4_0 reads them.
    let q4 = quantized_gguf(2, &|v| vec![0; v.len() / 32 * 18]);
    let gguf = Checkpoint::from_bytes(q4).unwrap();
    Model::from_source(gguf.source()).unwrap();

    // Safetensors: blocks of the wrong length, and a format name the crate does not know.
    let quant = Quantization::to(test_format());
    let file = SafeTensorsFile::open(fixture("v5.2-a").join("model.safetensors")).unwrap();
    let out = std::env::temp_dir().join(format!("tokenshift-badq-{}.st", std::process::id()));
    write_quantized_safetensors(&file, &out, None, &|name, shape| {
        quant.tensor_target(name, shape)
    })
    .unwrap();
    let good = std::fs::read(&out).unwrap();
    std::fs::remove_file(&out).unwrap();
    let header_len = u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
    let header = std::str::from_utf8(&good[8..8 + header_len])
        .unwrap()
        .to_string();
    let with_header = |h: String| {
        let mut b = (h.len() as u64).to_le_bytes().to_vec();
        b.extend(h.as_bytes());
        b.extend(&good[8 + header_len..]);
        b
    };
    let unknown = header.replacen(
        "\"tokenshift.quant.blocks.1.att.key.weight\":\"q8_0\"",
        "\"tokenshift.quant.blocks.1.att.key.weight\":\"q3_k\"",
        1,
    );
    assert_ne!(unknown, header);
    let err = SafeTensorsFile::from_bytes(with_header(unknown)).unwrap_err();
    assert!(
        err.to_string().contains("blocks.1.att.key.weight") && err.to_string().contains("q3_k"),
        "{err}"
    );
    let wrong_format = header.replacen(
        "\"tokenshift.quant.blocks.1.att.key.weight\":\"q8_0\"",
        "\"tokenshift.quant.blocks.1.att.key.weight\":\"q4_0\"",
        1,
    );
    // 64 rows of 68 bytes are not whole 18-byte q4_0 blocks.
    let err = SafeTensorsFile::from_bytes(with_header(wrong_format)).unwrap_err();
    assert!(
        err.to_string().contains("blocks.1.att.key.weight")
            && err.to_string().contains("q4_0 blocks"),
        "{err}"
    );
}

/// Bytes per token count each matrix in its storage: for a dense f32 model, four bytes per
/// element of every block matrix and low-rank factor, one f32 embedding row and the head.
#[test]
fn decode_bytes_count_the_storages() {
    for name in ["v4-a", "v6-a"] {
        let file = SafeTensorsFile::open(fixture(name).join("model.safetensors")).unwrap();
        let model = Model::from_source(&file).unwrap();
        let elements: usize = file
            .names()
            .into_iter()
            .filter(|n| {
                n.starts_with("blocks.")
                    && (n.ends_with(".weight") || n.contains("_w1") || n.contains("_w2"))
            })
            .map(|n| file.shape(n).unwrap())
            .filter(|s| s.len() >= 2)
            .map(|s| s.iter().product::<usize>())
            .sum();
        let c = model.config().n_embd;
        let head = model.config().vocab * c;
        assert_eq!(
            model.decode_bytes_per_token(),
            4 * (elements + c + head),
            "{name}"
        );
    }
}

/// The gguf package's own Q8_0 file (`tools/quant/make_quant_gguf.py`: v7-a with every block
/// projection quantized by `gguf.quants.quantize`) loads its blocks in place under BlinkDL
/// names and shapes: the blocks are those the test format makes from the same values (bar
/// rounding ties, numpy rounding half to even: none in this file), and the logits those of
/// the f32 file quantized at load.
#[test]
fn gguf_package_q8_0_file_loads() {
    let q8 = Checkpoint::open(fixtures_dir().join("quant/v7-a.q8_0.gguf")).unwrap();
    let f32_file = Checkpoint::open(fixtures_dir().join("formats/gguf/v7-a.f32.gguf")).unwrap();
    let (q8, dense) = (q8.source(), f32_file.source());
    let mut blocks = 0;
    let (mut bytes, mut differ) = (0usize, 0usize);
    for name in dense.names() {
        if MatrixRole::of_tensor(name) != Some(MatrixRole::Projection) {
            assert!(q8.blocks(name).is_none(), "{name}");
            continue;
        }
        let b = q8
            .blocks(name)
            .unwrap_or_else(|| panic!("{name} in blocks"));
        assert_eq!(b.format, "q8_0");
        assert_eq!(b.shape, dense.shape(name).unwrap(), "{name}");
        assert!(b.bytes.is_mapped());
        let values = dense.tensor(name).unwrap().to_f32();
        let ours = test_format().encode(values.as_slice().unwrap()).unwrap();
        bytes += ours.len();
        differ += ours
            .iter()
            .zip(b.bytes.as_slice())
            .filter(|(a, b)| a != b)
            .count();
        blocks += 1;
    }
    assert_eq!(blocks, 2 * 6);
    eprintln!("gguf Q8_0 blocks: {differ} of {bytes} bytes differ from the test format's");
    assert!(differ * 1000 <= bytes, "{differ} of {bytes}");

    let reading = Quantization::none().reading(test_format());
    let model = Model::from_source_quantized(q8, &reading).unwrap();
    // The file quantizes the projections only: so does the load compared with it.
    let projections = Quantization::to(test_format()).with_roles(&[MatrixRole::Projection]);
    let at_load = Model::from_source_quantized(dense, &projections).unwrap();
    assert_eq!(
        model.decode_bytes_per_token(),
        at_load.decode_bytes_per_token()
    );
    let diff = max_abs(&logits(&model, &TOKENS), &logits(&at_load, &TOKENS));
    eprintln!("gguf Q8_0 file against quantized at load: max |Δlogit| {diff:.2e}");
    assert!(diff < 1e-2, "{diff}");
}

/// As llama.cpp does, a K type quantizes a matrix whose rows are not whole 256-value blocks to
/// its 32-value fallback (Q4_K → Q5_0, Q5_K → Q5_1, Q6_K → Q8_0): an RWKV-6 of width 256 has
/// channel-mix rows of 896 values (3.5 · 256) in `ffn.value`, every other projection and the
/// head are whole 256-value blocks. At load, and in a file `convert --quantize` writes
/// (`tensor_target`), which loads to the same matrices and logits.
#[test]
fn k_types_fall_back_where_rows_are_not_whole_blocks() {
    use tokenshift::storage::quant::QuantType;
    use tokenshift::synthetic::random_checkpoint;
    use tokenshift::{Config, DType, Version};
    let config = Config::standard(Version::V6, 1, 256, 64, 300);
    assert_eq!(config.dim_ffn, 896);
    let source = random_checkpoint(&config, DType::F32, 3).unwrap();
    let types = |m: &Model| {
        let ffn = &m.blocks()[0].ffn;
        (
            ffn.key().matrix().type_name(),
            ffn.value().matrix().type_name(),
        )
    };
    for (ty, fallback) in [
        (QuantType::Q4_K, "q5_0"),
        (QuantType::Q5_K, "q5_1"),
        (QuantType::Q6_K, "q8_0"),
    ] {
        let quant = Quantization::to(ty.format());
        let model = Model::from_source_quantized(&source, &quant).unwrap();
        assert_eq!(types(&model), (ty.name(), fallback), "{ty}");

        let out = std::env::temp_dir().join(format!(
            "tokenshift-fallback-{}-{ty}.safetensors",
            std::process::id()
        ));
        write_quantized_safetensors(&source, &out, None, &|name, shape| {
            quant.tensor_target(name, shape)
        })
        .unwrap();
        let written = SafeTensorsFile::open(&out).unwrap();
        let checkpoint = Checkpoint::open(&out).unwrap();
        std::fs::remove_file(&out).unwrap();
        let meta = written.metadata();
        assert_eq!(meta["tokenshift.quant.blocks.0.ffn.value.weight"], fallback);
        assert_eq!(meta["tokenshift.quant.blocks.0.ffn.key.weight"], ty.name());
        assert_eq!(meta["tokenshift.quant.head.weight"], ty.name());
        let loaded = Model::from_source(checkpoint.source()).unwrap();
        assert_eq!(types(&loaded), (ty.name(), fallback), "{ty}");
        assert_eq!(logits(&loaded, &TOKENS), logits(&model, &TOKENS), "{ty}");
    }
    // A 32-value type has no fallback: 896 is whole Q8_0 blocks, and so stays Q8_0.
    let q8 = Model::from_source_quantized(&source, &Quantization::to(QuantType::Q8_0.format()));
    assert_eq!(types(&q8.unwrap()), ("q8_0", "q8_0"));
}

/// `F`'s blocks dotted in f32 after dequantizing them (no quantized activation): the
/// reference of `F`'s own kernels in a whole model.
#[derive(Debug)]
struct Dequantized<F>(std::marker::PhantomData<F>);

impl<F: BlockFormat> BlockFormat for Dequantized<F> {
    const NAME: &'static str = F::NAME;
    const VALUES: usize = F::VALUES;
    const BYTES: usize = F::BYTES;
    type Activation = Vec<f32>;

    fn dequantize(block: &[u8], out: &mut [f32]) {
        F::dequantize(block, out)
    }

    fn quantize(values: &[f32], block: &mut [u8]) {
        F::quantize(values, block)
    }

    fn quantize_activation_into(_: Cpu, x: &[f32], act: &mut Vec<f32>) {
        act.clear();
        act.extend_from_slice(x);
    }

    fn dot(_cpu: Cpu, row: &[u8], x: &Vec<f32>) -> f32 {
        let mut values = vec![0f32; F::VALUES];
        let mut sum = 0f64;
        for (block, xs) in row.chunks_exact(F::BYTES).zip(x.chunks_exact(F::VALUES)) {
            F::dequantize(block, &mut values);
            sum += values
                .iter()
                .zip(xs)
                .map(|(a, b)| *a as f64 * *b as f64)
                .sum::<f64>();
        }
        sum as f32
    }

    fn check_block(block: &[u8]) -> Result<(), String> {
        F::check_block(block)
    }
}

/// GGUF files whose projections are Q5_0 or Q5_1 (ggml types 6 and 7) load them in place with
/// the crate's formats: logits close to those of the same blocks dotted in f32 (the
/// difference is the activation's 8-bit quantization, as for Q8_0), and further from the f32
/// file's.
#[test]
fn gguf_q5_projections_load_in_place() {
    use tokenshift::storage::quant::{QuantType, Q5_0, Q5_1, Q8_0};
    let f32_file = Checkpoint::open(fixtures_dir().join("formats/gguf/v6-a.f32.gguf")).unwrap();
    let want = logits(&Model::from_source(f32_file.source()).unwrap(), &TOKENS);
    let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    for (ty, exact) in [
        (QuantType::Q8_0, QuantFormat::of::<Dequantized<Q8_0>>()),
        (QuantType::Q5_0, QuantFormat::of::<Dequantized<Q5_0>>()),
        (QuantType::Q5_1, QuantFormat::of::<Dequantized<Q5_1>>()),
    ] {
        let bytes = quantized_gguf(ty.ggml().id(), &|v| ty.format().encode(v).unwrap());
        let gguf = Checkpoint::from_bytes(bytes).unwrap();
        let key = gguf.source().blocks("blocks.1.att.key.weight").unwrap();
        assert_eq!(
            (key.format.as_str(), &key.shape[..]),
            (ty.name(), &[64, 64][..])
        );
        let model = Model::from_source(gguf.source()).unwrap();
        assert_eq!(model.blocks()[1].ffn.key().matrix().type_name(), ty.name());
        let reference = Quantization::none().reading(exact);
        let reference = Model::from_source_quantized(gguf.source(), &reference).unwrap();
        let got = logits(&model, &TOKENS);
        let kernels = max_abs(&got, &logits(&reference, &TOKENS));
        let rounding = max_abs(&got, &want);
        eprintln!(
            "{ty} GGUF: max |Δlogit| {kernels:.2e} against its blocks in f32, {rounding:.2e} \
             against the f32 file (largest {scale:.2})"
        );
        assert!(kernels > 0.0 && kernels < 0.05 * scale, "{ty}: {kernels}");
        assert!(rounding < 0.15 * scale, "{ty}: {rounding}");
    }
}
