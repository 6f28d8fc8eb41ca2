//! Measures this machine's limits and the model's speed against them, in one run.
//!
//! ```text
//! cargo run --release --example bench -- --help
//! cargo run --release --example bench -- [--model PATH | --layers 12 --embd 768
//!     --head-size 64 --vocab 65536 --version 6] [--dtype f32|f16|bf16|q8_0|q4_0|q5_0|q5_1|q4_k|q5_k|q6_k]
//!     [--quantize q8_0|q4_0|q5_0|q5_1|q4_k|q5_k|q6_k] [--threads N]
//!     [--prefill 512] [--batch 8] [--decode-tokens 32] [--busy-core] [--vs-f32] [--vs-f16] [--json]
//! cargo run --release --example bench -- --model PATH --memory
//! cargo run --release --example bench -- [--layers ...] [--dtype ...] --write-model OUT
//! ```
//!
//! (a) memory-read bandwidth: the faster of two streaming reads of a 1 GiB buffer on all
//!     threads (a sum with 64 independent partial sums, which the compiler vectorises, and the
//!     crate's matrix-vector product), best of three passes each, before and after each decode
//!     round; (b) single-precision matrix-multiply throughput on a
//!     1024×1024 product, the best of the crate's blocked product and a single call of the
//!     underlying GEMM, before and after the model's runs; (c) decode tokens/s; (d) prefill
//!     tokens/s; (e) batched decode tokens/s; each speed the best of several rounds, like the
//!     limits. Decode is reported as a ratio to the bandwidth measured on either side of its
//!     fastest round (bytes read per token × tokens/s / bandwidth), prefill as a ratio to the
//!     GEMM limit (FLOPs per token × tokens/s / GEMM FLOP/s). `--busy-core` adds (f): decode on
//!     all threads and on one while another thread keeps a core busy. `--vs-f32` adds (g): decode
//!     alternated with a random f32 model of the same shape, so that the speed-up of f16 or bf16
//!     weights is measured at the same moments of the machine; `--vs-f16` adds (h), the same
//!     against an f16 model, for the quantized types. The default shape is RWKV-6 0.1B
//!     (12 × 768, head size 64, vocab 65536) with random weights.
//!
//! `--model` takes any checkpoint the crate reads (see `Model::load`) instead of the random
//! shape (the two exclude each other); with `--dtype` its matrices are converted at load
//! (`Model::load_as`), without it they are kept as stored. A block format (`--dtype q8_0` or
//! `--quantize q8_0`, ...) quantizes the block projections at load (`Model::load_quantized`;
//! the random model is made in f32 and quantized); the bytes per token reported (decode's
//! `MB/token`, JSON `decode_bytes_per_token`) are those of the storages loaded. `--memory` only reports the peak
//! resident memory of loading and running `--model`; `--write-model OUT` only writes the random
//! model of the shape and type given.

mod args;

use clap::Parser;
use ndarray::{Array1, Array2};
use rayon::prelude::*;
use std::time::Instant;
use tokenshift::ops::Linear;
use tokenshift::storage::Dense;
use tokenshift::synthetic::{random_checkpoint, random_model, DType};
use tokenshift::weights::Quantization;
use tokenshift::{Config, Logits, Model, Version};

/// Best wall time of `runs` calls of `f`, in seconds.
fn best_of(runs: usize, mut f: impl FnMut()) -> f64 {
    (0..runs)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

/// Rounds of each speed measurement: the best is reported, as for the limits.
const ROUNDS: usize = 4;

/// One-token decode tokens/s of each of `rounds` rounds of `n` tokens in the current pool,
/// after two warm-up tokens; `between` runs before each round and after the last.
fn decode_rounds(
    model: &Model,
    n: usize,
    rounds: usize,
    mut between: impl FnMut(),
) -> Result<Vec<f64>, String> {
    let vocab = model.config().vocab;
    let mut state = model.init_state();
    let mut logits = ndarray::Array1::zeros(vocab);
    let mut step = |i: usize| {
        let token = ((i * 7919) % vocab) as u32;
        model.step_into(token, &mut state, logits.view_mut())
    };
    for i in 0..2 {
        step(i).map_err(|e| e.to_string())?;
    }
    let mut speeds = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        between();
        let start = Instant::now();
        for i in 0..n {
            step(i).map_err(|e| e.to_string())?;
        }
        speeds.push(n as f64 / start.elapsed().as_secs_f64());
    }
    between();
    Ok(speeds)
}

