//! What the examples share: argument types for `clap`, the choice of tokenizer, the check
//! that an output is not one of the inputs, and state files that record the token still to be
//! read.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;
use std::str::FromStr;
use tokenshift::storage::quant::QuantType;
use tokenshift::weights::SafeTensorsFile;
use tokenshift::{ByteTokenizer, DType, Model, State, Tokenizer, WorldTokenizer};

/// The metadata key of a state file under which [`save_state`] records the token the state
/// has not read yet.
pub const NEXT_TOKEN: &str = "next_token";

/// A storage type named on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Dtype {
    /// 32-bit floats
    F32,
    /// IEEE half precision
    F16,
    /// bfloat16
    Bf16,
}

impl From<Dtype> for DType {
    fn from(d: Dtype) -> DType {
        match d {
            Dtype::F32 => DType::F32,
            Dtype::F16 => DType::F16,
            Dtype::Bf16 => DType::Bf16,
        }
    }
}

/// `--quantize`'s value: a block format (`q8_0`, `q4_0`, `q5_0`, `q5_1`, `q4_k`, `q5_k`,
/// `q6_k`).
pub fn parse_quant(s: &str) -> Result<QuantType, String> {
    s.parse()
}

/// The model at `path`, with its block projections quantized to `quantize` at load when it is
/// given (`Model::load_quantized`).
pub fn load_model(path: &str, quantize: Option<QuantType>) -> Result<Model, String> {
    match quantize {
        Some(q) => Model::load_quantized(path, q),
        None => Model::load(path),
    }
    .map_err(|e| e.to_string())
}

/// A storage type of weight matrices named on the command line: a dense type or a block
/// format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Storage {
    /// f32, f16 or bf16.
    Dense(DType),
    /// A block format.
    Quantized(QuantType),
}

impl FromStr for Storage {
    type Err = String;
    fn from_str(s: &str) -> Result<Storage, String> {
        match s {
            "f32" => Ok(Storage::Dense(DType::F32)),
            "f16" => Ok(Storage::Dense(DType::F16)),
            "bf16" => Ok(Storage::Dense(DType::Bf16)),
            _ => s.parse().map(Storage::Quantized).map_err(|_| {
                format!(
                    "unknown storage type `{s}`: expected f32, f16, bf16, q8_0, q4_0, q5_0, \
                     q5_1, q4_k, q5_k or q6_k"
                )
            }),
        }
    }
}

/// A comma-separated list of token ids (`1,2,3`; spaces and empty items are ignored), with at
/// least one id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenIds(pub Vec<u32>);

impl FromStr for TokenIds {
    type Err = String;
    fn from_str(list: &str) -> Result<TokenIds, String> {
        let ids = list
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(|t| {
                t.parse::<u32>()
                    .map_err(|_| format!("`{t}` is not a token id"))
            })
            .collect::<Result<Vec<u32>, String>>()?;
        if ids.is_empty() {
            return Err("no token ids given".into());
        }
        Ok(TokenIds(ids))
    }
}

/// `--state-in` and `--state-out` of the programs that run a model.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct StateArgs {
    /// Start from this state file (saved by `--state-out`, or by `State::save`)
    #[arg(long, value_name = "S.safetensors")]
    pub state_in: Option<String>,
    /// Save the state to this file, atomically (it may be the --state-in file, not the model
    /// or the vocabulary)
    #[arg(long, value_name = "S.safetensors")]
    pub state_out: Option<String>,
}

/// `error` prefixed with the file it is about, unless it names it already.
pub fn named(path: &Path, error: impl std::fmt::Display) -> String {
    let error = error.to_string();
    let path = path.display().to_string();
    if error.contains(&path) {
        error
    } else {
        format!("`{path}`: {error}")
    }
}

/// Runs `main`, printing its error as one line and exiting with status 1 on failure.
pub fn run(main: impl FnOnce() -> Result<(), String>) {
    if let Err(e) = main() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

/// The tokenizer picked by `--vocab`: `bytes`, `world` (the shipped World vocabulary) or a
/// World vocabulary file.
pub enum Vocab {
    /// Byte level (id = byte + 1).
    Bytes,
    /// The shipped World vocabulary.
    World,
    /// A World vocabulary read from a file.
    File(Box<WorldTokenizer>),
}

impl Vocab {
    /// `--vocab`'s value, or `default` when it is absent.
    pub fn from_flag(value: Option<&str>, default: Vocab) -> Result<Vocab, String> {
        Ok(match value {
            None => default,
            Some("bytes") => Vocab::Bytes,
            Some("world") => Vocab::World,
            Some(path) => Vocab::File(Box::new(
                WorldTokenizer::from_file(path).map_err(|e| e.to_string())?,
            )),
        })
    }

    /// `--vocab`'s value if it names a file (not `bytes` or `world`).
    pub fn file_flag(value: Option<&str>) -> Option<&str> {
        value.filter(|v| !matches!(*v, "bytes" | "world"))
    }

    /// The default for a model with `vocab` outputs: bytes if they fit, World otherwise.
    pub fn for_model(vocab: usize) -> Vocab {
        if vocab <= ByteTokenizer.vocab_size() {
            Vocab::Bytes
        } else {
            Vocab::World
        }
    }

    /// The tokenizer itself.
    pub fn tokenizer(&self) -> &dyn Tokenizer {
        match self {
            Vocab::Bytes => &ByteTokenizer,
            Vocab::World => WorldTokenizer::world(),
            Vocab::File(t) => &**t,
        }
    }
}

/// Whether `a` and `b` name the same existing file: the same device and inode on Unix (so a
/// hard link, a symbolic link or another spelling of the path is caught), the same canonical
/// path elsewhere. A path that does not exist is no file.
pub fn same_file(a: &Path, b: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        match (std::fs::metadata(a), std::fs::metadata(b)) {
            (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
            _ => false,
        }
    }
    #[cfg(not(unix))]
    {
        match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
            (Ok(x), Ok(y)) => x == y,
            _ => false,
        }
    }
}

