//! Rewrites a checkpoint as a safetensors file under BlinkDL names, optionally converting every
//! floating tensor to one type.
//!
//! ```text
//! cargo run --release --example convert -- INPUT OUTPUT [--dtype f32|f16|bf16]
//!     [--quantize q8_0|q4_0|q5_0|q5_1|q4_k|q5_k|q6_k]
//! cargo run --release --example convert -- rwkv.pth rwkv-f16.safetensors --dtype f16
//! cargo run --release --example convert -- rwkv.pth rwkv-q8_0.safetensors --quantize q8_0
//! ```
//!
//! `INPUT` is any checkpoint the crate reads (safetensors, GGUF, PyTorch `.pth`, a Hugging Face
//! folder), opened with `Checkpoint::open`; its tensors are written under the names the loaders
//! read, each in `--dtype` (default: as stored; narrowing rounds to nearest, a tensor kept in
//! its type is copied bit for bit). Tensors in a type the crate does not read are left out,
//! with a warning.
//!
//! The output is streamed: the header is laid out from the names, shapes and types first, then
//! each tensor is converted and written in turn, so no more than one tensor is held in memory
//! besides the memory-mapped input. It is written atomically (a failed run leaves an existing
//! `OUTPUT` as it was), and may not be the input (nor a file in an input folder). A progress
//! bar on stderr follows the bytes written for files over 64 MiB; a summary ends the run.
//!
//! With `--quantize TYPE` the block projections (the matrices `Model::load_quantized`
//! quantizes, `QUANTIZED_BY_DEFAULT`, that are whole blocks wide) are stored quantized, in the
//! crate's quantized safetensors layout: each as a `U8` tensor of its rows of blocks, the
//! format named in the header's `__metadata__` under `tokenshift.quant.<tensor name>`. The
//! file loads with `Model::load` to the same logits as `Model::load_quantized` on the input,
//! the blocks used in place from the map. Matrices an input already holds in blocks (a
//! quantized GGUF file) are copied as blocks, with or without `--quantize`. Such a file is
//! built in memory, then written atomically (no progress bar).

mod args;

use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;
use std::time::Instant;
use tokenshift::weights::{
    element_size, write_quantized_safetensors, Checkpoint, Quantization, SafeTensorsFile,
    TensorSource,
};
use tokenshift::{Config, DType, SafeTensorsStream, StreamEntry};

/// Files larger than this get a progress bar.
const PROGRESS_FROM: u64 = 64 << 20;

/// Rewrites a checkpoint (any supported container) as a safetensors file under BlinkDL names,
/// streamed and written atomically, with every floating tensor converted to --dtype.
#[derive(Parser, Debug)]
#[command(name = "convert")]
struct Cli {
    /// Checkpoint to read: a safetensors, GGUF or PyTorch .pth file, or a Hugging Face folder
    /// (the container is detected from the file)
    #[arg(value_name = "INPUT")]
    input: PathBuf,
    /// Safetensors file to write (replaced atomically; not the input)
    #[arg(value_name = "OUTPUT")]
    output: PathBuf,
    /// Type of every floating tensor in the output [default: as stored]
    #[arg(long, value_enum)]
    dtype: Option<args::Dtype>,
    /// Store the block projections and the head quantized to this block format: q8_0, q4_0,
    /// q5_0, q5_1, q4_k, q5_k or q6_k (a matrix not a whole number of 256-value blocks wide
    /// takes a K type's fallback, q5_0, q5_1 or q8_0; one not whole 32-value blocks wide is
    /// stored as it is)
    #[arg(long, value_name = "TYPE", value_parser = args::parse_quant)]
    quantize: Option<tokenshift::storage::quant::QuantType>,
    /// No progress bar
    #[arg(long, short)]
    quiet: bool,
}

