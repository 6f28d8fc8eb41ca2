//! Encodes bytes to token ids, or decodes token ids to bytes.
//!
//! ```text
//! cargo run --release --example tokenize -- --help
//! cargo run --release --example tokenize -- [--vocab FILE|world|bytes] --text-file F
//! cargo run --release --example tokenize -- [--vocab FILE|world|bytes] --text "Hello"
//! cargo run --release --example tokenize -- [--vocab FILE|world|bytes] --decode 1,2,3 [--out F]
//! ```
//!
//! Encoding prints the ids of the file's bytes (or of the text's UTF-8), comma-separated on one
//! line. Decoding writes the tokens' bytes to `--out` (atomically; not the vocabulary file),
//! or to stdout; an empty id list is an error (it would empty `--out`). `--vocab` is a World
//! vocabulary file (`rwkv_vocab_v20230424.txt` format), `world` for the shipped World
//! vocabulary (the default) or `bytes` for the byte-level one (id = byte + 1).

mod args;

use clap::Parser;
use std::io::Write;

/// Encodes bytes to token ids (printed comma-separated on one line), or decodes token ids to
/// bytes.
#[derive(Parser, Debug)]
#[command(name = "tokenize")]
#[command(group = clap::ArgGroup::new("input").required(true).args(["text_file", "text", "decode"]))]
struct Cli {
    /// Tokenizer: `world` (the shipped World vocabulary), `bytes` (byte level, id = byte + 1)
    /// or a World vocabulary file (rwkv_vocab_v20230424.txt format)
    #[arg(long, value_name = "FILE|world|bytes", default_value = "world")]
    vocab: String,
    /// Encode the bytes of this file
    #[arg(long, value_name = "FILE")]
    text_file: Option<String>,
    /// Encode this text (its UTF-8)
    #[arg(long, value_name = "TEXT")]
    text: Option<String>,
    /// Decode these comma-separated token ids (at least one)
    #[arg(long, value_name = "IDS")]
    decode: Option<args::TokenIds>,
    /// Write the decoded bytes to this file, atomically, instead of stdout (not the vocabulary
    /// file)
    #[arg(long, value_name = "FILE", conflicts_with_all = ["text", "text_file"])]
    out: Option<String>,
}

fn main() {
    args::run(|| {
        let cli = Cli::parse();
        if let Some(out) = cli.out.as_deref() {
            let inputs: Vec<(&str, &str)> = [
                ("vocab", args::Vocab::file_flag(Some(&cli.vocab))),
                ("text-file", cli.text_file.as_deref()),
            ]
            .into_iter()
            .filter_map(|(flag, path)| Some((flag, path?)))
            .collect();
            args::refuse_overwrite(("out", out), &inputs)?;
        }
        let vocab = args::Vocab::from_flag(Some(&cli.vocab), args::Vocab::World)?;
        let tokenizer = vocab.tokenizer();

        if let Some(args::TokenIds(ids)) = &cli.decode {
            let bytes = tokenizer.decode(ids).map_err(|e| e.to_string())?;
            return match cli.out.as_deref() {
                Some(path) => args::write_file(path, &bytes),
                None => std::io::stdout()
                    .lock()
                    .write_all(&bytes)
                    .map_err(|e| format!("cannot write to stdout: {e}")),
            };
        }

        let bytes = match cli.text_file.as_deref() {
            Some(path) => std::fs::read(path).map_err(|e| format!("cannot read `{path}`: {e}"))?,
            None => cli.text.unwrap_or_default().into_bytes(),
        };
        let ids = tokenizer.encode_bytes(&bytes);
        let line = ids.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
        writeln!(std::io::stdout().lock(), "{line}")
            .map_err(|e| format!("cannot write to stdout: {e}"))
    });
}
