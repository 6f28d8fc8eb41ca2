//! The shipped default model, `assets/models/kjv-rwkv6.safetensors`: a byte-level RWKV-6
//! trained on the King James Bible by `tools/train` (see `tools/train/README.md`).
//!
//! - The crate's cross-entropy on held-out text (a chapter never trained on) must agree with
//!   the number the training tools computed in PyTorch from the same exported f16 weights.
//! - Greedy generation must produce English-like bytes (a sanity check, not a pinned output).

use ndarray::ArrayView1;
use safetensors::SafeTensors;
use std::path::{Path, PathBuf};
use tokenshift::{Logits, Model};

const MODEL: &str = "assets/models/kjv-rwkv6.safetensors";
const HELDOUT: &str = "tests/fixtures/heldout/kjv-genesis-50.txt";

/// Bits per byte of `HELDOUT` under the shipped weights, computed by `tools/train/export.py`
/// (PyTorch, the f16 weights converted to f32, f32 arithmetic): the mean of
/// `-log2 p(byte[t] | byte[..t])` over t = 1..n-1, from the zero state, in windows of 256
/// tokens carrying the state. The same number is in the file's metadata
/// (`heldout_fixture_bits_per_byte`); see `tests/fixtures/heldout/README.md`.
const HELDOUT_BPB_TORCH: f64 = 1.267346;

fn path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn load() -> Model {
    Model::load(path(MODEL)).expect("the shipped model loads")
}

/// Byte-level ids: id = byte + 1 (id 0 = end of text).
fn encode(bytes: &[u8]) -> Vec<u32> {
    bytes.iter().map(|&b| u32::from(b) + 1).collect()
}

/// `-ln p(target)` under `logits`, in f64.
fn nll(logits: ArrayView1<f32>, target: u32) -> f64 {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) as f64;
    let lse = max
        + logits
            .iter()
            .map(|&x| (x as f64 - max).exp())
            .sum::<f64>()
            .ln();
    lse - logits[target as usize] as f64
}

/// Mean cross-entropy of `ids[1..]` given the preceding ids, in bits per token.
fn bits_per_token(model: &Model, ids: &[u32], window: usize) -> f64 {
    let (inputs, targets) = (&ids[..ids.len() - 1], &ids[1..]);
    let mut state = model.init_state();
    let mut total = 0.0;
    for start in (0..inputs.len()).step_by(window) {
        let end = (start + window).min(inputs.len());
        let logits = model
            .forward(&inputs[start..end], &mut state, Logits::All)
            .expect("forward");
        assert_eq!(logits.nrows(), end - start);
        for (row, &t) in logits.rows().into_iter().zip(&targets[start..end]) {
            total += nll(row, t);
        }
    }
    total / targets.len() as f64 / std::f64::consts::LN_2
}

#[test]
fn shipped_model_is_small_f16_rwkv6_with_byte_vocab() {
    let bytes = std::fs::read(path(MODEL)).expect("the shipped model exists");
    assert!(bytes.len() < 8 * 1024 * 1024, "{} bytes", bytes.len());
    let st = SafeTensors::deserialize(&bytes).expect("valid safetensors");
    assert!(st
        .tensors()
        .iter()
        .all(|(_, t)| t.dtype() == safetensors::Dtype::F16));
    let (_, meta) = SafeTensors::read_metadata(&bytes).expect("header");
    let meta = meta.metadata().as_ref().expect("metadata present");
    for key in [
        "training_command",
        "steps",
        "tokens_seen",
        "training_wall_seconds",
        "valid_bits_per_byte",
    ] {
        assert!(meta.contains_key(key), "metadata lacks {key}");
    }
    let recorded: f64 = meta["heldout_fixture_bits_per_byte"].parse().unwrap();
    assert!(
        (recorded - HELDOUT_BPB_TORCH).abs() < 1e-6,
        "{recorded} vs {HELDOUT_BPB_TORCH}"
    );

    let model = load();
    let c = model.config();
    assert_eq!(c.vocab, 257);
    assert_eq!(c.version, tokenshift::Version::V6);
}

#[test]
fn heldout_bits_per_byte_match_training_tools() {
    let model = load();
    let text = std::fs::read(path(HELDOUT)).expect("held-out text");
    assert!(text.len() > 2000);
    let bpb = bits_per_token(&model, &encode(&text), 256);
    let rel = (bpb - HELDOUT_BPB_TORCH).abs() / HELDOUT_BPB_TORCH;
    eprintln!(
        "held-out: crate {bpb:.6} bits/byte, PyTorch {HELDOUT_BPB_TORCH:.6} (rel. diff {rel:.1e})"
    );
    assert!(rel < 0.01, "crate {bpb} vs PyTorch {HELDOUT_BPB_TORCH}");
    // and the model has learned something: a uniform guess is 8 bits per byte
    assert!(bpb < 3.0, "{bpb}");
}