/// One-token decode tokens/s in the current pool: the best of [`ROUNDS`] rounds of `n` tokens.
fn decode_speed(model: &Model, n: usize) -> Result<f64, String> {
    let speeds = decode_rounds(model, n, ROUNDS, || {})?;
    Ok(speeds.into_iter().fold(0.0, f64::max))
}

/// Decode rounds, each between two bandwidth probes: `(tokens/s, GB/s)` of the fastest round
/// and the higher of the probes on either side of it. The machine's bandwidth moves from
/// second to second when it is shared (34 to 54 GB/s within a minute on the development host),
/// so decode is set against the limit measured next to it rather than the best of the run.
fn decode_against_bandwidth(model: &Model, n: usize, probe: &Probe) -> Result<(f64, f64), String> {
    let mut limits = Vec::new();
    let speeds = decode_rounds(model, n, 2 * ROUNDS, || limits.push(probe.gbs(3)))?;
    let (best, &speed) = speeds
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .ok_or("no decode rounds")?;
    Ok((speed, limits[best].max(limits[best + 1])))
}

/// The best of four runs of each of `a` and `b`, in the order a, b, b, a, a, b, b, a: the speed
/// of a shared machine drifts (by 10-20% over a minute on the development host) and dips for
/// seconds at a time; this order gives neither side the later, or the earlier, half of the
/// measurement, and four runs each let both sides meet a quiet moment.
fn alternated(
    mut a: impl FnMut() -> Result<f64, String>,
    mut b: impl FnMut() -> Result<f64, String>,
) -> Result<(f64, f64), String> {
    let (mut best_a, mut best_b) = (0.0f64, 0.0f64);
    for first in [true, false, false, true, true, false, false, true] {
        if first {
            best_a = best_a.max(a()?);
        } else {
            best_b = best_b.max(b()?);
        }
    }
    Ok((best_a, best_b))
}

/// Decode tokens/s `(all threads, one thread)` while another thread keeps a core busy.
fn busy_core_decode(model: &Model, n: usize) -> Result<(f64, f64), String> {
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let mut x = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
        });
        let measure = || -> Result<(f64, f64), String> {
            let single = rayon::ThreadPoolBuilder::new()
                .num_threads(1)
                .build()
                .map_err(|e| e.to_string())?;
            alternated(
                || decode_speed(model, n),
                || single.install(|| decode_speed(model, n)),
            )
        };
        let speeds = measure();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        speeds
    })
}

/// A 1 GiB buffer to measure memory-read bandwidth with, seen also as a `[65536, 4096]` f32
/// weight.
struct Probe(Linear);

impl Probe {
    const LANES: usize = 64;
    const ROW: usize = 4096;

    fn new() -> Probe {
        let values = (0..(1usize << 28)).map(|i| (i % 7) as f32).collect();
        let rows = Array2::from_shape_vec(((1 << 28) / Probe::ROW, Probe::ROW), values)
            .expect("a whole number of rows");
        Probe(Linear::from(rows))
    }

    /// GB/s of a streaming read of the buffer, best of `passes` of each of two reads: every
    /// thread summing its own 4 MiB parts with 64 independent partial sums (a pure read: on a
    /// Zen 4 host 1.1× the matrix-vector kernel's own stream), and the crate's matrix-vector
    /// product of the buffer with one vector on all threads (which asks for the data ahead: on
    /// a Xeon with AVX-512 it read 1.2× faster than the sum). The faster of the two is the
    /// limit: a slower probe would flatter the decode ratio.
    fn gbs(&self, passes: usize) -> f64 {
        let layer = &self.0;
        let values = layer
            .matrix()
            .as_any()
            .downcast_ref::<Dense<f32>>()
            .expect("built as f32")
            .values();
        let mut sink = 0.0f32;
        let summed = best_of(passes, || {
            sink += values
                .par_chunks(1 << 20)
                .map(|chunk| {
                    let mut acc = [0.0f32; Probe::LANES];
                    for part in chunk.chunks_exact(Probe::LANES) {
                        for (a, v) in acc.iter_mut().zip(part) {
                            *a += v;
                        }
                    }
                    acc.iter().sum::<f32>()
                })
                .sum::<f32>();
        });
        let x = Array1::from_elem(Probe::ROW, 1.0f32);
        let mut y = Array1::zeros(layer.dim().0);
        let multiplied = best_of(passes, || {
            layer.matvec_into(x.view(), y.view_mut());
            sink += y[0];
        });
        std::hint::black_box(sink);
        (values.len() * 4) as f64 / summed.min(multiplied) / 1e9
    }
}

