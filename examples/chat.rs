//! An interactive chat on stdin, in the official RWKV chat format, keeping the state between
//! turns.
//!
//! ```text
//! cargo run --release --example chat -- --help
//! cargo run --release --example chat -- [--model PATH] [--quantize q8_0|q4_0|q5_0|q5_1|q4_k|q5_k|q6_k] [--vocab FILE|world|bytes]
//!     [--max-tokens N] [--temperature T] [--top-p P] [--top-k K] [--seed S]
//!     [--state-in S.safetensors] [--state-out S.safetensors]
//! printf 'Hello\nWho are you?\n' | cargo run --release --example chat -- --model M.safetensors
//! ```
//!
//! Each line of stdin is one message; an empty line or the end of input ends the chat. A turn
//! reads `"User: {message}\n\nAssistant:"` (a "\n\n" inside the message collapsed to "\n") and
//! generates until the reply contains "\n\n" (not printed) or `--max-tokens` (default 500)
//! tokens. The end-of-text token 0 is banned. Sampling uses the official chat settings
//! (temperature 1, top-p 0.3, presence and frequency penalties 0.5, decay 0.996).
//!
//! `--model` takes any checkpoint the crate reads (see `Model::load`). Without `--model` it
//! runs the shipped `assets/models/kjv-rwkv6.safetensors`, which is not a
//! chat model (it continues in the style of the King James Bible). `--vocab` defaults to
//! `bytes` for byte-level models (at most 257 outputs) and to the shipped World vocabulary
//! otherwise. `--state-in` starts from a saved state (first reading the token it records as not
//! read yet, if it was saved by the `generate` example). `--state-out` saves the state after
//! every completed turn, atomically, so an error later (a line of stdin that is not UTF-8, a
//! closed output) loses nothing already said; it is saved at a turn boundary (a reply cut by
//! `--max-tokens` is followed by the "\n\n" that ends a turn), so a later run can start with
//! "User: ...". It may be the `--state-in` file but not the model or the vocabulary file.
//! Works the same when stdin is a pipe (each message is then echoed after "User: ").

mod args;

use clap::Parser;
use std::io::{BufRead, IsTerminal, Write};
use std::time::{Duration, Instant};
use tokenshift::{Model, Sampler, SamplerConfig, Session, StopReason};

const DEFAULT_MODEL: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/assets/models/kjv-rwkv6.safetensors"
);

/// The message as the official chat demo feeds it: trimmed, with no blank lines ("\n\n" ends a
/// turn in this format).
fn clean_message(line: &str) -> String {
    let mut msg = line.trim().replace("\r\n", "\n");
    while msg.contains("\n\n") {
        msg = msg.replace("\n\n", "\n");
    }
    msg
}

fn write_out(out: &mut impl Write, text: &str) -> Result<(), String> {
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| format!("cannot write to stdout: {e}"))
}

/// An interactive chat on stdin in the official RWKV chat format ("User: ...\n\nAssistant:"),
/// one message per line, keeping the state between turns; an empty line or the end of input
/// ends it.
#[derive(Parser, Debug)]
#[command(name = "chat")]
struct Cli {
    /// RWKV checkpoint: a safetensors, GGUF or PyTorch .pth file, or a Hugging Face folder
    /// (the container is detected from the file) [default: the shipped
    /// assets/models/kjv-rwkv6.safetensors, not a chat model]
    #[arg(long, value_name = "PATH", default_value = DEFAULT_MODEL, hide_default_value = true)]
    model: String,
    /// Quantize the block projections and the head to this block format at load: q8_0, q4_0,
    /// q5_0, q5_1, q4_k, q5_k or q6_k (the embedding stays as stored; a matrix not a whole
    /// number of 256-value blocks wide takes a K type's fallback, q5_0, q5_1 or q8_0, and one
    /// not whole 32-value blocks wide stays as stored)
    #[arg(long, value_name = "TYPE", value_parser = args::parse_quant)]
    quantize: Option<tokenshift::storage::quant::QuantType>,
    /// Tokenizer: `bytes` (byte level, id = byte + 1), `world` (the shipped World vocabulary)
    /// or a World vocabulary file [default: bytes for models with at most 257 outputs, world
    /// otherwise]
    #[arg(long, value_name = "FILE|world|bytes")]
    vocab: Option<String>,
    /// Tokens of one reply at most (a reply also ends at a blank line)
    #[arg(long, value_name = "N", default_value_t = 500)]
    max_tokens: usize,
    /// Sampling temperature (0 picks the most likely token)
    #[arg(long, value_name = "T", default_value_t = 1.0)]
    temperature: f64,
    /// Nucleus sampling: keep the most likely tokens up to this probability mass
    #[arg(long, value_name = "P", default_value_t = 0.3)]
    top_p: f64,
    /// Keep only the K most likely tokens (0: no limit)
    #[arg(long, value_name = "K", default_value_t = 0)]
    top_k: usize,
    /// Seed of the sampler's random numbers
    #[arg(long, value_name = "S", default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    state: args::StateArgs,
}

