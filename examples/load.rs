//! Load time and memory of a checkpoint, memory-mapped or read into memory.
//!
//! ```text
//! cargo run --release --example load -- --make 1.5b --dtype f16 /tmp/model-1.5b-f16.st
//! cargo run --release --example load -- /tmp/model-1.5b-f16.st
//! cargo run --release --example load -- /tmp/model-1.5b-f16.st --copied
//! ```
//!
//! Prints the seconds `Model::load` took (or reading the file and `Model::from_bytes`, with
//! `--copied`), the peak resident memory of the process after loading and after one decoded
//! token (Linux: `VmHWM` of /proc/self/status), and the file's size. Run each measurement in
//! its own process: the peak is the process's.

use clap::Parser;
use std::time::Instant;
use tokenshift::synthetic::random_checkpoint;
use tokenshift::{Config, DType, Model, Version};

#[derive(Parser)]
#[command(about = "Load time and peak memory of a checkpoint, mapped or copied")]
struct Args {
    /// The checkpoint (any supported container).
    path: std::path::PathBuf,
    /// Read the file into memory first, then build the model from the bytes.
    #[arg(long)]
    copied: bool,
    /// Instead of measuring, write a random RWKV-7 checkpoint of this shape to PATH: `0.1b`
    /// (12 × 768) or `1.5b` (24 × 2048), vocabulary 65536.
    #[arg(long, value_name = "SHAPE")]
    make: Option<String>,
    /// Storage type of the written checkpoint's matrices (with `--make`).
    #[arg(long, default_value = "f16")]
    dtype: DType,
}

/// A `VmHWM`/`VmRSS` line of /proc/self/status in MB (0 where there is none).
fn status_mb(key: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1000.0)
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
    if let Some(shape) = &args.make {
        let (layers, width) = match shape.as_str() {
            "0.1b" => (12, 768),
            "1.5b" => (24, 2048),
            other => return Err(format!("unknown shape `{other}`: 0.1b or 1.5b").into()),
        };
        let config = Config::standard(Version::V7, layers, width, 64, 65536);
        random_checkpoint(&config, args.dtype, 1)?.save(&args.path)?;
        println!("wrote {} ({config})", args.path.display());
        return Ok(());
    }
    let file_mb = std::fs::metadata(&args.path)?.len() as f64 / 1e6;
    let before = status_mb("VmHWM:");
    let start = Instant::now();
    let model = if args.copied {
        Model::from_bytes(std::fs::read(&args.path)?)?
    } else {
        Model::load(&args.path)?
    };
    let seconds = start.elapsed().as_secs_f64();
    let loaded = status_mb("VmHWM:");
    let mut state = model.init_state();
    let start = Instant::now();
    model.step(1, &mut state)?;
    let first = start.elapsed().as_secs_f64();
    let decoded = status_mb("VmHWM:");
    println!(
        "{} {}: file {file_mb:.0} MB, load {seconds:.3} s, peak RSS {loaded:.0} MB after load \
         ({before:.0} MB before), {decoded:.0} MB after the first token ({first:.2} s)",
        args.path.display(),
        if args.copied { "copied" } else { "mapped" },
    );
    Ok(())
}
