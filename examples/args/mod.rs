//! What the examples share: a small `--flag value` parser and the choice of tokenizer.
#![allow(dead_code)]

use std::collections::HashMap;
use std::str::FromStr;
use tokenshift::{ByteTokenizer, Tokenizer, WorldTokenizer};

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