fn main() {
    args::run(|| {
        let cli = Cli::parse();
        let model_path = cli.model.as_str();
        args::refuse_state_out_over_inputs(&cli.state, cli.vocab.as_deref(), model_path)?;
        let model = args::load_model(model_path, cli.quantize)?;
        eprintln!("{}", model.config());

        let vocab = args::Vocab::from_flag(
            cli.vocab.as_deref(),
            args::Vocab::for_model(model.config().vocab),
        )?;
        let tokenizer = vocab.tokenizer();

        let config = SamplerConfig {
            temperature: cli.temperature,
            top_p: cli.top_p,
            top_k: cli.top_k,
            alpha_presence: 0.5,
            alpha_frequency: 0.5,
            alpha_decay: 0.996,
            token_ban: vec![0],
            stop_strings: vec!["\n\n".into()],
            ..SamplerConfig::default()
        };
        let sampler = Sampler::new(config, cli.seed).map_err(|e| e.to_string())?;
        let mut session = Session::new(&model, tokenizer, sampler);
        if let Some(path) = cli.state.state_in.as_deref() {
            let (state, next) = args::load_state(&model, path)?;
            session = session
                .with_initial_state(state)
                .map_err(|e| e.to_string())?;
            if let Some(token) = next {
                session.prefill(&[token]).map_err(|e| e.to_string())?;
            }
        }
        let save = |session: &Session<&Model, &dyn tokenshift::Tokenizer>| match cli
            .state
            .state_out
            .as_deref()
        {
            Some(path) => args::save_state(path, session.state(), None),
            None => Ok(()),
        };
        let max_tokens = cli.max_tokens;

        let stdin = std::io::stdin();
        let interactive = stdin.is_terminal();
        let mut lines = stdin.lock().lines();
        let mut out = std::io::stdout().lock();
        let mut turns = 0;
        let (mut generated, mut gen_time) = (0, Duration::ZERO);
        loop {
            if interactive {
                write_out(&mut out, "User: ")?;
            }
            let line = match lines.next() {
                None => break,
                Some(line) => line.map_err(|e| format!("cannot read stdin: {e}"))?,
            };
            let msg = clean_message(&line);
            if msg.is_empty() {
                break;
            }
            if !interactive {
                write_out(&mut out, &format!("User: {msg}\n"))?;
            }
            session
                .prefill_text(&format!("User: {msg}\n\nAssistant:"))
                .map_err(|e| e.to_string())?;
            write_out(&mut out, "\nAssistant:")?;
            let start = Instant::now();
            let mut reply = session.text(max_tokens);
            for piece in reply.by_ref() {
                write_out(&mut out, &piece.map_err(|e| e.to_string())?)?;
            }
            generated += reply.generated();
            let ended = matches!(reply.stop_reason(), Some(StopReason::StopString(_)));
            drop(reply);
            gen_time += start.elapsed();
            // A reply cut by --max-tokens did not end with "\n\n": read it, so the state is
            // at a turn boundary.
            if !ended {
                session.prefill_text("\n\n").map_err(|e| e.to_string())?;
            }
            save(&session)?;
            turns += 1;
            write_out(&mut out, "\n\n")?;
        }
        if generated > 0 {
            eprintln!(
                "generated {generated} tokens in {:.2} s ({:.1} tokens/s)",
                gen_time.as_secs_f64(),
                generated as f64 / gen_time.as_secs_f64()
            );
        }
        if turns == 0 {
            save(&session)?;
        }
        if let Some(path) = cli.state.state_out.as_deref() {
            eprintln!("state saved to {path} after {turns} turns");
        }
        Ok(())
    });
}