/// GFLOP/s of a 1024×1024×1024 f32 product: the better of the crate's blocked parallel product
/// and one call of the GEMM underneath.
fn gemm_gflops() -> f64 {
    let n = 1024;
    let a = Array2::from_shape_fn((n, n), |(i, j)| ((i + j) % 13) as f32 / 13.0);
    let w = Linear::from(Array2::from_shape_fn((n, n), |(i, j)| {
        ((i * j) % 7) as f32 / 7.0
    }));
    let blocked = best_of(8, || {
        std::hint::black_box(w.forward(a.view()));
    });
    let wt = w.to_f32().reversed_axes();
    let single = best_of(6, || {
        std::hint::black_box(a.dot(&wt));
    });
    2.0 * (n * n * n) as f64 / blocked.min(single) / 1e9
}

/// Measures this machine's memory bandwidth and GEMM throughput, and a model's decode,
/// prefill and batched decode speeds against them. Without --model the model is random, of
/// the shape given (RWKV-6 0.1B by default).
#[derive(Parser, Debug)]
#[command(name = "bench")]
struct Cli {
    /// RWKV checkpoint to measure instead of a random model: a safetensors, GGUF or PyTorch
    /// .pth file, or a Hugging Face folder (the container is detected from the file)
    #[arg(long, value_name = "PATH", conflicts_with_all = ["layers", "embd", "head_size", "vocab", "version"])]
    model: Option<String>,
    /// Blocks of the random model
    #[arg(long, value_name = "N", default_value_t = 12)]
    layers: usize,
    /// Embedding width of the random model
    #[arg(long, value_name = "C", default_value_t = 768)]
    embd: usize,
    /// Head size of the random model
    #[arg(long, value_name = "N", default_value_t = 64)]
    head_size: usize,
    /// Vocabulary size of the random model
    #[arg(long, value_name = "V", default_value_t = 65536)]
    vocab: usize,
    /// RWKV version of the random model: 4, 5.0, 5.1, 5.2, 6 or 7
    #[arg(long, value_name = "V", default_value = "6")]
    version: Version,
    /// Storage type of the matrices: f32, f16, bf16, or a block format (q8_0, q4_0, q5_0,
    /// q5_1, q4_k, q5_k, q6_k: the block projections quantized at load, as --quantize). Of the random model
    /// (default f32), or the type a --model is converted to at load (default: as stored)
    #[arg(long, value_name = "TYPE")]
    dtype: Option<args::Storage>,
    /// Quantize the block projections to this block format at load (the same as --dtype TYPE)
    #[arg(long, value_name = "TYPE", value_parser = args::parse_quant, conflicts_with = "dtype")]
    quantize: Option<tokenshift::storage::quant::QuantType>,
    /// Threads of the global pool [default: one per core]
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
    /// Prompt length of the prefill measurement
    #[arg(long, value_name = "T", default_value_t = 512)]
    prefill: usize,
    /// Sessions of the batched decode measurement
    #[arg(long, value_name = "B", default_value_t = 8)]
    batch: usize,
    /// Tokens of each decode round
    #[arg(long, value_name = "N", default_value_t = 32)]
    decode_tokens: usize,
    /// Only write the random model of the shape and type given to this safetensors file, then
    /// exit
    #[arg(long, value_name = "PATH", conflicts_with = "model")]
    write_model: Option<String>,
    /// Only report the peak resident memory of loading and running --model against the file's
    /// size (Linux)
    #[arg(long, requires = "model")]
    memory: bool,
    /// Add (f): decode while another thread keeps a core busy
    #[arg(long)]
    busy_core: bool,
    /// Add (g): decode alternated with a random f32 model of the same shape
    #[arg(long)]
    vs_f32: bool,
    /// Add (h): decode alternated with a random f16 model of the same shape (the reference for
    /// the quantized types)
    #[arg(long)]
    vs_f16: bool,
    /// Print one JSON object instead of text
    #[arg(long)]
    json: bool,
}

impl Cli {
    /// The shape of the random model.
    fn shape(&self) -> Config {
        Config::standard(
            self.version,
            self.layers,
            self.embd,
            self.head_size,
            self.vocab,
        )
    }

    /// The storage asked for by --dtype or --quantize.
    fn storage(&self) -> Option<args::Storage> {
        self.quantize.map(args::Storage::Quantized).or(self.dtype)
    }

