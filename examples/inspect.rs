//! Describes a checkpoint without reading any tensor data: its container, the RWKV version
//! and sizes detected from its names and shapes, its storage types, and every tensor.
//!
//! ```text
//! cargo run --release --example inspect -- PATH [--json]
//! cargo run --release --example inspect -- assets/models/kjv-rwkv6.safetensors
//! ```
//!
//! `PATH` is any checkpoint the crate reads (safetensors, GGUF, PyTorch `.pth`, a Hugging Face
//! folder), opened with `Checkpoint::open` and listed under the BlinkDL names the loaders read.
//! Tensors are listed in model order (the embedding, then the blocks by number, then the rest),
//! each with its shape, storage type and size in bytes; a type the crate does not read (e.g.
//! `I64`, or a quantized GGUF type) is shown by its container's name, with its size where the
//! type has a fixed element size. `--json` prints one JSON object instead.
//!
//! If the container cannot be read the program prints the error and exits with status 1; if
//! it can but the version or sizes cannot be detected, the listing is printed and the error
//! follows, with status 1.

mod args;

use clap::Parser;
use serde_json::json;
use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::PathBuf;
use tokenshift::weights::{element_size, Checkpoint, TensorSource};
use tokenshift::Config;

/// Describes a checkpoint without reading any tensor data: container, detected version and
/// sizes, storage types, and every tensor with its shape, type and bytes.
#[derive(Parser, Debug)]
#[command(name = "inspect")]
struct Cli {
    /// Checkpoint: a safetensors, GGUF or PyTorch .pth file, or a Hugging Face folder (the
    /// container is detected from the file)
    #[arg(value_name = "PATH")]
    path: PathBuf,
    /// Print one JSON object (container, config, dtypes, tensors, totals) instead of text
    #[arg(long)]
    json: bool,
}

/// One tensor as the header describes it.
struct Row {
    name: String,
    shape: Vec<usize>,
    /// The storage type's name (`F32`, `F16`, `BF16`, or the container's own name).
    dtype: String,
    /// Bytes of the values, when the type has a known element size.
    bytes: Option<u64>,
}

/// Bytes per element of a type the crate does not read, by the name containers give it
/// (`None` for block-quantized and other types without a fixed element size).
fn other_element_size(name: &str) -> Option<u64> {
    match name.to_ascii_uppercase().as_str() {
        "BOOL" | "U8" | "I8" | "F8_E4M3" | "F8_E5M2" | "UINT8" | "INT8" => Some(1),
        "U16" | "I16" | "INT16" => Some(2),
        "U32" | "I32" | "INT32" => Some(4),
        "U64" | "I64" | "F64" | "INT64" | "FLOAT64" | "DOUBLE" => Some(8),
        _ => None,
    }
}

/// The rows of every tensor of `source`, from its header alone.
fn rows(source: &dyn TensorSource) -> Vec<Row> {
    let mut rows: Vec<Row> = source
        .names()
        .into_iter()
        .map(|name| {
            let shape = source.shape(name).unwrap_or_default();
            let elements = shape
                .iter()
                .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64));
            let (dtype, size) = match source.dtype(name) {
                Some(Ok(d)) => (
                    format!("{d:?}").to_uppercase(),
                    Some(element_size(d) as u64),
                ),
                Some(Err(other)) => {
                    let size = other_element_size(&other);
                    (other, size)
                }
                None => ("?".into(), None),
            };
            Row {
                name: name.to_string(),
                bytes: size.zip(elements).and_then(|(s, n)| s.checked_mul(n)),
                shape,
                dtype,
            }
        })
        .collect();
    rows.sort_by(|a, b| natural(&a.name, &b.name));
    rows
}

/// Where a tensor comes in a model: the embedding first, then the blocks, then the rest.
fn section(name: &str) -> u8 {
    if name.starts_with("emb.") {
        0
    } else if name.starts_with("blocks.") {
        1
    } else {
        2
    }
}

/// Model order: by [`section`], then by the dot-separated parts of the name, numbers compared
/// as numbers (`blocks.2` before `blocks.10`).
fn natural(a: &str, b: &str) -> Ordering {
    section(a).cmp(&section(b)).then_with(|| {
        let part = |p: &str| match p.parse::<u64>() {
            Ok(n) => (0, n, String::new()),
            Err(_) => (1, 0, p.to_string()),
        };
        a.split('.').map(part).cmp(b.split('.').map(part))
    })
}

/// Bytes in a human unit.
fn human(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.2} MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}

/// Count and bytes of the tensors of each type, and the tensors whose size is unknown.
struct Totals {
    by_dtype: BTreeMap<String, (usize, u64)>,
    tensors: usize,
    bytes: u64,
    unknown_size: usize,
}

