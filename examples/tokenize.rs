//! Encodes bytes to token ids, or decodes token ids to bytes.
//!
//! ```text
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

use std::io::Write;

fn main() {
    args::run(|| {
        let args = args::Args::parse(&["vocab", "text-file", "text", "decode", "out"], &[])?;
        if let Some(out) = args.get("out") {
            let inputs: Vec<(&str, &str)> = [
                ("vocab", args.get("vocab")),
                ("text-file", args.get("text-file")),
            ]
            .into_iter()
            .filter_map(|(flag, path)| Some((flag, path?)))
            .collect();
            args::refuse_overwrite(("out", out), &inputs)?;
        }
        let vocab = args::Vocab::from_flag(args.get("vocab"), args::Vocab::World)?;
        let tokenizer = vocab.tokenizer();
        let given = ["text-file", "text", "decode"]
            .iter()
            .filter(|f| args.get(f).is_some())
            .count();
        if given != 1 {
            return Err("give exactly one of --text-file, --text, --decode".into());
        }

        if let Some(list) = args.get("decode") {
            let ids = list
                .split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(|t| {
                    t.parse::<u32>()
                        .map_err(|_| format!("--decode: `{t}` is not a token id"))
                })
                .collect::<Result<Vec<u32>, String>>()?;
            if ids.is_empty() {
                return Err("--decode: no token ids given".into());
            }
            let bytes = tokenizer.decode(&ids).map_err(|e| e.to_string())?;
            return match args.get("out") {
                Some(path) => args::write_file(path, &bytes),
                None => std::io::stdout()
                    .lock()
                    .write_all(&bytes)
                    .map_err(|e| format!("cannot write to stdout: {e}")),
            };
        }

        if args.get("out").is_some() {
            return Err("--out goes with --decode".into());
        }
        let bytes = match args.get("text-file") {
            Some(path) => std::fs::read(path).map_err(|e| format!("cannot read `{path}`: {e}"))?,
            None => args.get("text").unwrap_or_default().as_bytes().to_vec(),
        };
        let ids = tokenizer.encode_bytes(&bytes);
        let line = ids.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
        writeln!(std::io::stdout().lock(), "{line}")
            .map_err(|e| format!("cannot write to stdout: {e}"))
    });
}