    /// The model to measure and the type its matrices are reported in (`None`: as stored in
    /// --model).
    fn build_model(&self) -> Result<(Model, Option<String>), String> {
        let storage = self.storage();
        let name = storage.map(|s| match s {
            args::Storage::Dense(d) => format!("{d:?}"),
            args::Storage::Quantized(q) => format!("{q} (block projections and head)"),
        });
        let model = match (&self.model, storage) {
            (Some(path), None) => Model::load(path),
            (Some(path), Some(args::Storage::Dense(d))) => Model::load_as(path, d),
            (Some(path), Some(args::Storage::Quantized(q))) => Model::load_quantized(path, q),
            (None, Some(args::Storage::Quantized(q))) => {
                let format = q.format();
                // Quantized from f16, the rest kept in f16, as published checkpoints are.
                random_checkpoint(&self.shape(), DType::F16, 1)
                    .and_then(|m| Model::from_source_quantized(&m, &Quantization::to(format)))
            }
            (None, Some(args::Storage::Dense(d))) => random_model(&self.shape(), d, 1),
            (None, None) => {
                let model = random_model(&self.shape(), DType::F32, 1);
                return model
                    .map(|m| (m, Some("F32".into())))
                    .map_err(|e| e.to_string());
            }
        };
        model.map(|m| (m, name)).map_err(|e| e.to_string())
    }
}