fn main() {
    args::run(|| {
        let cli = Cli::parse();
        args::refuse_overwrite_of(
            ("OUTPUT", &cli.output),
            &[("INPUT".to_string(), cli.input.as_path())],
        )?;
        let start = Instant::now();
        let checkpoint = Checkpoint::open(&cli.input).map_err(|e| args::named(&cli.input, e))?;
        let source = checkpoint.source();
        eprintln!("{}: {}", cli.input.display(), checkpoint.format());
        match Config::from_source(source) {
            Ok(config) => eprintln!("model: {config}"),
            Err(e) => eprintln!("warning: not a model the crate runs ({e}); converting anyway"),
        }

        let to = cli.dtype.map(DType::from);
        let has_blocks = source.names().iter().any(|n| source.blocks(n).is_some());
        if cli.quantize.is_some() || has_blocks {
            let quant = match cli.quantize {
                Some(q) => Quantization::to(q.format()),
                None => Quantization::none(),
            };
            let skipped = write_quantized_safetensors(source, &cli.output, to, &|name, shape| {
                quant.tensor_target(name, shape)
            })
            .map_err(|e| match e {
                tokenshift::Error::Io { .. } => e.to_string(),
                other => args::named(&cli.input, other),
            })?;
            if !skipped.is_empty() {
                eprintln!(
                    "warning: {} tensors in types the crate does not read are left out: {}",
                    skipped.len(),
                    skipped.join(", ")
                );
            }
            let out = SafeTensorsFile::open(&cli.output).map_err(|e| e.to_string())?;
            let quantized = out
                .names()
                .iter()
                .filter(|n| out.blocks(n).is_some())
                .count();
            let out_size = std::fs::metadata(&cli.output)
                .map_err(|e| format!("`{}`: {e}", cli.output.display()))?
                .len();
            println!(
                "wrote {}: {} tensors, {quantized} of them in blocks{}, {out_size} bytes out, \
                 {:.2} s",
                cli.output.display(),
                out.names().len(),
                cli.quantize.map_or(String::new(), |q| format!(" ({q})")),
                start.elapsed().as_secs_f64()
            );
            return Ok(());
        }
        let mut entries = Vec::new();
        let mut skipped = Vec::new();
        let mut bytes_in = 0u64;
        let mut names = source.names();
        names.sort_unstable();
        for name in names {
            let shape = source.shape(name).unwrap_or_default();
            match source.dtype(name) {
                Some(Ok(stored)) => {
                    let elements: u64 = shape.iter().map(|&d| d as u64).product();
                    bytes_in += elements * element_size(stored) as u64;
                    entries.push(StreamEntry {
                        name: name.to_string(),
                        dtype: to.unwrap_or(stored),
                        shape,
                    });
                }
                Some(Err(other)) => skipped.push(format!("{name} ({other})")),
                None => skipped.push(format!("{name} (no type)")),
            }
        }
        if !skipped.is_empty() {
            eprintln!(
                "warning: {} tensors in types the crate does not read are left out: {}",
                skipped.len(),
                skipped.join(", ")
            );
        }
        if entries.is_empty() {
            return Err(format!(
                "`{}` holds no f32, f16 or bf16 tensor to write",
                cli.input.display()
            ));
        }
        let tensors = entries.len();
        let stream =
            SafeTensorsStream::new(entries, &Default::default()).map_err(|e| e.to_string())?;
        let total = stream.file_len();

        let bar = if total >= PROGRESS_FROM && !cli.quiet {
            let bar = ProgressBar::new(total);
            bar.set_style(
                ProgressStyle::with_template(
                    "{wide_bar} {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} eta {eta}",
                )
                .map_err(|e| e.to_string())?,
            );
            bar
        } else {
            ProgressBar::hidden()
        };
        stream
            .save(&cli.output, source, &mut |done| bar.set_position(done))
            .map_err(|e| match e {
                // The output's error names the output; any other is about a tensor read.
                tokenshift::Error::Io { .. } => e.to_string(),
                other => args::named(&cli.input, other),
            })?;
        bar.finish_and_clear();

        let out_size = std::fs::metadata(&cli.output)
            .map_err(|e| format!("`{}`: {e}", cli.output.display()))?
            .len();
        println!(
            "wrote {}: {tensors} tensors{}, {bytes_in} bytes of tensors in, {out_size} bytes out, \
             {:.2} s",
            cli.output.display(),
            to.map_or(String::new(), |d| format!(" as {d:?}")),
            start.elapsed().as_secs_f64()
        );
        Ok(())
    });
}
