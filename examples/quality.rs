//! How much the quantized types change a model's output.
//!
//! ```text
//! cargo run --release --example quality
//! cargo run --release --example quality -- --types q8_0,q4_0 --skip-large
//! ```
//!
//! For each type, with the block projections quantized (the default of
//! `Model::load_quantized`) and, separately, the head as well:
//! - on each committed fixture model (`tests/fixtures/*-a`, f32): max and mean |Δ logits|
//!   against the f32 model and top-1 agreement, over 64 tokens;
//! - on a random model of the 0.1B shape (RWKV-6, 12 × 768, f16): the same statistics against
//!   f16;
//! - on the shipped trained model: held-out bits per byte (Genesis 50), against f16.
//!
//! A matrix whose input width is not a whole number of 256-value blocks takes a K type's
//! fallback (Q4_K → Q5_0, Q5_K → Q5_1, Q6_K → Q8_0: the shipped model's widths of 192 and 672,
//! the fixtures' 64), one not a whole number of 32-value blocks stays as stored, and the
//! output says how many bytes per token each model reads.

use clap::Parser;
use ndarray::{Array2, ArrayView1};
use tokenshift::storage::quant::QuantType;
use tokenshift::synthetic::random_checkpoint;
use tokenshift::weights::{MatrixRole, Quantization, TensorSource};
use tokenshift::{Config, DType, Logits, Model, Version};

#[derive(Parser)]
#[command(about = "Logit statistics and held-out bits per byte of the quantized types")]
struct Args {
    /// Types to measure, comma-separated (default: every type)
    #[arg(long, value_delimiter = ',')]
    types: Vec<QuantType>,
    /// Skip the 0.1B-shape random model (the slowest part)
    #[arg(long)]
    skip_large: bool,
}

/// Max |Δ|, mean |Δ| and the share of rows whose largest logit is the same token.
fn compare(a: &Array2<f32>, b: &Array2<f32>) -> (f32, f64, f64) {
    let max = a
        .iter()
        .zip(b)
        .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()));
    let mean = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs() as f64)
        .sum::<f64>()
        / a.len() as f64;
    let argmax = |r: ArrayView1<f32>| {
        r.iter()
            .enumerate()
            .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &v)| {
                if v > bv {
                    (i, v)
                } else {
                    (bi, bv)
                }
            })
            .0
    };
    let same = a
        .rows()
        .into_iter()
        .zip(b.rows())
        .filter(|(x, y)| argmax(*x) == argmax(*y))
        .count();
    (max, mean, same as f64 / a.nrows() as f64)
}

fn tokens(vocab: usize, n: usize) -> Vec<u32> {
    (0..n).map(|i| ((i * 7919 + 13) % vocab) as u32).collect()
}

fn logits(model: &Model, ids: &[u32]) -> Result<Array2<f32>, tokenshift::Error> {
    let mut state = model.init_state();
    model.forward(ids, &mut state, Logits::All)
}

/// Mean `-log2 p(next byte)` over a text, from the zero state, in windows of 256 tokens.
fn bits_per_byte(model: &Model, text: &[u8]) -> Result<f64, tokenshift::Error> {
    let ids: Vec<u32> = text.iter().map(|&b| u32::from(b) + 1).collect();
    let (inputs, targets) = (&ids[..ids.len() - 1], &ids[1..]);
    let mut state = model.init_state();
    let mut total = 0.0;
    for start in (0..inputs.len()).step_by(256) {
        let end = (start + 256).min(inputs.len());
        let l = model.forward(&inputs[start..end], &mut state, Logits::All)?;
        for (row, &t) in l.rows().into_iter().zip(&targets[start..end]) {
            let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) as f64;
            let lse = max
                + row
                    .iter()
                    .map(|&x| (x as f64 - max).exp())
                    .sum::<f64>()
                    .ln();
            total += lse - row[t as usize] as f64;
        }
    }
    Ok(total / targets.len() as f64 / std::f64::consts::LN_2)
}

/// The two settings measured: projections only (the default), and projections with the head.
fn settings(
    ty: QuantType,
) -> Result<Vec<(&'static str, Quantization)>, Box<dyn std::error::Error>> {
    let format = ty.format();
    Ok(vec![
        ("projections", Quantization::to(format)),
        (
            "projections + head",
            Quantization::to(format).with_roles(&[MatrixRole::Projection, MatrixRole::Head]),
        ),
    ])
}

fn main() {
    // Errors as sentences (`Display`), not as the `Debug` dump `main` would print.
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let types = if args.types.is_empty() {
        QuantType::ALL.to_vec()
    } else {
        args.types
    };
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));

    println!(
        "| model | type | quantized | MB/token | max abs diff | mean abs diff | top-1 agreement |"
    );
    println!("|---|---|---|---|---|---|---|");
    for name in ["v4-a", "v5.0-a", "v5.1-a", "v5.2-a", "v6-a", "v7-a"] {
        let path = root
            .join("tests/fixtures")
            .join(name)
            .join("model.safetensors");
        let reference = Model::load(&path)?;
        let ids = tokens(reference.config().vocab, 64);
        let want = logits(&reference, &ids)?;
        for &ty in &types {
            for (what, quant) in settings(ty)? {
                let file = tokenshift::weights::Checkpoint::open(&path)?;
                let model = Model::from_source_quantized(file.source(), &quant)?;
                let (max, mean, top1) = compare(&want, &logits(&model, &ids)?);
                println!(
                    "| {name} (f32) | {ty} | {what} | {:.3} | {max:.2e} | {mean:.2e} | {:.1}% |",
                    model.decode_bytes_per_token() as f64 / 1e6,
                    top1 * 100.0
                );
            }
        }
    }

    if !args.skip_large {
        let config = Config::standard(Version::V6, 12, 768, 64, 65536);
        let map = random_checkpoint(&config, DType::F16, 7)?;
        let reference = Model::from_source(&map)?;
        let ids = tokens(config.vocab, 64);
        let want = logits(&reference, &ids)?;
        for &ty in &types {
            for (what, quant) in settings(ty)? {
                let model = Model::from_source_quantized(&map as &dyn TensorSource, &quant)?;
                let (max, mean, top1) = compare(&want, &logits(&model, &ids)?);
                println!(
                    "| 0.1B shape, random (f16) | {ty} | {what} | {:.1} | {max:.2e} | {mean:.2e} | {:.1}% |",
                    model.decode_bytes_per_token() as f64 / 1e6,
                    top1 * 100.0
                );
            }
        }
    }

    let shipped = root.join("assets/models/kjv-rwkv6.safetensors");
    let text = std::fs::read(root.join("tests/fixtures/heldout/kjv-genesis-50.txt"))?;
    let base = bits_per_byte(&Model::load(&shipped)?, &text)?;
    println!();
    println!("| shipped model | quantized | bits per byte | vs f16 |");
    println!("|---|---|---|---|");
    println!("| f16 | - | {base:.4} | - |");
    for &ty in &types {
        for (what, quant) in settings(ty)? {
            let file = tokenshift::weights::Checkpoint::open(&shipped)?;
            let model = Model::from_source_quantized(file.source(), &quant)?;
            let bpb = bits_per_byte(&model, &text)?;
            println!(
                "| {ty} | {what} | {bpb:.4} | {:+.2}% |",
                (bpb / base - 1.0) * 100.0
            );
        }
    }
    Ok(())
}