/// Peak resident memory of this process (Linux `VmHWM`), in bytes.
fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn main() {
    args::run(|| {
        let cli = Cli::parse();
        if let Some(path) = &cli.write_model {
            let dtype = match cli.storage() {
                None => DType::F32,
                Some(args::Storage::Dense(d)) => d,
                Some(args::Storage::Quantized(q)) => {
                    return Err(format!(
                        "--write-model writes f32, f16 or bf16; write {q} blocks with \
                         `convert --quantize {q}`"
                    ))
                }
            };
            random_checkpoint(&cli.shape(), dtype, 1)
                .and_then(|m| m.save(path))
                .map_err(|e| e.to_string())?;
            println!("wrote {path}");
            return Ok(());
        }
        if cli.memory {
            let path = cli.model.as_deref().ok_or("--memory needs --model")?;
            let size = std::fs::metadata(path).map_err(|e| e.to_string())?.len();
            let model = Model::load(path).map_err(|e| e.to_string())?;
            // Run it: a 512-token prompt, then 16 tokens one at a time.
            let vocab = model.config().vocab;
            let prompt: Vec<u32> = (0..512).map(|i| ((i * 7919) % vocab) as u32).collect();
            let mut state = model.init_state();
            model
                .forward(&prompt, &mut state, Logits::Last)
                .map_err(|e| e.to_string())?;
            for &t in &prompt[..16] {
                model.step(t, &mut state).map_err(|e| e.to_string())?;
            }
            let peak = peak_rss().ok_or("peak memory is only read on Linux")?;
            println!(
                "{}: file {:.1} MB, peak resident memory loading and running it {:.1} MB = {:.3}x the file",
                model.config(),
                size as f64 / 1e6,
                peak as f64 / 1e6,
                peak as f64 / size as f64
            );
            return Ok(());
        }
        if let Some(n) = cli.threads {
            rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .build_global()
                .map_err(|e| e.to_string())?;
        }
        let threads = rayon::current_num_threads();
        let (model, dtype) = cli.build_model()?;
        let dtype = dtype.unwrap_or_else(|| "as stored".to_string());
        let config = model.config().clone();
        let prefill_t = cli.prefill;
        let batch = cli.batch;
        let decode_n = cli.decode_tokens;
        let token = |i: usize| ((i * 7919) % config.vocab) as u32;

        let probe = Probe::new();
        let gemm = gemm_gflops();

        let (decode_tok_s, bandwidth) = decode_against_bandwidth(&model, decode_n, &probe)?;
        drop(probe);

        let prompt: Vec<u32> = (0..prefill_t).map(token).collect();
        let prefill_secs = best_of(ROUNDS, || {
            let mut state = model.init_state();
            model.forward(&prompt, &mut state, Logits::Last).unwrap();
        });
        let prefill_tok_s = prefill_t as f64 / prefill_secs;

        let tokens: Vec<u32> = (0..batch).map(token).collect();
        let mut states = vec![model.init_state(); batch];
        model
            .step_batch(&tokens, &mut states)
            .map_err(|e| e.to_string())?;
        // As many steps as decode tokens: 8 sessions × 32 steps per round, so that a moment of
        // the shared machine does not decide the round.
        let steps = decode_n.max(2);
        let batch_secs = best_of(ROUNDS, || {
            for _ in 0..steps {
                model.step_batch(&tokens, &mut states).unwrap();
            }
        });
        let batch_tok_s = (steps * batch) as f64 / batch_secs;

        let busy = if cli.busy_core {
            Some(busy_core_decode(&model, decode_n)?)
        } else {
            None
        };

        // A model of the same shape (with the same weights, unless loaded from a file) in f32,
        // decoded in alternation with this one.
        let vs_f32 = if cli.vs_f32 {
            let f32_model = random_model(&config, DType::F32, 1).map_err(|e| e.to_string())?;
            Some(alternated(
                || decode_speed(&model, decode_n),
                || decode_speed(&f32_model, decode_n),
            )?)
        } else {
            None
        };

        // The same against f16, the reference of the quantized types.
        let vs_f16 = if cli.vs_f16 {
            let f16_model = random_model(&config, DType::F16, 1).map_err(|e| e.to_string())?;
            Some(alternated(
                || decode_speed(&model, decode_n),
                || decode_speed(&f16_model, decode_n),
            )?)
        } else {
            None
        };

        // The GEMM limit again after the model's runs: the machine is shared, so it is the
        // best of both measurements.
        let gemm = gemm.max(gemm_gflops());

        let bytes_per_token = model.decode_bytes_per_token() as f64;
        let flops_per_token = model.prefill_flops_per_token() as f64;
        let decode_ratio = bytes_per_token * decode_tok_s / (bandwidth * 1e9);
        let prefill_ratio = flops_per_token * prefill_tok_s / (gemm * 1e9);
        if cli.json {
            println!(
                "{{\"version\": \"{}\", \"n_layer\": {}, \"n_embd\": {}, \"head_size\": {}, \
                 \"vocab\": {}, \"dtype\": \"{}\", \"threads\": {}, \"bandwidth_gbs\": {:.2}, \
                 \"gemm_gflops\": {:.1}, \"decode_tok_s\": {:.2}, \"decode_roofline_ratio\": {:.3}, \
                 \"prefill_tok_s\": {:.1}, \"prefill_roofline_ratio\": {:.3}, \
                 \"batch{}_tok_s\": {:.2}, \"decode_bytes_per_token\": {}, \
                 \"prefill_flops_per_token\": {}{}{}{}}}",
                config.version, config.n_layer, config.n_embd, config.head_size, config.vocab,
                dtype, threads, bandwidth, gemm, decode_tok_s, decode_ratio, prefill_tok_s,
                prefill_ratio, batch, batch_tok_s, bytes_per_token, flops_per_token,
                busy.map_or(String::new(), |(all, one)| format!(
                    ", \"busy_core_decode_tok_s\": {all:.2}, \"busy_core_one_thread_decode_tok_s\": {one:.2}"
                )),
                vs_f32.map_or(String::new(), |(own, f32)| format!(
                    ", \"alternated_decode_tok_s\": {own:.2}, \"alternated_f32_decode_tok_s\": {f32:.2}"
                )),
                vs_f16.map_or(String::new(), |(own, f16)| format!(
                    ", \"alternated_f16_own_decode_tok_s\": {own:.2}, \"alternated_f16_decode_tok_s\": {f16:.2}"
                ))
            );
        } else {
            println!("model: {config}, weights {dtype}, {threads} threads");
            println!(
                "(a) memory-read bandwidth: {bandwidth:.2} GB/s (next to the fastest decode round)"
            );
            println!("(b) f32 GEMM throughput:   {gemm:.1} GFLOP/s");
            println!(
                "(c) decode:  {decode_tok_s:.2} tok/s ({:.1} MB/token) = {decode_ratio:.3} of the bandwidth limit",
                bytes_per_token / 1e6
            );
            println!(
                "(d) prefill: {prefill_tok_s:.1} tok/s at T={prefill_t} ({:.1} MFLOP/token) = {prefill_ratio:.3} of the GEMM limit",
                flops_per_token / 1e6
            );
            println!(
                "(e) batched decode: {batch_tok_s:.2} tok/s at B={batch} = {:.2}x single-session decode",
                batch_tok_s / decode_tok_s
            );
            if let Some((all, one)) = busy {
                println!(
                    "(f) with another thread keeping a core busy: decode {all:.2} tok/s on {threads} threads, {one:.2} on 1"
                );
            }
            if let Some((own, f32)) = vs_f32 {
                println!(
                    "(g) decode alternated with an f32 model of the same shape: {own:.2} tok/s against {f32:.2} = {:.2}x",
                    own / f32
                );
            }
            if let Some((own, f16)) = vs_f16 {
                println!(
                    "(h) decode alternated with an f16 model of the same shape: {own:.2} tok/s against {f16:.2} = {:.2}x",
                    own / f16
                );
            }
        }
        Ok(())
    });
}