fn argmax(l: ArrayView1<f32>) -> u32 {
    l.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(i, _)| i as u32)
        .unwrap()
}

/// Samples from softmax(logits / temperature) with a fixed-seed xorshift64* generator.
struct TemperatureSampler {
    temperature: f64,
    rng: u64,
}

impl TemperatureSampler {
    fn sample(&mut self, l: ArrayView1<f32>) -> u32 {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let u = (self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64;
        let max = l.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) as f64;
        let p: Vec<f64> = l
            .iter()
            .map(|&x| ((x as f64 - max) / self.temperature).exp())
            .collect();
        let mut target = u * p.iter().sum::<f64>();
        for (i, &pi) in p.iter().enumerate() {
            target -= pi;
            if target <= 0.0 {
                return i as u32;
            }
        }
        argmax(l)
    }
}

/// Generates `n` bytes after `prompt`: the prompt in one `forward`, then `step` per token.
fn generate(
    model: &Model,
    prompt: &[u8],
    n: usize,
    mut pick: impl FnMut(ArrayView1<f32>) -> u32,
) -> Vec<u8> {
    let mut state = model.init_state();
    let logits = model
        .forward(&encode(prompt), &mut state, Logits::Last)
        .expect("prompt");
    let mut next = pick(logits.row(0));
    let mut out = Vec::new();
    for _ in 0..n {
        assert!((1..=256).contains(&next), "token {next}");
        out.push((next - 1) as u8);
        let logits = model.step(next, &mut state).expect("step");
        next = pick(logits.view());
    }
    out
}

/// Mostly ASCII letters and spaces, only printable ASCII and newlines, several distinct words.
fn assert_english_like(out: &[u8], min_letters_spaces_percent: usize) {
    let text = String::from_utf8_lossy(out);
    let letters_spaces = out
        .iter()
        .filter(|b| b.is_ascii_alphabetic() || **b == b' ')
        .count();
    assert!(
        letters_spaces * 100 >= out.len() * min_letters_spaces_percent,
        "only {letters_spaces}/{} letters or spaces: {text:?}",
        out.len()
    );
    assert!(
        out.iter()
            .all(|b| b.is_ascii_graphic() || *b == b' ' || *b == b'\n'),
        "{text:?}"
    );
    let words: std::collections::HashSet<&str> = text.split_whitespace().collect();
    assert!(words.len() >= 3, "{text:?}");
}

#[test]
fn greedy_generation_is_english_like() {
    let model = load();
    let prompt = b"And the LORD said unto Moses, ";
    let out = generate(&model, prompt, 200, argmax);
    eprintln!(
        "greedy: {}{}",
        String::from_utf8_lossy(prompt),
        String::from_utf8_lossy(&out)
    );
    assert_english_like(&out, 85);
}

#[test]
fn sampled_generation_is_english_like() {
    let model = load();
    let prompt = b"In the beginning ";
    let mut sampler = TemperatureSampler {
        temperature: 0.7,
        rng: 0x9E37_79B9_7F4A_7C15,
    };
    let out = generate(&model, prompt, 300, |l| sampler.sample(l));
    eprintln!(
        "sampled (T=0.7): {}{}",
        String::from_utf8_lossy(prompt),
        String::from_utf8_lossy(&out)
    );
    assert_english_like(&out, 80);
}

/// `step_batch` on the trained model: every row within rounding of `step` (the products sum in
/// another order, so the bits may differ; the bound is the one `Model::step_batch` documents).
#[test]
fn step_batch_rows_are_steps_up_to_rounding() {
    let model = load();
    let text = b"And God said, Let there be light: and there was light. And God saw the light";
    let tokens = encode(text);
    for b in [2usize, 4, 8] {
        let mut states: Vec<_> = (0..b).map(|_| model.init_state()).collect();
        for (i, s) in states.iter_mut().enumerate() {
            model.forward(&tokens[..i + 1], s, Logits::Last).unwrap();
        }
        for step in 0..32 {
            let next: Vec<u32> = (0..b)
                .map(|i| tokens[(i + step + 1) % tokens.len()])
                .collect();
            let mut alone = states.clone();
            let batched = model.step_batch(&next, &mut states).unwrap();
            for (i, s) in alone.iter_mut().enumerate() {
                let row = model.step(next[i], s).unwrap();
                let largest = row.iter().fold(0f32, |m, v| m.max(v.abs()));
                let worst = row
                    .iter()
                    .zip(batched.row(i))
                    .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
                assert!(
                    worst <= 2e-4 * largest,
                    "B={b} step {step} row {i}: |Δ logits| {worst} against a largest logit of \
                     {largest}"
                );
                // Carry on from the one-token states so that differences do not accumulate.
                states[i] = s.clone();
            }
        }
    }
}
