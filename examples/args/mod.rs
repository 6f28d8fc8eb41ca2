//! What the examples share: a small `--flag value` parser, the choice of tokenizer, the
//! check that an output is not one of the inputs, and state files that record the token still
//! to be read.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::str::FromStr;
use tokenshift::weights::SafeTensorsFile;
use tokenshift::{ByteTokenizer, Model, State, Tokenizer, WorldTokenizer};

/// The metadata key of a state file under which [`save_state`] records the token the state
/// has not read yet.
pub const NEXT_TOKEN: &str = "next_token";

/// Parsed `--name value` pairs and bare `--switch`es.
pub struct Args {
    values: HashMap<String, String>,
    switches: Vec<String>,
}

impl Args {
    /// Parses the process arguments; `switches` are the flags that take no value.
    pub fn parse(allowed: &[&str], switches: &[&str]) -> Result<Args, String> {
        let mut values = HashMap::new();
        let mut on = Vec::new();
        let mut it = std::env::args().skip(1);
        while let Some(arg) = it.next() {
            let name = arg
                .strip_prefix("--")
                .ok_or_else(|| format!("unexpected argument `{arg}` (flags start with --)"))?;
            if switches.contains(&name) {
                on.push(name.to_string());
            } else if allowed.contains(&name) {
                let value = it.next().ok_or_else(|| format!("--{name} needs a value"))?;
                values.insert(name.to_string(), value);
            } else {
                return Err(format!(
                    "unknown flag --{name}; known: {}",
                    allowed
                        .iter()
                        .chain(switches)
                        .map(|f| format!("--{f}"))
                        .collect::<Vec<_>>()
                        .join(" ")
                ));
            }
        }
        Ok(Args {
            values,
            switches: on,
        })
    }

    /// The raw value of `--name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    /// The value of `--name`, which must be given.
    pub fn required(&self, name: &str) -> Result<&str, String> {
        self.get(name)
            .ok_or_else(|| format!("--{name} is required"))
    }

    /// `--name` parsed as `T`, or `default` when absent.
    pub fn parsed<T: FromStr>(&self, name: &str, default: T) -> Result<T, String> {
        match self.get(name) {
            None => Ok(default),
            Some(v) => v
                .parse()
                .map_err(|_| format!("--{name}: cannot parse `{v}`")),
        }
    }

    /// Whether the switch `--name` was given.
    pub fn switch(&self, name: &str) -> bool {
        self.switches.iter().any(|s| s == name)
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
    let (out_flag, out_path) = output;
    match inputs
        .iter()
        .find(|(_, path)| same_file(Path::new(out_path), Path::new(path)))
    {
        Some((flag, path)) => Err(format!(
            "--{out_flag} `{out_path}` is the same file as --{flag} `{path}`: refusing to \
             overwrite an input"
        )),
        None => Ok(()),
    }
}

/// [`refuse_overwrite`] for `--state-out` of a program that reads `--model` (at `model_path`)
/// and possibly `--vocab`.
pub fn refuse_state_out_over_inputs(args: &Args, model_path: &str) -> Result<(), String> {
    let Some(out) = args.get("state-out") else {
        return Ok(());
    };
    let mut inputs = vec![("model", model_path)];
    inputs.extend(Vocab::file_flag(args.get("vocab")).map(|v| ("vocab", v)));
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