fn totals(rows: &[Row]) -> Totals {
    let mut t = Totals {
        by_dtype: BTreeMap::new(),
        tensors: rows.len(),
        bytes: 0,
        unknown_size: 0,
    };
    for row in rows {
        let entry = t.by_dtype.entry(row.dtype.clone()).or_default();
        entry.0 += 1;
        match row.bytes {
            Some(b) => {
                entry.1 += b;
                t.bytes += b;
            }
            None => t.unknown_size += 1,
        }
    }
    t
}

fn config_json(c: &Config) -> serde_json::Value {
    json!({
        "version": c.version.to_string(),
        "n_layer": c.n_layer,
        "n_embd": c.n_embd,
        "n_head": c.n_head,
        "head_size": c.head_size,
        "dim_ffn": c.dim_ffn,
        "vocab": c.vocab,
        "dim_mix_lora": c.dim_mix_lora,
        "dim_decay_lora": c.dim_decay_lora,
        "dim_a_lora": c.dim_a_lora,
        "dim_v_lora": c.dim_v_lora,
        "dim_g_lora": c.dim_g_lora,
    })
}

/// The description as one JSON object.
fn json_text(
    checkpoint: &Checkpoint,
    config: &Result<Config, String>,
    rows: &[Row],
) -> Result<String, String> {
    let t = totals(rows);
    let value = json!({
        "path": checkpoint.path().map(|p| p.display().to_string()),
        "container": checkpoint.format().to_string(),
        "config": config.as_ref().ok().map(config_json),
        "config_error": config.as_ref().err(),
        "dtypes": t.by_dtype.iter().map(|(d, (n, b))| {
            (d.clone(), json!({"tensors": n, "bytes": b}))
        }).collect::<serde_json::Map<_, _>>(),
        "tensors": rows.iter().map(|r| json!({
            "name": r.name,
            "shape": r.shape,
            "dtype": r.dtype,
            "bytes": r.bytes,
        })).collect::<Vec<_>>(),
        "total": {"tensors": t.tensors, "bytes": t.bytes, "tensors_of_unknown_size": t.unknown_size},
    });
    let mut text = serde_json::to_string_pretty(&value).map_err(|e| e.to_string())?;
    text.push('\n');
    Ok(text)
}

/// The description as text.
fn text(checkpoint: &Checkpoint, config: &Result<Config, String>, rows: &[Row]) -> String {
    // Writing to a String cannot fail.
    use std::fmt::Write;
    let mut s = String::new();
    if let Some(path) = checkpoint.path() {
        let _ = writeln!(s, "file:      {}", path.display());
    }
    let _ = writeln!(s, "container: {}", checkpoint.format());
    let _ = match config {
        Ok(c) => writeln!(s, "model:     {c}"),
        Err(e) => writeln!(s, "model:     not detected ({e})"),
    };
    let t = totals(rows);
    let _ = writeln!(s, "dtypes:");
    for (dtype, (n, bytes)) in &t.by_dtype {
        let _ = writeln!(
            s,
            "  {dtype:<8} {n:>6} tensors  {bytes:>14} bytes  ({})",
            human(*bytes)
        );
    }
    let _ = writeln!(s, "tensors:");
    let width = rows.iter().map(|r| r.name.len()).max().unwrap_or(0);
    let shape_width = rows
        .iter()
        .map(|r| format!("{:?}", r.shape).len())
        .max()
        .unwrap_or(0);
    for r in rows {
        let bytes = r.bytes.map_or("?".to_string(), |b| b.to_string());
        let _ = writeln!(
            s,
            "  {:<width$}  {:<shape_width$}  {:<5}  {bytes:>12}",
            r.name,
            format!("{:?}", r.shape),
            r.dtype,
        );
    }
    let _ = write!(
        s,
        "total:     {} tensors, {} bytes ({})",
        t.tensors,
        t.bytes,
        human(t.bytes)
    );
    if t.unknown_size > 0 {
        let _ = write!(
            s,
            ", and {} tensors of a type without a fixed size",
            t.unknown_size
        );
    }
    let _ = writeln!(s);
    s
}

fn main() {
    args::run(|| {
        let cli = Cli::parse();
        let checkpoint = Checkpoint::open(&cli.path).map_err(|e| args::named(&cli.path, e))?;
        let source = checkpoint.source();
        let config = Config::from_source(source).map_err(|e| e.to_string());
        let rows = rows(source);
        let out = if cli.json {
            json_text(&checkpoint, &config, &rows)?
        } else {
            text(&checkpoint, &config, &rows)
        };
        // A reader that stops early (`| head`) is no error.
        match std::io::stdout().lock().write_all(out.as_bytes()) {
            Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                return Err(format!("cannot write to stdout: {e}"))
            }
            _ => {}
        }
        config.map(|_| ()).map_err(|e| args::named(&cli.path, e))
    });
}