/// Refuses, before any work, an output that is one of the inputs: `output` is `(flag, path)`
/// of the file to be written, `inputs` those of the files read. Writing a model's logits over
/// the model would destroy it; a state file that is both read and written (`--state-in S
/// --state-out S`) is not an input here, since it is read whole before the atomic write.
pub fn refuse_overwrite(output: (&str, &str), inputs: &[(&str, &str)]) -> Result<(), String> {
    let flag = |f: &str| format!("--{f}");
    let inputs: Vec<(String, &Path)> = inputs
        .iter()
        .map(|(f, p)| (flag(f), Path::new(*p)))
        .collect();
    refuse_overwrite_of((&flag(output.0), Path::new(output.1)), &inputs)
}

/// [`refuse_overwrite`] with the arguments named as given (`--out`, `OUTPUT`). An input that
/// is a folder (a Hugging Face checkpoint) covers every file directly in it.
pub fn refuse_overwrite_of(
    output: (&str, &Path),
    inputs: &[(String, &Path)],
) -> Result<(), String> {
    let (out_name, out_path) = output;
    for (name, path) in inputs {
        let clash = same_file(out_path, path)
            || (path.is_dir()
                && std::fs::read_dir(path).is_ok_and(|entries| {
                    entries
                        .flatten()
                        .any(|entry| same_file(out_path, &entry.path()))
                }));
        if clash {
            return Err(format!(
                "{out_name} `{}` is the same file as {name} `{}`{}: refusing to overwrite an \
                 input",
                out_path.display(),
                path.display(),
                if path.is_dir() { " or in it" } else { "" }
            ));
        }
    }
    Ok(())
}

/// [`refuse_overwrite`] for `--state-out` of a program that reads `--model` (at `model_path`)
/// and possibly `--vocab`.
pub fn refuse_state_out_over_inputs(
    state: &StateArgs,
    vocab: Option<&str>,
    model_path: &str,
) -> Result<(), String> {
    let Some(out) = state.state_out.as_deref() else {
        return Ok(());
    };
    let mut inputs = vec![("model", model_path)];
    inputs.extend(Vocab::file_flag(vocab).map(|v| ("vocab", v)));
    refuse_overwrite(("state-out", out), &inputs)
}

/// Writes `bytes` to `path` atomically (the old file stays whole if the write fails).
pub fn write_file(path: &str, bytes: &[u8]) -> Result<(), String> {
    tokenshift::write_atomic(path, bytes).map_err(|e| e.to_string())
}

/// Saves `state` to `path` atomically, with `next` recorded as the token it has not read yet
/// (see [`load_state`]).
pub fn save_state(path: &str, state: &State, next: Option<u32>) -> Result<(), String> {
    let mut extra = BTreeMap::new();
    if let Some(token) = next {
        extra.insert(NEXT_TOKEN.to_string(), token.to_string());
    }
    let bytes = state
        .to_bytes_with_metadata(&extra)
        .map_err(|e| e.to_string())?;
    write_file(path, &bytes)
}

/// Loads a state file for `model`, with the token it records as not read yet (saved by
/// [`save_state`]; `None` for a file without one, e.g. from [`State::save`]). A run that
/// continues from the state must read that token first.
pub fn load_state(model: &Model, path: &str) -> Result<(State, Option<u32>), String> {
    let state = model.load_state(path).map_err(|e| e.to_string())?;
    let meta = SafeTensorsFile::open(path)
        .map_err(|e| e.to_string())?
        .metadata();
    let next =
        match meta.get(NEXT_TOKEN) {
            None => None,
            Some(v) => Some(v.parse::<u32>().map_err(|_| {
                format!("`{path}`: metadata `{NEXT_TOKEN}` is `{v}`, not a token id")
            })?),
        };
    Ok((state, next))
}
