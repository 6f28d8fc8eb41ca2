//! Streams a continuation of a prompt, then prints the prefill and generation speed.
//!
//! ```text
//! cargo run --release --example generate
//! cargo run --release --example generate -- --help
//! cargo run --release --example generate -- [--model PATH] [--quantize q8_0|q4_0|q5_0|q5_1|q4_k|q5_k|q6_k] [--vocab FILE|world|bytes]
//!     [--prompt TEXT] [--max-tokens N] [--temperature T] [--top-p P] [--top-k K] [--seed S]
//!     [--state-in S.safetensors] [--state-out S.safetensors]
//! ```
//!
//! `--model` takes any checkpoint the crate reads (safetensors, GGUF, PyTorch `.pth`, a Hugging
//! Face folder: see `Model::load`). Without `--model` it runs the shipped `assets/models/kjv-rwkv6.safetensors` (a small byte-level
//! RWKV-6 trained on the King James Bible) on "In the beginning". `--vocab` defaults to `bytes`
//! for byte-level models (at most 257 outputs) and to the shipped World vocabulary (`world`)
//! otherwise. Sampling uses the official defaults (temperature 1, top-p 0.85, presence and
//! frequency penalties 0.2, decay 0.996) and stops at the end-of-text token 0.
//!
//! `--state-out` saves the state at the end, so runs can be chained: `--state-in` continues
//! from it, and `--prompt ''` continues the text exactly where the last run stopped. A state
//! alone carries no prediction of the next token, so the file holds the state before the last
//! token read (the last generated one, or the prompt's last if none was generated) and records
//! that token in its metadata (`next_token`); `--state-in` reads it first, then the prompt.
//! Continuing so gives the same prediction as the first run would have made next (up to
//! rounding: the token goes through the sequence path instead of the recurrent one). A state
//! saved without `next_token` (by `chat`, `logits` or `State::save`) needs a non-empty
//! prompt. `--state-in S --state-out S` replaces `S` atomically; `--state-out` may not be the
//! model or the vocabulary file.
//!
//! The text goes to stdout; the speeds go to stderr.

mod args;

use clap::Parser;
use std::io::{ErrorKind, Write};
use std::time::Instant;
use tokenshift::{Sampler, SamplerConfig, Session, State, StopReason, TextStream};

const DEFAULT_MODEL: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/assets/models/kjv-rwkv6.safetensors"
);
const DEFAULT_PROMPT: &str = "In the beginning";

/// Streams a continuation of a prompt to stdout, then prints the prefill and generation speed
/// to stderr. Without arguments it runs the shipped byte-level RWKV-6 (King James Bible) on
/// "In the beginning".
#[derive(Parser, Debug)]
#[command(name = "generate")]
struct Cli {
    /// RWKV checkpoint: a safetensors, GGUF or PyTorch .pth file, or a Hugging Face folder
    /// (the container is detected from the file) [default: the shipped
    /// assets/models/kjv-rwkv6.safetensors]
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
    /// The text to continue; '' continues a --state-in saved by --state-out where it stopped
    #[arg(long, default_value = DEFAULT_PROMPT)]
    prompt: String,
    /// Tokens to generate at most (generation also stops at the end-of-text token 0)
    #[arg(long, value_name = "N", default_value_t = 200)]
    max_tokens: usize,
    /// Sampling temperature (0 picks the most likely token)
    #[arg(long, value_name = "T", default_value_t = 1.0)]
    temperature: f64,
    /// Nucleus sampling: keep the most likely tokens up to this probability mass
    #[arg(long, value_name = "P", default_value_t = 0.85)]
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
            token_stop: vec![0],
            ..SamplerConfig::default()
        };
        let sampler = Sampler::new(config, cli.seed).map_err(|e| e.to_string())?;
        let mut session = Session::new(&model, tokenizer, sampler);
        let mut input = Vec::new();
        if let Some(path) = cli.state.state_in.as_deref() {
            let (state, next) = args::load_state(&model, path)?;
            session = session
                .with_initial_state(state)
                .map_err(|e| e.to_string())?;
            input.extend(next);
        }
        // The state to save is the one before the last token read: kept here while
        // generating when --state-out is given.
        let keep = cli.state.state_out.is_some();
        let initial = keep.then(|| session.state().clone());

        let prompt = cli.prompt.as_str();
        let max_tokens = cli.max_tokens;
        let prompt_ids = tokenizer.encode(prompt);
        input.extend_from_slice(&prompt_ids);
        if input.is_empty() {
            return Err(
                "nothing to read: give a --prompt, or a --state-in saved by \
                        --state-out of this example (which records the token to read next)"
                    .into(),
            );
        }
        let start = Instant::now();
        session.prefill(&input).map_err(|e| e.to_string())?;
        let prefill_secs = start.elapsed().as_secs_f64();

        let mut out = std::io::stdout().lock();
        let print = |out: &mut std::io::StdoutLock, text: &str| -> Result<bool, String> {
            match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
                Ok(()) => Ok(true),
                Err(e) if e.kind() == ErrorKind::BrokenPipe => Ok(false),
                Err(e) => Err(format!("cannot write to stdout: {e}")),
            }
        };
        print(&mut out, prompt)?;
        let start = Instant::now();
        let mut stream = TextStream::new::<&str>(&[]);
        let mut snapshot = initial.clone();
        let mut last_generated = None;
        let mut generated = 0;
        let mut stop = None;
        let mut open = true;
        while open {
            if generated == max_tokens {
                stop = Some(StopReason::MaxTokens);
                break;
            }
            if let Some(s) = snapshot.as_mut() {
                s.blocks_mut().clone_from_slice(session.state().blocks());
            }
            let mut one = session.tokens(1);
            let token = match one.next() {
                Some(token) => token.map_err(|e| e.to_string())?,
                None => {
                    stop = one.stop_reason();
                    break;
                }
            };
            generated += 1;
            last_generated = Some(token);
            let bytes = tokenizer.token_bytes(token).map_err(|e| e.to_string())?;
            open = print(&mut out, &stream.push(bytes))?;
        }
        if open {
            print(&mut out, &stream.finish())?;
        }
        let gen_secs = start.elapsed().as_secs_f64();
        print(&mut out, "\n")?;

        let ended = stop.map_or("output closed".to_string(), |s| s.to_string());
        eprintln!(
            "prefill: {} tokens in {:.3} s ({:.1} tokens/s); generation: {} tokens in {:.3} s \
             ({:.1} tokens/s, ended by {ended})",
            input.len(),
            prefill_secs,
            input.len() as f64 / prefill_secs,
            generated,
            gen_secs,
            generated as f64 / gen_secs,
        );
        if let Some(path) = cli.state.state_out.as_deref() {
            let (state, next) = match (snapshot, last_generated) {
                (Some(state), Some(token)) => (state, token),
                // Nothing generated: the state before the input's last token.
                _ => {
                    let mut state: State = initial.expect("kept for --state-out");
                    let (last, rest) = input.split_last().expect("checked non-empty");
                    if !rest.is_empty() {
                        model
                            .forward(rest, &mut state, tokenshift::Logits::Last)
                            .map_err(|e| e.to_string())?;
                    }
                    (state, *last)
                }
            };
            args::save_state(path, &state, Some(next))?;
            eprintln!("state saved to {path} (next token {next})");
        }
        Ok(())
    });
}
